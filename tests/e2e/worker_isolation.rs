//! What an in-process agent's task may learn of the operator, and what other local users
//! may learn of a task, against a real server and PostgreSQL: a failure's error never
//! repeats the command line, the command inherits none of the worker's secrets, attempts
//! run in a private directory of the worker's, and failed attempts' directories are
//! removed after the retention.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use omoi_orchestrator::{Work, Worker, WorkerConfig};
use omoi_testing::{scratch_dir, spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

/// A token the way an operator might write one into `worker.work.command`.
const TOKEN: &str = "sk_live_51HxOperatorOnlyToken";

fn config(work: Work, parent: &Path) -> WorkerConfig {
    WorkerConfig {
        work,
        stale_after_ms: 1_500,
        check_interval_ms: 200,
        poll_interval_ms: 100,
        work_dir: parent.to_path_buf(),
        ..WorkerConfig::default()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

/// A task of a new ticket in the app's project.
async fn task(app: &TestApp, title: &str, extra: Value) -> String {
    let (_, project) = app.organization_and_project().await;
    let (status, ticket) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Work"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let mut body = json!({"ticket_id": ticket["id"], "title": title, "task_type": "implement"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let (status, answer) = app.post("/api/v1/tasks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["id"].as_str().expect("an id").to_string()
}

async fn until_status(app: &TestApp, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, body) = app.get(&format!("/api/v1/tasks/{id}")).await;
        if body["state"]["status"] == status {
            return body["state"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never became {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until_gone(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was never removed",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_commands_error_shows_neither_its_command_line_nor_the_token_in_it() {
    let app = spawn_app().await;
    let parent = scratch_dir();
    let id = task(&app, "deploy", json!({"max_retries": 0})).await;
    // `set -x` makes the shell itself write the command line, token and all, to stderr.
    let script = format!("set -x; deploy_token={TOKEN}; false --token \"$deploy_token\"");
    let worker = Worker::start(
        app.database.pool.clone(),
        config(Work::Command(script), &parent),
    );
    let state = until_status(&app, &id, "permanently_failed").await;
    worker.stop().await;
    let error = state["last_error"].as_str().unwrap_or_default().to_string();
    let (status, history) = app.get(&format!("/api/v1/tasks/{id}/history")).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let (status, events) = app.get("/api/v1/events?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{events}");
    for seen in [history.to_string(), events.to_string(), state.to_string()] {
        assert!(!seen.contains(TOKEN), "the token leaked: {seen}");
        assert!(!seen.contains("set -x"), "the command line leaked: {seen}");
    }
    let failed = history["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_type"] == "TaskFailed"))
        .expect("a TaskFailed event");
    let recorded = failed["payload"]["TaskFailed"]["error"].as_str();
    assert!(
        recorded.is_some_and(|e| e.contains("exit status: 1")),
        "the error says what went wrong: {failed} (state: {error})"
    );
    std::fs::remove_dir_all(parent).expect("cleaned up");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tasks_command_inherits_none_of_the_workers_own_secrets() {
    let app = spawn_app().await;
    let parent = scratch_dir();
    let seen = parent.join("environment");
    let id = task(&app, "inspect", json!({})).await;
    let script = format!("env > {}", seen.display());
    let worker = Worker::start(
        app.database.pool.clone(),
        config(Work::Command(script), &parent),
    );
    until_status(&app, &id, "completed").await;
    worker.stop().await;
    let environment = std::fs::read_to_string(&seen).expect("the task's environment");
    let names: Vec<&str> = environment
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    assert!(names.contains(&"OMOI_TASK_ID"), "{names:?}");
    let task_variable = |name: &str| {
        name.starts_with("OMOI_TASK_")
            || ["OMOI_PROJECT_ID", "OMOI_ORGANIZATION_ID"].contains(&name)
    };
    // The test runs with the operator's variables (OMOI_ENV, OMOI_TEST_DATABASE_URL, …).
    for (name, _) in std::env::vars() {
        let operators =
            name == "DATABASE_URL" || name.starts_with("OMOI_") || name.starts_with("PG");
        if operators && !task_variable(&name) {
            assert!(!names.contains(&name.as_str()), "the task saw {name}");
        }
    }
    std::fs::remove_dir_all(parent).expect("cleaned up");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_worker_runs_its_tasks_in_a_private_directory_with_a_name_of_its_own() {
    let app = spawn_app().await;
    let parent = scratch_dir();
    let seen = parent.join("pwd");
    let id = task(&app, "where", json!({})).await;
    let script = format!("pwd > {}", seen.display());
    let worker = Worker::start(
        app.database.pool.clone(),
        config(Work::Command(script), &parent),
    );
    // Another worker on the same parent directory, serving no organization of this test.
    let other = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            organizations: vec![uuid::Uuid::nil()],
            ..config(Work::Nothing, &parent)
        },
    );
    until_status(&app, &id, "completed").await;
    let mine = worker.work_dir().expect("a directory").to_path_buf();
    let theirs = other.work_dir().expect("a directory").to_path_buf();
    assert_ne!(mine, theirs);
    for dir in [&mine, &theirs] {
        assert_eq!(dir.parent(), Some(parent.as_path()));
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    let ran_in = std::fs::read_to_string(&seen).expect("the task's directory");
    assert!(
        Path::new(ran_in.trim()).starts_with(&mine),
        "ran in {ran_in}, not under {}",
        mine.display()
    );
    worker.stop().await;
    other.stop().await;
    assert!(
        !mine.exists() && !theirs.exists(),
        "a stopped worker removes its directory"
    );
    std::fs::remove_dir_all(parent).expect("cleaned up");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_attempts_directory_is_kept_for_the_retention_then_removed() {
    let app = spawn_app().await;
    let parent = scratch_dir();
    let id = task(&app, "broken", json!({"max_retries": 0})).await;
    let worker = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            keep_failed_for_ms: 1_500,
            ..config(Work::Command("exit 3".into()), &parent)
        },
    );
    // Attempt 1, the worker's first run.
    let attempt = worker
        .work_dir()
        .expect("a directory")
        .join(format!("{id}-1-1"));
    until_status(&app, &id, "permanently_failed").await;
    let failed_at = Instant::now();
    assert!(attempt.join("task.json").exists(), "kept to be looked into");
    until_gone(&attempt).await;
    assert!(
        failed_at.elapsed() >= Duration::from_millis(1_000),
        "removed after {:?}, before the retention",
        failed_at.elapsed()
    );
    worker.stop().await;
    std::fs::remove_dir_all(parent).expect("cleaned up");
}

/// A task reassigned while it runs is run again at the same attempt, in a directory of its
/// own: the stopped run's is still being written while its command dies, and is kept and
/// removed later.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_run_again_at_the_same_attempt_does_not_share_the_stopped_runs_directory() {
    let app = spawn_app().await;
    let parent = scratch_dir();
    // Without the ticket's own `analyze` task, which would hold the worker's agent.
    let (_, project) = app
        .organization_and_project_with(json!({"auto_spawn_tasks": false}))
        .await;
    let ticket = app.ticket(&project, "Work").await;
    let id = app
        .task(&ticket, "reassigned", json!({"max_retries": 0}))
        .await;
    // The first run marks its directory and waits; a run finding the mark fails, and a
    // run after the first completes.
    let script = r#"test -e mark && { echo "shares a stopped run's directory"; exit 3; }
touch mark
test -e "../$OMOI_TASK_ID.ran" && exit 0
touch "../$OMOI_TASK_ID.ran"
sleep 60"#;
    let worker = Worker::start(
        app.database.pool.clone(),
        config(Work::Command(script.into()), &parent),
    );
    let work_dir = worker.work_dir().expect("a directory").to_path_buf();
    let first_run = work_dir.join(format!("{id}.ran"));
    let deadline = Instant::now() + PATIENCE;
    while !first_run.exists() {
        assert!(Instant::now() < deadline, "the first run never began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, body) = app
        .post(
            "/api/v1/guardian/interventions",
            json!({"kind": "reassign", "task_id": id, "reason": "moved to another agent"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let done = until_status(&app, &id, "completed").await;
    assert_eq!(done["retry_count"], 0, "the same attempt: {done}");
    worker.stop().await;
    std::fs::remove_dir_all(parent).expect("cleaned up");
}
