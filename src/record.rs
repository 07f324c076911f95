//! Records: keys, logical versions and end-to-end tags (DESIGN §4).

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The longest key a record may have, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// The largest value a record may carry, in bytes.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Length of a record tag and of a frame MAC, in bytes.
pub const TAG_BYTES: usize = 32;
/// Length of the cluster key, in bytes.
pub const CLUSTER_KEY_BYTES: usize = 32;

/// Separates a key's partition from the rest: keys sharing the bytes before the first `#` are
/// placed on the same server of each bank, so that they can be listed together.
pub const PARTITION_SEPARATOR: u8 = b'#';

/// The secret every member of a cluster shares. It authenticates frames and record tags.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; CLUSTER_KEY_BYTES]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, not even in debug logs.
        formatter.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn from_bytes(bytes: [u8; CLUSTER_KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// Parse the key file format: 64 hexadecimal digits, surrounding white space ignored.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() != CLUSTER_KEY_BYTES * 2 {
            return Err(format!(
                "expected {} hexadecimal digits, found {} characters",
                CLUSTER_KEY_BYTES * 2,
                text.len()
            ));
        }
        let mut bytes = [0u8; CLUSTER_KEY_BYTES];
        for (index, byte) in bytes.iter_mut().enumerate() {
            let pair = &text[index * 2..index * 2 + 2];
            *byte = u8::from_str_radix(pair, 16)
                .map_err(|_| format!("{pair:?} is not a hexadecimal byte"))?;
        }
        Ok(Self(bytes))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// A keyed MAC over `parts` in a domain of its own, so that a tag can never pass for a frame
    /// MAC or the other way round.
    pub fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// Compare two MACs in time independent of where they differ.
pub fn macs_equal(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// A logical version, ordered lexicographically by epoch, then sequence, then writer. Never a wall
/// clock: the epoch is the writer's fencing epoch and the sequence grows within it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub epoch: u64,
    pub sequence: u64,
    pub writer: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}.{}@{:x}",
            self.epoch, self.sequence, self.writer
        )
    }
}

pub type Tag = [u8; TAG_BYTES];

/// `key → (version, tombstone?, value, tag)`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    // As byte strings, not sequences of single bytes: serde would otherwise visit a value byte by
    // byte, which cost ~40 % of the CPU of a 1 MiB put.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub version: Version,
    pub tombstone: bool,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub tag: Tag,
}

impl fmt::Debug for Record {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Record")
            .field("key", &display_key(&self.key))
            .field("version", &self.version)
            .field("tombstone", &self.tombstone)
            .field("value_bytes", &self.value.len())
            .finish()
    }
}

const TAG_DOMAIN: &[u8] = b"votefs record tag v1\0";

/// The tag of a record's content under `key`.
pub fn compute_tag(
    cluster_key: &ClusterKey,
    key: &[u8],
    version: Version,
    tombstone: bool,
    value: &[u8],
) -> Tag {
    cluster_key.mac(
        TAG_DOMAIN,
        &[
            key,
            &version.epoch.to_le_bytes(),
            &version.sequence.to_le_bytes(),
            &version.writer.to_le_bytes(),
            &[u8::from(tombstone)],
            value,
        ],
    )
}

impl Record {
    /// A new record, tagged under `cluster_key`.
    pub fn new(
        cluster_key: &ClusterKey,
        key: Vec<u8>,
        version: Version,
        tombstone: bool,
        value: Vec<u8>,
    ) -> Self {
        let tag = compute_tag(cluster_key, &key, version, tombstone, &value);
        Self {
            key,
            version,
            tombstone,
            value,
            tag,
        }
    }

    /// Whether the tag matches the content: false for rot, torn writes and forgeries alike.
    pub fn tag_is_valid(&self, cluster_key: &ClusterKey) -> bool {
        let expected = compute_tag(
            cluster_key,
            &self.key,
            self.version,
            self.tombstone,
            &self.value,
        );
        macs_equal(&expected, &self.tag)
    }
}

/// The bytes of `key` that decide its placement: everything before the first `#`, or the whole
/// key if it has none.
pub fn partition_of(key: &[u8]) -> &[u8] {
    match key.iter().position(|byte| *byte == PARTITION_SEPARATOR) {
        Some(position) => &key[..position],
        None => key,
    }
}

/// Check a key's shape; returns a message naming the problem.
pub fn validate_key(key: &[u8]) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key must not be empty".into());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "a key is at most {MAX_KEY_BYTES} bytes, this one has {}",
            key.len()
        ));
    }
    Ok(())
}

/// A key for humans: UTF-8 as is, other bytes escaped.
pub fn display_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::from_bytes([7; CLUSTER_KEY_BYTES])
    }

    #[test]
    fn tag_detects_any_change() {
        let version = Version {
            epoch: 1,
            sequence: 2,
            writer: 3,
        };
        let record = Record::new(&key(), b"a".to_vec(), version, false, b"value".to_vec());
        assert!(record.tag_is_valid(&key()));
        let mut changed = record.clone();
        changed.value[0] ^= 1;
        assert!(!changed.tag_is_valid(&key()));
        let mut changed = record.clone();
        changed.version.sequence += 1;
        assert!(!changed.tag_is_valid(&key()));
        let mut changed = record.clone();
        changed.tombstone = true;
        assert!(!changed.tag_is_valid(&key()));
        let mut changed = record.clone();
        changed.key = b"b".to_vec();
        assert!(!changed.tag_is_valid(&key()));
        assert!(!record.tag_is_valid(&ClusterKey::from_bytes([8; CLUSTER_KEY_BYTES])));
    }

    #[test]
    fn versions_order_by_epoch_then_sequence() {
        let older = Version {
            epoch: 1,
            sequence: 99,
            writer: 9,
        };
        let newer = Version {
            epoch: 2,
            sequence: 1,
            writer: 1,
        };
        assert!(older < newer);
    }

    #[test]
    fn partition_and_hex() {
        assert_eq!(partition_of(b"dirent/5#name#x"), b"dirent/5");
        assert_eq!(partition_of(b"inode/5"), b"inode/5");
        let parsed = ClusterKey::from_hex(&key().to_hex()).unwrap();
        assert_eq!(parsed, key());
        assert!(ClusterKey::from_hex("zz").is_err());
        assert!(ClusterKey::from_hex(&"g".repeat(64)).is_err());
        assert_eq!(format!("{:?}", key()), "ClusterKey(..)");
    }
}
