use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{SubscriptionStatus, Tier};

/// What one Stripe event did to the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Effect {
    Subscribed {
        tier: Tier,
        customer_id: Option<String>,
        subscription_id: Option<String>,
    },
    LifetimePurchased {
        customer_id: Option<String>,
    },
    CreditsAdded {
        amount_cents: i64,
        customer_id: Option<String>,
    },
    SubscriptionUpdated {
        subscription_id: String,
        customer_id: Option<String>,
        tier: Tier,
        status: SubscriptionStatus,
        period_start: Option<DateTime<Utc>>,
        period_end: Option<DateTime<Utc>>,
    },
    /// The subscription ended; the account falls back to the free tier.
    SubscriptionCanceled {
        subscription_id: String,
    },
    InvoicePaid,
    /// Past due; suspended from `suspend_at` unless an invoice is paid first.
    PaymentFailed {
        suspend_at: DateTime<Utc>,
    },
    /// Recorded, changing nothing: an older subscription change than one already
    /// applied, or an event about another subscription.
    Ignored {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BillingEvent {
    StripeEventApplied {
        organization_id: Uuid,
        stripe_event_id: String,
        stripe_created: i64,
        effect: Effect,
        at: DateTime<Utc>,
    },
    WorkflowStarted {
        organization_id: Uuid,
        spec_id: Uuid,
        /// Paid from credits (beyond the quota), in cents; 0 within the quota.
        credits_spent_cents: i64,
        at: DateTime<Utc>,
    },
    WorkflowCancelled {
        organization_id: Uuid,
        spec_id: Uuid,
        credits_refunded_cents: i64,
        at: DateTime<Utc>,
    },
    /// The spec completed: the workflow is paid for and closed.
    WorkflowFinished {
        organization_id: Uuid,
        spec_id: Uuid,
        at: DateTime<Utc>,
    },
    /// The subscription held before a lifetime purchase was ended at Stripe.
    SubscriptionRetired {
        organization_id: Uuid,
        subscription_id: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for BillingEvent {
    fn event_type(&self) -> String {
        match self {
            Self::StripeEventApplied { .. } => "StripeEventApplied",
            Self::WorkflowStarted { .. } => "WorkflowStarted",
            Self::WorkflowCancelled { .. } => "WorkflowCancelled",
            Self::WorkflowFinished { .. } => "WorkflowFinished",
            Self::SubscriptionRetired { .. } => "SubscriptionRetired",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
