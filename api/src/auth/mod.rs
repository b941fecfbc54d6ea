//! Authentication and authorization.
//!
//! Every request but the public ones (`/health`, `/metrics`, the OpenAPI document,
//! register/login/refresh) carries a credential: an access token (`Authorization: Bearer`,
//! or the `omoi_access_token` cookie for browsers — the header wins) or an API key
//! (`omoi_sk_…`, same header). The [`Caller`] extractor turns it into a principal with its
//! organization roles, in one query; handlers then ask [`Caller::check`] whether the caller
//! may use a permission on an aggregate's scope. Another organization's resource answers
//! 404 (ids do not leak); a visible resource the role does not allow answers 403.
//!
//! # Layout
//!
//! * [`tokens`] — HS256 JWTs; [`passwords`] — argon2id and the password rules;
//!   [`keys`] — API keys; [`routes`] — `/api/v1/auth/*`; [`guard`] — hash slots, rate
//!   limits and cookie policy of the public routes; [`housekeeping`] — pruning.

pub mod cache;
pub mod guard;
pub mod housekeeping;
pub mod keys;
pub mod passwords;
pub mod routes;
pub mod tokens;

use omoi_domain::access::Permission;
use std::collections::HashMap;
use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN};
use axum::http::request::Parts;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use omoi_domain::access::{Principal, Role};
use omoi_domain::common::Scope;
use omoi_domain::organization::Grantor;
use omoi_store::accounts;
use omoi_store::bus::Refusal;
use omoi_store::{Actor, CommandContext};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;
use cache::CredentialKey;
use tokens::TokenType;

pub const ACCESS_COOKIE: &str = "omoi_access_token";
pub const REFRESH_COOKIE: &str = "omoi_refresh_token";

/// Who is calling, with what they may do.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    roles: HashMap<Uuid, Role>,
    /// From `X-Request-Id` when the client sent a sensible one, else generated.
    pub request_id: String,
}

#[derive(Debug, Clone)]
pub enum Identity {
    User {
        id: Uuid,
        super_admin: bool,
        /// The access token used, so that logout can revoke it.
        token: (Uuid, DateTime<Utc>),
    },
    ApiKey {
        id: Uuid,
        organization_id: Uuid,
        /// A key limited to one project sees nothing else.
        project_id: Option<Uuid>,
        /// An agent's own credential speaks for that agent only.
        agent_id: Option<Uuid>,
        /// The user who created the key (or registered the agent): the key acts on their
        /// authority, with at most their current role, and dies with their membership.
        created_by: Uuid,
        /// The creator is a super admin (who acts as an owner everywhere).
        creator_is_super_admin: bool,
        /// The creator's current role in the key's organization (an owner's for a super
        /// admin): what an agent's credential may do on its own kind's authority (a
        /// guardian's interventions) stays within it.
        creator_role: Role,
    },
}

impl Caller {
    /// The metadata context of the commands this request issues.
    pub fn context(&self) -> CommandContext {
        CommandContext::new(self.actor(), self.request_id.clone())
    }

    /// The actor written into event metadata: always the authenticated principal.
    pub fn actor(&self) -> Actor {
        match &self.identity {
            Identity::User { id, .. } => Actor::User(*id),
            Identity::ApiKey {
                agent_id: Some(agent),
                ..
            } => Actor::Agent(*agent),
            Identity::ApiKey { id, .. } => Actor::ApiKey(*id),
        }
    }

    /// The agent whose own credential this is, if it is one.
    pub fn agent_id(&self) -> Option<Uuid> {
        match &self.identity {
            Identity::ApiKey { agent_id, .. } => *agent_id,
            Identity::User { .. } => None,
        }
    }

    /// Refuses (403) an agent's credential acting for another agent.
    pub fn ensure_speaks_for(&self, agent: Uuid) -> Result<(), ApiError> {
        match self.agent_id() {
            Some(own) if own != agent => Err(ApiError::Forbidden {
                permission: "acting for another agent (this credential is another agent's)",
            }),
            _ => Ok(()),
        }
    }

    /// Whether the user whose authority an API key rests on holds `permission` in the
    /// key's organization now (a user's own token: whether the user does anywhere is the
    /// scope check's question, so `false` here).
    pub fn creator_allows(&self, permission: Permission) -> bool {
        match &self.identity {
            Identity::ApiKey { creator_role, .. } => creator_role.allows(permission),
            Identity::User { .. } => false,
        }
    }

    /// The user behind the call, if it is a user.
    pub fn user_id(&self) -> Option<Uuid> {
        match &self.identity {
            Identity::User { id, .. } => Some(*id),
            Identity::ApiKey { .. } => None,
        }
    }

    /// As which principal the caller can be made a member (API keys cannot).
    pub fn principal(&self) -> Option<Principal> {
        self.user_id().map(Principal::User)
    }

    /// Whether this credential's authority rests on `user`: it is the user's own token, or
    /// an API key the user created. A change to the user's memberships concerns it.
    pub fn rests_on(&self, user: Uuid) -> bool {
        match self.identity {
            Identity::User { id, .. } => id == user,
            Identity::ApiKey { created_by, .. } => created_by == user,
        }
    }

    /// Who the caller is to the membership rules of `organization_id`, with its role there;
    /// `None` when it may not see the organization. A user acts as a member, an API key
    /// as a member too — its creator, with the key's role — so that the rules about one's
    /// own membership hold for both; a super admin (or a key of one) acts as an owner.
    pub fn grantor(&self, organization_id: Uuid) -> Option<Grantor> {
        let role = self.role_for(Scope {
            organization_id,
            project_id: None,
        })?;
        Some(match self.identity {
            Identity::User {
                super_admin: true, ..
            }
            | Identity::ApiKey {
                creator_is_super_admin: true,
                ..
            } => Grantor::with_role(role),
            Identity::User { id, .. } => Grantor::member(Principal::User(id), role),
            Identity::ApiKey { created_by, .. } => {
                Grantor::member(Principal::User(created_by), role)
            }
        })
    }

    /// The caller's role for a resource in `scope`, if it may see it at all.
    pub fn role_for(&self, scope: Scope) -> Option<Role> {
        if let Identity::User {
            super_admin: true, ..
        } = self.identity
        {
            return Some(Role::Owner);
        }
        if let Identity::ApiKey {
            project_id: Some(only),
            ..
        } = self.identity
        {
            if scope.project_id != Some(only) {
                return None;
            }
        }
        self.roles.get(&scope.organization_id).copied()
    }

    /// May the caller use `permission` on a resource in `scope`? `None` (the resource does
    /// not exist) and other organizations' resources are `NotVisible`.
    pub fn check(&self, scope: Option<Scope>, permission: Permission) -> Result<(), Refusal> {
        let role = scope
            .and_then(|s| self.role_for(s))
            .ok_or(Refusal::NotVisible)?;
        if role.allows(permission) {
            Ok(())
        } else {
            Err(Refusal::NotPermitted)
        }
    }

    /// Like [`Caller::check`], as an API error naming `what` for 404.
    pub fn authorize(
        &self,
        scope: Option<Scope>,
        permission: Permission,
        what: &'static str,
    ) -> Result<(), ApiError> {
        self.check(scope, permission)
            .map_err(|refusal| refused(refusal, what, permission.as_str()))
    }

    /// The organizations whose resources the caller may read.
    pub fn visible_organizations(&self) -> Vec<Uuid> {
        self.roles.keys().copied().collect()
    }

    pub fn is_super_admin(&self) -> bool {
        matches!(
            self.identity,
            Identity::User {
                super_admin: true,
                ..
            }
        )
    }

    /// For an API key, the one project it is limited to.
    pub fn project_limit(&self) -> Option<Uuid> {
        match self.identity {
            Identity::ApiKey { project_id, .. } => project_id,
            Identity::User { .. } => None,
        }
    }
}

/// The API error for a scope refusal; `permission` names what was missing.
pub fn refused(refusal: Refusal, what: &'static str, permission: &'static str) -> ApiError {
    match refusal {
        Refusal::NotVisible => ApiError::NotFound { what },
        Refusal::NotPermitted => ApiError::Forbidden { permission },
    }
}

/// The `Authorization: Bearer` credential of a request, if it sent one.
pub fn bearer(parts: &Parts) -> Option<String> {
    let header = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))?;
    Some(token.trim().to_string()).filter(|token| !token.is_empty())
}

/// Whether `origin` (an `Origin` header's value) may act with the cookie here: the
/// server's own (the page was served by it — the browser sets both `Origin` and `Host`,
/// so a foreign page cannot make them agree) or one of `allowed`.
pub fn origin_allowed(parts: &Parts, origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim_end_matches('/');
    let host = parts
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        // HTTP/2 carries the host as the URI's authority instead.
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let own = matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h));
    own || allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Refuses a write (any method but GET, HEAD, OPTIONS) authenticated by a cookie from a
/// page of another origin: the browser attaches a `SameSite=Lax` cookie to a form a page
/// of a sibling subdomain (the same site, another origin) submits, and a route without a
/// JSON body (an archive, an approval) would act on it. Browsers send `Origin` with
/// every such request; a client that sends none is not a browser page.
pub fn ensure_cookie_origin(parts: &Parts, state: &AppState) -> Result<(), ApiError> {
    match parts.method.is_safe() {
        true => Ok(()),
        false => check_cookie_origin(parts, state, false),
    }
}

/// Refuses a request authenticated by the cookie whose `Origin` is neither the server's
/// own nor one of `live.allowed_origins` (403 `origin_not_allowed`). Without `Origin`:
/// refused when `required` (a browser sends it with every WebSocket upgrade).
pub fn check_cookie_origin(
    parts: &Parts,
    state: &AppState,
    required: bool,
) -> Result<(), ApiError> {
    let origin = match parts.headers.get(ORIGIN) {
        Some(origin) => origin.to_str().unwrap_or("(not text)"),
        None if required => return Err(origin_refused("nowhere (no Origin)")),
        None => return Ok(()),
    };
    match origin_allowed(parts, origin, &state.live.config().allowed_origins) {
        true => Ok(()),
        false => Err(origin_refused(origin)),
    }
}

/// 403 `origin_not_allowed` for a page of `origin`.
fn origin_refused(origin: &str) -> ApiError {
    ApiError::Status {
        status: StatusCode::FORBIDDEN,
        code: "origin_not_allowed",
        detail: format!(
            "a page of {} may not act with this site's cookie (the server's own origin and \
             live.allowed_origins may); send `Authorization: Bearer` instead",
            origin.chars().take(200).collect::<String>()
        ),
    }
}

/// The request's id: `X-Request-Id` when sensible, else a new UUIDv7.
pub fn request_id(parts: &Parts) -> String {
    parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_string)
}

/// The value of cookie `name`.
pub fn cookie(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let credential = Credential::from_request_parts(parts, state).await?;
        let mut caller = credential.verify(state).await?;
        caller.request_id = request_id(parts);
        Ok(caller)
    }
}

/// A request's credential as sent (an access token or an API key, from `Authorization:
/// Bearer` or the access cookie), for work that outlives the request's own check and
/// verifies it again: a claim waiting up to a minute, a WebSocket. Not `Debug`: it is a
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    secret: String,
    /// The client's address, whose quota of refused credentials a lookup that refuses it
    /// spends ([`guard::Guard::refused_lookup`]).
    client: IpAddr,
}

impl Credential {
    pub fn new(secret: String, client: IpAddr) -> Self {
        Self { secret, client }
    }

    /// The address the credential came from.
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The caller it stands for now, exactly as the `Caller` extractor finds it (through
    /// the same short-lived cache): 401 once it was revoked, expired, or its creator left.
    pub async fn verify(&self, state: &AppState) -> Result<Caller, ApiError> {
        if self.secret.starts_with(keys::KEY_MARKER) {
            api_key_caller(state, &self.secret, self.client).await
        } else {
            user_caller(state, &self.secret, self.client).await
        }
    }
}

impl FromRequestParts<AppState> for Credential {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let client =
            guard::client_address(parts, state.guard.config.client_address_header.as_ref());
        if let Some(token) = bearer(parts) {
            return Ok(Self::new(token, client));
        }
        let token = cookie(parts, ACCESS_COOKIE).ok_or(ApiError::Unauthorized {
            detail: "authentication required: send `Authorization: Bearer <token or API key>`",
        })?;
        ensure_cookie_origin(parts, state)?;
        Ok(Self::new(token, client))
    }
}

const INVALID_TOKEN: ApiError = ApiError::Unauthorized {
    detail: "the token is invalid, expired or revoked",
};

/// A token whose signature and expiry hold but is not in the cache is looked up (its
/// revocation, its user's memberships); one refused then spends the client's quota of
/// refused credentials ([`guard::Guard::refused_lookup`]). A barred address's token is
/// looked up only if a lookup accepted it lately ([`cache::CredentialCache::accepted_lately`]).
async fn user_caller(state: &AppState, token: &str, client: IpAddr) -> Result<Caller, ApiError> {
    let claims = state
        .tokens
        .verify(token, TokenType::Access)
        .ok_or(INVALID_TOKEN)?;
    let key = CredentialKey::Token(claims.jti);
    if let Some(caller) = state.credentials.get(&key) {
        return Ok(caller);
    }
    if !state.credentials.accepted_lately(&key) {
        state.guard.check_lookup(client)?;
    }
    let read_at = state.credentials.generation();
    let check = accounts::access_check(state.pool(), claims.sub, claims.jti).await?;
    let Some(check) = check.filter(|check| {
        !check.token_revoked && claims.issued_at() >= check.user.tokens_valid_after
    }) else {
        state.credentials.looked_up(&key, false);
        state.guard.refused_lookup(client);
        return Err(INVALID_TOKEN);
    };
    state.credentials.looked_up(&key, true);
    let caller = Caller {
        identity: Identity::User {
            id: check.user.id,
            super_admin: check.user.is_super_admin,
            token: (claims.jti, claims.expires_at()),
        },
        roles: check.memberships.into_iter().collect(),
        request_id: String::new(),
    };
    state.credentials.put(key, &caller, read_at);
    Ok(caller)
}

/// An API key acts with the lower of its own role and its creator's current role in its
/// organization, both read by the one query that finds the key; a key whose creator is no
/// longer a member (nor a super admin) is refused like a revoked one. A key not in the
/// cache is looked up; one refused then spends the client's quota of refused credentials
/// ([`guard::Guard::refused_lookup`]). A barred address's key is looked up only if a
/// lookup accepted it lately ([`cache::CredentialCache::accepted_lately`]).
async fn api_key_caller(state: &AppState, key: &str, client: IpAddr) -> Result<Caller, ApiError> {
    let digest = keys::sha256(key);
    let cache_key = CredentialKey::ApiKey(digest.clone());
    if let Some(caller) = state.credentials.get(&cache_key) {
        return Ok(caller);
    }
    if !state.credentials.accepted_lately(&cache_key) {
        state.guard.check_lookup(client)?;
    }
    let read_at = state.credentials.generation();
    let found = accounts::api_key_by_prefix(state.pool(), keys::prefix_of(key))
        .await?
        .filter(|found| {
            found.key.revoked_at.is_none() && keys::same_digest(&digest, &found.key.secret_sha256)
        });
    let Some((found, role, creator_role)) = found.and_then(|found| {
        let (role, creator_role) = (found.effective_role()?, found.creator_role()?);
        Some((found, role, creator_role))
    }) else {
        state.credentials.looked_up(&cache_key, false);
        state.guard.refused_lookup(client);
        return Err(ApiError::Unauthorized {
            detail: "the API key is invalid or revoked, or its creator is no longer a member",
        });
    };
    state.credentials.looked_up(&cache_key, true);
    let record = found.key;
    let caller = Caller {
        identity: Identity::ApiKey {
            id: record.id,
            organization_id: record.organization_id,
            project_id: record.project_id,
            agent_id: record.agent_id,
            created_by: record.created_by,
            creator_is_super_admin: found.creator_is_super_admin,
            creator_role,
        },
        roles: HashMap::from([(record.organization_id, role)]),
        request_id: String::new(),
    };
    state.credentials.put(cache_key, &caller, read_at);
    Ok(caller)
}
