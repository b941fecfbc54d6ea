//! The claim cycle of HTTP agents through its failure paths, against a real server and
//! PostgreSQL: a claimed task that fails, times out or is cancelled frees its agent and
//! its organization's place under the plan's cap, and comes back to be claimed again
//! once its retry falls due. The organization of every test is on the free plan (one
//! task held at a time) and its agents have capacity 1, so a place that is never given
//! back shows at once as a claim answered 204.

use std::time::Duration;

use omoi_orchestrator::{Work, Worker, WorkerConfig};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// Long enough for any retry backoff of a first or second attempt (at most 2.5 s).
const WAIT_SECONDS: u64 = 10;

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_whose_claimed_task_failed_claims_the_next_task_and_then_the_retry() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let first = app.task(&ticket, "first", json!({})).await;
    let second = app.task(&ticket, "second", json!({})).await;

    assert_eq!(agent.claim(&app, 5).await, Some(first.clone()));
    agent.must(&app, &first, "start", json!({})).await;
    agent
        .must(
            &app,
            &first,
            "fail",
            json!({"error": "the network blinked"}),
        )
        .await;
    assert_eq!(app.task_state(&first).await["status"], "retry_scheduled");

    // The failed task's place is free again: the pending one is claimed at once.
    assert_eq!(agent.claim(&app, WAIT_SECONDS).await, Some(second.clone()));
    agent.must(&app, &second, "start", json!({})).await;
    agent
        .must(&app, &second, "complete", json!({"result": {"ok": true}}))
        .await;
    // And the retry, once due.
    assert_eq!(agent.claim(&app, WAIT_SECONDS).await, Some(first.clone()));
    agent.must(&app, &first, "start", json!({})).await;
    agent
        .must(&app, &first, "complete", json!({"result": {"ok": true}}))
        .await;
    assert_eq!(app.task_state(&first).await["status"], "completed");
    assert_eq!(agent.claim(&app, 0).await, None, "nothing is left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_task_that_timed_out_is_claimed_again() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    // A worker serving no organization of this test: it only sweeps timeouts.
    let sweeper = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Nothing,
            organizations: vec![Uuid::now_v7()],
            check_interval_ms: 100,
            poll_interval_ms: 100,
            ..WorkerConfig::default()
        },
    );
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let slow = app
        .task(&ticket, "slow", json!({"timeout_seconds": 1}))
        .await;

    assert_eq!(agent.claim(&app, 5).await, Some(slow.clone()));
    agent.must(&app, &slow, "start", json!({})).await;
    app.until_task_status(&slow, "retry_scheduled").await;
    assert_eq!(agent.claim(&app, WAIT_SECONDS).await, Some(slow.clone()));
    agent.must(&app, &slow, "start", json!({})).await;
    agent
        .must(&app, &slow, "complete", json!({"result": {"ok": true}}))
        .await;
    assert_eq!(app.task_state(&slow).await["status"], "completed");
    sweeper.stop().await;
}

/// Found by `omoi-bench chaos`: a replica SIGKILLed after a claim's assignment committed and
/// before its answer was sent left the task assigned to an agent that never heard of it,
/// heartbeating on, with its capacity taken: held for ever. Here the agent "loses" the
/// answer by ignoring it.
#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_task_whose_answer_was_lost_goes_back_to_the_queue_and_is_claimed_again() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    // A worker serving no organization of this test: it only sweeps.
    let sweeper = Worker::start(
        app.database.pool.clone(),
        WorkerConfig {
            work: Work::Nothing,
            organizations: vec![Uuid::now_v7()],
            start_within_ms: 500,
            check_interval_ms: 100,
            poll_interval_ms: 100,
            ..WorkerConfig::default()
        },
    );
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let lost = app.task(&ticket, "lost", json!({})).await;

    assert_eq!(agent.claim(&app, 5).await, Some(lost.clone()));
    app.until_task_status(&lost, "retry_scheduled").await;
    // The second attempt is started at once; no sweep can race it.
    sweeper.stop().await;
    assert_eq!(agent.claim(&app, WAIT_SECONDS).await, Some(lost.clone()));
    agent.must(&app, &lost, "start", json!({})).await;
    agent
        .must(&app, &lost, "complete", json!({"result": {"ok": true}}))
        .await;
    assert_eq!(app.task_state(&lost).await["status"], "completed");
    let (status, history) = app.get(&format!("/api/v1/tasks/{lost}/history")).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let failed = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event_type"] == "TaskFailed")
        .expect("the first attempt failed");
    let error = failed["payload"]["TaskFailed"]["error"]
        .as_str()
        .expect("an error");
    assert!(error.contains("did not start it within 500 ms"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_claimed_task_that_was_cancelled_frees_its_agent() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let dropped = app
        .task(&ticket, "dropped", json!({"priority": "HIGH"}))
        .await;
    let next = app.task(&ticket, "next", json!({"priority": "LOW"})).await;

    assert_eq!(agent.claim(&app, 5).await, Some(dropped.clone()));
    agent.must(&app, &dropped, "start", json!({})).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{dropped}/cancel"),
            json!({"reason": "not needed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(agent.claim(&app, WAIT_SECONDS).await, Some(next));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_organization_at_its_cap_gets_its_place_back_when_a_claimed_task_fails() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (one, other) = (
        app.register_agent(&organization).await,
        app.register_agent(&organization).await,
    );
    let ticket = app.ticket(&project, "Work").await;
    let first = app.task(&ticket, "first", json!({})).await;
    let second = app.task(&ticket, "second", json!({})).await;

    assert_eq!(one.claim(&app, 5).await, Some(first.clone()));
    // The free plan holds one task at a time.
    assert_eq!(other.claim(&app, 1).await, None);
    one.must(&app, &first, "start", json!({})).await;
    one.must(&app, &first, "fail", json!({"error": "flaky test"}))
        .await;
    assert_eq!(other.claim(&app, WAIT_SECONDS).await, Some(second.clone()));
    assert_eq!(one.claim(&app, 1).await, None, "the cap holds again");
    other.must(&app, &second, "start", json!({})).await;
    other
        .must(&app, &second, "complete", json!({"result": {}}))
        .await;
    assert_eq!(one.claim(&app, WAIT_SECONDS).await, Some(first));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_waiting_for_its_blocking_discovery_gives_its_place_to_the_discovery() {
    // The free plan runs one task at a time: the parent, waiting for the work it found,
    // would otherwise hold the only place the work needs.
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (finder, helper, bystander) = (
        app.register_agent(&organization).await,
        app.register_agent(&organization).await,
        app.register_agent(&organization).await,
    );
    let ticket = app.ticket(&project, "Work").await;
    let parent = app.task(&ticket, "parent", json!({})).await;
    assert_eq!(finder.claim(&app, WAIT_SECONDS).await, Some(parent.clone()));
    finder.must(&app, &parent, "start", json!({})).await;

    let (status, found) = finder
        .post(
            &app,
            &format!("/api/v1/tasks/{parent}/discoveries"),
            json!({"kind": "dependency", "title": "Upgrade the SDK", "blocks_parent": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{found}");
    let discovery = omoi_testing::id_of(&found);
    assert_eq!(
        helper.claim(&app, WAIT_SECONDS).await,
        Some(discovery.clone())
    );
    // The discovery holds the place now: other work waits.
    let other = app.task(&ticket, "other", json!({})).await;
    assert_eq!(bystander.claim(&app, 1).await, None);

    helper.must(&app, &discovery, "start", json!({})).await;
    helper
        .must(&app, &discovery, "complete", json!({"result": {}}))
        .await;
    // Released, the parent holds its place again and completes; then the other work runs.
    app.eventually(&format!("/api/v1/tasks/{parent}"), |body| {
        body["state"]["open_discoveries"] == json!([])
    })
    .await;
    assert_eq!(
        bystander.claim(&app, 1).await,
        None,
        "the parent's place again"
    );
    finder
        .must(&app, &parent, "complete", json!({"result": {}}))
        .await;
    assert_eq!(bystander.claim(&app, WAIT_SECONDS).await, Some(other));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_may_have_only_a_few_claims_waiting() {
    let app = omoi_testing::spawn_app().await;
    let (organization, _) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let path = format!("/api/v1/agents/{}/claim", agent.id);
    let waiting = (0..4).map(|_| agent.post(&app, &path, json!({"wait_seconds": 3})));
    let one_more = async {
        // The four are waiting by now.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        agent.post(&app, &path, json!({"wait_seconds": 3})).await
    };
    let (answers, (status, body)) = tokio::join!(futures_util::future::join_all(waiting), one_more);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "too_many_requests", "{body}");
    for (status, body) in answers {
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
    // Once they have answered, the agent claims again.
    assert_eq!(agent.claim(&app, 0).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_cannot_start_an_unassigned_task_nor_assign_itself_one() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let id = app
        .task(
            &ticket,
            "gpu work",
            json!({"required_capabilities": ["gpu"]}),
        )
        .await;

    let (status, body) = agent
        .post(&app, &format!("/api/v1/tasks/{id}/start"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "task_not_assigned", "{body}");
    // Assigning itself would skip the capabilities and the plan's cap that claims keep to.
    let (status, body) = agent
        .post(
            &app,
            &format!("/api/v1/tasks/{id}/assign"),
            json!({"agent_id": agent.id}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // A person is refused too while the agent lacks the capability.
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{id}/assign"),
            json!({"agent_id": agent.id}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "missing_capabilities", "{body}");
    assert_eq!(app.task_state(&id).await["status"], "pending");
}

/// A claim whose agent's lease cannot be written (the table away: a fault injected into
/// the real database) fails with a problem and assigns nothing; once the lease can be
/// written again, the same task is claimed, and the agent holds a lease for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_whose_lease_cannot_be_written_assigns_nothing() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "only", json!({})).await;
    let pool = &app.database.pool;
    sqlx::query("alter table agent_leases rename to agent_leases_away")
        .execute(pool)
        .await
        .expect("the leases away");
    // Waiting: the claims' queue may not have read the task yet (a 204 then).
    let (status, body) = agent
        .post(
            &app,
            &format!("/api/v1/agents/{}/claim", agent.id),
            json!({"wait_seconds": 10}),
        )
        .await;
    sqlx::query("alter table agent_leases_away rename to agent_leases")
        .execute(pool)
        .await
        .expect("the leases back");
    assert!(status.is_server_error(), "{status}: {body}");
    assert!(body["detail"].is_string(), "{body}");
    still_pending(&app, &task).await;

    assert_eq!(agent.claim(&app, 5).await, Some(task.clone()));
    let leased: bool =
        sqlx::query_scalar("select exists(select 1 from agent_leases where agent_id = $1)")
            .bind(Uuid::parse_str(&agent.id).expect("an id"))
            .fetch_one(pool)
            .await
            .expect("the lease");
    assert!(leased, "the agent holding work has a lease");
}

/// `agent`'s claim, waiting up to `seconds` for a task, under way.
fn waiting_claim(
    app: &std::sync::Arc<omoi_testing::TestApp>,
    agent: &std::sync::Arc<omoi_testing::Agent>,
    seconds: u64,
) -> tokio::task::JoinHandle<(StatusCode, serde_json::Value)> {
    let (app, agent) = (app.clone(), agent.clone());
    tokio::spawn(async move {
        let path = format!("/api/v1/agents/{}/claim", agent.id);
        agent
            .post(&app, &path, json!({"wait_seconds": seconds}))
            .await
    })
}

/// Asserts `task` waits for an agent still, assigned to none.
async fn still_pending(app: &omoi_testing::TestApp, task: &str) {
    let state = app.task_state(task).await;
    assert_eq!(
        (&state["status"], &state["assigned_agent_id"]),
        (&json!("pending"), &serde_json::Value::Null),
        "{state}"
    );
}

/// A claim checks its agent again as it takes a task: one that waited while its agent was
/// quarantined takes nothing (409 `agent_unavailable`), and the task stays for others.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_that_waited_while_its_agent_was_quarantined_takes_nothing() {
    let app = std::sync::Arc::new(omoi_testing::spawn_app().await);
    let (organization, project) = app.organization_and_project().await;
    let agent = std::sync::Arc::new(app.register_agent(&organization).await);
    let ticket = app.ticket(&project, "Work").await;
    // Its first heartbeat makes it idle (a spawning agent is not quarantined).
    agent.heartbeat(&app).await;
    let waiting = waiting_claim(&app, &agent, WAIT_SECONDS);
    // The claim is waiting (nothing is ready) when the agent is quarantined.
    app.until_claims_waiting(1).await;
    let (status, body) = app
        .post(
            "/api/v1/guardian/interventions",
            json!({"kind": "quarantine", "agent_id": agent.id, "reason": "looping"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let task = app.task(&ticket, "ready now", json!({})).await;
    let (status, body) = waiting.await.expect("the claim answers");
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_unavailable")),
        "{body}"
    );
    still_pending(&app, &task).await;
}

/// An agent quarantined after its claim read it, but before the claim's assignment
/// committed, is given nothing: the assignment is withdrawn (`TaskAssignmentWithdrawn`,
/// the attempt not counted, the agent not barred) and the claim answers 409. Before, the
/// quarantined agent got the task. The claim is held between its read of the agent and
/// its assignment by a lock on the agent's lease, which it renews in between.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_quarantined_while_its_claim_assigns_is_given_nothing() {
    let app = std::sync::Arc::new(omoi_testing::spawn_app().await);
    let (organization, project) = app.organization_and_project().await;
    let agent = std::sync::Arc::new(app.register_agent(&organization).await);
    let ticket = app.ticket(&project, "Work").await;
    // Its first heartbeat makes it idle, and makes its lease.
    agent.heartbeat(&app).await;
    let task = app.task(&ticket, "ready", json!({})).await;
    let pool = &app.database.pool;
    let mut lease = pool.begin().await.expect("a transaction");
    sqlx::query("select 1 from agent_leases where agent_id = $1 for update")
        .bind(Uuid::parse_str(&agent.id).expect("an id"))
        .execute(&mut *lease)
        .await
        .expect("the lease locked");
    let claim = waiting_claim(&app, &agent, 5);
    // The claim has read the agent (idle) and waits to renew its lease.
    app.until_lock_waiters(1).await;
    let (status, body) = app
        .post(
            "/api/v1/guardian/interventions",
            json!({"kind": "quarantine", "agent_id": agent.id, "reason": "looping"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    lease.commit().await.expect("the lease let go");

    let (status, body) = claim.await.expect("the claim answers");
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_unavailable")),
        "{body}"
    );
    still_pending(&app, &task).await;
    let (status, history) = app.get(&format!("/api/v1/tasks/{task}/history")).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["TaskCreated", "TaskAssigned", "TaskAssignmentWithdrawn"],
        "assigned, then withdrawn"
    );
    assert_eq!(
        app.task_state(&task).await["retry_count"],
        0,
        "no attempt counted"
    );
    // Released, the agent takes the task after all: nothing bars it.
    let (status, body) = app
        .post(
            "/api/v1/guardian/interventions",
            json!({"kind": "release", "agent_id": agent.id, "reason": "fixed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(agent.claim(&app, WAIT_SECONDS).await, Some(task.clone()));
}

/// A claim checks its credential again as it takes a task: one revoked while the claim
/// waited (here the agent's key; its creator removed or demoted alike) takes nothing
/// (401), and the task stays for others.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_whose_credential_was_revoked_while_it_waited_takes_nothing() {
    let app = std::sync::Arc::new(omoi_testing::spawn_app().await);
    let (organization, project) = app.organization_and_project().await;
    let agent = std::sync::Arc::new(app.register_agent(&organization).await);
    let ticket = app.ticket(&project, "Work").await;
    let waiting = waiting_claim(&app, &agent, 60);
    app.until_claims_waiting(1).await;
    let (status, keys) = app.get("/api/v1/auth/api-keys").await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let key = keys
        .as_array()
        .expect("a list")
        .iter()
        .find(|key| key["name"].as_str().is_some_and(|n| n.contains(&agent.id)))
        .unwrap_or_else(|| panic!("the agent's key in {keys}"));
    let (status, body) = app
        .delete(&format!(
            "/api/v1/auth/api-keys/{}",
            key["id"].as_str().expect("an id")
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let task = app.task(&ticket, "ready now", json!({})).await;
    let (status, body) = waiting.await.expect("the claim answers");
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    still_pending(&app, &task).await;
}

/// A server shutting down answers its waiting claims at once (204, nothing taken) rather
/// than hold its drain until their deadline (here a minute).
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_claim_answers_nothing_when_the_server_shuts_down() {
    let app = omoi_testing::spawn_app().await;
    let (organization, _) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let claim = app
        .client
        .post(format!("{}/api/v1/agents/{}/claim", app.address, agent.id))
        .bearer_auth(&agent.credential)
        .json(&json!({"wait_seconds": 60}))
        .send();
    let waiting = tokio::spawn(claim);
    app.until_claims_waiting(1).await;
    let stopping = tokio::spawn(app.stop());
    // Not a speed figure: half the claim's deadline tells "answered at the shutdown"
    // from "answered when its minute ran out".
    let answer = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the claim answered at the shutdown, not at its deadline")
        .expect("the claim's task")
        .expect("an answer");
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    stopping.await.expect("the server stopped");
}

/// The claims queue follows the hub's broadcast; fallen behind it (a burst of other
/// organizations' events in one commit), it reads what it missed from the log after the
/// last event it applied — it used to replay the whole log — and a claim still gets the
/// task made after the burst.
#[tokio::test(flavor = "multi_thread")]
async fn the_claims_queue_behind_the_hubs_broadcast_catches_up_from_where_it_was() {
    let app = omoi_testing::spawn_app_with(omoi_api::live::LiveConfig {
        broadcast_capacity: 8,
        batch_size: 500,
        ..omoi_testing::test_live_config()
    })
    .await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    // The queue starts following at the first claim.
    assert_eq!(agent.claim(&app, 0).await, None);
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         select 'Probe', 'burst-' || n, 1, 'ProbeBurst', '1', '{}', '{}'
           from generate_series(1, 2000) n",
    )
    .execute(&app.database.pool)
    .await
    .expect("the burst");
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "after the burst", json!({})).await;
    assert_eq!(agent.claim(&app, WAIT_SECONDS).await, Some(task));
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let catch_ups: u64 = metrics
        .as_str()
        .expect("the text exposition")
        .lines()
        .find_map(|line| line.strip_prefix("omoi_live_follower_catch_ups_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("the counter");
    assert!(catch_ups >= 1, "{catch_ups}");
}

/// An assignment the task refuses (here: a cancelled task) starts no lease for its agent:
/// a lease left to an agent that never heartbeated and holds nothing would fail the agent
/// once it expired. An assignment the task takes starts one.
#[tokio::test(flavor = "multi_thread")]
async fn an_assignment_the_task_refuses_starts_no_lease_for_its_agent() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let cancelled = app.task(&ticket, "cancelled", json!({})).await;
    let (status, body) = app
        .post(&format!("/api/v1/tasks/{cancelled}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let leased = || async {
        sqlx::query_scalar::<_, bool>(
            "select exists(select 1 from agent_leases where agent_id = $1)",
        )
        .bind(Uuid::parse_str(&agent.id).expect("an id"))
        .fetch_one(&app.database.pool)
        .await
        .expect("the lease")
    };

    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{cancelled}/assign"),
            json!({"agent_id": agent.id}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "illegal_transition", "{body}");
    assert!(!leased().await, "a refused assignment started a lease");

    let pending = app.task(&ticket, "pending", json!({})).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{pending}/assign"),
            json!({"agent_id": agent.id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(leased().await, "the agent holding work has a lease");
}

/// A key limited to one project is answered about another project's agent as about an
/// agent that does not exist (404, the same problem), not with a 422 telling it exists.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_one_project_cannot_tell_another_projects_agent_from_none() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let other = app
        .create(
            "/api/v1/projects",
            json!({"organization_id": organization, "name": "Elsewhere"}),
        )
        .await;
    let (status, elsewhere) = app
        .post(
            "/api/v1/agents/register",
            json!({"organization_id": organization, "project_id": other, "agent_type": "worker"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{elsewhere}");
    let (status, key) = app
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "ci", "organization_id": organization, "project_id": project, "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().expect("the key");
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "work", json!({})).await;

    let mut answers = Vec::new();
    for agent in [elsewhere["id"].clone(), json!(Uuid::now_v7())] {
        let (status, body) = app
            .send_as(
                Some(key),
                reqwest::Method::POST,
                &format!("/api/v1/tasks/{task}/assign"),
                Some(json!({"agent_id": agent})),
            )
            .await;
        answers.push((status, body["code"].clone(), body["detail"].clone()));
    }
    assert_eq!(answers[0], answers[1], "{answers:?}");
    assert_eq!(answers[0].0, StatusCode::NOT_FOUND, "{answers:?}");
    still_pending(&app, &task).await;
}

/// A person's assignment right after the organization's one held task completed is made,
/// even while a transaction open elsewhere holds the completion back from the gapless
/// stream the claims' queue follows: before refusing at the plan's cap (free plan: one
/// task at a time), the tasks the queue counts are asked of their own histories.
#[tokio::test(flavor = "multi_thread")]
async fn an_assignment_after_a_completion_held_back_from_the_stream_is_made() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (first_agent, second_agent) = (
        app.register_agent(&organization).await,
        app.register_agent(&organization).await,
    );
    let ticket = app.ticket(&project, "Work").await;
    let first = app.task(&ticket, "first", json!({})).await;
    let second = app.task(&ticket, "second", json!({})).await;
    let assign = |task: &str, agent: &str| {
        let (path, body) = (
            format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": agent}),
        );
        let app = &app;
        async move { app.post(&path, body).await }
    };
    let (status, body) = assign(&first, &first_agent.id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    first_agent.must(&app, &first, "start", json!({})).await;
    // Held while the second is refused, so that the queue surely counts the first.
    let (status, refused) = assign(&second, &second_agent.id).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");

    // A transaction with an id, open: the completion commits after it, and the gapless
    // stream hands nothing after that id over until it ends.
    let held = omoi_testing::held_transaction(&app.database.pool).await;
    first_agent
        .must(&app, &first, "complete", json!({"result": {"ok": true}}))
        .await;
    let (status, body) = assign(&second, &second_agent.id).await;
    held.rollback().await.expect("let go");
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A step of `agent` on `task` (`POST /api/v1/tasks/{task}/{action}`) naming its
/// assignment by the `assigned_at` its claim answered.
async fn step(
    app: &omoi_testing::TestApp,
    agent: &omoi_testing::Agent,
    task: &str,
    action: &str,
    assignment: &str,
    body: serde_json::Value,
) -> (StatusCode, serde_json::Value) {
    let request = app
        .client
        .post(app.url(&format!("/api/v1/tasks/{task}/{action}")))
        .bearer_auth(&agent.credential)
        .header("Omoi-Assignment", assignment)
        .json(&body);
    app.send_raw(request).await
}

/// The same agent may hold a task again — its earlier run failed, and it claimed the
/// retry — while that earlier run still reports (an agent running several tasks at
/// once). A step naming the earlier assignment (`Omoi-Assignment`: the `assigned_at` its
/// claim answered) is refused, 409 `assignment_superseded`, and changes nothing; the
/// later run's steps stand. Before, the earlier run's late completion completed the later
/// attempt, whose own outcome was then refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_of_an_earlier_assignment_of_the_same_agent_is_refused() {
    let app = omoi_testing::spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let agent = app.register_agent(&organization).await;
    let ticket = app.ticket(&project, "Work").await;
    let task = app.task(&ticket, "flaky", json!({})).await;
    let claim = || async {
        let (status, claimed) = agent
            .post(
                &app,
                &format!("/api/v1/agents/{}/claim", agent.id),
                json!({"wait_seconds": WAIT_SECONDS}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{claimed}");
        assert_eq!(claimed["id"], task.as_str(), "{claimed}");
        claimed["state"]["assigned_at"]
            .as_str()
            .expect("the claim answers its assigned_at")
            .to_string()
    };

    let earlier = claim().await;
    let ok = |answer: (StatusCode, serde_json::Value)| {
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
    };
    ok(step(&app, &agent, &task, "start", &earlier, json!({})).await);
    ok(step(
        &app,
        &agent,
        &task,
        "fail",
        &earlier,
        json!({"error": "the network blinked"}),
    )
    .await);
    let later = claim().await;
    assert_ne!(later, earlier);
    ok(step(&app, &agent, &task, "start", &later, json!({})).await);

    let before = app.task_history(&task).await.len();
    for (action, body) in [
        ("progress", json!({"message": "still going"})),
        ("logs", json!({"lines": ["a line of the earlier run"]})),
        ("complete", json!({"result": {"from": "the earlier run"}})),
        ("fail", json!({"error": "the earlier run gave up"})),
    ] {
        let (status, refusal) = step(&app, &agent, &task, action, &earlier, body).await;
        assert_eq!(
            (status, refusal["code"].as_str()),
            (StatusCode::CONFLICT, Some("assignment_superseded")),
            "{action}: {refusal}"
        );
    }
    assert_eq!(
        app.task_history(&task).await.len(),
        before,
        "nothing was recorded"
    );
    let (status, refusal) = step(
        &app,
        &agent,
        &task,
        "complete",
        "yesterday",
        json!({"result": {}}),
    )
    .await;
    assert_eq!(
        (status, refusal["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Omoi-Assignment")),
        "{refusal}"
    );

    let (status, completed) = step(
        &app,
        &agent,
        &task,
        "complete",
        &later,
        json!({"result": {"from": "the later run"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{completed}");
    assert_eq!(completed["state"]["status"], "completed", "{completed}");
}
