//! Connecting to PostgreSQL and applying the migrations.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The migrations of the `migrations/` folder, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Opens a pool. Fails (instead of panicking, as postgres-es's helper does) on a bad URL.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(session(options))
        .await
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
