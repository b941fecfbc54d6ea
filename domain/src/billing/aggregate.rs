use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{BillingCommand, BillingError, BillingEvent, Effect, StripeChange};
use crate::common::{Scope, Scoped};

/// A plan tier; its limits and price live in the plans table of the configuration.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    #[default]
    Free,
    Pro,
    Team,
    Enterprise,
    Lifetime,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Self::Free,
        Self::Pro,
        Self::Team,
        Self::Enterprise,
        Self::Lifetime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Team => "team",
            Self::Enterprise => "enterprise",
            Self::Lifetime => "lifetime",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A subscription's status, as Stripe reports it (`unpaid` counts as past due,
/// `incomplete_expired` as canceled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    #[default]
    Active,
    Trialing,
    PastDue,
    Canceled,
    Paused,
    Incomplete,
}

impl SubscriptionStatus {
    pub fn from_stripe(status: &str) -> Option<Self> {
        Some(match status {
            "active" => Self::Active,
            "trialing" => Self::Trialing,
            "past_due" | "unpaid" => Self::PastDue,
            "canceled" | "incomplete_expired" => Self::Canceled,
            "paused" => Self::Paused,
            "incomplete" => Self::Incomplete,
            _ => return None,
        })
    }

    /// Whether the plan's limits apply (otherwise the free tier's do).
    pub fn grants_plan(self) -> bool {
        matches!(self, Self::Active | Self::Trialing | Self::PastDue)
    }

    /// Whether it is paid up: a plan granted and no payment failing.
    pub fn in_good_standing(self) -> bool {
        matches!(self, Self::Active | Self::Trialing)
    }
}

/// An organization's billing account: the fold of its events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct BillingAccount {
    pub organization_id: Option<Uuid>,
    pub tier: Tier,
    pub status: SubscriptionStatus,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub credits_cents: i64,
    /// A payment failed: from this instant (its grace over) the organization may read but
    /// not start work, until an invoice is paid.
    pub suspend_at: Option<DateTime<Utc>>,
    /// Workflows started in the usage period `usage_period` (see [`Self::workflows_used_at`]).
    pub workflows_used: u32,
    /// The start (Unix seconds) of the period `workflows_used` counts: the subscription's
    /// current period, or the calendar month (UTC) without one.
    pub usage_period: Option<i64>,
    /// Workflows started and neither finished nor given back, by spec: the credits each
    /// took and the usage period it was counted in.
    #[schema(value_type = Object)]
    pub open_workflows: std::collections::BTreeMap<Uuid, OpenWorkflow>,
    /// Stripe's time of the newest invoice event (paid or failed) applied.
    pub invoice_as_of: Option<i64>,
    /// Stripe's time of the newest subscription change applied.
    pub subscription_as_of: Option<i64>,
    /// Subscriptions the account is done with: ended (Stripe reported their deletion) or
    /// superseded by its plan — the one held before the lifetime plan, one paid for
    /// beside the account's own. Nothing reported of them later changes the account.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub closed_subscriptions: BTreeSet<String>,
    /// The superseded ones omoi has still to end at Stripe (`subscription_retirement`);
    /// each leaves with its `SubscriptionRetired`, or with Stripe's report of its end.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub retiring_subscriptions: BTreeSet<String>,
    /// Every Stripe event applied, so none applies twice.
    #[schema(value_type = Vec<String>)]
    pub stripe_events: BTreeSet<String>,
}

/// A workflow started and neither finished nor given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OpenWorkflow {
    pub credits_spent_cents: i64,
    /// The start (Unix seconds) of the usage period it was counted in: given back in a
    /// later period, it frees nothing of that period's quota.
    pub usage_period: i64,
}

impl BillingAccount {
    /// The start of the usage period `at` falls in: the subscription's period when `at` is
    /// within it; past its end while the subscription goes on, the next one, which starts
    /// where it ended (Stripe reports the renewal after the new period has begun: until
    /// then the quota has renewed once, on time — it used to fall back to the calendar
    /// month meanwhile, a second quota); otherwise the calendar month (so a free
    /// organization's quota renews monthly without any invoice).
    pub fn period_start_at(&self, at: DateTime<Utc>) -> i64 {
        let renews = self.stripe_subscription_id.is_some() && self.status.grants_plan();
        match (self.period_start, self.period_end) {
            (Some(start), Some(end)) if start <= at && at < end => start.timestamp(),
            // Within one period's length of its end: a renewal never reported (a webhook
            // misconfigured) falls back to the calendar month after that.
            (Some(start), Some(end)) if end <= at && at < end + (end - start) && renews => {
                end.timestamp()
            }
            _ => {
                use chrono::{Datelike, TimeZone};
                Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
                    .single()
                    .map_or(0, |month| month.timestamp())
            }
        }
    }

    /// The subscription the account holds, unless it was canceled.
    pub fn live_subscription(&self) -> Option<String> {
        self.stripe_subscription_id
            .clone()
            .filter(|_| self.status != SubscriptionStatus::Canceled)
    }

    /// Workflows counted in the usage period of `at`.
    pub fn workflows_used_at(&self, at: DateTime<Utc>) -> u32 {
        if self.usage_period == Some(self.period_start_at(at)) {
            self.workflows_used
        } else {
            0
        }
    }

    /// Whether the organization may start no work at `now`.
    pub fn is_suspended(&self, now: DateTime<Utc>) -> bool {
        self.suspend_at.is_some_and(|at| now >= at)
    }

    /// The tier whose limits apply now.
    pub fn effective_tier(&self) -> Tier {
        if self.tier == Tier::Lifetime || self.status.grants_plan() {
            self.tier
        } else {
            Tier::Free
        }
    }

    fn decide(&self, command: BillingCommand) -> Result<Vec<BillingEvent>, BillingError> {
        match command {
            BillingCommand::ApplyStripeEvent {
                organization_id,
                stripe_event_id,
                stripe_created,
                change,
                payment_grace_seconds,
                at,
            } => {
                self.ensure_organization(organization_id)?;
                if self.stripe_events.contains(&stripe_event_id) {
                    return Ok(Vec::new());
                }
                // The grace runs from the failure at Stripe, not from its delivery here: a
                // delivery Stripe retried for days (omoi down, or answering 503) does not
                // lengthen it. Never from later than now (a clock ahead of ours).
                let failed_at = DateTime::from_timestamp(stripe_created, 0)
                    .filter(|created| *created <= at)
                    .unwrap_or(at);
                let grace = chrono::Duration::seconds(payment_grace_seconds.max(0));
                let effect = self.effect_of(change, stripe_created, failed_at + grace)?;
                Ok(vec![BillingEvent::StripeEventApplied {
                    organization_id,
                    stripe_event_id,
                    stripe_created,
                    effect,
                    at,
                }])
            }
            BillingCommand::StartWorkflow {
                organization_id,
                spec_id,
                plans,
                at,
            } => {
                self.ensure_organization(organization_id)?;
                if self.is_suspended(at) {
                    return Err(BillingError::Suspended);
                }
                let tier = self.effective_tier();
                let quota = plans.of(tier).monthly_workflows;
                let price_cents = plans.workflow_price_cents;
                let credits_spent_cents = match quota {
                    Some(quota) if self.workflows_used_at(at) >= quota => {
                        if self.credits_cents < price_cents {
                            return Err(BillingError::QuotaExceeded {
                                tier,
                                quota,
                                credits_cents: self.credits_cents,
                                price_cents,
                            });
                        }
                        price_cents
                    }
                    _ => 0,
                };
                Ok(vec![BillingEvent::WorkflowStarted {
                    organization_id,
                    spec_id,
                    credits_spent_cents,
                    at,
                }])
            }
            BillingCommand::CancelWorkflow {
                organization_id,
                spec_id,
                at,
            } => self.cancel_workflow(organization_id, spec_id, at),
            BillingCommand::FinishWorkflow {
                organization_id,
                spec_id,
                at,
            } => {
                self.ensure_organization(organization_id)?;
                Ok(match self.open_workflows.contains_key(&spec_id) {
                    true => vec![BillingEvent::WorkflowFinished {
                        organization_id,
                        spec_id,
                        at,
                    }],
                    false => Vec::new(),
                })
            }
            BillingCommand::RetireSubscription {
                organization_id,
                subscription_id,
                at,
            } => {
                self.ensure_organization(organization_id)?;
                Ok(
                    match self.retiring_subscriptions.contains(&subscription_id) {
                        true => vec![BillingEvent::SubscriptionRetired {
                            organization_id,
                            subscription_id,
                            at,
                        }],
                        false => Vec::new(),
                    },
                )
            }
        }
    }

    fn cancel_workflow(
        &self,
        organization_id: Uuid,
        spec_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Vec<BillingEvent>, BillingError> {
        self.ensure_organization(organization_id)?;
        Ok(match self.open_workflows.get(&spec_id) {
            Some(open) => vec![BillingEvent::WorkflowCancelled {
                organization_id,
                spec_id,
                credits_refunded_cents: open.credits_spent_cents,
                at,
            }],
            None => Vec::new(),
        })
    }

    fn ensure_organization(&self, organization_id: Uuid) -> Result<(), BillingError> {
        match self.organization_id {
            Some(own) if own != organization_id => Err(BillingError::WrongOrganization),
            _ => Ok(()),
        }
    }

    /// How an event about `subscription_id` stands against the account's own plan. An
    /// organization has one plan, and that is decided before the order of changes, so it
    /// holds whatever order Stripe's events arrive in:
    /// * a second subscription paid for beside a plan in good standing (two checkouts
    ///   opened before either was paid, or one paid after the lifetime plan) is
    ///   superseded — ended at Stripe;
    /// * a paid one becomes the plan of an account without one in good standing, however
    ///   old its report, and supersedes the subscription held before (pending its first
    ///   payment, past due or paused), which Stripe would otherwise go on billing;
    /// * one pending its payment changes nothing while the account holds another;
    /// * a change of plan — a checkout omoi made for an account subscribed already,
    ///   naming the subscription it changes the plan of (`changes_plan_of`) — takes the
    ///   plan once paid, superseding that subscription.
    fn standing(
        &self,
        subscription_id: &str,
        status: SubscriptionStatus,
        changes_plan_of: Option<&str>,
    ) -> Standing {
        if self.closed_subscriptions.contains(subscription_id) {
            return Standing::Decided(Effect::Ignored {
                reason: format!("{subscription_id} has ended or is superseded"),
            });
        }
        // The account's own, in Stripe's order of changes (reported canceled, it is
        // closed above).
        if self.stripe_subscription_id.as_deref() == Some(subscription_id) {
            return Standing::InOrder;
        }
        let held = self.live_subscription();
        let grants_plan = status.grants_plan();
        let changing_held = held.is_some() && changes_plan_of == held.as_deref();
        let plan_in_good_standing = self.tier == Tier::Lifetime
            || (held.is_some() && self.status.in_good_standing() && !changing_held);
        match (plan_in_good_standing, grants_plan, held) {
            (true, true, _) => Standing::Decided(Effect::DuplicateSubscription {
                subscription_id: subscription_id.to_string(),
            }),
            (true, false, _) | (false, false, Some(_)) => Standing::Decided(Effect::Ignored {
                reason: format!(
                    "{subscription_id} grants no plan, and the account has a subscription"
                ),
            }),
            (false, true, held) => Standing::Takes { replaces: held },
            (false, false, None) => Standing::InOrder,
        }
    }

    /// Takes `superseded` (if any) out of the account's hands: omoi ends it at Stripe.
    fn retire_later(&mut self, superseded: Option<String>) {
        if let Some(superseded) = superseded {
            self.closed_subscriptions.insert(superseded.clone());
            self.retiring_subscriptions.insert(superseded);
        }
    }

    fn effect_of(
        &self,
        change: StripeChange,
        stripe_created: i64,
        suspend_at: DateTime<Utc>,
    ) -> Result<Effect, BillingError> {
        Ok(match change {
            StripeChange::SubscriptionCheckout {
                customer_id,
                subscription_id,
                tier,
                changes_plan_of,
            } => {
                // Paid: a completed checkout.
                let paid = SubscriptionStatus::Active;
                let standing = subscription_id.as_deref().map_or(Standing::InOrder, |id| {
                    self.standing(id, paid, changes_plan_of.as_deref())
                });
                let replaces = match standing {
                    Standing::Decided(effect) => return Ok(effect),
                    Standing::Takes { replaces } => Some(replaces),
                    Standing::InOrder => None,
                };
                if replaces.is_none()
                    && self
                        .subscription_as_of
                        .is_some_and(|seen| stripe_created < seen)
                {
                    return Ok(Effect::Ignored {
                        reason: "older than the subscription change already applied".into(),
                    });
                }
                if self.tier == Tier::Lifetime {
                    return Ok(Effect::Ignored {
                        reason: "the account has the lifetime plan".into(),
                    });
                }
                Effect::Subscribed {
                    tier,
                    customer_id,
                    subscription_id,
                    replaces: replaces.flatten(),
                }
            }
            StripeChange::LifetimePurchase { customer_id } => {
                Effect::LifetimePurchased { customer_id }
            }
            StripeChange::CreditPurchase {
                customer_id,
                amount_cents,
            } => {
                if amount_cents <= 0 {
                    return Err(BillingError::NonPositiveCredits);
                }
                Effect::CreditsAdded {
                    amount_cents,
                    customer_id,
                }
            }
            StripeChange::SubscriptionChanged {
                customer_id,
                subscription_id,
                tier,
                status,
                period_start,
                period_end,
                creation,
                changes_plan_of,
            } => {
                let standing = self.standing(&subscription_id, status, changes_plan_of.as_deref());
                let replaces = match standing {
                    Standing::Decided(effect) => return Ok(effect),
                    Standing::Takes { replaces } => Some(replaces),
                    Standing::InOrder => None,
                };
                // Stripe stamps events to the second: a subscription's creation as
                // `incomplete` (its first payment pending) and the change that completed
                // it (an update, the checkout) share one, and may come in either order.
                // The incomplete creation is the older.
                let known = self.stripe_subscription_id.as_deref() == Some(&subscription_id);
                let pending_creation = creation && status == SubscriptionStatus::Incomplete;
                if replaces.is_none()
                    && self.subscription_as_of.is_some_and(|seen| {
                        stripe_created < seen
                            || (pending_creation && known && stripe_created == seen)
                    })
                {
                    return Ok(Effect::Ignored {
                        reason: "older than the subscription change already applied".into(),
                    });
                }
                Effect::SubscriptionUpdated {
                    subscription_id,
                    customer_id,
                    tier: tier.unwrap_or(self.tier),
                    status,
                    period_start,
                    period_end,
                    replaces: replaces.flatten(),
                }
            }
            StripeChange::SubscriptionDeleted { subscription_id } => {
                // The end of another subscription (one superseded, one still pending
                // its payment) is not the end of the account's plan; it is remembered,
                // so that nothing reported of it later takes the plan.
                if self.stripe_subscription_id.as_deref() == Some(subscription_id.as_str()) {
                    Effect::SubscriptionCanceled { subscription_id }
                } else if self.closed_subscriptions.contains(&subscription_id)
                    && !self.retiring_subscriptions.contains(&subscription_id)
                {
                    Effect::Ignored {
                        reason: format!("{subscription_id} has ended or is superseded"),
                    }
                } else {
                    Effect::OtherSubscriptionEnded { subscription_id }
                }
            }
            // An invoice of no subscription (a one-off invoice of the same customer, sent
            // from Stripe's dashboard) neither suspends the plan when unpaid nor lifts a
            // suspension when paid.
            StripeChange::InvoicePaid {
                subscription_id: None,
            }
            | StripeChange::InvoicePaymentFailed {
                subscription_id: None,
            } => Effect::Ignored {
                reason: "an invoice of no subscription, not the account's plan".into(),
            },
            // An invoice of another subscription than the account's own — one superseded
            // (a retry of its payment), one pending its first payment — or of one that has
            // ended says nothing of the plan's.
            StripeChange::InvoicePaid {
                subscription_id: Some(other),
            }
            | StripeChange::InvoicePaymentFailed {
                subscription_id: Some(other),
            } if self.stripe_subscription_id.as_ref() != Some(&other)
                || self.closed_subscriptions.contains(&other) =>
            {
                Effect::Ignored {
                    reason: format!("an invoice of {other}, not the account's plan"),
                }
            }
            // A first payment failing (the subscription pending, never granting the plan)
            // suspends nothing: Stripe ends the subscription if it is not paid.
            StripeChange::InvoicePaymentFailed {
                subscription_id: Some(_),
            } if !self.status.grants_plan() => Effect::Ignored {
                reason: "a payment of a subscription that grants no plan failed".into(),
            },
            StripeChange::InvoicePaid { .. } | StripeChange::InvoicePaymentFailed { .. }
                if self.invoice_as_of.is_some_and(|seen| stripe_created < seen) =>
            {
                Effect::Ignored {
                    reason: "older than the invoice event already applied".into(),
                }
            }
            StripeChange::InvoicePaid { .. } => Effect::InvoicePaid,
            // A later failure does not postpone a suspension already due.
            StripeChange::InvoicePaymentFailed { .. } => Effect::PaymentFailed {
                suspend_at: self
                    .suspend_at
                    .map_or(suspend_at, |due| due.min(suspend_at)),
            },
        })
    }

    /// Nothing is owed any more as of Stripe's `stripe_created`: the suspension ends, and
    /// an invoice event older than that (a failure of the ended subscription, delivered
    /// late) is ignored as older than one applied.
    fn settle_invoices(&mut self, stripe_created: i64) {
        self.suspend_at = None;
        self.invoice_as_of = Some(
            self.invoice_as_of
                .map_or(stripe_created, |seen| seen.max(stripe_created)),
        );
    }

    fn apply_effect(&mut self, effect: Effect, stripe_created: i64) {
        match effect {
            Effect::Subscribed {
                tier,
                customer_id,
                subscription_id,
                replaces,
            } => {
                self.retire_later(replaces);
                self.subscription_as_of = Some(stripe_created);
                self.tier = tier;
                self.status = SubscriptionStatus::Active;
                self.stripe_customer_id = customer_id.or(self.stripe_customer_id.take());
                self.stripe_subscription_id =
                    subscription_id.or(self.stripe_subscription_id.take());
                // A plan paid for at checkout: no payment is owed any more.
                self.settle_invoices(stripe_created);
            }
            Effect::LifetimePurchased { customer_id } => {
                // The subscription held before is ended at Stripe (unless it has ended
                // already); the lifetime plan outlives it.
                self.retire_later(self.live_subscription());
                self.stripe_subscription_id = None;
                self.tier = Tier::Lifetime;
                self.status = SubscriptionStatus::Active;
                self.stripe_customer_id = customer_id.or(self.stripe_customer_id.take());
                self.period_end = None;
                // Paid for good: the subscription a failed invoice belonged to is retired.
                self.settle_invoices(stripe_created);
            }
            Effect::CreditsAdded {
                amount_cents,
                customer_id,
            } => {
                self.credits_cents = self.credits_cents.saturating_add(amount_cents);
                self.stripe_customer_id = customer_id.or(self.stripe_customer_id.take());
            }
            Effect::SubscriptionUpdated {
                subscription_id,
                customer_id,
                tier,
                status,
                period_start,
                period_end,
                replaces,
            } => {
                // A paid plan taking over from one past due: nothing is owed any more.
                if replaces.is_some() && status.in_good_standing() {
                    self.settle_invoices(stripe_created);
                }
                self.retire_later(replaces);
                // Canceled (`incomplete_expired` too) is final at Stripe: nothing reported
                // of it later brings it back.
                if status == SubscriptionStatus::Canceled {
                    self.closed_subscriptions.insert(subscription_id.clone());
                }
                self.stripe_subscription_id = Some(subscription_id);
                self.stripe_customer_id = customer_id.or(self.stripe_customer_id.take());
                self.tier = tier;
                self.status = status;
                self.period_start = period_start.or(self.period_start);
                self.period_end = period_end.or(self.period_end);
                self.subscription_as_of = Some(stripe_created);
            }
            Effect::SubscriptionCanceled { subscription_id } => {
                self.closed_subscriptions.insert(subscription_id);
                self.tier = Tier::Free;
                self.status = SubscriptionStatus::Canceled;
                self.stripe_subscription_id = None;
                self.subscription_as_of = Some(stripe_created);
                // The free plan owes nothing: a suspension for the ended subscription's
                // unpaid invoice would otherwise outlive it for good.
                self.settle_invoices(stripe_created);
            }
            Effect::InvoicePaid => {
                // Usage is counted per period already: a mid-period invoice (a retried
                // renewal, a proration) grants no second quota.
                self.invoice_as_of = Some(stripe_created);
                self.suspend_at = None;
                if self.status == SubscriptionStatus::PastDue {
                    self.status = SubscriptionStatus::Active;
                }
            }
            Effect::PaymentFailed { suspend_at } => {
                self.invoice_as_of = Some(stripe_created);
                self.suspend_at = Some(suspend_at);
                self.status = SubscriptionStatus::PastDue;
            }
            Effect::DuplicateSubscription { subscription_id } => {
                self.retire_later(Some(subscription_id));
            }
            Effect::OtherSubscriptionEnded { subscription_id } => {
                // Ended at Stripe (by omoi, or by hand after Stripe refused omoi): nothing
                // left to end.
                self.retiring_subscriptions.remove(&subscription_id);
                self.closed_subscriptions.insert(subscription_id);
            }
            Effect::Ignored { .. } => {}
        }
    }
}

/// How a Stripe report about a subscription stands against the account's own plan
/// ([`BillingAccount::standing`]).
#[derive(Debug, PartialEq)]
enum Standing {
    /// Settled before its order is considered: ignored, or superseded.
    Decided(Effect),
    /// A paid subscription while the account has no plan in good standing: applied
    /// whatever its order, superseding the subscription held before, if any.
    Takes { replaces: Option<String> },
    /// The account's own, or a pending one while the account holds none: applied unless
    /// older than the newest subscription change applied.
    InOrder,
}

impl Aggregate for BillingAccount {
    const TYPE: &'static str = "BillingAccount";
    type Command = BillingCommand;
    type Event = BillingEvent;
    type Error = BillingError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            BillingEvent::StripeEventApplied {
                organization_id,
                stripe_event_id,
                stripe_created,
                effect,
                ..
            } => {
                self.organization_id.get_or_insert(organization_id);
                self.stripe_events.insert(stripe_event_id);
                self.apply_effect(effect, stripe_created);
            }
            BillingEvent::WorkflowStarted {
                organization_id,
                spec_id,
                credits_spent_cents,
                at,
            } => {
                self.organization_id.get_or_insert(organization_id);
                let period = self.period_start_at(at);
                if self.usage_period != Some(period) {
                    self.usage_period = Some(period);
                    self.workflows_used = 0;
                }
                self.workflows_used = self.workflows_used.saturating_add(1);
                self.credits_cents -= credits_spent_cents;
                let open = OpenWorkflow {
                    credits_spent_cents,
                    usage_period: period,
                };
                self.open_workflows.insert(spec_id, open);
            }
            BillingEvent::WorkflowCancelled {
                spec_id,
                credits_refunded_cents,
                ..
            } => {
                // Its place in the quota comes back only within the period it took it.
                let counted_now = self
                    .open_workflows
                    .remove(&spec_id)
                    .is_some_and(|open| Some(open.usage_period) == self.usage_period);
                if counted_now {
                    self.workflows_used = self.workflows_used.saturating_sub(1);
                }
                self.credits_cents += credits_refunded_cents;
            }
            BillingEvent::SubscriptionRetired {
                subscription_id, ..
            } => {
                self.retiring_subscriptions.remove(&subscription_id);
            }
            BillingEvent::WorkflowFinished { spec_id, .. } => {
                self.open_workflows.remove(&spec_id);
            }
        }
    }
}

impl Scoped for BillingAccount {
    fn scope(&self) -> Option<Scope> {
        Some(Scope {
            organization_id: self.organization_id?,
            project_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{Plan, Plans, Tier};

    /// Plans where every tier has `quota` workflows a month, and one more costs
    /// `price_cents` in credits.
    fn plans(quota: Option<u32>, price_cents: i64) -> Plans {
        Plans {
            plans: Plans::default()
                .plans
                .into_iter()
                .map(|plan| Plan {
                    monthly_workflows: quota,
                    ..plan
                })
                .collect(),
            workflow_price_cents: price_cents,
        }
    }

    /// The quota is the one of the account's tier as it stands when the count is
    /// decided: a free account counts against the free plan's, not another tier's.
    #[test]
    fn the_quota_is_the_accounts_tiers_when_decided() {
        let mut table = plans(Some(50), 1_000);
        for plan in &mut table.plans {
            if plan.tier == Tier::Free {
                plan.monthly_workflows = Some(1);
            }
        }
        let mut account = BillingAccount::default();
        let start = |n: u128| BillingCommand::StartWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(n),
            plans: table.clone(),
            at: at(),
        };
        apply(&mut account, start(1));
        assert!(matches!(
            account.decide(start(2)),
            Err(BillingError::QuotaExceeded { quota: 1, .. })
        ));
    }

    fn org() -> Uuid {
        Uuid::from_u128(1)
    }

    /// `events` begins with a Stripe event recorded without effect.
    #[track_caller]
    fn assert_ignored(events: &[BillingEvent]) {
        assert!(
            matches!(
                events.first(),
                Some(BillingEvent::StripeEventApplied {
                    effect: Effect::Ignored { .. },
                    ..
                })
            ),
            "{events:?}"
        );
    }

    fn retiring(subscriptions: &[&str]) -> BTreeSet<String> {
        subscriptions.iter().map(|id| id.to_string()).collect()
    }

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("a time")
    }

    fn apply(account: &mut BillingAccount, command: BillingCommand) -> Vec<BillingEvent> {
        let events = account.decide(command).expect("accepted");
        for event in events.clone() {
            account.apply(event);
        }
        events
    }

    fn stripe(id: &str, created: i64, change: StripeChange) -> BillingCommand {
        BillingCommand::ApplyStripeEvent {
            organization_id: org(),
            stripe_event_id: id.into(),
            stripe_created: created,
            change,
            payment_grace_seconds: 0,
            at: at(),
        }
    }

    fn updated(status: SubscriptionStatus, tier: Tier) -> StripeChange {
        StripeChange::SubscriptionChanged {
            customer_id: Some("cus_1".into()),
            subscription_id: "sub_1".into(),
            tier: Some(tier),
            status,
            period_start: None,
            period_end: None,
            creation: false,
            changes_plan_of: None,
        }
    }

    /// An account on the Pro plan of subscription `sub_1`, as Stripe reported it at its
    /// second 0.
    fn subscribed() -> BillingAccount {
        let mut account = BillingAccount::default();
        apply(
            &mut account,
            stripe(
                "evt_sub_1",
                0,
                updated(SubscriptionStatus::Active, Tier::Pro),
            ),
        );
        account
    }

    fn invoice_paid(subscription: &str) -> StripeChange {
        StripeChange::InvoicePaid {
            subscription_id: Some(subscription.into()),
        }
    }

    fn invoice_failed(subscription: &str) -> StripeChange {
        StripeChange::InvoicePaymentFailed {
            subscription_id: Some(subscription.into()),
        }
    }

    /// A one-off invoice of the account's customer (no subscription) is not the plan's:
    /// unpaid, it suspends nothing; paid, it does not lift a suspension.
    #[test]
    fn an_invoice_of_no_subscription_changes_nothing() {
        let none = |paid: bool| match paid {
            true => StripeChange::InvoicePaid {
                subscription_id: None,
            },
            false => StripeChange::InvoicePaymentFailed {
                subscription_id: None,
            },
        };
        for mut account in [BillingAccount::default(), subscribed()] {
            let events = apply(&mut account, stripe("evt_none_failed", 1, none(false)));
            assert_ignored(&events);
            assert_eq!(account.suspend_at, None);
            assert_ne!(account.status, SubscriptionStatus::PastDue);
        }
        let mut account = subscribed();
        apply(
            &mut account,
            stripe("evt_failed", 1, invoice_failed("sub_1")),
        );
        assert!(account.is_suspended(at()));
        let events = apply(&mut account, stripe("evt_none_paid", 2, none(true)));
        assert_ignored(&events);
        assert!(
            account.is_suspended(at()),
            "a one-off invoice paid lifts nothing"
        );
    }

    #[test]
    fn a_stripe_event_applies_once() {
        let mut account = BillingAccount::default();
        let credits = StripeChange::CreditPurchase {
            customer_id: None,
            amount_cents: 5_000,
        };
        assert_eq!(
            apply(&mut account, stripe("evt_1", 10, credits.clone())).len(),
            1
        );
        assert!(apply(&mut account, stripe("evt_1", 10, credits)).is_empty());
        assert_eq!(account.credits_cents, 5_000);
    }

    #[test]
    fn an_older_subscription_update_does_not_roll_back() {
        let mut account = BillingAccount::default();
        apply(
            &mut account,
            stripe(
                "evt_new",
                200,
                updated(SubscriptionStatus::Active, Tier::Team),
            ),
        );
        let events = apply(
            &mut account,
            stripe(
                "evt_old",
                100,
                updated(SubscriptionStatus::PastDue, Tier::Pro),
            ),
        );
        assert_ignored(&events);
        assert_eq!(
            (account.tier, account.status),
            (Tier::Team, SubscriptionStatus::Active)
        );
        assert!(
            account.stripe_events.contains("evt_old"),
            "recorded all the same"
        );
    }

    #[test]
    fn the_quota_then_credits_then_refusal() {
        let mut account = BillingAccount::default();
        apply(
            &mut account,
            stripe(
                "evt_c",
                1,
                StripeChange::CreditPurchase {
                    customer_id: None,
                    amount_cents: 1_000,
                },
            ),
        );
        let start = |n: u128| BillingCommand::StartWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(n),
            plans: plans(Some(1), 1_000),
            at: at(),
        };
        apply(&mut account, start(1));
        apply(&mut account, start(2));
        assert_eq!(account.credits_cents, 0);
        assert_eq!(
            account.decide(start(3)),
            Err(BillingError::QuotaExceeded {
                tier: Tier::Free,
                quota: 1,
                credits_cents: 0,
                price_cents: 1_000
            })
        );
        // Credits bought later pay for the next one.
        let more = StripeChange::CreditPurchase {
            customer_id: None,
            amount_cents: 1_000,
        };
        apply(&mut account, stripe("evt_c2", 5, more));
        apply(&mut account, start(3));
    }

    /// A workflow of an earlier period given back frees nothing of the current period's
    /// quota (its credits still come back); one of the current period frees its place.
    #[test]
    fn a_workflow_given_back_frees_only_the_quota_of_its_own_period() {
        let mut account = BillingAccount::default();
        let january = DateTime::from_timestamp(1_769_558_400, 0).expect("2026-01-28");
        let february = DateTime::from_timestamp(1_769_990_400, 0).expect("2026-02-02");
        let start = |n: u128, at: DateTime<Utc>| BillingCommand::StartWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(n),
            plans: plans(Some(1), 1_000),
            at,
        };
        let cancel = |n: u128, at: DateTime<Utc>| BillingCommand::CancelWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(n),
            at,
        };
        apply(&mut account, start(1, january));
        apply(&mut account, start(2, february));
        assert_eq!(account.workflows_used_at(february), 1);
        assert!(
            account.decide(start(3, february)).is_err(),
            "February's one is used"
        );

        apply(&mut account, cancel(1, february));
        assert_eq!(
            account.workflows_used_at(february),
            1,
            "January's gives back none"
        );
        assert!(account.decide(start(3, february)).is_err());
        apply(&mut account, cancel(2, february));
        assert_eq!(account.workflows_used_at(february), 0);
        apply(&mut account, start(3, february));
    }

    /// A subscription's creation as `incomplete` and its first update stamped with the
    /// same second: the creation, coming second, does not put the account back to
    /// `incomplete`; a creation of the same second as a change of another subscription
    /// (once the first ended) still applies.
    #[test]
    fn a_creation_stamped_with_its_updates_second_does_not_roll_it_back() {
        let mut account = BillingAccount::default();
        apply(
            &mut account,
            stripe(
                "evt_up",
                100,
                updated(SubscriptionStatus::Active, Tier::Pro),
            ),
        );
        let creation = |subscription: &str| StripeChange::SubscriptionChanged {
            customer_id: Some("cus_1".into()),
            subscription_id: subscription.into(),
            tier: Some(Tier::Pro),
            status: SubscriptionStatus::Incomplete,
            period_start: None,
            period_end: None,
            creation: true,
            changes_plan_of: None,
        };
        let events = apply(&mut account, stripe("evt_created", 100, creation("sub_1")));
        assert_ignored(&events);
        assert_eq!(account.status, SubscriptionStatus::Active);
        // An update of the same second still applies (no order between two updates is
        // known), and so does another subscription's creation.
        apply(
            &mut account,
            stripe(
                "evt_up2",
                100,
                updated(SubscriptionStatus::Canceled, Tier::Pro),
            ),
        );
        assert_eq!(account.status, SubscriptionStatus::Canceled);
        apply(&mut account, stripe("evt_other", 100, creation("sub_2")));
        assert_eq!(
            (account.status, account.stripe_subscription_id.as_deref()),
            (SubscriptionStatus::Incomplete, Some("sub_2"))
        );
    }

    /// The lifetime plan outlives the subscription held before it: its end, or a late
    /// subscription checkout, leaves the account lifetime.
    #[test]
    fn the_lifetime_plan_outlives_the_subscription_held_before_it() {
        let mut account = BillingAccount::default();
        apply(
            &mut account,
            stripe(
                "evt_sub",
                10,
                updated(SubscriptionStatus::Active, Tier::Pro),
            ),
        );
        apply(
            &mut account,
            stripe(
                "evt_life",
                20,
                StripeChange::LifetimePurchase {
                    customer_id: Some("cus_1".into()),
                },
            ),
        );
        let ended = StripeChange::SubscriptionDeleted {
            subscription_id: "sub_1".into(),
        };
        apply(&mut account, stripe("evt_end", 30, ended));
        let late_checkout = StripeChange::SubscriptionCheckout {
            customer_id: Some("cus_1".into()),
            subscription_id: Some("sub_2".into()),
            tier: Tier::Team,
            changes_plan_of: None,
        };
        apply(&mut account, stripe("evt_late", 40, late_checkout));
        assert_eq!(
            (account.tier, account.status),
            (Tier::Lifetime, SubscriptionStatus::Active)
        );
    }

    /// The subscription a lifetime purchase superseded is retired once, and only that
    /// one: no other, and none before it was superseded.
    #[test]
    fn only_a_superseded_subscription_is_retired_and_once() {
        let retire = |subscription: &str| BillingCommand::RetireSubscription {
            organization_id: org(),
            subscription_id: subscription.into(),
            at: at(),
        };
        let mut account = BillingAccount::default();
        apply(
            &mut account,
            stripe(
                "evt_sub",
                10,
                updated(SubscriptionStatus::Active, Tier::Pro),
            ),
        );
        assert!(
            apply(&mut account, retire("sub_1")).is_empty(),
            "still the plan"
        );
        apply(
            &mut account,
            stripe(
                "evt_life",
                20,
                StripeChange::LifetimePurchase { customer_id: None },
            ),
        );
        assert_eq!(account.stripe_subscription_id, None);
        assert_eq!(account.retiring_subscriptions, retiring(&["sub_1"]));
        assert!(apply(&mut account, retire("sub_other")).is_empty());
        let retired = apply(&mut account, retire("sub_1"));
        assert!(matches!(
            retired.as_slice(),
            [BillingEvent::SubscriptionRetired { subscription_id, .. }] if subscription_id == "sub_1"
        ));
        assert!(account.retiring_subscriptions.is_empty());
        assert!(apply(&mut account, retire("sub_1")).is_empty());
        assert_eq!(account.tier, Tier::Lifetime);
    }

    /// What Stripe reports of one subscription of a checkout: its creation pending the
    /// payment, its update once paid, the checkout completed.
    #[derive(Debug, Clone, Copy)]
    enum Report {
        Created,
        Paid,
        CheckoutCompleted,
    }

    fn report(subscription: &str, report: Report, tier: Tier) -> StripeChange {
        let changed = |status, creation| StripeChange::SubscriptionChanged {
            customer_id: Some("cus_1".into()),
            subscription_id: subscription.into(),
            tier: Some(tier),
            status,
            period_start: None,
            period_end: None,
            creation,
            changes_plan_of: None,
        };
        match report {
            Report::Created => changed(SubscriptionStatus::Incomplete, true),
            Report::Paid => changed(SubscriptionStatus::Active, false),
            Report::CheckoutCompleted => StripeChange::SubscriptionCheckout {
                customer_id: Some("cus_1".into()),
                subscription_id: Some(subscription.into()),
                tier,
                changes_plan_of: None,
            },
        }
    }

    /// Two plan checkouts opened before either was paid, both paid: the first paid stays
    /// the plan; the second is superseded (to be ended at Stripe), and nothing Stripe
    /// then reports of it changes the plan — its end neither.
    #[test]
    fn a_second_subscription_paid_for_is_superseded_and_the_plan_stays() {
        let mut account = BillingAccount::default();
        let mut n = 0;
        let mut deliver = |account: &mut BillingAccount, change: StripeChange| {
            n += 1;
            apply(account, stripe(&format!("evt_{n}"), 100 + n, change))
        };
        deliver(&mut account, report("sub_pro", Report::Created, Tier::Pro));
        deliver(
            &mut account,
            report("sub_team", Report::Created, Tier::Team),
        );
        deliver(&mut account, report("sub_pro", Report::Paid, Tier::Pro));
        let pending = deliver(
            &mut account,
            report("sub_team", Report::Created, Tier::Team),
        );
        assert_ignored(&pending);
        let paid = deliver(&mut account, report("sub_team", Report::Paid, Tier::Team));
        assert!(matches!(
            &paid[0],
            BillingEvent::StripeEventApplied { effect: Effect::DuplicateSubscription { subscription_id, .. }, .. }
                if subscription_id == "sub_team"
        ));
        let late = report("sub_team", Report::CheckoutCompleted, Tier::Team);
        let ignored = deliver(&mut account, late);
        assert_ignored(&ignored);
        deliver(
            &mut account,
            report("sub_pro", Report::CheckoutCompleted, Tier::Pro),
        );
        assert_eq!(account.retiring_subscriptions, retiring(&["sub_team"]));
        // Its end, reported (omoi's doing, or an operator's by hand): nothing left to end,
        // and the plan stays.
        let ended = StripeChange::SubscriptionDeleted {
            subscription_id: "sub_team".into(),
        };
        let events = deliver(&mut account, ended);
        assert!(matches!(
            &events[0],
            BillingEvent::StripeEventApplied {
                effect: Effect::OtherSubscriptionEnded { .. },
                ..
            }
        ));
        assert!(account.retiring_subscriptions.is_empty());
        assert_eq!(
            (
                account.tier,
                account.status,
                account.stripe_subscription_id.as_deref()
            ),
            (Tier::Pro, SubscriptionStatus::Active, Some("sub_pro"))
        );
    }

    /// A change of plan: the checkout (and its subscription) names the subscription it
    /// changes the plan of; pending, it changes nothing; paid, it takes the plan and
    /// supersedes that one. Naming another subscription than the account's own (one
    /// superseded since) makes it a second plan, superseded itself.
    #[test]
    fn a_change_of_plan_supersedes_the_subscription_it_names_once_paid() {
        let mut account = BillingAccount::default();
        apply(
            &mut account,
            stripe("evt_pro", 10, report("sub_1", Report::Paid, Tier::Pro)),
        );
        let change =
            |subscription: &str, what, names: &str| match report(subscription, what, Tier::Team) {
                StripeChange::SubscriptionChanged {
                    customer_id,
                    subscription_id,
                    tier,
                    status,
                    period_start,
                    period_end,
                    creation,
                    ..
                } => StripeChange::SubscriptionChanged {
                    customer_id,
                    subscription_id,
                    tier,
                    status,
                    period_start,
                    period_end,
                    creation,
                    changes_plan_of: Some(names.into()),
                },
                StripeChange::SubscriptionCheckout {
                    customer_id,
                    subscription_id,
                    tier,
                    ..
                } => StripeChange::SubscriptionCheckout {
                    customer_id,
                    subscription_id,
                    tier,
                    changes_plan_of: Some(names.into()),
                },
                other => other,
            };
        apply(
            &mut account,
            stripe("evt_created", 20, change("sub_2", Report::Created, "sub_1")),
        );
        assert_eq!(
            (account.tier, account.stripe_subscription_id.as_deref()),
            (Tier::Pro, Some("sub_1"))
        );
        let paid = apply(
            &mut account,
            stripe(
                "evt_paid",
                21,
                change("sub_2", Report::CheckoutCompleted, "sub_1"),
            ),
        );
        assert!(matches!(
            &paid[0],
            BillingEvent::StripeEventApplied { effect: Effect::Subscribed { replaces: Some(old), .. }, .. } if old == "sub_1"
        ));
        assert_eq!(
            (account.tier, account.stripe_subscription_id.as_deref()),
            (Tier::Team, Some("sub_2"))
        );
        assert_eq!(account.retiring_subscriptions, retiring(&["sub_1"]));
        // A second change naming the superseded subscription is a second plan.
        let stale = apply(
            &mut account,
            stripe("evt_stale", 22, change("sub_3", Report::Paid, "sub_1")),
        );
        assert!(matches!(
            &stale[0],
            BillingEvent::StripeEventApplied { effect: Effect::DuplicateSubscription { subscription_id, .. }, .. } if subscription_id == "sub_3"
        ));
        assert_eq!(account.stripe_subscription_id.as_deref(), Some("sub_2"));
    }

    /// Between a period's end and Stripe's report of the renewal, the quota has renewed
    /// once, with the new period: the workflows started meanwhile still count once the
    /// renewal arrives (before, the calendar month stood in for the period meanwhile, and
    /// the renewal then granted a second quota).
    #[test]
    fn the_quota_renews_once_at_the_periods_end_before_stripe_reports_it() {
        let day = |d: i64| DateTime::from_timestamp(1_800_000_000 + d * 86_400, 0).expect("a day");
        let period = |start: i64| StripeChange::SubscriptionChanged {
            customer_id: Some("cus_1".into()),
            subscription_id: "sub_1".into(),
            tier: Some(Tier::Pro),
            status: SubscriptionStatus::Active,
            period_start: Some(day(start)),
            period_end: Some(day(start + 30)),
            creation: false,
            changes_plan_of: None,
        };
        let start = |n: u128, at| BillingCommand::StartWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(n),
            plans: plans(Some(1), 1_000),
            at,
        };
        let mut account = BillingAccount::default();
        apply(&mut account, stripe("evt_period", 1, period(0)));
        apply(&mut account, start(1, day(10)));
        assert!(
            account.decide(start(2, day(20))).is_err(),
            "the period's one is used"
        );
        // The period ended; the renewal is not reported yet.
        apply(&mut account, start(2, day(30)));
        assert!(account.decide(start(3, day(31))).is_err(), "renewed once");
        apply(&mut account, stripe("evt_renewed", 2, period(30)));
        assert_eq!(account.workflows_used_at(day(31)), 1);
        assert!(
            account.decide(start(3, day(31))).is_err(),
            "not a second time"
        );
        // Ended for good: the calendar month.
        let ended = StripeChange::SubscriptionDeleted {
            subscription_id: "sub_1".into(),
        };
        apply(&mut account, stripe("evt_end", 3, ended));
        assert_ne!(account.period_start_at(day(70)), day(60).timestamp());
    }

    /// A subscription reported canceled stays ended: a late report of it as active, or
    /// its late checkout, does not bring the plan back (nor is it ordered apart from the
    /// account's own changes).
    #[test]
    fn a_canceled_subscription_stays_ended_whatever_arrives_late() {
        let mut account = BillingAccount::default();
        let active = || updated(SubscriptionStatus::Active, Tier::Pro);
        apply(&mut account, stripe("evt_active", 100, active()));
        let canceled = updated(SubscriptionStatus::Canceled, Tier::Pro);
        apply(&mut account, stripe("evt_canceled", 300, canceled));
        let late_checkout = StripeChange::SubscriptionCheckout {
            customer_id: Some("cus_1".into()),
            subscription_id: Some("sub_1".into()),
            tier: Tier::Pro,
            changes_plan_of: None,
        };
        for (id, late) in [("evt_late", active()), ("evt_late_checkout", late_checkout)] {
            let events = apply(&mut account, stripe(id, 200, late));
            assert_ignored(&events);
        }
        assert_eq!(account.effective_tier(), Tier::Free);
    }

    /// An invoice of another subscription than the account's own — a second checkout's
    /// first payment failing, a superseded one's retry — changes nothing of the plan's
    /// standing; one of its own does.
    #[test]
    fn only_an_invoice_of_the_accounts_own_subscription_counts() {
        let mut account = BillingAccount::default();
        let active = updated(SubscriptionStatus::Active, Tier::Pro);
        apply(&mut account, stripe("evt_active", 10, active));
        let failed = |subscription: &str| StripeChange::InvoicePaymentFailed {
            subscription_id: Some(subscription.into()),
        };
        let events = apply(&mut account, stripe("evt_other", 11, failed("sub_2")));
        assert_ignored(&events);
        assert_eq!(account.status, SubscriptionStatus::Active);
        apply(&mut account, stripe("evt_own", 12, failed("sub_1")));
        assert_eq!(account.status, SubscriptionStatus::PastDue);

        // A free organization's first checkout, its card declined: the subscription never
        // granted the plan, so nothing is past due, nor suspended.
        let mut account = BillingAccount::default();
        let pending = report("sub_new", Report::Created, Tier::Pro);
        apply(&mut account, stripe("evt_created", 10, pending));
        let events = apply(&mut account, stripe("evt_declined", 11, failed("sub_new")));
        assert_ignored(&events);
        assert_eq!(
            (account.status, account.suspend_at, account.effective_tier()),
            (SubscriptionStatus::Incomplete, None, Tier::Free)
        );
    }

    /// A subscription Stripe reported canceled is not ended again by the lifetime plan.
    #[test]
    fn the_lifetime_plan_ends_no_subscription_that_ended_already() {
        let mut account = BillingAccount::default();
        let active = updated(SubscriptionStatus::Active, Tier::Pro);
        apply(&mut account, stripe("evt_sub", 10, active));
        let canceled = updated(SubscriptionStatus::Canceled, Tier::Pro);
        apply(&mut account, stripe("evt_end", 11, canceled));
        let lifetime = StripeChange::LifetimePurchase { customer_id: None };
        apply(&mut account, stripe("evt_life", 12, lifetime));
        assert!(account.retiring_subscriptions.is_empty());
    }

    /// A subscription checkout paid after the lifetime plan is superseded too: Stripe
    /// would otherwise charge for it every month beside the lifetime plan.
    #[test]
    fn a_subscription_paid_after_the_lifetime_plan_is_superseded() {
        let mut account = BillingAccount::default();
        let lifetime = StripeChange::LifetimePurchase { customer_id: None };
        apply(&mut account, stripe("evt_life", 10, lifetime));
        let late = report("sub_late", Report::CheckoutCompleted, Tier::Team);
        apply(&mut account, stripe("evt_late", 5, late));
        assert_eq!(account.tier, Tier::Lifetime);
        assert_eq!(account.retiring_subscriptions, retiring(&["sub_late"]));
    }

    proptest::proptest! {
        /// Two plan checkouts paid, Stripe's reports of both delivered in any order, each
        /// stamped with the second it happened in (a subscription is created pending its
        /// payment, then paid, its checkout completing in the same second): the account
        /// ends with one plan, a subscription that grants it, and the other subscription
        /// superseded — never both, never neither.
        #[test]
        fn two_subscriptions_paid_leave_one_plan_and_the_other_superseded(
            order in proptest::strategy::Strategy::prop_shuffle(proptest::strategy::Just((0..6).collect::<Vec<usize>>())),
            created in [0..3_i64, 0..3_i64],
            paid_after in [0..2_i64, 0..2_i64],
        ) {
            use proptest::prelude::*;
            let reports = [Report::Created, Report::Paid, Report::CheckoutCompleted];
            let subscriptions = ["sub_a", "sub_b"];
            let mut account = BillingAccount::default();
            for i in order {
                let (which, what) = (i / 3, reports[i % 3]);
                let stamp = 100 + created[which] + match what {
                    Report::Created => 0,
                    Report::Paid | Report::CheckoutCompleted => paid_after[which],
                };
                let change = report(subscriptions[which], what, Tier::Pro);
                apply(&mut account, stripe(&format!("evt_{i}"), stamp, change));
            }
            let held = account.stripe_subscription_id.clone().unwrap_or_default();
            prop_assert!(subscriptions.contains(&held.as_str()), "no plan held: {:?}", account);
            prop_assert_eq!(account.status, SubscriptionStatus::Active);
            let other = subscriptions.iter().find(|s| **s != held).copied().unwrap_or_default();
            let retiring: Vec<&String> = account.retiring_subscriptions.iter().collect();
            prop_assert_eq!(retiring, vec![other]);
        }
    }

    #[test]
    fn a_late_payment_failure_does_not_undo_a_later_payment() {
        let mut account = subscribed();
        apply(&mut account, stripe("evt_paid", 200, invoice_paid("sub_1")));
        let failed = stripe("evt_failed", 100, invoice_failed("sub_1"));
        let events = apply(&mut account, failed);
        assert_ignored(&events);
        assert_eq!(account.suspend_at, None);
    }

    #[test]
    fn a_failed_payment_suspends_until_an_invoice_is_paid() {
        let mut account = subscribed();
        apply(&mut account, stripe("evt_f", 1, invoice_failed("sub_1")));
        let start = BillingCommand::StartWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(1),
            plans: plans(None, 0),
            at: at(),
        };
        assert_eq!(account.decide(start.clone()), Err(BillingError::Suspended));
        apply(&mut account, stripe("evt_p", 2, invoice_paid("sub_1")));
        apply(&mut account, start);
    }

    /// Only a paid invoice ended a suspension: an account whose unpaid subscription
    /// Stripe then ended, or that bought the lifetime plan meanwhile, stayed suspended
    /// for good.
    #[test]
    fn a_suspension_ends_with_the_subscription_it_was_for_or_a_plan_paid_for() {
        let start = BillingCommand::StartWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(1),
            plans: plans(None, 0),
            at: at(),
        };
        let suspended = || {
            let mut account = BillingAccount::default();
            apply(
                &mut account,
                stripe("evt_1", 1, updated(SubscriptionStatus::Active, Tier::Pro)),
            );
            apply(&mut account, stripe("evt_f", 2, invoice_failed("sub_1")));
            assert_eq!(account.decide(start.clone()), Err(BillingError::Suspended));
            account
        };
        let ended = StripeChange::SubscriptionDeleted {
            subscription_id: "sub_1".into(),
        };
        let lifetime = StripeChange::LifetimePurchase {
            customer_id: Some("cus_1".into()),
        };
        let subscribed = StripeChange::SubscriptionCheckout {
            customer_id: Some("cus_1".into()),
            subscription_id: Some("sub_2".into()),
            tier: Tier::Team,
            changes_plan_of: None,
        };
        // The lifetime plan and the plan paid for supersede the unpaid subscription
        // (omoi ends it at Stripe); its end leaves nothing to end. `own`: the
        // subscription the account then holds, whose failures still count.
        for (change, tier, retiring, own) in [
            (ended, Tier::Free, None, None),
            (lifetime, Tier::Lifetime, Some("sub_1"), None),
            (subscribed, Tier::Team, Some("sub_1"), Some("sub_2")),
        ] {
            let mut account = suspended();
            apply(&mut account, stripe("evt_3", 3, change.clone()));
            assert_eq!(account.effective_tier(), tier, "{change:?}");
            let expected: Vec<&str> = retiring.into_iter().collect();
            assert_eq!(
                account.retiring_subscriptions,
                self::retiring(&expected),
                "{change:?}"
            );
            assert!(!account.is_suspended(at()), "{change:?}");
            assert!(account.decide(start.clone()).is_ok(), "{change:?}");
            // A failure of the ended subscription's invoice, delivered late or not,
            // changes nothing; one of the subscription held after it counts.
            apply(&mut account, stripe("evt_late", 2, invoice_failed("sub_1")));
            assert!(!account.is_suspended(at()), "late: {change:?}");
            apply(
                &mut account,
                stripe("evt_later", 4, invoice_failed("sub_1")),
            );
            assert!(!account.is_suspended(at()), "later, ended: {change:?}");
            if let Some(own) = own {
                apply(&mut account, stripe("evt_own", 5, invoice_failed(own)));
                assert!(account.is_suspended(at()), "later, own: {change:?}");
            }
        }
    }

    #[test]
    fn a_canceled_subscription_falls_back_to_free() {
        let mut account = BillingAccount::default();
        apply(
            &mut account,
            stripe("evt_1", 1, updated(SubscriptionStatus::Active, Tier::Pro)),
        );
        assert_eq!(account.effective_tier(), Tier::Pro);
        let other = StripeChange::SubscriptionDeleted {
            subscription_id: "sub_other".into(),
        };
        apply(&mut account, stripe("evt_2", 2, other));
        assert_eq!(
            account.tier,
            Tier::Pro,
            "another subscription's end changes nothing"
        );
        let own = StripeChange::SubscriptionDeleted {
            subscription_id: "sub_1".into(),
        };
        apply(&mut account, stripe("evt_3", 3, own));
        assert_eq!(account.effective_tier(), Tier::Free);
    }

    #[test]
    fn a_free_organizations_quota_renews_each_month() {
        let mut account = BillingAccount::default();
        let start = |n: u128, at| BillingCommand::StartWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(n),
            plans: plans(Some(1), 1_000),
            at,
        };
        let november = DateTime::parse_from_rfc3339("2026-11-30T23:00:00Z")
            .expect("a time")
            .with_timezone(&Utc);
        apply(&mut account, start(1, november));
        assert!(account.decide(start(2, november)).is_err());
        let december = november + chrono::Duration::hours(2);
        assert_eq!(account.workflows_used_at(december), 0);
        apply(&mut account, start(2, december));
        assert_eq!(account.workflows_used_at(december), 1);
    }

    #[test]
    fn a_failed_payment_suspends_only_after_its_grace() {
        let mut account = subscribed();
        let failed = BillingCommand::ApplyStripeEvent {
            organization_id: org(),
            stripe_event_id: "evt_f".into(),
            stripe_created: at().timestamp(),
            change: invoice_failed("sub_1"),
            payment_grace_seconds: 3_600,
            at: at(),
        };
        apply(&mut account, failed);
        assert_eq!(account.status, SubscriptionStatus::PastDue);
        assert!(!account.is_suspended(at()));
        assert!(account.is_suspended(at() + chrono::Duration::seconds(3_600)));
        let start = |when| BillingCommand::StartWorkflow {
            organization_id: org(),
            spec_id: Uuid::from_u128(9),
            plans: plans(None, 0),
            at: when,
        };
        assert!(account.decide(start(at())).is_ok(), "within the grace");
        assert_eq!(
            account.decide(start(at() + chrono::Duration::hours(2))),
            Err(BillingError::Suspended)
        );
    }

    /// The grace runs from the payment's failure at Stripe: delivered two days late (Stripe
    /// retried while omoi was away), it suspends two days sooner than its delivery says;
    /// an event dated after its delivery (a clock ahead) counts from the delivery.
    #[test]
    fn a_failed_payments_grace_runs_from_the_failure_not_from_its_delivery() {
        let grace = chrono::Duration::days(7);
        let failed = |created: DateTime<Utc>| BillingCommand::ApplyStripeEvent {
            organization_id: org(),
            stripe_event_id: "evt_f".into(),
            stripe_created: created.timestamp(),
            change: invoice_failed("sub_1"),
            payment_grace_seconds: grace.num_seconds(),
            at: at(),
        };
        for (created, due) in [
            (
                at() - chrono::Duration::days(2),
                at() + chrono::Duration::days(5),
            ),
            (at() + chrono::Duration::hours(1), at() + grace),
        ] {
            let mut account = subscribed();
            apply(&mut account, failed(created));
            assert_eq!(account.suspend_at, Some(due), "failed at {created}");
        }
    }

    #[test]
    fn a_finished_workflow_stays_counted_and_is_given_back_no_more() {
        let mut account = BillingAccount::default();
        let spec = Uuid::from_u128(9);
        apply(
            &mut account,
            BillingCommand::StartWorkflow {
                organization_id: org(),
                spec_id: spec,
                plans: plans(Some(5), 1_000),
                at: at(),
            },
        );
        let finish = BillingCommand::FinishWorkflow {
            organization_id: org(),
            spec_id: spec,
            at: at(),
        };
        assert_eq!(apply(&mut account, finish.clone()).len(), 1);
        assert_eq!(account.workflows_used, 1);
        // Finishing again, or cancelling afterwards, records nothing.
        assert_eq!(apply(&mut account, finish), vec![]);
        let cancel = BillingCommand::CancelWorkflow {
            organization_id: org(),
            spec_id: spec,
            at: at(),
        };
        assert_eq!(apply(&mut account, cancel), vec![]);
        assert_eq!(account.workflows_used, 1);
    }
}
