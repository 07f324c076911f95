//! Comparison-based verification (DESIGN §8): the same operations go to a reference and to the
//! file system under test, and every response is compared field by field.
//!
//! - [`operation`]: the path-based operation language and its responses (serde, for traces).
//! - [`model`]: the reference model, an in-memory file system with Linux semantics for root.
//! - [`real_directory`]: the same operations on a real directory (a FUSE mount included), with
//!   path resolution confined to that directory.
//! - [`compare`](mod@compare): comparison by field class (bitwise, loose, non-comparable).
//! - [`generate`]: a seeded workload generator.
//! - [`run`](mod@run): the driver that plugs a reference and a target together and reports divergences.
//!
//! Paths: symlinks in the middle of a path are followed, confined to the root (absolute targets
//! and `..` never leave it); the last name is followed by the operations that open it (read,
//! write, truncate, chmod, fsync, readdir, utimens, xattrs) and not by the others. The model and
//! the kernel agree on this over long generated workloads (see `agreement_tests`).

pub mod compare;
pub mod file_data;
pub mod generate;
pub mod model;
pub mod operation;
pub mod real_directory;
pub mod run;

pub use compare::{compare, ComparisonOptions, Divergence, Field, FieldClass};
pub use generate::Generator;
pub use model::{AccessTimeUpdates, Model, ModelOptions};
pub use operation::{
    Attributes, DirectoryEntry, Errno, FileKind, FsPath, Operation, RenameMode, Reply, Response,
    Timestamp,
};
pub use real_directory::{model_options_for, RealDirectory};
pub use run::{run, run_against, DivergentOperation, Report};

#[cfg(test)]
mod agreement_tests;
#[cfg(test)]
mod semantics_tests;
#[cfg(test)]
mod test_support;
