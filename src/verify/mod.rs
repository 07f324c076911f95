//! Comparison-based verification (being built).
