//! `subscription_retirement`: a lifetime purchase ends, at Stripe, the subscription the
//! account held before it — else Stripe would go on charging every month for a plan the
//! lifetime one replaced — and records that it did (`SubscriptionRetired`).
//!
//! The call is made inside the batch before anything is written, so the batch holds no
//! transaction id (nor any reader of the log) while Stripe answers. It is decided on the
//! account as it stands: once retired, the account holds the subscription no more, so a
//! replay of the purchase (a rebuild, a retried batch after a crash between the call and
//! the commit) calls Stripe at most once more, which a subscription already ended answers
//! harmlessly (`DELETE` is idempotent; a 404 counts as ended). Stripe out of reach, or
//! refusing, fails the batch as transient: it is applied again until Stripe ends the
//! subscription, with a warning each second while it fails.

use cqrs_es::Aggregate;
use futures_util::future::BoxFuture;
use omoi_billing::stripe::StripeApi;
use omoi_domain::billing::{BillingAccount, BillingCommand, BillingEvent, Effect, Tier};
use omoi_projections::ProjectionError;
use omoi_store::{Actor, CommandContext, StoredEvent};
use sqlx::PgConnection;

use crate::aggregates::{Aggregates, Effects};
use crate::{occurred_at, ProcessManager};

/// The process manager's name: its build in the catalog and its actor (`system:…`).
pub const NAME: &str = "subscription_retirement";

pub struct SubscriptionRetirement {
    pub stripe: StripeApi,
}

impl ProcessManager for SubscriptionRetirement {
    const NAME: &'static str = NAME;

    fn reacts_to(&self, event: &StoredEvent) -> bool {
        event.aggregate_type == BillingAccount::TYPE && event.event_type == "StripeEventApplied"
    }

    /// Only a lifetime purchase may retire a subscription; a payload that does not read
    /// concerns it (its batch reports the event).
    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        self.reacts_to(event) && lifetime_purchase(event).unwrap_or(true)
    }

    fn react<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        event: &'a StoredEvent,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        self.react_all(tx, schema, vec![event])
    }

    fn react_all<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        _schema: &'a str,
        events: Vec<&'a StoredEvent>,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(retire(&self.stripe, tx, events))
    }
}

/// Whether `event` (a Stripe event applied to an account) was a lifetime purchase.
fn lifetime_purchase(event: &StoredEvent) -> Result<bool, ProjectionError> {
    let applied: BillingEvent = event
        .payload
        .decode()
        .map_err(|e| ProjectionError::payload(event, e))?;
    Ok(matches!(
        applied,
        BillingEvent::StripeEventApplied {
            effect: Effect::LifetimePurchased { .. },
            ..
        }
    ))
}

/// Ends at Stripe, then retires, the subscription each purchasing account still holds:
/// every call first, every record appended at the end.
async fn retire(
    stripe: &StripeApi,
    tx: &mut PgConnection,
    events: Vec<&StoredEvent>,
) -> Result<(), ProjectionError> {
    let Some(&first) = events.first() else {
        return Ok(());
    };
    let mut accounts = Aggregates::<BillingAccount>::new();
    let mut effects = Effects::default();
    for event in events {
        if !lifetime_purchase(event)? {
            continue;
        }
        let id = &event.aggregate_id;
        accounts.read(tx, event, [id.clone()]).await?;
        let account = accounts.state(id);
        let (Tier::Lifetime, Some(subscription_id), Some(organization_id)) = (
            account.tier,
            account.stripe_subscription_id.clone(),
            account.organization_id,
        ) else {
            continue;
        };
        stripe
            .cancel_subscription(&subscription_id)
            .await
            .map_err(|e| {
                ProjectionError::Transient(format!(
                    "Stripe did not end subscription {subscription_id}: {e}"
                ))
            })?;
        let retire = BillingCommand::RetireSubscription {
            organization_id,
            subscription_id: subscription_id.clone(),
            at: occurred_at(event),
        };
        let context = CommandContext::caused_by(Actor::System(NAME), event);
        accounts
            .decide(&mut effects, tx, event, id, retire, &context)
            .await?;
        tracing::info!(organization = %organization_id, subscription = %subscription_id, "lifetime plan bought: the subscription it replaced ended at Stripe");
    }
    effects.append(tx, first).await
}

#[cfg(test)]
mod tests {
    use omoi_domain::billing::{BillingEvent, Effect};
    use serde_json::json;

    use super::SubscriptionRetirement;
    use crate::ProcessManager;

    fn applied(effect: Effect) -> omoi_store::StoredEvent {
        let payload = BillingEvent::StripeEventApplied {
            organization_id: uuid::Uuid::nil(),
            stripe_event_id: "evt_1".into(),
            stripe_created: 1,
            effect,
            at: chrono::Utc::now(),
        };
        omoi_store::StoredEvent {
            aggregate_type: "BillingAccount".into(),
            ..crate::ticket_event(
                "StripeEventApplied",
                serde_json::to_value(payload).expect("a payload"),
                json!({}),
            )
        }
    }

    /// Only a lifetime purchase concerns it; other Stripe events are passed by, and a
    /// payload that does not read is not (its batch must report it).
    #[test]
    fn only_a_lifetime_purchase_concerns_it() {
        let manager = SubscriptionRetirement {
            stripe: Default::default(),
        };
        let lifetime = applied(Effect::LifetimePurchased { customer_id: None });
        assert!(manager.concerns("s", &lifetime));
        assert!(!manager.concerns("s", &applied(Effect::InvoicePaid)));
        let unreadable = omoi_store::StoredEvent {
            aggregate_type: "BillingAccount".into(),
            ..crate::ticket_event("StripeEventApplied", json!({"Nonsense": 1}), json!({}))
        };
        assert!(manager.concerns("s", &unreadable));
        let ticket = crate::ticket_event("StripeEventApplied", json!({}), json!({}));
        assert!(!manager.concerns("s", &ticket));
    }
}
