//! Operator commands that look at the cluster's health: `votefs status` and `votefs scrub`
//! (DESIGN §9). Command-line glue over the quorum client: the replicated core never calls it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::env::{Env, TokioEnv};
use crate::placement::Placement;
use crate::proto::{Request, Response, ServerStats, VolumeReport};
use crate::quorum::{ClientOptions, QuorumClient};
use crate::record::ClusterKey;
use crate::scrub::{ScrubOptions, ScrubProgress, ScrubReport, Scrubber};

/// One server's line of `votefs status`.
#[derive(Clone, Debug, Serialize)]
pub struct ServerStatus {
    pub bank: u32,
    pub slot: u32,
    pub address: String,
    pub up: bool,
    /// "healthy", "recovering", "blank" (empty, not yet part of the volume) or "down".
    pub state: String,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub latency_ms: f64,
    pub records: u64,
    pub tombstones: u64,
    pub live_bytes: u64,
    pub log_bytes: u64,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub requests_per_second: f64,
    pub requests: u64,
    pub restarts: u64,
    pub duplicate_requests: u64,
    pub rejected_frames: u64,
    pub corrupt_entries_seen: u64,
    pub deep_scrubbed_entries: u64,
    pub deep_scrub_damage_found: u64,
    pub record_bytes_sent: u64,
    pub record_bytes_stored: u64,
    pub tombstones_dropped: u64,
    pub promised_epoch: u64,
}

/// The whole of `votefs status --json`.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub servers: Vec<ServerStatus>,
    /// The newest report of the volume's refresh any server holds (`None` before the first).
    pub volume: Option<VolumeReport>,
}

impl ClusterStatus {
    pub fn all_up(&self) -> bool {
        self.servers.iter().all(|server| server.up)
    }
}

fn server_status(
    placement: &Placement,
    index: usize,
    latency_ms: f64,
    stats: &ServerStats,
) -> ServerStatus {
    let member = placement.member(index);
    let percent = |part: f64, whole: f64| {
        if whole > 0.0 {
            part * 100.0 / whole
        } else {
            0.0
        }
    };
    ServerStatus {
        bank: member.bank,
        slot: member.slot,
        address: placement.address(index).to_string(),
        up: true,
        state: if stats.blank {
            "blank"
        } else if stats.recovering {
            "recovering"
        } else {
            "healthy"
        }
        .into(),
        error: None,
        latency_ms,
        records: stats.records,
        tombstones: stats.tombstones,
        live_bytes: stats.live_bytes,
        log_bytes: stats.log_bytes,
        cpu_percent: percent(stats.usage.cpu_time_ms as f64, stats.uptime_ms as f64),
        memory_percent: percent(
            stats.usage.resident_bytes as f64,
            stats.usage.machine_memory_bytes as f64,
        ),
        requests_per_second: stats.request_rate_milli as f64 / 1000.0,
        requests: stats.requests,
        restarts: stats.restarts,
        duplicate_requests: stats.duplicate_requests,
        rejected_frames: stats.rejected_frames,
        corrupt_entries_seen: stats.corrupt_entries_seen,
        deep_scrubbed_entries: stats.deep_scrubbed_entries,
        deep_scrub_damage_found: stats.deep_scrub_damage_found,
        record_bytes_sent: stats.record_bytes_sent,
        record_bytes_stored: stats.record_bytes_stored,
        tombstones_dropped: stats.tombstones_dropped,
        promised_epoch: stats.promised_epoch,
    }
}

/// Ask every server for its stats (concurrently, a short timeout each).
pub async fn cluster_status(placement: &Placement, cluster_key: ClusterKey) -> ClusterStatus {
    let env = TokioEnv::new();
    let mut options = ClientOptions::default();
    options.rpc.request_timeout = Duration::from_secs(2);
    let client =
        QuorumClient::for_administration(env.clone(), placement.clone(), cluster_key, options);
    let mut tasks = Vec::new();
    for index in 0..placement.server_count() {
        let client = client.clone();
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let started = env.now();
            let answer = client.call_server(index, Request::Stats).await;
            let latency_ms = (env.now() - started).as_secs_f64() * 1000.0;
            (answer, latency_ms)
        }));
    }
    let mut servers = Vec::new();
    let mut volume: Option<VolumeReport> = None;
    for (index, task) in tasks.into_iter().enumerate() {
        let (answer, latency_ms) = match task.await {
            Ok(result) => result,
            Err(error) => (
                Err(crate::rpc::RpcError::Unreachable(error.to_string())),
                0.0,
            ),
        };
        match answer {
            Ok(Response::Stats(stats)) => {
                if let Some(report) = &stats.volume_report {
                    if volume.as_ref().is_none_or(|newest| {
                        newest.reported_at_unix_ms < report.reported_at_unix_ms
                    }) {
                        volume = Some(report.clone());
                    }
                }
                servers.push(server_status(placement, index, latency_ms, &stats));
            }
            other => {
                let member = placement.member(index);
                let why = match other {
                    Ok(response) => format!("unexpected answer {response:?}"),
                    Err(error) => error.to_string(),
                };
                servers.push(ServerStatus {
                    bank: member.bank,
                    slot: member.slot,
                    address: placement.address(index).to_string(),
                    up: false,
                    state: "down".into(),
                    error: Some(why),
                    latency_ms: 0.0,
                    records: 0,
                    tombstones: 0,
                    live_bytes: 0,
                    log_bytes: 0,
                    cpu_percent: 0.0,
                    memory_percent: 0.0,
                    requests_per_second: 0.0,
                    requests: 0,
                    restarts: 0,
                    duplicate_requests: 0,
                    rejected_frames: 0,
                    corrupt_entries_seen: 0,
                    deep_scrubbed_entries: 0,
                    deep_scrub_damage_found: 0,
                    record_bytes_sent: 0,
                    record_bytes_stored: 0,
                    tombstones_dropped: 0,
                    promised_epoch: 0,
                });
            }
        }
    }
    ClusterStatus { servers, volume }
}

fn unix_ms_now() -> u64 {
    TokioEnv::new().wall_clock_ns() / 1_000_000
}

fn describe_age(at_unix_ms: u64) -> String {
    let seconds = unix_ms_now().saturating_sub(at_unix_ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds} s ago"),
        120..=7199 => format!("{} min ago", seconds / 60),
        _ => format!("{} h ago", seconds / 3600),
    }
}

/// `votefs status` for people: one line per server, then the volume's healing.
pub fn render_status(status: &ClusterStatus) -> String {
    let mut text = String::new();
    text.push_str(
        "bank server  address                state       latency     records         bytes    cpu    mem     req/s  restarts\n",
    );
    for server in &status.servers {
        if server.up {
            text.push_str(&format!(
                "{:>4} {:>6}  {:<21}  {:<10}  {:>7.2} ms  {:>9}  {:>12}  {:>5.1}%  {:>5.1}%  {:>8.1}  {:>8}\n",
                server.bank,
                server.slot,
                server.address,
                server.state,
                server.latency_ms,
                server.records,
                server.live_bytes,
                server.cpu_percent,
                server.memory_percent,
                server.requests_per_second,
                server.restarts,
            ));
        } else {
            text.push_str(&format!(
                "{:>4} {:>6}  {:<21}  DOWN        {}\n",
                server.bank,
                server.slot,
                server.address,
                server.error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    match &status.volume {
        None => text.push_str("volume: no refresh has reported yet (is a mount running?)\n"),
        Some(report) => {
            let last_pass = match report.last_complete_pass_unix_ms {
                Some(at) => describe_age(at),
                None => "none yet".into(),
            };
            text.push_str(&format!(
                "volume: heal backlog {}, last complete pass {last_pass} ({} of {} passes complete, last took {} ms), reported by {} {}\n",
                report.heal_backlog,
                report.complete_passes,
                report.passes,
                report.last_pass_duration_ms,
                report.reporter,
                describe_age(report.reported_at_unix_ms),
            ));
            text.push_str(&format!(
                "repairs: {} copies (lagging {}, missing {}, corrupt {}, recovering {})\n",
                report.repairs.total(),
                report.repairs.lagging,
                report.repairs.missing,
                report.repairs.corrupt,
                report.repairs.recovering
            ));
        }
    }
    text
}

/// Draws the progress of a pass on standard error: a redrawn line on a terminal, a line per
/// phase otherwise.
struct ProgressLine {
    terminal: bool,
    last_phase: String,
}

impl ProgressLine {
    fn show(&mut self, progress: &ScrubProgress) {
        let (phase, detail) = match progress {
            ScrubProgress::DrainingBacklog { remaining } => {
                ("healing the backlog", format!("{remaining} copies left"))
            }
            ScrubProgress::DeepScrubbing {
                server,
                bytes_checked,
                budget_bytes,
            } => (
                "re-reading entries from disk",
                format!("server {server}: {} MiB", bytes_checked / (1024 * 1024))
                    + &if *budget_bytes == u64::MAX {
                        String::new()
                    } else {
                        format!(" of at most {} MiB", budget_bytes / (1024 * 1024))
                    },
            ),
            ScrubProgress::ComparingDigests => ("comparing digests", String::new()),
            ScrubProgress::Listing { buckets_differing } => (
                "listing differing buckets",
                format!("{buckets_differing} buckets"),
            ),
            ScrubProgress::Repairing {
                keys_done,
                keys_total,
            } => {
                let width = 30usize;
                let filled = if *keys_total == 0 {
                    width
                } else {
                    (*keys_done as usize * width) / (*keys_total as usize).max(1)
                };
                (
                    "voting and repairing",
                    format!(
                        "[{}{}] {keys_done}/{keys_total} keys",
                        "#".repeat(filled),
                        ".".repeat(width - filled)
                    ),
                )
            }
            ScrubProgress::DroppingTombstones => ("dropping settled tombstones", String::new()),
        };
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[2Kscrub: {phase} {detail}");
            let _ = stderr.flush();
        } else if phase != self.last_phase {
            let _ = writeln!(stderr, "scrub: {phase}");
        }
        self.last_phase = phase.to_string();
    }

    fn finish(&self) {
        if self.terminal {
            let _ = writeln!(std::io::stderr().lock(), "\r\x1b[2Kscrub: done");
        }
    }
}

/// What a finished pass did, for people.
pub fn render_scrub_report(report: &ScrubReport, placement: &Placement) -> String {
    let mut text = format!(
        "compared {} buckets on {} servers: {} differed, {} entries listed\n",
        report.buckets_compared,
        placement.server_count() - report.servers_unreachable.len(),
        report.buckets_differing,
        report.entries_listed
    );
    text.push_str(&format!(
        "voted {} keys, repaired {} copies (lagging {}, missing {}, corrupt {}, recovering {}; {} from the heal backlog), {} keys unsettled\n",
        report.keys_examined,
        report.repairs.total(),
        report.repairs.lagging,
        report.repairs.missing,
        report.repairs.corrupt,
        report.repairs.recovering,
        report.backlog_repaired,
        report.keys_unsettled
    ));
    text.push_str(&format!(
        "deep scrub re-read {} entries ({} bytes) and found {} damaged\n",
        report.deep_scrubbed_entries, report.deep_scrubbed_bytes, report.deep_scrub_damage_found
    ));
    if report.tombstones_dropped > 0 {
        text.push_str(&format!(
            "dropped {} tombstones every copy held\n",
            report.tombstones_dropped
        ));
    }
    for server in &report.servers_healed {
        let member = placement.member(*server);
        text.push_str(&format!(
            "healed {} (bank {} server {}): it is healthy again\n",
            placement.address(*server),
            member.bank,
            member.slot
        ));
    }
    for server in &report.servers_unreachable {
        text.push_str(&format!(
            "could not reach {}: the pass is incomplete\n",
            placement.address(*server)
        ));
    }
    text.push_str(&format!(
        "pass {} in {:.1} s\n",
        if report.is_complete() {
            "complete"
        } else {
            "INCOMPLETE"
        },
        report.duration_ms as f64 / 1000.0
    ));
    text
}

/// `votefs scrub`: one pass now, next to a running mount (as a repairer, which fences no one).
/// With `deep`, every entry of every server is re-read from disk, not only a pass's budget.
pub async fn scrub_once(
    client: QuorumClient<TokioEnv>,
    deep: bool,
) -> Result<(ScrubReport, String)> {
    let placement = client.placement().clone();
    let options = ScrubOptions {
        deep_scrub_bytes_per_pass: if deep { u64::MAX } else { 0 },
        // An operator asked for this pass: go as fast as the servers allow.
        repair_keys_per_second: 0,
        deep_scrub_bytes_per_second: 512 * 1024 * 1024,
        ..ScrubOptions::default()
    };
    let mut scrubber = Scrubber::new(client, options);
    let mut line = ProgressLine {
        terminal: std::io::stderr().is_terminal(),
        last_phase: String::new(),
    };
    let report = scrubber
        .pass(&mut |progress| line.show(&progress))
        .await
        .map_err(|error| anyhow!("the scrub pass stopped: {error}"))?;
    line.finish();
    scrubber.send_volume_report("scrub").await;
    let text = render_scrub_report(&report, &placement);
    Ok((report, text))
}
