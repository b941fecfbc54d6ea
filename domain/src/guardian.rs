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
