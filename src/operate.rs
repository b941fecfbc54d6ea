//! `omoi projections …`: operators' commands on the read models.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use omoi_projections::catalog::{self, BuildState};
use omoi_projections::runner::{catch_up, CATCH_UP_BATCH};
use omoi_projections::verify::verify;
use omoi_projections::Projector;

use crate::server;
use crate::settings::Settings;

#[derive(Debug, Subcommand)]
pub enum ProjectionsAction {
    /// Every projector build: state, checkpoint, events applied, and any poison event that
    /// stopped it.
    Status,
    /// Build a new version of a projector beside the live one, from position zero, with a
    /// progress bar, and switch readers over once it has caught up. Queries keep answering
    /// from the live build meanwhile.
    Rebuild {
        /// A read model's name, as `omoi projections status` lists them (board, graph,
        /// timeline, agents, directory, activity, monitoring, snapshots).
        name: String,
    },
    /// Rebuild every projector into scratch tables and compare them with the live ones,
    /// printing any difference: proof that the read models equal the log.
    Verify,
    /// Clear a projector's failure so that it tries the event that stopped it again (after
    /// the fix is deployed).
    Retry { name: String },
}

pub async fn run(settings: Settings, action: ProjectionsAction) -> anyhow::Result<()> {
    let database = server::open_database(&settings, server::Opening::Tool).await?;
    // The pool's own session settings (JIT off, named `omoi`) for the dedicated connections.
    let options = (*database.pool.connect_options()).clone();
    let pool = &database.pool;
    match action {
        ProjectionsAction::Status => status(pool).await,
        ProjectionsAction::Rebuild { name } => rebuild(pool, &options, &name).await,
        ProjectionsAction::Verify => verify_all(pool, &options).await,
        ProjectionsAction::Retry { name } => {
            let cleared = catalog::retry(pool, &name).await?;
            println!("{name}: {cleared} stopped build(s) will retry");
            Ok(())
        }
    }
}

fn projector(name: &str) -> anyhow::Result<std::sync::Arc<dyn Projector>> {
    omoi_projections::all()
        .into_iter()
        .find(|p| p.name() == name)
        .with_context(|| {
            let names: Vec<&str> = omoi_projections::all().iter().map(|p| p.name()).collect();
            format!(
                "no read model {name:?}: expected one of {} (a process manager is not \
                 rebuilt: its effects are events in the log, and running it again from the \
                 start would act on today's state)",
                names.join(", ")
            )
        })
}

async fn status(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    println!(
        "{:<16} {:>6} {:<9} {:>7} {:>16} {:>10}  error",
        "projector", "build", "state", "version", "cursor", "applied"
    );
    for build in catalog::status(pool).await? {
        let error = build
            .failure
            .map(|(at, error)| format!("stopped at {at}: {error}"))
            .unwrap_or_default();
        println!(
            "{:<16} {:>6} {:<9} {:>7} {:>16} {:>10}  {error}",
            build.projector,
            build.build,
            build.state.as_str(),
            build.code_version,
            build.cursor.to_string(),
            build.events_applied
        );
    }
    Ok(())
}

async fn rebuild(
    pool: &sqlx::PgPool,
    options: &sqlx::postgres::PgConnectOptions,
    name: &str,
) -> anyhow::Result<()> {
    let projector = projector(name)?;
    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await?;
    let mut conn = pool.acquire().await?;
    let build = catalog::create_build(&mut conn, projector.as_ref(), BuildState::Building).await?;
    drop(conn);
    println!(
        "rebuilding {name} as build {} beside the live one ({total} events)",
        build.build
    );
    let started = Instant::now();
    let done = catch_up(
        pool,
        options,
        projector.as_ref(),
        build.build,
        CATCH_UP_BATCH,
        |events| progress(events, total, started),
    )
    .await?;
    println!();
    match done.failure {
        Some((at, error)) => anyhow::bail!("the rebuild stopped at {at}: {error}"),
        None => println!(
            "{name}: build {} is live ({} events in {:.1} s); the previous build was dropped",
            done.build,
            done.events_applied,
            started.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

/// `[#####.....] 51234/100000 events  25000 ev/s  ETA 2 s`
fn progress(done: i64, total: i64, started: Instant) {
    let total = total.max(done).max(1);
    let filled = (done * 30 / total) as usize;
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
    let eta = (total - done) as f64 / rate.max(1.0);
    print!(
        "\r[{}{}] {done}/{total} events  {rate:.0} ev/s  ETA {eta:.0} s   ",
        "#".repeat(filled),
        ".".repeat(30 - filled)
    );
    let _ = std::io::stdout().flush();
}

async fn verify_all(
    pool: &sqlx::PgPool,
    options: &sqlx::postgres::PgConnectOptions,
) -> anyhow::Result<()> {
    let mut differing = 0;
    for projector in omoi_projections::all() {
        let verdict = verify(pool, options, projector.as_ref()).await?;
        if verdict.differences.is_empty() {
            println!(
                "{}: equal to a rebuild at {} (build {})",
                verdict.projector, verdict.cursor, verdict.live_build
            );
        } else {
            differing += 1;
            println!(
                "{}: DIFFERS from a rebuild at {}:",
                verdict.projector, verdict.cursor
            );
            for line in &verdict.differences {
                println!("  {line}");
            }
        }
    }
    anyhow::ensure!(
        differing == 0,
        "{differing} read model(s) differ from the log"
    );
    Ok(())
}
