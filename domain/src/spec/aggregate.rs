use std::fmt;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{Plan, SpecCommand, SpecError, SpecEvent};
use crate::common::{optional_text, required_text, Scope, Scoped, MAX_TEXT_CHARS, MAX_TITLE_CHARS};

/// Longest EARS clause (condition, action) or acceptance criterion.
pub const MAX_CLAUSE_CHARS: usize = 2_000;
/// Most acceptance criteria one requirement may carry; keeps a single event bounded.
pub const MAX_ACCEPTANCE_CRITERIA: usize = 50;
/// Longest requirement id; ids are keys in URLs and exports, not prose.
pub const MAX_REQUIREMENT_ID_CHARS: usize = 64;
/// Most requirements one spec may hold: each command on a spec folds or copies them all,
/// and a plan covers them (50 tickets, 200 tasks).
pub const MAX_REQUIREMENTS: usize = 200;

/// Where a spec stands in the spec-driven workflow (the original's `Spec.status`, plus
/// its `archived` flag made a phase of its own so nothing can happen to an archived spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum SpecPhase {
    #[default]
    Draft,
    Requirements,
    Design,
    /// The plan (tickets and tasks) is written and awaits approval.
    Tasks,
    Executing,
    Completed,
    Archived,
}

impl SpecPhase {
    pub const ALL: [SpecPhase; 7] = [
        Self::Draft,
        Self::Requirements,
        Self::Design,
        Self::Tasks,
        Self::Executing,
        Self::Completed,
        Self::Archived,
    ];

    pub fn as_str(self) -> &'static str {
        use SpecPhase::*;
        match self {
            Draft => "draft",
            Requirements => "requirements",
            Design => "design",
            Tasks => "tasks",
            Executing => "executing",
            Completed => "completed",
            Archived => "archived",
        }
    }
}

impl fmt::Display for SpecPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One EARS requirement: WHEN `condition`, THE SYSTEM SHALL `action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Requirement {
    /// `REQ-` then uppercase letter/digit groups joined by `-`, e.g. `REQ-AUTH-001`.
    pub id: String,
    /// The WHEN clause.
    pub condition: String,
    /// The THE SYSTEM SHALL clause.
    pub action: String,
    pub acceptance_criteria: Vec<String>,
}

impl Requirement {
    /// The requirement with its texts trimmed, or the first rule it breaks. The id is
    /// checked as given, not trimmed: it is a key, and silently changing a key hides
    /// a caller's bug.
    fn validated(self) -> Result<Requirement, SpecError> {
        if !is_requirement_id(&self.id) {
            return Err(SpecError::InvalidRequirementId(self.id));
        }
        let condition = clause("condition", SpecError::EmptyCondition, &self.condition)?;
        let action = clause("action", SpecError::EmptyAction, &self.action)?;
        if self.acceptance_criteria.is_empty() {
            return Err(SpecError::NoAcceptanceCriteria);
        }
        if self.acceptance_criteria.len() > MAX_ACCEPTANCE_CRITERIA {
            return Err(SpecError::TooManyAcceptanceCriteria {
                max: MAX_ACCEPTANCE_CRITERIA,
            });
        }
        let acceptance_criteria = self
            .acceptance_criteria
            .iter()
            .map(|c| {
                clause(
                    "acceptance_criteria",
                    SpecError::EmptyAcceptanceCriterion,
                    c,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Requirement {
            id: self.id,
            condition,
            action,
            acceptance_criteria,
        })
    }
}

/// [`is_requirement_id`] as a regular expression (for documents and clients).
pub const REQUIREMENT_ID_PATTERN: &str = "^REQ(-[A-Z0-9]+)+$";

/// Whether `id` is `REQ-` followed by one or more groups of uppercase ASCII letters and
/// digits separated by single `-` (the original's `REQ-XXX-CAT-NNN`, without tying the
/// number of groups down, since `REQ-AUTH-001` is just as common). Hand-written so the
/// domain needs no regex engine.
pub(crate) fn is_requirement_id(id: &str) -> bool {
    if id.len() > MAX_REQUIREMENT_ID_CHARS {
        return false;
    }
    id.strip_prefix("REQ-").is_some_and(|groups| {
        groups.split('-').all(|group| {
            !group.is_empty()
                && group
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
    })
}

fn clause(field: &'static str, empty: SpecError, value: &str) -> Result<String, SpecError> {
    required_text(value, MAX_CLAUSE_CHARS).map_err(|p| SpecError::text(field, empty, p))
}

/// Checks an optional free text. `optional_text` refuses only for length, so any
/// problem it reports is that one.
fn optional(field: &'static str, value: &str) -> Result<String, SpecError> {
    optional_text(value, MAX_TEXT_CHARS).map_err(|_| SpecError::TextTooLong {
        field,
        max: MAX_TEXT_CHARS,
    })
}

/// The technical design agreed before execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Design {
    pub architecture: String,
    pub data_model: String,
    pub api_spec: String,
}

impl Design {
    fn validated(self) -> Result<Design, SpecError> {
        Ok(Design {
            architecture: required_text(&self.architecture, MAX_TEXT_CHARS)
                .map_err(|p| SpecError::text("architecture", SpecError::EmptyArchitecture, p))?,
            data_model: optional("data_model", &self.data_model)?,
            api_spec: optional("api_spec", &self.api_spec)?,
        })
    }
}

/// A spec's current state: the fold of its events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Spec {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub phase: SpecPhase,
    /// In the order they were added; an update keeps a requirement's place.
    pub requirements: Vec<Requirement>,
    pub requirements_approved_at: Option<DateTime<Utc>>,
    pub design: Option<Design>,
    pub design_approved_at: Option<DateTime<Utc>>,
    /// The tickets and tasks that carry the spec out (set in `tasks`).
    pub plan: Option<Plan>,
    pub plan_approved_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
    /// The phase the spec was in when it was archived, so a read model can still say how
    /// far it got.
    pub phase_before_archive: Option<SpecPhase>,
    pub created_at: Option<DateTime<Utc>>,
}

impl Spec {
    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn requirement(&self, id: &str) -> Option<&Requirement> {
        self.requirements.iter().find(|r| r.id == id)
    }

    /// Every command but creation needs a spec that exists and is not archived.
    fn ensure_live(&self) -> Result<(), SpecError> {
        if !self.exists() {
            return Err(SpecError::NotFound);
        }
        if self.phase == SpecPhase::Archived {
            return Err(SpecError::Archived);
        }
        Ok(())
    }

    fn decide(&self, command: SpecCommand) -> Result<Vec<SpecEvent>, SpecError> {
        use SpecPhase as P;
        match command {
            SpecCommand::CreateSpec {
                spec_id,
                organization_id,
                project_id,
                title,
                description,
                at,
            } => {
                if self.exists() {
                    return Err(SpecError::AlreadyExists);
                }
                Ok(vec![SpecEvent::SpecCreated {
                    spec_id,
                    organization_id,
                    project_id,
                    title: required_text(&title, MAX_TITLE_CHARS).map_err(SpecError::title)?,
                    description: optional("description", &description)?,
                    created_at: at,
                }])
            }
            SpecCommand::AddRequirement(requirement) => {
                self.ensure_live()?;
                if !matches!(self.phase, P::Draft | P::Requirements) {
                    return Err(SpecError::RequirementsLocked { phase: self.phase });
                }
                let requirement = requirement.validated()?;
                if self.requirement(&requirement.id).is_some() {
                    return Err(SpecError::DuplicateRequirementId(requirement.id));
                }
                if self.requirements.len() >= MAX_REQUIREMENTS {
                    return Err(SpecError::TooManyRequirements {
                        max: MAX_REQUIREMENTS,
                    });
                }
                let mut events = Vec::with_capacity(2);
                if self.phase == P::Draft {
                    // The first requirement is what starts the requirements phase.
                    events.push(SpecEvent::SpecPhaseChanged {
                        from: P::Draft,
                        to: P::Requirements,
                    });
                }
                events.push(SpecEvent::SpecRequirementAdded { requirement });
                Ok(events)
            }
            SpecCommand::UpdateRequirement(requirement) => {
                self.ensure_requirements_editable()?;
                let requirement = requirement.validated()?;
                match self.requirement(&requirement.id) {
                    None => Err(SpecError::RequirementNotFound(requirement.id)),
                    // Already so: nothing to record.
                    Some(current) if *current == requirement => Ok(vec![]),
                    Some(_) => Ok(vec![SpecEvent::SpecRequirementUpdated { requirement }]),
                }
            }
            SpecCommand::RemoveRequirement { id } => {
                self.ensure_requirements_editable()?;
                if self.requirement(&id).is_none() {
                    return Err(SpecError::RequirementNotFound(id));
                }
                Ok(vec![SpecEvent::SpecRequirementRemoved {
                    requirement_id: id,
                }])
            }
            SpecCommand::ApproveRequirements { at } => {
                self.ensure_live()?;
                if self.phase != P::Requirements {
                    return Err(SpecError::NotAwaitingRequirementsApproval { phase: self.phase });
                }
                if self.requirements.is_empty() {
                    return Err(SpecError::NoRequirements);
                }
                Ok(vec![SpecEvent::SpecRequirementsApproved { at }])
            }
            SpecCommand::SetDesign(design) => {
                self.ensure_live()?;
                if self.phase != P::Design {
                    return Err(SpecError::DesignLocked { phase: self.phase });
                }
                let design = design.validated()?;
                if self.design.as_ref() == Some(&design) {
                    return Ok(vec![]);
                }
                Ok(vec![SpecEvent::SpecDesignSet { design }])
            }
            SpecCommand::ApproveDesign { at } => {
                self.ensure_live()?;
                if self.phase != P::Design {
                    return Err(SpecError::NotAwaitingDesignApproval { phase: self.phase });
                }
                if self.design.is_none() {
                    return Err(SpecError::NoDesign);
                }
                Ok(vec![SpecEvent::SpecDesignApproved {
                    at,
                    next_phase: Some(P::Tasks),
                }])
            }
            SpecCommand::SetPlan(plan) => {
                self.ensure_live()?;
                if self.phase != P::Tasks {
                    return Err(SpecError::PlanLocked { phase: self.phase });
                }
                let requirements = self.requirements.iter().map(|r| r.id.as_str()).collect();
                let plan = plan.validated(&requirements).map_err(SpecError::Plan)?;
                if self.plan.as_ref() == Some(&plan) {
                    return Ok(vec![]);
                }
                Ok(vec![SpecEvent::SpecPlanSet { plan }])
            }
            SpecCommand::ApprovePlan { at } => {
                self.ensure_live()?;
                if self.phase != P::Tasks {
                    return Err(SpecError::NotAwaitingPlanApproval { phase: self.phase });
                }
                if self.plan.is_none() {
                    return Err(SpecError::NoPlan);
                }
                Ok(vec![SpecEvent::SpecPlanApproved { at }])
            }
            SpecCommand::CompleteSpec { at } => {
                self.ensure_live()?;
                if self.phase != P::Executing {
                    return Err(SpecError::NotExecuting { phase: self.phase });
                }
                Ok(vec![SpecEvent::SpecCompleted { at }])
            }
            SpecCommand::ArchiveSpec { at } => {
                self.ensure_live()?;
                Ok(vec![SpecEvent::SpecArchived { at }])
            }
        }
    }

    /// Existing requirements change only while they are under review; in `draft` there
    /// are none yet, and from `design` on they are approved and frozen.
    fn ensure_requirements_editable(&self) -> Result<(), SpecError> {
        self.ensure_live()?;
        if self.phase != SpecPhase::Requirements {
            return Err(SpecError::RequirementsLocked { phase: self.phase });
        }
        Ok(())
    }
}

impl Aggregate for Spec {
    const TYPE: &'static str = "Spec";
    type Command = SpecCommand;
    type Event = SpecEvent;
    type Error = SpecError;
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
        let phase_after = event.phase_after().unwrap_or(self.phase);
        match event {
            SpecEvent::SpecCreated {
                spec_id,
                organization_id,
                project_id,
                title,
                description,
                created_at,
            } => {
                *self = Spec {
                    id: Some(spec_id),
                    organization_id: Some(organization_id),
                    project_id: Some(project_id),
                    title,
                    description,
                    created_at: Some(created_at),
                    ..Spec::default()
                }
            }
            SpecEvent::SpecRequirementAdded { requirement } => self.requirements.push(requirement),
            SpecEvent::SpecRequirementUpdated { requirement } => {
                // `decide` only emits this for an existing id; an unknown one (which a
                // valid stream never holds) is ignored so `apply` stays infallible.
                if let Some(slot) = self
                    .requirements
                    .iter_mut()
                    .find(|r| r.id == requirement.id)
                {
                    *slot = requirement;
                }
            }
            SpecEvent::SpecRequirementRemoved { requirement_id } => {
                self.requirements.retain(|r| r.id != requirement_id)
            }
            SpecEvent::SpecPhaseChanged { .. } => self.phase = phase_after,
            SpecEvent::SpecRequirementsApproved { at } => {
                self.requirements_approved_at = Some(at);
                self.phase = phase_after;
            }
            SpecEvent::SpecDesignSet { design } => self.design = Some(design),
            SpecEvent::SpecDesignApproved { at, .. } => {
                self.design_approved_at = Some(at);
                self.phase = phase_after;
            }
            SpecEvent::SpecPlanSet { plan } => self.plan = Some(plan),
            SpecEvent::SpecPlanApproved { at } => {
                self.plan_approved_at = Some(at);
                self.phase = phase_after;
            }
            SpecEvent::SpecCompleted { at } => {
                self.completed_at = Some(at);
                self.phase = phase_after;
            }
            SpecEvent::SpecArchived { at } => {
                self.archived_at = Some(at);
                self.phase_before_archive = Some(self.phase);
                self.phase = phase_after;
            }
        }
    }
}

impl Scoped for Spec {
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
