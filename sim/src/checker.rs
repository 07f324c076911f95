//! Checks over a run's history (DESIGN §8): no wrong bytes ever; no read older than the last
//! write acknowledged before it began; never a newer-then-older pair of reads; no write
//! acknowledged for a client after a newer mount fenced it.

use std::collections::BTreeMap;
use std::time::Duration;

use votefs::record::{display_key, Version};

use crate::workload::{Operation, OperationKind, Outcome};

/// When each client was fenced: the time a newer client finished taking its epoch.
pub type FenceTimes = BTreeMap<u64, Duration>;

fn is_write(operation: &Operation) -> bool {
    matches!(
        operation.kind,
        OperationKind::Put { .. } | OperationKind::Delete
    )
}

/// Every violation found, described for a human (empty when the history is correct).
pub fn check_history(operations: &[Operation], fenced_at: &FenceTimes) -> Vec<String> {
    let mut violations = Vec::new();
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for operation in operations {
        by_key.entry(&operation.key).or_default().push(operation);
        if let Outcome::WrongBytes(why) = &operation.outcome {
            violations.push(format!(
                "op {} read {} and got wrong bytes: {why}",
                operation.id,
                display_key(&operation.key)
            ));
        }
        if let (Outcome::Written(_), Some(fence)) =
            (&operation.outcome, fenced_at.get(&operation.client))
        {
            if is_write(operation) && operation.started > *fence {
                violations.push(format!(
                    "op {} by client {} was acknowledged although a newer mount fenced that client at {:?} (the write began at {:?})",
                    operation.id, operation.client, fence, operation.started
                ));
            }
        }
    }
    for (key, operations) in by_key {
        check_key(key, &operations, &mut violations);
    }
    violations
}

/// Reads that returned the value of a write that was never acknowledged (it failed, or its
/// client died): the indeterminate writes that write-back must make stick.
pub fn reads_of_indeterminate_writes(operations: &[Operation]) -> u64 {
    operations
        .iter()
        .filter(|operation| match &operation.outcome {
            Outcome::Read {
                value_op: Some(op), ..
            } => operations
                .get(*op as usize)
                .is_some_and(|put| !matches!(put.outcome, Outcome::Written(_))),
            _ => false,
        })
        .count() as u64
}

struct ReadSeen {
    id: u64,
    started: Duration,
    ended: Duration,
    version: Option<Version>,
}

fn check_key(key: &[u8], operations: &[&Operation], violations: &mut Vec<String>) {
    let name = display_key(key);
    let puts: BTreeMap<u64, &Operation> = operations
        .iter()
        .filter(|operation| matches!(operation.kind, OperationKind::Put { .. }))
        .map(|operation| (operation.id, *operation))
        .collect();
    let acknowledged: Vec<(Duration, Version, u64)> = operations
        .iter()
        .filter(|operation| is_write(operation))
        .filter_map(|operation| match (&operation.outcome, operation.ended) {
            (Outcome::Written(version), Some(ended)) => Some((ended, *version, operation.id)),
            _ => None,
        })
        .collect();
    let mut reads = Vec::new();
    for operation in operations {
        let Outcome::Read {
            version,
            tombstone,
            value_op,
        } = &operation.outcome
        else {
            continue;
        };
        let ended = operation.ended.expect("a read with an outcome has ended");
        // The scrubber drops tombstones every copy holds: a key read as absent may have been
        // deleted by any delete that began before the read ended, and reads at that delete's
        // version. An indeterminate delete's version is unknown: such a read proves nothing
        // either way and is not judged.
        let deletes_before = || {
            operations
                .iter()
                .filter(move |other| other.kind == OperationKind::Delete && other.started <= ended)
        };
        let absent = version.is_none() && !*tombstone && value_op.is_none();
        if absent && deletes_before().any(|delete| !matches!(delete.outcome, Outcome::Written(_))) {
            continue;
        }
        let version = &if absent {
            deletes_before()
                .filter_map(|delete| match delete.outcome {
                    Outcome::Written(written) => Some(written),
                    _ => None,
                })
                .max()
        } else {
            *version
        };
        match value_op {
            Some(op) => match puts.get(op) {
                None => violations.push(format!(
                    "op {} read {name} and got the value of op {op}, which never wrote {name}",
                    operation.id
                )),
                Some(put) => {
                    if put.started > ended {
                        violations.push(format!(
                            "op {} read {name} and saw op {op}'s value before op {op} began",
                            operation.id
                        ));
                    }
                    if let Outcome::Written(written) = put.outcome {
                        if Some(written) != *version {
                            violations.push(format!(
                                "op {} read op {op}'s value of {name} at version {version:?}, but it was written at {written}",
                                operation.id
                            ));
                        }
                    }
                }
            },
            None if *tombstone => {
                let deleted = operations
                    .iter()
                    .any(|other| other.kind == OperationKind::Delete && other.started <= ended);
                if !deleted {
                    violations.push(format!(
                        "op {} read a deletion of {name} that nobody made",
                        operation.id
                    ));
                }
            }
            None => {}
        }
        // No read older than a write acknowledged before the read began.
        if let Some((_, newest, writer)) = acknowledged
            .iter()
            .filter(|(acknowledged_at, _, _)| *acknowledged_at < operation.started)
            .max_by_key(|(_, version, _)| *version)
        {
            if version.is_none_or(|seen| seen < *newest) {
                violations.push(format!(
                    "op {} read {name} at version {version:?} but op {writer} had acknowledged version {newest} before the read began: a lost or stale write",
                    operation.id
                ));
            }
        }
        reads.push(ReadSeen {
            id: operation.id,
            started: operation.started,
            ended,
            version: *version,
        });
    }
    // Never a newer-then-older pair: a read that began after another ended sees at least as new.
    for later in &reads {
        if let Some(earlier) = reads
            .iter()
            .filter(|earlier| earlier.ended < later.started)
            .max_by_key(|earlier| earlier.version)
        {
            if later.version < earlier.version {
                violations.push(format!(
                    "op {} read {name} at version {:?} after op {} had already read the newer {:?}: reads went back in time",
                    later.id, later.version, earlier.id, earlier.version
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(sequence: u64) -> Version {
        Version {
            epoch: 1,
            sequence,
            writer: 1,
        }
    }

    fn op(id: u64, kind: OperationKind, started: u64, ended: u64, outcome: Outcome) -> Operation {
        Operation {
            id,
            client: 0,
            key: b"k".to_vec(),
            kind,
            started: Duration::from_millis(started),
            ended: Some(Duration::from_millis(ended)),
            outcome,
        }
    }

    fn read(op_id: u64, started: u64, ended: u64, seen: Option<(u64, u64)>) -> Operation {
        op(
            op_id,
            OperationKind::Get,
            started,
            ended,
            Outcome::Read {
                version: seen.map(|(sequence, _)| version(sequence)),
                tombstone: false,
                value_op: seen.map(|(_, value_op)| value_op),
            },
        )
    }

    #[test]
    fn catches_stale_and_backwards_reads() {
        let put = |id, sequence, started, ended| {
            op(
                id,
                OperationKind::Put { value_length: 10 },
                started,
                ended,
                Outcome::Written(version(sequence)),
            )
        };
        let good = vec![
            put(0, 1, 0, 10),
            put(1, 2, 20, 30),
            read(2, 40, 50, Some((2, 1))),
        ];
        assert!(check_history(&good, &FenceTimes::new()).is_empty());
        let stale = vec![
            put(0, 1, 0, 10),
            put(1, 2, 20, 30),
            read(2, 40, 50, Some((1, 0))),
        ];
        assert_eq!(check_history(&stale, &FenceTimes::new()).len(), 1);
        let lost = vec![put(0, 1, 0, 10), read(1, 40, 50, None)];
        assert_eq!(check_history(&lost, &FenceTimes::new()).len(), 1);
        // An indeterminate write may show up, but once seen it may not vanish.
        let mut failed = put(1, 2, 20, 30);
        failed.outcome = Outcome::Failed("EIO".into());
        let backwards = vec![
            put(0, 1, 0, 10),
            failed,
            read(2, 40, 50, Some((2, 1))),
            read(3, 60, 70, Some((1, 0))),
        ];
        let violations = check_history(&backwards, &FenceTimes::new());
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("back in time"));
    }

    #[test]
    fn absence_after_a_collected_tombstone_reads_at_the_deletes_version() {
        let put = |id, sequence, started, ended| {
            op(
                id,
                OperationKind::Put { value_length: 10 },
                started,
                ended,
                Outcome::Written(version(sequence)),
            )
        };
        let delete = |id, sequence, started, ended| {
            op(
                id,
                OperationKind::Delete,
                started,
                ended,
                Outcome::Written(version(sequence)),
            )
        };
        // Deleted, the tombstone collected: absent is what a read must see.
        let collected = vec![
            put(0, 1, 0, 10),
            delete(1, 2, 20, 30),
            read(2, 40, 50, None),
        ];
        assert!(check_history(&collected, &FenceTimes::new()).is_empty());
        // But a put acknowledged after the delete may not vanish.
        let lost = vec![
            put(0, 1, 0, 10),
            delete(1, 2, 20, 30),
            put(2, 3, 31, 35),
            read(3, 40, 50, None),
        ];
        let violations = check_history(&lost, &FenceTimes::new());
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("lost or stale"));
    }

    #[test]
    fn catches_fencing_and_wrong_bytes() {
        let mut late = op(
            0,
            OperationKind::Put { value_length: 1 },
            100,
            110,
            Outcome::Written(version(1)),
        );
        late.client = 7;
        let fenced = FenceTimes::from([(7, Duration::from_millis(50))]);
        assert_eq!(check_history(&[late], &fenced).len(), 1);
        let wrong = op(0, OperationKind::Get, 0, 1, Outcome::WrongBytes("x".into()));
        assert_eq!(check_history(&[wrong], &FenceTimes::new()).len(), 1);
    }
}
