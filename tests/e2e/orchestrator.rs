//! The orchestrator end to end, against a real server and PostgreSQL: workers running real
//! shell commands, dependency order, exactly-once assignment across two workers, race-free
//! cycle refusal, stale agents, timeouts that kill, retries that really wait, permanent
//! errors, cancellation that stops the process.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use omoi_orchestrator::{Work, Worker, WorkerConfig};
use omoi_store::log::{read_global, Visibility};
use omoi_store::Cursor;
use omoi_testing::{held_transaction, scratch_dir, spawn_app, TestApp, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

/// A worker that checks often, so the tests take seconds.
fn config(work: Work, directory: &Path) -> WorkerConfig {
    WorkerConfig {
        work,
        agents_per_organization: 4,
        stale_after_ms: 1_500,
        check_interval_ms: 200,
        poll_interval_ms: 100,
        progress_interval_ms: 1_000,
        work_dir: directory.join("work"),
        ..WorkerConfig::default()
    }
}

fn command(text: &str) -> Work {
    Work::Command(text.to_string())
}

/// The types of the task's events, oldest first, progress reports (a run's output lines)
/// aside.
async fn kinds_without_progress(app: &TestApp, id: &str) -> Vec<String> {
    history(app, id)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .filter(|kind| kind != "TaskProgressReported")
        .collect()
}

/// The task's events, oldest first: (type, payload).
async fn history(app: &TestApp, id: &str) -> Vec<(String, Value)> {
    app.task_history(id)
        .await
        .iter()
        .map(|e| {
            let kind = e["event_type"].as_str().expect("a type").to_string();
            (kind.clone(), e["payload"][&kind].clone())
        })
        .collect()
}

/// The statuses agent `id` was moved to, oldest first.
async fn agent_statuses(app: &TestApp, id: &str) -> Vec<String> {
    let (status, body) = app.get(&format!("/api/v1/agents/{id}/history")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == "AgentStatusChanged")
        .map(|e| {
            e["payload"]["AgentStatusChanged"]["to"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// A fault: the first `times` events written that meet `condition` (SQL on the trigger's
/// `new` row) are refused with an error. A sequence counts the attempts outside any
/// transaction ([`refusals_tried`]), so a refused write still counts.
async fn refuse_first(app: &TestApp, times: i64, condition: &str) {
    for statement in [
        "create sequence refusals_tried".to_string(),
        format!(
            "create function refuse_first() returns trigger language plpgsql as $$
             begin
                 if {condition} and nextval('refusals_tried') <= {times} then
                     raise exception 'the disk is full (injected)';
                 end if;
                 return new;
             end;
             $$"
        ),
        "create trigger refuse_first before insert on events
             for each row execute function refuse_first()"
            .to_string(),
    ] {
        sqlx::query(&statement)
            .execute(&app.database.pool)
            .await
            .expect("the fault");
    }
}

/// How many writes [`refuse_first`]'s condition met so far.
async fn refusals_tried(app: &TestApp) -> i64 {
    sqlx::query_scalar("select last_value from refusals_tried")
        .fetch_one(&app.database.pool)
        .await
        .expect("the attempts")
}

fn at(payload: &Value, field: &str) -> chrono::DateTime<chrono::Utc> {
    payload[field]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time `{field}` in {payload}"))
}

async fn until_file(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{}", pid.trim())).exists()
}

async fn until_dead(pid: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_diamond_of_tasks_runs_in_dependency_order_through_a_real_command() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let log = directory.join("order.log");
    let ticket = app.ticket(&project, "Work").await;
    let a = app.task(&ticket, "a", json!({})).await;
    let b = app.task(&ticket, "b", json!({"depends_on": [a]})).await;
    let c = app.task(&ticket, "c", json!({"depends_on": [a]})).await;
    let d = app.task(&ticket, "d", json!({"depends_on": [b, c]})).await;
    // Each task checks it was given its own directory (`<task>-<attempt>-<run>`) and
    // file, then logs its title.
    let script = format!(
        "case \"$(basename \"$PWD\")\" in \"$OMOI_TASK_ID-1-\"[0-9]*) ;; *) exit 9 ;; esac \
         && grep -q \"$OMOI_TASK_ID\" \"$OMOI_TASK_FILE\" \
         && echo \"$OMOI_TASK_TITLE\" >> {} && echo done",
        log.display()
    );
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command(&script), &directory),
    );
    for id in [&a, &b, &c, &d] {
        let state = app.until_task_status(id, "completed").await;
        assert_eq!(state["result"]["exit_code"], 0, "{state}");
        assert_eq!(state["result"]["output"], json!(["done"]), "{state}");
    }
    worker.stop().await;
    let order: Vec<String> = std::fs::read_to_string(&log)
        .expect("the log")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[0], "a");
    assert_eq!(order[3], "d");
    let mut middle = vec![order[1].clone(), order[2].clone()];
    middle.sort();
    assert_eq!(middle, ["b", "c"]);
}

/// A transaction left open anywhere (here one that took a transaction id and waits) holds
/// every reader of the gapless log back. The worker still runs a chain of tasks created
/// after it began — each task's creation and its dependency's completion taken from the
/// events committed beyond that horizon — and when the transaction ends and the log
/// brings those events again, nothing is applied twice: every task was assigned, started
/// and completed once.
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_runs_new_work_while_an_open_transaction_holds_the_log_back() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let ticket = app.ticket(&project, "Work").await;
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command("echo done"), &directory),
    );

    let held = held_transaction(&app.database.pool).await;
    let first = app.task(&ticket, "first", json!({})).await;
    let second = app
        .task(&ticket, "second", json!({"depends_on": [first]}))
        .await;
    for id in [&first, &second] {
        app.until_task_status(id, "completed").await;
    }
    // The premise: a reader of the gapless log does not see them yet.
    let visible = read_global(
        &app.database.pool,
        Cursor::default(),
        10_000,
        &Visibility::Everything,
    )
    .await
    .expect("the log");
    assert!(
        !visible.events.iter().any(|e| e.aggregate_id == first),
        "the open transaction did not hold the log back"
    );
    held.rollback().await.expect("the rollback");

    // Created after the log moved on: run once it has brought the others again.
    let third = app
        .task(&ticket, "third", json!({"depends_on": [second]}))
        .await;
    app.until_task_status(&third, "completed").await;
    worker.stop().await;
    for id in [&first, &second, &third] {
        let kinds: Vec<String> = history(&app, id)
            .await
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        for kind in [
            "TaskCreated",
            "TaskAssigned",
            "TaskStarted",
            "TaskCompleted",
        ] {
            let times = kinds.iter().filter(|k| *k == kind).count();
            assert_eq!(times, 1, "task {id}: {kind} {times} times in {kinds:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_assign_each_task_exactly_once() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let mut tickets = Vec::new();
    for _ in 0..4 {
        tickets.push(app.ticket(&project, "Work").await);
    }
    let mut tasks = Vec::new();
    for n in 0..120 {
        tasks.push(app.task(&tickets[n % 4], &format!("t{n}"), json!({})).await);
    }
    let busy = WorkerConfig {
        agents_per_organization: 6,
        project_concurrency: 100,
        organization_concurrency: 100,
        ..config(Work::Nothing, &directory)
    };
    let other_pool = TestDatabase::pool(&app.database.options, 4)
        .await
        .expect("a second pool");
    let first = Worker::start(app.database.pool.clone(), busy.clone());
    let second = Worker::start(other_pool, busy);
    for id in &tasks {
        app.until_task_status(id, "completed").await;
    }
    first.stop().await;
    second.stop().await;
    let assignments: Vec<(String, i64)> = sqlx::query_as(
        "select aggregate_id, count(*) from events
          where aggregate_type = 'Task' and event_type = 'TaskAssigned' group by aggregate_id",
    )
    .fetch_all(&app.database.pool)
    .await
    .expect("the assignments");
    let assignments: HashMap<String, i64> = assignments.into_iter().collect();
    assert_eq!(assignments.len(), tasks.len());
    for id in &tasks {
        assert_eq!(
            assignments[id], 1,
            "task {id} assigned {} times",
            assignments[id]
        );
    }
    // Both workers took part (each registered its own agents).
    let agents: Vec<(String,)> = sqlx::query_as(
        "select distinct payload->'TaskAssigned'->>'agent_id' from events
          where event_type = 'TaskAssigned'",
    )
    .fetch_all(&app.database.pool)
    .await
    .expect("the agents");
    assert!(agents.len() > 6, "only {} agents worked", agents.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_additions_closing_a_cycle_do_not_both_succeed() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Work").await;
    for _ in 0..10 {
        let a = app.task(&ticket, "a", json!({})).await;
        let b = app.task(&ticket, "b", json!({})).await;
        let (on_a, on_b) = (
            format!("/api/v1/tasks/{a}/dependencies"),
            format!("/api/v1/tasks/{b}/dependencies"),
        );
        let (first, second) = tokio::join!(
            app.post(&on_a, json!({"depends_on": b})),
            app.post(&on_b, json!({"depends_on": a})),
        );
        let succeeded = [&first, &second]
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .count();
        assert_eq!(succeeded, 1, "{first:?} {second:?}");
        let (_, refused) = if first.0 == StatusCode::OK {
            second
        } else {
            first
        };
        assert_eq!(refused["code"], "dependency_cycle", "{refused}");
    }
    // The refusal names the cycle's path.
    let a = app.task(&ticket, "a", json!({})).await;
    let b = app.task(&ticket, "b", json!({"depends_on": [a]})).await;
    let c = app.task(&ticket, "c", json!({"depends_on": [b]})).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{a}/dependencies"),
            json!({"depends_on": c}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .expect("a detail")
            .contains(&format!("{a} -> {c} -> {b} -> {a}")),
        "{body}"
    );
}

/// A project whose log holds more dependency changes than a check reads
/// (`cycles::MAX_EDGE_EVENTS`) is refused new edges, with a 409 naming the rule, rather
/// than checked on and on; nothing is appended.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_with_too_many_dependency_changes_refuses_new_edges() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Work").await;
    let a = app.task(&ticket, "a", json!({})).await;
    let b = app.task(&ticket, "b", json!({})).await;
    let c = app.task(&ticket, "c", json!({})).await;
    // Task a's dependency on b added and removed again, past the bound: genuine events of
    // a genuine task, written as the bus writes them.
    let changes = omoi_workflow::cycles::MAX_EDGE_EVENTS + 2;
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         select 'Task', $1, last.sequence + n, kind, '1',
                jsonb_build_object(kind, jsonb_build_object('depends_on', $2::text)), last.metadata
           from (select sequence, metadata from events
                  where aggregate_type = 'Task' and aggregate_id = $1
                  order by sequence desc limit 1) last,
                generate_series(1, $3::int) n,
                lateral (select case n % 2 when 1 then 'TaskDependencyAdded'
                                           else 'TaskDependencyRemoved' end as kind) k",
    )
    .bind(&a)
    .bind(&b)
    .bind(changes as i32)
    .execute(&app.database.pool)
    .await
    .expect("the changes");
    let events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from events")
            .fetch_one(&app.database.pool)
            .await
            .expect("a count")
    };
    let before = events().await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{c}/dependencies"),
            json!({"depends_on": a}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "dependency_graph_too_large", "{body}");
    assert_eq!(events().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_agents_task_is_reassigned_and_completes() {
    // Two HTTP agents hold a task each at once.
    let app = omoi_testing::spawn_app_running_at_once(2).await;
    let (organization, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let (status, agent) = app
        .post(
            "/api/v1/agents/register",
            json!({"organization_id": organization, "agent_type": "worker"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().expect("an id").to_string();
    let (status, body) = app
        .post(&format!("/api/v1/agents/{agent}/heartbeat"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Another never beats at all: a person's assignment starts its lease, as a claim
    // would (before, it had none, and its task stayed running for ever).
    let mute = app.register_agent(&organization).await.id;
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "held", json!({})).await;
    let muted = app.task(&ticket, "held by the mute", json!({})).await;
    for (task, holder) in [(&id, &agent), (&muted, &mute)] {
        for (path, body) in [
            (
                format!("/api/v1/tasks/{task}/assign"),
                json!({"agent_id": holder}),
            ),
            (format!("/api/v1/tasks/{task}/start"), json!({})),
        ] {
            let (status, answer) = app.post(&path, body).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
        }
    }
    // The HTTP agents go silent; the worker's own agents are the others.
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command("echo rescued"), &directory),
    );
    let state = app.until_task_status(&id, "completed").await;
    let rescued = app.until_task_status(&muted, "completed").await;
    worker.stop().await;
    assert_ne!(rescued["assigned_agent_id"], json!(mute), "{rescued}");
    assert_eq!(state["result"]["output"], json!(["rescued"]), "{state}");
    assert_ne!(state["assigned_agent_id"], json!(agent), "{state}");
    let events = history(&app, &id).await;
    let failed = events
        .iter()
        .find(|(kind, _)| kind == "TaskFailed")
        .expect("the silent agent's attempt failed");
    assert!(
        failed.1["error"]
            .as_str()
            .expect("an error")
            .contains("heartbeat"),
        "{failed:?}"
    );
    let (status, stale) = app.get(&format!("/api/v1/agents/{agent}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stale["state"]["status"], "failed", "{stale}");
}

/// A silent agent whose failure the database refuses at first (its first three writes
/// fail) is failed by a later sweep: its lease, claimed as expired, is given back when
/// the failure is not recorded. Before, the claim stood and the agent stayed alive in the
/// log for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_whose_failure_was_refused_is_failed_by_a_later_sweep() {
    a_silent_agents_refused_move_is_made_by_a_later_sweep("failed", |_| {}).await;
}

/// A silent agent, whose first three moves to `status` the database refuses, watched by
/// a worker with `settings` changed by `adjust`: some sweep after them makes the move.
async fn a_silent_agents_refused_move_is_made_by_a_later_sweep(
    status: &str,
    adjust: impl FnOnce(&mut WorkerConfig),
) {
    let app = spawn_app().await;
    let (organization, _) = app.organization_and_project().await;
    let directory = scratch_dir();
    let agent = app.register_agent(&organization).await;
    agent.heartbeat(&app).await;
    refuse_first(
        &app,
        3,
        &format!(
            "new.event_type = 'AgentStatusChanged'
             and new.payload -> 'AgentStatusChanged' ->> 'to' = '{status}'"
        ),
    )
    .await;
    let mut settings = config(command("true"), &directory);
    adjust(&mut settings);
    let worker = Worker::start(app.database.pool.clone(), settings);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, state) = app.get(&format!("/api/v1/agents/{}", agent.id)).await;
        if state["state"]["status"] == status {
            break;
        }
        assert!(Instant::now() < deadline, "never {status}: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
    let tried = refusals_tried(&app).await;
    assert!(tried > 3, "the fault was not reached: {tried}");
}

/// A worker's own agent degraded while its renewals were held up (here its lease aged
/// by hand) is revived by the next renewal, as an HTTP agent is by its next heartbeat.
/// Before, it stayed degraded — in trouble, to the Conductor — for good.
#[tokio::test(flavor = "multi_thread")]
async fn a_workers_agent_degraded_while_it_was_held_up_is_revived() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let ticket = app.ticket(&project, "Work").await;
    let id = app
        .task(&ticket, "brings the worker's agents", json!({}))
        .await;
    let mut settings = config(command("true"), &directory);
    settings.agents_per_organization = 1;
    settings.monitoring.heartbeat_interval_ms = 300;
    let worker = Worker::start(app.database.pool.clone(), settings);
    let done = app.until_task_status(&id, "completed").await;
    let agent = done["assigned_agent_id"]
        .as_str()
        .expect("the worker's agent")
        .to_string();
    // Silent for longer than two intervals, not as long as the stale threshold: the
    // next sweep degrades it, unless a renewal came first (then again).
    let deadline = Instant::now() + PATIENCE;
    loop {
        sqlx::query(
            "update agent_leases set heartbeat_at = now() - interval '1 second'
              where agent_id = $1",
        )
        .bind(agent.parse::<uuid::Uuid>().expect("an id"))
        .execute(&app.database.pool)
        .await
        .expect("aged");
        tokio::time::sleep(Duration::from_millis(250)).await;
        if agent_statuses(&app, &agent)
            .await
            .iter()
            .any(|s| s == "degraded")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never degraded");
    }
    loop {
        let seen = agent_statuses(&app, &agent).await;
        let degraded = seen
            .iter()
            .rposition(|s| s == "degraded")
            .expect("degraded");
        if seen[degraded + 1..].iter().any(|s| s == "idle") {
            break;
        }
        assert!(Instant::now() < deadline, "never revived: {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_task_has_its_process_killed() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let pid = directory.join("pid");
    let ticket = app.ticket(&project, "Work").await;
    let id = app
        .task(
            &ticket,
            "slow",
            json!({"timeout_seconds": 1, "max_retries": 0}),
        )
        .await;
    let script = format!("echo $$ > {}; exec sleep 60", pid.display());
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command(&script), &directory),
    );
    let pid = until_file(&pid).await;
    assert!(alive(&pid));
    app.until_task_status(&id, "timed_out").await;
    until_dead(&pid).await;
    worker.stop().await;
    let events = history(&app, &id).await;
    assert!(events.iter().any(|(kind, _)| kind == "TaskTimedOut"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_task_is_retried_only_after_its_backoff() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "flaky", json!({"max_retries": 2})).await;
    // Fails on its first attempt, succeeds on the second.
    let script = "test \"$OMOI_TASK_ATTEMPT\" -ge 2 || { echo 'flaky network' >&2; exit 3; }";
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command(script), &directory),
    );
    app.until_task_status(&id, "completed").await;
    worker.stop().await;
    let events = history(&app, &id).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "TaskCreated",
            "TaskAssigned",
            "TaskStarted",
            "TaskFailed",
            "TaskRetryScheduled",
            "TaskAssigned",
            "TaskStarted",
            "TaskCompleted"
        ]
    );
    let failed_at = at(&events[3].1, "at");
    let not_before = at(&events[4].1, "not_before");
    let reassigned_at = at(&events[5].1, "at");
    let backoff = (not_before - failed_at).num_milliseconds();
    // The first retry waits 1 s ± 25 %.
    assert!((750..=1250).contains(&backoff), "backoff {backoff} ms");
    assert!(
        reassigned_at >= not_before,
        "reassigned at {reassigned_at}, before {not_before}"
    );
    assert!(events[3].1["error"]
        .as_str()
        .expect("an error")
        .contains("flaky network"));
}

/// A run's outcome that the database refuses for a while (here its first five writes
/// fail, group commit's own fallback included) is recorded once it can be: the task
/// completes, once. Before, the first failure was logged and the task stayed running
/// under an agent the worker went on giving work.
#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_the_database_refused_for_a_while_is_recorded_once_it_can_be() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "steady", json!({})).await;
    refuse_first(&app, 5, "new.event_type = 'TaskCompleted'").await;
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command("echo done"), &directory),
    );
    let state = app.until_task_status(&id, "completed").await;
    assert_eq!(state["result"]["output"], json!(["done"]), "{state}");
    worker.stop().await;
    let tried = refusals_tried(&app).await;
    assert!(tried > 5, "the fault was not reached: {tried}");
    let kinds = kinds_without_progress(&app, &id).await;
    assert_eq!(
        kinds,
        [
            "TaskCreated",
            "TaskAssigned",
            "TaskStarted",
            "TaskCompleted"
        ]
    );
    let _ = std::fs::remove_dir_all(directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_error_is_not_retried() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "doomed", json!({"max_retries": 3})).await;
    let script = "echo 'Permission denied: /etc/shadow' >&2; exit 1";
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command(script), &directory),
    );
    let state = app.until_task_status(&id, "permanently_failed").await;
    worker.stop().await;
    assert_eq!(state["retry_count"], 0, "{state}");
    let events = history(&app, &id).await;
    let assigned = events
        .iter()
        .filter(|(kind, _)| kind == "TaskAssigned")
        .count();
    assert_eq!(assigned, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_running_task_stops_its_process() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let pid = directory.join("pid");
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "long", json!({})).await;
    let script = format!("echo started; echo $$ > {}; exec sleep 60", pid.display());
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command(&script), &directory),
    );
    let pid = until_file(&pid).await;
    app.until_task_status(&id, "running").await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{id}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until_dead(&pid).await;
    // Nothing records an outcome after the cancellation.
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await;
    let state = app.task_state(&id).await;
    assert_eq!(state["status"], "cancelled", "{state}");
    let events = history(&app, &id).await;
    assert_eq!(
        events.last().map(|(k, _)| k.as_str()),
        Some("TaskCancelled")
    );
}

/// An in-process run whose assignment is withdrawn (as `assignment_withdrawal` does when
/// its agent had been quarantined an instant before) is stopped, counts no attempt, and
/// the task runs again and completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawn_running_task_stops_its_process_and_runs_again() {
    use omoi_domain::task::{Task, TaskCommand};
    use omoi_store::{Actor, CommandContext};

    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let (pid, ran) = (directory.join("pid"), directory.join("ran"));
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "long", json!({})).await;
    // The first run waits to be stopped; the second completes at once.
    let script = format!(
        "if [ -e {ran} ]; then echo again; exit 0; fi; touch {ran}; echo $$ > {pid}; exec sleep 60",
        ran = ran.display(),
        pid = pid.display()
    );
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command(&script), &directory),
    );
    let pid = until_file(&pid).await;
    let state = app.until_task_status(&id, "running").await;
    let assigned_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(state["assigned_at"].clone()).expect("an assignment");
    let withdraw = TaskCommand::WithdrawAssignment {
        assigned_at,
        at: chrono::Utc::now(),
    };
    let context = CommandContext::new(Actor::System("assignment_withdrawal"), "withdrawn");
    app.second_bus()
        .await
        .execute::<Task>(&id, withdraw, &context)
        .await
        .expect("withdrawn");
    until_dead(&pid).await;
    let state = app.until_task_status(&id, "completed").await;
    worker.stop().await;
    assert_eq!(state["retry_count"], 0, "{state}");
    let kinds = kinds_without_progress(&app, &id).await;
    assert_eq!(
        kinds,
        [
            "TaskCreated",
            "TaskAssigned",
            "TaskStarted",
            "TaskAssignmentWithdrawn",
            "TaskAssigned",
            "TaskStarted",
            "TaskCompleted"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_agent_registers_claims_runs_and_completes_tasks_with_its_credential() {
    let mut app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (status, registered) = app
        .post(
            "/api/v1/agents/register",
            json!({"organization_id": organization, "project_id": project,
                   "agent_type": "worker", "capabilities": ["rust"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let agent = registered["id"].as_str().expect("an id").to_string();
    let credential = registered["credential"]
        .as_str()
        .expect("a credential")
        .to_string();
    let ticket = app.ticket(&project, "Work").await;
    let plain = app.task(&ticket, "plain", json!({"priority": "LOW"})).await;
    let urgent = app
        .task(&ticket, "urgent", json!({"priority": "CRITICAL"}))
        .await;
    let beyond = app
        .task(&ticket, "gpu", json!({"required_capabilities": ["gpu"]}))
        .await;
    // Claimed at once: a claim first lets its queue read what was committed before it, so
    // the order below is the score's.

    // From here on the agent speaks for itself.
    let owner = app.token.replace(credential);
    let (status, body) = app
        .post(&format!("/api/v1/agents/{agent}/heartbeat"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut done = Vec::new();
    for _ in 0..2 {
        let (status, claimed) = app
            .post(
                &format!("/api/v1/agents/{agent}/claim"),
                json!({"wait_seconds": 5}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{claimed}");
        let id = claimed["id"].as_str().expect("a task").to_string();
        assert_eq!(claimed["state"]["assigned_agent_id"], json!(agent));
        for (path, body) in [
            (format!("/api/v1/tasks/{id}/start"), json!({})),
            (
                format!("/api/v1/tasks/{id}/progress"),
                json!({"message": "half way"}),
            ),
            (
                format!("/api/v1/tasks/{id}/complete"),
                json!({"result": {"ok": true}}),
            ),
        ] {
            let (status, answer) = app.post(&path, body).await;
            assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        }
        done.push(id);
    }
    // Best score first; the task needing a capability the agent lacks is never offered.
    assert_eq!(done, vec![urgent, plain]);
    // With nothing it may run, a claim waits (the server holds it) and then answers 204.
    let claim_path = format!("/api/v1/agents/{agent}/claim");
    let claim = app.post(&claim_path, json!({"wait_seconds": 1}));
    let ((status, body), ()) = tokio::join!(claim, app.until_claims_waiting(1));
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(app.claims_waiting().await, 0, "the claim answered");
    // A long poll is answered as soon as a task becomes ready.
    let waiting = {
        let app = &app;
        let agent = agent.clone();
        async move {
            app.post(
                &format!("/api/v1/agents/{agent}/claim"),
                json!({"wait_seconds": 20}),
            )
            .await
        }
    };
    let later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = app
            .send_as(
                owner.as_deref(),
                reqwest::Method::POST,
                "/api/v1/tasks",
                Some(json!({"ticket_id": ticket, "title": "late", "task_type": "implement"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("an id").to_string()
    };
    let ((status, claimed), late) = tokio::join!(waiting, later);
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["id"], json!(late));
    // The credential cannot do what a member does.
    let (status, _) = app
        .post(
            "/api/v1/tasks",
            json!({"ticket_id": ticket, "title": "x", "task_type": "implement"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let state = app.task_state(&beyond).await;
    assert_eq!(state["status"], "pending");
}

/// The README's agent (examples/agent.py) joins with a user's token and runs a task.
#[tokio::test(flavor = "multi_thread")]
async fn the_example_agent_script_runs_a_task() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "scripted", json!({})).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/agent.py");
    let output = tokio::process::Command::new("python3")
        .args([script, "--once", "echo \"did $OMOI_TASK_TITLE\""])
        .env("OMOI_URL", &app.address)
        .env("OMOI_TOKEN", app.token.as_deref().expect("a token"))
        .env("OMOI_ORGANIZATION_ID", &organization)
        .output()
        .await
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    let state = app.until_task_status(&id, "completed").await;
    assert_eq!(
        state["result"]["output"],
        json!(["did scripted"]),
        "{state}"
    );
    assert_eq!(state["progress"], "did scripted", "{state}");
    let (status, transcript) = app.get(&format!("/api/v1/tasks/{id}/logs")).await;
    assert_eq!(status, StatusCode::OK, "{transcript}");
    assert_eq!(
        transcript["lines"],
        json!([{"number": 1, "text": "did scripted"}]),
        "{transcript}"
    );
}

/// The README's agent started again with its id (its last process died holding a started
/// task, its capacity of one full): it fails the task it still holds — to be retried —
/// and then claims and runs work. Before, its claims waited at its capacity for ever.
#[tokio::test(flavor = "multi_thread")]
async fn the_example_agent_started_again_gives_back_what_its_last_process_held() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let lost = app.task(&ticket, "lost", json!({"priority": "LOW"})).await;
    assert_eq!(agent.claim(&app, 5).await, Some(lost.clone()));
    agent.must(&app, &lost, "start", json!({})).await;
    let next = app.task(&ticket, "next", json!({"priority": "HIGH"})).await;
    // What the agent's health lists: the agents read model, caught up.
    app.caught_up().await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/agent.py");
    let output = tokio::process::Command::new("python3")
        .args([script, "--once", "echo \"did $OMOI_TASK_TITLE\""])
        .env("OMOI_URL", &app.address)
        .env("OMOI_AGENT_ID", &agent.id)
        .env("OMOI_CREDENTIAL", &agent.credential)
        .output()
        .await
        .expect("python3 runs");
    assert!(output.status.success(), "{output:?}");
    let given_back = app.task_state(&lost).await;
    assert_eq!(given_back["status"], "retry_scheduled", "{given_back}");
    assert!(
        given_back["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("started again")),
        "{given_back}"
    );
    let done = app.until_task_status(&next, "completed").await;
    assert_eq!(done["result"]["output"], json!(["did next"]), "{done}");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_lines_become_progress_at_most_once_a_second() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "chatty", json!({})).await;
    // 40 lines over about two seconds.
    let script = "for i in $(seq 1 40); do echo \"line $i\"; sleep 0.05; done";
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command(script), &directory),
    );
    let state = app.until_task_status(&id, "completed").await;
    worker.stop().await;
    assert_eq!(
        state["result"]["output"].as_array().map(Vec::len),
        Some(20),
        "the last 20 lines are the result: {state}"
    );
    let events = history(&app, &id).await;
    let reports: Vec<&Value> = events
        .iter()
        .filter(|(kind, _)| kind == "TaskProgressReported")
        .map(|(_, payload)| payload)
        .collect();
    // About two seconds of output: one report at once, then one per second at most.
    assert!(
        (1..=3).contains(&reports.len()),
        "{} reports: {reports:?}",
        reports.len()
    );
    assert_eq!(reports[0]["message"], "line 1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_holds_no_more_of_an_organizations_tasks_than_its_plan_allows() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let ticket = app.ticket(&project, "Work").await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(app.task(&ticket, &format!("t{n}"), json!({})).await);
    }
    app.caught_up().await;
    // The free plan: one task at a time, whatever the worker's own caps.
    let limited = WorkerConfig {
        plans: Some(omoi_domain::billing::Plans::default()),
        organization_concurrency: 100,
        ..config(command("sleep 0.2"), &directory)
    };
    let mut worker = Worker::stepped(app.database.pool.clone(), limited);
    let mut order = Vec::new();
    for _ in 0..ids.len() {
        // Passes while a task is held assign nothing more.
        worker.step().await;
        worker.step().await;
        let mut held = Vec::new();
        for id in &ids {
            let status = app.task_state(id).await["status"].clone();
            if status == "running" || status == "assigned" {
                held.push(id.clone());
            }
        }
        assert_eq!(held.len(), 1, "one task held at a time: {held:?}");
        app.until_task_status(&held[0], "completed").await;
        app.caught_up().await;
        order.push(held[0].clone());
    }
    worker.stop().await;
    order.sort();
    let mut all = ids.clone();
    all.sort();
    assert_eq!(order, all, "each task ran once");
}

/// A worker looks only at work its agents could run: a task needing a capability they
/// lack waits — however urgent — with no agent registered for it, while other work runs;
/// a worker whose agents have the capability takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_leaves_work_its_agents_cannot_run_to_a_worker_whose_agents_can() {
    let app = spawn_app().await;
    let (gpu_organization, gpu_project) = app.organization_and_project().await;
    let (plain_organization, plain_project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let gpu_ticket = app.ticket(&gpu_project, "Train").await;
    let gpu = app
        .task(
            &gpu_ticket,
            "train",
            json!({"required_capabilities": ["gpu"], "priority": "CRITICAL"}),
        )
        .await;
    let plain_ticket = app.ticket(&plain_project, "Lint").await;
    let plain = app
        .task(&plain_ticket, "lint", json!({"priority": "LOW"}))
        .await;
    app.caught_up().await;
    let registered_in = |organization: String| {
        let pool = app.database.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "select count(*) from events where event_type = 'AgentRegistered'
                   and payload -> 'AgentRegistered' ->> 'organization_id' = $1",
            )
            .bind(organization)
            .fetch_one(&pool)
            .await
            .expect("counted")
        }
    };

    let mut plain_worker = Worker::stepped(
        app.database.pool.clone(),
        config(command("true"), &directory),
    );
    plain_worker.step().await;
    app.until_task_status(&plain, "completed").await;
    for _ in 0..3 {
        plain_worker.step().await;
    }
    plain_worker.stop().await;
    assert_eq!(app.task_state(&gpu).await["status"], "pending");
    assert_eq!(registered_in(gpu_organization.clone()).await, 0);
    assert_eq!(registered_in(plain_organization).await, 1);

    let gpu_config = WorkerConfig {
        capabilities: vec!["gpu".into()],
        ..config(command("true"), &directory)
    };
    let mut gpu_worker = Worker::stepped(app.database.pool.clone(), gpu_config);
    gpu_worker.step().await;
    app.until_task_status(&gpu, "completed").await;
    gpu_worker.stop().await;
    assert_eq!(registered_in(gpu_organization).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_that_leaves_a_background_process_still_completes_and_the_process_goes() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let pid = directory.join("pid");
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "daemon", json!({})).await;
    // The background sleep inherits the output pipes: waiting for their end would hang.
    let script = format!("sleep 600 & echo $! > {}; echo started", pid.display());
    let worker = Worker::start(
        app.database.pool.clone(),
        config(command(&script), &directory),
    );
    let state = app.until_task_status(&id, "completed").await;
    worker.stop().await;
    assert_eq!(state["result"]["output"], json!(["started"]), "{state}");
    let pid = until_file(&pid).await;
    until_dead(&pid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agents_credential_speaks_for_that_agent_only_and_dies_with_it() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let omoi_testing::Agent {
        id: first,
        credential: first_key,
    } = app.register_agent(&organization).await;
    let omoi_testing::Agent {
        id: second,
        credential: second_key,
    } = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let id = app.task(&ticket, "theirs", json!({})).await;
    let as_agent = |key: &str, path: String, body: Value| {
        let key = key.to_string();
        let app = &app;
        async move {
            app.send_as(Some(&key), reqwest::Method::POST, &path, Some(body))
                .await
        }
    };
    // The second agent claims the task.
    let (status, claimed) = as_agent(
        &second_key,
        format!("/api/v1/agents/{second}/claim"),
        json!({"wait_seconds": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(claimed["id"], json!(id));
    for (path, body) in [
        (format!("/api/v1/agents/{second}/heartbeat"), json!({})),
        (
            format!("/api/v1/agents/{second}/claim"),
            json!({"wait_seconds": 0}),
        ),
        (format!("/api/v1/tasks/{id}/start"), json!({})),
        (
            format!("/api/v1/tasks/{id}/fail"),
            json!({"error": "sabotage"}),
        ),
    ] {
        let (status, answer) = as_agent(&first_key, path.clone(), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    let (status, answer) =
        as_agent(&second_key, format!("/api/v1/tasks/{id}/start"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Its history names the agent, not a key.
    let events = history(&app, &id).await;
    assert_eq!(events.last().map(|(k, _)| k.as_str()), Some("TaskStarted"));
    let (_, full) = app.get(&format!("/api/v1/tasks/{id}/history")).await;
    let actor = full["events"]
        .as_array()
        .and_then(|e| e.last())
        .map(|e| e["metadata"]["actor"].clone());
    assert_eq!(actor, Some(json!(format!("agent:{second}"))));
    // Terminated, the first agent's credential no longer works.
    let (status, body) = app
        .post(
            &format!("/api/v1/agents/{first}/status"),
            json!({"to": "terminated", "reason": "retired"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = as_agent(
        &first_key,
        format!("/api/v1/agents/{first}/heartbeat"),
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Whoever terminates an agent — here another process, as the worker or a supervisor
/// would — its credential is revoked in the termination's own transaction.
#[tokio::test(flavor = "multi_thread")]
async fn terminating_an_agent_anywhere_revokes_its_credential_in_the_same_transaction() {
    let app = spawn_app().await;
    let (organization, _) = app.organization_and_project().await;
    let (status, body) = app
        .post(
            "/api/v1/agents/register",
            json!({"organization_id": organization, "agent_type": "worker"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let agent: uuid::Uuid = body["id"].as_str().expect("an id").parse().expect("a uuid");
    let credential = body["credential"]
        .as_str()
        .expect("a credential")
        .to_string();
    let other_process = app.second_bus().await;
    let context = omoi_store::CommandContext::new(omoi_store::Actor::System("test"), "t");
    let command = omoi_domain::agent::AgentCommand::ChangeAgentStatus {
        to: omoi_domain::agent::AgentStatus::Terminated,
        reason: Some("retired".into()),
        force: false,
        guardian: false,
        at: chrono::Utc::now(),
    };
    other_process
        .execute::<omoi_domain::agent::Agent>(&agent.to_string(), command, &context)
        .await
        .expect("terminated");
    let (revoked,): (bool,) =
        sqlx::query_as("select bool_and(revoked_at is not null) from api_keys where agent_id = $1")
            .bind(agent)
            .fetch_one(&app.database.pool)
            .await
            .expect("the key");
    assert!(revoked, "the key was revoked with the termination");
    let (status, _) = app
        .send_as(
            Some(&credential),
            reqwest::Method::POST,
            &format!("/api/v1/agents/{agent}/heartbeat"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Registering an agent writes its credential and its registration together or neither:
/// with the keys' table away (a fault injected into the real database) the registration
/// fails and no agent exists; a registration the domain refuses (a blank name) leaves no
/// key; a good one works with its credential.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_that_fails_leaves_neither_an_agent_nor_a_key() {
    let app = spawn_app().await;
    let (organization, _) = app.organization_and_project().await;
    let pool = &app.database.pool;
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .expect("counted")
    };
    let agents = || count("select count(*) from events where event_type = 'AgentRegistered'");
    let keys = || count("select count(*) from api_keys where agent_id is not null");
    let register = |name: &str| {
        app.post(
            "/api/v1/agents/register",
            json!({"organization_id": organization, "agent_type": "worker", "name": name}),
        )
    };

    sqlx::query("alter table api_keys rename to api_keys_away")
        .execute(pool)
        .await
        .expect("the keys away");
    let (status, body) = register("lost").await;
    sqlx::query("alter table api_keys_away rename to api_keys")
        .execute(pool)
        .await
        .expect("the keys back");
    assert!(status.is_server_error(), "{status}: {body}");
    assert_eq!(agents().await, 0, "no agent without its credential");

    let (status, body) = register("   ").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!((agents().await, keys().await), (0, 0), "nothing of it kept");

    let (status, body) = register("kept").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!((agents().await, keys().await), (1, 1));
    let credential = body["credential"].as_str().expect("a credential");
    let (status, beat) = app
        .send_as(
            Some(credential),
            reqwest::Method::POST,
            &format!(
                "/api/v1/agents/{}/heartbeat",
                body["id"].as_str().expect("id")
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
}

/// A run whose completion the task holds back — a blocking discovery was reported (by a
/// person) while its command ran — keeps its agent on the task and completes it once the
/// discovery is resolved, here by the worker running the discovery in the place the
/// waiting task gives up under the free plan's cap of one. Before, the worker took the
/// refusal for "the attempt moved on" and freed its agent: the task stayed running for
/// ever; and while it waited it held the organization's one place, so the discovery it
/// waited for never ran.
#[tokio::test(flavor = "multi_thread")]
async fn a_completion_held_by_an_open_discovery_is_recorded_once_it_is_resolved() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_manual_project().await;
    let directory = scratch_dir();
    let ticket = app.ticket(&project, "Work").await;
    let parent = app.task(&ticket, "parent", json!({})).await;
    let worker = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            // The plans, as `omoi worker` has them: the free plan runs one task at once.
            plans: Some(omoi_domain::billing::Plans::default()),
            // Long enough for the discovery to be reported while it runs, on a busy
            // machine.
            ..config(command("sleep 3; echo done"), &directory)
        },
    );
    let running = app.until_task_status(&parent, "running").await;
    let found = app
        .must(
            &format!("/api/v1/tasks/{parent}/discoveries"),
            json!({"kind": "bug", "title": "A blocker", "blocks_parent": true}),
            StatusCode::CREATED,
        )
        .await;
    let discovered = omoi_testing::id_of(&found);

    let resolved = app.until_task_status(&discovered, "completed").await;
    let completed = app.until_task_status(&parent, "completed").await;
    worker.stop().await;
    assert_ne!(
        resolved["assigned_agent_id"], running["assigned_agent_id"],
        "another agent ran the discovery: {resolved}"
    );
    assert_eq!(
        completed["assigned_agent_id"], running["assigned_agent_id"],
        "{completed}"
    );
    assert_eq!(
        completed["result"]["output"],
        json!(["done"]),
        "{completed}"
    );
    let kinds: Vec<String> = history(&app, &parent)
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .filter(|kind| kind.starts_with("TaskDiscovery") || kind == "TaskCompleted")
        .collect();
    assert_eq!(
        kinds,
        [
            "TaskDiscoveryReported",
            "TaskDiscoveryResolved",
            "TaskCompleted"
        ],
        "completed once the discovery was resolved"
    );
}

/// When the database goes away as a worker's assignment and start commit, the worker
/// cannot tell from the answer whether they did; it reads the task back. Only its own
/// pair — running, under its agent, assigned at the instant it decided on — counts as
/// committed (and is then run); another agent's, another instant's, a stopped task or an
/// unknown one do not. Before, the worker freed its agent and ran nothing, and a pair
/// that had committed left the task running for ever: nothing fails a task whose agent's
/// lease stays fresh.
#[tokio::test(flavor = "multi_thread")]
async fn an_assignment_whose_commit_went_unanswered_is_read_back() {
    use chrono::Utc;
    use omoi_domain::task::{Task, TaskCommand};
    use omoi_orchestrator::worker::committed_after_all;
    use omoi_store::bus::RetryPolicy;
    use omoi_store::{Actor, CommandBus, CommandContext};
    use uuid::Uuid;

    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Work").await;
    let task: Uuid = app
        .task(&ticket, "a", json!({}))
        .await
        .parse()
        .expect("a uuid");
    let agent: Uuid = app
        .register_agent(&organization)
        .await
        .id
        .parse()
        .expect("a uuid");
    let other: Uuid = app
        .register_agent(&organization)
        .await
        .id
        .parse()
        .expect("a uuid");
    let bus = CommandBus::new(app.database.pool.clone(), RetryPolicy::default());

    assert!(
        committed_after_all(&bus, task, agent, Utc::now())
            .await
            .is_none(),
        "a task not assigned"
    );
    let at = Utc::now();
    let pair = [
        TaskCommand::AssignTask {
            agent_id: agent,
            at,
        },
        TaskCommand::StartTask { at },
    ];
    let context = CommandContext::new(Actor::Agent(agent), "test:claim");
    bus.execute_all::<Task>(&task.to_string(), &pair, &context, &|_| Ok(()))
        .await
        .expect("assigned and started");

    let committed = committed_after_all(&bus, task, agent, at)
        .await
        .expect("the pair committed");
    assert_eq!(committed.version, 3, "created, assigned, started");
    assert_eq!(committed.state.assigned_agent_id, Some(agent));
    let later = at + chrono::Duration::milliseconds(1);
    assert!(
        committed_after_all(&bus, task, other, at).await.is_none(),
        "another agent's"
    );
    assert!(
        committed_after_all(&bus, task, agent, later)
            .await
            .is_none(),
        "another instant's"
    );
    assert!(
        committed_after_all(&bus, Uuid::now_v7(), agent, at)
            .await
            .is_none(),
        "an unknown task"
    );
    app.must(
        &format!("/api/v1/tasks/{task}/cancel"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    assert!(
        committed_after_all(&bus, task, agent, at).await.is_none(),
        "stopped since: nothing to run"
    );
}

/// A silent agent whose degradation could not be recorded (here the first three tries
/// are refused by a trigger) is degraded by a later sweep: the sweep's mark on its lease
/// is given back. Before, the mark stayed and the agent was never degraded for that
/// silence.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_whose_degradation_was_refused_is_degraded_by_a_later_sweep() {
    a_silent_agents_refused_move_is_made_by_a_later_sweep("degraded", |settings| {
        // Degraded after 400 ms of silence, failed only after a minute.
        settings.monitoring.heartbeat_interval_ms = 200;
        settings.stale_after_ms = 60_000;
    })
    .await;
}
