//! The command bus: the one place where a command becomes events.
//!
//! For each command it loads the aggregate, lets the caller check the aggregate's scope
//! before anything is decided (authorization hooks in here), handles the command (the
//! aggregates are cqrs-es aggregates), and commits the events with the request's metadata.
//! Three things cqrs-es leaves to us are done here:
//!
//! * **Aggregates come from memory.** A command does not fold the aggregate's whole
//!   history: the bus keeps recently used aggregates ([`crate::cache`]) and decides on the
//!   kept copy without reading the log first (`trust_kept`). The append's sequence check
//!   proves the copy was current; when another process had moved the aggregate on, the
//!   append is refused and the command is decided again, at once, on the copy brought up
//!   to date by the events after it. A refusal or a command with nothing to record
//!   proves nothing, so those are decided again on the log's state before they are
//!   answered. Either way a command's cost does not grow with the history.
//! * **Concurrent commands share a transaction.** Appends go through [`crate::group`]:
//!   commands on different aggregates that arrive together commit in one statement, each
//!   with its own optimistic check and outcome.
//! * **Conflicts are retried.** cqrs-es detects a concurrent append (unique key on
//!   `(aggregate_type, aggregate_id, sequence)`) but gives up at once; we reload and
//!   re-handle, a bounded number of times with jittered exponential backoff.
//! * **Contention inside one process never reaches the database.** Commands on the same
//!   aggregate are serialized by a striped async lock, so only writers in *other*
//!   processes can conflict.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use chrono::Utc;
use cqrs_es::event_sink::EventSink;

use crate::append::{AppendError, Rows};
use crate::cache::{self, AggregateCache};
use crate::group::{GroupCommit, GroupCommitConfig};
use crate::log::StoredEvent;
use cqrs_es::Aggregate;
use omoi_domain::common::{Scope, Scoped};
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::Mutex;
use uuid::Uuid;

/// Who caused a command. Written into every event's metadata as `kind:id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    User(Uuid),
    Agent(Uuid),
    ApiKey(Uuid),
    /// A part of omoi itself (`worker`, `cli`, …).
    System(&'static str),
    Stripe,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::Agent(id) => write!(f, "agent:{id}"),
            Self::ApiKey(id) => write!(f, "api_key:{id}"),
            Self::System(name) => write!(f, "system:{name}"),
            Self::Stripe => f.write_str("stripe"),
        }
    }
}

impl Actor {
    /// Whether `written` — an event's metadata `actor`, as [`fmt::Display`] wrote it —
    /// names this actor.
    pub fn wrote(&self, written: &str) -> bool {
        match self {
            Self::System(name) => written.strip_prefix("system:") == Some(*name),
            other => written == other.to_string(),
        }
    }
}

/// Where a command comes from; becomes the metadata of every event it produces.
#[derive(Debug, Clone)]
pub struct CommandContext {
    pub actor: Actor,
    pub request_id: String,
    /// Groups everything one user action caused, across aggregates.
    pub correlation_id: Uuid,
    /// The event that directly caused this command, as [`StoredEvent::reference`]
    /// (`Spec/<id>/<sequence>`), if an event did.
    pub causation_id: Option<String>,
}

impl CommandContext {
    pub fn new(actor: Actor, request_id: impl Into<String>) -> Self {
        Self {
            actor,
            request_id: request_id.into(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
        }
    }

    /// The context of a command `event` caused (a process manager's): the event as its
    /// cause, the event's correlation carried on, and the cause as the request id.
    pub fn caused_by(actor: Actor, event: &StoredEvent) -> Self {
        let correlation_id = event
            .metadata
            .correlation_id()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(Uuid::now_v7);
        let cause = event.reference();
        Self {
            actor,
            request_id: cause.clone(),
            correlation_id,
            causation_id: Some(cause),
        }
    }

    fn metadata(&self, scope: Option<Scope>) -> HashMap<String, String> {
        let mut metadata = HashMap::with_capacity(8);
        if let Some(scope) = scope {
            metadata.insert("organization_id".into(), scope.organization_id.to_string());
            if let Some(project_id) = scope.project_id {
                metadata.insert("project_id".into(), project_id.to_string());
            }
        }
        metadata.insert("actor".into(), self.actor.to_string());
        metadata.insert("request_id".into(), self.request_id.clone());
        metadata.insert("correlation_id".into(), self.correlation_id.to_string());
        if let Some(causation_id) = &self.causation_id {
            metadata.insert("causation_id".into(), causation_id.clone());
        }
        metadata.insert("occurred_at".into(), Utc::now().to_rfc3339());
        metadata
    }
}

/// What a successful command wrote, and the aggregate's state after it.
#[derive(Debug, Clone)]
pub struct Committed<A> {
    pub aggregate_id: String,
    /// The aggregate's sequence number after the command (its number of events).
    pub version: usize,
    /// How many events the command appended (0 when it had nothing to record).
    pub appended: usize,
    pub state: A,
}

/// Why a command was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The domain refused it; the variant says which rule.
    #[error(transparent)]
    Domain(E),
    /// The caller's scope check refused the aggregate.
    #[error("refused by the scope check: {0:?}")]
    Refused(Refusal),
    /// Other writers kept changing the aggregate through every retry.
    #[error("the aggregate kept changing concurrently ({attempts} attempts); try again")]
    Conflict { attempts: u32 },
    /// The database could not be reached in time.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a corrupt event.
    #[error("internal error: {0}")]
    Internal(String),
}

/// How often and how patiently conflicting commands are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 16,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(250),
        }
    }
}

impl RetryPolicy {
    /// Full-jitter exponential backoff before attempt `attempt + 1`.
    fn delay(&self, attempt: u32) -> Duration {
        let exponential = self.base_delay.saturating_mul(1 << attempt.min(16));
        let ceiling = exponential.min(self.max_delay);
        ceiling.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
    }
}

const LOCK_STRIPES: usize = 1024;

/// How a [`CommandBus`] works; the default is what `omoi serve` runs.
#[derive(Debug, Clone, Copy)]
pub struct BusConfig {
    pub retry: RetryPolicy,
    /// Aggregates kept in memory (0: none; every command folds its aggregate's history).
    pub cached: usize,
    /// Decide on a kept aggregate without reading the events other processes appended
    /// since (the append checks it); `false` reads them first, one more round trip per
    /// command.
    pub trust_kept: bool,
    pub group: GroupCommitConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            cached: cache::DEFAULT_CAPACITY,
            trust_kept: true,
            group: GroupCommitConfig::default(),
        }
    }
}

/// Executes commands against the Postgres event store.
pub struct CommandBus {
    pool: PgPool,
    retry: RetryPolicy,
    trust_kept: bool,
    stripes: Vec<Mutex<()>>,
    /// Bumped after every commit that appended events (by the appender, which knows it
    /// even when the caller is gone): wakes projectors in this process.
    commits: tokio::sync::watch::Sender<u64>,
    /// Aggregates as this process last committed or loaded them.
    cache: AggregateCache,
    appender: GroupCommit,
}

/// Why a scope check refused an aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not even know it exists (another tenant's): answer as if missing.
    NotVisible,
    /// The caller sees it but may not do this to it.
    NotPermitted,
}

/// What the scope check sees: the aggregate's scope before the command (`None` when it
/// does not exist yet).
pub trait ScopeCheck: Fn(Option<Scope>) -> Result<(), Refusal> + Send + Sync {}
impl<F: Fn(Option<Scope>) -> Result<(), Refusal> + Send + Sync> ScopeCheck for F {}

impl CommandBus {
    pub fn new(pool: PgPool, retry: RetryPolicy) -> Self {
        Self::configured(
            pool,
            BusConfig {
                retry,
                ..BusConfig::default()
            },
        )
    }

    pub fn configured(pool: PgPool, config: BusConfig) -> Self {
        let commits = tokio::sync::watch::channel(0).0;
        Self {
            appender: GroupCommit::new(pool.clone(), config.group, commits.clone()),
            pool,
            retry: config.retry,
            trust_kept: config.trust_kept,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            commits,
            cache: AggregateCache::new(config.cached),
        }
    }

    /// Changes after every commit that appended events.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn stripe<A: Aggregate>(&self, aggregate_id: &str) -> &Mutex<()> {
        &self.stripes[self.stripe_index::<A>(aggregate_id)]
    }

    fn stripe_index<A: Aggregate>(&self, aggregate_id: &str) -> usize {
        let mut hasher = DefaultHasher::new();
        (A::TYPE, aggregate_id).hash(&mut hasher);
        (hasher.finish() as usize) % LOCK_STRIPES
    }

    /// Executes `command` on aggregate `aggregate_id` with no scope restriction.
    pub async fn execute<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Committed<A>, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: Send,
    {
        self.execute_checked::<A>(aggregate_id, command, context, &|_| Ok(()))
            .await
    }

    /// Executes `command` after `check` has accepted the aggregate's current scope.
    pub async fn execute_checked<A>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
        check: &dyn ScopeCheck,
    ) -> Result<Committed<A>, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: Send,
    {
        self.execute_all::<A>(aggregate_id, std::slice::from_ref(&command), context, check)
            .await
    }

    /// Executes `commands` one after the other on one aggregate and commits all their
    /// events in one transaction, or none: each command is decided on the state the
    /// previous ones left (an in-process agent is assigned a task and starts it at once).
    pub async fn execute_all<A>(
        &self,
        aggregate_id: &str,
        commands: &[A::Command],
        context: &CommandContext,
        check: &dyn ScopeCheck,
    ) -> Result<Committed<A>, CommandError<A::Error>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: Send,
    {
        let _serialized = self.stripe::<A>(aggregate_id).lock().await;
        let mut attempt = 0;
        let mut trust = self.trust_kept;
        loop {
            attempt += 1;
            match self
                .try_execute::<A>(aggregate_id, commands, context, check, trust)
                .await
            {
                Err(AttemptError::Conflict { kept }) if attempt < self.retry.max_attempts => {
                    tracing::debug!(
                        aggregate = A::TYPE,
                        aggregate_id,
                        attempt,
                        kept,
                        "conflict; retrying"
                    );
                    trust = false;
                    // A kept copy that fell behind is not contention: decide again at once.
                    if !kept {
                        tokio::time::sleep(self.retry.delay(attempt)).await;
                    }
                }
                Err(AttemptError::Conflict { .. }) => {
                    return Err(CommandError::Conflict { attempts: attempt })
                }
                Err(AttemptError::Failed(error)) => return Err(error),
                // The appender announced the commit.
                Ok(committed) => return Ok(committed),
            }
        }
    }

    async fn try_execute<A>(
        &self,
        aggregate_id: &str,
        commands: &[A::Command],
        context: &CommandContext,
        check: &dyn ScopeCheck,
        trust: bool,
    ) -> Result<Committed<A>, AttemptError<A::Error>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone,
    {
        let decided = self
            .decide::<A>(aggregate_id, commands, check, trust)
            .await?;
        let mut rows = Rows::new();
        decided
            .add_to(&mut rows, context)
            .map_err(|e| append_failure(e, decided.kept))?;
        self.appender
            .append(rows)
            .await
            .map_err(|e| append_failure(e, decided.kept))?;
        self.keep(&decided);
        Ok(decided.committed())
    }

    /// Loads the aggregate, lets `check` see its scope, and decides `commands` in turn:
    /// the events they would append, and the state after them. Nothing is written.
    ///
    /// With `trust`, a kept copy is used as it is when it leads to events (the append will
    /// prove it current); a refusal or no events on it are decided again on the log's
    /// state, which the append cannot check.
    async fn decide<A>(
        &self,
        aggregate_id: &str,
        commands: &[A::Command],
        check: &dyn ScopeCheck,
        trust: bool,
    ) -> Result<Decided<A>, AttemptError<A::Error>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone,
    {
        if trust {
            if let Some((state, version)) = self.cache.get::<A>(A::TYPE, aggregate_id) {
                match Self::decide_on(aggregate_id, state, version, commands, check).await {
                    Ok(decided) if !decided.events.is_empty() => {
                        return Ok(Decided {
                            kept: true,
                            ..decided
                        })
                    }
                    _ => {}
                }
            }
        }
        let (state, version) = self
            .current::<A>(aggregate_id)
            .await
            .map_err(AttemptError::Failed)?;
        Self::decide_on(aggregate_id, state, version, commands, check).await
    }

    /// Decides `commands` in turn on `state`, the aggregate after its first `version` events.
    async fn decide_on<A>(
        aggregate_id: &str,
        mut state: A,
        version: usize,
        commands: &[A::Command],
        check: &dyn ScopeCheck,
    ) -> Result<Decided<A>, AttemptError<A::Error>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone,
    {
        if let Err(refusal) = check(state.scope()) {
            return Err(AttemptError::Failed(CommandError::Refused(refusal)));
        }
        // The sink applies each event as it is written, so the state is the new one.
        let sink = EventSink::default();
        for command in commands {
            state
                .handle(command.clone(), &(), &sink)
                .await
                .map_err(|e| AttemptError::Failed(CommandError::Domain(e)))?;
        }
        Ok(Decided {
            aggregate_id: aggregate_id.to_string(),
            version,
            events: sink.collect().await,
            state,
            kept: false,
        })
    }

    /// The aggregate and its version as the log has them now: the kept state (if any)
    /// with the events after it folded on, kept again when they moved it.
    async fn current<A>(&self, aggregate_id: &str) -> Result<(A, usize), CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
    {
        let (mut state, mut version) = self
            .cache
            .get::<A>(A::TYPE, aggregate_id)
            .unwrap_or_default();
        let tail = crate::log::aggregate_tail(
            &self.pool,
            A::TYPE,
            aggregate_id,
            i64::try_from(version).unwrap_or(i64::MAX),
        )
        .await
        .map_err(database_failure)?;
        let moved = !tail.is_empty();
        for (sequence, payload) in tail {
            let event: A::Event = serde_json::from_value(payload).map_err(|e| {
                CommandError::Internal(format!(
                    "corrupt event {}/{aggregate_id}/{sequence}: {e}",
                    A::TYPE
                ))
            })?;
            state.apply(event);
            version = usize::try_from(sequence).unwrap_or(usize::MAX);
        }
        if moved {
            self.cache
                .put(A::TYPE, aggregate_id, state.clone(), version);
        }
        Ok((state, version))
    }

    /// Keeps what a command committed: the next command on the aggregate reads no history.
    fn keep<A: Aggregate + Clone + 'static>(&self, decided: &Decided<A>) {
        if !decided.events.is_empty() {
            let version = decided.version + decided.events.len();
            self.cache.put(
                A::TYPE,
                &decided.aggregate_id,
                decided.state.clone(),
                version,
            );
        }
    }

    /// Executes one command on each of two aggregates and commits both commands' events in
    /// one transaction, or neither: e.g. approving a spec's design and counting the
    /// workflow it starts on the organization's billing account. A conflict on either
    /// retries both; a refusal of either writes nothing.
    pub async fn execute_pair<A, B>(
        &self,
        first: Part<'_, A>,
        second: Part<'_, B>,
        context: &CommandContext,
    ) -> Result<(Committed<A>, Committed<B>), PairError<A::Error, B::Error>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        B: Aggregate<Services = ()> + Scoped + Clone + 'static,
        B::Command: Clone + Send,
    {
        let (low, high) = {
            let one = self.stripe_index::<A>(first.aggregate_id);
            let two = self.stripe_index::<B>(second.aggregate_id);
            (one.min(two), one.max(two))
        };
        let _low = self.stripes[low].lock().await;
        let _high = match high == low {
            true => None,
            false => Some(self.stripes[high].lock().await),
        };
        let mut attempt = 0;
        let mut trust = self.trust_kept;
        loop {
            attempt += 1;
            let one = self
                .decide::<A>(
                    first.aggregate_id,
                    std::slice::from_ref(&first.command),
                    first.check,
                    trust,
                )
                .await
                .map_err(|e| e.into_pair(PairError::First))?;
            let two = self
                .decide::<B>(
                    second.aggregate_id,
                    std::slice::from_ref(&second.command),
                    second.check,
                    trust,
                )
                .await
                .map_err(|e| e.into_pair(PairError::Second))?;
            let mut rows = Rows::new();
            let appended = match one
                .add_to(&mut rows, context)
                .and_then(|()| two.add_to(&mut rows, context))
            {
                // The appender announces the commit (nothing to append: no commit).
                Ok(()) => self.appender.append(rows).await,
                Err(error) => Err(error),
            };
            match appended {
                Ok(()) => {
                    self.keep(&one);
                    self.keep(&two);
                    return Ok((one.committed(), two.committed()));
                }
                Err(AppendError::Conflict) if attempt < self.retry.max_attempts => {
                    trust = false;
                    if !(one.kept || two.kept) {
                        tokio::time::sleep(self.retry.delay(attempt)).await;
                    }
                }
                Err(AppendError::Conflict) => {
                    return Err(PairError::Conflict { attempts: attempt })
                }
                Err(other) => {
                    return Err(match append_failure::<A::Error>(other, false) {
                        AttemptError::Failed(CommandError::Unavailable(cause)) => {
                            PairError::Unavailable(cause)
                        }
                        _ => PairError::Internal("the pair could not be appended".into()),
                    })
                }
            }
        }
    }

    /// The aggregate's state and version as this bus keeps it, without reading anything:
    /// `None` when it keeps none. It may lag another process's appends; compare its
    /// version with the log's before trusting it.
    pub fn kept<A>(&self, aggregate_id: &str) -> Option<(A, usize)>
    where
        A: Aggregate + Clone + 'static,
    {
        self.cache.get::<A>(A::TYPE, aggregate_id)
    }

    /// The aggregate's current state and version, or `None` when it has no events.
    pub async fn load<A>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<(A, usize)>, CommandError<A::Error>>
    where
        A: Aggregate + Clone + 'static,
    {
        let (state, version) = self.current::<A>(aggregate_id).await?;
        Ok((version > 0).then_some((state, version)))
    }
}

enum AttemptError<E: std::error::Error> {
    /// Another writer appended first; `kept`: the command was decided on a kept copy.
    Conflict {
        kept: bool,
    },
    Failed(CommandError<E>),
}

impl<E: std::error::Error> AttemptError<E> {
    /// As the error of one side of a pair (a conflict while loading cannot happen: loads
    /// do not conflict).
    fn into_pair<P>(self, side: impl FnOnce(CommandError<E>) -> P) -> P {
        match self {
            Self::Failed(error) => side(error),
            Self::Conflict { .. } => side(CommandError::Conflict { attempts: 1 }),
        }
    }
}

/// A database error of a command: the database is away (503) or it failed (500).
fn database_failure<E: std::error::Error>(error: sqlx::Error) -> CommandError<E> {
    if crate::db::is_unavailable(&error) {
        CommandError::Unavailable(error.to_string())
    } else {
        CommandError::Internal(error.to_string())
    }
}

/// A failed append, for the retry loop: a conflict retries; the rest end the command.
fn append_failure<E: std::error::Error>(error: AppendError, kept: bool) -> AttemptError<E> {
    match error {
        AppendError::Conflict => AttemptError::Conflict { kept },
        AppendError::Encoding(e) => {
            AttemptError::Failed(CommandError::Internal(format!("unencodable event: {e}")))
        }
        AppendError::Unavailable(cause) => AttemptError::Failed(CommandError::Unavailable(cause)),
        AppendError::Database(e) => AttemptError::Failed(database_failure(e)),
    }
}

/// What a command decided, before it is appended.
struct Decided<A: Aggregate> {
    aggregate_id: String,
    /// Events before the command.
    version: usize,
    events: Vec<A::Event>,
    /// The state after the events.
    state: A,
    /// Decided on a kept copy without reading the log (only the append can prove it current).
    kept: bool,
}

impl<A: Aggregate + Scoped + Clone> Decided<A> {
    /// Adds the events to `rows` with the context's metadata (the scope is the new state's,
    /// so a creation has one).
    fn add_to(&self, rows: &mut Rows, context: &CommandContext) -> Result<(), AppendError> {
        let metadata = context.metadata(self.state.scope());
        rows.push::<A>(&self.aggregate_id, self.version, &self.events, &metadata)
    }

    fn committed(self) -> Committed<A> {
        Committed {
            version: self.version + self.events.len(),
            appended: self.events.len(),
            aggregate_id: self.aggregate_id,
            state: self.state,
        }
    }
}

/// One side of [`CommandBus::execute_pair`].
pub struct Part<'a, A: Aggregate> {
    pub aggregate_id: &'a str,
    pub command: A::Command,
    pub check: &'a dyn ScopeCheck,
}

/// Why a pair of commands was not committed.
#[derive(Debug, thiserror::Error)]
pub enum PairError<EA: std::error::Error, EB: std::error::Error> {
    /// The first command was refused (or its aggregate could not be loaded).
    #[error("first command: {0}")]
    First(CommandError<EA>),
    /// The second command was refused (or its aggregate could not be loaded).
    #[error("second command: {0}")]
    Second(CommandError<EB>),
    /// Other writers kept changing one of the aggregates through every retry.
    #[error("the aggregates kept changing concurrently ({attempts} attempts); try again")]
    Conflict { attempts: u32 },
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Decides `command` on aggregate `aggregate_id` — `state` after its first `version`
/// events — and adds the events it decided to `rows` with `context`'s metadata, to be
/// appended later with others in one statement ([`Rows::insert_units`]): how a process
/// manager's effects join its batch's transaction. Returns the state they lead to;
/// nothing is stored yet, and the append's sequence check refuses the rows if the
/// aggregate moved on meanwhile.
pub async fn decide_into<A>(
    rows: &mut Rows,
    aggregate_id: &str,
    mut state: A,
    version: usize,
    command: A::Command,
    context: &CommandContext,
) -> Result<Committed<A>, CommandError<A::Error>>
where
    A: Aggregate<Services = ()> + Scoped + Clone,
{
    let sink = EventSink::default();
    state
        .handle(command, &(), &sink)
        .await
        .map_err(CommandError::Domain)?;
    let decided = Decided {
        aggregate_id: aggregate_id.to_string(),
        version,
        events: sink.collect().await,
        state,
        kept: false,
    };
    decided
        .add_to(rows, context)
        .map_err(|e| CommandError::Internal(e.to_string()))?;
    Ok(decided.committed())
}
