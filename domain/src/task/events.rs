use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    Discovery, DiscoveryKind, SteeringSource, TaskStatus, TrajectoryAssessment, ValidationPolicy,
    ValidationTarget, Verdict,
};
use crate::common::{Phase, Priority};
use crate::guardian::InterventionKind;

/// Why a task ended without completing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The error text marks a failure no retry can fix.
    PermanentError,
    /// The attempt failed and every retry has been used.
    RetriesExhausted,
    /// The attempt timed out and every retry has been used.
    TimedOut,
    /// Validation rejected the work once more than the task's revisions allow.
    RevisionsExhausted,
    /// The validation of the work ended without a verdict.
    ValidationAbandoned,
}

impl FailureReason {
    /// The final status this reason leaves the task in: a timeout keeps its own status so
    /// operators can tell slow work from broken work.
    pub fn final_status(self) -> TaskStatus {
        match self {
            Self::PermanentError
            | Self::RetriesExhausted
            | Self::RevisionsExhausted
            | Self::ValidationAbandoned => TaskStatus::PermanentlyFailed,
            Self::TimedOut => TaskStatus::TimedOut,
        }
    }
}

/// What happened to a task. Names and payloads are stable: change them only by adding a
/// new version and an upcaster.
///
/// A failed or timed-out attempt is recorded by `TaskFailed`/`TaskTimedOut` (which do not
/// change the status), always followed in the same command by the outcome:
/// `TaskRetryScheduled` or `TaskPermanentlyFailed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TaskEvent {
    TaskCreated {
        task_id: Uuid,
        organization_id: Uuid,
        project_id: Uuid,
        ticket_id: Uuid,
        title: String,
        description: String,
        task_type: String,
        phase: Phase,
        priority: Priority,
        depends_on: Vec<Uuid>,
        required_capabilities: Vec<String>,
        max_retries: u32,
        timeout_seconds: Option<u32>,
        created_at: DateTime<Utc>,
    },
    TaskAssigned {
        agent_id: Uuid,
        at: DateTime<Utc>,
    },
    TaskStarted {
        at: DateTime<Utc>,
    },
    TaskProgressReported {
        message: String,
    },
    /// The running task reported no progress since `idle_since`; progress clears it.
    TaskStalled {
        agent_id: Uuid,
        idle_since: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A steering message for the agent running the task, waiting for delivery.
    TaskSteered {
        steering_id: Uuid,
        agent_id: Uuid,
        message: String,
        source: SteeringSource,
        at: DateTime<Utc>,
    },
    /// This task looks like a duplicate of `duplicate_of` (trigram similarity of their
    /// titles and descriptions, 0 to 1).
    DuplicateSuspected {
        duplicate_of: Uuid,
        similarity: f64,
        at: DateTime<Utc>,
    },
    /// An LLM assessed the running task's trajectory (a `TaskSteered` follows when it
    /// asked for steering).
    TrajectoryAssessed {
        assessment: TrajectoryAssessment,
        at: DateTime<Utc>,
    },
    /// A guardian acted on the task; the events of the effect follow.
    GuardianIntervened {
        kind: InterventionKind,
        reason: String,
        at: DateTime<Utc>,
    },
    /// Taken from its agent (a guardian's reassignment): back to `pending`, the attempt
    /// not counted.
    TaskUnassigned {
        agent_id: Uuid,
        at: DateTime<Utc>,
    },
    /// An assignment taken back before it was started, because its agent had stopped
    /// taking work as it was made: back to `pending`, the attempt not counted, the agent
    /// not barred (unlike [`TaskEvent::TaskUnassigned`]).
    TaskAssignmentWithdrawn {
        agent_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Its priority was set.
    TaskPriorityChanged {
        priority: Priority,
    },
    /// The agent was handed the steering message.
    SteeringDelivered {
        steering_id: Uuid,
        agent_id: Uuid,
        at: DateTime<Utc>,
    },
    TaskCompleted {
        result: serde_json::Value,
        at: DateTime<Utc>,
    },
    /// Attempt number `attempt` (1 for the first run) failed with `error`.
    TaskFailed {
        error: String,
        attempt: u32,
        at: DateTime<Utc>,
    },
    /// Attempt number `attempt` ran `after_seconds` without finishing.
    TaskTimedOut {
        after_seconds: u64,
        attempt: u32,
        at: DateTime<Utc>,
    },
    /// Retry number `attempt` may be assigned from `not_before` on.
    TaskRetryScheduled {
        attempt: u32,
        not_before: DateTime<Utc>,
    },
    TaskPermanentlyFailed {
        reason: FailureReason,
    },
    TaskCancelled {
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    TaskDependencyAdded {
        depends_on: Uuid,
    },
    TaskDependencyRemoved {
        depends_on: Uuid,
    },
    /// On a task created from a discovery, right after its creation: where it came from.
    TaskDiscovered {
        discovery: Discovery,
    },
    /// On the running task whose agent found work.
    TaskDiscoveryReported {
        discovered_task_id: Uuid,
        kind: DiscoveryKind,
        blocks_parent: bool,
    },
    /// A blocking discovery ended (completed or cancelled).
    TaskDiscoveryResolved {
        discovered_task_id: Uuid,
    },
    /// Right after its creation: the task's work must pass validation to complete.
    TaskValidationRequired {
        policy: ValidationPolicy,
    },
    /// Right after its creation: this task validates another's submission.
    TaskValidates {
        target: ValidationTarget,
    },
    /// The agent finished submission `revision`; it waits for a validation task's verdict.
    TaskSubmittedForValidation {
        result: serde_json::Value,
        revision: u32,
        implementer_agent_id: Option<Uuid>,
        at: DateTime<Utc>,
    },
    /// On a validation task, before its completion: what it found.
    TaskVerdictGiven {
        verdict: Verdict,
    },
    /// The submission passed; `TaskCompleted` with the submitted result follows.
    TaskValidationPassed {
        validation_task_id: Uuid,
        feedback: Option<String>,
    },
    /// Submission `revision` was rejected; its outcome (`TaskRevisionRequested` or
    /// `TaskPermanentlyFailed`) follows in the same command.
    TaskValidationRejected {
        validation_task_id: Uuid,
        revision: u32,
        feedback: String,
    },
    /// The work goes back to an agent as submission `revision`, with the feedback.
    TaskRevisionRequested {
        revision: u32,
    },
    /// The validation ended without a verdict; `TaskPermanentlyFailed` follows.
    TaskValidationAbandoned {
        validation_task_id: Uuid,
    },
    /// Right after its creation from a spec's plan: its key there.
    TaskPlanned {
        key: String,
    },
}

impl TaskEvent {
    /// The status this event leaves the task in, when it changes it: the one rule the
    /// aggregate, the orchestrator's queue and the read models all follow.
    /// `TaskFailed`/`TaskTimedOut` change nothing by themselves (their outcome, a retry or
    /// an end, follows in the same command as its own event).
    pub fn status_after(&self) -> Option<TaskStatus> {
        match self {
            Self::TaskCreated { .. } => Some(TaskStatus::Pending),
            Self::TaskAssigned { .. } => Some(TaskStatus::Assigned),
            Self::TaskStarted { .. } => Some(TaskStatus::Running),
            Self::TaskCompleted { .. } => Some(TaskStatus::Completed),
            Self::TaskRetryScheduled { .. } => Some(TaskStatus::RetryScheduled),
            Self::TaskPermanentlyFailed { reason } => Some(reason.final_status()),
            Self::TaskCancelled { .. } => Some(TaskStatus::Cancelled),
            Self::TaskUnassigned { .. } | Self::TaskAssignmentWithdrawn { .. } => {
                Some(TaskStatus::Pending)
            }
            Self::TaskSubmittedForValidation { .. } => Some(TaskStatus::PendingValidation),
            Self::TaskRevisionRequested { .. } => Some(TaskStatus::NeedsRevision),
            Self::TaskProgressReported { .. }
            | Self::TaskStalled { .. }
            | Self::TaskSteered { .. }
            | Self::SteeringDelivered { .. }
            | Self::GuardianIntervened { .. }
            | Self::DuplicateSuspected { .. }
            | Self::TrajectoryAssessed { .. }
            | Self::TaskPriorityChanged { .. }
            | Self::TaskValidationRequired { .. }
            | Self::TaskValidates { .. }
            | Self::TaskVerdictGiven { .. }
            | Self::TaskValidationPassed { .. }
            | Self::TaskValidationRejected { .. }
            | Self::TaskValidationAbandoned { .. }
            | Self::TaskPlanned { .. }
            | Self::TaskFailed { .. }
            | Self::TaskTimedOut { .. }
            | Self::TaskDependencyAdded { .. }
            | Self::TaskDependencyRemoved { .. }
            | Self::TaskDiscovered { .. }
            | Self::TaskDiscoveryReported { .. }
            | Self::TaskDiscoveryResolved { .. } => None,
        }
    }
}

impl DomainEvent for TaskEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TaskCreated { .. } => "TaskCreated",
            Self::TaskAssigned { .. } => "TaskAssigned",
            Self::TaskStarted { .. } => "TaskStarted",
            Self::TaskProgressReported { .. } => "TaskProgressReported",
            Self::TaskStalled { .. } => "TaskStalled",
            Self::TaskSteered { .. } => "TaskSteered",
            Self::SteeringDelivered { .. } => "SteeringDelivered",
            Self::GuardianIntervened { .. } => "GuardianIntervened",
            Self::DuplicateSuspected { .. } => "DuplicateSuspected",
            Self::TrajectoryAssessed { .. } => "TrajectoryAssessed",
            Self::TaskUnassigned { .. } => "TaskUnassigned",
            Self::TaskAssignmentWithdrawn { .. } => "TaskAssignmentWithdrawn",
            Self::TaskPriorityChanged { .. } => "TaskPriorityChanged",
            Self::TaskCompleted { .. } => "TaskCompleted",
            Self::TaskFailed { .. } => "TaskFailed",
            Self::TaskTimedOut { .. } => "TaskTimedOut",
            Self::TaskRetryScheduled { .. } => "TaskRetryScheduled",
            Self::TaskPermanentlyFailed { .. } => "TaskPermanentlyFailed",
            Self::TaskCancelled { .. } => "TaskCancelled",
            Self::TaskDependencyAdded { .. } => "TaskDependencyAdded",
            Self::TaskDependencyRemoved { .. } => "TaskDependencyRemoved",
            Self::TaskDiscovered { .. } => "TaskDiscovered",
            Self::TaskDiscoveryReported { .. } => "TaskDiscoveryReported",
            Self::TaskDiscoveryResolved { .. } => "TaskDiscoveryResolved",
            Self::TaskValidationRequired { .. } => "TaskValidationRequired",
            Self::TaskValidates { .. } => "TaskValidates",
            Self::TaskSubmittedForValidation { .. } => "TaskSubmittedForValidation",
            Self::TaskVerdictGiven { .. } => "TaskVerdictGiven",
            Self::TaskValidationPassed { .. } => "TaskValidationPassed",
            Self::TaskValidationRejected { .. } => "TaskValidationRejected",
            Self::TaskRevisionRequested { .. } => "TaskRevisionRequested",
            Self::TaskValidationAbandoned { .. } => "TaskValidationAbandoned",
            Self::TaskPlanned { .. } => "TaskPlanned",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
