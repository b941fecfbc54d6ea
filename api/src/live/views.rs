//! Read-model streams (`board`, …): one shared [`Follower`] per (stream, project) per
//! process keeps the read model of the project in memory, folded from the log with the
//! projector's own pure rule, and turns each event that changes it into one delta.
//!
//! A follower starts by tapping the hub (position `head`, then every later event) and
//! replaying the project's events up to `head` from the database; from then on it applies
//! what the hub broadcasts. Under one lock it applies an event, records the delta in a
//! ring (for resumption) and broadcasts it; a subscriber takes its snapshot and its
//! receiver under the same lock — so a snapshot at position `p` plus the deltas after `p`
//! is exactly the model, with no gap and no double.
//!
//! Deltas are computed and encoded once per follower, not once per subscriber: a thousand
//! dashboards on one board cost one fold, and one copy of each delta and snapshot (the
//! subscribers' frames share its bytes). A follower no subscriber has used for
//! `follower_idle` ends (a reconnect within that time still resumes from its ring) and is
//! removed from the registry with its model, so the memory of the followers is that of the
//! (stream, project) pairs somebody watches, not of every pair ever watched.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use omoi_projections::ProjectionError;
use omoi_store::json::Metadata;
use omoi_store::log::Visibility;
use omoi_store::{Cursor, StoredEvent};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::OnceCell;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

use super::hub::{Hub, Tap, Tapper};
use super::models::{LiveView, Reach, Snapshot};
use super::protocol::view_delta_body;
use super::window::{self, Window};

/// One change of a followed model, encoded once.
#[derive(Debug)]
pub enum Delta {
    Change {
        position: Cursor,
        /// The delta's body after the subscription's id
        /// ([`delta_frame`](super::protocol::delta_frame)), shared by every
        /// subscriber.
        body: Utf8Bytes,
    },
    /// The follower could not keep up with the hub (or the log failed): every subscriber
    /// must subscribe again.
    Resync,
}

impl Delta {
    /// What it costs a follower's window: its body, and the rest generously.
    fn weight(&self) -> usize {
        match self {
            Self::Change { body, .. } => body.len() + 64,
            Self::Resync => 0,
        }
    }
}

/// What a subscription starts from.
pub enum Start {
    Snapshot {
        position: Cursor,
        data: Snapshot,
        /// The client asked to resume from a position older than the follower's memory.
        stale: bool,
    },
    Resumed {
        position: Cursor,
        missed: Vec<Arc<Delta>>,
    },
}

struct State {
    view: Box<dyn LiveView>,
    position: Cursor,
    /// Recent deltas; exactly those with a position in `(floor, position]`.
    recent: VecDeque<Arc<Delta>>,
    floor: Cursor,
    capacity: usize,
    /// The model as last encoded, until it changes: a thousand dashboards opening at
    /// once cost one encoding.
    encoded: Option<Snapshot>,
    /// The deltas sent to subscribers: a subscriber joins, and a delta is sent, under the
    /// follower's lock.
    window: Window<Delta>,
}

impl State {
    fn snapshot(&mut self) -> Snapshot {
        self.encoded
            .get_or_insert_with(|| self.view.snapshot())
            .clone()
    }
}

pub struct Follower {
    state: Mutex<State>,
    /// Set when its task ends: the next subscriber starts a new follower.
    ended: AtomicBool,
}

impl Follower {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The subscription's start and its receiver of later deltas, taken together; `None`
    /// when the follower has just ended (follow again for a new one).
    pub fn join(&self, after: Option<Cursor>) -> Option<(Start, window::Receiver<Delta>)> {
        let mut state = self.lock();
        if !self.is_running() {
            return None;
        }
        let receiver = state.window.subscribe();
        let start = match after {
            Some(after) if after >= state.floor => Start::Resumed {
                position: after,
                missed: state
                    .recent
                    .iter()
                    .filter(|d| matches!(***d, Delta::Change { position, .. } if position > after))
                    .cloned()
                    .collect(),
            },
            _ => Start::Snapshot {
                position: state.position,
                data: state.snapshot(),
                stale: after.is_some(),
            },
        };
        Some((start, receiver))
    }

    fn is_running(&self) -> bool {
        !self.ended.load(Ordering::Acquire)
    }
}

/// A project and its organization.
#[derive(Debug, Clone, Copy)]
pub struct ProjectRef {
    pub organization_id: Uuid,
    pub project_id: Uuid,
}

/// The key of a follower.
type Key = (&'static str, Uuid);

/// The followers by key; a cell is filled once its follower has replayed the project.
type Registry = Mutex<HashMap<Key, Arc<OnceCell<Arc<Follower>>>>>;

/// The followers of one process.
#[derive(Default)]
pub struct Followers {
    running: Arc<Registry>,
}

/// Deltas kept per follower for resumption.
const RECENT_DELTAS: usize = 1_000;

impl Followers {
    /// The running follower of `stream` for `project`, started (and the project
    /// replayed) on first use.
    pub async fn follow(
        &self,
        hub: &Hub,
        stream: &'static str,
        project: ProjectRef,
        view: impl FnOnce() -> Option<Box<dyn LiveView>>,
    ) -> Result<Arc<Follower>, sqlx::Error> {
        let key = (stream, project.project_id);
        let cell = {
            let mut running = lock(&self.running);
            let cell = running.entry(key).or_default();
            if cell.get().is_some_and(|f| !f.is_running()) {
                *cell = Arc::default();
            }
            cell.clone()
        };
        let started = cell
            .get_or_try_init(|| async {
                let view = view().ok_or_else(|| {
                    sqlx::Error::Protocol(format!("{stream:?} is not a read-model stream"))
                })?;
                let registry = Arc::downgrade(&self.running);
                start(hub, project, view, (registry, key)).await
            })
            .await
            .cloned();
        if started.is_err() {
            // Nothing started: leave no empty entry behind (the next subscriber retries).
            forget(&self.running, key, |entry| {
                Arc::ptr_eq(entry, &cell) && entry.get().is_none()
            });
        }
        started
    }

    /// Followers held in memory (running, or ended and not yet removed).
    pub fn count(&self) -> usize {
        lock(&self.running).len()
    }
}

fn lock(registry: &Registry) -> MutexGuard<'_, HashMap<Key, Arc<OnceCell<Arc<Follower>>>>> {
    // Every change is one statement: a panic elsewhere leaves the map whole.
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Removes the entry of `key` if `which` says it is the one meant (a newer follower may
/// have replaced it meanwhile).
fn forget(
    registry: &Registry,
    key: Key,
    which: impl FnOnce(&Arc<OnceCell<Arc<Follower>>>) -> bool,
) {
    let mut running = lock(registry);
    if running.get(&key).is_some_and(which) {
        running.remove(&key);
    }
}

/// Where a follower is registered, so that it removes itself when it ends.
type Entry = (Weak<Registry>, Key);

/// Taps the hub, replays the project up to the tap's head, and starts following.
async fn start(
    hub: &Hub,
    project: ProjectRef,
    mut view: Box<dyn LiveView>,
    entry: Entry,
) -> Result<Arc<Follower>, sqlx::Error> {
    let reach = view.reach();
    let visibility = Visibility::Organizations {
        organizations: vec![project.organization_id],
        project: (reach == Reach::Project).then_some(project.project_id),
    };
    let tap = hub
        .tap_after_replay(&visibility, |event| {
            view.apply(event).map(|_| ()).map_err(replay_error)
        })
        .await?;
    let window = Window::new(
        hub.config().broadcast_capacity,
        hub.config().broadcast_bytes,
    );
    let follower = Arc::new(Follower {
        state: Mutex::new(State {
            view,
            position: tap.head,
            recent: VecDeque::new(),
            floor: tap.head,
            capacity: RECENT_DELTAS,
            encoded: None,
            window,
        }),
        ended: AtomicBool::new(false),
    });
    // The task owns a reference: it ends on its own (idle, behind, or the hub gone), and
    // then removes the follower from the registry.
    // Never zero: the task wakes every half of it.
    let idle = hub.config().follower_idle.max(Duration::from_millis(10));
    let task = follow(
        follower.clone(),
        tap,
        hub.tapper(),
        visibility,
        project,
        reach,
        idle,
    );
    tokio::spawn(finally_forget(task, follower.clone(), entry));
    Ok(follower)
}

fn replay_error(error: ProjectionError) -> sqlx::Error {
    match error {
        ProjectionError::Database(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// Runs a follower's task, then removes the follower from the registry (unless a newer
/// one has taken its place already).
async fn finally_forget(task: impl Future<Output = ()>, follower: Arc<Follower>, entry: Entry) {
    task.await;
    let (registry, key) = entry;
    if let Some(registry) = registry.upgrade() {
        forget(&registry, key, |cell| {
            cell.get().is_some_and(|f| Arc::ptr_eq(f, &follower))
        });
    }
}

/// Applies the hub's events to the follower until it fails, is idle, or the hub is gone.
/// Behind the hub's channel (a long replay of a large organization while the log moved
/// on, or a burst of other projects' events), it reads what it missed from the log and
/// taps again, instead of ending: a follower that ended would be replayed from the start
/// by its next subscriber, and on a busy log fall behind the same way again.
async fn follow(
    follower: Arc<Follower>,
    mut tap: Tap,
    tapper: Tapper,
    visibility: Visibility,
    project: ProjectRef,
    reach: Reach,
    idle: Duration,
) {
    let (field, id): (fn(&Metadata) -> Option<&str>, String) = match reach {
        Reach::Project => (Metadata::project_id, project.project_id.to_string()),
        Reach::Organization => (
            Metadata::organization_id,
            project.organization_id.to_string(),
        ),
    };
    let in_reach = |event: &StoredEvent| field(&event.metadata) == Some(id.as_str());
    let mut last_used = tokio::time::Instant::now();
    loop {
        // Busy or quiet, a follower nobody has subscribed to for a while ends.
        if follower.lock().window.receiver_count() > 0 {
            last_used = tokio::time::Instant::now();
        } else if last_used.elapsed() >= idle {
            return end(&follower, false);
        }
        let taken = match tokio::time::timeout(idle / 2, tap.events.recv()).await {
            Ok(Ok(event)) => take(&follower, &event, in_reach(&event)),
            Ok(Err(RecvError::Lagged(_))) => {
                let from = follower.lock().position;
                let caught_up = tapper
                    .tap_after(from, &visibility, |event| {
                        take(&follower, event, in_reach(event))
                    })
                    .await;
                match caught_up {
                    Ok(Some(again)) => {
                        let mut state = follower.lock();
                        state.position = state.position.max(again.head);
                        tap = again;
                        Ok(())
                    }
                    Ok(None) => break,
                    Err(error) => Err(error),
                }
            }
            Ok(Err(RecvError::Closed)) => break,
            Err(_) => continue,
        };
        if let Err(error) = taken {
            tracing::error!(%error, "live view cannot follow the stream");
            return end(&follower, true);
        }
    }
    end(&follower, true);
}

/// Why a follower stops: its view refused an event, or the log could not be read.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("cannot apply the event at {position}: {source}")]
    Apply {
        position: Cursor,
        source: ProjectionError,
    },
    #[error("cannot read the log: {0}")]
    Read(#[from] sqlx::Error),
}

/// Applies one event after the follower's position to its view (`in_reach`: the event
/// belongs to the view's project or organization) and sends the change it makes.
fn take(follower: &Follower, event: &StoredEvent, in_reach: bool) -> Result<(), FollowError> {
    let mut state = follower.lock();
    if event.cursor() <= state.position {
        return Ok(());
    }
    state.position = event.cursor();
    if !in_reach {
        return Ok(());
    }
    let change = state
        .view
        .apply(event)
        .map_err(|source| FollowError::Apply {
            position: event.cursor(),
            source,
        })?;
    if let Some(change) = change {
        state.encoded = None;
        let delta = Arc::new(Delta::Change {
            position: event.cursor(),
            body: view_delta_body(event.cursor(), &change.to_string()),
        });
        while state.recent.len() >= state.capacity {
            if let Some(Delta::Change { position, .. }) = state.recent.pop_front().as_deref() {
                state.floor = *position;
            }
        }
        state.recent.push_back(delta.clone());
        let weight = delta.weight();
        state.window.send(delta, weight);
    }
    Ok(())
}

/// Ends a follower; its subscribers are told to resync when it ends abnormally.
fn end(follower: &Follower, resync: bool) {
    // Under the lock `join` takes: nobody joins a follower that has ended.
    let mut state = follower.lock();
    follower.ended.store(true, Ordering::Release);
    if resync {
        state.window.send(Arc::new(Delta::Resync), 0);
    }
}
