//! The SQL side of the timeline: its one table (schema `rm_timeline_<build>`), the history
//! of every entity's title, written by a set-based `apply` and by the fold of a rebuild,
//! which copies it in.
//!
//! The entries themselves are not copied out of the log: they are its events (all of an
//! entity's but progress reports), which the log already keeps in order and indexed by
//! organization, project and aggregate. What an entry adds to its event is a summary
//! naming entities by their titles *as the event saw them*; the history keeps those, and a
//! read ([`super::read`]) summarizes the events of its page with them.

use futures_util::future::BoxFuture;
use omoi_store::StoredEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::{Decoded, EntityType};
use crate::codec::EventMeta;
use crate::copy::CopyRows;
use crate::{Columns, Fold, FoldWrite, ProjectionError, Projector, FOLD_ON_ROWS};

/// The history's columns, in the order a batch's arrays and the fold's rows hold them.
const TITLE_COLUMNS: &str = "entity_type, entity_id, transaction_id, global_position, title";

/// The first version whose titles are a history; a build of one before it keeps each
/// entity's current title (`entity_type, entity_id, organization_id, project_id,
/// title`), and a read of its entries summarizes them with those.
pub(super) const FIRST_VERSION_WITH_HISTORY: i32 = 3;

/// Builds the `timeline` read model.
pub struct TimelineProjector;

impl Projector for TimelineProjector {
    fn name(&self) -> &'static str {
        "timeline"
    }

    fn version(&self) -> i32 {
        // 3: the history of titles alone, the entries read from the log (2: a copy of
        // every entry, its key built when a rebuilt build goes live).
        FIRST_VERSION_WITH_HISTORY
    }

    fn tables(&self) -> &'static [&'static str] {
        &["titles"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![format!(
            "create table if not exists {schema}.titles (
                entity_type text not null,
                entity_id uuid not null,
                -- the event that set it: the title holds from there until the next
                transaction_id bigint not null,
                global_position bigint not null,
                title text not null
            )"
        )]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        // The title an event saw is its entity's newest row before it: a walk backwards
        // from the event's place. Also the history's key (an event sets one title).
        vec![format!(
            "create unique index if not exists titles_by_entity
                on {schema}.titles (entity_type, entity_id, transaction_id, global_position)"
        )]
    }

    /// Entries take their scope, actor and time from the metadata: a build checks them
    /// as it passes each entry, so that a read never meets one it cannot serve.
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
        Some(Box::new(TitlesFold::default()))
    }
}

/// A title an event set, as its row is written.
struct TitleRow<'a> {
    kind: EntityType,
    id: Uuid,
    event: &'a StoredEvent,
    title: &'a str,
}

/// Checks each event as an entry would be read (a poison event stops the build at it,
/// where a read would fail) and hands the title it sets, if any, to `row`.
fn titles_set(
    events: &[StoredEvent],
    mut row: impl FnMut(TitleRow<'_>),
) -> Result<(), ProjectionError> {
    for event in events {
        let Some(decoded) = Decoded::of(event)? else {
            continue;
        };
        if decoded.change.is_entry() {
            EventMeta::of(event)?;
        }
        if let Some(title) = decoded.change.new_title() {
            row(TitleRow {
                kind: decoded.kind,
                id: decoded.id,
                event,
                title,
            });
        }
    }
    Ok(())
}

/// Writes the titles the batch set (one insert).
async fn apply_events(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let (mut kinds, mut ids, mut transactions, mut positions, mut titles) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    titles_set(events, |row| {
        kinds.push(row.kind.as_str());
        ids.push(row.id);
        transactions.push(row.event.transaction_id);
        positions.push(row.event.global_position);
        titles.push(row.title.to_string());
    })?;
    if kinds.is_empty() {
        return Ok(());
    }
    // Applying an event twice is harmless where the history's key exists (a live build):
    // a stale leader's batch at a handover falls through to its claim, which fails.
    sqlx::query(&format!(
        "insert into {schema}.titles ({TITLE_COLUMNS})
         select * from unnest($1::text[], $2::uuid[], $3::bigint[], $4::bigint[], $5::text[])
         on conflict do nothing"
    ))
    .bind(kinds)
    .bind(ids)
    .bind(transactions)
    .bind(positions)
    .bind(titles)
    .execute(tx)
    .await?;
    Ok(())
}

/// The history of a rebuild, folded from position zero: the titles set, encoded for
/// `COPY` as they are folded, written every [`FOLD_ON_ROWS`] beside the fold.
#[derive(Default)]
struct TitlesFold {
    rows: CopyRows,
}

impl Fold for TitlesFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        titles_set(events, |row| {
            self.rows
                .row(5)
                .text(row.kind.as_str())
                .uuid(row.id)
                .bigint(row.event.transaction_id)
                .bigint(row.event.global_position)
                .text(row.title);
        })
    }

    fn rows(&self) -> usize {
        self.rows.len()
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

    /// Nothing it folded is needed again: every row it wrote stands as written.
    fn goes_on(&self) -> bool {
        true
    }

    fn take_write(&mut self) -> Option<Box<dyn FoldWrite>> {
        Some(Box::new(self.taken()))
    }
}

impl TitlesFold {
    /// The rows folded since the last write, taken out.
    fn taken(&mut self) -> TitlesWrite {
        TitlesWrite(std::mem::take(&mut self.rows))
    }
}

/// Rows of a [`TitlesFold`], to write.
struct TitlesWrite(CopyRows);

impl FoldWrite for TitlesWrite {
    fn write<'a>(
        self: Box<Self>,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        let TitlesWrite(mut rows) = *self;
        Box::pin(async move {
            let table = format!("{schema}.titles");
            rows.copy(tx, &table, TITLE_COLUMNS).await?;
            Ok(())
        })
    }
}
