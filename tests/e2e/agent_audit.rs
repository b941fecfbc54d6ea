//! The agent audit: `GET /api/v1/agents/{id}/activity` lists exactly the events an agent
//! caused or that name it, across the projects of its organization, in the global order,
//! page by page — checked against the global stream read independently.

use omoi_orchestrator::{Work, Worker, WorkerConfig};
use omoi_testing::{scratch_dir, spawn_app, Agent, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Every event of the global stream (as the owner sees it), oldest first.
async fn whole_stream(app: &TestApp) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = String::from("0-0");
    loop {
        let (status, page) = app
            .get(&format!("/api/v1/events?after={after}&limit=1000"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = page["events"].as_array().expect("events").clone();
        if got.is_empty() {
            return events;
        }
        events.extend(got);
        after = page["next_cursor"].as_str().expect("a cursor").to_string();
    }
}

/// The oracle: an event concerns `agent` when the agent caused it, it is the agent's own,
/// or its payload mentions the agent's id anywhere.
fn concerns(event: &Value, agent: &str) -> bool {
    event["metadata"]["actor"] == format!("agent:{agent}")
        || (event["aggregate_type"] == "Agent" && event["aggregate_id"] == agent)
        || event["payload"].to_string().contains(agent)
}

/// Every event of `agent`'s activity, read with pages of `limit` (as `token`, or the owner).
async fn activity(app: &TestApp, token: Option<&str>, agent: &str, limit: u32) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!("/api/v1/agents/{agent}/activity?after={after}&limit={limit}");
        let (status, page) = app.send_as(token, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = page["events"].as_array().expect("events").clone();
        if got.is_empty() {
            let unchanged = if after.is_empty() {
                "0-0"
            } else {
                after.as_str()
            };
            assert_eq!(page["next_cursor"], unchanged, "{page}");
            return events;
        }
        events.extend(got);
        after = page["next_cursor"].as_str().expect("a cursor").to_string();
    }
}

fn cursors(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["cursor"].as_str().expect("a cursor").to_string())
        .collect()
}

/// Has the owner give `task` to `agent`, which runs and completes it.
async fn run(app: &TestApp, agent: &Agent, task: &str) {
    run_to(app, agent, task, json!({"ok": true})).await;
}

/// [`run`], completing the task with `result`.
async fn run_to(app: &TestApp, agent: &Agent, task: &str, result: Value) {
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": agent.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    agent.must(app, task, "start", json!({})).await;
    agent
        .must(app, task, "progress", json!({"message": "halfway"}))
        .await;
    agent
        .must(app, task, "complete", json!({"result": result}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_activity_of_an_agent_is_exactly_its_events_across_two_projects() {
    let app = spawn_app().await;
    let (organization, first_project) = app.organization_and_project().await;
    let second_project = app
        .create(
            "/api/v1/projects",
            json!({"organization_id": organization, "name": "Mobile",
                   "settings": {"auto_spawn_tasks": false, "validation_required": false}}),
        )
        .await;
    let watched = app.register_agent(&organization).await;
    let bystander = app.register_agent(&organization).await;
    for project in [&first_project, &second_project] {
        let ticket = app.ticket(project, "Work").await;
        let mine = app.task(&ticket, "Mine", json!({})).await;
        let theirs = app.task(&ticket, "Theirs", json!({})).await;
        run(&app, &watched, &mine).await;
        run(&app, &bystander, &theirs).await;
    }
    // A person acts on the agent: the event names it without the agent causing it.
    let (status, body) = app
        .post(
            &format!("/api/v1/agents/{}/status", watched.id),
            json!({"to": "failed", "reason": "audit"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.caught_up().await;

    let stream = whole_stream(&app).await;
    let expected: Vec<Value> = stream
        .iter()
        .filter(|e| concerns(e, &watched.id))
        .cloned()
        .collect();
    let got = activity(&app, app.token.as_deref(), &watched.id, 1000).await;
    assert_eq!(cursors(&got), cursors(&expected));
    assert_eq!(got, expected, "the events are served whole");
    let projects: std::collections::BTreeSet<&str> = got
        .iter()
        .filter_map(|e| e["metadata"]["project_id"].as_str())
        .collect();
    assert_eq!(projects.len(), 2, "both projects' events: {projects:?}");
    let kinds: Vec<&str> = got
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    for kind in [
        "AgentRegistered",
        "TaskAssigned",
        "TaskStarted",
        "TaskProgressReported",
        "TaskCompleted",
        "AgentStatusChanged",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    // Page by page: the same events, in the same order.
    assert_eq!(
        cursors(&activity(&app, app.token.as_deref(), &watched.id, 2).await),
        cursors(&expected)
    );
    // The bystander's activity shares none of them but the events naming both.
    let others = activity(&app, app.token.as_deref(), &bystander.id, 1000).await;
    let bystanders: Vec<Value> = stream
        .iter()
        .filter(|e| concerns(e, &bystander.id))
        .cloned()
        .collect();
    assert!(!bystanders.is_empty(), "the bystander registered, at least");
    assert_eq!(cursors(&others), cursors(&bystanders));
    assert!(others.iter().all(|e| !concerns(e, &watched.id)));
    // The agent reads its own audit with its own credential.
    let own = activity(&app, Some(&watched.credential), &watched.id, 1000).await;
    assert_eq!(cursors(&own), cursors(&expected));
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_agents_act_as_themselves_and_strangers_see_nothing() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "Echo", json!({})).await;
    let directory = scratch_dir();
    let worker = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Command("echo hello".into()),
            check_interval_ms: 200,
            poll_interval_ms: 100,
            work_dir: directory.join("work"),
            ..WorkerConfig::default()
        },
    );
    app.until_task_status(&task, "completed").await;
    worker.stop().await;
    let (_, history) = app.get(&format!("/api/v1/tasks/{task}/history")).await;
    let events = history["events"].as_array().expect("events");
    let assigned = events
        .iter()
        .find(|e| e["event_type"] == "TaskAssigned")
        .expect("an assignment");
    let agent_id = assigned["payload"]["TaskAssigned"]["agent_id"]
        .as_str()
        .expect("the agent")
        .to_string();
    // Every step of the run, from the assignment on, is the agent's own.
    for event in events
        .iter()
        .skip_while(|e| e["event_type"] != "TaskAssigned")
    {
        assert_eq!(
            event["metadata"]["actor"],
            format!("agent:{agent_id}"),
            "{event}"
        );
    }
    app.caught_up().await;
    let own = activity(&app, app.token.as_deref(), &agent_id, 100).await;
    let kinds: Vec<&str> = own
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert!(kinds.contains(&"TaskCompleted"), "{kinds:?}");

    // A user of another organization: as if the agent did not exist.
    let stranger = app.register_and_login("stranger@example.com").await;
    let (status, body) = app
        .send_as(
            Some(&stranger),
            reqwest::Method::GET,
            &format!("/api/v1/agents/{agent_id}/activity"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for query in ["after=x", "limit=0", "limit=1001"] {
        let (status, body) = app
            .get(&format!("/api/v1/agents/{agent_id}/activity?{query}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let _ = std::fs::remove_dir_all(directory);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_list_shows_every_agent_as_it_was_at_a_position() {
    let app = spawn_app().await;
    let (organization, _) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    agent.heartbeat(&app).await;
    let (_, history) = app
        .get(&format!("/api/v1/agents/{}/history", agent.id))
        .await;
    let idle_at = history["events"][1]["global_position"]
        .as_i64()
        .expect("the move to idle");
    let (status, body) = app
        .post(
            "/api/v1/guardian/interventions",
            json!({"kind": "quarantine", "agent_id": agent.id, "reason": "audit"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let later = app.register_agent(&organization).await;
    app.caught_up().await;

    let list = |query: String| {
        let app = &app;
        async move {
            let (status, body) = app.get(&format!("/api/v1/agents?{query}")).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            body["agents"]
                .as_array()
                .expect("agents")
                .iter()
                .map(|a| {
                    (
                        a["agent_id"].as_str().unwrap_or_default().to_string(),
                        a["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let now = list(format!("organization_id={organization}")).await;
    assert!(
        now.contains(&(agent.id.clone(), "quarantined".into())),
        "{now:?}"
    );
    assert!(now.iter().any(|(id, _)| *id == later.id), "{now:?}");
    let then = list(format!("organization_id={organization}&as_of={idle_at}")).await;
    assert_eq!(then, vec![(agent.id.clone(), "idle".to_string())]);
    // As of the very end, the replay agrees with the read model.
    let end = list(format!("organization_id={organization}&as_of=999999999")).await;
    assert_eq!(end, now);
    let (status, body) = app.get(&format!("/api/v1/agents?as_of={idle_at}")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "as_of_needs_organization");

    // A page at a time, now and as of the end: pages of one walk the same list.
    for as_of in ["", "&as_of=999999999"] {
        let mut walked = Vec::new();
        let mut after = String::new();
        loop {
            let (status, page) = app
                .get(&format!(
                    "/api/v1/agents?organization_id={organization}&limit=1{as_of}{after}"
                ))
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let agents = page["agents"].as_array().expect("agents");
            assert!(agents.len() <= 1, "{page}");
            walked.extend(agents.iter().map(|a| {
                (
                    a["agent_id"].as_str().unwrap_or_default().to_string(),
                    a["status"].as_str().unwrap_or_default().to_string(),
                )
            }));
            match page["next_after"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
        assert_eq!(walked, now, "{as_of}");
    }
    for query in ["limit=0", "limit=1001", "after=x"] {
        let (status, body) = app.get(&format!("/api/v1/agents?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
}

/// A page of an agent's activity ends at its weight as well as at its count: with results
/// of about 240 kB, a page asked for 1,000 events holds about 4 MiB of them, and
/// following `next_cursor` lists the same events, once each, as pages of 7 do.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_an_agents_activity_ends_at_its_weight_and_loses_nothing() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Heavy results").await;
    // Within the 256 KiB a request body may hold.
    let result = json!({"log": "x".repeat(240_000)});
    // All made first: the ticket is done once its last task completes.
    let mut tasks = Vec::new();
    for n in 0..20 {
        tasks.push(app.task(&ticket, &format!("Heavy {n}"), json!({})).await);
    }
    for task in tasks {
        run_to(&app, &agent, &task, result.clone()).await;
    }
    app.caught_up().await;

    let path = format!("/api/v1/agents/{}/activity?limit=1000", agent.id);
    let (status, first) = app.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let held = first["events"].as_array().expect("events").len();
    let owner = app.token.as_deref();
    let by_weight = activity(&app, owner, &agent.id, 1000).await;
    let by_count = activity(&app, owner, &agent.id, 7).await;
    assert!(
        held > 1 && held < by_count.len(),
        "the first page held {held} of {} events",
        by_count.len()
    );
    assert_eq!(cursors(&by_weight), cursors(&by_count));
    let distinct: std::collections::BTreeSet<String> = cursors(&by_weight).into_iter().collect();
    assert_eq!(distinct.len(), by_weight.len(), "every event once");
}
