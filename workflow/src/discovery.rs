//! `discovery_resolution`: a discovered task that blocks its parent releases it when it
//! completes or is cancelled, by a `TaskDiscoveryResolved` on the parent (whose
//! completion waits for every blocking discovery to be resolved).

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use omoi_domain::task::{Task, TaskCommand, TaskEvent};
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
    /// 2: the blocking discoveries kept in a table of their own (1 read every ended
    /// task's history to find out whether it was one).
    const VERSION: i32 = 2;
    const TABLES: &'static [&'static str] = &["blocking"];

    fn create_tables(schema: &str) -> Vec<String> {
        vec![format!(
            "create table {schema}.blocking (
                task_id        text primary key,
                parent_task_id text not null
            )"
        )]
    }

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Task"
            && matches!(
                event.event_type.as_str(),
                "TaskDiscovered" | "TaskCompleted" | "TaskCancelled"
            )
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
        schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(discovered_tasks_ended(tx, schema, events))
    }
}

/// Keeps the open discoveries that block their parent and releases the parent of each
/// that ended. Nearly every ended task was no such discovery: a batch costs one
/// statement on a table of the few open ones, not a read of its tasks.
async fn discovered_tasks_ended(
    tx: &mut PgConnection,
    schema: &str,
    events: Vec<&StoredEvent>,
) -> Result<(), ProjectionError> {
    let Some(&first) = events.first() else {
        return Ok(());
    };
    let mut blocking: Vec<(&str, String)> = Vec::new();
    let mut ended: Vec<&str> = Vec::new();
    for event in &events {
        match event.event_type.as_str() {
            "TaskDiscovered" => {
                let TaskEvent::TaskDiscovered { discovery } = event
                    .payload
                    .decode()
                    .map_err(|e| ProjectionError::payload(event, e))?
                else {
                    continue;
                };
                if discovery.blocks_parent {
                    let parent = discovery.parent_task_id.to_string();
                    blocking.push((event.aggregate_id.as_str(), parent));
                }
            }
            _ => ended.push(event.aggregate_id.as_str()),
        }
    }
    // A task is discovered right after its creation, so before it can end: rows added
    // first, then those of the ended tasks taken out, is the events' order.
    if !blocking.is_empty() {
        let (tasks, parents): (Vec<&str>, Vec<String>) = blocking.into_iter().unzip();
        sqlx::query(&format!(
            "insert into {schema}.blocking (task_id, parent_task_id)
             select * from unnest($1::text[], $2::text[])
             on conflict (task_id) do nothing"
        ))
        .bind(&tasks)
        .bind(&parents)
        .execute(&mut *tx)
        .await?;
    }
    if ended.is_empty() {
        return Ok(());
    }
    let released: HashMap<String, String> = sqlx::query_as(&format!(
        "delete from {schema}.blocking
          where task_id in (select unnest($1::text[]))
          returning task_id, parent_task_id"
    ))
    .bind(&ended)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    if released.is_empty() {
        return Ok(());
    }
    let mut parents = Aggregates::<Task>::new();
    let mut effects = Effects::default();
    for event in events {
        let Some(parent) = released.get(&event.aggregate_id) else {
            continue;
        };
        if event.event_type == "TaskDiscovered" {
            continue;
        }
        let Ok(discovered_task_id) = event.aggregate_id.parse() else {
            continue;
        };
        let context = CommandContext::caused_by(Actor::System(NAME), event);
        // Resolving what is not open appends nothing: a replay after a crash is harmless.
        let resolve = TaskCommand::ResolveDiscovery { discovered_task_id };
        parents
            .decide(&mut effects, tx, event, parent, resolve, &context)
            .await?;
    }
    effects.append(tx, first).await
}
