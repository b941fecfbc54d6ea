//! The HTTP API of omoi (axum): a POST per command, a GET per aggregate, each aggregate's
//! history and state as of any event, the global event stream, health, metrics and the
//! OpenAPI document.
//!
//! # Layout
//!
//! * [`app`] builds the router from one [`state::AppState`]; [`openapi`] the document.
//!   Routes and document come from the same `utoipa-axum` router, so a route cannot
//!   exist without its documentation.
//! * [`state`] — shared state and the one path every command takes.
//! * [`auth`] — callers, tokens, API keys and their routes.
//! * [`error`] — `ApiError`, rendered as `application/problem+json`.
//! * [`extract`] — JSON body, path and query extractors whose rejections are `ApiError`.
//! * [`responses`] — response bodies shared by several resources.
//! * One module per resource: [`organizations`], [`projects`], [`tickets`], [`tasks`],
//!   [`specs`], [`agents`], [`claims`], [`billing`]; [`history`] (per-aggregate history,
//!   global stream); [`system`].
//! * [`metrics`] — Prometheus counters and latency of commands.
//! * One module per read model: [`board`], [`graph`], [`timeline`], [`agent_views`];
//!   [`read`] — what their routes share (read errors, project scope, views `as_of`).
//! * [`live`] — WebSocket delivery: `/api/v1/ws` and the original's `/api/v1/ws/events`.

pub mod agent_views;
pub mod agents;
pub mod auth;
pub mod billing;
pub mod board;
pub mod claims;
pub mod error;
pub mod extract;
pub mod graph;
pub mod history;
pub mod live;
pub mod metrics;
pub mod organizations;
pub mod projects;
pub mod read;
pub mod responses;
pub mod specs;
pub mod state;
pub mod system;
pub mod tasks;
pub mod tickets;
pub mod timeline;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

/// Declares the bearer credential (access token or API key) required by every route that
/// does not opt out with `security(())`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token from /api/v1/auth/login or an API key (omoi_sk_…)",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(OpenApi)]
#[openapi(
    modifiers(&BearerAuth),
    info(
        title = "omoi",
        description = "Event-sourced backend of a spec-driven, multi-agent software-engineering \
                       orchestrator. Errors are application/problem+json (RFC 9457). \
                       Live delivery is a WebSocket: `GET /api/v1/ws` (subscribe to a \
                       project's `events` stream: a snapshot with its position, then ordered \
                       deltas; resume with `after`) and the original's feed \
                       `GET /api/v1/ws/events`; the protocol — message types, fields, \
                       examples, close codes — is in docs/websocket.md."
    ),
    tags(
        (name = "auth", description = "Accounts, tokens and API keys"),
        (name = "organizations"), (name = "projects"), (name = "tickets"), (name = "tasks"),
        (name = "specs"), (name = "agents"), (name = "events", description = "The event log"),
        (name = "timeline", description = "Activity timeline of a project (read model)"),
        (name = "board", description = "Kanban board of a project (read model)"),
        (name = "graph", description = "Task dependency graph (read model)"),
        (name = "billing", description = "Stripe webhooks, plans and limits, checkout and portal"),
        (name = "live", description = "WebSocket delivery of events and read models (docs/websocket.md)"),
        (name = "system"),
    )
)]
struct ApiDoc;

fn documented_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::routes::router())
        .merge(organizations::router())
        .merge(projects::router())
        .merge(tickets::router())
        .merge(tasks::router())
        .merge(specs::router())
        .merge(agents::router())
        .merge(agent_views::router())
        .merge(timeline::router())
        .merge(board::router())
        .merge(billing::router())
        .merge(graph::router())
        .merge(history::router())
        .merge(live::router())
        .merge(system::router())
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_routes().into_openapi()
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (router, document) = documented_routes().split_for_parts();
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
        .route("/docs", get(system::docs))
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
