//! The process manager `assignment_withdrawal`: an assignment that comes after its agent
//! stopped taking work in the log is taken back, whoever made it; one that came before
//! stands.

use omoi_domain::task::{Task, TaskCommand};
use omoi_store::{Actor, CommandContext};
use omoi_testing::{held_transaction, spawn_app, Agent, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The task's events, in order: each event's type and metadata.
async fn events_of(app: &TestApp, task: &str) -> Vec<(String, Value)> {
    app.task_history(task)
        .await
        .into_iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap_or_default().to_string(),
                e["metadata"].clone(),
            )
        })
        .collect()
}

async fn guardian(app: &TestApp, kind: &str, agent: &Agent) {
    let (status, body) = app
        .post(
            "/api/v1/guardian/interventions",
            json!({"kind": kind, "agent_id": agent.id, "reason": "looping"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// What the in-process worker does with a stale view of its agent: the assignment and the
/// start in one transaction, as the agent, after the agent's quarantine committed.
async fn assign_and_start_as_the_worker(app: &TestApp, task: &str, agent: &Agent) {
    let agent_id: uuid::Uuid = agent.id.parse().expect("an agent id");
    let bus = app.second_bus().await;
    let now = chrono::Utc::now();
    let commands = [
        TaskCommand::AssignTask { agent_id, at: now },
        TaskCommand::StartTask { at: now },
    ];
    let context = CommandContext::new(Actor::Agent(agent_id), "claim");
    bus.execute_all::<Task>(task, &commands, &context, &|_| Ok(()))
        .await
        .expect("assigned and started");
}

/// The worker's race: its agent quarantined an instant before its assignment and start
/// committed. The manager takes the task back (caused by the assignment, as
/// `system:assignment_withdrawal`), the attempt not counted; another agent then claims it,
/// and the quarantined agent's late steps change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_assigned_and_started_after_its_agent_was_quarantined_is_taken_back() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let quarantined = app.register_agent(&organization).await;
    quarantined.heartbeat(&app).await;
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "ready", json!({})).await;
    guardian(&app, "quarantine", &quarantined).await;
    assign_and_start_as_the_worker(&app, &task, &quarantined).await;

    app.caught_up().await;
    let events = events_of(&app, &task).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "TaskCreated",
            "TaskAssigned",
            "TaskStarted",
            "TaskAssignmentWithdrawn"
        ]
    );
    let (_, metadata) = &events[3];
    assert_eq!(metadata["actor"], "system:assignment_withdrawal");
    assert_eq!(
        metadata["causation_id"],
        format!("Task/{task}/2").as_str(),
        "caused by the assignment"
    );
    let state = app.task_state(&task).await;
    assert_eq!(
        (
            &state["status"],
            &state["assigned_agent_id"],
            &state["retry_count"]
        ),
        (&json!("pending"), &Value::Null, &json!(0)),
        "{state}"
    );
    let (status, body) = quarantined
        .post(
            &app,
            &format!("/api/v1/tasks/{task}/complete"),
            json!({"result": {"summary": "done anyway"}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("task_not_assigned")),
        "{body}"
    );

    let other = app.register_agent(&organization).await;
    other.heartbeat(&app).await;
    assert_eq!(other.claim(&app, 5).await, Some(task.clone()));
    other.must(&app, &task, "start", json!({})).await;
    app.caught_up().await;
    assert_eq!(
        events_of(&app, &task).await.len(),
        6,
        "the new assignment stands: nothing more withdrawn"
    );
    assert_eq!(app.task_state(&task).await["status"], "running");
}

/// Work an agent held before its quarantine is its to finish: the manager judges an
/// assignment by the agent's status before it in the log, not by its status when the
/// manager reads it. Here it reads them late, together (the log's readers held back by an
/// open transaction until the quarantine after the assignment committed). Released, the
/// agent is given work again, and that stands too.
#[tokio::test(flavor = "multi_thread")]
async fn work_assigned_before_the_quarantine_or_after_the_release_stands() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    agent.heartbeat(&app).await;
    let ticket = app.ticket(&project, "Work").await;
    let held = app.task(&ticket, "held", json!({})).await;
    let horizon = held_transaction(&app.database.pool).await;
    assign_and_start_as_the_worker(&app, &held, &agent).await;
    guardian(&app, "quarantine", &agent).await;
    horizon.commit().await.expect("the readers let go");
    app.caught_up().await;
    let kinds = |events: Vec<(String, Value)>| -> Vec<String> {
        events.into_iter().map(|(kind, _)| kind).collect()
    };
    assert_eq!(
        kinds(events_of(&app, &held).await),
        ["TaskCreated", "TaskAssigned", "TaskStarted"]
    );

    guardian(&app, "release", &agent).await;
    let later = app.task(&ticket, "after the release", json!({})).await;
    assign_and_start_as_the_worker(&app, &later, &agent).await;
    app.caught_up().await;
    assert_eq!(
        kinds(events_of(&app, &later).await),
        ["TaskCreated", "TaskAssigned", "TaskStarted"]
    );
    for task in [&held, &later] {
        assert_eq!(app.task_state(task).await["status"], "running", "{task}");
    }
    agent
        .must(&app, &held, "complete", json!({"result": {}}))
        .await;
}
