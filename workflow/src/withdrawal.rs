//! `assignment_withdrawal`: work handed to an agent that had already stopped taking work
//! is taken back.
//!
//! A quarantined, failed or terminated agent takes nothing new, but an assignment is
//! decided on what its decider last read of the agent: a claim or a person's assignment
//! on the agent read before the commit, the worker on its own agents as it follows the
//! log. A status change committing at the same moment can therefore stand before the
//! assignment in the log. This manager reads every assignment in the log's order against
//! the agent's status just before it there (the agent's last `AgentStatusChanged` ahead of
//! the assignment) and, where that status takes no work (`AgentStatus::takes_work`),
//! withdraws the assignment (`WithdrawAssignment`: back to the queue, the attempt not
//! counted, nobody barred). It does so also once the task was started, since the worker's
//! in-process agents start in their assignment's own transaction; the worker stops the run.
//!
//! The order that counts is the log's, which every reader, replay and audit sees: a
//! status change after the assignment there lets the agent keep the work, as it keeps any
//! work it held before. A claim and a person's assignment also read the agent again after
//! their commit, to answer 409 at once (`api::agents::keep_if_agent_takes_work`); an
//! assignment withdrawn that way, or since moved on, is refused by the domain and skipped.

use futures_util::future::BoxFuture;
use omoi_domain::agent::AgentEvent;
use omoi_domain::task::{Task, TaskCommand, TaskEvent};
use omoi_projections::ProjectionError;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{effect, occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "assignment_withdrawal";

pub struct AssignmentWithdrawal;

impl ProcessManager for AssignmentWithdrawal {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Task" && event.event_type == "TaskAssigned"
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut assignments = Vec::with_capacity(events.len());
            for event in events {
                if let TaskEvent::TaskAssigned { agent_id, at } = event
                    .payload
                    .decode()
                    .map_err(|e| ProjectionError::payload(event, e))?
                {
                    assignments.push((event, agent_id, at));
                }
            }
            // Withdrawals change no agent's status: the statuses are read once for all.
            let statuses = statuses_before(tx, &assignments).await?;
            for ((event, agent_id, assigned_at), status) in assignments.into_iter().zip(statuses) {
                let stopped = match status {
                    Some(payload) => match serde_json::from_str::<AgentEvent>(&payload) {
                        Ok(AgentEvent::AgentStatusChanged { to, .. }) => !to.takes_work(),
                        Ok(_) => false,
                        Err(error) => {
                            return Err(ProjectionError::payload(
                                event,
                                format!("agent {agent_id}'s status before it: {error}"),
                            ))
                        }
                    },
                    // Never moved since it registered (`spawning`): it takes work.
                    None => false,
                };
                if !stopped {
                    continue;
                }
                let context = CommandContext::caused_by(Actor::System(NAME), event);
                let withdraw = TaskCommand::WithdrawAssignment {
                    assigned_at,
                    at: occurred_at(event),
                };
                effect::<Task>(tx, event, &event.aggregate_id, withdraw, &context).await?;
            }
            Ok(())
        })
    }
}

/// For each assignment, the payload of its agent's last `AgentStatusChanged` before it in
/// the log's order (`None`: there is none), in one statement. Each is a walk back along
/// the agent's key from its newest event, which the first status change before the
/// assignment ends.
async fn statuses_before(
    tx: &mut PgConnection,
    assignments: &[(&StoredEvent, Uuid, chrono::DateTime<chrono::Utc>)],
) -> Result<Vec<Option<String>>, ProjectionError> {
    if assignments.is_empty() {
        return Ok(Vec::new());
    }
    let agents: Vec<String> = assignments
        .iter()
        .map(|(_, agent, _)| agent.to_string())
        .collect();
    let transactions: Vec<i64> = assignments.iter().map(|(e, ..)| e.transaction_id).collect();
    let positions: Vec<i64> = assignments
        .iter()
        .map(|(e, ..)| e.global_position)
        .collect();
    let statuses: Vec<Option<String>> = sqlx::query_scalar(
        "select s.payload::text
           from unnest($1::text[], $2::bigint[], $3::bigint[])
                with ordinality as a(agent_id, transaction_id, global_position, n)
           left join lateral (
                select payload from events
                 where aggregate_type = 'Agent' and aggregate_id = a.agent_id
                   and event_type = 'AgentStatusChanged'
                   and (transaction_id, global_position)
                       < (a.transaction_id::text::xid8, a.global_position)
                 order by sequence desc
                 limit 1) s on true
          order by a.n",
    )
    .bind(&agents)
    .bind(&transactions)
    .bind(&positions)
    .fetch_all(&mut *tx)
    .await?;
    Ok(statuses)
}
