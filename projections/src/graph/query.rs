//! Reading the graph: the live one through the stable views (`graph_nodes`,
//! `graph_edges`), read from one snapshot; a past one rebuilt from the log.

use std::collections::BTreeSet;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::model::GraphModel;
use super::projector::{edge_from_row, node_from_row, NODE_COLUMNS};
use super::view::{GraphScope, GraphView, TaskRelations};
use crate::replay::replay_project;
use crate::snapshots::model_before;
use crate::ProjectionError;

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

/// A project's graph as it was at global position `as_of`: the nearest snapshot before it,
/// and the project's events after that folded with the projector's own rule.
pub async fn project_graph_as_of(
    pool: &PgPool,
    organization_id: Uuid,
    project_id: Uuid,
    as_of: i64,
    max_events: usize,
) -> Result<GraphView, ProjectionError> {
    let (after, mut model) = model_before::<GraphModel>(pool, organization_id, project_id, as_of)
        .await?
        .unwrap_or_default();
    replay_project(
        pool,
        organization_id,
        project_id,
        after,
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
