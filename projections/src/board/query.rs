//! Reading the board: the live one through the stable views (`board_cards`), a past one
//! rebuilt from the log.

use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::model::{BoardModel, Card};
use super::projector::{card_from_row, CARD_COLUMNS};
use super::view::{
    render_board, render_stats, render_violations, BoardStats, BoardView, ColumnConfig, Tally,
    WipViolations,
};
use crate::codec::count_of;
use crate::replay::replay_project;
use crate::snapshots::model_before;
use crate::ProjectionError;

/// Every card of a project, as projected so far.
pub async fn project_cards(pool: &PgPool, project_id: Uuid) -> Result<Vec<Card>, ProjectionError> {
    let sql = format!("select {CARD_COLUMNS} from board_cards where project_id = $1");
    let rows = sqlx::query(&sql).bind(project_id).fetch_all(pool).await?;
    rows.iter().map(card_from_row).collect()
}

/// The live board of a project.
pub async fn board_view(
    pool: &PgPool,
    project_id: Uuid,
    columns: &[ColumnConfig],
) -> Result<BoardView, ProjectionError> {
    let cards = project_cards(pool, project_id).await?;
    Ok(render_board(project_id, columns, cards, None))
}

/// The board as it was at global position `as_of`: the nearest snapshot before it, and the
/// project's events after that folded with the projector's own rule.
pub async fn board_view_as_of(
    pool: &PgPool,
    organization_id: Uuid,
    project_id: Uuid,
    as_of: i64,
    max_events: usize,
    columns: &[ColumnConfig],
) -> Result<BoardView, ProjectionError> {
    let (after, mut model) = model_before::<BoardModel>(pool, organization_id, project_id, as_of)
        .await?
        .unwrap_or_default();
    replay_project(
        pool,
        organization_id,
        project_id,
        after,
        as_of,
        max_events,
        |event| model.apply(event).map(|_| ()),
    )
    .await?;
    let cards = model
        .into_cards()
        .into_iter()
        .filter(|card| card.project_id == project_id)
        .collect();
    Ok(render_board(project_id, columns, cards, Some(as_of)))
}

/// Cards per status and blocked cards of a project, counted in SQL.
pub async fn board_tally(pool: &PgPool, project_id: Uuid) -> Result<Tally, ProjectionError> {
    let rows = sqlx::query(
        "select status, count(*) as cards,
                count(*) filter (where blocked_reason is not null) as blocked
           from board_cards
          where project_id = $1
          group by status",
    )
    .bind(project_id)
    .fetch_all(pool)
    .await?;
    let mut tally = Tally::default();
    for row in &rows {
        tally
            .per_status
            .insert(row.try_get("status")?, count_of(row, "cards")?);
        tally.blocked += count_of(row, "blocked")?;
    }
    Ok(tally)
}

pub async fn board_stats(
    pool: &PgPool,
    project_id: Uuid,
    columns: &[ColumnConfig],
) -> Result<BoardStats, ProjectionError> {
    let tally = board_tally(pool, project_id).await?;
    Ok(render_stats(project_id, columns, &tally))
}

pub async fn wip_violations(
    pool: &PgPool,
    project_id: Uuid,
    columns: &[ColumnConfig],
) -> Result<WipViolations, ProjectionError> {
    let tally = board_tally(pool, project_id).await?;
    Ok(render_violations(project_id, columns, &tally))
}
