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

use futures_util::future::BoxFuture;
use omoi_domain::project::Project;
use omoi_domain::spec::{Spec, SpecPhase};
use omoi_domain::task::{Task, TaskEvent, TaskStatus};
use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand, TicketStatus};
use omoi_projections::ProjectionError;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::{effect, load, occurred_at, ProcessManager};

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
        Box::pin(task_changed(tx, schema, event))
    }
}

fn text(status: TaskStatus) -> &'static str {
    status.as_str()
}

async fn task_changed(
    tx: &mut PgConnection,
    schema: &str,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let change: TaskEvent = serde_json::from_value(event.payload.clone())
        .map_err(|e| ProjectionError::payload(event, e))?;
    if let TaskEvent::TaskCreated { ticket_id, .. } = &change {
        sqlx::query(&format!(
            "insert into {schema}.tasks (task_id, ticket_id, status) values ($1, $2, $3)
             on conflict (task_id) do nothing"
        ))
        .bind(&event.aggregate_id)
        .bind(ticket_id.to_string())
        .bind(text(TaskStatus::Pending))
        .execute(&mut *tx)
        .await?;
        return Ok(());
    }
    if let TaskEvent::TaskValidates { .. } = &change {
        sqlx::query(&format!(
            "update {schema}.tasks set validation = true where task_id = $1"
        ))
        .bind(&event.aggregate_id)
        .execute(&mut *tx)
        .await?;
        return Ok(());
    }
    let Some(status) = change.status_after() else {
        return Ok(());
    };
    let row: Option<(String, bool)> = sqlx::query_as(&format!(
        "update {schema}.tasks set status = $2 where task_id = $1
         returning ticket_id, validation"
    ))
    .bind(&event.aggregate_id)
    .bind(text(status))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((ticket, validation)) = row else {
        return Ok(());
    };
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    // What the change asks of the ticket; the project's setting and the ticket itself are
    // read only when it asks something (most events of a running ticket ask nothing).
    let to = match status {
        TaskStatus::Assigned => TicketStatus::Building,
        TaskStatus::Running if validation => TicketStatus::Testing,
        TaskStatus::Completed | TaskStatus::Cancelled | TaskStatus::PendingValidation => {
            match finished_step(tx, schema, &ticket).await? {
                Some(to) => to,
                None => return Ok(()),
            }
        }
        TaskStatus::PermanentlyFailed | TaskStatus::TimedOut => {
            if !auto_advance(tx, event).await? {
                return Ok(());
            }
            // The task's own last error says why.
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
            return effect::<Ticket>(tx, event, &ticket, block, &context).await;
        }
        _ => return Ok(()),
    };
    let (state, events) = load::<Ticket>(tx, event, &ticket).await?;
    if events == 0 || state.status.rank() >= to.rank() || !auto_advance(tx, event).await? {
        return Ok(());
    }
    // An archived spec's tasks were cancelled with it, which finishes nothing.
    let finishing = matches!(to, TicketStatus::BuildingDone | TicketStatus::Done);
    if finishing && of_archived_spec(tx, event, &state).await? {
        return Ok(());
    }
    advance(tx, event, &ticket, to, &context).await
}

/// How far a ticket's finished work takes it: `done` once every task completed
/// (cancelled ones aside), `building-done` once all its work that is not a validation
/// completed or waits for its verdict; `None` while work is left.
async fn finished_step(
    tx: &mut PgConnection,
    schema: &str,
    ticket: &str,
) -> Result<Option<TicketStatus>, ProjectionError> {
    let (open, open_work, finished): (i64, i64, i64) = sqlx::query_as(&format!(
        "select count(*) filter (where status not in ($2, $3)),
                count(*) filter (where not validation and status not in ($2, $3, $4)),
                count(*) filter (where status in ($2, $4))
           from {schema}.tasks where ticket_id = $1"
    ))
    .bind(ticket)
    .bind(text(TaskStatus::Completed))
    .bind(text(TaskStatus::Cancelled))
    .bind(text(TaskStatus::PendingValidation))
    .fetch_one(&mut *tx)
    .await?;
    Ok(match (open, open_work, finished) {
        (_, _, 0) => None,
        (0, _, _) => Some(TicketStatus::Done),
        (_, 0, _) => Some(TicketStatus::BuildingDone),
        _ => None,
    })
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

/// Whether the task's project lets tickets move by themselves (its `auto_advance`).
async fn auto_advance(tx: &mut PgConnection, event: &StoredEvent) -> Result<bool, ProjectionError> {
    let Some(project_id) = event.metadata.get("project_id").and_then(|v| v.as_str()) else {
        return Ok(false);
    };
    let (project, _) = load::<Project>(tx, event, project_id).await?;
    Ok(project.settings.auto_advance)
}

/// Moves the ticket forward toward `to`, every step in one command (as far as the ticket
/// allows); never backwards.
async fn advance(
    tx: &mut PgConnection,
    event: &StoredEvent,
    ticket_id: &str,
    to: TicketStatus,
    context: &CommandContext,
) -> Result<(), ProjectionError> {
    let walk = TicketCommand::AdvanceTicket {
        to,
        note: Some(format!("tasks moved on ({})", event.reference())),
    };
    effect::<Ticket>(tx, event, ticket_id, walk, context).await
}
