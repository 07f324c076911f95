//! Schedules as proptest values: a failure shrinks to a minimal list of operations and faults,
//! and failing cases are persisted under `tests/proptest-regressions/` (committed) so they run
//! first next time.

use proptest::prelude::*;
use std::sync::Mutex;

use proptest::test_runner::{
    Config, FileFailurePersistence, RngAlgorithm, TestError, TestRng, TestRunner,
};

use votefs::planted::PlantedBug;
use votefs_sim::run::run_schedule;
use votefs_sim::schedule::{Envelope, FaultKind, PlannedFault, Schedule};

const DAMAGE_BANK: usize = 0;

fn planned_fault() -> impl Strategy<Value = PlannedFault> {
    (
        0u64..4000,
        prop::sample::select(FaultKind::ALL.to_vec()),
        0usize..3,
        0usize..2,
        30u64..700,
        0u64..1000,
    )
        .prop_map(
            |(at_ms, kind, bank, slot, duration_ms, intensity)| PlannedFault {
                at_ms,
                kind,
                // In-envelope: only one bank may lose data.
                bank: if kind.destroys_data() {
                    DAMAGE_BANK
                } else {
                    bank
                },
                slot,
                duration_ms,
                intensity,
            },
        )
}

fn schedule_strategy(minimum_faults: usize) -> impl Strategy<Value = Schedule> {
    (
        any::<u64>(),
        200u64..260,
        1usize..4,
        prop::collection::vec(planned_fault(), minimum_faults..24),
    )
        .prop_map(|(seed, operations, tasks, plan)| Schedule {
            seed,
            envelope: Envelope::Inside,
            enabled: FaultKind::ALL.to_vec(),
            faults: plan.len(),
            plan,
            operations,
            tasks,
            damage_bank: DAMAGE_BANK,
            planted_bug: None,
        })
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(200))]

    /// Arbitrary in-envelope schedules keep every invariant.
    #[test]
    fn arbitrary_schedules_keep_the_invariants(schedule in schedule_strategy(10)) {
        let report = run_schedule(&schedule);
        prop_assert!(report.passed(), "{}", report.describe_failure());
    }
}

/// With a planted bug, proptest finds a failing schedule and shrinks it: fewer faults than the
/// first failing case, and the minimum of operations. The shrunk case is what a person debugs.
#[test]
fn failures_shrink_to_a_smaller_schedule() {
    // A fixed proptest seed keeps this test reproducible.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 256,
            failure_persistence: None,
            max_shrink_iters: 400,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let strategy = schedule_strategy(0).prop_map(|mut schedule| {
        schedule.planted_bug = Some(PlantedBug::VoteAcceptsOneAnswer);
        schedule
    });
    let first_failure: Mutex<Option<usize>> = Mutex::new(None);
    let outcome = runner.run(&strategy, |schedule| {
        let report = run_schedule(&schedule);
        if !report.passed() {
            first_failure
                .lock()
                .unwrap()
                .get_or_insert(schedule.plan.len());
        }
        prop_assert!(report.passed(), "{:?}", report.violations.first());
        Ok(())
    });
    let first = first_failure.lock().unwrap().expect("a failure was seen");
    match outcome {
        Err(TestError::Fail(reason, minimal)) => {
            eprintln!(
                "first failing case had {first} planned faults; shrunk to {} faults and {} operations: {reason}",
                minimal.plan.len(),
                minimal.operations
            );
            // How far a schedule shrinks depends on how many faults the failure needs (since
            // reads ask the best two banks first and the refresh runs alongside, the planted
            // bug needs more of them); shrinking must make progress.
            assert!(
                minimal.plan.len() < first,
                "shrinking left {} of {first} faults",
                minimal.plan.len()
            );
            assert_eq!(minimal.operations, 200, "operations shrink to the minimum");
        }
        other => panic!("the planted bug was not found: {other:?}"),
    }
}
