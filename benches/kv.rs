//! Put and get throughput and latency over loopback (run by `ci/bench`; reported, never asserted).
//!
//! Starts 6 real `votefs server` processes (3 banks of 2) on ephemeral ports in a temporary
//! directory, opens a writer client and, for each value size and concurrency, puts a fixed number
//! of keys and then gets them back. Every phase is bounded in count and in time. For comparison it
//! also times the physical floor: the same bytes written with 3 copies to the same file system
//! with plain `std::fs`, once with an fdatasync per value and once with a single fdatasync at the
//! end.
//!
//! The markdown tables go to standard output; progress and server trouble go to standard error.
//! `VOTEFS_BENCH_QUICK=1` shrinks the work 10x for a smoke run.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use votefs::config::ClusterConfig;
use votefs::env::TokioEnv;
use votefs::quorum::{ClientOptions, OpenMode, QuorumClient};

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{Cluster, BANKS, SERVERS_PER_BANK};
/// Copies of every value: one owner per bank.
const COPIES: usize = BANKS;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

type Client = QuorumClient<TokioEnv>;

/// One row of work: `ops` operations of `size` bytes, `concurrency` in flight.
#[derive(Clone, Copy)]
struct Shape {
    size: usize,
    concurrency: usize,
    ops: usize,
}

/// What one measured phase did.
struct Measured {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
    /// Put phase: the indices of the keys stored.
    stored: Vec<usize>,
}

fn quick() -> bool {
    std::env::var("VOTEFS_BENCH_QUICK").is_ok_and(|value| !value.is_empty() && value != "0")
}

/// Deterministic bytes that no layer could compress or deduplicate.
fn value_of(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

fn key_of(prefix: &str, index: usize) -> Vec<u8> {
    format!("{prefix}/{index:06}").into_bytes()
}

fn size_label(size: usize) -> String {
    if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

/// Run `ops` operations (key indices taken from `indices`) with `concurrency` in flight, stopping
/// early at `deadline`.
async fn run_phase(
    client: &Client,
    op: Op,
    prefix: &str,
    indices: Arc<Vec<usize>>,
    concurrency: usize,
    value: Arc<Vec<u8>>,
    limit: Duration,
) -> Measured {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let reported = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let next = next.clone();
        let indices = indices.clone();
        let value = value.clone();
        let prefix = prefix.to_string();
        let reported = reported.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut stored = Vec::new();
            let mut errors = 0;
            loop {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                if slot >= indices.len() || Instant::now() >= deadline {
                    break;
                }
                let index = indices[slot];
                let key = key_of(&prefix, index);
                let began = Instant::now();
                let failure = match op {
                    Op::Put => client.put(&key, &value).await.err().map(|e| e.to_string()),
                    Op::Get => match client.get(&key).await {
                        Ok(Some(read)) if read == *value => None,
                        Ok(Some(read)) => Some(format!("read {} unexpected bytes", read.len())),
                        Ok(None) => Some("not found".into()),
                        Err(error) => Some(error.to_string()),
                    },
                };
                let took = began.elapsed();
                match failure {
                    None => {
                        latencies.push(took);
                        stored.push(index);
                    }
                    Some(why) => {
                        errors += 1;
                        if !reported.swap(true, Ordering::Relaxed) {
                            eprintln!(
                                "  {prefix}: {} failed: {why}",
                                String::from_utf8_lossy(&key)
                            );
                        }
                    }
                }
            }
            (latencies, stored, errors)
        }));
    }
    let mut measured = Measured {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
        stored: Vec::new(),
    };
    for worker in workers {
        let (latencies, stored, errors) = worker.await.expect("a benchmark worker panicked");
        measured.latencies.extend(latencies);
        measured.stored.extend(stored);
        measured.errors += errors;
    }
    measured.elapsed = started.elapsed();
    measured.stored.sort_unstable();
    measured
}

/// Nearest-rank percentile of sorted `latencies`, in milliseconds.
fn percentile_ms(sorted: &[Duration], percent: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

struct Row {
    size: usize,
    concurrency: String,
    op: String,
    ops: usize,
    errors: usize,
    elapsed: Duration,
    p50_ms: f64,
    p99_ms: f64,
}

impl Row {
    fn new(
        size: usize,
        concurrency: String,
        op: &str,
        mut latencies: Vec<Duration>,
        errors: usize,
        elapsed: Duration,
    ) -> Self {
        latencies.sort_unstable();
        Row {
            size,
            concurrency,
            op: op.to_string(),
            ops: latencies.len(),
            errors,
            elapsed,
            p50_ms: percentile_ms(&latencies, 50.0),
            p99_ms: percentile_ms(&latencies, 99.0),
        }
    }

    fn markdown(&self) -> String {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        let ops_per_second = self.ops as f64 / seconds;
        let mib_per_second = ops_per_second * self.size as f64 / MIB as f64;
        let latency = |ms: f64| {
            if ms.is_nan() {
                "–".to_string()
            } else {
                format!("{ms:.2}")
            }
        };
        format!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.1} | {} | {} |",
            size_label(self.size),
            self.concurrency,
            self.op,
            self.ops,
            self.errors,
            seconds,
            ops_per_second,
            mib_per_second,
            latency(self.p50_ms),
            latency(self.p99_ms),
        )
    }
}

const TABLE_HEADER: &str = "| size | concurrency | op | ops | errors | seconds | ops/s | MiB/s | p50 ms | p99 ms |\n|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|";

async fn measure(client: &Client, shape: Shape, limit: Duration, warm_up: usize) -> Vec<Row> {
    let Shape {
        size,
        concurrency,
        ops,
    } = shape;
    let value = Arc::new(value_of(size, (size * 31 + concurrency) as u64));
    let prefix = format!("bench-{}-c{concurrency}", size_label(size).replace(' ', ""));
    eprintln!(
        "{}: {ops} puts then gets, concurrency {concurrency}",
        size_label(size)
    );
    // Warm-up: connections, allocator, page cache of the segment files; measured nowhere.
    let warm_indices = Arc::new((0..warm_up).collect::<Vec<_>>());
    let warm_prefix = format!("{prefix}-warm");
    for op in [Op::Put, Op::Get] {
        run_phase(
            client,
            op,
            &warm_prefix,
            warm_indices.clone(),
            concurrency,
            value.clone(),
            limit,
        )
        .await;
    }
    let put = run_phase(
        client,
        Op::Put,
        &prefix,
        Arc::new((0..ops).collect()),
        concurrency,
        value.clone(),
        limit,
    )
    .await;
    let get = run_phase(
        client,
        Op::Get,
        &prefix,
        Arc::new(put.stored.clone()),
        concurrency,
        value,
        limit,
    )
    .await;
    vec![
        Row::new(
            size,
            concurrency.to_string(),
            "put",
            put.latencies,
            put.errors,
            put.elapsed,
        ),
        Row::new(
            size,
            concurrency.to_string(),
            "get",
            get.latencies,
            get.errors,
            get.elapsed,
        ),
    ]
}

/// The physical floor for `ops` values of `size` bytes: `COPIES` threads, each appending to its
/// own file in `directory`. With `sync_each`, every value is fdatasynced by all copies before the
/// next one starts (what one put at a time needs); otherwise each copy fdatasyncs once at the end.
fn disk_reference(
    directory: &Path,
    size: usize,
    ops: usize,
    sync_each: bool,
    limit: Duration,
) -> Row {
    let value = Arc::new(value_of(size, size as u64 ^ 0x5eed));
    let barrier = Arc::new(Barrier::new(COPIES));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..COPIES)
        .map(|copy| {
            let path = directory.join(format!(
                "copy-{copy}-{size}-{}",
                if sync_each { "each" } else { "end" }
            ));
            let value = value.clone();
            let barrier = barrier.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut file = File::create(&path).expect("creating a reference file");
                // Warm-up, as the servers had: the file exists and has been synced before timing.
                file.write_all(&value).expect("writing a reference file");
                file.sync_data().expect("fdatasync of a reference file");
                let mut latencies = Vec::new();
                let mut done = 0;
                // Time from when every copy is ready.
                barrier.wait();
                let started = Instant::now();
                let deadline = started + limit;
                for _ in 0..ops {
                    if sync_each {
                        barrier.wait();
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                    } else if Instant::now() >= deadline {
                        break;
                    }
                    let began = Instant::now();
                    file.write_all(&value).expect("writing a reference file");
                    if sync_each {
                        file.sync_data().expect("fdatasync of a reference file");
                        barrier.wait();
                        if copy == 0 {
                            latencies.push(began.elapsed());
                            if Instant::now() >= deadline {
                                stop.store(true, Ordering::Release);
                            }
                        }
                    }
                    done += 1;
                }
                if !sync_each {
                    file.sync_data().expect("fdatasync of a reference file");
                }
                let finished = Instant::now();
                drop(file);
                let _ = std::fs::remove_file(&path);
                (latencies, done, started, finished)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut done = usize::MAX;
    let mut first_start: Option<Instant> = None;
    let mut last_finish: Option<Instant> = None;
    for thread in threads {
        let (copy_latencies, copy_done, started, finished) =
            thread.join().expect("a reference thread panicked");
        latencies.extend(copy_latencies);
        done = done.min(copy_done);
        first_start = Some(first_start.map_or(started, |first| first.min(started)));
        last_finish = Some(last_finish.map_or(finished, |last| last.max(finished)));
    }
    let elapsed = match (first_start, last_finish) {
        (Some(started), Some(finished)) => finished - started,
        _ => Duration::ZERO,
    };
    if sync_each {
        Row::new(
            size,
            "1".into(),
            "3 copies, fdatasync per value",
            latencies,
            0,
            elapsed,
        )
    } else {
        let mut row = Row::new(
            size,
            "–".into(),
            "3 copies, one fdatasync at end",
            Vec::new(),
            0,
            elapsed,
        );
        row.ops = done;
        row
    }
}

fn main() {
    let quick = quick();
    let divisor = if quick { 10 } else { 1 };
    let limit = Duration::from_secs(if quick { 10 } else { 60 });
    let shapes = [
        (4 * KIB, 1, 1000),
        (4 * KIB, 32, 3000),
        (MIB, 1, 100),
        (MIB, 32, 300),
    ]
    .map(|(size, concurrency, ops)| Shape {
        size,
        concurrency,
        ops: (ops / divisor).max(1),
    });

    // Declared before the runtime so that it is dropped after it: servers die last.
    let cluster = Cluster::start();
    let config = ClusterConfig::load(&cluster.config_path).expect("loading cluster.toml");
    let key = config.load_key().expect("loading the cluster key");
    eprintln!(
        "started {} servers in {}",
        BANKS * SERVERS_PER_BANK,
        cluster.scratch_dir().display()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let rows = runtime.block_on(async {
        let client = QuorumClient::<TokioEnv>::open(
            TokioEnv::new(),
            config.placement.clone(),
            key,
            ClientOptions::default(),
            OpenMode::Writer,
        )
        .await
        .expect("opening the volume as its writer");
        let mut rows = Vec::new();
        for shape in shapes {
            let warm_up = (shape.ops / 10).clamp(shape.concurrency, 100);
            rows.extend(measure(&client, shape, limit, warm_up).await);
        }
        let stats = client.stats();
        if stats != Default::default() {
            eprintln!("client repair counters: {stats:?}");
        }
        rows
    });
    drop(runtime);

    let reference_directory = cluster.scratch_dir().join("reference");
    std::fs::create_dir_all(&reference_directory).expect("creating the reference directory");
    let mut reference = Vec::new();
    for size in [4 * KIB, MIB] {
        // As many bytes as the larger put row of this size.
        let ops = shapes
            .iter()
            .filter(|shape| shape.size == size)
            .map(|shape| shape.ops)
            .max()
            .unwrap_or(1);
        eprintln!(
            "{}: disk reference, {ops} values x {COPIES} copies",
            size_label(size)
        );
        reference.push(disk_reference(&reference_directory, size, ops, true, limit));
        reference.push(disk_reference(
            &reference_directory,
            size,
            ops,
            false,
            limit,
        ));
    }
    drop(cluster);

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# votefs loopback benchmark");
    println!();
    println!(
        "{} servers ({BANKS} banks x {SERVERS_PER_BANK}) and the client on one machine with {cores} CPUs, over 127.0.0.1; every value has {COPIES} copies, a put returns after {} fdatasynced. Work is bounded per phase by the ops column and {} s{}.",
        BANKS * SERVERS_PER_BANK,
        BANKS / 2 + 1,
        limit.as_secs(),
        if quick { " (VOTEFS_BENCH_QUICK: 1/10 of the work)" } else { "" }
    );
    println!();
    println!("{TABLE_HEADER}");
    for row in &rows {
        println!("{}", row.markdown());
    }
    println!();
    println!("## Physical reference: plain std::fs, same file system, no network");
    println!();
    println!("{TABLE_HEADER}");
    for row in &reference {
        println!("{}", row.markdown());
    }
}
