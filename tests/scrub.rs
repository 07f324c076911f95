//! The refresh on real processes (issue 5): `votefs scrub` refills a server restarted empty,
//! repairs rot nobody read, moves no record data over an unchanged volume, and `votefs status
//! --json` tells the truth at every step.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{metric_value, Client, ClusterSpec, TestCluster};
use serde_json::Value;

/// Write `count` small records concurrently.
async fn write_records(client: &Client, count: usize) {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..count {
        let client = client.clone();
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let key = format!("record/{index:05}");
            let value = format!("value of record {index} ").repeat(1 + index % 7);
            client.put(key.as_bytes(), value.as_bytes()).await.unwrap();
            drop(permit);
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap();
    }
}

fn config(cluster: &TestCluster) -> String {
    cluster.config_path().to_str().unwrap().to_string()
}

/// `votefs status --json`, parsed, and whether it exited 0.
fn status(cluster: &TestCluster) -> (Value, bool) {
    let output = cluster.votefs(&["status", "--cluster", &config(cluster), "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("status --json printed {stdout:?}: {error}"));
    (value, output.status.success())
}

fn server_field<'a>(status: &'a Value, server: usize, field: &str) -> &'a Value {
    &status["servers"][server][field]
}

fn states(status: &Value) -> Vec<String> {
    status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|server| server["state"].as_str().unwrap().to_string())
        .collect()
}

/// `votefs scrub`: its standard output and whether it exited 0.
fn scrub(cluster: &TestCluster) -> (String, bool) {
    let output = cluster.votefs(&["scrub", "--cluster", &config(cluster)]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        !stderr.contains("panicked"),
        "scrub panicked: {stderr}\n{stdout}"
    );
    (stdout + &stderr, output.status.success())
}

/// One line of `votefs dump`.
#[derive(Debug)]
struct DumpLine {
    version: String,
    checksum_ok: bool,
    tag_ok: bool,
    state: String,
}

/// Every entry `votefs dump` lists for one server, by key.
fn dump(cluster: &TestCluster, server: usize) -> BTreeMap<String, DumpLine> {
    let address = cluster.address(server).to_string();
    let output = cluster.votefs(&["dump", "--cluster", &config(cluster), "--server", &address]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut entries = BTreeMap::new();
    for line in stdout.lines().skip(1) {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 6, "{line:?}");
        entries.insert(
            fields[0].to_string(),
            DumpLine {
                version: fields[1].to_string(),
                checksum_ok: fields[3] == "ok",
                tag_ok: fields[4] == "ok",
                state: fields[5].to_string(),
            },
        );
    }
    entries
}

/// Every key is held, readable and identical, by exactly its owner in every bank.
fn assert_copies_identical(cluster: &TestCluster, expected_keys: usize) {
    let dumps: Vec<_> = (0..cluster.server_count())
        .map(|server| dump(cluster, server))
        .collect();
    let mut holders: BTreeMap<&String, Vec<(usize, &DumpLine)>> = BTreeMap::new();
    for (server, entries) in dumps.iter().enumerate() {
        for (key, entry) in entries {
            holders.entry(key).or_default().push((server, entry));
        }
    }
    assert_eq!(holders.len(), expected_keys);
    for (key, copies) in holders {
        let mut owners: Vec<usize> = cluster.placement().owners(key.as_bytes());
        owners.sort_unstable();
        let servers: Vec<usize> = copies.iter().map(|(server, _)| *server).collect();
        assert_eq!(servers, owners, "{key} is held by {servers:?}");
        for (server, line) in &copies {
            assert!(
                line.checksum_ok && line.tag_ok && line.state == "present",
                "{key} on server {server}: {copies:?}"
            );
            assert_eq!(line.version, copies[0].1.version, "{key}: {copies:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_server_is_healthy_after_one_scrub_and_status_tells_the_truth() {
    const RECORDS: usize = 10_000;
    let mut cluster = ClusterSpec::default().start();
    let client = cluster.client().await;
    write_records(&client, RECORDS).await;

    let (before, all_up) = status(&cluster);
    assert!(all_up, "{before}");
    assert!(
        states(&before).iter().all(|state| state == "healthy"),
        "{before}"
    );
    let copies: u64 = (0..cluster.server_count())
        .map(|server| server_field(&before, server, "records").as_u64().unwrap())
        .sum();
    assert_eq!(copies, 3 * RECORDS as u64, "{before}");

    // Server 1 (bank 0) loses its disk; server 2 (bank 1) is down while the first pass runs.
    let emptied = cluster.bank(0)[1];
    let other = cluster.bank(1)[0];
    let emptied_records = server_field(&before, emptied, "records").as_u64().unwrap();
    cluster.restart_empty(emptied);
    cluster.kill(other);
    let (during, all_up) = status(&cluster);
    assert!(!all_up, "status exits non-zero while a server is down");
    assert_eq!(server_field(&during, emptied, "state"), "blank", "{during}");
    assert_eq!(server_field(&during, emptied, "records"), 0, "{during}");
    assert_eq!(server_field(&during, other, "state"), "down", "{during}");
    assert_eq!(server_field(&during, other, "up"), false, "{during}");

    // A pass that cannot reach every server makes the empty one join and fills it, but cannot
    // declare it healthy.
    let (output, complete) = scrub(&cluster);
    assert!(!complete, "{output}");
    assert!(output.contains("INCOMPLETE"), "{output}");
    let (partial, _) = status(&cluster);
    assert_eq!(
        server_field(&partial, emptied, "state"),
        "recovering",
        "{partial}"
    );

    // With every server back, one pass heals it.
    cluster.restart(other);
    let (output, complete) = scrub(&cluster);
    assert!(complete, "{output}");
    assert!(
        output.contains(&format!("healed {}", cluster.address(emptied))),
        "{output}"
    );
    let (after, all_up) = status(&cluster);
    assert!(all_up, "{after}");
    assert!(
        states(&after).iter().all(|state| state == "healthy"),
        "{after}"
    );
    assert_eq!(
        server_field(&after, emptied, "records").as_u64().unwrap(),
        emptied_records,
        "{after}"
    );
    let volume = &after["volume"];
    assert_eq!(volume["reporter"], "scrub", "{after}");
    assert!(
        volume["last_complete_pass_unix_ms"].as_u64().unwrap() > 0,
        "{after}"
    );
    assert_eq!(volume["heal_backlog"], 0, "{after}");
    let repaired = volume["repairs"]["missing"].as_u64().unwrap()
        + volume["repairs"]["recovering"].as_u64().unwrap();
    assert!(repaired > 0, "{after}");
    assert_copies_identical(&cluster, RECORDS);
}

/// Walk one segment file and damage every `every`-th entry's body (its checksum then fails).
/// Returns how many entries were damaged.
fn rot_entries(path: &std::path::Path, every: usize) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let mut offset = 0;
    let mut index = 0;
    let mut damaged = 0;
    while offset + 16 <= bytes.len() {
        let body_bytes = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap());
        let end = offset + 16 + body_bytes as usize;
        assert!(end <= bytes.len(), "a torn entry at {offset}");
        if index % every == every - 1 {
            bytes[end - 1] ^= 0x55;
            damaged += 1;
        }
        index += 1;
        offset = end;
    }
    std::fs::write(path, bytes).unwrap();
    damaged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rot_is_repaired_by_the_next_pass_and_an_idle_pass_moves_no_record_data() {
    const RECORDS: usize = 4_000;
    let cluster = ClusterSpec::default().with_metrics().start();
    let client = cluster.client().await;
    write_records(&client, RECORDS).await;
    drop(client);

    // 1 % of one server's entries rot on disk behind its back; nobody reads them.
    let rotting = 0;
    let mut damaged = 0;
    for segment in cluster.segment_files(rotting) {
        damaged += rot_entries(&segment, 100);
    }
    assert!(damaged >= 10, "only {damaged} entries damaged");

    let (output, complete) = scrub(&cluster);
    assert!(complete, "{output}");
    assert!(
        output.contains(&format!("found {damaged} damaged")),
        "{output}"
    );
    let (after, _) = status(&cluster);
    assert_eq!(
        server_field(&after, rotting, "deep_scrub_damage_found"),
        damaged as u64,
        "{after}"
    );
    assert!(
        after["volume"]["repairs"]["corrupt"].as_u64().unwrap() >= damaged as u64,
        "{after}"
    );
    assert_copies_identical(&cluster, RECORDS);

    // Over replicas that agree, a pass compares digests and moves no record data: the servers'
    // own counters of record bytes sent and stored do not move.
    let moved = || -> (f64, f64) {
        (0..cluster.server_count())
            .map(|server| {
                let exposition = cluster.metrics(server);
                (
                    metric_value(&exposition, "votefs_server_record_bytes_sent_total"),
                    metric_value(&exposition, "votefs_server_record_bytes_stored_total"),
                )
            })
            .fold((0.0, 0.0), |sum, (sent, stored)| {
                (sum.0 + sent, sum.1 + stored)
            })
    };
    let idle_before = moved();
    assert!(
        idle_before.1 > 0.0,
        "the writes and repairs stored record bytes"
    );
    let (output, complete) = scrub(&cluster);
    assert!(complete, "{output}");
    assert!(output.contains(": 0 differed"), "{output}");
    assert!(output.contains("found 0 damaged"), "{output}");
    assert_eq!(moved(), idle_before);
}
