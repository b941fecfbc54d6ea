//! Live delivery over WebSocket, end to end against a real server (docs/websocket.md):
//! snapshots and ordered deltas, resumption with `after` (from memory, from the database,
//! and stale), slow clients, two replicas on one database, the original's feed and its
//! filters, malformed frames, pings, and authorization (another organization's project,
//! revoked tokens, removed members).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use omoi_api::live::LiveConfig;
use omoi_store::Cursor;
use omoi_testing::{spawn_app, spawn_app_on, spawn_app_with, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any expected message may take.
const PATIENCE: Duration = Duration::from_secs(10);

fn ws_url(app: &TestApp, path: &str) -> String {
    format!("{}{path}", app.address.replacen("http://", "ws://", 1))
}

/// Opens a WebSocket with `Authorization: Bearer <token>`.
async fn connect(app: &TestApp, path: &str, token: &str) -> Socket {
    let mut request = ws_url(app, path)
        .into_client_request()
        .expect("a WebSocket request");
    let bearer = format!("Bearer {token}").parse().expect("a header value");
    request.headers_mut().insert("authorization", bearer);
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the server upgrades");
    socket
}

/// The owner's socket on `/api/v1/ws`.
async fn owner_socket(app: &TestApp) -> Socket {
    connect(app, "/api/v1/ws", app.token.as_deref().expect("a token")).await
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("the frame is sent");
}

/// The next JSON message, skipping the server's pings.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a frame");
        match frame {
            Message::Text(text) => {
                let value: Value = serde_json::from_str(text.as_str()).expect("JSON");
                if value["type"] != "ping" {
                    return value;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads until the message of `kind` (for subscription `id`), failing on any other
/// message for that subscription.
async fn next_of(socket: &mut Socket, kind: &str, id: &str) -> Value {
    let message = next(socket).await;
    assert_eq!(
        message["type"], kind,
        "expected a {kind} for {id}: {message}"
    );
    assert_eq!(message["id"], id, "{message}");
    message
}

fn subscribe(id: &str, project: &str) -> Value {
    json!({"type": "subscribe", "id": id, "stream": "events", "project_id": project})
}

fn cursor(value: &Value) -> Cursor {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a cursor: {value}"))
}

/// Reads `count` deltas of `id`; checks positions rise and match their events.
async fn deltas(socket: &mut Socket, id: &str, count: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    while out.len() < count {
        let delta = next_of(socket, "delta", id).await;
        assert_eq!(delta["position"], delta["event"]["cursor"], "{delta}");
        if let Some(previous) = out.last() {
            assert!(
                cursor(&delta["position"]) > cursor(&previous["position"]),
                "positions rise: {previous} then {delta}"
            );
        }
        out.push(delta);
    }
    out
}

fn ids_of(deltas: &[Value]) -> Vec<String> {
    deltas
        .iter()
        .map(|d| {
            d["event"]["aggregate_id"]
                .as_str()
                .expect("an id")
                .to_string()
        })
        .collect()
}

/// Creates a ticket in `project`; returns its id.
async fn ticket(app: &TestApp, project: &str, title: &str) -> String {
    let (status, body) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project, "title": title}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("an id").to_string()
}

async fn rename(app: &TestApp, ticket: &str, title: &str) {
    let (status, body) = app
        .patch(
            &format!("/api/v1/tickets/{ticket}"),
            json!({"title": title}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn tickets(app: &TestApp, project: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(ticket(app, project, &format!("Ticket {n}")).await);
    }
    ids
}

/// The project's events after `after` as `GET /api/v1/events` pages them, once the
/// events of every aggregate in `ids` are among them.
///
/// A position is exact but "now" is not: an event committed just before a subscription
/// may still be behind a running transaction, and then it comes after the snapshot's
/// position, as a delta. So tests compare deltas with the HTTP stream by position rather
/// than with the commands they sent.
async fn http_events(app: &TestApp, after: &str, project: &str, ids: &[String]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, page) = app
            .get(&format!("/api/v1/events?after={after}&limit=1000"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let events: Vec<Value> = page["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["metadata"]["project_id"] == project)
            .cloned()
            .collect();
        if ids
            .iter()
            .all(|id| events.iter().any(|e| e["aggregate_id"] == id.as_str()))
        {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events of {ids:?} in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The deltas of `id` are exactly the project's events after `after`, through those of
/// `ids`: same events, positions and order as the HTTP stream; nothing missing or doubled.
async fn expect_deltas(
    app: &TestApp,
    socket: &mut Socket,
    id: &str,
    project: &str,
    after: &str,
    ids: &[String],
) -> Vec<Value> {
    let expected = http_events(app, after, project, ids).await;
    let received = deltas(socket, id, expected.len()).await;
    let events: Vec<&Value> = received.iter().map(|d| &d["event"]).collect();
    assert_eq!(events, expected.iter().collect::<Vec<_>>());
    assert!(cursor(&received[0]["position"]) > cursor(&json!(after)));
    received
}

fn position(message: &Value) -> String {
    message["position"]
        .as_str()
        .expect("a position")
        .to_string()
}

/// After `after`, the next deltas of `id` end with a new ticket's: nothing doubled, nothing
/// missing, nothing else. Returns that delta's position.
async fn then_only(
    app: &TestApp,
    socket: &mut Socket,
    id: &str,
    project: &str,
    after: &str,
) -> String {
    let sentinel = ticket(app, project, "Sentinel").await;
    let received = expect_deltas(
        app,
        socket,
        id,
        project,
        after,
        std::slice::from_ref(&sentinel),
    )
    .await;
    let last = received.last().expect("a delta");
    assert_eq!(last["event"]["aggregate_id"], sentinel.as_str(), "{last}");
    position(last)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_gets_a_snapshot_then_every_event_of_its_project_in_order() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (status, other) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": organization, "name": "Other"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let other = other["id"].as_str().expect("an id").to_string();
    let mut socket = owner_socket(&app).await;

    send(&mut socket, subscribe("board-1", &project)).await;
    let snapshot = next_of(&mut socket, "snapshot", "board-1").await;
    assert_eq!(snapshot["stream"], "events");
    assert_eq!(snapshot["project_id"], project.as_str());
    assert_eq!(snapshot["resumed"], false);
    assert_eq!(snapshot["stale"], false);
    assert_eq!(snapshot["events"], json!([]));
    let start = position(&snapshot);

    let mut created = Vec::new();
    for n in 0..5 {
        created.push(ticket(&app, &project, &format!("Mine {n}")).await);
        ticket(&app, &other, &format!("Not mine {n}")).await;
    }
    let received = expect_deltas(&app, &mut socket, "board-1", &project, &start, &created).await;
    let ids = ids_of(&received);
    assert!(ids.ends_with(&created), "{ids:?}");
    for delta in &received {
        assert_eq!(delta["event"]["metadata"]["project_id"], project.as_str());
    }
    let last = position(received.last().expect("a delta"));
    then_only(&app, &mut socket, "board-1", &project, &last).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_pick_event_types_entity_types_and_ids_together() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let mut socket = owner_socket(&app).await;
    let first = ticket(&app, &project, "First").await;
    let second = ticket(&app, &project, "Second").await;
    let filtered = |id: &str, filters: Value| {
        let mut message = subscribe(id, &project);
        for (key, value) in filters.as_object().expect("filters") {
            message[key] = value.clone();
        }
        message
    };
    send(
        &mut socket,
        filtered("updates", json!({"event_types": ["TicketUpdated"]})),
    )
    .await;
    next_of(&mut socket, "snapshot", "updates").await;
    send(
        &mut socket,
        filtered("tasks", json!({"entity_types": ["TASK"]})),
    )
    .await;
    next_of(&mut socket, "snapshot", "tasks").await;
    let both = json!({"event_types": ["TicketUpdated"], "entity_ids": [first.to_uppercase()]});
    send(&mut socket, filtered("first", both)).await;
    next_of(&mut socket, "snapshot", "first").await;

    for id in [&second, &first] {
        let (status, body) = app
            .patch(
                &format!("/api/v1/tickets/{id}"),
                json!({"priority": "HIGH"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, task) = app
        .post(
            "/api/v1/tasks",
            json!({"ticket_id": first, "title": "Build it", "task_type": "implement"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");

    let mut by_id: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for _ in 0..4 {
        let delta = next(&mut socket).await;
        assert_eq!(delta["type"], "delta", "{delta}");
        let id = delta["id"].as_str().expect("an id").to_string();
        by_id.entry(id).or_default().push(delta);
    }
    assert_eq!(
        ids_of(&by_id["updates"]),
        vec![second.clone(), first.clone()]
    );
    assert_eq!(by_id["tasks"].len(), 1);
    assert_eq!(by_id["tasks"][0]["event"]["event_type"], "TaskCreated");
    assert_eq!(ids_of(&by_id["first"]), vec![first.clone()]);
    assert_eq!(by_id["first"][0]["event"]["event_type"], "TicketUpdated");
    // Unsubscribing stops a subscription; the others carry on.
    send(&mut socket, json!({"type": "unsubscribe", "id": "updates"})).await;
    next_of(&mut socket, "unsubscribed", "updates").await;
    let (status, body) = app
        .patch(
            &format!("/api/v1/tickets/{first}"),
            json!({"priority": "LOW"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let delta = next_of(&mut socket, "delta", "first").await;
    assert_eq!(delta["event"]["aggregate_id"], first.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_reconnects_with_after_misses_nothing_and_gets_nothing_twice() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, subscribe("s", &project)).await;
    let start = position(&next_of(&mut socket, "snapshot", "s").await);
    let created = tickets(&app, &project, 3).await;
    // The client has read all but the last delta when its connection drops.
    let pending = http_events(&app, &start, &project, &created).await;
    let seen = deltas(&mut socket, "s", pending.len() - 1).await;
    let last = position(seen.last().expect("a delta"));
    drop(socket);
    let more = tickets(&app, &project, 3).await;

    let mut socket = owner_socket(&app).await;
    let mut resume = subscribe("s", &project);
    resume["after"] = json!(last);
    send(&mut socket, resume).await;
    let snapshot = next_of(&mut socket, "snapshot", "s").await;
    assert_eq!(snapshot["resumed"], true, "{snapshot}");
    assert_eq!(snapshot["stale"], false, "{snapshot}");
    assert_eq!(snapshot["position"], last.as_str());
    let missed = expect_deltas(&app, &mut socket, "s", &project, &last, &more).await;
    let mut expected = vec![created[2].clone()];
    expected.extend(more);
    assert_eq!(ids_of(&missed), expected);
    // Live deltas continue after the replay, without doubles.
    let last = position(missed.last().expect("a delta"));
    then_only(&app, &mut socket, "s", &project, &last).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resumption_older_than_memory_is_read_back_from_the_database_or_is_stale() {
    // Two events in memory; up to five read back from the database.
    let app = spawn_app_with(LiveConfig {
        replay_buffer: 2,
        replay_limit: 5,
        ..LiveConfig::default()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, subscribe("s", &project)).await;
    let start = position(&next_of(&mut socket, "snapshot", "s").await);
    let created = tickets(&app, &project, 3).await;
    let live = expect_deltas(&app, &mut socket, "s", &project, &start, &created).await;

    // Some from the database, two from memory.
    let mut resume = subscribe("s", &project);
    resume["after"] = json!(start);
    send(&mut socket, resume).await;
    let snapshot = next_of(&mut socket, "snapshot", "s").await;
    assert_eq!(
        (&snapshot["resumed"], &snapshot["stale"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(snapshot["position"], start.as_str());
    let replayed = expect_deltas(&app, &mut socket, "s", &project, &start, &created).await;
    assert_eq!(replayed, live);

    // Beyond the limit: a fresh start, flagged stale, at the newest position (the hub
    // has read the new events once the running subscription got them).
    let newer = tickets(&app, &project, 6).await;
    let last = position(live.last().expect("a delta"));
    let got = expect_deltas(&app, &mut socket, "s", &project, &last, &newer).await;
    let newest = position(got.last().expect("a delta"));
    let mut resume = subscribe("s", &project);
    resume["after"] = json!(start);
    send(&mut socket, resume).await;
    let snapshot = next_of(&mut socket, "snapshot", "s").await;
    assert_eq!(
        (&snapshot["resumed"], &snapshot["stale"]),
        (&json!(false), &json!(true))
    );
    assert!(
        cursor(&snapshot["position"]) >= cursor(&json!(newest)),
        "{snapshot}"
    );
    then_only(&app, &mut socket, "s", &project, &position(&snapshot)).await;

    // A cursor that is no cursor is refused.
    let mut bad = subscribe("s", &project);
    bad["after"] = json!("yesterday");
    send(&mut socket, bad).await;
    assert_eq!(next(&mut socket).await["code"], "invalid_cursor");
}

/// Two subscriptions of one slow connection resume from the database at once: they take
/// turns reading it (a page of at most the connection's 1 MiB budget each), and each
/// gets every missed event once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn replays_of_one_connection_take_turns_and_each_gets_every_event_in_order() {
    let app = spawn_app_with(LiveConfig {
        replay_buffer: 2,
        queue_capacity: 4,
        ..LiveConfig::default()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, subscribe("s", &project)).await;
    let start = position(&next_of(&mut socket, "snapshot", "s").await);
    // About 1.5 MB of events: more than one page of a replay.
    let created = app.tickets(&project, "Big ", 80, 19_000).await;
    let live = expect_deltas(&app, &mut socket, "s", &project, &start, &created).await;
    let live: Vec<String> = live.iter().map(position).collect();

    let token = app.token.clone().expect("a token");
    let mut slow = slow_socket(&app, &token).await;
    for id in ["a", "b"] {
        let mut resume = subscribe(id, &project);
        resume["after"] = json!(start);
        send(&mut slow, resume).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let mut replayed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while replayed.values().map(Vec::len).sum::<usize>() < 2 * live.len() {
        let message = next(&mut slow).await;
        let id = message["id"].as_str().expect("an id").to_string();
        match message["type"].as_str() {
            Some("snapshot") => assert_eq!(message["resumed"], true, "{message}"),
            Some("delta") => replayed.entry(id).or_default().push(position(&message)),
            _ => panic!("{message}"),
        }
    }
    assert_eq!(replayed.get("a"), Some(&live));
    assert_eq!(replayed.get("b"), Some(&live));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_gets_resync_while_others_get_everything() {
    let app = spawn_app_with(LiveConfig {
        queue_capacity: 4,
        slow_client_grace: Duration::from_millis(200),
        ..LiveConfig::default()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let token = app.token.clone().expect("a token");
    let mut fast = owner_socket(&app).await;
    let mut slow = slow_socket(&app, &token).await;
    send(&mut fast, subscribe("fast", &project)).await;
    next_of(&mut fast, "snapshot", "fast").await;
    send(&mut slow, subscribe("slow", &project)).await;
    next_of(&mut slow, "snapshot", "slow").await;

    // Big events, so that the slow client's socket buffers fill (the kernel buffers up to
    // 4 MiB per socket on its own) and then its queue.
    let count = 288;
    let reader = tokio::spawn(async move {
        // Earlier events may precede them (see `http_events`); the big ones are counted.
        let mut received = Vec::new();
        while received.len() < count {
            let delta = next_of(&mut fast, "delta", "fast").await;
            let title = &delta["event"]["payload"]["TicketCreated"]["title"];
            if title.as_str().is_some_and(|t| t.starts_with("Big")) {
                received.push(delta);
            }
        }
        (fast, received)
    });
    let mut created = app.tickets(&project, "Big ", count, 19_000).await;
    let (mut fast, received) = reader.await.expect("the fast reader");
    let last_fast = position(received.last().expect("a delta"));
    let mut received = ids_of(&received);
    received.sort();
    created.sort();
    assert_eq!(received, created, "the fast client got every event");

    // The slow client finally reads: ordered deltas, then resync, then nothing more.
    let mut got = 0;
    let resync = loop {
        let message = next(&mut slow).await;
        if message["type"] == "resync" {
            break message;
        }
        assert_eq!(message["type"], "delta", "{message}");
        got += 1;
    };
    assert_eq!(resync["id"], "slow");
    assert_eq!(resync["reason"], "slow consumer");
    assert!(
        got < count,
        "the slow client was resynced after {got} deltas"
    );
    // Subscribing again works, and the old subscription sends nothing more.
    send(&mut slow, subscribe("again", &project)).await;
    let again = position(&next_of(&mut slow, "snapshot", "again").await);
    then_only(&app, &mut slow, "again", &project, &again).await;
    // The fast client is still subscribed: its next deltas end with the same sentinel.
    let got = expect_deltas(&app, &mut fast, "fast", &project, &last_fast, &[]).await;
    assert_eq!(
        got.last()
            .map(|d| &d["event"]["payload"]["TicketCreated"]["title"]),
        Some(&json!("Sentinel"))
    );
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
    let mut request = ws_url(app, "/api/v1/ws")
        .into_client_request()
        .expect("a request");
    let bearer = format!("Bearer {token}").parse().expect("a header value");
    request.headers_mut().insert("authorization", bearer);
    let (socket, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
        .await
        .expect("the server upgrades");
    socket
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_on_one_replica_gets_the_commands_sent_to_another_in_order() {
    let first = spawn_app().await;
    let (_, project) = first.organization_and_project().await;
    let mut second = spawn_app_on(first.database.clone()).await;
    second.token = first.token.clone();
    let mut socket = owner_socket(&second).await;
    send(&mut socket, subscribe("s", &project)).await;
    let start = position(&next_of(&mut socket, "snapshot", "s").await);

    let created = tickets(&first, &project, 6).await;
    let received = expect_deltas(&first, &mut socket, "s", &project, &start, &created).await;
    assert!(ids_of(&received).ends_with(&created));

    // Commands on both replicas arrive on either, in one order.
    let last = position(received.last().expect("a delta"));
    let mut other = owner_socket(&first).await;
    let mut resume = subscribe("o", &project);
    resume["after"] = json!(last);
    send(&mut other, resume).await;
    next_of(&mut other, "snapshot", "o").await;
    let mut mixed = Vec::new();
    for n in 0..3 {
        mixed.push(ticket(&first, &project, &format!("A{n}")).await);
        mixed.push(ticket(&second, &project, &format!("B{n}")).await);
    }
    let on_second = expect_deltas(&second, &mut socket, "s", &project, &last, &mixed).await;
    let on_first = expect_deltas(&first, &mut other, "o", &project, &last, &mixed).await;
    assert_eq!(ids_of(&on_second), mixed);
    assert_eq!(on_second, {
        let mut renamed = on_first.clone();
        for delta in &mut renamed {
            delta["id"] = json!("s");
        }
        renamed
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_original_feed_filters_by_query_and_changes_filters_at_runtime() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let token = app.token.clone().expect("a token");
    let first = ticket(&app, &project, "First").await;
    let second = ticket(&app, &project, "Second").await;
    // Everything after this position is caused once the feeds are connected; events up to
    // it may still come (see `http_events`) and are skipped.
    let known = http_events(&app, "0-0", &project, std::slice::from_ref(&second)).await;
    let before = cursor(&known.last().expect("an event")["cursor"]);
    // Browsers authenticate with ?token=.
    let url = |query: &str| format!("/api/v1/ws/events?{query}&token={token}");
    let open = |query: String| {
        let url = ws_url(&app, &query);
        async move {
            tokio_tungstenite::connect_async(url)
                .await
                .expect("the server upgrades")
                .0
        }
    };
    let mut everything = open(url("")).await;
    let mut updates = open(url("event_types=TicketUpdated,TicketBlocked")).await;
    let mut tasks = open(url("entity_types=task")).await;
    let mut one = open(url(&format!(
        "entity_ids={first}&event_types=TicketUpdated"
    )))
    .await;

    // Another organization's events reach none of them.
    let intruder = app.register_and_login("intruder@example.com").await;
    let (status, body) = app
        .send_as(
            Some(&intruder),
            Method::POST,
            "/api/v1/organizations",
            Some(json!({"name": "Elsewhere"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for id in [&second, &first] {
        let (status, body) = app
            .patch(
                &format!("/api/v1/tickets/{id}"),
                json!({"priority": "HIGH"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, task) = app
        .post(
            "/api/v1/tasks",
            json!({"ticket_id": first, "title": "Build it", "task_type": "implement"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let task = task["id"].as_str().expect("an id").to_string();

    let kinds = |events: &[Value]| -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                assert_eq!(e["type"], "event", "{e}");
                assert!(e["position"].is_string(), "{e}");
                assert!(e["payload"].is_object(), "{e}");
                (
                    e["event_type"].as_str().expect("a type").to_string(),
                    e["entity_id"].as_str().expect("an id").to_string(),
                )
            })
            .collect()
    };
    let all = read_n(&mut everything, before, 3).await;
    assert_eq!(
        kinds(&all),
        vec![
            ("TicketUpdated".into(), second.clone()),
            ("TicketUpdated".into(), first.clone()),
            ("TaskCreated".into(), task.clone()),
        ]
    );
    assert_eq!(all[2]["entity_type"], "task");
    let got = read_n(&mut updates, before, 2).await;
    assert_eq!(kinds(&got)[1], ("TicketUpdated".into(), first.clone()));
    assert_eq!(
        kinds(&read_n(&mut tasks, before, 1).await),
        vec![("TaskCreated".into(), task.clone())]
    );
    assert_eq!(
        kinds(&read_n(&mut one, before, 1).await),
        vec![("TicketUpdated".into(), first.clone())]
    );

    // A runtime subscribe replaces the filters.
    send(
        &mut one,
        json!({"type": "subscribe", "entity_types": ["ticket"],
                          "event_types": ["TicketCreated"]}),
    )
    .await;
    let answer = next(&mut one).await;
    assert_eq!(answer["status"], "subscribed", "{answer}");
    assert_eq!(answer["event_types"], json!(["TicketCreated"]));
    let (status, body) = app
        .patch(
            &format!("/api/v1/tickets/{first}"),
            json!({"priority": "LOW"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let third = ticket(&app, &project, "Third").await;
    assert_eq!(
        kinds(&read_n(&mut one, before, 1).await),
        vec![("TicketCreated".into(), third.clone())]
    );
    // The unfiltered feed saw both, in order.
    let both = kinds(&read_n(&mut everything, before, 2).await);
    assert_eq!(
        both,
        vec![
            ("TicketUpdated".into(), first),
            ("TicketCreated".into(), third)
        ]
    );
    // The feed answers ping and reports bad frames without closing.
    send(&mut one, json!({"type": "ping"})).await;
    assert_eq!(next(&mut one).await["type"], "pong");
    send(&mut one, json!({"type": "subscribe", "colour": "red"})).await;
    assert_eq!(next(&mut one).await["code"], "invalid_message");
}

/// The next `count` messages, skipping feed events at or before position `before`.
async fn read_n(socket: &mut Socket, before: Cursor, count: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < count {
        let message = next(socket).await;
        if message["type"] != "event" || cursor(&message["position"]) > before {
            out.push(message);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_frames_get_an_error_and_the_socket_keeps_working() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let intruder = app.register_and_login("intruder@example.com").await;
    let (status, organization) = app
        .send_as(
            Some(&intruder),
            Method::POST,
            "/api/v1/organizations",
            Some(json!({"name": "Elsewhere"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{organization}");
    let (status, foreign) = app
        .send_as(
            Some(&intruder),
            Method::POST,
            "/api/v1/projects",
            Some(json!({"organization_id": organization["id"], "name": "Secret"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{foreign}");
    let foreign = foreign["id"].as_str().expect("an id").to_string();
    let mut socket = owner_socket(&app).await;

    let with = |changes: Value| {
        let mut message = subscribe("x", &project);
        for (key, value) in changes.as_object().expect("changes") {
            message[key] = value.clone();
        }
        message
    };
    let cases: Vec<(&str, Message, &str)> = vec![
        (
            "invalid JSON",
            Message::text("{\"type\": subscribe"),
            "invalid_json",
        ),
        ("not an object", Message::text("[1, 2]"), "invalid_message"),
        (
            "no type",
            Message::text("{\"id\": \"x\"}"),
            "invalid_message",
        ),
        (
            "unknown type",
            Message::text(json!({"type": "dance"}).to_string()),
            "unknown_type",
        ),
        (
            "unknown stream",
            Message::text(with(json!({"stream": "weather"})).to_string()),
            "unknown_stream",
        ),
        (
            "filters on a read-model stream",
            Message::text(with(json!({"stream": "board", "event_types": ["X"]})).to_string()),
            "invalid_message",
        ),
        (
            "unknown project",
            Message::text(with(json!({"project_id": uuid::Uuid::now_v7()})).to_string()),
            "not_found",
        ),
        (
            "another organization's project",
            Message::text(with(json!({"project_id": foreign})).to_string()),
            "not_found",
        ),
        (
            "not a UUID",
            Message::text(with(json!({"project_id": "nope"})).to_string()),
            "invalid_message",
        ),
        (
            "no project",
            Message::text(json!({"type": "subscribe", "id": "x", "stream": "events"}).to_string()),
            "invalid_message",
        ),
        (
            "unknown field",
            Message::text(with(json!({"colour": "red"})).to_string()),
            "invalid_message",
        ),
        (
            "bad cursor",
            Message::text(with(json!({"after": "yesterday"})).to_string()),
            "invalid_cursor",
        ),
        (
            "a cursor beyond the log",
            Message::text(with(json!({"after": "999999999999999999-1"})).to_string()),
            "invalid_cursor",
        ),
        (
            "a read model's cursor beyond the log",
            Message::text(
                with(json!({"stream": "board", "after": "999999999999999999-1"})).to_string(),
            ),
            "invalid_cursor",
        ),
        (
            "unknown subscription",
            Message::text(json!({"type": "unsubscribe", "id": "nope"}).to_string()),
            "unknown_subscription",
        ),
        (
            "too large",
            Message::text(format!(
                "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
                "x".repeat(70_000)
            )),
            "too_large",
        ),
        (
            "binary",
            Message::binary(vec![1u8, 2, 3]),
            "binary_not_supported",
        ),
    ];
    for (case, frame, code) in cases {
        socket.send(frame).await.expect("the frame is sent");
        let error = next(&mut socket).await;
        assert_eq!(error["type"], "error", "{case}: {error}");
        assert_eq!(error["code"], code, "{case}: {error}");
        assert!(
            error["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}: {error}"
        );
    }
    // Errors about a subscription name it.
    send(&mut socket, with(json!({"project_id": foreign}))).await;
    assert_eq!(next(&mut socket).await["id"], "x");

    // Still usable: ping, subscribe, deltas.
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next(&mut socket).await["type"], "pong");
    send(&mut socket, subscribe("x", &project)).await;
    let start = position(&next_of(&mut socket, "snapshot", "x").await);
    then_only(&app, &mut socket, "x", &project, &start).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrading_needs_a_valid_credential_by_header_or_query() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    for path in ["/api/v1/ws", "/api/v1/ws/events", "/api/v1/ws?token=forged"] {
        match tokio_tungstenite::connect_async(ws_url(&app, path)).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
            }
            other => panic!("{path}: expected 401, got {:?}", other.map(|(_, r)| r)),
        }
    }
    // Both routes are in the OpenAPI document, pointing at the protocol.
    let (status, document) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in ["/api/v1/ws", "/api/v1/ws/events"] {
        let operation = &document["paths"][path]["get"];
        for code in ["101", "401"] {
            assert!(
                operation["responses"][code].is_object(),
                "{path} {code}: {operation}"
            );
        }
        // Query parameters are optional; the required headers are the opening handshake.
        let parameters = operation["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            parameters
                .iter()
                .all(|p| p["in"] == "header" || p["required"] != true),
            "{path}: {operation}"
        );
        let headers: Vec<_> = parameters
            .iter()
            .filter(|p| p["in"] == "header")
            .map(|p| p["name"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            headers,
            [
                "Connection",
                "Upgrade",
                "Sec-WebSocket-Version",
                "Sec-WebSocket-Key"
            ],
            "{path}"
        );
        let description = operation["description"].as_str().unwrap_or_default();
        assert!(
            description.contains("docs/websocket.md"),
            "{path}: {operation}"
        );
    }
    let info = document["info"]["description"].as_str().unwrap_or_default();
    assert!(
        info.contains("/api/v1/ws") && info.contains("docs/websocket.md"),
        "{info}"
    );
    // A plain GET that is no upgrade is refused with a problem document.
    let (status, body) = app.get("/api/v1/ws").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // The token as a query parameter, as browsers must send it.
    let token = app.token.clone().expect("a token");
    let url = ws_url(&app, &format!("/api/v1/ws?token={token}"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("the server upgrades");
    send(&mut socket, subscribe("q", &project)).await;
    next_of(&mut socket, "snapshot", "q").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_closes_its_socket() {
    let app = spawn_app_with(LiveConfig {
        recheck_interval: Duration::from_millis(200),
        ..LiveConfig::default()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let session = app.login("owner@example.com").await["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let mut socket = connect(&app, "/api/v1/ws", &session).await;
    send(&mut socket, subscribe("s", &project)).await;
    next_of(&mut socket, "snapshot", "s").await;
    let (status, body) = app
        .send_as(
            Some(&session),
            Method::POST,
            "/api/v1/auth/logout",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::from(4401)));
}

/// A socket handed a fresh token of its user (`authenticate`) outlives the token it
/// opened with: revoking that one no longer closes it, and its events go on. A token of
/// another user, or one not valid, is refused with an error, and the socket keeps its
/// credential — then closes once that is revoked.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_handed_a_fresh_token_outlives_the_one_it_opened_with() {
    let app = spawn_app_with(LiveConfig {
        recheck_interval: Duration::from_millis(200),
        ..LiveConfig::default()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let login = || async {
        app.login("owner@example.com").await["access_token"]
            .as_str()
            .expect("a token")
            .to_string()
    };
    let logout = |token: String| {
        let app = &app;
        async move {
            let (status, body) = app
                .send_as(
                    Some(&token),
                    Method::POST,
                    "/api/v1/auth/logout",
                    Some(json!({})),
                )
                .await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        }
    };
    let (first, second) = (login().await, login().await);
    let stranger = app.register_and_login("stranger@example.com").await;
    let mut socket = connect(&app, "/api/v1/ws", &first).await;
    send(&mut socket, subscribe("s", &project)).await;
    let snapshot = next_of(&mut socket, "snapshot", "s").await;
    // The project's events the snapshot did not hold yet (the log's readers held back by
    // a transaction in flight) come as deltas: read through a new ticket's first, so that
    // the replies below are the next messages.
    let seen = then_only(&app, &mut socket, "s", &project, &position(&snapshot)).await;

    for (token, code) in [
        (stranger.as_str(), "another_principal"),
        ("not-a-token", "unauthorized"),
    ] {
        send(&mut socket, json!({"type": "authenticate", "token": token})).await;
        let refused = next(&mut socket).await;
        assert_eq!(
            (&refused["type"], &refused["code"]),
            (&json!("error"), &json!(code)),
            "{refused}"
        );
    }
    send(
        &mut socket,
        json!({"type": "authenticate", "token": second}),
    )
    .await;
    assert_eq!(next(&mut socket).await, json!({"type": "authenticated"}));

    // The first token revoked: the socket goes on with the second, past several checks.
    logout(first).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    then_only(&app, &mut socket, "s", &project, &seen).await;

    // The second revoked too: closed as before.
    logout(second).await;
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::from(4401)));
}

/// Reads until the server closes; the close code, if a close frame came.
async fn close_code(socket: &mut Socket) -> Option<CloseCode> {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the server closes in time");
        match frame {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// A member removed is told at the next re-check of its socket, on every stream of the
/// organization's, without waiting for the project's next change (the subscriptions
/// looked only when one came, and a quiet project kept them open); nothing after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_member_stops_receiving_the_organizations_events() {
    let app = spawn_app_with(LiveConfig {
        recheck_interval: Duration::from_millis(100),
        ..LiveConfig::default()
    })
    .await;
    let (organization, project) = app.organization_and_project().await;
    let viewer = app.register_and_login("viewer@example.com").await;
    let (status, me) = app
        .send_as(Some(&viewer), Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    let member = format!("user:{}", me["id"].as_str().expect("an id"));
    let (status, body) = app
        .post(
            &format!("/api/v1/organizations/{organization}/members"),
            json!({"principal": member, "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A running task, whose transcript nobody writes to.
    let (task, _) = app.started_task(&organization, &project, "Quiet").await;
    // The process managers' moves of the ticket (`ticket_progress`) made before the
    // subscriptions, so that only the events below come to them.
    app.caught_up().await;
    let mut socket = connect(&app, "/api/v1/ws", &viewer).await;
    send(&mut socket, subscribe("s", &project)).await;
    let start = position(&next_of(&mut socket, "snapshot", "s").await);
    then_only(&app, &mut socket, "s", &project, &start).await;
    let board = json!({"type": "subscribe", "id": "b", "stream": "board", "project_id": project});
    send(&mut socket, board).await;
    next_of(&mut socket, "snapshot", "b").await;
    let logs = json!({"type": "subscribe", "id": "l", "stream": "logs", "task_id": task});
    send(&mut socket, logs).await;
    next_of(&mut socket, "snapshot", "l").await;

    let (status, body) = app
        .delete(&format!(
            "/api/v1/organizations/{organization}/members/{member}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // No change to the project: each subscription ends at the socket's next re-check.
    // (A read model's news of the ticket made above may still be on its way before it:
    // a snapshot can be older than the hub's newest event.)
    let mut ended: Vec<String> = Vec::new();
    while ended.len() < 3 {
        let message = next(&mut socket).await;
        let id = message["id"]
            .as_str()
            .expect("a subscription's id")
            .to_string();
        assert!(!ended.contains(&id), "after its end: {message}");
        if message["type"] == "delta" {
            continue;
        }
        assert_eq!(
            (&message["type"], &message["code"]),
            (&json!("error"), &json!("not_found")),
            "{message}"
        );
        ended.push(id);
    }
    ended.sort();
    assert_eq!(ended, ["b", "l", "s"]);
    // Nothing of the project's later events; subscribing again is refused like any other
    // organization's project.
    let secret = ticket(&app, &project, "After the removal").await;
    send(&mut socket, subscribe("s", &project)).await;
    let refused = next(&mut socket).await;
    assert_eq!(refused["code"], "not_found", "{refused} (not {secret})");
}

/// A server shutting down closes its sockets, so that their clients reconnect (to another
/// replica, or to it once it is back): an upgraded connection outlived the server's
/// graceful shutdown, served by a hub nobody else used, for as long as the process lived.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_shutting_down_closes_its_sockets() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, subscribe("s", &project)).await;
    next_of(&mut socket, "snapshot", "s").await;
    let _database = app.stop().await;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the socket stayed open after the server stopped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_pings_and_drops_a_peer_that_does_not_answer() {
    // Silence for two intervals drops a peer: long enough here that a reading client is
    // never dropped for a scheduling pause on a loaded two-core machine.
    let app = spawn_app_with(LiveConfig {
        ping_interval: Duration::from_millis(400),
        ..LiveConfig::default()
    })
    .await;
    let token = app.token.clone().expect("a token");
    // A reading client answers pings (tungstenite does) and gets JSON pings when quiet.
    let mut lively = connect(&app, "/api/v1/ws/events", &token).await;
    let mut silent = connect(&app, "/api/v1/ws", &token).await;
    let mut json_pings = 0;
    let mut protocol_pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2800);
    while let Ok(frame) = tokio::time::timeout_at(deadline, lively.next()).await {
        match frame.expect("open").expect("a frame") {
            Message::Ping(_) => protocol_pings += 1,
            Message::Text(text) if text.as_str() == r#"{"type":"ping"}"# => json_pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(protocol_pings >= 3, "{protocol_pings} pings");
    assert!(json_pings >= 3, "{json_pings} JSON pings");
    // The silent client read nothing for 2.8 s, so it answered no ping: it was closed.
    assert_eq!(close_code(&mut silent).await, Some(CloseCode::from(4408)));
    send(&mut lively, json!({"type": "ping"})).await;
    assert_eq!(next(&mut lively).await["type"], "pong");
}

// ---------------------------------------------------------------------------------------
// The board stream
// ---------------------------------------------------------------------------------------

fn board_subscription(id: &str, project: &str) -> Value {
    json!({"type": "subscribe", "id": id, "stream": "board", "project_id": project})
}

/// The cards of a board view (or a board snapshot's `data`), by ticket id.
fn cards_of(view: &Value) -> BTreeMap<String, Value> {
    let mut cards = BTreeMap::new();
    for column in view["columns"].as_array().expect("columns") {
        for card in column["cards"].as_array().expect("cards") {
            let id = card["ticket_id"].as_str().expect("a ticket id").to_string();
            cards.insert(id, card.clone());
        }
    }
    cards
}

/// Folds `count` board deltas of `id` into `cards`; checks positions rise; returns the
/// ticket of each delta, in order, and the last position.
async fn fold_board(
    socket: &mut Socket,
    id: &str,
    count: usize,
    cards: &mut BTreeMap<String, Value>,
    mut last: Cursor,
) -> (Vec<String>, Cursor) {
    let mut order = Vec::new();
    for _ in 0..count {
        let delta = next_of(socket, "delta", id).await;
        let position = cursor(&delta["position"]);
        assert!(position > last, "positions rise: {last} then {delta}");
        last = position;
        let card = &delta["change"]["card"];
        let ticket = card["ticket_id"].as_str().expect("a card").to_string();
        order.push(ticket.clone());
        cards.insert(ticket, card.clone());
    }
    (order, last)
}

/// The board as `GET /api/v1/board/view` shows it once the projectors caught up.
async fn board_view(app: &TestApp, project: &str) -> BTreeMap<String, Value> {
    app.caught_up().await;
    let (status, view) = app
        .get(&format!("/api/v1/board/view?project_id={project}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    cards_of(&view)
}

/// Commands that each change one card: a move, a block, a new task, a rename.
async fn change_cards(app: &TestApp, tickets: &[String]) {
    for (path, body, expected) in [
        (
            "/api/v1/board/move".to_string(),
            json!({"ticket_id": tickets[0], "to": "analyzing"}),
            StatusCode::OK,
        ),
        (
            format!("/api/v1/tickets/{}/block", tickets[1]),
            json!({"reason": "environment", "note": "CI is down"}),
            StatusCode::OK,
        ),
        (
            "/api/v1/tasks".to_string(),
            json!({"ticket_id": tickets[2], "title": "Form", "task_type": "implement"}),
            StatusCode::CREATED,
        ),
    ] {
        let (status, body) = app.post(&path, body).await;
        assert_eq!(status, expected, "{path}: {body}");
    }
    rename(app, &tickets[0], "Renamed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_board_subscriber_gets_a_delta_per_change_in_order_and_folds_into_the_board_view() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let created = tickets(&app, &project, 2).await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, board_subscription("b", &project)).await;
    let snapshot = next_of(&mut socket, "snapshot", "b").await;
    assert_eq!(snapshot["stream"], "board");
    assert_eq!(snapshot["resumed"], false);
    let mut folded = cards_of(&snapshot["data"]);
    let mut last = cursor(&snapshot["position"]);
    // A ticket committed just before the subscription may come as a delta instead.
    let early = created.len() - folded.len();
    let (order, at) = fold_board(&mut socket, "b", early, &mut folded, last).await;
    assert_eq!(order, created[created.len() - early..]);
    last = at;

    let mut all = created.clone();
    all.push(ticket(&app, &project, "Third").await);
    change_cards(&app, &all).await;
    let (order, _) = fold_board(&mut socket, "b", 5, &mut folded, last).await;
    assert_eq!(
        order,
        vec![
            all[2].clone(),
            all[0].clone(),
            all[1].clone(),
            all[2].clone(),
            all[0].clone()
        ],
        "one delta per command, in the order they committed"
    );
    assert_eq!(folded, board_view(&app, &project).await);
    assert_eq!(folded[&all[0]]["title"], "Renamed");
    assert_eq!(folded[&all[0]]["status"], "analyzing");
    assert_eq!(folded[&all[1]]["blocked"]["reason"], "environment");
    assert_eq!(folded[&all[2]]["tasks"]["total"], 1);
}

/// Board subscribers with room for one queued message, and bursts of commits the follower
/// fans out back to back: a delta that finds the queue full waits for room within the grace
/// period (with no grace at all, one of the two runs tried got a resync — the queue was
/// found full), so each delta arrives once, in order, and nothing is
/// resynced.
#[tokio::test(flavor = "multi_thread")]
async fn board_subscribers_whose_queue_fills_in_a_burst_get_every_delta_once_in_order() {
    let app = spawn_app_with(LiveConfig {
        queue_capacity: 1,
        slow_client_grace: Duration::from_secs(10),
        ..LiveConfig::default()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let created = tickets(&app, &project, 40).await;
    app.caught_up().await;
    let mut sockets = Vec::new();
    for n in 0..3 {
        let mut socket = owner_socket(&app).await;
        let id = format!("b{n}");
        send(&mut socket, board_subscription(&id, &project)).await;
        let snapshot = next_of(&mut socket, "snapshot", &id).await;
        let cards = cards_of(&snapshot["data"]);
        assert_eq!(cards.len(), created.len(), "{snapshot}");
        sockets.push((socket, id, cards, cursor(&snapshot["position"])));
    }

    for round in 0..3 {
        // Renames sent together commit close together: the follower reads them in one
        // page and sends them back to back, faster than a writer takes them.
        let app = &app;
        let burst = created.iter().map(|ticket| {
            let title = format!("Round {round} {ticket}");
            async move { rename(app, ticket, &title).await }
        });
        futures_util::future::join_all(burst).await;
        for (socket, id, cards, last) in &mut sockets {
            let (order, at) = fold_board(socket, id, created.len(), cards, *last).await;
            *last = at;
            let mut renamed = order.clone();
            renamed.sort();
            renamed.dedup();
            assert_eq!(renamed.len(), created.len(), "each card once: {order:?}");
        }
    }
    let expected = board_view(&app, &project).await;
    for (mut socket, id, cards, _) in sockets {
        assert_eq!(cards, expected, "{id} folded into the board");
        // Nothing more (no resync, no doubled delta) is waiting.
        let quiet = tokio::time::timeout(Duration::from_millis(300), socket.next()).await;
        assert!(quiet.is_err(), "{id} got more: {quiet:?}");
    }
}

/// The server writes a message longer than 2 KiB as fragments (so that no connection keeps
/// a write buffer the size of its largest message): the client receives one message.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_longer_than_a_fragment_arrives_whole_and_the_socket_goes_on() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let created = tickets(&app, &project, 60).await;
    let expected = board_view(&app, &project).await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, board_subscription("big", &project)).await;
    let snapshot = next_of(&mut socket, "snapshot", "big").await;
    let length = snapshot.to_string().len();
    assert!(
        length > 3 * 4096,
        "a snapshot of several fragments: {length} bytes"
    );
    assert_eq!(cards_of(&snapshot["data"]), expected);
    assert_eq!(expected.len(), created.len());
    // The next message of the socket is whole too.
    rename(&app, &created[7], "After the snapshot").await;
    let delta = next_of(&mut socket, "delta", "big").await;
    assert_eq!(
        delta["change"]["card"]["title"], "After the snapshot",
        "{delta}"
    );
}

/// The writer writes what is queued together in one go (small frames gathered, a long
/// message in fragments between them): a client that stopped reading while deltas, a long
/// snapshot and more deltas piled up gets each of them whole, once and in order.
#[tokio::test(flavor = "multi_thread")]
async fn messages_queued_together_arrive_whole_once_and_in_order() {
    let app = spawn_app().await;
    let (_, small) = app.organization_and_project().await;
    let (_, big) = app.organization_and_project().await;
    let renamed = tickets(&app, &small, 4).await;
    tickets(&app, &big, 60).await;
    let big_view = board_view(&app, &big).await;
    let token = app.token.clone().expect("a token");
    let mut socket = slow_socket(&app, &token).await;
    send(&mut socket, board_subscription("small", &small)).await;
    let snapshot = next_of(&mut socket, "snapshot", "small").await;
    let mut last = cursor(&snapshot["position"]);

    // The client reads nothing while the server queues: renames in concurrent rounds, the
    // long snapshot of the other board, then more renames.
    let rounds = 12;
    let rename_round = |round: usize| {
        let app = &app;
        let renamed = &renamed;
        futures_util::future::join_all(
            renamed
                .iter()
                .enumerate()
                .map(move |(n, ticket)| async move {
                    rename(app, ticket, &format!("r{round}-{n}")).await;
                })
                .collect::<Vec<_>>(),
        )
    };
    for round in 0..rounds / 2 {
        rename_round(round).await;
    }
    send(&mut socket, board_subscription("big", &big)).await;
    for round in rounds / 2..rounds {
        rename_round(round).await;
    }

    let mut titles = Vec::new();
    let mut big_snapshot = None;
    while titles.len() < rounds * renamed.len() || big_snapshot.is_none() {
        let message = next(&mut socket).await;
        match (message["type"].as_str(), message["id"].as_str()) {
            (Some("delta"), Some("small")) => {
                let position = cursor(&message["position"]);
                assert!(position > last, "positions rise: {last} then {message}");
                last = position;
                let title = &message["change"]["card"]["title"];
                titles.push(title.as_str().expect("a title").to_string());
            }
            (Some("snapshot"), Some("big")) => big_snapshot = Some(message),
            _ => panic!("unexpected message {message}"),
        }
    }
    let big_snapshot = big_snapshot.expect("the long snapshot");
    assert!(
        big_snapshot.to_string().len() > 3 * 4096,
        "several fragments long"
    );
    assert_eq!(cards_of(&big_snapshot["data"]), big_view);
    let mut expected: Vec<String> = (0..rounds)
        .flat_map(|round| (0..renamed.len()).map(move |n| format!("r{round}-{n}")))
        .collect();
    expected.sort();
    let mut seen = titles.clone();
    seen.sort();
    assert_eq!(seen, expected, "every rename once");
    // A round's renames are concurrent, but rounds follow each other.
    let rounds_in_order: Vec<usize> = titles
        .iter()
        .map(|title| {
            title[1..]
                .split('-')
                .next()
                .and_then(|r| r.parse().ok())
                .expect("a round")
        })
        .collect();
    assert!(rounds_in_order.is_sorted(), "rounds in order: {titles:?}");
    let view = board_view(&app, &small).await;
    for (n, ticket) in renamed.iter().enumerate() {
        assert_eq!(view[ticket]["title"], format!("r{}-{n}", rounds - 1));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_board_subscriber_that_reconnects_with_after_gets_exactly_what_it_missed() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, board_subscription("b", &project)).await;
    let snapshot = next_of(&mut socket, "snapshot", "b").await;
    let mut folded = cards_of(&snapshot["data"]);
    let created = tickets(&app, &project, 3).await;
    let (_, last) = fold_board(
        &mut socket,
        "b",
        3,
        &mut folded,
        cursor(&snapshot["position"]),
    )
    .await;
    drop(socket);
    change_cards(&app, &created).await;

    let mut socket = owner_socket(&app).await;
    let mut resume = board_subscription("b", &project);
    resume["after"] = json!(last.to_string());
    send(&mut socket, resume).await;
    let snapshot = next_of(&mut socket, "snapshot", "b").await;
    assert_eq!(snapshot["resumed"], true, "{snapshot}");
    assert_eq!(snapshot["stale"], false, "{snapshot}");
    assert!(snapshot.get("data").is_none(), "{snapshot}");
    let (order, last) = fold_board(&mut socket, "b", 4, &mut folded, last).await;
    assert_eq!(order.len(), 4);
    assert_eq!(folded, board_view(&app, &project).await);
    // Nothing doubled: the next delta is the next command's.
    let fourth = ticket(&app, &project, "Fourth").await;
    let (order, _) = fold_board(&mut socket, "b", 1, &mut folded, last).await;
    assert_eq!(order, vec![fourth]);

    // A position the server no longer remembers gets a fresh snapshot, flagged stale. (The
    // follower's memory starts where the hub's visible head was when it started; on a
    // cluster shared with busy databases that head can lag to the very beginning, and then
    // the follower does remember everything since "0-0": it answers with every change.)
    let mut ancient = board_subscription("old", &project);
    ancient["after"] = json!("0-0");
    send(&mut socket, ancient).await;
    let reply = next_of(&mut socket, "snapshot", "old").await;
    let expected = board_view(&app, &project).await;
    if reply["stale"] == true {
        assert_eq!(reply["resumed"], false, "{reply}");
        assert_eq!(cards_of(&reply["data"]), expected);
    } else {
        assert_eq!(reply["resumed"], true, "{reply}");
        let mut replayed = BTreeMap::new();
        fold_until(
            &mut socket,
            "old",
            &mut replayed,
            &expected,
            Cursor::default(),
            |cards, change| {
                let card = &change["card"];
                let id = card["ticket_id"].as_str().expect("a card").to_string();
                cards.insert(id, card.clone());
            },
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// The graph, timeline and agents streams
// ---------------------------------------------------------------------------------------

fn stream_subscription(id: &str, stream: &str, project: &str) -> Value {
    json!({"type": "subscribe", "id": id, "stream": stream, "project_id": project})
}

/// Reads deltas of subscription `id`, folding each into `state`, until `state` equals
/// `expected` (a delta too many or too few never gets there: `next_of` gives up). Checks
/// the positions rise; returns the last one.
async fn fold_until<S: PartialEq + std::fmt::Debug>(
    socket: &mut Socket,
    id: &str,
    state: &mut S,
    expected: &S,
    mut last: Cursor,
    fold: impl Fn(&mut S, &Value),
) -> Cursor {
    while state != expected {
        let delta = next_of(socket, "delta", id).await;
        let position = cursor(&delta["position"]);
        assert!(position > last, "positions rise: {last} then {delta}");
        last = position;
        fold(state, &delta["change"]);
    }
    last
}

/// A dependency graph as a client keeps it: nodes by id, edges by task.
#[derive(Debug, Default, PartialEq)]
struct Graph {
    nodes: BTreeMap<String, Value>,
    edges: BTreeMap<String, Vec<String>>,
}

impl Graph {
    fn of(view: &Value) -> Self {
        let mut graph = Graph::default();
        for node in view["nodes"].as_array().expect("nodes") {
            graph.put_node(node);
        }
        for edge in view["edges"].as_array().expect("edges") {
            let from = edge["from"].as_str().expect("from").to_string();
            let to = edge["to"].as_str().expect("to").to_string();
            graph.edges.entry(from).or_default().push(to);
        }
        graph
    }

    fn put_node(&mut self, node: &Value) {
        let id = node["id"].as_str().expect("a node id").to_string();
        self.nodes.insert(id, node.clone());
    }

    fn fold(&mut self, change: &Value) {
        for node in change["nodes"].as_array().expect("nodes") {
            self.put_node(node);
        }
        if let Some(edges) = change.get("edges_of") {
            let task = edges["task_id"].as_str().expect("a task").to_string();
            let to: Vec<String> = edges["depends_on"]
                .as_array()
                .expect("depends_on")
                .iter()
                .map(|t| t.as_str().expect("a task id").to_string())
                .collect();
            if to.is_empty() {
                self.edges.remove(&task);
            } else {
                self.edges.insert(task, to);
            }
        }
    }
}

async fn task(app: &TestApp, ticket: &str, title: &str, depends_on: &[&str]) -> String {
    let (status, body) = app
        .post(
            "/api/v1/tasks",
            json!({"ticket_id": ticket, "title": title, "task_type": "implement",
                   "depends_on": depends_on}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("an id").to_string()
}

async fn agent(app: &TestApp, organization: &str, project: Option<&str>, name: &str) -> String {
    let (status, body) = app
        .post(
            "/api/v1/agents/register",
            json!({"organization_id": organization, "project_id": project, "name": name,
                   "agent_type": "worker"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("an id").to_string()
}

/// Assigns, starts and completes `task` on `agent`.
async fn run_task(app: &TestApp, task: &str, agent: &str) {
    for (path, body) in [
        (
            format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": agent}),
        ),
        (format!("/api/v1/tasks/{task}/start"), json!({})),
        (
            format!("/api/v1/tasks/{task}/complete"),
            json!({"result": {"ok": true}}),
        ),
    ] {
        let (status, answer) = app.post(&path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    }
}

async fn get_ok(app: &TestApp, path: &str) -> Value {
    app.caught_up().await;
    let (status, body) = app.get(path).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graph_subscriber_folds_nodes_and_edges_into_the_graph_view() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = ticket(&app, &project, "Checkout").await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, stream_subscription("g", "graph", &project)).await;
    let snapshot = next_of(&mut socket, "snapshot", "g").await;
    assert_eq!(snapshot["stream"], "graph");
    let mut folded = Graph::of(&snapshot["data"]);
    let last = cursor(&snapshot["position"]);

    let a = task(&app, &ticket, "A", &[]).await;
    let b = task(&app, &ticket, "B", &[&a]).await;
    let c = task(&app, &ticket, "C", &[&a]).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{c}/dependencies"),
            json!({"depends_on": b}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .delete(&format!("/api/v1/tasks/{c}/dependencies/{a}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let worker = agent(&app, &organization, Some(&project), "w").await;
    run_task(&app, &a, &worker).await;

    let path = format!("/api/v1/graph/dependency-graph/project/{project}");
    let expected = Graph::of(&get_ok(&app, &path).await);
    fold_until(&mut socket, "g", &mut folded, &expected, last, Graph::fold).await;
    // A's completion reached B through the delta of A: B waits for nothing now.
    assert_eq!(folded.nodes[&b]["unfinished_dependencies"], 0);
    assert_eq!(folded.nodes[&c]["unfinished_dependencies"], 1);
    assert_eq!(folded.edges[&c], vec![b.clone()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeline_subscriber_gets_each_new_entry_with_the_summary_the_timeline_shows() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let first = ticket(&app, &project, "Login").await;
    let mut socket = owner_socket(&app).await;
    send(&mut socket, stream_subscription("t", "timeline", &project)).await;
    let snapshot = next_of(&mut socket, "snapshot", "t").await;
    assert_eq!(snapshot["stream"], "timeline");
    let mut folded: Vec<Value> = snapshot["data"]["entries"]
        .as_array()
        .expect("entries")
        .clone();
    let last = cursor(&snapshot["position"]);

    rename(&app, &first, "Sign-in").await;
    let work = task(&app, &first, "Form", &[]).await;
    // An organization-wide agent: its registration is not the project's, its name is.
    let helper = agent(&app, &organization, None, "Ada").await;
    run_task(&app, &work, &helper).await;

    let page = get_ok(&app, &format!("/api/v1/timeline?project_id={project}")).await;
    let expected = page["entries"].as_array().expect("entries").clone();
    fold_until(
        &mut socket,
        "t",
        &mut folded,
        &expected,
        last,
        |entries, change| {
            entries.insert(0, change["entry"].clone());
        },
    )
    .await;
    let assigned = folded
        .iter()
        .find(|e| e["event_type"] == "TaskAssigned")
        .expect("the assignment is an entry");
    assert!(
        assigned["summary"]
            .as_str()
            .expect("a summary")
            .contains("Ada"),
        "{assigned}"
    );
}

/// Agents by id, as a client keeps them.
fn agents_of(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .expect("agents")
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().expect("an id").to_string(),
                a.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agents_subscriber_sees_the_projects_and_the_organizations_agents_change() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (status, other) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": organization, "name": "Elsewhere"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let other = other["id"].as_str().expect("an id").to_string();
    let mut socket = owner_socket(&app).await;
    send(&mut socket, stream_subscription("a", "agents", &project)).await;
    let snapshot = next_of(&mut socket, "snapshot", "a").await;
    assert_eq!(snapshot["stream"], "agents");
    let mut folded = agents_of(&snapshot["data"]["agents"]);
    let last = cursor(&snapshot["position"]);

    let wide = agent(&app, &organization, None, "wide").await;
    let own = agent(&app, &organization, Some(&project), "own").await;
    let elsewhere = agent(&app, &organization, Some(&other), "elsewhere").await;
    let ticket = ticket(&app, &project, "Work").await;
    let held = task(&app, &ticket, "Held", &[]).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{held}/assign"),
            json!({"agent_id": wide}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(
            &format!("/api/v1/agents/{own}/status"),
            json!({"to": "idle"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let list = get_ok(
        &app,
        &format!("/api/v1/agents?organization_id={organization}"),
    )
    .await;
    let expected: BTreeMap<String, Value> = agents_of(&list["agents"])
        .into_iter()
        .filter(|(_, a)| a["project_id"].is_null() || a["project_id"] == json!(project))
        .collect();
    fold_until(
        &mut socket,
        "a",
        &mut folded,
        &expected,
        last,
        |agents, change| {
            agents.extend(agents_of(&change["agents"]));
        },
    )
    .await;
    assert_eq!(folded[&wide]["current_task_id"], json!(held));
    assert_eq!(folded[&own]["status"], "idle");
    assert!(!folded.contains_key(&elsewhere), "another project's agent");

    // A key limited to the project sees its own agents only, as over HTTP: not the
    // organization-wide one, nor the task of whichever project it runs.
    let (status, key) = app
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "ci", "organization_id": organization, "project_id": project,
                   "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let mut limited = connect(&app, "/api/v1/ws", key["key"].as_str().expect("a key")).await;
    send(&mut limited, stream_subscription("k", "agents", &project)).await;
    let snapshot = next_of(&mut limited, "snapshot", "k").await;
    assert_eq!(snapshot["stream"], "agents");
    let seen: Vec<String> = agents_of(&snapshot["data"]["agents"]).into_keys().collect();
    assert_eq!(seen, vec![own.clone()], "{snapshot}");
    let (status, body) = app
        .post(
            &format!("/api/v1/agents/{wide}/status"),
            json!({"to": "idle"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(
            &format!("/api/v1/agents/{own}/status"),
            json!({"to": "degraded"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let delta = next_of(&mut limited, "delta", "k").await;
    let changed: Vec<String> = agents_of(&delta["change"]["agents"]).into_keys().collect();
    assert_eq!(
        changed,
        vec![own.clone()],
        "the wide agent's change is not sent: {delta}"
    );
}

/// Reads `logs` messages of `id` until line `last`; the lines' numbers and texts.
async fn log_lines(socket: &mut Socket, id: &str, last: i64) -> Vec<(i64, String)> {
    let mut lines: Vec<(i64, String)> = Vec::new();
    while lines.last().map_or(0, |(n, _)| *n) < last {
        let message = next_of(socket, "logs", id).await;
        let batch = message["lines"].as_array().expect("lines");
        assert!(!batch.is_empty(), "{message}");
        assert_eq!(
            message["position"],
            batch.last().expect("a line")["number"].to_string(),
            "{message}"
        );
        for line in batch {
            lines.push((
                line["number"].as_i64().expect("a number"),
                line["text"].as_str().expect("a text").to_string(),
            ));
        }
    }
    lines
}

/// Long lines come in messages of about 256 KiB of text (each at least one line), every
/// line once and in order: a message of a thousand lines of 4,000 characters held 4 MB
/// per subscription while it waited for room.
#[tokio::test(flavor = "multi_thread")]
async fn a_logs_message_carries_at_most_a_quarter_megabyte_of_lines() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (task, agent) = app.started_task(&organization, &project, "Verbose").await;
    let text = |n: usize| format!("{n:05}{}", "x".repeat(3_995));
    for chunk in 0..5 {
        let lines: Vec<String> = (chunk * 60 + 1..=chunk * 60 + 60).map(text).collect();
        agent
            .must(&app, &task, "logs", json!({ "lines": lines }))
            .await;
    }

    let mut socket = owner_socket(&app).await;
    send(
        &mut socket,
        json!({"type": "subscribe", "id": "log", "stream": "logs", "task_id": task}),
    )
    .await;
    next_of(&mut socket, "snapshot", "log").await;
    let mut received: Vec<(i64, String)> = Vec::new();
    let mut messages = 0;
    while received.last().map_or(0, |(n, _)| *n) < 300 {
        let message = next_of(&mut socket, "logs", "log").await;
        let batch = message["lines"].as_array().expect("lines");
        let weight: usize = batch
            .iter()
            .map(|line| line["text"].as_str().map_or(0, str::len))
            .sum();
        assert!(
            !batch.is_empty() && weight <= 256 * 1024,
            "{} lines, {weight} bytes",
            batch.len()
        );
        messages += 1;
        for line in batch {
            received.push((
                line["number"].as_i64().expect("a number"),
                line["text"].as_str().expect("a text").to_string(),
            ));
        }
    }
    let expected: Vec<(i64, String)> = (1..=300).map(|n| (n as i64, text(n))).collect();
    assert_eq!(received, expected);
    assert!(messages >= 5, "{messages} messages");
}

/// A transcript longer than the connection's queue and the socket's buffers, read by a
/// client that lets it wait past the grace for a full queue, arrives whole and in order:
/// it is read at the client's pace. Before, the full queue resynced the subscription, and
/// the dashboard, subscribing again from the first line, never got to the end of it.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_of_a_long_transcript_gets_every_line_without_a_resync() {
    let app = spawn_app_with(LiveConfig {
        queue_capacity: 4,
        slow_client_grace: Duration::from_millis(200),
        ..LiveConfig::default()
    })
    .await;
    let (organization, project) = app.organization_and_project().await;
    let (task, agent) = app.started_task(&organization, &project, "Verbose").await;
    // About 8 MB: more than the queue (1 MiB) and the kernel's buffers hold.
    let text = |n: usize| format!("{n:05}{}", "y".repeat(3_995));
    let total = 2_000;
    for chunk in 0..total / 50 {
        let lines: Vec<String> = (chunk * 50 + 1..=chunk * 50 + 50).map(text).collect();
        agent
            .must(&app, &task, "logs", json!({ "lines": lines }))
            .await;
    }

    let token = app.token.clone().expect("a token");
    let mut slow = slow_socket(&app, &token).await;
    send(
        &mut slow,
        json!({"type": "subscribe", "id": "log", "stream": "logs", "task_id": task}),
    )
    .await;
    next_of(&mut slow, "snapshot", "log").await;
    // Reads nothing for ten times the grace.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let received = log_lines(&mut slow, "log", total as i64).await;
    let expected: Vec<(i64, String)> = (1..=total).map(|n| (n as i64, text(n))).collect();
    assert!(
        received == expected,
        "{} lines, not every one in order",
        received.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tasks_logs_stream_sends_every_line_in_order_as_it_is_written_and_resumes() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (task, agent) = app.started_task(&organization, &project, "Chatty").await;
    let write = |from: usize, to: usize| {
        let lines: Vec<String> = (from..=to).map(|n| format!("line {n}")).collect();
        json!({ "lines": lines })
    };
    agent.must(&app, &task, "logs", write(1, 3)).await;

    let mut socket = owner_socket(&app).await;
    send(
        &mut socket,
        json!({"type": "subscribe", "id": "log", "stream": "logs", "task_id": task}),
    )
    .await;
    let snapshot = next_of(&mut socket, "snapshot", "log").await;
    assert_eq!(snapshot["stream"], "logs");
    assert_eq!(snapshot["position"], "0");
    assert_eq!(snapshot["project_id"], project.as_str());
    let first = log_lines(&mut socket, "log", 3).await;
    assert_eq!(
        first,
        vec![
            (1, "line 1".to_string()),
            (2, "line 2".to_string()),
            (3, "line 3".to_string())
        ]
    );
    // Two thousand more, as they are written.
    agent.must(&app, &task, "logs", write(4, 1003)).await;
    agent.must(&app, &task, "logs", write(1004, 2003)).await;
    let more = log_lines(&mut socket, "log", 2003).await;
    let expected: Vec<(i64, String)> = (4..=2003).map(|n| (n, format!("line {n}"))).collect();
    assert_eq!(more, expected);

    // Resumed after line 1,000 on another socket: exactly the rest.
    let mut again = owner_socket(&app).await;
    send(
        &mut again,
        json!({"type": "subscribe", "id": "rest", "stream": "logs", "task_id": task,
               "attempt": 1, "after": "1000"}),
    )
    .await;
    let snapshot = next_of(&mut again, "snapshot", "rest").await;
    assert_eq!(snapshot["resumed"], true);
    let rest = log_lines(&mut again, "rest", 2003).await;
    assert_eq!(rest, expected[997..].to_vec());

    // Refusals name what was wrong; the socket goes on.
    let (_, other_project) = app.organization_and_project().await;
    for (request, code) in [
        (json!({"stream": "logs"}), "invalid_message"),
        (
            json!({"stream": "logs", "task_id": task, "after": "x"}),
            "invalid_cursor",
        ),
        (
            json!({"stream": "logs", "task_id": task, "after": "-1"}),
            "invalid_cursor",
        ),
        (
            json!({"stream": "logs", "task_id": task, "attempt": 0}),
            "invalid_message",
        ),
        // A resumption names its attempt (line numbers start over with each)…
        (
            json!({"stream": "logs", "task_id": task, "after": "1000"}),
            "invalid_message",
        ),
        // …and a line of it.
        (
            json!({"stream": "logs", "task_id": task, "attempt": 1, "after": "2004"}),
            "invalid_cursor",
        ),
        (
            json!({"stream": "logs", "task_id": task, "attempt": 2, "after": "1"}),
            "invalid_cursor",
        ),
        (
            json!({"stream": "logs", "task_id": task, "event_types": ["TaskStarted"]}),
            "invalid_message",
        ),
        (
            json!({"stream": "logs", "task_id": task, "project_id": other_project}),
            "not_found",
        ),
        (
            json!({"stream": "logs", "task_id": uuid::Uuid::now_v7()}),
            "not_found",
        ),
        (
            json!({"stream": "events", "project_id": project, "task_id": task}),
            "invalid_message",
        ),
        (
            json!({"stream": "steering", "agent_id": agent.id}),
            "forbidden",
        ),
        (json!({"stream": "steering"}), "invalid_message"),
    ] {
        let mut message = request.clone();
        message["type"] = json!("subscribe");
        message["id"] = json!("bad");
        send(&mut socket, message).await;
        let error = next_of(&mut socket, "error", "bad").await;
        assert_eq!(error["code"], code, "{request}: {error}");
    }
    // Every stream's subscription ids are bounded, these included.
    let long = "i".repeat(129);
    for request in [
        json!({"stream": "logs", "task_id": task}),
        json!({"stream": "steering", "agent_id": agent.id}),
    ] {
        let mut message = request.clone();
        message["type"] = json!("subscribe");
        message["id"] = json!(long);
        send(&mut socket, message).await;
        let error = next_of(&mut socket, "error", &long).await;
        assert_eq!(error["code"], "invalid_message", "{request}: {error}");
    }
    // A stranger cannot follow it.
    let stranger = app.register_and_login("stranger@example.com").await;
    let mut theirs = connect(&app, "/api/v1/ws", &stranger).await;
    send(
        &mut theirs,
        json!({"type": "subscribe", "id": "peek", "stream": "logs", "task_id": task}),
    )
    .await;
    let error = next_of(&mut theirs, "error", "peek").await;
    assert_eq!(error["code"], "not_found", "{error}");
}

/// A Guardian's steering of `task`.
async fn steer(app: &TestApp, task: &str, message: &str) {
    let (status, body) = app
        .post(
            "/api/v1/guardian/interventions",
            json!({"kind": "steer", "task_id": task, "reason": "drifting", "message": message}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `agent`'s own socket subscribed to its steering (`steer`), past the snapshot.
async fn steering_socket(app: &TestApp, agent: &omoi_testing::Agent) -> Socket {
    let mut socket = connect(app, "/api/v1/ws", &agent.credential).await;
    send(
        &mut socket,
        json!({"type": "subscribe", "id": "steer", "stream": "steering", "agent_id": agent.id}),
    )
    .await;
    next_of(&mut socket, "snapshot", "steer").await;
    socket
}

/// A client that closes gets the server's close frame back (the closing handshake of
/// RFC 6455 §5.5.1), not a dropped connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_closes_gets_the_closing_handshake() {
    let app = spawn_app().await;
    let mut socket = owner_socket(&app).await;
    socket.close(None).await.expect("the close is sent");
    let mut replied = false;
    loop {
        match tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the server answers in time")
        {
            Some(Ok(Message::Close(_))) => replied = true,
            Some(Ok(_)) => {}
            Some(Err(error)) => panic!("no closing handshake: {error}"),
            None => break,
        }
    }
    assert!(replied, "the server's close frame");
}

/// More steering waits than the connection's queue holds at once (an agent may hold 100
/// tasks with 20 messages each against a queue of 256): it is handed over in batches
/// that fit, every message, rather than not at all.
#[tokio::test(flavor = "multi_thread")]
async fn more_steering_than_the_socket_queue_holds_is_handed_over_whole() {
    let app = spawn_app_with(LiveConfig {
        queue_capacity: 2,
        ..LiveConfig::default()
    })
    .await;
    let (organization, project) = app.organization_and_project().await;
    let (task, agent) = app.started_task(&organization, &project, "Steered").await;
    let sent: Vec<String> = (1..=5).map(|n| format!("Step {n}.")).collect();
    for message in &sent {
        steer(&app, &task, message).await;
    }
    app.caught_up().await;
    let mut socket = steering_socket(&app, &agent).await;
    let mut received = Vec::new();
    for _ in &sent {
        let message = next_of(&mut socket, "steering", "steer").await;
        received.push(message["message"].as_str().expect("a message").to_string());
    }
    assert_eq!(received, sent);
}

#[tokio::test(flavor = "multi_thread")]
async fn steering_reaches_an_agent_on_its_socket_once_and_is_recorded_as_delivered() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let (task, agent) = app.started_task(&organization, &project, "Steered").await;
    // One waits before the agent connects…
    steer(&app, &task, "Fix the failing test first.").await;
    app.caught_up().await;

    let mut socket = steering_socket(&app, &agent).await;
    let waiting = next_of(&mut socket, "steering", "steer").await;
    assert_eq!(waiting["task_id"], task.as_str());
    assert_eq!(waiting["message"], "Fix the failing test first.");
    assert_eq!(waiting["source"], "guardian");

    // …and one arrives while it is connected.
    steer(&app, &task, "Then rebase.").await;
    let live = next_of(&mut socket, "steering", "steer").await;
    assert_eq!(live["message"], "Then rebase.");

    // Both recorded as delivered, by the agent, and not handed over again.
    let (_, history) = app.get(&format!("/api/v1/tasks/{task}/history")).await;
    let delivered: Vec<&Value> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event_type"] == "SteeringDelivered")
        .collect();
    assert_eq!(delivered.len(), 2, "{history}");
    for event in delivered {
        assert_eq!(
            event["metadata"]["actor"],
            format!("agent:{}", agent.id),
            "{event}"
        );
    }
    app.caught_up().await;
    let beat = agent.heartbeat(&app).await;
    assert_eq!(beat["steering"], json!([]), "{beat}");
}
