//! The task: one unit of agent work that belongs to a ticket.
//!
//! Status machine `pending → assigned → running → completed`. A failure (from `assigned`
//! or `running`) or a timeout (from `running`) either schedules a retry with exponential
//! backoff (`retry_scheduled`, assignable again once the backoff has elapsed) or ends the
//! task: `permanently_failed` for a permanent error or exhausted retries, `timed_out` for
//! a timeout with no retry left. `cancelled` is reachable from every non-final status.
//! `completed`, `permanently_failed`, `cancelled` and `timed_out` are final.
//!
//! A running task may report work it discovered ([`Discovery`]): a new task of the same
//! ticket; one that blocks its parent keeps the parent from completing until it is
//! resolved (completed or cancelled — `workflow`'s `discovery_resolution` says so).
//!
//! A task under a validation policy ([`ValidationPolicy`]) does not complete when its
//! agent finishes: `complete` submits the work (`pending_validation`), a validation task
//! run by another agent judges it, and a rejection sends it to `needs_revision`
//! (assignable again, with the feedback) until its revisions are spent.
//!
//! Supervision marks a running task that reports no progress for too long as stalled
//! (once per stall: progress clears it) and records steering messages for its agent
//! ([`Steering`]) and their delivery.
//!
//! Time and randomness (the backoff jitter) arrive inside commands, so every rule here is
//! deterministic.

mod aggregate;
mod commands;
mod discovery;
mod error;
mod events;
mod retry;
mod supervision;
mod validation;

pub use aggregate::{
    Task, TaskStatus, MAX_CAPABILITY_CHARS, MAX_DEPENDENCIES, MAX_PROGRESS_CHARS,
    MAX_REQUIRED_CAPABILITIES, MAX_TASK_TYPE_CHARS,
};
pub use commands::{TaskCommand, TaskIntervention};
pub use discovery::{Discovery, DiscoveryKind};
pub use error::TaskError;
pub use events::{FailureReason, TaskEvent};
pub use retry::{
    is_permanent_error, retry_backoff, DEFAULT_MAX_RETRIES, MAX_BACKOFF_SECONDS, MAX_MAX_RETRIES,
    PERMANENT_ERROR_MARKERS,
};
pub use supervision::{
    Steering, SteeringSource, TrajectoryAssessment, MAX_PENDING_STEERING, MAX_STEERING_CHARS,
    REMEMBERED_STEERING,
};
pub use validation::{
    ValidationPolicy, ValidationTarget, Verdict, DEFAULT_MAX_REVISIONS, MAX_MAX_REVISIONS,
    VALIDATION_TASK_TYPE,
};
