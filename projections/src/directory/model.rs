//! What the directory keeps of each entity, and how one event changes it.

use chrono::{DateTime, SubsecRound, Utc};
use omoi_domain::kind::AggregateKind;
use omoi_domain::organization::OrganizationEvent;
use omoi_domain::project::ProjectEvent;
use omoi_domain::spec::SpecEvent;
use omoi_domain::task::TaskEvent;
use omoi_domain::ticket::TicketEvent;
use omoi_store::StoredEvent;
use uuid::Uuid;

use crate::codec::{entity_id, payload, to_text};
use crate::ProjectionError;

/// The status of an organization or project that has not been archived.
pub const ACTIVE: &str = "active";
/// The status of an archived organization or project.
pub const ARCHIVED: &str = "archived";

/// One listed entity. Enums are kept in their wire spelling, so rows filter in SQL by
/// what the API says.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub kind: AggregateKind,
    pub id: Uuid,
    pub organization_id: Uuid,
    /// A project's own id for a project; `None` for an organization.
    pub project_id: Option<Uuid>,
    /// The spec of a ticket made from a plan; the ticket of a task.
    pub parent_id: Option<Uuid>,
    /// An organization's or project's name; the others' title.
    pub title: String,
    pub description: String,
    /// `active`/`archived` (organizations, projects), the spec's phase, the ticket's or
    /// the task's status.
    pub status: String,
    /// Tickets and tasks.
    pub priority: Option<String>,
    /// The workflow phase of a ticket or task (`PHASE_IMPLEMENTATION`).
    pub phase: Option<String>,
    pub task_type: Option<String>,
    /// The agent a task was last assigned to.
    pub agent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The creating event's place in the global order: the lists' order and cursor.
    pub created_transaction_id: i64,
    pub created_position: i64,
    pub last_position: i64,
}

/// An event the directory follows, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum DirectoryEvent {
    Organization(OrganizationEvent),
    Project(ProjectEvent),
    Spec(SpecEvent),
    Ticket(TicketEvent),
    Task(TaskEvent),
}

/// A decoded event with what every transition needs of its envelope.
#[derive(Debug, Clone)]
pub struct Located {
    pub id: Uuid,
    pub event: DirectoryEvent,
    pub occurred_at: DateTime<Utc>,
    pub transaction_id: i64,
    pub position: i64,
}

impl Located {
    /// `None` for the aggregates the directory does not list (agents, billing) and for
    /// events that change nothing it shows.
    pub fn decode(stored: &StoredEvent) -> Result<Option<Self>, ProjectionError> {
        let Some(kind) = AggregateKind::of_type(&stored.aggregate_type) else {
            return Ok(None);
        };
        let event = match kind {
            AggregateKind::Organization => match payload::<OrganizationEvent>(stored)? {
                e @ (OrganizationEvent::OrganizationCreated { .. }
                | OrganizationEvent::OrganizationRenamed { .. }
                | OrganizationEvent::OrganizationArchived { .. }) => {
                    DirectoryEvent::Organization(e)
                }
                // Members are the auth tables' business.
                _ => return Ok(None),
            },
            AggregateKind::Project => DirectoryEvent::Project(payload(stored)?),
            AggregateKind::Spec => DirectoryEvent::Spec(payload(stored)?),
            AggregateKind::Ticket => DirectoryEvent::Ticket(payload(stored)?),
            AggregateKind::Task => DirectoryEvent::Task(payload(stored)?),
            AggregateKind::Agent | AggregateKind::BillingAccount => return Ok(None),
        };
        // Progress reports are the busiest events and change nothing listed.
        if matches!(
            event,
            DirectoryEvent::Task(TaskEvent::TaskProgressReported { .. })
        ) {
            return Ok(None);
        }
        Ok(Some(Self {
            id: entity_id(stored)?,
            event,
            // PostgreSQL keeps microseconds: a rebuild compares equal to the live rows.
            occurred_at: stored
                .occurred_at()
                .ok_or_else(|| ProjectionError::payload(stored, "metadata: no occurred_at"))?
                .trunc_subsecs(6),
            transaction_id: stored.transaction_id,
            position: stored.global_position,
        }))
    }

    /// The entry after this event: a new one for a creation, the changed `entry`
    /// otherwise (`None` when a stream's first event is not its creation, which a valid
    /// log never holds).
    pub fn apply(&self, entry: Option<Entry>) -> Result<Option<Entry>, ProjectionError> {
        if let Some(created) = self.created()? {
            return Ok(Some(created));
        }
        let Some(mut entry) = entry else {
            return Ok(None);
        };
        self.change(&mut entry)?;
        entry.updated_at = self.occurred_at;
        entry.last_position = self.position;
        Ok(Some(entry))
    }

    /// The new entry, when the event is a creation.
    fn created(&self) -> Result<Option<Entry>, ProjectionError> {
        let new = |kind, organization_id, title: &str, description: &str, status: String| Entry {
            kind,
            id: self.id,
            organization_id,
            project_id: None,
            parent_id: None,
            title: title.to_string(),
            description: description.to_string(),
            status,
            priority: None,
            phase: None,
            task_type: None,
            agent_id: None,
            created_at: self.occurred_at,
            updated_at: self.occurred_at,
            created_transaction_id: self.transaction_id,
            created_position: self.position,
            last_position: self.position,
        };
        Ok(Some(match &self.event {
            DirectoryEvent::Organization(OrganizationEvent::OrganizationCreated {
                organization_id,
                name,
                ..
            }) => new(
                AggregateKind::Organization,
                *organization_id,
                name,
                "",
                ACTIVE.into(),
            ),
            DirectoryEvent::Project(ProjectEvent::ProjectCreated {
                project_id,
                organization_id,
                name,
                description,
                ..
            }) => Entry {
                project_id: Some(*project_id),
                ..new(
                    AggregateKind::Project,
                    *organization_id,
                    name,
                    description,
                    ACTIVE.into(),
                )
            },
            DirectoryEvent::Spec(
                event @ SpecEvent::SpecCreated {
                    organization_id,
                    project_id,
                    title,
                    description,
                    ..
                },
            ) => Entry {
                project_id: Some(*project_id),
                ..new(
                    AggregateKind::Spec,
                    *organization_id,
                    title,
                    description,
                    spec_phase(event)?.unwrap_or_default(),
                )
            },
            DirectoryEvent::Ticket(
                event @ TicketEvent::TicketCreated {
                    organization_id,
                    project_id,
                    spec_id,
                    title,
                    description,
                    priority,
                    phase,
                    ..
                },
            ) => Entry {
                project_id: Some(*project_id),
                parent_id: *spec_id,
                priority: Some(to_text(priority)?),
                phase: Some(to_text(phase)?),
                ..new(
                    AggregateKind::Ticket,
                    *organization_id,
                    title,
                    description,
                    ticket_status(event)?.unwrap_or_default(),
                )
            },
            DirectoryEvent::Task(
                event @ TaskEvent::TaskCreated {
                    organization_id,
                    project_id,
                    ticket_id,
                    title,
                    description,
                    task_type,
                    phase,
                    priority,
                    ..
                },
            ) => Entry {
                project_id: Some(*project_id),
                parent_id: Some(*ticket_id),
                priority: Some(to_text(priority)?),
                phase: Some(to_text(phase)?),
                task_type: Some(task_type.clone()),
                ..new(
                    AggregateKind::Task,
                    *organization_id,
                    title,
                    description,
                    task_status(event)?.unwrap_or_default(),
                )
            },
            _ => return Ok(None),
        }))
    }

    fn change(&self, entry: &mut Entry) -> Result<(), ProjectionError> {
        match &self.event {
            DirectoryEvent::Organization(OrganizationEvent::OrganizationRenamed { name })
            | DirectoryEvent::Project(ProjectEvent::ProjectRenamed { name }) => {
                entry.title = name.clone();
            }
            DirectoryEvent::Organization(OrganizationEvent::OrganizationArchived { .. })
            | DirectoryEvent::Project(ProjectEvent::ProjectArchived { .. }) => {
                entry.status = ARCHIVED.into();
            }
            DirectoryEvent::Organization(_) | DirectoryEvent::Project(_) => {}
            DirectoryEvent::Spec(event) => {
                if let Some(phase) = spec_phase(event)? {
                    entry.status = phase;
                }
            }
            DirectoryEvent::Ticket(event) => {
                if let TicketEvent::TicketUpdated {
                    title,
                    description,
                    priority,
                    phase,
                } = event
                {
                    if let Some(title) = title {
                        entry.title = title.clone();
                    }
                    if let Some(description) = description {
                        entry.description = description.clone();
                    }
                    if let Some(priority) = priority {
                        entry.priority = Some(to_text(priority)?);
                    }
                    if let Some(phase) = phase {
                        entry.phase = Some(to_text(phase)?);
                    }
                }
                if let Some(status) = ticket_status(event)? {
                    entry.status = status;
                }
            }
            DirectoryEvent::Task(event) => {
                match event {
                    TaskEvent::TaskAssigned { agent_id, .. } => entry.agent_id = Some(*agent_id),
                    TaskEvent::TaskPriorityChanged { priority } => {
                        entry.priority = Some(to_text(priority)?);
                    }
                    _ => {}
                }
                if let Some(status) = task_status(event)? {
                    entry.status = status;
                }
            }
        }
        Ok(())
    }
}

fn spec_phase(event: &SpecEvent) -> Result<Option<String>, ProjectionError> {
    event.phase_after().map(|p| to_text(&p)).transpose()
}

fn ticket_status(event: &TicketEvent) -> Result<Option<String>, ProjectionError> {
    event.status_after().map(|s| to_text(&s)).transpose()
}

fn task_status(event: &TaskEvent) -> Result<Option<String>, ProjectionError> {
    event.status_after().map(|s| to_text(&s)).transpose()
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use omoi_domain::common::Priority;
    use omoi_domain::task::TaskEvent;
    use omoi_domain::ticket::{TicketEvent, TicketStatus};
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::testing::{at, created_task, created_ticket, Log};

    /// Every event of `log` folded into the directory, by id.
    fn fold(log: &mut Log) -> std::collections::HashMap<Uuid, Entry> {
        let mut entries = std::collections::HashMap::new();
        for event in &mut log.events {
            event.metadata = json!({"organization_id": Uuid::from_u128(1),
                                    "occurred_at": at().to_rfc3339()})
            .into();
            let Some(located) = Located::decode(event).expect("decodes") else {
                continue;
            };
            let before = entries.remove(&located.id);
            if let Some(after) = located.apply(before).expect("applies") {
                entries.insert(located.id, after);
            }
        }
        entries
    }

    #[test]
    fn tickets_and_tasks_are_listed_with_the_domains_status() {
        let (org, project) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let (ticket, task, agent) = (Uuid::from_u128(3), Uuid::from_u128(4), Uuid::from_u128(5));
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.ticket(
            ticket,
            TicketEvent::TicketUpdated {
                title: Some("Sign-in".into()),
                description: None,
                priority: None,
                phase: None,
            },
        );
        log.ticket(
            ticket,
            TicketEvent::TicketRegressed {
                feedback: "broken".into(),
            },
        );
        log.task(task, created_task(org, project, ticket, task, vec![]));
        log.task(
            task,
            TaskEvent::TaskAssigned {
                agent_id: agent,
                at: Utc::now(),
            },
        );
        log.task(
            task,
            TaskEvent::TaskPriorityChanged {
                priority: Priority::Critical,
            },
        );
        log.task(
            task,
            TaskEvent::TaskProgressReported {
                message: "halfway".into(),
            },
        );
        let entries = fold(&mut log);

        let listed = &entries[&ticket];
        assert_eq!(listed.kind, AggregateKind::Ticket);
        assert_eq!(listed.title, "Sign-in");
        assert_eq!(listed.status, TicketStatus::Building.as_str());
        assert_eq!(listed.priority.as_deref(), Some("HIGH"));
        assert_eq!(listed.created_position, 1);
        assert_eq!(listed.last_position, 3);

        let listed = &entries[&task];
        assert_eq!(listed.parent_id, Some(ticket));
        assert_eq!(listed.status, "assigned");
        assert_eq!(listed.agent_id, Some(agent));
        assert_eq!(listed.task_type.as_deref(), Some("implement"));
        // A priority the Guardian overrode is the one listed.
        assert_eq!(listed.priority.as_deref(), Some("CRITICAL"));
        // The progress report changed nothing listed: not even the last position.
        assert_eq!(listed.last_position, 6);
    }

    #[test]
    fn an_event_before_its_creation_lists_nothing() {
        let task = Uuid::from_u128(9);
        let mut log = Log::default();
        log.task(task, TaskEvent::TaskStarted { at: at() });
        assert!(fold(&mut log).is_empty());
    }
}
