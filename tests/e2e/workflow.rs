//! The spec-driven workflow run by process managers on the event log: an approved plan
//! becomes its tickets and tasks, once, each naming the approval as its cause.

use omoi_store::log::read_global;
use omoi_store::{Cursor, StoredEvent};
use omoi_testing::{held_transaction, spawn_app, TestApp};
use omoi_workflow::execution::{created_id, PlanExecution};
use omoi_workflow::ProcessManager;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

/// A spec of `project` with [`two_ticket_plan`] approved, once the process managers have
/// caught up.
async fn executing_spec(app: &TestApp, project: &str) -> String {
    executing_spec_with(app, project, two_ticket_plan()).await
}

/// A spec of `project` in the `tasks` phase with `plan` set (not approved).
async fn planned_spec(app: &TestApp, project: &str, plan: Value) -> String {
    let spec = app.spec_in_tasks(project, "Sign-in").await;
    let (status, body) = app.put(&format!("/api/v1/specs/{spec}/plan"), plan).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    spec
}

/// [`executing_spec`] with the given plan.
async fn executing_spec_with(app: &TestApp, project: &str, plan: Value) -> String {
    let spec = planned_spec(app, project, plan).await;
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
    let spec = planned_spec(&app, &project, two_ticket_plan()).await;
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
        .filter(|e| e.metadata.to_value()["causation_id"] == approval.reference())
        .collect();
    let created = |kind: &str| caused.iter().filter(|e| e.event_type == kind).count();
    assert_eq!((created("TicketCreated"), created("TaskCreated")), (2, 4));
    assert_eq!((created("TicketPlanned"), created("TaskPlanned")), (2, 4));
    for event in &caused {
        // Only creations, each with its key in the same command.
        let expected = if event.event_type.ends_with("Planned") {
            2
        } else {
            1
        };
        assert_eq!(event.sequence, expected, "{}", event.event_type);
        assert_eq!(event.metadata.to_value()["actor"], "system:plan_execution");
        assert_eq!(
            event.metadata.to_value()["correlation_id"],
            approval.metadata.to_value()["correlation_id"],
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
    assert_eq!(first["state"]["plan_key"], "TKT-1");
    let (_, refresh) = app.get(&format!("/api/v1/tasks/{}", task("TSK-4"))).await;
    assert_eq!(refresh["state"]["ticket_id"], ticket("TKT-2").as_str());
    assert_eq!(refresh["state"]["plan_key"], "TSK-4");
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
    let approval = the_approval(&app).await;

    let mut conn = app.database.pool.acquire().await.expect("a connection");
    let mut tx = conn.begin().await.expect("a transaction");
    PlanExecution
        .react_all(&mut tx, "unused", vec![&approval])
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
        .filter(|e| e.metadata.causation_id().is_some())
        .collect();
    // 2 tickets and 4 tasks, each created with its plan key.
    assert_eq!(caused.len(), 2 * 6);
    for event in caused {
        assert_eq!(
            event.metadata.to_value()["organization_id"],
            organization.as_str()
        );
        assert_eq!(event.metadata.to_value()["project_id"], project.as_str());
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
/// completion (and the workflow's finish in billing) names that ticket's move as its cause.
#[tokio::test(flavor = "multi_thread")]
async fn a_spec_completes_when_every_ticket_of_its_plan_is_done() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let spec = executing_spec(&app, &project).await;
    let approval = the_approval(&app).await;
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
    assert_eq!(
        completed.metadata.to_value()["causation_id"],
        last_move.reference()
    );
    assert_eq!(
        completed.metadata.to_value()["actor"],
        "system:spec_completion"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "SpecCompleted")
            .count(),
        1
    );

    // Its workflow is finished in billing, by the same cause; archiving the completed spec
    // afterwards gives nothing back.
    let finished: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| e.event_type == "WorkflowFinished")
        .collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(
        finished[0].metadata.to_value()["causation_id"],
        last_move.reference()
    );
    assert_eq!(
        finished[0].payload.to_value()["WorkflowFinished"]["spec_id"],
        spec.as_str()
    );
    app.must(
        &format!("/api/v1/specs/{spec}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;
    let refunds = log(&app)
        .await
        .into_iter()
        .filter(|e| e.event_type == "WorkflowCancelled")
        .count();
    assert_eq!(refunds, 0, "a finished workflow is not given back");
}

/// A worker agent of `organization`.
async fn worker(app: &TestApp, organization: &str) -> String {
    app.create(
        "/api/v1/agents/register",
        json!({"organization_id": organization, "agent_type": "worker",
               "capabilities": ["rust"], "capacity": 4}),
    )
    .await
}

/// Gives task `id` to agent `agent`.
async fn assign(app: &TestApp, agent: &str, id: &str) {
    app.must(
        &format!("/api/v1/tasks/{id}/assign"),
        json!({"agent_id": agent}),
        StatusCode::OK,
    )
    .await;
}

/// The log's plan approval (the one spec of the test).
async fn the_approval(app: &TestApp) -> StoredEvent {
    log(app)
        .await
        .into_iter()
        .find(|e| e.event_type == "SpecPlanApproved")
        .expect("the approval")
}

/// Runs task `id` to completion as agent `agent`: assign, start, complete.
async fn run_task(app: &TestApp, agent: &str, id: &str) {
    let path = |action: &str| format!("/api/v1/tasks/{id}/{action}");
    assign(app, agent, id).await;
    app.must(&path("start"), json!({}), StatusCode::OK).await;
    app.must(
        &path("complete"),
        json!({"result": {"ok": true}}),
        StatusCode::OK,
    )
    .await;
}

async fn ticket_status(app: &TestApp, ticket: &str) -> Value {
    app.caught_up().await;
    let (_, state) = app.get(&format!("/api/v1/tickets/{ticket}")).await;
    state["state"]["status"].clone()
}

/// The whole loop: a plan approved, its tasks run by an agent, every ticket walks its
/// statuses in order by itself and the spec completes.
#[tokio::test(flavor = "multi_thread")]
async fn tasks_move_their_tickets_and_the_last_one_completes_the_spec() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let spec = executing_spec(&app, &project).await;
    let approval = the_approval(&app).await;
    let id = |key: &str| created_id(&approval, key).to_string();
    let agent = worker(&app, &organization).await;

    // Assigning the first task puts its ticket to work.
    assign(&app, &agent, &id("TSK-1")).await;
    assert_eq!(ticket_status(&app, &id("TKT-1")).await, "building");
    assert_eq!(ticket_status(&app, &id("TKT-2")).await, "backlog");
    for action in ["start", "complete"] {
        app.must(
            &format!("/api/v1/tasks/{}/{action}", id("TSK-1")),
            json!({}),
            StatusCode::OK,
        )
        .await;
    }
    assert_eq!(
        ticket_status(&app, &id("TKT-1")).await,
        "building",
        "TSK-2 is open"
    );
    run_task(&app, &agent, &id("TSK-2")).await;
    assert_eq!(ticket_status(&app, &id("TKT-1")).await, "done");
    run_task(&app, &agent, &id("TSK-3")).await;
    run_task(&app, &agent, &id("TSK-4")).await;
    assert_eq!(ticket_status(&app, &id("TKT-2")).await, "done");
    let (_, state) = app.get(&format!("/api/v1/specs/{spec}")).await;
    assert_eq!(state["state"]["phase"], "completed");

    // Each ticket walked every status in order, each move caused by a task's event.
    let moves: Vec<(String, String)> = log(&app)
        .await
        .into_iter()
        .filter(|e| e.aggregate_id == id("TKT-1") && e.event_type == "TicketStatusChanged")
        .map(|e| {
            (
                e.payload.to_value()["TicketStatusChanged"]["to"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                e.metadata.to_value()["causation_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect();
    let statuses: Vec<&str> = moves.iter().map(|(to, _)| to.as_str()).collect();
    assert_eq!(
        statuses,
        ["analyzing", "building", "building-done", "testing", "done"]
    );
    assert!(
        moves.iter().all(|(_, cause)| cause.starts_with("Task/")),
        "{moves:?}"
    );
}

/// A task that fails for good blocks its ticket with the reason, however long its error; a
/// ticket a person moved ahead by hand is not moved back.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_failing_for_good_blocks_its_ticket_and_hand_moves_stand() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Payments").await;
    let doomed = app.task(&ticket, "Charge", json!({"max_retries": 0})).await;
    let agent = worker(&app, &organization).await;
    let path = |action: &str| format!("/api/v1/tasks/{doomed}/{action}");
    app.must(&path("assign"), json!({"agent_id": agent}), StatusCode::OK)
        .await;
    app.must(&path("start"), json!({}), StatusCode::OK).await;
    // An error of the whole limit (20,000 characters): the note naming it is clipped to
    // the limit a note has, not refused (which left the ticket unblocked).
    let error = format!("card declined {}", "x".repeat(20_000 - 14));
    app.must(&path("fail"), json!({"error": error}), StatusCode::OK)
        .await;
    app.caught_up().await;
    let (_, state) = app.get(&format!("/api/v1/tickets/{ticket}")).await;
    assert_eq!(
        state["state"]["blocked"]["reason"], "failing_checks",
        "{state}"
    );
    assert!(
        state["state"]["blocked"]["note"]
            .as_str()
            .is_some_and(|note| note.contains(&doomed) && note.contains("card declined")),
        "{state}"
    );

    // Moved ahead by hand, then a task is assigned: the ticket stays where it was put.
    let other = app.ticket(&project, "Refunds").await;
    for to in ["analyzing", "building", "building-done", "testing"] {
        app.must(
            &format!("/api/v1/tickets/{other}/transition"),
            json!({"to": to}),
            StatusCode::OK,
        )
        .await;
    }
    let late = app.task(&other, "Refund", json!({})).await;
    assign(&app, &agent, &late).await;
    assert_eq!(ticket_status(&app, &other).await, "testing");
}

/// With the project's `auto_advance` off, tickets move only by hand.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_without_auto_advance_leaves_its_tickets_where_people_put_them() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_manual_project().await;
    let ticket = app.ticket(&project, "Exports").await;
    let task = app.task(&ticket, "CSV", json!({})).await;
    let agent = worker(&app, &organization).await;
    run_task(&app, &agent, &task).await;
    assert_eq!(ticket_status(&app, &ticket).await, "backlog");
    // Turned back on, the next task's assignment moves it.
    let (status, body) = app
        .patch(
            &format!("/api/v1/projects/{project}/settings"),
            json!({"auto_advance": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"]["settings"]["auto_advance"], true);
    let next = app.task(&ticket, "JSON", json!({})).await;
    assign(&app, &agent, &next).await;
    assert_eq!(ticket_status(&app, &ticket).await, "building");
}

/// Archiving an executing spec no agent worked on yet gives its workflow back; once
/// agents worked, archiving it stops the work but the workflow stays counted (else
/// archiving after the work was done would make every workflow free).
#[tokio::test(flavor = "multi_thread")]
async fn archiving_an_executing_spec_gives_its_workflow_back_only_before_any_work() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let account = format!("/api/v1/billing/account?organization_id={organization}");
    let used = || {
        let (app, account) = (&app, &account);
        async move { app.get(account).await.1["usage"]["workflows_used"].clone() }
    };
    let untouched = executing_spec(&app, &project).await;
    assert_eq!(used().await, 1);
    app.must(
        &format!("/api/v1/specs/{untouched}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;
    assert_eq!(used().await, 0, "nothing was done: given back");

    // Work a Guardian then took away (the task back to pending, its start cleared) was
    // still work.
    let taken = executing_spec(&app, &project).await;
    assert_eq!(used().await, 1);
    let approval = log(&app)
        .await
        .into_iter()
        .filter(|e| e.event_type == "SpecPlanApproved")
        .last()
        .expect("the second approval");
    let task = created_id(&approval, "TSK-1").to_string();
    let agent = worker(&app, &organization).await;
    assign(&app, &agent, &task).await;
    app.must(
        &format!("/api/v1/tasks/{task}/start"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.must(
        "/api/v1/guardian/interventions",
        json!({"kind": "reassign", "task_id": task, "reason": "stuck"}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(app.task_state(&task).await["status"], "pending");
    app.must(
        &format!("/api/v1/specs/{taken}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;
    assert_eq!(used().await, 1, "work was done, then taken away: counted");
}

/// Whether agents worked on an archived spec is decided as of its archival in the log's
/// order, not as the manager finds the tasks when it reads it: a task started after the
/// archival (still open until the manager cancels it) does not keep the workflow counted.
/// Here the manager reads both late, together (the log's readers held back by an open
/// transaction until the start after the archival committed).
#[tokio::test(flavor = "multi_thread")]
async fn work_started_after_an_archival_does_not_keep_its_workflow_counted() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let account = format!("/api/v1/billing/account?organization_id={organization}");
    let spec = executing_spec(&app, &project).await;
    assert_eq!(app.get(&account).await.1["usage"]["workflows_used"], 1);
    let task = created_id(&the_approval(&app).await, "TSK-1").to_string();
    let agent = worker(&app, &organization).await;
    app.caught_up().await;

    let horizon = held_transaction(&app.database.pool).await;
    app.must(
        &format!("/api/v1/specs/{spec}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    assign(&app, &agent, &task).await;
    app.must(
        &format!("/api/v1/tasks/{task}/start"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    horizon.commit().await.expect("the readers let go");
    app.caught_up().await;

    assert_eq!(
        app.get(&account).await.1["usage"]["workflows_used"],
        0,
        "nothing was done before the archival: given back"
    );
    assert_eq!(app.task_state(&task).await["status"], "cancelled");
}

/// `plan_execution` gives a plan's `implement` tasks validation by the project's
/// `validation_required` as it was at the approval in the log's order, not as the manager
/// finds it when it reads the approval: here it reads late (the log's readers held back by
/// an open transaction), after the setting was turned off.
#[tokio::test(flavor = "multi_thread")]
async fn a_plans_validation_follows_the_setting_at_its_approval_however_late_it_is_read() {
    let app = spawn_app().await;
    let (_, project) = app
        .organization_and_project_with(
            json!({"auto_spawn_tasks": false, "validation_required": true}),
        )
        .await;
    let spec = planned_spec(&app, &project, two_ticket_plan()).await;
    app.caught_up().await;

    let horizon = held_transaction(&app.database.pool).await;
    app.must(
        &format!("/api/v1/specs/{spec}/approve-plan"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.project_settings(&project, json!({"validation_required": false}))
        .await;
    horizon.commit().await.expect("the readers let go");
    app.caught_up().await;

    let approval = the_approval(&app).await;
    let id = |key: &str| created_id(&approval, key).to_string();
    let form = app.task_state(&id("TSK-1")).await;
    assert!(
        form["validation"].is_object(),
        "approved while validation was required: {form}"
    );
    let tests = app.task_state(&id("TSK-2")).await;
    assert!(
        tests["validation"].is_null(),
        "not an implement task: {tests}"
    );
}

/// Archiving an executing spec stops its work; work done keeps its workflow counted.
#[tokio::test(flavor = "multi_thread")]
async fn archiving_an_executing_spec_cancels_its_open_tasks_and_keeps_worked_workflows() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let spec = executing_spec(&app, &project).await;
    let approval = the_approval(&app).await;
    let id = |key: &str| created_id(&approval, key).to_string();
    let account = format!("/api/v1/billing/account?organization_id={organization}");
    let used = || {
        let (app, account) = (&app, &account);
        async move { app.get(account).await.1["usage"]["workflows_used"].clone() }
    };
    assert_eq!(used().await, 1);
    let agent = worker(&app, &organization).await;
    run_task(&app, &agent, &id("TSK-1")).await;
    assert!(
        spec_events_read_for(&app, &id("TKT-1"), &[])
            .await
            .is_empty(),
        "no archival before archiving"
    );

    app.must(
        &format!("/api/v1/specs/{spec}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;
    let status = |key: &'static str| {
        let app = &app;
        let path = format!("/api/v1/tasks/{}", id(key));
        async move { app.get(&path).await.1["state"]["status"].clone() }
    };
    assert_eq!(
        status("TSK-1").await,
        "completed",
        "finished work stays finished"
    );
    for key in ["TSK-2", "TSK-3", "TSK-4"] {
        assert_eq!(status(key).await, "cancelled", "{key}");
    }
    assert_eq!(used().await, 1, "work was done: the workflow stays counted");
    // Its tickets stay where they were: cancelled work finishes nothing.
    let (_, ticket) = app.get(&format!("/api/v1/tickets/{}", id("TKT-1"))).await;
    assert_eq!(ticket["state"]["status"], "building", "{ticket}");

    // What `ticket_progress` reads to know it: the spec's archival alone, named by the
    // ticket's creation — and a spec also asked for whole comes whole, once.
    let archival = spec_events_read_for(&app, &id("TKT-1"), &[]).await;
    assert_eq!(archival, [(spec.clone(), "SpecArchived".to_string())]);
    let whole = spec_events_read_for(&app, &id("TKT-1"), std::slice::from_ref(&spec)).await;
    let history: Vec<(String, String)> = log(&app)
        .await
        .into_iter()
        .filter(|e| e.aggregate_type == "Spec" && e.aggregate_id == spec)
        .map(|e| (e.aggregate_id, e.event_type))
        .collect();
    assert!(history.len() > 1, "{history:?}");
    assert_eq!(whole, history);
}

/// An archived spec takes no more work: archiving it cancels every open task on a ticket
/// naming it — its plan's, one added by hand, one an agent discovered, one on a ticket a
/// person made naming it — and work on any of them keeps its workflow counted; its
/// tickets then take no new task, and no new ticket names it.
#[tokio::test(flavor = "multi_thread")]
async fn archiving_a_spec_cancels_every_open_task_on_its_tickets_and_takes_no_new_work() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let spec = executing_spec(&app, &project).await;
    let approval = the_approval(&app).await;
    let id = |key: &str| created_id(&approval, key).to_string();
    let account = format!("/api/v1/billing/account?organization_id={organization}");
    // Work on a task added by hand, and a discovery of that work: none of the plan's own.
    // And a ticket a person made naming the spec, with its work.
    let follow_up = app
        .create(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Follow-up", "spec_id": spec}),
        )
        .await;
    let follow_up_task = app.task(&follow_up, "Docs", json!({})).await;
    let by_hand = app.task(&id("TKT-1"), "Hand-made", json!({})).await;
    let agent = worker(&app, &organization).await;
    assign(&app, &agent, &by_hand).await;
    app.must(
        &format!("/api/v1/tasks/{by_hand}/start"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    let discovered = app
        .must(
            &format!("/api/v1/tasks/{by_hand}/discoveries"),
            json!({"kind": "bug", "title": "Found while at it"}),
            StatusCode::CREATED,
        )
        .await["id"]
        .as_str()
        .expect("the discovered task's id")
        .to_string();

    app.must(
        &format!("/api/v1/specs/{spec}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;
    for (task, what) in [
        (by_hand.as_str(), "added by hand, running"),
        (discovered.as_str(), "discovered"),
        (
            follow_up_task.as_str(),
            "on a hand-made ticket naming the spec",
        ),
    ]
    .into_iter()
    .chain(["TSK-1", "TSK-2", "TSK-3", "TSK-4"].map(|key| (key, "the plan's")))
    {
        let task = match task.starts_with("TSK-") {
            true => id(task),
            false => task.to_string(),
        };
        let state = app.task_state(&task).await;
        assert_eq!(state["status"], "cancelled", "{what}: {state}");
    }
    assert_eq!(
        app.get(&account).await.1["usage"]["workflows_used"],
        1,
        "an agent worked on the spec's ticket: the workflow stays counted"
    );

    let (status, refused) = app
        .post(
            "/api/v1/tasks",
            json!({"ticket_id": id("TKT-2"), "title": "More", "task_type": "implement"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "spec_archived", "{refused}");
    let (status, refused) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Later", "spec_id": spec}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "spec_archived", "{refused}");
}

/// A late task on `ticket` of an archived spec: how it is created, and by whom.
struct LateTask {
    id: uuid::Uuid,
    ticket: &'static str,
    plan_key: Option<&'static str>,
    /// The context of its creation, from the spec's plan approval.
    context: fn(&StoredEvent) -> omoi_store::CommandContext,
}

/// Archives an executing spec and has the archival handled, then appends `late` as its
/// creator would (past admission, which had found the spec executing), and checks that
/// `spec_archival` cancels it as its creation passes, naming the creation as the cause.
async fn a_task_created_after_the_archival_is_cancelled(
    late: impl FnOnce(&StoredEvent) -> LateTask,
) {
    use omoi_domain::common::{Phase, Priority};
    use omoi_domain::task::{Task, TaskCommand};

    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let spec = executing_spec(&app, &project).await;
    let approval = the_approval(&app).await;
    app.must(
        &format!("/api/v1/specs/{spec}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;

    let late = late(&approval);
    let create = TaskCommand::CreateTask {
        task_id: late.id,
        organization_id: organization.parse().expect("an id"),
        project_id: project.parse().expect("an id"),
        ticket_id: created_id(&approval, late.ticket),
        title: "Came late".into(),
        description: String::new(),
        task_type: "implement".into(),
        phase: Phase::default(),
        priority: Priority::default(),
        depends_on: Vec::new(),
        required_capabilities: Vec::new(),
        max_retries: None,
        timeout_seconds: None,
        discovery: None,
        validation: None,
        validates: None,
        plan_key: late.plan_key.map(str::to_string),
        at: chrono::Utc::now(),
    };
    let id = late.id.to_string();
    app.second_bus()
        .await
        .execute::<Task>(&id, create, &(late.context)(&approval))
        .await
        .expect("created");
    app.caught_up().await;
    let state = app.task_state(&id).await;
    assert_eq!(state["status"], "cancelled", "{state}");
    let cancellation = log(&app)
        .await
        .into_iter()
        .find(|e| e.aggregate_id == id && e.event_type == "TaskCancelled")
        .expect("the cancellation");
    assert_eq!(
        cancellation.metadata.actor(),
        Some("system:spec_archival"),
        "{cancellation:?}"
    );
    assert_eq!(
        cancellation.metadata.causation_id(),
        Some(format!("Task/{id}/1").as_str())
    );
}

/// A task admitted on a spec's ticket just before the spec was archived, and created
/// after the archival was handled (here appended as a person's request would, past the
/// admission that had found the spec executing), is cancelled as its creation passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_made_task_created_after_its_specs_archival_is_cancelled() {
    a_task_created_after_the_archival_is_cancelled(|_| LateTask {
        id: uuid::Uuid::now_v7(),
        ticket: "TKT-2",
        plan_key: None,
        context: |_| {
            let person = omoi_store::Actor::User(uuid::Uuid::now_v7());
            omoi_store::CommandContext::new(person, "a person's request")
        },
    })
    .await;
}

/// A plan's task created after its spec's archival was handled is cancelled when its
/// creation passes: `plan_execution` read the approval before the archival committed and
/// `spec_archival`, a build of its own, handled the archival first, finding no task to
/// cancel. The late creation is appended here as `plan_execution` would have.
#[tokio::test(flavor = "multi_thread")]
async fn a_plans_task_created_after_its_specs_archival_was_handled_is_cancelled() {
    a_task_created_after_the_archival_is_cancelled(|approval| LateTask {
        id: created_id(approval, "TSK-LATE"),
        ticket: "TKT-1",
        plan_key: Some("TSK-LATE"),
        context: |approval| {
            let plan_execution = omoi_store::Actor::System("plan_execution");
            omoi_store::CommandContext::caused_by(plan_execution, approval)
        },
    })
    .await;
}

/// A spec archived before `plan_execution` read its plan's approval (the two process
/// managers are builds of their own: `spec_archival` may handle the archival first, and
/// find nothing to cancel) gets no tickets or tasks at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_approved_then_archived_before_it_ran_creates_nothing() {
    use omoi_domain::spec::{Spec, SpecCommand};
    use omoi_store::bus::RetryPolicy;
    use omoi_store::{Actor, CommandBus, CommandContext};

    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let spec = planned_spec(&app, &project, two_ticket_plan()).await;
    // Approved and archived in one transaction: every process manager reads the approval
    // with the archival already in the spec's history.
    let bus = CommandBus::new(app.database.pool.clone(), RetryPolicy::default());
    let context = CommandContext::new(Actor::System("test"), "approved-then-archived");
    let now = chrono::Utc::now();
    let commands = [
        SpecCommand::ApprovePlan { at: now },
        SpecCommand::ArchiveSpec { at: now },
    ];
    bus.execute_all::<Spec>(&spec, &commands, &context, &|_| Ok(()))
        .await
        .expect("approved, then archived");
    app.caught_up().await;
    let created: i64 = sqlx::query_scalar(
        "select count(*) from events
          where event_type in ('TicketCreated', 'TaskCreated')
            and metadata->>'actor' = 'system:plan_execution'",
    )
    .fetch_one(&app.database.pool)
    .await
    .expect("counted");
    assert_eq!(created, 0, "nothing created for an archived spec");
    let (status, tickets) = app
        .get(&format!(
            "/api/v1/tickets?project_id={project}&spec_id={spec}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{tickets}");
    assert_eq!(tickets["items"], json!([]), "{tickets}");
}

/// The spec events `histories_of` returns for `wanted` specs and, named by `ticket`'s
/// creation, its spec's archival only.
async fn spec_events_read_for(
    app: &TestApp,
    ticket: &str,
    wanted: &[String],
) -> Vec<(String, String)> {
    let tickets = [ticket.to_string()];
    let archival = omoi_store::log::NamedBy {
        named_type: "Spec",
        referrer_type: "Ticket",
        referrers: &tickets,
        path: &["TicketCreated", "spec_id"],
        only: Some("SpecArchived"),
    };
    omoi_store::log::histories_of(&app.database.pool, &[("Spec", wanted)], Some(archival))
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.aggregate_type == "Spec")
        .map(|e| (e.aggregate_id, e.event_type))
        .collect()
}

/// The whole loop with in-process agents, as `omoi dev` runs it: a spec's plan approved,
/// nothing else done by hand — the worker runs every task as its dependencies allow, the
/// tickets walk their statuses in order, and the spec completes.
#[tokio::test(flavor = "multi_thread")]
async fn an_approved_plan_runs_to_a_completed_spec_with_in_process_agents() {
    use omoi_orchestrator::{Work, Worker, WorkerConfig};
    let app = spawn_app().await;
    // Validation on, as by default: every `implement` task is judged by another agent.
    let (_, project) = app
        .organization_and_project_with(json!({"auto_spawn_tasks": false}))
        .await;
    let mut plan = two_ticket_plan();
    // In-process agents declare no capabilities.
    if let Some(task) = plan["tickets"][1]["tasks"][0].as_object_mut() {
        task.remove("required_capabilities");
    }
    let directory = std::env::temp_dir().join(format!("omoi-loop-{}", uuid::Uuid::now_v7()));
    let worker = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Command("true".into()),
            poll_interval_ms: 100,
            check_interval_ms: 200,
            work_dir: directory.join("work"),
            ..WorkerConfig::default()
        },
    );
    let spec = executing_spec_with(&app, &project, plan).await;
    app.eventually(&format!("/api/v1/specs/{spec}"), |s| {
        s["state"]["phase"] == "completed"
    })
    .await;
    worker.stop().await;
    let _ = std::fs::remove_dir_all(&directory);

    let approval = the_approval(&app).await;
    let events = log(&app).await;
    for key in ["TKT-1", "TKT-2"] {
        let ticket = created_id(&approval, key).to_string();
        let moves: Vec<String> = events
            .iter()
            .filter(|e| e.aggregate_id == ticket && e.event_type == "TicketStatusChanged")
            .filter_map(|e| {
                let to = &e.payload.to_value()["TicketStatusChanged"]["to"];
                to.as_str().map(str::to_string)
            })
            .collect();
        assert_eq!(
            moves,
            ["analyzing", "building", "building-done", "testing", "done"],
            "{key}"
        );
    }
    // Every task ran once, after the tasks it waited for; each of the three `implement`
    // tasks completed by its validation's verdict.
    let completed: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "TaskCompleted")
        .map(|e| e.aggregate_id.clone())
        .collect();
    assert_eq!(completed.len(), 4 + 3, "{completed:?}");
    let validated = events
        .iter()
        .filter(|e| e.event_type == "TaskValidationPassed")
        .count();
    assert_eq!(validated, 3);
    let at = |key: &str| {
        let id = created_id(&approval, key).to_string();
        completed.iter().position(|c| *c == id).expect("completed")
    };
    assert!(at("TSK-1") < at("TSK-2") && at("TSK-1") < at("TSK-3"));
    assert!(at("TSK-3") < at("TSK-4") && at("TSK-2") < at("TSK-4"));
}

/// The export of a spec through its run: criteria ticked as the tasks serving their
/// requirement complete, the same document as of an earlier position, and Markdown,
/// YAML and JSON of the completed spec.
#[tokio::test(flavor = "multi_thread")]
async fn a_specs_export_ticks_criteria_as_their_tasks_complete() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_manual_project().await;
    let spec = app
        .create(
            "/api/v1/specs",
            json!({"project_id": project, "title": "Sign-in",
                   "description": "People sign in | out."}),
        )
        .await;
    let path = |action: &str| format!("/api/v1/specs/{spec}/{action}");
    for (id, condition, action, criterion) in [
        (
            "REQ-AUTH-001",
            "WHEN a user signs in",
            "THE SYSTEM SHALL issue a session",
            "a token is returned",
        ),
        (
            "REQ-AUTH-002",
            "a session expires",
            "refresh it once",
            "a refresh works once",
        ),
    ] {
        app.must(
            &path("requirements"),
            json!({"id": id, "condition": condition, "action": action,
                   "acceptance_criteria": [criterion]}),
            StatusCode::OK,
        )
        .await;
    }
    app.must(&path("approve-requirements"), json!({}), StatusCode::OK)
        .await;
    let (status, body) = app
        .put(
            &path("design"),
            json!({"architecture": "one token service"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.must(&path("approve-design"), json!({}), StatusCode::OK)
        .await;
    let mut plan = two_ticket_plan();
    plan["tickets"][1]["tasks"][0]["requirement_ids"] = json!(["REQ-AUTH-002"]);
    plan["tickets"][1]["tasks"][0]["estimate"] = json!("XL");
    let (status, body) = app.put(&path("plan"), plan).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let markdown = |body: Value| body.as_str().expect("a Markdown text").to_string();
    let (status, before) = app.get(&path("export")).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    let before = markdown(before);
    assert!(before.contains("# Sign-in"), "{before}");
    assert!(before.contains("**WHEN** a user signs in **THE SYSTEM SHALL** issue a session"));
    assert!(before.contains("**WHEN** a session expires **THE SYSTEM SHALL** refresh it once"));
    assert!(before.contains("- [ ] a token is returned"), "{before}");
    assert!(before.contains("_Not approved yet._"), "{before}");

    app.must(&path("approve-plan"), json!({}), StatusCode::OK)
        .await;
    app.caught_up().await;
    let approval = the_approval(&app).await;
    let id = |key: &str| created_id(&approval, key).to_string();
    let agent = worker(&app, &organization).await;
    run_task(&app, &agent, &id("TSK-1")).await;
    let half_way: i64 = sqlx::query_scalar("select max(global_position) from events")
        .fetch_one(&app.database.pool)
        .await
        .expect("a position");
    let (_, partial) = app.get(&path("export")).await;
    assert!(
        markdown(partial).contains("- [ ] a token is returned"),
        "TSK-2 serves it too"
    );

    run_task(&app, &agent, &id("TSK-2")).await;
    let (_, served) = app.get(&path("export")).await;
    let served = markdown(served);
    assert!(served.contains("- [x] a token is returned"), "{served}");
    assert!(served.contains("- [ ] a refresh works once"), "{served}");
    assert!(served.contains("Served by: TSK-3"), "{served}");

    // As of the position before TSK-2 ran, the criterion is open again.
    let (status, earlier) = app
        .get(&format!("/api/v1/specs/{spec}/export?as_of={half_way}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{earlier}");
    assert!(markdown(earlier).contains("- [ ] a token is returned"));
    let (status, body) = app
        .get(&format!("/api/v1/specs/{spec}/export?as_of=1"))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "before the spec existed: {body}"
    );

    run_task(&app, &agent, &id("TSK-3")).await;
    run_task(&app, &agent, &id("TSK-4")).await;
    for ticket in ["TKT-1", "TKT-2"] {
        finish(&app, &id(ticket)).await;
    }
    app.caught_up().await;
    app.eventually(&format!("/api/v1/specs/{spec}"), |s| {
        s["state"]["phase"] == "completed"
    })
    .await;

    let (_, done) = app.get(&path("export?format=markdown")).await;
    let done = markdown(done);
    assert!(done.contains("phase **completed**"), "{done}");
    assert!(done.contains("- [x] a refresh works once"), "{done}");
    assert!(
        done.contains("| TSK-3 | Tokens | implement | TSK-1 | XL | completed |"),
        "{done}"
    );
    assert!(done.contains("Result of TSK-4: `{\"ok\":true}`"), "{done}");
    assert!(done.contains("People sign in | out."), "{done}");

    let response = app
        .client
        .get(app.url(&path("export?format=yaml")))
        .bearer_auth(app.token.as_deref().expect("a token"))
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        response.headers()["content-type"],
        "application/yaml; charset=utf-8"
    );
    let yaml = response.text().await.expect("a text");
    let front = format!("---\nid: \"{spec}\"\ntitle: \"Sign-in\"\nphase: \"completed\"\nversion: ");
    assert!(yaml.starts_with(&front), "{yaml}");
    assert!(yaml.contains("\n---\n"), "{yaml}");
    assert!(yaml.contains("\"met\": true"), "{yaml}");
    assert!(!yaml.contains("\"met\": false"), "{yaml}");

    let (status, json) = app.get(&path("export?format=json")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["phase"], "completed");
    assert_eq!(json["plan"]["approved"], true);
    assert_eq!(json["plan"]["tickets"][0]["status"], "done");
    assert_eq!(json["plan"]["tickets"][1]["tasks"][0]["id"], id("TSK-3"));
    assert_eq!(json["requirements"][1]["tasks"], json!(["TSK-3"]));

    let (status, body) = app.get(&path("export?format=pdf")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app.get(&path("export?as_of=-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

/// The tasks of `ticket`, from the lists (once the read models caught up).
async fn tasks_of(app: &TestApp, ticket: &str) -> Vec<Value> {
    app.caught_up().await;
    let (status, page) = app.get(&format!("/api/v1/tasks?ticket_id={ticket}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().cloned().expect("items")
}

/// A ticket made by hand gets the task of its phase, caused by its creation; a plan's
/// tickets, a done phase and a project that turned it off get none; a replay adds nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_made_ticket_gets_the_task_of_its_phase() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_spawning_project().await;
    let backlog = app.ticket(&project, "Login page").await;
    let implementation = app
        .create(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Password reset",
                   "description": "by email", "priority": "HIGH",
                   "phase": "PHASE_IMPLEMENTATION"}),
        )
        .await;
    let done = app
        .create(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Old work", "phase": "PHASE_DONE"}),
        )
        .await;
    // A title of the whole limit (200 characters) gets its task, titled within the limit.
    let long_title = "L".repeat(200);
    let long = app.ticket(&project, &long_title).await;

    let analyze = tasks_of(&app, &backlog).await;
    assert_eq!(analyze.len(), 1, "{analyze:?}");
    assert_eq!(analyze[0]["task_type"], "analyze");
    assert_eq!(analyze[0]["title"], "Analyze: Login page");
    let implement = tasks_of(&app, &implementation).await;
    assert_eq!(implement.len(), 1, "{implement:?}");
    assert_eq!(implement[0]["task_type"], "implement");
    assert_eq!(implement[0]["priority"], "HIGH");
    assert_eq!(implement[0]["phase"], "PHASE_IMPLEMENTATION");
    assert_eq!(implement[0]["description"], "by email");
    assert_eq!(tasks_of(&app, &done).await, Vec::<Value>::new());
    let clipped = tasks_of(&app, &long).await;
    assert_eq!(clipped.len(), 1, "{clipped:?}");
    let expected: String = format!("Analyze: {long_title}").chars().take(200).collect();
    assert_eq!(clipped[0]["title"], expected);

    // The spawned task names the ticket's creation as its cause.
    let events = log(&app).await;
    let created = events
        .iter()
        .find(|e| e.aggregate_id == backlog && e.event_type == "TicketCreated")
        .expect("the ticket's creation");
    let spawned = events
        .iter()
        .find(|e| e.aggregate_id == analyze[0]["id"].as_str().unwrap_or_default())
        .expect("the task's creation");
    assert_eq!(
        spawned.metadata.to_value()["causation_id"],
        created.reference()
    );
    assert_eq!(spawned.metadata.to_value()["actor"], "system:phase_tasks");

    // Replaying the creation appends nothing.
    let before = app.event_count().await;
    let mut conn = app.database.pool.acquire().await.expect("a connection");
    let mut tx = conn.begin().await.expect("a transaction");
    let manager = omoi_workflow::spawn::PhaseTasks {
        table: Default::default(),
    };
    manager
        .react_all(&mut tx, "unused", vec![created])
        .await
        .expect("a replay succeeds");
    tx.commit().await.expect("commit");
    assert_eq!(app.event_count().await, before, "a replay appended events");

    // A plan's tickets come with their own tasks only.
    let spec = executing_spec(&app, &project).await;
    app.caught_up().await;
    let approval = the_approval(&app).await;
    assert_eq!(
        tasks_of(&app, &created_id(&approval, "TKT-1").to_string())
            .await
            .len(),
        2
    );
    let (_, spec_state) = app.get(&format!("/api/v1/specs/{spec}")).await;
    assert_eq!(spec_state["state"]["phase"], "executing");

    // Off, a hand-made ticket gets nothing.
    app.project_settings(&project, json!({"auto_spawn_tasks": false}))
        .await;
    let quiet = app.ticket(&project, "No automatic task").await;
    assert_eq!(tasks_of(&app, &quiet).await, Vec::<Value>::new());
}

/// A hand-made ticket's task follows the project's settings before the ticket in the log's
/// order — by transaction, then position — not those before its position alone: a
/// settings change whose transaction began after the ticket's, though it took a lower
/// position, comes after the ticket in the stream, and did not stop its task.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_made_tickets_task_follows_the_settings_before_it_in_the_logs_order() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_spawning_project().await;
    // A ticket's creation as the API writes it, to write another one like it by hand.
    let model = app.ticket(&project, "Model").await;
    let (event_version, mut payload, metadata): (String, Value, Value) = sqlx::query_as(
        "select event_version, payload, metadata from events
          where aggregate_type = 'Ticket' and aggregate_id = $1 and sequence = 1",
    )
    .bind(&model)
    .fetch_one(&app.database.pool)
    .await
    .expect("the model's creation");
    let ticket = uuid::Uuid::new_v4().to_string();
    payload["TicketCreated"]["ticket_id"] = json!(ticket);
    payload["TicketCreated"]["title"] = json!("Begun before the change");

    // The ticket's transaction begins first; the change commits, then the ticket.
    let mut ticket_tx = held_transaction(&app.database.pool).await;
    app.project_settings(&project, json!({"auto_spawn_tasks": false}))
        .await;
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         values ('Ticket', $1, 1, 'TicketCreated', $2, $3, $4)",
    )
    .bind(&ticket)
    .bind(&event_version)
    .bind(&payload)
    .bind(&metadata)
    .execute(&mut *ticket_tx)
    .await
    .expect("the ticket's creation");
    ticket_tx.commit().await.expect("the ticket committed");

    let order: Vec<String> = sqlx::query_scalar(
        "select aggregate_type from events
          where aggregate_type in ('Ticket', 'Project') and aggregate_id in ($1, $2)
          order by global_position desc limit 2",
    )
    .bind(&ticket)
    .bind(&project)
    .fetch_all(&app.database.pool)
    .await
    .expect("the positions");
    assert_eq!(
        order,
        ["Ticket", "Project"],
        "the change took the lower position"
    );
    let spawned = tasks_of(&app, &ticket).await;
    assert_eq!(spawned.len(), 1, "{spawned:?}");
    assert_eq!(spawned[0]["title"], "Analyze: Begun before the change");
    // A ticket after the change in both orders gets nothing.
    let later = app.ticket(&project, "After the change").await;
    assert_eq!(tasks_of(&app, &later).await, Vec::<Value>::new());
}

/// A process manager's table that gained a column in place (`upgrade_tables`) gets it on
/// an existing build when a process starts on it — without a rebuild, which would re-run
/// its reactions — and keeps its rows.
#[tokio::test(flavor = "multi_thread")]
async fn an_existing_build_gains_a_new_column_in_place_and_keeps_its_rows() {
    use omoi_projections::catalog::ensure_current_build;
    use omoi_workflow::progress::TicketProgress;
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Old rows").await;
    app.task(&ticket, "Before the column", json!({})).await;
    app.caught_up().await;
    let progress = omoi_workflow::run(TicketProgress::default());
    let build = ensure_current_build(&app.database.pool, progress.as_ref())
        .await
        .expect("the build");
    let table = format!("{}.tasks", build.schema());
    // The table and its view as they were before validation existed.
    for statement in [
        "drop view public.ticket_progress_tasks".to_string(),
        format!("alter table {table} drop column validation"),
        format!("create view public.ticket_progress_tasks as select * from {table}"),
    ] {
        sqlx::query(&statement)
            .execute(&app.database.pool)
            .await
            .expect("the old shape");
    }

    let again = ensure_current_build(&app.database.pool, progress.as_ref())
        .await
        .expect("the same build");
    assert_eq!(again.build, build.build, "no rebuild");
    let rows: Vec<(String, bool)> = sqlx::query_as(&format!(
        "select status, validation from {table} order by task_id"
    ))
    .fetch_all(&app.database.pool)
    .await
    .expect("the column is back");
    assert_eq!(rows, [("pending".to_string(), false)]);
    let through_view: Vec<bool> =
        sqlx::query_scalar("select validation from public.ticket_progress_tasks")
            .fetch_all(&app.database.pool)
            .await
            .expect("the view shows the new column");
    assert_eq!(through_view, [false]);
}

/// A task added to a ticket after some of its tasks completed keeps the ticket from done
/// when the tasks before it have all completed: the ticket's tasks are counted as they
/// stand at each completion (the process manager's rows agree with the ticket's tasks).
#[tokio::test(flavor = "multi_thread")]
async fn a_task_added_after_the_first_completion_keeps_its_ticket_from_done() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Counted once").await;
    let first = app.task(&ticket, "First", json!({})).await;
    let second = app.task(&ticket, "Second", json!({})).await;
    let agent = worker(&app, &organization).await;

    run_task(&app, &agent, &first).await;
    assert_eq!(ticket_status(&app, &ticket).await, "building");
    let added = app.task(&ticket, "Added later", json!({})).await;
    run_task(&app, &agent, &second).await;
    assert_eq!(
        ticket_status(&app, &ticket).await,
        "building",
        "the task added later is open"
    );
    let open: Vec<String> = sqlx::query_scalar(
        "select task_id from ticket_progress_tasks
          where ticket_id = $1 and status not in ('completed', 'cancelled')",
    )
    .bind(&ticket)
    .fetch_all(&app.database.pool)
    .await
    .expect("the process manager's rows");
    assert_eq!(open, [added.as_str()]);

    run_task(&app, &agent, &added).await;
    assert_eq!(ticket_status(&app, &ticket).await, "done");
}

/// A plan is not approved in an archived project (it would add tickets and tasks there,
/// and count a workflow): 409 `project_archived`, and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn an_archived_projects_plan_is_not_approved() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let spec = planned_spec(&app, &project, two_ticket_plan()).await;
    app.must(
        &format!("/api/v1/projects/{project}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    let before = app.event_count().await;
    let (status, answer) = app
        .post(&format!("/api/v1/specs/{spec}/approve-plan"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["code"], "project_archived", "{answer}");
    app.caught_up().await;
    assert_eq!(app.event_count().await, before);
}

/// The bound on the dependency changes a cycle check reads counts the changes only: a
/// project of more tasks than the bound, none with dependencies, still takes an edge
/// (every creation counted, and 20,000 tasks refused every new dependency).
#[tokio::test(flavor = "multi_thread")]
async fn a_project_of_many_tasks_without_dependencies_still_takes_one() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Many").await;
    let first = app.task(&ticket, "First", json!({})).await;
    let second = app.task(&ticket, "Second", json!({})).await;
    // 20,001 more creations without dependencies, each the second's own payload under
    // a new id, set-based (the log's readers decode them as the API's).
    let bound = omoi_workflow::cycles::MAX_EDGE_EVENTS;
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         select 'Task', id::text, 1, 'TaskCreated', e.event_version,
                jsonb_set(e.payload, '{TaskCreated,task_id}', to_jsonb(id::text)), e.metadata
           from events e, (select gen_random_uuid() as id from generate_series(0, $2)) ids
          where e.aggregate_type = 'Task' and e.aggregate_id = $1 and e.sequence = 1",
    )
    .bind(&second)
    .bind(bound)
    .execute(&app.database.pool)
    .await
    .expect("the creations");
    app.must(
        &format!("/api/v1/tasks/{second}/dependencies"),
        json!({"depends_on": first}),
        StatusCode::OK,
    )
    .await;
}

/// A server with a ticket "Audit log" and its one task "Write it", in a project of its
/// own: the app, the organization, the ticket and the task.
async fn audit_log_ticket() -> (TestApp, String, String, String) {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Audit log").await;
    let task = app.task(&ticket, "Write it", json!({})).await;
    (app, organization, ticket, task)
}

/// A person blocks `ticket` (`body`: the reason and a note).
async fn block(app: &TestApp, ticket: &str, body: Value) {
    app.must(
        &format!("/api/v1/tickets/{ticket}/block"),
        body,
        StatusCode::OK,
    )
    .await;
}

/// A ticket moved by hand to testing and blocked there by a person, whose one task then
/// completes: it stays in testing (a blocked ticket cannot be done).
async fn blocked_in_testing_with_its_work_done() -> (TestApp, String) {
    let (app, organization, ticket, task) = audit_log_ticket().await;
    let agent = worker(&app, &organization).await;
    assign(&app, &agent, &task).await;
    assert_eq!(ticket_status(&app, &ticket).await, "building");
    for to in ["building-done", "testing"] {
        app.must(
            &format!("/api/v1/tickets/{ticket}/transition"),
            json!({"to": to}),
            StatusCode::OK,
        )
        .await;
    }
    block(
        &app,
        &ticket,
        json!({"reason": "waiting_on_clarification", "note": "which events?"}),
    )
    .await;
    let path = |action: &str| format!("/api/v1/tasks/{task}/{action}");
    app.must(&path("start"), json!({}), StatusCode::OK).await;
    app.must(&path("complete"), json!({"result": {}}), StatusCode::OK)
        .await;
    assert_eq!(ticket_status(&app, &ticket).await, "testing");
    (app, ticket)
}

/// Unblocks `ticket`, whose work is all done: it goes on to `done`, the move caused by the
/// unblocking.
async fn unblocking_moves_it_to_done(app: &TestApp, ticket: &str) {
    app.must(
        &format!("/api/v1/tickets/{ticket}/unblock"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ticket_status(app, ticket).await, "done");
    let events = log(app).await;
    let unblocked = events
        .iter()
        .find(|e| e.aggregate_id == ticket && e.event_type == "TicketUnblocked")
        .expect("the unblocking");
    let done = events
        .iter()
        .find(|e| {
            e.aggregate_id == ticket
                && e.event_type == "TicketStatusChanged"
                && e.payload.to_value()["TicketStatusChanged"]["to"] == "done"
        })
        .expect("the move to done");
    assert_eq!(
        done.metadata.to_value()["causation_id"],
        unblocked.reference()
    );
}

/// A ticket in testing whose work completes while a person has it blocked stays where it
/// is (a blocked ticket cannot be done); once unblocked it goes on to `done`, the move
/// caused by the unblocking — before, that move was lost and the ticket stayed in testing.
#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_whose_work_finished_while_blocked_moves_on_once_unblocked() {
    let (app, ticket) = blocked_in_testing_with_its_work_done().await;

    unblocking_moves_it_to_done(&app, &ticket).await;
}

/// A ticket a person blocked while it was building stays blocked, and where it is, when
/// its work completes: the manager's walk to `done` would have cleared the block on its
/// first step (and did, before). Unblocked, it goes on to `done`, the move caused by the
/// unblocking.
#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_blocked_while_building_is_not_walked_past_its_block() {
    let (app, organization, ticket, task) = audit_log_ticket().await;
    let agent = worker(&app, &organization).await;
    assign(&app, &agent, &task).await;
    assert_eq!(ticket_status(&app, &ticket).await, "building");
    block(
        &app,
        &ticket,
        json!({"reason": "waiting_on_clarification", "note": "which events?"}),
    )
    .await;
    let path = |action: &str| format!("/api/v1/tasks/{task}/{action}");
    app.must(&path("start"), json!({}), StatusCode::OK).await;
    app.must(&path("complete"), json!({"result": {}}), StatusCode::OK)
        .await;
    assert_eq!(ticket_status(&app, &ticket).await, "building");
    let (_, state) = app.get(&format!("/api/v1/tickets/{ticket}")).await;
    assert_eq!(
        state["state"]["blocked"]["reason"], "waiting_on_clarification",
        "{state}"
    );

    unblocking_moves_it_to_done(&app, &ticket).await;
}

/// A ticket a person blocked in the backlog stays there while its work is assigned (the
/// move to `building` would clear the block); unblocked, it goes to `building`, where its
/// running work takes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_unblocked_while_its_work_runs_goes_to_building() {
    let (app, organization, ticket, task) = audit_log_ticket().await;
    block(&app, &ticket, json!({"reason": "waiting_on_clarification"})).await;
    let agent = worker(&app, &organization).await;
    assign(&app, &agent, &task).await;
    app.must(
        &format!("/api/v1/tasks/{task}/start"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ticket_status(&app, &ticket).await, "backlog");
    app.must(
        &format!("/api/v1/tickets/{ticket}/unblock"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ticket_status(&app, &ticket).await, "building");
}

/// A person's regression of a blocked ticket in testing (which unblocks it on its way
/// back to building) stands: the unblocking asks only for the move the block refused,
/// not for one the regression undid — even with every task of the ticket completed.
#[tokio::test(flavor = "multi_thread")]
async fn a_regression_of_a_blocked_ticket_is_not_walked_back_to_done() {
    let (app, ticket) = blocked_in_testing_with_its_work_done().await;

    app.must(
        &format!("/api/v1/tickets/{ticket}/regress"),
        json!({"feedback": "the CSV quotes are wrong"}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ticket_status(&app, &ticket).await, "building");
    let (_, state) = app.get(&format!("/api/v1/tickets/{ticket}")).await;
    assert_eq!(state["state"]["blocked"], Value::Null, "{state}");
}

/// A person completing an executing spec while its plan's work is open stops that work as
/// archiving does: every open task of the plan is cancelled — the running one too, by
/// `spec_archival` for the completion — finished work stays finished, and the workflow
/// stays counted and is closed (`WorkflowFinished`, caused by the completion), also when
/// no work was done.
/// Before, the tasks ran on and the workflow stayed open for ever: nothing reacted to a
/// completion by hand, and archiving the spec afterwards stopped nothing.
#[tokio::test(flavor = "multi_thread")]
async fn completing_an_executing_spec_by_hand_stops_its_open_work() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let spec = executing_spec(&app, &project).await;
    let approval = the_approval(&app).await;
    let id = |key: &str| created_id(&approval, key).to_string();
    let agent = worker(&app, &organization).await;
    run_task(&app, &agent, &id("TSK-1")).await;
    assign(&app, &agent, &id("TSK-2")).await;
    app.must(
        &format!("/api/v1/tasks/{}/start", id("TSK-2")),
        json!({}),
        StatusCode::OK,
    )
    .await;
    // Work added by hand to a ticket of the plan ends with the plan's; a ticket a person
    // made naming the spec is not the plan's, and keeps its work.
    let on_the_plan = app.task(&id("TKT-1"), "Polish", json!({})).await;
    let follow_up = app
        .create(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Follow-up", "spec_id": spec}),
        )
        .await;
    let follow_up_task = app.task(&follow_up, "Docs", json!({})).await;

    let completed = app
        .must(
            &format!("/api/v1/specs/{spec}/complete"),
            json!({}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(completed["state"]["phase"], "completed", "{completed}");
    app.caught_up().await;
    let status = |key: &'static str| {
        let app = &app;
        let path = format!("/api/v1/tasks/{}", id(key));
        async move { app.get(&path).await.1["state"]["status"].clone() }
    };
    assert_eq!(status("TSK-1").await, "completed", "finished work stays");
    for key in ["TSK-2", "TSK-3", "TSK-4"] {
        assert_eq!(status(key).await, "cancelled", "{key}");
    }
    assert_eq!(app.task_state(&on_the_plan).await["status"], "cancelled");
    assert_eq!(app.task_state(&follow_up_task).await["status"], "pending");
    let events = log(&app).await;
    let completion = events
        .iter()
        .find(|e| e.aggregate_id == spec && e.event_type == "SpecCompleted")
        .expect("the completion");
    let finished = events
        .iter()
        .find(|e| e.event_type == "WorkflowFinished")
        .expect("the workflow closed");
    assert_eq!(finished.metadata.actor(), Some("system:spec_archival"));
    assert_eq!(
        finished.metadata.causation_id(),
        Some(completion.reference().as_str())
    );
    let account = format!("/api/v1/billing/account?organization_id={organization}");
    let used = || {
        let (app, account) = (&app, &account);
        async move { app.get(account).await.1["usage"]["workflows_used"].clone() }
    };
    assert_eq!(used().await, 1, "work was done: counted");
    // A completed spec still takes a follow-up's work, and keeps it.
    let more = app.task(&follow_up, "More docs", json!({})).await;
    app.caught_up().await;
    assert_eq!(app.task_state(&more).await["status"], "pending");

    // Completed before any work: a completed spec's workflow stays counted all the same
    // (archived, it would be given back).
    let untouched = executing_spec(&app, &project).await;
    assert_eq!(used().await, 2);
    app.must(
        &format!("/api/v1/specs/{untouched}/complete"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.caught_up().await;
    assert_eq!(used().await, 2, "a completed spec's workflow stays counted");
}
