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
        /// The subscription held before (pending its first payment, past due, paused),
        /// which this one supersedes: omoi ends it at Stripe (`subscription_retirement`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
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
        /// As for [`Effect::Subscribed`]: the subscription held before, which this one,
        /// paid, supersedes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
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
    /// A subscription paid for beside the plan the account has (two checkouts opened
    /// before either was paid, or one paid after the lifetime plan): the account keeps its
    /// plan, and omoi ends this one at Stripe (`subscription_retirement`).
    DuplicateSubscription {
        subscription_id: String,
    },
    /// Stripe ended a subscription that is not the account's own (one superseded — by
    /// omoi, or by hand —, one pending its payment): remembered, so nothing reported of it
    /// later takes the plan, and nothing is left to end.
    OtherSubscriptionEnded {
        subscription_id: String,
    },
    /// Recorded, changing nothing: an older subscription change than one already
    /// applied, or an event about another subscription.
    Ignored {
        reason: String,
    },
}

impl Effect {
    /// Whether the account may have a subscription to end at Stripe after it: the one
    /// held before the lifetime plan or another plan paid for, or a second one paid for
    /// beside the plan.
    pub fn may_supersede_a_subscription(&self) -> bool {
        match self {
            Self::LifetimePurchased { .. } | Self::DuplicateSubscription { .. } => true,
            Self::Subscribed { replaces, .. } | Self::SubscriptionUpdated { replaces, .. } => {
                replaces.is_some()
            }
            _ => false,
        }
    }
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
    /// A subscription another plan supersedes (the one held before the lifetime plan, or
    /// one paid for beside the account's own) was ended at Stripe.
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
