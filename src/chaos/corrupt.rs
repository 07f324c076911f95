//! Rot behind a server's back: find the live entries of its log on disk and flip one byte inside
//! the value of a few of them, in place.
//!
//! The log format is the store's (`src/store.rs`): entries of `magic u32 | body_bytes u32 |
//! body_crc32c u32 | header_crc32c u32 | body`, the body a postcard `LogEntry` whose first variant
//! is a [`Record`] ending in its value and its 32-byte tag. Only the latest entry of a key (by
//! segment number, then offset) is live; damaging older ones would change nothing anyone reads.
//!
//! Bytes are written with `pwrite` at their offset, never by rewriting a file: the server may be
//! appending to its active segment at the same time, and a rewrite could lose an acknowledged
//! write, which no longer is rot but data loss.

use std::collections::BTreeMap;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::record::{display_key, Record, TAG_BYTES};
use crate::rng::SeededRng;

const ENTRY_MAGIC: u32 = 0x3153_4656;
const HEADER_BYTES: usize = 16;
const SEGMENT_PREFIX: &str = "segment-";

/// The store's log entry, mirrored to read it: the variants must stay in the store's order.
#[derive(Deserialize)]
enum StoredEntry {
    Record(Record),
    #[allow(dead_code)] // Read to know the key was lost; the key itself is not needed here.
    Lost {
        key: Vec<u8>,
    },
}

/// One parsed entry of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub key: Vec<u8>,
    /// Where the value's bytes are in the segment file; `None` for an empty value, a tombstone or
    /// a lost-copy marker.
    pub value_range: Option<Range<u64>>,
}

/// A value byte that was damaged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedEntry {
    pub key: String,
    pub segment: String,
    pub offset: u64,
}

/// Parse a segment's entries up to the first one that is incomplete (the server may be writing
/// it) or unreadable. Entries whose body fails its checksum are skipped: they are rot already.
pub fn parse_segment(bytes: &[u8]) -> Vec<EntryView> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    while bytes.len() - offset >= HEADER_BYTES {
        let word = |index: usize| {
            let start = offset + index * 4;
            u32::from_le_bytes(bytes[start..start + 4].try_into().expect("4 bytes"))
        };
        if word(0) != ENTRY_MAGIC || crc32c::crc32c(&bytes[offset..offset + 12]) != word(3) {
            break;
        }
        let body_start = offset + HEADER_BYTES;
        let body_end = body_start + word(1) as usize;
        if body_end > bytes.len() {
            break;
        }
        let body = &bytes[body_start..body_end];
        if crc32c::crc32c(body) == word(2) {
            if let Some(entry) = view_of(body, body_start as u64) {
                entries.push(entry);
            }
        }
        offset = body_end;
    }
    entries
}

fn view_of(body: &[u8], body_start: u64) -> Option<EntryView> {
    match postcard::from_bytes::<StoredEntry>(body).ok()? {
        StoredEntry::Record(record) => {
            let value_bytes = record.value.len();
            // The value is followed only by the tag; check rather than trust the arithmetic.
            let value_end = body.len().checked_sub(TAG_BYTES)?;
            let value_start = value_end.checked_sub(value_bytes)?;
            let value_range = (value_bytes > 0 && body[value_start..value_end] == record.value[..])
                .then(|| body_start + value_start as u64..body_start + value_end as u64);
            Some(EntryView {
                key: record.key,
                value_range,
            })
        }
        StoredEntry::Lost { key } => Some(EntryView {
            key,
            value_range: None,
        }),
    }
}

/// Where a value is: the position of its segment in log order, and its bytes in that file.
pub type ValueLocation = (usize, Range<u64>);

/// The latest entry of every key over `segments` (in log order), keeping only those with a value,
/// by key.
pub fn live_values(segments: &[Vec<EntryView>]) -> BTreeMap<Vec<u8>, ValueLocation> {
    let mut latest: BTreeMap<Vec<u8>, Option<ValueLocation>> = BTreeMap::new();
    for (position, entries) in segments.iter().enumerate() {
        for entry in entries {
            latest.insert(
                entry.key.clone(),
                entry.value_range.clone().map(|range| (position, range)),
            );
        }
    }
    latest
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
}

/// Flip one byte (at a seeded position) inside the values of up to `count` live entries of the
/// log in `data_dir`, chosen by `seed` among the oldest.
pub fn damage_live_values(data_dir: &Path, count: usize, seed: u64) -> Result<Vec<DamagedEntry>> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir)
        .with_context(|| format!("cannot list {}", data_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(SEGMENT_PREFIX))
        .collect();
    // Zero-padded numbers: the names sort in log order.
    names.sort();
    let mut segments = Vec::with_capacity(names.len());
    for name in &names {
        // A segment compaction deleted meanwhile simply has no entries.
        let bytes = std::fs::read(data_dir.join(name)).unwrap_or_default();
        segments.push(parse_segment(&bytes));
    }
    let mut live: Vec<(Vec<u8>, ValueLocation)> = live_values(&segments).into_iter().collect();
    // Rot that matters hits cold data: an entry the workload overwrites a moment later takes its
    // damage with it. Choose among the oldest quarter of the live entries.
    live.sort_by_key(|(_, (segment, range))| (*segment, range.start));
    live.truncate(count.max(live.len() / 4));
    let mut random = SeededRng::new(seed);
    let mut chosen: Vec<usize> = (0..live.len()).collect();
    for last in (1..chosen.len()).rev() {
        chosen.swap(last, random.below(last as u64 + 1) as usize);
    }
    let mut damaged = Vec::new();
    for position in chosen.into_iter().take(count) {
        let (key, (segment, range)) = &live[position];
        let path = data_dir.join(&names[*segment]);
        let offset = range.start + random.below(range.end - range.start);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            // Compacted away since it was read: nothing to damage there any more.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("cannot open {}", path.display()))
            }
        };
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, offset)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // Any non-zero mask changes the byte; 0x55 flips every other bit.
        byte[0] ^= 0x55;
        file.write_all_at(&byte, offset)
            .with_context(|| format!("cannot write {}", path.display()))?;
        damaged.push(DamagedEntry {
            key: display_key(key),
            segment: names[*segment].clone(),
            offset,
        });
    }
    Ok(damaged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::FileDisk;
    use crate::record::{ClusterKey, Version};
    use crate::store::{GetOutcome, Store, StoreOptions};

    fn record(key: &str, value: &[u8], sequence: u64) -> Record {
        let version = Version {
            epoch: 1,
            sequence,
            writer: 1,
        };
        Record::new(
            &ClusterKey::from_bytes([7; 32]),
            key.as_bytes().to_vec(),
            version,
            false,
            value.to_vec(),
        )
    }

    #[tokio::test]
    async fn only_live_values_are_damaged_and_the_store_sees_it() {
        let directory = tempfile::tempdir().unwrap();
        let disk = FileDisk::open(directory.path()).unwrap();
        let (store, _) = Store::open(disk, StoreOptions::default()).await.unwrap();
        for (key, value, sequence) in [
            ("old", b"first value".as_slice(), 1),
            ("old", b"second value", 2),
            ("empty", b"", 3),
            ("kept", b"kept value", 4),
        ] {
            store
                .put(record(key, value, sequence), false)
                .await
                .unwrap();
        }

        let names: Vec<_> = std::fs::read_dir(directory.path())
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with(SEGMENT_PREFIX))
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let bytes = std::fs::read(directory.path().join(&names[0])).unwrap();
        let entries = parse_segment(&bytes);
        assert_eq!(entries.len(), 4);
        let live = live_values(&[entries]);
        assert_eq!(
            live.keys().cloned().collect::<Vec<_>>(),
            [b"kept".to_vec(), b"old".to_vec()]
        );
        let (_, range) = &live[b"old".as_slice()];
        assert_eq!(
            &bytes[range.start as usize..range.end as usize],
            b"second value"
        );

        let damaged = damage_live_values(directory.path(), 1, 9).unwrap();
        assert_eq!(damaged.len(), 1);
        let key = damaged[0].key.clone();
        assert!(key == "old" || key == "kept", "{key}");
        let after = std::fs::read(directory.path().join(&names[0])).unwrap();
        let changed: Vec<usize> = (0..bytes.len())
            .filter(|at| bytes[*at] != after[*at])
            .collect();
        assert_eq!(changed, [damaged[0].offset as usize]);
        // The damaged entry fails its checksum now: it is no longer parsed.
        assert_eq!(parse_segment(&after).len(), 3);
        // And the running store finds out when it reads it.
        assert!(matches!(
            store.get(key.as_bytes()).await,
            Ok(GetOutcome::Corrupt)
        ));
    }

    #[test]
    fn a_torn_tail_ends_the_parse() {
        assert!(parse_segment(&[]).is_empty());
        assert!(parse_segment(&[0x56, 0x46, 0x53, 0x31, 1, 0, 0]).is_empty());
    }
}
