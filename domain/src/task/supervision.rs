//! What supervision records on a running task: that it stalled (no progress report for
//! too long), and steering messages for its agent with their delivery.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Longest steering message.
pub const MAX_STEERING_CHARS: usize = 4_000;
/// Steering messages waiting for delivery on one task: an agent that never picks them up
/// does not make the task grow without bound.
pub const MAX_PENDING_STEERING: usize = 20;
/// Steering ids a task remembers (pending or delivered), so that a message sent again
/// under the same id — a process manager replaying its cause — is recorded once.
pub const REMEMBERED_STEERING: usize = 64;

/// Who asked for a steering message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SteeringSource {
    /// A Guardian intervention (a person or a guardian agent).
    Guardian,
    /// The `nudge` stall policy.
    Nudge,
    /// LLM trajectory analysis.
    Trajectory,
}

/// What an LLM judged of a running task's trajectory (its recent transcript against its
/// task and spec), with what the call cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TrajectoryAssessment {
    /// 0 (off course) to 1 (on course).
    pub alignment_score: f64,
    pub needs_steering: bool,
    /// What to tell the agent when it needs steering.
    pub steering_message: Option<String>,
    pub reason: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// A steering message waiting for its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Steering {
    pub steering_id: Uuid,
    pub message: String,
    pub source: SteeringSource,
    pub at: DateTime<Utc>,
}
