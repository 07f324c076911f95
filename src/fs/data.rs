//! File contents: reads, buffered writes, flushes, truncates and open handles.
//!
//! A file's bytes live inline in its inode while it is small and has never had chunks, and in
//! fixed-size chunk records otherwise. Writes collect in the inode's write-back buffer until a
//! flush, fsync, close or a full buffer stores them: chunks first, then the inode, so a stored
//! size never covers bytes that were not stored.
//!
//! Invariant (checked on the read path): bytes at or past a file's stored size may hold leftovers
//! of a write that crashed before its inode was stored, but never past `stored_extent`, which is
//! raised (and stored) before any chunk beyond it is written. Whenever a file grows, the bytes
//! between the old size and the new data are zeroed first.

use super::types::{
    keys, FileKind, Inode, InodeNumber, IntentStep, CHUNK_BYTES, INLINE_LIMIT_BYTES,
};
use super::{io_error, Errno, FileState, FileSystem, FAN_OUT};
use crate::env::fan_out;
use crate::env::Env;

/// Chunks a file buffers before a write stores them (8 MiB).
const DIRTY_CHUNK_LIMIT: usize = 64;

/// The largest file votefs stores (like ext4's 16 TiB).
pub const FILE_BYTES_MAX: u64 = 1 << 44;

fn chunk_size(index: u64) -> u64 {
    index * CHUNK_BYTES
}

impl<E: Env> FileSystem<E> {
    /// Open a file or directory: returns a handle for read, write, flush and release.
    pub async fn open(&self, ino: InodeNumber) -> Result<u64, Errno> {
        self.cached(ino).await?;
        let mut inodes = self.shared.inodes.lock().unwrap();
        let cached = inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        cached.open_count += 1;
        let handle = self
            .shared
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.handles.lock().unwrap().insert(handle, ino);
        Ok(handle)
    }

    /// The inode a handle is open on.
    pub fn handle_inode(&self, handle: u64) -> Option<InodeNumber> {
        self.shared.handles.lock().unwrap().get(&handle).copied()
    }

    /// Close a handle: store what was written, and remove the file if this was the last handle
    /// on an unlinked file.
    pub async fn release(&self, handle: u64) -> Result<(), Errno> {
        let ino = self
            .shared
            .handles
            .lock()
            .unwrap()
            .remove(&handle)
            .ok_or(Errno::EBADF)?;
        let flushed = self.flush(ino).await;
        let last_of_unlinked = {
            let mut inodes = self.shared.inodes.lock().unwrap();
            match inodes.get_mut(&ino) {
                Some(cached) => {
                    cached.open_count = cached.open_count.saturating_sub(1);
                    cached.open_count == 0 && cached.inode.nlink == 0
                }
                None => false,
            }
        };
        if last_of_unlinked {
            let mut namespace = self.shared.namespace.lock().await;
            let (inode, state) = self.cached(ino).await?;
            let mut state = state.lock().await;
            state.dirty_chunks.clear();
            state.inode_dirty = false;
            let end = inode
                .stored_chunk_end()
                .max(state.stored_extent.div_ceil(CHUNK_BYTES));
            drop(state);
            let steps = vec![
                IntentStep::DeleteChunks { ino, first: 0, end },
                IntentStep::DeleteInode(ino),
                IntentStep::DeleteOrphan(ino),
            ];
            self.commit(&mut namespace, "remove unlinked file", steps)
                .await?;
            return Ok(());
        }
        flushed
    }

    /// Store everything written to the file so far.
    pub async fn flush(&self, ino: InodeNumber) -> Result<(), Errno> {
        let state = {
            let inodes = self.shared.inodes.lock().unwrap();
            match inodes.get(&ino) {
                Some(cached) => cached.state.clone(),
                None => return Ok(()),
            }
        };
        let mut state = state.lock().await;
        self.flush_locked(ino, &mut state).await
    }

    /// Read up to `length` bytes at `offset` (fewer at the end of the file).
    pub async fn read(&self, ino: InodeNumber, offset: u64, length: u32) -> Result<Vec<u8>, Errno> {
        let (_, state) = self.cached(ino).await?;
        let state = state.lock().await;
        let inode = self.current_inode(ino).ok_or(Errno::ENOENT)?;
        match inode.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        if offset >= inode.size || length == 0 {
            return Ok(Vec::new());
        }
        let end = inode.size.min(offset.saturating_add(length as u64));
        let first_chunk = offset / CHUNK_BYTES;
        let last_chunk = (end - 1) / CHUNK_BYTES;
        // Fetch the chunks not in the buffer concurrently.
        let missing: Vec<u64> = (first_chunk..=last_chunk)
            .filter(|index| !state.dirty_chunks.contains_key(index))
            .collect();
        let fetched = self.load_chunks(&inode, missing).await?;
        let mut fetched = fetched.into_iter();
        let mut result = Vec::with_capacity((end - offset) as usize);
        for index in first_chunk..=last_chunk {
            let chunk_start = chunk_size(index);
            let from = (offset.max(chunk_start) - chunk_start) as usize;
            let to = (end.min(chunk_start + CHUNK_BYTES) - chunk_start) as usize;
            let owned;
            let data: &[u8] = match state.dirty_chunks.get(&index) {
                Some(buffer) => buffer,
                None => {
                    owned = fetched.next().expect("one fetched chunk per missing index");
                    &owned
                }
            };
            assert!(
                data.len() as u64 <= CHUNK_BYTES,
                "chunk longer than a chunk"
            );
            let available = data.len().min(to);
            if from < available {
                result.extend_from_slice(&data[from..available]);
            }
            // Past the stored bytes of a chunk, the file reads as zeros (a hole).
            result.resize(result.len() + (to - available.max(from)), 0);
        }
        assert_eq!(result.len() as u64, end - offset);
        Ok(result)
    }

    /// The stored contents of chunks (shorter than a chunk, or empty, where never written).
    async fn load_chunks(&self, inode: &Inode, indexes: Vec<u64>) -> Result<Vec<Vec<u8>>, Errno> {
        let ino = inode.ino;
        if let Some(inline) = &inode.inline_data {
            return Ok(indexes
                .iter()
                .map(|index| {
                    if *index == 0 {
                        inline.to_vec()
                    } else {
                        Vec::new()
                    }
                })
                .collect());
        }
        let stored_end = inode.stored_chunk_end();
        let cache = &self.shared.clean_chunks;
        let mut results: Vec<Option<Vec<u8>>> = Vec::with_capacity(indexes.len());
        let mut to_fetch = Vec::new();
        for (position, index) in indexes.iter().enumerate() {
            if *index >= stored_end {
                results.push(Some(Vec::new()));
            } else if let Some(pending) = self.pending_value(&keys::chunk(ino, *index)) {
                results.push(Some(pending.unwrap_or_default()));
            } else if let Some(data) = cache.lock().unwrap().get(ino, *index) {
                results.push(Some(data));
            } else {
                results.push(None);
                to_fetch.push((position, *index));
            }
        }
        if !to_fetch.is_empty() {
            let client = self.shared.client.clone();
            let answers = fan_out(
                &self.shared.env,
                to_fetch,
                FAN_OUT,
                move |(position, index)| {
                    let client = client.clone();
                    async move { (position, index, client.get(&keys::chunk(ino, index)).await) }
                },
            )
            .await;
            for (position, index, answer) in answers {
                let data = answer.map_err(io_error)?.unwrap_or_default();
                if data.len() as u64 > CHUNK_BYTES {
                    tracing::error!("chunk {index} of inode {ino} holds {} bytes", data.len());
                    return Err(Errno::EIO);
                }
                cache.lock().unwrap().insert(ino, index, data.clone());
                results[position] = Some(data);
            }
        }
        Ok(results
            .into_iter()
            .map(|result| result.expect("every chunk loaded"))
            .collect())
    }

    /// The buffer of chunk `index`, loading it if it is not dirty yet.
    async fn buffer<'state>(
        &self,
        inode: &Inode,
        state: &'state mut FileState,
        index: u64,
    ) -> Result<&'state mut Vec<u8>, Errno> {
        if let std::collections::btree_map::Entry::Vacant(vacant) = state.dirty_chunks.entry(index)
        {
            let data = self
                .load_chunks(inode, vec![index])
                .await?
                .pop()
                .expect("one chunk");
            vacant.insert(data);
        }
        Ok(state.dirty_chunks.get_mut(&index).expect("inserted"))
    }

    /// Make the bytes in `from..to` (all past the current size) read as zeros.
    async fn zero_gap(
        &self,
        inode: &Inode,
        state: &mut FileState,
        from: u64,
        to: u64,
    ) -> Result<(), Errno> {
        if from >= to {
            return Ok(());
        }
        let stored_end = inode
            .stored_chunk_end()
            .max(state.stored_extent.div_ceil(CHUNK_BYTES));
        let boundary = from / CHUNK_BYTES;
        if !from.is_multiple_of(CHUNK_BYTES) {
            let within = (from % CHUNK_BYTES) as usize;
            let buffer = self.buffer(inode, state, boundary).await?;
            if buffer.len() > within {
                buffer.truncate(within);
            }
        }
        let first_whole = from.div_ceil(CHUNK_BYTES);
        let last = (to - 1) / CHUNK_BYTES;
        for index in first_whole..=last {
            if let Some(buffer) = state.dirty_chunks.get_mut(&index) {
                buffer.clear();
            } else if index < stored_end {
                state.dirty_chunks.insert(index, Vec::new());
            }
        }
        let mut cache = self.shared.clean_chunks.lock().unwrap();
        for index in boundary..=last.min(stored_end) {
            cache.forget(inode.ino, index);
        }
        Ok(())
    }

    /// Write `data` at `offset`; returns the bytes written (all of them).
    pub async fn write(&self, ino: InodeNumber, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let (_, state) = self.cached(ino).await?;
        let mut state = state.lock().await;
        let mut inode = self.current_inode(ino).ok_or(Errno::ENOENT)?;
        match inode.kind {
            FileKind::Regular => {}
            FileKind::Directory => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        }
        if data.is_empty() {
            return Ok(0);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= FILE_BYTES_MAX)
            .ok_or(Errno::EFBIG)?;
        if offset > inode.size {
            self.zero_gap(&inode, &mut state, inode.size, offset)
                .await?;
        }
        let first_chunk = offset / CHUNK_BYTES;
        let last_chunk = (end - 1) / CHUNK_BYTES;
        for index in first_chunk..=last_chunk {
            let chunk_start = chunk_size(index);
            let from = (offset.max(chunk_start) - chunk_start) as usize;
            let to = (end.min(chunk_start + CHUNK_BYTES) - chunk_start) as usize;
            let buffer = if from == 0 && to as u64 == CHUNK_BYTES {
                state.dirty_chunks.entry(index).or_default()
            } else {
                self.buffer(&inode, &mut state, index).await?
            };
            if buffer.len() < to {
                buffer.resize(to, 0);
            }
            let source_from = (chunk_start + from as u64 - offset) as usize;
            buffer[from..to].copy_from_slice(&data[source_from..source_from + (to - from)]);
            assert!(buffer.len() as u64 <= CHUNK_BYTES);
            self.shared.clean_chunks.lock().unwrap().forget(ino, index);
        }
        let now = self.now();
        inode.size = inode.size.max(end);
        inode.mtime = now;
        inode.ctime = now;
        self.set_cached_inode(inode);
        state.inode_dirty = true;
        if state.dirty_chunks.len() >= DIRTY_CHUNK_LIMIT {
            self.flush_locked(ino, &mut state).await?;
        }
        Ok(data.len() as u32)
    }

    /// Store the file's buffered chunks, then its inode.
    pub(super) async fn flush_locked(
        &self,
        ino: InodeNumber,
        state: &mut FileState,
    ) -> Result<(), Errno> {
        if state.dirty_chunks.is_empty() && !state.inode_dirty {
            return Ok(());
        }
        let Some(mut inode) = self.current_inode(ino) else {
            return Ok(());
        };
        if inode.kind != FileKind::Regular || inode.nlink == 0 && self.open_count(ino) == 0 {
            state.dirty_chunks.clear();
            if state.inode_dirty && inode.kind != FileKind::Regular {
                self.store_inode(&inode).await?;
            }
            state.inode_dirty = false;
            return Ok(());
        }
        if inode.size <= INLINE_LIMIT_BYTES {
            // Small: the bytes go into the inode, and chunks are ignored from then on (leftovers
            // in them lie past the size or are rewritten when the file outgrows the inode).
            let mut content = match state.dirty_chunks.get(&0) {
                Some(buffer) => buffer.clone(),
                None => self
                    .load_chunks(&inode, vec![0])
                    .await?
                    .pop()
                    .expect("one chunk"),
            };
            content.resize(inode.size as usize, 0);
            inode.inline_data = Some(serde_bytes::ByteBuf::from(content));
            self.store_inode(&inode).await?;
            state.dirty_chunks.clear();
            state.inode_dirty = false;
            state.stored_size = inode.size;
            self.set_cached_inode(inode);
            return Ok(());
        }
        if let Some(inline) = &inode.inline_data {
            state
                .dirty_chunks
                .entry(0)
                .or_insert_with(|| inline.to_vec());
        }
        let size = inode.size;
        let live_chunks = size.div_ceil(CHUNK_BYTES);
        let stored_end = inode
            .stored_chunk_end()
            .max(state.stored_extent.div_ceil(CHUNK_BYTES));
        // Chunks inside the size are stored before the inode (so the size never covers bytes that
        // were not stored); chunks past it only hold leftovers, deleted after the inode shrank.
        let mut inside = Vec::new();
        let mut outside = Vec::new();
        for (index, mut buffer) in std::mem::take(&mut state.dirty_chunks) {
            if index < live_chunks {
                let keep = (size - chunk_size(index)).min(CHUNK_BYTES) as usize;
                buffer.truncate(keep);
                inside.push((index, buffer));
            } else if index < stored_end {
                outside.push((index, Vec::new()));
            }
        }
        if let Some((last, _)) = inside.last() {
            let needed_extent = chunk_size(last + 1);
            if needed_extent > inode.stored_extent.max(state.stored_extent) {
                // Raise the extent first (keeping the stored size and inline bytes), growing it
                // geometrically so a file written sequentially raises it only a few times.
                let new_extent = chunk_size((last + 1).next_power_of_two());
                let mut raised = inode.clone();
                raised.size = state.stored_size;
                raised.stored_extent = new_extent;
                if let Err(error) = self.store_inode(&raised).await {
                    state.dirty_chunks.extend(inside);
                    state.dirty_chunks.extend(outside);
                    return Err(error);
                }
                state.stored_extent = new_extent;
                inode.stored_extent = new_extent;
                self.set_cached_inode(inode.clone());
            }
        }
        if let Err(error) = self.store_chunks(ino, &inside).await {
            // Keep the data buffered so a later flush can try again.
            state.dirty_chunks.extend(inside);
            state.dirty_chunks.extend(outside);
            return Err(error);
        }
        inode.inline_data = None;
        // Every chunk about to be covered by the stored size is within the stored extent (chunks
        // past the extent read as holes).
        if let Some((last, _)) = inside.last() {
            assert!(inode.stored_extent >= chunk_size(last + 1));
        }
        if let Err(error) = self.store_inode(&inode).await {
            state.dirty_chunks.extend(inside);
            state.dirty_chunks.extend(outside);
            return Err(error);
        }
        state.inode_dirty = false;
        state.stored_size = inode.size;
        state.stored_extent = inode.stored_extent;
        self.set_cached_inode(inode);
        if let Err(error) = self.store_chunks(ino, &outside).await {
            state.dirty_chunks.extend(outside);
            return Err(error);
        }
        Ok(())
    }

    /// Store chunk buffers concurrently (an empty buffer deletes its chunk).
    async fn store_chunks(&self, ino: InodeNumber, chunks: &[(u64, Vec<u8>)]) -> Result<(), Errno> {
        let writes = chunks
            .iter()
            .map(|(index, buffer)| {
                let value = (!buffer.is_empty()).then(|| buffer.clone());
                (keys::chunk(ino, *index), value)
            })
            .collect();
        self.write_directly(writes).await
    }

    /// Change a file's size (the caller holds the namespace lock and the file's lock). Like a
    /// write, the change is buffered while the file is open and stored by its flush; a file
    /// nobody has open is stored at once. Returns the inode.
    pub(super) async fn truncate_locked(
        &self,
        ino: InodeNumber,
        state: &mut FileState,
        new_size: u64,
    ) -> Result<Inode, Errno> {
        if new_size > FILE_BYTES_MAX {
            return Err(Errno::EFBIG);
        }
        let mut inode = self.current_inode(ino).ok_or(Errno::ENOENT)?;
        let old_size = inode.size;
        self.shared.clean_chunks.lock().unwrap().forget_inode(ino);
        if new_size >= old_size {
            self.zero_gap(&inode, state, old_size, new_size).await?;
        } else {
            let keep_chunks = new_size.div_ceil(CHUNK_BYTES);
            let stored_end = inode
                .stored_chunk_end()
                .max(state.stored_extent.div_ceil(CHUNK_BYTES));
            state.dirty_chunks.retain(|index, _| *index < keep_chunks);
            let leftovers = stored_end.saturating_sub(keep_chunks);
            if leftovers as usize > DIRTY_CHUNK_LIMIT {
                // Too many to buffer: store the shrunk file, then delete the chunks past its end
                // (until then they are leftovers past the size, which nobody reads).
                inode.size = new_size;
                self.set_cached_inode(inode);
                state.inode_dirty = true;
                self.flush_locked(ino, state).await?;
                self.delete_chunk_range(ino, keep_chunks, stored_end)
                    .await?;
                return self.current_inode(ino).ok_or(Errno::ENOENT);
            }
            for index in keep_chunks..stored_end {
                state.dirty_chunks.insert(index, Vec::new());
            }
        }
        inode.size = new_size;
        self.set_cached_inode(inode);
        state.inode_dirty = true;
        if self.open_count(ino) == 0 || state.dirty_chunks.len() >= DIRTY_CHUNK_LIMIT {
            self.flush_locked(ino, state).await?;
        }
        self.current_inode(ino).ok_or(Errno::ENOENT)
    }

    /// Delete chunks `first..end` of a file, a bounded batch at a time.
    async fn delete_chunk_range(
        &self,
        ino: InodeNumber,
        first: u64,
        end: u64,
    ) -> Result<(), Errno> {
        let mut start = first;
        while start < end {
            let batch_end = end.min(start + 4096);
            let batch: Vec<(u64, Vec<u8>)> = (start..batch_end)
                .map(|index| (index, Vec::new()))
                .collect();
            self.store_chunks(ino, &batch).await?;
            start = batch_end;
        }
        Ok(())
    }

    /// Reserve space: votefs does not preallocate, so only growing the size (mode 0) and
    /// `FALLOC_FL_KEEP_SIZE` (nothing to do) are supported.
    pub async fn allocate(
        &self,
        ino: InodeNumber,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if length == 0 {
            return Err(Errno::EINVAL);
        }
        match mode {
            0 => {
                let inode = self.inode(ino).await?;
                if inode.kind != FileKind::Regular {
                    return Err(Errno::ENODEV);
                }
                if end > inode.size {
                    self.set_attributes(
                        ino,
                        super::AttributeChanges {
                            size: Some(end),
                            ..Default::default()
                        },
                    )
                    .await?;
                }
                Ok(())
            }
            libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }
}
