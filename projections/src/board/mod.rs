//! The Kanban board: one card per ticket, in the column of its status, with its blocked
//! overlay, its regressions and how many of its tasks stand in each task status.
//!
//! The update rule is pure ([`BoardModel::apply`]): the SQL projector loads the rows an
//! event touches into a small model, applies the same transition and writes the rows
//! back, and time travel (`as_of`) folds the project's log into a whole model in memory.
//! Both render through [`render_board`], so a past board and the live one cannot differ in
//! shape or order.
//!
//! Tables (schema `rm_board_v1`, views `board_cards` and `board_task_cards`):
//! * `cards` — one row per ticket;
//! * `task_cards` — task → ticket and status: later task events carry only the task id, and
//!   the card's counts need the status the task leaves.
//!
//! # Layout
//!
//! * `model` — [`BoardModel`], [`Card`] and the transition one event makes.
//! * `view` — [`ColumnConfig`], [`render_board`], [`Tally`] and the counts and WIP checks.
//! * `projector` — [`BoardProjector`]: tables, rows and the set-based `apply`.
//! * `query` — [`board_view`], [`board_view_as_of`], [`board_stats`], … on the views.

mod model;
mod projector;
mod query;
mod view;

pub use model::{
    BlockedOverlay, BoardChanges, BoardDelta, BoardModel, Card, TaskCard, TaskProgress, Touched,
};
pub use projector::BoardProjector;
pub use query::{
    board_stats, board_tally, board_view, board_view_as_of, project_cards, wip_violations,
};
pub use view::{
    default_columns, full_column, render_board, render_stats, render_violations, BoardStats,
    BoardView, ColumnConfig, ColumnCount, ColumnView, Tally, WipViolations,
};

/// Also here, where `api`'s settings have always read the default bound of a replay.
pub use crate::replay::MAX_REPLAY_EVENTS;
