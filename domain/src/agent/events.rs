use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AgentStatus, AgentType};
use crate::guardian::{AnomalyParts, InterventionKind};

/// What happened to an agent. Names and payloads are stable: change them only by adding
/// a new version and an upcaster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentEvent {
    /// The agent starts `spawning`.
    AgentRegistered {
        agent_id: Uuid,
        organization_id: Uuid,
        project_id: Option<Uuid>,
        name: String,
        agent_type: AgentType,
        capabilities: BTreeSet<String>,
        capacity: u32,
        registered_at: DateTime<Utc>,
    },
    /// `from == to` only for a forced re-recording of the current status.
    AgentStatusChanged {
        from: AgentStatus,
        to: AgentStatus,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    AgentCapabilitiesUpdated {
        capabilities: BTreeSet<String>,
    },
    /// A guardian acted on the agent; the status change follows.
    GuardianIntervened {
        kind: InterventionKind,
        reason: String,
        at: DateTime<Utc>,
    },
    /// An anomalous reading (score ≥ 0.8), the `streak`-th in a row; the third is
    /// followed by the Guardian's quarantine.
    AnomalyDetected {
        score: f64,
        parts: AnomalyParts,
        streak: u32,
        at: DateTime<Utc>,
    },
    /// A normal reading after anomalous ones: the run is over.
    AnomalySubsided {
        score: f64,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for AgentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AgentRegistered { .. } => "AgentRegistered",
            Self::AgentStatusChanged { .. } => "AgentStatusChanged",
            Self::AgentCapabilitiesUpdated { .. } => "AgentCapabilitiesUpdated",
            Self::GuardianIntervened { .. } => "GuardianIntervened",
            Self::AnomalyDetected { .. } => "AnomalyDetected",
            Self::AnomalySubsided { .. } => "AnomalySubsided",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
