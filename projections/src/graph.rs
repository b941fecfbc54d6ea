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

use std::collections::{BTreeMap, BTreeSet};

use futures_util::future::BoxFuture;
use omoi_domain::task::{TaskEvent, TaskStatus};
use omoi_domain::ticket::{TicketEvent, TicketStatus};
use omoi_store::StoredEvent;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::board::{from_text, replay_project, to_text, WorkEvent};
use crate::{ProjectionError, Projector};

// ---------------------------------------------------------------------------------------
// The pure model
// ---------------------------------------------------------------------------------------

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
    fn is_completed_task(&self) -> bool {
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

/// Any part of the graph: a whole project (time travel, project view) or the rows one
/// event or one query needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GraphModel {
    nodes: BTreeMap<Uuid, Node>,
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
                TicketEvent::TicketBlocked { .. } | TicketEvent::TicketUnblocked => false,
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

    fn insert_node(&mut self, node: Node) {
        self.nodes.insert(node.id, node);
    }

    fn insert_edge(&mut self, from: Uuid, to: Uuid) {
        self.depends_on.entry(from).or_default().insert(to);
    }

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

// ---------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------

const NODE_COLUMNS: &str =
    "id, kind, organization_id, project_id, ticket_id, title, status, last_position";

fn node_from_row(row: &PgRow) -> Result<Node, ProjectionError> {
    Ok(Node {
        id: row.try_get("id")?,
        kind: from_text(row.try_get("kind")?)?,
        organization_id: row.try_get("organization_id")?,
        project_id: row.try_get("project_id")?,
        ticket_id: row.try_get("ticket_id")?,
        title: row.try_get("title")?,
        status: row.try_get("status")?,
        last_position: row.try_get("last_position")?,
    })
}

fn edge_from_row(row: &PgRow) -> Result<Edge, ProjectionError> {
    Ok(Edge {
        from: row.try_get("from_id")?,
        to: row.try_get("to_id")?,
    })
}

// ---------------------------------------------------------------------------------------
// The projector
// ---------------------------------------------------------------------------------------

/// Keeps `nodes` and `edges` up to date.
pub struct GraphProjector;

impl Projector for GraphProjector {
    fn name(&self) -> &'static str {
        "graph"
    }

    fn version(&self) -> i32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &["nodes", "edges"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![
            format!(
                "create table {schema}.nodes (
                    id              uuid primary key,
                    kind            text not null,
                    organization_id uuid not null,
                    project_id      uuid not null,
                    ticket_id       uuid,
                    title           text not null,
                    status          text not null,
                    last_position   bigint not null
                )"
            ),
            format!(
                "create table {schema}.edges (
                    from_id         uuid not null,
                    to_id           uuid not null,
                    organization_id uuid not null,
                    project_id      uuid not null,
                    primary key (from_id, to_id)
                )"
            ),
        ]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        vec![
            format!("create index nodes_by_project on {schema}.nodes (project_id)"),
            format!("create index nodes_by_ticket on {schema}.nodes (ticket_id)"),
            format!("create index edges_by_target on {schema}.edges (to_id)"),
            format!("create index edges_by_project on {schema}.edges (project_id)"),
        ]
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(apply_to_tables(tx, schema, events))
    }
}

/// Loads the nodes of the batch's aggregates and the edges of the tasks whose
/// dependencies it edits, applies the pure transitions in order, and writes each changed
/// node and edge set once.
async fn apply_to_tables(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let work = WorkEvent::decode_batch(events, GraphModel::is_relevant)?;
    if work.is_empty() {
        return Ok(());
    }
    let ids: BTreeSet<Uuid> = work.iter().map(|(w, _)| w.id()).collect();
    // Only dependency edits need the current edges; a creation starts from none.
    let editing: BTreeSet<Uuid> = work
        .iter()
        .filter_map(|(w, _)| match w {
            WorkEvent::Task { id, event } if GraphModel::changes_edges(event) => Some(*id),
            _ => None,
        })
        .collect();
    let mut model = GraphModel::default();
    let sql = format!("select {NODE_COLUMNS} from {schema}.nodes where id = any($1)");
    let bind: Vec<Uuid> = ids.into_iter().collect();
    for row in sqlx::query(&sql).bind(bind).fetch_all(&mut *tx).await? {
        model.insert_node(node_from_row(&row)?);
    }
    let editing: Vec<Uuid> = editing.into_iter().collect();
    if !editing.is_empty() {
        let sql = format!("select from_id, to_id from {schema}.edges where from_id = any($1)");
        for row in sqlx::query(&sql).bind(&editing).fetch_all(&mut *tx).await? {
            let edge = edge_from_row(&row)?;
            model.insert_edge(edge.from, edge.to);
        }
    }
    let mut nodes = BTreeSet::new();
    let mut edges_of = BTreeSet::new();
    for (decoded, position) in work {
        let touched = model.apply_work(decoded, position);
        nodes.extend(touched.node);
        edges_of.extend(touched.edges_of);
    }
    let nodes: Vec<&Node> = nodes.iter().filter_map(|id| model.node(*id)).collect();
    upsert_nodes(tx, schema, &nodes).await?;
    let rewritten: Vec<&Node> = edges_of.iter().filter_map(|id| model.node(*id)).collect();
    replace_edges(tx, schema, &model, &rewritten).await
}

/// Writes `nodes` in one statement (one array per column).
async fn upsert_nodes(
    tx: &mut PgConnection,
    schema: &str,
    nodes: &[&Node],
) -> Result<(), ProjectionError> {
    if nodes.is_empty() {
        return Ok(());
    }
    let kinds = nodes
        .iter()
        .map(|n| to_text(&n.kind))
        .collect::<Result<Vec<_>, _>>()?;
    let sql = format!(
        "insert into {schema}.nodes ({NODE_COLUMNS})
         select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::uuid[],
                              $6::text[], $7::text[], $8::bigint[])
         on conflict (id) do update set
                kind = excluded.kind, organization_id = excluded.organization_id,
                project_id = excluded.project_id, ticket_id = excluded.ticket_id,
                title = excluded.title, status = excluded.status,
                last_position = excluded.last_position"
    );
    sqlx::query(&sql)
        .bind(nodes.iter().map(|n| n.id).collect::<Vec<_>>())
        .bind(kinds)
        .bind(nodes.iter().map(|n| n.organization_id).collect::<Vec<_>>())
        .bind(nodes.iter().map(|n| n.project_id).collect::<Vec<_>>())
        .bind(nodes.iter().map(|n| n.ticket_id).collect::<Vec<_>>())
        .bind(nodes.iter().map(|n| n.title.as_str()).collect::<Vec<_>>())
        .bind(nodes.iter().map(|n| n.status.as_str()).collect::<Vec<_>>())
        .bind(nodes.iter().map(|n| n.last_position).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Rewrites the outgoing edges of `tasks` (each has at most a hundred, the domain's
/// limit): one delete and one insert for the whole batch.
async fn replace_edges(
    tx: &mut PgConnection,
    schema: &str,
    model: &GraphModel,
    tasks: &[&Node],
) -> Result<(), ProjectionError> {
    if tasks.is_empty() {
        return Ok(());
    }
    let delete = format!("delete from {schema}.edges where from_id = any($1)");
    sqlx::query(&delete)
        .bind(tasks.iter().map(|t| t.id).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    let (mut from, mut to, mut organization, mut project) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for task in tasks {
        for target in model.dependencies(task.id) {
            from.push(task.id);
            to.push(target);
            organization.push(task.organization_id);
            project.push(task.project_id);
        }
    }
    if from.is_empty() {
        return Ok(());
    }
    let insert = format!(
        "insert into {schema}.edges (from_id, to_id, organization_id, project_id)
         select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[])"
    );
    sqlx::query(&insert)
        .bind(from)
        .bind(to)
        .bind(organization)
        .bind(project)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Queries (through the stable views)
// ---------------------------------------------------------------------------------------

/// A read-only transaction in which nodes and edges are read from one snapshot: read one
/// after the other outside it, a batch committed in between would tear the graph.
async fn snapshot(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ProjectionError> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Adds the nodes selected by `condition` (on `graph_nodes`, binding `$1`).
async fn load_nodes_where<T>(
    conn: &mut PgConnection,
    model: &mut GraphModel,
    condition: &str,
    bind: T,
) -> Result<(), ProjectionError>
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let sql = format!("select {NODE_COLUMNS} from graph_nodes where {condition}");
    for row in sqlx::query(&sql).bind(bind).fetch_all(&mut *conn).await? {
        model.insert_node(node_from_row(&row)?);
    }
    Ok(())
}

/// Adds the edges selected by `condition` (on `graph_edges`, binding `$1`).
async fn load_edges_where<T>(
    conn: &mut PgConnection,
    model: &mut GraphModel,
    condition: &str,
    bind: T,
) -> Result<(), ProjectionError>
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let sql = format!("select from_id, to_id from graph_edges where {condition}");
    for row in sqlx::query(&sql).bind(bind).fetch_all(&mut *conn).await? {
        let edge = edge_from_row(&row)?;
        model.insert_edge(edge.from, edge.to);
    }
    Ok(())
}

/// Adds every edge leaving `tasks` and the nodes those edges reach, so that the unfinished
/// counts of `tasks` are complete.
async fn with_dependencies(
    conn: &mut PgConnection,
    model: &mut GraphModel,
    tasks: &[Uuid],
) -> Result<(), ProjectionError> {
    if tasks.is_empty() {
        return Ok(());
    }
    load_edges_where(conn, model, "from_id = any($1)", tasks.to_vec()).await?;
    let unknown: Vec<Uuid> = tasks
        .iter()
        .flat_map(|t| model.dependencies(*t))
        .filter(|d| model.node(*d).is_none())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !unknown.is_empty() {
        load_nodes_where(conn, model, "id = any($1)", unknown).await?;
    }
    Ok(())
}

/// A project's graph, as projected so far.
pub async fn project_graph(pool: &PgPool, project_id: Uuid) -> Result<GraphView, ProjectionError> {
    let mut model = GraphModel::default();
    let mut snapshot = snapshot(pool).await?;
    load_nodes_where(&mut snapshot, &mut model, "project_id = $1", project_id).await?;
    load_edges_where(&mut snapshot, &mut model, "project_id = $1", project_id).await?;
    let scope = GraphScope {
        project_id,
        ticket_id: None,
        as_of: None,
    };
    Ok(model.render(scope, |node| node.project_id == project_id))
}

/// A project's graph as it was at global position `as_of`, rebuilt from the log with the
/// projector's own rule.
pub async fn project_graph_as_of(
    pool: &PgPool,
    organization_id: Uuid,
    project_id: Uuid,
    as_of: i64,
    max_events: usize,
) -> Result<GraphView, ProjectionError> {
    let mut model = GraphModel::default();
    replay_project(
        pool,
        organization_id,
        project_id,
        as_of,
        max_events,
        |event| model.apply(event).map(|_| ()),
    )
    .await?;
    let scope = GraphScope {
        project_id,
        ticket_id: None,
        as_of: Some(as_of),
    };
    Ok(model.render(scope, |node| node.project_id == project_id))
}

/// One ticket and its tasks, with the edges leaving them.
pub async fn ticket_graph(
    pool: &PgPool,
    project_id: Uuid,
    ticket_id: Uuid,
) -> Result<GraphView, ProjectionError> {
    let mut model = GraphModel::default();
    let mut snapshot = snapshot(pool).await?;
    load_nodes_where(
        &mut snapshot,
        &mut model,
        "id = $1 or ticket_id = $1",
        ticket_id,
    )
    .await?;
    let tasks: Vec<Uuid> = model
        .nodes
        .values()
        .filter(|n| n.ticket_id == Some(ticket_id))
        .map(|n| n.id)
        .collect();
    with_dependencies(&mut snapshot, &mut model, &tasks).await?;
    let scope = GraphScope {
        project_id,
        ticket_id: Some(ticket_id),
        as_of: None,
    };
    Ok(model.render(scope, |node| {
        node.id == ticket_id || node.ticket_id == Some(ticket_id)
    }))
}

/// The unfinished dependencies of `task_id`.
pub async fn blocked_by(pool: &PgPool, task_id: Uuid) -> Result<TaskRelations, ProjectionError> {
    let mut model = GraphModel::default();
    let mut snapshot = snapshot(pool).await?;
    with_dependencies(&mut snapshot, &mut model, &[task_id]).await?;
    // Each blocker is shown with its own count, so its dependencies are needed too.
    let blockers = model.unfinished_dependencies(task_id);
    with_dependencies(&mut snapshot, &mut model, &blockers).await?;
    Ok(model.blocked_by(task_id))
}

/// The unfinished tasks that depend on `task_id`, while it is unfinished itself.
pub async fn blocking(pool: &PgPool, task_id: Uuid) -> Result<TaskRelations, ProjectionError> {
    let mut model = GraphModel::default();
    let mut snapshot = snapshot(pool).await?;
    load_edges_where(&mut snapshot, &mut model, "to_id = $1", task_id).await?;
    let mut wanted = model.dependents(task_id);
    wanted.push(task_id);
    load_nodes_where(&mut snapshot, &mut model, "id = any($1)", wanted).await?;
    let dependents = model.dependents(task_id);
    with_dependencies(&mut snapshot, &mut model, &dependents).await?;
    Ok(model.blocking(task_id))
}

#[cfg(test)]
mod tests {
    use omoi_domain::common::Priority;
    use serde_json::json;

    use super::*;
    use crate::board::tests::{at, created_task, created_ticket, Log};

    fn fold(log: &Log) -> GraphModel {
        let mut model = GraphModel::default();
        for event in &log.events {
            model.apply(event).expect("a valid event");
        }
        model
    }

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
