//! [`Disk`] in memory, with a fault plan (DESIGN §3): bit flips at rest and on read, read errors,
//! lost unsynced writes and torn last writes on a crash, misdirected writes, whole-disk loss.
//!
//! The state lives in an `Arc` outside the node, so that a restarted server finds its disk as the
//! crash left it.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use votefs::disk::Disk;
use votefs::rng::SeededRng;

use crate::trace::Trace;

/// Probabilities of faults that strike during normal operation, per operation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DiskFaultPlan {
    pub read_bit_flip: f64,
    pub read_error: f64,
    pub misdirected_write: f64,
}

/// What the disk did to its owner, for the sweep's "sometimes" counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub bit_flips_at_rest: u64,
    pub read_bit_flips: u64,
    pub read_errors: u64,
    pub misdirected_writes: u64,
    pub torn_writes: u64,
    pub lost_unsynced_bytes: u64,
    pub wipes: u64,
    pub syncs: u64,
    /// Recoveries of the store on this disk that truncated a torn tail.
    pub torn_tails_truncated: u64,
    /// Recoveries that found damage and made the server recovering.
    pub damaged_recoveries: u64,
}

#[derive(Clone, Default)]
struct SimFile {
    bytes: Vec<u8>,
    synced_length: usize,
    /// The file's name survives a crash (it was synced, or came from a durable operation).
    name_durable: bool,
    /// Length of each append since the last sync, so that a crash can tear the last one.
    unsynced_appends: Vec<usize>,
}

struct DiskState {
    files: BTreeMap<String, SimFile>,
    plan: DiskFaultPlan,
    rng: SeededRng,
    counters: DiskCounters,
}

/// An in-memory disk shared between a node and the simulation that crashes it.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    trace: Trace,
    name: Arc<str>,
}

/// True with probability `probability`; draws nothing when it is zero, so that a disk without
/// faults consumes no randomness (and schedules stay comparable).
fn chance(rng: &mut SeededRng, probability: f64) -> bool {
    probability > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < probability
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name} does not exist"))
}

impl SimDisk {
    /// A blank disk whose fault decisions draw from `seed`.
    pub fn new(name: &str, seed: u64, trace: Trace) -> Self {
        Self {
            state: Arc::new(Mutex::new(DiskState {
                files: BTreeMap::new(),
                plan: DiskFaultPlan::default(),
                rng: SeededRng::new(seed),
                counters: DiskCounters::default(),
            })),
            trace,
            name: name.into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().expect("sim disk lock poisoned")
    }

    pub fn set_plan(&self, plan: DiskFaultPlan) {
        self.lock().plan = plan;
    }

    pub fn counters(&self) -> DiskCounters {
        self.lock().counters
    }

    /// What a power loss leaves: unsynced bytes vanish, except that with `tear` the first
    /// unsynced append survives in part; files whose names were never synced vanish.
    pub fn crash(&self, tear: bool) {
        let mut state = self.lock();
        let DiskState {
            files,
            rng,
            counters,
            ..
        } = &mut *state;
        files.retain(|_, file| file.name_durable);
        for file in files.values_mut() {
            let unsynced = file.bytes.len() - file.synced_length;
            let mut keep = file.synced_length;
            if tear && unsynced > 0 {
                let first_append = file.unsynced_appends.first().copied().unwrap_or(unsynced);
                if first_append > 1 {
                    keep += 1 + rng.below(first_append as u64 - 1) as usize;
                    counters.torn_writes += 1;
                }
            }
            counters.lost_unsynced_bytes += (file.bytes.len() - keep) as u64;
            file.bytes.truncate(keep);
            file.synced_length = keep;
            file.unsynced_appends.clear();
        }
        self.trace
            .record(&[b"crash", self.name.as_bytes(), &[u8::from(tear)]]);
    }

    /// Lose everything (a replaced disk).
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.files.clear();
        state.counters.wipes += 1;
        self.trace.record(&[b"wipe", self.name.as_bytes()]);
    }

    /// Flip one bit somewhere in the stored bytes (rot at rest). Returns false on an empty disk.
    pub fn flip_bit_at_rest(&self) -> bool {
        let mut state = self.lock();
        let DiskState {
            files,
            rng,
            counters,
            ..
        } = &mut *state;
        let candidates: Vec<&String> = files
            .iter()
            .filter(|(_, file)| !file.bytes.is_empty())
            .map(|(name, _)| name)
            .collect();
        if candidates.is_empty() {
            return false;
        }
        let name = candidates[rng.below(candidates.len() as u64) as usize].clone();
        let file = files.get_mut(&name).expect("chosen from the map");
        let offset = rng.below(file.bytes.len() as u64) as usize;
        let bit = rng.below(8) as u8;
        file.bytes[offset] ^= 1 << bit;
        counters.bit_flips_at_rest += 1;
        self.trace
            .record(&[b"rot", name.as_bytes(), &(offset as u64).to_le_bytes()]);
        true
    }

    /// Note what the store's recovery on this disk found (the supervisor reports it).
    pub fn note_recovery(&self, report: &votefs::store::RecoveryReport) {
        let mut state = self.lock();
        if report.torn_tail_bytes > 0 {
            state.counters.torn_tails_truncated += 1;
        }
        if report.damaged_regions > 0 {
            state.counters.damaged_recoveries += 1;
        }
    }

    /// Drop every stored byte without counting it as a fault (the run is over).
    pub fn release_memory(&self) {
        self.lock().files = BTreeMap::new();
    }

    /// Total stored bytes, for reports.
    pub fn stored_bytes(&self) -> u64 {
        self.lock()
            .files
            .values()
            .map(|file| file.bytes.len() as u64)
            .sum()
    }
}

impl Disk for SimDisk {
    fn list(&self) -> impl Future<Output = io::Result<Vec<String>>> + Send {
        let names = self.lock().files.keys().cloned().collect();
        async move { Ok(names) }
    }

    fn read_at(
        &self,
        name: &str,
        offset: u64,
        length: usize,
    ) -> impl Future<Output = io::Result<Vec<u8>>> + Send {
        let result = (|| {
            let mut state = self.lock();
            let DiskState {
                files,
                plan,
                rng,
                counters,
            } = &mut *state;
            let file = files.get(name).ok_or_else(|| not_found(name))?;
            if chance(rng, plan.read_error) {
                counters.read_errors += 1;
                return Err(io::Error::other("simulated read error (EIO)"));
            }
            let start = (offset as usize).min(file.bytes.len());
            let end = start.saturating_add(length).min(file.bytes.len());
            let mut bytes = file.bytes[start..end].to_vec();
            if !bytes.is_empty() && chance(rng, plan.read_bit_flip) {
                let position = rng.below(bytes.len() as u64) as usize;
                bytes[position] ^= 1 << rng.below(8);
                counters.read_bit_flips += 1;
            }
            Ok(bytes)
        })();
        async move { result }
    }

    fn size(&self, name: &str) -> impl Future<Output = io::Result<u64>> + Send {
        let result = self
            .lock()
            .files
            .get(name)
            .map(|file| file.bytes.len() as u64)
            .ok_or_else(|| not_found(name));
        async move { result }
    }

    fn append(&self, name: &str, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        {
            let mut state = self.lock();
            let DiskState {
                files,
                plan,
                rng,
                counters,
            } = &mut *state;
            let file = files.entry(name.to_string()).or_default();
            let misdirect = file.bytes.len() > bytes.len() && chance(rng, plan.misdirected_write);
            if misdirect {
                // The bytes land on an earlier part of the file; the end gets nothing useful.
                let target = rng.below((file.bytes.len() - bytes.len()) as u64) as usize;
                file.bytes[target..target + bytes.len()].copy_from_slice(bytes);
                let new_length = file.bytes.len() + bytes.len();
                file.bytes.resize(new_length, 0);
                counters.misdirected_writes += 1;
            } else {
                file.bytes.extend_from_slice(bytes);
            }
            file.unsynced_appends.push(bytes.len());
            self.trace.record(&[
                b"append",
                self.name.as_bytes(),
                name.as_bytes(),
                &(bytes.len() as u64).to_le_bytes(),
                &[u8::from(misdirect)],
            ]);
        }
        async move { Ok(()) }
    }

    fn sync(&self, name: &str) -> impl Future<Output = io::Result<()>> + Send {
        let exists = self.lock().files.contains_key(name);
        let state = self.state.clone();
        let name = name.to_string();
        let latency = Duration::from_micros(50 + self.lock().rng.below(450));
        async move {
            if !exists {
                return Err(not_found(&name));
            }
            // A sync takes time, which is what lets concurrent puts share one (group commit).
            madsim::time::sleep(latency).await;
            let mut state = state.lock().expect("sim disk lock poisoned");
            state.counters.syncs += 1;
            if let Some(file) = state.files.get_mut(&name) {
                file.synced_length = file.bytes.len();
                file.name_durable = true;
                file.unsynced_appends.clear();
            }
            Ok(())
        }
    }

    fn truncate(&self, name: &str, length: u64) -> impl Future<Output = io::Result<()>> + Send {
        let result = match self.lock().files.get_mut(name) {
            Some(file) => {
                file.bytes.truncate(length as usize);
                file.synced_length = file.bytes.len();
                file.name_durable = true;
                file.unsynced_appends.clear();
                Ok(())
            }
            None => Err(not_found(name)),
        };
        self.trace.record(&[
            b"truncate",
            self.name.as_bytes(),
            name.as_bytes(),
            &length.to_le_bytes(),
        ]);
        async move { result }
    }

    fn remove(&self, name: &str) -> impl Future<Output = io::Result<()>> + Send {
        self.lock().files.remove(name);
        self.trace
            .record(&[b"remove", self.name.as_bytes(), name.as_bytes()]);
        async move { Ok(()) }
    }

    fn write_atomic(
        &self,
        name: &str,
        bytes: &[u8],
    ) -> impl Future<Output = io::Result<()>> + Send {
        self.lock().files.insert(
            name.to_string(),
            SimFile {
                bytes: bytes.to_vec(),
                synced_length: bytes.len(),
                name_durable: true,
                unsynced_appends: Vec::new(),
            },
        );
        self.trace
            .record(&[b"replace", self.name.as_bytes(), name.as_bytes(), bytes]);
        async move { Ok(()) }
    }
}
