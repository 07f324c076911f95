//! Recovery of damaged and lost copies (DESIGN §4-§6): corrupt copies are caught end to end and
//! repaired; a server restarted on an empty disk recovers without ever voting "absent" or old;
//! the record log survives a crash at any point of a write burst, truncates a torn tail, and
//! treats damage in the middle of the log as possible data loss.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    assert_no_vote, await_all_copies, direct_get, direct_record, dump_entry, eventually, find_all,
    identify, is_recovering, key_owned_where, log_uniform_size, random_bytes, reach, run_votefs,
    stats, TestCluster,
};
use votefs::proto::{Request, Response, ServerState};
use votefs::quorum::QuorumError;
use votefs::record::{Record, Version};
use votefs::rng::SeededRng;

/// Repairs are asynchronous: how long a test waits for one to land.
const REPAIR_WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn corrupt_copies_are_caught_and_repaired() {
    let mut cluster = TestCluster::start_with_fault_injection();
    let client = cluster.client().await;
    let placement = cluster.placement().clone();
    // The server whose log file is damaged on disk. Every damaged copy must be the only bad copy
    // of its key, so the keys corrupted by injection keep their bank-1 copy elsewhere.
    let damaged_server = placement.bank_servers(1).next().unwrap();
    let mut counter = 0;
    let injected: Vec<String> = (0..50)
        .map(|_| {
            key_owned_where(&placement, "injected/", &mut counter, |owners| {
                owners[1] != damaged_server
            })
        })
        .collect();
    let on_disk: Vec<String> = (0..50)
        .map(|_| {
            key_owned_where(&placement, "on-disk/", &mut counter, |owners| {
                owners[1] == damaged_server
            })
        })
        .collect();
    let value_of = |key: &str| {
        let seed = votefs::rng::stable_hash(&[key.as_bytes()]);
        // At least 64 bytes, so that each value can be found in a log file.
        random_bytes(seed, 64 + (seed % 4000) as usize)
    };
    let mut versions = std::collections::BTreeMap::new();
    for key in injected.iter().chain(&on_disk) {
        versions.insert(
            key.clone(),
            client.put(key.as_bytes(), &value_of(key)).await.unwrap(),
        );
    }
    // Writes return on a majority; the copies to be damaged must have landed first.
    let all: Vec<&String> = injected.iter().chain(&on_disk).collect();
    await_all_copies(&client, &all).await;

    // Half through the command line, on the bank-0 owner: bits flipped behind the checksum.
    let config = cluster.config_path().to_str().unwrap().to_string();
    for key in &injected {
        let owner = placement.owners(key.as_bytes())[0];
        let address = cluster.address(owner).to_string();
        let output = run_votefs(
            &[
                "inject",
                "--cluster",
                &config,
                "--server",
                &address,
                "corrupt",
                "--key",
                key,
            ],
            None,
        );
        assert!(
            output.status.success(),
            "votefs inject failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let record = direct_record(&client, owner, key.as_bytes())
            .await
            .expect("the injected copy is still there");
        assert!(
            !record.tag_is_valid(client.cluster_key()),
            "{key}: injection left a valid tag"
        );
    }

    // The other half on disk, while the server is stopped.
    cluster.stop(damaged_server);
    let segments = cluster.segment_files(damaged_server);
    let mut contents: Vec<Vec<u8>> = segments
        .iter()
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    for key in &on_disk {
        let value = value_of(key);
        let found: Vec<(usize, usize)> = contents
            .iter()
            .enumerate()
            .flat_map(|(file, bytes)| {
                find_all(bytes, &value)
                    .into_iter()
                    .map(move |offset| (file, offset))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{key}'s value must be in the log exactly once"
        );
        let (file, offset) = found[0];
        contents[file][offset + value.len() / 2] ^= 0x40;
    }
    for (path, bytes) in segments.iter().zip(&contents) {
        std::fs::write(path, bytes).unwrap();
    }
    cluster.restart(damaged_server);
    assert!(
        is_recovering(&client, damaged_server).await,
        "damage in the middle of the log must make the server recovering"
    );

    // Every read returns the right bytes.
    for key in injected.iter().chain(&on_disk) {
        assert_eq!(
            client.get(key.as_bytes()).await.unwrap(),
            Some(value_of(key)),
            "{key}"
        );
    }
    // And the bad copies are repaired behind the reader.
    eventually("injected corruption is repaired", REPAIR_WAIT, || async {
        for key in &injected {
            let owner = placement.owners(key.as_bytes())[0];
            match direct_get(&client, owner, key.as_bytes()).await {
                Response::Found(record)
                    if record.tag_is_valid(client.cluster_key())
                        && record.version == versions[key]
                        && record.value == value_of(key) => {}
                other => return Err(format!("{key} on server {owner}: {other:?}")),
            }
        }
        Ok(())
    })
    .await;
    eventually("damage on disk is repaired", REPAIR_WAIT, || async {
        for key in &on_disk {
            match dump_entry(&client, damaged_server, key.as_bytes()).await {
                Some(entry)
                    if entry.checksum_ok
                        && entry.tag_ok
                        && !entry.lost
                        && entry.version == versions[key]
                        && entry.value_bytes == value_of(key).len() as u64 => {}
                other => return Err(format!("{key}: {other:?}")),
            }
        }
        Ok(())
    })
    .await;
    let client_stats = client.stats();
    assert!(
        client_stats.repairs_corrupt >= injected.len() as u64,
        "{client_stats:?}"
    );
    assert!(
        client_stats.repairs_recovering >= on_disk.len() as u64,
        "{client_stats:?}"
    );
}

#[tokio::test]
async fn a_corrupt_copy_of_an_empty_value_is_repaired() {
    let cluster = TestCluster::start_with_fault_injection();
    let client = cluster.client().await;
    let key = b"empty/value";
    let version = client.put(key, b"").await.unwrap();
    let owner = cluster.placement().owners(key)[0];
    await_all_copies(&client, &[key]).await;
    let request = Request::Inject {
        key: key.to_vec(),
        fault: votefs::proto::InjectedFault::Corrupt,
    };
    assert_eq!(client.call_server(owner, request).await, Ok(Response::Done));
    assert_eq!(client.get(key).await.unwrap(), Some(Vec::new()));
    eventually("the corrupt copy is repaired", REPAIR_WAIT, || async {
        match direct_get(&client, owner, key).await {
            Response::Found(record)
                if record.tag_is_valid(client.cluster_key()) && record.version == version =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

fn generation_value(key: &str, generation: u32) -> Vec<u8> {
    let mut value = format!("{key}@{generation}:").into_bytes();
    value.extend(random_bytes(
        votefs::rng::stable_hash(&[key.as_bytes()]) ^ u64::from(generation),
        200,
    ));
    value
}

#[tokio::test]
async fn a_server_restarted_empty_recovers_and_reads_stay_correct() {
    let mut cluster = TestCluster::start_default();
    let client = cluster.client().await;
    let placement = cluster.placement().clone();
    let keys: Vec<String> = (0..300).map(|index| format!("refill/{index}")).collect();
    let mut latest = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let mut generation = 1;
        client
            .put(key.as_bytes(), &generation_value(key, 1))
            .await
            .unwrap();
        if index % 3 == 0 {
            generation = 2;
            client
                .put(key.as_bytes(), &generation_value(key, 2))
                .await
                .unwrap();
        }
        latest.push(generation_value(key, generation));
    }
    let emptied = 0;
    let owned: Vec<usize> = (0..keys.len())
        .filter(|index| placement.owners(keys[*index].as_bytes()).contains(&emptied))
        .collect();
    assert!(owned.len() > 100, "server {emptied} owns too few keys");
    // Nothing is on its way to the server about to lose its disk.
    eventually("every copy is written", REPAIR_WAIT, || async {
        for &index in &owned {
            match direct_get(&client, emptied, keys[index].as_bytes()).await {
                Response::Found(record) if record.value == latest[index] => {}
                other => return Err(format!("{}: {other:?}", keys[index])),
            }
        }
        Ok(())
    })
    .await;

    cluster.restart_empty(emptied);
    // Before anyone tells it otherwise, it knows nothing: blank, and it votes on nothing.
    let identity = identify(&client, emptied).await;
    assert_eq!(identity.state, ServerState::Blank, "{identity:?}");
    assert_eq!(
        direct_get(&client, emptied, keys[owned[0]].as_bytes()).await,
        Response::Blank
    );
    let read_all = |client: common::Client| {
        let keys = keys.clone();
        let latest = latest.clone();
        async move {
            for (index, key) in keys.iter().enumerate() {
                match client.get(key.as_bytes()).await {
                    Ok(Some(value)) if value == latest[index] => {}
                    other => panic!(
                        "{key}: expected generation {}, got {:?}",
                        if index % 3 == 0 { 2 } else { 1 },
                        other.map(|value| value
                            .map(|bytes| String::from_utf8_lossy(&bytes[..12]).into_owned()))
                    ),
                }
            }
        }
    };
    // Reads while it is blank (a read-only client, which repairs nothing).
    read_all(cluster.reader().await).await;

    // A new mount finds it blank in a volume that exists: it joins as a recovering member.
    let client = cluster.client().await;
    match identify(&client, emptied).await.state {
        ServerState::Member {
            volume,
            member,
            recovering,
            ..
        } => {
            assert_eq!(volume, client.volume());
            assert_eq!(member, placement.member(emptied));
            assert!(recovering, "a server restarted empty must be recovering");
        }
        ServerState::Blank => panic!("still blank after a mount"),
    }
    assert!(stats(&client, emptied).await.recovering);
    for &index in &owned {
        assert_eq!(
            direct_get(&client, emptied, keys[index].as_bytes()).await,
            Response::Recovering
        );
    }
    // Reads while it is recovering; they repair it.
    read_all(client.clone()).await;
    eventually(
        "read-repair refills the emptied server",
        REPAIR_WAIT,
        || async {
            for &index in &owned {
                match dump_entry(&client, emptied, keys[index].as_bytes()).await {
                    Some(entry)
                        if entry.tag_ok && entry.value_bytes == latest[index].len() as u64 => {}
                    other => return Err(format!("{}: {other:?}", keys[index])),
                }
            }
            Ok(())
        },
    )
    .await;
    // Refilled or not, it refuses to vote until a scrub pass says it is complete: it cannot know
    // what it missed, so it answers neither "not found" nor a copy that may be old.
    for &index in &owned {
        assert_no_vote(
            &direct_get(&client, emptied, keys[index].as_bytes()).await,
            &keys[index],
        );
    }
    assert_eq!(
        direct_get(&client, emptied, b"refill/never-written").await,
        Response::Recovering,
        "a recovering server must not vote absent"
    );

    // A complete scrub pass declares it healthy; then it votes again, with the right bytes.
    let report = votefs::scrub::scrub_pass(&client).await.unwrap();
    assert_eq!(report.servers_healed, vec![emptied], "{report:?}");
    assert!(!is_recovering(&client, emptied).await);
    for &index in &owned {
        match direct_get(&client, emptied, keys[index].as_bytes()).await {
            Response::Found(record) if record.value == latest[index] => {}
            other => panic!("{}: {other:?}", keys[index]),
        }
    }
    assert_eq!(
        direct_get(&client, emptied, b"refill/never-written").await,
        Response::NotFound
    );
}

#[tokio::test]
async fn an_emptied_server_never_votes_absent_or_old() {
    let mut cluster = TestCluster::start_default();
    // Reads wait for the paused server until the request timeout: keep it short.
    let mut options = common::test_client_options();
    options.rpc.request_timeout = Duration::from_secs(2);
    let client = cluster.client_with(options).await;
    let placement = cluster.placement().clone();
    // Two keys with the same owners: "old" exists in two generations, "fresh" is new.
    let old = "lesson/old";
    let mut counter = 0;
    let old_owners = placement.owners(old.as_bytes());
    let fresh = key_owned_where(&placement, "lesson/fresh-", &mut counter, |owners| {
        owners == old_owners.as_slice()
    });
    let [a, b, c] = old_owners[..] else {
        panic!("three banks")
    };
    let first = client
        .put(old.as_bytes(), &generation_value(old, 1))
        .await
        .unwrap();
    await_all_copies(&client, &[old]).await;

    // b misses generation 2 of "old" and all of "fresh".
    cluster.kill(b);
    let second = client
        .put(old.as_bytes(), &generation_value(old, 2))
        .await
        .unwrap();
    client
        .put(fresh.as_bytes(), &generation_value(&fresh, 1))
        .await
        .unwrap();
    common::settle_backlog(&client, 2).await;
    cluster.restart(b);
    reach(&client, &[b]).await;
    assert_eq!(
        direct_record(&client, b, old.as_bytes())
            .await
            .map(|record| record.version),
        Some(first)
    );
    assert_eq!(
        direct_get(&client, b, fresh.as_bytes()).await,
        Response::NotFound
    );

    // c loses its disk; a stops answering. Only b (old or absent) and c (knows nothing) remain:
    // a read must fail rather than return generation 1 or "not found".
    cluster.restart_empty(c);
    cluster.pause(a);
    // Both reads wait for the paused server until the request timeout, so run them together.
    let (old_read, fresh_read) =
        tokio::join!(client.get(old.as_bytes()), client.get(fresh.as_bytes()));
    match old_read {
        Err(QuorumError::Unavailable(_)) => {}
        other => panic!("read of {old} without the newest copy: {other:?}"),
    }
    match fresh_read {
        Err(QuorumError::Unavailable(_)) => {}
        other => panic!("read of {fresh} without its copies: {other:?}"),
    }

    cluster.resume(a);
    assert_eq!(
        client.get(old.as_bytes()).await.unwrap(),
        Some(generation_value(old, 2))
    );
    // The write-back put the newest copy on a majority before the read returned.
    let b_version = direct_record(&client, b, old.as_bytes())
        .await
        .map(|record| record.version);
    let c_version = dump_entry(&client, c, old.as_bytes())
        .await
        .filter(|entry| entry.tag_ok)
        .map(|entry| entry.version);
    assert!(
        b_version == Some(second) || c_version == Some(second),
        "read returned {second} held by one server only (b: {b_version:?}, c: {c_version:?})"
    );
    assert_eq!(
        client.get(fresh.as_bytes()).await.unwrap(),
        Some(generation_value(&fresh, 1))
    );
    // c still votes on neither key.
    for key in [old, fresh.as_str()] {
        assert_no_vote(&direct_get(&client, c, key.as_bytes()).await, key);
    }
}

#[tokio::test]
async fn read_repair_reaches_a_server_restarted_empty() {
    let mut cluster = TestCluster::start_default();
    let client = cluster.client().await;
    let placement = cluster.placement().clone();
    let emptied = 0;
    let mut counter = 0;
    let key = key_owned_where(&placement, "first-repair/", &mut counter, |owners| {
        owners.contains(&emptied)
    });
    let version = client
        .put(key.as_bytes(), &generation_value(&key, 1))
        .await
        .unwrap();
    await_all_copies(&client, &[&key]).await;
    cluster.restart_empty(emptied);
    reach(&client, &[emptied]).await;
    assert_eq!(
        client.get(key.as_bytes()).await.unwrap(),
        Some(generation_value(&key, 1))
    );
    // The read saw a blank owner: read-repair makes it join and gives it the copy.
    eventually(
        "read-repair refills the emptied server",
        REPAIR_WAIT,
        || async {
            match dump_entry(&client, emptied, key.as_bytes()).await {
                Some(entry) if entry.tag_ok && entry.version == version => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn concurrent_joins_are_one_loss() {
    let mut cluster = TestCluster::start_default();
    let client = cluster.client().await;
    let emptied = 0;
    let member = cluster.placement().member(emptied);
    cluster.restart_empty(emptied);
    reach(&client, &[emptied]).await;
    // Many read-repairs meeting a blank server at once each ask it to join.
    let mut joins = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let client = client.clone();
        let request = Request::Join {
            volume: client.volume(),
            member,
            epoch: client.epoch(),
        };
        joins.spawn(async move { client.call_server(emptied, request).await });
    }
    while let Some(answer) = joins.join_next().await {
        assert_eq!(answer.unwrap(), Ok(Response::Done));
    }
    let identity = identify(&client, emptied).await;
    assert!(is_recovering(&client, emptied).await);
    // One loss: one recovery generation, so that a scrub pass running meanwhile can still
    // declare the server healthy.
    assert_eq!(identity.recovery_generation, 1, "{identity:?}");
}

/// A log entry's extent: (offset, length), walking headers from the start of a segment.
fn entry_extents(bytes: &[u8]) -> Vec<(usize, usize)> {
    const HEADER_BYTES: usize = 16;
    let mut extents = Vec::new();
    let mut offset = 0;
    while offset + HEADER_BYTES <= bytes.len() {
        let body = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
        let length = HEADER_BYTES + body;
        if offset + length > bytes.len() {
            break;
        }
        extents.push((offset, length));
        offset += length;
    }
    extents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_survives_kills_mid_burst_torn_tails_and_damage() {
    let mut cluster =
        TestCluster::start(common::ClusterSpec::default().with_segment_bytes(1 << 20));
    let client = cluster.client().await;
    let target = 0;
    let key = client.cluster_key().clone();
    let acknowledged: Arc<Mutex<Vec<Record>>> = Arc::new(Mutex::new(Vec::new()));
    let sequence = Arc::new(AtomicUsize::new(1));

    for (round, kill_after) in [3usize, 91, 600].into_iter().enumerate() {
        let acks = Arc::new(AtomicUsize::new(0));
        let reached = Arc::new(tokio::sync::Notify::new());
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..32u64 {
            let client = client.clone();
            let key = key.clone();
            let acknowledged = acknowledged.clone();
            let sequence = sequence.clone();
            let acks = acks.clone();
            let reached = reached.clone();
            workers.spawn(async move {
                let mut rng = SeededRng::new(((round as u64) << 32) | worker);
                // Bounded: the server dies long before a worker's budget runs out.
                for _ in 0..1000 {
                    let number = sequence.fetch_add(1, Ordering::Relaxed) as u64;
                    let size = log_uniform_size(&mut rng, 64 * 1024);
                    let mut value = vec![0u8; size];
                    rng.fill(&mut value);
                    let record = Record::new(
                        &key,
                        format!("burst/{round}/{number}").into_bytes(),
                        Version {
                            epoch: client.epoch(),
                            sequence: number,
                            writer: 0x7e57,
                        },
                        false,
                        value,
                    );
                    let request = Request::Put {
                        volume: client.volume(),
                        writer_epoch: client.epoch(),
                        record: record.clone(),
                        repair: false,
                    };
                    match client.call_server(target, request).await {
                        Ok(Response::Stored) => {
                            acknowledged.lock().unwrap().push(record);
                            if acks.fetch_add(1, Ordering::AcqRel) + 1 == kill_after {
                                reached.notify_one();
                            }
                        }
                        Ok(other) => panic!("put answered {other:?}"),
                        // The server is gone: this worker is done.
                        Err(_) => return,
                    }
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(60), reached.notified())
            .await
            .expect("the burst reached its kill point");
        cluster.kill(target);
        while let Some(result) = workers.join_next().await {
            result.expect("a worker panicked");
        }
        let stored = acks.load(Ordering::Acquire);
        assert!(stored >= kill_after);
        assert!(stored < 32 * 1000, "the kill came after the burst ended");

        cluster.restart(target);
        assert!(
            !is_recovering(&client, target).await,
            "round {round}: a crash mid-burst must not look like damage"
        );
        let records = acknowledged.lock().unwrap().clone();
        check_all_present(&client, target, &records).await;
    }

    // A torn tail: a partial copy of the last entry at the end of the newest segment.
    cluster.stop(target);
    let segments = cluster.segment_files(target);
    let newest = segments.last().unwrap().clone();
    let last_entry = segments
        .iter()
        .rev()
        .find_map(|path| {
            let bytes = std::fs::read(path).unwrap();
            entry_extents(&bytes)
                .last()
                .map(|(offset, length)| bytes[*offset..offset + length].to_vec())
        })
        .expect("the log holds entries");
    // The header complete, the body cut short.
    let torn = &last_entry[..16 + (last_entry.len() - 16) / 2];
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        file.write_all(torn).unwrap();
    }
    cluster.restart(target);
    reach(&client, &[target]).await;
    assert!(
        !is_recovering(&client, target).await,
        "a torn tail is an interrupted write, not damage"
    );
    let server_stats = stats(&client, target).await;
    assert_eq!(
        server_stats.torn_tail_bytes_truncated,
        torn.len() as u64,
        "{server_stats:?}"
    );
    let records = acknowledged.lock().unwrap().clone();
    check_all_present(&client, target, &records).await;

    // Damage in the middle of the oldest segment: acknowledged data may be lost.
    cluster.stop(target);
    let oldest = cluster.segment_files(target)[0].clone();
    let mut bytes = std::fs::read(&oldest).unwrap();
    assert!(
        bytes.len() > 1000,
        "the oldest segment is too small to damage in the middle"
    );
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&oldest, &bytes).unwrap();
    cluster.restart(target);
    assert!(
        is_recovering(&client, target).await,
        "damage in the middle of the log must make the server recovering"
    );
    assert!(stats(&client, target).await.recovering);
    let any = acknowledged.lock().unwrap()[0].key.clone();
    assert_no_vote(
        &direct_get(&client, target, &any).await,
        "a key of the damaged server",
    );
    assert_eq!(
        direct_get(&client, target, b"burst/never-written").await,
        Response::Recovering,
        "a damaged server must not vote absent"
    );
}

/// Every record in `records` is on `server` with its version and bytes.
async fn check_all_present(client: &common::Client, server: usize, records: &[Record]) {
    let mut seen = BTreeSet::new();
    for record in records {
        assert!(seen.insert(record.key.clone()));
        match direct_get(client, server, &record.key).await {
            Response::Found(found)
                if found.version == record.version && found.value == record.value => {}
            other => panic!(
                "acknowledged {:?} is not intact after a crash: {other:?}",
                String::from_utf8_lossy(&record.key)
            ),
        }
    }
}
