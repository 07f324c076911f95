//! The reference model: an in-memory file system with the semantics and errnos of Linux for a
//! caller with root's capabilities (no permission check ever fails).
//!
//! Deterministic by construction: ordered maps only, no clock (every operation is given the time
//! it happens at), inode numbers handed out in order.
//!
//! Path resolution follows Linux with the root as a chroot (`openat2` with `RESOLVE_IN_ROOT`, which
//! is what [`super::real_directory`] uses): symlinks in the middle of a path are followed, an
//! absolute target starts at the root, `..` at the root stays there, at most
//! [`MAXIMUM_SYMLINKS_FOLLOWED`] links per resolution (then ELOOP). The last name of a path is
//! followed only by the operations that open it (see [`Operation`]). A followed symlink's access
//! time is touched, as the kernel does.
//!
//! Times follow Linux: creating, removing or renaming an entry sets its directory's mtime and ctime;
//! a write of at least one byte and every truncate set mtime and ctime; chmod, link count changes,
//! renames (of the moved inode), xattr changes and utimens set ctime; reads, listings, readlink and
//! followed symlinks update atime under the configured [`AccessTimeUpdates`] policy (relatime by
//! default, as most mounts are).
//!
//! Limits the model does not share with every file system: files may grow to `i64::MAX` bytes
//! (ext4 stops near 16 TiB with EFBIG); extended attributes are stored for the `user.`, `trusted.`
//! and `security.` namespaces alone, without the security modules' special names.

use std::collections::BTreeMap;

use super::file_data::FileData;
use super::operation::{
    Attributes, DirectoryEntry, Errno, FileKind, FsPath, Operation, RenameMode, Reply, Response,
    Timestamp, MAXIMUM_NAME_LENGTH, MAXIMUM_READ_LENGTH, MAXIMUM_SYMLINKS_FOLLOWED,
};

/// The root directory's inode number (as on ext4).
pub const ROOT_INODE: u64 = 2;

/// When reads and listings update a file's access time (the mount's atime option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessTimeUpdates {
    /// `relatime`: only when the access time is not newer than mtime or ctime, or a day old.
    Relatime,
    /// `strictatime`: on every access.
    Always,
    /// `noatime`.
    Never,
}

/// Who creates files and what the root looks like: the model must start where the file system
/// under test starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    /// Owner of every file created (the caller's effective uid).
    pub uid: u32,
    /// Group of every file created, unless its directory is set-group-id.
    pub gid: u32,
    /// The creating process's umask.
    pub umask: u32,
    /// The root directory's permission bits, owner and group.
    pub root_mode: u32,
    pub root_uid: u32,
    pub root_gid: u32,
    pub access_time_updates: AccessTimeUpdates,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            uid: 0,
            gid: 0,
            umask: 0o022,
            root_mode: 0o755,
            root_uid: 0,
            root_gid: 0,
            access_time_updates: AccessTimeUpdates::Relatime,
        }
    }
}

#[derive(Clone, Debug)]
struct Directory {
    entries: BTreeMap<Vec<u8>, u64>,
    /// The directory holding this one (the root holds itself): a directory has exactly one name.
    parent: u64,
}

#[derive(Clone, Debug)]
enum Content {
    RegularFile(FileData),
    Directory(Directory),
    Symlink(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Inode {
    content: Content,
    /// Permission bits (`0o7777`).
    mode: u32,
    uid: u32,
    gid: u32,
    /// Names of a regular file or symlink; a directory's count is derived from its entries.
    link_count: u64,
    atime: Timestamp,
    mtime: Timestamp,
    ctime: Timestamp,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Inode {
    fn kind(&self) -> FileKind {
        match self.content {
            Content::RegularFile(_) => FileKind::RegularFile,
            Content::Directory(_) => FileKind::Directory,
            Content::Symlink(_) => FileKind::Symlink,
        }
    }

    fn is_directory(&self) -> bool {
        matches!(self.content, Content::Directory(_))
    }
}

/// What one path resolution went through.
#[derive(Default)]
struct Trail {
    /// Every symlink followed, in order; its length is the count Linux limits.
    followed_symlinks: Vec<u64>,
}

/// The in-memory reference file system.
#[derive(Clone, Debug)]
pub struct Model {
    inodes: BTreeMap<u64, Inode>,
    next_inode_number: u64,
    options: ModelOptions,
}

impl Model {
    /// An empty file system whose root was created at `now`.
    pub fn new(options: ModelOptions, now: Timestamp) -> Model {
        let root = Inode {
            content: Content::Directory(Directory {
                entries: BTreeMap::new(),
                parent: ROOT_INODE,
            }),
            mode: options.root_mode & 0o7777,
            uid: options.root_uid,
            gid: options.root_gid,
            link_count: 0,
            atime: now,
            mtime: now,
            ctime: now,
            xattrs: BTreeMap::new(),
        };
        Model {
            inodes: BTreeMap::from([(ROOT_INODE, root)]),
            next_inode_number: ROOT_INODE + 1,
            options,
        }
    }

    pub fn options(&self) -> &ModelOptions {
        &self.options
    }

    /// Applies `operation` at time `now` and returns what Linux would have answered.
    pub fn apply(&mut self, operation: &Operation, now: Timestamp) -> Response {
        operation.validate()?;
        if let Some(response) = operation.root_response() {
            return response;
        }
        match operation {
            Operation::Create { path, mode } => self.create(path, *mode, now),
            Operation::Mkdir { path, mode } => self.mkdir(path, *mode, now),
            Operation::Unlink { path } => self.unlink(path, now),
            Operation::Rmdir { path } => self.rmdir(path, now),
            Operation::Rename { from, to, mode } => self.rename(from, to, *mode, now),
            Operation::Link { from, to } => self.link(from, to, now),
            Operation::Symlink { target, path } => self.symlink(target, path, now),
            Operation::Readlink { path } => self.readlink(path, now),
            Operation::Write { path, offset, data } => self.write(path, *offset, data, now),
            Operation::Read {
                path,
                offset,
                length,
            } => self.read(path, *offset, *length, now),
            Operation::Truncate { path, size } => self.truncate(path, *size, now),
            Operation::Chmod { path, mode } => {
                let number = self.resolve_following(path, now)?;
                let inode = self.inode_mut(number)?;
                inode.mode = mode & 0o7777;
                inode.ctime = now;
                Ok(Reply::Done)
            }
            Operation::Stat { path } => {
                let number = self.resolve_not_following(path, now)?;
                Ok(Reply::Attributes(self.attributes(number)?))
            }
            Operation::ReadDir { path } => self.read_directory(path, now),
            Operation::Fsync { path } => {
                self.resolve_following(path, now)?;
                Ok(Reply::Done)
            }
            Operation::SetXattr { path, name, value } => {
                let number = self.resolve_following(path, now)?;
                check_xattr_namespace(name)?;
                let inode = self.inode_mut(number)?;
                inode.xattrs.insert(name.clone(), value.clone());
                inode.ctime = now;
                Ok(Reply::Done)
            }
            Operation::GetXattr { path, name } => {
                let number = self.resolve_following(path, now)?;
                check_xattr_namespace(name)?;
                match self.inode(number)?.xattrs.get(name) {
                    Some(value) => Ok(Reply::Value(value.clone())),
                    None => Err(Errno::ENODATA),
                }
            }
            Operation::ListXattr { path } => {
                let number = self.resolve_following(path, now)?;
                let names = self.inode(number)?.xattrs.keys().cloned().collect();
                Ok(Reply::Names(names))
            }
            Operation::RemoveXattr { path, name } => {
                let number = self.resolve_following(path, now)?;
                check_xattr_namespace(name)?;
                let inode = self.inode_mut(number)?;
                if inode.xattrs.remove(name).is_none() {
                    return Err(Errno::ENODATA);
                }
                inode.ctime = now;
                Ok(Reply::Done)
            }
            Operation::Utimens { path, atime, mtime } => {
                let number = self.resolve_following(path, now)?;
                let inode = self.inode_mut(number)?;
                inode.atime = *atime;
                inode.mtime = *mtime;
                inode.ctime = now;
                Ok(Reply::Done)
            }
        }
    }

    /// Every path below the root, found without following symlinks, parents before children,
    /// in name order, with its kind. A file with several links appears once per name.
    pub fn entries(&self) -> Vec<(FsPath, FileKind)> {
        let mut found = Vec::new();
        let mut pending = vec![(FsPath::root(), ROOT_INODE)];
        while let Some((path, number)) = pending.pop() {
            let Some(Content::Directory(directory)) =
                self.inodes.get(&number).map(|inode| &inode.content)
            else {
                continue;
            };
            let mut subdirectories = Vec::new();
            for (name, child) in &directory.entries {
                let Some(child_inode) = self.inodes.get(child) else {
                    continue;
                };
                let child_path = path.join(name);
                found.push((child_path.clone(), child_inode.kind()));
                if child_inode.is_directory() {
                    subdirectories.push((child_path, *child));
                }
            }
            // Reversed so that the stack pops them in name order.
            pending.extend(subdirectories.into_iter().rev());
        }
        found
    }

    /// What `lstat(path)` would report, without touching any access time (for generators and
    /// tests; `None` if the path does not resolve).
    pub fn peek(&self, path: &FsPath) -> Option<Attributes> {
        let number = self.find_not_following(path, &mut Trail::default()).ok()?;
        self.attributes(number).ok()
    }

    /// The target of the symlink at `path` (not following it), if it is one.
    pub fn peek_symlink_target(&self, path: &FsPath) -> Option<Vec<u8>> {
        let number = self.find_not_following(path, &mut Trail::default()).ok()?;
        match &self.inodes.get(&number)?.content {
            Content::Symlink(target) => Some(target.clone()),
            _ => None,
        }
    }

    /// The names of the extended attributes of the file `path` leads to (following symlinks),
    /// without touching any access time; empty if it does not resolve.
    pub fn peek_xattr_names(&self, path: &FsPath) -> Vec<Vec<u8>> {
        let components: Vec<&[u8]> = path.components().collect();
        let mut trail = Trail::default();
        match self.walk(ROOT_INODE, &components, true, &mut trail) {
            Ok(number) => self
                .inodes
                .get(&number)
                .map(|inode| inode.xattrs.keys().cloned().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    // ----- operations -----

    fn create(&mut self, path: &FsPath, mode: u32, now: Timestamp) -> Response {
        let (parent, name) = self.resolve_parent(path, now)?;
        if self.lookup(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let mode = mode & 0o7777 & !self.options.umask;
        self.add_inode(
            parent,
            name,
            Content::RegularFile(FileData::default()),
            mode,
            now,
        )?;
        Ok(Reply::Done)
    }

    fn mkdir(&mut self, path: &FsPath, mode: u32, now: Timestamp) -> Response {
        let (parent, name) = self.resolve_parent(path, now)?;
        if self.lookup(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        // mkdir keeps the permission and sticky bits only (vfs_mkdir).
        let mode = mode & 0o1777 & !self.options.umask;
        let directory = Directory {
            entries: BTreeMap::new(),
            parent,
        };
        self.add_inode(parent, name, Content::Directory(directory), mode, now)?;
        Ok(Reply::Done)
    }

    fn symlink(&mut self, target: &[u8], path: &FsPath, now: Timestamp) -> Response {
        let (parent, name) = self.resolve_parent(path, now)?;
        if self.lookup(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.add_inode(parent, name, Content::Symlink(target.to_vec()), 0o777, now)?;
        Ok(Reply::Done)
    }

    fn unlink(&mut self, path: &FsPath, now: Timestamp) -> Response {
        let (parent, name) = self.resolve_parent(path, now)?;
        let child = self.lookup(parent, name)?.ok_or(Errno::ENOENT)?;
        if self.inode(child)?.is_directory() {
            return Err(Errno::EISDIR);
        }
        self.directory_mut(parent)?.entries.remove(name);
        self.drop_link(child, now)?;
        self.touch_modified(parent, now)?;
        Ok(Reply::Done)
    }

    fn rmdir(&mut self, path: &FsPath, now: Timestamp) -> Response {
        let (parent, name) = self.resolve_parent(path, now)?;
        let child = self.lookup(parent, name)?.ok_or(Errno::ENOENT)?;
        if !self.directory(child)?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.directory_mut(parent)?.entries.remove(name);
        self.inodes.remove(&child);
        self.touch_modified(parent, now)?;
        Ok(Reply::Done)
    }

    /// The checks in the order of Linux's `do_renameat2` and `vfs_rename`.
    fn rename(&mut self, from: &FsPath, to: &FsPath, mode: RenameMode, now: Timestamp) -> Response {
        let (from_parent, from_name) = self.resolve_parent(from, now)?;
        let (to_parent, to_name) = self.resolve_parent(to, now)?;
        let source = self.lookup(from_parent, from_name)?.ok_or(Errno::ENOENT)?;
        let target = self.lookup(to_parent, to_name)?;
        match (mode, target) {
            (RenameMode::NoReplace, Some(_)) => return Err(Errno::EEXIST),
            (RenameMode::Exchange, None) => return Err(Errno::ENOENT),
            _ => {}
        }
        let source_is_directory = self.inode(source)?.is_directory();
        // A directory cannot move into its own subtree.
        if source_is_directory && self.is_ancestor_or_self(source, to_parent)? {
            return Err(Errno::EINVAL);
        }
        if let Some(target) = target {
            // Replacing an ancestor of the source: the target is not empty (it holds the source).
            if self.inode(target)?.is_directory()
                && self.is_ancestor_or_self(target, from_parent)?
            {
                return Err(match mode {
                    RenameMode::Exchange => Errno::EINVAL,
                    _ => Errno::ENOTEMPTY,
                });
            }
            // Two names of one inode: POSIX makes this a successful no-op.
            if target == source {
                return Ok(Reply::Done);
            }
            if mode != RenameMode::Exchange {
                let target_directory = self.inode(target)?.is_directory();
                if source_is_directory && !target_directory {
                    return Err(Errno::ENOTDIR);
                }
                if !source_is_directory && target_directory {
                    return Err(Errno::EISDIR);
                }
                if target_directory && !self.directory(target)?.entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        match (mode, target) {
            (RenameMode::Exchange, Some(target)) => {
                self.directory_mut(from_parent)?
                    .entries
                    .insert(from_name.to_vec(), target);
                self.directory_mut(to_parent)?
                    .entries
                    .insert(to_name.to_vec(), source);
                self.set_parent(source, to_parent)?;
                self.set_parent(target, from_parent)?;
                self.inode_mut(target)?.ctime = now;
            }
            (_, target) => {
                self.directory_mut(from_parent)?.entries.remove(from_name);
                self.directory_mut(to_parent)?
                    .entries
                    .insert(to_name.to_vec(), source);
                self.set_parent(source, to_parent)?;
                if let Some(target) = target {
                    if self.inode(target)?.is_directory() {
                        self.inodes.remove(&target);
                    } else {
                        self.drop_link(target, now)?;
                    }
                }
            }
        }
        self.inode_mut(source)?.ctime = now;
        self.touch_modified(from_parent, now)?;
        self.touch_modified(to_parent, now)?;
        Ok(Reply::Done)
    }

    /// The checks in the order of Linux's `do_linkat`: the source is looked up completely before
    /// the new name's directory.
    fn link(&mut self, from: &FsPath, to: &FsPath, now: Timestamp) -> Response {
        let (from_parent, from_name) = self.resolve_parent(from, now)?;
        let source = self.lookup(from_parent, from_name)?.ok_or(Errno::ENOENT)?;
        let (to_parent, to_name) = self.resolve_parent(to, now)?;
        if self.lookup(to_parent, to_name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let inode = self.inode_mut(source)?;
        if inode.is_directory() {
            return Err(Errno::EPERM);
        }
        inode.link_count += 1;
        inode.ctime = now;
        self.directory_mut(to_parent)?
            .entries
            .insert(to_name.to_vec(), source);
        self.touch_modified(to_parent, now)?;
        Ok(Reply::Done)
    }

    fn readlink(&mut self, path: &FsPath, now: Timestamp) -> Response {
        let number = self.resolve_not_following(path, now)?;
        let target = match &self.inode(number)?.content {
            Content::Symlink(target) => target.clone(),
            _ => return Err(Errno::EINVAL),
        };
        self.touch_accessed(number, now)?;
        Ok(Reply::Target(target))
    }

    fn write(&mut self, path: &FsPath, offset: u64, data: &[u8], now: Timestamp) -> Response {
        let number = self.resolve_following(path, now)?;
        let inode = self.inode_mut(number)?;
        let Content::RegularFile(file) = &mut inode.content else {
            return Err(Errno::EISDIR);
        };
        // pwrite refuses a negative offset, or one whose end does not fit an off_t.
        let end = offset.checked_add(data.len() as u64);
        if offset > i64::MAX as u64 || end.is_none_or(|end| end > i64::MAX as u64) {
            return Err(Errno::EINVAL);
        }
        if !data.is_empty() {
            file.write(offset, data);
            inode.mtime = now;
            inode.ctime = now;
        }
        Ok(Reply::Written {
            count: data.len() as u64,
        })
    }

    fn read(&mut self, path: &FsPath, offset: u64, length: u64, now: Timestamp) -> Response {
        let number = self.resolve_following(path, now)?;
        let Content::RegularFile(file) = &self.inode(number)?.content else {
            return Err(Errno::EISDIR);
        };
        if offset > i64::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        let length = clamp_read_length(offset, length);
        let data = file.read(offset, length);
        // A read of no bytes returns before the access time is touched (filemap_read).
        if length > 0 {
            self.touch_accessed(number, now)?;
        }
        Ok(Reply::Data(data))
    }

    fn truncate(&mut self, path: &FsPath, size: u64, now: Timestamp) -> Response {
        let number = self.resolve_following(path, now)?;
        let inode = self.inode_mut(number)?;
        let Content::RegularFile(file) = &mut inode.content else {
            return Err(Errno::EISDIR);
        };
        if size > i64::MAX as u64 {
            return Err(Errno::EINVAL);
        }
        file.truncate(size);
        // truncate(2) sets both times even when the size does not change.
        inode.mtime = now;
        inode.ctime = now;
        Ok(Reply::Done)
    }

    fn read_directory(&mut self, path: &FsPath, now: Timestamp) -> Response {
        let number = self.resolve_following(path, now)?;
        let mut entries = Vec::new();
        for (name, child) in &self.directory(number)?.entries {
            entries.push(DirectoryEntry {
                name: name.clone(),
                kind: self.inode(*child)?.kind(),
            });
        }
        self.touch_accessed(number, now)?;
        Ok(Reply::Entries(entries))
    }

    // ----- path resolution -----

    /// The directory that holds the last name of `path` (symlinks on the way followed), and that
    /// name. The caller has handled the root.
    fn resolve_parent<'path>(
        &mut self,
        path: &'path FsPath,
        now: Timestamp,
    ) -> Result<(u64, &'path [u8]), Errno> {
        let mut trail = Trail::default();
        let result = self.find_parent(path, &mut trail);
        self.touch_followed(&trail, now)?;
        result
    }

    fn resolve_following(&mut self, path: &FsPath, now: Timestamp) -> Result<u64, Errno> {
        let components: Vec<&[u8]> = path.components().collect();
        let mut trail = Trail::default();
        let result = self.walk(ROOT_INODE, &components, true, &mut trail);
        self.touch_followed(&trail, now)?;
        result
    }

    fn resolve_not_following(&mut self, path: &FsPath, now: Timestamp) -> Result<u64, Errno> {
        let mut trail = Trail::default();
        let result = self.find_not_following(path, &mut trail);
        self.touch_followed(&trail, now)?;
        result
    }

    /// Following a symlink touches its access time, even when the resolution fails further on.
    fn touch_followed(&mut self, trail: &Trail, now: Timestamp) -> Result<(), Errno> {
        for symlink in &trail.followed_symlinks {
            self.touch_accessed(*symlink, now)?;
        }
        Ok(())
    }

    fn find_parent<'path>(
        &self,
        path: &'path FsPath,
        trail: &mut Trail,
    ) -> Result<(u64, &'path [u8]), Errno> {
        let components: Vec<&[u8]> = path.components().collect();
        let Some((name, parent_components)) = components.split_last() else {
            return Err(Errno::EINVAL);
        };
        let parent = self.walk(ROOT_INODE, parent_components, true, trail)?;
        self.directory(parent)?;
        Ok((parent, name))
    }

    fn find_not_following(&self, path: &FsPath, trail: &mut Trail) -> Result<u64, Errno> {
        if path.is_root() {
            return Ok(ROOT_INODE);
        }
        let (parent, name) = self.find_parent(path, trail)?;
        self.lookup(parent, name)?.ok_or(Errno::ENOENT)
    }

    /// Walks `components` from `start`, following symlinks in the middle and, if `follow_last`,
    /// at the end. Touches nothing: the symlinks it follows are noted in `trail`, whose count
    /// goes across nested targets, as Linux counts per lookup.
    fn walk(
        &self,
        start: u64,
        components: &[&[u8]],
        follow_last: bool,
        trail: &mut Trail,
    ) -> Result<u64, Errno> {
        let mut current = start;
        for (position, component) in components.iter().enumerate() {
            let is_last = position + 1 == components.len();
            let parent = self.directory(current)?.parent;
            current = match *component {
                b"" | b"." => current,
                // The root is a chroot: `..` there stays there.
                b".." => parent,
                name => {
                    let child = self.lookup(current, name)?.ok_or(Errno::ENOENT)?;
                    match &self.inode(child)?.content {
                        Content::Symlink(target) if !is_last || follow_last => {
                            self.follow(current, child, target, trail)?
                        }
                        _ => child,
                    }
                }
            };
        }
        Ok(current)
    }

    /// Resolves `target`, the target of `symlink`, which sits in `directory`.
    fn follow(
        &self,
        directory: u64,
        symlink: u64,
        target: &[u8],
        trail: &mut Trail,
    ) -> Result<u64, Errno> {
        if trail.followed_symlinks.len() >= MAXIMUM_SYMLINKS_FOLLOWED as usize {
            return Err(Errno::ELOOP);
        }
        trail.followed_symlinks.push(symlink);
        let start = if target.first() == Some(&b'/') {
            ROOT_INODE
        } else {
            directory
        };
        let components: Vec<&[u8]> = target
            .split(|byte| *byte == b'/')
            .filter(|component| !component.is_empty())
            .collect();
        let resolved = self.walk(start, &components, true, trail)?;
        // A trailing slash demands a directory.
        if target.last() == Some(&b'/') {
            self.directory(resolved)?;
        }
        Ok(resolved)
    }

    /// The inode `name` names in `directory`. ENOTDIR if `directory` is not one; ENAMETOOLONG for
    /// a name longer than any directory can hold (file systems report it from their lookup).
    fn lookup(&self, directory: u64, name: &[u8]) -> Result<Option<u64>, Errno> {
        let entries = &self.directory(directory)?.entries;
        if name.len() > MAXIMUM_NAME_LENGTH {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(entries.get(name).copied())
    }

    // ----- inode bookkeeping -----

    // A missing inode would be a bug in the model, never a consequence of the input; it answers
    // EIO rather than panicking.
    fn inode(&self, number: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&number).ok_or(Errno::EIO)
    }

    fn inode_mut(&mut self, number: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&number).ok_or(Errno::EIO)
    }

    fn directory(&self, number: u64) -> Result<&Directory, Errno> {
        match &self.inode(number)?.content {
            Content::Directory(directory) => Ok(directory),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn directory_mut(&mut self, number: u64) -> Result<&mut Directory, Errno> {
        match &mut self.inode_mut(number)?.content {
            Content::Directory(directory) => Ok(directory),
            _ => Err(Errno::ENOTDIR),
        }
    }

    fn set_parent(&mut self, number: u64, parent: u64) -> Result<(), Errno> {
        if let Content::Directory(directory) = &mut self.inode_mut(number)?.content {
            directory.parent = parent;
        }
        Ok(())
    }

    /// Whether `ancestor` is `descendant` or one of the directories above it.
    fn is_ancestor_or_self(&self, ancestor: u64, descendant: u64) -> Result<bool, Errno> {
        let mut current = descendant;
        // Bounded by the number of inodes, so a broken parent chain cannot loop forever.
        for _ in 0..=self.inodes.len() {
            if current == ancestor {
                return Ok(true);
            }
            if current == ROOT_INODE {
                return Ok(false);
            }
            current = self.directory(current)?.parent;
        }
        Err(Errno::EIO)
    }

    fn add_inode(
        &mut self,
        parent: u64,
        name: &[u8],
        content: Content,
        mode: u32,
        now: Timestamp,
    ) -> Result<(), Errno> {
        let parent_inode = self.inode(parent)?;
        // A set-group-id directory hands its group down, and its set-group-id bit to directories.
        let (gid, mode) = if parent_inode.mode & 0o2000 != 0 {
            let inherited_bit = if matches!(content, Content::Directory(_)) {
                0o2000
            } else {
                0
            };
            (parent_inode.gid, mode | inherited_bit)
        } else {
            (self.options.gid, mode)
        };
        let number = self.next_inode_number;
        self.next_inode_number += 1;
        self.inodes.insert(
            number,
            Inode {
                content,
                mode,
                uid: self.options.uid,
                gid,
                link_count: 1,
                atime: now,
                mtime: now,
                ctime: now,
                xattrs: BTreeMap::new(),
            },
        );
        self.directory_mut(parent)?
            .entries
            .insert(name.to_vec(), number);
        self.touch_modified(parent, now)
    }

    /// One name of a non-directory is gone: the inode goes with its last name.
    fn drop_link(&mut self, number: u64, now: Timestamp) -> Result<(), Errno> {
        let inode = self.inode_mut(number)?;
        inode.link_count = inode.link_count.saturating_sub(1);
        inode.ctime = now;
        if inode.link_count == 0 {
            self.inodes.remove(&number);
        }
        Ok(())
    }

    /// A directory's entries changed.
    fn touch_modified(&mut self, directory: u64, now: Timestamp) -> Result<(), Errno> {
        let inode = self.inode_mut(directory)?;
        inode.mtime = now;
        inode.ctime = now;
        Ok(())
    }

    /// The kernel's `touch_atime` under the configured policy (`atime_needs_update`).
    fn touch_accessed(&mut self, number: u64, now: Timestamp) -> Result<(), Errno> {
        let policy = self.options.access_time_updates;
        let inode = self.inode_mut(number)?;
        let needed = match policy {
            AccessTimeUpdates::Never => false,
            AccessTimeUpdates::Always => true,
            AccessTimeUpdates::Relatime => {
                const DAY_SECONDS: i64 = 24 * 60 * 60;
                inode.mtime >= inode.atime
                    || inode.ctime >= inode.atime
                    || now.seconds.saturating_sub(inode.atime.seconds) >= DAY_SECONDS
            }
        };
        if needed {
            inode.atime = now;
        }
        Ok(())
    }

    fn attributes(&self, number: u64) -> Result<Attributes, Errno> {
        let inode = self.inode(number)?;
        let (size, nlink, blocks) = match &inode.content {
            Content::RegularFile(file) => (file.size(), inode.link_count, file.allocated_blocks()),
            Content::Symlink(target) => (target.len() as u64, inode.link_count, 0),
            Content::Directory(directory) => {
                // "." and the entry in the parent, plus each subdirectory's "..".
                let mut subdirectories = 0;
                for child in directory.entries.values() {
                    if self.inode(*child)?.is_directory() {
                        subdirectories += 1;
                    }
                }
                (0, 2 + subdirectories, 0)
            }
        };
        Ok(Attributes {
            kind: inode.kind(),
            mode: inode.mode,
            size,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            ino: number,
            blocks,
        })
    }
}

/// The bytes a read may return: at most [`MAXIMUM_READ_LENGTH`], and never reaching past
/// `i64::MAX` (pread refuses a range whose end does not fit an off_t). Shared with the real
/// directory so both clamp the same way.
pub fn clamp_read_length(offset: u64, length: u64) -> u64 {
    length
        .min(MAXIMUM_READ_LENGTH)
        .min((i64::MAX as u64).saturating_sub(offset))
}

/// EOPNOTSUPP for a namespace the model does not store, EINVAL for a namespace prefix alone.
/// The xattr namespaces Linux passes to a file system for root; it refuses the others itself.
pub fn check_xattr_namespace(name: &[u8]) -> Result<(), Errno> {
    for prefix in [&b"user."[..], b"trusted.", b"security."] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return if rest.is_empty() {
                Err(Errno::EINVAL)
            } else {
                Ok(())
            };
        }
    }
    Err(Errno::EOPNOTSUPP)
}
