//! Per-bucket digests of what a server holds (DESIGN §6), kept up to date on every change so that
//! a scrub pass can compare replicas by exchanging a few kilobytes instead of listing every key.
//!
//! Every key falls in one of [`DIGEST_BUCKETS`] buckets by a hash of the whole key. A bucket's
//! digest is the XOR of the digests of its entries, so adding and removing an entry are the same
//! cheap operation and two servers holding the same entries have the same digest whatever the
//! order they were written in. Each key lives on exactly one server of every bank, so XOR-ing the
//! digests of a bank's servers gives the bank's digest, comparable with the other banks'.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::proto::BucketDigest;
use crate::record::{Tag, Version};

/// How many buckets a server's keys are spread over. A pass moves `DIGEST_BUCKETS` small digests
/// per server when replicas agree, and lists only the buckets that differ.
pub const DIGEST_BUCKETS: u32 = 1024;

/// The bucket `key` falls in, the same on every server and every build.
pub fn bucket_of(key: &[u8]) -> u32 {
    crc32c::crc32c(key) % DIGEST_BUCKETS
}

/// What an entry looks like to the digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState<'a> {
    /// A readable copy: its tag already binds key, version, tombstone flag and value.
    Healthy {
        version: Version,
        tombstone: bool,
        tag: &'a Tag,
    },
    /// A copy that failed a check, or one the server knows it lost: it must differ from every
    /// healthy copy so that the bucket is listed and the key repaired.
    Unusable,
}

fn entry_digest(key: &[u8], state: EntryState<'_>) -> [u8; 16] {
    let mut hasher = Sha256::new();
    match state {
        EntryState::Healthy {
            version,
            tombstone,
            tag,
        } => {
            hasher.update(b"votefs digest healthy");
            hasher.update((key.len() as u64).to_le_bytes());
            hasher.update(key);
            hasher.update(version.epoch.to_le_bytes());
            hasher.update(version.sequence.to_le_bytes());
            hasher.update(version.writer.to_le_bytes());
            hasher.update([u8::from(tombstone)]);
            hasher.update(tag);
        }
        EntryState::Unusable => {
            hasher.update(b"votefs digest unusable");
            hasher.update((key.len() as u64).to_le_bytes());
            hasher.update(key);
        }
    }
    let full = hasher.finalize();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

/// The digests of one server, one per bucket.
#[derive(Clone, Debug)]
pub struct BucketDigests {
    buckets: Vec<BucketDigest>,
    /// Per bucket, how many healthy tombstones of each epoch it holds, so that the oldest is
    /// known without a scan.
    tombstone_epochs: Vec<BTreeMap<u64, u32>>,
}

impl Default for BucketDigests {
    fn default() -> Self {
        Self {
            buckets: vec![
                BucketDigest {
                    digest: [0; 16],
                    entries: 0,
                    oldest_tombstone_epoch: u64::MAX,
                };
                DIGEST_BUCKETS as usize
            ],
            tombstone_epochs: vec![BTreeMap::new(); DIGEST_BUCKETS as usize],
        }
    }
}

impl BucketDigests {
    /// Account for a new entry of `key`.
    pub fn add(&mut self, key: &[u8], state: EntryState<'_>) {
        let bucket = bucket_of(key) as usize;
        self.toggle(bucket, key, state);
        let summary = &mut self.buckets[bucket];
        summary.entries = summary
            .entries
            .checked_add(1)
            .expect("a bucket holds fewer than 2^32 entries");
        if let EntryState::Healthy {
            version,
            tombstone: true,
            ..
        } = state
        {
            *self.tombstone_epochs[bucket]
                .entry(version.epoch)
                .or_insert(0) += 1;
            self.refresh_oldest_tombstone(bucket);
        }
    }

    /// Forget an entry of `key` that was added with exactly `state`.
    pub fn remove(&mut self, key: &[u8], state: EntryState<'_>) {
        let bucket = bucket_of(key) as usize;
        self.toggle(bucket, key, state);
        let summary = &mut self.buckets[bucket];
        summary.entries = summary
            .entries
            .checked_sub(1)
            .expect("only entries that were added are removed");
        if let EntryState::Healthy {
            version,
            tombstone: true,
            ..
        } = state
        {
            let epochs = &mut self.tombstone_epochs[bucket];
            let count = epochs
                .get_mut(&version.epoch)
                .expect("only tombstones that were added are removed");
            *count -= 1;
            if *count == 0 {
                epochs.remove(&version.epoch);
            }
            self.refresh_oldest_tombstone(bucket);
        }
    }

    fn toggle(&mut self, bucket: usize, key: &[u8], state: EntryState<'_>) {
        let entry = entry_digest(key, state);
        for (byte, entry_byte) in self.buckets[bucket].digest.iter_mut().zip(entry) {
            *byte ^= entry_byte;
        }
    }

    fn refresh_oldest_tombstone(&mut self, bucket: usize) {
        self.buckets[bucket].oldest_tombstone_epoch = self.tombstone_epochs[bucket]
            .keys()
            .next()
            .copied()
            .unwrap_or(u64::MAX);
    }

    pub fn buckets(&self) -> &[BucketDigest] {
        &self.buckets
    }
}

/// XOR `other` into `sum`: the digests of a bank are the XOR of its servers' digests.
pub fn combine(sum: &mut [u8; 16], other: &[u8; 16]) {
    for (byte, other_byte) in sum.iter_mut().zip(other) {
        *byte ^= other_byte;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(epoch: u64, sequence: u64) -> Version {
        Version {
            epoch,
            sequence,
            writer: 1,
        }
    }

    #[test]
    fn equal_sets_in_any_order_give_equal_digests() {
        let tag_a = [1u8; 32];
        let tag_b = [2u8; 32];
        let entries: Vec<(&[u8], EntryState<'_>)> = vec![
            (
                b"alpha",
                EntryState::Healthy {
                    version: version(1, 1),
                    tombstone: false,
                    tag: &tag_a,
                },
            ),
            (
                b"beta",
                EntryState::Healthy {
                    version: version(2, 5),
                    tombstone: true,
                    tag: &tag_b,
                },
            ),
            (b"gamma", EntryState::Unusable),
        ];
        let mut forward = BucketDigests::default();
        for (key, state) in &entries {
            forward.add(key, *state);
        }
        let mut backward = BucketDigests::default();
        for (key, state) in entries.iter().rev() {
            backward.add(key, *state);
        }
        assert_eq!(forward.buckets(), backward.buckets());
        let beta = bucket_of(b"beta") as usize;
        assert_eq!(forward.buckets()[beta].oldest_tombstone_epoch, 2);
        // Removing everything brings every bucket back to empty.
        for (key, state) in &entries {
            forward.remove(key, *state);
        }
        assert_eq!(forward.buckets(), BucketDigests::default().buckets());
    }

    #[test]
    fn any_difference_in_an_entry_changes_its_bucket() {
        let tag = [7u8; 32];
        let other_tag = [8u8; 32];
        let base = EntryState::Healthy {
            version: version(3, 3),
            tombstone: false,
            tag: &tag,
        };
        let variants = [
            EntryState::Healthy {
                version: version(3, 4),
                tombstone: false,
                tag: &tag,
            },
            EntryState::Healthy {
                version: version(3, 3),
                tombstone: true,
                tag: &tag,
            },
            EntryState::Healthy {
                version: version(3, 3),
                tombstone: false,
                tag: &other_tag,
            },
            EntryState::Unusable,
        ];
        let mut reference = BucketDigests::default();
        reference.add(b"key", base);
        for variant in variants {
            let mut changed = BucketDigests::default();
            changed.add(b"key", variant);
            assert_ne!(reference.buckets(), changed.buckets(), "{variant:?}");
        }
    }

    #[test]
    fn bank_digests_combine_servers_by_xor() {
        let tag = [9u8; 32];
        let keys: Vec<Vec<u8>> = (0..200u32).map(|n| n.to_le_bytes().to_vec()).collect();
        let state = EntryState::Healthy {
            version: version(1, 1),
            tombstone: false,
            tag: &tag,
        };
        let mut whole = BucketDigests::default();
        let mut even = BucketDigests::default();
        let mut odd = BucketDigests::default();
        for (index, key) in keys.iter().enumerate() {
            whole.add(key, state);
            if index % 2 == 0 {
                even.add(key, state);
            } else {
                odd.add(key, state);
            }
        }
        for bucket in 0..DIGEST_BUCKETS as usize {
            let mut sum = even.buckets()[bucket].digest;
            combine(&mut sum, &odd.buckets()[bucket].digest);
            assert_eq!(sum, whole.buckets()[bucket].digest);
        }
    }
}
