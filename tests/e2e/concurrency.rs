//! Concurrency on the write side: optimistic conflicts are retried, and the global stream
//! never loses an event that commits late, nor one past a page's weight.

use std::collections::HashSet;
use std::sync::Arc;

use omoi_domain::spec::{Requirement, Spec, SpecCommand, SpecError};
use omoi_store::{Actor, CommandContext, CommandError};
use omoi_testing::{held_transaction, spawn_app};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

fn requirement(n: usize) -> Requirement {
    Requirement {
        id: format!("REQ-LOAD-{n:03}"),
        condition: "WHEN load arrives".into(),
        action: format!("THE SYSTEM SHALL keep requirement {n}"),
        acceptance_criteria: vec!["it is kept".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_commands_on_one_aggregate_lose_nothing() {
    let app = spawn_app().await;
    let (_, project_id) = app.organization_and_project().await;
    let (status, spec) = app
        .post(
            "/api/v1/specs",
            json!({"project_id": project_id, "title": "Load"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spec}");
    let spec_id: Uuid = spec["id"].as_str().expect("id").parse().expect("uuid");

    // Half the commands arrive over HTTP (one process), half through four other command
    // buses with pools of their own (other processes): those really conflict in the
    // database and must be retried.
    let mut buses = Vec::new();
    for _ in 0..4 {
        buses.push(Arc::new(app.second_bus().await));
    }
    let mut handles = Vec::new();
    for n in 0..64 {
        if n % 2 == 0 {
            let (client, address) = (app.client.clone(), app.address.clone());
            let token = app.token.clone().expect("a token");
            handles.push(tokio::spawn(async move {
                let r = requirement(n);
                let response = client
                    .post(format!("{address}/api/v1/specs/{spec_id}/requirements"))
                    .bearer_auth(&token)
                    .json(
                        &json!({"id": r.id, "condition": r.condition, "action": r.action,
                                  "acceptance_criteria": r.acceptance_criteria}),
                    )
                    .send()
                    .await
                    .expect("an answer");
                let status = response.status();
                let body: Value = response.json().await.expect("json");
                assert_eq!(status, StatusCode::OK, "{body}");
            }));
        } else {
            let bus = buses[n % 4].clone();
            handles.push(tokio::spawn(async move {
                let context = CommandContext::new(Actor::System("test"), format!("req-{n}"));
                let result = bus
                    .execute::<Spec>(
                        &spec_id.to_string(),
                        SpecCommand::AddRequirement(requirement(n)),
                        &context,
                    )
                    .await;
                match result {
                    Ok(_) | Err(CommandError::Domain(SpecError::DuplicateRequirementId(_))) => {}
                    Err(other) => panic!("command {n} failed: {other}"),
                }
            }));
        }
    }
    for handle in handles {
        handle.await.expect("a command task");
    }

    let (status, history) = app.get(&format!("/api/v1/specs/{spec_id}/history")).await;
    assert_eq!(status, StatusCode::OK);
    let events = history["events"].as_array().expect("events");
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().expect("sequence"))
        .collect();
    assert_eq!(
        sequences,
        (1..=sequences.len() as i64).collect::<Vec<_>>(),
        "gap or duplicate"
    );
    let requirements = history["state"]["requirements"]
        .as_array()
        .expect("requirements");
    assert_eq!(requirements.len(), 64, "a concurrent update was lost");
    let ids: HashSet<&str> = requirements
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 64);
    // created + phase change (draft → requirements) + 64 additions
    assert_eq!(events.len(), 66);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_of_the_global_stream_never_skips_an_event_that_commits_late() {
    let app = spawn_app().await;
    let (org_id, project_id) = app.organization_and_project().await;

    // A writer that takes its position first and commits last.
    let mut held = app.database.pool.begin().await.expect("a transaction");
    // Its metadata names the organization, as every event's does: readers filter by it.
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         values ('Probe', 'held', 1, 'ProbeHeld', '1', '{}', jsonb_build_object('organization_id', $1::text))",
    )
    .bind(&org_id)
    .execute(&mut *held)
    .await
    .expect("the held insert");

    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, address, project_id) =
            (app.client.clone(), app.address.clone(), project_id.clone());
        let token = app.token.clone().expect("a token");
        writers.push(tokio::spawn(async move {
            for n in 0..15 {
                let response = client
                    .post(format!("{address}/api/v1/tickets"))
                    .bearer_auth(&token)
                    .json(&json!({"project_id": project_id, "title": format!("w{w} n{n}")}))
                    .send()
                    .await
                    .expect("an answer");
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        }));
    }

    let mut seen: Vec<(String, String, i64)> = Vec::new();
    let mut cursor = "0-0".to_string();
    let read_page = |cursor: String| {
        let app = &app;
        async move {
            let (status, page) = app
                .get(&format!("/api/v1/events?after={cursor}&limit=7"))
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            page
        }
    };
    // Read while the writers run and the held transaction is open.
    for writer in writers {
        writer.await.expect("a writer");
    }
    loop {
        let page = read_page(cursor.clone()).await;
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            break;
        }
        for e in &events {
            assert_ne!(
                e["event_type"], "ProbeHeld",
                "an uncommitted event was visible"
            );
            seen.push(key(e));
        }
        cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    }
    // Everything committed after the held transaction began waits behind it: lag, not loss.
    assert_eq!(
        seen.len(),
        3,
        "only the organization's and project's events precede the open transaction"
    );

    held.commit().await.expect("the held commit");
    loop {
        let page = read_page(cursor.clone()).await;
        let events = page["events"].as_array().expect("events").clone();
        if events.is_empty() {
            break;
        }
        seen.extend(events.iter().map(key));
        cursor = page["next_cursor"].as_str().expect("cursor").to_string();
    }

    let all: Vec<(String, String, i64)> = sqlx::query_as(
        "select aggregate_type, aggregate_id, sequence from events order by transaction_id, global_position",
    )
    .fetch_all(&app.database.pool)
    .await
    .expect("all events");
    assert_eq!(all.len(), 3 + 1 + 8 * 15);
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an event was read twice");
    assert_eq!(
        seen, all,
        "the reader missed events or read them out of order"
    );
    assert!(
        seen.iter().any(|(t, _, _)| t == "Probe"),
        "the late event was skipped"
    );
}

/// While a transaction holds the log's horizon, `read_global_ahead` hands over what
/// committed beyond it — each event once, across reads that each start after the last
/// one's `ahead_next` — and its gapless page nothing past the horizon; once the
/// transaction ends, the page brings every one of them, in the log's order.
#[tokio::test(flavor = "multi_thread")]
async fn reading_ahead_of_a_held_horizon_takes_each_committed_event_once() {
    use omoi_store::log::read_global_ahead;
    use omoi_store::Cursor;

    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let pool = &app.database.pool;
    let created = |events: &[omoi_store::StoredEvent], tickets: &[String]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.event_type == "TicketCreated" && tickets.contains(&e.aggregate_id))
            .map(|e| e.aggregate_id.clone())
            .collect()
    };
    let start = Cursor::default();

    let held = held_transaction(pool).await;
    let mut first_tickets = Vec::new();
    for n in 0..3 {
        first_tickets.push(app.ticket(&project, &format!("first {n}")).await);
    }
    let first = read_global_ahead(pool, start, 10_000, start, 10_000)
        .await
        .expect("a read");
    assert!(created(&first.page.events, &first_tickets).is_empty());
    assert_eq!(created(&first.ahead, &first_tickets), first_tickets);

    let again = read_global_ahead(pool, start, 10_000, first.ahead_next, 10_000)
        .await
        .expect("a read");
    assert!(
        created(&again.ahead, &first_tickets).is_empty(),
        "read ahead twice"
    );
    let mut later_tickets = Vec::new();
    for n in 0..2 {
        later_tickets.push(app.ticket(&project, &format!("later {n}")).await);
    }
    let later = read_global_ahead(pool, start, 10_000, again.ahead_next, 10_000)
        .await
        .expect("a read");
    assert!(created(&later.ahead, &first_tickets).is_empty());
    assert_eq!(created(&later.ahead, &later_tickets), later_tickets);
    assert!(created(&later.page.events, &later_tickets).is_empty());

    held.rollback().await.expect("the rollback");
    let every: Vec<String> = first_tickets
        .iter()
        .chain(&later_tickets)
        .cloned()
        .collect();
    // The running server's own transactions (its read models' and process managers'
    // batches) may hold the horizon a moment longer: read until the page reaches past
    // every one of them, for at most ten seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let settled = loop {
        let read = read_global_ahead(pool, start, 10_000, later.ahead_next, 10_000)
            .await
            .expect("a read");
        let reached = created(&read.page.events, &every).len() == every.len();
        if reached || std::time::Instant::now() > deadline {
            break read;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(created(&settled.page.events, &every), every);
    assert!(created(&settled.ahead, &every).is_empty());
}

fn key(event: &Value) -> (String, String, i64) {
    (
        event["aggregate_type"].as_str().expect("type").to_string(),
        event["aggregate_id"].as_str().expect("id").to_string(),
        event["sequence"].as_i64().expect("sequence"),
    )
}

/// The server's bus keeps the aggregates it commits; another process (a second bus on the
/// same database) appends to one meanwhile. The server's next command decides on the
/// aggregate with those events, at the right sequence — a kept state falls behind the
/// log but is never used as if it were current — and a refusal that depends on them
/// (the ticket was blocked elsewhere) is made.
#[tokio::test(flavor = "multi_thread")]
async fn a_kept_aggregate_catches_up_with_what_another_process_appended() {
    use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand};

    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let (status, ticket) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Kept"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let id = ticket["id"].as_str().expect("an id").to_string();
    // Read once more through the server, so its bus certainly holds version 1.
    let (status, read) = app.get(&format!("/api/v1/tickets/{id}")).await;
    assert_eq!(
        (status, read["version"].clone()),
        (StatusCode::OK, json!(1))
    );

    let other = app.second_bus().await;
    let context = CommandContext::new(Actor::System("other-process"), "elsewhere");
    for title in ["One", "Two"] {
        let rename = TicketCommand::UpdateTicket {
            title: Some(title.into()),
            description: None,
            priority: None,
            phase: None,
        };
        other
            .execute::<Ticket>(&id, rename, &context)
            .await
            .expect("renamed elsewhere");
    }
    let block = TicketCommand::BlockTicket {
        reason: BlockReason::Environment,
        note: None,
        at: chrono::Utc::now(),
    };
    other
        .execute::<Ticket>(&id, block, &context)
        .await
        .expect("blocked elsewhere");

    let (status, renamed) = app
        .patch(&format!("/api/v1/tickets/{id}"), json!({"title": "Three"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(
        renamed["version"], 5,
        "after the other process's three events: {renamed}"
    );
    assert_eq!(renamed["state"]["title"], "Three");
    assert!(renamed["state"]["blocked"].is_object(), "{renamed}");
    // Blocked elsewhere: blocking again is refused here, on the caught-up state.
    let (status, again) = app
        .post(
            &format!("/api/v1/tickets/{id}/block"),
            json!({"reason": "environment"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let (_, history) = app.get(&format!("/api/v1/tickets/{id}/history")).await;
    let sequences: Vec<i64> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["sequence"].as_i64())
        .collect();
    assert_eq!(sequences, vec![1, 2, 3, 4, 5]);
}

/// The events of the global stream the owner reads, page by page (`limit` each), and the
/// number of events on the first page.
async fn stream_pages(app: &omoi_testing::TestApp, limit: usize) -> (Vec<(String, i64)>, usize) {
    let mut after = "0-0".to_string();
    let mut events = Vec::new();
    let mut first = None;
    loop {
        let (status, page) = app
            .get(&format!("/api/v1/events?after={after}&limit={limit}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page_events = page["events"].as_array().expect("events");
        first.get_or_insert(page_events.len());
        if page_events.is_empty() {
            return (events, first.unwrap_or(0));
        }
        let weight: usize = page_events
            .iter()
            .map(|event| event["payload"].to_string().len())
            .sum();
        let heaviest = page_events
            .iter()
            .map(|event| event["payload"].to_string().len())
            .max()
            .unwrap_or(0);
        assert!(
            weight <= omoi_store::log::PAGE_BYTES + heaviest,
            "a page of {} events weighs {weight} bytes",
            page_events.len()
        );
        for event in page_events {
            let id = event["aggregate_id"].as_str().expect("an id").to_string();
            events.push((id, event["sequence"].as_i64().expect("a sequence")));
        }
        after = page["next_cursor"].as_str().expect("a cursor").to_string();
    }
}

/// A page of the global stream ends at its weight as well as at its count: with events of
/// a quarter of a megabyte each (a spec's plans), a page asked for 1,000 events holds
/// about 4 MiB of them, and following `next_cursor` hands over every event once, as
/// small pages do.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_the_global_stream_ends_at_its_weight_and_loses_nothing() {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let spec = app.spec_in_tasks(&project, "Large plans").await;
    let description = "x".repeat(omoi_domain::common::MAX_TEXT_CHARS);
    for round in 0..24 {
        let tasks: Vec<Value> = (1..=12)
            .map(|n| {
                json!({"key": format!("TSK-{n:03}"), "title": format!("Part {n}"),
                       "description": description, "task_type": "implement"})
            })
            .collect();
        let plan = json!({"tickets": [{"key": "TKT-001", "title": format!("Round {round}"),
                                       "tasks": tasks}]});
        let (status, body) = app.put(&format!("/api/v1/specs/{spec}/plan"), plan).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let (by_weight, first_page) = stream_pages(&app, 1000).await;
    let (by_count, _) = stream_pages(&app, 7).await;
    assert!(by_count.len() > 24, "{} events", by_count.len());
    assert!(
        first_page < by_count.len(),
        "the first page held all {first_page} events"
    );
    assert_eq!(by_weight, by_count, "every event once, in the same order");
    let distinct: HashSet<&(String, i64)> = by_weight.iter().collect();
    assert_eq!(distinct.len(), by_weight.len());
}

/// A transaction that wrote before it read an aggregate (a process manager deciding one
/// effect after another) may not append after an event a younger transaction committed
/// meanwhile: the log orders by transaction id, so its event would be read before the one
/// it follows. The append is refused as a conflict, and nothing of it is written.
#[tokio::test(flavor = "multi_thread")]
async fn an_append_is_never_ordered_before_the_event_it_follows() {
    use chrono::Utc;
    use omoi_domain::billing::{BillingAccount, BillingCommand, BillingEvent, Plans};
    use omoi_store::append::{AppendError, Rows};
    use omoi_store::bus::RetryPolicy;
    use omoi_store::CommandBus;
    use omoi_testing::TestDatabase;
    use std::collections::HashMap;

    let database = TestDatabase::create().await.expect("a database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let context = CommandContext::new(Actor::System("test"), "order");
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let mut unlimited = Plans::default();
    for plan in &mut unlimited.plans {
        plan.monthly_workflows = None;
    }
    let start = |organization_id: Uuid| BillingCommand::StartWorkflow {
        organization_id,
        spec_id: Uuid::now_v7(),
        plans: unlimited.clone(),
        at: Utc::now(),
    };
    let started = |organization_id: Uuid| BillingEvent::WorkflowStarted {
        organization_id,
        spec_id: Uuid::now_v7(),
        credits_spent_cents: 0,
        at: Utc::now(),
    };
    bus.execute::<BillingAccount>(&second.to_string(), start(second), &context)
        .await
        .expect("the second account's first event");

    // The older transaction writes first, so it holds its transaction id from now on.
    let mut older = database.pool.begin().await.expect("a transaction");
    let mut rows = Rows::new();
    rows.push::<BillingAccount>(&first.to_string(), 0, &[started(first)], &HashMap::new())
        .expect("a row");
    rows.insert(&mut *older).await.expect("the older write");
    // A younger transaction appends the second account's second event and commits.
    bus.execute::<BillingAccount>(&second.to_string(), start(second), &context)
        .await
        .expect("the younger append");
    // The older one, having read that, would append the third after it.
    let mut rows = Rows::new();
    rows.push::<BillingAccount>(&second.to_string(), 2, &[started(second)], &HashMap::new())
        .expect("a row");
    let refused = rows.insert(&mut *older).await;
    assert!(
        matches!(refused, Err(AppendError::Conflict)),
        "appended behind the event it follows: {refused:?}"
    );
    older.commit().await.expect("the older commit");

    // A fresh transaction appends it in its place.
    rows.insert(&database.pool)
        .await
        .expect("the append retried");
    let sequences: Vec<i64> = sqlx::query_scalar(
        "select sequence from events where aggregate_id = $1
          order by transaction_id, global_position",
    )
    .bind(second.to_string())
    .fetch_all(&database.pool)
    .await
    .expect("the second account's events");
    assert_eq!(sequences, [1, 2, 3], "the log's order is the sequence's");
}

/// What a failed statement means is read from PostgreSQL's own errors: a deadlock with
/// another writer is a conflict, which the bus decides again (the transaction was rolled
/// back whole), and a connection the server ended is the database away (503), not an
/// internal error (500).
#[tokio::test(flavor = "multi_thread")]
async fn a_deadlock_is_a_conflict_and_an_ended_connection_is_the_database_away() {
    use omoi_store::append::AppendError;
    use omoi_store::db::{is_unavailable, lost_to_another_transaction};

    let app = spawn_app().await;
    let pool = &app.database.pool;
    // Two transactions take two locks in opposite orders: the server ends one of them.
    let (one, two) = (
        Uuid::new_v4().as_u64_pair().0 as i64,
        Uuid::new_v4().as_u64_pair().0 as i64,
    );
    let mut first = pool.begin().await.expect("a transaction");
    let mut second = pool.begin().await.expect("a transaction");
    let lock = "select pg_advisory_xact_lock($1)";
    sqlx::query(lock)
        .bind(one)
        .execute(&mut *first)
        .await
        .expect("the first lock");
    sqlx::query(lock)
        .bind(two)
        .execute(&mut *second)
        .await
        .expect("the second lock");
    let (crossed_first, crossed_second) = tokio::join!(
        sqlx::query(lock).bind(two).execute(&mut *first),
        sqlx::query(lock).bind(one).execute(&mut *second),
    );
    let deadlock = [crossed_first.err(), crossed_second.err()]
        .into_iter()
        .flatten()
        .next()
        .expect("one transaction ended by the deadlock");
    assert!(lost_to_another_transaction(&deadlock), "{deadlock}");
    assert!(!is_unavailable(&deadlock), "{deadlock}");
    assert!(
        matches!(AppendError::from(deadlock), AppendError::Conflict),
        "a deadlock on an append is a conflict"
    );
    drop((first, second));

    // A connection the server ends (an administrator, a shutdown): the database is away.
    let mut ended = pool.acquire().await.expect("a connection");
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut *ended)
        .await
        .expect("its backend");
    let terminated: bool = sqlx::query_scalar("select pg_terminate_backend($1, 10000)")
        .bind(pid)
        .fetch_one(pool)
        .await
        .expect("terminated");
    assert!(terminated);
    let away = sqlx::query("select 1")
        .execute(&mut *ended)
        .await
        .expect_err("the connection was ended");
    assert!(is_unavailable(&away), "{away:?}");
    assert!(!lost_to_another_transaction(&away), "{away:?}");
    assert!(
        matches!(AppendError::from(away), AppendError::Unavailable(_)),
        "an append on an ended connection: unavailable"
    );
}

/// A listener for other processes' commits whose connection the server ended wakes its
/// readers when it connects again: what was announced in between is lost with the
/// connection, and the readers must look rather than wait for their next poll.
#[tokio::test(flavor = "multi_thread")]
async fn a_listener_that_lost_its_connection_wakes_its_readers_on_reconnecting() {
    use omoi_store::wakeup::{listen, CHANNEL};

    let app = spawn_app().await;
    let (wake, mut woken) = tokio::sync::watch::channel(0_u64);
    // Named, to tell its session from the server's own listeners.
    let options = app
        .database
        .options
        .clone()
        .application_name("the test's listener");
    let listener = tokio::spawn(listen(options, wake));
    let listening = "select pid from pg_stat_activity
                      where datname = current_database()
                        and application_name = 'the test''s listener'
                        and query ilike 'listen%'";
    let mut pid: Option<i32> = None;
    for _ in 0..100 {
        pid = sqlx::query_scalar(listening)
            .fetch_optional(&app.database.pool)
            .await
            .expect("the sessions");
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let pid = pid.expect("the listener's session");
    // An announcement wakes the readers.
    woken.mark_unchanged();
    sqlx::query("select pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&app.database.pool)
        .await
        .expect("announced");
    tokio::time::timeout(std::time::Duration::from_secs(10), woken.changed())
        .await
        .expect("woken by the announcement")
        .expect("the listener runs");
    // So does losing the connection, with no announcement at all.
    woken.mark_unchanged();
    let terminated: bool = sqlx::query_scalar("select pg_terminate_backend($1, 10000)")
        .bind(pid)
        .fetch_one(&app.database.pool)
        .await
        .expect("terminated");
    assert!(terminated);
    tokio::time::timeout(std::time::Duration::from_secs(10), woken.changed())
        .await
        .expect("woken on losing the connection")
        .expect("the listener runs");
    listener.abort();
}
