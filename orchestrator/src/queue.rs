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

use std::cmp::Ordering;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::ops::Bound;

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
    /// While running: the attempt's progress reports seen (`Task::progress_reports`).
    pub progress_reports: u32,
    /// The agent a Guardian's reassignment took it from, until another agent has it
    /// (the task refuses that agent: `Task::reassigned_from`).
    pub reassigned_from: Option<Uuid>,
    /// The blocking discoveries it waits for (`Task::open_discoveries`).
    pub open_discoveries: BTreeSet<Uuid>,
}

/// A running task found without progress ([`Queue::stalled`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub task_id: Uuid,
    /// The agent seen running it.
    pub agent_id: Uuid,
    /// Its last progress: the attempt's start or its newest report.
    pub idle_since: DateTime<Utc>,
    /// The attempt's progress reports seen ([`QueuedTask::progress_reports`]).
    pub progress_seen: u32,
}

impl QueuedTask {
    /// Held by an agent: assigned or running.
    pub fn is_active(&self) -> bool {
        self.status.is_held()
    }

    /// Holds a place under its organization's and its project's caps: held, and not
    /// waiting for work it discovered (`TaskStatus::holds_a_place`).
    pub fn holds_a_place(&self) -> bool {
        self.status.holds_a_place(!self.open_discoveries.is_empty())
    }

    /// Whether an agent of `organization_id` with `capabilities` may run this task: the
    /// one matching rule of the dispatcher, the claims and the in-process worker. `agent_id`
    /// is `None` for an agent yet to be registered (which did no work to validate, nor had
    /// a task taken from it).
    pub fn suits(
        &self,
        organization_id: Uuid,
        agent_id: Option<Uuid>,
        capabilities: &BTreeSet<String>,
    ) -> bool {
        self.organization_id == organization_id
            && self.required_capabilities.is_subset(capabilities)
            && agent_id.is_none_or(|agent| {
                self.validates.is_none_or(|v| v.allows(agent))
                    && self.reassigned_from != Some(agent)
            })
    }
}

/// A ready task and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub task_id: Uuid,
    pub score: f64,
}

/// Ready tasks, each scored, taken best first: the best score, ties to the older task,
/// then to the lower id. Only what is taken gets ordered (a heap: a pass takes a few
/// tasks of a backlog that may hold thousands, so sorting them all would cost the pass
/// more than scoring them).
#[derive(Debug, Default)]
pub struct Ranked {
    heap: BinaryHeap<Ranking>,
}

/// A candidate in [`Ranked`]'s order: the greater comes first.
#[derive(Debug)]
struct Ranking {
    candidate: Candidate,
    created_at: DateTime<Utc>,
}

impl Ord for Ranking {
    fn cmp(&self, other: &Self) -> Ordering {
        self.candidate
            .score
            .total_cmp(&other.candidate.score)
            .then(other.created_at.cmp(&self.created_at))
            .then(other.candidate.task_id.cmp(&self.candidate.task_id))
    }
}

impl PartialOrd for Ranking {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranking {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranking {}

impl Ranked {
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The candidates in no particular order (what a count per organization needs).
    pub fn unordered(&self) -> impl Iterator<Item = &Candidate> {
        self.heap.iter().map(|ranking| &ranking.candidate)
    }
}

impl Iterator for Ranked {
    type Item = Candidate;

    /// The best candidate left.
    fn next(&mut self) -> Option<Candidate> {
        self.heap.pop().map(|ranking| ranking.candidate)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.heap.len(), Some(self.heap.len()))
    }
}

/// What a task's state puts in the queue's side indexes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Indexed {
    /// The agent holding it (assigned or running).
    holder: Option<Uuid>,
    /// A retry waiting for its time.
    retry_at: Option<DateTime<Utc>>,
    /// Holding a place under the caps: its organization and project.
    held_in: Option<(Uuid, Uuid)>,
}

impl Indexed {
    fn of(task: &QueuedTask) -> Self {
        Self {
            holder: task.agent_id.filter(|_| task.is_active()),
            retry_at: task
                .not_before
                .filter(|_| task.status == TaskStatus::RetryScheduled),
            held_in: task
                .holds_a_place()
                .then_some((task.organization_id, task.project_id)),
        }
    }
}

/// Tasks holding places under the caps in one organization
/// ([`QueuedTask::holds_a_place`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveCounts {
    pub per_project: HashMap<Uuid, usize>,
    pub organization: usize,
}

impl ActiveCounts {
    pub fn in_project(&self, project_id: Uuid) -> usize {
        self.per_project.get(&project_id).copied().unwrap_or(0)
    }

    /// One more held: a task of `project_id` taken in this pass.
    pub fn hold(&mut self, project_id: Uuid) {
        *self.per_project.entry(project_id).or_insert(0) += 1;
        self.organization += 1;
    }

    /// One fewer held: a task of `project_id` let go. A project holding none leaves the
    /// counts.
    fn release(&mut self, project_id: Uuid) {
        if let Some(held) = self.per_project.get_mut(&project_id) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                self.per_project.remove(&project_id);
            }
            self.organization = self.organization.saturating_sub(1);
        }
    }

    /// `other`'s held tasks besides these.
    pub fn add(&mut self, other: &ActiveCounts) {
        for (project, held) in &other.per_project {
            *self.per_project.entry(*project).or_insert(0) += held;
        }
        self.organization += other.organization;
    }
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
#[cfg_attr(test, derive(PartialEq))]
pub struct Queue {
    /// The open tasks (not final).
    tasks: HashMap<Uuid, QueuedTask>,
    /// Organization → its open tasks, grouped by the capabilities they require: a look
    /// for an agent's work touches only its organization's tasks it could run.
    by_organization: HashMap<Uuid, HashMap<BTreeSet<String>, BTreeSet<Uuid>>>,
    /// Tasks that completed: their dependents may run.
    completed: HashSet<Uuid>,
    /// Tasks that ended otherwise (cancelled, failed for good): their dependents never run.
    ended: HashSet<Uuid>,
    /// Task → the open tasks waiting for it.
    dependents: HashMap<Uuid, BTreeSet<Uuid>>,
    /// Agent → the tasks it holds (assigned or running), and retries waiting for their
    /// time: kept beside the tasks as each event is applied, so that a claim or a
    /// worker's wake-up does not look at every open task.
    holders: HashMap<Uuid, BTreeSet<Uuid>>,
    retries: BTreeSet<(DateTime<Utc>, Uuid)>,
    /// Organization → its tasks held by agents, per project (kept as `holders` is): what
    /// a pass's caps compare with, without a look at the organization's backlog.
    active: HashMap<Uuid, ActiveCounts>,
    /// Ticket → the spec it implements.
    specs_of_tickets: HashMap<Uuid, Uuid>,
    archived_specs: BTreeSet<Uuid>,
    /// Task → the last of its events applied ahead of the gapless stream
    /// ([`Self::apply_ahead`]); the entry goes when the stream brings that event.
    ahead: HashMap<Uuid, u64>,
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
        let indexed_before = Indexed::of(task);
        task.version = u64::try_from(stored.sequence).unwrap_or(0);
        if let Some(status) = event.status_after() {
            task.status = status;
        }
        let change = match event {
            TaskEvent::TaskProgressReported { .. } => {
                task.last_progress_at = stored.occurred_at().or(task.last_progress_at);
                task.progress_reports = task.progress_reports.saturating_add(1);
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
            TaskEvent::TaskUnassigned { agent_id, .. } => {
                task.reassigned_from = Some(agent_id);
                task.agent_id = None;
                task.assigned_at = None;
                task.started_at = None;
                task.last_progress_at = None;
                Change::Stop(id)
            }
            // Taken back (its agent had stopped taking work as it was assigned): ready
            // again, the agent's place free, and a run started in the assignment's own
            // transaction (an in-process agent's) stopped.
            TaskEvent::TaskAssignmentWithdrawn { .. } => {
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
            | TaskEvent::TaskDiscoveryReported {
                blocks_parent: false,
                ..
            }
            | TaskEvent::TaskValidationRequired { .. }
            | TaskEvent::TaskVerdictGiven { .. }
            | TaskEvent::TaskValidationPassed { .. }
            | TaskEvent::TaskValidationAbandoned { .. }
            | TaskEvent::TaskPlanned { .. } => Change::None,
            // A task waiting for work it discovered gives up its place under the caps
            // until that work ends: the place may go to the work.
            TaskEvent::TaskDiscoveryReported {
                discovered_task_id,
                blocks_parent: true,
                ..
            } => {
                task.open_discoveries.insert(discovered_task_id);
                Change::Queue
            }
            TaskEvent::TaskDiscoveryResolved { discovered_task_id } => {
                task.open_discoveries.remove(&discovered_task_id);
                Change::None
            }
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
                task.reassigned_from = None;
                Change::Queue
            }
            TaskEvent::TaskStarted { at } => {
                task.started_at = Some(at);
                task.last_progress_at = Some(at);
                task.progress_reports = 0;
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
                self.wait_for(depends_on, id);
                Change::Queue
            }
            TaskEvent::TaskDependencyRemoved { depends_on } => {
                task.depends_on.remove(&depends_on);
                self.forget_dependent(depends_on, id);
                Change::Queue
            }
        };
        self.reindex(id, indexed_before);
        if self.tasks.get(&id).is_some_and(|t| t.status.is_final()) {
            self.finish(id);
        }
        change
    }

    /// Whether `stored` is the next event of its task: what [`Self::apply_ahead`] takes.
    pub fn comes_next(&self, stored: &StoredEvent) -> bool {
        self.next_of_task(stored).is_some()
    }

    /// The task and the sequence of `stored` when it is that task's next event.
    fn next_of_task(&self, stored: &StoredEvent) -> Option<(Uuid, u64)> {
        if stored.aggregate_type != "Task" {
            return None;
        }
        let id = stored.aggregate_id.parse::<Uuid>().ok()?;
        let applied = match self.tasks.get(&id) {
            Some(task) => task.version,
            // Ended: whatever follows changes nothing here.
            None if self.is_known(id) => return None,
            None => 0,
        };
        let sequence = u64::try_from(stored.sequence).ok()?;
        (sequence == applied + 1).then_some((id, sequence))
    }

    /// Applies an event read ahead of the gapless stream
    /// ([`omoi_store::log::PageAhead::ahead`]) if it is its task's next one — a task
    /// created, assigned or completed a moment ago is dispatched on at once, whatever
    /// transaction elsewhere holds the stream back — and nothing otherwise: events of
    /// other aggregates, and a task's events after one not yet seen, wait for the stream.
    /// The stream brings the event again later; [`Self::applied_ahead`] passes it by.
    pub fn apply_ahead(&mut self, stored: &StoredEvent) -> Change {
        let Some((id, sequence)) = self.next_of_task(stored) else {
            return Change::None;
        };
        self.ahead.insert(id, sequence);
        self.apply(stored)
    }

    /// Whether an event of the gapless stream was applied already, ahead of it: then it
    /// must not be applied again. The stream bringing the last such event of a task ends
    /// the task's record.
    pub fn applied_ahead(&mut self, stored: &StoredEvent) -> bool {
        if stored.aggregate_type != "Task" {
            return false;
        }
        let Ok(id) = stored.aggregate_id.parse::<Uuid>() else {
            return false;
        };
        let Some(&last) = self.ahead.get(&id) else {
            return false;
        };
        let sequence = u64::try_from(stored.sequence).unwrap_or(0);
        if sequence >= last {
            self.ahead.remove(&id);
        }
        sequence <= last
    }

    /// Moves a task's entries in `holders`, `retries` and `active` from what they were to
    /// what its state now asks.
    fn reindex(&mut self, id: Uuid, before: Indexed) {
        let after = self.tasks.get(&id).map(Indexed::of).unwrap_or_default();
        if before.holder != after.holder {
            if let Some(agent) = before.holder {
                if let Some(held) = self.holders.get_mut(&agent) {
                    held.remove(&id);
                    if held.is_empty() {
                        self.holders.remove(&agent);
                    }
                }
            }
            if let Some(agent) = after.holder {
                self.holders.entry(agent).or_default().insert(id);
            }
        }
        if before.retry_at != after.retry_at {
            if let Some(at) = before.retry_at {
                self.retries.remove(&(at, id));
            }
            if let Some(at) = after.retry_at {
                self.retries.insert((at, id));
            }
        }
        if before.held_in != after.held_in {
            if let Some((organization, project)) = before.held_in {
                if let Some(counts) = self.active.get_mut(&organization) {
                    counts.release(project);
                    if counts.organization == 0 {
                        self.active.remove(&organization);
                    }
                }
            }
            if let Some((organization, project)) = after.held_in {
                self.active.entry(organization).or_default().hold(project);
            }
        }
    }

    /// A task reached a final state: it leaves the queue, remembered by its id only.
    fn finish(&mut self, id: Uuid) {
        // Its side indexes already let it go: a final status indexes nothing.
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        if task.status == TaskStatus::Completed {
            self.completed.insert(id);
        } else {
            self.ended.insert(id);
        }
        if let Some(groups) = self.by_organization.get_mut(&task.organization_id) {
            if let Some(open) = groups.get_mut(&task.required_capabilities) {
                open.remove(&id);
                if open.is_empty() {
                    groups.remove(&task.required_capabilities);
                }
            }
            if groups.is_empty() {
                self.by_organization.remove(&task.organization_id);
            }
        }
        for dependency in &task.depends_on {
            self.forget_dependent(*dependency, id);
        }
        // Its own dependents keep waiting or run; nobody asks how many wait for it now.
        self.dependents.remove(&id);
    }

    /// Counts `dependent` among those waiting for `dependency` while that one is open
    /// (or not seen yet): once it has ended, nobody asks how many wait for it.
    fn wait_for(&mut self, dependency: Uuid, dependent: Uuid) {
        if !self.completed.contains(&dependency) && !self.ended.contains(&dependency) {
            self.dependents
                .entry(dependency)
                .or_default()
                .insert(dependent);
        }
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
            self.wait_for(*dependency, id);
        }
        let organization_id = organization.unwrap_or(organization_id);
        let required_capabilities: BTreeSet<String> = required_capabilities.into_iter().collect();
        self.by_organization
            .entry(organization_id)
            .or_default()
            .entry(required_capabilities.clone())
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
                required_capabilities,
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
                progress_reports: 0,
                reassigned_from: None,
                open_discoveries: BTreeSet::new(),
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
        // Strictly after `now`, whatever the task id.
        self.retries
            .range((Bound::Excluded((now, Uuid::max())), Bound::Unbounded))
            .map(|(at, _)| *at)
            .next()
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

    /// Every ready task, best score first (ties: the older task first): what the tests
    /// compare the scoped looks with.
    #[cfg(test)]
    pub(crate) fn ready(&self, now: DateTime<Utc>, config: &ScoreConfig) -> Vec<Candidate> {
        self.rank(self.tasks.values(), now, config).collect()
    }

    /// The organizations with open tasks.
    pub fn organizations(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.by_organization.keys().copied()
    }

    /// The ready tasks of the organizations `organizations` accepts that an agent with
    /// `capabilities` could run, best first. Only those organizations' tasks of those
    /// requirements are looked at: neither another organization's backlog nor work
    /// needing a capability the agents lack costs a look anything.
    pub fn ready_for(
        &self,
        organizations: impl Fn(Uuid) -> bool,
        capabilities: &BTreeSet<String>,
        now: DateTime<Utc>,
        config: &ScoreConfig,
    ) -> Ranked {
        let open = self
            .by_organization
            .iter()
            .filter(|(organization, _)| organizations(**organization))
            .flat_map(|(_, groups)| self.runnable(groups, capabilities));
        self.rank(open, now, config)
    }

    /// The ready tasks of one organization an agent with `capabilities` could run, best
    /// first.
    pub fn ready_in(
        &self,
        organization_id: Uuid,
        capabilities: &BTreeSet<String>,
        now: DateTime<Utc>,
        config: &ScoreConfig,
    ) -> Ranked {
        let open = self
            .by_organization
            .get(&organization_id)
            .into_iter()
            .flat_map(|groups| self.runnable(groups, capabilities));
        self.rank(open, now, config)
    }

    /// The open tasks of an organization's groups whose requirements `capabilities` meet.
    fn runnable<'a>(
        &'a self,
        groups: &'a HashMap<BTreeSet<String>, BTreeSet<Uuid>>,
        capabilities: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = &'a QueuedTask> {
        groups
            .iter()
            .filter(|(required, _)| required.is_subset(capabilities))
            .flat_map(|(_, ids)| ids)
            .filter_map(|id| self.tasks.get(id))
    }

    fn rank<'a>(
        &self,
        tasks: impl Iterator<Item = &'a QueuedTask>,
        now: DateTime<Utc>,
        config: &ScoreConfig,
    ) -> Ranked {
        let heap = tasks
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
                Ranking {
                    candidate: Candidate {
                        task_id: task.id,
                        score: config.score(&input),
                    },
                    created_at: task.created_at,
                }
            })
            .collect();
        Ranked { heap }
    }

    /// How many tasks are open (not final): what the queue holds in full.
    pub fn open_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Tasks holding places under the caps in one organization
    /// ([`QueuedTask::holds_a_place`]): per project, and in all.
    pub fn active_in(&self, organization_id: Uuid) -> ActiveCounts {
        self.active
            .get(&organization_id)
            .cloned()
            .unwrap_or_default()
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
    /// `after_ms`: each as the sweep saw it.
    pub fn stalled(&self, now: DateTime<Utc>, after_ms: u64) -> Vec<Stall> {
        let after = i64::try_from(after_ms).unwrap_or(i64::MAX);
        self.tasks
            .values()
            .filter(|t| t.status == TaskStatus::Running && !t.stalled)
            .filter_map(|t| {
                let idle_since = t.last_progress_at?;
                let agent_id = t.agent_id?;
                ((now - idle_since).num_milliseconds() > after).then_some(Stall {
                    task_id: t.id,
                    agent_id,
                    idle_since,
                    progress_seen: t.progress_reports,
                })
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
        self.holders
            .get(&agent_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
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
        created_requiring(id, priority, age_seconds, depends_on, &[])
    }

    fn created_requiring(
        id: Uuid,
        priority: Priority,
        age_seconds: i64,
        depends_on: Vec<Uuid>,
        capabilities: &[&str],
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
            required_capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            max_retries: 3,
            timeout_seconds: None,
            created_at: Utc::now() - Duration::seconds(age_seconds),
        };
        stored(id, event, json!({"organization_id": organization_id}))
    }

    /// A created task's cancellation (its second event).
    fn cancelled(id: Uuid) -> StoredEvent {
        let mut event = stored(
            id,
            TaskEvent::TaskCancelled {
                reason: None,
                at: Utc::now(),
            },
            json!({}),
        );
        event.sequence = 2;
        event
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

    proptest::proptest! {
        /// Taken from the heap, the ready tasks come in the order of sorting them all:
        /// best score first, ties to the older task, then to the lower id.
        #[test]
        fn ranked_tasks_come_out_as_sorting_them_all_orders_them(
            tasks in proptest::collection::vec((0usize..4, 0i64..3), 0..40)
        ) {
            let priorities = [Priority::Low, Priority::Medium, Priority::High, Priority::Critical];
            let mut queue = Queue::default();
            for (n, (priority, age)) in tasks.iter().enumerate() {
                let id = Uuid::from_u128(1_000 + n as u128);
                queue.apply(&created(id, priorities[*priority], age * 1_800, vec![]));
            }
            let now = Utc::now();
            let config = ScoreConfig::default();
            let taken: Vec<Uuid> = queue.ready(now, &config).iter().map(|c| c.task_id).collect();
            let mut sorted: Vec<(f64, DateTime<Utc>, Uuid)> = queue
                .ready(now, &config)
                .iter()
                .map(|c| (c.score, queue.tasks[&c.task_id].created_at, c.task_id))
                .collect();
            sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let sorted: Vec<Uuid> = sorted.into_iter().map(|(_, _, id)| id).collect();
            proptest::prop_assert_eq!(taken.len(), tasks.len());
            proptest::prop_assert_eq!(taken, sorted);
        }
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

    /// A withdrawn assignment stops the run its in-process agent began in the same
    /// transaction, and the task is ready again with its agent's place free.
    #[test]
    fn a_withdrawn_assignment_stops_its_run_and_the_task_is_ready_again() {
        let mut queue = Queue::default();
        let (task, agent) = (Uuid::from_u128(50), Uuid::from_u128(8));
        let at = Utc::now();
        let meta = json!({});
        queue.apply(&created(task, Priority::High, 0, vec![]));
        let assigned = TaskEvent::TaskAssigned {
            agent_id: agent,
            at,
        };
        queue.apply(&stored(task, assigned, meta.clone()));
        queue.apply(&stored(task, TaskEvent::TaskStarted { at }, meta.clone()));
        assert_eq!(queue.held_by(agent).len(), 1);
        let withdrawn = TaskEvent::TaskAssignmentWithdrawn {
            agent_id: agent,
            at,
        };
        assert_eq!(
            queue.apply(&stored(task, withdrawn, meta)),
            Change::Stop(task)
        );
        assert!(queue.held_by(agent).is_empty());
        let queued = queue.task(task).expect("still queued");
        assert_eq!((queued.agent_id, queued.started_at), (None, None));
        assert!(queue.is_ready(queued, at));
    }

    /// A stall is found with the attempt's progress reports the queue saw, so that the
    /// task can refuse it when more came since (`Task::progress_reports`).
    #[test]
    fn a_stall_is_found_with_the_attempts_progress_reports_seen() {
        let mut queue = Queue::default();
        let (task, agent) = (Uuid::from_u128(60), Uuid::from_u128(9));
        let start = Utc::now() - Duration::seconds(60);
        let meta = json!({});
        queue.apply(&created(task, Priority::High, 0, vec![]));
        let assigned = TaskEvent::TaskAssigned {
            agent_id: agent,
            at: start,
        };
        queue.apply(&stored(task, assigned, meta.clone()));
        queue.apply(&stored(
            task,
            TaskEvent::TaskStarted { at: start },
            meta.clone(),
        ));
        let now = start + Duration::seconds(30);
        let stall = |queue: &Queue, idle_since, progress_seen| {
            assert_eq!(
                queue.stalled(now, 5_000),
                vec![Stall {
                    task_id: task,
                    agent_id: agent,
                    idle_since,
                    progress_seen,
                }]
            );
        };
        stall(&queue, start, 0);
        let reported_at = start + Duration::seconds(1);
        let progress = TaskEvent::TaskProgressReported {
            message: "halfway".into(),
        };
        let reported = json!({"occurred_at": reported_at});
        queue.apply(&stored(task, progress.clone(), reported.clone()));
        queue.apply(&stored(task, progress, reported));
        stall(&queue, reported_at, 2);
        let restarted = start + Duration::seconds(2);
        queue.apply(&stored(
            task,
            TaskEvent::TaskStarted { at: restarted },
            meta,
        ));
        stall(&queue, restarted, 0);
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
    fn an_organizations_ready_tasks_come_from_its_own_index_by_what_they_require() {
        let mut queue = Queue::default();
        let (ours, theirs, gpu, gpu_and_rust) = (
            Uuid::from_u128(50),
            Uuid::from_u128(51),
            Uuid::from_u128(52),
            Uuid::from_u128(53),
        );
        queue.apply(&created(ours, Priority::Low, 0, vec![]));
        let mut other = created(theirs, Priority::Critical, 0, vec![]);
        other.metadata = json!({"organization_id": Uuid::from_u128(9)}).into();
        queue.apply(&other);
        queue.apply(&created_requiring(
            gpu,
            Priority::Medium,
            0,
            vec![],
            &["gpu"],
        ));
        queue.apply(&created_requiring(
            gpu_and_rust,
            Priority::Medium,
            0,
            vec![],
            &["gpu", "rust"],
        ));
        let capabilities =
            |names: &[&str]| -> BTreeSet<String> { names.iter().map(|c| c.to_string()).collect() };
        let ids =
            |candidates: Ranked| -> BTreeSet<Uuid> { candidates.map(|c| c.task_id).collect() };
        let now = Utc::now();
        let score = ScoreConfig::default();
        let in_organization = |queue: &Queue, organization: u128, names: &[&str]| {
            ids(queue.ready_in(
                Uuid::from_u128(organization),
                &capabilities(names),
                now,
                &score,
            ))
        };
        assert_eq!(in_organization(&queue, 1, &[]), BTreeSet::from([ours]));
        assert_eq!(
            in_organization(&queue, 1, &["gpu"]),
            BTreeSet::from([ours, gpu])
        );
        assert_eq!(
            in_organization(&queue, 1, &["gpu", "rust", "go"]),
            BTreeSet::from([ours, gpu, gpu_and_rust])
        );
        assert_eq!(
            in_organization(&queue, 9, &["gpu"]),
            BTreeSet::from([theirs])
        );
        assert!(in_organization(&queue, 7, &["gpu"]).is_empty());
        let everywhere =
            |names: &[&str]| ids(queue.ready_for(|_| true, &capabilities(names), now, &score));
        assert_eq!(everywhere(&[]), BTreeSet::from([ours, theirs]));
        let all: BTreeSet<Uuid> = queue.ready(now, &score).iter().map(|c| c.task_id).collect();
        assert_eq!(everywhere(&["rust", "gpu"]), all);
        let only_nine = ids(queue.ready_for(
            |organization| organization == Uuid::from_u128(9),
            &capabilities(&["gpu", "rust"]),
            now,
            &score,
        ));
        assert_eq!(only_nine, BTreeSet::from([theirs]));
        // A task that finished leaves its group; an emptied group and organization go.
        queue.apply(&cancelled(gpu_and_rust));
        assert_eq!(
            in_organization(&queue, 1, &["gpu", "rust"]),
            BTreeSet::from([ours, gpu])
        );
        queue.apply(&cancelled(theirs));
        assert!(in_organization(&queue, 9, &[]).is_empty());
        assert!(!queue.by_organization.contains_key(&Uuid::from_u128(9)));
        assert_eq!(queue.by_organization[&Uuid::from_u128(1)].len(), 2);
    }

    #[test]
    fn an_organizations_held_tasks_are_counted_per_project_without_the_others() {
        let mut queue = Queue::default();
        let (held, waiting, elsewhere) = (
            Uuid::from_u128(60),
            Uuid::from_u128(61),
            Uuid::from_u128(62),
        );
        for id in [held, waiting] {
            queue.apply(&created(id, Priority::Medium, 0, vec![]));
        }
        let mut other = created(elsewhere, Priority::Medium, 0, vec![]);
        other.metadata = json!({"organization_id": Uuid::from_u128(9)}).into();
        queue.apply(&other);
        for id in [held, elsewhere] {
            let mut assigned = stored(
                id,
                TaskEvent::TaskAssigned {
                    agent_id: Uuid::from_u128(70),
                    at: Utc::now(),
                },
                json!({}),
            );
            assigned.sequence = 2;
            queue.apply(&assigned);
        }
        let mut counts = queue.active_in(Uuid::from_u128(1));
        assert_eq!(counts.organization, 1);
        assert_eq!(counts.in_project(Uuid::from_u128(2)), 1);
        assert_eq!(counts.in_project(Uuid::from_u128(5)), 0);
        counts.hold(Uuid::from_u128(5));
        assert_eq!(
            (counts.organization, counts.in_project(Uuid::from_u128(5))),
            (2, 1)
        );
        assert_eq!(queue.active_in(Uuid::from_u128(9)).organization, 1);
        assert_eq!(queue.active_in(Uuid::from_u128(7)), ActiveCounts::default());
    }

    #[test]
    fn a_task_waiting_for_its_blocking_discoveries_holds_no_place_meanwhile() {
        let mut queue = Queue::default();
        let parent = Uuid::from_u128(63);
        let (first, second) = (Uuid::from_u128(64), Uuid::from_u128(65));
        queue.apply(&created(parent, Priority::Medium, 0, vec![]));
        let mut sequence = 1;
        let mut apply = |queue: &mut Queue, event: TaskEvent| {
            sequence += 1;
            let mut stored = stored(parent, event, json!({}));
            stored.sequence = sequence;
            queue.apply(&stored)
        };
        let at = Utc::now();
        let agent_id = Uuid::from_u128(70);
        apply(&mut queue, TaskEvent::TaskAssigned { agent_id, at });
        apply(&mut queue, TaskEvent::TaskStarted { at });
        let places = |queue: &Queue| queue.active_in(Uuid::from_u128(1)).organization;
        assert_eq!(places(&queue), 1);
        let discovered = |discovered_task_id, blocks_parent| TaskEvent::TaskDiscoveryReported {
            discovered_task_id,
            kind: omoi_domain::task::DiscoveryKind::Dependency,
            blocks_parent,
        };
        // Work it does not wait for changes nothing.
        assert_eq!(
            apply(&mut queue, discovered(Uuid::from_u128(66), false)),
            Change::None
        );
        assert_eq!(places(&queue), 1);
        // Waiting for two: its place is free (the dispatcher looks again), until both end.
        assert_eq!(apply(&mut queue, discovered(first, true)), Change::Queue);
        apply(&mut queue, discovered(second, true));
        assert_eq!(places(&queue), 0);
        assert_eq!(queue.held_by(agent_id).len(), 1, "its agent still holds it");
        apply(
            &mut queue,
            TaskEvent::TaskDiscoveryResolved {
                discovered_task_id: first,
            },
        );
        assert_eq!(places(&queue), 0);
        apply(
            &mut queue,
            TaskEvent::TaskDiscoveryResolved {
                discovered_task_id: second,
            },
        );
        assert_eq!(places(&queue), 1);
    }

    /// One event of the property below: which task, and what happens to it.
    #[derive(Debug, Clone)]
    enum Step {
        Assign(u128),
        Start,
        Fail,
        RetryIn(i64),
        Unassign,
        Withdraw,
        Submit,
        Complete,
        Cancel,
        /// A blocking discovery reported (of one of two discovered tasks).
        Discover(u128),
        /// That discovery resolved.
        Resolve(u128),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = (usize, Step)> {
        use proptest::prelude::*;
        let step = prop_oneof![
            (0u128..3).prop_map(Step::Assign),
            Just(Step::Start),
            Just(Step::Fail),
            (-5i64..5).prop_map(Step::RetryIn),
            Just(Step::Unassign),
            Just(Step::Withdraw),
            Just(Step::Submit),
            Just(Step::Complete),
            Just(Step::Cancel),
            (0u128..2).prop_map(Step::Discover),
            (0u128..2).prop_map(Step::Resolve),
        ];
        (0usize..5, step)
    }

    /// The task event a step of the properties below makes.
    fn event_of(step: Step, now: DateTime<Utc>) -> TaskEvent {
        let at = Utc::now();
        match step {
            Step::Assign(agent) => TaskEvent::TaskAssigned {
                agent_id: Uuid::from_u128(300 + agent),
                at,
            },
            Step::Start => TaskEvent::TaskStarted { at },
            Step::Fail => TaskEvent::TaskFailed {
                error: "no".into(),
                attempt: 1,
                at,
            },
            Step::RetryIn(seconds) => TaskEvent::TaskRetryScheduled {
                attempt: 1,
                not_before: now + Duration::seconds(seconds),
            },
            Step::Unassign => TaskEvent::TaskUnassigned {
                agent_id: Uuid::from_u128(300),
                at,
            },
            Step::Withdraw => TaskEvent::TaskAssignmentWithdrawn {
                agent_id: Uuid::from_u128(300),
                at,
            },
            Step::Submit => TaskEvent::TaskSubmittedForValidation {
                result: json!({}),
                revision: 0,
                implementer_agent_id: None,
                at,
            },
            Step::Complete => TaskEvent::TaskCompleted {
                result: json!({}),
                at,
            },
            Step::Cancel => TaskEvent::TaskCancelled { reason: None, at },
            Step::Discover(n) => TaskEvent::TaskDiscoveryReported {
                discovered_task_id: Uuid::from_u128(500 + n),
                kind: omoi_domain::task::DiscoveryKind::Bug,
                blocks_parent: true,
            },
            Step::Resolve(n) => TaskEvent::TaskDiscoveryResolved {
                discovered_task_id: Uuid::from_u128(500 + n),
            },
        }
    }

    /// One read of the property below: how far the gapless stream moves on, and which of
    /// the (at most 32) events after it have committed already.
    fn read() -> impl proptest::strategy::Strategy<Value = (usize, u32)> {
        use proptest::prelude::*;
        (0usize..6, any::<u32>())
    }

    proptest::proptest! {
        /// The worker's reads (a gapless page, then the events committed beyond it; each
        /// task's next one applied at once, every one of them brought again by the stream
        /// later) leave the queue as reading the log in its order does, and every event's
        /// consequence (a task to stop or steer, the queue to look at) happens once.
        #[test]
        fn events_taken_ahead_of_the_stream_are_applied_once_and_agree_with_the_log(
            steps in proptest::collection::vec(step(), 0..50),
            reads in proptest::collection::vec(read(), 0..40),
            creations_at in proptest::collection::vec(0usize..50, 5),
        ) {
            let now = Utc::now();
            let ids: Vec<Uuid> = (0..5).map(|n| Uuid::from_u128(400 + n)).collect();
            // The log: each task's creation at a place of its own among the steps (the
            // second task waits for the first), each task's events in its sequence.
            let mut log: Vec<StoredEvent> = Vec::new();
            let mut sequences = [0i64; 5];
            let mut made = [false; 5];
            for (place, (n, step)) in steps.into_iter().enumerate() {
                for (task, at) in creations_at.iter().enumerate() {
                    if !made[task] && *at <= place {
                        let depends_on = if task == 1 { vec![ids[0]] } else { vec![] };
                        log.push(created(ids[task], Priority::Medium, 0, depends_on));
                        made[task] = true;
                        sequences[task] = 1;
                    }
                }
                if sequences[n] == 0 {
                    continue;
                }
                sequences[n] += 1;
                let mut event = stored(ids[n], event_of(step, now), json!({}));
                event.sequence = sequences[n];
                log.push(event);
            }
            for (position, event) in log.iter_mut().enumerate() {
                event.global_position = position as i64 + 1;
            }

            let mut in_order = Queue::default();
            let mut expected: Vec<String> = log
                .iter()
                .map(|event| in_order.apply(event))
                .filter(|change| *change != Change::None)
                .map(|change| format!("{change:?}"))
                .collect();

            let mut queue = Queue::default();
            let mut changes = Vec::new();
            let mut gapless = 0;
            let mut record = |change: Change| {
                if change != Change::None {
                    changes.push(format!("{change:?}"));
                }
            };
            for (moved, committed) in reads.into_iter().chain([(log.len(), 0)]) {
                let until = (gapless + moved).min(log.len());
                for event in &log[gapless..until] {
                    if !queue.applied_ahead(event) {
                        record(queue.apply(event));
                    }
                }
                gapless = until;
                let mut ahead: Vec<&StoredEvent> = log[gapless..]
                    .iter()
                    .take(32)
                    .enumerate()
                    .filter(|(n, _)| committed & (1 << n) != 0)
                    .map(|(_, event)| event)
                    .collect();
                ahead.sort_by(|a, b| (&a.aggregate_id, a.sequence).cmp(&(&b.aggregate_id, b.sequence)));
                for event in ahead {
                    record(queue.apply_ahead(event));
                }
            }
            proptest::prop_assert!(queue.ahead.is_empty(), "the stream brought every event again");
            proptest::prop_assert_eq!(&queue, &in_order);
            expected.sort();
            changes.sort();
            proptest::prop_assert_eq!(changes, expected);
        }

        /// Whatever events arrive in whatever order, the side indexes say what a scan of
        /// every open task says: the tasks each agent holds, the next retry, the places an
        /// organization's tasks hold (held, and waiting for no blocking discovery), and the
        /// ready tasks a set of capabilities may run.
        #[test]
        fn the_side_indexes_agree_with_a_scan_of_every_task(
            steps in proptest::collection::vec(step(), 0..60)
        ) {
            let mut queue = Queue::default();
            let now = Utc::now();
            let ids: Vec<Uuid> = (0..5).map(|n| Uuid::from_u128(200 + n)).collect();
            let requirements: [&[&str]; 5] = [&[], &["gpu"], &[], &["gpu", "rust"], &["rust"]];
            for (n, id) in ids.iter().enumerate() {
                let mut event = created_requiring(*id, Priority::Medium, 0, vec![], requirements[n]);
                if n == 4 {
                    event.metadata = json!({"organization_id": Uuid::from_u128(9)}).into();
                }
                queue.apply(&event);
            }
            let mut sequences = [1i64; 5];
            for (n, step) in steps {
                let event = event_of(step, now);
                sequences[n] += 1;
                let mut stored = stored(ids[n], event, json!({}));
                stored.sequence = sequences[n];
                queue.apply(&stored);

                let open: Vec<&QueuedTask> = queue.tasks.values().collect();
                for agent in (0..3).map(|a| Uuid::from_u128(300 + a)) {
                    let mut held: Vec<Uuid> = queue.held_by(agent).iter().map(|t| t.id).collect();
                    let mut scanned: Vec<Uuid> = open
                        .iter()
                        .filter(|t| t.is_active() && t.agent_id == Some(agent))
                        .map(|t| t.id)
                        .collect();
                    held.sort();
                    scanned.sort();
                    proptest::prop_assert_eq!(held, scanned);
                }
                let scanned_retry = open
                    .iter()
                    .filter(|t| t.status == TaskStatus::RetryScheduled)
                    .filter_map(|t| t.not_before)
                    .filter(|at| *at > now)
                    .min();
                proptest::prop_assert_eq!(queue.next_retry(now), scanned_retry);
                for organization in [Uuid::from_u128(1), Uuid::from_u128(9)] {
                    let mut scanned = ActiveCounts::default();
                    for task in open
                        .iter()
                        .filter(|t| {
                            t.organization_id == organization
                                && t.is_active()
                                && t.open_discoveries.is_empty()
                        })
                    {
                        scanned.hold(task.project_id);
                    }
                    proptest::prop_assert_eq!(queue.active_in(organization), scanned);
                }
                let gpu: BTreeSet<String> = BTreeSet::from(["gpu".to_string()]);
                let mut looked: Vec<Uuid> = queue
                    .ready_for(|_| true, &gpu, now, &ScoreConfig::default())
                    .map(|c| c.task_id)
                    .collect();
                let mut scanned: Vec<Uuid> = open
                    .iter()
                    .filter(|t| t.required_capabilities.is_subset(&gpu) && queue.is_ready(t, now))
                    .map(|t| t.id)
                    .collect();
                looked.sort();
                scanned.sort();
                proptest::prop_assert_eq!(looked, scanned);
            }
        }
    }
}
