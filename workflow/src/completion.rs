//! `spec_completion`: an executing spec completes when every ticket of its approved plan
//! is `done`, whoever moved the last one there; its workflow is then finished in billing
//! (counted for good: archiving the completed spec gives nothing back).

use futures_util::future::BoxFuture;
use omoi_domain::billing::{BillingAccount, BillingCommand};
use omoi_domain::spec::{Spec, SpecCommand, SpecPhase};
use omoi_domain::ticket::{Ticket, TicketEvent, TicketStatus};
use omoi_projections::ProjectionError;
use omoi_store::bus::execute_in;
use omoi_store::log::{aggregate_history, fold_until};
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::execution::{created_by, last_approval};
use crate::{load, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "spec_completion";

pub struct SpecCompletion;

impl ProcessManager for SpecCompletion {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Ticket" && event.event_type == "TicketStatusChanged"
    }

    fn react<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(ticket_moved(tx, event))
    }
}

/// Completes the ticket's spec when `event` moved the ticket to `done` and every other
/// ticket of the spec's plan is done too.
async fn ticket_moved(tx: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let moved: TicketEvent = serde_json::from_value(event.payload.clone())
        .map_err(|e| ProjectionError::payload(event, e))?;
    if !matches!(
        moved,
        TicketEvent::TicketStatusChanged {
            to: TicketStatus::Done,
            ..
        }
    ) {
        return Ok(());
    }
    let (ticket, _) = load::<Ticket>(tx, event, &event.aggregate_id).await?;
    let Some(spec_id) = ticket.spec_id else {
        return Ok(());
    };
    let spec_history = aggregate_history(&mut *tx, "Spec", &spec_id.to_string()).await?;
    let spec: Spec =
        fold_until(&spec_history, None).map_err(|e| ProjectionError::payload(event, e))?;
    let (SpecPhase::Executing, Some(plan)) = (spec.phase, spec.plan.as_ref()) else {
        return Ok(());
    };
    // The plan's tickets are named after the approval that created them.
    let Some(approval) = last_approval(&spec_history) else {
        return Ok(());
    };
    for planned in &plan.tickets {
        let id = created_by(&approval, &planned.key).to_string();
        let (ticket, _) = load::<Ticket>(tx, event, &id).await?;
        if ticket.status != TicketStatus::Done {
            return Ok(());
        }
    }
    let at = crate::occurred_at(event);
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    execute_in::<Spec>(
        tx,
        &spec_id.to_string(),
        SpecCommand::CompleteSpec { at },
        &context,
    )
    .await
    .map_err(|e| ProjectionError::payload(event, format!("completing spec {spec_id}: {e}")))?;
    if let Some(organization_id) = spec.organization_id {
        let finish = BillingCommand::FinishWorkflow {
            organization_id,
            spec_id,
            at,
        };
        execute_in::<BillingAccount>(tx, &organization_id.to_string(), finish, &context)
            .await
            .map_err(|e| {
                ProjectionError::payload(event, format!("finishing the workflow of {spec_id}: {e}"))
            })?;
    }
    tracing::info!(spec = %spec_id, "every ticket of the plan is done: spec completed, workflow finished");
    Ok(())
}
