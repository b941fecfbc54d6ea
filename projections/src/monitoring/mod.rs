//! What supervision found and has not been resolved yet, per project: stalled tasks and
//! suspected duplicate work — `GET /api/v1/monitoring/overview` — and the steering
//! waiting for each agent, which its heartbeat looks up.
//!
//! `stalled` holds a row per task marked stalled, until it progresses, starts again,
//! loses its agent or ends; `duplicates` a row per flagged pair, until either task ends;
//! `steering` a row per message waiting for the agent that holds its task, until it is
//! delivered or the attempt is over.
//!
//! # Layout
//!
//! * `model` — [`Finding`], [`SteeringEffect`]: what one task event does (pure).
//! * `projector` — [`MonitoringProjector`]: the tables and `apply`.
//! * `query` — [`overview`]: one project's open findings; [`steered_tasks`]: the tasks
//!   with steering waiting for an agent.

mod model;
mod projector;
mod query;

pub use model::{finding, steering_effect, Finding, SteeringEffect};
pub use projector::MonitoringProjector;
pub use query::{overview, steered_tasks, DuplicateRow, Overview, StalledRow};
