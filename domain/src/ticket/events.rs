use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::TicketStatus;
use crate::common::{Phase, Priority};

/// Why a ticket is blocked (the original's four reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlockReason {
    Dependency,
    WaitingOnClarification,
    FailingChecks,
    Environment,
}

/// What happened to a ticket. Names and payloads are stable: change them only by adding
/// a new version and an upcaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TicketEvent {
    TicketCreated {
        ticket_id: Uuid,
        organization_id: Uuid,
        project_id: Uuid,
        spec_id: Option<Uuid>,
        title: String,
        description: String,
        priority: Priority,
        phase: Phase,
    },
    TicketUpdated {
        title: Option<String>,
        description: Option<String>,
        priority: Option<Priority>,
        phase: Option<Phase>,
    },
    TicketStatusChanged {
        from: TicketStatus,
        to: TicketStatus,
        note: Option<String>,
    },
    TicketRegressed {
        feedback: String,
    },
    TicketBlocked {
        reason: BlockReason,
        note: Option<String>,
        blocked_at: DateTime<Utc>,
    },
    TicketUnblocked,
    /// Right after its creation from a spec's plan: its key there.
    TicketPlanned {
        key: String,
    },
}

impl TicketEvent {
    /// The ticket's status after this event, when the event sets one: the one rule the
    /// aggregate and every read model follow.
    pub fn status_after(&self) -> Option<TicketStatus> {
        match self {
            Self::TicketCreated { .. } => Some(TicketStatus::Backlog),
            Self::TicketStatusChanged { to, .. } => Some(*to),
            // A regression sends the ticket back to be built again.
            Self::TicketRegressed { .. } => Some(TicketStatus::Building),
            Self::TicketUpdated { .. }
            | Self::TicketBlocked { .. }
            | Self::TicketUnblocked
            | Self::TicketPlanned { .. } => None,
        }
    }
}

impl DomainEvent for TicketEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TicketCreated { .. } => "TicketCreated",
            Self::TicketUpdated { .. } => "TicketUpdated",
            Self::TicketStatusChanged { .. } => "TicketStatusChanged",
            Self::TicketRegressed { .. } => "TicketRegressed",
            Self::TicketBlocked { .. } => "TicketBlocked",
            Self::TicketUnblocked => "TicketUnblocked",
            Self::TicketPlanned { .. } => "TicketPlanned",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
