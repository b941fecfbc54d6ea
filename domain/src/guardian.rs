//! Guardian interventions: what a guardian (an owner or admin, or an agent of type
//! `guardian` an owner or admin registered) may do to an agent or a task, outside the
//! ordinary flow. Each is one command on its target, recorded as `GuardianIntervened`
//! followed, in the same transaction, by the events of its effect.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::common::{required_text, TextProblem, MAX_TEXT_CHARS};

/// The kinds of intervention (the original's Guardian actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InterventionKind {
    /// A task stops at once: cancelled, whatever its status (final ones aside).
    EmergencyCancel,
    /// A task is taken from its agent and goes back to the queue, its attempt not
    /// counted as a failure.
    Reassign,
    /// A task's priority is set, whatever the ticket's.
    PriorityOverride,
    /// A steering message goes to the agent running a task.
    Steer,
    /// An agent gets no new work until released (`quarantined`).
    Quarantine,
    /// A quarantined agent may take work again (`idle`).
    Release,
}

impl InterventionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmergencyCancel => "emergency_cancel",
            Self::Reassign => "reassign",
            Self::PriorityOverride => "priority_override",
            Self::Steer => "steer",
            Self::Quarantine => "quarantine",
            Self::Release => "release",
        }
    }
}

/// Every intervention says why: the reason is required, trimmed, at most
/// [`MAX_TEXT_CHARS`].
pub fn reason(text: &str) -> Result<String, TextProblem> {
    required_text(text, MAX_TEXT_CHARS)
}

/// Weights of the anomaly score's parts (the original's composite).
const LATENCY_WEIGHT: f64 = 0.35;
const ERRORS_WEIGHT: f64 = 0.30;
const RESOURCE_SKEW_WEIGHT: f64 = 0.20;
const QUEUE_IMPACT_WEIGHT: f64 = 0.15;

/// A reading at or above this score is anomalous.
pub const ANOMALY_THRESHOLD: f64 = 0.8;
/// Anomalous readings in a row after which the Guardian quarantines the agent.
pub const ANOMALY_READINGS: u32 = 3;
/// Tasks waiting on an agent's work at which its queue impact is full.
const FULL_QUEUE_IMPACT: f64 = 10.0;
/// How many times its type's median an attempt may take before its latency part is full
/// (at the median the part is 0).
const FULL_LATENCY_RATIO: f64 = 3.0;

/// The parts of an agent's anomaly score, each from 0 (normal) to 1 (as bad as it gets).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct AnomalyParts {
    /// How much longer than their type's median its attempts take.
    pub latency: f64,
    /// The moving average of its attempts' failures (1 = every recent one failed).
    pub errors: f64,
    /// How much more of its project's running work it holds than its fair share.
    pub resource_skew: f64,
    /// How many open tasks wait on work it holds (10 or more = full).
    pub queue_impact: f64,
}

impl AnomalyParts {
    /// The parts from what was observed: `latency_ratio` (attempt time ÷ its type's
    /// median), `error_rate` (0..1), `share` of the project's running work held and the
    /// `fair_share` (1 ÷ the agents serving it), and the tasks `waiting` on its work.
    /// Each part is clamped to 0..1, whatever came in (a NaN counts as 0).
    pub fn observed(
        latency_ratio: f64,
        error_rate: f64,
        share: f64,
        fair_share: f64,
        waiting: usize,
    ) -> Self {
        Self {
            latency: unit((latency_ratio - 1.0) / (FULL_LATENCY_RATIO - 1.0)),
            errors: unit(error_rate),
            resource_skew: Self::resource_skew(share, fair_share),
            queue_impact: unit(waiting as f64 / FULL_QUEUE_IMPACT),
        }
    }

    /// How far `share` of a project's running work is above `fair_share`, 0..1 (a lone
    /// agent's whole share is fair).
    pub fn resource_skew(share: f64, fair_share: f64) -> f64 {
        if fair_share >= 1.0 {
            0.0
        } else {
            unit((share - fair_share) / (1.0 - fair_share))
        }
    }

    /// `0.35 latency + 0.30 errors + 0.20 resource skew + 0.15 queue impact`, 0..1.
    pub fn score(&self) -> f64 {
        unit(
            LATENCY_WEIGHT * unit(self.latency)
                + ERRORS_WEIGHT * unit(self.errors)
                + RESOURCE_SKEW_WEIGHT * unit(self.resource_skew)
                + QUEUE_IMPACT_WEIGHT * unit(self.queue_impact),
        )
    }

    pub fn is_anomalous(&self) -> bool {
        self.score() >= ANOMALY_THRESHOLD
    }
}

/// `x` clamped to 0..1; NaN is 0.
fn unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_weights_are_the_originals() {
        let all = AnomalyParts {
            latency: 1.0,
            errors: 1.0,
            resource_skew: 1.0,
            queue_impact: 1.0,
        };
        assert!((all.score() - 1.0).abs() < 1e-12);
        let latency_only = AnomalyParts {
            latency: 1.0,
            ..AnomalyParts::default()
        };
        assert!((latency_only.score() - 0.35).abs() < 1e-12);
        let errors_only = AnomalyParts {
            errors: 1.0,
            ..AnomalyParts::default()
        };
        assert!((errors_only.score() - 0.30).abs() < 1e-12);
        // Everything but errors full is still short of the threshold by 0.1.
        let all_but_errors = AnomalyParts { errors: 0.0, ..all };
        assert!(!all_but_errors.is_anomalous());
    }

    #[test]
    fn observations_map_onto_parts() {
        let parts = AnomalyParts::observed(2.0, 0.5, 1.0, 0.5, 5);
        assert_eq!(parts.latency, 0.5);
        assert_eq!(parts.errors, 0.5);
        assert_eq!(parts.resource_skew, 1.0);
        assert_eq!(parts.queue_impact, 0.5);
        // A lone agent holds all of its project's work and that is its fair share.
        assert_eq!(
            AnomalyParts::observed(1.0, 0.0, 1.0, 1.0, 0).resource_skew,
            0.0
        );
        // Faster than the median is no anomaly.
        assert_eq!(AnomalyParts::observed(0.2, 0.0, 0.0, 0.5, 0).latency, 0.0);
    }

    proptest! {
        #[test]
        fn every_part_and_the_score_stay_within_0_and_1(
            ratio in proptest::num::f64::ANY,
            errors in proptest::num::f64::ANY,
            share in proptest::num::f64::ANY,
            fair in proptest::num::f64::ANY,
            waiting in 0usize..1_000,
        ) {
            let parts = AnomalyParts::observed(ratio, errors, share, fair, waiting);
            for part in [parts.latency, parts.errors, parts.resource_skew, parts.queue_impact] {
                prop_assert!((0.0..=1.0).contains(&part));
            }
            prop_assert!((0.0..=1.0).contains(&parts.score()));
        }

        #[test]
        fn a_worse_observation_never_lowers_the_score(
            ratio in 0.0f64..10.0,
            errors in 0.0f64..1.0,
            share in 0.0f64..1.0,
            waiting in 0usize..20,
            worse in 0.0f64..5.0,
        ) {
            let fair = 0.25;
            let base = AnomalyParts::observed(ratio, errors, share, fair, waiting).score();
            let slower = AnomalyParts::observed(ratio + worse, errors, share, fair, waiting);
            let more_waiting = AnomalyParts::observed(ratio, errors, share, fair, waiting + 1);
            prop_assert!(slower.score() >= base);
            prop_assert!(more_waiting.score() >= base);
        }
    }
}
