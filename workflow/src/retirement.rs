//! `subscription_retirement`: a subscription another plan supersedes is ended at Stripe —
//! the one held before a lifetime purchase or a change of plan, a second one paid for
//! beside the account's own (two checkouts opened before either was paid) — else Stripe
//! would go on charging every month for both; then it records that it did
//! (`SubscriptionRetired`). One still active (paid) at Stripe is ended with `prorate`:
//! Stripe credits the unused time of its period to the customer, as an item of the
//! customer's next invoice ([`end_at_stripe`]).
//!
//! The call is made inside the batch before anything is written, so the batch holds no
//! transaction id (nor any reader of the log) while Stripe answers. It is decided on the
//! account as it stands: once retired, the account has it to end no more, so a replay of
//! the event that superseded it (a rebuild, a retried batch after a crash between the call and
//! the commit) calls Stripe at most once more, which a subscription already ended answers
//! harmlessly (`DELETE` is idempotent; a 404 counts as ended). Stripe out of reach,
//! rate-limiting or failing on its side fails the batch as transient: it is applied again
//! until Stripe ends the subscription. A refusal no retry mends (a key without the
//! permission, none configured) is logged as an error and passed by, so that it holds no
//! other account's retirement behind it.

use cqrs_es::Aggregate;
use futures_util::future::BoxFuture;
use omoi_billing::stripe::StripeApi;
use omoi_billing::stripe::StripeError;
use omoi_domain::billing::{BillingAccount, BillingCommand, BillingEvent};
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

    /// Only an event that may supersede a subscription; a payload that does not read
    /// concerns it (its batch reports the event).
    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        self.reacts_to(event) && supersedes(event).unwrap_or(true)
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

/// Whether `event` (a Stripe event applied to an account) may have superseded a
/// subscription.
fn supersedes(event: &StoredEvent) -> Result<bool, ProjectionError> {
    let applied: BillingEvent = event
        .payload
        .decode()
        .map_err(|e| ProjectionError::payload(event, e))?;
    Ok(matches!(
        applied,
        BillingEvent::StripeEventApplied { effect, .. } if effect.may_supersede_a_subscription()
    ))
}

/// Ends `subscription_id` at Stripe as it stands there now: one still active (paid) with
/// its unused time credited (`prorate`), one pending its first payment, trialing, past due
/// or paused plainly (nothing paid to credit), one that has ended not at all. Decided on
/// Stripe's status, not the account's: the account may have heard of the subscription
/// only as pending when another took the plan, and its later reports are ignored.
async fn end_at_stripe(stripe: &StripeApi, subscription_id: &str) -> Result<(), StripeError> {
    match stripe
        .subscription_status(subscription_id)
        .await?
        .as_deref()
    {
        None | Some("canceled" | "incomplete_expired") => Ok(()),
        Some(status) => {
            let credit_unused_time = status == "active";
            stripe
                .cancel_subscription(subscription_id, credit_unused_time)
                .await
        }
    }
}

/// Ends at Stripe, then retires, every subscription each account has still to end:
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
        if !supersedes(event)? {
            continue;
        }
        let id = &event.aggregate_id;
        accounts.read(tx, event, [id.clone()]).await?;
        let account = accounts.state(id);
        let Some(organization_id) = account.organization_id else {
            continue;
        };
        for subscription_id in account.retiring_subscriptions.clone() {
            match end_at_stripe(stripe, &subscription_id).await {
                Ok(()) => {}
                Err(error) if error.is_transient() => {
                    return Err(ProjectionError::Transient(format!(
                        "Stripe did not end subscription {subscription_id}: {error}"
                    )))
                }
                // No retry mends it (a key without the permission, no key at all): the
                // batch goes on rather than holding every other account's behind it, and
                // the subscription stays listed as ending until an operator ends it at
                // Stripe or the account's next superseding event tries again.
                Err(error) => {
                    tracing::error!(organization = %organization_id, subscription = %subscription_id, %error, "Stripe refused to end a subscription another plan supersedes; end it in Stripe's dashboard");
                    continue;
                }
            }
            let retire = BillingCommand::RetireSubscription {
                organization_id,
                subscription_id: subscription_id.clone(),
                at: occurred_at(event),
            };
            let context = CommandContext::caused_by(Actor::System(NAME), event);
            accounts
                .decide(&mut effects, tx, event, id, retire, &context)
                .await?;
            tracing::info!(organization = %organization_id, subscription = %subscription_id, "a subscription another plan supersedes ended at Stripe");
        }
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

    /// Only a lifetime purchase or a second subscription concerns it; other Stripe events
    /// are passed by, and a payload that does not read is not (its batch must report it).
    #[test]
    fn only_an_event_that_may_supersede_a_subscription_concerns_it() {
        let manager = SubscriptionRetirement {
            stripe: Default::default(),
        };
        let lifetime = applied(Effect::LifetimePurchased { customer_id: None });
        assert!(manager.concerns("s", &lifetime));
        let second = applied(Effect::DuplicateSubscription {
            subscription_id: "sub_2".into(),
        });
        assert!(manager.concerns("s", &second));
        let canceled = Effect::SubscriptionCanceled {
            subscription_id: "sub_1".into(),
        };
        assert!(!manager.concerns("s", &applied(canceled)));
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
