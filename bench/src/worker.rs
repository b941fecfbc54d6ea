//! `omoi-bench bench-worker`: tasks pushed through the whole lifecycle by a worker's in-process
//! agents doing trivial work.
//!
//! Two phases on one fresh database, API and worker in this process:
//! * **throughput** — N tasks created while no worker runs, then a worker with M agents
//!   starts; tasks completed per second from its start to the last completion (each task
//!   is three commands: assign, start, complete);
//! * **pgbench** — right after, on the same database with the same server running:
//!   `pgbench` of one command's SQL (`bench`'s script: read a ticket's events, append one,
//!   commit) at 16 clients; the throughput's tasks/s over its transactions/s is issue
//!   #15's ratio (a task is at least two such transactions: assign and start, complete);
//! * **latency** — the worker running, tasks created at a steady rate; for each, the time
//!   from its creation's commit (when it became ready) to its assignment, from the events'
//!   own timestamps.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use omoi_orchestrator::{Work, Worker, WorkerConfig};
use reqwest::StatusCode;
use serde_json::json;

use omoi_testing::{spawn_app_on, TestApp, TestDatabase};

use crate::setup::{load_average, wait_for_events};
use crate::stats::Latencies;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// In-process agents.
    #[arg(long, default_value_t = 50)]
    pub agents: usize,
    /// Tasks in the throughput phase.
    #[arg(long, default_value_t = 5_000)]
    pub tasks: usize,
    /// Tasks created per second in the latency phase.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// Tasks/s over pgbench's transactions/s (issue #15).
const THROUGHPUT_RATIO_TARGET: f64 = 1.0;
/// Ready → assigned p99 at 200 tasks/s (issue #15).
const LATENCY_TARGET_MS: f64 = 10.0;
/// pgbench's clients, as `omoi-bench bench`'s default.
const PGBENCH_CLIENTS: usize = 16;
const PGBENCH_SECONDS: u64 = 5;

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.agents > 0 && args.tasks > 0 && args.rate > 0 && args.seconds > 0,
        "--agents, --tasks, --rate and --seconds must be positive"
    );
    let admin_url = crate::setup::admin_url().await?;
    let database = TestDatabase::create_on(&admin_url).await?;
    let mut app = spawn_app_on(database).await;
    app.token = Some(app.register_and_login("bench@example.com").await);
    // Tickets stay where they are: with `auto_advance` on, the ticket would be done once
    // the first phase's tasks completed and refuse the latency phase's tasks.
    let (_, project) = app.organization_and_manual_project().await;
    // Nor do they get tasks of their own: the benchmark's tasks are the only work.
    app.project_settings(&project, json!({"auto_spawn_tasks": false}))
        .await;
    let (status, ticket) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "bench"}),
        )
        .await;
    anyhow::ensure!(status == StatusCode::CREATED, "ticket: {ticket}");
    let ticket = ticket["id"].as_str().unwrap_or_default().to_string();
    let config = WorkerConfig {
        work: Work::Nothing,
        agents_per_organization: args.agents,
        project_concurrency: args.agents,
        organization_concurrency: args.agents,
        poll_interval_ms: 100,
        ..WorkerConfig::default()
    };
    println!(
        "worker: {} in-process agents, trivial work (load average {})",
        args.agents,
        load_average()
    );

    // Throughput: a backlog of N tasks.
    create_tasks(&app, &ticket, 0..args.tasks, 32).await?;
    crate::setup::analyze(&app.database.pool).await?;
    let started = Instant::now();
    let worker = Worker::start(app.database.pool.clone(), config);
    wait_for_events(&app.database.pool, "TaskCompleted", args.tasks as i64).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let tasks_per_second = args.tasks as f64 / elapsed;
    println!(
        "  throughput: {} tasks completed in {elapsed:.2} s = {tasks_per_second:.0} tasks/s",
        args.tasks,
    );
    let pgbench_tickets = crate::write::seed(&app, &project, PGBENCH_CLIENTS).await?;
    crate::write::register_for_pgbench(&app, &pgbench_tickets).await?;
    let transactions_per_second =
        crate::write::pgbench(&app, PGBENCH_CLIENTS, PGBENCH_SECONDS).await?;
    println!(
        "  pgbench of one command's SQL, {PGBENCH_CLIENTS} clients, {PGBENCH_SECONDS} s: {transactions_per_second:.0} tx/s; tasks/s ÷ tx/s = {:.2} (target ≥ {THROUGHPUT_RATIO_TARGET:.1})",
        tasks_per_second / transactions_per_second
    );

    // Latency: tasks arriving at a steady rate.
    let before: i64 = position(&app).await?;
    let total = (args.rate * args.seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut ticker = tokio::time::interval(interval);
    for n in args.tasks..args.tasks + total {
        ticker.tick().await;
        create_tasks(&app, &ticket, n..n + 1, 1).await?;
    }
    wait_for_events(
        &app.database.pool,
        "TaskCompleted",
        (args.tasks + total) as i64,
    )
    .await?;
    worker.stop().await;
    let latencies = ready_to_assigned_ms(&app.database.pool, before, None).await?;
    let summary = Latencies::of_ms(&latencies);
    println!(
        "  latency at {} tasks/s for {} s ({} tasks): ready → assigned p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 ≤ {LATENCY_TARGET_MS:.0} ms)",
        args.rate,
        args.seconds,
        latencies.len(),
        summary.p50,
        summary.p99,
        summary.max
    );
    // The server and its projectors stop before their database is dropped.
    app.stop().await;
    Ok(())
}

/// For each task created after global position `after` (of `organization`, or any) and
/// assigned: the time from its creation's commit (when it became ready) to its
/// assignment, in ms, from the events' own timestamps.
pub(crate) async fn ready_to_assigned_ms(
    pool: &sqlx::PgPool,
    after: i64,
    organization: Option<&str>,
) -> anyhow::Result<Vec<f64>> {
    Ok(sqlx::query_scalar(
        "select (extract(epoch from ((a.payload->'TaskAssigned'->>'at')::timestamptz
                                   - (c.metadata->>'occurred_at')::timestamptz)) * 1000)::float8
           from events c
           join events a on a.aggregate_id = c.aggregate_id and a.aggregate_type = 'Task'
                        and a.event_type = 'TaskAssigned'
          where c.aggregate_type = 'Task' and c.event_type = 'TaskCreated'
            and c.global_position > $1
            and ($2::text is null or c.metadata->>'organization_id' = $2)",
    )
    .bind(after)
    .bind(organization)
    .fetch_all(pool)
    .await?)
}

/// Creates the tasks numbered `numbers`, each titled apart, `parallel` requests at a time.
async fn create_tasks(
    app: &TestApp,
    ticket: &str,
    numbers: std::ops::Range<usize>,
    parallel: usize,
) -> anyhow::Result<()> {
    let results: Vec<StatusCode> = futures_util::stream::iter(numbers)
        .map(|n| async move {
            let title = crate::setup::task_title(format_args!("task {n}"), n as u64);
            let (status, _) = app
                .post(
                    "/api/v1/tasks",
                    json!({"ticket_id": ticket, "title": title, "task_type": "bench"}),
                )
                .await;
            status
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    anyhow::ensure!(
        results.iter().all(|s| *s == StatusCode::CREATED),
        "a task was not created"
    );
    Ok(())
}

async fn position(app: &TestApp) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("select coalesce(max(global_position), 0) from events")
            .fetch_one(&app.database.pool)
            .await?,
    )
}
