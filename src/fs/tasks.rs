//! The small caches of clean chunks and directory entries.

use std::collections::{BTreeMap, VecDeque};

use super::InodeNumber;

/// Recently read chunks, evicted oldest first. Only clean data: a write or truncate forgets the
/// inode's chunks.
pub struct ChunkCache {
    capacity: usize,
    chunks: BTreeMap<(InodeNumber, u64), Vec<u8>>,
    order: VecDeque<(InodeNumber, u64)>,
}

impl ChunkCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            chunks: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, ino: InodeNumber, index: u64) -> Option<Vec<u8>> {
        self.chunks.get(&(ino, index)).cloned()
    }

    pub fn insert(&mut self, ino: InodeNumber, index: u64, data: Vec<u8>) {
        if self.chunks.insert((ino, index), data).is_none() {
            self.order.push_back((ino, index));
        }
        while self.chunks.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.chunks.remove(&oldest);
                }
                None => break,
            }
        }
        // Entries forgotten out of order leave stale positions behind; keep the queue bounded.
        if self.order.len() > 4 * self.capacity.max(1) {
            let chunks = &self.chunks;
            self.order.retain(|position| chunks.contains_key(position));
        }
    }

    pub fn forget(&mut self, ino: InodeNumber, index: u64) {
        self.chunks.remove(&(ino, index));
    }

    pub fn forget_inode(&mut self, ino: InodeNumber) {
        let keys: Vec<(InodeNumber, u64)> = self
            .chunks
            .range((ino, 0)..=(ino, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            self.chunks.remove(&key);
        }
    }
}

/// Directory entries this mount has seen or made, present or known absent. The mount is the
/// volume's only writer, so an entry it has seen can change only through it; evicted oldest
/// first.
pub struct EntryCache {
    capacity: usize,
    entries: BTreeMap<(InodeNumber, Vec<u8>), Option<super::DirectoryEntry>>,
    order: VecDeque<(InodeNumber, Vec<u8>)>,
    /// Directories whose every entry is in the cache (made by this mount and never trimmed): a
    /// name not cached there does not exist.
    complete: std::collections::BTreeSet<InodeNumber>,
}

impl EntryCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: BTreeMap::new(),
            order: VecDeque::new(),
            complete: std::collections::BTreeSet::new(),
        }
    }

    /// Record that every entry of `directory` is cached (it was just made, empty).
    pub fn mark_complete(&mut self, directory: InodeNumber) {
        self.complete.insert(directory);
    }

    /// `Some(entry)` when known (`entry` is `None` for a name known to be absent).
    pub fn get(
        &self,
        directory: InodeNumber,
        name: &[u8],
    ) -> Option<Option<super::DirectoryEntry>> {
        match self.entries.get(&(directory, name.to_vec())) {
            Some(entry) => Some(*entry),
            None if self.complete.contains(&directory) => Some(None),
            None => None,
        }
    }

    pub fn insert(
        &mut self,
        directory: InodeNumber,
        name: &[u8],
        entry: Option<super::DirectoryEntry>,
    ) {
        let key = (directory, name.to_vec());
        if self.entries.insert(key.clone(), entry).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    // The directory no longer has every entry cached.
                    self.complete.remove(&oldest.0);
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
    }
}
