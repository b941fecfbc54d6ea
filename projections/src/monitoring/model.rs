//! What a task event does to supervision's findings.

use chrono::{DateTime, Utc};
use omoi_domain::task::TaskEvent;
use uuid::Uuid;

/// The effect of one task event on the findings about that task.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The task is stalled (since its last progress).
    Stalled {
        agent_id: Uuid,
        idle_since: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Whatever stall it had is over (it progressed, started again, lost its agent, or
    /// its attempt ended).
    Unstalled,
    /// It looks like a duplicate of an older task.
    Duplicate { duplicate_of: Uuid, similarity: f64 },
    /// It ended: no finding about it (or naming it) stays open.
    Ended,
}

/// The finding `event` makes, if any.
pub fn finding(event: &TaskEvent) -> Option<Finding> {
    match event {
        TaskEvent::TaskStalled {
            agent_id,
            idle_since,
            at,
        } => Some(Finding::Stalled {
            agent_id: *agent_id,
            idle_since: *idle_since,
            at: *at,
        }),
        TaskEvent::DuplicateSuspected {
            duplicate_of,
            similarity,
            ..
        } => Some(Finding::Duplicate {
            duplicate_of: *duplicate_of,
            similarity: *similarity,
        }),
        TaskEvent::TaskCompleted { .. }
        | TaskEvent::TaskCancelled { .. }
        | TaskEvent::TaskPermanentlyFailed { .. } => Some(Finding::Ended),
        TaskEvent::TaskProgressReported { .. }
        | TaskEvent::TaskStarted { .. }
        | TaskEvent::TaskUnassigned { .. }
        | TaskEvent::TaskFailed { .. }
        | TaskEvent::TaskTimedOut { .. }
        | TaskEvent::TaskRetryScheduled { .. }
        | TaskEvent::TaskSubmittedForValidation { .. } => Some(Finding::Unstalled),
        _ => None,
    }
}

/// The effect of one task event on the steering waiting for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteeringEffect {
    /// A message for the agent holding the task now.
    Pending { steering_id: Uuid, agent_id: Uuid },
    /// Handed over.
    Delivered { steering_id: Uuid },
    /// The attempt is over or another begins: what waited for it can no longer be handed
    /// to its agent.
    AttemptOver,
}

/// The steering effect of `event`, if any.
pub fn steering_effect(event: &TaskEvent) -> Option<SteeringEffect> {
    match event {
        TaskEvent::TaskSteered {
            steering_id,
            agent_id,
            ..
        } => Some(SteeringEffect::Pending {
            steering_id: *steering_id,
            agent_id: *agent_id,
        }),
        TaskEvent::SteeringDelivered { steering_id, .. } => Some(SteeringEffect::Delivered {
            steering_id: *steering_id,
        }),
        TaskEvent::TaskStarted { .. }
        | TaskEvent::TaskUnassigned { .. }
        | TaskEvent::TaskFailed { .. }
        | TaskEvent::TaskTimedOut { .. }
        | TaskEvent::TaskRetryScheduled { .. }
        | TaskEvent::TaskSubmittedForValidation { .. }
        | TaskEvent::TaskCompleted { .. }
        | TaskEvent::TaskCancelled { .. }
        | TaskEvent::TaskPermanentlyFailed { .. } => Some(SteeringEffect::AttemptOver),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_lasts_until_progress_or_the_attempts_end_and_an_end_closes_everything() {
        let now = Utc::now();
        let agent_id = Uuid::now_v7();
        assert_eq!(
            finding(&TaskEvent::TaskStalled {
                agent_id,
                idle_since: now,
                at: now
            }),
            Some(Finding::Stalled {
                agent_id,
                idle_since: now,
                at: now
            })
        );
        let progress = TaskEvent::TaskProgressReported {
            message: "x".into(),
        };
        assert_eq!(finding(&progress), Some(Finding::Unstalled));
        let cancelled = TaskEvent::TaskCancelled {
            reason: None,
            at: now,
        };
        assert_eq!(finding(&cancelled), Some(Finding::Ended));
        let priority = TaskEvent::TaskPriorityChanged {
            priority: omoi_domain::common::Priority::Low,
        };
        assert_eq!(finding(&priority), None);
        assert_eq!(steering_effect(&priority), None);
        assert_eq!(
            steering_effect(&progress),
            None,
            "progress keeps the steering"
        );
        assert_eq!(
            steering_effect(&cancelled),
            Some(SteeringEffect::AttemptOver)
        );
    }
}
