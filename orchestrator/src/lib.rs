//! The task orchestrator (`omoi worker`): assigns ready work to agents by score,
//! dependencies and capabilities; heartbeats as leases; stale agents, timeouts, retries
//! with real backoff, cancellation; a built-in executor that runs a command per task.
//!
//! # Layout
//!
//! * [`score`] — the original's score formula, weights and thresholds from config.
//! * [`queue`] — the tasks folded from the log: readiness, order, caps, overdue tasks.
//! * [`anomaly`] — the Guardian's anomaly readings, folded from the log.
//! * [`leases`] — `agent_leases`: heartbeats, degradation and expiry.
//! * [`monitor`] — supervision's settings and clock (the sweeps are the worker's).
//! * [`executor`] — one task's command: working directory, environment, progress, kill.
//! * [`conductor`] — the Conductor's duplicate work, compared as tasks arrive.
//! * [`choose`] — a dispatch pass's choice of (agent, task) pairs, pure.
//! * [`reservations`] — assignments made here that the queue has not read back yet.
//! * [`trajectory`] — optional LLM trajectory analysis of running tasks.
//! * [`worker`] — the loop tying them together.

pub mod anomaly;
pub mod choose;
pub mod conductor;
pub mod executor;
pub mod leases;
pub mod monitor;
pub mod queue;
pub mod reservations;
pub mod score;
pub mod trajectory;
pub mod worker;

pub use monitor::{Clock, MonitoringConfig};
pub use worker::{SteppedWorker, Work, Worker, WorkerConfig};
