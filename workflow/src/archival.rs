//! `spec_archival`: archiving an executing spec stops its work — every open task of its
//! plan is cancelled — and gives its workflow back to the organization's billing account
//! (its usage and any credits it took), as a workflow whose start failed is given back.

use futures_util::future::BoxFuture;
use omoi_domain::billing::{BillingAccount, BillingCommand};
use omoi_domain::spec::{Spec, SpecPhase};
use omoi_domain::task::{Task, TaskCommand};
use omoi_projections::ProjectionError;
use omoi_store::log::{aggregate_history, fold_until};
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::execution::{created_by, last_approval};
use crate::{effect, load, occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "spec_archival";

pub struct SpecArchival;

impl ProcessManager for SpecArchival {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == "Spec" && event.event_type == "SpecArchived"
    }

    fn react<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(archived(tx, event))
    }
}

async fn archived(tx: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let history = aggregate_history(&mut *tx, "Spec", &event.aggregate_id).await?;
    let spec: Spec = fold_until(&history, Some(event.sequence))
        .map_err(|e| ProjectionError::payload(event, e))?;
    let (Some(SpecPhase::Executing), Some(plan), Some(spec_id), Some(organization_id)) = (
        spec.phase_before_archive,
        spec.plan.as_ref(),
        spec.id,
        spec.organization_id,
    ) else {
        return Ok(());
    };
    let up_to_archival = history
        .iter()
        .position(|e| e.sequence > event.sequence)
        .unwrap_or(history.len());
    let Some(approval) = last_approval(&history[..up_to_archival]) else {
        return Ok(());
    };
    let at = occurred_at(event);
    let context = CommandContext::caused_by(Actor::System(NAME), event);
    for (_, planned) in plan.tasks() {
        let id = created_by(&approval, &planned.key).to_string();
        let (task, events) = load::<Task>(tx, event, &id).await?;
        if events == 0 || task.status.is_final() {
            continue;
        }
        let cancel = TaskCommand::CancelTask {
            reason: Some("its spec was archived".into()),
            at,
        };
        effect::<Task>(tx, event, &id, cancel, &context).await?;
    }
    let give_back = BillingCommand::CancelWorkflow {
        organization_id,
        spec_id,
        at,
    };
    let account = organization_id.to_string();
    effect::<BillingAccount>(tx, event, &account, give_back, &context).await?;
    tracing::info!(spec = %spec_id, "executing spec archived: its work stopped, its workflow given back");
    Ok(())
}
