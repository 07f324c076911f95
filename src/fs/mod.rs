//! The file system over records (DESIGN §7), independent of FUSE: the FUSE adapter and the
//! simulator both drive [`FileSystem`].
//!
//! A mount holds the volume's fencing epoch, so it is the only writer: its in-memory copies of
//! inodes are the truth, and only misses go to the cluster. Every read that does go to the
//! cluster is voted by the quorum client.
//!
//! Locking: namespace operations (everything that changes a directory, plus attribute changes)
//! hold the namespace lock for their whole duration, which also serialises intents. Data
//! operations hold only their inode's lock. A namespace operation that changes a file's inode
//! takes that inode's lock after the namespace lock; a data operation never waits for the
//! namespace lock, so there is no lock cycle.

pub mod check;
mod data;
mod errno;
mod intent;
mod ledger;
pub mod namespace;
mod tasks;
pub mod types;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex as StdMutex};

use tokio::sync::Mutex as AsyncMutex;

use crate::env::Env;
use crate::quorum::{QuorumClient, QuorumError};

pub use errno::Errno;
pub use types::{DirectoryEntry, FileKind, Inode, InodeNumber, Timestamp, ROOT_INODE};

use types::{keys, Superblock, CHUNK_BYTES, LAYOUT_VERSION};

/// Inode numbers reserved in the superblock at a time.
const INODE_RESERVATION: u64 = 1024;

/// Inodes kept in memory beyond the open and locked ones.
const INODE_CACHE_CAPACITY: usize = 65_536;

/// Directory entries (present or known absent) kept in memory.
const ENTRY_CACHE_CAPACITY: usize = 100_000;

/// Clean chunks kept for reads.
const CLEAN_CHUNK_CACHE_CAPACITY: usize = 64;

/// Requests one operation keeps in flight at once (chunk fan-out, directory listings).
const FAN_OUT: usize = 32;

/// What a caller may change with [`FileSystem::set_attributes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttributeChanges {
    pub permissions: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeChange>,
    pub mtime: Option<TimeChange>,
    pub ctime: Option<Timestamp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeChange {
    Now,
    At(Timestamp),
}

/// How `rename` treats an existing target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

/// Who asks: the owner of what they create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
}

/// File-system totals for `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSystemStatistics {
    pub block_bytes: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max_bytes: u64,
}

/// What a mount found and fixed while opening the file system.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub formatted: bool,
    /// The operation of an intent left by a crashed mount, and how many of its steps were redone.
    pub intent_redone: Option<(String, usize)>,
    pub orphans_removed: u64,
}

/// One inode's in-memory state: the current inode and, for files, the write-back buffer.
pub(crate) struct FileState {
    /// Chunks written since the last flush. An empty buffer stands for a chunk to delete
    /// (it reads as zeros).
    pub dirty_chunks: BTreeMap<u64, Vec<u8>>,
    /// The inode has changes not yet stored.
    pub inode_dirty: bool,
    /// What the cluster holds for this inode (size and stored extent as last written).
    pub stored_size: u64,
    pub stored_extent: u64,
}

struct CachedInode {
    inode: Inode,
    state: Arc<AsyncMutex<FileState>>,
    /// Open file handles on this inode; an unlinked inode with open handles stays until the last
    /// release.
    open_count: u64,
}

impl CachedInode {
    /// An inode as the cluster holds it: nothing buffered, not open.
    fn new(inode: Inode) -> Self {
        Self {
            state: Arc::new(AsyncMutex::new(FileState {
                dirty_chunks: BTreeMap::new(),
                inode_dirty: false,
                stored_size: inode.size,
                stored_extent: inode.stored_extent,
            })),
            inode,
            open_count: 0,
        }
    }
}

#[derive(Default)]
struct NamespaceState {
    /// The intent slot the last operation's intent went to.
    last_intent_slot: usize,
    next_inode: InodeNumber,
    reserved_end: InodeNumber,
}

struct Shared<E: Env> {
    env: E,
    client: QuorumClient<E>,
    namespace: AsyncMutex<NamespaceState>,
    inodes: StdMutex<BTreeMap<InodeNumber, CachedInode>>,
    clean_chunks: StdMutex<tasks::ChunkCache>,
    entries: StdMutex<tasks::EntryCache>,
    handles: StdMutex<BTreeMap<u64, InodeNumber>>,
    /// Steps of stored intents not applied yet (see [`ledger`]).
    ledger: StdMutex<ledger::StepLedger>,
    /// Signalled whenever a write recorded in the ledger finishes.
    ledger_changed: tokio::sync::Notify,
    next_handle: std::sync::atomic::AtomicU64,
    /// Simulator only: record writes of multi-record operations left before one never finishes
    /// (negative: never). See [`FileSystem::stall_after_writes`].
    stall_countdown: Arc<std::sync::atomic::AtomicI64>,
}

/// A mounted volume's file system. Cheap to clone.
pub struct FileSystem<E: Env> {
    shared: Arc<Shared<E>>,
}

impl<E: Env> Clone for FileSystem<E> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

pub(crate) fn io_error(error: QuorumError) -> Errno {
    match error {
        QuorumError::Invalid(_) => Errno::EINVAL,
        QuorumError::ReadOnly => Errno::EROFS,
        other => {
            tracing::warn!("file system operation failed: {other}");
            Errno::EIO
        }
    }
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("file-system records always serialise")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, Errno> {
    postcard::from_bytes(bytes).map_err(|error| {
        // The record passed its tag, so the writer stored these bytes: a layout mismatch, not rot.
        tracing::error!(
            "record {} does not decode: {error}",
            crate::record::display_key(key)
        );
        Errno::EIO
    })
}

impl<E: Env> FileSystem<E> {
    /// Open the file system on a volume the client holds as its writer: format it if it is empty,
    /// finish a half-done operation of a crashed mount, and remove orphans.
    pub async fn mount(env: E, client: QuorumClient<E>) -> Result<(Self, RecoveryReport), Errno> {
        let shared = Arc::new(Shared {
            env,
            client,
            namespace: AsyncMutex::new(NamespaceState::default()),
            inodes: StdMutex::new(BTreeMap::new()),
            clean_chunks: StdMutex::new(tasks::ChunkCache::new(CLEAN_CHUNK_CACHE_CAPACITY)),
            entries: StdMutex::new(tasks::EntryCache::new(ENTRY_CACHE_CAPACITY)),
            handles: StdMutex::new(BTreeMap::new()),
            ledger: StdMutex::new(ledger::StepLedger::default()),
            ledger_changed: tokio::sync::Notify::new(),
            next_handle: std::sync::atomic::AtomicU64::new(1),
            stall_countdown: Arc::new(std::sync::atomic::AtomicI64::new(-1)),
        });
        let file_system = Self { shared };
        let mut report = RecoveryReport::default();
        let mut namespace = file_system.shared.namespace.lock().await;
        let superblock = match file_system
            .shared
            .client
            .get(keys::SUPERBLOCK)
            .await
            .map_err(io_error)?
        {
            Some(bytes) => {
                let superblock: Superblock = decode(keys::SUPERBLOCK, &bytes)?;
                if superblock.layout_version != LAYOUT_VERSION
                    || superblock.chunk_bytes != CHUNK_BYTES
                {
                    tracing::error!(
                        "the volume has layout {} with {}-byte chunks; this votefs reads layout {LAYOUT_VERSION} with {CHUNK_BYTES}-byte chunks",
                        superblock.layout_version,
                        superblock.chunk_bytes
                    );
                    return Err(Errno::EINVAL);
                }
                superblock
            }
            None => {
                report.formatted = true;
                let superblock = file_system.format().await?;
                // A new volume's root is empty: every name in it is known absent.
                file_system
                    .shared
                    .entries
                    .lock()
                    .unwrap()
                    .mark_complete(ROOT_INODE);
                superblock
            }
        };
        namespace.next_inode = superblock.next_free_inode;
        namespace.reserved_end = superblock.next_free_inode;
        report.intent_redone = file_system.redo_stored_intents().await?;
        drop(namespace);
        report.orphans_removed = file_system.remove_orphans().await?;
        Ok((file_system, report))
    }

    async fn format(&self) -> Result<Superblock, Errno> {
        let now = self.now();
        let root = Inode {
            ino: ROOT_INODE,
            kind: FileKind::Directory,
            permissions: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            parent: ROOT_INODE,
            symlink_target: Vec::new(),
            inline_data: None,
            stored_extent: 0,
            xattrs: BTreeMap::new(),
        };
        let client = &self.shared.client;
        // The superblock goes last: its presence says the root exists.
        if client
            .get(&keys::inode(ROOT_INODE))
            .await
            .map_err(io_error)?
            .is_none()
        {
            client
                .put(&keys::inode(ROOT_INODE), &encode(&root))
                .await
                .map_err(io_error)?;
        }
        let superblock = Superblock {
            layout_version: LAYOUT_VERSION,
            chunk_bytes: CHUNK_BYTES,
            next_free_inode: ROOT_INODE + 1,
        };
        client
            .put(keys::SUPERBLOCK, &encode(&superblock))
            .await
            .map_err(io_error)?;
        tracing::info!("formatted a new file system");
        Ok(superblock)
    }

    /// For the simulator's crash points: after `writes` more record writes of multi-record
    /// operations (the intent included), the next one never finishes, as if the client died in
    /// the middle of the operation; the simulator then kills the client. Never set outside it.
    pub fn stall_after_writes(&self, writes: i64) {
        self.shared
            .stall_countdown
            .store(writes, std::sync::atomic::Ordering::SeqCst);
    }

    /// Wait forever if the stall countdown (see [`FileSystem::stall_after_writes`]) runs out
    /// with this write.
    pub(crate) async fn maybe_stall(countdown: &std::sync::atomic::AtomicI64) {
        use std::sync::atomic::Ordering;
        let stall = countdown
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                (left >= 0).then_some(left - 1)
            })
            .is_ok_and(|left| left == 0);
        if stall {
            std::future::pending::<()>().await;
        }
    }

    pub fn client(&self) -> &QuorumClient<E> {
        &self.shared.client
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_unix_nanoseconds(self.shared.env.wall_clock_ns())
    }

    /// Hand out a new inode number, reserving a range in the superblock when the last one is used
    /// up (so numbers are never reused, even after a crash).
    async fn allocate_inode(&self, namespace: &mut NamespaceState) -> Result<InodeNumber, Errno> {
        if namespace.next_inode >= namespace.reserved_end {
            let reserved_end = namespace.next_inode + INODE_RESERVATION;
            let superblock = Superblock {
                layout_version: LAYOUT_VERSION,
                chunk_bytes: CHUNK_BYTES,
                next_free_inode: reserved_end,
            };
            self.shared
                .client
                .put(keys::SUPERBLOCK, &encode(&superblock))
                .await
                .map_err(io_error)?;
            namespace.reserved_end = reserved_end;
        }
        let ino = namespace.next_inode;
        namespace.next_inode += 1;
        Ok(ino)
    }

    /// The inode, from memory or the cluster.
    pub async fn inode(&self, ino: InodeNumber) -> Result<Inode, Errno> {
        Ok(self.cached(ino).await?.0)
    }

    /// The inode and its state lock, loading it into the cache if needed.
    async fn cached(&self, ino: InodeNumber) -> Result<(Inode, Arc<AsyncMutex<FileState>>), Errno> {
        if ino == 0 {
            return Err(Errno::ENOENT);
        }
        if let Some(cached) = self.shared.inodes.lock().unwrap().get(&ino) {
            return Ok((cached.inode.clone(), cached.state.clone()));
        }
        let key = keys::inode(ino);
        let bytes = match self.pending_value(&key) {
            Some(pending) => pending,
            None => self.shared.client.get(&key).await.map_err(io_error)?,
        }
        .ok_or(Errno::ENOENT)?;
        let inode: Inode = decode(&key, &bytes)?;
        assert_eq!(inode.ino, ino, "inode record holds another inode");
        let mut inodes = self.shared.inodes.lock().unwrap();
        // Someone may have loaded (and changed) it meanwhile: theirs is newer.
        let cached = inodes.entry(ino).or_insert_with(|| CachedInode::new(inode));
        let result = (cached.inode.clone(), cached.state.clone());
        Self::trim_cache(&mut inodes);
        Ok(result)
    }

    /// Drop idle inodes when the cache is over capacity: not open, not locked, nothing unstored.
    fn trim_cache(inodes: &mut BTreeMap<InodeNumber, CachedInode>) {
        if inodes.len() <= INODE_CACHE_CAPACITY {
            return;
        }
        let idle: Vec<InodeNumber> = inodes
            .iter()
            .filter(|(ino, cached)| {
                **ino != ROOT_INODE
                    && cached.open_count == 0
                    && Arc::strong_count(&cached.state) == 1
                    && cached
                        .state
                        .try_lock()
                        .is_ok_and(|state| state.dirty_chunks.is_empty() && !state.inode_dirty)
            })
            .map(|(ino, _)| *ino)
            .take(inodes.len() - INODE_CACHE_CAPACITY / 2)
            .collect();
        for ino in idle {
            inodes.remove(&ino);
        }
    }

    /// Replace the in-memory inode (the caller holds its state lock or the namespace lock).
    fn set_cached_inode(&self, inode: Inode) {
        let mut inodes = self.shared.inodes.lock().unwrap();
        match inodes.get_mut(&inode.ino) {
            Some(cached) => cached.inode = inode,
            None => {
                inodes.insert(inode.ino, CachedInode::new(inode));
            }
        }
    }

    fn forget_cached_inode(&self, ino: InodeNumber) {
        self.shared.inodes.lock().unwrap().remove(&ino);
        self.shared.clean_chunks.lock().unwrap().forget_inode(ino);
    }

    fn current_inode(&self, ino: InodeNumber) -> Option<Inode> {
        self.shared
            .inodes
            .lock()
            .unwrap()
            .get(&ino)
            .map(|cached| cached.inode.clone())
    }

    /// Totals for `statfs`. votefs does not know its servers' free space yet, so it reports a
    /// large fixed capacity (issue: server statistics).
    pub fn statistics(&self) -> FileSystemStatistics {
        let block_bytes = 4096;
        let blocks = (1u64 << 40) / block_bytes;
        FileSystemStatistics {
            block_bytes,
            blocks,
            blocks_free: blocks,
            files: 1 << 32,
            files_free: 1 << 32,
            name_max_bytes: types::NAME_MAX_BYTES as u64,
        }
    }

    /// Store everything written so far and the intent slot's end state; for a clean unmount.
    pub async fn shut_down(&self) -> Result<(), Errno> {
        let inodes: Vec<InodeNumber> = self.shared.inodes.lock().unwrap().keys().copied().collect();
        let mut first_error = None;
        for ino in inodes {
            if let Err(error) = self.flush(ino).await {
                first_error.get_or_insert(error);
            }
        }
        let _namespace = self.shared.namespace.lock().await;
        match self.settle(b"").await {
            // Every step is applied: the intents are history.
            Ok(()) if self.shared.ledger.lock().unwrap().is_empty() => {
                for slot in keys::INTENT_SLOTS {
                    if let Err(error) = self.shared.client.delete(slot).await {
                        first_error.get_or_insert(io_error(error));
                    }
                }
            }
            Ok(()) => {}
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}
