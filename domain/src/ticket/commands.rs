use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::events::BlockReason;
use super::TicketStatus;
use crate::common::{Phase, Priority};

/// Everything that can be asked of a ticket.
#[derive(Debug, Clone, PartialEq)]
pub enum TicketCommand {
    CreateTicket {
        ticket_id: Uuid,
        organization_id: Uuid,
        project_id: Uuid,
        spec_id: Option<Uuid>,
        title: String,
        description: String,
        priority: Priority,
        phase: Phase,
        /// Its key in the spec's plan, when a plan made it.
        plan_key: Option<String>,
    },
    /// Changes any of the given details; `None` leaves a detail as it is.
    UpdateTicket {
        title: Option<String>,
        description: Option<String>,
        priority: Option<Priority>,
        phase: Option<Phase>,
    },
    /// Moves the ticket one step along its status machine.
    TransitionTicket {
        to: TicketStatus,
        note: Option<String>,
    },
    /// Moves the ticket forward one step at a time toward `to`, as far as the steps are
    /// allowed (one event per step, in one command); refused only when no step is.
    AdvanceTicket {
        to: TicketStatus,
        note: Option<String>,
    },
    /// Sends a ticket under test back to building, recording why.
    RegressTicket {
        feedback: String,
    },
    BlockTicket {
        reason: BlockReason,
        note: Option<String>,
        at: DateTime<Utc>,
    },
    UnblockTicket,
}
