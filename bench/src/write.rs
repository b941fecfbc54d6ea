//! `omoi-bench bench`: the write path over HTTP against a raw `pgbench` of the same SQL, side by
//! side on the same PostgreSQL, so that the ratio — not a noisy absolute number — is the
//! figure to watch.
//!
//! Each command is `PATCH /api/v1/tickets/{id}` (a new title): the server loads the
//! ticket, appends one event and commits. The pgbench script does what a command did
//! before omoi kept aggregates and grouped commits: select the aggregate's events, insert
//! one event, commit.
//!
//! Several builds of the write path run side by side (`--variants`): each is a server of
//! its own in this process, on the same database, with its own tickets (so one's kept
//! aggregates are never made stale by another's writes), driven in turn in every run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tokio::process::Command;

use omoi_testing::{spawn_app_on_with_settings, TestApp, TestDatabase};

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
    /// Tickets written to (round-robin) by each variant, so histories stay short as in
    /// real use.
    #[arg(long, default_value_t = 2000)]
    pub tickets: usize,
    /// The write paths compared, in the order driven: `before` (reads the aggregate's new
    /// events before each command, one transaction per command), `kept` (decides on the
    /// kept aggregate, one transaction per command), `group` (kept, and group commit as
    /// configured by default); `group:N` writes at most N batches at once.
    #[arg(long, default_value = "before,kept,group")]
    pub variants: String,
}

/// One build of the write path, as the command settings that make it.
struct Variant {
    name: String,
    trust_kept: bool,
    /// Commands per transaction at most (1: no group commit), and transactions at once.
    group: Option<usize>,
}

impl Variant {
    fn parse(name: &str) -> anyhow::Result<Self> {
        let (kind, in_flight) = match name.split_once(':') {
            Some((kind, n)) => (kind, Some(n.parse().context("group:N takes a number")?)),
            None => (name, None),
        };
        let (trust_kept, group) = match (kind, in_flight) {
            ("before", None) => (false, None),
            ("kept", None) => (true, None),
            ("group", n) => (true, Some(n.unwrap_or(0))),
            _ => anyhow::bail!("unknown variant {name:?} (before, kept, group, group:N)"),
        };
        Ok(Self {
            name: name.to_string(),
            trust_kept,
            group,
        })
    }

    fn adjust(&self, settings: &mut omoi::settings::Settings) {
        let commands = &mut settings.commands;
        commands.trust_kept = self.trust_kept;
        match self.group {
            None => commands.group_commit.max_commands = 1,
            Some(0) => {}
            Some(in_flight) => commands.group_commit.in_flight = in_flight,
        }
    }
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
    let variants = args
        .variants
        .split(',')
        .map(|name| Variant::parse(name.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!variants.is_empty(), "--variants names none");
    let admin_url = crate::setup::admin_url().await?;
    let database = TestDatabase::create_on(&admin_url).await?;
    // Every server holds its own pools and projection runners: PostgreSQL's default 100
    // connections take about five.
    let mut apps = Vec::new();
    for variant in &variants {
        apps.push(
            spawn_app_on_with_settings(database.clone(), |settings| variant.adjust(settings)).await,
        );
    }
    let first = apps.first_mut().context("--variants names none")?;
    let token = first.register_and_login("bench@example.com").await;
    first.token = Some(token.clone());
    let (_, project) = first.organization_and_project().await;
    let mut servers = Vec::new();
    for (variant, mut app) in variants.iter().zip(apps) {
        app.token = Some(token.clone());
        let tickets = seed(&app, &project, args.tickets).await?;
        servers.push((variant, app, tickets));
    }
    let (_, first, _) = servers.first().context("--variants names none")?;
    // pgbench's own tickets: its appends never make a server's kept aggregate stale.
    let raw_tickets = seed(first, &project, args.tickets).await?;
    register_for_pgbench(first, &raw_tickets).await?;
    crate::setup::analyze(&first.database.pool).await?;
    let (in_use, most): (i64, i64) = sqlx::query_as(
        "select (select count(*) from pg_stat_activity), current_setting('max_connections')::bigint",
    )
    .fetch_one(&first.database.pool)
    .await?;
    anyhow::ensure!(
        in_use + args.clients as i64 + 16 <= most,
        "{} servers hold {in_use} of the database's {most} connections: pgbench's {} clients \
         would not fit (fewer --variants, or a server with more max_connections — the \
         benchmarks' own cluster, used without DATABASE_URL, allows 300)",
        servers.len(),
        args.clients
    );
    println!(
        "write path: {} clients, {} s per run, {} runs, {} tickets per variant (load average {})",
        args.clients,
        args.seconds,
        args.runs,
        args.tickets,
        crate::setup::load_average()
    );
    for (_, app, tickets) in &servers {
        drive(app, tickets, args.clients, Duration::from_secs(2)).await?; // warm-up
    }
    let mut ours: Vec<Vec<RunResult>> = servers.iter().map(|_| Vec::new()).collect();
    let mut raw = Vec::new();
    for run in 1..=args.runs {
        let mut measured = Vec::new();
        for (_, app, tickets) in &servers {
            let duration = Duration::from_secs(args.seconds);
            measured.push(drive(app, tickets, args.clients, duration).await?);
        }
        let r = pgbench(first, args.clients, args.seconds).await?;
        println!("  run {run}: pgbench {r:>7.0} tx/s");
        for (((variant, _, _), o), results) in servers.iter().zip(measured).zip(&mut ours) {
            println!(
                "    {:<10} {:>7.0} commands/s (p50 {:.1} ms, p99 {:.1} ms, {} errors) | ratio {:.2}",
                variant.name, o.per_second, o.p50, o.p99, o.errors, o.per_second / r
            );
            results.push(o);
        }
        raw.push(r);
    }
    // Each run's ratio compares measurements taken back to back; its median is the figure
    // that survives a noisy machine.
    println!(
        "medians of {} runs (pgbench {:.0} tx/s):",
        args.runs,
        median(&raw)
    );
    for ((variant, _, _), results) in servers.iter().zip(&ours) {
        let of =
            |field: fn(&RunResult) -> f64| median(&results.iter().map(field).collect::<Vec<_>>());
        let ratios: Vec<f64> = results
            .iter()
            .zip(&raw)
            .map(|(o, r)| o.per_second / r)
            .collect();
        println!(
            "  {:<10} {:>7.0} commands/s (p50 {:.1} ms, p99 {:.1} ms), ratio {:.2} ({:.2}–{:.2})",
            variant.name,
            of(|o| o.per_second),
            of(|o| o.p50),
            of(|o| o.p99),
            median(&ratios),
            ratios.iter().copied().fold(f64::INFINITY, f64::min),
            ratios.iter().copied().fold(0.0, f64::max),
        );
    }
    for (_, app, _) in servers {
        app.stop().await;
    }
    Ok(())
}

/// Creates `count` tickets in `project` through `app`.
pub(crate) async fn seed(
    app: &TestApp,
    project: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    const SEEDERS: usize = 16;
    let mut seeders = Vec::new();
    for seeder in 0..SEEDERS {
        let (client, base, project) =
            (app.client.clone(), app.address.clone(), project.to_string());
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
    Ok(ids)
}

/// The lookup table pgbench addresses its tickets by.
pub(crate) async fn register_for_pgbench(app: &TestApp, ids: &[String]) -> anyhow::Result<()> {
    let pool = &app.database.pool;
    sqlx::query("create table bench_aggregates (n int primary key, id text not null)")
        .execute(pool)
        .await?;
    sqlx::query("insert into bench_aggregates select row_number() over (), id from unnest($1::text[]) as id")
        .bind(ids)
        .execute(pool)
        .await?;
    Ok(())
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
pub(crate) async fn pgbench(app: &TestApp, clients: usize, seconds: u64) -> anyhow::Result<f64> {
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
