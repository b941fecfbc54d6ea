//! Shared state of the handlers and the one path every command takes.

use omoi_domain::access::Permission;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_es::Aggregate;
use omoi_domain::common::{DomainError, Scoped};
use omoi_domain::kind::AggregateKind;
use omoi_projections::runner::RunnerStats;
use omoi_store::bus::ScopeCheck;
use omoi_store::{CommandBus, CommandError, Committed};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::cache::CredentialCache;
use crate::auth::guard::{Guard, GuardConfig};
use crate::auth::tokens::TokenKeys;
use crate::auth::{refused, Caller};
use crate::billing::BillingConfig;
use crate::claims::{ClaimRules, Claims};
use crate::error::{ApiError, ApiResult};
use crate::live::{Hub, LiveConfig};
use crate::metrics::{Metrics, Outcome};
use crate::responses::Versioned;
use axum::Json;

#[derive(Clone)]
pub struct AppState {
    pub bus: Arc<CommandBus>,
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<TokenKeys>,
    pub credentials: Arc<CredentialCache>,
    /// Statistics of the projections this process runs, when it runs them.
    pub projections: Option<Arc<RunnerStats>>,
    /// Live delivery (WebSocket): follows the event log once a client connects.
    pub live: Arc<Hub>,
    /// Tasks claimed by HTTP agents: follows the log once an agent claims.
    pub claims: Arc<Claims>,
    /// Plans and Stripe.
    pub billing: Arc<BillingConfig>,
    /// Views `as_of` a past position replay the log: a few at a time, each at most so many
    /// events, so that a crowd of them cannot take every core and connection.
    pub replays: Arc<Replays>,
    /// Hash slots, rate limits and cookie policy of the public auth routes.
    pub guard: Arc<Guard>,
    /// How agents' heartbeats are judged (for their health).
    pub liveness: Liveness,
}

/// The thresholds an agent's heartbeats are judged by, as the worker judges them.
#[derive(Debug, Clone)]
pub struct Liveness {
    pub monitoring: omoi_orchestrator::MonitoringConfig,
    /// `worker.stale_after_ms`: silent this long, an agent is failed.
    pub stale_after_ms: u64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            monitoring: omoi_orchestrator::MonitoringConfig::default(),
            stale_after_ms: omoi_orchestrator::WorkerConfig::default().stale_after_ms,
        }
    }
}

/// The bounds of rebuilding past views (`?as_of=`).
pub struct Replays {
    pub turns: Arc<tokio::sync::Semaphore>,
    pub max_events: usize,
}

impl Replays {
    pub fn new(concurrent: usize, max_events: usize) -> Self {
        Self {
            turns: Arc::new(tokio::sync::Semaphore::new(concurrent.max(1))),
            max_events,
        }
    }
}

impl Default for Replays {
    fn default() -> Self {
        Self::new(
            std::thread::available_parallelism().map_or(2, usize::from),
            omoi_projections::board::MAX_REPLAY_EVENTS,
        )
    }
}

/// The noun for a 404 about aggregate `A`.
fn entity<A: Aggregate>() -> &'static str {
    AggregateKind::of_type(A::TYPE).map_or("resource", AggregateKind::noun)
}

impl AppState {
    pub fn new(
        bus: CommandBus,
        metrics: Metrics,
        tokens: TokenKeys,
        credential_ttl: Duration,
    ) -> Self {
        let live = Hub::new(bus.pool().clone(), bus.commits(), LiveConfig::default());
        Self {
            live: Arc::new(live),
            bus: Arc::new(bus),
            metrics: Arc::new(metrics),
            tokens: Arc::new(tokens),
            credentials: Arc::new(CredentialCache::new(credential_ttl)),
            projections: None,
            claims: Arc::new(Claims::default()),
            billing: Arc::new(BillingConfig::default()),
            replays: Arc::new(Replays::default()),
            guard: Arc::new(Guard::new(GuardConfig::default())),
            liveness: Liveness::default(),
        }
    }

    /// The heartbeat thresholds as configured.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// The auth routes' hash slots, rate limits and cookies as configured.
    pub fn with_guard(mut self, config: GuardConfig) -> Self {
        self.guard = Arc::new(Guard::new(config));
        self
    }

    /// Billing with these plans and this Stripe.
    pub fn with_billing(mut self, config: BillingConfig) -> Self {
        self.billing = Arc::new(config);
        self
    }

    /// Past views are rebuilt within these bounds.
    pub fn with_replays(mut self, replays: Replays) -> Self {
        self.replays = Arc::new(replays);
        self
    }

    /// Claims follow these rules (the worker's settings).
    pub fn with_claim_rules(mut self, rules: ClaimRules) -> Self {
        self.claims = Arc::new(Claims::new(rules));
        self
    }

    /// Reports the statistics of a projection runner in `/metrics` and
    /// `GET /api/v1/projections`.
    pub fn with_projections(mut self, stats: Arc<RunnerStats>) -> Self {
        self.projections = Some(stats);
        self
    }

    /// Live delivery with other tunables (tests shorten intervals and shrink buffers).
    pub fn with_live(mut self, config: LiveConfig) -> Self {
        self.live = Arc::new(Hub::new(self.pool().clone(), self.bus.commits(), config));
        self
    }

    pub fn pool(&self) -> &PgPool {
        self.bus.pool()
    }

    /// Executes a command on an existing aggregate on which `caller` must hold
    /// `permission`; the check runs on the state the command is decided against.
    pub async fn execute<A>(
        &self,
        caller: &Caller,
        permission: Permission,
        name: &'static str,
        id: Uuid,
        command: A::Command,
    ) -> ApiResult<Committed<A>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: DomainError,
    {
        let check = |scope| caller.check(scope, permission);
        self.run::<A>(caller, name, id, command, &check, permission.as_str())
            .await
    }

    /// [`AppState::execute`], answered with the aggregate's id, version and new state.
    pub async fn execute_versioned<A>(
        &self,
        caller: &Caller,
        permission: Permission,
        name: &'static str,
        id: Uuid,
        command: A::Command,
    ) -> ApiResult<Json<Versioned<A>>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: DomainError,
    {
        let committed = self
            .execute::<A>(caller, permission, name, id, command)
            .await?;
        Ok(Json(Versioned::committed(id, committed)))
    }

    /// Creates aggregate `id`. The caller has been authorized on the parent the new
    /// aggregate's scope comes from; here the id must still be unused.
    pub async fn create<A>(
        &self,
        caller: &Caller,
        name: &'static str,
        id: Uuid,
        command: A::Command,
    ) -> ApiResult<Committed<A>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: DomainError,
    {
        let check = |_| Ok(());
        self.run::<A>(caller, name, id, command, &check, "create")
            .await
    }

    /// Executes a command authorized by `check` — a rule that is not one permission (a
    /// guardian agent's reach, for one) — refused with `refused_as` named as missing.
    pub async fn run_checked<A>(
        &self,
        caller: &Caller,
        name: &'static str,
        id: Uuid,
        command: A::Command,
        check: &dyn ScopeCheck,
        refused_as: &'static str,
    ) -> ApiResult<Committed<A>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: DomainError,
    {
        self.run::<A>(caller, name, id, command, check, refused_as)
            .await
    }

    async fn run<A>(
        &self,
        caller: &Caller,
        name: &'static str,
        id: Uuid,
        command: A::Command,
        check: &dyn ScopeCheck,
        refused_as: &'static str,
    ) -> ApiResult<Committed<A>>
    where
        A: Aggregate<Services = ()> + Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: DomainError,
    {
        let started = Instant::now();
        let context = caller.context();
        let result = self
            .bus
            .execute_checked::<A>(&id.to_string(), command, &context, check)
            .await;
        let outcome = match &result {
            Ok(_) => Outcome::Committed,
            Err(CommandError::Domain(_) | CommandError::Refused(_)) => Outcome::Refused,
            Err(CommandError::Conflict { .. }) => Outcome::Conflict,
            Err(CommandError::Unavailable(_) | CommandError::Internal(_)) => Outcome::Failed,
        };
        self.metrics
            .record_command(name, outcome, started.elapsed());
        result.map_err(|error| match error {
            CommandError::Refused(refusal) => refused(refusal, entity::<A>(), refused_as),
            other => ApiError::from(other),
        })
    }

    /// Loads an aggregate on which `caller` holds `permission`: 404 when it does not exist
    /// or belongs to an organization the caller cannot see, 403 when the role lacks it.
    pub async fn read<A>(
        &self,
        caller: &Caller,
        permission: Permission,
        id: Uuid,
    ) -> ApiResult<(A, usize)>
    where
        A: Aggregate + Scoped + Clone + 'static,
        A::Error: DomainError,
    {
        let (aggregate, version) = self.load::<A>(id).await?;
        caller.authorize(aggregate.scope(), permission, entity::<A>())?;
        Ok((aggregate, version))
    }

    /// Loads an aggregate without authorization: only for ids a handler has already tied to
    /// a scope the caller was authorized on.
    pub async fn load<A>(&self, id: Uuid) -> ApiResult<(A, usize)>
    where
        A: Aggregate + Clone + 'static,
        A::Error: DomainError,
    {
        self.bus
            .load::<A>(&id.to_string())
            .await
            .map_err(ApiError::from)?
            .ok_or(ApiError::NotFound {
                what: entity::<A>(),
            })
    }
}
