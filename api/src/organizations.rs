//! `/api/v1/organizations`: create, read, rename, archive, history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use omoi_domain::access::Permission;
use omoi_domain::access::{Principal, Role};
use omoi_domain::agent::Agent;
use omoi_domain::organization::{Grantor, Organization, OrganizationCommand};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, IdPath, Query};
use crate::history::{history_of, HistoryQuery};
use crate::responses::{History, Versioned};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_organization))
        .routes(routes!(get_organization))
        .routes(routes!(rename_organization))
        .routes(routes!(archive_organization))
        .routes(routes!(organization_history))
        .routes(routes!(add_member))
        .routes(routes!(change_member_role, remove_member))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    #[schema(schema_with = crate::schemas::title)]
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    #[schema(schema_with = crate::schemas::title)]
    pub name: String,
}

/// Creates an organization whose owner is the calling user.
#[utoipa::path(post, path = "/api/v1/organizations", tag = "organizations",
    request_body = CreateOrganization,
    responses(
        (status = 201, body = Versioned<Organization>),
        (status = 400, body = Problem), (status = 422, body = Problem),
    ))]
async fn create_organization(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateOrganization>,
) -> ApiResult<(StatusCode, Json<Versioned<Organization>>)> {
    let owner = caller.principal().ok_or(ApiError::Forbidden {
        permission: "org:create (only users create organizations)",
    })?;
    let id = Uuid::now_v7();
    let command = OrganizationCommand::CreateOrganization {
        organization_id: id,
        name: body.name,
        owner,
        at: Utc::now(),
    };
    let committed = state
        .create::<Organization>(&caller, "CreateOrganization", id, command)
        .await?;
    // The creator is now an owner: their cached credential must learn it.
    forget_member(&state, owner);
    Ok((
        StatusCode::CREATED,
        Json(Versioned::committed(id, committed)),
    ))
}

#[utoipa::path(get, path = "/api/v1/organizations/{id}", tag = "organizations",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Versioned<Organization>), (status = 404, body = Problem)))]
async fn get_organization(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Versioned<Organization>>> {
    let loaded = state
        .read::<Organization>(&caller, Permission::OrgRead, id)
        .await?;
    Ok(Json(Versioned::read(id, loaded)))
}

#[utoipa::path(post, path = "/api/v1/organizations/{id}/rename", tag = "organizations",
    params(("id" = Uuid, Path)), request_body = Rename,
    responses(
        (status = 200, body = Versioned<Organization>), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem),
    ))]
async fn rename_organization(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<Rename>,
) -> ApiResult<Json<Versioned<Organization>>> {
    let command = OrganizationCommand::RenameOrganization { name: body.name };
    let committed = state
        .execute::<Organization>(
            &caller,
            Permission::OrgWrite,
            "RenameOrganization",
            id,
            command,
        )
        .await?;
    Ok(Json(Versioned::committed(id, committed)))
}

#[utoipa::path(post, path = "/api/v1/organizations/{id}/archive", tag = "organizations",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Organization>),
        (status = 403, body = Problem, description = "owners only (`org:delete`): archiving \
            is final and freezes the membership"),
        (status = 404, body = Problem), (status = 409, body = Problem),
    ))]
async fn archive_organization(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Versioned<Organization>>> {
    let command = OrganizationCommand::ArchiveOrganization { at: Utc::now() };
    let committed = state
        .execute::<Organization>(
            &caller,
            Permission::OrgDelete,
            "ArchiveOrganization",
            id,
            command,
        )
        .await?;
    Ok(Json(Versioned::committed(id, committed)))
}

#[utoipa::path(get, path = "/api/v1/organizations/{id}/history", tag = "organizations",
    params(("id" = Uuid, Path), HistoryQuery),
    responses(
        (status = 200, body = History<Organization>), (status = 404, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn organization_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<History<Organization>>> {
    history_of::<Organization>(&state, &caller, Permission::OrgRead, id, &query).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub principal: Principal,
    pub role: Role,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    pub role: Role,
}

/// The path `/api/v1/organizations/{id}/members/{principal}`.
pub struct MemberPath {
    pub id: Uuid,
    pub principal: Principal,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for MemberPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path((id, principal)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::bad_request(e.body_text(), None))?;
        Ok(Self {
            id: id
                .parse()
                .map_err(|_| ApiError::bad_request(format!("{id:?} is not a UUID"), Some("id")))?,
            principal: principal
                .parse()
                .map_err(|e: omoi_domain::access::BadPrincipal| {
                    ApiError::bad_request(e.to_string(), Some("principal"))
                })?,
        })
    }
}

/// The caller as the membership rules see it, on organization `id`: 404 when it may not
/// see the organization (as the permission check would answer).
fn grantor(caller: &Caller, id: Uuid) -> ApiResult<Grantor> {
    caller.grantor(id).ok_or(ApiError::NotFound {
        what: "organization",
    })
}

/// Adds a user or agent to the organization with a role no higher than the caller's (needs
/// `org:members:write`: admins and owners; only owners add owners).
#[utoipa::path(post, path = "/api/v1/organizations/{id}/members", tag = "organizations",
    params(("id" = Uuid, Path)), request_body = AddMember,
    responses(
        (status = 200, body = Versioned<Organization>),
        (status = 403, body = Problem, description = "`forbidden`: the role lacks \
            `org:members:write`; `role_above_own`: the role is above the caller's"),
        (status = 404, body = Problem, description = "no such organization"),
        (status = 409, body = Problem, description = "already a member"),
        (status = 422, body = Problem,
            description = "`unknown_principal`: no such user, nor an agent of the organization"),
    ))]
async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<AddMember>,
) -> ApiResult<Json<Versioned<Organization>>> {
    let principal = body.principal;
    // Authorized first (403 before anything about the principal is told), then the
    // principal must be someone: a user who exists, or an agent of this organization
    // (422 otherwise — another organization's agent as if it did not exist; 404 is the
    // organization's, the path's resource).
    state
        .read::<Organization>(&caller, Permission::OrgMembersWrite, id)
        .await?;
    ensure_principal_exists(&state, id, principal).await?;
    let command = OrganizationCommand::AddMember {
        principal,
        role: body.role,
        by: grantor(&caller, id)?,
    };
    let committed = state
        .execute::<Organization>(
            &caller,
            Permission::OrgMembersWrite,
            "AddMember",
            id,
            command,
        )
        .await?;
    forget_member(&state, principal);
    Ok(Json(Versioned::committed(id, committed)))
}

/// 422 `unknown_principal` unless `principal` is a user who exists or an agent of
/// organization `id`.
async fn ensure_principal_exists(
    state: &AppState,
    id: Uuid,
    principal: Principal,
) -> ApiResult<()> {
    let exists = match principal {
        Principal::User(user) => omoi_store::accounts::user_by_id(state.pool(), user)
            .await?
            .is_some(),
        Principal::Agent(agent) => match state.load::<Agent>(agent).await {
            Ok((agent, _)) => agent.organization_id == Some(id),
            Err(ApiError::NotFound { .. }) => false,
            Err(other) => return Err(other),
        },
    };
    match exists {
        true => Ok(()),
        false => Err(ApiError::invalid(
            "unknown_principal",
            "principal",
            format!("{principal} is no user, nor an agent of this organization"),
        )),
    }
}

/// Changes another member's role (needs `org:members:write`). Neither the member's current
/// role nor the new one may be above the caller's (only owners grant, change or remove the
/// owner role); nobody changes their own role; the last owner keeps theirs. A demotion
/// also lowers the member's API keys: a key acts with at most its creator's role.
#[utoipa::path(put, path = "/api/v1/organizations/{id}/members/{principal}", tag = "organizations",
    params(("id" = Uuid, Path), ("principal" = Principal, Path)),
    request_body = ChangeRole,
    responses(
        (status = 200, body = Versioned<Organization>),
        (status = 403, body = Problem, description = "`forbidden`: the role lacks \
            `org:members:write`; `own_role`: the caller's own membership; \
            `member_outranks_you`: the member's role is above the caller's; \
            `role_above_own`: the new role is above the caller's"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "`same_role`, `last_owner`"),
    ))]
async fn change_member_role(
    State(state): State<AppState>,
    caller: Caller,
    path: MemberPath,
    Body(body): Body<ChangeRole>,
) -> ApiResult<Json<Versioned<Organization>>> {
    let command = OrganizationCommand::ChangeMemberRole {
        principal: path.principal,
        role: body.role,
        by: grantor(&caller, path.id)?,
    };
    let committed = state
        .execute::<Organization>(
            &caller,
            Permission::OrgMembersWrite,
            "ChangeMemberRole",
            path.id,
            command,
        )
        .await?;
    forget_member(&state, path.principal);
    Ok(Json(Versioned::committed(path.id, committed)))
}

/// Removes a member whose role is not above the caller's (needs `org:members:write`), or
/// the caller itself: a user leaving with their own token needs no right but membership
/// (an API key does not make its creator leave without `org:members:write`); the last
/// owner cannot leave. A removed user's API keys in the organization, and the credentials
/// of the agents they registered, are revoked in the same transaction.
#[utoipa::path(delete, path = "/api/v1/organizations/{id}/members/{principal}", tag = "organizations",
    params(("id" = Uuid, Path), ("principal" = Principal, Path)),
    responses(
        (status = 200, body = Versioned<Organization>),
        (status = 403, body = Problem, description = "`forbidden`: the role lacks \
            `org:members:write`; `member_outranks_you`: the member's role is above the caller's"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "`last_owner`"),
    ))]
async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    path: MemberPath,
) -> ApiResult<Json<Versioned<Organization>>> {
    let command = OrganizationCommand::RemoveMember {
        principal: path.principal,
        by: grantor(&caller, path.id)?,
    };
    let leaving = caller.principal() == Some(path.principal);
    let permission = match leaving {
        true => Permission::OrgRead,
        false => Permission::OrgMembersWrite,
    };
    let committed = state
        .execute::<Organization>(&caller, permission, "RemoveMember", path.id, command)
        .await?;
    forget_member(&state, path.principal);
    Ok(Json(Versioned::committed(path.id, committed)))
}

/// A member's cached credentials carry their roles, and so do the API keys they created
/// (at most their role; none once they have left): once the change has committed, drop
/// them so that the next request reloads (see `auth::cache`).
fn forget_member(state: &AppState, principal: Principal) {
    if let Principal::User(user) = principal {
        state.credentials.forget_user(user);
    }
}
