//! Load-aware reads (DESIGN §5 "Read"), in the simulator: a read asks the two best banks first and
//! the third only when needed. A slowed server gets few reads while every read stays right; a
//! stale copy on one of the two best makes the read ask the third bank; a server answering
//! `Overloaded` is avoided. Each scenario runs in its own seeded madsim runtime and replays
//! exactly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};

use votefs::env::Env;
use votefs::placement::Placement;
use votefs::proto::{Request, Response};
use votefs::quorum::{ClientOptions, ClientStats, OpenMode, QuorumClient};
use votefs::record::{ClusterKey, Record, Version};
use votefs::rng::SeededRng;
use votefs::server::{Server, ServerOptions};
use votefs_sim::cluster::SimCluster;
use votefs_sim::run::{client_options, cluster_key_for, server_options};
use votefs_sim::sim_disk::SimDisk;
use votefs_sim::sim_env::SimEnv;

const BANKS: usize = 3;
/// Added to every answer of the slowed server; the others answer within madsim's 1–10 ms per
/// message.
const SLOWED_BY: Duration = Duration::from_millis(60);
const SEEDS: [u64; 3] = [1, 2, 3];

/// A fresh madsim world for `seed`, running `scenario` to completion.
fn simulate<T, F>(seed: u64, scenario: impl FnOnce() -> F) -> T
where
    F: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    let mut runtime =
        madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(Duration::from_secs(3600));
    runtime.block_on(scenario())
}

fn client_node(number: u8) -> NodeHandle {
    Handle::current()
        .create_node()
        .name(format!("client-{number}"))
        .ip(IpAddr::V4(Ipv4Addr::new(10, 1, 0, number)))
        .build()
}

/// A writer client, retrying while the servers come up.
async fn open_client(
    env: &SimEnv,
    placement: &Placement,
    cluster_key: &ClusterKey,
    options: &ClientOptions,
) -> Result<QuorumClient<SimEnv>, String> {
    let mut last_error = String::new();
    for _attempt in 0..20 {
        match QuorumClient::open(
            env.clone(),
            placement.clone(),
            cluster_key.clone(),
            options.clone(),
            OpenMode::Writer,
        )
        .await
        {
            Ok(client) => return Ok(client),
            Err(error) => last_error = error.to_string(),
        }
        env.sleep(Duration::from_millis(100)).await;
    }
    Err(format!("cannot open the volume: {last_error}"))
}

/// The server index (placement order) of the simulated server at `address`.
fn index_of(placement: &Placement, address: SocketAddr) -> usize {
    (0..placement.server_count())
        .find(|server| placement.address(*server) == address)
        .expect("every simulated server is placed")
}

fn value_of(key: usize, generation: u64) -> Vec<u8> {
    format!("key {key} generation {generation}").into_bytes()
}

/// What one run of the slowed-server workload did.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SlowedRun {
    slowed: usize,
    reads: u64,
    writes: u64,
    /// Reads that returned something other than the last acknowledged write, or failed.
    wrong: Vec<String>,
    stats: ClientStats,
    trace_hash: u64,
    simulated_ms: u128,
}

const TASKS: usize = 4;
const KEYS_PER_TASK: usize = 8;
const OPERATIONS_PER_TASK: usize = 150;

/// Three banks of one server, one of them slowed; `TASKS` concurrent tasks each own some keys
/// and mix reads (90 %) with writes, checking every read against their last acknowledged write.
async fn slowed_server_workload(seed: u64) -> SlowedRun {
    let env = SimEnv::default();
    let cluster_key = cluster_key_for(seed);
    let cluster = SimCluster::start(&env, BANKS, 1, &cluster_key, &server_options(None), seed);
    let placement = cluster.placement.clone();
    let slowed_address = cluster.servers[(seed % BANKS as u64) as usize].address;
    let slowed = index_of(&placement, slowed_address);
    env.latency.set(slowed_address.ip(), SLOWED_BY);
    env.sleep(Duration::from_millis(50)).await;

    let task_env = env.clone();
    let node = client_node(1);
    let outcome = node
        .spawn(async move {
            let env = task_env;
            let client = open_client(&env, &placement, &cluster_key, &client_options(None))
                .await
                .expect("the cluster is healthy");
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let client = client.clone();
                tasks.push(madsim::task::spawn(async move {
                    run_task(client, task, seed).await
                }));
            }
            let mut reads = 0;
            let mut writes = 0;
            let mut wrong = Vec::new();
            for task in tasks {
                let (task_reads, task_writes, task_wrong) = task.await.expect("task finished");
                reads += task_reads;
                writes += task_writes;
                wrong.extend(task_wrong);
            }
            (reads, writes, wrong, client.stats())
        })
        .await
        .expect("the client node ran");
    let (reads, writes, wrong, stats) = outcome;
    SlowedRun {
        slowed,
        reads,
        writes,
        wrong,
        stats,
        trace_hash: env.trace.hash(),
        simulated_ms: env.now().as_millis(),
    }
}

/// One task's share of the workload: its own keys, so that its last acknowledged write is the
/// only right answer to its reads.
async fn run_task(client: QuorumClient<SimEnv>, task: usize, seed: u64) -> (u64, u64, Vec<String>) {
    let mut rng = SeededRng::new(seed ^ ((task as u64) << 32));
    let keys: Vec<usize> = (0..KEYS_PER_TASK)
        .map(|slot| task * KEYS_PER_TASK + slot)
        .collect();
    let mut generations = vec![0u64; keys.len()];
    let mut wrong = Vec::new();
    let (mut reads, mut writes) = (0, 0);
    for (slot, key) in keys.iter().enumerate() {
        match client
            .put(format!("load/{key}").as_bytes(), &value_of(*key, 0))
            .await
        {
            Ok(_) => writes += 1,
            Err(error) => wrong.push(format!("first write of key {key} failed: {error}")),
        }
        generations[slot] = 0;
    }
    for _operation in 0..OPERATIONS_PER_TASK {
        let slot = rng.below(keys.len() as u64) as usize;
        let key = keys[slot];
        let name = format!("load/{key}");
        if rng.below(10) == 0 {
            let generation = generations[slot] + 1;
            match client
                .put(name.as_bytes(), &value_of(key, generation))
                .await
            {
                Ok(_) => {
                    generations[slot] = generation;
                    writes += 1;
                }
                Err(error) => wrong.push(format!("write of key {key} failed: {error}")),
            }
        } else {
            reads += 1;
            let expected = value_of(key, generations[slot]);
            match client.get(name.as_bytes()).await {
                Ok(Some(value)) if value == expected => {}
                other => wrong.push(format!(
                    "read of key {key} returned {:?}, want generation {}",
                    other.map(
                        |value| value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    ),
                    generations[slot]
                )),
            }
        }
    }
    (reads, writes, wrong)
}

#[test]
fn a_slowed_server_gets_few_reads_and_every_read_is_right() {
    for seed in SEEDS {
        let run = simulate(seed, move || slowed_server_workload(seed));
        assert!(run.wrong.is_empty(), "seed {seed}: {:#?}", run.wrong);
        assert!(run.reads >= 400, "seed {seed}: only {} reads", run.reads);
        let per_server = &run.stats.read_requests_per_server;
        assert_eq!(per_server.len(), BANKS, "seed {seed}");
        let total: u64 = per_server.iter().sum();
        let slowed_requests = per_server[run.slowed];
        // Reading every bank would send each server one request per read (a third of all
        // requests); an even spread over pairs, two in three reads. The slowed server must get
        // a small fraction of that: only probes and the odd hedge.
        assert!(
            slowed_requests * 20 <= total,
            "seed {seed}: the slowed server {} got {slowed_requests} of {total} read requests: {:?}",
            run.slowed,
            run.stats
        );
        for (server, requests) in per_server.iter().enumerate() {
            if server != run.slowed {
                assert!(
                    *requests * 10 >= run.reads * 9,
                    "seed {seed}: fast server {server} got only {requests} of {} reads: {:?}",
                    run.reads,
                    run.stats
                );
            }
        }
        // Its estimate is kept fresh: the slowed server is probed now and then.
        assert!(slowed_requests > 0, "seed {seed}: {:?}", run.stats);
        assert!(run.stats.probe_reads > 0, "seed {seed}: {:?}", run.stats);
        assert_eq!(run.stats.unavailable_reads, 0, "seed {seed}");
        eprintln!(
            "seed {seed}: {} reads, {} writes in {} ms of simulated time; read requests per \
             server {per_server:?} (server {} slowed); {} needed the third bank, {} hedged, {} \
             probes",
            run.reads,
            run.writes,
            run.simulated_ms,
            run.slowed,
            run.stats.reads_needing_third_bank,
            run.stats.hedged_reads,
            run.stats.probe_reads
        );
    }
}

#[test]
fn the_slowed_server_workload_is_deterministic_per_seed() {
    let seed = SEEDS[0];
    let first = simulate(seed, move || slowed_server_workload(seed));
    let second = simulate(seed, move || slowed_server_workload(seed));
    assert_eq!(first, second);
    let other = simulate(seed + 100, move || slowed_server_workload(seed + 100));
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "another seed should run differently, or the comparison proves nothing"
    );
}

/// The copy `server` holds of `key`, asked directly.
async fn copy_on(client: &QuorumClient<SimEnv>, server: usize, key: &[u8]) -> Option<Record> {
    let request = Request::Get {
        volume: client.volume(),
        key: key.to_vec(),
    };
    match client.call_server(server, request).await {
        Ok(Response::Found(record)) => Some(record),
        _ => None,
    }
}

/// What the disagreement scenario saw.
#[derive(Debug)]
struct DisagreementRun {
    returned: Option<Vec<u8>>,
    before: ClientStats,
    after: ClientStats,
    before_agreeing_read: ClientStats,
    after_agreeing_read: ClientStats,
    stale: usize,
    slowed: usize,
    stale_copy_repaired: bool,
}

/// A stale copy on one of the two best servers: v2 was stored directly on the other two only.
async fn disagreement_scenario(seed: u64) -> DisagreementRun {
    let env = SimEnv::default();
    let cluster_key = cluster_key_for(seed);
    let cluster = SimCluster::start(&env, BANKS, 1, &cluster_key, &server_options(None), seed);
    let placement = cluster.placement.clone();
    let slowed = index_of(&placement, cluster.servers[2].address);
    env.latency.set(cluster.servers[2].address.ip(), SLOWED_BY);
    let stale = index_of(&placement, cluster.servers[0].address);
    env.sleep(Duration::from_millis(50)).await;

    let task_env = env.clone();
    let node = client_node(1);
    node.spawn(async move {
        let env = task_env;
        let mut options = client_options(None);
        // Only the read may repair the stale copy: no background healing.
        options.heal_interval = Duration::from_secs(3600);
        let client = open_client(&env, &placement, &cluster_key, &options)
            .await
            .expect("the cluster is healthy");
        let key = b"disagree/key".to_vec();
        let first = client.put(&key, b"v1").await.expect("first write");
        // Wait until the slowed server holds v1 too.
        for _attempt in 0..100 {
            if copy_on(&client, slowed, &key)
                .await
                .is_some_and(|copy| copy.version == first)
            {
                break;
            }
            env.sleep(Duration::from_millis(20)).await;
        }
        // Let the client measure every server.
        for round in 0..30 {
            let warm = format!("disagree/warm/{}", round % 5);
            client
                .put(warm.as_bytes(), b"warm")
                .await
                .expect("warm-up write");
            client.get(warm.as_bytes()).await.expect("warm-up read");
        }
        let loads = client.server_loads();
        assert!(
            loads[slowed].smoothed_latency_us > loads[stale].smoothed_latency_us,
            "the slowed server must measure slower: {loads:?}"
        );
        // v2 lands on the second fast server and the slowed one, not on `stale`.
        let newer = Version {
            sequence: first.sequence + 1000,
            ..first
        };
        let record = Record::new(&cluster_key, key.clone(), newer, false, b"v2".to_vec());
        for server in (0..placement.server_count()).filter(|server| *server != stale) {
            let put = Request::Put {
                volume: client.volume(),
                writer_epoch: client.epoch(),
                record: record.clone(),
                repair: false,
            };
            assert_eq!(client.call_server(server, put).await, Ok(Response::Stored));
        }
        // A read just before, so that the slowed server is not due for a probe in the next one.
        client.get(b"disagree/warm/0").await.expect("read");
        let before = client.stats();
        let returned = client.get(&key).await.expect("the read decides");
        let after = client.stats();
        // The background read-repair brings the stale copy up to date.
        let mut stale_copy_repaired = false;
        for _attempt in 0..100 {
            if copy_on(&client, stale, &key)
                .await
                .is_some_and(|copy| copy.version == newer)
            {
                stale_copy_repaired = true;
                break;
            }
            env.sleep(Duration::from_millis(20)).await;
        }
        // Now the two best agree: no third bank.
        client.get(b"disagree/warm/1").await.expect("read");
        let before_agreeing_read = client.stats();
        let agreeing = client.get(&key).await.expect("read");
        assert_eq!(agreeing.as_deref(), Some(&b"v2"[..]));
        let after_agreeing_read = client.stats();
        DisagreementRun {
            returned,
            before,
            after,
            before_agreeing_read,
            after_agreeing_read,
            stale,
            slowed,
            stale_copy_repaired,
        }
    })
    .await
    .expect("the client node ran")
}

#[test]
fn a_stale_copy_on_one_of_the_two_best_makes_the_read_ask_the_third_bank() {
    for seed in SEEDS {
        let run = simulate(seed, move || disagreement_scenario(seed));
        assert_eq!(run.returned.as_deref(), Some(&b"v2"[..]), "seed {seed}");
        assert_eq!(
            run.after.reads_needing_third_bank,
            run.before.reads_needing_third_bank + 1,
            "seed {seed}: {run:#?}"
        );
        assert_eq!(
            run.after.read_requests_per_server[run.slowed],
            run.before.read_requests_per_server[run.slowed] + 1,
            "seed {seed}: the third bank is the slowed server: {run:#?}"
        );
        assert_eq!(
            run.after.read_requests_per_server[run.stale],
            run.before.read_requests_per_server[run.stale] + 1,
            "seed {seed}: the stale server is one of the two best: {run:#?}"
        );
        assert_eq!(run.after.probe_reads, run.before.probe_reads, "seed {seed}");
        // The third bank held v2: two valid copies of the winner, no write-back needed.
        assert_eq!(run.after.write_backs, run.before.write_backs, "seed {seed}");
        assert!(run.stale_copy_repaired, "seed {seed}: {run:#?}");
        assert!(
            run.after_agreeing_read.repairs_lagging > run.before.repairs_lagging,
            "seed {seed}: {run:#?}"
        );
        assert_eq!(
            run.after_agreeing_read.reads_needing_third_bank,
            run.before_agreeing_read.reads_needing_third_bank,
            "seed {seed}: agreeing copies must not need the third bank: {run:#?}"
        );
    }
}

/// A server process with its own options, on its own node.
fn start_server(
    env: &SimEnv,
    cluster_key: &ClusterKey,
    options: ServerOptions,
    address: SocketAddr,
    seed: u64,
) -> NodeHandle {
    let disk = SimDisk::new(&address.to_string(), seed, env.trace.clone());
    let env = env.clone();
    let cluster_key = cluster_key.clone();
    Handle::current()
        .create_node()
        .name(format!("server-{address}"))
        .ip(address.ip())
        .init(move || {
            let env = env.clone();
            let disk = disk.clone();
            let cluster_key = cluster_key.clone();
            let options = options.clone();
            async move {
                let (server, _report) = Server::open(env.clone(), disk, cluster_key, options)
                    .await
                    .expect("a blank simulated disk opens");
                let listener = env.bind(address).await.expect("the address is free");
                let _ = server.serve(listener, std::future::pending()).await;
            }
        })
        .build()
}

#[test]
fn an_overloaded_server_is_avoided_and_reads_go_to_the_other_banks() {
    let seed = 7;
    let run = simulate(seed, move || async move {
        let env = SimEnv::default();
        let cluster_key = cluster_key_for(seed);
        let addresses: Vec<SocketAddr> = (0..BANKS)
            .map(|bank| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, bank as u8, 1)), 7000))
            .collect();
        let mut nodes = Vec::new();
        for (bank, address) in addresses.iter().enumerate() {
            let mut options = server_options(None);
            if bank == 1 {
                // Every read is refused as overloaded; writes are still taken.
                options.max_in_flight_requests = 0;
            }
            nodes.push(start_server(
                &env,
                &cluster_key,
                options,
                *address,
                seed + bank as u64,
            ));
        }
        let placement = Placement::new(addresses.iter().map(|address| vec![*address]).collect())
            .expect("a valid layout");
        let overloaded = index_of(&placement, addresses[1]);
        env.sleep(Duration::from_millis(50)).await;
        let task_env = env.clone();
        let outcome = client_node(1)
            .spawn(async move {
                let env = task_env;
                let client = open_client(&env, &placement, &cluster_key, &client_options(None))
                    .await
                    .expect("the cluster is healthy");
                let mut wrong = Vec::new();
                for key in 0..20 {
                    client
                        .put(format!("busy/{key}").as_bytes(), &value_of(key, 1))
                        .await
                        .expect("writes need the other two banks only");
                }
                let started = env.now();
                let mut reads = 0u64;
                for round in 0..400 {
                    let key = round % 20;
                    reads += 1;
                    match client.get(format!("busy/{key}").as_bytes()).await {
                        Ok(Some(value)) if value == value_of(key, 1) => {}
                        other => wrong.push(format!("read of key {key}: {other:?}")),
                    }
                }
                (reads, wrong, client.stats(), env.now() - started)
            })
            .await
            .expect("the client node ran");
        // The server nodes live as long as the runtime; the handles are no longer needed.
        drop(nodes);
        (overloaded, outcome)
    });
    let (overloaded, (reads, wrong, stats, reading_time)) = run;
    eprintln!(
        "{reads} reads in {reading_time:?}: read requests per server {:?} (server {overloaded} \
         overloaded), {} overloaded answers, {} reads needed the third bank, {} probes, {} \
         background verifications",
        stats.read_requests_per_server,
        stats.overloaded_answers,
        stats.reads_needing_third_bank,
        stats.probe_reads,
        stats.verification_reads
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(stats.overloaded_answers > 0, "{stats:?}");
    // Avoided for a second after each `Overloaded`: once the second is over, the next read (or a
    // background verification, or both when they overlap) asks it again and is refused again, so
    // a few requests per second of reading instead of one in every read.
    let allowed = 3 * (reading_time.as_secs() + 1);
    assert!(
        stats.read_requests_per_server[overloaded] <= allowed,
        "the overloaded server got {} read requests in {reading_time:?} of {reads} reads: {stats:?}",
        stats.read_requests_per_server[overloaded]
    );
    assert!(
        stats.reads_needing_third_bank
            >= stats
                .overloaded_answers
                .saturating_sub(stats.verification_reads + stats.probe_reads),
        "an overloaded answer to a read's first request makes it ask another bank: {stats:?}"
    );
}
