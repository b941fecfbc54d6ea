//! The Kanban board and the dependency graph end to end: commands over HTTP, the projector
//! runner of the server, the read models' routes — live, as of a past position, and with
//! the authorization of every route.
//!
//! Read models follow the log within milliseconds, so every read after a command polls
//! (at most `testing::PATIENCE`) until the view reflects it.

use omoi_testing::{id_of, spawn_app, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn column<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["columns"]
        .as_array()
        .and_then(|columns| columns.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no column {name} in {view}"))
}

fn titles(column: &Value) -> Vec<String> {
    column["cards"]
        .as_array()
        .map(|cards| {
            cards
                .iter()
                .filter_map(|c| c["title"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn node<'a>(graph: &'a Value, id: &str) -> &'a Value {
    graph["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .unwrap_or_else(|| panic!("no node {id} in {graph}"))
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<&String>) -> Vec<String> {
    ids.sort();
    ids.into_iter().cloned().collect()
}

async fn ticket(app: &TestApp, project: &str, title: &str, priority: &str) -> String {
    id_of(
        &app.must(
            "/api/v1/tickets",
            json!({"project_id": project, "title": title, "priority": priority}),
            StatusCode::CREATED,
        )
        .await,
    )
}

async fn task(app: &TestApp, ticket: &str, title: &str, depends_on: &[&String]) -> String {
    id_of(
        &app.must(
            "/api/v1/tasks",
            json!({"ticket_id": ticket, "title": title, "task_type": "implement",
                   "depends_on": depends_on}),
            StatusCode::CREATED,
        )
        .await,
    )
}

async fn complete(app: &TestApp, task: &str, agent: &str) {
    let path = |action: &str| format!("/api/v1/tasks/{task}/{action}");
    app.must(&path("assign"), json!({"agent_id": agent}), StatusCode::OK)
        .await;
    app.must(&path("start"), json!({}), StatusCode::OK).await;
    app.must(
        &path("complete"),
        json!({"result": {"ok": true}}),
        StatusCode::OK,
    )
    .await;
}

/// A second user: a viewer of `organization`, or (without one) of nothing.
async fn other_user(app: &TestApp, email: &str, viewer_of: Option<&str>) -> String {
    let token = app.register_and_login(email).await;
    if let Some(organization) = viewer_of {
        let (status, me) = app
            .send_as(Some(&token), Method::GET, "/api/v1/auth/me", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{me}");
        app.must(
            &format!("/api/v1/organizations/{organization}/members"),
            json!({"principal": format!("user:{}", id_of(&me)), "role": "viewer"}),
            StatusCode::OK,
        )
        .await;
    }
    token
}

#[tokio::test(flavor = "multi_thread")]
async fn the_board_follows_tickets_and_tasks_enforces_wip_limits_and_travels_in_time() {
    let app = spawn_app().await;
    let (org, project) = app.organization_and_manual_project().await;
    let view = format!("/api/v1/board/view?project_id={project}");
    let stats = format!("/api/v1/board/stats?project_id={project}");
    let violations = format!("/api/v1/board/wip-violations?project_id={project}");

    let login = ticket(&app, &project, "Login", "HIGH").await;
    let signup = ticket(&app, &project, "Signup", "CRITICAL").await;
    ticket(&app, &project, "About", "LOW").await;
    ticket(&app, &project, "Admin", "LOW").await;
    let before = app
        .eventually(&view, |v| column(v, "backlog")["count"] == 4)
        .await;
    assert_eq!(
        titles(column(&before, "backlog")),
        ["Signup", "Login", "About", "Admin"],
        "by priority, then title"
    );
    let names: Vec<&str> = before["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "backlog",
            "analyzing",
            "building",
            "building-done",
            "testing",
            "done"
        ]
    );
    assert_eq!(column(&before, "analyzing")["wip_limit"], 5);
    assert_eq!(column(&before, "backlog")["wip_limit"], Value::Null);
    let past = before["position"].as_i64().expect("a position");
    assert!(past > 0);

    // A move, a block, tasks with progress on the card.
    let moved = app
        .must(
            "/api/v1/board/move",
            json!({"ticket_id": login, "to": "analyzing", "note": "picked up"}),
            StatusCode::OK,
        )
        .await;
    assert_eq!(moved["state"]["status"], "analyzing");
    app.must(
        &format!("/api/v1/tickets/{signup}/block"),
        json!({"reason": "waiting_on_clarification", "note": "which provider?"}),
        StatusCode::OK,
    )
    .await;
    let first = task(&app, &login, "Form", &[]).await;
    task(&app, &login, "Tests", &[&first]).await;
    let agent = id_of(
        &app.must(
            "/api/v1/agents/register",
            json!({"organization_id": org, "agent_type": "worker"}),
            StatusCode::CREATED,
        )
        .await,
    );
    complete(&app, &first, &agent).await;
    let now = app
        .eventually(&view, |v| {
            column(v, "analyzing")["cards"][0]["tasks"]["completed"] == 1
                && column(v, "backlog")["cards"][0]["blocked"].is_object()
        })
        .await;
    let card = &column(&now, "analyzing")["cards"][0];
    assert_eq!(card["ticket_id"], login.as_str());
    assert_eq!(card["organization_id"], org.as_str());
    assert_eq!(card["tasks"]["total"], 2);
    assert_eq!(
        card["tasks"]["by_status"],
        json!({"completed": 1, "pending": 1})
    );
    let blocked = &column(&now, "backlog")["cards"][0];
    assert_eq!(blocked["title"], "Signup");
    assert_eq!(blocked["blocked"]["reason"], "waiting_on_clarification");
    assert_eq!(blocked["blocked"]["note"], "which provider?");

    let (status, counts) = app.get(&stats).await;
    assert_eq!(status, StatusCode::OK, "{counts}");
    assert_eq!(counts["total"], 4);
    assert_eq!(counts["blocked"], 1);
    let analyzing = counts["columns"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "analyzing"))
        .expect("the analyzing count");
    assert_eq!(analyzing["count"], 1);

    // Fill analyzing to its limit (5): the sixth move is refused unless forced.
    for title in ["A", "B", "C", "D", "E"] {
        let id = ticket(&app, &project, title, "MEDIUM").await;
        if title == "E" {
            app.eventually(&stats, |s| s["total"] == 9).await;
            let (status, refused) = app
                .post(
                    "/api/v1/board/move",
                    json!({"ticket_id": id, "to": "analyzing"}),
                )
                .await;
            assert_eq!(status, StatusCode::CONFLICT, "{refused}");
            assert_eq!(refused["code"], "wip_limit_exceeded");
            let (_, empty) = app.get(&violations).await;
            assert_eq!(
                empty["violations"],
                json!([]),
                "at the limit is no violation"
            );
            app.must(
                "/api/v1/board/move",
                json!({"ticket_id": id, "to": "analyzing", "force": true}),
                StatusCode::OK,
            )
            .await;
        } else {
            app.must(
                "/api/v1/board/move",
                json!({"ticket_id": id, "to": "analyzing"}),
                StatusCode::OK,
            )
            .await;
            // The limit is counted from the read model: let it see this move.
            let expected = ["A", "B", "C", "D"]
                .iter()
                .position(|t| *t == title)
                .map_or(0, |i| i + 2);
            app.eventually(&view, |v| column(v, "analyzing")["count"] == expected)
                .await;
        }
    }
    let over = app
        .eventually(&violations, |v| {
            v["violations"].as_array().is_some_and(|a| !a.is_empty())
        })
        .await;
    assert_eq!(
        over["violations"],
        json!([{"name": "analyzing", "wip_limit": 5, "count": 6}])
    );
    let live = app
        .eventually(&view, |v| column(v, "analyzing")["over_limit"] == true)
        .await;

    // Time travel: the board as it was, and the present rebuilt from the log is the live one.
    let (status, then) = app.get(&format!("{view}&as_of={past}")).await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert_eq!(then["as_of"], past);
    assert_eq!(
        titles(column(&then, "backlog")),
        ["Signup", "Login", "About", "Admin"]
    );
    assert_eq!(column(&then, "analyzing")["count"], 0);
    assert!(column(&then, "backlog")["cards"][0]["blocked"].is_null());
    let position = live["position"].as_i64().expect("a position");
    let (status, rebuilt) = app.get(&format!("{view}&as_of={position}")).await;
    assert_eq!(status, StatusCode::OK, "{rebuilt}");
    assert_eq!(
        rebuilt["columns"], live["columns"],
        "the log folded in memory equals the projected tables"
    );
    assert_eq!(rebuilt["position"], live["position"]);

    // Bad input.
    let (status, problem) = app.get("/api/v1/board/view").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, problem) = app.get(&format!("{view}&as_of=-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["code"], "as_of_out_of_range");
    let (status, problem) = app.get(&format!("{view}&colour=red")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, problem) = app
        .post(
            "/api/v1/board/move",
            json!({"ticket_id": login, "to": "done"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an illegal transition: {problem}"
    );
    assert_ne!(problem["code"], "wip_limit_exceeded");

    // Authorization: another organization sees nothing; a viewer reads but cannot move.
    let viewer = other_user(&app, "viewer@example.com", Some(&org)).await;
    let intruder = other_user(&app, "intruder@example.com", None).await;
    for path in [&view, &stats, &violations] {
        let (status, body) = app.send_as(Some(&viewer), Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "viewer GET {path}: {body}");
        let (status, body) = app.send_as(Some(&intruder), Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "intruder GET {path}: {body}");
    }
    let move_body = json!({"ticket_id": signup, "to": "analyzing", "force": true});
    let (status, body) = app
        .send_as(
            Some(&viewer),
            Method::POST,
            "/api/v1/board/move",
            Some(move_body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .send_as(
            Some(&intruder),
            Method::POST,
            "/api/v1/board/move",
            Some(move_body),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = app.send_as(None, Method::GET, &view, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_graph_counts_unfinished_dependencies_and_answers_blocked_and_blocking() {
    let app = spawn_app().await;
    let (org, project) = app.organization_and_project().await;
    let graph = format!("/api/v1/graph/dependency-graph/project/{project}");

    let login = ticket(&app, &project, "Login", "HIGH").await;
    let signup = ticket(&app, &project, "Signup", "LOW").await;
    let a = task(&app, &login, "a", &[]).await;
    let b = task(&app, &login, "b", &[&a]).await;
    let c = task(&app, &login, "c", &[&a, &b]).await;
    let d = task(&app, &signup, "d", &[&a]).await;

    let before = app
        .eventually(&graph, |g| {
            g["nodes"].as_array().is_some_and(|n| n.len() == 6)
        })
        .await;
    assert_eq!(before["project_id"], project.as_str());
    assert_eq!(node(&before, &c)["unfinished_dependencies"], 2);
    assert_eq!(node(&before, &a)["unfinished_dependencies"], 0);
    assert_eq!(node(&before, &c)["ticket_id"], login.as_str());
    assert_eq!(node(&before, &c)["kind"], "task");
    assert_eq!(node(&before, &login)["kind"], "ticket");
    assert_eq!(
        node(&before, &login)["unfinished_dependencies"],
        Value::Null
    );
    let mut edges: Vec<(String, String)> = before["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap_or_default().to_string(),
                e["to"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    edges.sort();
    let mut expected = vec![
        (b.clone(), a.clone()),
        (c.clone(), a.clone()),
        (c.clone(), b.clone()),
        (d.clone(), a.clone()),
    ];
    expected.sort();
    assert_eq!(edges, expected);
    let past = before["position"].as_i64().expect("a position");

    let task_path =
        |id: &str, what: &str| format!("/api/v1/graph/dependency-graph/task/{id}/{what}");
    let (status, blocked) = app.get(&task_path(&c, "blocked")).await;
    assert_eq!(status, StatusCode::OK, "{blocked}");
    assert_eq!(ids(&blocked["tasks"]), sorted(vec![&a, &b]));
    assert_eq!(blocked["missing"], json!([]));
    let (status, blocking) = app.get(&task_path(&a, "blocking")).await;
    assert_eq!(status, StatusCode::OK, "{blocking}");
    assert_eq!(ids(&blocking["tasks"]), sorted(vec![&b, &c, &d]));

    // The ticket's own graph: the ticket, its tasks and the edges leaving them.
    let (status, of_ticket) = app
        .get(&format!("/api/v1/graph/dependency-graph/ticket/{login}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{of_ticket}");
    assert_eq!(of_ticket["ticket_id"], login.as_str());
    assert_eq!(ids(&of_ticket["nodes"]), sorted(vec![&login, &a, &b, &c]));
    assert_eq!(of_ticket["edges"].as_array().map(Vec::len), Some(3));
    assert_eq!(node(&of_ticket, &c)["unfinished_dependencies"], 2);

    // Completing a unblocks b and d and half of c.
    let agent = id_of(
        &app.must(
            "/api/v1/agents/register",
            json!({"organization_id": org, "agent_type": "worker"}),
            StatusCode::CREATED,
        )
        .await,
    );
    complete(&app, &a, &agent).await;
    let after = app
        .eventually(&graph, |g| node(g, &a)["status"] == "completed")
        .await;
    assert_eq!(node(&after, &c)["unfinished_dependencies"], 1);
    assert_eq!(node(&after, &b)["unfinished_dependencies"], 0);
    assert_eq!(node(&after, &d)["unfinished_dependencies"], 0);
    let (_, blocked) = app.get(&task_path(&c, "blocked")).await;
    assert_eq!(ids(&blocked["tasks"]), vec![b.clone()]);
    assert_eq!(blocked["tasks"][0]["unfinished_dependencies"], 0);
    let (_, blocking) = app.get(&task_path(&a, "blocking")).await;
    assert_eq!(
        blocking["tasks"],
        json!([]),
        "a completed task holds nobody back"
    );
    let (_, blocking) = app.get(&task_path(&b, "blocking")).await;
    assert_eq!(ids(&blocking["tasks"]), vec![c.clone()]);

    // Dependency edits move edges.
    app.must(
        &format!("/api/v1/tasks/{d}/dependencies"),
        json!({"depends_on": b}),
        StatusCode::OK,
    )
    .await;
    let (status, removed) = app
        .delete(&format!("/api/v1/tasks/{c}/dependencies/{b}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{removed}");
    let edited = app
        .eventually(&graph, |g| node(g, &c)["unfinished_dependencies"] == 0)
        .await;
    assert_eq!(node(&edited, &d)["unfinished_dependencies"], 1);
    let (_, blocking) = app.get(&task_path(&b, "blocking")).await;
    assert_eq!(ids(&blocking["tasks"]), vec![d.clone()]);

    // Time travel: before a was completed, and the present equals the live graph.
    let (status, then) = app.get(&format!("{graph}?as_of={past}")).await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert_eq!(then["as_of"], past);
    assert_eq!(node(&then, &c)["unfinished_dependencies"], 2);
    assert_eq!(node(&then, &a)["status"], "pending");
    let position = edited["position"].as_i64().expect("a position");
    let (_, rebuilt) = app.get(&format!("{graph}?as_of={position}")).await;
    assert_eq!(rebuilt["nodes"], edited["nodes"]);
    assert_eq!(rebuilt["edges"], edited["edges"]);
    let (status, problem) = app.get(&format!("{graph}?as_of=-5")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");

    // Authorization and unknown ids.
    let viewer = other_user(&app, "viewer@example.com", Some(&org)).await;
    let intruder = other_user(&app, "intruder@example.com", None).await;
    let paths = [
        graph.clone(),
        format!("/api/v1/graph/dependency-graph/ticket/{login}"),
        task_path(&c, "blocked"),
        task_path(&a, "blocking"),
    ];
    for path in &paths {
        let (status, body) = app.send_as(Some(&viewer), Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "viewer GET {path}: {body}");
        let (status, body) = app.send_as(Some(&intruder), Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "intruder GET {path}: {body}");
    }
    let nobody = uuid::Uuid::now_v7();
    for path in [
        format!("/api/v1/graph/dependency-graph/project/{nobody}"),
        format!("/api/v1/graph/dependency-graph/ticket/{nobody}"),
        task_path(&nobody.to_string(), "blocked"),
        task_path(&nobody.to_string(), "blocking"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}: {body}");
    }
    let (status, body) = app
        .get("/api/v1/graph/dependency-graph/task/not-a-uuid/blocked")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_answer_during_a_rebuild_and_from_the_new_build_afterwards() {
    let app = omoi_testing::spawn_app().await;
    let (_, project_id) = app.organization_and_project().await;
    let mut tickets = Vec::new();
    for n in 0..40 {
        let (status, body) = app
            .post(
                "/api/v1/tickets",
                serde_json::json!({"project_id": project_id, "title": format!("t{n}")}),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
        tickets.push(body["id"].as_str().expect("an id").to_string());
    }
    app.caught_up().await;
    let path = format!("/api/v1/board/view?project_id={project_id}");
    let (_, before) = app.get(&path).await;

    let database = app.database.clone();
    // Small batches, so that the rebuild lasts while the queries run.
    let rebuild =
        tokio::spawn(async move { omoi_testing::rebuild_read_model(&database, "board", 5).await });
    while !rebuild.is_finished() {
        let (status, during) = app.get(&path).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{during}");
        assert_eq!(
            during, before,
            "the live build answers, unchanged, during the rebuild"
        );
    }
    let new_build = rebuild.await.expect("rebuild");
    let definition: String =
        sqlx::query_scalar("select definition from pg_views where viewname = 'board_cards'")
            .fetch_one(&app.database.pool)
            .await
            .expect("the view");
    assert!(
        definition.contains(&format!("rm_board_{new_build}")),
        "{definition}"
    );
    let (status, after) = app.get(&path).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(after, before, "the new build answers the same");

    // Its tables were written without the keys its batches upsert on, and keyed after:
    // a change to a card it was written with lands on that card.
    let (status, body) = app
        .patch(
            &format!("/api/v1/tickets/{}", tickets[0]),
            json!({"title": "renamed"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let card_titles = |view: &Value| -> Vec<String> {
        let columns = view["columns"].as_array().expect("columns");
        columns.iter().flat_map(titles).collect()
    };
    let changed = app
        .eventually(&path, |v| card_titles(v).contains(&"renamed".to_string()))
        .await;
    let mut expected = card_titles(&before);
    expected.retain(|title| title != "t0");
    expected.push("renamed".to_string());
    let mut shown = card_titles(&changed);
    expected.sort();
    shown.sort();
    assert_eq!(shown, expected, "one card renamed, none added");
}

/// A view `as_of` a past position replays the project's log, within a bound: one request
/// cannot make the server fold a whole long history.
#[tokio::test(flavor = "multi_thread")]
async fn a_past_view_beyond_the_replay_bound_is_refused() {
    let app = omoi_testing::spawn_app_with_settings(|settings| {
        settings.application.max_replay_events = 3;
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let mut positions = Vec::new();
    for n in 0..6 {
        let (status, body) = app
            .post(
                "/api/v1/tickets",
                json!({"project_id": project, "title": format!("T{n}")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, history) = app
            .get(&format!(
                "/api/v1/tickets/{}/history",
                body["id"].as_str().expect("an id")
            ))
            .await;
        positions.push(
            history["events"][0]["global_position"]
                .as_i64()
                .expect("a position"),
        );
    }
    // The log is read below the oldest running transaction: wait until all is visible.
    app.caught_up().await;
    let view = format!("/api/v1/board/view?project_id={project}");
    let graph = format!("/api/v1/graph/dependency-graph/project/{project}");
    // At most the project's creation and two tickets: within the bound.
    let (status, early) = app.get(&format!("{view}&as_of={}", positions[1])).await;
    assert_eq!(status, StatusCode::OK, "{early}");
    for path in [
        format!("{view}&as_of={}", positions[5]),
        format!("{graph}?as_of={}", positions[5]),
    ] {
        let (status, problem) = app.get(&path).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {problem}"
        );
        assert_eq!(problem["code"], "as_of_replay_too_long", "{problem}");
        assert_eq!(problem["field"], "as_of", "{problem}");
    }
}

/// Views `as_of` a past position rebuilt at once are bounded (`concurrent_replays`): one
/// more waits a moment for a turn, then is turned away (429), and the one holding the
/// turn answers once it can read. The held view waits on the snapshots' table, locked.
#[tokio::test(flavor = "multi_thread")]
async fn a_past_view_beyond_the_concurrent_replays_is_turned_away() {
    let app = std::sync::Arc::new(
        omoi_testing::spawn_app_with_settings(|settings| {
            settings.application.concurrent_replays = 1;
        })
        .await,
    );
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Then").await;
    let (_, history) = app.get(&format!("/api/v1/tickets/{ticket}/history")).await;
    let position = history["events"][0]["global_position"]
        .as_i64()
        .expect("a position");
    app.caught_up().await;
    let view = format!("/api/v1/board/view?project_id={project}&as_of={position}");

    let held = app.hold_read_model("snapshots", "access exclusive").await;
    let first = tokio::spawn({
        let (app, view) = (app.clone(), view.clone());
        async move { app.get(&view).await }
    });
    // The first view holds the turn once it waits on the lock.
    let mut waiting = false;
    for _ in 0..500 {
        let blocked: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
              where wait_event_type = 'Lock' and query like '%snapshots_models%'",
        )
        .fetch_one(&app.database.pool)
        .await
        .expect("the activity");
        if blocked > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(waiting, "the first view never waited on the lock");
    let (status, problem) = app.get(&view).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    assert_eq!(problem["code"], "too_many_requests", "{problem}");
    held.rollback().await.expect("unlocked");
    let (status, board) = first.await.expect("the first view");
    assert_eq!(status, StatusCode::OK, "{board}");
}
