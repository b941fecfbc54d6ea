//! Every projector applies a batch exactly as it would apply its events one by one: for
//! random logs (events of unknown entities, reassignments, dependency edits, renames and
//! re-registrations included), tables built one event at a time equal tables built in
//! batches of random sizes — and, for a projector that folds a rebuild in memory, tables
//! written from a fold of the log's first events with batches after it — in a real
//! PostgreSQL (the log written to its event table, from which snapshots fold). In batches
//! and folded, a projector gets only the metadata fields it says it reads, as a catch-up
//! streams them. A view as of any past position is the same whether it starts from a
//! snapshot or from the start of the log.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::DomainEvent;
use omoi_domain::agent::{AgentEvent, AgentStatus, AgentType};
use omoi_domain::common::{Phase, Priority};
use omoi_domain::task::{FailureReason, SteeringSource, TaskEvent};
use omoi_domain::ticket::{BlockReason, TicketEvent, TicketStatus};
use omoi_projections::board::BoardModel;
use omoi_projections::graph::GraphModel;
use omoi_projections::snapshots::{model_before, SnapshotsProjector};
use omoi_projections::verify::diff_schemas;
use omoi_projections::{catalog, runner, Fold, ProjectionError, Projector};
use omoi_store::StoredEvent;
use omoi_testing::TestDatabase;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const TICKETS: u8 = 4;
const TASKS: u8 = 6;
const AGENTS: u8 = 3;
/// Events of a project between two of its snapshots, whole or delta.
const SNAPSHOTS_EVERY: i64 = 5;

/// One generated event: what happens (`kind`), to which entity (`a`), with what (`b`).
#[derive(Debug, Clone, Copy)]
struct Op {
    kind: u8,
    a: u8,
    b: u8,
}

fn id(kind: u128, n: u8) -> Uuid {
    Uuid::from_u128((kind << 64) | u128::from(n))
}
fn ticket(n: u8) -> Uuid {
    id(1, n % TICKETS)
}
fn task(n: u8) -> Uuid {
    id(2, n % TASKS)
}
fn agent(n: u8) -> Uuid {
    id(3, n % AGENTS)
}
const ORGANIZATION: Uuid = Uuid::from_u128(0x10);
const PROJECT: Uuid = Uuid::from_u128(0x11);

fn at(i: usize) -> DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + i as i64, 0)
        .single()
        .expect("a valid time")
}

fn pick<T: Copy>(all: &[T], n: u8) -> T {
    all[usize::from(n) % all.len()]
}

/// The aggregate and event an op stands for.
fn event_of(op: Op, i: usize) -> (&'static str, Uuid, serde_json::Value, String) {
    let (a, b) = (op.a, op.b);
    let now = at(i);
    fn encode<E: DomainEvent + Serialize>(e: E) -> (serde_json::Value, String) {
        (serde_json::to_value(&e).expect("an event"), e.event_type())
    }
    let (aggregate, id, (payload, event_type)) = match op.kind % 27 {
        0 => (
            "Ticket",
            ticket(a),
            encode(TicketEvent::TicketCreated {
                ticket_id: ticket(a),
                organization_id: ORGANIZATION,
                project_id: PROJECT,
                spec_id: None,
                title: format!("ticket {a} v{b}"),
                description: String::new(),
                priority: pick(&Priority::ALL, b),
                phase: pick(&Phase::ALL, b),
            }),
        ),
        1 => (
            "Ticket",
            ticket(a),
            encode(TicketEvent::TicketUpdated {
                title: (b % 2 == 0).then(|| format!("renamed {a} {b}")),
                description: None,
                priority: (b % 3 == 0).then(|| pick(&Priority::ALL, b)),
                phase: None,
            }),
        ),
        2 => (
            "Ticket",
            ticket(a),
            encode(TicketEvent::TicketStatusChanged {
                from: pick(&TicketStatus::ALL, b.wrapping_add(1)),
                to: pick(&TicketStatus::ALL, b),
                note: None,
            }),
        ),
        3 => (
            "Ticket",
            ticket(a),
            encode(TicketEvent::TicketRegressed {
                feedback: format!("fix {b}"),
            }),
        ),
        4 => (
            "Ticket",
            ticket(a),
            encode(TicketEvent::TicketBlocked {
                reason: pick(
                    &[
                        BlockReason::Dependency,
                        BlockReason::WaitingOnClarification,
                        BlockReason::FailingChecks,
                        BlockReason::Environment,
                    ],
                    b,
                ),
                note: (b % 2 == 1).then(|| format!("note {b}")),
                blocked_at: now,
            }),
        ),
        5 => ("Ticket", ticket(a), encode(TicketEvent::TicketUnblocked)),
        6 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskCreated {
                task_id: task(a),
                organization_id: ORGANIZATION,
                project_id: PROJECT,
                ticket_id: ticket(b),
                title: format!("task {a} v{b}"),
                description: String::new(),
                task_type: "implement".into(),
                phase: Phase::Implementation,
                priority: pick(&Priority::ALL, b),
                depends_on: if b % 2 == 1 {
                    vec![task(a.wrapping_add(1)), id(9, b)]
                } else {
                    vec![]
                },
                required_capabilities: vec![],
                max_retries: 3,
                timeout_seconds: None,
                created_at: now,
            }),
        ),
        7 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskAssigned {
                agent_id: agent(b),
                at: now,
            }),
        ),
        8 => ("Task", task(a), encode(TaskEvent::TaskStarted { at: now })),
        9 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskProgressReported {
                message: format!("step {b}"),
            }),
        ),
        10 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskCompleted {
                result: json!({ "ok": b }),
                at: now,
            }),
        ),
        11 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskFailed {
                error: format!("error {b}"),
                attempt: 1,
                at: now,
            }),
        ),
        12 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskTimedOut {
                after_seconds: 60,
                attempt: 1,
                at: now,
            }),
        ),
        13 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskRetryScheduled {
                attempt: 2,
                not_before: now,
            }),
        ),
        14 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskPermanentlyFailed {
                reason: pick(
                    &[
                        FailureReason::PermanentError,
                        FailureReason::RetriesExhausted,
                        FailureReason::TimedOut,
                    ],
                    b,
                ),
            }),
        ),
        15 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskCancelled {
                reason: None,
                at: now,
            }),
        ),
        16 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskDependencyAdded {
                depends_on: task(b),
            }),
        ),
        17 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskDependencyRemoved {
                depends_on: task(b),
            }),
        ),
        18 => (
            "Agent",
            agent(a),
            encode(AgentEvent::AgentRegistered {
                agent_id: agent(a),
                organization_id: ORGANIZATION,
                project_id: (b % 2 == 0).then_some(PROJECT),
                name: format!("agent {a} v{b}"),
                agent_type: pick(&AgentType::ALL, b),
                capabilities: (0..b % 4).map(|c| format!("cap-{c}")).collect(),
                capacity: u32::from(b % 3) + 1,
                registered_at: now,
            }),
        ),
        19 => (
            "Agent",
            agent(a),
            encode(AgentEvent::AgentStatusChanged {
                from: pick(&AgentStatus::ALL, b.wrapping_add(1)),
                to: pick(&AgentStatus::ALL, b),
                reason: None,
                at: now,
            }),
        ),
        20 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskStalled {
                agent_id: agent(b),
                idle_since: at(i.saturating_sub(usize::from(b))),
                at: now,
            }),
        ),
        21 => (
            "Task",
            task(a),
            encode(TaskEvent::DuplicateSuspected {
                duplicate_of: task(b),
                similarity: 0.85 + f64::from(b % 16) / 100.0,
                at: now,
            }),
        ),
        22 => (
            "Task",
            task(a),
            encode(TaskEvent::TaskSteered {
                steering_id: id(5, b % 8),
                agent_id: agent(b),
                message: format!("steer {b}"),
                source: SteeringSource::Nudge,
                at: now,
            }),
        ),
        23 => (
            "Task",
            task(a),
            encode(TaskEvent::SteeringDelivered {
                steering_id: id(5, b % 8),
                agent_id: agent(b),
                at: now,
            }),
        ),
        24 => (
            "Agent",
            agent(a),
            encode(AgentEvent::AnomalyDetected {
                score: 0.8 + f64::from(b % 20) / 100.0,
                parts: omoi_domain::guardian::AnomalyParts {
                    latency: 1.0,
                    errors: f64::from(b % 10) / 10.0,
                    resource_skew: 1.0,
                    queue_impact: 1.0,
                },
                streak: u32::from(b % 3) + 1,
                at: now,
            }),
        ),
        25 => (
            "Task",
            task(a),
            encode(TaskEvent::TrajectoryAssessed {
                assessment: omoi_domain::task::TrajectoryAssessment {
                    alignment_score: f64::from(b % 10) / 10.0,
                    needs_steering: b % 2 == 0,
                    steering_message: None,
                    reason: format!("reason {b}"),
                    model: "m".into(),
                    prompt_tokens: u32::from(b),
                    completion_tokens: 1,
                },
                at: now,
            }),
        ),
        _ => (
            "Agent",
            agent(a),
            encode(AgentEvent::AgentCapabilitiesUpdated {
                capabilities: (0..b % 5).map(|c| format!("skill-{c}")).collect(),
            }),
        ),
    };
    (aggregate, id, payload, event_type)
}

/// The ops as a log: several events per transaction, positions from 1.
fn log_of(ops: &[Op]) -> Vec<StoredEvent> {
    let mut sequences: HashMap<Uuid, i64> = HashMap::new();
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let (aggregate_type, id, payload, event_type) = event_of(*op, i);
            let sequence = sequences.entry(id).or_default();
            *sequence += 1;
            StoredEvent {
                aggregate_type: aggregate_type.to_string(),
                aggregate_id: id.to_string(),
                sequence: *sequence,
                global_position: i as i64 + 1,
                transaction_id: i as i64 / 3 + 1,
                event_type,
                event_version: "1".to_string(),
                payload: payload.into(),
                // Every field the command bus writes; an agent acts now and then.
                metadata: json!({
                    "organization_id": ORGANIZATION,
                    "project_id": PROJECT,
                    "actor": match op.b % 3 {
                        0 => format!("agent:{}", agent(op.a)),
                        _ => format!("user:{}", op.b % 2),
                    },
                    "correlation_id": format!("correlation-{}", i / 3),
                    "causation_id": format!("Ticket/{}/{}", ticket(op.b), i),
                    "occurred_at": at(i),
                })
                .into(),
            }
        })
        .collect()
}

/// The projector's tables in a schema of their own, with the indexes `apply` needs, as
/// a build has them.
async fn fresh_schema(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    schema: &str,
) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(&format!(
        "drop schema if exists {schema} cascade; create schema {schema}"
    ))
    .execute(&mut *conn)
    .await?;
    for statement in projector.create_tables(schema) {
        sqlx::raw_sql(&statement).execute(&mut *conn).await?;
    }
    catalog::create_write_indexes(conn, projector, schema).await
}

/// The projectors under test: every read model, with snapshots a few events apart (the
/// generated logs are far shorter than the default spacing).
fn projectors() -> Vec<Arc<dyn Projector>> {
    omoi_projections::all()
        .into_iter()
        .map(|projector| -> Arc<dyn Projector> {
            if projector.name() == "snapshots" {
                Arc::new(SnapshotsProjector::every(SNAPSHOTS_EVERY))
            } else {
                projector
            }
        })
        .collect()
}

/// A log of `events` operations drawn from `seed`.
fn seeded_log(seed: u64, events: usize) -> Vec<StoredEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ops: Vec<Op> = (0..events)
        .map(|_| Op {
            kind: rng.gen(),
            a: rng.gen(),
            b: rng.gen(),
        })
        .collect();
    log_of(&ops)
}

/// A new instance of the projector under test named `name`.
fn fresh_projector(name: &str) -> Arc<dyn Projector> {
    projectors()
        .into_iter()
        .find(|projector| projector.name() == name)
        .expect("a projector of that name")
}

/// Puts `log` in the event log, where a snapshot's fold reads it (inside the caller's
/// transaction, which rolls it back: the log refuses deletes).
async fn write_log(conn: &mut PgConnection, log: &[StoredEvent]) -> Result<(), sqlx::Error> {
    let column = |f: fn(&StoredEvent) -> String| log.iter().map(f).collect::<Vec<String>>();
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, global_position, transaction_id)
         select t, i, s, e, v, p::jsonb, m::jsonb, g, x::text::xid8
           from unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                       $6::text[], $7::text[], $8::bigint[], $9::bigint[])
                as l(t, i, s, e, v, p, m, g, x)",
    )
    .bind(column(|e| e.aggregate_type.clone()))
    .bind(column(|e| e.aggregate_id.clone()))
    .bind(log.iter().map(|e| e.sequence).collect::<Vec<i64>>())
    .bind(column(|e| e.event_type.clone()))
    .bind(column(|e| e.event_version.clone()))
    .bind(column(|e| e.payload.to_string()))
    .bind(column(|e| e.metadata.to_string()))
    .bind(log.iter().map(|e| e.global_position).collect::<Vec<i64>>())
    .bind(log.iter().map(|e| e.transaction_id).collect::<Vec<i64>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The log as a catch-up streams it to `projector` ([`Projector::columns`]): only the
/// metadata fields it says it reads, and the time of each event, which every stream
/// carries.
fn as_streamed(projector: &dyn Projector, log: &[StoredEvent]) -> Vec<StoredEvent> {
    let Some(fields) = projector.columns().metadata_fields() else {
        return log.to_vec();
    };
    log.iter()
        .map(|event| StoredEvent {
            metadata: event.metadata.only(&fields),
            ..event.clone()
        })
        .collect()
}

/// Builds each projector's tables from `log` one event at a time and in chunks of
/// `chunk`, and returns the differences. Runs in `tx`, the log included.
async fn differences(
    tx: &mut PgConnection,
    log: &[StoredEvent],
    chunk: usize,
    split: usize,
) -> Result<Vec<String>, sqlx::Error> {
    write_log(tx, log).await?;
    let mut found = Vec::new();
    for projector in projectors() {
        let projector = projector.as_ref();
        let (one, many) = (
            format!("one_{}", projector.name()),
            format!("many_{}", projector.name()),
        );
        fresh_schema(tx, projector, &one).await?;
        fresh_schema(tx, projector, &many).await?;
        // A projector new to every event (as after a restart): one that keeps state
        // between batches (the snapshots' models) reads it back each time here.
        for event in log {
            fresh_projector(projector.name())
                .apply(tx, &one, std::slice::from_ref(event))
                .await
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        }
        // In batches and folded, the events come as a catch-up streams them.
        let streamed = as_streamed(projector, log);
        for (whole, streamed) in log.iter().zip(&streamed) {
            if projector.concerns(&many, whole) != projector.concerns(&many, streamed) {
                found.push(format!(
                    "{}: concerns answers otherwise with only the metadata it names: {whole:?}",
                    projector.name()
                ));
            }
        }
        for batch in streamed.chunks(chunk) {
            projector
                .apply(tx, &many, batch)
                .await
                .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        }
        found.extend(
            diff_schemas(tx, projector, &one, &many)
                .await?
                .into_iter()
                .map(|d| format!("{}: {d}", projector.name())),
        );
        if let Some(fold) = projector.fold_from_start() {
            let folded = format!("fold_{}", projector.name());
            fresh_schema(tx, projector, &folded).await?;
            fold_then_batches(tx, projector, fold, &folded, &streamed, chunk, split).await?;
            found.extend(
                diff_schemas(tx, projector, &one, &folded)
                    .await?
                    .into_iter()
                    .map(|d| format!("{} folded up to {split}: {d}", projector.name())),
            );
        }
    }
    Ok(found)
}

/// What a rebuild does with a projector that folds: the first `split` events folded in
/// memory in pages of `chunk` and written at once (a fold that goes on: after every
/// page), the first write as the runner writes it — into the tables without the indexes
/// `apply` needs, built again after the rows — the rest applied in batches (the fold
/// reached its bound of rows).
async fn fold_then_batches(
    tx: &mut PgConnection,
    projector: &dyn Projector,
    mut fold: Box<dyn Fold>,
    schema: &str,
    log: &[StoredEvent],
    chunk: usize,
    split: usize,
) -> Result<(), sqlx::Error> {
    let failed = |e: ProjectionError| sqlx::Error::Protocol(e.to_string());
    let (folded, rest) = log.split_at(split.min(log.len()));
    let mut written = false;
    for page in folded.chunks(chunk) {
        fold.fold(page).map_err(failed)?;
        // A fold that goes on is written page by page here (as at its bound), folding on.
        if fold.goes_on() {
            write_fold(tx, projector, fold.as_mut(), schema, &mut written).await?;
        }
    }
    write_fold(tx, projector, fold.as_mut(), schema, &mut written).await?;
    for batch in rest.chunks(chunk) {
        projector.apply(tx, schema, batch).await.map_err(failed)?;
    }
    Ok(())
}

/// A fold's write, its first into the bare tables ([`runner::write_bare`]).
async fn write_fold(
    tx: &mut PgConnection,
    projector: &dyn Projector,
    fold: &mut dyn Fold,
    schema: &str,
    written: &mut bool,
) -> Result<(), sqlx::Error> {
    let result = match std::mem::replace(written, true) {
        false => runner::write_bare(tx, projector, fold, schema).await,
        true => fold.write(tx, schema).await,
    };
    result.map_err(|e| sqlx::Error::Protocol(e.to_string()))
}

#[test]
fn batches_build_the_same_tables_as_single_events() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let database = runtime
        .block_on(TestDatabase::create())
        .expect("a test database");
    let op = (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(kind, a, b)| Op { kind, a, b });
    // Where a fold from the start stops and batches go on: anywhere in the log or past it.
    let strategy = (
        prop::collection::vec(op, 1..160),
        2usize..64,
        any::<prop::sample::Index>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 24,
        ..Config::default()
    });
    runner
        .run(&strategy, |(ops, chunk, split)| {
            let log = log_of(&ops);
            let split = split.index(log.len() + 1);
            let found = runtime
                .block_on(async {
                    // Each case in a transaction of its own, rolled back (the log with it).
                    let mut tx = database.pool.begin().await?;
                    let found = differences(&mut tx, &log, chunk, split).await;
                    tx.rollback().await?;
                    found
                })
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                found.is_empty(),
                "batches of {chunk} (or a fold of the first {split} events) differ from single events:\n{}",
                found.join("\n")
            );
            Ok(())
        })
        .expect("batches equal single events");
}

/// The generator reaches every projector's interesting paths, so the property above is
/// not vacuous: every table holds rows at the end of one of a few long logs.
#[test]
fn the_generated_logs_fill_every_table() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let database = TestDatabase::create().await.expect("a test database");
        let mut conn = PgConnection::connect_with(&database.options)
            .await
            .expect("a connection");
        // A table of what is open (a held task, a stall) may end a log empty: each must
        // hold rows at the end of at least one of the logs.
        let mut filled = std::collections::BTreeSet::new();
        for seed in [7, 11, 13] {
            let log = seeded_log(seed, 2_000);
            let mut tx = conn.begin().await.expect("a transaction");
            // Folded whole, then folded half and batched.
            let split = if seed == 11 { log.len() / 2 } else { log.len() };
            let found = differences(&mut tx, &log, 50, split)
                .await
                .expect("applied");
            assert!(found.is_empty(), "{}", found.join("\n"));
            for projector in projectors() {
                for table in projector.tables() {
                    let rows: i64 = sqlx::query_scalar(&format!(
                        "select count(*) from many_{}.{table}",
                        projector.name()
                    ))
                    .fetch_one(&mut *tx)
                    .await
                    .expect("counted");
                    if rows > 0 {
                        filled.insert(format!("{}.{table}", projector.name()));
                    }
                }
            }
            tx.rollback().await.expect("rolled back");
        }
        for projector in projectors() {
            for table in projector.tables() {
                let name = format!("{}.{table}", projector.name());
                assert!(filled.contains(&name), "{name} stayed empty");
            }
        }
    });
}

/// Gives each pair of neighbouring transactions, where `swap` says so, the other's id: the
/// later positions then come first in the log's order (commits out of position order).
fn commit_out_of_order(log: &mut [StoredEvent], swap: &[bool]) {
    for event in log.iter_mut() {
        let group = event.transaction_id - 1;
        let pair = (group / 2) as usize;
        if swap.get(pair).copied().unwrap_or(false) {
            event.transaction_id = if group % 2 == 0 { group + 2 } else { group };
        }
    }
}

/// Every board and graph as of a past position `0..=last + 1`, of the test project.
async fn views_as_of(
    pool: &sqlx::PgPool,
    last: i64,
) -> Result<Vec<(serde_json::Value, serde_json::Value)>, omoi_projections::ProjectionError> {
    let columns = omoi_projections::board::default_columns();
    let mut views = Vec::new();
    for as_of in 0..=last + 1 {
        let board = omoi_projections::board::board_view_as_of(
            pool,
            ORGANIZATION,
            PROJECT,
            as_of,
            usize::MAX,
            &columns,
        )
        .await?;
        let graph = omoi_projections::graph::project_graph_as_of(
            pool,
            ORGANIZATION,
            PROJECT,
            as_of,
            usize::MAX,
        )
        .await?;
        views.push((
            serde_json::to_value(board).expect("a board serializes"),
            serde_json::to_value(graph).expect("a graph serializes"),
        ));
    }
    Ok(views)
}

/// A view as of any past position gives the same board and graph from the nearest
/// snapshot as from the start of the log, commits out of position order included (a
/// snapshot is only taken from when every event it folds is at or below the position).
#[test]
fn views_as_of_any_position_are_the_same_from_a_snapshot_as_from_the_start() {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let op = (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(kind, a, b)| Op { kind, a, b });
    let strategy = (
        prop::collection::vec(op, 20..120),
        prop::collection::vec(any::<bool>(), 60),
        2usize..40,
    );
    // A database per case (the log is append-only): a few cases, each of many positions.
    let mut runner = TestRunner::new(Config {
        cases: 6,
        ..Config::default()
    });
    runner
        .run(&strategy, |(ops, swaps, chunk)| {
            let events = ops.len() as i64;
            let outcome = runtime.block_on(async {
                let database = TestDatabase::create().await.expect("a test database");
                let pool = &database.pool;
                let mut log = log_of(&ops);
                commit_out_of_order(&mut log, &swaps);
                let mut conn = pool.acquire().await.expect("a connection");
                write_log(&mut conn, &log).await.expect("the log written");
                let projector = SnapshotsProjector::every(SNAPSHOTS_EVERY);
                let build = omoi_projections::catalog::ensure_current_build(pool, &projector)
                    .await
                    .expect("a live build");
                let in_order = omoi_store::log::read_global(
                    pool,
                    omoi_store::Cursor::default(),
                    i64::MAX,
                    &omoi_store::log::Visibility::Everything,
                )
                .await
                .expect("the log read");
                assert_eq!(in_order.events.len(), log.len(), "the whole log is visible");
                let mut tx = pool.begin().await.expect("a transaction");
                for batch in in_order.events.chunks(chunk) {
                    projector
                        .apply(&mut tx, &build.schema(), batch)
                        .await
                        .expect("snapshots taken");
                }
                tx.commit().await.expect("committed");
                let (wholes, deltas): (i64, i64) = sqlx::query_as(
                    "select (select count(*) from snapshots_models),
                            (select count(*) from snapshots_deltas)",
                )
                .fetch_one(pool)
                .await
                .expect("counted");
                let last = log.len() as i64;
                // The newest snapshot's bodies read back (a body that did not would only
                // make the views below replay from the start, with the same answer).
                let boards = model_before::<BoardModel>(pool, ORGANIZATION, PROJECT, last)
                    .await
                    .expect("a board's snapshot looked up");
                let graphs = model_before::<GraphModel>(pool, ORGANIZATION, PROJECT, last)
                    .await
                    .expect("a graph's snapshot looked up");
                let read_back = boards.is_some() && graphs.is_some();
                let views = views_as_of(pool, last).await.expect("views from snapshots");
                // A live build from before deltas: its wholes alone.
                sqlx::query("drop view snapshots_deltas")
                    .execute(pool)
                    .await
                    .expect("deltas hidden");
                let wholes_alone = views_as_of(pool, last).await.expect("views from wholes");
                sqlx::query("drop view snapshots_models")
                    .execute(pool)
                    .await
                    .expect("snapshots hidden");
                let plain = views_as_of(pool, last).await.expect("views from the start");
                (wholes, deltas, read_back, views, wholes_alone, plain)
            });
            let (wholes, deltas, read_back, views, wholes_alone, plain) = outcome;
            // Every case has deltas (20 events or more, one every 5), and a whole from the
            // 25th event on (at most 10 tickets and tasks: wholes 25 events apart).
            prop_assert!(deltas > 0, "no delta was taken ({} wholes)", wholes);
            prop_assert_eq!(
                wholes > 0,
                events >= 5 * SNAPSHOTS_EVERY,
                "{} wholes",
                wholes
            );
            prop_assert!(read_back, "the newest snapshot did not read back");
            for (as_of, ((with, from_wholes), without)) in
                views.iter().zip(&wholes_alone).zip(&plain).enumerate()
            {
                prop_assert_eq!(with, without, "as of {}", as_of);
                prop_assert_eq!(from_wholes, without, "as of {} from wholes alone", as_of);
            }
            Ok(())
        })
        .expect("snapshots change no past view");
}

/// The snapshots' projector keeps each project's models between batches; a batch rolled
/// back (the runner applies it again) leaves models ahead of the progress stored, which
/// the next batch must not take for its own: the tables come out as a projector's that
/// never saw the rolled-back batch.
#[tokio::test]
async fn a_batch_rolled_back_leaves_no_models_the_next_takes_for_its_own() {
    let database = TestDatabase::create().await.expect("a test database");
    let log = seeded_log(5, 120);
    let mut conn = PgConnection::connect_with(&database.options)
        .await
        .expect("a connection");
    let mut tx = conn.begin().await.expect("a transaction");
    write_log(&mut tx, &log).await.expect("the log written");
    let projector = SnapshotsProjector::every(SNAPSHOTS_EVERY);
    let failed = |e: ProjectionError| panic!("applied: {e}");
    for schema in ["retried", "straight"] {
        fresh_schema(&mut tx, &projector, schema)
            .await
            .expect("a schema");
    }
    for batch in log[..40].chunks(7) {
        projector
            .apply(&mut tx, "retried", batch)
            .await
            .unwrap_or_else(failed);
    }
    // Applied, then rolled back: the models kept are 50 events ahead of the tables.
    let mut attempt = tx.begin().await.expect("a savepoint");
    projector
        .apply(&mut attempt, "retried", &log[40..90])
        .await
        .unwrap_or_else(failed);
    attempt.rollback().await.expect("rolled back");
    for batch in log[40..].chunks(9) {
        projector
            .apply(&mut tx, "retried", batch)
            .await
            .unwrap_or_else(failed);
    }
    SnapshotsProjector::every(SNAPSHOTS_EVERY)
        .apply(&mut tx, "straight", &log)
        .await
        .unwrap_or_else(failed);
    let found = diff_schemas(&mut tx, &projector, "straight", "retried")
        .await
        .expect("compared");
    assert!(found.is_empty(), "{}", found.join("\n"));
    let deltas: i64 = sqlx::query_scalar("select count(*) from retried.deltas")
        .fetch_one(&mut *tx)
        .await
        .expect("counted");
    assert!(deltas > 10, "{deltas} deltas");
    tx.rollback().await.expect("rolled back");
}

/// A snapshot folds exactly the events it counted: a log that lacks one of them (here the
/// very event the first snapshot is taken at, with events after it) stops the batch with
/// `SnapshotGap` — it neither reads on for ever nor takes a snapshot of something else.
#[tokio::test]
async fn a_snapshot_whose_log_lacks_a_counted_event_stops_with_a_gap() {
    let database = TestDatabase::create().await.expect("a test database");
    let ops: Vec<Op> = (0..40_u8)
        .map(|n| Op {
            kind: n.wrapping_mul(37),
            a: n,
            b: n.wrapping_mul(11),
        })
        .collect();
    let log = log_of(&ops);
    let mut tx = database.pool.begin().await.expect("a transaction");
    // Every event names the project: the first snapshot is taken at the fifth.
    let at = SNAPSHOTS_EVERY as usize - 1;
    let without = [&log[..at], &log[at + 1..]].concat();
    write_log(&mut tx, &without).await.expect("the log written");
    let projector = SnapshotsProjector::every(SNAPSHOTS_EVERY);
    fresh_schema(&mut tx, &projector, "gap_snapshots")
        .await
        .expect("a schema");
    // Bounded: the fold once read the event past the gap again and again.
    let applied = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        projector.apply(&mut tx, "gap_snapshots", &log),
    )
    .await
    .expect("the batch ends");
    let error = applied.expect_err("a snapshot folded fewer events than it counted");
    assert!(
        matches!(
            error,
            omoi_projections::ProjectionError::SnapshotGap { counted, read, .. } if read == counted - 1
        ),
        "{error}"
    );
    tx.rollback().await.expect("rolled back");
}
