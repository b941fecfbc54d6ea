//! The agent: a registered worker, monitor, watchdog or guardian that executes or
//! supervises work.
//!
//! Status machine, exactly the original's (`agent_status.py`):
//!
//! ```text
//! spawning    → idle | failed | terminated
//! idle        → running | degraded | quarantined | terminated
//! running     → idle | failed | degraded | quarantined
//! degraded    → idle | failed | quarantined | terminated
//! failed      → quarantined | terminated
//! quarantined → idle | terminated
//! terminated  (final)
//! ```
//!
//! A new agent starts `spawning`. Moving to the status an agent already has is refused
//! unless forced, and then it is recorded (to log a fresh reason); `force` never permits
//! a move outside the table, as in the original. A terminated agent accepts no command.
//!
//! Heartbeats are deliberately not events: they arrive every few seconds per agent and
//! carry no decision, so they live in a read-side liveness store, and only the status
//! changes they lead to (e.g. `running → degraded`) are recorded here.

mod aggregate;
mod commands;
mod error;
mod events;

pub use aggregate::{
    default_name, Agent, AgentStatus, AgentType, MAX_CAPABILITIES, MAX_CAPABILITY_CHARS,
    MAX_CAPACITY, MIN_CAPACITY,
};
pub use commands::AgentCommand;
pub use error::AgentError;
pub use events::AgentEvent;
