//! The directory: one row per organization, project, spec, ticket and task with what a
//! list or a search shows of it (title, status, where it belongs, who works on it), so
//! that screens can list and search them in SQL, filtered by the caller's organizations.
//!
//! # Layout
//!
//! * `model` — [`Entry`] and the transition one event makes ([`DirectoryEvent`]).
//! * `projector` — [`DirectoryProjector`]: the `entries` table and the set-based `apply`.
//! * `query` — [`list`] (cursor-paged, newest first) and [`search`] (full text, best
//!   match first) on the `directory_entries` view.

mod model;
mod projector;
mod query;

pub use model::{DirectoryEvent, Entry};
pub use projector::DirectoryProjector;
pub use query::{
    list, query_words, search, suspected_duplicates, task_status_counts, DuplicatesBatch,
    DuplicatesCursor, ListFilter, ListPage, SearchHit, SuspectedDuplicate, MAX_SEARCH_RESULTS,
};
