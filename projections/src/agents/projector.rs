//! The SQL side of the agents view: its tables (schema `rm_agents_<build>`) and the
//! set-based `apply` that loads the agents and open assignments a batch can touch, runs
//! the pure transitions and writes each changed row once.

use std::collections::BTreeSet;

use futures_util::future::BoxFuture;
use omoi_domain::agent::AgentEvent;
use omoi_store::StoredEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::{decode, AgentView, Assignment, Change, Rows, TaskEffect};
use crate::codec::EventMeta;
use crate::{Columns, Fold, ProjectionError, Projector};

/// Builds the `agents` read model.
pub struct AgentsProjector;

impl Projector for AgentsProjector {
    fn name(&self) -> &'static str {
        "agents"
    }

    fn version(&self) -> i32 {
        1
    }

    /// What `apply` decodes; every other aggregate's events pass it by.
    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        matches!(event.aggregate_type.as_str(), "Agent" | "Task")
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

    /// Its audit takes scope, actor and time from the metadata.
    fn columns(&self) -> Columns {
        Columns::MetadataFields(EventMeta::FIELDS)
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(apply_events(tx, schema, events))
    }

    fn fold_from_start(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(AgentsFold::default()))
    }
}

/// Every agent and open assignment folded in memory from position zero, written once.
#[derive(Default)]
struct AgentsFold(Rows);

impl Fold for AgentsFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for change in decode(events)? {
            match change {
                Change::Agent { id, event } => self.0.apply_agent_event(id, event),
                Change::Task { id, effect, event } => {
                    self.0.apply_task_effect(id, effect, event)?
                }
            }
        }
        Ok(())
    }

    /// Agents, and every task that was ever assigned (its row is written or cleared).
    fn rows(&self) -> usize {
        self.0.agents.len() + self.0.changed_tasks.len()
    }

    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut rows = std::mem::take(&mut self.0);
            rows.refresh_current_tasks();
            rows.save(tx, schema).await
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projector_owns_the_agents_table_and_its_helper() {
        let projector = AgentsProjector;
        assert_eq!(projector.tables(), &["agents", "task_agents"]);
        let statements = projector.create_tables("rm_agents_1").join("\n");
        assert!(statements.contains("rm_agents_1.agents"));
        assert!(statements.contains("rm_agents_1.task_agents"));
    }
}
