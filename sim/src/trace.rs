//! A running hash of everything a simulation does (bytes sent on every stream, every disk
//! operation), so that two runs of one seed can be compared exactly. madsim's own determinism
//! check compares only random draws.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shared by every node of one simulation.
#[derive(Clone, Default)]
pub struct Trace {
    hash: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
}

impl Trace {
    /// Fold `parts` into the hash (FNV-1a over the parts, order-sensitive).
    pub fn record(&self, parts: &[&[u8]]) {
        let mut hash = self.hash.load(Ordering::Relaxed);
        if hash == 0 {
            hash = 0xcbf2_9ce4_8422_2325;
        }
        for part in parts {
            for byte in part.iter() {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
            }
            hash ^= 0xFF;
            hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        }
        // madsim runs one task at a time, so load-then-store cannot interleave.
        self.hash.store(hash, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    pub fn hash(&self) -> u64 {
        self.hash.load(Ordering::Relaxed)
    }

    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}
