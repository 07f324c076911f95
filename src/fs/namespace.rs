//! Directory and attribute operations: everything that changes the namespace or an inode's
//! metadata. Each holds the namespace lock from its first check to its commit, so checks and
//! changes cannot interleave with another namespace operation.

use std::collections::BTreeMap;

use crate::env::Env;

use super::types::{
    keys, DirectoryEntry, FileKind, Inode, InodeNumber, IntentStep, NAME_MAX_BYTES,
    SYMLINK_MAX_BYTES, XATTR_NAME_MAX_BYTES, XATTR_TOTAL_BYTES,
};
use super::{
    decode, encode, io_error, AttributeChanges, Caller, Errno, FileSystem, RenameMode, TimeChange,
    FAN_OUT, ROOT_INODE,
};
use crate::env::fan_out;

/// Directory entries fetched per page of a listing.
pub const DIRECTORY_PAGE_ENTRIES: u32 = 512;

/// Links a file may have (ext4's limit).
const LINK_MAX: u32 = 65_000;

/// Directory depth walked when checking that a directory is not moved into itself.
const DEPTH_MAX: usize = 4096;

pub const XATTR_CREATE: i32 = libc::XATTR_CREATE;
pub const XATTR_REPLACE: i32 = libc::XATTR_REPLACE;

fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(Errno::EINVAL);
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl<E: Env> FileSystem<E> {
    async fn directory(&self, ino: InodeNumber) -> Result<Inode, Errno> {
        let inode = self.inode(ino).await?;
        if !inode.is_directory() {
            return Err(Errno::ENOTDIR);
        }
        if inode.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        Ok(inode)
    }

    /// The entry `name` in `directory`, if any.
    pub async fn entry(
        &self,
        directory: InodeNumber,
        name: &[u8],
    ) -> Result<Option<DirectoryEntry>, Errno> {
        if let Some(known) = self.shared.entries.lock().unwrap().get(directory, name) {
            return Ok(known);
        }
        let key = keys::directory_entry(directory, name);
        let stored = match self.pending_value(&key) {
            Some(pending) => pending,
            None => self.shared.client.get(&key).await.map_err(io_error)?,
        };
        let entry = match stored {
            Some(bytes) => Some(decode(&key, &bytes)?),
            None => None,
        };
        // A namespace operation may have changed the entry while this read was out; what it put
        // in the cache is newer than this answer, so only an empty slot is filled.
        let mut entries = self.shared.entries.lock().unwrap();
        if entries.get(directory, name).is_none() {
            entries.insert(directory, name, entry);
        }
        Ok(entry)
    }

    pub async fn lookup(&self, parent: InodeNumber, name: &[u8]) -> Result<Inode, Errno> {
        self.directory(parent).await?;
        if name.len() > NAME_MAX_BYTES {
            return Err(Errno::ENAMETOOLONG);
        }
        let entry = self.entry(parent, name).await?.ok_or(Errno::ENOENT)?;
        self.inode(entry.ino).await
    }

    /// Create a regular file, FIFO, socket or device node.
    pub async fn make_node(
        &self,
        parent: InodeNumber,
        name: &[u8],
        kind: FileKind,
        permissions: u32,
        rdev: u32,
        caller: Caller,
    ) -> Result<Inode, Errno> {
        if kind == FileKind::Directory || kind == FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        self.create_inode(parent, name, kind, permissions, rdev, Vec::new(), caller)
            .await
    }

    pub async fn make_directory(
        &self,
        parent: InodeNumber,
        name: &[u8],
        permissions: u32,
        caller: Caller,
    ) -> Result<Inode, Errno> {
        self.create_inode(
            parent,
            name,
            FileKind::Directory,
            permissions,
            0,
            Vec::new(),
            caller,
        )
        .await
    }

    pub async fn make_symlink(
        &self,
        parent: InodeNumber,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Inode, Errno> {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() > SYMLINK_MAX_BYTES {
            return Err(Errno::ENAMETOOLONG);
        }
        self.create_inode(
            parent,
            name,
            FileKind::Symlink,
            0o777,
            0,
            target.to_vec(),
            caller,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_inode(
        &self,
        parent: InodeNumber,
        name: &[u8],
        kind: FileKind,
        permissions: u32,
        rdev: u32,
        symlink_target: Vec<u8>,
        caller: Caller,
    ) -> Result<Inode, Errno> {
        check_name(name)?;
        let mut namespace = self.shared.namespace.lock().await;
        let mut directory = self.directory(parent).await?;
        if self.entry(parent, name).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        if kind == FileKind::Directory && directory.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        let ino = self.allocate_inode(&mut namespace).await?;
        let now = self.now();
        let mut permissions = permissions & 0o7777;
        let mut gid = caller.gid;
        // BSD group semantics under a set-group-ID directory, as Linux does.
        if directory.permissions & libc::S_ISGID != 0 {
            gid = directory.gid;
            if kind == FileKind::Directory {
                permissions |= libc::S_ISGID;
            }
        }
        let size = if kind == FileKind::Symlink {
            symlink_target.len() as u64
        } else {
            0
        };
        let inode = Inode {
            ino,
            kind,
            permissions,
            uid: caller.uid,
            gid,
            nlink: if kind == FileKind::Directory { 2 } else { 1 },
            size,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev,
            parent,
            symlink_target,
            // A new file's (empty) bytes are inline: its first write reads nothing from the cluster.
            inline_data: (kind == FileKind::Regular).then(serde_bytes::ByteBuf::new),
            // A file's first chunk needs no extent raise before it is stored.
            stored_extent: if kind == FileKind::Regular {
                super::types::CHUNK_BYTES
            } else {
                0
            },
            xattrs: BTreeMap::new(),
        };
        directory.size += 1;
        if kind == FileKind::Directory {
            directory.nlink += 1;
        }
        directory.mtime = now;
        directory.ctime = now;
        let steps = vec![
            IntentStep::PutInode(inode.clone()),
            IntentStep::PutEntry {
                directory: parent,
                name: name.to_vec(),
                entry: DirectoryEntry { ino, kind },
            },
            IntentStep::PutInode(directory),
        ];
        self.commit(&mut namespace, "create", steps).await?;
        if kind == FileKind::Directory {
            self.shared.entries.lock().unwrap().mark_complete(ino);
        }
        Ok(inode)
    }

    pub async fn link(
        &self,
        ino: InodeNumber,
        new_parent: InodeNumber,
        new_name: &[u8],
    ) -> Result<Inode, Errno> {
        check_name(new_name)?;
        let mut namespace = self.shared.namespace.lock().await;
        let mut directory = self.directory(new_parent).await?;
        let (_, state) = self.cached(ino).await?;
        let mut state = state.lock_owned().await;
        let mut inode = self.current_inode(ino).ok_or(Errno::ENOENT)?;
        // In the order Linux checks: the name first, then what is linked.
        if self.entry(new_parent, new_name).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        if inode.is_directory() {
            return Err(Errno::EPERM);
        }
        if inode.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if inode.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        self.flush_locked(ino, &mut state).await?;
        inode = self.current_inode(ino).ok_or(Errno::ENOENT)?;
        let now = self.now();
        inode.nlink += 1;
        inode.ctime = now;
        directory.size += 1;
        directory.mtime = now;
        directory.ctime = now;
        let steps = vec![
            IntentStep::PutInode(inode.clone()),
            IntentStep::PutEntry {
                directory: new_parent,
                name: new_name.to_vec(),
                entry: DirectoryEntry {
                    ino,
                    kind: inode.kind,
                },
            },
            IntentStep::PutInode(directory),
        ];
        self.commit(&mut namespace, "link", steps).await?;
        Ok(inode)
    }

    /// The steps that drop one link to `ino` (already locked by the caller): the inode with one
    /// link less, or its removal when no link and no open handle is left.
    async fn drop_link_steps(
        &self,
        ino: InodeNumber,
        state: &mut super::FileState,
        now: super::Timestamp,
    ) -> Result<Vec<IntentStep>, Errno> {
        let mut inode = self.current_inode(ino).ok_or(Errno::ENOENT)?;
        inode.nlink = inode.nlink.saturating_sub(1);
        inode.ctime = now;
        if inode.nlink > 0 || self.open_count(ino) > 0 {
            self.flush_locked(ino, state).await?;
            let mut stored = self.current_inode(ino).ok_or(Errno::ENOENT)?;
            stored.nlink = inode.nlink;
            stored.ctime = now;
            let mut steps = vec![IntentStep::PutInode(stored)];
            if inode.nlink == 0 {
                steps.push(IntentStep::PutOrphan(ino));
            }
            return Ok(steps);
        }
        let end = inode
            .stored_chunk_end()
            .max(state.stored_extent.div_ceil(super::types::CHUNK_BYTES));
        state.dirty_chunks.clear();
        state.inode_dirty = false;
        Ok(vec![
            IntentStep::DeleteInode(ino),
            IntentStep::DeleteChunks { ino, first: 0, end },
        ])
    }

    pub async fn unlink(&self, parent: InodeNumber, name: &[u8]) -> Result<(), Errno> {
        let mut namespace = self.shared.namespace.lock().await;
        let mut directory = self.directory(parent).await?;
        let entry = self.entry(parent, name).await?.ok_or(Errno::ENOENT)?;
        if entry.kind == FileKind::Directory {
            return Err(Errno::EISDIR);
        }
        let (_, state) = self.cached(entry.ino).await?;
        let mut state = state.lock_owned().await;
        let now = self.now();
        let mut steps = vec![IntentStep::DeleteEntry {
            directory: parent,
            name: name.to_vec(),
        }];
        steps.extend(self.drop_link_steps(entry.ino, &mut state, now).await?);
        directory.size = directory.size.saturating_sub(1);
        directory.mtime = now;
        directory.ctime = now;
        steps.push(IntentStep::PutInode(directory));
        self.commit(&mut namespace, "unlink", steps).await
    }

    pub async fn remove_directory(&self, parent: InodeNumber, name: &[u8]) -> Result<(), Errno> {
        if name == b"." {
            return Err(Errno::EINVAL);
        }
        if name == b".." {
            return Err(Errno::ENOTEMPTY);
        }
        let mut namespace = self.shared.namespace.lock().await;
        let mut directory = self.directory(parent).await?;
        let entry = self.entry(parent, name).await?.ok_or(Errno::ENOENT)?;
        if entry.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        let child = self.inode(entry.ino).await?;
        if child.size > 0 {
            return Err(Errno::ENOTEMPTY);
        }
        let now = self.now();
        directory.size = directory.size.saturating_sub(1);
        directory.nlink = directory.nlink.saturating_sub(1);
        directory.mtime = now;
        directory.ctime = now;
        let steps = vec![
            IntentStep::DeleteEntry {
                directory: parent,
                name: name.to_vec(),
            },
            IntentStep::DeleteInode(entry.ino),
            IntentStep::PutInode(directory),
        ];
        self.commit(&mut namespace, "rmdir", steps).await
    }

    /// Whether `directory` is `ancestor` or lies below it.
    async fn is_within(
        &self,
        directory: InodeNumber,
        ancestor: InodeNumber,
    ) -> Result<bool, Errno> {
        let mut current = directory;
        for _ in 0..DEPTH_MAX {
            if current == ancestor {
                return Ok(true);
            }
            if current == ROOT_INODE {
                return Ok(false);
            }
            current = self.inode(current).await?.parent;
        }
        tracing::error!("directory {directory} is nested deeper than {DEPTH_MAX} levels");
        Err(Errno::EIO)
    }

    pub async fn rename(
        &self,
        parent: InodeNumber,
        name: &[u8],
        new_parent: InodeNumber,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), Errno> {
        check_name(name)?;
        let mut namespace = self.shared.namespace.lock().await;
        let mut directories: BTreeMap<InodeNumber, Inode> = BTreeMap::new();
        directories.insert(parent, self.directory(parent).await?);
        directories.insert(new_parent, self.directory(new_parent).await?);
        let source = self.entry(parent, name).await?.ok_or(Errno::ENOENT)?;
        // Linux looks the source up before the target: a missing source wins over a bad name.
        check_name(new_name)?;
        let target = self.entry(new_parent, new_name).await?;
        match (mode, &target) {
            (RenameMode::NoReplace, Some(_)) => return Err(Errno::EEXIST),
            (RenameMode::Exchange, None) => return Err(Errno::ENOENT),
            _ => {}
        }
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        if let Some(target) = &target {
            if target.ino == source.ino {
                // Two links to one file: POSIX says do nothing.
                return Ok(());
            }
        }
        if source.kind == FileKind::Directory
            && parent != new_parent
            && self.is_within(new_parent, source.ino).await?
        {
            return Err(Errno::EINVAL);
        }
        let now = self.now();
        let mut steps = Vec::new();
        let mut guards = Vec::new();
        if mode == RenameMode::Exchange {
            let target = target.expect("checked above");
            if target.kind == FileKind::Directory
                && parent != new_parent
                && self.is_within(parent, target.ino).await?
            {
                return Err(Errno::EINVAL);
            }
            steps.push(IntentStep::PutEntry {
                directory: parent,
                name: name.to_vec(),
                entry: target,
            });
            steps.push(IntentStep::PutEntry {
                directory: new_parent,
                name: new_name.to_vec(),
                entry: source,
            });
            for (entry, to) in [(source, new_parent), (target, parent)] {
                let (_, state) = self.cached(entry.ino).await?;
                let mut state = state.lock_owned().await;
                self.flush_locked(entry.ino, &mut state).await?;
                guards.push(state);
                let mut moved = self.current_inode(entry.ino).ok_or(Errno::ENOENT)?;
                moved.ctime = now;
                if moved.is_directory() {
                    moved.parent = to;
                }
                steps.push(IntentStep::PutInode(moved));
            }
            if parent != new_parent {
                let source_directory = source.kind == FileKind::Directory;
                let target_directory = target.kind == FileKind::Directory;
                if source_directory != target_directory {
                    let (losing, gaining) = if source_directory {
                        (parent, new_parent)
                    } else {
                        (new_parent, parent)
                    };
                    let losing = directories.get_mut(&losing).expect("loaded");
                    losing.nlink = losing.nlink.saturating_sub(1);
                    directories.get_mut(&gaining).expect("loaded").nlink += 1;
                }
            }
        } else {
            if let Some(target) = &target {
                match (
                    source.kind == FileKind::Directory,
                    target.kind == FileKind::Directory,
                ) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true) => {
                        if self.inode(target.ino).await?.size > 0 {
                            return Err(Errno::ENOTEMPTY);
                        }
                    }
                    (false, false) => {}
                }
            }
            steps.push(IntentStep::DeleteEntry {
                directory: parent,
                name: name.to_vec(),
            });
            steps.push(IntentStep::PutEntry {
                directory: new_parent,
                name: new_name.to_vec(),
                entry: source,
            });
            let (_, state) = self.cached(source.ino).await?;
            let mut state = state.lock_owned().await;
            self.flush_locked(source.ino, &mut state).await?;
            guards.push(state);
            let mut moved = self.current_inode(source.ino).ok_or(Errno::ENOENT)?;
            moved.ctime = now;
            if moved.is_directory() {
                moved.parent = new_parent;
            }
            steps.push(IntentStep::PutInode(moved));
            let source_parent = directories.get_mut(&parent).expect("loaded");
            source_parent.size = source_parent.size.saturating_sub(1);
            if source.kind == FileKind::Directory {
                source_parent.nlink = source_parent.nlink.saturating_sub(1);
            }
            let target_parent = directories.get_mut(&new_parent).expect("loaded");
            target_parent.size += 1;
            if source.kind == FileKind::Directory {
                target_parent.nlink += 1;
            }
            if let Some(target) = target {
                target_parent.size = target_parent.size.saturating_sub(1);
                if target.kind == FileKind::Directory {
                    target_parent.nlink = target_parent.nlink.saturating_sub(1);
                    steps.push(IntentStep::DeleteInode(target.ino));
                } else {
                    let (_, state) = self.cached(target.ino).await?;
                    let mut state = state.lock_owned().await;
                    steps.extend(self.drop_link_steps(target.ino, &mut state, now).await?);
                    guards.push(state);
                }
            }
        }
        for directory in directories.into_values() {
            let mut directory = directory;
            directory.mtime = now;
            directory.ctime = now;
            steps.push(IntentStep::PutInode(directory));
        }
        self.commit(&mut namespace, "rename", steps).await?;
        drop(guards);
        Ok(())
    }

    /// Every entry of a directory (without `.` and `..`), in name order. For callers that
    /// want the whole listing at once (fsck, the simulator); FUSE streams with
    /// [`FileSystem::read_directory_page`].
    pub async fn read_directory(
        &self,
        ino: InodeNumber,
    ) -> Result<Vec<(Vec<u8>, DirectoryEntry)>, Errno> {
        let mut entries = Vec::new();
        let mut start_after: Option<Vec<u8>> = None;
        // Bounded by the directory's size: every page resumes after the last name it covered.
        loop {
            let (page, resume_after) = self
                .read_directory_page(ino, start_after.as_deref(), DIRECTORY_PAGE_ENTRIES)
                .await?;
            entries.extend(page);
            match resume_after {
                Some(name) => start_after = Some(name),
                None => return Ok(entries),
            }
        }
    }

    /// One page of a directory's entries after the name `start_after`, in name order, and the
    /// name the next page starts after (`None` at the end). Work and memory per page are bounded
    /// by `limit`, whatever the directory's size.
    pub async fn read_directory_page(
        &self,
        ino: InodeNumber,
        start_after: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, DirectoryEntry)>, Option<Vec<u8>>), Errno> {
        self.directory(ino).await?;
        let prefix = keys::directory_prefix(ino);
        // The servers' listing must include entries whose steps are still on their way.
        if self.shared.ledger.lock().unwrap().touches_prefix(&prefix) {
            self.settle(&prefix).await?;
        }
        let start_key = start_after.map(|name| keys::directory_entry(ino, name));
        let page = self
            .shared
            .client
            .list_page(&prefix, start_key.as_deref(), limit)
            .await
            .map_err(io_error)?;
        let names: Vec<Vec<u8>> = page
            .keys
            .iter()
            .map(|key| {
                keys::name_of_entry(&prefix, key)
                    .expect("listed under the prefix")
                    .to_vec()
            })
            .collect();
        let file_system = self.clone();
        let answers = fan_out(&self.shared.env, names, FAN_OUT, move |name| {
            let file_system = file_system.clone();
            async move {
                let entry = file_system.entry(ino, &name).await;
                (name, entry)
            }
        })
        .await;
        let mut entries = Vec::with_capacity(answers.len());
        for (name, entry) in answers {
            // `None`: removed since the listing.
            if let Some(entry) = entry? {
                entries.push((name, entry));
            }
        }
        let resume_after = page.resume_after.map(|key| {
            keys::name_of_entry(&prefix, &key)
                .expect("listed under the prefix")
                .to_vec()
        });
        Ok((entries, resume_after))
    }

    pub async fn read_link(&self, ino: InodeNumber) -> Result<Vec<u8>, Errno> {
        let inode = self.inode(ino).await?;
        if inode.kind != FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        Ok(inode.symlink_target)
    }

    pub async fn set_attributes(
        &self,
        ino: InodeNumber,
        changes: AttributeChanges,
    ) -> Result<Inode, Errno> {
        let _namespace = self.shared.namespace.lock().await;
        let (_, state) = self.cached(ino).await?;
        let mut state = state.lock_owned().await;
        let mut inode = self.current_inode(ino).ok_or(Errno::ENOENT)?;
        let now = self.now();
        if let Some(permissions) = changes.permissions {
            inode.permissions = permissions & 0o7777;
        }
        if let Some(uid) = changes.uid {
            inode.uid = uid;
        }
        if let Some(gid) = changes.gid {
            inode.gid = gid;
        }
        match changes.atime {
            Some(TimeChange::Now) => inode.atime = now,
            Some(TimeChange::At(time)) => inode.atime = time,
            None => {}
        }
        match changes.mtime {
            Some(TimeChange::Now) => inode.mtime = now,
            Some(TimeChange::At(time)) => inode.mtime = time,
            None => {}
        }
        inode.ctime = changes.ctime.unwrap_or(now);
        if let Some(size) = changes.size {
            match inode.kind {
                FileKind::Regular => {}
                FileKind::Directory => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
            if size != inode.size && changes.mtime.is_none() {
                inode.mtime = now;
            }
            self.set_cached_inode(inode);
            return self.truncate_locked(ino, &mut state, size).await;
        }
        self.store_metadata(&inode, &state).await?;
        Ok(inode)
    }

    /// Store an inode's metadata without waiting for its buffered data: the stored size and
    /// extent stay those of the data already stored, so the stored inode never claims bytes that
    /// are only in memory. The buffered rest follows with the file's next flush.
    async fn store_metadata(&self, inode: &Inode, state: &super::FileState) -> Result<(), Errno> {
        let mut stored = inode.clone();
        if inode.kind == FileKind::Regular {
            stored.size = state.stored_size;
            stored.stored_extent = state.stored_extent;
        }
        self.store_inode(&stored).await?;
        self.set_cached_inode(inode.clone());
        Ok(())
    }

    pub async fn get_extended_attribute(
        &self,
        ino: InodeNumber,
        name: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let inode = self.inode(ino).await?;
        inode
            .xattrs
            .get(name)
            .map(|value| value.to_vec())
            .ok_or(Errno::ENODATA)
    }

    pub async fn list_extended_attributes(&self, ino: InodeNumber) -> Result<Vec<Vec<u8>>, Errno> {
        let inode = self.inode(ino).await?;
        Ok(inode.xattrs.keys().map(|name| name.to_vec()).collect())
    }

    /// Set an extended attribute; `flags` is 0, [`XATTR_CREATE`] or [`XATTR_REPLACE`].
    pub async fn set_extended_attribute(
        &self,
        ino: InodeNumber,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<(), Errno> {
        if name.is_empty() {
            return Err(Errno::EINVAL);
        }
        if name.len() > XATTR_NAME_MAX_BYTES {
            return Err(Errno::ERANGE);
        }
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        self.change_extended_attributes(ino, |xattrs| {
            let exists = xattrs.contains_key(name);
            if flags & XATTR_CREATE != 0 && exists {
                return Err(Errno::EEXIST);
            }
            if flags & XATTR_REPLACE != 0 && !exists {
                return Err(Errno::ENODATA);
            }
            xattrs.insert(name.to_vec(), serde_bytes::ByteBuf::from(value.to_vec()));
            let total: usize = xattrs
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .sum();
            if total > XATTR_TOTAL_BYTES {
                return Err(Errno::ENOSPC);
            }
            Ok(())
        })
        .await
    }

    pub async fn remove_extended_attribute(
        &self,
        ino: InodeNumber,
        name: &[u8],
    ) -> Result<(), Errno> {
        self.change_extended_attributes(ino, |xattrs| {
            xattrs.remove(name).map(|_| ()).ok_or(Errno::ENODATA)
        })
        .await
    }

    async fn change_extended_attributes(
        &self,
        ino: InodeNumber,
        change: impl FnOnce(&mut BTreeMap<Vec<u8>, serde_bytes::ByteBuf>) -> Result<(), Errno>,
    ) -> Result<(), Errno> {
        let _namespace = self.shared.namespace.lock().await;
        let (_, state) = self.cached(ino).await?;
        let state = state.lock_owned().await;
        let mut inode = self.current_inode(ino).ok_or(Errno::ENOENT)?;
        change(&mut inode.xattrs)?;
        inode.ctime = self.now();
        self.store_metadata(&inode, &state).await
    }

    /// Open handles on an inode.
    pub(super) fn open_count(&self, ino: InodeNumber) -> u64 {
        self.shared
            .inodes
            .lock()
            .unwrap()
            .get(&ino)
            .map_or(0, |cached| cached.open_count)
    }

    /// Store an inode as is (for callers that hold its lock and changed nothing else).
    pub(super) async fn store_inode(&self, inode: &Inode) -> Result<(), Errno> {
        self.write_directly(vec![(keys::inode(inode.ino), Some(encode(inode)))])
            .await
    }
}
