//! `omoi projections verify`: proof that the read models equal the log.
//!
//! For each projector, a scratch build is projected from position zero up to the live
//! build's checkpoint and every table is compared row by row with the live one. The live
//! build is paused (its row locked) only for the last stretch and the comparison.

use omoi_store::log::{read_global, Visibility};
use omoi_store::Cursor;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::catalog::{self, Build, BuildState};
use crate::Projector;

/// How the scratch build compared with the live one.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub projector: String,
    pub live_build: i64,
    pub cursor: Cursor,
    pub events: i64,
    /// One line per differing row (capped per table); empty when equal.
    pub differences: Vec<String>,
}

const BATCH: i64 = 1000;
const SHOWN_PER_TABLE: i64 = 5;

/// Rebuilds `projector` into scratch tables and compares them with the live ones.
pub async fn verify(
    pool: &PgPool,
    options: &PgConnectOptions,
    projector: &dyn Projector,
) -> Result<Verdict, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let live = live_build(pool, projector.name())
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let scratch = catalog::create_build(&mut conn, projector, BuildState::Scratch).await?;
    let result = compare_at_live_checkpoint(pool, &mut conn, projector, &live, &scratch).await;
    sqlx::query("update projector_builds set state = 'retired' where build = $1")
        .bind(scratch.build)
        .execute(pool)
        .await?;
    catalog::drop_schema(pool, &scratch.schema()).await?;
    result
}

async fn compare_at_live_checkpoint(
    pool: &PgPool,
    conn: &mut PgConnection,
    projector: &dyn Projector,
    live: &Build,
    scratch: &Build,
) -> Result<Verdict, sqlx::Error> {
    // Most of the way without holding anything up…
    let mut position = project_until(
        pool,
        conn,
        projector,
        scratch,
        Cursor::default(),
        live.cursor,
    )
    .await?;
    // …then pause the live build for the rest and the comparison.
    let mut freeze = pool.begin().await?;
    let frozen = catalog::lock_build(&mut freeze, live.build)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    position = project_until(pool, conn, projector, scratch, position, frozen.cursor).await?;
    let differences =
        diff_schemas(&mut freeze, projector, &frozen.schema(), &scratch.schema()).await?;
    freeze.rollback().await?;
    Ok(Verdict {
        projector: projector.name().to_string(),
        live_build: live.build,
        cursor: position,
        events: frozen.events_applied,
        differences,
    })
}

async fn live_build(pool: &PgPool, projector: &str) -> Result<Option<Build>, sqlx::Error> {
    Ok(catalog::active_builds(pool)
        .await?
        .into_iter()
        .find(|b| b.projector == projector && b.state == BuildState::Live))
}

/// Applies the events after `from` up to and including `until` to `scratch`.
async fn project_until(
    pool: &PgPool,
    conn: &mut PgConnection,
    projector: &dyn Projector,
    scratch: &Build,
    from: Cursor,
    until: Cursor,
) -> Result<Cursor, sqlx::Error> {
    let schema = scratch.schema();
    let mut position = from;
    while position < until {
        let page = read_global(pool, position, BATCH, &Visibility::Everything).await?;
        let wanted = page.events.partition_point(|e| e.cursor() <= until);
        let wanted = page.events.get(..wanted).unwrap_or_default();
        let Some(last) = wanted.last() else { break };
        let next = last.cursor();
        let mut tx = conn.begin().await?;
        projector
            .apply(&mut tx, &schema, wanted)
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("scratch build failed: {e}")))?;
        tx.commit().await?;
        position = next;
    }
    Ok(position)
}

/// Rows in one schema's tables of `projector` and not the other's, both ways (the first
/// few per table); empty when the two hold the same rows.
pub async fn diff_schemas(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    left: &str,
    right: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut differences = Vec::new();
    for table in projector.tables() {
        differences.extend(diff_table(conn, left, right, table).await?);
    }
    Ok(differences)
}

/// Rows in one table and not the other, both ways.
async fn diff_table(
    conn: &mut PgConnection,
    live: &str,
    scratch: &str,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut lines = Vec::new();
    for (label, a, b) in [
        ("only live", live, scratch),
        ("only rebuilt", scratch, live),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "select row_to_json(d)::text from
               (select * from {a}.{table} except all select * from {b}.{table}) d
             limit {SHOWN_PER_TABLE}"
        ))
        .fetch_all(&mut *conn)
        .await?;
        lines.extend(
            rows.into_iter()
                .map(|row| format!("{table}: {label}: {row}")),
        );
    }
    Ok(lines)
}
