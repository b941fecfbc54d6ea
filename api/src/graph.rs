//! `/api/v1/graph/dependency-graph`: the dependency graph (read model `graph`) of a
//! project (also as it was at a past position) or of one ticket, and what blocks a task or
//! what it blocks.
//!
//! Reads show whatever has been projected: the read model follows the log within
//! milliseconds, and no request waits for it.

use axum::extract::State;
use axum::Json;
use omoi_domain::access::Permission;
use omoi_domain::task::Task;
use omoi_domain::ticket::Ticket;
use omoi_projections::graph::{self, GraphView, TaskRelations};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{IdPath, Query};
use crate::read::{checked_as_of, project_organization, read_error, replay_turn};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(project_graph))
        .routes(routes!(ticket_graph))
        .routes(routes!(blocked_by))
        .routes(routes!(blocking))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AsOfQuery {
    /// Show the graph as it was right after this global position (rebuilt from the log).
    #[param(minimum = 0)]
    pub as_of: Option<i64>,
}

/// Every ticket and task of the project, every dependency edge, and for each task how
/// many of its dependencies are unfinished (not completed, or unknown). With `as_of`, the
/// graph as it was right after that global position, rebuilt from the project's newest
/// snapshot before it and the log after that.
#[utoipa::path(get, path = "/api/v1/graph/dependency-graph/project/{id}", tag = "graph",
    params(("id" = Uuid, Path), AsOfQuery),
    responses(
        (status = 200, body = GraphView), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "no such project"),
        (status = 422, body = Problem,
            description = "negative as_of, or more events to replay up to it (after the \
                           project's newest snapshot before it) than \
                           `application.max_replay_events` (100,000)"),
        (status = 429, body = Problem,
            description = "too many past views being rebuilt at once (Retry-After)"),
    ))]
async fn project_graph(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(project_id): IdPath,
    Query(query): Query<AsOfQuery>,
) -> ApiResult<Json<GraphView>> {
    let as_of = checked_as_of(query.as_of)?;
    let organization_id =
        project_organization(&state, &caller, Permission::TaskRead, project_id).await?;
    let view = match as_of {
        Some(as_of) => {
            let _turn = replay_turn(&state).await?;
            let max_events = state.replays.max_events;
            graph::project_graph_as_of(state.pool(), organization_id, project_id, as_of, max_events)
                .await
        }
        None => graph::project_graph(state.pool(), project_id).await,
    };
    view.map(Json).map_err(read_error)
}

/// The ticket and its tasks, with the edges leaving those tasks (they may point to tasks
/// of other tickets).
#[utoipa::path(get, path = "/api/v1/graph/dependency-graph/ticket/{id}", tag = "graph",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = GraphView), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "no such ticket"),
    ))]
async fn ticket_graph(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(ticket_id): IdPath,
) -> ApiResult<Json<GraphView>> {
    let (ticket, _) = state
        .read::<Ticket>(&caller, Permission::TaskRead, ticket_id)
        .await?;
    let project_id = ticket
        .project_id
        .ok_or_else(|| ApiError::Internal("ticket without project".into()))?;
    graph::ticket_graph(state.pool(), project_id, ticket_id)
        .await
        .map(Json)
        .map_err(read_error)
}

/// The task's unfinished dependencies: known tasks that are not completed, and ids of
/// tasks that do not exist (`missing`).
#[utoipa::path(get, path = "/api/v1/graph/dependency-graph/task/{id}/blocked", tag = "graph",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = TaskRelations), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "no such task"),
    ))]
async fn blocked_by(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(task_id): IdPath,
) -> ApiResult<Json<TaskRelations>> {
    state
        .read::<Task>(&caller, Permission::TaskRead, task_id)
        .await?;
    graph::blocked_by(state.pool(), task_id)
        .await
        .map(Json)
        .map_err(read_error)
}

/// The tasks that depend on this one and are not completed; none once this task is
/// completed (it then holds nobody back).
#[utoipa::path(get, path = "/api/v1/graph/dependency-graph/task/{id}/blocking", tag = "graph",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = TaskRelations), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "no such task"),
    ))]
async fn blocking(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(task_id): IdPath,
) -> ApiResult<Json<TaskRelations>> {
    state
        .read::<Task>(&caller, Permission::TaskRead, task_id)
        .await?;
    graph::blocking(state.pool(), task_id)
        .await
        .map(Json)
        .map_err(read_error)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_graph_routes_are_documented() {
        let document = crate::openapi();
        for path in [
            "/api/v1/graph/dependency-graph/project/{id}",
            "/api/v1/graph/dependency-graph/ticket/{id}",
            "/api/v1/graph/dependency-graph/task/{id}/blocked",
            "/api/v1/graph/dependency-graph/task/{id}/blocking",
        ] {
            assert!(document.paths.paths.contains_key(path), "{path}");
        }
    }
}
