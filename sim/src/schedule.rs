//! Fault schedules (swarm testing): each seed picks which fault kinds are on, how many faults
//! strike, and whether the schedule stays inside the fault envelope (DESIGN §8).

use std::collections::BTreeMap;
use std::fmt;

use votefs::planted::PlantedBug;
use votefs::rng::SeededRng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Kill a server and restart it; unsynced writes are lost.
    CrashRestart,
    /// As above, and the last unsynced write survives in part.
    CrashTornWrite,
    /// Kill a server, lose its whole disk, restart it blank.
    CrashDiskLoss,
    /// Flip bits in a server's stored bytes.
    BitRot,
    /// For a while, a server's reads flip bits or fail.
    ReadFaults,
    /// For a while, a server's appends land in the wrong place.
    MisdirectedWrites,
    /// Drop everything to and from one server for a while.
    ClogServer,
    /// Cut one bank off from everyone for a while.
    PartitionBank,
    /// Cut the client off from one bank for a while.
    PartitionClientFromBank,
    /// Freeze a server for a while.
    PauseServer,
    /// Lose a share of all messages for a while.
    PacketLoss,
    /// Slow every message down for a while.
    LatencySpike,
    /// The client dies; a new one (a new epoch) takes over.
    ClientCrash,
    /// A new client takes over while the old one keeps trying to write.
    ClientTakeover,
}

impl FaultKind {
    pub const ALL: [FaultKind; 14] = [
        FaultKind::CrashRestart,
        FaultKind::CrashTornWrite,
        FaultKind::CrashDiskLoss,
        FaultKind::BitRot,
        FaultKind::ReadFaults,
        FaultKind::MisdirectedWrites,
        FaultKind::ClogServer,
        FaultKind::PartitionBank,
        FaultKind::PartitionClientFromBank,
        FaultKind::PauseServer,
        FaultKind::PacketLoss,
        FaultKind::LatencySpike,
        FaultKind::ClientCrash,
        FaultKind::ClientTakeover,
    ];

    /// Faults that can destroy or corrupt stored copies.
    pub fn destroys_data(self) -> bool {
        matches!(
            self,
            FaultKind::CrashDiskLoss
                | FaultKind::BitRot
                | FaultKind::ReadFaults
                | FaultKind::MisdirectedWrites
        )
    }

    /// Faults that make (part of) one bank unreachable while they last.
    pub fn makes_bank_unavailable(self) -> bool {
        matches!(
            self,
            FaultKind::CrashRestart
                | FaultKind::CrashTornWrite
                | FaultKind::CrashDiskLoss
                | FaultKind::ClogServer
                | FaultKind::PartitionBank
                | FaultKind::PartitionClientFromBank
                | FaultKind::PauseServer
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, formatter)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Envelope {
    /// At most one copy of any record destroyed before repair, at most one bank unreachable at a
    /// time: nothing acknowledged may be lost and everything must work once faults heal.
    Inside,
    /// Anything goes: wrong bytes are still never allowed; EIO is.
    Beyond,
}

/// One fault of a plan. Targets are chosen when the plan is drawn; at run time an in-envelope
/// schedule may redirect an unavailability fault to the bank that is already unavailable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    /// Simulated time from the start of the workload. Absolute, so that removing one fault (when
    /// proptest shrinks a plan) does not move the others.
    pub at_ms: u64,
    pub kind: FaultKind,
    pub bank: usize,
    pub slot: usize,
    /// How long a temporary fault lasts.
    pub duration_ms: u64,
    /// Kind-specific strength (bits flipped, loss rate, latency), drawn with the plan.
    pub intensity: u64,
}

/// One schedule, drawn from its seed (or built by proptest).
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub envelope: Envelope,
    pub enabled: Vec<FaultKind>,
    pub plan: Vec<PlannedFault>,
    /// Faults to apply; the plan holds spares for faults that cannot apply when their turn comes
    /// (their server is already down, say).
    pub faults: usize,
    pub operations: u64,
    pub tasks: usize,
    /// The one bank whose servers may lose data in an in-envelope schedule.
    pub damage_bank: usize,
    /// A deliberate bug to run with (the harness's self-test only).
    pub planted_bug: Option<PlantedBug>,
}

/// Knobs of a sweep.
#[derive(Clone, Debug)]
pub struct SweepShape {
    pub operations: u64,
    pub minimum_faults: usize,
    pub maximum_faults: usize,
    /// One schedule in this many goes beyond the envelope.
    pub beyond_envelope_every: u64,
    pub banks: usize,
}

impl Default for SweepShape {
    fn default() -> Self {
        Self {
            operations: 200,
            minimum_faults: 12,
            maximum_faults: 24,
            beyond_envelope_every: 5,
            banks: 3,
        }
    }
}

impl Schedule {
    pub fn from_seed(seed: u64, shape: &SweepShape) -> Self {
        let mut rng = SeededRng::new(seed ^ 0x5C4E_D01E);
        let envelope = if rng.below(shape.beyond_envelope_every.max(1)) == 0 {
            Envelope::Beyond
        } else {
            Envelope::Inside
        };
        // Swarm testing: a random subset of fault kinds, never empty.
        let mut enabled: Vec<FaultKind> = FaultKind::ALL
            .iter()
            .copied()
            .filter(|_| rng.below(100) < 55)
            .collect();
        if enabled.is_empty() {
            enabled.push(FaultKind::ALL[rng.below(FaultKind::ALL.len() as u64) as usize]);
        }
        let spread = (shape.maximum_faults - shape.minimum_faults + 1) as u64;
        let faults = shape.minimum_faults + rng.below(spread) as usize;
        let damage_bank = rng.below(shape.banks as u64) as usize;
        let mut at_ms = 0;
        let plan = (0..faults * 2)
            .map(|_| {
                at_ms += 10 + rng.below(190);
                let kind = enabled[rng.below(enabled.len() as u64) as usize];
                let bank = if envelope == Envelope::Inside && kind.destroys_data() {
                    damage_bank
                } else {
                    rng.below(shape.banks as u64) as usize
                };
                // Beyond the envelope, some faults outlast a write's retries, so that writes
                // fail after reaching a single copy.
                let longest_ms = if envelope == Envelope::Beyond {
                    4000
                } else {
                    700
                };
                PlannedFault {
                    at_ms,
                    kind,
                    bank,
                    slot: rng.below(2) as usize,
                    duration_ms: 30 + rng.below(longest_ms - 30),
                    intensity: rng.below(1000),
                }
            })
            .collect();
        Self {
            seed,
            envelope,
            enabled,
            plan,
            faults,
            operations: shape.operations,
            tasks: 2 + rng.below(3) as usize,
            damage_bank,
            planted_bug: None,
        }
    }
}

/// What was injected, for reports and the sweep's counters.
#[derive(Clone, Debug, Default)]
pub struct FaultLog {
    pub entries: Vec<String>,
    pub by_kind: BTreeMap<FaultKind, u64>,
}

impl FaultLog {
    pub fn record(&mut self, kind: FaultKind, at_ms: u128, detail: String) {
        *self.by_kind.entry(kind).or_default() += 1;
        self.entries
            .push(format!("{at_ms:>7} ms  {kind}: {detail}"));
    }
}
