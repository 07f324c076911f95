//! The step ledger: record writes of stored intents that are not applied yet.
//!
//! An operation is acknowledged once its intent is stored on a majority; its steps are applied
//! while the next operation's intent is being stored, so a namespace operation costs one round
//! trip instead of two. Until a step is applied, the servers hold an older record than the one
//! the mount shows. Two rules keep that invisible:
//!
//! - every read that misses the mount's caches looks in the ledger before asking the servers;
//! - every write of a key outside an intent first claims the key, which waits for any write of it
//!   already in flight, so one key's writes reach the servers in the order the mount made them.
//!
//! A pending write keeps its intent's slot in use: a slot is reused only when no pending write
//! refers to it, so a crashed mount's successor always finds the intent of every step that was
//! not applied.

use std::collections::{BTreeMap, BTreeSet};

use crate::record::Version;

/// One key's newest write that is not applied yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWrite {
    /// The record's new value; `None` deletes it.
    pub value: Option<Vec<u8>>,
    /// The intent slot that holds the intent this write belongs to.
    pub slot: usize,
    /// The version the intent was stored with; identifies the write.
    pub intent_version: Version,
}

/// A write taken out of the ledger to be applied, still counted as pending until it finishes.
#[derive(Clone, Debug)]
pub struct TakenWrite {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub intent_version: Version,
}

#[derive(Default, Debug)]
pub struct StepLedger {
    pending: BTreeMap<Vec<u8>, PendingWrite>,
    /// Keys with a write in flight: a pending write being applied, or a direct write claimed
    /// with [`StepLedger::claim`].
    in_flight: BTreeSet<Vec<u8>>,
}

impl StepLedger {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// The value the mount shows for `key` when a write of it is pending: `Some(None)` for a
    /// pending delete, `None` when nothing is pending (the servers' record is current).
    pub fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.pending.get(key).map(|write| write.value.clone())
    }

    /// Whether a write of some key under `prefix` is pending or in flight.
    pub fn touches_prefix(&self, prefix: &[u8]) -> bool {
        let starts = |key: &&Vec<u8>| key.starts_with(prefix);
        self.pending
            .range(prefix.to_vec()..)
            .next()
            .is_some_and(|(key, _)| starts(&key))
            || self
                .in_flight
                .range(prefix.to_vec()..)
                .next()
                .is_some_and(|key| starts(&key))
    }

    pub fn slot_in_use(&self, slot: usize) -> bool {
        self.pending.values().any(|write| write.slot == slot)
    }

    /// Record the steps of an intent just stored in `slot` with `intent_version`; they replace
    /// any older pending write of the same keys (the newer intent covers those keys now).
    pub fn record(
        &mut self,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        slot: usize,
        intent_version: Version,
    ) {
        for (key, value) in writes {
            if let Some(older) = self.pending.get(&key) {
                assert!(
                    older.intent_version < intent_version,
                    "intents are recorded in the order they were stored"
                );
            }
            self.pending.insert(
                key,
                PendingWrite {
                    value,
                    slot,
                    intent_version,
                },
            );
        }
    }

    /// Take the pending writes that are not in flight and not under `except`, and whose key
    /// starts with `prefix`, marking them in flight. They stay pending until
    /// [`StepLedger::finish_taken`].
    pub fn take(&mut self, except: &BTreeSet<Vec<u8>>, prefix: &[u8]) -> Vec<TakenWrite> {
        let mut taken = Vec::new();
        for (key, write) in self.pending.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if except.contains(key) || self.in_flight.contains(key) {
                continue;
            }
            taken.push(TakenWrite {
                key: key.clone(),
                value: write.value.clone(),
                intent_version: write.intent_version,
            });
        }
        for write in &taken {
            self.in_flight.insert(write.key.clone());
        }
        taken
    }

    /// Whether any key under `prefix` has a write in flight.
    pub fn in_flight_under(&self, prefix: &[u8]) -> bool {
        self.in_flight
            .range(prefix.to_vec()..)
            .next()
            .is_some_and(|key| key.starts_with(prefix))
    }

    /// A taken write finished; when it was stored, it is no longer pending.
    pub fn finish_taken(&mut self, write: &TakenWrite, stored: bool) {
        let was_in_flight = self.in_flight.remove(&write.key);
        assert!(
            was_in_flight,
            "a taken write is in flight until it finishes"
        );
        if stored
            && self
                .pending
                .get(&write.key)
                .is_some_and(|pending| pending.intent_version == write.intent_version)
        {
            self.pending.remove(&write.key);
        }
    }

    /// Claim `keys` for a write outside an intent: all of them, or none when one has a write in
    /// flight (the caller waits for a change and tries again). Returns, per key, the version of
    /// the pending write the direct write will supersede.
    pub fn claim(&mut self, keys: &[Vec<u8>]) -> Option<Vec<Option<Version>>> {
        if keys.iter().any(|key| self.in_flight.contains(key)) {
            return None;
        }
        let mut superseded = Vec::with_capacity(keys.len());
        for key in keys {
            // A key written twice in one claim is a caller bug: the second write would race the first.
            assert!(
                self.in_flight.insert(key.clone()),
                "a key claimed twice at once"
            );
            superseded.push(self.pending.get(key).map(|write| write.intent_version));
        }
        Some(superseded)
    }

    /// A claimed direct write finished. When it was stored, the pending write it superseded
    /// (the mount's newer value includes that step's effect) is done; a pending write recorded
    /// since the claim is newer and stays.
    pub fn finish_claim(&mut self, key: &[u8], superseded: Option<Version>, stored: bool) {
        let was_in_flight = self.in_flight.remove(key);
        assert!(
            was_in_flight,
            "a claimed key is in flight until its write finishes"
        );
        if let (true, Some(version)) = (stored, superseded) {
            if self
                .pending
                .get(key)
                .is_some_and(|pending| pending.intent_version == version)
            {
                self.pending.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(counter: u64) -> Version {
        Version {
            epoch: 1,
            sequence: counter,
            writer: 7,
        }
    }

    fn writes(keys: &[&str]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        keys.iter()
            .map(|key| (key.as_bytes().to_vec(), Some(key.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn pending_writes_show_through_until_applied() {
        let mut ledger = StepLedger::default();
        ledger.record(writes(&["a", "b"]), 0, version(1));
        assert_eq!(ledger.lookup(b"a"), Some(Some(b"a".to_vec())));
        assert!(ledger.slot_in_use(0));
        assert!(!ledger.slot_in_use(1));
        let taken = ledger.take(&BTreeSet::new(), b"");
        assert_eq!(taken.len(), 2);
        // Taken but not finished: still visible, and not taken twice.
        assert!(ledger.take(&BTreeSet::new(), b"").is_empty());
        assert_eq!(ledger.lookup(b"b"), Some(Some(b"b".to_vec())));
        ledger.finish_taken(&taken[0], true);
        ledger.finish_taken(&taken[1], false);
        assert_eq!(ledger.lookup(b"a"), None);
        assert_eq!(ledger.lookup(b"b"), Some(Some(b"b".to_vec())));
        assert!(
            ledger.slot_in_use(0),
            "a failed write keeps its intent's slot"
        );
    }

    #[test]
    fn a_newer_intent_replaces_and_a_claim_waits_for_flight() {
        let mut ledger = StepLedger::default();
        ledger.record(writes(&["k"]), 0, version(1));
        let except: BTreeSet<Vec<u8>> = [b"k".to_vec()].into();
        assert!(
            ledger.take(&except, b"").is_empty(),
            "superseded keys are skipped"
        );
        ledger.record(vec![(b"k".to_vec(), None)], 1, version(2));
        assert_eq!(ledger.lookup(b"k"), Some(None));
        assert!(!ledger.slot_in_use(0));
        let taken = ledger.take(&BTreeSet::new(), b"");
        assert!(ledger.claim(&[b"k".to_vec()]).is_none(), "in flight");
        ledger.finish_taken(&taken[0], true);
        let superseded = ledger.claim(&[b"k".to_vec()]).expect("free now");
        assert_eq!(superseded, vec![None]);
        ledger.finish_claim(b"k", None, true);
        assert!(ledger.is_empty());
    }

    #[test]
    fn a_direct_write_retires_only_the_write_it_superseded() {
        let mut ledger = StepLedger::default();
        ledger.record(writes(&["k", "other"]), 0, version(1));
        let superseded = ledger.claim(&[b"k".to_vec()]).unwrap();
        assert_eq!(superseded, vec![Some(version(1))]);
        // An intent recorded while the direct write is out is newer than it.
        ledger.record(writes(&["k"]), 1, version(2));
        ledger.finish_claim(b"k", superseded[0], true);
        assert_eq!(ledger.lookup(b"k"), Some(Some(b"k".to_vec())));
        assert!(ledger.touches_prefix(b"ot"));
        assert!(!ledger.touches_prefix(b"z"));
        assert!(!ledger.in_flight_under(b""));
    }
}
