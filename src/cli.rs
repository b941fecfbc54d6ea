//! `omoi` subcommands.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use omoi_domain::kind::AggregateKind;
use omoi_domain::{agent, organization, project, spec, task, ticket};
use std::io::Write;

use omoi_store::db;
use omoi_store::log::{aggregate_history_within, apply_until, PAGE_BYTES};

use crate::server::{self, Opening};
use crate::settings::{LogFormat, Settings};

/// omoi — event-sourced backend of a spec-driven, multi-agent software-engineering
/// orchestrator.
///
/// Settings come from config/base.yaml → config/$OMOI_ENV.yaml → OMOI_… variables
/// (OMOI_APPLICATION__PORT=8080); the database from DATABASE_URL.
#[derive(Debug, Parser)]
#[command(name = "omoi", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process with nothing configured: without DATABASE_URL it starts
    /// a PostgreSQL of its own (data kept in .omoi/pgdata), migrates and serves the API on
    /// port 18000.
    Dev,
    /// Serve the API against DATABASE_URL (migrating first unless
    /// database.migrate_on_start is false).
    Serve,
    /// Run the orchestrator against DATABASE_URL: assign ready tasks to in-process agents
    /// that run the configured command (settings `worker:`), fail silent agents, time out
    /// and retry tasks.
    Worker,
    /// Apply the database migrations to DATABASE_URL and exit.
    Migrate,
    /// Print an aggregate's events (sequence, global position, type, actor, payload) and its
    /// state, as of any event: the audit trail of a ticket, task, spec, agent, project or
    /// organization.
    History(HistoryArgs),
    /// Manage the PostgreSQL cluster `omoi dev` runs for itself.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
    /// Operate the read models: status, rebuild, verify, retry.
    Projections {
        #[command(subcommand)]
        action: crate::operate::ProjectionsAction,
    },
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// organization, project, ticket, task, spec, agent or billing_account.
    pub aggregate: String,
    /// The aggregate's id.
    pub id: String,
    /// Show the state as it was right after this event (sequence number).
    #[arg(long)]
    pub as_of: Option<i64>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DbAction {
    /// Start the cluster (initialising it on first use) and print its URL.
    Start {
        /// Data directory (default: database.embedded.data_dir).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Stop the cluster; fails unless its server is gone.
    Stop {
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Say whether the cluster's server runs (exit status 0) or not (3).
    Status {
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
}

/// Runs a parsed command line; the exit code says whether it worked.
pub fn main(cli: Cli) -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("omoi: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(settings.application.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("omoi: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("omoi: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `OMOI_LOG` (`info,sqlx=warn` by default).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OMOI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Dev => serve(settings, true).await,
        Command::Serve => serve(settings, false).await,
        Command::Worker => worker(settings).await,
        Command::Migrate => {
            let database = server::open_database(&settings, Opening::Tool).await?;
            db::migrate(&database.pool)
                .await
                .context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::History(args) => history(settings, args).await,
        Command::Db { action } => manage_db(settings, action).await,
        Command::Projections { action } => crate::operate::run(settings, action).await,
    }
}

async fn serve(settings: Settings, dev: bool) -> anyhow::Result<()> {
    let secret = server::signing_secret(dev)?;
    let opening = Opening::Service {
        allow_embedded: dev,
    };
    let database = server::open_database(&settings, opening).await?;
    // From here every way out — a failed start (the port taken, say), Ctrl-C during it, or
    // the end of serving — stops the cluster `omoi dev` started.
    let (trigger, shutdown) = server::Shutdown::new();
    let trigger = std::sync::Arc::new(trigger);
    tokio::spawn({
        let trigger = trigger.clone();
        async move {
            server::shutdown_signal().await;
            let _ = trigger.send(true);
        }
    });
    let served = serve_on(&settings, dev, &secret, &database, (&trigger, shutdown)).await;
    database.pool.close().await;
    if let Some(cluster) = database.embedded {
        let stopped = match tokio::task::spawn_blocking(move || cluster.stop()).await {
            Ok(stopped) => stopped.map_err(anyhow::Error::from),
            Err(panicked) => Err(panicked.into()),
        };
        match (&served, stopped) {
            (_, Ok(())) => tracing::info!("PostgreSQL stopped"),
            (Ok(()), Err(error)) => return Err(error),
            // The start's own failure is the one to report; this one is logged beside it.
            (Err(_), Err(error)) => tracing::warn!(%error, "PostgreSQL of our own did not stop"),
        }
    }
    served
}

/// The API (and for `omoi dev` the worker) on `database` until `shutdown`; a start that
/// fails fires `trigger` itself, so that what it had started stops before it returns.
async fn serve_on(
    settings: &Settings,
    dev: bool,
    secret: &[u8],
    database: &server::Database,
    (trigger, shutdown): (&tokio::sync::watch::Sender<bool>, server::Shutdown),
) -> anyhow::Result<()> {
    let state = server::app_state(database.pool.clone(), settings, secret)?;
    let (stats, projections) = server::start_projections(
        database.pool.clone(),
        (*database.pool.connect_options()).clone(),
        &state.bus,
        omoi_projections::runner::RunnerConfig::default(),
        &settings.workflow,
        &settings.billing.config().stripe,
        shutdown.clone(),
    )
    .await?;
    let state = state.with_projections(stats);
    // `omoi dev` is the whole system: the orchestrator runs beside the API.
    let worker = dev
        .then(|| omoi_orchestrator::Worker::start(database.pool.clone(), worker_config(settings)));
    let started = async {
        let (listener, address) = server::bind(settings).await?;
        tracing::info!(%address, "omoi is serving");
        if dev {
            print_welcome(&state, address, database.embedded.is_some()).await?;
        }
        anyhow::Ok(listener)
    }
    .await;
    let served = match started {
        Ok(listener) => server::serve(listener, state, shutdown.wait()).await,
        Err(error) => {
            let _ = trigger.send(true);
            Err(error)
        }
    };
    if let Some(worker) = worker {
        worker.stop().await;
    }
    let _ = projections.await;
    served
}

/// The worker's settings, with the organizations' caps taken from the billing plans.
fn worker_config(settings: &Settings) -> omoi_orchestrator::WorkerConfig {
    omoi_orchestrator::WorkerConfig {
        plans: Some(settings.billing.plans()),
        monitoring: settings.monitoring.clone(),
        bus: settings.commands.bus(),
        ..settings.worker.clone()
    }
}

async fn worker(settings: Settings) -> anyhow::Result<()> {
    let opening = Opening::Service {
        allow_embedded: false,
    };
    let database = server::open_database(&settings, opening).await?;
    let worker = omoi_orchestrator::Worker::start(database.pool.clone(), worker_config(&settings));
    tracing::info!("omoi worker is running");
    server::shutdown_signal().await;
    worker.stop().await;
    database.pool.close().await;
    Ok(())
}

async fn print_welcome(
    state: &omoi_api::state::AppState,
    address: std::net::SocketAddr,
    embedded: bool,
) -> anyhow::Result<()> {
    let database = if embedded {
        "PostgreSQL of our own (.omoi/pgdata)"
    } else {
        "DATABASE_URL"
    };
    println!("\nomoi is running: the dashboard at http://{address}/  (API docs: http://{address}/docs; database: {database})");
    match server::bootstrap_dev(state).await? {
        Some(created) => println!(
            "\nFirst start: created an owner, an organization and a project.\n  \
             sign in:      {} / {}  (dashboard and POST /api/v1/auth/login)\n  \
             owner API key (shown once): {}\n  \
             organization: {}\n  project:      {}\n  \
             try:          curl -s http://{address}/api/v1/projects/{} -H 'authorization: Bearer {}'\n",
            created.email,
            created.password,
            created.api_key,
            created.organization_id,
            created.project_id,
            created.project_id,
            created.api_key,
        ),
        None => println!(
            "  sign in at http://{address}/ (the owner created on first start is owner@omoi.dev)\n"
        ),
    }
    Ok(())
}

async fn manage_db(settings: Settings, action: DbAction) -> anyhow::Result<()> {
    let mut embedded = settings.database.embedded.clone();
    match action {
        DbAction::Start { data_dir } => {
            embedded.data_dir = data_dir.unwrap_or(embedded.data_dir);
            let cluster = server::start_embedded(&embedded).await?;
            println!("{}", cluster.url(&embedded.database)?);
        }
        DbAction::Stop { data_dir } => {
            let dir = data_dir.unwrap_or(embedded.data_dir);
            let cluster = omoi_store::embedded::EmbeddedPostgres::new(dir, embedded.port)?;
            tokio::task::spawn_blocking(move || cluster.stop()).await??;
            println!("stopped");
        }
        DbAction::Status { data_dir } => {
            let dir = data_dir.unwrap_or(embedded.data_dir);
            let cluster = omoi_store::embedded::EmbeddedPostgres::new(dir, embedded.port)?;
            let data_dir = cluster.data_dir.clone();
            if tokio::task::spawn_blocking(move || cluster.is_running()).await?? {
                println!("running ({})", data_dir.display());
            } else {
                println!("not running ({})", data_dir.display());
                // pg_ctl's convention, so that scripts can tell "not running" from a failure.
                std::process::exit(3);
            }
        }
    }
    Ok(())
}

/// Events read per page of `omoi history`: an agent's history may hold millions, and the
/// command prints and folds each page before it reads the next.
const HISTORY_PAGE: i64 = 1_000;

async fn history(settings: Settings, args: HistoryArgs) -> anyhow::Result<()> {
    let database = server::open_database(&settings, Opening::Tool).await?;
    let kind = aggregate_kind_of(&args.aggregate)?;
    let pool = &database.pool;
    match kind {
        AggregateKind::Organization => {
            print_history::<organization::Organization>(pool, kind, &args).await
        }
        AggregateKind::Project => print_history::<project::Project>(pool, kind, &args).await,
        AggregateKind::Ticket => print_history::<ticket::Ticket>(pool, kind, &args).await,
        AggregateKind::Task => print_history::<task::Task>(pool, kind, &args).await,
        AggregateKind::Spec => print_history::<spec::Spec>(pool, kind, &args).await,
        AggregateKind::Agent => print_history::<agent::Agent>(pool, kind, &args).await,
        AggregateKind::BillingAccount => {
            print_history::<omoi_domain::billing::BillingAccount>(pool, kind, &args).await
        }
    }
}

/// Prints every event of one aggregate a page at a time, then its state after event
/// `--as-of` (or its last). With `--json`, one object `{"events": [...], "state": ...}`.
async fn print_history<A: cqrs_es::Aggregate>(
    pool: &sqlx::PgPool,
    kind: AggregateKind,
    args: &HistoryArgs,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let mut state = A::default();
    let (mut after, mut printed) = (0, 0_u64);
    loop {
        let (page, _) = aggregate_history_within(
            pool,
            kind.type_name(),
            &args.id,
            after,
            HISTORY_PAGE,
            PAGE_BYTES,
        )
        .await?;
        let Some(last) = page.last() else { break };
        apply_until(&mut state, &page, args.as_of)?;
        for event in &page {
            match args.json {
                true => {
                    let open = if printed == 0 { "{\"events\":[" } else { "," };
                    write!(out, "{open}{}", serde_json::to_string(event)?)?;
                }
                false => {
                    let actor = event.metadata.actor().unwrap_or("?");
                    let at = event.metadata.occurred_at().unwrap_or("?");
                    writeln!(
                        out,
                        "#{:<4} pos {:<8} {:<28} {at}  {actor}\n      {}",
                        event.sequence, event.global_position, event.event_type, event.payload
                    )?;
                }
            }
            printed += 1;
        }
        after = last.sequence;
    }
    anyhow::ensure!(printed > 0, "{} {} has no events", args.aggregate, args.id);
    match args.json {
        true => writeln!(out, "],\"state\":{}}}", serde_json::to_string(&state)?)?,
        false => {
            let as_of = args
                .as_of
                .map_or("now".to_string(), |n| format!("after #{n}"));
            writeln!(
                out,
                "\nstate {as_of}:\n{}",
                serde_json::to_string_pretty(&state)?
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn aggregate_kind_of(noun: &str) -> anyhow::Result<AggregateKind> {
    AggregateKind::of_noun(noun).with_context(|| {
        format!(
            "unknown aggregate {noun:?}: expected one of {}",
            AggregateKind::nouns()
        )
    })
}
