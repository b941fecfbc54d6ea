//! `/api/v1/auth`: register, login, refresh, logout, me, API keys.

use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use omoi_domain::access::Permission;
use omoi_domain::access::Role;
use omoi_domain::common::MAX_TITLE_CHARS;
use omoi_domain::organization::Organization;
use omoi_domain::project::Project;
use omoi_store::accounts::{
    self, ApiKeyRecord, CreateUserError, LoginAdmission, LoginTicket, LogoutOutcome,
    NewRefreshToken, RefreshUse, UserRecord,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::guard::AddressQuota;
use super::tokens::TokenType;
use super::{keys, passwords, Caller, Identity, REFRESH_COOKIE};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, IdPath};
use crate::state::AppState;

/// More than this many failed logins within [`LOCKOUT_WINDOW_MINUTES`] lock the account.
pub const MAX_LOGIN_FAILURES: i64 = 5;
pub const LOCKOUT_WINDOW_MINUTES: i64 = 15;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Register {
    #[schema(schema_with = crate::schemas::email)]
    pub email: String,
    /// At least 8 characters with upper, lower, digit and special character.
    #[schema(schema_with = crate::schemas::new_password)]
    pub password: String,
    /// Blank or absent: the part of the email before `@`.
    #[schema(schema_with = crate::schemas::name_or_null)]
    pub display_name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub display_name: String,
    pub created_at: DateTime<Utc>,
}

impl From<UserRecord> for User {
    fn from(user: UserRecord) -> Self {
        Self {
            id: user.id,
            email: user.email,
            display_name: user.display_name,
            created_at: user.created_at,
        }
    }
}

fn normalized_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let plausible = raw.chars().count() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        });
    if !plausible {
        return Err(ApiError::invalid(
            "invalid_email",
            "email",
            "this is not an email address",
        ));
    }
    Ok(email)
}

/// Creates an account. The password is stored as an argon2id hash.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Register,
    security(()),
    responses(
        (status = 201, body = User), (status = 400, body = Problem),
        (status = 409, body = Problem, description = "the email is taken"),
        (status = 422, body = Problem, description = "bad email or weak password"),
        (status = 429, body = Problem,
            description = "over the quota of the client address or the email (`Retry-After`)"),
        (status = 503, body = Problem,
            description = "`busy`: every password-hashing slot is taken (`Retry-After`)"),
    ))]
async fn register(
    State(state): State<AppState>,
    _quota: AddressQuota,
    Body(body): Body<Register>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let email = normalized_email(&body.email)?;
    state.guard.check_account(&email)?;
    passwords::check_strength(&body.password)
        .map_err(|weak| ApiError::invalid("weak_password", "password", weak.to_string()))?;
    let display_name = match body.display_name.as_deref().map(str::trim) {
        Some(name) if name.chars().count() > MAX_TITLE_CHARS => {
            return Err(ApiError::invalid(
                "display_name_too_long",
                "display_name",
                format!("a display name has at most {MAX_TITLE_CHARS} characters"),
            ))
        }
        Some(name) if !name.is_empty() => name.to_string(),
        // The part of the email before `@`, as long as a name may be.
        _ => email
            .split('@')
            .next()
            .unwrap_or_default()
            .chars()
            .take(MAX_TITLE_CHARS)
            .collect(),
    };
    let password = body.password;
    let hash = state
        .guard
        .hashing(move || passwords::hash(&password))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = accounts::create_user(state.pool(), Uuid::now_v7(), &email, &hash, &display_name)
        .await
        .map_err(|e| match e {
            CreateUserError::EmailTaken => ApiError::Conflict {
                code: "email_taken",
                detail: "an account with this email already exists".into(),
            },
            CreateUserError::Database(e) => ApiError::from(e),
        })?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub email: String,
    pub password: String,
}

/// A pair of tokens. The access token goes in `Authorization: Bearer`; the refresh token
/// buys a new pair once. Both are also set as HttpOnly cookies for browsers.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

type TokenResponse = ApiResult<(HeaderMap, Json<TokenPair>)>;

/// An access token and a refresh token signed for a user, the refresh token not yet
/// recorded.
struct SignedPair {
    access: String,
    refresh: String,
    recorded_as: NewRefreshToken,
}

fn sign_pair(state: &AppState, user: Uuid) -> Result<SignedPair, ApiError> {
    let now = Utc::now();
    let sign = |kind| {
        state
            .tokens
            .issue(user, kind, now)
            .map_err(|e| ApiError::Internal(e.to_string()))
    };
    let (access, _) = sign(TokenType::Access)?;
    let (refresh, refresh_claims) = sign(TokenType::Refresh)?;
    Ok(SignedPair {
        access,
        refresh,
        recorded_as: NewRefreshToken {
            jti: refresh_claims.jti,
            expires_at: refresh_claims.expires_at(),
        },
    })
}

/// A new session's tokens (login, registration), the refresh token recorded.
async fn issue_pair(state: &AppState, user: Uuid) -> TokenResponse {
    let pair = sign_pair(state, user)?;
    let NewRefreshToken { jti, expires_at } = pair.recorded_as;
    accounts::store_refresh_token(state.pool(), jti, user, expires_at).await?;
    answer_pair(state, pair)
}

/// The answer carrying `pair`, as body and cookies.
fn answer_pair(
    state: &AppState,
    SignedPair {
        access, refresh, ..
    }: SignedPair,
) -> TokenResponse {
    let secure = state.guard.config.secure_cookies;
    let mut headers = HeaderMap::new();
    headers.append(
        SET_COOKIE,
        cookie(
            super::ACCESS_COOKIE,
            &access,
            state.tokens.access_ttl,
            secure,
        ),
    );
    headers.append(
        SET_COOKIE,
        cookie(REFRESH_COOKIE, &refresh, state.tokens.refresh_ttl, secure),
    );
    Ok((
        headers,
        Json(TokenPair {
            access_token: access,
            refresh_token: refresh,
            token_type: "Bearer",
            expires_in: state.tokens.access_ttl.num_seconds(),
        }),
    ))
}

/// `secure`: browsers then send it over https only (setting `auth.secure_cookies`).
fn cookie(name: &str, value: &str, ttl: Duration, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        ttl.num_seconds()
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Exchanges email and password for tokens. More than 5 failures within 15 minutes lock
/// the account for the rest of that window (429).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Login,
    security(()),
    responses(
        (status = 200, body = TokenPair), (status = 400, body = Problem),
        (status = 401, body = Problem, description = "wrong email or password"),
        (status = 429, body = Problem, description = "too many failures for the account, or \
            over the quota of the client address or the email (`Retry-After`)"),
        (status = 503, body = Problem,
            description = "`busy`: every password-hashing slot is taken (`Retry-After`)"),
    ))]
async fn login(
    State(state): State<AppState>,
    _quota: AddressQuota,
    Body(body): Body<Login>,
) -> TokenResponse {
    // No account has such an email: refused before it costs a quota key, a row or a hash
    // (it could be 256 KiB long).
    let email = normalized_email(&body.email).map_err(|_| wrong_credentials())?;
    state.guard.check_account(&email)?;
    let window = Duration::minutes(LOCKOUT_WINDOW_MINUTES);
    let ticket =
        match accounts::admit_login(state.pool(), &email, window, MAX_LOGIN_FAILURES).await? {
            LoginAdmission::Admitted(ticket) => ticket,
            LoginAdmission::LockedOut { retry_after } => return Err(locked_out(retry_after)),
        };
    match checked_user(&state, &email, body.password).await {
        Ok(Some(user)) => {
            accounts::login_succeeded(state.pool(), &ticket).await?;
            issue_pair(&state, user.id).await
        }
        // The attempt stays counted as a failure.
        Ok(None) => Err(wrong_credentials()),
        Err(error) => Err(withdrawn(&state, &ticket, error).await),
    }
}

fn wrong_credentials() -> ApiError {
    ApiError::Unauthorized {
        detail: "wrong email or password",
    }
}

/// The user of `email` if `password` is theirs. An unknown email costs one hash too, in
/// the same slots, so neither timing nor refusals reveal which accounts exist.
async fn checked_user(
    state: &AppState,
    email: &str,
    password: String,
) -> ApiResult<Option<UserRecord>> {
    let user = accounts::user_by_email(state.pool(), email).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let verified = state
        .guard
        .hashing(move || match hash {
            Some(hash) => passwords::verify(&password, &hash),
            None => {
                let _ = passwords::hash(&password);
                false
            }
        })
        .await?;
    Ok(user.filter(|_| verified))
}

/// An attempt whose password was never checked (busy, database error) is no failure.
async fn withdrawn(state: &AppState, ticket: &LoginTicket, error: ApiError) -> ApiError {
    if let Err(cause) = accounts::withdraw_login(state.pool(), ticket).await {
        tracing::warn!(%cause, "an unchecked login attempt stays counted as a failure");
    }
    error
}

fn locked_out(retry_after: Duration) -> ApiError {
    let seconds = retry_after
        .num_seconds()
        .clamp(1, LOCKOUT_WINDOW_MINUTES * 60);
    ApiError::TooManyRequests {
        detail: "too many failed logins; try again later",
        retry_after_seconds: u32::try_from(seconds).unwrap_or(u32::MAX),
    }
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    /// Absent when the refresh cookie is sent instead.
    pub refresh_token: Option<String>,
}

/// Exchanges a refresh token for a new pair. Each refresh token works once; presenting a
/// used one again revokes every token of the user (it was stolen or replayed).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = Refresh,
    security(()),
    responses(
        (status = 200, body = TokenPair),
        (status = 401, body = Problem, description = "invalid, expired, used or revoked"),
        (status = 403, body = Problem, description = "`origin_not_allowed`: the refresh \
            cookie sent by a page of another origin"),
        (status = 429, body = Problem,
            description = "over the quota of the client address (`Retry-After`)"),
    ))]
async fn refresh(
    State(state): State<AppState>,
    _quota: AddressQuota,
    parts: Parts,
    Body(body): Body<Refresh>,
) -> TokenResponse {
    let invalid = || ApiError::Unauthorized {
        detail: "the refresh token is invalid, expired, used or revoked",
    };
    if body.refresh_token.is_none() {
        super::ensure_cookie_origin(&parts, &state)?;
    }
    let token = body
        .refresh_token
        .or_else(|| super::cookie(&parts, REFRESH_COOKIE))
        .ok_or_else(invalid)?;
    let claims = state
        .tokens
        .verify(&token, TokenType::Refresh)
        .ok_or_else(invalid)?;
    // Signed before the exchange, recorded by it: the spent token and its replacement are
    // one transaction, ordered against a concurrent reuse of the same token.
    let pair = sign_pair(&state, claims.sub)?;
    let spent =
        accounts::spend_refresh_token(state.pool(), claims.jti, claims.sub, pair.recorded_as);
    match spent.await? {
        RefreshUse::Fresh => answer_pair(&state, pair),
        RefreshUse::Reused => {
            state.credentials.forget_user(claims.sub);
            tracing::warn!(user = %claims.sub, "refresh token reused: every token of the user revoked");
            Err(invalid())
        }
        RefreshUse::Revoked | RefreshUse::Unknown => Err(invalid()),
    }
}

#[derive(Debug, Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Logout {
    /// Revoked together with the access token; absent: the refresh cookie's.
    pub refresh_token: Option<String>,
}

/// Ends a session: revokes the access token used for this request and the refresh token
/// (from the body, else the refresh cookie) and clears both cookies. The refresh token
/// alone is enough: a browser whose access token expired still holds the refresh cookie,
/// and must be able to end the session it keeps alive.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = Logout,
    security(("bearer" = []), ()),
    responses(
        (status = 204), (status = 401, body = Problem, description = "neither a valid access \
            token nor a valid refresh token"),
        (status = 403, body = Problem, description = "`not_a_session`: an API key (revoke it \
            with `DELETE /api/v1/auth/api-keys/{id}`)"),
    ))]
async fn logout(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    parts: Parts,
    Body(body): Body<Logout>,
) -> ApiResult<(StatusCode, HeaderMap)> {
    if body.refresh_token.is_none() {
        super::ensure_cookie_origin(&parts, &state)?;
    }
    let refresh = body
        .refresh_token
        .or_else(|| super::cookie(&parts, REFRESH_COOKIE))
        .and_then(|t| state.tokens.verify(&t, TokenType::Refresh));
    let (user, access) = match (caller, &refresh) {
        (Ok(caller), _) => match caller.identity {
            Identity::User { id, token, .. } => (id, Some(token)),
            Identity::ApiKey { .. } => {
                // A valid credential that this action does not apply to.
                return Err(ApiError::Denied {
                    code: "not_a_session",
                    detail: "API keys are revoked (DELETE /api/v1/auth/api-keys/{id}), \
                             not logged out"
                        .into(),
                });
            }
        },
        (Err(_), Some(claims)) => (claims.sub, None),
        (Err(refused), None) => return Err(refused),
    };
    // Another user's refresh token is not this session's to end.
    let refresh = refresh.filter(|c| c.sub == user).map(|c| c.jti);
    let ended = accounts::revoke_session(state.pool(), user, access, refresh).await?;
    state.credentials.forget_user(user);
    if ended == LogoutOutcome::EveryTokenRevoked {
        tracing::warn!(%user, "logout with a refresh token already exchanged: every token of the user revoked");
    }
    let secure = state.guard.config.secure_cookies;
    let mut headers = HeaderMap::new();
    for name in [super::ACCESS_COOKIE, REFRESH_COOKIE] {
        headers.append(SET_COOKIE, cookie(name, "", Duration::zero(), secure));
    }
    Ok((StatusCode::NO_CONTENT, headers))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Membership {
    pub organization_id: Uuid,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// `user` or `api_key`.
    pub kind: &'static str,
    pub id: Uuid,
    pub user: Option<User>,
    pub memberships: Vec<Membership>,
}

/// Who the credential belongs to, and its organizations and roles.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = Me), (status = 401, body = Problem)))]
async fn me(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Me>> {
    let mut memberships: Vec<Membership> = caller
        .visible_organizations()
        .into_iter()
        .filter_map(|organization_id| {
            let role = caller.role_for(omoi_domain::common::Scope {
                organization_id,
                project_id: caller.project_limit(),
            })?;
            Some(Membership {
                organization_id,
                role,
            })
        })
        .collect();
    memberships.sort_by_key(|m| m.organization_id);
    let (kind, id, user) = match caller.identity {
        Identity::User { id, .. } => {
            let user = accounts::user_by_id(state.pool(), id)
                .await?
                .map(User::from);
            ("user", id, user)
        }
        Identity::ApiKey { id, .. } => ("api_key", id, None),
    };
    Ok(Json(Me {
        kind,
        id,
        user,
        memberships,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[schema(schema_with = crate::schemas::title)]
    pub name: String,
    pub organization_id: Uuid,
    /// Limit the key to one project of the organization.
    pub project_id: Option<Uuid>,
    pub role: Role,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    pub id: Uuid,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    pub name: String,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub role: Role,
    pub created_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRecord> for ApiKey {
    fn from(key: ApiKeyRecord) -> Self {
        Self {
            id: key.id,
            prefix: key.prefix,
            name: key.name,
            organization_id: key.organization_id,
            project_id: key.project_id,
            role: key.role,
            created_by: key.created_by,
            created_at: key.created_at,
            revoked_at: key.revoked_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    /// The key itself: shown this once, stored only as a hash.
    pub key: String,
    #[serde(flatten)]
    pub details: ApiKey,
}

/// Creates an API key for agents and automation, scoped to an organization (optionally one
/// project) and a role no higher than the creator's. Needs `apikey:write` (admin, owner).
/// The key acts with at most its creator's current role (a demotion lowers it) and is
/// revoked when its creator leaves or is removed from the organization.
#[utoipa::path(post, path = "/api/v1/auth/api-keys", tag = "auth", request_body = CreateApiKey,
    responses(
        (status = 201, body = CreatedApiKey), (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 403, body = Problem, description = "`forbidden`: the role lacks \
            `apikey:write`, or the caller is an API key; `role_above_own`: the key's role is \
            above the caller's"),
        (status = 404, body = Problem, description = "no such organization or project the \
            caller belongs to (removed meanwhile included)"),
        (status = 409, body = Problem, description = "`organization_archived`"),
        (status = 422, body = Problem),
    ))]
async fn create_api_key(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let created_by = caller.user_id().ok_or(ApiError::Forbidden {
        permission: "apikey:write (only users create API keys)",
    })?;
    let (organization, _) = state
        .read::<Organization>(&caller, Permission::ApiKeyWrite, body.organization_id)
        .await?;
    // Its members are frozen (none can be removed, so none of their keys revoked that
    // way): no new authority is handed out in it, as no agent is registered in it.
    if !organization.is_active() {
        return Err(ApiError::Conflict {
            code: "organization_archived",
            detail: "the organization is archived; no API key can be created in it".into(),
        });
    }
    // The creator's role as the organization records it now (a super admin's: owner).
    let own_role = if caller.is_super_admin() {
        Some(Role::Owner)
    } else {
        organization
            .members
            .get(&omoi_domain::access::Principal::User(created_by))
            .copied()
    };
    match own_role {
        Some(own) if own.covers(body.role) => {}
        Some(own) => {
            return Err(ApiError::Denied {
                code: "role_above_own",
                detail: format!(
                    "the role {} is above your own ({own}): a key's role is at most its creator's",
                    body.role
                ),
            })
        }
        None => {
            return Err(ApiError::Forbidden {
                permission: "apikey:write (you are no longer a member)",
            })
        }
    }
    if let Some(project_id) = body.project_id {
        // Another organization's project answers as one that does not exist: whether it
        // does is not the caller's to learn.
        let not_found = || ApiError::NotFound { what: "project" };
        let (project, _) =
            state
                .load::<Project>(project_id)
                .await
                .map_err(|error| match error {
                    ApiError::NotFound { .. } => not_found(),
                    other => other,
                })?;
        if project.organization_id != Some(body.organization_id) {
            return Err(not_found());
        }
    }
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid(
            "invalid_name",
            "name",
            "a name of 1 to 200 characters is needed",
        ));
    }
    let new = keys::generate();
    let record = ApiKeyRecord {
        id: Uuid::now_v7(),
        prefix: new.prefix,
        secret_sha256: new.sha256,
        name,
        organization_id: body.organization_id,
        project_id: body.project_id,
        role: body.role,
        created_by,
        created_at: Utc::now(),
        revoked_at: None,
        agent_id: None,
    };
    if !accounts::insert_api_key(state.pool(), &record).await? {
        // Removed from the organization while the key was made.
        return Err(ApiError::NotFound {
            what: "organization",
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            key: new.secret,
            details: record.into(),
        }),
    ))
}

/// The API keys of the organizations where the caller may manage keys; for a key limited
/// to a project, only the keys limited to that project (it sees nothing else).
#[utoipa::path(get, path = "/api/v1/auth/api-keys", tag = "auth",
    responses((status = 200, body = Vec<ApiKey>), (status = 401, body = Problem)))]
async fn list_api_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ApiKey>>> {
    let organizations: Vec<Uuid> = caller
        .visible_organizations()
        .into_iter()
        .filter(|org| {
            caller
                .check(
                    Some(omoi_domain::common::Scope {
                        organization_id: *org,
                        project_id: caller.project_limit(),
                    }),
                    Permission::ApiKeyRead,
                )
                .is_ok()
        })
        .collect();
    let keys = accounts::api_keys_of(state.pool(), &organizations, caller.project_limit()).await?;
    Ok(Json(keys.into_iter().map(ApiKey::from).collect()))
}

/// Revokes an API key or an agent's credential at once (needs `apikey:write` in its
/// organization). One created by a member whose role is above the caller's is revoked only
/// by its creator or a member of at least that role: an admin does not revoke an owner's
/// keys and agents' credentials. (Moving an agent's status, `terminated` included, is
/// `agent:write`'s, whoever registered it.)
#[utoipa::path(delete, path = "/api/v1/auth/api-keys/{id}", tag = "auth",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = ApiKey), (status = 401, body = Problem),
        (status = 403, body = Problem, description = "`forbidden`: the role lacks \
            `apikey:write`; `member_outranks_you`: the key's creator's role is above the caller's"),
        (status = 404, body = Problem),
    ))]
async fn revoke_api_key(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<ApiKey>> {
    let key = accounts::api_key_by_id(state.pool(), id)
        .await?
        .ok_or(ApiError::NotFound { what: "api key" })?;
    let scope = omoi_domain::common::Scope {
        organization_id: key.organization_id,
        project_id: key.project_id,
    };
    caller.authorize(Some(scope), Permission::ApiKeyWrite, "api key")?;
    if !caller.rests_on(key.created_by) {
        let own = caller
            .role_for(scope)
            .ok_or(ApiError::NotFound { what: "api key" })?;
        let (organization, _) = state.load::<Organization>(key.organization_id).await?;
        let creators = organization
            .members
            .get(&omoi_domain::access::Principal::User(key.created_by))
            .copied();
        if let Some(creators) = creators.filter(|creators| creators.rank() > own.rank()) {
            return Err(ApiError::Denied {
                code: "member_outranks_you",
                detail: format!(
                    "the key was created by a member whose role ({creators}) is above yours \
                     ({own}): only they, or a member of at least that role, revoke it"
                ),
            });
        }
    }
    accounts::revoke_api_key(state.pool(), id).await?;
    state.credentials.forget_api_keys();
    let revoked = accounts::api_key_by_id(state.pool(), id)
        .await?
        .ok_or(ApiError::NotFound { what: "api key" })?;
    Ok(Json(revoked.into()))
}
