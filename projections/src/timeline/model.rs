//! The pure timeline: which aggregates it shows ([`EntityType`]), their events
//! ([`Change`]) and which of them are entries, and the timeline as one process folds it
//! from the log ([`TimelineModel`]), entry for entry what a read of the read model returns.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use omoi_domain::agent::AgentEvent;
use omoi_domain::kind::AggregateKind;
use omoi_domain::organization::OrganizationEvent;
use omoi_domain::project::ProjectEvent;
use omoi_domain::spec::SpecEvent;
use omoi_domain::task::TaskEvent;
use omoi_domain::ticket::TicketEvent;
use omoi_store::json::RawJson;
use omoi_store::{Cursor, StoredEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::summary::{summary, Names};
use crate::codec::{entity_id, EventMeta};
use crate::ProjectionError;

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

    /// How a summary names its kind: as its aggregate is named (`Ticket`).
    pub(super) fn noun(self) -> &'static str {
        self.aggregate_type()
    }

    /// Every entity type, in the order of [`EntityType`].
    pub(super) const ALL: [Self; 6] = [
        Self::Ticket,
        Self::Task,
        Self::Spec,
        Self::Agent,
        Self::Project,
        Self::Organization,
    ];

    /// The `aggregate_type` of its events in the log.
    pub(super) fn aggregate_type(self) -> &'static str {
        self.kind().type_name()
    }
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
    pub fn parse(kind: EntityType, payload: &RawJson) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            EntityType::Ticket => Self::Ticket(payload.decode()?),
            EntityType::Task => Self::Task(payload.decode()?),
            EntityType::Spec => Self::Spec(payload.decode()?),
            EntityType::Agent => Self::Agent(payload.decode()?),
            EntityType::Project => Self::Project(payload.decode()?),
            EntityType::Organization => Self::Organization(payload.decode()?),
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

    /// The `event_type`s of the events [`Self::is_entry`] refuses: what a query of the log
    /// for entries passes over.
    pub(super) const NOT_ENTRIES: &'static [&'static str] = &["TaskProgressReported"];

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
            Self::Task(TaskEvent::TaskAssigned { agent_id, .. })
            | Self::Task(TaskEvent::TaskSteered { agent_id, .. })
            | Self::Task(TaskEvent::SteeringDelivered { agent_id, .. })
            | Self::Task(TaskEvent::TaskUnassigned { agent_id, .. })
            | Self::Task(TaskEvent::TaskAssignmentWithdrawn { agent_id, .. }) => {
                Some((EntityType::Agent, *agent_id))
            }
            Self::Task(TaskEvent::TaskDependencyAdded { depends_on })
            | Self::Task(TaskEvent::TaskDependencyRemoved { depends_on }) => {
                Some((EntityType::Task, *depends_on))
            }
            Self::Task(TaskEvent::TaskDiscovered { discovery }) => {
                Some((EntityType::Task, discovery.parent_task_id))
            }
            Self::Task(TaskEvent::TaskDiscoveryReported {
                discovered_task_id, ..
            })
            | Self::Task(TaskEvent::TaskDiscoveryResolved { discovered_task_id }) => {
                Some((EntityType::Task, *discovered_task_id))
            }
            Self::Task(TaskEvent::DuplicateSuspected { duplicate_of, .. }) => {
                Some((EntityType::Task, *duplicate_of))
            }
            Self::Task(TaskEvent::TaskValidates { target }) => {
                Some((EntityType::Task, target.task_id))
            }
            Self::Task(TaskEvent::TaskValidationPassed {
                validation_task_id, ..
            })
            | Self::Task(TaskEvent::TaskValidationRejected {
                validation_task_id, ..
            })
            | Self::Task(TaskEvent::TaskValidationAbandoned { validation_task_id }) => {
                Some((EntityType::Task, *validation_task_id))
            }
            _ => None,
        }
    }
}

pub(super) type TitleKey = (EntityType, Uuid);

/// An event of an entity the timeline shows, decoded.
pub(super) struct Decoded<'a> {
    pub event: &'a StoredEvent,
    pub kind: EntityType,
    pub id: Uuid,
    pub change: Change,
}

impl<'a> Decoded<'a> {
    /// The event decoded; `None` for an event of an aggregate the timeline does not show.
    pub fn of(event: &'a StoredEvent) -> Result<Option<Self>, ProjectionError> {
        let Some(kind) = EntityType::of_aggregate(&event.aggregate_type) else {
            return Ok(None);
        };
        let change =
            Change::parse(kind, &event.payload).map_err(|e| ProjectionError::payload(event, e))?;
        Ok(Some(Self {
            event,
            kind,
            id: entity_id(event)?,
            change,
        }))
    }

    /// Its entity, as titles are looked up.
    pub fn title_key(&self) -> TitleKey {
        (self.kind, self.id)
    }

    /// The entry it becomes, if it is one, with `title_of` the titles as the event saw
    /// them (set before it).
    pub fn entry<'t>(
        &self,
        title_of: impl Fn(TitleKey) -> Option<&'t str>,
    ) -> Result<Option<TimelineEntry>, ProjectionError> {
        if !self.change.is_entry() {
            return Ok(None);
        }
        let (event, meta) = (self.event, EventMeta::of(self.event)?);
        let names = Names {
            id: self.id,
            title: title_of(self.title_key()),
            other: self.change.reference().and_then(&title_of),
        };
        Ok(Some(TimelineEntry {
            cursor: event.cursor().to_string(),
            transaction_id: event.transaction_id,
            global_position: event.global_position,
            organization_id: meta.organization_id,
            project_id: meta.project_id,
            entity_type: self.kind.as_str().to_string(),
            entity_id: self.id,
            event_type: event.event_type.clone(),
            actor: meta.actor,
            summary: summary(&self.change, &names),
            // As the API has always served it: `timestamptz` keeps microseconds.
            occurred_at: meta.occurred_at.trunc_subsecs(6),
        }))
    }
}

/// The timeline as one process folds it from the log (the live `timeline` stream): the
/// titles every entry's summary names, and the entry each event becomes — the same entry
/// a read of the `timeline` read model returns for it.
#[derive(Debug, Default)]
pub struct TimelineModel {
    titles: HashMap<TitleKey, String>,
}

impl TimelineModel {
    /// Applies one event: the entry it adds to the timeline, if any.
    pub fn apply(&mut self, event: &StoredEvent) -> Result<Option<TimelineEntry>, ProjectionError> {
        let Some(decoded) = Decoded::of(event)? else {
            return Ok(None);
        };
        let entry = decoded.entry(|key| self.titles.get(&key).map(String::as_str))?;
        if let Some(text) = decoded.change.new_title() {
            self.titles.insert(decoded.title_key(), text.to_string());
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

#[cfg(test)]
pub(super) mod tests {
    use chrono::TimeZone;
    use omoi_domain::access::Principal;
    use serde_json::json;

    use super::*;

    pub(in crate::timeline) fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5)
            .single()
            .expect("a valid time")
    }

    pub(in crate::timeline) fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
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

    /// The SQL list of non-entries is the Rust rule: a read's page holds exactly the
    /// events `is_entry` takes.
    #[test]
    fn the_event_types_sql_passes_over_are_the_ones_that_are_not_entries() {
        use cqrs_es::DomainEvent;
        let progress = TaskEvent::TaskProgressReported {
            message: "50 %".into(),
        };
        assert!(!Change::Task(progress.clone()).is_entry());
        assert_eq!(Change::NOT_ENTRIES, [progress.event_type().as_str()]);
        for entry in [
            TaskEvent::TaskStarted { at: at() },
            TaskEvent::TaskAssigned {
                agent_id: id(1),
                at: at(),
            },
        ] {
            assert!(Change::Task(entry.clone()).is_entry());
            assert!(!Change::NOT_ENTRIES.contains(&entry.event_type().as_str()));
        }
        let (ticket, spec) = (
            TicketEvent::TicketUnblocked.event_type(),
            SpecEvent::SpecArchived { at: at() }.event_type(),
        );
        assert!(!Change::NOT_ENTRIES.contains(&ticket.as_str()));
        assert!(!Change::NOT_ENTRIES.contains(&spec.as_str()));
    }

    #[test]
    fn payloads_are_read_in_their_externally_tagged_form() {
        let payload = json!({"TaskAssigned": {"agent_id": id(9), "at": at()}}).into();
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
}
