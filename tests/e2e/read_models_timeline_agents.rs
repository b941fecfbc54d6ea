//! End to end: the activity timeline and the agents view follow the commands issued over
//! HTTP (through the projection runner), filter in SQL, page both ways without missing or
//! repeating an entry, and show nothing of other organizations.

use chrono::{DateTime, Utc};
use omoi_testing::{id_of, spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn entries(page: &Value) -> Vec<Value> {
    page["entries"].as_array().cloned().unwrap_or_default()
}

fn event_types(page: &Value) -> Vec<String> {
    entries(page)
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn cursors(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|e| e["cursor"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn position(entry: &Value) -> (i64, i64) {
    (
        entry["transaction_id"].as_i64().expect("a transaction id"),
        entry["global_position"].as_i64().expect("a position"),
    )
}

async fn my_actor(app: &TestApp) -> String {
    let (status, me) = app.get("/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{me}");
    format!("user:{}", me["id"].as_str().expect("my id"))
}

/// A ticket moved twice, a task run to completion by a project agent (with a progress
/// report, which is not an entry). Returns (ticket, task, agent).
async fn a_small_story(app: &TestApp, project_id: &str, org_id: &str) -> (String, String, String) {
    let ticket = app
        .must(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "Login page"}),
            StatusCode::CREATED,
        )
        .await;
    let ticket_id = id_of(&ticket);
    for to in ["analyzing", "building"] {
        let path = format!("/api/v1/tickets/{ticket_id}/transition");
        app.must(&path, json!({"to": to}), StatusCode::OK).await;
    }
    let task = app
        .must(
            "/api/v1/tasks",
            json!({"ticket_id": ticket_id, "title": "Write the form", "task_type": "implement"}),
            StatusCode::CREATED,
        )
        .await;
    let task_id = id_of(&task);
    let agent = app
        .must(
            "/api/v1/agents/register",
            json!({"organization_id": org_id, "project_id": project_id, "name": "worker-1",
               "agent_type": "worker"}),
            StatusCode::CREATED,
        )
        .await;
    let agent_id = id_of(&agent);
    let task_path = format!("/api/v1/tasks/{task_id}");
    app.must(
        &format!("{task_path}/assign"),
        json!({"agent_id": agent_id}),
        StatusCode::OK,
    )
    .await;
    app.must(&format!("{task_path}/start"), json!({}), StatusCode::OK)
        .await;
    let progress = json!({"message": "half way"});
    app.must(&format!("{task_path}/progress"), progress, StatusCode::OK)
        .await;
    app.must(
        &format!("{task_path}/complete"),
        json!({"result": {}}),
        StatusCode::OK,
    )
    .await;
    (ticket_id, task_id, agent_id)
}

/// Newest first. The project's tickets move by hand only (`auto_advance` off): the story
/// is the person's.
const STORY: [&str; 10] = [
    "TaskCompleted",
    "TaskStarted",
    "TaskAssigned",
    "AgentRegistered",
    "TaskCreated",
    "TicketStatusChanged",
    "TicketStatusChanged",
    "TicketCreated",
    "ProjectSettingsChanged",
    "ProjectCreated",
];

#[tokio::test(flavor = "multi_thread")]
async fn the_timeline_tells_a_projects_story_newest_first_with_human_summaries() {
    let app = spawn_app().await;
    let (org_id, project_id) = app.organization_and_manual_project().await;
    let (_, task_id, _) = a_small_story(&app, &project_id, &org_id).await;
    let base = format!("/api/v1/timeline?project_id={project_id}");

    let page = app
        .eventually(&format!("{base}&limit=200"), |p| {
            event_types(p).first().map(String::as_str) == Some("TaskCompleted")
        })
        .await;
    assert_eq!(event_types(&page), STORY, "{page}");
    let all = entries(&page);
    let positions: Vec<_> = all.iter().map(position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] > w[1]),
        "newest first: {positions:?}"
    );
    let actor = my_actor(&app).await;
    for entry in &all {
        assert_eq!(entry["organization_id"], org_id.as_str());
        assert_eq!(entry["project_id"], project_id.as_str());
        assert_eq!(entry["actor"], actor.as_str());
        assert!(entry["occurred_at"].is_string(), "{entry}");
    }
    let summaries: Vec<&str> = all.iter().filter_map(|e| e["summary"].as_str()).collect();
    for expected in [
        "Ticket \"Login page\" moved analyzing → building",
        "Task \"Write the form\" assigned to Agent \"worker-1\"",
        "Task \"Write the form\" completed",
        "Project \"Website\" created",
    ] {
        assert!(
            summaries.contains(&expected),
            "{expected:?} in {summaries:?}"
        );
    }
    assert_eq!(page["next_before"], Value::Null, "nothing is older: {page}");
    assert_eq!(page["next_after"], all[0]["cursor"]);

    let count = |query: String| {
        let app = &app;
        async move {
            let (status, page) = app.get(&query).await;
            assert_eq!(status, StatusCode::OK, "{query}: {page}");
            entries(&page).len()
        }
    };
    assert_eq!(
        count(format!("{base}&event_type=TicketStatusChanged")).await,
        2
    );
    assert_eq!(
        count(format!("{base}&entity_type=task&entity_id={task_id}")).await,
        4
    );
    assert_eq!(count(format!("{base}&entity_type=agent")).await, 1);
    assert_eq!(
        count(format!("{base}&entity_type=ticket&event_type=TaskCreated")).await,
        0
    );
    assert_eq!(count(format!("{base}&actor={actor}")).await, STORY.len());
    let nobody = "user:00000000-0000-0000-0000-000000000000";
    assert_eq!(count(format!("{base}&actor={nobody}")).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_the_timeline_either_way_misses_and_repeats_nothing() {
    let app = spawn_app().await;
    let (org_id, project_id) = app.organization_and_manual_project().await;
    let (ticket_id, _, _) = a_small_story(&app, &project_id, &org_id).await;
    let base = format!("/api/v1/timeline?project_id={project_id}");
    let full = app
        .eventually(&format!("{base}&limit=200"), |p| {
            entries(p).len() == STORY.len()
        })
        .await;
    let newest_first = cursors(&entries(&full));

    // Older and older, from the newest page.
    let mut seen = Vec::new();
    let mut query = format!("{base}&limit=2");
    loop {
        let (status, page) = app.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(cursors(&entries(&page)));
        match page["next_before"].as_str() {
            Some(before) => query = format!("{base}&limit=2&before={before}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    // Newer and newer, from the beginning; each page is itself newest first.
    let mut seen = Vec::new();
    let mut after = "0-0".to_string();
    loop {
        let (status, page) = app.get(&format!("{base}&limit=2&after={after}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let mut batch = cursors(&entries(&page));
        after = page["next_after"].as_str().expect("next_after").to_string();
        if batch.is_empty() {
            break;
        }
        batch.reverse();
        seen.extend(batch);
    }
    let mut oldest_first = newest_first.clone();
    oldest_first.reverse();
    assert_eq!(seen, oldest_first);
    assert_eq!(after, newest_first[0], "an empty page keeps its cursor");

    // A window between two cursors, paged backwards: exactly the entries strictly
    // between them, newest first.
    let (upper, lower) = (&newest_first[0], &newest_first[newest_first.len() - 1]);
    let mut seen = Vec::new();
    let mut before = upper.clone();
    loop {
        let query = format!("{base}&limit=2&before={before}&after={lower}");
        let (status, page) = app.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(cursors(&entries(&page)));
        match page["next_before"].as_str() {
            Some(next) => before = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, newest_first[1..newest_first.len() - 1]);

    // Following `next_after` picks up what happens next, and only that.
    let path = format!("/api/v1/tickets/{ticket_id}/transition");
    app.must(&path, json!({"to": "building-done"}), StatusCode::OK)
        .await;
    let newer = app
        .eventually(&format!("{base}&after={after}"), |p| !entries(p).is_empty())
        .await;
    let news = entries(&newer);
    assert_eq!(news.len(), 1, "{newer}");
    assert_eq!(
        news[0]["summary"],
        "Ticket \"Login page\" moved building → building-done"
    );
}

/// The summaries of the entries of `page`, newest first.
fn summaries(page: &Value) -> Vec<String> {
    entries(page)
        .iter()
        .map(|e| e["summary"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// An entry names its entity by the title it had when its event happened (the read model
/// keeps each entity's history of titles; the entries are the log's events): a renamed
/// ticket's earlier entries keep its old name. An entry is served once the timeline's
/// build has applied its event, not as soon as it is in the log. A rebuild of the read
/// model (folded from the start, as `omoi projections rebuild timeline` does) serves the
/// same pages.
#[tokio::test(flavor = "multi_thread")]
async fn entries_name_what_their_events_saw_and_appear_once_the_timeline_has_applied_them() {
    let app = spawn_app().await;
    let (_, project_id) = app.organization_and_manual_project().await;
    let ticket = app.ticket(&project_id, "Login page").await;
    let rename = |title: &'static str| {
        let app = &app;
        let path = format!("/api/v1/tickets/{ticket}");
        async move {
            let (status, body) = app.patch(&path, json!({"title": title})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    rename("Sign-in page").await;
    let transition = format!("/api/v1/tickets/{ticket}/transition");
    app.must(&transition, json!({"to": "analyzing"}), StatusCode::OK)
        .await;
    let base = format!("/api/v1/timeline?project_id={project_id}&entity_type=ticket");
    let page = app
        .eventually(&base, |p| {
            event_types(p).first().map(String::as_str) == Some("TicketStatusChanged")
        })
        .await;
    let story = [
        "Ticket \"Sign-in page\" moved backlog → analyzing",
        "Ticket \"Login page\" updated: title \"Sign-in page\"",
        "Ticket \"Login page\" created",
    ];
    assert_eq!(summaries(&page), story, "{page}");

    // Held at its titles, the build applies nothing more: a rename in the log is not on
    // the timeline until the build has applied it.
    let held = app.hold_read_model("timeline", "share").await;
    rename("Sign-up page").await;
    let (_, history) = app.get(&format!("/api/v1/tickets/{ticket}/history")).await;
    let in_the_log = history["events"].as_array().expect("events").len();
    assert_eq!(in_the_log, 4, "{history}");
    let (status, now) = app.get(&base).await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert_eq!(summaries(&now), story, "{now}");
    held.rollback().await.expect("let go");
    let page = app
        .eventually(&base, |p| {
            event_types(p).first().map(String::as_str) == Some("TicketUpdated")
        })
        .await;
    assert_eq!(
        summaries(&page)[0],
        "Ticket \"Sign-in page\" updated: title \"Sign-up page\""
    );

    // A rebuild from the start serves the same page.
    let build = omoi_testing::rebuild_read_model(&app.database, "timeline", 500).await;
    let pool = &app.database.pool;
    let live: i64 = sqlx::query_scalar(
        "select build from projector_builds where projector = 'timeline' and state = 'live'",
    )
    .fetch_one(pool)
    .await
    .expect("the live build");
    assert_eq!(live, build, "the rebuild went live");
    let (status, rebuilt) = app.get(&base).await;
    assert_eq!(status, StatusCode::OK, "{rebuilt}");
    assert_eq!(rebuilt, page);
}

/// After an upgrade from version 2 (which copied every entry and kept only current
/// titles), its build stays live while version 3 rebuilds beside it: a read meanwhile
/// takes the entries from the log up to that build's checkpoint and names entities by the
/// titles that build has (its current ones), instead of failing on a history it lacks.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_while_a_version_2_build_is_still_live_names_entities_by_its_titles() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_manual_project().await;
    let ticket = app.ticket(&project, "Login page").await;
    let (status, body) = app
        .patch(
            &format!("/api/v1/tickets/{ticket}"),
            json!({"title": "Sign-in page"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.caught_up().await;
    // No runner from here on: the builds stay as this test makes them.
    let (database, _) = app.stop().await;
    let pool = &database.pool;
    let uuid = |id: &str| uuid::Uuid::parse_str(id).expect("an id");
    let mut tx = pool.begin().await.expect("a transaction");
    let (live, transaction_id, global_position): (i64, i64, i64) = sqlx::query_as(
        "update projector_builds set state = 'retired'
          where projector = 'timeline' and state = 'live'
          returning build, transaction_id, global_position",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("the live build retired");
    let old: i64 = sqlx::query_scalar(
        "insert into projector_builds (projector, code_version, state, transaction_id,
                                       global_position)
         values ('timeline', 2, 'live', $1, $2) returning build",
    )
    .bind(transaction_id)
    .bind(global_position)
    .fetch_one(&mut *tx)
    .await
    .expect("a version 2 build");
    assert_ne!(old, live);
    sqlx::raw_sql(&format!(
        "create schema rm_timeline_{old};
         create table rm_timeline_{old}.titles (
             entity_type text not null, entity_id uuid not null,
             organization_id uuid not null, project_id uuid, title text not null,
             primary key (entity_type, entity_id))"
    ))
    .execute(&mut *tx)
    .await
    .expect("its tables");
    sqlx::query(&format!(
        "insert into rm_timeline_{old}.titles values ('ticket', $1, $2, $3, 'Sign-in page')"
    ))
    .bind(uuid(&ticket))
    .bind(uuid(&organization))
    .bind(uuid(&project))
    .execute(&mut *tx)
    .await
    .expect("its titles");
    tx.commit().await.expect("committed");

    let filter = omoi_projections::timeline::TimelineFilter {
        organizations: Some(vec![uuid(&organization)]),
        project_id: Some(uuid(&project)),
        event_type: None,
        entity_type: Some(omoi_projections::timeline::EntityType::Ticket),
        entity_id: None,
        actor: None,
        page: omoi_projections::timeline::Page::Newest,
        limit: 50,
    };
    let page = omoi_projections::timeline::read(pool, &filter)
        .await
        .expect("a page");
    let summaries: Vec<&str> = page.entries.iter().map(|e| e.summary.as_str()).collect();
    assert_eq!(
        summaries,
        [
            "Ticket \"Sign-in page\" updated: title \"Sign-in page\"",
            "Ticket \"Login page\" created",
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn timeline_requests_are_checked_and_other_organizations_see_nothing() {
    let app = spawn_app().await;
    let (_, project_id) = app.organization_and_project().await;
    let base = format!("/api/v1/timeline?project_id={project_id}");
    // Only operators read every organization's timeline at once.
    let (status, problem) = app.get("/api/v1/timeline").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    assert_eq!(problem["code"], "project_required", "{problem}");
    for (query, field) in [
        (format!("{base}&before=yesterday"), "before"),
        (format!("{base}&after=+1-1"), "after"),
        (format!("{base}&limit=0"), "limit"),
        (format!("{base}&limit=201"), "limit"),
    ] {
        let (status, problem) = app.get(&query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
        assert_eq!(problem["field"], field, "{query}: {problem}");
    }
    let (status, _) = app.get(&format!("{base}&entity_type=spaceship")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let stranger = app.register_and_login("stranger@example.com").await;
    let (status, problem) = app
        .send_as(Some(&stranger), reqwest::Method::GET, &base, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}

fn agent<'a>(list: &'a Value, id: &str) -> Option<&'a Value> {
    list["agents"]
        .as_array()?
        .iter()
        .find(|a| a["agent_id"] == id)
}

fn names(list: &Value) -> Vec<String> {
    list["agents"]
        .as_array()
        .map(|agents| {
            agents
                .iter()
                .filter_map(|a| a["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("an RFC 3339 time")
}

/// Waits until agent `id` in `GET path` satisfies `done`; returns it.
async fn agent_until(app: &TestApp, path: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let list = app
        .eventually(path, |list| agent(list, id).is_some_and(&done))
        .await;
    agent(&list, id).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_view_shows_status_and_the_task_each_agent_is_working_on() {
    // Tasks are added to a ticket whose first task completed: it must stay open.
    let app = spawn_app().await;
    let (org_id, project_id) = app.organization_and_manual_project().await;
    let worker = app
        .must(
            "/api/v1/agents/register",
            json!({"organization_id": org_id, "project_id": project_id, "name": "worker-1",
               "agent_type": "worker", "capabilities": ["rust", "browser"], "capacity": 2}),
            StatusCode::CREATED,
        )
        .await;
    let worker_id = id_of(&worker);
    app.must(
        "/api/v1/agents/register",
        json!({"organization_id": org_id, "name": "monitor-1", "agent_type": "monitor"}),
        StatusCode::CREATED,
    )
    .await;
    let status_path = format!("/api/v1/agents/{worker_id}/status");
    app.must(&status_path, json!({"to": "idle"}), StatusCode::OK)
        .await;
    let ticket = app
        .must(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "Login page"}),
            StatusCode::CREATED,
        )
        .await;
    let new_task = |title: &'static str| {
        let body = json!({"ticket_id": id_of(&ticket), "title": title, "task_type": "implement"});
        let app = &app;
        async move { id_of(&app.must("/api/v1/tasks", body, StatusCode::CREATED).await) }
    };
    let first = new_task("Write the form").await;
    let assign = json!({"agent_id": worker_id});
    app.must(
        &format!("/api/v1/tasks/{first}/assign"),
        assign.clone(),
        StatusCode::OK,
    )
    .await;

    let list = "/api/v1/agents";
    let seen = agent_until(&app, list, &worker_id, |a| {
        a["current_task_id"] == first.as_str()
    })
    .await;
    assert_eq!(seen["status"], "idle");
    assert_eq!(seen["name"], "worker-1");
    assert_eq!(seen["agent_type"], "worker");
    assert_eq!(seen["capabilities"], json!(["browser", "rust"]));
    assert_eq!(seen["capacity"], 2);
    assert_eq!(seen["organization_id"], org_id.as_str());
    assert_eq!(seen["project_id"], project_id.as_str());
    assert!(time(&seen["last_status_change"]) >= time(&seen["registered_at"]));

    let (_, all) = app.get(list).await;
    assert_eq!(names(&all), ["monitor-1", "worker-1"]);
    for (query, expected) in [
        (
            format!("{list}?organization_id={org_id}"),
            vec!["monitor-1", "worker-1"],
        ),
        (format!("{list}?project_id={project_id}"), vec!["worker-1"]),
        (format!("{list}?status=idle"), vec!["worker-1"]),
        (
            format!("{list}?status=spawning&organization_id={org_id}"),
            vec!["monitor-1"],
        ),
        (format!("{list}?status=running"), vec![]),
    ] {
        let (status, body) = app.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        assert_eq!(names(&body), expected, "{query}");
    }
    let (status, _) = app.get(&format!("{list}?status=asleep")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Completing frees the agent.
    app.must(
        &format!("/api/v1/tasks/{first}/start"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    app.must(
        &format!("/api/v1/tasks/{first}/complete"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    agent_until(&app, list, &worker_id, |a| a["current_task_id"].is_null()).await;

    // So does a failed attempt, though the task will be retried.
    let second = new_task("Test the form").await;
    app.must(
        &format!("/api/v1/tasks/{second}/assign"),
        assign,
        StatusCode::OK,
    )
    .await;
    agent_until(&app, list, &worker_id, |a| {
        a["current_task_id"] == second.as_str()
    })
    .await;
    app.must(
        &format!("/api/v1/tasks/{second}/start"),
        json!({}),
        StatusCode::OK,
    )
    .await;
    let failure = json!({"error": "the build broke"});
    app.must(
        &format!("/api/v1/tasks/{second}/fail"),
        failure,
        StatusCode::OK,
    )
    .await;
    agent_until(&app, list, &worker_id, |a| a["current_task_id"].is_null()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn other_organizations_agents_are_not_listed() {
    let app = spawn_app().await;
    let (org_id, _) = app.organization_and_project().await;
    app.must(
        "/api/v1/agents/register",
        json!({"organization_id": org_id, "name": "worker-1", "agent_type": "worker"}),
        StatusCode::CREATED,
    )
    .await;
    app.eventually("/api/v1/agents", |list| names(list) == ["worker-1"])
        .await;

    let stranger = app.register_and_login("stranger@example.com").await;
    let get = |path: String| {
        let (app, stranger) = (&app, stranger.clone());
        async move {
            app.send_as(Some(&stranger), reqwest::Method::GET, &path, None)
                .await
        }
    };
    let (status, list) = get("/api/v1/agents".into()).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["agents"], json!([]));
    let (status, problem) = get(format!("/api/v1/agents?organization_id={org_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
}
