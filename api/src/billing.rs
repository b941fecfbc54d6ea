//! `/api/v1/billing`: Stripe's webhook, the billing account with its plan's limits, and
//! checkout / portal sessions.
//!
//! A webhook delivery is answered 2xx only once its effect is durable: the signature is
//! checked on the raw body (401 and nothing written when it fails), then
//! `omoi_billing::deliveries` applies it as one command on the organization's
//! `BillingAccount` (which applies each Stripe event once); a delivery that cannot be
//! applied yet answers 503 so that Stripe retries.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use omoi_billing::deliveries::{self, DeliveryError};
use omoi_billing::stripe::{Purchase, StripeApi, StripeError};
use omoi_billing::webhook::{self, Rejection};
use omoi_domain::access::Permission;
use omoi_domain::billing::{
    BillingAccount, BillingCommand, BillingError, Plan, Plans, SubscriptionStatus, Tier,
};
use omoi_domain::organization::Organization;
use omoi_domain::spec::{Spec, SpecCommand};
use omoi_store::bus::{PairError, Part};
use omoi_store::{CommandError, Committed};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, Query, RawBody};
use crate::metrics::Outcome;
use crate::state::AppState;

/// Billing's settings: the plans and how to reach Stripe.
#[derive(Debug, Clone)]
pub struct BillingConfig {
    pub plans: Plans,
    pub stripe: StripeApi,
    /// Signing secrets of the webhook endpoint; more than one while a secret rotates.
    pub webhook_secrets: Vec<SecretString>,
    /// How long after a failed payment the account is suspended.
    pub payment_grace_seconds: i64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            plans: Plans::default(),
            stripe: StripeApi::default(),
            webhook_secrets: Vec::new(),
            // Stripe's default smart retries span about a week.
            payment_grace_seconds: 7 * 24 * 3600,
        }
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stripe_webhook))
        .routes(routes!(get_account))
        .routes(routes!(checkout))
        .routes(routes!(portal))
}

// ---------------------------------------------------------------------------------------
// The webhook
// ---------------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookReceipt {
    pub received: bool,
    /// `applied`, `duplicate`, `ignored` (recorded, no effect: an older subscription change,
    /// another subscription), `unhandled` (a type omoi does not act on), `rejected` (the
    /// account refused it; logged), or `unresolved` (it names no organization and its
    /// customer is still unknown an hour after its first delivery: not omoi's; before that
    /// hour, 503 so that Stripe retries).
    pub outcome: &'static str,
}

/// A delivery refused before anything is written. A signature that does not verify is a
/// request not authenticated as Stripe (401); a server without a signing secret cannot
/// verify any delivery yet, and Stripe retries a 503 until it can.
fn refused(rejection: &Rejection) -> ApiError {
    tracing::warn!(code = rejection.code(), %rejection, "stripe webhook refused");
    let status = match rejection {
        Rejection::NoSecret => StatusCode::SERVICE_UNAVAILABLE,
        Rejection::MissingSignature | Rejection::BadSignature | Rejection::StaleTimestamp => {
            StatusCode::UNAUTHORIZED
        }
        Rejection::Malformed(_) => StatusCode::BAD_REQUEST,
    };
    ApiError::Status {
        status,
        code: rejection.code(),
        detail: rejection.to_string(),
    }
}

fn retry_later(code: &'static str, detail: impl Into<String>) -> ApiError {
    let detail = detail.into();
    tracing::warn!(code, %detail, "stripe webhook not applied; Stripe will retry");
    ApiError::Status {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code,
        detail,
    }
}

/// Stripe's webhook (public: authenticated by its signature). Verified on the raw body
/// with `OMOI_STRIPE_WEBHOOK_SECRET` (comma-separated while rotating), ±300 s.
#[utoipa::path(post, path = "/api/v1/billing/webhooks/stripe", tag = "billing",
    request_body(content = String, description = "the Stripe event, exactly as Stripe sent it"),
    params(("Stripe-Signature" = String, Header)),
    security(()),
    responses(
        (status = 200, body = WebhookReceipt, description = "durable (or nothing to do)"),
        (status = 400, body = Problem,
            description = "`malformed_event`: a signed body that is not a Stripe event: nothing written"),
        (status = 401, body = Problem,
            description = "`missing_signature`, `bad_signature`, `stale_timestamp`: not from Stripe, nothing written"),
        (status = 503, body = Problem,
            description = "not applied yet (unknown customer, database trouble), or \
                `webhook_not_configured`: no signing secret; Stripe retries"),
    ))]
async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Json<WebhookReceipt>> {
    let config = &state.billing;
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refused(&Rejection::MissingSignature))?;
    let body = std::str::from_utf8(&body)
        .map_err(|_| refused(&Rejection::Malformed("the body is not UTF-8 text".into())))?;
    webhook::verify(
        body,
        signature,
        &config.webhook_secrets,
        Utc::now().timestamp(),
    )
    .map_err(|r| refused(&r))?;
    let decoded = webhook::decode(body).map_err(|r| refused(&r))?;
    let payload: serde_json::Value =
        serde_json::from_str(body).map_err(|e| refused(&Rejection::Malformed(e.to_string())))?;
    let grace = config.payment_grace_seconds;
    let outcome = deliveries::deliver(&state.bus, state.pool(), &decoded, &payload, grace)
        .await
        .map_err(|error| match error {
            DeliveryError::OrganizationUnresolved { .. } => {
                retry_later("organization_unresolved", error.to_string())
            }
            DeliveryError::NotApplied(_) => retry_later("not_applied", error.to_string()),
            DeliveryError::Database(e) => ApiError::from(e),
        })?;
    Ok(Json(WebhookReceipt {
        received: true,
        outcome: outcome.as_str(),
    }))
}

// ---------------------------------------------------------------------------------------
// The account
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AccountQuery {
    pub organization_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Workflows started this period.
    pub workflows_used: u32,
    /// When this usage period began: the subscription's period, or the calendar month.
    pub period_start: Option<DateTime<Utc>>,
    /// Workflows left within the plan; absent when unlimited.
    pub workflows_left: Option<u32>,
}

/// The billing read model of an organization.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub organization_id: Uuid,
    /// The tier paid for.
    pub tier: Tier,
    /// The tier whose limits apply (free unless the subscription is in good standing).
    pub effective_tier: Tier,
    pub status: SubscriptionStatus,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    /// The effective tier's limits.
    pub limits: Plan,
    pub usage: Usage,
    pub credits_cents: i64,
    /// What a workflow beyond the quota costs in credits.
    pub workflow_price_cents: i64,
    /// A payment failed and its grace is over: reading works, starting work does not.
    pub suspended: bool,
    /// When a failed payment suspends (or suspended) the account, unless an invoice is
    /// paid first.
    pub suspend_at: Option<DateTime<Utc>>,
    pub stripe_customer_id: Option<String>,
    /// The Stripe subscription the plan is paid by (none on the free and lifetime plans).
    pub stripe_subscription_id: Option<String>,
    /// Subscriptions another plan superseded that omoi has still to end at Stripe (empty
    /// but for a moment, unless Stripe refused: see the server's log).
    pub subscriptions_ending: Vec<String>,
}

/// The account of an organization, or a new (free) one.
pub async fn account_of(state: &AppState, organization_id: Uuid) -> ApiResult<BillingAccount> {
    Ok(state
        .bus
        .load::<BillingAccount>(&organization_id.to_string())
        .await
        .map_err(ApiError::from)?
        .map(|(account, _)| account)
        .unwrap_or_else(|| BillingAccount {
            organization_id: Some(organization_id),
            ..BillingAccount::default()
        }))
}

fn view(account: BillingAccount, organization_id: Uuid, plans: &Plans) -> AccountView {
    let limits = plans.of(account.effective_tier());
    let now = Utc::now();
    let used = account.workflows_used_at(now);
    AccountView {
        organization_id,
        tier: account.tier,
        effective_tier: account.effective_tier(),
        status: account.status,
        period_start: account.period_start,
        period_end: account.period_end,
        usage: Usage {
            workflows_used: used,
            workflows_left: limits
                .monthly_workflows
                .map(|quota| quota.saturating_sub(used)),
            period_start: DateTime::from_timestamp(account.period_start_at(now), 0),
        },
        limits,
        credits_cents: account.credits_cents,
        workflow_price_cents: plans.workflow_price_cents,
        suspended: account.is_suspended(now),
        suspend_at: account.suspend_at,
        stripe_customer_id: account.stripe_customer_id,
        stripe_subscription_id: account.stripe_subscription_id,
        subscriptions_ending: account.retiring_subscriptions.into_iter().collect(),
    }
}

/// Tier, status, limits, usage and credits of an organization.
#[utoipa::path(get, path = "/api/v1/billing/account", tag = "billing", params(AccountQuery),
    responses(
        (status = 200, body = AccountView), (status = 400, body = Problem),
        (status = 404, body = Problem),
    ))]
async fn get_account(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<AccountQuery>,
) -> ApiResult<Json<AccountView>> {
    state
        .read::<Organization>(&caller, Permission::OrgRead, query.organization_id)
        .await?;
    let account = account_of(&state, query.organization_id).await?;
    Ok(Json(view(
        account,
        query.organization_id,
        &state.billing.plans,
    )))
}

/// Runs `command` on spec `spec_id` and counts the workflow it starts on the
/// organization's billing account in one transaction: both commit or neither (a refusal
/// of the plan, 402, writes nothing on the spec; a refusal of the spec counts nothing).
pub async fn with_workflow(
    state: &AppState,
    caller: &Caller,
    permission: Permission,
    name: &'static str,
    spec_id: Uuid,
    organization_id: Uuid,
    command: SpecCommand,
) -> ApiResult<Committed<Spec>> {
    let started = std::time::Instant::now();
    // The account decides its quota by its tier as it stands in the pair's transaction.
    let count = BillingCommand::StartWorkflow {
        organization_id,
        spec_id,
        plans: state.billing.plans.clone(),
        at: Utc::now(),
    };
    let (spec_key, account_key) = (spec_id.to_string(), organization_id.to_string());
    let check = |scope| caller.check(scope, permission);
    let result = state
        .bus
        .execute_pair::<Spec, BillingAccount>(
            Part {
                aggregate_id: &spec_key,
                command,
                check: &check,
            },
            Part {
                aggregate_id: &account_key,
                command: count,
                check: &|_| Ok(()),
            },
            &caller.context(),
        )
        .await;
    let outcome = match &result {
        Ok(_) => Outcome::Committed,
        Err(PairError::First(_) | PairError::Second(_)) => Outcome::Refused,
        Err(PairError::Conflict { .. }) => Outcome::Conflict,
        Err(PairError::Unavailable(_) | PairError::Internal(_)) => Outcome::Failed,
    };
    state
        .metrics
        .record_command(name, outcome, started.elapsed());
    match result {
        Ok((spec, _)) => Ok(spec),
        Err(PairError::First(CommandError::Refused(refusal))) => {
            Err(crate::auth::refused(refusal, "spec", permission.as_str()))
        }
        Err(PairError::Second(CommandError::Domain(error))) => Err(payment_required(&error)),
        Err(other) => Err(ApiError::from(other)),
    }
}

pub(crate) fn payment_required(error: &BillingError) -> ApiError {
    let how = match error {
        BillingError::Suspended => "the portal: POST /api/v1/billing/portal",
        BillingError::QuotaExceeded { .. } => "checkout: POST /api/v1/billing/checkout",
        _ => return ApiError::from_domain(error),
    };
    ApiError::PaymentRequired {
        code: omoi_domain::common::DomainError::code(error),
        detail: format!("{error} ({how})"),
    }
}

// ---------------------------------------------------------------------------------------
// Checkout and portal
// ---------------------------------------------------------------------------------------

/// Smallest credit purchase in one checkout, in cents.
const MIN_CREDITS_CENTS: i64 = 100;
/// Largest credit purchase in one checkout, in cents.
const MAX_CREDITS_CENTS: i64 = 10_000_000;

/// A plan to subscribe to (`pro`, `team`) or buy (`lifetime`) — a plan with a price — or
/// credits to buy, in cents: exactly one of `tier` and `credits_cents`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    pub organization_id: Uuid,
    pub tier: Option<Tier>,
    pub credits_cents: Option<i64>,
}

impl utoipa::PartialSchema for CheckoutRequest {
    /// The fields, and `oneOf` saying that exactly one of `tier` and `credits_cents` is
    /// given (and not `null`), which the derive cannot state.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::AdditionalProperties;
        use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Type};
        use utoipa::openapi::{KnownFormat, SchemaFormat};
        // Present with a value of its own type: `null` does not count.
        let given = |field: &str, kind: Type| {
            ObjectBuilder::new()
                .required(field)
                .property(field, ObjectBuilder::new().schema_type(kind))
        };
        let fields = ObjectBuilder::new()
            .property(
                "organization_id",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid))),
            )
            .required("organization_id")
            .property("tier", <Option<Tier>>::schema())
            .property(
                "credits_cents",
                ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                        Type::Integer,
                        Type::Null,
                    ]))
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(MIN_CREDITS_CENTS as f64))
                    .maximum(Some(MAX_CREDITS_CENTS as f64)),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let exactly_one = OneOfBuilder::new()
            .item(given("tier", Type::String))
            .item(given("credits_cents", Type::Integer));
        AllOfBuilder::new().item(fields).item(exactly_one).into()
    }
}

impl ToSchema for CheckoutRequest {}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalRequest {
    pub organization_id: Uuid,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionCreated {
    pub id: String,
    /// Where to send the customer.
    pub url: String,
}

/// The caller's `Idempotency-Key` (1 to 255 visible ASCII characters), if it sent one.
fn client_key(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key))
        }
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            Some("Idempotency-Key"),
        )),
    }
}

fn stripe_error(error: StripeError) -> ApiError {
    tracing::warn!(%error, "stripe call failed");
    let (status, code) = match &error {
        StripeError::NotConfigured => {
            return ApiError::NotConfigured {
                code: "billing_not_configured",
                detail: error.to_string(),
            }
        }
        StripeError::Unreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, "stripe_unreachable"),
        StripeError::KeyReused(_) => (StatusCode::CONFLICT, "idempotency_key_reused"),
        StripeError::Refused { .. } => (StatusCode::BAD_GATEWAY, "stripe_refused"),
    };
    ApiError::Status {
        status,
        code,
        detail: error.to_string(),
    }
}

/// Creates a Stripe Checkout Session for a plan or for credits (owners and admins) and
/// returns its URL. A subscriber buying another plan changes plans: once paid, the new
/// subscription supersedes the one on file, which omoi ends at Stripe with its unused
/// time credited. Send an `Idempotency-Key` header to make retries return the same
/// session; without one, identical requests within a minute do.
#[utoipa::path(post, path = "/api/v1/billing/checkout", tag = "billing",
    request_body = CheckoutRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
        description = "your key for this purchase (1 to 255 visible ASCII characters): \
                       retries with it return the same session")),
    responses(
        (status = 200, body = SessionCreated), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem,
            description = "neither or both of tier and credits_cents, or credits out of range"),
        (status = 409, body = Problem,
            description = "`tier_not_purchasable`: a plan without a price (free, enterprise); \
                           `already_subscribed`: the organization is subscribed to this plan \
                           already and paid up (one pending, past due or paused may be bought \
                           again; another plan is a change of plan: once paid, it supersedes \
                           the subscription on file); `lifetime_plan`: the organization has the lifetime plan; \
                           `idempotency_key_reused`: the Idempotency-Key was sent before with \
                           another purchase (Stripe keeps a key for 24 hours)"),
        (status = 502, body = Problem, description = "Stripe refused"),
        (status = 503, body = Problem, description = "`stripe_unreachable` (`Retry-After`); \
                           `billing_not_configured`: this server has no Stripe key (no `Retry-After`: \
                           retrying does not help until it is configured)"),
    ))]
async fn checkout(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<CheckoutRequest>,
) -> ApiResult<Json<SessionCreated>> {
    state
        .read::<Organization>(&caller, Permission::OrgWrite, body.organization_id)
        .await?;
    let account = account_of(&state, body.organization_id).await?;
    let purchase = match (body.tier, body.credits_cents) {
        (Some(tier), None) => {
            let plan = state.billing.plans.of(tier);
            if plan.price_cents <= 0 {
                // Free, or priced by contract (enterprise): not sold through checkout, as
                // the configured plans stand.
                return Err(ApiError::Conflict {
                    code: "tier_not_purchasable",
                    detail: format!("the {tier} plan is not sold through checkout"),
                });
            }
            plan_purchase(&account, plan)?
        }
        (None, Some(amount)) if (MIN_CREDITS_CENTS..=MAX_CREDITS_CENTS).contains(&amount) => {
            Purchase::Credits {
                amount_cents: amount,
            }
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "credits_out_of_range",
                "credits_cents",
                format!("buy between {MIN_CREDITS_CENTS} and {MAX_CREDITS_CENTS} cents of credits"),
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "tier_or_credits",
                "tier",
                "give either `tier` or `credits_cents`",
            ))
        }
    };
    let created = state
        .billing
        .stripe
        .checkout(
            body.organization_id,
            account.stripe_customer_id.as_deref(),
            &purchase,
            client_key(&headers)?,
            Utc::now().timestamp(),
        )
        .await
        .map_err(stripe_error)?;
    Ok(Json(SessionCreated {
        id: created.id,
        url: created.url,
    }))
}

/// The purchase of `plan` for `account`. An organization has one plan: a subscriber
/// buying another plan changes plans — the new subscription, once paid, supersedes the
/// one on file, which omoi ends at Stripe with its unused time credited — and the plan it
/// has already is not sold again, nor any plan to a lifetime account. Buying the lifetime
/// plan supersedes a subscription by itself.
fn plan_purchase(account: &BillingAccount, plan: Plan) -> ApiResult<Purchase> {
    if account.tier == Tier::Lifetime {
        return Err(ApiError::Conflict {
            code: "lifetime_plan",
            detail: "the organization has the lifetime plan".into(),
        });
    }
    let subscription = account.live_subscription();
    // The same plan again only while it is paid up: a subscription pending its first
    // payment, past due or paused is replaced by a paid checkout of it.
    if subscription.is_some() && plan.tier == account.tier && account.status.in_good_standing() {
        return Err(ApiError::Conflict {
            code: "already_subscribed",
            detail: format!(
                "the organization is subscribed to the {} plan already (its payment method \
                 and invoices are in the billing portal, POST /api/v1/billing/portal)",
                account.tier
            ),
        });
    }
    let changes_plan_of = subscription.filter(|_| plan.tier != Tier::Lifetime);
    Ok(Purchase::Plan {
        plan,
        changes_plan_of,
    })
}

/// A Stripe customer-portal session (payment methods, invoices, cancellation) for an
/// organization that has paid before.
#[utoipa::path(post, path = "/api/v1/billing/portal", tag = "billing",
    request_body = PortalRequest,
    responses(
        (status = 200, body = SessionCreated), (status = 400, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "`no_stripe_customer`: the organization \
            has no Stripe customer yet; `idempotency_key_reused`: the Idempotency-Key was sent \
            before with another request"),
        (status = 502, body = Problem, description = "Stripe refused"),
        (status = 503, body = Problem, description = "`stripe_unreachable` (`Retry-After`); \
                           `billing_not_configured`: this server has no Stripe key (no `Retry-After`: \
                           retrying does not help until it is configured)"),
    ))]
async fn portal(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Body(body): Body<PortalRequest>,
) -> ApiResult<Json<SessionCreated>> {
    state
        .read::<Organization>(&caller, Permission::OrgWrite, body.organization_id)
        .await?;
    let account = account_of(&state, body.organization_id).await?;
    let Some(customer) = account.stripe_customer_id else {
        return Err(ApiError::Conflict {
            code: "no_stripe_customer",
            detail: "the organization has not paid through Stripe yet; check out first".into(),
        });
    };
    let created = state
        .billing
        .stripe
        .portal(
            body.organization_id,
            &customer,
            client_key(&headers)?,
            Utc::now().timestamp(),
        )
        .await
        .map_err(stripe_error)?;
    Ok(Json(SessionCreated {
        id: created.id,
        url: created.url,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_billing_configs_debug_output_shows_no_stripe_secret() {
        let mut config = BillingConfig::default();
        config.stripe.secret_key = "sk_live_never_print_me".into();
        config.webhook_secrets = vec!["whsec_never_print_me".into()];
        let printed = format!("{config:?} {:?}", config.stripe);
        assert!(!printed.contains("never_print_me"), "{printed}");
    }
}
