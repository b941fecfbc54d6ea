//! `omoi chaos`: replicas under faults. Runs `omoi serve` replicas and `omoi worker`s on
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
//! * [`subscribers`] — board subscribers that resume after their replica dies.
//! * [`checks`] — the invariants.

mod agents;
pub mod checks;
pub mod client;
mod fleet;
mod subscribers;
mod workload;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;

use crate::testing::TestDatabase;
use checks::Verdict;
use client::{Client, Ledger};
use fleet::{Fleet, FleetConfig};
use subscribers::{Expected, Stream, Subscriber};
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
    let admin_url = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => crate::bench::bench_cluster().await?,
    };
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

/// The verdicts of a run that went through, and whether every process came back.
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

/// The driver's tasks while the faults run.
struct Running {
    stop_commands: Arc<AtomicBool>,
    stop_agents: Arc<AtomicBool>,
    stop_subscribers: Arc<AtomicBool>,
    lanes: Vec<tokio::task::JoinHandle<Driven>>,
    agents: Vec<tokio::task::JoinHandle<agents::AgentStats>>,
    agent_ids: agents::AgentIds,
    subscribers: Vec<tokio::task::JoinHandle<Subscriber>>,
}

/// What the run left to check.
struct Settled {
    driven: Driven,
    agents: agents::AgentStats,
    http_agents: HashSet<String>,
    subscribers: Verdict,
}

impl Running {
    fn start(args: &Args, client: &Client, setup: &Arc<Setup>) -> Self {
        let stop_commands = Arc::new(AtomicBool::new(false));
        let stop_agents = Arc::new(AtomicBool::new(false));
        let stop_subscribers = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs_f64(LANES as f64 / args.rate as f64);
        let mut lanes: Vec<_> = (0..LANES as usize)
            .map(|n| {
                let (client, setup, stop) = (client.clone(), setup.clone(), stop_commands.clone());
                tokio::spawn(workload::lane(client, setup, n, interval, stop))
            })
            .collect();
        let (c, s, stop) = (client.clone(), setup.clone(), stop_commands.clone());
        lanes.push(tokio::spawn(workload::stripe(c, s, stop)));
        let agent_ids = agents::AgentIds::default();
        let agents = (0..args.agents)
            .map(|_| {
                let (c, s, ids) = (client.clone(), setup.clone(), agent_ids.clone());
                tokio::spawn(agents::run(c, s, ids, stop_agents.clone()))
            })
            .collect();
        let events = args.subscribers.min(setup.projects.len());
        let streams = std::iter::repeat_n(Stream::Board, args.subscribers)
            .chain(std::iter::repeat_n(Stream::Events, events));
        let subscribers = streams
            .enumerate()
            .map(|(n, stream)| {
                let project = setup.projects[n % setup.projects.len()].clone();
                let subscriber = Subscriber::new(project, stream);
                let (c, token) = (client.clone(), setup.token.clone());
                tokio::spawn(subscriber.follow(c, token, stop_subscribers.clone()))
            })
            .collect();
        Self {
            stop_commands,
            stop_agents,
            stop_subscribers,
            lanes,
            agents,
            agent_ids,
            subscribers,
        }
    }

    /// Stops the commands, waits for every task to finish, stops the agents, waits for
    /// the read models, then has every subscriber resume and fold to the HTTP board.
    async fn settle(
        self,
        args: &Args,
        client: &Client,
        setup: &Setup,
        database: &TestDatabase,
    ) -> anyhow::Result<Settled> {
        self.stop_commands.store(true, Ordering::Relaxed);
        let mut driven = Driven::default();
        for lane in self.lanes {
            let lane = lane.await?;
            driven.tickets += lane.tickets;
            driven.tasks += lane.tasks;
            driven.stripe_deliveries += lane.stripe_deliveries;
            driven.stripe_events.extend(lane.stripe_events);
        }
        let deadline = Instant::now() + Duration::from_secs(args.settle_seconds);
        tasks_finished(&database.pool, deadline).await?;
        self.stop_agents.store(true, Ordering::Relaxed);
        let mut stats = agents::AgentStats::default();
        for agent in self.agents {
            let agent = agent.await?;
            stats.registered += agent.registered;
            stats.claims += agent.claims;
            stats.claimed += agent.claimed;
            stats.ambiguous_claims += agent.ambiguous_claims;
            stats.completed += agent.completed;
            stats.abandoned += agent.abandoned;
        }
        caught_up(&database.pool, deadline).await?;
        self.stop_subscribers.store(true, Ordering::Relaxed);
        let mut subscribers = Vec::new();
        let mut settled = Vec::new();
        for subscriber in self.subscribers {
            let mut subscriber = subscriber.await?;
            let expected = expected(&subscriber, client, setup, &database.pool).await?;
            let patience = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(10));
            settled.push(
                subscriber
                    .settle(client, &setup.token, &expected, patience)
                    .await,
            );
            subscribers.push(subscriber);
        }
        let http_agents = self
            .agent_ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(Settled {
            driven,
            agents: stats,
            http_agents,
            subscribers: checks::subscribers(&subscribers, &settled),
        })
    }
}

/// What a subscriber must end with: the HTTP board view, or the project's events after
/// its first snapshot as the log holds them.
async fn expected(
    subscriber: &Subscriber,
    client: &Client,
    setup: &Setup,
    pool: &sqlx::PgPool,
) -> anyhow::Result<Expected> {
    if subscriber.stream == Stream::Board {
        let path = format!("/api/v1/board/view?project_id={}", subscriber.project);
        let view = client.read(&path, &setup.token).await?;
        return Ok(Expected::Board(subscribers::cards_of(&view)));
    }
    let start = subscriber.start.unwrap_or_default();
    let positions: Vec<(i64, i64)> = sqlx::query_as(
        "select transaction_id::text::bigint, global_position from events
          where metadata->>'project_id' = $1
            and (transaction_id::text::bigint, global_position) > ($2, $3)
          order by 1, 2",
    )
    .bind(&subscriber.project)
    .bind(start.transaction_id)
    .bind(start.global_position)
    .fetch_all(pool)
    .await?;
    Ok(Expected::Events(
        positions
            .into_iter()
            .map(|(transaction_id, global_position)| omoi_store::Cursor {
                transaction_id,
                global_position,
            })
            .collect(),
    ))
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
    for exited in fleet.exited() {
        verdict.violation(exited);
    }
    verdict.count("SIGKILLs", kills);
    for n in 0..fleet.count() {
        verdict.count(format!("{} killed", fleet.name(n)), fleet.kills[n]);
    }
    verdict.count("slowest start (ms)", fleet.slowest_restart.as_millis());
    verdict
}

/// Waits until every task in the log completed (or one ended otherwise: then the
/// tasks check names it).
async fn tasks_finished(pool: &sqlx::PgPool, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let row = sqlx::query(
            "select count(*) as tasks,
                    count(*) filter (where done) as done,
                    count(*) filter (where ended and not done) as ended
               from (select aggregate_id,
                            bool_or(event_type = 'TaskCompleted') as done,
                            bool_or(event_type in ('TaskPermanentlyFailed', 'TaskCancelled')) as ended
                       from events where aggregate_type = 'Task' group by 1) t",
        )
        .fetch_one(pool)
        .await?;
        let (tasks, done, ended): (i64, i64, i64) = (
            row.try_get("tasks")?,
            row.try_get("done")?,
            row.try_get("ended")?,
        );
        if done + ended == tasks || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every live projector has applied the whole log.
async fn caught_up(pool: &sqlx::PgPool, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let behind: i64 = sqlx::query_scalar(
            "select count(*) from projector_builds b,
                    (select transaction_id::text::bigint as xid, global_position as pos
                       from events order by transaction_id desc, global_position desc
                      limit 1) newest
              where b.state = 'live' and (b.transaction_id, b.global_position) < (newest.xid, newest.pos)",
        )
        .fetch_one(pool)
        .await
        .context("projector positions")?;
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the read models did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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
