//! The worker: follows the log into a [`Queue`], keeps its in-process agents' leases,
//! sweeps silent agents and overdue tasks, and assigns the best ready task to a free agent
//! of its organization whose capabilities cover the task's — then runs it.
//!
//! Several workers may run on one database: each assigns through the task aggregate,
//! whose optimistic concurrency lets exactly one assignment of a task commit; the loser's
//! retry finds the task taken and moves on. Leases are expired by one `UPDATE … RETURNING`,
//! so one worker fails a silent agent.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use omoi_domain::agent::{Agent, AgentCommand, AgentEvent, AgentStatus, AgentType};
use omoi_domain::billing::{BillingAccount, Plans};
use omoi_domain::common::{clipped, MAX_TEXT_CHARS};
use omoi_domain::task::{Task, TaskCommand, TaskError, TaskStatus, Verdict, MAX_PROGRESS_CHARS};
use omoi_store::log::read_global_ahead;
use omoi_store::transcripts;
use omoi_store::wakeup::listen;
use omoi_store::{Actor, CommandBus, CommandContext, CommandError, Committed, Cursor, StoredEvent};
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use uuid::Uuid;

use crate::anomaly::{self, AnomalyTracker};
use crate::choose::{choose, FreeAgent, Limits, Pick};
use crate::conductor;
use crate::executor::{execute, Outcome, Run, Sinks, STEERING_FILE};
use crate::leases;
use crate::monitor::{Clock, MonitoringConfig};
use crate::queue::{Change, Queue, QueuedTask, Ranked};
use crate::reservations::Reservations;
use crate::score::ScoreConfig;
use crate::trajectory::{self, Assessor, TaskContext};

/// What a worker's agents do with a task.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Work {
    /// Run this shell command (`sh -c`) per task.
    Command(String),
    /// Complete every task at once (benchmarks, smoke tests).
    Nothing,
}

/// How a worker runs; every duration is configurable so tests run in seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub work: Work,
    /// What the agents run for a validation task (type `validate`): exit 0 passes the
    /// work it checks, another exit status rejects it with the command's last line as
    /// the feedback; `nothing` passes at once.
    pub validate: Work,
    /// Organizations served; empty serves every organization.
    pub organizations: Vec<Uuid>,
    /// In-process agents per organization, registered when its first task is ready.
    pub agents_per_organization: usize,
    pub capabilities: Vec<String>,
    /// Tasks held by agents at once, per project.
    pub project_concurrency: usize,
    /// Tasks held by agents at once, per organization, when no plans are given. Not a
    /// setting: `omoi worker` and `omoi dev` always give the plans (an organization's cap
    /// is its plan's); embedders and tests without plans set it here.
    #[serde(skip)]
    pub organization_concurrency: usize,
    /// Claims (`POST /api/v1/agents/{id}/claim`) one HTTP agent may have waiting at once.
    pub claims_per_agent: usize,
    /// The billing plans: when given, an organization's cap is its plan's
    /// `concurrent_agents` (set from `billing.plans` by `omoi worker` and `omoi dev`).
    #[serde(skip)]
    pub plans: Option<Plans>,
    /// An agent silent this long is failed and its tasks go back to the queue.
    pub stale_after_ms: u64,
    /// A task assigned this long ago and still not started goes back to the queue: its
    /// agent never learned of it (the answer to its claim was lost with the replica
    /// that gave it), or will not run it.
    pub start_within_ms: u64,
    /// How often leases and timeouts are checked.
    pub check_interval_ms: u64,
    /// How often a worker looks at the log when nothing woke it.
    pub poll_interval_ms: u64,
    pub progress_interval_ms: u64,
    /// Each worker makes a private directory under it (mode 0700, a random name) and runs
    /// every attempt in a directory of its own inside that one. The worker removes it
    /// when it stops.
    pub work_dir: PathBuf,
    /// How long the directory of a failed, timed out or cancelled attempt is kept, to be
    /// looked into, before it is removed (a completed attempt's goes at once).
    pub keep_failed_for_ms: u64,
    /// A transcript (an attempt's lines) is deleted this long after its last line.
    pub transcript_retention_hours: u64,
    pub score: ScoreConfig,
    /// Heartbeat escalation and stalled tasks (set from `monitoring` by `omoi worker` and
    /// `omoi dev`).
    #[serde(skip)]
    pub monitoring: MonitoringConfig,
    /// What the sweeps take as now (tests move it forward).
    #[serde(skip)]
    pub clock: Clock,
    /// The worker's command bus (set from `commands` by `omoi worker` and `omoi dev`).
    #[serde(skip)]
    pub bus: omoi_store::BusConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            work: Work::Command("echo \"$OMOI_TASK_TITLE\"".into()),
            validate: Work::Command("exit 0".into()),
            organizations: Vec::new(),
            agents_per_organization: 4,
            capabilities: Vec::new(),
            project_concurrency: 5,
            organization_concurrency: 10,
            claims_per_agent: 4,
            stale_after_ms: 90_000,
            start_within_ms: 300_000,
            check_interval_ms: 5_000,
            poll_interval_ms: 500,
            progress_interval_ms: 1_000,
            work_dir: std::env::temp_dir(),
            keep_failed_for_ms: 3_600_000,
            transcript_retention_hours: 720,
            score: ScoreConfig::default(),
            monitoring: MonitoringConfig::default(),
            clock: Clock::default(),
            plans: None,
            bus: omoi_store::BusConfig::default(),
        }
    }
}

/// A running worker.
pub struct Worker {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    work_dir: Option<PathBuf>,
}

/// A task this worker runs.
struct Running {
    /// Turning true stops the command.
    cancel: watch::Sender<bool>,
    agent_id: Uuid,
    /// Where steering messages for the agent are appended (`OMOI_STEERING_FILE`).
    steering_file: PathBuf,
}

/// A task run by this worker has ended; its directory is kept when it failed.
struct Finished {
    agent: Uuid,
    task: Uuid,
    kept: Option<PathBuf>,
}

/// Makes a directory only this user can enter, under a name nobody can guess: no other
/// local user can read a task's files, or plant a directory or link of their own where
/// the worker will write (`mkdir` refuses a path that exists, so none is reused).
fn private_directory(parent: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;

    std::fs::create_dir_all(parent)?;
    let path = parent.join(format!("omoi-worker-{}", Uuid::new_v4().simple()));
    std::fs::DirBuilder::new().mode(0o700).create(&path)?;
    Ok(path)
}

impl Worker {
    /// Starts the worker. One that cannot make its private directory logs why and
    /// takes no task (other workers still can).
    pub fn start(pool: PgPool, config: WorkerConfig) -> Self {
        let (runtime, finished) = Runtime::new(pool.clone(), config);
        // The worker's commits wake the read models and process managers of every process
        // at once (`omoi worker` is a process of its own), not at their next poll.
        tokio::spawn(omoi_store::wakeup::announce_commits(
            pool,
            runtime.bus.commits(),
            COMMIT_ANNOUNCE_WINDOW,
        ));
        let work_dir = runtime.work_dir.clone();
        let (shutdown, stop) = watch::channel(false);
        Self {
            shutdown,
            task: tokio::spawn(runtime.run(stop, finished)),
            work_dir,
        }
    }

    /// A worker its caller drives one pass at a time ([`SteppedWorker::step`]): no loop,
    /// no timers, no wake-ups — what a test needs to say exactly what one pass does.
    pub fn stepped(pool: PgPool, config: WorkerConfig) -> SteppedWorker {
        let (runtime, finished) = Runtime::new(pool, config);
        SteppedWorker { runtime, finished }
    }

    /// The worker's private directory (none when it could not be made).
    pub fn work_dir(&self) -> Option<&Path> {
        self.work_dir.as_deref()
    }

    /// Stops dispatching and kills the commands still running (their tasks stay with
    /// agents that no longer heartbeat, so a sweep puts them back).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Records the Guardian's readings (the health route's) and, on each agent whose reading
/// matters, the reading itself (a third anomalous one in a row quarantines it).
async fn record_anomalies(
    pool: PgPool,
    bus: Arc<CommandBus>,
    readings: Vec<anomaly::Reading>,
    min_gap_ms: u64,
    now: chrono::DateTime<Utc>,
) {
    if let Err(error) = anomaly::record(&pool, &readings, now).await {
        tracing::warn!(%error, "worker: cannot record anomaly readings");
    }
    let context = context(Actor::System("guardian"), "anomaly");
    for reading in readings.iter().filter(|r| r.matters()) {
        let command = AgentCommand::RecordAnomalyReading {
            parts: reading.parts,
            min_gap_ms,
            at: now,
        };
        let outcome = bus
            .execute::<Agent>(&reading.agent_id.to_string(), command, &context)
            .await;
        if let Err(error) = outcome {
            tracing::info!(agent_id = %reading.agent_id, %error,
                "worker: anomaly reading not recorded");
        }
    }
}

/// Commits within this window share one `NOTIFY` to other processes (as the API's).
const COMMIT_ANNOUNCE_WINDOW: Duration = Duration::from_millis(5);

/// A worker driven by its caller (see [`Worker::stepped`]).
pub struct SteppedWorker {
    runtime: Runtime,
    finished: mpsc::UnboundedReceiver<Finished>,
}

impl SteppedWorker {
    /// One pass: the attempts that finished since the last pass free their agents; then
    /// the log is read, leases renewed and swept when due, and ready tasks dispatched.
    /// Tasks it starts run on (their outcome is recorded when they end).
    pub async fn step(&mut self) {
        while let Ok(done) = self.finished.try_recv() {
            self.runtime.free(done);
        }
        self.runtime.step().await;
        // A step is the whole pass: its assignments are committed and launched, and the
        // Guardian's readings it took recorded, before it returns (a running worker waits
        // for neither).
        self.runtime.settle_assignments().await;
        if let Some(pass) = self.runtime.anomaly_pass.take() {
            let _ = pass.await;
        }
    }

    /// Kills the commands still running and removes the worker's directory.
    pub async fn stop(mut self) {
        self.runtime.stop(&mut self.finished).await;
    }
}

struct LocalAgent {
    organization_id: Uuid,
    task: Option<Uuid>,
    /// Quarantined by a guardian: takes nothing new until released.
    quarantined: bool,
    /// Degraded by a sweep (its renewals were held up): revived by the next renewal, as
    /// an HTTP agent is by its next heartbeat.
    degraded: bool,
}

struct Runtime {
    pool: PgPool,
    /// Where the pass's read of the log runs: a session with generic plans
    /// (`db::generic_plans`).
    log_reads: PgPool,
    bus: Arc<CommandBus>,
    config: Arc<WorkerConfig>,
    /// Every in-process agent's capabilities (the configured ones).
    capabilities: BTreeSet<String>,
    queue: Queue,
    /// The worker's place in the gapless stream.
    cursor: Cursor,
    /// Where its next read beyond the stream's horizon starts (after what it last read
    /// there).
    ahead_cursor: Cursor,
    agents: HashMap<Uuid, LocalAgent>,
    /// Tasks run here → their cancel switch.
    running: HashMap<Uuid, Running>,
    done: mpsc::UnboundedSender<Finished>,
    last_heartbeat: Option<Instant>,
    last_sweep: Option<Instant>,
    last_conductor: Option<Instant>,
    /// When the Guardian last read the agents (in the worker's clock, which tests move).
    last_reading: Option<chrono::DateTime<Utc>>,
    anomalies: AnomalyTracker,
    /// LLM trajectory analysis, when configured, and its pass in flight.
    assessor: Option<Arc<Assessor>>,
    trajectory_pass: Option<JoinHandle<()>>,
    /// The Conductor's pass in flight.
    conductor_pass: Option<JoinHandle<()>>,
    /// The Guardian's readings being recorded.
    anomaly_pass: Option<JoinHandle<()>>,
    /// Organizations' concurrency caps from their plans, until their account changes or
    /// (a pending suspension) until the instant it would change by itself.
    caps: HashMap<Uuid, (usize, Option<chrono::DateTime<Utc>>)>,
    /// This worker's private directory; `None` when it could not be made.
    work_dir: Option<PathBuf>,
    /// Directories of failed attempts, and when they failed.
    kept: Vec<(PathBuf, Instant)>,
    /// Runs launched so far, each numbering its directory: a task run again at the same
    /// attempt (reassigned while its run was being stopped) never shares the stopped
    /// run's directory — still being written while its command dies, then kept, then
    /// removed at the end of the retention.
    runs_launched: u64,
    /// The assignments being committed, each a task of its own: the loop reads the log
    /// and dispatches on meanwhile, and launches each as it commits.
    assigning: JoinSet<Assignment>,
    /// Tasks this worker is assigning or assigned that the queue does not show yet.
    claimed: Reservations,
    /// Stops the log asked for tasks whose assignment was still being committed.
    stops_while_assigning: StopsWhileAssigning,
}

/// Stops (a cancellation, a reassignment) read for a task while this worker's assignment
/// of it was still being committed: the loop reads the log meanwhile, and a stop read then
/// found no run to stop. Whether the run may start is decided when the assignment
/// settles, by the stop's place in the task's history: one after the assignment's events
/// is meant for this run; one before it was read late and is history.
#[derive(Debug, Default)]
struct StopsWhileAssigning {
    /// The task's latest stop read meanwhile: its event's sequence in the task's history.
    latest: HashMap<Uuid, i64>,
}

impl StopsWhileAssigning {
    fn note(&mut self, task: Uuid, sequence: i64) {
        let latest = self.latest.entry(task).or_insert(sequence);
        *latest = (*latest).max(sequence);
    }

    /// Whether the run of `task`, whose assignment left it at `version`, may start; the
    /// task's stops are forgotten either way.
    fn launches(&mut self, task: Uuid, version: i64) -> bool {
        self.latest
            .remove(&task)
            .is_none_or(|sequence| sequence <= version)
    }

    fn forget(&mut self, task: Uuid) {
        self.latest.remove(&task);
    }
}

/// Whether the in-process assignment and start of `task_id` on `agent_id` at `at`, whose
/// commit's outcome is unknown (the database went away as it answered), committed after
/// all: the task as the log has it now, running under that assignment. Asked again while
/// the database stays away (30 s of waits, each read waiting for a connection besides:
/// about a minute in all); `None` when it did not commit,
/// was stopped since, or the database did not come back (the agent then takes other work;
/// a pair that committed regardless waits for its `timeout_seconds` or a person's cancel).
pub async fn committed_after_all(
    bus: &CommandBus,
    task_id: Uuid,
    agent_id: Uuid,
    at: chrono::DateTime<Utc>,
) -> Option<Committed<Task>> {
    let aggregate_id = task_id.to_string();
    for wait_ms in [0, 100, 400, 1_500, 4_000, 8_000, 16_000] {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        match bus.load::<Task>(&aggregate_id).await {
            Ok(Some((state, version))) => {
                let ours = state.status == TaskStatus::Running
                    && state.assigned_agent_id == Some(agent_id)
                    && state.assigned_at == Some(at);
                return ours.then_some(Committed {
                    aggregate_id,
                    version,
                    // Not known here, and not read: the pair is read back as a whole.
                    appended: 0,
                    state,
                });
            }
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(%task_id, %error, "worker: cannot tell whether an assignment committed");
            }
        }
    }
    None
}

/// An assignment's outcome: the agent reserved for it, the task, what the bus answered.
type Assignment = (
    Uuid,
    QueuedTask,
    Result<Committed<Task>, CommandError<TaskError>>,
);

const PAGE: i64 = 10_000;

/// Events read beyond the log's horizon at most per read.
const AHEAD_PAGE: i64 = 1_000;

fn context(actor: Actor, what: &str) -> CommandContext {
    CommandContext::new(actor, format!("worker:{what}:{}", Uuid::now_v7()))
}

fn jitter() -> f64 {
    rand::thread_rng().gen_range(0.0..1.0)
}

impl Runtime {
    /// A worker's state, with the channel on which its attempts report their end. One that
    /// cannot make its private directory logs why and takes no task (other workers still
    /// can).
    fn new(pool: PgPool, config: WorkerConfig) -> (Self, mpsc::UnboundedReceiver<Finished>) {
        let work_dir = match private_directory(&config.work_dir) {
            Ok(dir) => Some(dir),
            Err(error) => {
                tracing::error!(%error, parent = %config.work_dir.display(),
                    "worker: cannot make its working directory; it will take no task");
                None
            }
        };
        let bus = Arc::new(CommandBus::configured(pool.clone(), config.bus));
        let (done, finished) = mpsc::unbounded_channel();
        let assessor = Assessor::new(&config.monitoring.llm).map(Arc::new);
        let runtime = Runtime {
            log_reads: omoi_store::db::generic_plans(&pool.connect_options(), 1),
            pool,
            bus,
            capabilities: config.capabilities.iter().cloned().collect(),
            config: Arc::new(config),
            queue: Queue::default(),
            cursor: Cursor::default(),
            ahead_cursor: Cursor::default(),
            agents: HashMap::new(),
            running: HashMap::new(),
            done,
            last_heartbeat: None,
            last_sweep: None,
            last_conductor: None,
            last_reading: None,
            anomalies: AnomalyTracker::default(),
            assessor,
            trajectory_pass: None,
            conductor_pass: None,
            anomaly_pass: None,
            caps: HashMap::new(),
            work_dir,
            kept: Vec::new(),
            runs_launched: 0,
            assigning: JoinSet::new(),
            stops_while_assigning: StopsWhileAssigning::default(),
            claimed: Reservations::default(),
        };
        (runtime, finished)
    }

    /// One pass: read the log, renew leases and sweep (when due), dispatch. A pass whose
    /// read of the log failed only renews leases: its sweeps and assignments would be
    /// decided on a queue that may lag the log by any length (a start, a long pause).
    async fn step(&mut self) {
        let read = self.catch_up().await;
        self.heartbeat().await;
        if read {
            self.sweep().await;
            self.dispatch().await;
        }
    }

    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut finished: mpsc::UnboundedReceiver<Finished>,
    ) {
        let (wake, mut woken) = watch::channel(0u64);
        let listener = tokio::spawn(listen((*self.pool.connect_options()).clone(), wake));
        let mut commits = self.bus.commits();
        while !*stop.borrow() {
            self.step().await;
            let pause = self.pause();
            tokio::select! {
                _ = stop.changed() => {}
                Some(done) = finished.recv() => self.free(done),
                Some(joined) = self.assigning.join_next() => self.settle_joined(joined),
                _ = commits.changed() => {}
                _ = woken.changed() => {}
                () = tokio::time::sleep(pause) => {}
            }
            while let Ok(done) = finished.try_recv() {
                self.free(done);
            }
            while let Some(joined) = self.assigning.try_join_next() {
                self.settle_joined(joined);
            }
            self.remove_expired_directories().await;
        }
        listener.abort();
        self.stop(&mut finished).await;
    }

    /// Kills the commands still running and removes the worker's directory.
    async fn stop(&mut self, finished: &mut mpsc::UnboundedReceiver<Finished>) {
        // The supervision passes beside the worker end with it.
        if let Some(pass) = self.conductor_pass.take() {
            pass.abort();
        }
        if let Some(pass) = self.trajectory_pass.take() {
            pass.abort();
        }
        if let Some(pass) = self.anomaly_pass.take() {
            pass.abort();
        }
        // Assignments that commit are launched, then stopped like every running task.
        self.settle_assignments().await;
        self.stop_running(finished).await;
        if let Some(dir) = &self.work_dir {
            if let Err(error) = tokio::fs::remove_dir_all(dir).await {
                tracing::warn!(%error, dir = %dir.display(), "worker: cannot remove its directory");
            }
        }
    }

    /// Kills the commands still running and waits (briefly) until they are gone, so that
    /// none writes into the directory being removed.
    async fn stop_running(&mut self, finished: &mut mpsc::UnboundedReceiver<Finished>) {
        for run in self.running.values() {
            let _ = run.cancel.send(true);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, finished.recv()).await {
                Ok(Some(done)) => self.free(done),
                _ => return,
            }
        }
    }

    fn free(&mut self, done: Finished) {
        // Only this run's entry: the task may run again already, with another agent (a
        // reassignment stopped this run, and its end came after the next run began).
        if self
            .running
            .get(&done.task)
            .is_some_and(|run| run.agent_id == done.agent)
        {
            self.running.remove(&done.task);
        }
        if let Some(agent) = self.agents.get_mut(&done.agent) {
            if agent.task == Some(done.task) {
                agent.task = None;
            }
        }
        if let Some(dir) = done.kept {
            self.kept.push((dir, Instant::now()));
        }
    }

    /// Removes failed attempts' directories kept for `keep_failed_for_ms`.
    async fn remove_expired_directories(&mut self) {
        let keep = Duration::from_millis(self.config.keep_failed_for_ms);
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.kept)
            .into_iter()
            .partition(|(_, failed_at)| failed_at.elapsed() >= keep);
        self.kept = kept;
        for (dir, _) in expired {
            if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
                tracing::warn!(%error, dir = %dir.display(), "worker: cannot remove a failed attempt's directory");
            }
        }
    }

    /// Until the next poll, retry due, heartbeat or sweep.
    fn pause(&self) -> Duration {
        let mut pause = Duration::from_millis(self.config.poll_interval_ms);
        let now = Utc::now();
        if let Some(due) = self.queue.next_retry(now) {
            let wait = (due - now).to_std().unwrap_or_default();
            pause = pause.min(wait + Duration::from_millis(1));
        }
        pause.min(Duration::from_millis(self.config.check_interval_ms))
    }

    /// Reads the log on from the worker's place in the gapless stream, then applies the
    /// task events committed beyond it (a transaction still open elsewhere holds the
    /// stream back; the queue takes each task's next event at once and passes it by when
    /// the stream brings it). Beyond the horizon it reads on from where it last read
    /// there: a transaction holding the horizon for long does not make every pass read
    /// the same events again. Answers whether it read up to the log's end (false: a read
    /// failed).
    async fn catch_up(&mut self) -> bool {
        // Behind by a full page or more (a start, a long pause), what lies beyond the
        // horizon would only be read and left: the pages after the first read none.
        let mut ahead_limit = AHEAD_PAGE;
        loop {
            let ahead_after = self.cursor.max(self.ahead_cursor);
            let read = match read_global_ahead(
                &self.log_reads,
                self.cursor,
                PAGE,
                ahead_after,
                ahead_limit,
            )
            .await
            {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, "worker: cannot read the log");
                    return false;
                }
            };
            for event in &read.page.events {
                if event.aggregate_type == "BillingAccount" {
                    if let Ok(organization) = event.aggregate_id.parse::<Uuid>() {
                        self.caps.remove(&organization);
                    }
                }
                if event.aggregate_type == "Agent" {
                    self.follow_agent(event);
                }
                if !self.queue.applied_ahead(event) {
                    self.take(event, false).await;
                }
            }
            self.cursor = read.page.next;
            if (read.page.events.len() as i64) < PAGE {
                self.ahead_cursor = read.ahead_next;
                let mut ahead = read.ahead;
                // A task's events in its order: one may follow another in the same read.
                ahead.sort_by(|a, b| {
                    (&a.aggregate_id, a.sequence).cmp(&(&b.aggregate_id, b.sequence))
                });
                for event in &ahead {
                    if self.queue.comes_next(event) {
                        self.take(event, true).await;
                    }
                }
                return true;
            }
            ahead_limit = 0;
        }
    }

    /// Applies one event to the anomaly reading and the queue (`ahead`: read ahead of the
    /// gapless stream, and the task's next), and stops or steers what it asks.
    async fn take(&mut self, event: &StoredEvent, ahead: bool) {
        // The reading looks at the task as the queue had it before the event.
        self.anomalies.apply(event, &self.queue);
        let change = if ahead {
            self.queue.apply_ahead(event)
        } else {
            self.queue.apply(event)
        };
        match change {
            Change::Stop(task) => {
                let running = self.running.get(&task).map(|run| {
                    let _ = run.cancel.send(true);
                    run.agent_id
                });
                // An assignment of the task under way for another of this worker's agents
                // — a reassignment stopped the run above, whose end is not in yet — must
                // not start its run either: the stop is noted for it too.
                let assigning = self
                    .agents
                    .iter()
                    .any(|(id, agent)| agent.task == Some(task) && running != Some(*id));
                if assigning {
                    self.stops_while_assigning.note(task, event.sequence);
                }
            }
            Change::Steered(task) => self.deliver_steering(task).await,
            Change::None | Change::Queue => {}
        }
    }

    /// Keeps this worker's agents' standing as the log says: a quarantined agent takes
    /// nothing new until it is released; one failed (by another worker's sweep, its lease
    /// having lapsed while this worker was held up) or terminated (by a person) is given
    /// up — no more work, no more heartbeats — and a new one registered when one is
    /// needed.
    fn follow_agent(&mut self, event: &StoredEvent) {
        let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
            return;
        };
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        if let Ok(AgentEvent::AgentStatusChanged { to, .. }) = event.payload.decode::<AgentEvent>()
        {
            match to {
                AgentStatus::Failed | AgentStatus::Terminated => {
                    tracing::warn!(agent_id = %id, status = to.as_str(), "worker: an agent of this worker ended; giving it up");
                    self.agents.remove(&id);
                }
                _ => {
                    agent.quarantined = to == AgentStatus::Quarantined;
                    agent.degraded = to == AgentStatus::Degraded;
                }
            }
        }
    }

    fn due(last: &mut Option<Instant>, every: Duration) -> bool {
        if last.is_some_and(|at| at.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Renews the leases of this worker's agents, three times per stale threshold and at
    /// least once per heartbeat interval (two missed intervals degrade an agent).
    async fn heartbeat(&mut self) {
        let every = Duration::from_millis(
            (self.config.stale_after_ms / 3).min(self.config.monitoring.heartbeat_interval_ms),
        );
        if !Self::due(&mut self.last_heartbeat, every) {
            return;
        }
        let agents: Vec<(Uuid, Uuid)> = self
            .agents
            .iter()
            .map(|(id, agent)| (*id, agent.organization_id))
            .collect();
        if let Err(error) = leases::renew_all(&self.pool, &agents).await {
            tracing::warn!(%error, "worker: cannot renew its agents' leases");
            return;
        }
        self.revive_degraded().await;
    }

    /// Moves this worker's degraded agents back to idle once their leases are renewed:
    /// degraded while the worker was held up, they stayed degraded (in trouble, to the
    /// Conductor) for good, since only an HTTP heartbeat revived an agent.
    async fn revive_degraded(&mut self) {
        let degraded: Vec<Uuid> = self
            .agents
            .iter()
            .filter(|(_, agent)| agent.degraded)
            .map(|(id, _)| *id)
            .collect();
        let context = context(Actor::System("worker"), "heartbeat");
        for id in degraded {
            let command = AgentCommand::revive("heartbeats resumed", self.config.clock.now());
            match self
                .bus
                .execute::<Agent>(&id.to_string(), command, &context)
                .await
            {
                // Revived, or moved on meanwhile (quarantined, failed): the log's events
                // say which, as `follow_agent` reads them.
                Ok(_) | Err(CommandError::Domain(_)) => {
                    if let Some(agent) = self.agents.get_mut(&id) {
                        agent.degraded = false;
                    }
                }
                Err(error) => {
                    tracing::info!(agent_id = %id, %error, "worker: a degraded agent not revived yet");
                }
            }
        }
    }

    /// Fails silent agents (their tasks go back to the queue) and times out running tasks
    /// no process of this worker watches (an HTTP agent's).
    async fn sweep(&mut self) {
        let every = Duration::from_millis(self.config.check_interval_ms);
        if !Self::due(&mut self.last_sweep, every) {
            return;
        }
        // A century is "forever" and keeps the duration in range.
        let hours = self.config.transcript_retention_hours.min(876_000) as i64;
        let retention = chrono::Duration::hours(hours);
        // Bounded per sweep; what is left goes at the next one. Every worker may do it.
        if let Err(error) = transcripts::prune(&self.pool, retention, 1_000).await {
            tracing::warn!(%error, "worker: cannot prune transcripts");
        }
        let now = self.config.clock.now();
        self.degrade_silent_agents(now).await;
        let newly = match leases::expire_stale(&self.pool, self.config.stale_after_ms).await {
            Ok(stale) => stale,
            Err(error) => {
                tracing::warn!(%error, "worker: cannot check leases");
                Vec::new()
            }
        };
        let silent = |agent_id: Uuid| {
            format!(
                "agent {agent_id} sent no heartbeat for {} s",
                self.config.stale_after_ms / 1000
            )
        };
        let stale_context = context(Actor::System("worker"), "stale");
        for agent_id in &newly {
            tracing::warn!(%agent_id, "worker: {}; failing it", silent(*agent_id));
            let failed = self
                .fail_agent(*agent_id, silent(*agent_id), now, &stale_context)
                .await;
            if !failed {
                // The lease goes back to unexpired, so that a later sweep (this worker's
                // or another's) claims it again and fails the agent then: claimed once
                // and never failed, it stayed alive in the log for ever.
                if let Err(error) = leases::unexpire(&self.pool, *agent_id).await {
                    tracing::warn!(%agent_id, %error, "worker: a stale agent's lease not given back; it stays unfailed");
                }
            }
            self.agents.remove(agent_id);
        }
        // Every silent agent's tasks go back, also those a failed command or a lagging
        // queue left behind in an earlier sweep.
        let expired = match leases::expired(&self.pool).await {
            Ok(expired) => expired,
            Err(error) => {
                tracing::warn!(%error, "worker: cannot read expired leases");
                newly
            }
        };
        for agent_id in expired {
            // A task this worker still runs finishes here (its outcome is recorded).
            let held: Vec<Uuid> = self
                .queue
                .held_by(agent_id)
                .iter()
                .map(|t| t.id)
                .filter(|id| !self.running.contains_key(id))
                .collect();
            for task_id in held {
                let command = TaskCommand::FailTask {
                    error: silent(agent_id),
                    at: now,
                    jitter: jitter(),
                };
                // The silent agent's attempt only: not one the task went on to since.
                let command = as_holder(agent_id, command);
                self.task_command(task_id, command, &stale_context).await;
            }
        }
        let overdue: Vec<(Uuid, Option<Uuid>)> = self
            .queue
            .overdue(now)
            .into_iter()
            .filter(|t| !self.running.contains_key(&t.id))
            .map(|t| (t.id, t.agent_id))
            .collect();
        for (task_id, agent_id) in overdue {
            let command = TaskCommand::TimeOutTask {
                at: now,
                jitter: jitter(),
            };
            // The overdue attempt's agent: a task that went on to another meanwhile is not
            // timed out for it.
            let command = match agent_id {
                Some(agent_id) => as_holder(agent_id, command),
                None => command,
            };
            let context = context(Actor::System("worker"), "timeout");
            self.task_command(task_id, command, &context).await;
        }
        self.give_back_unstarted(now).await;
        self.mark_stalled(now).await;
        self.read_anomalies(now);
        self.flag_duplicates(now);
        self.assess_trajectories(now);
    }

    /// Starts a pass of LLM trajectory analysis over the running tasks of the
    /// organizations this worker serves, unless the last one is still going: it runs
    /// beside the worker, which never waits for the LLM.
    fn assess_trajectories(&mut self, now: chrono::DateTime<Utc>) {
        let Some(assessor) = &self.assessor else {
            return;
        };
        if self
            .trajectory_pass
            .as_ref()
            .is_some_and(|p| !p.is_finished())
        {
            return;
        }
        let tasks: Vec<TaskContext> = self
            .queue
            .active()
            .filter(|t| t.status == TaskStatus::Running && self.serves(t.organization_id))
            .map(|t| TaskContext {
                task_id: t.id,
                organization_id: t.organization_id,
                title: t.title.clone(),
                description: t.description.clone(),
                task_type: t.task_type.clone(),
                attempt: t.retry_count + 1,
                agent_id: t.agent_id,
            })
            .collect();
        if tasks.is_empty() {
            return;
        }
        self.trajectory_pass = Some(tokio::spawn(trajectory::assess_all(
            assessor.clone(),
            self.pool.clone(),
            self.bus.clone(),
            tasks,
            now,
        )));
    }

    /// The Guardian's pass: every agent's anomaly score is read and kept for the health
    /// route; an anomalous reading (or a normal one ending a run) is recorded on the agent,
    /// whose third anomalous one in a row quarantines it. Another replica's reading of the
    /// same interval is refused by the agent (`reading_too_soon`). The scores are read
    /// here, off the queue; writing them and the agents' commands run beside the worker
    /// (a round trip per agent that matters), so that dispatch does not wait for them.
    fn read_anomalies(&mut self, now: chrono::DateTime<Utc>) {
        if self.anomaly_pass.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        let every = chrono::Duration::milliseconds(
            i64::try_from(self.config.monitoring.anomaly_interval_ms).unwrap_or(i64::MAX),
        );
        if self.last_reading.is_some_and(|last| now - last < every) {
            return;
        }
        self.last_reading = Some(now);
        let readings = self
            .anomalies
            .readings(&self.queue, now, |organization| self.serves(organization));
        if readings.is_empty() {
            return;
        }
        self.anomaly_pass = Some(tokio::spawn(record_anomalies(
            self.pool.clone(),
            self.bus.clone(),
            readings,
            self.config.monitoring.min_reading_gap_ms(),
            now,
        )));
    }

    /// Starts a Conductor pass over the open tasks created since the last one
    /// ([`conductor`]), unless one is still going; it runs beside the worker.
    fn flag_duplicates(&mut self, now: chrono::DateTime<Utc>) {
        if self
            .conductor_pass
            .as_ref()
            .is_some_and(|p| !p.is_finished())
        {
            return;
        }
        let every = Duration::from_millis(self.config.monitoring.conductor_interval_ms);
        if !Self::due(&mut self.last_conductor, every) {
            return;
        }
        self.conductor_pass = Some(tokio::spawn(conductor::flag_new_duplicates(
            self.pool.clone(),
            self.bus.clone(),
            self.config.monitoring.duplicate_similarity,
            now,
        )));
    }

    /// Fails the agent, walking the status table there (an idle agent by way of
    /// `degraded`, in one transaction); an agent the table cannot fail stays as it is.
    /// `false` when the failure could not be recorded (the agent not read, or the
    /// commands not appended): the caller leaves it to the next sweep.
    async fn fail_agent(
        &self,
        agent_id: Uuid,
        reason: String,
        now: chrono::DateTime<Utc>,
        context: &CommandContext,
    ) -> bool {
        let id = agent_id.to_string();
        let status = match self.bus.load::<Agent>(&id).await {
            Ok(Some((agent, _))) => agent.status,
            Ok(None) => return true,
            Err(error) => {
                tracing::info!(%agent_id, %error, "worker: stale agent not read");
                return false;
            }
        };
        let Some(steps) = status.steps_to_failed() else {
            return true;
        };
        let commands: Vec<AgentCommand> = steps
            .into_iter()
            .map(|to| AgentCommand::ChangeAgentStatus {
                to,
                reason: Some(reason.clone()),
                force: false,
                guardian: false,
                at: now,
            })
            .collect();
        if commands.is_empty() {
            return true;
        }
        match self
            .bus
            .execute_all::<Agent>(&id, &commands, context, &|_| Ok(()))
            .await
        {
            Ok(_) => true,
            // Moved on meanwhile (a heartbeat revived it, a person terminated it).
            Err(CommandError::Domain(_)) => true,
            Err(error) => {
                tracing::info!(%agent_id, %error, "worker: stale agent not failed");
                false
            }
        }
    }

    /// Degrades the agents silent for two heartbeat intervals (each claimed by one
    /// sweeper); a failed or spawning agent stays as it is (the table has no such move).
    async fn degrade_silent_agents(&self, now: chrono::DateTime<Utc>) {
        let after = self.config.monitoring.degraded_after_ms();
        let silent = match leases::degrade_silent(&self.pool, after).await {
            Ok(silent) => silent,
            Err(error) => {
                tracing::warn!(%error, "worker: cannot check heartbeats");
                return;
            }
        };
        let context = context(Actor::System("monitor"), "heartbeats");
        for agent_id in silent {
            let reason = format!("missed 2 heartbeats: none for {} s", after / 1000);
            tracing::warn!(%agent_id, "worker: {reason}; degrading it");
            let command = AgentCommand::ChangeAgentStatus {
                to: AgentStatus::Degraded,
                reason: Some(reason),
                force: false,
                guardian: false,
                at: now,
            };
            match self
                .bus
                .execute::<Agent>(&agent_id.to_string(), command, &context)
                .await
            {
                // Degraded, or refused for good (failed, spawning: no such move).
                Ok(_) | Err(CommandError::Domain(_)) => {}
                Err(error) => {
                    // The mark goes back, so that a later sweep (this worker's or
                    // another's) claims it again: kept, the agent was never degraded for
                    // this silence.
                    tracing::info!(%agent_id, %error, "worker: silent agent not degraded");
                    if let Err(error) = leases::undegrade(&self.pool, agent_id).await {
                        tracing::warn!(%agent_id, %error, "worker: a silent agent's mark not given back; it stays undegraded");
                    }
                }
            }
        }
    }

    /// Marks stalled the running tasks whose agents showed no progress for
    /// `monitoring.stuck_after_ms`; the `stall_policy` process manager takes it from
    /// there. A task already marked (by another sweeper) is refused by the domain.
    async fn mark_stalled(&self, now: chrono::DateTime<Utc>) {
        let stalled = self
            .queue
            .stalled(now, self.config.monitoring.stuck_after_ms);
        let context = context(Actor::System("monitor"), "stalled");
        for stall in stalled {
            // As the agent seen running it, with the progress seen: a task that went on
            // to another agent meanwhile, or reported progress since the queue read it,
            // is not marked for a silence that ended.
            let command = as_holder(
                stall.agent_id,
                TaskCommand::MarkStalled {
                    idle_since: stall.idle_since,
                    progress_seen: stall.progress_seen,
                    at: now,
                },
            );
            self.task_command(stall.task_id, command, &context).await;
        }
    }

    /// Fails (to be retried) the tasks assigned longer than `start_within_ms` ago and not
    /// started. An agent that heartbeats but never heard of its assignment — the answer
    /// to its claim died with its replica — would otherwise hold the task for ever. Each
    /// is given back as the assignment the queue saw: one started or made anew since (the
    /// queue reads the log a moment behind) stays.
    async fn give_back_unstarted(&self, now: chrono::DateTime<Utc>) {
        let within = self.config.start_within_ms;
        let unstarted: Vec<(Uuid, Uuid, chrono::DateTime<Utc>)> = self
            .queue
            .unstarted(now, within)
            .into_iter()
            .filter(|t| !self.running.contains_key(&t.id))
            .filter_map(|t| Some((t.id, t.agent_id?, t.assigned_at?)))
            .collect();
        let context = context(Actor::System("worker"), "unstarted");
        for (task_id, agent_id, assigned_at) in unstarted {
            let command = as_holder(
                agent_id,
                TaskCommand::GiveBackUnstarted {
                    assigned_at,
                    error: format!(
                        "the agent did not start it within {within} ms of its assignment"
                    ),
                    at: now,
                    jitter: jitter(),
                },
            );
            self.task_command(task_id, command, &context).await;
        }
    }

    /// Hands the steering messages waiting on a task this worker runs to its command —
    /// one JSON line each in `$OMOI_STEERING_FILE` — and records their delivery, as the
    /// agent. Messages not written stay pending (and are tried again at the next one).
    async fn deliver_steering(&self, task_id: Uuid) {
        let Some(run) = self.running.get(&task_id) else {
            return;
        };
        let id = task_id.to_string();
        let task = match self.bus.load::<Task>(&id).await {
            Ok(Some((task, _))) => task,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%task_id, %error, "worker: steering not read");
                return;
            }
        };
        if task.pending_steering.is_empty() || task.assigned_agent_id != Some(run.agent_id) {
            return;
        }
        let mut lines = String::new();
        for steering in &task.pending_steering {
            match serde_json::to_string(steering) {
                Ok(line) => {
                    lines.push_str(&line);
                    lines.push('\n');
                }
                Err(error) => tracing::warn!(%error, "worker: steering not encoded"),
            }
        }
        let written = async {
            use tokio::io::AsyncWriteExt;
            let mut file = tokio::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&run.steering_file)
                .await?;
            file.write_all(lines.as_bytes()).await?;
            file.flush().await
        };
        if let Err(error) = written.await {
            tracing::warn!(%task_id, %error, "worker: steering not written");
            return;
        }
        // As the run's agent: a task reassigned since it was read keeps its messages.
        let command = as_holder(
            run.agent_id,
            TaskCommand::AcknowledgeSteering {
                steering_ids: task
                    .pending_steering
                    .iter()
                    .map(|s| s.steering_id)
                    .collect(),
                at: Utc::now(),
            },
        );
        let context = context(Actor::Agent(run.agent_id), "steering");
        self.task_command(task_id, command, &context).await;
    }

    async fn task_command(&self, task_id: Uuid, command: TaskCommand, context: &CommandContext) {
        if let Err(error) = self
            .bus
            .execute::<Task>(&task_id.to_string(), command, context)
            .await
        {
            // Another worker or the agent itself got there first.
            tracing::info!(%task_id, %error, "worker: task command not applied");
        }
    }

    fn serves(&self, organization_id: Uuid) -> bool {
        self.config.organizations.is_empty() || self.config.organizations.contains(&organization_id)
    }

    /// Assigns ready tasks, best first, to free capable agents within the caps: the pairs
    /// are chosen ([`choose`]), then committed.
    async fn dispatch(&mut self) {
        if self.work_dir.is_none() {
            return;
        }
        let now = Utc::now();
        self.claimed.forget_seen(&self.queue);
        // Only organizations that could take a task now are looked at: one with a free
        // agent, or with fewer agents than it may have (a pass registers them), below its
        // cap. Within them, only tasks this worker's agents could run: another
        // organization's backlog, or work needing a capability they lack, costs a pass
        // nothing.
        let mut agents_of: HashMap<Uuid, (usize, usize)> = HashMap::new();
        for agent in self.agents.values() {
            let (count, free) = agents_of.entry(agent.organization_id).or_insert((0, 0));
            *count += 1;
            *free += usize::from(agent.task.is_none() && !agent.quarantined);
        }
        let most = self.config.agents_per_organization;
        let has_agents = |organization: &Uuid| {
            self.serves(*organization)
                && agents_of
                    .get(organization)
                    .is_none_or(|(count, free)| *free > 0 || *count < most)
        };
        let organizations: Vec<Uuid> = self.queue.organizations().filter(has_agents).collect();
        // Nor those holding as many tasks as they may (held tasks this worker's queue has
        // not read back count): their backlogs are not ranked at all.
        let unseen_held = self.claimed.held();
        let mut organization_caps = HashMap::new();
        let mut places_left = HashMap::new();
        for organization in organizations {
            let cap = self.organization_cap(organization).await;
            let held = self.queue.active_in(organization).organization
                + unseen_held.get(&organization).map_or(0, |c| c.organization);
            if held < cap {
                organization_caps.insert(organization, cap);
                places_left.insert(organization, cap - held);
            }
        }
        let candidates = self.queue.ready_for(
            |organization| organization_caps.contains_key(&organization),
            &self.capabilities,
            now,
            &self.config.score,
        );
        if candidates.is_empty() {
            return;
        }
        self.ensure_agents(&candidates, &agents_of, &places_left)
            .await;
        let limits = Limits {
            project_concurrency: self.config.project_concurrency,
            organization_caps,
            unseen_held,
        };
        let free: Vec<FreeAgent> = self
            .agents
            .iter()
            .filter(|(_, agent)| agent.task.is_none() && !agent.quarantined)
            .map(|(id, agent)| FreeAgent {
                id: *id,
                organization_id: agent.organization_id,
                capabilities: self.capabilities.clone(),
            })
            .collect();
        // A task assigned by this worker and not read back yet is no candidate (skipped
        // as it comes, rather than looked for among every candidate).
        let unclaimed = candidates.filter(|candidate| !self.claimed.contains(candidate.task_id));
        let picks = choose(&self.queue, unclaimed, &free, &limits, |organization| {
            self.serves(organization)
        });
        self.commit(picks, now);
    }

    /// Assigns and starts each pick, each on a task of its own: the worker does not wait
    /// for the commits (a task created meanwhile is dispatched at once, not after them);
    /// each agent is reserved, and each task claimed, while its assignment is in flight.
    fn commit(&mut self, picks: Vec<Pick>, now: chrono::DateTime<Utc>) {
        for pick in picks {
            let Some(task) = self.queue.task(pick.task_id).cloned() else {
                continue;
            };
            let agent_id = pick.agent_id;
            if let Some(agent) = self.agents.get_mut(&agent_id) {
                agent.task = Some(task.id);
            }
            self.claimed.reserve(&task, agent_id, None);
            let bus = self.bus.clone();
            self.assigning.spawn(async move {
                // An in-process agent starts at once: assignment and start are one
                // transaction, not two. It takes the task as itself, as an HTTP agent's
                // claim does, so the audit of the agent shows every step it took.
                let commands = [
                    TaskCommand::AssignTask { agent_id, at: now },
                    TaskCommand::StartTask { at: now },
                ];
                let context = context(Actor::Agent(agent_id), "claim");
                let result = match bus
                    .execute_all::<Task>(&task.id.to_string(), &commands, &context, &|_| Ok(()))
                    .await
                {
                    // The connection went away as the pair committed: if it did, the task
                    // is running under the agent and must be run (else nothing would ever
                    // run or fail it: the agent's lease stays fresh).
                    Err(CommandError::Unavailable(cause)) => {
                        committed_after_all(&bus, task.id, agent_id, now)
                            .await
                            .ok_or(CommandError::Unavailable(cause))
                    }
                    result => result,
                };
                (agent_id, task, result)
            });
        }
    }

    /// Waits for the assignments in flight and settles each.
    async fn settle_assignments(&mut self) {
        while let Some(joined) = self.assigning.join_next().await {
            self.settle_joined(joined);
        }
    }

    fn settle_joined(&mut self, joined: Result<Assignment, tokio::task::JoinError>) {
        match joined {
            Ok(assignment) => self.settle(assignment),
            // Its task panicked: the agent it reserved and the task it claimed stay so
            // until the worker restarts; say so loudly.
            Err(error) => tracing::error!(%error, "worker: an assignment's task failed"),
        }
    }

    /// An assignment committed (its task launched) or refused (its agent freed).
    fn settle(&mut self, (agent_id, task, result): Assignment) {
        match result {
            Ok(committed) => {
                self.claimed
                    .committed(task.id, u64::try_from(committed.version).unwrap_or(0));
                if !self.stops_while_assigning.launches(
                    task.id,
                    i64::try_from(committed.version).unwrap_or(i64::MAX),
                ) {
                    // Cancelled or taken away right after it was assigned: nothing to run.
                    tracing::debug!(task_id = %task.id, "worker: stopped before its run started");
                    if let Some(agent) = self.agents.get_mut(&agent_id) {
                        agent.task = None;
                    }
                    return;
                }
                let attempt = committed.state.retry_count + 1;
                self.launch(agent_id, task, attempt);
            }
            Err(error) => {
                self.stops_while_assigning.forget(task.id);
                self.claimed.release(task.id);
                // Taken by another worker, cancelled, or its retry is not due after all
                // (a domain refusal); or the database is in trouble.
                match error {
                    CommandError::Domain(error) => {
                        tracing::debug!(task_id = %task.id, %error, "worker: not assigned");
                    }
                    error => {
                        tracing::warn!(task_id = %task.id, %error, "worker: cannot assign");
                    }
                }
                if let Some(agent) = self.agents.get_mut(&agent_id) {
                    agent.task = None;
                }
            }
        }
    }

    /// How many tasks the organization's agents may hold at once: its plan's
    /// `concurrent_agents`, or the configured cap without plans.
    async fn organization_cap(&mut self, organization_id: Uuid) -> usize {
        let Some(plans) = &self.config.plans else {
            return self.config.organization_concurrency;
        };
        if let Some((cap, until)) = self.caps.get(&organization_id) {
            if until.is_none_or(|until| Utc::now() < until) {
                return *cap;
            }
        }
        let account = match self
            .bus
            .load::<BillingAccount>(&organization_id.to_string())
            .await
        {
            Ok(loaded) => loaded.map(|(account, _)| account).unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, %organization_id, "worker: cannot read the billing account");
                return 0;
            }
        };
        let cap = plans.concurrency_cap(&account, Utc::now());
        let until = account.suspend_at.filter(|at| *at > Utc::now());
        self.caps.insert(organization_id, (cap, until));
        cap
    }

    /// Registers agents for organizations with more ready tasks they could run now (no
    /// more than their places left under the cap) than free agents, up to
    /// `agents_per_organization` each, concurrently. `agents_of` holds each
    /// organization's agents (how many, how many are free), `places_left` the tasks each
    /// may still take. Agents at work count as taken: a task ready while an
    /// organization's one agent runs another gets a second agent if the plan lets it run
    /// beside (before, only once more tasks were ready than the organization had agents).
    async fn ensure_agents(
        &mut self,
        candidates: &Ranked,
        agents_of: &HashMap<Uuid, (usize, usize)>,
        places_left: &HashMap<Uuid, usize>,
    ) {
        // Per organization: the ready tasks a new agent could run (every candidate: they
        // are the served organizations' tasks this worker's agents could run), and whether
        // one of them suits none of the agents it has (a validation whose implementer is
        // its only one, a task a Guardian took from its only one).
        let most = self.config.agents_per_organization;
        let own = |organization: &Uuid| agents_of.get(organization).map_or(0, |(count, _)| *count);
        let free = |organization: &Uuid| agents_of.get(organization).map_or(0, |(_, free)| *free);
        // An organization with all the agents it may have gets none: its candidates
        // (most of a pass's, once the agents are registered) are not looked at.
        let short = |organization: &Uuid| own(organization) < most;
        let mut wanted: HashMap<Uuid, (usize, bool)> = HashMap::new();
        for candidate in candidates.unordered() {
            let Some(task) = self
                .queue
                .task(candidate.task_id)
                .filter(|task| short(&task.organization_id) && !self.claimed.contains(task.id))
            else {
                continue;
            };
            // Only a validation (its implementer) or a task a Guardian took from an agent
            // (that agent) can refuse an agent the organization has: asked of those
            // alone, on the worker's hot path.
            let unsuited = (task.validates.is_some() || task.reassigned_from.is_some())
                && !self.agents.iter().any(|(id, agent)| {
                    task.suits(agent.organization_id, Some(*id), &self.capabilities)
                });
            let entry = wanted.entry(task.organization_id).or_insert((0, false));
            entry.0 += 1;
            entry.1 |= unsuited;
        }
        let mut registrations = Vec::new();
        for (organization_id, (ready, unsuited)) in wanted {
            let ready = ready.min(places_left.get(&organization_id).copied().unwrap_or(0));
            let working = own(&organization_id) - free(&organization_id);
            let own = own(&organization_id);
            let needed = if unsuited {
                (working + ready).max(own + 1)
            } else {
                working + ready
            };
            let target = needed.min(most);
            registrations.extend((own..target).map(|n| (organization_id, n + 1)));
        }
        if registrations.is_empty() {
            return;
        }
        let this = &*self;
        let registered = futures_util::future::join_all(registrations.into_iter().map(
            |(organization_id, number)| async move {
                (
                    organization_id,
                    this.register(organization_id, number).await,
                )
            },
        ))
        .await;
        for (organization_id, id) in registered {
            if let Some(id) = id {
                self.agents.insert(
                    id,
                    LocalAgent {
                        organization_id,
                        task: None,
                        quarantined: false,
                        degraded: false,
                    },
                );
            }
        }
        // New agents' leases start now.
        self.last_heartbeat = None;
        self.heartbeat().await;
    }

    async fn register(&self, organization_id: Uuid, number: usize) -> Option<Uuid> {
        let id = Uuid::now_v7();
        let now = Utc::now();
        let context = context(Actor::System("worker"), "register");
        let register = AgentCommand::RegisterAgent {
            agent_id: id,
            organization_id,
            project_id: None,
            name: Some(format!("worker-{}-{number}", &id.simple().to_string()[..8])),
            agent_type: AgentType::Worker,
            capabilities: self.config.capabilities.clone(),
            capacity: Some(1),
            at: now,
        };
        let ready = AgentCommand::ChangeAgentStatus {
            to: AgentStatus::Idle,
            reason: Some("in-process agent of a worker".into()),
            force: false,
            guardian: false,
            at: now,
        };
        if let Err(error) = self
            .bus
            .execute_all::<Agent>(&id.to_string(), &[register, ready], &context, &|_| Ok(()))
            .await
        {
            tracing::warn!(%error, %organization_id, "worker: cannot register an agent");
            return None;
        }
        Some(id)
    }

    fn launch(&mut self, agent_id: Uuid, task: QueuedTask, attempt: u32) {
        let Some(work_dir) = &self.work_dir else {
            return;
        };
        self.runs_launched += 1;
        let directory = work_dir.join(format!("{}-{attempt}-{}", task.id, self.runs_launched));
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            agent.task = Some(task.id);
        }
        let (cancel, cancelled) = watch::channel(false);
        self.running.insert(
            task.id,
            Running {
                cancel,
                agent_id,
                steering_file: directory.join(STEERING_FILE),
            },
        );
        let work = match task.validates {
            Some(_) => &self.config.validate,
            None => &self.config.work,
        };
        let run = Run {
            command: match work {
                Work::Command(command) => command.clone(),
                Work::Nothing => String::new(),
            },
            directory,
            progress_interval: Duration::from_millis(self.config.progress_interval_ms),
            attempt,
        };
        let bus = self.bus.clone();
        let nothing = *work == Work::Nothing;
        let done = self.done.clone();
        tokio::spawn(async move {
            let kept = run_task(&bus, agent_id, &task, &run, nothing, cancelled).await;
            let _ = done.send(Finished {
                agent: agent_id,
                task: task.id,
                kept,
            });
        });
    }
}

/// `command`, a step of the attempt `agent_id` runs, decided only while it holds the task.
fn as_holder(agent_id: Uuid, command: TaskCommand) -> TaskCommand {
    // An in-process agent runs one task at a time, to its end: no earlier run of its
    // reports after the task was assigned to it again.
    TaskCommand::AsHolder {
        agent_id,
        assignment: None,
        command: Box::new(command),
    }
}

/// Writes the lines of an attempt to its transcript as they come: whatever has piled up
/// since the last write (up to a write's worth) goes in one statement. Ends when the run
/// has closed its side, after the last line is written.
async fn transcribe(
    pool: &PgPool,
    attempt: transcripts::Attempt,
    mut lines: mpsc::Receiver<String>,
) {
    let mut batch = Vec::with_capacity(transcripts::MAX_WRITE_LINES);
    while lines
        .recv_many(&mut batch, transcripts::MAX_WRITE_LINES)
        .await
        > 0
    {
        if let Err(error) = transcripts::append(pool, attempt, &batch).await {
            // The run matters more than its transcript: say so and keep draining.
            tracing::warn!(task_id = %attempt.task_id, %error, lines = batch.len(),
                "worker: transcript lines not written");
        }
        batch.clear();
    }
}

/// Runs the (started) task and records how it ended — as its agent. Returns the
/// attempt's directory when it is kept (the attempt did not complete).
async fn run_task(
    bus: &CommandBus,
    agent_id: Uuid,
    task: &QueuedTask,
    run: &Run,
    nothing: bool,
    cancelled: watch::Receiver<bool>,
) -> Option<PathBuf> {
    let id = task.id.to_string();
    let context = context(Actor::Agent(agent_id), "run");
    let outcome = if nothing {
        Outcome::Completed { output: Vec::new() }
    } else {
        let (progress, mut lines) = mpsc::channel::<String>(4);
        let (transcript, written) = mpsc::channel::<String>(transcripts::MAX_WRITE_LINES);
        let reporter = async {
            while let Some(message) = lines.recv().await {
                let command = as_holder(agent_id, TaskCommand::ReportProgress { message });
                if let Err(error) = bus.execute::<Task>(&id, command, &context).await {
                    tracing::debug!(task_id = %task.id, %error, "worker: progress not recorded");
                }
            }
        };
        let attempt = transcripts::Attempt {
            task_id: task.id,
            attempt: run.attempt,
            organization_id: task.organization_id,
        };
        let sinks = Sinks {
            progress,
            transcript,
        };
        let (outcome, (), ()) = tokio::join!(
            execute(task, run, sinks, cancelled.clone()),
            reporter,
            transcribe(bus.pool(), attempt, written)
        );
        outcome
    };
    let at = Utc::now();
    let kept =
        (!nothing && !matches!(outcome, Outcome::Completed { .. })).then(|| run.directory.clone());
    let validation = task.validates.is_some();
    let command = match outcome {
        Outcome::Completed { output } if validation => {
            if !nothing {
                let _ = tokio::fs::remove_dir_all(&run.directory).await;
            }
            let feedback = output.last().map(|line| clipped(line, MAX_TEXT_CHARS));
            TaskCommand::GiveVerdict {
                verdict: Verdict {
                    passed: true,
                    feedback,
                },
                at,
            }
        }
        // The check ran and said no: the work goes back with what it said.
        Outcome::Exited { error } if validation => TaskCommand::GiveVerdict {
            verdict: Verdict {
                passed: false,
                feedback: Some(clipped(&error, MAX_TEXT_CHARS)),
            },
            at,
        },
        Outcome::Completed { output } => {
            if !nothing {
                let _ = tokio::fs::remove_dir_all(&run.directory).await;
            }
            TaskCommand::CompleteTask {
                result: json!({ "exit_code": 0, "output": output }),
                at,
            }
        }
        Outcome::Failed { error } | Outcome::Exited { error } => TaskCommand::FailTask {
            error: clipped(&error, MAX_PROGRESS_CHARS),
            at,
            jitter: jitter(),
        },
        Outcome::TimedOut { .. } => TaskCommand::TimeOutTask {
            at,
            jitter: jitter(),
        },
        Outcome::Stopped => return kept,
    };
    // This run's attempt only: a task reassigned while it ran (to another agent) keeps
    // the next attempt's outcome to that attempt.
    let command = as_holder(agent_id, command);
    record_outcome(bus, &id, command, &context, cancelled).await;
    kept
}

/// How often a completion held back by open blocking discoveries is tried again.
const DISCOVERIES_OPEN_PAUSE: Duration = Duration::from_secs(1);

/// Records a run's outcome, trying again (backing off as the projection runner does)
/// until it commits, the task refuses it (the attempt is no longer this agent's, or it
/// ended otherwise), or the run is stopped (the task cancelled or taken away, the worker
/// stopping). Until then the run has not finished, so its agent takes no other task: an
/// outcome given up on a database error left the task running under an agent the worker
/// renews the lease of and gives more work, for ever. A fault no retry mends (a corrupt
/// history) keeps the agent on it, saying so at every try — as every other command on
/// that task fails too. A completion the task holds back while blocking discoveries are
/// open (reported while the command ran) waits for them, tried again every second: the
/// attempt is still this agent's, and freeing the agent left the task running with
/// nobody to complete it, holding a place under the caps for ever.
async fn record_outcome(
    bus: &CommandBus,
    id: &str,
    command: TaskCommand,
    context: &CommandContext,
    mut stopped: watch::Receiver<bool>,
) {
    let mut tries = 0;
    loop {
        match bus.execute::<Task>(id, command.clone(), context).await {
            Ok(_) => return,
            Err(CommandError::Domain(TaskError::DiscoveriesOpen(open))) => {
                tracing::info!(
                    task_id = id,
                    open = open.len(),
                    "worker: completion waits for the task's blocking discoveries"
                );
                tokio::select! {
                    () = tokio::time::sleep(DISCOVERIES_OPEN_PAUSE) => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
            }
            Err(CommandError::Domain(refusal)) => {
                tracing::info!(task_id = id, %refusal, "worker: outcome refused; the attempt moved on");
                return;
            }
            Err(error) => {
                tries += 1;
                let pause = omoi_projections::runner::retry_pause(tries);
                tracing::warn!(task_id = id, %error, tries, ?pause, "worker: outcome not recorded yet; trying again");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop read while the assignment was committing keeps its run from starting only
    /// when it came after the assignment in the task's history; either way it is
    /// forgotten once the assignment settled.
    #[test]
    fn a_stop_read_while_assigning_stops_the_run_only_when_it_came_after_the_assignment() {
        let (task, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut stops = StopsWhileAssigning::default();
        assert!(stops.launches(task, 4), "no stop: the run starts");

        // The assignment left the task at version 4 (assigned 3, started 4).
        stops.note(task, 5);
        assert!(!stops.launches(task, 4), "cancelled after the assignment");
        assert!(stops.launches(task, 4), "forgotten once settled");

        // A stop of an earlier attempt, read late, is history.
        stops.note(task, 2);
        assert!(stops.launches(task, 4));

        // The latest counts, whatever order they were read in; other tasks are apart.
        stops.note(task, 6);
        stops.note(task, 2);
        stops.note(other, 9);
        assert!(!stops.launches(task, 4));
        stops.forget(other);
        assert!(stops.launches(other, 1));
    }
}
