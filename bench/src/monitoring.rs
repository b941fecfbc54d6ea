//! `omoi-bench bench-monitoring`: what supervision costs at scale.
//!
//! One fresh database, API (with its projectors) and workers in this process. A large
//! organization gets, by set-based SQL in the domain events' exact shape, `--agents`
//! registered agents (idle) and `--open-tasks` open tasks over ten projects, of which
//! `--running` are assigned to and started by those agents (five per agent, one in fifty
//! started 45 minutes ago so that it is stalled; fifty near-duplicate pairs). Then:
//!
//! 1. **Pass.** A stepped worker with every check due at each step (sweep, heartbeat
//!    escalation, stalled tasks, anomaly readings of every agent, duplicates over the
//!    open tasks) against the same worker with none due: the difference of the medians
//!    is one monitoring pass. The Conductor's overview (coherence, alerts, findings) of
//!    each project is timed over HTTP.
//! 2. **Assignment.** In a small organization served by in-process agents, tasks created
//!    at `--rate` per second for `--seconds`: ready → assigned p50/p99 with monitoring
//!    passes every second (every check due, the duplicates and anomaly readings
//!    included), side by side with a run where none are due; each run's worker first
//!    takes one task (it reads the whole log when it starts), untimed.

use std::time::{Duration, Instant};

use omoi_orchestrator::{MonitoringConfig, Work, Worker, WorkerConfig};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

use omoi_testing::{spawn_app_on, TestApp, TestDatabase};

use crate::setup::{load_average, wait_for_events};
use crate::stats::{median, Latencies};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Registered agents of the large organization.
    #[arg(long, default_value_t = 1_000)]
    pub agents: i64,
    /// Open tasks of the large organization.
    #[arg(long, default_value_t = 50_000)]
    pub open_tasks: i64,
    /// Of them, running (five per agent at most).
    #[arg(long, default_value_t = 5_000)]
    pub running: i64,
    /// Timed passes of each kind.
    #[arg(long, default_value_t = 5)]
    pub passes: usize,
    /// Tasks created per second in the assignment phase.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of each assignment run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Run only these parts (`passes`, `overviews`, `assignment`), after the same
    /// generation; every part when not given.
    #[arg(long, value_delimiter = ',', value_parser = ["passes", "overviews", "assignment"])]
    pub only: Vec<String>,
}

const PASS_TARGET_MS: f64 = 1_000.0;
const PROJECTS: usize = 10;

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.agents > 0
            && args.open_tasks >= args.running
            && args.running <= args.agents * 5
            && args.passes > 0
            && args.rate > 0
            && args.seconds > 0,
        "--agents, --passes, --rate and --seconds must be positive, --running ≤ --open-tasks \
         and ≤ 5 × --agents"
    );
    let admin_url = crate::setup::admin_url().await?;
    let database = TestDatabase::create_on(&admin_url).await?;
    let mut app = spawn_app_on(database).await;
    app.token = Some(app.register_and_login("bench@example.com").await);
    println!(
        "monitoring: {} agents, {} open tasks ({} running) (load average {})",
        args.agents,
        args.open_tasks,
        args.running,
        load_average()
    );
    let (organization, projects) = large_organization(&app).await?;
    let started = Instant::now();
    generate(&app, organization, &projects, &args).await?;
    crate::projections::caught_up(&app.database.pool, Duration::from_secs(900)).await?;
    crate::setup::analyze(&app.database.pool).await?;
    println!(
        "  generated and projected in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let runs = |part: &str| args.only.is_empty() || args.only.iter().any(|p| p == part);
    if runs("passes") {
        passes(&app, &args).await?;
    }
    if runs("overviews") {
        overviews(&app, &projects).await?;
    }
    if runs("assignment") {
        assignment(&app, &args).await?;
    }
    app.stop().await;
    Ok(())
}

/// The large organization and its ten projects (made over HTTP, so the bench user may
/// read them).
async fn large_organization(app: &TestApp) -> anyhow::Result<(Uuid, Vec<(Uuid, Uuid)>)> {
    let (organization, first) = app.organization_and_project().await;
    let mut projects = vec![first];
    for n in 1..PROJECTS {
        let (status, body) = app
            .post(
                "/api/v1/projects",
                json!({"organization_id": organization, "name": format!("Project {n}"),
                       "settings": {"auto_spawn_tasks": false}}),
            )
            .await;
        anyhow::ensure!(status == StatusCode::CREATED, "project: {body}");
        projects.push(body["id"].as_str().unwrap_or_default().to_string());
    }
    let mut with_tickets = Vec::new();
    for project in projects {
        let ticket = app.ticket(&project, "Backlog").await;
        with_tickets.push((project.parse()?, ticket.parse()?));
    }
    Ok((organization.parse()?, with_tickets))
}

/// Agents (registered, idle), open tasks (needing a capability no in-process agent has,
/// so only their generated holders run them) and the running ones' assignments and starts.
async fn generate(
    app: &TestApp,
    organization: Uuid,
    projects: &[(Uuid, Uuid)],
    args: &Args,
) -> anyhow::Result<()> {
    let options = app.database.options.clone().disable_statement_logging();
    let mut conn = PgConnection::connect_with(&options).await?;
    let (project_ids, ticket_ids): (Vec<Uuid>, Vec<Uuid>) = projects.iter().copied().unzip();
    sqlx::raw_sql(crate::projections::HELPERS)
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(HELPERS).execute(&mut conn).await?;
    sqlx::query(AGENTS_SQL)
        .bind(organization)
        .bind(args.agents)
        .execute(&mut conn)
        .await?;
    sqlx::query(TASKS_SQL)
        .bind(organization)
        .bind(&project_ids)
        .bind(&ticket_ids)
        .bind(args.open_tasks)
        .bind(args.running)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// `mon_ts(minutes_ago)`: a timestamp as chrono writes it; ids and metadata are made by
/// `bench-projections`' helpers (`bench_id`, `bench_meta`).
const HELPERS: &str = r#"
create function mon_ts(minutes_ago bigint) returns text language sql stable as $$
    select to_char((now() - make_interval(mins => minutes_ago::int)) at time zone 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;
"#;

const AGENTS_SQL: &str = "
    with agent as (
        select a, bench_id(x'9004'::int, a) as id from generate_series(0, $2 - 1) as a
    ), rows as (
        select 0 as step, a, 'Agent' as aggregate_type, id, 1 as sequence,
               'AgentRegistered' as event_type,
               jsonb_build_object('AgentRegistered', jsonb_build_object(
                   'agent_id', id, 'organization_id', $1::uuid, 'project_id', null,
                   'name', 'agent-' || a, 'agent_type', 'worker',
                   'capabilities', jsonb_build_array('gpu'), 'capacity', 5,
                   'registered_at', mon_ts(120))) as payload,
               bench_meta($1, null, 'system:bench', mon_ts(120), id) as metadata
          from agent
        union all
        select 1, a, 'Agent', id, 2, 'AgentStatusChanged',
               jsonb_build_object('AgentStatusChanged', jsonb_build_object(
                   'from', 'spawning', 'to', 'idle', 'reason', null, 'at', mon_ts(120))),
               bench_meta($1, null, 'agent:' || id, mon_ts(120), id)
          from agent
    )
    insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata)
    select aggregate_type, id::text, sequence, event_type, '1', payload, metadata
      from rows order by step, a";

/// Task `n` of project `n % 10`; the first `$5` are run by agent `n / 5`, one in fifty of
/// them started 45 minutes ago (stalled); tasks `$5 + 100 .. $5 + 150` repeat the text of
/// the task a hundred before (the same project) with a word more (near-duplicates).
const TASKS_SQL: &str = "
    with task as (
        select n, bench_id(x'9006'::int, n) as id,
               ($2::uuid[])[1 + n % array_length($2::uuid[], 1)] as project,
               ($3::uuid[])[1 + n % array_length($3::uuid[], 1)] as ticket,
               case when n between $5 + 100 and $5 + 149
                    then 'Implement ' || encode(sha256((n - 100)::text::bytea), 'base64') || ' again'
                    else 'Implement ' || encode(sha256(n::text::bytea), 'base64') end as title,
               bench_id(x'9004'::int, n / 5) as agent,
               case when n % 50 = 0 then 45 else n % 20 end as minutes_ago
          from generate_series(0, $4 - 1) as n
    ), rows as (
        select 0 as step, n, id, 1 as sequence, 'TaskCreated' as event_type,
               jsonb_build_object('TaskCreated', jsonb_build_object(
                   'task_id', id, 'organization_id', $1::uuid, 'project_id', project,
                   'ticket_id', ticket, 'title', title, 'description', '',
                   'task_type', 'implement', 'phase', 'PHASE_IMPLEMENTATION',
                   'priority', 'MEDIUM', 'depends_on', '[]'::jsonb,
                   'required_capabilities', jsonb_build_array('gpu'), 'max_retries', 3,
                   'timeout_seconds', null, 'created_at', mon_ts(90))) as payload,
               bench_meta($1, project, 'system:bench', mon_ts(90), id) as metadata
          from task
        union all
        select 1, n, id, 2, 'TaskAssigned',
               jsonb_build_object('TaskAssigned', jsonb_build_object(
                   'agent_id', agent, 'at', mon_ts(minutes_ago))),
               bench_meta($1, project, 'agent:' || agent, mon_ts(minutes_ago), id)
          from task where n < $5
        union all
        select 2, n, id, 3, 'TaskStarted',
               jsonb_build_object('TaskStarted', jsonb_build_object('at', mon_ts(minutes_ago))),
               bench_meta($1, project, 'agent:' || agent, mon_ts(minutes_ago), id)
          from task where n < $5
    )
    insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                        payload, metadata)
    select 'Task', id::text, sequence, event_type, '1', payload, metadata
      from rows order by step, n";

/// A worker whose checks are all due at every step (`every_ms` 0), or never.
fn monitoring_worker(every_ms: u64) -> WorkerConfig {
    WorkerConfig {
        work: Work::Nothing,
        check_interval_ms: every_ms,
        monitoring: MonitoringConfig {
            conductor_interval_ms: every_ms,
            anomaly_interval_ms: every_ms,
            ..MonitoringConfig::default()
        },
        ..WorkerConfig::default()
    }
}

/// Steps of a worker with every check due against one with none due.
async fn passes(app: &TestApp, args: &Args) -> anyhow::Result<()> {
    let mut timings = Vec::new();
    for every_ms in [0, u64::MAX / 4] {
        let mut worker = Worker::stepped(app.database.pool.clone(), monitoring_worker(every_ms));
        // The first step reads the whole log (and sweeps once, whatever is due).
        let started = Instant::now();
        worker.step().await;
        let catch_up = started.elapsed();
        let mut steps = Vec::new();
        for _ in 0..args.passes {
            let started = Instant::now();
            worker.step().await;
            steps.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        worker.stop().await;
        println!(
            "  worker step, {}: median {:.1} ms, max {:.1} ms over {} ({:.1} s to read the log first)",
            if every_ms == 0 { "every check due" } else { "no check due  " },
            median(&steps),
            steps.iter().copied().fold(0.0, f64::max),
            steps.len(),
            catch_up.as_secs_f64()
        );
        timings.push(median(&steps));
    }
    let pass = timings[0] - timings[1];
    println!(
        "  one monitoring pass (the difference of the medians): {pass:.1} ms (target ≤ {PASS_TARGET_MS:.0} ms)"
    );
    let readings: i64 = sqlx::query_scalar("select count(*) from agent_anomaly_readings")
        .fetch_one(&app.database.pool)
        .await?;
    // The Conductor's comparison runs beside the worker (and ended with it): timed alone,
    // from the first open task.
    sqlx::query("update conductor_cursor set transaction_id = 0, position = 0")
        .execute(&app.database.pool)
        .await?;
    let bus = std::sync::Arc::new(omoi_store::CommandBus::new(
        app.database.pool.clone(),
        Default::default(),
    ));
    let started = Instant::now();
    omoi_orchestrator::conductor::flag_new_duplicates(
        app.database.pool.clone(),
        bus,
        MonitoringConfig::default().duplicate_similarity,
        chrono::Utc::now(),
    )
    .await;
    let took = started.elapsed().as_secs_f64();
    println!(
        "  the Conductor's comparison of every open task from the first (beside the worker): \
         {took:.2} s = {:.2} ms a task; later passes compare only the tasks created since",
        took * 1000.0 / args.open_tasks as f64
    );
    let stalled: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'TaskStalled'")
            .fetch_one(&app.database.pool)
            .await?;
    let duplicates: i64 =
        sqlx::query_scalar("select count(*) from events where event_type = 'DuplicateSuspected'")
            .fetch_one(&app.database.pool)
            .await?;
    println!(
        "  found: {readings} agents read, {stalled} tasks stalled, {duplicates} duplicates flagged"
    );
    Ok(())
}

/// The Conductor's overview of each project, over HTTP.
async fn overviews(app: &TestApp, projects: &[(Uuid, Uuid)]) -> anyhow::Result<()> {
    app.caught_up().await;
    let mut took = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        for (project, _) in projects {
            let started = Instant::now();
            let (status, body) = app
                .get(&format!("/api/v1/monitoring/overview?project_id={project}"))
                .await;
            took.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(status == StatusCode::OK, "overview: {body}");
            statuses.push(
                body["coherence"]["status"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            );
        }
    }
    let summary = Latencies::of_ms(&took);
    statuses.sort();
    statuses.dedup();
    println!(
        "  overview (coherence, alerts, findings) of a project: p50 {:.1} ms, max {:.1} ms; statuses {statuses:?}",
        summary.p50, summary.max
    );
    Ok(())
}

/// Ready → assigned in a small organization with monitoring passes every second, side by
/// side with none.
async fn assignment(app: &TestApp, args: &Args) -> anyhow::Result<()> {
    let (organization, project) = app.organization_and_manual_project().await;
    let ticket = app.ticket(&project, "Assignment").await;
    let mut results = Vec::new();
    for (label, every_ms) in [
        ("monitoring off", u64::MAX / 4),
        ("monitoring every 1 s", 1_000),
    ] {
        let config = WorkerConfig {
            agents_per_organization: 50,
            project_concurrency: 50,
            organization_concurrency: 50,
            poll_interval_ms: 100,
            ..monitoring_worker(every_ms)
        };
        let ticket = &ticket;
        let create_task = |title: String| async move {
            let (status, body) = app
                .post(
                    "/api/v1/tasks",
                    json!({"ticket_id": ticket, "title": title, "task_type": "bench"}),
                )
                .await;
            anyhow::ensure!(status == StatusCode::CREATED, "task: {body}");
            anyhow::Ok(())
        };
        let completed = || async {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from events where event_type = 'TaskCompleted'",
            )
            .fetch_one(&app.database.pool)
            .await
        };
        let worker = Worker::start(app.database.pool.clone(), config);
        // A worker reads the whole log when it starts (the large organization's tens of
        // thousands of events): one task is run through first, so that what is timed is a
        // worker at work, not its start.
        let warm_up_done = completed().await? + 1;
        create_task(format!("warm-up ({label})")).await?;
        wait_for_events(&app.database.pool, "TaskCompleted", warm_up_done).await?;
        let before: i64 =
            sqlx::query_scalar("select coalesce(max(global_position), 0) from events")
                .fetch_one(&app.database.pool)
                .await?;
        let completed_before = completed().await?;
        let total = (args.rate * args.seconds) as i64;
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
        for n in 0..total {
            ticker.tick().await;
            create_task(format!("a{n}")).await?;
        }
        wait_for_events(
            &app.database.pool,
            "TaskCompleted",
            completed_before + total,
        )
        .await?;
        worker.stop().await;
        let latencies =
            crate::worker::ready_to_assigned_ms(&app.database.pool, before, Some(&organization))
                .await?;
        let summary = Latencies::of_ms(&latencies);
        println!(
            "  ready → assigned at {} tasks/s, {label}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} tasks)",
            args.rate,
            summary.p50,
            summary.p99,
            summary.max,
            latencies.len()
        );
        results.push(summary.p99);
    }
    println!(
        "  p99 with monitoring ÷ without: {:.2}",
        results[1] / results[0].max(0.001)
    );
    Ok(())
}
