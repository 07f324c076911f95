//! Multi-record operations made atomic with an intent record (DESIGN §7).
//!
//! An operation that changes several records first stores an intent listing every record's end
//! state, then applies the steps. All intents share one slot: namespace operations are serialised
//! and each one waits for its steps, so only the newest intent can be unfinished. A later mount
//! (or the next operation, after a failure) redoes a step only where the record is older than the
//! intent: a newer record was either written by that step already or by a later operation, and
//! must stay.

use crate::record::Version;

use super::types::{keys, Intent, IntentStep};
use super::{decode, encode, io_error, Errno, FileSystem, NamespaceState, FAN_OUT};
use crate::env::fan_out;
use crate::env::Env;

/// One record write a step stands for: the key and its new value (`None` deletes it).
type RecordWrite = (Vec<u8>, Option<Vec<u8>>);

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
    /// Apply `steps` atomically. The caller has already put the end state in memory.
    pub(super) async fn commit(
        &self,
        namespace: &mut NamespaceState,
        operation: &str,
        steps: Vec<IntentStep>,
    ) -> Result<(), Errno> {
        self.finish_pending_intent(namespace).await?;
        let writes = record_writes(&steps);
        let skip_intent =
            self.shared.client.planted_bug() == Some(crate::planted::PlantedBug::SkipIntent);
        if writes.len() <= 1 || skip_intent {
            self.apply_writes(writes, None).await?;
            self.apply_to_cache(&steps);
            return Ok(());
        }
        let intent = Intent {
            operation: operation.to_string(),
            steps,
        };
        Self::maybe_stall(&self.shared.stall_countdown).await;
        let version = self
            .shared
            .client
            .put(keys::INTENT, &encode(&intent))
            .await
            .map_err(io_error)?;
        // From here the operation will happen (now or by a redo): memory shows its end state.
        self.apply_to_cache(&intent.steps);
        match self.apply_writes(writes, None).await {
            Ok(()) => Ok(()),
            Err(error) => {
                tracing::warn!("{operation} did not finish ({error}); it is redone before the next change to the namespace");
                namespace.pending_intent = Some((intent, version));
                Err(error)
            }
        }
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

    /// Redo the intent an earlier operation of this mount left unfinished.
    pub(super) async fn finish_pending_intent(
        &self,
        namespace: &mut NamespaceState,
    ) -> Result<(), Errno> {
        if let Some((intent, version)) = namespace.pending_intent.clone() {
            self.apply_writes(record_writes(&intent.steps), Some(version))
                .await?;
            namespace.pending_intent = None;
        }
        Ok(())
    }

    /// Redo the intent a crashed mount left in the slot, then clear the slot. Returns the
    /// operation and how many record writes were redone.
    pub(super) async fn redo_stored_intent(&self) -> Result<Option<(String, usize)>, Errno> {
        let Some(record) = self
            .shared
            .client
            .read_record(keys::INTENT)
            .await
            .map_err(io_error)?
        else {
            return Ok(None);
        };
        if record.tombstone {
            return Ok(None);
        }
        let intent: Intent = decode(keys::INTENT, &record.value)?;
        let writes = record_writes(&intent.steps);
        let redone = self.count_older(&writes, record.version).await?;
        self.apply_writes(writes, Some(record.version)).await?;
        self.shared
            .client
            .delete(keys::INTENT)
            .await
            .map_err(io_error)?;
        tracing::info!(
            operation = intent.operation,
            redone,
            "finished an operation a crashed mount left half done"
        );
        Ok(Some((intent.operation, redone)))
    }

    async fn count_older(&self, writes: &[RecordWrite], version: Version) -> Result<usize, Errno> {
        let client = self.shared.client.clone();
        let keys: Vec<Vec<u8>> = writes.iter().map(|(key, _)| key.clone()).collect();
        let answers = fan_out(&self.shared.env, keys, FAN_OUT, move |key| {
            let client = client.clone();
            async move { client.read_record(&key).await }
        })
        .await;
        let mut older = 0;
        for answer in answers {
            match answer.map_err(io_error)? {
                Some(record) if record.version > version => {}
                _ => older += 1,
            }
        }
        Ok(older)
    }

    /// Store every write; with `only_older_than`, skip keys whose record is newer than that.
    async fn apply_writes(
        &self,
        writes: Vec<RecordWrite>,
        only_older_than: Option<Version>,
    ) -> Result<(), Errno> {
        let client = self.shared.client.clone();
        let countdown = self.shared.stall_countdown.clone();
        let results = fan_out(&self.shared.env, writes, FAN_OUT, move |(key, value)| {
            let client = client.clone();
            let countdown = countdown.clone();
            async move {
                Self::maybe_stall(&countdown).await;
                if let Some(version) = only_older_than {
                    if let Some(record) = client.read_record(&key).await? {
                        if record.version > version {
                            return Ok(());
                        }
                    }
                }
                match value {
                    Some(value) => client.put(&key, &value).await.map(|_| ()),
                    None => client.delete(&key).await.map(|_| ()),
                }
            }
        })
        .await;
        for result in results {
            result.map_err(io_error)?;
        }
        Ok(())
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
