//! What supervision found and has not been resolved yet, per project: stalled tasks,
//! suspected duplicate work and open alerts — `GET /api/v1/monitoring/overview` — and the steering
//! waiting for each agent, which its heartbeat looks up.
//!
//! `stalled` holds a row per task marked stalled, until it progresses, starts again,
//! loses its agent or ends; `duplicates` a row per flagged pair, until either task ends;
//! `steering` a row per message waiting for the agent that holds its task, until it is
//! delivered or the attempt is over; `alerts` a row per open alert — an agent
//! quarantined or failed, a ticket failing its checks — until what raised it is over
//! (released, terminated, unblocked).
//!
//! # Layout
//!
//! * `coherence` — [`CoherenceInputs::coherence`]: the Conductor's score and status of a
//!   project (pure).
//! * `model` — [`Finding`], [`SteeringEffect`]: what one task event does (pure).
//! * `projector` — [`MonitoringProjector`]: the tables and `apply`.
//! * `query` — [`overview`]: one project's open findings; [`steered_tasks`]: the tasks
//!   with steering waiting for an agent.

mod coherence;
mod model;
mod projector;
mod query;

pub use coherence::{Coherence, CoherenceInputs, CoherenceStatus};
pub use model::{
    agent_alerts, finding, steering_effect, ticket_alert, AlertEffect, AlertKind, Finding,
    SteeringEffect,
};
pub use projector::MonitoringProjector;
pub use query::{
    alerts_about, finding_counts, overview, project_alerts, steered_tasks, AlertRow, AlertScope,
    DuplicateRow, FindingCounts, Overview, StalledRow,
};
