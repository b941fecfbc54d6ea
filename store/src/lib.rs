//! The Postgres side of omoi: connecting and migrating, the command bus that turns commands
//! into events, the readers of one aggregate's history and of the global stream, and a
//! launcher for a PostgreSQL cluster of our own when no `DATABASE_URL` is given.
//!
//! # Layout
//!
//! * [`db`] — pool and migrations (the `migrations/` folder at the workspace root).
//! * [`bus`] — [`bus::CommandBus`]: load, handle, commit with metadata; retry on conflicts;
//!   two aggregates' commands in one transaction (`execute_pair`).
//! * [`cache`] — recently used aggregates, brought up to date by the events after them.
//! * [`append`] — the `INSERT`s of decided events (several aggregates' in one statement).
//! * [`group`] — group commit: concurrent commands' appends in one transaction.
//! * [`json`] — an event's payload and metadata as their JSON text, decoded straight into
//!   the type a reader wants.
//! * [`log`] — reading the event log: per aggregate (history, state as of an event) and
//!   globally, in the gapless `(transaction_id, global_position)` order.
//! * [`wakeup`] — coalesced cross-process wake-ups (`NOTIFY omoi_events`).
//! * [`embedded`] — initdb/pg_ctl of the machine's PostgreSQL, as the `postgres` user when
//!   we are root.
//! * [`transcripts`] — task transcripts (`task_logs`): every line of every attempt, in order.
//! * [`accounts`] — users, login failures, refresh and revoked tokens, API keys and the
//!   membership index authorization reads (stored and found here; hashed and signed in
//!   the API).

pub mod accounts;
pub mod append;
pub mod bus;
pub mod cache;
pub mod db;
pub mod embedded;
pub mod group;
pub mod json;
pub mod log;
pub mod transcripts;
pub mod wakeup;

pub use bus::{Actor, BusConfig, CommandBus, CommandContext, CommandError, Committed};
pub use log::{Cursor, EventPage, StoredEvent};
