//! Validation: work under a validation policy is submitted, not completed, when its agent
//! finishes; a `validate` task that only another agent may run judges it, and its verdict
//! completes the work or sends it back for revision — at most `max_revisions` times —
//! through the `validation` process manager on the log.

use omoi_domain::task::ValidationTarget;
use omoi_testing::{spawn_app, Agent, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// What these tests ask of an agent beyond the shared helpers.
trait AgentSteps {
    async fn take(&self, app: &TestApp, task: &str) -> (StatusCode, Value);
    async fn finish(&self, app: &TestApp, task: &str, result: Value) -> Value;
    async fn judge(&self, app: &TestApp, task: &str, verdict: Value) -> Value;
}

impl AgentSteps for Agent {
    /// Has the owner give `task` to this agent; the answer to the assignment.
    async fn take(&self, app: &TestApp, task: &str) -> (StatusCode, Value) {
        app.post(
            &format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": self.id}),
        )
        .await
    }

    /// Takes `task`, starts it and finishes it with `result`.
    async fn finish(&self, app: &TestApp, task: &str, result: Value) -> Value {
        let (status, body) = self.take(app, task).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.must(app, task, "start", json!({})).await;
        self.must(app, task, "complete", json!({ "result": result }))
            .await
    }

    /// Takes validation task `task`, starts it and gives `verdict`.
    async fn judge(&self, app: &TestApp, task: &str, verdict: Value) -> Value {
        let (status, body) = self.take(app, task).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.must(app, task, "start", json!({})).await;
        self.must(app, task, "verdict", verdict).await
    }
}

/// The validation task of `task`'s submission `revision`, once the process manager made
/// it.
async fn validation_of(app: &TestApp, task: &str, revision: u32) -> (String, Value) {
    let work: Uuid = task.parse().expect("a task id");
    let id = ValidationTarget::task_id_for(work, revision).to_string();
    app.caught_up().await;
    let (status, body) = app.get(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "no validation of {revision}: {body}"
    );
    (id, body["state"].clone())
}

struct Fixture {
    app: TestApp,
    ticket: String,
    implementer: Agent,
    validator: Agent,
}

/// A project (tickets moving by themselves), a ticket and two agents, which may hold a
/// task each at once.
async fn fixture() -> Fixture {
    let app = omoi_testing::spawn_app_running_at_once(2).await;
    let (organization, project) = app
        .organization_and_project_with(json!({"auto_spawn_tasks": false}))
        .await;
    let ticket = app.ticket(&project, "Checkout").await;
    let implementer = app.register_agent(&organization).await;
    let validator = app.register_agent(&organization).await;
    Fixture {
        app,
        ticket,
        implementer,
        validator,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submitted_work_is_judged_by_another_agent_and_completes_with_its_result() {
    let Fixture {
        app,
        ticket,
        implementer,
        validator,
    } = fixture().await;
    let task = app
        .task(&ticket, "Payment form", json!({"validation": true}))
        .await;
    let submitted = implementer
        .finish(&app, &task, json!({"files": ["form.rs"]}))
        .await;
    assert_eq!(submitted["state"]["status"], "pending_validation");
    assert_eq!(submitted["state"]["assigned_agent_id"], Value::Null);
    assert_eq!(submitted["state"]["implementer_agent_id"], implementer.id);

    let (validation, state) = validation_of(&app, &task, 0).await;
    assert_eq!(state["task_type"], "validate");
    assert_eq!(state["ticket_id"], ticket.as_str());
    assert_eq!(state["title"], "Validate: Payment form");
    assert_eq!(
        state["validates"],
        json!({"task_id": task, "revision": 0, "implementer_agent_id": implementer.id})
    );
    // Its creation names the submission as its cause.
    let submission = app
        .task_history(&task)
        .await
        .into_iter()
        .find(|e| e["event_type"] == "TaskSubmittedForValidation")
        .expect("a submission");
    let created = &app.task_history(&validation).await[0];
    assert_eq!(
        created["metadata"]["causation_id"],
        format!("Task/{task}/{}", submission["sequence"])
    );
    assert_eq!(created["metadata"]["actor"], "system:validation");

    // The implementer may not take it, by hand or by claiming; the other agent may.
    let (status, body) = implementer.take(&app, &validation).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "implementer_cannot_validate");
    assert_eq!(implementer.claim(&app, 0).await, None);
    assert_eq!(validator.claim(&app, 5).await, Some(validation.clone()));
    // A plain completion is not a verdict.
    validator.must(&app, &validation, "start", json!({})).await;
    let (status, body) = validator
        .post(
            &app,
            &format!("/api/v1/tasks/{validation}/complete"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "verdict_required");
    let judged = validator
        .must(
            &app,
            &validation,
            "verdict",
            json!({"passed": true, "feedback": "clean"}),
        )
        .await;
    assert_eq!(judged["state"]["status"], "completed");
    assert_eq!(
        judged["state"]["result"],
        json!({"passed": true, "feedback": "clean"})
    );

    let done = app.until_task_status(&task, "completed").await;
    assert_eq!(done["result"], json!({"files": ["form.rs"]}));
    assert_eq!(done["feedback"], "clean");
    // The ticket walked to done through building-done and testing.
    app.caught_up().await;
    let (_, ticket_state) = app.get(&format!("/api/v1/tickets/{ticket}")).await;
    assert_eq!(ticket_state["state"]["status"], "done");
    let moves: Vec<Value> = app
        .get(&format!("/api/v1/tickets/{ticket}/history"))
        .await
        .1["events"]
        .as_array()
        .cloned()
        .expect("events")
        .into_iter()
        .filter(|e| e["event_type"] == "TicketStatusChanged")
        .map(|e| e["payload"]["TicketStatusChanged"]["to"].clone())
        .collect();
    assert_eq!(
        moves,
        ["analyzing", "building", "building-done", "testing", "done"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_twice_the_work_is_revised_with_the_feedback_and_then_passes() {
    let Fixture {
        app,
        ticket,
        implementer,
        validator,
    } = fixture().await;
    let task = app
        .task(&ticket, "Payment form", json!({"validation": true}))
        .await;
    implementer.finish(&app, &task, json!({"try": 0})).await;
    for revision in 0..2 {
        let (validation, _) = validation_of(&app, &task, revision).await;
        // A rejection must say what to revise; the refusal writes nothing.
        validator.take(&app, &validation).await;
        validator.must(&app, &validation, "start", json!({})).await;
        // The ticket's move to testing, caused by the start, is made first.
        app.caught_up().await;
        let before = app.event_count().await;
        let (status, body) = validator
            .post(
                &app,
                &format!("/api/v1/tasks/{validation}/verdict"),
                json!({"passed": false, "feedback": "  "}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["code"], "feedback_required");
        assert_eq!(app.event_count().await, before);
        let feedback = format!("round {revision}: the total is wrong");
        validator
            .must(
                &app,
                &validation,
                "verdict",
                json!({"passed": false, "feedback": feedback}),
            )
            .await;

        let revised = app.until_task_status(&task, "needs_revision").await;
        assert_eq!(revised["feedback"], feedback.as_str());
        assert_eq!(revised["revision"], revision + 1);
        // The revision goes back to the queue; the implementer takes it again.
        implementer
            .finish(&app, &task, json!({ "try": revision + 1 }))
            .await;
    }
    let (validation, _) = validation_of(&app, &task, 2).await;
    validator
        .judge(&app, &validation, json!({"passed": true}))
        .await;
    let done = app.until_task_status(&task, "completed").await;
    assert_eq!(done["result"], json!({"try": 2}), "the last submission's");

    // The work's history has exactly its rounds, each verdict applied once (a verdict on
    // an earlier submission is refused by the task: the domain's tests).
    let events: Vec<String> = app
        .task_history(&task)
        .await
        .into_iter()
        .filter_map(|e| e["event_type"].as_str().map(String::from))
        .filter(|t| t.contains("Validation") || t.contains("Revision"))
        .collect();
    assert_eq!(
        events,
        [
            "TaskValidationRequired",
            "TaskSubmittedForValidation",
            "TaskValidationRejected",
            "TaskRevisionRequested",
            "TaskSubmittedForValidation",
            "TaskValidationRejected",
            "TaskRevisionRequested",
            "TaskSubmittedForValidation",
            "TaskValidationPassed",
        ]
    );
}

/// A ticket the process manager moved to `testing` and a person sent back to `building`
/// moves on again with its work: the person's move is read, not the copy of the ticket
/// `ticket_progress` kept from its own move (which would say the revised work asks
/// nothing of a ticket already in testing).
#[tokio::test(flavor = "multi_thread")]
async fn a_ticket_sent_back_from_testing_by_hand_moves_on_with_the_revised_work() {
    let Fixture {
        app,
        ticket,
        implementer,
        validator,
    } = fixture().await;
    let ticket_status = || {
        let (app, path) = (&app, format!("/api/v1/tickets/{ticket}"));
        async move {
            app.caught_up().await;
            app.get(&path).await.1["state"]["status"].clone()
        }
    };
    let task = app
        .task(&ticket, "Payment form", json!({"validation": true}))
        .await;
    implementer.finish(&app, &task, json!({"try": 0})).await;
    assert_eq!(ticket_status().await, "building-done");
    let (validation, _) = validation_of(&app, &task, 0).await;
    validator.take(&app, &validation).await;
    validator.must(&app, &validation, "start", json!({})).await;
    assert_eq!(ticket_status().await, "testing");

    app.must(
        &format!("/api/v1/tickets/{ticket}/regress"),
        json!({"feedback": "the form loses the card on reload"}),
        StatusCode::OK,
    )
    .await;
    assert_eq!(ticket_status().await, "building");
    validator
        .must(
            &app,
            &validation,
            "verdict",
            json!({"passed": false, "feedback": "the total is wrong"}),
        )
        .await;
    app.until_task_status(&task, "needs_revision").await;
    implementer.finish(&app, &task, json!({"try": 1})).await;
    assert_eq!(
        ticket_status().await,
        "building-done",
        "the revised work, submitted, moves the ticket on"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_past_its_revisions_the_work_fails_for_good_and_blocks_its_ticket() {
    let Fixture {
        app,
        ticket,
        implementer,
        validator,
    } = fixture().await;
    let task = app
        .task(
            &ticket,
            "Payment form",
            json!({"validation": true, "max_revisions": 1}),
        )
        .await;
    for revision in 0..2 {
        implementer.finish(&app, &task, json!({})).await;
        let (validation, _) = validation_of(&app, &task, revision).await;
        validator
            .judge(
                &app,
                &validation,
                json!({"passed": false, "feedback": "card numbers leak into the log"}),
            )
            .await;
        if revision == 0 {
            app.until_task_status(&task, "needs_revision").await;
        }
    }
    let failed = app.until_task_status(&task, "permanently_failed").await;
    assert_eq!(
        failed["last_error"],
        "validation rejected the work: card numbers leak into the log"
    );
    app.caught_up().await;
    let (_, state) = app.get(&format!("/api/v1/tickets/{ticket}")).await;
    assert_eq!(
        state["state"]["blocked"]["reason"], "failing_checks",
        "{state}"
    );
    assert!(
        state["state"]["blocked"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("card numbers leak")),
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn work_cancelled_while_judged_cancels_its_validation_and_a_lost_validation_fails_the_work() {
    let Fixture {
        app,
        ticket,
        implementer,
        validator,
    } = fixture().await;
    // Cancelling the work cancels the validation waiting for it.
    let task = app
        .task(&ticket, "Receipts", json!({"validation": true}))
        .await;
    implementer.finish(&app, &task, json!({})).await;
    let (validation, _) = validation_of(&app, &task, 0).await;
    app.must(
        &format!("/api/v1/tasks/{task}/cancel"),
        json!({"reason": "not needed"}),
        StatusCode::OK,
    )
    .await;
    app.until_task_status(&validation, "cancelled").await;

    // A validation that ends without a verdict fails the work rather than leave it
    // waiting for ever.
    let other = app
        .task(&ticket, "Refunds", json!({"validation": true}))
        .await;
    implementer.finish(&app, &other, json!({})).await;
    let (lost, _) = validation_of(&app, &other, 0).await;
    validator.take(&app, &lost).await;
    app.must(
        &format!("/api/v1/tasks/{lost}/cancel"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    let failed = app.until_task_status(&other, "permanently_failed").await;
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("ended without a verdict")),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_validation_tasks_holder_gives_a_verdict_and_bad_requests_write_nothing() {
    let Fixture {
        app,
        ticket,
        implementer,
        validator,
    } = fixture().await;
    let task = app
        .task(&ticket, "Payment form", json!({"validation": true}))
        .await;
    implementer.finish(&app, &task, json!({})).await;
    let (validation, _) = validation_of(&app, &task, 0).await;
    validator.take(&app, &validation).await;
    validator.must(&app, &validation, "start", json!({})).await;
    app.caught_up().await;
    let before = app.event_count().await;

    // The implementer (holding nothing here) may not judge its own work.
    let verdict = format!("/api/v1/tasks/{validation}/verdict");
    let (status, body) = implementer
        .post(&app, &verdict, json!({"passed": true}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A task that validates nothing takes no verdict.
    let plain = app.task(&ticket, "Plain", json!({})).await;
    implementer.take(&app, &plain).await;
    implementer.must(&app, &plain, "start", json!({})).await;
    let (status, body) = implementer
        .post(
            &app,
            &format!("/api/v1/tasks/{plain}/verdict"),
            json!({"passed": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "not_a_validation");
    app.caught_up().await;
    let after_plain = app.event_count().await;
    for (bad, expected) in [
        (json!({}), StatusCode::BAD_REQUEST),
        (json!({"passed": "yes"}), StatusCode::BAD_REQUEST),
        (json!({"passed": true, "extra": 1}), StatusCode::BAD_REQUEST),
        (
            json!({"passed": false, "feedback": "x".repeat(20_001)}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let (status, body) = validator.post(&app, &verdict, bad.clone()).await;
        assert_eq!(status, expected, "{bad}: {body}");
        assert!(body["detail"].is_string(), "{body}");
    }
    assert_eq!(app.event_count().await, after_plain);
    assert!(after_plain > before, "the plain task's own events only");

    // Creation: max_revisions needs validation, and is bounded.
    for (extra, code) in [
        (
            json!({"max_revisions": 2}),
            "max_revisions_without_validation",
        ),
        (
            json!({"validation": true, "max_revisions": 11}),
            "too_many_revisions",
        ),
    ] {
        let mut body = json!({"ticket_id": ticket, "title": "x", "task_type": "implement"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, answer) = app.post("/api/v1/tasks", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["code"], code);
        assert_eq!(answer["field"], "max_revisions");
    }
}

/// In-process agents validate too: `worker.validate.command` judges every submission,
/// never on the agent that did the work; one that always says no spends the revisions.
#[tokio::test(flavor = "multi_thread")]
async fn in_process_agents_validate_each_others_work() {
    use omoi_orchestrator::{Work, Worker, WorkerConfig};
    let app = spawn_app().await;
    let (_, project) = app
        .organization_and_project_with(json!({"auto_spawn_tasks": false}))
        .await;
    let ticket = app.ticket(&project, "Checkout").await;
    let good = app
        .task(&ticket, "Good work", json!({"validation": true}))
        .await;
    let bad = app
        .task(
            &ticket,
            "Bad work",
            json!({"validation": true, "max_revisions": 1}),
        )
        .await;
    let directory = std::env::temp_dir().join(format!("omoi-validate-{}", Uuid::now_v7()));
    let worker = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Command("echo done".into()),
            // Rejects what a task titled "Bad …" submitted, passes the rest.
            validate: Work::Command(
                "case \"$OMOI_TASK_TITLE\" in 'Validate: Bad'*) echo 'still bad'; exit 1;; esac"
                    .into(),
            ),
            poll_interval_ms: 100,
            check_interval_ms: 200,
            work_dir: directory.join("work"),
            ..WorkerConfig::default()
        },
    );
    app.until_task_status(&good, "completed").await;
    let failed = app.until_task_status(&bad, "permanently_failed").await;
    worker.stop().await;
    let _ = std::fs::remove_dir_all(&directory);
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("still bad")),
        "{failed}"
    );
    // Every validation ran on an agent other than the one whose work it judged.
    for (task, rounds) in [(&good, 1), (&bad, 2)] {
        for revision in 0..rounds {
            let (_, validation) = validation_of(&app, task, revision).await;
            let implementer = &validation["validates"]["implementer_agent_id"];
            assert!(implementer.is_string(), "{validation}");
            assert_ne!(
                &validation["assigned_agent_id"], implementer,
                "{validation}"
            );
            assert_eq!(validation["status"], "completed");
        }
    }
}
