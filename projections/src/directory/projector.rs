//! The SQL side of the directory: the `entries` table (schema `rm_directory_<build>`) and
//! the set-based `apply` that loads the rows a batch touches (one query), runs the pure
//! transitions and writes each changed row once (one statement).

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use omoi_domain::kind::AggregateKind;
use omoi_domain::task::TaskStatus;
use omoi_store::StoredEvent;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::model::{Entry, Located};
use crate::codec::decode_error;
use crate::copy::CopyRows;
use crate::{Columns, Fold, ProjectionError, Projector};

/// The text a search matches: title and description, stemmed as English. The index and
/// the query must spell it the same for the index to be used.
pub(crate) const SEARCH_DOCUMENT: &str =
    "to_tsvector('english'::regconfig, title || ' ' || description)";

/// The text of a task that duplicate detection compares (`pg_trgm` similarity), of the
/// row `alias` (empty: the table's own). The index and the query spell it alike, so the
/// index serves the query.
pub(crate) fn task_text(alias: &str) -> String {
    let column = |name: &str| match alias {
        "" => name.to_string(),
        alias => format!("{alias}.{name}"),
    };
    format!("({} || ' ' || {})", column("title"), column("description"))
}

/// The statuses of work still to be done — those the domain does not call final — as an
/// SQL list of literals.
pub(crate) fn open_statuses() -> String {
    let open: Vec<String> = TaskStatus::ALL
        .iter()
        .filter(|status| !status.is_final())
        .map(|status| format!("'{}'", status.as_str()))
        .collect();
    open.join(", ")
}

/// Whether the row `alias` (empty: the table's own) is an open task: the predicate of the
/// trigram index, which the Conductor's probe spells alike (the planner uses a partial
/// index only for a query whose conditions imply its predicate). The kind is tested as
/// `(kind = 'task') is true` so that the lists' index, which leads with `kind`, cannot
/// serve the probe: on statistics taken before a burst of new tasks, the planner chose it
/// and computed the similarity of every task for each new one (4.7 s for 500 new tasks,
/// each against the ~940 tasks then in the table: `auto_explain` during `omoi-bench
/// bench-workflow`).
pub(crate) fn open_task(alias: &str) -> String {
    let prefix = match alias {
        "" => String::new(),
        alias => format!("{alias}."),
    };
    format!(
        "({prefix}kind = 'task') is true and {prefix}status in ({})",
        open_statuses()
    )
}

/// The name of the trigram index of open tasks' text.
pub(crate) const OPEN_TASK_TRIGRAMS: &str = "entries_open_task_trigrams";

/// The trigram index of open tasks' text, in `schema`. Open tasks only: duplicate
/// detection compares a new task with the open ones, and an index of every task ever
/// would make each comparison walk the postings of all finished work — a cost growing
/// with the log, not with the work in hand.
fn open_task_trigram_index(schema: &str) -> String {
    format!(
        "create index if not exists {OPEN_TASK_TRIGRAMS} on {schema}.entries
            using gin ({} gin_trgm_ops) where {}",
        task_text(""),
        open_task("")
    )
}

pub(crate) const ENTRY_COLUMNS: &str = "id, kind, organization_id, project_id, parent_id, title, \
     description, status, priority, phase, task_type, agent_id, created_at, updated_at, \
     created_transaction_id, created_position, last_position";

/// Builds the `directory` read model.
pub struct DirectoryProjector;

impl Projector for DirectoryProjector {
    fn name(&self) -> &'static str {
        "directory"
    }

    // 2: the trigram index holds open tasks only (a new index: a rebuild goes live with it).
    // 3: a task's priority follows `TaskPriorityChanged` (rows built before kept the
    // creation's).
    fn version(&self) -> i32 {
        3
    }

    fn tables(&self) -> &'static [&'static str] {
        &["entries"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![format!(
            "create table if not exists {schema}.entries (
                id                     uuid not null,
                kind                   text not null,
                organization_id        uuid not null,
                project_id             uuid,
                parent_id              uuid,
                title                  text not null,
                description            text not null,
                status                 text not null,
                priority               text,
                phase                  text,
                task_type              text,
                agent_id               uuid,
                created_at             timestamptz not null,
                updated_at             timestamptz not null,
                created_transaction_id bigint not null,
                created_position       bigint not null,
                last_position          bigint not null
            )"
        )]
    }

    fn create_write_indexes(&self, schema: &str) -> Vec<String> {
        // Named as the primary key it was before it became an index of its own: a build
        // made before, which has that key, neither builds nor drops it.
        vec![format!(
            "create unique index if not exists entries_pkey on {schema}.entries (id)"
        )]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        // Lists are per kind, newest first, within organizations, a project, a parent or
        // an agent; search is full text over the work items.
        vec![
            format!(
                "create index if not exists entries_by_organization on {schema}.entries
                    (kind, organization_id, created_transaction_id desc, created_position desc)"
            ),
            format!(
                "create index if not exists entries_by_project on {schema}.entries
                    (project_id, kind, created_transaction_id desc, created_position desc)"
            ),
            format!(
                "create index if not exists entries_by_parent on {schema}.entries (parent_id)
                    where parent_id is not null"
            ),
            format!(
                "create index if not exists entries_by_agent on {schema}.entries (agent_id)
                    where agent_id is not null"
            ),
            format!(
                "create index if not exists entries_search on {schema}.entries
                    using gin ({SEARCH_DOCUMENT})
                    where kind in ('spec', 'ticket', 'task')"
            ),
            open_task_trigram_index(schema),
        ]
    }

    /// Of the metadata, entries take only when they happened (`occurred_at`, which every
    /// stream carries): their organization and project are in the creations' payloads.
    fn columns(&self) -> Columns {
        Columns::WITHOUT_METADATA
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(apply_to_table(tx, schema, events))
    }

    fn fold_from_start(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(DirectoryFold::default()))
    }
}

/// Every entry folded in memory from position zero, written once.
#[derive(Default)]
struct DirectoryFold(HashMap<Uuid, Entry>);

impl Fold for DirectoryFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            let Some(located) = Located::decode(event)? else {
                continue;
            };
            if let Some(entry) = located.apply(self.0.remove(&located.id))? {
                self.0.insert(located.id, entry);
            }
        }
        Ok(())
    }

    fn rows(&self) -> usize {
        self.0.len()
    }

    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        // The build's table is empty: every row is copied in, none upserted.
        Box::pin(async move {
            // In the order of `entries_by_organization`, the organization's lists: its
            // build at go-live then finds its rows sorted (PostgreSQL's sort checks for
            // that first; the index in 0.24–0.29 s where rows in creation order took
            // 0.55–0.64 s, on 221,568 rows), and a page of a list is on few pages of the
            // table. Kinds are lowercase ASCII and uuids compare bytewise in both places.
            let mut entries: Vec<&Entry> = self.0.values().collect();
            entries.sort_unstable_by(|a, b| {
                (a.kind.noun(), a.organization_id)
                    .cmp(&(b.kind.noun(), b.organization_id))
                    .then_with(|| {
                        (b.created_transaction_id, b.created_position)
                            .cmp(&(a.created_transaction_id, a.created_position))
                    })
            });
            let table = format!("{schema}.entries");
            let mut rows = CopyRows::default();
            for e in entries {
                rows.row(17)
                    .uuid(e.id)
                    .text(e.kind.noun())
                    .uuid(e.organization_id)
                    .optional_uuid(e.project_id)
                    .optional_uuid(e.parent_id)
                    .text(&e.title)
                    .text(&e.description)
                    .text(&e.status)
                    .optional_text(e.priority.as_deref())
                    .optional_text(e.phase.as_deref())
                    .optional_text(e.task_type.as_deref())
                    .optional_uuid(e.agent_id)
                    .timestamptz(e.created_at)
                    .timestamptz(e.updated_at)
                    .bigint(e.created_transaction_id)
                    .bigint(e.created_position)
                    .bigint(e.last_position);
                rows.copy_when_full(tx, &table, ENTRY_COLUMNS).await?;
            }
            rows.copy(tx, &table, ENTRY_COLUMNS).await?;
            Ok(())
        })
    }
}

async fn apply_to_table(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let mut located = Vec::with_capacity(events.len());
    for event in events {
        located.extend(Located::decode(event)?);
    }
    if located.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<Uuid> = located.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let sql = format!("select {ENTRY_COLUMNS} from {schema}.entries where id = any($1)");
    let mut entries: HashMap<Uuid, Entry> = HashMap::with_capacity(ids.len());
    for row in sqlx::query(&sql).bind(&ids).fetch_all(&mut *tx).await? {
        let entry = entry_from_row(&row)?;
        entries.insert(entry.id, entry);
    }
    let mut changed = Vec::with_capacity(ids.len());
    for event in &located {
        if let Some(entry) = event.apply(entries.remove(&event.id))? {
            entries.insert(event.id, entry);
            changed.push(event.id);
        }
    }
    changed.sort_unstable();
    changed.dedup();
    let rows: Vec<&Entry> = changed.iter().filter_map(|id| entries.get(id)).collect();
    upsert(tx, schema, &rows).await
}

pub(crate) fn entry_from_row(row: &PgRow) -> Result<Entry, ProjectionError> {
    let kind: String = row.try_get("kind")?;
    Ok(Entry {
        kind: AggregateKind::of_noun(&kind)
            .ok_or_else(|| decode_error(format!("{kind} is not a kind")))?,
        id: row.try_get("id")?,
        organization_id: row.try_get("organization_id")?,
        project_id: row.try_get("project_id")?,
        parent_id: row.try_get("parent_id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        status: row.try_get("status")?,
        priority: row.try_get("priority")?,
        phase: row.try_get("phase")?,
        task_type: row.try_get("task_type")?,
        agent_id: row.try_get("agent_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        created_transaction_id: row.try_get("created_transaction_id")?,
        created_position: row.try_get("created_position")?,
        last_position: row.try_get("last_position")?,
    })
}

/// Writes `rows` in one statement (one array per column), overwriting every column: a
/// row is always the model's state.
async fn upsert(
    tx: &mut PgConnection,
    schema: &str,
    rows: &[&Entry],
) -> Result<(), ProjectionError> {
    if rows.is_empty() {
        return Ok(());
    }
    fn column<T>(rows: &[&Entry], f: impl Fn(&Entry) -> T) -> Vec<T> {
        rows.iter().map(|e| f(e)).collect()
    }
    let sql = format!(
        "insert into {schema}.entries ({ENTRY_COLUMNS})
         select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[],
                              $6::text[], $7::text[], $8::text[], $9::text[], $10::text[],
                              $11::text[], $12::uuid[], $13::timestamptz[],
                              $14::timestamptz[], $15::bigint[], $16::bigint[],
                              $17::bigint[])
         on conflict (id) do update set
                kind = excluded.kind, organization_id = excluded.organization_id,
                project_id = excluded.project_id, parent_id = excluded.parent_id,
                title = excluded.title, description = excluded.description,
                status = excluded.status, priority = excluded.priority,
                phase = excluded.phase, task_type = excluded.task_type,
                agent_id = excluded.agent_id, created_at = excluded.created_at,
                updated_at = excluded.updated_at,
                created_transaction_id = excluded.created_transaction_id,
                created_position = excluded.created_position,
                last_position = excluded.last_position"
    );
    sqlx::query(&sql)
        .bind(column(rows, |e| e.id))
        .bind(column(rows, |e| e.kind.noun()))
        .bind(column(rows, |e| e.organization_id))
        .bind(column(rows, |e| e.project_id))
        .bind(column(rows, |e| e.parent_id))
        .bind(column(rows, |e| e.title.clone()))
        .bind(column(rows, |e| e.description.clone()))
        .bind(column(rows, |e| e.status.clone()))
        .bind(column(rows, |e| e.priority.clone()))
        .bind(column(rows, |e| e.phase.clone()))
        .bind(column(rows, |e| e.task_type.clone()))
        .bind(column(rows, |e| e.agent_id))
        .bind(column(rows, |e| e.created_at))
        .bind(column(rows, |e| e.updated_at))
        .bind(column(rows, |e| e.created_transaction_id))
        .bind(column(rows, |e| e.created_position))
        .bind(column(rows, |e| e.last_position))
        .execute(&mut *tx)
        .await?;
    Ok(())
}
