use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access::{Principal, Role};
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
    /// Members by principal (`user:<id>` or `agent:<id>`) and their roles.
    #[schema(value_type = Object)]
    pub members: BTreeMap<Principal, Role>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrganizationCommand {
    /// Creates the organization with `owner` as its first member.
    CreateOrganization {
        organization_id: Uuid,
        name: String,
        owner: Principal,
        at: DateTime<Utc>,
    },
    AddMember {
        principal: Principal,
        role: Role,
    },
    ChangeMemberRole {
        principal: Principal,
        role: Role,
    },
    RemoveMember {
        principal: Principal,
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
    MemberAdded {
        principal: Principal,
        role: Role,
    },
    MemberRoleChanged {
        principal: Principal,
        from: Role,
        to: Role,
    },
    MemberRemoved {
        principal: Principal,
    },
}

impl DomainEvent for OrganizationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OrganizationCreated { .. } => "OrganizationCreated",
            Self::OrganizationRenamed { .. } => "OrganizationRenamed",
            Self::OrganizationArchived { .. } => "OrganizationArchived",
            Self::MemberAdded { .. } => "MemberAdded",
            Self::MemberRoleChanged { .. } => "MemberRoleChanged",
            Self::MemberRemoved { .. } => "MemberRemoved",
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
    #[error("{0} is already a member")]
    AlreadyMember(Principal),
    #[error("{0} is not a member")]
    NotMember(Principal),
    #[error("the member already has this role")]
    SameRole,
    #[error("an organization keeps at least one owner")]
    LastOwner,
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
            Self::NotMember(_) => ErrorKind::NotFound,
            Self::AlreadyExists
            | Self::SameName
            | Self::Archived
            | Self::AlreadyMember(_)
            | Self::SameRole
            | Self::LastOwner => ErrorKind::Conflict,
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
            Self::AlreadyMember(_) => "already_member",
            Self::NotMember(_) => "member_not_found",
            Self::SameRole => "same_role",
            Self::LastOwner => "last_owner",
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

    fn role_of(&self, principal: Principal) -> Result<Role, OrganizationError> {
        self.members
            .get(&principal)
            .copied()
            .ok_or(OrganizationError::NotMember(principal))
    }

    /// Refuses to take away the owner role of `principal` when nobody else holds it.
    fn ensure_another_owner(&self, principal: Principal) -> Result<(), OrganizationError> {
        let is_owner = self.members.get(&principal) == Some(&Role::Owner);
        let owners = self.members.values().filter(|r| **r == Role::Owner).count();
        if is_owner && owners == 1 {
            return Err(OrganizationError::LastOwner);
        }
        Ok(())
    }

    fn decide(
        &self,
        command: OrganizationCommand,
    ) -> Result<Vec<OrganizationEvent>, OrganizationError> {
        match command {
            OrganizationCommand::CreateOrganization {
                organization_id,
                name,
                owner,
                at,
            } => {
                if self.id.is_some() {
                    return Err(OrganizationError::AlreadyExists);
                }
                Ok(vec![
                    OrganizationEvent::OrganizationCreated {
                        organization_id,
                        name: required_text(&name, MAX_TITLE_CHARS)?,
                        created_at: at,
                    },
                    OrganizationEvent::MemberAdded {
                        principal: owner,
                        role: Role::Owner,
                    },
                ])
            }
            OrganizationCommand::AddMember { principal, role } => {
                self.ensure_active()?;
                if self.members.contains_key(&principal) {
                    return Err(OrganizationError::AlreadyMember(principal));
                }
                Ok(vec![OrganizationEvent::MemberAdded { principal, role }])
            }
            OrganizationCommand::ChangeMemberRole { principal, role } => {
                self.ensure_active()?;
                let from = self.role_of(principal)?;
                if from == role {
                    return Err(OrganizationError::SameRole);
                }
                self.ensure_another_owner(principal)?;
                Ok(vec![OrganizationEvent::MemberRoleChanged {
                    principal,
                    from,
                    to: role,
                }])
            }
            OrganizationCommand::RemoveMember { principal } => {
                self.ensure_active()?;
                self.role_of(principal)?;
                self.ensure_another_owner(principal)?;
                Ok(vec![OrganizationEvent::MemberRemoved { principal }])
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
                    ..Organization::default()
                }
            }
            OrganizationEvent::MemberAdded { principal, role } => {
                self.members.insert(principal, role);
            }
            OrganizationEvent::MemberRoleChanged { principal, to, .. } => {
                self.members.insert(principal, to);
            }
            OrganizationEvent::MemberRemoved { principal } => {
                self.members.remove(&principal);
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

    fn owner() -> Principal {
        Principal::User(Uuid::from_u128(0x01))
    }

    fn someone() -> Principal {
        Principal::User(Uuid::from_u128(0x02))
    }

    fn owner_added() -> OrganizationEvent {
        OrganizationEvent::MemberAdded {
            principal: owner(),
            role: Role::Owner,
        }
    }

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
                owner: owner(),
                at: t0(),
            })
            .await
            .then_expect_events(vec![created(), owner_added()]);
    }

    #[tokio::test]
    async fn creating_twice_or_with_an_empty_name_is_refused() {
        OrganizationTest::with(())
            .given(vec![created()])
            .when_async(OrganizationCommand::CreateOrganization {
                organization_id: org_id(),
                name: "Acme".into(),
                owner: owner(),
                at: t0(),
            })
            .await
            .then_expect_error(OrganizationError::AlreadyExists);
        OrganizationTest::with(())
            .given_no_previous_events()
            .when_async(OrganizationCommand::CreateOrganization {
                organization_id: org_id(),
                name: "".into(),
                owner: owner(),
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

    #[tokio::test]
    async fn members_are_added_changed_and_removed() {
        OrganizationTest::with(())
            .given(vec![created(), owner_added()])
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Viewer,
            })
            .await
            .then_expect_events(vec![OrganizationEvent::MemberAdded {
                principal: someone(),
                role: Role::Viewer,
            }]);
        let with_viewer = vec![
            created(),
            owner_added(),
            OrganizationEvent::MemberAdded {
                principal: someone(),
                role: Role::Viewer,
            },
        ];
        OrganizationTest::with(())
            .given(with_viewer.clone())
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Admin,
            })
            .await
            .then_expect_error(OrganizationError::AlreadyMember(someone()));
        OrganizationTest::with(())
            .given(with_viewer.clone())
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: someone(),
                role: Role::Admin,
            })
            .await
            .then_expect_events(vec![OrganizationEvent::MemberRoleChanged {
                principal: someone(),
                from: Role::Viewer,
                to: Role::Admin,
            }]);
        OrganizationTest::with(())
            .given(with_viewer)
            .when_async(OrganizationCommand::RemoveMember {
                principal: someone(),
            })
            .await
            .then_expect_events(vec![OrganizationEvent::MemberRemoved {
                principal: someone(),
            }]);
    }

    #[tokio::test]
    async fn the_last_owner_cannot_leave_or_be_demoted() {
        OrganizationTest::with(())
            .given(vec![created(), owner_added()])
            .when_async(OrganizationCommand::RemoveMember { principal: owner() })
            .await
            .then_expect_error(OrganizationError::LastOwner);
        OrganizationTest::with(())
            .given(vec![created(), owner_added()])
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: owner(),
                role: Role::Admin,
            })
            .await
            .then_expect_error(OrganizationError::LastOwner);
        OrganizationTest::with(())
            .given(vec![created(), owner_added()])
            .when_async(OrganizationCommand::RemoveMember {
                principal: someone(),
            })
            .await
            .then_expect_error(OrganizationError::NotMember(someone()));
    }
}
