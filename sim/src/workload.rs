//! The workload: concurrent put/get/delete/list over a small hot key set and a larger cold one,
//! with mixed value sizes, and the history every checker reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use votefs::env::Env;
use votefs::quorum::{QuorumClient, QuorumError};
use votefs::record::Version;
use votefs::rng::SeededRng;

use crate::sim_env::SimEnv;

/// What one operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still running when the run ended or its client died: indeterminate.
    Pending,
    /// A write acknowledged at this version.
    Written(Version),
    /// A read that saw this version (`None`: no copy anywhere) holding the value of write `op`.
    Read {
        version: Option<Version>,
        tombstone: bool,
        value_op: Option<u64>,
    },
    Listed(Vec<Vec<u8>>),
    /// The write may or may not have happened.
    Failed(String),
    /// Refused because a newer mount fenced this client.
    Fenced,
    /// A read that returned bytes no write ever wrote: always a bug.
    WrongBytes(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OperationKind {
    Put { value_length: usize },
    Delete,
    Get,
    List { prefix: Vec<u8> },
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub id: u64,
    pub client: u64,
    pub key: Vec<u8>,
    pub kind: OperationKind,
    pub started: Duration,
    pub ended: Option<Duration>,
    pub outcome: Outcome,
}

/// Everything every client did, shared with the checker.
#[derive(Clone, Default)]
pub struct History {
    pub operations: Arc<Mutex<Vec<Operation>>>,
}

impl History {
    fn begin(&self, client: u64, key: Vec<u8>, kind: OperationKind, started: Duration) -> u64 {
        let mut operations = self.operations.lock().expect("history lock poisoned");
        let id = operations.len() as u64;
        operations.push(Operation {
            id,
            client,
            key,
            kind,
            started,
            ended: None,
            outcome: Outcome::Pending,
        });
        id
    }

    fn end(&self, id: u64, ended: Duration, outcome: Outcome) {
        let mut operations = self.operations.lock().expect("history lock poisoned");
        let operation = &mut operations[id as usize];
        operation.ended = Some(ended);
        operation.outcome = outcome;
    }

    pub fn snapshot(&self) -> Vec<Operation> {
        self.operations
            .lock()
            .expect("history lock poisoned")
            .clone()
    }

    pub fn len(&self) -> usize {
        self.operations.lock().expect("history lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value a put operation writes: its id, then bytes derived from it, so that any value read
/// back names its write and proves every byte.
pub fn value_for(op: u64, length: usize) -> Vec<u8> {
    let mut value = format!("{op}:").into_bytes();
    let mut rng = SeededRng::new(op ^ 0x5EED);
    let mut rest = vec![0u8; length.saturating_sub(value.len())];
    rng.fill(&mut rest);
    value.extend_from_slice(&rest);
    value
}

/// The write a value names, if every byte is what that write wrote.
pub fn decode_value(value: &[u8]) -> Result<u64, String> {
    let colon = value
        .iter()
        .position(|byte| *byte == b':')
        .ok_or_else(|| format!("value of {} bytes names no write", value.len()))?;
    let op: u64 = std::str::from_utf8(&value[..colon])
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| "value names no write".to_string())?;
    if value_for(op, value.len()) != value {
        return Err(format!("value claims write {op} but its bytes differ"));
    }
    Ok(op)
}

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub hot_keys: usize,
    pub cold_keys: usize,
    pub listed_partitions: usize,
    pub tasks: usize,
}

impl WorkloadConfig {
    pub fn key(&self, rng: &mut SeededRng) -> Vec<u8> {
        match rng.below(10) {
            0..=5 => format!("hot{}", rng.below(self.hot_keys as u64)).into_bytes(),
            6..=7 => format!(
                "dir{}#entry{}",
                rng.below(self.listed_partitions as u64),
                rng.below(6)
            )
            .into_bytes(),
            _ => format!("cold{}", rng.below(self.cold_keys as u64)).into_bytes(),
        }
    }
}

/// Run operations from a shared budget until it is spent or the client is fenced.
pub async fn run_task(
    env: SimEnv,
    client: QuorumClient<SimEnv>,
    client_number: u64,
    config: WorkloadConfig,
    history: History,
    budget: Arc<Mutex<u64>>,
    seed: u64,
) {
    let mut rng = SeededRng::new(seed);
    loop {
        {
            let mut remaining = budget.lock().expect("budget lock poisoned");
            if *remaining == 0 {
                return;
            }
            *remaining -= 1;
        }
        let key = config.key(&mut rng);
        let choice = rng.below(100);
        let kind = if choice < 40 {
            let value_length = match rng.below(10) {
                0 => 4096 + rng.below(60_000) as usize,
                1..=2 => 300 + rng.below(3000) as usize,
                _ => 8 + rng.below(200) as usize,
            };
            OperationKind::Put { value_length }
        } else if choice < 48 {
            OperationKind::Delete
        } else if choice < 93 {
            OperationKind::Get
        } else {
            let partition = rng.below(config.listed_partitions as u64);
            OperationKind::List {
                prefix: format!("dir{partition}#").into_bytes(),
            }
        };
        let id = history.begin(client_number, key.clone(), kind.clone(), env.now());
        let outcome = match &kind {
            OperationKind::Put { value_length } => {
                written(client.put(&key, &value_for(id, *value_length)).await)
            }
            OperationKind::Delete => written(client.delete(&key).await),
            OperationKind::Get => read_outcome(client.read_record(&key).await),
            OperationKind::List { prefix } => match client.list(prefix).await {
                Ok(keys) => Outcome::Listed(keys),
                Err(error) => Outcome::Failed(error.to_string()),
            },
        };
        let fenced = outcome == Outcome::Fenced;
        history.end(id, env.now(), outcome);
        if fenced {
            return;
        }
        // Think time keeps operations spread over the fault schedule.
        env.sleep(Duration::from_millis(rng.below(20))).await;
    }
}

fn written(result: Result<Version, QuorumError>) -> Outcome {
    match result {
        Ok(version) => Outcome::Written(version),
        Err(QuorumError::Fenced { .. }) => Outcome::Fenced,
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

/// Judge a read's result as the history records it.
pub fn read_outcome(result: Result<Option<votefs::record::Record>, QuorumError>) -> Outcome {
    match result {
        Ok(None) => Outcome::Read {
            version: None,
            tombstone: false,
            value_op: None,
        },
        Ok(Some(record)) if record.tombstone => Outcome::Read {
            version: Some(record.version),
            tombstone: true,
            value_op: None,
        },
        Ok(Some(record)) => match decode_value(&record.value) {
            Ok(op) => Outcome::Read {
                version: Some(record.version),
                tombstone: false,
                value_op: Some(op),
            },
            Err(why) => Outcome::WrongBytes(why),
        },
        Err(QuorumError::Fenced { .. }) => Outcome::Fenced,
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

/// Record a read made by the checker itself (after the run), so the same rules judge it.
pub async fn checked_read(
    env: &SimEnv,
    client: &QuorumClient<SimEnv>,
    client_number: u64,
    history: &History,
    key: &[u8],
) -> Outcome {
    let id = history.begin(client_number, key.to_vec(), OperationKind::Get, env.now());
    let outcome = read_outcome(client.read_record(key).await);
    history.end(id, env.now(), outcome.clone());
    outcome
}
