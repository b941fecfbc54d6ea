use super::AgentStatus;
use crate::common::{DomainError, ErrorKind, TextProblem};

/// Every rule that can refuse an agent command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AgentError {
    #[error("agent not found")]
    NotFound,
    #[error("an agent with this id already exists")]
    AlreadyExists,
    #[error("name must not be empty")]
    EmptyName,
    #[error("name is longer than {max} characters")]
    NameTooLong { max: usize },
    #[error("a capability must not be empty")]
    EmptyCapability,
    #[error("a capability is longer than {max} characters")]
    CapabilityTooLong { max: usize },
    #[error("an agent has at most {max} capabilities")]
    TooManyCapabilities { max: usize },
    #[error("capacity must be between {min} and {max} (got {capacity})")]
    CapacityOutOfRange { capacity: u32, min: u32, max: u32 },
    #[error("{field} is longer than {max} characters")]
    TextTooLong { field: &'static str, max: usize },
    #[error("the agent is already {0}; force to record it again")]
    AlreadyInStatus(AgentStatus),
    #[error("an agent cannot move from {from} to {to}")]
    IllegalTransition { from: AgentStatus, to: AgentStatus },
    #[error("a terminated agent cannot change")]
    Terminated,
    #[error("an intervention must say why (reason)")]
    ReasonRequired,
    #[error("only a quarantined agent is released (it is {0})")]
    NotQuarantined(AgentStatus),
    #[error("only a guardian (guardian:intervene) puts an agent in or out of quarantine")]
    GuardianRequired,
    #[error("an anomalous reading was recorded less than {min_gap_ms} ms ago")]
    ReadingTooSoon { min_gap_ms: u64 },
}

impl AgentError {
    pub(crate) fn name(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyName,
            TextProblem::TooLong { max } => Self::NameTooLong { max },
        }
    }

    pub(crate) fn capability(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyCapability,
            TextProblem::TooLong { max } => Self::CapabilityTooLong { max },
        }
    }
}

impl DomainError for AgentError {
    fn kind(&self) -> ErrorKind {
        use AgentError::*;
        match self {
            NotFound => ErrorKind::NotFound,
            EmptyName
            | NameTooLong { .. }
            | EmptyCapability
            | CapabilityTooLong { .. }
            | TooManyCapabilities { .. }
            | CapacityOutOfRange { .. }
            | TextTooLong { .. }
            | ReasonRequired => ErrorKind::Invalid,
            AlreadyExists
            | AlreadyInStatus(_)
            | IllegalTransition { .. }
            | Terminated
            | NotQuarantined(_)
            | ReadingTooSoon { .. } => ErrorKind::Conflict,
            GuardianRequired => ErrorKind::Forbidden,
        }
    }

    fn field(&self) -> Option<&'static str> {
        use AgentError::*;
        match self {
            EmptyName | NameTooLong { .. } => Some("name"),
            EmptyCapability | CapabilityTooLong { .. } | TooManyCapabilities { .. } => {
                Some("capabilities")
            }
            CapacityOutOfRange { .. } => Some("capacity"),
            TextTooLong { field, .. } => Some(field),
            ReasonRequired => Some("reason"),
            AlreadyInStatus(_) | IllegalTransition { .. } => Some("to"),
            _ => None,
        }
    }

    fn code(&self) -> &'static str {
        use AgentError::*;
        match self {
            NotFound => "agent_not_found",
            AlreadyExists => "agent_already_exists",
            EmptyName => "empty_name",
            NameTooLong { .. } => "name_too_long",
            EmptyCapability => "empty_capability",
            CapabilityTooLong { .. } => "capability_too_long",
            TooManyCapabilities { .. } => "too_many_capabilities",
            CapacityOutOfRange { .. } => "capacity_out_of_range",
            TextTooLong { .. } => "text_too_long",
            AlreadyInStatus(_) => "already_in_status",
            IllegalTransition { .. } => "illegal_transition",
            Terminated => "agent_terminated",
            ReasonRequired => "reason_required",
            NotQuarantined(_) => "not_quarantined",
            GuardianRequired => "guardian_required",
            ReadingTooSoon { .. } => "reading_too_soon",
        }
    }
}
