//! `plan_execution`: on `SpecPlanApproved`, every ticket and task of the spec's plan is
//! created — tickets with the spec's id, tasks in their ticket with their dependencies
//! translated from keys to task ids — in plan order, dependencies first. Its `implement`
//! tasks must pass validation unless the project's `validation_required` was off at the
//! approval (in the log's order).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use futures_util::future::BoxFuture;
use omoi_domain::billing::{BillingAccount, BillingCommand};
use omoi_domain::common::Phase;
use omoi_domain::project::Project;
use omoi_domain::spec::{Plan, PlannedTask, Spec, SpecEvent};
use omoi_domain::task::{Task, TaskCommand, ValidationPolicy};
use omoi_domain::ticket::{Ticket, TicketCommand};
use omoi_projections::ProjectionError;
use omoi_store::log::{fold_until, histories};
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::admission::project_takes_work;
use crate::aggregates::{stops_specs_work, Aggregates, Effects};
use crate::ProcessManager;

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "plan_execution";

/// The plan's task type whose work must pass validation, unless the project's
/// `validation_required` is off.
pub const IMPLEMENT: &str = "implement";

pub struct PlanExecution;

impl ProcessManager for PlanExecution {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Spec" && event.event_type == "SpecPlanApproved"
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(execute_all(tx, events))
    }
}

/// The id of what `event` creates for plan key `key`: the same on every replay.
pub fn created_id(event: &StoredEvent, key: &str) -> Uuid {
    created_by(&event.reference(), key)
}

/// [`created_id`] from the approval's reference (`Spec/<id>/<sequence>`).
pub fn created_by(approval: &str, key: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("omoi/{NAME}/{approval}/{key}").as_bytes(),
    )
}

/// The reference of the last plan approval in a spec's `history` (its whole history, or
/// a prefix of it): what the ids of the plan's tickets and tasks derive from.
pub fn last_approval(history: &[StoredEvent]) -> Option<String> {
    history
        .iter()
        .rev()
        .find(|e| e.event_type == "SpecPlanApproved")
        .map(StoredEvent::reference)
}

/// Creates the tickets and tasks of every plan the batch approved: the specs and their
/// projects are read with one query each, and everything is created with one statement.
async fn execute_all(
    tx: &mut PgConnection,
    events: Vec<&StoredEvent>,
) -> Result<(), ProjectionError> {
    let Some(&first) = events.first() else {
        return Ok(());
    };
    let spec_ids: Vec<String> = events
        .iter()
        .map(|e| e.aggregate_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let spec_events = histories(&mut *tx, "Spec", &spec_ids).await?;
    let by_spec: HashMap<&str, &[StoredEvent]> = spec_events
        .chunk_by(|a, b| a.aggregate_id == b.aggregate_id)
        .filter_map(|history| Some((history.first()?.aggregate_id.as_str(), history)))
        .collect();
    let mut approved = Vec::with_capacity(events.len());
    for event in events {
        let history = by_spec
            .get(event.aggregate_id.as_str())
            .copied()
            .unwrap_or_default();
        // Archived or completed by hand since (read here whole): nothing is created.
        // `spec_archival`, a build of its own, may have handled that already, finding
        // nothing to cancel, and would never see what came after it.
        if history.iter().any(stops_specs_work) {
            continue;
        }
        let spec: Spec = fold_until(history, Some(event.sequence))
            .map_err(|e| ProjectionError::payload(event, e))?;
        approved.push((event, spec));
    }
    let project_ids: Vec<String> = approved
        .iter()
        .filter_map(|(_, spec)| spec.project_id)
        .map(|id| id.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let project_events = histories(&mut *tx, Project::TYPE, &project_ids).await?;
    let project_histories: HashMap<&str, &[StoredEvent]> = project_events
        .chunk_by(|a, b| a.aggregate_id == b.aggregate_id)
        .filter_map(|history| Some((history.first()?.aggregate_id.as_str(), history)))
        .collect();
    let mut effects = Effects::default();
    let mut accounts = Aggregates::<BillingAccount>::new();
    for (event, spec) in approved {
        let Some(project_id) = spec.project_id else {
            return Err(ProjectionError::payload(event, "a spec without a project"));
        };
        let history = project_histories
            .get(project_id.to_string().as_str())
            .copied()
            .unwrap_or_default();
        // The approval checked that the project takes work; one archived since gets
        // nothing, and the workflow the approval counted is given back.
        let now: Project =
            fold_until(history, None).map_err(|e| ProjectionError::payload(event, e))?;
        if let Err(refusal) = project_takes_work(project_id, &now) {
            tracing::warn!(spec = %event.aggregate_id, %refusal, "plan approved in a project archived since: not executed");
            give_back(tx, event, &spec, &mut accounts, &mut effects).await?;
            continue;
        }
        // The settings the plan was approved under: the project before the approval in
        // the log's order (by transaction, then position), so that reading the approval
        // late, or again in a replay, decides as reading it at once.
        let then: Vec<StoredEvent> = history
            .iter()
            .filter(|e| e.cursor() <= event.cursor())
            .cloned()
            .collect();
        let then: Project =
            fold_until(&then, None).map_err(|e| ProjectionError::payload(event, e))?;
        execute(
            event,
            &spec,
            then.settings.validation_required,
            &mut effects,
        )
        .await?;
    }
    effects.append(tx, first).await
}

/// Gives back the workflow counted by the approval `event` of `spec`, which is not
/// executed.
async fn give_back(
    tx: &mut PgConnection,
    event: &StoredEvent,
    spec: &Spec,
    accounts: &mut Aggregates<BillingAccount>,
    effects: &mut Effects,
) -> Result<(), ProjectionError> {
    let (Some(organization_id), Some(spec_id)) = (spec.organization_id, spec.id) else {
        return Err(ProjectionError::payload(
            event,
            "a spec without organization",
        ));
    };
    let command = BillingCommand::CancelWorkflow {
        organization_id,
        spec_id,
        at: approved_at(event)?,
    };
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    accounts
        .decide(
            effects,
            tx,
            event,
            &organization_id.to_string(),
            command,
            &context,
        )
        .await
}

/// Decides the creations of the tickets and tasks of the plan `spec` had when `event`
/// approved it, in a project whose `validation_required` was as given then.
async fn execute(
    event: &StoredEvent,
    spec: &Spec,
    validation_required: bool,
    effects: &mut Effects,
) -> Result<(), ProjectionError> {
    let (Some(plan), Some(spec_id), Some(organization_id), Some(project_id)) = (
        spec.plan.as_ref(),
        spec.id,
        spec.organization_id,
        spec.project_id,
    ) else {
        return Err(ProjectionError::payload(
            event,
            "a plan approved without a plan",
        ));
    };
    let at = approved_at(event)?;
    let validation = |task: &PlannedTask| {
        (validation_required && task.task_type == IMPLEMENT).then(ValidationPolicy::default)
    };
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    let task_ids: BTreeMap<&str, Uuid> = plan
        .tasks()
        .map(|(_, task)| (task.key.as_str(), created_id(event, &task.key)))
        .collect();
    for ticket in &plan.tickets {
        let ticket_id = created_id(event, &ticket.key);
        let command = TicketCommand::CreateTicket {
            ticket_id,
            organization_id,
            project_id,
            spec_id: Some(spec_id),
            title: ticket.title.clone(),
            description: ticket.description.clone(),
            priority: ticket.priority,
            phase: Phase::default(),
            plan_key: Some(ticket.key.clone()),
        };
        effects
            .create::<Ticket>(event, ticket_id, command, &context)
            .await?;
    }
    for task in in_dependency_order(plan) {
        let (ticket, _) = plan
            .tasks()
            .find(|(_, t)| t.key == task.key)
            .ok_or_else(|| ProjectionError::payload(event, "a task outside the plan"))?;
        let task_id = task_ids[task.key.as_str()];
        let command = TaskCommand::CreateTask {
            task_id,
            organization_id,
            project_id,
            ticket_id: created_id(event, &ticket.key),
            title: task.title.clone(),
            description: task.description.clone(),
            task_type: task.task_type.clone(),
            phase: Phase::default(),
            priority: ticket.priority,
            depends_on: task
                .depends_on
                .iter()
                .filter_map(|key| task_ids.get(key.as_str()).copied())
                .collect(),
            required_capabilities: task.required_capabilities.clone(),
            max_retries: None,
            timeout_seconds: None,
            discovery: None,
            validation: validation(task),
            validates: None,
            plan_key: Some(task.key.clone()),
            at,
        };
        effects
            .create::<Task>(event, task_id, command, &context)
            .await?;
    }
    tracing::info!(spec = %spec_id, tickets = plan.tickets.len(), "plan executed");
    Ok(())
}

/// Creates aggregate `id` unless it exists (a replay of the causing event), in one
/// statement.
pub(crate) async fn create<A>(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    command: A::Command,
    context: &CommandContext,
) -> Result<(), ProjectionError>
where
    A: cqrs_es::Aggregate<Services = ()> + omoi_domain::common::Scoped + Clone,
{
    let mut effects = Effects::default();
    effects.create::<A>(event, id, command, context).await?;
    effects.append(tx, event).await
}

/// The tasks of `plan`, each after the tasks it waits for (the plan is acyclic).
fn in_dependency_order(plan: &Plan) -> Vec<&PlannedTask> {
    let tasks: Vec<&PlannedTask> = plan.tasks().map(|(_, task)| task).collect();
    let mut placed: Vec<&PlannedTask> = Vec::with_capacity(tasks.len());
    let mut done = std::collections::BTreeSet::new();
    while placed.len() < tasks.len() {
        let before = placed.len();
        for task in &tasks {
            let ready = task.depends_on.iter().all(|d| done.contains(d.as_str()));
            if !done.contains(task.key.as_str()) && ready {
                done.insert(task.key.as_str());
                placed.push(task);
            }
        }
        if placed.len() == before {
            // Not reachable for a validated plan; keep the rest in plan order.
            placed.extend(tasks.iter().filter(|t| !done.contains(t.key.as_str())));
            break;
        }
    }
    placed
}

fn approved_at(event: &StoredEvent) -> Result<DateTime<Utc>, ProjectionError> {
    match event.payload.decode::<SpecEvent>() {
        Ok(SpecEvent::SpecPlanApproved { at }) => Ok(at),
        Ok(_) => Err(ProjectionError::payload(event, "not a plan approval")),
        Err(e) => Err(ProjectionError::payload(event, e)),
    }
}
