//! `/api/v1/tickets`: create, read, update, transition, regress, block, unblock, history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use omoi_domain::access::Permission;
use omoi_domain::common::{Phase, Priority, Scope};
use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand, TicketStatus};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use omoi_workflow::admission::{self, Referrer};

use crate::auth::Caller;
use crate::error::{ApiResult, Problem};
use crate::extract::{Body, IdPath, Query};
use crate::history::{history_of, HistoryQuery};
use crate::projects::active_project;
use crate::responses::{History, Versioned};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_ticket))
        .routes(routes!(get_ticket, update_ticket))
        .routes(routes!(transition_ticket))
        .routes(routes!(regress_ticket))
        .routes(routes!(block_ticket))
        .routes(routes!(unblock_ticket))
        .routes(routes!(ticket_history))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTicket {
    pub project_id: Uuid,
    #[schema(schema_with = crate::schemas::title)]
    pub title: String,
    #[serde(default)]
    #[schema(schema_with = crate::schemas::text)]
    pub description: String,
    #[serde(default)]
    pub priority: Priority,
    #[serde(default)]
    pub phase: Phase,
    pub spec_id: Option<Uuid>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTicket {
    #[schema(schema_with = crate::schemas::title_or_null)]
    pub title: Option<String>,
    #[schema(schema_with = crate::schemas::text_or_null)]
    pub description: Option<String>,
    pub priority: Option<Priority>,
    pub phase: Option<Phase>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionTicket {
    pub to: TicketStatus,
    #[schema(schema_with = crate::schemas::text_or_null)]
    pub note: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegressTicket {
    /// What failed in testing; kept in the ticket's regressions.
    #[schema(schema_with = crate::schemas::statement)]
    pub feedback: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockTicket {
    pub reason: BlockReason,
    #[schema(schema_with = crate::schemas::text_or_null)]
    pub note: Option<String>,
}

type TicketResponse = ApiResult<Json<Versioned<Ticket>>>;

#[utoipa::path(post, path = "/api/v1/tickets", tag = "tickets", request_body = CreateTicket,
    responses(
        (status = 201, body = Versioned<Ticket>), (status = 400, body = Problem),
        (status = 404, body = Problem, description = "no such project"),
        (status = 409, body = Problem, description = "the project is archived \
            (`project_archived`), or the spec named archived (`spec_archived`)"),
        (status = 422, body = Problem),
    ))]
async fn create_ticket(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateTicket>,
) -> ApiResult<(StatusCode, Json<Versioned<Ticket>>)> {
    let project = active_project(&state, &caller, Permission::TicketWrite, body.project_id).await?;
    let organization_id = project
        .organization_id
        .ok_or_else(|| crate::error::ApiError::Internal("project without organization".into()))?;
    let from = Referrer {
        project: Scope {
            organization_id,
            project_id: Some(body.project_id),
        },
        sees_other_projects: caller.project_limit().is_none(),
    };
    admission::spec_in_project(&state.bus, body.spec_id, from).await?;
    let id = Uuid::now_v7();
    let command = TicketCommand::CreateTicket {
        ticket_id: id,
        organization_id,
        project_id: body.project_id,
        spec_id: body.spec_id,
        title: body.title,
        description: body.description,
        priority: body.priority,
        phase: body.phase,
        plan_key: None,
    };
    let created = Versioned::committed(
        id,
        state
            .create::<Ticket>(&caller, "CreateTicket", id, command)
            .await?,
    );
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/tickets/{id}", tag = "tickets", params(("id" = Uuid, Path)),
    responses((status = 200, body = Versioned<Ticket>), (status = 404, body = Problem)))]
async fn get_ticket(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> TicketResponse {
    let loaded = state
        .read::<Ticket>(&caller, Permission::TicketRead, id)
        .await?;
    Ok(Json(Versioned::read(id, loaded)))
}

/// Changes title, description, priority or phase (phase along the phase table).
#[utoipa::path(patch, path = "/api/v1/tickets/{id}", tag = "tickets", params(("id" = Uuid, Path)),
    request_body = UpdateTicket,
    responses(
        (status = 200, body = Versioned<Ticket>), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem),
    ))]
async fn update_ticket(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<UpdateTicket>,
) -> TicketResponse {
    let command = TicketCommand::UpdateTicket {
        title: body.title,
        description: body.description,
        priority: body.priority,
        phase: body.phase,
    };
    state
        .execute_versioned::<Ticket>(
            &caller,
            Permission::TicketWrite,
            "UpdateTicket",
            id,
            command,
        )
        .await
}

/// Moves the ticket one step: backlog → analyzing → building → building-done → testing →
/// done. A blocked ticket cannot reach done; any other move clears the block.
#[utoipa::path(post, path = "/api/v1/tickets/{id}/transition", tag = "tickets",
    params(("id" = Uuid, Path)), request_body = TransitionTicket,
    responses(
        (status = 200, body = Versioned<Ticket>), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "illegal transition"),
    ))]
async fn transition_ticket(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<TransitionTicket>,
) -> TicketResponse {
    let command = TicketCommand::TransitionTicket {
        to: body.to,
        note: body.note,
    };
    state
        .execute_versioned::<Ticket>(
            &caller,
            Permission::TicketWrite,
            "TransitionTicket",
            id,
            command,
        )
        .await
}

/// Sends a ticket in testing back to building with the feedback that explains why.
#[utoipa::path(post, path = "/api/v1/tickets/{id}/regress", tag = "tickets",
    params(("id" = Uuid, Path)), request_body = RegressTicket,
    responses(
        (status = 200, body = Versioned<Ticket>), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem),
    ))]
async fn regress_ticket(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<RegressTicket>,
) -> TicketResponse {
    let command = TicketCommand::RegressTicket {
        feedback: body.feedback,
    };
    state
        .execute_versioned::<Ticket>(
            &caller,
            Permission::TicketWrite,
            "RegressTicket",
            id,
            command,
        )
        .await
}

#[utoipa::path(post, path = "/api/v1/tickets/{id}/block", tag = "tickets",
    params(("id" = Uuid, Path)), request_body = BlockTicket,
    responses(
        (status = 200, body = Versioned<Ticket>), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem),
    ))]
async fn block_ticket(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<BlockTicket>,
) -> TicketResponse {
    let command = TicketCommand::BlockTicket {
        reason: body.reason,
        note: body.note,
        at: Utc::now(),
    };
    state
        .execute_versioned::<Ticket>(&caller, Permission::TicketWrite, "BlockTicket", id, command)
        .await
}

#[utoipa::path(post, path = "/api/v1/tickets/{id}/unblock", tag = "tickets",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Ticket>), (status = 404, body = Problem),
        (status = 409, body = Problem),
    ))]
async fn unblock_ticket(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> TicketResponse {
    state
        .execute_versioned::<Ticket>(
            &caller,
            Permission::TicketWrite,
            "UnblockTicket",
            id,
            TicketCommand::UnblockTicket,
        )
        .await
}

#[utoipa::path(get, path = "/api/v1/tickets/{id}/history", tag = "tickets",
    params(("id" = Uuid, Path), HistoryQuery),
    responses(
        (status = 200, body = History<Ticket>), (status = 404, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn ticket_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<History<Ticket>>> {
    history_of::<Ticket>(&state, &caller, Permission::TicketRead, id, &query).await
}
