//! One schedule, start to finish: build the cluster, run the workload under the fault schedule,
//! heal, scrub, read everything back, and judge the history.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};

use votefs::env::Env;
use votefs::planted::PlantedBug;
use votefs::proto::{DumpEntry, Identity, Request, Response, ServerState};
use votefs::quorum::{ClientOptions, ClientStats, OpenMode, QuorumClient};
use votefs::record::{display_key, ClusterKey, CLUSTER_KEY_BYTES};
use votefs::rng::SeededRng;
use votefs::rpc::RpcOptions;
use votefs::scrub::scrub_pass;
use votefs::server::{ServerOptions, MAX_LIST_ENTRIES};
use votefs::store::StoreOptions;

use crate::checker::{check_history, reads_of_indeterminate_writes, FenceTimes};
use crate::cluster::SimCluster;
use crate::schedule::{Envelope, FaultKind, FaultLog, PlannedFault, Schedule};
use crate::sim_env::SimEnv;
use crate::workload::{checked_read, run_task, History, OperationKind, Outcome, WorkloadConfig};

const BANKS: usize = 3;
const SERVERS_PER_BANK: usize = 2;
const MAXIMUM_CLIENTS: u64 = 6;
/// The workload must finish within this much simulated time once started.
const WORKLOAD_DEADLINE: Duration = Duration::from_secs(300);
/// After healing, how long in-flight requests get to land before the final checks.
const SETTLE_TIME: Duration = Duration::from_secs(3);
/// How often a client's scrubber runs a pass while the workload runs.
const SCRUB_INTERVAL: Duration = Duration::from_millis(1500);

/// How often interesting paths were taken: the sweep fails if one never was.
pub type Sometimes = BTreeMap<&'static str, u64>;

#[derive(Clone, Debug)]
pub struct RunReport {
    pub schedule: Schedule,
    pub violations: Vec<String>,
    pub faults: FaultLog,
    pub trace_hash: u64,
    pub trace_events: u64,
    pub simulated_time: Duration,
    pub operations: u64,
    pub sometimes: Sometimes,
    /// Every operation of the run, for diagnosing a failure.
    pub history: Vec<crate::workload::Operation>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The failure as a person needs it: seed, schedule, what went wrong, how to replay.
    pub fn describe_failure(&self) -> String {
        let mut text = format!(
            "simulation seed {} failed ({:?} envelope, {} operations, faults enabled: {:?})\n",
            self.schedule.seed,
            self.schedule.envelope,
            self.schedule.operations,
            self.schedule.enabled
        );
        for violation in self.violations.iter().take(20) {
            text.push_str(&format!("  violation: {violation}\n"));
        }
        text.push_str("  fault schedule:\n");
        for entry in &self.faults.entries {
            text.push_str(&format!("    {entry}\n"));
        }
        let planted = self
            .schedule
            .planted_bug
            .map(|bug| format!("VOTEFS_SIM_PLANTED={bug:?} "))
            .unwrap_or_default();
        text.push_str(&format!(
            "  replay: {planted}VOTEFS_SIM_SEED={seed} cargo test -p votefs-sim --test sweep -- replay_one_seed --nocapture\n  trace:  {planted}VOTEFS_SIM_SEED={seed} VOTEFS_SIM_TRACE=trace.log cargo test -p votefs-sim --test sweep -- replay_one_seed --nocapture\n",
            seed = self.schedule.seed
        ));
        text
    }
}

struct ClientSlot {
    number: u64,
    node: NodeHandle,
    client: Option<QuorumClient<SimEnv>>,
    active_tasks: Arc<AtomicUsize>,
    alive: bool,
}

#[derive(Default)]
struct Clients {
    slots: Vec<ClientSlot>,
    /// Each opened client's epoch and when its open completed.
    opened: BTreeMap<u64, (u64, Duration)>,
}

impl Clients {
    /// A client is fenced from the moment a client with a newer epoch finished opening.
    fn fence_times(&self) -> FenceTimes {
        let mut fenced_at = FenceTimes::new();
        for (client, (epoch, _)) in &self.opened {
            let fence = self
                .opened
                .values()
                .filter(|(other_epoch, _)| other_epoch > epoch)
                .map(|(_, opened_at)| *opened_at)
                .min();
            if let Some(fence) = fence {
                fenced_at.insert(*client, fence);
            }
        }
        fenced_at
    }
}

struct World {
    schedule: Schedule,
    env: SimEnv,
    cluster: Mutex<SimCluster>,
    cluster_key: ClusterKey,
    history: History,
    budget: Arc<Mutex<u64>>,
    clients: Mutex<Clients>,
    faults: Mutex<FaultLog>,
    workload: WorkloadConfig,
    /// The volume the first client formatted; every later client expects it.
    volume: Mutex<Option<u128>>,
}

pub fn client_options(planted_bug: Option<PlantedBug>) -> ClientOptions {
    ClientOptions {
        planted_bug,
        rpc: RpcOptions {
            connect_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(800),
            connections_per_server: 1,
            queue_depth: 64,
            reconnect_backoff: Duration::from_millis(50),
        },
        write_attempts: 3,
        retry_delay: Duration::from_millis(20),
        heal_interval: Duration::from_millis(300),
        backlog_capacity: 10_000,
        expected_volume: None,
    }
}

pub fn server_options(planted_bug: Option<PlantedBug>) -> ServerOptions {
    ServerOptions {
        planted_bug,
        allow_fault_injection: false,
        store: StoreOptions {
            segment_bytes: 128 * 1024,
        },
        max_in_flight_per_connection: 64,
        max_connections: 64,
        idle_timeout: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(2),
        duplicate_window: 4096,
        maintenance_interval: Duration::from_millis(200),
        restarts: 0,
        max_in_flight_requests: 1024,
    }
}

/// Run `schedule` in a fresh madsim runtime seeded with its seed.
pub fn run_schedule(schedule: &Schedule) -> RunReport {
    let mut runtime =
        madsim::runtime::Runtime::with_seed_and_config(schedule.seed, madsim::Config::default());
    runtime.set_time_limit(Duration::from_secs(3600));
    let schedule = schedule.clone();
    runtime.block_on(simulate(schedule))
}

pub fn cluster_key_for(seed: u64) -> ClusterKey {
    let mut bytes = [0u8; CLUSTER_KEY_BYTES];
    SeededRng::new(seed ^ 0xC1A5_7E12).fill(&mut bytes);
    ClusterKey::from_bytes(bytes)
}

async fn simulate(schedule: Schedule) -> RunReport {
    let env = SimEnv::default();
    let cluster_key = cluster_key_for(schedule.seed);
    let cluster = SimCluster::start(
        &env,
        BANKS,
        SERVERS_PER_BANK,
        &cluster_key,
        &server_options(schedule.planted_bug),
        schedule.seed,
    );
    let world = Arc::new(World {
        env: env.clone(),
        cluster: Mutex::new(cluster),
        cluster_key,
        history: History::default(),
        budget: Arc::new(Mutex::new(schedule.operations)),
        clients: Mutex::new(Clients::default()),
        faults: Mutex::new(FaultLog::default()),
        workload: WorkloadConfig {
            hot_keys: 3,
            cold_keys: 40,
            listed_partitions: 3,
            tasks: schedule.tasks,
        },
        schedule: schedule.clone(),
        volume: Mutex::new(None),
    });
    // Let the servers come up before the first client knocks.
    env.sleep(Duration::from_millis(50)).await;
    let mut violations = Vec::new();
    start_client(&world);
    let faults = madsim::task::spawn(run_faults(world.clone()));
    let started = env.now();
    loop {
        env.sleep(Duration::from_millis(100)).await;
        let remaining = *world.budget.lock().expect("budget lock poisoned");
        let active: usize = world
            .clients
            .lock()
            .expect("clients lock poisoned")
            .slots
            .iter()
            .filter(|slot| slot.alive)
            .map(|slot| slot.active_tasks.load(Ordering::Acquire))
            .sum();
        if remaining == 0 && active == 0 {
            break;
        }
        if env.now() - started > WORKLOAD_DEADLINE {
            if schedule.envelope == Envelope::Inside {
                violations.push(format!(
                    "the workload stalled: {remaining} operations never started and {active} tasks still running after {WORKLOAD_DEADLINE:?}"
                ));
            }
            break;
        }
    }
    let _ = faults.await;
    world.cluster.lock().expect("cluster lock poisoned").heal();
    NetSim::current().update_config(|config| {
        config.packet_loss_rate = 0.0;
        config.send_latency = Duration::from_millis(1)..Duration::from_millis(10);
    });
    // Retire the workload clients: the checker's epoch fences them anyway.
    for slot in &world.clients.lock().expect("clients lock poisoned").slots {
        if slot.alive {
            Handle::current().kill(slot.node.id());
        }
    }
    // Let requests that were queued behind a pause or a clog drain before anything is judged:
    // a straggling write that lands after the final scrub would look like a divergent copy.
    env.sleep(SETTLE_TIME).await;

    let checker_world = world.clone();
    let checker_node = Handle::current()
        .create_node()
        .name("checker")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 2, 0, 1)))
        .build();
    let checker = checker_node.spawn(async move { final_checks(checker_world).await });
    let (final_violations, mut sometimes) = match checker.await {
        Ok(result) => result,
        Err(error) => (vec![format!("the checker died: {error}")], Sometimes::new()),
    };
    Handle::current().kill(checker_node.id());
    violations.extend(final_violations);

    let operations = world.history.snapshot();
    let fenced_at = world
        .clients
        .lock()
        .expect("clients lock poisoned")
        .fence_times();
    violations.extend(check_history(&operations, &fenced_at));
    *sometimes
        .entry("read saw an indeterminate write")
        .or_default() += reads_of_indeterminate_writes(&operations);

    for operation in &operations {
        match (&operation.kind, &operation.outcome) {
            (_, Outcome::Fenced) => *sometimes.entry("operation refused: fenced").or_default() += 1,
            (OperationKind::Get, Outcome::Failed(_)) if schedule.envelope == Envelope::Beyond => {
                *sometimes.entry("read EIO beyond the envelope").or_default() += 1
            }
            _ => {}
        }
    }
    for server in &world.cluster.lock().expect("cluster lock poisoned").servers {
        let counters = server.disk.counters();
        *sometimes.entry("server: torn tail truncated").or_default() +=
            counters.torn_tails_truncated;
        *sometimes
            .entry("server: log damage found at start")
            .or_default() += counters.damaged_recoveries;
    }
    let faults = world.faults.lock().expect("faults lock poisoned").clone();
    // The world holds node handles and the nodes' tasks hold the world: break the cycle, or every
    // schedule's disks stay in memory after its runtime is gone.
    {
        let mut cluster = world.cluster.lock().expect("cluster lock poisoned");
        // madsim keeps a finished runtime's nodes (and their disks) alive; drop the bytes at least.
        for server in &cluster.servers {
            server.disk.release_memory();
            // Killing a node drops its tasks (and the buffers they hold).
            Handle::current().kill(server.node.id());
        }
        cluster.servers.clear();
    }
    for slot in world
        .clients
        .lock()
        .expect("clients lock poisoned")
        .slots
        .drain(..)
    {
        Handle::current().kill(slot.node.id());
    }
    for (kind, count) in &faults.by_kind {
        *sometimes.entry(fault_counter_name(*kind)).or_default() += count;
    }
    RunReport {
        schedule,
        violations,
        faults,
        trace_hash: env.trace.hash(),
        trace_events: env.trace.events(),
        simulated_time: env.now(),
        operations: operations.len() as u64,
        sometimes,
        history: operations,
    }
}

pub fn fault_counter_name(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::CrashRestart => "fault: crash and restart",
        FaultKind::CrashTornWrite => "fault: crash with a torn write",
        FaultKind::CrashDiskLoss => "fault: crash with disk loss",
        FaultKind::BitRot => "fault: bit rot at rest",
        FaultKind::ReadFaults => "fault: read errors and flips",
        FaultKind::MisdirectedWrites => "fault: misdirected writes",
        FaultKind::ClogServer => "fault: clogged server",
        FaultKind::PartitionBank => "fault: bank partitioned",
        FaultKind::PartitionClientFromBank => "fault: client cut from a bank",
        FaultKind::PauseServer => "fault: paused server",
        FaultKind::PacketLoss => "fault: packet loss",
        FaultKind::LatencySpike => "fault: latency spike",
        FaultKind::ClientCrash => "fault: client crash",
        FaultKind::ClientTakeover => "fault: client takeover",
    }
}

async fn open_client(env: &SimEnv, world: &World, attempts: usize) -> Option<QuorumClient<SimEnv>> {
    let placement = world
        .cluster
        .lock()
        .expect("cluster lock poisoned")
        .placement
        .clone();
    for _attempt in 0..attempts {
        let mut options = client_options(world.schedule.planted_bug);
        options.expected_volume = *world.volume.lock().expect("volume lock poisoned");
        match QuorumClient::open(
            env.clone(),
            placement.clone(),
            world.cluster_key.clone(),
            options,
            OpenMode::Writer,
        )
        .await
        {
            Ok(client) => {
                world
                    .volume
                    .lock()
                    .expect("volume lock poisoned")
                    .get_or_insert(client.volume());
                return Some(client);
            }
            Err(error) => {
                tracing::debug!(%error, "client open failed; retrying");
                env.sleep(Duration::from_millis(200)).await;
            }
        }
    }
    None
}

/// Start a new client node that opens the volume (taking a new epoch) and runs the workload.
fn start_client(world: &Arc<World>) {
    let mut clients = world.clients.lock().expect("clients lock poisoned");
    let number = clients.slots.len() as u64;
    let active_tasks = Arc::new(AtomicUsize::new(world.workload.tasks));
    let node = Handle::current()
        .create_node()
        .name(format!("client-{number}"))
        .ip(IpAddr::V4(Ipv4Addr::new(10, 1, 0, number as u8 + 1)))
        .build();
    let task_world = world.clone();
    let task_active = active_tasks.clone();
    node.spawn(async move {
        let world = task_world;
        let env = world.env.clone();
        let Some(client) = open_client(&env, &world, 200).await else {
            task_active.store(0, Ordering::Release);
            return;
        };
        {
            let mut clients = world.clients.lock().expect("clients lock poisoned");
            clients.opened.insert(number, (client.epoch(), env.now()));
            clients.slots[number as usize].client = Some(client.clone());
        }
        // The refresh: a scrub pass every few seconds, as a mount runs it.
        let scrubber = client.clone();
        let scrub_env = env.clone();
        drop(madsim::task::spawn(async move {
            loop {
                scrub_env.sleep(SCRUB_INTERVAL).await;
                if let Err(votefs::quorum::QuorumError::Fenced { .. }) = scrub_pass(&scrubber).await
                {
                    return;
                }
            }
        }));
        for task in 0..world.workload.tasks {
            let env = env.clone();
            let client = client.clone();
            let config = world.workload.clone();
            let history = world.history.clone();
            let budget = world.budget.clone();
            let active = task_active.clone();
            let seed = world.schedule.seed ^ (number << 32) ^ task as u64;
            drop(madsim::task::spawn(async move {
                run_task(env, client, number, config, history, budget, seed).await;
                active.fetch_sub(1, Ordering::AcqRel);
            }));
        }
    });
    clients.slots.push(ClientSlot {
        number,
        node,
        client: None,
        active_tasks,
        alive: true,
    });
}

/// Banks with an unavailability fault in force, and how many.
type Unavailable = Arc<Mutex<BTreeMap<usize, usize>>>;

async fn run_faults(world: Arc<World>) {
    let schedule = world.schedule.clone();
    let env = world.env.clone();
    let unavailable: Unavailable = Arc::new(Mutex::new(BTreeMap::new()));
    let mut healers = Vec::new();
    let mut applied = 0;
    let started = env.now();
    let mut plan = schedule.plan.clone();
    plan.sort_by_key(|planned| planned.at_ms);
    for planned in &plan {
        if applied >= schedule.faults {
            break;
        }
        let due = started + Duration::from_millis(planned.at_ms);
        let now = env.now();
        if due > now {
            env.sleep(due - now).await;
        }
        let mut bank = planned.bank;
        if schedule.envelope == Envelope::Inside && planned.kind.makes_bank_unavailable() {
            // At most one bank unavailable at a time: join the one that already is.
            let busy = unavailable.lock().expect("unavailable lock poisoned");
            if let Some((other, _)) = busy
                .iter()
                .find(|(other, count)| **other != bank && **count > 0)
            {
                if planned.kind.destroys_data() && *other != schedule.damage_bank {
                    continue;
                }
                bank = *other;
            }
        }
        let server = bank * SERVERS_PER_BANK + planned.slot % SERVERS_PER_BANK;
        let detail = apply_fault(&world, planned, bank, server, &unavailable, &mut healers);
        if let Some(detail) = detail {
            applied += 1;
            world.faults.lock().expect("faults lock poisoned").record(
                planned.kind,
                env.now().as_millis(),
                detail,
            );
        }
    }
    for healer in healers {
        let _ = healer.await;
    }
}

fn mark_unavailable(unavailable: &Unavailable, bank: usize, delta: isize) {
    let mut busy = unavailable.lock().expect("unavailable lock poisoned");
    let count = busy.entry(bank).or_default();
    *count = (*count as isize + delta).max(0) as usize;
}

/// Apply one fault now and schedule its healing; `None` if it could not apply.
fn apply_fault(
    world: &Arc<World>,
    planned: &PlannedFault,
    bank: usize,
    mut server: usize,
    unavailable: &Unavailable,
    healers: &mut Vec<madsim::task::JoinHandle<()>>,
) -> Option<String> {
    let kind = planned.kind;
    let duration = Duration::from_millis(planned.duration_ms);
    let net = NetSim::current();
    let mut cluster = world.cluster.lock().expect("cluster lock poisoned");
    let busy = |cluster: &SimCluster, server: usize| {
        cluster.servers[server].down || cluster.servers[server].paused
    };
    if busy(&cluster, server) {
        // Try the bank's other server before giving up.
        server = bank * SERVERS_PER_BANK + (server + 1) % SERVERS_PER_BANK;
    }
    let server_busy = busy(&cluster, server);
    let node_id = cluster.servers[server].node.id();
    let address = cluster.servers[server].address;
    let env = world.env.clone();
    let heal_later = |healers: &mut Vec<_>, heal: Box<dyn FnOnce(&World) + Send>| {
        let world = world.clone();
        let env = env.clone();
        let unavailable = unavailable.clone();
        let unavailable_bank = kind.makes_bank_unavailable().then_some(bank);
        if let Some(bank) = unavailable_bank {
            mark_unavailable(&unavailable, bank, 1);
        }
        healers.push(madsim::task::spawn(async move {
            env.sleep(duration).await;
            heal(&world);
            if let Some(bank) = unavailable_bank {
                mark_unavailable(&unavailable, bank, -1);
            }
        }));
    };
    let detail = match kind {
        FaultKind::CrashRestart | FaultKind::CrashTornWrite | FaultKind::CrashDiskLoss => {
            if server_busy {
                return None;
            }
            cluster.kill(server);
            match kind {
                FaultKind::CrashRestart => cluster.servers[server].disk.crash(false),
                FaultKind::CrashTornWrite => cluster.servers[server].disk.crash(true),
                _ => cluster.servers[server].disk.wipe(),
            }
            heal_later(
                healers,
                Box::new(move |world| {
                    world
                        .cluster
                        .lock()
                        .expect("cluster lock poisoned")
                        .restart(server)
                }),
            );
            format!("server {address} down for {duration:?}")
        }
        FaultKind::BitRot => {
            let flips = 1 + planned.intensity % 3;
            for _ in 0..flips {
                cluster.servers[server].disk.flip_bit_at_rest();
            }
            format!("{flips} bits flipped on {address}")
        }
        FaultKind::ReadFaults | FaultKind::MisdirectedWrites => {
            let plan = if kind == FaultKind::ReadFaults {
                crate::sim_disk::DiskFaultPlan {
                    read_bit_flip: 0.05,
                    read_error: 0.05,
                    misdirected_write: 0.0,
                }
            } else {
                crate::sim_disk::DiskFaultPlan {
                    misdirected_write: 0.05,
                    ..Default::default()
                }
            };
            cluster.servers[server].disk.set_plan(plan);
            heal_later(
                healers,
                Box::new(move |world| {
                    world.cluster.lock().expect("cluster lock poisoned").servers[server]
                        .disk
                        .set_plan(Default::default())
                }),
            );
            format!("{address} for {duration:?}")
        }
        FaultKind::ClogServer => {
            net.clog_node(node_id);
            heal_later(
                healers,
                Box::new(move |_| NetSim::current().unclog_node(node_id)),
            );
            format!("{address} clogged for {duration:?}")
        }
        FaultKind::PartitionBank => {
            let ids: Vec<_> = cluster
                .servers
                .iter()
                .filter(|candidate| candidate.bank == bank)
                .map(|candidate| candidate.node.id())
                .collect();
            for id in &ids {
                net.clog_node(*id);
            }
            heal_later(
                healers,
                Box::new(move |_| {
                    for id in ids {
                        NetSim::current().unclog_node(id);
                    }
                }),
            );
            format!("bank {bank} cut off for {duration:?}")
        }
        FaultKind::PartitionClientFromBank => {
            let clients = world.clients.lock().expect("clients lock poisoned");
            let client = clients.slots.iter().rev().find(|slot| slot.alive)?;
            let client_id = client.node.id();
            // Beyond the envelope, sometimes two banks: writes then reach a single copy and
            // stay indeterminate, which is what the read vote and write-back must handle.
            let second_bank = (world.schedule.envelope == Envelope::Beyond
                && planned.intensity % 2 == 1)
                .then_some((bank + 1) % BANKS);
            let ids: Vec<_> = cluster
                .servers
                .iter()
                .filter(|candidate| candidate.bank == bank || Some(candidate.bank) == second_bank)
                .map(|candidate| candidate.node.id())
                .collect();
            for id in &ids {
                net.clog_link(client_id, *id);
                net.clog_link(*id, client_id);
            }
            heal_later(
                healers,
                Box::new(move |_| {
                    for id in ids {
                        NetSim::current().unclog_link(client_id, id);
                        NetSim::current().unclog_link(id, client_id);
                    }
                }),
            );
            format!(
                "client {} cut from bank {bank}{} for {duration:?}",
                client.number,
                second_bank
                    .map(|other| format!(" and bank {other}"))
                    .unwrap_or_default()
            )
        }
        FaultKind::PauseServer => {
            if server_busy {
                return None;
            }
            cluster.pause(server);
            heal_later(
                healers,
                Box::new(move |world| {
                    let mut cluster = world.cluster.lock().expect("cluster lock poisoned");
                    if cluster.servers[server].paused {
                        cluster.resume(server);
                    }
                }),
            );
            format!("{address} paused for {duration:?}")
        }
        FaultKind::PacketLoss => {
            let rate = 0.005 + (planned.intensity % 20) as f64 / 1000.0;
            net.update_config(|config| config.packet_loss_rate = rate);
            heal_later(
                healers,
                Box::new(|_| {
                    NetSim::current().update_config(|config| config.packet_loss_rate = 0.0)
                }),
            );
            format!("{rate:.3} of messages lost for {duration:?}")
        }
        FaultKind::LatencySpike => {
            let high = 20 + planned.intensity % 150;
            net.update_config(|config| {
                config.send_latency = Duration::from_millis(5)..Duration::from_millis(high)
            });
            heal_later(
                healers,
                Box::new(|_| {
                    NetSim::current().update_config(|config| {
                        config.send_latency = Duration::from_millis(1)..Duration::from_millis(10)
                    })
                }),
            );
            format!("latency up to {high} ms for {duration:?}")
        }
        FaultKind::ClientCrash | FaultKind::ClientTakeover => {
            drop(cluster);
            let mut clients = world.clients.lock().expect("clients lock poisoned");
            if clients.slots.len() as u64 >= MAXIMUM_CLIENTS {
                return None;
            }
            if kind == FaultKind::ClientCrash {
                for slot in clients.slots.iter_mut().filter(|slot| slot.alive) {
                    Handle::current().kill(slot.node.id());
                    slot.alive = false;
                }
            }
            drop(clients);
            start_client(world);
            "a new client opens the volume".to_string()
        }
    };
    Some(detail)
}

/// Heal, scrub, read everything back and compare every copy. Runs on its own node.
async fn final_checks(world: Arc<World>) -> (Vec<String>, Sometimes) {
    let env = world.env.clone();
    let inside = world.schedule.envelope == Envelope::Inside;
    let mut violations = Vec::new();
    let mut sometimes = Sometimes::new();
    let Some(client) = open_client(&env, &world, 100).await else {
        if inside {
            violations.push("after healing, no client could open the volume".into());
        }
        return (violations, sometimes);
    };
    let checker_number = u64::MAX;
    // After the faults stop, one pass must bring every copy in step (a blank server joins at its
    // start and is refilled by it).
    match scrub_pass(&client).await {
        Ok(report) => {
            *sometimes
                .entry("scrub: recovering server made healthy")
                .or_default() += report.servers_healed.len() as u64;
            *sometimes.entry("scrub: buckets differed").or_default() += report.buckets_differing;
            *sometimes.entry("scrub: tombstones dropped").or_default() += report.tombstones_dropped;
            *sometimes.entry("scrub: deep scrub found rot").or_default() +=
                report.deep_scrub_damage_found;
            if inside && !report.is_complete() {
                violations.push(format!(
                    "after healing, one scrub pass did not settle every key: {report:?}"
                ));
            }
        }
        Err(error) => {
            if inside {
                violations.push(format!("scrub pass failed after healing: {error}"));
            }
        }
    }
    if inside {
        violations.extend(compare_bank_digests(&client).await);
        // A pass over identical replicas compares digests and moves no record data.
        let before = record_bytes_moved(&client).await;
        match scrub_pass(&client).await {
            Ok(report) => {
                if report.buckets_differing != 0 || report.keys_examined != 0 {
                    violations.push(format!(
                        "a pass over identical replicas still found differences: {report:?}"
                    ));
                }
            }
            Err(error) => violations.push(format!("an idle scrub pass failed: {error}")),
        }
        let after = record_bytes_moved(&client).await;
        if before != after {
            violations.push(format!(
                "a pass over identical replicas moved record data: {before:?} -> {after:?} bytes (sent, stored)"
            ));
        }
    }
    let keys: BTreeSet<Vec<u8>> = world
        .history
        .snapshot()
        .iter()
        .filter(|operation| !matches!(operation.kind, OperationKind::List { .. }))
        .map(|operation| operation.key.clone())
        .collect();
    let mut final_values = BTreeMap::new();
    for key in &keys {
        let outcome = checked_read(&env, &client, checker_number, &world.history, key).await;
        if inside {
            if let Outcome::Failed(why) = &outcome {
                violations.push(format!(
                    "after healing, reading {} failed: {why}",
                    display_key(key)
                ));
            }
        }
        final_values.insert(key.clone(), outcome);
    }
    if inside {
        if !all_healthy(&client).await {
            violations.push("after healing and scrubbing, a server is still recovering".into());
        }
        violations.extend(compare_copies(&client, &final_values).await);
    }
    // Gather what the clients and servers saw.
    let mut stats: Vec<ClientStats> = world
        .clients
        .lock()
        .expect("clients lock poisoned")
        .slots
        .iter()
        .filter_map(|slot| slot.client.as_ref().map(|client| client.stats()))
        .collect();
    stats.push(client.stats());
    for stat in stats {
        *sometimes.entry("read-repair: lagging copy").or_default() += stat.repairs_lagging;
        *sometimes.entry("read-repair: missing copy").or_default() += stat.repairs_missing;
        *sometimes.entry("read-repair: corrupt copy").or_default() += stat.repairs_corrupt;
        *sometimes.entry("read-repair: recovering copy").or_default() += stat.repairs_recovering;
        *sometimes.entry("ABD write-back").or_default() += stat.write_backs;
        *sometimes.entry("heal backlog drained").or_default() += stat.healed_from_backlog;
    }
    for server in 0..client.placement().server_count() {
        if let Ok(Response::Stats(stats)) = client.call_server(server, Request::Stats).await {
            *sometimes
                .entry("server: duplicate request detected")
                .or_default() += stats.duplicate_requests;

            *sometimes.entry("server: corrupt entry found").or_default() +=
                stats.corrupt_entries_seen;
            *sometimes
                .entry("server: compaction moved entries")
                .or_default() += stats.compacted_entries;
        }
    }
    (violations, sometimes)
}

/// Every bank holds the same entries: the XOR of each bank's servers' digests is equal.
pub(crate) async fn compare_bank_digests(client: &QuorumClient<SimEnv>) -> Vec<String> {
    let placement = client.placement().clone();
    let mut digests = BTreeMap::new();
    for server in 0..placement.server_count() {
        let request = Request::Digests {
            volume: client.volume(),
        };
        match client.call_server(server, request).await {
            Ok(Response::Digests(buckets)) => {
                digests.insert(server, buckets);
            }
            other => {
                return vec![format!(
                    "cannot read the digests of {}: {other:?}",
                    placement.address(server)
                )]
            }
        }
    }
    let banks = votefs::scrub::bank_digests(&placement, &digests);
    let differing = votefs::scrub::differing_buckets(&banks);
    if differing.is_empty() {
        return Vec::new();
    }
    // Name a few of the keys whose copies differ, with every server's listing of them.
    let mut copies: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    for server in 0..placement.server_count() {
        let request = Request::BucketEntries {
            volume: client.volume(),
            buckets: differing.clone(),
            start_after: None,
            limit: 4096,
        };
        if let Ok(Response::Listing { entries, .. }) = client.call_server(server, request).await {
            for entry in entries {
                copies.entry(entry.key.clone()).or_default().push(format!(
                    "server {server}: {}{} tag {:02x}{:02x}",
                    entry.version,
                    if entry.tombstone { " (tombstone)" } else { "" },
                    entry.tag[0],
                    entry.tag[1]
                ));
            }
        }
    }
    let examples: Vec<String> = copies
        .iter()
        .filter(|(key, listed)| {
            listed.len() != placement.owners(key).len()
                || listed.iter().any(|line| {
                    line.split_once(':').map(|(_, rest)| rest)
                        != listed[0].split_once(':').map(|(_, rest)| rest)
                })
        })
        .take(5)
        .map(|(key, listed)| format!("{} [{}]", display_key(key), listed.join(", ")))
        .collect();
    vec![format!(
        "after a complete pass, the banks' digests still differ in {} buckets: {}",
        differing.len(),
        examples.join("; ")
    )]
}

/// Record value bytes all servers sent and stored so far.
async fn record_bytes_moved(client: &QuorumClient<SimEnv>) -> (u64, u64) {
    let mut moved = (0, 0);
    for server in 0..client.placement().server_count() {
        if let Ok(Response::Stats(stats)) = client.call_server(server, Request::Stats).await {
            moved.0 += stats.record_bytes_sent;
            moved.1 += stats.record_bytes_stored;
        }
    }
    moved
}

async fn all_healthy(client: &QuorumClient<SimEnv>) -> bool {
    for server in 0..client.placement().server_count() {
        match client.call_server(server, Request::Identify).await {
            Ok(Response::Identity(Identity {
                state:
                    ServerState::Member {
                        recovering: false, ..
                    },
                ..
            })) => {}
            _ => return false,
        }
    }
    true
}

async fn dump_server(
    client: &QuorumClient<SimEnv>,
    server: usize,
) -> Result<BTreeMap<Vec<u8>, DumpEntry>, String> {
    let mut entries = BTreeMap::new();
    let mut start_after = None;
    // Bounded by the server's key count.
    loop {
        let request = Request::Dump {
            prefix: Vec::new(),
            start_after: start_after.clone(),
            limit: MAX_LIST_ENTRIES,
        };
        match client.call_server(server, request).await {
            Ok(Response::Dump {
                entries: page,
                complete,
            }) => {
                let last = page.last().map(|entry| entry.key.clone());
                entries.extend(page.into_iter().map(|entry| (entry.key.clone(), entry)));
                match last {
                    Some(last) if !complete => start_after = Some(last),
                    _ => return Ok(entries),
                }
            }
            other => return Err(format!("{other:?}")),
        }
    }
}

/// Every owner holds a readable copy identical to the value the final read returned.
async fn compare_copies(
    client: &QuorumClient<SimEnv>,
    final_values: &BTreeMap<Vec<u8>, Outcome>,
) -> Vec<String> {
    let mut violations = Vec::new();
    let placement = client.placement().clone();
    let mut dumps = Vec::new();
    for server in 0..placement.server_count() {
        match dump_server(client, server).await {
            Ok(dump) => dumps.push(dump),
            Err(why) => {
                violations.push(format!("cannot dump {}: {why}", placement.address(server)));
                return violations;
            }
        }
    }
    for (key, outcome) in final_values {
        let Outcome::Read { version, .. } = outcome else {
            continue;
        };
        for owner in placement.owners(key) {
            let copy = dumps[owner].get(key);
            let readable = copy.filter(|entry| entry.checksum_ok && entry.tag_ok && !entry.lost);
            match (version, readable) {
                (Some(version), Some(entry)) if entry.version == *version => {}
                (None, None) => {}
                (expected, found) => violations.push(format!(
                    "after scrubbing, {} holds {:?} of {} where the vote says {expected:?}",
                    placement.address(owner),
                    found.map(|entry| entry.version),
                    display_key(key)
                )),
            }
        }
    }
    violations
}
