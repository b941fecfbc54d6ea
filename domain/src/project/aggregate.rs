use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::common::{
    optional_text, required_text, DomainError, ErrorKind, Scope, Scoped, TextProblem,
    MAX_TEXT_CHARS, MAX_TITLE_CHARS,
};

/// A project's current state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub name: String,
    pub description: String,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
    pub settings: ProjectSettings,
}

/// How the workflow treats a project's work. A setting added later reads as its default
/// in the events written before it existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ProjectSettings {
    /// Tickets move by themselves as their tasks do (the `ticket_progress` process
    /// manager); off, only people move them.
    pub auto_advance: bool,
    /// A ticket made by hand (not from a spec's plan) gets the task of its phase (the
    /// `phase_tasks` process manager), so that every ticket flows through agents.
    pub auto_spawn_tasks: bool,
    /// Every `implement` task of a spec's plan must pass another agent's validation
    /// before it completes.
    pub validation_required: bool,
    /// What happens to a running task that reports no progress for
    /// `monitoring.stuck_after_ms` (the `stall_policy` process manager).
    pub stall_policy: StallPolicy,
}

/// What is done about a stalled task (no progress report for `monitoring.stuck_after_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum StallPolicy {
    /// A steering message asks the agent to report progress or say what blocks it.
    #[default]
    Nudge,
    /// The attempt fails (and is retried after its backoff, while retries remain).
    Restart,
    /// The ticket is blocked (`failing_checks`) for a person to look at.
    Escalate,
}

impl Default for ProjectSettings {
    fn default() -> Self {
        Self {
            auto_advance: true,
            auto_spawn_tasks: true,
            validation_required: true,
            stall_policy: StallPolicy::Nudge,
        }
    }
}

/// Some settings to set; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SettingsChange {
    pub auto_advance: Option<bool>,
    pub auto_spawn_tasks: Option<bool>,
    pub validation_required: Option<bool>,
    pub stall_policy: Option<StallPolicy>,
}

impl SettingsChange {
    /// `settings` with the given ones changed.
    pub fn over(self, settings: ProjectSettings) -> ProjectSettings {
        ProjectSettings {
            auto_advance: self.auto_advance.unwrap_or(settings.auto_advance),
            auto_spawn_tasks: self.auto_spawn_tasks.unwrap_or(settings.auto_spawn_tasks),
            validation_required: self
                .validation_required
                .unwrap_or(settings.validation_required),
            stall_policy: self.stall_policy.unwrap_or(settings.stall_policy),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProjectCommand {
    CreateProject {
        project_id: Uuid,
        organization_id: Uuid,
        name: String,
        description: String,
        settings: ProjectSettings,
        at: DateTime<Utc>,
    },
    RenameProject {
        name: String,
    },
    ArchiveProject {
        at: DateTime<Utc>,
    },
    /// Changes the given settings; the others stay as they are.
    ChangeSettings {
        change: SettingsChange,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProjectEvent {
    ProjectCreated {
        project_id: Uuid,
        organization_id: Uuid,
        name: String,
        description: String,
        created_at: DateTime<Utc>,
        /// The settings it starts with (projects created before settings existed: the
        /// defaults).
        #[serde(default)]
        settings: ProjectSettings,
    },
    ProjectRenamed {
        name: String,
    },
    ProjectArchived {
        archived_at: DateTime<Utc>,
    },
    /// The project's settings after the change, whole.
    ProjectSettingsChanged {
        settings: ProjectSettings,
    },
}

impl DomainEvent for ProjectEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ProjectCreated { .. } => "ProjectCreated",
            Self::ProjectRenamed { .. } => "ProjectRenamed",
            Self::ProjectArchived { .. } => "ProjectArchived",
            Self::ProjectSettingsChanged { .. } => "ProjectSettingsChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProjectError {
    #[error("project not found")]
    NotFound,
    #[error("a project with this id already exists")]
    AlreadyExists,
    #[error("name must not be empty")]
    EmptyName,
    #[error("name is longer than {max} characters")]
    NameTooLong { max: usize },
    #[error("description is longer than {max} characters")]
    DescriptionTooLong { max: usize },
    #[error("the project already has this name")]
    SameName,
    #[error("the project is archived")]
    Archived,
}

impl From<TextProblem> for ProjectError {
    fn from(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyName,
            TextProblem::TooLong { max } => Self::NameTooLong { max },
        }
    }
}

impl DomainError for ProjectError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound => ErrorKind::NotFound,
            Self::EmptyName | Self::NameTooLong { .. } | Self::DescriptionTooLong { .. } => {
                ErrorKind::Invalid
            }
            Self::AlreadyExists | Self::SameName | Self::Archived => ErrorKind::Conflict,
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            Self::EmptyName | Self::NameTooLong { .. } | Self::SameName => Some("name"),
            Self::DescriptionTooLong { .. } => Some("description"),
            _ => None,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "project_not_found",
            Self::AlreadyExists => "project_already_exists",
            Self::EmptyName => "empty_name",
            Self::NameTooLong { .. } => "name_too_long",
            Self::DescriptionTooLong { .. } => "description_too_long",
            Self::SameName => "same_name",
            Self::Archived => "project_archived",
        }
    }
}

impl Project {
    fn ensure_active(&self) -> Result<(), ProjectError> {
        match (self.id, self.archived_at) {
            (None, _) => Err(ProjectError::NotFound),
            (Some(_), Some(_)) => Err(ProjectError::Archived),
            (Some(_), None) => Ok(()),
        }
    }

    /// Whether new work may be created in this project.
    pub fn is_active(&self) -> bool {
        self.ensure_active().is_ok()
    }

    fn decide(&self, command: ProjectCommand) -> Result<Vec<ProjectEvent>, ProjectError> {
        match command {
            ProjectCommand::CreateProject {
                project_id,
                organization_id,
                name,
                description,
                settings,
                at,
            } => {
                if self.id.is_some() {
                    return Err(ProjectError::AlreadyExists);
                }
                let description = optional_text(&description, MAX_TEXT_CHARS).map_err(|_| {
                    ProjectError::DescriptionTooLong {
                        max: MAX_TEXT_CHARS,
                    }
                })?;
                Ok(vec![ProjectEvent::ProjectCreated {
                    project_id,
                    organization_id,
                    name: required_text(&name, MAX_TITLE_CHARS)?,
                    description,
                    created_at: at,
                    settings,
                }])
            }
            ProjectCommand::RenameProject { name } => {
                self.ensure_active()?;
                let name = required_text(&name, MAX_TITLE_CHARS)?;
                if name == self.name {
                    return Err(ProjectError::SameName);
                }
                Ok(vec![ProjectEvent::ProjectRenamed { name }])
            }
            ProjectCommand::ArchiveProject { at } => {
                self.ensure_active()?;
                Ok(vec![ProjectEvent::ProjectArchived { archived_at: at }])
            }
            ProjectCommand::ChangeSettings { change } => {
                self.ensure_active()?;
                let settings = change.over(self.settings);
                // Already so: nothing to record.
                if settings == self.settings {
                    return Ok(vec![]);
                }
                Ok(vec![ProjectEvent::ProjectSettingsChanged { settings }])
            }
        }
    }
}

impl Aggregate for Project {
    const TYPE: &'static str = "Project";
    type Command = ProjectCommand;
    type Event = ProjectEvent;
    type Error = ProjectError;
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
        match event {
            ProjectEvent::ProjectCreated {
                project_id,
                organization_id,
                name,
                description,
                created_at,
                settings,
            } => {
                *self = Project {
                    id: Some(project_id),
                    organization_id: Some(organization_id),
                    name,
                    description,
                    created_at: Some(created_at),
                    archived_at: None,
                    settings,
                }
            }
            ProjectEvent::ProjectSettingsChanged { settings } => self.settings = settings,
            ProjectEvent::ProjectRenamed { name } => self.name = name,
            ProjectEvent::ProjectArchived { archived_at } => self.archived_at = Some(archived_at),
        }
    }
}

impl Scoped for Project {
    fn scope(&self) -> Option<Scope> {
        Some(Scope {
            organization_id: self.organization_id?,
            project_id: self.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::testing::{org_id, project_id, t0};

    type ProjectTest = TestFramework<Project>;

    fn created() -> ProjectEvent {
        ProjectEvent::ProjectCreated {
            project_id: project_id(),
            organization_id: org_id(),
            name: "Website".into(),
            description: String::new(),
            created_at: t0(),
            settings: ProjectSettings::default(),
        }
    }

    fn create(name: &str) -> ProjectCommand {
        ProjectCommand::CreateProject {
            project_id: project_id(),
            organization_id: org_id(),
            name: name.into(),
            description: String::new(),
            settings: ProjectSettings::default(),
            at: t0(),
        }
    }

    #[tokio::test]
    async fn creating_a_project_records_its_organization() {
        ProjectTest::with(())
            .given_no_previous_events()
            .when_async(create("Website"))
            .await
            .then_expect_events(vec![created()]);
    }

    #[tokio::test]
    async fn creating_twice_or_without_a_name_is_refused() {
        ProjectTest::with(())
            .given(vec![created()])
            .when_async(create("Website"))
            .await
            .then_expect_error(ProjectError::AlreadyExists);
        ProjectTest::with(())
            .given_no_previous_events()
            .when_async(create(" "))
            .await
            .then_expect_error(ProjectError::EmptyName);
    }

    #[tokio::test]
    async fn renaming_and_archiving_follow_the_lifecycle() {
        ProjectTest::with(())
            .given(vec![created()])
            .when_async(ProjectCommand::RenameProject {
                name: "Shop".into(),
            })
            .await
            .then_expect_events(vec![ProjectEvent::ProjectRenamed {
                name: "Shop".into(),
            }]);
        ProjectTest::with(())
            .given(vec![created()])
            .when_async(ProjectCommand::RenameProject {
                name: "Website".into(),
            })
            .await
            .then_expect_error(ProjectError::SameName);
        ProjectTest::with(())
            .given(vec![
                created(),
                ProjectEvent::ProjectArchived { archived_at: t0() },
            ])
            .when_async(ProjectCommand::RenameProject {
                name: "Shop".into(),
            })
            .await
            .then_expect_error(ProjectError::Archived);
        ProjectTest::with(())
            .given_no_previous_events()
            .when_async(ProjectCommand::ArchiveProject { at: t0() })
            .await
            .then_expect_error(ProjectError::NotFound);
    }
}
