//! What the driver does to the replicas: the setup (an owner, an organization on a plan
//! that lets ten agents work at once, two projects), ticket lives sent by several lanes at
//! a steady rate, and Stripe deliveries — each event delivered more than once, to
//! different replicas, sometimes at the same instant, as Stripe does after a timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{Answer, Body, Client, Request, Seen};

/// The password of the run's owner.
const PASSWORD: &str = "Chaos-run-0wner!";
/// Tasks that need it are run by HTTP agents only (the workers' agents lack it).
pub const HTTP_CAPABILITY: &str = "http";
/// Each credit purchase the driver delivers.
pub const CREDITS_PER_EVENT: i64 = 100;

/// What the setup made.
#[derive(Debug, Clone)]
pub struct Setup {
    pub token: String,
    pub organization: String,
    pub projects: Vec<String>,
    pub webhook_secret: String,
}

pub fn request<'a>(method: Method, path: String, body: Value, token: &'a str) -> Request<'a> {
    Request {
        method,
        path,
        body: Body::Json(body),
        token,
        timeout: Duration::from_secs(10),
    }
}

/// Sends a setup command until it is acknowledged (an ambiguous one is sent again: at
/// worst an unused organization or project is left behind).
async fn until_acknowledged(
    client: &Client,
    kind: &'static str,
    path: &str,
    body: Value,
    token: &str,
) -> anyhow::Result<Answer> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = client
            .command(
                kind,
                request(Method::POST, path.into(), body.clone(), token),
            )
            .await;
        match answer.seen {
            Seen::Acknowledged => return Ok(answer),
            Seen::Refused => anyhow::bail!("{path} refused: {:?} {}", answer.status, answer.body),
            Seen::Ambiguous | Seen::Unsent => {
                anyhow::ensure!(Instant::now() < deadline, "{path}: no answer in time");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

impl Setup {
    /// Registers the owner, creates the organization and its projects, and subscribes the
    /// organization to the `team` plan through a signed Stripe delivery.
    pub async fn create(client: &Client, webhook_secret: String) -> anyhow::Result<Self> {
        let email = format!("chaos-{}@example.com", uuid::Uuid::now_v7().simple());
        let credentials = json!({"email": email, "password": PASSWORD});
        // Accounts are rows, not events: these two are not in the ledger.
        let registered = client
            .send(
                &request(
                    Method::POST,
                    "/api/v1/auth/register".into(),
                    credentials.clone(),
                    "",
                ),
                None,
            )
            .await;
        anyhow::ensure!(
            registered.ok(),
            "register: {:?} {}",
            registered.status,
            registered.body
        );
        let login = client
            .send(
                &request(Method::POST, "/api/v1/auth/login".into(), credentials, ""),
                None,
            )
            .await;
        anyhow::ensure!(login.ok(), "login: {:?} {}", login.status, login.body);
        let token = login.body["access_token"]
            .as_str()
            .context("a token")?
            .to_string();
        let organization = until_acknowledged(
            client,
            "create organization",
            "/api/v1/organizations",
            json!({"name": "Chaos"}),
            &token,
        )
        .await?
        .id()
        .context("an organization id")?;
        let mut projects = Vec::new();
        for name in ["Chaos A", "Chaos B"] {
            // The driver counts the tasks it creates: none spawned for its tickets.
            let body = json!({"organization_id": organization, "name": name,
                              "settings": {"auto_spawn_tasks": false}});
            let project =
                until_acknowledged(client, "create project", "/api/v1/projects", body, &token)
                    .await?;
            projects.push(project.id().context("a project id")?);
        }
        let setup = Self {
            token,
            organization,
            projects,
            webhook_secret,
        };
        setup.subscribe_to_team(client).await?;
        Ok(setup)
    }

    async fn subscribe_to_team(&self, client: &Client) -> anyhow::Result<()> {
        let org = &self.organization;
        let metadata =
            json!({"organization_id": org, "purpose": "subscription_checkout", "tier": "team"});
        let session = checkout_session(org, metadata, Some("sub_chaos"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .deliver(client, &stripe_event("evt_chaos_team", session.clone()))
            .await
            .ok()
        {
            anyhow::ensure!(Instant::now() < deadline, "the team plan was not applied");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Delivers a Stripe event, signed as Stripe signs it.
    pub async fn deliver(&self, client: &Client, payload: &str) -> Answer {
        let request = Request {
            method: Method::POST,
            path: "/api/v1/billing/webhooks/stripe".into(),
            body: Body::Raw {
                text: payload.to_string(),
                headers: vec![(
                    "stripe-signature",
                    stripe_signature(payload, &self.webhook_secret),
                )],
            },
            token: "",
            timeout: Duration::from_secs(10),
        };
        client.send(&request, None).await
    }
}

/// A Stripe event envelope around `object`.
fn stripe_event(id: &str, object: Value) -> String {
    json!({
        "id": id, "object": "event", "api_version": "2026-09-30.clover",
        "created": chrono::Utc::now().timestamp(), "data": {"object": object},
        "livemode": false, "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": "checkout.session.completed"
    })
    .to_string()
}

/// A completed checkout session, with the fields Stripe sends.
fn checkout_session(organization: &str, metadata: Value, subscription: Option<&str>) -> Value {
    json!({
        "id": format!("cs_chaos_{}", uuid::Uuid::now_v7().simple()), "object": "checkout.session",
        "amount_subtotal": 29900, "amount_total": 29900, "client_reference_id": organization,
        "currency": "usd", "customer": "cus_chaos",
        "customer_details": {"email": "owner@example.com"}, "livemode": false,
        "metadata": metadata,
        "mode": if subscription.is_some() { "subscription" } else { "payment" },
        "payment_status": "paid", "status": "complete", "subscription": subscription,
        "success_url": "https://omoi.test/billing/done", "url": null
    })
}

/// Stripe's `Stripe-Signature`: `t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload">`.
fn stripe_signature(payload: &str, secret: &str) -> String {
    let timestamp = chrono::Utc::now().timestamp();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{timestamp}.{payload}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// What the lanes and the deliveries did.
#[derive(Debug, Default, Clone)]
pub struct Driven {
    pub tickets: usize,
    pub tasks: usize,
    /// Stripe events delivered, and those acknowledged at least once.
    pub stripe_events: Vec<(String, bool)>,
    pub stripe_deliveries: usize,
}

/// One lane: ticket lives, one command every `interval`, until `stop`.
pub async fn lane(
    client: Client,
    setup: Arc<Setup>,
    lane: usize,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> Driven {
    let mut driven = Driven::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let life = Life {
            client: &client,
            setup: &setup,
            interval,
            name: format!("chaos {lane}.{n}"),
        };
        life.run(&mut driven).await;
        n += 1;
    }
    driven
}

/// One ticket's life: created, moved, given two tasks (the second waits for the first),
/// blocked, renamed, unblocked, moved on. A step whose ticket is unknown (its creation
/// was ambiguous) is skipped.
struct Life<'a> {
    client: &'a Client,
    setup: &'a Setup,
    interval: Duration,
    name: String,
}

impl Life<'_> {
    async fn run(&self, driven: &mut Driven) {
        let project = &self.setup.projects[self.client.below(self.setup.projects.len())];
        let created = self
            .post(
                "create ticket",
                "/api/v1/tickets".into(),
                json!({"project_id": project, "title": self.name}),
            )
            .await;
        let Some(ticket) = created.id().filter(|_| created.ok()) else {
            return;
        };
        driven.tickets += 1;
        let to = |status: &str| json!({"ticket_id": ticket, "to": status});
        self.post("move", "/api/v1/board/move".into(), to("analyzing"))
            .await;
        let mut previous: Option<String> = None;
        for t in 0..2 {
            if let Some(task) = self.task(&ticket, t, previous.as_deref()).await {
                driven.tasks += 1;
                previous = Some(task);
            }
        }
        let path = |action: &str| format!("/api/v1/tickets/{ticket}/{action}");
        let block = json!({"reason": "environment", "note": "chaos"});
        self.post("block", path("block"), block).await;
        let rename = json!({"title": format!("{} renamed", self.name)});
        self.send(
            "rename",
            Method::PATCH,
            format!("/api/v1/tickets/{ticket}"),
            rename,
        )
        .await;
        self.post("unblock", path("unblock"), json!({})).await;
        self.post("transition", path("transition"), json!({"to": "building"}))
            .await;
    }

    /// Creates task `t` of the ticket, after `after` when given; a third of the tasks
    /// need the HTTP agents' capability.
    async fn task(&self, ticket: &str, t: usize, after: Option<&str>) -> Option<String> {
        let capabilities = if self.client.below(3) == 0 {
            vec![HTTP_CAPABILITY]
        } else {
            vec![]
        };
        let body = json!({
            "ticket_id": ticket, "title": format!("{} task {t}", self.name),
            "task_type": "implement", "depends_on": after.into_iter().collect::<Vec<_>>(),
            "required_capabilities": capabilities, "max_retries": 20,
        });
        let created = self.post("create task", "/api/v1/tasks".into(), body).await;
        created.id().filter(|_| created.ok())
    }

    async fn post(&self, kind: &'static str, path: String, body: Value) -> Answer {
        self.send(kind, Method::POST, path, body).await
    }

    async fn send(&self, kind: &'static str, method: Method, path: String, body: Value) -> Answer {
        let answer = self
            .client
            .command(kind, request(method, path, body, &self.setup.token))
            .await;
        tokio::time::sleep(self.interval).await;
        answer
    }
}

/// Delivers a new credit purchase every second until `stop`: each twice (to random
/// replicas, half of the time at the same instant), then again until one delivery was
/// acknowledged, as Stripe retries.
pub async fn stripe(client: Client, setup: Arc<Setup>, stop: Arc<AtomicBool>) -> Driven {
    let mut driven = Driven::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("evt_chaos_credits_{n}");
        let payload = credit_purchase(&setup.organization, &id);
        let (first, second) = if client.below(2) == 0 {
            tokio::join!(
                setup.deliver(&client, &payload),
                setup.deliver(&client, &payload)
            )
        } else {
            let first = setup.deliver(&client, &payload).await;
            (first, setup.deliver(&client, &payload).await)
        };
        driven.stripe_deliveries += 2;
        let mut acknowledged = first.ok() || second.ok();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !acknowledged && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            acknowledged = setup.deliver(&client, &payload).await.ok();
            driven.stripe_deliveries += 1;
        }
        driven.stripe_events.push((id, acknowledged));
        n += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    driven
}

fn credit_purchase(organization: &str, id: &str) -> String {
    let metadata = json!({"organization_id": organization, "purpose": "credit_purchase",
                          "credits_cents": CREDITS_PER_EVENT.to_string()});
    stripe_event(id, checkout_session(organization, metadata, None))
}
