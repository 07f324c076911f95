//! `votefs chaos` (DESIGN §9): while a workload runs on the mount of a `votefs up` cluster, inject
//! a fault every `--every` (kill, restart-empty, corrupt or pause, see [`faults`]), keep the
//! damage within one bank at a time ([`envelope`]), measure the workload's throughput every
//! second, and at the end wait for the cluster to heal, check the workload's data and write a CSV,
//! an SVG chart ([`chart`]) and a summary ([`summary`]).
//!
//! Command-line glue like [`crate::admin`]: it signals processes and edits files behind the
//! servers' backs, which nothing in the replicated core may do.

pub mod chart;
pub mod copy;
pub mod corrupt;
pub mod envelope;
pub mod faults;
pub mod heal;
pub mod summary;
pub mod workload;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::{mpsc, watch};

use crate::admin::{cluster_status, ClusterStatus};
use crate::config::ClusterConfig;
use crate::env::tokio_env::os_random_fill;
use crate::env::TokioEnv;
use crate::quorum::{ClientOptions, OpenMode, QuorumClient};

use chart::{FaultMark, SecondSample};
use envelope::{ClusterHealth, Envelope};
use faults::{FaultKind, FaultPlanner, ServerProcesses};
use heal::{now_unix_ms, HealerProgress, StatusSnapshot};
use summary::{ChaosSummary, FaultSummary};
use workload::{RunningWorkload, WorkloadCounters, WorkloadKind};

/// The file in a `votefs up` data directory that holds the absolute path of its mount point
/// while it serves one: `votefs chaos` reads it when given no `--mount`.
pub const MOUNTPOINT_FILE_NAME: &str = "mountpoint";
/// How long the faults still being injected when the workload ends may take to finish.
const FAULTS_FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// What `votefs chaos` was asked to do.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    pub cluster_file: PathBuf,
    /// The mount point; `None`: the one `votefs up` wrote into its data directory.
    pub mountpoint: Option<PathBuf>,
    pub every: Duration,
    pub duration: Duration,
    pub workload: WorkloadKind,
    /// `None`: a random seed (printed).
    pub seed: Option<u64>,
    pub out_dir: PathBuf,
    pub beyond_envelope: bool,
    /// The kinds to draw from.
    pub fault_kinds: Vec<FaultKind>,
    /// How long the cluster may take to be healthy, before the run and after it.
    pub heal_timeout: Duration,
}

/// A fault while it is injected and after.
struct FaultRecord {
    mark: FaultMark,
    address: String,
    ended_at_ms: Option<u64>,
    detail: String,
}

/// A fault task's answer.
struct FaultDone {
    id: usize,
    server: usize,
    result: Result<String>,
    ended_at: Instant,
    ended_at_unix_ms: u64,
}

/// Whether `path` is a votefs FUSE mount, from `/proc/self/mountinfo` (mount point in field 5;
/// after the ` - ` separator, the file system type and the source).
fn is_votefs_mount(path: &Path) -> bool {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.as_os_str().to_string_lossy();
    mountinfo.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(before), Some(after)) = (halves.next(), halves.next()) else {
            return false;
        };
        // Spaces and the like are octal-escaped in mountinfo.
        let mount_point = before
            .split(' ')
            .nth(4)
            .unwrap_or_default()
            .replace("\\040", " ");
        // Mounted by root through mount(2) it is type `fuse` from source `votefs`; through
        // fusermount3, type `fuse.votefs`.
        let mut fields = after.split(' ');
        let (file_system_type, source) = (fields.next(), fields.next());
        mount_point == wanted
            && (file_system_type == Some("fuse.votefs")
                || (file_system_type == Some("fuse") && source == Some("votefs")))
    })
}

/// The mount point to run the workload on: `--mount`, else the one `votefs up` recorded.
fn find_mountpoint(given: Option<&Path>, data_dir: &Path) -> Result<PathBuf> {
    let mountpoint = match given {
        Some(path) => path.to_path_buf(),
        None => {
            let file = data_dir.join(MOUNTPOINT_FILE_NAME);
            let text = std::fs::read_to_string(&file).map_err(|_| {
                anyhow!(
                    "no --mount given and {} does not exist (`votefs up MOUNTPOINT` writes it \
                     while it serves a mount)",
                    file.display()
                )
            })?;
            PathBuf::from(text.trim_end_matches('\n'))
        }
    };
    let absolute = mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", mountpoint.display()))?;
    if !is_votefs_mount(&absolute) {
        bail!(
            "{} is not a votefs mount (is `votefs up` serving it?)",
            absolute.display()
        );
    }
    Ok(absolute)
}

/// Wait until the cluster is healthy (judged by a volume report made after `since_unix_ms`), at
/// most `timeout`; the reason it is not, otherwise.
async fn wait_until_healthy(
    config: &ClusterConfig,
    key: &crate::record::ClusterKey,
    since_unix_ms: u64,
    timeout: Duration,
) -> Result<ClusterStatus, String> {
    let give_up_at = Instant::now() + timeout;
    let mut said = String::new();
    loop {
        let status = cluster_status(&config.placement, key.clone()).await;
        let health = ClusterHealth::from_status(&status);
        if health.is_healthy_since(since_unix_ms) {
            return Ok(status);
        }
        let reason = health.describe(since_unix_ms);
        if Instant::now() >= give_up_at {
            return Err(reason);
        }
        if reason != said {
            eprintln!("chaos: waiting for the cluster to be healthy: {reason}");
            said = reason;
        }
        tokio::time::sleep(heal::STATUS_INTERVAL).await;
    }
}

fn supervisor_restarts(status: &ClusterStatus) -> u64 {
    status.servers.iter().map(|server| server.restarts).sum()
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    os_random_fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// Run a chaos run. Errors are bad input or a cluster that cannot be run against; what the run
/// found is in the summary (see [`ChaosSummary::passed`]).
pub async fn run(options: ChaosOptions) -> Result<ChaosSummary> {
    if options.every.is_zero() || options.duration.is_zero() {
        bail!("--every and --duration must be greater than zero");
    }
    let config = ClusterConfig::load(&options.cluster_file)?;
    let key = config.load_key()?;
    let program = workload::find_workload(options.workload)?;
    let processes = ServerProcesses::discover(&config)?;
    let mountpoint = find_mountpoint(options.mountpoint.as_deref(), processes.data_dir())?;
    std::fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("cannot create {}", options.out_dir.display()))?;

    let seed = options.seed.unwrap_or_else(random_seed);
    eprintln!(
        "chaos: seed {seed} (--seed {seed} repeats the fault choices); workload {} on {}",
        options.workload.name(),
        mountpoint.display()
    );
    let before = wait_until_healthy(&config, &key, 0, options.heal_timeout)
        .await
        .map_err(|reason| {
            anyhow!("the cluster is not healthy ({reason}): chaos starts only on a healthy one")
        })?;
    let repairer = QuorumClient::open(
        TokioEnv::new(),
        config.placement.clone(),
        key.clone(),
        ClientOptions::default(),
        OpenMode::Repairer,
    )
    .await
    .map_err(|error| anyhow!("cannot open the volume to repair it: {error}"))?;

    let (status_sender, status_receiver) = watch::channel(None::<StatusSnapshot>);
    let monitor = tokio::spawn(heal::monitor(
        config.placement.clone(),
        key.clone(),
        status_sender,
    ));
    let (heal_wanted, heal_wanted_receiver) = watch::channel(false);
    let (progress_sender, progress_receiver) = watch::channel(HealerProgress::default());
    let healer = tokio::spawn(heal::heal(repairer, heal_wanted_receiver, progress_sender));

    let directory = mountpoint.join(format!(
        "chaos-{}-{seed}-{}",
        options.workload.name(),
        now_unix_ms() / 1000
    ));
    std::fs::create_dir(&directory)
        .with_context(|| format!("cannot create {}", directory.display()))?;
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut running = RunningWorkload::start(
        program,
        directory.clone(),
        options
            .out_dir
            .join(format!("chaos-{}", options.workload.name())),
        seed,
        deadline,
    )?;
    let counters = running.counters().clone();

    let run = Run {
        options: &options,
        processes: &processes,
        bank_count: config.placement.bank_count(),
        servers_per_bank: config.placement.servers_per_bank(),
        started,
        deadline,
        seed,
    };
    let outcome = run
        .inject_while_running(
            &mut running,
            &status_receiver,
            &progress_receiver,
            &heal_wanted,
        )
        .await;
    let workload_ended = Instant::now();
    let report = running.stop().await?;
    let RunOutcome {
        samples,
        mut faults,
        mut envelope,
        faults_skipped,
        interrupted,
        mut pending,
    } = outcome;
    // Faults still being injected (a pause, a restart) finish before the cluster is judged.
    let finish_by = tokio::time::Instant::now() + FAULTS_FINISH_TIMEOUT;
    while pending.in_progress() > 0 {
        match tokio::time::timeout_at(finish_by, pending.done.recv()).await {
            Ok(Some(done)) => {
                record_fault_done(&mut faults, &mut envelope, &mut pending, done, started)
            }
            _ => break,
        }
    }

    // Heal: the healer's passes run until the envelope is free again.
    heal_wanted.send_replace(true);
    let give_up_at = Instant::now() + options.heal_timeout;
    let mut unhealthy_reason = None;
    let healed = loop {
        let snapshot = status_receiver.borrow().clone();
        let progress = progress_receiver.borrow().clone();
        if let Some(snapshot) = &snapshot {
            let health = ClusterHealth::from_status(&snapshot.status);
            envelope.observe(&health, progress.last_complete_pass_started_unix_ms);
            if !envelope.is_disturbed()
                && health.is_healthy_since(envelope.last_fault_ended_unix_ms())
            {
                break true;
            }
            unhealthy_reason = Some(health.describe(envelope.last_fault_ended_unix_ms()));
        }
        if Instant::now() >= give_up_at {
            if let Some(error) = &progress.last_error {
                unhealthy_reason = Some(format!(
                    "{}; the last chaos pass: {error}",
                    unhealthy_reason.unwrap_or_default()
                ));
            }
            break false;
        }
        tokio::time::sleep(heal::STATUS_INTERVAL).await;
    };
    let heal_ms = workload_ended.elapsed().as_millis() as u64;
    heal_wanted.send_replace(false);

    // Check the workload's data against its own record, now that the cluster healed.
    let final_counters = Arc::new(WorkloadCounters::default());
    let mut notes = report.notes.clone();
    let files_verified = report.files.len() as u64;
    if !report.files.is_empty() {
        let files = report.files.clone();
        let directory = directory.clone();
        let final_counters = final_counters.clone();
        let final_notes = tokio::task::spawn_blocking(move || {
            let mut notes = Vec::new();
            for (name, record) in &files {
                copy::verify_file(&directory, name, record, &final_counters, &mut notes);
            }
            notes
        })
        .await
        .context("the verifying task failed")?;
        notes.extend(final_notes);
    }
    let during = counters.totals();
    let after_healing = final_counters.totals();
    let after = cluster_status(&config.placement, key.clone()).await;
    monitor.abort();
    healer.abort();
    let progress = progress_receiver.borrow().clone();

    let mut summary = ChaosSummary {
        seed,
        workload: options.workload.name().into(),
        every_ms: options.every.as_millis() as u64,
        duration_ms: (workload_ended - started).as_millis() as u64,
        beyond_envelope: options.beyond_envelope,
        interrupted,
        operations: during.operations,
        failed_operations: during.failed_operations + after_healing.failed_operations,
        mismatches: during.mismatches + after_healing.mismatches,
        verified_bytes_during_run: match options.workload {
            // fsx compares every byte it reads with its model.
            WorkloadKind::Fsx => running_read_bytes(&samples),
            WorkloadKind::Copy => during.verified_bytes,
            WorkloadKind::Dbench => 0,
        },
        verified_bytes_after_healing: after_healing.verified_bytes,
        files_verified_after_healing: files_verified,
        workload_failure: report.failure.clone(),
        faults_skipped,
        supervisor_restarts: supervisor_restarts(&after)
            .saturating_sub(supervisor_restarts(&before)),
        repairs_before: before.volume.as_ref().map(|report| report.repairs.clone()),
        repairs_after: after.volume.as_ref().map(|report| report.repairs.clone()),
        chaos_passes: progress.passes,
        chaos_complete_passes: progress.complete_passes,
        chaos_repairs: progress.repairs.clone(),
        chaos_damage_found: progress.damage_found,
        chaos_servers_healed: progress.servers_healed,
        healed,
        heal_ms,
        unhealthy_reason: if healed { None } else { unhealthy_reason },
        ..ChaosSummary::default()
    };
    if !options.workload.checks_data() {
        notes.push(format!(
            "{} checks no data: only its exit status and errors were judged",
            options.workload.name()
        ));
    }
    for fault in &faults {
        let summary_fault = FaultSummary {
            at_ms: fault.mark.at_ms,
            ended_at_ms: fault.ended_at_ms.unwrap_or(fault.mark.at_ms),
            kind: fault.mark.kind.name().into(),
            bank: fault.mark.bank,
            server: fault.mark.slot,
            address: fault.address.clone(),
            within_envelope: fault.mark.within_envelope,
            succeeded: fault.mark.succeeded,
            detail: fault.detail.clone(),
        };
        if summary_fault.succeeded {
            *summary
                .faults_by_kind
                .entry(summary_fault.kind.clone())
                .or_default() += 1;
        }
        summary.faults.push(summary_fault);
    }
    summary.notes = notes;
    summary.passed = summary.judge();
    // A clean run leaves nothing behind on the volume; a failed one keeps the evidence.
    if summary.passed {
        let removing = directory.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(removing)).await;
        if let Ok(Err(error)) = removed {
            summary
                .notes
                .push(format!("cannot remove {}: {error}", directory.display()));
        }
    } else {
        summary.notes.push(format!(
            "the workload's files are kept in {}",
            directory.display()
        ));
    }

    let marks: Vec<FaultMark> = faults.iter().map(|fault| fault.mark.clone()).collect();
    let csv_path = options.out_dir.join("chaos.csv");
    let svg_path = options.out_dir.join("chaos.svg");
    let json_path = options.out_dir.join("chaos.json");
    summary.csv_path = csv_path.display().to_string();
    summary.svg_path = svg_path.display().to_string();
    let title = format!(
        "votefs chaos: {} workload, a fault every {:.0} s, seed {seed}",
        options.workload.name(),
        options.every.as_secs_f64()
    );
    std::fs::write(&csv_path, chart::render_csv(&samples, &marks))
        .with_context(|| format!("cannot write {}", csv_path.display()))?;
    std::fs::write(&svg_path, chart::render_svg(&samples, &marks, &title))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    Ok(summary)
}

fn running_read_bytes(samples: &[SecondSample]) -> u64 {
    samples.iter().map(|sample| sample.read_bytes).sum()
}

/// The parts of a run that do not change while it runs.
struct Run<'a> {
    options: &'a ChaosOptions,
    processes: &'a ServerProcesses,
    bank_count: usize,
    servers_per_bank: usize,
    started: Instant,
    deadline: Instant,
    seed: u64,
}

/// Faults being injected, and the channel their tasks answer on.
struct Pending {
    servers: BTreeSet<usize>,
    sender: mpsc::UnboundedSender<FaultDone>,
    done: mpsc::UnboundedReceiver<FaultDone>,
}

impl Pending {
    fn in_progress(&self) -> usize {
        self.servers.len()
    }
}

struct RunOutcome {
    samples: Vec<SecondSample>,
    faults: Vec<FaultRecord>,
    envelope: Envelope,
    faults_skipped: u64,
    interrupted: bool,
    pending: Pending,
}

fn record_fault_done(
    faults: &mut [FaultRecord],
    envelope: &mut Envelope,
    pending: &mut Pending,
    done: FaultDone,
    started: Instant,
) {
    pending.servers.remove(&done.server);
    envelope.fault_ended(done.ended_at_unix_ms);
    let fault = &mut faults[done.id];
    fault.ended_at_ms = Some(done.ended_at.saturating_duration_since(started).as_millis() as u64);
    match done.result {
        Ok(detail) => {
            fault.detail = detail;
            fault.mark.succeeded = true;
        }
        Err(error) => fault.detail = format!("failed: {error:#}"),
    }
    eprintln!(
        "chaos: {:>7.1} s  {} on bank {} server {} ({}): {}",
        fault.mark.at_ms as f64 / 1000.0,
        fault.mark.kind.name(),
        fault.mark.bank,
        fault.mark.slot,
        fault.address,
        fault.detail
    );
}

impl Run<'_> {
    /// Sample every second and inject a fault every `--every` until the deadline, the end of the
    /// workload or Ctrl-C.
    async fn inject_while_running(
        &self,
        running: &mut RunningWorkload,
        status: &watch::Receiver<Option<StatusSnapshot>>,
        progress: &watch::Receiver<HealerProgress>,
        heal_wanted: &watch::Sender<bool>,
    ) -> RunOutcome {
        let mut planner = FaultPlanner::new(self.seed, &self.options.fault_kinds);
        let mut envelope = Envelope::new(self.options.beyond_envelope);
        let (sender, done) = mpsc::unbounded_channel();
        let mut pending = Pending {
            servers: BTreeSet::new(),
            sender,
            done,
        };
        let mut samples: Vec<SecondSample> = Vec::new();
        let mut faults: Vec<FaultRecord> = Vec::new();
        let mut faults_skipped = 0;
        let mut interrupted = false;
        let mut last_totals = running.sample();
        let one_second = Duration::from_secs(1);
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::from_std(self.started + one_second),
            one_second,
        );
        let mut next_fault_at = tokio::time::Instant::from_std(self.started + self.options.every);
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let mut stop_signals = stop_signals();
        loop {
            tokio::select! {
                // A sample due at the same moment as a fault covers the second before it.
                biased;
                _ = ticks.tick() => {
                    let totals = running.sample();
                    if let Some(snapshot) = status.borrow().as_ref() {
                        let health = ClusterHealth::from_status(&snapshot.status);
                        let passed = progress.borrow().last_complete_pass_started_unix_ms;
                        if envelope.observe(&health, passed) {
                            eprintln!(
                                "chaos: {:>7.1} s  the cluster is healthy again",
                                self.started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    heal_wanted.send_replace(envelope.is_disturbed());
                    samples.push(SecondSample {
                        second: samples.len() as u64,
                        read_bytes: totals.read_bytes.saturating_sub(last_totals.read_bytes),
                        written_bytes: totals.written_bytes.saturating_sub(last_totals.written_bytes),
                        operations: totals.operations.saturating_sub(last_totals.operations),
                        disturbed: envelope.is_disturbed(),
                    });
                    last_totals = totals;
                    if tokio::time::Instant::now() >= deadline || running.is_finished() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next_fault_at), if next_fault_at < deadline => {
                    next_fault_at += self.options.every;
                    match self.start_fault(&mut planner, &mut envelope, &mut pending, faults.len()) {
                        Some(record) => faults.push(record),
                        None => faults_skipped += 1,
                    }
                    heal_wanted.send_replace(envelope.is_disturbed());
                }
                Some(done) = pending.done.recv() => {
                    record_fault_done(&mut faults, &mut envelope, &mut pending, done, self.started);
                }
                _ = stop_signals.recv() => {
                    eprintln!("chaos: interrupted: stopping the workload and healing");
                    interrupted = true;
                    break;
                }
            }
        }
        RunOutcome {
            samples,
            faults,
            envelope,
            faults_skipped,
            interrupted,
            pending,
        }
    }

    /// Choose the next fault and start injecting it; `None` when no server can take it now.
    fn start_fault(
        &self,
        planner: &mut FaultPlanner,
        envelope: &mut Envelope,
        pending: &mut Pending,
        id: usize,
    ) -> Option<FaultRecord> {
        let kind = planner.next_kind();
        let corrupt_seed = planner.next_seed();
        let mut candidates: Vec<usize> = envelope
            .allowed_banks(self.bank_count)
            .into_iter()
            .flat_map(|bank| bank * self.servers_per_bank..(bank + 1) * self.servers_per_bank)
            .filter(|server| !pending.servers.contains(server))
            .filter(|server| match kind {
                FaultKind::Corrupt => faults::has_records(self.processes, *server),
                _ => self.processes.running_pid(*server).is_some(),
            })
            .collect();
        if candidates.is_empty() {
            eprintln!(
                "chaos: {:>7.1} s  no server can take a {} fault now: skipped",
                self.started.elapsed().as_secs_f64(),
                kind.name()
            );
            return None;
        }
        let server = candidates.swap_remove(planner.pick(candidates.len()));
        let local = self.processes.server(server).clone();
        let within_envelope = envelope.is_within(local.bank);
        envelope.fault_started(local.bank);
        pending.servers.insert(server);
        let processes = self.processes.clone();
        let sender = pending.sender.clone();
        tokio::spawn(async move {
            let result = match kind {
                FaultKind::Kill => faults::kill(&processes, server).await,
                FaultKind::RestartEmpty => faults::restart_empty(&processes, server).await,
                FaultKind::Corrupt => faults::corrupt(&processes, server, corrupt_seed).await,
                FaultKind::Pause => faults::pause(&processes, server).await,
            };
            let _ = sender.send(FaultDone {
                id,
                server,
                result,
                ended_at: Instant::now(),
                ended_at_unix_ms: now_unix_ms(),
            });
        });
        Some(FaultRecord {
            mark: FaultMark {
                at_ms: self.started.elapsed().as_millis() as u64,
                kind,
                bank: local.bank,
                slot: local.slot,
                within_envelope,
                succeeded: false,
            },
            address: local.address.to_string(),
            ended_at_ms: None,
            detail: String::new(),
        })
    }
}

/// SIGINT and SIGTERM as one stream; a stream that never yields if the handlers cannot be
/// installed (the run then simply cannot be interrupted early).
fn stop_signals() -> mpsc::UnboundedReceiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (sender, receiver) = mpsc::unbounded_channel();
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    if let (Ok(mut interrupt), Ok(mut terminate)) = handlers {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                if sender.send(()).is_err() {
                    return;
                }
            }
        });
    }
    receiver
}
