//! The SQL side of the timeline: its tables (schema `rm_timeline_<build>`), the set-based
//! `apply` that looks up the titles a batch names, writes its entries and then the titles
//! it set, and the fold of a rebuild, which keeps the titles in memory and copies the
//! entries in.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use omoi_store::StoredEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::{Change, EntityType, TitleKey};
use super::summary::{summary, Names};
use crate::codec::{decode_error, entity_id, EventMeta};
use crate::copy::CopyRows;
use crate::{Columns, Fold, FoldWrite, ProjectionError, Projector, FOLD_ON_ROWS, FOLD_WRITE_CHUNK};

/// The entries' columns, in the order a batch's arrays and the fold's rows hold them.
const ENTRY_COLUMNS: &str = "transaction_id, global_position, organization_id, project_id, \
     entity_type, entity_id, event_type, actor, summary, occurred_at";

/// Titles a rebuild's fold keeps in memory at most (about 100 bytes each); past them it
/// writes and the batches go on, reading titles from the table.
const FOLD_TITLES: usize = 2_000_000;

/// Builds the `timeline` read model.
pub struct TimelineProjector;

impl Projector for TimelineProjector {
    fn name(&self) -> &'static str {
        "timeline"
    }

    fn version(&self) -> i32 {
        // 2: the entries' key is built when a rebuilt build goes live, not kept up while
        // it is written.
        2
    }

    fn tables(&self) -> &'static [&'static str] {
        &["entries", "titles"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![
            format!(
                "create table if not exists {schema}.entries (
                    transaction_id bigint not null,
                    global_position bigint not null,
                    organization_id uuid not null,
                    project_id uuid,
                    entity_type text not null,
                    entity_id uuid not null,
                    event_type text not null,
                    actor text,
                    summary text not null,
                    occurred_at timestamptz not null
                )"
            ),
            format!(
                "create table if not exists {schema}.titles (
                    entity_type text not null,
                    entity_id uuid not null,
                    organization_id uuid not null,
                    project_id uuid,
                    title text not null,
                    primary key (entity_type, entity_id)
                )"
            ),
        ]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        // Newest-first pages walk these backwards, one per way of scoping a page; the
        // first is the entries' key (an event is one entry).
        vec![
            format!(
                "create unique index if not exists entries_by_position
                    on {schema}.entries (transaction_id, global_position)"
            ),
            format!(
                "create index if not exists entries_by_project
                    on {schema}.entries (project_id, transaction_id, global_position)"
            ),
            format!(
                "create index if not exists entries_by_organization
                    on {schema}.entries (organization_id, transaction_id, global_position)"
            ),
            format!(
                "create index if not exists entries_by_entity
                    on {schema}.entries (entity_id, transaction_id, global_position)"
            ),
        ]
    }

    /// Entries take their scope, actor and time from the metadata.
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
        Some(Box::new(TimelineFold::default()))
    }
}

/// An event that becomes an entry, decoded.
struct Decoded<'a> {
    event: &'a StoredEvent,
    kind: EntityType,
    id: Uuid,
    change: Change,
    meta: EventMeta,
}

/// A title as the `titles` table keeps it.
struct Title {
    text: String,
    /// Set for a title to write (set since it was loaded, or since the fold's last write):
    /// the scope of the row, from the event that first named the entity here (a row keeps
    /// the scope it was created with).
    scope: Option<Scope>,
}

/// A title row's organization and project.
type Scope = (Uuid, Option<Uuid>);

impl<'a> Decoded<'a> {
    /// The event as an entry; `None` for an event that is not one.
    fn of(event: &'a StoredEvent) -> Result<Option<Self>, ProjectionError> {
        let Some(kind) = EntityType::of_aggregate(&event.aggregate_type) else {
            return Ok(None);
        };
        let change =
            Change::parse(kind, &event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        if !change.is_entry() {
            return Ok(None);
        }
        Ok(Some(Self {
            event,
            kind,
            id: entity_id(event)?,
            change,
            meta: EventMeta::of(event)?,
        }))
    }

    /// Its summary with the titles as the event saw them; then the title it sets, if any,
    /// into `titles`.
    fn summarize(&self, titles: &mut Titles) -> String {
        let title_of = |key: TitleKey| titles.get(&key).map(|t| t.text.as_str());
        let names = Names {
            id: self.id,
            title: title_of((self.kind, self.id)),
            other: self.change.reference().and_then(title_of),
        };
        let summary = summary(&self.change, &names);
        if let Some(text) = self.change.new_title() {
            let scope = (self.meta.organization_id, self.meta.project_id);
            titles
                .entry((self.kind, self.id))
                .and_modify(|t| {
                    t.text = text.to_string();
                    t.scope.get_or_insert(scope);
                })
                .or_insert_with(|| Title {
                    text: text.to_string(),
                    scope: Some(scope),
                });
        }
        summary
    }
}

type Titles = HashMap<TitleKey, Title>;

/// Looks up every title the batch names (one query), writes the entries in order with
/// the titles as each event saw them (one insert), then the titles the batch set (one
/// upsert).
async fn apply_events(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let mut decoded = Vec::with_capacity(events.len());
    for event in events {
        decoded.extend(Decoded::of(event)?);
    }
    if decoded.is_empty() {
        return Ok(());
    }
    let wanted: BTreeSet<TitleKey> = decoded
        .iter()
        .flat_map(|d| std::iter::once((d.kind, d.id)).chain(d.change.reference()))
        .collect();
    let mut titles = load_titles(tx, schema, &wanted).await?;
    let mut entries = EntryColumns::default();
    for d in &decoded {
        let summary = d.summarize(&mut titles);
        entries.push(d, summary);
    }
    insert_entries(tx, schema, entries).await?;
    save_titles(tx, schema, &titles_to_save(&mut titles)).await?;
    Ok(())
}

/// The timeline of a rebuild, folded from position zero: every title in memory (no
/// lookups), the entries encoded for `COPY` as they are folded and written every
/// [`FOLD_ON_ROWS`] with the titles set since the last write.
#[derive(Default)]
struct TimelineFold {
    titles: Titles,
    entries: CopyRows,
}

impl Fold for TimelineFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if let Some(d) = Decoded::of(event)? {
                let summary = d.summarize(&mut self.titles);
                copy_entry(&mut self.entries, &d, &summary);
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
        self.titles.len() < FOLD_TITLES
    }

    fn take_write(&mut self) -> Option<Box<dyn FoldWrite>> {
        Some(Box::new(self.taken()))
    }
}

impl TimelineFold {
    /// The entries folded since the last write and the titles set since, taken out.
    fn taken(&mut self) -> TimelineWrite {
        TimelineWrite {
            entries: std::mem::take(&mut self.entries),
            titles: titles_to_save(&mut self.titles),
        }
    }
}

/// Entries and titles of a [`TimelineFold`], to write.
struct TimelineWrite {
    entries: CopyRows,
    titles: Vec<TitleRow>,
}

impl FoldWrite for TimelineWrite {
    fn write<'a>(
        self: Box<Self>,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        let TimelineWrite {
            mut entries,
            titles,
        } = *self;
        Box::pin(async move {
            let table = format!("{schema}.entries");
            entries.copy(tx, &table, ENTRY_COLUMNS).await?;
            save_titles(tx, schema, &titles).await?;
            Ok(())
        })
    }
}

/// An entry as the fold's `COPY` takes it: the columns of [`EntryColumns`], in order.
fn copy_entry(rows: &mut CopyRows, d: &Decoded<'_>, summary: &str) {
    rows.row(10)
        .bigint(d.event.transaction_id)
        .bigint(d.event.global_position)
        .uuid(d.meta.organization_id)
        .optional_uuid(d.meta.project_id)
        .text(d.kind.as_str())
        .uuid(d.id)
        .text(&d.event.event_type)
        .optional_text(d.meta.actor.as_deref())
        .text(summary)
        .timestamptz(d.meta.occurred_at);
}

async fn load_titles(
    tx: &mut PgConnection,
    schema: &str,
    wanted: &BTreeSet<TitleKey>,
) -> Result<HashMap<TitleKey, Title>, ProjectionError> {
    let (kinds, ids): (Vec<&str>, Vec<Uuid>) =
        wanted.iter().map(|(kind, id)| (kind.as_str(), *id)).unzip();
    let rows: Vec<(String, Uuid, String)> = sqlx::query_as(&format!(
        "select t.entity_type, t.entity_id, t.title
           from {schema}.titles t
           join unnest($1::text[], $2::uuid[]) as wanted(entity_type, entity_id)
             using (entity_type, entity_id)"
    ))
    .bind(kinds)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut titles = HashMap::with_capacity(rows.len());
    for (kind, id, text) in rows {
        let kind = EntityType::parse(&kind)
            .ok_or_else(|| decode_error(format!("unknown entity type {kind:?} in titles")))?;
        titles.insert((kind, id), Title { text, scope: None });
    }
    Ok(titles)
}

/// A title set since it was loaded or last saved, as its row is written.
struct TitleRow {
    key: TitleKey,
    text: String,
    scope: Scope,
}

/// The titles set since they were loaded or last saved, as rows to write; they are then
/// known as saved.
fn titles_to_save(titles: &mut Titles) -> Vec<TitleRow> {
    titles
        .iter_mut()
        .filter_map(|(key, title)| {
            let scope = title.scope.take()?;
            Some(TitleRow {
                key: *key,
                text: title.text.clone(),
                scope,
            })
        })
        .collect()
}

/// Creates or renames the titles of `rows` (an existing row keeps its scope).
async fn save_titles(
    tx: &mut PgConnection,
    schema: &str,
    rows: &[TitleRow],
) -> Result<(), sqlx::Error> {
    for chunk in rows.chunks(FOLD_WRITE_CHUNK) {
        let (mut kinds, mut ids, mut organizations, mut projects, mut texts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for TitleRow { key, text, scope } in chunk {
            let ((kind, id), (organization, project)) = (key, scope);
            kinds.push(kind.as_str());
            ids.push(*id);
            organizations.push(*organization);
            projects.push(*project);
            texts.push(text.as_str());
        }
        sqlx::query(&format!(
            "insert into {schema}.titles (entity_type, entity_id, organization_id, project_id, title)
             select * from unnest($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[])
             on conflict (entity_type, entity_id) do update set title = excluded.title"
        ))
        .bind(kinds)
        .bind(ids)
        .bind(organizations)
        .bind(projects)
        .bind(texts)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The entries of a batch, column by column, as `unnest` takes them.
#[derive(Default)]
struct EntryColumns {
    transaction_id: Vec<i64>,
    global_position: Vec<i64>,
    organization_id: Vec<Uuid>,
    project_id: Vec<Option<Uuid>>,
    entity_type: Vec<&'static str>,
    entity_id: Vec<Uuid>,
    event_type: Vec<String>,
    actor: Vec<Option<String>>,
    summary: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
}

impl EntryColumns {
    fn push(&mut self, d: &Decoded<'_>, summary: String) {
        self.transaction_id.push(d.event.transaction_id);
        self.global_position.push(d.event.global_position);
        self.organization_id.push(d.meta.organization_id);
        self.project_id.push(d.meta.project_id);
        self.entity_type.push(d.kind.as_str());
        self.entity_id.push(d.id);
        self.event_type.push(d.event.event_type.clone());
        self.actor.push(d.meta.actor.clone());
        self.summary.push(summary);
        self.occurred_at.push(d.meta.occurred_at);
    }
}

async fn insert_entries(
    tx: &mut PgConnection,
    schema: &str,
    entries: EntryColumns,
) -> Result<(), sqlx::Error> {
    // Applying an event twice is harmless where the entries' key exists (a live build):
    // a stale leader's batch at a handover falls through to its claim, which fails.
    sqlx::query(&format!(
        "insert into {schema}.entries ({ENTRY_COLUMNS})
         select * from unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::uuid[], $7::text[], $8::text[], $9::text[],
                              $10::timestamptz[])
         on conflict do nothing"
    ))
    .bind(entries.transaction_id)
    .bind(entries.global_position)
    .bind(entries.organization_id)
    .bind(entries.project_id)
    .bind(entries.entity_type)
    .bind(entries.entity_id)
    .bind(entries.event_type)
    .bind(entries.actor)
    .bind(entries.summary)
    .bind(entries.occurred_at)
    .execute(tx)
    .await?;
    Ok(())
}
