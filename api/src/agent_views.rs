//! `GET /api/v1/agents`: the agents of the caller's organizations with their status and
//! current task (read model `agents`); `GET /api/v1/agents/{id}/activity`: everything one
//! agent did or had done to it (read model `activity`). One agent's own state is
//! `GET /api/v1/agents/{id}` in [`crate::agents`].

use axum::extract::State;
use axum::Json;
use omoi_domain::access::Permission;
use omoi_domain::agent::{Agent, AgentStatus};
use omoi_projections::activity::{self, ActivityScope};
use omoi_projections::agents::{self, AgentFilter, AgentView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{IdPath, Query};
use crate::history::StreamQuery;
use crate::read::{project_filter, readable_organizations};
use crate::responses::EventRecord;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents))
        .routes(routes!(agent_activity))
}

const PERMISSION: Permission = Permission::AgentRead;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AgentsQuery {
    /// Only this organization's agents; absent: every organization the caller may read.
    pub organization_id: Option<Uuid>,
    /// Only agents registered for this project (organization-wide agents have none).
    pub project_id: Option<Uuid>,
    #[param(inline)]
    pub status: Option<AgentStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
}

/// Agents with their status, capabilities, capacity and current task, by name. Without
/// `organization_id`, the agents of every organization the caller may read. The list
/// follows commands shortly after they commit, once the read model has caught up.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "agents",
    params(AgentsQuery),
    responses(
        (status = 200, body = AgentList),
        (status = 400, body = Problem, description = "bad id or status"),
        (status = 403, body = Problem),
        (status = 404, body = Problem, description = "no such organization"),
    )
)]
async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AgentsQuery>,
) -> ApiResult<Json<AgentList>> {
    let filter = AgentFilter {
        organizations: readable_organizations(&caller, PERMISSION, query.organization_id)?,
        project_id: project_filter(&caller, query.project_id)?,
        status: query.status.map(|s| s.as_str().to_string()),
    };
    let agents = agents::list(state.pool(), &filter).await?;
    Ok(Json(AgentList { agents }))
}

/// A page of one agent's activity.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityPage {
    pub agent_id: Uuid,
    pub events: Vec<EventRecord>,
    /// Pass as `after` for the next page; the request's cursor again when nothing is new.
    pub next_cursor: String,
}

/// Every event the agent caused (actor `agent:<id>`) or that names it (its own status
/// changes, assignments to it, a validation of its work, interventions on it …), across
/// the projects of its organization, in the global order, a page at a time. A key
/// limited to one project sees that project's events only. Follows commands shortly
/// after they commit, once the read model has caught up.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/activity",
    tag = "agents",
    params(("id" = Uuid, Path), StreamQuery),
    responses(
        (status = 200, body = ActivityPage),
        (status = 400, body = Problem, description = "bad id, cursor or limit"),
        (status = 404, body = Problem, description = "no such agent"),
    )
)]
async fn agent_activity(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<StreamQuery>,
) -> ApiResult<Json<ActivityPage>> {
    let (after, limit) = query.checked()?;
    let (agent, _) = state.read::<Agent>(&caller, PERMISSION, id).await?;
    let Some(organization_id) = agent.organization_id else {
        return Err(ApiError::NotFound { what: "agent" });
    };
    let scope = ActivityScope {
        organization_id,
        project_id: caller.project_limit(),
    };
    let events = activity::page(state.pool(), id, scope, after, limit).await?;
    let next_cursor = events.last().map_or(after, |e| e.cursor()).to_string();
    Ok(Json(ActivityPage {
        agent_id: id,
        events: events.into_iter().map(EventRecord::from).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_agent_list_is_documented_beside_the_single_agent() {
        let document = crate::openapi();
        let paths = &document.paths.paths;
        let list = paths.get("/api/v1/agents").expect("GET /api/v1/agents");
        assert!(list.get.is_some());
        assert!(paths.contains_key("/api/v1/agents/{id}"));
        let schemas = document.components.map(|c| c.schemas).unwrap_or_default();
        for schema in ["AgentList", "AgentView"] {
            assert!(
                schemas.contains_key(schema),
                "{schema} is not in the document"
            );
        }
    }
}
