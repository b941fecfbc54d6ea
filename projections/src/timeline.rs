//! The activity timeline: one entry per event a person cares about, each with a one-line
//! summary naming the entity (`Ticket "Login page" moved analyzing → building`).
//!
//! Every event becomes an entry except task progress reports, which arrive too often to be
//! read as activity. Later events only carry their aggregate's id, so the projector keeps
//! the current title of every ticket, task, spec, agent, project and organization in
//! `titles` and names entities from it.
//!
//! Entries are keyed by the event's place in the global stream, `(transaction_id,
//! global_position)`: the runner applies events in that order, so a new entry is always
//! newer than every existing one and a cursor never gains older neighbours later.
//!
//! # Layout
//!
//! * [`TimelineProjector`] — tables and `apply`.
//! * [`Change`] and [`summary`] — the pure part: which events are entries and their text.
//! * [`read`], [`TimelineFilter`], [`Page`] — the paged query on the `timeline_entries` view.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use futures_util::future::BoxFuture;
use omoi_domain::agent::AgentEvent;
use omoi_domain::kind::AggregateKind;
use omoi_domain::organization::OrganizationEvent;
use omoi_domain::project::ProjectEvent;
use omoi_domain::spec::SpecEvent;
use omoi_domain::task::TaskEvent;
use omoi_domain::ticket::TicketEvent;
use omoi_store::{Cursor, StoredEvent};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::board::decode_error;
use crate::{ProjectionError, Projector};

/// Builds the `timeline` read model.
pub struct TimelineProjector;

impl Projector for TimelineProjector {
    fn name(&self) -> &'static str {
        "timeline"
    }

    fn version(&self) -> i32 {
        1
    }

    fn tables(&self) -> &'static [&'static str] {
        &["entries", "titles"]
    }

    fn create_tables(&self, schema: &str) -> Vec<String> {
        vec![
            format!(
                "create table if not exists {schema}.entries (
                    transaction_id bigint not null,
                    global_position bigint not null,
                    organization_id uuid not null,
                    project_id uuid,
                    entity_type text not null,
                    entity_id uuid not null,
                    event_type text not null,
                    actor text,
                    summary text not null,
                    occurred_at timestamptz not null,
                    primary key (transaction_id, global_position)
                )"
            ),
            format!(
                "create table if not exists {schema}.titles (
                    entity_type text not null,
                    entity_id uuid not null,
                    organization_id uuid not null,
                    project_id uuid,
                    title text not null,
                    primary key (entity_type, entity_id)
                )"
            ),
        ]
    }

    fn create_indexes(&self, schema: &str) -> Vec<String> {
        // Newest-first pages walk these backwards, one per way of scoping a page.
        vec![
            format!(
                "create index if not exists entries_by_project
                    on {schema}.entries (project_id, transaction_id, global_position)"
            ),
            format!(
                "create index if not exists entries_by_organization
                    on {schema}.entries (organization_id, transaction_id, global_position)"
            ),
            format!(
                "create index if not exists entries_by_entity
                    on {schema}.entries (entity_id, transaction_id, global_position)"
            ),
        ]
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

/// What an entry is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    Ticket,
    Task,
    Spec,
    Agent,
    Project,
    Organization,
}

impl EntityType {
    /// The entity of an aggregate type; `None` for aggregates the timeline does not show.
    pub fn of_aggregate(aggregate_type: &str) -> Option<Self> {
        AggregateKind::of_type(aggregate_type).and_then(Self::of_kind)
    }

    /// The entity type of its wire name.
    pub fn parse(name: &str) -> Option<Self> {
        AggregateKind::ALL
            .into_iter()
            .find(|kind| kind.noun() == name)
            .and_then(Self::of_kind)
    }

    fn of_kind(kind: AggregateKind) -> Option<Self> {
        Some(match kind {
            AggregateKind::Ticket => Self::Ticket,
            AggregateKind::Task => Self::Task,
            AggregateKind::Spec => Self::Spec,
            AggregateKind::Agent => Self::Agent,
            AggregateKind::Project => Self::Project,
            AggregateKind::Organization => Self::Organization,
            AggregateKind::BillingAccount => return None,
        })
    }

    fn kind(self) -> AggregateKind {
        match self {
            Self::Ticket => AggregateKind::Ticket,
            Self::Task => AggregateKind::Task,
            Self::Spec => AggregateKind::Spec,
            Self::Agent => AggregateKind::Agent,
            Self::Project => AggregateKind::Project,
            Self::Organization => AggregateKind::Organization,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.kind().noun()
    }

    fn noun(self) -> &'static str {
        self.kind().type_name()
    }
}

/// The part of an event's metadata read models rely on (the command bus writes it).
#[derive(Debug, Clone, Deserialize)]
pub struct EventMeta {
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub actor: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

impl EventMeta {
    pub fn of(event: &StoredEvent) -> Result<Self, ProjectionError> {
        EventMeta::deserialize(&event.metadata)
            .map_err(|e| ProjectionError::payload(event, format!("metadata: {e}")))
    }
}

/// The aggregate id of an event as a UUID (every omoi aggregate has one).
pub fn entity_id(event: &StoredEvent) -> Result<Uuid, ProjectionError> {
    event
        .aggregate_id
        .parse()
        .map_err(|e| ProjectionError::payload(event, format!("aggregate id: {e}")))
}

/// A domain event of any aggregate the timeline shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Ticket(TicketEvent),
    Task(TaskEvent),
    Spec(SpecEvent),
    Agent(AgentEvent),
    Project(ProjectEvent),
    Organization(OrganizationEvent),
}

impl Change {
    pub fn parse(kind: EntityType, payload: &serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            EntityType::Ticket => Self::Ticket(TicketEvent::deserialize(payload)?),
            EntityType::Task => Self::Task(TaskEvent::deserialize(payload)?),
            EntityType::Spec => Self::Spec(SpecEvent::deserialize(payload)?),
            EntityType::Agent => Self::Agent(AgentEvent::deserialize(payload)?),
            EntityType::Project => Self::Project(ProjectEvent::deserialize(payload)?),
            EntityType::Organization => {
                Self::Organization(OrganizationEvent::deserialize(payload)?)
            }
        })
    }

    pub fn kind(&self) -> EntityType {
        match self {
            Self::Ticket(_) => EntityType::Ticket,
            Self::Task(_) => EntityType::Task,
            Self::Spec(_) => EntityType::Spec,
            Self::Agent(_) => EntityType::Agent,
            Self::Project(_) => EntityType::Project,
            Self::Organization(_) => EntityType::Organization,
        }
    }

    /// Progress reports arrive every few seconds per running task: as entries they would
    /// bury everything else.
    pub fn is_entry(&self) -> bool {
        !matches!(self, Self::Task(TaskEvent::TaskProgressReported { .. }))
    }

    /// The entity's title from this event on, when the event sets it.
    pub fn new_title(&self) -> Option<&str> {
        match self {
            Self::Ticket(TicketEvent::TicketCreated { title, .. })
            | Self::Ticket(TicketEvent::TicketUpdated {
                title: Some(title), ..
            })
            | Self::Task(TaskEvent::TaskCreated { title, .. })
            | Self::Spec(SpecEvent::SpecCreated { title, .. })
            | Self::Agent(AgentEvent::AgentRegistered { name: title, .. })
            | Self::Project(ProjectEvent::ProjectCreated { name: title, .. })
            | Self::Project(ProjectEvent::ProjectRenamed { name: title })
            | Self::Organization(OrganizationEvent::OrganizationCreated { name: title, .. })
            | Self::Organization(OrganizationEvent::OrganizationRenamed { name: title }) => {
                Some(title)
            }
            _ => None,
        }
    }

    /// Another entity the summary names, whose title must be looked up.
    pub fn reference(&self) -> Option<(EntityType, Uuid)> {
        match self {
            Self::Task(TaskEvent::TaskAssigned { agent_id, .. }) => {
                Some((EntityType::Agent, *agent_id))
            }
            Self::Task(TaskEvent::TaskDependencyAdded { depends_on })
            | Self::Task(TaskEvent::TaskDependencyRemoved { depends_on }) => {
                Some((EntityType::Task, *depends_on))
            }
            _ => None,
        }
    }
}

/// What a summary may name besides the event itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Names<'a> {
    /// The entity's id.
    pub id: Uuid,
    /// Its title before this event (unknown before its creation event).
    pub title: Option<&'a str>,
    /// The title of the entity [`Change::reference`] points at.
    pub other: Option<&'a str>,
}

/// The one-line human summary of `change`.
pub fn summary(change: &Change, names: &Names) -> String {
    let this = label(change.kind(), names.id, names.title);
    match change {
        Change::Ticket(e) => ticket_summary(e, &this, names.id),
        Change::Task(e) => task_summary(e, &this, names),
        Change::Spec(e) => spec_summary(e, &this, names.id),
        Change::Agent(e) => agent_summary(e, &this, names.id),
        Change::Project(e) => project_summary(e, &this, names.id),
        Change::Organization(e) => organization_summary(e, &this, names.id),
    }
}

const TITLE_CHARS: usize = 80;
const TEXT_CHARS: usize = 120;

/// `Ticket "Login page"`, or `Ticket <id>` when the title is unknown.
fn label(kind: EntityType, id: Uuid, title: Option<&str>) -> String {
    match title {
        Some(title) => format!("{} \"{}\"", kind.noun(), one_line(title, TITLE_CHARS)),
        None => format!("{} {id}", kind.noun()),
    }
}

/// Free text squeezed onto one line and cut at `max` characters, so one entry stays one
/// line however long the error or feedback was.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

/// An enum's name on the wire (`HIGH`, `waiting_on_clarification`): stable and familiar.
fn wire<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

/// `: <reason>` when there is one.
fn because(reason: Option<&String>) -> String {
    reason
        .filter(|r| !r.trim().is_empty())
        .map(|r| format!(": {}", one_line(r, TEXT_CHARS)))
        .unwrap_or_default()
}

fn ticket_summary(event: &TicketEvent, this: &str, id: Uuid) -> String {
    match event {
        TicketEvent::TicketCreated { title, .. } => {
            format!("{} created", label(EntityType::Ticket, id, Some(title)))
        }
        TicketEvent::TicketUpdated {
            title,
            description,
            priority,
            phase,
        } => {
            let mut changed = Vec::new();
            if let Some(title) = title {
                changed.push(format!("title \"{}\"", one_line(title, TITLE_CHARS)));
            }
            if description.is_some() {
                changed.push("description".to_string());
            }
            if let Some(priority) = priority {
                changed.push(format!("priority {}", wire(priority)));
            }
            if let Some(phase) = phase {
                changed.push(format!("phase {}", wire(phase)));
            }
            match changed.is_empty() {
                true => format!("{this} updated"),
                false => format!("{this} updated: {}", changed.join(", ")),
            }
        }
        TicketEvent::TicketStatusChanged { from, to, .. } => format!("{this} moved {from} → {to}"),
        TicketEvent::TicketRegressed { feedback } => format!(
            "{this} regressed testing → building: {}",
            one_line(feedback, TEXT_CHARS)
        ),
        TicketEvent::TicketBlocked { reason, .. } => {
            format!("{this} blocked ({})", wire(reason).replace('_', " "))
        }
        TicketEvent::TicketUnblocked => format!("{this} unblocked"),
    }
}

fn task_summary(event: &TaskEvent, this: &str, names: &Names) -> String {
    match event {
        TaskEvent::TaskCreated {
            title, task_type, ..
        } => format!(
            "{} created ({})",
            label(EntityType::Task, names.id, Some(title)),
            one_line(task_type, TITLE_CHARS)
        ),
        TaskEvent::TaskAssigned { agent_id, .. } => format!(
            "{this} assigned to {}",
            label(EntityType::Agent, *agent_id, names.other)
        ),
        TaskEvent::TaskStarted { .. } => format!("{this} started"),
        TaskEvent::TaskProgressReported { message } => {
            format!("{this}: {}", one_line(message, TEXT_CHARS))
        }
        TaskEvent::TaskCompleted { .. } => format!("{this} completed"),
        TaskEvent::TaskFailed { error, attempt, .. } => format!(
            "{this} failed (attempt {attempt}): {}",
            one_line(error, TEXT_CHARS)
        ),
        TaskEvent::TaskTimedOut {
            after_seconds,
            attempt,
            ..
        } => format!("{this} timed out after {after_seconds} s (attempt {attempt})"),
        TaskEvent::TaskRetryScheduled {
            attempt,
            not_before,
        } => format!(
            "{this} retry {attempt} scheduled for {}",
            not_before.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        TaskEvent::TaskPermanentlyFailed { reason } => {
            format!(
                "{this} permanently failed ({})",
                wire(reason).replace('_', " ")
            )
        }
        TaskEvent::TaskCancelled { reason, .. } => {
            format!("{this} cancelled{}", because(reason.as_ref()))
        }
        TaskEvent::TaskDependencyAdded { depends_on } => format!(
            "{this} now depends on {}",
            label(EntityType::Task, *depends_on, names.other)
        ),
        TaskEvent::TaskDependencyRemoved { depends_on } => format!(
            "{this} no longer depends on {}",
            label(EntityType::Task, *depends_on, names.other)
        ),
    }
}

fn spec_summary(event: &SpecEvent, this: &str, id: Uuid) -> String {
    match event {
        SpecEvent::SpecCreated { title, .. } => {
            format!("{} created", label(EntityType::Spec, id, Some(title)))
        }
        SpecEvent::SpecRequirementAdded { requirement } => {
            format!("{this}: requirement {} added", requirement.id)
        }
        SpecEvent::SpecRequirementUpdated { requirement } => {
            format!("{this}: requirement {} updated", requirement.id)
        }
        SpecEvent::SpecRequirementRemoved { requirement_id } => {
            format!("{this}: requirement {requirement_id} removed")
        }
        SpecEvent::SpecPhaseChanged { from, to } => format!("{this} moved {from} → {to}"),
        SpecEvent::SpecRequirementsApproved { .. } => format!("{this}: requirements approved"),
        SpecEvent::SpecDesignSet { .. } => format!("{this}: design set"),
        SpecEvent::SpecDesignApproved { .. } => format!("{this}: design approved"),
        SpecEvent::SpecCompleted { .. } => format!("{this} completed"),
        SpecEvent::SpecArchived { .. } => format!("{this} archived"),
    }
}

fn agent_summary(event: &AgentEvent, this: &str, id: Uuid) -> String {
    match event {
        AgentEvent::AgentRegistered {
            name,
            agent_type,
            capacity,
            ..
        } => format!(
            "{} registered ({}, capacity {capacity})",
            label(EntityType::Agent, id, Some(name)),
            agent_type.as_str()
        ),
        AgentEvent::AgentStatusChanged {
            from, to, reason, ..
        } if from == to => format!(
            "{this} status re-recorded as {to}{}",
            because(reason.as_ref())
        ),
        AgentEvent::AgentStatusChanged {
            from, to, reason, ..
        } => format!("{this} {from} → {to}{}", because(reason.as_ref())),
        AgentEvent::AgentCapabilitiesUpdated { capabilities } => {
            let list = capabilities.iter().cloned().collect::<Vec<_>>().join(", ");
            let list = if list.is_empty() {
                "none".to_string()
            } else {
                list
            };
            format!("{this} capabilities set to {}", one_line(&list, TEXT_CHARS))
        }
    }
}

fn project_summary(event: &ProjectEvent, this: &str, id: Uuid) -> String {
    match event {
        ProjectEvent::ProjectCreated { name, .. } => {
            format!("{} created", label(EntityType::Project, id, Some(name)))
        }
        ProjectEvent::ProjectRenamed { name } => {
            format!("{this} renamed to \"{}\"", one_line(name, TITLE_CHARS))
        }
        ProjectEvent::ProjectArchived { .. } => format!("{this} archived"),
    }
}

fn organization_summary(event: &OrganizationEvent, this: &str, id: Uuid) -> String {
    match event {
        OrganizationEvent::OrganizationCreated { name, .. } => {
            format!(
                "{} created",
                label(EntityType::Organization, id, Some(name))
            )
        }
        OrganizationEvent::OrganizationRenamed { name } => {
            format!("{this} renamed to \"{}\"", one_line(name, TITLE_CHARS))
        }
        OrganizationEvent::OrganizationArchived { .. } => format!("{this} archived"),
        OrganizationEvent::MemberAdded { principal, role } => {
            format!("{principal} added to {this} as {}", role.as_str())
        }
        OrganizationEvent::MemberRoleChanged {
            principal,
            from,
            to,
        } => format!(
            "{principal} changed from {} to {} in {this}",
            from.as_str(),
            to.as_str()
        ),
        OrganizationEvent::MemberRemoved { principal } => {
            format!("{principal} removed from {this}")
        }
    }
}

/// An event that becomes an entry, decoded.
struct Decoded<'a> {
    event: &'a StoredEvent,
    kind: EntityType,
    id: Uuid,
    change: Change,
    meta: EventMeta,
}

/// A title as the `titles` table keeps it.
struct Title {
    text: String,
    /// Set for a title this batch writes: the scope of the row, from the event that first
    /// named the entity (a row keeps the scope it was created with).
    scope: Option<(Uuid, Option<Uuid>)>,
}

type TitleKey = (EntityType, Uuid);

/// Looks up every title the batch names (one query), writes the entries in order with
/// the titles as each event saw them (one insert), then the titles the batch set (one
/// upsert).
async fn apply_events(
    tx: &mut PgConnection,
    schema: &str,
    events: &[StoredEvent],
) -> Result<(), ProjectionError> {
    let mut decoded = Vec::with_capacity(events.len());
    for event in events {
        let Some(kind) = EntityType::of_aggregate(&event.aggregate_type) else {
            continue;
        };
        let change =
            Change::parse(kind, &event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        if !change.is_entry() {
            continue;
        }
        decoded.push(Decoded {
            event,
            kind,
            id: entity_id(event)?,
            change,
            meta: EventMeta::of(event)?,
        });
    }
    if decoded.is_empty() {
        return Ok(());
    }
    let wanted: BTreeSet<TitleKey> = decoded
        .iter()
        .flat_map(|d| std::iter::once((d.kind, d.id)).chain(d.change.reference()))
        .collect();
    let mut titles = load_titles(tx, schema, &wanted).await?;
    let mut entries = EntryColumns::default();
    for d in &decoded {
        let title_of = |key: TitleKey| titles.get(&key).map(|t| t.text.as_str());
        let names = Names {
            id: d.id,
            title: title_of((d.kind, d.id)),
            other: d.change.reference().and_then(title_of),
        };
        let summary = summary(&d.change, &names);
        entries.push(d, summary);
        if let Some(text) = d.change.new_title() {
            let scope = (d.meta.organization_id, d.meta.project_id);
            titles
                .entry((d.kind, d.id))
                .and_modify(|t| {
                    t.text = text.to_string();
                    t.scope.get_or_insert(scope);
                })
                .or_insert_with(|| Title {
                    text: text.to_string(),
                    scope: Some(scope),
                });
        }
    }
    insert_entries(tx, schema, entries).await?;
    save_titles(tx, schema, &titles).await?;
    Ok(())
}

async fn load_titles(
    tx: &mut PgConnection,
    schema: &str,
    wanted: &BTreeSet<TitleKey>,
) -> Result<HashMap<TitleKey, Title>, ProjectionError> {
    let (kinds, ids): (Vec<&str>, Vec<Uuid>) =
        wanted.iter().map(|(kind, id)| (kind.as_str(), *id)).unzip();
    let rows: Vec<(String, Uuid, String)> = sqlx::query_as(&format!(
        "select t.entity_type, t.entity_id, t.title
           from {schema}.titles t
           join unnest($1::text[], $2::uuid[]) as wanted(entity_type, entity_id)
             using (entity_type, entity_id)"
    ))
    .bind(kinds)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut titles = HashMap::with_capacity(rows.len());
    for (kind, id, text) in rows {
        let kind = EntityType::parse(&kind)
            .ok_or_else(|| decode_error(format!("unknown entity type {kind:?} in titles")))?;
        titles.insert((kind, id), Title { text, scope: None });
    }
    Ok(titles)
}

/// Creates or renames the titles this batch set; an existing row keeps its scope.
async fn save_titles(
    tx: &mut PgConnection,
    schema: &str,
    titles: &HashMap<TitleKey, Title>,
) -> Result<(), sqlx::Error> {
    let (mut kinds, mut ids, mut organizations, mut projects, mut texts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((kind, id), title) in titles {
        let Some((organization, project)) = title.scope else {
            continue;
        };
        kinds.push(kind.as_str());
        ids.push(*id);
        organizations.push(organization);
        projects.push(project);
        texts.push(title.text.as_str());
    }
    if kinds.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "insert into {schema}.titles (entity_type, entity_id, organization_id, project_id, title)
         select * from unnest($1::text[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[])
         on conflict (entity_type, entity_id) do update set title = excluded.title"
    ))
    .bind(kinds)
    .bind(ids)
    .bind(organizations)
    .bind(projects)
    .bind(texts)
    .execute(tx)
    .await?;
    Ok(())
}

/// The entries of a batch, column by column, as `unnest` takes them.
#[derive(Default)]
struct EntryColumns {
    transaction_id: Vec<i64>,
    global_position: Vec<i64>,
    organization_id: Vec<Uuid>,
    project_id: Vec<Option<Uuid>>,
    entity_type: Vec<&'static str>,
    entity_id: Vec<Uuid>,
    event_type: Vec<String>,
    actor: Vec<Option<String>>,
    summary: Vec<String>,
    occurred_at: Vec<DateTime<Utc>>,
}

impl EntryColumns {
    fn push(&mut self, d: &Decoded<'_>, summary: String) {
        self.transaction_id.push(d.event.transaction_id);
        self.global_position.push(d.event.global_position);
        self.organization_id.push(d.meta.organization_id);
        self.project_id.push(d.meta.project_id);
        self.entity_type.push(d.kind.as_str());
        self.entity_id.push(d.id);
        self.event_type.push(d.event.event_type.clone());
        self.actor.push(d.meta.actor.clone());
        self.summary.push(summary);
        self.occurred_at.push(d.meta.occurred_at);
    }
}

async fn insert_entries(
    tx: &mut PgConnection,
    schema: &str,
    entries: EntryColumns,
) -> Result<(), sqlx::Error> {
    // The key is the event's place in the stream, so applying an event twice is harmless.
    sqlx::query(&format!(
        "insert into {schema}.entries (transaction_id, global_position, organization_id,
             project_id, entity_type, entity_id, event_type, actor, summary, occurred_at)
         select * from unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::uuid[], $5::text[],
                              $6::uuid[], $7::text[], $8::text[], $9::text[],
                              $10::timestamptz[])
         on conflict (transaction_id, global_position) do nothing"
    ))
    .bind(entries.transaction_id)
    .bind(entries.global_position)
    .bind(entries.organization_id)
    .bind(entries.project_id)
    .bind(entries.entity_type)
    .bind(entries.entity_id)
    .bind(entries.event_type)
    .bind(entries.actor)
    .bind(entries.summary)
    .bind(entries.occurred_at)
    .execute(tx)
    .await?;
    Ok(())
}

/// The timeline as one process folds it from the log (the live `timeline` stream): the
/// titles every entry's summary names, and the entry each event becomes — the same entry
/// the projector writes.
#[derive(Debug, Default)]
pub struct TimelineModel {
    titles: HashMap<TitleKey, String>,
}

impl TimelineModel {
    /// Applies one event: the entry it adds to the timeline, if any.
    pub fn apply(&mut self, event: &StoredEvent) -> Result<Option<TimelineEntry>, ProjectionError> {
        let Some(kind) = EntityType::of_aggregate(&event.aggregate_type) else {
            return Ok(None);
        };
        let change =
            Change::parse(kind, &event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        let id = entity_id(event)?;
        let entry = if change.is_entry() {
            let meta = EventMeta::of(event)?;
            let title_of = |key: TitleKey| self.titles.get(&key).map(String::as_str);
            let names = Names {
                id,
                title: title_of((kind, id)),
                other: change.reference().and_then(title_of),
            };
            Some(TimelineEntry {
                cursor: event.cursor().to_string(),
                transaction_id: event.transaction_id,
                global_position: event.global_position,
                organization_id: meta.organization_id,
                project_id: meta.project_id,
                entity_type: kind.as_str().to_string(),
                entity_id: id,
                event_type: event.event_type.clone(),
                actor: meta.actor,
                summary: summary(&change, &names),
                // As stored: `timestamptz` keeps microseconds.
                occurred_at: meta.occurred_at.trunc_subsecs(6),
            })
        } else {
            None
        };
        if let Some(text) = change.new_title() {
            self.titles.insert((kind, id), text.to_string());
        }
        Ok(entry)
    }
}

/// One timeline entry as served.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, ToSchema)]
pub struct TimelineEntry {
    /// `<transaction_id>-<global_position>`: pass as `before`/`after` to page from here.
    pub cursor: String,
    pub transaction_id: i64,
    pub global_position: i64,
    pub organization_id: Uuid,
    /// Absent for organization-level events (members, the organization itself, org-wide
    /// agents).
    pub project_id: Option<Uuid>,
    /// `ticket`, `task`, `spec`, `agent`, `project` or `organization`.
    pub entity_type: String,
    pub entity_id: Uuid,
    pub event_type: String,
    /// Who caused it, as in the event's metadata (`user:<id>`, `api_key:<id>`, …).
    pub actor: Option<String>,
    pub summary: String,
    pub occurred_at: DateTime<Utc>,
}

impl TimelineEntry {
    pub fn position(&self) -> Cursor {
        Cursor {
            transaction_id: self.transaction_id,
            global_position: self.global_position,
        }
    }
}

/// A page of the timeline, newest entry first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimelinePage {
    pub entries: Vec<TimelineEntry>,
    /// Pass as `before` for older entries; absent when there are none.
    pub next_before: Option<String>,
    /// Pass as `after` for newer entries (also when none exist yet: poll with it).
    pub next_after: String,
}

/// Which slice of the timeline to read. Both cursors are exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest entries.
    Newest,
    /// The newest entries older than the cursor.
    Before(Cursor),
    /// The oldest entries newer than the cursor (still returned newest first), so that
    /// following `next_after` walks forward without a gap.
    After(Cursor),
}

/// Why paging parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("{field} is not a cursor: {source}")]
    BadCursor {
        field: &'static str,
        source: omoi_store::log::BadCursor,
    },
    #[error("give either before or after, not both")]
    BothDirections,
    #[error("limit must be between 1 and {MAX_LIMIT}")]
    Limit,
}

impl PageError {
    /// The query parameter to blame.
    pub fn field(&self) -> &'static str {
        match self {
            Self::BadCursor { field, .. } => field,
            Self::BothDirections => "after",
            Self::Limit => "limit",
        }
    }
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

impl Page {
    /// Reads `before`/`after` query values; empty values count as absent.
    pub fn parse(before: Option<&str>, after: Option<&str>) -> Result<Self, PageError> {
        let cursor = |field: &'static str, raw: Option<&str>| {
            raw.filter(|r| !r.is_empty())
                .map(|r| r.parse::<Cursor>())
                .transpose()
                .map_err(|source| PageError::BadCursor { field, source })
        };
        match (cursor("before", before)?, cursor("after", after)?) {
            (Some(_), Some(_)) => Err(PageError::BothDirections),
            (Some(c), None) => Ok(Self::Before(c)),
            (None, Some(c)) => Ok(Self::After(c)),
            (None, None) => Ok(Self::Newest),
        }
    }
}

/// The page size, `DEFAULT_LIMIT` when absent.
pub fn limit(raw: Option<i64>) -> Result<i64, PageError> {
    let limit = raw.unwrap_or(DEFAULT_LIMIT);
    match (1..=MAX_LIMIT).contains(&limit) {
        true => Ok(limit),
        false => Err(PageError::Limit),
    }
}

/// Every filter of a timeline read; all given ones must match.
#[derive(Debug, Clone)]
pub struct TimelineFilter {
    /// `None` only for operators, who see every organization.
    pub organizations: Option<Vec<Uuid>>,
    pub project_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub entity_type: Option<EntityType>,
    pub entity_id: Option<Uuid>,
    pub actor: Option<String>,
    pub page: Page,
    pub limit: i64,
}

/// Reads one page from the `timeline_entries` view.
pub async fn read(pool: &PgPool, filter: &TimelineFilter) -> Result<TimelinePage, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "select transaction_id::text || '-' || global_position::text as cursor,
                transaction_id, global_position, organization_id, project_id, entity_type,
                entity_id, event_type, actor, summary, occurred_at
           from timeline_entries where true",
    );
    push_filters(&mut sql, filter);
    // One row more than asked tells whether anything lies beyond the page.
    sql.push(" limit ").push_bind(filter.limit + 1);
    let mut entries: Vec<TimelineEntry> = sql.build_query_as().fetch_all(pool).await?;
    let more = entries.len() as i64 > filter.limit;
    entries.truncate(usize::try_from(filter.limit).unwrap_or(0));
    if let Page::After(_) = filter.page {
        entries.reverse();
    }
    let newest = entries.first().map(TimelineEntry::position);
    let oldest = entries.last().map(TimelineEntry::position);
    let (next_before, next_after) = next_cursors(filter.page, newest, oldest, more);
    Ok(TimelinePage {
        entries,
        next_before: next_before.map(|c| c.to_string()),
        next_after: next_after.to_string(),
    })
}

fn push_filters(sql: &mut QueryBuilder<'_, Postgres>, filter: &TimelineFilter) {
    if let Some(organizations) = &filter.organizations {
        sql.push(" and organization_id = any(")
            .push_bind(organizations.clone())
            .push(")");
    }
    if let Some(project_id) = filter.project_id {
        sql.push(" and project_id = ").push_bind(project_id);
    }
    if let Some(event_type) = &filter.event_type {
        sql.push(" and event_type = ").push_bind(event_type.clone());
    }
    if let Some(entity_type) = filter.entity_type {
        sql.push(" and entity_type = ")
            .push_bind(entity_type.as_str());
    }
    if let Some(entity_id) = filter.entity_id {
        sql.push(" and entity_id = ").push_bind(entity_id);
    }
    if let Some(actor) = &filter.actor {
        sql.push(" and actor = ").push_bind(actor.clone());
    }
    let (comparison, order) = match filter.page {
        Page::Newest => (None, "desc"),
        Page::Before(c) => (Some(("<", c)), "desc"),
        Page::After(c) => (Some((">", c)), "asc"),
    };
    if let Some((operator, cursor)) = comparison {
        sql.push(format!(
            " and (transaction_id, global_position) {operator} ("
        ))
        .push_bind(cursor.transaction_id)
        .push(", ")
        .push_bind(cursor.global_position)
        .push(")");
    }
    sql.push(format!(
        " order by transaction_id {order}, global_position {order}"
    ));
}

/// `(next_before, next_after)` for a page whose entries span `newest..=oldest`; `more`
/// says whether entries lie beyond the page in the direction it was read.
pub fn next_cursors(
    page: Page,
    newest: Option<Cursor>,
    oldest: Option<Cursor>,
    more: bool,
) -> (Option<Cursor>, Cursor) {
    let next_before = match page {
        Page::Newest | Page::Before(_) => oldest.filter(|_| more),
        // Read forwards, so older entries exist whenever the cursor came from one.
        Page::After(c) => oldest.or(Some(c)).filter(|c| *c != Cursor::default()),
    };
    let next_after = match page {
        Page::Newest => newest.unwrap_or_default(),
        Page::Before(c) | Page::After(c) => newest.unwrap_or(c),
    };
    (next_before, next_after)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::TimeZone;
    use omoi_domain::access::{Principal, Role};
    use omoi_domain::agent::{AgentStatus, AgentType};
    use omoi_domain::common::{Phase, Priority};
    use omoi_domain::spec::{Design, Requirement, SpecPhase};
    use omoi_domain::task::FailureReason;
    use omoi_domain::ticket::{BlockReason, TicketStatus};
    use serde_json::json;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5)
            .single()
            .expect("a valid time")
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    /// The summary of `change` for entity 1 titled `title`, whose reference is titled
    /// `other`.
    #[track_caller]
    fn says(change: Change, title: Option<&str>, other: Option<&str>, expected: &str) {
        let names = Names {
            id: id(1),
            title,
            other,
        };
        assert_eq!(summary(&change, &names), expected);
    }

    fn requirement(rid: &str) -> Requirement {
        Requirement {
            id: rid.into(),
            condition: "a user logs in".into(),
            action: "show the board".into(),
            acceptance_criteria: vec![],
        }
    }

    #[test]
    fn ticket_events_are_summarized_with_the_ticket_title() {
        let t = Some("Login page");
        says(
            Change::Ticket(TicketEvent::TicketCreated {
                ticket_id: id(1),
                organization_id: id(2),
                project_id: id(3),
                spec_id: None,
                title: "Login page".into(),
                description: String::new(),
                priority: Priority::High,
                phase: Phase::Backlog,
            }),
            None,
            None,
            "Ticket \"Login page\" created",
        );
        says(
            Change::Ticket(TicketEvent::TicketUpdated {
                title: Some("Sign-in page".into()),
                description: Some("new".into()),
                priority: Some(Priority::Critical),
                phase: Some(Phase::Design),
            }),
            t,
            None,
            "Ticket \"Login page\" updated: title \"Sign-in page\", description, \
             priority CRITICAL, phase PHASE_DESIGN",
        );
        says(
            Change::Ticket(TicketEvent::TicketStatusChanged {
                from: TicketStatus::Analyzing,
                to: TicketStatus::Building,
                note: None,
            }),
            t,
            None,
            "Ticket \"Login page\" moved analyzing → building",
        );
        says(
            Change::Ticket(TicketEvent::TicketRegressed {
                feedback: "the button\n does nothing".into(),
            }),
            t,
            None,
            "Ticket \"Login page\" regressed testing → building: the button does nothing",
        );
        says(
            Change::Ticket(TicketEvent::TicketBlocked {
                reason: BlockReason::WaitingOnClarification,
                note: None,
                blocked_at: at(),
            }),
            t,
            None,
            "Ticket \"Login page\" blocked (waiting on clarification)",
        );
        says(
            Change::Ticket(TicketEvent::TicketUnblocked),
            t,
            None,
            "Ticket \"Login page\" unblocked",
        );
    }

    #[test]
    fn task_events_are_summarized_naming_the_agent_or_dependency() {
        let t = Some("Write the form");
        let task = |e| Change::Task(e);
        says(
            task(TaskEvent::TaskCreated {
                task_id: id(1),
                organization_id: id(2),
                project_id: id(3),
                ticket_id: id(4),
                title: "Write the form".into(),
                description: String::new(),
                task_type: "implement".into(),
                phase: Phase::Implementation,
                priority: Priority::Medium,
                depends_on: vec![],
                required_capabilities: vec![],
                max_retries: 3,
                timeout_seconds: None,
                created_at: at(),
            }),
            None,
            None,
            "Task \"Write the form\" created (implement)",
        );
        let assigned = task(TaskEvent::TaskAssigned {
            agent_id: id(9),
            at: at(),
        });
        says(
            assigned.clone(),
            t,
            Some("worker-1"),
            "Task \"Write the form\" assigned to Agent \"worker-1\"",
        );
        says(
            assigned,
            t,
            None,
            &format!("Task \"Write the form\" assigned to Agent {}", id(9)),
        );
        for (event, text) in [
            (TaskEvent::TaskStarted { at: at() }, "started"),
            (
                TaskEvent::TaskCompleted {
                    result: json!({}),
                    at: at(),
                },
                "completed",
            ),
            (
                TaskEvent::TaskFailed {
                    error: "exit code 1".into(),
                    attempt: 2,
                    at: at(),
                },
                "failed (attempt 2): exit code 1",
            ),
            (
                TaskEvent::TaskTimedOut {
                    after_seconds: 300,
                    attempt: 1,
                    at: at(),
                },
                "timed out after 300 s (attempt 1)",
            ),
            (
                TaskEvent::TaskRetryScheduled {
                    attempt: 2,
                    not_before: at(),
                },
                "retry 2 scheduled for 2025-01-02T03:04:05Z",
            ),
            (
                TaskEvent::TaskPermanentlyFailed {
                    reason: FailureReason::RetriesExhausted,
                },
                "permanently failed (retries exhausted)",
            ),
            (
                TaskEvent::TaskCancelled {
                    reason: Some("not needed".into()),
                    at: at(),
                },
                "cancelled: not needed",
            ),
            (
                TaskEvent::TaskCancelled {
                    reason: None,
                    at: at(),
                },
                "cancelled",
            ),
        ] {
            says(
                task(event),
                t,
                None,
                &format!("Task \"Write the form\" {text}"),
            );
        }
        says(
            task(TaskEvent::TaskDependencyAdded { depends_on: id(5) }),
            t,
            Some("Design"),
            "Task \"Write the form\" now depends on Task \"Design\"",
        );
        says(
            task(TaskEvent::TaskDependencyRemoved { depends_on: id(5) }),
            t,
            Some("Design"),
            "Task \"Write the form\" no longer depends on Task \"Design\"",
        );
    }

    #[test]
    fn spec_events_are_summarized() {
        let s = Some("Auth");
        says(
            Change::Spec(SpecEvent::SpecCreated {
                spec_id: id(1),
                organization_id: id(2),
                project_id: id(3),
                title: "Auth".into(),
                description: String::new(),
                created_at: at(),
            }),
            None,
            None,
            "Spec \"Auth\" created",
        );
        for (event, text) in [
            (
                SpecEvent::SpecRequirementAdded {
                    requirement: requirement("REQ-AUTH-001"),
                },
                ": requirement REQ-AUTH-001 added",
            ),
            (
                SpecEvent::SpecRequirementUpdated {
                    requirement: requirement("REQ-AUTH-001"),
                },
                ": requirement REQ-AUTH-001 updated",
            ),
            (
                SpecEvent::SpecRequirementRemoved {
                    requirement_id: "REQ-AUTH-001".into(),
                },
                ": requirement REQ-AUTH-001 removed",
            ),
            (
                SpecEvent::SpecPhaseChanged {
                    from: SpecPhase::Draft,
                    to: SpecPhase::Requirements,
                },
                " moved draft → requirements",
            ),
            (
                SpecEvent::SpecRequirementsApproved { at: at() },
                ": requirements approved",
            ),
            (
                SpecEvent::SpecDesignSet {
                    design: Design {
                        architecture: "layers".into(),
                        data_model: String::new(),
                        api_spec: String::new(),
                    },
                },
                ": design set",
            ),
            (
                SpecEvent::SpecDesignApproved { at: at() },
                ": design approved",
            ),
            (SpecEvent::SpecCompleted { at: at() }, " completed"),
            (SpecEvent::SpecArchived { at: at() }, " archived"),
        ] {
            says(
                Change::Spec(event),
                s,
                None,
                &format!("Spec \"Auth\"{text}"),
            );
        }
    }

    #[test]
    fn agent_events_are_summarized() {
        let a = Some("worker-1");
        says(
            Change::Agent(AgentEvent::AgentRegistered {
                agent_id: id(1),
                organization_id: id(2),
                project_id: None,
                name: "worker-1".into(),
                agent_type: AgentType::Worker,
                capabilities: BTreeSet::new(),
                capacity: 2,
                registered_at: at(),
            }),
            None,
            None,
            "Agent \"worker-1\" registered (worker, capacity 2)",
        );
        says(
            Change::Agent(AgentEvent::AgentStatusChanged {
                from: AgentStatus::Idle,
                to: AgentStatus::Running,
                reason: None,
                at: at(),
            }),
            a,
            None,
            "Agent \"worker-1\" idle → running",
        );
        says(
            Change::Agent(AgentEvent::AgentStatusChanged {
                from: AgentStatus::Degraded,
                to: AgentStatus::Degraded,
                reason: Some("slow heartbeats".into()),
                at: at(),
            }),
            a,
            None,
            "Agent \"worker-1\" status re-recorded as degraded: slow heartbeats",
        );
        says(
            Change::Agent(AgentEvent::AgentCapabilitiesUpdated {
                capabilities: BTreeSet::from(["rust".to_string(), "browser".to_string()]),
            }),
            a,
            None,
            "Agent \"worker-1\" capabilities set to browser, rust",
        );
    }

    #[test]
    fn project_and_organization_events_are_summarized() {
        says(
            Change::Project(ProjectEvent::ProjectCreated {
                project_id: id(1),
                organization_id: id(2),
                name: "Website".into(),
                description: String::new(),
                created_at: at(),
            }),
            None,
            None,
            "Project \"Website\" created",
        );
        says(
            Change::Project(ProjectEvent::ProjectRenamed {
                name: "Site".into(),
            }),
            Some("Website"),
            None,
            "Project \"Website\" renamed to \"Site\"",
        );
        says(
            Change::Project(ProjectEvent::ProjectArchived { archived_at: at() }),
            Some("Site"),
            None,
            "Project \"Site\" archived",
        );
        let o = Some("Acme");
        let org = |e| Change::Organization(e);
        says(
            org(OrganizationEvent::OrganizationCreated {
                organization_id: id(1),
                name: "Acme".into(),
                created_at: at(),
            }),
            None,
            None,
            "Organization \"Acme\" created",
        );
        says(
            org(OrganizationEvent::OrganizationRenamed {
                name: "Acme Inc".into(),
            }),
            o,
            None,
            "Organization \"Acme\" renamed to \"Acme Inc\"",
        );
        says(
            org(OrganizationEvent::OrganizationArchived { archived_at: at() }),
            o,
            None,
            "Organization \"Acme\" archived",
        );
        let user = Principal::User(id(7));
        says(
            org(OrganizationEvent::MemberAdded {
                principal: user,
                role: Role::Admin,
            }),
            o,
            None,
            &format!("user:{} added to Organization \"Acme\" as admin", id(7)),
        );
        says(
            org(OrganizationEvent::MemberRoleChanged {
                principal: user,
                from: Role::Admin,
                to: Role::AgentExecutor,
            }),
            o,
            None,
            &format!(
                "user:{} changed from admin to agent_executor in Organization \"Acme\"",
                id(7)
            ),
        );
        says(
            org(OrganizationEvent::MemberRemoved { principal: user }),
            o,
            None,
            &format!("user:{} removed from Organization \"Acme\"", id(7)),
        );
    }

    #[test]
    fn an_unknown_title_falls_back_to_the_id() {
        says(
            Change::Ticket(TicketEvent::TicketUnblocked),
            None,
            None,
            &format!("Ticket {} unblocked", id(1)),
        );
    }

    #[test]
    fn long_or_multi_line_text_stays_on_one_short_line() {
        assert_eq!(one_line("  a\n\tb  c ", 10), "a b c");
        let long = "x".repeat(300);
        let cut = one_line(&long, TEXT_CHARS);
        assert_eq!(cut.chars().count(), TEXT_CHARS);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn every_event_but_progress_reports_is_an_entry() {
        let progress = Change::Task(TaskEvent::TaskProgressReported {
            message: "50 %".into(),
        });
        assert!(!progress.is_entry());
        assert!(Change::Task(TaskEvent::TaskStarted { at: at() }).is_entry());
        assert!(Change::Ticket(TicketEvent::TicketUnblocked).is_entry());
        assert!(Change::Organization(OrganizationEvent::MemberRemoved {
            principal: Principal::User(id(1)),
        })
        .is_entry());
    }

    #[test]
    fn payloads_are_read_in_their_externally_tagged_form() {
        let payload = json!({"TaskAssigned": {"agent_id": id(9), "at": at()}});
        let change = Change::parse(EntityType::Task, &payload).expect("a task event");
        assert_eq!(change.reference(), Some((EntityType::Agent, id(9))));
        assert!(Change::parse(EntityType::Ticket, &payload).is_err());
        assert_eq!(EntityType::of_aggregate("Spec"), Some(EntityType::Spec));
        assert_eq!(EntityType::of_aggregate("BillingAccount"), None);
    }

    #[test]
    fn titles_come_from_creations_renames_and_title_updates_only() {
        let renamed = Change::Project(ProjectEvent::ProjectRenamed { name: "New".into() });
        assert_eq!(renamed.new_title(), Some("New"));
        let untitled_update = Change::Ticket(TicketEvent::TicketUpdated {
            title: None,
            description: Some("d".into()),
            priority: None,
            phase: None,
        });
        assert_eq!(untitled_update.new_title(), None);
        assert_eq!(
            Change::Ticket(TicketEvent::TicketUnblocked).new_title(),
            None
        );
    }

    fn cursor(t: i64, p: i64) -> Cursor {
        Cursor {
            transaction_id: t,
            global_position: p,
        }
    }

    #[test]
    fn paging_parameters_are_parsed_and_checked() {
        assert_eq!(Page::parse(None, None), Ok(Page::Newest));
        assert_eq!(Page::parse(Some(""), Some("")), Ok(Page::Newest));
        assert_eq!(
            Page::parse(Some("7-3"), None),
            Ok(Page::Before(cursor(7, 3)))
        );
        assert_eq!(
            Page::parse(None, Some("0-0")),
            Ok(Page::After(cursor(0, 0)))
        );
        assert_eq!(
            Page::parse(Some("1-1"), Some("2-2")),
            Err(PageError::BothDirections)
        );
        let bad = Page::parse(Some("x"), None).expect_err("a bad cursor");
        assert_eq!(bad.field(), "before");
        let bad = Page::parse(None, Some("1-")).expect_err("a bad cursor");
        assert_eq!(bad.field(), "after");
        assert_eq!(limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(limit(Some(MAX_LIMIT)), Ok(MAX_LIMIT));
        assert_eq!(limit(Some(0)), Err(PageError::Limit));
        assert_eq!(limit(Some(MAX_LIMIT + 1)), Err(PageError::Limit));
    }

    #[test]
    fn next_cursors_continue_exactly_where_a_page_ends() {
        let (newest, oldest) = (Some(cursor(9, 9)), Some(cursor(5, 5)));
        // The newest page: older entries beyond it only when the extra row came back.
        assert_eq!(
            next_cursors(Page::Newest, newest, oldest, true),
            (oldest, cursor(9, 9))
        );
        assert_eq!(
            next_cursors(Page::Newest, newest, oldest, false),
            (None, cursor(9, 9))
        );
        // An empty timeline: poll from the start.
        assert_eq!(
            next_cursors(Page::Newest, None, None, false),
            (None, Cursor::default())
        );
        // Nothing older than the cursor: newer ones start right at it.
        assert_eq!(
            next_cursors(Page::Before(cursor(3, 3)), None, None, false),
            (None, cursor(3, 3))
        );
        // Nothing newer yet: poll with the same cursor.
        assert_eq!(
            next_cursors(Page::After(cursor(9, 9)), None, None, false),
            (Some(cursor(9, 9)), cursor(9, 9))
        );
        assert_eq!(
            next_cursors(Page::After(Cursor::default()), newest, oldest, true),
            (oldest, cursor(9, 9))
        );
    }
}
