//! Cross-process wake-ups: a process announces its commits with at most one
//! `NOTIFY omoi_events` per window (never one per appended event: a NOTIFY inside the
//! append transaction serializes every commit on the notification queue's lock), and the
//! readers of the log in every process listen for it — and poll, since a notification is
//! a hint, not a delivery.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::PgPool;
use tokio::sync::watch;

/// The channel commits are announced on.
pub const CHANNEL: &str = "omoi_events";

/// Bumps `wake` on every announcement of another process's commits, and when the
/// connection was lost (announcements may have been missed), reconnecting. A pool of its own, so that the listening connection does not take
/// one of the application's.
pub async fn listen(options: PgConnectOptions, wake: watch::Sender<u64>) {
    loop {
        // Ends only with the error that lost the connection.
        let listened = async {
            let pool = PgPool::connect_lazy_with(options.clone());
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            // Listening (again, after a connection that failed here): what was announced
            // while nobody listened is lost, so the readers look.
            wake.send_modify(|n| *n = n.wrapping_add(1));
            loop {
                // `None`: the connection was lost, and is made again on the next call.
                // What was announced meanwhile is lost with it: the readers are woken to
                // look, as for an announcement. (`recv` reconnects without a word, so the
                // wake-ups of that gap were lost until the readers' next poll.)
                listener.try_recv().await?;
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        };
        let result: Result<std::convert::Infallible, sqlx::Error> = listened.await;
        let Err(error) = result;
        tracing::debug!(%error, "event listener lost its connection; reconnecting");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Announces this process's commits to other processes: at most one `NOTIFY` per
/// `window`, sent outside every append transaction. The first commit after a quiet spell is
/// announced at once; those that come within the window after an announcement, together
/// at its end. (Announcing only at the end of a window delayed every lone commit's readers
/// in other processes — a worker, a replica's live streams — by the whole window.)
pub async fn announce_commits(pool: PgPool, mut commits: watch::Receiver<u64>, window: Duration) {
    while commits.changed().await.is_ok() {
        commits.mark_unchanged();
        if let Err(error) = sqlx::query("select pg_notify($1, '')")
            .bind(CHANNEL)
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "could not announce commits");
        }
        tokio::time::sleep(window).await;
    }
}
