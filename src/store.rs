//! The record store of one server (DESIGN §4): an append-only log of checksummed entries on the
//! [`Disk`] seam, an in-memory index rebuilt at start, group commit, torn-tail truncation,
//! detection of damage in the middle of the log, and compaction of superseded entries.
//!
//! Log entry layout (little endian):
//! `magic u32 | body_bytes u32 | body_crc32c u32 | header_crc32c u32 | body`, where the body is a
//! postcard [`LogEntry`]. The header checksum covers the first twelve bytes, so a damaged length
//! is never trusted.
//!
//! Every start opens a fresh segment for appends, so nothing is ever appended after bytes that
//! failed a check.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex as StdMutex;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::digest::{bucket_of, BucketDigests, EntryState};
use crate::disk::{read_whole, Disk};
use crate::proto::{
    BucketDigest, DeepScrubProgress, DumpEntry, InjectedFault, ListEntry, MemberId, VolumeId,
};
use crate::record::{ClusterKey, Record, Tag, Version, MAX_KEY_BYTES, MAX_VALUE_BYTES};

const ENTRY_MAGIC: u32 = 0x3153_4656; // "VFS1"
const HEADER_BYTES: usize = 16;
const MAX_BODY_BYTES: usize = MAX_VALUE_BYTES + MAX_KEY_BYTES + 1024;
const META_FILE: &str = "meta";
const META_MAGIC: &[u8; 8] = b"vfsmeta1";
const SEGMENT_PREFIX: &str = "segment-";
/// Reads of a moved entry retry this many times before giving up (compaction may move an entry
/// between the index lookup and the read).
const READ_ATTEMPTS: usize = 4;

#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Start a new segment once the active one reaches this many bytes.
    pub segment_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What a server keeps about itself besides records, replaced atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub volume: Option<VolumeId>,
    pub member: Option<MemberId>,
    /// Set when this server may have lost acknowledged data; cleared by a complete scrub pass.
    pub recovering: bool,
    pub promised_epoch: u64,
    pub promised_writer: u64,
    /// Incremented every time this server becomes recovering.
    pub recovery_generation: u64,
    /// Formatted as part of a new volume whose format is not committed yet.
    pub formatting: bool,
    /// The highest format ballot taken (see `Request::Format`).
    pub format_ballot: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum LogEntry {
    Record(Record),
    /// This server lost its copy of `key` (whatever version it was).
    Lost {
        key: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Location {
    segment: u64,
    offset: u64,
    length: u32,
}

#[derive(Clone, Debug)]
enum Slot {
    Stored {
        version: Version,
        tombstone: bool,
        tag: Tag,
        value_bytes: u32,
        location: Location,
        /// The entry failed its checksum when last read.
        damaged: bool,
    },
    Lost {
        location: Location,
    },
}

impl Slot {
    fn location(&self) -> Location {
        match self {
            Slot::Stored { location, .. } | Slot::Lost { location } => *location,
        }
    }

    fn digest_state(&self) -> EntryState<'_> {
        match self {
            Slot::Stored {
                version,
                tombstone,
                tag,
                damaged: false,
                ..
            } => EntryState::Healthy {
                version: *version,
                tombstone: *tombstone,
                tag,
            },
            Slot::Stored { damaged: true, .. } | Slot::Lost { .. } => EntryState::Unusable,
        }
    }

    /// How this slot appears in a scrubber's listing: an unusable copy with a zero version and
    /// tag, so that it differs from every good copy.
    fn list_entry(&self, key: &[u8]) -> ListEntry {
        match self {
            Slot::Stored {
                version,
                tombstone,
                tag,
                damaged: false,
                ..
            } => ListEntry {
                key: key.to_vec(),
                version: *version,
                tombstone: *tombstone,
                tag: *tag,
            },
            Slot::Stored { damaged: true, .. } | Slot::Lost { .. } => ListEntry {
                key: key.to_vec(),
                version: Version::default(),
                tombstone: false,
                tag: [0; crate::record::TAG_BYTES],
            },
        }
    }
}

/// A tombstone every copy held, dropped from the index but still in the log. It stays in the log
/// (counted live) until no older segment is left, because an older segment may still hold a
/// superseded version of its key that would come back to life at the next start without it.
#[derive(Clone, Debug)]
struct DroppedTombstone {
    record: Record,
    location: Location,
}

#[derive(Clone, Copy, Debug, Default)]
struct SegmentInfo {
    bytes: u64,
    live_bytes: u64,
}

struct State {
    index: BTreeMap<Vec<u8>, Slot>,
    segments: BTreeMap<u64, SegmentInfo>,
    active: u64,
    meta: Meta,
    /// Kept equal to the digests of `index` on every change.
    digests: BucketDigests,
    dropped_tombstones: Vec<DroppedTombstone>,
}

impl State {
    fn add_live(&mut self, location: Location) {
        let info = self.segments.entry(location.segment).or_default();
        info.live_bytes += u64::from(location.length);
    }

    fn remove_live(&mut self, location: Location) {
        let info = self
            .segments
            .get_mut(&location.segment)
            .expect("a live entry's segment is known");
        assert!(info.live_bytes >= u64::from(location.length));
        info.live_bytes -= u64::from(location.length);
    }

    /// Point `key` at `slot`, keeping per-segment live byte counts and the digests exact.
    fn replace(&mut self, key: Vec<u8>, slot: Slot) {
        self.add_live(slot.location());
        self.digests.add(&key, slot.digest_state());
        if let Some(previous) = self.index.get(&key) {
            self.digests.remove(&key, previous.digest_state());
        }
        if let Some(previous) = self.index.insert(key, slot) {
            self.remove_live(previous.location());
        }
    }

    /// Mark the copy of `key` at `at` damaged (it failed a check). Returns whether it was marked
    /// now (false if the entry moved or already was).
    fn set_damaged(&mut self, key: &[u8], at: Location) -> bool {
        let Some(slot) = self.index.get(key) else {
            return false;
        };
        if slot.location() != at || !matches!(slot, Slot::Stored { damaged: false, .. }) {
            return false;
        }
        self.digests.remove(key, slot.digest_state());
        if let Some(Slot::Stored { damaged, .. }) = self.index.get_mut(key) {
            *damaged = true;
        }
        let slot = self.index.get(key).expect("just updated");
        self.digests.add(key, slot.digest_state());
        true
    }
}

/// Outcome of a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    HaveNewer(Version),
    Conflict,
}

/// Outcome of a get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GetOutcome {
    Found(Record),
    NotFound,
    /// The stored copy failed its checksum or could not be read.
    Corrupt,
    /// This copy was lost.
    Lost,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store can no longer guarantee durability; the process must crash and recover.
    #[error("fatal disk error, the server must restart: {0}")]
    Fatal(String),
    /// The operation failed but nothing is lost (for example, no space for a new entry).
    #[error("disk error: {0}")]
    Failed(String),
    #[error("{0}")]
    Invalid(String),
}

/// What recovery found when the store was opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub entries: u64,
    pub segments: u64,
    pub torn_tail_bytes: u64,
    /// Damage that cannot be a torn write: the store may have lost acknowledged entries.
    pub damaged_regions: u64,
}

#[derive(Default)]
struct Counters {
    corrupt_entries_seen: AtomicU64,
    torn_tail_bytes: AtomicU64,
    compacted_entries: AtomicU64,
    deep_scrubbed_entries: AtomicU64,
    deep_scrub_damage_found: AtomicU64,
    tombstones_dropped: AtomicU64,
}

/// Counts for server statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub records: u64,
    pub tombstones: u64,
    pub live_bytes: u64,
    pub log_bytes: u64,
    pub corrupt_entries_seen: u64,
    pub torn_tail_bytes_truncated: u64,
    pub compacted_entries: u64,
    pub deep_scrubbed_entries: u64,
    pub deep_scrub_damage_found: u64,
    pub tombstones_dropped: u64,
}

pub struct Store<D: Disk> {
    disk: D,
    options: StoreOptions,
    state: Mutex<State>,
    /// Held by the one task running a group commit.
    sync_lock: Mutex<()>,
    /// Everything before this (segment, byte) position is durable.
    synced: StdMutex<(u64, u64)>,
    /// Serialises replacements of the meta file.
    meta_lock: Mutex<()>,
    poisoned: AtomicBool,
    counters: Counters,
}

fn segment_name(segment: u64) -> String {
    format!("{SEGMENT_PREFIX}{segment:020}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix(SEGMENT_PREFIX)?.parse().ok()
}

fn encode_entry(entry: &LogEntry) -> Vec<u8> {
    let body = postcard::to_allocvec(entry).expect("log entries always serialise");
    assert!(
        body.len() <= MAX_BODY_BYTES,
        "entry larger than the log allows"
    );
    let mut bytes = Vec::with_capacity(HEADER_BYTES + body.len());
    bytes.extend_from_slice(&ENTRY_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let header_crc = crc32c::crc32c(&bytes[..12]);
    bytes.extend_from_slice(&header_crc.to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

/// How an entry at some offset of a segment parses.
enum Parsed {
    Entry(LogEntry, usize),
    /// Fewer bytes remain than the header claims: what a torn final write leaves.
    Incomplete,
    /// The header is intact but the body fails its checksum; the length is trustworthy.
    BadBody(usize),
    /// The header itself is damaged: nothing after it can be located.
    BadHeader,
}

fn parse_entry(bytes: &[u8]) -> Parsed {
    if bytes.len() < HEADER_BYTES {
        return Parsed::Incomplete;
    }
    let word = |index: usize| {
        u32::from_le_bytes(bytes[index * 4..index * 4 + 4].try_into().expect("4 bytes"))
    };
    if word(0) != ENTRY_MAGIC || crc32c::crc32c(&bytes[..12]) != word(3) {
        return Parsed::BadHeader;
    }
    let body_bytes = word(1) as usize;
    if body_bytes > MAX_BODY_BYTES {
        return Parsed::BadHeader;
    }
    let total = HEADER_BYTES + body_bytes;
    if bytes.len() < total {
        return Parsed::Incomplete;
    }
    let body = &bytes[HEADER_BYTES..total];
    if crc32c::crc32c(body) != word(2) {
        return Parsed::BadBody(total);
    }
    match postcard::from_bytes::<LogEntry>(body) {
        Ok(entry) => Parsed::Entry(entry, total),
        Err(_) => Parsed::BadBody(total),
    }
}

fn encode_meta(meta: &Meta) -> Vec<u8> {
    let body = postcard::to_allocvec(meta).expect("meta always serialises");
    let mut bytes = META_MAGIC.to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

fn decode_meta(bytes: &[u8]) -> Option<Meta> {
    if bytes.len() < META_MAGIC.len() + 4 || &bytes[..META_MAGIC.len()] != META_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let body = &bytes[12..];
    if crc32c::crc32c(body) != crc {
        return None;
    }
    postcard::from_bytes(body).ok()
}

fn key_of(entry: &LogEntry) -> &[u8] {
    match entry {
        LogEntry::Record(record) => &record.key,
        LogEntry::Lost { key } => key,
    }
}

fn slot_for(entry: &LogEntry, location: Location) -> Slot {
    match entry {
        LogEntry::Record(record) => Slot::Stored {
            version: record.version,
            tombstone: record.tombstone,
            tag: record.tag,
            value_bytes: record.value.len() as u32,
            location,
            damaged: false,
        },
        LogEntry::Lost { .. } => Slot::Lost { location },
    }
}

fn io_fatal(what: &str, error: std::io::Error) -> StoreError {
    StoreError::Fatal(format!("{what}: {error}"))
}

impl<D: Disk> Store<D> {
    /// Open the store on `disk`, rebuilding the index from the log.
    pub async fn open(
        disk: D,
        options: StoreOptions,
    ) -> Result<(Self, RecoveryReport), StoreError> {
        let mut report = RecoveryReport::default();
        let names = disk
            .list()
            .await
            .map_err(|e| io_fatal("listing files", e))?;
        let mut segment_numbers: Vec<u64> = names
            .iter()
            .filter_map(|name| parse_segment_name(name))
            .collect();
        segment_numbers.sort_unstable();
        let mut meta = match read_whole(&disk, META_FILE)
            .await
            .map_err(|e| io_fatal("reading meta", e))?
        {
            None => Meta::default(),
            Some(bytes) => match decode_meta(&bytes) {
                Some(meta) => meta,
                None => {
                    // Without our identity we cannot vouch for anything: start blank, so that a
                    // client makes us join as recovering.
                    report.damaged_regions += 1;
                    Meta::default()
                }
            },
        };
        let mut state = State {
            index: BTreeMap::new(),
            segments: BTreeMap::new(),
            active: segment_numbers.last().map_or(1, |last| last + 1),
            meta: Meta::default(),
            digests: BucketDigests::default(),
            dropped_tombstones: Vec::new(),
        };
        let last_segment = segment_numbers.last().copied();
        for segment in segment_numbers {
            let name = segment_name(segment);
            let bytes = read_whole(&disk, &name)
                .await
                .map_err(|e| io_fatal("reading a segment", e))?
                .unwrap_or_default();
            report.segments += 1;
            let mut offset = 0usize;
            let mut torn_at = None;
            while offset < bytes.len() {
                match parse_entry(&bytes[offset..]) {
                    Parsed::Entry(entry, length) => {
                        let location = Location {
                            segment,
                            offset: offset as u64,
                            length: length as u32,
                        };
                        Self::recover_entry(&mut state, entry, location);
                        report.entries += 1;
                        offset += length;
                    }
                    Parsed::Incomplete if Some(segment) == last_segment => {
                        torn_at = Some(offset);
                        break;
                    }
                    Parsed::BadBody(length) => {
                        report.damaged_regions += 1;
                        offset += length;
                    }
                    Parsed::Incomplete | Parsed::BadHeader => {
                        report.damaged_regions += 1;
                        break;
                    }
                }
            }
            state.segments.entry(segment).or_default().bytes = bytes.len() as u64;
            if let Some(torn_offset) = torn_at {
                report.torn_tail_bytes = (bytes.len() - torn_offset) as u64;
                disk.truncate(&name, torn_offset as u64)
                    .await
                    .map_err(|e| io_fatal("truncating a torn tail", e))?;
                state.segments.entry(segment).or_default().bytes = torn_offset as u64;
            }
        }
        let store_counters = Counters::default();
        store_counters
            .torn_tail_bytes
            .store(report.torn_tail_bytes, Ordering::Relaxed);
        if report.damaged_regions > 0 && meta.volume.is_some() {
            meta.recovering = true;
            meta.recovery_generation += 1;
            disk.write_atomic(META_FILE, &encode_meta(&meta))
                .await
                .map_err(|e| io_fatal("writing meta", e))?;
        }
        state.meta = meta;
        let active = state.active;
        state.segments.insert(active, SegmentInfo::default());
        let store = Self {
            disk,
            options,
            state: Mutex::new(state),
            sync_lock: Mutex::new(()),
            synced: StdMutex::new((active, 0)),
            meta_lock: Mutex::new(()),
            poisoned: AtomicBool::new(false),
            counters: store_counters,
        };
        Ok((store, report))
    }

    fn recover_entry(state: &mut State, entry: LogEntry, location: Location) {
        let key = key_of(&entry).to_vec();
        let keep_existing = match (&entry, state.index.get(&key)) {
            (LogEntry::Record(record), Some(Slot::Stored { version, .. })) => {
                *version > record.version
            }
            _ => false,
        };
        let slot = slot_for(&entry, location);
        if keep_existing {
            // Dead on arrival: account its bytes to no one.
            return;
        }
        state.replace(key, slot);
    }

    fn check_poisoned(&self) -> Result<(), StoreError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Fatal("an earlier disk sync failed".into()));
        }
        Ok(())
    }

    fn poison(&self, error: StoreError) -> StoreError {
        self.poisoned.store(true, Ordering::Release);
        error
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    fn is_durable(&self, segment: u64, end: u64) -> bool {
        let synced = *self.synced.lock().expect("synced lock poisoned");
        (segment, end) <= synced
    }

    fn advance_synced(&self, position: (u64, u64)) {
        let mut synced = self.synced.lock().expect("synced lock poisoned");
        if position > *synced {
            *synced = position;
        }
    }

    /// Wait until everything up to `(segment, end)` is durable. One caller at a time runs the
    /// fsync and it covers every append made before it started (group commit).
    async fn wait_durable(&self, segment: u64, end: u64) -> Result<(), StoreError> {
        // Bounded: each round either returns or syncs past every append made before the round,
        // which includes ours.
        for _round in 0..3 {
            self.check_poisoned()?;
            if self.is_durable(segment, end) {
                return Ok(());
            }
            let _sync_guard = self.sync_lock.lock().await;
            if self.is_durable(segment, end) {
                return Ok(());
            }
            let (active, written) = {
                let state = self.state.lock().await;
                (
                    state.active,
                    state.segments.get(&state.active).map_or(0, |s| s.bytes),
                )
            };
            if written > 0 {
                self.disk
                    .sync(&segment_name(active))
                    .await
                    .map_err(|e| self.poison(io_fatal("fsync", e)))?;
            }
            self.advance_synced((active, written));
        }
        assert!(
            self.is_durable(segment, end),
            "group commit did not cover an append made before it"
        );
        Ok(())
    }

    /// Append an encoded entry to the active segment; the caller holds the state lock.
    async fn append_locked(&self, state: &mut State, bytes: &[u8]) -> Result<Location, StoreError> {
        self.check_poisoned()?;
        let active = state.active;
        let name = segment_name(active);
        let offset = state.segments.get(&active).map_or(0, |s| s.bytes);
        if let Err(error) = self.disk.append(&name, bytes).await {
            // Nothing may follow a partial entry: cut it off, or crash if even that fails.
            if let Err(truncate_error) = self.disk.truncate(&name, offset).await {
                return Err(self.poison(io_fatal("undoing a failed append", truncate_error)));
            }
            return Err(StoreError::Failed(format!("append failed: {error}")));
        }
        state.segments.entry(active).or_default().bytes = offset + bytes.len() as u64;
        let location = Location {
            segment: active,
            offset,
            length: bytes.len() as u32,
        };
        if offset + bytes.len() as u64 >= self.options.segment_bytes {
            // Seal the full segment: sync it under the lock so that everything in a sealed segment
            // is durable, then move on.
            self.disk
                .sync(&name)
                .await
                .map_err(|e| self.poison(io_fatal("fsync", e)))?;
            state.active = active + 1;
            state.segments.insert(state.active, SegmentInfo::default());
            self.advance_synced((state.active, 0));
        }
        Ok(location)
    }

    /// Store `record` if it is newer than what this store holds, durably, before returning. With
    /// `repair`, an equal version with an equal tag is written again (the caller found this
    /// store's copy bad end to end).
    pub async fn put(&self, record: Record, repair: bool) -> Result<PutOutcome, StoreError> {
        if record.key.is_empty() || record.key.len() > MAX_KEY_BYTES {
            return Err(StoreError::Invalid("key length out of range".into()));
        }
        if record.value.len() > MAX_VALUE_BYTES {
            return Err(StoreError::Invalid("value too large".into()));
        }
        let mut state = self.state.lock().await;
        let location = match state.index.get(&record.key) {
            Some(Slot::Stored {
                version,
                tag,
                damaged,
                location,
                ..
            }) if !*damaged => {
                if *version > record.version {
                    return Ok(PutOutcome::HaveNewer(*version));
                }
                if *version == record.version {
                    if repair {
                        // The writer found this copy bad end to end (the incoming record's tag,
                        // checked by the server, is what counts): replace it.
                        None
                    } else if *tag != record.tag {
                        return Ok(PutOutcome::Conflict);
                    } else {
                        // Idempotent: the same record is already here (perhaps not yet durable).
                        Some(*location)
                    }
                } else {
                    None
                }
            }
            // Missing, lost or damaged copies accept any version.
            _ => None,
        };
        let location = match location {
            Some(existing) => existing,
            None => {
                let key = record.key.clone();
                let entry = LogEntry::Record(record);
                let bytes = encode_entry(&entry);
                let location = self.append_locked(&mut state, &bytes).await?;
                state.replace(key, slot_for(&entry, location));
                location
            }
        };
        drop(state);
        self.wait_durable(
            location.segment,
            location.offset + u64::from(location.length),
        )
        .await?;
        Ok(PutOutcome::Stored)
    }

    /// Read one entry at `location`, checking its checksum and that it is the entry the index
    /// expects (a misdirected write would put another key's bytes there).
    async fn read_entry(&self, location: Location) -> Result<Option<LogEntry>, std::io::Error> {
        let bytes = self
            .disk
            .read_at(
                &segment_name(location.segment),
                location.offset,
                location.length as usize,
            )
            .await?;
        match parse_entry(&bytes) {
            Parsed::Entry(entry, length) if length == bytes.len() => Ok(Some(entry)),
            _ => Ok(None),
        }
    }

    async fn mark_damaged(&self, key: &[u8], at: Location) -> bool {
        let marked = self.state.lock().await.set_damaged(key, at);
        self.counters
            .corrupt_entries_seen
            .fetch_add(1, Ordering::Relaxed);
        marked
    }

    pub async fn get(&self, key: &[u8]) -> Result<GetOutcome, StoreError> {
        for _attempt in 0..READ_ATTEMPTS {
            self.check_poisoned()?;
            let (location, version, tag) = {
                let state = self.state.lock().await;
                match state.index.get(key) {
                    None => return Ok(GetOutcome::NotFound),
                    Some(Slot::Lost { .. }) => return Ok(GetOutcome::Lost),
                    Some(Slot::Stored { damaged: true, .. }) => return Ok(GetOutcome::Corrupt),
                    Some(Slot::Stored {
                        location,
                        version,
                        tag,
                        ..
                    }) => (*location, *version, *tag),
                }
            };
            self.wait_durable(
                location.segment,
                location.offset + u64::from(location.length),
            )
            .await?;
            match self.read_entry(location).await {
                Ok(Some(LogEntry::Record(record)))
                    if record.key == key && record.version == version && record.tag == tag =>
                {
                    return Ok(GetOutcome::Found(record));
                }
                Ok(_) => {
                    self.mark_damaged(key, location).await;
                    return Ok(GetOutcome::Corrupt);
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    // Compaction moved the entry and removed its segment: look again.
                    continue;
                }
                Err(_) => {
                    self.mark_damaged(key, location).await;
                    return Ok(GetOutcome::Corrupt);
                }
            }
        }
        Err(StoreError::Failed(
            "entry kept moving while being read".into(),
        ))
    }

    /// Entries under `prefix` after `start_after`, in key order; `None` if any copy in the range is
    /// lost or damaged (the listing could then not vote on absence).
    pub async fn list(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Option<(Vec<ListEntry>, bool)> {
        let state = self.state.lock().await;
        let mut entries = Vec::new();
        let start = match start_after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_vec()),
            _ => std::ops::Bound::Included(prefix.to_vec()),
        };
        for (key, slot) in state.index.range((start, std::ops::Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                return Some((entries, true));
            }
            if entries.len() >= limit {
                return Some((entries, false));
            }
            match slot {
                Slot::Stored {
                    version,
                    tombstone,
                    tag,
                    damaged: false,
                    ..
                } => entries.push(ListEntry {
                    key: key.clone(),
                    version: *version,
                    tombstone: *tombstone,
                    tag: *tag,
                }),
                _ => return None,
            }
        }
        Some((entries, true))
    }

    /// The per-bucket digests of everything this store holds.
    pub async fn digests(&self) -> Vec<BucketDigest> {
        self.state.lock().await.digests.buckets().to_vec()
    }

    /// Entries whose key falls in one of `buckets`, after `start_after`, damaged and lost copies
    /// included (listed with a zero version and tag).
    pub async fn bucket_entries(
        &self,
        buckets: &std::collections::BTreeSet<u32>,
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> (Vec<ListEntry>, bool) {
        let state = self.state.lock().await;
        let start = match start_after {
            Some(after) => std::ops::Bound::Excluded(after.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for (key, slot) in state.index.range((start, std::ops::Bound::Unbounded)) {
            if !buckets.contains(&bucket_of(key)) {
                continue;
            }
            if entries.len() >= limit {
                return (entries, false);
            }
            entries.push(slot.list_entry(key));
        }
        (entries, true)
    }

    /// Re-read stored entries after `start_after` in key order until `max_bytes` were read,
    /// checking each entry's checksum and, under `cluster_key`, its end-to-end tag; mark the ones
    /// that fail as damaged, so that reads answer `Corrupt` and the digests expose them.
    pub async fn deep_scrub(
        &self,
        cluster_key: &ClusterKey,
        start_after: Option<&[u8]>,
        max_bytes: u64,
    ) -> Result<DeepScrubProgress, StoreError> {
        self.check_poisoned()?;
        let (batch, reached_end) = {
            let state = self.state.lock().await;
            let start = match start_after {
                Some(after) => std::ops::Bound::Excluded(after.to_vec()),
                None => std::ops::Bound::Unbounded,
            };
            let mut batch = Vec::new();
            let mut batch_bytes = 0u64;
            let mut reached_end = true;
            for (key, slot) in state.index.range((start, std::ops::Bound::Unbounded)) {
                if batch_bytes >= max_bytes.max(1) {
                    reached_end = false;
                    break;
                }
                let location = slot.location();
                batch_bytes += u64::from(location.length);
                batch.push((key.clone(), slot.clone()));
            }
            (batch, reached_end)
        };
        let mut progress = DeepScrubProgress::default();
        for (key, slot) in &batch {
            let Slot::Stored {
                version,
                tag,
                location,
                damaged: false,
                ..
            } = slot
            else {
                continue;
            };
            self.wait_durable(
                location.segment,
                location.offset + u64::from(location.length),
            )
            .await?;
            progress.entries_checked += 1;
            progress.bytes_checked += u64::from(location.length);
            let healthy = match self.read_entry(*location).await {
                Ok(Some(LogEntry::Record(record))) => {
                    record.key == *key
                        && record.version == *version
                        && record.tag == *tag
                        && record.tag_is_valid(cluster_key)
                }
                // Compaction moved the entry meanwhile: it was read whole by compaction, and the
                // next deep scrub reads it at its new place.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
                _ => false,
            };
            if !healthy && self.mark_damaged(key, *location).await {
                progress.damaged_found += 1;
                tracing::warn!(
                    key = %crate::record::display_key(key),
                    "deep scrub: a stored entry failed its check; it is now reported corrupt"
                );
            }
        }
        self.counters
            .deep_scrubbed_entries
            .fetch_add(progress.entries_checked, Ordering::Relaxed);
        self.counters
            .deep_scrub_damage_found
            .fetch_add(progress.damaged_found, Ordering::Relaxed);
        progress.resume_after = match (reached_end, batch.last()) {
            (false, Some((key, _))) => Some(serde_bytes::ByteBuf::from(key.clone())),
            _ => None,
        };
        Ok(progress)
    }

    /// Forget this store's copy of `key` if it is damaged or lost. Returns whether it did. Nothing
    /// is logged: after a restart the unusable copy may be back, and is forgotten again.
    pub async fn forget_unusable(&self, key: &[u8]) -> bool {
        let mut state = self.state.lock().await;
        let unusable = matches!(
            state.index.get(key),
            Some(Slot::Lost { .. } | Slot::Stored { damaged: true, .. })
        );
        if !unusable {
            return false;
        }
        let slot = state.index.remove(key).expect("checked above");
        state.digests.remove(key, slot.digest_state());
        state.remove_live(slot.location());
        true
    }

    /// Forget each listed tombstone that this store holds exactly, healthy, from an epoch older
    /// than `promised_epoch`. Returns how many were dropped.
    pub async fn drop_tombstones(&self, tombstones: &[(Vec<u8>, Version)]) -> u64 {
        let mut state = self.state.lock().await;
        let promised_epoch = state.meta.promised_epoch;
        let mut dropped = 0;
        for (key, expected_version) in tombstones {
            let droppable = matches!(
                state.index.get(key),
                Some(Slot::Stored {
                    version,
                    tombstone: true,
                    damaged: false,
                    ..
                }) if version == expected_version && version.epoch < promised_epoch
            );
            if !droppable {
                continue;
            }
            let slot = state.index.remove(key).expect("checked above");
            state.digests.remove(key, slot.digest_state());
            let Slot::Stored {
                version,
                tag,
                location,
                ..
            } = slot
            else {
                unreachable!("checked above")
            };
            // Its bytes stay live: see `DroppedTombstone`.
            state.dropped_tombstones.push(DroppedTombstone {
                record: Record {
                    key: key.clone(),
                    version,
                    tombstone: true,
                    value: Vec::new(),
                    tag,
                },
                location,
            });
            dropped += 1;
        }
        self.counters
            .tombstones_dropped
            .fetch_add(dropped, Ordering::Relaxed);
        dropped
    }

    /// What this store holds under `prefix`, re-reading each entry to report its health.
    pub async fn dump(
        &self,
        cluster_key: &ClusterKey,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<DumpEntry>, bool), StoreError> {
        let slots: Vec<(Vec<u8>, Slot)> = {
            let state = self.state.lock().await;
            let start = match start_after {
                Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_vec()),
                _ => std::ops::Bound::Included(prefix.to_vec()),
            };
            state
                .index
                .range((start, std::ops::Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(prefix))
                .take(limit + 1)
                .map(|(key, slot)| (key.clone(), slot.clone()))
                .collect()
        };
        let complete = slots.len() <= limit;
        let mut entries = Vec::new();
        for (key, slot) in slots.into_iter().take(limit) {
            match slot {
                Slot::Lost { .. } => entries.push(DumpEntry {
                    key,
                    version: Version::default(),
                    tombstone: false,
                    value_bytes: 0,
                    checksum_ok: true,
                    tag_ok: false,
                    lost: true,
                }),
                Slot::Stored {
                    version,
                    tombstone,
                    value_bytes,
                    ..
                } => {
                    let outcome = self.get(&key).await?;
                    let (checksum_ok, tag_ok) = match &outcome {
                        GetOutcome::Found(record) => (true, record.tag_is_valid(cluster_key)),
                        _ => (false, false),
                    };
                    entries.push(DumpEntry {
                        key,
                        version,
                        tombstone,
                        value_bytes: u64::from(value_bytes),
                        checksum_ok,
                        tag_ok,
                        lost: matches!(outcome, GetOutcome::Lost),
                    });
                }
            }
        }
        Ok((entries, complete))
    }

    /// Damage this store's copy of `key` on purpose (for demos and tests).
    pub async fn inject(
        &self,
        cluster_key: &ClusterKey,
        key: &[u8],
        fault: InjectedFault,
    ) -> Result<(), StoreError> {
        let current = match self.get(key).await? {
            GetOutcome::Found(record) => Some(record),
            _ => None,
        };
        let entry = match (fault, current) {
            (InjectedFault::Wipe, _) => LogEntry::Lost { key: key.to_vec() },
            (InjectedFault::Corrupt, Some(mut record)) => {
                if record.value.is_empty() {
                    record.tag[0] ^= 0x01;
                } else {
                    let middle = record.value.len() / 2;
                    record.value[middle] ^= 0x5A;
                }
                LogEntry::Record(record)
            }
            (InjectedFault::Stale, Some(record)) => {
                let mut version = record.version;
                if version.sequence > 0 {
                    version.sequence -= 1;
                } else if version.epoch > 0 {
                    version.epoch -= 1;
                } else {
                    return Err(StoreError::Invalid("no older version exists".into()));
                }
                let mut value = b"stale:".to_vec();
                value.extend_from_slice(&record.value);
                value.truncate(MAX_VALUE_BYTES);
                LogEntry::Record(Record::new(
                    cluster_key,
                    record.key,
                    version,
                    record.tombstone,
                    value,
                ))
            }
            (_, None) => {
                return Err(StoreError::Invalid(
                    "this server holds no readable copy of that key".into(),
                ))
            }
        };
        self.append_entry(key.to_vec(), entry).await
    }

    /// Store `record` whatever this store already holds (fault injection and planted bugs only:
    /// it can roll a key back).
    pub async fn append_unchecked(&self, record: Record) -> Result<(), StoreError> {
        self.append_entry(record.key.clone(), LogEntry::Record(record))
            .await
    }

    async fn append_entry(&self, key: Vec<u8>, entry: LogEntry) -> Result<(), StoreError> {
        let bytes = encode_entry(&entry);
        let mut state = self.state.lock().await;
        let location = self.append_locked(&mut state, &bytes).await?;
        state.replace(key, slot_for(&entry, location));
        drop(state);
        self.wait_durable(
            location.segment,
            location.offset + u64::from(location.length),
        )
        .await
    }

    pub async fn meta(&self) -> Meta {
        self.state.lock().await.meta.clone()
    }

    /// Change the meta file durably; `change` returns false to leave it as it is.
    pub async fn update_meta(
        &self,
        change: impl FnOnce(&mut Meta) -> bool,
    ) -> Result<Meta, StoreError> {
        let _meta_guard = self.meta_lock.lock().await;
        let mut meta = self.meta().await;
        if !change(&mut meta) {
            return Ok(meta);
        }
        self.check_poisoned()?;
        self.disk
            .write_atomic(META_FILE, &encode_meta(&meta))
            .await
            .map_err(|e| self.poison(io_fatal("writing meta", e)))?;
        self.state.lock().await.meta = meta.clone();
        Ok(meta)
    }

    pub async fn stats(&self) -> StoreStats {
        let state = self.state.lock().await;
        let mut stats = StoreStats {
            corrupt_entries_seen: self.counters.corrupt_entries_seen.load(Ordering::Relaxed),
            torn_tail_bytes_truncated: self.counters.torn_tail_bytes.load(Ordering::Relaxed),
            compacted_entries: self.counters.compacted_entries.load(Ordering::Relaxed),
            deep_scrubbed_entries: self.counters.deep_scrubbed_entries.load(Ordering::Relaxed),
            deep_scrub_damage_found: self
                .counters
                .deep_scrub_damage_found
                .load(Ordering::Relaxed),
            tombstones_dropped: self.counters.tombstones_dropped.load(Ordering::Relaxed),
            ..StoreStats::default()
        };
        for slot in state.index.values() {
            if let Slot::Stored { tombstone, .. } = slot {
                if *tombstone {
                    stats.tombstones += 1;
                } else {
                    stats.records += 1;
                }
            }
        }
        for info in state.segments.values() {
            stats.live_bytes += info.live_bytes;
            stats.log_bytes += info.bytes;
        }
        stats
    }

    /// Move the live entries of the sealed segment with the most garbage into the active segment
    /// and delete it. Returns how many entries moved, or `None` when no segment is worth
    /// compacting.
    pub async fn compact_step(&self) -> Result<Option<usize>, StoreError> {
        let (segment, moving) = {
            let state = self.state.lock().await;
            let candidate = state
                .segments
                .iter()
                .filter(|(number, info)| {
                    **number != state.active && info.live_bytes * 2 <= info.bytes
                })
                .min_by_key(|(_, info)| info.live_bytes)
                .map(|(number, _)| *number);
            let Some(segment) = candidate else {
                return Ok(None);
            };
            let moving: Vec<(Vec<u8>, Location)> = state
                .index
                .iter()
                .filter(|(_, slot)| slot.location().segment == segment)
                .map(|(key, slot)| (key.clone(), slot.location()))
                .collect();
            (segment, moving)
        };
        let mut last_location = None;
        for (key, old_location) in &moving {
            let entry = match self.read_entry(*old_location).await {
                Ok(Some(entry)) if key_of(&entry) == key.as_slice() => entry,
                // An unreadable copy is a lost copy: say so in the log rather than dropping it,
                // or this server would later deny having ever held the key.
                _ => LogEntry::Lost { key: key.clone() },
            };
            let bytes = encode_entry(&entry);
            let mut state = self.state.lock().await;
            let still_there = state
                .index
                .get(key)
                .is_some_and(|slot| slot.location() == *old_location);
            if !still_there {
                continue;
            }
            let location = self.append_locked(&mut state, &bytes).await?;
            let mut slot = slot_for(&entry, location);
            if let (
                Slot::Stored { damaged, .. },
                Some(Slot::Stored {
                    damaged: was_damaged,
                    ..
                }),
            ) = (&mut slot, state.index.get(key))
            {
                *damaged = *was_damaged;
            }
            state.replace(key.clone(), slot);
            last_location = Some(location);
        }
        if let Some(location) = last_location {
            self.wait_durable(
                location.segment,
                location.offset + u64::from(location.length),
            )
            .await?;
        }
        let mut state = self.state.lock().await;
        let older_segment_remains = state.segments.range(..segment).next().is_some();
        let mut index = 0;
        // Bounded by the dropped tombstones: each is either moved out of `segment` or forgotten.
        while index < state.dropped_tombstones.len() {
            let dropped = state.dropped_tombstones[index].clone();
            if dropped.location.segment != segment {
                index += 1;
                continue;
            }
            state.remove_live(dropped.location);
            if older_segment_remains {
                let bytes = encode_entry(&LogEntry::Record(dropped.record));
                let location = self.append_locked(&mut state, &bytes).await?;
                state.add_live(location);
                state.dropped_tombstones[index].location = location;
                last_location = Some(location);
                index += 1;
            } else {
                state.dropped_tombstones.swap_remove(index);
            }
        }
        if let Some(location) = last_location {
            drop(state);
            self.wait_durable(
                location.segment,
                location.offset + u64::from(location.length),
            )
            .await?;
            state = self.state.lock().await;
        }
        let info = state.segments.get(&segment).copied().unwrap_or_default();
        if info.live_bytes != 0 {
            // Something was written into it meanwhile? Impossible: only the active segment grows.
            return Err(StoreError::Fatal(format!(
                "segment {segment} still holds {} live bytes after compaction",
                info.live_bytes
            )));
        }
        state.segments.remove(&segment);
        drop(state);
        self.disk
            .remove(&segment_name(segment))
            .await
            .map_err(|e| self.poison(io_fatal("removing a compacted segment", e)))?;
        self.counters
            .compacted_entries
            .fetch_add(moving.len() as u64, Ordering::Relaxed);
        Ok(Some(moving.len()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::disk::FileDisk;
    use crate::record::CLUSTER_KEY_BYTES;

    fn cluster_key() -> ClusterKey {
        ClusterKey::from_bytes([1; CLUSTER_KEY_BYTES])
    }

    fn record(key: &str, sequence: u64, value: &[u8]) -> Record {
        Record::new(
            &cluster_key(),
            key.as_bytes().to_vec(),
            Version {
                epoch: 1,
                sequence,
                writer: 1,
            },
            false,
            value.to_vec(),
        )
    }

    /// Counts syncs, to see group commit at work, and can make them fail, as after a write-back
    /// error the kernel reported once.
    struct CountingDisk {
        inner: FileDisk,
        syncs: Arc<AtomicU64>,
        fail_syncs: bool,
    }

    impl Disk for CountingDisk {
        fn list(&self) -> impl std::future::Future<Output = std::io::Result<Vec<String>>> + Send {
            self.inner.list()
        }
        fn read_at(
            &self,
            name: &str,
            offset: u64,
            length: usize,
        ) -> impl std::future::Future<Output = std::io::Result<Vec<u8>>> + Send {
            self.inner.read_at(name, offset, length)
        }
        fn size(
            &self,
            name: &str,
        ) -> impl std::future::Future<Output = std::io::Result<u64>> + Send {
            self.inner.size(name)
        }
        fn append(
            &self,
            name: &str,
            bytes: &[u8],
        ) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
            self.inner.append(name, bytes)
        }
        async fn sync(&self, name: &str) -> std::io::Result<()> {
            self.syncs.fetch_add(1, Ordering::Relaxed);
            if self.fail_syncs {
                return Err(std::io::Error::other("simulated EIO on fsync"));
            }
            self.inner.sync(name).await
        }
        fn truncate(
            &self,
            name: &str,
            length: u64,
        ) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
            self.inner.truncate(name, length)
        }
        fn remove(
            &self,
            name: &str,
        ) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
            self.inner.remove(name)
        }
        fn write_atomic(
            &self,
            name: &str,
            bytes: &[u8],
        ) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
            self.inner.write_atomic(name, bytes)
        }
    }

    async fn open(
        directory: &std::path::Path,
        segment_bytes: u64,
    ) -> (Store<FileDisk>, RecoveryReport) {
        Store::open(
            FileDisk::open(directory).unwrap(),
            StoreOptions { segment_bytes },
        )
        .await
        .unwrap()
    }

    fn segment_files(directory: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                path.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(SEGMENT_PREFIX)
            })
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn a_failed_fsync_is_fatal_and_never_acknowledged() {
        let directory = tempfile::tempdir().unwrap();
        let disk = CountingDisk {
            inner: FileDisk::open(directory.path()).unwrap(),
            syncs: Arc::new(AtomicU64::new(0)),
            fail_syncs: true,
        };
        let (store, _) = Store::open(disk, StoreOptions::default()).await.unwrap();
        let first = store.put(record("k", 1, b"v"), false).await;
        assert!(matches!(first, Err(StoreError::Fatal(_))), "{first:?}");
        assert!(store.is_poisoned());
        // Never retried into a false success: everything after fails too.
        assert!(matches!(
            store.put(record("other", 1, b"v"), false).await,
            Err(StoreError::Fatal(_))
        ));
        assert!(matches!(store.get(b"k").await, Err(StoreError::Fatal(_))));
    }

    #[tokio::test]
    async fn keeps_only_newer_versions() {
        let directory = tempfile::tempdir().unwrap();
        let (store, _) = open(directory.path(), 1 << 20).await;
        assert_eq!(
            store.put(record("k", 2, b"two"), false).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            store.put(record("k", 1, b"one"), false).await.unwrap(),
            PutOutcome::HaveNewer(record("k", 2, b"").version)
        );
        assert_eq!(
            store.put(record("k", 2, b"two"), false).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            store.put(record("k", 2, b"other"), false).await.unwrap(),
            PutOutcome::Conflict
        );
        assert_eq!(
            store.get(b"k").await.unwrap(),
            GetOutcome::Found(record("k", 2, b"two"))
        );
        assert_eq!(store.get(b"missing").await.unwrap(), GetOutcome::NotFound);
    }

    #[tokio::test]
    async fn group_commit_covers_concurrent_puts_with_fewer_syncs() {
        let directory = tempfile::tempdir().unwrap();
        let syncs = Arc::new(AtomicU64::new(0));
        let disk = CountingDisk {
            inner: FileDisk::open(directory.path()).unwrap(),
            syncs: syncs.clone(),
            fail_syncs: false,
        };
        let (store, _) = Store::open(disk, StoreOptions::default()).await.unwrap();
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for index in 0..200u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .put(record(&format!("key{index}"), 1, &[7u8; 100]), false)
                    .await
                    .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), PutOutcome::Stored);
        }
        let syncs = syncs.load(Ordering::Relaxed);
        assert!(syncs >= 1, "a put must be synced before it is acknowledged");
        assert!(
            syncs < 200,
            "group commit should share syncs, saw {syncs} for 200 puts"
        );
        drop(store);
        let (reopened, report) = open(directory.path(), 1 << 20).await;
        assert_eq!(report.entries, 200);
        assert_eq!(reopened.stats().await.records, 200);
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_and_store_stays_healthy() {
        let directory = tempfile::tempdir().unwrap();
        let meta = Meta {
            volume: Some(9),
            member: Some(MemberId { bank: 0, slot: 0 }),
            ..Meta::default()
        };
        {
            let (store, _) = open(directory.path(), 1 << 20).await;
            store
                .update_meta(|m| {
                    *m = meta.clone();
                    true
                })
                .await
                .unwrap();
            for sequence in 1..=10 {
                store
                    .put(record("k", sequence, b"value"), false)
                    .await
                    .unwrap();
                store
                    .put(record(&format!("other{sequence}"), 1, b"v"), false)
                    .await
                    .unwrap();
            }
        }
        let last = segment_files(directory.path()).pop().unwrap();
        let whole = std::fs::read(&last).unwrap();
        // A torn write: the first bytes of another entry.
        let mut torn = whole.clone();
        torn.extend_from_slice(&encode_entry(&LogEntry::Record(record("k", 11, b"new")))[..20]);
        std::fs::write(&last, &torn).unwrap();
        let (store, report) = open(directory.path(), 1 << 20).await;
        assert_eq!(report.torn_tail_bytes, 20);
        assert_eq!(report.damaged_regions, 0);
        assert!(!store.meta().await.recovering);
        assert_eq!(std::fs::read(&last).unwrap(), whole);
        assert_eq!(
            store.get(b"k").await.unwrap(),
            GetOutcome::Found(record("k", 10, b"value"))
        );
    }

    #[tokio::test]
    async fn mid_log_damage_makes_the_store_recovering() {
        let directory = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(directory.path(), 1 << 20).await;
            store
                .update_meta(|m| {
                    m.volume = Some(9);
                    m.member = Some(MemberId { bank: 0, slot: 0 });
                    true
                })
                .await
                .unwrap();
            for index in 0..20 {
                store
                    .put(record(&format!("k{index}"), 1, &[3u8; 64]), false)
                    .await
                    .unwrap();
            }
        }
        let first = segment_files(directory.path()).remove(0);
        let mut bytes = std::fs::read(&first).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&first, &bytes).unwrap();
        let (store, report) = open(directory.path(), 1 << 20).await;
        assert!(report.damaged_regions > 0);
        assert!(
            store.meta().await.recovering,
            "damage must not be voted away as absence"
        );
        // What was after the damage in other entries is still served.
        assert!(matches!(
            store.get(b"k0").await.unwrap(),
            GetOutcome::Found(_)
        ));
    }

    #[tokio::test]
    async fn rot_found_on_read_is_reported_corrupt_and_repairable() {
        let directory = tempfile::tempdir().unwrap();
        let (store, _) = open(directory.path(), 1 << 20).await;
        store.put(record("k", 1, &[5u8; 256]), false).await.unwrap();
        let file = segment_files(directory.path()).pop().unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0xFF;
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(store.get(b"k").await.unwrap(), GetOutcome::Corrupt);
        // A damaged copy accepts the same version again.
        assert_eq!(
            store.put(record("k", 1, &[5u8; 256]), false).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            store.get(b"k").await.unwrap(),
            GetOutcome::Found(record("k", 1, &[5u8; 256]))
        );
    }

    fn tombstone(key: &str, sequence: u64) -> Record {
        Record::new(
            &cluster_key(),
            key.as_bytes().to_vec(),
            Version {
                epoch: 1,
                sequence,
                writer: 1,
            },
            true,
            Vec::new(),
        )
    }

    #[tokio::test]
    async fn digests_follow_every_change_and_the_deep_scrub_exposes_rot() {
        let first_directory = tempfile::tempdir().unwrap();
        let second_directory = tempfile::tempdir().unwrap();
        let (first, _) = open(first_directory.path(), 1 << 20).await;
        let (second, _) = open(second_directory.path(), 1 << 20).await;
        let records: Vec<Record> = (0..50)
            .map(|index| record(&format!("key{index:02}"), 1, &[index as u8; 300]))
            .collect();
        for record in &records {
            first.put(record.clone(), false).await.unwrap();
        }
        // The same records in another order, with an overwrite on the way.
        second
            .put(record("key07", 0, b"older"), false)
            .await
            .unwrap();
        for record in records.iter().rev() {
            second.put(record.clone(), false).await.unwrap();
        }
        assert_eq!(first.digests().await, second.digests().await);
        let entries: u32 = first
            .digests()
            .await
            .iter()
            .map(|bucket| bucket.entries)
            .sum();
        assert_eq!(entries, 50);

        // Rot in the last entry on disk: invisible until re-read.
        let file = segment_files(first_directory.path()).pop().unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0xFF;
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(first.digests().await, second.digests().await);
        // A small budget stops early and says where to resume.
        let partial = first.deep_scrub(&cluster_key(), None, 1).await.unwrap();
        assert_eq!(partial.entries_checked, 1);
        assert!(partial.resume_after.is_some());
        let rest = first
            .deep_scrub(
                &cluster_key(),
                partial.resume_after.as_deref().map(|key| &key[..]),
                u64::MAX,
            )
            .await
            .unwrap();
        assert_eq!(rest.entries_checked, 49);
        assert_eq!(rest.damaged_found, 1);
        assert_eq!(rest.resume_after, None);
        let rotten = records.last().unwrap().key.clone();
        let bucket = crate::digest::bucket_of(&rotten) as usize;
        let (first_digests, second_digests) = (first.digests().await, second.digests().await);
        for index in 0..first_digests.len() {
            assert_eq!(
                first_digests[index] == second_digests[index],
                index != bucket,
                "bucket {index}"
            );
        }
        let buckets = std::collections::BTreeSet::from([bucket as u32]);
        let (listed, complete) = first.bucket_entries(&buckets, None, 100).await;
        assert!(complete);
        let listed_rotten = listed.iter().find(|entry| entry.key == rotten).unwrap();
        assert_eq!(
            listed_rotten.version,
            Version::default(),
            "a damaged copy lists as unusable"
        );
        assert!(listed
            .iter()
            .all(|entry| crate::digest::bucket_of(&entry.key) as usize == bucket));

        // A well-formed entry whose tag fails (written behind the server's back) is rot too.
        second
            .inject(&cluster_key(), b"key03", InjectedFault::Corrupt)
            .await
            .unwrap();
        let found = second
            .deep_scrub(&cluster_key(), None, u64::MAX)
            .await
            .unwrap();
        assert_eq!(found.damaged_found, 1);
        assert_eq!(second.get(b"key03").await.unwrap(), GetOutcome::Corrupt);
        // Repairing both copies brings the digests back together.
        first
            .put(records.last().unwrap().clone(), true)
            .await
            .unwrap();
        second.put(records[3].clone(), true).await.unwrap();
        assert_eq!(first.digests().await, second.digests().await);
    }

    #[tokio::test]
    async fn tombstones_drop_only_when_fenced_and_never_resurrect_older_versions() {
        let directory = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(directory.path(), 4096).await;
            // The first segment: the doomed key and cold keys that keep the segment mostly live,
            // so it is never compacted and its superseded copy of the doomed key stays on disk.
            store
                .put(record("doomed", 1, &[1u8; 600]), false)
                .await
                .unwrap();
            for index in 0..4 {
                store
                    .put(record(&format!("cold{index}"), 1, &[2u8; 900]), false)
                    .await
                    .unwrap();
            }
            store.put(tombstone("doomed", 2), false).await.unwrap();
            // Garbage after the tombstone, so that its segment is worth compacting.
            for sequence in 1..=40u64 {
                store
                    .put(record("hot", sequence, &[3u8; 400]), false)
                    .await
                    .unwrap();
            }
            let version = tombstone("doomed", 2).version;
            // Not yet: no newer epoch was promised, so an older write could still arrive.
            assert_eq!(
                store
                    .drop_tombstones(&[(b"doomed".to_vec(), version)])
                    .await,
                0
            );
            store
                .update_meta(|meta| {
                    meta.promised_epoch = 2;
                    true
                })
                .await
                .unwrap();
            // Only the exact version is dropped.
            let mut other_version = version;
            other_version.sequence += 1;
            assert_eq!(
                store
                    .drop_tombstones(&[(b"doomed".to_vec(), other_version)])
                    .await,
                0
            );
            assert_eq!(store.stats().await.tombstones, 1);
            assert_eq!(
                store
                    .drop_tombstones(&[(b"doomed".to_vec(), version)])
                    .await,
                1
            );
            assert_eq!(store.get(b"doomed").await.unwrap(), GetOutcome::NotFound);
            assert_eq!(store.stats().await.tombstones, 0);
            let entries: u32 = store
                .digests()
                .await
                .iter()
                .map(|bucket| bucket.entries)
                .sum();
            assert_eq!(entries, 5, "the dropped tombstone left the digests");
            let mut steps = 0;
            while store.compact_step().await.unwrap().is_some() {
                steps += 1;
                assert!(steps < 1000, "compaction must terminate");
            }
            assert!(steps > 0);
        }
        // After a restart the tombstone may come back (every copy will agree to drop it again),
        // but the superseded live version must not.
        let (store, _) = open(directory.path(), 4096).await;
        match store.get(b"doomed").await.unwrap() {
            GetOutcome::NotFound => {}
            GetOutcome::Found(record) => assert!(record.tombstone, "resurrected: {record:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn compaction_reclaims_superseded_entries_and_keeps_data() {
        let directory = tempfile::tempdir().unwrap();
        {
            let (store, _) = open(directory.path(), 4096).await;
            // Cold keys in the first segments: live entries compaction must move.
            for index in 0..10 {
                store
                    .put(record(&format!("cold{index}"), 1, b"cold"), false)
                    .await
                    .unwrap();
            }
            for sequence in 1..=200u64 {
                for key in ["a", "b", "c"] {
                    store
                        .put(record(key, sequence, &[sequence as u8; 100]), false)
                        .await
                        .unwrap();
                }
            }
            store
                .inject(&cluster_key(), b"c", InjectedFault::Wipe)
                .await
                .unwrap();
            let before = store.stats().await;
            let mut moved = 0;
            let mut segments_removed = 0;
            while let Some(step) = store.compact_step().await.unwrap() {
                moved += step;
                segments_removed += 1;
                assert!(segments_removed < 1000, "compaction must terminate");
            }
            let after = store.stats().await;
            assert!(
                moved >= 10 && segments_removed > 10,
                "moved {moved}, removed {segments_removed}"
            );
            assert!(
                after.log_bytes * 4 < before.log_bytes,
                "compaction should reclaim most of {} bytes, left {}",
                before.log_bytes,
                after.log_bytes
            );
            assert_eq!(
                store.get(b"a").await.unwrap(),
                GetOutcome::Found(record("a", 200, &[200u8; 100]))
            );
            assert_eq!(store.get(b"c").await.unwrap(), GetOutcome::Lost);
        }
        let (store, report) = open(directory.path(), 4096).await;
        assert_eq!(report.damaged_regions, 0);
        assert_eq!(
            store.get(b"b").await.unwrap(),
            GetOutcome::Found(record("b", 200, &[200u8; 100]))
        );
        assert_eq!(
            store.get(b"c").await.unwrap(),
            GetOutcome::Lost,
            "a lost copy stays lost"
        );
    }

    #[tokio::test]
    async fn listing_pages_and_refuses_to_vouch_for_lost_copies() {
        let directory = tempfile::tempdir().unwrap();
        let (store, _) = open(directory.path(), 1 << 20).await;
        for name in ["d#a", "d#b", "d#c", "e#a"] {
            store.put(record(name, 1, b"x"), false).await.unwrap();
        }
        let (first, complete) = store.list(b"d#", None, 2).await.unwrap();
        assert!(!complete);
        assert_eq!(first.len(), 2);
        let (rest, complete) = store.list(b"d#", Some(b"d#b"), 2).await.unwrap();
        assert!(complete);
        assert_eq!(
            rest.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            vec![b"d#c".to_vec()]
        );
        store
            .inject(&cluster_key(), b"d#b", InjectedFault::Wipe)
            .await
            .unwrap();
        assert!(store.list(b"d#", None, 10).await.is_none());
        assert!(store.list(b"e#", None, 10).await.is_some());
    }

    #[tokio::test]
    async fn injected_corruption_passes_the_checksum_but_not_the_tag() {
        let directory = tempfile::tempdir().unwrap();
        let (store, _) = open(directory.path(), 1 << 20).await;
        store.put(record("k", 3, b"hello"), false).await.unwrap();
        store
            .inject(&cluster_key(), b"k", InjectedFault::Corrupt)
            .await
            .unwrap();
        let GetOutcome::Found(corrupt) = store.get(b"k").await.unwrap() else {
            panic!("a re-checksummed corruption reads back");
        };
        assert!(!corrupt.tag_is_valid(&cluster_key()));
        store
            .inject(&cluster_key(), b"k", InjectedFault::Stale)
            .await
            .unwrap();
        let GetOutcome::Found(stale) = store.get(b"k").await.unwrap() else {
            panic!("a stale copy reads back");
        };
        assert!(stale.tag_is_valid(&cluster_key()));
        assert!(stale.version < record("k", 3, b"").version);
        // A repair of the original version replaces the bad copy.
        assert_eq!(
            store.put(record("k", 3, b"hello"), true).await.unwrap(),
            PutOutcome::Stored
        );
        assert_eq!(
            store.get(b"k").await.unwrap(),
            GetOutcome::Found(record("k", 3, b"hello"))
        );
    }
}
