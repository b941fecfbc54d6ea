//! LLM trajectory analysis (optional; off unless `monitoring.llm.base_url` is set): each
//! running task's recent transcript, with its task and spec, goes to an OpenAI-compatible
//! `/chat/completions` asking for a JSON-schema answer — `{alignment_score, needs_steering,
//! steering_message, reason}` — recorded on the task as `TrajectoryAssessed` (with the
//! model and tokens used); `needs_steering` steers the agent (source `trajectory`).
//!
//! It never holds the deterministic monitoring back: a pass runs in its own task while the
//! worker goes on, and a new pass starts only when the last has ended. Each task is
//! assessed at most once per `interval_ms` across replicas (a claim in
//! `trajectory_claims`), and each call — retries included — spends one of the
//! organization's `calls_per_hour` (`llm_usage`); an organization past its budget is
//! skipped until the next hour. A call times out after `timeout_ms` and is retried
//! `max_retries` times after `retry_backoff_ms`, doubling; an answer that is not the
//! schema's JSON counts as a failure. A task whose calls all failed is left alone until
//! its next interval.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use omoi_domain::spec::Spec;
use omoi_domain::task::{Task, TaskCommand, TrajectoryAssessment};
use omoi_domain::ticket::Ticket;
use omoi_store::transcripts;
use omoi_store::{Actor, CommandBus, CommandContext};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// `monitoring.llm` in the settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// The OpenAI-compatible API's base (`https://api.openai.com/v1`); unset, trajectory
    /// analysis is off. The key comes from `OMOI_LLM_API_KEY`.
    pub base_url: Option<String>,
    pub model: String,
    /// How often each running task is assessed.
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub retry_backoff_ms: u64,
    /// Calls (retries included) one organization may make per hour.
    pub calls_per_hour: u32,
    /// The transcript's newest lines sent.
    pub transcript_lines: u32,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            base_url: None,
            model: "gpt-4o-mini".into(),
            interval_ms: 600_000,
            timeout_ms: 30_000,
            max_retries: 2,
            retry_backoff_ms: 1_000,
            calls_per_hour: 60,
            transcript_lines: 200,
        }
    }
}

/// Why a call gave no assessment.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the LLM did not answer within {0} ms")]
    Timeout(u64),
    #[error("the LLM answered HTTP {0}")]
    Status(u16),
    #[error("the LLM could not be reached: {0}")]
    Transport(String),
    #[error("the LLM's answer is not the assessment asked for: {0}")]
    Malformed(String),
    #[error("the organization's LLM budget for this hour is spent")]
    OverBudget,
    #[error("the database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What the LLM is told of one running task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskContext {
    pub task_id: Uuid,
    pub organization_id: Uuid,
    pub title: String,
    pub description: String,
    pub task_type: String,
    pub attempt: u32,
    /// The agent running the attempt assessed: the assessment (and its steering) is
    /// recorded only while that agent still holds the task.
    pub agent_id: Option<Uuid>,
}

const INSTRUCTIONS: &str = "You supervise an autonomous coding agent. Given its task, the \
    spec it serves and the newest lines of its transcript, judge whether it is working \
    toward the task. Answer with alignment_score from 0 (off course) to 1 (on course), \
    needs_steering, a short steering_message for the agent when it needs steering (else \
    null), and the reason for your judgement.";

/// The JSON schema the answer must follow (OpenAI's `response_format`).
fn response_format() -> Value {
    json!({
        "type": "json_schema",
        "json_schema": {
            "name": "trajectory_assessment",
            "strict": true,
            "schema": {
                "type": "object",
                "additionalProperties": false,
                "required": ["alignment_score", "needs_steering", "steering_message", "reason"],
                "properties": {
                    "alignment_score": {"type": "number", "minimum": 0, "maximum": 1},
                    "needs_steering": {"type": "boolean"},
                    "steering_message": {"type": ["string", "null"]},
                    "reason": {"type": "string"}
                }
            }
        }
    })
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    content: Option<String>,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    alignment_score: f64,
    needs_steering: bool,
    steering_message: Option<String>,
    reason: String,
}

/// The assessment in a `/chat/completions` answer's body.
fn parse_answer(body: &[u8], model: &str) -> Result<TrajectoryAssessment, LlmError> {
    let completion: Completion =
        serde_json::from_slice(body).map_err(|e| LlmError::Malformed(e.to_string()))?;
    let content = completion
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or_else(|| LlmError::Malformed("no message content".into()))?;
    let answer: Answer =
        serde_json::from_str(&content).map_err(|e| LlmError::Malformed(e.to_string()))?;
    if !(0.0..=1.0).contains(&answer.alignment_score) {
        return Err(LlmError::Malformed(format!(
            "alignment_score {} is not between 0 and 1",
            answer.alignment_score
        )));
    }
    Ok(TrajectoryAssessment {
        alignment_score: answer.alignment_score,
        needs_steering: answer.needs_steering,
        steering_message: answer.steering_message.filter(|m| !m.trim().is_empty()),
        reason: answer.reason,
        model: model.to_string(),
        prompt_tokens: completion.usage.prompt_tokens,
        completion_tokens: completion.usage.completion_tokens,
    })
}

/// Calls the LLM for the worker.
pub struct Assessor {
    client: reqwest::Client,
    config: LlmConfig,
    endpoint: String,
    api_key: Option<String>,
}

impl Assessor {
    /// `None` when trajectory analysis is off (no `base_url`).
    pub fn new(config: &LlmConfig) -> Option<Self> {
        let base = config.base_url.as_deref()?.trim_end_matches('/');
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .build()
            .ok()?;
        Some(Self {
            client,
            endpoint: format!("{base}/chat/completions"),
            config: config.clone(),
            api_key: std::env::var("OMOI_LLM_API_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
        })
    }

    pub fn interval_ms(&self) -> u64 {
        self.config.interval_ms
    }

    /// One call, no retry.
    async fn call(&self, prompt: &str) -> Result<TrajectoryAssessment, LlmError> {
        let body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": prompt},
            ],
            "response_format": response_format(),
        });
        let mut request = self.client.post(&self.endpoint).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(LlmError::Status(status.as_u16()));
        }
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        parse_answer(&bytes, &self.config.model)
    }

    fn transport(&self, error: reqwest::Error) -> LlmError {
        if error.is_timeout() {
            LlmError::Timeout(self.config.timeout_ms)
        } else {
            LlmError::Transport(error.to_string())
        }
    }

    /// Calls with retries, each call spent from the organization's budget first.
    async fn assess(
        &self,
        pool: &PgPool,
        organization_id: Uuid,
        prompt: &str,
        now: DateTime<Utc>,
    ) -> Result<TrajectoryAssessment, LlmError> {
        let mut backoff = Duration::from_millis(self.config.retry_backoff_ms);
        let mut attempt = 0;
        loop {
            if !spend(pool, organization_id, now, self.config.calls_per_hour).await? {
                return Err(LlmError::OverBudget);
            }
            match self.call(prompt).await {
                Ok(assessment) => return Ok(assessment),
                Err(error) if attempt >= self.config.max_retries => return Err(error),
                Err(error) => {
                    tracing::info!(%error, attempt, "trajectory: retrying the LLM");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }
}

/// Claims `task_id` for an assessment at `now`: true for exactly one caller per interval.
async fn claim(
    pool: &PgPool,
    task_id: Uuid,
    interval_ms: u64,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let claimed: Option<i32> = sqlx::query_scalar(
        "insert into trajectory_claims (task_id, claimed_at) values ($1, $3)
         on conflict (task_id) do update set claimed_at = excluded.claimed_at
          where trajectory_claims.claimed_at
                <= excluded.claimed_at - make_interval(secs => $2::float8 / 1000)
         returning 1",
    )
    .bind(task_id)
    .bind(interval_ms as f64)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    Ok(claimed.is_some())
}

/// Spends one call of the organization's budget for `now`'s hour: false when it is spent.
async fn spend(
    pool: &PgPool,
    organization_id: Uuid,
    now: DateTime<Utc>,
    budget: u32,
) -> sqlx::Result<bool> {
    if budget == 0 {
        return Ok(false);
    }
    let spent: Option<i32> = sqlx::query_scalar(
        "insert into llm_usage (organization_id, hour, calls)
         values ($1, date_trunc('hour', $2::timestamptz), 1)
         on conflict (organization_id, hour) do update set calls = llm_usage.calls + 1
          where llm_usage.calls < $3
         returning calls",
    )
    .bind(organization_id)
    .bind(now)
    .bind(i32::try_from(budget).unwrap_or(i32::MAX))
    .fetch_optional(pool)
    .await?;
    Ok(spent.is_some())
}

/// What the LLM reads of a task: the task, its spec's title and requirements when it has
/// one, and the newest lines of its attempt's transcript.
async fn prompt(
    pool: &PgPool,
    bus: &CommandBus,
    task: &TaskContext,
    lines: u32,
) -> sqlx::Result<String> {
    let count = transcripts::count(pool, task.task_id, task.attempt).await?;
    let after = (count - i64::from(lines)).max(0);
    let tail = transcripts::read(
        pool,
        task.task_id,
        task.attempt,
        after,
        i64::from(lines),
        transcripts::MAX_PAGE_BYTES,
    )
    .await?;
    let spec = spec_of(bus, task.task_id).await;
    let transcript: Vec<&str> = tail.iter().map(|l| l.text.as_str()).collect();
    Ok(json!({
        "task": {
            "title": task.title,
            "description": task.description,
            "type": task.task_type,
            "attempt": task.attempt,
        },
        "spec": spec,
        "transcript": transcript,
    })
    .to_string())
}

/// The spec a task's ticket implements, briefly: its title and requirements.
async fn spec_of(bus: &CommandBus, task_id: Uuid) -> Value {
    let Ok(Some((task, _))) = bus.load::<Task>(&task_id.to_string()).await else {
        return Value::Null;
    };
    let Some(ticket_id) = task.ticket_id else {
        return Value::Null;
    };
    let Ok(Some((ticket, _))) = bus.load::<Ticket>(&ticket_id.to_string()).await else {
        return Value::Null;
    };
    let Some(spec_id) = ticket.spec_id else {
        return json!({"ticket": ticket.title});
    };
    let Ok(Some((spec, _))) = bus.load::<Spec>(&spec_id.to_string()).await else {
        return json!({"ticket": ticket.title});
    };
    let requirements: Vec<String> = spec
        .requirements
        .iter()
        .map(|r| {
            format!(
                "{}: WHEN {} THE SYSTEM SHALL {}",
                r.id, r.condition, r.action
            )
        })
        .collect();
    json!({"ticket": ticket.title, "title": spec.title, "requirements": requirements})
}

/// One pass over `tasks`: each claimed one is assessed and the assessment recorded.
pub async fn assess_all(
    assessor: Arc<Assessor>,
    pool: PgPool,
    bus: Arc<CommandBus>,
    tasks: Vec<TaskContext>,
    now: DateTime<Utc>,
) {
    for task in tasks {
        match claim(&pool, task.task_id, assessor.interval_ms(), now).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(%error, "trajectory: cannot claim a task");
                continue;
            }
        }
        let prompt = match prompt(&pool, &bus, &task, assessor.config.transcript_lines).await {
            Ok(prompt) => prompt,
            Err(error) => {
                tracing::warn!(%error, "trajectory: cannot read a transcript");
                continue;
            }
        };
        let assessment = match assessor
            .assess(&pool, task.organization_id, &prompt, now)
            .await
        {
            Ok(assessment) => assessment,
            Err(error) => {
                tracing::warn!(task_id = %task.task_id, %error, "trajectory: no assessment");
                continue;
            }
        };
        // The steering id comes from the claim, so a retried command records it once.
        let name = format!("trajectory/{}/{}", task.task_id, now.timestamp_millis());
        let assess = TaskCommand::AssessTrajectory {
            assessment,
            steering_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()),
            at: now,
        };
        // The pass may take minutes (one model call after another): a task reassigned
        // meanwhile must not have its new agent steered over the old one's transcript.
        let command = match task.agent_id {
            Some(agent_id) => TaskCommand::AsHolder {
                agent_id,
                assignment: None,
                command: Box::new(assess),
            },
            None => assess,
        };
        let context = CommandContext::new(
            Actor::System("trajectory"),
            format!("worker:trajectory:{}", Uuid::now_v7()),
        );
        if let Err(error) = bus
            .execute::<Task>(&task.task_id.to_string(), command, &context)
            .await
        {
            tracing::info!(task_id = %task.task_id, %error, "trajectory: assessment not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(content: &str) -> Vec<u8> {
        json!({
            "choices": [{"message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_valid_answer_becomes_an_assessment_with_its_usage() {
        let body = completion(
            r#"{"alignment_score":0.4,"needs_steering":true,
                "steering_message":"Back to the failing test.","reason":"refactoring instead"}"#,
        );
        let assessment = parse_answer(&body, "m").expect("an assessment");
        assert_eq!(assessment.alignment_score, 0.4);
        assert!(assessment.needs_steering);
        assert_eq!(
            assessment.steering_message.as_deref(),
            Some("Back to the failing test.")
        );
        assert_eq!(
            (assessment.prompt_tokens, assessment.completion_tokens),
            (120, 30)
        );
        assert_eq!(assessment.model, "m");
    }

    #[test]
    fn anything_else_is_malformed() {
        for body in [
            b"not json".to_vec(),
            json!({"choices": []}).to_string().into_bytes(),
            completion("not json either"),
            completion(
                r#"{"alignment_score":2,"needs_steering":false,"steering_message":null,"reason":"x"}"#,
            ),
            completion(
                r#"{"alignment_score":0.5,"needs_steering":false,"reason":"x","extra":1,"steering_message":null}"#,
            ),
            completion(r#"{"needs_steering":false,"steering_message":null,"reason":"x"}"#),
        ] {
            assert!(
                matches!(parse_answer(&body, "m"), Err(LlmError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    #[test]
    fn off_without_a_base_url() {
        assert!(Assessor::new(&LlmConfig::default()).is_none());
        let on = LlmConfig {
            base_url: Some("http://127.0.0.1:9/v1/".into()),
            ..LlmConfig::default()
        };
        let assessor = Assessor::new(&on).expect("on");
        assert_eq!(assessor.endpoint, "http://127.0.0.1:9/v1/chat/completions");
    }
}
