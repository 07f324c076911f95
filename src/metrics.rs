//! Metrics in the Prometheus text exposition format (version 0.0.4) and a minimal HTTP endpoint
//! that serves them.
//!
//! Three pieces, usable apart:
//!
//! - [`MetricsText`] builds one exposition: counters, gauges and histograms grouped by metric
//!   family, with `# HELP` and `# TYPE` once per family and escaped label values.
//! - [`LatencyHistogram`] counts durations into fixed exponential buckets with atomics only, so
//!   that hot paths record latencies without a lock. It never reads a clock: callers measure
//!   durations with their own (the simulator's virtual clock included) and pass them in.
//! - [`serve_metrics`] answers `GET /metrics` over plain HTTP/1.x with tokio alone, bounded in
//!   connections, request size and time, so that a scraper (or a hostile client) costs little.
//!
//! Like [`crate::config`], the endpoint is process glue: the replicated core never depends on it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The `Content-Type` of the text exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What kind of metric a family holds; it names the `# TYPE` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only ever goes up (until the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into cumulative buckets, with their sum and count.
    Histogram,
}

impl MetricKind {
    fn type_name(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A number a sample can carry. Integers are written exactly (an `f64` would round counters above
/// 2^53); floats use the exposition format's spellings of infinities and NaN.
pub trait SampleValue {
    /// Append the value as the exposition format spells it.
    fn write_to(&self, out: &mut String);
}

macro_rules! integer_sample_value {
    ($($integer:ty),*) => {
        $(impl SampleValue for $integer {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        })*
    };
}

integer_sample_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl SampleValue for f64 {
    fn write_to(&self, out: &mut String) {
        // Rust spells these `inf` and `NaN`; Prometheus (Go's ParseFloat) wants `+Inf`/`-Inf`.
        if self.is_nan() {
            out.push_str("NaN");
        } else if *self == f64::INFINITY {
            out.push_str("+Inf");
        } else if *self == f64::NEG_INFINITY {
            out.push_str("-Inf");
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

impl SampleValue for f32 {
    fn write_to(&self, out: &mut String) {
        f64::from(*self).write_to(out);
    }
}

/// One metric family while it is being built: its header and its sample lines so far.
#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: MetricKind,
    samples: String,
}

/// A builder for one exposition in the Prometheus text format 0.0.4.
///
/// Samples of one family may be added in any order and interleaved with other families: the
/// format requires each family's lines to be contiguous, so they are kept per family and written
/// out in the order the families first appeared. Metric and label names are made valid by
/// replacing characters the format does not allow with `_`, so that a careless name never makes
/// the whole exposition unparseable.
#[derive(Debug, Default)]
pub struct MetricsText {
    families: Vec<Family>,
    /// Family name to its index in `families`.
    index: BTreeMap<String, usize>,
}

impl MetricsText {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one sample of counter `name`. `help` is used if this is the family's first sample.
    pub fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl SampleValue,
    ) -> &mut Self {
        self.sample(name, help, MetricKind::Counter, labels, value)
    }

    /// Add one sample of gauge `name`. `help` is used if this is the family's first sample.
    pub fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl SampleValue,
    ) -> &mut Self {
        self.sample(name, help, MetricKind::Gauge, labels, value)
    }

    /// Add histogram `name` with `labels`: one `name_bucket{le=...}` line per bucket (cumulative,
    /// ending with `le="+Inf"`), then `name_sum` and `name_count`. Bucket bounds and the sum are
    /// in seconds, the Prometheus base unit for time, so `name` should end in `_seconds`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        snapshot: &HistogramSnapshot,
    ) -> &mut Self {
        let name = sanitize_metric_name(name);
        let Some(family) = self.family(&name, help, MetricKind::Histogram) else {
            return self;
        };
        let mut cumulative = 0u64;
        for (upper_bound_seconds, count) in snapshot.bucket_upper_bounds_seconds().zip(
            snapshot
                .bucket_counts
                .iter()
                .take(snapshot.bucket_counts.len().saturating_sub(1)),
        ) {
            cumulative = cumulative.saturating_add(*count);
            let mut bound = String::new();
            upper_bound_seconds.write_to(&mut bound);
            write_sample(
                &mut family.samples,
                &name,
                "_bucket",
                labels,
                Some(("le", &bound)),
                cumulative,
            );
        }
        // The +Inf bucket is the count, which keeps the two equal as the format requires.
        let count = snapshot.count();
        write_sample(
            &mut family.samples,
            &name,
            "_bucket",
            labels,
            Some(("le", "+Inf")),
            count,
        );
        write_sample(
            &mut family.samples,
            &name,
            "_sum",
            labels,
            None,
            snapshot.sum_seconds(),
        );
        write_sample(&mut family.samples, &name, "_count", labels, None, count);
        self
    }

    /// The exposition text: every family's `# HELP` and `# TYPE` lines followed by its samples.
    pub fn finish(&self) -> String {
        let mut out = String::new();
        for family in &self.families {
            // No trailing space after an empty help text.
            let separator = if family.help.is_empty() { "" } else { " " };
            let _ = writeln!(
                out,
                "# HELP {}{separator}{}",
                family.name,
                escape_help(&family.help)
            );
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.type_name());
            out.push_str(&family.samples);
        }
        out
    }

    fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricKind,
        labels: &[(&str, &str)],
        value: impl SampleValue,
    ) -> &mut Self {
        let name = sanitize_metric_name(name);
        if let Some(family) = self.family(&name, help, kind) {
            write_sample(&mut family.samples, &name, "", labels, None, value);
        }
        self
    }

    /// The family `name`, made on first use. `None` when it exists with another kind: mixing
    /// kinds in one family would make the whole exposition invalid, so the sample is dropped.
    fn family(&mut self, name: &str, help: &str, kind: MetricKind) -> Option<&mut Family> {
        let position = match self.index.get(name) {
            Some(position) => *position,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    samples: String::new(),
                });
                self.index.insert(name.to_string(), self.families.len() - 1);
                self.families.len() - 1
            }
        };
        let family = &mut self.families[position];
        if family.kind != kind {
            tracing::warn!(
                "metric {name} is a {} but was given a {} sample; dropping the sample",
                family.kind.type_name(),
                kind.type_name()
            );
            return None;
        }
        Some(family)
    }
}

/// Append `name{suffix}{labels...,extra} value\n`.
fn write_sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    extra_label: Option<(&str, &str)>,
    value: impl SampleValue,
) {
    out.push_str(name);
    out.push_str(suffix);
    let all_labels = labels.iter().copied().chain(extra_label);
    let mut first = true;
    for (label, label_value) in all_labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(&sanitize_label_name(label));
        out.push_str("=\"");
        escape_label_value_into(out, label_value);
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    value.write_to(out);
    out.push('\n');
}

/// Metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`; anything else becomes `_`.
fn sanitize_metric_name(name: &str) -> String {
    sanitize(name, |character| character == ':')
}

/// Label names match `[a-zA-Z_][a-zA-Z0-9_]*`; anything else becomes `_`.
fn sanitize_label_name(name: &str) -> String {
    sanitize(name, |_| false)
}

fn sanitize(name: &str, also_allowed: impl Fn(char) -> bool) -> String {
    if name.is_empty() {
        return "_".to_string();
    }
    name.chars()
        .enumerate()
        .map(|(position, character)| {
            let allowed = character.is_ascii_alphabetic()
                || character == '_'
                || also_allowed(character)
                || (position > 0 && character.is_ascii_digit());
            if allowed {
                character
            } else {
                '_'
            }
        })
        .collect()
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
fn escape_label_value_into(out: &mut String, value: &str) {
    for character in value.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

/// Help text escapes backslash and line feed only (a quote needs no escape there).
fn escape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    for character in help.chars() {
        match character {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out
}

/// How many finite buckets a [`LatencyHistogram`] has.
pub const LATENCY_BUCKET_COUNT: usize = 19;

/// The smallest bucket's upper bound: 50 µs, about a loopback round trip.
const FIRST_BUCKET_UPPER_BOUND_NANOSECONDS: u64 = 50_000;

/// Upper bounds (inclusive) of the finite buckets: 50 µs doubling up to 50 µs * 2^18 ≈ 13.1 s, so
/// that both a cached read and a stalled quorum write land in a bucket of their own size.
const BUCKET_UPPER_BOUNDS_NANOSECONDS: [u64; LATENCY_BUCKET_COUNT] = {
    let mut bounds = [0u64; LATENCY_BUCKET_COUNT];
    let mut position = 0;
    while position < LATENCY_BUCKET_COUNT {
        bounds[position] = FIRST_BUCKET_UPPER_BOUND_NANOSECONDS << position;
        position += 1;
    }
    bounds
};

/// A lock-free latency histogram with fixed exponential buckets (50 µs, 100 µs, ... ≈ 13.1 s,
/// then +Inf).
///
/// Recording is a few relaxed atomic additions, so many tasks can share one histogram without a
/// lock. It never reads a clock: the caller measures with its own (real or simulated) and passes
/// the duration to [`LatencyHistogram::observe`].
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Per-bucket (not cumulative) counts; the last entry counts observations above every bound.
    bucket_counts: [AtomicU64; LATENCY_BUCKET_COUNT + 1],
    /// Sum of all observations, saturating (584 years of latency before it would).
    sum_nanoseconds: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            bucket_counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanoseconds: AtomicU64::new(0),
        }
    }

    /// Count one observation of `duration`.
    pub fn observe(&self, duration: Duration) {
        let nanoseconds = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        // Bounds are inclusive (`le`): the first bucket whose bound is at least the value.
        let bucket = BUCKET_UPPER_BOUNDS_NANOSECONDS.partition_point(|bound| *bound < nanoseconds);
        self.bucket_counts[bucket].fetch_add(1, Ordering::Relaxed);
        // fetch_update cannot fail with a closure that always returns Some.
        let _ = self
            .sum_nanoseconds
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                Some(sum.saturating_add(nanoseconds))
            });
    }

    /// A copy of the counts for rendering. Under concurrent [`observe`](Self::observe) calls the
    /// sum may be a moment ahead of or behind the buckets; the count is always the buckets' total.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bucket_counts: self
                .bucket_counts
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            sum_nanoseconds: self.sum_nanoseconds.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a [`LatencyHistogram`] at one moment, ready for [`MetricsText::histogram`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per-bucket counts, one per finite bound, then the overflow bucket.
    bucket_counts: Vec<u64>,
    sum_nanoseconds: u64,
}

impl HistogramSnapshot {
    /// How many observations the histogram holds.
    pub fn count(&self) -> u64 {
        self.bucket_counts
            .iter()
            .fold(0u64, |total, count| total.saturating_add(*count))
    }

    /// The sum of every observation, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanoseconds as f64 / 1e9
    }

    /// The finite buckets' upper bounds in seconds, smallest first.
    pub fn bucket_upper_bounds_seconds(&self) -> impl Iterator<Item = f64> {
        BUCKET_UPPER_BOUNDS_NANOSECONDS
            .iter()
            .map(|nanoseconds| *nanoseconds as f64 / 1e9)
    }

    /// Per-bucket (not cumulative) counts: one per finite bound, then the overflow bucket.
    pub fn bucket_counts(&self) -> &[u64] {
        &self.bucket_counts
    }
}

/// Renders the current metrics for one scrape. Asynchronous so that a renderer can ask other
/// tasks (or servers) for their numbers.
pub type RenderMetrics =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Limits of the metrics endpoint; [`serve_metrics`] uses the defaults.
#[derive(Clone, Debug)]
struct EndpointLimits {
    /// Connections served at once; further clients wait in the listen backlog.
    max_connections: usize,
    /// The request head (request line and headers) may be at most this long.
    max_head_bytes: usize,
    /// The whole head must arrive within this, so a slow client cannot hold a task forever.
    head_timeout: Duration,
    /// The answer must be written within this, so a client that never reads cannot either.
    write_timeout: Duration,
    /// Rendering may take at most this; a stuck renderer answers 503 instead of hanging.
    render_timeout: Duration,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_head_bytes: 8 * 1024,
            head_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            render_timeout: Duration::from_secs(10),
        }
    }
}

/// Serve the metrics `render` produces on `listener` over HTTP/1.x until the returned future is
/// dropped (dropping it also ends any connection still being served).
///
/// `GET /metrics` and `GET /` (and `HEAD` of either) answer `200 OK` with
/// `Content-Type: text/plain; version=0.0.4`; another path answers 404, another method 405, a
/// request that is not HTTP 400, and a head over 8 KiB 431. Every answer closes the connection
/// (`Connection: close`), so no keep-alive state is needed. At most 64 connections are served at
/// once, and each must send its request head within 5 seconds.
pub async fn serve_metrics(listener: TcpListener, render: RenderMetrics) {
    serve_with_limits(listener, render, EndpointLimits::default()).await
}

async fn serve_with_limits(listener: TcpListener, render: RenderMetrics, limits: EndpointLimits) {
    let limits = Arc::new(limits);
    // A JoinSet rather than detached tasks: dropping this future then aborts its connections.
    let mut connections = JoinSet::new();
    loop {
        // Collect finished connections so the set only holds live ones.
        while connections.try_join_next().is_some() {}
        if connections.len() >= limits.max_connections {
            // Stop accepting until one finishes: waiting clients queue in the kernel's backlog.
            connections.join_next().await;
            continue;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, _peer)) => {
                connections.spawn(serve_connection(
                    stream,
                    Arc::clone(&render),
                    Arc::clone(&limits),
                ));
            }
            Err(error) => {
                // Usually out of file descriptors: pause instead of spinning on the error.
                tracing::warn!("the metrics endpoint cannot accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a request asks for, once its head is parsed.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The metrics; `with_body` is false for HEAD.
    Metrics {
        with_body: bool,
    },
    /// Another path; `with_body` is false for HEAD.
    NotFound {
        with_body: bool,
    },
    MethodNotAllowed,
    BadRequest,
}

async fn serve_connection(
    mut stream: TcpStream,
    render: RenderMetrics,
    limits: Arc<EndpointLimits>,
) {
    let head = tokio::time::timeout(
        limits.head_timeout,
        read_head(&mut stream, limits.max_head_bytes),
    )
    .await;
    let head = match head {
        Ok(Ok(HeadRead::Complete(head))) => head,
        Ok(Ok(HeadRead::TooLarge)) => {
            let response = plain_response("431 Request Header Fields Too Large", "", true);
            write_response(&mut stream, &response, &limits).await;
            return;
        }
        // The client went away, failed, or was too slow: nobody is left to answer.
        Ok(Ok(HeadRead::Closed)) | Ok(Err(_)) | Err(_) => return,
    };
    let response = match route(&head) {
        Route::Metrics { with_body } => {
            match tokio::time::timeout(limits.render_timeout, render()).await {
                Ok(body) => {
                    let mut response = response_head("200 OK", CONTENT_TYPE, body.len(), "");
                    if with_body {
                        response.extend_from_slice(body.as_bytes());
                    }
                    response
                }
                Err(_) => plain_response("503 Service Unavailable", "", true),
            }
        }
        Route::NotFound { with_body } => plain_response("404 Not Found", "", with_body),
        Route::MethodNotAllowed => {
            plain_response("405 Method Not Allowed", "Allow: GET, HEAD\r\n", true)
        }
        Route::BadRequest => plain_response("400 Bad Request", "", true),
    };
    write_response(&mut stream, &response, &limits).await;
}

enum HeadRead {
    /// The bytes up to and including the blank line that ends the head.
    Complete(Vec<u8>),
    TooLarge,
    /// The client closed the connection before the head was complete.
    Closed,
}

/// Read until the blank line that ends a request head (`\r\n\r\n`, or bare `\n\n`), reading at
/// most `max_head_bytes`.
async fn read_head(stream: &mut TcpStream, max_head_bytes: usize) -> std::io::Result<HeadRead> {
    let mut head = Vec::with_capacity(1024.min(max_head_bytes));
    let mut chunk = [0u8; 1024];
    loop {
        let room = max_head_bytes.saturating_sub(head.len());
        if room == 0 {
            return Ok(HeadRead::TooLarge);
        }
        let wanted = room.min(chunk.len());
        let read = stream.read(&mut chunk[..wanted]).await?;
        if read == 0 {
            return Ok(HeadRead::Closed);
        }
        // Only the new bytes (and three before them) can complete the terminator.
        let search_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..read]);
        if let Some(end) = find_head_end(&head[search_from..]) {
            head.truncate(search_from + end);
            return Ok(HeadRead::Complete(head));
        }
    }
}

/// The length of the head in `bytes` including its terminating blank line, if it is complete.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    (0..bytes.len()).find_map(|position| {
        let rest = &bytes[position..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(position + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(position + 2)
        } else {
            None
        }
    })
}

/// Decide from the request line alone: the headers do not change the answer.
fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Route::MethodNotAllowed,
    };
    // The query string selects nothing here (Prometheus may add one); ignore it.
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" | "/" => Route::Metrics { with_body },
        _ => Route::NotFound { with_body },
    }
}

fn response_head(status: &str, content_type: &str, length: usize, extra_headers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         {extra_headers}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// An error answer whose body repeats the status line, for people who open it in a browser.
fn plain_response(status: &str, extra_headers: &str, with_body: bool) -> Vec<u8> {
    let body = format!("{status}\n");
    let mut response = response_head(
        status,
        "text/plain; charset=utf-8",
        body.len(),
        extra_headers,
    );
    if with_body {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

/// Write the answer and close our side; a client that stopped reading is simply dropped.
async fn write_response(stream: &mut TcpStream, response: &[u8], limits: &EndpointLimits) {
    let written = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(response).await?;
        stream.shutdown().await
    })
    .await;
    if let Ok(Err(error)) = written {
        tracing::debug!("a metrics client went away: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_have_one_header_per_family() {
        let mut text = MetricsText::new();
        text.counter(
            "votefs_requests_total",
            "Requests handled.",
            &[("kind", "get")],
            3u64,
        )
        .gauge("votefs_up", "Whether the server runs.", &[], 1u8)
        .counter(
            "votefs_requests_total",
            "ignored: the first help wins",
            &[("kind", "put")],
            u64::MAX,
        )
        .gauge("votefs_ratio", "A ratio.", &[], 0.25f64)
        .gauge("votefs_ratio", "", &[("edge", "inf")], f64::INFINITY)
        .gauge("votefs_ratio", "", &[("edge", "nan")], f64::NAN);
        assert_eq!(
            text.finish(),
            "# HELP votefs_requests_total Requests handled.\n\
             # TYPE votefs_requests_total counter\n\
             votefs_requests_total{kind=\"get\"} 3\n\
             votefs_requests_total{kind=\"put\"} 18446744073709551615\n\
             # HELP votefs_up Whether the server runs.\n\
             # TYPE votefs_up gauge\n\
             votefs_up 1\n\
             # HELP votefs_ratio A ratio.\n\
             # TYPE votefs_ratio gauge\n\
             votefs_ratio 0.25\n\
             votefs_ratio{edge=\"inf\"} +Inf\n\
             votefs_ratio{edge=\"nan\"} NaN\n"
        );
    }

    #[test]
    fn label_values_help_and_names_are_escaped() {
        let mut text = MetricsText::new();
        text.gauge(
            "bad-name.1",
            "line one\nback\\slash \"quoted\"",
            &[("path", "a\\b\"c\nd"), ("9bad label", "x")],
            -2i64,
        );
        assert_eq!(
            text.finish(),
            "# HELP bad_name_1 line one\\nback\\\\slash \"quoted\"\n\
             # TYPE bad_name_1 gauge\n\
             bad_name_1{path=\"a\\\\b\\\"c\\nd\",_bad_label=\"x\"} -2\n"
        );
    }

    #[test]
    fn an_empty_help_has_no_trailing_space() {
        let mut text = MetricsText::new();
        text.counter("votefs_bare_total", "", &[], 0u64);
        assert_eq!(
            text.finish(),
            "# HELP votefs_bare_total\n# TYPE votefs_bare_total counter\nvotefs_bare_total 0\n"
        );
    }

    #[test]
    fn a_sample_of_another_kind_is_dropped_not_mixed_in() {
        let mut text = MetricsText::new();
        text.counter("votefs_things", "Things.", &[], 1u32).gauge(
            "votefs_things",
            "Things.",
            &[],
            2u32,
        );
        assert_eq!(
            text.finish(),
            "# HELP votefs_things Things.\n# TYPE votefs_things counter\nvotefs_things 1\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let histogram = LatencyHistogram::new();
        // Exactly on a bound counts in that bucket (`le` is inclusive).
        histogram.observe(Duration::from_micros(50));
        histogram.observe(Duration::from_nanos(50_001));
        histogram.observe(Duration::from_micros(150));
        histogram.observe(Duration::from_millis(1));
        histogram.observe(Duration::from_secs(60));
        histogram.observe(Duration::MAX);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 6);
        let counts = snapshot.bucket_counts();
        assert_eq!(counts.len(), LATENCY_BUCKET_COUNT + 1);
        assert_eq!(&counts[..6], &[1, 1, 1, 0, 0, 1]);
        assert_eq!(counts[LATENCY_BUCKET_COUNT], 2);

        let mut text = MetricsText::new();
        text.histogram(
            "votefs_request_seconds",
            "Request latency.",
            &[("kind", "get")],
            &snapshot,
        );
        let text = text.finish();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# HELP votefs_request_seconds Request latency.");
        assert_eq!(lines[1], "# TYPE votefs_request_seconds histogram");
        assert_eq!(
            lines[2],
            "votefs_request_seconds_bucket{kind=\"get\",le=\"0.00005\"} 1"
        );
        assert_eq!(
            lines[3],
            "votefs_request_seconds_bucket{kind=\"get\",le=\"0.0001\"} 2"
        );
        assert_eq!(
            lines[4],
            "votefs_request_seconds_bucket{kind=\"get\",le=\"0.0002\"} 3"
        );
        assert_eq!(
            lines[7],
            "votefs_request_seconds_bucket{kind=\"get\",le=\"0.0016\"} 4"
        );
        assert_eq!(
            lines[2 + LATENCY_BUCKET_COUNT - 1],
            "votefs_request_seconds_bucket{kind=\"get\",le=\"13.1072\"} 4"
        );
        assert_eq!(
            lines[2 + LATENCY_BUCKET_COUNT],
            "votefs_request_seconds_bucket{kind=\"get\",le=\"+Inf\"} 6"
        );
        // The sum saturates rather than wrapping on the absurd Duration::MAX.
        assert_eq!(
            lines[3 + LATENCY_BUCKET_COUNT],
            format!(
                "votefs_request_seconds_sum{{kind=\"get\"}} {}",
                u64::MAX as f64 / 1e9
            )
        );
        assert_eq!(
            lines[4 + LATENCY_BUCKET_COUNT],
            "votefs_request_seconds_count{kind=\"get\"} 6"
        );
        assert_eq!(lines.len(), 5 + LATENCY_BUCKET_COUNT);

        // Cumulative counts never decrease.
        let bucket_values: Vec<u64> = lines[2..3 + LATENCY_BUCKET_COUNT]
            .iter()
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(bucket_values.windows(2).all(|pair| pair[0] <= pair[1]));
    }

    #[test]
    fn histogram_sum_is_in_seconds() {
        let histogram = LatencyHistogram::new();
        histogram.observe(Duration::from_millis(1500));
        histogram.observe(Duration::from_millis(500));
        let mut text = MetricsText::new();
        text.histogram("latency_seconds", "L.", &[], &histogram.snapshot());
        let text = text.finish();
        assert!(text.contains("\nlatency_seconds_sum 2\n"), "{text}");
        assert!(text.contains("\nlatency_seconds_count 2\n"), "{text}");
        assert!(
            text.contains("\nlatency_seconds_bucket{le=\"0.8192\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nlatency_seconds_bucket{le=\"1.6384\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn empty_histogram_renders_zeroes() {
        let mut text = MetricsText::new();
        text.histogram(
            "idle_seconds",
            "I.",
            &[],
            &LatencyHistogram::new().snapshot(),
        );
        let text = text.finish();
        assert!(
            text.contains("idle_seconds_bucket{le=\"+Inf\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("idle_seconds_sum 0\n"), "{text}");
        assert!(text.contains("idle_seconds_count 0\n"), "{text}");
    }

    #[test]
    fn requests_are_routed_by_their_request_line() {
        let check = |head: &[u8], expected: Route| assert_eq!(route(head), expected, "{head:?}");
        check(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            Route::Metrics { with_body: true },
        );
        check(
            b"GET / HTTP/1.0\r\n\r\n",
            Route::Metrics { with_body: true },
        );
        check(
            b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n",
            Route::Metrics { with_body: true },
        );
        check(
            b"HEAD /metrics HTTP/1.1\r\n\r\n",
            Route::Metrics { with_body: false },
        );
        check(
            b"GET /other HTTP/1.1\r\n\r\n",
            Route::NotFound { with_body: true },
        );
        check(
            b"HEAD /other HTTP/1.1\r\n\r\n",
            Route::NotFound { with_body: false },
        );
        check(b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed);
        check(b"GET /metrics HTTP/2\r\n\r\n", Route::BadRequest);
        check(b"GET /metrics\r\n\r\n", Route::BadRequest);
        check(b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest);
        check(b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest);
        check(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Route::BadRequest);
        check(b"\r\n\r\n", Route::BadRequest);
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(find_head_end(b""), None);
    }

    /// Send `request` on a fresh connection and read until the server closes it.
    async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        // The server may answer (and close) before an oversized request is fully sent.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        // A reset after the server closes counts as the end too: all we want is what arrived.
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn test_renderer() -> RenderMetrics {
        Arc::new(|| {
            Box::pin(async {
                let mut text = MetricsText::new();
                text.counter("votefs_test_total", "A test counter.", &[], 7u64);
                text.finish()
            })
        })
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_survives_bad_requests() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_metrics(listener, test_renderer()));

        let expected_body = "# HELP votefs_test_total A test counter.\n\
                             # TYPE votefs_test_total counter\n\
                             votefs_test_total 7\n";
        let answer = exchange(
            address,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
        )
        .await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
        let mut head_lines = head.lines();
        assert_eq!(head_lines.next(), Some("HTTP/1.1 200 OK"));
        let headers: Vec<&str> = head_lines.collect();
        assert!(
            headers.contains(&"Content-Type: text/plain; version=0.0.4"),
            "{headers:?}"
        );
        assert!(
            headers.contains(&format!("Content-Length: {}", expected_body.len()).as_str()),
            "{headers:?}"
        );
        assert!(headers.contains(&"Connection: close"), "{headers:?}");
        assert_eq!(body, expected_body);

        let answer = exchange(address, b"GET /nothing-here HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        let answer = exchange(address, b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
        assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"), "{answer}");

        let answer = exchange(address, b"\x00\x01\x02 garbage \xff\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        let oversized = vec![b'A'; 20 * 1024];
        let answer = exchange(address, &oversized).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
            "{answer}"
        );
        // A client that leaves half way through its head.
        drop(TcpStream::connect(address).await.unwrap());
        {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"GET /metr").await.unwrap();
        }

        let answer = exchange(address, b"HEAD / HTTP/1.0\n\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("\r\n\r\n"),
            "a HEAD answer has no body: {answer}"
        );

        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.ends_with(expected_body), "{answer}");
        assert!(!server.is_finished());
        server.abort();
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_and_connections_are_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = EndpointLimits {
            max_connections: 1,
            head_timeout: Duration::from_millis(300),
            ..EndpointLimits::default()
        };
        let server = tokio::spawn(serve_with_limits(listener, test_renderer(), limits));

        // The only connection slot is taken by a client that never speaks...
        let mut silent = TcpStream::connect(address).await.unwrap();
        // ...so this one waits in the backlog until the silent one times out.
        let waiting = tokio::spawn(exchange(address, b"GET /metrics HTTP/1.1\r\n\r\n"));
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut rest))
            .await
            .expect("the server closes a silent connection after its head timeout");
        assert!(read.is_err() || rest.is_empty(), "{rest:?}");
        let answer = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the waiting client is served once a slot frees")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        server.abort();
    }
}
