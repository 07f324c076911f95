//! Replication through the quorum client against real server processes: bulk data round trips
//! byte for byte and reaches every bank; a second writer fences the first.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, first_difference, log_uniform_size, random_bytes, stats, TestCluster};
use votefs::quorum::QuorumError;
use votefs::rng::SeededRng;

const BULK_KEYS: usize = 10_000;
const BULK_MAX_BYTES: usize = 256 * 1024;
const CONCURRENCY: usize = 32;
const SEED: u64 = 0x5eed_b01c;

fn bulk_key(index: usize) -> Vec<u8> {
    format!("bulk/{index:05}").into_bytes()
}

fn bulk_value(index: usize, size: usize) -> Vec<u8> {
    random_bytes(
        SEED ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        size,
    )
}

/// Run `work(index)` for every index below `count` on `CONCURRENCY` tasks.
async fn for_each_concurrently<F, Fut>(count: usize, work: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let next = next.clone();
        let work = work.clone();
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return;
                }
                work(index).await;
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.expect("a worker panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_sized_values_read_back_byte_for_byte() {
    let cluster = TestCluster::start_default();
    // Nothing fails here: on a loaded machine, a slow answer must not pass for a lost one.
    let mut options = common::test_client_options();
    options.rpc.request_timeout = Duration::from_secs(30);
    let client = cluster.client_with(options).await;

    let mut rng = SeededRng::new(SEED);
    let mut sizes: Vec<usize> = (0..BULK_KEYS)
        .map(|_| log_uniform_size(&mut rng, BULK_MAX_BYTES))
        .collect();
    // The edges, whatever the generator draws.
    sizes[0] = 0;
    sizes[1] = BULK_MAX_BYTES;
    sizes[2] = 1;
    let total: usize = sizes.iter().sum();
    let sizes = Arc::new(sizes);

    let started = Instant::now();
    let writer = client.clone();
    let write_sizes = sizes.clone();
    for_each_concurrently(BULK_KEYS, move |index| {
        let client = writer.clone();
        let sizes = write_sizes.clone();
        async move {
            let value = bulk_value(index, sizes[index]);
            if let Err(error) = client.put(&bulk_key(index), &value).await {
                panic!("put of key {index} ({} bytes): {error}", value.len());
            }
        }
    })
    .await;
    let wrote = started.elapsed();

    let started = Instant::now();
    let reader = client.clone();
    let read_sizes = sizes.clone();
    for_each_concurrently(BULK_KEYS, move |index| {
        let client = reader.clone();
        let sizes = read_sizes.clone();
        async move {
            let expected = bulk_value(index, sizes[index]);
            match client.get(&bulk_key(index)).await {
                Ok(Some(value)) => assert!(
                    value == expected,
                    "key {index} read back different bytes: {}",
                    first_difference(&value, &expected)
                ),
                other => panic!("get of key {index}: {other:?}"),
            }
        }
    })
    .await;
    let read = started.elapsed();
    eprintln!(
        "{BULK_KEYS} values, {} MB: written in {wrote:?}, read back in {read:?}",
        total / 1_000_000
    );

    // A write succeeds on a majority; the third copy follows in the background. Every bank
    // must end up with every record.
    let expected_copies = (BULK_KEYS * cluster.placement().bank_count()) as u64;
    eventually(
        "every bank holds every record",
        Duration::from_secs(20),
        || async {
            let mut records = 0;
            for server in 0..cluster.server_count() {
                records += stats(&client, server).await.records;
            }
            if records == expected_copies {
                Ok(())
            } else {
                Err(format!("{records} of {expected_copies} copies stored"))
            }
        },
    )
    .await;
    let client_stats = client.stats();
    assert_eq!(client_stats.unavailable_reads, 0, "{client_stats:?}");
}

#[tokio::test]
async fn a_second_writer_fences_the_first() {
    let cluster = TestCluster::start_default();
    let first = cluster.client().await;
    first.put(b"fence/key", b"first").await.unwrap();
    first.put(b"fence/other", b"first").await.unwrap();

    let second = cluster.client().await;
    assert!(
        second.epoch() > first.epoch(),
        "the second mount must take a newer epoch ({} <= {})",
        second.epoch(),
        first.epoch()
    );

    let error = first
        .put(b"fence/key", b"late write of the fenced writer")
        .await
        .expect_err("a fenced writer's put must fail");
    assert!(
        matches!(error, QuorumError::Fenced { .. }),
        "expected Fenced, got {error:?}"
    );
    assert!(
        error.to_string().contains("fenced by a newer mount"),
        "unclear message: {error}"
    );
    // The refused write never landed anywhere.
    assert_eq!(
        second.get(b"fence/key").await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    // Fenced is final: deletes and further puts fail the same way.
    assert!(matches!(
        first.delete(b"fence/other").await,
        Err(QuorumError::Fenced { .. })
    ));
    assert!(matches!(
        first.put(b"fence/new", b"x").await,
        Err(QuorumError::Fenced { .. })
    ));
    assert_eq!(second.get(b"fence/new").await.unwrap(), None);

    second.put(b"fence/key", b"second").await.unwrap();
    second.put(b"fence/new", b"second").await.unwrap();
    assert_eq!(
        second.get(b"fence/key").await.unwrap().as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(
        second.get(b"fence/other").await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    // The fenced client can still read the newer writer's data.
    assert_eq!(
        first.get(b"fence/new").await.unwrap().as_deref(),
        Some(&b"second"[..])
    );
}
