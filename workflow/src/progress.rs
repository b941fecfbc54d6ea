//! `ticket_progress`: a ticket with tasks moves by itself as its tasks do — to `building`
//! once one of them is assigned, to `building-done` once all its work that is not a
//! validation completed or was submitted for validation, to `testing` when a validation
//! starts, to `done` once all of its tasks completed (cancelled ones aside), and blocked (`failing_checks`, naming the
//! task and its error) when one fails for good. It only ever moves a ticket forward, so a
//! move a person made by hand is never undone; a move the ticket refuses (it is blocked,
//! say) is skipped. A project whose setting `auto_advance` is off is left alone.
//!
//! Its state, in its own table: every task's ticket and status, as the events left them,
//! and whether it is a validation task.

use std::collections::{BTreeSet, HashMap};

use futures_util::future::BoxFuture;
use omoi_domain::project::Project;
use omoi_domain::spec::{Spec, SpecPhase};
use omoi_domain::task::{Task, TaskEvent, TaskStatus};
use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand, TicketStatus};
use omoi_projections::ProjectionError;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::aggregates::{Aggregates, Effects};
use crate::{occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "ticket_progress";

pub struct TicketProgress;

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
        event.aggregate_type == "Task"
    }

    fn react<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        self.react_all(tx, schema, vec![event])
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(tasks_changed(tx, schema, events))
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

/// The batch's task changes: the table's rows they touch are read once and changed in
/// memory, event by event in order, then written once; what they ask of tickets is then
/// decided on the tickets, projects and specs read once for the batch.
async fn tasks_changed(
    tx: &mut PgConnection,
    schema: &str,
    events: Vec<&StoredEvent>,
) -> Result<(), ProjectionError> {
    let Some(&first) = events.first() else {
        return Ok(());
    };
    let mut changes = Vec::with_capacity(events.len());
    for event in events {
        let change: TaskEvent = event
            .payload
            .decode()
            .map_err(|e| ProjectionError::payload(event, e))?;
        changes.push((event, change));
    }
    let mut rows = TaskRows::read(tx, schema, &changes).await?;
    let asks: Vec<Ask> = changes
        .iter()
        .filter_map(|(event, change)| rows.change(event, change))
        .collect();
    let effects = answer(tx, first, &asks).await?;
    // Written last: the batch holds every reader of the log from its first write on.
    rows.write(tx, schema).await?;
    effects.append(tx, first).await
}

/// What the tickets, their projects and their specs (read once for all) say to the
/// asks, in order: the effects to append.
async fn answer(
    tx: &mut PgConnection,
    first: &StoredEvent,
    asks: &[Ask<'_>],
) -> Result<Effects, ProjectionError> {
    let mut effects = Effects::default();
    if asks.is_empty() {
        return Ok(effects);
    }
    let mut tickets = Aggregates::<Ticket>::new();
    tickets
        .read(tx, first, asks.iter().map(|ask| ask.ticket().to_string()))
        .await?;
    let mut projects = Aggregates::<Project>::new();
    projects
        .read(
            tx,
            first,
            asks.iter().filter_map(|ask| project_of(ask.event())),
        )
        .await?;
    // Whether the task's project lets tickets move by themselves.
    let auto_advance = |event: &StoredEvent| {
        project_of(event).is_some_and(|id| projects.state(&id).settings.auto_advance)
    };
    let mut specs = Aggregates::<Spec>::new();
    let mut failed = Aggregates::<Task>::new();
    for ask in asks {
        match ask {
            Ask::Block { event, ticket } => {
                if !auto_advance(event) {
                    continue;
                }
                // The task's own last error says why.
                failed.read(tx, event, [event.aggregate_id.clone()]).await?;
                let note = match failed
                    .get(&event.aggregate_id)
                    .and_then(|t| t.last_error.as_ref())
                {
                    Some(error) => format!("task {} failed for good: {error}", event.aggregate_id),
                    None => format!("task {} failed for good", event.aggregate_id),
                };
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
                if state.status.rank() >= to.rank() || !auto_advance(event) {
                    continue;
                }
                // An archived spec's tasks were cancelled with it, which finishes nothing.
                let finishing = matches!(to, TicketStatus::BuildingDone | TicketStatus::Done);
                if let Some(spec_id) = state.spec_id.filter(|_| finishing) {
                    let spec_id = spec_id.to_string();
                    specs.read(tx, event, [spec_id.clone()]).await?;
                    if specs
                        .get(&spec_id)
                        .is_some_and(|s| s.phase == SpecPhase::Archived)
                    {
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
    Ok(effects)
}

impl Ask<'_> {
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

/// The project an event names in its metadata.
fn project_of(event: &StoredEvent) -> Option<String> {
    event.metadata.project_id().map(str::to_string)
}

/// The table's rows of every ticket a batch's tasks belong to, changed in memory.
struct TaskRows {
    rows: HashMap<String, TaskRow>,
    changed: BTreeSet<String>,
}

impl TaskRows {
    /// Every row of the tickets of the batch's tasks (one query): a ticket's finished
    /// work is counted over all of its tasks.
    async fn read(
        tx: &mut PgConnection,
        schema: &str,
        changes: &[(&StoredEvent, TaskEvent)],
    ) -> Result<Self, ProjectionError> {
        let tasks: Vec<&str> = changes
            .iter()
            .map(|(event, _)| event.aggregate_id.as_str())
            .collect();
        let created_in: Vec<String> = changes
            .iter()
            .filter_map(|(_, change)| match change {
                TaskEvent::TaskCreated { ticket_id, .. } => Some(ticket_id.to_string()),
                _ => None,
            })
            .collect();
        let found: Vec<(String, String, String, bool)> = sqlx::query_as(&format!(
            "select task_id, ticket_id, status, validation from {schema}.tasks
              where ticket_id = any(array(select ticket_id from {schema}.tasks
                                           where task_id = any($1)) || $2)"
        ))
        .bind(tasks)
        .bind(created_in)
        .fetch_all(&mut *tx)
        .await?;
        let rows = found
            .into_iter()
            .map(|(task, ticket_id, status, validation)| {
                let row = TaskRow {
                    ticket_id,
                    status,
                    validation,
                };
                (task, row)
            })
            .collect();
        Ok(Self {
            rows,
            changed: BTreeSet::new(),
        })
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
                self.rows.insert(task.clone(), row);
                self.changed.insert(task.clone());
            }
            return None;
        }
        if let TaskEvent::TaskValidates { .. } = change {
            if let Some(row) = self.rows.get_mut(task) {
                row.validation = true;
                self.changed.insert(task.clone());
            }
            return None;
        }
        let status = change.status_after()?;
        let row = self.rows.get_mut(task)?;
        row.status = text(status).to_string();
        let (ticket, validation) = (row.ticket_id.clone(), row.validation);
        self.changed.insert(task.clone());
        // What the change asks of the ticket; the ticket and its project are read only
        // for changes that ask something (most events of a running ticket ask nothing).
        let to = match status {
            TaskStatus::Assigned => TicketStatus::Building,
            TaskStatus::Running if validation => TicketStatus::Testing,
            TaskStatus::Completed | TaskStatus::Cancelled | TaskStatus::PendingValidation => {
                self.finished_step(&ticket)?
            }
            TaskStatus::PermanentlyFailed | TaskStatus::TimedOut => {
                return Some(Ask::Block { event, ticket });
            }
            _ => return None,
        };
        Some(Ask::Advance { event, ticket, to })
    }

    /// How far a ticket's finished work takes it: `done` once every task completed
    /// (cancelled ones aside), `building-done` once all its work that is not a validation
    /// completed or waits for its verdict; `None` while work is left.
    fn finished_step(&self, ticket: &str) -> Option<TicketStatus> {
        let completed = text(TaskStatus::Completed);
        let cancelled = text(TaskStatus::Cancelled);
        let waiting = text(TaskStatus::PendingValidation);
        let (mut open, mut open_work, mut finished) = (0, 0, 0);
        for row in self.rows.values().filter(|row| row.ticket_id == ticket) {
            let ended = row.status == completed || row.status == cancelled;
            open += usize::from(!ended);
            open_work += usize::from(!row.validation && !ended && row.status != waiting);
            finished += usize::from(row.status == completed || row.status == waiting);
        }
        match (open, open_work, finished) {
            (_, _, 0) => None,
            (0, _, _) => Some(TicketStatus::Done),
            (_, 0, _) => Some(TicketStatus::BuildingDone),
            _ => None,
        }
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
