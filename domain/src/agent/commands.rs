use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AgentStatus, AgentType};
use crate::guardian::AnomalyParts;

/// Everything that can be asked of an agent.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentCommand {
    RegisterAgent {
        agent_id: Uuid,
        organization_id: Uuid,
        /// `None` for an agent that serves the whole organization.
        project_id: Option<Uuid>,
        /// `None` names it `{type}-{first 8 hex digits of the id}`.
        name: Option<String>,
        agent_type: AgentType,
        capabilities: Vec<String>,
        /// `None` means 1.
        capacity: Option<u32>,
        at: DateTime<Utc>,
    },
    /// Moves the agent along its status machine. `force` only allows re-recording the
    /// current status; it never allows a move the table forbids.
    ChangeAgentStatus {
        to: AgentStatus,
        reason: Option<String>,
        force: bool,
        /// The issuer may intervene as a Guardian: only then may the move enter or leave
        /// quarantine (terminating a quarantined agent aside).
        guardian: bool,
        at: DateTime<Utc>,
    },
    /// A guardian quarantines or releases the agent (`GuardianIntervened`, then the
    /// status change).
    Intervene {
        quarantine: bool,
        reason: String,
        at: DateTime<Utc>,
    },
    /// The monitor's reading of the agent's anomaly score. An anomalous one (≥ 0.8) is
    /// recorded and, the third in a row, makes the Guardian quarantine the agent; a normal
    /// one ends a run of anomalous ones. A second anomalous reading within `min_gap_ms` of
    /// the last (another replica's of the same pass) is refused.
    RecordAnomalyReading {
        parts: AnomalyParts,
        min_gap_ms: u64,
        at: DateTime<Utc>,
    },
    /// Replaces the whole capability set.
    UpdateCapabilities { capabilities: Vec<String> },
}

impl AgentCommand {
    /// An agent shown alive — by its first heartbeat, or by heartbeats (renewals) that
    /// resumed after it was degraded — becomes idle: the one move both an HTTP agent's
    /// heartbeat and a worker's renewal make.
    pub fn revive(reason: &str, at: DateTime<Utc>) -> Self {
        Self::ChangeAgentStatus {
            to: AgentStatus::Idle,
            reason: Some(reason.to_string()),
            force: false,
            guardian: false,
            at,
        }
    }
}
