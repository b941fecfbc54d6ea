//! The SQL side of supervision's findings: two tables, a handful of statements a batch.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use omoi_domain::agent::AgentEvent;
use omoi_domain::task::TaskEvent;
use omoi_domain::ticket::TicketEvent;
use omoi_store::StoredEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use super::model::{
    agent_alerts, finding, steering_effect, ticket_alert, AlertEffect, AlertKind, Finding,
    SteeringEffect,
};
use crate::codec::{entity_id, EventMeta};
use crate::{Columns, ProjectionError, Projector};

/// Builds the `monitoring` read model.
pub struct MonitoringProjector;

impl Projector for MonitoringProjector {
    fn name(&self) -> &'static str {
        "monitoring"
    }

    fn version(&self) -> i32 {
        // 4: a steering id's last `TaskSteered` stands (was its first), so that batches
        // and single events build the same rows whatever the ids.
        4
    }

    /// What `apply` decodes: agents' and tasks' events, and the tickets' that can raise or
    /// resolve an alert (`ticket_alert`).
    fn concerns(&self, _schema: &str, event: &StoredEvent) -> bool {
        match event.aggregate_type.as_str() {
            "Agent" | "Task" => true,
            "Ticket" => matches!(
                event.event_type.as_str(),
                "TicketBlocked" | "TicketUnblocked"
            ),
            _ => false,
        }
    }

    fn tables(&self) -> &'static [&'static str] {
        &["stalled", "duplicates", "steering", "alerts"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![
            format!(
                "create table if not exists {schema}.stalled (
                    task_id uuid primary key,
                    organization_id uuid not null,
                    project_id uuid,
                    agent_id uuid not null,
                    idle_since timestamptz not null,
                    stalled_at timestamptz not null
                )"
            ),
            format!(
                "create table if not exists {schema}.duplicates (
                    task_id uuid not null,
                    duplicate_of uuid not null,
                    organization_id uuid not null,
                    project_id uuid,
                    similarity float8 not null,
                    primary key (task_id, duplicate_of)
                )"
            ),
            // An ending task closes the pairs that name it as the older one too.
            format!(
                "create index if not exists duplicates_by_older
                    on {schema}.duplicates (duplicate_of)"
            ),
            format!(
                "create table if not exists {schema}.steering (
                    steering_id uuid primary key,
                    task_id uuid not null,
                    agent_id uuid not null
                )"
            ),
            // An attempt's end clears its task's messages.
            format!("create index if not exists steering_by_task on {schema}.steering (task_id)"),
            format!(
                "create table if not exists {schema}.alerts (
                    kind text not null,
                    subject_id uuid not null,
                    organization_id uuid not null,
                    project_id uuid,
                    reason text not null,
                    raised_by text,
                    raised_at timestamptz not null,
                    position bigint not null,
                    primary key (kind, subject_id)
                )"
            ),
        ]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        vec![
            format!(
                "create index if not exists alerts_by_organization
                    on {schema}.alerts (organization_id, position)"
            ),
            format!("create index if not exists alerts_by_subject on {schema}.alerts (subject_id)"),
            // Every heartbeat asks for its agent's.
            format!("create index if not exists steering_by_agent on {schema}.steering (agent_id)"),
            format!(
                "create index if not exists stalled_by_project
                    on {schema}.stalled (project_id)"
            ),
            format!(
                "create index if not exists duplicates_by_project
                    on {schema}.duplicates (project_id)"
            ),
        ]
    }

    /// Scope, actor and time come from the metadata.
    fn columns(&self) -> Columns {
        Columns::MetadataFields(EventMeta::FIELDS)
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(apply_events(tx, schema, events))
    }
}

struct Stall {
    organization_id: Uuid,
    project_id: Option<Uuid>,
    agent_id: Uuid,
    idle_since: DateTime<Utc>,
    at: DateTime<Utc>,
}

struct Alert {
    organization_id: Uuid,
    project_id: Option<Uuid>,
    reason: String,
    raised_by: Option<String>,
    raised_at: DateTime<Utc>,
    position: i64,
}

/// The batch's alerts, folded in memory: each (kind, subject)'s last word, `None` for
/// resolved.
#[derive(Default)]
struct Alerts(HashMap<(AlertKind, Uuid), Option<Alert>>);

impl Alerts {
    fn apply(&mut self, event: &StoredEvent, effect: AlertEffect) -> Result<(), ProjectionError> {
        let subject = entity_id(event)?;
        match effect {
            AlertEffect::Raise { kind, reason } => {
                let meta = EventMeta::of(event)?;
                self.0.insert(
                    (kind, subject),
                    Some(Alert {
                        organization_id: meta.organization_id,
                        project_id: meta.project_id,
                        reason,
                        raised_by: meta.actor,
                        raised_at: meta.occurred_at,
                        position: event.global_position,
                    }),
                );
            }
            AlertEffect::Resolve(kind) => {
                self.0.insert((kind, subject), None);
            }
        }
        Ok(())
    }

    /// Deletes every alert the batch touched, then inserts those it leaves open.
    async fn write(self, tx: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let (kinds, subjects): (Vec<&str>, Vec<Uuid>) =
            self.0.keys().map(|(k, s)| (k.as_str(), *s)).unzip();
        sqlx::query(&format!(
            "delete from {schema}.alerts a using unnest($1::text[], $2::uuid[]) t(kind, subject)
              where a.kind = t.kind and a.subject_id = t.subject"
        ))
        .bind(&kinds)
        .bind(&subjects)
        .execute(&mut *tx)
        .await?;
        let open: Vec<((AlertKind, Uuid), Alert)> = self
            .0
            .into_iter()
            .filter_map(|(key, alert)| Some((key, alert?)))
            .collect();
        if open.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "insert into {schema}.alerts (kind, subject_id, organization_id, project_id, reason,
                                          raised_by, raised_at, position)
             select * from unnest($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                                  $6::text[], $7::timestamptz[], $8::int8[])"
        ))
        .bind(
            open.iter()
                .map(|((k, _), _)| k.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(open.iter().map(|((_, s), _)| *s).collect::<Vec<_>>())
        .bind(
            open.iter()
                .map(|(_, a)| a.organization_id)
                .collect::<Vec<_>>(),
        )
        .bind(open.iter().map(|(_, a)| a.project_id).collect::<Vec<_>>())
        .bind(
            open.iter()
                .map(|(_, a)| a.reason.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            open.iter()
                .map(|(_, a)| a.raised_by.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(open.iter().map(|(_, a)| a.raised_at).collect::<Vec<_>>())
        .bind(open.iter().map(|(_, a)| a.position).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

struct Pair {
    organization_id: Uuid,
    project_id: Option<Uuid>,
    similarity: f64,
}

/// The batch's steering, folded in memory: the messages it leaves waiting, and what it
/// removes of the rows already written (messages delivered or dropped, ended attempts'
/// tasks). Written as deletions first, then the messages left waiting: the same rows as
/// applying the events one by one (a message's last `TaskSteered` stands).
#[derive(Default)]
struct Steering {
    waiting: HashMap<Uuid, (Uuid, Uuid)>,
    removed: Vec<Uuid>,
    attempts_over: BTreeSet<Uuid>,
}

impl Steering {
    fn apply(&mut self, task: Uuid, effect: SteeringEffect) {
        match effect {
            SteeringEffect::Pending {
                steering_id,
                agent_id,
            } => {
                // The last row of an id stands, as the insert's `on conflict do update`.
                self.waiting.insert(steering_id, (task, agent_id));
            }
            SteeringEffect::Delivered { steering_id } => {
                self.waiting.remove(&steering_id);
                self.removed.push(steering_id);
            }
            SteeringEffect::AttemptOver => {
                // What waited for this task is dropped, here and (by id) in earlier rows.
                let removed = &mut self.removed;
                self.waiting.retain(|id, (waiting_task, _)| {
                    let keep = *waiting_task != task;
                    if !keep {
                        removed.push(*id);
                    }
                    keep
                });
                self.attempts_over.insert(task);
            }
        }
    }

    /// Deletes what the batch removed (rows of earlier batches), then inserts what it
    /// leaves waiting.
    async fn write(self, tx: &mut PgConnection, schema: &str) -> Result<(), ProjectionError> {
        if !self.removed.is_empty() || !self.attempts_over.is_empty() {
            let over: Vec<Uuid> = self.attempts_over.into_iter().collect();
            sqlx::query(&format!(
                "delete from {schema}.steering where steering_id = any($1) or task_id = any($2)"
            ))
            .bind(&self.removed)
            .bind(&over)
            .execute(&mut *tx)
            .await?;
        }
        if !self.waiting.is_empty() {
            let (ids, rows): (Vec<Uuid>, Vec<(Uuid, Uuid)>) = self.waiting.into_iter().unzip();
            let (tasks, agents): (Vec<Uuid>, Vec<Uuid>) = rows.into_iter().unzip();
            sqlx::query(&format!(
                "insert into {schema}.steering (steering_id, task_id, agent_id)
                 select * from unnest($1::uuid[], $2::uuid[], $3::uuid[])
                 on conflict (steering_id) do update
                    set task_id = excluded.task_id, agent_id = excluded.agent_id"
            ))
            .bind(&ids)
            .bind(&tasks)
            .bind(&agents)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

/// Folds the batch's findings in memory (each task's last word wins), then writes: the
/// stalls of every task touched replaced, the pairs naming an ended task deleted, the new
/// pairs inserted.
async fn apply_events(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let mut stalls: HashMap<Uuid, Option<Stall>> = HashMap::new();
    let mut pairs: HashMap<(Uuid, Uuid), Pair> = HashMap::new();
    let mut ended: BTreeSet<Uuid> = BTreeSet::new();
    let mut steering = Steering::default();
    let mut alerts = Alerts::default();
    for event in events {
        match event.aggregate_type.as_str() {
            "Task" => {}
            "Agent" => {
                let decoded = event
                    .payload
                    .decode::<AgentEvent>()
                    .map_err(|e| ProjectionError::payload(event, e))?;
                for effect in agent_alerts(&decoded) {
                    alerts.apply(event, effect)?;
                }
                continue;
            }
            "Ticket" => {
                let decoded = event
                    .payload
                    .decode::<TicketEvent>()
                    .map_err(|e| ProjectionError::payload(event, e))?;
                if let Some(effect) = ticket_alert(&decoded) {
                    alerts.apply(event, effect)?;
                }
                continue;
            }
            _ => continue,
        }
        let decoded = event
            .payload
            .decode::<TaskEvent>()
            .map_err(|e| ProjectionError::payload(event, e))?;
        if let Some(effect) = steering_effect(&decoded) {
            steering.apply(entity_id(event)?, effect);
        }
        let Some(found) = finding(&decoded) else {
            continue;
        };
        let task = entity_id(event)?;
        match found {
            Finding::Stalled {
                agent_id,
                idle_since,
                at,
            } => {
                let meta = EventMeta::of(event)?;
                stalls.insert(
                    task,
                    Some(Stall {
                        organization_id: meta.organization_id,
                        project_id: meta.project_id,
                        agent_id,
                        idle_since,
                        at,
                    }),
                );
            }
            Finding::Unstalled => {
                stalls.insert(task, None);
            }
            Finding::Duplicate {
                duplicate_of,
                similarity,
            } => {
                // A pair is recorded once: the first finding stands (as the insert's
                // `on conflict do nothing` keeps the row already there).
                let meta = EventMeta::of(event)?;
                pairs.entry((task, duplicate_of)).or_insert(Pair {
                    organization_id: meta.organization_id,
                    project_id: meta.project_id,
                    similarity,
                });
            }
            Finding::Ended => {
                stalls.insert(task, None);
                pairs.retain(|(newer, older), _| *newer != task && *older != task);
                ended.insert(task);
            }
        }
    }
    if !stalls.is_empty() {
        let touched: Vec<Uuid> = stalls.keys().copied().collect();
        sqlx::query(&format!(
            "delete from {schema}.stalled where task_id = any($1)"
        ))
        .bind(&touched)
        .execute(&mut *tx)
        .await?;
        let open: Vec<(Uuid, Stall)> = stalls
            .into_iter()
            .filter_map(|(task, stall)| Some((task, stall?)))
            .collect();
        if !open.is_empty() {
            sqlx::query(&format!(
                "insert into {schema}.stalled
                     (task_id, organization_id, project_id, agent_id, idle_since, stalled_at)
                 select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[],
                                      $5::timestamptz[], $6::timestamptz[])"
            ))
            .bind(open.iter().map(|(t, _)| *t).collect::<Vec<_>>())
            .bind(
                open.iter()
                    .map(|(_, s)| s.organization_id)
                    .collect::<Vec<_>>(),
            )
            .bind(open.iter().map(|(_, s)| s.project_id).collect::<Vec<_>>())
            .bind(open.iter().map(|(_, s)| s.agent_id).collect::<Vec<_>>())
            .bind(open.iter().map(|(_, s)| s.idle_since).collect::<Vec<_>>())
            .bind(open.iter().map(|(_, s)| s.at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
    }
    if !ended.is_empty() {
        let ended: Vec<Uuid> = ended.into_iter().collect();
        sqlx::query(&format!(
            "delete from {schema}.duplicates where task_id = any($1) or duplicate_of = any($1)"
        ))
        .bind(&ended)
        .execute(&mut *tx)
        .await?;
    }
    steering.write(tx, schema).await?;
    alerts.write(tx, schema).await?;
    if !pairs.is_empty() {
        let pairs: Vec<((Uuid, Uuid), Pair)> = pairs.into_iter().collect();
        sqlx::query(&format!(
            "insert into {schema}.duplicates
                 (task_id, duplicate_of, organization_id, project_id, similarity)
             select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::float8[])
             on conflict do nothing"
        ))
        .bind(pairs.iter().map(|((t, _), _)| *t).collect::<Vec<_>>())
        .bind(pairs.iter().map(|((_, d), _)| *d).collect::<Vec<_>>())
        .bind(
            pairs
                .iter()
                .map(|(_, p)| p.organization_id)
                .collect::<Vec<_>>(),
        )
        .bind(pairs.iter().map(|(_, p)| p.project_id).collect::<Vec<_>>())
        .bind(pairs.iter().map(|(_, p)| p.similarity).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
