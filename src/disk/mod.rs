//! The `Disk` seam: the few file operations the record store needs (DESIGN §3).
//!
//! [`file_disk::FileDisk`] is a directory on the real file system; the simulator's disk keeps
//! pristine bytes plus a fault plan (bit flips, lost unsynced writes, torn writes, ...).

pub mod file_disk;

use std::future::Future;
use std::io;

pub use file_disk::FileDisk;

/// A flat namespace of files that can be appended to, read at an offset, synced and replaced.
///
/// To be correct, an implementation must:
/// - make bytes appended to a file readable (by `read_at`) as soon as `append` returns, in the
///   order they were appended;
/// - make every byte appended to a file before a successful `sync(name)` survive a crash, and the
///   existence of that file too; bytes not covered by a sync may be lost on a crash, and the last
///   unsynced append may survive partially (a torn write) — nothing else may change;
/// - make `write_atomic(name, bytes)` durable when it returns, and leave either the whole old
///   content or the whole new content after a crash at any point;
/// - return short reads only at the end of a file;
/// - return an error of kind `NotFound` for operations on a missing file (except `append`, which
///   creates it, and `remove`, which succeeds);
/// - return an error (never wrong bytes silently, unless it models rot the store must catch) when
///   it cannot do what was asked.
///
/// The store treats a failed `sync` as fatal: it never retries one (the kernel may have dropped the
/// dirty pages, so a retry could report success for lost data).
pub trait Disk: Send + Sync + 'static {
    /// Names of all files, in no particular order.
    fn list(&self) -> impl Future<Output = io::Result<Vec<String>>> + Send;
    /// Up to `length` bytes starting at `offset` (fewer only at the end of the file).
    fn read_at(
        &self,
        name: &str,
        offset: u64,
        length: usize,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
    /// The current length of a file in bytes.
    fn size(&self, name: &str) -> impl Future<Output = io::Result<u64>> + Send;
    /// Append `bytes` at the end of `name`, creating it if needed.
    fn append(&self, name: &str, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Make everything appended to `name` so far (and the file's existence) durable.
    fn sync(&self, name: &str) -> impl Future<Output = io::Result<()>> + Send;
    /// Cut `name` to `length` bytes, durably.
    fn truncate(&self, name: &str, length: u64) -> impl Future<Output = io::Result<()>> + Send;
    /// Delete `name`, durably. Deleting a missing file succeeds.
    fn remove(&self, name: &str) -> impl Future<Output = io::Result<()>> + Send;
    /// Replace the whole content of `name` atomically and durably.
    fn write_atomic(&self, name: &str, bytes: &[u8])
        -> impl Future<Output = io::Result<()>> + Send;
}

/// Read a whole small file, or `None` if it does not exist.
pub async fn read_whole<D: Disk>(disk: &D, name: &str) -> io::Result<Option<Vec<u8>>> {
    let size = match disk.size(name).await {
        Ok(size) => size,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let length = usize::try_from(size).map_err(|_| io::Error::other("file too large"))?;
    disk.read_at(name, 0, length).await.map(Some)
}
