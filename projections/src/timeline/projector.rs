//! The SQL side of the timeline: its tables (schema `rm_timeline_<build>`) and the
//! set-based `apply` that looks up the titles a batch names, writes its entries and then
//! the titles it set.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use omoi_store::StoredEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::{Change, EntityType, TitleKey};
use super::summary::{summary, Names};
use crate::codec::{decode_error, entity_id, EventMeta};
use crate::{ProjectionError, Projector};

/// Builds the `timeline` read model.
pub struct TimelineProjector;

impl Projector for TimelineProjector {
    fn name(&self) -> &'static str {
        "timeline"
    }

    fn version(&self) -> i32 {
        1
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
                    occurred_at timestamptz not null,
                    primary key (transaction_id, global_position)
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
        // Newest-first pages walk these backwards, one per way of scoping a page.
        vec![
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

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(apply_events(tx, schema, events))
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
    /// Set for a title this batch writes: the scope of the row, from the event that first
    /// named the entity (a row keeps the scope it was created with).
    scope: Option<(Uuid, Option<Uuid>)>,
}

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
        let Some(kind) = EntityType::of_aggregate(&event.aggregate_type) else {
            continue;
        };
        let change =
            Change::parse(kind, &event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        if !change.is_entry() {
            continue;
        }
        decoded.push(Decoded {
            event,
            kind,
            id: entity_id(event)?,
            change,
            meta: EventMeta::of(event)?,
        });
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
        let title_of = |key: TitleKey| titles.get(&key).map(|t| t.text.as_str());
        let names = Names {
            id: d.id,
            title: title_of((d.kind, d.id)),
            other: d.change.reference().and_then(title_of),
        };
        let summary = summary(&d.change, &names);
        entries.push(d, summary);
        if let Some(text) = d.change.new_title() {
            let scope = (d.meta.organization_id, d.meta.project_id);
            titles
                .entry((d.kind, d.id))
                .and_modify(|t| {
                    t.text = text.to_string();
                    t.scope.get_or_insert(scope);
                })
                .or_insert_with(|| Title {
                    text: text.to_string(),
                    scope: Some(scope),
                });
        }
    }
    insert_entries(tx, schema, entries).await?;
    save_titles(tx, schema, &titles).await?;
    Ok(())
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

/// Creates or renames the titles this batch set; an existing row keeps its scope.
async fn save_titles(
    tx: &mut PgConnection,
    schema: &str,
    titles: &HashMap<TitleKey, Title>,
) -> Result<(), sqlx::Error> {
    let (mut kinds, mut ids, mut organizations, mut projects, mut texts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((kind, id), title) in titles {
        let Some((organization, project)) = title.scope else {
            continue;
        };
        kinds.push(kind.as_str());
        ids.push(*id);
        organizations.push(organization);
        projects.push(project);
        texts.push(title.text.as_str());
    }
    if kinds.is_empty() {
        return Ok(());
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
    .execute(tx)
    .await?;
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
    // The key is the event's place in the stream, so applying an event twice is harmless.
    sqlx::query(&format!(
        "insert into {schema}.entries (transaction_id, global_position, organization_id,
             project_id, entity_type, entity_id, event_type, actor, summary, occurred_at)
         select * from unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::uuid[], $7::text[], $8::text[], $9::text[],
                              $10::timestamptz[])
         on conflict (transaction_id, global_position) do nothing"
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
