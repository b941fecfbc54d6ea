//! The Conductor's duplicate work: open tasks of a project whose titles and descriptions
//! are near-identical get `DuplicateSuspected` on the newer one.
//!
//! Each open task is compared once, when it is new, with the older open tasks of its
//! project (`directory::suspected_duplicates`, batch by batch until caught up), so a pass
//! costs the tasks created since the last one. A pass runs beside the worker, which never
//! waits for it; after a restart the comparison starts over from the first open task, and
//! the pairs already flagged append nothing (the task refuses a pair twice).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use omoi_domain::task::{Task, TaskCommand};
use omoi_projections::directory::{self, DuplicatesCursor};
use omoi_store::{Actor, CommandBus, CommandContext};
use sqlx::PgPool;
use uuid::Uuid;

/// Open tasks compared per query.
const BATCH: i64 = 500;

/// Compares the open tasks created after `after` and flags the pairs found; returns
/// where the comparison got to (where it started, when the directory cannot be read).
pub async fn flag_new_duplicates(
    pool: PgPool,
    bus: Arc<CommandBus>,
    threshold: f64,
    mut after: DuplicatesCursor,
    now: DateTime<Utc>,
) -> DuplicatesCursor {
    let context = CommandContext::new(
        Actor::System("conductor"),
        format!("worker:duplicates:{}", Uuid::now_v7()),
    );
    loop {
        let batch = match directory::suspected_duplicates(&pool, threshold, after, BATCH).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "conductor: cannot look for duplicate work");
                return after;
            }
        };
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
        if batch.compared < BATCH as usize {
            return after;
        }
    }
}
