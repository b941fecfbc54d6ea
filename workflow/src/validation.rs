//! `validation`: work submitted for validation gets a validation task, run by an agent
//! other than the implementer; its verdict completes the work or sends it back for
//! revision (the task aggregate decides which, by its revisions left).
//!
//! * `TaskSubmittedForValidation` → a task of type `validate` in the same ticket, whose id
//!   derives from the submission ([`ValidationTarget::task_id_for`]), so it exists once.
//! * `TaskVerdictGiven` on it → `ApplyVerdict` on the work.
//! * A validation task ending without a verdict (cancelled, failed for good) →
//!   `AbandonValidation`: the work fails for good rather than wait forever.
//! * Work cancelled while it waits for its verdict → its validation task is cancelled.
//!
//! A command the work or the validation task refuses (it moved on meanwhile: cancelled,
//! judged already) is skipped; a replay finds every effect done and appends nothing.

use futures_util::future::BoxFuture;
use omoi_domain::common::{clipped, MAX_TEXT_CHARS, MAX_TITLE_CHARS};
use omoi_domain::task::{
    Task, TaskCommand, TaskEvent, TaskStatus, ValidationTarget, VALIDATION_TASK_TYPE,
};
use omoi_projections::ProjectionError;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::execution::create;
use crate::{effect, load, occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "validation";

pub struct Validation;

impl ProcessManager for Validation {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Task"
            && matches!(
                event.event_type.as_str(),
                "TaskSubmittedForValidation"
                    | "TaskVerdictGiven"
                    | "TaskPermanentlyFailed"
                    | "TaskCancelled"
            )
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            for event in events {
                react(tx, event).await?;
            }
            Ok(())
        })
    }
}

async fn react(tx: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let change: TaskEvent = event
        .payload
        .decode()
        .map_err(|e| ProjectionError::payload(event, e))?;
    let (task, _) = load::<Task>(tx, event, &event.aggregate_id).await?;
    let Some(task_id) = task.id else {
        return Ok(());
    };
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    match change {
        TaskEvent::TaskSubmittedForValidation { revision, .. } => {
            let target = ValidationTarget {
                task_id,
                revision,
                implementer_agent_id: task.implementer_agent_id,
            };
            let validation_id = ValidationTarget::task_id_for(task_id, revision);
            let command = validation_task(&task, target, event)?;
            create::<Task>(tx, event, validation_id, command, &context).await
        }
        TaskEvent::TaskVerdictGiven { verdict } => {
            let Some(target) = task.validates else {
                return Ok(());
            };
            let apply = TaskCommand::ApplyVerdict {
                validation_task_id: task_id,
                revision: target.revision,
                verdict,
                at: occurred_at(event),
            };
            effect::<Task>(tx, event, &target.task_id.to_string(), apply, &context).await
        }
        TaskEvent::TaskPermanentlyFailed { .. } | TaskEvent::TaskCancelled { .. } => {
            if let Some(target) = task.validates.filter(|_| task.verdict.is_none()) {
                let abandon = TaskCommand::AbandonValidation {
                    validation_task_id: task_id,
                    revision: target.revision,
                };
                return effect::<Task>(tx, event, &target.task_id.to_string(), abandon, &context)
                    .await;
            }
            let waited = task.validation.is_some() && task.submitted_result.is_some();
            if waited && task.status == TaskStatus::Cancelled {
                let validation_id = ValidationTarget::task_id_for(task_id, task.revision);
                let cancel = TaskCommand::CancelTask {
                    reason: Some(format!(
                        "the work it validates, task {task_id}, was cancelled"
                    )),
                    at: occurred_at(event),
                };
                return effect::<Task>(tx, event, &validation_id.to_string(), cancel, &context)
                    .await;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The validation task of `target`: same ticket, phase and priority as the work, its
/// description and submitted result to check.
fn validation_task(
    work: &Task,
    target: ValidationTarget,
    event: &StoredEvent,
) -> Result<TaskCommand, ProjectionError> {
    let (Some(organization_id), Some(project_id), Some(ticket_id)) =
        (work.organization_id, work.project_id, work.ticket_id)
    else {
        return Err(ProjectionError::payload(
            event,
            "work without scope or ticket",
        ));
    };
    let result = work
        .submitted_result
        .as_ref()
        .map(|r| serde_json::to_string_pretty(r).unwrap_or_default())
        .unwrap_or_default();
    let description = format!(
        "Check submission {} of task {} ({}).\n\nWhat was asked:\n{}\n\nWhat was submitted:\n{}",
        target.revision + 1,
        target.task_id,
        work.task_type,
        work.description,
        result
    );
    Ok(TaskCommand::CreateTask {
        task_id: ValidationTarget::task_id_for(target.task_id, target.revision),
        organization_id,
        project_id,
        ticket_id,
        title: clipped(&format!("Validate: {}", work.title), MAX_TITLE_CHARS),
        description: clipped(&description, MAX_TEXT_CHARS),
        task_type: VALIDATION_TASK_TYPE.to_string(),
        phase: work.phase,
        priority: work.priority,
        depends_on: Vec::new(),
        required_capabilities: Vec::new(),
        max_retries: None,
        timeout_seconds: work.timeout_seconds,
        discovery: None,
        validation: None,
        validates: Some(target),
        at: occurred_at(event),
        plan_key: None,
    })
}
