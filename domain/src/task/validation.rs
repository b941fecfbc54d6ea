//! Work checked by another agent before it counts as done.
//!
//! A task under a [`ValidationPolicy`] does not complete when its agent says so: the
//! result is *submitted* (`pending_validation`) and a validation task of type
//! [`VALIDATION_TASK_TYPE`] is queued for it (`workflow`'s `validation` process manager),
//! which only an agent other than the implementer may run ([`ValidationTarget::allows`]).
//! Its verdict completes the original, or sends it back to `needs_revision` with the
//! feedback, at most `max_revisions` times; one more rejection fails it for good.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The type of the task that checks another's work.
pub const VALIDATION_TASK_TYPE: &str = "validate";
/// Revisions a rejected task gets when its creator names no number.
pub const DEFAULT_MAX_REVISIONS: u32 = 3;
/// The most revisions a task may be given.
pub const MAX_MAX_REVISIONS: u32 = 10;

/// A task's work must pass validation before it completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ValidationPolicy {
    /// How many times a rejected result goes back to be revised; the next rejection
    /// fails the task for good.
    pub max_revisions: u32,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        Self {
            max_revisions: DEFAULT_MAX_REVISIONS,
        }
    }
}

/// What a validation task checks: one submission of another task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ValidationTarget {
    /// The task whose work is checked.
    pub task_id: Uuid,
    /// Which submission: 0 for the first, 1 after the first revision, …
    pub revision: u32,
    /// The agent that did the work, which may not validate it.
    pub implementer_agent_id: Option<Uuid>,
}

impl ValidationTarget {
    /// Whether `agent_id` may run this validation: anyone but the implementer. The one
    /// rule the task, the dispatcher and the claims queue all follow.
    pub fn allows(&self, agent_id: Uuid) -> bool {
        self.implementer_agent_id != Some(agent_id)
    }

    /// The id of the validation task of `task_id`'s submission `revision`: derived, so
    /// that the process manager creating it and whoever looks for it agree, and a replay
    /// creates nothing twice.
    pub fn task_id_for(task_id: Uuid, revision: u32) -> Uuid {
        Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("omoi/validation/{task_id}/{revision}").as_bytes(),
        )
    }
}

/// A validator's finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    pub passed: bool,
    /// What is wrong (required when the work is rejected), or remarks on work that passed.
    pub feedback: Option<String>,
}
