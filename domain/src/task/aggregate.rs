use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    is_permanent_error, retry_backoff, Discovery, FailureReason, Steering, SteeringSource,
    TaskCommand, TaskError, TaskEvent, TaskIntervention, TrajectoryAssessment, ValidationPolicy,
    ValidationTarget, Verdict, DEFAULT_MAX_RETRIES, MAX_MAX_RETRIES, MAX_MAX_REVISIONS,
    MAX_PENDING_STEERING, MAX_STEERING_CHARS, REMEMBERED_STEERING,
};
use crate::common::{
    clipped, optional_text, required_text, Phase, Priority, Scope, Scoped, MAX_TEXT_CHARS,
    MAX_TITLE_CHARS,
};
use crate::guardian;

/// Longest task type (a free label such as `implement` or `write_tests`).
pub const MAX_TASK_TYPE_CHARS: usize = 64;
/// Longest required capability name.
pub const MAX_CAPABILITY_CHARS: usize = 64;
/// Most capabilities a task may require: an agent holds at most as many, so a task
/// requiring more could never be claimed.
pub const MAX_REQUIRED_CAPABILITIES: usize = crate::agent::MAX_CAPABILITIES;
/// Longest progress message: progress is a status line, not a log.
pub const MAX_PROGRESS_CHARS: usize = 2000;
/// The most tasks one task may wait for; each dependency is looked up when it is added.
pub const MAX_DEPENDENCIES: usize = 100;
/// Most discoveries one task reports over its life: each is a new task in every replica's
/// ready queue, so an agent (or a loop in one) cannot flood its project.
pub const MAX_DISCOVERIES: u32 = 100;

/// Where a task stands in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    #[default]
    Pending,
    Assigned,
    Running,
    Completed,
    RetryScheduled,
    PermanentlyFailed,
    Cancelled,
    TimedOut,
    /// The work is submitted and waits for a validation task's verdict.
    PendingValidation,
    /// Validation rejected the work: it waits for an agent to revise it.
    NeedsRevision,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 10] = [
        Self::Pending,
        Self::Assigned,
        Self::Running,
        Self::Completed,
        Self::RetryScheduled,
        Self::PermanentlyFailed,
        Self::Cancelled,
        Self::TimedOut,
        Self::PendingValidation,
        Self::NeedsRevision,
    ];

    /// A final task never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::PermanentlyFailed | Self::Cancelled | Self::TimedOut
        )
    }

    /// Waits for an agent: what the dispatcher may assign (a retry once it is due).
    pub fn is_assignable(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::RetryScheduled | Self::NeedsRevision
        )
    }

    /// Held by an agent: assigned or running.
    pub fn is_held(self) -> bool {
        matches!(self, Self::Assigned | Self::Running)
    }

    /// Whether a task in this status, with `open_discoveries` (blocking discoveries not
    /// yet resolved) or none, holds a place under its organization's and its project's
    /// caps: held by an agent and not waiting for work it discovered. A task waiting gives
    /// its place to that work while it waits — else, at a cap of one, each would wait for
    /// the other for ever. The one rule of the claims, the worker and a person's
    /// assignment.
    pub fn holds_a_place(self, open_discoveries: bool) -> bool {
        self.is_held() && !open_discoveries
    }

    /// Dependencies may change only while no agent holds the task.
    pub fn accepts_dependency_changes(self) -> bool {
        self.is_assignable()
    }

    pub fn as_str(self) -> &'static str {
        use TaskStatus::*;
        match self {
            Pending => "pending",
            Assigned => "assigned",
            Running => "running",
            Completed => "completed",
            RetryScheduled => "retry_scheduled",
            PermanentlyFailed => "permanently_failed",
            Cancelled => "cancelled",
            TimedOut => "timed_out",
            PendingValidation => "pending_validation",
            NeedsRevision => "needs_revision",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task's current state: the fold of its events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub ticket_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub task_type: String,
    pub phase: Phase,
    pub priority: Priority,
    pub depends_on: BTreeSet<Uuid>,
    pub required_capabilities: BTreeSet<String>,
    pub max_retries: u32,
    pub timeout_seconds: Option<u32>,
    pub status: TaskStatus,
    pub assigned_agent_id: Option<Uuid>,
    /// Retries scheduled so far; never above `max_retries`.
    pub retry_count: u32,
    /// While `retry_scheduled`: the earliest instant the retry may be assigned.
    pub not_before: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// The latest progress message of the current attempt.
    pub progress: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    /// How many times an agent started it, over every attempt (`started_at` is the
    /// current attempt's, and is cleared when a Guardian takes the task away).
    #[serde(default)]
    pub starts: u32,
    pub completed_at: Option<DateTime<Utc>>,
    /// Where the task came from, when an agent discovered it while running another.
    pub discovery: Option<Discovery>,
    /// Discovered tasks that block this one until they complete or are cancelled.
    pub open_discoveries: BTreeSet<Uuid>,
    /// Discoveries this task reported, all attempts together (at most
    /// [`MAX_DISCOVERIES`]).
    pub discoveries_reported: u32,
    /// Set when the task's work must pass validation to complete.
    pub validation: Option<ValidationPolicy>,
    /// The submission under way: 0 until validation first rejects the work.
    pub revision: u32,
    /// While `pending_validation`: the submitted result, which completion keeps.
    #[schema(value_type = Option<Object>)]
    pub submitted_result: Option<serde_json::Value>,
    /// The agent that did the submitted work.
    pub implementer_agent_id: Option<Uuid>,
    /// The last validator's feedback, for the revision.
    pub feedback: Option<String>,
    /// On a validation task: the submission it checks.
    pub validates: Option<ValidationTarget>,
    /// On a validation task: its finding, once given.
    pub verdict: Option<Verdict>,
    /// Its key in the spec's plan (`TSK-001`), when a plan made it.
    pub plan_key: Option<String>,
    /// When the task was last assigned (kept after the attempt ends).
    #[serde(default)]
    pub assigned_at: Option<DateTime<Utc>>,
    /// Set while the running attempt is stalled: since when it reported nothing.
    pub stalled_since: Option<DateTime<Utc>>,
    /// Progress reports of the running attempt (none at its start): a stall decided on
    /// fewer was decided before the newest ([`TaskCommand::MarkStalled`]).
    #[serde(default)]
    pub progress_reports: u32,
    /// Steering messages for the agent, not yet handed to it.
    pub pending_steering: Vec<Steering>,
    /// The newest steering ids recorded (pending or delivered), oldest first.
    #[serde(default)]
    pub recent_steering_ids: Vec<Uuid>,
    /// Older tasks this one looks like a duplicate of (the Conductor's finding).
    #[serde(default)]
    pub suspected_duplicates: BTreeSet<Uuid>,
    /// The agent a Guardian's reassignment took the task from: it may not take the task
    /// back before another agent has had it (its waiting claim would undo the
    /// intervention at once).
    #[serde(default)]
    pub reassigned_from: Option<Uuid>,
}

impl Task {
    fn exists(&self) -> bool {
        self.id.is_some()
    }

    /// Whether the task holds a place under the caps ([`TaskStatus::holds_a_place`]).
    pub fn holds_a_place(&self) -> bool {
        self.status.holds_a_place(!self.open_discoveries.is_empty())
    }

    /// Refuses `action` unless the task exists and is in one of the `allowed` statuses.
    fn ensure_in(&self, allowed: &[TaskStatus], action: &'static str) -> Result<(), TaskError> {
        if !self.exists() {
            return Err(TaskError::NotFound);
        }
        if !allowed.contains(&self.status) {
            return Err(TaskError::IllegalTransition {
                from: self.status,
                action,
            });
        }
        Ok(())
    }

    /// The events `command` would append to the task as it stands, or the rule that
    /// refuses it; the task itself is left as it is.
    pub fn decide(&self, command: TaskCommand) -> Result<Vec<TaskEvent>, TaskError> {
        match command {
            TaskCommand::CreateTask {
                task_id,
                organization_id,
                project_id,
                ticket_id,
                title,
                description,
                task_type,
                phase,
                priority,
                depends_on,
                required_capabilities,
                max_retries,
                timeout_seconds,
                discovery,
                validation,
                validates,
                plan_key,
                at,
            } => {
                if self.exists() {
                    return Err(TaskError::AlreadyExists);
                }
                if validation.is_some() && validates.is_some() {
                    return Err(TaskError::ValidationOfValidation);
                }
                if validation.is_some_and(|p| p.max_revisions > MAX_MAX_REVISIONS) {
                    return Err(TaskError::TooManyRevisions {
                        max: MAX_MAX_REVISIONS,
                    });
                }
                let mut events = vec![TaskEvent::TaskCreated {
                    task_id,
                    organization_id,
                    project_id,
                    ticket_id,
                    title: required_text(&title, MAX_TITLE_CHARS).map_err(TaskError::title)?,
                    description: optional_text(&description, MAX_TEXT_CHARS)
                        .map_err(|p| TaskError::text("description", p))?,
                    task_type: required_text(&task_type, MAX_TASK_TYPE_CHARS)
                        .map_err(TaskError::task_type)?,
                    phase,
                    priority,
                    depends_on: checked_dependencies(task_id, depends_on)?,
                    required_capabilities: checked_capabilities(required_capabilities)?,
                    max_retries: checked_max_retries(max_retries)?,
                    timeout_seconds: checked_timeout(timeout_seconds)?,
                    created_at: at,
                }];
                events.extend(discovery.map(|discovery| TaskEvent::TaskDiscovered { discovery }));
                events
                    .extend(validation.map(|policy| TaskEvent::TaskValidationRequired { policy }));
                events.extend(validates.map(|target| TaskEvent::TaskValidates { target }));
                events.extend(plan_key.map(|key| TaskEvent::TaskPlanned { key }));
                Ok(events)
            }
            TaskCommand::ReportDiscovery {
                discovered_task_id,
                kind,
                blocks_parent,
            } => {
                self.ensure_in(&[TaskStatus::Running], "report a discovery")?;
                if self.discoveries_reported >= MAX_DISCOVERIES {
                    return Err(TaskError::TooManyDiscoveries {
                        max: MAX_DISCOVERIES,
                    });
                }
                Ok(vec![TaskEvent::TaskDiscoveryReported {
                    discovered_task_id,
                    kind,
                    blocks_parent,
                }])
            }
            TaskCommand::ResolveDiscovery { discovered_task_id } => {
                if !self.open_discoveries.contains(&discovered_task_id) {
                    return Ok(vec![]);
                }
                Ok(vec![TaskEvent::TaskDiscoveryResolved {
                    discovered_task_id,
                }])
            }
            TaskCommand::AssignTask { agent_id, at } => self.assign(agent_id, at),
            TaskCommand::AsHolder {
                agent_id,
                assignment,
                command,
            } => {
                self.ensure_held_by(agent_id)?;
                self.ensure_assignment(assignment)?;
                self.decide(*command)
            }
            TaskCommand::StartTask { at } => {
                self.ensure_in(&[TaskStatus::Assigned], "start")?;
                Ok(vec![TaskEvent::TaskStarted { at }])
            }
            TaskCommand::ReportProgress { message } => {
                self.ensure_in(&[TaskStatus::Running], "report progress")?;
                let message = required_text(&message, MAX_PROGRESS_CHARS)
                    .map_err(|p| TaskError::text("message", p))?;
                Ok(vec![TaskEvent::TaskProgressReported { message }])
            }
            TaskCommand::MarkStalled {
                idle_since,
                progress_seen,
                at,
            } => {
                self.ensure_in(&[TaskStatus::Running], "stall")?;
                let agent_id = self.assigned_agent_id.ok_or(TaskError::NotAssigned)?;
                if self.stalled_since.is_some() {
                    return Err(TaskError::AlreadyStalled);
                }
                // The sweep read the attempt before its newest progress report, which
                // came after it looked (the report carries no time to compare with).
                if self.progress_reports != progress_seen {
                    return Err(TaskError::ProgressSinceStall {
                        seen: progress_seen,
                        reported: self.progress_reports,
                    });
                }
                // Idle since before this attempt started: a sweep saw the attempt before
                // (its queue a moment behind the log), not this one.
                if self.started_at.is_some_and(|started| idle_since < started) {
                    return Err(TaskError::StallBeforeStart);
                }
                Ok(vec![TaskEvent::TaskStalled {
                    agent_id,
                    idle_since,
                    at,
                }])
            }
            TaskCommand::SteerTask {
                steering_id,
                message,
                source,
                at,
            } => self.steer(steering_id, message, source, at),
            TaskCommand::AssessTrajectory {
                assessment,
                steering_id,
                at,
            } => self.assess(assessment, steering_id, at),
            TaskCommand::FlagDuplicate {
                duplicate_of,
                similarity,
                at,
            } => {
                if !self.exists() {
                    return Err(TaskError::NotFound);
                }
                if self.status.is_final() {
                    return Err(TaskError::IllegalTransition {
                        from: self.status,
                        action: "be flagged as a duplicate",
                    });
                }
                if Some(duplicate_of) == self.id {
                    return Err(TaskError::DuplicateOfItself);
                }
                if self.suspected_duplicates.contains(&duplicate_of) {
                    return Ok(vec![]);
                }
                Ok(vec![TaskEvent::DuplicateSuspected {
                    duplicate_of,
                    similarity: similarity.clamp(0.0, 1.0),
                    at,
                }])
            }
            TaskCommand::Intervene {
                intervention,
                reason,
                at,
            } => self.intervene(intervention, reason, at),
            TaskCommand::AcknowledgeSteering { steering_ids, at } => {
                if !self.exists() {
                    return Err(TaskError::NotFound);
                }
                Ok(self
                    .pending_steering
                    .iter()
                    .filter(|s| steering_ids.contains(&s.steering_id))
                    .filter_map(|s| {
                        Some(TaskEvent::SteeringDelivered {
                            steering_id: s.steering_id,
                            agent_id: self.assigned_agent_id?,
                            at,
                        })
                    })
                    .collect())
            }
            TaskCommand::CompleteTask { result, at } => self.complete(result, at),
            TaskCommand::GiveVerdict { verdict, at } => self.give_verdict(verdict, at),
            TaskCommand::ApplyVerdict {
                validation_task_id,
                revision,
                verdict,
                at,
            } => self.apply_verdict(validation_task_id, revision, verdict, at),
            TaskCommand::AbandonValidation {
                validation_task_id,
                revision,
            } => {
                self.ensure_awaiting_verdict(revision)?;
                Ok(vec![
                    TaskEvent::TaskValidationAbandoned { validation_task_id },
                    TaskEvent::TaskPermanentlyFailed {
                        reason: FailureReason::ValidationAbandoned,
                    },
                ])
            }
            TaskCommand::GiveBackUnstarted {
                assigned_at,
                error,
                at,
                jitter,
            } => {
                self.ensure_in(&[TaskStatus::Assigned], "be given back unstarted")?;
                if self.assigned_at != Some(assigned_at) {
                    return Err(TaskError::AssignmentMovedOn);
                }
                self.fail(error, at, jitter)
            }
            TaskCommand::WithdrawAssignment { assigned_at, at } => {
                self.ensure_in(
                    &[TaskStatus::Assigned, TaskStatus::Running],
                    "have its assignment withdrawn",
                )?;
                if self.assigned_at != Some(assigned_at) {
                    return Err(TaskError::AssignmentMovedOn);
                }
                let agent_id = self.assigned_agent_id.ok_or(TaskError::NotAssigned)?;
                Ok(vec![TaskEvent::TaskAssignmentWithdrawn { agent_id, at }])
            }
            TaskCommand::FailTask { error, at, jitter } => self.fail(error, at, jitter),
            TaskCommand::TimeOutTask { at, jitter } => self.time_out(at, jitter),
            TaskCommand::CancelTask { reason, at } => self.cancel(reason, at),
            TaskCommand::AddDependency { depends_on } => self.add_dependency(depends_on),
            TaskCommand::RemoveDependency { depends_on } => self.remove_dependency(depends_on),
        }
    }

    /// A guardian's intervention: `GuardianIntervened`, then the events of its effect,
    /// decided by the same rules as the ordinary commands.
    fn intervene(
        &self,
        intervention: TaskIntervention,
        reason: String,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        let reason = guardian::reason(&reason).map_err(|p| TaskError::text("reason", p))?;
        let kind = intervention.kind();
        let effect = match intervention {
            TaskIntervention::EmergencyCancel => self.cancel(Some(reason.clone()), at)?,
            TaskIntervention::Reassign => {
                use TaskStatus::*;
                self.ensure_in(&[Assigned, Running], "be reassigned")?;
                let agent_id = self.assigned_agent_id.ok_or(TaskError::NotAssigned)?;
                vec![TaskEvent::TaskUnassigned { agent_id, at }]
            }
            TaskIntervention::PriorityOverride { priority } => {
                if !self.exists() {
                    return Err(TaskError::NotFound);
                }
                if self.status.is_final() {
                    return Err(TaskError::IllegalTransition {
                        from: self.status,
                        action: "change priority",
                    });
                }
                if priority == self.priority {
                    return Err(TaskError::PriorityUnchanged(priority));
                }
                vec![TaskEvent::TaskPriorityChanged { priority }]
            }
            TaskIntervention::Steer {
                steering_id,
                message,
            } => {
                let steered = self.steer(steering_id, message, SteeringSource::Guardian, at)?;
                if steered.is_empty() {
                    // Sent before under this id: the intervention is recorded once too.
                    return Ok(vec![]);
                }
                steered
            }
        };
        let mut events = vec![TaskEvent::GuardianIntervened { kind, reason, at }];
        events.extend(effect);
        Ok(events)
    }

    /// A message for the running task's agent; an id seen before records nothing.
    fn steer(
        &self,
        steering_id: Uuid,
        message: String,
        source: SteeringSource,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        if self.recent_steering_ids.contains(&steering_id) {
            return Ok(vec![]);
        }
        self.ensure_in(&[TaskStatus::Running], "be steered")?;
        let agent_id = self.assigned_agent_id.ok_or(TaskError::NotAssigned)?;
        let message = required_text(&message, MAX_STEERING_CHARS)
            .map_err(|p| TaskError::text("message", p))?;
        if self.pending_steering.len() >= MAX_PENDING_STEERING {
            return Err(TaskError::TooMuchSteering {
                max: MAX_PENDING_STEERING,
            });
        }
        Ok(vec![TaskEvent::TaskSteered {
            steering_id,
            agent_id,
            message,
            source,
            at,
        }])
    }

    /// Records an assessment of a running task, clamped and clipped to the domain's
    /// bounds; its steering message follows as `TaskSteered` when it asked for steering
    /// and the task can take one (an empty message or a full inbox records the
    /// assessment alone).
    fn assess(
        &self,
        mut assessment: TrajectoryAssessment,
        steering_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        self.ensure_in(&[TaskStatus::Running], "be assessed")?;
        assessment.alignment_score = if assessment.alignment_score.is_nan() {
            0.0
        } else {
            assessment.alignment_score.clamp(0.0, 1.0)
        };
        assessment.reason = clipped(&assessment.reason, MAX_TEXT_CHARS);
        assessment.model = clipped(&assessment.model, MAX_TITLE_CHARS);
        assessment.steering_message = assessment
            .steering_message
            .map(|m| clipped(&m, MAX_STEERING_CHARS));
        let steering = match (&assessment.steering_message, assessment.needs_steering) {
            (Some(message), true) => self
                .steer(steering_id, message.clone(), SteeringSource::Trajectory, at)
                .unwrap_or_default(),
            _ => vec![],
        };
        let mut events = vec![TaskEvent::TrajectoryAssessed { assessment, at }];
        events.extend(steering);
        Ok(events)
    }

    fn assign(&self, agent_id: Uuid, at: DateTime<Utc>) -> Result<Vec<TaskEvent>, TaskError> {
        use TaskStatus::*;
        self.ensure_in(&[Pending, RetryScheduled, NeedsRevision], "assign")?;
        if let Some(not_before) = self.not_before.filter(|due| at < *due) {
            return Err(TaskError::RetryNotDue { not_before });
        }
        if self
            .validates
            .is_some_and(|target| !target.allows(agent_id))
        {
            return Err(TaskError::ImplementerCannotValidate);
        }
        if self.reassigned_from == Some(agent_id) {
            return Err(TaskError::ReassignedAway);
        }
        Ok(vec![TaskEvent::TaskAssigned { agent_id, at }])
    }

    /// The agent finished: the task completes, or submits its work when it must pass
    /// validation first. A validation task completes by its verdict instead.
    fn complete(
        &self,
        result: serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        self.ensure_in(&[TaskStatus::Running], "complete")?;
        if !self.open_discoveries.is_empty() {
            return Err(TaskError::DiscoveriesOpen(
                self.open_discoveries.iter().copied().collect(),
            ));
        }
        if self.validates.is_some() {
            return Err(TaskError::VerdictRequired);
        }
        if self.validation.is_some() {
            return Ok(vec![TaskEvent::TaskSubmittedForValidation {
                result,
                revision: self.revision,
                implementer_agent_id: self.assigned_agent_id,
                at,
            }]);
        }
        Ok(vec![TaskEvent::TaskCompleted { result, at }])
    }

    fn give_verdict(
        &self,
        verdict: Verdict,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        self.ensure_in(&[TaskStatus::Running], "give a verdict")?;
        if self.validates.is_none() {
            return Err(TaskError::NotAValidation);
        }
        let feedback = verdict
            .feedback
            .as_deref()
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| optional_text(f, MAX_TEXT_CHARS).map_err(|p| TaskError::text("feedback", p)))
            .transpose()?;
        if !verdict.passed && feedback.is_none() {
            return Err(TaskError::FeedbackRequired);
        }
        let verdict = Verdict {
            passed: verdict.passed,
            feedback,
        };
        let result = serde_json::json!({ "passed": verdict.passed, "feedback": verdict.feedback });
        Ok(vec![
            TaskEvent::TaskVerdictGiven { verdict },
            TaskEvent::TaskCompleted { result, at },
        ])
    }

    /// Refuses unless the task waits for the verdict on submission `revision`.
    fn ensure_awaiting_verdict(&self, revision: u32) -> Result<(), TaskError> {
        self.ensure_in(&[TaskStatus::PendingValidation], "take a verdict")?;
        if revision != self.revision {
            return Err(TaskError::StaleVerdict {
                given: revision,
                current: self.revision,
            });
        }
        Ok(())
    }

    fn apply_verdict(
        &self,
        validation_task_id: Uuid,
        revision: u32,
        verdict: Verdict,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        self.ensure_awaiting_verdict(revision)?;
        if verdict.passed {
            let result = self.submitted_result.clone().unwrap_or_default();
            return Ok(vec![
                TaskEvent::TaskValidationPassed {
                    validation_task_id,
                    feedback: verdict.feedback,
                },
                TaskEvent::TaskCompleted { result, at },
            ]);
        }
        let feedback = verdict.feedback.ok_or(TaskError::FeedbackRequired)?;
        let max_revisions = self.validation.map_or(0, |p| p.max_revisions);
        let outcome = if self.revision >= max_revisions {
            TaskEvent::TaskPermanentlyFailed {
                reason: FailureReason::RevisionsExhausted,
            }
        } else {
            TaskEvent::TaskRevisionRequested {
                revision: self.revision + 1,
            }
        };
        Ok(vec![
            TaskEvent::TaskValidationRejected {
                validation_task_id,
                revision,
                feedback,
            },
            outcome,
        ])
    }

    fn fail(
        &self,
        error: String,
        at: DateTime<Utc>,
        jitter: f64,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        // An assigned task can fail before it runs, e.g. when its sandbox cannot start.
        self.ensure_in(&[TaskStatus::Assigned, TaskStatus::Running], "fail")?;
        let error =
            required_text(&error, MAX_TEXT_CHARS).map_err(|p| TaskError::text("error", p))?;
        let outcome = if is_permanent_error(&error) {
            TaskEvent::TaskPermanentlyFailed {
                reason: FailureReason::PermanentError,
            }
        } else {
            self.retry_or_give_up(at, jitter, FailureReason::RetriesExhausted)
        };
        let failed = TaskEvent::TaskFailed {
            error,
            attempt: self.attempt(),
            at,
        };
        Ok(vec![failed, outcome])
    }

    fn time_out(&self, at: DateTime<Utc>, jitter: f64) -> Result<Vec<TaskEvent>, TaskError> {
        self.ensure_in(&[TaskStatus::Running], "time out")?;
        // A running task always has a start; falling back to `at` keeps apply-order bugs
        // from panicking and reads as "timed out after 0 s".
        let started_at = self.started_at.unwrap_or(at);
        if let Some(deadline) = self.deadline(started_at).filter(|deadline| at <= *deadline) {
            return Err(TaskError::NotTimedOutYet { deadline });
        }
        let after_seconds = u64::try_from((at - started_at).num_seconds()).unwrap_or(0);
        Ok(vec![
            TaskEvent::TaskTimedOut {
                after_seconds,
                attempt: self.attempt(),
                at,
            },
            self.retry_or_give_up(at, jitter, FailureReason::TimedOut),
        ])
    }

    /// When the running attempt exceeds its timeout; `None` when the task has no timeout
    /// of its own (the caller then applies its default policy).
    fn deadline(&self, started_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let timeout = Duration::seconds(i64::from(self.timeout_seconds?));
        Some(
            started_at
                .checked_add_signed(timeout)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    }

    /// Refuses what `agent_id` does as the task's holder unless it holds it: the rule of
    /// `TaskCommand::AsHolder`, and of an agent's writes beside the task (its transcript).
    pub fn ensure_held_by(&self, agent_id: Uuid) -> Result<(), TaskError> {
        match self.assigned_agent_id {
            Some(holder) if holder == agent_id => Ok(()),
            Some(_) => Err(TaskError::HeldByAnotherAgent),
            None => Err(TaskError::NotAssigned),
        }
    }

    /// Refuses a step naming an assignment (`assigned_at`) other than the task's current
    /// one: a run of an earlier assignment, reporting after the task was failed, timed
    /// out, withdrawn or taken back and assigned again — perhaps to the same agent.
    pub fn ensure_assignment(&self, assignment: Option<DateTime<Utc>>) -> Result<(), TaskError> {
        match (assignment, self.assigned_at) {
            (Some(named), Some(current)) if named != current => {
                Err(TaskError::AssignmentSuperseded {
                    current: current.to_rfc3339(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The run number of the current attempt: 1 for the first run, 2 for the first retry.
    pub fn attempt(&self) -> u32 {
        self.retry_count.saturating_add(1)
    }

    /// The outcome of a failed attempt: the next retry after its backoff while retries
    /// remain, otherwise the end of the task for `exhausted`.
    fn retry_or_give_up(
        &self,
        at: DateTime<Utc>,
        jitter: f64,
        exhausted: FailureReason,
    ) -> TaskEvent {
        if self.retry_count >= self.max_retries {
            return TaskEvent::TaskPermanentlyFailed { reason: exhausted };
        }
        let attempt = self.retry_count + 1;
        let not_before = at
            .checked_add_signed(retry_backoff(attempt, jitter))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        TaskEvent::TaskRetryScheduled {
            attempt,
            not_before,
        }
    }

    fn cancel(
        &self,
        reason: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskEvent>, TaskError> {
        use TaskStatus::*;
        self.ensure_in(
            &[
                Pending,
                Assigned,
                Running,
                RetryScheduled,
                PendingValidation,
                NeedsRevision,
                // Given up on by a person: its ticket's tally and a parent it blocks as
                // a discovery count it as ended, as no failure does (nothing retries it).
                PermanentlyFailed,
                TimedOut,
            ],
            "cancel",
        )?;
        // A blank reason says nothing, so it is stored as no reason.
        let reason = reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .map(|r| optional_text(&r, MAX_TEXT_CHARS).map_err(|p| TaskError::text("reason", p)))
            .transpose()?;
        Ok(vec![TaskEvent::TaskCancelled { reason, at }])
    }

    fn ensure_dependencies_open(&self) -> Result<(), TaskError> {
        if !self.exists() {
            return Err(TaskError::NotFound);
        }
        if !self.status.accepts_dependency_changes() {
            return Err(TaskError::DependenciesFrozen(self.status));
        }
        Ok(())
    }

    fn add_dependency(&self, depends_on: Uuid) -> Result<Vec<TaskEvent>, TaskError> {
        self.ensure_dependencies_open()?;
        if self.id == Some(depends_on) {
            return Err(TaskError::SelfDependency);
        }
        if self.depends_on.contains(&depends_on) {
            return Err(TaskError::DuplicateDependency(depends_on));
        }
        if self.depends_on.len() >= MAX_DEPENDENCIES {
            return Err(TaskError::TooManyDependencies {
                max: MAX_DEPENDENCIES,
            });
        }
        Ok(vec![TaskEvent::TaskDependencyAdded { depends_on }])
    }

    fn remove_dependency(&self, depends_on: Uuid) -> Result<Vec<TaskEvent>, TaskError> {
        self.ensure_dependencies_open()?;
        if !self.depends_on.contains(&depends_on) {
            return Err(TaskError::UnknownDependency(depends_on));
        }
        Ok(vec![TaskEvent::TaskDependencyRemoved { depends_on }])
    }
}

/// Merges duplicates (sorted, so the event is the same whatever the input order) and
/// refuses a dependency on the task itself.
fn checked_dependencies(task_id: Uuid, depends_on: Vec<Uuid>) -> Result<Vec<Uuid>, TaskError> {
    let set: BTreeSet<Uuid> = depends_on.into_iter().collect();
    if set.contains(&task_id) {
        return Err(TaskError::SelfDependency);
    }
    if set.len() > MAX_DEPENDENCIES {
        return Err(TaskError::TooManyDependencies {
            max: MAX_DEPENDENCIES,
        });
    }
    Ok(set.into_iter().collect())
}

/// Trims each capability, refuses blank or overlong ones and merges duplicates; refuses
/// more than an agent can hold.
fn checked_capabilities(capabilities: Vec<String>) -> Result<Vec<String>, TaskError> {
    let set = capabilities
        .iter()
        .map(|c| required_text(c, MAX_CAPABILITY_CHARS).map_err(TaskError::capability))
        .collect::<Result<BTreeSet<String>, TaskError>>()?;
    if set.len() > MAX_REQUIRED_CAPABILITIES {
        return Err(TaskError::TooManyCapabilities {
            max: MAX_REQUIRED_CAPABILITIES,
        });
    }
    Ok(set.into_iter().collect())
}

fn checked_max_retries(max_retries: Option<u32>) -> Result<u32, TaskError> {
    let max_retries = max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
    if max_retries > MAX_MAX_RETRIES {
        return Err(TaskError::TooManyRetries {
            max: MAX_MAX_RETRIES,
        });
    }
    Ok(max_retries)
}

fn checked_timeout(timeout_seconds: Option<u32>) -> Result<Option<u32>, TaskError> {
    if timeout_seconds == Some(0) {
        return Err(TaskError::ZeroTimeout);
    }
    Ok(timeout_seconds)
}

impl Aggregate for Task {
    const TYPE: &'static str = "Task";
    type Command = TaskCommand;
    type Event = TaskEvent;
    type Error = TaskError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let status = event.status_after();
        self.apply_fields(event);
        if let Some(status) = status {
            self.status = status;
        }
    }
}

impl Task {
    /// Everything an event changes but the status (which [`TaskEvent::status_after`] says).
    fn apply_fields(&mut self, event: TaskEvent) {
        match event {
            TaskEvent::TaskCreated {
                task_id,
                organization_id,
                project_id,
                ticket_id,
                title,
                description,
                task_type,
                phase,
                priority,
                depends_on,
                required_capabilities,
                max_retries,
                timeout_seconds,
                created_at,
            } => {
                *self = Task {
                    id: Some(task_id),
                    organization_id: Some(organization_id),
                    project_id: Some(project_id),
                    ticket_id: Some(ticket_id),
                    title,
                    description,
                    task_type,
                    phase,
                    priority,
                    depends_on: depends_on.into_iter().collect(),
                    required_capabilities: required_capabilities.into_iter().collect(),
                    max_retries,
                    timeout_seconds,
                    created_at: Some(created_at),
                    ..Task::default()
                }
            }
            TaskEvent::TaskAssigned { agent_id, at } => {
                self.assigned_agent_id = Some(agent_id);
                self.assigned_at = Some(at);
                self.not_before = None;
                self.reassigned_from = None;
                // A new holding: a stall of an attempt before it is moot (the stall
                // policy decides on a stall it still sees).
                self.stalled_since = None;
            }
            TaskEvent::TaskStarted { at } => {
                self.started_at = Some(at);
                self.starts = self.starts.saturating_add(1);
                self.progress = None;
                self.progress_reports = 0;
                // A new attempt: what was said to the last one is moot.
                self.stalled_since = None;
                self.pending_steering.clear();
            }
            TaskEvent::TaskProgressReported { message } => {
                self.progress = Some(message);
                self.progress_reports = self.progress_reports.saturating_add(1);
                self.stalled_since = None;
            }
            TaskEvent::TaskStalled { idle_since, .. } => self.stalled_since = Some(idle_since),
            TaskEvent::TaskSteered {
                steering_id,
                message,
                source,
                at,
                ..
            } => {
                self.pending_steering.push(Steering {
                    steering_id,
                    message,
                    source,
                    at,
                });
                self.recent_steering_ids.push(steering_id);
                if self.recent_steering_ids.len() > REMEMBERED_STEERING {
                    self.recent_steering_ids.remove(0);
                }
            }
            TaskEvent::GuardianIntervened { .. } | TaskEvent::TrajectoryAssessed { .. } => {}
            TaskEvent::DuplicateSuspected { duplicate_of, .. } => {
                self.suspected_duplicates.insert(duplicate_of);
            }
            TaskEvent::TaskUnassigned { agent_id, .. } => {
                self.reassigned_from = Some(agent_id);
                self.assigned_agent_id = None;
                self.started_at = None;
                self.progress = None;
                self.stalled_since = None;
                self.pending_steering.clear();
            }
            // As a Guardian's unassignment, but barring nobody.
            TaskEvent::TaskAssignmentWithdrawn { .. } => {
                self.assigned_agent_id = None;
                self.assigned_at = None;
                self.started_at = None;
                self.progress = None;
                self.stalled_since = None;
                self.pending_steering.clear();
            }
            TaskEvent::TaskPriorityChanged { priority } => self.priority = priority,
            TaskEvent::SteeringDelivered { steering_id, .. } => {
                self.pending_steering
                    .retain(|s| s.steering_id != steering_id);
            }
            TaskEvent::TaskCompleted { result, at } => {
                self.result = Some(result);
                self.completed_at = Some(at);
            }
            // The attempt's outcome (retry or end) follows as its own event.
            TaskEvent::TaskFailed { error, .. } => self.last_error = Some(error),
            TaskEvent::TaskTimedOut { after_seconds, .. } => {
                self.last_error = Some(format!("timed out after {after_seconds}s"));
            }
            TaskEvent::TaskRetryScheduled {
                attempt,
                not_before,
            } => {
                // As in the original, a retry goes back to the queue without its agent.
                self.retry_count = attempt;
                self.not_before = Some(not_before);
                self.assigned_agent_id = None;
            }
            TaskEvent::TaskPermanentlyFailed { .. } => {}
            TaskEvent::TaskCancelled { .. } => self.not_before = None,
            TaskEvent::TaskDependencyAdded { depends_on } => {
                self.depends_on.insert(depends_on);
            }
            TaskEvent::TaskDependencyRemoved { depends_on } => {
                self.depends_on.remove(&depends_on);
            }
            TaskEvent::TaskDiscovered { discovery } => self.discovery = Some(discovery),
            TaskEvent::TaskDiscoveryReported {
                discovered_task_id,
                blocks_parent,
                ..
            } => {
                self.discoveries_reported = self.discoveries_reported.saturating_add(1);
                if blocks_parent {
                    self.open_discoveries.insert(discovered_task_id);
                }
            }
            TaskEvent::TaskDiscoveryResolved { discovered_task_id } => {
                self.open_discoveries.remove(&discovered_task_id);
            }
            TaskEvent::TaskValidationRequired { policy } => self.validation = Some(policy),
            TaskEvent::TaskValidates { target } => self.validates = Some(target),
            TaskEvent::TaskSubmittedForValidation {
                result,
                implementer_agent_id,
                ..
            } => {
                self.submitted_result = Some(result);
                self.implementer_agent_id = implementer_agent_id;
                self.assigned_agent_id = None;
            }
            TaskEvent::TaskVerdictGiven { verdict } => self.verdict = Some(verdict),
            TaskEvent::TaskValidationPassed { feedback, .. } => self.feedback = feedback,
            TaskEvent::TaskValidationRejected { feedback, .. } => {
                self.last_error = Some(format!("validation rejected the work: {feedback}"));
                self.feedback = Some(feedback);
            }
            TaskEvent::TaskRevisionRequested { revision } => {
                self.revision = revision;
                self.submitted_result = None;
                self.progress = None;
            }
            TaskEvent::TaskPlanned { key } => self.plan_key = Some(key),
            TaskEvent::TaskValidationAbandoned { validation_task_id } => {
                self.last_error = Some(format!(
                    "validation task {validation_task_id} ended without a verdict"
                ));
            }
        }
    }
}

impl Scoped for Task {
    fn scope(&self) -> Option<Scope> {
        Some(Scope {
            organization_id: self.organization_id?,
            project_id: self.project_id,
        })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
