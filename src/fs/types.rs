//! The file system's records (DESIGN §7): what an inode, a directory entry and an intent hold, and
//! the keys they are stored under.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type InodeNumber = u64;

/// The root directory. Inode 0 is never used.
pub const ROOT_INODE: InodeNumber = 1;

/// Bytes per data chunk. Big enough that a sequential 1 MiB write is a handful of records,
/// small enough that a 4 KiB write into a chunk moves little.
pub const CHUNK_BYTES: u64 = 128 * 1024;

/// Files at most this long keep their bytes in the inode record: one record per small file.
pub const INLINE_LIMIT_BYTES: u64 = 16 * 1024;

/// The longest name a directory entry may have (Linux NAME_MAX).
pub const NAME_MAX_BYTES: usize = 255;

/// The longest symlink target (Linux PATH_MAX).
pub const SYMLINK_MAX_BYTES: usize = 4095;

/// Extended attributes per inode: names and values together.
pub const XATTR_TOTAL_BYTES: usize = 64 * 1024;
pub const XATTR_NAME_MAX_BYTES: usize = 255;

/// Version of the record layout, kept in the superblock.
pub const LAYOUT_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            FileKind::Regular => libc::S_IFREG,
            FileKind::Directory => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
            FileKind::CharDevice => libc::S_IFCHR,
            FileKind::BlockDevice => libc::S_IFBLK,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => Some(FileKind::Regular),
            libc::S_IFDIR => Some(FileKind::Directory),
            libc::S_IFLNK => Some(FileKind::Symlink),
            libc::S_IFIFO => Some(FileKind::Fifo),
            libc::S_IFSOCK => Some(FileKind::Socket),
            libc::S_IFCHR => Some(FileKind::CharDevice),
            libc::S_IFBLK => Some(FileKind::BlockDevice),
            _ => None,
        }
    }
}

/// A point in time as POSIX keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanoseconds: u32,
}

impl Timestamp {
    pub fn from_unix_nanoseconds(nanoseconds: u64) -> Self {
        Self {
            seconds: (nanoseconds / 1_000_000_000) as i64,
            nanoseconds: (nanoseconds % 1_000_000_000) as u32,
        }
    }
}

/// Everything POSIX says about a file, plus what votefs needs to find its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: InodeNumber,
    pub kind: FileKind,
    /// Permission bits (`0o7777`), without the kind.
    pub permissions: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    /// Bytes for regular files and symlinks; entries for directories.
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Device number for device nodes.
    pub rdev: u32,
    /// A directory's parent, for `..` (the root is its own parent).
    pub parent: InodeNumber,
    #[serde(with = "serde_bytes")]
    pub symlink_target: Vec<u8>,
    /// The file's bytes when it is small (see [`INLINE_LIMIT_BYTES`]); `None` when they live in
    /// chunks.
    pub inline_data: Option<serde_bytes::ByteBuf>,
    /// Chunks at or past this byte offset have never been written since the last truncate: no
    /// chunk record needs reading or deleting there. Bytes between `size` and `stored_extent` may
    /// be left over from a write that never reached the inode, and are zeroed before the file
    /// grows over them.
    pub stored_extent: u64,
    pub xattrs: BTreeMap<Vec<u8>, serde_bytes::ByteBuf>,
}

impl Inode {
    pub fn is_directory(&self) -> bool {
        self.kind == FileKind::Directory
    }

    /// Mode bits as `stat` shows them: kind and permissions.
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | self.permissions
    }

    /// 512-byte blocks, as `st_blocks` counts them.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }

    /// Index one past the last chunk that may hold a record.
    pub fn stored_chunk_end(&self) -> u64 {
        self.stored_extent.div_ceil(CHUNK_BYTES)
    }
}

/// A directory entry's value: the child and its kind (for `readdir` without reading the inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub ino: InodeNumber,
    pub kind: FileKind,
}

/// The volume-wide record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    pub layout_version: u32,
    pub chunk_bytes: u64,
    /// Inode numbers below this may have been handed out; a mount reserves ranges above it.
    pub next_free_inode: InodeNumber,
}

/// Keys of the file system's records. Directory entries share their directory's partition (the
/// bytes before `#`), so one directory's entries live on one server per bank and list as a range;
/// chunks have no `#`, so a file's chunks spread over each bank's servers.
pub mod keys {
    use super::InodeNumber;

    pub const SUPERBLOCK: &[u8] = b"fs/superblock";
    /// Intent slots: an operation stores its intent in a slot no unapplied step refers to, so
    /// one operation's steps are applied while the next one's intent is stored. The first is
    /// the single slot of earlier versions.
    pub const INTENT_SLOTS: [&[u8]; 2] = [b"fs/intent", b"fs/intent.1"];
    pub const ORPHAN_PREFIX: &[u8] = b"fs/orphans#";

    pub fn inode(ino: InodeNumber) -> Vec<u8> {
        format!("inode/{ino:016x}").into_bytes()
    }

    pub fn directory_prefix(directory: InodeNumber) -> Vec<u8> {
        format!("dirent/{directory:016x}#").into_bytes()
    }

    pub fn directory_entry(directory: InodeNumber, name: &[u8]) -> Vec<u8> {
        let mut key = directory_prefix(directory);
        key.extend_from_slice(name);
        key
    }

    /// The name in a directory entry key, given the directory's prefix.
    pub fn name_of_entry<'key>(prefix: &[u8], key: &'key [u8]) -> Option<&'key [u8]> {
        key.strip_prefix(prefix)
    }

    pub fn chunk(ino: InodeNumber, index: u64) -> Vec<u8> {
        format!("chunk/{ino:016x}/{index:016x}").into_bytes()
    }

    pub fn orphan(ino: InodeNumber) -> Vec<u8> {
        let mut key = ORPHAN_PREFIX.to_vec();
        key.extend_from_slice(format!("{ino:016x}").as_bytes());
        key
    }

    pub fn orphan_inode(key: &[u8]) -> Option<InodeNumber> {
        let text = std::str::from_utf8(key.strip_prefix(ORPHAN_PREFIX)?).ok()?;
        InodeNumber::from_str_radix(text, 16).ok()
    }
}

/// One step of a multi-record operation, stated as the end state so that repeating it is
/// harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentStep {
    PutInode(Inode),
    DeleteInode(InodeNumber),
    PutEntry {
        directory: InodeNumber,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        entry: DirectoryEntry,
    },
    DeleteEntry {
        directory: InodeNumber,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Delete chunks `first..end` of a file.
    DeleteChunks {
        ino: InodeNumber,
        first: u64,
        end: u64,
    },
    PutOrphan(InodeNumber),
    DeleteOrphan(InodeNumber),
}

/// A multi-record operation, written before its steps. A mount that finds one applies every step
/// whose record is older than the intent (DESIGN §7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// What the operation was, for logs and fsck reports.
    pub operation: String,
    pub steps: Vec<IntentStep>,
}
