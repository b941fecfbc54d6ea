//! `/api/v1/projects`: create, read, rename, archive, history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use omoi_domain::access::Permission;
use omoi_domain::organization::Organization;
use omoi_domain::project::{Project, ProjectCommand, ProjectSettings, SettingsChange, StallPolicy};
use omoi_workflow::admission::{self, AdmissionError};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, IdPath, Query};
use crate::history::{history_of, HistoryQuery};
use crate::organizations::Rename;
use crate::responses::{History, Versioned};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project))
        .routes(routes!(get_project))
        .routes(routes!(rename_project))
        .routes(routes!(archive_project))
        .routes(routes!(change_settings))
        .routes(routes!(project_history))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub organization_id: Uuid,
    #[schema(schema_with = crate::schemas::title)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = crate::schemas::text)]
    pub description: String,
    /// Settings to start with; an absent one takes its default.
    pub settings: Option<ChangeSettings>,
}

/// Loads a project that `caller` may add work to with `permission`: 404 when it does not
/// exist (or is not visible), 403 without the permission, 409 when admission refuses it
/// (archived: `admission::project_takes_work`).
pub async fn active_project(
    state: &AppState,
    caller: &Caller,
    permission: Permission,
    id: Uuid,
) -> ApiResult<Project> {
    let (project, _) = state.read::<Project>(caller, permission, id).await?;
    admission::project_takes_work(id, &project).map_err(AdmissionError::from)?;
    Ok(project)
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects",
    request_body = CreateProject,
    responses(
        (status = 201, body = Versioned<Project>), (status = 400, body = Problem),
        (status = 404, body = Problem, description = "no such organization"),
        (status = 409, body = Problem, description = "the organization is archived"),
        (status = 422, body = Problem),
    ))]
async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateProject>,
) -> ApiResult<(StatusCode, Json<Versioned<Project>>)> {
    let (organization, _) = state
        .read::<Organization>(&caller, Permission::ProjectWrite, body.organization_id)
        .await?;
    if !organization.is_active() {
        return Err(ApiError::Conflict {
            code: "organization_archived",
            detail: "the organization is archived; no project can be added to it".into(),
        });
    }
    let id = Uuid::now_v7();
    let command = ProjectCommand::CreateProject {
        project_id: id,
        organization_id: body.organization_id,
        name: body.name,
        description: body.description,
        settings: body
            .settings
            .map(SettingsChange::from)
            .unwrap_or_default()
            .over(ProjectSettings::default()),
        at: Utc::now(),
    };
    let committed = state
        .create::<Project>(&caller, "CreateProject", id, command)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Versioned::committed(id, committed)),
    ))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Versioned<Project>), (status = 404, body = Problem)))]
async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Versioned<Project>>> {
    let loaded = state
        .read::<Project>(&caller, Permission::ProjectRead, id)
        .await?;
    Ok(Json(Versioned::read(id, loaded)))
}

/// The settings to change; an absent one stays as it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeSettings {
    /// Tickets move by themselves as their tasks do (default on).
    pub auto_advance: Option<bool>,
    /// A ticket made by hand gets the task of its phase (default on).
    pub auto_spawn_tasks: Option<bool>,
    /// Every `implement` task of a spec's plan must pass validation (default on).
    pub validation_required: Option<bool>,
    /// What is done about a running task with no progress for `monitoring.stuck_after_ms`:
    /// `nudge` (a steering message to its agent; the default), `restart` (the attempt
    /// fails and is retried), `escalate` (its ticket is blocked `failing_checks`).
    #[schema(inline)]
    pub stall_policy: Option<StallPolicy>,
}

impl From<ChangeSettings> for SettingsChange {
    fn from(body: ChangeSettings) -> Self {
        Self {
            auto_advance: body.auto_advance,
            auto_spawn_tasks: body.auto_spawn_tasks,
            validation_required: body.validation_required,
            stall_policy: body.stall_policy,
        }
    }
}

/// Changes the project's workflow settings. Setting what is already set records nothing.
#[utoipa::path(patch, path = "/api/v1/projects/{id}/settings", tag = "projects",
    params(("id" = Uuid, Path)), request_body = ChangeSettings,
    responses(
        (status = 200, body = Versioned<Project>), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the project is archived"),
    ))]
async fn change_settings(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<ChangeSettings>,
) -> ApiResult<Json<Versioned<Project>>> {
    let command = ProjectCommand::ChangeSettings {
        change: body.into(),
    };
    state
        .execute_versioned::<Project>(
            &caller,
            Permission::ProjectWrite,
            "ChangeSettings",
            id,
            command,
        )
        .await
}

#[utoipa::path(post, path = "/api/v1/projects/{id}/rename", tag = "projects",
    params(("id" = Uuid, Path)), request_body = Rename,
    responses(
        (status = 200, body = Versioned<Project>), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem),
    ))]
async fn rename_project(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<Rename>,
) -> ApiResult<Json<Versioned<Project>>> {
    let command = ProjectCommand::RenameProject { name: body.name };
    let committed = state
        .execute::<Project>(
            &caller,
            Permission::ProjectWrite,
            "RenameProject",
            id,
            command,
        )
        .await?;
    Ok(Json(Versioned::committed(id, committed)))
}

#[utoipa::path(post, path = "/api/v1/projects/{id}/archive", tag = "projects",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Project>), (status = 404, body = Problem),
        (status = 409, body = Problem),
    ))]
async fn archive_project(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> ApiResult<Json<Versioned<Project>>> {
    let command = ProjectCommand::ArchiveProject { at: Utc::now() };
    let committed = state
        .execute::<Project>(
            &caller,
            Permission::ProjectWrite,
            "ArchiveProject",
            id,
            command,
        )
        .await?;
    Ok(Json(Versioned::committed(id, committed)))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}/history", tag = "projects",
    params(("id" = Uuid, Path), HistoryQuery),
    responses(
        (status = 200, body = History<Project>), (status = 404, body = Problem),
        (status = 422, body = Problem),
    ))]
async fn project_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<History<Project>>> {
    history_of::<Project>(&state, &caller, Permission::ProjectRead, id, &query).await
}
