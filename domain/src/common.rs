//! Values and rules shared by several aggregates.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// How an API should answer a refused command. Every domain error enum maps each of its
/// variants to one of these, so the HTTP status is decided by the variant, never by text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The aggregate (or something it refers to) does not exist: 404.
    NotFound,
    /// The command is well formed but the current state forbids it: 409.
    Conflict,
    /// The command's input breaks a rule regardless of state: 422.
    Invalid,
    /// The organization's plan does not allow it (quota, suspension): 402.
    PaymentRequired,
    /// The actor may issue this kind of command, but not this one: a rule about who may
    /// do what to whom refuses it (granting a role above one's own, changing one's own
    /// role): 403.
    Forbidden,
}

/// Implemented by every aggregate's error enum.
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> ErrorKind;
    /// The input field that was wrong, for `Invalid` errors that concern one field.
    fn field(&self) -> Option<&'static str> {
        None
    }
    /// A stable machine-readable code for the rule that refused the command.
    fn code(&self) -> &'static str;
    /// The field to blame as a path into the input (`tickets[1].tasks[0].key`), where one
    /// static name is not enough; [`DomainError::field`] otherwise.
    fn field_path(&self) -> Option<String> {
        self.field().map(str::to_string)
    }
}

/// The organization and project an aggregate belongs to. The command bus copies it into
/// the metadata of every event, so read models and authorization can filter by tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub organization_id: Uuid,
    /// `None` for organization-level aggregates (the organization itself, org-wide agents).
    pub project_id: Option<Uuid>,
}

/// Implemented by every aggregate: its scope once it exists, `None` before its first event.
pub trait Scoped {
    fn scope(&self) -> Option<Scope>;
}

/// Work priority, as the original spelled it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Medium,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [Self::Critical, Self::High, Self::Medium, Self::Low];

    /// One level more urgent; critical stays critical.
    pub fn raised(self) -> Self {
        match self {
            Self::Low => Self::Medium,
            Self::Medium => Self::High,
            Self::High | Self::Critical => Self::Critical,
        }
    }
}

/// Delivery phase of a ticket or task (the original's `PHASE_*` identifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
pub enum Phase {
    #[default]
    #[serde(rename = "PHASE_BACKLOG")]
    Backlog,
    #[serde(rename = "PHASE_REQUIREMENTS")]
    Requirements,
    #[serde(rename = "PHASE_DESIGN")]
    Design,
    #[serde(rename = "PHASE_IMPLEMENTATION")]
    Implementation,
    #[serde(rename = "PHASE_TESTING")]
    Testing,
    #[serde(rename = "PHASE_DEPLOYMENT")]
    Deployment,
    #[serde(rename = "PHASE_DONE")]
    Done,
    #[serde(rename = "PHASE_BLOCKED")]
    Blocked,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Self::Backlog,
        Self::Requirements,
        Self::Design,
        Self::Implementation,
        Self::Testing,
        Self::Deployment,
        Self::Done,
        Self::Blocked,
    ];

    /// The original's phase table: each phase may advance to the next one or to
    /// `BLOCKED`; `TESTING` may fall back to `IMPLEMENTATION`; `BLOCKED` may return to any
    /// phase from `BACKLOG` to `TESTING`; `DONE` is final.
    pub fn can_move_to(self, to: Phase) -> bool {
        use Phase::*;
        match (self, to) {
            (Done, _) => false,
            (Blocked, Backlog | Requirements | Design | Implementation | Testing) => true,
            (Blocked, _) => false,
            (_, Blocked) => true,
            (Testing, Implementation) => true,
            (from, to) => from.next() == Some(to),
        }
    }

    fn next(self) -> Option<Phase> {
        use Phase::*;
        match self {
            Backlog => Some(Requirements),
            Requirements => Some(Design),
            Design => Some(Implementation),
            Implementation => Some(Testing),
            Testing => Some(Deployment),
            Deployment => Some(Done),
            Done | Blocked => None,
        }
    }
}

/// Longest title accepted anywhere.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest free text (description, note, feedback, error text) accepted anywhere.
pub const MAX_TEXT_CHARS: usize = 20_000;

/// Why a piece of text was refused; aggregates wrap it in their own error enums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextProblem {
    Empty,
    TooLong { max: usize },
}

/// Checks the length of a required single-line text as given (white space counts, so
/// that the documented `maxLength` is the rule), then trims it.
pub fn required_text(value: &str, max: usize) -> Result<String, TextProblem> {
    optional_text(value, max)?;
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(TextProblem::Empty);
    }
    Ok(trimmed.to_string())
}

/// `text` cut to its first `max` characters: for text made by the system (a command's
/// output, a derived title) that must fit a limit rather than be refused by it.
pub fn clipped(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Checks the length of a text that may be empty.
pub fn optional_text(value: &str, max: usize) -> Result<String, TextProblem> {
    if value.chars().count() > max {
        return Err(TextProblem::TooLong { max });
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_advance_one_step_or_to_blocked() {
        assert!(Phase::Backlog.can_move_to(Phase::Requirements));
        assert!(!Phase::Backlog.can_move_to(Phase::Design));
        assert!(Phase::Design.can_move_to(Phase::Blocked));
        assert!(Phase::Testing.can_move_to(Phase::Implementation));
        assert!(Phase::Blocked.can_move_to(Phase::Testing));
        assert!(!Phase::Blocked.can_move_to(Phase::Deployment));
        assert!(!Phase::Done.can_move_to(Phase::Blocked));
    }

    #[test]
    fn required_text_is_trimmed_and_bounded() {
        assert_eq!(required_text("  a ", 5), Ok("a".to_string()));
        assert_eq!(required_text("   ", 5), Err(TextProblem::Empty));
        // The length is the text's as given: padding counts.
        assert_eq!(
            required_text(" abcde ", 5),
            Err(TextProblem::TooLong { max: 5 })
        );
        assert_eq!(
            required_text("abcdef", 5),
            Err(TextProblem::TooLong { max: 5 })
        );
    }
}
