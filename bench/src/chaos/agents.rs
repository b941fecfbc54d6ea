//! HTTP agents, as an agent runtime outside omoi runs them: register (as the owner, for
//! the agent's own credential), heartbeat, claim, start, report progress, complete —
//! against whichever replica answers, carrying on when one dies mid-request.
//!
//! After an ambiguous step the agent reads the task to learn what happened (a start or
//! completion that committed before its answer was lost is found done). A claim whose
//! answer was lost leaves a task assigned to the agent that it never heard of; the
//! server gives such a task back (`worker.start_within_ms`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::client::{Answer, Client, Seen};
use super::workload::{request, Setup, HTTP_CAPABILITY};

/// What the HTTP agents did.
#[derive(Debug, Default, Clone)]
pub struct AgentStats {
    pub registered: usize,
    pub claims: usize,
    pub claimed: usize,
    pub ambiguous_claims: usize,
    pub completed: usize,
    /// Tasks taken back from the agent (failed by the sweep, or found no longer its own).
    pub abandoned: usize,
}

/// Every agent id the HTTP agents ever had (to tell their assignments from the workers').
pub type AgentIds = Arc<Mutex<HashSet<String>>>;

struct Agent {
    id: String,
    credential: String,
}

/// How long a claim waits for a task.
const CLAIM_WAIT_SECONDS: u64 = 1;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(400);

/// One HTTP agent until `stop`; registers a new agent when the current one is failed
/// (e.g. the sweep found it silent while the machine was starved).
pub async fn run(
    client: Client,
    setup: Arc<Setup>,
    ids: AgentIds,
    stop: Arc<AtomicBool>,
) -> AgentStats {
    let mut stats = AgentStats::default();
    while !stop.load(Ordering::Relaxed) {
        let Some(agent) = register(&client, &setup).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        stats.registered += 1;
        ids.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(agent.id.clone());
        let alive = Arc::new(AtomicBool::new(true));
        let beating = tokio::spawn(heartbeat(
            client.clone(),
            agent.id.clone(),
            agent.credential.clone(),
            alive.clone(),
        ));
        work(&client, &agent, &stop, &mut stats).await;
        alive.store(false, Ordering::Relaxed);
        let _ = beating.await;
        if stop.load(Ordering::Relaxed) {
            terminate(&client, &setup, &agent).await;
        }
    }
    stats
}

/// Retires the agent when the run is over, as a runtime shutting down does (a silent
/// agent would be failed by the sweep a few seconds later, while the checks run).
async fn terminate(client: &Client, setup: &Setup, agent: &Agent) {
    let path = format!("/api/v1/agents/{}/status", agent.id);
    let body = json!({"to": "terminated", "reason": "the chaos run is over"});
    client
        .command(
            "terminate agent",
            request(Method::POST, path, body, &setup.token),
        )
        .await;
}

async fn register(client: &Client, setup: &Setup) -> Option<Agent> {
    let body = json!({
        "organization_id": setup.organization, "agent_type": "worker",
        "capabilities": [HTTP_CAPABILITY], "capacity": 1,
    });
    let answer = client
        .command(
            "register agent",
            request(
                Method::POST,
                "/api/v1/agents/register".into(),
                body,
                &setup.token,
            ),
        )
        .await;
    Some(Agent {
        id: answer.id().filter(|_| answer.ok())?,
        credential: answer.body["credential"].as_str()?.to_string(),
    })
}

async fn heartbeat(client: Client, agent: String, credential: String, alive: Arc<AtomicBool>) {
    while alive.load(Ordering::Relaxed) {
        let path = format!("/api/v1/agents/{agent}/heartbeat");
        client
            .send(&request(Method::POST, path, json!({}), &credential), None)
            .await;
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

/// Claims and runs tasks until `stop`, or until the agent may no longer work.
async fn work(client: &Client, agent: &Agent, stop: &AtomicBool, stats: &mut AgentStats) {
    while !stop.load(Ordering::Relaxed) {
        let mut claim = request(
            Method::POST,
            format!("/api/v1/agents/{}/claim", agent.id),
            json!({"wait_seconds": CLAIM_WAIT_SECONDS}),
            &agent.credential,
        );
        claim.timeout = Duration::from_secs(CLAIM_WAIT_SECONDS + 10);
        let answer = client.command("claim", claim).await;
        stats.claims += 1;
        match answer.seen {
            Seen::Acknowledged if answer.is(StatusCode::OK) => {
                stats.claimed += 1;
                match answer.id() {
                    Some(task) if run_task(client, agent, &task).await => stats.completed += 1,
                    _ => stats.abandoned += 1,
                }
            }
            Seen::Acknowledged | Seen::Unsent => {}
            Seen::Ambiguous => stats.ambiguous_claims += 1,
            // Failed (silent too long) or terminated: a new agent takes over.
            Seen::Refused if answer.is(StatusCode::CONFLICT) => return,
            Seen::Refused => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Starts, reports and completes the task; true when it ended completed by this agent.
async fn run_task(client: &Client, agent: &Agent, task: &str) -> bool {
    if !step(client, agent, task, "start", json!({}), "running").await {
        return false;
    }
    let progress = json!({"message": "chaos: half way"});
    step(client, agent, task, "progress", progress, "running").await;
    let result = json!({"result": {"by": "chaos http agent"}});
    step(client, agent, task, "complete", result, "completed").await
}

/// Sends a lifecycle step until its outcome is known; true when the task is then in
/// `expected` status and still this agent's.
async fn step(
    client: &Client,
    agent: &Agent,
    task: &str,
    action: &'static str,
    body: Value,
    expected: &str,
) -> bool {
    for _ in 0..20 {
        let answer: Answer = client
            .command(
                action,
                request(
                    Method::POST,
                    format!("/api/v1/tasks/{task}/{action}"),
                    body.clone(),
                    &agent.credential,
                ),
            )
            .await;
        match answer.seen {
            Seen::Acknowledged => return true,
            Seen::Unsent => continue,
            // Refused: maybe an earlier, ambiguous attempt committed; maybe the task
            // was taken back. Ambiguous: look before sending it again.
            Seen::Refused | Seen::Ambiguous => match state_of(client, agent, task).await {
                Some((status, holder)) if holder.as_deref() == Some(agent.id.as_str()) => {
                    if status == expected {
                        return true;
                    }
                    if answer.seen == Seen::Refused {
                        return false;
                    }
                }
                Some(_) => return false,
                None => {}
            },
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The task's status and the agent it is assigned to, as its aggregate says.
async fn state_of(client: &Client, agent: &Agent, task: &str) -> Option<(String, Option<String>)> {
    let path = format!("/api/v1/tasks/{task}");
    let body = client.read(&path, &agent.credential).await.ok()?;
    let status = body["state"]["status"].as_str()?.to_string();
    let holder = body["state"]["assigned_agent_id"]
        .as_str()
        .map(str::to_string);
    Some((status, holder))
}
