//! The driver's HTTP client: sends each request to a random replica, and remembers every
//! command it sent — by the `X-Request-Id` it chose, which the server writes into the
//! metadata of the events the command appends — with what the driver saw of it.
//!
//! A command is retried on another replica only when it certainly never reached a
//! server (the connection was refused). Any other failure leaves it *ambiguous*: it may
//! or may not have committed, and retrying a create would make a second ticket — a
//! doubling the client caused. The checks then hold every command to what was seen:
//! acknowledged → in the log exactly once, refused → never, ambiguous → at most once.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

/// What the driver saw of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Answered 2xx: committed (or, for a claim answered 204, nothing to commit).
    Acknowledged,
    /// Answered 4xx: refused, nothing written.
    Refused,
    /// No answer, or 5xx: it may or may not have committed.
    Ambiguous,
    /// Every replica refused the connection until the deadline: never sent.
    Unsent,
}

/// One command the driver sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub request_id: String,
    pub kind: &'static str,
    pub seen: Seen,
    /// For an acknowledged command: whether its answer says it wrote events (a claim
    /// answered 204 and a duplicate Stripe delivery write none).
    pub writes: bool,
}

/// Every command sent, shared by the driver's tasks.
#[derive(Default)]
pub struct Ledger(Mutex<Vec<Sent>>);

impl Ledger {
    fn record(&self, sent: Sent) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sent);
    }

    pub fn entries(&self) -> Vec<Sent> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// An answer: the status (none when there was no answer) and the JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: Option<StatusCode>,
    pub body: Value,
    pub seen: Seen,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.seen == Seen::Acknowledged
    }

    /// The `id` of the answer's body.
    pub fn id(&self) -> Option<String> {
        self.body["id"].as_str().map(str::to_string)
    }

    pub fn is(&self, status: StatusCode) -> bool {
        self.status == Some(status)
    }
}

/// A request to send.
pub struct Request<'a> {
    pub method: Method,
    pub path: String,
    pub body: Body,
    /// The credential (`Authorization: Bearer`); empty: none.
    pub token: &'a str,
    /// How long the server may take to answer (a claim waits longer).
    pub timeout: Duration,
}

/// A request's body.
pub enum Body {
    None,
    Json(Value),
    /// Sent exactly as given (a signed Stripe event), with these headers.
    Raw {
        text: String,
        headers: Vec<(&'static str, String)>,
    },
}

/// Sends requests to the replicas.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    replicas: Arc<Vec<String>>,
    ledger: Arc<Ledger>,
    rng: Arc<Mutex<StdRng>>,
}

/// How long a request keeps looking for a replica that accepts connections.
const FIND_A_REPLICA_WITHIN: Duration = Duration::from_secs(30);

impl Client {
    pub fn new(replicas: Vec<String>, ledger: Arc<Ledger>, seed: u64) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()?,
            replicas: Arc::new(replicas),
            ledger,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        })
    }

    /// A random replica's base URL.
    pub fn replica(&self) -> &str {
        let n = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gen_range(0..self.replicas.len());
        &self.replicas[n]
    }

    /// A random number below `n` (the driver's choices, from the run's seed).
    pub fn below(&self, n: usize) -> usize {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .gen_range(0..n.max(1))
    }

    /// Sends a command of `kind` and records what was seen of it.
    pub async fn command(&self, kind: &'static str, request: Request<'_>) -> Answer {
        let request_id = format!("chaos-{}", Uuid::now_v7());
        let answer = self.send(&request, Some(&request_id)).await;
        let writes = answer.ok() && !answer.is(StatusCode::NO_CONTENT);
        self.ledger.record(Sent {
            request_id,
            kind,
            seen: answer.seen,
            writes,
        });
        answer
    }

    /// A read: retried on any failure until the deadline (reads change nothing).
    pub async fn read(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let deadline = Instant::now() + FIND_A_REPLICA_WITHIN;
        loop {
            let request = Request {
                method: Method::GET,
                path: path.to_string(),
                body: Body::None,
                token,
                timeout: Duration::from_secs(10),
            };
            let answer = self.send(&request, None).await;
            if answer.ok() {
                return Ok(answer.body);
            }
            if answer.seen == Seen::Refused || Instant::now() >= deadline {
                anyhow::bail!("GET {path}: {:?} {}", answer.status, answer.body);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends to random replicas until one accepts the connection; classifies the answer.
    pub async fn send(&self, request: &Request<'_>, request_id: Option<&str>) -> Answer {
        let deadline = Instant::now() + FIND_A_REPLICA_WITHIN;
        loop {
            match self.builder(request, request_id).send().await {
                Ok(response) => return answer(response).await,
                // Nothing reached a server: another replica may take it.
                Err(error) if error.is_connect() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) if error.is_connect() => return unanswered(Seen::Unsent),
                Err(_) => return unanswered(Seen::Ambiguous),
            }
        }
    }
}

impl Client {
    fn builder(&self, request: &Request<'_>, request_id: Option<&str>) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.replica(), request.path);
        let mut builder = self
            .http
            .request(request.method.clone(), url)
            .timeout(request.timeout);
        if !request.token.is_empty() {
            builder = builder.bearer_auth(request.token);
        }
        if let Some(id) = request_id {
            builder = builder.header("x-request-id", id);
        }
        match &request.body {
            Body::None => builder,
            Body::Json(body) => builder.json(body),
            Body::Raw { text, headers } => headers
                .iter()
                .fold(builder, |b, (name, value)| b.header(*name, value))
                .header("content-type", "application/json")
                .body(text.clone()),
        }
    }
}

fn unanswered(seen: Seen) -> Answer {
    Answer {
        status: None,
        body: Value::Null,
        seen,
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    // A body cut off by a dying replica: the status was sent, so the outcome is known.
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let seen = if status.is_success() {
        Seen::Acknowledged
    } else if status.is_client_error() {
        Seen::Refused
    } else {
        Seen::Ambiguous
    };
    Answer {
        status: Some(status),
        body,
        seen,
    }
}
