//! Builds, their schemas and checkpoints, and the views readers query.

use omoi_store::Cursor;
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::Projector;

/// One build of a projector, as recorded in `projector_builds`.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    pub build: i64,
    pub projector: String,
    pub code_version: i32,
    pub state: BuildState,
    pub cursor: Cursor,
    pub events_applied: i64,
    /// Where and why the build stopped, if a poison event stopped it.
    pub failure: Option<(Cursor, String)>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildState {
    Building,
    Live,
    Retired,
    Scratch,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Live => "live",
            Self::Retired => "retired",
            Self::Scratch => "scratch",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "live" => Self::Live,
            "retired" => Self::Retired,
            "scratch" => Self::Scratch,
            _ => Self::Building,
        }
    }
}

impl Build {
    /// The schema holding this build's tables.
    pub fn schema(&self) -> String {
        schema_of(&self.projector, self.build)
    }

    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        let state: String = row.try_get("state")?;
        let failed_xid: Option<i64> = row.try_get("failed_transaction_id")?;
        let failed_pos: Option<i64> = row.try_get("failed_global_position")?;
        let error: Option<String> = row.try_get("error")?;
        Ok(Self {
            build: row.try_get("build")?,
            projector: row.try_get("projector")?,
            code_version: row.try_get("code_version")?,
            state: BuildState::parse(&state),
            cursor: Cursor {
                transaction_id: row.try_get("transaction_id")?,
                global_position: row.try_get("global_position")?,
            },
            events_applied: row.try_get("events_applied")?,
            failure: error.map(|e| {
                let at = Cursor {
                    transaction_id: failed_xid.unwrap_or_default(),
                    global_position: failed_pos.unwrap_or_default(),
                };
                (at, e)
            }),
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// `rm_<projector>_<build>`.
pub fn schema_of(projector: &str, build: i64) -> String {
    format!("rm_{projector}_{build}")
}

/// The schema of `projector`'s live build, if it has one.
pub async fn live_schema(pool: &PgPool, projector: &str) -> Result<Option<String>, sqlx::Error> {
    let build: Option<i64> = sqlx::query_scalar(
        "select build from projector_builds where projector = $1 and state = 'live'",
    )
    .bind(projector)
    .fetch_optional(pool)
    .await?;
    Ok(build.map(|build| schema_of(projector, build)))
}

const BUILD_COLUMNS: &str =
    "build, projector, code_version, state, transaction_id, global_position, \
     events_applied, failed_transaction_id, failed_global_position, error, updated_at";

/// Every build that is not retired, oldest first.
pub async fn active_builds(pool: &PgPool) -> Result<Vec<Build>, sqlx::Error> {
    let sql = format!(
        "select {BUILD_COLUMNS} from projector_builds
          where state in ('live', 'building') order by build"
    );
    sqlx::query(&sql)
        .fetch_all(pool)
        .await?
        .iter()
        .map(Build::from_row)
        .collect()
}

/// One build, locked for the rest of the transaction (serializes batches, go-live, retry).
pub async fn lock_build(conn: &mut PgConnection, build: i64) -> Result<Option<Build>, sqlx::Error> {
    let sql = format!("select {BUILD_COLUMNS} from projector_builds where build = $1 for update");
    sqlx::query(&sql)
        .bind(build)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(Build::from_row)
        .transpose()
}

pub async fn build_by_id(pool: &PgPool, build: i64) -> Result<Option<Build>, sqlx::Error> {
    let sql = format!("select {BUILD_COLUMNS} from projector_builds where build = $1");
    sqlx::query(&sql)
        .bind(build)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(Build::from_row)
        .transpose()
}

/// Makes sure the projector has a build for its current code version: on first start one
/// that is live at once (so the views exist), after a version bump one that rebuilds
/// beside the live build. Safe to call from several processes at once.
pub async fn ensure_current_build(
    pool: &PgPool,
    projector: &dyn Projector,
) -> Result<Build, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // One process at a time decides, per projector.
    sqlx::query("select pg_advisory_xact_lock(hashtext('omoi-catalog'), hashtext($1))")
        .bind(projector.name())
        .execute(&mut *tx)
        .await?;
    let sql = format!(
        "select {BUILD_COLUMNS} from projector_builds
          where projector = $1 and code_version = $2 and state in ('live', 'building')
          order by build desc limit 1"
    );
    let existing = sqlx::query(&sql)
        .bind(projector.name())
        .bind(projector.version())
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = existing {
        let build = Build::from_row(&row)?;
        let upgrades = projector.upgrade_tables(&build.schema());
        for statement in &upgrades {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        // A view selects the columns its table had when it was made: made again, it shows
        // the new ones.
        if !upgrades.is_empty() && build.state == BuildState::Live {
            point_views(&mut tx, projector, &build.schema()).await?;
        }
        tx.commit().await?;
        return Ok(build);
    }
    let has_live: bool = sqlx::query_scalar(
        "select exists(select 1 from projector_builds where projector = $1 and state = 'live')",
    )
    .bind(projector.name())
    .fetch_one(&mut *tx)
    .await?;
    let state = if has_live {
        BuildState::Building
    } else {
        BuildState::Live
    };
    let build = create_build(&mut tx, projector, state).await?;
    if state == BuildState::Live {
        point_views(&mut tx, projector, &build.schema()).await?;
    }
    tx.commit().await?;
    Ok(build)
}

/// Inserts a build row and creates its schema and tables.
pub async fn create_build(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    state: BuildState,
) -> Result<Build, sqlx::Error> {
    // The row, its schema and its tables come together or not at all (a savepoint in a
    // caller's transaction): a runner that found the row without its tables judged the
    // first event poison, and a build left without them could never go live.
    let mut tx = conn.begin().await?;
    let build = create_build_in(&mut tx, projector, state).await?;
    tx.commit().await?;
    Ok(build)
}

async fn create_build_in(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    state: BuildState,
) -> Result<Build, sqlx::Error> {
    let sql = format!(
        "insert into projector_builds (projector, code_version, state) values ($1, $2, $3)
         returning {BUILD_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(projector.name())
        .bind(projector.version())
        .bind(state.as_str())
        .fetch_one(&mut *conn)
        .await?;
    let build = Build::from_row(&row)?;
    let schema = build.schema();
    sqlx::query(&format!("create schema {schema}"))
        .execute(&mut *conn)
        .await?;
    for statement in projector.create_tables(&schema) {
        sqlx::query(&statement).execute(&mut *conn).await?;
    }
    create_write_indexes(conn, projector, &schema).await?;
    if state == BuildState::Live {
        create_indexes(conn, projector, &schema).await?;
    }
    Ok(build)
}

/// The indexes `apply` needs on a build's tables ([`Projector::create_write_indexes`]),
/// those not there yet (after [`drop_write_indexes`], in a fold's first write: one bulk
/// build each over its rows); on tables that have them, nothing — not even the table's
/// lock, which `if not exists` would take before it finds the name taken.
pub async fn create_write_indexes(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    schema: &str,
) -> Result<(), sqlx::Error> {
    for (statement, held) in write_indexes(conn, projector, schema).await? {
        if held == Held::Absent {
            sqlx::query(&statement).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Drops the indexes `apply` needs from a build's tables, for a fold to copy its rows into
/// them bare and build them after, in the same transaction: a uuid key kept up row by row
/// puts each row at a random place of its B-tree. A primary key of that name (a build
/// made before they were indexes of their own) stays, kept up as before.
pub async fn drop_write_indexes(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    schema: &str,
) -> Result<(), sqlx::Error> {
    for (statement, held) in write_indexes(conn, projector, schema).await? {
        if held == Held::Own {
            let name = index_name(&statement);
            sqlx::query(&format!("drop index {schema}.{name}"))
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// How a build's schema holds one of its projector's write indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Absent,
    /// An index of its own.
    Own,
    /// The index of a constraint of that name (a primary key).
    Constraint,
}

/// Each of the projector's write index statements for `schema`, with how the schema holds
/// the index it names (one catalog query; none for a projector without them).
async fn write_indexes(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    schema: &str,
) -> Result<Vec<(String, Held)>, sqlx::Error> {
    let statements = projector.create_write_indexes(schema);
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    let existing: Vec<(String, bool)> = sqlx::query_as(
        "select c.relname::text,
                exists (select 1 from pg_constraint k where k.conindid = i.indexrelid)
           from pg_index i
           join pg_class c on c.oid = i.indexrelid
           join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = $1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    Ok(statements
        .into_iter()
        .map(|statement| {
            let found = existing
                .iter()
                .find(|(name, _)| name == index_name(&statement));
            let held = match found {
                None => Held::Absent,
                Some((_, false)) => Held::Own,
                Some((_, true)) => Held::Constraint,
            };
            (statement, held)
        })
        .collect())
}

/// The indexes readers need, on a build about to serve them.
async fn create_indexes(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    schema: &str,
) -> Result<(), sqlx::Error> {
    for statement in projector.create_indexes(schema) {
        sqlx::query(&statement).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Builds the indexes readers need on a build about to go live, outside any transaction
/// and without holding the log's readers: `create index concurrently` takes no
/// transaction id while it builds, where a plain `create index` holds one — and with it
/// every reader's horizon (`pg_snapshot_xmin`) — until it ends (the four indexes of the
/// timeline's entries, when it copied them, on a 1,000,000-event log: 2.7 s). It waits
/// instead for older transactions to end. An index an interrupted build left invalid is
/// dropped and built again; the ones built are what [`go_live`] expects its caller to
/// have built.
pub async fn build_indexes_concurrently(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    schema: &str,
) -> Result<(), sqlx::Error> {
    let invalid: Vec<String> = sqlx::query_scalar(
        "select format('%I.%I', n.nspname, c.relname)
           from pg_index i
           join pg_class c on c.oid = i.indexrelid
           join pg_namespace n on n.oid = c.relnamespace
          where n.nspname = $1 and not i.indisvalid",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    for index in invalid {
        sqlx::query(&format!("drop index if exists {index}"))
            .persistent(false)
            .execute(&mut *conn)
            .await?;
    }
    for statement in projector.create_indexes(schema) {
        let started = std::time::Instant::now();
        // One statement, with its own Sync: not inside a transaction block.
        sqlx::query(&concurrently(&statement))
            .persistent(false)
            .execute(&mut *conn)
            .await?;
        tracing::info!(
            projector = projector.name(),
            index = index_name(&statement),
            build_ms = started.elapsed().as_millis() as u64,
            "built a reader index"
        );
    }
    Ok(())
}

/// The name in a `create [unique] index if not exists <name> on …` statement.
fn index_name(statement: &str) -> &str {
    statement
        .split_once("if not exists")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("?")
}

/// `create [unique] index if not exists …` (the form [`Projector::create_indexes`]
/// asks for) built concurrently.
fn concurrently(statement: &str) -> String {
    statement.replacen("index if not exists", "index concurrently if not exists", 1)
}

/// Points the stable views `<projector>_<table>` at `schema`.
pub async fn point_views(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    schema: &str,
) -> Result<(), sqlx::Error> {
    for table in projector.tables() {
        let view = format!("{}_{table}", projector.name());
        sqlx::query(&format!("drop view if exists public.{view}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!(
            "create view public.{view} as select * from {schema}.{table}"
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Switches readers to `build` (which must be locked by the caller's transaction, its
/// readers' indexes built first by [`build_indexes_concurrently`]) and retires the
/// previous live build; returns the retired builds' schemas, to drop once committed.
pub async fn go_live(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    build: &Build,
) -> Result<Vec<String>, sqlx::Error> {
    let retired: Vec<i64> = sqlx::query_scalar(
        "update projector_builds set state = 'retired', updated_at = now()
          where projector = $1 and state = 'live' and build <> $2 returning build",
    )
    .bind(&build.projector)
    .bind(build.build)
    .fetch_all(&mut *conn)
    .await?;
    sqlx::query("update projector_builds set state = 'live', updated_at = now() where build = $1")
        .bind(build.build)
        .execute(&mut *conn)
        .await?;
    point_views(conn, projector, &build.schema()).await?;
    Ok(retired
        .into_iter()
        .map(|b| schema_of(&build.projector, b))
        .collect())
}

/// Drops a retired or scratch build's schema.
pub async fn drop_schema(pool: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("drop schema if exists {schema} cascade"))
        .execute(pool)
        .await?;
    Ok(())
}

/// Every build that is live, building or stopped, for `status`.
pub async fn status(pool: &PgPool) -> Result<Vec<Build>, sqlx::Error> {
    active_builds(pool).await
}

/// Clears a build's failure so its runner tries the poison event again.
pub async fn retry(pool: &PgPool, projector: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "update projector_builds
            set error = null, failed_transaction_id = null, failed_global_position = null,
                updated_at = now()
          where projector = $1 and state in ('live', 'building') and error is not null",
    )
    .bind(projector)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Whether a query failed because a relation it names does not exist (`42P01`): a read
/// model's stable views before its first build made them, in a database no runner has
/// prepared yet.
pub fn is_undefined_table(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "42P01")
}

#[cfg(test)]
mod tests {
    use super::{concurrently, index_name};

    #[test]
    fn every_readers_index_is_of_the_form_built_concurrently() {
        for projector in crate::all() {
            for statement in projector.create_indexes("rm_x_1") {
                let built = concurrently(&statement);
                assert!(
                    built.starts_with("create index concurrently if not exists")
                        || built.starts_with("create unique index concurrently if not exists"),
                    "{}: {statement}",
                    projector.name()
                );
                let name = index_name(&statement);
                assert!(
                    name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{}: {name:?} in {statement}",
                    projector.name()
                );
            }
        }
    }

    /// `create_write_indexes` and `drop_write_indexes` find an index by the name its
    /// statement gives: one whose name they could not read would be built again over
    /// its table's rows and never dropped for a fold's first write.
    #[test]
    fn every_write_index_names_itself() {
        for projector in crate::all() {
            for statement in projector.create_write_indexes("rm_x_1") {
                assert!(
                    statement.starts_with("create index if not exists")
                        || statement.starts_with("create unique index if not exists"),
                    "{}: {statement}",
                    projector.name()
                );
                let name = index_name(&statement);
                assert!(
                    !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "{}: {name:?} in {statement}",
                    projector.name()
                );
                assert!(
                    statement.contains(&format!("{name} on rm_x_1.")),
                    "{statement}"
                );
            }
        }
    }
}
