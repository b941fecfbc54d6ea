//! `GET /api/v1/agents`: the agents of the caller's organizations with their status and
//! current task (read model `agents`); `GET /api/v1/agents/{id}/activity`: everything one
//! agent did or had done to it (read model `activity`). One agent's own state is
//! `GET /api/v1/agents/{id}` in [`crate::agents`].

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use omoi_domain::access::Permission;
use omoi_domain::agent::{Agent, AgentStatus};
use omoi_domain::task::{Task, TaskStatus};
use omoi_orchestrator::anomaly::{self, RecordedReading};
use omoi_projections::activity::{self, ActivityScope};
use omoi_projections::agents::{self, AgentFilter, AgentView};
use omoi_projections::monitoring::{self, AlertRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{IdPath, Query};
use crate::history::StreamQuery;
use crate::read::{checked_as_of, project_filter, read_error, readable_organizations, replay_turn};
use crate::responses::EventRecord;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents))
        .routes(routes!(agent_activity))
        .routes(routes!(agent_health))
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
    /// The agents as they were right after this global position (with `organization_id`:
    /// that organization's log is replayed, at most `application.max_replay_events`).
    #[param(minimum = 0)]
    pub as_of: Option<i64>,
    /// The page after this agent (a `next_after`).
    pub after: Option<Uuid>,
    /// Page size, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The most agents one page lists.
const MAX_AGENTS_PAGE: i64 = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentView>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<Uuid>,
}

impl AgentList {
    /// A page of `limit` from `agents`, read one past it to tell whether more follow.
    fn page(mut agents: Vec<AgentView>, limit: i64) -> Self {
        let more = agents.len() as i64 > limit;
        agents.truncate(usize::try_from(limit).unwrap_or(0));
        let next_after = agents.last().map(|a| a.agent_id).filter(|_| more);
        Self { agents, next_after }
    }
}

/// Agents with their status, capabilities, capacity and current task, by name, a page at
/// a time (`next_after`). Without `organization_id`, the agents of every organization
/// the caller may read. With `as_of`
/// (and `organization_id`), as they were right after that global position. The list
/// follows commands shortly after they commit, once the read model has caught up.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "agents",
    params(AgentsQuery),
    responses(
        (status = 200, body = AgentList),
        (status = 400, body = Problem, description = "bad id, status, as_of, after or limit"),
        (status = 403, body = Problem),
        (status = 404, body = Problem, description = "no such organization"),
        (status = 422, body = Problem,
            description = "as_of without organization_id (`as_of_needs_organization`), \
                           negative, or past the replay bound"),
    )
)]
async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AgentsQuery>,
) -> ApiResult<Json<AgentList>> {
    let limit = query.limit.unwrap_or(MAX_AGENTS_PAGE);
    if !(1..=MAX_AGENTS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            format!("limit must be between 1 and {MAX_AGENTS_PAGE}"),
            Some("limit"),
        ));
    }
    let filter = AgentFilter {
        organizations: readable_organizations(&caller, PERMISSION, query.organization_id)?,
        project_id: project_filter(&caller, query.project_id)?,
        status: query.status.map(|s| s.as_str().to_string()),
        after: query.after,
        limit: Some(limit + 1),
    };
    let Some(as_of) = checked_as_of(query.as_of)? else {
        let agents = agents::list(state.pool(), &filter).await?;
        return Ok(Json(AgentList::page(agents, limit)));
    };
    // The past is one organization's log replayed: which one must be said.
    let organization_id = query.organization_id.ok_or_else(|| {
        ApiError::invalid(
            "as_of_needs_organization",
            "organization_id",
            "a list as_of a past position is one organization's: give organization_id",
        )
    })?;
    let _turn = replay_turn(&state).await?;
    let agents = agents::list_as_of(
        state.pool(),
        organization_id,
        &filter,
        as_of,
        state.replays.max_events,
    )
    .await
    .map_err(read_error)?;
    Ok(Json(AgentList::page(agents, limit)))
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

/// An agent's liveness and the state of the work it holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentHealth {
    pub agent_id: Uuid,
    pub status: AgentStatus,
    /// Why the agent entered its status, if anyone said.
    pub status_reason: Option<String>,
    /// `None` before the agent's first heartbeat (or claim).
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Heartbeat intervals (`monitoring.heartbeat_interval_ms`) missed since then.
    pub missed_heartbeats: u64,
    /// At least one interval missed: two degrade the agent.
    pub warning: bool,
    /// When the agent is failed if it stays silent (`worker.stale_after_ms`).
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The tasks it holds (assigned or running).
    pub tasks: Vec<HeldTask>,
    /// Those of them marked stalled (no progress for `monitoring.stuck_after_ms`).
    pub stalled_tasks: Vec<Uuid>,
    /// The Guardian's latest anomaly reading (every `monitoring.anomaly_interval_ms`);
    /// `None` before the first.
    pub anomaly: Option<RecordedReading>,
    /// Open alerts about the agent (quarantined, failed), newest first.
    pub alerts: Vec<AlertRow>,
}

/// A task an agent holds, as supervision sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeldTask {
    pub task_id: Uuid,
    pub status: TaskStatus,
    /// Set while stalled: since when it reported nothing.
    pub stalled_since: Option<DateTime<Utc>>,
    /// Steering messages not yet handed to the agent.
    pub pending_steering: usize,
}

/// The agent's heartbeats (last one, intervals missed, when it would be failed), its
/// latest anomaly reading and open alerts, and the work it holds, with stalled tasks and
/// undelivered steering.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/health",
    tag = "agents",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = AgentHealth),
        (status = 400, body = Problem, description = "bad id"),
        (status = 404, body = Problem, description = "no such agent"),
    )
)]
async fn agent_health(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<AgentHealth>> {
    let (agent, _) = state.read::<Agent>(&caller, PERMISSION, id).await?;
    let liveness = &state.liveness;
    let lease = omoi_orchestrator::leases::lease(state.pool(), id).await?;
    let missed_heartbeats = lease.as_ref().map_or(0, |lease| {
        let silent = (lease.now - lease.heartbeat_at).num_milliseconds();
        liveness.monitoring.missed_heartbeats(silent)
    });
    let stale_after = chrono::Duration::milliseconds(
        i64::try_from(liveness.stale_after_ms).unwrap_or(i64::MAX / 2),
    );
    let mut tasks = Vec::new();
    for task_id in agents::held_tasks(state.pool(), id).await? {
        let (task, _) = state.load::<Task>(task_id).await?;
        if task.assigned_agent_id != Some(id) {
            continue;
        }
        tasks.push(HeldTask {
            task_id,
            status: task.status,
            stalled_since: task.stalled_since,
            pending_steering: task.pending_steering.len(),
        });
    }
    let stalled_tasks = tasks
        .iter()
        .filter(|t| t.stalled_since.is_some())
        .map(|t| t.task_id)
        .collect();
    Ok(Json(AgentHealth {
        agent_id: id,
        status: agent.status,
        status_reason: agent.status_reason,
        last_heartbeat_at: lease.as_ref().map(|l| l.heartbeat_at),
        missed_heartbeats,
        warning: missed_heartbeats >= 1,
        lease_expires_at: lease
            .as_ref()
            .and_then(|l| l.heartbeat_at.checked_add_signed(stale_after)),
        tasks,
        stalled_tasks,
        anomaly: anomaly::latest(state.pool(), id).await?,
        alerts: monitoring::alerts_about(state.pool(), id).await?,
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
