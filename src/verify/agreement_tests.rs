//! The key evidence that the reference model is right: long generated workloads give the same
//! answers from the model and from the kernel on a temporary directory. And the evidence that the
//! comparison bites: a target that goes wrong is caught at the right operation and field.

use std::cell::Cell;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use super::compare::{ComparisonOptions, Field};
use super::generate::Generator;
use super::operation::{Errno, FileKind, Operation, Reply};
use super::run::run_against;
use super::test_support::{fresh_pair, wall_clock};

const OPERATIONS_PER_SEED: usize = 2500;

/// Generous on purpose. The kernel stamps times from a coarse clock (ties within a few
/// milliseconds, which can flip a relatime decision the model makes on strictly ordered times)
/// and an operation can stall for seconds on a busy disk (a journal commit); either shows only
/// once seconds pass between operations. Which operations change which times is checked
/// precisely in the semantics tests, and here by the explicit decades-old times utimens sets.
fn workload_options() -> ComparisonOptions {
    ComparisonOptions {
        timestamp_tolerance_nanoseconds: 5_000_000_000,
        ..ComparisonOptions::default()
    }
}

#[test]
fn model_agrees_with_the_kernel_on_generated_workloads() {
    let mut errors_seen = std::collections::BTreeSet::new();
    for seed in 1..=4u64 {
        let (_directory, real, mut model) = fresh_pair();
        let report = run_against(
            &mut model,
            wall_clock,
            |operation| real.apply(operation),
            Generator::new(seed).take(OPERATIONS_PER_SEED),
            &workload_options(),
        );
        assert!(report.is_clean(), "seed {seed}: {report}");
        assert_eq!(report.operations, OPERATIONS_PER_SEED);
        // The workload must mostly do things, not just fail.
        assert!(
            report.reference_successes * 100 >= report.operations * 60,
            "seed {seed}: only {} of {} operations succeeded",
            report.reference_successes,
            report.operations
        );
        errors_seen.extend(report.reference_errors.keys().copied());
    }
    for errno in [
        Errno::ENOENT,
        Errno::EEXIST,
        Errno::ENOTEMPTY,
        Errno::ENOTDIR,
        Errno::EISDIR,
        Errno::EINVAL,
        Errno::ENODATA,
        Errno::ELOOP,
        Errno::EPERM,
    ] {
        assert!(
            errors_seen.contains(&errno),
            "no operation failed with {errno}: {errors_seen:?}"
        );
    }
}

#[test]
fn an_altered_read_is_reported_at_its_index() {
    let (_directory, real, mut model) = fresh_pair();
    let operation_index = Cell::new(0usize);
    let altered_index = Cell::new(None);
    let report = run_against(
        &mut model,
        wall_clock,
        |operation| {
            let index = operation_index.get();
            operation_index.set(index + 1);
            let mut response = real.apply(operation);
            if let Ok(Reply::Data(data)) = &mut response {
                if index >= 300 && altered_index.get().is_none() && data.len() > 10 {
                    data[7] ^= 0x40;
                    altered_index.set(Some(index));
                }
            }
            response
        },
        Generator::new(99).take(600),
        &workload_options(),
    );
    let altered_index = altered_index.get().expect("some read returned data");
    let first = report
        .first_divergence()
        .expect("the altered read diverges");
    assert_eq!(first.index, altered_index, "{report}");
    assert_eq!(first.divergences.len(), 1);
    assert_eq!(first.divergences[0].field, Field::Data);
    assert!(first.divergences[0].expected.contains("at offset 7"));
    // Only that read was altered; the real file is intact, so nothing else diverges.
    assert_eq!(report.divergent_operation_count, 1, "{report}");
}

#[test]
fn a_byte_changed_behind_the_models_back_is_reported() {
    let (directory, real, mut model) = fresh_pair();
    let mut generator = Generator::new(7);
    let mut operations: Vec<Operation> = generator.by_ref().take(400).collect();
    // A file that exists with data after those operations.
    let (victim, size) = generator
        .model()
        .entries()
        .into_iter()
        .filter(|(_, kind)| *kind == FileKind::RegularFile)
        .find_map(|(path, _)| {
            let size = generator.model().peek(&path)?.size;
            (size > 100).then_some((path, size))
        })
        .expect("the workload left a file with data");
    let corrupt_before = operations.len();
    operations.push(Operation::Read {
        path: victim.clone(),
        offset: 0,
        length: size,
    });
    operations.extend(generator.take(100));
    let victim_on_disk = directory
        .path()
        .join(std::ffi::OsStr::from_bytes(victim.as_bytes()));
    let operation_index = Cell::new(0usize);
    let report = run_against(
        &mut model,
        wall_clock,
        |operation| {
            if operation_index.get() == corrupt_before {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&victim_on_disk)
                    .expect("open the victim");
                let mut byte = [0u8; 1];
                file.read_exact_at(&mut byte, 50).expect("read a byte");
                file.write_all_at(&[byte[0] ^ 1], 50)
                    .expect("write it back changed");
            }
            operation_index.set(operation_index.get() + 1);
            real.apply(operation)
        },
        operations,
        &workload_options(),
    );
    let first = report.first_divergence().expect("the change is noticed");
    assert_eq!(first.index, corrupt_before, "{report}");
    assert_eq!(first.divergences[0].field, Field::Data, "{report}");
    assert!(
        first.divergences[0].expected.contains("at offset 50"),
        "{report}"
    );
}

mod arbitrary {
    use proptest::prelude::*;

    use super::super::compare::{compare, ComparisonOptions};
    use super::super::model::Model;
    use super::super::operation::{FsPath, Operation, RenameMode, Timestamp};
    use super::super::real_directory::{model_options_for, RealDirectory};
    use super::super::test_support::wall_clock;
    use super::within_shared_limits;

    /// Paths from an alphabet with the troublesome bytes: separators, dots (`..` must never
    /// escape), NUL.
    fn path() -> impl Strategy<Value = FsPath> {
        proptest::collection::vec(prop::sample::select(vec![b'a', b'b', b'/', b'.', 0]), 0..7)
            .prop_map(FsPath::from_bytes)
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop::sample::select(vec![b'a', b'/', b'.', 0]), 0..6)
    }

    fn offset() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..5000, any::<u64>(), Just(u64::MAX)]
    }

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        (any::<i64>(), any::<u32>())
            .prop_map(|(seconds, nanoseconds)| Timestamp::new(seconds, nanoseconds))
    }

    fn operation() -> impl Strategy<Value = Operation> {
        let mode = prop::sample::select(vec![
            RenameMode::Replace,
            RenameMode::NoReplace,
            RenameMode::Exchange,
        ]);
        prop_oneof![
            (path(), any::<u32>()).prop_map(|(path, mode)| Operation::Create { path, mode }),
            (path(), any::<u32>()).prop_map(|(path, mode)| Operation::Mkdir { path, mode }),
            path().prop_map(|path| Operation::Unlink { path }),
            path().prop_map(|path| Operation::Rmdir { path }),
            (path(), path(), mode).prop_map(|(from, to, mode)| Operation::Rename {
                from,
                to,
                mode
            }),
            (path(), path()).prop_map(|(from, to)| Operation::Link { from, to }),
            (bytes(), path()).prop_map(|(target, path)| Operation::Symlink { target, path }),
            path().prop_map(|path| Operation::Readlink { path }),
            (path(), offset(), bytes()).prop_map(|(path, offset, data)| Operation::Write {
                path,
                offset,
                data
            }),
            (path(), offset(), offset()).prop_map(|(path, offset, length)| Operation::Read {
                path,
                offset,
                length
            }),
            (path(), offset()).prop_map(|(path, size)| Operation::Truncate { path, size }),
            (path(), any::<u32>()).prop_map(|(path, mode)| Operation::Chmod { path, mode }),
            path().prop_map(|path| Operation::Stat { path }),
            path().prop_map(|path| Operation::ReadDir { path }),
            path().prop_map(|path| Operation::Fsync { path }),
            (path(), bytes(), bytes()).prop_map(|(path, name, value)| Operation::SetXattr {
                path,
                name,
                value
            }),
            (path(), bytes()).prop_map(|(path, name)| Operation::GetXattr { path, name }),
            path().prop_map(|path| Operation::ListXattr { path }),
            (path(), bytes()).prop_map(|(path, name)| Operation::RemoveXattr { path, name }),
            (path(), timestamp(), timestamp())
                .prop_map(|(path, atime, mtime)| Operation::Utimens { path, atime, mtime }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 128,
            // Failures found here are kept beside this file, under src/verify, and rerun first.
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
            )),
            ..ProptestConfig::default()
        })]
        /// Any operation, however malformed, gets the same answer from the model and from a real
        /// directory (within the limits they share), never a panic; and nothing appears outside
        /// the directory, whatever the symlinks say.
        #[test]
        fn arbitrary_operations_agree_and_stay_inside(
            operations in proptest::collection::vec(operation(), 1..30)
        ) {
            let outer = tempfile::tempdir().expect("temporary directory");
            let root = outer.path().join("root");
            std::fs::create_dir(&root).expect("create the root");
            let real = RealDirectory::open(&root).expect("open the root");
            let options = model_options_for(&root).expect("model options");
            let mut model = Model::new(options, wall_clock());
            // Past the model's limits (ext4's file size and timestamp ranges) the two may
            // legitimately part; from then on only the absence of panics is checked.
            let mut comparing = true;
            for operation in &operations {
                let actual = real.apply(operation);
                let expected = model.apply(operation, wall_clock());
                comparing &= within_shared_limits(operation);
                if comparing {
                    let divergences =
                        compare(operation, &expected, &actual, &ComparisonOptions::default());
                    prop_assert!(
                        divergences.is_empty(),
                        "{}: model {:?}, kernel {:?}: {:?}",
                        operation,
                        expected,
                        actual,
                        divergences
                    );
                }
            }
            let beside_the_root: Vec<_> = std::fs::read_dir(outer.path())
                .expect("list the outer directory")
                .map(|entry| entry.expect("entry").file_name())
                .collect();
            prop_assert_eq!(beside_the_root, vec![std::ffi::OsString::from("root")]);
        }
    }
}
/// Whether `operation` stays inside the limits the model shares with ext4 (files below 16 TiB,
/// timestamps within 32-bit seconds).
fn within_shared_limits(operation: &Operation) -> bool {
    match operation {
        Operation::Write { offset, .. } | Operation::Read { offset, .. } => *offset < 1 << 40,
        Operation::Truncate { size, .. } => *size < 1 << 40,
        Operation::Utimens { atime, mtime, .. } => {
            atime.seconds.abs() < 1 << 31 && mtime.seconds.abs() < 1 << 31
        }
        _ => true,
    }
}
