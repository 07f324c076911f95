//! A storage server: request handling (DESIGN §5 answer rules, volume identity, fencing epochs,
//! duplicate detection) and the serve loop over the [`Env`] network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify, Semaphore};

use crate::disk::Disk;
use crate::env::{random_u128, timeout, Env};
use crate::proto::{
    decode_hello, encode_hello, encode_rejection, push_frame, read_frame, write_frame, Direction,
    FrameCodec, FrameError, Identity, Request, RequestId, Response, ServerState, ServerStats,
    VolumeId,
};
use crate::record::ClusterKey;
use crate::store::{GetOutcome, Meta, PutOutcome, RecoveryReport, Store, StoreError, StoreOptions};

/// The most entries a list or dump answer carries; clients page through larger ranges.
pub const MAX_LIST_ENTRIES: u32 = 4096;

/// The most bytes one deep-scrub request re-reads, so that one request never holds the disk long.
pub const MAX_DEEP_SCRUB_STEP_BYTES: u64 = 16 * 1024 * 1024;

/// How long a window the request rate in the stats is measured over.
const REQUEST_RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub allow_fault_injection: bool,
    pub store: StoreOptions,
    /// Requests of one connection handled at once; the next is not read until one finishes.
    pub max_in_flight_per_connection: usize,
    pub max_connections: usize,
    /// A connection that sends no complete frame for this long is dropped.
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Remembered request ids for duplicate detection.
    pub duplicate_window: usize,
    /// How often the server looks for a segment to compact.
    pub maintenance_interval: Duration,
    /// Only the simulator's self-test sets this (see [`crate::planted`]).
    pub planted_bug: Option<crate::planted::PlantedBug>,
    /// How many times a supervisor restarted this server, reported in its stats.
    pub restarts: u64,
    /// Requests handled at once over all connections beyond which reads are answered
    /// `Overloaded`, so that clients read from another bank instead of queueing here.
    pub max_in_flight_requests: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            allow_fault_injection: false,
            store: StoreOptions::default(),
            max_in_flight_per_connection: 128,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            duplicate_window: 65_536,
            maintenance_interval: Duration::from_millis(500),
            planted_bug: None,
            restarts: 0,
            max_in_flight_requests: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen: {0}")]
    Listen(std::io::Error),
}

/// Answers of recent mutating requests, so that a retry is answered rather than applied twice.
struct DuplicateWindow {
    answers: BTreeMap<RequestId, Response>,
    order: VecDeque<RequestId>,
    capacity: usize,
}

impl DuplicateWindow {
    fn remember(&mut self, request_id: RequestId, response: Response) {
        if self.answers.insert(request_id, response).is_none() {
            self.order.push_back(request_id);
        }
        while self.order.len() > self.capacity {
            let oldest = self.order.pop_front().expect("non-empty");
            self.answers.remove(&oldest);
        }
        assert_eq!(self.answers.len(), self.order.len());
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    duplicate_requests: AtomicU64,
    rejected_frames: AtomicU64,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    overloaded_answers: AtomicU64,
    record_bytes_sent: AtomicU64,
    record_bytes_stored: AtomicU64,
    frame_bytes_received: AtomicU64,
    frame_bytes_sent: AtomicU64,
}

/// Decrements the in-flight count however the handling ends.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Server<E: Env, D: Disk> {
    env: E,
    cluster_key: ClusterKey,
    store: Store<D>,
    options: ServerOptions,
    duplicates: StdMutex<DuplicateWindow>,
    counters: Counters,
    started_at: Duration,
    fatal: Notify,
    /// `(time, requests so far)` samples over the last [`REQUEST_RATE_WINDOW`], oldest first.
    request_samples: StdMutex<VecDeque<(Duration, u64)>>,
    volume_report: StdMutex<Option<crate::proto::VolumeReport>>,
}

enum Outgoing {
    Answer(RequestId, Response),
    Reject,
}

impl<E: Env, D: Disk> Server<E, D> {
    /// Recover the store on `disk` and get ready to serve.
    pub async fn open(
        env: E,
        disk: D,
        cluster_key: ClusterKey,
        options: ServerOptions,
    ) -> Result<(Arc<Self>, RecoveryReport), ServerError> {
        let (store, report) = Store::open(disk, options.store).await?;
        if report.torn_tail_bytes > 0 {
            tracing::warn!(bytes = report.torn_tail_bytes, "truncated a torn log tail");
        }
        if report.damaged_regions > 0 {
            tracing::error!(
                regions = report.damaged_regions,
                "log damage found: this server may have lost data and recovers until a scrub pass refills it"
            );
        }
        let duplicate_window = options.duplicate_window;
        let server = Arc::new(Self {
            started_at: env.now(),
            env,
            cluster_key,
            store,
            options,
            duplicates: StdMutex::new(DuplicateWindow {
                answers: BTreeMap::new(),
                order: VecDeque::new(),
                capacity: duplicate_window,
            }),
            counters: Counters::default(),
            fatal: Notify::new(),
            request_samples: StdMutex::new(VecDeque::new()),
            volume_report: StdMutex::new(None),
        });
        Ok((server, report))
    }

    pub fn store(&self) -> &Store<D> {
        &self.store
    }

    /// This server's statistics (for `Request::Stats` and the metrics endpoint).
    pub async fn stats(&self) -> ServerStats {
        let meta = self.store.meta().await;
        self.stats_with(&meta).await
    }

    async fn stats_with(&self, meta: &Meta) -> ServerStats {
        let stats = self.store.stats().await;
        ServerStats {
            records: stats.records,
            tombstones: stats.tombstones,
            live_bytes: stats.live_bytes,
            log_bytes: stats.log_bytes,
            requests: self.counters.requests.load(Ordering::Relaxed),
            duplicate_requests: self.counters.duplicate_requests.load(Ordering::Relaxed),
            rejected_frames: self.counters.rejected_frames.load(Ordering::Relaxed),
            corrupt_entries_seen: stats.corrupt_entries_seen,
            torn_tail_bytes_truncated: stats.torn_tail_bytes_truncated,
            compacted_entries: stats.compacted_entries,
            usage: self.env.process_usage(),
            uptime_ms: (self.env.now() - self.started_at).as_millis() as u64,
            recovering: meta.recovering,
            promised_epoch: meta.promised_epoch,
            restarts: self.options.restarts,
            request_rate_milli: self.request_rate_milli(),
            record_bytes_sent: self.counters.record_bytes_sent.load(Ordering::Relaxed),
            record_bytes_stored: self.counters.record_bytes_stored.load(Ordering::Relaxed),
            deep_scrubbed_entries: stats.deep_scrubbed_entries,
            deep_scrub_damage_found: stats.deep_scrub_damage_found,
            tombstones_dropped: stats.tombstones_dropped,
            overloaded_answers: self.counters.overloaded_answers.load(Ordering::Relaxed),
            blank: meta.volume.is_none(),
            frame_bytes_received: self.counters.frame_bytes_received.load(Ordering::Relaxed),
            frame_bytes_sent: self.counters.frame_bytes_sent.load(Ordering::Relaxed),
            volume_report: self
                .volume_report
                .lock()
                .expect("volume report lock poisoned")
                .clone(),
        }
    }

    /// Note the request count now, for the request rate.
    fn sample_requests(&self) {
        let now = self.env.now();
        let requests = self.counters.requests.load(Ordering::Relaxed);
        let mut samples = self
            .request_samples
            .lock()
            .expect("request samples lock poisoned");
        samples.push_back((now, requests));
        while samples
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > REQUEST_RATE_WINDOW)
        {
            samples.pop_front();
        }
        // One sample per maintenance tick: bounded by the window over the tick interval.
        assert!(samples.len() <= 100_000);
    }

    fn request_rate_milli(&self) -> u64 {
        let samples = self
            .request_samples
            .lock()
            .expect("request samples lock poisoned");
        match (samples.front(), samples.back()) {
            (Some((first_at, first_count)), Some((last_at, last_count))) if last_at > first_at => {
                let elapsed_ms = (*last_at - *first_at).as_millis().max(1) as u64;
                (last_count - first_count).saturating_mul(1_000_000) / elapsed_ms
            }
            _ => 0,
        }
    }

    fn fail(&self, error: StoreError) -> Response {
        if let StoreError::Fatal(_) = error {
            tracing::error!(%error, "stopping: the store can no longer guarantee durability");
            self.fatal.notify_one();
        }
        Response::Failed(error.to_string())
    }

    /// The answer to a request addressed to `volume` that this server may not serve, if any.
    fn refusal(meta: &Meta, volume: VolumeId) -> Option<Response> {
        match meta.volume {
            None => Some(Response::Blank),
            Some(ours) if ours != volume => Some(Response::Refused(format!(
                "this server belongs to volume {ours:032x}, not {volume:032x}"
            ))),
            Some(_) => None,
        }
    }

    /// Answer one request. Used by the serve loop, the simulator and the fuzzers alike.
    pub async fn handle(&self, request_id: RequestId, request: Request) -> Response {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let in_flight = self.counters.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let _in_flight = InFlight(&self.counters.in_flight);
        if in_flight > self.options.max_in_flight_requests && matches!(request, Request::Get { .. })
        {
            // Writes must still land (a majority needs us when a bank is down); a read can be
            // served by another bank.
            self.counters
                .overloaded_answers
                .fetch_add(1, Ordering::Relaxed);
            return Response::Overloaded;
        }
        let stored_bytes = match &request {
            Request::Put { record, .. } => record.value.len() as u64,
            _ => 0,
        };
        let mutating = request.is_mutating();
        if mutating {
            let duplicates = self
                .duplicates
                .lock()
                .expect("duplicate window lock poisoned");
            if let Some(answer) = duplicates.answers.get(&request_id) {
                self.counters
                    .duplicate_requests
                    .fetch_add(1, Ordering::Relaxed);
                return answer.clone();
            }
        }
        let response = self.handle_fresh(request).await;
        match &response {
            Response::Found(record) | Response::Unvouched(record) => {
                self.counters
                    .record_bytes_sent
                    .fetch_add(record.value.len() as u64, Ordering::Relaxed);
            }
            Response::Stored => {
                self.counters
                    .record_bytes_stored
                    .fetch_add(stored_bytes, Ordering::Relaxed);
            }
            _ => {}
        }
        // Remember only answers that settle the request: a failure may succeed on retry, and a
        // blank server becomes a member (Join) before the same request is sent again.
        if mutating && !matches!(response, Response::Failed(_) | Response::Blank) {
            self.duplicates
                .lock()
                .expect("duplicate window lock poisoned")
                .remember(request_id, response.clone());
        }
        response
    }

    async fn handle_fresh(&self, request: Request) -> Response {
        let meta = self.store.meta().await;
        match request {
            Request::Identify => Response::Identity(Identity {
                state: match (meta.volume, meta.member) {
                    (Some(volume), Some(member)) => ServerState::Member {
                        volume,
                        member,
                        recovering: meta.recovering,
                        formatting: meta.formatting,
                    },
                    _ => ServerState::Blank,
                },
                promised_epoch: meta.promised_epoch,
                recovery_generation: meta.recovery_generation,
                format_ballot: meta.format_ballot,
            }),
            Request::Format {
                volume,
                member,
                ballot,
            } => {
                if meta.volume.is_some() && !meta.formatting {
                    return if meta.volume == Some(volume) && meta.member == Some(member) {
                        Response::Done
                    } else {
                        Response::Refused("this server already belongs to a volume".into())
                    };
                }
                // Records can only belong to the volume this server already names (a client may
                // write to a member whose commit it missed): never move them to another volume.
                let stats = self.store.stats().await;
                if stats.records + stats.tombstones > 0 && meta.volume != Some(volume) {
                    return Response::Refused(
                        "this data directory holds records but no volume identity; empty it or join it to its volume"
                            .into(),
                    );
                }
                // Take the format only under a newer ballot (an uncommitted format holds nothing,
                // so a newer one may replace it); an identical retry is answered again.
                let mut taken = false;
                let result = self
                    .store
                    .update_meta(|meta| {
                        let same = meta.format_ballot == ballot
                            && meta.volume == Some(volume)
                            && meta.member == Some(member)
                            && meta.formatting;
                        if same
                            || ballot <= meta.format_ballot
                            || (meta.volume.is_some() && !meta.formatting)
                        {
                            taken = same;
                            return false;
                        }
                        meta.volume = Some(volume);
                        meta.member = Some(member);
                        meta.recovering = false;
                        meta.formatting = true;
                        meta.format_ballot = ballot;
                        taken = true;
                        true
                    })
                    .await;
                match result {
                    Ok(_) if taken => Response::Done,
                    Ok(_) => {
                        Response::Refused("a newer format of this server is in progress".into())
                    }
                    Err(error) => self.fail(error),
                }
            }
            Request::CommitFormat { volume, ballot } => {
                let mut committed = false;
                let result = self
                    .store
                    .update_meta(|meta| {
                        if meta.volume != Some(volume) {
                            return false;
                        }
                        if !meta.formatting {
                            committed = true;
                            return false;
                        }
                        if meta.format_ballot != ballot {
                            return false;
                        }
                        meta.formatting = false;
                        committed = true;
                        true
                    })
                    .await;
                match result {
                    Ok(_) if committed => Response::Done,
                    Ok(_) => Response::Refused(
                        "another format of this server took over before the commit".into(),
                    ),
                    Err(error) => self.fail(error),
                }
            }
            Request::Join {
                volume,
                member,
                epoch,
            } => {
                // Decide inside the meta update: concurrent Joins must count as one loss, not one
                // recovery generation each.
                let result = self
                    .store
                    .update_meta(|meta| {
                        if meta.volume.is_some() {
                            return false;
                        }
                        meta.volume = Some(volume);
                        meta.member = Some(member);
                        meta.recovering = true;
                        meta.formatting = false;
                        meta.recovery_generation += 1;
                        meta.promised_epoch = meta.promised_epoch.max(epoch);
                        true
                    })
                    .await;
                match result {
                    Ok(meta) if meta.volume == Some(volume) && meta.member == Some(member) => {
                        Response::Done
                    }
                    Ok(_) => Response::Refused("this server already belongs to a volume".into()),
                    Err(error) => self.fail(error),
                }
            }
            Request::GrantEpoch {
                volume,
                epoch,
                writer,
            } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                let mut granted = false;
                let result = self
                    .store
                    .update_meta(|meta| {
                        if epoch > meta.promised_epoch {
                            meta.promised_epoch = epoch;
                            meta.promised_writer = writer;
                            granted = true;
                            true
                        } else {
                            granted =
                                epoch == meta.promised_epoch && writer == meta.promised_writer;
                            false
                        }
                    })
                    .await;
                match result {
                    Ok(meta) if granted => {
                        tracing::info!(epoch = meta.promised_epoch, "granted a new epoch");
                        Response::EpochGranted
                    }
                    Ok(meta) => Response::EpochRefused {
                        promised_epoch: meta.promised_epoch,
                    },
                    Err(error) => self.fail(error),
                }
            }
            Request::Get { volume, key } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                if meta.recovering {
                    return match self.store.get(&key).await {
                        Ok(GetOutcome::Found(record)) => Response::Unvouched(record),
                        Ok(GetOutcome::Corrupt) => Response::Corrupt,
                        Ok(GetOutcome::NotFound | GetOutcome::Lost) => Response::Recovering,
                        Err(error) => self.fail(error),
                    };
                }
                match self.store.get(&key).await {
                    Ok(GetOutcome::Found(record)) => Response::Found(record),
                    Ok(GetOutcome::NotFound) => Response::NotFound,
                    Ok(GetOutcome::Corrupt) => Response::Corrupt,
                    Ok(GetOutcome::Lost) => Response::Recovering,
                    Err(error) => self.fail(error),
                }
            }
            Request::Put {
                volume,
                writer_epoch,
                record,
                repair,
            } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                if writer_epoch < meta.promised_epoch {
                    return Response::Fenced {
                        promised_epoch: meta.promised_epoch,
                    };
                }
                if !record.tag_is_valid(&self.cluster_key) {
                    return Response::Refused(
                        "the record's tag does not verify under this cluster's key".into(),
                    );
                }
                if writer_epoch > meta.promised_epoch {
                    // A writer whose epoch we missed: learn it, so older ones are fenced here too.
                    let writer = record.version.writer;
                    if let Err(error) = self
                        .store
                        .update_meta(|meta| {
                            if writer_epoch > meta.promised_epoch {
                                meta.promised_epoch = writer_epoch;
                                meta.promised_writer = writer;
                                true
                            } else {
                                false
                            }
                        })
                        .await
                    {
                        return self.fail(error);
                    }
                }
                let rollback = (self.options.planted_bug
                    == Some(crate::planted::PlantedBug::ServerAcceptsOlderVersion))
                .then(|| record.clone());
                match self.store.put(record, repair).await {
                    Ok(PutOutcome::HaveNewer(_)) if rollback.is_some() => {
                        let record = rollback.expect("checked above");
                        match self.store.append_unchecked(record).await {
                            Ok(()) => Response::Stored,
                            Err(error) => self.fail(error),
                        }
                    }
                    Ok(PutOutcome::Stored) => Response::Stored,
                    Ok(PutOutcome::HaveNewer(version)) => Response::HaveNewer { version },
                    Ok(PutOutcome::Conflict) => Response::Conflict,
                    Err(StoreError::Invalid(message)) => Response::Refused(message),
                    Err(error) => self.fail(error),
                }
            }
            Request::List {
                volume,
                prefix,
                start_after,
                limit,
            } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                if meta.recovering {
                    return Response::Recovering;
                }
                let limit = limit.clamp(1, MAX_LIST_ENTRIES) as usize;
                match self
                    .store
                    .list(&prefix, start_after.as_deref(), limit)
                    .await
                {
                    Some((entries, complete)) => Response::Listing { entries, complete },
                    None => Response::Recovering,
                }
            }
            Request::MarkHealthy {
                volume,
                recovery_generation,
            } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                let result = self
                    .store
                    .update_meta(|meta| {
                        let clear =
                            meta.recovering && meta.recovery_generation == recovery_generation;
                        if clear {
                            meta.recovering = false;
                        }
                        clear
                    })
                    .await;
                match result {
                    Ok(meta) if !meta.recovering => {
                        tracing::info!("a complete scrub pass refilled this server: healthy again");
                        Response::Done
                    }
                    Ok(_) => Response::Refused(
                        "this server lost data again after that pass started".into(),
                    ),
                    Err(error) => self.fail(error),
                }
            }
            Request::Stats => Response::Stats(Box::new(self.stats_with(&meta).await)),
            Request::Dump {
                prefix,
                start_after,
                limit,
            } => {
                let limit = limit.clamp(1, MAX_LIST_ENTRIES) as usize;
                match self
                    .store
                    .dump(&self.cluster_key, &prefix, start_after.as_deref(), limit)
                    .await
                {
                    Ok((entries, complete)) => Response::Dump { entries, complete },
                    Err(error) => self.fail(error),
                }
            }
            Request::Digests { volume } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                Response::Digests(self.store.digests().await)
            }
            Request::BucketEntries {
                volume,
                buckets,
                start_after,
                limit,
            } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                let buckets: BTreeSet<u32> = buckets.into_iter().collect();
                let limit = limit.clamp(1, MAX_LIST_ENTRIES) as usize;
                let (entries, complete) = self
                    .store
                    .bucket_entries(&buckets, start_after.as_deref(), limit)
                    .await;
                Response::Listing { entries, complete }
            }
            Request::DeepScrub {
                volume,
                start_after,
                max_bytes,
            } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                let max_bytes = max_bytes.clamp(1, MAX_DEEP_SCRUB_STEP_BYTES);
                match self
                    .store
                    .deep_scrub(&self.cluster_key, start_after.as_deref(), max_bytes)
                    .await
                {
                    Ok(progress) => Response::DeepScrubbed(progress),
                    Err(error) => self.fail(error),
                }
            }
            Request::ForgetUnusable { volume, key } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                self.store.forget_unusable(&key).await;
                Response::Done
            }
            Request::ReportVolume { volume, report } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                let mut latest = self
                    .volume_report
                    .lock()
                    .expect("volume report lock poisoned");
                let mut report = report;
                if let Some(current) = latest.as_ref() {
                    // Reports from a mount and from `votefs scrub` interleave: keep the newest,
                    // but never forget a complete pass either of them saw.
                    report.last_complete_pass_unix_ms = report
                        .last_complete_pass_unix_ms
                        .max(current.last_complete_pass_unix_ms);
                }
                if latest
                    .as_ref()
                    .is_none_or(|current| current.reported_at_unix_ms <= report.reported_at_unix_ms)
                {
                    *latest = Some(report);
                }
                Response::Done
            }
            Request::DropTombstones { volume, tombstones } => {
                if let Some(answer) = Self::refusal(&meta, volume) {
                    return answer;
                }
                let tombstones: Vec<(Vec<u8>, crate::record::Version)> = tombstones
                    .into_iter()
                    .map(|(key, version)| (key.into_vec(), version))
                    .collect();
                let dropped = self.store.drop_tombstones(&tombstones).await;
                Response::Dropped {
                    tombstones: dropped,
                }
            }
            Request::Inject { key, fault } => {
                if !self.options.allow_fault_injection {
                    return Response::Refused(
                        "fault injection is disabled on this server (start it with --allow-fault-injection)"
                            .into(),
                    );
                }
                tracing::warn!(key = %crate::record::display_key(&key), ?fault, "injecting a fault");
                match self.store.inject(&self.cluster_key, &key, fault).await {
                    Ok(()) => Response::Done,
                    Err(StoreError::Invalid(message)) => Response::Refused(message),
                    Err(error) => self.fail(error),
                }
            }
        }
    }

    /// Serve connections on `listener` until `shutdown` completes (clean stop) or the store fails
    /// fatally (an error: the process must restart and recover).
    pub async fn serve(
        self: Arc<Self>,
        listener: E::Listener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let weak = Arc::downgrade(&self);
        let maintenance_env = self.env.clone();
        let interval = self.options.maintenance_interval;
        self.env.spawn(async move {
            loop {
                maintenance_env.sleep(interval).await;
                let Some(server) = weak.upgrade() else { return };
                if server.store.is_poisoned() {
                    return;
                }
                server.sample_requests();
                // A few segments per tick at most, so that compaction never hogs the store.
                for _step in 0..4 {
                    match server.store.compact_step().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(error) => {
                            server.fail(error);
                            return;
                        }
                    }
                }
            }
        });
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("shutting down");
                    return Ok(());
                }
                () = self.fatal.notified() => {
                    return Err(StoreError::Fatal("the store failed; restart to recover".into()).into());
                }
                accepted = self.env.accept(&listener) => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let connections = self.counters.connections.fetch_add(1, Ordering::AcqRel);
                    if connections >= self.options.max_connections {
                        self.counters.connections.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(%peer, "refusing a connection: too many open");
                        continue;
                    }
                    let server = self.clone();
                    self.env.spawn(async move {
                        server.serve_connection(stream, peer).await;
                        server.counters.connections.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    // Out of descriptors and the like: do not spin.
                    self.env.sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn serve_connection(self: &Arc<Self>, stream: E::Stream, peer: std::net::SocketAddr) {
        if let Err(error) = self.clone().connection_loop(stream, peer).await {
            match error {
                FrameError::Closed => tracing::debug!(%peer, "connection closed"),
                error => tracing::warn!(%peer, %error, "dropping connection"),
            }
        }
    }

    async fn connection_loop(
        self: Arc<Self>,
        stream: E::Stream,
        peer: std::net::SocketAddr,
    ) -> Result<(), FrameError> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let server_nonce = random_u128(&self.env).to_le_bytes();
        let handshake = async {
            write_frame(&mut writer, &encode_hello(&server_nonce)).await?;
            let hello = read_frame(&mut reader).await?;
            decode_hello(&hello)
        };
        let client_nonce = match timeout(&self.env, self.options.handshake_timeout, handshake).await
        {
            Ok(Ok(nonce)) => nonce,
            Ok(Err(FrameError::Closed)) => return Err(FrameError::Closed),
            Ok(Err(error)) => {
                self.counters
                    .rejected_frames
                    .fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
            Err(_) => {
                self.counters
                    .rejected_frames
                    .fetch_add(1, Ordering::Relaxed);
                return Err(FrameError::Malformed("no hello in time".into()));
            }
        };
        let mut inbound = FrameCodec::new(
            self.cluster_key.clone(),
            Direction::ClientToServer,
            client_nonce,
            server_nonce,
        );
        let mut outbound = FrameCodec::new(
            self.cluster_key.clone(),
            Direction::ServerToClient,
            client_nonce,
            server_nonce,
        );
        let capacity = self.options.max_in_flight_per_connection;
        let (sender, mut receiver) = mpsc::channel::<Outgoing>(capacity);
        let writer_server = self.clone();
        self.env.spawn(async move {
            let mut buffer = Vec::new();
            while let Some(first) = receiver.recv().await {
                buffer.clear();
                let mut next = Some(first);
                let mut reject = false;
                // Batch whatever is ready into one write.
                while let Some(outgoing) = next.take() {
                    match outgoing {
                        Outgoing::Answer(request_id, response) => {
                            push_frame(&mut buffer, &outbound.seal(request_id, &response));
                        }
                        Outgoing::Reject => {
                            push_frame(&mut buffer, &encode_rejection());
                            reject = true;
                        }
                    }
                    if buffer.len() < 1 << 20 {
                        next = receiver.try_recv().ok();
                    }
                }
                if writer.write_all(&buffer).await.is_err() || writer.flush().await.is_err() {
                    return;
                }
                writer_server
                    .counters
                    .frame_bytes_sent
                    .fetch_add(buffer.len() as u64, Ordering::Relaxed);
                if reject {
                    let _ = writer.shutdown().await;
                    return;
                }
            }
        });
        let permits = Arc::new(Semaphore::new(capacity));
        loop {
            let frame = match timeout(
                &self.env,
                self.options.idle_timeout,
                read_frame(&mut reader),
            )
            .await
            {
                Ok(Ok(frame)) => {
                    // With its length prefix, as it crossed the network.
                    self.counters
                        .frame_bytes_received
                        .fetch_add(frame.len() as u64 + 4, Ordering::Relaxed);
                    frame
                }
                Ok(Err(FrameError::Closed)) => return Err(FrameError::Closed),
                Ok(Err(error)) => {
                    // Oversized, truncated or unreadable: hostile or broken, counted either way.
                    self.counters
                        .rejected_frames
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(error);
                }
                Err(_) => return Err(FrameError::Malformed("idle timeout".into())),
            };
            let (request_id, request) = match inbound.open::<Request>(&frame) {
                Ok(opened) => opened,
                Err(error) => {
                    self.counters
                        .rejected_frames
                        .fetch_add(1, Ordering::Relaxed);
                    if matches!(error, FrameError::Authentication) {
                        let _ = sender.send(Outgoing::Reject).await;
                    }
                    tracing::warn!(%peer, %error, "refusing a frame");
                    return Err(error);
                }
            };
            let permit = permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let server = self.clone();
            let sender = sender.clone();
            self.env.spawn(async move {
                let response = server.handle(request_id, request).await;
                let _ = sender.send(Outgoing::Answer(request_id, response)).await;
                drop(permit);
            });
        }
    }
}
