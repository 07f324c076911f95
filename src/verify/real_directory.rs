//! The operation language applied to a real directory (any Linux file system, a FUSE mount
//! included), answering with the same [`Response`]s as the reference model.
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` from the directory the
//! [`RealDirectory`] was opened on: symlinks are followed as the kernel always follows them, but an
//! absolute target or a `..` can never lead outside that directory, so a generated trace cannot
//! touch the rest of the machine. Operations on a name open its parent that way and then use the
//! `*at` system call on the last name; operations that follow the last name open it that way.
//! Chmod, utimens and the xattr calls act on an `O_PATH` descriptor through its
//! `/proc/self/fd/N` link (the only way to give those calls a confined, already-resolved file), so
//! `/proc` must be mounted. Needs Linux 5.6 or later (openat2).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::model::{clamp_read_length, AccessTimeUpdates, ModelOptions};
use super::operation::{
    Attributes, DirectoryEntry, Errno, FileKind, FsPath, Operation, RenameMode, Reply, Response,
    Timestamp, MAXIMUM_PATH_LENGTH,
};

/// The kernel's `O_LARGEFILE`. `open` adds it on 64-bit systems, `openat2` does not, and without it
/// a file over 2 GiB cannot be opened (EOVERFLOW). The C library defines it as 0 on 64-bit
/// systems, so the kernel's value per architecture is spelled out here.
#[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
const KERNEL_O_LARGEFILE: u64 = 0o400000;
#[cfg(any(target_arch = "powerpc", target_arch = "powerpc64"))]
const KERNEL_O_LARGEFILE: u64 = 0o200000;
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const KERNEL_O_LARGEFILE: u64 = 0x2000;
#[cfg(target_arch = "sparc64")]
const KERNEL_O_LARGEFILE: u64 = 0x40000;
#[cfg(not(any(
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc64"
)))]
const KERNEL_O_LARGEFILE: u64 = 0o100000;

/// `openat2` answers EAGAIN when a rename anywhere on the system raced with a `..` in the path;
/// trying again is what its manual page asks for.
const OPENAT2_ATTEMPTS: usize = 64;

/// One `pread`/`pwrite` moves at most this much, so a large read grows its buffer as bytes arrive
/// rather than allocating the whole requested length up front.
const TRANSFER_CHUNK_LENGTH: usize = 1024 * 1024;

/// `struct open_how` from `linux/openat2.h` (the C library's version cannot be built outside it).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// A real directory that operations are applied to.
#[derive(Debug)]
pub struct RealDirectory {
    root: OwnedFd,
}

impl RealDirectory {
    /// Opens `root` (which must be a directory) as the root of every operation's path.
    pub fn open(root: &Path) -> io::Result<RealDirectory> {
        let path = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `path` is a valid C string; the result is checked before use.
        let descriptor = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if descriptor < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `descriptor` is a freshly opened descriptor nobody else owns.
        let root = unsafe { OwnedFd::from_raw_fd(descriptor) };
        Ok(RealDirectory { root })
    }

    /// Applies `operation` and reports what the system answered. Never panics: every failure,
    /// expected or not, becomes the errno of the call that failed.
    pub fn apply(&self, operation: &Operation) -> Response {
        operation.validate()?;
        if let Some(response) = operation.root_response() {
            return response;
        }
        match operation {
            Operation::Create { path, mode } => {
                let (parent, name) = self.open_parent(path)?;
                // SAFETY: valid descriptor and C string; the result is checked.
                let descriptor = retry_interrupted(|| unsafe {
                    libc::openat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                        *mode as libc::c_uint,
                    ) as i64
                })?;
                // SAFETY: a freshly opened descriptor nobody else owns; dropping it closes it.
                drop(unsafe { OwnedFd::from_raw_fd(descriptor as RawFd) });
                Ok(Reply::Done)
            }
            Operation::Mkdir { path, mode } => {
                let (parent, name) = self.open_parent(path)?;
                // SAFETY: valid descriptor and C string.
                check(unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), *mode) })?;
                Ok(Reply::Done)
            }
            Operation::Unlink { path } => self.unlink(path, 0),
            Operation::Rmdir { path } => self.unlink(path, libc::AT_REMOVEDIR),
            Operation::Rename { from, to, mode } => {
                let (from_parent, from_name) = self.open_parent(from)?;
                let (to_parent, to_name) = self.open_parent(to)?;
                let flags = match mode {
                    RenameMode::Replace => 0,
                    RenameMode::NoReplace => libc::RENAME_NOREPLACE,
                    RenameMode::Exchange => libc::RENAME_EXCHANGE,
                };
                // SAFETY: valid descriptors and C strings.
                check_long(unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        from_parent.as_raw_fd(),
                        from_name.as_ptr(),
                        to_parent.as_raw_fd(),
                        to_name.as_ptr(),
                        flags,
                    )
                })?;
                Ok(Reply::Done)
            }
            Operation::Link { from, to } => {
                let (from_parent, from_name) = self.open_parent(from)?;
                // Linux looks the source up completely before the new name's directory; asking
                // for it first keeps that order of errors.
                stat_at(&from_parent, &from_name)?;
                let (to_parent, to_name) = self.open_parent(to)?;
                // SAFETY: valid descriptors and C strings.
                check(unsafe {
                    libc::linkat(
                        from_parent.as_raw_fd(),
                        from_name.as_ptr(),
                        to_parent.as_raw_fd(),
                        to_name.as_ptr(),
                        0,
                    )
                })?;
                Ok(Reply::Done)
            }
            Operation::Symlink { target, path } => {
                let target = c_string(target)?;
                let (parent, name) = self.open_parent(path)?;
                // SAFETY: valid descriptor and C strings.
                check(unsafe {
                    libc::symlinkat(target.as_ptr(), parent.as_raw_fd(), name.as_ptr())
                })?;
                Ok(Reply::Done)
            }
            Operation::Readlink { path } => {
                let (parent, name) = self.open_parent(path)?;
                read_link_at(&parent, &name).map(Reply::Target)
            }
            Operation::Write { path, offset, data } => self.write(path, *offset, data),
            Operation::Read {
                path,
                offset,
                length,
            } => self.read(path, *offset, *length),
            Operation::Truncate { path, size } => {
                let file = self.open_in_root(path.as_bytes(), libc::O_WRONLY)?;
                // A size past i64::MAX becomes negative, which ftruncate refuses with EINVAL, as
                // truncate(2) would.
                let size = *size as libc::off_t;
                // SAFETY: valid descriptor.
                retry_interrupted(|| unsafe { libc::ftruncate(file.as_raw_fd(), size) as i64 })?;
                Ok(Reply::Done)
            }
            Operation::Chmod { path, mode } => {
                let (_file, link) = self.open_resolved(path)?;
                // SAFETY: valid C string.
                check(unsafe { libc::fchmodat(libc::AT_FDCWD, link.as_ptr(), *mode, 0) })?;
                Ok(Reply::Done)
            }
            Operation::Stat { path } => {
                let status = if path.is_root() {
                    // SAFETY: `status` is plain data the kernel fills in; the result is checked.
                    let mut status: libc::stat = unsafe { std::mem::zeroed() };
                    // SAFETY: valid descriptor and a writable stat buffer.
                    check(unsafe { libc::fstat(self.root.as_raw_fd(), &mut status) })?;
                    status
                } else {
                    let (parent, name) = self.open_parent(path)?;
                    stat_at(&parent, &name)?
                };
                Ok(Reply::Attributes(attributes_from_stat(&status)))
            }
            Operation::ReadDir { path } => self.read_directory(path),
            Operation::Fsync { path } => {
                let file = self.open_in_root(path.as_bytes(), libc::O_RDONLY)?;
                // SAFETY: valid descriptor.
                retry_interrupted(|| unsafe { libc::fsync(file.as_raw_fd()) as i64 })?;
                Ok(Reply::Done)
            }
            Operation::SetXattr { path, name, value } => {
                let (_file, link) = self.open_resolved(path)?;
                let name = c_string(name)?;
                // SAFETY: valid C strings; `value` is readable for its length.
                check(unsafe {
                    libc::setxattr(
                        link.as_ptr(),
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                })?;
                Ok(Reply::Done)
            }
            Operation::GetXattr { path, name } => {
                let (_file, link) = self.open_resolved(path)?;
                let name = c_string(name)?;
                read_sized(|buffer, length| {
                    // SAFETY: valid C strings; `buffer` is writable for `length` bytes (or null
                    // with length 0, which asks for the size).
                    unsafe { libc::getxattr(link.as_ptr(), name.as_ptr(), buffer.cast(), length) }
                })
                .map(Reply::Value)
            }
            Operation::ListXattr { path } => {
                let (_file, link) = self.open_resolved(path)?;
                let list = read_sized(|buffer, length| {
                    // SAFETY: valid C string; `buffer` is writable for `length` bytes.
                    unsafe { libc::listxattr(link.as_ptr(), buffer.cast(), length) }
                })?;
                let names = list
                    .split(|byte| *byte == 0)
                    .filter(|name| !name.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                Ok(Reply::Names(names))
            }
            Operation::RemoveXattr { path, name } => {
                let (_file, link) = self.open_resolved(path)?;
                let name = c_string(name)?;
                // SAFETY: valid C strings.
                check(unsafe { libc::removexattr(link.as_ptr(), name.as_ptr()) })?;
                Ok(Reply::Done)
            }
            Operation::Utimens { path, atime, mtime } => {
                let (_file, link) = self.open_resolved(path)?;
                let times = [timespec(*atime), timespec(*mtime)];
                // SAFETY: valid C string and a two-element times array.
                check(unsafe {
                    libc::utimensat(libc::AT_FDCWD, link.as_ptr(), times.as_ptr(), 0)
                })?;
                Ok(Reply::Done)
            }
        }
    }

    fn unlink(&self, path: &FsPath, flags: libc::c_int) -> Response {
        let (parent, name) = self.open_parent(path)?;
        // SAFETY: valid descriptor and C string.
        check(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) })?;
        Ok(Reply::Done)
    }

    fn write(&self, path: &FsPath, offset: u64, data: &[u8]) -> Response {
        let file = self.open_in_root(path.as_bytes(), libc::O_WRONLY)?;
        let mut written = 0usize;
        // One call even for no data, so that its errors (EINVAL for a bad offset) show.
        loop {
            let remaining = &data[written..];
            let length = remaining.len().min(TRANSFER_CHUNK_LENGTH);
            // An offset past i64::MAX becomes negative, which pwrite refuses with EINVAL.
            let position = offset.wrapping_add(written as u64) as libc::off_t;
            // SAFETY: valid descriptor; `remaining` is readable for `length` bytes.
            let result = retry_interrupted(|| unsafe {
                libc::pwrite(
                    file.as_raw_fd(),
                    remaining.as_ptr().cast(),
                    length,
                    position,
                ) as i64
            });
            match result {
                Ok(0) if length > 0 => break,
                Ok(count) => written += count as usize,
                // A failure after some bytes went in reports those bytes, as write(2) does.
                Err(errno) if written == 0 => return Err(errno),
                Err(_) => break,
            }
            if written >= data.len() {
                break;
            }
        }
        Ok(Reply::Written {
            count: written as u64,
        })
    }

    fn read(&self, path: &FsPath, offset: u64, length: u64) -> Response {
        let file = self.open_in_root(path.as_bytes(), libc::O_RDONLY)?;
        let length = clamp_read_length(offset, length) as usize;
        let mut data = Vec::new();
        // One call even for no bytes, so that its errors (EISDIR for a directory) show.
        loop {
            let wanted = (length - data.len()).min(TRANSFER_CHUNK_LENGTH);
            let start = data.len();
            data.resize(start + wanted, 0);
            let position = offset.wrapping_add(start as u64) as libc::off_t;
            // SAFETY: valid descriptor; the buffer tail is writable for `wanted` bytes.
            let result = retry_interrupted(|| unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    data[start..].as_mut_ptr().cast(),
                    wanted,
                    position,
                ) as i64
            });
            match result {
                Ok(count) => data.truncate(start + count as usize),
                Err(errno) => return Err(errno),
            }
            if data.len() == start || data.len() >= length {
                break;
            }
        }
        Ok(Reply::Data(data))
    }

    fn read_directory(&self, path: &FsPath) -> Response {
        let directory = self.open_in_root(path.as_bytes(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let mut buffer = vec![0u8; 32 * 1024];
        let mut entries = Vec::new();
        loop {
            // SAFETY: valid descriptor; `buffer` is writable for its length.
            let filled = retry_interrupted(|| unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    directory.as_raw_fd(),
                    buffer.as_mut_ptr(),
                    buffer.len(),
                ) as i64
            })? as usize;
            if filled == 0 {
                break;
            }
            let mut records = &buffer[..filled.min(buffer.len())];
            while !records.is_empty() {
                let (name, entry_type, record_length) = parse_directory_record(records)?;
                records = &records[record_length..];
                if name == b"." || name == b".." {
                    continue;
                }
                let kind = match entry_type {
                    libc::DT_REG => FileKind::RegularFile,
                    libc::DT_DIR => FileKind::Directory,
                    libc::DT_LNK => FileKind::Symlink,
                    // Some file systems do not fill in the type; ask for it.
                    libc::DT_UNKNOWN => {
                        kind_from_mode(stat_at(&directory, &c_string(name)?)?.st_mode)
                    }
                    _ => FileKind::Other,
                };
                entries.push(DirectoryEntry {
                    name: name.to_vec(),
                    kind,
                });
            }
        }
        Ok(Reply::Entries(entries))
    }

    /// Opens the directory holding the last name of `path` (an `O_PATH` descriptor) and returns
    /// it with that name. The caller has handled the root.
    fn open_parent(&self, path: &FsPath) -> Result<(OwnedFd, CString), Errno> {
        let (parent, name) = path.parent_and_name().ok_or(Errno::EINVAL)?;
        let directory = self.open_in_root(parent.as_bytes(), libc::O_PATH | libc::O_DIRECTORY)?;
        Ok((directory, c_string(name)?))
    }

    /// Resolves `path` following its last symlink and returns an `O_PATH` descriptor for the file
    /// with the `/proc/self/fd` link that names it (valid while the descriptor is open).
    fn open_resolved(&self, path: &FsPath) -> Result<(OwnedFd, CString), Errno> {
        let file = self.open_in_root(path.as_bytes(), libc::O_PATH)?;
        let link = c_string(format!("/proc/self/fd/{}", file.as_raw_fd()).as_bytes())?;
        Ok((file, link))
    }

    /// `openat2(root, path, flags, RESOLVE_IN_ROOT)`; the empty path is the root itself.
    fn open_in_root(&self, path: &[u8], flags: libc::c_int) -> Result<OwnedFd, Errno> {
        if path.len() >= MAXIMUM_PATH_LENGTH {
            return Err(Errno::ENAMETOOLONG);
        }
        let path = if path.is_empty() {
            c_string(b".")?
        } else {
            c_string(path)?
        };
        let largefile = if flags & libc::O_PATH != 0 {
            0
        } else {
            KERNEL_O_LARGEFILE
        };
        let how = OpenHow {
            flags: (flags | libc::O_CLOEXEC) as u64 | largefile,
            mode: 0,
            resolve: libc::RESOLVE_IN_ROOT,
        };
        let mut last_error = Errno::EAGAIN;
        for _ in 0..OPENAT2_ATTEMPTS {
            // SAFETY: valid descriptor, C string and open_how of the size passed.
            let result = unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    self.root.as_raw_fd(),
                    path.as_ptr(),
                    &how as *const OpenHow,
                    std::mem::size_of::<OpenHow>(),
                )
            };
            if result >= 0 {
                // SAFETY: a freshly opened descriptor nobody else owns.
                return Ok(unsafe { OwnedFd::from_raw_fd(result as RawFd) });
            }
            last_error = last_errno();
            if last_error != Errno::EAGAIN && last_error.0 != libc::EINTR {
                return Err(last_error);
            }
        }
        Err(last_error)
    }
}

/// The name, type and length of the first `struct linux_dirent64` in `records`:
/// `u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, char d_name[]` (NUL-terminated, padded).
fn parse_directory_record(records: &[u8]) -> Result<(&[u8], u8, usize), Errno> {
    const NAME_OFFSET: usize = 19;
    if records.len() < NAME_OFFSET {
        return Err(Errno::EIO);
    }
    let record_length = usize::from(u16::from_ne_bytes([records[16], records[17]]));
    if record_length < NAME_OFFSET || record_length > records.len() {
        return Err(Errno::EIO);
    }
    let entry_type = records[18];
    let name_field = &records[NAME_OFFSET..record_length];
    let name_length = name_field
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(name_field.len());
    Ok((&name_field[..name_length], entry_type, record_length))
}

/// What the model must be told to start where the real directory at `root` starts: its root's
/// mode and owner, this process's identity and umask, and the mount's atime policy.
pub fn model_options_for(root: &Path) -> io::Result<ModelOptions> {
    let metadata = std::fs::metadata(root)?;
    let path = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain data the kernel fills in.
    let mut file_system: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a writable statvfs buffer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut file_system) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let access_time_updates = if file_system.f_flag & libc::ST_NOATIME != 0 {
        AccessTimeUpdates::Never
    } else if file_system.f_flag & libc::ST_RELATIME != 0 {
        AccessTimeUpdates::Relatime
    } else {
        AccessTimeUpdates::Always
    };
    Ok(ModelOptions {
        // SAFETY: these calls cannot fail.
        uid: unsafe { libc::geteuid() },
        // SAFETY: as above.
        gid: unsafe { libc::getegid() },
        umask: process_umask().unwrap_or(0o022),
        root_mode: metadata.mode() & 0o7777,
        root_uid: metadata.uid(),
        root_gid: metadata.gid(),
        access_time_updates,
    })
}

/// This process's umask, read from `/proc/self/status` (setting it to read it back would race
/// with other threads creating files).
pub fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

fn attributes_from_stat(status: &libc::stat) -> Attributes {
    Attributes {
        kind: kind_from_mode(status.st_mode),
        mode: status.st_mode & 0o7777,
        size: status.st_size as u64,
        nlink: status.st_nlink,
        uid: status.st_uid,
        gid: status.st_gid,
        atime: Timestamp::new(status.st_atime, status.st_atime_nsec as u32),
        mtime: Timestamp::new(status.st_mtime, status.st_mtime_nsec as u32),
        ctime: Timestamp::new(status.st_ctime, status.st_ctime_nsec as u32),
        ino: status.st_ino,
        blocks: status.st_blocks as u64,
    }
}

fn kind_from_mode(mode: libc::mode_t) -> FileKind {
    match mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::RegularFile,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn stat_at(directory: &OwnedFd, name: &CStr) -> Result<libc::stat, Errno> {
    // SAFETY: plain data the kernel fills in.
    let mut status: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, C string and a writable stat buffer.
    check(unsafe {
        libc::fstatat(
            directory.as_raw_fd(),
            name.as_ptr(),
            &mut status,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(status)
}

fn read_link_at(directory: &OwnedFd, name: &CStr) -> Result<Vec<u8>, Errno> {
    let mut capacity = MAXIMUM_PATH_LENGTH;
    loop {
        let mut buffer = vec![0u8; capacity];
        // SAFETY: valid descriptor and C string; `buffer` is writable for its length.
        let length = unsafe {
            libc::readlinkat(
                directory.as_raw_fd(),
                name.as_ptr(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
            )
        };
        if length < 0 {
            return Err(last_errno());
        }
        // A full buffer may mean a truncated target (only on file systems with longer targets).
        if (length as usize) < buffer.len() {
            buffer.truncate(length as usize);
            return Ok(buffer);
        }
        capacity *= 2;
        if capacity > 16 * MAXIMUM_PATH_LENGTH {
            return Err(Errno::ENAMETOOLONG);
        }
    }
}

/// Calls a size-then-fill interface (getxattr, listxattr): asks for the size with a null buffer,
/// then fills a buffer of that size, asking again if the value grew in between (ERANGE).
fn read_sized(mut call: impl FnMut(*mut u8, usize) -> isize) -> Result<Vec<u8>, Errno> {
    for _ in 0..8 {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(last_errno());
        }
        let mut buffer = vec![0u8; size as usize];
        let filled = call(buffer.as_mut_ptr(), buffer.len());
        if filled >= 0 {
            buffer.truncate(filled as usize);
            return Ok(buffer);
        }
        let errno = last_errno();
        if errno != Errno::ERANGE {
            return Err(errno);
        }
    }
    Err(Errno::ERANGE)
}

fn timespec(time: Timestamp) -> libc::timespec {
    // Built field by field: some targets' timespec has padding fields.
    // SAFETY: timespec is plain data; all zeroes is a valid value.
    let mut converted: libc::timespec = unsafe { std::mem::zeroed() };
    converted.tv_sec = time.seconds as libc::time_t;
    // Below one billion (checked by Operation::validate), so it fits every target's c_long.
    converted.tv_nsec = time.nanoseconds as libc::c_long;
    converted
}

fn c_string(bytes: &[u8]) -> Result<CString, Errno> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

fn last_errno() -> Errno {
    Errno(
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn check(result: libc::c_int) -> Result<(), Errno> {
    if result < 0 {
        Err(last_errno())
    } else {
        Ok(())
    }
}

fn check_long(result: libc::c_long) -> Result<libc::c_long, Errno> {
    if result < 0 {
        Err(last_errno())
    } else {
        Ok(result)
    }
}

/// Runs a system call, again while it is interrupted by a signal.
fn retry_interrupted(mut call: impl FnMut() -> i64) -> Result<i64, Errno> {
    loop {
        let result = call();
        if result >= 0 {
            return Ok(result);
        }
        let errno = last_errno();
        if errno.0 != libc::EINTR {
            return Err(errno);
        }
    }
}
