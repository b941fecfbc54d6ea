//! `ticket_progress`: a ticket with tasks moves by itself as its tasks do — to `building`
//! once one of them is assigned, to `building-done` once all its work that is not a
//! validation completed or was submitted for validation, to `testing` when a validation
//! starts, to `done` once all of its tasks completed (cancelled ones aside), and blocked
//! (`failing_checks`, naming the task and its error) when one fails for good. It only
//! ever moves a ticket forward, so a move a person made by hand is never undone; a move
//! the ticket refuses (it is blocked, say) is skipped. A project whose setting
//! `auto_advance` is off is left alone.
//!
//! Its state, in its own table: every task's ticket and status, as the events left them,
//! and whether it is a validation task. A batch is decided at once: the table written
//! with one statement per kind of change, then each ticket that changed moved to the
//! furthest status its changes ask (one statement per event had kept it saturated under
//! load, half a second behind the log: `omoi-bench bench-workflow`).

use std::collections::{BTreeMap, HashMap};

use futures_util::future::BoxFuture;
use omoi_domain::project::Project;
use omoi_domain::spec::{Spec, SpecPhase};
use omoi_domain::task::{Task, TaskEvent, TaskStatus};
use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand, TicketStatus};
use omoi_projections::ProjectionError;
use omoi_store::bus::execute_in;
use omoi_store::{Actor, CommandContext, CommandError, StoredEvent};
use sqlx::PgConnection;

use crate::{load, occurred_at, ProcessManager};

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
        Box::pin(async move { tasks_changed(tx, schema, &[event]).await })
    }

    fn react_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [&'a StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(tasks_changed(tx, schema, events))
    }
}

fn text(status: TaskStatus) -> &'static str {
    status.as_str()
}

/// A status change of a task, as the batch's events leave it.
struct Change<'a> {
    task_id: &'a str,
    status: TaskStatus,
    event: &'a StoredEvent,
}

/// What a batch asks of one ticket: the furthest status its tasks' changes take it to,
/// and the event that asked it (the moves' cause).
struct Ask<'a> {
    to: TicketStatus,
    cause: &'a StoredEvent,
}

/// The batch's task events, decided at once: the table's rows written set-based (a
/// statement per kind of change, not one per event), then every ticket that changed asked
/// where its tasks take it — moved forward to the furthest status any of its changes asks
/// (each step caused by that change's event), or blocked by a task failing for good. The
/// project's setting and the ticket are read only for tickets asked to move.
async fn tasks_changed(
    tx: &mut PgConnection,
    schema: &str,
    events: &[&StoredEvent],
) -> Result<(), ProjectionError> {
    let mut created: (Vec<&str>, Vec<String>) = (Vec::new(), Vec::new());
    let mut validations: Vec<&str> = Vec::new();
    let mut changes: Vec<Change> = Vec::new();
    for event in events {
        let change: TaskEvent = serde_json::from_value(event.payload.clone())
            .map_err(|e| ProjectionError::payload(event, e))?;
        let task_id = event.aggregate_id.as_str();
        match change {
            TaskEvent::TaskCreated { ticket_id, .. } => {
                created.0.push(task_id);
                created.1.push(ticket_id.to_string());
            }
            TaskEvent::TaskValidates { .. } => validations.push(task_id),
            other => {
                if let Some(status) = other.status_after() {
                    changes.push(Change {
                        task_id,
                        status,
                        event,
                    });
                }
            }
        }
    }
    if !created.0.is_empty() {
        sqlx::query(&format!(
            "insert into {schema}.tasks (task_id, ticket_id, status)
             select task_id, ticket_id, $3 from unnest($1::text[], $2::text[]) as n(task_id, ticket_id)
             on conflict (task_id) do nothing"
        ))
        .bind(&created.0)
        .bind(&created.1)
        .bind(text(TaskStatus::Pending))
        .execute(&mut *tx)
        .await?;
    }
    if !validations.is_empty() {
        sqlx::query(&format!(
            "update {schema}.tasks set validation = true where task_id = any($1)"
        ))
        .bind(&validations)
        .execute(&mut *tx)
        .await?;
    }
    if changes.is_empty() {
        return Ok(());
    }
    // Each task's last status of the batch; the rows say each task's ticket.
    let mut last: BTreeMap<&str, TaskStatus> = BTreeMap::new();
    for change in &changes {
        last.insert(change.task_id, change.status);
    }
    let (ids, statuses): (Vec<&str>, Vec<&str>) =
        last.iter().map(|(id, status)| (*id, text(*status))).unzip();
    let rows: Vec<(String, String, bool)> = sqlx::query_as(&format!(
        "update {schema}.tasks t set status = u.status
           from unnest($1::text[], $2::text[]) as u(task_id, status)
          where t.task_id = u.task_id
      returning t.task_id, t.ticket_id, t.validation"
    ))
    .bind(&ids)
    .bind(&statuses)
    .fetch_all(&mut *tx)
    .await?;
    let tasks: HashMap<String, (String, bool)> = rows
        .into_iter()
        .map(|(task, ticket, validation)| (task, (ticket, validation)))
        .collect();

    let mut asks: BTreeMap<&str, Ask> = BTreeMap::new();
    let mut finishing: BTreeMap<&str, &StoredEvent> = BTreeMap::new();
    let mut failures: Vec<(&str, &StoredEvent)> = Vec::new();
    for change in &changes {
        let Some((ticket, validation)) = tasks.get(change.task_id) else {
            continue;
        };
        let ticket = ticket.as_str();
        let to = match change.status {
            TaskStatus::Assigned => TicketStatus::Building,
            TaskStatus::Running if *validation => TicketStatus::Testing,
            TaskStatus::Completed | TaskStatus::Cancelled | TaskStatus::PendingValidation => {
                finishing.insert(ticket, change.event);
                continue;
            }
            TaskStatus::PermanentlyFailed | TaskStatus::TimedOut => {
                failures.push((ticket, change.event));
                continue;
            }
            _ => continue,
        };
        ask(&mut asks, ticket, to, change.event);
    }
    for (ticket, to) in finished_steps(tx, schema, finishing.keys().copied()).await? {
        if let Some((ticket, cause)) = finishing.get_key_value(ticket.as_str()) {
            let finished = Ask { to, cause };
            if asks
                .get(ticket)
                .is_none_or(|a| rank(a.to) <= rank(finished.to))
            {
                asks.insert(ticket, finished);
            }
        }
    }

    let mut settings = ProjectSettingsCache::default();
    for (ticket, Ask { to, cause }) in asks {
        let (state, events) = load::<Ticket>(tx, cause, ticket).await?;
        if events == 0
            || rank(state.status) >= rank(to)
            || !settings.auto_advance(tx, cause).await?
        {
            continue;
        }
        // An archived spec's tasks were cancelled with it, which finishes nothing.
        let finishes = matches!(to, TicketStatus::BuildingDone | TicketStatus::Done);
        if finishes && of_archived_spec(tx, cause, &state).await? {
            continue;
        }
        let context = CommandContext::caused_by(Actor::System(NAME), cause);
        advance(tx, cause, ticket, state, to, &context).await?;
    }
    for (ticket, event) in failures {
        if settings.auto_advance(tx, event).await? {
            block(tx, event, ticket).await?;
        }
    }
    Ok(())
}

/// Records that `cause` asks `ticket` to go to `to`, unless another change of the batch
/// asks it further.
fn ask<'a>(
    asks: &mut BTreeMap<&'a str, Ask<'a>>,
    ticket: &'a str,
    to: TicketStatus,
    cause: &'a StoredEvent,
) {
    if asks.get(ticket).is_none_or(|a| rank(a.to) <= rank(to)) {
        asks.insert(ticket, Ask { to, cause });
    }
}

/// Blocks `ticket` (`failing_checks`) for the task of `event`, which failed for good; its
/// own last error says why.
async fn block(
    tx: &mut PgConnection,
    event: &StoredEvent,
    ticket: &str,
) -> Result<(), ProjectionError> {
    let (task, _) = load::<Task>(tx, event, &event.aggregate_id).await?;
    let note = match task.last_error {
        Some(error) => format!("task {} failed for good: {error}", event.aggregate_id),
        None => format!("task {} failed for good", event.aggregate_id),
    };
    let block = TicketCommand::BlockTicket {
        reason: BlockReason::FailingChecks,
        note: Some(note),
        at: occurred_at(event),
    };
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    command(tx, event, ticket, block, &context).await.map(drop)
}

/// The projects' `auto_advance` as the batch reads them, each project read once.
#[derive(Default)]
struct ProjectSettingsCache {
    auto_advance: HashMap<String, bool>,
}

impl ProjectSettingsCache {
    /// Whether the project of `event`'s task lets tickets move by themselves.
    async fn auto_advance(
        &mut self,
        tx: &mut PgConnection,
        event: &StoredEvent,
    ) -> Result<bool, ProjectionError> {
        let Some(project_id) = event.metadata.get("project_id").and_then(|v| v.as_str()) else {
            return Ok(false);
        };
        if let Some(on) = self.auto_advance.get(project_id) {
            return Ok(*on);
        }
        let (project, _) = load::<Project>(tx, event, project_id).await?;
        let on = project.settings.auto_advance;
        self.auto_advance.insert(project_id.to_string(), on);
        Ok(on)
    }
}

/// A ticket status's place in the walk `backlog → … → done`.
fn rank(status: TicketStatus) -> Option<usize> {
    TicketStatus::ALL.iter().position(|s| *s == status)
}

/// How far each of `tickets` has come by its finished work: `done` once every task
/// completed (cancelled ones aside), `building-done` once all its work that is not a
/// validation completed or waits for its verdict; tickets with work left are not named.
async fn finished_steps(
    tx: &mut PgConnection,
    schema: &str,
    tickets: impl Iterator<Item = &str>,
) -> Result<Vec<(String, TicketStatus)>, ProjectionError> {
    let tickets: Vec<&str> = tickets.collect();
    if tickets.is_empty() {
        return Ok(Vec::new());
    }
    let counts: Vec<(String, i64, i64, i64)> = sqlx::query_as(&format!(
        "select ticket_id,
                count(*) filter (where status not in ($2, $3)),
                count(*) filter (where not validation and status not in ($2, $3, $4)),
                count(*) filter (where status in ($2, $4))
           from {schema}.tasks where ticket_id = any($1)
          group by ticket_id"
    ))
    .bind(&tickets)
    .bind(text(TaskStatus::Completed))
    .bind(text(TaskStatus::Cancelled))
    .bind(text(TaskStatus::PendingValidation))
    .fetch_all(&mut *tx)
    .await?;
    Ok(counts
        .into_iter()
        .filter_map(|(ticket, open, open_work, finished)| {
            let to = match (open, open_work, finished) {
                (_, _, 0) => return None,
                (0, _, _) => TicketStatus::Done,
                (_, 0, _) => TicketStatus::BuildingDone,
                _ => return None,
            };
            Some((ticket, to))
        })
        .collect())
}

/// Whether the ticket belongs to an archived spec: its tasks were cancelled with it, which
/// finishes nothing.
async fn of_archived_spec(
    tx: &mut PgConnection,
    event: &StoredEvent,
    ticket: &Ticket,
) -> Result<bool, ProjectionError> {
    let Some(spec_id) = ticket.spec_id else {
        return Ok(false);
    };
    let (spec, _) = load::<Spec>(tx, event, &spec_id.to_string()).await?;
    Ok(spec.phase == SpecPhase::Archived)
}

/// Moves `ticket` (as it stands in the batch) forward, one step at a time, until it is
/// `to`; never backwards.
async fn advance(
    tx: &mut PgConnection,
    event: &StoredEvent,
    ticket_id: &str,
    mut ticket: Ticket,
    to: TicketStatus,
    context: &CommandContext,
) -> Result<(), ProjectionError> {
    while rank(ticket.status) < rank(to) {
        let Some(next) = ticket.status.next() else {
            break;
        };
        let step = TicketCommand::TransitionTicket {
            to: next,
            note: Some(format!("tasks moved on ({})", event.reference())),
        };
        match command(tx, event, ticket_id, step, context).await? {
            Some(moved) => ticket = moved,
            // The ticket refused the step (it is blocked, say): leave it where it is.
            None => break,
        }
    }
    Ok(())
}

/// Runs `command` on the ticket in the batch's transaction: the ticket after it, or
/// `None` when the ticket refused it (logged and skipped) or it changed nothing; anything
/// else fails the batch.
async fn command(
    tx: &mut PgConnection,
    event: &StoredEvent,
    ticket_id: &str,
    command: TicketCommand,
    context: &CommandContext,
) -> Result<Option<Ticket>, ProjectionError> {
    match execute_in::<Ticket>(tx, ticket_id, command, context).await {
        Ok(committed) if committed.appended > 0 => Ok(Some(committed.state)),
        Ok(_) => Ok(None),
        Err(CommandError::Domain(refusal)) => {
            tracing::debug!(ticket = ticket_id, %refusal, "ticket_progress: the ticket refused");
            Ok(None)
        }
        Err(other) => Err(ProjectionError::payload(
            event,
            format!("moving ticket {ticket_id}: {other}"),
        )),
    }
}
