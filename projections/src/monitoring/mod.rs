//! What supervision found and has not been resolved yet, per project: stalled tasks and
//! suspected duplicate work — `GET /api/v1/monitoring/overview`.
//!
//! `stalled` holds a row per task marked stalled, until it progresses, starts again,
//! loses its agent or ends; `duplicates` a row per flagged pair, until either task ends.
//!
//! # Layout
//!
//! * `model` — [`Finding`]: what one task event does to the findings (pure).
//! * `projector` — [`MonitoringProjector`]: the tables and `apply`.
//! * `query` — [`overview`]: one project's open findings.

mod model;
mod projector;
mod query;

pub use model::{finding, Finding};
pub use projector::MonitoringProjector;
pub use query::{overview, DuplicateRow, Overview, StalledRow};
