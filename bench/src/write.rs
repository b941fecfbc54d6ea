//! `omoi-bench bench`: the write path over HTTP against a raw `pgbench` of the same SQL, side by
//! side on the same PostgreSQL, so that the ratio — not a noisy absolute number — is the
//! figure to watch.
//!
//! Each command is `PATCH /api/v1/tickets/{id}` (a new title): the server loads the
//! ticket's events, appends one event and commits. The pgbench script does the same on
//! the same tickets: select the aggregate's events, insert one event, commit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio::process::Command;

use omoi_testing::{spawn_app_on, TestApp, TestDatabase};

use crate::stats::{median, Latencies};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients (for both omoi and pgbench).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Measured runs of each side; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Tickets written to (round-robin), so histories stay short as in real use.
    #[arg(long, default_value_t = 2000)]
    pub tickets: usize,
}

struct RunResult {
    per_second: f64,
    /// Milliseconds.
    p50: f64,
    p99: f64,
    errors: u64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.seconds > 0 && args.runs > 0,
        "all counts must be positive"
    );
    let admin_url = crate::setup::admin_url().await?;
    let database = TestDatabase::create_on(&admin_url).await?;
    let mut app = spawn_app_on(database).await;
    app.token = Some(app.register_and_login("bench@example.com").await);
    let tickets = seed(&app, args.tickets).await?;
    println!(
        "write path: {} clients, {} s per run, {} runs, {} tickets",
        args.clients, args.seconds, args.runs, args.tickets
    );
    drive(&app, &tickets, args.clients, Duration::from_secs(2)).await?; // warm-up
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for run in 1..=args.runs {
        let o = drive(
            &app,
            &tickets,
            args.clients,
            Duration::from_secs(args.seconds),
        )
        .await?;
        let r = pgbench(&app, args.clients, args.seconds).await?;
        println!(
            "  run {run}: omoi {:>7.0} commands/s (p50 {:.1} ms, p99 {:.1} ms, {} errors) | pgbench {:>7.0} tx/s | ratio {:.2}",
            o.per_second, o.p50, o.p99, o.errors, r, o.per_second / r
        );
        ours.push(o);
        raw.push(r);
    }
    let of = |field: fn(&RunResult) -> f64| median(&ours.iter().map(field).collect::<Vec<_>>());
    let median_ours = of(|o| o.per_second);
    let ratios: Vec<f64> = ours
        .iter()
        .zip(&raw)
        .map(|(o, r)| o.per_second / r)
        .collect();
    let ratio = median(&ratios);
    let median_raw = median(&raw);
    let (p50, p99) = (of(|o| o.p50), of(|o| o.p99));
    // Each run's ratio compares two measurements taken back to back; its median is the
    // figure that survives a noisy machine.
    println!("median: omoi {median_ours:.0} commands/s (p50 {p50:.1} ms, p99 {p99:.1} ms), pgbench {median_raw:.0} tx/s, ratio {ratio:.2}");
    app.stop().await;
    Ok(())
}

/// Creates the tickets and the lookup table pgbench uses to address them.
async fn seed(app: &TestApp, count: usize) -> anyhow::Result<Vec<String>> {
    const SEEDERS: usize = 16;
    let (_, project) = app.organization_and_project().await;
    let mut seeders = Vec::new();
    for seeder in 0..SEEDERS {
        let (client, base, project) = (app.client.clone(), app.address.clone(), project.clone());
        let token = app.token.clone().unwrap_or_default();
        seeders.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in (seeder..count).step_by(SEEDERS) {
                let ticket: serde_json::Value = client
                    .post(format!("{base}/api/v1/tickets"))
                    .bearer_auth(&token)
                    .json(&json!({"project_id": project, "title": format!("ticket {n}")}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                ids.push(ticket["id"].as_str().context("ticket id")?.to_string());
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for seeder in seeders {
        ids.extend(seeder.await??);
    }
    let pool = &app.database.pool;
    sqlx::query("create table bench_aggregates (n int primary key, id text not null)")
        .execute(pool)
        .await?;
    sqlx::query("insert into bench_aggregates select row_number() over (), id from unnest($1::text[]) as id")
        .bind(&ids)
        .execute(pool)
        .await?;
    Ok(ids)
}

/// Numbers every command of the process, so that each PATCH sets a title the ticket has
/// never had (a repeated title would be refused as "nothing to change").
static COMMANDS_SENT: AtomicU64 = AtomicU64::new(0);

/// `clients` loops of PATCH requests for `duration`.
async fn drive(
    app: &TestApp,
    tickets: &[String],
    clients: usize,
    duration: Duration,
) -> anyhow::Result<RunResult> {
    let tickets = Arc::new(tickets.to_vec());
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (client, base) = (app.client.clone(), app.address.clone());
        let token = app.token.clone().unwrap_or_default();
        let (tickets, errors) = (tickets.clone(), errors.clone());
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let n = COMMANDS_SENT.fetch_add(1, Ordering::Relaxed);
                let id = &tickets[n as usize % tickets.len()];
                let sent = Instant::now();
                let response = client
                    .patch(format!("{base}/api/v1/tickets/{id}"))
                    .bearer_auth(&token)
                    .json(&json!({"title": format!("title {n}")}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => latencies.push(sent.elapsed()),
                    failed => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            let reason = match failed {
                                Ok(r) => {
                                    format!("{} {}", r.status(), r.text().await.unwrap_or_default())
                                }
                                Err(e) => format!("{e:?}"),
                            };
                            eprintln!("    first error: {reason}");
                        }
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await?);
    }
    let elapsed = started.elapsed();
    let summary = Latencies::of(&latencies);
    Ok(RunResult {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: summary.p50,
        p99: summary.p99,
        errors: errors.load(Ordering::Relaxed),
    })
}

const PGBENCH_SCRIPT: &str = r#"\set n random(1, :tickets)
BEGIN;
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM events
 WHERE aggregate_type = 'Ticket' AND aggregate_id = (SELECT id FROM bench_aggregates WHERE n = :n)
 ORDER BY sequence;
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT 'Ticket', a.id,
       (SELECT coalesce(max(sequence), 0) + 1 FROM events WHERE aggregate_type = 'Ticket' AND aggregate_id = a.id),
       'TicketUpdated', '1',
       '{"TicketUpdated": {"title": "pgbench", "description": null, "priority": null, "phase": null}}',
       '{"actor": "anonymous", "request_id": "0196f5d2-0000-7000-8000-000000000000", "correlation_id": "0196f5d2-0000-7000-8000-000000000000", "organization_id": "0196f5d2-0000-7000-8000-000000000000", "project_id": "0196f5d2-0000-7000-8000-000000000000", "occurred_at": "2026-11-26T00:00:00+00:00"}'
  FROM bench_aggregates a WHERE a.n = :n
    ON CONFLICT DO NOTHING;
COMMIT;
"#;

/// Runs pgbench with the equivalent SQL; returns transactions per second. Two clients that
/// pick the same ticket at once would abort pgbench on the primary key, so the insert
/// ignores that (rare) conflict where omoi would retry it.
async fn pgbench(app: &TestApp, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let tickets: i64 = sqlx::query_scalar("select count(*) from bench_aggregates")
        .fetch_one(&app.database.pool)
        .await?;
    let script = std::env::temp_dir().join(format!("omoi-bench-{}.sql", std::process::id()));
    std::fs::write(&script, PGBENCH_SCRIPT)?;
    let output = Command::new(pgbench_binary())
        .arg(&app.database.url)
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
        ])
        .args([
            "-T",
            &seconds.to_string(),
            "-D",
            &format!("tickets={tickets}"),
        ])
        .arg("-f")
        .arg(&script)
        .output()
        .await
        .context("running pgbench (apt-get install postgresql-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {}{}",
        text,
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {text}"))
}

fn pgbench_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .map(|dir| dir.join("pgbench"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("pgbench"))
}
