//! `omoi-bench bench-live`: board deltas delivered to many WebSocket clients.
//!
//! Runs `omoi serve` as a child process (so that its resident memory is its own), connects
//! N clients to one project's `board` stream, then changes tickets' titles at a steady rate
//! over HTTP and measures, for every client and every command, the time from the command's
//! HTTP answer to the delta carrying the new title. Memory per idle connection is the
//! growth of the server's resident set while the N clients connect and take their
//! snapshots, divided by N (one client connected before them made the board's follower,
//! which is the project's); `--cards` sets the board's size, so the snapshot each client
//! was sent (3,000 cards: about a megabyte).
//!
//! `OMOI_BENCH_WRAP="valgrind --tool=massif"` runs the server under that command (a
//! profiler), and stops it with SIGINT at the end so the profiler writes its report.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::json;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use omoi_testing::{TestApp, TestDatabase, TEST_SIGNING_SECRET};

use crate::setup::load_average;
use crate::stats::Latencies;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Client counts to measure, one after another (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub clients: Vec<usize>,
    /// Commands per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of commands per client count.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Cards on the board (its snapshot takes ~340 bytes a card); commands rename them in
    /// turn.
    #[arg(long, default_value_t = 100)]
    pub cards: usize,
}

const LATENCY_TARGET_MS: f64 = 100.0;
/// Issue #15's, also after a snapshot of a megabyte.
const MEMORY_TARGET_KIB: f64 = 16.0;
/// Concurrent command senders (each sends `rate / LANES` per second), and seeders.
const LANES: u64 = 8;

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.seconds > 0 && args.cards > 0 && args.clients.iter().all(|&n| n > 0),
        "--clients, --rate, --seconds and --cards must be positive"
    );
    let admin_url = crate::setup::admin_url().await?;
    let database = TestDatabase::create_on(&admin_url).await?;
    let port = free_port()?;
    // One principal opens every client: let it hold them all (the default cap is 32).
    let sockets: usize = args.clients.iter().sum();
    let mut server = serve(&database, port, sockets + 1)?;
    let mut app = TestApp::remote(format!("http://127.0.0.1:{port}"), database.clone());
    wait_for_health(&app).await?;
    let token = app.register_and_login("bench@example.com").await;
    app.token = Some(token.clone());
    let (_, project) = app.organization_and_project().await;
    let tickets = seed(&app, &project, args.cards).await?;
    crate::setup::analyze(&database.pool).await?;
    let pid = server.id().unwrap_or_default();
    println!(
        "live: board of {} tickets, {} commands/s for {} s per client count; server pid {pid} (load average {})",
        args.cards,
        args.rate,
        args.seconds,
        load_average()
    );
    println!(
        "  {:>7} {:>10} {:>9} {:>9} {:>9} {:>12} {:>14} {:>14} {:>14} {:>14}",
        "clients",
        "commands",
        "p50 ms",
        "p99 ms",
        "max ms",
        "missing",
        "KiB/idle conn",
        "snapshot KiB",
        "first p99 ms",
        "spread p99 ms"
    );
    // The board's follower (its model, its encoded snapshot) is the project's, not a
    // connection's: one client makes it before connections are counted.
    let (warm, _) = connect(&app, &token, &project, 1).await?;
    let mut sequence = 0u64;
    for &count in &args.clients {
        let before = resident_kib(pid)?;
        let (clients, snapshot_bytes) = connect(&app, &token, &project, count).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = resident_kib(pid)?;
        let per_connection = (after.saturating_sub(before)) as f64 / count as f64;
        let acks = drive(&app, &tickets, args.rate, args.seconds, &mut sequence).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = collect(clients, &acks).await;
        println!(
            "  {count:>7} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>12} {:>14.1} {:>14.1} {:>14.1} {:>14.1}",
            acks.len(),
            report.p50,
            report.p99,
            report.max,
            report.missing,
            per_connection,
            snapshot_bytes as f64 / 1024.0,
            report.first_p99,
            report.spread_p99
        );
    }
    for client in warm {
        client.task.abort();
    }
    println!(
        "  targets: p99 ≤ {LATENCY_TARGET_MS} ms at 1,000 clients and 200 commands/s; ≤ {MEMORY_TARGET_KIB} KiB per idle connection"
    );
    if wrapper().is_some() {
        // A graceful stop: a profiler writes its report on exit.
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()?;
        tokio::time::timeout(Duration::from_secs(60), server.wait())
            .await
            .ok();
    }
    server.kill().await.ok();
    database.pool.close().await;
    Ok(())
}

/// Creates the board's tickets, `LANES` at a time; their ids in order.
async fn seed(app: &TestApp, project: &str, cards: usize) -> anyhow::Result<Vec<String>> {
    let lanes = (0..LANES as usize).map(|lane| async move {
        let mut created = Vec::new();
        for n in (lane..cards).step_by(LANES as usize) {
            let title = format!("seed {n}");
            let (status, body) = app
                .post(
                    "/api/v1/tickets",
                    json!({"project_id": project, "title": title}),
                )
                .await;
            anyhow::ensure!(status == StatusCode::CREATED, "seeding: {body}");
            created.push((n, body["id"].as_str().unwrap_or_default().to_string()));
        }
        Ok(created)
    });
    let mut tickets: Vec<(usize, String)> = Vec::with_capacity(cards);
    for lane in futures_util::future::join_all(lanes).await {
        tickets.extend(lane?);
    }
    tickets.sort_unstable();
    Ok(tickets.into_iter().map(|(_, id)| id).collect())
}

/// The command `OMOI_BENCH_WRAP` runs the server under, word by word.
fn wrapper() -> Option<Vec<String>> {
    let words: Vec<String> = std::env::var("OMOI_BENCH_WRAP")
        .ok()?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (!words.is_empty()).then_some(words)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn serve(database: &TestDatabase, port: u16, sockets: usize) -> anyhow::Result<Child> {
    let exe = crate::setup::omoi_binary()?;
    let mut command = match wrapper() {
        Some(words) => {
            let mut wrapped = Command::new(&words[0]);
            wrapped.args(&words[1..]).arg(exe);
            wrapped
        }
        None => Command::new(exe),
    };
    Ok(command
        .arg("serve")
        .env("DATABASE_URL", &database.url)
        .env("OMOI_JWT_SECRET", std::str::from_utf8(TEST_SIGNING_SECRET)?)
        .env("OMOI_APPLICATION__PORT", port.to_string())
        .env("OMOI_LIVE__MAX_SOCKETS_PER_PRINCIPAL", sockets.to_string())
        .env("OMOI_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn wait_for_health(app: &TestApp) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = app
            .client
            .get(format!("{}/health", app.address))
            .send()
            .await
        {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the server did not become healthy")
}

/// The resident set of a process, from /proc.
fn resident_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))
}

/// When each client saw each command's delta.
type Seen = Arc<Mutex<Vec<(u64, Instant)>>>;

struct Client {
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

/// Connects `count` clients, each subscribed to the board and past its snapshot; with the
/// snapshot's length in bytes.
async fn connect(
    app: &TestApp,
    token: &str,
    project: &str,
    count: usize,
) -> anyhow::Result<(Vec<Client>, usize)> {
    let url = format!("{}/api/v1/ws", app.address.replacen("http://", "ws://", 1));
    let mut clients = Vec::with_capacity(count);
    let mut snapshot_bytes = 0;
    for n in 0..count {
        let mut request = url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let (mut socket, _) =
            tokio_tungstenite::connect_async_with_config(request, Some(client_config()), false)
                .await?;
        let subscribe = json!({"type": "subscribe", "id": format!("c{n}"), "stream": "board", "project_id": project});
        socket.send(Message::text(subscribe.to_string())).await?;
        loop {
            let Some(frame) = socket.next().await else {
                anyhow::bail!("client {n}: the socket closed before its snapshot");
            };
            if let Message::Text(text) = frame? {
                anyhow::ensure!(
                    text.as_str().contains(r#""type":"snapshot""#),
                    "client {n}: expected a snapshot, got {text}"
                );
                snapshot_bytes = text.len();
                break;
            }
        }
        let seen: Seen = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let Message::Text(text) = frame {
                    if let Some(sequence) = bench_sequence(text.as_str()) {
                        if let Ok(mut seen) = record.lock() {
                            seen.push((sequence, Instant::now()));
                        }
                    }
                }
            }
        });
        clients.push(Client { seen, task });
    }
    Ok((clients, snapshot_bytes))
}

/// A client's socket settings. tungstenite fills its whole read buffer with zeros before
/// every read: with its default of 128 KiB, `memset` alone was a tenth of the machine's
/// CPU at 1,000 clients (`perf`), taken from the server measured. Deltas are small; a
/// larger frame (a snapshot) grows the buffer.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

/// The command number a delta's title carries (`"title":"bench <n>"`), found without
/// parsing the frame: a thousand clients parsing every delta would measure the clients.
fn bench_sequence(text: &str) -> Option<u64> {
    let start = text.find(r#""title":"bench "#)? + r#""title":"bench "#.len();
    let digits = text.get(start..)?.split('"').next()?;
    digits.parse().ok()
}

/// Renames tickets at `rate` per second for `seconds`; returns when each command was
/// answered, by its number.
async fn drive(
    app: &TestApp,
    tickets: &[String],
    rate: u64,
    seconds: u64,
    sequence: &mut u64,
) -> anyhow::Result<HashMap<u64, Instant>> {
    let total = rate * seconds;
    let first = *sequence;
    *sequence += total;
    let interval = Duration::from_secs_f64(LANES as f64 / rate as f64);
    let started = Instant::now();
    let mut lanes = Vec::new();
    for lane in 0..LANES {
        let client = app.client.clone();
        let address = app.address.clone();
        let token = app.token.clone().unwrap_or_default();
        let tickets = tickets.to_vec();
        lanes.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            let offset = interval.mul_f64(lane as f64 / LANES as f64);
            let mut k = 0u64;
            loop {
                let n = lane + k * LANES;
                if n >= total {
                    return acks;
                }
                tokio::time::sleep_until((started + offset + interval.mul_f64(k as f64)).into())
                    .await;
                let number = first + n;
                let ticket = &tickets[(number as usize) % tickets.len()];
                let sent = client
                    .patch(format!("{address}/api/v1/tickets/{ticket}"))
                    .bearer_auth(&token)
                    .json(&json!({"title": format!("bench {number}")}))
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    acks.push((number, Instant::now()));
                }
                k += 1;
            }
        }));
    }
    let mut acks = HashMap::new();
    for lane in lanes {
        acks.extend(lane.await?);
    }
    Ok(acks)
}

struct Report {
    p50: f64,
    p99: f64,
    max: f64,
    missing: usize,
    /// p99 over commands of the first client's latency: the command's way to the server's
    /// hub and its follower, before the fan-out.
    first_p99: f64,
    /// p99 over commands of the time from the first client's delta to the last one's:
    /// the fan-out to every client.
    spread_p99: f64,
}

/// Delivery latencies of every (client, command), and the deliveries that never came.
async fn collect(clients: Vec<Client>, acks: &HashMap<u64, Instant>) -> Report {
    let mut latencies = Vec::new();
    let mut missing = 0;
    // Per command: the first and the last client's latency.
    let mut range: HashMap<u64, (f64, f64)> = HashMap::new();
    for client in clients {
        client.task.abort();
        let _ = client.task.await;
        let seen = client.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let mut delivered = 0;
        for (number, at) in seen {
            if let Some(acked) = acks.get(&number) {
                delivered += 1;
                // A delta may beat the HTTP answer to the sender: that is no delay.
                let latency = at.saturating_duration_since(*acked).as_secs_f64() * 1000.0;
                latencies.push(latency);
                let (first, last) = range.entry(number).or_insert((latency, latency));
                *first = first.min(latency);
                *last = last.max(latency);
            }
        }
        missing += acks.len().saturating_sub(delivered);
    }
    let summary = Latencies::of_ms(&latencies);
    let firsts: Vec<f64> = range.values().map(|(first, _)| *first).collect();
    let spreads: Vec<f64> = range.values().map(|(first, last)| last - first).collect();
    Report {
        p50: summary.p50,
        p99: summary.p99,
        max: summary.max,
        missing,
        first_p99: Latencies::of_ms(&firsts).p99,
        spread_p99: Latencies::of_ms(&spreads).p99,
    }
}

#[cfg(test)]
mod tests {
    use super::bench_sequence;

    #[test]
    fn the_command_number_is_read_off_a_delta() {
        let delta = r#"{"type":"delta","id":"c1","position":"1-2","change":{"card":{"title":"bench 42","x":1}}}"#;
        assert_eq!(bench_sequence(delta), Some(42));
        assert_eq!(bench_sequence(r#"{"title":"seed 1"}"#), None);
    }
}
