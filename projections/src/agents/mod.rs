//! The agents view: every agent's registration, status and the task it is working on.
//!
//! `agents` holds one row per agent. `current_task_id` comes from task events, which name
//! their agent only when assigned; `task_agents` therefore remembers which agent holds
//! each open assignment until the attempt ends (completed, failed, timed out, cancelled,
//! retried or permanently failed). An agent with capacity for several tasks shows the
//! most recently assigned one still open.
//!
//! # Layout
//!
//! * `model` — [`task_effect`] (what a task event does to assignments), the transitions
//!   and [`AgentsModel`], the agents folded in memory for the live stream.
//! * `projector` — [`AgentsProjector`]: tables and `apply`.
//! * `query` — [`list`], [`AgentFilter`]: the query on the `agents_agents` view.

mod model;
mod projector;
mod query;

pub use model::{task_effect, AgentView, AgentsModel, TaskEffect};
pub use projector::AgentsProjector;
pub use query::{held_tasks, list, list_as_of, AgentFilter};
