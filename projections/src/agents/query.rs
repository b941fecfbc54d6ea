//! Reading the agents view: a filtered list from the `agents_agents` view.

use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::model::AgentView;

/// Which agents to list; all given filters must match.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// `None` only for operators, who see every organization.
    pub organizations: Option<Vec<Uuid>>,
    /// Agents registered for this project (organization-wide agents have none).
    pub project_id: Option<Uuid>,
    pub status: Option<String>,
    /// Only agents after this one, in the list's order (by name, then id).
    pub after: Option<Uuid>,
    /// At most this many; all when `None`.
    pub limit: Option<i64>,
}

/// Reads agents from the `agents_agents` view, by name (then id), a page when the filter
/// says so.
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
    if let Some(after) = filter.after {
        sql.push(
            " and (name collate \"C\", agent_id) > \
             (select name, agent_id from agents_agents where agent_id = ",
        )
        .push_bind(after)
        .push(")");
    }
    // Byte order (the C collation), as `list_as_of` sorts its Rust strings: the database's
    // own collation follows its locale, and a page's cursor must mean one order.
    sql.push(" order by name collate \"C\", agent_id");
    if let Some(limit) = filter.limit {
        sql.push(" limit ").push_bind(limit);
    }
    sql.build_query_as().fetch_all(pool).await
}

/// The tasks `agent_id` holds (assigned or running), per the `agents_task_agents` view.
pub async fn held_tasks(pool: &PgPool, agent_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "select task_id from agents_task_agents where agent_id = $1
          order by assigned_transaction_id, assigned_global_position",
    )
    .bind(agent_id)
    .fetch_all(pool)
    .await
}

/// The agents of `organization_id` as they were right after global position `as_of`,
/// filtered as [`list`] filters (organizations aside) and in its order: the organization's
/// log replayed (at most `max_events`) through the projector's own rules.
pub async fn list_as_of(
    pool: &PgPool,
    organization_id: Uuid,
    filter: &AgentFilter,
    as_of: i64,
    max_events: usize,
) -> Result<Vec<AgentView>, crate::ProjectionError> {
    let mut model = super::AgentsModel::default();
    crate::replay::replay_organization(pool, organization_id, as_of, max_events, |event| {
        model.apply(event).map(|_| ())
    })
    .await?;
    let mut agents: Vec<AgentView> = model
        .agents()
        .into_iter()
        .filter(|a| filter.project_id.is_none_or(|p| a.project_id == Some(p)))
        .filter(|a| filter.status.as_ref().is_none_or(|s| &a.status == s))
        .cloned()
        .collect();
    agents.sort_by(|a, b| (&a.name, a.agent_id).cmp(&(&b.name, b.agent_id)));
    if let Some(after) = filter.after {
        let start = agents
            .iter()
            .position(|a| a.agent_id == after)
            .map_or(agents.len(), |at| at + 1);
        agents.drain(..start);
    }
    if let Some(limit) = filter.limit {
        agents.truncate(usize::try_from(limit).unwrap_or(0));
    }
    Ok(agents)
}
