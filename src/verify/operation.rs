//! The operation language the verifier speaks: path-based file-system operations, their responses
//! and the checks every implementation applies before touching a file system.
//!
//! Operations name files by [`FsPath`], a path relative to the root of the file system under
//! test, so that the same trace can be replayed against the reference model, a real directory or a
//! FUSE mount. Everything here is serde-serialisable so that traces can be recorded and replayed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest name a directory entry may have (Linux `NAME_MAX`).
pub const MAXIMUM_NAME_LENGTH: usize = 255;
/// Paths (and symlink targets) must be shorter than this, counting the terminating NUL that the
/// system call needs (Linux `PATH_MAX`).
pub const MAXIMUM_PATH_LENGTH: usize = 4096;
/// The largest extended-attribute value Linux accepts (`XATTR_SIZE_MAX`).
pub const MAXIMUM_XATTR_VALUE_LENGTH: usize = 65536;
/// A read returns at most this many bytes, whatever length it asks for: it bounds the memory one
/// operation can make an implementation allocate, and every implementation clamps the same way.
pub const MAXIMUM_READ_LENGTH: u64 = 16 * 1024 * 1024;
/// How many symlinks one path resolution may follow before it fails with ELOOP (`MAXSYMLINKS`).
pub const MAXIMUM_SYMLINKS_FOLLOWED: u32 = 40;

/// An error number, as the Linux system call returned it. Displays as its name (`ENOENT`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const E2BIG: Errno = Errno(libc::E2BIG);

    /// The errno of an `io::Error` from the operating system; EIO for errors that carry none
    /// (they do not come from a system call, so EIO is the closest honest answer).
    pub fn from_io_error(error: &std::io::Error) -> Errno {
        Errno(error.raw_os_error().unwrap_or(libc::EIO))
    }

    /// The symbolic name of a common errno, or `None` for the rare ones.
    pub fn name(self) -> Option<&'static str> {
        let name = match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::ESRCH => "ESRCH",
            libc::EINTR => "EINTR",
            libc::EIO => "EIO",
            libc::ENXIO => "ENXIO",
            libc::E2BIG => "E2BIG",
            libc::EBADF => "EBADF",
            libc::EAGAIN => "EAGAIN",
            libc::ENOMEM => "ENOMEM",
            libc::EACCES => "EACCES",
            libc::EFAULT => "EFAULT",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EXDEV => "EXDEV",
            libc::ENODEV => "ENODEV",
            libc::ENOTDIR => "ENOTDIR",
            libc::EISDIR => "EISDIR",
            libc::EINVAL => "EINVAL",
            libc::ENFILE => "ENFILE",
            libc::EMFILE => "EMFILE",
            libc::ETXTBSY => "ETXTBSY",
            libc::EFBIG => "EFBIG",
            libc::ENOSPC => "ENOSPC",
            libc::ESPIPE => "ESPIPE",
            libc::EROFS => "EROFS",
            libc::EMLINK => "EMLINK",
            libc::ERANGE => "ERANGE",
            libc::EDEADLK => "EDEADLK",
            libc::ENAMETOOLONG => "ENAMETOOLONG",
            libc::ENOSYS => "ENOSYS",
            libc::ENOTEMPTY => "ENOTEMPTY",
            libc::ELOOP => "ELOOP",
            libc::ENODATA => "ENODATA",
            libc::EOVERFLOW => "EOVERFLOW",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::ENOTCONN => "ENOTCONN",
            libc::ETIMEDOUT => "ETIMEDOUT",
            libc::ESTALE => "ESTALE",
            libc::EDQUOT => "EDQUOT",
            libc::ECANCELED => "ECANCELED",
            _ => return None,
        };
        Some(name)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => formatter.write_str(name),
            None => write!(formatter, "errno {}", self.0),
        }
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

/// A path relative to the root of the file system under test: names separated by `/`, no leading
/// or trailing `/`; the empty path is the root. Names may be any bytes except `/` and NUL, and are
/// never `.` or `..` (a path that breaks these rules is refused with EINVAL by every
/// implementation, so a malformed trace cannot reach outside the root).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FsPath {
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

impl FsPath {
    /// The root directory.
    pub fn root() -> FsPath {
        FsPath { bytes: Vec::new() }
    }

    /// A path from its `/`-separated bytes, unchecked: [`FsPath::validate`] judges it when it is
    /// used, so that a recorded trace round-trips exactly.
    pub fn from_bytes(bytes: Vec<u8>) -> FsPath {
        FsPath { bytes }
    }

    /// A path from `/`-separated text such as `"dir/file"`; `""` is the root.
    pub fn new(text: &str) -> FsPath {
        FsPath::from_bytes(text.as_bytes().to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn is_root(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The names along the path, outermost first; none for the root.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        // `split` yields one empty piece for an empty slice; the root has no components.
        let pieces = if self.bytes.is_empty() {
            None
        } else {
            Some(self.bytes.split(|byte| *byte == b'/'))
        };
        pieces.into_iter().flatten()
    }

    /// How many names the path has (0 for the root).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// This path with `name` appended.
    pub fn join(&self, name: &[u8]) -> FsPath {
        let mut bytes = self.bytes.clone();
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        FsPath { bytes }
    }

    /// The directory holding this path and its last name; `None` for the root.
    pub fn parent_and_name(&self) -> Option<(FsPath, &[u8])> {
        if self.bytes.is_empty() {
            return None;
        }
        match self.bytes.iter().rposition(|byte| *byte == b'/') {
            Some(slash) => Some((
                FsPath::from_bytes(self.bytes[..slash].to_vec()),
                &self.bytes[slash + 1..],
            )),
            None => Some((FsPath::root(), &self.bytes[..])),
        }
    }

    /// Whether `self` is `other` or lies inside it.
    pub fn starts_with(&self, other: &FsPath) -> bool {
        let mut own = self.components();
        other
            .components()
            .all(|component| own.next() == Some(component))
    }

    /// EINVAL for an empty, `.` or `..` name or a NUL byte; ENAMETOOLONG for a path of
    /// [`MAXIMUM_PATH_LENGTH`] bytes or more. Over-long single names are not refused here: a file
    /// system reports those from its lookup, after the errors of the components before them.
    pub fn validate(&self) -> Result<(), Errno> {
        if self.bytes.len() >= MAXIMUM_PATH_LENGTH {
            return Err(Errno::ENAMETOOLONG);
        }
        for component in self.components() {
            if component.is_empty()
                || component == b"."
                || component == b".."
                || component.contains(&0)
            {
                return Err(Errno::EINVAL);
            }
        }
        Ok(())
    }
}

impl fmt::Display for FsPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "/{}", String::from_utf8_lossy(&self.bytes))
    }
}

impl fmt::Debug for FsPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}", format!("{self}"))
    }
}

/// A point in time as the file system stores it: seconds and nanoseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub seconds: i64,
    /// Always below one billion in a valid timestamp.
    pub nanoseconds: u32,
}

impl Timestamp {
    pub const fn new(seconds: i64, nanoseconds: u32) -> Timestamp {
        Timestamp {
            seconds,
            nanoseconds,
        }
    }

    /// Nanoseconds since the epoch, wide enough that no valid timestamp overflows.
    pub fn total_nanoseconds(self) -> i128 {
        i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanoseconds)
    }

    /// The timestamp halfway between two valid timestamps.
    pub fn midpoint(self, other: Timestamp) -> Timestamp {
        let total = (self.total_nanoseconds() + other.total_nanoseconds()).div_euclid(2);
        Timestamp {
            // Between two i64 second counts, so it fits.
            seconds: total.div_euclid(1_000_000_000) as i64,
            nanoseconds: total.rem_euclid(1_000_000_000) as u32,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}.{:09}", self.seconds, self.nanoseconds)
    }
}

/// How a rename treats an existing target (the flags of `renameat2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Plain `rename`: an existing target is replaced.
    Replace,
    /// `RENAME_NOREPLACE`: an existing target is an error (EEXIST).
    NoReplace,
    /// `RENAME_EXCHANGE`: source and target swap places; both must exist.
    Exchange,
}

/// One file-system operation, as a program would issue it through system calls.
///
/// Symlinks in the middle of a path are followed (confined to the root: an absolute target or a
/// `..` at the root resolves inside the file system under test). The last name of a path is
/// followed by the operations that open it like `open` does (Read, Write, Truncate, Chmod,
/// Fsync, ReadDir, Utimens and the xattr operations) and is not followed by the others (Create,
/// Mkdir, Unlink, Rmdir, Rename, Link, Symlink, Readlink, Stat).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    /// `open(path, O_CREAT | O_EXCL | O_WRONLY, mode)` then `close`. The process umask applies.
    Create { path: FsPath, mode: u32 },
    /// `mkdir(path, mode)`. The process umask applies.
    Mkdir { path: FsPath, mode: u32 },
    /// `unlink(path)`.
    Unlink { path: FsPath },
    /// `rmdir(path)`.
    Rmdir { path: FsPath },
    /// `renameat2(from, to, mode)`.
    Rename {
        from: FsPath,
        to: FsPath,
        mode: RenameMode,
    },
    /// `link(from, to)`: a new name for the inode `from` names (a symlink itself, not followed).
    Link { from: FsPath, to: FsPath },
    /// `symlink(target, path)`.
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        path: FsPath,
    },
    /// `readlink(path)`.
    Readlink { path: FsPath },
    /// `open(path, O_WRONLY)`, `pwrite(data, offset)` until all is written or it fails, `close`.
    Write {
        path: FsPath,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `open(path, O_RDONLY)`, `pread` from `offset` until `length` bytes (at most
    /// [`MAXIMUM_READ_LENGTH`]) or the end of the file, `close`.
    Read {
        path: FsPath,
        offset: u64,
        length: u64,
    },
    /// `open(path, O_WRONLY)`, `ftruncate(size)`, `close`.
    Truncate { path: FsPath, size: u64 },
    /// `chmod(path, mode)`.
    Chmod { path: FsPath, mode: u32 },
    /// `lstat(path)`.
    Stat { path: FsPath },
    /// `opendir(path)` and every entry except `.` and `..`.
    ReadDir { path: FsPath },
    /// `open(path, O_RDONLY)`, `fsync`, `close`.
    Fsync { path: FsPath },
    /// `setxattr(path, name, value, 0)`: creates or replaces.
    SetXattr {
        path: FsPath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// `getxattr(path, name)`.
    GetXattr {
        path: FsPath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// `listxattr(path)`.
    ListXattr { path: FsPath },
    /// `removexattr(path, name)`.
    RemoveXattr {
        path: FsPath,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// `utimensat(path, [atime, mtime], 0)` with explicit times.
    Utimens {
        path: FsPath,
        atime: Timestamp,
        mtime: Timestamp,
    },
}

/// Which [`Reply`] variant a successful operation produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyShape {
    Done,
    Written,
    Data,
    Attributes,
    Entries,
    Target,
    Value,
    Names,
}

impl Operation {
    /// The operation's name, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Create { .. } => "create",
            Operation::Mkdir { .. } => "mkdir",
            Operation::Unlink { .. } => "unlink",
            Operation::Rmdir { .. } => "rmdir",
            Operation::Rename { .. } => "rename",
            Operation::Link { .. } => "link",
            Operation::Symlink { .. } => "symlink",
            Operation::Readlink { .. } => "readlink",
            Operation::Write { .. } => "write",
            Operation::Read { .. } => "read",
            Operation::Truncate { .. } => "truncate",
            Operation::Chmod { .. } => "chmod",
            Operation::Stat { .. } => "stat",
            Operation::ReadDir { .. } => "readdir",
            Operation::Fsync { .. } => "fsync",
            Operation::SetXattr { .. } => "setxattr",
            Operation::GetXattr { .. } => "getxattr",
            Operation::ListXattr { .. } => "listxattr",
            Operation::RemoveXattr { .. } => "removexattr",
            Operation::Utimens { .. } => "utimens",
        }
    }

    /// The reply variant this operation produces when it succeeds.
    pub fn reply_shape(&self) -> ReplyShape {
        match self {
            Operation::Write { .. } => ReplyShape::Written,
            Operation::Read { .. } => ReplyShape::Data,
            Operation::Stat { .. } => ReplyShape::Attributes,
            Operation::ReadDir { .. } => ReplyShape::Entries,
            Operation::Readlink { .. } => ReplyShape::Target,
            Operation::GetXattr { .. } => ReplyShape::Value,
            Operation::ListXattr { .. } => ReplyShape::Names,
            _ => ReplyShape::Done,
        }
    }

    /// Every path the operation names.
    pub fn paths(&self) -> Vec<&FsPath> {
        match self {
            Operation::Rename { from, to, .. } | Operation::Link { from, to } => vec![from, to],
            Operation::Create { path, .. }
            | Operation::Mkdir { path, .. }
            | Operation::Unlink { path }
            | Operation::Rmdir { path }
            | Operation::Symlink { path, .. }
            | Operation::Readlink { path }
            | Operation::Write { path, .. }
            | Operation::Read { path, .. }
            | Operation::Truncate { path, .. }
            | Operation::Chmod { path, .. }
            | Operation::Stat { path }
            | Operation::ReadDir { path }
            | Operation::Fsync { path }
            | Operation::SetXattr { path, .. }
            | Operation::GetXattr { path, .. }
            | Operation::ListXattr { path }
            | Operation::RemoveXattr { path, .. }
            | Operation::Utimens { path, .. } => vec![path],
        }
    }

    /// The checks every implementation makes before it resolves a path, so that malformed input
    /// gets the same errno everywhere and never reaches a system call that would misread it
    /// (a NUL inside a name, a nanosecond count that `utimensat` would take for `UTIME_NOW`).
    /// The kernel makes most of these checks before path lookup too.
    pub fn validate(&self) -> Result<(), Errno> {
        match self {
            Operation::Symlink { target, .. } => validate_symlink_target(target)?,
            Operation::SetXattr { name, value, .. } => {
                validate_xattr_name(name)?;
                if value.len() > MAXIMUM_XATTR_VALUE_LENGTH {
                    return Err(Errno::E2BIG);
                }
            }
            Operation::GetXattr { name, .. } | Operation::RemoveXattr { name, .. } => {
                validate_xattr_name(name)?
            }
            Operation::Utimens { atime, mtime, .. }
                if atime.nanoseconds >= 1_000_000_000 || mtime.nanoseconds >= 1_000_000_000 =>
            {
                return Err(Errno::EINVAL)
            }
            _ => {}
        }
        for path in self.paths() {
            path.validate()?;
        }
        Ok(())
    }

    /// The answer for an operation that needs a name but was given the root, where Linux answers
    /// from the path alone (`rmdir("/")` is EBUSY). Implementations return this instead of
    /// calling the system: on a real directory the root is an ordinary directory that `rmdir`
    /// would remove.
    pub fn root_response(&self) -> Option<Response> {
        let errno = match self {
            Operation::Create { path, .. } | Operation::Mkdir { path, .. } if path.is_root() => {
                Errno::EEXIST
            }
            Operation::Symlink { path, .. } if path.is_root() => Errno::EEXIST,
            Operation::Unlink { path } if path.is_root() => Errno::EISDIR,
            Operation::Rmdir { path } if path.is_root() => Errno::EBUSY,
            Operation::Rename { from, to, .. } if from.is_root() || to.is_root() => Errno::EBUSY,
            Operation::Link { from, .. } if from.is_root() => Errno::EPERM,
            Operation::Link { to, .. } if to.is_root() => Errno::EEXIST,
            Operation::Readlink { path } if path.is_root() => Errno::EINVAL,
            _ => return None,
        };
        Some(Err(errno))
    }
}

/// A short description that leaves out data and values (they can be hundreds of KiB).
impl fmt::Display for Operation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.name();
        match self {
            Operation::Create { path, mode }
            | Operation::Mkdir { path, mode }
            | Operation::Chmod { path, mode } => write!(formatter, "{name} {path} {mode:#o}"),
            Operation::Rename { from, to, mode } => {
                write!(formatter, "{name} {from} -> {to} ({mode:?})")
            }
            Operation::Link { from, to } => write!(formatter, "{name} {from} -> {to}"),
            Operation::Symlink { target, path } => write!(
                formatter,
                "{name} {path} -> {:?}",
                String::from_utf8_lossy(target)
            ),
            Operation::Write { path, offset, data } => {
                write!(formatter, "{name} {path} at {offset}, {} bytes", data.len())
            }
            Operation::Read {
                path,
                offset,
                length,
            } => write!(formatter, "{name} {path} at {offset}, {length} bytes"),
            Operation::Truncate { path, size } => write!(formatter, "{name} {path} to {size}"),
            Operation::SetXattr { path, name, value } => write!(
                formatter,
                "setxattr {path} {:?}, {} bytes",
                String::from_utf8_lossy(name),
                value.len()
            ),
            Operation::GetXattr { path, name } | Operation::RemoveXattr { path, name } => write!(
                formatter,
                "{} {path} {:?}",
                self.name(),
                String::from_utf8_lossy(name)
            ),
            Operation::Utimens { path, atime, mtime } => {
                write!(formatter, "{name} {path} atime {atime} mtime {mtime}")
            }
            Operation::Unlink { path }
            | Operation::Rmdir { path }
            | Operation::Readlink { path }
            | Operation::Stat { path }
            | Operation::ReadDir { path }
            | Operation::Fsync { path }
            | Operation::ListXattr { path } => write!(formatter, "{name} {path}"),
        }
    }
}

fn validate_symlink_target(target: &[u8]) -> Result<(), Errno> {
    if target.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if target.is_empty() {
        return Err(Errno::ENOENT);
    }
    if target.len() >= MAXIMUM_PATH_LENGTH {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn validate_xattr_name(name: &[u8]) -> Result<(), Errno> {
    if name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if name.is_empty() || name.len() > MAXIMUM_NAME_LENGTH {
        return Err(Errno::ERANGE);
    }
    Ok(())
}

/// The kind of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FileKind {
    RegularFile,
    Directory,
    Symlink,
    /// Fifos, sockets and device nodes: the operation language never makes them, but a real
    /// directory may hold them.
    Other,
}

/// What `lstat` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attributes {
    pub kind: FileKind,
    /// Permission bits only (`st_mode & 0o7777`).
    pub mode: u32,
    /// Bytes for regular files, the target's length for symlinks; for directories it depends on
    /// the file system and is not comparable.
    pub size: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// Not comparable: each file system numbers inodes its own way.
    pub ino: u64,
    /// 512-byte blocks allocated. Not comparable: allocation is the file system's business.
    pub blocks: u64,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DirectoryEntry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub kind: FileKind,
}

/// The successful result of an operation.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Written {
        count: u64,
    },
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    Attributes(Attributes),
    /// A listing without `.` and `..`, in no particular order.
    Entries(Vec<DirectoryEntry>),
    Target(#[serde(with = "serde_bytes")] Vec<u8>),
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Extended-attribute names, in no particular order.
    Names(Vec<Vec<u8>>),
}

impl Reply {
    pub fn shape(&self) -> ReplyShape {
        match self {
            Reply::Done => ReplyShape::Done,
            Reply::Written { .. } => ReplyShape::Written,
            Reply::Data(_) => ReplyShape::Data,
            Reply::Attributes(_) => ReplyShape::Attributes,
            Reply::Entries(_) => ReplyShape::Entries,
            Reply::Target(_) => ReplyShape::Target,
            Reply::Value(_) => ReplyShape::Value,
            Reply::Names(_) => ReplyShape::Names,
        }
    }
}

/// Data can be hundreds of KiB: show its length and a prefix rather than every byte.
impl fmt::Debug for Reply {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Done => formatter.write_str("Done"),
            Reply::Written { count } => write!(formatter, "Written {{ count: {count} }}"),
            Reply::Data(bytes) => write!(formatter, "Data({})", describe_bytes(bytes)),
            Reply::Attributes(attributes) => write!(formatter, "{attributes:?}"),
            Reply::Entries(entries) => {
                let names: Vec<String> = entries
                    .iter()
                    .map(|entry| {
                        format!("{} {:?}", String::from_utf8_lossy(&entry.name), entry.kind)
                    })
                    .collect();
                write!(formatter, "Entries({names:?})")
            }
            Reply::Target(bytes) => write!(formatter, "Target({})", describe_bytes(bytes)),
            Reply::Value(bytes) => write!(formatter, "Value({})", describe_bytes(bytes)),
            Reply::Names(names) => {
                let names: Vec<String> = names
                    .iter()
                    .map(|name| String::from_utf8_lossy(name).into_owned())
                    .collect();
                write!(formatter, "Names({names:?})")
            }
        }
    }
}

/// Bytes for a human: short ones in full (escaped), long ones as their length and first bytes.
pub fn describe_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 32;
    let shown = &bytes[..bytes.len().min(SHOWN)];
    let text: String = shown.escape_ascii().to_string();
    if bytes.len() <= SHOWN {
        format!("{} bytes \"{text}\"", bytes.len())
    } else {
        format!("{} bytes \"{text}...\"", bytes.len())
    }
}

/// What an operation returns: a reply or the errno of the failed system call.
pub type Response = Result<Reply, Errno>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_join_and_validate() {
        let path = FsPath::new("a/b/c");
        assert_eq!(
            path.components().collect::<Vec<_>>(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert_eq!(path.depth(), 3);
        let (parent, name) = path.parent_and_name().expect("not the root");
        assert_eq!(parent, FsPath::new("a/b"));
        assert_eq!(name, b"c");
        assert_eq!(FsPath::root().join(b"x"), FsPath::new("x"));
        assert_eq!(FsPath::root().components().count(), 0);
        assert!(FsPath::root().parent_and_name().is_none());
        assert!(path.starts_with(&FsPath::new("a")));
        assert!(path.starts_with(&FsPath::root()));
        assert!(!FsPath::new("ab").starts_with(&FsPath::new("a")));
        assert_eq!(path.validate(), Ok(()));
        assert_eq!(FsPath::root().validate(), Ok(()));
        for bad in ["/a", "a/", "a//b", ".", "a/..", "x/./y"] {
            assert_eq!(FsPath::new(bad).validate(), Err(Errno::EINVAL), "{bad}");
        }
        assert_eq!(
            FsPath::from_bytes(b"a\0b".to_vec()).validate(),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            FsPath::from_bytes(vec![b'a'; MAXIMUM_PATH_LENGTH]).validate(),
            Err(Errno::ENAMETOOLONG)
        );
    }

    #[test]
    fn midpoints_carry_across_seconds() {
        assert_eq!(
            Timestamp::new(1, 900_000_000).midpoint(Timestamp::new(2, 300_000_000)),
            Timestamp::new(2, 100_000_000)
        );
        assert_eq!(
            Timestamp::new(-1, 0).midpoint(Timestamp::new(0, 0)),
            Timestamp::new(-1, 500_000_000)
        );
    }

    #[test]
    fn errno_displays_its_name() {
        assert_eq!(Errno::ENOENT.to_string(), "ENOENT");
        assert_eq!(Errno::ENOTEMPTY.to_string(), "ENOTEMPTY");
        assert_eq!(Errno(4000).to_string(), "errno 4000");
    }

    #[test]
    fn operations_round_trip_through_postcard() {
        let operations = vec![
            Operation::Write {
                path: FsPath::new("d/f"),
                offset: 7,
                data: vec![1, 2, 3],
            },
            Operation::Rename {
                from: FsPath::new("a"),
                to: FsPath::new("b"),
                mode: RenameMode::Exchange,
            },
            Operation::Utimens {
                path: FsPath::root(),
                atime: Timestamp::new(-5, 3),
                mtime: Timestamp::new(1 << 40, 999_999_999),
            },
        ];
        let bytes = postcard::to_allocvec(&operations).expect("encodes");
        let decoded: Vec<Operation> = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(decoded, operations);
        let response: Response = Err(Errno::ENOENT);
        let bytes = postcard::to_allocvec(&response).expect("encodes");
        assert_eq!(
            postcard::from_bytes::<Response>(&bytes).expect("decodes"),
            response
        );
    }
}
