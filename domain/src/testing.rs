//! Helpers shared by the aggregates' given/when/then tests.

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

/// A fixed instant so tests never depend on the wall clock.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
        .single()
        .expect("a valid fixed instant")
}

pub fn org_id() -> Uuid {
    Uuid::from_u128(0x0A)
}

pub fn project_id() -> Uuid {
    Uuid::from_u128(0x0B)
}

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime for domain tests");
}

/// Handles `command` against a copy of `state` the way cqrs-es does (the sink applies
/// each event as it is written) and returns the copy and the events written.
pub fn handle<A: Aggregate + Clone>(
    state: &A,
    command: A::Command,
    services: &A::Services,
) -> (A, Result<Vec<A::Event>, A::Error>) {
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut handled = state.clone();
            let sink = EventSink::default();
            let result = handled.handle(command, services, &sink).await;
            let events = sink.collect().await;
            (handled, result.map(|()| events))
        })
    })
}

/// The state obtained by applying `events` to a fresh aggregate.
pub fn fold<A: Aggregate>(events: &[A::Event]) -> A {
    let mut state = A::default();
    for event in events {
        state.apply(event.clone());
    }
    state
}
