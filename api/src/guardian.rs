//! `POST /api/v1/guardian/interventions`: a Guardian acts on a task or an agent outside
//! the ordinary flow — emergency cancel, reassign, priority override, steer, quarantine,
//! release. Each is one command on its target, recorded as `GuardianIntervened` with the
//! events of its effect, and so on the timeline and in the agent's audit.
//!
//! Who may: a person whose role has `guardian:intervene` (owners and admins), or an agent
//! of type `guardian` — which only such a person may register — within its organization
//! (and its project, for a project-scoped agent). Anyone else gets 403.

use axum::extract::State;
use axum::Json;
use chrono::Utc;
use omoi_domain::access::Permission;
use omoi_domain::agent::{Agent, AgentCommand, AgentType};
use omoi_domain::common::{Priority, Scope};
use omoi_domain::guardian::InterventionKind;
use omoi_domain::task::{Task, TaskCommand, TaskIntervention};
use omoi_store::bus::ScopeCheck;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiResult, Problem};
use crate::extract::Body;
use crate::state::AppState;

/// What a refused caller lacks.
const REFUSED_AS: &str = "guardian:intervene (or a guardian agent of the organization)";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(intervene))
}

/// An intervention: its `kind`, its target and what it needs. Every kind says why
/// (`reason`: not blank, at most 20,000 characters).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Intervention {
    /// The task is cancelled at once.
    EmergencyCancel {
        task_id: Uuid,
        #[schema(schema_with = crate::schemas::statement)]
        reason: String,
    },
    /// The task is taken from its agent and goes back to the queue, the attempt not
    /// counted.
    Reassign {
        task_id: Uuid,
        #[schema(schema_with = crate::schemas::statement)]
        reason: String,
    },
    /// The task's priority is set.
    PriorityOverride {
        task_id: Uuid,
        #[schema(inline)]
        priority: Priority,
        #[schema(schema_with = crate::schemas::statement)]
        reason: String,
    },
    /// A message for the agent running the task (at most 4,000 characters).
    Steer {
        task_id: Uuid,
        #[schema(schema_with = crate::schemas::steering)]
        message: String,
        #[schema(schema_with = crate::schemas::statement)]
        reason: String,
    },
    /// The agent takes no new work until released.
    Quarantine {
        agent_id: Uuid,
        #[schema(schema_with = crate::schemas::statement)]
        reason: String,
    },
    /// The quarantined agent may take work again.
    Release {
        agent_id: Uuid,
        #[schema(schema_with = crate::schemas::statement)]
        reason: String,
    },
}

/// What an intervention acted on, and its state after it.
#[derive(Debug, Serialize, ToSchema)]
pub struct InterventionRecorded {
    #[schema(inline)]
    pub kind: InterventionKind,
    /// `task` or `agent`.
    pub target_type: &'static str,
    pub target_id: Uuid,
    /// The target's version after the intervention.
    pub version: usize,
    /// Whether it recorded anything (a `steer` sent again under the same id does not).
    pub recorded: bool,
}

/// Acts on a task or an agent as a Guardian. Its refusals are those of the command
/// (a final task is not cancelled, a task nobody holds is not reassigned, only a
/// quarantined agent is released …: 409 with the rule's code).
#[utoipa::path(post, path = "/api/v1/guardian/interventions", tag = "agents",
    request_body = Intervention,
    responses(
        (status = 200, body = InterventionRecorded), (status = 400, body = Problem),
        (status = 403, body = Problem,
            description = "neither `guardian:intervene` nor a guardian agent of the target's organization"),
        (status = 404, body = Problem, description = "no such task or agent"),
        (status = 409, body = Problem, description = "the target's state refuses it"),
        (status = 422, body = Problem,
            description = "a blank or long reason or message"),
    ))]
async fn intervene(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<Intervention>,
) -> ApiResult<Json<InterventionRecorded>> {
    let guardian_agent = is_guardian_agent(&state, &caller).await?;
    // A guardian agent's reach is its credential's: its organization (and project).
    let check = |scope: Option<Scope>| {
        if guardian_agent {
            caller.check(scope, Permission::AgentHeartbeat)
        } else {
            caller.check(scope, Permission::GuardianIntervene)
        }
    };
    let at = Utc::now();
    let (task_id, intervention, reason) = match body {
        Intervention::Quarantine { agent_id, reason } => {
            return on_agent(&state, &caller, &check, agent_id, true, reason).await
        }
        Intervention::Release { agent_id, reason } => {
            return on_agent(&state, &caller, &check, agent_id, false, reason).await
        }
        Intervention::EmergencyCancel { task_id, reason } => {
            (task_id, TaskIntervention::EmergencyCancel, reason)
        }
        Intervention::Reassign { task_id, reason } => (task_id, TaskIntervention::Reassign, reason),
        Intervention::PriorityOverride {
            task_id,
            priority,
            reason,
        } => (
            task_id,
            TaskIntervention::PriorityOverride { priority },
            reason,
        ),
        Intervention::Steer {
            task_id,
            message,
            reason,
        } => (
            task_id,
            TaskIntervention::Steer {
                steering_id: Uuid::now_v7(),
                message,
            },
            reason,
        ),
    };
    let kind = intervention.kind();
    let command = TaskCommand::Intervene {
        intervention,
        reason,
        at,
    };
    let committed = state
        .run_checked::<Task>(&caller, "Intervene", task_id, command, &check, REFUSED_AS)
        .await?;
    Ok(Json(InterventionRecorded {
        kind,
        target_type: "task",
        target_id: task_id,
        version: committed.version,
        recorded: committed.appended > 0,
    }))
}

/// Quarantines (`quarantine`) or releases the agent.
async fn on_agent(
    state: &AppState,
    caller: &Caller,
    check: &dyn ScopeCheck,
    agent_id: Uuid,
    quarantine: bool,
    reason: String,
) -> ApiResult<Json<InterventionRecorded>> {
    let command = AgentCommand::Intervene {
        quarantine,
        reason,
        at: Utc::now(),
    };
    let committed = state
        .run_checked::<Agent>(caller, "Intervene", agent_id, command, check, REFUSED_AS)
        .await?;
    Ok(Json(InterventionRecorded {
        kind: if quarantine {
            InterventionKind::Quarantine
        } else {
            InterventionKind::Release
        },
        target_type: "agent",
        target_id: agent_id,
        version: committed.version,
        recorded: committed.appended > 0,
    }))
}

/// Whether the caller acts as a guardian agent: its own credential, of an agent of type
/// `guardian` that still takes work (a quarantined one does not release itself), registered
/// by someone who still holds `guardian:intervene` (a demotion ends the agent's powers with
/// its registrar's, as it lowers every key they made).
async fn is_guardian_agent(state: &AppState, caller: &Caller) -> ApiResult<bool> {
    let Some(agent_id) = caller.agent_id() else {
        return Ok(false);
    };
    let (agent, _) = state.load::<Agent>(agent_id).await?;
    Ok(agent.agent_type == AgentType::Guardian
        && agent.status.takes_work()
        && caller.creator_allows(Permission::GuardianIntervene))
}
