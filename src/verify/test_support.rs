//! Helpers for the verifier's tests: the wall clock and a model paired with a real directory.

use std::time::{SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use super::compare::{compare, ComparisonOptions};
use super::model::Model;
use super::operation::{Attributes, Errno, FsPath, Operation, Reply, Response, Timestamp};
use super::real_directory::{model_options_for, RealDirectory};

/// The real clock, which the kernel stamps files with (tests only: the model never reads it).
pub fn wall_clock() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970");
    Timestamp::new(since_epoch.as_secs() as i64, since_epoch.subsec_nanos())
}

/// A fresh temporary directory and a model started the way it starts.
pub fn fresh_pair() -> (TempDir, RealDirectory, Model) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let real = RealDirectory::open(directory.path()).expect("open the temporary directory");
    let options = model_options_for(directory.path()).expect("model options");
    let model = Model::new(options, wall_clock());
    (directory, real, model)
}

/// Applies each operation to the model and to the kernel (a temporary directory) and insists
/// that they agree; returns the model's answer, so tests can also check it is the right one.
pub struct Both {
    /// Kept so that the directory lives as long as the pair.
    _directory: TempDir,
    real: RealDirectory,
    model: Model,
    options: ComparisonOptions,
}

impl Both {
    pub fn new() -> Both {
        Both::with_options(ComparisonOptions::default())
    }

    pub fn with_options(options: ComparisonOptions) -> Both {
        let (directory, real, model) = fresh_pair();
        Both {
            _directory: directory,
            real,
            model,
            options,
        }
    }

    pub fn apply(&mut self, operation: Operation) -> Response {
        let now = wall_clock();
        let actual = self.real.apply(&operation);
        let expected = self.model.apply(&operation, now);
        let divergences = compare(&operation, &expected, &actual, &self.options);
        assert!(
            divergences.is_empty(),
            "{operation}: model {expected:?}, kernel {actual:?}: {divergences:?}"
        );
        expected
    }

    pub fn succeeds(&mut self, operation: Operation) -> Reply {
        let description = operation.to_string();
        match self.apply(operation) {
            Ok(reply) => reply,
            Err(errno) => panic!("{description} failed with {errno}"),
        }
    }

    pub fn fails(&mut self, operation: Operation, errno: Errno) {
        let description = operation.to_string();
        assert_eq!(self.apply(operation), Err(errno), "{description}");
    }

    pub fn stat(&mut self, path: &str) -> Attributes {
        match self.succeeds(Operation::Stat {
            path: FsPath::new(path),
        }) {
            Reply::Attributes(attributes) => attributes,
            other => panic!("stat replied {other:?}"),
        }
    }

    pub fn read(&mut self, path: &str, offset: u64, length: u64) -> Vec<u8> {
        match self.succeeds(Operation::Read {
            path: FsPath::new(path),
            offset,
            length,
        }) {
            Reply::Data(data) => data,
            other => panic!("read replied {other:?}"),
        }
    }
}

pub fn create(path: &str) -> Operation {
    Operation::Create {
        path: FsPath::new(path),
        mode: 0o644,
    }
}

pub fn mkdir(path: &str) -> Operation {
    Operation::Mkdir {
        path: FsPath::new(path),
        mode: 0o755,
    }
}

pub fn write(path: &str, offset: u64, data: &[u8]) -> Operation {
    Operation::Write {
        path: FsPath::new(path),
        offset,
        data: data.to_vec(),
    }
}

pub fn symlink(target: &str, path: &str) -> Operation {
    Operation::Symlink {
        target: target.as_bytes().to_vec(),
        path: FsPath::new(path),
    }
}
