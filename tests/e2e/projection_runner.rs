//! The projector runner on its own, with probe projectors: exactly once, out-of-order
//! commits, poison events, and a second runner taking over.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use omoi::server::Shutdown;
use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand};
use omoi_projections::{Columns, Fold, FoldWrite, ProjectionError, Projector};
use omoi_store::bus::RetryPolicy;
use omoi_store::json::MetadataField;
use omoi_store::{Actor, CommandBus, CommandContext, StoredEvent};
use omoi_testing::{held_append, test_runner_config, TestDatabase};
use sqlx::PgConnection;
use uuid::Uuid;

/// Records every event it is given, in the order given (`n`); a second application of
/// one event violates the primary key, so "applied twice" cannot go unnoticed.
struct Probe;

/// [`Probe`]'s table, without its key — or with it as a primary key.
fn seen_table(schema: &str, primary_key: bool) -> String {
    let key = match primary_key {
        true => ", constraint seen_key primary key (aggregate_type, aggregate_id, sequence)",
        false => "",
    };
    format!(
        "create table {schema}.seen (n bigserial, aggregate_type text, aggregate_id text,
                                     sequence bigint, transaction_id bigint,
                                     global_position bigint{key})"
    )
}

/// [`Probe`]'s key: an event applied twice violates it.
fn seen_key(schema: &str) -> String {
    format!(
        "create unique index if not exists seen_key
            on {schema}.seen (aggregate_type, aggregate_id, sequence)"
    )
}

/// How many times the runner told [`Probe`] to forget what it keeps of each build's
/// tables (`settled(schema, false)`), by schema: a test runs in a process of its own.
static FORGOTTEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn times_forgotten(schema: &str) -> usize {
    FORGOTTEN
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|forgotten| *forgotten == schema)
        .count()
}

impl Projector for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn version(&self) -> i32 {
        1
    }
    fn tables(&self) -> &'static [&'static str] {
        &["seen"]
    }
    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![seen_table(schema, false), seen_key(schema)]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let (mut types, mut ids, mut sequences, mut transactions, mut positions) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for event in events {
                types.push(event.aggregate_type.as_str());
                ids.push(event.aggregate_id.as_str());
                sequences.push(event.sequence);
                transactions.push(event.transaction_id);
                positions.push(event.global_position);
            }
            sqlx::query(&format!(
                "insert into {schema}.seen
                     (aggregate_type, aggregate_id, sequence, transaction_id, global_position)
                 select t, i, s, x, g
                   from unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
                        with ordinality as e(t, i, s, x, g, o)
                  order by o"
            ))
            .bind(types)
            .bind(ids)
            .bind(sequences)
            .bind(transactions)
            .bind(positions)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }
    fn settled(&self, schema: &str, committed: bool) {
        if !committed {
            FORGOTTEN
                .lock()
                .expect("not poisoned")
                .push(schema.to_string());
        }
    }
}

/// How [`Blocks`] refuses a `TicketBlocked`.
enum Refusal {
    /// A poison event, until it is "fixed".
    Poison { fixed: Arc<AtomicBool> },
    /// Transiently (a process manager's effect whose aggregate another writer changed
    /// first), this many times, then applied.
    Transient { left: Arc<AtomicUsize> },
}

/// Records every blocked ticket, refusing the block event as `refusal` says.
struct Blocks {
    name: &'static str,
    refusal: Refusal,
}

impl Blocks {
    fn refuse(&self, event: &StoredEvent) -> Option<ProjectionError> {
        match &self.refusal {
            Refusal::Poison { fixed } => (!fixed.load(Ordering::SeqCst))
                .then(|| ProjectionError::payload(event, "cannot read this block")),
            Refusal::Transient { left } => left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .ok()
                .map(|_| {
                    ProjectionError::Transient("the aggregate kept changing concurrently".into())
                }),
        }
    }
}

impl Projector for Blocks {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> i32 {
        1
    }
    fn tables(&self) -> &'static [&'static str] {
        &["blocked"]
    }
    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![format!(
            "create table {schema}.blocked (ticket text primary key)"
        )]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            for event in events.iter().filter(|e| e.event_type == "TicketBlocked") {
                if let Some(refusal) = self.refuse(event) {
                    return Err(refusal);
                }
                sqlx::query(&format!("insert into {schema}.blocked values ($1)"))
                    .bind(&event.aggregate_id)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        })
    }
}

async fn create_tickets(bus: &CommandBus, n: usize) -> Vec<Uuid> {
    let context = CommandContext::new(Actor::System("test"), "runner-test");
    let mut ids = Vec::new();
    for i in 0..n {
        let id = Uuid::now_v7();
        let command = TicketCommand::CreateTicket {
            ticket_id: id,
            organization_id: Uuid::nil(),
            project_id: Uuid::nil(),
            spec_id: None,
            title: format!("ticket {i}"),
            description: String::new(),
            priority: Default::default(),
            phase: Default::default(),
            plan_key: None,
        };
        bus.execute::<Ticket>(&id.to_string(), command, &context)
            .await
            .expect("created");
        ids.push(id);
    }
    ids
}

async fn start(
    database: &TestDatabase,
    projectors: Vec<Arc<dyn Projector>>,
    bus: &CommandBus,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let (trigger, shutdown) = Shutdown::new();
    let (_, task) = omoi::server::start_projections_with(
        database.pool.clone(),
        database.options.clone(),
        bus,
        test_runner_config(),
        projectors,
        shutdown,
    )
    .await
    .expect("the probes' builds");
    (trigger, task)
}

async fn seen(database: &TestDatabase) -> i64 {
    sqlx::query_scalar("select count(*) from probe_seen")
        .fetch_one(&database.pool)
        .await
        .unwrap_or(0)
}

async fn events(database: &TestDatabase) -> i64 {
    sqlx::query_scalar("select count(*) from events")
        .fetch_one(&database.pool)
        .await
        .expect("events")
}

/// Waits until `condition` holds, for at most ten seconds.
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_committed_behind_an_open_transaction_are_projected_once_it_commits() {
    let database = TestDatabase::create().await.expect("database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let (trigger, task) = start(&database, vec![Arc::new(Probe)], &bus).await;

    let held = held_append(&database.pool).await;
    create_tickets(&bus, 40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        seen(&database).await,
        0,
        "nothing behind the open transaction is projected yet"
    );

    held.commit().await.expect("commit");
    eventually("every event projected", || async {
        seen(&database).await == events(&database).await
    })
    .await;
    assert_eq!(seen(&database).await, 41);
    let _ = trigger.send(true);
    task.await.expect("runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_stops_only_its_projector_and_a_retry_resumes_from_it() {
    let database = TestDatabase::create().await.expect("database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let fixed = Arc::new(AtomicBool::new(false));
    let projectors: Vec<Arc<dyn Projector>> = vec![
        Arc::new(Probe),
        Arc::new(Blocks {
            name: "poisoned",
            refusal: Refusal::Poison {
                fixed: fixed.clone(),
            },
        }),
    ];
    // Written before the runner starts, so that its first batch holds good events on
    // both sides of the poison one.
    let tickets = create_tickets(&bus, 5).await;
    let context = CommandContext::new(Actor::System("test"), "poison");
    let block = TicketCommand::BlockTicket {
        reason: BlockReason::Environment,
        note: None,
        at: chrono::Utc::now(),
    };
    bus.execute::<Ticket>(&tickets[2].to_string(), block, &context)
        .await
        .expect("blocked");
    create_tickets(&bus, 5).await;
    let (trigger, task) = start(&database, projectors, &bus).await;

    eventually("the probe carries on", || async {
        seen(&database).await == 11
    })
    .await;
    let stopped = || async {
        omoi_projections::catalog::status(&database.pool)
            .await
            .expect("status")
            .into_iter()
            .find(|b| b.projector == "poisoned")
            .and_then(|b| b.failure)
    };
    eventually("the poisoned projector reports its failure", || async {
        stopped().await.is_some()
    })
    .await;
    let (at, error) = stopped().await.expect("a failure");
    assert!(
        error.contains("TicketBlocked") && error.contains("cannot read this block"),
        "{error}"
    );
    let blocked_position: i64 =
        sqlx::query_scalar("select global_position from events where event_type = 'TicketBlocked'")
            .fetch_one(&database.pool)
            .await
            .expect("position");
    assert_eq!(
        at.global_position, blocked_position,
        "stopped exactly at the poison event"
    );
    let checkpoint = omoi_projections::catalog::status(&database.pool)
        .await
        .expect("status")
        .into_iter()
        .find(|b| b.projector == "poisoned")
        .expect("the poisoned build")
        .cursor;
    assert_eq!(
        checkpoint.global_position,
        blocked_position - 1,
        "the events before the poison one in its batch are applied and checkpointed"
    );

    fixed.store(true, Ordering::SeqCst);
    omoi_projections::catalog::retry(&database.pool, "poisoned")
        .await
        .expect("retry");
    eventually(
        "the fixed projector resumes from the poison event",
        || async {
            sqlx::query_scalar::<_, i64>("select count(*) from poisoned_blocked")
                .fetch_one(&database.pool)
                .await
                .unwrap_or(0)
                == 1
        },
    )
    .await;
    assert!(stopped().await.is_none());
    let _ = trigger.send(true);
    task.await.expect("runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_runner_takes_over_when_the_leader_stops_and_nothing_is_applied_twice() {
    let database = TestDatabase::create().await.expect("database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let (first_trigger, first) = start(&database, vec![Arc::new(Probe)], &bus).await;
    create_tickets(&bus, 20).await;
    eventually("the first runner projects", || async {
        seen(&database).await == 20
    })
    .await;

    let (second_trigger, second) = start(&database, vec![Arc::new(Probe)], &bus).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = first_trigger.send(true);
    first.await.expect("first runner");

    create_tickets(&bus, 20).await;
    eventually("the second runner took over", || async {
        seen(&database).await == 40
    })
    .await;
    let failures: i64 =
        sqlx::query_scalar("select count(*) from projector_builds where error is not null")
            .fetch_one(&database.pool)
            .await
            .expect("failures");
    assert_eq!(
        failures, 0,
        "an event applied twice would have violated the probe's key"
    );
    let _ = second_trigger.send(true);
    second.await.expect("second runner");
}

/// The probe at another version, as after a code change.
struct ProbeAt(i32);

impl Projector for ProbeAt {
    fn name(&self) -> &'static str {
        Probe.name()
    }
    fn version(&self) -> i32 {
        self.0
    }
    fn tables(&self) -> &'static [&'static str] {
        Probe.tables()
    }
    fn create_tables(&self, schema: &str) -> Vec<String> {
        Probe.create_tables(schema)
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Probe.apply(tx, schema, events)
    }
}

async fn builds(database: &TestDatabase) -> Vec<(i64, i32, String)> {
    sqlx::query_as("select build, code_version, state from projector_builds where projector = 'probe' order by build")
        .fetch_all(&database.pool)
        .await
        .expect("builds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bumping_a_version_rebuilds_beside_the_live_build_and_switches_readers_when_caught_up() {
    let database = TestDatabase::create().await.expect("database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let (trigger, task) = start(&database, vec![Arc::new(ProbeAt(1))], &bus).await;
    create_tickets(&bus, 30).await;
    eventually("version 1 projects", || async {
        seen(&database).await == 30
    })
    .await;
    let _ = trigger.send(true);
    task.await.expect("runner");

    let (trigger, task) = start(&database, vec![Arc::new(ProbeAt(2))], &bus).await;
    // Readers keep answering from version 1 while version 2 catches up, then from version 2.
    eventually("version 2 is live", || async {
        assert_eq!(
            seen(&database).await,
            30,
            "the view always answers, with every event"
        );
        builds(&database)
            .await
            .iter()
            .any(|(_, version, state)| *version == 2 && state == "live")
    })
    .await;
    let all = builds(&database).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!((all[0].1, all[0].2.as_str()), (1, "retired"));
    let old_schema = format!("rm_probe_{}", all[0].0);
    // The runner drops the retired schema right after the go-live commits, not in it.
    eventually("the retired build's tables are dropped", || async {
        let old_exists: bool = sqlx::query_scalar(
            "select exists(select 1 from information_schema.schemata where schema_name = $1)",
        )
        .bind(&old_schema)
        .fetch_one(&database.pool)
        .await
        .expect("schema");
        !old_exists
    })
    .await;
    create_tickets(&bus, 5).await;
    eventually("version 2 keeps projecting", || async {
        seen(&database).await == 35
    })
    .await;
    let _ = trigger.send(true);
    task.await.expect("runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_failure_is_applied_again_and_never_stops_the_projector() {
    let database = TestDatabase::create().await.expect("database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    // Fails in the batch, then again alone (the poison search), then succeeds.
    let failures = Arc::new(AtomicUsize::new(3));
    let tickets = create_tickets(&bus, 3).await;
    let context = CommandContext::new(Actor::System("test"), "contended");
    let block = TicketCommand::BlockTicket {
        reason: BlockReason::Environment,
        note: None,
        at: chrono::Utc::now(),
    };
    bus.execute::<Ticket>(&tickets[1].to_string(), block, &context)
        .await
        .expect("blocked");
    create_tickets(&bus, 3).await;
    let projectors: Vec<Arc<dyn Projector>> = vec![Arc::new(Blocks {
        name: "contended",
        refusal: Refusal::Transient {
            left: failures.clone(),
        },
    })];
    let (trigger, task) = start(&database, projectors, &bus).await;
    let blocked = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from contended_blocked")
            .fetch_one(&database.pool)
            .await
            .unwrap_or(0)
    };
    eventually("the block applied once the contention passed", || async {
        blocked().await == 1
    })
    .await;
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "it was tried until it succeeded"
    );
    let build = omoi_projections::catalog::status(&database.pool)
        .await
        .expect("status")
        .into_iter()
        .find(|b| b.projector == "contended")
        .expect("the build");
    assert!(build.failure.is_none(), "not stopped: {:?}", build.failure);
    eventually("every event applied", || async {
        omoi_projections::catalog::status(&database.pool)
            .await
            .expect("status")
            .into_iter()
            .find(|b| b.projector == "contended")
            .is_some_and(|b| b.events_applied == 7)
    })
    .await;
    let _ = trigger.send(true);
    task.await.expect("runner");
}

/// Appends `count` probe events in one transaction, set-based.
async fn append_probes(executor: impl sqlx::PgExecutor<'_>, batch: &str, count: i64) {
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         select 'Probe', $1 || '-' || n, 1, 'ProbeStreamed', '1', '{}', '{}'
           from generate_series(1, $2) n",
    )
    .bind(batch)
    .bind(count)
    .execute(executor)
    .await
    .expect("probe events");
}

/// Catches `build` up in pages of 100 until `count` events were applied (or 20 s passed)
/// and returns how many were. The log's horizon is the cluster's: a transaction of a
/// test running beside this one may end a catch-up early (it lags, never skips), so it is
/// repeated until the events it waits for arrived.
async fn catch_up_until(
    database: &TestDatabase,
    projector: &dyn Projector,
    build: i64,
    count: i64,
) -> i64 {
    use omoi_projections::runner::catch_up;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = catch_up(
            &database.pool,
            &database.options,
            projector,
            build,
            100,
            |_| {},
        )
        .await
        .expect("a catch-up");
        assert!(done.failure.is_none(), "stopped: {:?}", done.failure);
        if done.events_applied >= count || Instant::now() > deadline {
            return done.events_applied;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A catch-up longer than a page streams the log with one query (pages of
/// `CATCH_UP_BATCH`), stops where an open transaction holds the log, and reads on once it
/// commits: every event applied once, in the log's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_catch_up_streams_the_log_and_applies_every_event_once_in_order() {
    use omoi_projections::catalog::{self, BuildState};
    use omoi_projections::runner::CATCH_UP_BATCH;

    let database = TestDatabase::create().await.expect("database");
    let before_the_hold = CATCH_UP_BATCH + CATCH_UP_BATCH / 5;
    append_probes(&database.pool, "first", before_the_hold).await;
    let mut held = database.pool.begin().await.expect("a transaction");
    append_probes(&mut *held, "held", 3).await;
    append_probes(&database.pool, "after", CATCH_UP_BATCH).await;

    let mut conn = database.pool.acquire().await.expect("a connection");
    let build = catalog::create_build(&mut conn, &Probe, BuildState::Building)
        .await
        .expect("a build");
    drop(conn);
    let catch_up_to = |count: i64| catch_up_until(&database, &Probe, build.build, count);

    assert_eq!(
        catch_up_to(before_the_hold).await,
        before_the_hold,
        "the open transaction holds back what follows it"
    );
    held.commit().await.expect("the held commit");
    let everything = before_the_hold + 3 + CATCH_UP_BATCH;
    assert_eq!(catch_up_to(everything).await, everything);

    let applied: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "select transaction_id, global_position from {}.seen order by n",
        build.schema()
    ))
    .fetch_all(&database.pool)
    .await
    .expect("the applied order");
    let log: Vec<(i64, i64)> = sqlx::query_as(
        "select transaction_id::text::bigint, global_position from events
          order by transaction_id, global_position",
    )
    .fetch_all(&database.pool)
    .await
    .expect("the log");
    assert_eq!(applied.len() as i64, everything);
    assert!(applied == log, "applied out of the log's order");
}

/// Every metadata field, in the order [`MetadataProbe`] records them.
const METADATA_FIELDS: [MetadataField; 6] = [
    MetadataField::OrganizationId,
    MetadataField::ProjectId,
    MetadataField::Actor,
    MetadataField::CorrelationId,
    MetadataField::CausationId,
    MetadataField::OccurredAt,
];

/// Their keys in the log's metadata, as the command bus writes them.
const METADATA_KEYS: [&str; 6] = [
    "organization_id",
    "project_id",
    "actor",
    "correlation_id",
    "causation_id",
    "occurred_at",
];

/// Records, for every event it is given, each of its metadata fields ([`METADATA_KEYS`],
/// from its text); a catch-up streams it the log's `columns`.
struct MetadataProbe {
    name: &'static str,
    columns: Columns,
}

impl Projector for MetadataProbe {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> i32 {
        1
    }
    fn tables(&self) -> &'static [&'static str] {
        &["seen"]
    }
    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![format!(
            "create table {schema}.seen (n bigserial, aggregate_id text unique, f0 text,
                                         f1 text, f2 text, f3 text, f4 text, f5 text)"
        )]
    }
    fn columns(&self) -> Columns {
        self.columns
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            // From its text: asking for a field not read fails a debug build.
            let metadata: Vec<serde_json::Value> =
                events.iter().map(|e| e.metadata.to_value()).collect();
            let field = |i: usize| -> Vec<Option<&str>> {
                metadata
                    .iter()
                    .map(|m| m.get(METADATA_KEYS[i]).and_then(|value| value.as_str()))
                    .collect()
            };
            let ids: Vec<&str> = events.iter().map(|e| e.aggregate_id.as_str()).collect();
            sqlx::query(&format!(
                "insert into {schema}.seen (aggregate_id, f0, f1, f2, f3, f4, f5)
                 select i, f0, f1, f2, f3, f4, f5
                   from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                               $6::text[], $7::text[])
                        with ordinality as e(i, f0, f1, f2, f3, f4, f5, o)
                  order by o"
            ))
            .bind(ids)
            .bind(field(0))
            .bind(field(1))
            .bind(field(2))
            .bind(field(3))
            .bind(field(4))
            .bind(field(5))
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }
}

/// A catch-up streams a projector only the metadata fields it reads (none, some or all
/// six, each from its own key) and the time of each event (the runner's lag), and every
/// event still reaches it once, in order; one that reads the whole metadata gets it
/// with every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catch_up_streams_a_projector_only_the_metadata_it_reads() {
    use omoi_projections::catalog::{self, BuildState};
    use omoi_projections::runner::CATCH_UP_BATCH;

    let database = TestDatabase::create().await.expect("database");
    let total = CATCH_UP_BATCH + 500;
    // Each field of event n holds its own key and n.
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         select 'Probe', 'probe-' || lpad(n::text, 6, '0'), 1, 'ProbeStreamed', '1', '{}',
                jsonb_build_object('organization_id', 'organization_id ' || n,
                                   'project_id', 'project_id ' || n, 'actor', 'actor ' || n,
                                   'correlation_id', 'correlation_id ' || n,
                                   'causation_id', 'causation_id ' || n,
                                   'occurred_at', 'occurred_at ' || n, 'request_id', 'r')
           from generate_series(1, $1) n",
    )
    .bind(total)
    .execute(&database.pool)
    .await
    .expect("probe events");

    let probes = [
        ("whole_probe", Columns::Everything),
        (
            "all_fields_probe",
            Columns::MetadataFields(&METADATA_FIELDS),
        ),
        (
            "actor_probe",
            Columns::MetadataFields(&[MetadataField::Actor]),
        ),
        ("lean_probe", Columns::WITHOUT_METADATA),
    ];
    for (name, columns) in probes {
        let probe = MetadataProbe { name, columns };
        let mut conn = database.pool.acquire().await.expect("a connection");
        let build = catalog::create_build(&mut conn, &probe, BuildState::Building)
            .await
            .expect("a build");
        drop(conn);
        catch_up_until(&database, &probe, build.build, total).await;
        let seen: Vec<(String, Vec<Option<String>>)> = sqlx::query_as(&format!(
            "select aggregate_id, array[f0, f1, f2, f3, f4, f5] from {}.seen order by n",
            build.schema()
        ))
        .fetch_all(&database.pool)
        .await
        .expect("what it saw");
        let in_order: Vec<String> = (1..=total).map(|n| format!("probe-{n:06}")).collect();
        let ids: Vec<String> = seen.iter().map(|(id, _)| id.clone()).collect();
        assert!(ids == in_order, "{name}: not every event once, in order");
        for (i, field) in METADATA_FIELDS.iter().enumerate() {
            // How many events came with this field, each holding its own value.
            let with = seen
                .iter()
                .enumerate()
                .filter(|(n, (_, fields))| {
                    fields[i].as_deref() == Some(format!("{} {}", METADATA_KEYS[i], n + 1).as_str())
                })
                .count() as i64;
            let present = seen
                .iter()
                .filter(|(_, fields)| fields[i].is_some())
                .count() as i64;
            assert_eq!(
                with, present,
                "{name}: {field:?} holds another field's value"
            );
            let asked = match columns {
                Columns::Everything => true,
                Columns::MetadataFields(asked) => {
                    asked.contains(field) || *field == MetadataField::OccurredAt
                }
            };
            // The first page is read on its own, whole; the stream after it as asked.
            match asked {
                true => assert_eq!(with, total, "{name}: {field:?} missing"),
                false => assert!(
                    with <= total - CATCH_UP_BATCH,
                    "{name}: {with} events came with {field:?}"
                ),
            }
        }
    }
}

/// [`Probe`]'s table, but a build from position zero is folded in memory and written
/// once ([`Projector::fold_from_start`]) — or, with a bound, written whenever it holds
/// that many events, folding on ([`Fold::goes_on`]), in place or beside the fold
/// ([`Fold::take_write`]); events of type `ProbePoison` are refused by the fold and by
/// the batches alike. Its key is an index `apply` needs
/// ([`Projector::create_write_indexes`]), so a rebuild's first write goes into a bare
/// table.
/// Counts the folds written, those that found the key there already, and the batches
/// applied.
#[derive(Default)]
struct FoldingProbe {
    writes: Arc<AtomicUsize>,
    keyed_writes: Arc<AtomicUsize>,
    batches: Arc<AtomicUsize>,
    goes_on_at: Option<usize>,
    beside: Option<Beside>,
    /// Its key made a primary key, as builds made before keys were indexes of their own.
    key_constrained: bool,
}

/// How a [`FoldingProbe`]'s writes beside its fold end.
#[derive(Clone, Copy)]
enum Beside {
    Written,
    /// Refused by the database (not a failure that passes).
    Refused,
    /// Written; the write in place at the stream's end refused by the database.
    WrittenThenRefusedInPlace,
}

/// A statement the database refuses, for good: a write that fails.
async fn refused(tx: &mut PgConnection) -> Result<(), ProjectionError> {
    sqlx::query("select 1 / 0").execute(tx).await?;
    Ok(())
}

impl FoldingProbe {
    fn going_on_at(bound: usize) -> Self {
        Self {
            goes_on_at: Some(bound),
            ..Self::default()
        }
    }

    fn writing_beside(bound: usize, beside: Beside) -> Self {
        Self {
            beside: Some(beside),
            ..Self::going_on_at(bound)
        }
    }
}

fn refuse_poison(events: &[StoredEvent]) -> Result<(), ProjectionError> {
    match events.iter().find(|e| e.event_type == "ProbePoison") {
        Some(event) => Err(ProjectionError::payload(event, "cannot read this probe")),
        None => Ok(()),
    }
}

impl Projector for FoldingProbe {
    fn name(&self) -> &'static str {
        "folding_probe"
    }
    fn version(&self) -> i32 {
        1
    }
    fn tables(&self) -> &'static [&'static str] {
        Probe.tables()
    }
    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![seen_table(schema, self.key_constrained)]
    }
    fn create_write_indexes(&self, schema: &str) -> Vec<String> {
        vec![seen_key(schema)]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            self.batches.fetch_add(1, Ordering::SeqCst);
            refuse_poison(events)?;
            Probe.apply(tx, schema, events).await
        })
    }
    fn fold_from_start(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(ProbeFold {
            events: Vec::new(),
            writes: self.writes.clone(),
            keyed_writes: self.keyed_writes.clone(),
            goes_on_at: self.goes_on_at,
            beside: self.beside,
        }))
    }
}

struct ProbeFold {
    events: Vec<StoredEvent>,
    writes: Arc<AtomicUsize>,
    keyed_writes: Arc<AtomicUsize>,
    goes_on_at: Option<usize>,
    beside: Option<Beside>,
}

/// The events a [`ProbeFold`] took out, written beside it.
struct ProbeWrite {
    events: Vec<StoredEvent>,
    ends: Beside,
    keyed_writes: Arc<AtomicUsize>,
}

/// Counts a fold's write into `schema` in `keyed_writes` if the probe's key is there.
async fn count_if_keyed(
    tx: &mut PgConnection,
    schema: &str,
    keyed_writes: &AtomicUsize,
) -> Result<(), ProjectionError> {
    let keyed: bool = sqlx::query_scalar(
        "select exists(select 1 from pg_indexes where schemaname = $1 and indexname = 'seen_key')",
    )
    .bind(schema)
    .fetch_one(tx)
    .await?;
    if keyed {
        keyed_writes.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}

impl FoldWrite for ProbeWrite {
    fn write<'a>(
        self: Box<Self>,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            count_if_keyed(tx, schema, &self.keyed_writes).await?;
            Probe.apply(tx, schema, &self.events).await?;
            if let Beside::Refused = self.ends {
                refused(tx).await?;
            }
            Ok(())
        })
    }
}

impl Fold for ProbeFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        refuse_poison(events)?;
        self.events.extend_from_slice(events);
        Ok(())
    }
    fn rows(&self) -> usize {
        self.events.len()
    }
    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            self.writes.fetch_add(1, Ordering::SeqCst);
            count_if_keyed(tx, schema, &self.keyed_writes).await?;
            let events = std::mem::take(&mut self.events);
            Probe.apply(tx, schema, &events).await?;
            if let Some(Beside::WrittenThenRefusedInPlace) = self.beside {
                refused(tx).await?;
            }
            Ok(())
        })
    }
    fn bound(&self) -> usize {
        self.goes_on_at
            .unwrap_or(omoi_projections::runner::FOLD_ROWS)
    }
    fn goes_on(&self) -> bool {
        self.goes_on_at.is_some()
    }
    fn take_write(&mut self) -> Option<Box<dyn FoldWrite>> {
        let ends = self.beside?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        let events = std::mem::take(&mut self.events);
        Some(Box::new(ProbeWrite {
            events,
            ends,
            keyed_writes: self.keyed_writes.clone(),
        }))
    }
}

/// What a build of `projector` holds, in the order it was written, and the log's order.
async fn applied_and_log(
    database: &TestDatabase,
    build: &omoi_projections::catalog::Build,
) -> (Vec<(i64, i64)>, Vec<(i64, i64)>) {
    let applied = sqlx::query_as(&format!(
        "select transaction_id, global_position from {}.seen order by n",
        build.schema()
    ))
    .fetch_all(&database.pool)
    .await
    .expect("the applied order");
    let log = sqlx::query_as(
        "select transaction_id::text::bigint, global_position from events
          order by transaction_id, global_position",
    )
    .fetch_all(&database.pool)
    .await
    .expect("the log");
    (applied, log)
}

/// Whether the build's table has the probe's key, unique and valid.
async fn keyed(database: &TestDatabase, build: &omoi_projections::catalog::Build) -> bool {
    sqlx::query_scalar(
        "select exists(select 1 from pg_index i join pg_class c on c.oid = i.indexrelid
                        join pg_namespace n on n.oid = c.relnamespace
                       where n.nspname = $1 and c.relname = 'seen_key'
                         and i.indisunique and i.indisvalid)",
    )
    .bind(build.schema())
    .fetch_one(&database.pool)
    .await
    .expect("the key looked up")
}

/// A fresh database whose log holds `probes` probe events, all visible, and a build of
/// `projector` at position zero.
async fn building_over_probes(
    projector: &dyn Projector,
    probes: i64,
) -> (TestDatabase, omoi_projections::catalog::Build) {
    use omoi_projections::catalog::{self, BuildState};

    let database = TestDatabase::create().await.expect("database");
    append_probes(&database.pool, "probes", probes).await;
    let mut conn = database.pool.acquire().await.expect("a connection");
    let build = catalog::create_build(&mut conn, projector, BuildState::Building)
        .await
        .expect("a build");
    drop(conn);
    whole_log_visible(&database).await;
    (database, build)
}

/// A leader of `build` driven one step at a time, as the runner drives it.
struct Stepper {
    conn: PgConnection,
    stats: omoi_projections::runner::RunnerStats,
    reading: omoi_projections::runner::Reading,
}

impl Stepper {
    async fn new(database: &TestDatabase) -> Self {
        use sqlx::Connection;
        Self {
            conn: PgConnection::connect_with(&database.options)
                .await
                .expect("a connection"),
            stats: Default::default(),
            reading: Default::default(),
        }
    }

    /// One step of `build` of `projector`, in batches of `batch`.
    async fn step(
        &mut self,
        database: &TestDatabase,
        projector: &dyn Projector,
        build: i64,
        batch: i64,
    ) -> omoi_projections::runner::Step {
        omoi_projections::runner::step(
            &database.pool,
            &mut self.conn,
            projector,
            build,
            batch,
            &self.stats,
            &mut self.reading,
        )
        .await
        .expect("a step")
    }
}

/// Waits until no transaction older than the log's last one is running anywhere in the
/// cluster (the log's horizon is the cluster's: a test beside this one may hold it), so
/// that a catch-up sees the whole log.
async fn whole_log_visible(database: &TestDatabase) {
    eventually("the log's horizon passes its last event", || async {
        sqlx::query_scalar::<_, bool>(
            "select pg_snapshot_xmin(pg_current_snapshot()) > max(transaction_id) from events",
        )
        .fetch_one(&database.pool)
        .await
        .expect("the horizon")
    })
    .await;
}

/// A catch-up of a build another process leads (a server's runner takes up a build it
/// finds building) follows that process and applies nothing itself — both would reach
/// the build's go-live and its concurrent index builds, which deadlock on one table —
/// then leads once that process is gone, and takes the build live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_catch_up_follows_the_builds_leader_and_leads_once_it_is_gone() {
    use omoi_projections::catalog::BuildState;
    use omoi_projections::runner::catch_up;
    use sqlx::Connection;

    let probes = 50;
    let (database, build) = building_over_probes(&Probe, probes).await;
    let mut leader = PgConnection::connect_with(&database.options)
        .await
        .expect("the other leader's connection");
    sqlx::query("select pg_advisory_lock(hashtext('omoi-projector'), $1::int)")
        .bind(build.build as i32)
        .execute(&mut leader)
        .await
        .expect("the build's lock");

    let looks = Arc::new(AtomicUsize::new(0));
    let catching_up = tokio::spawn({
        let (pool, options, looks) = (
            database.pool.clone(),
            database.options.clone(),
            looks.clone(),
        );
        async move {
            catch_up(&pool, &options, &Probe, build.build, 10, |_| {
                looks.fetch_add(1, Ordering::SeqCst);
            })
            .await
        }
    });
    eventually("the catch-up looked at the build three times", || async {
        looks.load(Ordering::SeqCst) >= 3
    })
    .await;
    let (applied, _) = applied_and_log(&database, &build).await;
    assert!(applied.is_empty(), "a follower applied {applied:?}");
    assert!(!catching_up.is_finished(), "it waits for the leader");

    leader.close().await.expect("the leader gone");
    let done = catching_up.await.expect("the task").expect("a catch-up");
    assert!(done.failure.is_none(), "stopped: {:?}", done.failure);
    assert_eq!(done.state, BuildState::Live);
    assert_eq!(done.events_applied, probes);
    let (applied, log) = applied_and_log(&database, &build).await;
    assert!(applied == log, "every event once, in the log's order");
}

/// A rebuild of a projector that folds reads the whole log into its fold and writes it
/// with one transaction — no batch — then goes live; later events go in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_folds_the_log_in_memory_and_writes_it_once() {
    use omoi_projections::catalog::{self, BuildState};
    use omoi_projections::runner::{catch_up, CATCH_UP_BATCH};

    let database = TestDatabase::create().await.expect("database");
    let projector = FoldingProbe::default();
    let count = 2 * CATCH_UP_BATCH + 7;
    append_probes(&database.pool, "before", count).await;
    let mut conn = database.pool.acquire().await.expect("a connection");
    let build = catalog::create_build(&mut conn, &projector, BuildState::Building)
        .await
        .expect("a build");
    drop(conn);
    let catch_up = || {
        catch_up(
            &database.pool,
            &database.options,
            &projector,
            build.build,
            100,
            |_| {},
        )
    };

    whole_log_visible(&database).await;
    let done = catch_up().await.expect("a catch-up");
    assert!(done.failure.is_none(), "stopped: {:?}", done.failure);
    assert_eq!(done.events_applied, count);
    assert_eq!(done.state, BuildState::Live);
    assert_eq!(
        projector.writes.load(Ordering::SeqCst),
        1,
        "one fold, written once"
    );
    assert_eq!(
        projector.keyed_writes.load(Ordering::SeqCst),
        0,
        "its rows copied into a table without the key"
    );
    assert!(keyed(&database, &build).await, "the key built after them");
    let (applied, log) = applied_and_log(&database, &build).await;
    assert!(applied == log, "every event once, in the log's order");

    let batches = projector.batches.load(Ordering::SeqCst);
    append_probes(&database.pool, "after", 5).await;
    whole_log_visible(&database).await;
    let done = catch_up().await.expect("a live catch-up");
    assert_eq!(done.events_applied, count + 5);
    assert_eq!(
        projector.writes.load(Ordering::SeqCst),
        1,
        "a live build never folds"
    );
    assert!(projector.batches.load(Ordering::SeqCst) > batches);
    let (applied, log) = applied_and_log(&database, &build).await;
    assert!(applied == log, "every event once, in the log's order");
}

/// A poison event in a rebuild that folds: the fold refuses it, nothing of it is written,
/// and the batches take over from the fold's last committed write (none: position zero)
/// and stop exactly at the event, with the events before it applied once. A write in
/// flight beside the fold ends before the batches start, and they start where it left
/// the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_stops_a_folded_rebuild_exactly_where_batches_stop() {
    use omoi_projections::catalog::{self, BuildState};
    use omoi_projections::runner::catch_up;

    // Pages of 30: a fold written once (dropped) or one that writes its first page
    // beside itself (its bound is 20) and meets the poison event in the next.
    for (projector, writes) in [
        (FoldingProbe::default(), 0),
        (FoldingProbe::writing_beside(20, Beside::Written), 1),
    ] {
        let database = TestDatabase::create().await.expect("database");
        append_probes(&database.pool, "before", 50).await;
        sqlx::query(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             values ('Probe', 'poison', 1, 'ProbePoison', '1', '{}', '{}')",
        )
        .execute(&database.pool)
        .await
        .expect("the poison event");
        append_probes(&database.pool, "after", 50).await;
        let poison: i64 =
            sqlx::query_scalar("select global_position from events where aggregate_id = 'poison'")
                .fetch_one(&database.pool)
                .await
                .expect("its position");
        let mut conn = database.pool.acquire().await.expect("a connection");
        let build = catalog::create_build(&mut conn, &projector, BuildState::Building)
            .await
            .expect("a build");
        drop(conn);

        whole_log_visible(&database).await;
        let done = catch_up(
            &database.pool,
            &database.options,
            &projector,
            build.build,
            30,
            |_| {},
        )
        .await
        .expect("a catch-up");
        let (at, error) = done.failure.expect("stopped at the poison event");
        assert_eq!(at.global_position, poison, "{error}");
        assert_eq!(done.events_applied, 50);
        assert_eq!(projector.writes.load(Ordering::SeqCst), writes);
        assert!(
            keyed(&database, &build).await,
            "the key there for the batches"
        );
        let (applied, log) = applied_and_log(&database, &build).await;
        assert!(
            applied[..] == log[..50],
            "the events before the poison one, once, in order"
        );
    }
}

/// A leader stopped in the middle of a fold (between two of its pages) has written
/// nothing: the build is still at position zero and empty, and the next leader folds from
/// the start and writes every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fold_stopped_between_pages_leaves_the_build_at_zero_and_the_next_leader_folds_again() {
    use omoi_projections::catalog::{self, BuildState};
    use omoi_projections::runner::{catch_up, step, Reading, RunnerStats, Step};
    use sqlx::Connection;

    let projector = FoldingProbe::default();
    let (database, build) = building_over_probes(&projector, 250).await;

    // The first leader folds a page of 100 and the read-ahead's page after it (the rest of
    // the log), then stops before its write (its reading is dropped).
    let mut conn = PgConnection::connect_with(&database.options)
        .await
        .expect("a connection");
    let (stats, mut reading) = (RunnerStats::default(), Reading::default());
    for expected in [100, 150] {
        let folded = step(
            &database.pool,
            &mut conn,
            &projector,
            build.build,
            100,
            &stats,
            &mut reading,
        )
        .await
        .expect("a step");
        assert_eq!(folded, Step::Applied(expected));
    }
    drop(reading);
    let at = catalog::build_by_id(&database.pool, build.build)
        .await
        .expect("the build")
        .expect("it exists");
    assert_eq!((at.events_applied, at.state), (0, BuildState::Building));
    let (applied, _) = applied_and_log(&database, &build).await;
    assert!(applied.is_empty(), "a fold writes nothing before its end");
    assert_eq!(projector.writes.load(Ordering::SeqCst), 0);

    let done = catch_up(
        &database.pool,
        &database.options,
        &projector,
        build.build,
        100,
        |_| {},
    )
    .await
    .expect("the next leader's catch-up");
    assert_eq!((done.events_applied, done.state), (250, BuildState::Live));
    assert_eq!(projector.writes.load(Ordering::SeqCst), 1);
    assert_eq!(
        projector.batches.load(Ordering::SeqCst),
        0,
        "folded, not batched"
    );
    let (applied, log) = applied_and_log(&database, &build).await;
    assert!(applied == log, "every event once, in the log's order");
}

/// A rebuild whose fold goes on writes whenever the fold holds its bound — each write
/// one transaction with the checkpoint past what it folded — and folds on from there:
/// every event once, in order, and no batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fold_that_goes_on_is_written_at_its_bound_and_folds_on() {
    use omoi_projections::runner::CATCH_UP_BATCH;

    let projector = FoldingProbe::going_on_at(9_950);
    let (writes, batches, progress) = rebuilt(&projector, 2 * CATCH_UP_BATCH + 7).await;
    // Pages of 100, 10,000 and 9,907: written once past its bound (10,100 events), then
    // again at the stream's end (9,907, short of it).
    assert_eq!(progress, [100, 10_100, 10_100, 20_007, 20_007, 20_007]);
    assert_eq!(writes, 2);
    assert_eq!(
        projector.keyed_writes.load(Ordering::SeqCst),
        1,
        "the first write into the bare table, keyed after its rows; the second into the keyed"
    );
    assert_eq!(batches, 0, "folded, not batched");
}

/// What a rebuild of `projector` over `count` probe events (pages of 100) did, once it
/// went live with every event once, in the log's order: its folds' writes, its batches,
/// and the progress it reported.
async fn rebuilt(projector: &FoldingProbe, count: i64) -> (usize, usize, Vec<i64>) {
    use omoi_projections::catalog::BuildState;
    use omoi_projections::runner::catch_up;

    let (database, build) = building_over_probes(projector, count).await;
    let mut progress = Vec::new();
    let done = catch_up(
        &database.pool,
        &database.options,
        projector,
        build.build,
        100,
        |applied| progress.push(applied),
    )
    .await
    .expect("a catch-up");
    assert!(done.failure.is_none(), "stopped: {:?}", done.failure);
    assert_eq!((done.events_applied, done.state), (count, BuildState::Live));
    let (applied, log) = applied_and_log(&database, &build).await;
    assert!(
        applied == log,
        "every event once, in the log's order ({count} events)"
    );
    assert!(
        keyed(&database, &build).await,
        "keyed by the time it went live"
    );
    let writes = projector.writes.load(Ordering::SeqCst);
    (writes, projector.batches.load(Ordering::SeqCst), progress)
}

/// A build made when the key was a primary key (before keys were indexes of their own)
/// and led by a process that drops the key for its fold's first write: the primary key
/// stays, kept up as the rows go in, and the fold is written once, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_that_is_a_primary_key_stays_through_the_folds_write() {
    let projector = FoldingProbe {
        key_constrained: true,
        ..FoldingProbe::default()
    };
    let (writes, batches, _) = rebuilt(&projector, 250).await;
    assert_eq!((writes, batches), (1, 0), "folded and written once");
    assert_eq!(
        projector.keyed_writes.load(Ordering::SeqCst),
        1,
        "written with the primary key there"
    );
}

/// [`rebuilt`] of a [`FoldingProbe`] writing beside its fold, bound 4,950.
async fn rebuilt_beside(beside: Beside, count: i64) -> (usize, usize, Vec<i64>) {
    rebuilt(&FoldingProbe::writing_beside(4_950, beside), count).await
}

/// A rebuild whose fold writes beside itself hands each bound's rows to a write on a
/// connection of its own and folds on; the next write (or the stream's end) waits for
/// it, and claims the build from where it left it: every event once, in order, no batch,
/// and the progress never going back — whether the stream ends after a few more events
/// or exactly where the last write beside the fold began.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fold_writing_beside_itself_folds_on_and_writes_every_event_once() {
    use omoi_projections::runner::CATCH_UP_BATCH;

    // Pages of 100 and three of 10,000, each taking the fold past its bound (about half
    // a page): three writes beside it; then 7 more events, written in place at the
    // stream's end once the third has committed — or none.
    for (count, expected) in [(3 * CATCH_UP_BATCH + 107, 4), (3 * CATCH_UP_BATCH + 100, 3)] {
        let (writes, batches, progress) = rebuilt_beside(Beside::Written, count).await;
        assert_eq!(writes, expected, "{count} events");
        assert_eq!(batches, 0, "folded, not batched ({count} events)");
        assert!(
            progress.windows(2).all(|w| w[0] <= w[1]),
            "progress went back: {progress:?}"
        );
        assert_eq!(progress.last(), Some(&count));
    }
}

/// A write beside the fold that the database refuses drops the fold: the batches go on
/// from the checkpoint of the last write that committed — the events of the refused
/// write and those folded since are applied once, by the batches, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fold_whose_write_beside_it_is_refused_is_taken_over_in_batches() {
    use omoi_projections::runner::CATCH_UP_BATCH;

    let (writes, batches, _) = rebuilt_beside(Beside::Refused, 2 * CATCH_UP_BATCH + 7).await;
    assert_eq!(writes, 1, "one write, refused");
    assert!(batches > 0, "the batches took over");
}

/// A fold whose last write, in place at the stream's end, is refused right after its
/// writes beside it committed is taken over by the batches from the checkpoint the last
/// of those left — one batch, of the events the refused write held — not from the build
/// as the leader read it before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_refused_after_one_beside_the_fold_is_taken_over_from_where_that_one_left() {
    use omoi_projections::runner::CATCH_UP_BATCH;

    // Pages of 100 and three of 10,000 (three writes beside the fold), then 7 events.
    let count = 3 * CATCH_UP_BATCH + 107;
    let (writes, batches, _) = rebuilt_beside(Beside::WrittenThenRefusedInPlace, count).await;
    assert_eq!(writes, 4);
    assert_eq!(batches, 1, "one batch: the 7 events of the refused write");
}

/// A batch whose build's row was moved by someone else after the leader last read it (an
/// operator, another leader) is rolled back whole: the claim at its end finds the row
/// changed. Nothing of the batch is written; the row stays as the other left it, and the
/// leader's connection is left outside any transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_whose_build_moved_meanwhile_writes_nothing() {
    use omoi_projections::catalog;
    use omoi_projections::runner::Step;

    let (database, build) = building_over_probes(&Probe, 50).await;
    let mut leader = Stepper::new(&database).await;
    let first = leader.step(&database, &Probe, build.build, 20).await;
    assert_eq!(first, Step::Applied(20));
    let rows = |schema: String| {
        let pool = database.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("select count(*) from {schema}.seen"))
                .fetch_one(&pool)
                .await
                .expect("the rows")
        }
    };
    assert_eq!(rows(build.schema()).await, 20);

    // Someone else moves the row; the leader trusts its copy for a moment yet.
    sqlx::query(
        "update projector_builds set global_position = global_position + 1000 where build = $1",
    )
    .bind(build.build)
    .execute(&database.pool)
    .await
    .expect("the move");
    let second = leader.step(&database, &Probe, build.build, 20).await;
    assert_eq!(second, Step::Applied(0), "the claim found the row moved");
    assert_eq!(
        rows(build.schema()).await,
        20,
        "nothing of the batch written"
    );
    let at = catalog::build_by_id(&database.pool, build.build)
        .await
        .expect("the build")
        .expect("it exists");
    assert_eq!(at.events_applied, 20, "the row as the other left it");
    sqlx::query("select 1")
        .execute(&mut leader.conn)
        .await
        .expect("the leader's connection is not left in an aborted transaction");
}

/// A leader stopped after one of its fold's writes leaves the build at that write's
/// checkpoint (its rows and nothing past them); the next leader does not fold from the
/// middle but goes on in batches from there: every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fold_stopped_after_a_write_is_taken_over_in_batches_from_its_checkpoint() {
    use omoi_projections::catalog::{self, BuildState};
    use omoi_projections::runner::{catch_up, step, Reading, RunnerStats, Step};
    use sqlx::Connection;

    let projector = FoldingProbe::going_on_at(150);
    let (database, build) = building_over_probes(&projector, 400).await;

    // The first leader folds a page of 100 and the read-ahead's page after it (the rest),
    // holds its bound, writes, then stops (its reading is dropped).
    let mut conn = PgConnection::connect_with(&database.options)
        .await
        .expect("a connection");
    let (stats, mut reading) = (RunnerStats::default(), Reading::default());
    for expected in [Step::Applied(100), Step::Applied(300), Step::Applied(0)] {
        let stepped = step(
            &database.pool,
            &mut conn,
            &projector,
            build.build,
            100,
            &stats,
            &mut reading,
        )
        .await
        .expect("a step");
        assert_eq!(stepped, expected);
    }
    drop(reading);
    assert_eq!(projector.writes.load(Ordering::SeqCst), 1);
    let at = catalog::build_by_id(&database.pool, build.build)
        .await
        .expect("the build")
        .expect("it exists");
    assert_eq!((at.events_applied, at.state), (400, BuildState::Building));
    let (applied, log) = applied_and_log(&database, &build).await;
    assert!(applied == log, "the write holds every event folded, once");

    append_probes(&database.pool, "more", 50).await;
    whole_log_visible(&database).await;
    let done = catch_up(
        &database.pool,
        &database.options,
        &projector,
        build.build,
        100,
        |_| {},
    )
    .await
    .expect("the next leader's catch-up");
    assert_eq!((done.events_applied, done.state), (450, BuildState::Live));
    assert_eq!(
        projector.writes.load(Ordering::SeqCst),
        1,
        "no fold from the middle"
    );
    assert!(projector.batches.load(Ordering::SeqCst) > 0);
    let (applied, log) = applied_and_log(&database, &build).await;
    assert!(applied == log, "every event once, in the log's order");
}

/// [`Probe`] with an index for readers: a unique one on the events' places.
struct IndexedProbe;

impl Projector for IndexedProbe {
    fn name(&self) -> &'static str {
        "indexed_probe"
    }
    fn version(&self) -> i32 {
        1
    }
    fn tables(&self) -> &'static [&'static str] {
        Probe.tables()
    }
    fn create_tables(&self, schema: &str) -> Vec<String> {
        Probe.create_tables(schema)
    }
    fn create_indexes(&self, schema: &str) -> Vec<String> {
        vec![format!(
            "create unique index if not exists seen_by_place
                on {schema}.seen (transaction_id, global_position)"
        )]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Probe.apply(tx, schema, events)
    }
}

/// A rebuilt build gets its readers' indexes when it goes live, built concurrently (no
/// transaction id held while they build); one an interrupted build left invalid — here a
/// unique index whose concurrent build failed on duplicates — is dropped and built again
/// rather than taken for built by `if not exists`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn going_live_builds_the_readers_indexes_again_where_an_interrupted_build_left_one_invalid() {
    use omoi_projections::catalog::{self, BuildState};
    use omoi_projections::runner::catch_up;

    let database = TestDatabase::create().await.expect("database");
    append_probes(&database.pool, "probes", 30).await;
    let mut conn = database.pool.acquire().await.expect("a connection");
    let build = catalog::create_build(&mut conn, &IndexedProbe, BuildState::Building)
        .await
        .expect("a build");
    let schema = build.schema();
    for n in 1..=2 {
        sqlx::query(&format!(
            "insert into {schema}.seen (aggregate_type, aggregate_id, sequence, transaction_id,
                                        global_position)
             values ('Duplicate', 'd', $1, 0, 0)"
        ))
        .bind(n)
        .execute(&mut *conn)
        .await
        .expect("a duplicate place");
    }
    let interrupted = sqlx::query(&format!(
        "create unique index concurrently seen_by_place on {schema}.seen
             (transaction_id, global_position)"
    ))
    .persistent(false)
    .execute(&mut *conn)
    .await;
    assert!(interrupted.is_err(), "the duplicates fail the build");
    sqlx::query(&format!(
        "delete from {schema}.seen where aggregate_type = 'Duplicate'"
    ))
    .execute(&mut *conn)
    .await
    .expect("the duplicates gone");
    let valid = || {
        sqlx::query_scalar::<_, bool>(
            "select i.indisvalid from pg_index i
               join pg_class c on c.oid = i.indexrelid
               join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = $1 and c.relname = 'seen_by_place'",
        )
        .bind(&schema)
        .fetch_optional(&database.pool)
    };
    assert_eq!(
        valid().await.expect("its state"),
        Some(false),
        "left invalid"
    );

    whole_log_visible(&database).await;
    let done = catch_up(
        &database.pool,
        &database.options,
        &IndexedProbe,
        build.build,
        100,
        |_| {},
    )
    .await
    .expect("a catch-up");
    assert_eq!((done.events_applied, done.state), (30, BuildState::Live));
    assert_eq!(
        valid().await.expect("its state"),
        Some(true),
        "built again, valid"
    );
}

/// A process announces its first commit after a quiet spell to other processes at once,
/// not at the end of its announcement window (an hour here); a commit within a window
/// is announced when it ends, not lost.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_commit_after_a_quiet_spell_is_announced_at_once_and_none_is_lost() {
    use omoi_store::wakeup::CHANNEL;
    use sqlx::postgres::PgListener;

    let database = TestDatabase::create().await.expect("database");
    let mut listener = PgListener::connect_with(&database.pool)
        .await
        .expect("a listener");
    listener.listen(CHANNEL).await.expect("listening");

    let (commits, hourly) = announcer(&database, Duration::from_secs(3600));
    commits.send_modify(|n| *n += 1);
    assert_eq!(announced(&mut listener).await.channel(), CHANNEL);
    hourly.abort();

    let (commits, brief) = announcer(&database, Duration::from_millis(200));
    commits.send_modify(|n| *n += 1);
    announced(&mut listener).await;
    // Within the window of the announcement just made: announced at its end.
    commits.send_modify(|n| *n += 1);
    announced(&mut listener).await;
    brief.abort();
}

/// The next notification, which must come long before an hour's window ends.
async fn announced(listener: &mut sqlx::postgres::PgListener) -> sqlx::postgres::PgNotification {
    tokio::time::timeout(Duration::from_secs(30), listener.recv())
        .await
        .expect("announced long before the window's end")
        .expect("a notification")
}

/// A process's announcer of commits with this `window`, and the counter its commits bump.
fn announcer(
    database: &TestDatabase,
    window: Duration,
) -> (tokio::sync::watch::Sender<u64>, tokio::task::JoinHandle<()>) {
    let (commits, watched) = tokio::sync::watch::channel(0u64);
    let task = tokio::spawn(omoi_store::wakeup::announce_commits(
        database.pool.clone(),
        watched,
        window,
    ));
    (commits, task)
}

/// Whether no notification comes within a second (one sent would come within moments).
async fn quiet(listener: &mut sqlx::postgres::PgListener) -> bool {
    tokio::time::timeout(Duration::from_secs(1), listener.recv())
        .await
        .is_err()
}

/// Appends one probe event in each batch it applies while `echo` is on, as a process
/// manager's effects are appended.
struct Echo {
    echo: AtomicBool,
}

impl Projector for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn version(&self) -> i32 {
        1
    }
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }
    fn create_tables(&self, _schema: &str) -> Vec<String> {
        Vec::new()
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        _events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            if self.echo.load(Ordering::SeqCst) {
                append_probes(&mut *tx, &Uuid::new_v4().to_string(), 1).await;
            }
            Ok(())
        })
    }
    fn appends_events(&self) -> bool {
        true
    }
}

/// A batch that appended events is announced to other processes once it commits; one
/// that appended nothing is not, nor one rolled back because its build moved meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_is_announced_only_when_it_committed_appended_events() {
    use omoi_projections::runner::{step, Reading, RunnerStats, Step};
    use omoi_store::wakeup::CHANNEL;
    use sqlx::postgres::PgListener;
    use sqlx::Connection;

    let echo = Echo {
        echo: AtomicBool::new(true),
    };
    let (database, build) = building_over_probes(&echo, 10).await;
    let mut listener = PgListener::connect_with(&database.pool)
        .await
        .expect("a listener");
    listener.listen(CHANNEL).await.expect("listening");
    let mut conn = PgConnection::connect_with(&database.options)
        .await
        .expect("a connection");
    let (stats, mut reading) = (RunnerStats::default(), Reading::default());
    macro_rules! stepped {
        () => {
            step(
                &database.pool,
                &mut conn,
                &echo,
                build.build,
                100,
                &stats,
                &mut reading,
            )
            .await
            .expect("a step")
        };
    }

    assert_eq!(stepped!(), Step::Applied(10));
    assert_eq!(announced(&mut listener).await.channel(), CHANNEL);

    // A batch that appends, rolled back: its build was moved by someone else since the
    // leader last read its row (which it trusts for a moment).
    let move_by = |by: i64| {
        sqlx::query(
            "update projector_builds set global_position = global_position + $2 where build = $1",
        )
        .bind(build.build)
        .bind(by)
        .execute(&database.pool)
    };
    move_by(1000).await.expect("the move");
    assert_eq!(stepped!(), Step::Applied(0));
    assert!(quiet(&mut listener).await, "rolled back, nothing announced");
    let log: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&database.pool)
        .await
        .expect("the log");
    assert_eq!(
        log, 11,
        "the probes and the first batch's event, none of the second"
    );

    // The first batch's event is the next batch: applied, appending nothing.
    move_by(-1000).await.expect("moved back");
    whole_log_visible(&database).await;
    echo.echo.store(false, Ordering::SeqCst);
    assert_eq!(stepped!(), Step::Applied(1));
    assert!(
        quiet(&mut listener).await,
        "nothing appended, nothing announced"
    );
}

/// A leader whose build another build retired meanwhile (a rebuild went live and dropped
/// the retired build's tables) finds its next batch failing on the missing tables: the
/// build is retired, not stopped at a poison event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_a_build_retired_meanwhile_ends_the_build_without_a_poison_event() {
    use omoi_projections::catalog;
    use omoi_projections::runner::Step;

    let (database, build) = building_over_probes(&Probe, 50).await;
    let mut leader = Stepper::new(&database).await;
    let first = leader.step(&database, &Probe, build.build, 20).await;
    assert_eq!(first, Step::Applied(20));

    // Retired and its tables dropped, as a go-live elsewhere does; the leader still
    // trusts its copy of the row (live or building) for a moment.
    sqlx::query("update projector_builds set state = 'retired' where build = $1")
        .bind(build.build)
        .execute(&database.pool)
        .await
        .expect("retired");
    catalog::drop_schema(&database.pool, &build.schema())
        .await
        .expect("dropped");
    let second = leader.step(&database, &Probe, build.build, 20).await;
    assert_eq!(second, Step::Retired);
    let at = catalog::build_by_id(&database.pool, build.build)
        .await
        .expect("the build")
        .expect("it exists");
    assert_eq!(at.failure, None, "no poison event recorded");
    assert_eq!(at.events_applied, 20);
}

/// A projector whose tables cannot be made gets no build: its row, schema and tables come
/// together or not at all (a runner that found the row first judged the first event poison).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_whose_tables_cannot_be_made_leaves_no_row_and_no_schema() {
    use omoi_projections::catalog::{self, BuildState};

    /// The probe, with a table that cannot be made after the one that can.
    struct BrokenTables;
    impl Projector for BrokenTables {
        fn name(&self) -> &'static str {
            "broken_tables"
        }
        fn version(&self) -> i32 {
            1
        }
        fn tables(&self) -> &'static [&'static str] {
            Probe.tables()
        }
        fn create_tables(&self, schema: &str) -> Vec<String> {
            let mut statements = Probe.create_tables(schema);
            statements.push(format!("create table {schema}.broken (n no_such_type)"));
            statements
        }
        fn apply<'a>(
            &'a self,
            tx: &'a mut PgConnection,
            schema: &'a str,
            events: &'a [StoredEvent],
        ) -> BoxFuture<'a, Result<(), ProjectionError>> {
            Probe.apply(tx, schema, events)
        }
    }

    let database = TestDatabase::create().await.expect("database");
    let mut conn = database.pool.acquire().await.expect("a connection");
    let refused = catalog::create_build(&mut conn, &BrokenTables, BuildState::Building).await;
    assert!(refused.is_err(), "the table cannot be made");
    let rows: i64 = sqlx::query_scalar(
        "select count(*) from projector_builds where projector = 'broken_tables'",
    )
    .fetch_one(&database.pool)
    .await
    .expect("counted");
    assert_eq!(rows, 0, "no build row");
    let schemas: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.schemata
          where schema_name like 'rm_broken_tables_%'",
    )
    .fetch_one(&database.pool)
    .await
    .expect("counted");
    assert_eq!(schemas, 0, "no schema");
    // The connection is usable, outside any transaction.
    sqlx::query("select 1")
        .execute(&mut *conn)
        .await
        .expect("usable");
}

/// A rebuild beside the live build (as `omoi projections rebuild` makes one), led by the
/// same runner while commands keep coming: it goes live, and the build it retired is
/// neither reported as led any more nor stopped at a poison event, and what the projector
/// kept of its tables in memory is forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_retired_by_a_rebuild_beside_it_is_no_longer_reported_as_led() {
    use omoi_projections::catalog::{self, BuildState};

    let database = TestDatabase::create().await.expect("database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let (trigger, shutdown) = Shutdown::new();
    let (stats, task) = omoi::server::start_projections_with(
        database.pool.clone(),
        database.options.clone(),
        &bus,
        test_runner_config(),
        vec![Arc::new(Probe)],
        shutdown,
    )
    .await
    .expect("the probe's build");
    create_tickets(&bus, 20).await;
    eventually("the live build projects", || async {
        seen(&database).await == 20
    })
    .await;
    let old = builds(&database).await[0].0;
    let old_schema = catalog::schema_of("probe", old);
    // Forgotten once so far: at the start of its leadership.
    let forgotten_while_led = times_forgotten(&old_schema);
    let mut conn = database.pool.acquire().await.expect("a connection");
    let rebuilt = catalog::create_build(&mut conn, &Probe, BuildState::Building)
        .await
        .expect("a rebuild");
    drop(conn);
    // Commands while the rebuild catches up (with no pause it would never find the end
    // of the stream to go live at).
    create_tickets(&bus, 5).await;
    eventually("the rebuild goes live", || async {
        builds(&database)
            .await
            .iter()
            .any(|(build, _, state)| *build == rebuilt.build && state == "live")
    })
    .await;
    eventually("the retired build is not reported as led", || async {
        stats
            .snapshot()
            .iter()
            .filter(|s| s.build == old)
            .all(|s| !s.leader)
    })
    .await;
    eventually("what the retired build kept is forgotten", || async {
        times_forgotten(&old_schema) > forgotten_while_led
    })
    .await;
    let failure: Option<String> =
        sqlx::query_scalar("select error from projector_builds where build = $1")
            .bind(old)
            .fetch_one(&database.pool)
            .await
            .expect("the old build");
    assert_eq!(failure, None);
    let _ = trigger.send(true);
    task.await.expect("runner");
}
