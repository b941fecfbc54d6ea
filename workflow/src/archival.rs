//! `spec_archival`: stopping a spec stops its work.
//!
//! * **Archived**, a spec takes no more work: every open task on a ticket naming it — its
//!   plan's, one discovered on them, one added by hand, one on a hand-made ticket naming
//!   it — is cancelled, and admission refuses new work on it (the dispatcher never ran
//!   such a task anyway: `Queue::is_ready`). A task created on one of its tickets after
//!   the archival in the log's order (admitted just before it committed, or a plan's task
//!   `plan_execution` created from an approval it read before) is cancelled as its
//!   creation passes.
//! * **Completed** (by `spec_completion` once its plan's tickets are done, or by a person
//!   while its work is open), its plan's work ends: every open task on its plan's tickets
//!   is cancelled, and a plan's task created after the completion (from an approval read
//!   before it) is cancelled as it passes. Tickets a person made naming the spec keep
//!   their work, and take more.
//!
//! Either way round, every such task is cancelled once, whichever of the two events this
//! manager reads first. A completed spec's workflow stays counted, closed as a finished
//! one; an archived executing spec's is given back to the organization's billing account
//! (its usage and any credits it took), as a workflow whose start failed is given back,
//! unless agents worked on one of its tasks before the archival (in the log's order,
//! however late this manager reads it).

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
use crate::execution::{created_by, last_approval};
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

/// The spec whose plan's approval created the task `event` created: a task's creation by
/// `plan_execution`, caused by a `Spec/<id>/<sequence>` event.
fn planned_spec(event: &StoredEvent) -> Option<&str> {
    if !is_task_creation(event) {
        return None;
    }
    let by_plan_execution = Actor::System(crate::execution::NAME);
    if !event
        .metadata
        .actor()
        .is_some_and(|actor| by_plan_execution.wrote(actor))
    {
        return None;
    }
    let cause = event.metadata.causation_id()?;
    let spec = cause.strip_prefix("Spec/")?.split('/').next()?;
    Some(spec).filter(|spec| !spec.is_empty())
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

/// The creations of `aggregate_type` whose payload holds `value` at `path`, as the
/// partial indexes of creations (migration `creations_by_reference`) spell their
/// expression and predicate: the planner matches an index's expression only to the same
/// expression, never to a parameter's path, and uses a partial index only where the
/// query implies its predicate — which a generic plan's parameter for the type never
/// does (it then walked every creation of the type by the primary key).
fn creations_naming(aggregate_type: &str, path: [&str; 2], value: &str) -> String {
    format!(
        "select aggregate_id from events
          where aggregate_type = '{aggregate_type}' and sequence = 1
            and payload #>> '{{{},{}}}' {value}",
        path[0], path[1]
    )
}

/// Cancels the tasks among `created` (task creations) that a stop of their ticket's spec
/// covers — any on an archived spec's ticket, a plan's own on a completed spec's —
/// created after the stop was handled, so not there to be cancelled with the rest.
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
    // Each ticket's creation looked up by the key, then each of their specs' stop once; of
    // a spec only the stop, not its history (a plan's text is most of it). An archival
    // after a completion is the stop that counts.
    let sql = format!(
        "with named as (
             select created.task, first.spec
               from unnest($1::text[], $2::text[]) as created(task, ticket)
               cross join lateral (
                   select payload #>> '{{{},{}}}' as spec from events
                    where aggregate_type = $3 and aggregate_id = created.ticket
                      and sequence = 1
               ) as first
              where first.spec is not null),
         stops as (
             select specs.spec, stop.event_type
               from (select distinct spec from named) as specs
               cross join lateral (
                   select event_type from events
                    where aggregate_type = $4 and aggregate_id = specs.spec
                      and event_type in ($5, $6)
                    order by sequence desc
                    limit 1
               ) as stop)
         select named.task, named.spec, stops.event_type
           from named join stops using (spec)",
        TICKET_SPEC[0], TICKET_SPEC[1],
    );
    let stopped: Vec<(String, String, String)> = sqlx::query_as(&sql)
        .bind(&tasks)
        .bind(&their_tickets)
        .bind(Ticket::TYPE)
        .bind(Spec::TYPE)
        .bind(SPEC_ARCHIVED)
        .bind(SPEC_COMPLETED)
        .fetch_all(&mut *tx)
        .await?;
    let stopped: BTreeMap<String, (String, String)> = stopped
        .into_iter()
        .map(|(task, spec, stop)| (task, (spec, stop)))
        .collect();
    let (Some(&first), false) = (created.first(), stopped.is_empty()) else {
        return Ok(());
    };
    let mut known = Aggregates::<Task>::new();
    known.read(tx, first, stopped.keys().cloned()).await?;
    let mut effects = Effects::default();
    for event in created {
        let Some((spec, stop_type)) = stopped.get(&event.aggregate_id) else {
            continue;
        };
        let covered =
            stop_type == SPEC_ARCHIVED || planned_spec(event).is_some_and(|of| of == spec);
        let open = known
            .get(&event.aggregate_id)
            .is_some_and(|task| !task.status.is_final());
        if !(covered && open) {
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

/// A spec stopped by `event` (its archival or its completion): every open task it covers
/// created before the stop in the log's order is cancelled, and an executing spec's
/// workflow settled.
async fn stopped(tx: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let history = aggregate_history(&mut *tx, Spec::TYPE, &event.aggregate_id).await?;
    let spec: Spec = fold_until(&history, Some(event.sequence))
        .map_err(|e| ProjectionError::payload(event, e))?;
    let (Some(spec_id), Some(organization_id)) = (spec.id, spec.organization_id) else {
        return Ok(());
    };
    let archival = event.event_type == SPEC_ARCHIVED;
    // Only an executing spec has a workflow to settle (its plan's approval started it);
    // only an executing spec completes.
    let executing = !archival || spec.phase_before_archive == Some(SpecPhase::Executing);
    let tickets = match archival {
        true => tickets_naming(tx, &event.aggregate_id).await?,
        false => {
            let up_to_stop = history
                .iter()
                .position(|e| e.sequence > event.sequence)
                .unwrap_or(history.len());
            match (last_approval(&history[..up_to_stop]), spec.plan.as_ref()) {
                (Some(approval), Some(plan)) => plan
                    .tickets
                    .iter()
                    .map(|ticket| created_by(&approval, &ticket.key).to_string())
                    .collect(),
                _ => Vec::new(),
            }
        }
    };
    let tasks = tasks_on(tx, &tickets).await?;
    let tasks = histories(&mut *tx, Task::TYPE, &tasks).await?;
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    let mut known = Aggregates::<Task>::new();
    let mut effects = Effects::default();
    let mut worked = false;
    for history in tasks.chunk_by(|a, b| a.aggregate_id == b.aggregate_id) {
        // The task as it was at the stop in the log's order: a start that came after it
        // (the task was still open until this cancels it) does not decide, so that
        // handling the stop at once or late decides the same. A task created after it is
        // the creation's to cancel.
        let before_stop: Vec<StoredEvent> = history
            .iter()
            .filter(|e| e.cursor() <= event.cursor())
            .cloned()
            .collect();
        if before_stop.is_empty() {
            continue;
        }
        let then: Task =
            fold_until(&before_stop, None).map_err(|e| ProjectionError::payload(event, e))?;
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
    tracing::info!(spec = %spec_id, worked, stopped = stopped_as(&event.event_type), "spec stopped: the open tasks it covers cancelled, its workflow given back unless work was done");
    Ok(())
}

/// The tickets whose creation names spec `spec` (its plan's and any made by hand), by
/// the index of ticket creations by spec.
async fn tickets_naming(tx: &mut PgConnection, spec: &str) -> Result<Vec<String>, ProjectionError> {
    let sql = creations_naming(Ticket::TYPE, TICKET_SPEC, "= $1");
    Ok(sqlx::query_scalar(&sql)
        .bind(spec)
        .fetch_all(&mut *tx)
        .await?)
}

/// The tasks whose creation names one of `tickets`, by the index of task creations by
/// ticket.
async fn tasks_on(
    tx: &mut PgConnection,
    tickets: &[String],
) -> Result<Vec<String>, ProjectionError> {
    if tickets.is_empty() {
        return Ok(Vec::new());
    }
    let sql = creations_naming(Task::TYPE, TASK_TICKET, "= any($1)");
    Ok(sqlx::query_scalar(&sql)
        .bind(tickets)
        .fetch_all(&mut *tx)
        .await?)
}

/// Whether an agent worked on `task`: one started it, in any attempt (also one a
/// Guardian then took the task from).
fn did_work(task: &Task) -> bool {
    task.starts > 0
}

#[cfg(test)]
mod tests {
    use super::planned_spec;
    use omoi_store::StoredEvent;
    use serde_json::json;

    fn task_created(sequence: i64, metadata: serde_json::Value) -> StoredEvent {
        StoredEvent {
            aggregate_type: "Task".into(),
            sequence,
            ..crate::ticket_event("TaskCreated", json!({"TaskCreated": {}}), metadata)
        }
    }

    /// Only a task's creation by `plan_execution` names the spec whose plan it came from.
    #[test]
    fn only_a_plans_task_creation_names_its_spec() {
        let planned = json!({"actor": "system:plan_execution", "causation_id": "Spec/s1/7"});
        assert_eq!(planned_spec(&task_created(1, planned.clone())), Some("s1"));
        assert_eq!(planned_spec(&task_created(2, planned.clone())), None);
        let by_hand = json!({"actor": "user:01a2", "causation_id": null});
        assert_eq!(planned_spec(&task_created(1, by_hand)), None);
        let spawned = json!({"actor": "system:phase_tasks", "causation_id": "Ticket/t1/1"});
        assert_eq!(planned_spec(&task_created(1, spawned)), None);
        let not_a_spec = json!({"actor": "system:plan_execution", "causation_id": "Ticket/t1/1"});
        assert_eq!(planned_spec(&task_created(1, not_a_spec)), None);
        let ticket = crate::ticket_event("TicketCreated", json!({}), planned);
        assert_eq!(planned_spec(&ticket), None);
    }
}
