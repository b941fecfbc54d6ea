//! Operational endpoints: health, metrics, the OpenAPI document and its viewer.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
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

/// Prometheus text exposition: `omoi_commands_total{command,outcome}` and
/// `omoi_command_duration_seconds{command}`.
#[utoipa::path(get, path = "/metrics", tag = "system", security(()),
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> ApiResult<impl IntoResponse> {
    let text = state
        .metrics
        .render()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// Swagger UI for `/openapi.json`. The viewer's scripts come from a CDN so that the
/// binary stays small; the document itself is served by us.
pub async fn docs() -> Html<&'static str> {
    Html(
        r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>omoi API</title>
  <link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
  <div id="ui"></div>
  <script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
  <script>SwaggerUIBundle({ url: "/openapi.json", dom_id: "#ui" });</script>
</body>
</html>"##,
    )
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
