//! The Conductor's view of a project: a coherence score and status from its agents and
//! its open findings (the original's "alignment − penalties + load bonus", made
//! deterministic: alignment is how far its agents' anomaly scores are from 0).
//!
//! ```text
//! score = 1 − mean anomaly score of the agents that take work
//!           − 0.30 × share of its agents in trouble (degraded, failed, quarantined)
//!           − 0.20 × share of its held tasks stalled
//!           − 0.10 × share of its open tasks suspected duplicates
//!           + 0.10 when at least half its working agents are busy   (clamped to 0..1)
//! ```
//!
//! Status, the first that applies: `no_agents` (none serve it); `critical` (score < 0.4,
//! or every agent in trouble); `warning` (score < 0.6, or an alert open); `inefficient`
//! (tasks wait while agents idle, or duplicates); `optimal` (score ≥ 0.9, nothing
//! stalled, nothing waiting or nobody idle); `normal`.

use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CoherenceStatus {
    Critical,
    Warning,
    Inefficient,
    Optimal,
    Normal,
    NoAgents,
}

/// What the Conductor reads of a project.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoherenceInputs {
    /// Anomaly scores of its agents that take work (idle, running, spawning, degraded).
    pub anomaly_scores: Vec<f64>,
    /// Agents serving it that are degraded, failed or quarantined.
    pub agents_in_trouble: usize,
    /// Agents serving it that are not terminated.
    pub agents: usize,
    pub busy_agents: usize,
    pub idle_agents: usize,
    /// Tasks waiting for an agent.
    pub waiting_tasks: usize,
    /// Tasks held by agents (assigned or running).
    pub held_tasks: usize,
    /// Open tasks (not final).
    pub open_tasks: usize,
    pub stalled_tasks: usize,
    pub duplicates: usize,
    pub open_alerts: usize,
}

/// A project's coherence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Coherence {
    /// 0..1, 1 being every agent normal and nothing stalled or duplicated.
    pub score: f64,
    pub status: CoherenceStatus,
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64).min(1.0)
    }
}

impl CoherenceInputs {
    pub fn coherence(&self) -> Coherence {
        if self.agents == 0 {
            return Coherence {
                score: 0.0,
                status: CoherenceStatus::NoAgents,
            };
        }
        let mean_anomaly = if self.anomaly_scores.is_empty() {
            // Nobody takes work: nothing is aligned.
            1.0
        } else {
            self.anomaly_scores
                .iter()
                .map(|s| s.clamp(0.0, 1.0))
                .sum::<f64>()
                / self.anomaly_scores.len() as f64
        };
        let working = self.busy_agents + self.idle_agents;
        let load_bonus = if working > 0 && share(self.busy_agents, working) >= 0.5 {
            0.1
        } else {
            0.0
        };
        let score = (1.0
            - mean_anomaly
            - 0.3 * share(self.agents_in_trouble, self.agents)
            - 0.2 * share(self.stalled_tasks, self.held_tasks)
            - 0.1 * share(self.duplicates, self.open_tasks)
            + load_bonus)
            .clamp(0.0, 1.0);
        let idle_while_waiting = self.waiting_tasks > 0 && self.idle_agents > 0;
        let status = if score < 0.4 || self.agents_in_trouble >= self.agents {
            CoherenceStatus::Critical
        } else if score < 0.6 || self.open_alerts > 0 {
            CoherenceStatus::Warning
        } else if idle_while_waiting || self.duplicates > 0 {
            CoherenceStatus::Inefficient
        } else if score >= 0.9 && self.stalled_tasks == 0 {
            CoherenceStatus::Optimal
        } else {
            CoherenceStatus::Normal
        };
        Coherence { score, status }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn busy_team() -> CoherenceInputs {
        CoherenceInputs {
            anomaly_scores: vec![0.0, 0.1],
            agents: 2,
            busy_agents: 2,
            held_tasks: 2,
            open_tasks: 5,
            waiting_tasks: 3,
            ..CoherenceInputs::default()
        }
    }

    #[test]
    fn each_status_when_its_rule_applies() {
        assert_eq!(
            CoherenceInputs::default().coherence().status,
            CoherenceStatus::NoAgents
        );
        assert_eq!(busy_team().coherence().status, CoherenceStatus::Optimal);
        let idle = CoherenceInputs {
            busy_agents: 1,
            idle_agents: 1,
            ..busy_team()
        };
        assert_eq!(idle.coherence().status, CoherenceStatus::Inefficient);
        let alert = CoherenceInputs {
            open_alerts: 1,
            ..busy_team()
        };
        assert_eq!(alert.coherence().status, CoherenceStatus::Warning);
        let stalled = CoherenceInputs {
            stalled_tasks: 1,
            anomaly_scores: vec![0.1, 0.1],
            ..busy_team()
        };
        assert_eq!(stalled.coherence().status, CoherenceStatus::Normal);
        let troubled = CoherenceInputs {
            agents_in_trouble: 2,
            anomaly_scores: vec![],
            busy_agents: 0,
            ..busy_team()
        };
        assert_eq!(troubled.coherence().status, CoherenceStatus::Critical);
        let anomalous = CoherenceInputs {
            anomaly_scores: vec![0.9, 0.8],
            ..busy_team()
        };
        assert_eq!(anomalous.coherence().status, CoherenceStatus::Critical);
    }

    #[test]
    fn the_score_follows_the_formula() {
        let inputs = CoherenceInputs {
            anomaly_scores: vec![0.2, 0.0],
            agents: 4,
            agents_in_trouble: 2,
            busy_agents: 1,
            idle_agents: 1,
            held_tasks: 4,
            stalled_tasks: 1,
            open_tasks: 10,
            duplicates: 2,
            ..CoherenceInputs::default()
        };
        // 1 − 0.1 − 0.3·0.5 − 0.2·0.25 − 0.1·0.2 + 0.1
        let expected = 1.0 - 0.1 - 0.15 - 0.05 - 0.02 + 0.1;
        assert!((inputs.coherence().score - expected).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn the_score_stays_within_0_and_1_and_more_trouble_never_raises_it(
            scores in prop::collection::vec(0.0f64..=1.0, 0..6),
            agents in 1usize..8,
            trouble in 0usize..8,
            busy in 0usize..8,
            held in 0usize..20,
            stalled in 0usize..20,
        ) {
            let inputs = CoherenceInputs {
                anomaly_scores: scores,
                agents,
                agents_in_trouble: trouble.min(agents),
                busy_agents: busy,
                held_tasks: held,
                stalled_tasks: stalled.min(held),
                open_tasks: held,
                ..CoherenceInputs::default()
            };
            let base = inputs.coherence().score;
            prop_assert!((0.0..=1.0).contains(&base));
            let worse = CoherenceInputs {
                stalled_tasks: (inputs.stalled_tasks + 1).min(held.max(1)),
                held_tasks: held.max(1),
                ..inputs.clone()
            };
            if held > 0 {
                prop_assert!(worse.coherence().score <= base);
            }
        }
    }
}
