//! One project's open findings, through the `monitoring_*` views.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::AlertKind;

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

/// An open alert.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AlertRow {
    pub kind: AlertKind,
    /// The agent or ticket it is about.
    pub subject_id: Uuid,
    /// `None` for an organization-wide agent's.
    pub project_id: Option<Uuid>,
    pub reason: String,
    /// Who raised it: the actor of the event (`system:guardian`, `user:…`, …).
    pub raised_by: Option<String>,
    pub raised_at: DateTime<Utc>,
    /// The raising event's place in the global stream.
    pub position: i64,
}

type AlertTuple = (
    String,
    Uuid,
    Option<Uuid>,
    String,
    Option<String>,
    DateTime<Utc>,
    i64,
);

fn alert_rows(rows: Vec<AlertTuple>) -> Vec<AlertRow> {
    rows.into_iter()
        .filter_map(
            |(kind, subject_id, project_id, reason, raised_by, raised_at, position)| {
                Some(AlertRow {
                    kind: AlertKind::parse(&kind)?,
                    subject_id,
                    project_id,
                    reason,
                    raised_by,
                    raised_at,
                    position,
                })
            },
        )
        .collect()
}

/// Which alerts a project's overview shows: the project's own, and those of its
/// organization's organization-wide agents unless the reader is limited to the project
/// (a key limited to a project does not see those agents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertScope {
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub organization_wide: bool,
}

/// The open alerts of `scope`, newest first, at most `limit`.
pub async fn project_alerts(
    pool: &PgPool,
    scope: AlertScope,
    limit: i64,
) -> sqlx::Result<Vec<AlertRow>> {
    let rows = sqlx::query_as(
        "select kind, subject_id, project_id, reason, raised_by, raised_at, position
           from monitoring_alerts
          where organization_id = $1 and (project_id = $2 or ($3 and project_id is null))
          order by position desc limit $4",
    )
    .bind(scope.organization_id)
    .bind(scope.project_id)
    .bind(scope.organization_wide)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(alert_rows(rows))
}

/// The open alerts about `subject_id` (an agent or a ticket), newest first.
pub async fn alerts_about(pool: &PgPool, subject_id: Uuid) -> sqlx::Result<Vec<AlertRow>> {
    let rows = sqlx::query_as(
        "select kind, subject_id, project_id, reason, raised_by, raised_at, position
           from monitoring_alerts where subject_id = $1 order by position desc",
    )
    .bind(subject_id)
    .fetch_all(pool)
    .await?;
    Ok(alert_rows(rows))
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

/// How many findings of a project are open, each kind counted whole (the lists are
/// bounded): stalled tasks, tasks suspected duplicates, and the open alerts of its
/// [`AlertScope`] — what the Conductor's coherence weighs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FindingCounts {
    pub stalled_tasks: i64,
    /// Tasks flagged as duplicates of an older one, each once however many older ones
    /// it resembles (coherence weighs their share of the open tasks).
    pub duplicates: i64,
    pub alerts: i64,
}

/// [`FindingCounts`] of `scope`'s project, with one statement.
pub async fn finding_counts(pool: &PgPool, scope: AlertScope) -> sqlx::Result<FindingCounts> {
    let (stalled_tasks, duplicates, alerts) = sqlx::query_as(
        "select (select count(*) from monitoring_stalled where project_id = $2),
                (select count(distinct task_id) from monitoring_duplicates
                  where project_id = $2),
                (select count(*) from monitoring_alerts
                  where organization_id = $1
                    and (project_id = $2 or ($3 and project_id is null)))",
    )
    .bind(scope.organization_id)
    .bind(scope.project_id)
    .bind(scope.organization_wide)
    .fetch_one(pool)
    .await?;
    Ok(FindingCounts {
        stalled_tasks,
        duplicates,
        alerts,
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
