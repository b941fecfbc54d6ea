//! `GET /api/v1/specs/{id}/export`: a spec as one document — Markdown, YAML or JSON — now
//! or as of a position of the log (`omoi_workflow::export`).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use omoi_domain::access::Permission;
use omoi_domain::spec::Spec;
use omoi_workflow::export::{self, ExportError, SpecDocument};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{IdPath, Query};
use crate::read::{checked_as_of, replay_turn};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_spec))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Markdown,
    Yaml,
    Json,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `markdown` (default), `yaml` or `json`.
    #[param(inline)]
    pub format: Option<ExportFormat>,
    /// A global position of the log: the document as it stood then.
    #[param(minimum = 0)]
    pub as_of: Option<i64>,
}

/// The spec as one document: its requirements as EARS sentences (`**WHEN** … **THE
/// SYSTEM SHALL** …`) whose acceptance criteria are ticked once every task serving the
/// requirement completed, its design, and its plan with each ticket's and task's status
/// and result. YAML starts with a front-matter document (id, title, phase, version). With
/// `as_of`, each history is folded up to its last event at or before that position.
#[utoipa::path(get, path = "/api/v1/specs/{id}/export", tag = "specs",
    params(("id" = Uuid, Path), ExportQuery),
    responses(
        (status = 200, description = "the document in the format asked for",
            content(
                (String = "text/markdown"),
                (String = "application/yaml"),
                (SpecDocument = "application/json"),
            )),
        (status = 400, body = Problem, description = "a bad format or position"),
        (status = 404, body = Problem,
            description = "no such spec, or none yet at the position asked for"),
    ))]
async fn export_spec(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    Query(query): Query<ExportQuery>,
) -> ApiResult<Response> {
    state
        .read::<Spec>(&caller, Permission::SpecRead, id)
        .await?;
    let as_of = checked_as_of(query.as_of)?;
    // The document folds the histories of the spec and of every ticket and task of its
    // plan (up to 250): a turn of the limiter past states take, so that exports at once
    // are bounded (429 beyond) as the views `as_of` are.
    let _turn = replay_turn(&state).await?;
    let document =
        export::document(state.pool(), id, as_of)
            .await
            .map_err(|error| match error {
                ExportError::Database(e) => ApiError::from(e),
                ExportError::NotYet(_) => ApiError::NotFound {
                    what: "spec at that position",
                },
                ExportError::Corrupt(e) => ApiError::Internal(e.to_string()),
            })?;
    Ok(render(&document, query.format.unwrap_or_default()))
}

fn render(document: &SpecDocument, format: ExportFormat) -> Response {
    match format {
        ExportFormat::Json => Json(document).into_response(),
        ExportFormat::Markdown => (
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            export::markdown(document),
        )
            .into_response(),
        ExportFormat::Yaml => (
            [(header::CONTENT_TYPE, "application/yaml; charset=utf-8")],
            export::yaml(document),
        )
            .into_response(),
    }
}
