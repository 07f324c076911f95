//! Multi-record operations made atomic with intent records (DESIGN §7).
//!
//! An operation that changes several records first stores an intent listing every record's end
//! state; once the intent is on a majority the operation is acknowledged, and its steps are
//! applied while the next operation stores its own intent (see [`super::ledger`]). Namespace
//! operations are serialised, and two intent slots alternate, so at most two intents can have
//! unapplied steps. A later mount redoes them in the order they were stored: for every key, the
//! newest intent that writes it is applied where the record is older than that intent. A newer
//! record was written by the step already or by a later operation, and must stay.

use std::collections::{BTreeMap, BTreeSet};

use super::ledger::TakenWrite;
use super::types::{keys, Intent, IntentStep};
use super::{decode, encode, io_error, Errno, FileSystem, NamespaceState, FAN_OUT};
use crate::env::{fan_out, Env};
use crate::record::Version;

/// One record write a step stands for: the key and its new value (`None` deletes it).
pub(super) type RecordWrite = (Vec<u8>, Option<Vec<u8>>);

/// A write to redo where the record is older than the version.
type ConditionalWrite = (Vec<u8>, Option<Vec<u8>>, Version);

/// Rounds [`FileSystem::settle`] makes at most.
const SETTLE_ROUNDS_MAX: usize = 64;

fn record_writes(steps: &[IntentStep]) -> Vec<RecordWrite> {
    let mut writes = Vec::new();
    for step in steps {
        match step {
            IntentStep::PutInode(inode) => {
                writes.push((keys::inode(inode.ino), Some(encode(inode))))
            }
            IntentStep::DeleteInode(ino) => writes.push((keys::inode(*ino), None)),
            IntentStep::PutEntry {
                directory,
                name,
                entry,
            } => writes.push((keys::directory_entry(*directory, name), Some(encode(entry)))),
            IntentStep::DeleteEntry { directory, name } => {
                writes.push((keys::directory_entry(*directory, name), None))
            }
            IntentStep::DeleteChunks { ino, first, end } => {
                for index in *first..*end {
                    writes.push((keys::chunk(*ino, index), None));
                }
            }
            IntentStep::PutOrphan(ino) => writes.push((keys::orphan(*ino), Some(Vec::new()))),
            IntentStep::DeleteOrphan(ino) => writes.push((keys::orphan(*ino), None)),
        }
    }
    writes
}

impl<E: Env> FileSystem<E> {
    /// Apply `steps` atomically. The caller has already put the end state in memory. Returns
    /// once the operation is durable; its steps may still be on their way (see the module doc).
    pub(super) async fn commit(
        &self,
        namespace: &mut NamespaceState,
        operation: &str,
        steps: Vec<IntentStep>,
    ) -> Result<(), Errno> {
        let writes = record_writes(&steps);
        let skip_intent =
            self.shared.client.planted_bug() == Some(crate::planted::PlantedBug::SkipIntent);
        if writes.len() <= 1 || skip_intent {
            self.write_directly(writes).await?;
            self.apply_to_cache(&steps);
            return Ok(());
        }
        let slot = match self.free_intent_slot(namespace) {
            Some(slot) => slot,
            None => {
                // Both slots hold intents with unapplied steps (an earlier application failed):
                // apply them before either slot can be reused.
                self.settle(b"").await?;
                self.free_intent_slot(namespace)
                    .expect("no pending step refers to a slot once settled")
            }
        };
        let new_keys: BTreeSet<Vec<u8>> = writes.iter().map(|(key, _)| key.clone()).collect();
        // Keys this operation writes again are covered by its intent; the rest of the earlier
        // steps go out while the intent is stored.
        let earlier = self.shared.ledger.lock().unwrap().take(&new_keys, b"");
        let intent = Intent {
            operation: operation.to_string(),
            steps,
        };
        let encoded = encode(&intent);
        let store_intent = async {
            Self::maybe_stall(&self.shared.stall_countdown).await;
            self.shared
                .client
                .put(keys::INTENT_SLOTS[slot], &encoded)
                .await
        };
        let (stored, applied) = tokio::join!(store_intent, self.apply_taken(earlier));
        if let Err(error) = applied {
            // The earlier operation is durable in its intent; its steps stay pending and go out
            // with the next operation (or are redone by the next mount).
            tracing::warn!("steps of an earlier operation are not applied yet ({error:?})");
        }
        let version = stored.map_err(io_error)?;
        // From here the operation will happen (its steps now, or by a redo): memory shows its
        // end state.
        self.apply_to_cache(&intent.steps);
        self.shared
            .ledger
            .lock()
            .unwrap()
            .record(writes, slot, version);
        namespace.last_intent_slot = slot;
        Ok(())
    }

    /// A slot whose intent has no unapplied step, preferring the one the last intent did not use.
    fn free_intent_slot(&self, namespace: &NamespaceState) -> Option<usize> {
        let ledger = self.shared.ledger.lock().unwrap();
        let preferred = (namespace.last_intent_slot + 1) % keys::INTENT_SLOTS.len();
        (0..keys::INTENT_SLOTS.len())
            .map(|offset| (preferred + offset) % keys::INTENT_SLOTS.len())
            .find(|slot| !ledger.slot_in_use(*slot))
    }

    /// Store pending writes taken from the ledger, and tell the ledger how each went.
    async fn apply_taken(&self, taken: Vec<TakenWrite>) -> Result<(), Errno> {
        if taken.is_empty() {
            return Ok(());
        }
        let client = self.shared.client.clone();
        let countdown = self.shared.stall_countdown.clone();
        let results = fan_out(&self.shared.env, taken, FAN_OUT, move |write| {
            let client = client.clone();
            let countdown = countdown.clone();
            async move {
                Self::maybe_stall(&countdown).await;
                let result = match &write.value {
                    Some(value) => client.put(&write.key, value).await.map(|_| ()),
                    None => client.delete(&write.key).await.map(|_| ()),
                };
                (write, result)
            }
        })
        .await;
        let mut first_error = None;
        {
            let mut ledger = self.shared.ledger.lock().unwrap();
            for (write, result) in &results {
                ledger.finish_taken(write, result.is_ok());
            }
        }
        self.shared.ledger_changed.notify_waiters();
        for (_, result) in results {
            if let Err(error) = result {
                first_error.get_or_insert(io_error(error));
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Apply every pending step under `prefix` (all of them for an empty prefix), waiting for
    /// those in flight, so the servers hold what the mount shows there.
    pub(super) async fn settle(&self, prefix: &[u8]) -> Result<(), Errno> {
        // Each round applies what is pending or waits for a write in flight to finish; writes
        // added meanwhile by other operations are not waited for beyond this bound.
        for _ in 0..SETTLE_ROUNDS_MAX {
            let changed = self.shared.ledger_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let taken = {
                let mut ledger = self.shared.ledger.lock().unwrap();
                let taken = ledger.take(&BTreeSet::new(), prefix);
                if taken.is_empty() && !ledger.in_flight_under(prefix) {
                    return Ok(());
                }
                taken
            };
            if taken.is_empty() {
                changed.await;
            } else {
                self.apply_taken(taken).await?;
            }
        }
        Ok(())
    }

    /// Store writes outside an intent, each after any write of its key already in flight, so
    /// that the servers see one key's writes in the order the mount made them.
    pub(super) async fn write_directly(&self, writes: Vec<RecordWrite>) -> Result<(), Errno> {
        if writes.is_empty() {
            return Ok(());
        }
        let claimed_keys: Vec<Vec<u8>> = writes.iter().map(|(key, _)| key.clone()).collect();
        let superseded = loop {
            let changed = self.shared.ledger_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(superseded) = self.shared.ledger.lock().unwrap().claim(&claimed_keys) {
                break superseded;
            }
            changed.await;
        };
        let client = self.shared.client.clone();
        let countdown = self.shared.stall_countdown.clone();
        let results = fan_out(
            &self.shared.env,
            writes.into_iter().zip(superseded).collect(),
            FAN_OUT,
            move |((key, value), superseded)| {
                let client = client.clone();
                let countdown = countdown.clone();
                async move {
                    Self::maybe_stall(&countdown).await;
                    let result = match value {
                        Some(value) => client.put(&key, &value).await.map(|_| ()),
                        None => client.delete(&key).await.map(|_| ()),
                    };
                    (key, superseded, result)
                }
            },
        )
        .await;
        {
            let mut ledger = self.shared.ledger.lock().unwrap();
            for (key, superseded, result) in &results {
                ledger.finish_claim(key, *superseded, result.is_ok());
            }
        }
        self.shared.ledger_changed.notify_waiters();
        match results.into_iter().find_map(|(_, _, result)| result.err()) {
            Some(error) => Err(io_error(error)),
            None => Ok(()),
        }
    }

    /// The value a pending step gives `key`, if one is pending (see [`super::ledger`]).
    pub(super) fn pending_value(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.shared.ledger.lock().unwrap().lookup(key)
    }

    fn apply_to_cache(&self, steps: &[IntentStep]) {
        for step in steps {
            match step {
                IntentStep::PutInode(inode) => self.set_cached_inode(inode.clone()),
                IntentStep::DeleteInode(ino) => self.forget_cached_inode(*ino),
                IntentStep::PutEntry {
                    directory,
                    name,
                    entry,
                } => self
                    .shared
                    .entries
                    .lock()
                    .unwrap()
                    .insert(*directory, name, Some(*entry)),
                IntentStep::DeleteEntry { directory, name } => self
                    .shared
                    .entries
                    .lock()
                    .unwrap()
                    .insert(*directory, name, None),
                _ => {}
            }
        }
    }

    /// Redo the intents a crashed mount left in the slots, then clear the slots. Returns the
    /// operations and how many record writes were redone.
    pub(super) async fn redo_stored_intents(&self) -> Result<Option<(String, usize)>, Errno> {
        let client = self.shared.client.clone();
        let slots: Vec<&'static [u8]> = keys::INTENT_SLOTS.to_vec();
        let answers = fan_out(&self.shared.env, slots, FAN_OUT, move |slot| {
            let client = client.clone();
            async move { client.read_record(slot).await }
        })
        .await;
        let mut stored = Vec::new();
        for (slot, answer) in keys::INTENT_SLOTS.iter().zip(answers) {
            match answer.map_err(io_error)? {
                Some(record) if !record.tombstone => {
                    let intent: Intent = decode(slot, &record.value)?;
                    stored.push((record.version, *slot, intent));
                }
                _ => {}
            }
        }
        if stored.is_empty() {
            return Ok(None);
        }
        stored.sort_by_key(|(version, _, _)| *version);
        // For every key, the newest intent that writes it decides its end state.
        let mut newest: BTreeMap<Vec<u8>, (Option<Vec<u8>>, Version)> = BTreeMap::new();
        for (version, _, intent) in &stored {
            for (key, value) in record_writes(&intent.steps) {
                newest.insert(key, (value, *version));
            }
        }
        let writes: Vec<ConditionalWrite> = newest
            .into_iter()
            .map(|(key, (value, version))| (key, value, version))
            .collect();
        let redone = self.apply_where_older(writes).await?;
        let slots: Vec<&'static [u8]> = stored.iter().map(|(_, slot, _)| *slot).collect();
        let client = self.shared.client.clone();
        let cleared = fan_out(&self.shared.env, slots, FAN_OUT, move |slot| {
            let client = client.clone();
            async move { client.delete(slot).await }
        })
        .await;
        for result in cleared {
            result.map_err(io_error)?;
        }
        let operations: Vec<&str> = stored
            .iter()
            .map(|(_, _, intent)| intent.operation.as_str())
            .collect();
        let operations = operations.join(", ");
        tracing::info!(
            operations,
            redone,
            "finished operations a crashed mount left half done"
        );
        Ok(Some((operations, redone)))
    }

    /// Store each write whose record is older than its intent's version; returns how many were
    /// stored.
    async fn apply_where_older(&self, writes: Vec<ConditionalWrite>) -> Result<usize, Errno> {
        let client = self.shared.client.clone();
        let results = fan_out(
            &self.shared.env,
            writes,
            FAN_OUT,
            move |(key, value, version)| {
                let client = client.clone();
                async move {
                    if let Some(record) = client.read_record(&key).await? {
                        if record.version > version {
                            return Ok(false);
                        }
                    }
                    match value {
                        Some(value) => client.put(&key, &value).await.map(|_| true),
                        None => client.delete(&key).await.map(|_| true),
                    }
                }
            },
        )
        .await;
        let mut redone = 0;
        for result in results {
            if result.map_err(io_error)? {
                redone += 1;
            }
        }
        Ok(redone)
    }

    /// Remove inodes that were unlinked while open when their mount went away.
    pub(super) async fn remove_orphans(&self) -> Result<u64, Errno> {
        let orphans = self
            .shared
            .client
            .list(keys::ORPHAN_PREFIX)
            .await
            .map_err(io_error)?;
        let mut removed = 0;
        for key in orphans {
            let Some(ino) = keys::orphan_inode(&key) else {
                tracing::warn!(
                    "ignoring a malformed orphan record {}",
                    crate::record::display_key(&key)
                );
                continue;
            };
            let mut namespace = self.shared.namespace.lock().await;
            let mut steps = Vec::new();
            match self.inode(ino).await {
                Ok(inode) => {
                    if inode.nlink == 0 {
                        steps.push(IntentStep::DeleteChunks {
                            ino,
                            first: 0,
                            end: inode.stored_chunk_end(),
                        });
                        steps.push(IntentStep::DeleteInode(ino));
                    }
                }
                Err(Errno::ENOENT) => {}
                Err(error) => return Err(error),
            }
            steps.push(IntentStep::DeleteOrphan(ino));
            self.commit(&mut namespace, "remove orphan", steps).await?;
            self.forget_cached_inode(ino);
            removed += 1;
        }
        Ok(removed)
    }
}
