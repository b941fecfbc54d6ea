//! What the graph shows: nodes with their counts of unfinished dependencies, the edges
//! between them, and the tasks one task waits for or holds back. The queries, time travel
//! and the live stream all render here, so the counts are computed in one place.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::{GraphModel, Node, NodeKind};

/// A node with what the graph knows about its dependencies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GraphNode {
    #[serde(flatten)]
    pub node: Node,
    /// For tasks: dependencies not completed (unknown ones included); absent for tickets.
    pub unfinished_dependencies: Option<u32>,
}

/// `from` (a task) depends on `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct Edge {
    pub from: Uuid,
    pub to: Uuid,
}

/// What a graph view is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphScope {
    pub project_id: Uuid,
    pub ticket_id: Option<Uuid>,
    pub as_of: Option<i64>,
}

/// A project's (or one ticket's) dependency graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GraphView {
    pub project_id: Uuid,
    /// Set when the graph is one ticket's: that ticket and its tasks. Their edges may
    /// point to tasks of other tickets.
    pub ticket_id: Option<Uuid>,
    /// The requested position when this is the graph of the past.
    pub as_of: Option<i64>,
    /// Global position of the latest event reflected in the nodes (0 for none).
    pub position: i64,
    /// By id (UUIDv7: creation order).
    pub nodes: Vec<GraphNode>,
    /// By `from`, then `to`.
    pub edges: Vec<Edge>,
}

/// Tasks related to one task: its unfinished dependencies, or the unfinished tasks
/// waiting for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskRelations {
    pub task_id: Uuid,
    pub tasks: Vec<GraphNode>,
    /// Dependencies that are not in the graph (never created): they count as unfinished.
    pub missing: Vec<Uuid>,
}

impl GraphModel {
    /// A node as shown, with its count of unfinished dependencies when it is a task.
    pub fn graph_node(&self, node: &Node) -> GraphNode {
        let unfinished = (node.kind == NodeKind::Task)
            .then(|| self.unfinished_dependencies(node.id).len() as u32);
        GraphNode {
            node: node.clone(),
            unfinished_dependencies: unfinished,
        }
    }

    /// The nodes for which `include` holds, and the edges leaving those of them that are
    /// tasks (an edge may point to a node that is not included, or does not exist).
    pub fn render(&self, scope: GraphScope, include: impl Fn(&Node) -> bool) -> GraphView {
        let nodes: Vec<GraphNode> = self
            .nodes
            .values()
            .filter(|node| include(node))
            .map(|node| self.graph_node(node))
            .collect();
        let edges = nodes
            .iter()
            .filter(|n| n.node.kind == NodeKind::Task)
            .flat_map(|n| {
                self.dependencies(n.node.id).map(|to| Edge {
                    from: n.node.id,
                    to,
                })
            })
            .collect();
        GraphView {
            project_id: scope.project_id,
            ticket_id: scope.ticket_id,
            as_of: scope.as_of,
            position: nodes
                .iter()
                .map(|n| n.node.last_position)
                .max()
                .unwrap_or(0),
            nodes,
            edges,
        }
    }

    /// The unfinished dependencies of `task`: known ones as nodes, unknown ids apart.
    pub fn blocked_by(&self, task: Uuid) -> TaskRelations {
        let (known, missing): (Vec<Uuid>, Vec<Uuid>) = self
            .unfinished_dependencies(task)
            .into_iter()
            .partition(|d| self.nodes.contains_key(d));
        TaskRelations {
            task_id: task,
            tasks: self.graph_nodes(&known),
            missing,
        }
    }

    /// The tasks that depend on `task` and are not completed — none once `task` itself is
    /// completed, since it then holds nobody back.
    pub fn blocking(&self, task: Uuid) -> TaskRelations {
        let waiting: Vec<Uuid> = if self.nodes.get(&task).is_some_and(Node::is_completed_task) {
            Vec::new()
        } else {
            self.dependents(task)
                .into_iter()
                .filter(|d| !self.nodes.get(d).is_some_and(Node::is_completed_task))
                .collect()
        };
        TaskRelations {
            task_id: task,
            tasks: self.graph_nodes(&waiting),
            missing: Vec::new(),
        }
    }

    fn graph_nodes(&self, ids: &[Uuid]) -> Vec<GraphNode> {
        ids.iter()
            .filter_map(|id| self.nodes.get(id))
            .map(|node| self.graph_node(node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use omoi_domain::common::Priority;
    use omoi_domain::task::TaskEvent;
    use omoi_domain::ticket::{TicketEvent, TicketStatus};
    use serde_json::json;

    use super::*;
    use crate::graph::model::tests::fold;
    use crate::graph::model::Touched;
    use crate::testing::{at, created_task, created_ticket, Log};

    fn unfinished(model: &GraphModel, task: Uuid) -> Option<u32> {
        let node = model.node(task).expect("a node");
        model.graph_node(node).unfinished_dependencies
    }

    fn complete(log: &mut Log, task: Uuid) {
        let agent = Uuid::now_v7();
        log.task(
            task,
            TaskEvent::TaskAssigned {
                agent_id: agent,
                at: at(),
            },
        );
        log.task(task, TaskEvent::TaskStarted { at: at() });
        log.task(
            task,
            TaskEvent::TaskCompleted {
                result: json!({}),
                at: at(),
            },
        );
    }

    #[test]
    fn completing_dependencies_unblocks_their_dependents() {
        let (org, project, ticket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.task(a, created_task(org, project, ticket, a, vec![]));
        log.task(b, created_task(org, project, ticket, b, vec![]));
        log.task(c, created_task(org, project, ticket, c, vec![a, b]));
        let model = fold(&log);
        assert_eq!(unfinished(&model, c), Some(2));
        assert_eq!(unfinished(&model, a), Some(0));
        assert_eq!(model.blocking(a).tasks.len(), 1);

        complete(&mut log, a);
        let model = fold(&log);
        assert_eq!(unfinished(&model, c), Some(1));
        let blocked = model.blocked_by(c);
        assert_eq!(blocked.tasks.len(), 1);
        assert_eq!(blocked.tasks[0].node.id, b);
        assert!(blocked.missing.is_empty());
        assert!(
            model.blocking(a).tasks.is_empty(),
            "a is completed: it holds nobody back"
        );
        assert_eq!(model.blocking(b).tasks.len(), 1, "c waits for b");

        complete(&mut log, b);
        let model = fold(&log);
        assert_eq!(unfinished(&model, c), Some(0));
        assert!(
            model.blocking(a).tasks.is_empty(),
            "a is completed: it holds nobody back"
        );

        complete(&mut log, c);
        let model = fold(&log);
        assert_eq!(model.blocking(b).tasks.len(), 0);
        assert_eq!(model.node(c).map(|n| n.status.as_str()), Some("completed"));
    }

    #[test]
    fn a_missing_dependency_counts_as_unfinished() {
        let (org, project, ticket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (task, ghost) = (Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.task(task, created_task(org, project, ticket, task, vec![ghost]));
        let model = fold(&log);
        assert_eq!(unfinished(&model, task), Some(1));
        let blocked = model.blocked_by(task);
        assert!(blocked.tasks.is_empty());
        assert_eq!(blocked.missing, vec![ghost]);
    }

    #[test]
    fn dependency_edits_change_edges_and_the_view_lists_nodes_and_edges() {
        let (org, project, ticket, other) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.ticket(
            other,
            created_ticket(org, project, other, "Signup", Priority::Low),
        );
        log.task(a, created_task(org, project, other, a, vec![]));
        log.task(b, created_task(org, project, ticket, b, vec![]));
        log.task(c, created_task(org, project, ticket, c, vec![]));
        let mut model = fold(&log);
        let event = log.task(b, TaskEvent::TaskDependencyAdded { depends_on: a });
        let touched = model.apply(event).expect("valid");
        assert_eq!(
            touched,
            Touched {
                node: Some(b),
                edges_of: Some(b)
            }
        );
        let event = log.task(c, TaskEvent::TaskDependencyAdded { depends_on: b });
        model.apply(event).expect("valid");
        let event = log.task(c, TaskEvent::TaskDependencyRemoved { depends_on: b });
        model.apply(event).expect("valid");
        assert_eq!(unfinished(&model, c), Some(0));

        let event = log.ticket(
            ticket,
            TicketEvent::TicketStatusChanged {
                from: TicketStatus::Backlog,
                to: TicketStatus::Analyzing,
                note: None,
            },
        );
        model.apply(event).expect("valid");
        let scope = GraphScope {
            project_id: project,
            ticket_id: None,
            as_of: None,
        };
        let view = model.render(scope, |n| n.project_id == project);
        assert_eq!(view.nodes.len(), 5);
        assert_eq!(view.edges, vec![Edge { from: b, to: a }]);
        assert_eq!(view.position, 9);
        let ticket_node = view
            .nodes
            .iter()
            .find(|n| n.node.id == ticket)
            .expect("the ticket");
        assert_eq!(ticket_node.node.status, "analyzing");
        assert_eq!(ticket_node.unfinished_dependencies, None);

        let scope = GraphScope {
            project_id: project,
            ticket_id: Some(ticket),
            as_of: None,
        };
        let view = model.render(scope, |n| n.id == ticket || n.ticket_id == Some(ticket));
        let ids: BTreeSet<Uuid> = view.nodes.iter().map(|n| n.node.id).collect();
        assert_eq!(ids, BTreeSet::from([ticket, b, c]));
        assert_eq!(
            view.edges,
            vec![Edge { from: b, to: a }],
            "an edge to another ticket's task"
        );
    }
}
