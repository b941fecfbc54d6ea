//! The task queue as one process folds it from the log: every task that is not final,
//! the ids of the completed ones (dependencies point at them), and what the dispatcher
//! and the sweeper ask of it — the ready tasks by score (of all organizations or of one),
//! running counts per project and organization, running tasks past their timeout.
//!
//! A task leaves the queue when it reaches a final state: every process keeps only the
//! open tasks in full, so memory follows the work in flight, not the log's length (a
//! completed task costs its id).
//!
//! A task is **ready** when it waits for an agent (pending, to be revised, or a retry
//! whose not-before time has passed),
//! every task it depends on is completed (a dependency the queue has never seen counts as
//! unfinished), and the spec of its ticket, if any, is not archived.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use omoi_domain::common::Priority;
use omoi_domain::spec::SpecEvent;
use omoi_domain::task::{TaskEvent, TaskStatus, ValidationTarget};
use omoi_domain::ticket::TicketEvent;
use omoi_store::StoredEvent;
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
    /// When the current assignment was made (until the attempt ends).
    pub assigned_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    /// The task aggregate's sequence after the last event applied: whoever made a change
    /// knows from it when the queue has seen that change.
    pub version: u64,
    /// On a validation task: the submission it checks (whose implementer may not run it).
    pub validates: Option<ValidationTarget>,
    /// What the last validation of this task's work asked to revise.
    pub feedback: Option<String>,
    /// While running: when its agent last showed progress (the start, or the newest
    /// progress report).
    pub last_progress_at: Option<DateTime<Utc>>,
    /// While running: marked stalled since its last progress.
    pub stalled: bool,
}

impl QueuedTask {
    /// Held by an agent: assigned or running.
    pub fn is_active(&self) -> bool {
        matches!(self.status, TaskStatus::Assigned | TaskStatus::Running)
    }

    /// Whether an agent of `organization_id` with `capabilities` may run this task: the
    /// one matching rule of the dispatcher, the claims and the in-process worker. `agent_id`
    /// is `None` for an agent yet to be registered (which did no work to validate).
    pub fn suits(
        &self,
        organization_id: Uuid,
        agent_id: Option<Uuid>,
        capabilities: &BTreeSet<String>,
    ) -> bool {
        self.organization_id == organization_id
            && self.required_capabilities.is_subset(capabilities)
            && agent_id.is_none_or(|agent| self.validates.is_none_or(|v| v.allows(agent)))
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
    /// This task's attempt ended from outside (cancelled, failed or timed out by someone
    /// else than its command): stop whoever runs it.
    Stop(Uuid),
    /// A steering message for this task's agent was recorded.
    Steered(Uuid),
}

#[derive(Debug, Default)]
pub struct Queue {
    /// The open tasks (not final).
    tasks: HashMap<Uuid, QueuedTask>,
    /// Organization → its open tasks.
    by_organization: HashMap<Uuid, BTreeSet<Uuid>>,
    /// Tasks that completed: their dependents may run.
    completed: HashSet<Uuid>,
    /// Tasks that ended otherwise (cancelled, failed for good): their dependents never run.
    ended: HashSet<Uuid>,
    /// Task → the open tasks waiting for it.
    dependents: HashMap<Uuid, BTreeSet<Uuid>>,
    /// Ticket → the spec it implements.
    specs_of_tickets: HashMap<Uuid, Uuid>,
    archived_specs: BTreeSet<Uuid>,
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
            stored.payload.decode::<TaskEvent>(),
            stored.aggregate_id.parse::<Uuid>(),
        ) else {
            tracing::warn!(
                position = stored.global_position,
                "queue: undecodable task event"
            );
            return Change::None;
        };
        if let TaskEvent::TaskCreated { .. } = &event {
            let organization_id = stored
                .metadata
                .organization_id()
                .and_then(|id| id.parse().ok());
            let version = u64::try_from(stored.sequence).unwrap_or(0);
            return self.create(id, version, event, organization_id);
        }
        let Some(task) = self.tasks.get_mut(&id) else {
            return Change::None;
        };
        task.version = u64::try_from(stored.sequence).unwrap_or(0);
        if let Some(status) = event.status_after() {
            task.status = status;
        }
        let change = match event {
            // Discoveries change who may complete, not who may be assigned.
            TaskEvent::TaskProgressReported { .. } => {
                task.last_progress_at = stored.occurred_at().or(task.last_progress_at);
                task.stalled = false;
                Change::None
            }
            TaskEvent::TaskStalled { .. } => {
                task.stalled = true;
                Change::None
            }
            TaskEvent::TaskSteered { .. } => Change::Steered(id),
            TaskEvent::TaskPriorityChanged { priority } => {
                task.priority = priority;
                Change::Queue
            }
            // Taken from its agent by a guardian: back in the queue, its command stopped.
            TaskEvent::TaskUnassigned { .. } => {
                task.agent_id = None;
                task.assigned_at = None;
                task.started_at = None;
                task.last_progress_at = None;
                Change::Stop(id)
            }
            TaskEvent::TaskCreated { .. }
            | TaskEvent::GuardianIntervened { .. }
            | TaskEvent::DuplicateSuspected { .. }
            | TaskEvent::TrajectoryAssessed { .. }
            | TaskEvent::SteeringDelivered { .. }
            | TaskEvent::TaskDiscovered { .. }
            | TaskEvent::TaskDiscoveryReported { .. }
            | TaskEvent::TaskDiscoveryResolved { .. }
            | TaskEvent::TaskValidationRequired { .. }
            | TaskEvent::TaskVerdictGiven { .. }
            | TaskEvent::TaskValidationPassed { .. }
            | TaskEvent::TaskValidationAbandoned { .. }
            | TaskEvent::TaskPlanned { .. } => Change::None,
            TaskEvent::TaskValidationRejected { feedback, .. } => {
                task.feedback = Some(feedback);
                Change::None
            }
            TaskEvent::TaskValidates { target } => {
                task.validates = Some(target);
                Change::None
            }
            // The work waits for its verdict (or an agent to revise it): the agent is free.
            TaskEvent::TaskSubmittedForValidation { .. }
            | TaskEvent::TaskRevisionRequested { .. } => {
                task.agent_id = None;
                task.assigned_at = None;
                task.started_at = None;
                Change::Queue
            }
            TaskEvent::TaskAssigned { agent_id, at } => {
                task.agent_id = Some(agent_id);
                task.assigned_at = Some(at);
                task.not_before = None;
                Change::Queue
            }
            TaskEvent::TaskStarted { at } => {
                task.started_at = Some(at);
                task.last_progress_at = Some(at);
                task.stalled = false;
                Change::Queue
            }
            TaskEvent::TaskCompleted { .. } => Change::Queue,
            TaskEvent::TaskFailed { .. } | TaskEvent::TaskTimedOut { .. } => {
                // The outcome (retry or final failure) follows in the same command. A
                // command still running (the failure came from elsewhere: a restart of a
                // stalled task, an intervention) is stopped; one that ended ignores it.
                task.agent_id = None;
                task.assigned_at = None;
                task.started_at = None;
                Change::Stop(id)
            }
            TaskEvent::TaskRetryScheduled {
                attempt,
                not_before,
            } => {
                task.retry_count = attempt;
                task.not_before = Some(not_before);
                task.agent_id = None;
                task.assigned_at = None;
                task.started_at = None;
                Change::Queue
            }
            TaskEvent::TaskPermanentlyFailed { .. } => {
                task.agent_id = None;
                Change::Queue
            }
            TaskEvent::TaskCancelled { .. } => {
                task.agent_id = None;
                Change::Stop(id)
            }
            TaskEvent::TaskDependencyAdded { depends_on } => {
                task.depends_on.insert(depends_on);
                self.dependents.entry(depends_on).or_default().insert(id);
                Change::Queue
            }
            TaskEvent::TaskDependencyRemoved { depends_on } => {
                task.depends_on.remove(&depends_on);
                self.forget_dependent(depends_on, id);
                Change::Queue
            }
        };
        if self.tasks.get(&id).is_some_and(|t| t.status.is_final()) {
            self.finish(id);
        }
        change
    }

    /// A task reached a final state: it leaves the queue, remembered by its id only.
    fn finish(&mut self, id: Uuid) {
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        if task.status == TaskStatus::Completed {
            self.completed.insert(id);
        } else {
            self.ended.insert(id);
        }
        if let Some(open) = self.by_organization.get_mut(&task.organization_id) {
            open.remove(&id);
            if open.is_empty() {
                self.by_organization.remove(&task.organization_id);
            }
        }
        for dependency in &task.depends_on {
            self.forget_dependent(*dependency, id);
        }
        // Its own dependents keep waiting or run; nobody asks how many wait for it now.
        self.dependents.remove(&id);
    }

    fn forget_dependent(&mut self, dependency: Uuid, dependent: Uuid) {
        if let Some(waiting) = self.dependents.get_mut(&dependency) {
            waiting.remove(&dependent);
            if waiting.is_empty() {
                self.dependents.remove(&dependency);
            }
        }
    }

    /// Whether the queue has applied the task's events up to `version`: true once it shows
    /// that version or a later one, or the task has ended.
    pub fn has_seen(&self, id: Uuid, version: u64) -> bool {
        match self.tasks.get(&id) {
            Some(task) => task.version >= version,
            None => self.completed.contains(&id) || self.ended.contains(&id),
        }
    }

    /// Whether the task was ever created here (open or ended).
    fn is_known(&self, id: Uuid) -> bool {
        self.tasks.contains_key(&id) || self.completed.contains(&id) || self.ended.contains(&id)
    }

    fn apply_ticket(&mut self, stored: &StoredEvent) -> Change {
        if let (
            Ok(TicketEvent::TicketCreated {
                spec_id: Some(spec),
                ..
            }),
            Ok(ticket),
        ) = (
            stored.payload.decode::<TicketEvent>(),
            stored.aggregate_id.parse::<Uuid>(),
        ) {
            self.specs_of_tickets.insert(ticket, spec);
        }
        Change::None
    }

    fn apply_spec(&mut self, stored: &StoredEvent) -> Change {
        match (
            stored.payload.decode::<SpecEvent>(),
            stored.aggregate_id.parse::<Uuid>(),
        ) {
            (Ok(SpecEvent::SpecArchived { .. }), Ok(spec)) => {
                self.archived_specs.insert(spec);
                Change::Queue
            }
            _ => Change::None,
        }
    }

    fn create(
        &mut self,
        id: Uuid,
        version: u64,
        event: TaskEvent,
        organization: Option<Uuid>,
    ) -> Change {
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
        if self.is_known(id) {
            return Change::None;
        }
        for dependency in &depends_on {
            self.dependents.entry(*dependency).or_default().insert(id);
        }
        let organization_id = organization.unwrap_or(organization_id);
        self.by_organization
            .entry(organization_id)
            .or_default()
            .insert(id);
        self.tasks.insert(
            id,
            QueuedTask {
                id,
                organization_id,
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
                assigned_at: None,
                started_at: None,
                version,
                validates: None,
                feedback: None,
                last_progress_at: None,
                stalled: false,
            },
        );
        Change::Queue
    }

    fn is_completed(&self, id: &Uuid) -> bool {
        self.completed.contains(id)
    }

    /// Whether `task` waits for an agent now.
    pub fn is_ready(&self, task: &QueuedTask, now: DateTime<Utc>) -> bool {
        let waiting = task.status.is_assignable() && task.not_before.is_none_or(|at| at <= now);
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

    /// How many open tasks wait for `id`.
    pub fn waiting_dependents(&self, id: Uuid) -> usize {
        self.dependents.get(&id).map_or(0, |waiting| {
            waiting
                .iter()
                .filter(|d| self.tasks.contains_key(d))
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
        self.rank(self.tasks.values(), now, config)
    }

    /// The ready tasks of one organization, best first (from its own index: a claim does
    /// not look at other organizations' work).
    pub fn ready_in(
        &self,
        organization_id: Uuid,
        now: DateTime<Utc>,
        config: &ScoreConfig,
    ) -> Vec<Candidate> {
        let open = self
            .by_organization
            .get(&organization_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id));
        self.rank(open, now, config)
    }

    fn rank<'a>(
        &self,
        tasks: impl Iterator<Item = &'a QueuedTask>,
        now: DateTime<Utc>,
        config: &ScoreConfig,
    ) -> Vec<Candidate> {
        let mut ready: Vec<(Candidate, DateTime<Utc>)> = tasks
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

    /// How many tasks are open (not final): what the queue holds in full.
    pub fn open_tasks(&self) -> usize {
        self.tasks.len()
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

    /// Running tasks not marked stalled whose agent showed no progress for more than
    /// `after_ms`, with the instant of their last progress.
    pub fn stalled(&self, now: DateTime<Utc>, after_ms: u64) -> Vec<(Uuid, DateTime<Utc>)> {
        let after = i64::try_from(after_ms).unwrap_or(i64::MAX);
        self.tasks
            .values()
            .filter(|t| t.status == TaskStatus::Running && !t.stalled)
            .filter_map(|t| {
                let since = t.last_progress_at?;
                ((now - since).num_milliseconds() > after).then_some((t.id, since))
            })
            .collect()
    }

    /// Tasks assigned more than `within_ms` ago and still not started.
    pub fn unstarted(&self, now: DateTime<Utc>, within_ms: u64) -> Vec<&QueuedTask> {
        let within = i64::try_from(within_ms).unwrap_or(i64::MAX);
        self.tasks
            .values()
            .filter(|t| t.status == TaskStatus::Assigned)
            .filter(|t| {
                t.assigned_at
                    .is_some_and(|at| (now - at).num_milliseconds() > within)
            })
            .collect()
    }

    /// Every task held by an agent (assigned or running).
    pub fn active(&self) -> impl Iterator<Item = &QueuedTask> {
        self.tasks.values().filter(|t| t.is_active())
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
            payload: serde_json::to_value(event).expect("an event").into(),
            metadata: metadata.into(),
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
    fn an_assignment_not_started_in_time_is_unstarted_until_its_attempt_ends() {
        let mut queue = Queue::default();
        let (slow, prompt) = (Uuid::from_u128(40), Uuid::from_u128(41));
        let assigned_at = Utc::now();
        let meta = json!({});
        for id in [slow, prompt] {
            queue.apply(&created(id, Priority::High, 0, vec![]));
            let assigned = TaskEvent::TaskAssigned {
                agent_id: Uuid::from_u128(7),
                at: assigned_at,
            };
            queue.apply(&stored(id, assigned, meta.clone()));
        }
        let started = TaskEvent::TaskStarted { at: assigned_at };
        queue.apply(&stored(prompt, started, meta.clone()));
        let ids = |queue: &Queue, now| -> Vec<Uuid> {
            queue.unstarted(now, 1_000).iter().map(|t| t.id).collect()
        };
        assert!(ids(&queue, assigned_at + Duration::milliseconds(1_000)).is_empty());
        let later = assigned_at + Duration::milliseconds(1_001);
        assert_eq!(
            ids(&queue, later),
            vec![slow],
            "a started task is not held back"
        );
        let failed = TaskEvent::TaskFailed {
            error: "given back".into(),
            attempt: 1,
            at: later,
        };
        queue.apply(&stored(slow, failed, meta));
        assert!(ids(&queue, later).is_empty());
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
        .expect("an event")
        .into();
        queue.apply(&created_ticket);
        queue.apply(&created(id, Priority::High, 0, vec![]));
        assert_eq!(queue.ready(Utc::now(), &ScoreConfig::default()).len(), 1);
        let mut archived = created_ticket.clone();
        archived.aggregate_type = "Spec".into();
        archived.aggregate_id = spec.to_string();
        archived.payload = serde_json::to_value(SpecEvent::SpecArchived { at: Utc::now() })
            .expect("an event")
            .into();
        assert_eq!(queue.apply(&archived), Change::Queue);
        assert!(queue.ready(Utc::now(), &ScoreConfig::default()).is_empty());
    }

    #[test]
    fn a_finished_task_leaves_the_queue_and_its_dependents_still_run() {
        let mut queue = Queue::default();
        let (done, dropped, after_done, after_dropped) = (
            Uuid::from_u128(40),
            Uuid::from_u128(41),
            Uuid::from_u128(42),
            Uuid::from_u128(43),
        );
        for (id, depends_on) in [
            (done, vec![]),
            (dropped, vec![]),
            (after_done, vec![done]),
            (after_dropped, vec![dropped]),
        ] {
            queue.apply(&created(id, Priority::Medium, 0, depends_on));
        }
        let mut completed = stored(
            done,
            TaskEvent::TaskCompleted {
                result: json!(null),
                at: Utc::now(),
            },
            json!({}),
        );
        completed.sequence = 4;
        queue.apply(&completed);
        let mut cancelled = stored(
            dropped,
            TaskEvent::TaskCancelled {
                reason: Some("not needed".into()),
                at: Utc::now(),
            },
            json!({}),
        );
        cancelled.sequence = 2;
        assert_eq!(queue.apply(&cancelled), Change::Stop(dropped));
        assert_eq!(queue.open_tasks(), 2, "only the waiting two are kept whole");
        assert!(queue.task(done).is_none() && queue.task(dropped).is_none());
        let ready: Vec<Uuid> = queue
            .ready(Utc::now(), &ScoreConfig::default())
            .into_iter()
            .map(|c| c.task_id)
            .collect();
        assert_eq!(
            ready,
            vec![after_done],
            "a cancelled dependency never completes"
        );
        // Whoever changed them knows the queue has seen it, at any version up to theirs.
        assert!(queue.has_seen(done, 4) && queue.has_seen(dropped, 99));
        assert!(queue.has_seen(after_done, 1) && !queue.has_seen(after_done, 2));
        assert!(
            !queue.has_seen(Uuid::from_u128(44), 1),
            "never created here"
        );
        // A creation read again (a replay) does not bring a finished task back.
        queue.apply(&created(done, Priority::Medium, 0, vec![]));
        assert!(queue.task(done).is_none());
    }

    #[test]
    fn an_organizations_ready_tasks_come_from_its_own_index() {
        let mut queue = Queue::default();
        let (ours, theirs) = (Uuid::from_u128(50), Uuid::from_u128(51));
        queue.apply(&created(ours, Priority::Low, 0, vec![]));
        let mut other = created(theirs, Priority::Critical, 0, vec![]);
        other.metadata = json!({"organization_id": Uuid::from_u128(9)}).into();
        queue.apply(&other);
        let ids = |organization: u128| -> Vec<Uuid> {
            queue
                .ready_in(
                    Uuid::from_u128(organization),
                    Utc::now(),
                    &ScoreConfig::default(),
                )
                .into_iter()
                .map(|c| c.task_id)
                .collect()
        };
        assert_eq!(ids(1), vec![ours]);
        assert_eq!(ids(9), vec![theirs]);
        assert!(ids(7).is_empty());
        assert_eq!(queue.ready(Utc::now(), &ScoreConfig::default()).len(), 2);
    }
}
