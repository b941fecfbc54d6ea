//! Transcripts: every line a task's attempts wrote, kept in order — by the in-process
//! worker for the commands it runs, posted by an HTTP agent for its own — and read page
//! by page with `GET /api/v1/tasks/{id}/logs`, until the retention removes them.

use std::collections::BTreeSet;

use omoi_orchestrator::{Work, Worker, WorkerConfig};
use omoi_testing::{scratch_dir, spawn_app, Agent, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Every line of `attempt` of `task`, read with pages of `limit`; the numbers and texts.
async fn every_line(app: &TestApp, task: &str, attempt: u32, limit: u32) -> Vec<(i64, String)> {
    let mut lines = Vec::new();
    let mut after = 0;
    loop {
        let path =
            format!("/api/v1/tasks/{task}/logs?attempt={attempt}&after={after}&limit={limit}");
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = page["lines"].as_array().expect("lines").clone();
        if got.is_empty() {
            assert_eq!(page["next_after"], after, "{page}");
            return lines;
        }
        for line in got {
            lines.push((
                line["number"].as_i64().expect("a number"),
                line["text"].as_str().expect("a text").to_string(),
            ));
        }
        after = page["next_after"].as_i64().expect("next_after");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_line_of_a_command_writing_100000_lines_is_kept_in_order() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Chatty").await;
    let task = app.task(&ticket, "Count", json!({})).await;
    let directory = scratch_dir();
    let worker = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Command("seq 1 100000".into()),
            check_interval_ms: 200,
            poll_interval_ms: 100,
            work_dir: directory.join("work"),
            ..WorkerConfig::default()
        },
    );
    app.until_task_status(&task, "completed").await;
    worker.stop().await;

    let lines = every_line(&app, &task, 1, 10_000).await;
    assert_eq!(lines.len(), 100_000);
    for (index, (number, text)) in lines.iter().enumerate() {
        let expected = index as i64 + 1;
        assert_eq!(*number, expected);
        assert_eq!(*text, expected.to_string());
    }
    let (_, page) = app.get(&format!("/api/v1/tasks/{task}/logs")).await;
    assert_eq!(page["attempt"], 1, "{page}");
    assert_eq!(page["attempts"], json!([{"attempt": 1, "lines": 100_000}]));
    assert_eq!(page["lines"].as_array().map(Vec::len), Some(1_000));
    // The result still keeps only the tail; the transcript is where the rest lives.
    let state = app.task_state(&task).await;
    assert_eq!(state["result"]["output"].as_array().map(Vec::len), Some(20));
    let _ = std::fs::remove_dir_all(directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_attempt_has_its_own_transcript() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Flaky").await;
    let task = app
        .task(&ticket, "Retry me", json!({"max_retries": 1}))
        .await;
    let directory = scratch_dir();
    // The first attempt fails after two lines (one on stderr); the retry succeeds.
    let script = "echo \"attempt $OMOI_TASK_ATTEMPT\"; \
                  if [ \"$OMOI_TASK_ATTEMPT\" = 1 ]; then echo broken >&2; exit 3; fi";
    let worker = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Command(script.into()),
            check_interval_ms: 200,
            poll_interval_ms: 100,
            work_dir: directory.join("work"),
            ..WorkerConfig::default()
        },
    );
    app.until_task_status(&task, "completed").await;
    worker.stop().await;

    let first: BTreeSet<String> = every_line(&app, &task, 1, 10)
        .await
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert_eq!(first, BTreeSet::from(["attempt 1".into(), "broken".into()]));
    let second = every_line(&app, &task, 2, 10).await;
    assert_eq!(second, vec![(1, "attempt 2".to_string())]);
    // By default the newest attempt.
    let (_, page) = app.get(&format!("/api/v1/tasks/{task}/logs")).await;
    assert_eq!(page["attempt"], 2, "{page}");
    assert_eq!(
        page["attempts"],
        json!([{"attempt": 1, "lines": 2}, {"attempt": 2, "lines": 1}])
    );
    let _ = std::fs::remove_dir_all(directory);
}

/// A running task held by a fresh HTTP agent: (organization, ticket, task, agent).
async fn running_task(app: &TestApp) -> (String, String, String, Agent) {
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Remote").await;
    let task = app.task(&ticket, "Build remotely", json!({})).await;
    let agent = app.register_agent(&organization).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": agent.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    agent.must(app, &task, "start", json!({})).await;
    (organization, ticket, task, agent)
}

async fn post_lines(app: &TestApp, agent: &Agent, task: &str, lines: Value) -> (StatusCode, Value) {
    agent
        .post(
            app,
            &format!("/api/v1/tasks/{task}/logs"),
            json!({ "lines": lines }),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_posts_of_an_http_agent_get_every_number_once() {
    let app = spawn_app().await;
    let (_, _, task, agent) = running_task(&app).await;
    let (status, body) = post_lines(&app, &agent, &task, json!(["cloning", "building"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"task_id": task, "attempt": 1, "lines": 2}));

    // Sixteen writers at once, ten lines each, each line naming its writer and place.
    let writes = (0..16).map(|writer| {
        let lines: Vec<String> = (0..10).map(|line| format!("{writer}:{line}")).collect();
        let (app, agent, task) = (&app, &agent, &task);
        async move {
            let (status, body) = post_lines(app, agent, task, json!(lines)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    });
    futures_util::future::join_all(writes).await;

    let lines = every_line(&app, &task, 1, 7).await;
    let numbers: Vec<i64> = lines.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=162).collect::<Vec<_>>());
    // Each writer's lines are contiguous and in its order: one write is one chunk.
    for chunk in lines[2..].chunks(10) {
        let writer = chunk[0].1.split(':').next().expect("a writer").to_string();
        let expected: Vec<String> = (0..10).map(|line| format!("{writer}:{line}")).collect();
        let got: Vec<String> = chunk.iter().map(|(_, text)| text.clone()).collect();
        assert_eq!(got, expected);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_holder_writes_while_it_runs_and_bad_lines_write_nothing() {
    let app = spawn_app().await;
    let (organization, ticket, task, agent) = running_task(&app).await;
    let lines = json!(["a line"]);

    let other = app.register_agent(&organization).await;
    let (status, body) = post_lines(&app, &other, &task, lines.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let waiting = app.task(&ticket, "Not started", json!({})).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{waiting}/logs"),
            json!({"lines": lines}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "task_not_running");

    let long = "x".repeat(4_001);
    let many: Vec<String> = (0..1_001).map(|n| n.to_string()).collect();
    for (bad, status, code) in [
        (
            json!([]),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("no_lines"),
        ),
        (
            json!(many),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("too_many_lines"),
        ),
        (
            json!(["ok", long]),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("line_too_long"),
        ),
        (
            json!(["one\ntwo"]),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("line_break"),
        ),
        (
            json!(["a\u{0}b"]),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("nul_character"),
        ),
        (json!([1, 2]), StatusCode::BAD_REQUEST, None),
        (json!("one line"), StatusCode::BAD_REQUEST, None),
    ] {
        let (got, body) = post_lines(&app, &agent, &task, bad.clone()).await;
        assert_eq!(got, status, "{bad}: {body}");
        if let Some(code) = code {
            assert_eq!(body["code"], code, "{body}");
        }
    }
    let (_, page) = app.get(&format!("/api/v1/tasks/{task}/logs")).await;
    assert_eq!(page["attempts"], json!([]), "nothing was written: {page}");

    // A finished task's transcript is closed.
    agent
        .must(&app, &task, "complete", json!({"result": {}}))
        .await;
    let (status, body) = post_lines(&app, &agent, &task, json!(["late"])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    for query in [
        "limit=0",
        "limit=10001",
        "after=-1",
        "attempt=0",
        "colour=red",
    ] {
        let (status, body) = app.get(&format!("/api/v1/tasks/{task}/logs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let (status, body) = app
        .get("/api/v1/tasks/00000000-0000-0000-0000-000000000000/logs")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transcript_goes_after_its_retention_and_a_recent_one_stays() {
    let app = spawn_app().await;
    let (_, _, old_task, old_agent) = running_task(&app).await;
    let (_, _, new_task, new_agent) = running_task(&app).await;
    for (agent, task) in [(&old_agent, &old_task), (&new_agent, &new_task)] {
        let (status, body) = post_lines(&app, agent, task, json!(["a", "b"])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The old one's last line was written 25 hours ago (the retention here is a day).
    let old: uuid::Uuid = old_task.parse().expect("an id");
    sqlx::query(
        "update task_log_heads set updated_at = now() - interval '25 hours' where task_id = $1",
    )
    .bind(old)
    .execute(&app.database.pool)
    .await
    .expect("backdated");
    let directory = scratch_dir();
    let mut worker = Worker::stepped(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Nothing,
            check_interval_ms: 0,
            transcript_retention_hours: 24,
            organizations: vec![uuid::Uuid::now_v7()],
            work_dir: directory.join("work"),
            ..WorkerConfig::default()
        },
    );
    worker.step().await;
    worker.stop().await;
    let (_, page) = app.get(&format!("/api/v1/tasks/{old_task}/logs")).await;
    assert_eq!(page["attempts"], json!([]), "{page}");
    assert_eq!(page["lines"], json!([]), "{page}");
    let left: i64 = sqlx::query_scalar("select count(*) from task_logs where task_id = $1")
        .bind(old)
        .fetch_one(&app.database.pool)
        .await
        .expect("counted");
    assert_eq!(left, 0, "its chunks go with it");
    assert_eq!(every_line(&app, &new_task, 1, 10).await.len(), 2);
    let _ = std::fs::remove_dir_all(directory);
}

/// A page of a transcript ends at its weight as well as at its count: a line of 4,000
/// control characters weighs about 24 kB as JSON (each is written `\u0001`), so a page
/// asked for 10,000 of 200 such lines holds 4 MiB of them, and paging on with
/// `next_after` reads every line once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_heavy_lines_ends_at_its_weight_and_paging_on_loses_nothing() {
    const PAGE_BYTES: usize = 4 * 1024 * 1024;
    let app = spawn_app().await;
    let (_, _, task, agent) = running_task(&app).await;
    let heavy = |n: usize| format!("{n:04}{}", "\u{1}".repeat(3_996));
    let mut written = Vec::new();
    // Ten lines a request: a request body holds at most 256 KiB.
    for batch in 0..20 {
        let lines: Vec<String> = (batch * 10..(batch + 1) * 10).map(heavy).collect();
        let (status, body) = post_lines(&app, &agent, &task, json!(lines)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        written.extend(lines);
    }

    let (status, page) = app
        .get(&format!("/api/v1/tasks/{task}/logs?limit=10000"))
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let weights: Vec<usize> = page["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|line| line["text"].to_string().len())
        .collect();
    let weight: usize = weights.iter().sum();
    assert!(
        weights.len() > 1 && weights.len() < written.len(),
        "{} lines on the first page",
        weights.len()
    );
    assert!(weight <= PAGE_BYTES, "{weight} bytes");
    assert!(
        weight + weights[0] > PAGE_BYTES,
        "the page ends at its weight ({weight} bytes), not before"
    );
    assert_eq!(
        page["next_after"],
        json!(weights.len()),
        "{}",
        page["next_after"]
    );
    let every = every_line(&app, &task, 1, 10_000).await;
    let numbers: Vec<i64> = every.iter().map(|(number, _)| *number).collect();
    assert_eq!(numbers, (1..=written.len() as i64).collect::<Vec<_>>());
    let texts: Vec<String> = every.into_iter().map(|(_, text)| text).collect();
    assert_eq!(texts, written);
}
