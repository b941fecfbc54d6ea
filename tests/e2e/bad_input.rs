//! Bad input gets a clear problem document with the right status, and writes nothing.

use omoi_testing::spawn_app;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[track_caller]
fn assert_problem(
    status: StatusCode,
    body: &Value,
    expected: StatusCode,
    code: &str,
    field: Option<&str>,
) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["status"], expected.as_u16(), "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:omoi:problem:")),
        "{body}"
    );
    assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{body}"
    );
    match field {
        Some(field) => assert_eq!(body["field"], field, "{body}"),
        None => assert!(body.get("field").is_none(), "{body}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_refused_with_a_problem_and_nothing_is_written() {
    let app = spawn_app().await;
    let (_, project_id) = app.organization_and_project().await;
    let before = app.event_count().await;

    let (s, b) = app
        .post_raw(
            "/api/v1/tickets",
            "application/json",
            b"{\"project_id\": ".to_vec(),
        )
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad_request", None);

    let (s, b) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "x", "colour": "red"}),
        )
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("colour"),
    );

    let (s, b) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": 7}),
        )
        .await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some("title"));

    let (s, b) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "x", "priority": "URGENT"}),
        )
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::BAD_REQUEST,
        "bad_request",
        Some("priority"),
    );

    let (s, b) = app.post("/api/v1/tickets", json!({"title": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(
        b["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("project_id"),
        "{b}"
    );

    let (s, b) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "   "}),
        )
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "empty_title",
        Some("title"),
    );

    let (s, b) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "x".repeat(201)}),
        )
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "title_too_long",
        Some("title"),
    );

    let unknown = uuid::Uuid::now_v7();
    let (s, b) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": unknown, "title": "x"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    let (s, b) = app.get(&format!("/api/v1/tickets/{unknown}")).await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    let (s, b) = app
        .post(
            &format!("/api/v1/tickets/{unknown}/transition"),
            json!({"to": "analyzing"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    let (s, b) = app.get("/api/v1/tickets/not-a-uuid").await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some("id"));

    let (s, b) = app
        .post_raw(
            "/api/v1/tickets",
            "text/plain",
            br#"{"title":"x"}"#.to_vec(),
        )
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        None,
    );

    let huge =
        json!({"project_id": project_id, "title": "x", "description": "d".repeat(300 * 1024)});
    let (s, b) = app.post("/api/v1/tickets", huge).await;
    assert_problem(
        s,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );

    let (s, b) = app.get("/api/v1/no-such-thing").await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "not_found", None);

    let (s, b) = app.delete("/api/v1/tickets").await;
    assert_problem(
        s,
        &b,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );

    let (s, b) = app.get("/api/v1/events?after=yesterday").await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some("after"));

    let (s, b) = app.get("/api/v1/events?limit=0").await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some("limit"));

    assert_eq!(
        app.event_count().await,
        before,
        "a refused request wrote events"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn illegal_transitions_answer_conflict_and_history_bounds_are_checked() {
    let app = spawn_app().await;
    let (_, project_id) = app.organization_and_project().await;
    let (_, ticket) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "x"}),
        )
        .await;
    let id = ticket["id"].as_str().expect("id").to_string();
    let before = app.event_count().await;

    let (s, b) = app
        .post(
            &format!("/api/v1/tickets/{id}/transition"),
            json!({"to": "done"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "illegal_transition", None);

    let (s, b) = app
        .post(
            &format!("/api/v1/tickets/{id}/transition"),
            json!({"to": "backlog"}),
        )
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "already_in_status", None);

    let (s, b) = app
        .post(&format!("/api/v1/tickets/{id}/unblock"), json!({}))
        .await;
    assert_problem(s, &b, StatusCode::CONFLICT, "not_blocked", None);

    let (s, b) = app
        .get(&format!("/api/v1/tickets/{id}/history?as_of=0"))
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "as_of_out_of_range",
        Some("as_of"),
    );
    let (s, b) = app
        .get(&format!("/api/v1/tickets/{id}/history?as_of=9"))
        .await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "no_such_event", None);

    let (s, b) = app
        .get(&format!("/api/v1/tickets/{id}/history?as_of=one"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    for (query, field) in [
        ("after=-1", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let (s, b) = app
            .get(&format!("/api/v1/tickets/{id}/history?{query}"))
            .await;
        assert_problem(s, &b, StatusCode::BAD_REQUEST, "bad_request", Some(field));
    }

    assert_eq!(app.event_count().await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_log_refuses_updates_and_deletes() {
    let app = spawn_app().await;
    app.organization_and_project().await;
    let update = sqlx::query("update events set event_type = 'Forged'")
        .execute(&app.database.pool)
        .await;
    assert!(update.is_err(), "history was edited");
    let delete = sqlx::query("delete from events")
        .execute(&app.database.pool)
        .await;
    assert!(delete.is_err(), "history was deleted");
    assert_eq!(
        app.event_count().await,
        3,
        "organization created, owner added, project created"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_and_the_openapi_document_are_served() {
    let app = spawn_app().await;
    let (status, health) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["database"], "ok");

    app.organization_and_project().await;
    let (_, _) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": uuid::Uuid::nil(), "name": "x"}),
        )
        .await;
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().expect("text metrics");
    assert!(
        text.contains(r#"omoi_commands_total{command="CreateProject",outcome="committed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("omoi_command_duration_seconds_bucket"),
        "{text}"
    );

    let (status, document) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = document["paths"].as_object().expect("paths");
    // A path parameter must appear in its path, and a query parameter must not: the
    // document is what clients are generated from.
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().expect("operations") {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().expect("a parameter name");
                let in_path = path.contains(&format!("{{{name}}}"));
                let declared = parameter["in"].as_str().expect("a parameter location");
                assert_eq!(
                    declared == "path",
                    in_path,
                    "{method} {path}: parameter {name} is declared in {declared}"
                );
            }
        }
    }
    for path in [
        "/api/v1/tickets",
        "/api/v1/tickets/{id}/history",
        "/api/v1/tasks/{id}/assign",
        "/api/v1/specs/{id}/approve-design",
        "/api/v1/agents/register",
        "/api/v1/events",
        "/health",
    ] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    let docs = app
        .client
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    // Swagger UI from our own files (tests/e2e/dashboard.rs renders it in Chromium).
    let page = docs.text().await.expect("html");
    assert!(
        page.contains("vendor/swagger-ui/swagger-ui-bundle.js"),
        "{page}"
    );
    assert!(!page.contains("https://"), "nothing from a CDN: {page}");
}

/// PostgreSQL stores no U+0000 in text or jsonb: such input is refused up front, naming
/// the field, wherever it hides (a title, a nested result, a query parameter).
#[tokio::test(flavor = "multi_thread")]
async fn text_holding_a_nul_character_is_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let (_, project_id) = app.organization_and_project().await;
    let (status, ticket) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "Plain"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let before = app.event_count().await;

    let (s, b) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "bad\u{0}title"}),
        )
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "nul_character",
        Some("title"),
    );
    let ticket_id = ticket["id"].as_str().expect("an id");
    let (s, b) = app
        .patch(
            &format!("/api/v1/tickets/{ticket_id}"),
            json!({"title": "fine", "description": "x\u{0}"}),
        )
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "nul_character",
        Some("description"),
    );
    let (s, b) = app
        .get(&format!(
            "/api/v1/timeline?project_id={project_id}&actor=user%00x"
        ))
        .await;
    assert_problem(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "nul_character",
        Some("actor"),
    );
    // An escaped backslash before `u0000` is ordinary text.
    let (s, b) = app
        .post_raw(
            "/api/v1/tickets",
            "application/json",
            format!(r#"{{"project_id": "{project_id}", "title": "C:\\u0000 path"}}"#).into_bytes(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["state"]["title"], "C:\\u0000 path");
    assert_eq!(
        app.event_count().await,
        before + 1,
        "only the last one wrote"
    );
}

/// The routes that read their bodies or paths themselves answer bad ones with a problem
/// document too: a webhook body that is not UTF-8 text or is past the body limit, and a
/// dashboard file path that does not decode.
#[tokio::test(flavor = "multi_thread")]
async fn raw_bodies_and_undecodable_paths_are_refused_with_a_problem() {
    let app = spawn_app().await;
    let before = app.event_count().await;
    let problem = |response: reqwest::Response| async move {
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = response.json().await.expect("a JSON body");
        assert_eq!(content_type, "application/problem+json", "{body}");
        (status, body)
    };
    let webhook = |body: Vec<u8>| {
        app.client
            .post(app.url("/api/v1/billing/webhooks/stripe"))
            .header("stripe-signature", "t=1,v1=00")
            .body(body)
    };
    let (s, b) = problem(webhook(vec![0xFF, 0xFE, b'{']).send().await.expect("sent")).await;
    assert_problem(s, &b, StatusCode::BAD_REQUEST, "malformed_event", None);
    let (s, b) = problem(webhook(vec![b' '; 300 * 1024]).send().await.expect("sent")).await;
    assert_problem(
        s,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    let (s, b) = problem(
        app.client
            .get(app.url("/app/x/%FF"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_problem(s, &b, StatusCode::NOT_FOUND, "not_found", None);
    assert_eq!(app.event_count().await, before, "nothing written");
}
