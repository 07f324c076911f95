//! The verifier's path-based operations applied to votefs's file-system layer, as the kernel's VFS
//! would apply them through the FUSE mount: path walks with symlinks followed (the root acting as
//! a chroot, at most 40 links), `open`/`write`/`close` for writes, and the checks Linux makes
//! before a request reaches a file system.

use votefs::env::Env;
use votefs::fs::{
    AttributeChanges, Caller, Errno as FsErrno, FileKind as FsKind, FileSystem, Inode, RenameMode,
    TimeChange, Timestamp as FsTimestamp, ROOT_INODE,
};
use votefs::verify::model::check_xattr_namespace;
use votefs::verify::operation::{
    Attributes, DirectoryEntry, Errno, FileKind, FsPath, Operation, RenameMode as PathRenameMode,
    Reply, Response, Timestamp, MAXIMUM_NAME_LENGTH, MAXIMUM_READ_LENGTH,
    MAXIMUM_SYMLINKS_FOLLOWED,
};

/// The umask of the process the kernel would apply (the model's default).
const UMASK: u32 = 0o022;

fn errno(errno: FsErrno) -> Errno {
    Errno(errno.0)
}

fn kind(kind: FsKind) -> FileKind {
    match kind {
        FsKind::Regular => FileKind::RegularFile,
        FsKind::Directory => FileKind::Directory,
        FsKind::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

fn time(time: FsTimestamp) -> Timestamp {
    Timestamp::new(time.seconds, time.nanoseconds)
}

pub fn attributes(inode: &Inode) -> Attributes {
    Attributes {
        kind: kind(inode.kind),
        mode: inode.permissions & 0o7777,
        size: inode.size,
        nlink: inode.nlink as u64,
        uid: inode.uid,
        gid: inode.gid,
        atime: time(inode.atime),
        mtime: time(inode.mtime),
        ctime: time(inode.ctime),
        ino: inode.ino,
        blocks: inode.blocks(),
    }
}

/// The file system as a process sees it through the mount.
pub struct PathTarget<E: Env> {
    pub fs: FileSystem<E>,
}

struct Walk {
    followed: u32,
}

impl<E: Env> PathTarget<E> {
    pub fn new(fs: FileSystem<E>) -> Self {
        Self { fs }
    }

    /// Resolve `components` starting at `directory`; the last one is followed if it is a symlink
    /// and `follow_last` is set.
    async fn walk(
        &self,
        mut directory: u64,
        components: &[Vec<u8>],
        follow_last: bool,
        walk: &mut Walk,
    ) -> Result<u64, Errno> {
        // Bounded: every step consumes a component, and each symlink followed counts towards 40.
        for (position, name) in components.iter().enumerate() {
            let last = position + 1 == components.len();
            if name.len() > MAXIMUM_NAME_LENGTH {
                return Err(Errno::ENAMETOOLONG);
            }
            let current = self.fs.inode(directory).await.map_err(errno)?;
            if current.kind != FsKind::Directory {
                return Err(Errno::ENOTDIR);
            }
            if name.as_slice() == b".." {
                directory = current.parent;
                continue;
            }
            let inode = self.fs.lookup(directory, name).await.map_err(errno)?;
            if inode.kind == FsKind::Symlink && (!last || follow_last) {
                walk.followed += 1;
                if walk.followed > MAXIMUM_SYMLINKS_FOLLOWED {
                    return Err(Errno::ELOOP);
                }
                let target = inode.symlink_target.clone();
                let (start, target_components) = split_target(&target, directory);
                let resolved = Box::pin(self.walk(start, &target_components, true, walk)).await?;
                if !last {
                    directory = resolved;
                    continue;
                }
                return Ok(resolved);
            }
            if last {
                return Ok(inode.ino);
            }
            directory = inode.ino;
        }
        Ok(directory)
    }

    async fn resolve(&self, path: &FsPath, follow_last: bool) -> Result<u64, Errno> {
        let components: Vec<Vec<u8>> = path.components().map(|name| name.to_vec()).collect();
        self.walk(
            ROOT_INODE,
            &components,
            follow_last,
            &mut Walk { followed: 0 },
        )
        .await
    }

    /// The directory holding `path` and the last name (not resolved), checking the name's
    /// length as a lookup of it would.
    async fn parent(&self, path: &FsPath) -> Result<(u64, Vec<u8>), Errno> {
        let (directory, name) = self.parent_unchecked(path).await?;
        if name.len() > MAXIMUM_NAME_LENGTH {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok((directory, name))
    }

    /// As [`Self::parent`], leaving the name's length to the file system: rename and link look
    /// their source up before the target's name.
    async fn parent_unchecked(&self, path: &FsPath) -> Result<(u64, Vec<u8>), Errno> {
        let (parent, name) = path.parent_and_name().ok_or(Errno::EEXIST)?;
        let name = name.to_vec();
        let directory = self.resolve(&parent, true).await?;
        let inode = self.fs.inode(directory).await.map_err(errno)?;
        if inode.kind != FsKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok((directory, name))
    }

    /// `open(path)` for writing or reading a regular file, as the VFS checks it.
    async fn open_file(&self, path: &FsPath, writing: bool) -> Result<Inode, Errno> {
        let ino = self.resolve(path, true).await?;
        let inode = self.fs.inode(ino).await.map_err(errno)?;
        match inode.kind {
            FsKind::Directory if writing => Err(Errno::EISDIR),
            _ => Ok(inode),
        }
    }

    pub async fn apply(&self, operation: &Operation) -> Response {
        operation.validate()?;
        if let Some(response) = operation.root_response() {
            return response;
        }
        let root = Caller::ROOT;
        match operation {
            Operation::Create { path, mode } => {
                let (directory, name) = self.parent(path).await?;
                // O_CREAT|O_EXCL: an existing name (even a dangling symlink) is EEXIST.
                match self.fs.lookup(directory, &name).await {
                    Ok(_) => return Err(Errno::EEXIST),
                    Err(FsErrno::ENOENT) => {}
                    Err(other) => return Err(errno(other)),
                }
                let inode = self
                    .fs
                    .make_node(
                        directory,
                        &name,
                        FsKind::Regular,
                        mode & 0o7777 & !UMASK,
                        0,
                        root,
                    )
                    .await
                    .map_err(errno)?;
                let handle = self.fs.open(inode.ino).await.map_err(errno)?;
                self.fs.release(handle).await.map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Mkdir { path, mode } => {
                let (directory, name) = self.parent(path).await?;
                self.fs
                    .make_directory(directory, &name, mode & 0o7777 & !UMASK, root)
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Unlink { path } => {
                let (directory, name) = self.parent(path).await?;
                self.fs.unlink(directory, &name).await.map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Rmdir { path } => {
                let (directory, name) = self.parent(path).await?;
                let inode = self.fs.lookup(directory, &name).await.map_err(errno)?;
                if inode.kind != FsKind::Directory {
                    return Err(Errno::ENOTDIR);
                }
                self.fs
                    .remove_directory(directory, &name)
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Rename { from, to, mode } => {
                let (from_directory, from_name) = self.parent_unchecked(from).await?;
                let (to_directory, to_name) = self.parent_unchecked(to).await?;
                let mode = match mode {
                    PathRenameMode::Replace => RenameMode::Replace,
                    PathRenameMode::NoReplace => RenameMode::NoReplace,
                    PathRenameMode::Exchange => RenameMode::Exchange,
                };
                // The VFS refuses to move a directory onto its own descendant's name and to
                // replace an ancestor of the source; the file system checks the rest.
                if from_name.len() > MAXIMUM_NAME_LENGTH {
                    return Err(Errno::ENAMETOOLONG);
                }
                let source = self
                    .fs
                    .lookup(from_directory, &from_name)
                    .await
                    .map_err(errno)?;
                if let Ok(target) = self.fs.lookup(to_directory, &to_name).await {
                    if target.ino != source.ino
                        && target.kind == FsKind::Directory
                        && self.is_ancestor(target.ino, from_directory).await?
                    {
                        match mode {
                            RenameMode::Replace => return Err(Errno::ENOTEMPTY),
                            RenameMode::Exchange => return Err(Errno::EINVAL),
                            // The file system answers EEXIST: the target exists.
                            RenameMode::NoReplace => {}
                        }
                    }
                }
                self.fs
                    .rename(from_directory, &from_name, to_directory, &to_name, mode)
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Link { from, to } => {
                let source = self.resolve(from, false).await?;
                let (directory, name) = self.parent_unchecked(to).await?;
                self.fs
                    .link(source, directory, &name)
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Symlink { target, path } => {
                let (directory, name) = self.parent(path).await?;
                self.fs
                    .make_symlink(directory, &name, target, root)
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Readlink { path } => {
                let ino = self.resolve(path, false).await?;
                Ok(Reply::Target(self.fs.read_link(ino).await.map_err(errno)?))
            }
            Operation::Write { path, offset, data } => {
                let inode = self.open_file(path, true).await?;
                let handle = self.fs.open(inode.ino).await.map_err(errno)?;
                let written = self.fs.write(inode.ino, *offset, data).await;
                let released = self.fs.release(handle).await;
                let written = written.map_err(errno)?;
                released.map_err(errno)?;
                Ok(Reply::Written {
                    count: written as u64,
                })
            }
            Operation::Read {
                path,
                offset,
                length,
            } => {
                let inode = self.open_file(path, false).await?;
                let handle = self.fs.open(inode.ino).await.map_err(errno)?;
                let mut data = Vec::new();
                let wanted = votefs::verify::model::clamp_read_length(*offset, *length)
                    .min(MAXIMUM_READ_LENGTH);
                let mut result = Ok(());
                // Bounded: each round reads at least one byte or stops.
                while (data.len() as u64) < wanted {
                    let chunk = (wanted - data.len() as u64).min(1 << 20) as u32;
                    match self
                        .fs
                        .read(inode.ino, offset + data.len() as u64, chunk)
                        .await
                    {
                        Ok(bytes) if bytes.is_empty() => break,
                        Ok(bytes) => data.extend_from_slice(&bytes),
                        Err(error) => {
                            result = Err(errno(error));
                            break;
                        }
                    }
                }
                self.fs.release(handle).await.map_err(errno)?;
                result?;
                Ok(Reply::Data(data))
            }
            Operation::Truncate { path, size } => {
                let inode = self.open_file(path, true).await?;
                self.fs
                    .set_attributes(
                        inode.ino,
                        // truncate(2) sets mtime and ctime with the size, as the VFS sends it.
                        AttributeChanges {
                            size: Some(*size),
                            mtime: Some(TimeChange::Now),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Chmod { path, mode } => {
                let ino = self.resolve(path, true).await?;
                self.fs
                    .set_attributes(
                        ino,
                        AttributeChanges {
                            permissions: Some(mode & 0o7777),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Stat { path } => {
                let ino = self.resolve(path, false).await?;
                let inode = self.fs.inode(ino).await.map_err(errno)?;
                Ok(Reply::Attributes(attributes(&inode)))
            }
            Operation::ReadDir { path } => {
                let ino = self.resolve(path, true).await?;
                let entries = self.fs.read_directory(ino).await.map_err(errno)?;
                Ok(Reply::Entries(
                    entries
                        .into_iter()
                        .map(|(name, entry)| DirectoryEntry {
                            name,
                            kind: kind(entry.kind),
                        })
                        .collect(),
                ))
            }
            Operation::Fsync { path } => {
                let ino = self.resolve(path, true).await?;
                self.fs.flush(ino).await.map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::SetXattr { path, name, value } => {
                let ino = self.resolve(path, true).await?;
                check_xattr_namespace(name)?;
                self.fs
                    .set_extended_attribute(ino, name, value, 0)
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::GetXattr { path, name } => {
                let ino = self.resolve(path, true).await?;
                check_xattr_namespace(name)?;
                Ok(Reply::Value(
                    self.fs
                        .get_extended_attribute(ino, name)
                        .await
                        .map_err(errno)?,
                ))
            }
            Operation::ListXattr { path } => {
                let ino = self.resolve(path, true).await?;
                Ok(Reply::Names(
                    self.fs.list_extended_attributes(ino).await.map_err(errno)?,
                ))
            }
            Operation::RemoveXattr { path, name } => {
                let ino = self.resolve(path, true).await?;
                check_xattr_namespace(name)?;
                self.fs
                    .remove_extended_attribute(ino, name)
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
            Operation::Utimens { path, atime, mtime } => {
                let ino = self.resolve(path, true).await?;
                let at = |time: &Timestamp| {
                    TimeChange::At(FsTimestamp {
                        seconds: time.seconds,
                        nanoseconds: time.nanoseconds,
                    })
                };
                self.fs
                    .set_attributes(
                        ino,
                        AttributeChanges {
                            atime: Some(at(atime)),
                            mtime: Some(at(mtime)),
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(errno)?;
                Ok(Reply::Done)
            }
        }
    }

    /// Whether `ancestor` is `directory` or one of its ancestors.
    async fn is_ancestor(&self, ancestor: u64, directory: u64) -> Result<bool, Errno> {
        let mut current = directory;
        for _ in 0..4096 {
            if current == ancestor {
                return Ok(true);
            }
            if current == ROOT_INODE {
                return Ok(false);
            }
            current = self.fs.inode(current).await.map_err(errno)?.parent;
        }
        Ok(false)
    }
}

/// Where a symlink's target starts (the root for an absolute one: the root acts as a chroot) and
/// its names, with `.` dropped and `..` kept for the walk.
fn split_target(target: &[u8], directory: u64) -> (u64, Vec<Vec<u8>>) {
    let start = if target.first() == Some(&b'/') {
        ROOT_INODE
    } else {
        directory
    };
    let components = target
        .split(|byte| *byte == b'/')
        .filter(|name| !name.is_empty() && *name != b".")
        .map(|name| name.to_vec())
        .collect();
    (start, components)
}
