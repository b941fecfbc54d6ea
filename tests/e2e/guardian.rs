//! Guardian interventions (`POST /api/v1/guardian/interventions`): only owners, admins and
//! guardian agents an owner or admin registered may intervene — tried from the role just
//! below (member), a viewer, a worker agent, a member registering a guardian agent to
//! raise itself, and another organization's guardian — and each intervention does what
//! it says, on the timeline and in the target's history.

use omoi_orchestrator::{SteppedWorker, Work, Worker, WorkerConfig};
use omoi_testing::{scratch_dir, spawn_app, Agent, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const PATH: &str = "/api/v1/guardian/interventions";

async fn as_(app: &TestApp, token: &str, body: Value) -> (StatusCode, Value) {
    app.send_as(Some(token), Method::POST, PATH, Some(body))
        .await
}

/// A user of `organization` with `role`: their token.
async fn member(app: &TestApp, organization: &str, email: &str, role: &str) -> String {
    let token = app.register_and_login(email).await;
    let (status, me) = app
        .send_as(Some(&token), Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let principal = format!("user:{}", me["id"].as_str().expect("an id"));
    let (status, body) = app
        .post(
            &format!("/api/v1/organizations/{organization}/members"),
            json!({"principal": principal, "role": role}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    token
}

/// Registers an agent of `agent_type` as the holder of `token`.
async fn register(
    app: &TestApp,
    token: &str,
    organization: &str,
    agent_type: &str,
) -> (StatusCode, Value) {
    app.send_as(
        Some(token),
        Method::POST,
        "/api/v1/agents/register",
        Some(json!({"organization_id": organization, "agent_type": agent_type})),
    )
    .await
}

/// A task of a fresh ticket, running with `agent`.
async fn running(app: &TestApp, project: &str, agent: &Agent) -> String {
    let ticket = app.ticket(project, "Work").await;
    let task = app.task(&ticket, "Risky", json!({})).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": agent.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    agent.must(app, &task, "start", json!({})).await;
    task
}

/// A worker driven step by step whose organization has one in-process agent doing nothing.
fn one_agent_worker(app: &TestApp, directory: &std::path::Path) -> SteppedWorker {
    Worker::stepped(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Nothing,
            agents_per_organization: 1,
            check_interval_ms: 0,
            work_dir: directory.join("work"),
            ..WorkerConfig::default()
        },
    )
}

/// The agent `task`'s (first) assignment names.
async fn assignee(app: &TestApp, task: &str) -> String {
    let (_, history) = app.get(&format!("/api/v1/tasks/{task}/history")).await;
    history["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event_type"] == "TaskAssigned")
        .and_then(|e| e["payload"]["TaskAssigned"]["agent_id"].as_str())
        .expect("an assignment")
        .to_string()
}

/// [`one_agent_worker`], after it ran a first task of a new ticket of `project`; and its
/// one agent, as that task's assignment names it.
async fn one_agent_worker_that_ran_a_task(
    app: &TestApp,
    project: &str,
    directory: &std::path::Path,
) -> (SteppedWorker, String) {
    let mut worker = one_agent_worker(app, directory);
    let ticket = app.ticket(project, "Work").await;
    let first = app.task(&ticket, "First", json!({})).await;
    app.caught_up().await;
    worker.step().await;
    app.until_task_status(&first, "completed").await;
    let agent = assignee(app, &first).await;
    (worker, agent)
}

fn last_kinds(history: &Value, n: usize) -> Vec<String> {
    let events = history["events"].as_array().expect("events");
    events[events.len().saturating_sub(n)..]
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_owners_admins_and_their_guardian_agents_intervene() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let worker = app.register_agent(&organization).await;
    let task = running(&app, &project, &worker).await;
    let cancel = json!({"kind": "emergency_cancel", "task_id": task, "reason": "runaway"});
    // The role just below admin, a viewer, a worker agent: 403, nothing written.
    let member_token = member(&app, &organization, "member@example.com", "member").await;
    let viewer_token = member(&app, &organization, "viewer@example.com", "viewer").await;
    app.caught_up().await;
    let before = app.event_count().await;
    for token in [&member_token, &viewer_token, &worker.credential] {
        let (status, body) = as_(&app, token, cancel.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("guardian")),
            "{body}"
        );
    }
    // Nor by the plain status route: in or out of quarantine is a guardian's move.
    let (status, body) = app
        .send_as(
            Some(&member_token),
            Method::POST,
            &format!("/api/v1/agents/{}/status", worker.id),
            Some(json!({"to": "quarantined", "reason": "mine now"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "guardian_required");
    // A member cannot raise itself by registering a guardian agent.
    let (status, body) = register(&app, &member_token, &organization, "guardian").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(app.event_count().await, before);
    // Another organization's guardian does not see the task.
    let (other_organization, _) = app.organization_and_project().await;
    let (status, outsider) = register(
        &app,
        app.token.as_deref().expect("the owner"),
        &other_organization,
        "guardian",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{outsider}");
    let outsider_key = outsider["credential"].as_str().expect("a credential");
    let before = app.event_count().await;
    let (status, body) = as_(&app, outsider_key, cancel.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(app.event_count().await, before);

    // An admin may; so may a guardian agent an owner registered.
    let admin_token = member(&app, &organization, "admin@example.com", "admin").await;
    let (status, guardian) = register(&app, &admin_token, &organization, "guardian").await;
    assert_eq!(status, StatusCode::CREATED, "{guardian}");
    let guardian_key = guardian["credential"].as_str().expect("a credential");
    let (status, body) = as_(
        &app,
        guardian_key,
        json!({"kind": "priority_override", "task_id": task, "priority": "CRITICAL",
               "reason": "blocks the release"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["recorded"], true);
    let (status, body) = as_(&app, &admin_token, cancel).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.task_state(&task).await["status"], "cancelled");
    let (_, history) = app.get(&format!("/api/v1/tasks/{task}/history")).await;
    assert_eq!(
        last_kinds(&history, 2),
        ["GuardianIntervened", "TaskCancelled"]
    );
    let guardian_event = &history["events"].as_array().expect("events")
        [history["events"].as_array().map_or(0, Vec::len) - 2];
    assert_eq!(
        guardian_event["payload"]["GuardianIntervened"]["kind"],
        "emergency_cancel"
    );
    assert_eq!(
        guardian_event["payload"]["GuardianIntervened"]["reason"],
        "runaway"
    );
}

/// A guardian agent's powers are its registrar's and its own standing's: quarantined, it
/// cannot release itself (nor intervene) until a guardian releases it; once its registrar
/// is demoted below `guardian:intervene`, it intervenes no more, and promoted again, it
/// may again.
#[tokio::test(flavor = "multi_thread")]
async fn a_guardian_agent_intervenes_only_unquarantined_and_while_its_registrar_may() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let worker = app.register_agent(&organization).await;
    let task = running(&app, &project, &worker).await;
    let admin_token = member(&app, &organization, "admin@example.com", "admin").await;
    let (_, me) = app
        .send_as(Some(&admin_token), Method::GET, "/api/v1/auth/me", None)
        .await;
    let admin_path = format!(
        "/api/v1/organizations/{organization}/members/user:{}",
        me["id"].as_str().expect("an id")
    );
    let (status, guardian) = register(&app, &admin_token, &organization, "guardian").await;
    assert_eq!(status, StatusCode::CREATED, "{guardian}");
    let guardian_id = guardian["id"].as_str().expect("an id").to_string();
    let guardian_key = guardian["credential"].as_str().expect("a credential");
    // Its first heartbeat makes it idle (a spawning agent is not quarantined).
    let (status, body) = app
        .send_as(
            Some(guardian_key),
            Method::POST,
            &format!("/api/v1/agents/{guardian_id}/heartbeat"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let steer = |message: &str| json!({"kind": "steer", "task_id": task, "message": message, "reason": "drifting"});
    let (status, body) = as_(&app, guardian_key, steer("first")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Quarantined by the owner, it neither releases itself nor intervenes.
    let on_guardian = |kind: &str| json!({"kind": kind, "agent_id": guardian_id, "reason": "r"});
    let owner = app.token.clone().expect("the owner");
    let (status, body) = as_(&app, &owner, on_guardian("quarantine")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = app.event_count().await;
    for attempt in [on_guardian("release"), steer("while quarantined")] {
        let (status, body) = as_(&app, guardian_key, attempt).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    assert_eq!(app.event_count().await, before, "nothing written");
    let (status, body) = as_(&app, &owner, on_guardian("release")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = as_(&app, guardian_key, steer("released")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Its registrar demoted to member (the role just below): its powers end with theirs.
    let (status, body) = app.put(&admin_path, json!({"role": "member"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let before = app.event_count().await;
    for attempt in [steer("after the demotion"), on_guardian("quarantine")] {
        let (status, body) = as_(&app, guardian_key, attempt).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    assert_eq!(app.event_count().await, before, "nothing written");
    let (status, body) = app.put(&admin_path, json!({"role": "admin"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = as_(&app, guardian_key, steer("promoted again")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_intervention_does_what_it_says() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let first = app.register_agent(&organization).await;
    let second = app.register_agent(&organization).await;
    let owner = app.token.clone().expect("the owner");

    // Reassign: back to the queue, the attempt not counted; another agent takes it.
    let task = running(&app, &project, &first).await;
    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "reassign", "task_id": task, "reason": "agent looping"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let state = app.task_state(&task).await;
    assert_eq!(state["status"], "pending", "{state}");
    assert_eq!(state["retry_count"], 0, "{state}");
    assert_eq!(state["assigned_agent_id"], Value::Null);
    let (status, body) = first
        .post(
            &app,
            &format!("/api/v1/tasks/{task}/progress"),
            json!({"message": "x"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "the old holder lost it: {body}"
    );
    // Nor does it take it back: its claim (given the time to see the task back in the
    // queue) passes over it to other work, and assigning it is refused.
    let ticket = app.ticket(&project, "Other work").await;
    let other = app
        .task(&ticket, "Later and lower", json!({"priority": "LOW"}))
        .await;
    assert_eq!(first.claim(&app, 2).await, Some(other.clone()));
    // (Cancelled again: the free plan runs one task at a time.)
    app.must(
        &format!("/api/v1/tasks/{other}/cancel"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": first.id}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("reassigned_away")),
        "{body}"
    );
    assert_eq!(second.claim(&app, 5).await, Some(task.clone()));
    second.must(&app, &task, "start", json!({})).await;
    // The old holder's late steps change nothing of the new attempt.
    for (action, body) in [
        ("progress", json!({"message": "late"})),
        ("complete", json!({"result": {"late": true}})),
        ("fail", json!({"error": "late"})),
    ] {
        let (status, answer) = first
            .post(&app, &format!("/api/v1/tasks/{task}/{action}"), body)
            .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("held_by_another_agent")),
            "{action}: {answer}"
        );
    }
    let state = app.task_state(&task).await;
    assert_eq!(
        (
            &state["status"],
            &state["assigned_agent_id"],
            &state["progress"]
        ),
        (&json!("running"), &json!(second.id), &Value::Null),
        "{state}"
    );

    // Steer: the holder's next heartbeat carries the message, from the guardian.
    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "steer", "task_id": task, "reason": "drifting",
               "message": "Stop refactoring; fix the failing test first."}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Delivered at the first heartbeat after the read models have seen it — the agent's
    // own: a member beating for it gets none, and takes none away.
    app.caught_up().await;
    let (status, beat) = app
        .post(
            &format!("/api/v1/agents/{}/heartbeat", second.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{beat}");
    assert_eq!(beat["steering"], json!([]), "{beat}");
    let (_, beat) = second
        .post(
            &app,
            &format!("/api/v1/agents/{}/heartbeat", second.id),
            json!({}),
        )
        .await;
    assert_eq!(beat["steering"][0]["source"], "guardian", "{beat}");
    assert_eq!(
        beat["steering"][0]["message"],
        "Stop refactoring; fix the failing test first."
    );

    // Priority: set once; the same again is refused.
    let override_ = json!({"kind": "priority_override", "task_id": task, "priority": "LOW",
                           "reason": "not urgent"});
    let (status, _) = as_(&app, &owner, override_.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.task_state(&task).await["priority"], "LOW");
    let (status, body) = as_(&app, &owner, override_).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "priority_unchanged");

    // Quarantine (of an agent that showed itself alive): no claim, no assignment, until
    // released.
    let (_, beat) = first
        .post(
            &app,
            &format!("/api/v1/agents/{}/heartbeat", first.id),
            json!({}),
        )
        .await;
    assert_eq!(beat["status"], "idle", "{beat}");
    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "quarantine", "agent_id": first.id, "reason": "keeps failing"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ticket = app.ticket(&project, "More").await;
    let waiting = app.task(&ticket, "Next", json!({})).await;
    let (status, body) = first
        .post(
            &app,
            &format!("/api/v1/agents/{}/claim", first.id),
            json!({"wait_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "agent_unavailable");
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{waiting}/assign"),
            json!({"agent_id": first.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "agent_unavailable");
    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "quarantine", "agent_id": first.id, "reason": "again"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "already quarantined: {body}");
    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "release", "agent_id": first.id, "reason": "fixed its setup"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // (The free plan runs one task at a time: the second agent's finishes first.)
    second
        .must(&app, &task, "complete", json!({"result": {}}))
        .await;
    assert_eq!(first.claim(&app, 5).await, Some(waiting));
    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "release", "agent_id": first.id, "reason": "twice"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "not_quarantined");
    let (_, history) = app
        .get(&format!("/api/v1/agents/{}/history", first.id))
        .await;
    assert_eq!(
        last_kinds(&history, 2),
        ["GuardianIntervened", "AgentStatusChanged"]
    );

    // Every intervention is on the timeline.
    app.caught_up().await;
    let (status, timeline) = app
        .get(&format!("/api/v1/timeline?project_id={project}&limit=200"))
        .await;
    assert_eq!(status, StatusCode::OK, "{timeline}");
    let summaries: Vec<&str> = timeline["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["summary"].as_str())
        .filter(|s| s.starts_with("guardian:"))
        .collect();
    for kind in ["reassign", "steer", "priority_override"] {
        assert!(
            summaries.iter().any(|s| s.contains(kind)),
            "{kind} not on the timeline: {summaries:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_interventions_are_refused_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let task = running(&app, &project, &agent).await;
    let owner = app.token.clone().expect("the owner");
    // What the process managers do about the running task is done before counting.
    app.caught_up().await;
    let before = app.event_count().await;
    // Each kind has its own fields (a tagged union in the document): a field missing or
    // of another kind is a malformed body (400); a blank reason or message breaks a rule
    // (422 naming it).
    for (body, status, field) in [
        (json!({"kind": "reassign", "reason": "x"}), 400, None),
        (json!({"kind": "quarantine", "reason": "x"}), 400, None),
        (
            json!({"kind": "quarantine", "agent_id": agent.id, "task_id": task, "reason": "x"}),
            400,
            None,
        ),
        (
            json!({"kind": "reassign", "task_id": task, "agent_id": agent.id, "reason": "x"}),
            400,
            None,
        ),
        (
            json!({"kind": "emergency_cancel", "task_id": task, "priority": "LOW", "reason": "x"}),
            400,
            None,
        ),
        (
            json!({"kind": "priority_override", "task_id": task, "reason": "x"}),
            400,
            None,
        ),
        (
            json!({"kind": "steer", "task_id": task, "reason": "x"}),
            400,
            None,
        ),
        (
            json!({"kind": "steer", "task_id": task, "reason": "x", "message": "  "}),
            422,
            Some("message"),
        ),
        (
            json!({"kind": "emergency_cancel", "task_id": task, "reason": "   "}),
            422,
            Some("reason"),
        ),
        (
            json!({"kind": "quarantine", "agent_id": agent.id, "reason": ""}),
            422,
            Some("reason"),
        ),
        (
            json!({"kind": "detonate", "task_id": task, "reason": "x"}),
            400,
            None,
        ),
        (
            json!({"kind": "emergency_cancel", "task_id": task}),
            400,
            None,
        ),
    ] {
        let (got, answer) = as_(&app, &owner, body.clone()).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], field, "{body}: {answer}");
        }
    }
    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "emergency_cancel", "task_id": uuid::Uuid::now_v7(), "reason": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quarantined_in_process_agent_takes_nothing_until_released() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let (mut worker, agent) = one_agent_worker_that_ran_a_task(&app, &project, &directory).await;
    let owner = app.token.clone().expect("the owner");
    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "quarantine", "agent_id": agent, "reason": "audit"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The first ticket is done with its task: the next work is another ticket's.
    let next_ticket = app.ticket(&project, "More work").await;
    let second = app.task(&next_ticket, "Second", json!({})).await;
    app.caught_up().await;
    worker.step().await;
    worker.step().await;
    assert_eq!(app.task_state(&second).await["status"], "pending");

    let (status, body) = as_(
        &app,
        &owner,
        json!({"kind": "release", "agent_id": agent, "reason": "audited"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.caught_up().await;
    worker.step().await;
    app.until_task_status(&second, "completed").await;
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}

/// An in-process agent terminated by a person (or failed by another worker's sweep) takes
/// no more work from its worker: the next task goes to a new agent the worker registers,
/// and the terminated one stays terminated.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_in_process_agent_is_given_up_and_replaced() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let directory = scratch_dir();
    let (mut worker, terminated) =
        one_agent_worker_that_ran_a_task(&app, &project, &directory).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/agents/{terminated}/status"),
            json!({"to": "terminated", "reason": "retired"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let next_ticket = app.ticket(&project, "More work").await;
    let second = app.task(&next_ticket, "Second", json!({})).await;
    app.caught_up().await;
    // The first pass reads the termination; a pass after it may register the new agent.
    worker.step().await;
    worker.step().await;
    app.until_task_status(&second, "completed").await;
    assert_ne!(assignee(&app, &second).await, terminated);
    let (_, agent) = app.get(&format!("/api/v1/agents/{terminated}")).await;
    assert_eq!(agent["state"]["status"], "terminated", "{agent}");
    worker.stop().await;
    let _ = std::fs::remove_dir_all(directory);
}
