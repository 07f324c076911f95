//! Which owners a read asks first (DESIGN §5 "Read"): a per-server estimate of round-trip
//! latency and load, kept by the client.
//!
//! A read needs two valid, agreeing answers from two banks. Any two banks of three intersect every
//! majority, so two agreeing answers from *any* two banks include a copy of every acknowledged
//! write: which two banks are asked first is a matter of speed only, never of safety. This module
//! only orders servers; the vote itself stays in [`crate::quorum`].
//!
//! Contract:
//! - Time comes only from the caller (the `Env` clock), never from `std::time`, so the same code
//!   behaves identically under the simulator.
//! - Randomness comes only from the caller (a tie-breaker drawn from the client's seeded `Env`),
//!   and every structure is a `Vec` indexed by server: no hash-map order reaches a decision.
//! - Memory is one small record per server, fixed at construction.
//! - The latency estimate is the smoothed round-trip time and its mean deviation of RFC 6298
//!   (gains 1/8 and 1/4), fed only by answered requests. A server not sampled for
//!   [`ServerChoiceOptions::reprobe_after`] restarts its estimate from the next sample: an old
//!   estimate says nothing about the server now.
//! - A server that answered `Overloaded` is *avoided* for
//!   [`ServerChoiceOptions::avoid_after_overload`], and one whose request failed for
//!   [`ServerChoiceOptions::avoid_after_failure`] or until it answers again: an avoided server is
//!   ranked after every server that is not, whatever its latency, and is never probed.
//! - Load is the number of requests in flight to a server from this client; a server's score is
//!   its latency estimate times one plus its load, lowest first.
//! - A server has *spare capacity* when it is not avoided, not busy and not much slower than the
//!   servers a read asked: a read may then check its copy in the background, for read-repair
//!   only, at no cost to the caller. Among equal servers every copy is still checked by every
//!   read, as before load-aware reads; an outlier (slow, busy, overloaded) is spared.

use std::sync::Mutex;
use std::time::Duration;

use crate::placement::ServerIndex;

/// Tuning of [`ServerChoice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerChoiceOptions {
    /// A hedge (asking one more owner because one asked is slow) never waits less than this.
    pub hedge_floor: Duration,
    /// A hedge never waits more than this.
    pub hedge_ceiling: Duration,
    /// The hedge delay of a server without an estimate yet.
    pub hedge_without_estimate: Duration,
    /// The latency assumed for ranking a server without an estimate: optimistic, so that unknown
    /// servers get asked and measured.
    pub latency_without_estimate: Duration,
    /// How long a server that answered `Overloaded` is avoided.
    pub avoid_after_overload: Duration,
    /// How long a server whose request failed (unreachable, timed out) is avoided.
    pub avoid_after_failure: Duration,
    /// A server not asked for this long is asked again along with the best ones, so that its
    /// estimate follows what it is now (a slow server may have recovered).
    pub reprobe_after: Duration,
    /// A server has spare capacity (see [`ServerChoice::has_spare_capacity`]) only if its latency
    /// is at most this many times that of the slowest server a read asked...
    pub spare_latency_factor: u32,
    /// ...plus this much, so that sub-millisecond noise between equal servers does not count.
    pub spare_latency_slack: Duration,
    /// ...and it has at most this many requests from this client in flight.
    pub spare_in_flight: u64,
}

impl Default for ServerChoiceOptions {
    fn default() -> Self {
        Self {
            hedge_floor: Duration::from_millis(5),
            hedge_ceiling: Duration::from_millis(500),
            hedge_without_estimate: Duration::from_millis(100),
            latency_without_estimate: Duration::from_millis(1),
            avoid_after_overload: Duration::from_secs(1),
            avoid_after_failure: Duration::from_secs(1),
            reprobe_after: Duration::from_secs(2),
            spare_latency_factor: 2,
            spare_latency_slack: Duration::from_millis(5),
            spare_in_flight: 8,
        }
    }
}

impl ServerChoiceOptions {
    /// The defaults, with the hedge ceiling kept at or below half of `request_timeout`: a hedge
    /// that waits for most of the timeout would not save the caller anything.
    pub fn for_request_timeout(request_timeout: Duration) -> Self {
        let mut options = Self::default();
        options.hedge_ceiling = options
            .hedge_ceiling
            .min(request_timeout / 2)
            .max(options.hedge_floor);
        options.hedge_without_estimate = options
            .hedge_without_estimate
            .clamp(options.hedge_floor, options.hedge_ceiling);
        options
    }
}

/// How a request to a server ended, as far as choosing servers cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The server answered (whatever it said about the key): the round trip is a latency sample.
    Answered,
    /// The server said it is overloaded: avoid it for a while.
    Overloaded,
    /// No usable answer (unreachable, timed out, protocol error): avoid it for a while.
    Failed,
}

/// What this client knows about one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerLoad {
    /// Smoothed round-trip time, in microseconds; `None` before the first answer.
    pub smoothed_latency_us: Option<u64>,
    /// Mean deviation of the round-trip time, in microseconds.
    pub latency_deviation_us: u64,
    /// Requests sent and not finished yet.
    pub in_flight: u64,
    /// Requests sent so far.
    pub requests: u64,
    pub overloaded_answers: u64,
    pub failures: u64,
    /// When the last latency sample arrived (the caller's clock).
    pub last_sample_at: Option<Duration>,
    /// When the last request was sent.
    pub last_asked_at: Option<Duration>,
    /// Avoided until this instant because it answered `Overloaded`.
    pub overloaded_until: Option<Duration>,
    /// Avoided until this instant (or until it answers again) because a request failed.
    pub failed_until: Option<Duration>,
}

impl ServerLoad {
    /// Ranked after every server that is not avoided.
    pub fn avoided(&self, now: Duration) -> bool {
        let active = |until: Option<Duration>| until.is_some_and(|until| now < until);
        active(self.overloaded_until) || active(self.failed_until)
    }

    fn due_for_probe(&self, now: Duration, reprobe_after: Duration) -> bool {
        self.last_asked_at
            .is_none_or(|asked| now.saturating_sub(asked) >= reprobe_after)
    }
}

/// The owners one read should ask, best first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadPlan {
    /// Ask these at once.
    pub first: Vec<ServerIndex>,
    /// Ask these, best first, only when needed (disagreement, failure, slowness).
    pub later: Vec<ServerIndex>,
    /// `first` includes a server beyond the best ones, to refresh its estimate.
    pub probing: bool,
}

/// Per-server latency and load as seen by one client. Shared by all of its reads.
#[derive(Debug)]
pub struct ServerChoice {
    options: ServerChoiceOptions,
    servers: Mutex<Vec<ServerLoad>>,
}

/// A request in flight to one server. Finish it with [`InFlight::finish`]; dropping it unfinished
/// (the request was abandoned) only gives the load back.
#[derive(Debug)]
pub struct InFlight<'a> {
    choice: &'a ServerChoice,
    server: ServerIndex,
    started_at: Duration,
    finished: bool,
}

impl ServerChoice {
    pub fn new(server_count: usize, options: ServerChoiceOptions) -> Self {
        Self {
            options,
            servers: Mutex::new(vec![ServerLoad::default(); server_count]),
        }
    }

    pub fn options(&self) -> &ServerChoiceOptions {
        &self.options
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ServerLoad>> {
        self.servers.lock().expect("server choice lock poisoned")
    }

    /// Order `owners` for a read that needs `wanted` answers: servers not avoided before avoided
    /// ones, then by score (latency estimate × (1 + in-flight requests)), ties broken by
    /// `tie_breaker` (drawn by the caller from its seeded generator). The best `wanted` go in
    /// `first`; a remaining owner not asked for [`ServerChoiceOptions::reprobe_after`] and not
    /// avoided joins them (a probe); the rest go in `later`, best first.
    pub fn plan(
        &self,
        owners: &[ServerIndex],
        wanted: usize,
        now: Duration,
        tie_breaker: u64,
    ) -> ReadPlan {
        let servers = self.lock();
        let default_latency_us = self.options.latency_without_estimate.as_micros() as u64;
        let count = owners.len().max(1);
        let rotation = (tie_breaker % count as u64) as usize;
        let mut ranked: Vec<(bool, u128, usize, ServerIndex)> = owners
            .iter()
            .enumerate()
            .map(|(position, server)| {
                let load = &servers[*server];
                let latency_us = load
                    .smoothed_latency_us
                    .unwrap_or(default_latency_us)
                    .max(1);
                let score = u128::from(latency_us) * u128::from(load.in_flight + 1);
                let tie = (position + count - rotation) % count;
                (load.avoided(now), score, tie, *server)
            })
            .collect();
        ranked.sort();
        let mut first: Vec<ServerIndex> = Vec::with_capacity(owners.len());
        let mut later: Vec<ServerIndex> = Vec::new();
        let mut probing = false;
        for (rank, (avoided, _, _, server)) in ranked.into_iter().enumerate() {
            if rank < wanted {
                first.push(server);
            } else if !avoided
                && servers[server].due_for_probe(now, self.options.reprobe_after)
                && !probing
            {
                first.push(server);
                probing = true;
            } else {
                later.push(server);
            }
        }
        ReadPlan {
            first,
            later,
            probing,
        }
    }

    /// Note a request sent to `server` at `now`.
    pub fn begin(&self, server: ServerIndex, now: Duration) -> InFlight<'_> {
        let mut servers = self.lock();
        let load = &mut servers[server];
        load.in_flight += 1;
        load.requests += 1;
        load.last_asked_at = Some(now);
        InFlight {
            choice: self,
            server,
            started_at: now,
            finished: false,
        }
    }

    /// How long a read waits for `server` before asking one more owner: the smoothed round trip
    /// plus four deviations (RFC 6298's retransmission timeout), within the floor and ceiling.
    pub fn hedge_delay(&self, server: ServerIndex) -> Duration {
        let servers = self.lock();
        let load = &servers[server];
        let options = &self.options;
        match load.smoothed_latency_us {
            None => options.hedge_without_estimate,
            Some(smoothed_us) => {
                let delay_us =
                    smoothed_us.saturating_add(load.latency_deviation_us.saturating_mul(4));
                Duration::from_micros(delay_us).clamp(options.hedge_floor, options.hedge_ceiling)
            }
        }
    }

    /// Whether `server` can take a request that nobody waits for (a read-repair check of an owner
    /// a read did not need) without being the outlier the read avoided: it is not avoided, has at
    /// most [`ServerChoiceOptions::spare_in_flight`] requests in flight, and its latency estimate
    /// (if it has one) is within [`ServerChoiceOptions::spare_latency_factor`] times the slowest
    /// estimate among `asked`, plus [`ServerChoiceOptions::spare_latency_slack`].
    pub fn has_spare_capacity(
        &self,
        server: ServerIndex,
        asked: &[ServerIndex],
        now: Duration,
    ) -> bool {
        let servers = self.lock();
        let options = &self.options;
        let load = &servers[server];
        if load.avoided(now) || load.in_flight > options.spare_in_flight {
            return false;
        }
        let slowest_asked_us = asked
            .iter()
            .filter_map(|asked| servers[*asked].smoothed_latency_us)
            .max();
        match (load.smoothed_latency_us, slowest_asked_us) {
            (Some(latency_us), Some(slowest_us)) => {
                let limit_us = slowest_us
                    .saturating_mul(u64::from(options.spare_latency_factor))
                    .saturating_add(options.spare_latency_slack.as_micros() as u64);
                latency_us <= limit_us
            }
            // Nothing to compare with: an unmeasured server gets measured.
            _ => true,
        }
    }

    /// What is known about every server, by server index.
    pub fn snapshot(&self) -> Vec<ServerLoad> {
        self.lock().clone()
    }

    fn record(
        &self,
        server: ServerIndex,
        started_at: Duration,
        now: Duration,
        outcome: RequestOutcome,
    ) {
        let mut servers = self.lock();
        let options = &self.options;
        let load = &mut servers[server];
        load.in_flight = load.in_flight.saturating_sub(1);
        match outcome {
            RequestOutcome::Answered => {
                let sample_us = now.saturating_sub(started_at).as_micros() as u64;
                let stale = load
                    .last_sample_at
                    .is_none_or(|at| now.saturating_sub(at) >= options.reprobe_after);
                match load.smoothed_latency_us {
                    Some(smoothed_us) if !stale => {
                        let difference_us = smoothed_us.abs_diff(sample_us);
                        load.latency_deviation_us =
                            (3 * load.latency_deviation_us + difference_us) / 4;
                        load.smoothed_latency_us = Some((7 * smoothed_us + sample_us) / 8);
                    }
                    _ => {
                        load.smoothed_latency_us = Some(sample_us);
                        load.latency_deviation_us = sample_us / 2;
                    }
                }
                load.last_sample_at = Some(now);
                // It is reachable again; an overload, though, is waited out.
                load.failed_until = None;
            }
            RequestOutcome::Overloaded => {
                load.overloaded_answers += 1;
                load.overloaded_until = Some(now + options.avoid_after_overload);
            }
            RequestOutcome::Failed => {
                load.failures += 1;
                load.failed_until = Some(now + options.avoid_after_failure);
            }
        }
    }
}

impl InFlight<'_> {
    /// The request ended at `now` with `outcome`.
    pub fn finish(mut self, now: Duration, outcome: RequestOutcome) {
        self.finished = true;
        self.choice
            .record(self.server, self.started_at, now, outcome);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut servers = self.choice.lock();
            let load = &mut servers[self.server];
            load.in_flight = load.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    /// Answer one request to `server` that took `latency`, starting at `now`.
    fn answer(choice: &ServerChoice, server: ServerIndex, now: Duration, latency: Duration) {
        choice
            .begin(server, now)
            .finish(now + latency, RequestOutcome::Answered);
    }

    #[test]
    fn the_two_fastest_are_asked_first() {
        let choice = ServerChoice::new(3, ServerChoiceOptions::default());
        let now = millis(1000);
        answer(&choice, 0, now, millis(2));
        answer(&choice, 1, now, millis(50));
        answer(&choice, 2, now, millis(3));
        for tie_breaker in 0..6 {
            let plan = choice.plan(&[0, 1, 2], 2, now + millis(10), tie_breaker);
            assert_eq!(plan.first, vec![0, 2]);
            assert_eq!(plan.later, vec![1]);
            assert!(!plan.probing);
        }
    }

    #[test]
    fn unknown_servers_tie_and_the_tie_breaker_spreads_them() {
        let choice = ServerChoice::new(3, ServerChoiceOptions::default());
        let firsts: std::collections::BTreeSet<Vec<ServerIndex>> = (0..3)
            .map(|tie_breaker| {
                // Nothing was asked yet, so the plan also probes the third: look at the best two.
                let plan = choice.plan(&[0, 1, 2], 2, Duration::ZERO, tie_breaker);
                let mut first = plan.first.clone();
                first.truncate(2);
                first
            })
            .collect();
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        // The same tie-breaker gives the same plan: nothing else is random.
        assert_eq!(
            choice.plan(&[0, 1, 2], 2, Duration::ZERO, 7),
            choice.plan(&[0, 1, 2], 2, Duration::ZERO, 7)
        );
    }

    #[test]
    fn load_moves_reads_to_an_idle_server() {
        let choice = ServerChoice::new(3, ServerChoiceOptions::default());
        let now = millis(1000);
        for server in 0..3 {
            answer(&choice, server, now, millis(10));
        }
        let busy: Vec<InFlight<'_>> = (0..4).map(|_| choice.begin(0, now)).collect();
        assert_eq!(choice.snapshot()[0].in_flight, 4);
        let plan = choice.plan(&[0, 1, 2], 2, now, 0);
        assert_eq!(plan.first, vec![1, 2]);
        // Abandoned requests give their load back.
        drop(busy);
        assert_eq!(choice.snapshot()[0].in_flight, 0);
        assert_eq!(choice.snapshot()[0].requests, 5);
    }

    #[test]
    fn the_estimate_is_smoothed_and_a_stale_one_restarts() {
        let options = ServerChoiceOptions::default();
        let choice = ServerChoice::new(1, options.clone());
        let mut now = millis(1000);
        answer(&choice, 0, now, millis(8));
        assert_eq!(choice.snapshot()[0].smoothed_latency_us, Some(8_000));
        assert_eq!(choice.snapshot()[0].latency_deviation_us, 4_000);
        now += millis(100);
        answer(&choice, 0, now, millis(16));
        // 7/8 of 8 ms plus 1/8 of 16 ms; deviation 3/4 of 4 ms plus 1/4 of 8 ms.
        assert_eq!(choice.snapshot()[0].smoothed_latency_us, Some(9_000));
        assert_eq!(choice.snapshot()[0].latency_deviation_us, 5_000);
        // Long after the last sample, the next one replaces the estimate.
        now += options.reprobe_after + millis(100);
        answer(&choice, 0, now, millis(1));
        assert_eq!(choice.snapshot()[0].smoothed_latency_us, Some(1_000));
    }

    #[test]
    fn hedge_delay_follows_the_estimate_within_bounds() {
        let options = ServerChoiceOptions::default();
        let choice = ServerChoice::new(3, options.clone());
        assert_eq!(choice.hedge_delay(0), options.hedge_without_estimate);
        let now = millis(1000);
        answer(&choice, 0, now, millis(10));
        // 10 ms plus four deviations of 5 ms.
        assert_eq!(choice.hedge_delay(0), millis(30));
        answer(&choice, 1, now, Duration::from_micros(100));
        assert_eq!(choice.hedge_delay(1), options.hedge_floor);
        answer(&choice, 2, now, millis(10_000));
        assert_eq!(choice.hedge_delay(2), options.hedge_ceiling);
    }

    #[test]
    fn the_ceiling_stays_below_half_the_request_timeout() {
        let options = ServerChoiceOptions::for_request_timeout(millis(200));
        assert_eq!(options.hedge_ceiling, millis(100));
        assert!(options.hedge_without_estimate <= options.hedge_ceiling);
        let tiny = ServerChoiceOptions::for_request_timeout(millis(1));
        assert!(tiny.hedge_floor <= tiny.hedge_ceiling);
    }

    #[test]
    fn an_overloaded_server_is_avoided_for_the_cooldown() {
        let options = ServerChoiceOptions::default();
        let choice = ServerChoice::new(3, options.clone());
        let now = millis(1000);
        answer(&choice, 0, now, millis(1));
        answer(&choice, 1, now, millis(5));
        answer(&choice, 2, now, millis(9));
        choice
            .begin(0, now + millis(10))
            .finish(now + millis(11), RequestOutcome::Overloaded);
        let during = choice.plan(&[0, 1, 2], 2, now + millis(500), 0);
        assert_eq!(during.first, vec![1, 2]);
        assert_eq!(during.later, vec![0]);
        let after = choice.plan(
            &[0, 1, 2],
            2,
            now + millis(11) + options.avoid_after_overload,
            0,
        );
        assert_eq!(after.first[..2], [0, 1]);
        assert_eq!(choice.snapshot()[0].overloaded_answers, 1);
        // An overloaded answer is not a latency sample.
        assert_eq!(choice.snapshot()[0].smoothed_latency_us, Some(1_000));
    }

    #[test]
    fn a_failed_server_is_avoided_but_still_asked_when_nothing_else_is_left() {
        let choice = ServerChoice::new(3, ServerChoiceOptions::default());
        let now = millis(1000);
        for server in 0..3 {
            answer(&choice, server, now, millis(1));
        }
        choice
            .begin(1, now)
            .finish(now + millis(2), RequestOutcome::Failed);
        choice
            .begin(2, now)
            .finish(now + millis(2), RequestOutcome::Failed);
        let plan = choice.plan(&[0, 1, 2], 2, now + millis(3), 0);
        assert_eq!(plan.first.len(), 2);
        assert_eq!(plan.first[0], 0);
        assert_eq!(plan.first.len() + plan.later.len(), 3);
        assert_eq!(choice.snapshot()[1].failures, 1);
        // An answer shows the server is reachable again: it is no longer avoided.
        answer(&choice, 1, now + millis(4), millis(1));
        assert!(!choice.snapshot()[1].avoided(now + millis(6)));
        assert!(choice.snapshot()[2].avoided(now + millis(6)));
    }

    #[test]
    fn a_server_not_asked_for_a_while_is_probed_once() {
        let options = ServerChoiceOptions::default();
        let choice = ServerChoice::new(3, options.clone());
        let start = millis(1000);
        answer(&choice, 0, start, millis(1));
        answer(&choice, 1, start, millis(1));
        answer(&choice, 2, start, millis(80));
        let soon = choice.plan(&[0, 1, 2], 2, start + millis(500), 0);
        assert_eq!((soon.first.clone(), soon.probing), (vec![0, 1], false));
        let later = start + options.reprobe_after + millis(1);
        let probe = choice.plan(&[0, 1, 2], 2, later, 0);
        assert_eq!((probe.first.clone(), probe.probing), (vec![0, 1, 2], true));
        assert!(probe.later.is_empty());
        // Once asked, the server waits for the next interval.
        let _request = choice.begin(2, later);
        let next = choice.plan(&[0, 1, 2], 2, later + millis(1), 0);
        assert!(!next.probing);
    }

    #[test]
    fn spare_capacity_excludes_slow_busy_and_avoided_servers() {
        let options = ServerChoiceOptions::default();
        let choice = ServerChoice::new(4, options.clone());
        let now = millis(1000);
        answer(&choice, 0, now, millis(10));
        answer(&choice, 1, now, millis(12));
        // Comparable: within twice the slowest asked plus the slack.
        answer(&choice, 2, now, millis(25));
        assert!(choice.has_spare_capacity(2, &[0, 1], now + millis(30)));
        // Unmeasured: worth measuring.
        assert!(choice.has_spare_capacity(3, &[0, 1], now + millis(30)));
        // Far slower than the servers asked.
        answer(&choice, 3, now, millis(200));
        assert!(!choice.has_spare_capacity(3, &[0, 1], now + millis(300)));
        // Equal servers in microseconds: the slack absorbs the noise.
        let fast = ServerChoice::new(3, options.clone());
        answer(&fast, 0, now, Duration::from_micros(100));
        answer(&fast, 1, now, Duration::from_micros(120));
        answer(&fast, 2, now, Duration::from_micros(900));
        assert!(fast.has_spare_capacity(2, &[0, 1], now + millis(2)));
        // Busy.
        let busy: Vec<InFlight<'_>> = (0..=options.spare_in_flight)
            .map(|_| fast.begin(2, now + millis(3)))
            .collect();
        assert!(!fast.has_spare_capacity(2, &[0, 1], now + millis(3)));
        drop(busy);
        assert!(fast.has_spare_capacity(2, &[0, 1], now + millis(3)));
        // Avoided.
        fast.begin(2, now + millis(4))
            .finish(now + millis(5), RequestOutcome::Overloaded);
        assert!(!fast.has_spare_capacity(2, &[0, 1], now + millis(6)));
    }

    #[test]
    fn fewer_owners_than_wanted_asks_them_all() {
        let choice = ServerChoice::new(2, ServerChoiceOptions::default());
        let plan = choice.plan(&[1, 0], 3, Duration::ZERO, 5);
        let mut first = plan.first.clone();
        first.sort();
        assert_eq!(first, vec![0, 1]);
        assert!(plan.later.is_empty());
        assert_eq!(
            choice.plan(&[], 2, Duration::ZERO, 5).first,
            Vec::<usize>::new()
        );
    }
}
