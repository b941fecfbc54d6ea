//! `/api/v1/agents`: register, read, change status, replace capabilities, history.
//!
//! Heartbeats are not events: `POST /api/v1/agents/{id}/heartbeat` renews the agent's
//! lease (`agent_leases`); the worker fails an agent whose lease goes stale.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use omoi_domain::agent::{Agent, AgentCommand, AgentStatus, AgentType};
use omoi_domain::organization::Organization;
use omoi_domain::project::Project;
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
        .routes(routes!(register_agent))
        .routes(routes!(get_agent))
        .routes(routes!(change_agent_status))
        .routes(routes!(heartbeat))
        .routes(routes!(update_capabilities))
        .routes(routes!(agent_history))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterAgent {
    pub organization_id: Uuid,
    /// A project of the organization; absent for an agent that serves the whole
    /// organization.
    pub project_id: Option<Uuid>,
    /// Absent names the agent `{type}-{first 8 hex digits of its id}`.
    pub name: Option<String>,
    pub agent_type: AgentType,
    /// Trimmed; duplicates are merged.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Tasks the agent runs at once, 1 to 100 (default 1).
    pub capacity: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeAgentStatus {
    pub to: AgentStatus,
    pub reason: Option<String>,
    /// Re-record the current status (e.g. to log a fresh reason). Never allows a move
    /// the status table forbids.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCapabilities {
    /// The whole new set; trimmed, duplicates merged.
    pub capabilities: Vec<String>,
}

type AgentResponse = ApiResult<Json<Versioned<Agent>>>;

/// Refuses (422, field `project_id`) a project that does not exist or belongs to another
/// organization, and (409) an archived one.
async fn ensure_project_of(
    state: &AppState,
    organization_id: Uuid,
    project_id: Uuid,
) -> ApiResult<()> {
    let loaded = state
        .bus
        .load::<Project>(&project_id.to_string())
        .await
        .map_err(ApiError::from)?;
    let Some((project, _)) = loaded else {
        return Err(ApiError::invalid(
            "project_not_found",
            "project_id",
            format!("project {project_id} does not exist"),
        ));
    };
    if project.organization_id != Some(organization_id) {
        return Err(ApiError::invalid(
            "project_in_other_organization",
            "project_id",
            format!("project {project_id} belongs to another organization"),
        ));
    }
    if !project.is_active() {
        return Err(ApiError::Conflict {
            code: "project_archived",
            detail: format!("project {project_id} is archived; no agent can serve it"),
        });
    }
    Ok(())
}

/// Registers an agent in `spawning`. The organization must exist and be active; the
/// project, when given, must be an active project of that organization.
#[utoipa::path(post, path = "/api/v1/agents/register", tag = "agents",
    request_body = RegisterAgent,
    responses(
        (status = 201, body = Versioned<Agent>), (status = 400, body = Problem),
        (status = 404, body = Problem, description = "no such organization"),
        (status = 409, body = Problem,
            description = "the organization or the project is archived"),
        (status = 422, body = Problem),
    ))]
async fn register_agent(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<RegisterAgent>,
) -> ApiResult<(StatusCode, Json<Versioned<Agent>>)> {
    let (organization, _) = state
        .read::<Organization>(&caller, "agent:write", body.organization_id)
        .await?;
    if !organization.is_active() {
        return Err(ApiError::Conflict {
            code: "organization_archived",
            detail: "the organization is archived; no agent can be registered in it".into(),
        });
    }
    if let Some(project_id) = body.project_id {
        ensure_project_of(&state, body.organization_id, project_id).await?;
    }
    let id = Uuid::now_v7();
    let command = AgentCommand::RegisterAgent {
        agent_id: id,
        organization_id: body.organization_id,
        project_id: body.project_id,
        name: body.name,
        agent_type: body.agent_type,
        capabilities: body.capabilities,
        capacity: body.capacity,
        at: Utc::now(),
    };
    let created = Versioned::committed(
        id,
        state
            .create::<Agent>(&caller, "RegisterAgent", id, command)
            .await?,
    );
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Agent>), (status = 400, body = Problem),
        (status = 404, body = Problem),
    ))]
async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> AgentResponse {
    let loaded = state.read::<Agent>(&caller, "agent:read", id).await?;
    Ok(Json(Versioned::read(id, loaded)))
}

/// Moves the agent along its status table: spawning → idle | failed | terminated;
/// idle → running | degraded | quarantined | terminated; running → idle | failed |
/// degraded | quarantined; degraded → idle | failed | quarantined | terminated;
/// failed → quarantined | terminated; quarantined → idle | terminated. Moving to the
/// current status needs `force`. A terminated agent never changes.
#[utoipa::path(post, path = "/api/v1/agents/{id}/status", tag = "agents",
    params(("id" = Uuid, Path)), request_body = ChangeAgentStatus,
    responses(
        (status = 200, body = Versioned<Agent>), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem,
            description = "illegal move, already in that status, or the agent is terminated"),
        (status = 422, body = Problem),
    ))]
async fn change_agent_status(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<ChangeAgentStatus>,
) -> AgentResponse {
    let command = AgentCommand::ChangeAgentStatus {
        to: body.to,
        reason: body.reason,
        force: body.force,
        at: Utc::now(),
    };
    state
        .answer::<Agent>(&caller, "agent:write", "ChangeAgentStatus", id, command)
        .await
}

/// The answer to a heartbeat: the agent's status as recorded.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Heartbeat {
    pub agent_id: Uuid,
    pub status: AgentStatus,
}

/// Renews the agent's lease. An agent silent longer than the worker's stale threshold
/// (90 s by default) is failed and its tasks go back to the queue; a terminated agent's
/// heartbeat is refused.
#[utoipa::path(post, path = "/api/v1/agents/{id}/heartbeat", tag = "agents",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Heartbeat), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the agent is terminated"),
    ))]
async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Heartbeat>> {
    let (agent, _) = state.read::<Agent>(&caller, "agent:write", id).await?;
    if agent.status == AgentStatus::Terminated {
        return Err(ApiError::Conflict {
            code: "agent_terminated",
            detail: format!("agent {id} is terminated"),
        });
    }
    let organization_id = agent
        .organization_id
        .ok_or_else(|| ApiError::Internal("agent without organization".into()))?;
    omoi_orchestrator::leases::renew(state.pool(), id, organization_id)
        .await
        .map_err(ApiError::from)?;
    Ok(Json(Heartbeat {
        agent_id: id,
        status: agent.status,
    }))
}

/// Replaces the agent's whole capability set (at most 64); the new set must differ.
#[utoipa::path(put, path = "/api/v1/agents/{id}/capabilities", tag = "agents",
    params(("id" = Uuid, Path)), request_body = UpdateCapabilities,
    responses(
        (status = 200, body = Versioned<Agent>), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the agent is terminated"),
        (status = 422, body = Problem, description = "invalid capabilities, or nothing to change"),
    ))]
async fn update_capabilities(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<UpdateCapabilities>,
) -> AgentResponse {
    let command = AgentCommand::UpdateCapabilities {
        capabilities: body.capabilities,
    };
    state
        .answer::<Agent>(&caller, "agent:write", "UpdateCapabilities", id, command)
        .await
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/history", tag = "agents",
    params(("id" = Uuid, Path), HistoryQuery),
    responses(
        (status = 200, body = History<Agent>), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem),
    ))]
async fn agent_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<History<Agent>>> {
    history_of::<Agent>(&state, &caller, "agent:read", id, query.as_of).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_agent_route_is_documented() {
        let document = crate::openapi();
        let paths = &document.paths.paths;
        for path in [
            "/api/v1/agents/register",
            "/api/v1/agents/{id}",
            "/api/v1/agents/{id}/status",
            "/api/v1/agents/{id}/capabilities",
            "/api/v1/agents/{id}/history",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
    }
}
