//! Supervision settings and the clock supervision reads.
//!
//! The sweeps themselves are part of the worker's (`worker.rs`): a silent agent is
//! degraded after two missed heartbeat intervals and failed once stale; a running task
//! with no progress for `stuck_after_ms` is marked stalled (`TaskStalled`), and the
//! `stall_policy` process manager applies its project's policy; every
//! `conductor_interval_ms`, open tasks of a project whose text is near-identical are
//! flagged (`DuplicateSuspected`) on the newer one; every `anomaly_interval_ms` each
//! agent's anomaly score is read (`anomaly`), and an anomalous reading recorded on the
//! agent, whose third in a row quarantines it. Every sweep step is
//! claimed (a lease's mark, a command the domain refuses twice), so replicas sweeping
//! together act once.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::trajectory::LlmConfig;

/// `monitoring` in the settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitoringConfig {
    /// How often agents are expected to heartbeat: one interval missed is a warning on
    /// the agent's health, two degrade it.
    pub heartbeat_interval_ms: u64,
    /// A running task with no progress report for this long is stalled.
    pub stuck_after_ms: u64,
    /// How often the Conductor looks for duplicate work.
    pub conductor_interval_ms: u64,
    /// How often the Guardian reads every agent's anomaly score (the original's 60 s).
    pub anomaly_interval_ms: u64,
    /// Open tasks of one project whose titles and descriptions are at least this similar
    /// (`pg_trgm`, 0 to 1) are flagged as duplicates (the original's task threshold).
    pub duplicate_similarity: f64,
    /// LLM trajectory analysis; off unless `base_url` is set.
    pub llm: LlmConfig,
}

impl Default for MonitoringConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 30_000,
            stuck_after_ms: 1_800_000,
            conductor_interval_ms: 300_000,
            anomaly_interval_ms: 60_000,
            duplicate_similarity: 0.85,
            llm: LlmConfig::default(),
        }
    }
}

impl MonitoringConfig {
    /// Silence after which an agent is degraded: two missed intervals.
    pub fn degraded_after_ms(&self) -> u64 {
        self.heartbeat_interval_ms.saturating_mul(2)
    }

    /// Closest two anomalous readings of one agent may be: nine tenths of the interval,
    /// so replicas reading in the same interval record one reading.
    pub fn min_reading_gap_ms(&self) -> u64 {
        self.anomaly_interval_ms / 10 * 9
    }

    /// Heartbeat intervals missed by an agent silent for `silent_ms`.
    pub fn missed_heartbeats(&self, silent_ms: i64) -> u64 {
        let interval = self.heartbeat_interval_ms.max(1);
        u64::try_from(silent_ms).unwrap_or(0) / interval
    }
}

/// The worker's clock: the system's, moved forward by tests (`advance`) so that what
/// depends on time is tested without waiting for it.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_heartbeats_count_whole_intervals() {
        let config = MonitoringConfig {
            heartbeat_interval_ms: 30_000,
            ..MonitoringConfig::default()
        };
        assert_eq!(config.missed_heartbeats(-5), 0);
        assert_eq!(config.missed_heartbeats(29_999), 0);
        assert_eq!(config.missed_heartbeats(30_000), 1);
        assert_eq!(config.missed_heartbeats(61_000), 2);
        assert_eq!(config.degraded_after_ms(), 60_000);
    }

    #[test]
    fn an_advanced_clock_is_ahead_in_every_clone() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = Utc::now();
        clock.advance(std::time::Duration::from_secs(3600));
        assert!(other.now() - before >= chrono::Duration::seconds(3600));
    }
}
