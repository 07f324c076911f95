//! Anti-entropy (DESIGN §6): a full pass over every key that votes and repairs every copy, and
//! declares recovering servers healthy once a complete pass has refilled them.
//!
//! This pass lists every key of every server. Comparing per-bucket digests first, so that a pass
//! over identical replicas moves digests rather than keys, is the next step (issue 5).

use std::collections::{BTreeMap, BTreeSet};

use crate::env::Env;
use crate::placement::ServerIndex;
use crate::proto::{Identity, Request, Response, ServerState};
use crate::quorum::{QuorumClient, QuorumError};
use crate::server::MAX_LIST_ENTRIES;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub keys_examined: u64,
    /// Keys whose copies could not all be brought in step (an owner down, or no quorum).
    pub keys_unsettled: u64,
    /// Servers that were recovering and are healthy now.
    pub servers_healed: Vec<ServerIndex>,
    /// Servers that could not be listed.
    pub servers_unreachable: Vec<ServerIndex>,
}

/// Run one complete pass with `client` (a writer: repairs are writes under its epoch).
pub async fn scrub_pass<E: Env>(client: &QuorumClient<E>) -> Result<ScrubReport, QuorumError> {
    let placement = client.placement().clone();
    let volume = client.volume();
    let mut report = ScrubReport::default();
    // Recovering servers and the generation in which they became so, before anything is listed.
    let mut recovering: BTreeMap<ServerIndex, u64> = BTreeMap::new();
    for server in 0..placement.server_count() {
        match client.call_server(server, Request::Identify).await {
            Ok(Response::Identity(Identity {
                state:
                    ServerState::Member {
                        recovering: true, ..
                    },
                recovery_generation,
                ..
            })) => {
                recovering.insert(server, recovery_generation);
            }
            Ok(Response::Identity(_)) => {}
            _ => report.servers_unreachable.push(server),
        }
    }
    let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
    for server in 0..placement.server_count() {
        if report.servers_unreachable.contains(&server) {
            continue;
        }
        let mut start_after: Option<Vec<u8>> = None;
        // Bounded by the server's key count: every page advances `start_after`.
        loop {
            let request = Request::Keys {
                volume,
                start_after: start_after.clone(),
                limit: MAX_LIST_ENTRIES,
            };
            match client.call_server(server, request).await {
                Ok(Response::Listing { entries, complete }) => {
                    let advanced = entries.last().map(|last| last.key.clone());
                    keys.extend(entries.into_iter().map(|entry| entry.key));
                    match advanced {
                        Some(last) if !complete => start_after = Some(last),
                        _ => break,
                    }
                }
                _ => {
                    report.servers_unreachable.push(server);
                    break;
                }
            }
        }
    }
    let mut stuck_servers: BTreeSet<ServerIndex> = BTreeSet::new();
    for key in &keys {
        report.keys_examined += 1;
        match client.repair_key(key).await {
            Ok((_, stuck)) => {
                if !stuck.is_empty() {
                    report.keys_unsettled += 1;
                }
                stuck_servers.extend(stuck);
            }
            Err(QuorumError::Fenced { promised_epoch }) => {
                return Err(QuorumError::Fenced { promised_epoch })
            }
            Err(_) => {
                report.keys_unsettled += 1;
                stuck_servers.extend(placement.owners(key));
            }
        }
    }
    if report.servers_unreachable.is_empty() {
        // A key a recovering server acknowledged and lost is found only through another owner
        // that kept it. With W a majority of banks, some owner in another bank acknowledged it
        // too; if every server outside this one's bank is healthy, that owner listed it. If not,
        // the key may be gone from every server that can list it: the server must stay
        // recovering (and reads answer EIO rather than a confident "not found").
        let recovering_banks: BTreeSet<u32> = recovering
            .keys()
            .map(|server| placement.member(*server).bank)
            .collect();
        for (server, generation) in recovering {
            let bank = placement.member(server).bank;
            if stuck_servers.contains(&server)
                || recovering_banks.iter().any(|other| *other != bank)
            {
                continue;
            }
            let request = Request::MarkHealthy {
                volume,
                recovery_generation: generation,
            };
            if let Ok(Response::Done) = client.call_server(server, request).await {
                report.servers_healed.push(server);
            }
        }
    }
    Ok(report)
}
