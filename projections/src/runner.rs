//! The projector runner: one task per build, exactly once, one leader per build across
//! replicas.
//!
//! * **Exactly once.** A batch is read from the global stream after the build's checkpoint,
//!   applied, and the checkpoint advanced in one transaction that starts by locking the
//!   build's row. A crash anywhere rolls the whole batch back.
//! * **One leader.** Each build is projected by whoever holds its session advisory lock on
//!   a dedicated connection; when that process dies its connection closes, the lock is
//!   released, and another replica takes over within `takeover_interval`.
//! * **Wake-ups.** Commits in this process wake the runner at once (the command bus bumps a
//!   counter). Commits in other processes arrive through one coalesced `NOTIFY` per burst
//!   (never one per append: see docs/architecture.md), with a poll as the safety net.
//! * **Poison events.** A failing batch is rolled back and its events re-applied one at a
//!   time: those before the failing event are committed and the build stops at that event,
//!   recording position and error; the other projectors carry on.
//! * **One read for all.** The builds of a process woken by the same commit read the same
//!   page of the stream: [`SharedReads`] reads it once and hands every one the same
//!   decoded events. A live build with no concern in a page ([`Projector::concerns`])
//!   passes it by without a transaction and keeps the position in memory, written with
//!   its next batch or when it has nothing more to read (a crash only re-reads events it
//!   has no concern with).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use omoi_store::log::{read_global, stream_global, Columns, EventPage, Visibility};
use omoi_store::wakeup::listen;
use omoi_store::{Cursor, StoredEvent};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::catalog::{self, Build, BuildState};
use crate::{Fold, ProjectionError, Projector};

/// Events per batch while catching up (a rebuild, or a leader behind the stream). Events
/// of one entity spread over the log, so the larger the batch, the more of them collapse
/// into one row write: `omoi-bench bench-projections` measured the board's rebuild at 36,000
/// events/s in batches of 2,000 and 67,900 in batches of 10,000 (300,000 events).
pub const CATCH_UP_BATCH: i64 = 10_000;

/// Rows a [`Fold`] may hold by default ([`Fold::bound`]) before the runner writes it: about
/// 250 MB of the board's model (its 221,552 rows of a 1,000,000-event log raised
/// `omoi-bench bench-projections`' maximum resident set by 55 MB).
pub const FOLD_ROWS: usize = 1_000_000;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub batch_size: i64,
    /// How often an idle runner looks for events it was not woken for.
    pub poll_interval: Duration,
    /// How often a follower tries to take a build over.
    pub takeover_interval: Duration,
    /// How long a read model that caught up under load waits before its next batch, so
    /// that the commits arriving meanwhile are applied by one transaction rather than one
    /// each. Each batch holds every reader's horizon for its last statements and costs
    /// CPU the writers and process managers need (`omoi-bench bench-workflow`, a build
    /// reading the pause from the environment: 17.7 and 18.1 specs/s without it, 23.2 and
    /// 23.2 with 30 ms; the noisy latency figures are in the README). The first commit
    /// after a quiet spell is applied at once.
    pub read_model_pause: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            takeover_interval: Duration::from_secs(1),
            read_model_pause: Duration::from_millis(30),
        }
    }
}

/// What `/metrics`, `GET /api/v1/projections` and tests read about each projector.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProjectorStats {
    pub projector: String,
    pub build: i64,
    pub state: String,
    pub cursor: String,
    pub global_position: i64,
    pub events_applied: i64,
    /// Events appended after the checkpoint (from the position sequence: approximate).
    pub lag_events: i64,
    /// Age of the newest applied event when the batch committed; 0 when caught up.
    pub lag_ms: i64,
    pub last_batch_ms: f64,
    /// Batches this process committed for the build: a transaction each (pages the build
    /// had no concern with are passed by without one).
    pub batches: u64,
    pub leader: bool,
    pub error: Option<String>,
}

/// A metric's name, help text and how to read it off a projector's statistics.
type Metric = (&'static str, &'static str, fn(&ProjectorStats) -> f64);

/// Shared, live statistics of the builds this process projects.
#[derive(Debug, Default)]
pub struct RunnerStats {
    by_build: Mutex<BTreeMap<i64, ProjectorStats>>,
    /// The position sequence's last value and when it was read, shared by the builds'
    /// `lag_events` (see [`NEWEST_READ_EVERY`]).
    newest: Mutex<Option<(Instant, i64)>>,
}

/// How long the position sequence's value read after one build's batch serves the others:
/// read after every batch of every build, it was a round trip each batch waited for.
const NEWEST_READ_EVERY: Duration = Duration::from_millis(250);

impl RunnerStats {
    pub fn snapshot(&self) -> Vec<ProjectorStats> {
        self.by_build
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The position sequence's last value, read anew at most every
    /// [`NEWEST_READ_EVERY`]; `None` when it cannot be read.
    async fn newest_position(&self, pool: &PgPool) -> Option<i64> {
        let kept = *self.newest.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, newest)) = kept.filter(|(at, _)| at.elapsed() < NEWEST_READ_EVERY) {
            return Some(newest);
        }
        let newest: i64 = sqlx::query_scalar("select last_value from events_global_position_seq")
            .fetch_one(pool)
            .await
            .ok()?;
        *self.newest.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), newest));
        Some(newest)
    }

    fn update(&self, build: i64, change: impl FnOnce(&mut ProjectorStats)) {
        if let Ok(mut map) = self.by_build.lock() {
            change(map.entry(build).or_default());
        }
    }

    /// Prometheus text for the builds this process leads.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let gauges: [Metric; 5] = [
            (
                "omoi_projector_position",
                "Global position of the checkpoint",
                |s| s.global_position as f64,
            ),
            (
                "omoi_projector_lag_events",
                "Events appended after the checkpoint",
                |s| s.lag_events as f64,
            ),
            (
                "omoi_projector_lag_seconds",
                "Age of the newest applied event at commit",
                |s| s.lag_ms as f64 / 1000.0,
            ),
            (
                "omoi_projector_batch_seconds",
                "Duration of the last batch",
                |s| s.last_batch_ms / 1000.0,
            ),
            (
                "omoi_projector_failed",
                "1 when a poison event stopped the projector",
                |s| f64::from(u8::from(s.error.is_some())),
            ),
        ];
        let counters: [Metric; 1] = [(
            "omoi_projector_batches_total",
            "Batches committed by this process",
            |s| s.batches as f64,
        )];
        let stats: Vec<ProjectorStats> = self.snapshot().into_iter().filter(|s| s.leader).collect();
        let metrics = gauges
            .iter()
            .map(|gauge| (gauge, "gauge"))
            .chain(counters.iter().map(|counter| (counter, "counter")));
        for ((name, help, value), kind) in metrics {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for s in &stats {
                out.push_str(&format!(
                    "{name}{{projector=\"{}\",build=\"{}\"}} {}\n",
                    s.projector,
                    s.build,
                    value(s)
                ));
            }
        }
        out
    }
}

/// Runs every projector's builds until shutdown.
pub struct ProjectionRunner {
    pool: PgPool,
    options: PgConnectOptions,
    projectors: HashMap<&'static str, Arc<dyn Projector>>,
    config: RunnerConfig,
    wake: watch::Sender<u64>,
    stats: Arc<RunnerStats>,
    reads: Arc<SharedReads>,
}

impl ProjectionRunner {
    pub fn new(
        pool: PgPool,
        options: PgConnectOptions,
        projectors: Vec<Arc<dyn Projector>>,
        config: RunnerConfig,
    ) -> Self {
        let (wake, _) = watch::channel(0);
        Self {
            pool,
            projectors: projectors.into_iter().map(|p| (p.name(), p)).collect(),
            config,
            wake,
            stats: Arc::default(),
            reads: Arc::new(SharedReads::new(omoi_store::db::generic_plans(&options, 4))),
            options,
        }
    }

    /// Bump it to wake the runner (the command bus does, after every commit).
    pub fn waker(&self) -> watch::Sender<u64> {
        self.wake.clone()
    }

    pub fn stats(&self) -> Arc<RunnerStats> {
        self.stats.clone()
    }

    /// Makes sure every projector has its build for this code version, so that its
    /// views exist: a server calls it before it answers requests (a read of a view that
    /// does not exist yet would fail), and [`ProjectionRunner::run`] calls it again.
    pub async fn prepare(&self) -> Result<(), sqlx::Error> {
        for projector in self.projectors.values() {
            catalog::ensure_current_build(&self.pool, projector.as_ref()).await?;
        }
        Ok(())
    }

    /// Projects until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), sqlx::Error> {
        self.prepare().await?;
        let listener = tokio::spawn(listen(self.options.clone(), self.wake.clone()));
        let mut tasks: HashMap<i64, JoinHandle<()>> = HashMap::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            if let Err(error) = self.supervise(&mut tasks, &stop_rx).await {
                tracing::warn!(%error, "projection supervisor: database error; retrying");
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.takeover_interval) => {}
            }
        }
        let _ = stop_tx.send(true);
        listener.abort();
        for (_, task) in tasks {
            let _ = task.await;
        }
        Ok(())
    }

    /// Starts a task for every build this code can project that has none yet.
    async fn supervise(
        &self,
        tasks: &mut HashMap<i64, JoinHandle<()>>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), sqlx::Error> {
        tasks.retain(|_, task| !task.is_finished());
        for build in catalog::active_builds(&self.pool).await? {
            let Some(projector) = self.projectors.get(build.projector.as_str()) else {
                continue;
            };
            // A build of an older version is frozen: this code would misread its tables.
            if build.code_version != projector.version() || tasks.contains_key(&build.build) {
                continue;
            }
            let worker = BuildWorker {
                pool: self.pool.clone(),
                options: self.options.clone(),
                projector: projector.clone(),
                build: build.build,
                config: self.config.clone(),
                wake: self.wake.subscribe(),
                stats: self.stats.clone(),
                stop: stop.clone(),
                reads: self.reads.clone(),
            };
            tasks.insert(build.build, tokio::spawn(worker.run()));
        }
        Ok(())
    }
}

/// What one step of a build did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Applied this many events; there may be more.
    Applied(usize),
    /// Nothing new is visible.
    Idle,
    /// A poison event stopped the build.
    Stopped,
    /// The build was retired (a newer one went live).
    Retired,
    /// A transient failure (a process manager's effect met a concurrent writer, the
    /// database was away) rolled the batch back: try again after [`RETRY_PAUSE`].
    Retry,
}

struct BuildWorker {
    pool: PgPool,
    options: PgConnectOptions,
    projector: Arc<dyn Projector>,
    build: i64,
    config: RunnerConfig,
    wake: watch::Receiver<u64>,
    stats: Arc<RunnerStats>,
    stop: watch::Receiver<bool>,
    reads: Arc<SharedReads>,
}

impl BuildWorker {
    async fn run(mut self) {
        while !*self.stop.borrow() {
            let retired = match self.lead().await {
                Ok(retired) => retired,
                Err(error) => {
                    tracing::warn!(projector = self.projector.name(), %error, "projection: database error");
                    false
                }
            };
            // A retired build's figures are no longer anyone's to export as its leader's.
            self.stats.update(self.build, |s| s.leader = false);
            if retired {
                return;
            }
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = stop.changed() => {}
                () = tokio::time::sleep(self.config.takeover_interval) => {}
            }
        }
    }

    /// Takes the build's lock if free and projects while it holds it. `Ok(true)` when the
    /// build is retired and the worker should end.
    async fn lead(&mut self) -> Result<bool, sqlx::Error> {
        // Named after its projector, so that `pg_stat_activity` tells whose batch is open.
        let options = self.options.clone().application_name(self.projector.name());
        let mut conn = PgConnection::connect_with(&options).await?;
        if !try_lead(&mut conn, self.build).await? {
            return Ok(false);
        }
        tracing::info!(
            projector = self.projector.name(),
            build = self.build,
            "leading projection"
        );
        self.stats.update(self.build, |s| s.leader = true);
        let mut reading = Reading::shared(self.reads.clone());
        let mut retries: u32 = 0;
        loop {
            if *self.stop.borrow() {
                return Ok(false);
            }
            let step = step(
                &self.pool,
                &mut conn,
                self.projector.as_ref(),
                self.build,
                self.config.batch_size,
                &self.stats,
                &mut reading,
            )
            .await?;
            if !matches!(step, Step::Retry) {
                retries = 0;
            }
            match step {
                Step::Applied(applied) => {
                    // A read model that caught up lets the commits of the next moments
                    // gather into its next batch.
                    let caught_up = (applied as i64) < self.config.batch_size;
                    if caught_up && !self.projector.appends_events() {
                        self.pause(self.config.read_model_pause).await;
                    }
                    // Only a page read after the latest commit is as new as one of our
                    // own: a build behind the stream that took the pages others read
                    // while it was busy walked their small pages, a transaction each,
                    // and fell further behind.
                    reading.generation = Some(*self.wake.borrow());
                }
                Step::Retired => {
                    // Whatever the projector keeps of the build's tables in memory goes
                    // with them (a process manager's rows and aggregates).
                    let schema = catalog::schema_of(self.projector.name(), self.build);
                    self.projector.settled(&schema, false);
                    return Ok(true);
                }
                Step::Idle | Step::Stopped => {
                    // A stopped build keeps no stream (nor its connection) open.
                    reading.read_ahead.stop();
                    // Woken by a commit: a page another build read since it is as new as
                    // one of our own. Woken by the poll: read anew.
                    let generation = self.wait().await;
                    reading.generation = generation;
                }
                Step::Retry => {
                    retries += 1;
                    let pause = retry_pause(retries);
                    if retries >= RETRIES_BEFORE_WARNING {
                        tracing::warn!(
                            projector = self.projector.name(),
                            retries,
                            pause_ms = pause.as_millis() as u64,
                            "a batch keeps failing transiently; still retrying"
                        );
                    }
                    self.pause(pause).await;
                }
            }
        }
    }

    /// Sleeps `pause`, or less if the runner stops.
    async fn pause(&mut self, pause: Duration) {
        if pause.is_zero() {
            return;
        }
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }

    /// Waits for a wake-up; returns the commit count it saw when a commit woke it.
    async fn wait(&mut self) -> Option<u64> {
        let mut stop = self.stop.clone();
        tokio::select! {
            changed = self.wake.changed() => changed.ok().map(|()| *self.wake.borrow_and_update()),
            _ = stop.changed() => None,
            () = tokio::time::sleep(self.config.poll_interval) => None,
        }
    }
}

/// The pages after a full one, streamed by one query while the current page is applied:
/// reading and applying each keep a backend busy, so overlapping them uses both cores
/// during a catch-up (a third of the CPU sat idle without), and one streaming query
/// hands the log over about twice as fast as a query per page, each waiting for the other
/// side (`omoi-bench bench-projections`, medians of three runs: 300,054 against 154,838
/// events/s, `COPY` of the log 433,181). The query ends at the end of what its snapshot
/// saw; the build then reads on page by page.
#[derive(Default)]
pub struct ReadAhead {
    streaming: Option<Streaming>,
}

struct Streaming {
    /// Where the next page the stream hands over starts.
    from: Cursor,
    pages: mpsc::Receiver<EventPage>,
    query: JoinHandle<Result<(), sqlx::Error>>,
}

impl ReadAhead {
    /// The next streamed page if it starts at `from`; `None` when nothing streams from
    /// there (the checkpoint moved another way: the stream is dropped) or the stream ended.
    async fn take(&mut self, from: Cursor) -> Option<Result<EventPage, sqlx::Error>> {
        let streaming = self.streaming.as_mut()?;
        if streaming.from != from {
            self.stop();
            return None;
        }
        if let Some(page) = streaming.pages.recv().await {
            streaming.from = page.next;
            return Some(Ok(page));
        }
        let ended = self.streaming.take()?.query.await;
        match ended {
            Ok(Err(error)) => Some(Err(error)),
            Ok(Ok(())) | Err(_) => None,
        }
    }

    /// Streams the pages after `from`, of `columns`, unless a stream already goes on from
    /// there.
    fn start(&mut self, pool: &PgPool, from: Cursor, page_size: i64, columns: Columns) {
        if self.streaming.as_ref().is_some_and(|s| s.from == from) {
            return;
        }
        self.stop();
        // One page waits while one is applied: the query then waits for the build.
        let (sender, pages) = mpsc::channel(1);
        let query = tokio::spawn(stream_global(
            pool.clone(),
            from,
            usize::try_from(page_size).unwrap_or(1),
            columns,
            sender,
        ));
        self.streaming = Some(Streaming { from, pages, query });
    }

    /// Drops the stream (its query is cancelled with it), so that a build that stopped
    /// keeps no connection or snapshot open.
    fn stop(&mut self) {
        if let Some(streaming) = self.streaming.take() {
            streaming.query.abort();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pages of the stream read once for every build of a process that asks for the same one
/// at about the same time (all are woken by the same commit), and the stretch of the
/// stream those reads returned, kept for builds that ask for it later.
///
/// A page is shared with a build that asks for it with a commit count (`generation`) no
/// newer than the one the read started under: the read began after the commit that woke
/// that build, so it holds everything that build could have read itself. A build woken by
/// its poll (no generation) reads on from the database past what is kept — events can
/// become visible without a commit of this process (an older transaction elsewhere
/// ended). Sharing is only ever a saving: a page read earlier than it could have been is
/// shorter, never wrong, and the build reads on from its end.
///
/// **Kept pages.** What a page returned is final: every event up to its last one belongs
/// to a transaction that had ended (the page stops below the oldest running one), so no
/// event can appear among them later. A build behind the others — woken by a later
/// commit, at a place inside pages others read — takes those events from the kept pages
/// and reads from the database only what lies beyond them (or, when the last of them may
/// be older than its wake-up, what became visible since). One `omoi-bench bench-workflow`
/// run's page reads returned 128,129 rows before, 34,045 with kept pages
/// (`pg_stat_statements`; README, Orchestrator).
pub struct SharedReads {
    pages: Mutex<HashMap<(Cursor, i64), (u64, SharedPage)>>,
    kept: Mutex<KeptPages>,
    /// Where the pages are read: sessions with generic plans (`db::generic_plans`).
    pool: PgPool,
}

type SharedPage = Shared<BoxFuture<'static, Option<Arc<EventPage>>>>;

/// Pages kept for sharing; past it, those of older generations go.
const SHARED_PAGES: usize = 64;

/// What the kept pages may weigh together ([`weight`]: about 20,000 events of a few
/// hundred bytes); past it, the pages furthest back go.
const KEPT_BYTES: usize = 16 << 20;

/// About what a page holds in memory: its payloads' text and a share for each event's
/// other fields.
fn weight(page: &EventPage) -> usize {
    page.events.iter().map(StoredEvent::weight).sum()
}

/// Pages read, by where each starts.
struct KeptPages {
    pages: BTreeMap<Cursor, Kept>,
    /// Their weight together, and what it may reach.
    bytes: usize,
    capacity: usize,
}

impl Default for KeptPages {
    fn default() -> Self {
        Self::with_capacity(KEPT_BYTES)
    }
}

/// A page read, with the commit count its read started under and the limit it was read
/// with (a page short of its limit ended at its horizon).
struct Kept {
    generation: u64,
    limit: usize,
    page: Arc<EventPage>,
}

impl Kept {
    /// Whether it holds all a build woken by `generation` could read after its start.
    fn current_for(&self, generation: Option<u64>) -> bool {
        self.page.events.len() < self.limit
            && generation.is_some_and(|wanted| self.generation >= wanted)
    }
}

/// Kept pages looked at, back from a place, for one that goes beyond it.
const KEPT_LOOKUPS: usize = 4;

impl KeptPages {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            pages: BTreeMap::new(),
            bytes: 0,
            capacity,
        }
    }

    fn keep(&mut self, from: Cursor, kept: Kept) {
        if kept.page.events.is_empty() {
            return;
        }
        self.bytes += weight(&kept.page);
        if let Some(replaced) = self.pages.insert(from, kept) {
            self.bytes -= weight(&replaced.page);
        }
        while self.bytes > self.capacity {
            let Some((_, oldest)) = self.pages.pop_first() else {
                break;
            };
            self.bytes -= weight(&oldest.page);
        }
    }

    /// A kept page holding events just after `at`.
    fn after(&self, at: Cursor) -> Option<&Kept> {
        self.pages
            .range(..=at)
            .rev()
            .take(KEPT_LOOKUPS)
            .map(|(_, kept)| kept)
            .find(|kept| kept.page.next > at)
    }

    /// The page kept from `from` itself, when it is what a build asking for `limit`
    /// events, woken by `generation`, would read: no more events than it asks for, and
    /// all it asks for or all it could read now.
    fn whole(&self, from: Cursor, limit: usize, generation: Option<u64>) -> Option<Arc<EventPage>> {
        let kept = self.pages.get(&from)?;
        let len = kept.page.events.len();
        let enough = len == limit || (len < limit && kept.current_for(generation));
        enough.then(|| kept.page.clone())
    }

    /// Up to `limit` events after `from` from the kept pages, in the stream's order, and
    /// whether they are all a build woken by `generation` could read now: they reach
    /// `limit`, or end where a page read under that generation or a later one ended short.
    fn take(
        &self,
        from: Cursor,
        limit: usize,
        generation: Option<u64>,
    ) -> (Vec<StoredEvent>, bool) {
        let mut events = Vec::new();
        let mut at = from;
        let mut current = false;
        while events.len() < limit {
            let Some(kept) = self.after(at) else {
                break;
            };
            let page = &kept.page;
            let start = page.events.partition_point(|e| e.cursor() <= at);
            let wanted = &page.events[start..];
            let taken = &wanted[..wanted.len().min(limit - events.len())];
            events.extend(taken.iter().cloned());
            at = taken.last().map_or(at, StoredEvent::cursor);
            current = taken.len() == wanted.len() && kept.current_for(generation);
        }
        let complete = events.len() >= limit || current;
        (events, complete)
    }
}

impl SharedReads {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pages: Mutex::default(),
            kept: Mutex::default(),
            pool,
        }
    }

    async fn page(
        &self,
        from: Cursor,
        limit: i64,
        generation: Option<u64>,
    ) -> Result<Arc<EventPage>, sqlx::Error> {
        let wanted = usize::try_from(limit).unwrap_or(0);
        let (mut events, complete) = {
            let pages = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(page) = pages.whole(from, wanted, generation) {
                return Ok(page);
            }
            pages.take(from, wanted, generation)
        };
        if !complete {
            let at = events.last().map_or(from, StoredEvent::cursor);
            let rest = self
                .read(at, limit - events.len() as i64, generation)
                .await?;
            if events.is_empty() {
                return Ok(rest);
            }
            events.extend(rest.events.iter().cloned());
        }
        let next = events.last().map_or(from, StoredEvent::cursor);
        Ok(Arc::new(EventPage { events, next }))
    }

    /// Reads the page of `limit` events after `from` — or takes the one a build woken by
    /// the same commit or a later one is reading — and keeps it.
    async fn read(
        &self,
        from: Cursor,
        limit: i64,
        generation: Option<u64>,
    ) -> Result<Arc<EventPage>, sqlx::Error> {
        let read = {
            let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
            let shared = match (generation, pages.get(&(from, limit))) {
                (Some(wanted), Some((read_at, page))) if *read_at >= wanted => Some(page.clone()),
                _ => None,
            };
            match shared {
                Some(page) => page,
                None => {
                    let pool = self.pool.clone();
                    let page: SharedPage = async move {
                        read_global(&pool, from, limit, &Visibility::Everything)
                            .await
                            .ok()
                            .map(Arc::new)
                    }
                    .boxed()
                    .shared();
                    let newest = generation
                        .unwrap_or(0)
                        .max(pages.values().map(|(at, _)| *at).max().unwrap_or(0));
                    if pages.len() >= SHARED_PAGES {
                        pages.retain(|_, (at, _)| *at >= newest);
                    }
                    pages.insert((from, limit), (generation.unwrap_or(0), page.clone()));
                    page
                }
            }
        };
        let page = match read.await {
            Some(page) => page,
            // The shared read failed: this build's own read says why.
            None => Arc::new(read_global(&self.pool, from, limit, &Visibility::Everything).await?),
        };
        // A read started by a poll counts as one of the commit count 0: current only for
        // a build that has seen no commit of this process, for which any read is.
        let kept = Kept {
            generation: generation.unwrap_or(0),
            limit: usize::try_from(limit).unwrap_or(0),
            page: page.clone(),
        };
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keep(from, kept);
        Ok(page)
    }
}

/// How a build reads the stream: pages read ahead while catching up, pages shared with
/// the process's other builds, and the position past events it has no concern with.
#[derive(Default)]
pub struct Reading {
    read_ahead: ReadAhead,
    shared: Option<Arc<SharedReads>>,
    /// The commit count that last woke the build (`None`: woken by its poll).
    generation: Option<u64>,
    unsaved: Option<Unsaved>,
    /// The build's row as this leader last read or wrote it, and when it was read.
    known: Option<(Build, Instant)>,
    /// A fold from position zero under way: one page folded per step, so that the leader
    /// sees a stop between pages.
    folding: Option<Folding>,
    /// A fold from position zero met an event it could not fold or a write that failed
    /// for good: the batches take over from where the build stands.
    fold_refused: bool,
    /// Whether the projector was told that this leadership began ([`Projector::settled`]).
    began: bool,
}

impl Reading {
    fn shared(reads: Arc<SharedReads>) -> Self {
        Self {
            shared: Some(reads),
            ..Self::default()
        }
    }

    async fn page(
        &mut self,
        pool: &PgPool,
        from: Cursor,
        limit: i64,
    ) -> Result<Arc<EventPage>, sqlx::Error> {
        if let Some(read) = self.read_ahead.take(from).await {
            return Ok(Arc::new(read?));
        }
        match &self.shared {
            Some(shared) => shared.page(from, limit, self.generation).await,
            None => Ok(Arc::new(
                read_global(pool, from, limit, &Visibility::Everything).await?,
            )),
        }
    }
}

/// Events a live build passed by (none of its concern) beyond its written checkpoint.
#[derive(Debug, Clone, Copy)]
struct Unsaved {
    /// The checkpoint in the table when they were passed.
    saved: Cursor,
    /// The position after them.
    at: Cursor,
    events: usize,
    since: Instant,
}

/// A position passed by is written at the latest after this many events or this long
/// (or at the first poll that finds nothing new), so that `omoi projections status` stays
/// near the truth under steady load.
const UNSAVED_EVENTS: usize = 10_000;
const UNSAVED_FOR: Duration = Duration::from_secs(1);

/// How long a leader trusts the build's row as it left it before reading it again (an
/// operator's retry or retirement is seen within it).
const KNOWN_FOR: Duration = Duration::from_secs(1);

/// The pause before a batch that failed transiently is applied again the first time.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause between two tries of a batch that keeps failing transiently.
pub const MAX_RETRY_PAUSE: Duration = Duration::from_secs(10);

/// Consecutive transient failures of one build before each further one is logged as a
/// warning: from the fifth, whose pause is 0.8 s, so at most about one a second.
const RETRIES_BEFORE_WARNING: u32 = 5;

/// The pause after the `retries`th consecutive transient failure of a batch: doubling
/// from [`RETRY_PAUSE`] up to [`MAX_RETRY_PAUSE`]. A concurrent writer's conflict is
/// over by the first try again; what lasts — the database away, Stripe out of reach for
/// `subscription_retirement` — is tried ever less often, not twenty times a second.
pub fn retry_pause(retries: u32) -> Duration {
    let doublings = retries.saturating_sub(1).min(16);
    RETRY_PAUSE
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_PAUSE)
}

/// One batch of one build, in one transaction on `conn`.
pub async fn step(
    pool: &PgPool,
    conn: &mut PgConnection,
    projector: &dyn Projector,
    build_id: i64,
    batch_size: i64,
    stats: &RunnerStats,
    reading: &mut Reading,
) -> Result<Step, sqlx::Error> {
    let started = Instant::now();
    // Read before opening a transaction: locking the build's row takes a transaction id,
    // and while it is open every reader of the gapless stream (this one included) is held
    // below it. The lock is taken only to apply, and the checkpoint re-checked under it.
    //
    // The leader's own row changes only by its own hand (others — a retry, a go-live
    // elsewhere, a takeover — are caught under the lock, which compares), so the row as it
    // left it is used for a while instead of read at every step.
    let known = reading
        .known
        .take()
        .filter(|(_, read_at)| read_at.elapsed() < KNOWN_FOR);
    let (seen, read_at) = match known {
        Some(known) => known,
        None => {
            let Some(seen) = catalog::build_by_id(pool, build_id).await? else {
                return Ok(Step::Retired);
            };
            record_state(stats, &seen);
            (seen, started)
        }
    };
    if seen.state == BuildState::Retired {
        return Ok(Step::Retired);
    }
    if seen.failure.is_some() {
        return Ok(Step::Stopped);
    }
    let schema = seen.schema();
    // Before anything is asked of the projector: another process may have led the build
    // since this one last did, so what it kept of its tables is stale.
    if !reading.began {
        projector.settled(&schema, false);
        reading.began = true;
    }
    // Events passed by since the checkpoint was written count only while nobody else
    // has moved the checkpoint (a retry, a takeover).
    let unsaved = reading.unsaved.take().filter(|u| u.saved == seen.cursor);
    let building = seen.state == BuildState::Building;
    // A fold goes on only from the checkpoint it wrote last (zero before its first
    // write); if another hand moved the checkpoint, the batches take over from there.
    let folding = reading
        .folding
        .take()
        .filter(|folding| building && folding.written_to(seen.cursor));
    let at_zero = building && seen.cursor == Cursor::default();
    if unsaved.is_none() && !reading.fold_refused {
        let folding = match folding {
            Some(folding) => Some(folding),
            None if at_zero => projector.fold_from_start().map(Folding::new),
            None => None,
        };
        if let Some(folding) = folding {
            let build = (&seen, read_at);
            match fold_one_page(
                pool, conn, projector, build, folding, batch_size, stats, reading,
            )
            .await?
            {
                Some(step) => return Ok(step),
                None => reading.fold_refused = true,
            }
        }
    }
    let from = unsaved.map_or(seen.cursor, |u| u.at);
    let page = reading.page(pool, from, batch_size).await?;
    // A full page means more is waiting (a rebuild, or a leader behind): read the next,
    // larger page while this one is applied.
    if page.events.len() as i64 >= batch_size {
        reading.read_ahead.start(
            pool,
            page.next,
            batch_size.max(CATCH_UP_BATCH),
            projector.columns(),
        );
    }
    let live = seen.state == BuildState::Live;
    if page.events.is_empty() && live && unsaved.is_none() {
        stats.update(seen.build, |s| s.lag_ms = 0);
        reading.known = Some((seen, read_at));
        return Ok(Step::Idle);
    }
    if live && !page.events.iter().any(|e| projector.concerns(&schema, e)) {
        let passed = Unsaved {
            saved: seen.cursor,
            at: page.next,
            events: unsaved.map_or(0, |u| u.events) + page.events.len(),
            since: unsaved.map_or(started, |u| u.since),
        };
        let idle = page.events.is_empty();
        let outcome = match idle {
            true => Step::Idle,
            false => Step::Applied(page.events.len()),
        };
        // Written once kept long enough, or when a poll (not a commit) found nothing new:
        // the stream has been quiet for a while.
        let due = passed.events >= UNSAVED_EVENTS
            || passed.since.elapsed() >= UNSAVED_FOR
            || (idle && reading.generation.is_none());
        if !due {
            reading.unsaved = Some(passed);
            record_passed(stats, &seen, &page.events);
            reading.known = Some((seen, read_at));
            return Ok(outcome);
        }
        let saved = save_position(conn, &seen, passed).await?;
        if !saved {
            return Ok(Step::Applied(0));
        }
        record_passed(stats, &seen, &page.events);
        reading.known = Some((
            Build {
                cursor: passed.at,
                events_applied: seen.events_applied + passed.events as i64,
                ..seen
            },
            Instant::now(),
        ));
        return Ok(outcome);
    }
    if page.events.is_empty() {
        // A build that is not live read to the end of the stream: it goes live.
        return go_live(pool, conn, projector, &seen).await;
    }
    // The build's row is claimed at the end, compared with the row as it was read while it
    // is updated: the batch takes a transaction id only at its first write, so it holds
    // every reader's horizon for as short as it can. Under an older claim (a stale leader,
    // an operator's retry) the update waits for it, then finds the row changed.
    let mut tx = match projector.appends_events() {
        true => conn.begin().await?,
        false => conn.begin_with(ASYNCHRONOUS_BATCH).await?,
    };
    // Whichever way this step ends from here, the projector hears whether the batch
    // committed.
    let mut settling = Settling {
        projector,
        schema: &schema,
        committed: false,
    };
    if let Err(error) = projector.apply(&mut tx, &schema, &page.events).await {
        tx.rollback().await?;
        if error.is_transient() {
            // Applied again at the next step, from the same checkpoint.
            tracing::debug!(projector = projector.name(), %error, "batch rolled back; applying it again");
            return Ok(Step::Retry);
        }
        tracing::debug!(projector = projector.name(), %error, "batch failed; applying its events one by one");
        let batch = Batch {
            from: seen.cursor,
            events: &page.events,
            passed: unsaved.map_or(0, |u| u.events),
            started,
        };
        return isolate_poison(pool, conn, projector, build_id, batch, stats).await;
    }
    let applied = page.events.len();
    let passed = unsaved.map_or(0, |u| u.events);
    let Claim::Made { appended } = claim(
        &mut tx,
        &seen,
        page.next,
        applied + passed,
        projector.appends_events(),
    )
    .await?
    else {
        // Someone else moved it meanwhile (another leader, a retry): look again.
        tx.rollback().await?;
        return Ok(Step::Applied(0));
    };
    if projector.appends_events() && !appended {
        // A process manager's batch that caused nothing holds nothing the log does not,
        // as a read model's: its commit need not wait for the WAL flush either.
        sqlx::query(ASYNCHRONOUS_COMMIT).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    settling.committed = true;
    drop(settling);
    reading.known = Some((
        Build {
            cursor: page.next,
            events_applied: seen.events_applied + (applied + passed) as i64,
            ..seen.clone()
        },
        Instant::now(),
    ));
    if appended {
        announce_effects(pool);
    }
    if let Some(last) = page.events.last() {
        record_batch(pool, stats, &seen, (last, applied), started).await;
    }
    Ok(Step::Applied(applied))
}

/// Tells a projector how the batch it was given ended ([`Projector::settled`]) when
/// dropped: not committed unless marked so after the commit.
struct Settling<'a> {
    projector: &'a dyn Projector,
    schema: &'a str,
    committed: bool,
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        self.projector.settled(self.schema, self.committed);
    }
}

/// A fold from position zero and how far it got.
struct Folding {
    fold: Box<dyn Fold>,
    /// The checkpoint its last write moved the build to (zero before its first).
    written: Cursor,
    /// The position after the events folded.
    cursor: Cursor,
    /// Events folded since its last write, and the last of them.
    folded: usize,
    last: Option<StoredEvent>,
    /// A write taken out of the fold ([`Fold::take_write`]), running on a connection of
    /// its own while the fold goes on; it ends before the next write begins.
    in_flight: Option<InFlight>,
}

impl Folding {
    fn new(fold: Box<dyn Fold>) -> Self {
        Self {
            fold,
            written: Cursor::default(),
            cursor: Cursor::default(),
            folded: 0,
            last: None,
            in_flight: None,
        }
    }

    /// Events folded and not yet written with the build at `checkpoint`: those of a
    /// write in flight included until it has moved the build past them.
    fn unwritten(&self, checkpoint: Cursor) -> usize {
        let in_flight = self.in_flight.as_ref();
        let pending = in_flight.filter(|w| w.to.cursor != checkpoint);
        self.folded + pending.map_or(0, |w| w.folded)
    }

    /// Whether `cursor` is where its writes left the build: the last one's checkpoint, or
    /// the one in flight's, committed meanwhile.
    fn written_to(&self, cursor: Cursor) -> bool {
        self.written == cursor
            || self
                .in_flight
                .as_ref()
                .is_some_and(|w| w.to.cursor == cursor)
    }
}

/// A fold's write running beside the fold.
struct InFlight {
    task: tokio::task::JoinHandle<FoldWritten>,
    /// The build as the write claims it from, and as it leaves it once committed.
    from: Build,
    to: Build,
    /// The events it covers, and the last of them.
    folded: usize,
    last: StoredEvent,
    started: Instant,
}

/// How a fold's write ended.
enum FoldWritten {
    Committed,
    /// Someone else moved the build meanwhile (another leader, an operator's retry).
    Lost,
    Failed(ProjectionError),
}

/// Moves the checkpoint past a fold's events in the transaction its rows were `written`
/// in, and commits.
async fn commit_fold_write(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    written: Result<(), ProjectionError>,
    from: &Build,
    to: Cursor,
    folded: usize,
) -> Result<FoldWritten, sqlx::Error> {
    if let Err(error) = written {
        tx.rollback().await?;
        return Ok(FoldWritten::Failed(error));
    }
    if claim(&mut tx, from, to, folded, false).await? == Claim::Lost {
        tx.rollback().await?;
        return Ok(FoldWritten::Lost);
    }
    tx.commit().await?;
    Ok(FoldWritten::Committed)
}

/// One step of a build that folds ([`Projector::fold_from_start`]): the next page of the
/// stream folded in memory — or, once the stream ends or the fold holds its
/// [`Fold::bound`], the fold written with the checkpoint moved past what it folded, in one
/// transaction (a crash before its commit leaves the build where the fold's last write
/// left it). A fold that [goes on](Fold::goes_on) folds on from there; any other is done.
/// `None` when the batches must do it instead: an event the fold refuses (the batches
/// stop at it, as a poison event), a write that failed for good, or nothing to fold.
#[allow(clippy::too_many_arguments)]
async fn fold_one_page(
    pool: &PgPool,
    conn: &mut PgConnection,
    projector: &dyn Projector,
    (seen, read_at): (&Build, Instant),
    mut folding: Folding,
    batch_size: i64,
    stats: &RunnerStats,
    reading: &mut Reading,
) -> Result<Option<Step>, sqlx::Error> {
    let started = Instant::now();
    if folding.fold.rows() < folding.fold.bound() {
        let page = reading.page(pool, folding.cursor, batch_size).await?;
        if page.events.len() as i64 >= batch_size {
            reading.read_ahead.start(
                pool,
                page.next,
                batch_size.max(CATCH_UP_BATCH),
                projector.columns(),
            );
        }
        if !page.events.is_empty() {
            if let Err(error) = folding.fold.fold(&page.events) {
                tracing::debug!(projector = projector.name(), %error, "fold refused an event; building in batches");
                let Some(in_flight) = folding.in_flight.take() else {
                    return Ok(None);
                };
                // Its write in flight ends first: the batches go on from where it left
                // the build (read again if it did not commit), not beside it.
                if let Ok(build) = finish_write(pool, projector, stats, in_flight).await {
                    reading.known = Some((build, Instant::now()));
                }
                reading.fold_refused = true;
                return Ok(Some(Step::Applied(0)));
            }
            folding.folded += page.events.len();
            folding.cursor = page.next;
            folding.last = page.events.last().cloned();
            reading.folding = Some(folding);
            reading.known = Some((seen.clone(), read_at));
            return Ok(Some(Step::Applied(page.events.len())));
        }
    }
    // A write still in flight ends first: the next one claims the build from where it
    // left it.
    let mut seen = seen.clone();
    // Whether a write in flight moved the build since the caller read it: the caller's
    // row is then stale, and what follows must not start from it.
    let moved = folding.in_flight.is_some();
    if let Some(in_flight) = folding.in_flight.take() {
        match finish_write(pool, projector, stats, in_flight).await {
            Ok(build) => {
                folding.written = build.cursor;
                reading.known = Some((build.clone(), Instant::now()));
                if folding.last.is_none() {
                    // Nothing folded since (the stream ended where the write began): the
                    // next step starts from the checkpoint it left, not the one the
                    // caller read before it.
                    reading.folding = Some(folding);
                    return Ok(Some(Step::Applied(0)));
                }
                seen = build;
            }
            Err(step) => return Ok(step),
        }
    }
    let Some(last) = folding.last.take() else {
        // Nothing (more) to fold: the batches see the stream's end and the build goes
        // live the usual way.
        return Ok(None);
    };
    let (cursor, folded) = (folding.cursor, folding.folded);
    let to = Build {
        cursor,
        events_applied: seen.events_applied + folded as i64,
        ..seen.clone()
    };
    // At its bound, a fold that goes on hands its rows to a write of their own and folds
    // on meanwhile; at the stream's end (or one that does not go on) it writes and waits.
    let at_bound = folding.fold.rows() >= folding.fold.bound();
    if at_bound && folding.fold.goes_on() {
        if let Some(write) = folding.fold.take_write() {
            let (pool, schema, from) = (pool.clone(), seen.schema(), seen.clone());
            let task = tokio::spawn(async move {
                let written = async {
                    let mut conn = pool.acquire().await?;
                    let mut tx = conn.begin_with(ASYNCHRONOUS_BATCH).await?;
                    let written = write.write(&mut tx, &schema).await;
                    commit_fold_write(tx, written, &from, cursor, folded).await
                };
                // Its connection's failures too are the write's: the pool timed out, the
                // database away — tried again as a write in place would be.
                written
                    .await
                    .unwrap_or_else(|error| FoldWritten::Failed(error.into()))
            });
            folding.in_flight = Some(InFlight {
                task,
                from: seen.clone(),
                to,
                folded,
                last,
                started,
            });
            folding.folded = 0;
            reading.folding = Some(folding);
            reading.known = Some((seen, Instant::now()));
            return Ok(Some(Step::Applied(0)));
        }
    }
    let rows = folding.fold.rows();
    let mut tx = conn.begin_with(ASYNCHRONOUS_BATCH).await?;
    let written = match seen.cursor == Cursor::default() {
        // Nothing written yet: the tables are empty.
        true => write_bare(&mut tx, projector, folding.fold.as_mut(), &seen.schema()).await,
        false => folding.fold.write(&mut tx, &seen.schema()).await,
    };
    match commit_fold_write(tx, written, &seen, cursor, folded).await? {
        FoldWritten::Committed => {}
        FoldWritten::Lost => {
            // Someone else moved the build: read it again.
            reading.known = None;
            return Ok(Some(Step::Applied(0)));
        }
        FoldWritten::Failed(error) => {
            let step = write_failed(projector, error);
            if step.is_none() && moved {
                // The batches take over from the checkpoint the write in flight left,
                // known above, at the next step.
                reading.fold_refused = true;
                return Ok(Some(Step::Applied(0)));
            }
            return Ok(step);
        }
    }
    // The write holds every reader's horizon: how long it took is worth seeing.
    tracing::info!(
        projector = projector.name(),
        events = folded,
        rows,
        write_ms = started.elapsed().as_millis() as u64,
        "folded and written"
    );
    if folding.fold.goes_on() {
        folding.written = cursor;
        folding.folded = 0;
        reading.folding = Some(folding);
    }
    reading.known = Some((to, Instant::now()));
    record_batch(pool, stats, &seen, (&last, folded), started).await;
    Ok(Some(Step::Applied(0)))
}

/// A fold's first write, into its empty tables: the indexes `apply` needs
/// ([`Projector::create_write_indexes`]) dropped, the rows copied in, the indexes built
/// again over them — in the write's transaction, so that no other transaction (a batch,
/// a leader of another version) ever sees the tables without them.
pub async fn write_bare(
    tx: &mut PgConnection,
    projector: &dyn Projector,
    fold: &mut dyn Fold,
    schema: &str,
) -> Result<(), ProjectionError> {
    catalog::drop_write_indexes(tx, projector, schema).await?;
    fold.write(tx, schema).await?;
    catalog::create_write_indexes(tx, projector, schema).await?;
    Ok(())
}

/// Waits for a fold's write that ran beside it: the build as it left it, or what
/// [`fold_one_page`] answers instead (the fold is then dropped: the batches go on from the
/// build's checkpoint, or a fold at zero starts again).
async fn finish_write(
    pool: &PgPool,
    projector: &dyn Projector,
    stats: &RunnerStats,
    in_flight: InFlight,
) -> Result<Build, Option<Step>> {
    let written = match in_flight.task.await {
        Ok(written) => written,
        Err(error) => {
            tracing::warn!(projector = projector.name(), %error, "a fold's write ended without an answer; building in batches");
            return Err(None);
        }
    };
    match written {
        FoldWritten::Committed => {}
        FoldWritten::Lost => return Err(Some(Step::Applied(0))),
        FoldWritten::Failed(error) => return Err(write_failed(projector, error)),
    }
    tracing::info!(
        projector = projector.name(),
        events = in_flight.folded,
        write_ms = in_flight.started.elapsed().as_millis() as u64,
        "folded and written beside the fold"
    );
    let (last, folded) = (&in_flight.last, in_flight.folded);
    record_batch(
        pool,
        stats,
        &in_flight.from,
        (last, folded),
        in_flight.started,
    )
    .await;
    Ok(in_flight.to)
}

/// What [`fold_one_page`] answers after a fold's write failed: tried again if the
/// failure may pass (at zero, folded again from the start; further on, the batches go on
/// from the fold's last write), else `None`: the batches take over.
fn write_failed(projector: &dyn Projector, error: ProjectionError) -> Option<Step> {
    if error.is_transient() {
        return Some(Step::Retry);
    }
    tracing::warn!(projector = projector.name(), %error, "writing a fold failed; building in batches");
    None
}

/// A read model's batch: its commit does not wait for the WAL flush (see
/// [`Projector::appends_events`]).
const ASYNCHRONOUS_BATCH: &str = "begin; set local synchronous_commit = off";

/// Makes the open transaction's commit not wait for its WAL flush: for a process
/// manager's batch found to have appended nothing (see [`Projector::appends_events`]).
const ASYNCHRONOUS_COMMIT: &str = "set local synchronous_commit = off";

/// Points the projector's views at a build that caught up and retires the one before.
async fn go_live(
    pool: &PgPool,
    conn: &mut PgConnection,
    projector: &dyn Projector,
    seen: &Build,
) -> Result<Step, sqlx::Error> {
    catalog::build_indexes_concurrently(conn, projector, &seen.schema()).await?;
    let mut tx = conn.begin().await?;
    let build = match catalog::lock_build(&mut tx, seen.build).await? {
        Some(build)
            if build.cursor == seen.cursor
                && build.state == seen.state
                && build.failure.is_none() =>
        {
            build
        }
        // Someone else moved it meanwhile (another leader, a retry): look again.
        _ => {
            tx.rollback().await?;
            return Ok(Step::Applied(0));
        }
    };
    let retired = catalog::go_live(&mut tx, projector, &build).await?;
    tx.commit().await?;
    tracing::info!(
        projector = projector.name(),
        build = build.build,
        "caught up: now live"
    );
    for schema in retired {
        catalog::drop_schema(pool, &schema).await?;
    }
    Ok(Step::Applied(0))
}

/// Tells other processes, once per committed batch that appended events (a process
/// manager's effects; never inside an append), so that their readers see them at once
/// instead of at their next poll; sent beside the build's next batch, which does not
/// wait for it.
fn announce_effects(pool: &PgPool) {
    let pool = pool.clone();
    tokio::spawn(async move {
        if let Err(error) = sqlx::query("select pg_notify($1, '')")
            .bind(omoi_store::wakeup::CHANNEL)
            .execute(&pool)
            .await
        {
            tracing::debug!(%error, "could not announce a process manager's effects");
        }
    });
}

/// Moves the build's checkpoint to `to`, past `applied` more events; whether the
/// transaction appended events (as [`Claim::Made`] tells; asked only when `appends`).
async fn advance(
    tx: &mut PgConnection,
    build: &Build,
    to: Cursor,
    applied: usize,
    appends: bool,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "update projector_builds
            set transaction_id = $2, global_position = $3, events_applied = events_applied + $4,
                updated_at = now()
          where build = $1
          returning {}",
        appended(appends)
    ))
    .bind(build.build)
    .bind(to.transaction_id)
    .bind(to.global_position)
    .bind(applied as i64)
    .fetch_one(&mut *tx)
    .await
}

/// What a batch's claim of its build's row found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Someone else moved the row since it was read — another leader, a retry, a
    /// go-live: the batch must not commit.
    Lost,
    /// The checkpoint moved; whether the batch's transaction appended events to the log
    /// (a process manager's effects), asked in the same statement rather than in a round
    /// trip of its own after every batch.
    Made { appended: bool },
}

/// Whether the current transaction appended events (its effects carry its id), as a
/// claim's `returning`: asked only of a projector whose batches append (a process
/// manager), not of every read model's batch.
fn appended(appends: bool) -> &'static str {
    match appends {
        true => {
            "exists (select 1 from events where transaction_id = pg_current_xact_id_if_assigned())"
        }
        false => "false",
    }
}

/// Moves the build's checkpoint to `to`, past `applied` more events, if its row is still
/// as `seen` (whether the batch appended is asked only when `appends`).
async fn claim(
    conn: &mut PgConnection,
    seen: &Build,
    to: Cursor,
    applied: usize,
    appends: bool,
) -> Result<Claim, sqlx::Error> {
    let appended: Option<bool> = sqlx::query_scalar(&format!(
        "update projector_builds
            set transaction_id = $2, global_position = $3, events_applied = events_applied + $4,
                updated_at = now()
          where build = $1 and transaction_id = $5 and global_position = $6 and state = $7
            and error is null
          returning {}",
        appended(appends)
    ))
    .bind(seen.build)
    .bind(to.transaction_id)
    .bind(to.global_position)
    .bind(applied as i64)
    .bind(seen.cursor.transaction_id)
    .bind(seen.cursor.global_position)
    .bind(seen.state.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match appended {
        Some(appended) => Claim::Made { appended },
        None => Claim::Lost,
    })
}

/// A page of the stream and where the build's checkpoint is.
struct Batch<'a> {
    from: Cursor,
    events: &'a [StoredEvent],
    /// Events of no concern between the checkpoint and the page.
    passed: usize,
    started: Instant,
}

/// After a batch failed: applies its events one at a time (each under a savepoint),
/// commits those before the first that fails, and stops the build at that one — unless
/// its failure is transient (a concurrent writer, the database away): then the rest is
/// applied again at a later step. When none fails on its own (the batch's failure was not
/// the events'), everything is committed.
async fn isolate_poison(
    pool: &PgPool,
    conn: &mut PgConnection,
    projector: &dyn Projector,
    build_id: i64,
    batch: Batch<'_>,
    stats: &RunnerStats,
) -> Result<Step, sqlx::Error> {
    let Batch {
        from,
        events,
        passed,
        started,
    } = batch;
    let mut tx = conn.begin().await?;
    let build = match catalog::lock_build(&mut tx, build_id).await? {
        // Retired meanwhile (another build went live and dropped its tables, which is
        // why the batch failed): nothing is poison, the build is done.
        Some(build) if build.state == BuildState::Retired => {
            tx.rollback().await?;
            return Ok(Step::Retired);
        }
        Some(build) if build.cursor == from && build.failure.is_none() => build,
        // Moved by someone else meanwhile: not ours to advance.
        _ => {
            tx.rollback().await?;
            return Ok(Step::Applied(0));
        }
    };
    let schema = build.schema();
    let mut applied: usize = 0;
    let mut poison = None;
    let mut transient = false;
    for event in events {
        let mut savepoint = tx.begin().await?;
        match projector
            .apply(&mut savepoint, &schema, std::slice::from_ref(event))
            .await
        {
            Ok(()) => savepoint.commit().await?,
            Err(error) => {
                savepoint.rollback().await?;
                // The events before it are kept; it and the rest are applied again later.
                if error.is_transient() {
                    transient = true;
                } else {
                    poison = Some((event, error));
                }
                break;
            }
        }
        applied += 1;
    }
    let mut appended = false;
    if let Some(last) = applied.checked_sub(1).and_then(|i| events.get(i)) {
        let appends = projector.appends_events();
        appended = advance(&mut tx, &build, last.cursor(), applied + passed, appends).await?;
    }
    tx.commit().await?;
    if appended {
        announce_effects(pool);
    }
    if let Some(last) = applied.checked_sub(1).and_then(|i| events.get(i)) {
        record_batch(pool, stats, &build, (last, applied), started).await;
    }
    match poison {
        Some((event, error)) => {
            record_failure(pool, &build, event, &error.to_string()).await?;
            Ok(Step::Stopped)
        }
        None if transient && applied == 0 => Ok(Step::Retry),
        None => Ok(Step::Applied(applied)),
    }
}

/// Writes the position after events a build passed by, if its checkpoint is still where
/// it was read (`false`: someone else moved it; look again).
async fn save_position(
    conn: &mut PgConnection,
    seen: &Build,
    passed: Unsaved,
) -> Result<bool, sqlx::Error> {
    Ok(claim(conn, seen, passed.at, passed.events, false).await? != Claim::Lost)
}

/// The statistics after a page passed by.
fn record_passed(stats: &RunnerStats, build: &Build, events: &[StoredEvent]) {
    let Some(last) = events.last() else { return };
    stats.update(build.build, |s| {
        s.cursor = last.cursor().to_string();
        s.global_position = last.global_position;
        s.events_applied += events.len() as i64;
        s.lag_ms = 0;
    });
}

fn record_state(stats: &RunnerStats, build: &Build) {
    stats.update(build.build, |s| {
        s.projector = build.projector.clone();
        s.build = build.build;
        s.state = build.state.as_str().to_string();
        s.cursor = build.cursor.to_string();
        s.global_position = build.cursor.global_position;
        s.events_applied = build.events_applied;
        s.error = build.failure.as_ref().map(|(_, e)| e.clone());
    });
}

/// The statistics after a batch committed: its last event and how many it applied.
async fn record_batch(
    pool: &PgPool,
    stats: &RunnerStats,
    build: &Build,
    (last, applied): (&StoredEvent, usize),
    started: Instant,
) {
    let lag_ms = last
        .occurred_at()
        .map_or(0, |at| (chrono::Utc::now() - at).num_milliseconds().max(0));
    // The position first: readers of these statistics (`omoi-bench bench-projections`'s
    // lag) see the batch as soon as it committed, not a round trip later.
    stats.update(build.build, |s| {
        s.cursor = last.cursor().to_string();
        s.global_position = last.global_position;
        s.events_applied += applied as i64;
        s.lag_ms = lag_ms;
        s.last_batch_ms = started.elapsed().as_secs_f64() * 1000.0;
        s.batches += 1;
    });
    let newest = stats.newest_position(pool).await;
    stats.update(build.build, |s| {
        s.lag_events = newest.map_or(0, |n| (n - last.global_position).max(0));
    });
}

async fn record_failure(
    pool: &PgPool,
    build: &Build,
    event: &StoredEvent,
    error: &str,
) -> Result<(), sqlx::Error> {
    tracing::error!(
        projector = %build.projector,
        build = build.build,
        position = %event.cursor(),
        event_type = %event.event_type,
        %error,
        "projector stopped at a poison event; fix it and run `omoi projections retry`"
    );
    sqlx::query(
        "update projector_builds
            set failed_transaction_id = $2, failed_global_position = $3, error = $4, updated_at = now()
          where build = $1",
    )
    .bind(build.build)
    .bind(event.transaction_id)
    .bind(event.global_position)
    .bind(format!("{} at {} ({}): {error}", event.event_type, event.cursor(), event.aggregate_id))
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes `build`'s leadership on `conn` (a session advisory lock, held until the
/// connection closes) if no other connection holds it.
async fn try_lead(conn: &mut PgConnection, build: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select pg_try_advisory_lock(hashtext('omoi-projector'), $1::int)")
        .bind(build as i32)
        .fetch_one(conn)
        .await
}

/// How often a catch-up that another process leads looks at the build's progress.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// Projects `build` until it has caught up with the stream (for rebuilds); calls
/// `progress` after every step with the events the build has been through — applied, or
/// folded and not yet written.
///
/// It leads the build as a runner does, or follows the process that does (a server's
/// runner leads a build it finds building) until that one takes it live: two processes
/// stepping one build would both reach its go-live, and their concurrent index builds
/// on one table wait for each other (PostgreSQL reports a deadlock).
pub async fn catch_up(
    pool: &PgPool,
    options: &PgConnectOptions,
    projector: &dyn Projector,
    build: i64,
    batch_size: i64,
    mut progress: impl FnMut(i64),
) -> Result<Build, sqlx::Error> {
    let mut conn = PgConnection::connect_with(options).await?;
    let mut following = false;
    while !try_lead(&mut conn, build).await? {
        if !following {
            tracing::info!(
                projector = projector.name(),
                build,
                "another process leads this build; following its progress"
            );
            following = true;
        }
        let current = catalog::build_by_id(pool, build)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        if current.state != BuildState::Building || current.failure.is_some() {
            return Ok(current);
        }
        progress(current.events_applied);
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
    let mut retries = 0;
    let stats = RunnerStats::default();
    let mut reading = Reading::default();
    loop {
        let step = step(
            pool,
            &mut conn,
            projector,
            build,
            batch_size,
            &stats,
            &mut reading,
        )
        .await?;
        let current = catalog::build_by_id(pool, build)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        let unwritten = |f: &Folding| f.unwritten(current.cursor) as i64;
        let folded = reading.folding.as_ref().map_or(0, unwritten);
        progress(current.events_applied + folded);
        retries = match step {
            Step::Retry => retries + 1,
            _ => 0,
        };
        match step {
            Step::Applied(n) if n > 0 => {}
            // Nothing applied but still building: a fold was written, or the build was
            // moved by a retry; look again.
            Step::Applied(_) if current.state == BuildState::Building => {}
            Step::Retry => tokio::time::sleep(retry_pause(retries)).await,
            _ => return Ok(current),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use omoi_store::log::EventPage;
    use omoi_store::{Cursor, StoredEvent};
    use proptest::prelude::*;
    use uuid::Uuid;

    use super::{weight, Kept, KeptPages, RunnerStats};
    use crate::testing::Log;

    /// Transient failures are tried again ever later: doubling from 50 ms, never past
    /// 10 s, and never shorter than the pause before.
    #[test]
    fn a_batch_failing_transiently_is_tried_again_ever_later_up_to_ten_seconds() {
        assert_eq!(super::retry_pause(1), super::RETRY_PAUSE);
        assert_eq!(super::retry_pause(2), super::RETRY_PAUSE * 2);
        assert_eq!(super::retry_pause(5), Duration::from_millis(800));
        for retries in 1..200 {
            let pause = super::retry_pause(retries);
            assert!(pause <= super::MAX_RETRY_PAUSE);
            assert!(pause >= super::retry_pause(retries - 1));
        }
        assert_eq!(super::retry_pause(u32::MAX), super::MAX_RETRY_PAUSE);
    }

    /// A build's committed batches are a counter of the builds this process leads; the
    /// others' are not reported here.
    #[test]
    fn batches_are_counted_for_the_builds_led_here() {
        let stats = RunnerStats::default();
        for (build, leader) in [(1, true), (2, false)] {
            stats.update(build, |s| {
                s.projector = "board".into();
                s.build = build;
                s.leader = leader;
                s.batches = 3;
            });
        }
        let text = stats.render_prometheus();
        assert!(
            text.contains("# TYPE omoi_projector_batches_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("omoi_projector_batches_total{projector=\"board\",build=\"1\"} 3\n"),
            "{text}"
        );
        assert!(!text.contains("build=\"2\""), "{text}");
        assert!(
            text.contains("# TYPE omoi_projector_position gauge\n"),
            "{text}"
        );
    }

    /// A stream of `n` events in the log's order: transactions of three events each, whose
    /// global positions do not follow the transactions' order.
    fn stream(n: usize) -> Vec<StoredEvent> {
        let mut log = Log::default();
        for _ in 0..n {
            log.push("Probe", Uuid::now_v7(), serde_json::json!({"Probed": {}}));
        }
        let mut events = log.events;
        for (i, event) in events.iter_mut().enumerate() {
            event.transaction_id = 1 + i as i64 / 3;
            event.global_position = ((i * 37) % 101) as i64 + 1;
        }
        events.sort_by_key(StoredEvent::cursor);
        events
    }

    /// The place after the first `index` events.
    fn place(stream: &[StoredEvent], index: usize) -> Cursor {
        index
            .checked_sub(1)
            .map_or(Cursor::default(), |i| stream[i].cursor())
    }

    /// Whether `events` are the events right after the first `index`, in order, none left out.
    fn follow_on(stream: &[StoredEvent], index: usize, events: &[StoredEvent]) -> bool {
        let cursors: Vec<Cursor> = events.iter().map(StoredEvent::cursor).collect();
        let expected: Vec<Cursor> = stream
            .iter()
            .skip(index)
            .take(events.len())
            .map(StoredEvent::cursor)
            .collect();
        cursors == expected
    }

    /// Whether a kept page read under `generation` or a later commit count ended short
    /// (at its horizon) at `end`: what may end a handed-over stretch short of its limit.
    fn ends_current(kept: &KeptPages, end: Cursor, generation: Option<u64>) -> bool {
        generation.is_some_and(|wanted| {
            kept.pages.values().any(|k| {
                k.page.next == end && k.page.events.len() < k.limit && k.generation >= wanted
            })
        })
    }

    proptest! {
        /// Whatever pages were kept — from any place, of any limit, each stopped by its
        /// limit or by the horizon of its moment, the furthest back dropped past the
        /// capacity — the events taken from them after any place are the stream's next
        /// ones, in order, none left out, at most as many as asked; fewer are called all
        /// there is only where a page read after the asking build's wake-up ended short;
        /// a whole page handed over obeys the same; the weight kept is the pages'.
        #[test]
        fn kept_pages_hand_over_the_streams_next_events_and_no_other(
            n in 0usize..60,
            capacity in 0usize..40_000,
            reads in prop::collection::vec((0usize..60, 1usize..20, 0usize..60, 0u64..4), 0..12),
            asks in prop::collection::vec((0usize..60, 1usize..30, prop::option::of(0u64..4)), 1..8),
        ) {
            let stream = stream(n);
            let mut kept = KeptPages::with_capacity(capacity);
            for (from, limit, horizon, generation) in reads {
                let from = from.min(n);
                let end = (from + limit).min(horizon.max(from)).min(n);
                let events = stream[from..end].to_vec();
                let next = events.last().map_or(place(&stream, from), StoredEvent::cursor);
                let page = Arc::new(EventPage { events, next });
                kept.keep(place(&stream, from), Kept { generation, limit, page });
                let weights: usize = kept.pages.values().map(|k| weight(&k.page)).sum();
                prop_assert_eq!(kept.bytes, weights);
                prop_assert!(kept.bytes <= capacity || kept.pages.is_empty());
            }
            for (from, limit, generation) in asks {
                let from = from.min(n);
                let at = place(&stream, from);
                let (events, complete) = kept.take(at, limit, generation);
                prop_assert!(events.len() <= limit);
                prop_assert!(follow_on(&stream, from, &events), "taken after {}", from);
                if events.len() == limit {
                    prop_assert!(complete);
                } else if complete {
                    let end = events.last().map(StoredEvent::cursor);
                    prop_assert!(end.is_some_and(|end| ends_current(&kept, end, generation)));
                }
                if let Some(page) = kept.whole(at, limit, generation) {
                    prop_assert!(page.events.len() <= limit);
                    prop_assert!(follow_on(&stream, from, &page.events), "whole after {}", from);
                    if page.events.len() < limit {
                        prop_assert!(ends_current(&kept, page.next, generation));
                    }
                }
            }
        }
    }
}
