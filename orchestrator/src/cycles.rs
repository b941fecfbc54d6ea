//! Dependency cycles: adding `task → dependency` is refused when `dependency` already
//! reaches `task`, with the cycle's path. The check reads the tasks' current state (not a
//! read model that may lag) and runs under a per-project advisory lock held until the
//! addition has committed, so two additions that together would close a cycle are
//! serialized: the second sees the first's edge.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use omoi_domain::task::Task;
use omoi_store::{CommandBus, CommandError};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Tasks a check visits at most; a project's dependency graph is far smaller.
const MAX_VISITS: usize = 100_000;

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
    Load(#[from] CommandError<omoi_domain::task::TaskError>),
    #[error("the dependency graph has more than {MAX_VISITS} tasks reachable from here")]
    TooLarge,
}

/// The cycle `task → dependency → … → task` that adding the edge would close, or `None`.
pub async fn cycle_through(
    bus: &CommandBus,
    task: Uuid,
    dependency: Uuid,
) -> Result<Option<Vec<Uuid>>, CycleCheckError> {
    // Depth-first from the dependency, remembering how each task was reached.
    let mut reached_from: HashMap<Uuid, Uuid> = HashMap::new();
    let mut seen: HashSet<Uuid> = HashSet::from([dependency]);
    let mut stack = vec![dependency];
    while let Some(current) = stack.pop() {
        if current == task {
            let mut path = vec![task];
            let mut at = task;
            while at != dependency {
                at = reached_from[&at];
                path.push(at);
            }
            path.push(task);
            // Walked backwards: task ← … ← dependency ← task.
            path.reverse();
            return Ok(Some(path));
        }
        // Never accept an edge without a complete check.
        if seen.len() > MAX_VISITS {
            return Err(CycleCheckError::TooLarge);
        }
        let Some((state, _)) = bus.load::<Task>(&current.to_string()).await? else {
            continue;
        };
        for next in state.depends_on {
            if seen.insert(next) {
                reached_from.insert(next, current);
                stack.push(next);
            }
        }
    }
    Ok(None)
}

/// `a -> b -> c -> a`.
pub fn describe(path: &[Uuid]) -> String {
    path.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}
