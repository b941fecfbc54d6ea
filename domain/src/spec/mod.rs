//! The spec: a spec-driven piece of work, from EARS requirements through an approved
//! design and plan to execution.
//!
//! Phase machine `draft → requirements → design → tasks → executing → completed`, plus
//! `archived`, reachable from every other phase and final. A spec enters `requirements`
//! with its first requirement; requirements may be added, updated and removed only
//! while it is there (adding is also allowed in `draft`, which is what moves it on).
//! Approving the requirements (at least one) moves it to `design`; the design may be set
//! only there, and approving it (once set) moves it to `tasks`. The plan ([`Plan`]:
//! tickets and tasks by key) may be set only there, and approving it (once set) moves the
//! spec to `executing`. Completing moves it to `completed`. A completed spec can still be
//! archived.
//!
//! # Phase-change convention
//!
//! Every phase change is carried by exactly one event, so a projection never has to
//! reconcile two of them:
//!
//! * [`SpecEvent::SpecPhaseChanged`] is written only for `draft → requirements`, the one
//!   move that has no event of its own. It is written *before* the
//!   [`SpecEvent::SpecRequirementAdded`] that caused it, so every event applies to a
//!   state in which it is legal.
//! * [`SpecEvent::SpecRequirementsApproved`] (→ `design`),
//!   [`SpecEvent::SpecDesignApproved`] (→ `tasks`; → `executing` in approvals written
//!   before specs had a plan), [`SpecEvent::SpecPlanApproved`] (→ `executing`),
//!   [`SpecEvent::SpecCompleted`]
//!   (→ `completed`) and [`SpecEvent::SpecArchived`] (→ `archived`) each move the phase
//!   themselves; no `SpecPhaseChanged` accompanies them.
//!
//! Removing the last requirement leaves the spec in `requirements` (it does not fall back
//! to `draft`); approval is then refused until a requirement is added again.

mod aggregate;
mod commands;
mod error;
mod events;
mod plan;

pub use aggregate::{
    Design, Requirement, Spec, SpecPhase, MAX_ACCEPTANCE_CRITERIA, MAX_CLAUSE_CHARS,
    MAX_REQUIREMENT_ID_CHARS, REQUIREMENT_ID_PATTERN,
};
pub use commands::SpecCommand;
pub use error::SpecError;
pub use events::SpecEvent;
pub use plan::{
    is_plan_key, Estimate, Plan, PlanError, PlanProblem, PlannedTask, PlannedTicket,
    MAX_PLAN_KEY_CHARS, MAX_PLAN_TASKS, MAX_PLAN_TICKETS, PLAN_KEY_PATTERN,
};
