//! Which transcripts grew, for this process's `logs` subscriptions.
//!
//! A write through this process (an HTTP agent's lines) wakes the subscriptions of its
//! task at once. Lines written otherwise — through another replica, or straight to the
//! store by a worker's in-process agents (`omoi worker`, or `omoi dev`'s own) — are found
//! by one watcher per process: every
//! `live.poll_interval` it reads the line counts of every attempt followed here, in one
//! statement, and wakes the subscriptions of those that grew. Before, each subscription
//! polled the database itself every interval, whether or not its transcript moved: a
//! thousand open transcripts were two thousand queries a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use omoi_store::transcripts;
use sqlx::PgPool;
use tokio::sync::broadcast::{self, error::RecvError};
use uuid::Uuid;

use super::AbortOnDrop;

/// Transcript writes held for subscriptions that have not looked yet; past it a
/// subscription reads as if its own task had been written.
const WRITES_HELD: usize = 1024;

/// The transcripts this process's `logs` subscriptions follow.
pub struct TranscriptWatch {
    shared: Arc<Shared>,
    /// Started with the first subscription; ends with the hub.
    watcher: OnceLock<AbortOnDrop>,
}

struct Shared {
    /// Each followed attempt: its subscriptions here, and its line count when the watcher
    /// last looked (0 before it looked: its first look wakes them, one read each).
    followed: Mutex<HashMap<(Uuid, u32), Followed>>,
    /// The task of each transcript found grown (or written through this process).
    written: broadcast::Sender<Uuid>,
    /// Reads of transcripts by `logs` subscriptions (`/metrics`).
    reads: AtomicU64,
}

#[derive(Default)]
struct Followed {
    subscriptions: usize,
    lines: i64,
}

impl Shared {
    fn followed(&self) -> MutexGuard<'_, HashMap<(Uuid, u32), Followed>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for TranscriptWatch {
    fn default() -> Self {
        Self {
            shared: Arc::new(Shared {
                followed: Mutex::default(),
                written: broadcast::channel(WRITES_HELD).0,
                reads: AtomicU64::new(0),
            }),
            watcher: OnceLock::new(),
        }
    }
}

impl TranscriptWatch {
    /// This process wrote an attempt's transcript, which now has `lines` lines: the
    /// subscriptions of its task read at once (the others are not woken), and the
    /// watcher's next look does not wake them again for the same lines.
    pub fn written(&self, task_id: Uuid, attempt: u32, lines: i64) {
        if let Some(entry) = self.shared.followed().get_mut(&(task_id, attempt)) {
            entry.lines = entry.lines.max(lines);
        }
        // Nobody following a transcript is not an error.
        let _ = self.shared.written.send(task_id);
    }

    /// Follows an attempt's transcript until the returned handle is dropped; the watcher
    /// (reading `pool` every `interval`) is started with the first.
    pub fn follow(
        &self,
        pool: &PgPool,
        interval: Duration,
        task_id: Uuid,
        attempt: u32,
    ) -> Following {
        self.watcher.get_or_init(|| {
            let shared = Arc::downgrade(&self.shared);
            AbortOnDrop(tokio::spawn(watch(pool.clone(), shared, interval)))
        });
        self.register(task_id, attempt)
    }

    fn register(&self, task_id: Uuid, attempt: u32) -> Following {
        // Subscribed before the attempt is registered, so that no growth found after it
        // is missed.
        let written = self.shared.written.subscribe();
        self.shared
            .followed()
            .entry((task_id, attempt))
            .or_default()
            .subscriptions += 1;
        Following {
            shared: self.shared.clone(),
            task_id,
            attempt,
            written,
        }
    }

    /// How many times `logs` subscriptions read a transcript.
    pub fn reads(&self) -> u64 {
        self.shared.reads.load(Ordering::Relaxed)
    }
}

/// One subscription's hold on an attempt's transcript.
pub struct Following {
    shared: Arc<Shared>,
    task_id: Uuid,
    attempt: u32,
    written: broadcast::Receiver<Uuid>,
}

impl Following {
    /// Counts a read of the transcript (`/metrics`).
    pub fn reading(&self) {
        self.shared.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until the transcript may have grown: written through this process, or found
    /// grown by the watcher. Other tasks' writes wake it without a read; a burst too large
    /// to tell apart (lagged) counts as one of its own.
    pub async fn grown(&mut self) {
        loop {
            match self.written.recv().await {
                Ok(task) if task != self.task_id => continue,
                Ok(_) | Err(RecvError::Lagged(_)) => return,
                // The sender lives in `shared`, which this handle keeps.
                Err(RecvError::Closed) => return std::future::pending().await,
            }
        }
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut followed = self.shared.followed();
        let key = (self.task_id, self.attempt);
        if let Some(entry) = followed.get_mut(&key) {
            entry.subscriptions = entry.subscriptions.saturating_sub(1);
            if entry.subscriptions == 0 {
                followed.remove(&key);
            }
        }
    }
}

/// Every `interval`, the line counts of every followed attempt in one statement; the
/// subscriptions of those that grew are woken. Ends once the hub is gone.
async fn watch(pool: PgPool, shared: Weak<Shared>, interval: Duration) {
    let interval = interval.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let attempts: Vec<(Uuid, u32)> = shared.followed().keys().copied().collect();
        if attempts.is_empty() {
            continue;
        }
        let heads = match transcripts::heads(&pool, &attempts).await {
            Ok(heads) => heads,
            Err(error) => {
                // The next look finds what this one missed.
                tracing::debug!(%error, "live: cannot read the transcripts' line counts");
                continue;
            }
        };
        let grown: Vec<Uuid> = {
            let mut followed = shared.followed();
            heads
                .into_iter()
                .filter_map(|(task_id, attempt, lines)| {
                    let entry = followed.get_mut(&(task_id, attempt))?;
                    (lines > entry.lines).then(|| {
                        entry.lines = lines;
                        task_id
                    })
                })
                .collect()
        };
        for task_id in grown {
            let _ = shared.written.send(task_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a future does within a tenth of a second: `None` if it is still waiting.
    async fn within_a_moment<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(100), future)
            .await
            .ok()
    }

    /// A subscription waits through other tasks' growth (it reads nothing for them) and
    /// wakes for its own task's, or for a burst it fell behind (which may hold its own).
    #[tokio::test]
    async fn a_subscription_wakes_for_its_own_tasks_growth_only() {
        let watch = TranscriptWatch::default();
        let (mine, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut following = watch.register(mine, 1);
        for _ in 0..3 {
            watch.written(other, 1, 1);
        }
        assert!(
            within_a_moment(following.grown()).await.is_none(),
            "woken by another task"
        );
        watch.written(other, 1, 1);
        watch.written(mine, 1, 1);
        assert!(
            within_a_moment(following.grown()).await.is_some(),
            "not woken by its own"
        );
        for _ in 0..=WRITES_HELD {
            watch.written(other, 1, 1);
        }
        assert!(
            within_a_moment(following.grown()).await.is_some(),
            "not woken by a burst it fell behind"
        );
    }

    /// An attempt is followed while any subscription holds it, and no longer after.
    #[test]
    fn an_attempt_is_followed_until_its_last_subscription_lets_go() {
        let watch = TranscriptWatch::default();
        let task = Uuid::from_u128(7);
        let followed = |watch: &TranscriptWatch| -> Vec<(Uuid, u32, usize)> {
            let mut followed: Vec<_> = watch
                .shared
                .followed()
                .iter()
                .map(|(&(task, attempt), entry)| (task, attempt, entry.subscriptions))
                .collect();
            followed.sort();
            followed
        };
        let first = watch.register(task, 1);
        let second = watch.register(task, 1);
        let retry = watch.register(task, 2);
        assert_eq!(followed(&watch), [(task, 1, 2), (task, 2, 1)]);
        drop(first);
        drop(retry);
        assert_eq!(followed(&watch), [(task, 1, 1)]);
        drop(second);
        assert_eq!(followed(&watch), []);
    }
}
