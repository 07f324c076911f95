//! One file-system schedule: a seeded stream of path operations (`votefs::verify::generate`) on
//! votefs's file-system layer over the simulated cluster, each response compared with the
//! reference model by field class, while servers crash, lose their disks, rot and pause (one bank
//! at a time), and the mount itself crashes mid-operation and is remounted. After a client crash
//! the volume must show the interrupted operation either done or not done, never half done; at
//! the end, after a refresh pass, the whole tree must equal the model and pass a consistency check.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};

use votefs::env::Env;
use votefs::fs::{FileSystem, RecoveryReport};
use votefs::planted::PlantedBug;
use votefs::quorum::{OpenMode, QuorumClient};
use votefs::rng::SeededRng;
use votefs::scrub::{refresh_loop, ScrubOptions, Scrubber};
use votefs::verify::compare::{compare, ComparisonOptions};
use votefs::verify::generate::Generator;
use votefs::verify::model::{AccessTimeUpdates, Model, ModelOptions};
use votefs::verify::operation::{FileKind, FsPath, Operation, Reply, Response, Timestamp};

use crate::cluster::SimCluster;
use crate::fs_target::PathTarget;
use crate::run::{client_options, cluster_key_for, server_options};
use crate::sim_env::SimEnv;

const BANKS: usize = 3;
const SERVERS_PER_BANK: usize = 2;
/// Mount crashes per schedule (at operations that must be atomic).
const CLIENT_CRASHES: usize = 4;

/// What one file-system schedule did and found.
#[derive(Clone, Debug, Default)]
pub struct FsRunReport {
    pub seed: u64,
    pub operations: u64,
    pub client_crashes: u64,
    /// Client crashes after which the interrupted operation turned out done.
    pub interrupted_done: u64,
    pub intents_redone: u64,
    pub server_faults: u64,
    pub failures: Vec<String>,
    pub trace_hash: u64,
    pub simulated_time: Duration,
}

impl FsRunReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn replay_command(&self) -> String {
        format!("VOTEFS_FS_SEED={} cargo test -p votefs-sim --test fs_sweep -- replay_one_fs_seed --nocapture", self.seed)
    }
}

pub fn run_fs_schedule(seed: u64, operations: usize) -> FsRunReport {
    run_fs_schedule_with(seed, operations, None)
}

/// As [`run_fs_schedule`], with a planted bug in every mount (the harness's self-test).
pub fn run_fs_schedule_with(
    seed: u64,
    operations: usize,
    planted_bug: Option<PlantedBug>,
) -> FsRunReport {
    let mut runtime =
        madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(Duration::from_secs(3600));
    runtime.block_on(simulate(seed, operations, planted_bug))
}

fn now(env: &SimEnv) -> Timestamp {
    let nanoseconds = env.wall_clock_ns();
    Timestamp::new(
        (nanoseconds / 1_000_000_000) as i64,
        (nanoseconds % 1_000_000_000) as u32,
    )
}

fn model_options() -> ModelOptions {
    ModelOptions {
        access_time_updates: AccessTimeUpdates::Never,
        ..ModelOptions::default()
    }
}

fn comparison_options() -> ComparisonOptions {
    ComparisonOptions {
        compare_access_times: false,
        ..ComparisonOptions::default()
    }
}

struct Mount {
    node: NodeHandle,
    target: Arc<PathTarget<SimEnv>>,
}

/// Open the volume as its writer on a fresh client node and mount the file system there.
/// How often a simulated mount runs its refresh pass, and reports to the servers.
const REFRESH_INTERVAL: Duration = Duration::from_secs(3);
const REFRESH_REPORT_INTERVAL: Duration = Duration::from_secs(1);

async fn mount(
    env: &SimEnv,
    cluster: &Arc<Mutex<SimCluster>>,
    number: u8,
    planted_bug: Option<PlantedBug>,
) -> Result<(Mount, RecoveryReport), String> {
    let (placement, key) = {
        let cluster = cluster.lock().unwrap();
        (cluster.placement.clone(), cluster.cluster_key.clone())
    };
    let node = Handle::current()
        .create_node()
        .name(format!("mount-{number}"))
        .ip(IpAddr::V4(Ipv4Addr::new(10, 3, 0, number + 1)))
        .build();
    let task_env = env.clone();
    let opened = node
        .spawn(async move {
            let mut last_error = String::new();
            // A mount retries while a fault makes the cluster briefly unreachable.
            for _ in 0..50 {
                match QuorumClient::open(
                    task_env.clone(),
                    placement.clone(),
                    key.clone(),
                    client_options(planted_bug),
                    OpenMode::Writer,
                )
                .await
                {
                    Ok(client) => match FileSystem::mount(task_env.clone(), client.clone()).await {
                        Ok((fs, report)) => {
                            // The mount's refresh runs alongside the workload and the faults,
                            // as `votefs mount` runs it (only faster).
                            let scrubber = Scrubber::new(client.clone(), ScrubOptions::default());
                            task_env.spawn(async move {
                                refresh_loop(scrubber, REFRESH_INTERVAL, REFRESH_REPORT_INTERVAL)
                                    .await;
                            });
                            return Ok((fs, report));
                        }
                        Err(errno) => last_error = format!("file system: {errno}"),
                    },
                    Err(error) => last_error = error.to_string(),
                }
                task_env.sleep(Duration::from_millis(200)).await;
            }
            Err(last_error)
        })
        .await
        .map_err(|error| format!("the mount node died: {error}"))??;
    let (fs, report) = opened;
    Ok((
        Mount {
            node,
            target: Arc::new(PathTarget::new(fs)),
        },
        report,
    ))
}

impl Mount {
    async fn apply(&self, operation: &Operation) -> Option<Response> {
        let target = self.target.clone();
        let operation = operation.clone();
        self.node
            .spawn(async move { target.apply(&operation).await })
            .await
            .ok()
    }
}

/// Whether a client crash in the middle of `operation` must leave it done or not done. A write
/// that crashes half stored may mix old and new bytes (POSIX promises nothing without fsync), so
/// the crash points skip writes.
fn crash_is_atomic(operation: &Operation) -> bool {
    !matches!(operation, Operation::Write { .. })
}

/// Everything comparable about a tree: per path, kind, mode, size, links, target, bytes, xattrs.
type Snapshot = BTreeMap<FsPath, String>;

/// Walk a tree through the operation language (`apply` answers each operation).
async fn snapshot<F, Fut>(mut apply: F) -> Result<Snapshot, String>
where
    F: FnMut(Operation) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let mut snapshot = Snapshot::new();
    let mut pending = vec![FsPath::root()];
    // Bounded by the tree's size: every path is visited once (symlinks are not followed).
    while let Some(directory) = pending.pop() {
        let entries = match apply(Operation::ReadDir {
            path: directory.clone(),
        })
        .await
        {
            Ok(Reply::Entries(entries)) => entries,
            other => return Err(format!("readdir {directory}: {other:?}")),
        };
        for entry in entries {
            let path = directory.join(&entry.name);
            let attributes = match apply(Operation::Stat { path: path.clone() }).await {
                Ok(Reply::Attributes(attributes)) => attributes,
                other => return Err(format!("stat {path}: {other:?}")),
            };
            let mut description = format!(
                "{:?} mode {:o} nlink {} uid {} gid {}",
                attributes.kind, attributes.mode, attributes.nlink, attributes.uid, attributes.gid
            );
            match attributes.kind {
                FileKind::Directory => pending.push(path.clone()),
                FileKind::RegularFile => {
                    let data = apply(Operation::Read {
                        path: path.clone(),
                        offset: 0,
                        length: attributes.size,
                    })
                    .await;
                    match data {
                        Ok(Reply::Data(bytes)) => description.push_str(&format!(
                            " size {} data {:016x}",
                            attributes.size,
                            votefs::rng::stable_hash(&[&bytes])
                        )),
                        other => return Err(format!("read {path}: {other:?}")),
                    }
                }
                FileKind::Symlink => {
                    let target = apply(Operation::Readlink { path: path.clone() }).await;
                    description.push_str(&format!(" size {} target {target:?}", attributes.size));
                }
                FileKind::Other => {}
            }
            if attributes.kind != FileKind::Symlink {
                let names = apply(Operation::ListXattr { path: path.clone() }).await;
                if let Ok(Reply::Names(mut names)) = names {
                    names.sort();
                    for name in names {
                        let value = apply(Operation::GetXattr {
                            path: path.clone(),
                            name: name.clone(),
                        })
                        .await;
                        description.push_str(&format!(" xattr {name:?}={value:?}"));
                    }
                }
            }
            snapshot.insert(path, description);
        }
    }
    Ok(snapshot)
}

async fn model_snapshot(model: &Model) -> Result<Snapshot, String> {
    let model = Mutex::new(model.clone());
    snapshot(|operation| {
        let response = model
            .lock()
            .unwrap()
            .apply(&operation, Timestamp::default());
        async move { response }
    })
    .await
}

async fn mount_snapshot(mount: &Mount) -> Result<Snapshot, String> {
    snapshot(|operation| async move {
        mount
            .apply(&operation)
            .await
            .unwrap_or(Err(votefs::verify::operation::Errno::EIO))
    })
    .await
}

/// Whether the mount's attributes of the operation's paths agree (times loosely) with the model
/// after the operation, and with the model before it.
async fn times_match(
    mount: &Mount,
    operation: &Operation,
    after: &Model,
    before: &Model,
    options: &ComparisonOptions,
) -> (bool, bool) {
    let mut matches_after = true;
    let mut matches_before = true;
    for path in operation.paths() {
        let stat = Operation::Stat { path: path.clone() };
        let actual = mount
            .apply(&stat)
            .await
            .unwrap_or(Err(votefs::verify::operation::Errno::EIO));
        let expected_after = after.clone().apply(&stat, Timestamp::default());
        let expected_before = before.clone().apply(&stat, Timestamp::default());
        matches_after &= compare(&stat, &expected_after, &actual, options).is_empty();
        matches_before &= compare(&stat, &expected_before, &actual, options).is_empty();
    }
    (matches_after, matches_before)
}

fn describe_difference(expected: &Snapshot, actual: &Snapshot) -> String {
    let mut lines = Vec::new();
    for (path, description) in expected {
        match actual.get(path) {
            None => lines.push(format!("missing {path}: {description}")),
            Some(other) if other != description => {
                lines.push(format!("{path}: expected {description}, found {other}"))
            }
            _ => {}
        }
    }
    for (path, description) in actual {
        if !expected.contains_key(path) {
            lines.push(format!("unexpected {path}: {description}"));
        }
    }
    lines.truncate(8);
    lines.join("; ")
}

/// Server faults inside the envelope, all in one bank: crash and restart, lose the disk, rot a
/// bit at rest, pause. Returns how many were applied.
async fn run_server_faults(
    env: SimEnv,
    cluster: Arc<Mutex<SimCluster>>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut rng = SeededRng::new(seed ^ 0xFA17_5EED);
    let bank = rng.below(BANKS as u64) as usize;
    let mut applied = 0;
    // Bounded by `stop`, which the driver sets after the last operation.
    while !stop.load(Ordering::Acquire) {
        env.sleep(Duration::from_millis(100 + rng.below(900))).await;
        if stop.load(Ordering::Acquire) {
            break;
        }
        let server = bank * SERVERS_PER_BANK + rng.below(SERVERS_PER_BANK as u64) as usize;
        let down_for = Duration::from_millis(50 + rng.below(700));
        match rng.below(4) {
            0 | 1 => {
                {
                    let mut cluster = cluster.lock().unwrap();
                    cluster.kill(server);
                    if rng.below(2) == 0 {
                        cluster.servers[server].disk.crash(rng.below(2) == 0);
                    } else {
                        cluster.servers[server].disk.wipe();
                    }
                }
                env.sleep(down_for).await;
                cluster.lock().unwrap().restart(server);
            }
            2 => {
                cluster.lock().unwrap().servers[server]
                    .disk
                    .flip_bit_at_rest();
            }
            _ => {
                cluster.lock().unwrap().pause(server);
                env.sleep(down_for).await;
                cluster.lock().unwrap().resume(server);
            }
        }
        applied += 1;
    }
    applied
}

async fn simulate(
    seed: u64,
    operation_count: usize,
    planted_bug: Option<PlantedBug>,
) -> FsRunReport {
    let env = SimEnv::default();
    let cluster_key = cluster_key_for(seed);
    let cluster = Arc::new(Mutex::new(SimCluster::start(
        &env,
        BANKS,
        SERVERS_PER_BANK,
        &cluster_key,
        &server_options(None),
        seed,
    )));
    let mut report = FsRunReport {
        seed,
        ..Default::default()
    };
    env.sleep(Duration::from_millis(50)).await;
    let mut rng = SeededRng::new(seed ^ 0x00F5_C4A5);
    let mut generator = Generator::new(seed);
    let mut model = Model::new(model_options(), now(&env));
    let options = comparison_options();
    let mut mounts = 0u8;
    let (mut current, _) = match mount(&env, &cluster, mounts, planted_bug).await {
        Ok(mounted) => mounted,
        Err(why) => {
            report
                .failures
                .push(format!("the first mount failed: {why}"));
            return finish(report, &env, &cluster, Vec::new());
        }
    };
    let mut retired = vec![current.node.id()];
    mounts += 1;
    let crash_points: Vec<usize> = (0..CLIENT_CRASHES)
        .map(|_| operation_count / 4 + rng.below((operation_count * 3 / 4).max(1) as u64) as usize)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let faults = madsim::task::spawn(run_server_faults(
        env.clone(),
        cluster.clone(),
        seed,
        stop.clone(),
    ));
    for index in 0..operation_count {
        let operation = generator.next_operation();
        let time = now(&env);
        if crash_points.contains(&index) && crash_is_atomic(&operation) {
            let before = model.clone();
            let mut after = model.clone();
            let _ = after.apply(&operation, time);
            let target = current.target.clone();
            let in_flight = operation.clone();
            // Die after a random number of the operation's record writes (the intent counts),
            // or at a random moment when the operation has fewer writes than that.
            target.fs.stall_after_writes(rng.below(6) as i64);
            let handle = current
                .node
                .spawn(async move { target.apply(&in_flight).await });
            env.sleep(Duration::from_micros(rng.below(20_000))).await;
            Handle::current().kill(current.node.id());
            drop(handle);
            report.client_crashes += 1;
            let (mounted, recovery) = match mount(&env, &cluster, mounts, planted_bug).await {
                Ok(mounted) => mounted,
                Err(why) => {
                    report.failures.push(format!(
                        "remount after crash at operation {index} failed: {why}"
                    ));
                    break;
                }
            };
            mounts += 1;
            retired.push(mounted.node.id());
            current = mounted;
            if recovery.intent_redone.is_some() {
                report.intents_redone += 1;
            }
            let actual = match mount_snapshot(&current).await {
                Ok(snapshot) => snapshot,
                Err(why) => {
                    report.failures.push(format!(
                        "after the crash at operation {index} ({operation}): {why}"
                    ));
                    break;
                }
            };
            let without = model_snapshot(&before).await.expect("the model walks");
            let with = model_snapshot(&after).await.expect("the model walks");
            if actual == with && actual == without {
                // Only times tell (utimens, or a no-op): look at the paths the operation names.
                let (matches_after, matches_before) =
                    times_match(&current, &operation, &after, &before, &options).await;
                if matches_after {
                    model = after;
                    report.interrupted_done += 1;
                } else if matches_before {
                    model = before;
                } else {
                    report.failures.push(format!(
                        "operation {index} ({operation}) interrupted by a client crash left times that match neither outcome"
                    ));
                    break;
                }
            } else if actual == with {
                model = after;
                report.interrupted_done += 1;
            } else if actual == without {
                model = before;
            } else {
                report.failures.push(format!(
                    "operation {index} ({operation}) interrupted by a client crash is half done: against done: {}; against not done: {}",
                    describe_difference(&with, &actual),
                    describe_difference(&without, &actual)
                ));
                break;
            }
            continue;
        }
        let expected = model.apply(&operation, time);
        let Some(actual) = current.apply(&operation).await else {
            report
                .failures
                .push(format!("the mount died during operation {index}"));
            break;
        };
        report.operations += 1;
        let divergences = compare(&operation, &expected, &actual, &options);
        if !divergences.is_empty() {
            let described: Vec<String> = divergences.iter().map(|d| d.to_string()).collect();
            report.failures.push(format!(
                "operation {index} ({operation}): expected {expected:?}, got {actual:?}: {}",
                described.join("; ")
            ));
            break;
        }
    }
    stop.store(true, Ordering::Release);
    report.server_faults = faults.await.unwrap_or(0);
    cluster.lock().unwrap().heal();
    env.sleep(Duration::from_secs(2)).await;
    if report.failures.is_empty() {
        final_checks(&env, &cluster, &current, &model, &mut report, mounts).await;
    }
    retired.push(current.node.id());
    finish(report, &env, &cluster, retired)
}

/// After the faults: a refresh pass, then a fresh mount must show exactly the model's tree, and
/// the file system's records must be consistent.
async fn final_checks(
    env: &SimEnv,
    cluster: &Arc<Mutex<SimCluster>>,
    current: &Mount,
    model: &Model,
    report: &mut FsRunReport,
    mounts: u8,
) {
    // Once the faults stop, one pass of the real scrubber must bring every copy in step: the
    // pass settles every key, and then every bank holds the same entries. The mount is stopped
    // first (its writes still on the way land during the pause), so nothing writes meanwhile.
    Handle::current().kill(current.node.id());
    env.sleep(Duration::from_secs(1)).await;
    let (placement, key) = {
        let cluster = cluster.lock().unwrap();
        (cluster.placement.clone(), cluster.cluster_key.clone())
    };
    let checker = Handle::current()
        .create_node()
        .name("refresh-checker")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 4, 0, 1)))
        .build();
    let task_env = env.clone();
    let scrubbed = checker
        .spawn(async move {
            let client = QuorumClient::open(
                task_env,
                placement,
                key,
                client_options(None),
                OpenMode::Writer,
            )
            .await
            .map_err(|error| format!("cannot open the volume: {error}"))?;
            let pass = votefs::scrub::scrub_pass(&client)
                .await
                .map_err(|error| format!("the pass failed: {error}"))?;
            let digests_differ = crate::run::compare_bank_digests(&client).await;
            Ok::<_, String>((pass, digests_differ))
        })
        .await;
    Handle::current().kill(checker.id());
    match scrubbed {
        Ok(Ok((pass, digests_differ))) => {
            if !pass.is_complete() {
                report.failures.push(format!(
                    "one refresh pass after the faults did not settle every copy: {pass:?}"
                ));
            }
            report.failures.extend(digests_differ);
            if !report.failures.is_empty() {
                return;
            }
        }
        other => {
            report
                .failures
                .push(format!("the refresh pass failed: {other:?}"));
            return;
        }
    }
    let (fresh, _) = match mount(env, cluster, mounts, None).await {
        Ok(mounted) => mounted,
        Err(why) => {
            report
                .failures
                .push(format!("the final mount failed: {why}"));
            return;
        }
    };
    let expected = model_snapshot(model).await.expect("the model walks");
    match mount_snapshot(&fresh).await {
        Ok(actual) if actual == expected => {}
        Ok(actual) => report.failures.push(format!(
            "the final tree differs from the model: {}",
            describe_difference(&expected, &actual)
        )),
        Err(why) => report
            .failures
            .push(format!("the final walk failed: {why}")),
    }
    let fs = fresh.target.fs.clone();
    let checked = fresh.node.spawn(async move { fs.check().await }).await;
    match checked {
        Ok(Ok(problems)) if problems.is_empty() => {}
        Ok(Ok(problems)) => report
            .failures
            .push(format!("fsck found: {}", problems.join("; "))),
        other => report.failures.push(format!("fsck failed: {other:?}")),
    }
    Handle::current().kill(fresh.node.id());
}

fn finish(
    mut report: FsRunReport,
    env: &SimEnv,
    cluster: &Arc<Mutex<SimCluster>>,
    nodes: Vec<madsim::task::NodeId>,
) -> FsRunReport {
    report.trace_hash = env.trace.hash();
    report.simulated_time = env.now();
    for node in nodes {
        Handle::current().kill(node);
    }
    let mut cluster = cluster.lock().unwrap();
    for server in &cluster.servers {
        server.disk.release_memory();
        Handle::current().kill(server.node.id());
    }
    cluster.servers.clear();
    report
}
