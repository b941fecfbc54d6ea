use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::TaskStatus;
use crate::common::{DomainError, ErrorKind, Priority, TextProblem};

/// Every rule that can refuse a task command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("task not found")]
    NotFound,
    #[error("a task with this id already exists")]
    AlreadyExists,
    #[error("title must not be empty")]
    EmptyTitle,
    #[error("title is longer than {max} characters")]
    TitleTooLong { max: usize },
    #[error("{field} must not be empty")]
    EmptyText { field: &'static str },
    #[error("{field} is longer than {max} characters")]
    TextTooLong { field: &'static str, max: usize },
    #[error("task type must not be empty")]
    EmptyTaskType,
    #[error("task type is longer than {max} characters")]
    TaskTypeTooLong { max: usize },
    #[error("a required capability must not be empty")]
    EmptyCapability,
    #[error("a required capability is longer than {max} characters")]
    CapabilityTooLong { max: usize },
    #[error("a task may require at most {max} capabilities (as many as an agent can have)")]
    TooManyCapabilities { max: usize },
    #[error("max_retries must be at most {max}")]
    TooManyRetries { max: u32 },
    #[error("timeout_seconds must be greater than zero")]
    ZeroTimeout,
    #[error("a task cannot depend on itself")]
    SelfDependency,
    #[error("a task may depend on at most {max} tasks")]
    TooManyDependencies { max: usize },
    #[error("the task already depends on {0}")]
    DuplicateDependency(Uuid),
    #[error("the task does not depend on {0}")]
    UnknownDependency(Uuid),
    #[error("dependencies can change only while the task waits for an agent (it is {0})")]
    DependenciesFrozen(TaskStatus),
    #[error("a {from} task cannot {action}")]
    IllegalTransition {
        from: TaskStatus,
        action: &'static str,
    },
    #[error("the retry is not due before {not_before}")]
    RetryNotDue { not_before: DateTime<Utc> },
    #[error("the task has not exceeded its timeout, due at {deadline}")]
    NotTimedOutYet { deadline: DateTime<Utc> },
    #[error("the task waits for the work it discovered: {}", list(.0))]
    DiscoveriesOpen(Vec<Uuid>),
    #[error("max_revisions must be at most {max}")]
    TooManyRevisions { max: u32 },
    #[error("a validation task is never validated itself")]
    ValidationOfValidation,
    #[error("a validation task completes by its verdict (POST …/verdict)")]
    VerdictRequired,
    #[error("only a validation task gives a verdict")]
    NotAValidation,
    #[error("a rejection must say what to revise (feedback)")]
    FeedbackRequired,
    #[error("the agent that did the work cannot validate it")]
    ImplementerCannotValidate,
    #[error("a Guardian took the task from this agent; another agent must have it first")]
    ReassignedAway,
    #[error("the task has no agent")]
    NotAssigned,
    #[error("the task is assigned to another agent")]
    HeldByAnotherAgent,
    #[error("a task is not a duplicate of itself")]
    DuplicateOfItself,
    #[error("the task's priority is already {0:?}")]
    PriorityUnchanged(Priority),
    #[error("the task is already marked stalled; progress clears it")]
    AlreadyStalled,
    #[error("the assignment given back was started or replaced since")]
    AssignmentMovedOn,
    #[error("the step is of an assignment the task was taken from since (it was assigned again at {current})")]
    AssignmentSuperseded { current: String },
    #[error("the stall's idle time is before the running attempt's start")]
    StallBeforeStart,
    #[error("the running attempt reported progress since the stall was found ({reported} reports, {seen} seen)")]
    ProgressSinceStall { seen: u32, reported: u32 },
    #[error("{max} steering messages already wait for the agent")]
    TooMuchSteering { max: usize },
    #[error("the task reported {max} discoveries already, as many as a task may")]
    TooManyDiscoveries { max: u32 },
    #[error("the verdict is on submission {given}, the task waits for the verdict on submission {current}")]
    StaleVerdict { given: u32, current: u32 },
}

fn list(ids: &[Uuid]) -> String {
    ids.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl TaskError {
    pub(crate) fn title(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyTitle,
            TextProblem::TooLong { max } => Self::TitleTooLong { max },
        }
    }

    pub(crate) fn task_type(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyTaskType,
            TextProblem::TooLong { max } => Self::TaskTypeTooLong { max },
        }
    }

    pub(crate) fn capability(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyCapability,
            TextProblem::TooLong { max } => Self::CapabilityTooLong { max },
        }
    }

    pub(crate) fn text(field: &'static str, problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyText { field },
            TextProblem::TooLong { max } => Self::TextTooLong { field, max },
        }
    }
}

impl DomainError for TaskError {
    fn kind(&self) -> ErrorKind {
        use TaskError::*;
        match self {
            NotFound => ErrorKind::NotFound,
            EmptyTitle
            | TitleTooLong { .. }
            | EmptyText { .. }
            | TextTooLong { .. }
            | EmptyTaskType
            | TaskTypeTooLong { .. }
            | EmptyCapability
            | CapabilityTooLong { .. }
            | TooManyCapabilities { .. }
            | TooManyRetries { .. }
            | ZeroTimeout
            | TooManyRevisions { .. }
            | ValidationOfValidation
            | FeedbackRequired => ErrorKind::Invalid,
            HeldByAnotherAgent => ErrorKind::Forbidden,
            // The graph as it stands refuses the edge: a task waiting for itself is the
            // shortest cycle, and the limit counts the dependencies it already has.
            SelfDependency
            | TooManyDependencies { .. }
            | AlreadyExists
            | DuplicateDependency(_)
            | UnknownDependency(_)
            | DependenciesFrozen(_)
            | IllegalTransition { .. }
            | RetryNotDue { .. }
            | NotTimedOutYet { .. }
            | DiscoveriesOpen(_)
            | VerdictRequired
            | NotAValidation
            | ImplementerCannotValidate
            | ReassignedAway
            | StaleVerdict { .. }
            | NotAssigned
            | DuplicateOfItself
            | PriorityUnchanged(_)
            | AlreadyStalled
            | AssignmentMovedOn
            | AssignmentSuperseded { .. }
            | StallBeforeStart
            | ProgressSinceStall { .. }
            | TooMuchSteering { .. }
            | TooManyDiscoveries { .. } => ErrorKind::Conflict,
        }
    }

    fn field(&self) -> Option<&'static str> {
        use TaskError::*;
        match self {
            EmptyTitle | TitleTooLong { .. } => Some("title"),
            EmptyText { field } | TextTooLong { field, .. } => Some(field),
            EmptyTaskType | TaskTypeTooLong { .. } => Some("task_type"),
            EmptyCapability | CapabilityTooLong { .. } | TooManyCapabilities { .. } => {
                Some("required_capabilities")
            }
            TooManyRetries { .. } => Some("max_retries"),
            ZeroTimeout => Some("timeout_seconds"),
            TooManyRevisions { .. } => Some("max_revisions"),
            ValidationOfValidation => Some("validation"),
            FeedbackRequired => Some("feedback"),
            SelfDependency
            | TooManyDependencies { .. }
            | DuplicateDependency(_)
            | UnknownDependency(_) => Some("depends_on"),
            _ => None,
        }
    }

    fn code(&self) -> &'static str {
        use TaskError::*;
        match self {
            NotFound => "task_not_found",
            AlreadyExists => "task_already_exists",
            EmptyTitle => "empty_title",
            TitleTooLong { .. } => "title_too_long",
            EmptyText { .. } => "empty_text",
            TextTooLong { .. } => "text_too_long",
            EmptyTaskType => "empty_task_type",
            TaskTypeTooLong { .. } => "task_type_too_long",
            EmptyCapability => "empty_capability",
            CapabilityTooLong { .. } => "capability_too_long",
            TooManyCapabilities { .. } => "too_many_capabilities",
            TooManyRetries { .. } => "too_many_retries",
            ZeroTimeout => "zero_timeout",
            SelfDependency => "self_dependency",
            TooManyDependencies { .. } => "too_many_dependencies",
            DuplicateDependency(_) => "duplicate_dependency",
            UnknownDependency(_) => "unknown_dependency",
            DependenciesFrozen(_) => "dependencies_frozen",
            IllegalTransition { .. } => "illegal_transition",
            RetryNotDue { .. } => "retry_not_due",
            NotTimedOutYet { .. } => "not_timed_out_yet",
            DiscoveriesOpen(_) => "discoveries_open",
            TooManyRevisions { .. } => "too_many_revisions",
            ValidationOfValidation => "validation_of_validation",
            VerdictRequired => "verdict_required",
            NotAValidation => "not_a_validation",
            FeedbackRequired => "feedback_required",
            ImplementerCannotValidate => "implementer_cannot_validate",
            ReassignedAway => "reassigned_away",
            StaleVerdict { .. } => "stale_verdict",
            NotAssigned => "task_not_assigned",
            HeldByAnotherAgent => "held_by_another_agent",
            DuplicateOfItself => "duplicate_of_itself",
            PriorityUnchanged(_) => "priority_unchanged",
            AlreadyStalled => "already_stalled",
            AssignmentMovedOn => "assignment_moved_on",
            AssignmentSuperseded { .. } => "assignment_superseded",
            StallBeforeStart => "stall_before_start",
            ProgressSinceStall { .. } => "progress_since_stall",
            TooMuchSteering { .. } => "too_much_steering",
            TooManyDiscoveries { .. } => "too_many_discoveries",
        }
    }
}
