use super::{PlanError, SpecPhase};
use crate::common::{DomainError, ErrorKind, TextProblem};

/// Every rule that can refuse a spec command.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("spec not found")]
    NotFound,
    #[error("a spec with this id already exists")]
    AlreadyExists,
    #[error("title must not be empty")]
    EmptyTitle,
    #[error("title is longer than {max} characters")]
    TitleTooLong { max: usize },
    #[error("{field} is longer than {max} characters")]
    TextTooLong { field: &'static str, max: usize },
    #[error("requirement id {0:?} must look like REQ-AUTH-001: REQ- then uppercase letter or digit groups joined by -")]
    InvalidRequirementId(String),
    #[error("the spec already has a requirement {0}")]
    DuplicateRequirementId(String),
    #[error("the spec has {max} requirements, the most it may hold")]
    TooManyRequirements { max: usize },
    #[error("the spec has no requirement {0}")]
    RequirementNotFound(String),
    #[error("the WHEN condition of a requirement must not be empty")]
    EmptyCondition,
    #[error("the THE SYSTEM SHALL action of a requirement must not be empty")]
    EmptyAction,
    #[error("a requirement needs at least one acceptance criterion")]
    NoAcceptanceCriteria,
    #[error("an acceptance criterion must not be empty")]
    EmptyAcceptanceCriterion,
    #[error("a requirement has at most {max} acceptance criteria")]
    TooManyAcceptanceCriteria { max: usize },
    #[error("the design's architecture must not be empty")]
    EmptyArchitecture,
    #[error("requirements cannot change while the spec is {phase}")]
    RequirementsLocked { phase: SpecPhase },
    #[error("requirements can be approved only in the requirements phase (the spec is {phase})")]
    NotAwaitingRequirementsApproval { phase: SpecPhase },
    #[error("a spec without requirements cannot have them approved")]
    NoRequirements,
    #[error("the design can be set only in the design phase (the spec is {phase})")]
    DesignLocked { phase: SpecPhase },
    #[error("the design can be approved only in the design phase (the spec is {phase})")]
    NotAwaitingDesignApproval { phase: SpecPhase },
    #[error("a spec without a design cannot have it approved")]
    NoDesign,
    #[error("the plan can be set only in the tasks phase (the spec is {phase})")]
    PlanLocked { phase: SpecPhase },
    #[error("the plan can be approved only in the tasks phase (the spec is {phase})")]
    NotAwaitingPlanApproval { phase: SpecPhase },
    #[error("a spec without a plan cannot have it approved")]
    NoPlan,
    #[error("the plan is refused: {0}")]
    Plan(PlanError),
    #[error("only an executing spec can be completed (the spec is {phase})")]
    NotExecuting { phase: SpecPhase },
    #[error("an archived spec cannot change")]
    Archived,
}

impl SpecError {
    pub(crate) fn title(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyTitle,
            TextProblem::TooLong { max } => Self::TitleTooLong { max },
        }
    }

    /// Maps a problem with the required text `field`; `empty` is the rule a blank value
    /// breaks.
    pub(crate) fn text(field: &'static str, empty: SpecError, problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => empty,
            TextProblem::TooLong { max } => Self::TextTooLong { field, max },
        }
    }
}

impl DomainError for SpecError {
    fn kind(&self) -> ErrorKind {
        use SpecError::*;
        match self {
            NotFound | RequirementNotFound(_) => ErrorKind::NotFound,
            EmptyTitle
            | TitleTooLong { .. }
            | TextTooLong { .. }
            | InvalidRequirementId(_)
            | EmptyCondition
            | EmptyAction
            | NoAcceptanceCriteria
            | EmptyAcceptanceCriterion
            | TooManyAcceptanceCriteria { .. }
            | EmptyArchitecture
            | Plan(_) => ErrorKind::Invalid,
            AlreadyExists
            | DuplicateRequirementId(_)
            | TooManyRequirements { .. }
            | RequirementsLocked { .. }
            | NotAwaitingRequirementsApproval { .. }
            | NoRequirements
            | DesignLocked { .. }
            | NotAwaitingDesignApproval { .. }
            | NoDesign
            | PlanLocked { .. }
            | NotAwaitingPlanApproval { .. }
            | NoPlan
            | NotExecuting { .. }
            | Archived => ErrorKind::Conflict,
        }
    }

    fn field(&self) -> Option<&'static str> {
        use SpecError::*;
        match self {
            EmptyTitle | TitleTooLong { .. } => Some("title"),
            TextTooLong { field, .. } => Some(field),
            InvalidRequirementId(_) | DuplicateRequirementId(_) => Some("id"),
            EmptyCondition => Some("condition"),
            EmptyAction => Some("action"),
            NoAcceptanceCriteria | EmptyAcceptanceCriterion | TooManyAcceptanceCriteria { .. } => {
                Some("acceptance_criteria")
            }
            EmptyArchitecture => Some("architecture"),
            Plan(_) => Some("tickets"),
            _ => None,
        }
    }

    fn field_path(&self) -> Option<String> {
        match self {
            Self::Plan(error) => Some(error.field.clone()),
            other => other.field().map(str::to_string),
        }
    }

    fn code(&self) -> &'static str {
        use SpecError::*;
        match self {
            NotFound => "spec_not_found",
            AlreadyExists => "spec_already_exists",
            EmptyTitle => "empty_title",
            TitleTooLong { .. } => "title_too_long",
            TextTooLong { .. } => "text_too_long",
            InvalidRequirementId(_) => "invalid_requirement_id",
            DuplicateRequirementId(_) => "duplicate_requirement_id",
            TooManyRequirements { .. } => "too_many_requirements",
            RequirementNotFound(_) => "requirement_not_found",
            EmptyCondition => "empty_condition",
            EmptyAction => "empty_action",
            NoAcceptanceCriteria => "no_acceptance_criteria",
            EmptyAcceptanceCriterion => "empty_acceptance_criterion",
            TooManyAcceptanceCriteria { .. } => "too_many_acceptance_criteria",
            EmptyArchitecture => "empty_architecture",
            RequirementsLocked { .. } => "requirements_locked",
            NotAwaitingRequirementsApproval { .. } => "not_awaiting_requirements_approval",
            NoRequirements => "no_requirements",
            DesignLocked { .. } => "design_locked",
            NotAwaitingDesignApproval { .. } => "not_awaiting_design_approval",
            NoDesign => "no_design",
            PlanLocked { .. } => "plan_locked",
            NotAwaitingPlanApproval { .. } => "not_awaiting_plan_approval",
            NoPlan => "no_plan",
            Plan(error) => error.problem.code(),
            NotExecuting { .. } => "spec_not_executing",
            Archived => "spec_archived",
        }
    }
}
