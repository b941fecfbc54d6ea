//! `omoi-bench chaos`: replicas under faults. Runs `omoi serve` replicas and `omoi worker`s on
//! one fresh database (all on loopback), drives commands, HTTP agents, WebSocket board
//! subscribers and Stripe deliveries at them, and SIGKILLs a random process every few
//! seconds (starting it again at once). When the faults stop it lets the work finish,
//! then checks the invariants ([`checks`]) and prints the counts. Exits non-zero when any
//! invariant was broken (the database and the processes' logs are then kept).
//!
//! # Layout
//!
//! * [`fleet`] — the processes: start, SIGKILL, restart, readiness.
//! * [`client`] — requests to random replicas; the ledger of commands and what was seen.
//! * [`workload`] — setup, ticket lives, Stripe deliveries.
//! * [`agents`] — HTTP agents: register, heartbeat, claim, start, complete.
//! * [`subscribers`] — board and events subscribers that resume after their replica dies.
//! * [`phases`] — the driver's tasks while the faults run, and the settling after.
//! * [`checks`] — the invariants.

mod agents;
pub mod checks;
pub mod client;
mod fleet;
mod phases;
mod subscribers;
mod workload;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use checks::Verdict;
use client::{Client, Ledger};
use fleet::{Fleet, FleetConfig};
use omoi_testing::TestDatabase;
use phases::Running;
use workload::{Driven, Setup};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds of faults (at most 600).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// A random process is SIGKILLed (and started again) this often, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub kill_every: f64,
    /// `omoi serve` replicas.
    #[arg(long, default_value_t = 3)]
    pub serve: usize,
    /// `omoi worker` processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Seed of the random choices (which process dies when, where requests go); printed,
    /// so that a run's schedule can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Commands per second the driver sends (besides agents and Stripe).
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// HTTP agents (they run the tasks needing capability `http`, and any other).
    #[arg(long, default_value_t = 3)]
    pub agents: usize,
    /// WebSocket subscribers of the projects' boards; besides, one per project follows
    /// its raw events.
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// What the workers' in-process agents run per task (`nothing`: complete at once).
    #[arg(long, default_value = "sleep 0.2")]
    pub work: String,
    /// Longest wait, once the faults stop, for every task to finish and every view to
    /// settle.
    #[arg(long, default_value_t = 120)]
    pub settle_seconds: u64,
    /// Keep the run's database when every invariant held (it is always kept when one
    /// broke). Dropping a database makes the server checkpoint, which can take long on a
    /// busy one.
    #[arg(long)]
    pub keep_database: bool,
}

/// Command lanes; the rate is shared among them.
const LANES: u64 = 4;
/// An agent silent this long is failed (short, so a killed worker's tasks come back
/// within the run).
const STALE_AFTER_MS: u64 = 3_000;

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=600).contains(&self.seconds),
            "--seconds must be 1 to 600"
        );
        anyhow::ensure!(
            (1..=600).contains(&self.settle_seconds),
            "--settle-seconds must be 1 to 600"
        );
        anyhow::ensure!(self.kill_every >= 0.1, "--kill-every must be at least 0.1");
        anyhow::ensure!(self.serve >= 1, "--serve must be at least 1");
        anyhow::ensure!(self.rate >= 1, "--rate must be at least 1");
        // Workers also sweep: they give back the tasks of silent agents and of lost claims.
        anyhow::ensure!(self.workers >= 1, "--workers must be at least 1");
        Ok(())
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let admin_url = crate::setup::admin_url().await?;
    let database = TestDatabase::create_on(&admin_url).await?;
    let scratch = std::env::temp_dir().join(format!("omoi-chaos-{}", database.name));
    std::fs::create_dir_all(scratch.join("work"))?;
    println!(
        "chaos: {} serve + {} workers on database {}, {} s, a SIGKILL every {} s, seed {seed}",
        args.serve, args.workers, database.name, args.seconds, args.kill_every
    );
    let webhook_secret = format!("whsec_chaos_{}", uuid::Uuid::new_v4().simple());
    let mut fleet = Fleet::start(FleetConfig {
        database_url: database.url.clone(),
        serve: args.serve,
        workers: args.workers,
        environment: environment(&args, &scratch, &webhook_secret),
        logs: scratch.clone(),
    })?;
    let outcome = drive(&args, seed, &database, &mut fleet, webhook_secret).await;
    fleet.stop().await;
    let drop_database = (!args.keep_database).then_some(admin_url.as_str());
    finish(outcome, database, drop_database, &scratch).await
}

/// What every process of the fleet is given.
fn environment(args: &Args, scratch: &Path, webhook_secret: &str) -> Vec<(String, String)> {
    let mut environment: Vec<(String, String)> = [
        (
            "OMOI_JWT_SECRET",
            format!("chaos-{}", uuid::Uuid::new_v4().simple()),
        ),
        ("OMOI_STRIPE_WEBHOOK_SECRET", webhook_secret.to_string()),
        ("OMOI_DATABASE__MAX_CONNECTIONS", "5".into()),
        ("OMOI_WORKER__STALE_AFTER_MS", STALE_AFTER_MS.to_string()),
        ("OMOI_WORKER__CHECK_INTERVAL_MS", "300".into()),
        ("OMOI_WORKER__POLL_INTERVAL_MS", "200".into()),
        // A claim whose answer died with its replica gives its task back this soon.
        ("OMOI_WORKER__START_WITHIN_MS", "3000".into()),
        ("OMOI_WORKER__PROJECT_CONCURRENCY", "10".into()),
        (
            "OMOI_WORKER__WORK_DIR",
            scratch.join("work").display().to_string(),
        ),
        ("OMOI_WORKER__KEEP_FAILED_FOR_MS", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if args.work == "nothing" {
        environment.push(("OMOI_WORKER__WORK".into(), "nothing".into()));
    } else {
        environment.push(("OMOI_WORKER__WORK__COMMAND".into(), args.work.clone()));
    }
    if std::env::var_os("OMOI_LOG").is_none() {
        environment.push(("OMOI_LOG".into(), "warn".into()));
    }
    environment
}

/// The verdicts of a run that went through.
struct Outcome {
    verdicts: Vec<Verdict>,
}

impl Outcome {
    fn violations(&self) -> usize {
        self.verdicts.iter().map(|v| v.violations.len()).sum()
    }
}

/// Everything between starting the fleet and stopping it.
async fn drive(
    args: &Args,
    seed: u64,
    database: &TestDatabase,
    fleet: &mut Fleet,
    webhook_secret: String,
) -> anyhow::Result<Outcome> {
    let ledger = Arc::new(Ledger::default());
    let client = Client::new(fleet.addresses(), ledger.clone(), seed)?;
    fleet.ready(&client.http).await?;
    let setup = Arc::new(Setup::create(&client, webhook_secret).await?);
    let running = Running::start(args, &client, &setup);
    let processes = faults(args, seed, fleet, &client).await;
    let settled = running.settle(args, &client, &setup, database).await?;
    let mut verdicts = vec![processes, settled.subscribers];
    let http_agents = settled.http_agents;
    let inputs = checks::Inputs {
        pool: &database.pool,
        options: &database.options,
        organization: &setup.organization,
        ledger: &ledger.entries(),
        http_agents: &http_agents,
        stripe_events: &settled.driven.stripe_events,
    };
    verdicts.extend(checks::all(&inputs).await?);
    verdicts.insert(1, driver(&settled.driven, &settled.agents));
    Ok(Outcome { verdicts })
}

/// What the driver did (counts only).
fn driver(driven: &Driven, agents: &agents::AgentStats) -> Verdict {
    let mut verdict = Verdict::new("driver");
    verdict.count("tickets created", driven.tickets);
    verdict.count("tasks created", driven.tasks);
    verdict.count("stripe deliveries", driven.stripe_deliveries);
    verdict.count("HTTP agents registered", agents.registered);
    verdict.count("claims", agents.claims);
    verdict.count("answered with a task", agents.claimed);
    verdict.count("without answer", agents.ambiguous_claims);
    verdict.count("run by HTTP agents", agents.completed);
    verdict.count("taken back", agents.abandoned);
    verdict
}

/// SIGKILLs a random process every `kill_every` seconds for `seconds`, starting it again
/// at once; each must come back (a replica answering `/health`).
async fn faults(args: &Args, seed: u64, fleet: &mut Fleet, client: &Client) -> Verdict {
    let mut verdict = Verdict::new("processes");
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let every = Duration::from_secs_f64(args.kill_every);
    let mut next = started + every;
    let mut kills = 0u32;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        revive(fleet, &mut verdict);
        let victim = rng.gen_range(0..fleet.count());
        kills += 1;
        let restarted = match fleet.kill_and_restart(victim).await {
            Ok(()) => fleet.wait_ready(victim, &client.http).await,
            Err(error) => Err(error),
        };
        if let Err(error) = restarted {
            verdict.violation(format!("{}: {error:#}", fleet.name(victim)));
        }
    }
    tokio::time::sleep_until(end.into()).await;
    revive(fleet, &mut verdict);
    verdict.count("SIGKILLs", kills);
    for n in 0..fleet.count() {
        verdict.count(format!("{} killed", fleet.name(n)), fleet.kills[n]);
    }
    verdict.count("slowest start (ms)", fleet.slowest_restart.as_millis());
    verdict
}

/// Every process that exited by itself is a violation (and is started again).
fn revive(fleet: &mut Fleet, verdict: &mut Verdict) {
    match fleet.revive() {
        Ok(exited) => exited.into_iter().for_each(|e| verdict.violation(e)),
        Err(error) => verdict.violation(format!("cannot restart a process: {error:#}")),
    }
}

/// Prints the verdicts; removes the logs and (through `drop_database`, the server's
/// admin URL) the database when all held, keeps them (and says where) otherwise.
async fn finish(
    outcome: anyhow::Result<Outcome>,
    database: TestDatabase,
    drop_database: Option<&str>,
    scratch: &Path,
) -> anyhow::Result<()> {
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            println!(
                "kept for inspection: database {}, logs in {}",
                database.name,
                scratch.display()
            );
            return Err(error);
        }
    };
    for verdict in &outcome.verdicts {
        print(verdict);
    }
    let violations = outcome.violations();
    if violations > 0 {
        println!(
            "kept for inspection: database {}, logs in {}",
            database.name,
            scratch.display()
        );
        anyhow::bail!("{violations} invariant violation(s)");
    }
    println!("every invariant held");
    std::fs::remove_dir_all(scratch).ok();
    database.pool.close().await;
    if let Some(admin_url) = drop_database {
        let admin = omoi_store::db::connect(admin_url, 1).await?;
        let drop = format!("drop database if exists {} with (force)", database.name);
        sqlx::query(&drop).execute(&admin).await?;
        admin.close().await;
    }
    Ok(())
}

fn print(verdict: &Verdict) {
    let counts: Vec<String> = verdict
        .counts
        .iter()
        .map(|(label, n)| format!("{label} {n}"))
        .collect();
    let status = if verdict.violations.is_empty() {
        "ok"
    } else {
        "VIOLATED"
    };
    println!("  {:<16} {:<8} {}", verdict.name, status, counts.join(", "));
    for detail in &verdict.details {
        println!("      {detail}");
    }
    for violation in verdict.violations.iter().take(20) {
        println!("      {violation}");
    }
    if verdict.violations.len() > 20 {
        println!("      … and {} more", verdict.violations.len() - 20);
    }
}
