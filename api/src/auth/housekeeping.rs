//! Drops credentials nothing reads any more, so the tables stay the size of what is live:
//! login failures older than the lockout window, refresh tokens and revoked access tokens
//! past their expiry, agent credentials whose agent was never registered
//! (`store::accounts::prune_expired`), and idle rate-limit keys.
//!
//! Every replica serving the API runs it; the deletes are idempotent and bounded (a batch
//! per table per statement), so replicas never hold long locks nor step on each other.

use std::time::Duration;

use omoi_store::accounts;

use super::routes::LOCKOUT_WINDOW_MINUTES;
use crate::state::AppState;

/// Rows per table per statement.
const BATCH: i64 = 1_000;
/// Statements per table per run: what is left waits for the next run.
const MAX_ROUNDS: usize = 100;

/// Prunes every `state.guard.config.prune_every` (never when that is zero), until dropped.
pub async fn run(state: AppState) {
    let every = state.guard.config.prune_every;
    if every.is_zero() {
        return std::future::pending().await;
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        prune_once(&state).await;
    }
}

/// One run: idle rate-limit keys, then the tables batch by batch.
pub async fn prune_once(state: &AppState) {
    state.guard.forget_idle_keys();
    let window = chrono::Duration::minutes(LOCKOUT_WINDOW_MINUTES);
    for _ in 0..MAX_ROUNDS {
        match accounts::prune_expired(state.pool(), window, BATCH).await {
            Ok(pruned) if pruned.reached(BATCH) => {
                // Let the requests this process serves have the pool between batches.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%error, "pruning expired credentials failed; retrying next run");
                return;
            }
        }
    }
}
