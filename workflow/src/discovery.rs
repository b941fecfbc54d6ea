//! `discovery_resolution`: a discovered task that blocks its parent releases it when it
//! completes or is cancelled, by a `TaskDiscoveryResolved` on the parent (whose
//! completion waits for every blocking discovery to be resolved).

use std::collections::{HashMap, HashSet};

use futures_util::future::BoxFuture;
use omoi_domain::task::{Task, TaskCommand, TaskEvent};
use omoi_projections::ProjectionError;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::aggregates::{Aggregates, Effects};
use crate::kept::{Keep, Kept};
use crate::ProcessManager;

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "discovery_resolution";

/// The process manager, and its table's open blocking discoveries kept in memory by build
/// schema: nearly every task that ends is no such discovery, and a page of such ends is
/// passed by without a transaction ([`ProcessManager::concerns`]) instead of costing a
/// durable commit each (105–110 batches in an `omoi-bench bench-workflow` run, the most
/// of any build, each releasing nothing).
#[derive(Default)]
pub struct DiscoveryResolution {
    kept: Kept<OpenBlocking>,
}

/// A build's blocking discoveries as its last committed batch left its table (a table of
/// the open ones only: a discovery leaves it when it ends).
#[derive(Default)]
struct OpenBlocking(HashSet<String>);

/// What a batch did to the table: the discoveries it added and those it removed, over the
/// table it read when nothing was kept.
struct Change {
    read: Option<HashSet<String>>,
    added: Vec<String>,
    removed: Vec<String>,
}

impl Keep for OpenBlocking {
    type Change = Change;

    fn commit(&mut self, change: Change) {
        if let Some(read) = change.read {
            self.0 = read;
        }
        self.0.extend(change.added);
        for task in &change.removed {
            self.0.remove(task);
        }
    }
}

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

    /// A discovery, or the end of a task the build's table holds (every end while the
    /// table is not kept).
    fn concerns(&self, schema: &str, event: &StoredEvent) -> bool {
        if !self.reacts_to(event) {
            return false;
        }
        if event.event_type == "TaskDiscovered" {
            return true;
        }
        self.kept
            .between_batches(schema, |open| open.0.contains(&event.aggregate_id))
            .unwrap_or(true)
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.discovered_tasks_ended(tx, schema, events))
    }

    fn settled(&self, schema: &str, committed: bool) {
        self.kept.settled(schema, committed);
    }
}

impl DiscoveryResolution {
    /// Keeps the open discoveries that block their parent and releases the parent of each
    /// that ended. Nearly every ended task was no such discovery: a batch costs at most
    /// one statement on a table of the few open ones, and none when what is kept of the
    /// table holds none of its ended tasks.
    async fn discovered_tasks_ended(
        &self,
        tx: &mut PgConnection,
        schema: &str,
        events: Vec<&StoredEvent>,
    ) -> Result<(), ProjectionError> {
        let Some(&first) = events.first() else {
            return Ok(());
        };
        let (open, read) = match self.kept.for_batch(schema, |open| open.0.clone()) {
            Some(kept) => (kept, false),
            None => (open_blocking(tx, schema).await?, true),
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
        let (added, parents): (Vec<&str>, Vec<String>) = blocking.into_iter().unzip();
        // A task is discovered right after its creation, so before it can end: rows added
        // first, then those of the ended tasks taken out, is the events' order.
        if !added.is_empty() {
            sqlx::query(&format!(
                "insert into {schema}.blocking (task_id, parent_task_id)
                 select * from unnest($1::text[], $2::text[])
                 on conflict (task_id) do nothing"
            ))
            .bind(&added)
            .bind(&parents)
            .execute(&mut *tx)
            .await?;
        }
        ended.retain(|task| open.contains(*task) || added.contains(task));
        let released: HashMap<String, String> = match ended.is_empty() {
            true => HashMap::new(),
            false => sqlx::query_as(&format!(
                "delete from {schema}.blocking
                  where task_id in (select unnest($1::text[]))
                  returning task_id, parent_task_id"
            ))
            .bind(&ended)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect(),
        };
        let change = Change {
            read: read.then_some(open),
            added: added.iter().map(|task| task.to_string()).collect(),
            removed: released.keys().cloned().collect(),
        };
        // Taken in once the runner says the batch committed.
        self.kept.hold(schema, change);
        if released.is_empty() {
            return Ok(());
        }
        release_parents(tx, first, events, &released).await
    }
}

/// The build's open blocking discoveries, as its table holds them.
async fn open_blocking(
    tx: &mut PgConnection,
    schema: &str,
) -> Result<HashSet<String>, ProjectionError> {
    let tasks: Vec<String> = sqlx::query_scalar(&format!("select task_id from {schema}.blocking"))
        .fetch_all(&mut *tx)
        .await?;
    Ok(tasks.into_iter().collect())
}

/// Resolves the discovery on the parent of each of `released` (discovery → parent) that
/// ended among `events`.
async fn release_parents(
    tx: &mut PgConnection,
    first: &StoredEvent,
    events: Vec<&StoredEvent>,
    released: &HashMap<String, String>,
) -> Result<(), ProjectionError> {
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
