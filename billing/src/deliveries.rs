//! Applying a verified Stripe delivery: find its organization, turn it into one command
//! on the organization's `BillingAccount` (which applies each Stripe event once), and
//! record the delivery with its outcome in `stripe_webhook_events`.
//!
//! A delivery is settled (answered 2xx by the API) only once its effect is durable; one
//! that cannot be applied yet is an error, so that Stripe retries it.

use chrono::{DateTime, Utc};
use omoi_domain::billing::{BillingAccount, BillingCommand, Effect};
use omoi_domain::organization::Organization;
use omoi_store::{Actor, CommandBus, CommandContext, CommandError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::webhook::Decoded;

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The account changed.
    Applied,
    /// The account had applied this Stripe event already.
    Duplicate,
    /// Recorded without effect: an older subscription change, another subscription.
    Ignored,
    /// A type omoi does not act on.
    Unhandled,
    /// The account refused it, or its organization does not exist: no retry can help.
    Rejected,
    /// It names no organization and its customer is still unknown an hour
    /// ([`UNRESOLVED_FOR_SECONDS`]) after its first delivery: not omoi's (a payment link or
    /// another product on the same Stripe account), since an omoi customer's link arrives
    /// beside it. Kept, settled.
    Unresolved,
}

/// How long after its first delivery an event naming no organization, of a customer not
/// linked yet, is answered 503 so that Stripe retries it (its customer's link — a
/// checkout's event — may arrive after it, also when Stripe delivers a backlog late and
/// out of order). Past that, no retry will resolve it: it is settled as
/// [`Outcome::Unresolved`], where Stripe would have retried it for three days, each
/// renewal of a foreign subscription again, and in the end disabled the endpoint.
pub const UNRESOLVED_FOR_SECONDS: i64 = 3_600;

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Unhandled => "unhandled",
            Self::Rejected => "rejected",
            Self::Unresolved => "unresolved",
        }
    }
}

/// Why a delivery is not settled yet; Stripe retries it.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{event} names no organization and its customer is not known yet")]
    OrganizationUnresolved { event: String },
    #[error("not applied: {0}")]
    NotApplied(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Applies `decoded` (verified; `payload` is its body) and records the delivery.
pub async fn deliver(
    bus: &CommandBus,
    pool: &PgPool,
    decoded: &Decoded,
    payload: &serde_json::Value,
    payment_grace_seconds: i64,
) -> Result<Outcome, DeliveryError> {
    let organization = match (decoded.organization_id, &decoded.customer_id) {
        (Some(id), _) => Some(id),
        (None, Some(customer)) => organization_of_customer(pool, customer).await?,
        (None, None) => None,
    };
    let Some(change) = decoded.change.clone() else {
        record(pool, decoded, organization, "unhandled", payload).await?;
        return Ok(Outcome::Unhandled);
    };
    let Some(organization_id) = organization else {
        let first_received =
            record(pool, decoded, None, Outcome::Unresolved.as_str(), payload).await?;
        if (Utc::now() - first_received).num_seconds() > UNRESOLVED_FOR_SECONDS {
            tracing::info!(event = %decoded.id, "stripe event of no organization omoi knows: settled");
            return Ok(Outcome::Unresolved);
        }
        return Err(DeliveryError::OrganizationUnresolved {
            event: decoded.id.clone(),
        });
    };
    let exists = bus
        .load::<Organization>(&organization_id.to_string())
        .await
        .map_err(|e| DeliveryError::NotApplied(e.to_string()))?
        .is_some();
    if !exists {
        // No retry can make it exist: settled, recorded, logged.
        tracing::warn!(event = %decoded.id, %organization_id, "stripe event for an unknown organization");
        record(pool, decoded, Some(organization_id), "rejected", payload).await?;
        return Ok(Outcome::Rejected);
    }
    if let Some(customer) = &decoded.customer_id {
        remember_customer(pool, customer, organization_id).await?;
    }
    let command = BillingCommand::ApplyStripeEvent {
        organization_id,
        stripe_event_id: decoded.id.clone(),
        stripe_created: decoded.created,
        change,
        payment_grace_seconds,
        at: Utc::now(),
    };
    let context = CommandContext::new(Actor::Stripe, format!("stripe:{}", decoded.id));
    let outcome = match bus
        .execute::<BillingAccount>(&organization_id.to_string(), command, &context)
        .await
    {
        Ok(committed) if committed.appended == 0 => Outcome::Duplicate,
        Ok(_) if was_ignored(pool, organization_id, &decoded.id).await => Outcome::Ignored,
        Ok(_) => Outcome::Applied,
        Err(CommandError::Domain(error)) => {
            tracing::warn!(event = %decoded.id, %error, "stripe event refused by the account");
            Outcome::Rejected
        }
        Err(CommandError::Refused(_)) => Outcome::Rejected,
        Err(error) => return Err(DeliveryError::NotApplied(error.to_string())),
    };
    record(
        pool,
        decoded,
        Some(organization_id),
        outcome.as_str(),
        payload,
    )
    .await?;
    Ok(outcome)
}

async fn organization_of_customer(pool: &PgPool, customer: &str) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("select organization_id from billing_customers where customer_id = $1")
        .bind(customer)
        .fetch_optional(pool)
        .await
}

async fn remember_customer(pool: &PgPool, customer: &str, organization: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "insert into billing_customers (customer_id, organization_id) values ($1, $2)
         on conflict (customer_id) do nothing",
    )
    .bind(customer)
    .bind(organization)
    .execute(pool)
    .await
    .map(drop)
}

/// Whether the account recorded `stripe_event_id` without effect (for the receipt).
async fn was_ignored(pool: &PgPool, organization_id: Uuid, stripe_event_id: &str) -> bool {
    let effect: Option<serde_json::Value> = sqlx::query_scalar(
        "select payload->'StripeEventApplied'->'effect' from events
          where aggregate_type = 'BillingAccount' and aggregate_id = $1
            and payload->'StripeEventApplied'->>'stripe_event_id' = $2",
    )
    .bind(organization_id.to_string())
    .bind(stripe_event_id)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten();
    effect
        .and_then(|e| serde_json::from_value::<Effect>(e).ok())
        .is_some_and(|e| matches!(e, Effect::Ignored { .. }))
}

/// Records a delivery (the first outcome that settled it stays; later deliveries count);
/// when it was first received.
async fn record(
    pool: &PgPool,
    decoded: &Decoded,
    organization_id: Option<Uuid>,
    outcome: &str,
    payload: &serde_json::Value,
) -> sqlx::Result<DateTime<Utc>> {
    sqlx::query_scalar(
        "insert into stripe_webhook_events
                (id, event_type, stripe_created, organization_id, outcome, payload)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (id) do update set
                deliveries = stripe_webhook_events.deliveries + 1,
                organization_id = coalesce(stripe_webhook_events.organization_id,
                                           excluded.organization_id),
                outcome = case when stripe_webhook_events.outcome = 'unresolved'
                               then excluded.outcome else stripe_webhook_events.outcome end
         returning received_at",
    )
    .bind(&decoded.id)
    .bind(&decoded.event_type)
    .bind(decoded.created)
    .bind(organization_id)
    .bind(outcome)
    .bind(payload)
    .fetch_one(pool)
    .await
}
