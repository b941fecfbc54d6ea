//! Lists and search over the `directory` read model: every filter, cursor paging, and
//! another organization's rows never appearing, whoever asks and however.

use omoi_testing::{id_of, spawn_app, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// GET `path` as the holder of `token`, expecting 200.
async fn list(app: &TestApp, token: &str, path: &str) -> Value {
    let (status, body) = app.send_as(Some(token), Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// The `field` of every item of a page, in order.
fn column(page: &Value, field: &str) -> Vec<String> {
    let items = page["items"]
        .as_array()
        .or_else(|| page["results"].as_array())
        .unwrap_or_else(|| panic!("a page: {page}"));
    items
        .iter()
        .map(|item| item[field].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A second user with an organization, a project and one ticket of their own.
async fn stranger(app: &TestApp) -> (String, String, String) {
    let token = app.register_and_login("stranger@example.com").await;
    let (status, org) = app
        .send_as(
            Some(&token),
            Method::POST,
            "/api/v1/organizations",
            Some(json!({"name": "Rival"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{org}");
    let (status, project) = app
        .send_as(
            Some(&token),
            Method::POST,
            "/api/v1/projects",
            // Only the tickets and tasks the tests make.
            Some(json!({"organization_id": id_of(&org), "name": "Secret",
                        "settings": {"auto_spawn_tasks": false}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let (status, ticket) = app
        .send_as(
            Some(&token),
            Method::POST,
            "/api/v1/tickets",
            Some(
                json!({"project_id": id_of(&project), "title": "Authentication secret",
                        "description": "login login login"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    (token, id_of(&org), id_of(&project))
}

#[tokio::test]
async fn lists_filter_page_and_keep_to_the_callers_organizations() {
    let app = spawn_app().await;
    let owner = app.token.clone().expect("the owner's token");
    let (org, project) = app.organization_and_manual_project().await;
    let (stranger_token, stranger_org, stranger_project) = stranger(&app).await;

    let tickets: Vec<String> = {
        let mut ids = Vec::new();
        for title in ["First", "Second", "Third", "Fourth", "Fifth"] {
            ids.push(app.ticket(&project, title).await);
        }
        ids
    };
    let tasks = [
        app.task(&tickets[0], "Write the form", json!({})).await,
        app.task(&tickets[0], "Test the form", json!({})).await,
        app.task(&tickets[1], "Elsewhere", json!({})).await,
    ];
    app.must(
        &format!("/api/v1/tasks/{}/cancel", tasks[1]),
        json!({"reason": "not needed"}),
        StatusCode::OK,
    )
    .await;
    app.must(
        &format!("/api/v1/tickets/{}/transition", tickets[2]),
        json!({"to": "analyzing"}),
        StatusCode::OK,
    )
    .await;
    let spec = app
        .create(
            "/api/v1/specs",
            json!({"project_id": project, "title": "Sign-in"}),
        )
        .await;
    app.caught_up().await;

    // Organizations and projects: mine only, for each of us.
    let mine = list(&app, &owner, "/api/v1/organizations").await;
    assert_eq!(column(&mine, "id"), vec![org.clone()]);
    assert_eq!(mine["items"][0]["name"], "Acme");
    assert_eq!(mine["items"][0]["status"], "active");
    let theirs = list(&app, &stranger_token, "/api/v1/organizations").await;
    assert_eq!(column(&theirs, "id"), vec![stranger_org.clone()]);
    let projects = list(&app, &owner, "/api/v1/projects").await;
    assert_eq!(column(&projects, "id"), vec![project.clone()]);
    let (status, refused) = app
        .send_as(
            Some(&owner),
            Method::GET,
            &format!("/api/v1/projects?organization_id={stranger_org}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");

    // Tickets newest first, paged by cursor without a gap or a repeat.
    let first = list(&app, &owner, "/api/v1/tickets?limit=2").await;
    let mut newest_first = tickets.clone();
    newest_first.reverse();
    assert_eq!(column(&first, "id"), newest_first[..2].to_vec());
    let cursor = first["next_before"].as_str().expect("a next page");
    let second = list(
        &app,
        &owner,
        &format!("/api/v1/tickets?limit=2&before={cursor}"),
    )
    .await;
    assert_eq!(column(&second, "id"), newest_first[2..4].to_vec());
    let cursor = second["next_before"].as_str().expect("a last page");
    let last = list(
        &app,
        &owner,
        &format!("/api/v1/tickets?limit=2&before={cursor}"),
    )
    .await;
    assert_eq!(column(&last, "id"), newest_first[4..].to_vec());
    assert!(last.get("next_before").is_none(), "{last}");

    // Filters.
    let analyzing = list(
        &app,
        &owner,
        &format!("/api/v1/tickets?project_id={project}&status=analyzing"),
    )
    .await;
    assert_eq!(column(&analyzing, "id"), vec![tickets[2].clone()]);
    let of_ticket = list(
        &app,
        &owner,
        &format!("/api/v1/tasks?ticket_id={}", tickets[0]),
    )
    .await;
    assert_eq!(
        column(&of_ticket, "id"),
        vec![tasks[1].clone(), tasks[0].clone()]
    );
    assert_eq!(of_ticket["items"][0]["status"], "cancelled");
    assert_eq!(of_ticket["items"][0]["ticket_id"], tickets[0].as_str());
    assert_eq!(of_ticket["items"][0]["task_type"], "implement");
    let cancelled = list(&app, &owner, "/api/v1/tasks?status=cancelled").await;
    assert_eq!(column(&cancelled, "id"), vec![tasks[1].clone()]);
    let drafts = list(
        &app,
        &owner,
        &format!("/api/v1/specs?project_id={project}&phase=draft"),
    )
    .await;
    assert_eq!(column(&drafts, "id"), vec![spec.clone()]);
    let designs = list(&app, &owner, "/api/v1/specs?phase=design").await;
    assert_eq!(column(&designs, "id"), Vec::<String>::new());

    // The stranger sees none of it, however they ask.
    for path in [
        "/api/v1/tickets".to_string(),
        format!("/api/v1/tickets?project_id={project}"),
        format!("/api/v1/tasks?ticket_id={}", tickets[0]),
        format!("/api/v1/specs?project_id={project}"),
    ] {
        let page = list(&app, &stranger_token, &path).await;
        let ids = column(&page, "id");
        for ours in tickets.iter().chain(tasks.iter()).chain([&spec]) {
            assert!(!ids.contains(ours), "{path} showed {ours} to a stranger");
        }
    }
    let their_tickets = list(&app, &stranger_token, "/api/v1/tickets").await;
    assert_eq!(their_tickets["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(their_tickets["items"][0]["project_id"], stranger_project);

    // Bad paging and unknown filters are refused, naming the parameter.
    for (path, field) in [
        ("/api/v1/tickets?limit=0", "limit"),
        ("/api/v1/tickets?limit=201", "limit"),
        ("/api/v1/tickets?before=yesterday", "before"),
    ] {
        let (status, body) = app.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    let (status, body) = app.get("/api/v1/tasks?colour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app.get("/api/v1/tasks?status=sleeping").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .send_as(None, Method::GET, "/api/v1/tickets", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn a_viewer_lists_what_they_may_read_and_a_project_key_only_its_project() {
    let app = spawn_app().await;
    let (org, project) = app.organization_and_manual_project().await;
    let ticket = app.ticket(&project, "In the first project").await;
    let (status, other) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": org, "name": "Second"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let other_ticket = app.ticket(&id_of(&other), "In the second project").await;

    let viewer = app.register_and_login("viewer@example.com").await;
    let (_, me) = app
        .send_as(Some(&viewer), Method::GET, "/api/v1/auth/me", None)
        .await;
    app.must(
        &format!("/api/v1/organizations/{org}/members"),
        json!({"principal": format!("user:{}", id_of(&me)), "role": "viewer"}),
        StatusCode::OK,
    )
    .await;
    let (status, key) = app
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "first project only", "organization_id": org,
                   "role": "member", "project_id": project}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().expect("the key").to_string();
    app.caught_up().await;

    // A viewer of the organization needs no invitation per project: a fresh login
    // carries the new membership.
    let viewer = app.login("viewer@example.com").await["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let seen = list(&app, &viewer, "/api/v1/tickets").await;
    assert_eq!(
        column(&seen, "id"),
        vec![other_ticket.clone(), ticket.clone()]
    );

    let seen = list(&app, &key, "/api/v1/tickets").await;
    assert_eq!(column(&seen, "id"), vec![ticket.clone()]);
    let projects = list(&app, &key, "/api/v1/projects").await;
    assert_eq!(column(&projects, "id"), vec![project.clone()]);
    // Its own organization, which is in no project, is listed too.
    let organizations = list(&app, &key, "/api/v1/organizations").await;
    assert_eq!(column(&organizations, "id"), vec![org.clone()]);
    let (status, body) = app
        .send_as(
            Some(&key),
            Method::GET,
            &format!("/api/v1/tickets?project_id={}", id_of(&other)),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let found = list(&app, &key, "/api/v1/search?q=project").await;
    assert_eq!(column(&found, "id"), vec![ticket]);
}

#[tokio::test]
async fn search_matches_word_prefixes_best_first_within_the_callers_organizations() {
    let app = spawn_app().await;
    let owner = app.token.clone().expect("the owner's token");
    let (_, project) = app.organization_and_manual_project().await;
    let (stranger_token, _, _) = stranger(&app).await;
    let authentication = app
        .create(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Authentication flow",
                   "description": "login, login again, and login once more"}),
        )
        .await;
    let logout = app
        .create(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Logout button",
                   "description": "after a login"}),
        )
        .await;
    let tokens = app
        .task(
            &logout,
            "Auth tokens refresh",
            json!({"description": "rotate"}),
        )
        .await;
    let spec = app
        .create(
            "/api/v1/specs",
            json!({"project_id": project, "title": "Authorization rules"}),
        )
        .await;
    app.caught_up().await;

    let found = list(&app, &owner, "/api/v1/search?q=auth").await;
    let mut ids = column(&found, "id");
    ids.sort();
    let mut expected = vec![authentication.clone(), tokens.clone(), spec.clone()];
    expected.sort();
    assert_eq!(ids, expected, "{found}");
    let kinds: Vec<String> = column(&found, "kind");
    for kind in ["ticket", "task", "spec"] {
        assert!(kinds.contains(&kind.to_string()), "{found}");
    }

    // Three mentions rank above one; the stranger's ticket says it four times, unseen.
    let found = list(
        &app,
        &owner,
        &format!("/api/v1/search?q=login&project_id={project}"),
    )
    .await;
    assert_eq!(
        column(&found, "id"),
        vec![authentication.clone(), logout.clone()]
    );
    let found = list(&app, &owner, "/api/v1/search?q=Logout%20butt").await;
    assert_eq!(column(&found, "id"), vec![logout.clone()]);
    let found = list(&app, &owner, "/api/v1/search?q=auth&limit=1").await;
    assert_eq!(found["results"].as_array().map(Vec::len), Some(1));

    let theirs = list(&app, &stranger_token, "/api/v1/search?q=login").await;
    assert_eq!(column(&theirs, "title"), vec!["Authentication secret"]);

    // Punctuation is no syntax; empty or overlong text and a bad limit are refused.
    let found = list(&app, &owner, "/api/v1/search?q=%3A*%26%7C!").await;
    assert_eq!(found["results"], json!([]));
    for (path, field) in [
        ("/api/v1/search?q=".to_string(), "q"),
        (format!("/api/v1/search?q={}", "a".repeat(201)), "q"),
        ("/api/v1/search?q=auth&limit=51".to_string(), "limit"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
    }
    let (status, body) = app.get("/api/v1/search").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn renames_and_archives_show_in_the_lists() {
    let app = spawn_app().await;
    let owner = app.token.clone().expect("the owner's token");
    let (org, project) = app.organization_and_manual_project().await;
    let (status, body) = app
        .post(
            &format!("/api/v1/projects/{project}/rename"),
            json!({"name": "Renamed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(&format!("/api/v1/projects/{project}/archive"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.caught_up().await;
    let archived = list(
        &app,
        &owner,
        &format!("/api/v1/projects?organization_id={org}&status=archived"),
    )
    .await;
    assert_eq!(column(&archived, "name"), vec!["Renamed"]);
    let active = list(&app, &owner, "/api/v1/projects?status=active").await;
    assert_eq!(active["items"], json!([]));
}
