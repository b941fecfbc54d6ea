//! `spec_archival`: archiving an executing spec, or completing it (a person may while its
//! plan's work is open), stops its work: every open task of its plan is cancelled. A
//! completed spec's workflow stays counted, closed as a finished one; an archived spec's is
//! given back to the organization's billing account (its usage and any credits it took),
//! as a workflow whose start failed is given back, unless agents worked on it before the
//! archival (in the log's order, however late this manager reads it).
//!
//! A plan's task that `plan_execution` creates after the spec stopped (it read the
//! approval before the stop committed, and this build handled the stop first, finding the
//! task not there) comes later in the stream: its creation, caused by the approval of a
//! spec stopped by then, is cancelled when it passes. Either way round, every open task of
//! a stopped spec's plan is cancelled once.

use std::collections::BTreeSet;

use cqrs_es::Aggregate;
use futures_util::future::BoxFuture;
use omoi_domain::billing::{BillingAccount, BillingCommand};
use omoi_domain::spec::{Spec, SpecPhase};
use omoi_domain::task::{Task, TaskCommand};
use omoi_projections::ProjectionError;
use omoi_store::log::{aggregate_history, fold_until};
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::aggregates::{stops_specs_work, SPEC_ARCHIVED, SPEC_COMPLETED};
use crate::execution::{created_by, last_approval};
use crate::{effect, load, occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "spec_archival";

pub struct SpecArchival;

impl ProcessManager for SpecArchival {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        stops_specs_work(event) || planned_spec(event).is_some()
    }

    /// The stops (archivals, completions) one by one; the plans' new tasks with
    /// one read of which of their specs were stopped.
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
                archived(tx, event).await?;
            }
            created_after_archival(tx, created).await
        })
    }
}

/// The spec whose plan's approval created the task `event` created: a task's creation by
/// `plan_execution`, caused by a `Spec/<id>/<sequence>` event.
fn planned_spec(event: &StoredEvent) -> Option<&str> {
    if event.aggregate_type != Task::TYPE || event.sequence != 1 {
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

/// Cancels the tasks among `created` (plans' new tasks) whose spec was stopped (archived
/// or completed): created after the stop was handled, they were not there to be cancelled
/// with the rest.
async fn created_after_archival(
    tx: &mut PgConnection,
    created: Vec<&StoredEvent>,
) -> Result<(), ProjectionError> {
    let specs: Vec<&str> = created
        .iter()
        .filter_map(|event| planned_spec(event))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if specs.is_empty() {
        return Ok(());
    }
    // Each spec looked up by the key; only the event that stopped it, not its history (a
    // plan's text is most of it).
    let stopped: BTreeSet<String> = sqlx::query_scalar(
        "select e.aggregate_id from unnest($1::text[]) as wanted(id)
           cross join lateral (
               select aggregate_id from events
                where aggregate_type = $2 and aggregate_id = wanted.id
                  and event_type in ($3, $4)
                limit 1) as e",
    )
    .bind(&specs)
    .bind(Spec::TYPE)
    .bind(SPEC_ARCHIVED)
    .bind(SPEC_COMPLETED)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    for event in created {
        if !planned_spec(event).is_some_and(|spec| stopped.contains(spec)) {
            continue;
        }
        let (task, _) = load::<Task>(tx, event, &event.aggregate_id).await?;
        if task.status.is_final() {
            continue;
        }
        let cancel = TaskCommand::CancelTask {
            reason: Some("its spec was archived or completed".into()),
            at: occurred_at(event),
        };
        let context = CommandContext::caused_by(Actor::System(NAME), event);
        effect::<Task>(tx, event, &event.aggregate_id, cancel, &context).await?;
    }
    Ok(())
}

/// A spec stopped by `event`: archived (only an executing one had work to stop), or
/// completed (only an executing spec completes).
async fn archived(tx: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let history = aggregate_history(&mut *tx, "Spec", &event.aggregate_id).await?;
    let spec: Spec = fold_until(&history, Some(event.sequence))
        .map_err(|e| ProjectionError::payload(event, e))?;
    let archival = event.event_type == SPEC_ARCHIVED;
    let was_executing = !archival || spec.phase_before_archive == Some(SpecPhase::Executing);
    let (true, Some(plan), Some(spec_id), Some(organization_id)) = (
        was_executing,
        spec.plan.as_ref(),
        spec.id,
        spec.organization_id,
    ) else {
        return Ok(());
    };
    let stopped = if archival { "archived" } else { "completed" };
    let up_to_stop = history
        .iter()
        .position(|e| e.sequence > event.sequence)
        .unwrap_or(history.len());
    let Some(approval) = last_approval(&history[..up_to_stop]) else {
        return Ok(());
    };
    let at = occurred_at(event);
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    let mut worked = false;
    for (_, planned) in plan.tasks() {
        let id = created_by(&approval, &planned.key).to_string();
        let history = aggregate_history(&mut *tx, Task::TYPE, &id).await?;
        if history.is_empty() {
            continue;
        }
        // Work done before the stop in the log's order: a start that came after it (the
        // task was still open until this cancels it) does not decide, so that handling
        // the stop at once or late decides the same.
        let before_stop = history
            .iter()
            .position(|e| e.cursor() > event.cursor())
            .unwrap_or(history.len());
        let then: Task = fold_until(&history[..before_stop], None)
            .map_err(|e| ProjectionError::payload(event, e))?;
        worked |= did_work(&then);
        let task: Task =
            fold_until(&history, None).map_err(|e| ProjectionError::payload(event, e))?;
        if task.status.is_final() {
            continue;
        }
        let cancel = TaskCommand::CancelTask {
            reason: Some(format!("its spec was {stopped}")),
            at,
        };
        effect::<Task>(tx, event, &id, cancel, &context).await?;
    }
    // A completed spec's workflow stays counted, as `spec_completion` closes it. An
    // archived one is given back only when no agent worked on it: else archiving after
    // the work was done would give every workflow back.
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
    effect::<BillingAccount>(tx, event, &account, settle, &context).await?;
    tracing::info!(spec = %spec_id, worked, stopped, "executing spec stopped: its work cancelled, its workflow given back unless work was done");
    Ok(())
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
