use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Plans, SubscriptionStatus, Tier};

/// What a Stripe event asks of an account (decoded from the webhook by the API).
#[derive(Debug, Clone, PartialEq)]
pub enum StripeChange {
    /// `checkout.session.completed` of a subscription checkout.
    SubscriptionCheckout {
        customer_id: Option<String>,
        subscription_id: Option<String>,
        tier: Tier,
        /// A change of plan: the subscription this checkout's supersedes once paid.
        changes_plan_of: Option<String>,
    },
    /// `checkout.session.completed` of the lifetime plan.
    LifetimePurchase { customer_id: Option<String> },
    /// `checkout.session.completed` of prepaid credits.
    CreditPurchase {
        customer_id: Option<String>,
        amount_cents: i64,
    },
    /// `customer.subscription.created` / `.updated`.
    SubscriptionChanged {
        customer_id: Option<String>,
        subscription_id: String,
        /// From the subscription's metadata; `None` keeps the current tier.
        tier: Option<Tier>,
        status: SubscriptionStatus,
        period_start: Option<DateTime<Utc>>,
        period_end: Option<DateTime<Utc>>,
        /// `customer.subscription.created`: the subscription's first state (when
        /// `incomplete`, older than any change of it Stripe stamped with the same second).
        creation: bool,
        /// From the subscription's metadata, when a change of plan made it: the
        /// subscription it supersedes once paid.
        changes_plan_of: Option<String>,
    },
    /// `customer.subscription.deleted`.
    SubscriptionDeleted { subscription_id: String },
    /// `invoice.paid`: a suspension ends. `subscription_id`: the subscription the invoice
    /// bills, if any (an invoice of another than the account's own changes nothing).
    InvoicePaid { subscription_id: Option<String> },
    /// `invoice.payment_failed`: past due, and suspended once the grace has passed.
    InvoicePaymentFailed { subscription_id: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum BillingCommand {
    /// Applies one Stripe event (at most once per `stripe_event_id`).
    ApplyStripeEvent {
        organization_id: Uuid,
        stripe_event_id: String,
        /// The Stripe event's `created` (Unix seconds): orders subscription changes.
        stripe_created: i64,
        change: StripeChange,
        /// How long after a failed payment the account is suspended (dunning).
        payment_grace_seconds: i64,
        at: DateTime<Utc>,
    },
    /// Counts one workflow against the period's quota, or pays for it with credits. The
    /// quota is the monthly workflows of the account's tier in `plans` as the account
    /// stands when the command is decided (a change of tier committed meanwhile counts);
    /// `plans.workflow_price_cents` is what a workflow beyond it costs in credits.
    StartWorkflow {
        organization_id: Uuid,
        spec_id: Uuid,
        plans: Plans,
        at: DateTime<Utc>,
    },
    /// Gives back a workflow whose start failed after it was counted (its usage and any
    /// credits it took).
    CancelWorkflow {
        organization_id: Uuid,
        spec_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Closes a workflow whose spec completed: it stays counted, and can no longer be
    /// given back. Nothing happens for a workflow that is not open.
    FinishWorkflow {
        organization_id: Uuid,
        spec_id: Uuid,
        at: DateTime<Utc>,
    },
    /// Records that omoi ended at Stripe a subscription a plan paid for since replaced
    /// (else Stripe would go on charging for it). Nothing happens for a subscription the
    /// account is not retiring (one retired already, or never replaced).
    RetireSubscription {
        organization_id: Uuid,
        subscription_id: String,
        at: DateTime<Utc>,
    },
}
