//! The FUSE adapter: kernel requests (fuser 0.18) to [`FileSystem`] calls.
//!
//! fuser calls these methods on its session threads; each one starts a task on the tokio runtime
//! and returns, so a slow quorum round trip never stalls the kernel's other requests. Replies are
//! sent from the task.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno as FuseErrno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::env::tokio_env::TokioEnv;
use crate::exported_metrics::OperationLatencies;
use crate::fs::namespace::DIRECTORY_PAGE_ENTRIES;
use crate::fs::{
    AttributeChanges, Caller, Errno, FileKind, FileSystem, Inode, InodeNumber, RenameMode,
    TimeChange, Timestamp,
};

/// How long the kernel may trust attributes and entries. This mount is the volume's only writer,
/// so nothing changes behind the kernel's back except through this adapter.
const ATTRIBUTE_TTL: Duration = Duration::from_secs(30);

/// Largest write the kernel sends at once.
const MAX_WRITE_BYTES: u32 = 1024 * 1024;

fn fuse_errno(errno: Errno) -> FuseErrno {
    FuseErrno::from_i32(errno.0)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn system_time(time: Timestamp) -> SystemTime {
    if time.seconds >= 0 {
        UNIX_EPOCH + Duration::new(time.seconds as u64, time.nanoseconds)
    } else {
        UNIX_EPOCH - Duration::from_secs(time.seconds.unsigned_abs())
            + Duration::from_nanos(time.nanoseconds as u64)
    }
}

fn timestamp(time: SystemTime) -> Timestamp {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => Timestamp {
            seconds: since.as_secs() as i64,
            nanoseconds: since.subsec_nanos(),
        },
        Err(before) => {
            let before = before.duration();
            let mut seconds = -(before.as_secs() as i64);
            let mut nanoseconds = before.subsec_nanos();
            if nanoseconds > 0 {
                seconds -= 1;
                nanoseconds = 1_000_000_000 - nanoseconds;
            }
            Timestamp {
                seconds,
                nanoseconds,
            }
        }
    }
}

fn time_change(time: TimeOrNow) -> TimeChange {
    match time {
        TimeOrNow::Now => TimeChange::Now,
        TimeOrNow::SpecificTime(time) => TimeChange::At(timestamp(time)),
    }
}

pub fn file_attributes(inode: &Inode) -> FileAttr {
    FileAttr {
        ino: INodeNo(inode.ino),
        size: inode.size,
        blocks: inode.blocks(),
        atime: system_time(inode.atime),
        mtime: system_time(inode.mtime),
        ctime: system_time(inode.ctime),
        crtime: system_time(inode.crtime),
        kind: file_type(inode.kind),
        perm: (inode.permissions & 0o7777) as u16,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// An open directory read a page at a time: only the current page is in memory, so listing a
/// directory of millions of entries takes memory for one page. Offsets count entries from the
/// start (`.` and `..` first); an offset before the current page (rewinddir, seekdir back)
/// restarts the listing.
struct DirectoryStream {
    ino: InodeNumber,
    parent: InodeNumber,
    window: Vec<(Vec<u8>, InodeNumber, FileKind)>,
    /// Offset of the window's first entry.
    window_start: u64,
    /// Where the next page starts: `None` before the first page, `Some(None)` at the end.
    resume: Option<Option<Vec<u8>>>,
}

impl DirectoryStream {
    fn new(ino: InodeNumber, parent: InodeNumber) -> Self {
        Self {
            ino,
            parent,
            window: Vec::new(),
            window_start: 0,
            resume: None,
        }
    }

    /// Move the window so that it holds `offset`, or is empty past the end.
    async fn seek(&mut self, fs: &FileSystem<TokioEnv>, offset: u64) -> Result<(), Errno> {
        if offset < self.window_start || self.resume.is_none() {
            self.window = vec![
                (b".".to_vec(), self.ino, FileKind::Directory),
                (b"..".to_vec(), self.parent, FileKind::Directory),
            ];
            self.window_start = 0;
            self.resume = Some(Some(Vec::new()));
        }
        // Bounded by the directory's size: each round moves the window one page on.
        while offset >= self.window_start + self.window.len() as u64 {
            let Some(Some(after)) = self.resume.clone() else {
                return Ok(());
            };
            let start_after = (!after.is_empty()).then_some(after.as_slice());
            let (entries, resume_after) = fs
                .read_directory_page(self.ino, start_after, DIRECTORY_PAGE_ENTRIES)
                .await?;
            self.window_start += self.window.len() as u64;
            self.window = entries
                .into_iter()
                .map(|(name, entry)| (name, entry.ino, entry.kind))
                .collect();
            self.resume = Some(resume_after);
        }
        Ok(())
    }
}

pub struct FuseAdapter {
    file_system: FileSystem<TokioEnv>,
    runtime: Handle,
    listings: Arc<Mutex<BTreeMap<u64, Arc<tokio::sync::Mutex<DirectoryStream>>>>>,
    next_listing: AtomicU64,
    /// Completed when the kernel ends the session (unmounted from outside, or by us).
    ended: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    latencies: Arc<OperationLatencies>,
}

impl FuseAdapter {
    pub fn new(
        file_system: FileSystem<TokioEnv>,
        runtime: Handle,
        ended: tokio::sync::oneshot::Sender<()>,
        latencies: Arc<OperationLatencies>,
    ) -> Self {
        Self {
            file_system,
            runtime,
            listings: Arc::new(Mutex::new(BTreeMap::new())),
            next_listing: AtomicU64::new(1),
            ended: Mutex::new(Some(ended)),
            latencies,
        }
    }

    /// Serve one request as its own task, timing it for the mount's latency metrics (the
    /// adapter runs only on the real runtime, so the wall clock is the right one here).
    fn spawn<F>(&self, operation: &'static str, work: impl FnOnce(FileSystem<TokioEnv>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let future = work(self.file_system.clone());
        let latencies = self.latencies.clone();
        let started = std::time::Instant::now();
        self.runtime.spawn(async move {
            future.await;
            latencies.observe(operation, started.elapsed());
        });
    }
}

fn caller(request: &Request) -> Caller {
    Caller {
        uid: request.uid(),
        gid: request.gid(),
    }
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

/// The kernel hands a FUSE file system every attribute name, whatever its namespace; a local
/// file system refuses unknown namespaces (EOPNOTSUPP) before asking anyone, and so does this.
fn check_namespace(name: &[u8]) -> Result<(), FuseErrno> {
    crate::verify::model::check_xattr_namespace(name).map_err(|errno| fuse_errno(Errno(errno.0)))
}

fn reply_entry(reply: ReplyEntry, result: Result<Inode, Errno>) {
    match result {
        Ok(inode) => reply.entry(&ATTRIBUTE_TTL, &file_attributes(&inode), Generation(0)),
        Err(errno) => reply.error(fuse_errno(errno)),
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(errno) => reply.error(fuse_errno(errno)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, result: Result<Vec<u8>, Errno>) {
    match result {
        Ok(data) if size == 0 => reply.size(data.len() as u32),
        Ok(data) if data.len() > size as usize => reply.error(fuse_errno(Errno::ERANGE)),
        Ok(data) => reply.data(&data),
        Err(errno) => reply.error(fuse_errno(errno)),
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _request: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger writes mean fewer round trips; the kernel may refuse, which is fine.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_BIG_WRITES);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_MAX_PAGES);
        let _ = config.set_max_write(MAX_WRITE_BYTES);
        let _ = config.set_max_readahead(MAX_WRITE_BYTES);
        // The kernel's page cache takes writes and sends them here in large pieces at write-back,
        // fsync or close, instead of one round trip per write(2). The mount is the volume's only
        // writer, so the kernel may trust its own sizes and times; fsync still stores everything
        // on a majority before it answers.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Some(ended) = self.ended.lock().unwrap().take() {
            let _ = ended.send(());
        }
    }

    fn lookup(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_bytes(name);
        self.spawn("lookup", |fs| async move {
            reply_entry(reply, fs.lookup(parent.0, &name).await)
        });
    }

    fn getattr(&self, _request: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn("getattr", |fs| async move {
            match fs.inode(ino.0).await {
                Ok(inode) => reply.attr(&ATTRIBUTE_TTL, &file_attributes(&inode)),
                Err(errno) => reply.error(fuse_errno(errno)),
            }
        });
    }

    fn setattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // A size change through an open file (ftruncate, open with O_TRUNC) marks the file
        // modified even when the size stays the same, as on a local file system; the kernel
        // does not always say so. truncate(2) by path changes mtime only with the size.
        let mtime = match (mtime, size, fh) {
            (None, Some(_), Some(_)) => Some(TimeChange::Now),
            (mtime, _, _) => mtime.map(time_change),
        };
        let changes = AttributeChanges {
            permissions: mode.map(|mode| mode & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(time_change),
            mtime,
            ctime: ctime.map(timestamp),
        };
        self.spawn("setattr", |fs| async move {
            match fs.set_attributes(ino.0, changes).await {
                Ok(inode) => reply.attr(&ATTRIBUTE_TTL, &file_attributes(&inode)),
                Err(errno) => reply.error(fuse_errno(errno)),
            }
        });
    }

    fn readlink(&self, _request: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn("readlink", |fs| async move {
            match fs.read_link(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(errno) => reply.error(fuse_errno(errno)),
            }
        });
    }

    fn mknod(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(name);
        let caller = caller(request);
        let Some(kind) = FileKind::from_mode(mode) else {
            reply.error(fuse_errno(Errno::EINVAL));
            return;
        };
        self.spawn("mknod", |fs| async move {
            let result = fs
                .make_node(parent.0, &name, kind, mode & !umask & 0o7777, rdev, caller)
                .await;
            reply_entry(reply, result)
        });
    }

    fn mkdir(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(name);
        let caller = caller(request);
        self.spawn("mkdir", |fs| async move {
            let result = fs
                .make_directory(parent.0, &name, mode & !umask & 0o7777, caller)
                .await;
            reply_entry(reply, result)
        });
    }

    fn unlink(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.spawn("unlink", |fs| async move {
            reply_empty(reply, fs.unlink(parent.0, &name).await)
        });
    }

    fn rmdir(&self, _request: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.spawn("rmdir", |fs| async move {
            reply_empty(reply, fs.remove_directory(parent.0, &name).await)
        });
    }

    fn symlink(
        &self,
        request: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = name_bytes(link_name);
        let target = target.as_os_str().as_bytes().to_vec();
        let caller = caller(request);
        self.spawn("symlink", |fs| async move {
            reply_entry(
                reply,
                fs.make_symlink(parent.0, &name, &target, caller).await,
            )
        });
    }

    fn rename(
        &self,
        _request: &Request,
        parent: INodeNo,
        name: &OsStr,
        new_parent: INodeNo,
        new_name: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            reply.error(fuse_errno(Errno::EINVAL));
            return;
        };
        let name = name_bytes(name);
        let new_name = name_bytes(new_name);
        self.spawn("rename", |fs| async move {
            reply_empty(
                reply,
                fs.rename(parent.0, &name, new_parent.0, &new_name, mode)
                    .await,
            )
        });
    }

    fn link(
        &self,
        _request: &Request,
        ino: INodeNo,
        new_parent: INodeNo,
        new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        let new_name = name_bytes(new_name);
        self.spawn("link", |fs| async move {
            reply_entry(reply, fs.link(ino.0, new_parent.0, &new_name).await)
        });
    }

    fn open(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn("open", |fs| async move {
            match fs.open(ino.0).await {
                Ok(handle) => reply.opened(FileHandle(handle), FopenFlags::empty()),
                Err(errno) => reply.error(fuse_errno(errno)),
            }
        });
    }

    fn read(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn("read", |fs| async move {
            match fs.read(ino.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(errno) => reply.error(fuse_errno(errno)),
            }
        });
    }

    fn write(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.spawn("write", |fs| async move {
            match fs.write(ino.0, offset, &data).await {
                Ok(written) => reply.written(written),
                Err(errno) => reply.error(fuse_errno(errno)),
            }
        });
    }

    fn flush(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn("flush", |fs| async move {
            reply_empty(reply, fs.flush(ino.0).await)
        });
    }

    fn release(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn("release", |fs| async move {
            reply_empty(reply, fs.release(fh.0).await)
        });
    }

    fn fsync(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn("fsync", |fs| async move {
            reply_empty(reply, fs.flush(ino.0).await)
        });
    }

    fn opendir(&self, _request: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let streams = self.listings.clone();
        let handle = self.next_listing.fetch_add(1, Ordering::Relaxed);
        self.spawn("opendir", |fs| async move {
            match fs.inode(ino.0).await {
                Ok(directory) if directory.kind == FileKind::Directory => {
                    let stream = DirectoryStream::new(ino.0, directory.parent);
                    streams
                        .lock()
                        .unwrap()
                        .insert(handle, Arc::new(tokio::sync::Mutex::new(stream)));
                    reply.opened(FileHandle(handle), FopenFlags::empty());
                }
                Ok(_) => reply.error(fuse_errno(Errno::ENOTDIR)),
                Err(errno) => reply.error(fuse_errno(errno)),
            }
        });
    }

    fn readdir(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(stream) = self.listings.lock().unwrap().get(&fh.0).cloned() else {
            reply.error(fuse_errno(Errno::EBADF));
            return;
        };
        self.spawn("readdir", |fs| async move {
            let mut stream = stream.lock().await;
            if let Err(errno) = stream.seek(&fs, offset).await {
                return reply.error(fuse_errno(errno));
            }
            let first = (offset - stream.window_start) as usize;
            for (position, (name, ino, kind)) in stream.window.iter().enumerate().skip(first) {
                let next_offset = stream.window_start + position as u64 + 1;
                if reply.add(
                    INodeNo(*ino),
                    next_offset,
                    file_type(*kind),
                    OsStr::from_bytes(name),
                ) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _request: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _request: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are stored on a majority before they return.
        reply.ok();
    }

    fn statfs(&self, _request: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let statistics = self.file_system.statistics();
        reply.statfs(
            statistics.blocks,
            statistics.blocks_free,
            statistics.blocks_free,
            statistics.files,
            statistics.files_free,
            statistics.block_bytes as u32,
            statistics.name_max_bytes as u32,
            statistics.block_bytes as u32,
        );
    }

    fn setxattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = name_bytes(name);
        if let Err(errno) = check_namespace(&name) {
            reply.error(errno);
            return;
        }
        let value = value.to_vec();
        self.spawn("setxattr", |fs| async move {
            reply_empty(
                reply,
                fs.set_extended_attribute(ino.0, &name, &value, flags).await,
            )
        });
    }

    fn getxattr(
        &self,
        _request: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        let name = name_bytes(name);
        if let Err(errno) = check_namespace(&name) {
            reply.error(errno);
            return;
        }
        self.spawn("getxattr", |fs| async move {
            reply_xattr(reply, size, fs.get_extended_attribute(ino.0, &name).await)
        });
    }

    fn listxattr(&self, _request: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn("listxattr", |fs| async move {
            let result = fs.list_extended_attributes(ino.0).await.map(|names| {
                let mut joined = Vec::new();
                for name in names {
                    joined.extend_from_slice(&name);
                    joined.push(0);
                }
                joined
            });
            reply_xattr(reply, size, result)
        });
    }

    fn removexattr(&self, _request: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        if let Err(errno) = check_namespace(&name) {
            reply.error(errno);
            return;
        }
        self.spawn("removexattr", |fs| async move {
            reply_empty(reply, fs.remove_extended_attribute(ino.0, &name).await)
        });
    }

    fn access(&self, _request: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With `default_permissions` the kernel checks access itself.
        reply.ok();
    }

    fn create(
        &self,
        request: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_bytes(name);
        let caller = caller(request);
        let Some(kind) = FileKind::from_mode(mode) else {
            reply.error(fuse_errno(Errno::EINVAL));
            return;
        };
        self.spawn("create", |fs| async move {
            let inode = match fs
                .make_node(parent.0, &name, kind, mode & !umask & 0o7777, 0, caller)
                .await
            {
                Ok(inode) => inode,
                Err(errno) => return reply.error(fuse_errno(errno)),
            };
            match fs.open(inode.ino).await {
                Ok(handle) => reply.created(
                    &ATTRIBUTE_TTL,
                    &file_attributes(&inode),
                    Generation(0),
                    FileHandle(handle),
                    FopenFlags::empty(),
                ),
                Err(errno) => reply.error(fuse_errno(errno)),
            }
        });
    }

    fn fallocate(
        &self,
        _request: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.spawn("fallocate", |fs| async move {
            reply_empty(reply, fs.allocate(ino.0, offset, length, mode).await)
        });
    }
}
