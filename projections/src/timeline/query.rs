//! Reading the timeline: one page of the log's entries, filtered and cursor-paged in both
//! directions, each summarized with the titles its event saw.

use std::collections::HashMap;

use omoi_store::log::Columns;
use omoi_store::{Cursor, StoredEvent};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Row};
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::{Change, Decoded, EntityType, TimelineEntry, TitleKey};
use super::projector::FIRST_VERSION_WITH_HISTORY;
use crate::codec::EventMeta;
use crate::{catalog, ProjectionError};

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

/// Reads one page: the log's entries up to where the live build has applied it, each
/// summarized with the titles its event saw, from that same build's history.
pub async fn read(pool: &PgPool, filter: &TimelineFilter) -> Result<TimelinePage, sqlx::Error> {
    match read_once(pool, filter).await {
        // The build the page was read against was retired, and its schema dropped, before
        // its titles were read: once more, against the build that replaced it.
        Err(error) if undefined_table(&error) => read_once(pool, filter).await,
        read => read,
    }
}

fn undefined_table(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "42P01")
}

async fn read_once(pool: &PgPool, filter: &TimelineFilter) -> Result<TimelinePage, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let columns = Columns::MetadataFields(EventMeta::FIELDS);
    // The live build, read once by the statement (each subquery is an init plan): its
    // checkpoint bounds the page, and its id names the history the titles come from.
    let mut sql = QueryBuilder::<Postgres>::new(format!(
        "select {},
                (select build from projector_builds
                  where projector = 'timeline' and state = 'live') as timeline_build,
                (select code_version from projector_builds
                  where projector = 'timeline' and state = 'live') as timeline_version
           from events
          where (events.transaction_id, events.global_position) <= (
                    (select transaction_id::text::xid8 from projector_builds
                      where projector = 'timeline' and state = 'live'),
                    (select global_position from projector_builds
                      where projector = 'timeline' and state = 'live'))
            and event_type <> all(",
        columns.select()
    ));
    sql.push_bind(Change::NOT_ENTRIES).push(")");
    push_filters(&mut sql, filter);
    // One row more than asked tells whether anything lies beyond the page.
    sql.push(" limit ").push_bind(filter.limit + 1);
    let rows = sql.build().fetch_all(&mut *conn).await?;
    let events = rows
        .iter()
        .map(|row| StoredEvent::from_row_of(row, columns))
        .collect::<Result<Vec<_>, _>>()?;
    let mut entries = match rows.first() {
        Some(row) => {
            let history = History {
                build: row.try_get("timeline_build")?,
                version: row.try_get("timeline_version")?,
            };
            summarized(&mut conn, history, &events).await?
        }
        None => Vec::new(),
    };
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

/// The titles of the build a page was read against. Its rows up to the page's events are
/// final once read (a history is only added to, after them): a second statement finds
/// them as the first left them, with no transaction around the two.
#[derive(Debug, Clone, Copy)]
struct History {
    build: i64,
    version: i32,
}

impl History {
    /// Its table of titles, named after the build (not the view, which may point at
    /// another build by the time it is read).
    fn table(self) -> String {
        format!("{}.titles", catalog::schema_of("timeline", self.build))
    }

    /// How a title of it is chosen for an event: the newest before the event; a build of
    /// a version before the history (still live while its successor rebuilds, after an
    /// upgrade) keeps only the current title of each entity.
    fn as_of(self) -> &'static str {
        match self.version >= FIRST_VERSION_WITH_HISTORY {
            true => {
                "and (t.transaction_id, t.global_position) < (w.transaction_id, w.global_position)
                 order by t.transaction_id desc, t.global_position desc"
            }
            false => "",
        }
    }
}

/// The entries of `events` (every one an entry: the query passed over the rest), named
/// with the titles of `history` as of each event (one query).
async fn summarized(
    conn: &mut PgConnection,
    history: History,
    events: &[StoredEvent],
) -> Result<Vec<TimelineEntry>, sqlx::Error> {
    let unreadable = |error: ProjectionError| sqlx::Error::Decode(error.to_string().into());
    let mut decoded = Vec::with_capacity(events.len());
    for event in events {
        let entity = Decoded::of(event).map_err(unreadable)?;
        decoded.extend(entity);
    }
    // Each event's own entity and the one it refers to, as of the event.
    let wanted: Vec<(TitleKey, Cursor)> = decoded
        .iter()
        .flat_map(|d| {
            let at = d.event.cursor();
            std::iter::once(d.title_key())
                .chain(d.change.reference())
                .map(move |key| (key, at))
        })
        .collect();
    let titles = titles_as_of(conn, history, &wanted).await?;
    let mut entries = Vec::with_capacity(decoded.len());
    for d in &decoded {
        let at = d.event.cursor();
        let title_of = |key: TitleKey| titles.get(&(key, at)).map(String::as_str);
        entries.extend(d.entry(title_of).map_err(unreadable)?);
    }
    Ok(entries)
}

/// The title each of `wanted` had just before its position in `history`: the newest of
/// its entity's rows before it. Absent for an entity not yet created there.
async fn titles_as_of(
    conn: &mut PgConnection,
    history: History,
    wanted: &[(TitleKey, Cursor)],
) -> Result<HashMap<(TitleKey, Cursor), String>, sqlx::Error> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let kinds: Vec<&str> = wanted.iter().map(|((kind, _), _)| kind.as_str()).collect();
    let ids: Vec<Uuid> = wanted.iter().map(|((_, id), _)| *id).collect();
    let transactions: Vec<i64> = wanted.iter().map(|(_, at)| at.transaction_id).collect();
    let positions: Vec<i64> = wanted.iter().map(|(_, at)| at.global_position).collect();
    let found: Vec<Option<String>> = sqlx::query_scalar(&format!(
        "select (select t.title from {table} t
                  where t.entity_type = w.entity_type and t.entity_id = w.entity_id
                  {as_of}
                  limit 1)
           from unnest($1::text[], $2::uuid[], $3::bigint[], $4::bigint[]) with ordinality
                as w(entity_type, entity_id, transaction_id, global_position, n)
          order by w.n",
        table = history.table(),
        as_of = history.as_of(),
    ))
    .bind(kinds)
    .bind(ids)
    .bind(transactions)
    .bind(positions)
    .fetch_all(&mut *conn)
    .await?;
    Ok(wanted
        .iter()
        .zip(found)
        .filter_map(|(wanted, title)| Some((*wanted, title?)))
        .collect())
}

/// The conditions and order of `filter` on the log's entries (the organization, the
/// project, the actor and the time come from the metadata, as the bus writes it; the
/// entity from the aggregate). Each one the planner can walk an index of the log for:
/// `events_by_project` (its predicate repeated so that it is seen to hold),
/// `events_by_organization`, the aggregate's key, or the global order.
fn push_filters(sql: &mut QueryBuilder<'_, Postgres>, filter: &TimelineFilter) {
    if let Some(organizations) = &filter.organizations {
        let organizations: Vec<String> = organizations.iter().map(Uuid::to_string).collect();
        sql.push(" and metadata ->> 'organization_id' = any(")
            .push_bind(organizations)
            .push(")");
    }
    if let Some(project_id) = filter.project_id {
        sql.push(" and metadata ? 'project_id' and metadata ->> 'project_id' = ")
            .push_bind(project_id.to_string());
    }
    if let Some(event_type) = &filter.event_type {
        sql.push(" and event_type = ").push_bind(event_type.clone());
    }
    match filter.entity_type {
        Some(entity_type) => sql
            .push(" and aggregate_type = ")
            .push_bind(entity_type.aggregate_type()),
        None => sql
            .push(" and aggregate_type = any(")
            .push_bind(EntityType::ALL.map(EntityType::aggregate_type).to_vec())
            .push(")"),
    };
    if let Some(entity_id) = filter.entity_id {
        sql.push(" and aggregate_id = ")
            .push_bind(entity_id.to_string());
    }
    if let Some(actor) = &filter.actor {
        sql.push(" and metadata ->> 'actor' = ")
            .push_bind(actor.clone());
    }
    let (comparisons, order) = match filter.page {
        Page::Newest => (vec![], "desc"),
        Page::Before(c) => (vec![("<", c)], "desc"),
        Page::After(c) => (vec![(">", c)], "asc"),
        Page::Between { after, before } => (vec![(">", after), ("<", before)], "desc"),
    };
    for (operator, cursor) in comparisons {
        sql.push(format!(
            " and (events.transaction_id, events.global_position) {operator} ("
        ))
        .push_bind(cursor.transaction_id)
        .push("::bigint::text::xid8, ")
        .push_bind(cursor.global_position)
        .push(")");
    }
    // Qualified: bare `transaction_id` names the select list's `bigint`, and sorting by
    // it sorts every entry instead of walking an index.
    sql.push(format!(
        " order by events.transaction_id {order}, events.global_position {order}"
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
