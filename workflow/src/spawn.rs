//! `phase_tasks`: a ticket made by hand — not from a spec's plan — gets the task of its
//! phase (an `analyze` task in the backlog, an `implement` task in implementation, …; the
//! table is `workflow.phase_tasks` in the settings), as the original split every ticket
//! into phase tasks, so that every ticket flows through agents. The project setting
//! `auto_spawn_tasks` (default on) turns it off.

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use omoi_domain::common::{clipped, Phase, MAX_TITLE_CHARS};
use omoi_domain::project::Project;
use omoi_domain::task::{Task, TaskCommand};
use omoi_domain::ticket::{Ticket, TicketStatus};
use omoi_projections::ProjectionError;
use omoi_store::log::{aggregate_history, fold_until};
use omoi_store::{Actor, CommandContext, StoredEvent};
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::execution::create;
use crate::{load, occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "phase_tasks";

/// The task type each phase's ticket gets; a phase absent from the table gets none.
/// Written in the settings as a list of `{phase, task_type}` (keys of a map would be
/// lower-cased by the settings loader; `PHASE_*` values are not).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "Vec<PhaseTask>")]
pub struct PhaseTaskTable(pub HashMap<Phase, String>);

/// One row of [`PhaseTaskTable`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseTask {
    pub phase: Phase,
    pub task_type: String,
}

impl From<Vec<PhaseTask>> for PhaseTaskTable {
    fn from(rows: Vec<PhaseTask>) -> Self {
        Self(rows.into_iter().map(|r| (r.phase, r.task_type)).collect())
    }
}

impl Default for PhaseTaskTable {
    /// The original's phases of work: analysis, design, implementation, testing,
    /// deployment; done and blocked tickets get nothing.
    fn default() -> Self {
        Self(
            [
                (Phase::Backlog, "analyze"),
                (Phase::Requirements, "analyze"),
                (Phase::Design, "design"),
                (Phase::Implementation, "implement"),
                (Phase::Testing, "test"),
                (Phase::Deployment, "deploy"),
            ]
            .into_iter()
            .map(|(phase, task_type)| (phase, task_type.to_string()))
            .collect(),
        )
    }
}

pub struct PhaseTasks {
    pub table: PhaseTaskTable,
}

impl ProcessManager for PhaseTasks {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Ticket" && event.event_type == "TicketCreated"
    }

    /// Only a ticket made by hand gets a task: a page of a plan's tickets (caused by its
    /// approval) is passed by without a transaction.
    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        self.reacts_to(event) && made_by_hand(event)
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            for event in events {
                self.ticket_created(tx, event).await?;
            }
            Ok(())
        })
    }
}

/// Whether the ticket `event` created was made by hand: a ticket another event caused (a
/// plan's) comes with its own tasks.
fn made_by_hand(event: &StoredEvent) -> bool {
    event.metadata.causation_id().is_none()
}

/// The id of the task `event` (a ticket's creation) spawns: the same on every replay.
pub fn spawned_id(event: &StoredEvent) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("omoi/{NAME}/{}", event.reference()).as_bytes(),
    )
}

impl PhaseTasks {
    async fn ticket_created(
        &self,
        tx: &mut PgConnection,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        if !made_by_hand(event) {
            return Ok(());
        }
        let (ticket, _) = load::<Ticket>(tx, event, &event.aggregate_id).await?;
        let (Some(organization_id), Some(project_id)) = (ticket.organization_id, ticket.project_id)
        else {
            return Ok(());
        };
        // The project's settings as they were when the ticket was made, so that a replay
        // decides as the first run did: before it in the log's order (by transaction,
        // then position; a position alone may be taken by a later transaction first).
        let project_history = aggregate_history(&mut *tx, "Project", &project_id.to_string())
            .await?
            .into_iter()
            .filter(|e| e.cursor() <= event.cursor())
            .collect::<Vec<_>>();
        let project: Project =
            fold_until(&project_history, None).map_err(|e| ProjectionError::payload(event, e))?;
        if !project.settings.auto_spawn_tasks || ticket.status == TicketStatus::Done {
            return Ok(());
        }
        let Some(task_type) = self.table.0.get(&ticket.phase) else {
            return Ok(());
        };
        let task_id = spawned_id(event);
        let command = TaskCommand::CreateTask {
            task_id,
            organization_id,
            project_id,
            ticket_id: ticket.id.unwrap_or_default(),
            // A ticket's title may take the whole limit a task's title has too.
            title: clipped(
                &format!("{}: {}", capitalized(task_type), ticket.title),
                MAX_TITLE_CHARS,
            ),
            description: ticket.description.clone(),
            task_type: task_type.clone(),
            phase: ticket.phase,
            priority: ticket.priority,
            depends_on: Vec::new(),
            required_capabilities: Vec::new(),
            max_retries: None,
            timeout_seconds: None,
            discovery: None,
            validation: None,
            validates: None,
            at: occurred_at(event),
            plan_key: None,
        };
        let context = CommandContext::caused_by(Actor::System(NAME), event);
        create::<Task>(tx, event, task_id, command, &context).await
    }
}

/// `implement` → `Implement`, for the spawned task's title.
fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_with_work_has_a_task_type() {
        let table = PhaseTaskTable::default();
        for phase in Phase::ALL {
            let expected = !matches!(phase, Phase::Done | Phase::Blocked);
            assert_eq!(table.0.contains_key(&phase), expected, "{phase:?}");
        }
        assert_eq!(capitalized("analyze"), "Analyze");
        assert_eq!(capitalized(""), "");
    }

    fn ticket_event(event_type: &str, metadata: serde_json::Value) -> StoredEvent {
        crate::ticket_event(event_type, serde_json::json!({ event_type: {} }), metadata)
    }

    /// A plan's tickets (caused by its approval) are passed by; a ticket made by hand is not.
    #[test]
    fn only_a_ticket_made_by_hand_concerns_it() {
        let manager = PhaseTasks {
            table: PhaseTaskTable::default(),
        };
        let by_hand = ticket_event("TicketCreated", serde_json::json!({"actor": "user:1"}));
        let planned = ticket_event(
            "TicketCreated",
            serde_json::json!({"actor": "system:plan_execution", "causation_id": "Spec/1/7"}),
        );
        let renamed = ticket_event("TicketRenamed", serde_json::json!({}));
        assert!(manager.concerns("schema", &by_hand));
        assert!(!manager.concerns("schema", &planned));
        assert!(!manager.concerns("schema", &renamed));
    }
}
