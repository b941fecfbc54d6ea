//! The domain of omoi: aggregates, their commands and events, and the pure rules that
//! decide which commands are legal. Nothing here performs IO — no database, no HTTP,
//! no clock: time and randomness arrive inside commands so every rule is deterministic.
//!
//! # Layout
//!
//! * [`access`] — principals, organization roles and their permissions.
//! * [`common`] — values shared by several aggregates (priority, phase, scope, text rules)
//!   and the [`common::DomainError`] classification the API turns into HTTP statuses.
//! * [`guardian`] — the kinds of Guardian intervention, recorded on their targets.
//! * [`kind`] — [`kind::AggregateKind`]: each aggregate's type in the log and its noun.
//! * One folder per aggregate, each with `aggregate.rs` (state, `handle`, `apply`),
//!   `commands.rs`, `events.rs` and `error.rs`:
//!   [`organization`], [`project`], [`ticket`], [`task`], [`spec`], [`agent`],
//!   [`billing`] (the organization's billing account and the plans table).
//! * `testing` (tests only) — folding and handling helpers the aggregates' tests share.
//!
//! Every aggregate is a cqrs-es [`cqrs_es::Aggregate`] used in plain event-store mode, and
//! implements [`common::Scoped`] so the command bus can stamp the organization and project
//! onto every event's metadata.

pub mod access;
pub mod agent;
pub mod billing;
pub mod common;
pub mod guardian;
pub mod kind;
pub mod organization;
pub mod project;
pub mod spec;
pub mod task;
pub mod ticket;

#[cfg(test)]
pub(crate) mod testing;
