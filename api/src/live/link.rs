//! One WebSocket connection, whichever endpoint: a reader and a writer joined by
//! `select!`, so that the connection ends as soon as either does.
//!
//! * **Bounded outgoing queue.** Everything for the client goes through one `mpsc` of at
//!   most `queue_capacity` messages and `queue_bytes` bytes (a semaphore of bytes: a
//!   message holds its length until it is written). Replies to the client's own messages
//!   wait for room (which stops reading the client's frames: back-pressure, not memory); a
//!   live delta that finds the queue full for `slow_client_grace` ends its subscription
//!   with `resync` instead ([`Link::offer`]). Counting bytes, not messages, is what bounds
//!   memory: 256 queued events of 256 KiB each would otherwise be 64 MiB for one client.
//! * **Resync always gets through.** It travels on a small side channel the writer serves
//!   first, and queued messages of an ended subscription are skipped, so the client never
//!   sees a delta of a subscription after its `resync` or `unsubscribed`.
//! * **Liveness.** Every `ping_interval` the writer sends a WebSocket ping (and a JSON
//!   `{"type":"ping"}` when the client has sent no message for that long); a peer from
//!   which no frame at all arrived for two intervals is closed (4408). A write that blocks
//!   that long means the peer stopped reading: the connection is dropped.
//! * **Revocation.** Every `recheck_interval` the credential is verified again; when it is
//!   no longer valid the socket is closed with 4401. The refreshed caller (memberships may
//!   have changed) is what subscriptions authorize their events against. A client may
//!   hand over a fresh credential of the same principal (`authenticate`: a token refreshed
//!   before the one the socket opened with expires), so that the socket outlives its
//!   first token.

use omoi_domain::access::Permission;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use omoi_domain::common::Scope;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::frame::Frame;
use super::protocol::{encode, Authenticate, ServerMessage, WsError};
use super::rate::MessageRate;
use super::sockets::Principal;
use super::upgrade::Socket;
use super::LiveConfig;
use crate::auth::{Caller, Credential};
use crate::error::ApiError;
use crate::state::AppState;

/// What a connection does with the client's text frames.
pub trait Session: Send + 'static {
    /// Before the first frame is read.
    fn on_open(&mut self, _link: &Link) -> impl Future<Output = ()> + Send {
        async {}
    }

    fn on_text(&mut self, link: &Link, text: &str) -> impl Future<Output = ()> + Send;
}

/// Whether a subscription still runs; its queued messages are skipped once it does not.
#[derive(Debug, Clone)]
pub struct Alive(Arc<AtomicBool>);

impl Alive {
    pub fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    pub fn end(&self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Default for Alive {
    fn default() -> Self {
        Self::new()
    }
}

struct Outgoing {
    /// Boxed: the channel allocates room for 32 messages up front, so every byte of this
    /// struct is 32 bytes of each idle connection.
    frame: Box<Frame>,
    /// The subscription the message belongs to, if any.
    of: Option<Alive>,
    /// Its bytes of the connection's budget, given back once it is written (or skipped).
    room: OwnedSemaphorePermit,
}

/// The connection is gone: nothing more can be queued.
struct Closed;

/// What a live delta met.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    Full,
    Closed,
}

/// The handle sessions and their subscriptions talk to the client through.
#[derive(Clone)]
pub struct Link {
    pub state: AppState,
    queue: mpsc::Sender<Outgoing>,
    /// Free bytes of the queue's budget.
    room: Arc<Semaphore>,
    /// The budget: the most bytes one message waits for.
    budget: usize,
    resyncs: mpsc::Sender<String>,
    overwhelmed: Arc<Notify>,
    caller: watch::Receiver<Caller>,
    /// What the socket authenticates with: verified again every `recheck_interval`.
    credential: Arc<Mutex<Credential>>,
    grace: Duration,
    /// One turn: a subscription's read of its backlog from the database, held until what
    /// it read is queued ([`Self::read_turn`]).
    reads: Arc<Semaphore>,
}

impl Link {
    /// `{"type":"authenticate","token":…}`: the socket goes on with `token` (an access
    /// token or API key) once it is verified and stands for the same principal — a token
    /// refreshed before the socket's expires. Refused, the socket keeps its credential.
    pub async fn authenticate(&self, request: Authenticate) -> Result<(), WsError> {
        let client = self
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .client();
        let fresh = Credential::new(request.token, client);
        let caller =
            match fresh.verify(&self.state).await {
                Ok(caller) => caller,
                Err(ApiError::Unauthorized { .. }) => return Err(WsError::new(
                    "unauthorized",
                    "the token is not valid (expired, revoked or unknown); the socket keeps its \
                     credential",
                )),
                Err(ApiError::TooManyRequests { detail, .. }) => {
                    return Err(WsError::new("too_many_requests", detail))
                }
                Err(error) => {
                    tracing::warn!(?error, "live: could not verify a new credential");
                    return Err(WsError::new(
                        "unavailable",
                        "the token could not be verified now; try again",
                    ));
                }
            };
        if Principal::of(&caller) != Principal::of(&self.caller.borrow()) {
            return Err(WsError::new(
                "another_principal",
                "the token stands for another user or key; a socket keeps its principal \
                 (open another socket)",
            ));
        }
        *self
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        self.send(&ServerMessage::Authenticated).await;
        Ok(())
    }

    /// The connection's turn to read a subscription's backlog from the database (a page of
    /// a replay, a message of a transcript), to be held until what was read is queued:
    /// however many subscriptions a connection has, one such read waits in memory beside
    /// its queue. Before, each of a slow reader's 32 replays held a page of up to 4 MiB
    /// while it waited for room. (`None` only were the turn closed, which it never is: a
    /// subscription ended while it waits is aborted, and its wait with it.)
    pub async fn read_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.reads.clone().acquire_owned().await.ok()
    }

    /// The most bytes the connection's queue holds: what a read of a backlog fetches at
    /// most (at least one item).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The caller as last verified.
    pub fn caller(&self) -> Caller {
        self.caller.borrow().clone()
    }

    /// Resolves once the caller, verified again (every `recheck_interval`), may no longer
    /// read events of `scope` — a member removed, a role taken away. A subscription waits on it beside its next event, so that one who
    /// lost access is told at once, not at the project's next change. Never resolves once
    /// the connection is gone (its subscriptions end with it).
    pub async fn access_lost(&self, updates: &mut watch::Receiver<Caller>, scope: Scope) {
        loop {
            if updates.changed().await.is_err() {
                return std::future::pending().await;
            }
            if !self.may_read(Some(scope)) {
                return;
            }
        }
    }

    /// The caller as each re-check verifies it, for [`Self::access_lost`]. Not marked
    /// seen: a re-check made while the subscription started (a long snapshot or replay)
    /// is looked at by its first wait.
    pub fn caller_updates(&self) -> watch::Receiver<Caller> {
        self.caller.clone()
    }

    /// May the caller (as last verified) read events of `scope`? Events without a scope
    /// are for super-admins only.
    pub fn may_read(&self, scope: Option<Scope>) -> bool {
        let caller = self.caller.borrow();
        match scope {
            Some(scope) => caller.check(Some(scope), Permission::EventsRead).is_ok(),
            None => caller.is_super_admin(),
        }
    }

    /// Queues a reply, waiting for room. False when the connection is gone.
    pub async fn send(&self, message: &ServerMessage<'_>) -> bool {
        Box::pin(self.enqueue(Frame::Own(encode(message)), None))
            .await
            .is_ok()
    }

    pub async fn send_error(&self, error: &WsError) -> bool {
        self.send(&error.message()).await
    }

    /// Queues a message of a subscription, waiting for room (snapshots and replays, which
    /// may be longer than the queue).
    pub async fn send_for(&self, alive: &Alive, frame: Frame) -> bool {
        Box::pin(self.enqueue(frame, Some(alive.clone())))
            .await
            .is_ok()
    }

    /// Queues a live delta if room appears within the grace period.
    pub async fn offer(&self, alive: &Alive, frame: Frame) -> Offer {
        let queued = self.enqueue(frame, Some(alive.clone()));
        match Box::pin(tokio::time::timeout(self.grace, queued)).await {
            Ok(Ok(())) => Offer::Queued,
            Ok(Err(Closed)) => Offer::Closed,
            Err(_) => Offer::Full,
        }
    }

    /// Waits for room in bytes, then in messages, and queues the frame.
    ///
    /// Callers box this future: a subscription's task is as large as the largest future it
    /// awaits, for all its life, and this one (two waits, the frame) is a few hundred
    /// bytes — per idle subscription, were it inline (`omoi-bench bench-live` measures it).
    async fn enqueue(&self, frame: Frame, of: Option<Alive>) -> Result<(), Closed> {
        // A message larger than the whole budget waits for an empty queue and goes alone.
        let bytes = u32::try_from(frame.len().min(self.budget)).unwrap_or(u32::MAX);
        let room = self
            .room
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| Closed)?;
        let outgoing = Outgoing {
            frame: Box::new(frame),
            of,
            room,
        };
        self.queue.send(outgoing).await.map_err(|_| Closed)
    }

    /// The most messages the connection's queue holds: more cannot be reserved at once.
    pub fn capacity(&self) -> usize {
        self.queue.max_capacity()
    }

    /// Room for `count` messages weighing `bytes` together, if it appears within the
    /// grace period: for messages that must be queued once something is recorded (steering
    /// marked delivered), so that nothing is recorded that could not then be queued.
    pub async fn reserve(&self, bytes: usize, count: usize) -> Result<Reserved<'_>, Offer> {
        let bytes = u32::try_from(bytes.min(self.budget)).unwrap_or(u32::MAX);
        let both = async {
            let room = self.room.clone().acquire_many_owned(bytes).await;
            let slots = self.queue.reserve_many(count).await;
            (room, slots)
        };
        match tokio::time::timeout(self.grace, both).await {
            Ok((Ok(room), Ok(slots))) => Ok(Reserved {
                room: Some(room),
                slots,
            }),
            Ok(_) => Err(Offer::Closed),
            Err(_) => Err(Offer::Full),
        }
    }

    /// Ends a subscription the client did not keep up with and tells it so. Resyncs are
    /// bounded by the number of subscriptions; a client that exceeds even that is dropped.
    pub fn resync(&self, alive: &Alive, id: Option<&str>) {
        alive.end();
        let text = encode(&ServerMessage::Resync {
            id,
            reason: "slow consumer",
        });
        if self.resyncs.try_send(text).is_err() {
            self.overwhelmed.notify_one();
        }
    }
}

/// Room reserved in a connection's queue ([`Link::reserve`]); what is not used is given
/// back when it is dropped.
pub struct Reserved<'a> {
    /// The bytes not yet handed to a queued message (each takes its share, given back
    /// once it is written).
    room: Option<OwnedSemaphorePermit>,
    slots: mpsc::PermitIterator<'a, Outgoing>,
}

impl Reserved<'_> {
    /// Queues `frame` in a reserved place, unconditionally: it is written even if its
    /// subscription ends first. False when no place is left.
    pub fn send(&mut self, frame: Frame) -> bool {
        let Some(slot) = self.slots.next() else {
            return false;
        };
        let room = match self.slots.len() {
            // The last place takes what is left of the bytes; each other its own share.
            0 => self.room.take(),
            _ => self.room.as_mut().and_then(|room| {
                let share = frame.len().min(room.num_permits());
                room.split(share)
            }),
        };
        let Some(room) = room else {
            return false;
        };
        slot.send(Outgoing {
            frame: Box::new(frame),
            of: None,
            room,
        });
        true
    }
}

/// One connection, until the client leaves, is dropped, or its credential is revoked.
///
/// Not an `async fn`: what the connection is made of is put together here, and the future
/// returned holds only the futures that run it. An `async fn` keeps its arguments and
/// locals in its state beside the futures they were moved into, for the connection's whole
/// life (the upgrade's task was 9,352 bytes; `omoi-bench bench-live` measures the memory
/// per idle connection).
pub fn drive(
    socket: Socket,
    state: AppState,
    caller: Caller,
    credential: Credential,
    session: impl Session,
) -> impl Future<Output = ()> + Send {
    let config = state.live.config().clone();
    let (sink, stream) = socket.split();
    let (queue, queue_rx) = mpsc::channel(config.queue_capacity.max(1));
    let budget = queue_budget(config.queue_bytes);
    let (resyncs, resyncs_rx) = mpsc::channel(config.max_subscriptions + 1);
    let (caller_tx, caller_rx) = watch::channel(caller);
    let credential = Arc::new(Mutex::new(credential));
    let overwhelmed = Arc::new(Notify::new());
    let activity = Arc::new(Activity::new());
    let hub = state.live.clone();
    let link = Link {
        state: state.clone(),
        queue,
        room: Arc::new(Semaphore::new(budget)),
        budget,
        resyncs,
        overwhelmed: overwhelmed.clone(),
        caller: caller_rx,
        credential: credential.clone(),
        grace: config.slow_client_grace,
        reads: Arc::new(Semaphore::new(1)),
    };
    let rate = MessageRate::new(
        config.messages_per_second,
        config.message_burst,
        Instant::now(),
    );
    let reading = Box::pin(read(
        stream,
        session,
        link,
        activity.clone(),
        config.max_text_bytes,
        rate,
    ));
    let writing = Box::pin(
        Writer {
            sink,
            pending: 0,
            queue: queue_rx,
            resyncs: resyncs_rx,
            activity,
            caller: caller_tx,
            credential,
            state,
            config,
        }
        .run(),
    );
    async move {
        tokio::select! {
            () = writing => {}
            () = reading => {}
            () = overwhelmed.notified() => {
                tracing::debug!("live: a client fell behind on every subscription; dropped");
            }
            () = hub.sockets_closing() => {}
        }
    }
}

/// The bytes a connection's queue may hold: at least one, and no more than a semaphore
/// (and one message's wait, a `u32`) can count.
fn queue_budget(configured: usize) -> usize {
    let most = Semaphore::MAX_PERMITS.min(u32::MAX as usize);
    configured.clamp(1, most)
}

/// Reads the client's frames and hands text to the session, each message in its turn
/// ([`MessageRate`]).
async fn read(
    mut stream: SplitStream<Socket>,
    mut session: impl Session,
    link: Link,
    activity: Arc<Activity>,
    max_text_bytes: usize,
    mut rate: MessageRate,
) {
    Box::pin(session.on_open(&link)).await;
    while let Some(Ok(frame)) = stream.next().await {
        activity.frame();
        if let Message::Text(_) | Message::Binary(_) = frame {
            let wait = rate.turn(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        match frame {
            Message::Text(text) => {
                activity.message();
                if text.len() > max_text_bytes {
                    let detail = format!("a frame may hold at most {max_text_bytes} bytes");
                    link.send_error(&WsError::new("too_large", detail)).await;
                } else {
                    Box::pin(session.on_text(&link, text.as_str())).await;
                }
            }
            Message::Binary(_) => {
                activity.message();
                let error = WsError::new("binary_not_supported", "send JSON text frames");
                link.send_error(&error).await;
            }
            // The reply to the client's close is queued by the WebSocket layer and sent by
            // the next read, which then ends the stream: returning now would drop the
            // connection without it (the client would see 1006, no closing handshake).
            Message::Close(_) => continue,
            // Pings are answered by the WebSocket layer; both count as signs of life (and
            // reading yields whole messages, never raw frames).
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// When the client was last heard from.
struct Activity {
    since: Instant,
    last_frame_ms: AtomicU64,
    last_message_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            last_frame_ms: AtomicU64::new(0),
            last_message_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn frame(&self) {
        self.last_frame_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn message(&self) {
        self.last_message_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn silent_for(&self, last: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(last.load(Ordering::Relaxed)))
    }
}

/// Why the writer stopped.
enum End {
    /// The peer is gone or stopped reading: nothing more can be written.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// The longest frame payload the writer formats. tungstenite formats a frame into a buffer
/// of the connection that keeps its capacity for the connection's life, so a message
/// longer than this (a board's snapshot: ~35 KB for 100 cards, a megabyte for 3,000) is
/// sent as a fragmented message: an idle connection keeps this much, not its largest
/// message (`omoi-bench bench-live --cards` measures it). With its 4-byte header a full
/// frame is 2 KiB, an allocator size class; a board's delta fits in one. Each fragment is
/// one write.
const FRAGMENT_BYTES: usize = 2 * 1024 - 4;

/// Small frames queued together are written together: the writer takes whatever else is
/// queued when it wakes and writes it in one go — one system call, one TCP segment — up to
/// this many bytes (tungstenite's `write_buffer_size` is set to it too, so it buffers them).
/// Under load a connection's queue holds several deltas; written one by one they cost the
/// server and the client a system call and a segment each. The margin under 2 KiB leaves
/// room for a pong the reader may add, so the buffer stays in the 2 KiB size class of a
/// fragment and an idle connection keeps no more than before.
pub(crate) const BATCH_BYTES: usize = FRAGMENT_BYTES + 4 - 256;

/// The most queued messages one wake-up writes before the writer looks at its pings and
/// re-checks again.
const BATCH_MESSAGES: usize = 64;

/// How long a closing server waits for the client's close reply before hanging up (so
/// that the close frame is read rather than lost in a reset).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

struct Writer {
    sink: SplitSink<Socket, Message>,
    /// Bytes given to the sink since it was last flushed (0: nothing to flush).
    pending: usize,
    queue: mpsc::Receiver<Outgoing>,
    resyncs: mpsc::Receiver<String>,
    activity: Arc<Activity>,
    caller: watch::Sender<Caller>,
    credential: Arc<Mutex<Credential>>,
    state: AppState,
    config: LiveConfig,
}

impl Writer {
    async fn run(mut self) {
        let mut ping = every(self.config.ping_interval);
        let mut recheck = every(self.config.recheck_interval);
        loop {
            // The re-check and the ping before the queue: a queue that never empties (a
            // busy feed read just fast enough) would otherwise starve them, and a revoked
            // credential would keep streaming.
            // The rare steps (a re-check, the end) are boxed, as the reader's handling
            // of a message is: a future keeps the room of the largest step it awaits for
            // its whole life, and this one lives as long as the connection.
            let step = tokio::select! {
                biased;
                Some(text) = self.resyncs.recv() => self.write(Message::Text(text.into())).await,
                _ = recheck.tick() => Box::pin(self.recheck()).await,
                _ = ping.tick() => self.keepalive().await,
                outgoing = self.queue.recv() => match outgoing {
                    Some(outgoing) => self.write_queued(outgoing).await,
                    None => Err(End::Gone),
                },
            };
            if let Err(end) = step {
                Box::pin(self.finish(end)).await;
                return;
            }
        }
    }

    /// Writes a queued message and whatever else is queued behind it, in one go.
    async fn write_queued(&mut self, first: Outgoing) -> Result<(), End> {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(outgoing) = next {
            self.feed_outgoing(outgoing).await?;
            taken += 1;
            next = match taken < BATCH_MESSAGES {
                true => self.queue.try_recv().ok(),
                false => None,
            };
        }
        self.flush().await
    }

    async fn feed_outgoing(&mut self, outgoing: Outgoing) -> Result<(), End> {
        let Outgoing { frame, of, room } = outgoing;
        if of.is_some_and(|alive| !alive.get()) {
            return Ok(());
        }
        let fed = self.feed_frame(*frame).await;
        // The bytes count until they are handed to the socket (whose buffer holds no more
        // than `BATCH_BYTES`): a stuck write still holds them.
        drop(room);
        fed
    }

    /// A message no longer than [`FRAGMENT_BYTES`] is fed whole; a longer one as fragments
    /// of that size, each written out (it is longer than the batch) before the next is
    /// formatted.
    async fn feed_frame(&mut self, frame: Frame) -> Result<(), End> {
        if frame.len() <= FRAGMENT_BYTES {
            return self.feed(Message::Text(frame.into_text())).await;
        }
        for fragment in frame.fragments(FRAGMENT_BYTES) {
            self.feed(Message::Frame(fragment)).await?;
        }
        Ok(())
    }

    /// Writes one message at once.
    async fn write(&mut self, message: Message) -> Result<(), End> {
        self.feed(message).await?;
        self.flush().await
    }

    /// Hands a message to the socket, which writes it out when the batch is full; what was
    /// fed before is written first when the two would not fit in a batch together.
    async fn feed(&mut self, message: Message) -> Result<(), End> {
        let length = wire_length(&message);
        if self.pending > 0 && self.pending + length > BATCH_BYTES {
            self.flush().await?;
        }
        within(self.patience(), self.sink.feed(message)).await?;
        // Longer than a batch, the socket wrote it out at once, or began to: what a full
        // socket did not take is written by the flush, which waits for it.
        self.pending += length;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.pending == 0 {
            return Ok(());
        }
        self.pending = 0;
        within(self.patience(), self.sink.flush()).await
    }

    /// A write that blocks for two ping intervals means the peer stopped reading.
    fn patience(&self) -> Duration {
        self.config.ping_interval.saturating_mul(2)
    }

    async fn keepalive(&mut self) -> Result<(), End> {
        let interval = self.config.ping_interval;
        if self.activity.silent_for(&self.activity.last_frame_ms) >= interval.saturating_mul(2) {
            return Err(End::Close(4408, "no answer to pings"));
        }
        self.write(Message::Ping(Bytes::new())).await?;
        if self.activity.silent_for(&self.activity.last_message_ms) >= interval {
            self.write(Message::Text(encode(&ServerMessage::Ping).into()))
                .await?;
        }
        Ok(())
    }

    async fn recheck(&mut self) -> Result<(), End> {
        let credential = self
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match credential.verify(&self.state).await {
            Ok(caller) => {
                self.caller.send_replace(caller);
                Ok(())
            }
            // Unless `authenticate` replaced it meanwhile: the next check verifies that one.
            Err(ApiError::Unauthorized { .. }) if self.still_held(&credential) => Err(End::Close(
                4401,
                "the credential was revoked or has expired",
            )),
            Err(ApiError::Unauthorized { .. }) => Ok(()),
            // A database hiccup is no reason to drop the client; the next check decides.
            Err(error) => {
                tracing::debug!(?error, "live: could not verify a credential again");
                Ok(())
            }
        }
    }

    /// Whether the socket still authenticates with `credential`.
    fn still_held(&self, credential: &Credential) -> bool {
        *self
            .credential
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            == *credential
    }

    async fn finish(&mut self, end: End) {
        let End::Close(code, reason) = end else {
            return;
        };
        let frame = CloseFrame {
            code: code.into(),
            reason: Utf8Bytes::from_static(reason),
        };
        if self.write(Message::Close(Some(frame))).await.is_ok() {
            // The reader keeps running meanwhile and ends the connection at the reply.
            tokio::time::sleep(CLOSE_GRACE).await;
        }
    }
}

/// A write's outcome, the peer gone when it failed or took longer than `patience`.
async fn within<E>(
    patience: Duration,
    write: impl Future<Output = Result<(), E>>,
) -> Result<(), End> {
    match tokio::time::timeout(patience, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(End::Gone),
    }
}

/// A message's length on the wire: a server's frames are not masked, so a header of 2
/// bytes, 4 with a 16-bit length, 10 with a 64-bit one.
fn wire_length(message: &Message) -> usize {
    let payload = match message {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) | Message::Ping(bytes) | Message::Pong(bytes) => bytes.len(),
        Message::Frame(frame) => frame.payload().len(),
        Message::Close(close) => close.as_ref().map_or(0, |close| 2 + close.reason.len()),
    };
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    header + payload
}

/// An interval whose first tick is one period away (not immediate).
fn every(period: Duration) -> tokio::time::Interval {
    let period = period.max(Duration::from_millis(1));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `$function` returns when called with arguments of the types
    /// given, without calling it.
    macro_rules! size_of_future {
        ($function:expr, $($argument:ty),+) => {{
            fn size<F, Fut>(_: &F) -> usize
            where
                F: FnOnce($($argument),+) -> Fut,
            {
                std::mem::size_of::<Fut>()
            }
            size(&$function)
        }};
    }

    /// Every open connection holds these three for its whole life (`omoi-bench bench-live`
    /// measures the memory per idle connection): the task's own future holds the reader's
    /// and the writer's (boxed) and nothing else — 9,352 bytes when `drive` was an
    /// `async fn` holding its arguments beside them, and the upgrade's task the closure
    /// that made it.
    #[test]
    fn an_idle_connection_holds_little_more_than_its_reader_and_its_writer() {
        use super::super::stream::Subscriptions;
        let connection =
            size_of_future!(drive, Socket, AppState, Caller, Credential, Subscriptions);
        let writer = size_of_future!(Writer::run, Writer);
        let reader = size_of_future!(
            read,
            SplitStream<Socket>,
            Subscriptions,
            Link,
            Arc<Activity>,
            usize,
            MessageRate
        );
        assert!(
            connection <= 512,
            "the connection's future: {connection} bytes"
        );
        assert!(
            writer + reader <= 3584,
            "the writer's and the reader's: {writer} and {reader} bytes"
        );
    }

    #[test]
    fn a_queued_message_takes_no_more_room_than_a_string_and_a_subscription() {
        // An idle connection's channel holds room for 32 of them.
        assert!(std::mem::size_of::<Outgoing>() <= 32);
    }
}
