//! One project's open findings, through the `monitoring_*` views.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

/// A stalled task.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct StalledRow {
    pub task_id: Uuid,
    pub agent_id: Uuid,
    /// Its last progress.
    pub idle_since: DateTime<Utc>,
    /// When it was found stalled.
    pub stalled_at: DateTime<Utc>,
}

/// A task that looks like a duplicate of an older one, both still open.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct DuplicateRow {
    pub task_id: Uuid,
    pub duplicate_of: Uuid,
    pub similarity: f64,
}

/// A project's open findings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Overview {
    pub stalled_tasks: Vec<StalledRow>,
    pub duplicates: Vec<DuplicateRow>,
}

/// At most `limit` of each kind of finding of `project_id`, the oldest stall and the most
/// similar pair first.
pub async fn overview(pool: &PgPool, project_id: Uuid, limit: i64) -> sqlx::Result<Overview> {
    let stalled_tasks = sqlx::query_as(
        "select task_id, agent_id, idle_since, stalled_at from monitoring_stalled
          where project_id = $1 order by idle_since, task_id limit $2",
    )
    .bind(project_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let duplicates = sqlx::query_as(
        "select task_id, duplicate_of, similarity from monitoring_duplicates
          where project_id = $1 order by similarity desc, task_id, duplicate_of limit $2",
    )
    .bind(project_id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Overview {
        stalled_tasks,
        duplicates,
    })
}

/// The tasks with steering waiting for `agent_id` (usually none: one index probe).
pub async fn steered_tasks(pool: &PgPool, agent_id: Uuid) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "select distinct task_id from monitoring_steering where agent_id = $1 order by task_id",
    )
    .bind(agent_id)
    .fetch_all(pool)
    .await
}
