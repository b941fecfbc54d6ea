//! `/api/v1/specs`: create, read, requirements, design, approvals, complete, archive,
//! history.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use omoi_domain::access::Permission;
use omoi_domain::spec::{Design, Plan, Requirement, Spec, SpecCommand};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, IdPath, Query};
use crate::history::{history_of, HistoryQuery};
use crate::projects::active_project;
use crate::responses::{History, Versioned};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_spec))
        .routes(routes!(get_spec))
        .routes(routes!(add_requirement))
        .routes(routes!(update_requirement, remove_requirement))
        .routes(routes!(approve_requirements))
        .routes(routes!(set_design))
        .routes(routes!(approve_design))
        .routes(routes!(set_plan))
        .routes(routes!(approve_plan))
        .routes(routes!(complete_spec))
        .routes(routes!(archive_spec))
        .routes(routes!(spec_history))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSpec {
    pub project_id: Uuid,
    #[schema(schema_with = crate::schemas::title)]
    pub title: String,
    #[serde(default)]
    #[schema(schema_with = crate::schemas::text)]
    pub description: String,
}

/// One EARS requirement: WHEN `condition`, THE SYSTEM SHALL `action`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRequirement {
    /// `REQ-` then uppercase letter/digit groups joined by `-`, e.g. `REQ-AUTH-001`;
    /// unique within the spec.
    #[schema(schema_with = crate::schemas::requirement_id)]
    pub id: String,
    /// The WHEN clause.
    #[schema(schema_with = crate::schemas::clause)]
    pub condition: String,
    /// The THE SYSTEM SHALL clause.
    #[schema(schema_with = crate::schemas::clause)]
    pub action: String,
    /// At least one.
    #[schema(schema_with = crate::schemas::acceptance_criteria)]
    pub acceptance_criteria: Vec<String>,
}

/// The new content of the requirement named in the path.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequirement {
    /// The WHEN clause.
    #[schema(schema_with = crate::schemas::clause)]
    pub condition: String,
    /// The THE SYSTEM SHALL clause.
    #[schema(schema_with = crate::schemas::clause)]
    pub action: String,
    /// At least one.
    #[schema(schema_with = crate::schemas::acceptance_criteria)]
    pub acceptance_criteria: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDesign {
    #[schema(schema_with = crate::schemas::statement)]
    pub architecture: String,
    #[serde(default)]
    #[schema(schema_with = crate::schemas::text)]
    pub data_model: String,
    #[serde(default)]
    #[schema(schema_with = crate::schemas::text)]
    pub api_spec: String,
}

/// The path `/api/v1/specs/{id}/requirements/{req_id}`.
pub struct RequirementPath {
    pub id: Uuid,
    pub req_id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for RequirementPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((id, req_id)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text(), None))?;
        let id = id
            .parse::<Uuid>()
            .map_err(|_| ApiError::bad_request(format!("{id:?} is not a UUID"), Some("id")))?;
        Ok(Self { id, req_id })
    }
}

type SpecResponse = ApiResult<Json<Versioned<Spec>>>;

/// Creates a spec in `draft` in an active project.
#[utoipa::path(post, path = "/api/v1/specs", tag = "specs", request_body = CreateSpec,
    responses(
        (status = 201, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem, description = "no such project"),
        (status = 409, body = Problem, description = "the project is archived"),
        (status = 422, body = Problem),
    ))]
async fn create_spec(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateSpec>,
) -> ApiResult<(StatusCode, Json<Versioned<Spec>>)> {
    let project = active_project(&state, &caller, Permission::SpecWrite, body.project_id).await?;
    let organization_id = project
        .organization_id
        .ok_or_else(|| ApiError::Internal("project without organization".into()))?;
    let id = Uuid::now_v7();
    let command = SpecCommand::CreateSpec {
        spec_id: id,
        organization_id,
        project_id: body.project_id,
        title: body.title,
        description: body.description,
        at: Utc::now(),
    };
    let created = Versioned::committed(
        id,
        state
            .create::<Spec>(&caller, "CreateSpec", id, command)
            .await?,
    );
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/specs/{id}", tag = "specs", params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem),
    ))]
async fn get_spec(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> SpecResponse {
    let loaded = state
        .read::<Spec>(&caller, Permission::SpecRead, id)
        .await?;
    Ok(Json(Versioned::read(id, loaded)))
}

/// Adds an EARS requirement while the spec is in `draft` or `requirements`; the first
/// requirement moves a draft to `requirements`. Texts are trimmed; the id is checked as
/// given and must be new to the spec.
#[utoipa::path(post, path = "/api/v1/specs/{id}/requirements", tag = "specs",
    params(("id" = Uuid, Path)), request_body = NewRequirement,
    responses(
        (status = 200, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem,
            description = "duplicate id, requirements locked, or the spec is archived"),
        (status = 422, body = Problem),
    ))]
async fn add_requirement(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<NewRequirement>,
) -> SpecResponse {
    let command = SpecCommand::AddRequirement(Requirement {
        id: body.id,
        condition: body.condition,
        action: body.action,
        acceptance_criteria: body.acceptance_criteria,
    });
    state
        .execute_versioned::<Spec>(
            &caller,
            Permission::SpecWrite,
            "AddRequirement",
            id,
            command,
        )
        .await
}

/// Replaces a requirement's condition, action and acceptance criteria; only in the
/// `requirements` phase, and only when something changes.
#[utoipa::path(put, path = "/api/v1/specs/{id}/requirements/{req_id}", tag = "specs",
    params(("id" = Uuid, Path), ("req_id" = String, Path, pattern = "^REQ(-[A-Z0-9]+)+$", max_length = 64,
        description = "e.g. REQ-AUTH-001")),
    request_body = UpdateRequirement,
    responses(
        (status = 200, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem, description = "no such spec or requirement"),
        (status = 409, body = Problem,
            description = "requirements locked, or the spec is archived"),
        (status = 422, body = Problem, description = "invalid content, or nothing to change"),
    ))]
async fn update_requirement(
    State(state): State<AppState>,
    caller: Caller,
    RequirementPath { id, req_id }: RequirementPath,
    Body(body): Body<UpdateRequirement>,
) -> SpecResponse {
    let command = SpecCommand::UpdateRequirement(Requirement {
        id: req_id,
        condition: body.condition,
        action: body.action,
        acceptance_criteria: body.acceptance_criteria,
    });
    state
        .execute_versioned::<Spec>(
            &caller,
            Permission::SpecWrite,
            "UpdateRequirement",
            id,
            command,
        )
        .await
}

/// Removes a requirement; only in the `requirements` phase. Removing the last one keeps
/// the spec in `requirements`.
#[utoipa::path(delete, path = "/api/v1/specs/{id}/requirements/{req_id}", tag = "specs",
    params(("id" = Uuid, Path), ("req_id" = String, Path, pattern = "^REQ(-[A-Z0-9]+)+$", max_length = 64,
        description = "e.g. REQ-AUTH-001")),
    responses(
        (status = 200, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem, description = "no such spec or requirement"),
        (status = 409, body = Problem,
            description = "requirements locked, or the spec is archived"),
    ))]
async fn remove_requirement(
    State(state): State<AppState>,
    caller: Caller,
    RequirementPath { id, req_id }: RequirementPath,
) -> SpecResponse {
    let command = SpecCommand::RemoveRequirement { id: req_id };
    state
        .execute_versioned::<Spec>(
            &caller,
            Permission::SpecWrite,
            "RemoveRequirement",
            id,
            command,
        )
        .await
}

/// Accepts the requirements (at least one) and moves the spec to `design`.
#[utoipa::path(post, path = "/api/v1/specs/{id}/approve-requirements", tag = "specs",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem,
            description = "not in the requirements phase, or no requirements"),
    ))]
async fn approve_requirements(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> SpecResponse {
    let command = SpecCommand::ApproveRequirements { at: Utc::now() };
    state
        .execute_versioned::<Spec>(
            &caller,
            Permission::SpecApprove,
            "ApproveRequirements",
            id,
            command,
        )
        .await
}

/// Sets or replaces the design while the spec is in `design`; the architecture is
/// required.
#[utoipa::path(put, path = "/api/v1/specs/{id}/design", tag = "specs",
    params(("id" = Uuid, Path)), request_body = SetDesign,
    responses(
        (status = 200, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "not in the design phase"),
        (status = 422, body = Problem, description = "invalid design, or nothing to change"),
    ))]
async fn set_design(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(body): Body<SetDesign>,
) -> SpecResponse {
    let command = SpecCommand::SetDesign(Design {
        architecture: body.architecture,
        data_model: body.data_model,
        api_spec: body.api_spec,
    });
    state
        .execute_versioned::<Spec>(&caller, Permission::SpecWrite, "SetDesign", id, command)
        .await
}

/// Accepts the design (once set) and moves the spec to `tasks`, where its plan is written.
#[utoipa::path(post, path = "/api/v1/specs/{id}/approve-design", tag = "specs",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Spec>), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "not in the design phase, or no design"),
    ))]
async fn approve_design(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> SpecResponse {
    let command = SpecCommand::ApproveDesign { at: Utc::now() };
    state
        .execute_versioned::<Spec>(
            &caller,
            Permission::SpecApprove,
            "ApproveDesign",
            id,
            command,
        )
        .await
}

/// Sets (or replaces) the spec's plan while it is in `tasks`: tickets with keys, each
/// with its tasks; a task waits for tasks of the plan by key (any ticket), and tickets
/// and tasks name the spec's requirements they serve. Keys are unique in the plan; a
/// cycle, an unknown key or an unknown requirement is a 422 naming the place
/// (`tickets[1].tasks[0].depends_on[0]`). Setting the same plan again records nothing.
#[utoipa::path(put, path = "/api/v1/specs/{id}/plan", tag = "specs",
    params(("id" = Uuid, Path)), request_body = Plan,
    responses(
        (status = 200, body = Versioned<Spec>), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "`plan_locked`: not in the tasks phase"),
        (status = 422, body = Problem, description = "a rule of the plan, `field` naming the place"),
    ))]
async fn set_plan(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Body(plan): Body<Plan>,
) -> SpecResponse {
    let command = SpecCommand::SetPlan(plan);
    state
        .execute_versioned::<Spec>(&caller, Permission::SpecWrite, "SetPlan", id, command)
        .await
}

/// Accepts the plan (once set) and moves the spec to `executing`: a workflow, counted
/// against the organization's plan; approval and count commit together.
#[utoipa::path(post, path = "/api/v1/specs/{id}/approve-plan", tag = "specs",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Spec>), (status = 404, body = Problem),
        (status = 402, body = Problem,
            description = "the organization's plan allows no more workflows this period (and its \
                           credits do not cover one), or its account is suspended"),
        (status = 409, body = Problem,
            description = "not in the tasks phase, no plan, or the project is archived"),
    ))]
async fn approve_plan(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> SpecResponse {
    let (spec, _) = state
        .read::<Spec>(&caller, Permission::SpecApprove, id)
        .await?;
    let (Some(organization_id), Some(project_id)) = (spec.organization_id, spec.project_id) else {
        return Err(ApiError::Internal("spec without organization".into()));
    };
    // Its plan becomes new tickets and tasks of the project, which must take work.
    active_project(&state, &caller, Permission::SpecApprove, project_id).await?;
    // Executing a spec is a workflow: the plan must allow it (402 otherwise), and the
    // approval and the count commit together.
    let command = SpecCommand::ApprovePlan { at: Utc::now() };
    let approved = crate::billing::with_workflow(
        &state,
        &caller,
        Permission::SpecApprove,
        "ApprovePlan",
        id,
        organization_id,
        command,
    )
    .await?;
    Ok(Json(Versioned::committed(id, approved)))
}

/// Completes an executing spec (`spec_completion` does once every ticket of its plan is
/// done). Its plan's tasks still open are then cancelled and its workflow settled
/// (`spec_archival`), as when it is archived.
#[utoipa::path(post, path = "/api/v1/specs/{id}/complete", tag = "specs",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the spec is not executing"),
    ))]
async fn complete_spec(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> SpecResponse {
    let command = SpecCommand::CompleteSpec { at: Utc::now() };
    state
        .execute_versioned::<Spec>(&caller, Permission::SpecWrite, "CompleteSpec", id, command)
        .await
}

/// Archives the spec from any phase; an archived spec never changes again.
#[utoipa::path(post, path = "/api/v1/specs/{id}/archive", tag = "specs",
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Versioned<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "already archived"),
    ))]
async fn archive_spec(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> SpecResponse {
    let command = SpecCommand::ArchiveSpec { at: Utc::now() };
    state
        .execute_versioned::<Spec>(&caller, Permission::SpecWrite, "ArchiveSpec", id, command)
        .await
}

#[utoipa::path(get, path = "/api/v1/specs/{id}/history", tag = "specs",
    params(("id" = Uuid, Path), HistoryQuery),
    responses(
        (status = 200, body = History<Spec>), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem),
    ))]
async fn spec_history(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<HistoryQuery>,
) -> ApiResult<Json<History<Spec>>> {
    history_of::<Spec>(&state, &caller, Permission::SpecRead, id, &query).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_spec_route_is_documented() {
        let document = crate::openapi();
        let paths = &document.paths.paths;
        for path in [
            "/api/v1/specs",
            "/api/v1/specs/{id}",
            "/api/v1/specs/{id}/requirements",
            "/api/v1/specs/{id}/requirements/{req_id}",
            "/api/v1/specs/{id}/approve-requirements",
            "/api/v1/specs/{id}/design",
            "/api/v1/specs/{id}/approve-design",
            "/api/v1/specs/{id}/complete",
            "/api/v1/specs/{id}/archive",
            "/api/v1/specs/{id}/history",
        ] {
            assert!(paths.contains_key(path), "{path} is not documented");
        }
        let item = &paths["/api/v1/specs/{id}/requirements/{req_id}"];
        assert!(item.put.is_some() && item.delete.is_some());
    }
}
