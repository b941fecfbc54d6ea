//! The dependency graph: tickets and tasks as nodes, "task depends on task" as edges, and
//! for each task how many of its dependencies are unfinished (not `completed`; a
//! dependency that does not exist counts as unfinished, so a dangling id never makes a
//! task look ready).
//!
//! As for the board, the rule is pure ([`GraphModel::apply`]): the projector loads the
//! rows a batch of events touches, applies them and writes them back; time travel folds the
//! project's log in memory. Queries load the rows they need into a [`GraphModel`] and
//! render with the same code, so the unfinished counts are computed in one place.
//!
//! Tables (schema `rm_graph_v1`, views `graph_nodes` and `graph_edges`):
//! * `nodes` — one row per ticket and per task;
//! * `edges` — `from_id` (a task) depends on `to_id`.
//!
//! The counts are computed when read rather than stored: a stored count would make every
//! completion rewrite the rows of all its dependents, while reading it is one indexed
//! lookup of the dependencies' statuses.
//!
//! # Layout
//!
//! * `model` — [`GraphModel`], [`Node`] and the transition one event makes.
//! * `view` — [`GraphView`], [`GraphNode`], [`TaskRelations`]: what a model renders.
//! * `projector` — [`GraphProjector`]: tables, rows and the set-based `apply`.
//! * `query` — [`project_graph`], [`ticket_graph`], [`blocked_by`], … on the views.

mod model;
mod projector;
mod query;
mod view;

pub use model::{GraphChanges, GraphDelta, GraphModel, Node, NodeKind, Touched};
pub use projector::GraphProjector;
pub use query::{blocked_by, blocking, project_graph, project_graph_as_of, ticket_graph};
pub use view::{Edge, GraphNode, GraphScope, GraphView, TaskRelations};
