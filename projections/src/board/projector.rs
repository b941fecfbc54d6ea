//! The SQL side of the board: its tables (schema `rm_board_<build>`), their rows, and the
//! set-based `apply` that loads the rows a batch touches, runs the pure transitions of
//! [`BoardModel`] and writes each changed row once.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use omoi_domain::task::TaskEvent;
use omoi_store::StoredEvent;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::model::{BlockedOverlay, BoardModel, Card, TaskCard, TaskProgress};
use crate::codec::{count_of, decode_error, encode_error, from_text, to_text, WorkEvent};
use crate::copy::CopyRows;
use crate::{Columns, Fold, ProjectionError, Projector};

// ---------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------

pub(super) const CARD_COLUMNS: &str =
    "ticket_id, organization_id, project_id, title, priority, phase, \
     status, blocked_reason, blocked_note, blocked_at, regressions, tasks, last_position";

const TASK_COLUMNS: &str = "task_id, ticket_id, organization_id, project_id, status, last_position";

pub(super) fn card_from_row(row: &PgRow) -> Result<Card, ProjectionError> {
    let blocked = match row.try_get::<Option<String>, _>("blocked_reason")? {
        Some(reason) => Some(BlockedOverlay {
            reason: from_text(reason)?,
            note: row.try_get("blocked_note")?,
            blocked_at: row
                .try_get::<Option<DateTime<Utc>>, _>("blocked_at")?
                .ok_or_else(|| decode_error("a blocked card without blocked_at"))?,
        }),
        None => None,
    };
    Ok(Card {
        ticket_id: row.try_get("ticket_id")?,
        organization_id: row.try_get("organization_id")?,
        project_id: row.try_get("project_id")?,
        title: row.try_get("title")?,
        priority: from_text(row.try_get("priority")?)?,
        phase: from_text(row.try_get("phase")?)?,
        status: from_text(row.try_get("status")?)?,
        blocked,
        regressions: count_of(row, "regressions")?,
        tasks: row.try_get::<Json<TaskProgress>, _>("tasks")?.0,
        last_position: row.try_get("last_position")?,
    })
}

fn task_from_row(row: &PgRow) -> Result<TaskCard, ProjectionError> {
    Ok(TaskCard {
        task_id: row.try_get("task_id")?,
        ticket_id: row.try_get("ticket_id")?,
        organization_id: row.try_get("organization_id")?,
        project_id: row.try_get("project_id")?,
        status: from_text(row.try_get("status")?)?,
        last_position: row.try_get("last_position")?,
    })
}

// ---------------------------------------------------------------------------------------
// The projector
// ---------------------------------------------------------------------------------------

/// Keeps `cards` and `task_cards` up to date.
pub struct BoardProjector;

impl Projector for BoardProjector {
    fn name(&self) -> &'static str {
        "board"
    }

    fn version(&self) -> i32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &["cards", "task_cards"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![
            format!(
                "create table {schema}.cards (
                    ticket_id       uuid not null,
                    organization_id uuid not null,
                    project_id      uuid not null,
                    title           text not null,
                    priority        text not null,
                    phase           text not null,
                    status          text not null,
                    blocked_reason  text,
                    blocked_note    text,
                    blocked_at      timestamptz,
                    regressions     bigint not null,
                    tasks           jsonb not null,
                    last_position   bigint not null
                )"
            ),
            format!(
                "create table {schema}.task_cards (
                    task_id         uuid not null,
                    ticket_id       uuid not null,
                    organization_id uuid not null,
                    project_id      uuid not null,
                    status          text not null,
                    last_position   bigint not null
                )"
            ),
        ]
    }

    fn create_write_indexes(&self, schema: &str) -> Vec<String> {
        // Named as the primary keys they were before they became indexes of their own:
        // a build made before, which has those keys, neither builds nor drops them.
        vec![
            format!("create unique index if not exists cards_pkey on {schema}.cards (ticket_id)"),
            format!(
                "create unique index if not exists task_cards_pkey on {schema}.task_cards (task_id)"
            ),
        ]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        vec![
            format!("create index if not exists cards_by_project on {schema}.cards (project_id, status)"),
            format!("create index if not exists task_cards_by_ticket on {schema}.task_cards (ticket_id)"),
        ]
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(apply_to_tables(tx, schema, events))
    }

    /// Work events carry what the board needs in their payloads.
    fn columns(&self) -> Columns {
        Columns::WITHOUT_METADATA
    }

    fn fold_from_start(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(BoardFold::default()))
    }
}

/// The whole board folded in memory from position zero, written once.
#[derive(Default)]
struct BoardFold(BoardModel);

impl Fold for BoardFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for (work, position) in WorkEvent::decode_batch(events, BoardModel::is_relevant)? {
            self.0.apply_work(work, position);
        }
        Ok(())
    }

    fn rows(&self) -> usize {
        self.0.size()
    }

    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        // The build's tables are empty: every row is copied in, none upserted.
        Box::pin(async move {
            let (cards_table, tasks_table) =
                (format!("{schema}.cards"), format!("{schema}.task_cards"));
            let mut cards = CopyRows::default();
            for card in self.0.cards.values() {
                CardRow::of(card)?.copy_into(&mut cards);
                cards.copy_when_full(tx, &cards_table, CARD_COLUMNS).await?;
            }
            cards.copy(tx, &cards_table, CARD_COLUMNS).await?;
            let mut tasks = CopyRows::default();
            for task in self.0.tasks.values() {
                tasks
                    .row(6)
                    .uuid(task.task_id)
                    .uuid(task.ticket_id)
                    .uuid(task.organization_id)
                    .uuid(task.project_id)
                    .text(task.status.as_str())
                    .bigint(task.last_position);
                tasks.copy_when_full(tx, &tasks_table, TASK_COLUMNS).await?;
            }
            tasks.copy(tx, &tasks_table, TASK_COLUMNS).await?;
            Ok(())
        })
    }
}

/// Loads every row the batch can touch (two queries), applies the pure transitions in
/// order, and writes each changed row once (two statements): the cost of a batch does not
/// grow with round trips per event.
async fn apply_to_tables(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let work = WorkEvent::decode_batch(events, BoardModel::is_relevant)?;
    if work.is_empty() {
        return Ok(());
    }
    let mut model = BoardModel::default();
    load_rows(tx, schema, &work, &mut model).await?;
    let mut cards = BTreeSet::new();
    let mut tasks = BTreeSet::new();
    for (decoded, position) in work {
        let touched = model.apply_work(decoded, position);
        cards.extend(touched.card);
        tasks.extend(touched.task);
    }
    let cards: Vec<&Card> = cards.iter().filter_map(|id| model.cards.get(id)).collect();
    let tasks: Vec<&TaskCard> = tasks.iter().filter_map(|id| model.tasks.get(id)).collect();
    upsert_cards(tx, schema, &cards).await?;
    upsert_tasks(tx, schema, &tasks).await
}

/// The task rows of the batch's task events, then the cards of their tickets and of the
/// batch's ticket events.
async fn load_rows(
    tx: &mut PgConnection,
    schema: &str,
    work: &[(WorkEvent, i64)],
    model: &mut BoardModel,
) -> Result<(), ProjectionError> {
    let task_ids: BTreeSet<Uuid> = work
        .iter()
        .filter_map(|(w, _)| match w {
            WorkEvent::Task { id, .. } => Some(*id),
            WorkEvent::Ticket { .. } => None,
        })
        .collect();
    if !task_ids.is_empty() {
        let sql = format!("select {TASK_COLUMNS} from {schema}.task_cards where task_id = any($1)");
        let ids: Vec<Uuid> = task_ids.into_iter().collect();
        for row in sqlx::query(&sql).bind(ids).fetch_all(&mut *tx).await? {
            let task = task_from_row(&row)?;
            model.tasks.insert(task.task_id, task);
        }
    }
    let mut ticket_ids: BTreeSet<Uuid> = model.tasks.values().map(|t| t.ticket_id).collect();
    for (decoded, _) in work {
        match decoded {
            WorkEvent::Ticket { id, .. } => {
                ticket_ids.insert(*id);
            }
            WorkEvent::Task {
                event: TaskEvent::TaskCreated { ticket_id, .. },
                ..
            } => {
                ticket_ids.insert(*ticket_id);
            }
            WorkEvent::Task { .. } => {}
        }
    }
    let sql = format!("select {CARD_COLUMNS} from {schema}.cards where ticket_id = any($1)");
    let ids: Vec<Uuid> = ticket_ids.into_iter().collect();
    for row in sqlx::query(&sql).bind(ids).fetch_all(&mut *tx).await? {
        let card = card_from_row(&row)?;
        model.cards.insert(card.ticket_id, card);
    }
    Ok(())
}

/// Writes `cards` in one statement (one array per column).
async fn upsert_cards(
    tx: &mut PgConnection,
    schema: &str,
    cards: &[&Card],
) -> Result<(), ProjectionError> {
    if cards.is_empty() {
        return Ok(());
    }
    let mut columns = CardColumns::default();
    for card in cards {
        columns.push(CardRow::of(card)?);
    }
    let sql = format!(
        "insert into {schema}.cards ({CARD_COLUMNS})
         select ticket_id, organization_id, project_id, title, priority, phase, status,
                blocked_reason, blocked_note, blocked_at, regressions, tasks::jsonb,
                last_position
           from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::bigint[],
                       $12::text[], $13::bigint[])
                as rows(ticket_id, organization_id, project_id, title, priority, phase, status,
                        blocked_reason, blocked_note, blocked_at, regressions, tasks,
                        last_position)
         on conflict (ticket_id) do update set
                organization_id = excluded.organization_id, project_id = excluded.project_id,
                title = excluded.title, priority = excluded.priority, phase = excluded.phase,
                status = excluded.status, blocked_reason = excluded.blocked_reason,
                blocked_note = excluded.blocked_note, blocked_at = excluded.blocked_at,
                regressions = excluded.regressions, tasks = excluded.tasks,
                last_position = excluded.last_position"
    );
    sqlx::query(&sql)
        .bind(columns.ticket_id)
        .bind(columns.organization_id)
        .bind(columns.project_id)
        .bind(columns.title)
        .bind(columns.priority)
        .bind(columns.phase)
        .bind(columns.status)
        .bind(columns.blocked_reason)
        .bind(columns.blocked_note)
        .bind(columns.blocked_at)
        .bind(columns.regressions)
        .bind(columns.tasks)
        .bind(columns.last_position)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A card's columns as they are written, in [`CARD_COLUMNS`]' order.
struct CardRow<'a> {
    card: &'a Card,
    priority: String,
    phase: String,
    blocked_reason: Option<String>,
    tasks: String,
}

impl<'a> CardRow<'a> {
    fn of(card: &'a Card) -> Result<Self, ProjectionError> {
        Ok(Self {
            card,
            priority: to_text(&card.priority)?,
            phase: to_text(&card.phase)?,
            blocked_reason: card
                .blocked
                .as_ref()
                .map(|b| to_text(&b.reason))
                .transpose()?,
            tasks: serde_json::to_string(&card.tasks).map_err(encode_error)?,
        })
    }

    fn copy_into(&self, rows: &mut CopyRows) {
        let (card, blocked) = (self.card, self.card.blocked.as_ref());
        rows.row(13)
            .uuid(card.ticket_id)
            .uuid(card.organization_id)
            .uuid(card.project_id)
            .text(&card.title)
            .text(&self.priority)
            .text(&self.phase)
            .text(card.status.as_str())
            .optional_text(self.blocked_reason.as_deref())
            .optional_text(blocked.and_then(|b| b.note.as_deref()))
            .optional_timestamptz(blocked.map(|b| b.blocked_at))
            .bigint(i64::from(card.regressions))
            .jsonb(&self.tasks)
            .bigint(card.last_position);
    }
}

/// The `cards` rows of a batch, column by column, as `unnest` takes them.
#[derive(Default)]
struct CardColumns {
    ticket_id: Vec<Uuid>,
    organization_id: Vec<Uuid>,
    project_id: Vec<Uuid>,
    title: Vec<String>,
    priority: Vec<String>,
    phase: Vec<String>,
    status: Vec<&'static str>,
    blocked_reason: Vec<Option<String>>,
    blocked_note: Vec<Option<String>>,
    blocked_at: Vec<Option<DateTime<Utc>>>,
    regressions: Vec<i64>,
    tasks: Vec<String>,
    last_position: Vec<i64>,
}

impl CardColumns {
    fn push(&mut self, row: CardRow<'_>) {
        let (card, blocked) = (row.card, row.card.blocked.as_ref());
        self.ticket_id.push(card.ticket_id);
        self.organization_id.push(card.organization_id);
        self.project_id.push(card.project_id);
        self.title.push(card.title.clone());
        self.priority.push(row.priority);
        self.phase.push(row.phase);
        self.status.push(card.status.as_str());
        self.blocked_reason.push(row.blocked_reason);
        self.blocked_note.push(blocked.and_then(|b| b.note.clone()));
        self.blocked_at.push(blocked.map(|b| b.blocked_at));
        self.regressions.push(i64::from(card.regressions));
        self.tasks.push(row.tasks);
        self.last_position.push(card.last_position);
    }
}

/// Writes `tasks` in one statement.
async fn upsert_tasks(
    tx: &mut PgConnection,
    schema: &str,
    tasks: &[&TaskCard],
) -> Result<(), ProjectionError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "insert into {schema}.task_cards ({TASK_COLUMNS})
         select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::bigint[])
         on conflict (task_id) do update set
                ticket_id = excluded.ticket_id, organization_id = excluded.organization_id,
                project_id = excluded.project_id, status = excluded.status,
                last_position = excluded.last_position"
    );
    sqlx::query(&sql)
        .bind(tasks.iter().map(|t| t.task_id).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.ticket_id).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.organization_id).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.project_id).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
        .bind(tasks.iter().map(|t| t.last_position).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    Ok(())
}
