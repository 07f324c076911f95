//! The end of a chaos run: what it did, whether it passed, printed for people and written as
//! JSON for scripts and tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::proto::RepairsByCause;

/// One fault as the summary lists it.
#[derive(Clone, Debug, Serialize)]
pub struct FaultSummary {
    /// Since the workload started.
    pub at_ms: u64,
    pub ended_at_ms: u64,
    pub kind: String,
    pub bank: usize,
    /// The server's position in its bank.
    pub server: usize,
    pub address: String,
    pub within_envelope: bool,
    pub succeeded: bool,
    pub detail: String,
}

/// Everything a chaos run reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChaosSummary {
    pub seed: u64,
    pub workload: String,
    pub every_ms: u64,
    pub duration_ms: u64,
    pub beyond_envelope: bool,
    pub interrupted: bool,
    /// Workload operations (fsx: logged operations; dbench: its count; copy: whole-file writes
    /// and checked reads).
    pub operations: u64,
    pub failed_operations: u64,
    pub mismatches: u64,
    /// Bytes the workload read and checked against its own record while faults were injected.
    pub verified_bytes_during_run: u64,
    /// Bytes re-read and checked after the cluster healed (the `copy` workload's every file).
    pub verified_bytes_after_healing: u64,
    pub files_verified_after_healing: u64,
    pub workload_failure: Option<String>,
    pub faults: Vec<FaultSummary>,
    /// Faults injected (succeeded), by kind.
    pub faults_by_kind: BTreeMap<String, u64>,
    /// Ticks where no server could be hit (all candidates busy or gone).
    pub faults_skipped: u64,
    pub supervisor_restarts: u64,
    /// The mount's repairs by cause (its volume report), when the run started and after healing.
    pub repairs_before: Option<RepairsByCause>,
    pub repairs_after: Option<RepairsByCause>,
    pub chaos_passes: u64,
    pub chaos_complete_passes: u64,
    pub chaos_repairs: RepairsByCause,
    pub chaos_damage_found: u64,
    pub chaos_servers_healed: u64,
    pub healed: bool,
    /// From the end of the workload until the cluster was healthy again.
    pub heal_ms: u64,
    /// Why it is not healthy, when it did not heal in time.
    pub unhealthy_reason: Option<String>,
    pub notes: Vec<String>,
    pub csv_path: String,
    pub svg_path: String,
    pub passed: bool,
}

impl ChaosSummary {
    pub fn faults_injected(&self) -> u64 {
        self.faults_by_kind.values().sum()
    }

    pub fn faults_beyond_envelope(&self) -> u64 {
        self.faults
            .iter()
            .filter(|fault| fault.succeeded && !fault.within_envelope)
            .count() as u64
    }

    /// Passed: no wrong data ever, the workload did not fail, the cluster healed, and no operation
    /// failed, except that failed operations are expected once faults went beyond the envelope.
    pub fn judge(&self) -> bool {
        let failures_allowed = self.beyond_envelope && self.faults_beyond_envelope() > 0;
        let workload_ok = self.workload_failure.is_none() || failures_allowed;
        self.mismatches == 0
            && (self.failed_operations == 0 || failures_allowed)
            && workload_ok
            && self.healed
    }
}

fn repairs_text(repairs: &RepairsByCause) -> String {
    format!(
        "{} (lagging {}, missing {}, corrupt {}, recovering {})",
        repairs.total(),
        repairs.lagging,
        repairs.missing,
        repairs.corrupt,
        repairs.recovering
    )
}

fn repairs_between(before: &RepairsByCause, after: &RepairsByCause) -> RepairsByCause {
    RepairsByCause {
        lagging: after.lagging.saturating_sub(before.lagging),
        missing: after.missing.saturating_sub(before.missing),
        corrupt: after.corrupt.saturating_sub(before.corrupt),
        recovering: after.recovering.saturating_sub(before.recovering),
    }
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The summary for people.
pub fn render(summary: &ChaosSummary) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "chaos: seed {}, workload {}, {:.1} s{}, a fault every {:.1} s {}",
        summary.seed,
        summary.workload,
        summary.duration_ms as f64 / 1000.0,
        if summary.interrupted {
            " (interrupted)"
        } else {
            ""
        },
        summary.every_ms as f64 / 1000.0,
        if summary.beyond_envelope {
            "(beyond the envelope allowed)"
        } else {
            "(within the envelope)"
        }
    );
    let _ = writeln!(
        text,
        "operations: {} done, {} failed",
        summary.operations, summary.failed_operations
    );
    let by_kind: Vec<String> = summary
        .faults_by_kind
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    let failed_faults = summary
        .faults
        .iter()
        .filter(|fault| !fault.succeeded)
        .count();
    let _ = writeln!(
        text,
        "faults: {} injected ({}), {} failed to inject, {} skipped, {} beyond the envelope",
        summary.faults_injected(),
        by_kind.join(", "),
        failed_faults,
        summary.faults_skipped,
        summary.faults_beyond_envelope()
    );
    let _ = writeln!(
        text,
        "supervisor restarts during the run: {}",
        summary.supervisor_restarts
    );
    match (&summary.repairs_before, &summary.repairs_after) {
        (Some(before), Some(after)) => {
            let _ = writeln!(
                text,
                "repairs by the mount: {} during the run (before: {}, after: {})",
                repairs_text(&repairs_between(before, after)),
                repairs_text(before),
                repairs_text(after)
            );
        }
        _ => {
            let _ = writeln!(text, "repairs by the mount: no volume report");
        }
    }
    let _ = writeln!(
        text,
        "repairs by chaos's own passes: {} in {} passes ({} complete); deep scrub found {} damaged \
         entries; {} servers healed",
        repairs_text(&summary.chaos_repairs),
        summary.chaos_passes,
        summary.chaos_complete_passes,
        summary.chaos_damage_found,
        summary.chaos_servers_healed
    );
    if summary.healed {
        let _ = writeln!(
            text,
            "healing: healthy {:.1} s after the workload ended",
            summary.heal_ms as f64 / 1000.0
        );
    } else {
        let _ = writeln!(
            text,
            "healing: NOT healthy {:.1} s after the workload ended: {}",
            summary.heal_ms as f64 / 1000.0,
            summary.unhealthy_reason.as_deref().unwrap_or("unknown")
        );
    }
    let _ = writeln!(
        text,
        "bytes verified: {} during the run, {} after healing ({} files)",
        mebibytes(summary.verified_bytes_during_run),
        mebibytes(summary.verified_bytes_after_healing),
        summary.files_verified_after_healing
    );
    let _ = writeln!(text, "mismatches: {}", summary.mismatches);
    if let Some(failure) = &summary.workload_failure {
        let _ = writeln!(text, "workload failure: {failure}");
    }
    for note in &summary.notes {
        let _ = writeln!(text, "note: {note}");
    }
    let _ = writeln!(text, "wrote {} and {}", summary.csv_path, summary.svg_path);
    let _ = writeln!(
        text,
        "result: {}",
        if summary.passed { "PASS" } else { "FAIL" }
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean() -> ChaosSummary {
        ChaosSummary {
            healed: true,
            operations: 10,
            ..ChaosSummary::default()
        }
    }

    fn fault(within_envelope: bool) -> FaultSummary {
        FaultSummary {
            at_ms: 1000,
            ended_at_ms: 1100,
            kind: "kill".into(),
            bank: 0,
            server: 1,
            address: "127.0.0.1:7001".into(),
            within_envelope,
            succeeded: true,
            detail: String::new(),
        }
    }

    #[test]
    fn a_run_passes_only_without_wrong_data_failures_or_lasting_damage() {
        assert!(clean().judge());
        assert!(!ChaosSummary {
            mismatches: 1,
            ..clean()
        }
        .judge());
        assert!(!ChaosSummary {
            failed_operations: 1,
            ..clean()
        }
        .judge());
        assert!(!ChaosSummary {
            healed: false,
            ..clean()
        }
        .judge());
        assert!(!ChaosSummary {
            workload_failure: Some("fsx failed".into()),
            ..clean()
        }
        .judge());
        // Beyond the envelope, failures (EIO) are the right answer, never wrong data.
        let beyond = ChaosSummary {
            beyond_envelope: true,
            faults: vec![fault(true), fault(false)],
            failed_operations: 3,
            workload_failure: Some("fsx failed an operation".into()),
            ..clean()
        };
        assert!(beyond.judge());
        assert!(!ChaosSummary {
            mismatches: 1,
            ..beyond.clone()
        }
        .judge());
        // Allowed beyond, but every fault stayed within: failures still count.
        assert!(!ChaosSummary {
            faults: vec![fault(true)],
            ..beyond
        }
        .judge());
    }

    #[test]
    fn the_summary_names_every_figure() {
        let mut summary = clean();
        summary.faults = vec![fault(true)];
        summary.faults_by_kind.insert("kill".into(), 1);
        summary.repairs_before = Some(RepairsByCause::default());
        summary.repairs_after = Some(RepairsByCause {
            lagging: 4,
            ..RepairsByCause::default()
        });
        summary.passed = summary.judge();
        let text = render(&summary);
        for needle in [
            "operations: 10 done, 0 failed",
            "faults: 1 injected (kill 1), 0 failed to inject, 0 skipped, 0 beyond the envelope",
            "repairs by the mount: 4 (lagging 4, missing 0, corrupt 0, recovering 0) during the run",
            "mismatches: 0",
            "result: PASS",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
    }
}
