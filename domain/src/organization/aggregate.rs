use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::access::{Permission, Principal, Role};
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

/// Who issues a membership command, as the API authenticated them. The membership rules
/// weigh the new role and the target's current role against the grantor's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grantor {
    /// The member whose membership the command runs on: a user with their own token, or
    /// the user who created the API key used. The rules about one's own membership apply
    /// to them, and they act with at most the role this organization records for them now
    /// (a credential cached before a demotion cannot act on the old role; one whose member
    /// has left is refused). `None` when the authority is not a membership: a super admin,
    /// or an API key a super admin created.
    pub principal: Option<Principal>,
    /// The role the credential carries in this organization (for an API key, already at
    /// most its creator's current role).
    pub role: Role,
}

impl Grantor {
    /// A member acting with `role` (their own, or their API key's).
    pub fn member(principal: Principal, role: Role) -> Self {
        Self {
            principal: Some(principal),
            role,
        }
    }

    /// Someone whose authority is not a membership here (a super admin acts as an owner).
    pub fn with_role(role: Role) -> Self {
        Self {
            principal: None,
            role,
        }
    }
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
    /// Adds `principal` with `role`, which must not be above the grantor's.
    AddMember {
        principal: Principal,
        role: Role,
        by: Grantor,
    },
    /// Changes the role of `principal`, who must not be the grantor, nor above the grantor;
    /// neither may the new role.
    ChangeMemberRole {
        principal: Principal,
        role: Role,
        by: Grantor,
    },
    /// Removes `principal`, who must not be above the grantor, unless they leave themselves.
    RemoveMember {
        principal: Principal,
        by: Grantor,
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
    #[error("the role {granted} is above your own ({own}): nobody grants a role above their own")]
    RoleAboveOwn { granted: Role, own: Role },
    #[error(
        "{principal} is {role}, above your own role ({own}): only a member of that role or \
         above changes or removes them"
    )]
    MemberOutranksYou {
        principal: Principal,
        role: Role,
        own: Role,
    },
    #[error("your role ({0}) does not manage members")]
    CannotManageMembers(Role),
    #[error("nobody changes their own role: another member must (leaving is allowed)")]
    OwnRole,
    #[error("{0} is no longer a member of this organization")]
    GrantorNotMember(Principal),
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
            Self::CannotManageMembers(_)
            | Self::RoleAboveOwn { .. }
            | Self::MemberOutranksYou { .. }
            | Self::OwnRole
            | Self::GrantorNotMember(_) => ErrorKind::Forbidden,
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
            Self::CannotManageMembers(_) => "cannot_manage_members",
            Self::RoleAboveOwn { .. } => "role_above_own",
            Self::MemberOutranksYou { .. } => "member_outranks_you",
            Self::OwnRole => "own_role",
            Self::GrantorNotMember(_) => "grantor_not_member",
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

    /// The role `by` acts with here: its credential's role, but at most the role this
    /// organization records for its member (who must still be one); a role that manages
    /// members (the API checks the same permission before; this holds against a credential
    /// cached across a demotion).
    fn authority(&self, by: Grantor) -> Result<Role, OrganizationError> {
        let own = match by.principal {
            None => by.role,
            Some(member) => self
                .members
                .get(&member)
                .map(|recorded| by.role.at_most(*recorded))
                .ok_or(OrganizationError::GrantorNotMember(member))?,
        };
        if !own.allows(Permission::OrgMembersWrite) {
            return Err(OrganizationError::CannotManageMembers(own));
        }
        Ok(own)
    }

    /// Refuses granting `role` to someone acting with `own`.
    fn ensure_may_grant(own: Role, role: Role) -> Result<(), OrganizationError> {
        if own.covers(role) {
            Ok(())
        } else {
            Err(OrganizationError::RoleAboveOwn { granted: role, own })
        }
    }

    /// Refuses touching `principal`, of `role`, for someone acting with `own`: only owners
    /// change or remove owners, and so on down.
    fn ensure_may_manage(
        own: Role,
        principal: Principal,
        role: Role,
    ) -> Result<(), OrganizationError> {
        if own.covers(role) {
            Ok(())
        } else {
            Err(OrganizationError::MemberOutranksYou {
                principal,
                role,
                own,
            })
        }
    }

    /// Refuses to take away the owner role of `principal`, a user, when no other user
    /// holds it. Only users count: an agent's membership gives it no power (an agent acts
    /// with its own credential's role), so an agent made owner could not act as one.
    fn ensure_another_owner(&self, principal: Principal) -> Result<(), OrganizationError> {
        let user_owner = |(member, role): (&Principal, &Role)| {
            matches!(member, Principal::User(_)) && *role == Role::Owner
        };
        let is_owner = self
            .members
            .get_key_value(&principal)
            .is_some_and(user_owner);
        let owners = self.members.iter().filter(|m| user_owner(*m)).count();
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
            OrganizationCommand::AddMember {
                principal,
                role,
                by,
            } => {
                self.ensure_active()?;
                let own = self.authority(by)?;
                Self::ensure_may_grant(own, role)?;
                if self.members.contains_key(&principal) {
                    return Err(OrganizationError::AlreadyMember(principal));
                }
                Ok(vec![OrganizationEvent::MemberAdded { principal, role }])
            }
            OrganizationCommand::ChangeMemberRole {
                principal,
                role,
                by,
            } => {
                self.ensure_active()?;
                let own = self.authority(by)?;
                let from = self.role_of(principal)?;
                if by.principal == Some(principal) {
                    return Err(OrganizationError::OwnRole);
                }
                Self::ensure_may_manage(own, principal, from)?;
                Self::ensure_may_grant(own, role)?;
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
            OrganizationCommand::RemoveMember { principal, by } => {
                self.ensure_active()?;
                let role = self.role_of(principal)?;
                // Leaving needs no right to manage members (but the last owner stays,
                // below): someone an admin added may always go.
                if by.principal != Some(principal) {
                    let own = self.authority(by)?;
                    Self::ensure_may_manage(own, principal, role)?;
                }
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

    fn by_owner() -> Grantor {
        Grantor::member(owner(), Role::Owner)
    }

    fn admin() -> Principal {
        Principal::User(Uuid::from_u128(0x03))
    }

    fn plain() -> Principal {
        Principal::User(Uuid::from_u128(0x04))
    }

    fn second_owner() -> Principal {
        Principal::User(Uuid::from_u128(0x05))
    }

    fn added(principal: Principal, role: Role) -> OrganizationEvent {
        OrganizationEvent::MemberAdded { principal, role }
    }

    /// The owner, a second owner, an admin and a member.
    fn staffed() -> Vec<OrganizationEvent> {
        vec![
            created(),
            owner_added(),
            added(second_owner(), Role::Owner),
            added(admin(), Role::Admin),
            added(plain(), Role::Member),
        ]
    }

    fn by_admin() -> Grantor {
        Grantor::member(admin(), Role::Admin)
    }

    #[tokio::test]
    async fn members_are_added_changed_and_removed() {
        OrganizationTest::with(())
            .given(vec![created(), owner_added()])
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Viewer,
                by: by_owner(),
            })
            .await
            .then_expect_events(vec![added(someone(), Role::Viewer)]);
        let with_viewer = vec![created(), owner_added(), added(someone(), Role::Viewer)];
        OrganizationTest::with(())
            .given(with_viewer.clone())
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Admin,
                by: by_owner(),
            })
            .await
            .then_expect_error(OrganizationError::AlreadyMember(someone()));
        OrganizationTest::with(())
            .given(with_viewer.clone())
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: someone(),
                role: Role::Admin,
                by: by_owner(),
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
                by: by_owner(),
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
            .when_async(OrganizationCommand::RemoveMember {
                principal: owner(),
                by: by_owner(),
            })
            .await
            .then_expect_error(OrganizationError::LastOwner);
        // Nobody changes their own role; a super admin (no membership) meets the last owner.
        OrganizationTest::with(())
            .given(vec![created(), owner_added()])
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: owner(),
                role: Role::Admin,
                by: Grantor::with_role(Role::Owner),
            })
            .await
            .then_expect_error(OrganizationError::LastOwner);
        OrganizationTest::with(())
            .given(vec![created(), owner_added()])
            .when_async(OrganizationCommand::RemoveMember {
                principal: someone(),
                by: by_owner(),
            })
            .await
            .then_expect_error(OrganizationError::NotMember(someone()));
    }

    /// An agent made owner holds no owner's power: the last human owner still cannot
    /// leave or be demoted, and the agent itself may go.
    #[tokio::test]
    async fn an_agent_owner_does_not_count_as_another_owner() {
        let robot = Principal::Agent(Uuid::from_u128(0x0a));
        let with_robot_owner = vec![
            created(),
            owner_added(),
            OrganizationEvent::MemberAdded {
                principal: robot,
                role: Role::Owner,
            },
        ];
        OrganizationTest::with(())
            .given(with_robot_owner.clone())
            .when_async(OrganizationCommand::RemoveMember {
                principal: owner(),
                by: by_owner(),
            })
            .await
            .then_expect_error(OrganizationError::LastOwner);
        OrganizationTest::with(())
            .given(with_robot_owner.clone())
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: owner(),
                role: Role::Admin,
                by: Grantor::with_role(Role::Owner),
            })
            .await
            .then_expect_error(OrganizationError::LastOwner);
        OrganizationTest::with(())
            .given(with_robot_owner)
            .when_async(OrganizationCommand::RemoveMember {
                principal: robot,
                by: by_owner(),
            })
            .await
            .then_expect_events(vec![OrganizationEvent::MemberRemoved { principal: robot }]);
    }

    #[tokio::test]
    async fn nobody_grants_a_role_above_their_own() {
        // An admin adds an owner, raises a member to owner.
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Owner,
                by: by_admin(),
            })
            .await
            .then_expect_error(OrganizationError::RoleAboveOwn {
                granted: Role::Owner,
                own: Role::Admin,
            });
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: plain(),
                role: Role::Owner,
                by: by_admin(),
            })
            .await
            .then_expect_error(OrganizationError::RoleAboveOwn {
                granted: Role::Owner,
                own: Role::Admin,
            });
        // Refused before "already a member": a refusal says nothing of the state.
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::AddMember {
                principal: owner(),
                role: Role::Owner,
                by: by_admin(),
            })
            .await
            .then_expect_error(OrganizationError::RoleAboveOwn {
                granted: Role::Owner,
                own: Role::Admin,
            });
        // Up to their own role, they may.
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Admin,
                by: by_admin(),
            })
            .await
            .then_expect_events(vec![added(someone(), Role::Admin)]);
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: plain(),
                role: Role::Admin,
                by: by_admin(),
            })
            .await
            .then_expect_events(vec![OrganizationEvent::MemberRoleChanged {
                principal: plain(),
                from: Role::Member,
                to: Role::Admin,
            }]);
        // An owner grants owner.
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Owner,
                by: by_owner(),
            })
            .await
            .then_expect_events(vec![added(someone(), Role::Owner)]);
    }

    #[tokio::test]
    async fn only_owners_change_or_remove_owners() {
        for command in [
            OrganizationCommand::ChangeMemberRole {
                principal: owner(),
                role: Role::Viewer,
                by: by_admin(),
            },
            OrganizationCommand::RemoveMember {
                principal: owner(),
                by: by_admin(),
            },
        ] {
            OrganizationTest::with(())
                .given(staffed())
                .when_async(command)
                .await
                .then_expect_error(OrganizationError::MemberOutranksYou {
                    principal: owner(),
                    role: Role::Owner,
                    own: Role::Admin,
                });
        }
        // Even to the role the owner already has: the refusal comes first.
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: owner(),
                role: Role::Owner,
                by: by_admin(),
            })
            .await
            .then_expect_error(OrganizationError::MemberOutranksYou {
                principal: owner(),
                role: Role::Owner,
                own: Role::Admin,
            });
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::RemoveMember {
                principal: owner(),
                by: Grantor::member(second_owner(), Role::Owner),
            })
            .await
            .then_expect_events(vec![OrganizationEvent::MemberRemoved {
                principal: owner(),
            }]);
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::ChangeMemberRole {
                principal: second_owner(),
                role: Role::Admin,
                by: by_owner(),
            })
            .await
            .then_expect_events(vec![OrganizationEvent::MemberRoleChanged {
                principal: second_owner(),
                from: Role::Owner,
                to: Role::Admin,
            }]);
        // An admin manages its peers and those below.
        OrganizationTest::with(())
            .given(vec![
                created(),
                owner_added(),
                added(admin(), Role::Admin),
                added(someone(), Role::Admin),
            ])
            .when_async(OrganizationCommand::RemoveMember {
                principal: someone(),
                by: by_admin(),
            })
            .await
            .then_expect_events(vec![OrganizationEvent::MemberRemoved {
                principal: someone(),
            }]);
    }

    #[tokio::test]
    async fn nobody_changes_their_own_role_but_anyone_may_leave() {
        for (me, role, to) in [
            (admin(), Role::Admin, Role::Owner),
            (admin(), Role::Admin, Role::Viewer),
            (owner(), Role::Owner, Role::Admin),
        ] {
            OrganizationTest::with(())
                .given(staffed())
                .when_async(OrganizationCommand::ChangeMemberRole {
                    principal: me,
                    role: to,
                    by: Grantor::member(me, role),
                })
                .await
                .then_expect_error(OrganizationError::OwnRole);
        }
        let mut with_viewer = staffed();
        with_viewer.push(added(someone(), Role::Viewer));
        for (me, role) in [
            (admin(), Role::Admin),
            (owner(), Role::Owner),
            (plain(), Role::Member),
            (someone(), Role::Viewer),
        ] {
            OrganizationTest::with(())
                .given(with_viewer.clone())
                .when_async(OrganizationCommand::RemoveMember {
                    principal: me,
                    by: Grantor::member(me, role),
                })
                .await
                .then_expect_events(vec![OrganizationEvent::MemberRemoved { principal: me }]);
        }
    }

    #[tokio::test]
    async fn a_grantor_acts_with_at_most_the_role_recorded_for_them() {
        // A credential still saying admin, of a member demoted since.
        let demoted = {
            let mut events = staffed();
            events.push(OrganizationEvent::MemberRoleChanged {
                principal: admin(),
                from: Role::Admin,
                to: Role::Member,
            });
            events
        };
        OrganizationTest::with(())
            .given(demoted)
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Viewer,
                by: by_admin(),
            })
            .await
            .then_expect_error(OrganizationError::CannotManageMembers(Role::Member));
        // ... of a member removed since.
        let removed = {
            let mut events = staffed();
            events.push(OrganizationEvent::MemberRemoved { principal: admin() });
            events
        };
        OrganizationTest::with(())
            .given(removed)
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Viewer,
                by: by_admin(),
            })
            .await
            .then_expect_error(OrganizationError::GrantorNotMember(admin()));
        // A key of the owner's with the admin role acts as an admin.
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Owner,
                by: Grantor::member(owner(), Role::Admin),
            })
            .await
            .then_expect_error(OrganizationError::RoleAboveOwn {
                granted: Role::Owner,
                own: Role::Admin,
            });
        // A super admin, no member, acts as an owner.
        OrganizationTest::with(())
            .given(staffed())
            .when_async(OrganizationCommand::AddMember {
                principal: someone(),
                role: Role::Owner,
                by: Grantor::with_role(Role::Owner),
            })
            .await
            .then_expect_events(vec![added(someone(), Role::Owner)]);
    }

    /// Whether `a` allows every permission `b` allows, over the permissions the code base
    /// uses: the membership rules' oracle, independent of `Role::rank`.
    fn allows_all_of(a: Role, b: Role) -> bool {
        [
            "org:read",
            "org:write",
            "org:delete",
            "org:members:write",
            "project:read",
            "project:write",
            "ticket:write",
            "task:write",
            "task:execute",
            "spec:approve",
            "agent:write",
            "agent:heartbeat",
            "apikey:write",
            "events:read",
            "anything:at_all",
        ]
        .iter()
        .all(|p| !b.allows_text(p) || a.allows_text(p))
    }

    #[test]
    fn every_grantor_target_and_role_is_decided_by_the_permissions() {
        let grantor = Principal::User(Uuid::from_u128(0x10));
        let target = Principal::User(Uuid::from_u128(0x11));
        for own in Role::ALL {
            for current in Role::ALL {
                let mut organization = Organization::default();
                for event in [
                    created(),
                    owner_added(),
                    added(grantor, own),
                    added(target, current),
                ] {
                    organization.apply(event);
                }
                let by = Grantor::member(grantor, own);
                let manages = own.allows(Permission::OrgMembersWrite);
                for new in Role::ALL {
                    let change = organization.decide(OrganizationCommand::ChangeMemberRole {
                        principal: target,
                        role: new,
                        by,
                    });
                    let expected = manages
                        && allows_all_of(own, current)
                        && allows_all_of(own, new)
                        && current != new;
                    assert_eq!(change.is_ok(), expected, "{own} sets {current} to {new}");
                    let add = organization.decide(OrganizationCommand::AddMember {
                        principal: someone(),
                        role: new,
                        by,
                    });
                    assert_eq!(
                        add.is_ok(),
                        manages && allows_all_of(own, new),
                        "{own} adds {new}"
                    );
                    // And the same credential of the grantor's, with a lower role.
                    let key = Grantor::member(grantor, new);
                    let add = organization.decide(OrganizationCommand::AddMember {
                        principal: someone(),
                        role: current,
                        by: key,
                    });
                    let acting = if allows_all_of(own, new) { new } else { own };
                    assert_eq!(
                        add.is_ok(),
                        acting.allows(Permission::OrgMembersWrite)
                            && allows_all_of(acting, current),
                        "{own}'s {new} key adds {current}"
                    );
                }
                let remove = organization.decide(OrganizationCommand::RemoveMember {
                    principal: target,
                    by,
                });
                assert_eq!(
                    remove.is_ok(),
                    manages && allows_all_of(own, current),
                    "{own} removes {current}"
                );
                let own_change = organization.decide(OrganizationCommand::ChangeMemberRole {
                    principal: grantor,
                    role: Role::Viewer,
                    by,
                });
                assert!(own_change.is_err(), "{own} changes their own role");
            }
        }
    }

    #[test]
    fn the_refusals_of_who_may_do_what_are_403s() {
        for error in [
            OrganizationError::RoleAboveOwn {
                granted: Role::Owner,
                own: Role::Admin,
            },
            OrganizationError::MemberOutranksYou {
                principal: owner(),
                role: Role::Owner,
                own: Role::Admin,
            },
            OrganizationError::OwnRole,
            OrganizationError::GrantorNotMember(owner()),
            OrganizationError::CannotManageMembers(Role::Member),
        ] {
            assert_eq!(error.kind(), ErrorKind::Forbidden, "{error:?}");
        }
        assert_eq!(OrganizationError::LastOwner.kind(), ErrorKind::Conflict);
    }
}
