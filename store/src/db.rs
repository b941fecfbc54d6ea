//! Connecting to PostgreSQL and applying the migrations, and what a failed statement
//! means for whoever sent it ([`is_unavailable`], [`lost_to_another_transaction`]).

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// The migrations of the `migrations/` folder, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool. Fails (instead of panicking, as postgres-es's helper does) on a bad URL.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    pool_options(max_connections)
        .connect_with(session(options))
        .await
}

/// A connection idle for longer than this is pinged before it is handed out.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

/// omoi's pools: at most `max_connections`, waiting up to 5 s for one. sqlx pings every
/// connection it takes from the idle queue by default — a round trip before every
/// transaction, which `perf` of `omoi-bench bench-worker` put at a tenth of the process's
/// CPU; only a connection idle for over a second is pinged now (a broken one is then
/// dropped and another taken, as before). One used within the second fails its
/// statement if the server went away meanwhile, as it would have a moment later.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_IDLE_AFTER {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}

/// A small pool of `options`' sessions that use a prepared statement's generic plan,
/// for the hot reads of the gapless order (the projection runner's pages, the worker's
/// read before each pass): their plan is the same index walk whatever the cursor, but
/// the planner prices a generic `limit $n` at a tenth of the rows, so it kept planning
/// them afresh at every execution — 0.12–0.2 ms of the server's CPU each, as much as the
/// read (`pg_stat_statements` through `omoi-bench bench-worker`: 2.1 s of planning for
/// 14,000 reads). Only statements whose generic plan is that walk belong here: a read
/// without a limit (`log::stream_global`) would be planned for a third of the log.
pub fn generic_plans(options: &PgConnectOptions, max_connections: u32) -> PgPool {
    let options = options
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")]);
    pool_options(max_connections).connect_lazy_with(options)
}

/// omoi's sessions, whatever the server's defaults: named `omoi` in `pg_stat_activity`,
/// and without JIT compilation. Every query here is short (a page, a few rows, a batch),
/// but the planner prices a page of a filtered read of a large log by the walk it might
/// take, past `jit_above_cost`: on `omoi-bench bench-scale`'s log of 10,000,000 events,
/// `explain analyze` of a page of 1,000 of one project's events took 457 ms and reported
/// 565 ms of JIT compilation (its leader and two parallel workers together).
pub fn session(options: PgConnectOptions) -> PgConnectOptions {
    options.application_name("omoi").options([("jit", "off")])
}

/// Applies every migration not yet applied. Safe to run from several processes at once:
/// sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether `error` says the database could not be reached or went away, so that trying
/// again later may succeed (503 to a client): no connection from the pool in time, the
/// connection broken (I/O, SQLSTATE class 08 but for 08P01, a protocol violation: ours),
/// or the server shutting down, crashed or not yet accepting connections (57P01, 57P02,
/// 57P03). Whether a statement sent before it committed is then unknown.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        _ => sqlstate(error).is_some_and(|code| {
            (code.starts_with("08") && code != "08P01")
                || matches!(code.as_str(), "57P01" | "57P02" | "57P03")
        }),
    }
}

/// Whether `error` says another transaction won: a serialization failure (40001) or a
/// deadlock (40P01). The transaction was rolled back whole, so running it again, on what
/// is committed by then, may succeed.
pub fn lost_to_another_transaction(error: &sqlx::Error) -> bool {
    sqlstate(error).is_some_and(|code| matches!(code.as_str(), "40001" | "40P01"))
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    Some(error.as_database_error()?.code()?.into_owned())
}
