//! A running hash of everything a simulation does (bytes sent on every stream, every disk
//! operation), so that two runs of one seed can be compared exactly. madsim's own determinism
//! check compares only random draws.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use votefs::rng::{fnv1a_extend, FNV_OFFSET_BASIS};

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
            hash = FNV_OFFSET_BASIS;
        }
        hash = fnv1a_extend(hash, parts);
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
