//! `GET /api/v1/monitoring/overview?project_id=`: what supervision found in a project and
//! has not been resolved — the Conductor's coherence score and status, open alerts,
//! stalled tasks, suspected duplicate work — and the agents that serve it in trouble
//! (degraded, quarantined or failed). Read models `monitoring`, `agents` and `directory`
//! and the Guardian's latest anomaly readings; follows commands once they have caught up.

use axum::extract::State;
use axum::Json;
use omoi_domain::access::Permission;
use omoi_domain::agent::AgentStatus;
use omoi_domain::project::Project;
use omoi_domain::task::TaskStatus;
use omoi_projections::agents::{self, AgentFilter, AgentView};
use omoi_projections::directory;
use omoi_projections::monitoring::{
    self, AlertRow, AlertScope, Coherence, CoherenceInputs, DuplicateRow, StalledRow,
};
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
    /// The Conductor's score (0..1) and status of the project.
    pub coherence: Coherence,
    /// Open alerts about the project's tickets and the agents serving it, newest first
    /// (at most 500).
    pub alerts: Vec<AlertRow>,
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

fn in_trouble(agent: &AgentView) -> bool {
    [
        AgentStatus::Degraded,
        AgentStatus::Quarantined,
        AgentStatus::Failed,
    ]
    .iter()
    .any(|s| s.as_str() == agent.status)
}

/// A project's coherence, open alerts and supervision findings, and its agents in
/// trouble.
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
    let pool = state.pool();
    let found = monitoring::overview(pool, project_id, MAX_FINDINGS).await?;
    // A key limited to the project sees neither the organization-wide agents nor their
    // alerts (as in the agents list and the agents stream).
    let organization_wide = caller.project_limit().is_none();
    let scope = AlertScope {
        organization_id,
        project_id,
        organization_wide,
    };
    let alerts = monitoring::project_alerts(pool, scope, MAX_FINDINGS).await?;
    // The lists are bounded; coherence weighs every open finding.
    let open = monitoring::finding_counts(pool, scope).await?;
    let whole = |n: i64| usize::try_from(n).unwrap_or(0);
    let filter = AgentFilter {
        organizations: Some(vec![organization_id]),
        ..AgentFilter::default()
    };
    let serving: Vec<AgentView> = agents::list(pool, &filter)
        .await?
        .into_iter()
        .filter(|agent| match agent.project_id {
            Some(own) => own == project_id,
            None => organization_wide,
        })
        .filter(|agent| agent.status != AgentStatus::Terminated.as_str())
        .collect();
    let ids: Vec<Uuid> = serving.iter().map(|a| a.agent_id).collect();
    let scores = omoi_orchestrator::anomaly::scores(pool, &ids).await?;
    let counts = directory::task_status_counts(pool, project_id).await?;
    let count = |wanted: fn(TaskStatus) -> bool| -> usize {
        counts
            .iter()
            .filter(|(status, _)| wanted(*status))
            .map(|(_, n)| n)
            .sum()
    };
    let (mut agents_in_trouble, working): (Vec<AgentView>, Vec<AgentView>) =
        serving.into_iter().partition(in_trouble);
    let inputs = CoherenceInputs {
        anomaly_scores: working
            .iter()
            .map(|a| scores.get(&a.agent_id).copied().unwrap_or(0.0))
            .collect(),
        agents_in_trouble: agents_in_trouble.len(),
        agents: agents_in_trouble.len() + working.len(),
        busy_agents: working
            .iter()
            .filter(|a| a.current_task_id.is_some())
            .count(),
        idle_agents: working
            .iter()
            .filter(|a| a.current_task_id.is_none())
            .count(),
        waiting_tasks: count(TaskStatus::is_assignable),
        held_tasks: count(|s| matches!(s, TaskStatus::Assigned | TaskStatus::Running)),
        open_tasks: count(|s| !s.is_final()),
        stalled_tasks: whole(open.stalled_tasks),
        duplicates: whole(open.duplicates),
        open_alerts: whole(open.alerts),
    };
    // Counted whole above, listed at most as many as the other findings.
    agents_in_trouble.truncate(usize::try_from(MAX_FINDINGS).unwrap_or(usize::MAX));
    Ok(Json(MonitoringOverview {
        project_id,
        coherence: inputs.coherence(),
        alerts,
        stalled_tasks: found.stalled_tasks,
        duplicates: found.duplicates,
        agents_in_trouble,
    }))
}
