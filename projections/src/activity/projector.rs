//! The SQL side of the agent audit: one table, one insert per batch, and the fold of a
//! rebuild, which copies its rows in.

use futures_util::future::BoxFuture;
use omoi_store::json::MetadataField;
use omoi_store::StoredEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::agents_named;
use crate::copy::CopyRows;
use crate::{Columns, Fold, FoldWrite, ProjectionError, Projector, FOLD_ON_ROWS};

/// The entries' columns, in the order a batch's arrays and the fold's rows hold them.
const ENTRY_COLUMNS: &str =
    "agent_id, transaction_id, global_position, organization_id, project_id";

/// Builds the `activity` read model.
pub struct ActivityProjector;

impl Projector for ActivityProjector {
    fn name(&self) -> &'static str {
        "activity"
    }

    fn version(&self) -> i32 {
        // 2: the pages' key is built when a rebuilt build goes live, not kept up while it
        // is written.
        2
    }

    /// Events that name an agent (the only ones `apply` records).
    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        !agents_named(event).is_empty()
    }

    fn tables(&self) -> &'static [&'static str] {
        &["entries"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![format!(
            "create table if not exists {schema}.entries (
                agent_id uuid not null,
                transaction_id bigint not null,
                global_position bigint not null,
                organization_id uuid,
                project_id uuid
            )"
        )]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        // The pages' index (one agent, in the global order) and the entries' key: an
        // agent appears once per event.
        vec![format!(
            "create unique index if not exists entries_by_agent
                on {schema}.entries (agent_id, transaction_id, global_position)"
        )]
    }

    /// A row's scope and the agents an actor names come from the metadata.
    fn columns(&self) -> Columns {
        Columns::MetadataFields(&[
            MetadataField::OrganizationId,
            MetadataField::ProjectId,
            MetadataField::Actor,
        ])
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
        Some(Box::new(ActivityFold::default()))
    }
}

/// One row of the audit: an agent the event concerns, and the event's place and scope.
struct Entry {
    agent_id: Uuid,
    transaction_id: i64,
    global_position: i64,
    organization_id: Option<Uuid>,
    project_id: Option<Uuid>,
}

/// The entries of `event`, one per agent it concerns (none for most events).
fn entries(event: &StoredEvent) -> Result<Vec<Entry>, ProjectionError> {
    let agents = agents_named(event);
    if agents.is_empty() {
        return Ok(Vec::new());
    }
    let organization_id = scope_field(event, "organization_id", event.metadata.organization_id())?;
    let project_id = scope_field(event, "project_id", event.metadata.project_id())?;
    Ok(agents
        .into_iter()
        .map(|agent_id| Entry {
            agent_id,
            transaction_id: event.transaction_id,
            global_position: event.global_position,
            organization_id,
            project_id,
        })
        .collect())
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

/// The rows of a batch, column by column.
#[derive(Default)]
struct Rows {
    agents: Vec<Uuid>,
    transactions: Vec<i64>,
    positions: Vec<i64>,
    organizations: Vec<Option<Uuid>>,
    projects: Vec<Option<Uuid>>,
}

async fn apply_events(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let mut rows = Rows::default();
    for event in events {
        for entry in entries(event)? {
            rows.agents.push(entry.agent_id);
            rows.transactions.push(entry.transaction_id);
            rows.positions.push(entry.global_position);
            rows.organizations.push(entry.organization_id);
            rows.projects.push(entry.project_id);
        }
    }
    if rows.agents.is_empty() {
        return Ok(());
    }
    // No conflict target: it holds with the entries' key (a live build) and without it
    // (a build still being written, whose key comes when it goes live).
    sqlx::query(&format!(
        "insert into {schema}.entries ({ENTRY_COLUMNS})
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

/// The audit of a rebuild, folded from position zero: its entries encoded for `COPY` as
/// they are folded, written every [`FOLD_ON_ROWS`]. It holds nothing else, so it always
/// folds on.
#[derive(Default)]
struct ActivityFold {
    entries: CopyRows,
}

impl Fold for ActivityFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            for entry in entries(event)? {
                self.entries
                    .row(5)
                    .uuid(entry.agent_id)
                    .bigint(entry.transaction_id)
                    .bigint(entry.global_position)
                    .optional_uuid(entry.organization_id)
                    .optional_uuid(entry.project_id);
            }
        }
        Ok(())
    }

    fn rows(&self) -> usize {
        self.entries.len()
    }

    fn bound(&self) -> usize {
        FOLD_ON_ROWS
    }

    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::new(self.taken()).write(tx, schema)
    }

    fn goes_on(&self) -> bool {
        true
    }

    fn take_write(&mut self) -> Option<Box<dyn FoldWrite>> {
        Some(Box::new(self.taken()))
    }
}

impl ActivityFold {
    /// The entries folded since the last write, taken out.
    fn taken(&mut self) -> ActivityWrite {
        ActivityWrite(std::mem::take(&mut self.entries))
    }
}

/// Entries of an [`ActivityFold`], to write.
struct ActivityWrite(CopyRows);

impl FoldWrite for ActivityWrite {
    fn write<'a>(
        self: Box<Self>,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        let mut entries = self.0;
        Box::pin(async move {
            let table = format!("{schema}.entries");
            entries.copy(tx, &table, ENTRY_COLUMNS).await?;
            Ok(())
        })
    }
}
