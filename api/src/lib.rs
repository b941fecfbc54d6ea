//! The HTTP API of omoi (axum): a POST per command, a GET per aggregate, each aggregate's
//! history and state as of any event, the global event stream, health, metrics and the
//! OpenAPI document.
//!
//! # Layout
//!
//! * [`app`] builds the router from one [`state::AppState`]; [`mod@openapi`] the document.
//!   Routes and document come from the same `utoipa-axum` router, so a route cannot
//!   exist without its documentation; the statuses every route shares are added in one
//!   place.
//! * [`state`] — shared state and the one path every command takes.
//! * [`auth`] — callers, tokens, API keys and their routes.
//! * [`error`] — `ApiError`, rendered as `application/problem+json`.
//! * [`extract`] — JSON body, path and query extractors whose rejections are `ApiError`.
//! * [`responses`] — response bodies shared by several resources; [`schemas`] — the
//!   documented rules of request fields (lengths, patterns, counts).
//! * One module per resource: [`organizations`], [`projects`], [`tickets`], [`tasks`],
//!   [`specs`] (and [`spec_export`]), [`agents`], [`claims`], [`discoveries`], [`billing`],
//!   [`transcripts`] (task logs), [`guardian`] (interventions), [`monitoring`] (a
//!   project's supervision findings); [`history`] (per-aggregate history,
//!   global stream); [`system`].
//! * [`metrics`] — Prometheus counters and latency of commands.
//! * One module per read model: [`board`], [`graph`], [`timeline`], [`agent_views`],
//!   [`lists`] (lists and search of the directory);
//!   [`read`] — what their routes share (read errors, project scope, views `as_of`).
//! * [`live`] — WebSocket delivery: `/api/v1/ws` and the original's `/api/v1/ws/events`.
//! * [`dashboard`] — the web app (`omoi-web`'s embedded files) at `/`.

pub mod agent_views;
pub mod agents;
pub mod auth;
pub mod billing;
pub mod board;
pub mod claims;
pub mod dashboard;
pub mod discoveries;
pub mod error;
pub mod extract;
pub mod graph;
pub mod guardian;
pub mod history;
pub mod lists;
pub mod live;
pub mod metrics;
pub mod monitoring;
pub mod openapi;
pub mod organizations;
pub mod projects;
pub mod read;
pub mod responses;
pub mod schemas;
pub mod spec_export;
pub mod specs;
pub mod state;
pub mod system;
pub mod tasks;
pub mod tickets;
pub mod timeline;
pub mod transcripts;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::document()
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (router, document) = openapi::documented_routes().split_for_parts();
    let document = openapi::served(document);
    // Encoded once: axum clones every route's handler for each new connection, and the
    // document is hundreds of kilobytes as a tree.
    let document = axum::body::Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
    router
        .route(
            "/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    document,
                )
            }),
        )
        .merge(dashboard::routes())
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// One log line per request; server errors at `warn`.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    if status >= 500 {
        tracing::warn!(%method, %path, status, micros, "request failed");
    } else {
        tracing::debug!(%method, %path, status, micros, "request");
    }
    response
}
