//! Snapshots of each project's board and graph, so that a view `as_of` a past position
//! folds only the events after the nearest snapshot instead of the project's whole history
//! (issue #15: `as_of` on a project of 1,000,000 events).
//!
//! A read model like the others (built, rebuilt and verified by the runner). A project's
//! snapshots form a chain: now and then a *whole* snapshot (both models, in `models`), and
//! between two wholes a *delta* every so many of its events (in `deltas`): the tickets,
//! tasks, nodes and dependencies the events since the snapshot before changed, as they
//! stand after them ([`crate::delta`], from each model's `Touched`). A view starts from the
//! newest whole, applies the deltas after it, and replays at most a delta's spacing more.
//!
//! `progress` counts each project's events; the event that reaches the count gets the
//! snapshot: a whole once `max(DELTAS_PER_WHOLE × every, tickets + tasks in the last
//! whole)` events followed the last whole, else a delta once `max(every, a twentieth of
//! those tickets and tasks)` followed the last snapshot of either kind. The point is fixed
//! by the log alone, so a batch takes the same snapshots as its events one by one, and a
//! rebuild the same as the live build. Spacing
//! wholes by the models' size keeps their storage within a small multiple of the events
//! they cover (a whole costs about what its tickets and tasks do, and follows at least as
//! many events); a delta costs at most two entries per model per event it covers. Before
//! deltas, a view of the largest project of `bench-scale`'s 10,000,000-event log replayed
//! up to 184,000 events after a whole (README, Cost as the log grows).
//!
//! The batches take a snapshot from the project's models after the events counted: kept
//! in memory since the project's last batch ([`Kept`]), else read back — the chain so far
//! with the project's events after its last snapshot read from the log and folded in, by
//! the board's and the graph's own rules. A rebuild from position zero folds instead
//! ([`Fold`]): every project's models in memory, each event applied as it comes, a
//! snapshot taken from them where the count says. The batches reading the chain back are
//! the reference: the kept models and the fold write the same rows
//! (tests/e2e/projection_batches.rs checks it).
//!
//! A view `as_of` P starts from the newest whole whose events were all at or below P
//! (`max_position ≤ P`; none: the empty models a project starts from) and applies the
//! deltas after it meeting the same bound, read in one snapshot of the database (a prefix of
//! them: `max_position` only rises along the chain): the replay stops at the project's
//! first event above P, and no event up to such a snapshot is one. Snapshots only shorten
//! the replay — a view gives the same answer with none (a process that never ran this read
//! model, a body written by an older shape of the models), and with wholes alone (a live
//! build from before deltas).

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use omoi_store::json::MetadataField;
use omoi_store::log::{read_global, Visibility};
use omoi_store::{Cursor, StoredEvent};
use serde::de::DeserializeOwned;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::board::{BoardChanges, BoardDelta, BoardModel, BoardProjector};
use crate::catalog::is_undefined_table;
use crate::codec::WorkEvent;
use crate::graph::{GraphChanges, GraphDelta, GraphModel, GraphProjector};
use crate::{Columns, Fold, ProjectionError, Projector, FOLD_WRITE_CHUNK};

/// Fewest events of a project between two of its snapshots (whole or delta), by default:
/// what a view replays after its snapshot at most, for a project of up to 40,000 tickets
/// and tasks (larger ones space deltas by a twentieth of those).
pub const SNAPSHOT_EVERY: i64 = 2_000;

/// Fewest snapshots' spacings between two wholes: deltas fill the rest (10,000 events by
/// default, where wholes alone were spaced before deltas).
const DELTAS_PER_WHOLE: i64 = 5;

/// Deltas are also at least this share of the last whole's tickets and tasks apart (in
/// events). A batch without the project's models in memory ([`Kept`]) reads the chain back
/// for a delta, its whole at about a microsecond per ticket or task: so spaced, that costs
/// at most about 20 µs per event it covers, wherever the project's size. Spaced by 2,000
/// alone, the 10,000,000-event log of `bench-scale` — twelve projects of up to 184,000
/// tickets and tasks, more than [`KEPT_ENTITIES`] together — took its snapshots' rebuild
/// about 100 µs per event once the fold handed over to the batches.
const WHOLE_SHARE_PER_DELTA: i64 = 20;

/// Bump when what a snapshot stores changes shape (the models' rules have versions of
/// their own, part of [`SnapshotsProjector::version`]); the test
/// `the_bodies_positional_shape_is_pinned` fails until then. 2: bodies are LZ4 blocks. 3:
/// deltas between wholes. 4: bodies in postcard ([`LZ4_POSTCARD_BODY`]) — a bump although
/// serde_json bodies still read: `omoi projections verify` compares bodies byte for byte
/// (a build holding both would differ from its rebuild), and a process of the build before
/// given a build holding postcard would stop it on a body it cannot read.
const FORMAT_VERSION: i32 = 4;

/// Events read from the log per page while a snapshot is folded.
const FOLD_PAGE: i64 = 5_000;

/// A project: its organization and itself, as the log's metadata names them.
type ProjectKey = (Uuid, Uuid);

/// Keeps `progress`, `models` and `deltas` (see the module's documentation).
pub struct SnapshotsProjector {
    every: i64,
    kept: Mutex<Kept>,
}

impl SnapshotsProjector {
    /// A snapshot every `events` events of a project, whole at least every
    /// `DELTAS_PER_WHOLE` of them (tests use a handful).
    pub fn every(events: i64) -> Self {
        Self {
            every: events.max(1),
            kept: Mutex::new(Kept::default()),
        }
    }
}

/// Most tickets and tasks of the models [`Kept`] holds between batches (about 250 bytes
/// each in memory, board and graph together: some 60 MB): the largest project of
/// `bench-scale`'s 10,000,000-event log has about 184,000.
const KEPT_ENTITIES: usize = 250_000;

/// The models of the projects this process took snapshots of last, as they stand after
/// the events its batches counted: the next batch applies its events to them instead of
/// reading the last snapshot's chain and the events since back (a whole's body costs about
/// a microsecond per ticket or task to read; with a delta every 2,000 events, reading it
/// back for each made the batches 1.65 times slower on `bench-projections`'s log).
///
/// An entry is found by the build's schema, the project and the count and highest position
/// of the events folded in, as `progress` holds them: the models after a project's first
/// N events of the log's gapless order are the same whoever folds them, so an entry kept
/// by a batch that then rolled back is only never found again.
struct Kept {
    /// Least recently used first.
    entries: Vec<KeptModels>,
    /// Most tickets and tasks held.
    limit: usize,
}

impl Default for Kept {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            limit: KEPT_ENTITIES,
        }
    }
}

struct KeptModels {
    schema: String,
    key: ProjectKey,
    events: i64,
    max_position: i64,
    models: ProjectModels,
}

impl Kept {
    /// The project's models after the events `state` counted, if kept (an entry of the
    /// project that does not match is dropped: it will never match again).
    fn take(&mut self, schema: &str, state: &Progress) -> Option<ProjectModels> {
        let index = self
            .entries
            .iter()
            .position(|e| e.schema == schema && e.key == state.key)?;
        let entry = self.entries.remove(index);
        (entry.events == state.events && entry.max_position == state.max_position)
            .then_some(entry.models)
    }

    /// Keeps the project's models after the events `state` counted, the least recently
    /// used given up while the entries hold more than the limit.
    fn put(&mut self, schema: &str, state: &Progress, models: ProjectModels) {
        self.entries
            .retain(|e| !(e.schema == schema && e.key == state.key));
        self.entries.push(KeptModels {
            schema: schema.to_string(),
            key: state.key,
            events: state.events,
            max_position: state.max_position,
            models,
        });
        // An entry counts one more than its tickets and tasks: entries of empty models
        // (a project of specs alone, a build retired) are bounded too.
        let weight = |entry: &KeptModels| entry.models.board.size() + 1;
        let mut held: usize = self.entries.iter().map(weight).sum();
        while held > self.limit && !self.entries.is_empty() {
            held -= weight(&self.entries.remove(0));
        }
    }
}

impl SnapshotsProjector {
    /// The entries behind a poisoned lock are whole (each is replaced in one step): go on
    /// with them.
    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for SnapshotsProjector {
    fn default() -> Self {
        Self::every(SNAPSHOT_EVERY)
    }
}

impl Projector for SnapshotsProjector {
    fn name(&self) -> &'static str {
        "snapshots"
    }

    /// A board or graph of new rules (their versions) needs snapshots made by them: the
    /// sum rises whenever any of its parts does.
    fn version(&self) -> i32 {
        FORMAT_VERSION + BoardProjector.version() + GraphProjector.version()
    }

    fn tables(&self) -> &'static [&'static str] {
        &["progress", "models", "deltas"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        let mut statements = vec![format!(
            "create table {schema}.progress (
                organization_id uuid   not null,
                project_id      uuid   not null,
                -- The project's events so far, since its last whole snapshot, and since
                -- its last snapshot of either kind.
                events          bigint not null,
                since_whole     bigint not null,
                since_last      bigint not null,
                -- The highest global position among the project's events so far.
                max_position    bigint not null,
                -- Tickets and tasks in the last whole snapshot (spaces the next one).
                entities        bigint not null,
                -- The last snapshot's event, whole or delta (none yet: null).
                transaction_id  bigint,
                global_position bigint,
                primary key (organization_id, project_id)
            )"
        )];
        for (table, bodies) in [
            ("models", "BoardModel and GraphModel"),
            ("deltas", "BoardDelta and GraphDelta"),
        ] {
            statements.push(format!(
                "create table {schema}.{table} (
                    organization_id uuid   not null,
                    project_id      uuid   not null,
                    -- The event the snapshot was taken at: every event of the project up
                    -- to it in the log's order is folded in, none after it.
                    transaction_id  bigint not null,
                    global_position bigint not null,
                    -- The highest global position among those events.
                    max_position    bigint not null,
                    events          bigint not null,
                    board_version   integer not null,
                    graph_version   integer not null,
                    -- {bodies}, LZ4-compressed (`encode`).
                    board           bytea  not null,
                    graph           bytea  not null,
                    primary key (organization_id, project_id, transaction_id, global_position)
                )"
            ));
            // Kept out of line as they are: compressed already, so PostgreSQL's own
            // compression would only spend its time failing to shrink them.
            statements.push(format!(
                "alter table {schema}.{table}
                   alter column board set storage external,
                   alter column graph set storage external"
            ));
        }
        statements
    }

    /// Which project an event belongs to comes from the metadata.
    fn columns(&self) -> Columns {
        Columns::MetadataFields(&[MetadataField::OrganizationId, MetadataField::ProjectId])
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut by_project: BTreeMap<ProjectKey, Vec<&StoredEvent>> = BTreeMap::new();
            for event in events {
                if let Some(key) = project_of(event) {
                    by_project.entry(key).or_default().push(event);
                }
            }
            if by_project.is_empty() {
                return Ok(());
            }
            let keys: Vec<ProjectKey> = by_project.keys().copied().collect();
            let mut progress = load_progress(tx, schema, &keys).await?;
            let mut taken = Vec::new();
            for (key, events) in &by_project {
                let state = progress
                    .entry(*key)
                    .or_insert_with(|| Progress::start(*key));
                // The project's models after the events counted so far, once known: kept by
                // this process since an earlier batch, or read back at its first snapshot
                // here; each event after is applied to them as it comes.
                let mut models = self.kept().take(schema, state);
                for event in events {
                    let due = state.count(event, self.every);
                    if let Some(models) = models.as_mut() {
                        models.apply(event)?;
                    }
                    let Some(kind) = due else {
                        continue;
                    };
                    let mut current = match models.take() {
                        Some(models) => models,
                        None => {
                            let mut read = load_chain(tx, schema, *key, state.last).await?;
                            read.fold_log(tx, *key, state.last, state.since_last, event.cursor())
                                .await?;
                            read
                        }
                    };
                    taken.push(state.take(event.cursor(), kind, &mut current)?);
                    models = Some(current);
                }
                // Kept before the batch commits: if it rolls back, `progress` keeps the
                // count before it, which this entry does not match. Kept project by
                // project, not at the batch's end, so that a batch of many projects holds
                // no more than the limit's worth of models beside the one it folds.
                if let Some(models) = models {
                    self.kept().put(schema, state, models);
                }
            }
            // Every read above, every write below: the batch holds the log's readers
            // only from its first write (see the runner).
            for snapshot in &taken {
                snapshot.insert(tx, schema).await?;
            }
            save_progress(tx, schema, progress.values()).await
        })
    }

    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        project_of(event).is_some()
    }

    fn fold_from_start(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(SnapshotsFold {
            every: self.every,
            projects: BTreeMap::new(),
            taken: Vec::new(),
            bytes_taken: 0,
        }))
    }
}

/// A rebuild from position zero: every project's models kept in memory and each folded
/// event by event, so a snapshot is its models as they stand at its event — the same
/// models the batches keep or rebuild from the chain and the log. Written whenever it
/// holds its bound: the snapshots taken since its
/// last write and every project's progress; it then folds on with its models
/// ([`Fold::goes_on`]) while they leave room for bodies, and past that the batches go on
/// from the progress written.
struct SnapshotsFold {
    every: i64,
    projects: BTreeMap<ProjectKey, (Progress, ProjectModels)>,
    taken: Vec<Snapshot>,
    /// Bytes of the bodies taken, held until written.
    bytes_taken: usize,
}

/// Bytes of snapshot bodies held by a fold that count as one of its rows: the runner's
/// bound ([`crate::runner::FOLD_ROWS`], 1,000,000 rows, about 250 MB of the board's model)
/// then holds about as much in bodies. Counting a snapshot's tickets and tasks instead
/// let `bench-projections --events 1000000` reach 955 MB of resident memory, against
/// 309 MB for the batches.
const BODY_BYTES_PER_ROW: usize = 256;

impl Fold for SnapshotsFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            let Some(key) = project_of(event) else {
                continue;
            };
            let (state, models) = self
                .projects
                .entry(key)
                .or_insert_with(|| (Progress::start(key), ProjectModels::default()));
            models.apply(event)?;
            if let Some(kind) = state.count(event, self.every) {
                let snapshot = state.take(event.cursor(), kind, models)?;
                self.bytes_taken += snapshot.bytes();
                self.taken.push(snapshot);
            }
        }
        Ok(())
    }

    /// The tickets and tasks of the models held, and the bodies taken.
    fn rows(&self) -> usize {
        self.held() + self.bytes_taken / BODY_BYTES_PER_ROW
    }

    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            for snapshot in &self.taken {
                snapshot.insert(tx, schema).await?;
            }
            let progress: Vec<&Progress> = self.projects.values().map(|(p, _)| p).collect();
            for chunk in progress.chunks(FOLD_WRITE_CHUNK) {
                save_progress(tx, schema, chunk.iter().copied()).await?;
            }
            self.taken.clear();
            self.bytes_taken = 0;
            Ok(())
        })
    }

    /// While the models held leave room for at least as many rows of bodies before the
    /// next write: folding on from the models costs nothing, where the batches read each
    /// project's events back from its last snapshot.
    fn goes_on(&self) -> bool {
        self.held() < crate::runner::FOLD_ROWS / 2
    }
}

impl SnapshotsFold {
    /// The tickets and tasks of the models held.
    fn held(&self) -> usize {
        self.projects.values().map(|(_, m)| m.board.size()).sum()
    }
}

/// The project an event belongs to, as the log's readers filter it: both ids in their
/// canonical text (the readers compare text), or none.
fn project_of(event: &StoredEvent) -> Option<ProjectKey> {
    let id = |text: Option<&str>| {
        let text = text?;
        let id = Uuid::parse_str(text).ok()?;
        (id.to_string() == text).then_some(id)
    };
    let metadata = &event.metadata;
    Some((id(metadata.organization_id())?, id(metadata.project_id())?))
}

/// What a snapshot holds: the project's board and graph, and what the events since the
/// last snapshot changed in them (a delta's entries).
#[derive(Default)]
struct ProjectModels {
    board: BoardModel,
    graph: GraphModel,
    board_changes: BoardChanges,
    graph_changes: GraphChanges,
}

impl ProjectModels {
    /// Models as a chain of snapshots left them, nothing changed since.
    fn of(board: BoardModel, graph: GraphModel) -> Self {
        Self {
            board,
            graph,
            ..Self::default()
        }
    }

    fn apply(&mut self, event: &StoredEvent) -> Result<(), ProjectionError> {
        if let Some(work) = WorkEvent::decode(event)? {
            let position = event.global_position;
            self.board_changes
                .add(self.board.apply_work(work.clone(), position));
            self.graph_changes
                .add(self.graph.apply_work(work, position));
        }
        Ok(())
    }

    /// The bodies of a snapshot of `kind` (a delta: of the changes since the last one),
    /// the changes then started again.
    fn take(&mut self, kind: Kind) -> Result<(Vec<u8>, Vec<u8>), ProjectionError> {
        let bodies = match kind {
            Kind::Whole => (encode(&self.board)?, encode(&self.graph)?),
            Kind::Delta => (
                encode(&self.board.delta(&self.board_changes))?,
                encode(&self.graph.delta(&self.graph_changes))?,
            ),
        };
        self.board_changes = BoardChanges::default();
        self.graph_changes = GraphChanges::default();
        Ok(bodies)
    }

    /// Folds the project's `count` events after `after` (from the start: `None`), read
    /// from the log in its order, the last of which must be `until`.
    async fn fold_log(
        &mut self,
        conn: &mut PgConnection,
        (organization_id, project_id): ProjectKey,
        after: Option<Cursor>,
        count: i64,
        until: Cursor,
    ) -> Result<(), ProjectionError> {
        let visibility = Visibility::Organizations {
            organizations: vec![organization_id],
            project: Some(project_id),
        };
        let (mut cursor, mut folded) = (after.unwrap_or_default(), 0);
        // Asks for exactly the events counted, never a page past them; stops at the end of
        // the log or at an event past `until` (fewer events in the log than counted).
        while folded < count {
            let limit = (count - folded).min(FOLD_PAGE);
            let page = read_global(&mut *conn, cursor, limit, &visibility).await?;
            let mut past_until = false;
            for event in &page.events {
                if event.cursor() > until {
                    past_until = true;
                    break;
                }
                self.apply(event)?;
                folded += 1;
                cursor = event.cursor();
            }
            if past_until || (page.events.len() as i64) < limit || cursor == until {
                break;
            }
        }
        if folded != count || cursor != until {
            return Err(ProjectionError::SnapshotGap {
                project_id,
                counted: count,
                read: folded,
            });
        }
        Ok(())
    }
}

/// Which snapshot an event gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Both models whole, in `models`.
    Whole,
    /// What changed since the snapshot before, in `deltas`.
    Delta,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Self::Whole => "models",
            Self::Delta => "deltas",
        }
    }
}

/// A project's row of `progress`.
struct Progress {
    key: ProjectKey,
    events: i64,
    since_whole: i64,
    since_last: i64,
    max_position: i64,
    entities: i64,
    /// The last snapshot, whole or delta.
    last: Option<Cursor>,
}

impl Progress {
    fn start(key: ProjectKey) -> Self {
        Self {
            key,
            events: 0,
            since_whole: 0,
            since_last: 0,
            max_position: 0,
            entities: 0,
            last: None,
        }
    }

    /// Counts one of the project's events: the snapshot it gets, if it is the one.
    fn count(&mut self, event: &StoredEvent, every: i64) -> Option<Kind> {
        self.events += 1;
        self.since_whole += 1;
        self.since_last += 1;
        self.max_position = self.max_position.max(event.global_position);
        if self.since_whole >= (every * DELTAS_PER_WHOLE).max(self.entities) {
            Some(Kind::Whole)
        } else if self.since_last >= every.max(self.entities / WHOLE_SHARE_PER_DELTA) {
            Some(Kind::Delta)
        } else {
            None
        }
    }

    /// The snapshot of `kind` at `at` of `models` (the project's events up to `at` folded
    /// in), and the counts started again; after a whole, the next is spaced by its size.
    fn take(
        &mut self,
        at: Cursor,
        kind: Kind,
        models: &mut ProjectModels,
    ) -> Result<Snapshot, ProjectionError> {
        let (board, graph) = models.take(kind)?;
        self.since_last = 0;
        if kind == Kind::Whole {
            self.since_whole = 0;
            self.entities = models.board.size() as i64;
        }
        self.last = Some(at);
        Ok(Snapshot {
            key: self.key,
            kind,
            at,
            max_position: self.max_position,
            events: self.events,
            board,
            graph,
        })
    }
}

async fn load_progress(
    conn: &mut PgConnection,
    schema: &str,
    keys: &[ProjectKey],
) -> Result<BTreeMap<ProjectKey, Progress>, ProjectionError> {
    let (organizations, projects): (Vec<Uuid>, Vec<Uuid>) = keys.iter().copied().unzip();
    let rows = sqlx::query(&format!(
        "select organization_id, project_id, events, since_whole, since_last, max_position,
                entities, transaction_id, global_position
           from {schema}.progress
          where (organization_id, project_id) in
                (select * from unnest($1::uuid[], $2::uuid[]))"
    ))
    .bind(organizations)
    .bind(projects)
    .fetch_all(&mut *conn)
    .await?;
    let mut progress = BTreeMap::new();
    for row in &rows {
        let key = (row.try_get("organization_id")?, row.try_get("project_id")?);
        let last = match (
            row.try_get::<Option<i64>, _>("transaction_id")?,
            row.try_get::<Option<i64>, _>("global_position")?,
        ) {
            (Some(transaction_id), Some(global_position)) => Some(Cursor {
                transaction_id,
                global_position,
            }),
            _ => None,
        };
        progress.insert(
            key,
            Progress {
                key,
                events: row.try_get("events")?,
                since_whole: row.try_get("since_whole")?,
                since_last: row.try_get("since_last")?,
                max_position: row.try_get("max_position")?,
                entities: row.try_get("entities")?,
                last,
            },
        );
    }
    Ok(progress)
}

async fn save_progress<'p>(
    conn: &mut PgConnection,
    schema: &str,
    progress: impl Iterator<Item = &'p Progress>,
) -> Result<(), ProjectionError> {
    let rows: Vec<&Progress> = progress.collect();
    let column = |f: fn(&Progress) -> i64| rows.iter().map(|p| f(p)).collect::<Vec<i64>>();
    sqlx::query(&format!(
        "insert into {schema}.progress
              (organization_id, project_id, events, since_whole, since_last, max_position,
               entities, transaction_id, global_position)
         select * from unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[],
                              $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
                              $9::bigint[])
         on conflict (organization_id, project_id) do update
            set events = excluded.events, since_whole = excluded.since_whole,
                since_last = excluded.since_last, max_position = excluded.max_position,
                entities = excluded.entities, transaction_id = excluded.transaction_id,
                global_position = excluded.global_position"
    ))
    .bind(rows.iter().map(|p| p.key.0).collect::<Vec<Uuid>>())
    .bind(rows.iter().map(|p| p.key.1).collect::<Vec<Uuid>>())
    .bind(column(|p| p.events))
    .bind(column(|p| p.since_whole))
    .bind(column(|p| p.since_last))
    .bind(column(|p| p.max_position))
    .bind(column(|p| p.entities))
    .bind(
        rows.iter()
            .map(|p| p.last.map(|c| c.transaction_id))
            .collect::<Vec<Option<i64>>>(),
    )
    .bind(
        rows.iter()
            .map(|p| p.last.map(|c| c.global_position))
            .collect::<Vec<Option<i64>>>(),
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The project's models as its chain of snapshots in this build left them at `at`, its
/// last snapshot (none yet: empty models).
async fn load_chain(
    conn: &mut PgConnection,
    schema: &str,
    (organization_id, project_id): ProjectKey,
    at: Option<Cursor>,
) -> Result<ProjectModels, ProjectionError> {
    let Some(at) = at else {
        return Ok(ProjectModels::default());
    };
    let tables = Tables::of_build(schema);
    let bound = Bound::At(at);
    let key = (organization_id, project_id);
    let columns = "board, graph";
    let whole = newest_whole(&mut *conn, &tables, key, bound, columns).await?;
    let mut models = match &whole {
        Some(row) => ProjectModels::of(
            decode(row.try_get("board")?)?,
            decode(row.try_get("graph")?)?,
        ),
        None => ProjectModels::default(),
    };
    let mut reached = whole.as_ref().map(cursor_of).transpose()?;
    for row in deltas_after(&mut *conn, &tables, key, reached, bound, columns).await? {
        models
            .board
            .apply_delta(decode::<BoardDelta>(row.try_get("board")?)?);
        models
            .graph
            .apply_delta(decode::<GraphDelta>(row.try_get("graph")?)?);
        reached = Some(cursor_of(&row)?);
    }
    if reached != Some(at) {
        return Err(ProjectionError::SnapshotBody(format!(
            "project {project_id}: its progress names the snapshot at {at}, its chain ends at {reached:?}"
        )));
    }
    Ok(models)
}

/// The first byte of a body of the second format: an LZ4 block of the model's serde_json,
/// its size before it ([`lz4_flex::compress_prepend_size`]). PostgreSQL compressed the
/// bodies of the first format, serde_json as it is, with pglz: `perf` of a rebuild of the
/// snapshots (`omoi-bench bench-projections --events 1000000 --only snapshots`) put
/// `pglz_compress` at 14 % of the machine's samples, in the fold's write, which nothing
/// overlaps.
const LZ4_JSON_BODY: u8 = 1;

/// The first byte of a body of the format written now: [`FORMAT_VERSION`] (4 bytes, little
/// endian), then an LZ4 block of the model in postcard, serde's positional binary form. A
/// board of 46,000 cards and 138,000 tasks is 61 MB of serde_json, decoded in 113–130 ms,
/// and 19 MB of postcard, decoded in 31–43 ms — most of what a view `as_of` of such a
/// project spent before replaying. Positional, a body names no field and no variant: one
/// added, removed or moved would read an older body wrongly instead of failing. So the
/// shape it was written in comes first, a body of another is refused (the view replays
/// from the start, as with no snapshot), and a test pins the shape (bump the version with it).
const LZ4_POSTCARD_BODY: u8 = 2;

/// The model a body holds, of any format: a live build of an older one serves views until
/// its successor catches up.
fn decode<M: DeserializeOwned>(body: &[u8]) -> Result<M, ProjectionError> {
    let body_error = |e: &dyn std::fmt::Display| ProjectionError::SnapshotBody(e.to_string());
    match body.split_first() {
        Some((&LZ4_POSTCARD_BODY, rest)) => {
            let (shape, block) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| body_error(&"a body without its shape"))?;
            let shape = i32::from_le_bytes(*shape);
            if shape != FORMAT_VERSION {
                return Err(body_error(&format!(
                    "a body of shape {shape}, read by shape {FORMAT_VERSION}"
                )));
            }
            let bytes = decompress(block).map_err(|e| body_error(&e))?;
            postcard::from_bytes(&bytes).map_err(|e| body_error(&e))
        }
        Some((&LZ4_JSON_BODY, block)) => {
            let json = decompress(block).map_err(|e| body_error(&e))?;
            serde_json::from_slice(&json).map_err(|e| body_error(&e))
        }
        _ => serde_json::from_slice(body).map_err(|e| body_error(&e)),
    }
}

/// Bytes of output an LZ4 block yields at most per byte of it: a match's length goes on
/// in bytes of 255 each, after a token and an offset of three bytes.
const LZ4_MOST_EXPANSION: usize = 255;

/// An LZ4 block after its size ([`lz4_flex::compress_prepend_size`]), decompressed — or an
/// error for a size more than the block can hold, before that size is allocated (a
/// damaged prefix could name up to 4 GiB, which only a block over 16 MB can hold).
fn decompress(block: &[u8]) -> Result<Vec<u8>, String> {
    let (size, compressed) = block
        .split_first_chunk::<4>()
        .ok_or("an LZ4 block without its size")?;
    let size = u32::from_le_bytes(*size) as usize;
    let most = compressed.len().saturating_mul(LZ4_MOST_EXPANSION) + 64;
    if size > most {
        return Err(format!(
            "an LZ4 block of {} bytes naming {size} bytes, more than it can hold",
            compressed.len()
        ));
    }
    lz4_flex::decompress(compressed, size).map_err(|e| e.to_string())
}

fn encode<M: serde::Serialize>(model: &M) -> Result<Vec<u8>, ProjectionError> {
    let bytes =
        postcard::to_allocvec(model).map_err(|e| ProjectionError::SnapshotBody(e.to_string()))?;
    let block = lz4_flex::compress_prepend_size(&bytes);
    let mut body = Vec::with_capacity(5 + block.len());
    body.push(LZ4_POSTCARD_BODY);
    body.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    body.extend_from_slice(&block);
    Ok(body)
}

/// A row of `models` or `deltas`, ready to be written.
struct Snapshot {
    key: ProjectKey,
    kind: Kind,
    at: Cursor,
    max_position: i64,
    events: i64,
    board: Vec<u8>,
    graph: Vec<u8>,
}

impl Snapshot {
    fn bytes(&self) -> usize {
        self.board.len() + self.graph.len()
    }

    async fn insert(&self, conn: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        sqlx::query(&format!(
            "insert into {schema}.{table}
                  (organization_id, project_id, transaction_id, global_position, max_position,
                   events, board_version, graph_version, board, graph)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            table = self.kind.table(),
        ))
        .bind(self.key.0)
        .bind(self.key.1)
        .bind(self.at.transaction_id)
        .bind(self.at.global_position)
        .bind(self.max_position)
        .bind(self.events)
        .bind(BoardProjector.version())
        .bind(GraphProjector.version())
        .bind(&self.board)
        .bind(&self.graph)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Reading a chain: a whole, then the deltas after it
// ---------------------------------------------------------------------------------------

/// Where a chain is read: a build's own tables (its batches), or the live build's views.
struct Tables {
    models: String,
    deltas: String,
}

impl Tables {
    fn of_build(schema: &str) -> Self {
        Self {
            models: format!("{schema}.models"),
            deltas: format!("{schema}.deltas"),
        }
    }

    fn live() -> Self {
        Self {
            models: "snapshots_models".to_string(),
            deltas: "snapshots_deltas".to_string(),
        }
    }
}

/// Which snapshots of a chain are read.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// Every one up to and including the snapshot at this event (a build's own chain).
    At(Cursor),
    /// Every one of `Model`'s rules whose events were all at or below this position (a
    /// view `as_of` it).
    AsOf(i64, Model),
}

impl Bound {
    /// The condition, on `$3` and `$4`.
    fn condition(self) -> String {
        match self {
            Self::At(_) => "(transaction_id, global_position) <= ($3, $4)".to_string(),
            Self::AsOf(_, model) => format!(
                "max_position <= $3 and {version} = $4",
                version = model.version_column()
            ),
        }
    }

    fn bind<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            Self::At(at) => query.bind(at.transaction_id).bind(at.global_position),
            Self::AsOf(as_of, model) => query.bind(as_of).bind(model.version()),
        }
    }
}

/// The project's newest whole snapshot within `bound`: its event and `columns`.
async fn newest_whole(
    conn: &mut PgConnection,
    tables: &Tables,
    (organization_id, project_id): ProjectKey,
    bound: Bound,
    columns: &str,
) -> Result<Option<PgRow>, sqlx::Error> {
    let sql = format!(
        "select transaction_id, global_position, {columns} from {models}
          where organization_id = $1 and project_id = $2 and {condition}
          order by transaction_id desc, global_position desc
          limit 1",
        models = tables.models,
        condition = bound.condition(),
    );
    bound
        .bind(sqlx::query(&sql).bind(organization_id).bind(project_id))
        .fetch_optional(&mut *conn)
        .await
}

/// The project's deltas after `after` (none: from the start) within `bound`, in the
/// chain's order: their events and `columns`.
async fn deltas_after(
    conn: &mut PgConnection,
    tables: &Tables,
    (organization_id, project_id): ProjectKey,
    after: Option<Cursor>,
    bound: Bound,
    columns: &str,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let sql = format!(
        "select transaction_id, global_position, {columns} from {deltas}
          where organization_id = $1 and project_id = $2 and {condition}
            and (transaction_id, global_position) > ($5, $6)
          order by transaction_id, global_position",
        deltas = tables.deltas,
        condition = bound.condition(),
    );
    let after = after.unwrap_or_default();
    bound
        .bind(sqlx::query(&sql).bind(organization_id).bind(project_id))
        .bind(after.transaction_id)
        .bind(after.global_position)
        .fetch_all(&mut *conn)
        .await
}

fn cursor_of(row: &PgRow) -> Result<Cursor, sqlx::Error> {
    Ok(Cursor {
        transaction_id: row.try_get("transaction_id")?,
        global_position: row.try_get("global_position")?,
    })
}

// ---------------------------------------------------------------------------------------
// Reading: where a view as of a past position starts
// ---------------------------------------------------------------------------------------

/// Which model of a snapshot a view needs.
#[derive(Debug, Clone, Copy)]
pub enum Model {
    Board,
    Graph,
}

impl Model {
    fn column(self) -> &'static str {
        match self {
            Self::Board => "board",
            Self::Graph => "graph",
        }
    }

    fn version_column(self) -> &'static str {
        match self {
            Self::Board => "board_version",
            Self::Graph => "graph_version",
        }
    }

    fn version(self) -> i32 {
        match self {
            Self::Board => BoardProjector.version(),
            Self::Graph => GraphProjector.version(),
        }
    }
}

/// A model a project's snapshots hold: the board or the graph.
pub trait Snapshotted: DeserializeOwned + Default {
    /// What a delta holds of it.
    type Delta: DeserializeOwned;

    /// Which it is, for its columns.
    const MODEL: Model;

    fn apply_delta(&mut self, delta: Self::Delta);
}

impl Snapshotted for BoardModel {
    type Delta = BoardDelta;
    const MODEL: Model = Model::Board;

    fn apply_delta(&mut self, delta: BoardDelta) {
        BoardModel::apply_delta(self, delta);
    }
}

impl Snapshotted for GraphModel {
    type Delta = GraphDelta;
    const MODEL: Model = Model::Graph;

    fn apply_delta(&mut self, delta: GraphDelta) {
        GraphModel::apply_delta(self, delta);
    }
}

/// The newest snapshot of a project a view `as_of` may start from: its event (replay the
/// project's events after it) and its model — the newest whole within the bound (none: the
/// empty model the project started from), with the deltas after it within the bound
/// applied. `None` when there is no snapshot within the bound, or this database has no
/// snapshots read model, or the newest was made by other rules of the model or does not
/// read back (a live build older than the running code): the view then replays from the
/// start, with the same answer. A live build without deltas (older than them) gives its
/// whole alone.
pub async fn model_before<M: Snapshotted>(
    pool: &PgPool,
    organization_id: Uuid,
    project_id: Uuid,
    as_of: i64,
) -> Result<Option<(Cursor, M)>, ProjectionError> {
    // One snapshot of the database for both reads: a whole and a delta committed between
    // two statements would otherwise join the deltas of the chain read to a whole never
    // read (a delta holds only what changed since the snapshot before it). Reading the
    // wholes' view first also holds it, so that a build going live (which points the
    // views elsewhere) waits for the deltas to be read from the same build.
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let tables = Tables::live();
    let key = (organization_id, project_id);
    let bound = Bound::AsOf(as_of, M::MODEL);
    let columns = format!("{} as body", M::MODEL.column());
    let whole = match newest_whole(&mut tx, &tables, key, bound, &columns).await {
        Ok(whole) => whole,
        Err(error) if is_undefined_table(&error) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let after = whole.as_ref().map(cursor_of).transpose()?;
    let deltas = match deltas_after(&mut tx, &tables, key, after, bound, &columns).await {
        Ok(rows) => rows,
        Err(error) if is_undefined_table(&error) => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    let Some(newest) = deltas.last().or(whole.as_ref()) else {
        return Ok(None);
    };
    let at = cursor_of(newest)?;
    let chained = || -> Result<M, ProjectionError> {
        let mut model = match &whole {
            Some(row) => decode(row.try_get("body")?)?,
            None => M::default(),
        };
        for row in &deltas {
            model.apply_delta(decode(row.try_get("body")?)?);
        }
        Ok(model)
    };
    match chained() {
        Ok(model) => Ok(Some((at, model))),
        Err(error) => {
            tracing::warn!(%project_id, %at, %error, "a snapshot did not read back; replaying from the start");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use omoi_domain::common::{Phase, Priority};
    use omoi_domain::task::TaskStatus;
    use omoi_domain::ticket::TicketStatus;
    use serde_json::{json, Map};

    use super::*;
    use crate::testing::{created_ticket, Log};

    fn with_metadata(metadata: serde_json::Value) -> StoredEvent {
        StoredEvent {
            aggregate_type: "Ticket".to_string(),
            aggregate_id: Uuid::nil().to_string(),
            sequence: 1,
            global_position: 1,
            transaction_id: 1,
            event_type: "TicketCreated".to_string(),
            event_version: "1".to_string(),
            payload: json!({}).into(),
            metadata: metadata.into(),
        }
    }

    /// A board and a graph holding every ticket and task status, priority, phase, block
    /// reason and node kind, with and without each optional part, and a delta of each,
    /// written as serde_json, which names every field and variant.
    fn samples() -> (BoardModel, GraphModel, BoardDelta, GraphDelta) {
        let id = |n: usize| Uuid::from_u128(n as u128).to_string();
        fn name(value: impl serde::Serialize) -> String {
            match serde_json::to_value(value) {
                Ok(serde_json::Value::String(name)) => name,
                other => panic!("not a unit variant: {other:?}"),
            }
        }
        let reasons = [
            "dependency",
            "waiting_on_clarification",
            "failing_checks",
            "environment",
        ];
        let (organization, project) = (id(1), id(2));
        let (mut cards, mut tasks, mut nodes) = (Map::new(), Map::new(), Map::new());
        let mut card_list = Vec::new();
        for n in 0..TaskStatus::ALL.len() {
            let (ticket, task) = (id(100 + n), id(200 + n));
            let ticket_status = name(TicketStatus::ALL[n % TicketStatus::ALL.len()]);
            let task_status = name(TaskStatus::ALL[n]);
            let blocked = (n % 3 != 0).then(|| {
                json!({
                    "reason": reasons[n % reasons.len()],
                    "note": (n % 2 == 0).then(|| format!("tab\t, newline\n, quote \", NUL \u{0} {n}")),
                    "blocked_at": "2026-12-01T08:30:00.123456Z",
                })
            });
            let card = json!({
                "ticket_id": ticket, "organization_id": organization, "project_id": project,
                "title": format!("Ticket {n}"),
                "priority": name(Priority::ALL[n % Priority::ALL.len()]),
                "phase": name(Phase::ALL[n % Phase::ALL.len()]),
                "status": ticket_status, "blocked": blocked, "regressions": n,
                "tasks": {"total": 1, "completed": u32::from(n == 3), "by_status": {task_status.clone(): 1}},
                "last_position": 10 * n,
            });
            card_list.push(json!([ticket, card]));
            cards.insert(ticket.clone(), card);
            tasks.insert(
                task.clone(),
                json!({
                    "task_id": task, "ticket_id": ticket, "organization_id": organization,
                    "project_id": project, "status": task_status, "last_position": 10 * n + 1,
                }),
            );
            nodes.insert(
                ticket.clone(),
                json!({
                    "id": ticket, "kind": "ticket", "organization_id": organization,
                    "project_id": project, "ticket_id": null, "title": format!("Ticket {n}"),
                    "status": ticket_status, "last_position": 10 * n,
                }),
            );
            nodes.insert(
                task.clone(),
                json!({
                    "id": task, "kind": "task", "organization_id": organization,
                    "project_id": project, "ticket_id": ticket, "title": format!("Task {n}"),
                    "status": task_status, "last_position": 10 * n + 1,
                }),
            );
        }
        let depends_on = json!({id(201): [id(200)], id(202): [id(200), id(201)]});
        fn read<T: DeserializeOwned>(value: serde_json::Value) -> T {
            serde_json::from_value(value).expect("a sample")
        }
        (
            read(json!({"cards": cards, "tasks": tasks})),
            read(json!({"nodes": nodes, "depends_on": depends_on})),
            read(json!({
                "cards": [card_list[4].clone(), [id(999), null]],
                "tasks": [[id(200), tasks[&id(200)]], [id(998), null]],
            })),
            read(json!({
                "nodes": [[id(201), nodes[&id(201)]], [id(997), null]],
                "depends_on": [[id(202), [id(201)]], [id(996), null]],
            })),
        )
    }

    /// The shape of bodies in postcard ([`LZ4_POSTCARD_BODY`]), which read each field and
    /// variant by where it stands, per [`FORMAT_VERSION`] that wrote them: a hash of the
    /// samples so encoded. Add a line with a new version; never change one (a build holding
    /// bodies of that shape reads them by it).
    const SHAPES: [(i32, u64); 1] = [(4, 0xdbd1_d0c6_f40d_6dcf)];

    #[test]
    fn the_bodies_positional_shape_is_pinned() {
        let (board, graph, board_delta, graph_delta) = samples();
        let mut bytes = Vec::new();
        for part in [
            postcard::to_allocvec(&board),
            postcard::to_allocvec(&graph),
            postcard::to_allocvec(&board_delta),
            postcard::to_allocvec(&graph_delta),
        ] {
            bytes.extend(part.expect("encodes"));
        }
        // FNV-1a: stable across Rust releases, unlike the standard library's hasher.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
        let pinned = SHAPES
            .iter()
            .find(|(version, _)| *version == FORMAT_VERSION);
        assert_eq!(
            pinned.map(|(_, hash)| *hash),
            Some(hash),
            "the models' positional shape is 0x{hash:016x}: if they changed, bump FORMAT_VERSION and add it to SHAPES"
        );
    }

    /// A model written reads back whole; bodies of the older formats (serde_json as it is,
    /// and an LZ4 block of it) still read; a body of another shape, cut short or of no
    /// format is an error, not a panic.
    #[test]
    fn a_body_reads_back_in_any_format_and_a_damaged_one_is_an_error() {
        let (board, graph, board_delta, _) = samples();
        let body = encode(&board).expect("encodes");
        assert_eq!(body.first(), Some(&LZ4_POSTCARD_BODY));
        assert_eq!(decode::<BoardModel>(&body).expect("decodes"), board);
        assert_eq!(
            decode::<GraphModel>(&encode(&graph).expect("encodes")).expect("decodes"),
            graph
        );
        assert_eq!(
            decode::<BoardDelta>(&encode(&board_delta).expect("encodes")).expect("decodes"),
            board_delta
        );
        let json = serde_json::to_vec(&board).expect("serializes");
        assert!(
            body.len() * 3 < json.len(),
            "{} bytes for {} of JSON",
            body.len(),
            json.len()
        );
        assert_eq!(decode::<BoardModel>(&json).expect("first format"), board);
        let mut lz4_json = vec![LZ4_JSON_BODY];
        lz4_json.extend(lz4_flex::compress_prepend_size(&json));
        assert_eq!(
            decode::<BoardModel>(&lz4_json).expect("second format"),
            board
        );
        let mut other_shape = body.clone();
        other_shape[1..5].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        for damaged in [
            &body[..body.len() / 2],
            &body[..3],
            &other_shape[..],
            &[LZ4_POSTCARD_BODY][..],
            &[LZ4_JSON_BODY][..],
            &lz4_json[..lz4_json.len() / 2],
            &[7, 1, 2][..],
            &[][..],
        ] {
            assert!(matches!(
                decode::<BoardModel>(damaged),
                Err(ProjectionError::SnapshotBody(_))
            ));
        }
    }

    /// A block compressed as far as LZ4 goes (the same byte, ten million times) reads back;
    /// one whose size names more than its bytes can hold is refused as such, not
    /// allocated.
    #[test]
    fn a_block_naming_more_than_it_can_hold_is_refused() {
        let zeros = vec![0u8; 10_000_000];
        let block = lz4_flex::compress_prepend_size(&zeros);
        // About 254.9 to 1: the bound is the format's, not a guess with room to spare.
        assert!(block.len() * 250 < zeros.len(), "{} bytes", block.len());
        assert_eq!(decompress(&block).expect("reads back"), zeros);
        let mut claiming = block.clone();
        claiming[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = decompress(&claiming).expect_err("refused");
        assert!(error.contains("more than it can hold"), "{error}");
        let mut body = vec![LZ4_POSTCARD_BODY];
        body.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        body.extend_from_slice(&claiming);
        assert!(matches!(
            decode::<BoardModel>(&body),
            Err(ProjectionError::SnapshotBody(e)) if e.contains("more than it can hold")
        ));
    }

    /// Kept models are found only by the events counted that they follow, and the least
    /// recently used are given up past the limit — the newest too, when alone it is over.
    #[test]
    fn kept_models_match_their_count_and_stay_within_the_limit() {
        let project = |n: u128| (Uuid::from_u128(1), Uuid::from_u128(n));
        let progress = |n: u128, events: i64| Progress {
            events,
            max_position: events * 10,
            ..Progress::start(project(n))
        };
        let models = |tickets: u128| {
            let (organization, project) = project(2);
            let mut models = ProjectModels::default();
            let mut log = Log::default();
            for n in 0..tickets {
                let ticket = Uuid::from_u128(n + 100);
                let created = created_ticket(organization, project, ticket, "t", Priority::Low);
                models.apply(log.ticket(ticket, created)).expect("a ticket");
            }
            assert_eq!(models.board.size() as u128, tickets);
            models
        };
        let mut kept = Kept {
            entries: Vec::new(),
            limit: 10,
        };
        kept.put("s", &progress(1, 5), models(4));
        assert!(kept.take("s", &progress(1, 4)).is_none(), "another count");
        assert!(
            kept.take("s", &progress(1, 5)).is_none(),
            "dropped once missed"
        );
        kept.put("s", &progress(1, 5), models(4));
        assert!(
            kept.take("other", &progress(1, 5)).is_none(),
            "another build"
        );
        let found = kept.take("s", &progress(1, 5)).expect("kept");
        assert_eq!(found.board.size(), 4);
        kept.put("s", &progress(1, 5), models(4));
        kept.put("s", &progress(2, 7), models(4));
        kept.put("s", &progress(3, 9), models(4));
        assert!(
            kept.take("s", &progress(1, 5)).is_none(),
            "least recently used"
        );
        assert!(kept.take("s", &progress(2, 7)).is_some());
        kept.put("s", &progress(4, 9), models(11));
        assert!(kept.entries.is_empty(), "over the limit alone");
        // Empty models count too: ten fit, the eleventh gives the first up.
        for n in 0..11 {
            kept.put("s", &progress(10 + n, 3), models(0));
        }
        assert_eq!(kept.entries.len(), 10);
        assert!(
            kept.take("s", &progress(10, 3)).is_none(),
            "the first given up"
        );
        assert!(kept.take("s", &progress(20, 3)).is_some());
    }

    /// Deltas every `every` events, wholes every `DELTAS_PER_WHOLE` of those; a project
    /// whose last whole held many tickets and tasks spaces both by its size.
    #[test]
    fn snapshots_are_spaced_by_every_or_by_the_last_wholes_size() {
        let event = with_metadata(json!({}));
        let kinds = |progress: &mut Progress, events: usize| -> Vec<(i64, Kind)> {
            let mut taken = Vec::new();
            for _ in 0..events {
                if let Some(kind) = progress.count(&event, 10) {
                    taken.push((progress.events, kind));
                    progress.since_last = 0;
                    if kind == Kind::Whole {
                        progress.since_whole = 0;
                    }
                }
            }
            taken
        };
        let mut small = Progress::start((Uuid::nil(), Uuid::nil()));
        let expected: Vec<(i64, Kind)> = (1..=12)
            .map(|n| (n * 10, if n % 5 == 0 { Kind::Whole } else { Kind::Delta }))
            .collect();
        assert_eq!(kinds(&mut small, 120), expected);
        // 1,000 tickets and tasks in the last whole: deltas 50 events apart, wholes 1,000.
        let mut large = Progress {
            entities: 1_000,
            ..Progress::start((Uuid::nil(), Uuid::nil()))
        };
        let expected: Vec<(i64, Kind)> = (1..=20)
            .map(|n| (n * 50, if n == 20 { Kind::Whole } else { Kind::Delta }))
            .collect();
        assert_eq!(kinds(&mut large, 1_000), expected);
    }

    /// A snapshot counts exactly the events a project's replay reads: the log's readers
    /// compare the ids as text, so only their canonical spelling belongs to the project.
    #[test]
    fn an_event_belongs_to_a_project_only_by_both_ids_in_their_canonical_text() {
        let (organization, project) = (Uuid::from_u128(0xA1), Uuid::from_u128(0xB2));
        let event = |organization: serde_json::Value, project: serde_json::Value| {
            with_metadata(json!({"organization_id": organization, "project_id": project}))
        };
        assert_eq!(
            project_of(&event(json!(organization), json!(project))),
            Some((organization, project))
        );
        let upper = project.to_string().to_uppercase();
        let simple = project.simple().to_string();
        for (organization, project) in [
            (json!(organization), json!(upper)),
            (json!(organization), json!(simple)),
            (json!(organization), json!(null)),
            (json!(null), json!(project)),
            (json!(organization), json!("not a uuid")),
        ] {
            assert_eq!(project_of(&event(organization, project)), None);
        }
        assert_eq!(
            project_of(&with_metadata(json!({"organization_id": organization}))),
            None
        );
    }
}
