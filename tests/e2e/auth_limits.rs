//! What the public auth routes may cost (issue #12): password hashes bounded by slots,
//! rate limits per client address and per account, the lockout counted atomically, logout
//! revoking the refresh cookie, `Secure` cookies, and the pruning of expired credentials.

use futures_util::future::join_all;
use omoi_api::auth::guard::RateQuota;
use omoi_testing::{spawn_app, spawn_app_with_settings, TestApp, TEST_PASSWORD};
use reqwest::header::{HeaderMap, RETRY_AFTER, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A POST without the harness's token, with extra headers; the raw answer.
async fn post(app: &TestApp, path: &str, body: Value, headers: &[(&str, &str)]) -> Answer {
    let mut request = app
        .client
        .post(format!("{}{path}", app.address))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request).await
}

/// What the server answers `request`.
async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    /// `Retry-After` in seconds.
    #[track_caller]
    fn retry_after(&self) -> u64 {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("a Retry-After header: {:?}", self.headers))
    }

    fn cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_string())
            .collect()
    }
}

async fn login(app: &TestApp, email: &str, password: &str, headers: &[(&str, &str)]) -> Answer {
    let body = json!({"email": email, "password": password});
    post(app, "/api/v1/auth/login", body, headers).await
}

#[track_caller]
fn assert_too_many(answer: &Answer, longest: u64) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["code"], "too_many_requests");
    assert_eq!(
        answer.headers["content-type"], "application/problem+json",
        "a problem document"
    );
    let seconds = answer.retry_after();
    assert!(
        (1..=longest).contains(&seconds),
        "Retry-After {seconds} within 1..={longest}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_parallel_wrong_logins_evaluate_five_and_refuse_the_rest() {
    let app = spawn_app().await;
    let attempts = (0..20).map(|_| login(&app, "owner@example.com", "Wr0ng-pass", &[]));
    let answers = join_all(attempts).await;
    let count = |status| answers.iter().filter(|a| a.status == status).count();
    assert_eq!(
        (
            count(StatusCode::UNAUTHORIZED),
            count(StatusCode::TOO_MANY_REQUESTS)
        ),
        (5, 15),
        "exactly the limit of guesses is evaluated: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    for refused in answers
        .iter()
        .filter(|a| a.status != StatusCode::UNAUTHORIZED)
    {
        assert_too_many(refused, 15 * 60);
    }
    let right = login(&app, "owner@example.com", TEST_PASSWORD, &[]).await;
    assert_too_many(&right, 15 * 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_the_refresh_token_of_the_cookie_and_clears_both_cookies() {
    let app = spawn_app().await;
    let session = app.login("owner@example.com").await;
    let refresh = session["refresh_token"].as_str().expect("a refresh token");
    let access = session["access_token"].as_str().expect("an access token");
    let cookie = format!("omoi_refresh_token={refresh}");
    let bearer = format!("Bearer {access}");
    let headers = [
        ("cookie", cookie.as_str()),
        ("authorization", bearer.as_str()),
    ];

    let out = post(&app, "/api/v1/auth/logout", json!({}), &headers).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.body);
    let cleared = out.cookies();
    for name in ["omoi_access_token=;", "omoi_refresh_token=;"] {
        assert!(
            cleared
                .iter()
                .any(|c| c.starts_with(name) && c.contains("Max-Age=0")),
            "{name} cleared: {cleared:?}"
        );
    }
    let reuse = post(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": refresh}),
        &[],
    )
    .await;
    assert_eq!(
        reuse.status,
        StatusCode::UNAUTHORIZED,
        "the cookie's refresh token is revoked: {}",
        reuse.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_with_only_the_refresh_cookie_revokes_it() {
    // A browser back after the access token expired holds the refresh cookie alone.
    let app = spawn_app().await;
    let session = app.login("owner@example.com").await;
    let refresh = session["refresh_token"].as_str().expect("a refresh token");
    let cookie = format!("omoi_refresh_token={refresh}");

    let out = post(
        &app,
        "/api/v1/auth/logout",
        json!({}),
        &[("cookie", &cookie)],
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.body);
    let reuse = post(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": refresh}),
        &[],
    )
    .await;
    assert_eq!(reuse.status, StatusCode::UNAUTHORIZED, "{}", reuse.body);

    let nothing = post(&app, "/api/v1/auth/logout", json!({}), &[]).await;
    assert_eq!(nothing.status, StatusCode::UNAUTHORIZED, "{}", nothing.body);
}

/// A logout presenting a refresh token already exchanged is told what a refresh presenting
/// it is: the token may have been stolen. Every token of the user is revoked — the
/// replacement its exchange got above all, which before stayed valid and renewed itself
/// for ever (a thief's refresh, then the user's logout with the old cookie).
#[tokio::test(flavor = "multi_thread")]
async fn logout_with_a_refresh_token_already_exchanged_revokes_every_token_of_the_user() {
    let app = spawn_app().await;
    let session = app.login("owner@example.com").await;
    let stolen = session["refresh_token"].as_str().expect("a refresh token");
    let access = session["access_token"].as_str().expect("an access token");
    let exchanged = post(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": stolen}),
        &[],
    )
    .await;
    assert_eq!(exchanged.status, StatusCode::OK, "{}", exchanged.body);
    let thiefs_refresh = exchanged.body["refresh_token"].clone();
    let thiefs_access = exchanged.body["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    // Another session of the same user, unrelated to the theft.
    let elsewhere = app.login("owner@example.com").await;

    let cookie = format!("omoi_refresh_token={stolen}");
    let bearer = format!("Bearer {access}");
    let out = post(
        &app,
        "/api/v1/auth/logout",
        json!({}),
        &[("cookie", &cookie), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.body);

    for refresh in [thiefs_refresh, elsewhere["refresh_token"].clone()] {
        let renewed = post(
            &app,
            "/api/v1/auth/refresh",
            json!({"refresh_token": refresh}),
            &[],
        )
        .await;
        assert_eq!(renewed.status, StatusCode::UNAUTHORIZED, "{}", renewed.body);
    }
    let me = app
        .client
        .get(format!("{}/api/v1/auth/me", app.address))
        .bearer_auth(&thiefs_access)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
}

/// The Set-Cookie headers of a login, a refresh and a logout.
async fn session_cookies(app: &TestApp) -> Vec<String> {
    let login = login(app, "owner@example.com", TEST_PASSWORD, &[]).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let refresh = post(
        app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": login.body["refresh_token"]}),
        &[],
    )
    .await;
    assert_eq!(refresh.status, StatusCode::OK, "{}", refresh.body);
    let bearer = format!(
        "Bearer {}",
        refresh.body["access_token"].as_str().expect("token")
    );
    let logout = post(
        app,
        "/api/v1/auth/logout",
        json!({}),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.body);
    [login, refresh, logout]
        .iter()
        .flat_map(Answer::cookies)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn cookies_are_secure_when_configured_and_only_then() {
    let plain = spawn_app().await;
    let cookies = session_cookies(&plain).await;
    assert_eq!(cookies.len(), 6, "{cookies:?}");
    assert!(cookies.iter().all(|c| !c.contains("Secure")), "{cookies:?}");

    let https = spawn_app_with_settings(|s| s.auth.secure_cookies = true).await;
    let cookies = session_cookies(&https).await;
    assert_eq!(cookies.len(), 6, "{cookies:?}");
    assert!(
        cookies
            .iter()
            .all(|c| c.contains("; Secure") && c.contains("HttpOnly")),
        "{cookies:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_address_quota_covers_register_login_and_refresh_and_ignores_untrusted_headers() {
    // The harness's own registration and login take two of the four.
    let app = spawn_app_with_settings(|s| {
        s.auth.rate_limits.per_address = RateQuota {
            burst: 4,
            per_minute: 1,
        };
    })
    .await;
    for _ in 0..2 {
        let ok = login(&app, "owner@example.com", TEST_PASSWORD, &[]).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    }
    let refused = login(&app, "owner@example.com", TEST_PASSWORD, &[]).await;
    assert_too_many(&refused, 60);
    let forged = login(
        &app,
        "owner@example.com",
        TEST_PASSWORD,
        &[("x-forwarded-for", "203.0.113.7")],
    )
    .await;
    assert_too_many(&forged, 60);
    let register = post(
        &app,
        "/api/v1/auth/register",
        json!({"email": "new@example.com", "password": TEST_PASSWORD}),
        &[],
    )
    .await;
    assert_too_many(&register, 60);
    let refresh = post(
        &app,
        "/api/v1/auth/refresh",
        json!({"refresh_token": "anything"}),
        &[],
    )
    .await;
    assert_too_many(&refresh, 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_the_client_is_the_last_forwarded_address() {
    let app = spawn_app_with_settings(|s| {
        s.auth.rate_limits.per_address = RateQuota {
            burst: 2,
            per_minute: 1,
        };
        s.auth.rate_limits.client_address_header = "x-forwarded-for".into();
    })
    .await;
    let client = [("x-forwarded-for", "198.51.100.1")];
    for _ in 0..2 {
        let ok = login(&app, "owner@example.com", TEST_PASSWORD, &client).await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    }
    assert_too_many(
        &login(&app, "owner@example.com", TEST_PASSWORD, &client).await,
        60,
    );
    // The client wrote the first entry; the proxy appended the address it saw.
    let forged = [("x-forwarded-for", "203.0.113.9, 198.51.100.1")];
    assert_too_many(
        &login(&app, "owner@example.com", TEST_PASSWORD, &forged).await,
        60,
    );
    let other = [("x-forwarded-for", "198.51.100.2")];
    let ok = login(&app, "owner@example.com", TEST_PASSWORD, &other).await;
    assert_eq!(ok.status, StatusCode::OK, "another client: {}", ok.body);
    // Requests without the header are the proxy's own: the harness used those up.
    assert_too_many(
        &login(&app, "owner@example.com", TEST_PASSWORD, &[]).await,
        60,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_account_quota_refuses_that_account_only_right_password_or_not() {
    let app = spawn_app_with_settings(|s| {
        s.auth.rate_limits.per_account = RateQuota {
            burst: 3,
            per_minute: 1,
        };
    })
    .await;
    app.register_and_login("limited@example.com").await;
    let ok = login(&app, "limited@example.com", TEST_PASSWORD, &[]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_too_many(
        &login(&app, "LIMITED@example.com ", TEST_PASSWORD, &[]).await,
        60,
    );
    assert_too_many(
        &login(&app, "limited@example.com", "Wr0ng-pass", &[]).await,
        60,
    );
    let other = login(&app, "owner@example.com", TEST_PASSWORD, &[]).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_no_account_can_have_costs_no_quota_key_row_or_hash() {
    let app = spawn_app().await;
    let huge = format!("{}@example.com", "a".repeat(100_000));
    for email in [huge.as_str(), "no-at-sign"] {
        let refused = login(&app, email, TEST_PASSWORD, &[]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    }
    let failures: i64 = sqlx::query_scalar("select count(*) from login_failures")
        .fetch_one(&app.database.pool)
        .await
        .expect("counted");
    assert_eq!(failures, 0, "nothing was recorded for them");
}

#[tokio::test(flavor = "multi_thread")]
async fn hashes_beyond_the_slots_are_refused_with_503_and_are_not_counted_as_failures() {
    let app = spawn_app_with_settings(|s| {
        s.auth.password_hashing.concurrency = 1;
        s.auth.password_hashing.max_wait_ms = 1;
    })
    .await;
    let app = &app;
    let attempts = (0..16).map(|n| async move {
        let email = format!("nobody{n}@example.com");
        login(app, &email, "Wr0ng-pass", &[]).await
    });
    let answers = join_all(attempts).await;
    let wrong = answers
        .iter()
        .filter(|a| a.status == StatusCode::UNAUTHORIZED)
        .count();
    let busy: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(wrong + busy.len(), 16, "only 401 or 503");
    assert!(wrong >= 1 && !busy.is_empty(), "{wrong} evaluated");
    for answer in busy {
        assert_eq!(answer.body["code"], "busy", "{}", answer.body);
        assert!(answer.retry_after() >= 1);
    }
    let failures: i64 = sqlx::query_scalar("select count(*) from login_failures")
        .fetch_one(&app.database.pool)
        .await
        .expect("counted");
    assert_eq!(failures, wrong as i64, "a refused attempt is no failure");
}

/// Old and live rows of each credential table.
async fn seed_credentials(app: &TestApp) {
    let statements = [
        "insert into login_failures (email, failed_at) values
            ('old@example.com', now() - interval '1 day'),
            ('old@example.com', now() - interval '2 days'),
            ('new@example.com', now())",
        "insert into refresh_tokens (jti, user_id, expires_at)
            select gen_random_uuid(), id, now() - interval '2 days' from users
            union all select gen_random_uuid(), id, now() + interval '7 days' from users",
        "insert into revoked_access_tokens (jti, expires_at) values
            (gen_random_uuid(), now() - interval '2 days'),
            (gen_random_uuid(), now() + interval '15 minutes')",
        // Credentials of agents never registered (a registration that failed after its
        // credential was written): one past the hour's margin, one within it.
        "insert into api_keys (id, prefix, secret_sha256, name, organization_id, role,
                               created_by, agent_id, created_at)
            select gen_random_uuid(), 'orphan-' || age, '\\x00', 'orphan', gen_random_uuid(),
                   'agent_executor', (select id from users limit 1), gen_random_uuid(),
                   now() - age::interval
              from unnest(array['2 hours', '1 minute']) as age",
    ];
    for sql in statements {
        sqlx::query(sql)
            .execute(&app.database.pool)
            .await
            .expect("seeded");
    }
}

/// Rows left in login_failures, refresh_tokens, revoked_access_tokens, and agent
/// credentials in api_keys.
async fn remaining(app: &TestApp) -> (i64, i64, i64, i64) {
    let count = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!("select count(*) from {table}"))
            .fetch_one(&app.database.pool)
            .await
            .expect("counted")
    };
    (
        count("login_failures").await,
        count("refresh_tokens").await,
        count("revoked_access_tokens").await,
        count("api_keys where agent_id is not null").await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_removes_expired_credentials_in_bounded_batches_and_keeps_live_ones() {
    let app = spawn_app().await;
    let (organization, _) = app.organization_and_project().await;
    // A registered agent's credential, however old, stays.
    let agent = app.register_agent(&organization).await;
    sqlx::query("update api_keys set created_at = now() - interval '1 day' where agent_id = $1")
        .bind(agent.id.parse::<uuid::Uuid>().expect("an id"))
        .execute(&app.database.pool)
        .await
        .expect("aged");
    seed_credentials(&app).await;
    // The harness's login stored one live refresh token.
    assert_eq!(remaining(&app).await, (3, 3, 2, 3));
    let window = chrono::Duration::minutes(15);
    let pool = &app.database.pool;

    let first = omoi_store::accounts::prune_expired(pool, window, 1)
        .await
        .expect("pruned");
    assert_eq!(
        (
            first.login_failures,
            first.refresh_tokens,
            first.revoked_access_tokens,
            first.orphan_agent_keys
        ),
        (1, 1, 1, 1),
        "at most the limit per table"
    );
    omoi_store::accounts::prune_expired(pool, window, 100)
        .await
        .expect("pruned");
    assert_eq!(remaining(&app).await, (1, 2, 1, 2), "live rows stay");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_prunes_expired_credentials_periodically() {
    let app = spawn_app_with_settings(|s| s.auth.prune_interval_seconds = 1).await;
    seed_credentials(&app).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while remaining(&app).await != (1, 2, 1, 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "not pruned: {:?}",
            remaining(&app).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A made-up API key costs the server a database lookup, and anyone can send one. Each
/// credential refused after a lookup spends the client address's quota of refusals; past
/// it the address gets no lookup for a credential not accepted lately (429, before the
/// database: a valid key never used is refused too, and another address is not), while
/// the keys a lookup accepted lately still work (the valid agents behind the address of a
/// client sending revoked keys). Accepted credentials spend nothing, however many one
/// address holds, nor does a token refused by its signature alone.
#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_bar_their_address_from_lookups_and_accepted_ones_cost_nothing() {
    let app = spawn_app_with_settings(|s| {
        s.auth.rate_limits.refused_credentials_per_address = RateQuota {
            burst: 3,
            per_minute: 1,
        };
        s.auth.rate_limits.client_address_header = "x-forwarded-for".into();
        // Every credential is looked up: nothing is remembered between requests.
        s.auth.credential_cache_ms = 0;
    })
    .await;
    let (organization, _) = app.organization_and_project().await;
    let mut keys = Vec::new();
    for n in 0..7 {
        let (status, created) = app
            .post(
                "/api/v1/auth/api-keys",
                json!({"name": format!("key {n}"), "organization_id": organization, "role": "viewer"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        keys.push(created["key"].as_str().expect("the key").to_string());
    }
    let me = |credential: String, client: &'static str| {
        let request = app
            .client
            .get(format!("{}/api/v1/auth/me", app.address))
            .bearer_auth(credential)
            .header("x-forwarded-for", client);
        answer(request)
    };
    let made_up = |n: usize| format!("omoi_sk_{n:0>16}{}", "x".repeat(32));
    let client = "198.51.100.7";

    // Six valid keys, each looked up, and a token with a forged signature: none spends.
    let never_used = keys.pop().expect("a seventh key");
    for key in &keys {
        let answer = me(key.clone(), client).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    for _ in 0..5 {
        let forged = me("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl".into(), client).await;
        assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", forged.body);
    }
    // Three made-up keys are looked up and refused within the quota, the fourth past it
    // (barring the address); the fifth is not looked up.
    for n in 0..4 {
        let refused = me(made_up(n), client).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
    }
    assert_too_many(&me(made_up(4), client).await, 60);
    let valid_but_barred = me(never_used.clone(), client).await;
    assert_too_many(&valid_but_barred, 60);
    for key in &keys {
        let known = me(key.clone(), client).await;
        assert_eq!(
            known.status,
            StatusCode::OK,
            "accepted lately: {}",
            known.body
        );
    }
    assert!(
        valid_but_barred.body["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("refused")),
        "{}",
        valid_but_barred.body
    );
    // Another address is not barred, and its own refusals are its own.
    let elsewhere = me(never_used, "198.51.100.8").await;
    assert_eq!(elsewhere.status, StatusCode::OK, "{}", elsewhere.body);
    let refused = me(made_up(5), "198.51.100.8").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.body);
}
