//! The Kanban board: one card per ticket, in the column of its status, with its blocked
//! overlay, its regressions and how many of its tasks stand in each task status.
//!
//! The update rule is pure ([`BoardModel::apply`]): the SQL projector loads the rows an
//! event touches into a small model, applies the same transition and writes the rows
//! back, and time travel (`as_of`) folds the project's log into a whole model in memory.
//! Both render through [`render_board`], so a past board and the live one cannot differ in
//! shape or order.
//!
//! Tables (schema `rm_board_v1`, views `board_cards` and `board_task_cards`):
//! * `cards` — one row per ticket;
//! * `task_cards` — task → ticket and status: later task events carry only the task id, and
//!   the card's counts need the status the task leaves.
//!
//! The helpers shared with the other read models of work ([`WorkEvent`], [`replay_project`])
//! live here too.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, SubsecRound, Utc};
use cqrs_es::Aggregate;
use futures_util::future::BoxFuture;
use omoi_domain::common::{Phase, Priority};
use omoi_domain::task::{Task, TaskEvent, TaskStatus};
use omoi_domain::ticket::{BlockReason, Ticket, TicketEvent, TicketStatus};
use omoi_store::log::{read_global, Visibility};
use omoi_store::{Cursor, StoredEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{ProjectionError, Projector};

// ---------------------------------------------------------------------------------------
// Decoding the log (shared with the graph)
// ---------------------------------------------------------------------------------------

/// A ticket or task event, decoded from the log. Other aggregates do not shape work
/// read models.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkEvent {
    Ticket { id: Uuid, event: TicketEvent },
    Task { id: Uuid, event: TaskEvent },
}

impl WorkEvent {
    /// `None` for events of other aggregates; an error for a ticket or task event whose
    /// payload does not match its type (a poison event: the projector must stop there).
    pub fn decode(stored: &StoredEvent) -> Result<Option<Self>, ProjectionError> {
        let id = || {
            stored
                .aggregate_id
                .parse::<Uuid>()
                .map_err(|e| ProjectionError::payload(stored, e))
        };
        if stored.aggregate_type == Ticket::TYPE {
            let event = payload(stored)?;
            return Ok(Some(Self::Ticket { id: id()?, event }));
        }
        if stored.aggregate_type == Task::TYPE {
            let event = payload(stored)?;
            return Ok(Some(Self::Task { id: id()?, event }));
        }
        Ok(None)
    }

    /// The events of a batch `keep` wants, decoded, with their global positions.
    pub fn decode_batch(
        events: &[StoredEvent],
        keep: fn(&WorkEvent) -> bool,
    ) -> Result<Vec<(Self, i64)>, ProjectionError> {
        let mut work = Vec::with_capacity(events.len());
        for event in events {
            if let Some(decoded) = Self::decode(event)?.filter(keep) {
                work.push((decoded, event.global_position));
            }
        }
        Ok(work)
    }

    /// The aggregate the event belongs to.
    pub fn id(&self) -> Uuid {
        match self {
            Self::Ticket { id, .. } | Self::Task { id, .. } => *id,
        }
    }
}

fn payload<E: DeserializeOwned>(stored: &StoredEvent) -> Result<E, ProjectionError> {
    E::deserialize(&stored.payload).map_err(|e| ProjectionError::payload(stored, e))
}

/// Events of a project are read in pages of this size when a past state is rebuilt.
const REPLAY_PAGE: i64 = 1000;

/// Most events one view `as_of` a past position replays by default: it bounds the time
/// and memory a single request may take (a project's whole history, in the worst case).
pub const MAX_REPLAY_EVENTS: usize = 100_000;

/// Feeds `apply` the events of one project in the log's gapless order, up to `as_of`.
///
/// It stops at the first event whose global position is above `as_of`, so what `apply`
/// sees is always a prefix of the log — a state a projector really had. (Positions are
/// taken at insert and may commit out of order: an event numbered below `as_of` whose
/// transaction committed after one numbered above it is not part of that prefix.)
pub async fn replay_project(
    pool: &PgPool,
    organization_id: Uuid,
    project_id: Uuid,
    as_of: i64,
    max_events: usize,
    mut apply: impl FnMut(&StoredEvent) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    let visibility = Visibility::Organizations {
        organizations: vec![organization_id],
        project: Some(project_id),
    };
    let mut cursor = Cursor::default();
    let mut replayed = 0;
    loop {
        let page = read_global(pool, cursor, REPLAY_PAGE, &visibility).await?;
        for event in &page.events {
            if event.global_position > as_of {
                return Ok(());
            }
            replayed += 1;
            if replayed > max_events {
                return Err(ProjectionError::ReplayTooLong { max: max_events });
            }
            apply(event)?;
        }
        if (page.events.len() as i64) < REPLAY_PAGE {
            return Ok(());
        }
        cursor = page.next;
    }
}

// ---------------------------------------------------------------------------------------
// Storing enums as text (shared with the graph)
// ---------------------------------------------------------------------------------------

/// The wire name of a unit enum (`"HIGH"`, `"PHASE_DESIGN"`, `"dependency"`), so rows hold
/// the same spelling as the API and can be filtered and grouped in SQL.
pub(crate) fn to_text<T: Serialize>(value: &T) -> Result<String, ProjectionError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => Ok(text),
        Ok(other) => Err(encode_error(format!("{other} is not a unit enum"))),
        Err(e) => Err(encode_error(e)),
    }
}

/// The enum whose wire name is `text`.
pub(crate) fn from_text<T: DeserializeOwned>(text: String) -> Result<T, ProjectionError> {
    serde_json::from_value(serde_json::Value::String(text)).map_err(decode_error)
}

fn encode_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ProjectionError {
    ProjectionError::Database(sqlx::Error::Encode(e.into()))
}

/// A row value that does not fit its type: the table was written by another version.
pub(crate) fn decode_error(
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ProjectionError {
    ProjectionError::Database(sqlx::Error::Decode(e.into()))
}

/// A count stored as `bigint` back as `u32`.
pub(crate) fn count_of(row: &PgRow, column: &str) -> Result<u32, ProjectionError> {
    let value: i64 = row.try_get::<i64, _>(column)?;
    u32::try_from(value).map_err(decode_error)
}

// ---------------------------------------------------------------------------------------
// Columns
// ---------------------------------------------------------------------------------------

/// One column of the board. Its name is the wire name of the ticket status it shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ColumnConfig {
    pub name: String,
    /// Most cards the column should hold; `None` for no limit.
    pub wip_limit: Option<u32>,
}

/// The original's board: WIP limits on the columns where work is in progress.
const DEFAULT_COLUMNS: [(TicketStatus, Option<u32>); 6] = [
    (TicketStatus::Backlog, None),
    (TicketStatus::Analyzing, Some(5)),
    (TicketStatus::Building, Some(10)),
    (TicketStatus::BuildingDone, None),
    (TicketStatus::Testing, Some(8)),
    (TicketStatus::Done, None),
];

/// The columns in board order, until they can be configured.
pub fn default_columns() -> Vec<ColumnConfig> {
    DEFAULT_COLUMNS
        .iter()
        .map(|(status, wip_limit)| ColumnConfig {
            name: status.as_str().to_string(),
            wip_limit: *wip_limit,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The pure model
// ---------------------------------------------------------------------------------------

/// The blocked overlay of a card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlockedOverlay {
    pub reason: BlockReason,
    pub note: Option<String>,
    pub blocked_at: DateTime<Utc>,
}

/// How many of a ticket's tasks stand in each task status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskProgress {
    pub total: u32,
    pub completed: u32,
    /// Task status (`pending`, `running`, …) → number of tasks; statuses with none are left
    /// out.
    pub by_status: BTreeMap<String, u32>,
}

impl TaskProgress {
    fn add(&mut self, status: TaskStatus) {
        self.total += 1;
        if status == TaskStatus::Completed {
            self.completed += 1;
        }
        *self
            .by_status
            .entry(status.as_str().to_string())
            .or_default() += 1;
    }

    fn remove(&mut self, status: TaskStatus) {
        self.total = self.total.saturating_sub(1);
        if status == TaskStatus::Completed {
            self.completed = self.completed.saturating_sub(1);
        }
        let key = status.as_str();
        if let Some(count) = self.by_status.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_status.remove(key);
            }
        }
    }
}

/// One ticket on the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Card {
    pub ticket_id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub title: String,
    pub priority: Priority,
    pub phase: Phase,
    /// The ticket's status, which is the column the card stands in.
    pub status: TicketStatus,
    /// Set while the ticket is blocked.
    pub blocked: Option<BlockedOverlay>,
    /// Trips from testing back to building.
    pub regressions: u32,
    pub tasks: TaskProgress,
    /// Global position of the last event that changed the card.
    pub last_position: i64,
}

/// What the board remembers of a task: whose card it counts on, and as what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCard {
    pub task_id: Uuid,
    pub ticket_id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub status: TaskStatus,
    pub last_position: i64,
}

/// The rows one event changed, to be written back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touched {
    pub card: Option<Uuid>,
    pub task: Option<Uuid>,
}

/// The board of any set of tickets: the whole project (time travel) or only the rows one
/// event touches (the SQL projector).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoardModel {
    cards: BTreeMap<Uuid, Card>,
    tasks: BTreeMap<Uuid, TaskCard>,
}

impl BoardModel {
    /// Applies one event of the log; returns the rows it changed.
    pub fn apply(&mut self, stored: &StoredEvent) -> Result<Touched, ProjectionError> {
        Ok(match WorkEvent::decode(stored)? {
            Some(work) => self.apply_work(work, stored.global_position),
            None => Touched::default(),
        })
    }

    /// Whether `work` can change the board at all (progress reports, failed attempts and
    /// dependency edits cannot), so the projector skips loading rows for the others.
    pub fn is_relevant(work: &WorkEvent) -> bool {
        match work {
            WorkEvent::Ticket { .. } => true,
            WorkEvent::Task { event, .. } => event.status_after().is_some(),
        }
    }

    /// Applies one decoded event at `position`.
    pub fn apply_work(&mut self, work: WorkEvent, position: i64) -> Touched {
        if !Self::is_relevant(&work) {
            return Touched::default();
        }
        match work {
            WorkEvent::Ticket { id, event } => self.apply_ticket(id, event, position),
            WorkEvent::Task { id, event } => self.apply_task(id, event, position),
        }
    }

    pub fn card(&self, ticket_id: Uuid) -> Option<&Card> {
        self.cards.get(&ticket_id)
    }

    pub fn task(&self, task_id: Uuid) -> Option<&TaskCard> {
        self.tasks.get(&task_id)
    }

    /// Every card, by ticket id.
    pub fn cards(&self) -> impl Iterator<Item = &Card> {
        self.cards.values()
    }

    /// Every card, by ticket id.
    pub fn into_cards(self) -> Vec<Card> {
        self.cards.into_values().collect()
    }

    fn apply_ticket(&mut self, id: Uuid, event: TicketEvent, position: i64) -> Touched {
        if let TicketEvent::TicketCreated {
            organization_id,
            project_id,
            title,
            priority,
            phase,
            ..
        } = event
        {
            let card = Card {
                ticket_id: id,
                organization_id,
                project_id,
                title,
                priority,
                phase,
                status: TicketStatus::Backlog,
                blocked: None,
                regressions: 0,
                tasks: TaskProgress::default(),
                last_position: position,
            };
            self.cards.insert(id, card);
            return Touched {
                card: Some(id),
                task: None,
            };
        }
        // An event of a ticket the board never saw created has no card to change.
        let Some(card) = self.cards.get_mut(&id) else {
            return Touched::default();
        };
        update_card(card, event);
        card.last_position = position;
        Touched {
            card: Some(id),
            task: None,
        }
    }

    fn apply_task(&mut self, id: Uuid, event: TaskEvent, position: i64) -> Touched {
        if let TaskEvent::TaskCreated {
            ticket_id,
            organization_id,
            project_id,
            ..
        } = event
        {
            let task = TaskCard {
                task_id: id,
                ticket_id,
                organization_id,
                project_id,
                status: TaskStatus::Pending,
                last_position: position,
            };
            self.tasks.insert(id, task);
            let card = self.count_on_card(ticket_id, None, TaskStatus::Pending, position);
            return Touched {
                card,
                task: Some(id),
            };
        }
        let (Some(to), Some(task)) = (event.status_after(), self.tasks.get_mut(&id)) else {
            return Touched::default();
        };
        let from = std::mem::replace(&mut task.status, to);
        task.last_position = position;
        let ticket_id = task.ticket_id;
        let card = self.count_on_card(ticket_id, Some(from), to, position);
        Touched {
            card,
            task: Some(id),
        }
    }

    /// Moves one task of `ticket_id`'s card from status `from` (none for a new task) to
    /// `to`; returns the card when there is one.
    fn count_on_card(
        &mut self,
        ticket_id: Uuid,
        from: Option<TaskStatus>,
        to: TaskStatus,
        position: i64,
    ) -> Option<Uuid> {
        let card = self.cards.get_mut(&ticket_id)?;
        if let Some(from) = from {
            card.tasks.remove(from);
        }
        card.tasks.add(to);
        card.last_position = position;
        Some(ticket_id)
    }
}

/// The card after a ticket event other than its creation.
fn update_card(card: &mut Card, event: TicketEvent) {
    match event {
        TicketEvent::TicketUpdated {
            title,
            priority,
            phase,
            ..
        } => {
            if let Some(title) = title {
                card.title = title;
            }
            if let Some(priority) = priority {
                card.priority = priority;
            }
            if let Some(phase) = phase {
                card.phase = phase;
            }
        }
        TicketEvent::TicketStatusChanged { to, .. } => card.status = to,
        TicketEvent::TicketRegressed { .. } => {
            card.status = TicketStatus::Building;
            card.regressions += 1;
        }
        TicketEvent::TicketBlocked {
            reason,
            note,
            blocked_at,
        } => {
            // PostgreSQL keeps microseconds: truncating here makes a board rebuilt in
            // memory identical to the stored one.
            card.blocked = Some(BlockedOverlay {
                reason,
                note,
                blocked_at: blocked_at.trunc_subsecs(6),
            });
        }
        TicketEvent::TicketUnblocked => card.blocked = None,
        // Creation builds the card; it never reaches here.
        TicketEvent::TicketCreated { .. } => {}
    }
}

// ---------------------------------------------------------------------------------------
// Rendering (shared by the live and the past board)
// ---------------------------------------------------------------------------------------

/// One column with its cards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ColumnView {
    pub name: String,
    pub wip_limit: Option<u32>,
    pub count: u32,
    /// More cards than the WIP limit.
    pub over_limit: bool,
    /// By priority (critical first), then title.
    pub cards: Vec<Card>,
}

/// A project's board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BoardView {
    pub project_id: Uuid,
    /// The requested position when this is the board of the past.
    pub as_of: Option<i64>,
    /// Global position of the latest event reflected in the cards (0 for none).
    pub position: i64,
    pub columns: Vec<ColumnView>,
}

/// Lays `cards` out in `columns`. Cards whose status has no column are not shown (a
/// configured board may leave a status out).
pub fn render_board(
    project_id: Uuid,
    columns: &[ColumnConfig],
    cards: Vec<Card>,
    as_of: Option<i64>,
) -> BoardView {
    let position = cards.iter().map(|c| c.last_position).max().unwrap_or(0);
    let mut by_status: HashMap<&'static str, Vec<Card>> = HashMap::new();
    for card in cards {
        by_status
            .entry(card.status.as_str())
            .or_default()
            .push(card);
    }
    let columns = columns
        .iter()
        .map(|column| {
            let mut cards = by_status.remove(column.name.as_str()).unwrap_or_default();
            cards.sort_by(|a, b| card_order(a).cmp(&card_order(b)));
            let count = cards.len() as u32;
            ColumnView {
                name: column.name.clone(),
                wip_limit: column.wip_limit,
                count,
                over_limit: column.wip_limit.is_some_and(|limit| count > limit),
                cards,
            }
        })
        .collect();
    BoardView {
        project_id,
        as_of,
        position,
        columns,
    }
}

/// Critical first, then by title; the id keeps equal titles in a stable order.
fn card_order(card: &Card) -> (usize, &str, Uuid) {
    let rank = Priority::ALL
        .iter()
        .position(|p| *p == card.priority)
        .unwrap_or(Priority::ALL.len());
    (rank, card.title.as_str(), card.ticket_id)
}

/// Cards per status and how many are blocked: what stats and WIP checks need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub per_status: BTreeMap<String, u32>,
    pub blocked: u32,
}

impl Tally {
    pub fn of(cards: &[Card]) -> Self {
        let mut tally = Self::default();
        for card in cards {
            *tally
                .per_status
                .entry(card.status.as_str().to_string())
                .or_default() += 1;
            tally.blocked += u32::from(card.blocked.is_some());
        }
        tally
    }

    fn count(&self, column: &str) -> u32 {
        self.per_status.get(column).copied().unwrap_or(0)
    }
}

/// A column and how many cards it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ColumnCount {
    pub name: String,
    pub wip_limit: Option<u32>,
    pub count: u32,
}

/// Counts of a project's board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BoardStats {
    pub project_id: Uuid,
    pub columns: Vec<ColumnCount>,
    /// Cards with a blocked overlay.
    pub blocked: u32,
    /// Every card of the project.
    pub total: u32,
}

/// Columns holding more cards than their WIP limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WipViolations {
    pub project_id: Uuid,
    pub violations: Vec<ColumnCount>,
}

fn column_counts(columns: &[ColumnConfig], tally: &Tally) -> Vec<ColumnCount> {
    columns
        .iter()
        .map(|column| ColumnCount {
            name: column.name.clone(),
            wip_limit: column.wip_limit,
            count: tally.count(&column.name),
        })
        .collect()
}

pub fn render_stats(project_id: Uuid, columns: &[ColumnConfig], tally: &Tally) -> BoardStats {
    BoardStats {
        project_id,
        columns: column_counts(columns, tally),
        blocked: tally.blocked,
        total: tally.per_status.values().sum(),
    }
}

pub fn render_violations(
    project_id: Uuid,
    columns: &[ColumnConfig],
    tally: &Tally,
) -> WipViolations {
    let violations = column_counts(columns, tally)
        .into_iter()
        .filter(|c| c.wip_limit.is_some_and(|limit| c.count > limit))
        .collect();
    WipViolations {
        project_id,
        violations,
    }
}

/// The column `to` when it is at or over its WIP limit: one more card would exceed it.
pub fn full_column(
    columns: &[ColumnConfig],
    tally: &Tally,
    to: TicketStatus,
) -> Option<ColumnCount> {
    let column = columns.iter().find(|c| c.name == to.as_str())?;
    let limit = column.wip_limit?;
    let count = tally.count(&column.name);
    (count >= limit).then(|| ColumnCount {
        name: column.name.clone(),
        wip_limit: Some(limit),
        count,
    })
}

// ---------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------

const CARD_COLUMNS: &str = "ticket_id, organization_id, project_id, title, priority, phase, \
     status, blocked_reason, blocked_note, blocked_at, regressions, tasks, last_position";

const TASK_COLUMNS: &str = "task_id, ticket_id, organization_id, project_id, status, last_position";

fn card_from_row(row: &PgRow) -> Result<Card, ProjectionError> {
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
                    ticket_id       uuid primary key,
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
                    task_id         uuid primary key,
                    ticket_id       uuid not null,
                    organization_id uuid not null,
                    project_id      uuid not null,
                    status          text not null,
                    last_position   bigint not null
                )"
            ),
        ]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        vec![
            format!("create index cards_by_project on {schema}.cards (project_id, status)"),
            format!("create index task_cards_by_ticket on {schema}.task_cards (ticket_id)"),
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
        columns.push(card)?;
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
    fn push(&mut self, card: &Card) -> Result<(), ProjectionError> {
        let blocked = card.blocked.as_ref();
        self.ticket_id.push(card.ticket_id);
        self.organization_id.push(card.organization_id);
        self.project_id.push(card.project_id);
        self.title.push(card.title.clone());
        self.priority.push(to_text(&card.priority)?);
        self.phase.push(to_text(&card.phase)?);
        self.status.push(card.status.as_str());
        self.blocked_reason
            .push(blocked.map(|b| to_text(&b.reason)).transpose()?);
        self.blocked_note.push(blocked.and_then(|b| b.note.clone()));
        self.blocked_at.push(blocked.map(|b| b.blocked_at));
        self.regressions.push(i64::from(card.regressions));
        self.tasks
            .push(serde_json::to_string(&card.tasks).map_err(encode_error)?);
        self.last_position.push(card.last_position);
        Ok(())
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

// ---------------------------------------------------------------------------------------
// Queries (through the stable views)
// ---------------------------------------------------------------------------------------

/// Every card of a project, as projected so far.
pub async fn project_cards(pool: &PgPool, project_id: Uuid) -> Result<Vec<Card>, ProjectionError> {
    let sql = format!("select {CARD_COLUMNS} from board_cards where project_id = $1");
    let rows = sqlx::query(&sql).bind(project_id).fetch_all(pool).await?;
    rows.iter().map(card_from_row).collect()
}

/// The live board of a project.
pub async fn board_view(
    pool: &PgPool,
    project_id: Uuid,
    columns: &[ColumnConfig],
) -> Result<BoardView, ProjectionError> {
    let cards = project_cards(pool, project_id).await?;
    Ok(render_board(project_id, columns, cards, None))
}

/// The board as it was at global position `as_of`, rebuilt from the log with the
/// projector's own rule.
pub async fn board_view_as_of(
    pool: &PgPool,
    organization_id: Uuid,
    project_id: Uuid,
    as_of: i64,
    max_events: usize,
    columns: &[ColumnConfig],
) -> Result<BoardView, ProjectionError> {
    let mut model = BoardModel::default();
    replay_project(
        pool,
        organization_id,
        project_id,
        as_of,
        max_events,
        |event| model.apply(event).map(|_| ()),
    )
    .await?;
    let cards = model
        .into_cards()
        .into_iter()
        .filter(|card| card.project_id == project_id)
        .collect();
    Ok(render_board(project_id, columns, cards, Some(as_of)))
}

/// Cards per status and blocked cards of a project, counted in SQL.
pub async fn board_tally(pool: &PgPool, project_id: Uuid) -> Result<Tally, ProjectionError> {
    let rows = sqlx::query(
        "select status, count(*) as cards,
                count(*) filter (where blocked_reason is not null) as blocked
           from board_cards
          where project_id = $1
          group by status",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?;
    let mut tally = Tally::default();
    for row in &rows {
        tally
            .per_status
            .insert(row.try_get("status")?, count_of(row, "cards")?);
        tally.blocked += count_of(row, "blocked")?;
    }
    Ok(tally)
}

pub async fn board_stats(
    pool: &PgPool,
    project_id: Uuid,
    columns: &[ColumnConfig],
) -> Result<BoardStats, ProjectionError> {
    let tally = board_tally(pool, project_id).await?;
    Ok(render_stats(project_id, columns, &tally))
}

pub async fn wip_violations(
    pool: &PgPool,
    project_id: Uuid,
    columns: &[ColumnConfig],
) -> Result<WipViolations, ProjectionError> {
    let tally = board_tally(pool, project_id).await?;
    Ok(render_violations(project_id, columns, &tally))
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::TimeZone;
    use omoi_domain::task::FailureReason;
    use serde_json::json;

    use super::*;

    /// A log for the tests: positions count up from 1.
    #[derive(Default)]
    pub(crate) struct Log {
        pub events: Vec<StoredEvent>,
    }

    impl Log {
        pub fn ticket(&mut self, id: Uuid, event: TicketEvent) -> &StoredEvent {
            let payload = serde_json::to_value(&event).expect("a ticket event serializes");
            self.push("Ticket", id, payload)
        }

        pub fn task(&mut self, id: Uuid, event: TaskEvent) -> &StoredEvent {
            let payload = serde_json::to_value(&event).expect("a task event serializes");
            self.push("Task", id, payload)
        }

        pub fn push(
            &mut self,
            aggregate_type: &str,
            id: Uuid,
            payload: serde_json::Value,
        ) -> &StoredEvent {
            let position = self.events.len() as i64 + 1;
            let sequence = self
                .events
                .iter()
                .filter(|e| e.aggregate_id == id.to_string())
                .count() as i64
                + 1;
            self.events.push(StoredEvent {
                aggregate_type: aggregate_type.to_string(),
                aggregate_id: id.to_string(),
                sequence,
                global_position: position,
                transaction_id: position,
                event_type: payload
                    .as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_default(),
                event_version: "1".to_string(),
                payload,
                metadata: json!({}),
            });
            self.events.last().expect("just pushed")
        }
    }

    pub(crate) fn created_ticket(
        org: Uuid,
        project: Uuid,
        id: Uuid,
        title: &str,
        priority: Priority,
    ) -> TicketEvent {
        TicketEvent::TicketCreated {
            ticket_id: id,
            organization_id: org,
            project_id: project,
            spec_id: None,
            title: title.to_string(),
            description: String::new(),
            priority,
            phase: Phase::Backlog,
        }
    }

    pub(crate) fn created_task(
        org: Uuid,
        project: Uuid,
        ticket: Uuid,
        id: Uuid,
        depends_on: Vec<Uuid>,
    ) -> TaskEvent {
        TaskEvent::TaskCreated {
            task_id: id,
            organization_id: org,
            project_id: project,
            ticket_id: ticket,
            title: format!("task {id}"),
            description: String::new(),
            task_type: "implement".to_string(),
            phase: Phase::Implementation,
            priority: Priority::Medium,
            depends_on,
            required_capabilities: vec![],
            max_retries: 3,
            timeout_seconds: None,
            created_at: at(),
        }
    }

    pub(crate) fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5)
            .single()
            .expect("a valid instant")
    }

    fn moved(from: TicketStatus, to: TicketStatus) -> TicketEvent {
        TicketEvent::TicketStatusChanged {
            from,
            to,
            note: None,
        }
    }

    fn fold(log: &Log) -> BoardModel {
        let mut model = BoardModel::default();
        for event in &log.events {
            model.apply(event).expect("a valid event");
        }
        model
    }

    #[test]
    fn a_ticket_is_created_moved_blocked_and_regressed() {
        let (org, project, ticket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.ticket(
            ticket,
            moved(TicketStatus::Backlog, TicketStatus::Analyzing),
        );
        log.ticket(
            ticket,
            TicketEvent::TicketBlocked {
                reason: BlockReason::WaitingOnClarification,
                note: Some("which provider?".into()),
                blocked_at: at(),
            },
        );
        let card = fold(&log).card(ticket).cloned().expect("a card");
        assert_eq!(card.status, TicketStatus::Analyzing);
        assert_eq!(card.organization_id, org);
        let blocked = card.blocked.expect("blocked");
        assert_eq!(blocked.blocked_at, at(), "whole seconds survive truncation");
        assert_eq!(blocked.reason, BlockReason::WaitingOnClarification);
        assert_eq!(blocked.note.as_deref(), Some("which provider?"));
        assert_eq!(card.last_position, 3);

        log.ticket(ticket, TicketEvent::TicketUnblocked);
        for (from, to) in [
            (TicketStatus::Analyzing, TicketStatus::Building),
            (TicketStatus::Building, TicketStatus::BuildingDone),
            (TicketStatus::BuildingDone, TicketStatus::Testing),
        ] {
            log.ticket(ticket, moved(from, to));
        }
        log.ticket(
            ticket,
            TicketEvent::TicketRegressed {
                feedback: "broken".into(),
            },
        );
        log.ticket(
            ticket,
            TicketEvent::TicketUpdated {
                title: Some("Login v2".into()),
                description: None,
                priority: Some(Priority::Critical),
                phase: None,
            },
        );
        let card = fold(&log).card(ticket).cloned().expect("a card");
        assert_eq!(card.status, TicketStatus::Building);
        assert_eq!(card.regressions, 1);
        assert!(card.blocked.is_none());
        assert_eq!(
            (card.title.as_str(), card.priority),
            ("Login v2", Priority::Critical)
        );
    }

    #[test]
    fn task_events_move_the_counts_of_their_tickets_card() {
        let (org, project, ticket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.task(a, created_task(org, project, ticket, a, vec![]));
        log.task(b, created_task(org, project, ticket, b, vec![a]));
        let card = fold(&log).card(ticket).cloned().expect("a card");
        assert_eq!(card.tasks.total, 2);
        assert_eq!(
            card.tasks.by_status,
            BTreeMap::from([("pending".to_string(), 2)])
        );

        let agent = Uuid::now_v7();
        log.task(
            a,
            TaskEvent::TaskAssigned {
                agent_id: agent,
                at: at(),
            },
        );
        log.task(a, TaskEvent::TaskStarted { at: at() });
        log.task(
            a,
            TaskEvent::TaskProgressReported {
                message: "half".into(),
            },
        );
        log.task(
            a,
            TaskEvent::TaskCompleted {
                result: json!({}),
                at: at(),
            },
        );
        log.task(
            b,
            TaskEvent::TaskCancelled {
                reason: None,
                at: at(),
            },
        );
        let model = fold(&log);
        let card = model.card(ticket).expect("a card");
        assert_eq!(card.tasks.total, 2);
        assert_eq!(card.tasks.completed, 1);
        assert_eq!(
            card.tasks.by_status,
            BTreeMap::from([("cancelled".to_string(), 1), ("completed".to_string(), 1)])
        );
        assert_eq!(model.task(a).map(|t| t.status), Some(TaskStatus::Completed));
        assert_eq!(
            card.last_position, 8,
            "the cancellation changed the card last"
        );
    }

    #[test]
    fn failures_count_only_by_their_outcome() {
        let (org, project, ticket, task) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.task(task, created_task(org, project, ticket, task, vec![]));
        log.task(
            task,
            TaskEvent::TaskFailed {
                error: "boom".into(),
                attempt: 1,
                at: at(),
            },
        );
        let touched = {
            let mut model = fold(&log);
            let event = log.task(
                task,
                TaskEvent::TaskPermanentlyFailed {
                    reason: FailureReason::TimedOut,
                },
            );
            model.apply(event).expect("valid")
        };
        assert_eq!(
            touched,
            Touched {
                card: Some(ticket),
                task: Some(task)
            }
        );
        let card = fold(&log).card(ticket).cloned().expect("a card");
        assert_eq!(
            card.tasks.by_status,
            BTreeMap::from([("timed_out".to_string(), 1)])
        );
    }

    #[test]
    fn the_board_lays_cards_out_by_column_priority_and_title_with_wip_checks() {
        let (org, project) = (Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        let mut ids = vec![];
        for (title, priority) in [
            ("b", Priority::Low),
            ("a", Priority::Low),
            ("z", Priority::Critical),
        ] {
            let id = Uuid::now_v7();
            ids.push(id);
            log.ticket(id, created_ticket(org, project, id, title, priority));
            log.ticket(id, moved(TicketStatus::Backlog, TicketStatus::Analyzing));
        }
        log.ticket(
            ids[0],
            TicketEvent::TicketBlocked {
                reason: BlockReason::Environment,
                note: None,
                blocked_at: at(),
            },
        );
        let cards = fold(&log).into_cards();
        let columns = vec![
            ColumnConfig {
                name: "backlog".into(),
                wip_limit: None,
            },
            ColumnConfig {
                name: "analyzing".into(),
                wip_limit: Some(2),
            },
        ];
        let view = render_board(project, &columns, cards.clone(), None);
        assert_eq!(view.position, 7);
        let analyzing = &view.columns[1];
        let titles: Vec<&str> = analyzing.cards.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["z", "a", "b"]);
        assert!(analyzing.over_limit);
        assert!(view.columns[0].cards.is_empty());

        let tally = Tally::of(&cards);
        let stats = render_stats(project, &columns, &tally);
        assert_eq!((stats.total, stats.blocked), (3, 1));
        assert_eq!(stats.columns[1].count, 3);
        let violations = render_violations(project, &columns, &tally);
        assert_eq!(violations.violations.len(), 1);
        assert_eq!(violations.violations[0].name, "analyzing");
        assert!(full_column(&columns, &tally, TicketStatus::Analyzing).is_some());
        assert!(full_column(&columns, &tally, TicketStatus::Backlog).is_none());
    }

    #[test]
    fn a_column_at_its_limit_is_full_and_the_defaults_match_the_original() {
        let columns = default_columns();
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "backlog",
                "analyzing",
                "building",
                "building-done",
                "testing",
                "done"
            ]
        );
        let limits: Vec<Option<u32>> = columns.iter().map(|c| c.wip_limit).collect();
        assert_eq!(limits, [None, Some(5), Some(10), None, Some(8), None]);
        let mut tally = Tally::default();
        tally.per_status.insert("testing".into(), 7);
        assert!(full_column(&columns, &tally, TicketStatus::Testing).is_none());
        tally.per_status.insert("testing".into(), 8);
        let full = full_column(&columns, &tally, TicketStatus::Testing).expect("full");
        assert_eq!((full.count, full.wip_limit), (8, Some(8)));
        assert!(render_violations(Uuid::nil(), &columns, &tally)
            .violations
            .is_empty());
    }

    #[test]
    fn other_aggregates_are_ignored_and_bad_payloads_refused() {
        let mut model = BoardModel::default();
        let mut log = Log::default();
        log.push("Agent", Uuid::now_v7(), json!({"AgentRegistered": {}}));
        assert_eq!(
            model.apply(&log.events[0]).expect("ignored"),
            Touched::default()
        );
        log.push("Ticket", Uuid::now_v7(), json!({"TicketExploded": {}}));
        assert!(matches!(
            model.apply(&log.events[1]),
            Err(ProjectionError::Payload { .. })
        ));
    }

    #[test]
    fn blocked_at_keeps_the_microseconds_postgres_keeps() {
        let (org, project, ticket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        let precise = at() + chrono::Duration::nanoseconds(123_456_789);
        log.ticket(
            ticket,
            TicketEvent::TicketBlocked {
                reason: BlockReason::Dependency,
                note: None,
                blocked_at: precise,
            },
        );
        let card = fold(&log).card(ticket).cloned().expect("a card");
        let blocked_at = card.blocked.expect("blocked").blocked_at;
        assert_eq!(blocked_at, at() + chrono::Duration::microseconds(123_456));
    }

    #[test]
    fn enums_are_stored_by_their_wire_names() {
        assert_eq!(to_text(&Priority::High).expect("text"), "HIGH");
        assert_eq!(to_text(&Phase::Design).expect("text"), "PHASE_DESIGN");
        assert_eq!(
            from_text::<BlockReason>("failing_checks".into()).expect("reason"),
            BlockReason::FailingChecks
        );
        assert!(from_text::<Priority>("URGENT".into()).is_err());
    }
}
