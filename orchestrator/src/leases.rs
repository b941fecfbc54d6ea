//! Heartbeats as leases: one row per agent in `agent_leases`, renewed by each heartbeat.

use sqlx::PgPool;
use uuid::Uuid;

/// Records a heartbeat of `agent_id` now (in the database's clock, which every replica
/// shares).
pub async fn renew(pool: &PgPool, agent_id: Uuid, organization_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "insert into agent_leases (agent_id, organization_id, heartbeat_at)
         values ($1, $2, now())
         on conflict (agent_id) do update
             set heartbeat_at = now(), expired_at = null, degraded_at = null",
    )
    .bind(agent_id)
    .bind(organization_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Starts agent `agent_id`'s lease unless it has one: work given to it by someone else
/// (a person's assignment) is reclaimed if it never beats, without making an agent that
/// went silent look alive (which [`renew`], its own heartbeat, does). An agent failed for
/// its silence takes no work until released, and its release starts its lease anew (the
/// migration `agent_status_effects`).
pub async fn start(pool: &PgPool, agent_id: Uuid, organization_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "insert into agent_leases (agent_id, organization_id, heartbeat_at)
         values ($1, $2, now())
         on conflict (agent_id) do nothing",
    )
    .bind(agent_id)
    .bind(organization_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Renews many leases at once (a worker's in-process agents).
pub async fn renew_all(pool: &PgPool, agents: &[(Uuid, Uuid)]) -> sqlx::Result<()> {
    if agents.is_empty() {
        return Ok(());
    }
    let (ids, organizations): (Vec<Uuid>, Vec<Uuid>) = agents.iter().copied().unzip();
    sqlx::query(
        "insert into agent_leases (agent_id, organization_id, heartbeat_at)
         select id, organization_id, now() from unnest($1::uuid[], $2::uuid[])
                as t(id, organization_id)
         on conflict (agent_id) do update
             set heartbeat_at = now(), expired_at = null, degraded_at = null",
    )
    .bind(ids)
    .bind(organizations)
    .execute(pool)
    .await?;
    Ok(())
}

/// Claims the leases silent for longer than `threshold_ms`: each is marked expired by
/// exactly one caller (several workers may sweep at once), which then fails the agent.
pub async fn expire_stale(pool: &PgPool, threshold_ms: u64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "update agent_leases set expired_at = now()
          where expired_at is null
            and heartbeat_at < now() - make_interval(secs => $1::float8 / 1000)
          returning agent_id",
    )
    .bind(threshold_ms as f64)
    .fetch_all(pool)
    .await
}

/// Gives back an expired lease whose agent could not be failed: the next
/// [`expire_stale`] claims it again (its heartbeat is as old as it was).
pub async fn unexpire(pool: &PgPool, agent_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update agent_leases set expired_at = null where agent_id = $1")
        .bind(agent_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Gives back a degraded mark whose agent could not be degraded: the next
/// [`degrade_silent`] claims it again.
pub async fn undegrade(pool: &PgPool, agent_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update agent_leases set degraded_at = null where agent_id = $1")
        .bind(agent_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Claims the leases silent for longer than `threshold_ms` and neither degraded nor
/// expired yet: each is marked degraded by exactly one caller, which then degrades the
/// agent. A heartbeat clears the mark.
pub async fn degrade_silent(pool: &PgPool, threshold_ms: u64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "update agent_leases set degraded_at = now()
          where expired_at is null and degraded_at is null
            and heartbeat_at < now() - make_interval(secs => $1::float8 / 1000)
          returning agent_id",
    )
    .bind(threshold_ms as f64)
    .fetch_all(pool)
    .await
}

/// An agent's lease: its last heartbeat and whether it was degraded or expired since.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Lease {
    pub heartbeat_at: chrono::DateTime<chrono::Utc>,
    pub degraded_at: Option<chrono::DateTime<chrono::Utc>>,
    pub expired_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The database's clock when read, to measure the silence by.
    pub now: chrono::DateTime<chrono::Utc>,
}

pub async fn lease(pool: &PgPool, agent_id: Uuid) -> sqlx::Result<Option<Lease>> {
    sqlx::query_as(
        "select heartbeat_at, degraded_at, expired_at, now() as now
           from agent_leases where agent_id = $1",
    )
    .bind(agent_id)
    .fetch_optional(pool)
    .await
}

/// Every agent whose lease has expired and not been renewed since.
pub async fn expired(pool: &PgPool) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar("select agent_id from agent_leases where expired_at is not null")
        .fetch_all(pool)
        .await
}
