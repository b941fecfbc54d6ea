//! Operational endpoints: health, metrics, the OpenAPI document and its viewer.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Problem};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(projections))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub database: &'static str,
}

/// Healthy when the database answers.
#[utoipa::path(get, path = "/health", tag = "system", security(()),
    responses((status = 200, body = Health), (status = 503, body = Problem)))]
async fn health(State(state): State<AppState>) -> ApiResult<Json<Health>> {
    sqlx::query("select 1").execute(state.pool()).await?;
    Ok(Json(Health {
        status: "ok",
        database: "ok",
    }))
}

/// Prometheus text exposition: `omoi_commands_total{command,outcome}`,
/// `omoi_command_duration_seconds{command}`, the projectors' gauges and batch counter, and
/// `omoi_live_sockets` / `omoi_live_followers`, and `omoi_claims_waiting`.
#[utoipa::path(get, path = "/metrics", tag = "system", security(()),
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let mut text = state
        .metrics
        .render()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(projections) = &state.projections {
        text.push_str(&projections.render_prometheus());
    }
    text.push_str(&state.live.render_prometheus());
    text.push_str(&state.claims.render_prometheus());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// One projector build, as `GET /api/v1/projections` reports it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectionStatus {
    pub projector: String,
    pub build: i64,
    /// `live` (serving readers) or `building` (catching up beside the live build).
    pub state: String,
    pub code_version: i32,
    /// The checkpoint: everything up to this cursor is applied.
    pub cursor: String,
    pub events_applied: i64,
    /// Where a poison event stopped the build, and why; `omoi projections retry` resumes.
    pub failed_at: Option<String>,
    pub error: Option<String>,
    /// Whether this process leads the build, and its last measured lag.
    pub led_here: bool,
    pub lag_events: Option<i64>,
    pub lag_ms: Option<i64>,
}

/// Where every read model stands, and any projector a poison event stopped. The error text
/// can name ids of any organization, so only super administrators see it.
#[utoipa::path(get, path = "/api/v1/projections", tag = "system",
    responses((status = 200, body = Vec<ProjectionStatus>), (status = 401, body = Problem)))]
async fn projections(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
) -> ApiResult<Json<Vec<ProjectionStatus>>> {
    let builds = omoi_projections::catalog::status(state.pool()).await?;
    let local = state
        .projections
        .as_ref()
        .map(|stats| stats.snapshot())
        .unwrap_or_default();
    let statuses = builds
        .into_iter()
        .map(|build| {
            let here = local.iter().find(|s| s.build == build.build && s.leader);
            let (failed_at, error) = match build.failure {
                Some((at, error)) => (
                    Some(at.to_string()),
                    Some(if caller.is_super_admin() {
                        error
                    } else {
                        "stopped at a poison event".to_string()
                    }),
                ),
                None => (None, None),
            };
            ProjectionStatus {
                projector: build.projector,
                build: build.build,
                state: build.state.as_str().to_string(),
                code_version: build.code_version,
                cursor: build.cursor.to_string(),
                events_applied: build.events_applied,
                failed_at,
                error,
                led_here: here.is_some(),
                lag_events: here.map(|s| s.lag_events),
                lag_ms: here.map(|s| s.lag_ms),
            }
        })
        .collect();
    Ok(Json(statuses))
}

/// Any path no route matches.
pub async fn not_found() -> ApiError {
    ApiError::NotFound { what: "route" }
}

/// A known path with a method it does not support.
pub async fn method_not_allowed() -> impl IntoResponse {
    let problem = Problem {
        kind: "urn:omoi:problem:method_not_allowed".into(),
        title: "Method Not Allowed".into(),
        status: 405,
        detail: "this path does not support that method".into(),
        field: None,
        code: "method_not_allowed".into(),
    };
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::to_string(&problem).unwrap_or_default(),
    )
}
