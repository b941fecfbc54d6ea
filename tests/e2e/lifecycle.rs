//! End to end over HTTP against a real PostgreSQL: an organization's work from creation to
//! done, its audit trail, and a restart that finds the same state.

use omoi_testing::{id_of, spawn_app, spawn_app_on};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_walks_to_done_its_history_is_kept_and_survives_a_restart() {
    let app = spawn_app().await;
    let (org_id, project_id) = app.organization_and_project().await;

    let ticket = app
        .must(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "Login page", "priority": "HIGH"}),
            StatusCode::CREATED,
        )
        .await;
    let ticket_id = id_of(&ticket);
    assert_eq!(ticket["state"]["status"], "backlog");
    assert_eq!(ticket["state"]["organization_id"], org_id.as_str());

    let first = app
        .must(
            "/api/v1/tasks",
            json!({"ticket_id": ticket_id, "title": "Write the form", "task_type": "implement"}),
            StatusCode::CREATED,
        )
        .await;
    let second = app
        .must(
            "/api/v1/tasks",
            json!({"ticket_id": ticket_id, "title": "Test the form", "task_type": "test",
               "depends_on": [id_of(&first)], "required_capabilities": ["browser"]}),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!(second["state"]["depends_on"], json!([id_of(&first)]));
    assert_eq!(second["state"]["project_id"], project_id.as_str());

    for to in ["analyzing", "building", "building-done", "testing"] {
        app.must(
            &format!("/api/v1/tickets/{ticket_id}/transition"),
            json!({"to": to}),
            StatusCode::OK,
        )
        .await;
    }
    app.must(
        &format!("/api/v1/tickets/{ticket_id}/regress"),
        json!({"feedback": "the submit button does nothing"}),
        StatusCode::OK,
    )
    .await;
    for to in ["building-done", "testing"] {
        app.must(
            &format!("/api/v1/tickets/{ticket_id}/transition"),
            json!({"to": to}),
            StatusCode::OK,
        )
        .await;
    }
    let done = app
        .must(
            &format!("/api/v1/tickets/{ticket_id}/transition"),
            json!({"to": "done", "note": "shipped"}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(done["state"]["status"], "done");
    assert_eq!(done["version"], 9);

    let (status, history) = app
        .get(&format!("/api/v1/tickets/{ticket_id}/history?as_of=5"))
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let events = history["events"].as_array().expect("events");
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        types,
        [
            "TicketCreated",
            "TicketStatusChanged",
            "TicketStatusChanged",
            "TicketStatusChanged",
            "TicketStatusChanged",
            "TicketRegressed",
            "TicketStatusChanged",
            "TicketStatusChanged",
            "TicketStatusChanged"
        ]
    );
    assert_eq!(history["state"]["status"], "testing", "state as of event 5");
    assert_eq!(history["as_of"], 5);
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(sequences, (1..=9).collect::<Vec<_>>());
    for event in events {
        let metadata = &event["metadata"];
        assert_eq!(metadata["organization_id"], org_id.as_str());
        assert_eq!(metadata["project_id"], project_id.as_str());
        for key in ["actor", "correlation_id", "request_id", "occurred_at"] {
            assert!(
                metadata[key].is_string(),
                "metadata lacks {key}: {metadata}"
            );
        }
    }
    assert!(history["next_after"].is_null(), "one page holds all nine");

    // The same history a page of four at a time: each page after the one before, every
    // event once, the state as of event 5 on each.
    let mut paged = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (status, page) = app
            .get(&format!(
                "/api/v1/tickets/{ticket_id}/history?as_of=5&limit=4&after={after}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["state"], history["state"]);
        assert_eq!(
            (page["version"].as_i64(), page["as_of"].as_i64()),
            (Some(9), Some(5))
        );
        pages += 1;
        paged.extend(page["events"].as_array().expect("events").iter().cloned());
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(pages, 3, "pages of 4, 4 and 1");
    assert_eq!(&paged, events);
    // Without `as_of`, every page carries the state now: a later page's from the state
    // commands keep (here, kept), or folded from the log (after the restart below).
    let later_page = format!("/api/v1/tickets/{ticket_id}/history?limit=4&after=4");
    let (status, page) = app.get(&later_page).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        (page["state"].clone(), page["as_of"].as_i64()),
        (done["state"].clone(), Some(9))
    );

    let (database, token) = app.stop().await;
    let mut app = spawn_app_on(database).await;
    app.token = token;
    let (status, page) = app.get(&later_page).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["state"], done["state"], "folded after a restart");
    let (status, after_restart) = app.get(&format!("/api/v1/tickets/{ticket_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after_restart["state"], done["state"]);
    assert_eq!(after_restart["version"], 9);
    let (status, task) = app.get(&format!("/api/v1/tasks/{}", id_of(&second))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task["state"]["title"], "Test the form");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_runs_fails_is_retried_and_completes() {
    let app = spawn_app().await;
    let (org_id, project_id) = app.organization_and_project().await;
    let ticket = app
        .must(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "T"}),
            StatusCode::CREATED,
        )
        .await;
    let task = app
        .must(
            "/api/v1/tasks",
            json!({"ticket_id": id_of(&ticket), "title": "Build", "task_type": "implement"}),
            StatusCode::CREATED,
        )
        .await;
    let task_id = id_of(&task);
    let agent = app
        .must(
            "/api/v1/agents/register",
            json!({"organization_id": org_id, "agent_type": "worker", "capabilities": ["rust"]}),
            StatusCode::CREATED,
        )
        .await;
    let agent_id = id_of(&agent);
    let path = |action: &str| format!("/api/v1/tasks/{task_id}/{action}");

    app.must(
        &path("assign"),
        json!({"agent_id": agent_id}),
        StatusCode::OK,
    )
    .await;
    app.must(&path("start"), json!({}), StatusCode::OK).await;
    app.must(
        &path("progress"),
        json!({"message": "compiling"}),
        StatusCode::OK,
    )
    .await;
    let failed = app
        .must(
            &path("fail"),
            json!({"error": "flaky network"}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(failed["state"]["status"], "retry_scheduled");
    assert!(failed["state"]["not_before"].is_string());

    // The retry is really delayed: assigning before not_before is refused.
    let (status, refused) = app
        .post(&path("assign"), json!({"agent_id": agent_id}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["code"], "retry_not_due");

    // A complete on a task that is not running is an illegal transition.
    let (status, illegal) = app
        .post(&path("complete"), json!({"result": {"ok": true}}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{illegal}");
    assert_eq!(illegal["code"], "illegal_transition", "{illegal}");

    // Once the retry is due it is assigned again, runs and completes.
    let mut tries = 0;
    loop {
        let (status, answer) = app
            .post(&path("assign"), json!({"agent_id": agent_id}))
            .await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(answer["code"], "retry_not_due", "{answer}");
        tries += 1;
        assert!(tries < 300, "the retry never fell due: {answer}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    app.must(&path("start"), json!({}), StatusCode::OK).await;
    let completed = app
        .must(
            &path("complete"),
            json!({"result": {"ok": true}}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(completed["state"]["status"], "completed", "{completed}");
    assert_eq!(completed["state"]["retry_count"], 1, "{completed}");

    let (_, history) = app.get(&format!("/api/v1/tasks/{task_id}/history")).await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        types,
        [
            "TaskCreated",
            "TaskAssigned",
            "TaskStarted",
            "TaskProgressReported",
            "TaskFailed",
            "TaskRetryScheduled",
            "TaskAssigned",
            "TaskStarted",
            "TaskCompleted"
        ]
    );
    let (_, agent_history) = app.get(&format!("/api/v1/agents/{agent_id}/history")).await;
    assert_eq!(
        agent_history["events"][0]["metadata"]["organization_id"],
        org_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_moves_through_its_gates_only_when_approved() {
    let app = spawn_app().await;
    let (_, project_id) = app.organization_and_project().await;
    let spec = app
        .must(
            "/api/v1/specs",
            json!({"project_id": project_id, "title": "Auth"}),
            StatusCode::CREATED,
        )
        .await;
    let spec_id = id_of(&spec);
    let path = |action: &str| format!("/api/v1/specs/{spec_id}/{action}");

    let (status, early) = app.post(&path("approve-design"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{early}");

    let added = app.must(&path("requirements"),
        json!({"id": "REQ-AUTH-001", "condition": "WHEN a user submits valid credentials",
               "action": "THE SYSTEM SHALL issue a session", "acceptance_criteria": ["a token is returned"]}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(added["state"]["phase"], "requirements");
    let (status, bad) = app
        .post(
            &path("requirements"),
            json!({"id": "req-1", "condition": "WHEN x", "action": "THE SYSTEM SHALL y", "acceptance_criteria": ["z"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["field"], "id");

    app.must(&path("approve-requirements"), json!({}), StatusCode::OK)
        .await;
    let (status, no_design) = app.post(&path("approve-design"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{no_design}");
    let (status, design) = app
        .put(&path("design"), json!({"architecture": "one service", "data_model": "users", "api_spec": "POST /login"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{design}");
    let tasks = app
        .must(&path("approve-design"), json!({}), StatusCode::OK)
        .await;
    assert_eq!(tasks["state"]["phase"], "tasks");
    let (status, early) = app.post(&path("approve-plan"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "no plan yet: {early}");
    // A plan naming a task that is not in it is refused, naming the place.
    let (status, bad) = app
        .put(
            &path("plan"),
            json!({"tickets": [{"key": "TKT-1", "title": "Login form", "requirement_ids": ["REQ-AUTH-001"],
                                 "tasks": [{"key": "TSK-1", "title": "Form", "task_type": "implement",
                                            "depends_on": ["TSK-9"]}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["code"], "unknown_plan_key", "{bad}");
    assert_eq!(bad["field"], "tickets[0].tasks[0].depends_on[0]", "{bad}");
    let (status, planned) = app
        .put(
            &path("plan"),
            json!({"tickets": [
                {"key": "TKT-1", "title": "Login form", "requirement_ids": ["REQ-AUTH-001"],
                 "tasks": [{"key": "TSK-1", "title": "Form", "task_type": "implement", "estimate": "M"}]},
                {"key": "TKT-2", "title": "Sessions", "priority": "HIGH",
                 "tasks": [{"key": "TSK-2", "title": "Tokens", "task_type": "implement",
                            "depends_on": ["TSK-1"], "requirement_ids": ["REQ-AUTH-001"]}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{planned}");
    assert_eq!(
        planned["state"]["plan"]["tickets"][1]["tasks"][0]["depends_on"],
        json!(["TSK-1"])
    );
    let executing = app
        .must(&path("approve-plan"), json!({}), StatusCode::OK)
        .await;
    assert_eq!(executing["state"]["phase"], "executing");
    let archived = app.must(&path("archive"), json!({}), StatusCode::OK).await;
    assert_eq!(archived["state"]["phase"], "archived");
}

/// An archived project takes no new work: tickets, tasks and specs are refused with 409
/// `project_archived` and nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn an_archived_project_refuses_new_work_and_writes_nothing() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Before the archive").await;
    app.must(
        &format!("/api/v1/projects/{project}/archive"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    let before = app.event_count().await;
    for (path, body) in [
        (
            "/api/v1/tickets",
            json!({"project_id": project, "title": "After"}),
        ),
        (
            "/api/v1/tasks",
            json!({"ticket_id": ticket, "title": "After", "task_type": "implement"}),
        ),
        (
            "/api/v1/specs",
            json!({"project_id": project, "title": "After"}),
        ),
    ] {
        let (status, answer) = app.post(path, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {answer}");
        assert_eq!(answer["code"], "project_archived", "{path}");
    }
    assert_eq!(app.event_count().await, before);
}
