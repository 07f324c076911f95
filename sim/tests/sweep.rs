//! The seed sweep: thousands of randomized fault schedules against the real replication code.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use votefs_sim::run::{run_schedule, RunReport, Sometimes};
use votefs_sim::schedule::{Schedule, SweepShape};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

struct SweepResult {
    reports: Vec<RunReport>,
    failures: Vec<RunReport>,
    wall_seconds: f64,
}

fn sweep(seeds: std::ops::Range<u64>, shape: &SweepShape, threads: usize) -> SweepResult {
    let started = Instant::now();
    let next = Mutex::new(seeds.start);
    let reports = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = {
                    let mut next = next.lock().unwrap();
                    if *next >= seeds.end {
                        return;
                    }
                    *next += 1;
                    *next - 1
                };
                let schedule = Schedule::from_seed(seed, shape);
                let report =
                    std::panic::catch_unwind(|| run_schedule(&schedule)).unwrap_or_else(|panic| {
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
                        }
                    });
                reports.lock().unwrap().push(report);
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|report| report.schedule.seed);
    let failures = reports
        .iter()
        .filter(|report| !report.passed())
        .cloned()
        .collect();
    SweepResult {
        reports,
        failures,
        wall_seconds: started.elapsed().as_secs_f64(),
    }
}

#[test]
fn seed_sweep() {
    let seeds = env_u64("VOTEFS_SIM_SEEDS").unwrap_or(2000);
    let start = env_u64("VOTEFS_SIM_SEED_START").unwrap_or(0);
    let shape = SweepShape::default();
    let result = sweep(start..start + seeds, &shape, 2);
    let mut sometimes: BTreeMap<&str, u64> = BTreeMap::new();
    let mut simulated = 0f64;
    for report in &result.reports {
        for (name, count) in &report.sometimes {
            *sometimes.entry(name).or_default() += count;
        }
        simulated += report.simulated_time.as_secs_f64();
    }
    eprintln!(
        "sweep: {} schedules in {:.1} s ({:.1}/s), simulated {:.0} s ({:.0}x wall time)",
        result.reports.len(),
        result.wall_seconds,
        result.reports.len() as f64 / result.wall_seconds,
        simulated,
        simulated / result.wall_seconds
    );
    for (name, count) in &sometimes {
        eprintln!("  {count:>8}  {name}");
    }
    for failure in &result.failures {
        eprintln!("{}", failure.describe_failure());
    }
    assert!(
        result.failures.is_empty(),
        "{} schedules failed",
        result.failures.len()
    );
}

/// Replay one seed exactly: `VOTEFS_SIM_SEED=S` (default 0), with `VOTEFS_SIM_TRACE=FILE` for the
/// full tracing log of the run.
#[test]
fn replay_one_seed() {
    let seed = env_u64("VOTEFS_SIM_SEED").unwrap_or(0);
    if let Ok(path) = std::env::var("VOTEFS_SIM_TRACE") {
        let file = std::fs::File::create(&path).expect("creating the trace file");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("VOTEFS_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
            )
            .with_writer(Mutex::new(file))
            .with_ansi(false)
            .try_init();
    }
    let schedule = Schedule::from_seed(seed, &SweepShape::default());
    let first = run_schedule(&schedule);
    let second = run_schedule(&schedule);
    assert_eq!(
        (first.trace_hash, first.trace_events),
        (second.trace_hash, second.trace_events),
        "seed {seed} did not replay bit for bit"
    );
    assert!(first.passed(), "{}", first.describe_failure());
}
