//! What a task event does to supervision's findings.

use chrono::{DateTime, Utc};
use omoi_domain::agent::{AgentEvent, AgentStatus};
use omoi_domain::task::TaskEvent;
use omoi_domain::ticket::{BlockReason, TicketEvent};
use serde::Serialize;
use utoipa::ToSchema;
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
        | TaskEvent::TaskAssignmentWithdrawn { .. }
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
        | TaskEvent::TaskAssignmentWithdrawn { .. }
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

/// What an alert is about; one is open per kind and subject at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// An agent was quarantined (by a guardian, or by the Guardian's anomaly readings:
    /// the reason is the diagnostic); open until it is released or terminated.
    AgentQuarantined,
    /// An agent failed (stale, or moved there); open until it is quarantined or
    /// terminated.
    AgentFailed,
    /// A ticket is blocked `failing_checks` (a task failed for good, a stall escalated);
    /// open until it is unblocked.
    TicketFailingChecks,
}

impl AlertKind {
    pub const ALL: [AlertKind; 3] = [
        Self::AgentQuarantined,
        Self::AgentFailed,
        Self::TicketFailingChecks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentQuarantined => "agent_quarantined",
            Self::AgentFailed => "agent_failed",
            Self::TicketFailingChecks => "ticket_failing_checks",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The alert an agent's status stands for, if any.
    fn of_agent_status(status: AgentStatus) -> Option<Self> {
        match status {
            AgentStatus::Quarantined => Some(Self::AgentQuarantined),
            AgentStatus::Failed => Some(Self::AgentFailed),
            _ => None,
        }
    }
}

/// What an event does to the alerts about its aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertEffect {
    Raise { kind: AlertKind, reason: String },
    Resolve(AlertKind),
}

/// The alerts an agent event raises or resolves, in order.
pub fn agent_alerts(event: &AgentEvent) -> Vec<AlertEffect> {
    let AgentEvent::AgentStatusChanged {
        from, to, reason, ..
    } = event
    else {
        return vec![];
    };
    let mut effects = Vec::new();
    if from != to {
        effects.extend(AlertKind::of_agent_status(*from).map(AlertEffect::Resolve));
    }
    if let Some(kind) = AlertKind::of_agent_status(*to) {
        let reason = reason
            .clone()
            .unwrap_or_else(|| format!("the agent is {to}"));
        effects.push(AlertEffect::Raise { kind, reason });
    }
    effects
}

/// The alert a ticket event raises or resolves.
pub fn ticket_alert(event: &TicketEvent) -> Option<AlertEffect> {
    match event {
        TicketEvent::TicketBlocked {
            reason: BlockReason::FailingChecks,
            note,
            ..
        } => Some(AlertEffect::Raise {
            kind: AlertKind::TicketFailingChecks,
            reason: note
                .clone()
                .unwrap_or_else(|| "the ticket is failing its checks".into()),
        }),
        TicketEvent::TicketUnblocked => Some(AlertEffect::Resolve(AlertKind::TicketFailingChecks)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_statuses_raise_and_resolve_their_alerts() {
        let change = |from, to| AgentEvent::AgentStatusChanged {
            from,
            to,
            reason: Some("why".into()),
            at: Utc::now(),
        };
        let raise = |kind| AlertEffect::Raise {
            kind,
            reason: "why".into(),
        };
        use AgentStatus::*;
        assert_eq!(agent_alerts(&change(Idle, Running)), vec![]);
        assert_eq!(
            agent_alerts(&change(Idle, Quarantined)),
            vec![raise(AlertKind::AgentQuarantined)]
        );
        assert_eq!(
            agent_alerts(&change(Failed, Quarantined)),
            vec![
                AlertEffect::Resolve(AlertKind::AgentFailed),
                raise(AlertKind::AgentQuarantined)
            ]
        );
        assert_eq!(
            agent_alerts(&change(Quarantined, Idle)),
            vec![AlertEffect::Resolve(AlertKind::AgentQuarantined)]
        );
        // A forced re-recording refreshes the reason and resolves nothing.
        assert_eq!(
            agent_alerts(&change(Quarantined, Quarantined)),
            vec![raise(AlertKind::AgentQuarantined)]
        );
        for kind in AlertKind::ALL {
            assert_eq!(AlertKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn only_failing_checks_is_an_alert_among_blocks() {
        let block = |reason| TicketEvent::TicketBlocked {
            reason,
            note: None,
            blocked_at: Utc::now(),
        };
        assert!(ticket_alert(&block(BlockReason::Dependency)).is_none());
        assert!(matches!(
            ticket_alert(&block(BlockReason::FailingChecks)),
            Some(AlertEffect::Raise {
                kind: AlertKind::TicketFailingChecks,
                ..
            })
        ));
        assert_eq!(
            ticket_alert(&TicketEvent::TicketUnblocked),
            Some(AlertEffect::Resolve(AlertKind::TicketFailingChecks))
        );
    }

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
