//! Tasks claimed by HTTP agents (`POST /api/v1/agents/{id}/claim`): the process keeps the
//! orchestrator's [`Queue`] folded from the hub's events (started on the first claim), and
//! a claim assigns the best ready task the agent may run — its organization, its project
//! if it has one, capabilities covering the task's, within the concurrency caps —
//! waiting up to the claim's time for one to become ready.
//!
//! The assignment is a command on the task aggregate, so a claim racing a worker (or
//! another replica's claim) for one task loses cleanly and tries the next. Within a
//! process, claims decide one at a time and count their own assignments until the queue
//! has applied them (it follows the log a moment behind; the assignment's version tells
//! when), so the caps hold; across replicas (or beside a worker) a cap may be overshot by
//! the assignments racing in the same instant. An agent may have only a few claims
//! waiting at once ([`ClaimRules::claims_per_agent`]): each holds a request open.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::Utc;
use omoi_orchestrator::queue::{Queue, QueuedTask};
use omoi_orchestrator::reservations::{Place, Reservations};
use omoi_orchestrator::score::ScoreConfig;
use omoi_store::log::Visibility;
use omoi_store::{Cursor, StoredEvent};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, OnceCell};
use uuid::Uuid;

use crate::live::hub::Tapper;
use crate::live::Hub;

/// The rules claims follow (the worker's: settings `worker.*`; the organization's cap
/// comes from its plan).
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub score: ScoreConfig,
    pub project_concurrency: usize,
    /// Claims one agent may have waiting at once; more are refused (429).
    pub claims_per_agent: usize,
}

impl Default for ClaimRules {
    fn default() -> Self {
        let worker = omoi_orchestrator::WorkerConfig::default();
        Self {
            score: worker.score,
            project_concurrency: worker.project_concurrency,
            claims_per_agent: worker.claims_per_agent,
        }
    }
}

/// Who claims.
#[derive(Debug, Clone)]
pub struct Claimant {
    pub agent_id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub capabilities: BTreeSet<String>,
    pub capacity: usize,
    /// Tasks the organization's agents may hold at once (its plan's limit).
    pub organization_cap: usize,
}

#[derive(Default)]
pub struct Claims {
    rules: ClaimRules,
    queue: Arc<Mutex<Queue>>,
    /// Notified whenever the queue changes: waiting claims look again.
    changed: Arc<Notify>,
    started: OnceCell<()>,
    /// Claims of this process decide one at a time, so two cannot both take the last
    /// place under a cap.
    deciding: tokio::sync::Mutex<()>,
    /// Assignments made here that the queue has not applied yet (it follows the log a
    /// moment behind): counted against the caps meanwhile.
    unseen: Mutex<Reservations>,
    /// Claims waiting, per agent.
    waiting: Mutex<HashMap<Uuid, usize>>,
    /// How far in the log the queue has read.
    read: Arc<Mutex<Cursor>>,
    /// Set as the server shuts down: waiting claims answer "nothing" at once instead of
    /// holding the server's drain for up to a minute.
    closing: std::sync::atomic::AtomicBool,
    /// Claims that looked, found nothing, and wait for a change now.
    parked: std::sync::atomic::AtomicUsize,
}

/// Counts a claim as parked while it lives (its wait, however that ends).
struct Parked<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Parked<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How long a claim waits for its queue to read the tasks committed before it. Bounded,
/// so that a hub in trouble does not hold claims; at 250 ms a hub lagging on a saturated
/// machine (the test suite on two cores) let a claim hand out a lower-priority task than
/// one committed before it.
const READ_UP_WAIT: Duration = Duration::from_secs(1);

/// How many ready tasks one look tries to assign before waiting again.
const TRIES_PER_LOOK: usize = 8;

impl Claims {
    pub fn new(rules: ClaimRules) -> Self {
        Self {
            rules,
            ..Self::default()
        }
    }

    /// Ends every waiting claim with nothing, and any claim made from now on after one
    /// look: the server is shutting down and finishes the requests it holds.
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts following the log on first use.
    async fn start(&self, hub: &Arc<Hub>) -> Result<(), sqlx::Error> {
        self.started
            .get_or_try_init(|| async {
                let queue = self.queue.clone();
                let changed = self.changed.clone();
                let read = self.read.clone();
                let first = follow_once(hub, &queue, &changed, &read).await?;
                tokio::spawn(follow(hub.tapper(), queue, changed, read, first));
                Ok::<(), sqlx::Error>(())
            })
            .await
            .map(|_| ())
    }

    /// The ready tasks `claimant` may run now, best first.
    fn candidates(&self, claimant: &Claimant) -> Vec<QueuedTask> {
        let queue = self.queue();
        let mut unseen = self.unseen.lock().unwrap_or_else(PoisonError::into_inner);
        unseen.forget_seen(&queue);
        let held = queue.held_by(claimant.agent_id).len() + unseen.held_by(claimant.agent_id);
        // An agent holding as many tasks as its capacity waits (the queue may also not
        // have seen its last completion yet).
        if held >= claimant.capacity {
            return Vec::new();
        }
        // Only the claimant's organization's tasks are counted and looked at.
        let mut active = queue.active_in(claimant.organization_id);
        active.add(&unseen.held_in(claimant.organization_id));
        if active.organization >= claimant.organization_cap {
            return Vec::new();
        }
        queue
            .ready_in(
                claimant.organization_id,
                &claimant.capabilities,
                Utc::now(),
                &self.rules.score,
            )
            .filter_map(|c| queue.task(c.task_id))
            .filter(|task| {
                !unseen.contains(task.id)
                    && claimant.project_id.is_none_or(|p| p == task.project_id)
                    && task.suits(
                        claimant.organization_id,
                        Some(claimant.agent_id),
                        &claimant.capabilities,
                    )
                    && active.in_project(task.project_id) < self.rules.project_concurrency
            })
            .take(TRIES_PER_LOOK)
            .cloned()
            .collect()
    }

    /// Assigns a task to the claimant with `assign` (which answers the assignment and the
    /// task's version after it when it committed), waiting up to `wait` for one; `None`
    /// when none came.
    pub async fn claim<F, Fut, T, E>(
        &self,
        hub: &Arc<Hub>,
        claimant: &Claimant,
        wait: Duration,
        assign: F,
    ) -> Result<Option<T>, ClaimError<E>>
    where
        F: Fn(Uuid) -> Fut,
        Fut: std::future::Future<Output = Result<Option<(T, u64)>, E>>,
    {
        let _waiting = self
            .wait_turn(claimant.agent_id)
            .ok_or(ClaimError::TooManyWaiting {
                allowed: self.rules.claims_per_agent,
            })?;
        self.start(hub).await.map_err(ClaimError::Log)?;
        self.read_up(hub).await.map_err(ClaimError::Log)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a change during the look is not missed.
            let changed = self.changed.notified();
            {
                let _turn = self.deciding.lock().await;
                for task in self.candidates(claimant) {
                    if let Some((assigned, version)) =
                        assign(task.id).await.map_err(ClaimError::Assign)?
                    {
                        self.unseen
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .reserve(&task, claimant.agent_id, Some(version));
                        return Ok(Some(assigned));
                    }
                }
            }
            // A retry falling due changes no event: wake for it too.
            let retry_due = self
                .queue()
                .next_retry(Utc::now())
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .map(|wait| tokio::time::Instant::now() + wait + Duration::from_millis(1));
            let wake = retry_due.map_or(deadline, |due| due.min(deadline));
            // Checked after `changed` was registered: a close during the look wakes it.
            if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(None);
            }
            let parked = Parked::new(&self.parked);
            let woken = tokio::time::timeout_at(wake, changed).await;
            drop(parked);
            if woken.is_err() && tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

impl Claims {
    /// A person's assignment (`assign`, answering the task's version after it), made only
    /// while the organization holds fewer tasks than `organization_cap`: decided in turn
    /// with this process's claims and counted against the caps as their assignments are.
    /// `None` when the organization is at its cap. The queue follows the gapless stream,
    /// which any transaction open anywhere holds back: a task that ended a moment ago may
    /// still show as held there. So before refusing, the tasks it counts are asked of their
    /// own histories (`still_held`), which every commit reaches at once.
    pub async fn assign_within_cap<Held, HeldFut, Assign, AssignFut, T, E>(
        &self,
        hub: &Arc<Hub>,
        place: Place,
        organization_cap: usize,
        still_held: Held,
        assign: Assign,
    ) -> Result<Option<T>, E>
    where
        Held: Fn(Uuid) -> HeldFut,
        HeldFut: std::future::Future<Output = Result<bool, E>>,
        Assign: FnOnce() -> AssignFut,
        AssignFut: std::future::Future<Output = Result<(T, u64), E>>,
        E: From<sqlx::Error>,
    {
        self.start(hub).await?;
        self.read_up(hub).await?;
        let _turn = self.deciding.lock().await;
        let counted: BTreeSet<Uuid> = {
            let queue = self.queue();
            let mut unseen = self.unseen.lock().unwrap_or_else(PoisonError::into_inner);
            unseen.forget_seen(&queue);
            queue
                .active()
                .filter(|task| {
                    task.organization_id == place.organization_id && task.holds_a_place()
                })
                .map(|task| task.id)
                .chain(unseen.tasks_in(place.organization_id))
                .collect()
        };
        if counted.len() >= organization_cap {
            let mut held = 0;
            for task_id in counted {
                if still_held(task_id).await? {
                    held += 1;
                }
            }
            if held >= organization_cap {
                return Ok(None);
            }
        }
        let (assigned, version) = assign().await?;
        self.unseen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reserve_place(place, Some(version));
        Ok(Some(assigned))
    }
}

impl Claims {
    /// Waits (at most [`READ_UP_WAIT`]) until the queue has read every event visible now,
    /// so that a claim chooses among every task committed before it — "best score first"
    /// is then the score's, not the order the queue happened to read.
    async fn read_up(&self, hub: &Hub) -> Result<(), sqlx::Error> {
        let head = crate::live::hub::newest_cursor(hub.pool()).await?;
        let until = tokio::time::Instant::now() + READ_UP_WAIT;
        while *self.read.lock().unwrap_or_else(PoisonError::into_inner) < head
            && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Counts a claim of `agent` as waiting until the guard drops (the request ended or
    /// its client went away); refuses one beyond the agent's allowance.
    fn wait_turn(&self, agent: Uuid) -> Option<WaitingClaim<'_>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let count = waiting.entry(agent).or_insert(0);
        if *count >= self.rules.claims_per_agent {
            return None;
        }
        *count += 1;
        Some(WaitingClaim {
            waiting: &self.waiting,
            agent,
        })
    }

    /// Claims waiting now, per agent (for tests and metrics).
    pub fn waiting(&self, agent: Uuid) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&agent)
            .copied()
            .unwrap_or(0)
    }

    /// `omoi_claims_waiting`: the claims of this process that looked, found nothing
    /// they may take, and wait for a task now.
    pub fn render_prometheus(&self) -> String {
        let total = self.parked.load(std::sync::atomic::Ordering::SeqCst);
        let name = "omoi_claims_waiting";
        format!(
            "# HELP {name} Agents' claims waiting for a task in this process\n\
             # TYPE {name} gauge\n{name} {total}\n"
        )
    }
}

struct WaitingClaim<'a> {
    waiting: &'a Mutex<HashMap<Uuid, usize>>,
    agent: Uuid,
}

impl Drop for WaitingClaim<'_> {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = waiting.get_mut(&self.agent) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                waiting.remove(&self.agent);
            }
        }
    }
}

/// Why a claim failed.
#[derive(Debug)]
pub enum ClaimError<E> {
    Log(sqlx::Error),
    Assign(E),
    /// The agent already has this many claims waiting.
    TooManyWaiting {
        allowed: usize,
    },
}

/// Taps the hub and replays the log up to the tap; returns the tap.
async fn follow_once(
    hub: &Hub,
    queue: &Mutex<Queue>,
    changed: &Notify,
    read: &Mutex<Cursor>,
) -> Result<crate::live::hub::Tap, sqlx::Error> {
    let mut fresh = Queue::default();
    let tap = hub
        .tap_after_replay(&Visibility::Everything, |event| {
            fresh.apply(event);
            Ok::<(), sqlx::Error>(())
        })
        .await?;
    *queue.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
    *read.lock().unwrap_or_else(PoisonError::into_inner) = tap.head;
    changed.notify_waiters();
    Ok(tap)
}

/// Applies the hub's events; when it falls behind the hub's broadcast, reads what it
/// missed from the log after the last event it applied, and taps again (it used to replay
/// the whole log). Ends with the hub (the tapper's reference is weak: the follower does not
/// keep the application alive).
async fn follow(
    tapper: Tapper,
    queue: Arc<Mutex<Queue>>,
    changed: Arc<Notify>,
    read: Arc<Mutex<Cursor>>,
    mut tap: crate::live::hub::Tap,
) {
    let apply = |event: &StoredEvent| {
        let change = queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .apply(event);
        *read.lock().unwrap_or_else(PoisonError::into_inner) = event.cursor();
        change != omoi_orchestrator::queue::Change::None
    };
    loop {
        match tap.events.recv().await {
            Ok(event) => {
                if apply(&event) {
                    changed.notify_waiters();
                }
            }
            Err(RecvError::Lagged(_)) => loop {
                let from = *read.lock().unwrap_or_else(PoisonError::into_inner);
                let caught_up = tapper
                    .tap_after(from, &Visibility::Everything, |event| {
                        apply(event);
                        Ok::<(), sqlx::Error>(())
                    })
                    .await;
                match caught_up {
                    Ok(Some(fresh)) => {
                        let mut read = read.lock().unwrap_or_else(PoisonError::into_inner);
                        *read = (*read).max(fresh.head);
                        drop(read);
                        changed.notify_waiters();
                        tap = fresh;
                        break;
                    }
                    Ok(None) => return,
                    Err(error) => {
                        tracing::warn!(%error, "claims: cannot read the log; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            },
            Err(RecvError::Closed) => return,
        }
    }
}
