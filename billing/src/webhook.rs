//! Stripe webhooks: the signature checked on the raw body by `async-stripe-webhook` (with
//! every configured signing secret, so a rotation overlaps; any of several `v1=`
//! signatures; ±300 s), then the event decoded into a [`StripeChange`] for the
//! organization it concerns.
//!
//! The decoding is ours, reading only the fields omoi needs: the crate's typed parse is
//! pinned to one API version and refuses an object whose shape drifted (the period moved
//! to subscription items in 2025-03-31, for one), which must not turn a genuine, signed
//! event into a rejection.

use chrono::{DateTime, Utc};
use omoi_domain::billing::{StripeChange, SubscriptionStatus, Tier};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use stripe_webhook::{Webhook, WebhookError};
use uuid::Uuid;

/// Why a delivery is refused (4xx: a forged, stale or malformed request is not applied;
/// Stripe retries any non-2xx answer for days, and each retry is refused alike).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no Stripe webhook signing secret is configured")]
    NoSecret,
    #[error("the Stripe-Signature header is missing")]
    MissingSignature,
    #[error("the signature does not match the body")]
    BadSignature,
    #[error("the signature's timestamp is more than 300 s from now")]
    StaleTimestamp,
    #[error("the body is not a Stripe event: {0}")]
    Malformed(String),
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoSecret => "webhook_not_configured",
            Self::MissingSignature => "missing_signature",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::Malformed(_) => "malformed_event",
        }
    }
}

/// Checks `header` against the raw `payload` with any of `secrets`, at Unix time `now`.
pub fn verify(
    payload: &str,
    header: &str,
    secrets: &[SecretString],
    now: i64,
) -> Result<(), Rejection> {
    if secrets.is_empty() {
        return Err(Rejection::NoSecret);
    }
    let mut refusal = Rejection::BadSignature;
    for secret in secrets {
        match Webhook::construct_event_with_timestamp(payload, header, secret.expose_secret(), now)
        {
            Ok(_) => return Ok(()),
            Err(WebhookError::BadTimestamp(_)) => refusal = Rejection::StaleTimestamp,
            // The crate parses only after the signature and the timestamp passed: the
            // event is authentic; [`decode`] judges its shape.
            Err(WebhookError::BadParse(_)) => return Ok(()),
            Err(WebhookError::BadHeader(_)) => return Err(Rejection::BadSignature),
            Err(WebhookError::BadSignature | WebhookError::BadKey) => {}
        }
    }
    Err(refusal)
}

/// A verified Stripe event, decoded as far as omoi needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub id: String,
    pub event_type: String,
    /// Unix seconds.
    pub created: i64,
    /// From the object's metadata or the session's `client_reference_id`.
    pub organization_id: Option<Uuid>,
    /// The Stripe customer the object belongs to (to find the organization otherwise).
    pub customer_id: Option<String>,
    /// `None` for an event type omoi does not act on.
    pub change: Option<StripeChange>,
}

/// What `checkout.session.completed` bought, from the session's `metadata.purpose`.
pub const SUBSCRIPTION_CHECKOUT: &str = "subscription_checkout";
pub const LIFETIME_PURCHASE: &str = "lifetime_purchase";
pub const CREDIT_PURCHASE: &str = "credit_purchase";

fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        // An expanded object (`customer: {id: …}`).
        Value::Object(object) => object.get("id")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn time(value: &Value, key: &str) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(value.get(key)?.as_i64()?, 0)
}

/// The metadata of the object, or of the subscription an invoice is for.
fn metadata(object: &Value) -> Option<&Value> {
    [
        object.get("metadata"),
        object.pointer("/parent/subscription_details/metadata"),
        object.pointer("/subscription_details/metadata"),
    ]
    .into_iter()
    .flatten()
    .find(|m| m.get("organization_id").is_some())
}

/// The subscription an invoice bills: under `parent` since API 2025-03-31, at the top
/// before it.
fn invoice_subscription(invoice: &Value) -> Option<String> {
    invoice
        .pointer("/parent/subscription_details")
        .and_then(|details| text(details, "subscription"))
        .or_else(|| text(invoice, "subscription"))
}

/// Decodes a payload already verified by [`verify`].
pub fn decode(payload: &str) -> Result<Decoded, Rejection> {
    let event: Value =
        serde_json::from_str(payload).map_err(|e| Rejection::Malformed(e.to_string()))?;
    let field = |key: &str| {
        event
            .get(key)
            .ok_or_else(|| Rejection::Malformed(format!("no `{key}`")))
    };
    let id = field("id")?
        .as_str()
        .ok_or_else(|| Rejection::Malformed("`id` is not text".into()))?
        .to_string();
    let event_type = field("type")?
        .as_str()
        .ok_or_else(|| Rejection::Malformed("`type` is not text".into()))?
        .to_string();
    let created = field("created")?
        .as_i64()
        .ok_or_else(|| Rejection::Malformed("`created` is not a number".into()))?;
    let object = event
        .pointer("/data/object")
        .ok_or_else(|| Rejection::Malformed("no `data.object`".into()))?;
    let meta = metadata(object);
    let organization_id = meta
        .and_then(|m| text(m, "organization_id"))
        .or_else(|| text(object, "client_reference_id"))
        .and_then(|id| id.parse().ok());
    let customer_id = text(object, "customer");
    let change = change_of(&event_type, object, meta, customer_id.clone())?;
    Ok(Decoded {
        id,
        event_type,
        created,
        organization_id,
        customer_id,
        change,
    })
}

fn change_of(
    event_type: &str,
    object: &Value,
    meta: Option<&Value>,
    customer_id: Option<String>,
) -> Result<Option<StripeChange>, Rejection> {
    // What was bought is on the object's own metadata, whether or not it also names the
    // organization (a session may name it by `client_reference_id` alone).
    let meta = object.get("metadata").filter(|m| m.is_object()).or(meta);
    let tier = meta
        .and_then(|m| text(m, "tier"))
        .and_then(|t| Tier::parse(&t));
    let changes_plan_of = meta.and_then(|m| text(m, "changes_plan_of"));
    Ok(Some(match event_type {
        // A session paid by a delayed method completes unpaid; its payment arrives as
        // `checkout.session.async_payment_succeeded`, which grants it then.
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let paid = matches!(
                object.get("payment_status").and_then(Value::as_str),
                Some("paid" | "no_payment_required")
            );
            if !paid {
                return Ok(None);
            }
            let purpose = meta.and_then(|m| text(m, "purpose"));
            match purpose.as_deref() {
                Some(CREDIT_PURCHASE) => {
                    let amount_cents = meta
                        .and_then(|m| text(m, "credits_cents"))
                        .and_then(|c| c.parse().ok())
                        .or_else(|| object.get("amount_total").and_then(Value::as_i64))
                        .ok_or_else(|| {
                            Rejection::Malformed("a credit purchase without an amount".into())
                        })?;
                    StripeChange::CreditPurchase {
                        customer_id,
                        amount_cents,
                    }
                }
                Some(LIFETIME_PURCHASE) => StripeChange::LifetimePurchase { customer_id },
                Some(SUBSCRIPTION_CHECKOUT) => StripeChange::SubscriptionCheckout {
                    customer_id,
                    subscription_id: text(object, "subscription"),
                    tier: tier.ok_or_else(|| {
                        Rejection::Malformed("a subscription checkout without a plan".into())
                    })?,
                    changes_plan_of,
                },
                // Not a checkout omoi made (a payment link on the same Stripe account
                // naming the organization, say): it grants nothing.
                _ => return Ok(None),
            }
        }
        "customer.subscription.created" | "customer.subscription.updated" => {
            let status = object
                .get("status")
                .and_then(Value::as_str)
                .and_then(SubscriptionStatus::from_stripe)
                .ok_or_else(|| {
                    Rejection::Malformed("a subscription without a known status".into())
                })?;
            // Since API 2025-03-31 the period is on the subscription's items.
            let item = object.pointer("/items/data/0").unwrap_or(&Value::Null);
            StripeChange::SubscriptionChanged {
                customer_id,
                subscription_id: text(object, "id")
                    .ok_or_else(|| Rejection::Malformed("a subscription without an id".into()))?,
                tier,
                status,
                period_start: time(object, "current_period_start")
                    .or_else(|| time(item, "current_period_start")),
                period_end: time(object, "current_period_end")
                    .or_else(|| time(item, "current_period_end")),
                creation: event_type == "customer.subscription.created",
                changes_plan_of,
            }
        }
        "customer.subscription.deleted" => StripeChange::SubscriptionDeleted {
            subscription_id: text(object, "id")
                .ok_or_else(|| Rejection::Malformed("a subscription without an id".into()))?,
        },
        "invoice.paid" => StripeChange::InvoicePaid {
            subscription_id: invoice_subscription(object),
        },
        "invoice.payment_failed" => StripeChange::InvoicePaymentFailed {
            subscription_id: invoice_subscription(object),
        },
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, object: Value) -> String {
        json!({"id": "evt_1", "object": "event", "api_version": "2026-09-30", "created": 1_800_000_000,
               "livemode": false, "pending_webhooks": 1, "type": kind, "data": {"object": object}})
        .to_string()
    }

    #[test]
    fn a_rotated_secret_still_verifies() {
        let payload = event("invoice.paid", json!({"object": "invoice", "id": "in_1"}));
        let header = Webhook::generate_test_header(&payload, "whsec_new", Some(1_800_000_000));
        let secrets: Vec<SecretString> = vec!["whsec_old".into(), "whsec_new".into()];
        assert_eq!(verify(&payload, &header, &secrets, 1_800_000_100), Ok(()));
        assert_eq!(
            verify(&payload, &header, &secrets, 1_800_000_301),
            Err(Rejection::StaleTimestamp)
        );
        assert_eq!(
            verify(&payload, &header, &secrets[..1], 1_800_000_000),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn an_invoice_finds_its_organization_through_its_subscription() {
        let payload = event(
            "invoice.payment_failed",
            json!({"object": "invoice", "id": "in_1", "customer": "cus_1",
                   "parent": {"subscription_details": {"subscription": "sub_1",
                              "metadata": {"organization_id": "00000000-0000-0000-0000-000000000007"}}}}),
        );
        let decoded = decode(&payload).expect("decoded");
        assert_eq!(decoded.organization_id, Some(Uuid::from_u128(7)));
        assert_eq!(decoded.customer_id.as_deref(), Some("cus_1"));
        assert_eq!(
            decoded.change,
            Some(StripeChange::InvoicePaymentFailed {
                subscription_id: Some("sub_1".into())
            })
        );
    }

    #[test]
    fn an_unpaid_checkout_grants_nothing_until_its_payment_succeeds() {
        let session = |status: &str| {
            json!({"object": "checkout.session", "id": "cs_1", "customer": "cus_1",
                   "payment_status": status, "client_reference_id": "00000000-0000-0000-0000-000000000007",
                   "metadata": {"purpose": "credit_purchase", "credits_cents": "900"}})
        };
        let unpaid =
            decode(&event("checkout.session.completed", session("unpaid"))).expect("decoded");
        assert_eq!(unpaid.change, None);
        let paid = decode(&event(
            "checkout.session.async_payment_succeeded",
            session("paid"),
        ))
        .expect("decoded");
        assert_eq!(
            paid.change,
            Some(StripeChange::CreditPurchase {
                customer_id: Some("cus_1".into()),
                amount_cents: 900
            })
        );
    }

    /// Only a checkout omoi made grants a plan: a paid session without its purpose (a
    /// payment link on the same Stripe account) grants nothing, and a subscription
    /// checkout grants the plan its metadata names.
    #[test]
    fn only_a_checkout_omoi_made_grants_a_plan() {
        let session = |metadata: Value| {
            json!({"object": "checkout.session", "id": "cs_1", "customer": "cus_1",
                   "payment_status": "paid", "subscription": "sub_1",
                   "client_reference_id": "00000000-0000-0000-0000-000000000007",
                   "metadata": metadata})
        };
        let decoded = |metadata: Value| {
            decode(&event("checkout.session.completed", session(metadata))).map(|d| d.change)
        };
        assert_eq!(decoded(json!({})), Ok(None));
        assert_eq!(decoded(json!({"tier": "team"})), Ok(None));
        assert_eq!(
            decoded(json!({"purpose": "subscription_checkout", "tier": "team"})),
            Ok(Some(StripeChange::SubscriptionCheckout {
                customer_id: Some("cus_1".into()),
                subscription_id: Some("sub_1".into()),
                tier: Tier::Team,
                changes_plan_of: None,
            }))
        );
        // A change of plan names the subscription it supersedes.
        assert!(matches!(
            decoded(json!({"purpose": "subscription_checkout", "tier": "team",
                           "changes_plan_of": "sub_0"})),
            Ok(Some(StripeChange::SubscriptionCheckout { changes_plan_of: Some(old), .. }))
                if old == "sub_0"
        ));
        assert!(matches!(
            decoded(json!({"purpose": "subscription_checkout"})),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn an_unknown_type_has_no_change() {
        let decoded =
            decode(&event("charge.refunded", json!({"object": "charge"}))).expect("decoded");
        assert_eq!(decoded.change, None);
    }
}
