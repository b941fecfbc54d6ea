//! The pure board: cards and the tasks counted on them, and the transition one event
//! makes ([`BoardModel::apply`]) — shared by the SQL projector, time travel and the live
//! stream.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SubsecRound, Utc};
use omoi_domain::common::{Phase, Priority};
use omoi_domain::task::{TaskEvent, TaskStatus};
use omoi_domain::ticket::{BlockReason, TicketEvent, TicketStatus};
use omoi_store::StoredEvent;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::codec::WorkEvent;
use crate::delta::Entries;
use crate::ProjectionError;

/// The blocked overlay of a card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlockedOverlay {
    pub reason: BlockReason,
    pub note: Option<String>,
    pub blocked_at: DateTime<Utc>,
}

/// How many of a ticket's tasks stand in each task status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TaskProgress {
    pub total: u32,
    pub completed: u32,
    /// Task status (`pending`, `running`, …) → number of tasks; statuses with none are left
    /// out.
    pub by_status: BTreeMap<String, u32>,
}

impl TaskProgress {
    fn add(&mut self, status: TaskStatus) {
        self.total += 1;
        if status == TaskStatus::Completed {
            self.completed += 1;
        }
        *self
            .by_status
            .entry(status.as_str().to_string())
            .or_default() += 1;
    }

    fn remove(&mut self, status: TaskStatus) {
        self.total = self.total.saturating_sub(1);
        if status == TaskStatus::Completed {
            self.completed = self.completed.saturating_sub(1);
        }
        let key = status.as_str();
        if let Some(count) = self.by_status.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_status.remove(key);
            }
        }
    }
}

/// One ticket on the board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Card {
    pub ticket_id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub title: String,
    pub priority: Priority,
    pub phase: Phase,
    /// The ticket's status, which is the column the card stands in.
    pub status: TicketStatus,
    /// Set while the ticket is blocked.
    pub blocked: Option<BlockedOverlay>,
    /// Trips from testing back to building.
    pub regressions: u32,
    pub tasks: TaskProgress,
    /// Global position of the last event that changed the card.
    pub last_position: i64,
}

/// What the board remembers of a task: whose card it counts on, and as what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCard {
    pub task_id: Uuid,
    pub ticket_id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Uuid,
    pub status: TaskStatus,
    pub last_position: i64,
}

/// The rows one event changed, to be written back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touched {
    pub card: Option<Uuid>,
    pub task: Option<Uuid>,
}

/// The cards and tasks some events touched, gathered for a [`BoardDelta`].
#[derive(Debug, Clone, Default)]
pub struct BoardChanges {
    cards: BTreeSet<Uuid>,
    tasks: BTreeSet<Uuid>,
}

impl BoardChanges {
    pub fn add(&mut self, touched: Touched) {
        self.cards.extend(touched.card);
        self.tasks.extend(touched.task);
    }
}

/// The cards and tasks some events changed, as they stand after them
/// ([`crate::delta`]): a snapshot's delta of the board.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BoardDelta {
    cards: Entries<Card>,
    tasks: Entries<TaskCard>,
}

/// The board of any set of tickets: the whole project (time travel) or only the rows one
/// event touches (the SQL projector). Serialized whole, it is a project's board snapshot
/// ([`crate::snapshots`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BoardModel {
    pub(super) cards: BTreeMap<Uuid, Card>,
    pub(super) tasks: BTreeMap<Uuid, TaskCard>,
}

impl BoardModel {
    /// Applies one event of the log; returns the rows it changed.
    pub fn apply(&mut self, stored: &StoredEvent) -> Result<Touched, ProjectionError> {
        Ok(match WorkEvent::decode(stored)? {
            Some(work) => self.apply_work(work, stored.global_position),
            None => Touched::default(),
        })
    }

    /// Whether `work` can change the board at all (progress reports, failed attempts and
    /// dependency edits cannot), so the projector skips loading rows for the others.
    pub fn is_relevant(work: &WorkEvent) -> bool {
        match work {
            WorkEvent::Ticket { .. } => true,
            WorkEvent::Task { event, .. } => event.status_after().is_some(),
        }
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

    pub fn card(&self, ticket_id: Uuid) -> Option<&Card> {
        self.cards.get(&ticket_id)
    }

    pub fn task(&self, task_id: Uuid) -> Option<&TaskCard> {
        self.tasks.get(&task_id)
    }

    /// Every card, by ticket id.
    pub fn cards(&self) -> impl Iterator<Item = &Card> {
        self.cards.values()
    }

    /// Tickets and tasks held.
    pub fn size(&self) -> usize {
        self.cards.len() + self.tasks.len()
    }

    /// The cards and tasks `changes` names, as they stand.
    pub fn delta(&self, changes: &BoardChanges) -> BoardDelta {
        BoardDelta {
            cards: Entries::of(&self.cards, &changes.cards),
            tasks: Entries::of(&self.tasks, &changes.tasks),
        }
    }

    /// The board after the events `delta` was taken from, this being the board before them.
    pub fn apply_delta(&mut self, delta: BoardDelta) {
        delta.cards.apply_to(&mut self.cards);
        delta.tasks.apply_to(&mut self.tasks);
    }

    /// Every card, by ticket id.
    pub fn into_cards(self) -> Vec<Card> {
        self.cards.into_values().collect()
    }

    fn apply_ticket(&mut self, id: Uuid, event: TicketEvent, position: i64) -> Touched {
        if let TicketEvent::TicketCreated {
            organization_id,
            project_id,
            title,
            priority,
            phase,
            ..
        } = event
        {
            let card = Card {
                ticket_id: id,
                organization_id,
                project_id,
                title,
                priority,
                phase,
                status: TicketStatus::Backlog,
                blocked: None,
                regressions: 0,
                tasks: TaskProgress::default(),
                last_position: position,
            };
            self.cards.insert(id, card);
            return Touched {
                card: Some(id),
                task: None,
            };
        }
        // An event of a ticket the board never saw created has no card to change.
        let Some(card) = self.cards.get_mut(&id) else {
            return Touched::default();
        };
        update_card(card, event);
        card.last_position = position;
        Touched {
            card: Some(id),
            task: None,
        }
    }

    fn apply_task(&mut self, id: Uuid, event: TaskEvent, position: i64) -> Touched {
        if let TaskEvent::TaskCreated {
            ticket_id,
            organization_id,
            project_id,
            ..
        } = event
        {
            let task = TaskCard {
                task_id: id,
                ticket_id,
                organization_id,
                project_id,
                status: TaskStatus::Pending,
                last_position: position,
            };
            self.tasks.insert(id, task);
            let card = self.count_on_card(ticket_id, None, TaskStatus::Pending, position);
            return Touched {
                card,
                task: Some(id),
            };
        }
        let (Some(to), Some(task)) = (event.status_after(), self.tasks.get_mut(&id)) else {
            return Touched::default();
        };
        let from = std::mem::replace(&mut task.status, to);
        task.last_position = position;
        let ticket_id = task.ticket_id;
        let card = self.count_on_card(ticket_id, Some(from), to, position);
        Touched {
            card,
            task: Some(id),
        }
    }

    /// Moves one task of `ticket_id`'s card from status `from` (none for a new task) to
    /// `to`; returns the card when there is one.
    fn count_on_card(
        &mut self,
        ticket_id: Uuid,
        from: Option<TaskStatus>,
        to: TaskStatus,
        position: i64,
    ) -> Option<Uuid> {
        let card = self.cards.get_mut(&ticket_id)?;
        if let Some(from) = from {
            card.tasks.remove(from);
        }
        card.tasks.add(to);
        card.last_position = position;
        Some(ticket_id)
    }
}

/// The card after a ticket event other than its creation.
fn update_card(card: &mut Card, event: TicketEvent) {
    let event_status = event.status_after().unwrap_or(card.status);
    match event {
        TicketEvent::TicketUpdated {
            title,
            priority,
            phase,
            ..
        } => {
            if let Some(title) = title {
                card.title = title;
            }
            if let Some(priority) = priority {
                card.priority = priority;
            }
            if let Some(phase) = phase {
                card.phase = phase;
            }
        }
        TicketEvent::TicketStatusChanged { .. } => card.status = event_status,
        TicketEvent::TicketRegressed { .. } => {
            card.status = event_status;
            card.regressions += 1;
        }
        TicketEvent::TicketBlocked {
            reason,
            note,
            blocked_at,
        } => {
            // PostgreSQL keeps microseconds: truncating here makes a board rebuilt in
            // memory identical to the stored one.
            card.blocked = Some(BlockedOverlay {
                reason,
                note,
                blocked_at: blocked_at.trunc_subsecs(6),
            });
        }
        TicketEvent::TicketUnblocked => card.blocked = None,
        // Creation builds the card; it never reaches here. A plan's key is not on the card.
        TicketEvent::TicketCreated { .. } | TicketEvent::TicketPlanned { .. } => {}
    }
}

#[cfg(test)]
pub(super) mod tests {
    use omoi_domain::task::FailureReason;
    use serde_json::json;

    use super::*;
    use crate::testing::{at, created_task, created_ticket, Log};

    pub(in crate::board) fn moved(from: TicketStatus, to: TicketStatus) -> TicketEvent {
        TicketEvent::TicketStatusChanged {
            from,
            to,
            note: None,
        }
    }

    pub(in crate::board) fn fold(log: &Log) -> BoardModel {
        let mut model = BoardModel::default();
        for event in &log.events {
            model.apply(event).expect("a valid event");
        }
        model
    }

    #[test]
    fn a_ticket_is_created_moved_blocked_and_regressed() {
        let (org, project, ticket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.ticket(
            ticket,
            moved(TicketStatus::Backlog, TicketStatus::Analyzing),
        );
        log.ticket(
            ticket,
            TicketEvent::TicketBlocked {
                reason: BlockReason::WaitingOnClarification,
                note: Some("which provider?".into()),
                blocked_at: at(),
            },
        );
        let card = fold(&log).card(ticket).cloned().expect("a card");
        assert_eq!(card.status, TicketStatus::Analyzing);
        assert_eq!(card.organization_id, org);
        let blocked = card.blocked.expect("blocked");
        assert_eq!(blocked.blocked_at, at(), "whole seconds survive truncation");
        assert_eq!(blocked.reason, BlockReason::WaitingOnClarification);
        assert_eq!(blocked.note.as_deref(), Some("which provider?"));
        assert_eq!(card.last_position, 3);

        log.ticket(ticket, TicketEvent::TicketUnblocked);
        for (from, to) in [
            (TicketStatus::Analyzing, TicketStatus::Building),
            (TicketStatus::Building, TicketStatus::BuildingDone),
            (TicketStatus::BuildingDone, TicketStatus::Testing),
        ] {
            log.ticket(ticket, moved(from, to));
        }
        log.ticket(
            ticket,
            TicketEvent::TicketRegressed {
                feedback: "broken".into(),
            },
        );
        log.ticket(
            ticket,
            TicketEvent::TicketUpdated {
                title: Some("Login v2".into()),
                description: None,
                priority: Some(Priority::Critical),
                phase: None,
            },
        );
        let card = fold(&log).card(ticket).cloned().expect("a card");
        assert_eq!(card.status, TicketStatus::Building);
        assert_eq!(card.regressions, 1);
        assert!(card.blocked.is_none());
        assert_eq!(
            (card.title.as_str(), card.priority),
            ("Login v2", Priority::Critical)
        );
    }

    #[test]
    fn task_events_move_the_counts_of_their_tickets_card() {
        let (org, project, ticket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        log.task(a, created_task(org, project, ticket, a, vec![]));
        log.task(b, created_task(org, project, ticket, b, vec![a]));
        let card = fold(&log).card(ticket).cloned().expect("a card");
        assert_eq!(card.tasks.total, 2);
        assert_eq!(
            card.tasks.by_status,
            BTreeMap::from([("pending".to_string(), 2)])
        );

        let agent = Uuid::now_v7();
        log.task(
            a,
            TaskEvent::TaskAssigned {
                agent_id: agent,
                at: at(),
            },
        );
        log.task(a, TaskEvent::TaskStarted { at: at() });
        log.task(
            a,
            TaskEvent::TaskProgressReported {
                message: "half".into(),
            },
        );
        log.task(
            a,
            TaskEvent::TaskCompleted {
                result: json!({}),
                at: at(),
            },
        );
        log.task(
            b,
            TaskEvent::TaskCancelled {
                reason: None,
                at: at(),
            },
        );
        let model = fold(&log);
        let card = model.card(ticket).expect("a card");
        assert_eq!(card.tasks.total, 2);
        assert_eq!(card.tasks.completed, 1);
        assert_eq!(
            card.tasks.by_status,
            BTreeMap::from([("cancelled".to_string(), 1), ("completed".to_string(), 1)])
        );
        assert_eq!(model.task(a).map(|t| t.status), Some(TaskStatus::Completed));
        assert_eq!(
            card.last_position, 8,
            "the cancellation changed the card last"
        );
    }

    #[test]
    fn failures_count_only_by_their_outcome() {
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
        log.task(
            task,
            TaskEvent::TaskFailed {
                error: "boom".into(),
                attempt: 1,
                at: at(),
            },
        );
        let touched = {
            let mut model = fold(&log);
            let event = log.task(
                task,
                TaskEvent::TaskPermanentlyFailed {
                    reason: FailureReason::TimedOut,
                },
            );
            model.apply(event).expect("valid")
        };
        assert_eq!(
            touched,
            Touched {
                card: Some(ticket),
                task: Some(task)
            }
        );
        let card = fold(&log).card(ticket).cloned().expect("a card");
        assert_eq!(
            card.tasks.by_status,
            BTreeMap::from([("timed_out".to_string(), 1)])
        );
    }

    #[test]
    fn other_aggregates_are_ignored_and_bad_payloads_refused() {
        let mut model = BoardModel::default();
        let mut log = Log::default();
        log.push("Agent", Uuid::now_v7(), json!({"AgentRegistered": {}}));
        assert_eq!(
            model.apply(&log.events[0]).expect("ignored"),
            Touched::default()
        );
        log.push("Ticket", Uuid::now_v7(), json!({"TicketExploded": {}}));
        assert!(matches!(
            model.apply(&log.events[1]),
            Err(ProjectionError::Payload { .. })
        ));
    }

    #[test]
    fn blocked_at_keeps_the_microseconds_postgres_keeps() {
        let (org, project, ticket) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        log.ticket(
            ticket,
            created_ticket(org, project, ticket, "Login", Priority::High),
        );
        let precise = at() + chrono::Duration::nanoseconds(123_456_789);
        log.ticket(
            ticket,
            TicketEvent::TicketBlocked {
                reason: BlockReason::Dependency,
                note: None,
                blocked_at: precise,
            },
        );
        let card = fold(&log).card(ticket).cloned().expect("a card");
        let blocked_at = card.blocked.expect("blocked").blocked_at;
        assert_eq!(blocked_at, at() + chrono::Duration::microseconds(123_456));
    }
}
