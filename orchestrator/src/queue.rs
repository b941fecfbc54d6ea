//! The task queue as one process folds it from the log: every task that is not final,
//! the completed ones (dependencies point at them), and what the dispatcher and the
//! sweeper ask of it — the ready tasks by score, running counts per project and
//! organization, running tasks past their timeout.
//!
//! A task is **ready** when it is pending, or its retry's not-before time has passed,
//! every task it depends on is completed (a dependency the queue has never seen counts as
//! unfinished), and the spec of its ticket, if any, is not archived.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use omoi_domain::common::Priority;
use omoi_domain::spec::SpecEvent;
use omoi_domain::task::{TaskEvent, TaskStatus};
use omoi_domain::ticket::TicketEvent;
use omoi_store::StoredEvent;
use serde::Deserialize;
use uuid::Uuid;

use crate::score::{ScoreConfig, ScoreInput};

/// One task as the queue keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedTask {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub ticket_id: Uuid,
    pub title: String,
    pub description: String,
    pub task_type: String,
    pub priority: Priority,
    pub status: TaskStatus,
    pub depends_on: BTreeSet<Uuid>,
    pub required_capabilities: BTreeSet<String>,
    pub retry_count: u32,
    pub max_retries: u32,
    pub timeout_seconds: Option<u32>,
    pub not_before: Option<DateTime<Utc>>,
    pub agent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
}

impl QueuedTask {
    /// Held by an agent: assigned or running.
    pub fn is_active(&self) -> bool {
        matches!(self.status, TaskStatus::Assigned | TaskStatus::Running)
    }
}

/// A ready task and its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub task_id: Uuid,
    pub score: f64,
}

/// What changed for the dispatcher when an event was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Something that may make a task ready or free an agent.
    Queue,
    /// This task was cancelled: stop whoever runs it.
    Cancelled(Uuid),
}

#[derive(Debug, Default)]
pub struct Queue {
    tasks: HashMap<Uuid, QueuedTask>,
    /// Task → the tasks waiting for it (pending or retrying).
    dependents: HashMap<Uuid, BTreeSet<Uuid>>,
    /// Ticket → the spec it implements.
    specs_of_tickets: HashMap<Uuid, Uuid>,
    archived_specs: BTreeSet<Uuid>,
}

#[derive(Deserialize)]
struct Metadata {
    organization_id: Uuid,
}

impl Queue {
    pub fn task(&self, id: Uuid) -> Option<&QueuedTask> {
        self.tasks.get(&id)
    }

    /// Applies one event of the log (events of other aggregates change nothing).
    pub fn apply(&mut self, stored: &StoredEvent) -> Change {
        match stored.aggregate_type.as_str() {
            "Task" => {}
            "Ticket" => return self.apply_ticket(stored),
            "Spec" => return self.apply_spec(stored),
            _ => return Change::None,
        }
        let (Ok(event), Ok(id)) = (
            TaskEvent::deserialize(&stored.payload),
            stored.aggregate_id.parse::<Uuid>(),
        ) else {
            tracing::warn!(
                position = stored.global_position,
                "queue: undecodable task event"
            );
            return Change::None;
        };
        if let TaskEvent::TaskCreated { .. } = &event {
            let organization_id = Metadata::deserialize(&stored.metadata)
                .map(|m| m.organization_id)
                .ok();
            return self.create(id, event, organization_id);
        }
        let Some(task) = self.tasks.get_mut(&id) else {
            return Change::None;
        };
        match event {
            TaskEvent::TaskCreated { .. } => return Change::None,
            TaskEvent::TaskAssigned { agent_id, .. } => {
                task.status = TaskStatus::Assigned;
                task.agent_id = Some(agent_id);
                task.not_before = None;
            }
            TaskEvent::TaskStarted { at } => {
                task.status = TaskStatus::Running;
                task.started_at = Some(at);
            }
            TaskEvent::TaskProgressReported { .. } => return Change::None,
            TaskEvent::TaskCompleted { .. } => task.status = TaskStatus::Completed,
            TaskEvent::TaskFailed { .. } | TaskEvent::TaskTimedOut { .. } => {
                // The outcome (retry or final failure) follows in the same command.
                task.agent_id = None;
                task.started_at = None;
            }
            TaskEvent::TaskRetryScheduled {
                attempt,
                not_before,
            } => {
                task.status = TaskStatus::RetryScheduled;
                task.retry_count = attempt;
                task.not_before = Some(not_before);
                task.agent_id = None;
                task.started_at = None;
            }
            TaskEvent::TaskPermanentlyFailed { reason } => {
                task.status = reason.final_status();
                task.agent_id = None;
            }
            TaskEvent::TaskCancelled { .. } => {
                task.status = TaskStatus::Cancelled;
                task.agent_id = None;
                return Change::Cancelled(id);
            }
            TaskEvent::TaskDependencyAdded { depends_on } => {
                task.depends_on.insert(depends_on);
                self.dependents.entry(depends_on).or_default().insert(id);
            }
            TaskEvent::TaskDependencyRemoved { depends_on } => {
                task.depends_on.remove(&depends_on);
                if let Some(waiting) = self.dependents.get_mut(&depends_on) {
                    waiting.remove(&id);
                }
            }
        }
        Change::Queue
    }

    fn apply_ticket(&mut self, stored: &StoredEvent) -> Change {
        if let (
            Ok(TicketEvent::TicketCreated {
                spec_id: Some(spec),
                ..
            }),
            Ok(ticket),
        ) = (
            TicketEvent::deserialize(&stored.payload),
            stored.aggregate_id.parse::<Uuid>(),
        ) {
            self.specs_of_tickets.insert(ticket, spec);
        }
        Change::None
    }

    fn apply_spec(&mut self, stored: &StoredEvent) -> Change {
        match (
            SpecEvent::deserialize(&stored.payload),
            stored.aggregate_id.parse::<Uuid>(),
        ) {
            (Ok(SpecEvent::SpecArchived { .. }), Ok(spec)) => {
                self.archived_specs.insert(spec);
                Change::Queue
            }
            _ => Change::None,
        }
    }

    fn create(&mut self, id: Uuid, event: TaskEvent, organization: Option<Uuid>) -> Change {
        let TaskEvent::TaskCreated {
            organization_id,
            project_id,
            ticket_id,
            title,
            description,
            task_type,
            priority,
            depends_on,
            required_capabilities,
            max_retries,
            timeout_seconds,
            created_at,
            ..
        } = event
        else {
            return Change::None;
        };
        for dependency in &depends_on {
            self.dependents.entry(*dependency).or_default().insert(id);
        }
        self.tasks.entry(id).or_insert(QueuedTask {
            id,
            organization_id: organization.unwrap_or(organization_id),
            project_id,
            ticket_id,
            title,
            description,
            task_type,
            priority,
            status: TaskStatus::Pending,
            depends_on: depends_on.into_iter().collect(),
            required_capabilities: required_capabilities.into_iter().collect(),
            retry_count: 0,
            max_retries,
            timeout_seconds,
            not_before: None,
            agent_id: None,
            created_at,
            started_at: None,
        });
        Change::Queue
    }

    fn is_completed(&self, id: &Uuid) -> bool {
        self.tasks
            .get(id)
            .is_some_and(|t| t.status == TaskStatus::Completed)
    }

    /// Whether `task` waits for an agent now.
    pub fn is_ready(&self, task: &QueuedTask, now: DateTime<Utc>) -> bool {
        let waiting = match task.status {
            TaskStatus::Pending => true,
            TaskStatus::RetryScheduled => task.not_before.is_none_or(|at| at <= now),
            _ => false,
        };
        waiting
            && task.depends_on.iter().all(|d| self.is_completed(d))
            && !self
                .specs_of_tickets
                .get(&task.ticket_id)
                .is_some_and(|spec| self.archived_specs.contains(spec))
    }

    /// The earliest not-before time of a retry still waiting for it: the dispatcher's
    /// next wake-up.
    pub fn next_retry(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.tasks
            .values()
            .filter(|t| t.status == TaskStatus::RetryScheduled)
            .filter_map(|t| t.not_before)
            .filter(|at| *at > now)
            .min()
    }

    fn waiting_dependents(&self, id: Uuid) -> usize {
        self.dependents.get(&id).map_or(0, |waiting| {
            waiting
                .iter()
                .filter_map(|d| self.tasks.get(d))
                .filter(|t| !t.status.is_final())
                .count()
        })
    }

    /// Whether some ready task satisfies `wanted` (no scoring, no allocation).
    pub fn any_ready(&self, now: DateTime<Utc>, wanted: impl Fn(&QueuedTask) -> bool) -> bool {
        self.tasks
            .values()
            .any(|task| wanted(task) && self.is_ready(task, now))
    }

    /// Every ready task, best score first (ties: the older task first).
    pub fn ready(&self, now: DateTime<Utc>, config: &ScoreConfig) -> Vec<Candidate> {
        let mut ready: Vec<(Candidate, DateTime<Utc>)> = self
            .tasks
            .values()
            .filter(|task| self.is_ready(task, now))
            .map(|task| {
                let input = ScoreInput {
                    priority: task.priority,
                    age_seconds: (now - task.created_at).num_milliseconds() as f64 / 1000.0,
                    deadline_slack_seconds: None,
                    waiting_dependents: self.waiting_dependents(task.id),
                    retry_count: task.retry_count,
                    max_retries: task.max_retries,
                };
                (
                    Candidate {
                        task_id: task.id,
                        score: config.score(&input),
                    },
                    task.created_at,
                )
            })
            .collect();
        ready.sort_by(|(a, a_created), (b, b_created)| {
            b.score
                .total_cmp(&a.score)
                .then(a_created.cmp(b_created))
                .then(a.task_id.cmp(&b.task_id))
        });
        ready.into_iter().map(|(candidate, _)| candidate).collect()
    }

    /// Tasks held by agents, per project and per organization.
    pub fn active_counts(&self) -> (HashMap<Uuid, usize>, HashMap<Uuid, usize>) {
        let (mut projects, mut organizations) = (HashMap::new(), HashMap::new());
        for task in self.tasks.values().filter(|t| t.is_active()) {
            *projects.entry(task.project_id).or_insert(0) += 1;
            *organizations.entry(task.organization_id).or_insert(0) += 1;
        }
        (projects, organizations)
    }

    /// Running tasks past their timeout.
    pub fn overdue(&self, now: DateTime<Utc>) -> Vec<&QueuedTask> {
        self.tasks
            .values()
            .filter(|t| t.status == TaskStatus::Running)
            .filter(|t| match (t.started_at, t.timeout_seconds) {
                (Some(started), Some(limit)) => {
                    (now - started).num_milliseconds() > i64::from(limit) * 1000
                }
                _ => false,
            })
            .collect()
    }

    /// The tasks an agent holds.
    pub fn held_by(&self, agent_id: Uuid) -> Vec<&QueuedTask> {
        self.tasks
            .values()
            .filter(|t| t.is_active() && t.agent_id == Some(agent_id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use serde_json::json;

    use super::*;

    fn created(
        id: Uuid,
        priority: Priority,
        age_seconds: i64,
        depends_on: Vec<Uuid>,
    ) -> StoredEvent {
        let organization_id = Uuid::from_u128(1);
        let event = TaskEvent::TaskCreated {
            task_id: id,
            organization_id,
            project_id: Uuid::from_u128(2),
            ticket_id: Uuid::from_u128(3),
            title: "t".into(),
            description: String::new(),
            task_type: "implement".into(),
            phase: Default::default(),
            priority,
            depends_on,
            required_capabilities: Vec::new(),
            max_retries: 3,
            timeout_seconds: None,
            created_at: Utc::now() - Duration::seconds(age_seconds),
        };
        stored(id, event, json!({"organization_id": organization_id}))
    }

    fn stored(id: Uuid, event: TaskEvent, metadata: serde_json::Value) -> StoredEvent {
        StoredEvent {
            aggregate_type: "Task".into(),
            aggregate_id: id.to_string(),
            sequence: 1,
            global_position: 1,
            transaction_id: 1,
            event_type: "TaskCreated".into(),
            event_version: "1".into(),
            payload: serde_json::to_value(event).expect("an event"),
            metadata,
        }
    }

    #[test]
    fn ready_tasks_come_out_by_score() {
        let mut queue = Queue::default();
        let (low, critical, starving, medium) = (
            Uuid::from_u128(10),
            Uuid::from_u128(11),
            Uuid::from_u128(12),
            Uuid::from_u128(13),
        );
        queue.apply(&created(low, Priority::Low, 0, vec![]));
        queue.apply(&created(critical, Priority::Critical, 0, vec![]));
        queue.apply(&created(starving, Priority::Low, 7300, vec![]));
        queue.apply(&created(medium, Priority::Medium, 1800, vec![]));
        let order: Vec<Uuid> = queue
            .ready(Utc::now(), &ScoreConfig::default())
            .into_iter()
            .map(|c| c.task_id)
            .collect();
        // 0.6 (floored), 0.5, 0.225 + 0.1 + 0.05 = 0.375, 0.1625.
        assert_eq!(order, vec![starving, critical, medium, low]);
    }

    #[test]
    fn a_task_waits_for_every_dependency_to_complete_and_for_its_retry() {
        let mut queue = Queue::default();
        let (first, second, missing) = (
            Uuid::from_u128(20),
            Uuid::from_u128(21),
            Uuid::from_u128(99),
        );
        queue.apply(&created(first, Priority::High, 0, vec![]));
        queue.apply(&created(second, Priority::High, 0, vec![first, missing]));
        let ready = |queue: &Queue| -> Vec<Uuid> {
            queue
                .ready(Utc::now(), &ScoreConfig::default())
                .into_iter()
                .map(|c| c.task_id)
                .collect()
        };
        assert_eq!(ready(&queue), vec![first]);
        let meta = json!({});
        queue.apply(&stored(
            first,
            TaskEvent::TaskCompleted {
                result: json!(null),
                at: Utc::now(),
            },
            meta.clone(),
        ));
        // An unknown dependency never completes.
        assert!(ready(&queue).is_empty());
        queue.apply(&stored(
            second,
            TaskEvent::TaskDependencyRemoved {
                depends_on: missing,
            },
            meta.clone(),
        ));
        assert_eq!(ready(&queue), vec![second]);
        let later = Utc::now() + Duration::seconds(30);
        queue.apply(&stored(
            second,
            TaskEvent::TaskRetryScheduled {
                attempt: 1,
                not_before: later,
            },
            meta,
        ));
        assert!(ready(&queue).is_empty());
        assert_eq!(queue.next_retry(Utc::now()), Some(later));
        assert_eq!(
            queue.ready(later, &ScoreConfig::default()).len(),
            1,
            "due at its not-before time"
        );
    }

    #[test]
    fn a_task_of_an_archived_specs_ticket_is_not_ready() {
        let mut queue = Queue::default();
        let (ticket, spec, id) = (Uuid::from_u128(3), Uuid::from_u128(30), Uuid::from_u128(31));
        let mut created_ticket =
            stored(ticket, TaskEvent::TaskStarted { at: Utc::now() }, json!({}));
        created_ticket.aggregate_type = "Ticket".into();
        created_ticket.payload = serde_json::to_value(TicketEvent::TicketCreated {
            ticket_id: ticket,
            organization_id: Uuid::from_u128(1),
            project_id: Uuid::from_u128(2),
            spec_id: Some(spec),
            title: "t".into(),
            description: String::new(),
            priority: Priority::Medium,
            phase: Default::default(),
        })
        .expect("an event");
        queue.apply(&created_ticket);
        queue.apply(&created(id, Priority::High, 0, vec![]));
        assert_eq!(queue.ready(Utc::now(), &ScoreConfig::default()).len(), 1);
        let mut archived = created_ticket.clone();
        archived.aggregate_type = "Spec".into();
        archived.aggregate_id = spec.to_string();
        archived.payload =
            serde_json::to_value(SpecEvent::SpecArchived { at: Utc::now() }).expect("an event");
        assert_eq!(queue.apply(&archived), Change::Queue);
        assert!(queue.ready(Utc::now(), &ScoreConfig::default()).is_empty());
    }
}
