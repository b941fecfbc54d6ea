//! `omoi-bench bench-scale`: whether a small organization's everyday requests cost the
//! same when the log around it is a hundred times larger (issue #15, "cost as the work
//! grows").
//!
//! For each `--sizes` entry, a fresh database gets that many generated events (the
//! generator of `bench-projections`: four large organizations, twelve projects), then a
//! small organization with one project of 20 tickets made through the command bus, after
//! everything else. The board and the timeline are rebuilt over the whole log (they go
//! live as `omoi projections rebuild` leaves them), the log is vacuumed and analyzed (as
//! autovacuum would have), and `--samples` of each request are timed one after another:
//!
//! * **append** — a rename of one of the small project's tickets through the command bus
//!   (decided, appended, committed);
//! * **board** — the small project's board, as `GET /api/v1/projects/{id}/board` reads it;
//! * **timeline** — the small project's newest page of 20, as `GET /api/v1/timeline` reads it;
//! * **stream** — the small organization's first page of 40 of the global stream, as
//!   `GET /api/v1/events` reads it;
//!
//! and, three times each, a large project's board `as_of` its last event from its newest
//! snapshot (a whole and the deltas after it; the snapshots read model is rebuilt too),
//! from its newest whole alone (the deltas hidden, as in a build from before them) and
//! from the start of its history (the snapshots hidden; `omoi serve` refuses more than
//! 100,000 events replayed per view).
//! The table gives p50 / p99 per size and the ratio of the p99s (target ≤ 1.5).

use std::time::{Duration, Instant};

use omoi_domain::common::{Phase, Priority};
use omoi_domain::ticket::{Ticket, TicketCommand};
use omoi_projections::board::{board_view, board_view_as_of, default_columns};
use omoi_projections::snapshots::SnapshotsProjector;
use omoi_projections::timeline::{read as read_timeline, Page, TimelineFilter};
use omoi_projections::Projector;
use omoi_store::bus::RetryPolicy;
use omoi_store::log::{read_global, Visibility};
use omoi_store::{CommandBus, Cursor};
use omoi_testing::TestDatabase;
use uuid::Uuid;

use crate::projections::{
    context, drop_database, generate, generated_project, organization_and_project, rebuild_one,
    thousands,
};
use crate::stats::Latencies;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Log sizes to compare, in generated events (the first is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "100000,10000000")]
    pub sizes: Vec<i64>,
    /// Times each request is timed per size.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
}

/// Target of the ratio of each p99 to the baseline's.
const RATIO_TARGET: f64 = 1.5;
/// Target of a large project's board `as_of` (issue #15).
const AS_OF_TARGET_MS: f64 = 200.0;
/// The small organization's tickets.
const SMALL_TICKETS: usize = 20;
/// Times the large project's past board is rebuilt.
const AS_OF_SAMPLES: usize = 3;

/// The requests timed, in the order they are printed.
const REQUESTS: [&str; 4] = [
    "append (a rename, through the bus)",
    "board of the small project",
    "timeline, newest 20 of it",
    "stream, its organization's first 40",
];

/// One size's figures.
struct Figures {
    events: i64,
    requests: Vec<Latencies>,
    /// A large project's past board, from its snapshots and from the start.
    as_of: AsOf,
}

/// A large project's board `as_of` its last event, timed both ways.
struct AsOf {
    /// The project's events.
    events: i64,
    /// Its snapshots, whole and deltas, and the bytes all projects' take (tables and
    /// TOAST).
    wholes: i64,
    deltas: i64,
    snapshot_bytes: i64,
    /// Each try starting from the newest snapshot: a whole and the deltas after it.
    from_snapshot: Vec<Duration>,
    /// Each try starting from the newest whole alone (the deltas hidden, as in a build
    /// from before them).
    from_whole: Vec<Duration>,
    /// Each try replaying the project's whole history (the snapshots hidden).
    from_start: Vec<Duration>,
    /// Each try of its live board (the read model's rows), for scale: what a board of
    /// that many cards costs at all.
    live: Vec<Duration>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.sizes.len() >= 2 && args.sizes.iter().all(|s| *s > 0) && args.samples > 0,
        "--sizes wants at least two positive sizes and --samples a positive count"
    );
    let admin_url = crate::setup::admin_url().await?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cpus} CPUs, load average {} (anything else running skews every figure)",
        crate::setup::load_average()
    );
    let mut all = Vec::with_capacity(args.sizes.len());
    for size in &args.sizes {
        all.push(measure(&admin_url, *size, args.samples).await?);
    }
    report(&all);
    Ok(())
}

async fn measure(admin_url: &str, size: i64, samples: usize) -> anyhow::Result<Figures> {
    let database = TestDatabase::create_on(admin_url).await?;
    let pool = &database.pool;
    let generated = generate(&database.options, size).await?;
    let bus = CommandBus::new(pool.clone(), RetryPolicy::default());
    let (organization, project) = organization_and_project(&bus).await?;
    let tickets = small_tickets(&bus, organization, project).await?;
    sqlx::raw_sql("vacuum analyze events").execute(pool).await?;
    let events: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await?;
    let started = Instant::now();
    let read_models: [&dyn Projector; 2] = [
        &omoi_projections::board::BoardProjector,
        &omoi_projections::timeline::TimelineProjector,
    ];
    for projector in read_models {
        rebuild_one(&database, projector, events).await?;
    }
    let projected = started.elapsed();
    let snapshots = SnapshotsProjector::default();
    let snapshots_took = rebuild_one(&database, &snapshots, events).await?;
    sqlx::raw_sql("vacuum analyze").execute(pool).await?;
    println!(
        "\n{} events generated in {:.1} s ({} tickets), then the small organization's {} tickets; board and timeline rebuilt in {:.1} s, snapshots in {:.1} s",
        thousands(generated.events as f64),
        generated.elapsed.as_secs_f64(),
        thousands(generated.tickets as f64),
        SMALL_TICKETS,
        projected.as_secs_f64(),
        snapshots_took.as_secs_f64()
    );

    let columns = default_columns();
    let mut requests = Vec::with_capacity(REQUESTS.len());
    let mut times = Vec::with_capacity(samples);
    for n in 0..samples {
        let ticket = tickets[n % tickets.len()];
        let started = Instant::now();
        bus.execute::<Ticket>(
            &ticket.to_string(),
            rename(format!("Renamed {n}")),
            &context(),
        )
        .await?;
        times.push(started.elapsed());
    }
    requests.push(Latencies::of(&times));
    times.clear();
    for _ in 0..samples {
        let started = Instant::now();
        let board = board_view(pool, project, &columns).await?;
        times.push(started.elapsed());
        let cards: usize = board.columns.iter().map(|c| c.cards.len()).sum();
        anyhow::ensure!(
            cards == SMALL_TICKETS,
            "the small board shows {cards} cards"
        );
    }
    requests.push(Latencies::of(&times));
    times.clear();
    let timeline = TimelineFilter {
        organizations: Some(vec![organization]),
        project_id: Some(project),
        event_type: None,
        entity_type: None,
        entity_id: None,
        actor: None,
        page: Page::Newest,
        limit: 20,
    };
    for _ in 0..samples {
        let started = Instant::now();
        let page = read_timeline(pool, &timeline).await?;
        times.push(started.elapsed());
        anyhow::ensure!(page.entries.len() == 20, "a short timeline page");
    }
    requests.push(Latencies::of(&times));
    times.clear();
    let small = Visibility::Organizations {
        organizations: vec![organization],
        project: None,
    };
    for _ in 0..samples {
        let started = Instant::now();
        let page = read_global(pool, Cursor::default(), 40, &small).await?;
        times.push(started.elapsed());
        anyhow::ensure!(page.events.len() == 40, "a short page of the stream");
    }
    requests.push(Latencies::of(&times));

    let as_of = large_project_as_of(pool).await?;
    database.pool.close().await;
    drop_database(admin_url, &database.name).await;
    Ok(Figures {
        events: generated.events,
        requests,
        as_of,
    })
}

/// The small organization's tickets, created and renamed once each.
async fn small_tickets(
    bus: &CommandBus,
    organization: Uuid,
    project: Uuid,
) -> anyhow::Result<Vec<Uuid>> {
    let mut tickets = Vec::with_capacity(SMALL_TICKETS);
    for n in 0..SMALL_TICKETS {
        let ticket = Uuid::now_v7();
        let create = TicketCommand::CreateTicket {
            ticket_id: ticket,
            organization_id: organization,
            project_id: project,
            spec_id: None,
            title: format!("Small {n}"),
            description: String::new(),
            priority: Priority::Medium,
            phase: Phase::Backlog,
            plan_key: None,
        };
        bus.execute::<Ticket>(&ticket.to_string(), create, &context())
            .await?;
        let renamed = rename(format!("Small ticket {n}"));
        bus.execute::<Ticket>(&ticket.to_string(), renamed, &context())
            .await?;
        tickets.push(ticket);
    }
    Ok(tickets)
}

fn rename(title: String) -> TicketCommand {
    TicketCommand::UpdateTicket {
        title: Some(title),
        description: None,
        priority: None,
        phase: None,
    }
}

/// The first generated project's board as of the log's last position, with no bound on
/// the events replayed: from its newest snapshot, then (the snapshots' view dropped, as in
/// a database without them) from the start of its history.
async fn large_project_as_of(pool: &sqlx::PgPool) -> anyhow::Result<AsOf> {
    let (organization, project) = generated_project(0);
    let (events, last): (i64, i64) = sqlx::query_as(
        "select count(*), coalesce(max(global_position), 0) from events
          where metadata ->> 'project_id' = $1",
    )
    .bind(project.to_string())
    .fetch_one(pool)
    .await?;
    let (wholes, deltas, snapshot_bytes): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from snapshots_models where project_id = $1),
                (select count(*) from snapshots_deltas where project_id = $1),
                (select sum(pg_total_relation_size(to_regclass(format('%I.%I', schema_name, t))))::bigint
                   from information_schema.schemata, unnest(array['models', 'deltas']) as t
                  where schema_name like 'rm_snapshots_%')",
    )
    .bind(project)
    .fetch_one(pool)
    .await?;
    let columns = default_columns();
    let timed = || async {
        let mut times = Vec::with_capacity(AS_OF_SAMPLES);
        let mut shown = None;
        for _ in 0..AS_OF_SAMPLES {
            let started = Instant::now();
            let board =
                board_view_as_of(pool, organization, project, last, usize::MAX, &columns).await?;
            times.push(started.elapsed());
            shown = Some(serde_json::to_value(board)?);
        }
        anyhow::Ok((times, shown))
    };
    let mut live = Vec::with_capacity(AS_OF_SAMPLES);
    for _ in 0..AS_OF_SAMPLES {
        let started = Instant::now();
        board_view(pool, project, &columns).await?;
        live.push(started.elapsed());
    }
    let (from_snapshot, with) = timed().await?;
    sqlx::query("drop view snapshots_deltas")
        .execute(pool)
        .await?;
    let (from_whole, with_whole) = timed().await?;
    sqlx::query("drop view snapshots_models")
        .execute(pool)
        .await?;
    let (from_start, without) = timed().await?;
    anyhow::ensure!(
        with == without && with_whole == without,
        "the board from a snapshot differs from the board from the start"
    );
    Ok(AsOf {
        events,
        wholes,
        deltas,
        snapshot_bytes,
        from_snapshot,
        from_whole,
        from_start,
        live,
    })
}

fn report(all: &[Figures]) {
    let Some(base) = all.first() else { return };
    let header: Vec<String> = all
        .iter()
        .map(|f| format!("{:>22}", format!("{} events", thousands(f.events as f64))))
        .collect();
    println!(
        "\n  {:<38} {}   p99 ÷ the first (target ≤ {RATIO_TARGET})",
        "p50 / p99 ms",
        header.join(" ")
    );
    for (i, request) in REQUESTS.iter().enumerate() {
        let cells: Vec<String> = all
            .iter()
            .map(|f| {
                format!(
                    "{:>22}",
                    format!("{:.2} / {:.2}", f.requests[i].p50, f.requests[i].p99)
                )
            })
            .collect();
        let ratios: Vec<String> = all[1..]
            .iter()
            .map(|f| format!("{:.2}", f.requests[i].p99 / base.requests[i].p99))
            .collect();
        println!(
            "  {request:<38} {}   {}",
            cells.join(" "),
            ratios.join(", ")
        );
    }
    let ms = |times: &[Duration]| {
        times
            .iter()
            .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for figures in all {
        let as_of = &figures.as_of;
        println!(
            "  a large project's board as of its last event, {} events (log of {}), ms: from its newest snapshot {} (target ≤ {AS_OF_TARGET_MS:.0} ms on 1,000,000); from its newest whole alone {}; from the start {}; its live board {}; {} wholes and {} deltas of it, all snapshots {:.1} MB",
            thousands(as_of.events as f64),
            thousands(figures.events as f64),
            ms(&as_of.from_snapshot),
            ms(&as_of.from_whole),
            ms(&as_of.from_start),
            ms(&as_of.live),
            as_of.wholes,
            as_of.deltas,
            as_of.snapshot_bytes as f64 / 1e6
        );
    }
}
