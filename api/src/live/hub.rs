//! The hub: one per process, following the global stream from "now".
//!
//! It reads new events in the gapless global order (`read_global_within`), keeps the most recent
//! ones in a ring for cheap resumption, and broadcasts each to every subscriber. Appending
//! to the ring, moving `head` and broadcasting happen under one lock, and a subscriber
//! taps (reads `head`, subscribes to the broadcast, copies from the ring) under the same
//! lock: everything up to `head` is in the ring or older, everything after it arrives on
//! the receiver — no gap, no double.
//!
//! Memory is bounded: the ring holds at most `replay_buffer` events and `replay_bytes`
//! bytes, and the broadcast (a [`Window`]) at most `broadcast_capacity` events not yet
//! taken by every subscriber, its large ones within `broadcast_bytes`; a subscriber that
//! falls behind gets `Lagged` instead of making the channel grow or pinning what it has
//! not taken.
//!
//! The hub starts on first use (so a process that never serves a WebSocket reads
//! nothing) and stops once the application state that owns it is gone.

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use omoi_store::log::{read_global_within, Visibility, WeighedPage, PAGE_BYTES};
use omoi_store::wakeup::listen;
use omoi_store::{Cursor, StoredEvent};
use sqlx::PgPool;
use tokio::sync::{watch, OnceCell};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::protocol;
use super::sockets::Sockets;
use super::transcript_watch::{Following, TranscriptWatch};
use super::views::Followers;
use super::window::{self, Window};
use super::{AbortOnDrop, LiveConfig};

/// An event as the hub shares it: one copy for the ring and every subscriber.
pub type SharedEvent = Arc<LiveEvent>;

/// An event, and the message bodies that carry it to clients: each is encoded by the
/// first subscriber that sends it and shared by every other (and kept with the event in
/// the ring, so a resumption from memory encodes nothing).
#[derive(Debug)]
pub struct LiveEvent {
    event: StoredEvent,
    delta: OnceLock<Utf8Bytes>,
    feed: OnceLock<Utf8Bytes>,
}

impl LiveEvent {
    pub fn new(event: StoredEvent) -> Self {
        Self {
            event,
            delta: OnceLock::new(),
            feed: OnceLock::new(),
        }
    }

    /// The body of an `/api/v1/ws` delta ([`protocol::delta_frame`]).
    pub fn delta_body(&self) -> Utf8Bytes {
        self.delta
            .get_or_init(|| protocol::event_delta_body(&self.event))
            .clone()
    }

    /// The whole `/api/v1/ws/events` message: the same for every client.
    pub fn feed_message(&self) -> Utf8Bytes {
        self.feed
            .get_or_init(|| protocol::feed_message(&self.event))
            .clone()
    }
}

impl Deref for LiveEvent {
    type Target = StoredEvent;

    fn deref(&self) -> &StoredEvent {
        &self.event
    }
}

pub struct Hub {
    shared: Arc<Shared>,
    pool: PgPool,
    commits: watch::Receiver<u64>,
    config: LiveConfig,
    started: OnceCell<()>,
    followers: Followers,
    sockets: Arc<Sockets>,
    /// The transcripts this process's `logs` subscriptions follow.
    transcripts: TranscriptWatch,
    /// Set as the server shuts down: every socket closes ([`Hub::close_sockets`]).
    closing: watch::Sender<bool>,
}

struct Shared {
    ring: Mutex<Ring>,
    /// Followers (read models, the claims queue) that fell behind the broadcast and read
    /// what they missed from the log ([`Tapper::tap_after`]).
    catch_ups: AtomicU64,
}

/// The ring holds exactly the events with a cursor in `(floor, head]`.
struct Ring {
    events: VecDeque<SharedEvent>,
    /// Events kept at most.
    capacity: usize,
    /// Bytes kept at most, and kept now (the events' [`weight`]s).
    byte_capacity: usize,
    bytes: usize,
    floor: Cursor,
    head: Cursor,
    /// The events sent to subscribers: a tap subscribes, and an event is kept and sent,
    /// under the ring's lock.
    window: Window<LiveEvent>,
}

/// What an event costs the ring, roughly: its payload three times (the event's own, then
/// its delta and feed messages once a subscriber encoded them) and its other fields.
fn weight(event: &LiveEvent) -> usize {
    3 * event.event.payload.get().len() + EVENT_OVERHEAD
}

/// The fields of an event besides its payload, and their encodings, generously.
const EVENT_OVERHEAD: usize = 1024;

impl Ring {
    fn new(capacity: usize, byte_capacity: usize, window: Window<LiveEvent>) -> Self {
        Self {
            events: VecDeque::new(),
            capacity,
            byte_capacity,
            bytes: 0,
            floor: Cursor::default(),
            head: Cursor::default(),
            window,
        }
    }

    /// Follows the stream from its head: every later event arrives on the receiver.
    fn tap(&self) -> Tap {
        Tap {
            head: self.head,
            events: self.window.subscribe(),
        }
    }

    /// Keeps `event` and sends it to every subscriber (none is not an error: the ring
    /// still keeps it).
    fn publish(&mut self, event: SharedEvent) {
        self.push(event.clone());
        let weight = weight(&event);
        self.window.send(event, weight);
    }

    /// Keeps `event`, dropping the oldest until both bounds hold; an event larger than
    /// the bytes allowed is not kept (as in a ring of no capacity, the floor moves to it).
    fn push(&mut self, event: SharedEvent) {
        self.head = event.cursor();
        let added = weight(&event);
        if self.capacity == 0 || added > self.byte_capacity {
            self.events.clear();
            self.bytes = 0;
            self.floor = self.head;
            return;
        }
        while self.events.len() >= self.capacity || self.bytes + added > self.byte_capacity {
            let Some(oldest) = self.events.pop_front() else {
                break;
            };
            self.bytes -= weight(&oldest);
            self.floor = oldest.cursor();
        }
        self.bytes += added;
        self.events.push_back(event);
    }
}

/// A subscriber's start: the position it starts after and the events that follow it.
pub struct Tap {
    pub head: Cursor,
    pub events: window::Receiver<LiveEvent>,
}

/// Taps the stream again for a task that fell behind the channel: see [`Hub::tapper`].
#[derive(Clone)]
pub struct Tapper {
    shared: Weak<Shared>,
    pool: PgPool,
    batch: i64,
}

impl Tapper {
    /// Taps the stream and reads the log from `from` up to the tap's head, handing each
    /// visible event to `apply` (the catch-up of [`Hub::tap_after_replay`] from a place
    /// in the stream instead of its start); `None` once the hub is gone.
    pub async fn tap_after<E: From<sqlx::Error>>(
        &self,
        from: Cursor,
        visibility: &Visibility,
        apply: impl FnMut(&StoredEvent) -> Result<(), E>,
    ) -> Result<Option<Tap>, E> {
        let Some(shared) = self.shared.upgrade() else {
            return Ok(None);
        };
        shared.catch_ups.fetch_add(1, Ordering::Relaxed);
        let tap = {
            let ring = shared.lock();
            ring.tap()
        };
        drop(shared);
        self.read_up_to(from, tap.head, visibility, apply).await?;
        Ok(Some(tap))
    }

    /// Hands `apply` the visible events after `from` up to and including `head`.
    async fn read_up_to<E: From<sqlx::Error>>(
        &self,
        from: Cursor,
        head: Cursor,
        visibility: &Visibility,
        mut apply: impl FnMut(&StoredEvent) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut cursor = from;
        loop {
            let page = read_global_within(&self.pool, cursor, self.batch, PAGE_BYTES, visibility)
                .await?
                .page;
            if page.events.is_empty() {
                return Ok(());
            }
            for event in &page.events {
                if event.cursor() > head {
                    return Ok(());
                }
                apply(event)?;
            }
            cursor = page.next;
        }
    }
}

/// A resumption from a client's cursor.
pub struct Resume {
    pub tap: Tap,
    /// Kept events after the client's cursor, up to `tap.head`.
    pub buffered: Vec<SharedEvent>,
    /// When the cursor is older than the ring: the ring's floor. Events in
    /// `(cursor, floor]` are no longer in memory and must come from the database.
    pub older_than_buffer: Option<Cursor>,
}

impl Hub {
    pub fn new(pool: PgPool, commits: watch::Receiver<u64>, config: LiveConfig) -> Self {
        let window = Window::new(config.broadcast_capacity, config.broadcast_bytes);
        let ring = Ring::new(config.replay_buffer, config.replay_bytes, window);
        Self {
            shared: Arc::new(Shared {
                ring: Mutex::new(ring),
                catch_ups: AtomicU64::new(0),
            }),
            pool,
            commits,
            started: OnceCell::new(),
            followers: Followers::default(),
            sockets: Sockets::new(config.max_sockets_per_principal),
            transcripts: TranscriptWatch::default(),
            closing: watch::channel(false).0,
            config,
        }
    }

    /// Closes every socket of this process, and every one upgraded from now on: the server
    /// is shutting down. An upgraded connection is a task of its own, which the HTTP
    /// server's graceful shutdown neither waits for nor ends; a process that lives on (a
    /// server stopped in a test, say) kept serving its sockets from a hub nobody else
    /// used, and their clients never reconnected.
    pub fn close_sockets(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once [`Self::close_sockets`] was called.
    pub async fn sockets_closing(&self) {
        let mut closing = self.closing.subscribe();
        // The sender lives as long as the hub, which outlives its sockets.
        let _ = closing.wait_for(|closing| *closing).await;
    }

    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// A `logs` subscription's hold on an attempt's transcript: what it waits on between
    /// reads ([`TranscriptWatch`]).
    pub fn follow_transcript(&self, task_id: uuid::Uuid, attempt: u32) -> Following {
        self.transcripts
            .follow(&self.pool, self.config.poll_interval, task_id, attempt)
    }

    /// Tells this process's `logs` subscriptions of `task_id` that its transcript grew;
    /// the others are not woken (each woken subscription reads the database).
    pub fn transcript_written(&self, task_id: uuid::Uuid, attempt: u32, lines: i64) {
        self.transcripts.written(task_id, attempt, lines);
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The read-model followers of this process (`board`, …).
    pub fn followers(&self) -> &Followers {
        &self.followers
    }

    /// The open WebSockets of this process, per principal.
    pub fn sockets(&self) -> &Arc<Sockets> {
        &self.sockets
    }

    /// Gauges for `/metrics`: open sockets and read-model followers held in memory; and
    /// how often a follower fell behind the broadcast (its 4,096 events, or
    /// `live.broadcast_bytes` of large ones: raise the latter if this climbs steadily).
    pub fn render_prometheus(&self) -> String {
        let gauges = [
            ("omoi_live_sockets", "Open WebSockets", self.sockets.total()),
            (
                "omoi_live_followers",
                "Read-model followers held in memory (one per stream and project)",
                self.followers.count(),
            ),
        ];
        let mut text: String = gauges
            .iter()
            .map(|(name, help, value)| {
                format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n")
            })
            .collect();
        let catch_ups = self.shared.catch_ups.load(Ordering::Relaxed);
        text.push_str(&format!(
            "# HELP omoi_live_follower_catch_ups_total Followers (read models, the claims \
             queue) that fell behind the hub's broadcast and read what they missed from the \
             log\n\
             # TYPE omoi_live_follower_catch_ups_total counter\n\
             omoi_live_follower_catch_ups_total {catch_ups}\n"
        ));
        let transcript_reads = self.transcripts.reads();
        text.push_str(&format!(
            "# HELP omoi_live_transcript_reads_total Reads of a transcript by `logs` \
             subscriptions (each when its transcript may have grown)\n\
             # TYPE omoi_live_transcript_reads_total counter\n\
             omoi_live_transcript_reads_total {transcript_reads}\n"
        ));
        text
    }

    /// Taps the stream and reads the log up to the tap's head, handing each visible event
    /// to `apply`: a model built this way, then fed the tap's events, misses nothing and
    /// sees nothing twice. Stops at `apply`'s first error.
    pub async fn tap_after_replay<E: From<sqlx::Error>>(
        &self,
        visibility: &Visibility,
        apply: impl FnMut(&StoredEvent) -> Result<(), E>,
    ) -> Result<Tap, E> {
        let tap = self.tap().await?;
        self.tapper()
            .read_up_to(Cursor::default(), tap.head, visibility, apply)
            .await?;
        Ok(tap)
    }

    /// What a task needs to tap the stream again later (a follower that fell behind the
    /// channel), without keeping the hub alive.
    pub fn tapper(&self) -> Tapper {
        Tapper {
            shared: Arc::downgrade(&self.shared),
            pool: self.pool.clone(),
            batch: self.config.batch_size.max(1),
        }
    }

    /// Starts following the stream from now: every event after the returned head arrives
    /// on the receiver.
    pub async fn tap(&self) -> Result<Tap, sqlx::Error> {
        self.start().await?;
        let ring = self.shared.lock();
        Ok(ring.tap())
    }

    /// Like [`Hub::tap`], with the kept events after `after` that `keep` accepts.
    pub async fn resume(
        &self,
        after: Cursor,
        keep: impl Fn(&StoredEvent) -> bool,
    ) -> Result<Resume, sqlx::Error> {
        self.start().await?;
        let ring = self.shared.lock();
        let buffered = ring
            .events
            .iter()
            .filter(|e| e.cursor() > after && keep(e))
            .cloned()
            .collect();
        Ok(Resume {
            tap: ring.tap(),
            buffered,
            older_than_buffer: (after < ring.floor).then_some(ring.floor),
        })
    }

    /// Reads the newest position once and spawns the follower; concurrent first callers
    /// wait for the same start, and a failed start is retried by the next caller.
    async fn start(&self) -> Result<(), sqlx::Error> {
        self.started
            .get_or_try_init(|| async {
                let head = newest_cursor(&self.pool).await?;
                {
                    let mut ring = self.shared.lock();
                    ring.head = head;
                    ring.floor = head;
                }
                let follower = Follower {
                    shared: Arc::downgrade(&self.shared),
                    pool: self.pool.clone(),
                    commits: self.commits.clone(),
                    cursor: head,
                    batch_size: self.config.batch_size.max(1),
                    poll_interval: self.config.poll_interval,
                };
                tokio::spawn(follower.run());
                Ok(())
            })
            .await
            .map(|_| ())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Ring> {
        // The ring is consistent after every statement that changes it, so a panic
        // elsewhere while the lock was held leaves nothing half-done.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, events: Vec<StoredEvent>) {
        let mut ring = self.lock();
        for event in events {
            ring.publish(Arc::new(LiveEvent::new(event)));
        }
    }
}

/// The newest position every future event will come after: the last visible event.
/// Anything not yet visible belongs to a transaction at or above `xmin`, so its cursor is
/// greater.
pub(crate) async fn newest_cursor(pool: &PgPool) -> Result<Cursor, sqlx::Error> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "select transaction_id::text::bigint, global_position from events
          where transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          order by transaction_id desc, global_position desc
          limit 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map_or_else(Cursor::default, |(transaction_id, global_position)| {
            Cursor {
                transaction_id,
                global_position,
            }
        }),
    )
}

struct Follower {
    /// Weak, so that the follower ends once the application state is dropped.
    shared: Weak<Shared>,
    pool: PgPool,
    commits: watch::Receiver<u64>,
    cursor: Cursor,
    batch_size: i64,
    poll_interval: Duration,
}

impl Follower {
    async fn run(mut self) {
        let (wake, mut notified) = watch::channel(0u64);
        let options = (*self.pool.connect_options()).clone();
        let _listener = AbortOnDrop(tokio::spawn(listen(options, wake)));
        loop {
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let full = self.step(&shared).await;
            drop(shared);
            if full {
                continue;
            }
            tokio::select! {
                changed = self.commits.changed() => if changed.is_err() { return },
                _ = notified.changed() => {}
                () = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }

    /// Reads and publishes one batch; true when the batch was full (more may wait).
    async fn step(&mut self, shared: &Shared) -> bool {
        match read_global_within(
            &self.pool,
            self.cursor,
            self.batch_size,
            PAGE_BYTES,
            &Visibility::Everything,
        )
        .await
        {
            Ok(WeighedPage { page, full }) => {
                self.cursor = page.next;
                shared.publish(page.events);
                full
            }
            Err(error) => {
                tracing::warn!(%error, "live hub: cannot read the event stream; retrying");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(transaction_id: i64, global_position: i64) -> SharedEvent {
        Arc::new(LiveEvent::new(StoredEvent {
            aggregate_type: "Ticket".into(),
            aggregate_id: "t".into(),
            sequence: 1,
            global_position,
            transaction_id,
            event_type: "TicketCreated".into(),
            event_version: "1".into(),
            payload: serde_json::Value::Null.into(),
            metadata: serde_json::Value::Null.into(),
        }))
    }

    #[test]
    fn the_ring_keeps_the_newest_events_and_moves_its_floor() {
        let mut ring = Ring::new(2, usize::MAX, Window::new(1, 0));
        for position in 1..=3 {
            ring.push(event(10, position));
        }
        assert_eq!(ring.events.len(), 2);
        assert_eq!(ring.floor.to_string(), "10-1");
        assert_eq!(ring.head.to_string(), "10-3");
    }

    #[test]
    fn an_events_messages_are_encoded_once_and_shared_by_every_subscriber() {
        let shared = event(10, 1);
        let (first, second) = (shared.delta_body(), shared.delta_body());
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
        assert!(first.as_str().starts_with(r#""position":"10-1","event":{"#));
        let (first, second) = (shared.feed_message(), shared.feed_message());
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
    }

    /// Large events are kept within the bytes allowed, whatever their count: the oldest
    /// go first, and one larger than all of it is not kept at all.
    #[test]
    fn the_ring_keeps_no_more_bytes_than_allowed() {
        let large = |position: i64, bytes: usize| {
            let mut event = event(10, position);
            Arc::get_mut(&mut event).expect("unshared").event.payload =
                serde_json::Value::String("x".repeat(bytes)).into();
            event
        };
        let one = weight(&large(1, 100_000));
        let mut ring = Ring::new(10_000, 3 * one, Window::new(1, 0));
        for position in 1..=5 {
            ring.push(large(position, 100_000));
            assert!(ring.bytes <= 3 * one);
        }
        assert_eq!(ring.events.len(), 3);
        assert_eq!(ring.bytes, 3 * one);
        assert_eq!(ring.floor.to_string(), "10-2");
        assert_eq!(ring.head.to_string(), "10-5");
        // Larger than everything allowed: nothing kept, the floor at it.
        ring.push(large(6, 400_000));
        assert!(ring.events.is_empty());
        assert_eq!(ring.bytes, 0);
        assert_eq!(ring.floor.to_string(), "10-6");
        // Small ones are kept again.
        ring.push(event(10, 7));
        assert_eq!(ring.events.len(), 1);
        assert_eq!(ring.floor.to_string(), "10-6");
    }

    #[test]
    fn a_ring_of_no_capacity_only_moves() {
        let mut ring = Ring::new(0, usize::MAX, Window::new(1, 0));
        ring.push(event(3, 7));
        assert!(ring.events.is_empty());
        assert_eq!(
            (ring.floor, ring.head),
            (event(3, 7).cursor(), event(3, 7).cursor())
        );
    }
}
