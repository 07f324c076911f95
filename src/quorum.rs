//! The replicated record client (DESIGN §5): writes to every bank and succeeds on a majority,
//! reads by vote with end-to-end tag checks, ABD write-back, read-repair, fencing epochs, volume
//! identity and the heal backlog.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::env::{random_u128, timeout, Env, TimedOut};
use crate::placement::{Placement, ServerIndex};
use crate::planted::PlantedBug;
use crate::proto::{Identity, ListEntry, Request, RequestId, Response, ServerState, VolumeId};
use crate::record::{
    display_key, partition_of, validate_key, ClusterKey, Record, Version, MAX_VALUE_BYTES,
    PARTITION_SEPARATOR,
};
use crate::rpc::{RpcError, RpcOptions, ServerLink};
use crate::server::MAX_LIST_ENTRIES;
use crate::server_choice::{RequestOutcome, ServerChoice, ServerChoiceOptions, ServerLoad};

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub rpc: RpcOptions,
    /// Attempts per server for one write (the same request id each time).
    pub write_attempts: u32,
    pub retry_delay: Duration,
    /// How often the background healer drains the backlog of copies that missed writes.
    pub heal_interval: Duration,
    /// Entries kept in the heal backlog; beyond it only a scrub pass can find the gaps.
    pub backlog_capacity: usize,
    /// The volume this client expects. With it, a cluster whose servers are all blank (every copy
    /// lost) is an error instead of a fresh, empty volume, and a server of another volume is
    /// refused.
    pub expected_volume: Option<VolumeId>,
    /// Only the simulator's self-test sets this (see [`crate::planted`]).
    pub planted_bug: Option<PlantedBug>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            rpc: RpcOptions::default(),
            write_attempts: 3,
            retry_delay: Duration::from_millis(50),
            heal_interval: Duration::from_secs(1),
            backlog_capacity: 1_000_000,
            expected_volume: None,
            planted_bug: None,
        }
    }
}

/// How a client opens a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Take a fencing epoch: this client becomes the volume's only writer. Formats a new volume
    /// when every server is reachable and blank.
    Writer,
    /// As `Writer`, but format even if some servers cannot be reached (the operator knows they
    /// hold nothing).
    WriterForceFormat,
    /// Read without fencing anyone: no writes, no write-back, no repair.
    ReadOnly,
    /// Repair without fencing the writer (`votefs scrub` next to a running mount): writes only
    /// copies of records that already exist, under the epoch the writer holds, never new
    /// versions. A newer writer fences it like any older one.
    Repairer,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// Not enough banks answered validly: the answer cannot be known (EIO).
    #[error("not enough copies available: {0}")]
    Unavailable(String),
    /// Copies disagree in a way no majority settles (EIO).
    #[error("conflicting copies: {0}")]
    Conflict(String),
    #[error("fenced by a newer mount (epoch {promised_epoch}): this client may no longer write")]
    Fenced { promised_epoch: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("this client was opened read-only")]
    ReadOnly,
    #[error("{0}")]
    Volume(String),
    #[error("{0}")]
    Rejected(String),
}

/// Why a copy was repaired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RepairCause {
    /// Held an older version.
    Lagging,
    /// Said it had no copy while a newer one existed.
    Missing,
    /// Its copy failed the checksum or the tag.
    Corrupt,
    /// Recovering or blank: could not vote.
    Recovering,
}

/// Counters of what the client did to keep copies in step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub repairs_lagging: u64,
    pub repairs_missing: u64,
    pub repairs_corrupt: u64,
    pub repairs_recovering: u64,
    pub write_backs: u64,
    pub unavailable_reads: u64,
    pub backlog: u64,
    pub backlog_dropped: u64,
    pub healed_from_backlog: u64,
    /// Get requests sent to each server (indexed by server): by reads (first asked, escalations,
    /// probes, background verifications) and by key repairs alike.
    pub read_requests_per_server: Vec<u64>,
    /// Reads that asked an owner beyond the best two: the two disagreed, one could not vote
    /// (failed, corrupt, recovering, overloaded) or one was slow.
    pub reads_needing_third_bank: u64,
    /// Of those, reads that asked beyond the best two first because one of them was slow.
    pub hedged_reads: u64,
    /// Reads that also asked an owner not asked for a while, to refresh its latency estimate.
    pub probe_reads: u64,
    /// `Overloaded` answers received.
    pub overloaded_answers: u64,
    /// Owners a read did not need but asked after deciding, in the background, because they had
    /// spare capacity: their answers feed read-repair, as when every read asked every owner.
    pub verification_reads: u64,
}

#[derive(Default)]
struct Counters {
    repairs_lagging: AtomicU64,
    repairs_missing: AtomicU64,
    repairs_corrupt: AtomicU64,
    repairs_recovering: AtomicU64,
    write_backs: AtomicU64,
    unavailable_reads: AtomicU64,
    backlog_dropped: AtomicU64,
    healed_from_backlog: AtomicU64,
    reads_needing_third_bank: AtomicU64,
    hedged_reads: AtomicU64,
    probe_reads: AtomicU64,
    verification_reads: AtomicU64,
}

/// A page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub keys: Vec<Vec<u8>>,
    /// Where the next page starts (pass it as `start_after`); `None` when the listing is done.
    pub resume_after: Option<Vec<u8>>,
}

/// One server's answer to a read, judged.
#[derive(Clone, Debug)]
enum Answer {
    /// A copy with a good tag, or authoritative absence.
    Valid(Option<Record>),
    Corrupt,
    Recovering,
    /// A good copy from a recovering server: it counts for the highest version seen, never
    /// towards the quorum of answers.
    Unvouched(Record),
    Blank,
    Failed(String),
}

impl Answer {
    fn describe(&self) -> String {
        match self {
            Answer::Valid(Some(record)) => format!("version {}", record.version),
            Answer::Valid(None) => "not found".into(),
            Answer::Corrupt => "corrupt copy".into(),
            Answer::Recovering => "recovering".into(),
            Answer::Unvouched(record) => format!("recovering, holds version {}", record.version),
            Answer::Blank => "blank".into(),
            Answer::Failed(why) => why.clone(),
        }
    }
}

/// How one server took a write.
#[derive(Clone, Debug)]
enum WriteOutcome {
    Acknowledged,
    Fenced(u64),
    Conflict,
    Failed(String),
}

struct Inner<E: Env> {
    env: E,
    cluster_key: ClusterKey,
    placement: Placement,
    links: Vec<ServerLink<E>>,
    options: ClientOptions,
    volume: VolumeId,
    /// Zero for a read-only client.
    epoch: u64,
    /// False for a repairer: it may write copies of existing records, never new versions.
    creates_versions: bool,
    writer: u64,
    client_id: u64,
    next_sequence: AtomicU64,
    next_request: AtomicU64,
    fenced_at: AtomicU64,
    fenced: AtomicBool,
    backlog: StdMutex<BTreeSet<(ServerIndex, Vec<u8>)>>,
    counters: Counters,
    /// Latency and load per server: which owners a read asks first.
    server_choice: ServerChoice,
}

/// A handle to a volume. Cheap to clone; all clones share connections and state.
pub struct QuorumClient<E: Env> {
    inner: Arc<Inner<E>>,
}

impl<E: Env> Clone for QuorumClient<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn describe_failures(failures: &[(ServerIndex, String)], placement: &Placement) -> String {
    failures
        .iter()
        .map(|(server, why)| {
            format!(
                "{} ({}): {why}",
                placement.address(*server),
                placement.member(*server)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Ask `servers` concurrently; gather every answer (each bounded by the request timeout).
async fn fan_out<E: Env>(
    inner: &Arc<Inner<E>>,
    servers: &[ServerIndex],
    request_for: impl Fn(ServerIndex) -> Request,
) -> Vec<(ServerIndex, Result<Response, RpcError>)> {
    let (sender, mut receiver) = mpsc::channel(servers.len().max(1));
    for server in servers {
        let inner = inner.clone();
        let sender = sender.clone();
        let request = request_for(*server);
        let server = *server;
        inner.env.clone().spawn(async move {
            let request_id = inner.next_request_id();
            let result = inner.links[server].call(request_id, request).await;
            let _ = sender.send((server, result)).await;
        });
    }
    drop(sender);
    let mut answers = Vec::with_capacity(servers.len());
    while let Some(answer) = receiver.recv().await {
        answers.push(answer);
    }
    answers.sort_by_key(|(server, _)| *server);
    answers
}

impl<E: Env> Inner<E> {
    fn next_request_id(&self) -> RequestId {
        (u128::from(self.client_id) << 64)
            | u128::from(self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    fn add_to_backlog(&self, server: ServerIndex, key: &[u8]) {
        let mut backlog = self.backlog.lock().expect("backlog lock poisoned");
        if backlog.len() >= self.options.backlog_capacity {
            self.counters
                .backlog_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        backlog.insert((server, key.to_vec()));
    }

    fn check_writable(&self) -> Result<(), QuorumError> {
        if self.epoch == 0 {
            return Err(QuorumError::ReadOnly);
        }
        if self.fenced.load(Ordering::Acquire) {
            return Err(QuorumError::Fenced {
                promised_epoch: self.fenced_at.load(Ordering::Acquire),
            });
        }
        Ok(())
    }

    fn mark_fenced(&self, promised_epoch: u64) {
        self.fenced_at.fetch_max(promised_epoch, Ordering::AcqRel);
        if !self.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(
                promised_epoch,
                our_epoch = self.epoch,
                "a newer mount took over this volume: refusing all further writes"
            );
        }
    }

    /// Write `record` to one server, retrying with the same request id so that the server can
    /// recognise a duplicate.
    async fn put_to(
        &self,
        server: ServerIndex,
        request_id: RequestId,
        record: Record,
        repair: bool,
    ) -> WriteOutcome {
        let mut last_failure = String::new();
        for attempt in 0..self.options.write_attempts.max(1) {
            if attempt > 0 {
                self.env.sleep(self.options.retry_delay * attempt).await;
            }
            let request = Request::Put {
                volume: self.volume,
                writer_epoch: self.epoch,
                record: record.clone(),
                repair,
            };
            match self.links[server].call(request_id, request).await {
                Ok(Response::Stored) | Ok(Response::HaveNewer { .. }) => {
                    return WriteOutcome::Acknowledged
                }
                Ok(Response::Fenced { promised_epoch }) => {
                    return WriteOutcome::Fenced(promised_epoch)
                }
                Ok(Response::Conflict) => return WriteOutcome::Conflict,
                Ok(Response::Blank) => {
                    // A server that came back empty: make it a recovering member, then retry.
                    let join = Request::Join {
                        volume: self.volume,
                        member: self.placement.member(server),
                        epoch: self.epoch,
                    };
                    let _ = self.links[server].call(self.next_request_id(), join).await;
                    last_failure = "blank server".into();
                }
                Ok(Response::Refused(message)) => return WriteOutcome::Failed(message),
                Ok(Response::Failed(message)) => return WriteOutcome::Failed(message),
                Ok(other) => return WriteOutcome::Failed(format!("unexpected answer {other:?}")),
                Err(RpcError::Rejected) => {
                    return WriteOutcome::Failed(RpcError::Rejected.to_string())
                }
                Err(error) => last_failure = error.to_string(),
            }
        }
        WriteOutcome::Failed(last_failure)
    }

    async fn get_from(&self, server: ServerIndex, key: &[u8]) -> Answer {
        let request = Request::Get {
            volume: self.volume,
            key: key.to_vec(),
        };
        // One retry for a failed connection: a restarted server is reached by reconnecting.
        let mut answer = Answer::Failed(String::new());
        for _attempt in 0..2 {
            let in_flight = self.server_choice.begin(server, self.env.now());
            let result = self.links[server]
                .call(self.next_request_id(), request.clone())
                .await;
            let outcome = match &result {
                Ok(Response::Overloaded) => RequestOutcome::Overloaded,
                Ok(_) => RequestOutcome::Answered,
                Err(_) => RequestOutcome::Failed,
            };
            in_flight.finish(self.env.now(), outcome);
            answer = match result {
                Ok(Response::Found(record)) => {
                    if record.key == key && record.tag_is_valid(&self.cluster_key) {
                        Answer::Valid(Some(record))
                    } else {
                        Answer::Corrupt
                    }
                }
                Ok(Response::NotFound) => Answer::Valid(None),
                Ok(Response::Corrupt) => Answer::Corrupt,
                Ok(Response::Recovering) => Answer::Recovering,
                Ok(Response::Unvouched(record)) => {
                    if record.key == key && record.tag_is_valid(&self.cluster_key) {
                        Answer::Unvouched(record)
                    } else {
                        Answer::Corrupt
                    }
                }
                Ok(Response::Blank) => Answer::Blank,
                // Not retried here: the read asks another bank instead (the server is now avoided
                // for a while).
                Ok(Response::Overloaded) => Answer::Failed("overloaded".into()),
                Ok(other) => Answer::Failed(format!("unexpected answer {other:?}")),
                Err(RpcError::Unreachable(why)) => {
                    answer = Answer::Failed(why);
                    // A restarted server is reached by reconnecting, once the link's backoff after
                    // the failed connection has passed.
                    self.env.sleep(self.options.rpc.reconnect_backoff).await;
                    continue;
                }
                Err(error) => Answer::Failed(error.to_string()),
            };
            break;
        }
        answer
    }
}

/// Same version and tag: the same write.
fn same_write(left: &Record, right: &Record) -> bool {
    left.version == right.version && left.tag == right.tag
}

/// The vote over the answers gathered so far.
enum Tally {
    /// Not enough information yet.
    Undecided,
    Decided(Option<Record>),
    Conflict(String),
}

fn tally(answers: &[(ServerIndex, Answer)], quorum: usize, all_in: bool) -> Tally {
    let valid = answers
        .iter()
        .filter(|(_, answer)| matches!(answer, Answer::Valid(_)))
        .count();
    if valid < quorum {
        return Tally::Undecided;
    }
    // Every good copy counts for the highest version, vouched for or not: a quorum of valid
    // answers guarantees the newest acknowledged write is among them, and anything newer that a
    // recovering server holds was written too (an indeterminate write may become visible).
    let copies: Vec<&Record> = answers
        .iter()
        .filter_map(|(_, answer)| match answer {
            Answer::Valid(Some(record)) | Answer::Unvouched(record) => Some(record),
            _ => None,
        })
        .collect();
    let top = copies.iter().map(|record| record.version).max();
    let Some(top) = top else {
        return Tally::Decided(None);
    };
    // Copies at the top version, grouped by tag.
    let mut by_tag: BTreeMap<[u8; 32], (usize, &Record)> = BTreeMap::new();
    for record in copies {
        if record.version == top {
            by_tag.entry(record.tag).or_insert((0, record)).0 += 1;
        }
    }
    if by_tag.len() == 1 {
        let (_, record) = by_tag.values().next().expect("one entry");
        return Tally::Decided(Some((*record).clone()));
    }
    if !all_in {
        return Tally::Undecided;
    }
    let total: usize = by_tag.values().map(|(count, _)| count).sum();
    let (count, record) = by_tag
        .values()
        .max_by_key(|(count, _)| *count)
        .expect("non-empty");
    if count * 2 > total {
        Tally::Decided(Some((*record).clone()))
    } else {
        Tally::Conflict(format!(
            "{} copies of version {top} with different content",
            total
        ))
    }
}

impl<E: Env> QuorumClient<E> {
    /// Connect to the cluster, check (or create) the volume identity and, for a writer, take a
    /// fencing epoch.
    pub async fn open(
        env: E,
        placement: Placement,
        cluster_key: ClusterKey,
        options: ClientOptions,
        mode: OpenMode,
    ) -> Result<Self, QuorumError> {
        let mut inner = Self::for_administration(env, placement, cluster_key, options).inner;
        let (volume, highest_promised) = Self::settle_identity(&inner, mode).await?;
        Arc::get_mut(&mut inner)
            .expect("no other handle yet")
            .volume = volume;
        if mode == OpenMode::Repairer {
            let inner_mut = Arc::get_mut(&mut inner).expect("no other handle yet");
            inner_mut.epoch = highest_promised.max(1);
            inner_mut.creates_versions = false;
        } else if mode != OpenMode::ReadOnly {
            let epoch = Self::take_epoch(&inner, highest_promised).await?;
            Arc::get_mut(&mut inner).expect("no other handle yet").epoch = epoch;
            tracing::info!(
                epoch,
                volume = format!("{volume:032x}"),
                "opened the volume as its writer"
            );
            Self::spawn_healer(&inner);
        }
        Ok(Self { inner })
    }

    /// Find the volume's identity from the servers, formatting or joining blank ones as allowed.
    async fn settle_identity(
        inner: &Arc<Inner<E>>,
        mode: OpenMode,
    ) -> Result<(VolumeId, u64), QuorumError> {
        let placement = &inner.placement;
        let all: Vec<ServerIndex> = (0..placement.server_count()).collect();
        let answers = fan_out(inner, &all, |_| Request::Identify).await;
        let mut volumes = BTreeSet::new();
        let mut blank = Vec::new();
        let mut unfinished = Vec::new();
        let mut unreachable = Vec::new();
        let mut highest_promised = 0;
        let mut highest_format_ballot = 0;
        for (server, answer) in &answers {
            match answer {
                Ok(Response::Identity(Identity {
                    state,
                    promised_epoch,
                    format_ballot,
                    ..
                })) => {
                    highest_promised = highest_promised.max(*promised_epoch);
                    highest_format_ballot = highest_format_ballot.max(*format_ballot);
                    match state {
                        ServerState::Blank => blank.push(*server),
                        ServerState::Member {
                            volume,
                            member,
                            formatting,
                            ..
                        } => {
                            if *member != placement.member(*server) {
                                return Err(QuorumError::Volume(format!(
                                    "server {} says it is {member} but cluster.toml places it as {}: fix the order of servers in cluster.toml",
                                    placement.address(*server),
                                    placement.member(*server)
                                )));
                            }
                            if *formatting {
                                unfinished.push((*server, *volume));
                            } else {
                                volumes.insert(*volume);
                            }
                        }
                    }
                }
                Ok(other) => unreachable.push((*server, format!("unexpected answer {other:?}"))),
                Err(RpcError::Rejected) => {
                    return Err(QuorumError::Rejected(format!(
                    "server {} refused our frames: check that key_file holds this cluster's key",
                    placement.address(*server)
                )))
                }
                Err(error) => unreachable.push((*server, error.to_string())),
            }
        }
        if volumes.len() > 1 {
            return Err(QuorumError::Volume(format!(
                "the servers belong to {} different volumes: cluster.toml mixes clusters",
                volumes.len()
            )));
        }
        let committed = volumes.into_iter().next();
        if let Some(expected) = inner.options.expected_volume {
            match committed {
                Some(found) if found != expected => {
                    return Err(QuorumError::Volume(format!(
                        "the servers hold volume {found:032x}, not the expected {expected:032x}"
                    )))
                }
                None => {
                    return Err(QuorumError::Volume(format!(
                        "volume {expected:032x} is gone: no reachable server holds it; refusing to create a new volume in its place"
                    )))
                }
                Some(_) => {}
            }
        }
        if matches!(mode, OpenMode::ReadOnly | OpenMode::Repairer) {
            return committed
                .map(|volume| (volume, highest_promised))
                .ok_or_else(|| QuorumError::Volume("the volume is not formatted yet".into()));
        }
        // Uncommitted formats hold nothing (no client writes before the commit). Two clients
        // formatting at once leave servers of two volumes: settle on one, the committed volume if
        // there is one, else the highest id, so that racing clients agree.
        let volume = match committed {
            Some(volume) => volume,
            None => {
                if !unreachable.is_empty() && mode != OpenMode::WriterForceFormat {
                    return Err(QuorumError::Volume(format!(
                        "some servers cannot be reached, and they may hold the volume; refusing to format \
                         (start them, or force formatting if they are really empty): {}",
                        describe_failures(&unreachable, placement)
                    )));
                }
                unfinished
                    .iter()
                    .map(|(_, volume)| *volume)
                    .max()
                    .unwrap_or_else(|| random_u128(&inner.env))
            }
        };
        // Claim every server not yet committed under one new ballot, then commit them all: a
        // concurrent format under another ballot makes one of the two fail, never both succeed.
        let mut to_format: Vec<ServerIndex> =
            unfinished.iter().map(|(server, _)| *server).collect();
        if committed.is_none() {
            to_format.extend(&blank);
        }
        let ballot = highest_format_ballot + 1 + inner.env.random_u64() % 1024;
        let formatted = fan_out(inner, &to_format, |server| Request::Format {
            volume,
            member: placement.member(server),
            ballot,
        })
        .await;
        for (server, answer) in formatted {
            if !matches!(answer, Ok(Response::Done)) {
                return Err(QuorumError::Volume(format!(
                    "formatting {} failed: {answer:?}",
                    placement.address(server)
                )));
            }
        }
        let to_commit = to_format;
        Self::commit_format(inner, volume, ballot, &to_commit).await?;
        if committed.is_none() {
            tracing::info!(volume = format!("{volume:032x}"), "formatted a new volume");
        } else if !blank.is_empty() {
            let joined = fan_out(inner, &blank, |server| Request::Join {
                volume,
                member: placement.member(server),
                epoch: highest_promised,
            })
            .await;
            for (server, answer) in joined {
                tracing::warn!(
                    server = %placement.address(server),
                    ?answer,
                    "a blank server joined the volume as recovering"
                );
            }
        }
        Ok((volume, highest_promised))
    }

    async fn commit_format(
        inner: &Arc<Inner<E>>,
        volume: VolumeId,
        ballot: u64,
        servers: &[ServerIndex],
    ) -> Result<(), QuorumError> {
        let committed = fan_out(inner, servers, |_| Request::CommitFormat { volume, ballot }).await;
        for (server, answer) in committed {
            if !matches!(answer, Ok(Response::Done)) {
                return Err(QuorumError::Volume(format!(
                    "committing the format on {} failed: {answer:?}",
                    inner.placement.address(server)
                )));
            }
        }
        Ok(())
    }

    /// Take a new epoch: every server of a majority of banks must promise it, so that any
    /// write quorum of an older writer meets at least one server that refuses it.
    async fn take_epoch(inner: &Arc<Inner<E>>, highest_seen: u64) -> Result<u64, QuorumError> {
        let placement = &inner.placement;
        let all: Vec<ServerIndex> = (0..placement.server_count()).collect();
        let mut highest = highest_seen;
        // Bounded: each refused round raises `highest` past a competitor's epoch.
        for _round in 0..16 {
            let epoch = highest + 1;
            let answers = fan_out(inner, &all, |_| Request::GrantEpoch {
                volume: inner.volume,
                epoch,
                writer: inner.writer,
            })
            .await;
            let mut granted = vec![true; placement.bank_count()];
            let mut refused = false;
            let mut failures = Vec::new();
            for (server, answer) in &answers {
                let bank = placement.member(*server).bank as usize;
                match answer {
                    Ok(Response::EpochGranted) => {}
                    Ok(Response::EpochRefused { promised_epoch }) => {
                        highest = highest.max(*promised_epoch);
                        refused = true;
                        granted[bank] = false;
                    }
                    other => {
                        granted[bank] = false;
                        failures.push((*server, format!("{other:?}")));
                    }
                }
            }
            let full_banks = granted.iter().filter(|granted| **granted).count();
            if full_banks >= placement.quorum() {
                return Ok(epoch);
            }
            if !refused {
                return Err(QuorumError::Unavailable(format!(
                    "cannot take a fencing epoch: every server of a majority of banks must answer; {}",
                    describe_failures(&failures, placement)
                )));
            }
        }
        Err(QuorumError::Unavailable(
            "cannot take a fencing epoch: other writers keep taking newer ones".into(),
        ))
    }

    fn spawn_healer(inner: &Arc<Inner<E>>) {
        let weak: Weak<Inner<E>> = Arc::downgrade(inner);
        let env = inner.env.clone();
        let interval = inner.options.heal_interval;
        env.clone().spawn(async move {
            loop {
                env.sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.fenced.load(Ordering::Acquire) {
                    return;
                }
                let client = QuorumClient { inner };
                client.heal_backlog(256).await;
            }
        });
    }

    /// Repair up to `limit` copies from the heal backlog. Returns how many were repaired.
    pub async fn heal_backlog(&self, limit: usize) -> usize {
        let batch: Vec<(ServerIndex, Vec<u8>)> = {
            let mut backlog = self.inner.backlog.lock().expect("backlog lock poisoned");
            let batch: Vec<_> = backlog.iter().take(limit).cloned().collect();
            for entry in &batch {
                backlog.remove(entry);
            }
            batch
        };
        let mut servers_down = BTreeSet::new();
        let mut healed = 0;
        for (server, key) in batch {
            if servers_down.contains(&server) {
                self.inner.add_to_backlog(server, &key);
                continue;
            }
            match self.repair_key(&key).await {
                Ok((_, stuck)) if !stuck.contains(&server) => healed += 1,
                _ => {
                    servers_down.insert(server);
                    self.inner.add_to_backlog(server, &key);
                }
            }
        }
        self.inner
            .counters
            .healed_from_backlog
            .fetch_add(healed as u64, Ordering::Relaxed);
        healed
    }

    /// A client for administration only (stats, dump, inject): no identity checks, no writes.
    pub fn for_administration(
        env: E,
        placement: Placement,
        cluster_key: ClusterKey,
        options: ClientOptions,
    ) -> Self {
        let links = (0..placement.server_count())
            .map(|server| {
                ServerLink::new(
                    env.clone(),
                    placement.address(server),
                    cluster_key.clone(),
                    options.rpc.clone(),
                )
            })
            .collect();
        let client_id = env.random_u64() | 1;
        let server_choice = ServerChoice::new(
            placement.server_count(),
            ServerChoiceOptions::for_request_timeout(options.rpc.request_timeout),
        );
        Self {
            inner: Arc::new(Inner {
                env,
                cluster_key,
                placement,
                links,
                options,
                volume: 0,
                epoch: 0,
                creates_versions: true,
                writer: client_id,
                client_id,
                next_sequence: AtomicU64::new(1),
                next_request: AtomicU64::new(0),
                fenced_at: AtomicU64::new(0),
                fenced: AtomicBool::new(false),
                backlog: StdMutex::new(BTreeSet::new()),
                counters: Counters::default(),
                server_choice,
            }),
        }
    }

    /// The environment this client runs in (clock, tasks, randomness).
    pub fn env(&self) -> &E {
        &self.inner.env
    }

    /// This client took a fencing epoch: it is the volume's writer.
    pub fn is_writer(&self) -> bool {
        self.inner.epoch != 0 && self.inner.creates_versions
    }

    /// The planted bug this client runs with (only the simulator's self-test sets one).
    pub fn planted_bug(&self) -> Option<PlantedBug> {
        self.inner.options.planted_bug
    }

    pub fn volume(&self) -> VolumeId {
        self.inner.volume
    }

    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    pub fn placement(&self) -> &Placement {
        &self.inner.placement
    }

    pub fn cluster_key(&self) -> &ClusterKey {
        &self.inner.cluster_key
    }

    pub fn stats(&self) -> ClientStats {
        let counters = &self.inner.counters;
        let loads = self.inner.server_choice.snapshot();
        ClientStats {
            repairs_lagging: counters.repairs_lagging.load(Ordering::Relaxed),
            repairs_missing: counters.repairs_missing.load(Ordering::Relaxed),
            repairs_corrupt: counters.repairs_corrupt.load(Ordering::Relaxed),
            repairs_recovering: counters.repairs_recovering.load(Ordering::Relaxed),
            write_backs: counters.write_backs.load(Ordering::Relaxed),
            unavailable_reads: counters.unavailable_reads.load(Ordering::Relaxed),
            backlog: self
                .inner
                .backlog
                .lock()
                .expect("backlog lock poisoned")
                .len() as u64,
            backlog_dropped: counters.backlog_dropped.load(Ordering::Relaxed),
            healed_from_backlog: counters.healed_from_backlog.load(Ordering::Relaxed),
            read_requests_per_server: loads.iter().map(|load| load.requests).collect(),
            reads_needing_third_bank: counters.reads_needing_third_bank.load(Ordering::Relaxed),
            hedged_reads: counters.hedged_reads.load(Ordering::Relaxed),
            probe_reads: counters.probe_reads.load(Ordering::Relaxed),
            overloaded_answers: loads.iter().map(|load| load.overloaded_answers).sum(),
            verification_reads: counters.verification_reads.load(Ordering::Relaxed),
        }
    }

    /// What this client measured of each server (latency, load, avoidance), by server index.
    pub fn server_loads(&self) -> Vec<ServerLoad> {
        self.inner.server_choice.snapshot()
    }

    /// Send one request to one server (for administration: stats, dump, inject).
    pub async fn call_server(
        &self,
        server: ServerIndex,
        request: Request,
    ) -> Result<Response, RpcError> {
        let request_id = self.inner.next_request_id();
        self.inner.links[server].call(request_id, request).await
    }

    fn next_version(&self) -> Version {
        Version {
            epoch: self.inner.epoch,
            sequence: self.inner.next_sequence.fetch_add(1, Ordering::Relaxed),
            writer: self.inner.writer,
        }
    }

    /// Store `value` under `key` on a majority of banks.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Version, QuorumError> {
        self.write(key, false, value).await
    }

    /// Delete `key` (a tombstone, so that the deletion wins the vote like any newer write).
    pub async fn delete(&self, key: &[u8]) -> Result<Version, QuorumError> {
        self.write(key, true, &[]).await
    }

    async fn write(
        &self,
        key: &[u8],
        tombstone: bool,
        value: &[u8],
    ) -> Result<Version, QuorumError> {
        validate_key(key).map_err(QuorumError::Invalid)?;
        if !self.inner.creates_versions {
            return Err(QuorumError::ReadOnly);
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(QuorumError::Invalid(format!(
                "a value is at most {MAX_VALUE_BYTES} bytes, this one has {}",
                value.len()
            )));
        }
        self.inner.check_writable()?;
        let version = self.next_version();
        let record = Record::new(
            &self.inner.cluster_key,
            key.to_vec(),
            version,
            tombstone,
            value.to_vec(),
        );
        let owners = self.inner.placement.owners(key);
        self.write_to(record, &owners, self.inner.placement.quorum(), false)
            .await?;
        Ok(version)
    }

    /// Send `record` to `servers` concurrently; succeed once `needed` acknowledged. Servers that
    /// do not acknowledge go to the heal backlog; stragglers finish in the background.
    async fn write_to(
        &self,
        record: Record,
        servers: &[ServerIndex],
        needed: usize,
        repair: bool,
    ) -> Result<(), QuorumError> {
        let (sender, mut receiver) = mpsc::channel(servers.len().max(1));
        let request_id = self.inner.next_request_id();
        for server in servers {
            let inner = self.inner.clone();
            let sender = sender.clone();
            let record = record.clone();
            let server = *server;
            self.inner.env.spawn(async move {
                let key = record.key.clone();
                let outcome = inner.put_to(server, request_id, record, repair).await;
                match &outcome {
                    WriteOutcome::Acknowledged => {}
                    WriteOutcome::Fenced(promised) => inner.mark_fenced(*promised),
                    _ => inner.add_to_backlog(server, &key),
                }
                let _ = sender.send((server, outcome)).await;
            });
        }
        drop(sender);
        let mut acknowledged = 0;
        let mut failures = Vec::new();
        let mut remaining = servers.len();
        while let Some((server, outcome)) = receiver.recv().await {
            remaining -= 1;
            match outcome {
                WriteOutcome::Acknowledged => acknowledged += 1,
                WriteOutcome::Fenced(promised_epoch) => {
                    return Err(QuorumError::Fenced { promised_epoch })
                }
                WriteOutcome::Conflict => failures.push((server, "conflicting copy".to_string())),
                WriteOutcome::Failed(why) => failures.push((server, why)),
            }
            if acknowledged >= needed {
                return Ok(());
            }
            if acknowledged + remaining < needed {
                break;
            }
        }
        Err(QuorumError::Unavailable(format!(
            "write of {} reached {acknowledged} of the {needed} copies it needs: {}",
            display_key(&record.key),
            describe_failures(&failures, &self.inner.placement)
        )))
    }

    /// The value of `key`, or `None` if it does not exist (or was deleted).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, QuorumError> {
        Ok(self
            .read_record(key)
            .await?
            .filter(|record| !record.tombstone)
            .map(|record| record.value))
    }

    /// The winning record of `key` (tombstones included), after write-back.
    pub async fn read_record(&self, key: &[u8]) -> Result<Option<Record>, QuorumError> {
        validate_key(key).map_err(QuorumError::Invalid)?;
        self.read_record_from(key).await
    }

    /// Ask every owner for its copy of `key` at once; answers arrive as they come.
    fn ask_owners(
        &self,
        key: &[u8],
        owners: &[ServerIndex],
    ) -> mpsc::Receiver<(ServerIndex, Answer)> {
        let (sender, receiver) = mpsc::channel(owners.len().max(1));
        for owner in owners {
            let inner = self.inner.clone();
            let sender = sender.clone();
            let owner = *owner;
            let key = key.to_vec();
            self.inner.env.spawn(async move {
                let answer = inner.get_from(owner, &key).await;
                let _ = sender.send((owner, answer)).await;
            });
        }
        receiver
    }

    /// Vote over the owners' copies of `key`: ask the best two banks' owners first (by measured
    /// latency and load) and another only when needed; decide on the first quorum of valid
    /// answers, write the winner back if fewer than a quorum hold it, repair the rest in the
    /// background.
    ///
    /// Why two banks suffice when they agree: a write is acknowledged by a majority of banks, and
    /// any two banks of three meet every majority, so two valid agreeing answers include a copy of
    /// the newest acknowledged write (or an authoritative absence on a bank that took every
    /// acknowledged write). Anything else (disagreement, an answer that cannot vote, a failure,
    /// a slow owner) asks the next owner, and the vote is the same as over every owner at once.
    /// Once the read is decided, an owner it did not ask is still checked in the background if
    /// it has spare capacity, so that read-repair reaches its copy; the caller never waits for
    /// that.
    async fn read_record_from(&self, key: &[u8]) -> Result<Option<Record>, QuorumError> {
        let inner = &self.inner;
        let owners = inner.placement.owners(key);
        let quorum = inner.placement.quorum();
        let planted = inner.options.planted_bug;
        let vote_quorum = if planted == Some(PlantedBug::VoteAcceptsOneAnswer) {
            1
        } else {
            quorum
        };
        let mut reads = OwnerReads::start(self, key, &owners, quorum);
        let mut answers: Vec<(ServerIndex, Answer)> = Vec::with_capacity(owners.len());
        let mut decision = Tally::Undecided;
        while let Some(answer) = reads.next().await {
            if let Some(why) = needs_another_owner(&answers, &answer.1) {
                reads.escalate(why);
            }
            answers.push(answer);
            let all_in = answers.len() == owners.len();
            decision = tally(&answers, vote_quorum, all_in);
            if !matches!(decision, Tally::Undecided) {
                break;
            }
        }
        let winner = match decision {
            Tally::Decided(winner) => winner,
            Tally::Conflict(why) => {
                inner
                    .counters
                    .unavailable_reads
                    .fetch_add(1, Ordering::Relaxed);
                return Err(QuorumError::Conflict(format!(
                    "{}: {why}",
                    display_key(key)
                )));
            }
            Tally::Undecided => {
                inner
                    .counters
                    .unavailable_reads
                    .fetch_add(1, Ordering::Relaxed);
                let failures: Vec<(ServerIndex, String)> = answers
                    .iter()
                    .map(|(server, answer)| (*server, answer.describe()))
                    .collect();
                return Err(QuorumError::Unavailable(format!(
                    "read of {} got fewer than {quorum} valid copies: {}",
                    display_key(key),
                    describe_failures(&failures, &inner.placement)
                )));
            }
        };
        // Holders that count towards a quorum: valid answers with the winner.
        let holds_winner = |answer: &Answer| match (answer, &winner) {
            (Answer::Valid(Some(copy)), Some(record)) => same_write(copy, record),
            (Answer::Valid(None), None) => true,
            _ => false,
        };
        let Some(record) = winner.clone() else {
            // Absent on a quorum: nothing to write back. Copies that were corrupt stay for the
            // scrubber, which can tell an interrupted write from rot.
            return Ok(None);
        };
        if inner.epoch == 0 {
            return Ok(winner);
        }
        let mut holders = answers
            .iter()
            .filter(|(_, answer)| holds_winner(answer))
            .count();
        if holders < quorum && planted != Some(PlantedBug::SkipWriteBack) {
            // ABD write-back: the winner must be on a quorum before anyone is told about it, or a
            // later read could miss it and go back in time. Every owner is asked (one not asked
            // yet may hold the winner already, and is a candidate for the write-back otherwise),
            // and every answer is awaited, each bounded by the request timeout.
            reads.escalate_all(Escalation::CannotVote);
            reads.stop_asking();
            while let Some(answer) = reads.next().await {
                if holds_winner(&answer.1) {
                    holders += 1;
                }
                answers.push(answer);
            }
            let needing: Vec<ServerIndex> = answers
                .iter()
                .filter(|(_, answer)| !has_winner(answer, &record))
                .map(|(server, _)| *server)
                .collect();
            if holders < quorum {
                inner.counters.write_backs.fetch_add(1, Ordering::Relaxed);
                self.count_repairs(&answers, &record);
                self.write_to(record.clone(), &needing, quorum - holders, true)
                    .await
                    .map_err(|error| match error {
                        QuorumError::Unavailable(why) => {
                            QuorumError::Unavailable(format!("write-back failed: {why}"))
                        }
                        other => other,
                    })?;
                return Ok(winner);
            }
        }
        if planted == Some(PlantedBug::SkipWriteBack) {
            return Ok(winner);
        }
        // Read-repair in the background: every copy that answered without the winner, every
        // answer still on its way, and the owners not asked that have spare capacity. Checking
        // those costs the caller nothing and finds lagging, damaged or lost copies between scrub
        // passes; an owner that is slow, busy or overloaded is spared (the backlog and the
        // scrubber reach it).
        reads.verify_spare_owners();
        reads.stop_asking();
        let client = self.clone();
        self.inner.env.spawn(async move {
            while let Some(answer) = reads.next().await {
                answers.push(answer);
            }
            client.count_repairs(&answers, &record);
            let lagging: Vec<ServerIndex> = answers
                .iter()
                .filter(|(_, answer)| !has_winner(answer, &record))
                .map(|(server, _)| *server)
                .collect();
            if !lagging.is_empty() {
                let _ = client.write_to(record, &lagging, lagging.len(), true).await;
            }
        });
        Ok(winner)
    }

    /// Vote over every owner of `key` and write the winner to each owner that does not hold it,
    /// waiting for each. Returns the winner and the owners that could not be brought in step.
    pub async fn repair_key(
        &self,
        key: &[u8],
    ) -> Result<(Option<Record>, Vec<ServerIndex>), QuorumError> {
        self.repair_key_skipping(key, &[]).await
    }

    /// As [`QuorumClient::repair_key`], but without asking the `down` servers (known
    /// unreachable: asking would only wait out their timeouts). Those among the owners count as
    /// not brought in step.
    pub async fn repair_key_skipping(
        &self,
        key: &[u8],
        down: &[ServerIndex],
    ) -> Result<(Option<Record>, Vec<ServerIndex>), QuorumError> {
        self.inner.check_writable()?;
        let inner = &self.inner;
        let owners = inner.placement.owners(key);
        let (skipped, asked): (Vec<ServerIndex>, Vec<ServerIndex>) =
            owners.iter().partition(|owner| down.contains(owner));
        let mut receiver = self.ask_owners(key, &asked);
        let mut answers = Vec::with_capacity(owners.len());
        while let Some(answer) = receiver.recv().await {
            answers.push(answer);
        }
        answers.extend(
            skipped
                .into_iter()
                .map(|server| (server, Answer::Failed("known to be down".into()))),
        );
        let winner = match tally(&answers, inner.placement.quorum(), true) {
            Tally::Decided(winner) => winner,
            Tally::Conflict(why) => return Err(QuorumError::Conflict(why)),
            Tally::Undecided => {
                return Err(QuorumError::Unavailable(format!(
                    "cannot settle {}: fewer than {} valid copies",
                    display_key(key),
                    inner.placement.quorum()
                )))
            }
        };
        let Some(record) = winner.clone() else {
            // Absent everywhere that can vote. Owners that cannot vote (recovering, corrupt) hold
            // nothing a reader could see: there is nothing to give them, and their unusable
            // copies are forgotten (only if still unusable when the request arrives).
            for (server, answer) in &answers {
                if matches!(answer, Answer::Corrupt | Answer::Recovering) {
                    let request = Request::ForgetUnusable {
                        volume: inner.volume,
                        key: serde_bytes::ByteBuf::from(key.to_vec()),
                    };
                    let _ = inner.links[*server]
                        .call(inner.next_request_id(), request)
                        .await;
                }
            }
            let stuck = answers
                .iter()
                .filter(|(_, answer)| matches!(answer, Answer::Failed(_)))
                .map(|(server, _)| *server)
                .collect();
            return Ok((None, stuck));
        };
        self.count_repairs(&answers, &record);
        // An owner that could not even answer the read is not written to (its retries would
        // only wait out a server that is down): it stays out of step, for the next pass.
        let mut stuck: Vec<ServerIndex> = answers
            .iter()
            .filter(|(_, answer)| matches!(answer, Answer::Failed(_)))
            .map(|(server, _)| *server)
            .collect();
        let lagging: Vec<ServerIndex> = answers
            .iter()
            .filter(|(_, answer)| {
                !has_winner(answer, &record) && !matches!(answer, Answer::Failed(_))
            })
            .map(|(server, _)| *server)
            .collect();
        let request_id = inner.next_request_id();
        for server in lagging {
            match inner.put_to(server, request_id, record.clone(), true).await {
                WriteOutcome::Acknowledged => {}
                WriteOutcome::Fenced(promised) => {
                    inner.mark_fenced(promised);
                    return Err(QuorumError::Fenced {
                        promised_epoch: promised,
                    });
                }
                _ => stuck.push(server),
            }
        }
        Ok((winner, stuck))
    }

    fn count_repairs(&self, answers: &[(ServerIndex, Answer)], winner: &Record) {
        let counters = &self.inner.counters;
        for (_, answer) in answers {
            let counter = match answer {
                Answer::Valid(Some(copy)) | Answer::Unvouched(copy) if same_write(copy, winner) => {
                    continue
                }
                Answer::Valid(Some(_)) => &counters.repairs_lagging,
                Answer::Valid(None) => &counters.repairs_missing,
                Answer::Corrupt => &counters.repairs_corrupt,
                Answer::Recovering | Answer::Unvouched(_) | Answer::Blank => {
                    &counters.repairs_recovering
                }
                Answer::Failed(_) => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Keys under `prefix` that exist (tombstones excluded), in key order. A prefix containing
    /// `#` lists one partition (one owner per bank); any other prefix asks every server.
    pub async fn list(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, QuorumError> {
        let mut keys = Vec::new();
        let mut start_after: Option<Vec<u8>> = None;
        // Bounded by the number of keys: every page resumes after the last key it covered.
        loop {
            let page = self
                .list_page(prefix, start_after.as_deref(), MAX_LIST_ENTRIES)
                .await?;
            keys.extend(page.keys);
            match page.resume_after {
                Some(after) => start_after = Some(after),
                None => return Ok(keys),
            }
        }
    }

    /// One page of [`QuorumClient::list`]: the existing keys under `prefix` after `start_after`
    /// (at most `limit` per bank asked), in key order, and where the next page starts. Memory and work
    /// per page are bounded by `limit` whatever the number of keys, so a directory of millions
    /// of entries streams.
    pub async fn list_page(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: u32,
    ) -> Result<ListPage, QuorumError> {
        let inner = &self.inner;
        let placement = &inner.placement;
        let limit = limit.clamp(1, MAX_LIST_ENTRIES);
        let servers: Vec<ServerIndex> = if prefix.contains(&PARTITION_SEPARATOR) {
            placement.partition_owners(partition_of(prefix))
        } else {
            (0..placement.server_count()).collect()
        };
        let (sender, mut receiver) = mpsc::channel(servers.len());
        for server in &servers {
            let client = self.clone();
            let sender = sender.clone();
            let server = *server;
            let request = Request::List {
                volume: inner.volume,
                prefix: prefix.to_vec(),
                start_after: start_after.map(|key| key.to_vec()),
                limit,
            };
            inner.env.spawn(async move {
                let answer = match client.call_server(server, request).await {
                    Ok(Response::Listing { entries, complete }) => Ok((entries, complete)),
                    Ok(other) => Err(format!("{other:?}")),
                    Err(error) => Err(error.to_string()),
                };
                let _ = sender.send((server, answer)).await;
            });
        }
        drop(sender);
        // Per bank: the merged page and how far it is known to be complete (`None`: to the end).
        type BankPage = (BTreeMap<Vec<u8>, ListEntry>, Option<Vec<u8>>);
        let mut banks: BTreeMap<usize, Option<BankPage>> = BTreeMap::new();
        let mut failures = Vec::new();
        while let Some((server, answer)) = receiver.recv().await {
            let bank = placement.member(server).bank as usize;
            let merged = banks
                .entry(bank)
                .or_insert_with(|| Some((BTreeMap::new(), None::<Vec<u8>>)));
            match (answer, merged.as_mut()) {
                (Ok((entries, complete)), Some((page, horizon))) => {
                    if !complete && !entries.is_empty() {
                        let last = entries.last().expect("not empty").key.clone();
                        if start_after.is_some_and(|after| last.as_slice() <= after) {
                            failures.push((server, "listing did not advance".to_string()));
                            *merged = None;
                            continue;
                        }
                        *horizon = Some(match horizon.take() {
                            Some(existing) if existing < last => existing,
                            _ => last,
                        });
                    }
                    for entry in entries {
                        match page.get(&entry.key) {
                            Some(existing) if existing.version >= entry.version => {}
                            _ => {
                                page.insert(entry.key.clone(), entry);
                            }
                        }
                    }
                }
                (Ok(_), None) => {}
                (Err(why), _) => {
                    failures.push((server, why));
                    *merged = None;
                }
            }
        }
        let authoritative: Vec<&BankPage> =
            banks.values().filter_map(|bank| bank.as_ref()).collect();
        if authoritative.len() < placement.quorum() {
            return Err(QuorumError::Unavailable(format!(
                "listing needs {} banks that can vouch for their contents, {} can: {}",
                placement.quorum(),
                authoritative.len(),
                describe_failures(&failures, placement)
            )));
        }
        // Keys up to the nearest bank horizon are known to every bank that answered.
        let horizon: Option<&Vec<u8>> = authoritative
            .iter()
            .filter_map(|(_, horizon)| horizon.as_ref())
            .min();
        let all_keys: BTreeSet<&Vec<u8>> = authoritative
            .iter()
            .flat_map(|(page, _)| page.keys())
            .filter(|key| horizon.is_none_or(|horizon| *key <= horizon))
            .collect();
        let mut keys = Vec::new();
        for key in all_keys {
            let copies: Vec<Option<&ListEntry>> = authoritative
                .iter()
                .map(|(page, _)| page.get(key))
                .collect();
            let top = copies
                .iter()
                .flatten()
                .max_by_key(|entry| entry.version)
                .expect("the key came from some bank");
            let holders = copies
                .iter()
                .flatten()
                .filter(|entry| entry.version == top.version && entry.tag == top.tag)
                .count();
            let exists = if holders >= placement.quorum() {
                !top.tombstone
            } else {
                self.read_record(key)
                    .await?
                    .is_some_and(|record| !record.tombstone)
            };
            if exists {
                keys.push(key.clone());
            }
        }
        // Every key up to the horizon was considered, deleted ones too: the next page starts
        // after the horizon, so a page of nothing but deletions still advances.
        Ok(ListPage {
            keys,
            resume_after: horizon.cloned(),
        })
    }
}

/// Whether a server's answer shows it holds `winner` already (vouched for or not), so that it
/// needs no repair.
fn has_winner(answer: &Answer, winner: &Record) -> bool {
    matches!(answer, Answer::Valid(Some(copy)) | Answer::Unvouched(copy) if same_write(copy, winner))
}

/// Why a read asked an owner beyond the best ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escalation {
    /// Two valid answers disagree (version, tag, or found against not found).
    Disagreement,
    /// An answer cannot vote: failed, corrupt, recovering, unvouched, blank or overloaded.
    CannotVote,
    /// An owner asked has not answered within its hedge delay.
    Slow,
    /// Every owner asked answered and the vote is still open.
    Undecided,
}

/// Whether `answer`, arriving after `earlier`, means the read needs another owner's answer.
fn needs_another_owner(earlier: &[(ServerIndex, Answer)], answer: &Answer) -> Option<Escalation> {
    let Answer::Valid(copy) = answer else {
        return Some(Escalation::CannotVote);
    };
    let agrees = |other: &Option<Record>| match (other, copy) {
        (Some(left), Some(right)) => same_write(left, right),
        (None, None) => true,
        _ => false,
    };
    let disagreement = earlier.iter().any(|(_, earlier)| match earlier {
        Answer::Valid(other) => !agrees(other),
        _ => false,
    });
    disagreement.then_some(Escalation::Disagreement)
}

/// The requests of one read to the owners of a key: the best owners (by the client's
/// [`ServerChoice`]) at once, the others one at a time when the read needs them, and a hedge
/// when an owner asked is slower than its hedge delay. Answers arrive as they come.
struct OwnerReads<E: Env> {
    inner: Arc<Inner<E>>,
    key: Vec<u8>,
    /// `None` once no further owner will be asked, so that the channel ends when the last
    /// request finishes.
    sender: Option<mpsc::Sender<(ServerIndex, Answer)>>,
    receiver: mpsc::Receiver<(ServerIndex, Answer)>,
    /// Owners not asked yet, best first.
    held_back: Vec<ServerIndex>,
    /// Owners asked that have not answered yet, with the instant (Env clock) their hedge is due.
    outstanding: Vec<(ServerIndex, Duration)>,
    /// Owners that answered.
    answered: Vec<ServerIndex>,
    /// Whether this read already asked beyond its first owners (counted once per read).
    escalated: bool,
}

impl<E: Env> OwnerReads<E> {
    /// Plan the read of `key` over `owners` and ask the first `wanted` (plus a probe, if one is
    /// due).
    fn start(client: &QuorumClient<E>, key: &[u8], owners: &[ServerIndex], wanted: usize) -> Self {
        let inner = client.inner.clone();
        // Capacity for one answer per owner: every request sends exactly one, so no sender ever
        // waits.
        let (sender, receiver) = mpsc::channel(owners.len().max(1));
        let plan =
            inner
                .server_choice
                .plan(owners, wanted, inner.env.now(), inner.env.random_u64());
        if plan.probing {
            inner.counters.probe_reads.fetch_add(1, Ordering::Relaxed);
        }
        let mut reads = Self {
            inner,
            key: key.to_vec(),
            sender: Some(sender),
            receiver,
            held_back: plan.later,
            outstanding: Vec::with_capacity(owners.len()),
            answered: Vec::with_capacity(owners.len()),
            escalated: false,
        };
        for server in plan.first {
            reads.ask(server);
        }
        reads
    }

    fn ask(&mut self, server: ServerIndex) {
        let Some(sender) = self.sender.clone() else {
            return;
        };
        let hedge_at = self.inner.env.now() + self.inner.server_choice.hedge_delay(server);
        self.outstanding.push((server, hedge_at));
        let inner = self.inner.clone();
        let key = self.key.clone();
        self.inner.env.spawn(async move {
            let answer = inner.get_from(server, &key).await;
            let _ = sender.send((server, answer)).await;
        });
    }

    /// Ask the best owner not asked yet. Returns false when every owner was asked already.
    fn escalate(&mut self, why: Escalation) -> bool {
        if self.held_back.is_empty() || self.sender.is_none() {
            return false;
        }
        let server = self.held_back.remove(0);
        if !self.escalated {
            self.escalated = true;
            let counters = &self.inner.counters;
            counters
                .reads_needing_third_bank
                .fetch_add(1, Ordering::Relaxed);
            if why == Escalation::Slow {
                counters.hedged_reads.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.ask(server);
        true
    }

    /// Ask every owner not asked yet.
    fn escalate_all(&mut self, why: Escalation) {
        // Bounded: each turn asks one of the held-back owners.
        while self.escalate(why) {}
    }

    /// Ask, for read-repair only, every owner not asked yet that has spare capacity compared with
    /// the owners asked (see [`ServerChoice::has_spare_capacity`]).
    fn verify_spare_owners(&mut self) {
        let asked: Vec<ServerIndex> = self
            .outstanding
            .iter()
            .map(|(server, _)| *server)
            .chain(self.answered.iter().copied())
            .collect();
        let now = self.inner.env.now();
        let spare: Vec<ServerIndex> = self
            .held_back
            .iter()
            .copied()
            .filter(|server| {
                self.inner
                    .server_choice
                    .has_spare_capacity(*server, &asked, now)
            })
            .collect();
        for server in spare {
            self.held_back.retain(|held| *held != server);
            self.inner
                .counters
                .verification_reads
                .fetch_add(1, Ordering::Relaxed);
            self.ask(server);
        }
    }

    /// Ask no further owner: [`OwnerReads::next`] returns the answers still on their way, then
    /// `None`.
    fn stop_asking(&mut self) {
        self.held_back.clear();
        self.sender = None;
    }

    /// The next answer. While an owner is held back, an owner asked that has not answered by its
    /// hedge delay gets the next owner asked too, and when every owner asked has answered the
    /// next is asked. `None` once every owner asked has answered and none is left to ask.
    async fn next(&mut self) -> Option<(ServerIndex, Answer)> {
        // Bounded: every turn returns or asks one more owner, and there are few owners.
        loop {
            if self.outstanding.is_empty() && !self.escalate(Escalation::Undecided) {
                return None;
            }
            let received = if self.held_back.is_empty() || self.sender.is_none() {
                // Nothing left to hedge with: wait. Each request is bounded by the request
                // timeout, so this ends.
                self.receiver.recv().await
            } else {
                let hedge_at = self
                    .outstanding
                    .iter()
                    .map(|(_, hedge_at)| *hedge_at)
                    .min()
                    .expect("outstanding is not empty here");
                let wait = hedge_at.saturating_sub(self.inner.env.now());
                match timeout(&self.inner.env, wait, self.receiver.recv()).await {
                    Ok(received) => received,
                    Err(TimedOut) => {
                        self.escalate(Escalation::Slow);
                        continue;
                    }
                }
            };
            let (server, answer) = received?;
            if let Some(position) = self
                .outstanding
                .iter()
                .position(|(asked, _)| *asked == server)
            {
                self.outstanding.remove(position);
            }
            self.answered.push(server);
            return Some((server, answer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sequence: u64, value: &[u8]) -> Record {
        let key = ClusterKey::from_bytes([7; 32]);
        let version = Version {
            epoch: 1,
            sequence,
            writer: 1,
        };
        Record::new(&key, b"key".to_vec(), version, false, value.to_vec())
    }

    #[test]
    fn quorum_read_asks_another_owner_only_when_the_first_answers_do_not_settle_it() {
        let v1 = Answer::Valid(Some(record(1, b"one")));
        let v2 = Answer::Valid(Some(record(2, b"two")));
        let v2_other_tag = Answer::Valid(Some(record(2, b"other")));
        let absent = Answer::Valid(None);
        // The first answer alone never asks for more unless it cannot vote.
        assert_eq!(needs_another_owner(&[], &v1), None);
        assert_eq!(needs_another_owner(&[], &absent), None);
        for unusable in [
            Answer::Corrupt,
            Answer::Recovering,
            Answer::Unvouched(record(2, b"two")),
            Answer::Blank,
            Answer::Failed("overloaded".into()),
        ] {
            assert_eq!(
                needs_another_owner(&[], &unusable),
                Some(Escalation::CannotVote)
            );
        }
        // Agreement: same version and tag, or two authoritative absences.
        assert_eq!(needs_another_owner(&[(0, v2.clone())], &v2), None);
        assert_eq!(needs_another_owner(&[(0, absent.clone())], &absent), None);
        // Disagreement of any kind.
        for (earlier, later) in [
            (&v1, &v2),
            (&v2, &v2_other_tag),
            (&absent, &v1),
            (&v1, &absent),
        ] {
            assert_eq!(
                needs_another_owner(&[(0, earlier.clone())], later),
                Some(Escalation::Disagreement)
            );
        }
        // An earlier answer that cannot vote does not count as a disagreement: it asked already.
        assert_eq!(needs_another_owner(&[(0, Answer::Corrupt)], &v1), None);
    }

    #[test]
    fn quorum_two_agreeing_answers_decide_and_two_disagreeing_ones_take_the_newest() {
        let v1 = Answer::Valid(Some(record(1, b"one")));
        let v2 = Answer::Valid(Some(record(2, b"two")));
        let decided = |answers: &[(ServerIndex, Answer)]| match tally(answers, 2, false) {
            Tally::Decided(winner) => Some(winner.map(|record| record.version.sequence)),
            _ => None,
        };
        assert_eq!(decided(&[(0, v2.clone()), (1, v2.clone())]), Some(Some(2)));
        assert_eq!(
            decided(&[(0, Answer::Valid(None)), (1, Answer::Valid(None))]),
            Some(None)
        );
        assert_eq!(decided(&[(0, v1.clone()), (1, v2.clone())]), Some(Some(2)));
        // One valid answer is never enough.
        assert_eq!(decided(&[(0, v2.clone()), (1, Answer::Corrupt)]), None);
        // Same version, different content: only the third answer can settle it.
        let other = Answer::Valid(Some(record(2, b"other")));
        assert_eq!(decided(&[(0, v2.clone()), (1, other.clone())]), None);
        match tally(&[(0, v2.clone()), (1, other), (2, v2)], 2, true) {
            Tally::Decided(Some(winner)) => assert_eq!(winner.value, b"two"),
            _ => panic!("the majority of tags decides"),
        }
    }
}
