//! Watching and speeding up the cluster's healing during a chaos run.
//!
//! The monitor asks every server for its stats once a second, as `votefs status` does. The healer
//! runs refresh passes of its own, as `votefs scrub` does (a repairer client, which fences no
//! one), back to back while faults are confined to one bank: the envelope then frees up in
//! seconds instead of waiting for the mount's next `--refresh`. Its passes re-read every entry
//! from disk (the data of a chaos run is small), which is what finds `corrupt` faults nobody
//! read. It sends no volume report, so `status` keeps showing the mount's own repairs; its repairs
//! are counted here and reported separately.

use std::time::Duration;

use tokio::sync::watch;

use crate::admin::{cluster_status, ClusterStatus};
use crate::env::{Env, TokioEnv};
use crate::placement::Placement;
use crate::quorum::QuorumClient;
use crate::record::ClusterKey;
use crate::scrub::{RepairsByCause, ScrubOptions, Scrubber};

/// Between two of the healer's passes: leave the servers some time for the workload.
const PAUSE_BETWEEN_PASSES: Duration = Duration::from_millis(500);
/// Between two status polls.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn unix_ms_now() -> u64 {
    TokioEnv::new().wall_clock_ns() / 1_000_000
}

/// The newest status and when it was taken.
#[derive(Clone, Debug)]
pub struct StatusSnapshot {
    pub status: ClusterStatus,
    pub taken_at_unix_ms: u64,
}

/// Poll the cluster's status forever, publishing each answer.
pub async fn monitor(
    placement: Placement,
    cluster_key: ClusterKey,
    snapshots: watch::Sender<Option<StatusSnapshot>>,
) {
    loop {
        let taken_at_unix_ms = unix_ms_now();
        let status = cluster_status(&placement, cluster_key.clone()).await;
        snapshots.send_replace(Some(StatusSnapshot {
            status,
            taken_at_unix_ms,
        }));
        tokio::time::sleep(STATUS_INTERVAL).await;
    }
}

/// What the healer's passes did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealerProgress {
    pub passes: u64,
    pub complete_passes: u64,
    /// When the newest complete pass started (Unix ms).
    pub last_complete_pass_started_unix_ms: Option<u64>,
    pub repairs: RepairsByCause,
    pub damage_found: u64,
    pub servers_healed: u64,
    /// Why the last pass stopped, if it did.
    pub last_error: Option<String>,
}

/// The healer's scrub options: every entry re-read, fast, no tombstones dropped (only the
/// volume's writer may).
pub fn healer_options() -> ScrubOptions {
    ScrubOptions {
        deep_scrub_bytes_per_pass: u64::MAX,
        deep_scrub_bytes_per_second: 256 * 1024 * 1024,
        repair_keys_per_second: 0,
        drop_tombstones: false,
        ..ScrubOptions::default()
    }
}

/// Run passes while `wanted` is true, publishing what they did to `progress`.
pub async fn heal(
    client: QuorumClient<TokioEnv>,
    mut wanted: watch::Receiver<bool>,
    progress: watch::Sender<HealerProgress>,
) {
    let mut scrubber = Scrubber::new(client, healer_options());
    loop {
        if wanted.wait_for(|wanted| *wanted).await.is_err() {
            return;
        }
        let started_at_unix_ms = unix_ms_now();
        let result = scrubber.pass(&mut |_| {}).await;
        progress.send_modify(|progress| {
            progress.passes += 1;
            match result {
                Ok(report) => {
                    progress.repairs.lagging += report.repairs.lagging;
                    progress.repairs.missing += report.repairs.missing;
                    progress.repairs.corrupt += report.repairs.corrupt;
                    progress.repairs.recovering += report.repairs.recovering;
                    progress.damage_found += report.deep_scrub_damage_found;
                    progress.servers_healed += report.servers_healed.len() as u64;
                    if report.is_complete() {
                        progress.complete_passes += 1;
                        progress.last_complete_pass_started_unix_ms = Some(started_at_unix_ms);
                        progress.last_error = None;
                    } else {
                        progress.last_error = Some(format!(
                            "{} servers unreachable, {} keys unsettled",
                            report.servers_unreachable.len(),
                            report.keys_unsettled
                        ));
                    }
                }
                Err(error) => progress.last_error = Some(error.to_string()),
            }
        });
        tokio::time::sleep(PAUSE_BETWEEN_PASSES).await;
    }
}

/// Now, in Unix ms, on the clock volume reports use.
pub fn now_unix_ms() -> u64 {
    unix_ms_now()
}
