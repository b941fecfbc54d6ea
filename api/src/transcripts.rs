//! `/api/v1/tasks/{id}/logs`: a task's transcript — every line its attempts wrote.
//!
//! In-process agents' lines are written by the worker; an HTTP agent posts its own while
//! it runs the task. Lines are kept in `task_logs` (`omoi_store::transcripts`), numbered
//! from 1 per attempt, for `worker.transcript_retention_hours` after the attempt's last
//! line. Progress (`/progress`) stays what it was: the latest status line, an event.

use axum::extract::State;
use axum::Json;
use omoi_domain::access::Permission;
use omoi_domain::task::{Task, TaskStatus};
use omoi_store::transcripts::{
    self, Attempt, MAX_LINE_CHARS, MAX_PAGE_BYTES, MAX_PAGE_LINES, MAX_WRITE_LINES,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Assignment, Body, IdPath, Query};
use crate::state::AppState;
use crate::tasks::check_holder;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read_logs, write_logs))
}

/// Above any attempt a task can reach (retries are bounded far below).
const MAX_ATTEMPT: u32 = 1_000;

/// Lines a page holds when no `limit` is asked for.
const DEFAULT_PAGE_LINES: i64 = 1_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteLogs {
    /// 1 to 1,000 lines, in the order written; each at most 4,000 characters and without
    /// a line break.
    #[schema(schema_with = crate::schemas::log_lines)]
    pub lines: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogsWritten {
    pub task_id: Uuid,
    /// The attempt the lines belong to (the task's current run, from 1).
    pub attempt: u32,
    /// The attempt's line count, i.e. the number of the last line just written.
    pub lines: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    /// Which attempt (from 1); default: the newest one with lines, else the current one.
    #[param(minimum = 1, maximum = 1000)]
    pub attempt: Option<u32>,
    /// Lines after this number (default 0: from the first).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Lines per page, 1 to 10,000 (default 1,000). A page also ends once its lines weigh
    /// 4 MiB as JSON strings (it holds at least one): page on with `next_after`.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogLine {
    /// From 1, per attempt.
    pub number: i64,
    pub text: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptLines {
    pub attempt: u32,
    pub lines: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Transcript {
    pub task_id: Uuid,
    pub attempt: u32,
    /// Every attempt that has lines, with its line count.
    pub attempts: Vec<AttemptLines>,
    pub lines: Vec<LogLine>,
    /// `after` for the next page: the last line's number here, or `after` again when
    /// there was nothing new (poll again, or follow the task's events).
    pub next_after: i64,
}

/// Appends lines to the transcript of the task's current attempt. Only while the task
/// runs, and, for an agent's credential, only by the agent holding it.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/logs", tag = "tasks",
    params(("id" = Uuid, Path),
        ("Omoi-Assignment" = Option<chrono::DateTime<chrono::Utc>>, Header, nullable = false, description = "the `assigned_at` the \
            claim answered: the step is refused once the task was assigned again, also to \
            the same agent (409 `assignment_superseded`)")), request_body = WriteLogs,
    responses(
        (status = 200, body = LogsWritten), (status = 400, body = Problem),
        (status = 403, body = Problem,
            description = "the role lacks task:execute, or the task is another agent's"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "`task_not_running`; `assignment_superseded`"),
        (status = 413, body = Problem),
        (status = 422, body = Problem,
            description = "`no_lines`, `too_many_lines`, `line_too_long`, `line_break`, \
                           `nul_character`"),
    ))]
async fn write_logs(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    assignment: Assignment,
    Body(body): Body<WriteLogs>,
) -> ApiResult<Json<LogsWritten>> {
    check_lines(&body.lines)?;
    let (task, _) = state
        .read::<Task>(&caller, Permission::TaskExecute, id)
        .await?;
    check_holder(&caller, assignment, &task)?;
    if task.status != TaskStatus::Running {
        return Err(ApiError::Conflict {
            code: "task_not_running",
            detail: format!(
                "task {id} is {}: lines are taken while it runs",
                task.status.as_str()
            ),
        });
    }
    let Some(organization_id) = task.organization_id else {
        return Err(ApiError::NotFound { what: "task" });
    };
    let attempt = task.attempt();
    let lines = transcripts::append(
        state.pool(),
        Attempt {
            task_id: id,
            attempt,
            organization_id,
        },
        &body.lines,
    )
    .await?;
    state.live.transcript_written(id, attempt, lines);
    Ok(Json(LogsWritten {
        task_id: id,
        attempt,
        lines,
    }))
}

/// One rule per way a batch of lines can be wrong, each naming the line.
fn check_lines(lines: &[String]) -> ApiResult<()> {
    let invalid = |code, detail: String, field: String| ApiError::Invalid {
        code,
        detail,
        field: Some(field),
    };
    if lines.is_empty() {
        return Err(invalid(
            "no_lines",
            "send at least one line".into(),
            "lines".into(),
        ));
    }
    if lines.len() > MAX_WRITE_LINES {
        return Err(invalid(
            "too_many_lines",
            format!(
                "{} lines in one request; at most {MAX_WRITE_LINES}",
                lines.len()
            ),
            "lines".into(),
        ));
    }
    for (index, line) in lines.iter().enumerate() {
        if line.chars().count() > MAX_LINE_CHARS {
            return Err(invalid(
                "line_too_long",
                format!("line {index} is longer than {MAX_LINE_CHARS} characters"),
                format!("lines[{index}]"),
            ));
        }
        if line.contains(['\n', '\r']) {
            return Err(invalid(
                "line_break",
                format!("line {index} holds a line break: send each line as its own string"),
                format!("lines[{index}]"),
            ));
        }
    }
    Ok(())
}

/// A page of one attempt's transcript, in order.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/logs", tag = "tasks",
    params(("id" = Uuid, Path), LogsQuery),
    responses(
        (status = 200, body = Transcript), (status = 400, body = Problem),
        (status = 404, body = Problem),
    ))]
async fn read_logs(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Json<Transcript>> {
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request(
            "after must be 0 or more",
            Some("after"),
        ));
    }
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_LINES);
    if !(1..=MAX_PAGE_LINES).contains(&limit) {
        return Err(ApiError::bad_request(
            format!("limit must be between 1 and {MAX_PAGE_LINES}"),
            Some("limit"),
        ));
    }
    if query
        .attempt
        .is_some_and(|a| !(1..=MAX_ATTEMPT).contains(&a))
    {
        return Err(ApiError::bad_request(
            format!("attempts are numbered from 1 to at most {MAX_ATTEMPT}"),
            Some("attempt"),
        ));
    }
    let (task, _) = state
        .read::<Task>(&caller, Permission::TaskRead, id)
        .await?;
    let attempts = transcripts::attempts(state.pool(), id).await?;
    let attempt = query
        .attempt
        .or_else(|| attempts.last().map(|(attempt, _)| *attempt))
        .unwrap_or_else(|| task.attempt());
    let lines = transcripts::read(state.pool(), id, attempt, after, limit, MAX_PAGE_BYTES).await?;
    let next_after = lines.last().map_or(after, |line| line.number);
    Ok(Json(Transcript {
        task_id: id,
        attempt,
        attempts: attempts
            .into_iter()
            .map(|(attempt, lines)| AttemptLines { attempt, lines })
            .collect(),
        lines: lines
            .into_iter()
            .map(|line| LogLine {
                number: line.number,
                text: line.text,
            })
            .collect(),
        next_after,
    }))
}
