//! `/api/v1/organizations`: create, read, rename, archive, history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use omoi_domain::organization::{Organization, OrganizationCommand};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::error::{ApiResult, Problem};
use crate::extract::{Body, Ctx, IdPath, Query};
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
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    pub name: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    pub name: String,
}

#[utoipa::path(post, path = "/api/v1/organizations", tag = "organizations",
    request_body = CreateOrganization,
    responses(
        (status = 201, body = Versioned<Organization>),
        (status = 400, body = Problem), (status = 422, body = Problem),
    ))]
async fn create_organization(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    Body(body): Body<CreateOrganization>,
) -> ApiResult<(StatusCode, Json<Versioned<Organization>>)> {
    let id = Uuid::now_v7();
    let command = OrganizationCommand::CreateOrganization {
        organization_id: id,
        name: body.name,
        at: Utc::now(),
    };
    let committed = state
        .execute::<Organization>("CreateOrganization", id, command, &ctx)
        .await?;
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
    IdPath(id): IdPath,
) -> ApiResult<Json<Versioned<Organization>>> {
    let loaded = state.load::<Organization>(id, "organization").await?;
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
    Ctx(ctx): Ctx,
    IdPath(id): IdPath,
    Body(body): Body<Rename>,
) -> ApiResult<Json<Versioned<Organization>>> {
    let command = OrganizationCommand::RenameOrganization { name: body.name };
    let committed = state
        .execute::<Organization>("RenameOrganization", id, command, &ctx)
        .await?;
    Ok(Json(Versioned::committed(id, committed)))
}

#[utoipa::path(post, path = "/api/v1/organizations/{id}/archive", tag = "organizations",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Organization>), (status = 404, body = Problem),
        (status = 409, body = Problem),
    ))]
async fn archive_organization(
    State(state): State<AppState>,
    Ctx(ctx): Ctx,
    IdPath(id): IdPath,
) -> ApiResult<Json<Versioned<Organization>>> {
    let command = OrganizationCommand::ArchiveOrganization { at: Utc::now() };
    let committed = state
        .execute::<Organization>("ArchiveOrganization", id, command, &ctx)
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
    IdPath(id): IdPath,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<History<Organization>>> {
    history_of::<Organization>(&state, id, "organization", query.as_of).await
}
