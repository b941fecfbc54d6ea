//! The SQL side of the graph: its tables (schema `rm_graph_<build>`), their rows, and the
//! set-based `apply` that loads the nodes and edges a batch touches, runs the pure
//! transitions of [`GraphModel`] and writes each changed node and edge set once.

use std::collections::BTreeSet;

use futures_util::future::BoxFuture;
use omoi_store::StoredEvent;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::model::{GraphModel, Node};
use super::view::Edge;
use crate::codec::{from_text, to_text, WorkEvent};
use crate::copy::CopyRows;
use crate::{Columns, Fold, ProjectionError, Projector};

// ---------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------

pub(super) const NODE_COLUMNS: &str =
    "id, kind, organization_id, project_id, ticket_id, title, status, last_position";

const EDGE_COLUMNS: &str = "from_id, to_id, organization_id, project_id";

pub(super) fn node_from_row(row: &PgRow) -> Result<Node, ProjectionError> {
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

pub(super) fn edge_from_row(row: &PgRow) -> Result<Edge, ProjectionError> {
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
                    id              uuid not null,
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
                    project_id      uuid not null
                )"
            ),
        ]
    }

    fn create_write_indexes(&self, schema: &str) -> Vec<String> {
        // Named as the primary keys they were before they became indexes of their own:
        // a build made before, which has those keys, neither builds nor drops them.
        vec![
            format!("create unique index if not exists nodes_pkey on {schema}.nodes (id)"),
            format!(
                "create unique index if not exists edges_pkey on {schema}.edges (from_id, to_id)"
            ),
        ]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        vec![
            format!("create index if not exists nodes_by_project on {schema}.nodes (project_id)"),
            format!("create index if not exists nodes_by_ticket on {schema}.nodes (ticket_id)"),
            format!("create index if not exists edges_by_target on {schema}.edges (to_id)"),
            format!("create index if not exists edges_by_project on {schema}.edges (project_id)"),
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

    /// Work events carry what the graph needs in their payloads.
    fn columns(&self) -> Columns {
        Columns::WITHOUT_METADATA
    }

    fn fold_from_start(&self) -> Option<Box<dyn Fold>> {
        Some(Box::new(GraphFold::default()))
    }
}

/// The whole graph folded in memory from position zero, written once.
#[derive(Default)]
struct GraphFold(GraphModel);

impl Fold for GraphFold {
    fn fold(&mut self, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for (work, position) in WorkEvent::decode_batch(events, GraphModel::is_relevant)? {
            self.0.apply_work(work, position);
        }
        Ok(())
    }

    /// Nodes (a task's edges, at most a hundred, go with it).
    fn rows(&self) -> usize {
        self.0.nodes.len()
    }

    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        // The build's tables are empty: every row is copied in, none upserted.
        Box::pin(async move {
            let (nodes_table, edges_table) = (format!("{schema}.nodes"), format!("{schema}.edges"));
            let (mut nodes, mut edges) = (CopyRows::default(), CopyRows::default());
            for node in self.0.nodes.values() {
                nodes
                    .row(8)
                    .uuid(node.id)
                    .text(&to_text(&node.kind)?)
                    .uuid(node.organization_id)
                    .uuid(node.project_id)
                    .optional_uuid(node.ticket_id)
                    .text(&node.title)
                    .text(node.status.as_str())
                    .bigint(node.last_position);
                for target in self.0.dependencies(node.id) {
                    edges
                        .row(4)
                        .uuid(node.id)
                        .uuid(target)
                        .uuid(node.organization_id)
                        .uuid(node.project_id);
                }
                nodes.copy_when_full(tx, &nodes_table, NODE_COLUMNS).await?;
                edges.copy_when_full(tx, &edges_table, EDGE_COLUMNS).await?;
            }
            nodes.copy(tx, &nodes_table, NODE_COLUMNS).await?;
            edges.copy(tx, &edges_table, EDGE_COLUMNS).await?;
            Ok(())
        })
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
    insert_edges(tx, schema, model, tasks).await
}

/// Writes the outgoing edges of `tasks`, which have none in the table.
async fn insert_edges(
    tx: &mut PgConnection,
    schema: &str,
    model: &GraphModel,
    tasks: &[&Node],
) -> Result<(), ProjectionError> {
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
        "insert into {schema}.edges ({EDGE_COLUMNS})
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
