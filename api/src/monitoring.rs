//! `GET /api/v1/monitoring/overview?project_id=`: what supervision found in a project and
//! has not been resolved — stalled tasks, suspected duplicate work — and the agents that
//! serve it in trouble (degraded, quarantined or failed). Read models `monitoring` and
//! `agents`; follows commands once they have caught up.

use axum::extract::State;
use axum::Json;
use omoi_domain::access::Permission;
use omoi_domain::agent::AgentStatus;
use omoi_domain::project::Project;
use omoi_projections::agents::{self, AgentFilter, AgentView};
use omoi_projections::monitoring::{self, DuplicateRow, StalledRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Query;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(overview))
}

/// Findings of each kind an overview lists at most.
const MAX_FINDINGS: i64 = 500;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OverviewQuery {
    pub project_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MonitoringOverview {
    pub project_id: Uuid,
    /// Running tasks without progress for `monitoring.stuck_after_ms`, oldest stall first
    /// (at most 500).
    pub stalled_tasks: Vec<StalledRow>,
    /// Open tasks that look like duplicates of older open ones, most similar first (at
    /// most 500).
    pub duplicates: Vec<DuplicateRow>,
    /// The project's agents (its own and its organization's) that are degraded,
    /// quarantined or failed.
    pub agents_in_trouble: Vec<AgentView>,
}

/// A project's open supervision findings and its agents in trouble.
#[utoipa::path(
    get,
    path = "/api/v1/monitoring/overview",
    tag = "agents",
    params(OverviewQuery),
    responses(
        (status = 200, body = MonitoringOverview),
        (status = 400, body = Problem, description = "no or a bad project_id"),
        (status = 404, body = Problem, description = "no such project"),
    )
)]
async fn overview(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<OverviewQuery>,
) -> ApiResult<Json<MonitoringOverview>> {
    let project_id = query.project_id;
    let (project, _) = state
        .read::<Project>(&caller, Permission::AgentRead, project_id)
        .await?;
    let organization_id = project
        .organization_id
        .ok_or(ApiError::NotFound { what: "project" })?;
    let found = monitoring::overview(state.pool(), project_id, MAX_FINDINGS).await?;
    let trouble = [
        AgentStatus::Degraded,
        AgentStatus::Quarantined,
        AgentStatus::Failed,
    ];
    let filter = AgentFilter {
        organizations: Some(vec![organization_id]),
        ..AgentFilter::default()
    };
    let agents_in_trouble = agents::list(state.pool(), &filter)
        .await?
        .into_iter()
        .filter(|agent| agent.project_id.is_none_or(|p| p == project_id))
        .filter(|agent| trouble.iter().any(|s| s.as_str() == agent.status))
        .collect();
    Ok(Json(MonitoringOverview {
        project_id,
        stalled_tasks: found.stalled_tasks,
        duplicates: found.duplicates,
        agents_in_trouble,
    }))
}
