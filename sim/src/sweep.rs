//! Running many schedules on several threads, and summarising them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use votefs::planted::PlantedBug;

use crate::run::{run_schedule, RunReport, Sometimes};
use crate::schedule::{Schedule, SweepShape};

/// The paths every sweep must have taken at least once, or the harness is not testing what it
/// claims to.
pub const REQUIRED_SOMETIMES: &[&str] = &[
    "ABD write-back",
    "read-repair: lagging copy",
    "read-repair: missing copy",
    "read-repair: corrupt copy",
    "read-repair: recovering copy",
    "heal backlog drained",
    "read saw an indeterminate write",
    "operation refused: fenced",
    "read EIO beyond the envelope",
    "scrub: recovering server made healthy",
    "scrub: buckets differed",
    "scrub: tombstones dropped",
    "scrub: deep scrub found rot",
    "server: duplicate request detected",
    "server: torn tail truncated",
    "server: log damage found at start",
    "server: corrupt entry found",
    "server: compaction moved entries",
];

pub struct SweepResult {
    pub reports: Vec<RunReport>,
    pub wall_seconds: f64,
}

impl SweepResult {
    pub fn failures(&self) -> Vec<&RunReport> {
        self.reports
            .iter()
            .filter(|report| !report.passed())
            .collect()
    }

    pub fn sometimes(&self) -> Sometimes {
        let mut total = Sometimes::new();
        for report in &self.reports {
            for (name, count) in &report.sometimes {
                *total.entry(name).or_default() += count;
            }
        }
        total
    }

    /// Required paths that no schedule took.
    pub fn never_happened(&self) -> Vec<&'static str> {
        let total = self.sometimes();
        let mut missing: Vec<&'static str> = REQUIRED_SOMETIMES
            .iter()
            .copied()
            .filter(|name| total.get(name).copied().unwrap_or(0) == 0)
            .collect();
        for kind in crate::schedule::FaultKind::ALL {
            let name = crate::run::fault_counter_name(kind);
            if total.get(name).copied().unwrap_or(0) == 0 {
                missing.push(name);
            }
        }
        missing
    }

    pub fn summary(&self) -> String {
        let simulated: f64 = self
            .reports
            .iter()
            .map(|report| report.simulated_time.as_secs_f64())
            .sum();
        let faults: u64 = self
            .reports
            .iter()
            .map(|report| report.faults.by_kind.values().sum::<u64>())
            .sum();
        let fewest_faults = self
            .reports
            .iter()
            .map(|report| report.faults.by_kind.values().sum::<u64>())
            .min()
            .unwrap_or(0);
        let operations: u64 = self.reports.iter().map(|report| report.operations).sum();
        let mut text = format!(
            "{} schedules in {:.1} s ({:.1} schedules/s), {:.0} s simulated ({:.0}x wall time), {} operations, {} faults (at least {} per schedule), {} failed\n",
            self.reports.len(),
            self.wall_seconds,
            self.reports.len() as f64 / self.wall_seconds.max(1e-9),
            simulated,
            simulated / self.wall_seconds.max(1e-9),
            operations,
            faults,
            fewest_faults,
            self.failures().len()
        );
        for (name, count) in self.sometimes() {
            text.push_str(&format!("  {count:>9}  {name}\n"));
        }
        text
    }
}

fn panic_report(schedule: &Schedule, panic: Box<dyn std::any::Any + Send>) -> RunReport {
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_default();
    RunReport {
        schedule: schedule.clone(),
        violations: vec![format!("the simulation panicked: {message}")],
        faults: Default::default(),
        trace_hash: 0,
        trace_events: 0,
        simulated_time: Default::default(),
        operations: 0,
        sometimes: Sometimes::new(),
        history: Vec::new(),
    }
}

/// Run one schedule, turning a panic into a failed report.
pub fn run_guarded(schedule: &Schedule) -> RunReport {
    std::panic::catch_unwind(|| run_schedule(schedule))
        .unwrap_or_else(|panic| panic_report(schedule, panic))
}

/// Run `seeds` on `threads` threads (each schedule in its own runtime). With `stop_at_first`,
/// stop handing out seeds after the first failure. `progress` is called after each schedule.
pub fn sweep(
    seeds: std::ops::Range<u64>,
    shape: &SweepShape,
    planted_bug: Option<PlantedBug>,
    threads: usize,
    stop_at_first: bool,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> SweepResult {
    let started = Instant::now();
    let next = Mutex::new(seeds.start);
    let stop = Mutex::new(false);
    let reports = Mutex::new(Vec::new());
    let total = (seeds.end - seeds.start) as usize;
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = {
                    let mut next = next.lock().expect("seed lock poisoned");
                    if *next >= seeds.end || *stop.lock().expect("stop lock poisoned") {
                        return;
                    }
                    *next += 1;
                    *next - 1
                };
                let mut schedule = Schedule::from_seed(seed, shape);
                schedule.planted_bug = planted_bug;
                let mut report = run_guarded(&schedule);
                if report.passed() {
                    // Keep memory flat over thousands of schedules.
                    report.history = Vec::new();
                }
                if stop_at_first && !report.passed() {
                    *stop.lock().expect("stop lock poisoned") = true;
                }
                let done = {
                    let mut reports = reports.lock().expect("reports lock poisoned");
                    reports.push(report);
                    reports.len()
                };
                progress(done, total);
            });
        }
    });
    let mut reports = reports.into_inner().expect("reports lock poisoned");
    reports.sort_by_key(|report| report.schedule.seed);
    SweepResult {
        reports,
        wall_seconds: started.elapsed().as_secs_f64(),
    }
}

/// Summaries of failures, most useful first.
pub fn describe_failures(result: &SweepResult) -> String {
    let failures = result.failures();
    let mut text = String::new();
    for failure in failures.iter().take(5) {
        text.push_str(&failure.describe_failure());
    }
    if failures.len() > 5 {
        text.push_str(&format!(
            "... and {} more failed seeds: {:?}\n",
            failures.len() - 5,
            failures
                .iter()
                .skip(5)
                .map(|report| report.schedule.seed)
                .collect::<Vec<_>>()
        ));
    }
    text
}

/// Count of each fault kind over a sweep, for the soak summary.
pub fn faults_by_kind(result: &SweepResult) -> BTreeMap<String, u64> {
    let mut total = BTreeMap::new();
    for report in &result.reports {
        for (kind, count) in &report.faults.by_kind {
            *total.entry(kind.to_string()).or_default() += count;
        }
    }
    total
}
