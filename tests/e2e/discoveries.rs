//! Discovery: the agent running a task reports work it found. The new task joins the
//! ticket naming its parent and its discoverer; a blocking one holds the parent's
//! completion until it completes or is cancelled (also after failing for good), released
//! by the `discovery_resolution`
//! process manager on the log.

use omoi_testing::{id_of, spawn_app, Agent, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// What these tests ask of an agent beyond the shared helpers.
trait Discoverer {
    async fn run(&self, app: &TestApp, task: &str);
    async fn complete(&self, app: &TestApp, task: &str) -> (StatusCode, Value);
    async fn discover(&self, app: &TestApp, task: &str, report: Value) -> (StatusCode, Value);
}

impl Discoverer for Agent {
    /// Has the owner give `task` to this agent, and starts it.
    async fn run(&self, app: &TestApp, task: &str) {
        app.must(
            &format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": self.id}),
            StatusCode::OK,
        )
        .await;
        self.must(app, task, "start", json!({})).await;
    }

    async fn complete(&self, app: &TestApp, task: &str) -> (StatusCode, Value) {
        self.post(
            app,
            &format!("/api/v1/tasks/{task}/complete"),
            json!({"result": {"ok": true}}),
        )
        .await
    }

    async fn discover(&self, app: &TestApp, task: &str, report: Value) -> (StatusCode, Value) {
        self.post(app, &format!("/api/v1/tasks/{task}/discoveries"), report)
            .await
    }
}

/// A manual project's ticket with one task running on a fresh agent.
async fn running_task(app: &TestApp) -> (String, String, String, Agent) {
    let (organization, project) = app.organization_and_manual_project().await;
    let ticket = app.ticket(&project, "Checkout").await;
    let task = app.task(&ticket, "Payment form", json!({})).await;
    let agent = app.register_agent(&organization).await;
    agent.run(app, &task).await;
    (organization, ticket, task, agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_discovery_becomes_a_task_of_the_ticket_naming_its_parent_and_discoverer() {
    let app = spawn_app().await;
    let (_, ticket, task, agent) = running_task(&app).await;

    let (status, created) = agent
        .discover(
            &app,
            &task,
            json!({"kind": "bug", "title": "Card number not validated",
                   "description": "the form accepts letters", "priority_boost": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let found = &created["state"];
    assert_eq!(found["ticket_id"], ticket.as_str());
    assert_eq!(found["status"], "pending");
    assert_eq!(found["priority"], "HIGH", "one level above MEDIUM: {found}");
    assert_eq!(found["task_type"], "discovery_bug");
    assert_eq!(
        found["discovery"],
        json!({"parent_task_id": task, "kind": "bug", "discovered_by": agent.id,
               "blocks_parent": false})
    );
    let child = id_of(&created);
    let reported: Vec<Value> = app
        .task_history(&task)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "TaskDiscoveryReported")
        .collect();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(
        reported[0]["payload"]["TaskDiscoveryReported"]["discovered_task_id"],
        child.as_str()
    );

    // Not blocking: the parent completes at once.
    let (status, body) = agent.complete(&app, &task).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The timeline tells it, naming both tasks by title.
    app.caught_up().await;
    let project = found["project_id"].as_str().expect("a project");
    let timeline = app
        .eventually(
            &format!("/api/v1/timeline?project_id={project}&event_type=TaskDiscovered"),
            |page| page["entries"].as_array().is_some_and(|e| !e.is_empty()),
        )
        .await;
    let summary = timeline["entries"][0]["summary"]
        .as_str()
        .expect("a summary")
        .to_string();
    assert!(
        summary.contains("Card number not validated")
            && summary.contains("discovered (bug)")
            && summary.contains("Payment form"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_discovery_holds_its_parent_until_it_completes_or_is_cancelled() {
    // The free plan runs one task at a time: a task waiting for its blocking discoveries
    // holds no place meanwhile, so they may be assigned.
    let app = spawn_app().await;
    let (organization, _, task, agent) = running_task(&app).await;
    let helper = app.register_agent(&organization).await;

    let (status, created) = agent
        .discover(
            &app,
            &task,
            json!({"kind": "dependency", "title": "Upgrade the payment SDK",
                   "blocks_parent": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let first = id_of(&created);
    let (status, refused) = agent.complete(&app, &task).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "discoveries_open");
    assert!(
        refused["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&first)),
        "{refused}"
    );

    // A second blocking discovery fails for good (a permanent error), which releases
    // nothing; a person then gives it up (cancels it), which releases the parent too.
    let (status, created) = agent
        .discover(
            &app,
            &task,
            json!({"kind": "missing_requirement", "title": "Refund rules",
                   "blocks_parent": true, "task_type": "analyze"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let second = id_of(&created);
    assert_eq!(created["state"]["task_type"], "analyze");
    helper.run(&app, &second).await;
    let failed = helper
        .must(
            &app,
            &second,
            "fail",
            json!({"error": "permission denied on the refunds service"}),
        )
        .await;
    assert_eq!(failed["state"]["status"], "permanently_failed", "{failed}");
    app.caught_up().await;
    let (status, still) = agent.complete(&app, &task).await;
    assert_eq!(status, StatusCode::CONFLICT, "{still}");
    let cancelled = app
        .must(
            &format!("/api/v1/tasks/{second}/cancel"),
            json!({"reason": "out of scope"}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(cancelled["state"]["status"], "cancelled", "{cancelled}");

    // The first is run by another agent to completion.
    helper.run(&app, &first).await;
    let (status, body) = helper.complete(&app, &first).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let parent = app
        .eventually(&format!("/api/v1/tasks/{task}"), |body| {
            body["state"]["open_discoveries"] == json!([])
        })
        .await;
    assert_eq!(parent["state"]["status"], "running");
    let resolved: Vec<Value> = app
        .task_history(&task)
        .await
        .into_iter()
        .filter(|e| e["event_type"] == "TaskDiscoveryResolved")
        .collect();
    assert_eq!(resolved.len(), 2, "one release per discovery: {resolved:?}");
    for release in &resolved {
        assert_eq!(release["metadata"]["actor"], "system:discovery_resolution");
        let cause = release["metadata"]["causation_id"]
            .as_str()
            .expect("a cause");
        assert!(
            cause.starts_with(&format!("Task/{first}/"))
                || cause.starts_with(&format!("Task/{second}/")),
            "{release}"
        );
    }
    let (status, body) = agent.complete(&app, &task).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_agent_running_the_task_reports_and_bad_reports_write_nothing() {
    let app = spawn_app().await;
    let (organization, ticket, task, agent) = running_task(&app).await;
    let other = app.register_agent(&organization).await;
    let report = json!({"kind": "follow_up", "title": "Receipts"});
    let before = app.event_count().await;

    let (status, body) = other.discover(&app, &task, report.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "held_by_another_agent", "{body}");
    assert_eq!(app.event_count().await, before, "nothing created");

    let waiting = app.task(&ticket, "Not started", json!({})).await;
    let before_waiting = app.event_count().await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{waiting}/discoveries"),
            report.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "illegal_transition");
    assert_eq!(app.event_count().await, before_waiting);

    for (bad, expected) in [
        (
            json!({"kind": "rumour", "title": "x"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"kind": "bug", "title": "   "}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"kind": "bug"}), StatusCode::BAD_REQUEST),
        (
            json!({"kind": "bug", "title": "x", "colour": "red"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body) = agent.discover(&app, &task, bad.clone()).await;
        assert_eq!(status, expected, "{bad}: {body}");
    }
    let (status, body) = agent
        .discover(&app, "00000000-0000-0000-0000-000000000000", report)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Only the waiting task's creation was written in between.
    assert_eq!(app.event_count().await, before_waiting);
    assert_eq!(before_waiting - before, 1);
}
