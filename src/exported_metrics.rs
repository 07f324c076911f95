//! What votefs exports on its Prometheus endpoints (`votefs server --metrics ADDR` and
//! `votefs mount|up --metrics ADDR`), DESIGN §6: per-server health and traffic, and per-mount
//! repairs, heal backlog, refresh passes and per-operation latency.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::{LatencyHistogram, MetricsText};
use crate::placement::Placement;
use crate::proto::ServerStats;
use crate::quorum::ClientStats;
use crate::scrub::RefreshStatus;

/// One server's metrics, from its stats.
pub fn render_server(stats: &ServerStats) -> String {
    let mut text = MetricsText::new();
    text.gauge(
        "votefs_server_records",
        "Live records stored.",
        &[],
        stats.records,
    )
    .gauge(
        "votefs_server_tombstones",
        "Tombstones stored.",
        &[],
        stats.tombstones,
    )
    .gauge(
        "votefs_server_live_bytes",
        "Bytes of live log entries.",
        &[],
        stats.live_bytes,
    )
    .gauge(
        "votefs_server_log_bytes",
        "Bytes of all log segments.",
        &[],
        stats.log_bytes,
    )
    .gauge(
        "votefs_server_recovering",
        "1 while the server may have lost data and waits for a refresh pass.",
        &[],
        u64::from(stats.recovering),
    )
    .gauge(
        "votefs_server_blank",
        "1 while the server has no volume yet.",
        &[],
        u64::from(stats.blank),
    )
    .gauge(
        "votefs_server_restarts",
        "Times the supervisor restarted this server.",
        &[],
        stats.restarts,
    )
    .gauge(
        "votefs_server_requests_per_second",
        "Requests per second over the last seconds.",
        &[],
        stats.request_rate_milli as f64 / 1000.0,
    )
    .counter(
        "votefs_server_requests_total",
        "Requests handled.",
        &[],
        stats.requests,
    )
    .counter(
        "votefs_server_duplicate_requests_total",
        "Retried requests answered from the duplicate window.",
        &[],
        stats.duplicate_requests,
    )
    .counter(
        "votefs_server_rejected_frames_total",
        "Frames refused (authentication, malformed, late hello).",
        &[],
        stats.rejected_frames,
    )
    .counter(
        "votefs_server_record_bytes_sent_total",
        "Record value bytes sent to clients.",
        &[],
        stats.record_bytes_sent,
    )
    .counter(
        "votefs_server_record_bytes_stored_total",
        "Record value bytes stored for clients.",
        &[],
        stats.record_bytes_stored,
    )
    .counter(
        "votefs_server_frame_bytes_received_total",
        "Bytes of frames received, length prefixes included.",
        &[],
        stats.frame_bytes_received,
    )
    .counter(
        "votefs_server_frame_bytes_sent_total",
        "Bytes of frames sent, length prefixes included.",
        &[],
        stats.frame_bytes_sent,
    )
    .counter(
        "votefs_server_corrupt_entries_seen_total",
        "Stored entries that failed a check when read.",
        &[],
        stats.corrupt_entries_seen,
    )
    .counter(
        "votefs_server_deep_scrubbed_entries_total",
        "Entries re-read from disk by the deep scrub.",
        &[],
        stats.deep_scrubbed_entries,
    )
    .counter(
        "votefs_server_deep_scrub_damage_found_total",
        "Entries the deep scrub found damaged.",
        &[],
        stats.deep_scrub_damage_found,
    )
    .counter(
        "votefs_server_tombstones_dropped_total",
        "Tombstones dropped once every copy held them.",
        &[],
        stats.tombstones_dropped,
    )
    .counter(
        "votefs_server_compacted_entries_total",
        "Entries moved by compaction.",
        &[],
        stats.compacted_entries,
    )
    .counter(
        "votefs_server_overloaded_answers_total",
        "Reads refused because too many requests were in flight.",
        &[],
        stats.overloaded_answers,
    )
    .counter(
        "votefs_server_cpu_seconds_total",
        "CPU time used by the process.",
        &[],
        stats.usage.cpu_time_ms as f64 / 1000.0,
    )
    .gauge(
        "votefs_server_resident_bytes",
        "Resident memory of the process.",
        &[],
        stats.usage.resident_bytes,
    )
    .gauge(
        "votefs_server_uptime_seconds",
        "Time since the server started.",
        &[],
        stats.uptime_ms as f64 / 1000.0,
    );
    text.finish()
}

/// Latency of each file-system operation a mount served, by operation name.
#[derive(Default)]
pub struct OperationLatencies {
    histograms: Mutex<BTreeMap<&'static str, Arc<LatencyHistogram>>>,
}

impl OperationLatencies {
    pub fn observe(&self, operation: &'static str, duration: Duration) {
        let histogram = self
            .histograms
            .lock()
            .expect("latency histograms lock poisoned")
            .entry(operation)
            .or_insert_with(|| Arc::new(LatencyHistogram::new()))
            .clone();
        histogram.observe(duration);
    }

    fn render(&self, text: &mut MetricsText) {
        let histograms: Vec<(&'static str, Arc<LatencyHistogram>)> = self
            .histograms
            .lock()
            .expect("latency histograms lock poisoned")
            .iter()
            .map(|(name, histogram)| (*name, histogram.clone()))
            .collect();
        for (operation, histogram) in histograms {
            text.histogram(
                "votefs_mount_operation_duration_seconds",
                "Time to serve each file-system operation, by operation.",
                &[("operation", operation)],
                &histogram.snapshot(),
            );
        }
    }
}

/// One mount's metrics.
pub fn render_mount(
    client: &ClientStats,
    placement: &Placement,
    refresh: &RefreshStatus,
    latencies: &OperationLatencies,
) -> String {
    let mut text = MetricsText::new();
    for (cause, count) in [
        ("lagging", client.repairs_lagging),
        ("missing", client.repairs_missing),
        ("corrupt", client.repairs_corrupt),
        ("recovering", client.repairs_recovering),
    ] {
        text.counter(
            "votefs_mount_repairs_total",
            "Copies repaired (read-repair, backlog and refresh), by cause.",
            &[("cause", cause)],
            count,
        );
    }
    text.gauge(
        "votefs_mount_heal_backlog",
        "Copies known to have missed a write, waiting for the healer.",
        &[],
        client.backlog,
    )
    .counter(
        "votefs_mount_write_backs_total",
        "Reads that wrote the winner back to a quorum first.",
        &[],
        client.write_backs,
    )
    .counter(
        "votefs_mount_unavailable_reads_total",
        "Reads that found fewer valid copies than a quorum (EIO).",
        &[],
        client.unavailable_reads,
    )
    .counter(
        "votefs_mount_reads_needing_third_bank_total",
        "Reads that asked beyond the best two banks.",
        &[],
        client.reads_needing_third_bank,
    );
    for (server, requests) in client.read_requests_per_server.iter().enumerate() {
        let address = placement.address(server).to_string();
        text.counter(
            "votefs_mount_server_reads_total",
            "Read requests sent to each server.",
            &[("server", &address)],
            *requests,
        );
    }
    if let Some(volume) = &refresh.volume {
        text.counter(
            "votefs_refresh_passes_total",
            "Refresh passes run.",
            &[],
            volume.passes,
        )
        .counter(
            "votefs_refresh_complete_passes_total",
            "Refresh passes that reached every server and settled every key.",
            &[],
            volume.complete_passes,
        )
        .gauge(
            "votefs_refresh_last_pass_duration_seconds",
            "Duration of the last refresh pass.",
            &[],
            volume.last_pass_duration_ms as f64 / 1000.0,
        );
        if let Some(at) = volume.last_complete_pass_unix_ms {
            text.gauge(
                "votefs_refresh_last_complete_pass_timestamp_seconds",
                "When the last complete refresh pass ended (Unix time).",
                &[],
                at as f64 / 1000.0,
            );
        }
    }
    if let Some(pass) = &refresh.last_pass {
        text.gauge(
            "votefs_refresh_last_pass_buckets_differing",
            "Digest buckets that differed between banks in the last pass.",
            &[],
            pass.buckets_differing,
        )
        .gauge(
            "votefs_refresh_last_pass_keys_examined",
            "Keys the last pass voted on.",
            &[],
            pass.keys_examined,
        )
        .gauge(
            "votefs_refresh_last_pass_deep_scrub_damage_found",
            "Damaged entries the last pass's deep scrub found.",
            &[],
            pass.deep_scrub_damage_found,
        );
    }
    latencies.render(&mut text);
    text.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::VolumeReport;

    #[test]
    fn server_metrics_carry_the_record_traffic_and_health() {
        let stats = ServerStats {
            records: 7,
            record_bytes_sent: 1234,
            recovering: true,
            restarts: 2,
            ..ServerStats::default()
        };
        let text = render_server(&stats);
        assert!(text.contains("votefs_server_records 7\n"), "{text}");
        assert!(
            text.contains("votefs_server_record_bytes_sent_total 1234\n"),
            "{text}"
        );
        assert!(text.contains("votefs_server_recovering 1\n"), "{text}");
        assert!(text.contains("votefs_server_restarts 2\n"), "{text}");
        assert!(
            text.contains("# TYPE votefs_server_requests_total counter"),
            "{text}"
        );
    }

    #[test]
    fn mount_metrics_carry_repairs_backlog_passes_and_latency() {
        let placement = Placement::new(vec![
            vec!["127.0.0.1:7000".parse().unwrap()],
            vec!["127.0.0.1:8000".parse().unwrap()],
            vec!["127.0.0.1:9000".parse().unwrap()],
        ])
        .unwrap();
        let client = ClientStats {
            repairs_corrupt: 3,
            backlog: 5,
            read_requests_per_server: vec![1, 2, 3],
            ..ClientStats::default()
        };
        let refresh = RefreshStatus {
            volume: Some(VolumeReport {
                passes: 4,
                complete_passes: 3,
                last_pass_duration_ms: 1500,
                ..VolumeReport::default()
            }),
            last_pass: None,
        };
        let latencies = OperationLatencies::default();
        latencies.observe("read", Duration::from_micros(300));
        let text = render_mount(&client, &placement, &refresh, &latencies);
        assert!(
            text.contains("votefs_mount_repairs_total{cause=\"corrupt\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("votefs_mount_heal_backlog 5\n"), "{text}");
        assert!(text.contains("votefs_refresh_passes_total 4\n"), "{text}");
        assert!(
            text.contains("votefs_refresh_last_pass_duration_seconds 1.5\n"),
            "{text}"
        );
        assert!(
            text.contains("votefs_mount_server_reads_total{server=\"127.0.0.1:9000\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("votefs_mount_operation_duration_seconds_count{operation=\"read\"} 1\n"),
            "{text}"
        );
    }
}
