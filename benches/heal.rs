//! Healing and idle refresh over loopback (run by `ci/bench`; reported, never asserted).
//!
//! Fills a volume on 6 real `votefs server` processes, then measures:
//! - an idle refresh pass over the unchanged volume: the bytes every server received and sent
//!   (frames, length prefixes included), against the volume's size;
//! - healing: one server restarted with an empty data directory, refilled by one pass (no deep
//!   scrub, no rate limit, as `votefs scrub --no-deep` runs it), in records/s and MiB/s;
//! - the physical limit: the same number of bytes copied between two local directories on the
//!   same file system (read, write, fsync).
//!
//! `VOTEFS_BENCH_QUICK=1` shrinks the volume 16x for a smoke run.

#[path = "support/cluster.rs"]
mod cluster;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use cluster::Cluster;
use votefs::env::TokioEnv;
use votefs::proto::{Request, Response};
use votefs::quorum::{ClientOptions, OpenMode, QuorumClient};
use votefs::scrub::{ScrubOptions, Scrubber};

type Client = QuorumClient<TokioEnv>;

const MIB: u64 = 1024 * 1024;
/// The file system's chunk size: a volume of files is mostly records of this size.
const VALUE_BYTES: usize = 128 * 1024;

fn volume_bytes() -> u64 {
    if std::env::var_os("VOTEFS_BENCH_QUICK").is_some() {
        64 * MIB
    } else {
        1024 * MIB
    }
}

async fn fill(client: &Client, records: usize) {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..records {
        let client = client.clone();
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let mut value = vec![0u8; VALUE_BYTES];
            for (position, byte) in value.iter_mut().enumerate() {
                *byte = (position as u64 ^ (index as u64).wrapping_mul(0x9E37_79B9)) as u8;
            }
            let key = format!("chunk/{index:08}");
            client.put(key.as_bytes(), &value).await.expect("a put");
            drop(permit);
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("a put task");
    }
}

/// Frame bytes all servers received and sent so far.
async fn traffic(client: &Client) -> u64 {
    let mut total = 0;
    for server in 0..client.placement().server_count() {
        if let Ok(Response::Stats(stats)) = client.call_server(server, Request::Stats).await {
            total += stats.frame_bytes_received + stats.frame_bytes_sent;
        }
    }
    total
}

async fn server_live_bytes_and_records(client: &Client, server: usize) -> (u64, u64) {
    match client.call_server(server, Request::Stats).await {
        Ok(Response::Stats(stats)) => (stats.live_bytes, stats.records),
        other => panic!("stats of server {server}: {other:?}"),
    }
}

/// Copy every file of `from` into `to`, then fsync each: the physical limit of moving the bytes
/// of one server's store on this machine.
fn plain_copy(from: &std::path::Path, to: &std::path::Path) -> (u64, f64) {
    std::fs::create_dir_all(to).expect("creating the copy's directory");
    let started = Instant::now();
    let mut bytes = 0;
    let mut copies = Vec::new();
    for entry in std::fs::read_dir(from).expect("listing a data directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_file() {
            let target = to.join(path.file_name().expect("a file name"));
            bytes += std::fs::copy(&path, &target).expect("copying a file");
            copies.push(target);
        }
    }
    for copy in copies {
        std::fs::File::open(copy)
            .and_then(|file| file.sync_all())
            .expect("syncing a copy");
    }
    (bytes, started.elapsed().as_secs_f64())
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut cluster = Cluster::start();
    let config = cluster.config();
    let key = config.load_key().expect("the key");
    let open = |mode| {
        runtime
            .block_on(QuorumClient::open(
                TokioEnv::new(),
                config.placement.clone(),
                key.clone(),
                ClientOptions::default(),
                mode,
            ))
            .expect("opening the volume")
    };
    let writer = open(OpenMode::Writer);
    let records = (volume_bytes() / VALUE_BYTES as u64) as usize;
    eprintln!("heal: writing {records} records of {VALUE_BYTES} bytes");
    let started = Instant::now();
    runtime.block_on(fill(&writer, records));
    let fill_seconds = started.elapsed().as_secs_f64();

    let options = ScrubOptions {
        deep_scrub_bytes_per_pass: 0,
        repair_keys_per_second: 0,
        repair_concurrency: std::env::var("VOTEFS_HEAL_CONCURRENCY")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(ScrubOptions::default().repair_concurrency),
        ..ScrubOptions::default()
    };
    let mut scrubber = Scrubber::new(writer.clone(), options);
    // The first pass may still find stragglers of the fill; the second is over agreeing replicas.
    let _ = runtime.block_on(scrubber.pass(&mut |_| {}));
    let before = runtime.block_on(traffic(&writer));
    let started = Instant::now();
    let idle = runtime
        .block_on(scrubber.pass(&mut |_| {}))
        .expect("an idle pass");
    let idle_seconds = started.elapsed().as_secs_f64();
    let idle_bytes = runtime.block_on(traffic(&writer)) - before;

    // Heal: one server loses its disk.
    let emptied = 1;
    let (live_bytes, emptied_records) =
        runtime.block_on(server_live_bytes_and_records(&writer, emptied));
    cluster.restart_empty(emptied);
    let started = Instant::now();
    let healed = runtime
        .block_on(scrubber.pass(&mut |_| {}))
        .expect("a healing pass");
    let heal_seconds = started.elapsed().as_secs_f64();
    let (healed_bytes, healed_records) =
        runtime.block_on(server_live_bytes_and_records(&writer, emptied));
    assert!(
        healed.servers_healed.contains(&emptied),
        "the pass did not heal the emptied server: {healed:?}"
    );
    assert_eq!(healed_records, emptied_records);

    // The physical limit: the healed store's bytes copied between two directories.
    let (copied_bytes, copy_seconds) = plain_copy(
        &cluster.data_dir(emptied),
        &cluster.scratch_dir().join("plain-copy"),
    );

    let mib = |bytes: u64| bytes as f64 / MIB as f64;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "## Refresh and healing ({} records of {} KiB, {:.0} MiB of data, 3 copies)\n",
        records,
        VALUE_BYTES / 1024,
        mib(volume_bytes())
    );
    let _ = writeln!(
        out,
        "Filled in {fill_seconds:.1} s ({:.1} MiB/s of data).\n",
        mib(volume_bytes()) / fill_seconds
    );
    let _ = writeln!(out, "| measurement | value |\n|:---|---:|");
    let _ = writeln!(
        out,
        "| idle pass: bytes moved (all servers, in + out) | {} ({:.4} % of the data) |",
        idle_bytes,
        idle_bytes as f64 * 100.0 / volume_bytes() as f64
    );
    let _ = writeln!(
        out,
        "| idle pass: buckets differing, keys voted | {}, {} |",
        idle.buckets_differing, idle.keys_examined
    );
    let _ = writeln!(out, "| idle pass: duration | {idle_seconds:.2} s |");
    let _ = writeln!(
        out,
        "| heal: records refilled | {healed_records} ({:.1} MiB live; {:.1} MiB before the loss) |",
        mib(healed_bytes),
        mib(live_bytes)
    );
    let _ = writeln!(out, "| heal: one pass | {heal_seconds:.2} s |");
    let _ = writeln!(
        out,
        "| heal: throughput | {:.0} records/s, {:.1} MiB/s |",
        healed_records as f64 / heal_seconds,
        mib(healed_bytes) / heal_seconds
    );
    let _ = writeln!(
        out,
        "| plain copy of the same store (copy + fsync) | {:.1} MiB in {copy_seconds:.2} s = {:.1} MiB/s |",
        mib(copied_bytes),
        mib(copied_bytes) / copy_seconds
    );
    let _ = writeln!(
        out,
        "| heal / plain copy | {:.2} |",
        (mib(healed_bytes) / heal_seconds) / (mib(copied_bytes) / copy_seconds)
    );
}
