//! `spec_archival`: a stopped spec — archived, or completed (a person may complete one
//! while its work is open) — takes no more work. At the stop every open task on its
//! tickets is cancelled: its plan's, and any discovered on them or added by hand. A task
//! created on one of its tickets after the stop in the log's order (`plan_execution` read
//! the approval before the stop committed; an agent's discovery or a person's request
//! admitted just before it) is cancelled as its creation passes. Either way round, every
//! such task is cancelled once, whichever of the two events this manager reads first.
//!
//! A completed spec's workflow stays counted, closed as a finished one; an archived
//! executing spec's is given back to the organization's billing account (its usage and
//! any credits it took), as a workflow whose start failed is given back, unless agents
//! worked on one of its tasks before the archival (in the log's order, however late this
//! manager reads it).

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use futures_util::future::BoxFuture;
use omoi_domain::billing::{BillingAccount, BillingCommand};
use omoi_domain::spec::{Spec, SpecPhase};
use omoi_domain::task::{Task, TaskCommand, TaskEvent};
use omoi_domain::ticket::Ticket;
use omoi_projections::ProjectionError;
use omoi_store::log::{aggregate_history, fold_until, histories};
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::aggregates::{
    stops_specs_work, Aggregates, Effects, SPEC_ARCHIVED, SPEC_COMPLETED, TICKET_SPEC,
};
use crate::{occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "spec_archival";

/// Where a task's creation names its ticket in the stored payload.
const TASK_TICKET: [&str; 2] = ["TaskCreated", "ticket_id"];

pub struct SpecArchival;

impl ProcessManager for SpecArchival {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        stops_specs_work(event) || is_task_creation(event)
    }

    /// The stops (archivals, completions) one by one; the new tasks with one read of
    /// which of their tickets' specs were stopped.
    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let (created, stops): (Vec<&StoredEvent>, Vec<&StoredEvent>) = events
                .into_iter()
                .partition(|event| event.aggregate_type == Task::TYPE);
            for event in stops {
                stopped(tx, event).await?;
            }
            created_after_stop(tx, created).await
        })
    }
}

fn is_task_creation(event: &StoredEvent) -> bool {
    event.aggregate_type == Task::TYPE && event.sequence == 1
}

/// How a spec was stopped, as a cancelled task's reason says.
fn stopped_as(stop_type: &str) -> &'static str {
    match stop_type == SPEC_ARCHIVED {
        true => "archived",
        false => "completed",
    }
}

fn cancellation(stop_type: &str, event: &StoredEvent) -> TaskCommand {
    TaskCommand::CancelTask {
        reason: Some(format!("its spec was {}", stopped_as(stop_type))),
        at: occurred_at(event),
    }
}

/// Cancels the tasks among `created` (task creations) whose ticket's spec was stopped
/// (archived or completed): created after the stop was handled, they were not there to
/// be cancelled with the rest.
async fn created_after_stop(
    tx: &mut PgConnection,
    created: Vec<&StoredEvent>,
) -> Result<(), ProjectionError> {
    let mut tickets = BTreeMap::new();
    for event in &created {
        let TaskEvent::TaskCreated { ticket_id, .. } = event
            .payload
            .decode()
            .map_err(|e| ProjectionError::payload(event, e))?
        else {
            return Err(ProjectionError::payload(
                event,
                "the first event is no creation",
            ));
        };
        tickets.insert(event.aggregate_id.clone(), ticket_id.to_string());
    }
    if tickets.is_empty() {
        return Ok(());
    }
    let (tasks, their_tickets): (Vec<String>, Vec<String>) = tickets.into_iter().unzip();
    // Each ticket's creation and its spec's stop looked up by the key; of the spec only
    // the stop, not its history (a plan's text is most of it). An archival after a
    // completion is the stop that counts.
    let stopped: BTreeMap<String, String> = sqlx::query_as(
        "select created.task, stop.event_type
           from unnest($1::text[], $2::text[]) as created(task, ticket)
           cross join lateral (
               select payload #>> $4::text[] as spec from events
                where aggregate_type = $3 and aggregate_id = created.ticket and sequence = 1
           ) as ticket
           cross join lateral (
               select event_type from events
                where aggregate_type = $5 and aggregate_id = ticket.spec
                  and event_type in ($6, $7)
                order by sequence desc
                limit 1
           ) as stop",
    )
    .bind(&tasks)
    .bind(&their_tickets)
    .bind(Ticket::TYPE)
    .bind(&TICKET_SPEC[..])
    .bind(Spec::TYPE)
    .bind(SPEC_ARCHIVED)
    .bind(SPEC_COMPLETED)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let (Some(&first), false) = (created.first(), stopped.is_empty()) else {
        return Ok(());
    };
    let mut known = Aggregates::<Task>::new();
    known.read(tx, first, stopped.keys().cloned()).await?;
    let mut effects = Effects::default();
    for event in created {
        let Some(stop_type) = stopped.get(&event.aggregate_id) else {
            continue;
        };
        if known
            .get(&event.aggregate_id)
            .is_none_or(|task| task.status.is_final())
        {
            continue;
        }
        let context = CommandContext::caused_by(Actor::System(NAME), event);
        let cancel = cancellation(stop_type, event);
        known
            .decide(
                &mut effects,
                tx,
                event,
                &event.aggregate_id,
                cancel,
                &context,
            )
            .await?;
    }
    effects.append(tx, first).await
}

/// A spec stopped by `event` (its archival or its completion): every open task on its
/// tickets created before the stop in the log's order is cancelled, and an executing
/// spec's workflow settled.
async fn stopped(tx: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let history = aggregate_history(&mut *tx, Spec::TYPE, &event.aggregate_id).await?;
    let spec: Spec = fold_until(&history, Some(event.sequence))
        .map_err(|e| ProjectionError::payload(event, e))?;
    let (Some(spec_id), Some(organization_id), Some(project_id)) =
        (spec.id, spec.organization_id, spec.project_id)
    else {
        return Ok(());
    };
    let archival = event.event_type == SPEC_ARCHIVED;
    // Only an executing spec has a workflow to settle (its plan's approval started it);
    // only an executing spec completes.
    let executing = !archival || spec.phase_before_archive == Some(SpecPhase::Executing);
    let tasks = tasks_on_specs_tickets(tx, project_id, spec_id).await?;
    let tasks = histories(&mut *tx, Task::TYPE, &tasks).await?;
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    let mut known = Aggregates::<Task>::new();
    let mut effects = Effects::default();
    let mut worked = false;
    for history in tasks.chunk_by(|a, b| a.aggregate_id == b.aggregate_id) {
        // The task as it was at the stop in the log's order: a start that came after it
        // (the task was still open until this cancels it) does not decide, so that
        // handling the stop at once or late decides the same. A task created after it is
        // cancelled as its creation passes.
        let before_stop = history
            .iter()
            .position(|e| e.cursor() > event.cursor())
            .unwrap_or(history.len());
        if before_stop == 0 {
            continue;
        }
        let then: Task = fold_until(&history[..before_stop], None)
            .map_err(|e| ProjectionError::payload(event, e))?;
        worked |= did_work(&then);
        known.know(event, history)?;
        let id = &history[0].aggregate_id;
        if known.get(id).is_some_and(|task| !task.status.is_final()) {
            let cancel = cancellation(&event.event_type, event);
            known
                .decide(&mut effects, tx, event, id, cancel, &context)
                .await?;
        }
    }
    if executing {
        // A completed spec's workflow stays counted, as `spec_completion` closes it. An
        // archived one is given back only when no agent worked on it: else archiving
        // after the work was done would give every workflow back.
        let at = occurred_at(event);
        let settle = match archival && !worked {
            false => BillingCommand::FinishWorkflow {
                organization_id,
                spec_id,
                at,
            },
            true => BillingCommand::CancelWorkflow {
                organization_id,
                spec_id,
                at,
            },
        };
        let account = organization_id.to_string();
        Aggregates::<BillingAccount>::new()
            .decide(&mut effects, tx, event, &account, settle, &context)
            .await?;
    }
    effects.append(tx, event).await?;
    tracing::info!(spec = %spec_id, worked, stopped = stopped_as(&event.event_type), "spec stopped: the open tasks on its tickets cancelled, its workflow given back unless work was done");
    Ok(())
}

/// Every task on a ticket of spec `spec_id` (its plan's, and any discovered on them or
/// added by hand), from the creations in its project's log: what a stop cancels. Read
/// through `events_by_project`, once per stop.
async fn tasks_on_specs_tickets(
    tx: &mut PgConnection,
    project_id: uuid::Uuid,
    spec_id: uuid::Uuid,
) -> Result<Vec<String>, ProjectionError> {
    let tasks = sqlx::query_scalar(
        "with created as materialized (
             select aggregate_type, aggregate_id, payload from events
              where metadata ? 'project_id' and metadata ->> 'project_id' = $1
                and sequence = 1 and aggregate_type in ($2, $3))
         select task.aggregate_id from created as task
          where task.aggregate_type = $3
            and task.payload #>> $5::text[] in (
                select ticket.aggregate_id from created as ticket
                 where ticket.aggregate_type = $2 and ticket.payload #>> $4::text[] = $6)
          order by task.aggregate_id",
    )
    .bind(project_id.to_string())
    .bind(Ticket::TYPE)
    .bind(Task::TYPE)
    .bind(&TICKET_SPEC[..])
    .bind(&TASK_TICKET[..])
    .bind(spec_id.to_string())
    .fetch_all(&mut *tx)
    .await?;
    Ok(tasks)
}

/// Whether an agent worked on `task`: one started it, in any attempt (also one a
/// Guardian then took the task from).
fn did_work(task: &Task) -> bool {
    task.starts > 0
}
