//! The pure graph: tickets and tasks as nodes, each task's dependencies, and the
//! transition one event makes ([`GraphModel::apply`]) — shared by the SQL projector, the
//! queries, time travel and the live stream.

use std::collections::{BTreeMap, BTreeSet};

use omoi_domain::task::{TaskEvent, TaskStatus};
use omoi_domain::ticket::{TicketEvent, TicketStatus};
use omoi_store::StoredEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::codec::WorkEvent;
use crate::delta::Entries;
use crate::ProjectionError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Ticket,
    Task,
}

/// A ticket or a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: Uuid,
    pub kind: NodeKind,
    pub organization_id: Uuid,
    pub project_id: Uuid,
    /// The ticket a task belongs to; absent for tickets.
    pub ticket_id: Option<Uuid>,
    pub title: String,
    /// A ticket status (`building`, …) for tickets, a task status (`running`, …) for tasks.
    pub status: String,
    /// Global position of the last event that changed the node or its edges.
    pub last_position: i64,
}

impl Node {
    pub(super) fn is_completed_task(&self) -> bool {
        self.kind == NodeKind::Task && self.status == TaskStatus::Completed.as_str()
    }
}

/// The rows one event changed, to be written back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touched {
    pub node: Option<Uuid>,
    /// The task whose outgoing edges must be rewritten.
    pub edges_of: Option<Uuid>,
}

/// The nodes and the tasks' dependencies some events touched, gathered for a
/// [`GraphDelta`].
#[derive(Debug, Clone, Default)]
pub struct GraphChanges {
    nodes: BTreeSet<Uuid>,
    edges_of: BTreeSet<Uuid>,
}

impl GraphChanges {
    pub fn add(&mut self, touched: Touched) {
        self.nodes.extend(touched.node);
        self.edges_of.extend(touched.edges_of);
    }
}

/// The nodes and dependencies some events changed, as they stand after them
/// ([`crate::delta`]): a snapshot's delta of the graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GraphDelta {
    nodes: Entries<Node>,
    depends_on: Entries<BTreeSet<Uuid>>,
}

/// Any part of the graph: a whole project (time travel, project view) or the rows one
/// event or one query needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GraphModel {
    pub(super) nodes: BTreeMap<Uuid, Node>,
    /// Task → the tasks it depends on.
    depends_on: BTreeMap<Uuid, BTreeSet<Uuid>>,
}

impl GraphModel {
    /// Applies one event of the log; returns the rows it changed.
    pub fn apply(&mut self, stored: &StoredEvent) -> Result<Touched, ProjectionError> {
        Ok(match WorkEvent::decode(stored)? {
            Some(work) => self.apply_work(work, stored.global_position),
            None => Touched::default(),
        })
    }

    /// Whether `work` can change the graph (blocks, descriptions, progress and failed
    /// attempts cannot), so the projector skips loading rows for the others.
    pub fn is_relevant(work: &WorkEvent) -> bool {
        match work {
            WorkEvent::Ticket { event, .. } => match event {
                TicketEvent::TicketUpdated { title, .. } => title.is_some(),
                TicketEvent::TicketBlocked { .. }
                | TicketEvent::TicketUnblocked
                | TicketEvent::TicketPlanned { .. } => false,
                TicketEvent::TicketCreated { .. }
                | TicketEvent::TicketStatusChanged { .. }
                | TicketEvent::TicketRegressed { .. } => true,
            },
            WorkEvent::Task { event, .. } => {
                Self::changes_edges(event) || event.status_after().is_some()
            }
        }
    }

    /// Whether a task event changes the task's outgoing edges.
    pub fn changes_edges(event: &TaskEvent) -> bool {
        matches!(
            event,
            TaskEvent::TaskCreated { .. }
                | TaskEvent::TaskDependencyAdded { .. }
                | TaskEvent::TaskDependencyRemoved { .. }
        )
    }

    /// Applies one decoded event at `position`.
    pub fn apply_work(&mut self, work: WorkEvent, position: i64) -> Touched {
        if !Self::is_relevant(&work) {
            return Touched::default();
        }
        match work {
            WorkEvent::Ticket { id, event } => self.apply_ticket(id, event, position),
            WorkEvent::Task { id, event } => self.apply_task(id, event, position),
        }
    }

    fn apply_ticket(&mut self, id: Uuid, event: TicketEvent, position: i64) -> Touched {
        let touched = Touched {
            node: Some(id),
            edges_of: None,
        };
        if let TicketEvent::TicketCreated {
            organization_id,
            project_id,
            title,
            ..
        } = event
        {
            self.nodes.insert(
                id,
                Node {
                    id,
                    kind: NodeKind::Ticket,
                    organization_id,
                    project_id,
                    ticket_id: None,
                    title,
                    status: TicketStatus::Backlog.as_str().to_string(),
                    last_position: position,
                },
            );
            return touched;
        }
        // An event of a ticket the graph never saw created has no node to change.
        let Some(node) = self.nodes.get_mut(&id) else {
            return Touched::default();
        };
        match event {
            TicketEvent::TicketUpdated {
                title: Some(title), ..
            } => node.title = title,
            TicketEvent::TicketStatusChanged { to, .. } => node.status = to.as_str().to_string(),
            TicketEvent::TicketRegressed { .. } => {
                node.status = TicketStatus::Building.as_str().to_string();
            }
            // Filtered out by `is_relevant`, or creation (handled above).
            _ => {}
        }
        node.last_position = position;
        touched
    }

    fn apply_task(&mut self, id: Uuid, event: TaskEvent, position: i64) -> Touched {
        let edges_of = Self::changes_edges(&event).then_some(id);
        if let TaskEvent::TaskCreated {
            organization_id,
            project_id,
            ticket_id,
            title,
            depends_on,
            ..
        } = event
        {
            self.nodes.insert(
                id,
                Node {
                    id,
                    kind: NodeKind::Task,
                    organization_id,
                    project_id,
                    ticket_id: Some(ticket_id),
                    title,
                    status: TaskStatus::Pending.as_str().to_string(),
                    last_position: position,
                },
            );
            self.depends_on.insert(id, depends_on.into_iter().collect());
            return Touched {
                node: Some(id),
                edges_of,
            };
        }
        let Some(node) = self.nodes.get_mut(&id) else {
            return Touched::default();
        };
        match event {
            TaskEvent::TaskDependencyAdded { depends_on } => {
                self.depends_on.entry(id).or_default().insert(depends_on);
            }
            TaskEvent::TaskDependencyRemoved { depends_on } => {
                self.depends_on.entry(id).or_default().remove(&depends_on);
            }
            other => {
                if let Some(status) = other.status_after() {
                    node.status = status.as_str().to_string();
                }
            }
        }
        node.last_position = position;
        Touched {
            node: Some(id),
            edges_of,
        }
    }

    /// The nodes and dependencies `changes` names, as they stand.
    pub fn delta(&self, changes: &GraphChanges) -> GraphDelta {
        GraphDelta {
            nodes: Entries::of(&self.nodes, &changes.nodes),
            depends_on: Entries::of(&self.depends_on, &changes.edges_of),
        }
    }

    /// The graph after the events `delta` was taken from, this being the graph before them.
    pub fn apply_delta(&mut self, delta: GraphDelta) {
        delta.nodes.apply_to(&mut self.nodes);
        delta.depends_on.apply_to(&mut self.depends_on);
    }

    pub fn node(&self, id: Uuid) -> Option<&Node> {
        self.nodes.get(&id)
    }

    /// The tasks `task` depends on, known or not.
    pub fn dependencies(&self, task: Uuid) -> impl Iterator<Item = Uuid> + '_ {
        self.depends_on.get(&task).into_iter().flatten().copied()
    }

    /// The dependencies of `task` that are not completed, including unknown ids.
    pub fn unfinished_dependencies(&self, task: Uuid) -> Vec<Uuid> {
        self.dependencies(task)
            .filter(|d| !self.nodes.get(d).is_some_and(Node::is_completed_task))
            .collect()
    }

    /// The known tasks that depend on `task`.
    pub fn dependents(&self, task: Uuid) -> Vec<Uuid> {
        self.depends_on
            .iter()
            .filter(|(_, deps)| deps.contains(&task))
            .map(|(from, _)| *from)
            .collect()
    }

    pub(super) fn insert_node(&mut self, node: Node) {
        self.nodes.insert(node.id, node);
    }

    pub(super) fn insert_edge(&mut self, from: Uuid, to: Uuid) {
        self.depends_on.entry(from).or_default().insert(to);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use omoi_domain::common::Priority;

    use super::*;
    use crate::testing::{created_task, created_ticket, Log};

    pub(in crate::graph) fn fold(log: &Log) -> GraphModel {
        let mut model = GraphModel::default();
        for event in &log.events {
            model.apply(event).expect("a valid event");
        }
        model
    }

    #[test]
    fn irrelevant_events_touch_nothing() {
        let (org, project, ticket, task) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.task(task, created_task(org, project, ticket, task, vec![]));
        let mut model = fold(&log);
        let event = log.task(
            task,
            TaskEvent::TaskProgressReported {
                message: "half".into(),
            },
        );
        assert_eq!(model.apply(event).expect("valid"), Touched::default());
        let event = log.ticket(ticket, TicketEvent::TicketUnblocked);
        assert_eq!(model.apply(event).expect("valid"), Touched::default());
    }
}
