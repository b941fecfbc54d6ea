//! Supervision, driven pass by pass (stepped workers) with time injected — leases
//! backdated, the worker's clock moved forward — never by waiting: silent agents are
//! degraded, then failed, and a heartbeat brings a degraded one back; a task without
//! progress is stalled once, and its project's policy (nudge, restart, escalate) does what
//! it says; steering reaches an HTTP agent's heartbeat answer and an in-process agent's
//! file, once; two replicas sweeping together act once; the Conductor flags open tasks
//! whose text is near-identical (≥ 0.85) and no others.

use std::time::Duration;

use omoi_orchestrator::{Clock, MonitoringConfig, SteppedWorker, Work, Worker, WorkerConfig};
use omoi_testing::{fake_llm, scratch_dir, spawn_app, Agent, TestApp, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};

const INTERVAL_MS: u64 = 30_000;
const STALE_MS: u64 = 90_000;
const STUCK_MS: u64 = 60_000;

fn config(clock: &Clock, directory: &std::path::Path) -> WorkerConfig {
    WorkerConfig {
        work: Work::Nothing,
        stale_after_ms: STALE_MS,
        check_interval_ms: 0,
        monitoring: MonitoringConfig {
            heartbeat_interval_ms: INTERVAL_MS,
            stuck_after_ms: STUCK_MS,
            conductor_interval_ms: 0,
            ..MonitoringConfig::default()
        },
        clock: clock.clone(),
        work_dir: directory.join("work"),
        ..WorkerConfig::default()
    }
}

/// Moves the agent's last heartbeat `seconds` further into the past.
async fn backdate_heartbeat(app: &TestApp, agent: &str, seconds: i64) {
    let agent: uuid::Uuid = agent.parse().expect("an agent id");
    let updated = sqlx::query(
        "update agent_leases set heartbeat_at = heartbeat_at - make_interval(secs => $2)
          where agent_id = $1",
    )
    .bind(agent)
    .bind(seconds as f64)
    .execute(&app.database.pool)
    .await
    .expect("the lease is backdated");
    assert_eq!(updated.rows_affected(), 1, "the agent has a lease");
}

/// The events of an aggregate's history: (type, payload, actor).
async fn history(app: &TestApp, path: &str) -> Vec<(String, Value, String)> {
    let (status, body) = app.get(&format!("{path}/history")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            let kind = e["event_type"].as_str().expect("a type").to_string();
            let actor = e["metadata"]["actor"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (kind.clone(), e["payload"][&kind].clone(), actor)
        })
        .collect()
}

/// The statuses an agent was moved to, in order, with their reasons.
async fn status_changes(app: &TestApp, agent: &str) -> Vec<(String, String)> {
    history(app, &format!("/api/v1/agents/{agent}"))
        .await
        .into_iter()
        .filter(|(kind, _, _)| kind == "AgentStatusChanged")
        .map(|(_, payload, _)| {
            (
                payload["to"].as_str().unwrap_or_default().to_string(),
                payload["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn health(app: &TestApp, agent: &str) -> Value {
    let (status, body) = app.get(&format!("/api/v1/agents/{agent}/health")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// A pass once every event so far is readable in the global order (an open batch of a
/// process manager holds the log's horizon back for a moment).
async fn settled_step(app: &TestApp, worker: &mut SteppedWorker) {
    app.caught_up().await;
    worker.step().await;
}

async fn step_all(workers: &mut [SteppedWorker]) {
    for worker in workers.iter_mut() {
        worker.step().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_agents_are_degraded_then_failed_once_and_a_heartbeat_brings_one_back() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "Held", json!({})).await;
    assert_eq!(agent.claim(&app, 5).await, Some(task.clone()));
    let answer = agent.heartbeat(&app).await;
    assert_eq!(answer["status"], "idle", "the first heartbeat: {answer}");
    agent.must(&app, &task, "start", json!({})).await;

    // Two replicas sweep the same leases.
    let directory = scratch_dir();
    let clock = Clock::default();
    let other = TestDatabase::pool(&app.database.options, 2)
        .await
        .expect("a second pool");
    let mut workers = vec![
        Worker::stepped(app.database.pool.clone(), config(&clock, &directory)),
        Worker::stepped(other, config(&clock, &directory)),
    ];
    step_all(&mut workers).await;
    // The work it holds is the agents read model's: wait for it to have read the start.
    app.caught_up().await;
    let fresh = health(&app, &agent.id).await;
    assert_eq!(fresh["missed_heartbeats"], 0, "{fresh}");
    assert_eq!(fresh["warning"], false, "{fresh}");
    assert_eq!(fresh["tasks"][0]["task_id"], task.as_str(), "{fresh}");

    // One interval missed: a warning, nothing recorded.
    backdate_heartbeat(&app, &agent.id, 31).await;
    step_all(&mut workers).await;
    let warned = health(&app, &agent.id).await;
    assert_eq!(warned["missed_heartbeats"], 1, "{warned}");
    assert_eq!(warned["warning"], true, "{warned}");
    assert_eq!(warned["status"], "idle", "{warned}");

    // Two: degraded, once, whatever the number of sweepers and sweeps.
    backdate_heartbeat(&app, &agent.id, 30).await;
    step_all(&mut workers).await;
    step_all(&mut workers).await;
    let changes = status_changes(&app, &agent.id).await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[1].0, "degraded");
    assert!(changes[1].1.contains("missed 2 heartbeats"), "{changes:?}");
    assert_eq!(health(&app, &agent.id).await["status"], "degraded");
    app.caught_up().await;
    let (_, overview) = app
        .get(&format!("/api/v1/monitoring/overview?project_id={project}"))
        .await;
    assert_eq!(
        overview["agents_in_trouble"][0]["agent_id"],
        agent.id.as_str(),
        "{overview}"
    );
    assert_eq!(overview["agents_in_trouble"][0]["status"], "degraded");

    // A heartbeat brings it back.
    let answer = agent.heartbeat(&app).await;
    assert_eq!(answer["status"], "idle", "{answer}");
    let changes = status_changes(&app, &agent.id).await;
    assert_eq!(
        changes.last(),
        Some(&("idle".into(), "heartbeats resumed".into()))
    );
    assert_eq!(health(&app, &agent.id).await["missed_heartbeats"], 0);

    // Silent again: degraded, then failed once stale, and its task goes back.
    backdate_heartbeat(&app, &agent.id, 61).await;
    step_all(&mut workers).await;
    backdate_heartbeat(&app, &agent.id, 30).await;
    step_all(&mut workers).await;
    step_all(&mut workers).await;
    let changes = status_changes(&app, &agent.id).await;
    let tail: Vec<&str> = changes[3..].iter().map(|(to, _)| to.as_str()).collect();
    assert_eq!(tail, ["degraded", "failed"], "{changes:?}");
    app.until_task_status(&task, "retry_scheduled").await;
    for worker in workers {
        worker.stop().await;
    }
    let _ = std::fs::remove_dir_all(directory);
}

/// Quarantines agent `agent` and releases it to `idle`, as a Guardian does.
async fn quarantine_and_release(app: &TestApp, agent: &str) {
    for to in ["quarantined", "idle"] {
        app.must(
            &format!("/api/v1/agents/{agent}/status"),
            json!({"to": to, "reason": "looked into"}),
            StatusCode::OK,
        )
        .await;
    }
}

/// A failed agent a Guardian quarantined and then released is watched for silence anew
/// from its release: the work given to it is not failed at once for the silence it was
/// failed for, and once it is silent for a lease's length again it is failed again and its
/// work goes back (before, its lapsed lease kept it `idle` for ever).
#[tokio::test(flavor = "multi_thread")]
async fn a_released_agent_given_work_is_not_failed_for_the_silence_before_its_release() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    agent.heartbeat(&app).await;
    let directory = scratch_dir();
    let clock = Clock::default();
    let mut worker = Worker::stepped(app.database.pool.clone(), config(&clock, &directory));
    let stale = i64::try_from(STALE_MS / 1000 + 1).expect("seconds");
    backdate_heartbeat(&app, &agent.id, stale).await;
    worker.step().await;
    let changes = status_changes(&app, &agent.id).await;
    assert_eq!(
        changes.last().map(|(to, _)| to.as_str()),
        Some("failed"),
        "{changes:?}"
    );
    quarantine_and_release(&app, &agent.id).await;

    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "Given by hand", json!({})).await;
    app.must(
        &format!("/api/v1/tasks/{task}/assign"),
        json!({"agent_id": agent.id}),
        StatusCode::OK,
    )
    .await;
    settled_step(&app, &mut worker).await;
    settled_step(&app, &mut worker).await;
    app.caught_up().await;
    let state = app.task_state(&task).await;
    assert_eq!(state["status"], "assigned", "{state}");
    assert_eq!(state["last_error"], Value::Null, "{state}");

    // Silent for a lease's length since: failed again, and its work goes back.
    backdate_heartbeat(&app, &agent.id, stale).await;
    settled_step(&app, &mut worker).await;
    settled_step(&app, &mut worker).await;
    let state = app.until_task_status(&task, "retry_scheduled").await;
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("sent no heartbeat")),
        "{state}"
    );
    let failures =
        |changes: &[(String, String)]| changes.iter().filter(|(to, _)| to == "failed").count();
    let changes = status_changes(&app, &agent.id).await;
    assert_eq!(failures(&changes), 2, "failed again: {changes:?}");

    // Released again and given nothing: silent, it is failed again all the same.
    quarantine_and_release(&app, &agent.id).await;
    backdate_heartbeat(&app, &agent.id, stale).await;
    settled_step(&app, &mut worker).await;
    let changes = status_changes(&app, &agent.id).await;
    assert_eq!(
        failures(&changes),
        3,
        "silent after its release: {changes:?}"
    );
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

/// A project with `policy`, a task of it started by an HTTP agent, and a stepped worker
/// whose clock the test moves: (ticket, task, agent, worker, clock).
async fn stalling(
    app: &TestApp,
    policy: &str,
    directory: &std::path::Path,
) -> (String, String, Agent, SteppedWorker, Clock) {
    let (organization, project) = app.organization_and_project().await;
    app.project_settings(&project, json!({"stall_policy": policy}))
        .await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "Quiet", json!({"max_retries": 2})).await;
    assert_eq!(agent.claim(app, 5).await, Some(task.clone()));
    agent.must(app, &task, "start", json!({})).await;
    let clock = Clock::default();
    let mut worker = Worker::stepped(app.database.pool.clone(), config(&clock, directory));
    settled_step(app, &mut worker).await;
    (ticket, task, agent, worker, clock)
}

fn count(events: &[(String, Value, String)], kind: &str) -> usize {
    events.iter().filter(|(k, _, _)| k == kind).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_task_is_nudged_once_per_stall_and_the_nudge_reaches_its_agent_once() {
    let app = spawn_app().await;
    let directory = scratch_dir();
    let (_, task, agent, mut worker, clock) = stalling(&app, "nudge", &directory).await;
    let path = format!("/api/v1/tasks/{task}");

    // Quiet for less than stuck_after_ms: nothing.
    clock.advance(Duration::from_millis(STUCK_MS - 5_000));
    worker.step().await;
    assert_eq!(count(&history(&app, &path).await, "TaskStalled"), 0);

    clock.advance(Duration::from_millis(10_000));
    worker.step().await;
    worker.step().await;
    app.caught_up().await;
    let events = history(&app, &path).await;
    assert_eq!(count(&events, "TaskStalled"), 1);
    let steered: Vec<_> = events
        .iter()
        .filter(|(k, _, _)| k == "TaskSteered")
        .collect();
    assert_eq!(steered.len(), 1, "{events:?}");
    assert_eq!(steered[0].1["source"], "nudge");
    assert_eq!(steered[0].2, "system:stall_policy");
    let health = health(&app, &agent.id).await;
    assert_eq!(health["stalled_tasks"], json!([task]), "{health}");
    let project = app.task_state(&task).await["project_id"].clone();
    let overview_path = format!(
        "/api/v1/monitoring/overview?project_id={}",
        project.as_str().expect("a project")
    );
    let (_, overview) = app.get(&overview_path).await;
    assert_eq!(
        overview["stalled_tasks"][0]["task_id"],
        task.as_str(),
        "{overview}"
    );
    assert_eq!(overview["stalled_tasks"][0]["agent_id"], agent.id.as_str());
    assert_eq!(health["tasks"][0]["pending_steering"], 1, "{health}");

    // The next heartbeat hands it over, once.
    let answer = agent.heartbeat(&app).await;
    let steering = answer["steering"].as_array().expect("steering");
    assert_eq!(steering.len(), 1, "{answer}");
    assert_eq!(steering[0]["task_id"], task.as_str());
    assert_eq!(steering[0]["source"], "nudge");
    assert!(steering[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("No progress")));
    assert_eq!(agent.heartbeat(&app).await["steering"], json!([]));
    let events = history(&app, &path).await;
    let delivered: Vec<_> = events
        .iter()
        .filter(|(k, _, _)| k == "SteeringDelivered")
        .collect();
    assert_eq!(delivered.len(), 1, "{events:?}");
    assert_eq!(delivered[0].2, format!("agent:{}", agent.id));

    // Progress clears the stall; quiet again, it stalls again. (The progress is stamped
    // by the server's clock: a sweeper with a clock of its own, not moved yet, judges it.)
    agent
        .must(&app, &task, "progress", json!({"message": "back at it"}))
        .await;
    app.caught_up().await;
    let (_, overview) = app.get(&overview_path).await;
    assert_eq!(
        overview["stalled_tasks"],
        json!([]),
        "progress ends the stall: {overview}"
    );
    worker.stop().await;
    let clock = Clock::default();
    let mut worker = Worker::stepped(app.database.pool.clone(), config(&clock, &directory));
    settled_step(&app, &mut worker).await;
    clock.advance(Duration::from_millis(STUCK_MS / 2));
    worker.step().await;
    assert_eq!(count(&history(&app, &path).await, "TaskStalled"), 1);
    clock.advance(Duration::from_millis(STUCK_MS));
    worker.step().await;
    app.caught_up().await;
    let events = history(&app, &path).await;
    assert_eq!(count(&events, "TaskStalled"), 2);
    assert_eq!(count(&events, "TaskSteered"), 2);
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_task_is_restarted_or_its_ticket_escalated_as_its_project_says() {
    let app = spawn_app().await;
    let directory = scratch_dir();

    let (_, task, _, mut worker, clock) = stalling(&app, "restart", &directory).await;
    clock.advance(Duration::from_millis(STUCK_MS + 1_000));
    worker.step().await;
    let state = app.until_task_status(&task, "retry_scheduled").await;
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("stalled: no progress")),
        "{state}"
    );
    let events = history(&app, &format!("/api/v1/tasks/{task}")).await;
    let failed = events
        .iter()
        .find(|(k, _, _)| k == "TaskFailed")
        .expect("the attempt failed");
    assert_eq!(failed.2, "system:stall_policy");
    worker.stop().await;

    let (ticket, task, _, mut worker, clock) = stalling(&app, "escalate", &directory).await;
    clock.advance(Duration::from_millis(STUCK_MS + 1_000));
    worker.step().await;
    let blocked = app
        .eventually(&format!("/api/v1/tickets/{ticket}"), |body| {
            body["state"]["blocked"].is_object()
        })
        .await;
    assert!(blocked.to_string().contains("failing_checks"), "{blocked}");
    assert!(
        blocked.to_string().contains(&task),
        "the note names the task: {blocked}"
    );
    // Escalation leaves the attempt running, for a person to decide, and raises an alert.
    assert_eq!(app.task_state(&task).await["status"], "running");
    app.caught_up().await;
    let project = app.task_state(&task).await["project_id"].clone();
    let project = project.as_str().expect("a project");
    let (_, overview) = app
        .get(&format!("/api/v1/monitoring/overview?project_id={project}"))
        .await;
    let alert = &overview["alerts"][0];
    assert_eq!(alert["kind"], "ticket_failing_checks", "{overview}");
    assert_eq!(alert["subject_id"], ticket.as_str());
    assert_eq!(alert["raised_by"], "system:stall_policy");
    assert!(alert["reason"].as_str().is_some_and(|r| r.contains(&task)));
    assert_eq!(overview["coherence"]["status"], "warning", "{overview}");
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_process_agent_reads_its_steering_from_its_file() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    app.project_settings(&project, json!({"stall_policy": "nudge"}))
        .await;
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "Listen", json!({})).await;
    let directory = scratch_dir();
    let clock = Clock::default();
    // The command waits (silently) for steering and prints it.
    let script = "for i in $(seq 1 600); do \
                    if [ -s \"$OMOI_STEERING_FILE\" ]; then cat \"$OMOI_STEERING_FILE\"; exit 0; fi; \
                    sleep 0.05; done; exit 1";
    let mut worker = Worker::stepped(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Command(script.into()),
            ..config(&clock, &directory)
        },
    );
    settled_step(&app, &mut worker).await;
    app.until_task_status(&task, "running").await;
    app.caught_up().await;
    worker.step().await;
    clock.advance(Duration::from_millis(STUCK_MS + 1_000));
    worker.step().await;
    // The worker sees the steering in the log and writes it for the command.
    settled_step(&app, &mut worker).await;
    let state = app.until_task_status(&task, "completed").await;
    let output = state["result"]["output"].to_string();
    assert!(output.contains("\\\"source\\\":\\\"nudge\\\""), "{state}");
    let events = history(&app, &format!("/api/v1/tasks/{task}")).await;
    let delivered = events
        .iter()
        .find(|(k, _, _)| k == "SteeringDelivered")
        .expect("delivered");
    assert!(delivered.2.starts_with("agent:"), "{delivered:?}");
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

/// The trigram similarity PostgreSQL computes for two texts.
async fn similarity(app: &TestApp, a: &str, b: &str) -> f64 {
    sqlx::query_scalar("select similarity($1, $2)::float8")
        .bind(a)
        .bind(b)
        .fetch_one(&app.database.pool)
        .await
        .expect("pg_trgm is installed")
}

/// Pages of GIN's pending list in the live directory's trigram index of open tasks.
async fn pending_trigram_pages(app: &TestApp) -> i64 {
    let pool = &app.database.pool;
    sqlx::query("create extension if not exists pgstattuple")
        .execute(pool)
        .await
        .expect("pgstattuple is installed");
    let schema = omoi_projections::catalog::live_schema(pool, "directory")
        .await
        .expect("the catalog")
        .expect("a live directory");
    sqlx::query_scalar("select pending_pages::bigint from pgstatginindex($1::text::regclass)")
        .bind(format!("{schema}.entries_open_task_trigrams"))
        .fetch_one(pool)
        .await
        .expect("the live directory has the index")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_conductor_merges_the_trigram_indexs_pending_entries_before_it_probes() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Sign-in").await;
    let title = "Add the login form with email and password validation";
    let original = app.task(&ticket, title, json!({})).await;
    let copy = app.task(&ticket, title, json!({})).await;
    app.caught_up().await;
    // Rows written one by one wait in the pending list, which every probe would read.
    assert!(pending_trigram_pages(&app).await > 0);

    let batch =
        omoi_projections::directory::suspected_duplicates(&app.database.pool, 0.85, (0, 0), 500)
            .await
            .expect("a batch");
    assert_eq!(pending_trigram_pages(&app).await, 0);
    let pairs: Vec<(String, String)> = batch
        .pairs
        .iter()
        .map(|pair| (pair.task_id.to_string(), pair.duplicate_of.to_string()))
        .collect();
    assert_eq!(pairs, vec![(copy, original)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn near_identical_open_tasks_are_flagged_once_and_others_not() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let (_, elsewhere) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Sign-in").await;
    let other_ticket = app.ticket(&elsewhere, "Sign-in").await;
    let title = "Add the login form with email and password validation";
    let description = "Render the form, validate both fields on submit, show errors inline";
    let near = "Add the login form with e-mail and password validation";
    let related = "Add the signup form with email, password and name validation";
    let text = |t: &str| format!("{t} {description}");
    // The fixtures straddle the threshold, as PostgreSQL measures them.
    assert!(similarity(&app, &text(title), &text(near)).await >= 0.85);
    let related_similarity = similarity(&app, &text(title), &text(related)).await;
    assert!(
        (0.5..0.85).contains(&related_similarity),
        "{related_similarity}"
    );

    let original = app
        .task(&ticket, title, json!({"description": description}))
        .await;
    let copy = app
        .task(&ticket, near, json!({"description": description}))
        .await;
    let cousin = app
        .task(&ticket, related, json!({"description": description}))
        .await;
    // The same text in another project is not this project's duplicate.
    let foreign = app
        .task(&other_ticket, title, json!({"description": description}))
        .await;
    // Nor is a task that is no longer open.
    let finished = app
        .task(&ticket, title, json!({"description": description}))
        .await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{finished}/cancel"),
            json!({"reason": "done elsewhere"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.caught_up().await;

    let directory = scratch_dir();
    let clock = Clock::default();
    let other = TestDatabase::pool(&app.database.options, 2)
        .await
        .expect("a second pool");
    // Workers that run nobody's tasks (they serve another organization): the tasks stay
    // open for the Conductor to compare.
    let sweeping = WorkerConfig {
        organizations: vec![uuid::Uuid::now_v7()],
        ..config(&clock, &directory)
    };
    let mut workers = vec![
        Worker::stepped(app.database.pool.clone(), sweeping.clone()),
        Worker::stepped(other, sweeping),
    ];
    step_all(&mut workers).await;
    step_all(&mut workers).await;
    // The Conductor's passes run beside the workers: wait for the flag, then give the
    // other replica's pass time to have tried too.
    until_event(&app, &copy, "DuplicateSuspected").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    step_all(&mut workers).await;

    let flagged = history(&app, &format!("/api/v1/tasks/{copy}")).await;
    let suspected: Vec<_> = flagged
        .iter()
        .filter(|(kind, _, _)| kind == "DuplicateSuspected")
        .collect();
    assert_eq!(
        suspected.len(),
        1,
        "once, whatever the sweepers: {flagged:?}"
    );
    assert_eq!(suspected[0].1["duplicate_of"], original.as_str());
    assert!(suspected[0].1["similarity"]
        .as_f64()
        .is_some_and(|s| s >= 0.85));
    assert_eq!(suspected[0].2, "system:conductor");
    for task in [&original, &cousin, &foreign, &finished] {
        let events = history(&app, &format!("/api/v1/tasks/{task}")).await;
        assert!(
            events
                .iter()
                .all(|(kind, _, _)| kind != "DuplicateSuspected"),
            "{task} flagged: {events:?}"
        );
    }
    assert_eq!(
        app.task_state(&copy).await["suspected_duplicates"],
        json!([original])
    );
    app.caught_up().await;
    let overview_path = format!("/api/v1/monitoring/overview?project_id={project}");
    let (_, overview) = app.get(&overview_path).await;
    assert_eq!(
        overview["duplicates"],
        json!([{"task_id": copy, "duplicate_of": original,
                "similarity": suspected[0].1["similarity"]}]),
        "{overview}"
    );
    // Ending the older task closes the finding.
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{original}/cancel"),
            json!({"reason": "merged"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.caught_up().await;
    let (_, overview) = app.get(&overview_path).await;
    assert_eq!(overview["duplicates"], json!([]), "{overview}");
    for worker in workers {
        worker.stop().await;
    }
    let _ = std::fs::remove_dir_all(directory);
}

/// The events of `kind` in an aggregate's history.
fn of_kind<'a>(
    events: &'a [(String, Value, String)],
    kind: &str,
) -> Vec<&'a (String, Value, String)> {
    events.iter().filter(|(k, _, _)| k == kind).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_work_keeps_failing_is_quarantined_once_and_gets_nothing_until_released() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let steady = app.register_agent(&organization).await;
    let failing = app.register_agent(&organization).await;
    for agent in [&steady, &failing] {
        assert_eq!(agent.heartbeat(&app).await["status"], "idle");
    }
    // The steady agent's quick work makes the type's median.
    for n in 0..3 {
        let ticket = app.ticket(&project, &format!("Quick {n}")).await;
        let task = app.task(&ticket, &format!("Quick {n}"), json!({})).await;
        assert_eq!(steady.claim(&app, 5).await, Some(task.clone()));
        steady.must(&app, &task, "start", json!({})).await;
        steady
            .must(&app, &task, "complete", json!({"result": {}}))
            .await;
    }
    // The other's keeps failing…
    for n in 0..3 {
        let ticket = app.ticket(&project, &format!("Flaky {n}")).await;
        let task = app
            .task(&ticket, &format!("Flaky {n}"), json!({"max_retries": 0}))
            .await;
        assert_eq!(failing.claim(&app, 5).await, Some(task.clone()));
        failing.must(&app, &task, "start", json!({})).await;
        failing
            .must(&app, &task, "fail", json!({"error": "segfault"}))
            .await;
    }
    // …and it now sits on the project's only running task, ten others waiting for it.
    let ticket = app.ticket(&project, "Foundations").await;
    let blocker = app.task(&ticket, "Blocker", json!({})).await;
    assert_eq!(failing.claim(&app, 5).await, Some(blocker.clone()));
    failing.must(&app, &blocker, "start", json!({})).await;
    for n in 0..10 {
        app.task(
            &ticket,
            &format!("After {n}"),
            json!({"depends_on": [blocker]}),
        )
        .await;
    }

    // Two replicas read every agent each minute; the clock says the blocker has run for
    // an hour (the type's median: milliseconds).
    let directory = scratch_dir();
    let clock = Clock::default();
    let reading = |clock: &Clock| WorkerConfig {
        monitoring: MonitoringConfig {
            anomaly_interval_ms: 60_000,
            ..config(clock, &directory).monitoring
        },
        ..config(clock, &directory)
    };
    let other = TestDatabase::pool(&app.database.options, 2)
        .await
        .expect("a second pool");
    let mut workers = vec![
        Worker::stepped(app.database.pool.clone(), reading(&clock)),
        Worker::stepped(other, reading(&clock)),
    ];
    clock.advance(Duration::from_secs(3600));
    let agent_path = format!("/api/v1/agents/{}", failing.id);
    for pass in 1..=2 {
        app.caught_up().await;
        step_all(&mut workers).await;
        let events = history(&app, &agent_path).await;
        let detected = of_kind(&events, "AnomalyDetected");
        assert_eq!(detected.len(), pass, "one reading a pass: {events:?}");
        assert_eq!(detected[pass - 1].1["streak"], pass);
        assert_eq!(detected[pass - 1].2, "system:guardian");
        assert_eq!(health(&app, &failing.id).await["status"], "idle");
        clock.advance(Duration::from_secs(61));
    }
    let read = health(&app, &failing.id).await;
    let anomaly = &read["anomaly"];
    assert!(anomaly["score"].as_f64().expect("a score") >= 0.8, "{read}");
    assert_eq!(anomaly["parts"]["latency"], 1.0, "{read}");
    assert_eq!(anomaly["parts"]["resource_skew"], 1.0, "{read}");
    assert_eq!(anomaly["parts"]["queue_impact"], 1.0, "{read}");
    let errors = anomaly["parts"]["errors"].as_f64().expect("errors");
    assert!((errors - 0.657).abs() < 1e-9, "1 − 0.7³: {read}");
    let steady_read = health(&app, &steady.id).await;
    assert!(steady_read["anomaly"]["score"].as_f64().expect("a score") < 0.1);

    // The third anomalous reading in a row: quarantined, once.
    app.caught_up().await;
    step_all(&mut workers).await;
    step_all(&mut workers).await;
    let events = history(&app, &agent_path).await;
    assert_eq!(of_kind(&events, "AnomalyDetected").len(), 3, "{events:?}");
    let intervened = of_kind(&events, "GuardianIntervened");
    assert_eq!(intervened.len(), 1, "{events:?}");
    assert_eq!(intervened[0].1["kind"], "quarantine");
    assert_eq!(intervened[0].2, "system:guardian");
    let reason = intervened[0].1["reason"].as_str().expect("a reason");
    assert!(reason.contains("3 readings in a row"), "{reason}");
    let quarantined = health(&app, &failing.id).await;
    assert_eq!(quarantined["status"], "quarantined");
    app.caught_up().await;
    let quarantined = health(&app, &failing.id).await;
    let alerts = quarantined["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "{quarantined}");
    assert_eq!(alerts[0]["kind"], "agent_quarantined");
    assert_eq!(alerts[0]["raised_by"], "system:guardian");
    assert_eq!(alerts[0]["reason"], reason);
    let (_, overview) = app
        .get(&format!("/api/v1/monitoring/overview?project_id={project}"))
        .await;
    let kinds: Vec<&str> = overview["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"agent_quarantined"), "{overview}");
    assert_eq!(overview["coherence"]["status"], "warning", "{overview}");

    // Quarantined, it takes nothing; the steady agent may.
    let (status, body) = failing
        .post(
            &app,
            &format!("/api/v1/agents/{}/claim", failing.id),
            json!({"wait_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "agent_unavailable");
    // Further passes leave a quarantined agent alone.
    clock.advance(Duration::from_secs(61));
    step_all(&mut workers).await;
    let events = history(&app, &agent_path).await;
    assert_eq!(of_kind(&events, "AnomalyDetected").len(), 3, "{events:?}");

    // Released by a person: the alert closes and the agent may claim again.
    let (status, body) = app
        .post(
            "/api/v1/guardian/interventions",
            json!({"kind": "release", "agent_id": failing.id, "reason": "fixed its toolchain"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.caught_up().await;
    assert_eq!(health(&app, &failing.id).await["alerts"], json!([]));
    failing
        .must(&app, &blocker, "complete", json!({"result": {}}))
        .await;
    let (status, body) = failing
        .post(
            &app,
            &format!("/api/v1/agents/{}/claim", failing.id),
            json!({"wait_seconds": 5}),
        )
        .await;
    // (The blocker done, its ten dependents are ready.)
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"]["depends_on"], json!([blocker]), "{body}");
    for worker in workers {
        worker.stop().await;
    }
    let _ = std::fs::remove_dir_all(directory);
}

// ---------------------------------------------------------------- LLM trajectory analysis

fn llm(base_url: &str) -> omoi_orchestrator::trajectory::LlmConfig {
    omoi_orchestrator::trajectory::LlmConfig {
        base_url: Some(base_url.to_string()),
        model: "fake-4".into(),
        interval_ms: 60_000,
        timeout_ms: 300,
        max_retries: 2,
        retry_backoff_ms: 10,
        calls_per_hour: 60,
        transcript_lines: 2,
    }
}

fn with_llm(base: WorkerConfig, base_url: &str) -> WorkerConfig {
    WorkerConfig {
        monitoring: MonitoringConfig {
            llm: llm(base_url),
            ..base.monitoring.clone()
        },
        ..base
    }
}

fn steer_answer(message: &str) -> omoi_testing::LlmReply {
    omoi_testing::LlmReply::Answer(json!({
        "alignment_score": 0.35, "needs_steering": true,
        "steering_message": message, "reason": "it is rewriting the build instead"
    }))
}

/// Waits (up to 10 s) until the task's history has an event of `kind`.
async fn until_event(app: &TestApp, task: &str, kind: &str) -> Vec<(String, Value, String)> {
    for _ in 0..200 {
        let events = history(app, &format!("/api/v1/tasks/{task}")).await;
        if count(&events, kind) > 0 {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {kind} on task {task}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_llms_steering_reaches_an_http_agents_heartbeat_after_a_500_and_a_malformed_answer() {
    use omoi_testing::LlmReply;
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Build").await;
    let task = app.task(&ticket, "Fix the flaky test", json!({})).await;
    assert_eq!(agent.claim(&app, 5).await, Some(task.clone()));
    agent.must(&app, &task, "start", json!({})).await;
    agent
        .must(
            &app,
            &task,
            "logs",
            json!({"lines": ["reading the test", "rewriting the build system", "still rewriting"]}),
        )
        .await;
    let (base_url, requests) = fake_llm(vec![
        LlmReply::Status(500),
        LlmReply::Malformed,
        steer_answer("Leave the build alone; fix the test."),
    ])
    .await;
    let directory = scratch_dir();
    let clock = Clock::default();
    let mut worker = Worker::stepped(
        app.database.pool.clone(),
        with_llm(config(&clock, &directory), &base_url),
    );
    settled_step(&app, &mut worker).await;
    let events = until_event(&app, &task, "TaskSteered").await;

    // Three calls (two retried failures), the last one's answer recorded with its cost.
    let sent = requests.lock().expect("the log").clone();
    assert_eq!(sent.len(), 3, "{sent:?}");
    let request = &sent[0];
    assert_eq!(request["model"], "fake-4");
    assert_eq!(request["response_format"]["type"], "json_schema");
    let prompt = request["messages"][1]["content"]
        .as_str()
        .expect("a prompt");
    assert!(prompt.contains("Fix the flaky test"), "{prompt}");
    assert!(
        prompt.contains("rewriting the build system") && !prompt.contains("reading the test"),
        "the newest two lines: {prompt}"
    );
    let assessed = &of_kind(&events, "TrajectoryAssessed")[0];
    assert_eq!(assessed.2, "system:trajectory");
    assert_eq!(assessed.1["assessment"]["alignment_score"], 0.35);
    assert_eq!(assessed.1["assessment"]["prompt_tokens"], 321);
    assert_eq!(assessed.1["assessment"]["completion_tokens"], 42);
    assert_eq!(assessed.1["assessment"]["model"], "fake-4");
    let steered = &of_kind(&events, "TaskSteered")[0];
    assert_eq!(steered.1["source"], "trajectory");
    let calls: i32 = sqlx::query_scalar("select calls from llm_usage")
        .fetch_one(&app.database.pool)
        .await
        .expect("the budget");
    assert_eq!(calls, 3);

    // The agent gets it at its next heartbeat, once.
    app.caught_up().await;
    let answer = agent.heartbeat(&app).await;
    assert_eq!(
        answer["steering"][0]["message"], "Leave the build alone; fix the test.",
        "{answer}"
    );
    assert_eq!(answer["steering"][0]["source"], "trajectory");
    assert_eq!(agent.heartbeat(&app).await["steering"], json!([]));

    // Within the interval the task is not assessed again, whatever the passes; after it,
    // it is.
    worker.step().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(requests.lock().expect("the log").len(), 3);
    clock.advance(Duration::from_secs(61));
    settled_step(&app, &mut worker).await;
    for _ in 0..200 {
        if requests.lock().expect("the log").len() > 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requests.lock().expect("the log").len(), 4);
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_llm_holds_no_monitoring_back_and_a_spent_budget_stops_the_calls() {
    use omoi_testing::LlmReply;
    let app = spawn_app().await;
    let directory = scratch_dir();
    let (_, task, _agent, _, clock) = stalling(&app, "nudge", &directory).await;
    // Every call times out (300 ms) and the organization may make two an hour.
    let (base_url, requests) = fake_llm(vec![LlmReply::Silence(Duration::from_secs(5))]).await;
    let mut limited = with_llm(config(&clock, &directory), &base_url);
    limited.monitoring.llm.calls_per_hour = 2;
    let mut worker = Worker::stepped(app.database.pool.clone(), limited);
    clock.advance(Duration::from_millis(STUCK_MS + 1_000));
    settled_step(&app, &mut worker).await;
    // The stall was found in the pass that started the LLM's, which is still waiting.
    let events = history(&app, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(count(&events, "TaskStalled"), 1, "{events:?}");
    assert!(requests.lock().expect("the log").len() <= 1);
    // Two calls (the third retry is over the budget), and nothing recorded.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if requests.lock().expect("the log").len() >= 2 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(requests.lock().expect("the log").len(), 2);
    let events = history(&app, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(count(&events, "TrajectoryAssessed"), 0, "{events:?}");
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_process_agent_reads_the_llms_steering_from_its_file() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "Listen", json!({})).await;
    let (base_url, _) = fake_llm(vec![steer_answer("Write the test first.")]).await;
    let directory = scratch_dir();
    let clock = Clock::default();
    let script = "for i in $(seq 1 600); do \
                    if [ -s \"$OMOI_STEERING_FILE\" ]; then cat \"$OMOI_STEERING_FILE\"; exit 0; fi; \
                    sleep 0.05; done; exit 1";
    let mut worker = Worker::stepped(
        app.database.pool.clone(),
        with_llm(
            WorkerConfig {
                work: Work::Command(script.into()),
                ..config(&clock, &directory)
            },
            &base_url,
        ),
    );
    settled_step(&app, &mut worker).await;
    app.until_task_status(&task, "running").await;
    settled_step(&app, &mut worker).await;
    until_event(&app, &task, "TaskSteered").await;
    // The worker sees the steering in the log and writes it for the command.
    settled_step(&app, &mut worker).await;
    let state = app.until_task_status(&task, "completed").await;
    let output = state["result"]["output"].to_string();
    assert!(output.contains("Write the test first."), "{state}");
    assert!(
        output.contains("\\\"source\\\":\\\"trajectory\\\""),
        "{state}"
    );
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

/// A stall the task moved past before the policy read it — here it reported progress in
/// the same transaction; a lagging manager, or a new build of it going through the log,
/// meets the same — gets no restart: the restart would fail an attempt that is not stalled.
#[tokio::test(flavor = "multi_thread")]
async fn a_stall_the_task_moved_past_before_the_policy_read_it_gets_no_restart() {
    use omoi_domain::task::{Task, TaskCommand};
    use omoi_store::bus::RetryPolicy;
    use omoi_store::{Actor, CommandBus, CommandContext};

    let app = spawn_app().await;
    let directory = scratch_dir();
    let (_, task, _agent, worker, _clock) = stalling(&app, "restart", &directory).await;
    let path = format!("/api/v1/tasks/{task}");
    let bus = CommandBus::new(app.database.pool.clone(), RetryPolicy::default());
    let context = CommandContext::new(Actor::System("test"), "stalled-then-progressed");
    // Idle since its start (a stall of the attempt before its start is refused).
    let started: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(app.task_state(&task).await["started_at"].clone()).expect("a start");
    let now = chrono::Utc::now();
    let commands = [
        TaskCommand::MarkStalled {
            idle_since: started,
            progress_seen: 0,
            at: now,
        },
        TaskCommand::ReportProgress {
            message: "back at it".into(),
        },
    ];
    bus.execute_all::<Task>(&task, &commands, &context, &|_| Ok(()))
        .await
        .expect("stalled, then progress");
    app.caught_up().await;
    let events = history(&app, &path).await;
    assert_eq!(count(&events, "TaskStalled"), 1, "{events:?}");
    assert_eq!(count(&events, "TaskFailed"), 0, "{events:?}");
    assert_eq!(app.task_state(&task).await["status"], "running");
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

/// A stall whose attempt ended before the policy read it — here the task completed in
/// the same transaction; a lagging manager, or a new build of it going through the log,
/// meets the same — gets no escalation: the ticket, open for its other work, is not
/// blocked for finished work.
#[tokio::test(flavor = "multi_thread")]
async fn a_stall_of_an_attempt_that_ended_before_the_policy_read_it_escalates_nothing() {
    use omoi_domain::task::{Task, TaskCommand};
    use omoi_store::bus::RetryPolicy;
    use omoi_store::{Actor, CommandBus, CommandContext};

    let app = spawn_app().await;
    let directory = scratch_dir();
    let (ticket, task, _agent, worker, _clock) = stalling(&app, "escalate", &directory).await;
    // The ticket has more to do: it stays open once the task completes.
    app.task(&ticket, "Still to do", json!({})).await;
    let state = app.task_state(&task).await;
    let started: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(state["started_at"].clone()).expect("a start");
    let bus = CommandBus::new(app.database.pool.clone(), RetryPolicy::default());
    let context = CommandContext::new(Actor::System("test"), "stalled-then-completed");
    let now = chrono::Utc::now();
    let commands = [
        TaskCommand::MarkStalled {
            idle_since: started,
            progress_seen: 0,
            at: now,
        },
        TaskCommand::CompleteTask {
            result: json!({"done": true}),
            at: now,
        },
    ];
    bus.execute_all::<Task>(&task, &commands, &context, &|_| Ok(()))
        .await
        .expect("stalled, then completed");
    app.caught_up().await;
    let events = history(&app, &format!("/api/v1/tasks/{task}")).await;
    assert_eq!(count(&events, "TaskStalled"), 1, "{events:?}");
    assert_eq!(app.task_state(&task).await["status"], "completed");
    let ticket_events = history(&app, &format!("/api/v1/tickets/{ticket}")).await;
    assert_eq!(
        count(&ticket_events, "TicketBlocked"),
        0,
        "{ticket_events:?}"
    );
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

/// A key limited to a project sees neither its organization's organization-wide agents
/// nor their alerts in the project's overview, as in the agents list; the organization's
/// members see both.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_limited_key_sees_only_its_projects_agents_in_the_overview() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let everywhere = app.register_agent(&organization).await;
    let (status, registered) = app
        .post(
            "/api/v1/agents/register",
            json!({"organization_id": organization, "project_id": project,
                   "agent_type": "worker"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let own = Agent {
        id: omoi_testing::id_of(&registered),
        credential: registered["credential"]
            .as_str()
            .expect("a credential")
            .to_string(),
    };
    for agent in [&everywhere, &own] {
        // A first heartbeat makes it idle (a spawning agent is not quarantined).
        assert_eq!(agent.heartbeat(&app).await["status"], "idle");
    }
    let own = own.id;
    for agent in [everywhere.id.as_str(), own.as_str()] {
        let (status, body) = app
            .post(
                "/api/v1/guardian/interventions",
                json!({"kind": "quarantine", "agent_id": agent, "reason": "looping"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, created) = app
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "ci", "organization_id": organization, "project_id": project,
                   "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().expect("the key").to_string();
    app.caught_up().await;
    let path = format!("/api/v1/monitoring/overview?project_id={project}");
    let subjects = |overview: &Value, list: &str, field: &str| -> Vec<String> {
        let mut ids: Vec<String> = overview[list]
            .as_array()
            .expect("a list")
            .iter()
            .map(|item| item[field].as_str().expect("an id").to_string())
            .collect();
        ids.sort();
        ids
    };
    let mut both = vec![everywhere.id.clone(), own.clone()];
    both.sort();
    let (status, member) = app.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{member}");
    assert_eq!(subjects(&member, "agents_in_trouble", "agent_id"), both);
    assert_eq!(subjects(&member, "alerts", "subject_id"), both);
    let (status, limited) = app
        .send_as(Some(&key), reqwest::Method::GET, &path, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{limited}");
    let own = [own];
    assert_eq!(subjects(&limited, "agents_in_trouble", "agent_id"), own);
    assert_eq!(subjects(&limited, "alerts", "subject_id"), own);
}

/// An agent a person marked `failed` while it ran a task gives the task back however it
/// heartbeats on: its heartbeats are refused (409 `agent_failed`) and renew nothing, so its
/// lease runs out and the sweep fails its attempt, to be retried. Before, each heartbeat
/// renewed the lease, and the task stayed running on a failed agent for ever.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_a_person_failed_gives_its_task_back_however_it_heartbeats() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (task, agent) = app.started_task(&organization, &project, "Held").await;
    app.must(
        &format!("/api/v1/agents/{}/status", agent.id),
        json!({"to": "failed", "reason": "it loops"}),
        StatusCode::OK,
    )
    .await;

    // Its lease past the stale threshold, then a heartbeat: refused, renewing nothing.
    backdate_heartbeat(&app, &agent.id, 91).await;
    let (status, refused) = agent
        .post(
            &app,
            &format!("/api/v1/agents/{}/heartbeat", agent.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "agent_failed", "{refused}");

    let directory = scratch_dir();
    let clock = Clock::default();
    let mut workers = vec![Worker::stepped(
        app.database.pool.clone(),
        config(&clock, &directory),
    )];
    step_all(&mut workers).await;
    let state = app.until_task_status(&task, "retry_scheduled").await;
    assert_eq!(state["assigned_agent_id"], Value::Null, "{state}");
    for worker in workers {
        worker.stop().await;
    }
    let _ = std::fs::remove_dir_all(directory);
}

/// Coherence weighs the share of open tasks suspected duplicates: a task flagged against
/// two older ones is one such task, not two (its pairs are two rows of the findings).
#[tokio::test(flavor = "multi_thread")]
async fn a_task_flagged_against_two_older_ones_counts_as_one_duplicate() {
    use omoi_domain::task::{Task, TaskCommand};
    use omoi_projections::monitoring::{finding_counts, AlertScope};
    use omoi_store::bus::RetryPolicy;
    use omoi_store::{Actor, CommandBus, CommandContext};

    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Work").await;
    let older: Vec<String> = futures_util::future::join_all(
        ["Write the login form", "Write the login form again"]
            .map(|title| app.task(&ticket, title, json!({}))),
    )
    .await;
    let newest = app
        .task(&ticket, "Write the login form once more", json!({}))
        .await;
    let bus = CommandBus::new(app.database.pool.clone(), RetryPolicy::default());
    let context = CommandContext::new(Actor::System("conductor"), "duplicates");
    for duplicate_of in &older {
        let flag = TaskCommand::FlagDuplicate {
            duplicate_of: duplicate_of.parse().expect("an id"),
            similarity: 0.9,
            at: chrono::Utc::now(),
        };
        bus.execute::<Task>(&newest, flag, &context)
            .await
            .expect("flagged");
    }
    app.caught_up().await;
    let (_, overview) = app
        .get(&format!("/api/v1/monitoring/overview?project_id={project}"))
        .await;
    assert_eq!(
        overview["duplicates"].as_array().map(Vec::len),
        Some(2),
        "two pairs: {overview}"
    );
    let scope = AlertScope {
        organization_id: organization.parse().expect("an id"),
        project_id: project.parse().expect("an id"),
        organization_wide: true,
    };
    let counts = finding_counts(&app.database.pool, scope)
        .await
        .expect("the counts");
    assert_eq!(counts.duplicates, 1, "one task is a duplicate");
}
