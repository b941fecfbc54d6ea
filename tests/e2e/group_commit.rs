//! Group commit (`store::group`): concurrent commands on different aggregates share a
//! transaction, and each keeps its own optimistic check and its own outcome — a member
//! that conflicts or is refused never fails the others, and no sequence is lost or doubled.
//!
//! The buses here wait up to a second for company (`max_wait`) and write one batch at a
//! time, so commands started together certainly meet in one batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use omoi_domain::common::{Phase, Priority};
use omoi_domain::ticket::{Ticket, TicketCommand, TicketError};
use omoi_store::group::GroupCommitConfig;
use omoi_store::log::{read_global, Cursor, StoredEvent, Visibility};
use omoi_store::{Actor, BusConfig, CommandBus, CommandContext, CommandError};
use omoi_testing::{held_append, TestDatabase};
use uuid::Uuid;

fn gathering_bus(pool: &sqlx::PgPool, max_commands: usize) -> CommandBus {
    CommandBus::configured(
        pool.clone(),
        BusConfig {
            group: GroupCommitConfig {
                max_commands,
                max_wait: Duration::from_secs(1),
                in_flight: 1,
            },
            ..BusConfig::default()
        },
    )
}

fn context(name: &str) -> CommandContext {
    CommandContext::new(Actor::System("test"), name)
}

fn rename(title: &str) -> TicketCommand {
    TicketCommand::UpdateTicket {
        title: Some(title.into()),
        description: None,
        priority: None,
        phase: None,
    }
}

/// `count` tickets created at once through `bus` (which then keeps them), in order.
async fn create_tickets(bus: &Arc<CommandBus>, count: usize) -> Vec<String> {
    let organization = Uuid::now_v7();
    let creations: Vec<_> = (0..count)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move { create_ticket(&bus, organization).await })
        })
        .collect();
    let mut ids = Vec::with_capacity(count);
    for creation in creations {
        ids.push(creation.await.expect("a creation"));
    }
    ids
}

async fn create_ticket(bus: &CommandBus, organization: Uuid) -> String {
    let id = Uuid::now_v7();
    let command = TicketCommand::CreateTicket {
        ticket_id: id,
        organization_id: organization,
        project_id: Uuid::now_v7(),
        spec_id: None,
        title: "Created".into(),
        description: String::new(),
        priority: Priority::Medium,
        phase: Phase::Backlog,
        plan_key: None,
    };
    bus.execute::<Ticket>(&id.to_string(), command, &context("create"))
        .await
        .expect("created");
    id.to_string()
}

/// Each ticket's sequences, and the transaction of each event.
async fn sequences(pool: &sqlx::PgPool, ids: &[String]) -> HashMap<String, Vec<(i64, i64)>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "select aggregate_id, sequence, transaction_id::text::bigint from events
          where aggregate_type = 'Ticket' and aggregate_id = any($1)
          order by aggregate_id, sequence",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .expect("the tickets' events");
    let mut by_ticket: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    for (id, sequence, transaction) in rows {
        by_ticket
            .entry(id)
            .or_default()
            .push((sequence, transaction));
    }
    by_ticket
}

/// The global stream after `cursor`, read page by page until `count` events arrived or
/// ten seconds passed (then whatever arrived, for the caller's assertion to show).
async fn read_until(pool: &sqlx::PgPool, mut cursor: Cursor, count: usize) -> Vec<StoredEvent> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut events = Vec::new();
    while events.len() < count && std::time::Instant::now() < deadline {
        let page = read_global(pool, cursor, 1_000, &Visibility::Everything)
            .await
            .expect("a page");
        if page.events.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cursor = page.next;
        events.extend(page.events);
    }
    events
}

/// 64 renames of 64 tickets at once, every other one refused by the domain (a blank
/// title), while another writer holds a transaction open: the valid ones commit in fewer
/// transactions than commands, each caller hears its own ticket's outcome, and a reader of
/// the global stream sees every event once, in order, after the held writer commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_commands_on_sixty_four_aggregates_share_transactions_with_their_own_outcomes() {
    let database = TestDatabase::create().await.expect("a database");
    let bus = Arc::new(gathering_bus(&database.pool, 64));
    let ids = create_tickets(&bus, 64).await;

    let held = held_append(&database.pool).await;

    let mut commands = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let (bus, id) = (bus.clone(), id.clone());
        commands.push(tokio::spawn(async move {
            let title = match n % 2 {
                0 => format!("Title {n}"),
                _ => "   ".to_string(),
            };
            let outcome = bus
                .execute::<Ticket>(&id, rename(&title), &context(&format!("rename {n}")))
                .await;
            (n, id, title, outcome)
        }));
    }
    for command in commands {
        let (n, id, title, outcome) = command.await.expect("a command task");
        match (n % 2, outcome) {
            (0, Ok(committed)) => {
                assert_eq!(committed.aggregate_id, id, "another command's answer");
                assert_eq!((committed.version, committed.appended), (2, 1));
                assert_eq!(committed.state.title, title, "another command's state");
            }
            (1, Err(CommandError::Domain(TicketError::EmptyTitle))) => {}
            (_, other) => panic!("command {n}: unexpected outcome {other:?}"),
        }
    }

    let by_ticket = sequences(&database.pool, &ids).await;
    let mut rename_transactions = HashSet::new();
    for (n, id) in ids.iter().enumerate() {
        let events = &by_ticket[id];
        let numbers: Vec<i64> = events.iter().map(|(sequence, _)| *sequence).collect();
        let expected = if n % 2 == 0 { vec![1, 2] } else { vec![1] };
        assert_eq!(numbers, expected, "ticket {n}: a lost or doubled sequence");
        if let Some((_, transaction)) = events.get(1) {
            rename_transactions.insert(*transaction);
        }
    }
    assert!(
        rename_transactions.len() < 32,
        "32 renames in {} transactions: no group commit",
        rename_transactions.len()
    );

    // The renames committed while the held writer (an older transaction) is open: a
    // reader sees none of them yet, then everything once it commits. The horizon is the
    // cluster's, so a transaction of a test running beside this one may hold events back a
    // moment (the reader lags), never past the held writer and never for good (it never
    // skips): each read keeps reading until it has what it waits for.
    let before = read_until(&database.pool, Cursor::default(), 64).await;
    assert_eq!(
        before.len(),
        64,
        "only the creations precede the open transaction"
    );
    held.commit().await.expect("the held commit");
    let after = read_until(&database.pool, before[63].cursor(), 1 + 32).await;
    let read: Vec<(String, i64)> = before
        .iter()
        .chain(&after)
        .map(|e| (e.aggregate_id.clone(), e.sequence))
        .collect();
    let all: Vec<(String, i64)> = sqlx::query_as(
        "select aggregate_id, sequence from events order by transaction_id, global_position",
    )
    .fetch_all(&database.pool)
    .await
    .expect("the log");
    assert_eq!(all.len(), 64 + 1 + 32);
    assert_eq!(read, all, "the reader missed or reordered events");
}

/// A command decided on a kept copy that another process has since moved on is skipped by
/// the batch's statement and decided again, while the batch's other members commit: no
/// event of the other process is overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_decided_on_an_overtaken_copy_retries_alone() {
    let database = TestDatabase::create().await.expect("a database");
    let bus = Arc::new(gathering_bus(&database.pool, 3));
    let ids = create_tickets(&bus, 3).await;
    let other_process = CommandBus::new(
        TestDatabase::pool(&database.options, 2)
            .await
            .expect("a pool"),
        Default::default(),
    );
    other_process
        .execute::<Ticket>(&ids[0], rename("Elsewhere"), &context("other"))
        .await
        .expect("renamed by the other process");

    let commands = rename_each(&bus, &ids);
    let versions = committed_versions(commands).await;
    assert_eq!(versions, vec![3, 2, 2]);

    let by_ticket = sequences(&database.pool, &ids).await;
    assert_one_overtaken(&by_ticket, &ids);
    assert_eq!(
        by_ticket[&ids[1]][1].1, by_ticket[&ids[2]][1].1,
        "the two current members did not share their transaction"
    );
    let titles: Vec<String> = sqlx::query_scalar(
        "select payload -> 'TicketUpdated' ->> 'title' from events
          where aggregate_id = $1 and sequence > 1 order by sequence",
    )
    .bind(&ids[0])
    .fetch_all(&database.pool)
    .await
    .expect("titles");
    assert_eq!(titles, vec!["Elsewhere", "Here"]);
}

/// Another transaction holds an uncommitted append of the sequence one member wants: the
/// batch's statement waits for it and fails when it commits. The batch's members are then
/// appended one by one, so the others commit and the conflicting one retries on the log's
/// state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_meeting_an_uncommitted_append_does_not_fail_its_batch() {
    let database = TestDatabase::create().await.expect("a database");
    let bus = Arc::new(gathering_bus(&database.pool, 3));
    let ids = create_tickets(&bus, 3).await;
    let mut held = database.pool.begin().await.expect("a transaction");
    sqlx::query(
        "insert into events
             (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         select 'Ticket', $1, 2, 'TicketUpdated', '1',
                '{\"TicketUpdated\": {\"title\": \"Held\", \"description\": null, \"priority\": null, \"phase\": null}}',
                metadata
           from events where aggregate_type = 'Ticket' and aggregate_id = $1 and sequence = 1",
    )
    .bind(&ids[0])
    .execute(&mut *held)
    .await
    .expect("the held append");

    let commands = rename_each(&bus, &ids);
    // Let the batch reach the held row and wait on it, then let the holder commit.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        commands.iter().all(|c| !c.is_finished()),
        "the batch did not wait for the held append"
    );
    held.commit().await.expect("the held commit");
    let versions = committed_versions(commands).await;
    assert_eq!(versions, vec![3, 2, 2]);
    let by_ticket = sequences(&database.pool, &ids).await;
    assert_one_overtaken(&by_ticket, &ids);
}

type Rename =
    tokio::task::JoinHandle<Result<omoi_store::Committed<Ticket>, CommandError<TicketError>>>;

/// Renames every ticket to "Here" at once.
fn rename_each(bus: &Arc<CommandBus>, ids: &[String]) -> Vec<Rename> {
    ids.iter()
        .map(|id| {
            let (bus, id) = (bus.clone(), id.clone());
            tokio::spawn(async move {
                bus.execute::<Ticket>(&id, rename("Here"), &context("here"))
                    .await
            })
        })
        .collect()
}

/// Each rename's version, in order; every one must have committed as asked.
async fn committed_versions(renames: Vec<Rename>) -> Vec<usize> {
    let mut versions = Vec::new();
    for rename in renames {
        let committed = rename
            .await
            .expect("a command task")
            .expect("every rename commits");
        assert_eq!(committed.state.title, "Here");
        versions.push(committed.version);
    }
    versions
}

/// The first ticket got another writer's event and then ours; the others ours alone.
fn assert_one_overtaken(by_ticket: &HashMap<String, Vec<(i64, i64)>>, ids: &[String]) {
    let numbers = |id: &str| -> Vec<i64> { by_ticket[id].iter().map(|(s, _)| *s).collect() };
    assert_eq!(numbers(&ids[0]), vec![1, 2, 3]);
    assert_eq!(numbers(&ids[1]), vec![1, 2]);
    assert_eq!(numbers(&ids[2]), vec![1, 2]);
}

/// A command whose caller is gone while its events wait to be written (its client hung
/// up) still has them committed — and this process's readers are woken for them at once,
/// by the appender, not at their next poll.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_caller_is_gone_still_wakes_the_readers() {
    let database = TestDatabase::create().await.expect("a database");
    let bus = Arc::new(CommandBus::configured(
        database.pool.clone(),
        BusConfig::default(),
    ));
    let mut commits = bus.commits();
    // The append waits behind a lock on the log, held here.
    let mut blocker = database.pool.begin().await.expect("a transaction");
    sqlx::query("lock table events in share mode")
        .execute(&mut *blocker)
        .await
        .expect("the log locked");
    let caller = tokio::spawn({
        let bus = bus.clone();
        async move { create_ticket(&bus, Uuid::now_v7()).await }
    });
    let waiting = "select count(*) from pg_locks
                    where not granted and relation = 'events'::regclass";
    let mut waits = 0_i64;
    for _ in 0..200 {
        waits = sqlx::query_scalar(waiting)
            .fetch_one(&database.pool)
            .await
            .expect("the locks");
        if waits > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(waits, 1, "the append waits for the lock");
    caller.abort();
    assert!(caller.await.is_err(), "the caller is gone");
    commits.mark_unchanged();
    blocker.rollback().await.expect("the log let go");

    tokio::time::timeout(Duration::from_secs(10), commits.changed())
        .await
        .expect("woken for the commit")
        .expect("the bus is there");
    let created: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&database.pool)
        .await
        .expect("the log");
    assert_eq!(created, 1, "the gone caller's ticket was committed");
}
