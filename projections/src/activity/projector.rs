//! The SQL side of the agent audit: one table, one insert per batch.

use futures_util::future::BoxFuture;
use omoi_store::StoredEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::agents_named;
use crate::{ProjectionError, Projector};

/// Builds the `activity` read model.
pub struct ActivityProjector;

impl Projector for ActivityProjector {
    fn name(&self) -> &'static str {
        "activity"
    }

    fn version(&self) -> i32 {
        1
    }

    /// Events that name an agent (the only ones `apply` records).
    fn concerns(&self, event: &StoredEvent) -> bool {
        !agents_named(event).is_empty()
    }

    fn tables(&self) -> &'static [&'static str] {
        &["entries"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        // The primary key is also the pages' index: one agent, in the global order.
        vec![format!(
            "create table if not exists {schema}.entries (
                agent_id uuid not null,
                transaction_id bigint not null,
                global_position bigint not null,
                organization_id uuid,
                project_id uuid,
                primary key (agent_id, transaction_id, global_position)
            )"
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

/// The rows of a batch, column by column.
#[derive(Default)]
struct Rows {
    agents: Vec<Uuid>,
    transactions: Vec<i64>,
    positions: Vec<i64>,
    organizations: Vec<Option<Uuid>>,
    projects: Vec<Option<Uuid>>,
}

fn scope_field(
    event: &StoredEvent,
    name: &str,
    field: Option<&str>,
) -> Result<Option<Uuid>, ProjectionError> {
    field
        .map(|text| {
            text.parse()
                .map_err(|e| ProjectionError::payload(event, format!("metadata {name}: {e}")))
        })
        .transpose()
}

async fn apply_events(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let mut rows = Rows::default();
    for event in events {
        let agents = agents_named(event);
        if agents.is_empty() {
            continue;
        }
        let organization = scope_field(event, "organization_id", event.metadata.organization_id())?;
        let project = scope_field(event, "project_id", event.metadata.project_id())?;
        for agent in agents {
            rows.agents.push(agent);
            rows.transactions.push(event.transaction_id);
            rows.positions.push(event.global_position);
            rows.organizations.push(organization);
            rows.projects.push(project);
        }
    }
    if rows.agents.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "insert into {schema}.entries
             (agent_id, transaction_id, global_position, organization_id, project_id)
         select * from unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::uuid[], $5::uuid[])
         on conflict do nothing"
    ))
    .bind(&rows.agents)
    .bind(&rows.transactions)
    .bind(&rows.positions)
    .bind(&rows.organizations)
    .bind(&rows.projects)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
