//! The agent audit: for every agent, every event it caused or that names it, in the
//! global order — `GET /api/v1/agents/{id}/activity`.
//!
//! `entries` holds one row per (agent, event): the event's place in the global stream and
//! its scope. The events themselves stay in the log; a page joins its rows back to
//! `events` through the global order's unique index.
//!
//! # Layout
//!
//! * `model` — [`agents_named`]: which agents an event concerns (pure).
//! * `projector` — [`ActivityProjector`]: the table, `apply` and the rebuild's fold.
//! * `query` — [`page`]: one agent's events after a cursor.

mod model;
mod projector;
mod query;

pub use model::agents_named;
pub use projector::ActivityProjector;
pub use query::{page, ActivityScope};
