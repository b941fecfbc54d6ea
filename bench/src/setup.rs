//! What the benchmarks share: the cluster they measure on, the `omoi` binary they start,
//! and the machine's load printed beside their figures.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use omoi_store::embedded::EmbeddedPostgres;

/// The workspace's `target/` folder.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("target")
}

/// The server the benchmarks create their databases on: the one `DATABASE_URL` names,
/// else [`bench_cluster`].
pub async fn admin_url() -> anyhow::Result<String> {
    match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => Ok(url),
        None => bench_cluster().await,
    }
}

/// The benchmark cluster this process started: [`stop_started_cluster`] stops it when the
/// benchmark ends. One that was already running is left as it was.
static STARTED: Mutex<Option<EmbeddedPostgres>> = Mutex::new(None);

/// A cluster with PostgreSQL's default (durable) settings in `target/omoi-bench-pg`, so that
/// the figures resemble a real deployment; its port is 15433.
async fn bench_cluster() -> anyhow::Result<String> {
    let dir = target_dir().join("omoi-bench-pg");
    eprintln!(
        "no DATABASE_URL: using a PostgreSQL of our own in {}",
        dir.display()
    );
    let cluster = EmbeddedPostgres::new(dir, 15433)?;
    let starting = cluster.clone();
    let started = tokio::task::spawn_blocking(move || {
        let running = starting.is_running()?;
        starting.start().map(|()| !running)
    })
    .await??;
    if started {
        *STARTED.lock().unwrap_or_else(PoisonError::into_inner) = Some(cluster.clone());
    }
    Ok(cluster.url("postgres")?)
}

/// Stops the benchmark cluster if this process started it (nothing runs on after a
/// benchmark: CI and the tests share the machine).
pub fn stop_started_cluster() -> anyhow::Result<()> {
    let started = STARTED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(cluster) = started {
        cluster.stop()?;
    }
    Ok(())
}

/// The `omoi` binary the benchmarks start as servers and workers: `OMOI_BIN`, else the one
/// beside this executable (both are built into the same folder).
pub fn omoi_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("OMOI_BIN") {
        return Ok(PathBuf::from(path));
    }
    let here = std::env::current_exe().context("this executable")?;
    let beside = here.with_file_name("omoi");
    // Test binaries live one folder further down (`deps/`).
    let above = here
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("omoi"));
    [Some(beside), above]
        .into_iter()
        .flatten()
        .find(|path| path.is_file())
        .context("no omoi binary beside omoi-bench: run `cargo build --bins` (or set OMOI_BIN)")
}

/// The 1, 5 and 15 minute load averages (Linux), to judge how quiet the machine was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// Waits until the log holds `count` events of type `event_type`, reading it forward as any
/// follower does (so watching does not scan the whole log every few milliseconds and
/// compete with what it measures); fails after ten minutes.
pub async fn wait_for_events(
    pool: &sqlx::PgPool,
    event_type: &str,
    count: i64,
) -> anyhow::Result<()> {
    use omoi_store::log::{read_global, Visibility};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let mut cursor = omoi_store::Cursor::default();
    let mut seen = 0i64;
    loop {
        let page = read_global(pool, cursor, 10_000, &Visibility::Everything).await?;
        cursor = page.next;
        seen += page
            .events
            .iter()
            .filter(|e| e.event_type == event_type)
            .count() as i64;
        if seen >= count {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "only {seen} of {count} {event_type} events"
        );
        if page.events.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// Gives the planner the statistics of the data a benchmark just made, as a database at
/// rest has them (autovacuum analyzes a table once a tenth of it changed, within a minute;
/// `pgbench -i` analyzes too). Without them a fresh database's event log passes for
/// empty: omoi's append checked the taken sequences with a hash join over a scan of the
/// whole log (`auto_explain`: a seq scan of `events` per appended batch, cached in every
/// pooled connection), and `pgbench`'s select of an aggregate's events scanned it too.
pub async fn analyze(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query("analyze").execute(pool).await?;
    Ok(())
}

/// A task title of its own for `seed`, after `label`: work as it comes, each item titled
/// apart. Titles alike (`t1`, `t2`, …) share most of their trigrams, and the Conductor,
/// which compares each new task's text with the open ones (`pg_trgm`), then walks every
/// task's postings for each one — a cost of the benchmark's data, not of the work.
pub fn task_title(label: impl std::fmt::Display, seed: u64) -> String {
    format!("{label}: {:016x}", seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}
