//! Rebuilding a past state: the board and the graph `as_of` a position fold one project's
//! events, read from the log in its gapless order, with their projectors' own rules —
//! from the nearest snapshot before it ([`crate::snapshots`]), else from the start.

use omoi_store::log::{read_global_within, Visibility, WeighedPage, PAGE_BYTES};
use omoi_store::{Cursor, StoredEvent};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ProjectionError;

/// Events of a project are read in pages of this size when a past state is rebuilt.
const REPLAY_PAGE: i64 = 1000;

/// Most events one view `as_of` a past position replays by default (after the snapshot it
/// starts from, [`crate::snapshots`]): it bounds the time and memory a single request may
/// take.
pub const MAX_REPLAY_EVENTS: usize = 100_000;

/// Feeds `apply` the events of one project after `after` (a snapshot's event, or the
/// start) in the log's gapless order, up to `as_of`.
///
/// It stops at the first event whose global position is above `as_of`, so what `apply`
/// sees is always a prefix of the log — a state a projector really had. (Positions are
/// taken at insert and may commit out of order: an event numbered below `as_of` whose
/// transaction committed after one numbered above it is not part of that prefix.)
pub async fn replay_project(
    pool: &PgPool,
    organization_id: Uuid,
    project_id: Uuid,
    after: Cursor,
    as_of: i64,
    max_events: usize,
    apply: impl FnMut(&StoredEvent) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    replay(
        pool,
        organization_id,
        Some(project_id),
        after,
        as_of,
        max_events,
        apply,
    )
    .await
}

/// [`replay_project`] over a whole organization's events (its agents' among them).
pub async fn replay_organization(
    pool: &PgPool,
    organization_id: Uuid,
    as_of: i64,
    max_events: usize,
    apply: impl FnMut(&StoredEvent) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    replay(
        pool,
        organization_id,
        None,
        Cursor::default(),
        as_of,
        max_events,
        apply,
    )
    .await
}

async fn replay(
    pool: &PgPool,
    organization_id: Uuid,
    project_id: Option<Uuid>,
    after: Cursor,
    as_of: i64,
    max_events: usize,
    mut apply: impl FnMut(&StoredEvent) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    let visibility = Visibility::Organizations {
        organizations: vec![organization_id],
        project: project_id,
    };
    let mut cursor = after;
    let mut replayed = 0;
    loop {
        let WeighedPage { page, full } =
            read_global_within(pool, cursor, REPLAY_PAGE, PAGE_BYTES, &visibility).await?;
        for event in &page.events {
            if event.global_position > as_of {
                return Ok(());
            }
            replayed += 1;
            if replayed > max_events {
                return Err(ProjectionError::ReplayTooLong { max: max_events });
            }
            apply(event)?;
        }
        if !full {
            return Ok(());
        }
        cursor = page.next;
    }
}
