//! The spec-driven workflow run by process managers on the event log: an approved plan
//! becomes its tickets and tasks, once, each naming the approval as its cause.

use omoi_store::log::read_global;
use omoi_store::{Cursor, StoredEvent};
use omoi_testing::{spawn_app, TestApp};
use omoi_workflow::execution::{created_id, PlanExecution};
use omoi_workflow::ProcessManager;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

/// A spec of `project` walked to `tasks` with one requirement and a design.
async fn spec_in_tasks(app: &TestApp, project: &str) -> String {
    let spec = app
        .create(
            "/api/v1/specs",
            json!({"project_id": project, "title": "Sign-in"}),
        )
        .await;
    let path = |action: &str| format!("/api/v1/specs/{spec}/{action}");
    app.must(
        &path("requirements"),
        json!({"id": "REQ-AUTH-001", "condition": "WHEN a user signs in",
               "action": "THE SYSTEM SHALL issue a session",
               "acceptance_criteria": ["a token is returned"]}),
        StatusCode::OK,
    )
    .await;
    app.must(&path("approve-requirements"), json!({}), StatusCode::OK)
        .await;
    let (status, body) = app
        .put(&path("design"), json!({"architecture": "one service"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.must(&path("approve-design"), json!({}), StatusCode::OK)
        .await;
    spec
}

/// A spec of `project` with [`two_ticket_plan`] approved, once the process managers have
/// caught up.
async fn executing_spec(app: &TestApp, project: &str) -> String {
    let spec = spec_in_tasks(app, project).await;
    let (status, body) = app
        .put(&format!("/api/v1/specs/{spec}/plan"), two_ticket_plan())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.must(
        &format!("/api/v1/specs/{spec}/approve-plan"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;
    spec
}

/// Two tickets, four tasks; the second ticket's tasks wait for the first ticket's.
fn two_ticket_plan() -> Value {
    json!({"tickets": [
        {"key": "TKT-1", "title": "Login form", "priority": "HIGH",
         "requirement_ids": ["REQ-AUTH-001"],
         "tasks": [
            {"key": "TSK-1", "title": "Form", "task_type": "implement"},
            {"key": "TSK-2", "title": "Form tests", "task_type": "write_tests",
             "depends_on": ["TSK-1"]}]},
        {"key": "TKT-2", "title": "Sessions",
         "tasks": [
            {"key": "TSK-3", "title": "Tokens", "task_type": "implement",
             "depends_on": ["TSK-1"], "required_capabilities": ["rust"]},
            {"key": "TSK-4", "title": "Refresh", "task_type": "implement",
             "depends_on": ["TSK-3", "TSK-2"]}]}]})
}

/// Every event of the log, in the global order.
async fn log(app: &TestApp) -> Vec<StoredEvent> {
    read_global(
        &app.database.pool,
        Cursor::default(),
        10_000,
        &omoi_store::log::Visibility::Everything,
    )
    .await
    .expect("the log")
    .events
}

#[tokio::test(flavor = "multi_thread")]
async fn an_approved_plan_becomes_its_tickets_and_tasks_each_caused_by_the_approval() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let spec = spec_in_tasks(&app, &project).await;
    let (status, body) = app
        .put(&format!("/api/v1/specs/{spec}/plan"), two_ticket_plan())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.must(
        &format!("/api/v1/specs/{spec}/approve-plan"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;

    let events = log(&app).await;
    let approval = events
        .iter()
        .find(|e| e.event_type == "SpecPlanApproved")
        .expect("the approval");
    let caused: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| e.metadata["causation_id"] == approval.reference())
        .collect();
    let created = |kind: &str| caused.iter().filter(|e| e.event_type == kind).count();
    assert_eq!((created("TicketCreated"), created("TaskCreated")), (2, 4));
    for event in &caused {
        assert_eq!(event.sequence, 1, "only creations: {}", event.event_type);
        assert_eq!(event.metadata["actor"], "system:plan_execution");
        assert_eq!(
            event.metadata["correlation_id"], approval.metadata["correlation_id"],
            "the approval's correlation is carried on"
        );
    }

    // The tickets belong to the spec; the tasks to their tickets, waiting for the tasks
    // their keys named, across tickets.
    let ticket = |key: &str| created_id(approval, key).to_string();
    let task = |key: &str| created_id(approval, key).to_string();
    let (status, first) = app
        .get(&format!("/api/v1/tickets/{}", ticket("TKT-1")))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["state"]["spec_id"], spec.as_str());
    assert_eq!(first["state"]["priority"], "HIGH");
    let (_, refresh) = app.get(&format!("/api/v1/tasks/{}", task("TSK-4"))).await;
    assert_eq!(refresh["state"]["ticket_id"], ticket("TKT-2").as_str());
    let mut waits: Vec<String> = refresh["state"]["depends_on"]
        .as_array()
        .expect("dependencies")
        .iter()
        .map(|d| d.as_str().unwrap_or_default().to_string())
        .collect();
    waits.sort();
    let mut expected = vec![task("TSK-3"), task("TSK-2")];
    expected.sort();
    assert_eq!(waits, expected);
    let (_, tokens) = app.get(&format!("/api/v1/tasks/{}", task("TSK-3"))).await;
    assert_eq!(tokens["state"]["required_capabilities"], json!(["rust"]));
}

/// Replaying the approval (a rebuild of the process manager from position zero, or a
/// batch re-run) appends nothing: what the plan creates already exists.
#[tokio::test(flavor = "multi_thread")]
async fn replaying_an_approval_creates_nothing_twice() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    executing_spec(&app, &project).await;
    let before = app.event_count().await;
    let approval = log(&app)
        .await
        .into_iter()
        .find(|e| e.event_type == "SpecPlanApproved")
        .expect("the approval");

    let mut conn = app.database.pool.acquire().await.expect("a connection");
    let mut tx = conn.begin().await.expect("a transaction");
    PlanExecution::react(&mut tx, &approval)
        .await
        .expect("a replay succeeds");
    tx.commit().await.expect("commit");
    assert_eq!(app.event_count().await, before, "a replay appended events");
}

/// A plan approved by a spec of another project never leaks: the created tickets and
/// tasks carry the spec's organization and project.
#[tokio::test(flavor = "multi_thread")]
async fn created_work_belongs_to_the_specs_project() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    executing_spec(&app, &project).await;
    let caused: Vec<StoredEvent> = log(&app)
        .await
        .into_iter()
        .filter(|e| e.metadata.get("causation_id").is_some())
        .collect();
    assert_eq!(caused.len(), 6);
    for event in caused {
        assert_eq!(event.metadata["organization_id"], organization.as_str());
        assert_eq!(event.metadata["project_id"], project.as_str());
    }
}

/// Walks a ticket to `done` by hand.
async fn finish(app: &TestApp, ticket: &str) {
    for to in ["analyzing", "building", "building-done", "testing", "done"] {
        app.must(
            &format!("/api/v1/tickets/{ticket}/transition"),
            json!({"to": to}),
            StatusCode::OK,
        )
        .await;
    }
}

/// The spec completes when the last ticket of its plan is done — not before — and the
/// completion names that ticket's move as its cause.
#[tokio::test(flavor = "multi_thread")]
async fn a_spec_completes_when_every_ticket_of_its_plan_is_done() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let spec = executing_spec(&app, &project).await;
    let approval = log(&app)
        .await
        .into_iter()
        .find(|e| e.event_type == "SpecPlanApproved")
        .expect("the approval");
    let ticket = |key: &str| created_id(&approval, key).to_string();

    finish(&app, &ticket("TKT-1")).await;
    app.caught_up().await;
    let (_, state) = app.get(&format!("/api/v1/specs/{spec}")).await;
    assert_eq!(
        state["state"]["phase"], "executing",
        "one ticket is still open"
    );

    finish(&app, &ticket("TKT-2")).await;
    app.caught_up().await;
    let (_, state) = app.get(&format!("/api/v1/specs/{spec}")).await;
    assert_eq!(state["state"]["phase"], "completed");
    let events = log(&app).await;
    let completed = events
        .iter()
        .find(|e| e.event_type == "SpecCompleted")
        .expect("a completion");
    let last_move = events
        .iter()
        .rev()
        .find(|e| e.aggregate_id == ticket("TKT-2") && e.event_type == "TicketStatusChanged")
        .expect("the last move");
    assert_eq!(completed.metadata["causation_id"], last_move.reference());
    assert_eq!(completed.metadata["actor"], "system:spec_completion");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "SpecCompleted")
            .count(),
        1
    );
}
