//! Assignments a process made that its queue has not read back yet.
//!
//! A queue follows the log a moment behind its process's own commits, so a task just
//! assigned here still looks ready there, and its agent's and organization's places still
//! look free. The worker's dispatcher and the API's claims both keep what they assigned
//! here until their queue shows it: offered to no other agent, and counted against the
//! caps meanwhile.

use std::collections::HashMap;

use uuid::Uuid;

use crate::queue::{ActiveCounts, Queue, QueuedTask};

#[derive(Debug, Clone, Copy)]
struct Reservation {
    organization_id: Uuid,
    project_id: Uuid,
    agent_id: Uuid,
    /// The task's version after the assignment (`None` while it commits): once the queue
    /// has applied it, the queue counts the assignment itself (or its later failure,
    /// retry or end).
    version: Option<u64>,
}

/// A task taken by an agent, where the caps count it.
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub task_id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub agent_id: Uuid,
}

#[derive(Debug, Default)]
pub struct Reservations {
    by_task: HashMap<Uuid, Reservation>,
}

impl Reservations {
    /// `agent_id` takes `task`; `version` is the task's version after the assignment, or
    /// `None` while the assignment commits ([`Self::committed`] then says it).
    pub fn reserve(&mut self, task: &QueuedTask, agent_id: Uuid, version: Option<u64>) {
        let place = Place {
            task_id: task.id,
            organization_id: task.organization_id,
            project_id: task.project_id,
            agent_id,
        };
        self.reserve_place(place, version);
    }

    /// [`Self::reserve`] for a task known by its place alone (the queue may not show it
    /// yet).
    pub fn reserve_place(&mut self, place: Place, version: Option<u64>) {
        self.by_task.insert(
            place.task_id,
            Reservation {
                organization_id: place.organization_id,
                project_id: place.project_id,
                agent_id: place.agent_id,
                version,
            },
        );
    }

    /// The task's assignment committed, leaving the task at `version`.
    pub fn committed(&mut self, task_id: Uuid, version: u64) {
        if let Some(reservation) = self.by_task.get_mut(&task_id) {
            reservation.version = Some(version);
        }
    }

    /// The task's assignment was refused: the task and its agent's place are free again.
    pub fn release(&mut self, task_id: Uuid) {
        self.by_task.remove(&task_id);
    }

    /// Forgets the reservations `queue` has caught up with.
    pub fn forget_seen(&mut self, queue: &Queue) {
        self.by_task.retain(|task, reservation| {
            reservation
                .version
                .is_none_or(|version| !queue.has_seen(*task, version))
        });
    }

    pub fn contains(&self, task_id: Uuid) -> bool {
        self.by_task.contains_key(&task_id)
    }

    /// The tasks `agent_id` holds here that the queue does not show.
    pub fn held_by(&self, agent_id: Uuid) -> usize {
        self.by_task
            .values()
            .filter(|reservation| reservation.agent_id == agent_id)
            .count()
    }

    /// The tasks held here that the queue does not show, of one organization.
    pub fn held_in(&self, organization_id: Uuid) -> ActiveCounts {
        let mut held = ActiveCounts::default();
        for reservation in self.by_task.values() {
            if reservation.organization_id == organization_id {
                held.hold(reservation.project_id);
            }
        }
        held
    }

    /// The tasks of one organization held here that the queue does not show.
    pub fn tasks_in(&self, organization_id: Uuid) -> impl Iterator<Item = Uuid> + '_ {
        self.by_task
            .iter()
            .filter(move |(_, reservation)| reservation.organization_id == organization_id)
            .map(|(task_id, _)| *task_id)
    }

    /// The same, for every organization.
    pub fn held(&self) -> HashMap<Uuid, ActiveCounts> {
        let mut held: HashMap<Uuid, ActiveCounts> = HashMap::new();
        for reservation in self.by_task.values() {
            held.entry(reservation.organization_id)
                .or_default()
                .hold(reservation.project_id);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use omoi_domain::common::Priority;
    use omoi_domain::task::TaskEvent;
    use omoi_store::StoredEvent;
    use serde_json::json;

    use super::*;

    const ORGANIZATION: Uuid = Uuid::from_u128(1);
    const PROJECT: Uuid = Uuid::from_u128(2);

    fn event(task: Uuid, sequence: i64, event: TaskEvent) -> StoredEvent {
        StoredEvent {
            aggregate_type: "Task".into(),
            aggregate_id: task.to_string(),
            sequence,
            global_position: sequence,
            transaction_id: 1,
            event_type: "TaskEvent".into(),
            event_version: "1".into(),
            payload: serde_json::to_value(event).expect("an event").into(),
            metadata: json!({"organization_id": ORGANIZATION}).into(),
        }
    }

    #[test]
    fn a_reservation_holds_its_places_until_the_queue_shows_its_assignment() {
        let (task, other, agent) = (
            Uuid::from_u128(10),
            Uuid::from_u128(11),
            Uuid::from_u128(20),
        );
        let mut queue = Queue::default();
        for id in [task, other] {
            queue.apply(&event(
                id,
                1,
                TaskEvent::TaskCreated {
                    task_id: id,
                    organization_id: ORGANIZATION,
                    project_id: PROJECT,
                    ticket_id: Uuid::from_u128(3),
                    title: "t".into(),
                    description: String::new(),
                    task_type: "implement".into(),
                    phase: Default::default(),
                    priority: Priority::Medium,
                    depends_on: vec![],
                    required_capabilities: vec![],
                    max_retries: 3,
                    timeout_seconds: None,
                    created_at: Utc::now(),
                },
            ));
        }
        let mut reservations = Reservations::default();
        let queued = |id| queue.task(id).cloned().expect("queued");
        reservations.reserve(&queued(task), agent, None);
        reservations.reserve(&queued(other), agent, None);
        reservations.release(other);
        reservations.forget_seen(&queue);
        assert!(reservations.contains(task), "kept while it commits");
        assert!(!reservations.contains(other), "released");
        assert_eq!(reservations.held_by(agent), 1);
        assert_eq!(reservations.held_in(ORGANIZATION).in_project(PROJECT), 1);
        assert_eq!(reservations.held()[&ORGANIZATION].organization, 1);
        assert_eq!(reservations.held_in(Uuid::from_u128(9)).organization, 0);

        reservations.committed(task, 2);
        reservations.forget_seen(&queue);
        assert!(reservations.contains(task), "the queue is at version 1");
        queue.apply(&event(
            task,
            2,
            TaskEvent::TaskAssigned {
                agent_id: agent,
                at: Utc::now(),
            },
        ));
        reservations.forget_seen(&queue);
        assert!(!reservations.contains(task), "the queue shows it now");
        assert!(reservations.held().is_empty());
    }
}
