use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Design, Plan, Requirement};

/// Everything that can be asked of a spec.
#[derive(Debug, Clone, PartialEq)]
pub enum SpecCommand {
    CreateSpec {
        spec_id: Uuid,
        organization_id: Uuid,
        project_id: Uuid,
        title: String,
        description: String,
        at: DateTime<Utc>,
    },
    /// Adds a requirement; in `draft` this also moves the spec to `requirements`.
    AddRequirement(Requirement),
    /// Replaces the requirement with the same id.
    UpdateRequirement(Requirement),
    RemoveRequirement {
        id: String,
    },
    /// Accepts the requirements and moves the spec to `design`.
    ApproveRequirements {
        at: DateTime<Utc>,
    },
    /// Sets (or replaces) the design while the spec is in `design`.
    SetDesign(Design),
    /// Accepts the design and moves the spec to `tasks`.
    ApproveDesign {
        at: DateTime<Utc>,
    },
    /// Sets (or replaces) the plan while the spec is in `tasks`.
    SetPlan(Plan),
    /// Accepts the plan and moves the spec to `executing`.
    ApprovePlan {
        at: DateTime<Utc>,
    },
    CompleteSpec {
        at: DateTime<Utc>,
    },
    ArchiveSpec {
        at: DateTime<Utc>,
    },
}
