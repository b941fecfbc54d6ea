//! Process managers: the rules that span aggregates (a spec's approved plan becomes
//! tickets and tasks, …), run as consumers of the global event stream rather than as code
//! in HTTP handlers.
//!
//! Each is a [`Projector`] of the projection runner, so it has what read models have: one
//! leader across replicas, a checkpoint, a poison event that stops it visibly
//! (`omoi projections status`, `GET /api/v1/projections`). Its effects are commands
//! decided and appended *inside the batch's transaction* ([`aggregates`]):
//! effects and checkpoint commit together, so a crash never applies an event's
//! consequences twice or skips them. The ids of what a process manager creates derive
//! from the causing event, and it skips what exists already, so replaying an event
//! (a rebuild from position zero) appends nothing new. Every command carries the event as
//! its `causation_id`, the event's `correlation_id`, and `system:<name>` as its actor.
//!
//! # Layout
//!
//! * [`admission`] — the rules a person's new work meets (a done ticket takes no task,
//!   dependencies stay within a project and never close a circle, a ticket's spec is of
//!   its project), decided before the command; [`cycles`] — the race-free cycle check.
//! * [`execution`] — a spec's approved plan becomes its tickets and tasks.
//! * [`completion`] — a spec completes when every ticket of its plan is done.
//! * [`archival`] — archiving or completing an executing spec cancels its open tasks and
//!   gives its workflow back.
//! * [`progress`] — a ticket moves with its tasks: building once one is assigned, done
//!   once all completed, blocked when one fails for good.
//! * [`export`] — a spec as one document (JSON, Markdown, YAML), now or as of a position:
//!   a read over the histories of the spec and of its plan's tickets and tasks.
//! * [`spawn`] — a ticket made by hand gets the task of its phase.
//! * [`discovery`] — a discovered task that blocks its parent releases it when it
//!   completes or is cancelled.
//! * [`validation`] — submitted work gets a validation task; its verdict completes the
//!   work or sends it back for revision.
//! * [`stall`] — a stalled task gets its project's stall policy: nudge, restart or
//!   escalate.
//! * [`retirement`] — a lifetime purchase ends, at Stripe, the subscription it replaced.
//! * [`withdrawal`] — an assignment to an agent that had stopped taking work (quarantined,
//!   failed, terminated) before it in the log is taken back.
//! * `kept` — what a manager keeps in memory between batches (its own tables' rows,
//!   aggregates it decided on), taken in only once a batch committed (`progress`,
//!   `discovery`).

pub mod admission;
mod aggregates;
pub mod archival;
pub mod completion;
pub mod cycles;
pub mod discovery;
pub mod execution;
pub mod export;
mod kept;
pub mod progress;
pub mod retirement;
pub mod spawn;
pub mod stall;
pub mod validation;
pub mod withdrawal;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use omoi_billing::stripe::StripeApi;
use omoi_projections::{ProjectionError, Projector};
use omoi_store::StoredEvent;
use sqlx::PgConnection;

use aggregates::{Aggregates, Effects};

/// A rule run on the global stream: the events it reacts to, and its reactions to a
/// batch of them, inside the batch's transaction.
pub trait ProcessManager: Send + Sync + 'static {
    /// Its build in the projection catalog, and its actor (`system:<name>`).
    const NAME: &'static str;
    /// Bump to run it over the whole log again (it skips creations that exist; effects
    /// that change what exists are decided on today's aggregates, so a manager whose
    /// effects are not guarded against a state that moved on must not be bumped: see
    /// docs/architecture.md, Process managers).
    const VERSION: i32 = 1;

    /// The tables of its own state, in its schema (by bare name).
    const TABLES: &'static [&'static str] = &[];

    /// `create table` statements for [`ProcessManager::TABLES`] in `schema`.
    fn create_tables(_schema: &str) -> Vec<String> {
        Vec::new()
    }

    /// Idempotent additive changes to those tables in an existing build
    /// ([`Projector::upgrade_tables`]).
    fn upgrade_tables(_schema: &str) -> Vec<String> {
        Vec::new()
    }

    fn reacts_to(&self, event: &StoredEvent) -> bool;

    /// Whether `event` may cause something in the build whose tables are in `schema`
    /// ([`Projector::concerns`]): by default whatever it reacts to. A manager keeping its
    /// tables in memory may say no to an event it reacts to that, as they stand, causes
    /// nothing — a batch of such events then costs no transaction — and to one that only
    /// makes something it keeps stale, which it forgets here (`progress`).
    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        self.reacts_to(event)
    }

    /// How the batch last given ended, as [`Projector::settled`] says: for a manager
    /// keeping its tables' rows in memory between batches.
    fn settled(&self, _schema: &str, _committed: bool) {}

    /// Its reactions to a batch's events it reacts to, in order, its own tables in
    /// `schema`. They must come to the same as reacting to each in turn; a manager whose
    /// reactions read little simply loops. One that reacts to many events reads what they
    /// need once for all ([`Aggregates`]), so that its batch — which holds every reader of
    /// the log while it is open — stays short.
    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
}

/// A process manager as the projection runner runs it: a projector whose tables are its
/// own state (none for most).
struct Run<P> {
    manager: P,
}

impl<P: ProcessManager> Projector for Run<P> {
    fn name(&self) -> &'static str {
        P::NAME
    }

    fn version(&self) -> i32 {
        P::VERSION
    }

    fn tables(&self) -> &'static [&'static str] {
        P::TABLES
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        P::create_tables(schema)
    }

    fn upgrade_tables(&self, schema: &str) -> Vec<String> {
        P::upgrade_tables(schema)
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mine: Vec<&StoredEvent> = events
                .iter()
                .filter(|e| self.manager.reacts_to(e))
                .collect();
            self.manager.react_all(tx, schema, mine).await
        })
    }

    fn concerns(&self, schema: &str, event: &StoredEvent) -> bool {
        self.manager.concerns(schema, event)
    }

    fn settled(&self, schema: &str, committed: bool) {
        self.manager.settled(schema, committed);
    }

    fn appends_events(&self) -> bool {
        true
    }
}

/// Aggregate `id` as it stands in the batch's transaction (the batch's own effects
/// included), and its number of events: 0 when it does not exist.
pub(crate) async fn load<A: cqrs_es::Aggregate>(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: &str,
) -> Result<(A, usize), ProjectionError> {
    let history = omoi_store::log::aggregate_history(&mut *tx, A::TYPE, id).await?;
    let state = omoi_store::log::fold_until(&history, None)
        .map_err(|e| ProjectionError::payload(event, e))?;
    Ok((state, history.len()))
}

/// Runs `command` on aggregate `id` in the batch's transaction, as an effect of `event`
/// (see [`Aggregates::decide`] and [`Effects::append`]: a refusal is skipped, a concurrent
/// writer has the batch applied again).
pub(crate) async fn effect<A>(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: &str,
    command: A::Command,
    context: &omoi_store::CommandContext,
) -> Result<(), ProjectionError>
where
    A: cqrs_es::Aggregate<Services = ()> + omoi_domain::common::Scoped + Clone,
{
    let mut effects = Effects::default();
    Aggregates::<A>::new()
        .decide(&mut effects, tx, event, id, command, context)
        .await?;
    effects.append(tx, event).await
}

/// When `event` was recorded (its metadata's `occurred_at`), for the time of an effect.
pub fn occurred_at(event: &StoredEvent) -> chrono::DateTime<chrono::Utc> {
    event.occurred_at().unwrap_or_else(chrono::Utc::now)
}

/// `P`, to run beside the read models.
pub fn run<P: ProcessManager>(manager: P) -> Arc<dyn Projector> {
    Arc::new(Run { manager })
}

/// What the process managers take from the settings (`workflow` in `config/*.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct WorkflowConfig {
    /// The task type a hand-made ticket of each phase gets (`phase_tasks`).
    pub phase_tasks: spawn::PhaseTaskTable,
}

/// Every process manager, to run beside the read models; `stripe` is where a lifetime
/// purchase ends the subscription it replaced.
pub fn all(config: &WorkflowConfig, stripe: &StripeApi) -> Vec<Arc<dyn Projector>> {
    vec![
        run(execution::PlanExecution),
        run(completion::SpecCompletion),
        run(progress::TicketProgress::default()),
        run(archival::SpecArchival),
        run(discovery::DiscoveryResolution::default()),
        run(validation::Validation),
        run(stall::StallPolicyManager),
        run(spawn::PhaseTasks {
            table: config.phase_tasks.clone(),
        }),
        run(retirement::SubscriptionRetirement {
            stripe: stripe.clone(),
        }),
        run(withdrawal::AssignmentWithdrawal),
    ]
}

/// A ticket's event as the log would hand it over, for the managers' unit tests.
#[cfg(test)]
pub(crate) fn ticket_event(
    event_type: &str,
    payload: serde_json::Value,
    metadata: serde_json::Value,
) -> StoredEvent {
    StoredEvent {
        aggregate_type: "Ticket".into(),
        aggregate_id: uuid::Uuid::now_v7().to_string(),
        sequence: 1,
        global_position: 1,
        transaction_id: 1,
        event_type: event_type.into(),
        event_version: "1".into(),
        payload: payload.into(),
        metadata: metadata.into(),
    }
}
