use super::TicketStatus;
use crate::common::{DomainError, ErrorKind, Phase, TextProblem};

/// Every rule that can refuse a ticket command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket not found")]
    NotFound,
    #[error("a ticket with this id already exists")]
    AlreadyExists,
    #[error("title must not be empty")]
    EmptyTitle,
    #[error("title is longer than {max} characters")]
    TitleTooLong { max: usize },
    #[error("text is longer than {max} characters")]
    TextTooLong { field: &'static str, max: usize },
    #[error("a ticket cannot move from {from} to {to}")]
    IllegalTransition {
        from: TicketStatus,
        to: TicketStatus,
    },
    #[error("the phase cannot change from {from:?} to {to:?}")]
    IllegalPhaseChange { from: Phase, to: Phase },
    #[error("the ticket is already {0}")]
    AlreadyInStatus(TicketStatus),
    #[error("a ticket under test goes back to building only by a regression with feedback")]
    UseRegressToReturnToBuilding,
    #[error("only a ticket in testing can regress (it is {0})")]
    RegressOnlyFromTesting(TicketStatus),
    #[error("regression feedback must not be empty")]
    EmptyFeedback,
    #[error("a blocked ticket cannot be done; unblock it first")]
    BlockedCannotBeDone,
    #[error("the ticket is already blocked")]
    AlreadyBlocked,
    #[error("the ticket is not blocked")]
    NotBlocked,
    #[error("a done ticket cannot change")]
    Done,
}

impl TicketError {
    pub(crate) fn title(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyTitle,
            TextProblem::TooLong { max } => Self::TitleTooLong { max },
        }
    }

    pub(crate) fn text(field: &'static str, problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyFeedback,
            TextProblem::TooLong { max } => Self::TextTooLong { field, max },
        }
    }
}

impl DomainError for TicketError {
    fn kind(&self) -> ErrorKind {
        use TicketError::*;
        match self {
            NotFound => ErrorKind::NotFound,
            EmptyTitle | TitleTooLong { .. } | TextTooLong { .. } | EmptyFeedback => {
                ErrorKind::Invalid
            }
            AlreadyExists
            | IllegalTransition { .. }
            | IllegalPhaseChange { .. }
            | AlreadyInStatus(_)
            | UseRegressToReturnToBuilding
            | RegressOnlyFromTesting(_)
            | BlockedCannotBeDone
            | AlreadyBlocked
            | NotBlocked
            | Done => ErrorKind::Conflict,
        }
    }

    fn field(&self) -> Option<&'static str> {
        use TicketError::*;
        match self {
            EmptyTitle | TitleTooLong { .. } => Some("title"),
            TextTooLong { field, .. } => Some(field),
            EmptyFeedback => Some("feedback"),
            IllegalTransition { .. } | AlreadyInStatus(_) | UseRegressToReturnToBuilding => {
                Some("to")
            }
            IllegalPhaseChange { .. } => Some("phase"),
            _ => None,
        }
    }

    fn code(&self) -> &'static str {
        use TicketError::*;
        match self {
            NotFound => "ticket_not_found",
            AlreadyExists => "ticket_already_exists",
            EmptyTitle => "empty_title",
            TitleTooLong { .. } => "title_too_long",
            TextTooLong { .. } => "text_too_long",
            IllegalTransition { .. } => "illegal_transition",
            IllegalPhaseChange { .. } => "illegal_phase_change",
            AlreadyInStatus(_) => "already_in_status",
            UseRegressToReturnToBuilding => "use_regress",
            RegressOnlyFromTesting(_) => "regress_only_from_testing",
            EmptyFeedback => "empty_feedback",
            BlockedCannotBeDone => "blocked_cannot_be_done",
            AlreadyBlocked => "already_blocked",
            NotBlocked => "not_blocked",
            Done => "ticket_done",
        }
    }
}
