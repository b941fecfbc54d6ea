//! Work an agent finds while running a task: a bug, an optimization, a missing
//! requirement, a dependency or a follow-up. It becomes a task of the same ticket that
//! names its parent and who found it; a discovery that blocks its parent keeps the parent
//! from completing until the discovered task completes or is cancelled.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What kind of work was discovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryKind {
    Bug,
    Optimization,
    MissingRequirement,
    Dependency,
    FollowUp,
}

impl DiscoveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bug => "bug",
            Self::Optimization => "optimization",
            Self::MissingRequirement => "missing_requirement",
            Self::Dependency => "dependency",
            Self::FollowUp => "follow_up",
        }
    }
}

/// Where a discovered task came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Discovery {
    /// The task whose run found this work.
    pub parent_task_id: Uuid,
    pub kind: DiscoveryKind,
    /// The agent that reported it (`None` when a person did).
    pub discovered_by: Option<Uuid>,
    /// Whether the parent may complete only after this task completes (or is cancelled).
    pub blocks_parent: bool,
}
