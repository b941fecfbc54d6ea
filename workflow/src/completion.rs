//! `spec_completion`: an executing spec completes when every ticket of its approved plan
//! is `done`, whoever moved the last one there; its workflow is then finished in billing
//! (counted for good: archiving the completed spec gives nothing back).

use std::collections::HashMap;

use cqrs_es::Aggregate;
use futures_util::future::BoxFuture;
use omoi_domain::billing::{BillingAccount, BillingCommand};
use omoi_domain::spec::{Spec, SpecCommand, SpecPhase};
use omoi_domain::ticket::{Ticket, TicketEvent, TicketStatus};
use omoi_projections::ProjectionError;
use omoi_store::log::histories_of;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::aggregates::{of_type, specs_of_tickets, Aggregates, Effects};
use crate::execution::{created_by, last_approval};
use crate::ProcessManager;

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "spec_completion";

pub struct SpecCompletion;

impl ProcessManager for SpecCompletion {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Ticket" && event.event_type == "TicketStatusChanged"
    }

    /// Only a move to `done` may complete a spec: a page of other moves (a ticket's walk to
    /// `building`, a person's moves) is passed by without a transaction. A payload that
    /// does not read concerns it: its batch reports the event.
    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        self.reacts_to(event) && moved_to_done(event).unwrap_or(true)
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(tickets_moved(tx, events))
    }
}

/// Whether `event` (a ticket's status change) moved its ticket to `done`: the only move
/// that may complete a spec.
fn moved_to_done(event: &StoredEvent) -> Result<bool, ProjectionError> {
    let moved: TicketEvent = event
        .payload
        .decode()
        .map_err(|e| ProjectionError::payload(event, e))?;
    Ok(matches!(
        moved,
        TicketEvent::TicketStatusChanged {
            to: TicketStatus::Done,
            ..
        }
    ))
}

/// Completes the spec of every ticket the batch moved to `done` once every other ticket
/// of its plan is done too. The moved tickets, their specs and the specs' plan tickets are
/// read with one query each.
async fn tickets_moved(
    tx: &mut PgConnection,
    events: Vec<&StoredEvent>,
) -> Result<(), ProjectionError> {
    let mut done = Vec::new();
    for event in events {
        if moved_to_done(event)? {
            done.push(event);
        }
    }
    let Some(&first) = done.first() else {
        return Ok(());
    };
    // The moved tickets and their specs (named by the tickets' creations) with one query.
    let mut tickets = Aggregates::<Ticket>::new();
    let moved = tickets.missing(done.iter().map(|e| e.aggregate_id.clone()));
    let events = histories_of(
        &mut *tx,
        &[(Ticket::TYPE, &moved)],
        Some(specs_of_tickets(&moved)),
    )
    .await?;
    tickets.know_read(first, moved, &events)?;
    // Each spec's state and the approval its plan's tickets are named after.
    let mut specs = Aggregates::<Spec>::new();
    let mut plans = HashMap::new();
    for history in of_type(&events, Spec::TYPE).chunk_by(|a, b| a.aggregate_id == b.aggregate_id) {
        specs.know(first, history)?;
        let Some((spec_id, approval)) = history.first().zip(last_approval(history)) else {
            continue;
        };
        let Some(plan) = specs
            .get(&spec_id.aggregate_id)
            .and_then(|s| s.plan.as_ref())
        else {
            continue;
        };
        let planned: Vec<String> = plan
            .tickets
            .iter()
            .map(|t| created_by(&approval, &t.key).to_string())
            .collect();
        plans.insert(spec_id.aggregate_id.clone(), planned);
    }
    tickets
        .read(tx, first, plans.values().flatten().cloned())
        .await?;
    // A spec's billing account only when the spec completes (its history grows with
    // every workflow of the organization).
    let mut accounts = Aggregates::<BillingAccount>::new();
    let mut effects = Effects::default();
    for event in done {
        let Some(spec_id) = tickets.get(&event.aggregate_id).and_then(|t| t.spec_id) else {
            continue;
        };
        let id = spec_id.to_string();
        let (Some(spec), Some(planned)) = (specs.get(&id), plans.get(&id)) else {
            continue;
        };
        let all_done = planned.iter().all(|t| {
            tickets
                .get(t)
                .is_some_and(|t| t.status == TicketStatus::Done)
        });
        // Once completed, a second ticket of the same batch finds it so.
        if spec.phase != SpecPhase::Executing || !all_done {
            continue;
        }
        let organization_id = spec.organization_id;
        let at = crate::occurred_at(event);
        let context = CommandContext::caused_by(Actor::System(NAME), event);
        let complete = SpecCommand::CompleteSpec { at };
        specs
            .decide(&mut effects, tx, event, &id, complete, &context)
            .await?;
        if let Some(organization_id) = organization_id {
            let finish = BillingCommand::FinishWorkflow {
                organization_id,
                spec_id,
                at,
            };
            let account = organization_id.to_string();
            accounts
                .decide(&mut effects, tx, event, &account, finish, &context)
                .await?;
        }
        tracing::info!(spec = %spec_id, "every ticket of the plan is done: spec completed, workflow finished");
    }
    effects.append(tx, first).await
}

#[cfg(test)]
mod tests {
    use omoi_domain::ticket::{TicketEvent, TicketStatus};
    use omoi_store::StoredEvent;
    use serde_json::json;

    use super::SpecCompletion;
    use crate::ProcessManager;

    fn ticket_event(event_type: &str, payload: serde_json::Value) -> StoredEvent {
        crate::ticket_event(event_type, payload, json!({}))
    }

    /// A page of moves that cannot complete a spec is passed by; a move to `done`, and a
    /// move whose payload does not read (its batch must report it), are not.
    #[test]
    fn only_a_move_to_done_concerns_it() {
        for from in TicketStatus::ALL {
            for to in TicketStatus::ALL {
                let moved = TicketEvent::TicketStatusChanged {
                    from,
                    to,
                    note: None,
                };
                let payload = serde_json::to_value(&moved).expect("it serializes");
                let event = ticket_event("TicketStatusChanged", payload);
                assert_eq!(
                    SpecCompletion.concerns("schema", &event),
                    to == TicketStatus::Done,
                    "{from:?} → {to:?}"
                );
            }
        }
        let unreadable = ticket_event("TicketStatusChanged", json!({"TicketStatusChanged": 7}));
        assert!(SpecCompletion.concerns("schema", &unreadable));
        let renamed = ticket_event("TicketRenamed", json!({"TicketRenamed": {"title": "x"}}));
        assert!(!SpecCompletion.concerns("schema", &renamed));
    }
}
