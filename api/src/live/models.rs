//! The read models a [`Follower`](super::views::Follower) keeps, one per stream: each
//! folds events with its projector's own pure rule and says what changed, as the delta a
//! client applies to its copy (the shapes are in docs/websocket.md).

use std::collections::VecDeque;

use omoi_projections::agents::{AgentView, AgentsModel};
use omoi_projections::board::{render_board, BoardModel, Card, ColumnConfig};
use omoi_projections::graph::{GraphModel, GraphNode, GraphScope, NodeKind};
use omoi_projections::timeline::{TimelineEntry, TimelineModel};
use omoi_projections::ProjectionError;
use omoi_store::StoredEvent;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use uuid::Uuid;

/// Which events a read model of a project needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// The project's own events.
    Project,
    /// Every event of the project's organization: titles and organization-wide agents
    /// live outside the project.
    Organization,
}

/// A read model a follower keeps: the projector's pure rule, plus its rendering.
pub trait LiveView: Send + 'static {
    fn reach(&self) -> Reach {
        Reach::Project
    }
    /// Applies one event; the change to send, if the part of the model the stream shows
    /// changed.
    fn apply(&mut self, event: &StoredEvent) -> Result<Option<Value>, ProjectionError>;
    /// The whole model as JSON, the `data` of a new subscription's snapshot (encoded
    /// straight from the view: no `Value` tree for a large model).
    fn snapshot(&self) -> Snapshot;
}

/// The view a stream serves for `project_id`; `None` for a stream that is not a read model.
pub fn view_of(stream: &str, project_id: Uuid) -> Option<Box<dyn LiveView>> {
    Some(match stream {
        "board" => Box::new(BoardLive::new(project_id, crate::board::columns())),
        "graph" => Box::new(GraphLive {
            project_id,
            model: GraphModel::default(),
        }),
        "timeline" => Box::new(TimelineLive {
            project_id,
            model: TimelineModel::default(),
            newest: VecDeque::new(),
        }),
        "agents" => Box::new(AgentsLive {
            project_id,
            own_only: false,
            model: AgentsModel::default(),
        }),
        OWN_AGENTS => Box::new(AgentsLive {
            project_id,
            own_only: true,
            model: AgentsModel::default(),
        }),
        _ => return None,
    })
}

/// A model encoded once as JSON text, shared (not copied) by every subscriber that joins
/// at its position, down to the frames written to them.
pub type Snapshot = Utf8Bytes;

fn encode(value: impl Serialize) -> Snapshot {
    let text = serde_json::to_string(&value).unwrap_or_else(|error| {
        // Only a bug can get here (every view is plain data); say so rather than hide it.
        tracing::error!(%error, "a read model could not be encoded");
        "null".to_string()
    });
    Utf8Bytes::from(text)
}

/// The Kanban board of one project (`GET /api/v1/board/view`): a delta is the whole card
/// that changed (a client replaces its card by `ticket_id`; the card's `status` is its
/// column).
pub struct BoardLive {
    project_id: Uuid,
    columns: Vec<ColumnConfig>,
    model: BoardModel,
}

impl BoardLive {
    pub fn new(project_id: Uuid, columns: Vec<ColumnConfig>) -> Self {
        Self {
            project_id,
            columns,
            model: BoardModel::default(),
        }
    }
}

impl LiveView for BoardLive {
    fn apply(&mut self, event: &StoredEvent) -> Result<Option<Value>, ProjectionError> {
        let touched = self.model.apply(event)?;
        Ok(touched
            .card
            .and_then(|id| self.model.card(id))
            .map(|card| json!({ "card": card })))
    }

    fn snapshot(&self) -> Snapshot {
        let cards: Vec<Card> = self.model.cards().cloned().collect();
        encode(render_board(self.project_id, &self.columns, cards, None))
    }
}

/// The dependency graph of one project (`GET /api/v1/graph/dependency-graph/project/{id}`).
/// A delta carries the nodes that changed — the node itself and, for a task, the tasks
/// depending on it, whose count of unfinished dependencies may have moved — and, when the
/// task's dependencies changed, its whole new list of outgoing edges.
pub struct GraphLive {
    project_id: Uuid,
    model: GraphModel,
}

impl LiveView for GraphLive {
    fn apply(&mut self, event: &StoredEvent) -> Result<Option<Value>, ProjectionError> {
        let touched = self.model.apply(event)?;
        let Some(node) = touched.node.and_then(|id| self.model.node(id)) else {
            return Ok(None);
        };
        let mut nodes: Vec<GraphNode> = vec![self.model.graph_node(node)];
        if node.kind == NodeKind::Task {
            nodes.extend(
                self.model
                    .dependents(node.id)
                    .into_iter()
                    .filter_map(|id| self.model.node(id))
                    .filter(|n| n.project_id == self.project_id)
                    .map(|n| self.model.graph_node(n)),
            );
        }
        let mut change = json!({ "nodes": nodes });
        if let Some(task) = touched.edges_of {
            let depends_on: Vec<Uuid> = self.model.dependencies(task).collect();
            change["edges_of"] = json!({ "task_id": task, "depends_on": depends_on });
        }
        Ok(Some(change))
    }

    fn snapshot(&self) -> Snapshot {
        let scope = GraphScope {
            project_id: self.project_id,
            ticket_id: None,
            as_of: None,
        };
        let project_id = self.project_id;
        encode(
            self.model
                .render(scope, |node| node.project_id == project_id),
        )
    }
}

/// Entries a timeline snapshot carries; older ones are a `GET /api/v1/timeline` away.
const TIMELINE_SNAPSHOT: usize = 50;

/// The activity timeline of one project (`GET /api/v1/timeline?project_id=`): the snapshot
/// is its newest entries, newest first; a delta is one new entry.
pub struct TimelineLive {
    project_id: Uuid,
    model: TimelineModel,
    /// The project's newest entries, oldest first.
    newest: VecDeque<TimelineEntry>,
}

impl LiveView for TimelineLive {
    fn reach(&self) -> Reach {
        Reach::Organization
    }

    fn apply(&mut self, event: &StoredEvent) -> Result<Option<Value>, ProjectionError> {
        let Some(entry) = self.model.apply(event)? else {
            return Ok(None);
        };
        if entry.project_id != Some(self.project_id) {
            return Ok(None);
        }
        let change = json!({ "entry": entry });
        if self.newest.len() == TIMELINE_SNAPSHOT {
            self.newest.pop_front();
        }
        self.newest.push_back(entry);
        Ok(Some(change))
    }

    fn snapshot(&self) -> Snapshot {
        let entries: Vec<&TimelineEntry> = self.newest.iter().rev().collect();
        encode(TimelineSnapshot {
            project_id: self.project_id,
            entries,
        })
    }
}

#[derive(Serialize)]
struct TimelineSnapshot<'a> {
    project_id: Uuid,
    entries: Vec<&'a TimelineEntry>,
}

/// The follower of the `agents` stream for a project-limited API key: the project's own
/// agents only, as `GET /api/v1/agents` lists them for it. The organization-wide ones
/// work across projects, and their rows (the task each runs) are of other projects.
pub const OWN_AGENTS: &str = "agents (the project's own)";

/// The agents that may work on one project — its own and its organization's
/// organization-wide ones; only its own with `own_only` ([`OWN_AGENTS`]): a delta carries
/// each agent whose row changed.
pub struct AgentsLive {
    project_id: Uuid,
    own_only: bool,
    model: AgentsModel,
}

#[derive(Serialize)]
struct AgentsSnapshot<'a> {
    project_id: Uuid,
    agents: Vec<&'a AgentView>,
}

impl AgentsLive {
    fn serves_project(&self, agent: &AgentView) -> bool {
        match agent.project_id {
            Some(project) => project == self.project_id,
            None => !self.own_only,
        }
    }
}

impl LiveView for AgentsLive {
    fn reach(&self) -> Reach {
        Reach::Organization
    }

    fn apply(&mut self, event: &StoredEvent) -> Result<Option<Value>, ProjectionError> {
        let changed = self.model.apply(event)?;
        let agents: Vec<&AgentView> = changed
            .into_iter()
            .filter_map(|id| self.model.agent(id))
            .filter(|agent| self.serves_project(agent))
            .collect();
        Ok((!agents.is_empty()).then(|| json!({ "agents": agents })))
    }

    fn snapshot(&self) -> Snapshot {
        let agents: Vec<&AgentView> = self
            .model
            .agents()
            .into_iter()
            .filter(|agent| self.serves_project(agent))
            .collect();
        encode(AgentsSnapshot {
            project_id: self.project_id,
            agents,
        })
    }
}
