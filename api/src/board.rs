//! `/api/v1/board`: the Kanban board of a project (read model `board`) — the view, also as
//! it was at a past position, its counts and WIP-limit violations — and moving a card.
//!
//! Reads show whatever has been projected: the read model follows the log within
//! milliseconds, and no request waits for it.

use axum::extract::State;
use axum::Json;
use omoi_domain::access::Permission;
use omoi_domain::ticket::{Ticket, TicketCommand, TicketStatus};
use omoi_projections::board::{self, BoardStats, BoardView, ColumnConfig, WipViolations};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, Query};
use crate::read::{checked_as_of, project_organization, read_error, replay_turn};
use crate::responses::Versioned;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(board_view))
        .routes(routes!(board_stats))
        .routes(routes!(wip_violations))
        .routes(routes!(move_card))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BoardQuery {
    pub project_id: Uuid,
    /// Show the board as it was right after this global position (rebuilt from the log).
    #[param(minimum = 0)]
    pub as_of: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProjectQuery {
    pub project_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveCard {
    pub ticket_id: Uuid,
    /// The column (ticket status) to move to: the next one along the board.
    pub to: TicketStatus,
    /// Move even when the target column is at its WIP limit.
    #[serde(default)]
    pub force: bool,
    #[schema(schema_with = crate::schemas::text_or_null)]
    pub note: Option<String>,
}

/// The columns of every board, until they come from configuration.
pub(crate) fn columns() -> Vec<ColumnConfig> {
    board::default_columns()
}

/// The columns in order, each with its WIP limit and its cards (by priority, then title);
/// blocked cards carry their overlay. With `as_of`, the board as it was right after that
/// global position, rebuilt by the projector's own rule from the project's newest snapshot
/// before it and the log after that.
#[utoipa::path(get, path = "/api/v1/board/view", tag = "board", params(BoardQuery),
    responses(
        (status = 200, body = BoardView), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "no such project"),
        (status = 422, body = Problem,
            description = "negative as_of, or more events to replay up to it (after the \
                           project's newest snapshot before it) than \
                           `application.max_replay_events` (100,000)"),
        (status = 429, body = Problem,
            description = "too many past views being rebuilt at once (Retry-After)"),
    ))]
async fn board_view(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<BoardQuery>,
) -> ApiResult<Json<BoardView>> {
    let as_of = checked_as_of(query.as_of)?;
    let organization_id =
        project_organization(&state, &caller, Permission::TicketRead, query.project_id).await?;
    let view = match as_of {
        Some(as_of) => {
            let _turn = replay_turn(&state).await?;
            board::board_view_as_of(
                state.pool(),
                organization_id,
                query.project_id,
                as_of,
                state.replays.max_events,
                &columns(),
            )
            .await
        }
        None => board::board_view(state.pool(), query.project_id, &columns()).await,
    };
    view.map(Json).map_err(read_error)
}

/// Cards per column, blocked cards and all cards of a project.
#[utoipa::path(get, path = "/api/v1/board/stats", tag = "board", params(ProjectQuery),
    responses(
        (status = 200, body = BoardStats), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "no such project"),
    ))]
async fn board_stats(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ProjectQuery>,
) -> ApiResult<Json<BoardStats>> {
    project_organization(&state, &caller, Permission::TicketRead, query.project_id).await?;
    board::board_stats(state.pool(), query.project_id, &columns())
        .await
        .map(Json)
        .map_err(read_error)
}

/// The columns holding more cards than their WIP limit.
#[utoipa::path(get, path = "/api/v1/board/wip-violations", tag = "board", params(ProjectQuery),
    responses(
        (status = 200, body = WipViolations), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "no such project"),
    ))]
async fn wip_violations(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ProjectQuery>,
) -> ApiResult<Json<WipViolations>> {
    project_organization(&state, &caller, Permission::TicketRead, query.project_id).await?;
    board::wip_violations(state.pool(), query.project_id, &columns())
        .await
        .map(Json)
        .map_err(read_error)
}

/// Moves a card to the next column (a `TransitionTicket`). Refused with 409
/// `wip_limit_exceeded` when the target column already holds as many cards as its WIP
/// limit — counted from the read model, so a burst of concurrent moves can overshoot by
/// what has not been projected yet — unless `force` is set.
#[utoipa::path(post, path = "/api/v1/board/move", tag = "board", request_body = MoveCard,
    responses(
        (status = 200, body = Versioned<Ticket>), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "no such ticket"),
        (status = 409, body = Problem,
            description = "wip_limit_exceeded, or a transition the ticket does not allow"),
        (status = 422, body = Problem),
    ))]
async fn move_card(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<MoveCard>,
) -> ApiResult<Json<Versioned<Ticket>>> {
    let (ticket, _) = state
        .read::<Ticket>(&caller, Permission::TicketWrite, body.ticket_id)
        .await?;
    if !body.force && ticket.status != body.to {
        ensure_room(&state, &ticket, body.to).await?;
    }
    let command = TicketCommand::TransitionTicket {
        to: body.to,
        note: body.note,
    };
    let committed = state
        .execute::<Ticket>(
            &caller,
            Permission::TicketWrite,
            "TransitionTicket",
            body.ticket_id,
            command,
        )
        .await?;
    Ok(Json(Versioned::committed(body.ticket_id, committed)))
}

/// 409 when column `to` of the ticket's board is at or over its WIP limit.
async fn ensure_room(state: &AppState, ticket: &Ticket, to: TicketStatus) -> ApiResult<()> {
    let project_id = ticket
        .project_id
        .ok_or_else(|| ApiError::Internal("ticket without project".into()))?;
    let tally = board::board_tally(state.pool(), project_id)
        .await
        .map_err(read_error)?;
    match board::full_column(&columns(), &tally, to) {
        Some(full) => Err(ApiError::Conflict {
            code: "wip_limit_exceeded",
            detail: format!(
                "column {} holds {} cards and its WIP limit is {}; send \"force\": true to \
                 move the card anyway",
                full.name,
                full.count,
                full.wip_limit.unwrap_or(full.count)
            ),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_board_routes_are_documented() {
        let document = crate::openapi();
        for path in [
            "/api/v1/board/view",
            "/api/v1/board/stats",
            "/api/v1/board/wip-violations",
            "/api/v1/board/move",
        ] {
            assert!(document.paths.paths.contains_key(path), "{path}");
        }
    }
}
