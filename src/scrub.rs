//! Anti-entropy, the "refresh" (DESIGN §6): a pass over every key that brings every copy in step,
//! moving digests rather than data when replicas already agree.
//!
//! One pass:
//! 1. drains the heal backlog of copies that missed writes (the cheapest, most certain repairs);
//! 2. identifies every server, making blank ones join as recovering;
//! 3. deep-scrubs each server: it re-reads up to a budget of its entries from disk at a bounded
//!    rate, so that rot nobody reads becomes visible in its digests during this very pass;
//! 4. compares the banks' per-bucket digests (each key lives on one server of every bank, so a
//!    bank's digest is the XOR of its servers'), lists only the buckets that differ, and votes
//!    and rewrites only the keys whose copies differ, at a bounded rate;
//! 5. drops tombstones that every copy holds (writers only, see [`Scrubber::pass`]);
//! 6. declares recovering servers healthy when nothing could have escaped the pass.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde_bytes::ByteBuf;

use crate::digest::{combine, DIGEST_BUCKETS};
use crate::env::Env;
use crate::placement::ServerIndex;
pub use crate::proto::RepairsByCause;
use crate::proto::{
    BucketDigest, Identity, ListEntry, Request, Response, ServerState, VolumeReport,
};
use crate::quorum::{ClientStats, QuorumClient, QuorumError};
use crate::record::Version;
use crate::server::MAX_LIST_ENTRIES;

/// How a pass paces itself. The defaults keep a pass gentle on a server that also serves a mount.
#[derive(Clone, Debug)]
pub struct ScrubOptions {
    /// Bytes each server re-reads from disk per pass; a store larger than this is deep-scrubbed
    /// over several passes, resuming where the last one stopped.
    pub deep_scrub_bytes_per_pass: u64,
    /// Disk read rate of the deep scrub, per server.
    pub deep_scrub_bytes_per_second: u64,
    /// Keys voted and repaired at once.
    pub repair_concurrency: usize,
    /// Keys voted per second at most (0: no limit).
    pub repair_keys_per_second: u64,
    /// Drop tombstones that every copy holds. Only the volume's writer may: see [`Scrubber::pass`].
    pub drop_tombstones: bool,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        Self {
            deep_scrub_bytes_per_pass: 256 * 1024 * 1024,
            deep_scrub_bytes_per_second: 64 * 1024 * 1024,
            repair_concurrency: 16,
            repair_keys_per_second: 20_000,
            drop_tombstones: true,
        }
    }
}

fn repairs_between(before: &ClientStats, after: &ClientStats) -> RepairsByCause {
    RepairsByCause {
        lagging: after.repairs_lagging.saturating_sub(before.repairs_lagging),
        missing: after.repairs_missing.saturating_sub(before.repairs_missing),
        corrupt: after.repairs_corrupt.saturating_sub(before.repairs_corrupt),
        recovering: after
            .repairs_recovering
            .saturating_sub(before.repairs_recovering),
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Keys whose copies were voted on (only keys whose copies differed).
    pub keys_examined: u64,
    /// Keys whose copies could not all be brought in step (an owner down, or no quorum).
    pub keys_unsettled: u64,
    /// Servers that were recovering and are healthy now.
    pub servers_healed: Vec<ServerIndex>,
    /// Servers that could not be reached (or answered nonsense).
    pub servers_unreachable: Vec<ServerIndex>,
    /// Buckets whose digests differed between banks, and how many were compared.
    pub buckets_differing: u64,
    pub buckets_compared: u64,
    /// Entries the differing buckets listed, over all servers.
    pub entries_listed: u64,
    /// Copies this pass repaired (the heal backlog included), by cause.
    pub repairs: RepairsByCause,
    /// Copies repaired from the heal backlog before the pass proper.
    pub backlog_repaired: u64,
    pub deep_scrubbed_entries: u64,
    pub deep_scrubbed_bytes: u64,
    pub deep_scrub_damage_found: u64,
    pub tombstones_dropped: u64,
    /// Simulated or real time the pass took.
    pub duration_ms: u64,
}

impl ScrubReport {
    /// Every server answered and every key it examined settled: a pass that repaired anything
    /// it could find.
    pub fn is_complete(&self) -> bool {
        self.servers_unreachable.is_empty() && self.keys_unsettled == 0
    }
}

/// Where a pass is, for progress displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScrubProgress {
    DrainingBacklog {
        remaining: u64,
    },
    DeepScrubbing {
        server: ServerIndex,
        bytes_checked: u64,
        budget_bytes: u64,
    },
    ComparingDigests,
    Listing {
        buckets_differing: u64,
    },
    Repairing {
        keys_done: u64,
        keys_total: u64,
    },
    DroppingTombstones,
}

/// What a mount's refresh last did, shared with its metrics endpoint.
#[derive(Clone, Debug, Default)]
pub struct RefreshStatus {
    pub volume: Option<VolumeReport>,
    pub last_pass: Option<ScrubReport>,
}

/// Runs passes, remembering between them where the deep scrub of each server stopped and what
/// the passes achieved (for [`VolumeReport`]s).
pub struct Scrubber<E: Env> {
    client: QuorumClient<E>,
    options: ScrubOptions,
    deep_scrub_cursors: BTreeMap<ServerIndex, Option<ByteBuf>>,
    passes: u64,
    complete_passes: u64,
    last_complete_pass_unix_ms: Option<u64>,
    last_pass_duration_ms: u64,
    status: Arc<StdMutex<RefreshStatus>>,
}

/// Run one complete pass with `client` and the default options.
pub async fn scrub_pass<E: Env>(client: &QuorumClient<E>) -> Result<ScrubReport, QuorumError> {
    Scrubber::new(client.clone(), ScrubOptions::default())
        .pass(&mut |_| {})
        .await
}

/// The background refresh of a mount: a pass every `interval`, and a [`VolumeReport`] to the
/// servers every `report_interval` and after each pass. Returns only when a newer mount fenced
/// this one.
pub async fn refresh_loop<E: Env>(
    mut scrubber: Scrubber<E>,
    interval: Duration,
    report_interval: Duration,
) -> QuorumError {
    let env = scrubber.client().env().clone();
    let report_interval = report_interval.max(Duration::from_millis(100));
    let mut next_pass_at = env.now() + interval;
    // One iteration per report interval or pass: runs for the life of the mount.
    loop {
        let now = env.now();
        if now >= next_pass_at {
            match scrubber.pass(&mut |_| {}).await {
                Ok(report) => tracing::info!(
                    examined = report.keys_examined,
                    unsettled = report.keys_unsettled,
                    buckets_differing = report.buckets_differing,
                    repaired = report.repairs.total(),
                    healed = report.servers_healed.len(),
                    tombstones_dropped = report.tombstones_dropped,
                    duration_ms = report.duration_ms,
                    "refresh pass complete"
                ),
                Err(QuorumError::Fenced { promised_epoch }) => {
                    return QuorumError::Fenced { promised_epoch }
                }
                Err(error) => tracing::warn!("refresh pass failed: {error}"),
            }
            next_pass_at = env.now() + interval;
        }
        scrubber.send_volume_report("mount").await;
        let until_pass = next_pass_at.saturating_sub(env.now());
        env.sleep(until_pass.min(report_interval)).await;
    }
}

/// Copies each bank holds of one key, from the bucket listings.
type CopiesByServer = BTreeMap<ServerIndex, ListEntry>;

impl<E: Env> Scrubber<E> {
    pub fn new(client: QuorumClient<E>, options: ScrubOptions) -> Self {
        assert!(options.repair_concurrency > 0);
        Self {
            client,
            options,
            deep_scrub_cursors: BTreeMap::new(),
            passes: 0,
            complete_passes: 0,
            last_complete_pass_unix_ms: None,
            last_pass_duration_ms: 0,
            status: Arc::new(StdMutex::new(RefreshStatus::default())),
        }
    }

    /// The latest pass report and volume report, updated as passes end and reports are sent.
    pub fn status(&self) -> Arc<StdMutex<RefreshStatus>> {
        self.status.clone()
    }

    /// What this scrubber and its client know about the volume's healing.
    pub fn volume_report(&self, reporter: &str) -> VolumeReport {
        let stats = self.client.stats();
        VolumeReport {
            reported_at_unix_ms: self.client.env().wall_clock_ns() / 1_000_000,
            reporter: reporter.to_string(),
            heal_backlog: stats.backlog,
            last_complete_pass_unix_ms: self.last_complete_pass_unix_ms,
            last_pass_duration_ms: self.last_pass_duration_ms,
            passes: self.passes,
            complete_passes: self.complete_passes,
            repairs: repairs_between(&ClientStats::default(), &stats),
        }
    }

    /// Tell every server the latest [`VolumeReport`] (best effort: an unreachable server misses
    /// this one and gets the next).
    pub async fn send_volume_report(&self, reporter: &str) {
        let report = self.volume_report(reporter);
        self.status
            .lock()
            .expect("refresh status lock poisoned")
            .volume = Some(report.clone());
        let volume = self.client.volume();
        for server in 0..self.client.placement().server_count() {
            let request = Request::ReportVolume {
                volume,
                report: report.clone(),
            };
            let _ = self.client.call_server(server, request).await;
        }
    }

    pub fn client(&self) -> &QuorumClient<E> {
        &self.client
    }

    /// Run one pass, telling `progress` where it is. Repairs are writes of records that already
    /// exist (never new versions); dropping tombstones is left to the volume's writer (a client
    /// that took an epoch), because only the writer knows no read of its own is about to repair
    /// an older version into a copy that no longer has the tombstone.
    pub async fn pass(
        &mut self,
        progress: &mut (dyn FnMut(ScrubProgress) + Send),
    ) -> Result<ScrubReport, QuorumError> {
        let env = self.client.env().clone();
        let started_at = env.now();
        let stats_before = self.client.stats();
        let mut report = ScrubReport {
            backlog_repaired: self.drain_backlog(progress).await,
            ..ScrubReport::default()
        };
        let placement = self.client.placement().clone();
        let volume = self.client.volume();

        // Recovering servers and the generation in which they became so, before anything is
        // listed: a server that loses data again during the pass must not be declared healthy.
        let mut recovering: BTreeMap<ServerIndex, u64> = BTreeMap::new();
        let mut lowest_promised_epoch = u64::MAX;
        for server in 0..placement.server_count() {
            let mut identity = self.client.call_server(server, Request::Identify).await;
            if let Ok(Response::Identity(Identity {
                state: ServerState::Blank,
                ..
            })) = identity
            {
                // A server that came back empty: make it a recovering member so it can be filled.
                let join = Request::Join {
                    volume,
                    member: placement.member(server),
                    epoch: self.client.epoch(),
                };
                let _ = self.client.call_server(server, join).await;
                identity = self.client.call_server(server, Request::Identify).await;
            }
            match identity {
                Ok(Response::Identity(Identity {
                    state:
                        ServerState::Member {
                            recovering: is_recovering,
                            ..
                        },
                    recovery_generation,
                    promised_epoch,
                    ..
                })) => {
                    lowest_promised_epoch = lowest_promised_epoch.min(promised_epoch);
                    if is_recovering {
                        recovering.insert(server, recovery_generation);
                    }
                }
                _ => report.servers_unreachable.push(server),
            }
        }

        self.deep_scrub(&report.servers_unreachable.clone(), &mut report, progress)
            .await;

        progress(ScrubProgress::ComparingDigests);
        let digests = self.fetch_digests(&mut report).await;
        let bank_digests = bank_digests(&placement, &digests);
        let differing = differing_buckets(&bank_digests);
        report.buckets_compared = u64::from(DIGEST_BUCKETS);
        report.buckets_differing = differing.len() as u64;

        progress(ScrubProgress::Listing {
            buckets_differing: differing.len() as u64,
        });
        let copies = self.list_buckets(&differing, &mut report).await;
        let differing_keys: Vec<Vec<u8>> = copies
            .iter()
            .filter(|(key, by_server)| !copies_agree(&placement, key, by_server))
            .map(|(key, _)| key.clone())
            .collect();
        let stuck_servers = self
            .repair_keys(differing_keys, &mut report, progress)
            .await?;

        if self.options.drop_tombstones && self.client.is_writer() {
            progress(ScrubProgress::DroppingTombstones);
            self.drop_tombstones(&digests, &bank_digests, lowest_promised_epoch, &mut report)
                .await;
        }

        if report.servers_unreachable.is_empty() {
            // A key a recovering server acknowledged and lost is found only through another
            // owner that kept it. With W a majority of banks, some owner in another bank
            // acknowledged it too; if every server outside this one's bank is healthy, that owner
            // listed it. If not, the key may be gone from every server that can list it: the
            // server must stay recovering (and reads answer EIO rather than a confident "not
            // found").
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
                if let Ok(Response::Done) = self.client.call_server(server, request).await {
                    report.servers_healed.push(server);
                }
            }
        }
        report.repairs = repairs_between(&stats_before, &self.client.stats());
        report.duration_ms = env.now().saturating_sub(started_at).as_millis() as u64;
        self.passes += 1;
        self.last_pass_duration_ms = report.duration_ms;
        if report.is_complete() {
            self.complete_passes += 1;
            self.last_complete_pass_unix_ms = Some(env.wall_clock_ns() / 1_000_000);
        }
        self.status
            .lock()
            .expect("refresh status lock poisoned")
            .last_pass = Some(report.clone());
        Ok(report)
    }

    /// Repair what the backlog knows is missing, until it is empty or stops shrinking.
    async fn drain_backlog(&self, progress: &mut (dyn FnMut(ScrubProgress) + Send)) -> u64 {
        let mut repaired = 0u64;
        let mut remaining = self.client.stats().backlog;
        // Each round either shrinks the backlog or ends the loop.
        while remaining > 0 {
            progress(ScrubProgress::DrainingBacklog { remaining });
            repaired += self.client.heal_backlog(1024).await as u64;
            let now_remaining = self.client.stats().backlog;
            if now_remaining >= remaining {
                break;
            }
            remaining = now_remaining;
        }
        repaired
    }

    async fn deep_scrub(
        &mut self,
        unreachable: &[ServerIndex],
        report: &mut ScrubReport,
        progress: &mut (dyn FnMut(ScrubProgress) + Send),
    ) {
        const STEP_BYTES: u64 = 4 * 1024 * 1024;
        let budget_bytes = self.options.deep_scrub_bytes_per_pass;
        if budget_bytes == 0 {
            return;
        }
        let env = self.client.env().clone();
        let volume = self.client.volume();
        let rate = self.options.deep_scrub_bytes_per_second.max(1);
        for server in 0..self.client.placement().server_count() {
            if unreachable.contains(&server) {
                continue;
            }
            let mut checked_bytes = 0u64;
            // Each step reads at least one entry or ends the store: bounded by the budget and
            // the store's size.
            while checked_bytes < budget_bytes {
                let cursor = self.deep_scrub_cursors.get(&server).cloned().flatten();
                let step_bytes = STEP_BYTES.min(budget_bytes - checked_bytes);
                let request = Request::DeepScrub {
                    volume,
                    start_after: cursor.map(ByteBuf::into_vec),
                    max_bytes: step_bytes,
                };
                let Ok(Response::DeepScrubbed(step)) =
                    self.client.call_server(server, request).await
                else {
                    break;
                };
                checked_bytes += step.bytes_checked.max(1);
                report.deep_scrubbed_entries += step.entries_checked;
                report.deep_scrubbed_bytes += step.bytes_checked;
                report.deep_scrub_damage_found += step.damaged_found;
                progress(ScrubProgress::DeepScrubbing {
                    server,
                    bytes_checked: checked_bytes,
                    budget_bytes,
                });
                let finished = step.resume_after.is_none();
                self.deep_scrub_cursors.insert(server, step.resume_after);
                // Pace the disk reads: the server read `bytes_checked` just now.
                let pause_ms = step.bytes_checked.saturating_mul(1000) / rate;
                if pause_ms > 0 {
                    env.sleep(Duration::from_millis(pause_ms)).await;
                }
                if finished {
                    break;
                }
            }
        }
    }

    async fn fetch_digests(
        &self,
        report: &mut ScrubReport,
    ) -> BTreeMap<ServerIndex, Vec<BucketDigest>> {
        let mut digests = BTreeMap::new();
        let volume = self.client.volume();
        for server in 0..self.client.placement().server_count() {
            if report.servers_unreachable.contains(&server) {
                continue;
            }
            match self
                .client
                .call_server(server, Request::Digests { volume })
                .await
            {
                Ok(Response::Digests(buckets)) if buckets.len() == DIGEST_BUCKETS as usize => {
                    digests.insert(server, buckets);
                }
                _ => report.servers_unreachable.push(server),
            }
        }
        digests
    }

    /// Every entry of the `buckets` on every reachable server, by key.
    async fn list_buckets(
        &self,
        buckets: &[u32],
        report: &mut ScrubReport,
    ) -> BTreeMap<Vec<u8>, CopiesByServer> {
        let mut copies: BTreeMap<Vec<u8>, CopiesByServer> = BTreeMap::new();
        if buckets.is_empty() {
            return copies;
        }
        let volume = self.client.volume();
        for server in 0..self.client.placement().server_count() {
            if report.servers_unreachable.contains(&server) {
                continue;
            }
            let mut start_after: Option<Vec<u8>> = None;
            // Bounded by the server's key count: every page advances `start_after`.
            loop {
                let request = Request::BucketEntries {
                    volume,
                    buckets: buckets.to_vec(),
                    start_after: start_after.clone(),
                    limit: MAX_LIST_ENTRIES,
                };
                match self.client.call_server(server, request).await {
                    Ok(Response::Listing { entries, complete }) => {
                        report.entries_listed += entries.len() as u64;
                        let advanced = entries.last().map(|last| last.key.clone());
                        for entry in entries {
                            copies
                                .entry(entry.key.clone())
                                .or_default()
                                .insert(server, entry);
                        }
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
        copies
    }

    /// Vote and repair each key, a bounded number at once and at a bounded rate. Returns the
    /// servers that could not be brought in step.
    async fn repair_keys(
        &self,
        keys: Vec<Vec<u8>>,
        report: &mut ScrubReport,
        progress: &mut (dyn FnMut(ScrubProgress) + Send),
    ) -> Result<BTreeSet<ServerIndex>, QuorumError> {
        let env = self.client.env().clone();
        let placement = self.client.placement().clone();
        let down: Arc<Vec<ServerIndex>> = Arc::new(report.servers_unreachable.clone());
        let keys_total = keys.len() as u64;
        let mut stuck_servers = BTreeSet::new();
        let mut keys_done = 0u64;
        let batch_size = self.options.repair_concurrency;
        for batch in keys.chunks(batch_size) {
            let batch_started_at = env.now();
            progress(ScrubProgress::Repairing {
                keys_done,
                keys_total,
            });
            let client = self.client.clone();
            let results = crate::env::fan_out(&env, batch.to_vec(), batch_size, |key| {
                let client = client.clone();
                let down = down.clone();
                async move {
                    let result = client.repair_key_skipping(&key, &down).await;
                    (key, result)
                }
            })
            .await;
            for (key, result) in results {
                report.keys_examined += 1;
                keys_done += 1;
                match result {
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
                        stuck_servers.extend(placement.owners(&key));
                    }
                }
            }
            if let Some(minimum_ms) =
                (batch.len() as u64 * 1000).checked_div(self.options.repair_keys_per_second)
            {
                let elapsed = env.now().saturating_sub(batch_started_at);
                let minimum = Duration::from_millis(minimum_ms);
                if elapsed < minimum {
                    env.sleep(minimum - elapsed).await;
                }
            }
        }
        progress(ScrubProgress::Repairing {
            keys_done,
            keys_total,
        });
        Ok(stuck_servers)
    }

    /// Drop tombstones that every owner holds, from epochs every server has moved past.
    async fn drop_tombstones(
        &self,
        digests: &BTreeMap<ServerIndex, Vec<BucketDigest>>,
        bank_digests: &[Option<Vec<[u8; 16]>>],
        lowest_promised_epoch: u64,
        report: &mut ScrubReport,
    ) {
        let placement = self.client.placement();
        if !report.servers_unreachable.is_empty()
            || digests.len() != placement.server_count()
            || bank_digests.iter().any(Option::is_none)
        {
            // Every copy must be seen to hold the tombstone.
            return;
        }
        let buckets: Vec<u32> = (0..DIGEST_BUCKETS)
            .filter(|bucket| {
                let index = *bucket as usize;
                let agree = bank_digests
                    .iter()
                    .flatten()
                    .all(|bank| bank[index] == bank_digests[0].as_ref().expect("checked")[index]);
                let old_tombstone = digests
                    .values()
                    .any(|buckets| buckets[index].oldest_tombstone_epoch < lowest_promised_epoch);
                agree && old_tombstone
            })
            .collect();
        if buckets.is_empty() {
            return;
        }
        let copies = self.list_buckets(&buckets, report).await;
        let mut by_server: BTreeMap<ServerIndex, Vec<(ByteBuf, Version)>> = BTreeMap::new();
        for (key, holders) in &copies {
            let owners = placement.owners(key);
            let Some(first) = holders.get(&owners[0]) else {
                continue;
            };
            let droppable = first.tombstone
                && first.version.epoch < lowest_promised_epoch
                && owners.iter().all(|owner| holders.get(owner) == Some(first))
                && holders.len() == owners.len();
            if droppable {
                for owner in owners {
                    by_server
                        .entry(owner)
                        .or_default()
                        .push((ByteBuf::from(key.clone()), first.version));
                }
            }
        }
        let volume = self.client.volume();
        for (server, tombstones) in by_server {
            for page in tombstones.chunks(MAX_LIST_ENTRIES as usize) {
                let request = Request::DropTombstones {
                    volume,
                    tombstones: page.to_vec(),
                };
                if let Ok(Response::Dropped { tombstones }) =
                    self.client.call_server(server, request).await
                {
                    report.tombstones_dropped += tombstones;
                }
            }
        }
    }
}

/// Per bank, the XOR of its servers' digests; `None` for a bank with a server that did not answer.
pub fn bank_digests(
    placement: &crate::placement::Placement,
    digests: &BTreeMap<ServerIndex, Vec<BucketDigest>>,
) -> Vec<Option<Vec<[u8; 16]>>> {
    let mut banks: Vec<Option<Vec<[u8; 16]>>> =
        vec![Some(vec![[0u8; 16]; DIGEST_BUCKETS as usize]); placement.bank_count()];
    for server in 0..placement.server_count() {
        let bank = placement.member(server).bank as usize;
        match (digests.get(&server), &mut banks[bank]) {
            (Some(buckets), Some(sum)) => {
                for (total, bucket) in sum.iter_mut().zip(buckets) {
                    combine(total, &bucket.digest);
                }
            }
            (None, slot) => *slot = None,
            (Some(_), None) => {}
        }
    }
    banks
}

/// Buckets on which the banks that answered completely do not all agree. With fewer than two
/// such banks there is nothing to compare against: every bucket is listed.
pub fn differing_buckets(bank_digests: &[Option<Vec<[u8; 16]>>]) -> Vec<u32> {
    let complete: Vec<&Vec<[u8; 16]>> = bank_digests.iter().flatten().collect();
    if complete.len() < 2 {
        return (0..DIGEST_BUCKETS).collect();
    }
    (0..DIGEST_BUCKETS)
        .filter(|bucket| {
            let index = *bucket as usize;
            complete
                .iter()
                .any(|bank| bank[index] != complete[0][index])
        })
        .collect()
}

/// Every owner listed the same healthy copy of `key`: nothing to repair.
fn copies_agree(
    placement: &crate::placement::Placement,
    key: &[u8],
    by_server: &CopiesByServer,
) -> bool {
    let owners = placement.owners(key);
    let Some(first) = by_server.get(&owners[0]) else {
        return false;
    };
    first.version != Version::default()
        && by_server.len() == owners.len()
        && owners
            .iter()
            .all(|owner| by_server.get(owner) == Some(first))
}
