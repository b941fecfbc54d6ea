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

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, SubsecRound, Utc};
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

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        // Lists are per organization, usually narrowed by status.
        vec![format!(
            "create index if not exists agents_by_organization
                    on {schema}.agents (organization_id, status)"
        )]
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(apply_events(tx, schema, events))
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

/// An event of the batch that changes agents or assignments.
enum Change<'a> {
    Agent {
        id: Uuid,
        event: AgentEvent,
    },
    Task {
        id: Uuid,
        effect: TaskEffect,
        event: &'a StoredEvent,
    },
}

/// An open assignment, as `task_agents` keeps it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Assignment {
    task_id: Uuid,
    agent_id: Uuid,
    organization_id: Uuid,
    project_id: Option<Uuid>,
    assigned_transaction_id: i64,
    assigned_global_position: i64,
}

impl Assignment {
    fn order(&self) -> (i64, i64) {
        (self.assigned_transaction_id, self.assigned_global_position)
    }
}

/// The rows a batch reads and changes.
#[derive(Default)]
struct Rows {
    agents: HashMap<Uuid, AgentView>,
    assignments: HashMap<Uuid, Assignment>,
    changed_agents: BTreeSet<Uuid>,
    changed_tasks: BTreeSet<Uuid>,
    /// Agents whose current task must be recomputed from their open assignments.
    refresh: BTreeSet<Uuid>,
}

/// Loads the agents and open assignments the batch can touch (two queries), applies the
/// events in memory, and writes each changed row once.
async fn apply_events(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let changes = decode(events)?;
    if changes.is_empty() {
        return Ok(());
    }
    let mut rows = load(tx, schema, &changes).await?;
    for change in changes {
        match change {
            Change::Agent { id, event } => rows.apply_agent_event(id, event),
            Change::Task { id, effect, event } => rows.apply_task_effect(id, effect, event)?,
        }
    }
    rows.refresh_current_tasks();
    rows.save(tx, schema).await
}

fn decode(events: &[StoredEvent]) -> Result<Vec<Change<'_>>, ProjectionError> {
    let mut changes = Vec::new();
    for event in events {
        match event.aggregate_type.as_str() {
            "Agent" => changes.push(Change::Agent {
                id: entity_id(event)?,
                event: AgentEvent::deserialize(&event.payload)
                    .map_err(|e| ProjectionError::payload(event, e))?,
            }),
            "Task" => {
                let parsed = TaskEvent::deserialize(&event.payload)
                    .map_err(|e| ProjectionError::payload(event, e))?;
                if let Some(effect) = task_effect(&parsed) {
                    changes.push(Change::Task {
                        id: entity_id(event)?,
                        effect,
                        event,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(changes)
}

/// The assignments of the batch's tasks and every open assignment of the agents
/// involved (those named by the batch and those holding its tasks), then those agents.
async fn load(
    tx: &mut PgConnection,
    schema: &str,
    changes: &[Change<'_>],
) -> Result<Rows, ProjectionError> {
    let mut tasks = BTreeSet::new();
    let mut agents = BTreeSet::new();
    for change in changes {
        match change {
            Change::Agent { id, event } => {
                agents.insert(*id);
                if let AgentEvent::AgentRegistered { agent_id, .. } = event {
                    agents.insert(*agent_id);
                }
            }
            Change::Task { id, effect, .. } => {
                tasks.insert(*id);
                if let TaskEffect::Assign(agent_id) = effect {
                    agents.insert(*agent_id);
                }
            }
        }
    }
    let tasks: Vec<Uuid> = tasks.into_iter().collect();
    let assignments: Vec<Assignment> = sqlx::query_as(&format!(
        "select task_id, agent_id, organization_id, project_id, assigned_transaction_id,
                assigned_global_position
           from {schema}.task_agents
          where task_id = any($1) or agent_id = any($2)
             or agent_id in (select agent_id from {schema}.task_agents where task_id = any($1))"
    ))
    .bind(&tasks)
    .bind(agents.iter().copied().collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    agents.extend(assignments.iter().map(|a| a.agent_id));
    let loaded: Vec<AgentView> = sqlx::query_as(&format!(
        "select {AGENT_COLUMNS} from {schema}.agents where agent_id = any($1)"
    ))
    .bind(agents.into_iter().collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    Ok(Rows {
        agents: loaded.into_iter().map(|a| (a.agent_id, a)).collect(),
        assignments: assignments.into_iter().map(|a| (a.task_id, a)).collect(),
        ..Rows::default()
    })
}

const AGENT_COLUMNS: &str = "agent_id, organization_id, project_id, name, agent_type, status, \
     capabilities, capacity, current_task_id, last_status_change, registered_at";

impl Rows {
    fn apply_agent_event(&mut self, id: Uuid, event: AgentEvent) {
        match event {
            AgentEvent::AgentRegistered {
                agent_id,
                organization_id,
                project_id,
                name,
                agent_type,
                capabilities,
                capacity,
                registered_at,
            } => {
                // A second registration of one agent changes nothing.
                if self.agents.contains_key(&agent_id) {
                    return;
                }
                self.agents.insert(
                    agent_id,
                    AgentView {
                        agent_id,
                        organization_id,
                        project_id,
                        name,
                        agent_type: agent_type.as_str().to_string(),
                        status: "spawning".to_string(),
                        capabilities: capabilities.into_iter().collect(),
                        capacity: i64::from(capacity),
                        current_task_id: None,
                        last_status_change: as_stored(registered_at),
                        registered_at: as_stored(registered_at),
                    },
                );
                self.changed_agents.insert(agent_id);
            }
            AgentEvent::AgentStatusChanged { to, at, .. } => {
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.status = to.as_str().to_string();
                    agent.last_status_change = as_stored(at);
                    self.changed_agents.insert(id);
                }
            }
            AgentEvent::AgentCapabilitiesUpdated { capabilities } => {
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.capabilities = capabilities.into_iter().collect();
                    self.changed_agents.insert(id);
                }
            }
        }
    }

    fn apply_task_effect(
        &mut self,
        task_id: Uuid,
        effect: TaskEffect,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.changed_tasks.insert(task_id);
        // A reassignment first frees the previous holder, should an attempt's end be
        // missing.
        if let Some(previous) = self.assignments.remove(&task_id) {
            self.needs_refresh(previous.agent_id);
        }
        if let TaskEffect::Assign(agent_id) = effect {
            let meta = EventMeta::of(event)?;
            self.assignments.insert(
                task_id,
                Assignment {
                    task_id,
                    agent_id,
                    organization_id: meta.organization_id,
                    project_id: meta.project_id,
                    assigned_transaction_id: event.transaction_id,
                    assigned_global_position: event.global_position,
                },
            );
            self.needs_refresh(agent_id);
        }
        Ok(())
    }

    /// An agent without a row yet is not refreshed: its registration, should it come
    /// later, starts it with no current task.
    fn needs_refresh(&mut self, agent_id: Uuid) {
        if self.agents.contains_key(&agent_id) {
            self.refresh.insert(agent_id);
        }
    }

    /// Sets each refreshed agent's current task to its most recently assigned open task
    /// (or none). Every later change of its assignments would refresh it again, so the
    /// assignments as they stand at the end of the batch decide.
    fn refresh_current_tasks(&mut self) {
        let mut latest: HashMap<Uuid, &Assignment> = HashMap::new();
        for assignment in self.assignments.values() {
            if !self.refresh.contains(&assignment.agent_id) {
                continue;
            }
            let slot = latest.entry(assignment.agent_id).or_insert(assignment);
            if assignment.order() > slot.order() {
                *slot = assignment;
            }
        }
        for agent_id in &self.refresh {
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.current_task_id = latest.get(agent_id).map(|a| a.task_id);
                self.changed_agents.insert(*agent_id);
            }
        }
    }

    async fn save(&self, tx: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        self.save_assignments(tx, schema).await?;
        self.save_agents(tx, schema).await
    }

    /// Deletes the changed tasks' rows and inserts those still assigned.
    async fn save_assignments(
        &self,
        tx: &mut PgConnection,
        schema: &str,
    ) -> Result<(), ProjectionError> {
        if self.changed_tasks.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "delete from {schema}.task_agents where task_id = any($1)"
        ))
        .bind(self.changed_tasks.iter().copied().collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        let open: Vec<&Assignment> = self
            .changed_tasks
            .iter()
            .filter_map(|id| self.assignments.get(id))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "insert into {schema}.task_agents (task_id, agent_id, organization_id, project_id,
                 assigned_transaction_id, assigned_global_position)
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::bigint[],
                                  $6::bigint[])"
        ))
        .bind(open.iter().map(|a| a.task_id).collect::<Vec<_>>())
        .bind(open.iter().map(|a| a.agent_id).collect::<Vec<_>>())
        .bind(open.iter().map(|a| a.organization_id).collect::<Vec<_>>())
        .bind(open.iter().map(|a| a.project_id).collect::<Vec<_>>())
        .bind(
            open.iter()
                .map(|a| a.assigned_transaction_id)
                .collect::<Vec<_>>(),
        )
        .bind(
            open.iter()
                .map(|a| a.assigned_global_position)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn save_agents(
        &self,
        tx: &mut PgConnection,
        schema: &str,
    ) -> Result<(), ProjectionError> {
        let agents: Vec<&AgentView> = self
            .changed_agents
            .iter()
            .filter_map(|id| self.agents.get(id))
            .collect();
        if agents.is_empty() {
            return Ok(());
        }
        // `text[][]` cannot be ragged: capabilities travel as one JSON array per agent.
        let capabilities = agents
            .iter()
            .map(|a| serde_json::to_string(&a.capabilities))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query(&format!(
            "insert into {schema}.agents ({AGENT_COLUMNS})
             select agent_id, organization_id, project_id, name, agent_type, status,
                    array(select c from jsonb_array_elements_text(capabilities::jsonb)
                          with ordinality as e(c, n) order by n), capacity,
                    current_task_id, last_status_change, registered_at
               from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                           $6::text[], $7::text[], $8::bigint[], $9::uuid[],
                           $10::timestamptz[], $11::timestamptz[])
                    as rows(agent_id, organization_id, project_id, name, agent_type, status,
                            capabilities, capacity, current_task_id, last_status_change,
                            registered_at)
             on conflict (agent_id) do update set
                    status = excluded.status, capabilities = excluded.capabilities,
                    current_task_id = excluded.current_task_id,
                    last_status_change = excluded.last_status_change"
        ))
        .bind(agents.iter().map(|a| a.agent_id).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.organization_id).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.project_id).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>())
        .bind(
            agents
                .iter()
                .map(|a| a.agent_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(agents.iter().map(|a| a.status.as_str()).collect::<Vec<_>>())
        .bind(capabilities)
        .bind(agents.iter().map(|a| a.capacity).collect::<Vec<_>>())
        .bind(agents.iter().map(|a| a.current_task_id).collect::<Vec<_>>())
        .bind(
            agents
                .iter()
                .map(|a| a.last_status_change)
                .collect::<Vec<_>>(),
        )
        .bind(agents.iter().map(|a| a.registered_at).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// A time as a `timestamptz` column keeps it (microseconds), so that a row folded in
/// memory equals the row read back.
fn as_stored(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// The agents of an organization as one process folds them from the log (the live
/// `agents` stream), with the projector's own rule.
#[derive(Default)]
pub struct AgentsModel {
    rows: Rows,
}

impl AgentsModel {
    /// Applies one event; the agents whose row it changed, by id.
    pub fn apply(&mut self, event: &StoredEvent) -> Result<BTreeSet<Uuid>, ProjectionError> {
        for change in decode(std::slice::from_ref(event))? {
            match change {
                Change::Agent { id, event } => self.rows.apply_agent_event(id, event),
                Change::Task { id, effect, event } => {
                    self.rows.apply_task_effect(id, effect, event)?
                }
            }
        }
        self.rows.refresh_current_tasks();
        let rows = &mut self.rows;
        rows.refresh.clear();
        rows.changed_tasks.clear();
        // Closed assignments are gone from `assignments` already; nothing else grows.
        Ok(std::mem::take(&mut rows.changed_agents))
    }

    pub fn agent(&self, id: Uuid) -> Option<&AgentView> {
        self.rows.agents.get(&id)
    }

    /// Every agent, in the order `GET /api/v1/agents` lists them (name, then id).
    pub fn agents(&self) -> Vec<&AgentView> {
        let mut agents: Vec<&AgentView> = self.rows.agents.values().collect();
        agents.sort_by(|a, b| (&a.name, a.agent_id).cmp(&(&b.name, b.agent_id)));
        agents
    }
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
