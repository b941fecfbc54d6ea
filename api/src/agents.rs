//! `/api/v1/agents`: register, read, change status, replace capabilities, history.
//!
//! Heartbeats are not events: `POST /api/v1/agents/{id}/heartbeat` renews the agent's
//! lease (`agent_leases`); the worker fails an agent whose lease goes stale.

use axum::extract::State;
use axum::http::StatusCode;
use omoi_domain::access::Permission;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::Json;
use chrono::Utc;
use omoi_domain::agent::{default_name, Agent, AgentCommand, AgentStatus, AgentType};
use omoi_domain::common::Scoped;
use omoi_domain::organization::Organization;
use omoi_domain::project::Project;
use omoi_domain::task::{Steering, Task, TaskCommand};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Caller, Credential};
use crate::claims::{ClaimError, Claimant};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Assignment, Body, IdPath, Query};
use crate::history::{history_of, HistoryQuery};
use crate::responses::{History, Versioned};
use crate::state::AppState;
use crate::tasks::as_sent_by;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_agent))
        .routes(routes!(get_agent))
        .routes(routes!(change_agent_status))
        .routes(routes!(heartbeat))
        .routes(routes!(claim))
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
    #[schema(schema_with = crate::schemas::title_or_null)]
    pub name: Option<String>,
    pub agent_type: AgentType,
    /// Trimmed; duplicates are merged.
    #[serde(default)]
    #[schema(schema_with = crate::schemas::agent_capabilities)]
    pub capabilities: Vec<String>,
    /// Tasks the agent runs at once, 1 to 100 (default 1).
    #[schema(minimum = 1, maximum = 100)]
    pub capacity: Option<u32>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeAgentStatus {
    pub to: AgentStatus,
    #[schema(schema_with = crate::schemas::text_or_null)]
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
    #[schema(schema_with = crate::schemas::agent_capabilities)]
    pub capabilities: Vec<String>,
}

type AgentResponse = ApiResult<Json<Versioned<Agent>>>;

/// Refuses (404) a project that does not exist or belongs to another organization — the
/// same answer, so that another organization's projects cannot be probed — and (409) an
/// archived one.
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
    let Some((project, _)) = loaded.filter(|(p, _)| p.organization_id == Some(organization_id))
    else {
        return Err(ApiError::NotFound { what: "project" });
    };
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
        (status = 201, body = RegisteredAgent), (status = 400, body = Problem),
        (status = 404, body = Problem,
            description = "no such organization, or no such project in it"),
        (status = 409, body = Problem,
            description = "the organization or the project is archived"),
        (status = 422, body = Problem),
    ))]
async fn register_agent(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<RegisterAgent>,
) -> ApiResult<(StatusCode, Json<RegisteredAgent>)> {
    let (organization, _) = state
        .read::<Organization>(&caller, Permission::AgentWrite, body.organization_id)
        .await?;
    if !organization.is_active() {
        return Err(ApiError::Conflict {
            code: "organization_archived",
            detail: "the organization is archived; no agent can be registered in it".into(),
        });
    }
    // A guardian agent may intervene in the organization's work: only those who may
    // intervene themselves give that power to an agent.
    if body.agent_type == AgentType::Guardian {
        caller.authorize(
            organization.scope(),
            Permission::GuardianIntervene,
            "organization",
        )?;
    }
    if let Some(project_id) = body.project_id {
        ensure_project_of(&state, body.organization_id, project_id).await?;
    }
    let id = Uuid::now_v7();
    // The credential is written first and taken back if the registration fails: written
    // after it, a failed write left an agent nobody could ever run (no route issues its
    // credential later) and a client retrying registered another.
    let credential = match caller.user_id() {
        Some(user) => {
            let name = body
                .name
                .clone()
                .unwrap_or_else(|| default_name(body.agent_type, id));
            let credential = AgentCredential {
                agent_id: id,
                name: &name,
                organization_id: body.organization_id,
                project_id: body.project_id,
            };
            Some(agent_credential(&state, credential, user).await?)
        }
        None => None,
    };
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
    let created = match state
        .create::<Agent>(&caller, "RegisterAgent", id, command)
        .await
    {
        Ok(created) => Versioned::committed(id, created),
        Err(error) => {
            if let Some((key_id, _)) = &credential {
                if let Err(cleanup) =
                    omoi_store::accounts::delete_api_key(state.pool(), *key_id).await
                {
                    // Its secret was never shown: nobody can use it.
                    tracing::warn!(%key_id, error = %cleanup, "a failed registration's credential was not deleted");
                }
            }
            return Err(error);
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(RegisteredAgent {
            agent: created,
            credential: credential.map(|(_, secret)| secret),
        }),
    ))
}

/// The agent an `agent_credential` is for.
struct AgentCredential<'a> {
    agent_id: Uuid,
    name: &'a str,
    organization_id: Uuid,
    project_id: Option<Uuid>,
}

/// An API key with the `agent_executor` role (claim, run and heartbeat; read the rest),
/// scoped to the agent's organization and, for a project's agent, its project: its id and
/// its secret.
async fn agent_credential(
    state: &AppState,
    agent: AgentCredential<'_>,
    created_by: Uuid,
) -> ApiResult<(Uuid, String)> {
    let new = crate::auth::keys::generate();
    let record = omoi_store::accounts::ApiKeyRecord {
        id: Uuid::now_v7(),
        prefix: new.prefix,
        secret_sha256: new.sha256,
        name: format!("agent {} ({})", agent.name, agent.agent_id),
        organization_id: agent.organization_id,
        project_id: agent.project_id,
        role: omoi_domain::access::Role::AgentExecutor,
        created_by,
        created_at: Utc::now(),
        revoked_at: None,
        agent_id: Some(agent.agent_id),
    };
    if !omoi_store::accounts::insert_api_key(state.pool(), &record).await? {
        // Removed from the organization while the agent was registered.
        return Err(ApiError::NotFound {
            what: "organization",
        });
    }
    Ok((record.id, new.secret))
}

/// A registered agent and, when a user registered it, the credential it runs with.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct RegisteredAgent {
    #[serde(flatten)]
    pub agent: Versioned<Agent>,
    /// An `agent_executor` API key for the agent (`Authorization: Bearer <key>`): it may
    /// heartbeat, claim, start, report progress, complete and fail tasks, and read its
    /// organization. Shown once. Absent when an API key registered the agent.
    pub credential: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// Seconds to wait for a task when none is ready, 0 to 60 (default 30).
    #[schema(maximum = 60)]
    pub wait_seconds: Option<u64>,
}

/// Longest claim wait: long polls past a minute fall foul of proxies.
const MAX_CLAIM_WAIT_SECONDS: u64 = 60;

/// Assigns the agent the best ready task it may run — of its organization (and its
/// project, if it has one), needing no capability it lacks, within the concurrency caps —
/// waiting up to `wait_seconds` for one (also while it holds as many tasks as its
/// capacity). 204 when none came. The agent then starts it
/// (`POST /api/v1/tasks/{id}/start`), reports progress, and completes or fails it.
#[utoipa::path(post, path = "/api/v1/agents/{id}/claim", tag = "agents",
    params(("id" = Uuid, Path)), request_body = Claim,
    responses(
        (status = 200, body = Versioned<Task>, description = "the task now assigned to the agent"),
        (status = 204, description = "no task became ready in time"),
        (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem,
            description = "the agent is failed, quarantined or terminated"),
        (status = 422, body = Problem, description = "wait_seconds above 60"),
        (status = 429, body = Problem,
            description = "the agent already has as many claims waiting as it may (4)"),
    ))]
async fn claim(
    State(state): State<AppState>,
    caller: Caller,
    credential: Credential,
    IdPath(id): IdPath,
    Body(Claim { wait_seconds }): Body<Claim>,
) -> ApiResult<axum::response::Response> {
    let wait = wait_seconds.unwrap_or(30);
    if wait > MAX_CLAIM_WAIT_SECONDS {
        return Err(ApiError::invalid(
            "wait_too_long",
            "wait_seconds",
            format!("wait at most {MAX_CLAIM_WAIT_SECONDS} seconds"),
        ));
    }
    caller.ensure_speaks_for(id)?;
    let (agent, _) = state
        .read::<Agent>(&caller, Permission::TaskExecute, id)
        .await?;
    ensure_takes_work(id, &agent)?;
    let organization_id = agent
        .organization_id
        .ok_or_else(|| ApiError::Internal("agent without organization".into()))?;
    let account = crate::billing::account_of(&state, organization_id).await?;
    let organization_cap = state.billing.plans.concurrency_cap(&account, Utc::now());
    let claimant = Claimant {
        agent_id: id,
        organization_id,
        organization_cap,
        project_id: agent.project_id,
        capabilities: agent.capabilities.iter().cloned().collect(),
        capacity: agent.capacity as usize,
    };
    let assign = |task_id: Uuid| {
        let (state, caller, credential) = (&state, &caller, &credential);
        async move {
            // Again as the task is taken: the claim may have waited up to a minute, and
            // a credential revoked meanwhile (its creator removed or demoted) or an agent
            // quarantined or terminated meanwhile takes no work.
            let mut fresh = credential.verify(state).await?;
            fresh.request_id.clone_from(&caller.request_id);
            let caller = &fresh;
            let (agent, _) = state.load::<Agent>(id).await?;
            ensure_takes_work(id, &agent)?;
            // Holding work starts the agent's lease (one that dies before its first
            // heartbeat still has its task put back): renewed before the task is taken,
            // so that a lease that cannot be written fails the claim with nothing
            // assigned, rather than leave a task assigned and no lease to reclaim it by.
            omoi_orchestrator::leases::renew(state.pool(), id, organization_id)
                .await
                .map_err(ApiError::from)?;
            let assigned_at = Utc::now();
            let command = TaskCommand::AssignTask {
                agent_id: id,
                at: assigned_at,
            };
            match state
                .execute::<Task>(
                    caller,
                    Permission::TaskExecute,
                    "AssignTask",
                    task_id,
                    command,
                )
                .await
            {
                Ok(committed) => {
                    keep_if_agent_takes_work(state, caller, task_id, id, assigned_at).await?;
                    let version = committed.version as u64;
                    Ok(Some((Versioned::committed(task_id, committed), version)))
                }
                // Taken by someone else meanwhile (or no longer assignable): next one.
                Err(ApiError::Conflict { .. }) => Ok(None),
                Err(other) => Err(other),
            }
        }
    };
    let claimed = state
        .claims
        .claim(&state.live, &claimant, Duration::from_secs(wait), assign)
        .await
        .map_err(|error| match error {
            ClaimError::Log(e) => ApiError::from(e),
            ClaimError::Assign(e) => e,
            ClaimError::TooManyWaiting { .. } => ApiError::TooManyRequests {
                detail: "this agent already has as many claims waiting as it may; \
                         wait for one to answer",
                retry_after_seconds: 1,
            },
        })?;
    Ok(match claimed {
        Some(task) => Json(task).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
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
    let loaded = state
        .read::<Agent>(&caller, Permission::AgentRead, id)
        .await?;
    Ok(Json(Versioned::read(id, loaded)))
}

/// Moves the agent along its status table: spawning → idle | failed | terminated;
/// idle → running | degraded | quarantined | terminated; running → idle | failed |
/// degraded | quarantined; degraded → idle | failed | quarantined | terminated;
/// failed → quarantined | terminated; quarantined → idle | terminated. Moving to the
/// current status needs `force`. A terminated agent never changes. Into or out of
/// quarantine (but for terminating) needs `guardian:intervene`, as the Guardian's
/// interventions do.
#[utoipa::path(post, path = "/api/v1/agents/{id}/status", tag = "agents",
    params(("id" = Uuid, Path)), request_body = ChangeAgentStatus,
    responses(
        (status = 200, body = Versioned<Agent>), (status = 400, body = Problem),
        (status = 403, body = Problem,
            description = "the role lacks agent:write, or the move enters or leaves quarantine \
                           without guardian:intervene (`guardian_required`)"),
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
    let terminating = body.to == AgentStatus::Terminated;
    // Into or out of quarantine only as a Guardian (the domain's rule; the role is
    // read here).
    let (agent, _) = state
        .read::<Agent>(&caller, Permission::AgentRead, id)
        .await?;
    let guardian = caller
        .check(agent.scope(), Permission::GuardianIntervene)
        .is_ok();
    let command = AgentCommand::ChangeAgentStatus {
        to: body.to,
        reason: body.reason,
        force: body.force,
        guardian,
        at: Utc::now(),
    };
    let answer = state
        .execute_versioned::<Agent>(
            &caller,
            Permission::AgentWrite,
            "ChangeAgentStatus",
            id,
            command,
        )
        .await?;
    if terminating {
        // The termination's transaction revoked the agent's own credential (a trigger on
        // the log); this process's cache forgets it at once.
        state.credentials.forget_api_keys();
    }
    Ok(answer)
}

/// The answer to a heartbeat: the agent's status as recorded, and (to the agent's own
/// credential) the steering messages for the tasks it runs that it had not been given
/// yet (now recorded as delivered).
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Heartbeat {
    pub agent_id: Uuid,
    pub status: AgentStatus,
    pub steering: Vec<SteeringMessage>,
}

/// A steering message for one of the agent's tasks.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct SteeringMessage {
    pub task_id: Uuid,
    #[serde(flatten)]
    pub steering: Steering,
}

/// Renews the agent's lease. A spawning agent's first heartbeat, and a degraded agent's
/// next one, make it `idle` (an event). An agent silent for two heartbeat intervals
/// (`monitoring.heartbeat_interval_ms`) is degraded; one silent longer than the stale
/// threshold (`worker.stale_after_ms`) is failed and its tasks go back to the queue. A
/// terminated or failed agent's heartbeat is refused, and renews nothing. The answer to
/// the agent's own credential carries the steering messages waiting for its running
/// tasks, once each; another caller's, none.
#[utoipa::path(post, path = "/api/v1/agents/{id}/heartbeat", tag = "agents",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Heartbeat), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem,
            description = "the agent is terminated (`agent_terminated`) or failed (`agent_failed`)"),
    ))]
async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Heartbeat>> {
    caller.ensure_speaks_for(id)?;
    let (agent, _) = state
        .read::<Agent>(&caller, Permission::AgentHeartbeat, id)
        .await?;
    if agent.status == AgentStatus::Terminated {
        return Err(ApiError::Conflict {
            code: "agent_terminated",
            detail: format!("agent {id} is terminated"),
        });
    }
    // A failed agent's heartbeat keeps nothing alive: its lease runs out, and the sweep
    // gives its tasks back (renewed, a person's `failed` left them held for ever). It
    // comes back only by way of quarantine, as the status table says.
    if agent.status == AgentStatus::Failed {
        return Err(ApiError::Conflict {
            code: "agent_failed",
            detail: format!(
                "agent {id} failed: it holds and takes no work (its tasks go back once its \
                 lease runs out); a guardian may quarantine and then release it"
            ),
        });
    }
    let organization_id = agent
        .organization_id
        .ok_or_else(|| ApiError::Internal("agent without organization".into()))?;
    omoi_orchestrator::leases::renew(state.pool(), id, organization_id)
        .await
        .map_err(ApiError::from)?;
    let status = revive(&state, &caller, id, agent.status).await?;
    // Steering rides on the agent's own heartbeat — another caller beating for it (a
    // member may) neither gets nor takes away its messages, as on the WebSocket — and
    // must not fail for it: messages that cannot be handed over now (the agents read
    // model not built yet, say) stay pending for the next heartbeat.
    let steering = match caller.agent_id() == Some(id) {
        false => Vec::new(),
        true => match deliver_steering(&state, &caller, id).await {
            Ok(steering) => steering,
            Err(error) => {
                tracing::warn!(agent_id = %id, ?error, "heartbeat: steering not delivered this time");
                Vec::new()
            }
        },
    };
    Ok(Json(Heartbeat {
        agent_id: id,
        status,
        steering,
    }))
}

/// A heartbeat shows a spawning or degraded agent alive: it becomes idle. Another
/// command having moved it meanwhile is not an error; its status then is the answer.
async fn revive(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    status: AgentStatus,
) -> ApiResult<AgentStatus> {
    let reason = match status {
        AgentStatus::Spawning => "first heartbeat",
        AgentStatus::Degraded => "heartbeats resumed",
        other => return Ok(other),
    };
    let command = AgentCommand::revive(reason, Utc::now());
    match state
        .execute::<Agent>(
            caller,
            Permission::AgentHeartbeat,
            "ChangeAgentStatus",
            id,
            command,
        )
        .await
    {
        Ok(committed) => Ok(committed.state.status),
        Err(ApiError::Conflict { .. }) => Ok(state.load::<Agent>(id).await?.0.status),
        Err(other) => Err(other),
    }
}

/// The steering messages waiting on the tasks the agent holds, each recorded as
/// delivered (`SteeringDelivered`) as it is handed over.
async fn deliver_steering(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> ApiResult<Vec<SteeringMessage>> {
    // The read model says which tasks have something waiting (usually none), so a
    // heartbeat loads no task aggregate for nothing.
    let tasks = omoi_projections::monitoring::steered_tasks(state.pool(), id).await?;
    deliver_task_steering(state, caller, id, &tasks).await
}

/// The steering messages waiting for agent `id` on `tasks`, each recorded as delivered
/// (`SteeringDelivered`) as it is handed over: the heartbeat's way of handing steering
/// over (the WebSocket's `steering` stream makes room for them first:
/// [`waiting_steering`], then [`acknowledge_steering`]).
pub(crate) async fn deliver_task_steering(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    tasks: &[Uuid],
) -> ApiResult<Vec<SteeringMessage>> {
    let waiting = waiting_steering(state, id, tasks).await?;
    Ok(acknowledge_steering(state, caller, waiting).await)
}

/// The steering messages waiting for agent `id` on `tasks` (those it holds), by task.
pub(crate) async fn waiting_steering(
    state: &AppState,
    id: Uuid,
    tasks: &[Uuid],
) -> ApiResult<Vec<(Uuid, Vec<Steering>)>> {
    let mut waiting = Vec::new();
    for &task_id in tasks {
        let (task, _) = state.load::<Task>(task_id).await?;
        if task.assigned_agent_id != Some(id) || task.pending_steering.is_empty() {
            continue;
        }
        waiting.push((task_id, task.pending_steering));
    }
    Ok(waiting)
}

/// Records `waiting` (by task) as delivered, each task's as its agent's (the caller's):
/// a task handed to another agent since it was read keeps its messages for that one.
/// Returns what this recorded, to hand over — also when a task's record failed (its
/// messages then stay pending for the next delivery), since the others' are recorded as
/// delivered already and would otherwise never be handed over.
pub(crate) async fn acknowledge_steering(
    state: &AppState,
    caller: &Caller,
    waiting: Vec<(Uuid, Vec<Steering>)>,
) -> Vec<SteeringMessage> {
    let mut delivered = Vec::new();
    for (task_id, waiting) in waiting {
        // Delivered with a heartbeat, which names no assignment.
        let command = as_sent_by(
            caller,
            Assignment(None),
            TaskCommand::AcknowledgeSteering {
                steering_ids: waiting.iter().map(|s| s.steering_id).collect(),
                at: Utc::now(),
            },
        );
        // Only what this command recorded as delivered is handed over: a concurrent
        // heartbeat that delivered a message first keeps it from being given twice.
        let committed = match state
            .execute::<Task>(
                caller,
                Permission::TaskExecute,
                "AcknowledgeSteering",
                task_id,
                command,
            )
            .await
        {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%task_id, ?error, "steering not recorded as delivered; it stays pending");
                continue;
            }
        };
        let still_pending: Vec<Uuid> = committed
            .state
            .pending_steering
            .iter()
            .map(|s| s.steering_id)
            .collect();
        delivered.extend(
            waiting
                .into_iter()
                .filter(|s| !still_pending.contains(&s.steering_id))
                .map(|steering| SteeringMessage { task_id, steering }),
        );
    }
    delivered
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
        .execute_versioned::<Agent>(
            &caller,
            Permission::AgentWrite,
            "UpdateCapabilities",
            id,
            command,
        )
        .await
}

/// After an assignment of `task_id` to agent `agent_id`, made at `assigned_at`, committed:
/// an agent that stopped taking work while it was made (quarantined, failed or terminated
/// after it was read) has it withdrawn — back to the queue, the attempt not counted — and
/// the caller is answered 409 `agent_unavailable`, as if the change had been seen first.
/// This answers the caller at once; the rule itself is the log's, kept by the process
/// manager `assignment_withdrawal` (which withdraws an assignment whose agent had stopped
/// taking work before it in the log, whoever made it). A withdrawal refused here was made
/// by that manager first, or the task moved on: the assignment does not stand either way.
/// One this could not read or withdraw (the database away) stands as far as this caller
/// knows: the assignment committed, so the caller is told of it — answered an error, the
/// agent would never hear of its task (the manager still withdraws it if the agent's
/// change came first in the log).
pub(crate) async fn keep_if_agent_takes_work(
    state: &AppState,
    caller: &Caller,
    task_id: Uuid,
    agent_id: Uuid,
    assigned_at: chrono::DateTime<Utc>,
) -> ApiResult<()> {
    let stopped = match state.load::<Agent>(agent_id).await {
        Ok((agent, _)) => match ensure_takes_work(agent_id, &agent) {
            Ok(()) => return Ok(()),
            Err(stopped) => stopped,
        },
        Err(error) => {
            tracing::warn!(%task_id, %agent_id, ?error, "the agent of a new assignment not read again");
            return Ok(());
        }
    };
    let command = TaskCommand::WithdrawAssignment {
        assigned_at,
        at: Utc::now(),
    };
    match state
        .execute::<Task>(
            caller,
            Permission::TaskExecute,
            "WithdrawAssignment",
            task_id,
            command,
        )
        .await
    {
        Err(ApiError::Conflict {
            code: "concurrent_modification",
            ..
        }) => {
            tracing::warn!(%task_id, %agent_id, "an assignment to an agent that stopped taking work not withdrawn: the task kept changing");
            Ok(())
        }
        // Refused: withdrawn already (by the process manager) or moved on.
        Ok(_) | Err(ApiError::Conflict { .. }) => Err(stopped),
        Err(error) => {
            tracing::warn!(%task_id, %agent_id, ?error, "an assignment to an agent that stopped taking work not withdrawn");
            Ok(())
        }
    }
}

/// Refuses work to an agent whose status does not take it (quarantined, failed,
/// terminated, …): 409 `agent_unavailable`.
fn ensure_takes_work(id: Uuid, agent: &Agent) -> ApiResult<()> {
    if agent.status.takes_work() {
        return Ok(());
    }
    Err(ApiError::Conflict {
        code: "agent_unavailable",
        detail: format!(
            "agent {id} is {}; it may not take work",
            agent.status.as_str()
        ),
    })
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
    history_of::<Agent>(&state, &caller, Permission::AgentRead, id, &query).await
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
