//! `discovery_resolution`: a discovered task that blocks its parent releases it when it
//! completes or is cancelled, by a `TaskDiscoveryResolved` on the parent (whose
//! completion waits for every blocking discovery to be resolved).

use futures_util::future::BoxFuture;
use omoi_domain::task::{Task, TaskCommand};
use omoi_projections::ProjectionError;
use omoi_store::bus::execute_in;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::{load, ProcessManager};

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
        _schema: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(discovered_task_ended(tx, event))
    }
}

async fn discovered_task_ended(
    tx: &mut PgConnection,
    event: &StoredEvent,
) -> Result<(), ProjectionError> {
    let (task, _) = load::<Task>(tx, event, &event.aggregate_id).await?;
    let Some(discovery) = task.discovery.filter(|d| d.blocks_parent) else {
        return Ok(());
    };
    let Some(discovered_task_id) = task.id else {
        return Ok(());
    };
    let parent = discovery.parent_task_id.to_string();
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    // Resolving what is not open appends nothing: a replay after a crash is harmless.
    execute_in::<Task>(
        tx,
        &parent,
        TaskCommand::ResolveDiscovery { discovered_task_id },
        &context,
    )
    .await
    .map_err(|e| ProjectionError::payload(event, format!("releasing task {parent}: {e}")))?;
    Ok(())
}
