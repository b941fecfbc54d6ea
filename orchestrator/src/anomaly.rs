//! The Guardian's anomaly readings: what each agent's attempts looked like, folded from
//! the log as the worker reads it, and the composite score of every agent that may take
//! work, read from that and the queue at a pass (`guardian::AnomalyParts`):
//!
//! * **latency** — its attempts' durations ÷ the median of their type's completed ones
//!   in its organization (a moving average, and any attempt it runs now if slower);
//! * **errors** — a moving average of its attempts' failures (failed, timed out);
//! * **resource skew** — its share of a project's held work against its fair share
//!   (1 ÷ the agents that serve the project), the worst of its projects;
//! * **queue impact** — the open tasks waiting on tasks it holds.
//!
//! The fold keeps a few numbers per agent and the last [`DURATION_SAMPLES`] durations per
//! task type, so it costs nothing as the log grows; every worker folds it from the start
//! of the log as it folds the queue.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use omoi_domain::agent::{AgentEvent, AgentStatus};
use omoi_domain::guardian::AnomalyParts;
use omoi_domain::task::TaskEvent;
use omoi_store::StoredEvent;
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::queue::Queue;

/// Completed attempts per (organization, task type) whose durations make its median.
pub const DURATION_SAMPLES: usize = 51;
/// Fewer completed attempts of a type than this, and its median says nothing yet.
const MIN_SAMPLES: usize = 3;
/// Weight of the newest attempt in the moving averages.
const ALPHA: f64 = 0.3;

/// An agent as the readings need it.
#[derive(Debug, Clone)]
struct Watched {
    organization_id: Uuid,
    project_id: Option<Uuid>,
    status: AgentStatus,
    /// Anomalous readings in a row, as the agent's own events say.
    streak: u32,
    /// Moving average of attempt duration ÷ its type's median (`None` before the first
    /// attempt that had a median to compare with).
    latency_ratio: Option<f64>,
    error_rate: f64,
}

/// One agent's reading at a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub agent_id: Uuid,
    pub organization_id: Uuid,
    pub parts: AnomalyParts,
    /// Anomalous readings in a row before this one.
    pub streak: u32,
}

impl Reading {
    /// Whether the agent's own log should hear of it: an anomalous reading, or a normal
    /// one that ends a run.
    pub fn matters(&self) -> bool {
        self.parts.is_anomalous() || self.streak > 0
    }
}

#[derive(Debug, Default)]
pub struct AnomalyTracker {
    agents: HashMap<Uuid, Watched>,
    /// (organization, task type) → the newest completed attempts' durations, in ms.
    durations: HashMap<(Uuid, String), VecDeque<f64>>,
}

fn median(samples: &VecDeque<f64>) -> Option<f64> {
    if samples.len() < MIN_SAMPLES {
        return None;
    }
    let mut sorted: Vec<f64> = samples.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    };
    // A type whose attempts take no measurable time compares against 1 ms.
    Some(median.max(1.0))
}

fn moving(average: Option<f64>, sample: f64) -> f64 {
    average.map_or(sample, |a| ALPHA * sample + (1.0 - ALPHA) * a)
}

impl AnomalyTracker {
    /// Applies one event of the log, before the queue does (an attempt's end needs the
    /// task as it was while running).
    pub fn apply(&mut self, stored: &StoredEvent, queue: &Queue) {
        let Ok(id) = stored.aggregate_id.parse::<Uuid>() else {
            return;
        };
        match stored.aggregate_type.as_str() {
            "Agent" => {
                if let Ok(event) = stored.payload.decode::<AgentEvent>() {
                    self.apply_agent(id, event);
                }
            }
            "Task" => {
                if let Ok(event) = stored.payload.decode::<TaskEvent>() {
                    self.apply_task(id, &event, queue);
                }
            }
            _ => {}
        }
    }

    fn apply_agent(&mut self, id: Uuid, event: AgentEvent) {
        match event {
            AgentEvent::AgentRegistered {
                organization_id,
                project_id,
                ..
            } => {
                self.agents.entry(id).or_insert(Watched {
                    organization_id,
                    project_id,
                    status: AgentStatus::Spawning,
                    streak: 0,
                    latency_ratio: None,
                    error_rate: 0.0,
                });
            }
            AgentEvent::AgentStatusChanged { to, .. } => {
                if to == AgentStatus::Terminated {
                    self.agents.remove(&id);
                } else if let Some(agent) = self.agents.get_mut(&id) {
                    agent.status = to;
                    if to == AgentStatus::Quarantined {
                        agent.streak = 0;
                    }
                }
            }
            AgentEvent::AnomalyDetected { streak, .. } => {
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.streak = streak;
                }
            }
            AgentEvent::AnomalySubsided { .. } => {
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.streak = 0;
                }
            }
            AgentEvent::AgentCapabilitiesUpdated { .. } | AgentEvent::GuardianIntervened { .. } => {
            }
        }
    }

    fn apply_task(&mut self, id: Uuid, event: &TaskEvent, queue: &Queue) {
        let (ended_at, failed) = match event {
            TaskEvent::TaskCompleted { at, .. }
            | TaskEvent::TaskSubmittedForValidation { at, .. } => (*at, false),
            TaskEvent::TaskFailed { at, .. } | TaskEvent::TaskTimedOut { at, .. } => (*at, true),
            _ => return,
        };
        let Some(task) = queue.task(id) else {
            return;
        };
        let (Some(agent_id), Some(started_at)) = (task.agent_id, task.started_at) else {
            return;
        };
        let organization_id = task.organization_id;
        let duration = (ended_at - started_at).num_milliseconds().max(0) as f64;
        let samples = self
            .durations
            .entry((organization_id, task.task_type.clone()))
            .or_default();
        let ratio = median(samples).map(|median| duration / median);
        if !failed {
            if samples.len() == DURATION_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(duration);
        }
        if let Some(agent) = self.agents.get_mut(&agent_id) {
            if let Some(ratio) = ratio {
                agent.latency_ratio = Some(moving(agent.latency_ratio, ratio));
            }
            agent.error_rate = moving(Some(agent.error_rate), if failed { 1.0 } else { 0.0 });
        }
    }

    /// Every agent that may take work (of an organization `serves` accepts), read at
    /// `now` from its history and what it holds in `queue`.
    pub fn readings(
        &self,
        queue: &Queue,
        now: DateTime<Utc>,
        serves: impl Fn(Uuid) -> bool,
    ) -> Vec<Reading> {
        // Held work per project and per (agent, project); a slow attempt's ratio; the
        // tasks waiting on each agent's work: one walk over the held tasks.
        let mut held_in_project: HashMap<Uuid, usize> = HashMap::new();
        let mut held: HashMap<(Uuid, Uuid), usize> = HashMap::new();
        let mut slowest: HashMap<Uuid, f64> = HashMap::new();
        let mut waiting: HashMap<Uuid, usize> = HashMap::new();
        for task in queue.active() {
            let Some(agent_id) = task.agent_id else {
                continue;
            };
            *held_in_project.entry(task.project_id).or_default() += 1;
            *held.entry((agent_id, task.project_id)).or_default() += 1;
            *waiting.entry(agent_id).or_default() += queue.waiting_dependents(task.id);
            let median = self
                .durations
                .get(&(task.organization_id, task.task_type.clone()))
                .and_then(median);
            if let (Some(started), Some(median)) = (task.started_at, median) {
                let ratio = (now - started).num_milliseconds().max(0) as f64 / median;
                let slowest = slowest.entry(agent_id).or_insert(0.0);
                *slowest = slowest.max(ratio);
            }
        }
        // Agents serving each (organization, project) — their own project's, and the
        // organization-wide ones for every project.
        let mut serving: HashMap<(Uuid, Option<Uuid>), usize> = HashMap::new();
        for agent in self.agents.values().filter(|a| a.status.takes_work()) {
            *serving
                .entry((agent.organization_id, agent.project_id))
                .or_default() += 1;
        }
        let mut skew: HashMap<Uuid, (f64, f64)> = HashMap::new();
        for (&(agent_id, project_id), &count) in &held {
            let Some(agent) = self.agents.get(&agent_id) else {
                continue;
            };
            let serving_project = serving
                .get(&(agent.organization_id, Some(project_id)))
                .copied()
                .unwrap_or(0)
                + serving
                    .get(&(agent.organization_id, None))
                    .copied()
                    .unwrap_or(0);
            let share = count as f64 / held_in_project[&project_id] as f64;
            let fair = 1.0 / serving_project.max(1) as f64;
            let worst = skew.entry(agent_id).or_insert((0.0, 1.0));
            if AnomalyParts::resource_skew(share, fair)
                > AnomalyParts::resource_skew(worst.0, worst.1)
            {
                *worst = (share, fair);
            }
        }
        let mut readings: Vec<Reading> = self
            .agents
            .iter()
            .filter(|(_, agent)| agent.status.takes_work() && serves(agent.organization_id))
            .map(|(&agent_id, agent)| {
                let ratio = agent
                    .latency_ratio
                    .unwrap_or(0.0)
                    .max(slowest.get(&agent_id).copied().unwrap_or(0.0));
                let (share, fair) = skew.get(&agent_id).copied().unwrap_or((0.0, 1.0));
                Reading {
                    agent_id,
                    organization_id: agent.organization_id,
                    parts: AnomalyParts::observed(
                        ratio,
                        agent.error_rate,
                        share,
                        fair,
                        waiting.get(&agent_id).copied().unwrap_or(0),
                    ),
                    streak: agent.streak,
                }
            })
            .collect();
        readings.sort_by_key(|r| r.agent_id);
        readings
    }
}

/// Records a pass's readings, each agent's replacing its last (one statement).
pub async fn record(pool: &PgPool, readings: &[Reading], at: DateTime<Utc>) -> sqlx::Result<()> {
    if readings.is_empty() {
        return Ok(());
    }
    let column = |part: fn(&Reading) -> f64| readings.iter().map(part).collect::<Vec<f64>>();
    sqlx::query(
        "insert into agent_anomaly_readings
             (agent_id, organization_id, score, latency, errors, resource_skew, queue_impact,
              streak, read_at)
         select *, $9::timestamptz from unnest($1::uuid[], $2::uuid[], $3::float8[],
                $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::int4[])
         on conflict (agent_id) do update
             set score = excluded.score, latency = excluded.latency, errors = excluded.errors,
                 resource_skew = excluded.resource_skew, queue_impact = excluded.queue_impact,
                 streak = excluded.streak, read_at = excluded.read_at",
    )
    .bind(readings.iter().map(|r| r.agent_id).collect::<Vec<_>>())
    .bind(
        readings
            .iter()
            .map(|r| r.organization_id)
            .collect::<Vec<_>>(),
    )
    .bind(column(|r| r.parts.score()))
    .bind(column(|r| r.parts.latency))
    .bind(column(|r| r.parts.errors))
    .bind(column(|r| r.parts.resource_skew))
    .bind(column(|r| r.parts.queue_impact))
    .bind(
        readings
            .iter()
            .map(|r| i32::try_from(r.streak).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(at)
    .execute(pool)
    .await?;
    Ok(())
}

/// An agent's latest anomaly reading, as the health route shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordedReading {
    /// `0.35 latency + 0.30 errors + 0.20 resource_skew + 0.15 queue_impact`, 0..1; at
    /// 0.8 or more three readings in a row, the Guardian quarantines the agent.
    pub score: f64,
    pub parts: AnomalyParts,
    /// Anomalous readings in a row before this one.
    pub streak: u32,
    pub read_at: DateTime<Utc>,
}

/// The latest scores of `agent_ids` (those never read left out).
pub async fn scores(pool: &PgPool, agent_ids: &[Uuid]) -> sqlx::Result<HashMap<Uuid, f64>> {
    let rows: Vec<(Uuid, f64)> = sqlx::query_as(
        "select agent_id, score from agent_anomaly_readings where agent_id = any($1)",
    )
    .bind(agent_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The latest reading of `agent_id`, if it was ever read.
pub async fn latest(pool: &PgPool, agent_id: Uuid) -> sqlx::Result<Option<RecordedReading>> {
    let row: Option<ReadingRow> = sqlx::query_as(
        "select score, latency, errors, resource_skew, queue_impact, streak, read_at
           from agent_anomaly_readings where agent_id = $1",
    )
    .bind(agent_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| RecordedReading {
        score: row.score,
        parts: AnomalyParts {
            latency: row.latency,
            errors: row.errors,
            resource_skew: row.resource_skew,
            queue_impact: row.queue_impact,
        },
        streak: u32::try_from(row.streak).unwrap_or(0),
        read_at: row.read_at,
    }))
}

#[derive(sqlx::FromRow)]
struct ReadingRow {
    score: f64,
    latency: f64,
    errors: f64,
    resource_skew: f64,
    queue_impact: f64,
    streak: i32,
    read_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use omoi_domain::common::{Phase, Priority};
    use serde_json::json;

    struct Log {
        organization_id: Uuid,
        project_id: Uuid,
        sequence: HashMap<Uuid, u64>,
        tracker: AnomalyTracker,
        queue: Queue,
        t0: DateTime<Utc>,
    }

    impl Log {
        fn new() -> Self {
            Self {
                organization_id: Uuid::now_v7(),
                project_id: Uuid::now_v7(),
                sequence: HashMap::new(),
                tracker: AnomalyTracker::default(),
                queue: Queue::default(),
                t0: Utc::now(),
            }
        }

        fn at(&self, seconds: i64) -> DateTime<Utc> {
            self.t0 + Duration::seconds(seconds)
        }

        fn append(&mut self, kind: &str, id: Uuid, payload: serde_json::Value) {
            let sequence = self.sequence.entry(id).or_default();
            *sequence += 1;
            let event_type = payload
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .expect("an externally tagged event");
            let stored = StoredEvent {
                aggregate_type: kind.into(),
                aggregate_id: id.to_string(),
                sequence: *sequence as i64,
                global_position: 1,
                transaction_id: 1,
                event_type,
                event_version: "1".into(),
                payload: payload.into(),
                metadata: json!({
                    "organization_id": self.organization_id,
                    "project_id": self.project_id
                })
                .into(),
            };
            self.tracker.apply(&stored, &self.queue);
            self.queue.apply(&stored);
        }

        fn agent(&mut self, status: &str) -> Uuid {
            let id = Uuid::now_v7();
            let registered = AgentEvent::AgentRegistered {
                agent_id: id,
                organization_id: self.organization_id,
                project_id: Some(self.project_id),
                name: "a".into(),
                agent_type: Default::default(),
                capabilities: Default::default(),
                capacity: 10,
                registered_at: self.t0,
            };
            self.append(
                "Agent",
                id,
                serde_json::to_value(registered).expect("an event serializes"),
            );
            if status != "spawning" {
                let to: AgentStatus = serde_json::from_value(json!(status)).expect("a status");
                let changed = AgentEvent::AgentStatusChanged {
                    from: AgentStatus::Spawning,
                    to,
                    reason: None,
                    at: self.t0,
                };
                self.append(
                    "Agent",
                    id,
                    serde_json::to_value(changed).expect("an event serializes"),
                );
            }
            id
        }

        fn task(&mut self, depends_on: Vec<Uuid>) -> Uuid {
            let id = Uuid::now_v7();
            let created = TaskEvent::TaskCreated {
                task_id: id,
                organization_id: self.organization_id,
                project_id: self.project_id,
                ticket_id: Uuid::now_v7(),
                title: "t".into(),
                description: String::new(),
                task_type: "implement".into(),
                phase: Phase::default(),
                priority: Priority::Medium,
                depends_on,
                required_capabilities: vec![],
                max_retries: 3,
                timeout_seconds: None,
                created_at: self.t0,
            };
            self.append(
                "Task",
                id,
                serde_json::to_value(created).expect("an event serializes"),
            );
            id
        }

        fn start(&mut self, task: Uuid, agent: Uuid, second: i64) {
            let assigned = TaskEvent::TaskAssigned {
                agent_id: agent,
                at: self.at(second),
            };
            self.append(
                "Task",
                task,
                serde_json::to_value(assigned).expect("an event serializes"),
            );
            let started = TaskEvent::TaskStarted {
                at: self.at(second),
            };
            self.append(
                "Task",
                task,
                serde_json::to_value(started).expect("an event serializes"),
            );
        }

        /// A task run by `agent` from `from` to `to` seconds, completed or failed.
        fn attempt(&mut self, agent: Uuid, from: i64, to: i64, failed: bool) -> Uuid {
            let task = self.task(vec![]);
            self.start(task, agent, from);
            let end = if failed {
                TaskEvent::TaskFailed {
                    error: "boom".into(),
                    attempt: 1,
                    at: self.at(to),
                }
            } else {
                TaskEvent::TaskCompleted {
                    result: json!({}),
                    at: self.at(to),
                }
            };
            self.append(
                "Task",
                task,
                serde_json::to_value(end).expect("an event serializes"),
            );
            task
        }

        fn reading(&self, agent: Uuid, now_seconds: i64) -> Reading {
            self.tracker
                .readings(&self.queue, self.at(now_seconds), |_| true)
                .into_iter()
                .find(|r| r.agent_id == agent)
                .expect("the agent is read")
        }
    }

    #[test]
    fn a_healthy_agent_reads_zero() {
        let mut log = Log::new();
        let agent = log.agent("idle");
        for i in 0..5 {
            log.attempt(agent, i * 10, i * 10 + 10, false);
        }
        let reading = log.reading(agent, 100);
        assert_eq!(reading.parts, AnomalyParts::default(), "{reading:?}");
        assert!(!reading.matters());
    }

    #[test]
    fn failures_raise_the_error_average_and_successes_bring_it_down() {
        let mut log = Log::new();
        let agent = log.agent("idle");
        log.attempt(agent, 0, 1, true);
        assert!((log.reading(agent, 2).parts.errors - 0.3).abs() < 1e-9);
        log.attempt(agent, 2, 3, true);
        assert!((log.reading(agent, 4).parts.errors - 0.51).abs() < 1e-9);
        log.attempt(agent, 4, 5, false);
        assert!((log.reading(agent, 6).parts.errors - 0.357).abs() < 1e-9);
    }

    #[test]
    fn latency_compares_with_the_types_median_and_counts_a_slow_running_attempt() {
        let mut log = Log::new();
        let quick = log.agent("idle");
        let slow = log.agent("idle");
        for i in 0..3 {
            log.attempt(quick, i * 10, i * 10 + 10, false);
        }
        // 20 s against a median of 10 s: ratio 2, latency part (2 − 1) ÷ 2.
        log.attempt(slow, 30, 50, false);
        assert!((log.reading(slow, 50).parts.latency - 0.5).abs() < 1e-9);
        // Running for 60 s now (6× the median): full.
        let task = log.task(vec![]);
        log.start(task, slow, 100);
        assert_eq!(log.reading(slow, 160).parts.latency, 1.0);
        assert_eq!(log.reading(quick, 160).parts.latency, 0.0);
    }

    #[test]
    fn holding_the_projects_work_and_blocking_others_shows_as_skew_and_queue_impact() {
        let mut log = Log::new();
        let hog = log.agent("idle");
        let other = log.agent("idle");
        let mut held = Vec::new();
        for second in 0..4 {
            let task = log.task(vec![]);
            log.start(task, hog, second);
            held.push(task);
        }
        for _ in 0..5 {
            log.task(vec![held[0]]);
        }
        let reading = log.reading(hog, 10);
        // All the project's work against a fair half.
        assert_eq!(reading.parts.resource_skew, 1.0);
        assert_eq!(reading.parts.queue_impact, 0.5);
        let idle = log.reading(other, 10);
        assert_eq!(idle.parts.resource_skew, 0.0);
        assert_eq!(idle.parts.queue_impact, 0.0);
    }

    #[test]
    fn quarantined_failed_and_terminated_agents_are_not_read() {
        let mut log = Log::new();
        let quarantined = log.agent("quarantined");
        let failed = log.agent("failed");
        let live = log.agent("idle");
        let read: Vec<Uuid> = log
            .tracker
            .readings(&log.queue, log.at(1), |_| true)
            .into_iter()
            .map(|r| r.agent_id)
            .collect();
        assert_eq!(read, vec![live]);
        assert!(!read.contains(&quarantined) && !read.contains(&failed));
    }

    #[test]
    fn the_median_needs_three_samples_and_is_the_middle_one() {
        let samples: VecDeque<f64> = [5.0, 1.0].into_iter().collect();
        assert_eq!(median(&samples), None);
        let samples: VecDeque<f64> = [5.0, 1.0, 3.0].into_iter().collect();
        assert_eq!(median(&samples), Some(3.0));
        let samples: VecDeque<f64> = [5.0, 1.0, 3.0, 4.0].into_iter().collect();
        assert_eq!(median(&samples), Some(3.5));
        let zeros: VecDeque<f64> = [0.0, 0.0, 0.0].into_iter().collect();
        assert_eq!(median(&zeros), Some(1.0));
    }
}
