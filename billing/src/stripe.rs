//! The Stripe API calls omoi makes: a Checkout Session (subscription, lifetime plan or
//! credits) and a customer-portal session, each form-encoded with an idempotency key, and
//! the end of a subscription another plan superseded, to a configurable base URL
//! (tests point it at a fake Stripe on loopback).

use std::time::Duration;

use omoi_domain::billing::{Plan, Tier};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use uuid::Uuid;

use crate::webhook::{CREDIT_PURCHASE, LIFETIME_PURCHASE, SUBSCRIPTION_CHECKOUT};

/// Where and how to reach Stripe.
#[derive(Debug, Clone)]
pub struct StripeApi {
    pub base_url: String,
    /// Empty when not configured. A `SecretString` so that no `Debug` print (a log line,
    /// a panic message) can show it.
    pub secret_key: SecretString,
    pub success_url: String,
    pub cancel_url: String,
    pub portal_return_url: String,
}

/// Stripe's own address, without a secret key (every call `NotConfigured` until one is
/// set), and return addresses on a local `omoi dev`.
impl Default for StripeApi {
    fn default() -> Self {
        Self {
            base_url: "https://api.stripe.com".into(),
            secret_key: SecretString::default(),
            success_url: "http://127.0.0.1:18000/billing/success".into(),
            cancel_url: "http://127.0.0.1:18000/billing/cancel".into(),
            portal_return_url: "http://127.0.0.1:18000/billing".into(),
        }
    }
}

/// The API path of subscription `subscription_id`, an id of Stripe's alphabet only (it
/// becomes a path segment).
fn subscription_path(subscription_id: &str) -> Result<String, StripeError> {
    if subscription_id.is_empty()
        || !subscription_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StripeError::Refused {
            status: 400,
            message: format!("{subscription_id:?} is not a subscription id"),
        });
    }
    Ok(format!("/v1/subscriptions/{subscription_id}"))
}

impl StripeError {
    /// Whether trying again later may succeed: Stripe out of reach, rate-limited or
    /// failing on its side — not a refusal of the request itself, nor a missing key.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            Self::NotConfigured | Self::KeyReused(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    #[error("no Stripe secret key is configured (OMOI_STRIPE_SECRET_KEY)")]
    NotConfigured,
    #[error("Stripe could not be reached: {0}")]
    Unreachable(String),
    /// The key of an earlier call sent with other fields (Stripe's `idempotency_error`):
    /// a client reused its `Idempotency-Key` for another purchase.
    #[error("Stripe refused the idempotency key: {0}")]
    KeyReused(String),
    #[error("Stripe refused ({status}): {message}")]
    Refused { status: u16, message: String },
}

/// What to buy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purchase {
    /// A monthly subscription to the plan (the lifetime plan is paid once).
    Plan {
        plan: Plan,
        /// A change of plan: the subscription the new one supersedes once paid (named in
        /// the session's and the subscription's metadata, `changes_plan_of`).
        changes_plan_of: Option<String>,
    },
    Credits {
        amount_cents: i64,
    },
}

#[derive(Deserialize)]
struct Session {
    id: String,
    url: String,
}

/// A created session: its id and the URL to send the customer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub url: String,
}

/// The idempotency key of a Stripe call: the client's own key for the request when it
/// sent one (so its retries reuse the session), else a digest of everything sent within
/// the same minute (so a double click does not create two sessions, while a later,
/// deliberate repeat purchase is a new one).
pub fn idempotency_key(
    what: &str,
    organization_id: Uuid,
    client_key: Option<&str>,
    form: &[(String, String)],
    unix_now: i64,
) -> String {
    let material = match client_key {
        Some(key) => format!("{organization_id}:client:{key}"),
        None => {
            let fields: Vec<String> = form.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{organization_id}:{}:{}", fields.join("&"), unix_now / 60)
        }
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, material.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{what}-{hex}")
}

/// The form fields of a Checkout Session.
pub fn checkout_form(
    api: &StripeApi,
    organization_id: Uuid,
    customer_id: Option<&str>,
    purchase: &Purchase,
) -> Vec<(String, String)> {
    let organization = organization_id.to_string();
    let mut form: Vec<(String, String)> = vec![
        ("client_reference_id".into(), organization.clone()),
        ("metadata[organization_id]".into(), organization.clone()),
        ("success_url".into(), api.success_url.clone()),
        ("cancel_url".into(), api.cancel_url.clone()),
        ("line_items[0][quantity]".into(), "1".into()),
        ("line_items[0][price_data][currency]".into(), "usd".into()),
    ];
    match purchase {
        Purchase::Plan { plan, .. } if plan.tier == Tier::Lifetime => {
            form.extend([
                ("mode".into(), "payment".into()),
                ("metadata[purpose]".into(), LIFETIME_PURCHASE.into()),
                ("metadata[tier]".into(), plan.tier.to_string()),
                (
                    "line_items[0][price_data][unit_amount]".into(),
                    plan.price_cents.to_string(),
                ),
                (
                    "line_items[0][price_data][product_data][name]".into(),
                    "omoi lifetime".into(),
                ),
            ]);
        }
        Purchase::Plan {
            plan,
            changes_plan_of,
        } => {
            if let Some(replaced) = changes_plan_of {
                form.extend([
                    ("metadata[changes_plan_of]".into(), replaced.clone()),
                    (
                        "subscription_data[metadata][changes_plan_of]".into(),
                        replaced.clone(),
                    ),
                ]);
            }
            form.extend([
                ("mode".into(), "subscription".into()),
                ("metadata[purpose]".into(), SUBSCRIPTION_CHECKOUT.into()),
                ("metadata[tier]".into(), plan.tier.to_string()),
                (
                    "subscription_data[metadata][organization_id]".into(),
                    organization,
                ),
                (
                    "subscription_data[metadata][tier]".into(),
                    plan.tier.to_string(),
                ),
                (
                    "line_items[0][price_data][unit_amount]".into(),
                    plan.price_cents.to_string(),
                ),
                (
                    "line_items[0][price_data][recurring][interval]".into(),
                    "month".into(),
                ),
                (
                    "line_items[0][price_data][product_data][name]".into(),
                    format!("omoi {}", plan.tier),
                ),
            ]);
        }
        Purchase::Credits { amount_cents } => {
            form.extend([
                ("mode".into(), "payment".into()),
                ("metadata[purpose]".into(), CREDIT_PURCHASE.into()),
                ("metadata[credits_cents]".into(), amount_cents.to_string()),
                (
                    "line_items[0][price_data][unit_amount]".into(),
                    amount_cents.to_string(),
                ),
                (
                    "line_items[0][price_data][product_data][name]".into(),
                    "omoi credits".into(),
                ),
            ]);
        }
    }
    if let Some(customer) = customer_id {
        form.push(("customer".into(), customer.to_string()));
    }
    form
}

impl StripeApi {
    /// A request to `path` with the secret key, or `NotConfigured` without one.
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, StripeError> {
        let secret_key = self.secret_key.expose_secret();
        if secret_key.is_empty() {
            return Err(StripeError::NotConfigured);
        }
        Ok(reqwest::Client::new()
            .request(
                method,
                format!("{}{path}", self.base_url.trim_end_matches('/')),
            )
            .bearer_auth(secret_key)
            .timeout(Duration::from_secs(20)))
    }

    /// Sends `request`; the body of a 2xx answer, else what Stripe said.
    /// Sends `request` and reads Stripe's answer as `T`.
    async fn fetch<T: serde::de::DeserializeOwned>(
        request: reqwest::RequestBuilder,
    ) -> Result<T, StripeError> {
        let (status, body) = Self::send(request).await?;
        serde_json::from_str(&body).map_err(|e| StripeError::Refused {
            status,
            message: format!("unexpected answer: {e}"),
        })
    }

    async fn send(request: reqwest::RequestBuilder) -> Result<(u16, String), StripeError> {
        let response = request
            .send()
            .await
            .map_err(|e| StripeError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| StripeError::Unreachable(e.to_string()))?;
        if !status.is_success() {
            let error = serde_json::from_str::<serde_json::Value>(&body).ok();
            let field = |name: &str| {
                error
                    .as_ref()
                    .and_then(|v| v.pointer(&format!("/error/{name}"))?.as_str())
                    .map(str::to_string)
            };
            let message = field("message").unwrap_or_else(|| body.clone());
            if field("type").as_deref() == Some("idempotency_error") {
                return Err(StripeError::KeyReused(message));
            }
            return Err(StripeError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        Ok((status.as_u16(), body))
    }

    async fn post(
        &self,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
    ) -> Result<Created, StripeError> {
        let request = self
            .request(reqwest::Method::POST, path)?
            .header("Idempotency-Key", idempotency_key)
            .form(form);
        let session: Session = Self::fetch(request).await?;
        Ok(Created {
            id: session.id,
            url: session.url,
        })
    }

    /// Subscription `subscription_id`'s status as Stripe has it now (`active`,
    /// `past_due`, …); `None` when Stripe no longer knows it.
    pub async fn subscription_status(
        &self,
        subscription_id: &str,
    ) -> Result<Option<String>, StripeError> {
        #[derive(Deserialize)]
        struct Subscription {
            status: String,
        }
        let path = subscription_path(subscription_id)?;
        match Self::fetch::<Subscription>(self.request(reqwest::Method::GET, &path)?).await {
            Ok(subscription) => Ok(Some(subscription.status)),
            Err(StripeError::Refused { status: 404, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Ends subscription `subscription_id` now (`DELETE /v1/subscriptions/{id}`, which is
    /// idempotent: it takes no key), with `prorate` when its unused time is credited to
    /// the customer (an item its next invoice subtracts). A subscription Stripe no longer
    /// knows (404) counts as ended.
    pub async fn cancel_subscription(
        &self,
        subscription_id: &str,
        credit_unused_time: bool,
    ) -> Result<(), StripeError> {
        let path = subscription_path(subscription_id)?;
        let mut request = self.request(reqwest::Method::DELETE, &path)?;
        if credit_unused_time {
            request = request.query(&[("prorate", "true")]);
        }
        match Self::send(request).await {
            Ok(_) | Err(StripeError::Refused { status: 404, .. }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Creates a Checkout Session for `purchase`; `client_key` is the caller's
    /// `Idempotency-Key`, if it sent one.
    pub async fn checkout(
        &self,
        organization_id: Uuid,
        customer_id: Option<&str>,
        purchase: &Purchase,
        client_key: Option<&str>,
        unix_now: i64,
    ) -> Result<Created, StripeError> {
        let form = checkout_form(self, organization_id, customer_id, purchase);
        let key = idempotency_key("checkout", organization_id, client_key, &form, unix_now);
        self.post("/v1/checkout/sessions", &form, &key).await
    }

    /// Creates a customer-portal session for `customer_id`.
    pub async fn portal(
        &self,
        organization_id: Uuid,
        customer_id: &str,
        client_key: Option<&str>,
        unix_now: i64,
    ) -> Result<Created, StripeError> {
        let form = vec![
            ("customer".to_string(), customer_id.to_string()),
            ("return_url".to_string(), self.portal_return_url.clone()),
        ];
        let key = idempotency_key("portal", organization_id, client_key, &form, unix_now);
        self.post("/v1/billing_portal/sessions", &form, &key).await
    }
}
