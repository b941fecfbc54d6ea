//! `omoi-bench bench-aggregate`: what a command costs as its aggregate's history grows.
//!
//! One fresh database. A ticket with `--events` events (its creation, then renames
//! written set-based in the exact shape the bus writes them) and one with 10. Then,
//! alternating, `--commands` renames of each through two buses side by side in one run:
//! one keeping no aggregates in memory (every command folds the whole history: the build
//! before the aggregate cache) and one with the cache. Printed: the median time of a
//! command on each ticket through each bus, and the ratio long ÷ short (target ≤ 1.5 with
//! the cache).

use std::time::{Duration, Instant};

use omoi_domain::common::{Phase, Priority};
use omoi_domain::ticket::{Ticket, TicketCommand};
use omoi_store::bus::{BusConfig, RetryPolicy};
use omoi_store::{Actor, CommandBus, CommandContext};
use omoi_testing::TestDatabase;
use uuid::Uuid;

use crate::setup::load_average;
use crate::stats::median;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events of the long ticket.
    #[arg(long, default_value_t = 10_000)]
    pub events: i64,
    /// Commands timed on each ticket through each bus.
    #[arg(long, default_value_t = 200)]
    pub commands: usize,
}

const SHORT: i64 = 10;
const TARGET: f64 = 1.5;

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.events > SHORT && args.commands > 0,
        "--events must exceed {SHORT} and --commands be positive"
    );
    let admin_url = crate::setup::admin_url().await?;
    let database = TestDatabase::create_on(&admin_url).await?;
    let pool = TestDatabase::pool(&database.options, 4).await?;
    let context = CommandContext::new(Actor::System("bench"), "bench-aggregate");
    let seeding = CommandBus::new(pool.clone(), RetryPolicy::default());
    let long = ticket_with(&seeding, &pool, &context, args.events).await?;
    let short = ticket_with(&seeding, &pool, &context, SHORT).await?;
    println!(
        "aggregate: a ticket of {} events and one of {SHORT}, {} renames each per bus (load average {})",
        args.events,
        args.commands,
        load_average()
    );
    let buses = [
        (
            "no cache (before)",
            CommandBus::configured(
                pool.clone(),
                BusConfig {
                    cached: 0,
                    ..BusConfig::default()
                },
            ),
        ),
        (
            "cache",
            CommandBus::new(pool.clone(), RetryPolicy::default()),
        ),
    ];
    let mut times: Vec<[Vec<Duration>; 2]> =
        vec![[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    // The cache's first load of each ticket folds its history once: not timed.
    for (_, bus) in &buses {
        rename(bus, &context, long, 0).await?;
        rename(bus, &context, short, 0).await?;
    }
    for round in 1..=args.commands {
        for (which, (_, bus)) in buses.iter().enumerate() {
            for (slot, ticket) in [long, short].into_iter().enumerate() {
                let started = Instant::now();
                rename(bus, &context, ticket, round).await?;
                times[which][slot].push(started.elapsed());
            }
        }
    }
    println!("| bus | {} events | {SHORT} events | ratio |", args.events);
    println!("|---|---|---|---|");
    for (which, (name, _)) in buses.iter().enumerate() {
        let long_ms = median_ms(&times[which][0]);
        let short_ms = median_ms(&times[which][1]);
        println!(
            "| {name} | {long_ms:.2} ms | {short_ms:.2} ms | {:.2} |",
            long_ms / short_ms
        );
    }
    let ratio = median_ms(&times[1][0]) / median_ms(&times[1][1]);
    println!(
        "with the cache, a command on the long ticket ÷ on the short one: {ratio:.2} (target ≤ {TARGET}: {})",
        if ratio <= TARGET { "met" } else { "not met" }
    );
    pool.close().await;
    Ok(())
}

fn median_ms(values: &[Duration]) -> f64 {
    let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    median(&ms)
}

async fn rename(
    bus: &CommandBus,
    context: &CommandContext,
    ticket: Uuid,
    round: usize,
) -> anyhow::Result<()> {
    let command = TicketCommand::UpdateTicket {
        title: Some(format!("Renamed {round}")),
        description: None,
        priority: None,
        phase: None,
    };
    bus.execute::<Ticket>(&ticket.to_string(), command, context)
        .await
        .map_err(|e| anyhow::anyhow!("rename: {e}"))?;
    Ok(())
}

/// A ticket created through the bus, then renamed by inserted rows up to `events` events
/// (each a copy of what the bus writes for a rename, with the creation's metadata).
async fn ticket_with(
    bus: &CommandBus,
    pool: &sqlx::PgPool,
    context: &CommandContext,
    events: i64,
) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    let command = TicketCommand::CreateTicket {
        ticket_id: id,
        organization_id: Uuid::now_v7(),
        project_id: Uuid::now_v7(),
        spec_id: None,
        title: "History".into(),
        description: String::new(),
        priority: Priority::Medium,
        phase: Phase::Backlog,
        plan_key: None,
    };
    bus.execute::<Ticket>(&id.to_string(), command, context)
        .await
        .map_err(|e| anyhow::anyhow!("create: {e}"))?;
    sqlx::query(
        "insert into events
             (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         select 'Ticket', $1, n, 'TicketUpdated', '1',
                jsonb_build_object('TicketUpdated', jsonb_build_object(
                    'title', 'Title ' || n, 'description', null, 'priority', null, 'phase', null)),
                (select metadata from events
                  where aggregate_type = 'Ticket' and aggregate_id = $1 and sequence = 1)
           from generate_series(2, $2::bigint) as n",
    )
    .bind(id.to_string())
    .bind(events)
    .execute(pool)
    .await?;
    Ok(id)
}
