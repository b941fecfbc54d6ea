//! The pure agents view: what a task event does to assignments ([`task_effect`]), the
//! rows a batch reads and changes, and the transitions the projector and the live stream
//! ([`AgentsModel`]) both run.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, SubsecRound, Utc};
use omoi_domain::agent::AgentEvent;
use omoi_domain::task::TaskEvent;
use omoi_store::StoredEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::codec::{entity_id, EventMeta};
use crate::ProjectionError;

/// What a task event does to the task's assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEffect {
    /// The task now belongs to this agent.
    Assign(Uuid),
    /// The attempt is over: the agent is free of it.
    Release,
}

/// The assignment change of a task event, if any.
pub fn task_effect(event: &TaskEvent) -> Option<TaskEffect> {
    match event {
        TaskEvent::TaskAssigned { agent_id, .. } => Some(TaskEffect::Assign(*agent_id)),
        // `TaskFailed`/`TaskTimedOut` already end the attempt; the outcome that follows
        // in the same command releases again, harmlessly.
        TaskEvent::TaskCompleted { .. }
        | TaskEvent::TaskSubmittedForValidation { .. }
        | TaskEvent::TaskFailed { .. }
        | TaskEvent::TaskTimedOut { .. }
        | TaskEvent::TaskRetryScheduled { .. }
        | TaskEvent::TaskPermanentlyFailed { .. }
        | TaskEvent::TaskCancelled { .. }
        | TaskEvent::TaskUnassigned { .. }
        | TaskEvent::TaskAssignmentWithdrawn { .. } => Some(TaskEffect::Release),
        TaskEvent::TaskCreated { .. }
        | TaskEvent::TaskStarted { .. }
        | TaskEvent::TaskProgressReported { .. }
        | TaskEvent::TaskStalled { .. }
        | TaskEvent::TaskSteered { .. }
        | TaskEvent::SteeringDelivered { .. }
        | TaskEvent::GuardianIntervened { .. }
        | TaskEvent::DuplicateSuspected { .. }
        | TaskEvent::TrajectoryAssessed { .. }
        | TaskEvent::TaskPriorityChanged { .. }
        | TaskEvent::TaskDependencyAdded { .. }
        | TaskEvent::TaskDependencyRemoved { .. }
        | TaskEvent::TaskDiscovered { .. }
        | TaskEvent::TaskDiscoveryReported { .. }
        | TaskEvent::TaskDiscoveryResolved { .. }
        | TaskEvent::TaskValidationRequired { .. }
        | TaskEvent::TaskValidates { .. }
        | TaskEvent::TaskVerdictGiven { .. }
        | TaskEvent::TaskValidationPassed { .. }
        | TaskEvent::TaskValidationRejected { .. }
        | TaskEvent::TaskRevisionRequested { .. }
        | TaskEvent::TaskValidationAbandoned { .. }
        | TaskEvent::TaskPlanned { .. } => None,
    }
}

/// An event of the batch that changes agents or assignments.
pub(super) enum Change<'a> {
    Agent {
        id: Uuid,
        event: AgentEvent,
    },
    Task {
        id: Uuid,
        effect: TaskEffect,
        event: &'a StoredEvent,
    },
}

/// An open assignment, as `task_agents` keeps it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct Assignment {
    pub(super) task_id: Uuid,
    pub(super) agent_id: Uuid,
    pub(super) organization_id: Uuid,
    pub(super) project_id: Option<Uuid>,
    pub(super) assigned_transaction_id: i64,
    pub(super) assigned_global_position: i64,
}

impl Assignment {
    fn order(&self) -> (i64, i64) {
        (self.assigned_transaction_id, self.assigned_global_position)
    }
}

/// The rows a batch reads and changes.
#[derive(Default)]
pub(super) struct Rows {
    pub(super) agents: HashMap<Uuid, AgentView>,
    pub(super) assignments: HashMap<Uuid, Assignment>,
    pub(super) changed_agents: BTreeSet<Uuid>,
    pub(super) changed_tasks: BTreeSet<Uuid>,
    /// Agents whose current task must be recomputed from their open assignments.
    pub(super) refresh: BTreeSet<Uuid>,
}

pub(super) fn decode(events: &[StoredEvent]) -> Result<Vec<Change<'_>>, ProjectionError> {
    let mut changes = Vec::new();
    for event in events {
        match event.aggregate_type.as_str() {
            "Agent" => changes.push(Change::Agent {
                id: entity_id(event)?,
                event: event
                    .payload
                    .decode::<AgentEvent>()
                    .map_err(|e| ProjectionError::payload(event, e))?,
            }),
            "Task" => {
                let parsed = event
                    .payload
                    .decode::<TaskEvent>()
                    .map_err(|e| ProjectionError::payload(event, e))?;
                if let Some(effect) = task_effect(&parsed) {
                    changes.push(Change::Task {
                        id: entity_id(event)?,
                        effect,
                        event,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(changes)
}

impl Rows {
    pub(super) fn apply_agent_event(&mut self, id: Uuid, event: AgentEvent) {
        match event {
            AgentEvent::AgentRegistered {
                agent_id,
                organization_id,
                project_id,
                name,
                agent_type,
                capabilities,
                capacity,
                registered_at,
            } => {
                // A second registration of one agent changes nothing.
                if self.agents.contains_key(&agent_id) {
                    return;
                }
                self.agents.insert(
                    agent_id,
                    AgentView {
                        agent_id,
                        organization_id,
                        project_id,
                        name,
                        agent_type: agent_type.as_str().to_string(),
                        status: "spawning".to_string(),
                        capabilities: capabilities.into_iter().collect(),
                        capacity: i64::from(capacity),
                        current_task_id: None,
                        last_status_change: as_stored(registered_at),
                        registered_at: as_stored(registered_at),
                    },
                );
                self.changed_agents.insert(agent_id);
            }
            AgentEvent::AgentStatusChanged { to, at, .. } => {
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.status = to.as_str().to_string();
                    agent.last_status_change = as_stored(at);
                    self.changed_agents.insert(id);
                }
            }
            AgentEvent::AgentCapabilitiesUpdated { capabilities } => {
                if let Some(agent) = self.agents.get_mut(&id) {
                    agent.capabilities = capabilities.into_iter().collect();
                    self.changed_agents.insert(id);
                }
            }
            // Its effect, a status change, follows as its own event; readings are the
            // health route's.
            AgentEvent::GuardianIntervened { .. }
            | AgentEvent::AnomalyDetected { .. }
            | AgentEvent::AnomalySubsided { .. } => {}
        }
    }

    pub(super) fn apply_task_effect(
        &mut self,
        task_id: Uuid,
        effect: TaskEffect,
        event: &StoredEvent,
    ) -> Result<(), ProjectionError> {
        self.changed_tasks.insert(task_id);
        // A reassignment first frees the previous holder, should an attempt's end be
        // missing.
        if let Some(previous) = self.assignments.remove(&task_id) {
            self.needs_refresh(previous.agent_id);
        }
        if let TaskEffect::Assign(agent_id) = effect {
            let meta = EventMeta::of(event)?;
            self.assignments.insert(
                task_id,
                Assignment {
                    task_id,
                    agent_id,
                    organization_id: meta.organization_id,
                    project_id: meta.project_id,
                    assigned_transaction_id: event.transaction_id,
                    assigned_global_position: event.global_position,
                },
            );
            self.needs_refresh(agent_id);
        }
        Ok(())
    }

    /// An agent without a row yet is not refreshed: its registration, should it come
    /// later, starts it with no current task.
    fn needs_refresh(&mut self, agent_id: Uuid) {
        if self.agents.contains_key(&agent_id) {
            self.refresh.insert(agent_id);
        }
    }

    /// Sets each refreshed agent's current task to its most recently assigned open task
    /// (or none). Every later change of its assignments would refresh it again, so the
    /// assignments as they stand at the end of the batch decide.
    pub(super) fn refresh_current_tasks(&mut self) {
        let mut latest: HashMap<Uuid, &Assignment> = HashMap::new();
        for assignment in self.assignments.values() {
            if !self.refresh.contains(&assignment.agent_id) {
                continue;
            }
            let slot = latest.entry(assignment.agent_id).or_insert(assignment);
            if assignment.order() > slot.order() {
                *slot = assignment;
            }
        }
        for agent_id in &self.refresh {
            if let Some(agent) = self.agents.get_mut(agent_id) {
                agent.current_task_id = latest.get(agent_id).map(|a| a.task_id);
                self.changed_agents.insert(*agent_id);
            }
        }
    }
}

/// A time as a `timestamptz` column keeps it (microseconds), so that a row folded in
/// memory equals the row read back.
fn as_stored(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// The agents of an organization as one process folds them from the log (the live
/// `agents` stream), with the projector's own rule.
#[derive(Default)]
pub struct AgentsModel {
    rows: Rows,
}

impl AgentsModel {
    /// Applies one event; the agents whose row it changed, by id.
    pub fn apply(&mut self, event: &StoredEvent) -> Result<BTreeSet<Uuid>, ProjectionError> {
        for change in decode(std::slice::from_ref(event))? {
            match change {
                Change::Agent { id, event } => self.rows.apply_agent_event(id, event),
                Change::Task { id, effect, event } => {
                    self.rows.apply_task_effect(id, effect, event)?
                }
            }
        }
        self.rows.refresh_current_tasks();
        let rows = &mut self.rows;
        rows.refresh.clear();
        rows.changed_tasks.clear();
        // Closed assignments are gone from `assignments` already; nothing else grows.
        Ok(std::mem::take(&mut rows.changed_agents))
    }

    pub fn agent(&self, id: Uuid) -> Option<&AgentView> {
        self.rows.agents.get(&id)
    }

    /// Every agent, in the order `GET /api/v1/agents` lists them (name, then id).
    pub fn agents(&self) -> Vec<&AgentView> {
        let mut agents: Vec<&AgentView> = self.rows.agents.values().collect();
        agents.sort_by(|a, b| (&a.name, a.agent_id).cmp(&(&b.name, b.agent_id)));
        agents
    }
}

/// One agent as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, ToSchema)]
pub struct AgentView {
    pub agent_id: Uuid,
    pub organization_id: Uuid,
    /// Absent for an agent that serves its whole organization.
    pub project_id: Option<Uuid>,
    pub name: String,
    /// `worker`, `monitor`, `watchdog` or `guardian`.
    pub agent_type: String,
    /// `spawning`, `idle`, `running`, `degraded`, `failed`, `quarantined` or `terminated`.
    pub status: String,
    pub capabilities: Vec<String>,
    pub capacity: i64,
    /// The most recently assigned task the agent has not finished.
    pub current_task_id: Option<Uuid>,
    /// When the status last changed (the registration for a new agent).
    pub last_status_change: DateTime<Utc>,
    pub registered_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5)
            .single()
            .expect("a valid time")
    }

    #[test]
    fn an_assignment_gives_the_task_to_its_agent() {
        let agent = Uuid::from_u128(7);
        let event = TaskEvent::TaskAssigned {
            agent_id: agent,
            at: at(),
        };
        assert_eq!(task_effect(&event), Some(TaskEffect::Assign(agent)));
    }

    #[test]
    fn every_end_of_an_attempt_frees_the_agent() {
        for event in [
            TaskEvent::TaskCompleted {
                result: json!(null),
                at: at(),
            },
            TaskEvent::TaskFailed {
                error: "boom".into(),
                attempt: 1,
                at: at(),
            },
            TaskEvent::TaskTimedOut {
                after_seconds: 60,
                attempt: 1,
                at: at(),
            },
            TaskEvent::TaskRetryScheduled {
                attempt: 2,
                not_before: at(),
            },
            TaskEvent::TaskPermanentlyFailed {
                reason: omoi_domain::task::FailureReason::PermanentError,
            },
            TaskEvent::TaskCancelled {
                reason: None,
                at: at(),
            },
            TaskEvent::TaskSubmittedForValidation {
                result: json!(null),
                revision: 0,
                implementer_agent_id: None,
                at: at(),
            },
        ] {
            assert_eq!(task_effect(&event), Some(TaskEffect::Release), "{event:?}");
        }
    }

    #[test]
    fn starting_or_reporting_progress_leaves_the_assignment_alone() {
        for event in [
            TaskEvent::TaskStarted { at: at() },
            TaskEvent::TaskProgressReported {
                message: "half way".into(),
            },
            TaskEvent::TaskDependencyAdded {
                depends_on: Uuid::from_u128(1),
            },
        ] {
            assert_eq!(task_effect(&event), None, "{event:?}");
        }
    }
}
