//! `stall_policy`: a task marked stalled (`TaskStalled`: no progress report for
//! `monitoring.stuck_after_ms`) gets what its project's `stall_policy` says —
//!
//! * `nudge`: a steering message to its agent asking for progress (`SteerTask`, id
//!   derived from the stall, so a replay records it once);
//! * `restart`: the attempt fails with the stall as its error (`FailTask`), to be retried
//!   after its backoff while retries remain; the worker running it stops its command;
//! * `escalate`: its ticket is blocked `failing_checks` naming the task, for a person.
//!
//! A stall the task moved past (it progressed, ended, or another attempt runs) gets
//! nothing: the task must still be running, stalled since the same moment, by the same
//! agent, when the manager reads the stall — the manager may read it late (lag, a takeover, a new
//! build of it going through the log), and a restart or a block would then fall on work
//! that is not stalled. A refusal by the domain is skipped as well.

use futures_util::future::BoxFuture;
use omoi_domain::project::{Project, StallPolicy};
use omoi_domain::task::{SteeringSource, Task, TaskCommand, TaskEvent, TaskStatus};
use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand};
use omoi_projections::ProjectionError;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{effect, load, occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "stall_policy";

pub struct StallPolicyManager;

impl ProcessManager for StallPolicyManager {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Task" && event.event_type == "TaskStalled"
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            for event in events {
                stalled(tx, event).await?;
            }
            Ok(())
        })
    }
}

/// The message a `nudge` sends.
pub fn nudge_message(idle_minutes: i64) -> String {
    format!(
        "No progress reported for {idle_minutes} min. Report progress \
         (POST /api/v1/tasks/{{id}}/progress), or say what blocks you."
    )
}

async fn stalled(tx: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let TaskEvent::TaskStalled {
        agent_id,
        idle_since,
        at,
    } = event
        .payload
        .decode()
        .map_err(|e| ProjectionError::payload(event, e))?
    else {
        return Ok(());
    };
    let (task, _) = load::<Task>(tx, event, &event.aggregate_id).await?;
    // Only a stall still standing: the attempt running, held by the same agent, without
    // progress since. An attempt that ended (completed, failed, cancelled) keeps its
    // `stalled_since`, and escalating it would block its ticket for finished work.
    if task.status != TaskStatus::Running
        || task.stalled_since != Some(idle_since)
        || task.assigned_agent_id != Some(agent_id)
    {
        return Ok(());
    }
    let (Some(project_id), Some(ticket_id)) = (task.project_id, task.ticket_id) else {
        return Ok(());
    };
    let (project, _) = load::<Project>(tx, event, &project_id.to_string()).await?;
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    let idle_minutes = (at - idle_since).num_minutes();
    let when = occurred_at(event);
    match project.settings.stall_policy {
        StallPolicy::Nudge => {
            let steer = TaskCommand::SteerTask {
                steering_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, event.reference().as_bytes()),
                message: nudge_message(idle_minutes),
                source: SteeringSource::Nudge,
                at: when,
            };
            effect::<Task>(tx, event, &event.aggregate_id, steer, &context).await
        }
        StallPolicy::Restart => {
            // The jitter comes from the stall, so a replay decides the same backoff.
            let jitter = f64::from(event.sequence.rem_euclid(100) as u32) / 100.0;
            let fail = TaskCommand::FailTask {
                error: format!("stalled: no progress for {idle_minutes} min; restarted"),
                at: when,
                jitter,
            };
            effect::<Task>(tx, event, &event.aggregate_id, fail, &context).await
        }
        StallPolicy::Escalate => {
            let block = TicketCommand::BlockTicket {
                reason: BlockReason::FailingChecks,
                note: Some(format!(
                    "task {} stalled: no progress for {idle_minutes} min",
                    event.aggregate_id
                )),
                at: when,
            };
            effect::<Ticket>(tx, event, &ticket_id.to_string(), block, &context).await
        }
    }
}
