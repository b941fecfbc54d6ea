//! `/api/v1/tasks`: create, read, assign, start, progress, complete, fail, cancel,
//! dependencies, history.
//!
//! Time-outs are issued by the orchestrator, not over HTTP.

use omoi_domain::access::Permission;
use std::collections::BTreeSet;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use omoi_domain::agent::{Agent, AgentStatus};
use omoi_domain::billing::BillingError;
use omoi_domain::common::{Phase, Priority, Scope, Scoped};
use omoi_domain::task::{
    Task, TaskCommand, ValidationPolicy, Verdict, DEFAULT_MAX_REVISIONS, MAX_DEPENDENCIES,
};
use omoi_domain::ticket::Ticket;
use omoi_orchestrator::reservations::Place;
use omoi_workflow::admission::{self, Referrer};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Assignment, Body, IdPath, Query};
use crate::history::{history_of, HistoryQuery};
use crate::projects::active_project;
use crate::responses::{History, Versioned};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_task))
        .routes(routes!(get_task))
        .routes(routes!(assign_task))
        .routes(routes!(start_task))
        .routes(routes!(report_progress))
        .routes(routes!(complete_task))
        .routes(routes!(give_verdict))
        .routes(routes!(fail_task))
        .routes(routes!(cancel_task))
        .routes(routes!(add_dependency))
        .routes(routes!(remove_dependency))
        .routes(routes!(task_history))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    pub ticket_id: Uuid,
    #[schema(schema_with = crate::schemas::title)]
    pub title: String,
    #[serde(default)]
    #[schema(schema_with = crate::schemas::text)]
    pub description: String,
    /// A free label such as `implement` or `write_tests`.
    #[schema(schema_with = crate::schemas::task_type)]
    pub task_type: String,
    /// Defaults to the ticket's phase.
    pub phase: Option<Phase>,
    /// Defaults to the ticket's priority.
    pub priority: Option<Priority>,
    /// Tasks of the same project this one waits for.
    #[serde(default)]
    #[schema(schema_with = crate::schemas::depends_on)]
    pub depends_on: Vec<Uuid>,
    #[serde(default)]
    #[schema(schema_with = crate::schemas::required_capabilities)]
    pub required_capabilities: Vec<String>,
    /// Retries after a failure or timeout; absent means the default.
    #[schema(maximum = 20)]
    pub max_retries: Option<u32>,
    /// How long one attempt may run; absent means no timeout of its own.
    #[schema(minimum = 1)]
    pub timeout_seconds: Option<u32>,
    /// The work must pass another agent's validation before it completes: `complete`
    /// submits it (`pending_validation`) and a `validate` task judges it.
    #[serde(default)]
    pub validation: bool,
    /// With `validation`: how many times rejected work goes back for revision before a
    /// further rejection fails it for good (default 3).
    #[schema(maximum = 10)]
    pub max_revisions: Option<u32>,
}

impl CreateTask {
    /// The validation policy asked for; `max_revisions` alone is a mistake worth naming.
    fn validation(&self) -> ApiResult<Option<ValidationPolicy>> {
        match (self.validation, self.max_revisions) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(ApiError::invalid(
                "max_revisions_without_validation",
                "max_revisions",
                "max_revisions applies only to a task created with \"validation\": true",
            )),
            (true, max_revisions) => Ok(Some(ValidationPolicy {
                max_revisions: max_revisions.unwrap_or(DEFAULT_MAX_REVISIONS),
            })),
        }
    }
}

/// A validator's finding on the work its validation task checks.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GiveVerdict {
    pub passed: bool,
    /// What must change (required when `passed` is false), or remarks on work that passed.
    #[schema(schema_with = crate::schemas::text_or_null)]
    pub feedback: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignTask {
    pub agent_id: Uuid,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportProgress {
    #[schema(schema_with = crate::schemas::progress)]
    pub message: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteTask {
    /// Whatever the agent produced; `null` when absent.
    #[serde(default)]
    pub result: serde_json::Value,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailTask {
    /// What went wrong. Some texts mark a permanent error that no retry can fix.
    #[schema(schema_with = crate::schemas::statement)]
    pub error: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelTask {
    #[schema(schema_with = crate::schemas::text_or_null)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDependency {
    /// A task of the same project.
    pub depends_on: Uuid,
}

/// The path `/api/v1/tasks/{id}/dependencies/{dep}`.
pub struct DependencyPath {
    pub id: Uuid,
    pub dep: Uuid,
}

impl<S: Send + Sync> FromRequestParts<S> for DependencyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((id, dep)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text(), None))?;
        Ok(Self {
            id: path_uuid(&id, "id")?,
            dep: path_uuid(&dep, "dep")?,
        })
    }
}

fn path_uuid(raw: &str, field: &str) -> ApiResult<Uuid> {
    raw.parse::<Uuid>()
        .map_err(|_| ApiError::bad_request(format!("{raw:?} is not a UUID"), Some(field)))
}

type TaskResponse = ApiResult<Json<Versioned<Task>>>;

/// A step of an attempt as `caller` sends it: an agent's own credential acts only on a
/// task assigned to its agent (`TaskCommand::AsHolder`, decided by the task on the state
/// the step is appended against, so a reassignment cannot slip in between: 403
/// `held_by_another_agent`, or 409 `task_not_assigned` for a task nobody holds — it must
/// be claimed first); other callers by their role alone.
///
/// A step naming its assignment (`Omoi-Assignment`) is refused once the task was assigned
/// again (409 `assignment_superseded`), also to the same agent.
pub(crate) fn as_sent_by(
    caller: &Caller,
    Assignment(assignment): Assignment,
    command: TaskCommand,
) -> TaskCommand {
    match caller.agent_id() {
        Some(agent_id) => TaskCommand::AsHolder {
            agent_id,
            assignment,
            command: Box::new(command),
        },
        None => command,
    }
}

/// The rule of [`as_sent_by`] (`Task::ensure_held_by`) for what is not a command on the
/// task (its transcript), on the task as read.
pub(crate) fn check_holder(
    caller: &Caller,
    Assignment(assignment): Assignment,
    task: &Task,
) -> ApiResult<()> {
    match caller.agent_id() {
        Some(agent) => task
            .ensure_held_by(agent)
            .and_then(|()| task.ensure_assignment(assignment))
            .map_err(|refusal| ApiError::from_domain(&refusal)),
        None => Ok(()),
    }
}

/// Creates a pending task for a ticket. The ticket must exist and not be done, its spec
/// (if any) must not be archived, and its project must be active; the task belongs to the ticket's organization and project.
/// Phase and priority default to the ticket's. Every dependency must be an existing
/// task of the same project.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", request_body = CreateTask,
    responses(
        (status = 201, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 404, body = Problem, description = "no such ticket"),
        (status = 409, body = Problem,
            description = "the ticket is done (`ticket_done`), its spec archived \
                (`spec_archived`), or its project archived (`project_archived`)"),
        (status = 422, body = Problem),
    ))]
async fn create_task(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateTask>,
) -> ApiResult<(StatusCode, Json<Versioned<Task>>)> {
    let (ticket, _) = state
        .read::<Ticket>(&caller, Permission::TaskWrite, body.ticket_id)
        .await?;
    admission::ticket_takes_tasks(&state.bus, body.ticket_id, &ticket).await?;
    let (Some(organization_id), Some(project_id)) = (ticket.organization_id, ticket.project_id)
    else {
        return Err(ApiError::Internal(
            "ticket without organization or project".into(),
        ));
    };
    active_project(&state, &caller, Permission::TaskWrite, project_id).await?;
    let validation = body.validation()?;
    let depends_on: BTreeSet<Uuid> = body.depends_on.into_iter().collect();
    // Refused before the lookups below, so one request cannot cost thousands of reads.
    if depends_on.len() > MAX_DEPENDENCIES {
        return Err(ApiError::invalid(
            "too_many_dependencies",
            "depends_on",
            format!("a task may depend on at most {MAX_DEPENDENCIES} tasks"),
        ));
    }
    let from = Referrer {
        project: Scope {
            organization_id,
            project_id: Some(project_id),
        },
        sees_other_projects: caller.project_limit().is_none(),
    };
    admission::dependencies_in_project(&state.bus, from, &depends_on).await?;
    let id = Uuid::now_v7();
    let command = TaskCommand::CreateTask {
        task_id: id,
        organization_id,
        project_id,
        ticket_id: body.ticket_id,
        title: body.title,
        description: body.description,
        task_type: body.task_type,
        phase: body.phase.unwrap_or(ticket.phase),
        priority: body.priority.unwrap_or(ticket.priority),
        depends_on: depends_on.into_iter().collect(),
        required_capabilities: body.required_capabilities,
        max_retries: body.max_retries,
        timeout_seconds: body.timeout_seconds,
        discovery: None,
        validation,
        validates: None,
        at: Utc::now(),
        plan_key: None,
    };
    let created = Versioned::committed(
        id,
        state
            .create::<Task>(&caller, "CreateTask", id, command)
            .await?,
    );
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 404, body = Problem),
    ))]
async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> TaskResponse {
    let loaded = state
        .read::<Task>(&caller, Permission::TaskRead, id)
        .await?;
    Ok(Json(Versioned::read(id, loaded)))
}

/// Gives a pending task, or a retry whose backoff has elapsed, to an agent of the task's
/// organization whose capabilities cover the task's. An agent registered for one project
/// takes only that project's tasks; a terminated agent takes none. This is a person's
/// decision: an agent's own credential takes work through `POST /api/v1/agents/{id}/claim`,
/// and is refused here. Like a claim, it keeps to the plan: no task is assigned while the
/// organization's account is suspended, nor beyond the tasks its plan runs at once (a
/// task waiting for a blocking discovery it reported holds no place meanwhile).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/assign", tag = "tasks",
    params(("id" = Uuid, Path)), request_body = AssignTask,
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 402, body = Problem,
            description = "the account is suspended (`account_suspended`), or the organization \
                           holds as many tasks as its plan runs at once (`concurrency_cap_reached`)"),
        (status = 403, body = Problem,
            description = "an agent's credential (agents claim), or the role lacks task:execute"),
        (status = 404, body = Problem,
            description = "no such task, or no agent of that id the caller can see in the \
                           task's organization"),
        (status = 409, body = Problem,
            description = "the task is not assignable (yet), or the agent is terminated, \
                           failed or quarantined"),
        (status = 422, body = Problem,
            description = "the agent serves another project or lacks a capability the task requires"),
    ))]
async fn assign_task(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<AssignTask>,
) -> TaskResponse {
    if caller.agent_id().is_some() {
        return Err(ApiError::Forbidden {
            permission: "task:assign (an agent takes work through POST /api/v1/agents/{id}/claim)",
        });
    }
    let (task, _) = state
        .read::<Task>(&caller, Permission::TaskExecute, id)
        .await?;
    // An agent the caller may not see (another organization's, or another project's for
    // a key limited to one) is answered as one that does not exist.
    let (agent, _) = state
        .read::<Agent>(&caller, Permission::AgentRead, body.agent_id)
        .await?;
    if agent.organization_id != task.organization_id {
        return Err(ApiError::NotFound { what: "agent" });
    }
    if agent.project_id.is_some() && agent.project_id != task.project_id {
        return Err(ApiError::invalid(
            "agent_in_other_project",
            "agent_id",
            format!("agent {} serves another project", body.agent_id),
        ));
    }
    if agent.status == AgentStatus::Terminated {
        return Err(ApiError::Conflict {
            code: "agent_terminated",
            detail: format!("agent {} is terminated", body.agent_id),
        });
    }
    if !agent.status.takes_work() {
        return Err(ApiError::Conflict {
            code: "agent_unavailable",
            detail: format!(
                "agent {} is {}; it may not take work",
                body.agent_id,
                agent.status.as_str()
            ),
        });
    }
    let missing: Vec<&str> = task
        .required_capabilities
        .iter()
        .filter(|c| !agent.capabilities.contains(*c))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::invalid(
            "missing_capabilities",
            "agent_id",
            format!(
                "agent {} lacks capabilities the task requires: {}",
                body.agent_id,
                missing.join(", ")
            ),
        ));
    }
    let assigned_at = Utc::now();
    let command = TaskCommand::AssignTask {
        agent_id: body.agent_id,
        at: assigned_at,
    };
    // Decided first on the task as read, by the task's own rules: an assignment it
    // refuses (not assignable, its retry not due, the implementer to validate its own
    // work) starts no lease below — a lease left to a spawning agent that holds nothing
    // would fail the agent once it expired.
    task.decide(command.clone())
        .map_err(|refusal| ApiError::from_domain(&refusal))?;
    let (Some(organization_id), Some(project_id)) = (task.organization_id, task.project_id) else {
        return Err(ApiError::Internal(
            "task without organization or project".into(),
        ));
    };
    let now = Utc::now();
    let account = crate::billing::account_of(&state, organization_id).await?;
    if account.is_suspended(now) {
        return Err(crate::billing::payment_required(&BillingError::Suspended));
    }
    let assign = || async {
        // Holding work starts the agent's lease (unless it has one), as a claim does: an
        // agent that dies before its first heartbeat still has the task put back when the
        // lease expires (without one, nothing ever did). Started first, so that a lease
        // that cannot be written fails the assignment with nothing assigned; never renewed
        // here — a person's assignment is no sign of the agent's life.
        omoi_orchestrator::leases::start(state.pool(), body.agent_id, organization_id)
            .await
            .map_err(ApiError::from)?;
        let committed = state
            .execute::<Task>(&caller, Permission::TaskExecute, "AssignTask", id, command)
            .await?;
        crate::agents::keep_if_agent_takes_work(&state, &caller, id, body.agent_id, assigned_at)
            .await?;
        let version = committed.version as u64;
        Ok::<_, ApiError>((Json(Versioned::committed(id, committed)), version))
    };
    let cap = state.billing.plans.concurrency_cap(&account, now);
    if cap == usize::MAX {
        return assign().await.map(|(assigned, _)| assigned);
    }
    let place = Place {
        task_id: id,
        organization_id,
        project_id,
        agent_id: body.agent_id,
    };
    let still_held = |task_id: Uuid| {
        let state = &state;
        async move {
            let (task, _) = state.load::<Task>(task_id).await?;
            Ok::<_, ApiError>(task.holds_a_place())
        }
    };
    state
        .claims
        .assign_within_cap(&state.live, place, cap, still_held, assign)
        .await?
        .ok_or_else(|| ApiError::PaymentRequired {
            code: "concurrency_cap_reached",
            detail: format!(
                "the organization's plan runs {cap} task(s) at once, and as many are assigned \
                 or running: one must end first, or the plan must change \
                 (checkout: POST /api/v1/billing/checkout)"
            ),
        })
}

/// The assigned agent began working: `assigned → running`.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/start", tag = "tasks",
    params(("id" = Uuid, Path),
        ("Omoi-Assignment" = Option<chrono::DateTime<chrono::Utc>>, Header, nullable = false, description = "the `assigned_at` the \
            claim answered: the step is refused once the task was assigned again, also to \
            the same agent (409 `assignment_superseded`)")),
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 403, body = Problem, description = "the role lacks `task:execute`, or an \
            agent's credential on a task assigned to another agent (`held_by_another_agent`)"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the task is not assigned; `assignment_superseded`"),
    ))]
async fn start_task(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    assignment: Assignment,
) -> TaskResponse {
    let command = as_sent_by(
        &caller,
        assignment,
        TaskCommand::StartTask { at: Utc::now() },
    );
    state
        .execute_versioned::<Task>(&caller, Permission::TaskExecute, "StartTask", id, command)
        .await
}

/// Records the latest progress message of a running task (a status line, not a log).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/progress", tag = "tasks",
    params(("id" = Uuid, Path),
        ("Omoi-Assignment" = Option<chrono::DateTime<chrono::Utc>>, Header, nullable = false, description = "the `assigned_at` the \
            claim answered: the step is refused once the task was assigned again, also to \
            the same agent (409 `assignment_superseded`)")), request_body = ReportProgress,
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 403, body = Problem, description = "the role lacks `task:execute`, or an \
            agent's credential on a task assigned to another agent (`held_by_another_agent`)"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the task is not running; `assignment_superseded`"),
        (status = 422, body = Problem),
    ))]
async fn report_progress(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    assignment: Assignment,
    Body(body): Body<ReportProgress>,
) -> TaskResponse {
    let command = as_sent_by(
        &caller,
        assignment,
        TaskCommand::ReportProgress {
            message: body.message,
        },
    );
    state
        .execute_versioned::<Task>(
            &caller,
            Permission::TaskExecute,
            "ReportProgress",
            id,
            command,
        )
        .await
}

/// Completes a running task with its result: `running → completed`, or
/// `running → pending_validation` for work that must pass validation (a `validate` task
/// is then queued for another agent). A validation task completes by its verdict instead.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/complete", tag = "tasks",
    params(("id" = Uuid, Path),
        ("Omoi-Assignment" = Option<chrono::DateTime<chrono::Utc>>, Header, nullable = false, description = "the `assigned_at` the \
            claim answered: the step is refused once the task was assigned again, also to \
            the same agent (409 `assignment_superseded`)")), request_body = CompleteTask,
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 403, body = Problem, description = "the role lacks `task:execute`, or an \
            agent's credential on a task assigned to another agent (`held_by_another_agent`)"),
        (status = 404, body = Problem),
        (status = 409, body = Problem,
            description = "the task is not running, waits for its discoveries, or is a \
                           validation task (`verdict_required`); `assignment_superseded`"),
    ))]
async fn complete_task(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    assignment: Assignment,
    Body(body): Body<CompleteTask>,
) -> TaskResponse {
    let command = as_sent_by(
        &caller,
        assignment,
        TaskCommand::CompleteTask {
            result: body.result,
            at: Utc::now(),
        },
    );
    state
        .execute_versioned::<Task>(
            &caller,
            Permission::TaskExecute,
            "CompleteTask",
            id,
            command,
        )
        .await
}

/// The verdict of a running validation task on the work it checks: the validation task
/// completes with it as its result, and the work completes (passed) or goes back for
/// revision with the feedback (`needs_revision`), failing for good once its revisions
/// are spent — applied by the `validation` process manager.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/verdict", tag = "tasks",
    params(("id" = Uuid, Path),
        ("Omoi-Assignment" = Option<chrono::DateTime<chrono::Utc>>, Header, nullable = false, description = "the `assigned_at` the \
            claim answered: the step is refused once the task was assigned again, also to \
            the same agent (409 `assignment_superseded`)")), request_body = GiveVerdict,
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 403, body = Problem, description = "the role lacks `task:execute`, or an \
            agent's credential on a task assigned to another agent (`held_by_another_agent`)"),
        (status = 404, body = Problem),
        (status = 409, body = Problem,
            description = "the task is not running or is not a validation task \
                           (`not_a_validation`); `assignment_superseded`"),
        (status = 422, body = Problem, description = "a rejection without feedback"),
    ))]
async fn give_verdict(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    assignment: Assignment,
    Body(body): Body<GiveVerdict>,
) -> TaskResponse {
    let command = as_sent_by(
        &caller,
        assignment,
        TaskCommand::GiveVerdict {
            verdict: Verdict {
                passed: body.passed,
                feedback: body.feedback,
            },
            at: Utc::now(),
        },
    );
    state
        .execute_versioned::<Task>(&caller, Permission::TaskExecute, "GiveVerdict", id, command)
        .await
}

/// Records a failed attempt of an assigned or running task. A permanent error, or a
/// failure with no retry left, ends the task (`permanently_failed`); otherwise a retry
/// is scheduled after an exponential, jittered backoff (`retry_scheduled`).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/fail", tag = "tasks",
    params(("id" = Uuid, Path),
        ("Omoi-Assignment" = Option<chrono::DateTime<chrono::Utc>>, Header, nullable = false, description = "the `assigned_at` the \
            claim answered: the step is refused once the task was assigned again, also to \
            the same agent (409 `assignment_superseded`)")), request_body = FailTask,
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 403, body = Problem, description = "the role lacks `task:execute`, or an \
            agent's credential on a task assigned to another agent (`held_by_another_agent`)"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the task is neither assigned nor running; `assignment_superseded`"),
        (status = 422, body = Problem),
    ))]
async fn fail_task(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    assignment: Assignment,
    Body(body): Body<FailTask>,
) -> TaskResponse {
    let command = as_sent_by(
        &caller,
        assignment,
        TaskCommand::FailTask {
            error: body.error,
            at: Utc::now(),
            jitter: rand::random::<f64>(),
        },
    );
    state
        .execute_versioned::<Task>(&caller, Permission::TaskExecute, "FailTask", id, command)
        .await
}

/// Cancels a task that has not ended, or gives up on one that failed for good or timed
/// out (its ticket and a parent it blocks as a discovery then count it as ended); a blank
/// reason is stored as none.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = Uuid, Path)), request_body = CancelTask,
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the task completed or was cancelled"),
        (status = 422, body = Problem),
    ))]
async fn cancel_task(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<CancelTask>,
) -> TaskResponse {
    let command = TaskCommand::CancelTask {
        reason: body.reason,
        at: Utc::now(),
    };
    state
        .execute_versioned::<Task>(&caller, Permission::TaskWrite, "CancelTask", id, command)
        .await
}

/// Makes the task wait for another task of the same project. Dependencies change only
/// while the task waits for an agent (`pending` or `retry_scheduled`).
#[utoipa::path(post, path = "/api/v1/tasks/{id}/dependencies", tag = "tasks",
    params(("id" = Uuid, Path)), request_body = AddDependency,
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 404, body = Problem,
            description = "no such task, or `dependency_not_found`"),
        (status = 409, body = Problem,
            description = "the graph refuses the edge: already a dependency, dependencies \
                           frozen, the task itself (`self_dependency`), another project's \
                           task, too many, a cycle (`dependency_cycle`, the path in \
                           `detail`), or a project whose log holds more than 20,000 \
                           dependency changes to check (`dependency_graph_too_large`)"),
    ))]
async fn add_dependency(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<AddDependency>,
) -> TaskResponse {
    let (task, _) = state
        .read::<Task>(&caller, Permission::TaskWrite, id)
        .await?;
    let from = Referrer {
        project: task
            .scope()
            .ok_or_else(|| ApiError::Internal("task without organization".into()))?,
        sees_other_projects: caller.project_limit().is_none(),
    };
    // Held until the edge has committed: a concurrent addition closing a cycle with this
    // one waits, then sees this edge.
    let _lock =
        admission::new_dependency(&state.bus, state.pool(), from, id, body.depends_on).await?;
    let command = TaskCommand::AddDependency {
        depends_on: body.depends_on,
    };
    state
        .execute_versioned::<Task>(&caller, Permission::TaskWrite, "AddDependency", id, command)
        .await
}

/// Stops the task waiting for `dep`. Dependencies change only while the task waits for
/// an agent (`pending` or `retry_scheduled`).
#[utoipa::path(delete, path = "/api/v1/tasks/{id}/dependencies/{dep}", tag = "tasks",
    params(("id" = Uuid, Path), ("dep" = Uuid, Path, description = "the dependency to remove")),
    responses(
        (status = 200, body = Versioned<Task>), (status = 400, body = Problem),
        (status = 404, body = Problem, description = "no such task"),
        (status = 409, body = Problem,
            description = "not a dependency, or dependencies are frozen"),
    ))]
async fn remove_dependency(
    State(state): State<AppState>,
    caller: Caller,
    DependencyPath { id, dep }: DependencyPath,
) -> TaskResponse {
    let command = TaskCommand::RemoveDependency { depends_on: dep };
    state
        .execute_versioned::<Task>(
            &caller,
            Permission::TaskWrite,
            "RemoveDependency",
            id,
            command,
        )
        .await
}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/history", tag = "tasks",
    params(("id" = Uuid, Path), HistoryQuery),
    responses(
        (status = 200, body = History<Task>), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem),
    ))]
async fn task_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<History<Task>>> {
    history_of::<Task>(&state, &caller, Permission::TaskRead, id, &query).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_task_route_is_documented() {
        let document = crate::openapi();
        let paths = &document.paths.paths;
        for path in [
            "/api/v1/tasks",
            "/api/v1/tasks/{id}",
            "/api/v1/tasks/{id}/assign",
            "/api/v1/tasks/{id}/start",
            "/api/v1/tasks/{id}/progress",
            "/api/v1/tasks/{id}/complete",
            "/api/v1/tasks/{id}/fail",
            "/api/v1/tasks/{id}/cancel",
            "/api/v1/tasks/{id}/dependencies",
            "/api/v1/tasks/{id}/dependencies/{dep}",
            "/api/v1/tasks/{id}/history",
            "/api/v1/tasks/{id}/logs",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
    }
}
