//! The activity timeline: one entry per event a person cares about, each with a one-line
//! summary naming the entity (`Ticket "Login page" moved analyzing → building`).
//!
//! Every event of a ticket, task, spec, agent, project or organization is an entry except
//! task progress reports, which arrive too often to be read as activity. The entries are
//! the log's own events, read from it; later events only carry their aggregate's id, so
//! the projector keeps the history of every entity's title in `titles`, and a read names
//! each entry's entities by their titles just before its event.
//!
//! Entries are the events' places in the global stream, `(transaction_id,
//! global_position)`, and a read takes them only up to the live build's checkpoint: the
//! runner applies events in that order, so a new entry is always newer than every one
//! served before and a cursor never gains older neighbours later.
//!
//! # Layout
//!
//! * `model` — [`EntityType`], [`Change`] (which events are entries), the entry an event
//!   becomes and [`TimelineModel`], the timeline folded in memory for the live stream.
//! * `summary` — [`summary`]: the text of an entry.
//! * `projector` — [`TimelineProjector`]: the history of titles, its `apply` and fold.
//! * `query` — [`read`], [`TimelineFilter`], [`Page`]: a page of the log's entries, named
//!   from the history.

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
