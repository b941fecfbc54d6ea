//! `discovery_resolution`: a discovered task that blocks its parent releases it when it
//! completes or is cancelled, by a `TaskDiscoveryResolved` on the parent (whose
//! completion waits for every blocking discovery to be resolved).

use futures_util::future::BoxFuture;
use omoi_domain::task::{Task, TaskCommand};
use omoi_projections::ProjectionError;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::aggregates::{Aggregates, Effects};
use crate::ProcessManager;

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "discovery_resolution";

pub struct DiscoveryResolution;

impl ProcessManager for DiscoveryResolution {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Task"
            && matches!(event.event_type.as_str(), "TaskCompleted" | "TaskCancelled")
    }

    fn react<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        self.react_all(tx, schema, vec![event])
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(discovered_tasks_ended(tx, events))
    }
}

/// Releases the parent of every ended task that was a discovery blocking it. The ended
/// tasks are read with one query (most were no discovery).
async fn discovered_tasks_ended(
    tx: &mut PgConnection,
    events: Vec<&StoredEvent>,
) -> Result<(), ProjectionError> {
    let Some(&first) = events.first() else {
        return Ok(());
    };
    let mut ended = Aggregates::<Task>::new();
    ended
        .read(tx, first, events.iter().map(|e| e.aggregate_id.clone()))
        .await?;
    let mut parents = Aggregates::<Task>::new();
    let mut effects = Effects::default();
    for event in events {
        let Some(task) = ended.get(&event.aggregate_id) else {
            continue;
        };
        let Some(discovery) = task.discovery.as_ref().filter(|d| d.blocks_parent) else {
            continue;
        };
        let Some(discovered_task_id) = task.id else {
            continue;
        };
        let parent = discovery.parent_task_id.to_string();
        let context = CommandContext::caused_by(Actor::System(NAME), event);
        // Resolving what is not open appends nothing: a replay after a crash is harmless.
        let resolve = TaskCommand::ResolveDiscovery { discovered_task_id };
        parents
            .decide(&mut effects, tx, event, &parent, resolve, &context)
            .await?;
    }
    effects.append(tx, first).await
}
