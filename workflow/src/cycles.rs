//! Dependency cycles: adding `task → dependency` is refused when `dependency` already
//! reaches `task`, with the cycle's path. The check reads the project's dependency edges
//! from the log in one query (not a read model that may lag), and runs under a
//! per-project advisory lock held until the addition has committed, so two additions that
//! together would close a cycle are serialized: the second sees the first's edge.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

/// Dependency changes (creations with dependencies, additions, removals) a check reads at
/// most: a project with more is refused new edges rather than checked on and on.
pub const MAX_EDGE_EVENTS: i64 = 20_000;

/// Held while a dependency of the project is checked and added; released when dropped
/// (the transaction rolls back, which is all it ever does).
pub struct ProjectLock {
    _transaction: Transaction<'static, Postgres>,
    _in_process: tokio::sync::OwnedMutexGuard<()>,
}

/// This process's turn per project: waiters queue here, not on a pooled connection each
/// (a crowd of them would starve the pool the lock holder needs).
static TURNS: LazyLock<Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(Mutex::default);

/// Waits for the project's dependency lock: this process's turn, then the database's
/// (other processes).
pub async fn lock_project(pool: &PgPool, project_id: Uuid) -> sqlx::Result<ProjectLock> {
    let turn = TURNS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(project_id)
        .or_default()
        .clone();
    let in_process = turn.lock_owned().await;
    let mut transaction = pool.begin().await?;
    // Two 32-bit keys: a namespace for dependency locks, and the project's hash.
    let (high, low) = project_id.as_u64_pair();
    let key = (high ^ low) as u32 as i32;
    sqlx::query("select pg_advisory_xact_lock(1868, $1)")
        .bind(key)
        .execute(&mut *transaction)
        .await?;
    Ok(ProjectLock {
        _transaction: transaction,
        _in_process: in_process,
    })
}

/// Why a cycle check could not conclude.
#[derive(Debug, thiserror::Error)]
pub enum CycleCheckError {
    #[error(transparent)]
    Read(#[from] sqlx::Error),
    #[error("the project has more than {MAX_EDGE_EVENTS} dependency changes to check")]
    TooLarge,
}

/// The cycle `task → dependency → … → task` that adding the edge to project
/// `project_id` would close, or `None`.
pub async fn cycle_through(
    pool: &PgPool,
    project_id: Uuid,
    task: Uuid,
    dependency: Uuid,
) -> Result<Option<Vec<Uuid>>, CycleCheckError> {
    let edges = dependency_edges(pool, project_id).await?;
    Ok(find_path(&edges, dependency, task).map(|mut path| {
        // dependency → … → task, closed by the new edge task → dependency.
        path.insert(0, task);
        path
    }))
}

/// The project's current edges, task → its dependencies, folded from the log in each
/// task's own order.
async fn dependency_edges(
    pool: &PgPool,
    project_id: Uuid,
) -> Result<HashMap<Uuid, HashSet<Uuid>>, CycleCheckError> {
    let rows = sqlx::query(
        "select aggregate_id, event_type,
                coalesce(payload -> 'TaskCreated' -> 'depends_on',
                         jsonb_build_array(payload -> event_type -> 'depends_on')) as targets
           from events
          where metadata ->> 'project_id' = $1
            and aggregate_type = 'Task'
            and event_type in ('TaskCreated', 'TaskDependencyAdded', 'TaskDependencyRemoved')
            and (event_type <> 'TaskCreated'
                 or coalesce(jsonb_array_length(payload -> 'TaskCreated' -> 'depends_on'), 0) > 0)
          order by aggregate_id, sequence
          limit $2",
    )
    .bind(project_id.to_string())
    .bind(MAX_EDGE_EVENTS + 1)
    .fetch_all(pool)
    .await?;
    if rows.len() as i64 > MAX_EDGE_EVENTS {
        return Err(CycleCheckError::TooLarge);
    }
    let mut edges: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    // Never accept an edge without a complete check: an unreadable row fails it.
    for row in rows {
        let task: Uuid = row
            .try_get::<String, _>("aggregate_id")?
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        let kind: String = row.try_get("event_type")?;
        let Json(targets) = row.try_get::<Json<Vec<Uuid>>, _>("targets")?;
        let out = edges.entry(task).or_default();
        if kind == "TaskDependencyRemoved" {
            targets.iter().for_each(|t| {
                out.remove(t);
            });
        } else {
            out.extend(targets);
        }
    }
    Ok(edges)
}

/// A path `from → … → to` along `edges`, depth first, or `None`.
fn find_path(edges: &HashMap<Uuid, HashSet<Uuid>>, from: Uuid, to: Uuid) -> Option<Vec<Uuid>> {
    let mut reached_from: HashMap<Uuid, Uuid> = HashMap::new();
    let mut seen: HashSet<Uuid> = HashSet::from([from]);
    let mut stack = vec![from];
    while let Some(current) = stack.pop() {
        if current == to {
            let mut path = vec![to];
            while let Some(previous) = path.last().and_then(|at| reached_from.get(at)) {
                path.push(*previous);
            }
            path.reverse();
            return Some(path);
        }
        for next in edges.get(&current).into_iter().flatten() {
            if seen.insert(*next) {
                reached_from.insert(*next, current);
                stack.push(*next);
            }
        }
    }
    None
}

/// `a -> b -> c -> a`.
pub fn describe(path: &[Uuid]) -> String {
    path.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn a_path_is_found_along_the_edges_and_only_along_them() {
        // 1 → 2 → 3 → 4, 2 → 5.
        let edges: HashMap<Uuid, HashSet<Uuid>> = [
            (id(1), HashSet::from([id(2)])),
            (id(2), HashSet::from([id(3), id(5)])),
            (id(3), HashSet::from([id(4)])),
        ]
        .into();
        assert_eq!(
            find_path(&edges, id(1), id(4)),
            Some(vec![id(1), id(2), id(3), id(4)])
        );
        assert_eq!(find_path(&edges, id(4), id(1)), None);
        assert_eq!(find_path(&edges, id(5), id(3)), None);
        assert_eq!(find_path(&edges, id(2), id(2)), Some(vec![id(2)]));
    }
}
