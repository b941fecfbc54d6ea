//! What the board shows: its columns, the cards laid out in them, and their counts and
//! WIP-limit checks. The live board and a past one both render here, so they cannot
//! differ in shape or order.

use std::collections::{BTreeMap, HashMap};

use omoi_domain::common::Priority;
use omoi_domain::ticket::TicketStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::Card;

// ---------------------------------------------------------------------------------------
// Columns
// ---------------------------------------------------------------------------------------

/// One column of the board. Its name is the wire name of the ticket status it shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ColumnConfig {
    pub name: String,
    /// Most cards the column should hold; `None` for no limit.
    pub wip_limit: Option<u32>,
}

/// The original's board: WIP limits on the columns where work is in progress.
const DEFAULT_COLUMNS: [(TicketStatus, Option<u32>); 6] = [
    (TicketStatus::Backlog, None),
    (TicketStatus::Analyzing, Some(5)),
    (TicketStatus::Building, Some(10)),
    (TicketStatus::BuildingDone, None),
    (TicketStatus::Testing, Some(8)),
    (TicketStatus::Done, None),
];

/// The columns in board order, until they can be configured.
pub fn default_columns() -> Vec<ColumnConfig> {
    DEFAULT_COLUMNS
        .iter()
        .map(|(status, wip_limit)| ColumnConfig {
            name: status.as_str().to_string(),
            wip_limit: *wip_limit,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Rendering (shared by the live and the past board)
// ---------------------------------------------------------------------------------------

/// One column with its cards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ColumnView {
    pub name: String,
    pub wip_limit: Option<u32>,
    pub count: u32,
    /// More cards than the WIP limit.
    pub over_limit: bool,
    /// By priority (critical first), then title.
    pub cards: Vec<Card>,
}

/// A project's board.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BoardView {
    pub project_id: Uuid,
    /// The requested position when this is the board of the past.
    pub as_of: Option<i64>,
    /// Global position of the latest event reflected in the cards (0 for none).
    pub position: i64,
    pub columns: Vec<ColumnView>,
}

/// Lays `cards` out in `columns`. Cards whose status has no column are not shown (a
/// configured board may leave a status out).
pub fn render_board(
    project_id: Uuid,
    columns: &[ColumnConfig],
    cards: Vec<Card>,
    as_of: Option<i64>,
) -> BoardView {
    let position = cards.iter().map(|c| c.last_position).max().unwrap_or(0);
    let mut by_status: HashMap<&'static str, Vec<Card>> = HashMap::new();
    for card in cards {
        by_status
            .entry(card.status.as_str())
            .or_default()
            .push(card);
    }
    let columns = columns
        .iter()
        .map(|column| {
            let mut cards = by_status.remove(column.name.as_str()).unwrap_or_default();
            cards.sort_by(|a, b| card_order(a).cmp(&card_order(b)));
            let count = cards.len() as u32;
            ColumnView {
                name: column.name.clone(),
                wip_limit: column.wip_limit,
                count,
                over_limit: column.wip_limit.is_some_and(|limit| count > limit),
                cards,
            }
        })
        .collect();
    BoardView {
        project_id,
        as_of,
        position,
        columns,
    }
}

/// Critical first, then by title; the id keeps equal titles in a stable order.
fn card_order(card: &Card) -> (usize, &str, Uuid) {
    let rank = Priority::ALL
        .iter()
        .position(|p| *p == card.priority)
        .unwrap_or(Priority::ALL.len());
    (rank, card.title.as_str(), card.ticket_id)
}

/// Cards per status and how many are blocked: what stats and WIP checks need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub per_status: BTreeMap<String, u32>,
    pub blocked: u32,
}

impl Tally {
    pub fn of(cards: &[Card]) -> Self {
        let mut tally = Self::default();
        for card in cards {
            *tally
                .per_status
                .entry(card.status.as_str().to_string())
                .or_default() += 1;
            tally.blocked += u32::from(card.blocked.is_some());
        }
        tally
    }

    fn count(&self, column: &str) -> u32 {
        self.per_status.get(column).copied().unwrap_or(0)
    }
}

/// A column and how many cards it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ColumnCount {
    pub name: String,
    pub wip_limit: Option<u32>,
    pub count: u32,
}

/// Counts of a project's board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BoardStats {
    pub project_id: Uuid,
    pub columns: Vec<ColumnCount>,
    /// Cards with a blocked overlay.
    pub blocked: u32,
    /// Every card of the project.
    pub total: u32,
}

/// Columns holding more cards than their WIP limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WipViolations {
    pub project_id: Uuid,
    pub violations: Vec<ColumnCount>,
}

fn column_counts(columns: &[ColumnConfig], tally: &Tally) -> Vec<ColumnCount> {
    columns
        .iter()
        .map(|column| ColumnCount {
            name: column.name.clone(),
            wip_limit: column.wip_limit,
            count: tally.count(&column.name),
        })
        .collect()
}

pub fn render_stats(project_id: Uuid, columns: &[ColumnConfig], tally: &Tally) -> BoardStats {
    BoardStats {
        project_id,
        columns: column_counts(columns, tally),
        blocked: tally.blocked,
        total: tally.per_status.values().sum(),
    }
}

pub fn render_violations(
    project_id: Uuid,
    columns: &[ColumnConfig],
    tally: &Tally,
) -> WipViolations {
    let violations = column_counts(columns, tally)
        .into_iter()
        .filter(|c| c.wip_limit.is_some_and(|limit| c.count > limit))
        .collect();
    WipViolations {
        project_id,
        violations,
    }
}

/// The column `to` when it is at or over its WIP limit: one more card would exceed it.
pub fn full_column(
    columns: &[ColumnConfig],
    tally: &Tally,
    to: TicketStatus,
) -> Option<ColumnCount> {
    let column = columns.iter().find(|c| c.name == to.as_str())?;
    let limit = column.wip_limit?;
    let count = tally.count(&column.name);
    (count >= limit).then(|| ColumnCount {
        name: column.name.clone(),
        wip_limit: Some(limit),
        count,
    })
}

#[cfg(test)]
mod tests {
    use omoi_domain::ticket::{BlockReason, TicketEvent};

    use super::*;
    use crate::board::model::tests::{fold, moved};
    use crate::testing::{at, created_ticket, Log};

    #[test]
    fn the_board_lays_cards_out_by_column_priority_and_title_with_wip_checks() {
        let (org, project) = (Uuid::now_v7(), Uuid::now_v7());
        let mut log = Log::default();
        let mut ids = vec![];
        for (title, priority) in [
            ("b", Priority::Low),
            ("a", Priority::Low),
            ("z", Priority::Critical),
        ] {
            let id = Uuid::now_v7();
            ids.push(id);
            log.ticket(id, created_ticket(org, project, id, title, priority));
            log.ticket(id, moved(TicketStatus::Backlog, TicketStatus::Analyzing));
        }
        log.ticket(
            ids[0],
            TicketEvent::TicketBlocked {
                reason: BlockReason::Environment,
                note: None,
                blocked_at: at(),
            },
        );
        let cards = fold(&log).into_cards();
        let columns = vec![
            ColumnConfig {
                name: "backlog".into(),
                wip_limit: None,
            },
            ColumnConfig {
                name: "analyzing".into(),
                wip_limit: Some(2),
            },
        ];
        let view = render_board(project, &columns, cards.clone(), None);
        assert_eq!(view.position, 7);
        let analyzing = &view.columns[1];
        let titles: Vec<&str> = analyzing.cards.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["z", "a", "b"]);
        assert!(analyzing.over_limit);
        assert!(view.columns[0].cards.is_empty());

        let tally = Tally::of(&cards);
        let stats = render_stats(project, &columns, &tally);
        assert_eq!((stats.total, stats.blocked), (3, 1));
        assert_eq!(stats.columns[1].count, 3);
        let violations = render_violations(project, &columns, &tally);
        assert_eq!(violations.violations.len(), 1);
        assert_eq!(violations.violations[0].name, "analyzing");
        assert!(full_column(&columns, &tally, TicketStatus::Analyzing).is_some());
        assert!(full_column(&columns, &tally, TicketStatus::Backlog).is_none());
    }

    #[test]
    fn a_column_at_its_limit_is_full_and_the_defaults_match_the_original() {
        let columns = default_columns();
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "backlog",
                "analyzing",
                "building",
                "building-done",
                "testing",
                "done"
            ]
        );
        let limits: Vec<Option<u32>> = columns.iter().map(|c| c.wip_limit).collect();
        assert_eq!(limits, [None, Some(5), Some(10), None, Some(8), None]);
        let mut tally = Tally::default();
        tally.per_status.insert("testing".into(), 7);
        assert!(full_column(&columns, &tally, TicketStatus::Testing).is_none());
        tally.per_status.insert("testing".into(), 8);
        let full = full_column(&columns, &tally, TicketStatus::Testing).expect("full");
        assert_eq!((full.count, full.wip_limit), (8, Some(8)));
        assert!(render_violations(Uuid::nil(), &columns, &tally)
            .violations
            .is_empty());
    }
}
