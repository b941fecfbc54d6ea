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
//! * `model` — [`EntityType`], [`Change`] (which events are entries) and [`TimelineModel`],
//!   the timeline folded in memory for the live stream.
//! * `summary` — [`summary`]: the text of an entry.
//! * `projector` — [`TimelineProjector`]: tables and `apply`.
//! * `query` — [`read`], [`TimelineFilter`], [`Page`]: the paged query on the
//!   `timeline_entries` view.

mod model;
mod projector;
mod query;
mod summary;

pub use model::{Change, EntityType, TimelineEntry, TimelineModel};
pub use projector::TimelineProjector;
pub use query::{
    limit, next_cursors, read, Page, PageError, TimelineFilter, TimelinePage, DEFAULT_LIMIT,
    MAX_LIMIT,
};
pub use summary::{summary, Names};

/// Also here, where the projection benchmark has always named it.
pub use crate::codec::EventMeta;
