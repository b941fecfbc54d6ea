//! The ticket: a unit of work on the Kanban board.
//!
//! Status machine `backlog → analyzing → building → building-done → testing → done`, with
//! `testing → building` only as a regression that records feedback. `done` is final.
//! "Blocked" is an overlay with a reason, not a status: a blocked ticket cannot reach
//! `done`, and moving it to another working status clears the block (as the original did).

mod aggregate;
mod commands;
mod error;
mod events;

pub use aggregate::{Block, Regression, Ticket, TicketStatus};
pub use commands::TicketCommand;
pub use error::TicketError;
pub use events::{BlockReason, TicketEvent};
