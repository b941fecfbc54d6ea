//! `ticket_progress`: a ticket with tasks moves by itself as its tasks do — to `building`
//! once one of them is assigned, to `building-done` once all its work that is not a
//! validation completed or was submitted for validation, to `testing` when a validation
//! starts, to `done` once all of its tasks completed (cancelled ones aside), and blocked (`failing_checks`, naming the
//! task and its error) when one fails for good. It only ever moves a ticket forward, so a
//! move a person made by hand is never undone; nor does it move a blocked ticket (every
//! move but testing → done would clear the block: a person's, or its own
//! `failing_checks`) — the move is asked again when someone unblocks the ticket, unless
//! a move by hand came with the unblocking (a regression). A project whose setting
//! `auto_advance` is off is left alone.
//!
//! Its state, in its own table: every task's ticket and status, as the events left them,
//! and whether it is a validation task. In memory, between batches: some of those rows,
//! the tallies of some tickets, and the tickets, projects and specs' archivals its asks
//! read ([`Known`]).

use std::collections::{BTreeSet, HashMap};

use cqrs_es::Aggregate;
use futures_util::future::BoxFuture;
use omoi_domain::common::{clipped, MAX_TEXT_CHARS};
use omoi_domain::project::Project;
use omoi_domain::spec::Spec;
use omoi_domain::task::{Task, TaskEvent, TaskStatus};
use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand, TicketStatus};
use omoi_projections::ProjectionError;
use omoi_store::log::histories_of;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::aggregates::{archivals_of_tickets_specs, of_type, Aggregates, Effects, SPEC_ARCHIVED};
use crate::kept::{Keep, Kept};
use crate::{occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "ticket_progress";

/// The process manager, and what its table holds kept in memory between batches, by
/// build schema (a rebuild runs beside the live build): a batch whose tasks and asked
/// tickets are all kept reads nothing of its table — on a busy machine a round trip less
/// for most batches, and a ticket of thousands of tasks counted once, not per batch.
#[derive(Default)]
pub struct TicketProgress {
    kept: Kept<KeptRows>,
}

/// Rows or tallies kept past this many are all forgotten (read again as needed).
const KEPT_AT_MOST: usize = 100_000;

/// Tickets or projects kept past this many are all forgotten: whole aggregates, each
/// with its texts (as many as the command bus keeps, `omoi_store::cache`).
const KNOWN_AT_MOST: usize = omoi_store::cache::DEFAULT_CAPACITY;

/// Some of a build's rows and tickets' tallies as its last committed batch left them,
/// and some of what its asks read; what is not here is read from the database.
#[derive(Default)]
struct KeptRows {
    rows: HashMap<String, TaskRow>,
    tallies: HashMap<String, Tally>,
    known: Known,
}

/// What a batch ended with: its rows and tallies, and what its asks knew.
struct BatchEnd {
    rows: TaskRows,
    known: Known,
}

impl Keep for KeptRows {
    type Change = BatchEnd;

    /// Takes in a committed batch's rows, tallies and aggregates. A ticket whose row the
    /// batch changed without holding its tally has its kept tally forgotten: it no longer
    /// counts the rows.
    fn commit(&mut self, batch: BatchEnd) {
        let BatchEnd { rows: batch, known } = batch;
        for task in &batch.changed {
            if let Some(row) = batch.rows.get(task) {
                if !batch.tallies.contains_key(&row.ticket_id) {
                    self.tallies.remove(&row.ticket_id);
                }
            }
        }
        self.rows.extend(batch.rows);
        self.tallies.extend(batch.tallies);
        if self.rows.len() > KEPT_AT_MOST || self.tallies.len() > KEPT_AT_MOST {
            self.rows.clear();
            self.tallies.clear();
        }
        self.known.tickets.extend(known.tickets);
        self.known.projects.extend(known.projects);
        self.known.archived.extend(known.archived);
        let known = [
            self.known.tickets.len(),
            self.known.projects.len(),
            self.known.archived.len(),
        ];
        if known.into_iter().any(|len| len > KNOWN_AT_MOST) {
            self.known = Known::default();
        }
    }
}

/// The tickets and projects a batch's asks were decided on (each aggregate's state after
/// its number of events, the batch's own effects applied) and whether each of those
/// tickets' specs was archived: kept, so that a batch whose asks are all known reads
/// nothing before it decides — in a burst of finishing work, a round trip less in each
/// batch and in the wait of every completion behind it.
///
/// A copy stays exact while nobody else changes its aggregate: an event the process
/// manager did not cause (a person's move, a project's settings, an archival) forgets it
/// as the stream brings it ([`Known::forget_stale`]), before any task's change after it
/// is decided. So each change is decided on the tickets, projects and archivals as the
/// log stood at least up to it; what the stream has not brought yet came after it. A
/// move decided on a ticket copy such a later event made stale is refused at append time
/// (the sequence is taken) and the batch applied again, everything read anew; a later
/// settings change, archival or move by hand that the copy does not show leaves the
/// decision as the log stood at the change — as a batch that read a moment earlier
/// would have decided.
#[derive(Default)]
struct Known {
    tickets: HashMap<String, (Ticket, usize)>,
    projects: HashMap<String, (Project, usize)>,
    /// By spec id.
    archived: HashMap<String, bool>,
}

impl Known {
    /// Whether `event` (not a task's) may leave something kept stale.
    fn may_make_stale(event: &StoredEvent) -> bool {
        match event.aggregate_type.as_str() {
            kind if kind == Ticket::TYPE || kind == Project::TYPE => true,
            kind => kind == Spec::TYPE && event.event_type == SPEC_ARCHIVED,
        }
    }

    /// Forgets what `event` made stale: a ticket or project it changed past the kept
    /// copy (not the process manager's own effect coming back), a spec it archived.
    fn forget_stale(&mut self, event: &StoredEvent) {
        let id = &event.aggregate_id;
        let passed = |kept: Option<&usize>| {
            kept.is_some_and(|version| i64::try_from(*version).is_ok_and(|v| v < event.sequence))
        };
        if event.aggregate_type == Ticket::TYPE {
            if passed(self.tickets.get(id).map(|(_, version)| version)) {
                self.tickets.remove(id);
            }
        } else if event.aggregate_type == Project::TYPE {
            if passed(self.projects.get(id).map(|(_, version)| version)) {
                self.projects.remove(id);
            }
        } else if event.aggregate_type == Spec::TYPE && event.event_type == SPEC_ARCHIVED {
            self.archived.remove(id);
        }
    }

    /// What is kept of the tickets, projects and specs `asks` need.
    fn for_asks(&self, asks: &[Ask<'_>]) -> Self {
        let mut known = Self::default();
        for ask in asks {
            if let Some(ticket) = self.tickets.get(ask.ticket()) {
                let spec = ticket.0.spec_id.map(|spec| spec.to_string());
                if let Some((spec, archived)) = spec.and_then(|s| self.archived.get_key_value(&s)) {
                    known.archived.insert(spec.clone(), *archived);
                }
                known
                    .tickets
                    .insert(ask.ticket().to_string(), ticket.clone());
            }
            if let Some(project) = project_of(ask.event()) {
                if let Some(kept) = self.projects.get(&project) {
                    known.projects.insert(project, kept.clone());
                }
            }
        }
        known
    }
}

impl KeptRows {
    /// What is kept of the rows of `changes`' tasks and of the tallies of their tickets
    /// and of the tickets `unblocked`.
    fn cached(&self, changes: &[(&StoredEvent, TaskEvent)], unblocked: &[String]) -> Cached {
        let mut cached = Cached::default();
        for ticket in unblocked {
            if let Some(tally) = self.tallies.get(ticket) {
                cached.tallies.insert(ticket.clone(), *tally);
            }
        }
        for (event, change) in changes {
            let task = &event.aggregate_id;
            let ticket = match (self.rows.get(task), change) {
                (Some(row), _) => {
                    cached.rows.insert(task.clone(), row.clone());
                    row.ticket_id.clone()
                }
                (None, TaskEvent::TaskCreated { ticket_id, .. }) => ticket_id.to_string(),
                (None, _) => continue,
            };
            if let Some(tally) = self.tallies.get(&ticket) {
                cached.tallies.insert(ticket, *tally);
            }
        }
        cached
    }
}

impl TicketProgress {
    /// What is kept of the batch's tasks' rows and of the tallies of their tickets; none
    /// when the batch given before never settled (it may have been rolled back).
    fn cached(
        &self,
        schema: &str,
        changes: &[(&StoredEvent, TaskEvent)],
        unblocked: &[String],
    ) -> Cached {
        self.kept
            .for_batch(schema, |kept| kept.cached(changes, unblocked))
            .unwrap_or_default()
    }

    /// The batch's task changes: the table's rows they touch are read once (those not
    /// kept) and changed in memory, event by event in order, then written once; what
    /// they ask of tickets is then decided on the tickets, projects and specs kept or
    /// read once for the batch. The batch's other events only forget what they made
    /// stale, before anything kept is used.
    async fn tasks_changed(
        &self,
        tx: &mut PgConnection,
        schema: &str,
        events: Vec<&StoredEvent>,
    ) -> Result<(), ProjectionError> {
        let (tasks, others): (Vec<&StoredEvent>, Vec<&StoredEvent>) = events
            .into_iter()
            .partition(|event| event.aggregate_type == Task::TYPE);
        let unblocked: Vec<&StoredEvent> = others
            .iter()
            .copied()
            .filter(|event| unblocked_by_another(event))
            .collect();
        if !others.is_empty() {
            self.kept.amend(schema, |kept| {
                for event in others {
                    kept.known.forget_stale(event);
                }
            });
        }
        let Some(&first) = tasks.first().or(unblocked.first()) else {
            return Ok(());
        };
        let unblocked_tickets: Vec<String> = unblocked
            .iter()
            .map(|event| event.aggregate_id.clone())
            .collect();
        let mut changes = Vec::with_capacity(tasks.len());
        for event in tasks {
            let change: TaskEvent = event
                .payload
                .decode()
                .map_err(|e| ProjectionError::payload(event, e))?;
            changes.push((event, change));
        }
        let cached = self.cached(schema, &changes, &unblocked_tickets);
        let mut rows = TaskRows::read(tx, schema, &changes, cached, &unblocked_tickets).await?;
        let mut asks: Vec<Ask> = changes
            .iter()
            .filter_map(|(event, change)| rows.change(event, change))
            .collect();
        // A ticket unblocked goes as far as its tasks take it: a move the block held back
        // (to `building` as work was assigned, to `done` as it finished) is not lost.
        asks.extend(unblocked.into_iter().filter_map(|event| {
            let ticket = event.aggregate_id.clone();
            let to = rows.reached_step(&ticket)?;
            Some(Ask::Advance { event, ticket, to })
        }));
        let mut known = self
            .kept
            .for_batch(schema, |kept| kept.known.for_asks(&asks))
            .unwrap_or_default();
        let effects = answer(tx, first, &asks, &mut known).await?;
        // Written last: the batch holds every reader of the log from its first write on.
        // The effects first: everything they were decided on was read before, and as the
        // transaction's first write their append skips the check for an event it follows
        // that a younger transaction committed (`Rows::insert_units`), which a write
        // before it would make it pay.
        effects.append(tx, first).await?;
        rows.write(tx, schema).await?;
        // Taken in once the runner says the batch committed.
        self.kept.hold(schema, BatchEnd { rows, known });
        Ok(())
    }
}

impl ProcessManager for TicketProgress {
    const NAME: &'static str = NAME;
    const TABLES: &'static [&'static str] = &["tasks"];

    fn create_tables(schema: &str) -> Vec<String> {
        vec![
            format!(
                "create table {schema}.tasks (
                    task_id    text primary key,
                    ticket_id  text not null,
                    status     text not null,
                    validation boolean not null default false
                )"
            ),
            format!("create index on {schema}.tasks (ticket_id)"),
        ]
    }

    fn upgrade_tables(schema: &str) -> Vec<String> {
        vec![format!(
            "alter table {schema}.tasks
               add column if not exists validation boolean not null default false"
        )]
    }

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == Task::TYPE || Known::may_make_stale(event)
    }

    /// A task's change, or a ticket unblocked by someone else (its finished work may take
    /// it further now); any other event it reacts to only forgets what it made stale,
    /// here, without a batch of its own.
    fn concerns(&self, schema: &str, event: &StoredEvent) -> bool {
        if event.aggregate_type == Task::TYPE || unblocked_by_another(event) {
            return true;
        }
        if Known::may_make_stale(event) {
            self.kept
                .amend(schema, |kept| kept.known.forget_stale(event));
        }
        false
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.tasks_changed(tx, schema, events))
    }

    fn settled(&self, schema: &str, committed: bool) {
        self.kept.settled(schema, committed);
    }
}

fn text(status: TaskStatus) -> &'static str {
    status.as_str()
}

/// A task's row in the process manager's table.
#[derive(Debug, Clone)]
struct TaskRow {
    ticket_id: String,
    status: String,
    validation: bool,
}

/// What a task's change asks of its ticket.
enum Ask<'a> {
    /// Move it forward to `to` (if it is not there yet).
    Advance {
        event: &'a StoredEvent,
        ticket: String,
        to: TicketStatus,
    },
    /// Block it: the task failed for good.
    Block {
        event: &'a StoredEvent,
        ticket: String,
    },
}

/// What the tickets, their projects and their specs (kept, or read once for all) say to
/// the asks, in order: the effects to append. `known` is what is kept of them, and then
/// what the batch knew of them.
async fn answer(
    tx: &mut PgConnection,
    first: &StoredEvent,
    asks: &[Ask<'_>],
    known: &mut Known,
) -> Result<Effects, ProjectionError> {
    let mut effects = Effects::default();
    if asks.is_empty() {
        return Ok(effects);
    }
    // The asked tickets, their projects, the archivals of the tickets' specs and the
    // tasks failed for good (their errors): those not kept, read with one query.
    let mut tickets = Aggregates::<Ticket>::knowing(std::mem::take(&mut known.tickets));
    let mut projects = Aggregates::<Project>::knowing(std::mem::take(&mut known.projects));
    let mut failed = Aggregates::<Task>::new();
    let wanted_tickets = tickets.missing(asks.iter().map(|ask| ask.ticket().to_string()));
    let wanted_projects = projects.missing(asks.iter().filter_map(|ask| project_of(ask.event())));
    let wanted_failed = failed.missing(
        asks.iter()
            .filter(|ask| matches!(ask, Ask::Block { .. }))
            .map(|ask| ask.event().aggregate_id.clone()),
    );
    // Whether their specs were archived: of every ticket read now (kept from then on),
    // and of the kept tickets finishing work whose spec's is not kept.
    let spec_unknown = |ticket: &str| {
        tickets
            .get(ticket)
            .and_then(|state| state.spec_id)
            .is_some_and(|spec| !known.archived.contains_key(&spec.to_string()))
    };
    let archivals_asked: Vec<String> = asks
        .iter()
        .filter(|ask| ask.finishes() && spec_unknown(ask.ticket()))
        .map(|ask| ask.ticket().to_string())
        .chain(wanted_tickets.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let nothing_to_read = wanted_tickets.is_empty()
        && wanted_projects.is_empty()
        && wanted_failed.is_empty()
        && archivals_asked.is_empty();
    if !nothing_to_read {
        let wanted = [
            (Ticket::TYPE, &wanted_tickets[..]),
            (Project::TYPE, &wanted_projects[..]),
            (Task::TYPE, &wanted_failed[..]),
        ];
        let archivals = archivals_of_tickets_specs(&archivals_asked);
        let events = histories_of(&mut *tx, &wanted, Some(archivals)).await?;
        tickets.know_read(first, wanted_tickets, &events)?;
        projects.know_read(first, wanted_projects, &events)?;
        failed.know_read(first, wanted_failed, &events)?;
        let archived: BTreeSet<&str> = of_type(&events, Spec::TYPE)
            .iter()
            .map(|archival| archival.aggregate_id.as_str())
            .collect();
        for ticket in &archivals_asked {
            if let Some(spec) = tickets.get(ticket).and_then(|state| state.spec_id) {
                let spec = spec.to_string();
                let was_archived = archived.contains(spec.as_str());
                known.archived.insert(spec, was_archived);
            }
        }
    }
    // Whether the task's project lets tickets move by themselves.
    let auto_advance = |event: &StoredEvent| {
        project_of(event).is_some_and(|id| projects.state(&id).settings.auto_advance)
    };
    for ask in asks {
        match ask {
            Ask::Block { event, ticket } => {
                if !auto_advance(event) {
                    continue;
                }
                // The task's own last error says why (clipped: the error alone may take
                // all the room a note has).
                let note = match failed
                    .get(&event.aggregate_id)
                    .and_then(|t| t.last_error.as_ref())
                {
                    Some(error) => format!("task {} failed for good: {error}", event.aggregate_id),
                    None => format!("task {} failed for good", event.aggregate_id),
                };
                let note = clipped(&note, MAX_TEXT_CHARS);
                let block = TicketCommand::BlockTicket {
                    reason: BlockReason::FailingChecks,
                    note: Some(note),
                    at: occurred_at(event),
                };
                let context = CommandContext::caused_by(Actor::System(NAME), event);
                tickets
                    .decide(&mut effects, tx, event, ticket, block, &context)
                    .await?;
            }
            Ask::Advance { event, ticket, to } => {
                let Some(state) = tickets.get(ticket) else {
                    continue;
                };
                // A block stands until a person lifts it: a walk would clear it on its
                // first step (before, a ticket blocked in building was walked to done).
                if state.blocked.is_some() {
                    continue;
                }
                // An unblocking asks for the move the block held back, not for one that a
                // person's move made with it undid (a regression unblocks on its way back
                // to building).
                if event.aggregate_type == Ticket::TYPE && moved_as_it_unblocked(tx, event).await? {
                    continue;
                }
                if state.status.rank() >= to.rank() || !auto_advance(event) {
                    continue;
                }
                // An archived spec's tasks were cancelled with it, which finishes nothing.
                if let Some(spec_id) = state.spec_id.filter(|_| ask.finishes()) {
                    if known.archived.get(&spec_id.to_string()) == Some(&true) {
                        continue;
                    }
                }
                let walk = TicketCommand::AdvanceTicket {
                    to: *to,
                    note: Some(format!("tasks moved on ({})", event.reference())),
                };
                let context = CommandContext::caused_by(Actor::System(NAME), event);
                tickets
                    .decide(&mut effects, tx, event, ticket, walk, &context)
                    .await?;
            }
        }
    }
    known.tickets = tickets.into_existing();
    known.projects = projects.into_existing();
    Ok(effects)
}

impl Ask<'_> {
    /// Whether it moves its ticket to where finished work takes it.
    fn finishes(&self) -> bool {
        matches!(
            self,
            Ask::Advance {
                to: TicketStatus::BuildingDone | TicketStatus::Done,
                ..
            }
        )
    }

    fn ticket(&self) -> &str {
        match self {
            Ask::Advance { ticket, .. } | Ask::Block { ticket, .. } => ticket,
        }
    }

    fn event(&self) -> &StoredEvent {
        match self {
            Ask::Advance { event, .. } | Ask::Block { event, .. } => event,
        }
    }
}

/// Whether `unblocked` (a `TicketUnblocked`) came with a move of its ticket in its own
/// command — a person's regression (`TicketRegressed`) or move by hand
/// (`TicketStatusChanged`), which unblock on their way — rather than alone, as an
/// unblocking is: the ticket's next event is of the same transaction.
async fn moved_as_it_unblocked(
    tx: &mut PgConnection,
    unblocked: &StoredEvent,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from events
          where aggregate_type = $1 and aggregate_id = $2 and sequence = $3 + 1
            and transaction_id::text::bigint = $4)",
    )
    .bind(&unblocked.aggregate_type)
    .bind(&unblocked.aggregate_id)
    .bind(unblocked.sequence)
    .bind(unblocked.transaction_id)
    .fetch_one(tx)
    .await
}

/// Whether `event` unblocked a ticket and another than this process manager caused it
/// (its own walks unblock as they move, and ask nothing more).
fn unblocked_by_another(event: &StoredEvent) -> bool {
    event.aggregate_type == Ticket::TYPE
        && event.event_type == "TicketUnblocked"
        && !event
            .metadata
            .actor()
            .is_some_and(|actor| Actor::System(NAME).wrote(actor))
}

/// The project an event names in its metadata.
fn project_of(event: &StoredEvent) -> Option<String> {
    event.metadata.project_id().map(str::to_string)
}

/// How a ticket's tasks stand, counted: what [`TaskRows::finished_step`] decides on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    /// Tasks not ended (neither completed nor cancelled).
    open: i64,
    /// Open work that is not a validation and is not waiting for its verdict.
    open_work: i64,
    /// Tasks completed or waiting for their verdict.
    finished: i64,
    /// Work that is not a validation, assigned or running.
    working: i64,
    /// Validations running.
    validating: i64,
}

impl Tally {
    /// What `count` tasks of `status` (validations or not) add to their ticket's tally.
    fn of(status: &str, validation: bool, count: i64) -> Self {
        let completed = status == text(TaskStatus::Completed);
        let waiting = status == text(TaskStatus::PendingValidation);
        let ended = completed || status == text(TaskStatus::Cancelled);
        let running = status == text(TaskStatus::Running);
        let held = running || status == text(TaskStatus::Assigned);
        let one = |yes: bool| if yes { count } else { 0 };
        Self {
            open: one(!ended),
            open_work: one(!validation && !ended && !waiting),
            finished: one(completed || waiting),
            working: one(!validation && held),
            validating: one(validation && running),
        }
    }

    fn add(&mut self, other: Self) {
        self.open += other.open;
        self.open_work += other.open_work;
        self.finished += other.finished;
        self.working += other.working;
        self.validating += other.validating;
    }

    fn remove(&mut self, other: Self) {
        self.open -= other.open;
        self.open_work -= other.open_work;
        self.finished -= other.finished;
        self.working -= other.working;
        self.validating -= other.validating;
    }

    /// How far the ticket's tasks take it, for a move a block held back: its finished
    /// work's step ([`Tally::step`]), or further — `testing` while a validation runs —,
    /// else `building` while work is assigned or running (the moves a task's assignment
    /// and a validation's start ask for, skipped while the ticket was blocked).
    fn reached(self) -> Option<TicketStatus> {
        let step = self.step();
        if step == Some(TicketStatus::Done) {
            return step;
        }
        if self.validating > 0 {
            return Some(TicketStatus::Testing);
        }
        step.or((self.working > 0).then_some(TicketStatus::Building))
    }

    /// How far the ticket's finished work takes it: `done` once every task completed
    /// (cancelled ones aside), `building-done` once all its work that is not a validation
    /// completed or waits for its verdict; `None` while work is left.
    fn step(self) -> Option<TicketStatus> {
        match self {
            Self { finished: 0, .. } => None,
            Self { open: 0, .. } => Some(TicketStatus::Done),
            Self { open_work: 0, .. } => Some(TicketStatus::BuildingDone),
            _ => None,
        }
    }
}

/// Whether a task reaching `status` asks how far its ticket's finished work goes.
fn finishes(status: TaskStatus) -> bool {
    matches!(
        status,
        TaskStatus::Completed | TaskStatus::Cancelled | TaskStatus::PendingValidation
    )
}

/// The ticket of `task`: its row's, or its creation's in this batch (no row yet).
fn ticket_of(
    rows: &HashMap<String, TaskRow>,
    created: &HashMap<&str, String>,
    task: &str,
) -> Option<String> {
    match rows.get(task) {
        Some(row) => Some(row.ticket_id.clone()),
        None => created.get(task).cloned(),
    }
}

/// What is kept of a batch's rows and tallies ([`TicketProgress::cached`]).
#[derive(Default)]
struct Cached {
    rows: HashMap<String, TaskRow>,
    tallies: HashMap<String, Tally>,
}

/// The table's rows of a batch's tasks, changed in memory, and the tallies of the tickets
/// whose finished work the batch asks about, kept in step with them. A batch reads and
/// counts what it touches only: a ticket of thousands of tasks costs each batch a
/// count per status, not its every row.
struct TaskRows {
    rows: HashMap<String, TaskRow>,
    tallies: HashMap<String, Tally>,
    changed: BTreeSet<String>,
}

impl TaskRows {
    /// The rows of the batch's tasks and, for the tickets whose finished work a change
    /// asks about, their tallies: those `cached` holds, and the others read with one
    /// statement (none when all are kept — on a busy machine a round trip waits for a
    /// core, and a batch's time is mostly its round trips).
    async fn read(
        tx: &mut PgConnection,
        schema: &str,
        changes: &[(&StoredEvent, TaskEvent)],
        cached: Cached,
        unblocked: &[String],
    ) -> Result<Self, ProjectionError> {
        let Cached {
            mut rows,
            mut tallies,
        } = cached;
        let unknown: Vec<&str> = changes
            .iter()
            .map(|(event, _)| event.aggregate_id.as_str())
            .filter(|task| !rows.contains_key(*task))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let finishing: Vec<&str> = changes
            .iter()
            .filter(|(_, change)| change.status_after().is_some_and(finishes))
            .map(|(event, _)| event.aggregate_id.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let created: HashMap<&str, String> = changes
            .iter()
            .filter_map(|(event, change)| match change {
                TaskEvent::TaskCreated { ticket_id, .. } => {
                    Some((event.aggregate_id.as_str(), ticket_id.to_string()))
                }
                _ => None,
            })
            .collect();
        // The tickets of finishing tasks known here (kept rows, creations in this batch)
        // whose tallies are not kept; those of the rows read are found by the statement.
        let to_count: Vec<String> = finishing
            .iter()
            .filter_map(|task| ticket_of(&rows, &created, task))
            .chain(unblocked.iter().cloned())
            .filter(|ticket| !tallies.contains_key(ticket))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut counted: HashMap<String, Tally> = HashMap::new();
        if !unknown.is_empty() || !to_count.is_empty() {
            // Rows (a task id) and tally groups (none) together. Each row and each
            // ticket's tasks are looked up by the key (`task_id = any($1)` tested every
            // row against the whole array: 10–45 ms a batch once the table held 2,000
            // tasks).
            let found: Vec<(Option<String>, String, String, bool, i64)> = sqlx::query_as(&format!(
                "with found as (
                         select task_id, ticket_id, status, validation
                           from unnest($1::text[]) as wanted(task_id)
                           join {schema}.tasks using (task_id)),
                     asked as (
                         select ticket_id from found where task_id = any($2::text[])
                         union
                         select unnest($3::text[]))
                     select task_id, ticket_id, status, validation, 1::bigint from found
                     union all
                     select null, ticket_id, status, validation, count(*)
                       from asked join {schema}.tasks using (ticket_id)
                      group by ticket_id, status, validation"
            ))
            .bind(&unknown)
            .bind(&finishing)
            .bind(&to_count)
            .fetch_all(&mut *tx)
            .await?;
            for (task, ticket_id, status, validation, count) in found {
                match task {
                    Some(task) => {
                        let row = TaskRow {
                            ticket_id,
                            status,
                            validation,
                        };
                        rows.insert(task, row);
                    }
                    None => counted
                        .entry(ticket_id)
                        .or_default()
                        .add(Tally::of(&status, validation, count)),
                }
            }
        }
        // Every asked ticket has a tally: counted now (none counted: its tasks are all
        // new), or kept.
        let asked: BTreeSet<String> = finishing
            .iter()
            .filter_map(|task| ticket_of(&rows, &created, task))
            .chain(unblocked.iter().cloned())
            .collect();
        for ticket in asked {
            match counted.remove(&ticket) {
                Some(tally) => {
                    tallies.insert(ticket, tally);
                }
                None => {
                    tallies.entry(ticket).or_default();
                }
            }
        }
        Ok(Self {
            rows,
            tallies,
            changed: BTreeSet::new(),
        })
    }

    /// Sets task `task`'s row (a new one when `None` was there), keeping its ticket's
    /// tally in step.
    fn set(&mut self, task: &str, row: TaskRow) {
        if let Some(tally) = self.tallies.get_mut(&row.ticket_id) {
            tally.add(Tally::of(&row.status, row.validation, 1));
            if let Some(old) = self.rows.get(task) {
                tally.remove(Tally::of(&old.status, old.validation, 1));
            }
        }
        self.rows.insert(task.to_string(), row);
        self.changed.insert(task.to_string());
    }

    /// Applies one change to the rows; what it asks of the task's ticket, if anything.
    fn change<'a>(&mut self, event: &'a StoredEvent, change: &TaskEvent) -> Option<Ask<'a>> {
        let task = &event.aggregate_id;
        if let TaskEvent::TaskCreated { ticket_id, .. } = change {
            if !self.rows.contains_key(task) {
                let row = TaskRow {
                    ticket_id: ticket_id.to_string(),
                    status: text(TaskStatus::Pending).to_string(),
                    validation: false,
                };
                self.set(task, row);
            }
            return None;
        }
        if let TaskEvent::TaskValidates { .. } = change {
            if let Some(row) = self.rows.get(task) {
                let row = TaskRow {
                    validation: true,
                    ..row.clone()
                };
                self.set(task, row);
            }
            return None;
        }
        let status = change.status_after()?;
        let row = self.rows.get(task)?;
        let (ticket, validation) = (row.ticket_id.clone(), row.validation);
        let row = TaskRow {
            status: text(status).to_string(),
            ..row.clone()
        };
        self.set(task, row);
        // What the change asks of the ticket; the ticket and its project are read only
        // for changes that ask something (most events of a running ticket ask nothing).
        let to = match status {
            TaskStatus::Assigned => TicketStatus::Building,
            TaskStatus::Running if validation => TicketStatus::Testing,
            status if finishes(status) => self.finished_step(&ticket)?,
            TaskStatus::PermanentlyFailed | TaskStatus::TimedOut => {
                return Some(Ask::Block { event, ticket });
            }
            _ => return None,
        };
        Some(Ask::Advance { event, ticket, to })
    }

    /// How far a ticket's finished work takes it, as its tally stands ([`Tally::step`]).
    fn finished_step(&self, ticket: &str) -> Option<TicketStatus> {
        self.tallies.get(ticket).and_then(|tally| tally.step())
    }

    /// How far a ticket's tasks take it once unblocked ([`Tally::reached`]).
    fn reached_step(&self, ticket: &str) -> Option<TicketStatus> {
        self.tallies.get(ticket).and_then(|tally| tally.reached())
    }

    /// Writes every changed row (one statement).
    async fn write(&self, tx: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.changed.is_empty() {
            return Ok(());
        }
        let mut tasks = Vec::with_capacity(self.changed.len());
        let mut tickets = Vec::with_capacity(self.changed.len());
        let mut statuses = Vec::with_capacity(self.changed.len());
        let mut validations = Vec::with_capacity(self.changed.len());
        for (task, row) in self
            .changed
            .iter()
            .filter_map(|task| Some((task, self.rows.get(task)?)))
        {
            tasks.push(task.as_str());
            tickets.push(row.ticket_id.as_str());
            statuses.push(row.status.as_str());
            validations.push(row.validation);
        }
        sqlx::query(&format!(
            "insert into {schema}.tasks (task_id, ticket_id, status, validation)
             select * from unnest($1::text[], $2::text[], $3::text[], $4::bool[])
             on conflict (task_id) do update
                set status = excluded.status, validation = excluded.validation"
        ))
        .bind(tasks)
        .bind(tickets)
        .bind(statuses)
        .bind(validations)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use omoi_domain::task::TaskStatus;
    use omoi_domain::ticket::TicketStatus;
    use proptest::prelude::*;

    use super::{text, BatchEnd, KeptRows, Known, Tally, TaskRow, TaskRows, TicketProgress};
    use crate::kept::Keep;
    use crate::ProcessManager;

    const TICKETS: [&str; 3] = ["t1", "t2", "t3"];

    /// An event of aggregate `kind` `id` at `sequence`, as the stream hands it over.
    fn event(kind: &str, id: &str, sequence: i64, event_type: &str) -> omoi_store::StoredEvent {
        omoi_store::StoredEvent {
            aggregate_type: kind.into(),
            aggregate_id: id.into(),
            sequence,
            event_type: event_type.into(),
            ..crate::ticket_event(event_type, serde_json::json!({}), serde_json::json!({}))
        }
    }

    /// What the stream brings forgets what it made stale of the kept tickets, projects
    /// and specs' archivals — not the manager's own effects coming back — without a
    /// batch; a task's change is the manager's concern.
    #[test]
    fn events_others_caused_forget_what_is_kept_of_their_aggregates() {
        let manager = TicketProgress::default();
        let kept = || {
            manager
                .kept
                .between_batches("schema", |kept| {
                    let mut tickets: Vec<&str> =
                        kept.known.tickets.keys().map(String::as_str).collect();
                    let mut projects: Vec<&str> =
                        kept.known.projects.keys().map(String::as_str).collect();
                    let mut specs: Vec<&str> =
                        kept.known.archived.keys().map(String::as_str).collect();
                    tickets.sort_unstable();
                    projects.sort_unstable();
                    specs.sort_unstable();
                    format!("{tickets:?} {projects:?} {specs:?}")
                })
                .unwrap_or_default()
        };
        let mut known = Known::default();
        for ticket in ["t1", "t2"] {
            known.tickets.insert(ticket.into(), (Default::default(), 2));
        }
        known.projects.insert("p1".into(), (Default::default(), 3));
        known.archived.insert("s1".into(), false);
        known.archived.insert("s2".into(), false);
        let batch = TaskRows {
            rows: HashMap::new(),
            tallies: HashMap::new(),
            changed: Default::default(),
        };
        manager.kept.hold("schema", BatchEnd { rows: batch, known });
        manager.settled("schema", true);
        assert_eq!(kept(), r#"["t1", "t2"] ["p1"] ["s1", "s2"]"#);

        let passes = [
            // The manager's own move of t1, its second event, coming back.
            event("Ticket", "t1", 2, "TicketStatusChanged"),
            event("Project", "p1", 3, "ProjectSettingsChanged"),
            event("Spec", "s1", 9, "SpecRequirementsApproved"),
            event("Ticket", "t9", 5, "TicketRegressed"),
        ];
        for passing in &passes {
            assert!(!manager.concerns("schema", passing));
        }
        assert_eq!(
            kept(),
            r#"["t1", "t2"] ["p1"] ["s1", "s2"]"#,
            "nothing stale"
        );

        let news = [
            event("Ticket", "t1", 3, "TicketRegressed"),
            event("Project", "p1", 4, "ProjectSettingsChanged"),
            event("Spec", "s2", 9, "SpecArchived"),
        ];
        for news in &news {
            assert!(manager.reacts_to(news));
            assert!(!manager.concerns("schema", news));
        }
        assert_eq!(kept(), r#"["t2"] [] ["s1"]"#);

        let change = event("Task", "k1", 4, "TaskStarted");
        assert!(manager.concerns("schema", &change));
    }

    fn status() -> impl Strategy<Value = TaskStatus> {
        prop::sample::select(TaskStatus::ALL.to_vec())
    }

    fn row() -> impl Strategy<Value = TaskRow> {
        (
            prop::sample::select(TICKETS.to_vec()),
            status(),
            any::<bool>(),
        )
            .prop_map(|(ticket, status, validation)| TaskRow {
                ticket_id: ticket.to_string(),
                status: text(status).to_string(),
                validation,
            })
    }

    /// The rule as it reads over a ticket's every row (what the process manager counted
    /// before it kept tallies).
    fn step_over_rows<'a>(rows: impl Iterator<Item = &'a TaskRow>) -> Option<TicketStatus> {
        let (mut open, mut open_work, mut finished) = (0, 0, 0);
        for row in rows {
            let completed = row.status == text(TaskStatus::Completed);
            let waiting = row.status == text(TaskStatus::PendingValidation);
            let ended = completed || row.status == text(TaskStatus::Cancelled);
            open += usize::from(!ended);
            open_work += usize::from(!row.validation && !ended && !waiting);
            finished += usize::from(completed || waiting);
        }
        match (open, open_work, finished) {
            (_, _, 0) => None,
            (0, _, _) => Some(TicketStatus::Done),
            (_, 0, _) => Some(TicketStatus::BuildingDone),
            _ => None,
        }
    }

    /// How far an unblocked ticket goes, read over its every row: its finished work's
    /// step, `testing` while a validation runs, `building` while work is held.
    fn reached_over_rows<'a>(
        rows: impl Iterator<Item = &'a TaskRow> + Clone,
    ) -> Option<TicketStatus> {
        let step = step_over_rows(rows.clone());
        if step == Some(TicketStatus::Done) {
            return step;
        }
        let (mut validating, mut working) = (false, false);
        for row in rows {
            let running = row.status == text(TaskStatus::Running);
            let held = running || row.status == text(TaskStatus::Assigned);
            validating |= row.validation && running;
            working |= !row.validation && held;
        }
        match validating {
            true => Some(TicketStatus::Testing),
            false => step.or(working.then_some(TicketStatus::Building)),
        }
    }

    /// The tally of `ticket` counted afresh over `rows`, as the read's `group by` counts.
    fn counted(rows: &HashMap<String, TaskRow>, ticket: &str) -> Tally {
        let mut groups: HashMap<(String, bool), i64> = HashMap::new();
        for row in rows.values().filter(|row| row.ticket_id == ticket) {
            *groups
                .entry((row.status.clone(), row.validation))
                .or_default() += 1;
        }
        let mut tally = Tally::default();
        for ((status, validation), count) in groups {
            tally.add(Tally::of(&status, validation, count));
        }
        tally
    }

    proptest! {
        /// Rows set one after another (new tasks, status changes, validations) leave
        /// every tally as counting the final rows afresh gives, and its step is the rule
        /// read over the ticket's every row.
        #[test]
        fn tallies_kept_in_step_agree_with_the_rows(
            initial in prop::collection::vec(row(), 0..12),
            changes in prop::collection::vec((0usize..16, row()), 0..24),
        ) {
            let table: HashMap<String, TaskRow> = initial
                .into_iter()
                .enumerate()
                .map(|(n, row)| (format!("task-{n}"), row))
                .collect();
            let mut rows = TaskRows {
                rows: table.clone(),
                tallies: TICKETS.iter().map(|t| (t.to_string(), counted(&table, t))).collect(),
                changed: Default::default(),
            };
            for (n, new) in changes {
                let task = format!("task-{n}");
                // A task stays in its ticket.
                let ticket_id = rows
                    .rows
                    .get(&task)
                    .map_or(new.ticket_id.clone(), |old| old.ticket_id.clone());
                rows.set(&task, TaskRow { ticket_id, ..new });
            }
            for ticket in TICKETS {
                prop_assert_eq!(rows.tallies[ticket], counted(&rows.rows, ticket));
                let in_ticket = rows.rows.values().filter(|row| row.ticket_id == ticket);
                prop_assert_eq!(rows.finished_step(ticket), step_over_rows(in_ticket.clone()));
                prop_assert_eq!(rows.reached_step(ticket), reached_over_rows(in_ticket));
            }
        }
    }

    proptest! {
        /// What is kept between committed batches agrees with the table: after any
        /// batches — each changing some tasks (new ones, status changes), holding the
        /// tallies of some tickets (kept, or counted from the table as a read would),
        /// kept in step as it goes — every kept row is the table's, and every kept tally
        /// is what counting the table's rows of its ticket gives.
        #[test]
        fn kept_rows_and_tallies_agree_with_the_table_after_any_batches(
            batches in prop::collection::vec(
                (
                    prop::collection::vec((0usize..12, row()), 0..8),
                    prop::sample::subsequence(TICKETS.to_vec(), 0..=TICKETS.len()),
                ),
                1..12,
            ),
        ) {
            let mut table: HashMap<String, TaskRow> = HashMap::new();
            let mut kept = KeptRows::default();
            for (changes, held) in batches {
                let mut rows = TaskRows {
                    rows: HashMap::new(),
                    tallies: held
                        .iter()
                        .map(|ticket| {
                            let tally = kept
                                .tallies
                                .get(*ticket)
                                .copied()
                                .unwrap_or_else(|| counted(&table, ticket));
                            (ticket.to_string(), tally)
                        })
                        .collect(),
                    changed: Default::default(),
                };
                for (n, new) in changes {
                    let task = format!("task-{n}");
                    if let Some(old) = table.get(&task) {
                        rows.rows.entry(task.clone()).or_insert_with(|| old.clone());
                    }
                    // A task stays in its ticket.
                    let ticket_id = rows
                        .rows
                        .get(&task)
                        .map_or(new.ticket_id.clone(), |old| old.ticket_id.clone());
                    rows.set(&task, TaskRow { ticket_id, ..new });
                }
                for task in &rows.changed {
                    table.insert(task.clone(), rows.rows[task].clone());
                }
                kept.commit(BatchEnd { rows, known: Known::default() });
                for (task, row) in &kept.rows {
                    prop_assert_eq!(&table[task].status, &row.status);
                    prop_assert_eq!(table[task].validation, row.validation);
                }
                for (ticket, tally) in &kept.tallies {
                    prop_assert_eq!(*tally, counted(&table, ticket), "{}", ticket);
                }
            }
        }
    }
}
