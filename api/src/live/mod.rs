//! Live delivery over WebSocket (protocol: docs/websocket.md).
//!
//! * `GET /api/v1/ws` — subscriptions: a snapshot carrying its position, then deltas in the
//!   global order, each with its position; resumption with `after`; one socket, many
//!   subscriptions.
//! * `GET /api/v1/ws/events` — the original's feed: every visible event, filtered.
//!
//! Both are fed by one [`hub::Hub`] per process that follows the global stream — woken by
//! this process's commits, by other processes' coalesced `NOTIFY omoi_events`, and by a
//! poll — so a client on any replica sees every replica's commands, in the same order.
//!
//! # Layout
//!
//! * [`hub`] — follows the stream, keeps recent events for resumption, broadcasts new ones.
//! * [`link`] — one connection: the byte-bounded outgoing queue, pings, the credential
//!   re-check.
//! * [`frame`] — queued messages, whose heavy part is encoded once and shared.
//! * [`protocol`] — the messages and their errors; [`rate`] — how fast a connection's
//!   messages are handled.
//! * [`stream`] — the subscriptions of `/api/v1/ws`; [`replay`] — what a resuming
//!   `events` subscription missed, from memory or page by page from the database.
//! * [`task_streams`] — the `logs` (a task's transcript) and `steering` (an agent's
//!   messages) streams; [`transcript_watch`] — which transcripts grew, found for all of a
//!   process's `logs` subscriptions by one watcher.
//! * [`views`] — the read-model streams: one shared follower per (stream, project) folds
//!   the project's model and fans its deltas out.
//! * [`models`] — the read models followed: board, graph, timeline, agents.
//! * [`feed`] — `/api/v1/ws/events`.
//! * [`handlers`] — authentication at upgrade (`?token=`, the cookie's `Origin` check),
//!   the per-principal socket cap ([`sockets`]) and the two routes.

pub mod feed;
pub mod frame;
pub mod handlers;
pub mod hub;
pub mod link;
pub mod models;
pub mod protocol;
pub mod rate;
pub mod replay;
pub mod sockets;
pub mod stream;
pub mod task_streams;
pub mod transcript_watch;
pub mod upgrade;
pub mod views;
pub mod window;

use std::time::Duration;

use tokio::task::JoinHandle;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub use hub::Hub;

/// Tunables of live delivery. The defaults are production's; tests shorten the intervals
/// and shrink the buffers so that pings, revocation and slow clients show in seconds.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The server pings this often; a peer silent for two intervals is dropped.
    pub ping_interval: Duration,
    /// A connection's credential is verified again this often: revoked → closed (4401).
    pub recheck_interval: Duration,
    /// Messages waiting to be written to one connection.
    pub queue_capacity: usize,
    /// Bytes waiting to be written to one connection (its queued messages' lengths; a
    /// message shared with other clients counts in full). Reached, it is a full queue.
    pub queue_bytes: usize,
    /// How long a live delta waits for room in a full queue before its subscription ends
    /// with `resync`: long enough for a reading client to absorb a burst, short enough
    /// that a stuck one is cut off quickly.
    pub slow_client_grace: Duration,
    /// New events held for subscribers that have not taken them yet (shared by all; each
    /// read-model follower's deltas as many).
    pub broadcast_capacity: usize,
    /// Bytes of large events (over [`window::INLINE_WEIGHT`]) held for subscribers that
    /// have not taken them yet (a follower's large deltas as many): a subscriber further
    /// behind reads what it missed from the database instead of pinning them.
    pub broadcast_bytes: usize,
    /// Recent events kept in memory, so that a reconnecting client resumes cheaply.
    pub replay_buffer: usize,
    /// Bytes those events may hold at most, counted as [`hub`]'s `weight` does (their
    /// payloads, which their encoded messages repeat): ten thousand events of a large plan
    /// each would otherwise hold gigabytes. Older events are then read from the database.
    pub replay_bytes: usize,
    /// Most events of a project read back from the database for a resumption older than
    /// the buffer; beyond it the client gets a fresh, `stale` snapshot.
    pub replay_limit: usize,
    /// How often the hub looks for events it was not woken for, and the transcript
    /// watcher for transcripts other processes wrote ([`transcript_watch`]).
    pub poll_interval: Duration,
    /// Events the hub reads per query.
    pub batch_size: i64,
    /// Largest text frame handled; larger ones get a `too_large` error.
    pub max_text_bytes: usize,
    /// Subscriptions one socket may hold at once.
    pub max_subscriptions: usize,
    /// Messages one socket's client may send at once; past them, each waits its turn at
    /// `messages_per_second` ([`rate`]: the server stops reading meanwhile).
    pub message_burst: u32,
    pub messages_per_second: u32,
    /// WebSockets one user or API key may hold open at once in this process; more are
    /// refused at upgrade (429).
    pub max_sockets_per_principal: usize,
    /// Origins (`https://dash.example`) besides the server's own from which a browser
    /// may open a WebSocket authenticated by the cookie.
    pub allowed_origins: Vec<String>,
    /// How long a read-model follower nobody subscribes to lives on (a reconnect within
    /// it resumes from the follower's memory) before it is freed.
    pub follower_idle: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            recheck_interval: Duration::from_secs(5),
            queue_capacity: 256,
            queue_bytes: 1 << 20,
            slow_client_grace: Duration::from_secs(1),
            broadcast_capacity: 4096,
            broadcast_bytes: 64 << 20,
            replay_buffer: 10_000,
            replay_bytes: 32 << 20,
            replay_limit: 10_000,
            poll_interval: Duration::from_millis(500),
            batch_size: 500,
            max_text_bytes: 64 * 1024,
            max_subscriptions: 32,
            message_burst: 100,
            messages_per_second: 50,
            max_sockets_per_principal: 32,
            allowed_origins: Vec::new(),
            follower_idle: Duration::from_secs(60),
        }
    }
}

/// The two WebSocket routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(handlers::live))
        .routes(routes!(handlers::feed))
}

/// A spawned task that ends with its owner (a subscription, a connection, the hub).
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub JoinHandle<()>);

impl AbortOnDrop {
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
