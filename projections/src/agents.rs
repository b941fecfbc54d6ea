//! The agents view: every agent's registration, status and the task it is working on.
//!
//! `agents` holds one row per agent. `current_task_id` comes from task events, which name
//! their agent only when assigned; `task_agents` therefore remembers which agent holds
//! each open assignment until the attempt ends (completed, failed, timed out, cancelled,
//! retried or permanently failed). An agent with capacity for several tasks shows the
//! most recently assigned one still open.
//!
//! # Layout
//!
//! * [`AgentsProjector`] — tables and `apply`.
//! * [`task_effect`] — the pure part: what a task event does to assignments.
//! * [`list`], [`AgentFilter`] — the query on the `agents_agents` view.

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use omoi_domain::agent::AgentEvent;
use omoi_domain::task::TaskEvent;
use omoi_store::StoredEvent;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::timeline::{entity_id, EventMeta};
use crate::{ProjectionError, Projector};

/// Builds the `agents` read model.
pub struct AgentsProjector;

impl Projector for AgentsProjector {
    fn name(&self) -> &'static str {
        "agents"
    }

    fn version(&self) -> i32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &["agents", "task_agents"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![
            format!(
                "create table if not exists {schema}.agents (
                    agent_id uuid primary key,
                    organization_id uuid not null,
                    project_id uuid,
                    name text not null,
                    agent_type text not null,
                    status text not null,
                    capabilities text[] not null,
                    capacity bigint not null,
                    current_task_id uuid,
                    last_status_change timestamptz not null,
                    registered_at timestamptz not null
                )"
            ),
            // Lists are per organization, usually narrowed by status.
            format!(
                "create index if not exists agents_by_organization
                    on {schema}.agents (organization_id, status)"
            ),
            format!(
                "create table if not exists {schema}.task_agents (
                    task_id uuid primary key,
                    agent_id uuid not null,
                    organization_id uuid not null,
                    project_id uuid,
                    assigned_transaction_id bigint not null,
                    assigned_global_position bigint not null
                )"
            ),
            // Recomputing an agent's current task looks up its open assignments.
            format!(
                "create index if not exists task_agents_by_agent
                    on {schema}.task_agents (agent_id)"
            ),
        ]
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            match event.aggregate_type.as_str() {
                "Agent" => apply_agent_event(tx, schema, event).await,
                "Task" => apply_task_event(tx, schema, event).await,
                _ => Ok(()),
            }
        })
    }
}

/// What a task event does to the task's assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEffect {
    /// The task now belongs to this agent.
    Assign(Uuid),
    /// The attempt is over: the agent is free of it.
    Release,
}

/// The assignment change of a task event, if any.
pub fn task_effect(event: &TaskEvent) -> Option<TaskEffect> {
    match event {
        TaskEvent::TaskAssigned { agent_id, .. } => Some(TaskEffect::Assign(*agent_id)),
        // `TaskFailed`/`TaskTimedOut` already end the attempt; the outcome that follows
        // in the same command releases again, harmlessly.
        TaskEvent::TaskCompleted { .. }
        | TaskEvent::TaskFailed { .. }
        | TaskEvent::TaskTimedOut { .. }
        | TaskEvent::TaskRetryScheduled { .. }
        | TaskEvent::TaskPermanentlyFailed { .. }
        | TaskEvent::TaskCancelled { .. } => Some(TaskEffect::Release),
        TaskEvent::TaskCreated { .. }
        | TaskEvent::TaskStarted { .. }
        | TaskEvent::TaskProgressReported { .. }
        | TaskEvent::TaskDependencyAdded { .. }
        | TaskEvent::TaskDependencyRemoved { .. } => None,
    }
}

async fn apply_agent_event(
    tx: &mut PgConnection,
    schema: &str,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let parsed =
        AgentEvent::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
    let agent_id = entity_id(event)?;
    match parsed {
        AgentEvent::AgentRegistered { .. } => insert_agent(tx, schema, &parsed).await?,
        AgentEvent::AgentStatusChanged { to, at, .. } => {
            sqlx::query(&format!(
                "update {schema}.agents set status = $2, last_status_change = $3
                  where agent_id = $1"
            ))
            .bind(agent_id)
            .bind(to.as_str())
            .bind(at)
            .execute(tx)
            .await?;
        }
        AgentEvent::AgentCapabilitiesUpdated { capabilities } => {
            sqlx::query(&format!(
                "update {schema}.agents set capabilities = $2 where agent_id = $1"
            ))
            .bind(agent_id)
            .bind(capabilities.into_iter().collect::<Vec<_>>())
            .execute(tx)
            .await?;
        }
    }
    Ok(())
}

async fn insert_agent(
    tx: &mut PgConnection,
    schema: &str,
    event: &AgentEvent,
) -> Result<(), sqlx::Error> {
    let AgentEvent::AgentRegistered {
        agent_id,
        organization_id,
        project_id,
        name,
        agent_type,
        capabilities,
        capacity,
        registered_at,
    } = event
    else {
        return Ok(());
    };
    sqlx::query(&format!(
        "insert into {schema}.agents (agent_id, organization_id, project_id, name, agent_type,
             status, capabilities, capacity, current_task_id, last_status_change, registered_at)
         values ($1, $2, $3, $4, $5, 'spawning', $6, $7, null, $8, $8)
         on conflict (agent_id) do nothing"
    ))
    .bind(agent_id)
    .bind(organization_id)
    .bind(project_id)
    .bind(name)
    .bind(agent_type.as_str())
    .bind(capabilities.iter().cloned().collect::<Vec<_>>())
    .bind(i64::from(*capacity))
    .bind(registered_at)
    .execute(tx)
    .await?;
    Ok(())
}

async fn apply_task_event(
    tx: &mut PgConnection,
    schema: &str,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let parsed =
        TaskEvent::deserialize(&event.payload).map_err(|e| ProjectionError::payload(event, e))?;
    let Some(effect) = task_effect(&parsed) else {
        return Ok(());
    };
    let task_id = entity_id(event)?;
    // A reassignment first frees the previous holder, should an attempt's end be missing.
    if let Some(previous) = release(tx, schema, task_id).await? {
        refresh_current_task(tx, schema, previous).await?;
    }
    if let TaskEffect::Assign(agent_id) = effect {
        let meta = EventMeta::of(event)?;
        assign(tx, schema, event, task_id, agent_id, &meta).await?;
        refresh_current_task(tx, schema, agent_id).await?;
    }
    Ok(())
}

/// Forgets the task's assignment; returns the agent that held it.
async fn release(
    tx: &mut PgConnection,
    schema: &str,
    task_id: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "delete from {schema}.task_agents where task_id = $1 returning agent_id"
    ))
    .bind(task_id)
    .fetch_optional(tx)
    .await
}

async fn assign(
    tx: &mut PgConnection,
    schema: &str,
    event: &StoredEvent,
    task_id: Uuid,
    agent_id: Uuid,
    meta: &EventMeta,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "insert into {schema}.task_agents (task_id, agent_id, organization_id, project_id,
             assigned_transaction_id, assigned_global_position)
         values ($1, $2, $3, $4, $5, $6)"
    ))
    .bind(task_id)
    .bind(agent_id)
    .bind(meta.organization_id)
    .bind(meta.project_id)
    .bind(event.transaction_id)
    .bind(event.global_position)
    .execute(tx)
    .await?;
    Ok(())
}

/// Sets the agent's current task to its most recently assigned open task (or none).
async fn refresh_current_task(
    tx: &mut PgConnection,
    schema: &str,
    agent_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "update {schema}.agents
            set current_task_id = (
                select task_id from {schema}.task_agents
                 where agent_id = $1
                 order by assigned_transaction_id desc, assigned_global_position desc
                 limit 1)
          where agent_id = $1"
    ))
    .bind(agent_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// One agent as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct AgentView {
    pub agent_id: Uuid,
    pub organization_id: Uuid,
    /// Absent for an agent that serves its whole organization.
    pub project_id: Option<Uuid>,
    pub name: String,
    /// `worker`, `monitor`, `watchdog` or `guardian`.
    pub agent_type: String,
    /// `spawning`, `idle`, `running`, `degraded`, `failed`, `quarantined` or `terminated`.
    pub status: String,
    pub capabilities: Vec<String>,
    pub capacity: i64,
    /// The most recently assigned task the agent has not finished.
    pub current_task_id: Option<Uuid>,
    /// When the status last changed (the registration for a new agent).
    pub last_status_change: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
}

/// Which agents to list; all given filters must match.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// `None` only for operators, who see every organization.
    pub organizations: Option<Vec<Uuid>>,
    /// Agents registered for this project (organization-wide agents have none).
    pub project_id: Option<Uuid>,
    pub status: Option<String>,
}

/// Reads agents from the `agents_agents` view, by name.
pub async fn list(pool: &PgPool, filter: &AgentFilter) -> Result<Vec<AgentView>, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "select agent_id, organization_id, project_id, name, agent_type, status, capabilities,
                capacity, current_task_id, last_status_change, registered_at
           from agents_agents where true",
    );
    if let Some(organizations) = &filter.organizations {
        sql.push(" and organization_id = any(")
            .push_bind(organizations.clone())
            .push(")");
    }
    if let Some(project_id) = filter.project_id {
        sql.push(" and project_id = ").push_bind(project_id);
    }
    if let Some(status) = &filter.status {
        sql.push(" and status = ").push_bind(status.clone());
    }
    sql.push(" order by name, agent_id");
    sql.build_query_as().fetch_all(pool).await
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5)
            .single()
            .expect("a valid time")
    }

    #[test]
    fn an_assignment_gives_the_task_to_its_agent() {
        let agent = Uuid::from_u128(7);
        let event = TaskEvent::TaskAssigned {
            agent_id: agent,
            at: at(),
        };
        assert_eq!(task_effect(&event), Some(TaskEffect::Assign(agent)));
    }

    #[test]
    fn every_end_of_an_attempt_frees_the_agent() {
        for event in [
            TaskEvent::TaskCompleted {
                result: json!(null),
                at: at(),
            },
            TaskEvent::TaskFailed {
                error: "boom".into(),
                attempt: 1,
                at: at(),
            },
            TaskEvent::TaskTimedOut {
                after_seconds: 60,
                attempt: 1,
                at: at(),
            },
            TaskEvent::TaskRetryScheduled {
                attempt: 2,
                not_before: at(),
            },
            TaskEvent::TaskPermanentlyFailed {
                reason: omoi_domain::task::FailureReason::PermanentError,
            },
            TaskEvent::TaskCancelled {
                reason: None,
                at: at(),
            },
        ] {
            assert_eq!(task_effect(&event), Some(TaskEffect::Release), "{event:?}");
        }
    }

    #[test]
    fn starting_or_reporting_progress_leaves_the_assignment_alone() {
        for event in [
            TaskEvent::TaskStarted { at: at() },
            TaskEvent::TaskProgressReported {
                message: "half way".into(),
            },
            TaskEvent::TaskDependencyAdded {
                depends_on: Uuid::from_u128(1),
            },
        ] {
            assert_eq!(task_effect(&event), None, "{event:?}");
        }
    }

    #[test]
    fn the_projector_owns_the_agents_table_and_its_helper() {
        let projector = AgentsProjector;
        assert_eq!(projector.tables(), &["agents", "task_agents"]);
        let statements = projector.create_tables("rm_agents_1").join("\n");
        assert!(statements.contains("rm_agents_1.agents"));
        assert!(statements.contains("rm_agents_1.task_agents"));
    }
}
