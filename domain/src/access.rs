//! Who may do what: principals, organization roles and their permissions (the original's
//! RBAC: permission strings with wildcards, roles that inherit from a parent role).
//!
//! A permission is `resource:action` (`ticket:write`, `org:members:write`). A granted
//! permission matches when it is equal, when it is `*:*`, or when it ends in `:*` and the
//! requested permission starts with what precedes the `*`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Someone who can be a member of an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    User(Uuid),
    Agent(Uuid),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::Agent(id) => write!(f, "agent:{id}"),
        }
    }
}

/// Why a principal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a principal is user:<uuid> or agent:<uuid>")]
pub struct BadPrincipal;

impl Principal {
    /// The text form as a regular expression: `user:` or `agent:` and a hyphenated UUID.
    pub const PATTERN: &'static str =
        "^(user|agent):[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
}

impl FromStr for Principal {
    type Err = BadPrincipal;

    /// Exactly [`Principal::PATTERN`]: the UUID's other spellings (braced, simple, URN)
    /// are refused, so that the documented form is the only one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, id) = s.split_once(':').ok_or(BadPrincipal)?;
        let hyphenated = id.len() == 36 && id.bytes().filter(|b| *b == b'-').count() == 4;
        if !hyphenated {
            return Err(BadPrincipal);
        }
        let id = id.parse::<Uuid>().map_err(|_| BadPrincipal)?;
        match kind {
            "user" => Ok(Self::User(id)),
            "agent" => Ok(Self::Agent(id)),
            _ => Err(BadPrincipal),
        }
    }
}

impl utoipa::PartialSchema for Principal {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(Self::PATTERN))
            .description(Some("`user:<uuid>` or `agent:<uuid>`"))
            .examples(["user:0196f5d2-0000-7000-8000-000000000000"])
            .into()
    }
}

impl ToSchema for Principal {}

impl Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Something a role may allow: the original's `resource:action` permissions, named once.
/// Roles grant them through the wildcard patterns of [`Role::own_permissions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    OrgRead,
    OrgWrite,
    /// Archive the organization: final, and it freezes its membership, so owners only.
    OrgDelete,
    OrgMembersWrite,
    ProjectRead,
    ProjectWrite,
    TicketRead,
    TicketWrite,
    TaskRead,
    TaskWrite,
    /// Run a task: start, report progress, complete, fail (agents and members).
    TaskExecute,
    SpecRead,
    SpecWrite,
    /// Approve a spec's requirements or design (and so start billed work).
    SpecApprove,
    AgentRead,
    AgentWrite,
    AgentHeartbeat,
    ApiKeyRead,
    ApiKeyWrite,
    /// Read the raw event log and the live event streams.
    EventsRead,
    /// Intervene as a Guardian: cancel, reassign or re-prioritize any task, steer its
    /// agent, quarantine and release agents; register agents of type `guardian`.
    GuardianIntervene,
}

impl Permission {
    pub const ALL: [Permission; 21] = [
        Self::OrgRead,
        Self::OrgWrite,
        Self::OrgDelete,
        Self::OrgMembersWrite,
        Self::ProjectRead,
        Self::ProjectWrite,
        Self::TicketRead,
        Self::TicketWrite,
        Self::TaskRead,
        Self::TaskWrite,
        Self::TaskExecute,
        Self::SpecRead,
        Self::SpecWrite,
        Self::SpecApprove,
        Self::AgentRead,
        Self::AgentWrite,
        Self::AgentHeartbeat,
        Self::ApiKeyRead,
        Self::ApiKeyWrite,
        Self::EventsRead,
        Self::GuardianIntervene,
    ];

    /// The original's spelling, which the grant patterns match.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OrgRead => "org:read",
            Self::OrgWrite => "org:write",
            Self::OrgDelete => "org:delete",
            Self::OrgMembersWrite => "org:members:write",
            Self::ProjectRead => "project:read",
            Self::ProjectWrite => "project:write",
            Self::TicketRead => "ticket:read",
            Self::TicketWrite => "ticket:write",
            Self::TaskRead => "task:read",
            Self::TaskWrite => "task:write",
            Self::TaskExecute => "task:execute",
            Self::SpecRead => "spec:read",
            Self::SpecWrite => "spec:write",
            Self::SpecApprove => "spec:approve",
            Self::AgentRead => "agent:read",
            Self::AgentWrite => "agent:write",
            Self::AgentHeartbeat => "agent:heartbeat",
            Self::ApiKeyRead => "apikey:read",
            Self::ApiKeyWrite => "apikey:write",
            Self::EventsRead => "events:read",
            Self::GuardianIntervene => "guardian:intervene",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
    AgentExecutor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Self::Owner,
        Self::Admin,
        Self::Member,
        Self::Viewer,
        Self::AgentExecutor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Viewer => "viewer",
            Self::AgentExecutor => "agent_executor",
        }
    }

    /// The role whose permissions this one also has.
    pub fn inherits_from(self) -> Option<Role> {
        match self {
            Self::Owner => Some(Self::Admin),
            Self::Admin => Some(Self::Member),
            Self::Member | Self::AgentExecutor => Some(Self::Viewer),
            Self::Viewer => None,
        }
    }

    /// The permissions granted by this role itself (not counting inheritance).
    pub fn own_permissions(self) -> &'static [&'static str] {
        match self {
            Self::Owner => &["*:*"],
            Self::Admin => &[
                "org:write",
                "org:members:*",
                "project:*",
                "agent:*",
                "apikey:*",
                "guardian:*",
            ],
            Self::Member => &[
                "ticket:*",
                "task:*",
                "spec:*",
                "agent:write",
                "agent:heartbeat",
            ],
            Self::Viewer => &[
                "org:read",
                "project:read",
                "ticket:read",
                "task:read",
                "spec:read",
                "agent:read",
                "events:read",
            ],
            Self::AgentExecutor => &["task:execute", "agent:heartbeat"],
        }
    }

    /// The role's place in the chain the permissions form, lowest first: viewer (0),
    /// agent_executor, member, admin, owner (4). Each role allows every permission of the
    /// roles below it (`Role::covers`; proptested below against the permission strings), so
    /// "at most my role" is a comparison of ranks.
    pub fn rank(self) -> u8 {
        match self {
            Self::Viewer => 0,
            Self::AgentExecutor => 1,
            Self::Member => 2,
            Self::Admin => 3,
            Self::Owner => 4,
        }
    }

    /// Whether this role is at least `other`: it allows everything `other` allows.
    pub fn covers(self, other: Role) -> bool {
        self.rank() >= other.rank()
    }

    /// The lower of the two roles (an API key acts with at most its creator's role).
    pub fn at_most(self, cap: Role) -> Role {
        if cap.covers(self) {
            self
        } else {
            cap
        }
    }

    /// Whether this role, or a role it inherits from, grants `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        self.allows_text(permission.as_str())
    }

    /// [`Role::allows`] for any `resource:action` string: the grant tables are patterns,
    /// and their rules are tested on strings no [`Permission`] names.
    pub fn allows_text(self, permission: &str) -> bool {
        let mut role = Some(self);
        while let Some(current) = role {
            if current
                .own_permissions()
                .iter()
                .any(|granted| grants(granted, permission))
            {
                return true;
            }
            role = current.inherits_from();
        }
        false
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or(())
    }
}

/// The original's wildcard rule: exact, `*:*`, or a prefix ending in `:*`.
pub fn grants(granted: &str, requested: &str) -> bool {
    if granted == requested || granted == "*:*" {
        return true;
    }
    match granted.strip_suffix('*') {
        Some(prefix) if prefix.ends_with(':') => requested.starts_with(prefix),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn wildcards_match_as_the_original_did() {
        assert!(grants("ticket:write", "ticket:write"));
        assert!(grants("*:*", "org:members:write"));
        assert!(grants("project:*", "project:write"));
        assert!(grants("org:members:*", "org:members:write"));
        assert!(!grants("org:members:*", "org:write"));
        assert!(!grants("project:*", "projects:write"));
        assert!(!grants("ticket:read", "ticket:write"));
        assert!(!grants("ticket*", "ticket:write"));
    }

    #[test]
    fn every_permission_is_known_and_the_owner_has_them_all() {
        for permission in Permission::ALL {
            assert!(
                KNOWN_PERMISSIONS.contains(&permission.as_str()),
                "{permission}"
            );
            assert!(Role::Owner.allows(permission), "{permission}");
        }
        assert!(Role::Viewer.allows(Permission::TicketRead));
        assert!(!Role::Viewer.allows(Permission::TicketWrite));
    }

    #[test]
    fn roles_inherit_their_parents_permissions() {
        assert!(Role::Owner.allows_text("anything:at_all"));
        assert!(
            Role::Admin.allows_text("ticket:write"),
            "admin inherits member"
        );
        assert!(
            Role::Admin.allows_text("events:read"),
            "admin inherits viewer"
        );
        assert!(!Role::Admin.allows_text("org:delete"));
        assert!(Role::Member.allows_text("task:execute"));
        assert!(!Role::Member.allows_text("project:write"));
        assert!(Role::Viewer.allows_text("ticket:read"));
        assert!(!Role::Viewer.allows_text("ticket:write"));
        assert!(Role::AgentExecutor.allows_text("task:execute"));
        assert!(Role::AgentExecutor.allows_text("task:read"));
        assert!(!Role::AgentExecutor.allows_text("task:write"));
    }

    /// Every permission string the code base grants or asks for.
    const KNOWN_PERMISSIONS: [&str; 21] = [
        "org:read",
        "org:write",
        "org:delete",
        "org:members:write",
        "project:read",
        "project:write",
        "ticket:read",
        "ticket:write",
        "task:read",
        "task:write",
        "task:execute",
        "spec:read",
        "spec:write",
        "spec:approve",
        "agent:read",
        "agent:write",
        "agent:heartbeat",
        "apikey:read",
        "apikey:write",
        "events:read",
        "guardian:intervene",
    ];

    /// Known permissions, the granted patterns themselves, and random `resource:action`s
    /// built from the known resources and actions and from arbitrary words.
    fn permission() -> impl Strategy<Value = String> {
        let granted: Vec<String> = Role::ALL
            .iter()
            .flat_map(|r| r.own_permissions().iter().map(|p| p.to_string()))
            .collect();
        let known: Vec<String> = KNOWN_PERMISSIONS.iter().map(|p| p.to_string()).collect();
        let word = || {
            prop_oneof![
                prop::sample::select(vec![
                    "org",
                    "members",
                    "project",
                    "ticket",
                    "task",
                    "spec",
                    "agent",
                    "apikey",
                    "events",
                    "read",
                    "write",
                    "execute",
                    "heartbeat",
                    "approve",
                    "delete",
                    "*",
                ])
                .prop_map(str::to_string),
                "[a-z*]{0,6}",
            ]
        };
        prop_oneof![
            prop::sample::select(known),
            prop::sample::select(granted),
            prop::collection::vec(word(), 1..4).prop_map(|words| words.join(":")),
        ]
    }

    proptest! {
        #[test]
        fn a_role_that_covers_another_allows_all_it_allows(
            a in prop::sample::select(Role::ALL.to_vec()),
            b in prop::sample::select(Role::ALL.to_vec()),
            permission in permission(),
        ) {
            if a.covers(b) && b.allows_text(&permission) {
                prop_assert!(a.allows_text(&permission), "{a} covers {b} but not {permission}");
            }
        }
    }

    #[test]
    fn the_roles_form_one_chain_by_permissions() {
        // Each role strictly above the next: something it allows that the next does not.
        let chain = [
            Role::Owner,
            Role::Admin,
            Role::Member,
            Role::AgentExecutor,
            Role::Viewer,
        ];
        for pair in chain.windows(2) {
            let (upper, lower) = (pair[0], pair[1]);
            assert!(
                upper.covers(lower) && !lower.covers(upper),
                "{upper} > {lower}"
            );
            let beyond = KNOWN_PERMISSIONS
                .iter()
                .chain(["anything:at_all"].iter())
                .find(|p| upper.allows_text(p) && !lower.allows_text(p));
            assert!(
                beyond.is_some(),
                "{upper} allows something {lower} does not"
            );
            // Everything the lower role grants, the upper one allows.
            for granted in lower.own_permissions() {
                assert!(
                    upper.allows_text(granted),
                    "{upper} allows {granted} of {lower}"
                );
            }
        }
        for role in Role::ALL {
            assert!(role.covers(role));
            assert_eq!(role.at_most(Role::Owner), role);
            assert_eq!(Role::Owner.at_most(role), role);
            assert_eq!(role.at_most(Role::Viewer), Role::Viewer);
        }
        assert_eq!(Role::Admin.at_most(Role::Member), Role::Member);
        assert_eq!(
            Role::AgentExecutor.at_most(Role::Member),
            Role::AgentExecutor
        );
    }

    #[test]
    fn principals_round_trip_through_text() {
        let id = Uuid::from_u128(7);
        for principal in [Principal::User(id), Principal::Agent(id)] {
            assert_eq!(principal.to_string().parse::<Principal>(), Ok(principal));
        }
        assert!("robot:x".parse::<Principal>().is_err());
        assert!("user:not-a-uuid".parse::<Principal>().is_err());
    }

    /// The parser accepts what the documented pattern matches and nothing else.
    #[test]
    fn principals_parse_exactly_the_documented_pattern() {
        let pattern = regex_lite::Regex::new(Principal::PATTERN).expect("a valid pattern");
        let id = Uuid::from_u128(0xABCD);
        for text in [
            format!("user:{id}"),
            format!("agent:{}", id.hyphenated().to_string().to_uppercase()),
            format!("user:{}", id.simple()),
            format!("user:{}", id.braced()),
            format!("user:{}", id.urn()),
            format!("user:{id} "),
            format!("User:{id}"),
            "user:".to_string(),
        ] {
            assert_eq!(
                text.parse::<Principal>().is_ok(),
                pattern.is_match(&text),
                "{text}"
            );
        }
    }
}
