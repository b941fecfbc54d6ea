//! `POST /api/v1/tasks/{id}/discoveries`: the agent running a task reports work it found;
//! it becomes a task of the same ticket, and may hold the running task back until done.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use omoi_domain::access::Permission;
use omoi_domain::task::{Discovery, DiscoveryKind, Task, TaskCommand};
use omoi_store::bus::Part;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Assignment, Body, IdPath};
use crate::responses::Versioned;
use crate::state::AppState;
use crate::tasks::as_sent_by;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(report_discovery))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportDiscovery {
    pub kind: DiscoveryKind,
    #[schema(schema_with = crate::schemas::title)]
    pub title: String,
    #[serde(default)]
    #[schema(schema_with = crate::schemas::text)]
    pub description: String,
    /// The new task's type (default `discovery_<kind>`, as the original named them).
    #[schema(schema_with = crate::schemas::task_type_or_null)]
    pub task_type: Option<String>,
    /// The new task one priority level above the running task's (critical stays critical).
    #[serde(default)]
    pub priority_boost: bool,
    /// The running task may complete only once the new task completed or was cancelled.
    #[serde(default)]
    pub blocks_parent: bool,
}

/// Reports work the running task's agent discovered: a task of the same ticket, phase and
/// priority (one level higher with `priority_boost`) that names its parent and its
/// discoverer (`TaskDiscovered`), recorded on the running task too
/// (`TaskDiscoveryReported`). With `blocks_parent`, completing the running task answers
/// 409 `discoveries_open` until the new task completes or is cancelled. Only the agent
/// holding the task (or a person with `task:execute`) may report.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/discoveries", tag = "tasks",
    params(("id" = Uuid, Path, description = "the running task"),
        ("Omoi-Assignment" = Option<chrono::DateTime<chrono::Utc>>, Header, nullable = false, description = "the `assigned_at` the \
            claim answered: the step is refused once the task was assigned again, also to \
            the same agent (409 `assignment_superseded`)")),
    request_body = ReportDiscovery,
    responses(
        (status = 201, body = Versioned<Task>, description = "the discovered task"),
        (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 403, body = Problem, description = "the role lacks `task:execute`, or an \
            agent's credential on a task assigned to another agent (`held_by_another_agent`)"),
        (status = 409, body = Problem, description = "the task is not running, or reported \
            100 discoveries already (`too_many_discoveries`); `assignment_superseded`"),
        (status = 422, body = Problem),
    ))]
async fn report_discovery(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(parent_id): IdPath,
    assignment: Assignment,
    Body(body): Body<ReportDiscovery>,
) -> ApiResult<(StatusCode, Json<Versioned<Task>>)> {
    let (parent, _) = state
        .read::<Task>(&caller, Permission::TaskExecute, parent_id)
        .await?;
    let (Some(organization_id), Some(project_id), Some(ticket_id)) =
        (parent.organization_id, parent.project_id, parent.ticket_id)
    else {
        return Err(ApiError::Internal("task without scope or ticket".into()));
    };
    let id = Uuid::now_v7();
    let create = TaskCommand::CreateTask {
        task_id: id,
        organization_id,
        project_id,
        ticket_id,
        title: body.title,
        description: body.description,
        task_type: body
            .task_type
            .unwrap_or_else(|| format!("discovery_{}", body.kind.as_str())),
        phase: parent.phase,
        priority: match body.priority_boost {
            true => parent.priority.raised(),
            false => parent.priority,
        },
        depends_on: Vec::new(),
        required_capabilities: Vec::new(),
        max_retries: None,
        timeout_seconds: None,
        validation: None,
        validates: None,
        discovery: Some(Discovery {
            parent_task_id: parent_id,
            kind: body.kind,
            discovered_by: caller.agent_id(),
            blocks_parent: body.blocks_parent,
        }),
        at: Utc::now(),
        plan_key: None,
    };
    // Decided as the holder's: an agent that lost the task reports nothing.
    let report = as_sent_by(
        &caller,
        assignment,
        TaskCommand::ReportDiscovery {
            discovered_task_id: id,
            kind: body.kind,
            blocks_parent: body.blocks_parent,
        },
    );
    // The new task is the parent's kind of work in the parent's scope, read above with
    // `task:execute`; the parent is checked again as it stands when the pair is decided.
    let check = |scope| caller.check(scope, Permission::TaskExecute);
    let (id_text, parent_text) = (id.to_string(), parent_id.to_string());
    // The new task first, so that the report on the parent can name it by title.
    let (created, _) = state
        .bus
        .execute_pair::<Task, Task>(
            Part {
                aggregate_id: &id_text,
                command: create,
                check: &|_| Ok(()),
            },
            Part {
                aggregate_id: &parent_text,
                command: report,
                check: &check,
            },
            &caller.context(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(Versioned::committed(id, created))))
}
