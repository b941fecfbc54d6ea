//! One agent's events, a page at a time, through the `activity_entries` view.

use omoi_store::log::{events_at, Cursor, PAGE_BYTES};
use omoi_store::StoredEvent;
use sqlx::PgPool;
use uuid::Uuid;

/// What of an agent's activity a reader may see.
#[derive(Debug, Clone, Copy)]
pub struct ActivityScope {
    /// The agent's organization: rows of any other are never shown.
    pub organization_id: Uuid,
    /// Set for a caller limited to one project (a project-scoped key): only its events.
    pub project_id: Option<Uuid>,
}

/// At most `limit` events concerning `agent_id` after `after`, in the global order; the
/// page also ends once they weigh [`PAGE_BYTES`] (it holds at least one).
pub async fn page(
    pool: &PgPool,
    agent_id: Uuid,
    scope: ActivityScope,
    after: Cursor,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    let positions: Vec<(i64, i64)> = sqlx::query_as(
        "select transaction_id, global_position from activity_entries
          where agent_id = $1 and (transaction_id, global_position) > ($2, $3)
            and organization_id = $4
            and ($5::uuid is null or project_id = $5)
          order by transaction_id, global_position
          limit $6",
    )
    .bind(agent_id)
    .bind(after.transaction_id)
    .bind(after.global_position)
    .bind(scope.organization_id)
    .bind(scope.project_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let positions: Vec<Cursor> = positions
        .into_iter()
        .map(|(transaction_id, global_position)| Cursor {
            transaction_id,
            global_position,
        })
        .collect();
    events_at(pool, &positions, PAGE_BYTES).await
}
