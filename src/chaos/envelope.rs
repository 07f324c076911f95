//! The fault envelope of a chaos run (DESIGN §8): at most one bank's worth of damage at a time.
//!
//! Once a fault hits a server of bank `b`, later faults may only hit servers of bank `b` (any
//! number of them, any kind: every key has one copy per bank, so they all damage the same one
//! copy of each key) until the cluster is healthy again. Healthy means: every server answers,
//! none is blank or recovering, the mount's heal backlog is empty in a volume report made after
//! the last fault ended, and a complete refresh pass that *started* after the last fault ended
//! has finished (the chaos runner's own; it deep-scrubs every entry, so rot that nobody reads and
//! that `status` cannot show is found and repaired before another bank may be hit).

use crate::admin::ClusterStatus;

/// What `votefs status` says about the cluster's health, reduced to what the envelope needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterHealth {
    /// Servers that did not answer, are blank or are recovering, as `address state`.
    pub unsettled_servers: Vec<String>,
    /// The heal backlog of the newest volume report, and when that report was made.
    pub heal_backlog: Option<u64>,
    pub reported_at_unix_ms: Option<u64>,
}

impl ClusterHealth {
    pub fn from_status(status: &ClusterStatus) -> Self {
        Self {
            unsettled_servers: status
                .servers
                .iter()
                .filter(|server| !server.up || server.state != "healthy")
                .map(|server| format!("{} {}", server.address, server.state))
                .collect(),
            heal_backlog: status.volume.as_ref().map(|report| report.heal_backlog),
            reported_at_unix_ms: status
                .volume
                .as_ref()
                .map(|report| report.reported_at_unix_ms),
        }
    }

    /// Healthy, judged by a volume report made after `since_unix_ms`.
    pub fn is_healthy_since(&self, since_unix_ms: u64) -> bool {
        self.unsettled_servers.is_empty()
            && self.heal_backlog == Some(0)
            && self
                .reported_at_unix_ms
                .is_some_and(|reported_at| reported_at > since_unix_ms)
    }

    /// Why the cluster is not healthy (for progress lines), or "healthy".
    pub fn describe(&self, since_unix_ms: u64) -> String {
        let mut reasons = self.unsettled_servers.clone();
        match (self.heal_backlog, self.reported_at_unix_ms) {
            (None, _) | (_, None) => reasons.push("no volume report yet".into()),
            (Some(backlog), Some(reported_at)) => {
                if backlog > 0 {
                    reasons.push(format!("heal backlog {backlog}"));
                }
                if reported_at <= since_unix_ms {
                    reasons.push("no volume report since the last fault".into());
                }
            }
        }
        if reasons.is_empty() {
            "healthy".into()
        } else {
            reasons.join(", ")
        }
    }
}

/// Which banks the next fault may hit.
#[derive(Clone, Debug)]
pub struct Envelope {
    beyond_envelope: bool,
    /// The bank faults have hit since the cluster was last healthy.
    disturbed_bank: Option<usize>,
    faults_in_progress: usize,
    /// When the latest fault ended (Unix ms); the cluster must be seen healthy after it.
    last_fault_ended_unix_ms: u64,
}

impl Envelope {
    pub fn new(beyond_envelope: bool) -> Self {
        Self {
            beyond_envelope,
            disturbed_bank: None,
            faults_in_progress: 0,
            last_fault_ended_unix_ms: 0,
        }
    }

    /// The bank that faults are confined to until the cluster is healthy; `None` when it is.
    pub fn disturbed_bank(&self) -> Option<usize> {
        self.disturbed_bank
    }

    pub fn is_disturbed(&self) -> bool {
        self.disturbed_bank.is_some() || self.faults_in_progress > 0
    }

    pub fn last_fault_ended_unix_ms(&self) -> u64 {
        self.last_fault_ended_unix_ms
    }

    /// Whether a fault on `bank` now stays within one bank's worth of damage.
    pub fn is_within(&self, bank: usize) -> bool {
        self.disturbed_bank
            .is_none_or(|disturbed| disturbed == bank)
    }

    /// The banks the next fault may hit: every bank beyond the envelope or when the cluster is
    /// healthy, otherwise only the disturbed one.
    pub fn allowed_banks(&self, bank_count: usize) -> Vec<usize> {
        match self.disturbed_bank {
            Some(bank) if !self.beyond_envelope => vec![bank],
            _ => (0..bank_count).collect(),
        }
    }

    pub fn fault_started(&mut self, bank: usize) {
        self.faults_in_progress += 1;
        // Beyond the envelope a second bank may be hit; remember the first one, which is only
        // used to tell within from beyond.
        self.disturbed_bank.get_or_insert(bank);
    }

    pub fn fault_ended(&mut self, at_unix_ms: u64) {
        self.faults_in_progress = self.faults_in_progress.saturating_sub(1);
        self.last_fault_ended_unix_ms = self.last_fault_ended_unix_ms.max(at_unix_ms);
    }

    /// Free the envelope when the cluster is healthy after the last fault and a complete pass
    /// started after it. Returns whether this call freed it.
    pub fn observe(
        &mut self,
        health: &ClusterHealth,
        last_complete_pass_started_unix_ms: Option<u64>,
    ) -> bool {
        if self.disturbed_bank.is_none() || self.faults_in_progress > 0 {
            return false;
        }
        let since = self.last_fault_ended_unix_ms;
        let passed = last_complete_pass_started_unix_ms.is_some_and(|started| started > since);
        if passed && health.is_healthy_since(since) {
            self.disturbed_bank = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_at(reported_at_unix_ms: u64) -> ClusterHealth {
        ClusterHealth {
            unsettled_servers: Vec::new(),
            heal_backlog: Some(0),
            reported_at_unix_ms: Some(reported_at_unix_ms),
        }
    }

    #[test]
    fn faults_stay_in_one_bank_until_the_cluster_is_healthy_again() {
        let mut envelope = Envelope::new(false);
        assert_eq!(envelope.allowed_banks(3), [0, 1, 2]);
        assert!(!envelope.is_disturbed());

        envelope.fault_started(1);
        assert_eq!(envelope.allowed_banks(3), [1]);
        assert!(envelope.is_within(1) && !envelope.is_within(0));
        // Nothing frees it while the fault is still being injected.
        assert!(!envelope.observe(&healthy_at(2_000), Some(2_000)));
        envelope.fault_ended(1_000);
        assert_eq!(envelope.allowed_banks(3), [1]);

        // A report from before the fault ended proves nothing.
        assert!(!envelope.observe(&healthy_at(900), Some(1_500)));
        // Nor does a pass that started before it ended.
        assert!(!envelope.observe(&healthy_at(1_500), Some(800)));
        // A server still recovering, or a backlog, keeps it too.
        let mut recovering = healthy_at(1_500);
        recovering
            .unsettled_servers
            .push("127.0.0.1:8001 recovering".into());
        assert!(!envelope.observe(&recovering, Some(1_200)));
        let backlog = ClusterHealth {
            heal_backlog: Some(3),
            ..healthy_at(1_500)
        };
        assert!(!envelope.observe(&backlog, Some(1_200)));
        assert_eq!(envelope.allowed_banks(3), [1]);

        assert!(envelope.observe(&healthy_at(1_500), Some(1_200)));
        assert_eq!(envelope.allowed_banks(3), [0, 1, 2]);
        assert!(!envelope.is_disturbed());
        // Already free: nothing to free again.
        assert!(!envelope.observe(&healthy_at(1_600), Some(1_300)));
    }

    #[test]
    fn beyond_the_envelope_any_bank_may_be_hit_but_it_is_told_apart() {
        let mut envelope = Envelope::new(true);
        envelope.fault_started(2);
        assert_eq!(envelope.allowed_banks(3), [0, 1, 2]);
        assert!(envelope.is_within(2));
        assert!(!envelope.is_within(0));
        envelope.fault_started(0);
        envelope.fault_ended(10);
        envelope.fault_ended(20);
        assert_eq!(envelope.last_fault_ended_unix_ms(), 20);
        assert!(envelope.observe(&healthy_at(30), Some(25)));
    }

    #[test]
    fn health_names_what_is_missing() {
        let health = ClusterHealth {
            unsettled_servers: vec!["127.0.0.1:7000 down".into()],
            heal_backlog: Some(2),
            reported_at_unix_ms: Some(5),
        };
        assert!(!health.is_healthy_since(0));
        assert_eq!(
            health.describe(10),
            "127.0.0.1:7000 down, heal backlog 2, no volume report since the last fault"
        );
        assert_eq!(healthy_at(11).describe(10), "healthy");
        assert!(!ClusterHealth::default().is_healthy_since(0));
    }
}
