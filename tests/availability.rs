//! Availability and safety with servers down (DESIGN §5, §8 fault envelope): one bank down keeps
//! everything working and the bank catches up when it returns; two banks down or two corrupt
//! copies give errors, never wrong or stale bytes; a write seen by one bank only is written back
//! before any read returns it, so reads never go back in time.

mod common;

use std::time::Duration;

use common::{
    await_all_copies, direct_get, direct_record, eventually, is_recovering, reach, settle_backlog,
    TestCluster,
};
use votefs::proto::{InjectedFault, Request, Response};
use votefs::quorum::QuorumError;
use votefs::record::Version;

fn value(key: &str, generation: u32) -> Vec<u8> {
    let mut value = format!("{key} generation {generation} ").into_bytes();
    // Some bulk, so that values are not all tiny.
    value.extend(std::iter::repeat_n(generation as u8, 100 + key.len() * 13));
    value
}

/// The latest version of `key` on `server` is `version` with `expected` bytes.
async fn holds(
    client: &common::Client,
    server: usize,
    key: &str,
    version: Version,
    expected: &[u8],
) -> Result<(), String> {
    match direct_get(client, server, key.as_bytes()).await {
        Response::Found(record)
            if record.version == version
                && record.value == expected
                && record.tag_is_valid(client.cluster_key()) =>
        {
            Ok(())
        }
        Response::Found(record) => Err(format!(
            "server {server} holds {key} at {} ({} bytes), want {version}",
            record.version,
            record.value.len()
        )),
        other => Err(format!("server {server} answers {other:?} for {key}")),
    }
}

#[tokio::test]
async fn one_bank_down_serves_everything_and_catches_up_when_back() {
    let mut cluster = TestCluster::start_default();
    let client = cluster.client().await;
    let placement = cluster.placement().clone();
    const OLD: usize = 120;
    const NEW: usize = 120;
    let mut latest: Vec<(String, Version, Vec<u8>)> = Vec::new();
    for index in 0..OLD {
        let key = format!("old/{index}");
        let version = client.put(key.as_bytes(), &value(&key, 1)).await.unwrap();
        latest.push((key.clone(), version, value(&key, 1)));
    }
    let deleted = "old/deleted";
    client
        .put(deleted.as_bytes(), b"short-lived")
        .await
        .unwrap();
    let mut written: Vec<&str> = latest.iter().map(|(key, _, _)| key.as_str()).collect();
    written.push(deleted);
    await_all_copies(&client, &written).await;

    cluster.kill_bank(0);
    // Reads while the bank is down go through a read-only client, which repairs nothing: the
    // returning bank must be caught up by what happens after it is back.
    let reader = cluster.reader().await;

    // Old keys stay readable.
    for (key, _, expected) in &latest {
        let read = reader.get(key.as_bytes()).await;
        assert_eq!(
            read.as_ref().ok().and_then(|value| value.as_deref()),
            Some(&expected[..]),
            "{key}: {read:?}"
        );
    }
    // New keys, overwrites of old keys and deletes are acknowledged.
    let mut missed = 0;
    for (index, entry) in latest.iter_mut().enumerate() {
        if index % 2 == 0 {
            let (key, version, expected) = entry;
            *expected = value(key, 2);
            *version = client
                .put(key.as_bytes(), expected)
                .await
                .unwrap_or_else(|error| panic!("overwrite of {key} with a bank down: {error}"));
            missed += 1;
        }
    }
    for index in 0..NEW {
        let key = format!("new/{index}");
        let expected = value(&key, 1);
        let version = client
            .put(key.as_bytes(), &expected)
            .await
            .unwrap_or_else(|error| panic!("put of {key} with a bank down: {error}"));
        latest.push((key, version, expected));
        missed += 1;
    }
    client.delete(deleted.as_bytes()).await.unwrap();
    missed += 1;
    for (key, _, expected) in &latest {
        let read = reader.get(key.as_bytes()).await;
        assert_eq!(
            read.as_ref().ok().and_then(|value| value.as_deref()),
            Some(&expected[..]),
            "{key}: {read:?}"
        );
    }
    assert_eq!(reader.get(deleted.as_bytes()).await.unwrap(), None);
    // Every missed copy is remembered, and no write is still trying to reach the dead bank.
    settle_backlog(&client, missed).await;

    cluster.restart_bank(0);
    for server in cluster.bank(0) {
        assert!(
            !is_recovering(&client, server).await,
            "a cleanly recovered log must not make server {server} recovering"
        );
    }
    // The returning bank lags: it missed every write made while it was down.
    let lagging: Vec<usize> = (0..latest.len())
        .filter(|index| index % 2 == 0 || *index >= OLD)
        .collect();
    for &index in &lagging {
        let (key, version, _) = &latest[index];
        let owner = placement.owners(key.as_bytes())[0];
        if let Some(record) = direct_record(&client, owner, key.as_bytes()).await {
            assert!(record.version < *version, "{key} was not missed by bank 0?");
        }
    }

    // Reads repair what they touch: read the first half of the lagging keys.
    let (read_now, left_for_backlog) = lagging.split_at(lagging.len() / 2);
    for &index in read_now {
        let (key, _, expected) = &latest[index];
        assert_eq!(
            client.get(key.as_bytes()).await.unwrap().as_deref(),
            Some(&expected[..])
        );
    }
    eventually(
        "read-repair brings the returning bank up to date",
        Duration::from_secs(10),
        || async {
            for &index in read_now {
                let (key, version, expected) = &latest[index];
                let owner = placement.owners(key.as_bytes())[0];
                holds(&client, owner, key, *version, expected).await?;
            }
            Ok(())
        },
    )
    .await;
    let stats = client.stats();
    assert!(stats.repairs_lagging > 0, "{stats:?}");
    assert!(stats.repairs_missing > 0, "{stats:?}");

    // The heal backlog repairs the rest without anyone reading them.
    let healed = client.heal_backlog(usize::MAX).await;
    assert!(
        healed >= left_for_backlog.len(),
        "healed {healed} of at least {} backlog entries",
        left_for_backlog.len()
    );
    eventually(
        "the heal backlog brings the returning bank up to date",
        Duration::from_secs(10),
        || async {
            for &index in left_for_backlog {
                let (key, version, expected) = &latest[index];
                let owner = placement.owners(key.as_bytes())[0];
                holds(&client, owner, key, *version, expected).await?;
            }
            let owner = placement.owners(deleted.as_bytes())[0];
            match direct_get(&client, owner, deleted.as_bytes()).await {
                Response::Found(record) if record.tombstone => Ok(()),
                other => Err(format!("deleted key on the returning bank: {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(client.stats().backlog, 0);
}

#[tokio::test]
async fn two_banks_down_is_an_error_never_stale_bytes() {
    let mut cluster = TestCluster::start_default();
    let client = cluster.client().await;
    let keys: Vec<String> = (0..40).map(|index| format!("envelope/{index}")).collect();
    for key in &keys {
        client.put(key.as_bytes(), &value(key, 1)).await.unwrap();
    }
    await_all_copies(&client, &keys).await;
    // Bank 2 misses the second generation, then comes back holding the first.
    cluster.kill_bank(2);
    for key in &keys {
        client.put(key.as_bytes(), &value(key, 2)).await.unwrap();
    }
    // No copy of generation 2 is still on its way to bank 2.
    settle_backlog(&client, keys.len() as u64).await;
    cluster.restart_bank(2);
    // Only bank 2 remains: it alone cannot tell that it is behind.
    cluster.kill_bank(0);
    cluster.kill_bank(1);
    for key in &keys {
        match client.get(key.as_bytes()).await {
            Err(QuorumError::Unavailable(_)) => {}
            other => panic!("read of {key} with two banks down: {other:?}"),
        }
        assert!(
            client.put(key.as_bytes(), &value(key, 3)).await.is_err(),
            "a write cannot reach a majority with two banks down"
        );
    }
    assert!(client.stats().unavailable_reads >= keys.len() as u64);

    cluster.restart_bank(0);
    cluster.restart_bank(1);
    reach(&client, &cluster.bank(0)).await;
    reach(&client, &cluster.bank(1)).await;
    for key in &keys {
        // Generation 3 was never acknowledged and may or may not show; generation 1 never may.
        let read = client.get(key.as_bytes()).await.unwrap();
        assert!(
            read == Some(value(key, 2)) || read == Some(value(key, 3)),
            "{key} went back in time: {:?}",
            read.map(|bytes| String::from_utf8_lossy(&bytes[..20]).into_owned())
        );
    }
}

#[tokio::test]
async fn two_corrupt_copies_are_an_error_never_wrong_bytes() {
    let cluster = TestCluster::start_with_fault_injection();
    let client = cluster.client().await;
    let placement = cluster.placement().clone();
    let keys: Vec<String> = (0..10)
        .map(|index| format!("twice-corrupt/{index}"))
        .collect();
    for (index, key) in keys.iter().enumerate() {
        // Index 0 has an empty value: its corruption is in the tag, not the bytes.
        let bytes = if index == 0 {
            Vec::new()
        } else {
            value(key, 1)
        };
        client.put(key.as_bytes(), &bytes).await.unwrap();
    }
    // The third copy lands in the background: it must be there before the others are
    // corrupted, or the corruption could race it.
    await_all_copies(&client, &keys).await;
    for (index, key) in keys.iter().enumerate() {
        let owners = placement.owners(key.as_bytes());
        // Spread the two bad copies over every pair of banks.
        let spared = index % 3;
        for (bank, owner) in owners.iter().enumerate() {
            if bank == spared {
                continue;
            }
            let request = Request::Inject {
                key: key.as_bytes().to_vec(),
                fault: InjectedFault::Corrupt,
            };
            assert_eq!(
                client.call_server(*owner, request).await,
                Ok(Response::Done)
            );
        }
    }
    for key in &keys {
        for _attempt in 0..2 {
            match client.get(key.as_bytes()).await {
                Err(QuorumError::Unavailable(_)) | Err(QuorumError::Conflict(_)) => {}
                other => panic!("read of {key} with two corrupt copies: {other:?}"),
            }
        }
    }
    // The one good copy is still intact: nothing overwrote it with a guess.
    for (index, key) in keys.iter().enumerate() {
        let owner = placement.owners(key.as_bytes())[index % 3];
        let record = direct_record(&client, owner, key.as_bytes())
            .await
            .expect("the good copy");
        assert!(record.tag_is_valid(client.cluster_key()), "{key}");
    }
}

#[tokio::test]
async fn a_write_seen_by_one_bank_is_written_back_before_it_is_returned() {
    let mut cluster = TestCluster::start_default();
    let client = cluster.client().await;
    let placement = cluster.placement().clone();
    let keys: Vec<String> = (0..20)
        .map(|index| format!("indeterminate/{index}"))
        .collect();
    let mut first_versions = Vec::new();
    for key in &keys {
        first_versions.push(client.put(key.as_bytes(), &value(key, 1)).await.unwrap());
    }
    await_all_copies(&client, &keys).await;

    // Only bank 0 takes the second generation: the write fails and is indeterminate.
    cluster.kill_bank(1);
    cluster.kill_bank(2);
    for key in &keys {
        match client.put(key.as_bytes(), &value(key, 2)).await {
            Err(QuorumError::Unavailable(_)) => {}
            other => panic!("a write reaching one bank of three must fail: {other:?}"),
        }
    }
    cluster.restart_bank(1);
    cluster.restart_bank(2);
    reach(&client, &cluster.bank(1)).await;

    // Bank 2 down: the vote is between bank 0 (generation 2) and bank 1 (generation 1). The
    // newer version wins, and it must be on a majority before the read returns.
    cluster.kill_bank(2);
    for (key, first_version) in keys.iter().zip(&first_versions) {
        let read = client.get(key.as_bytes()).await.unwrap();
        assert_eq!(read, Some(value(key, 2)), "{key}");
        let bank1_owner = placement.owners(key.as_bytes())[1];
        let record = direct_record(&client, bank1_owner, key.as_bytes())
            .await
            .expect("bank 1 holds a copy");
        assert!(
            record.version > *first_version && record.value == value(key, 2),
            "{key}: the read returned generation 2 before writing it back to bank 1, which still holds {}",
            record.version
        );
    }
    assert!(client.stats().write_backs >= keys.len() as u64);

    // Bank 0 down, bank 2 back with generation 1: bank 1 carries generation 2 now.
    cluster.restart_bank(2);
    reach(&client, &cluster.bank(2)).await;
    cluster.kill_bank(0);
    for key in &keys {
        let read = client.get(key.as_bytes()).await.unwrap();
        assert_eq!(read, Some(value(key, 2)), "{key} went back in time");
    }
}
