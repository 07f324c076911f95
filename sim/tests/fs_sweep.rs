//! The file-system simulation: seeded schedules of path operations on votefs's file-system layer,
//! compared with the reference model, under server faults and client crashes (DESIGN §8).

use votefs_sim::fs_run::{run_fs_schedule, FsRunReport};

const DEFAULT_SEEDS: u64 = 60;
const OPERATIONS: usize = 200;

fn environment_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn describe(report: &FsRunReport) -> String {
    format!(
        "seed {} failed after {} operations ({} client crashes): {}\nreplay: {}",
        report.seed,
        report.operations,
        report.client_crashes,
        report.failures.join("\n  "),
        report.replay_command()
    )
}

#[test]
fn file_system_sweep() {
    let seeds = environment_number("VOTEFS_FS_SEEDS", DEFAULT_SEEDS);
    let start = environment_number("VOTEFS_FS_SEED_START", 1);
    let mut failures = Vec::new();
    let mut totals = FsRunReport::default();
    for seed in start..start + seeds {
        let report = run_fs_schedule(seed, OPERATIONS);
        totals.operations += report.operations;
        totals.client_crashes += report.client_crashes;
        totals.interrupted_done += report.interrupted_done;
        totals.intents_redone += report.intents_redone;
        totals.server_faults += report.server_faults;
        if !report.passed() {
            failures.push(describe(&report));
        }
    }
    eprintln!(
        "file-system sweep: {seeds} schedules, {} operations, {} server faults, {} client crashes ({} interrupted operations found done, {} intents redone)",
        totals.operations, totals.server_faults, totals.client_crashes, totals.interrupted_done, totals.intents_redone
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The harness bites only if the interesting paths happened.
    assert!(
        totals.client_crashes >= seeds,
        "too few client crashes: {totals:?}"
    );
    assert!(
        totals.intents_redone > 0,
        "no crash ever left an intent to redo: {totals:?}"
    );
    assert!(
        totals.interrupted_done > 0,
        "no interrupted operation was ever found done"
    );
    assert!(
        totals.interrupted_done < totals.client_crashes,
        "no interrupted operation was ever found undone"
    );
    assert!(
        totals.server_faults > seeds,
        "too few server faults: {totals:?}"
    );
}

#[test]
fn file_system_schedules_replay_exactly() {
    for seed in [3, 17] {
        let first = run_fs_schedule(seed, 80);
        let second = run_fs_schedule(seed, 80);
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} did not replay"
        );
        assert_eq!(first.operations, second.operations);
    }
}

#[test]
fn replay_one_fs_seed() {
    let Ok(seed) = std::env::var("VOTEFS_FS_SEED") else {
        return;
    };
    let seed: u64 = seed.parse().expect("VOTEFS_FS_SEED is a number");
    let report = run_fs_schedule(seed, OPERATIONS);
    eprintln!("{report:#?}");
    assert!(report.passed(), "{}", describe(&report));
}

#[test]
fn planted_file_system_bugs_are_caught() {
    use votefs::planted::PlantedBug;
    use votefs_sim::fs_run::run_fs_schedule_with;
    for bug in PlantedBug::FILE_SYSTEM {
        let caught = (1..=4 * DEFAULT_SEEDS)
            .find(|seed| !run_fs_schedule_with(*seed, OPERATIONS, Some(bug)).passed());
        assert!(
            caught.is_some(),
            "{bug:?} survived {} file-system schedules",
            4 * DEFAULT_SEEDS
        );
        eprintln!("{bug:?} caught by seed {}", caught.unwrap());
    }
}
