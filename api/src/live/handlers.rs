//! The two WebSocket routes, and authentication at upgrade.
//!
//! The credential is checked before upgrading (401 otherwise), like every other route.
//! Browsers cannot set headers on a WebSocket, so here — and only here — the credential
//! may also come as `?token=`. The header wins, then `?token=`, then the cookie.
//!
//! The cookie is the one credential a browser sends by itself, whichever page opens the
//! socket: an upgrade it authenticates must come from an allowed `Origin` (the server's
//! own, or one of `allowed_origins`), else any site a user visits could open a socket in
//! their name (cross-site WebSocket hijacking). Clients that send a token chose to.
//!
//! A user or API key holds at most `max_sockets_per_principal` sockets in a process
//! ([`sockets`](super::sockets)); one more is refused with 429.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use utoipa::IntoParams;

use super::feed::Feed;
use super::link::{drive, Session};
use super::protocol::Filters;
use super::sockets::{Principal, TooManySockets};
use super::stream::Subscriptions;
use super::upgrade::Upgrade;
use super::LiveConfig;
use crate::auth::guard::client_address;
use crate::auth::{bearer, check_cookie_origin, cookie, Caller, Credential, ACCESS_COOKIE};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Query;
use crate::state::AppState;

/// The verified caller of a WebSocket, with the credential it presented (verified again
/// while the socket is open).
pub struct WsCaller {
    pub caller: Caller,
    pub credential: Credential,
}

#[derive(Deserialize)]
struct TokenOnly {
    token: Option<String>,
}

/// Why an authenticated upgrade is refused; one variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRefusal {
    /// 429: the principal holds the most sockets allowed already.
    #[error("{0}; close one first")]
    TooManySockets(#[from] TooManySockets),
}

impl From<UpgradeRefusal> for ApiError {
    fn from(refusal: UpgradeRefusal) -> Self {
        let (status, code) = match refusal {
            UpgradeRefusal::TooManySockets(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_sockets")
            }
        };
        ApiError::Status {
            status,
            code,
            detail: refusal.to_string(),
        }
    }
}

impl FromRequestParts<AppState> for WsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let credential = match (bearer(parts), query_token(parts)) {
            (Some(token), _) | (None, Some(token)) => token,
            (None, None) => {
                let token = cookie(parts, ACCESS_COOKIE).ok_or(ApiError::Unauthorized {
                    detail: "authentication required: send `Authorization: Bearer <token or \
                             API key>` or, from a browser, `?token=<token>`",
                })?;
                // Before any database work: a foreign page learns nothing but this.
                check_cookie_origin(parts, state, true)?;
                token
            }
        };
        let client = client_address(parts, state.guard.config.client_address_header.as_ref());
        let credential = Credential::new(credential, client);
        let caller = credential.verify(state).await?;
        Ok(Self { caller, credential })
    }
}

fn query_token(parts: &Parts) -> Option<String> {
    axum::extract::Query::<TokenOnly>::try_from_uri(&parts.uri)
        .ok()
        .and_then(|axum::extract::Query(q)| q.token)
        .filter(|token| !token.is_empty())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiveQuery {
    /// An access token or API key, for clients that cannot set headers (a browser's
    /// `WebSocket`). Prefer `Authorization: Bearer`.
    pub token: Option<String>,
}

/// The opening handshake of a WebSocket (RFC 6455 §4.1), as the server checks it: the
/// `Connection` header names `upgrade`, `Upgrade` is `websocket` and the version is 13,
/// each compared without regard to case. Documentation only; [`Upgrade`] reads them.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Handshake {
    /// A comma-separated list of tokens, one of them `upgrade` (`Upgrade`, `keep-alive,
    /// Upgrade`).
    #[param(
        rename = "Connection",
        pattern = "^([A-Za-z-]+, ?)*[Uu][Pp][Gg][Rr][Aa][Dd][Ee](, ?[A-Za-z-]+)*$"
    )]
    connection: String,
    #[param(rename = "Upgrade", pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$")]
    upgrade: String,
    #[param(rename = "Sec-WebSocket-Version", pattern = "^13$")]
    sec_websocket_version: String,
    /// A base64-encoded random 16-byte nonce; the answer's `Sec-WebSocket-Accept` is
    /// derived from it.
    #[param(rename = "Sec-WebSocket-Key", example = "dGhlIHNhbXBsZSBub25jZQ==")]
    sec_websocket_key: String,
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
    params(LiveQuery, Handshake),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket of docs/websocket.md"),
        (status = 400, body = Problem, description = "not a WebSocket opening handshake"),
        (status = 401, body = Problem, description = "no credential, or an invalid one"),
        (status = 403, body = Problem, description = "`origin_not_allowed`: authenticated by the cookie from an origin that is not allowed"),
        (status = 429, body = Problem, description = "`too_many_sockets`: the user or API key holds the most WebSockets allowed (`live.max_sockets_per_principal`)"),
    )
)]
pub async fn live(
    State(state): State<AppState>,
    caller: WsCaller,
    Query(_query): Query<LiveQuery>,
    upgrade: Upgrade,
) -> ApiResult<Response> {
    Ok(open(upgrade, state, caller, Subscriptions::default())?)
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
    params(FeedQuery, Handshake),
    responses(
        (status = 101, description = "Switching Protocols: the feed of docs/websocket.md"),
        (status = 400, body = Problem, description = "not a WebSocket opening handshake"),
        (status = 401, body = Problem, description = "no credential, or an invalid one"),
        (status = 403, body = Problem, description = "`origin_not_allowed`: authenticated by the cookie from an origin that is not allowed"),
        (status = 429, body = Problem, description = "`too_many_sockets`: the user or API key holds the most WebSockets allowed (`live.max_sockets_per_principal`)"),
    )
)]
pub async fn feed(
    State(state): State<AppState>,
    caller: WsCaller,
    Query(query): Query<FeedQuery>,
    upgrade: Upgrade,
) -> ApiResult<Response> {
    let filters = Filters::from_query(
        query.event_types.as_deref(),
        query.entity_types.as_deref(),
        query.entity_ids.as_deref(),
    );
    // Tapped before answering 101: whatever the client causes once connected is delivered.
    let tap = state.live.tap().await?;
    Ok(open(upgrade, state, caller, Feed::new(filters, tap))?)
}

/// Takes a socket slot of the caller (429 when it holds the most) and upgrades; the slot
/// is given back when the connection ends, or when the upgrade never completes.
fn open(
    upgrade: Upgrade,
    state: AppState,
    caller: WsCaller,
    session: impl Session,
) -> Result<Response, UpgradeRefusal> {
    let slot = state.live.sockets().open(Principal::of(&caller.caller))?;
    let config = socket_config(state.live.config());
    Ok(upgrade.on_upgrade(config, move |socket| {
        // Made before the block: the block holds the connection and its slot only.
        let connection = drive(socket, state, caller.caller, caller.credential, session);
        async move {
            connection.await;
            drop(slot);
        }
    }))
}

/// The settings of a socket.
fn socket_config(config: &LiveConfig) -> WebSocketConfig {
    // Frames above our own limit get a `too_large` error; only far larger ones (which we
    // refuse to even buffer) end the connection.
    let hard_limit = config.max_text_bytes.saturating_mul(16).max(1 << 20);
    // tungstenite allocates its read buffer up front (128 KiB by default): most frames
    // are small, so a small one keeps an idle connection cheap and grows when needed.
    // The writer gathers queued small frames up to a batch and flushes them together.
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(super::link::BATCH_BYTES)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit))
}

/// The read buffer of a connection (`omoi-bench bench-live` measures the memory per connection).
/// A client's frames are short (subscriptions, pings); a longer one grows it.
const READ_BUFFER_BYTES: usize = 2 * 1024;
