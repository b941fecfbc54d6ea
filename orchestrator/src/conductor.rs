//! The Conductor's duplicate work: open tasks of a project whose titles and descriptions
//! are near-identical get `DuplicateSuspected` on the newer one.
//!
//! Each open task is compared once, when it is new, with the older open tasks of its
//! project (`directory::suspected_duplicates`, batch by batch until caught up), so a pass
//! costs the tasks created since the last one. How far the comparison got is kept in
//! `conductor_cursor`, and one replica at a time runs a pass (a session advisory lock,
//! released with its connection if the process dies), so a task is compared once in the
//! whole cluster, restarts included. A pass runs beside the worker, which never waits for
//! it; a pair flagged twice appends nothing (the task refuses it).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use omoi_domain::task::{Task, TaskCommand};
use omoi_projections::catalog::is_undefined_table;
use omoi_projections::directory;
use omoi_store::{Actor, CommandBus, CommandContext};
use sqlx::{Connection, PgPool};
use uuid::Uuid;

/// Open tasks compared per query.
const BATCH: i64 = 500;

/// The advisory lock a pass holds (one pass at a time in the cluster).
const PASS_LOCK: i64 = 0x6f6d_6f69_636f_6e64; // "omoicond"

/// Compares the open tasks created since the last pass (of any replica) and flags the
/// pairs found, unless another replica's pass is running.
pub async fn flag_new_duplicates(
    pool: PgPool,
    bus: Arc<CommandBus>,
    threshold: f64,
    now: DateTime<Utc>,
) {
    match pass(&pool, &bus, threshold, now).await {
        Ok(()) => {}
        // A first start: the directory's projector has not created its table yet. Nothing
        // was compared and the cursor did not move; the next pass finds the table.
        Err(error) if is_undefined_table(&error) => {
            tracing::debug!(%error, "conductor: the directory is not built yet");
        }
        Err(error) => tracing::warn!(%error, "conductor: cannot look for duplicate work"),
    }
}

async fn pass(
    pool: &PgPool,
    bus: &CommandBus,
    threshold: f64,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    // A connection of its own, closed when dropped: an aborted pass (its worker stopped)
    // must not leave the lock held by a pooled connection for ever.
    let mut lock = pool.acquire().await?.detach();
    let leading: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(PASS_LOCK)
        .fetch_one(&mut lock)
        .await?;
    if !leading {
        return Ok(());
    }
    let outcome = compare(pool, bus, threshold, now).await;
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(PASS_LOCK)
        .execute(&mut lock)
        .await?;
    lock.close().await?;
    outcome
}

/// Batch by batch from the shared cursor until caught up, the cursor moved after each.
async fn compare(
    pool: &PgPool,
    bus: &CommandBus,
    threshold: f64,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let context = CommandContext::new(
        Actor::System("conductor"),
        format!("worker:duplicates:{}", Uuid::now_v7()),
    );
    let mut after: (i64, i64) =
        sqlx::query_as("select transaction_id, position from conductor_cursor")
            .fetch_one(pool)
            .await?;
    loop {
        let batch = directory::suspected_duplicates(pool, threshold, after, BATCH).await?;
        for pair in &batch.pairs {
            let command = TaskCommand::FlagDuplicate {
                duplicate_of: pair.duplicate_of,
                similarity: pair.similarity,
                at: now,
            };
            if let Err(error) = bus
                .execute::<Task>(&pair.task_id.to_string(), command, &context)
                .await
            {
                tracing::info!(task_id = %pair.task_id, %error, "conductor: not flagged");
            }
        }
        after = batch.next;
        sqlx::query("update conductor_cursor set transaction_id = $1, position = $2")
            .bind(after.0)
            .bind(after.1)
            .execute(pool)
            .await?;
        if batch.compared < BATCH as usize {
            return Ok(());
        }
    }
}
