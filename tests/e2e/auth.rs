//! Identity: registration, login with lockout, refresh rotation with reuse detection,
//! logout, API keys and their scope, and the actor recorded on events.

use omoi_testing::{spawn_app, TestApp, TEST_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn me(app: &TestApp, token: &str) -> (StatusCode, Value) {
    app.send_as(Some(token), Method::GET, "/api/v1/auth/me", None)
        .await
}

async fn post_public(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    app.send_as(None, Method::POST, path, Some(body)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_checks_email_password_and_uniqueness() {
    let app = spawn_app().await;
    let (s, b) = post_public(
        &app,
        "/api/v1/auth/register",
        json!({"email": "a@example.com", "password": "weakpass"}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(
        (b["code"].as_str(), b["field"].as_str()),
        (Some("weak_password"), Some("password"))
    );
    let (s, b) = post_public(
        &app,
        "/api/v1/auth/register",
        json!({"email": "nobody", "password": TEST_PASSWORD}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["field"], "email");
    let (s, b) = post_public(
        &app,
        "/api/v1/auth/register",
        json!({"email": "OWNER@example.com", "password": TEST_PASSWORD}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "emails are case-insensitive: {b}");
    let (s, b) = post_public(
        &app,
        "/api/v1/auth/register",
        json!({"email": "b@example.com", "password": TEST_PASSWORD, "admin": true}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // The special character may be any but an ASCII letter or digit, a non-ASCII one too.
    let (s, b) = post_public(
        &app,
        "/api/v1/auth/register",
        json!({"email": "c@example.com", "password": "Passwort9ß"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = post_public(
        &app,
        "/api/v1/auth/register",
        json!({"email": "d@example.com", "password": TEST_PASSWORD,
               "display_name": "x".repeat(201)}),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["code"], "display_name_too_long");
}

#[tokio::test(flavor = "multi_thread")]
async fn more_than_five_failed_logins_lock_the_account() {
    let app = spawn_app().await;
    for attempt in 1..=5 {
        let (s, b) = post_public(
            &app,
            "/api/v1/auth/login",
            json!({"email": "owner@example.com", "password": "Wr0ng-pass"}),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {attempt}: {b}");
    }
    // The sixth attempt is refused even with the right password.
    let (s, b) = post_public(
        &app,
        "/api/v1/auth/login",
        json!({"email": "owner@example.com", "password": TEST_PASSWORD}),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert_eq!(b["code"], "too_many_requests");
    // Another account is not affected.
    app.register_and_login("other@example.com").await;
}

/// One refresh token presented several times at once: one exchange wins, the others
/// are reuses, and whatever their order the winner's new tokens are revoked with every
/// other (an exchange recorded just after the reuse's revocation used to outlive it).
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_presented_concurrently_leaves_no_token_alive() {
    let app = spawn_app().await;
    // Recording a refresh token takes a while: the exchange's replacement is recorded
    // well after the reuses have looked, which is when it outlived their revocation.
    sqlx::raw_sql(
        "create function slow_refresh_token() returns trigger language plpgsql as
           $$ begin perform pg_sleep(0.2); return new; end $$;
         create trigger slow_refresh_token before insert on refresh_tokens
           for each row execute function slow_refresh_token();",
    )
    .execute(&app.database.pool)
    .await
    .expect("the slow trigger");
    for round in 0..3 {
        let session = app.login("owner@example.com").await;
        let refresh = session["refresh_token"].as_str().expect("a refresh token");
        let answers = futures_util::future::join_all((0..4).map(|_| {
            post_public(
                &app,
                "/api/v1/auth/refresh",
                json!({"refresh_token": refresh}),
            )
        }))
        .await;
        let won: Vec<&Value> = answers
            .iter()
            .filter(|(status, _)| *status == StatusCode::OK)
            .map(|(_, body)| body)
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {answers:?}");
        for (status, body) in &answers {
            assert!(
                matches!(*status, StatusCode::OK | StatusCode::UNAUTHORIZED),
                "round {round}: {body}"
            );
        }
        let access = won[0]["access_token"].as_str().expect("an access token");
        assert_eq!(
            me(&app, access).await.0,
            StatusCode::UNAUTHORIZED,
            "round {round}: the winner's access token outlived the reuse"
        );
        let (status, body) = post_public(
            &app,
            "/api/v1/auth/refresh",
            json!({"refresh_token": won[0]["refresh_token"]}),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "round {round}: the winner's refresh token outlived the reuse: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_works_once_and_its_reuse_revokes_every_token_of_the_user() {
    let app = spawn_app().await;
    let first = app.login("owner@example.com").await;
    let first_refresh = first["refresh_token"].as_str().expect("refresh token");

    let (s, second) = post_public(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": first_refresh}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{second}");
    let second_access = second["access_token"].as_str().expect("access token");
    let second_refresh = second["refresh_token"].as_str().expect("refresh token");
    assert_ne!(second_refresh, first_refresh, "refresh tokens rotate");
    assert_eq!(me(&app, second_access).await.0, StatusCode::OK);

    // The spent token comes back: someone replayed it.
    let (s, b) = post_public(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": first_refresh}),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert_eq!(
        me(&app, second_access).await.0,
        StatusCode::UNAUTHORIZED,
        "access tokens revoked"
    );
    let (s, _) = post_public(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": second_refresh}),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the newest refresh token is revoked too"
    );

    // Logging in again works at once.
    let again = app.login("owner@example.com").await;
    assert_eq!(
        me(&app, again["access_token"].as_str().expect("token"))
            .await
            .0,
        StatusCode::OK
    );

    let (s, _) = post_public(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": again["access_token"]}),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "an access token is not a refresh token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_the_session_and_other_sessions_survive() {
    let app = spawn_app().await;
    let session = app.login("owner@example.com").await;
    let access = session["access_token"].as_str().expect("token");
    let other = app.token.clone().expect("the harness's own session");

    let (s, b) = app
        .send_as(
            Some(access),
            Method::POST,
            "/api/v1/auth/logout",
            Some(json!({"refresh_token": session["refresh_token"]})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{b}");
    assert_eq!(me(&app, access).await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = post_public(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": session["refresh_token"]}),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the session's refresh token is revoked"
    );
    assert_eq!(
        me(&app, &other).await.0,
        StatusCode::OK,
        "another session is untouched"
    );
}

/// A write authenticated by the cookie is refused when a page of another origin sends it
/// (a sibling subdomain's form, which the `SameSite=Lax` cookie goes along with): 403
/// `origin_not_allowed`, nothing written. The server's own pages, the bearer header and
/// clients without `Origin` go on as before; reads are untouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_with_the_cookie_from_another_origin_is_refused() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let token = app.token.clone().expect("token");
    let own = app.address.clone();
    let create = |origin: Option<&str>, title: &str| {
        let mut request = app
            .client
            .post(format!("{}/api/v1/tickets", app.address))
            .header("cookie", format!("omoi_access_token={token}"))
            .json(&json!({"project_id": project, "title": title}));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let foreign = create(Some("http://evil.example"), "Forged")
        .await
        .expect("an answer");
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let body: Value = foreign.json().await.expect("a problem");
    assert_eq!(body["code"], "origin_not_allowed", "{body}");
    for (origin, title) in [
        (Some(own.as_str()), "From the app"),
        (None, "From a script"),
    ] {
        let answer = create(origin, title).await.expect("an answer");
        assert_eq!(answer.status(), StatusCode::CREATED, "{origin:?}");
    }
    let (_, tickets) = app
        .get(&format!("/api/v1/tickets?project_id={project}"))
        .await;
    let titles: Vec<&str> = tickets["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["title"].as_str())
        .collect();
    assert!(!titles.contains(&"Forged"), "{titles:?}");
    // A read with the cookie from anywhere, and the refresh cookie from elsewhere.
    let read = app
        .client
        .get(format!("{}/api/v1/auth/me", app.address))
        .header("cookie", format!("omoi_access_token={token}"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("an answer");
    assert_eq!(read.status(), StatusCode::OK);
    let session = app.login("owner@example.com").await;
    let refresh = app
        .client
        .post(format!("{}/api/v1/auth/refresh", app.address))
        .header(
            "cookie",
            format!(
                "omoi_refresh_token={}",
                session["refresh_token"].as_str().expect("a token")
            ),
        )
        .header("origin", "http://evil.example")
        .json(&json!({}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(refresh.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_header_wins_over_the_cookie() {
    let app = spawn_app().await;
    let token = app.token.clone().expect("token");
    let url = format!("{}/api/v1/auth/me", app.address);
    let by_cookie = app
        .client
        .get(&url)
        .header("cookie", format!("omoi_access_token={token}"))
        .send()
        .await
        .expect("answer");
    assert_eq!(by_cookie.status(), StatusCode::OK);
    let both = app
        .client
        .get(&url)
        .header("cookie", "omoi_access_token=garbage")
        .bearer_auth(&token)
        .send()
        .await
        .expect("answer");
    assert_eq!(both.status(), StatusCode::OK);
    let wrong_header = app
        .client
        .get(&url)
        .header("cookie", format!("omoi_access_token={token}"))
        .bearer_auth("garbage")
        .send()
        .await
        .expect("answer");
    assert_eq!(wrong_header.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_header.headers()["www-authenticate"], "Bearer");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_acts_within_its_organization_project_and_role_until_revoked() {
    let app = spawn_app().await;
    let (org_id, project_id) = app.organization_and_project().await;
    let (_, other_project) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": org_id, "name": "Other"}),
        )
        .await;
    let other_project = other_project["id"].as_str().expect("id");
    let (_, ticket) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project_id, "title": "T"}),
        )
        .await;
    let ticket_id = ticket["id"].as_str().expect("id");
    let (_, elsewhere) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": other_project, "title": "T2"}),
        )
        .await;
    let elsewhere = elsewhere["id"].as_str().expect("id");

    // A project of another organization answers as one that does not exist.
    let (_, stranger) = app
        .post("/api/v1/organizations", json!({"name": "Elsewhere"}))
        .await;
    let stranger = stranger["id"].as_str().expect("id").to_string();
    let mut answers = Vec::new();
    for project in [project_id.to_string(), uuid::Uuid::now_v7().to_string()] {
        let (s, b) = app
            .post("/api/v1/auth/api-keys", json!({"name": "ci", "organization_id": stranger, "project_id": project, "role": "member"}))
            .await;
        answers.push((s, b["code"].clone(), b["detail"].clone()));
    }
    assert_eq!(answers[0], answers[1], "{answers:?}");
    assert_eq!(answers[0].0, StatusCode::NOT_FOUND, "{answers:?}");

    let (s, created) = app
        .post("/api/v1/auth/api-keys", json!({"name": "ci", "organization_id": org_id, "project_id": project_id, "role": "member"}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let key = created["key"]
        .as_str()
        .expect("the key, shown once")
        .to_string();
    let key_id = created["id"].as_str().expect("id").to_string();
    let (_, listed) = app.get("/api/v1/auth/api-keys").await;
    assert!(
        listed
            .as_array()
            .expect("list")
            .iter()
            .all(|k| k.get("key").is_none()),
        "the secret is never listed"
    );

    let (s, _) = app
        .send_as(
            Some(&key),
            Method::GET,
            &format!("/api/v1/tickets/{ticket_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .send_as(
            Some(&key),
            Method::GET,
            &format!("/api/v1/tickets/{elsewhere}"),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "a project key sees nothing of other projects"
    );
    let (s, moved) = app
        .send_as(
            Some(&key),
            Method::POST,
            &format!("/api/v1/tickets/{ticket_id}/transition"),
            Some(json!({"to": "analyzing"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{moved}");
    let (s, _) = app
        .send_as(
            Some(&key),
            Method::POST,
            &format!("/api/v1/projects/{project_id}/rename"),
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a member key cannot rename projects"
    );

    // The actor on the event is the key, not anything the client said.
    let (_, history) = app
        .get(&format!("/api/v1/tickets/{ticket_id}/history"))
        .await;
    assert_eq!(
        history["events"][1]["metadata"]["actor"],
        format!("api_key:{key_id}")
    );
    let (_, me_body) = me(&app, app.token.as_deref().expect("token")).await;
    assert_eq!(
        history["events"][0]["metadata"]["actor"],
        format!("user:{}", me_body["id"].as_str().expect("id"))
    );

    // A key is no session: logging out with it is refused and leaves it working.
    let (s, b) = app
        .send_as(
            Some(&key),
            Method::POST,
            "/api/v1/auth/logout",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["code"], "not_a_session", "{b}");
    let (s, _) = app
        .send_as(
            Some(&key),
            Method::GET,
            &format!("/api/v1/tickets/{ticket_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the key still works");

    let (s, _) = app.delete(&format!("/api/v1/auth/api-keys/{key_id}")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .send_as(
            Some(&key),
            Method::GET,
            &format!("/api/v1/tickets/{ticket_id}"),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a revoked key is refused at once"
    );

    let (s, b) = app
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "x", "organization_id": uuid::Uuid::now_v7(), "role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn membership_changes_are_events_and_take_effect_at_once() {
    let app = spawn_app().await;
    let (org_id, project_id) = app.organization_and_project().await;
    let viewer = app.register_and_login("viewer@example.com").await;
    let (_, viewer_me) = me(&app, &viewer).await;
    let principal = format!("user:{}", viewer_me["id"].as_str().expect("id"));

    let (s, _) = app
        .send_as(
            Some(&viewer),
            Method::GET,
            &format!("/api/v1/projects/{project_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "not a member yet");

    let (s, b) = app
        .post(
            &format!("/api/v1/organizations/{org_id}/members"),
            json!({"principal": principal, "role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = app
        .send_as(
            Some(&viewer),
            Method::GET,
            &format!("/api/v1/projects/{project_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "a viewer reads");
    let (s, _) = app
        .send_as(
            Some(&viewer),
            Method::POST,
            "/api/v1/tickets",
            Some(json!({"project_id": project_id, "title": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a viewer does not write");

    let (s, _) = app
        .put(
            &format!("/api/v1/organizations/{org_id}/members/{principal}"),
            json!({"role": "member"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .send_as(
            Some(&viewer),
            Method::POST,
            "/api/v1/tickets",
            Some(json!({"project_id": project_id, "title": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "promoted to member");

    let (s, _) = app
        .delete(&format!(
            "/api/v1/organizations/{org_id}/members/{principal}"
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .send_as(
            Some(&viewer),
            Method::GET,
            &format!("/api/v1/projects/{project_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "removed");

    let (_, history) = app
        .get(&format!("/api/v1/organizations/{org_id}/history"))
        .await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        types,
        [
            "OrganizationCreated",
            "MemberAdded",
            "MemberAdded",
            "MemberRoleChanged",
            "MemberRemoved"
        ]
    );

    let (_, owner_me) = me(&app, app.token.as_deref().expect("token")).await;
    let owner = format!("user:{}", owner_me["id"].as_str().expect("id"));
    let (s, b) = app
        .delete(&format!("/api/v1/organizations/{org_id}/members/{owner}"))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "the last owner stays: {b}");
}

/// A key limited to one project sees nothing else, its organization's other keys
/// included: listing keys with it lists only the keys limited to its project (an admin
/// key of a project, the role that may read keys); the owner lists every one.
#[tokio::test(flavor = "multi_thread")]
async fn a_project_keys_list_of_keys_holds_only_its_projects_keys() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (status, other) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": organization, "name": "Other"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let other = other["id"].as_str().expect("id").to_string();
    let mut ids = Vec::new();
    let mut project_key = String::new();
    for (name, limit) in [
        ("org", None),
        ("here", Some(&project)),
        ("there", Some(&other)),
    ] {
        let (status, created) = app
            .post(
                "/api/v1/auth/api-keys",
                json!({"name": name, "organization_id": organization, "project_id": limit,
                       "role": "admin"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ids.push(created["id"].as_str().expect("id").to_string());
        if name == "here" {
            project_key = created["key"].as_str().expect("the key").to_string();
        }
    }
    let listed = |body: &Value| -> Vec<String> {
        let mut ids: Vec<String> = body
            .as_array()
            .expect("a list")
            .iter()
            .map(|k| k["id"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        ids
    };
    let (status, body) = app
        .send_as(
            Some(&project_key),
            Method::GET,
            "/api/v1/auth/api-keys",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(listed(&body), vec![ids[1].clone()], "{body}");
    let (status, body) = app.get("/api/v1/auth/api-keys").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut every = ids.clone();
    every.sort();
    assert_eq!(listed(&body), every, "{body}");
}
