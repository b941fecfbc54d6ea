use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::common::{
    required_text, DomainError, ErrorKind, Scope, Scoped, TextProblem, MAX_TITLE_CHARS,
};

/// An organization's current state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    pub id: Option<Uuid>,
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrganizationCommand {
    CreateOrganization {
        organization_id: Uuid,
        name: String,
        at: DateTime<Utc>,
    },
    RenameOrganization {
        name: String,
    },
    ArchiveOrganization {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrganizationEvent {
    OrganizationCreated {
        organization_id: Uuid,
        name: String,
        created_at: DateTime<Utc>,
    },
    OrganizationRenamed {
        name: String,
    },
    OrganizationArchived {
        archived_at: DateTime<Utc>,
    },
}

impl DomainEvent for OrganizationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OrganizationCreated { .. } => "OrganizationCreated",
            Self::OrganizationRenamed { .. } => "OrganizationRenamed",
            Self::OrganizationArchived { .. } => "OrganizationArchived",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrganizationError {
    #[error("organization not found")]
    NotFound,
    #[error("an organization with this id already exists")]
    AlreadyExists,
    #[error("name must not be empty")]
    EmptyName,
    #[error("name is longer than {max} characters")]
    NameTooLong { max: usize },
    #[error("the organization already has this name")]
    SameName,
    #[error("the organization is archived")]
    Archived,
}

impl From<TextProblem> for OrganizationError {
    fn from(problem: TextProblem) -> Self {
        match problem {
            TextProblem::Empty => Self::EmptyName,
            TextProblem::TooLong { max } => Self::NameTooLong { max },
        }
    }
}

impl DomainError for OrganizationError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound => ErrorKind::NotFound,
            Self::EmptyName | Self::NameTooLong { .. } => ErrorKind::Invalid,
            Self::AlreadyExists | Self::SameName | Self::Archived => ErrorKind::Conflict,
        }
    }

    fn field(&self) -> Option<&'static str> {
        match self {
            Self::EmptyName | Self::NameTooLong { .. } | Self::SameName => Some("name"),
            _ => None,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "organization_not_found",
            Self::AlreadyExists => "organization_already_exists",
            Self::EmptyName => "empty_name",
            Self::NameTooLong { .. } => "name_too_long",
            Self::SameName => "same_name",
            Self::Archived => "organization_archived",
        }
    }
}

impl Organization {
    /// Refuses commands on a missing or archived organization.
    fn ensure_active(&self) -> Result<(), OrganizationError> {
        match (self.id, self.archived_at) {
            (None, _) => Err(OrganizationError::NotFound),
            (Some(_), Some(_)) => Err(OrganizationError::Archived),
            (Some(_), None) => Ok(()),
        }
    }

    pub fn is_active(&self) -> bool {
        self.ensure_active().is_ok()
    }

    fn decide(
        &self,
        command: OrganizationCommand,
    ) -> Result<Vec<OrganizationEvent>, OrganizationError> {
        match command {
            OrganizationCommand::CreateOrganization {
                organization_id,
                name,
                at,
            } => {
                if self.id.is_some() {
                    return Err(OrganizationError::AlreadyExists);
                }
                Ok(vec![OrganizationEvent::OrganizationCreated {
                    organization_id,
                    name: required_text(&name, MAX_TITLE_CHARS)?,
                    created_at: at,
                }])
            }
            OrganizationCommand::RenameOrganization { name } => {
                self.ensure_active()?;
                let name = required_text(&name, MAX_TITLE_CHARS)?;
                if name == self.name {
                    return Err(OrganizationError::SameName);
                }
                Ok(vec![OrganizationEvent::OrganizationRenamed { name }])
            }
            OrganizationCommand::ArchiveOrganization { at } => {
                self.ensure_active()?;
                Ok(vec![OrganizationEvent::OrganizationArchived {
                    archived_at: at,
                }])
            }
        }
    }
}

impl Aggregate for Organization {
    const TYPE: &'static str = "Organization";
    type Command = OrganizationCommand;
    type Event = OrganizationEvent;
    type Error = OrganizationError;
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
            OrganizationEvent::OrganizationCreated {
                organization_id,
                name,
                created_at,
            } => {
                *self = Organization {
                    id: Some(organization_id),
                    name,
                    created_at: Some(created_at),
                    archived_at: None,
                }
            }
            OrganizationEvent::OrganizationRenamed { name } => self.name = name,
            OrganizationEvent::OrganizationArchived { archived_at } => {
                self.archived_at = Some(archived_at)
            }
        }
    }
}

impl Scoped for Organization {
    fn scope(&self) -> Option<Scope> {
        Some(Scope {
            organization_id: self.id?,
            project_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::testing::{org_id, t0};

    type OrganizationTest = TestFramework<Organization>;

    fn created() -> OrganizationEvent {
        OrganizationEvent::OrganizationCreated {
            organization_id: org_id(),
            name: "Acme".into(),
            created_at: t0(),
        }
    }

    #[tokio::test]
    async fn creating_an_organization_trims_its_name() {
        OrganizationTest::with(())
            .given_no_previous_events()
            .when_async(OrganizationCommand::CreateOrganization {
                organization_id: org_id(),
                name: " Acme ".into(),
                at: t0(),
            })
            .await
            .then_expect_events(vec![created()]);
    }

    #[tokio::test]
    async fn creating_twice_or_with_an_empty_name_is_refused() {
        OrganizationTest::with(())
            .given(vec![created()])
            .when_async(OrganizationCommand::CreateOrganization {
                organization_id: org_id(),
                name: "Acme".into(),
                at: t0(),
            })
            .await
            .then_expect_error(OrganizationError::AlreadyExists);
        OrganizationTest::with(())
            .given_no_previous_events()
            .when_async(OrganizationCommand::CreateOrganization {
                organization_id: org_id(),
                name: "".into(),
                at: t0(),
            })
            .await
            .then_expect_error(OrganizationError::EmptyName);
    }

    #[tokio::test]
    async fn renaming_needs_a_new_name_and_an_active_organization() {
        OrganizationTest::with(())
            .given(vec![created()])
            .when_async(OrganizationCommand::RenameOrganization {
                name: "Acme".into(),
            })
            .await
            .then_expect_error(OrganizationError::SameName);
        OrganizationTest::with(())
            .given(vec![created()])
            .when_async(OrganizationCommand::RenameOrganization {
                name: "Globex".into(),
            })
            .await
            .then_expect_events(vec![OrganizationEvent::OrganizationRenamed {
                name: "Globex".into(),
            }]);
        OrganizationTest::with(())
            .given_no_previous_events()
            .when_async(OrganizationCommand::RenameOrganization {
                name: "Globex".into(),
            })
            .await
            .then_expect_error(OrganizationError::NotFound);
    }

    #[tokio::test]
    async fn an_archived_organization_refuses_every_change() {
        let archived = OrganizationEvent::OrganizationArchived { archived_at: t0() };
        OrganizationTest::with(())
            .given(vec![created(), archived.clone()])
            .when_async(OrganizationCommand::ArchiveOrganization { at: t0() })
            .await
            .then_expect_error(OrganizationError::Archived);
        OrganizationTest::with(())
            .given(vec![created(), archived])
            .when_async(OrganizationCommand::RenameOrganization {
                name: "Globex".into(),
            })
            .await
            .then_expect_error(OrganizationError::Archived);
    }
}
