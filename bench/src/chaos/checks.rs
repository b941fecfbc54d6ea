//! The invariants a chaos run must keep, checked after it from the database (and from
//! what the driver saw). Each check is a function returning a [`Verdict`] — its counts
//! and its violations — and [`all`] lists them; a new exactly-once guarantee (e.g. a
//! process manager's commands) is one more function in that list. [`effects_by_cause`]
//! already holds every command carrying a `causation_id` to one commit per aggregate and
//! cause, which is the process managers' rule (docs: design "Process managers").

use std::collections::{BTreeMap, HashMap, HashSet};

use omoi_domain::billing::BillingAccount;
use omoi_store::CommandBus;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Row};

use super::client::{Seen, Sent};
use super::subscribers::{Stream, Subscriber};
use super::workload::CREDITS_PER_EVENT;

/// What one check found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub name: &'static str,
    pub counts: Vec<(String, i64)>,
    /// Lines printed under the counts (what is worth knowing, not wrong).
    pub details: Vec<String>,
    pub violations: Vec<String>,
}

impl Verdict {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    pub fn count(&mut self, label: impl Into<String>, n: impl TryInto<i64>) {
        self.counts
            .push((label.into(), n.try_into().unwrap_or(i64::MAX)));
    }

    pub fn violation(&mut self, text: String) {
        self.violations.push(text);
    }
}

/// What the checks look at besides the database.
pub struct Inputs<'a> {
    pub pool: &'a PgPool,
    pub options: &'a PgConnectOptions,
    pub organization: &'a str,
    pub ledger: &'a [Sent],
    /// Ids of the HTTP agents (the rest of the assignees are the workers' agents).
    pub http_agents: &'a HashSet<String>,
    /// Stripe events delivered, and whether any delivery was acknowledged.
    pub stripe_events: &'a [(String, bool)],
}

/// Every check, in the order they are printed.
pub async fn all(inputs: &Inputs<'_>) -> anyhow::Result<Vec<Verdict>> {
    Ok(vec![
        commands(inputs).await?,
        log(inputs.pool).await?,
        projections(inputs).await?,
        tasks(inputs).await?,
        stripe(inputs).await?,
        effects_by_cause(inputs.pool).await?,
    ])
}

/// Commands the driver sent, held to what it saw: acknowledged → in the log exactly
/// once (one commit carrying its request id), refused or never sent → not at all,
/// ambiguous → at most once.
async fn commands(inputs: &Inputs<'_>) -> anyhow::Result<Verdict> {
    let rows = sqlx::query(
        "select metadata->>'request_id' as request_id,
                count(distinct transaction_id) as commits
           from events where metadata->>'request_id' like 'chaos-%' group by 1",
    )
    .fetch_all(inputs.pool)
    .await?;
    let mut commits: HashMap<String, i64> = HashMap::new();
    for row in rows {
        commits.insert(row.try_get("request_id")?, row.try_get("commits")?);
    }
    let mut verdict = Verdict::new("commands");
    let (mut acknowledged, mut refused, mut ambiguous, mut committed, mut unsent) = (0, 0, 0, 0, 0);
    let mut unclear: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for sent in inputs.ledger {
        let n = commits.get(&sent.request_id).copied().unwrap_or(0);
        let wrong = match sent.seen {
            Seen::Acknowledged => {
                acknowledged += 1;
                n != i64::from(sent.writes)
            }
            Seen::Refused => {
                refused += 1;
                *unclear.entry(("refused", sent.kind)).or_default() += 1;
                n != 0
            }
            Seen::Unsent => {
                unsent += 1;
                n != 0
            }
            Seen::Ambiguous => {
                ambiguous += 1;
                committed += n.min(1);
                let outcome = if n == 0 {
                    "ambiguous, not committed"
                } else {
                    "ambiguous, committed"
                };
                *unclear.entry((outcome, sent.kind)).or_default() += 1;
                n > 1
            }
        };
        if wrong {
            verdict.violation(format!(
                "{} {} ({:?}, writes: {}) is in the log {n} time(s)",
                sent.kind, sent.request_id, sent.seen, sent.writes
            ));
        }
    }
    verdict.count("sent", inputs.ledger.len());
    verdict.count("acknowledged", acknowledged);
    verdict.count("refused", refused);
    verdict.count("ambiguous", ambiguous);
    verdict.count("of which committed", committed);
    verdict.count("never sent", unsent);
    let mut kinds: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((outcome, kind), n) in unclear {
        kinds
            .entry(outcome)
            .or_default()
            .push(format!("{kind} {n}"));
    }
    for (outcome, kinds) in kinds {
        verdict
            .details
            .push(format!("{outcome}: {}", kinds.join(", ")));
    }
    Ok(verdict)
}

/// Every aggregate's events are numbered 1..n without a gap (the primary key already
/// refuses a sequence twice).
async fn log(pool: &PgPool) -> anyhow::Result<Verdict> {
    let mut verdict = Verdict::new("event log");
    let row = sqlx::query(
        "select count(*) as events, count(distinct (aggregate_type, aggregate_id)) as aggregates
           from events",
    )
    .fetch_one(pool)
    .await?;
    verdict.count("events", row.try_get::<i64, _>("events")?);
    verdict.count("aggregates", row.try_get::<i64, _>("aggregates")?);
    let gaps: Vec<(String, String)> = sqlx::query_as(
        "select aggregate_type, aggregate_id from events group by 1, 2
          having count(*) <> max(sequence) or min(sequence) <> 1",
    )
    .fetch_all(pool)
    .await?;
    for (kind, id) in gaps {
        verdict.violation(format!("{kind} {id}: its sequence has a gap"));
    }
    Ok(verdict)
}

/// Every read model equals a rebuild from the log, and no projector stopped.
async fn projections(inputs: &Inputs<'_>) -> anyhow::Result<Verdict> {
    let mut verdict = Verdict::new("projections");
    let failures: Vec<(String, String)> =
        sqlx::query_as("select projector, error from projector_builds where error is not null")
            .fetch_all(inputs.pool)
            .await?;
    for (projector, error) in failures {
        verdict.violation(format!("{projector} stopped: {error}"));
    }
    for projector in omoi_projections::all() {
        let found =
            omoi_projections::verify::verify(inputs.pool, inputs.options, projector.as_ref())
                .await?;
        verdict.count(
            format!("{}: events verified", found.projector),
            found.events,
        );
        for difference in found.differences {
            verdict.violation(format!("{}: {difference}", found.projector));
        }
    }
    Ok(verdict)
}

/// A task's history, attempt by attempt.
#[derive(Default)]
struct TaskLife {
    attempts: i64,
    assigned_in_attempt: bool,
    completed: bool,
    ended_otherwise: Option<String>,
}

/// Every task assigned at most once per attempt (between retries) and completed.
async fn tasks(inputs: &Inputs<'_>) -> anyhow::Result<Verdict> {
    let rows = sqlx::query(
        "select aggregate_id, event_type, payload from events
          where aggregate_type = 'Task' order by aggregate_id, sequence",
    )
    .fetch_all(inputs.pool)
    .await?;
    let mut verdict = Verdict::new("tasks");
    let mut lives: HashMap<String, TaskLife> = HashMap::new();
    let (mut by_http, mut by_workers, mut retries) = (0, 0, 0);
    for row in rows {
        let id: String = row.try_get("aggregate_id")?;
        let kind: String = row.try_get("event_type")?;
        let payload: serde_json::Value = row.try_get("payload")?;
        let life = lives.entry(id.clone()).or_default();
        match kind.as_str() {
            "TaskCreated" => life.attempts = 1,
            "TaskAssigned" => {
                if life.assigned_in_attempt {
                    verdict.violation(format!(
                        "task {id}: assigned twice in attempt {}",
                        life.attempts
                    ));
                }
                life.assigned_in_attempt = true;
                let agent = payload["TaskAssigned"]["agent_id"]
                    .as_str()
                    .unwrap_or_default();
                if inputs.http_agents.contains(agent) {
                    by_http += 1;
                } else {
                    by_workers += 1;
                }
            }
            "TaskRetryScheduled" => {
                retries += 1;
                life.attempts += 1;
                life.assigned_in_attempt = false;
            }
            // Back to the queue within the attempt, which may then be assigned again.
            "TaskAssignmentWithdrawn" | "TaskUnassigned" => life.assigned_in_attempt = false,
            "TaskCompleted" => life.completed = true,
            "TaskPermanentlyFailed" | "TaskCancelled" => life.ended_otherwise = Some(kind),
            _ => {}
        }
    }
    let completed = lives.values().filter(|l| l.completed).count();
    for (id, life) in &lives {
        if !life.completed {
            let how = life.ended_otherwise.as_deref().unwrap_or("still open");
            verdict.violation(format!("task {id} did not complete ({how})"));
        }
    }
    verdict.count("tasks", lives.len());
    verdict.count("completed", completed);
    verdict.count("retries", retries);
    verdict.count("assigned to workers' agents", by_workers);
    verdict.count("assigned to HTTP agents", by_http);
    Ok(verdict)
}

/// Each Stripe event applied exactly once however often (and wherever) it was
/// delivered, and the credits it bought counted once.
async fn stripe(inputs: &Inputs<'_>) -> anyhow::Result<Verdict> {
    let applied: Vec<(String, i64)> = sqlx::query_as(
        "select payload->'StripeEventApplied'->>'stripe_event_id', count(*)
           from events where aggregate_type = 'BillingAccount'
            and event_type = 'StripeEventApplied' group by 1",
    )
    .fetch_all(inputs.pool)
    .await?;
    let applied: HashMap<String, i64> = applied.into_iter().collect();
    let mut verdict = Verdict::new("stripe events");
    let mut credited = 0;
    for (id, acknowledged) in inputs.stripe_events {
        let n = applied.get(id).copied().unwrap_or(0);
        if n > 1 || (*acknowledged && n == 0) {
            verdict.violation(format!(
                "{id} (acknowledged: {acknowledged}) applied {n} time(s)"
            ));
        }
        credited += n.min(1);
    }
    let bus = CommandBus::new(inputs.pool.clone(), Default::default());
    let account = bus
        .load::<BillingAccount>(inputs.organization)
        .await
        .map_err(|e| anyhow::anyhow!("loading the billing account: {e}"))?
        .map(|(account, _)| account)
        .unwrap_or_default();
    if account.credits_cents != credited * CREDITS_PER_EVENT {
        verdict.violation(format!(
            "credits are {} cents, {} events of {CREDITS_PER_EVENT} applied",
            account.credits_cents, credited
        ));
    }
    verdict.count("delivered", inputs.stripe_events.len());
    verdict.count("applied", credited);
    verdict.count("credits (cents)", account.credits_cents);
    Ok(verdict)
}

/// Commands caused by an event (`causation_id`: process managers, later) commit once per
/// cause and aggregate, whatever crashed and re-ran in between.
async fn effects_by_cause(pool: &PgPool) -> anyhow::Result<Verdict> {
    let mut verdict = Verdict::new("effects by cause");
    let causes: i64 = sqlx::query_scalar(
        "select count(distinct metadata->>'causation_id') from events
          where metadata ? 'causation_id'",
    )
    .fetch_one(pool)
    .await?;
    let doubled: Vec<(String, String, i64)> = sqlx::query_as(
        "select metadata->>'causation_id', aggregate_id, count(distinct transaction_id)
           from events where metadata ? 'causation_id'
          group by 1, aggregate_type, aggregate_id having count(distinct transaction_id) > 1",
    )
    .fetch_all(pool)
    .await?;
    for (cause, aggregate, commits) in doubled {
        verdict.violation(format!(
            "cause {cause} changed {aggregate} in {commits} commits"
        ));
    }
    verdict.count("causes", causes);
    Ok(verdict)
}

/// The WebSocket subscribers: every one folded to the HTTP board after resuming.
pub(super) fn subscribers(subscribers: &[Subscriber], settled: &[anyhow::Result<()>]) -> Verdict {
    let mut verdict = Verdict::new("subscribers");
    let sum = |f: fn(&Subscriber) -> usize| subscribers.iter().map(f).sum::<usize>();
    for (n, (subscriber, settled)) in subscribers.iter().zip(settled).enumerate() {
        for violation in &subscriber.violations {
            verdict.violation(format!("subscriber {n}: {violation}"));
        }
        if let Err(error) = settled {
            verdict.violation(format!("subscriber {n}: {error:#}"));
        }
    }
    let events = || subscribers.iter().filter(|s| s.stream == Stream::Events);
    verdict.count("board", subscribers.len() - events().count());
    verdict.count("events", events().count());
    verdict.count(
        "events received",
        events().map(|s| s.events.len()).sum::<usize>(),
    );
    verdict.count("connections", sum(|s| s.connections));
    verdict.count("deltas", sum(|s| s.deltas));
    verdict.count("resumed", sum(|s| s.resumed));
    verdict.count("stale (fresh board)", sum(|s| s.stale));
    verdict.count("resyncs", sum(|s| s.resyncs));
    verdict
}
