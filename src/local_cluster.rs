//! The embedded local cluster behind `votefs up` (being built).
