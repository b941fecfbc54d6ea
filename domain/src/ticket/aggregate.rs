use std::fmt;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{BlockReason, TicketCommand, TicketError, TicketEvent};
use crate::common::{
    optional_text, required_text, Phase, Priority, Scope, Scoped, MAX_TEXT_CHARS, MAX_TITLE_CHARS,
};

/// Where a ticket stands on the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TicketStatus {
    #[default]
    Backlog,
    Analyzing,
    Building,
    BuildingDone,
    Testing,
    Done,
}

impl TicketStatus {
    pub const ALL: [TicketStatus; 6] = [
        Self::Backlog,
        Self::Analyzing,
        Self::Building,
        Self::BuildingDone,
        Self::Testing,
        Self::Done,
    ];

    /// Its place in the walk `backlog → … → done` (the declaration order).
    pub fn rank(self) -> usize {
        self as usize
    }

    /// The one status a plain transition may reach from this one.
    pub fn next(self) -> Option<TicketStatus> {
        use TicketStatus::*;
        match self {
            Backlog => Some(Analyzing),
            Analyzing => Some(Building),
            Building => Some(BuildingDone),
            BuildingDone => Some(Testing),
            Testing => Some(Done),
            Done => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        use TicketStatus::*;
        match self {
            Backlog => "backlog",
            Analyzing => "analyzing",
            Building => "building",
            BuildingDone => "building-done",
            Testing => "testing",
            Done => "done",
        }
    }
}

impl fmt::Display for TicketStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The blocked overlay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Block {
    pub reason: BlockReason,
    pub note: Option<String>,
    pub blocked_at: DateTime<Utc>,
}

/// One trip from testing back to building.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Regression {
    pub validation_feedback: String,
}

/// A ticket's current state: the fold of its events.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct Ticket {
    pub id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub spec_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub priority: Priority,
    pub phase: Phase,
    pub status: TicketStatus,
    pub blocked: Option<Block>,
    pub regressions: Vec<Regression>,
    /// Its key in the spec's plan (`TKT-001`), when a plan made it.
    pub plan_key: Option<String>,
}

impl Ticket {
    fn exists(&self) -> bool {
        self.id.is_some()
    }

    fn ensure_open(&self) -> Result<(), TicketError> {
        if !self.exists() {
            return Err(TicketError::NotFound);
        }
        if self.status == TicketStatus::Done {
            return Err(TicketError::Done);
        }
        Ok(())
    }

    fn decide(&self, command: TicketCommand) -> Result<Vec<TicketEvent>, TicketError> {
        match command {
            TicketCommand::CreateTicket {
                ticket_id,
                organization_id,
                project_id,
                spec_id,
                title,
                description,
                priority,
                phase,
                plan_key,
            } => {
                if self.exists() {
                    return Err(TicketError::AlreadyExists);
                }
                let planned = plan_key.map(|key| TicketEvent::TicketPlanned { key });
                let created = TicketEvent::TicketCreated {
                    ticket_id,
                    organization_id,
                    project_id,
                    spec_id,
                    title: required_text(&title, MAX_TITLE_CHARS).map_err(TicketError::title)?,
                    description: optional_text(&description, MAX_TEXT_CHARS)
                        .map_err(|p| TicketError::text("description", p))?,
                    priority,
                    phase,
                };
                Ok(std::iter::once(created).chain(planned).collect())
            }
            TicketCommand::UpdateTicket {
                title,
                description,
                priority,
                phase,
            } => self.update(title, description, priority, phase),
            TicketCommand::TransitionTicket { to, note } => self.transition(to, note),
            TicketCommand::AdvanceTicket { to, note } => self.advance(to, note),
            TicketCommand::RegressTicket { feedback } => {
                self.ensure_open()?;
                if self.status != TicketStatus::Testing {
                    return Err(TicketError::RegressOnlyFromTesting(self.status));
                }
                let feedback = required_text(&feedback, MAX_TEXT_CHARS)
                    .map_err(|p| TicketError::text("feedback", p))?;
                // A move back clears the block as every other move does.
                let unblocked = self
                    .blocked
                    .is_some()
                    .then_some(TicketEvent::TicketUnblocked);
                Ok(unblocked
                    .into_iter()
                    .chain([TicketEvent::TicketRegressed { feedback }])
                    .collect())
            }
            TicketCommand::BlockTicket { reason, note, at } => {
                self.ensure_open()?;
                if self.blocked.is_some() {
                    return Err(TicketError::AlreadyBlocked);
                }
                Ok(vec![TicketEvent::TicketBlocked {
                    reason,
                    note: checked_note(note)?,
                    blocked_at: at,
                }])
            }
            TicketCommand::UnblockTicket => {
                self.ensure_open()?;
                if self.blocked.is_none() {
                    return Err(TicketError::NotBlocked);
                }
                Ok(vec![TicketEvent::TicketUnblocked])
            }
        }
    }

    fn update(
        &self,
        title: Option<String>,
        description: Option<String>,
        priority: Option<Priority>,
        phase: Option<Phase>,
    ) -> Result<Vec<TicketEvent>, TicketError> {
        self.ensure_open()?;
        let title = title
            .map(|t| required_text(&t, MAX_TITLE_CHARS).map_err(TicketError::title))
            .transpose()?
            .filter(|t| *t != self.title);
        let description = description
            .map(|d| {
                optional_text(&d, MAX_TEXT_CHARS).map_err(|p| TicketError::text("description", p))
            })
            .transpose()?
            .filter(|d| *d != self.description);
        let priority = priority.filter(|p| *p != self.priority);
        let phase = phase.filter(|p| *p != self.phase);
        if let Some(to) = phase {
            if !self.phase.can_move_to(to) {
                return Err(TicketError::IllegalPhaseChange {
                    from: self.phase,
                    to,
                });
            }
        }
        // Setting what is already set succeeds and records nothing: a retried or
        // repeated update is harmless.
        if title.is_none() && description.is_none() && priority.is_none() && phase.is_none() {
            return Ok(vec![]);
        }
        Ok(vec![TicketEvent::TicketUpdated {
            title,
            description,
            priority,
            phase,
        }])
    }

    fn transition(
        &self,
        to: TicketStatus,
        note: Option<String>,
    ) -> Result<Vec<TicketEvent>, TicketError> {
        self.ensure_open()?;
        let from = self.status;
        if from == to {
            return Err(TicketError::AlreadyInStatus(to));
        }
        if from == TicketStatus::Testing && to == TicketStatus::Building {
            return Err(TicketError::UseRegressToReturnToBuilding);
        }
        if from.next() != Some(to) {
            return Err(TicketError::IllegalTransition { from, to });
        }
        let mut events = Vec::with_capacity(2);
        if self.blocked.is_some() {
            if to == TicketStatus::Done {
                return Err(TicketError::BlockedCannotBeDone);
            }
            events.push(TicketEvent::TicketUnblocked);
        }
        events.push(TicketEvent::TicketStatusChanged {
            from,
            to,
            note: checked_note(note)?,
        });
        Ok(events)
    }
}

impl Ticket {
    /// The steps toward `to` that [`Ticket::transition`] allows, each decided on the ticket
    /// as the steps before left it; the first refusal ends the walk (and is the answer
    /// when it is the first step).
    fn advance(
        &self,
        to: TicketStatus,
        note: Option<String>,
    ) -> Result<Vec<TicketEvent>, TicketError> {
        if to.rank() <= self.status.rank() {
            return Err(match to == self.status {
                true => TicketError::AlreadyInStatus(to),
                false => TicketError::IllegalTransition {
                    from: self.status,
                    to,
                },
            });
        }
        let mut walked = self.clone();
        let mut events = Vec::new();
        while walked.status != to {
            let Some(next) = walked.status.next() else {
                break;
            };
            match walked.transition(next, note.clone()) {
                Ok(step) => {
                    for event in &step {
                        walked.apply(event.clone());
                    }
                    events.extend(step);
                }
                Err(refusal) if events.is_empty() => return Err(refusal),
                Err(_) => break,
            }
        }
        if events.is_empty() {
            return Err(TicketError::IllegalTransition {
                from: self.status,
                to,
            });
        }
        Ok(events)
    }
}

fn checked_note(note: Option<String>) -> Result<Option<String>, TicketError> {
    note.map(|n| optional_text(&n, MAX_TEXT_CHARS).map_err(|p| TicketError::text("note", p)))
        .transpose()
}

impl Aggregate for Ticket {
    const TYPE: &'static str = "Ticket";
    type Command = TicketCommand;
    type Event = TicketEvent;
    type Error = TicketError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let status_after = event.status_after().unwrap_or(self.status);
        match event {
            TicketEvent::TicketCreated {
                ticket_id,
                organization_id,
                project_id,
                spec_id,
                title,
                description,
                priority,
                phase,
            } => {
                *self = Ticket {
                    id: Some(ticket_id),
                    organization_id: Some(organization_id),
                    project_id: Some(project_id),
                    spec_id,
                    title,
                    description,
                    priority,
                    phase,
                    ..Ticket::default()
                }
            }
            TicketEvent::TicketUpdated {
                title,
                description,
                priority,
                phase,
            } => {
                if let Some(title) = title {
                    self.title = title;
                }
                if let Some(description) = description {
                    self.description = description;
                }
                if let Some(priority) = priority {
                    self.priority = priority;
                }
                if let Some(phase) = phase {
                    self.phase = phase;
                }
            }
            TicketEvent::TicketStatusChanged { to, .. } => self.status = to,
            TicketEvent::TicketRegressed { feedback } => {
                self.status = status_after;
                self.regressions.push(Regression {
                    validation_feedback: feedback,
                });
            }
            TicketEvent::TicketBlocked {
                reason,
                note,
                blocked_at,
            } => {
                self.blocked = Some(Block {
                    reason,
                    note,
                    blocked_at,
                })
            }
            TicketEvent::TicketUnblocked => self.blocked = None,
            TicketEvent::TicketPlanned { key } => self.plan_key = Some(key),
        }
    }
}

impl Scoped for Ticket {
    fn scope(&self) -> Option<Scope> {
        Some(Scope {
            organization_id: self.organization_id?,
            project_id: self.project_id,
        })
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
