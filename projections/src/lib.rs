//! Read models built from the global event stream.
//!
//! A [`Projector`] has a name, a version, the tables it owns and an `apply` that updates
//! them for a batch of events inside a transaction (set-based: a few statements per
//! batch, not per event). The [`runner`] feeds each projector the global
//! stream in its gapless order and stores the checkpoint in the same transaction as the
//! batch (exactly once); the [`catalog`] gives every version its own schema
//! (`rm_<name>_v<version>`) and points stable views (`<name>_<table>` in `public`) at the
//! live one, so a rebuild happens beside the live tables and readers switch in one
//! transaction.
//!
//! # Layout
//!
//! * [`Projector`] and [`ProjectionError`] — here.
//! * [`catalog`] — schemas, checkpoints, views, status.
//! * [`runner`] — leadership (advisory lock), batches, wake-ups, failure handling, metrics.
//! * [`verify`] — a scratch rebuild compared with the live build, row by row.
//! * One folder per read model: [`board`], [`graph`], [`timeline`], [`agents`],
//!   [`directory`], [`activity`], [`monitoring`], each with
//!   `model.rs` (the pure state and the transition one event makes), `projector.rs`
//!   (tables, rows, the set-based `apply`) and `query.rs` (reads through the stable views);
//!   the board and the graph add `view.rs` (what a model renders), the timeline
//!   `summary.rs` (the text of an entry).
//! * What the read models share: [`codec`] (decoding events, enums stored as text) and
//!   [`replay`] (one project's log folded up to a past position).
//! * [`snapshots`] — each project's board and graph every so many of its events, where
//!   [`replay`] starts.
//! * `testing` (tests only) — a log of ticket and task events for the models' tests.

pub mod activity;
pub mod agents;
pub mod board;
pub mod catalog;
pub mod codec;
mod copy;
pub mod delta;
pub mod directory;
pub mod graph;
pub mod monitoring;
pub mod replay;
pub mod runner;
pub mod snapshots;
#[cfg(test)]
pub(crate) mod testing;
pub mod timeline;
pub mod verify;

use std::sync::Arc;

use futures_util::future::BoxFuture;
pub use omoi_store::log::Columns;
use omoi_store::StoredEvent;
use sqlx::PgConnection;

/// Why a projector could not apply an event. The runner stops that projector at the event
/// and reports the error; the others carry on.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event {event_type} has an unexpected payload: {detail}")]
    Payload { event_type: String, detail: String },
    /// A view as of a past position would replay more events than one request may.
    #[error("the project's history up to this position has more than {max} events to replay")]
    ReplayTooLong { max: usize },
    /// A snapshot's fold read another number of the project's events from the log than the
    /// snapshots read model counted in its batches: the log and its reader disagree.
    #[error("project {project_id}: {counted} events counted since its last snapshot, {read} read from the log")]
    SnapshotGap {
        project_id: uuid::Uuid,
        counted: i64,
        read: i64,
    },
    /// A snapshot's model could not be written or read back.
    #[error("a snapshot's model: {0}")]
    SnapshotBody(String),
    /// Not the event's fault and not lasting: a process manager's effect found its
    /// aggregate changed by a concurrent writer, or the database was away. The runner
    /// rolls the batch back and applies it again; it never stops the projector.
    #[error("to be applied again: {0}")]
    Transient(String),
}

impl ProjectionError {
    /// Whether applying the same events again later may succeed: a [`Self::Transient`]
    /// error, a database that could not be reached, a serialization failure or a deadlock.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transient(_) => true,
            Self::Database(error) => {
                omoi_store::db::is_unavailable(error)
                    || omoi_store::db::lost_to_another_transaction(error)
            }
            Self::Payload { .. }
            | Self::ReplayTooLong { .. }
            | Self::SnapshotGap { .. }
            | Self::SnapshotBody(_) => false,
        }
    }

    pub fn payload(event: &StoredEvent, detail: impl std::fmt::Display) -> Self {
        Self::Payload {
            event_type: event.event_type.clone(),
            detail: detail.to_string(),
        }
    }
}

/// A read model fed by the global stream.
pub trait Projector: Send + Sync {
    /// Stable name: the schema is `rm_<name>_v<version>`, the views `<name>_<table>`.
    fn name(&self) -> &'static str;
    /// Bump to rebuild the read model from position zero (beside the live one).
    fn version(&self) -> i32;
    /// The tables this projector owns, by bare name (for views and `verify`).
    fn tables(&self) -> &'static [&'static str];
    /// `create table` statements for the tables, in `schema` (use `{schema}.` prefixes),
    /// with the indexes `apply` itself needs that are not among
    /// [`Projector::create_write_indexes`].
    fn create_tables(&self, schema: &str) -> Vec<String>;
    /// Indexes `apply` itself needs — its upserts' conflict targets, its look-ups — each
    /// `create [unique] index if not exists <name> on …`, made with the tables. A fold's
    /// first write drops them, copies its rows into the bare tables and builds them
    /// again, all in its transaction (one sort of the rows instead of a B-tree insert per
    /// row, each at a random place under a uuid key; nobody else sees the tables without
    /// them). An index the fold's own write needs (an upsert in it) belongs in
    /// `create_tables`.
    fn create_write_indexes(&self, _schema: &str) -> Vec<String> {
        Vec::new()
    }
    /// Additive changes to the tables of a build of this same version — idempotent
    /// statements such as `alter table {schema}.t add column if not exists …` — applied
    /// when a process starts on an existing build, so that a column added in place needs
    /// no rebuild (a rebuild re-runs a process manager's reactions). `create_tables`
    /// states the whole shape for new builds.
    fn upgrade_tables(&self, _schema: &str) -> Vec<String> {
        Vec::new()
    }
    /// Indexes only the queries need, each `create [unique] index if not exists …`. A build
    /// projected from position zero beside the live one gets them when it goes live — one
    /// bulk build per index instead of upkeep on every row written during the rebuild,
    /// built concurrently so that the log's readers are not held while it runs
    /// ([`catalog::build_indexes_concurrently`]); a build live from the start gets them
    /// at once.
    fn create_indexes(&self, _schema: &str) -> Vec<String> {
        Vec::new()
    }
    /// Applies a batch of events, in the stream's order, with the same result as applying
    /// them one at a time (the runner relies on it: on an error it re-applies the batch
    /// event by event to stop at the exact poison event). Runs inside the batch's
    /// transaction; an error rolls the batch back.
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;

    /// Whether `event` can change the tables of the build in `schema` (or, for a process
    /// manager, cause a command). A batch with no such event is passed over without a
    /// transaction: the runner keeps the position in memory and writes it with the next
    /// batch it applies, or when it has nothing more to read. Saying `true` is always safe;
    /// saying `false` for an event `apply` would use loses it. A projector that keeps its
    /// tables in memory ([`Projector::settled`]) may answer from them: the runner tells it
    /// that a leadership began before it asks.
    fn concerns(&self, _schema: &str, _event: &StoredEvent) -> bool {
        true
    }

    /// The log's columns a catch-up streams for it (the pages after its first full one):
    /// [`Columns::MetadataFields`] naming every metadata field its `apply`, `concerns` and
    /// fold read (none: [`Columns::WITHOUT_METADATA`]), so that the server does not render
    /// the whole metadata. `occurred_at` comes either way (the runner reads it for the
    /// build's lag), but a projector that reads it names it too:
    /// `tests/e2e/projection_batches.rs` builds each projector's tables from events holding
    /// only the fields it names and compares them, and what `concerns` answers, with those
    /// of the whole events. Saying `Everything` is always safe.
    fn columns(&self) -> Columns {
        Columns::Everything
    }

    /// Whether its batches append events to the log (a process manager's effects). Those
    /// that did commit durably, as every command does. A read model's batch holds nothing
    /// the log does not, nor does a process manager's that caused nothing: it commits
    /// without waiting for its WAL flush (`synchronous_commit = off`), since a crash can
    /// only lose a tail of batches together with their checkpoint, which are then applied
    /// again — and an open batch holds every reader's horizon until its commit returns.
    fn appends_events(&self) -> bool {
        false
    }

    /// How the batch last given to [`Projector::apply`] for the build whose tables are in
    /// `schema` ended: `true` once its transaction committed; `false` when it did not
    /// (rolled back, its claim lost, an error, its events applied one by one to find a
    /// poison event), at the start of each leadership of the build, before anything
    /// else is asked of the projector — [`Projector::concerns`] included (another process
    /// may have led it meanwhile) — and, `false`, once the build is found retired. A projector keeping what its tables hold in
    /// memory between batches keeps a batch's changes only once committed, and forgets
    /// all it keeps for `schema` on `false`. An `apply` that finds the batch before it
    /// never settled must not trust what it kept either.
    fn settled(&self, _schema: &str, _committed: bool) {}

    /// A fold of the stream in memory for a build projected from position zero (a rebuild
    /// beside the live one, `omoi projections rebuild`): the runner folds page after page
    /// into it and writes it once, with the checkpoint, instead of loading and writing the
    /// rows each batch touches — a rebuild writes each row once, not once per batch it
    /// appears in. `None` (the default): batches from the start too. Its tables must come
    /// out exactly as the batches would leave them (`tests/e2e/projection_batches.rs`).
    fn fold_from_start(&self) -> Option<Box<dyn Fold>> {
        None
    }
}

/// A read model folded in memory from position zero ([`Projector::fold_from_start`]).
pub trait Fold: Send {
    /// Folds the next page of the stream, in its order. An error (a poison event) makes
    /// the runner drop the fold and apply the same events in batches, which stop at it.
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError>;
    /// Rows the fold would write: the runner writes it once it holds [`Fold::bound`] and
    /// goes on in batches, or folding if it [goes on](Fold::goes_on), so memory stays
    /// bounded.
    fn rows(&self) -> usize;
    /// How many rows it may hold before it is written.
    fn bound(&self) -> usize {
        runner::FOLD_ROWS
    }
    /// Writes its rows into the build's tables inside the transaction that moves the
    /// checkpoint past the folded events: every row, into tables empty until now — or,
    /// for a fold that goes on, the rows folded since its last write.
    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
    /// Whether it folds on from its write, keeping only what the next events need (the
    /// timeline: nothing, its rows are a history) and writing only what they add.
    /// `false` (the default): its rows are the whole model, written once; the batches go
    /// on after it.
    fn goes_on(&self) -> bool {
        false
    }
    /// For a fold that [goes on](Fold::goes_on): what it folded since its last write,
    /// taken out of it as a write of its own (the fold then stands as if written), so that
    /// the runner writes it on another connection while the fold folds on — the server
    /// copying in one write's rows while the client folds the next. `None` (the default):
    /// written in place by [`Fold::write`], the fold waiting for it.
    fn take_write(&mut self) -> Option<Box<dyn FoldWrite>> {
        None
    }
}

/// Rows a [`Fold`] took out of itself ([`Fold::take_write`]), written on their own.
pub trait FoldWrite: Send {
    /// Writes them into the build's tables inside the transaction that moves the
    /// checkpoint past the events they were folded from.
    fn write<'a>(
        self: Box<Self>,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
}

/// Rows per statement when a [`Fold`] writes itself: one statement per table would bind
/// arrays as large as the read model.
pub(crate) const FOLD_WRITE_CHUNK: usize = 10_000;

/// Rows a [`Fold`] that [goes on](Fold::goes_on) holds before it writes them and folds
/// on (100,000 of the timeline's titles encode to about 6 MB): each write holds the log's
/// readers while it runs, so it stays short.
pub(crate) const FOLD_ON_ROWS: usize = 100_000;

/// Every read model, in the order they are reported.
pub fn all() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(board::BoardProjector),
        Arc::new(graph::GraphProjector),
        Arc::new(timeline::TimelineProjector),
        Arc::new(agents::AgentsProjector),
        Arc::new(directory::DirectoryProjector),
        Arc::new(activity::ActivityProjector),
        Arc::new(monitoring::MonitoringProjector),
        Arc::new(snapshots::SnapshotsProjector::default()),
    ]
}
