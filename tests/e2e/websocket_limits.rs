//! The limits that keep live delivery's memory bounded and its sockets the user's own
//! (issue #12, items 4 and 6), end to end against a real server and a real PostgreSQL:
//! resumptions read back one page at a time, each socket's queue bounded in bytes, read-
//! model followers freed once unwatched, sockets per principal capped, and a cookie
//! accepted only from an allowed `Origin`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use omoi_api::live::LiveConfig;
use omoi_testing::{spawn_app_with, test_live_config, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any expected message may take.
const PATIENCE: Duration = Duration::from_secs(10);

fn request(app: &TestApp, path: &str) -> Request {
    format!("{}{path}", app.address.replacen("http://", "ws://", 1))
        .into_client_request()
        .expect("a WebSocket request")
}

fn with_header(mut request: Request, name: &'static str, value: &str) -> Request {
    let value = value.parse().expect("a header value");
    request.headers_mut().insert(name, value);
    request
}

fn bearer(app: &TestApp, path: &str, token: &str) -> Request {
    with_header(
        request(app, path),
        "authorization",
        &format!("Bearer {token}"),
    )
}

async fn upgrade(request: Request) -> Result<Socket, StatusCode> {
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(response.status()),
        Err(other) => panic!("neither an upgrade nor an HTTP answer: {other}"),
    }
}

async fn connect(app: &TestApp, path: &str, token: &str) -> Socket {
    upgrade(bearer(app, path, token))
        .await
        .expect("the server upgrades")
}

/// A socket whose receive buffer is tiny, so that an unread stream backs up quickly.
async fn slow_socket(app: &TestApp, token: &str) -> Socket {
    let address = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("an address");
    let tcp = tokio::net::TcpSocket::new_v4().expect("a socket");
    tcp.set_recv_buffer_size(4096).expect("a small buffer");
    let stream = tcp.connect(address).await.expect("connected");
    let (socket, _) = tokio_tungstenite::client_async(
        bearer(app, "/api/v1/ws", token),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("the server upgrades");
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("the frame is sent");
}

/// The next JSON message within `wait`, skipping the server's pings; `None` when none came.
async fn next_within(socket: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        let frame = tokio::time::timeout(wait, socket.next()).await.ok()?;
        match frame.expect("the socket is open").expect("a frame") {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON");
                if value["type"] != "ping" {
                    return Some(value);
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn next(socket: &mut Socket) -> Value {
    next_within(socket, PATIENCE)
        .await
        .expect("a message in time")
}

async fn next_of(socket: &mut Socket, kind: &str, id: &str) -> Value {
    let message = next(socket).await;
    assert_eq!(
        (&message["type"], &message["id"]),
        (&json!(kind), &json!(id)),
        "{message}"
    );
    message
}

fn subscribe(id: &str, stream: &str, project: &str) -> Value {
    json!({"type": "subscribe", "id": id, "stream": stream, "project_id": project})
}

/// Creates the ticket titled "Sentinel" that [`until_sentinel`] waits for.
async fn sentinel(app: &TestApp, project: &str) {
    let body = json!({"project_id": project, "title": "Sentinel"});
    let (status, body) = app.post("/api/v1/tickets", body).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Reads the deltas of `id` as they come, through the sentinel's; returns them all.
async fn until_sentinel(socket: &mut Socket, id: &str) -> Vec<Value> {
    let mut received = Vec::new();
    loop {
        let delta = next_of(socket, "delta", id).await;
        let last = delta["event"]["payload"]["TicketCreated"]["title"] == "Sentinel";
        received.push(delta);
        if last {
            return received;
        }
    }
}

/// The value of an unlabelled gauge in `/metrics`.
async fn gauge(app: &TestApp, name: &str) -> i64 {
    let (status, body) = app.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("the text exposition");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics: {text}"))
}

/// Waits until gauge `name` reads `expected`.
async fn gauge_becomes(app: &TestApp, name: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let value = gauge(app, name).await;
        if value == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed {value}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumption_from_the_database_is_read_and_sent_one_page_at_a_time() {
    // Two events in memory, pages of ten from the database.
    let app = spawn_app_with(LiveConfig {
        replay_buffer: 2,
        batch_size: 10,
        // One message at a time in the queue: what the server holds is the page it sends.
        queue_capacity: 1,
        queue_bytes: 1,
        // The watcher reads as fast as it can, but on a loaded machine a one-message queue
        // can stay full for a second: it must not be cut off as a slow consumer.
        slow_client_grace: PATIENCE,
        ..test_live_config()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let token = app.token.clone().expect("a token");
    let mut watcher = connect(&app, "/api/v1/ws", &token).await;
    send(&mut watcher, subscribe("w", "events", &project)).await;
    let start = next_of(&mut watcher, "snapshot", "w").await["position"].clone();
    let reader = tokio::spawn(async move { until_sentinel(&mut watcher, "w").await });
    // Big events, more than the unread client's socket buffers hold (the kernel takes up
    // to 4 MiB per socket on its own).
    app.tickets(&project, "T", 300, 19_000).await;
    sentinel(&app, &project).await;
    let live = reader.await.expect("the watcher got every event");

    // A client resumes from the start and does not read: the server sends what the
    // socket takes, and waits with the page it is sending.
    let mut resumed = slow_socket(&app, &token).await;
    let mut resume = subscribe("r", "events", &project);
    resume["after"] = start.clone();
    send(&mut resumed, resume).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Now the log cannot be read: whatever still arrives was read before.
    let mut lock = app.database.pool.begin().await.expect("a transaction");
    sqlx::query("lock table events in access exclusive mode")
        .execute(&mut *lock)
        .await
        .expect("the events locked");
    let snapshot = next_of(&mut resumed, "snapshot", "r").await;
    assert_eq!(
        (&snapshot["resumed"], &snapshot["position"]),
        (&json!(true), &start)
    );
    let mut replayed = Vec::new();
    while let Some(delta) = next_within(&mut resumed, Duration::from_millis(1500)).await {
        replayed.push(delta);
    }
    // What the socket buffers took, and the rest of the page being sent; not the pages
    // after it.
    assert!(
        replayed.len() + 20 <= live.len(),
        "while the log was locked, {} of {} events still arrived: the resumption read \
         ahead of what it sent",
        replayed.len(),
        live.len()
    );
    lock.rollback().await.expect("the events unlocked");

    // Then the rest, in order: exactly the events the watcher got live.
    while replayed.len() < live.len() {
        replayed.push(next_of(&mut resumed, "delta", "r").await);
    }
    let events =
        |deltas: &[Value]| -> Vec<Value> { deltas.iter().map(|d| d["event"].clone()).collect() };
    assert_eq!(events(&replayed), events(&live));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_whose_queue_holds_too_many_bytes_gets_resync_however_few_messages() {
    // Room for 100,000 messages, but for 64 KiB only.
    let app = spawn_app_with(LiveConfig {
        queue_capacity: 100_000,
        queue_bytes: 64 * 1024,
        slow_client_grace: Duration::from_millis(200),
        ..test_live_config()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let token = app.token.clone().expect("a token");
    let mut fast = connect(&app, "/api/v1/ws", &token).await;
    let mut slow = slow_socket(&app, &token).await;
    send(&mut fast, subscribe("fast", "events", &project)).await;
    next_of(&mut fast, "snapshot", "fast").await;
    send(&mut slow, subscribe("slow", "events", &project)).await;
    next_of(&mut slow, "snapshot", "slow").await;

    // More than the kernel buffers for the unread socket (up to 4 MiB), in few messages.
    let reader = tokio::spawn(async move { until_sentinel(&mut fast, "fast").await });
    let created = app.tickets(&project, "T", 300, 19_000).await;
    sentinel(&app, &project).await;
    reader.await.expect("the reading client got every event");

    // The slow client reads at last: some deltas, then resync, then nothing more.
    let mut deltas = 0;
    let resync = loop {
        let message = next(&mut slow).await;
        if message["type"] != "delta" {
            break message;
        }
        deltas += 1;
    };
    assert_eq!(
        (&resync["type"], &resync["id"], &resync["reason"]),
        (&json!("resync"), &json!("slow"), &json!("slow consumer")),
        "after {deltas} deltas"
    );
    assert!(deltas < created.len(), "resynced after {deltas} deltas");
    assert_eq!(
        next_within(&mut slow, Duration::from_millis(300)).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_model_follower_is_freed_once_its_last_subscriber_left() {
    let app = spawn_app_with(LiveConfig {
        follower_idle: Duration::from_millis(200),
        ..test_live_config()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    assert_eq!(gauge(&app, "omoi_live_followers").await, 0);
    let mut socket = connect(&app, "/api/v1/ws", app.token.as_deref().expect("a token")).await;
    for stream in ["board", "graph"] {
        send(&mut socket, subscribe(stream, stream, &project)).await;
        next_of(&mut socket, "snapshot", stream).await;
    }
    assert_eq!(gauge(&app, "omoi_live_followers").await, 2);

    // One unwatched follower goes, the watched one stays.
    send(&mut socket, json!({"type": "unsubscribe", "id": "board"})).await;
    next_of(&mut socket, "unsubscribed", "board").await;
    gauge_becomes(&app, "omoi_live_followers", 1).await;
    // The socket closing ends the last subscription.
    drop(socket);
    gauge_becomes(&app, "omoi_live_followers", 0).await;

    // Watching again starts a new follower, which follows.
    let mut socket = connect(&app, "/api/v1/ws", app.token.as_deref().expect("a token")).await;
    send(&mut socket, subscribe("board", "board", &project)).await;
    next_of(&mut socket, "snapshot", "board").await;
    assert_eq!(gauge(&app, "omoi_live_followers").await, 1);
    let created = app.tickets(&project, "T", 1, 10).await;
    let delta = next_of(&mut socket, "delta", "board").await;
    assert_eq!(
        delta["change"]["card"]["ticket_id"],
        created[0].as_str(),
        "{delta}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_model_follower_behind_the_hubs_channel_catches_up_from_the_log() {
    // A channel of eight events, and a page of 500 the hub hands over at once.
    follower_catches_up(LiveConfig {
        broadcast_capacity: 8,
        batch_size: 500,
        ..test_live_config()
    })
    .await;
}

/// The channel holds the large events a follower has yet to take within
/// `broadcast_bytes` (and the ring within `replay_bytes`), however many events it may
/// hold: past them, the follower is behind as past its count, and what it missed is
/// freed, not pinned until it reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_model_follower_behind_the_hubs_bytes_catches_up_from_the_log() {
    // Room for thousands of events, but bytes for a few of the burst's (each weighs some
    // 7 KiB), in the broadcast and in the ring (which holds the same events).
    follower_catches_up(LiveConfig {
        broadcast_capacity: 4096,
        broadcast_bytes: 64 << 10,
        replay_bytes: 64 << 10,
        batch_size: 500,
        ..test_live_config()
    })
    .await;
}

async fn follower_catches_up(config: LiveConfig) {
    let app = spawn_app_with(config).await;
    let (_, project) = app.organization_and_project().await;
    let mut socket = connect(&app, "/api/v1/ws", app.token.as_deref().expect("a token")).await;
    send(&mut socket, subscribe("board", "board", &project)).await;
    next_of(&mut socket, "snapshot", "board").await;
    let before = app.tickets(&project, "T", 1, 10).await;
    let delta = next_of(&mut socket, "delta", "board").await;
    assert_eq!(delta["change"]["card"]["ticket_id"], before[0].as_str());

    // Two thousand events of nobody's project in one commit, of 2 KB each: the follower
    // falls behind the channel while it passes them by.
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         select 'Probe', 'burst-' || n, 1, 'ProbeBurst', '1',
                jsonb_build_object('pad', repeat('x', 2000)), '{}'
           from generate_series(1, 2000) n",
    )
    .execute(&app.database.pool)
    .await
    .expect("the burst");
    let after = app.tickets(&project, "T", 1, 10).await;
    let delta = next_of(&mut socket, "delta", "board").await;
    assert_eq!(
        delta["change"]["card"]["ticket_id"],
        after[0].as_str(),
        "{delta}"
    );
    // It fell behind, and the same follower went on: nothing was replayed for a new one.
    assert!(gauge(&app, "omoi_live_follower_catch_ups_total").await >= 1);
    assert_eq!(gauge(&app, "omoi_live_followers").await, 1);
    assert_eq!(
        next_within(&mut socket, Duration::from_millis(300)).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_principal_holds_at_most_the_configured_sockets_and_more_are_refused_with_429() {
    let app = spawn_app_with(LiveConfig {
        max_sockets_per_principal: 2,
        ..test_live_config()
    })
    .await;
    let owner = app.token.clone().expect("a token");
    // Both endpoints count together.
    let first = connect(&app, "/api/v1/ws", &owner).await;
    let _second = connect(&app, "/api/v1/ws/events", &owner).await;
    for path in ["/api/v1/ws", "/api/v1/ws/events"] {
        assert_eq!(
            upgrade(bearer(&app, path, &owner)).await.err(),
            Some(StatusCode::TOO_MANY_REQUESTS),
            "{path}"
        );
    }
    // The refusal is a problem document naming the rule.
    let refused = app
        .client
        .get(format!("{}/api/v1/ws", app.address))
        .bearer_auth(&owner)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert!(
        refused.headers().contains_key("retry-after"),
        "a 429 says when to try again, as the API document has it"
    );
    let problem: Value = refused.json().await.expect("a problem document");
    assert_eq!(problem["code"], "too_many_sockets", "{problem}");
    assert_eq!(gauge(&app, "omoi_live_sockets").await, 2);

    // Another user is counted apart.
    let other = app.register_and_login("other@example.com").await;
    let _theirs = connect(&app, "/api/v1/ws", &other).await;
    // A closed socket frees its place.
    drop(first);
    gauge_becomes(&app, "omoi_live_sockets", 2).await;
    let _again = connect(&app, "/api/v1/ws", &owner).await;

    // Both routes document both refusals.
    let (_, document) = app.get("/openapi.json").await;
    for path in ["/api/v1/ws", "/api/v1/ws/events"] {
        let responses = &document["paths"][path]["get"]["responses"];
        for code in ["403", "429"] {
            assert!(responses[code].is_object(), "{path} {code}: {responses}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cookie_opens_a_websocket_only_from_the_servers_own_or_an_allowed_origin() {
    let app = spawn_app_with(LiveConfig {
        allowed_origins: vec!["https://dash.example".into()],
        ..test_live_config()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let token = app.token.clone().expect("a token");
    let cookie = format!("omoi_access_token={token}");
    let by_cookie = |origin: Option<&str>| {
        let request = with_header(request(&app, "/api/v1/ws"), "cookie", &cookie);
        match origin {
            Some(origin) => with_header(request, "origin", origin),
            None => request,
        }
    };
    let own = app.address.clone();
    for origin in [None, Some("https://evil.example"), Some("null")] {
        assert_eq!(
            upgrade(by_cookie(origin)).await.err(),
            Some(StatusCode::FORBIDDEN),
            "cookie from {origin:?}"
        );
    }
    let (status, body) = app.send_as(None, Method::GET, "/api/v1/ws", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    for origin in [
        own.as_str(),
        "https://dash.example",
        "HTTPS://DASH.EXAMPLE/",
    ] {
        let mut socket = upgrade(by_cookie(Some(origin)))
            .await
            .unwrap_or_else(|status| panic!("cookie from {origin}: {status}"));
        send(&mut socket, subscribe("s", "events", &project)).await;
        next_of(&mut socket, "snapshot", "s").await;
    }

    // A token is no ambient credential: any origin (or none) may present it.
    let evil = "https://evil.example";
    let header = with_header(bearer(&app, "/api/v1/ws", &token), "origin", evil);
    let query = with_header(
        request(&app, &format!("/api/v1/ws/events?token={token}")),
        "origin",
        evil,
    );
    // Presented beside a cookie, the token is what counts.
    let both = with_header(
        with_header(bearer(&app, "/api/v1/ws", &token), "origin", evil),
        "cookie",
        &cookie,
    );
    for request in [header, query, both] {
        let uri = request.uri().clone();
        upgrade(request)
            .await
            .unwrap_or_else(|status| panic!("{uri}: {status}"));
    }
    // The refusal names its rule, before any credential work.
    let refused = app
        .client
        .get(format!("{}/api/v1/ws", app.address))
        .header("cookie", "omoi_access_token=forged")
        .header("origin", evil)
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let problem: Value = refused.json().await.expect("a problem document");
    assert_eq!(problem["code"], "origin_not_allowed", "{problem}");
}

/// A socket's messages past its burst wait their turn: the server reads a flood at the
/// socket's rate rather than as fast as the client sends it, and answers every message
/// (none is dropped or refused).
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_messages_is_read_at_the_sockets_rate_and_each_is_answered() {
    let app = spawn_app_with(LiveConfig {
        message_burst: 10,
        messages_per_second: 50,
        ..test_live_config()
    })
    .await;
    let token = app.token.clone().expect("a token");
    let mut socket = connect(&app, "/api/v1/ws", &token).await;
    let started = std::time::Instant::now();
    for _ in 0..60 {
        socket
            .feed(Message::text(json!({"type": "ping"}).to_string()))
            .await
            .expect("queued");
    }
    socket.flush().await.expect("sent");
    for n in 1..=60 {
        let answer = next(&mut socket).await;
        assert_eq!(answer["type"], "pong", "message {n}: {answer}");
    }
    // Ten at once, then fifty turns at fifty a second: the last answer comes a second
    // after the first message at the earliest.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
}

/// Idle `logs` subscriptions read their transcript once each, then wait: one watcher per
/// process reads the line counts of every followed attempt in one statement, where each
/// subscription polled the database itself every interval. Lines written by another
/// process — here straight to the database, as an `omoi worker`'s in-process agents write
/// them — still reach every subscription, through the watcher.
#[tokio::test(flavor = "multi_thread")]
async fn idle_logs_subscriptions_do_not_poll_and_another_process_lines_arrive() {
    let interval = Duration::from_millis(50);
    let app = spawn_app_with(LiveConfig {
        poll_interval: interval,
        ..test_live_config()
    })
    .await;
    let (organization, project) = app.organization_and_project().await;
    let (task, _) = app.started_task(&organization, &project, "Quiet").await;
    let token = app.token.clone().expect("a token");
    let mut socket = connect(&app, "/api/v1/ws", &token).await;
    let subscriptions = 5;
    for n in 0..subscriptions {
        let id = format!("log{n}");
        send(
            &mut socket,
            json!({"type": "subscribe", "id": id, "stream": "logs", "task_id": task}),
        )
        .await;
        next_of(&mut socket, "snapshot", &id).await;
    }
    // Twenty intervals with nothing written: a read each when it starts, and nothing
    // more (polling, it was a read each per interval: about 100). The bound leaves room
    // for one wake each.
    tokio::time::sleep(interval * 20).await;
    let reads = gauge(&app, "omoi_live_transcript_reads_total").await;
    assert!(
        reads <= 2 * subscriptions,
        "{reads} reads by {subscriptions} idle subscriptions"
    );

    let attempt = omoi_store::transcripts::Attempt {
        task_id: task.parse().expect("a task id"),
        attempt: 1,
        organization_id: organization.parse().expect("an organization id"),
    };
    let written = ["from another process".to_string()];
    omoi_store::transcripts::append(&app.database.pool, attempt, &written)
        .await
        .expect("lines written");
    let mut reached = Vec::new();
    for _ in 0..subscriptions {
        let message = next(&mut socket).await;
        assert_eq!(
            (&message["type"], &message["lines"]),
            (
                &json!("logs"),
                &json!([{"number": 1, "text": "from another process"}])
            ),
            "{message}"
        );
        reached.push(message["id"].as_str().expect("an id").to_string());
    }
    reached.sort();
    let every: Vec<String> = (0..subscriptions).map(|n| format!("log{n}")).collect();
    assert_eq!(reached, every);
}
