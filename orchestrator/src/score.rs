//! The original's ready-task score (`services/task_scorer.py`), with its weights and
//! thresholds as configuration.
//!
//! `score = w_p·P + w_a·A + w_d·D + w_b·B + w_r·R` where P is the priority (1.0, 0.75,
//! 0.5, 0.25 from critical to low), A the age (`min(age / age_horizon, 1)`), D the
//! deadline urgency (1 past the deadline, else `max(0, 1 − slack / deadline_slack)`), B the
//! blocking weight (`min(waiting dependents / blocking_saturation, 1)`) and R the retry
//! penalty (`max(0, 1 − retries / max_retries)`). A task within `deadline_slack` of its
//! deadline is boosted ×`near_deadline_boost`; one waiting longer than `starvation_after`
//! scores at least `starvation_floor`.

use omoi_domain::common::Priority;
use serde::Deserialize;

/// The weights and thresholds of the score.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    pub priority_weight: f64,
    pub age_weight: f64,
    pub deadline_weight: f64,
    pub blocking_weight: f64,
    pub retry_weight: f64,
    /// Seconds of waiting after which the age term is full.
    pub age_horizon_seconds: f64,
    /// Seconds before a deadline at which urgency starts (and the boost applies).
    pub deadline_slack_seconds: f64,
    pub near_deadline_boost: f64,
    /// Dependents waiting at which the blocking term is full.
    pub blocking_saturation: f64,
    /// Seconds of waiting after which a task scores at least `starvation_floor`.
    pub starvation_after_seconds: f64,
    pub starvation_floor: f64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            priority_weight: 0.45,
            age_weight: 0.20,
            deadline_weight: 0.15,
            blocking_weight: 0.15,
            retry_weight: 0.05,
            age_horizon_seconds: 3600.0,
            deadline_slack_seconds: 900.0,
            near_deadline_boost: 1.25,
            blocking_saturation: 10.0,
            starvation_after_seconds: 7200.0,
            starvation_floor: 0.6,
        }
    }
}

/// What the score of one task depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreInput {
    pub priority: Priority,
    /// Seconds since the task was created.
    pub age_seconds: f64,
    /// Seconds left before the deadline (negative past it); `None` without a deadline.
    pub deadline_slack_seconds: Option<f64>,
    /// Unfinished tasks waiting for this one.
    pub waiting_dependents: usize,
    pub retry_count: u32,
    pub max_retries: u32,
}

pub fn priority_term(priority: Priority) -> f64 {
    match priority {
        Priority::Critical => 1.0,
        Priority::High => 0.75,
        Priority::Medium => 0.5,
        Priority::Low => 0.25,
    }
}

impl ScoreConfig {
    pub fn score(&self, input: &ScoreInput) -> f64 {
        let age = (input.age_seconds.max(0.0) / self.age_horizon_seconds).min(1.0);
        let deadline = match input.deadline_slack_seconds {
            None => 0.0,
            Some(slack) if slack < 0.0 => 1.0,
            Some(slack) => (1.0 - slack / self.deadline_slack_seconds).max(0.0),
        };
        let blocking = (input.waiting_dependents as f64 / self.blocking_saturation).min(1.0);
        let retry = if input.max_retries == 0 {
            1.0
        } else {
            (1.0 - f64::from(input.retry_count) / f64::from(input.max_retries)).max(0.0)
        };
        let mut score = self.priority_weight * priority_term(input.priority)
            + self.age_weight * age
            + self.deadline_weight * deadline
            + self.blocking_weight * blocking
            + self.retry_weight * retry;
        if input
            .deadline_slack_seconds
            .is_some_and(|slack| (0.0..=self.deadline_slack_seconds).contains(&slack))
        {
            score *= self.near_deadline_boost;
        }
        if input.age_seconds > self.starvation_after_seconds {
            score = score.max(self.starvation_floor);
        }
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(priority: Priority, age_seconds: f64) -> ScoreInput {
        ScoreInput {
            priority,
            age_seconds,
            deadline_slack_seconds: None,
            waiting_dependents: 0,
            retry_count: 0,
            max_retries: 3,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_new_critical_task_scores_at_least_its_priority_weight() {
        let score = ScoreConfig::default().score(&input(Priority::Critical, 0.0));
        // 0.45·1.0 + 0.05·1.0 (no retries yet).
        assert!(close(score, 0.50), "{score}");
        assert!(score >= 0.45);
    }

    #[test]
    fn a_task_waiting_past_two_hours_scores_at_least_the_floor() {
        let config = ScoreConfig::default();
        let old = config.score(&input(Priority::Low, 7300.0));
        // 0.45·0.25 + 0.20·1 + 0.05·1 = 0.3625, floored at 0.6.
        assert!(close(old, 0.6), "{old}");
        let younger = config.score(&input(Priority::Low, 1800.0));
        // 0.1125 + 0.20·0.5 + 0.05 = 0.2625: no floor yet.
        assert!(close(younger, 0.2625), "{younger}");
        assert!(younger < 0.6);
    }

    #[test]
    fn each_term_is_hand_computed() {
        let config = ScoreConfig::default();
        let task = ScoreInput {
            priority: Priority::High,
            age_seconds: 900.0,
            deadline_slack_seconds: Some(450.0),
            waiting_dependents: 4,
            retry_count: 1,
            max_retries: 4,
        };
        // (0.45·0.75 + 0.20·0.25 + 0.15·0.5 + 0.15·0.4 + 0.05·0.75) × 1.25
        let expected = (0.3375 + 0.05 + 0.075 + 0.06 + 0.0375) * 1.25;
        assert!(
            close(config.score(&task), expected),
            "{}",
            config.score(&task)
        );
        let past = ScoreInput {
            deadline_slack_seconds: Some(-1.0),
            ..task
        };
        // Past the deadline: full urgency, no boost.
        let expected = 0.3375 + 0.05 + 0.15 + 0.06 + 0.0375;
        assert!(
            close(config.score(&past), expected),
            "{}",
            config.score(&past)
        );
    }

    #[test]
    fn blocking_and_retries_saturate() {
        let config = ScoreConfig::default();
        let many = ScoreInput {
            waiting_dependents: 50,
            retry_count: 9,
            ..input(Priority::Medium, 0.0)
        };
        // 0.225 + 0.15·1 + 0.05·0
        assert!(close(config.score(&many), 0.375), "{}", config.score(&many));
    }

    #[test]
    fn priority_orders_equal_tasks() {
        let config = ScoreConfig::default();
        let scores: Vec<f64> = [
            Priority::Critical,
            Priority::High,
            Priority::Medium,
            Priority::Low,
        ]
        .into_iter()
        .map(|p| config.score(&input(p, 60.0)))
        .collect();
        assert!(scores.windows(2).all(|w| w[0] > w[1]), "{scores:?}");
    }
}
