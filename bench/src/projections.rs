//! `omoi-bench bench-projections`: how fast the read models rebuild, and how far behind the log
//! they are while commands arrive at a steady rate.
//!
//! 1. **Rebuild.** A fresh database gets ~`--events` generated events that the projectors
//!    accept — organizations with their owner, projects, agents (registered, then idling
//!    and working in turn), tickets walked from backlog to done, each with three tasks that
//!    depend on the earlier ones and are assigned, started and completed. They are written
//!    by set-based SQL in the exact serde shape of the domain events (checked by a round
//!    trip through the Rust enums before anything is timed). Each projector then rebuilds
//!    from position zero with `runner::catch_up`, one after the other.
//! 2. **Lag.** Another fresh database, with the projections started as `omoi serve` starts
//!    them, takes ticket commands through a `CommandBus` at `--rate` per second. A watcher
//!    reads every build's position as its leader knows it each millisecond (the runner's
//!    statistics: the checkpoint once a batch committed — its rows with it, so they are
//!    visible from then on — or the position past events the build had no concern with);
//!    a command's lag is the time from its commit (the bus returned) to the first look
//!    that finds the position at or past its event.
//!
//! Targets are printed beside the figures; missing one is a result, not an error.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use uuid::Uuid;

use crate::stats::Latencies;
use omoi_domain::access::Principal;
use omoi_domain::agent::AgentEvent;
use omoi_domain::common::{Phase, Priority};
use omoi_domain::kind::AggregateKind;
use omoi_domain::organization::{Organization, OrganizationCommand, OrganizationEvent};
use omoi_domain::project::{Project, ProjectCommand, ProjectEvent};
use omoi_domain::task::TaskEvent;
use omoi_domain::ticket::{Ticket, TicketCommand, TicketEvent, TicketStatus};
use omoi_projections::catalog::{self, BuildState};
use omoi_projections::runner::{self, RunnerConfig, RunnerStats};
use omoi_projections::timeline::EventMeta;
use omoi_projections::Projector;
use omoi_store::bus::RetryPolicy;
use omoi_store::log::{read_global, Columns, Visibility};
use omoi_store::{Actor, CommandBus, CommandContext, Cursor};

use omoi_testing::TestDatabase;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events generated for the rebuild measurement (approximately).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: i64,
    /// Commands per second while the lag is measured.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of commands for the lag measurement (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rebuild only these read models (names as `omoi projections status` prints them),
    /// and skip the lag measurement: for profiling one projector's rebuild.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

const REBUILD_TARGET: f64 = 50_000.0;
const LAG_TARGET_MS: f64 = 50.0;
/// The batch `omoi projections rebuild` uses.
const REBUILD_BATCH: i64 = omoi_projections::runner::CATCH_UP_BATCH;

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.events > 0 && args.rate > 0 && args.seconds > 0,
        "--events, --rate and --seconds must be positive"
    );
    let admin_url = crate::setup::admin_url().await?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cpus} CPUs, load average {} (anything else running skews every figure)",
        crate::setup::load_average()
    );
    rebuild(&admin_url, args.events, &args.only).await?;
    match args.only.is_empty() {
        true => lag(&admin_url, args.rate, args.seconds).await,
        false => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// The generated log
// ---------------------------------------------------------------------------------------

const ORGANIZATIONS: i64 = 4;
const PROJECTS_PER_ORGANIZATION: i64 = 3;
const AGENTS_PER_ORGANIZATION: i64 = 25;
const PROJECTS: i64 = ORGANIZATIONS * PROJECTS_PER_ORGANIZATION;
const AGENTS: i64 = ORGANIZATIONS * AGENTS_PER_ORGANIZATION;
const TASKS_PER_TICKET: i64 = 3;
/// Created, five status changes, and per task created, assigned, started, completed.
const EVENTS_PER_TICKET: i64 = 6 + 4 * TASKS_PER_TICKET;
/// Tickets written per statement (18 events each); every chunk also moves each agent once.
const TICKETS_PER_CHUNK: i64 = 2000;

/// Helpers for the generating statements, kept in the throw-away bench database: ids are
/// `00000000-0000-7000-<kind>-<n>` so every statement can name any entity by number, and
/// timestamps are whole UTC seconds written as chrono writes them (so payloads round-trip).
pub(crate) const HELPERS: &str = r#"
create function bench_id(kind int, n bigint) returns uuid language sql immutable as $$
    select ('00000000-0000-7000-' || to_hex(kind) || '-' || lpad(to_hex(n), 12, '0'))::uuid
$$;
create function bench_at(s bigint) returns text language sql stable as $$
    select to_char((timestamptz '2026-01-01 00:00:00+00' + s * interval '1 second')
                   at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;
create function bench_meta(org uuid, project uuid, actor text, at text, correlation uuid)
    returns jsonb language sql stable as $$
    select jsonb_strip_nulls(jsonb_build_object(
        'organization_id', org, 'project_id', project, 'actor', actor,
        'request_id', 'bench-projections', 'correlation_id', correlation, 'occurred_at', at))
$$;
"#;

/// Id kinds of `bench_id`.
const ORG: i64 = 0x8001;
const USER: i64 = 0x8002;
const PROJECT: i64 = 0x8003;
const AGENT: i64 = 0x8004;
const TICKET: i64 = 0x8005;
const TASK: i64 = 0x8006;

/// Organizations with their owner, projects, and agents registered then idle.
fn setup_sql() -> String {
    format!(
        "with org as (
            select o, bench_id({ORG}, o) as id, 'user:' || bench_id({USER}, o) as owner
              from generate_series(0, {ORGANIZATIONS} - 1) as o
        ), project as (
            select p, bench_id({PROJECT}, p) as id, bench_id({ORG}, p / {PROJECTS_PER_ORGANIZATION}) as org,
                   'user:' || bench_id({USER}, p / {PROJECTS_PER_ORGANIZATION}) as owner
              from generate_series(0, {PROJECTS} - 1) as p
        ), agent as (
            select a, bench_id({AGENT}, a) as id, bench_id({ORG}, a / {AGENTS_PER_ORGANIZATION}) as org,
                   'user:' || bench_id({USER}, a / {AGENTS_PER_ORGANIZATION}) as owner
              from generate_series(0, {AGENTS} - 1) as a
        ), setup as (
            select 0 as step, o as n, 'Organization' as aggregate_type, id as aggregate_id,
                   1 as sequence, 'OrganizationCreated' as event_type,
                   jsonb_build_object('OrganizationCreated', jsonb_build_object(
                       'organization_id', id, 'name', 'Organization ' || o,
                       'created_at', bench_at(o))) as payload,
                   bench_meta(id, null, owner, bench_at(o), id) as metadata
              from org
            union all
            select 1, o, 'Organization', id, 2, 'MemberAdded',
                   jsonb_build_object('MemberAdded', jsonb_build_object(
                       'principal', owner, 'role', 'owner')),
                   bench_meta(id, null, owner, bench_at(o), id)
              from org
            union all
            select 2, p, 'Project', id, 1, 'ProjectCreated',
                   jsonb_build_object('ProjectCreated', jsonb_build_object(
                       'project_id', id, 'organization_id', org, 'name', 'Project ' || p,
                       'description', '', 'created_at', bench_at(p),
                       'settings', jsonb_build_object(
                           'auto_advance', true, 'auto_spawn_tasks', true,
                           'stall_policy', 'nudge', 'validation_required', true))),
                   bench_meta(org, id, owner, bench_at(p), id)
              from project
            union all
            select 3, a, 'Agent', id, 1, 'AgentRegistered',
                   jsonb_build_object('AgentRegistered', jsonb_build_object(
                       'agent_id', id, 'organization_id', org, 'project_id', null,
                       'name', 'agent-' || a, 'agent_type', 'worker',
                       'capabilities', jsonb_build_array('python', 'rust'), 'capacity', 2,
                       'registered_at', bench_at(a))),
                   bench_meta(org, null, owner, bench_at(a), id)
              from agent
            union all
            select 4, a, 'Agent', id, 2, 'AgentStatusChanged',
                   jsonb_build_object('AgentStatusChanged', jsonb_build_object(
                       'from', 'spawning', 'to', 'idle', 'reason', null, 'at', bench_at(a))),
                   bench_meta(org, null, 'agent:' || id, bench_at(a), id)
              from agent
        )
        insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                            payload, metadata)
        select aggregate_type, aggregate_id::text, sequence, event_type, '1', payload, metadata
          from setup order by step, n"
    )
}

/// Tickets `$1..=$2`: every ticket's 18 events, interleaved across the chunk the way
/// concurrent work interleaves (all creations, then all first moves, …).
fn tickets_sql() -> String {
    format!(
        "with ticket as (
            select n, bench_id({TICKET}, n) as id,
                   (n % {PROJECTS}) / {PROJECTS_PER_ORGANIZATION} as o,
                   bench_id({ORG}, (n % {PROJECTS}) / {PROJECTS_PER_ORGANIZATION}) as org,
                   bench_id({PROJECT}, n % {PROJECTS}) as project,
                   'user:' || bench_id({USER}, (n % {PROJECTS}) / {PROJECTS_PER_ORGANIZATION}) as owner
              from generate_series($1::bigint, $2::bigint) as n
        ), task as (
            select t.*, k, bench_id({TASK}, t.n * {TASKS_PER_TICKET} + k) as task_id,
                   bench_id({AGENT}, t.o * {AGENTS_PER_ORGANIZATION}
                                     + (t.n * {TASKS_PER_TICKET} + k) % {AGENTS_PER_ORGANIZATION}) as agent
              from ticket t cross join generate_series(0, {TASKS_PER_TICKET} - 1) as k
        ), work as (
            select 0 as step, n, 'Ticket' as aggregate_type, id as aggregate_id, 1 as sequence,
                   'TicketCreated' as event_type,
                   jsonb_build_object('TicketCreated', jsonb_build_object(
                       'ticket_id', id, 'organization_id', org, 'project_id', project,
                       'spec_id', null, 'title', 'Ticket ' || n, 'description', '',
                       'priority', (array['HIGH', 'MEDIUM', 'MEDIUM', 'LOW'])[1 + n % 4],
                       'phase', 'PHASE_BACKLOG')) as payload,
                   bench_meta(org, project, owner, bench_at(n * {EVENTS_PER_TICKET}), id) as metadata
              from ticket
            union all
            select s.step, n, 'Ticket', id, s.sequence, 'TicketStatusChanged',
                   jsonb_build_object('TicketStatusChanged', jsonb_build_object(
                       'from', s.from_status, 'to', s.to_status, 'note', null)),
                   bench_meta(org, project, owner, bench_at(n * {EVENTS_PER_TICKET} + s.step), id)
              from ticket cross join (values
                   (1, 2, 'backlog', 'analyzing'), (2, 3, 'analyzing', 'building'),
                   (15, 4, 'building', 'building-done'), (16, 5, 'building-done', 'testing'),
                   (17, 6, 'testing', 'done')) as s(step, sequence, from_status, to_status)
            union all
            select 3 + k, n, 'Task', task_id, 1, 'TaskCreated',
                   jsonb_build_object('TaskCreated', jsonb_build_object(
                       'task_id', task_id, 'organization_id', org, 'project_id', project,
                       'ticket_id', id, 'title', 'Task ' || k || ' of ticket ' || n,
                       'description', '', 'task_type', 'implementation',
                       'phase', 'PHASE_IMPLEMENTATION', 'priority', 'MEDIUM',
                       'depends_on', (select coalesce(jsonb_agg(bench_id({TASK}, n * {TASKS_PER_TICKET} + d) order by d), '[]')
                                        from generate_series(0, k - 1) as d),
                       'required_capabilities', jsonb_build_array('rust'), 'max_retries', 3,
                       'timeout_seconds', null,
                       'created_at', bench_at(n * {EVENTS_PER_TICKET} + 3 + k))),
                   bench_meta(org, project, owner, bench_at(n * {EVENTS_PER_TICKET} + 3 + k), id)
              from task
            union all
            select 6 + 3 * k + s.i, n, 'Task', task_id, 2 + s.i, s.event_type,
                   case s.i
                       when 0 then jsonb_build_object('TaskAssigned', jsonb_build_object(
                           'agent_id', agent, 'at', at.at))
                       when 1 then jsonb_build_object('TaskStarted', jsonb_build_object('at', at.at))
                       else jsonb_build_object('TaskCompleted', jsonb_build_object(
                           'result', jsonb_build_object('summary', 'done'), 'at', at.at))
                   end,
                   bench_meta(org, project, 'agent:' || agent, at.at, id)
              from task
                   cross join (values (0, 'TaskAssigned'), (1, 'TaskStarted'), (2, 'TaskCompleted'))
                        as s(i, event_type)
                   cross join lateral (select bench_at(n * {EVENTS_PER_TICKET} + 6 + 3 * k + s.i) as at) as at
        )
        insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                            payload, metadata)
        select aggregate_type, aggregate_id::text, sequence, event_type, '1', payload, metadata
          from work order by step, n"
    )
}

/// Chunk `$1` moves every agent once: idle → running on even chunks, back on odd ones.
fn agents_sql() -> String {
    format!(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
        select 'Agent', bench_id({AGENT}, a)::text, 3 + $1, 'AgentStatusChanged', '1',
               jsonb_build_object('AgentStatusChanged', jsonb_build_object(
                   'from', s.from_status, 'to', s.to_status, 'reason', null,
                   'at', bench_at($1 * 1000 + a))),
               bench_meta(bench_id({ORG}, a / {AGENTS_PER_ORGANIZATION}), null,
                          'agent:' || bench_id({AGENT}, a), bench_at($1 * 1000 + a),
                          bench_id({AGENT}, a))
          from generate_series(0, {AGENTS} - 1) as a,
               (select case when $1 % 2 = 0 then 'idle' else 'running' end as from_status,
                       case when $1 % 2 = 0 then 'running' else 'idle' end as to_status) as s
         order by a"
    )
}

/// The organization and the id of generated project `n` (`n` < 12; each holds about a
/// twelfth of the generated events).
pub(crate) fn generated_project(n: i64) -> (Uuid, Uuid) {
    let id = |kind: i64, n: i64| {
        Uuid::from_u64_pair(0x0000_0000_0000_7000, ((kind as u64) << 48) | n as u64)
    };
    (id(ORG, n / PROJECTS_PER_ORGANIZATION), id(PROJECT, n))
}

/// What was generated.
pub(crate) struct Generated {
    pub(crate) events: i64,
    pub(crate) tickets: i64,
    pub(crate) elapsed: Duration,
}

/// Writes about `target` events; prints progress on one line of stderr.
pub(crate) async fn generate(options: &PgConnectOptions, target: i64) -> anyhow::Result<Generated> {
    let started = Instant::now();
    // A chunk takes about a second: sqlx would log every one as a slow statement.
    let mut conn = PgConnection::connect_with(&options.clone().disable_statement_logging()).await?;
    sqlx::raw_sql(HELPERS).execute(&mut conn).await?;
    let mut events = sqlx::query(&setup_sql())
        .execute(&mut conn)
        .await?
        .rows_affected() as i64;
    let (tickets_sql, agents_sql) = (tickets_sql(), agents_sql());
    let (mut tickets, mut chunk) = (0_i64, 0_i64);
    while events < target {
        let wanted = (target - events - AGENTS) / EVENTS_PER_TICKET;
        let count = wanted.clamp(1, TICKETS_PER_CHUNK);
        events += sqlx::query(&tickets_sql)
            .bind(tickets)
            .bind(tickets + count - 1)
            .execute(&mut conn)
            .await?
            .rows_affected() as i64;
        events += sqlx::query(&agents_sql)
            .bind(chunk)
            .execute(&mut conn)
            .await?
            .rows_affected() as i64;
        tickets += count;
        chunk += 1;
        eprint!(
            "\r  generating: {} / {} events",
            thousands(events as f64),
            thousands(target as f64)
        );
    }
    eprintln!();
    conn.close().await?;
    Ok(Generated {
        events,
        tickets,
        elapsed: started.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------
// Checking the generated shapes
// ---------------------------------------------------------------------------------------

/// One event of every type must read back into its domain enum and serialize to exactly
/// the stored JSON (so no field is misspelt or missing), and its metadata must be what the
/// read models rely on. The projectors would accept some wrong shapes silently (a
/// misspelt optional field reads as `None`), so their success alone is not proof.
async fn check_shapes(pool: &PgPool) -> anyhow::Result<usize> {
    let samples: Vec<(String, String, serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "select distinct on (event_type) aggregate_type, event_type, payload, metadata
           from events order by event_type, global_position",
    )
    .fetch_all(pool)
    .await?;
    for (aggregate_type, event_type, payload, metadata) in &samples {
        let again = round_trip(aggregate_type, payload)
            .with_context(|| format!("generated {event_type} does not parse: {payload}"))?;
        anyhow::ensure!(
            &again == payload,
            "generated {event_type} differs from the domain's shape:\n  stored {payload}\n  domain {again}"
        );
        anyhow::ensure!(
            payload.get(event_type).is_some(),
            "{event_type}: payload is tagged otherwise: {payload}"
        );
        EventMeta::read(&metadata.clone().into())
            .map_err(|e| anyhow::anyhow!("generated {event_type} metadata: {e}: {metadata}"))?;
    }
    Ok(samples.len())
}

fn round_trip(
    aggregate_type: &str,
    payload: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    fn through<E: Serialize + DeserializeOwned>(
        payload: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let event: E = serde_json::from_value(payload.clone())?;
        Ok(serde_json::to_value(event)?)
    }
    match AggregateKind::of_type(aggregate_type) {
        Some(AggregateKind::Organization) => through::<OrganizationEvent>(payload),
        Some(AggregateKind::Project) => through::<ProjectEvent>(payload),
        Some(AggregateKind::Agent) => through::<AgentEvent>(payload),
        Some(AggregateKind::Ticket) => through::<TicketEvent>(payload),
        Some(AggregateKind::Task) => through::<TaskEvent>(payload),
        _ => anyhow::bail!("the generator wrote an unexpected aggregate type {aggregate_type}"),
    }
}

// ---------------------------------------------------------------------------------------
// Rebuild
// ---------------------------------------------------------------------------------------

async fn rebuild(admin_url: &str, target: i64, only: &[String]) -> anyhow::Result<()> {
    let database = TestDatabase::create_on(admin_url).await?;
    let pool = &database.pool;
    let generated = generate(&database.options, target).await?;
    let types = check_shapes(pool).await?;
    // A log at rest has been vacuumed and analyzed (autovacuum would have done it): time
    // the projectors, not the first reader setting hint bits on a million fresh rows.
    sqlx::raw_sql("vacuum analyze events").execute(pool).await?;
    println!(
        "\nrebuild: {} events ({} event types, shapes checked) written in {:.1} s: {ORGANIZATIONS} organizations, {PROJECTS} projects, {AGENTS} agents, {} tickets, {} tasks (load average {})",
        thousands(generated.events as f64),
        types,
        generated.elapsed.as_secs_f64(),
        thousands(generated.tickets as f64),
        thousands((generated.tickets * TASKS_PER_TICKET) as f64),
        crate::setup::load_average(),
    );
    println!(
        "  {:<32} {:>9} {:>12} {:>10}",
        format!("projector (batch {REBUILD_BATCH})"),
        "seconds",
        "events/s",
        "÷ reading"
    );
    let copied = copy_everything(pool).await?;
    print_rate(
        "(COPY of the log to /dev/null)",
        generated.events,
        copied,
        None,
    );
    let paged = read_pages(pool).await?;
    print_rate(
        "(reading it a page at a time)",
        generated.events,
        paged,
        None,
    );
    let read = read_everything(pool, Columns::Everything).await?;
    print_rate("(reading the log alone)", generated.events, read, None);
    // What board and graph stream, and what most other read models do
    // (`Projector::columns`): the floors under their rebuilds.
    let lean = read_everything(pool, Columns::WITHOUT_METADATA).await?;
    print_rate(
        "(reading it without metadata)",
        generated.events,
        lean,
        Some(read),
    );
    let fields = read_everything(pool, Columns::MetadataFields(EventMeta::FIELDS)).await?;
    print_rate(
        "(… with four of its fields)",
        generated.events,
        fields,
        Some(read),
    );
    let mut total = Duration::ZERO;
    let projectors: Vec<_> = omoi_projections::all()
        .into_iter()
        .filter(|p| only.is_empty() || only.iter().any(|name| name == p.name()))
        .collect();
    anyhow::ensure!(!projectors.is_empty(), "--only names no read model");
    for projector in &projectors {
        // The build before folds: the same projector in batches from the start, beside it.
        if projector.fold_from_start().is_some() {
            let batched = InBatches(projector.as_ref());
            let took = rebuild_one(&database, &batched, generated.events).await?;
            let label = format!("{} (in batches, before)", projector.name());
            print_rate(&label, generated.events, took, Some(read));
        }
        let took = rebuild_one(&database, projector.as_ref(), generated.events).await?;
        print_rate(projector.name(), generated.events, took, Some(read));
        total += took;
    }
    let count = projectors.len() as u32;
    print_rate(
        &format!("all {count}, one after another"),
        generated.events * i64::from(count),
        total,
        Some(read * count),
    );
    println!(
        "  {:<32} {:>9} {:>12}   (log events per second of the {count} rebuilds)",
        "",
        "",
        thousands(generated.events as f64 / total.as_secs_f64())
    );
    println!(
        "  reading the log ÷ COPY: {:.2} (target ≥ 0.5); each projector ÷ reading: target ≥ 0.9 (issue #15); all of them: ≥ {} events/s",
        copied.as_secs_f64() / read.as_secs_f64(),
        thousands(REBUILD_TARGET)
    );
    if only.is_empty() {
        print_read_models(pool).await?;
    }
    database.pool.close().await;
    drop_database(admin_url, &database.name).await;
    Ok(())
}

/// What the server alone takes to produce the log: every column a reader takes, in the
/// readers' order, copied to `/dev/null` on the server (no client, no network).
async fn copy_everything(pool: &PgPool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    sqlx::raw_sql(
        "copy (select aggregate_type, aggregate_id, sequence, event_type, event_version,
                      payload, metadata, global_position, transaction_id
                 from events order by transaction_id, global_position)
           to '/dev/null'",
    )
    .execute(pool)
    .await?;
    Ok(started.elapsed())
}

/// The log read a page of `REBUILD_BATCH` at a time, each a query of its own (how a
/// catch-up read it before it streamed).
async fn read_pages(pool: &PgPool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut cursor = Cursor::default();
    loop {
        let page = read_global(pool, cursor, REBUILD_BATCH, &Visibility::Everything).await?;
        if page.events.is_empty() {
            return Ok(started.elapsed());
        }
        cursor = page.next;
    }
}

/// The floor under every rebuild: the log as `catch_up` reads it — one streaming query
/// of `columns`, in pages of `REBUILD_BATCH` — applied to nothing.
async fn read_everything(pool: &PgPool, columns: Columns) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let (pages, mut received) = tokio::sync::mpsc::channel(2);
    let stream = tokio::spawn(omoi_store::log::stream_global(
        pool.clone(),
        Cursor::default(),
        REBUILD_BATCH as usize,
        columns,
        pages,
    ));
    while received.recv().await.is_some() {}
    stream.await??;
    Ok(started.elapsed())
}

/// A projector that folds a rebuild in memory, rebuilt in batches instead (as before
/// [`Projector::fold_from_start`]): the same name, tables and batches.
struct InBatches<'a>(&'a dyn Projector);

impl Projector for InBatches<'_> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn version(&self) -> i32 {
        self.0.version()
    }
    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }
    fn create_tables(&self, schema: &str) -> Vec<String> {
        self.0.create_tables(schema)
    }
    fn create_write_indexes(&self, schema: &str) -> Vec<String> {
        self.0.create_write_indexes(schema)
    }
    fn create_indexes(&self, schema: &str) -> Vec<String> {
        self.0.create_indexes(schema)
    }
    fn columns(&self) -> Columns {
        self.0.columns()
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [omoi_store::StoredEvent],
    ) -> futures_util::future::BoxFuture<'a, Result<(), omoi_projections::ProjectionError>> {
        self.0.apply(tx, schema, events)
    }
    fn concerns(&self, schema: &str, event: &omoi_store::StoredEvent) -> bool {
        self.0.concerns(schema, event)
    }
}

/// Rebuilds one projector from position zero into a new build; fails if the build
/// stopped at an event (the generator wrote something the projector refuses) or skipped
/// any.
pub(crate) async fn rebuild_one(
    database: &TestDatabase,
    projector: &dyn Projector,
    events: i64,
) -> anyhow::Result<Duration> {
    let mut conn = database.pool.acquire().await?;
    let build = catalog::create_build(&mut conn, projector, BuildState::Building).await?;
    drop(conn);
    let started = Instant::now();
    let done = runner::catch_up(
        &database.pool,
        &database.options,
        projector,
        build.build,
        REBUILD_BATCH,
        |_| {},
    )
    .await?;
    let took = started.elapsed();
    if let Some((at, error)) = &done.failure {
        anyhow::bail!(
            "{} stopped at {at}: {error} (a generated payload is wrong)",
            projector.name()
        );
    }
    anyhow::ensure!(
        done.events_applied == events,
        "{} applied {} of {events} events",
        projector.name(),
        done.events_applied
    );
    Ok(took)
}

/// What the rebuilt read models hold, as a sanity check on the generated work.
async fn print_read_models(pool: &PgPool) -> anyhow::Result<()> {
    let (cards, done, nodes, edges, entries, agents): (i64, i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "select (select count(*) from board_cards),
                    (select count(*) from board_cards where status = 'done'),
                    (select count(*) from graph_nodes), (select count(*) from graph_edges),
                    (select count(*) from timeline_titles), (select count(*) from agents_agents)",
        )
        .fetch_one(pool)
        .await?;
    println!(
        "  read models: {} cards ({} done), {} graph nodes, {} edges, {} titles in the timeline's history, {} agents",
        thousands(cards as f64),
        thousands(done as f64),
        thousands(nodes as f64),
        thousands(edges as f64),
        thousands(entries as f64),
        agents
    );
    Ok(())
}

/// A row of the rebuild table; with `reading`, its speed as a share of reading the log
/// (the time reading took over the time this took).
fn print_rate(label: &str, events: i64, took: Duration, reading: Option<Duration>) {
    let share = reading.map_or(String::new(), |read| {
        format!("{:.2}", read.as_secs_f64() / took.as_secs_f64())
    });
    println!(
        "  {label:<32} {:>9.1} {:>12} {share:>10}",
        took.as_secs_f64(),
        thousands(events as f64 / took.as_secs_f64())
    );
}

// ---------------------------------------------------------------------------------------
// Lag
// ---------------------------------------------------------------------------------------

const WARMUP: Duration = Duration::from_secs(1);
/// How often the watcher reads the builds' positions.
const WATCH_EVERY: Duration = Duration::from_millis(1);
/// The pool `omoi serve` opens by default (config/base.yaml).
const SERVER_POOL: u32 = 32;

/// One command that committed.
struct Sample {
    scheduled: Instant,
    committed: Instant,
    ticket: Uuid,
    sequence: i64,
    warmup: bool,
}

/// Each projector's position, every time the watcher saw it move.
type Tracks = BTreeMap<String, Vec<(Instant, Cursor)>>;

async fn lag(admin_url: &str, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let database = TestDatabase::create_on(admin_url).await?;
    let pool = TestDatabase::pool(&database.options, SERVER_POOL).await?;
    let bus = Arc::new(CommandBus::new(pool.clone(), RetryPolicy::default()));
    let (trigger, shutdown) = omoi::server::Shutdown::new();
    // Exactly as `omoi serve` wires them: woken by this bus's commits, production config.
    let (stats, projections) = omoi::server::start_projections(
        pool.clone(),
        database.options.clone(),
        &bus,
        RunnerConfig::default(),
        &omoi_workflow::WorkflowConfig::default(),
        &Default::default(),
        shutdown,
    )
    .await?;
    leaders(&stats).await?;
    let (organization, project) = organization_and_project(&bus).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_positions(stats.clone(), stop.clone()));
    let load = Load {
        bus,
        organization,
        project,
        rate,
    };
    let (samples, errors) = load.drive(WARMUP + Duration::from_secs(seconds)).await?;
    caught_up(&database.pool, Duration::from_secs(60)).await?;
    stop.store(true, Ordering::Relaxed);
    let tracks = watcher.await??;
    let cursors = ticket_cursors(&database.pool).await?;
    report_lag(rate, seconds, &samples, errors, &tracks, &cursors)?;
    let _ = trigger.send(true);
    projections.await?;
    pool.close().await;
    database.pool.close().await;
    drop_database(admin_url, &database.name).await;
    Ok(())
}

/// Waits until this process leads all four builds, so the load meets running projectors.
async fn leaders(stats: &RunnerStats) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = omoi_projections::all().len();
    while stats.snapshot().iter().filter(|s| s.leader).count() < wanted {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the projectors did not start within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

pub(crate) fn context() -> CommandContext {
    CommandContext::new(Actor::System("bench"), "bench-projections")
}

pub(crate) async fn organization_and_project(bus: &CommandBus) -> anyhow::Result<(Uuid, Uuid)> {
    let (organization, project) = (Uuid::now_v7(), Uuid::now_v7());
    let create = OrganizationCommand::CreateOrganization {
        organization_id: organization,
        name: "Bench".into(),
        owner: Principal::User(Uuid::now_v7()),
        at: Utc::now(),
    };
    bus.execute::<Organization>(&organization.to_string(), create, &context())
        .await?;
    let create = ProjectCommand::CreateProject {
        project_id: project,
        organization_id: organization,
        name: "Lag".into(),
        description: String::new(),
        settings: Default::default(),
        at: Utc::now(),
    };
    bus.execute::<Project>(&project.to_string(), create, &context())
        .await?;
    Ok((organization, project))
}

/// The ticket statuses in order: a ticket's command `k` creates it (k = 0) or moves it
/// to `STATUSES[k]`.
const STATUSES: [TicketStatus; 6] = [
    TicketStatus::Backlog,
    TicketStatus::Analyzing,
    TicketStatus::Building,
    TicketStatus::BuildingDone,
    TicketStatus::Testing,
    TicketStatus::Done,
];

/// Ticket commands at a steady rate.
struct Load {
    bus: Arc<CommandBus>,
    organization: Uuid,
    project: Uuid,
    rate: u64,
}

/// Tickets worked at once: a ticket's next command comes a fifth of a second after its
/// previous one, long after that one committed.
fn lanes(rate: u64) -> u64 {
    (rate / 5).max(1)
}

/// Command `i` of the load: which ticket, and which of its six commands.
fn planned(i: u64, lanes: u64) -> (Uuid, usize) {
    let round = i / lanes;
    let ticket = (round / 6) * lanes + i % lanes;
    (
        Uuid::from_u64_pair(0x0196_0000_0000_7000, ticket),
        (round % 6) as usize,
    )
}

impl Load {
    fn command(&self, ticket: Uuid, step: usize) -> TicketCommand {
        match step {
            0 => TicketCommand::CreateTicket {
                ticket_id: ticket,
                organization_id: self.organization,
                project_id: self.project,
                spec_id: None,
                title: format!("Ticket {ticket}"),
                description: String::new(),
                priority: Priority::Medium,
                phase: Phase::Backlog,
                plan_key: None,
            },
            k => TicketCommand::TransitionTicket {
                to: STATUSES[k.min(STATUSES.len() - 1)],
                note: None,
            },
        }
    }

    /// Issues commands on a fixed schedule (each in its own task, so a slow commit never
    /// delays the next one) for `duration`; returns the committed ones and the error count.
    async fn drive(&self, duration: Duration) -> anyhow::Result<(Vec<Sample>, usize)> {
        let total = (self.rate as f64 * duration.as_secs_f64()) as u64;
        let warmup = self.rate * WARMUP.as_secs();
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate as f64));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut tasks = JoinSet::new();
        for i in 0..total {
            let scheduled = ticks.tick().await.into_std();
            let (ticket, step) = planned(i, lanes(self.rate));
            let (bus, command) = (self.bus.clone(), self.command(ticket, step));
            tasks.spawn(async move {
                let committed = bus
                    .execute::<Ticket>(&ticket.to_string(), command, &context())
                    .await?;
                anyhow::Ok(Sample {
                    scheduled,
                    committed: Instant::now(),
                    ticket,
                    sequence: committed.version as i64,
                    warmup: i < warmup,
                })
            });
        }
        let mut samples = Vec::with_capacity(total as usize);
        let mut errors = 0;
        while let Some(done) = tasks.join_next().await {
            match done? {
                Ok(sample) => samples.push(sample),
                Err(error) => {
                    if errors == 0 {
                        eprintln!("  first command error: {error:#}");
                    }
                    errors += 1;
                }
            }
        }
        Ok((samples, errors))
    }
}

/// Polls every live build's checkpoint each millisecond on a connection of its own and
/// records each move with the time the poll returned (so a lag is never under-stated).
/// Each build's position as its leader knows it ([`RunnerStats`]): its checkpoint once a
/// batch committed, or the position past events it had no concern with — which a build
/// writes to its row only now and then (a process manager passes most events by), so the
/// rows would show a process manager behind while it has long decided that nothing was to
/// be done.
async fn watch_positions(stats: Arc<RunnerStats>, stop: Arc<AtomicBool>) -> anyhow::Result<Tracks> {
    let mut tracks = Tracks::new();
    let mut ticks = tokio::time::interval(WATCH_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        ticks.tick().await;
        let seen = Instant::now();
        for build in stats.snapshot() {
            if !build.leader || build.state != BuildState::Live.as_str() {
                continue;
            }
            let cursor: Cursor = build
                .cursor
                .parse()
                .with_context(|| format!("{}'s cursor {:?}", build.projector, build.cursor))?;
            let track = tracks.entry(build.projector).or_default();
            if track.last().is_none_or(|(_, last)| *last != cursor) {
                track.push((seen, cursor));
            }
        }
    }
    Ok(tracks)
}

/// Waits until every live build has applied the whole log (or stopped: an error), at
/// most `within`.
pub(crate) async fn caught_up(pool: &PgPool, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let (behind, failed): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where (b.transaction_id, b.global_position) < (newest.xid, newest.pos)),
                    count(*) filter (where b.error is not null)
               from projector_builds b,
                    (select transaction_id::text::bigint as xid, global_position as pos
                       from events order by transaction_id desc, global_position desc limit 1) newest
              where b.state = 'live'",
        )
        .fetch_one(pool)
        .await?;
        anyhow::ensure!(
            failed == 0,
            "a projector stopped at an event during the load"
        );
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the projectors did not catch up within {} s after the load",
            within.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every ticket event's place in the global stream, read once after the load so that the
/// look-ups add no queries while it runs.
async fn ticket_cursors(pool: &PgPool) -> anyhow::Result<HashMap<(Uuid, i64), Cursor>> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "select aggregate_id, sequence, transaction_id::text::bigint, global_position
           from events where aggregate_type = 'Ticket'",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, sequence, transaction_id, global_position)| {
            let cursor = Cursor {
                transaction_id,
                global_position,
            };
            Ok(((id.parse()?, sequence), cursor))
        })
        .collect()
}

/// When the checkpoint first reached `cursor` after `committed`, as seen by the watcher.
fn lag_of(track: &[(Instant, Cursor)], cursor: Cursor, committed: Instant) -> Option<Duration> {
    let first = track.partition_point(|(_, at)| *at < cursor);
    track
        .get(first)
        .map(|(seen, _)| seen.saturating_duration_since(committed))
}

fn report_lag(
    rate: u64,
    seconds: u64,
    samples: &[Sample],
    errors: usize,
    tracks: &Tracks,
    cursors: &HashMap<(Uuid, i64), Cursor>,
) -> anyhow::Result<()> {
    let measured: Vec<&Sample> = samples.iter().filter(|s| !s.warmup).collect();
    let first = measured.iter().map(|s| s.scheduled).min();
    let last = measured.iter().map(|s| s.committed).max();
    let span = first.zip(last).map_or(0.0, |(a, b)| (b - a).as_secs_f64());
    let latency: Vec<Duration> = measured.iter().map(|s| s.committed - s.scheduled).collect();
    println!(
        "\nlag: {} commands/s asked for {seconds} s (after {} s warm-up): {} committed, {:.0}/s achieved, {errors} errors (load average {})",
        thousands(rate as f64),
        WARMUP.as_secs(),
        thousands(measured.len() as f64),
        measured.len() as f64 / span.max(f64::EPSILON),
        crate::setup::load_average(),
    );
    let Latencies { p50, p99, max } = Latencies::of(&latency);
    println!(
        "  command latency (schedule → commit): p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
    );
    println!(
        "  {:<32} {:>8} {:>8} {:>8}",
        "commit → visible in", "p50 ms", "p99 ms", "max ms"
    );
    let mut slowest = vec![Duration::ZERO; measured.len()];
    for (projector, track) in tracks {
        let lags = lags(&measured, track, cursors)?;
        for (worst, lag) in slowest.iter_mut().zip(&lags) {
            *worst = (*worst).max(*lag);
        }
        print_lags(projector, lags);
    }
    print_lags("all (slowest per command)", slowest.clone());
    print_by_second(&measured, &slowest);
    println!(
        "  target: p99 ≤ {LAG_TARGET_MS:.0} ms (watcher polls every {} ms)",
        WATCH_EVERY.as_millis()
    );
    Ok(())
}

fn lags(
    samples: &[&Sample],
    track: &[(Instant, Cursor)],
    cursors: &HashMap<(Uuid, i64), Cursor>,
) -> anyhow::Result<Vec<Duration>> {
    samples
        .iter()
        .map(|s| {
            let cursor = cursors
                .get(&(s.ticket, s.sequence))
                .with_context(|| format!("no event {}#{} in the log", s.ticket, s.sequence))?;
            lag_of(track, *cursor, s.committed)
                .with_context(|| format!("event {cursor} was never seen projected"))
        })
        .collect()
}

/// The slowest-of-four median per second of the run: flat when the projectors keep up,
/// rising when they fall behind.
fn print_by_second(measured: &[&Sample], slowest: &[Duration]) {
    let Some(first) = measured.iter().map(|s| s.scheduled).min() else {
        return;
    };
    let mut seconds: BTreeMap<u64, Vec<Duration>> = BTreeMap::new();
    for (sample, lag) in measured.iter().zip(slowest) {
        let second = (sample.scheduled - first).as_secs();
        seconds.entry(second).or_default().push(*lag);
    }
    let medians: Vec<String> = seconds
        .into_values()
        .map(|lags| format!("{:.0}", Latencies::of(&lags).p50))
        .collect();
    println!("  {:<32} {}", "all, p50 per second", medians.join(" "));
}

fn print_lags(label: &str, lags: Vec<Duration>) {
    let Latencies { p50, p99, max } = Latencies::of(&lags);
    println!("  {label:<32} {p50:>8.1} {p99:>8.1} {max:>8.1}");
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Drops a bench database: a million events and four read models are gigabytes, and
/// nothing reads them afterwards. A failure only warns: the figures are already printed.
pub(crate) async fn drop_database(admin_url: &str, name: &str) {
    let dropped = async {
        let admin = omoi_store::db::connect(admin_url, 1).await?;
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&admin)
            .await?;
        admin.close().await;
        anyhow::Ok(())
    };
    if let Err(error) = dropped.await {
        eprintln!("  could not drop the bench database {name}: {error:#}");
    }
}

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }

    #[test]
    fn each_ticket_gets_a_create_then_five_moves_in_one_lane() {
        let lanes = lanes(10);
        let (ticket, step) = planned(0, lanes);
        assert_eq!(step, 0);
        for k in 1..6 {
            assert_eq!(planned(k * lanes, lanes), (ticket, k as usize));
        }
        assert_ne!(planned(6 * lanes, lanes).0, ticket);
        assert_ne!(planned(1, lanes).0, ticket);
    }

    #[test]
    fn a_lag_is_measured_to_the_first_poll_past_the_event() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let c = |p| Cursor {
            transaction_id: 1,
            global_position: p,
        };
        let track = vec![(at(0), c(0)), (at(5), c(3)), (at(9), c(7))];
        assert_eq!(lag_of(&track, c(3), at(2)), Some(Duration::from_millis(3)));
        assert_eq!(lag_of(&track, c(4), at(2)), Some(Duration::from_millis(7)));
        assert_eq!(lag_of(&track, c(8), at(2)), None);
        assert_eq!(lag_of(&track, c(1), at(6)), Some(Duration::ZERO));
    }
}
