//! Reading the timeline: one page of the `timeline_entries` view, filtered and
//! cursor-paged in both directions.

use omoi_store::Cursor;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::{EntityType, TimelineEntry};

/// A page of the timeline, newest entry first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimelinePage {
    pub entries: Vec<TimelineEntry>,
    /// Pass as `before` for older entries; absent when there are none.
    pub next_before: Option<String>,
    /// Pass as `after` for newer entries (also when none exist yet: poll with it).
    pub next_after: String,
}

/// Which slice of the timeline to read. Both cursors are exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest entries.
    Newest,
    /// The newest entries older than the cursor.
    Before(Cursor),
    /// The oldest entries newer than the cursor (still returned newest first), so that
    /// following `next_after` walks forward without a gap.
    After(Cursor),
    /// The newest entries older than `before` and newer than `after`: a window, paged
    /// backwards with `next_before` (and the same `after`).
    Between { after: Cursor, before: Cursor },
}

/// Why paging parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("{field} is not a cursor: {source}")]
    BadCursor {
        field: &'static str,
        source: omoi_store::log::BadCursor,
    },
    #[error("limit must be between 1 and {MAX_LIMIT}")]
    Limit,
}

impl PageError {
    /// The query parameter to blame.
    pub fn field(&self) -> &'static str {
        match self {
            Self::BadCursor { field, .. } => field,
            Self::Limit => "limit",
        }
    }
}

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

impl Page {
    /// Reads `before`/`after` query values; empty values count as absent.
    pub fn parse(before: Option<&str>, after: Option<&str>) -> Result<Self, PageError> {
        let cursor = |field: &'static str, raw: Option<&str>| {
            raw.filter(|r| !r.is_empty())
                .map(|r| r.parse::<Cursor>())
                .transpose()
                .map_err(|source| PageError::BadCursor { field, source })
        };
        match (cursor("before", before)?, cursor("after", after)?) {
            (Some(before), Some(after)) => Ok(Self::Between { after, before }),
            (Some(c), None) => Ok(Self::Before(c)),
            (None, Some(c)) => Ok(Self::After(c)),
            (None, None) => Ok(Self::Newest),
        }
    }
}

/// The page size, `DEFAULT_LIMIT` when absent.
pub fn limit(raw: Option<i64>) -> Result<i64, PageError> {
    let limit = raw.unwrap_or(DEFAULT_LIMIT);
    match (1..=MAX_LIMIT).contains(&limit) {
        true => Ok(limit),
        false => Err(PageError::Limit),
    }
}

/// Every filter of a timeline read; all given ones must match.
#[derive(Debug, Clone)]
pub struct TimelineFilter {
    /// `None` only for operators, who see every organization.
    pub organizations: Option<Vec<Uuid>>,
    pub project_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub entity_type: Option<EntityType>,
    pub entity_id: Option<Uuid>,
    pub actor: Option<String>,
    pub page: Page,
    pub limit: i64,
}

/// Reads one page from the `timeline_entries` view.
pub async fn read(pool: &PgPool, filter: &TimelineFilter) -> Result<TimelinePage, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "select transaction_id::text || '-' || global_position::text as cursor,
                transaction_id, global_position, organization_id, project_id, entity_type,
                entity_id, event_type, actor, summary, occurred_at
           from timeline_entries where true",
    );
    push_filters(&mut sql, filter);
    // One row more than asked tells whether anything lies beyond the page.
    sql.push(" limit ").push_bind(filter.limit + 1);
    let mut entries: Vec<TimelineEntry> = sql.build_query_as().fetch_all(pool).await?;
    let more = entries.len() as i64 > filter.limit;
    entries.truncate(usize::try_from(filter.limit).unwrap_or(0));
    if let Page::After(_) = filter.page {
        entries.reverse();
    }
    let newest = entries.first().map(TimelineEntry::position);
    let oldest = entries.last().map(TimelineEntry::position);
    let (next_before, next_after) = next_cursors(filter.page, newest, oldest, more);
    Ok(TimelinePage {
        entries,
        next_before: next_before.map(|c| c.to_string()),
        next_after: next_after.to_string(),
    })
}

fn push_filters(sql: &mut QueryBuilder<'_, Postgres>, filter: &TimelineFilter) {
    if let Some(organizations) = &filter.organizations {
        sql.push(" and organization_id = any(")
            .push_bind(organizations.clone())
            .push(")");
    }
    if let Some(project_id) = filter.project_id {
        sql.push(" and project_id = ").push_bind(project_id);
    }
    if let Some(event_type) = &filter.event_type {
        sql.push(" and event_type = ").push_bind(event_type.clone());
    }
    if let Some(entity_type) = filter.entity_type {
        sql.push(" and entity_type = ")
            .push_bind(entity_type.as_str());
    }
    if let Some(entity_id) = filter.entity_id {
        sql.push(" and entity_id = ").push_bind(entity_id);
    }
    if let Some(actor) = &filter.actor {
        sql.push(" and actor = ").push_bind(actor.clone());
    }
    let (comparisons, order) = match filter.page {
        Page::Newest => (vec![], "desc"),
        Page::Before(c) => (vec![("<", c)], "desc"),
        Page::After(c) => (vec![(">", c)], "asc"),
        Page::Between { after, before } => (vec![(">", after), ("<", before)], "desc"),
    };
    for (operator, cursor) in comparisons {
        sql.push(format!(
            " and (transaction_id, global_position) {operator} ("
        ))
        .push_bind(cursor.transaction_id)
        .push(", ")
        .push_bind(cursor.global_position)
        .push(")");
    }
    sql.push(format!(
        " order by transaction_id {order}, global_position {order}"
    ));
}

/// `(next_before, next_after)` for a page whose entries span `newest..=oldest`; `more`
/// says whether entries lie beyond the page in the direction it was read.
pub fn next_cursors(
    page: Page,
    newest: Option<Cursor>,
    oldest: Option<Cursor>,
    more: bool,
) -> (Option<Cursor>, Cursor) {
    let next_before = match page {
        Page::Newest | Page::Before(_) | Page::Between { .. } => oldest.filter(|_| more),
        // Read forwards, so older entries exist whenever the cursor came from one.
        Page::After(c) => oldest.or(Some(c)).filter(|c| *c != Cursor::default()),
    };
    let next_after = match page {
        Page::Newest => newest.unwrap_or_default(),
        Page::Before(c) | Page::After(c) | Page::Between { after: c, .. } => newest.unwrap_or(c),
    };
    (next_before, next_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(t: i64, p: i64) -> Cursor {
        Cursor {
            transaction_id: t,
            global_position: p,
        }
    }

    #[test]
    fn paging_parameters_are_parsed_and_checked() {
        assert_eq!(Page::parse(None, None), Ok(Page::Newest));
        assert_eq!(Page::parse(Some(""), Some("")), Ok(Page::Newest));
        assert_eq!(
            Page::parse(Some("7-3"), None),
            Ok(Page::Before(cursor(7, 3)))
        );
        assert_eq!(
            Page::parse(None, Some("0-0")),
            Ok(Page::After(cursor(0, 0)))
        );
        assert_eq!(
            Page::parse(Some("9-9"), Some("2-2")),
            Ok(Page::Between {
                after: cursor(2, 2),
                before: cursor(9, 9)
            })
        );
        let bad = Page::parse(Some("x"), None).expect_err("a bad cursor");
        assert_eq!(bad.field(), "before");
        let bad = Page::parse(None, Some("1-")).expect_err("a bad cursor");
        assert_eq!(bad.field(), "after");
        assert_eq!(limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(limit(Some(MAX_LIMIT)), Ok(MAX_LIMIT));
        assert_eq!(limit(Some(0)), Err(PageError::Limit));
        assert_eq!(limit(Some(MAX_LIMIT + 1)), Err(PageError::Limit));
    }

    #[test]
    fn next_cursors_continue_exactly_where_a_page_ends() {
        let (newest, oldest) = (Some(cursor(9, 9)), Some(cursor(5, 5)));
        // The newest page: older entries beyond it only when the extra row came back.
        assert_eq!(
            next_cursors(Page::Newest, newest, oldest, true),
            (oldest, cursor(9, 9))
        );
        assert_eq!(
            next_cursors(Page::Newest, newest, oldest, false),
            (None, cursor(9, 9))
        );
        // An empty timeline: poll from the start.
        assert_eq!(
            next_cursors(Page::Newest, None, None, false),
            (None, Cursor::default())
        );
        // Nothing older than the cursor: newer ones start right at it.
        assert_eq!(
            next_cursors(Page::Before(cursor(3, 3)), None, None, false),
            (None, cursor(3, 3))
        );
        // Nothing newer yet: poll with the same cursor.
        assert_eq!(
            next_cursors(Page::After(cursor(9, 9)), None, None, false),
            (Some(cursor(9, 9)), cursor(9, 9))
        );
        assert_eq!(
            next_cursors(Page::After(Cursor::default()), newest, oldest, true),
            (oldest, cursor(9, 9))
        ); // A window: older entries within it when the extra row came back; newer ones
           // than its newest entry after that.
        let window = Page::Between {
            after: cursor(1, 1),
            before: cursor(20, 20),
        };
        assert_eq!(
            next_cursors(window, newest, oldest, true),
            (oldest, cursor(9, 9))
        );
        assert_eq!(
            next_cursors(window, None, None, false),
            (None, cursor(1, 1))
        );
    }
}
