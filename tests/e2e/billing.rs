//! Billing end to end: Stripe webhooks signed as Stripe signs them (in Stripe's JSON
//! shape, API version 2026-09-30), applied exactly once, in order, or refused; plan
//! limits enforced and lifted; checkout and portal against a fake Stripe on loopback.

use std::collections::BTreeMap;

use chrono::Utc;
use omoi_api::billing::BillingConfig;
use omoi_billing::stripe::StripeApi;
use omoi_domain::billing::{Plan, Plans, Tier};
use omoi_testing::{
    fake_stripe, id_of, spawn_app_with_billing, StripeLog, StripeRequest, TestApp,
    FLAKY_SUBSCRIPTION, FORBIDDEN_SUBSCRIPTION, UNPAID_SUBSCRIPTION,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use stripe_webhook::Webhook;

const SECRET: &str = "whsec_test_omoi_signing_secret";
const OLD_SECRET: &str = "whsec_test_omoi_previous_secret";

/// Plans with small numbers, so limits bite quickly.
fn plans() -> Plans {
    let plan = |tier, monthly_workflows, concurrent_agents, price_cents| Plan {
        tier,
        monthly_workflows,
        concurrent_agents,
        price_cents,
    };
    Plans {
        plans: vec![
            plan(Tier::Free, Some(1), Some(1), 0),
            plan(Tier::Pro, Some(50), Some(3), 29_900),
            plan(Tier::Team, None, Some(10), 99_900),
            plan(Tier::Enterprise, None, None, 0),
            plan(Tier::Lifetime, Some(50), Some(5), 49_900),
        ],
        workflow_price_cents: 1_000,
    }
}

/// What the fake Stripe received, its form body read.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    idempotency_key: Option<String>,
    authorization: Option<String>,
    form: BTreeMap<String, String>,
}

/// Everything the fake Stripe has received so far.
fn requests_to(log: &StripeLog) -> Vec<Received> {
    log.lock()
        .expect("the log")
        .iter()
        .map(|request| Received {
            method: request.method.clone(),
            path: request.path.clone(),
            idempotency_key: request.idempotency_key.clone(),
            authorization: request.authorization.clone(),
            form: serde_urlencoded::from_str(&request.body).expect("a form body"),
        })
        .collect()
}

async fn app_with_stripe() -> (TestApp, String, StripeLog) {
    let (stripe, log) = fake_stripe().await;
    let billing = BillingConfig {
        plans: plans(),
        stripe: StripeApi {
            base_url: stripe,
            secret_key: "sk_test_omoi".into(),
            success_url: "https://omoi.test/billing/done".into(),
            cancel_url: "https://omoi.test/billing/cancel".into(),
            portal_return_url: "https://omoi.test/billing".into(),
        },
        webhook_secrets: vec![SECRET.into(), OLD_SECRET.into()],
        // Suspended at the first failed payment, so the tests need not wait a week.
        payment_grace_seconds: 0,
    };
    let app = spawn_app_with_billing(billing).await;
    let (organization, _) = app.organization_and_project().await;
    (app, organization, log)
}

fn envelope(id: &str, kind: &str, created: i64, object: Value) -> String {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2026-09-30.clover",
        "created": created,
        "data": {"object": object},
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": kind
    })
    .to_string()
}

fn checkout_session(organization: &str, metadata: Value, subscription: Option<&str>) -> Value {
    json!({
        "id": "cs_test_a1", "object": "checkout.session", "amount_subtotal": 29900,
        "amount_total": 29900, "client_reference_id": organization, "currency": "usd",
        "customer": "cus_test_1", "customer_details": {"email": "owner@example.com"},
        "livemode": false, "metadata": metadata,
        "mode": if subscription.is_some() { "subscription" } else { "payment" },
        "payment_status": "paid", "status": "complete", "subscription": subscription,
        "success_url": "https://omoi.test/billing/done", "url": null
    })
}

fn subscription(organization: &str, tier: &str, status: &str, period_start: i64) -> Value {
    json!({
        "id": "sub_test_1", "object": "subscription", "cancel_at_period_end": false,
        "created": period_start, "currency": "usd", "customer": "cus_test_1",
        "items": {"object": "list", "data": [{
            "id": "si_test_1", "object": "subscription_item",
            "current_period_start": period_start, "current_period_end": period_start + 2_592_000,
            "price": {"id": "price_test", "object": "price", "unit_amount": 29900,
                      "recurring": {"interval": "month"}},
            "quantity": 1}], "has_more": false},
        "livemode": false, "metadata": {"organization_id": organization, "tier": tier},
        "status": status
    })
}

fn invoice(customer: &str, organization: Option<&str>) -> Value {
    invoice_of(customer, organization, "sub_test_1")
}

/// An invoice of `subscription`.
fn invoice_of(customer: &str, organization: Option<&str>, subscription: &str) -> Value {
    let metadata = organization.map_or(json!({}), |o| json!({"organization_id": o}));
    json!({
        "id": "in_test_1", "object": "invoice", "amount_due": 29900, "amount_paid": 29900,
        "currency": "usd", "customer": customer, "livemode": false,
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": subscription, "metadata": metadata}},
        "status": "paid"
    })
}

/// Delivers a completed subscription checkout of `tier` for `org` (customer
/// `cus_test_1`, subscription `sub_test_1`).
async fn subscribe(app: &TestApp, org: &str, event_id: &str, tier: &str) -> (StatusCode, Value) {
    let checkout = checkout_session(
        org,
        json!({"organization_id": org, "purpose": "subscription_checkout", "tier": tier}),
        Some("sub_test_1"),
    );
    deliver(
        app,
        &envelope(event_id, "checkout.session.completed", now(), checkout),
    )
    .await
}

/// Delivers a completed lifetime purchase for `org` (customer `cus_test_1`).
async fn buy_lifetime(app: &TestApp, org: &str, event_id: &str) -> (StatusCode, Value) {
    let lifetime = checkout_session(
        org,
        json!({"organization_id": org, "purpose": "lifetime_purchase", "tier": "lifetime"}),
        None,
    );
    deliver(
        app,
        &envelope(event_id, "checkout.session.completed", now(), lifetime),
    )
    .await
}

async fn deliver_signed(app: &TestApp, payload: &str, header: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .post(format!("{}/api/v1/billing/webhooks/stripe", app.address))
        .header("stripe-signature", header)
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .expect("the server answers");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn deliver(app: &TestApp, payload: &str) -> (StatusCode, Value) {
    let header = Webhook::generate_test_header(payload, SECRET, None);
    deliver_signed(app, payload, &header).await
}

async fn account(app: &TestApp, organization: &str) -> Value {
    let (status, body) = app
        .get(&format!(
            "/api/v1/billing/account?organization_id={organization}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn billing_events(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from events where aggregate_type = 'BillingAccount'")
        .fetch_one(&app.database.pool)
        .await
        .expect("a count")
}

fn now() -> i64 {
    Utc::now().timestamp()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_handled_event_type_changes_the_account() {
    let (app, org, _) = app_with_stripe().await;
    let fresh = account(&app, &org).await;
    assert_eq!(fresh["tier"], "free");
    assert_eq!(fresh["limits"]["monthly_workflows"], 1);

    let (status, receipt) = subscribe(&app, &org, "evt_1", "team").await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["outcome"], "applied");
    let team = account(&app, &org).await;
    assert_eq!(
        (&team["tier"], &team["status"], &team["stripe_customer_id"]),
        (&json!("team"), &json!("active"), &json!("cus_test_1"))
    );
    assert_eq!(team["limits"]["concurrent_agents"], 10);

    let created = now();
    for (id, kind, status) in [
        ("evt_2", "customer.subscription.created", "trialing"),
        ("evt_3", "customer.subscription.updated", "past_due"),
    ] {
        let object = subscription(&org, "pro", status, created);
        let (code, receipt) = deliver(&app, &envelope(id, kind, created, object)).await;
        assert_eq!(code, StatusCode::OK, "{receipt}");
        let state = account(&app, &org).await;
        assert_eq!(
            (&state["tier"], &state["status"]),
            (&json!("pro"), &json!(status))
        );
    }
    let state = account(&app, &org).await;
    assert!(state["period_end"].is_string(), "{state}");

    // Invoices name only the customer: the organization is the one it was linked to.
    let (code, _) = deliver(
        &app,
        &envelope(
            "evt_4",
            "invoice.payment_failed",
            now(),
            invoice("cus_test_1", None),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(account(&app, &org).await["suspended"], true);
    let (code, _) = deliver(
        &app,
        &envelope("evt_5", "invoice.paid", now(), invoice("cus_test_1", None)),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let paid = account(&app, &org).await;
    assert_eq!(
        (&paid["suspended"], &paid["status"]),
        (&json!(false), &json!("active"))
    );

    let (code, _) = deliver(
        &app,
        &envelope(
            "evt_6",
            "customer.subscription.deleted",
            now() + 1,
            subscription(&org, "pro", "canceled", created),
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let canceled = account(&app, &org).await;
    assert_eq!(
        (
            &canceled["tier"],
            &canceled["effective_tier"],
            &canceled["status"]
        ),
        (&json!("free"), &json!("free"), &json!("canceled"))
    );

    let credits = checkout_session(
        &org,
        json!({"organization_id": org, "purpose": "credit_purchase", "credits_cents": "5000"}),
        None,
    );
    deliver(
        &app,
        &envelope("evt_7", "checkout.session.completed", now(), credits),
    )
    .await;
    assert_eq!(account(&app, &org).await["credits_cents"], 5000);
    buy_lifetime(&app, &org, "evt_8").await;
    let forever = account(&app, &org).await;
    assert_eq!(forever["tier"], "lifetime");
    assert_eq!(
        forever["credits_cents"], 5000,
        "credits stay with the same account"
    );
}

/// A lifetime purchase ends at Stripe the subscription it replaced — Stripe out of reach
/// twice, then ending it — and records that once, caused by the purchase; the end Stripe
/// then reports changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_lifetime_purchase_ends_the_subscription_it_replaced_at_stripe() {
    let (app, org, log) = app_with_stripe().await;
    let held = format!("{FLAKY_SUBSCRIPTION}_1");
    let checkout = checkout_session(
        &org,
        json!({"organization_id": org, "purpose": "subscription_checkout", "tier": "pro"}),
        Some(&held),
    );
    let paid = envelope("evt_sub", "checkout.session.completed", now(), checkout);
    assert_eq!(deliver(&app, &paid).await.0, StatusCode::OK);
    assert_eq!(buy_lifetime(&app, &org, "evt_life").await.0, StatusCode::OK);
    app.caught_up().await;

    let calls = ends_at_stripe(&log, &held);
    assert_eq!(calls.len(), 3, "two 500s, then the end: {calls:?}");
    assert!(calls
        .iter()
        .all(|c| c.authorization.as_deref() == Some("Bearer sk_test_omoi")));
    assert_retired_once(&app, &org, &held, "evt_life").await;

    // Stripe reports the end: nothing changes.
    let mut gone = subscription(&org, "pro", "canceled", now());
    gone["id"] = json!(held);
    let report = envelope("evt_gone", "customer.subscription.deleted", now(), gone);
    let (status, receipt) = deliver(&app, &report).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    let state = account(&app, &org).await;
    assert_eq!(
        (&state["tier"], &state["status"]),
        (&json!("lifetime"), &json!("active"))
    );
    app.caught_up().await;
    assert_eq!(ends_at_stripe(&log, &held).len(), 3, "ended once");
    assert_eq!(retirements(&app).await.len(), 1);
}

/// A subscription already ended at Stripe — by hand in its dashboard, or by a batch that
/// ended it and then did not commit (a crash, a conflict with the account's next webhook:
/// the batch is applied again) — is retired without being ended again: the retirement
/// asks Stripe how it stands first.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_already_ended_at_stripe_is_retired_without_ending_it_again() {
    let (app, org, log) = app_with_stripe().await;
    let held = "sub_ended_by_hand";
    let checkout = checkout_session(
        &org,
        json!({"organization_id": org, "purpose": "subscription_checkout", "tier": "pro"}),
        Some(held),
    );
    let paid = envelope("evt_sub", "checkout.session.completed", now(), checkout);
    assert_eq!(deliver(&app, &paid).await.0, StatusCode::OK);
    // Ended in Stripe's dashboard: the fake Stripe knows it as canceled from then on.
    log.lock().expect("the log").push(StripeRequest {
        method: "DELETE".into(),
        path: format!("/v1/subscriptions/{held}"),
        idempotency_key: None,
        authorization: None,
        body: String::new(),
    });
    assert_eq!(buy_lifetime(&app, &org, "evt_life").await.0, StatusCode::OK);
    app.caught_up().await;

    assert_eq!(
        ends_at_stripe(&log, held).len(),
        1,
        "the dashboard's end alone"
    );
    let asked = requests_to(&log)
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == format!("/v1/subscriptions/{held}"))
        .count();
    assert_eq!(asked, 1, "the retirement asked Stripe once");
    assert_retired_once(&app, &org, held, "evt_life").await;
}

/// Two plan checkouts opened before either was paid, both paid: the organization keeps
/// the plan paid first, and the second subscription is ended at Stripe, its unused time
/// credited (`prorate`), once, caused by the event that found it; nothing Stripe then
/// reports of it — its checkout, its end — changes the plan.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_plan_paid_for_is_ended_at_stripe_and_the_first_stays() {
    let (app, org, log) = app_with_stripe().await;
    // Both checkouts opened while the organization is free.
    for tier in ["pro", "team"] {
        let (status, body) = app
            .post(
                "/api/v1/billing/checkout",
                json!({"organization_id": org, "tier": tier}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = subscribe(&app, &org, "evt_pro", "pro").await;
    assert_eq!(status, StatusCode::OK);
    let mut team = subscription(&org, "team", "active", now());
    team["id"] = json!("sub_test_2");
    let paid = envelope(
        "evt_team_paid",
        "customer.subscription.updated",
        now(),
        team,
    );
    let (status, receipt) = deliver(&app, &paid).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    app.caught_up().await;

    let calls = ends_at_stripe(&log, "sub_test_2");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0].form.get("prorate").map(String::as_str),
        Some("true")
    );
    assert!(
        ends_at_stripe(&log, "sub_test_1").is_empty(),
        "the plan stays"
    );
    assert_retired_once(&app, &org, "sub_test_2", "evt_team_paid").await;

    // Its checkout, then its end, reported late.
    let checkout = checkout_session(
        &org,
        json!({"organization_id": org, "purpose": "subscription_checkout", "tier": "team"}),
        Some("sub_test_2"),
    );
    let mut gone = subscription(&org, "team", "canceled", now());
    gone["id"] = json!("sub_test_2");
    for late in [
        envelope(
            "evt_team_checkout",
            "checkout.session.completed",
            now(),
            checkout,
        ),
        envelope(
            "evt_team_gone",
            "customer.subscription.deleted",
            now(),
            gone,
        ),
    ] {
        let (status, receipt) = deliver(&app, &late).await;
        assert_eq!(status, StatusCode::OK, "{receipt}");
    }
    assert_eq!(
        fields(&app, &org, ["tier", "status", "stripe_subscription_id"]).await,
        [json!("pro"), json!("active"), json!("sub_test_1")]
    );
    app.caught_up().await;
    assert_eq!(ends_at_stripe(&log, "sub_test_2").len(), 1, "ended once");
    assert_eq!(retirements(&app).await.len(), 1);
}

/// A subscriber buying another plan changes plans: the checkout names the subscription
/// on file, in the session's and the new subscription's metadata; once paid, the new
/// one is the plan and the old one is ended at Stripe with its unused time credited —
/// while the new subscription is still pending, the plan stays.
#[tokio::test(flavor = "multi_thread")]
async fn buying_another_plan_changes_plans_once_paid() {
    let (app, org, log) = app_with_stripe().await;
    assert_eq!(
        subscribe(&app, &org, "evt_pro", "pro").await.0,
        StatusCode::OK
    );
    let (status, body) = app
        .post(
            "/api/v1/billing/checkout",
            json!({"organization_id": org, "tier": "team"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = requests_to(&log).pop().expect("the checkout");
    assert_eq!(sent.form["metadata[changes_plan_of]"], "sub_test_1");
    assert_eq!(
        sent.form["subscription_data[metadata][changes_plan_of]"],
        "sub_test_1"
    );
    assert_eq!(sent.form["metadata[tier]"], "team");

    // Stripe creates the new subscription pending its payment: nothing changes yet.
    let mut team = subscription(&org, "team", "incomplete", now());
    team["id"] = json!("sub_test_2");
    team["metadata"]["changes_plan_of"] = json!("sub_test_1");
    let created = envelope("evt_created", "customer.subscription.created", now(), team);
    assert_eq!(deliver(&app, &created).await.0, StatusCode::OK);
    assert_eq!(
        fields(&app, &org, ["tier", "status", "stripe_subscription_id"]).await,
        [json!("pro"), json!("active"), json!("sub_test_1")]
    );

    let mut checkout = checkout_session(
        &org,
        json!({"organization_id": org, "purpose": "subscription_checkout", "tier": "team",
               "changes_plan_of": "sub_test_1"}),
        Some("sub_test_2"),
    );
    checkout["id"] = json!("cs_test_team");
    let paid = envelope("evt_team", "checkout.session.completed", now(), checkout);
    let (status, receipt) = deliver(&app, &paid).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(
        fields(&app, &org, ["tier", "status", "stripe_subscription_id"]).await,
        [json!("team"), json!("active"), json!("sub_test_2")]
    );
    app.caught_up().await;
    let calls = ends_at_stripe(&log, "sub_test_1");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0].form.get("prorate").map(String::as_str),
        Some("true")
    );
    assert!(ends_at_stripe(&log, "sub_test_2").is_empty());
    assert_retired_once(&app, &org, "sub_test_1", "evt_team").await;

    // The old subscription's end, reported by Stripe, leaves the new plan.
    let mut gone = subscription(&org, "pro", "canceled", now());
    gone["id"] = json!("sub_test_1");
    let report = envelope("evt_pro_gone", "customer.subscription.deleted", now(), gone);
    assert_eq!(deliver(&app, &report).await.0, StatusCode::OK);
    assert_eq!(account(&app, &org).await["tier"], "team");
}

/// Stripe refusing for good to end one account's superseded subscription (a key without
/// the permission) holds no other account's behind it: the refusal is passed by, and the
/// subscription stays listed as ending on its account.
#[tokio::test(flavor = "multi_thread")]
async fn a_retirement_stripe_refuses_for_good_holds_no_other_behind_it() {
    let (app, org, log) = app_with_stripe().await;
    let other = id_of(
        &app.must(
            "/api/v1/organizations",
            json!({"name": "Other"}),
            StatusCode::CREATED,
        )
        .await,
    );
    let refused = format!("{FORBIDDEN_SUBSCRIPTION}_1");
    for (organization, subscription, n) in [(&org, refused.as_str(), 1), (&other, "sub_other", 2)] {
        let checkout = checkout_session(
            organization,
            json!({"organization_id": organization, "purpose": "subscription_checkout",
                   "tier": "pro"}),
            Some(subscription),
        );
        let paid = envelope(
            &format!("evt_sub_{n}"),
            "checkout.session.completed",
            now(),
            checkout,
        );
        assert_eq!(deliver(&app, &paid).await.0, StatusCode::OK);
        assert_eq!(
            buy_lifetime(&app, organization, &format!("evt_life_{n}"))
                .await
                .0,
            StatusCode::OK
        );
    }
    app.caught_up().await;
    assert_eq!(ends_at_stripe(&log, &refused).len(), 1, "tried once");
    assert_eq!(
        ends_at_stripe(&log, "sub_other").len(),
        1,
        "not held behind it"
    );
    assert_retired_once(&app, &other, "sub_other", "evt_life_2").await;
    assert_eq!(
        account(&app, &org).await["subscriptions_ending"],
        json!([refused])
    );
    assert_eq!(
        account(&app, &other).await["subscriptions_ending"],
        json!([])
    );
}

/// A subscriber whose payment failed (past due) may buy its plan again: the checkout
/// names the subscription on file, which the new one supersedes once paid — without
/// crediting the unpaid time (past due at Stripe when ended) — and the suspension ends,
/// whichever of the new subscription's reports comes first.
#[tokio::test(flavor = "multi_thread")]
async fn a_past_due_subscriber_buys_its_plan_again_and_the_unpaid_subscription_ends() {
    let (app, org, log) = app_with_stripe().await;
    let unpaid = format!("{UNPAID_SUBSCRIPTION}_1");
    let checkout = checkout_session(
        &org,
        json!({"organization_id": org, "purpose": "subscription_checkout", "tier": "pro"}),
        Some(&unpaid),
    );
    let paid = envelope("evt_pro", "checkout.session.completed", now(), checkout);
    assert_eq!(deliver(&app, &paid).await.0, StatusCode::OK);
    let failed = envelope(
        "evt_failed",
        "invoice.payment_failed",
        now(),
        invoice_of("cus_test_1", Some(&org), &unpaid),
    );
    assert_eq!(deliver(&app, &failed).await.0, StatusCode::OK);
    assert_eq!(account(&app, &org).await["status"], "past_due");
    let (status, body) = app
        .post(
            "/api/v1/billing/checkout",
            json!({"organization_id": org, "tier": "pro"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let sent = requests_to(&log).pop().expect("the checkout");
    assert_eq!(sent.form["metadata[changes_plan_of]"], unpaid);

    // The new subscription's update first, then its checkout.
    let mut again = subscription(&org, "pro", "active", now());
    again["id"] = json!("sub_test_2");
    again["metadata"]["changes_plan_of"] = json!(unpaid);
    let updated = envelope(
        "evt_again_paid",
        "customer.subscription.updated",
        now(),
        again,
    );
    assert_eq!(deliver(&app, &updated).await.0, StatusCode::OK);
    assert_eq!(
        fields(
            &app,
            &org,
            ["status", "suspended", "stripe_subscription_id"]
        )
        .await,
        [json!("active"), json!(false), json!("sub_test_2")]
    );
    let mut checkout = checkout_session(
        &org,
        json!({"organization_id": org, "purpose": "subscription_checkout", "tier": "pro",
               "changes_plan_of": unpaid}),
        Some("sub_test_2"),
    );
    checkout["id"] = json!("cs_test_again");
    let paid = envelope("evt_again", "checkout.session.completed", now(), checkout);
    assert_eq!(deliver(&app, &paid).await.0, StatusCode::OK);
    assert_eq!(
        fields(
            &app,
            &org,
            ["status", "suspended", "stripe_subscription_id"]
        )
        .await,
        [json!("active"), json!(false), json!("sub_test_2")]
    );
    app.caught_up().await;
    let calls = ends_at_stripe(&log, &unpaid);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].form.get("prorate"), None, "nothing paid to credit");
    // A retry of the old subscription's invoice failing changes nothing now.
    let retried = envelope(
        "evt_failed_again",
        "invoice.payment_failed",
        now(),
        invoice_of("cus_test_1", Some(&org), &unpaid),
    );
    assert_eq!(deliver(&app, &retried).await.0, StatusCode::OK);
    assert_eq!(account(&app, &org).await["status"], "active");
}

/// The fields `names` of `organization`'s billing account, in order.
async fn fields<const N: usize>(app: &TestApp, organization: &str, names: [&str; N]) -> [Value; N] {
    let state = account(app, organization).await;
    names.map(|name| state[name].clone())
}

/// The `DELETE`s of subscription `id` the fake Stripe received.
fn ends_at_stripe(log: &StripeLog, id: &str) -> Vec<Received> {
    requests_to(log)
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path == format!("/v1/subscriptions/{id}"))
        .collect()
}

/// Every `SubscriptionRetired` in the log: payload and metadata.
async fn retirements(app: &TestApp) -> Vec<(Value, Value)> {
    sqlx::query_as("select payload, metadata from events where event_type = 'SubscriptionRetired'")
        .fetch_all(&app.database.pool)
        .await
        .expect("the log")
}

/// The log holds one retirement, of `subscription`, by `subscription_retirement`, caused
/// by the account's application of Stripe event `stripe_event`.
async fn assert_retired_once(app: &TestApp, org: &str, subscription: &str, stripe_event: &str) {
    let (cause,): (i64,) = sqlx::query_as(
        "select sequence from events
          where aggregate_type = 'BillingAccount'
            and payload -> 'StripeEventApplied' ->> 'stripe_event_id' = $1",
    )
    .bind(stripe_event)
    .fetch_one(&app.database.pool)
    .await
    .expect("the cause");
    let retired = retirements(app).await;
    assert_eq!(retired.len(), 1, "{retired:?}");
    let (payload, metadata) = &retired[0];
    assert_eq!(
        payload["SubscriptionRetired"]["subscription_id"],
        subscription
    );
    assert_eq!(metadata["actor"], "system:subscription_retirement");
    assert_eq!(
        metadata["causation_id"],
        format!("BillingAccount/{org}/{cause}").as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stripe_event_has_one_effect_however_often_it_arrives() {
    let (app, org, _) = app_with_stripe().await;
    let credits = |id: &str| {
        envelope(
            id,
            "checkout.session.completed",
            now(),
            checkout_session(
                &org,
                json!({"organization_id": org, "purpose": "credit_purchase", "credits_cents": "2500"}),
                None,
            ),
        )
    };
    let once = credits("evt_dup_seq");
    let (_, first) = deliver(&app, &once).await;
    let (status, second) = deliver(&app, &once).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&first["outcome"], &second["outcome"]),
        (&json!("applied"), &json!("duplicate"))
    );
    assert_eq!(account(&app, &org).await["credits_cents"], 2500);

    let payload = credits("evt_dup_concurrent");
    let header = Webhook::generate_test_header(&payload, SECRET, None);
    let answers =
        futures_util::future::join_all((0..20).map(|_| deliver_signed(&app, &payload, &header)))
            .await;
    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::OK),
        "{answers:?}"
    );
    let applied = answers
        .iter()
        .filter(|(_, r)| r["outcome"] == "applied")
        .count();
    assert_eq!(applied, 1, "{answers:?}");
    assert_eq!(account(&app, &org).await["credits_cents"], 5000);
    let deliveries: i32 = sqlx::query_scalar(
        "select deliveries from stripe_webhook_events where id = 'evt_dup_concurrent'",
    )
    .fetch_one(&app.database.pool)
    .await
    .expect("recorded");
    assert_eq!(deliveries, 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_subscription_update_does_not_roll_back() {
    let (app, org, _) = app_with_stripe().await;
    let at = now();
    let newer = envelope(
        "evt_new",
        "customer.subscription.updated",
        at,
        subscription(&org, "team", "active", at),
    );
    let older = envelope(
        "evt_old",
        "customer.subscription.updated",
        at - 60,
        subscription(&org, "pro", "past_due", at - 60),
    );
    deliver(&app, &newer).await;
    let (status, receipt) = deliver(&app, &older).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(receipt["outcome"], "ignored");
    let state = account(&app, &org).await;
    assert_eq!(
        (&state["tier"], &state["status"]),
        (&json!("team"), &json!("active"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_stale_altered_and_malformed_deliveries_are_refused_and_write_nothing() {
    let (app, org, _) = app_with_stripe().await;
    let payload = envelope(
        "evt_x",
        "invoice.paid",
        now(),
        invoice("cus_test_1", Some(&org)),
    );
    let wrong = Webhook::generate_test_header(&payload, "whsec_someone_else", None);
    let stale = Webhook::generate_test_header(&payload, SECRET, Some(now() - 301));
    let altered = payload.replace("29900", "1");
    let good = Webhook::generate_test_header(&payload, SECRET, None);
    let garbage = "{not json";
    let garbage_header = Webhook::generate_test_header(garbage, SECRET, None);
    for (name, body, header, code) in [
        (
            "bad signature",
            payload.as_str(),
            wrong.as_str(),
            "bad_signature",
        ),
        (
            "expired timestamp",
            payload.as_str(),
            stale.as_str(),
            "stale_timestamp",
        ),
        (
            "altered body",
            altered.as_str(),
            good.as_str(),
            "bad_signature",
        ),
        (
            "malformed body",
            garbage,
            garbage_header.as_str(),
            "malformed_event",
        ),
        (
            "no signature scheme",
            payload.as_str(),
            "nonsense",
            "bad_signature",
        ),
    ] {
        let (status, body) = deliver_signed(&app, body, header).await;
        // Not from Stripe is a 401; from Stripe but not an event, a 400.
        let expected = match code {
            "malformed_event" => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        };
        assert_eq!(status, expected, "{name}: {body}");
        assert_eq!(body["code"], code, "{name}: {body}");
    }
    let response = app
        .client
        .post(format!("{}/api/v1/billing/webhooks/stripe", app.address))
        .body(payload.clone())
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "no header");
    let recorded: i64 = sqlx::query_scalar("select count(*) from stripe_webhook_events")
        .fetch_one(&app.database.pool)
        .await
        .expect("a count");
    assert_eq!(recorded, 0);
    assert_eq!(billing_events(&app).await, 0);
    // A rotated secret: signed with the old one, still configured, it is accepted.
    let old = Webhook::generate_test_header(&payload, OLD_SECRET, None);
    let (status, _) = deliver_signed(&app, &payload, &old).await;
    assert_eq!(status, StatusCode::OK);
    // Stripe signs with both during a rotation: several v1 signatures, one matching.
    let t = now();
    let both = format!(
        "{},v1={}",
        Webhook::generate_test_header(&altered, "whsec_unknown", Some(t)),
        Webhook::generate_test_header(&altered, SECRET, Some(t))
            .split("v1=")
            .nth(1)
            .expect("a v1")
    );
    let (status, body) = deliver_signed(&app, &altered, &both).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Without a signing secret no delivery can be verified: each is answered 503 (Stripe
/// retries it once the secret is configured), nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_a_signing_secret_asks_stripe_to_retry() {
    let app = omoi_testing::spawn_app().await;
    let payload = envelope("evt_early", "charge.refunded", now(), json!({"id": "ch_1"}));
    let (status, body) = deliver(&app, &payload).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "webhook_not_configured");
    assert_eq!(billing_events(&app).await, 0);
}

/// Checkout on a server without a Stripe key: 503 `billing_not_configured` without
/// `Retry-After` — a client told to retry in 2 s (as every other 503 tells it) would retry
/// for ever, since nothing changes until an operator sets the key.
#[tokio::test(flavor = "multi_thread")]
async fn checkout_on_a_server_without_stripe_names_no_time_to_retry() {
    let app = omoi_testing::spawn_app().await;
    let (organization, _) = app.organization_and_project().await;
    let response = app
        .client
        .post(format!("{}/api/v1/billing/checkout", app.address))
        .bearer_auth(app.token.as_deref().expect("a token"))
        .json(&json!({"organization_id": organization, "tier": "pro"}))
        .send()
        .await
        .expect("an answer");
    let (status, retry_after) = (
        response.status(),
        response.headers().get("retry-after").cloned(),
    );
    let problem: Value = response.json().await.expect("a problem document");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "billing_not_configured");
    assert_eq!(retry_after, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_type_is_recorded_without_effect() {
    let (app, org, _) = app_with_stripe().await;
    let payload = envelope(
        "evt_refund",
        "charge.refunded",
        now(),
        json!({"id": "ch_1", "object": "charge", "customer": "cus_test_1",
               "metadata": {"organization_id": org}}),
    );
    let (status, receipt) = deliver(&app, &payload).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(receipt["outcome"], "unhandled");
    let outcome: String =
        sqlx::query_scalar("select outcome from stripe_webhook_events where id = 'evt_refund'")
            .fetch_one(&app.database.pool)
            .await
            .expect("recorded");
    assert_eq!(outcome, "unhandled");
    assert_eq!(billing_events(&app).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_that_fails_answers_5xx_and_its_retry_succeeds() {
    let (app, org, _) = app_with_stripe().await;
    // An invoice of a customer not linked to any organization yet, created after the
    // checkout below (a checkout paid after an invoice's failure supersedes it): the
    // seconds they are stamped with must not decide the test.
    let early = envelope(
        "evt_early",
        "invoice.payment_failed",
        now() + 30,
        invoice("cus_test_1", None),
    );
    let (status, body) = deliver(&app, &early).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        account(&app, &org).await["suspended"],
        false,
        "nothing applied"
    );
    subscribe(&app, &org, "evt_checkout", "pro").await;
    // Stripe's retry of the same event now applies.
    let (status, receipt) = deliver(&app, &early).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    assert_eq!(receipt["outcome"], "applied");
    assert_eq!(account(&app, &org).await["suspended"], true);
}

async fn executable_spec(app: &TestApp, project: &str) -> String {
    let (status, spec) = app
        .post(
            "/api/v1/specs",
            json!({"project_id": project, "title": "Auth"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spec}");
    let id = spec["id"].as_str().expect("an id").to_string();
    let path = |action: &str| format!("/api/v1/specs/{id}/{action}");
    let (status, body) = app
        .post(
            &path("requirements"),
            json!({"id": "REQ-AUTH-001", "condition": "WHEN a user signs in",
                   "action": "THE SYSTEM SHALL issue a session", "acceptance_criteria": ["a token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post(&path("approve-requirements"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .put(
            &path("design"),
            json!({"architecture": "one service", "data_model": "users", "api_spec": "POST /login"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post(&path("approve-design"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .put(
            &path("plan"),
            json!({"tickets": [{"key": "TKT-1", "title": "Login form",
                                 "tasks": [{"key": "TSK-1", "title": "Form", "task_type": "implement"}]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn the_workflow_quota_is_enforced_with_402_and_lifted_by_an_upgrade() {
    let (app, org, _) = app_with_stripe().await;
    let (status, project) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": org, "name": "Billing"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let project = project["id"].as_str().expect("an id").to_string();
    let first = executable_spec(&app, &project).await;
    let second = executable_spec(&app, &project).await;
    let (status, body) = app
        .post(&format!("/api/v1/specs/{first}/approve-plan"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, refused) = app
        .post(&format!("/api/v1/specs/{second}/approve-plan"), json!({}))
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["code"], "workflow_quota_exceeded");
    let detail = refused["detail"].as_str().expect("a detail");
    assert!(
        detail.contains("free plan") && detail.contains("/api/v1/billing/checkout"),
        "{detail}"
    );
    let (_, spec) = app.get(&format!("/api/v1/specs/{second}")).await;
    assert_eq!(spec["state"]["phase"], "tasks", "nothing half-written");
    assert_eq!(account(&app, &org).await["usage"]["workflows_used"], 1);

    subscribe(&app, &org, "evt_up", "pro").await;
    let (status, body) = app
        .post(&format!("/api/v1/specs/{second}/approve-plan"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(account(&app, &org).await["usage"]["workflows_used"], 2);

    // A failed payment suspends: reading works, starting work does not.
    deliver(
        &app,
        &envelope(
            "evt_fail",
            "invoice.payment_failed",
            now(),
            invoice("cus_test_1", None),
        ),
    )
    .await;
    let third = executable_spec(&app, &project).await;
    let (status, refused) = app
        .post(&format!("/api/v1/specs/{third}/approve-plan"), json!({}))
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["code"], "account_suspended");
}

/// `count` pending tasks of one ticket in a new project of `org`: their ids.
async fn tasks_to_run(app: &TestApp, org: &str, count: usize) -> Vec<String> {
    let (status, project) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": org, "name": "Agents"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let project = project["id"].as_str().expect("an id").to_string();
    let (status, ticket) = app
        .post(
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Work"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let ticket = ticket["id"].as_str().expect("an id").to_string();
    let mut tasks = Vec::new();
    for n in 0..count {
        let (status, body) = app
            .post(
                "/api/v1/tasks",
                json!({"ticket_id": ticket, "title": format!("t{n}"), "task_type": "implement"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        tasks.push(body["id"].as_str().expect("an id").to_string());
    }
    tasks
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plans_concurrency_cap_limits_claims_until_an_upgrade() {
    let (app, org, _) = app_with_stripe().await;
    tasks_to_run(&app, &org, 3).await;
    let (status, agent) = app
        .post(
            "/api/v1/agents/register",
            json!({"organization_id": org, "agent_type": "worker", "capacity": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let claim = format!(
        "/api/v1/agents/{}/claim",
        agent["id"].as_str().expect("an id")
    );
    let (status, body) = app.post(&claim, json!({"wait_seconds": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The free plan allows one task held at a time.
    let (status, body) = app.post(&claim, json!({"wait_seconds": 0})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let upgrade = subscription(&org, "team", "active", now());
    deliver(
        &app,
        &envelope("evt_team", "customer.subscription.created", now(), upgrade),
    )
    .await;
    let (status, body) = app.post(&claim, json!({"wait_seconds": 5})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A person's assignment keeps to the plan as a claim does: on the free plan (one task
/// held at a time) a second task is refused with 402 while the first is held, and counts
/// against the agents' claims; after an upgrade it is assigned; once a failed payment
/// suspends the account, nothing is.
#[tokio::test(flavor = "multi_thread")]
async fn a_persons_assignment_keeps_to_the_plans_cap_and_stops_while_suspended() {
    let (app, org, _) = app_with_stripe().await;
    let tasks = tasks_to_run(&app, &org, 4).await;
    let mut agents = Vec::new();
    for _ in 0..3 {
        let (status, agent) = app
            .post(
                "/api/v1/agents/register",
                json!({"organization_id": org, "agent_type": "worker"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{agent}");
        agents.push(agent["id"].as_str().expect("an id").to_string());
    }
    let assign = |task: &str, agent: &str| {
        let (path, body) = (
            format!("/api/v1/tasks/{task}/assign"),
            json!({"agent_id": agent}),
        );
        let app = &app;
        async move { app.post(&path, body).await }
    };
    let status_of = |task: &str| {
        let path = format!("/api/v1/tasks/{task}");
        let app = &app;
        async move { app.get(&path).await.1["state"]["status"].clone() }
    };

    let (status, body) = assign(&tasks[0], &agents[0]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, refused) = assign(&tasks[1], &agents[1]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["code"], "concurrency_cap_reached", "{refused}");
    assert_eq!(
        status_of(&tasks[1]).await,
        "pending",
        "nothing half-written"
    );
    // The person's assignment holds the organization's one place against claims too.
    let (status, body) = app
        .post(
            &format!("/api/v1/agents/{}/claim", agents[2]),
            json!({"wait_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    let upgrade = subscription(&org, "team", "active", now());
    deliver(
        &app,
        &envelope("evt_team", "customer.subscription.created", now(), upgrade),
    )
    .await;
    let (status, body) = assign(&tasks[1], &agents[1]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    deliver(
        &app,
        &envelope(
            "evt_fail",
            "invoice.payment_failed",
            now(),
            invoice("cus_test_1", None),
        ),
    )
    .await;
    assert_eq!(account(&app, &org).await["suspended"], true);
    let (status, refused) = assign(&tasks[2], &agents[2]).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["code"], "account_suspended", "{refused}");
    assert_eq!(
        status_of(&tasks[2]).await,
        "pending",
        "nothing half-written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn checkout_and_portal_call_stripe_with_the_exact_fields_and_idempotency_key() {
    let (app, org, log) = app_with_stripe().await;
    let (status, none) = app
        .post("/api/v1/billing/portal", json!({"organization_id": org}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{none}");
    assert_eq!(none["code"], "no_stripe_customer");

    // The client's idempotency key, sent twice (a retry), then not at all.
    let checkout_with_key = || async {
        let response = app
            .client
            .post(format!("{}/api/v1/billing/checkout", app.address))
            .bearer_auth(app.token.as_deref().expect("a token"))
            .header("idempotency-key", "order-42")
            .json(&json!({"organization_id": org, "tier": "pro"}))
            .send()
            .await
            .expect("an answer");
        let status = response.status();
        (status, response.json::<Value>().await.expect("JSON"))
    };
    let (status, session) = checkout_with_key().await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(
        session["url"],
        "https://checkout.stripe.com/c/pay/cs_test_a1"
    );
    let (status, again) = checkout_with_key().await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let (status, credits) = app
        .post(
            "/api/v1/billing/checkout",
            json!({"organization_id": org, "credits_cents": 2500}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{credits}");
    for (body, code) in [
        (json!({"organization_id": org}), "tier_or_credits"),
        (
            json!({"organization_id": org, "tier": "free"}),
            "tier_not_purchasable",
        ),
        (
            json!({"organization_id": org, "tier": "enterprise"}),
            "tier_not_purchasable",
        ),
        (
            json!({"organization_id": org, "credits_cents": 5}),
            "credits_out_of_range",
        ),
        (
            json!({"organization_id": org, "tier": "pro", "credits_cents": 500}),
            "tier_or_credits",
        ),
    ] {
        let (status, answer) = app.post("/api/v1/billing/checkout", body).await;
        // A plan without a price is refused for what the configuration says (409); the
        // rest for the request itself (422).
        let expected = match code {
            "tier_not_purchasable" => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        assert_eq!(status, expected, "{answer}");
        assert_eq!(answer["code"], code);
    }

    let received = requests_to(&log);
    assert_eq!(received.len(), 3, "{received:?}");
    let pro = &received[0];
    assert_eq!(pro.path, "/v1/checkout/sessions");
    assert_eq!(pro.authorization.as_deref(), Some("Bearer sk_test_omoi"));
    let expected: BTreeMap<String, String> = [
        ("client_reference_id", org.as_str()),
        ("metadata[organization_id]", org.as_str()),
        ("metadata[purpose]", "subscription_checkout"),
        ("metadata[tier]", "pro"),
        ("mode", "subscription"),
        ("success_url", "https://omoi.test/billing/done"),
        ("cancel_url", "https://omoi.test/billing/cancel"),
        ("subscription_data[metadata][organization_id]", org.as_str()),
        ("subscription_data[metadata][tier]", "pro"),
        ("line_items[0][quantity]", "1"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "29900"),
        ("line_items[0][price_data][recurring][interval]", "month"),
        ("line_items[0][price_data][product_data][name]", "omoi pro"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(pro.form, expected);
    let key = pro.idempotency_key.clone().expect("an idempotency key");
    assert!(key.starts_with("checkout-") && key.len() > 40, "{key}");
    assert_eq!(
        received[1].idempotency_key,
        Some(key.clone()),
        "a retry reuses the key"
    );
    let other = received[2].idempotency_key.clone().expect("a key");
    assert_ne!(other, key, "another purchase has its own");
    assert_eq!(received[2].form["mode"], "payment");
    assert_eq!(received[2].form["metadata[purpose]"], "credit_purchase");
    assert_eq!(received[2].form["metadata[credits_cents]"], "2500");
    assert_eq!(
        received[2].form["line_items[0][price_data][unit_amount]"],
        "2500"
    );

    // Once Stripe has told us the customer, the portal opens for it.
    subscribe(&app, &org, "evt_paid", "pro").await;
    let (status, portal) = app
        .post("/api/v1/billing/portal", json!({"organization_id": org}))
        .await;
    assert_eq!(status, StatusCode::OK, "{portal}");
    assert_eq!(portal["url"], "https://billing.stripe.com/p/session/test_1");
    let received = requests_to(&log);
    let portal_call = received.last().expect("a portal call");
    assert_eq!(portal_call.path, "/v1/billing_portal/sessions");
    assert_eq!(portal_call.form["customer"], "cus_test_1");
    assert_eq!(portal_call.form["return_url"], "https://omoi.test/billing");
    assert!(portal_call.idempotency_key.is_some());
    // The plan it has is not sold again, and nothing reaches Stripe.
    let sent = requests_to(&log).len();
    let (status, answer) = app
        .post(
            "/api/v1/billing/checkout",
            json!({"organization_id": org, "tier": "pro"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["code"], "already_subscribed");
    assert_eq!(requests_to(&log).len(), sent);
    // The way up, the lifetime plan, is sold; its checkout names the paying customer.
    let (status, answer) = app
        .post(
            "/api/v1/billing/checkout",
            json!({"organization_id": org, "tier": "lifetime"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let received = requests_to(&log);
    assert_eq!(
        received.last().map(|r| r.form.get("customer").cloned()),
        Some(Some("cus_test_1".to_string()))
    );
    // Once the account is lifetime, no plan is sold to it.
    buy_lifetime(&app, &org, "evt_forever").await;
    for tier in ["pro", "lifetime"] {
        let (status, answer) = app
            .post(
                "/api/v1/billing/checkout",
                json!({"organization_id": org, "tier": tier}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
        assert_eq!(answer["code"], "lifetime_plan");
    }
    // The client's key of the first purchase, sent with another: Stripe refuses it, and
    // the client is told so (not a bare 502).
    let response = app
        .client
        .post(format!("{}/api/v1/billing/checkout", app.address))
        .bearer_auth(app.token.as_deref().expect("a token"))
        .header("idempotency-key", "order-42")
        .json(&json!({"organization_id": org, "credits_cents": 2500}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let answer: Value = response.json().await.expect("JSON");
    assert_eq!(answer["code"], "idempotency_key_reused", "{answer}");
}

/// Approving a plan and counting its workflow are one transaction: concurrent approvals
/// of one spec count one workflow, and the losers are told the spec moved on (409), not
/// that the plan is spent (402) by counts that were about to be given back.
#[tokio::test(flavor = "multi_thread")]
async fn approving_a_plan_and_counting_its_workflow_commit_together() {
    let (app, org, _) = app_with_stripe().await;
    let (status, project) = app
        .post(
            "/api/v1/projects",
            json!({"organization_id": org, "name": "Together"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{project}");
    let project = project["id"].as_str().expect("an id").to_string();
    let spec = executable_spec(&app, &project).await;
    let path = format!("/api/v1/specs/{spec}/approve-plan");
    let answers = futures_util::future::join_all((0..8).map(|_| app.post(&path, json!({})))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|(s, _)| s.as_u16()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        vec![200, 409, 409, 409, 409, 409, 409, 409],
        "{answers:?}"
    );
    assert_eq!(account(&app, &org).await["usage"]["workflows_used"], 1);
    let (together, billing_events): (i64, i64) = sqlx::query_as(
        "select count(distinct transaction_id)
                    filter (where event_type in ('SpecPlanApproved', 'WorkflowStarted')),
                count(*) filter (where event_type in ('WorkflowStarted', 'WorkflowCancelled'))
           from events
          where aggregate_id in ($1, $2)",
    )
    .bind(&spec)
    .bind(&org)
    .fetch_one(&app.database.pool)
    .await
    .expect("the log");
    assert_eq!(
        together, 1,
        "the approval and the count share a transaction"
    );
    assert_eq!(billing_events, 1, "nothing counted and given back");
}

/// An invoice of a customer omoi has not linked, naming no organization, is answered 503
/// while its customer's link may still come (the checkout's event arriving after it):
/// once the link is there, its retry applies. An hour after its first delivery, one still
/// unresolved is not omoi's (a payment link on the same Stripe account): it is settled,
/// 200 `unresolved`, kept — where before every retry for three days was answered 503, for
/// each renewal of such a subscription, until Stripe disabled the endpoint. The hour runs
/// from its arrival, not from Stripe's creation: a backlog Stripe delivers late still
/// waits for the links delivered with it.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_of_no_known_customer_is_retried_for_an_hour_then_settled() {
    let (app, org, _) = app_with_stripe().await;
    // Created after the checkout below (a checkout paid after an invoice's failure
    // supersedes it): the seconds they are stamped with must not decide the test.
    let early = envelope(
        "evt_before_link",
        "invoice.payment_failed",
        now() + 30,
        invoice("cus_test_1", None),
    );
    let (status, body) = deliver(&app, &early).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "organization_unresolved", "{body}");
    let (status, receipt) = subscribe(&app, &org, "evt_link", "team").await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    let (status, receipt) = deliver(&app, &early).await;
    assert_eq!(
        (status, &receipt["outcome"]),
        (StatusCode::OK, &json!("applied")),
        "{receipt}"
    );
    assert_eq!(account(&app, &org).await["status"], "past_due");

    let before = billing_events(&app).await;
    let foreign = |id: &str, created: i64| {
        envelope(
            id,
            "invoice.paid",
            created,
            invoice_of("cus_foreign", None, "sub_foreign"),
        )
    };
    let late = foreign("evt_foreign_old", now() - 7_200);
    let (status, body) = deliver(&app, &late).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // An hour of retries later.
    sqlx::query(
        "update stripe_webhook_events set received_at = received_at - interval '61 minutes'
          where id = 'evt_foreign_old'",
    )
    .execute(&app.database.pool)
    .await
    .expect("moved back");
    for _ in 0..2 {
        let (status, receipt) = deliver(&app, &late).await;
        assert_eq!(
            (status, &receipt["outcome"]),
            (StatusCode::OK, &json!("unresolved")),
            "{receipt}"
        );
    }
    let (outcome, deliveries): (String, i32) = sqlx::query_as(
        "select outcome, deliveries from stripe_webhook_events where id = 'evt_foreign_old'",
    )
    .fetch_one(&app.database.pool)
    .await
    .expect("the delivery is kept");
    assert_eq!((outcome.as_str(), deliveries), ("unresolved", 3));
    assert_eq!(billing_events(&app).await, before, "no account changed");
}
