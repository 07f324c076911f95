//! The built-in `copy` workload: write files of seeded random sizes and contents, remember each
//! file's SHA-256, and keep re-reading files at random to check them, until the deadline. The
//! working set is bounded ([`TOTAL_BYTES_LIMIT`], [`FILES_LIMIT`]): once full, files are
//! overwritten with new contents instead of added.
//!
//! Every write ends with `fsync`, so that a file the workload records is one the mount stored on
//! the cluster; every read first drops the file's pages from the kernel's cache
//! (`POSIX_FADV_DONTNEED`), so that it is answered by the cluster's vote, not by memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::workload::WorkloadCounters;
use crate::rng::SeededRng;

/// Bytes of files kept at once.
pub const TOTAL_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
/// Files kept at once.
pub const FILES_LIMIT: usize = 64;
/// Sizes are log-uniform: a power of two up to `2^MAX_FILE_BYTES_LOG2` is drawn, then a size
/// between half and one and a half times it (so at most 3 MiB).
const MAX_FILE_BYTES_LOG2: u64 = 21;
/// Bytes per read or write call.
const PIECE_BYTES: usize = 256 * 1024;
/// Problems described in the report; the counters count all of them.
const NOTES_LIMIT: usize = 20;

/// What the workload knows a file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// Every file the workload wrote and still vouches for, by name, and what went wrong.
#[derive(Debug, Default)]
pub struct CopyOutcome {
    pub files: BTreeMap<String, FileRecord>,
    pub notes: Vec<String>,
}

fn note(notes: &mut Vec<String>, text: String) {
    if notes.len() < NOTES_LIMIT {
        notes.push(text);
    }
}

/// A log-uniform size: small files are as common as large ones, per order of magnitude.
fn file_bytes(random: &mut SeededRng) -> u64 {
    let bits = random.below(MAX_FILE_BYTES_LOG2 + 1);
    random.below(1 << bits) + (1 << bits) / 2
}

fn write_file(path: &Path, contents: &[u8], counters: &WorkloadCounters) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    for piece in contents.chunks(PIECE_BYTES) {
        file.write_all(piece)?;
        counters.add_written(piece.len() as u64);
    }
    file.sync_all()
}

/// Read `path` from the cluster (its cached pages dropped first) and hash it.
fn read_file(path: &Path, counters: &WorkloadCounters) -> std::io::Result<(u64, [u8; 32])> {
    let mut file = File::open(path)?;
    // SAFETY: posix_fadvise(2) on a descriptor we own; it only drops clean cached pages.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; PIECE_BYTES];
    let mut total = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        counters.add_read(read as u64);
        total += read as u64;
    }
    Ok((total, hasher.finalize().into()))
}

/// Read one file and compare it with its record; counts a mismatch or a failed operation.
pub fn verify_file(
    directory: &Path,
    name: &str,
    record: &FileRecord,
    counters: &WorkloadCounters,
    notes: &mut Vec<String>,
) -> bool {
    counters.add_operation();
    match read_file(&directory.join(name), counters) {
        Ok((bytes, sha256)) if bytes == record.bytes && sha256 == record.sha256 => {
            counters.add_verified(bytes);
            true
        }
        Ok((bytes, _)) => {
            counters.add_mismatch();
            note(
                notes,
                format!(
                    "{name}: read {bytes} bytes that differ from the {} bytes written",
                    record.bytes
                ),
            );
            false
        }
        Err(error) => {
            counters.add_failure();
            note(notes, format!("reading {name} failed: {error}"));
            false
        }
    }
}

/// Write and re-read files in `directory` until `deadline` or `stop`.
pub fn run(
    directory: PathBuf,
    seed: u64,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    counters: Arc<WorkloadCounters>,
) -> CopyOutcome {
    let mut random = SeededRng::new(seed);
    let mut outcome = CopyOutcome::default();
    let mut next_index = 0usize;
    let mut total_bytes = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let bytes = file_bytes(&mut random);
        let name = if outcome.files.len() < FILES_LIMIT && total_bytes + bytes <= TOTAL_BYTES_LIMIT
        {
            next_index += 1;
            format!("copy-{next_index:04}")
        } else {
            let names: Vec<&String> = outcome.files.keys().collect();
            names[random.below(names.len() as u64) as usize].clone()
        };
        if let Some(old) = outcome.files.remove(&name) {
            total_bytes -= old.bytes;
        }
        let mut contents = vec![0u8; bytes as usize];
        SeededRng::new(random.next_u64()).fill(&mut contents);
        counters.add_operation();
        match write_file(&directory.join(&name), &contents, &counters) {
            Ok(()) => {
                total_bytes += bytes;
                outcome.files.insert(
                    name,
                    FileRecord {
                        bytes,
                        sha256: Sha256::digest(&contents).into(),
                    },
                );
            }
            Err(error) => {
                // What the file holds now is unknown: it is no longer vouched for.
                counters.add_failure();
                note(
                    &mut outcome.notes,
                    format!("writing {name} failed: {error}"),
                );
                let _ = std::fs::remove_file(directory.join(&name));
            }
        }
        if outcome.files.is_empty() {
            continue;
        }
        let names: Vec<&String> = outcome.files.keys().collect();
        let name = names[random.below(names.len() as u64) as usize].clone();
        let record = outcome.files[&name].clone();
        verify_file(&directory, &name, &record, &counters, &mut outcome.notes);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn files_are_written_recorded_and_verified() {
        let directory = tempfile::tempdir().unwrap();
        let counters = Arc::new(WorkloadCounters::default());
        let outcome = run(
            directory.path().to_path_buf(),
            5,
            Instant::now() + Duration::from_millis(300),
            Arc::new(AtomicBool::new(false)),
            counters.clone(),
        );
        assert!(!outcome.files.is_empty());
        assert!(outcome.notes.is_empty(), "{:?}", outcome.notes);
        let totals = counters.totals();
        assert_eq!(totals.failed_operations, 0);
        assert_eq!(totals.mismatches, 0);
        assert!(totals.operations >= 2);
        assert!(totals.written_bytes > 0);

        // Every file checks out; a damaged one is a mismatch, a missing one a failure.
        let mut notes = Vec::new();
        for (name, record) in &outcome.files {
            assert!(verify_file(
                directory.path(),
                name,
                record,
                &counters,
                &mut notes
            ));
        }
        let (name, record) = outcome
            .files
            .iter()
            .find(|(_, record)| record.bytes > 0)
            .expect("a non-empty file");
        let path = directory.path().join(name);
        let mut contents = std::fs::read(&path).unwrap();
        contents[0] ^= 1;
        std::fs::write(&path, &contents).unwrap();
        assert!(!verify_file(
            directory.path(),
            name,
            record,
            &counters,
            &mut notes
        ));
        assert_eq!(counters.totals().mismatches, 1);
        std::fs::remove_file(&path).unwrap();
        assert!(!verify_file(
            directory.path(),
            name,
            record,
            &counters,
            &mut notes
        ));
        assert_eq!(counters.totals().failed_operations, 1);
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn sizes_are_bounded_and_seeded() {
        let sizes = |seed| {
            let mut random = SeededRng::new(seed);
            (0..200)
                .map(|_| file_bytes(&mut random))
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(1), sizes(1));
        assert!(sizes(1)
            .iter()
            .all(|bytes| *bytes < 2 << MAX_FILE_BYTES_LOG2));
        assert!(sizes(1).iter().any(|bytes| *bytes < 1024));
        assert!(sizes(1).iter().any(|bytes| *bytes > 256 * 1024));
    }
}
