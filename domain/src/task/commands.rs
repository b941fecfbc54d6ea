use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    Discovery, DiscoveryKind, SteeringSource, TrajectoryAssessment, ValidationPolicy,
    ValidationTarget, Verdict,
};
use crate::common::{Phase, Priority};
use crate::guardian::InterventionKind;

/// What a guardian does to a task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskIntervention {
    /// Cancelled at once.
    EmergencyCancel,
    /// Taken from its agent, back to the queue (`pending`), the attempt not counted.
    Reassign,
    /// Its priority set.
    PriorityOverride { priority: Priority },
    /// A steering message for its agent.
    Steer { steering_id: Uuid, message: String },
}

impl TaskIntervention {
    pub fn kind(&self) -> InterventionKind {
        match self {
            Self::EmergencyCancel => InterventionKind::EmergencyCancel,
            Self::Reassign => InterventionKind::Reassign,
            Self::PriorityOverride { .. } => InterventionKind::PriorityOverride,
            Self::Steer { .. } => InterventionKind::Steer,
        }
    }
}

/// Everything that can be asked of a task.
// A command lives for one decision and is moved, not stored: the size of its largest
// variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum TaskCommand {
    CreateTask {
        task_id: Uuid,
        organization_id: Uuid,
        project_id: Uuid,
        ticket_id: Uuid,
        title: String,
        description: String,
        task_type: String,
        phase: Phase,
        priority: Priority,
        /// Duplicates are merged.
        depends_on: Vec<Uuid>,
        /// Trimmed; duplicates are merged.
        required_capabilities: Vec<String>,
        /// `None` means [`super::DEFAULT_MAX_RETRIES`].
        max_retries: Option<u32>,
        timeout_seconds: Option<u32>,
        /// Set when an agent discovered this work while running another task.
        discovery: Option<Discovery>,
        /// Set when the task's work must pass another agent's validation to complete.
        validation: Option<ValidationPolicy>,
        /// Set on a validation task: the submission it checks.
        validates: Option<ValidationTarget>,
        /// Its key in the spec's plan, when a plan made it.
        plan_key: Option<String>,
        at: DateTime<Utc>,
    },
    /// The running task's agent found work, created as task `discovered_task_id`.
    ReportDiscovery {
        discovered_task_id: Uuid,
        kind: DiscoveryKind,
        blocks_parent: bool,
    },
    /// Discovered task `discovered_task_id` ended: it no longer holds this task back.
    /// Nothing happens unless it did.
    ResolveDiscovery {
        discovered_task_id: Uuid,
    },
    /// A step of an attempt sent by, or for, the agent that runs it (start, progress,
    /// completion, failure, verdict, timeout): decided only while the task is assigned to
    /// that agent. An agent that lost the task (reassigned, timed out, taken back by the
    /// Guardian) changes nothing of the attempt that followed — decided on the state the
    /// command is appended against, so no reassignment can slip in between. `assignment`,
    /// when the step names one (the `assigned_at` its claim answered), must be the task's
    /// current one: the same agent may hold the task again, in a later assignment, while
    /// a run of the earlier one still reports.
    AsHolder {
        agent_id: Uuid,
        assignment: Option<DateTime<Utc>>,
        command: Box<TaskCommand>,
    },
    /// Gives a pending task (or a retry whose backoff has elapsed) to an agent.
    AssignTask {
        agent_id: Uuid,
        at: DateTime<Utc>,
    },
    /// The assigned agent began working.
    StartTask {
        at: DateTime<Utc>,
    },
    ReportProgress {
        message: String,
    },
    /// Supervision found the running task without progress since `idle_since`, having
    /// seen `progress_seen` progress reports of the running attempt: refused when there
    /// are more by now (progress came after the sweep looked).
    MarkStalled {
        idle_since: DateTime<Utc>,
        progress_seen: u32,
        at: DateTime<Utc>,
    },
    /// A message for the agent running the task. An id already recorded records nothing.
    SteerTask {
        steering_id: Uuid,
        message: String,
        source: SteeringSource,
        at: DateTime<Utc>,
    },
    /// An LLM's assessment of the running task's trajectory, recorded; when it asks for
    /// steering, its message goes to the agent (`steering_id`, source `trajectory`).
    AssessTrajectory {
        assessment: TrajectoryAssessment,
        steering_id: Uuid,
        at: DateTime<Utc>,
    },
    /// The Conductor found this open task's text near-identical to an older open task's
    /// of the same project. A pair already flagged records nothing.
    FlagDuplicate {
        duplicate_of: Uuid,
        similarity: f64,
        at: DateTime<Utc>,
    },
    /// A guardian acts on the task (`GuardianIntervened`, then its effect).
    Intervene {
        intervention: TaskIntervention,
        reason: String,
        at: DateTime<Utc>,
    },
    /// The agent was handed these steering messages; ids not pending are ignored.
    AcknowledgeSteering {
        steering_ids: Vec<Uuid>,
        at: DateTime<Utc>,
    },
    CompleteTask {
        result: serde_json::Value,
        at: DateTime<Utc>,
    },
    /// The assignment made at `assigned_at` was not started in time: its attempt fails (to
    /// be retried), unless the task was started or assigned anew since — a sweep reading
    /// the log a moment behind must not fail the attempt that followed.
    GiveBackUnstarted {
        assigned_at: DateTime<Utc>,
        error: String,
        at: DateTime<Utc>,
        jitter: f64,
    },
    /// The assignment made at `assigned_at` is taken back, the attempt not counted and
    /// nobody barred: its agent had stopped taking work (was quarantined, failed or
    /// terminated) as it was made. Also once started (an in-process agent starts in its
    /// assignment's own transaction; its worker stops the run), not once the attempt
    /// ended or the task was assigned anew.
    WithdrawAssignment {
        assigned_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// The attempt failed; the task is retried or ends, per the retry policy.
    /// `jitter` is a sample of `[0, 1)` for the backoff.
    FailTask {
        error: String,
        at: DateTime<Utc>,
        jitter: f64,
    },
    /// The running attempt exceeded its timeout; retried or ended like a failure.
    TimeOutTask {
        at: DateTime<Utc>,
        jitter: f64,
    },
    /// The running validation task's agent judged the work it checks; the validation task
    /// completes with the verdict as its result.
    GiveVerdict {
        verdict: Verdict,
        at: DateTime<Utc>,
    },
    /// Validation task `validation_task_id` judged submission `revision` of this task.
    ApplyVerdict {
        validation_task_id: Uuid,
        revision: u32,
        verdict: Verdict,
        at: DateTime<Utc>,
    },
    /// Validation task `validation_task_id` of submission `revision` ended without a
    /// verdict (cancelled, failed for good): the work cannot be validated.
    AbandonValidation {
        validation_task_id: Uuid,
        revision: u32,
    },
    CancelTask {
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    AddDependency {
        depends_on: Uuid,
    },
    RemoveDependency {
        depends_on: Uuid,
    },
}
