//! The two WebSocket routes, and authentication at upgrade.
//!
//! The credential is checked before upgrading (401 otherwise), like every other route.
//! Browsers cannot set headers on a WebSocket, so here — and only here — the credential
//! may also come as `?token=`.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderValue;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

use super::feed::Feed;
use super::link::drive;
use super::protocol::Filters;
use super::stream::Subscriptions;
use super::LiveConfig;
use crate::auth::{credential, Caller};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Query;
use crate::state::AppState;

/// The verified caller of a WebSocket, with the credential it presented (verified again
/// while the socket is open).
pub struct WsCaller {
    pub caller: Caller,
    pub credential: String,
}

#[derive(Deserialize)]
struct TokenOnly {
    token: Option<String>,
}

impl FromRequestParts<AppState> for WsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let credential =
            credential(parts)
                .or_else(|| query_token(parts))
                .ok_or(ApiError::Unauthorized {
                    detail: "authentication required: send `Authorization: Bearer <token or API \
                         key>` or, from a browser, `?token=<token>`",
                })?;
        let caller = verify(state, &credential).await?;
        Ok(Self { caller, credential })
    }
}

fn query_token(parts: &Parts) -> Option<String> {
    axum::extract::Query::<TokenOnly>::try_from_uri(&parts.uri)
        .ok()
        .and_then(|axum::extract::Query(q)| q.token)
        .filter(|token| !token.is_empty())
}

/// Verifies a credential exactly as the `Caller` extractor does for a request.
pub async fn verify(state: &AppState, credential: &str) -> Result<Caller, ApiError> {
    let invalid = ApiError::Unauthorized {
        detail: "the token is invalid, expired or revoked",
    };
    let header = HeaderValue::try_from(format!("Bearer {credential}")).map_err(|_| invalid)?;
    let mut request = axum::http::Request::new(());
    request.headers_mut().insert(AUTHORIZATION, header);
    let (mut parts, ()) = request.into_parts();
    Caller::from_request_parts(&mut parts, state).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// An access token or API key, for clients that cannot set headers (a browser's
    /// `WebSocket`). Prefer `Authorization: Bearer`.
    pub token: Option<String>,
}

/// Live subscriptions over WebSocket.
///
/// JSON text frames. Subscribe to a stream of a project — `events` (its raw events,
/// filtered by `event_types`, `entity_types`, `entity_ids`), or the read models `board`,
/// `graph`, `timeline` and `agents`; the server answers with a snapshot carrying its position, then deltas in
/// the global order, each with its position. Reconnect with `after` to receive exactly
/// what was missed. Slow clients get `resync`; bad frames get an `error` and the socket
/// stays usable. The protocol (message types, fields, examples, close codes) is in
/// docs/websocket.md.
#[utoipa::path(
    get,
    path = "/api/v1/ws",
    tag = "live",
    params(LiveQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket of docs/websocket.md"),
        (status = 400, body = Problem, description = "not a WebSocket upgrade request"),
        (status = 401, body = Problem, description = "no credential, or an invalid one"),
    )
)]
pub async fn live(
    State(state): State<AppState>,
    caller: WsCaller,
    Query(_query): Query<LiveQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let upgrade = accept(upgrade, state.live.config())?;
    Ok(upgrade.on_upgrade(move |socket| {
        drive(
            socket,
            state,
            caller.caller,
            caller.credential,
            Subscriptions::default(),
        )
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Comma-separated event types (`TaskStarted,TaskCompleted`); absent: all.
    pub event_types: Option<String>,
    /// Comma-separated entity types, i.e. aggregate types in any case (`task,ticket`).
    pub entity_types: Option<String>,
    /// Comma-separated entity ids.
    pub entity_ids: Option<String>,
    /// An access token or API key, for browsers (see `/api/v1/ws`).
    pub token: Option<String>,
}

/// The original's event feed over WebSocket.
///
/// Every event of the caller's organizations, as `{"type":"event","event_type","entity_type","entity_id","payload","position"}`,
/// filtered by the given query parameters (all must match). `{"type":"subscribe",
/// "event_types":[…],"entity_types":[…],"entity_ids":[…]}` replaces the filters and is
/// answered `{"status":"subscribed"}`; the server sends `{"type":"ping"}` after a quiet
/// interval (30 s). See docs/websocket.md.
#[utoipa::path(
    get,
    path = "/api/v1/ws/events",
    tag = "live",
    params(FeedQuery),
    responses(
        (status = 101, description = "Switching Protocols: the feed of docs/websocket.md"),
        (status = 400, body = Problem, description = "not a WebSocket upgrade request"),
        (status = 401, body = Problem, description = "no credential, or an invalid one"),
    )
)]
pub async fn feed(
    State(state): State<AppState>,
    caller: WsCaller,
    Query(query): Query<FeedQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let upgrade = accept(upgrade, state.live.config())?;
    let filters = Filters::from_query(
        query.event_types.as_deref(),
        query.entity_types.as_deref(),
        query.entity_ids.as_deref(),
    );
    // Tapped before answering 101: whatever the client causes once connected is delivered.
    let tap = state.live.tap().await?;
    let session = Feed::new(filters, tap);
    Ok(upgrade
        .on_upgrade(move |socket| drive(socket, state, caller.caller, caller.credential, session)))
}

/// The upgrade, or a problem document for a plain HTTP request.
fn accept(
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    config: &LiveConfig,
) -> ApiResult<WebSocketUpgrade> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::bad_request(
            format!(
                "this endpoint only speaks WebSocket ({})",
                rejection.body_text()
            ),
            None,
        )
    })?;
    // Frames above our own limit get a `too_large` error; only far larger ones (which we
    // refuse to even buffer) end the connection.
    let hard_limit = config.max_text_bytes.saturating_mul(16).max(1 << 20);
    // tungstenite allocates its read buffer up front (128 KiB by default): most frames
    // are small, so a small one keeps an idle connection cheap and grows when needed.
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit))
}

/// The read buffer of a connection (`omoi bench-live` measures the memory per connection).
const READ_BUFFER_BYTES: usize = 4 * 1024;
