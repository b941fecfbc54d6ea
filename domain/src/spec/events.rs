use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Design, Plan, Requirement, SpecPhase};

/// What happened to a spec. Names and payloads are stable: change them only by adding a
/// new version and an upcaster. See the module documentation for which events move the
/// phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SpecEvent {
    SpecCreated {
        spec_id: Uuid,
        organization_id: Uuid,
        project_id: Uuid,
        title: String,
        description: String,
        created_at: DateTime<Utc>,
    },
    SpecRequirementAdded {
        requirement: Requirement,
    },
    SpecRequirementUpdated {
        requirement: Requirement,
    },
    SpecRequirementRemoved {
        requirement_id: String,
    },
    /// Only for `draft → requirements`; every other move has its own event.
    SpecPhaseChanged {
        from: SpecPhase,
        to: SpecPhase,
    },
    /// Moves the spec to `design`.
    SpecRequirementsApproved {
        at: DateTime<Utc>,
    },
    SpecDesignSet {
        design: Design,
    },
    /// Moves the spec to `next_phase`: `tasks`, where its plan is written. Absent in
    /// approvals written before specs had a plan, which moved the spec to `executing`
    /// (an added field with a default keeps those payloads readable as they are).
    SpecDesignApproved {
        at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_phase: Option<SpecPhase>,
    },
    /// Sets (or replaces) the plan while the spec is in `tasks`.
    SpecPlanSet {
        plan: Plan,
    },
    /// Moves the spec to `executing`: its plan's tickets and tasks are created.
    SpecPlanApproved {
        at: DateTime<Utc>,
    },
    /// Moves the spec to `completed`.
    SpecCompleted {
        at: DateTime<Utc>,
    },
    /// Moves the spec to `archived`, remembering the phase it left.
    SpecArchived {
        at: DateTime<Utc>,
    },
}

impl SpecEvent {
    /// The spec's phase after this event, when the event moves it: the one rule the
    /// aggregate and the read models follow.
    pub fn phase_after(&self) -> Option<SpecPhase> {
        match self {
            Self::SpecCreated { .. } => Some(SpecPhase::Draft),
            Self::SpecPhaseChanged { to, .. } => Some(*to),
            Self::SpecRequirementsApproved { .. } => Some(SpecPhase::Design),
            // Approvals written before specs had a plan went straight to executing.
            Self::SpecDesignApproved { next_phase, .. } => {
                Some(next_phase.unwrap_or(SpecPhase::Executing))
            }
            Self::SpecPlanApproved { .. } => Some(SpecPhase::Executing),
            Self::SpecCompleted { .. } => Some(SpecPhase::Completed),
            Self::SpecArchived { .. } => Some(SpecPhase::Archived),
            Self::SpecRequirementAdded { .. }
            | Self::SpecRequirementUpdated { .. }
            | Self::SpecRequirementRemoved { .. }
            | Self::SpecDesignSet { .. }
            | Self::SpecPlanSet { .. } => None,
        }
    }
}

impl DomainEvent for SpecEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SpecCreated { .. } => "SpecCreated",
            Self::SpecRequirementAdded { .. } => "SpecRequirementAdded",
            Self::SpecRequirementUpdated { .. } => "SpecRequirementUpdated",
            Self::SpecRequirementRemoved { .. } => "SpecRequirementRemoved",
            Self::SpecPhaseChanged { .. } => "SpecPhaseChanged",
            Self::SpecRequirementsApproved { .. } => "SpecRequirementsApproved",
            Self::SpecDesignSet { .. } => "SpecDesignSet",
            Self::SpecDesignApproved { .. } => "SpecDesignApproved",
            Self::SpecPlanSet { .. } => "SpecPlanSet",
            Self::SpecPlanApproved { .. } => "SpecPlanApproved",
            Self::SpecCompleted { .. } => "SpecCompleted",
            Self::SpecArchived { .. } => "SpecArchived",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
