//! Reading the event log.
//!
//! Two orders exist. Within one aggregate, events are ordered by `sequence`. Across the
//! whole log, the order is `(transaction_id, global_position)`, and a reader only ever
//! sees transactions below the oldest one still running (`pg_snapshot_xmin`): positions
//! are handed out at insert and committed out of order, so reading "everything after
//! position N" would skip an event whose transaction committed late. With this rule a
//! slow transaction delays readers (lag) but can never be skipped (loss).

use std::fmt;
use std::str::FromStr;

use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgValueFormat;
use sqlx::{PgPool, Row};

use crate::json::{Metadata, MetadataField, RawJson};

/// One event as stored, with both of its positions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Position within the aggregate, from 1.
    pub sequence: i64,
    /// Position in the global stream (read together with `transaction_id`).
    pub global_position: i64,
    pub transaction_id: i64,
    pub event_type: String,
    pub event_version: String,
    /// The event's fields as its aggregate wrote them: decode with [`RawJson::decode`].
    pub payload: RawJson,
    pub metadata: Metadata,
}

impl StoredEvent {
    /// The event's name as a cause: `<aggregate type>/<aggregate id>/<sequence>`, what a
    /// command it caused records as its `causation_id`.
    pub fn reference(&self) -> String {
        format!(
            "{}/{}/{}",
            self.aggregate_type, self.aggregate_id, self.sequence
        )
    }

    /// When the event was recorded (its metadata's `occurred_at`, written by the command
    /// bus); `None` if the metadata says nothing usable.
    pub fn occurred_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.metadata
            .occurred_at()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// About what the event holds in memory: its payload's text and a share for its other
    /// fields.
    pub fn weight(&self) -> usize {
        self.payload.get().len() + EVENT_FIELDS_WEIGHT
    }

    /// The cursor that points just after this event in the global stream.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            transaction_id: self.transaction_id,
            global_position: self.global_position,
        }
    }

    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Self::from_row_of(row, Columns::Everything)
    }

    /// An event of a row that holds `columns` (a query selecting [`Columns::select`]).
    pub fn from_row_of(row: &sqlx::postgres::PgRow, columns: Columns) -> Result<Self, sqlx::Error> {
        let metadata = match columns {
            Columns::Everything => raw_json(row, "metadata")?.into(),
            Columns::MetadataFields(fields) => Metadata::from_fields(
                streamed_fields(fields)
                    .map(|field| Ok((field, row.try_get(metadata_column(field))?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?,
            ),
        };
        Ok(Self {
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            global_position: row.try_get("global_position")?,
            transaction_id: row.try_get("transaction_id")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: raw_json(row, "payload")?,
            metadata,
        })
    }
}

/// A `jsonb` column as its text (never as a tree, and not parsed: see [`crate::json`]).
fn raw_json(row: &sqlx::postgres::PgRow, column: &str) -> Result<RawJson, sqlx::Error> {
    let value = row.try_get_raw(column)?;
    let format = value.format();
    let bytes = value.as_bytes().map_err(sqlx::Error::Decode)?;
    // The binary form is a format version (1), then the text.
    let text = match (format, bytes.split_first()) {
        (PgValueFormat::Text, _) => bytes,
        (PgValueFormat::Binary, Some((1, text))) => text,
        (PgValueFormat::Binary, _) => {
            return Err(sqlx::Error::Decode(
                format!("{column}: a jsonb value of an unknown format version").into(),
            ))
        }
    };
    let text = std::str::from_utf8(text).map_err(|e| sqlx::Error::Decode(e.into()))?;
    Ok(RawJson::from_jsonb(text))
}

/// A place in the global stream: everything up to and including this pair has been read.
/// Written as `<transaction_id>-<global_position>`; `0-0` is the beginning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub transaction_id: i64,
    pub global_position: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.transaction_id, self.global_position)
    }
}

/// Why a cursor string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a cursor is two non-negative integers joined by '-', like 0-0 or 7411-52")]
pub struct BadCursor;

impl Cursor {
    /// The text form as a regular expression, the empty string included (read as the
    /// start by the routes that take a cursor). Eighteen digits are more than any
    /// position or transaction id reaches, and always fit an `i64`.
    pub const PATTERN: &'static str = "^([0-9]{1,18}-[0-9]{1,18})?$";
}

impl FromStr for Cursor {
    type Err = BadCursor;

    /// Exactly the non-empty strings of [`Cursor::PATTERN`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (xid, position) = s.split_once('-').ok_or(BadCursor)?;
        let parse = |part: &str| {
            let digits = (1..=18).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
            digits
                .then(|| part.parse::<i64>().ok())
                .flatten()
                .ok_or(BadCursor)
        };
        Ok(Self {
            transaction_id: parse(xid)?,
            global_position: parse(position)?,
        })
    }
}

/// A page of the global stream.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Where the next page starts: after the last event of this page, or the requested
    /// cursor again when nothing new is visible yet.
    pub next: Cursor,
}

/// The log's columns as [`StoredEvent::from_row`] reads them, `$metadata` standing for
/// the metadata column.
macro_rules! log_columns {
    ($metadata:literal) => {
        concat!(
            "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, ",
            $metadata,
            ", global_position, transaction_id::text::bigint as transaction_id"
        )
    };
}

const COLUMNS: &str = log_columns!("metadata");

/// Which of the log's columns a streaming reader takes ([`stream_global`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Columns {
    /// Every column.
    #[default]
    Everything,
    /// Every column but the metadata, of which only these fields are read, each as
    /// `metadata->>'<field>'` ([`Metadata::from_fields`]; none for an empty list), and
    /// `occurred_at`, which the projection runner reads for a build's lag. Rendering
    /// each event's metadata as text is a third to a half of what the server does to hand
    /// the log over, where taking a few fields out of it is next to nothing: a `COPY` of
    /// the generated log of `omoi-bench bench-projections` (308 bytes of metadata against
    /// 125–212 of payload), its payloads with the whole metadata 3.1–3.7 s, with two fields
    /// 1.5–1.6 s, with none 1.4–1.7 s. The text of a field holding something other than a
    /// string (which the command bus never writes) is read as that value's text, where
    /// the whole metadata reads it as absent.
    MetadataFields(&'static [MetadataField]),
}

impl Columns {
    /// Every column but the metadata (of which only `occurred_at` comes, for the runner).
    pub const WITHOUT_METADATA: Self = Self::MetadataFields(&[]);

    /// The metadata fields a reader of these columns gets: those named and `occurred_at`
    /// ([`streamed_fields`]); `None` for the whole metadata.
    pub fn metadata_fields(self) -> Option<Vec<MetadataField>> {
        match self {
            Self::Everything => None,
            Self::MetadataFields(fields) => Some(streamed_fields(fields).collect()),
        }
    }

    /// The select list of a query of the `events` table reading these columns, as
    /// [`StoredEvent::from_row_of`] decodes them (`transaction_id` as a `bigint`: qualify it
    /// as `events.transaction_id` to order or compare by the log's own column).
    pub fn select(self) -> String {
        let Self::MetadataFields(fields) = self else {
            return COLUMNS.to_string();
        };
        let mut select = log_columns!("null::jsonb as metadata").to_string();
        for field in streamed_fields(fields) {
            let (key, column) = (field.key(), metadata_column(field));
            select.push_str(&format!(", metadata->>'{key}' as {column}"));
        }
        select
    }
}

/// The metadata fields [`Columns::MetadataFields`] streams: those asked for, and the time
/// the event was recorded, which the runner reads for a build's lag (`record_batch`).
fn streamed_fields(fields: &[MetadataField]) -> impl Iterator<Item = MetadataField> + '_ {
    let asked = fields.iter().copied();
    asked
        .filter(|&field| field != MetadataField::OccurredAt)
        .chain([MetadataField::OccurredAt])
}

/// The column [`Columns::select`] reads a metadata field into.
fn metadata_column(field: MetadataField) -> &'static str {
    match field {
        MetadataField::OrganizationId => "metadata_organization_id",
        MetadataField::ProjectId => "metadata_project_id",
        MetadataField::Actor => "metadata_actor",
        MetadataField::CorrelationId => "metadata_correlation_id",
        MetadataField::CausationId => "metadata_causation_id",
        MetadataField::OccurredAt => "metadata_occurred_at",
    }
}

/// Which events a reader may see.
#[derive(Debug, Clone)]
pub enum Visibility {
    /// Operators and projectors.
    Everything,
    /// Events of these organizations, optionally only of one project.
    Organizations {
        organizations: Vec<uuid::Uuid>,
        project: Option<uuid::Uuid>,
    },
}

impl Visibility {
    /// The organizations and the project a query filters on (`None`: any).
    fn bindings(&self) -> (Option<Vec<String>>, Option<String>) {
        match self {
            Self::Everything => (None, None),
            Self::Organizations {
                organizations,
                project,
            } => (
                Some(organizations.iter().map(ToString::to_string).collect()),
                project.map(|p| p.to_string()),
            ),
        }
    }

    /// The conditions of a query reading the log as this reader may, over the parameters
    /// `$<organizations>` (`text[]`) and the one after it (`text`) that [`Self::bindings`]
    /// binds. Written out per case, not as `$n is null or …`: the planner then walks the
    /// organization's or the project's index (`events_by_organization`,
    /// `events_by_project`) in every plan, generic ones included.
    fn conditions(&self, organizations: usize) -> String {
        let project = organizations + 1;
        match self {
            Self::Everything => {
                format!("${organizations}::text[] is null and ${project}::text is null")
            }
            Self::Organizations { project: None, .. } => format!(
                "metadata ->> 'organization_id' = any(${organizations}) and ${project}::text is null"
            ),
            Self::Organizations {
                project: Some(_), ..
            } => format!(
                "metadata ->> 'organization_id' = any(${organizations})
                 and metadata ? 'project_id' and metadata ->> 'project_id' = ${project}"
            ),
        }
    }
}

/// The visible events after `$1-$2` that `visibility` shows (its organizations `$4`, its
/// project `$5`), in the gapless global order; `limited` adds `limit $3`.
fn global_query(visibility: &Visibility, limited: bool, columns: Columns) -> String {
    let limit = if limited { "limit $3" } else { "" };
    let visible = visibility.conditions(4);
    let select = columns.select();
    format!(
        "select {select} from events
          where (transaction_id, global_position) > ($1::bigint::text::xid8, $2)
            and transaction_id < pg_snapshot_xmin(pg_current_snapshot())
            and {visible}
          -- Qualified: bare `transaction_id` would name the bigint output column, and
          -- sorting by it scans and sorts the whole log instead of walking the index.
          order by events.transaction_id, events.global_position
          {limit}"
    )
}

/// The limited [`global_query`] `sql` with a page's parameters bound: the one place
/// that knows their order.
fn global_page<'q>(
    sql: &'q str,
    after: Cursor,
    limit: i64,
    visibility: &Visibility,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (organizations, project) = visibility.bindings();
    sqlx::query(sql)
        .bind(after.transaction_id)
        .bind(after.global_position)
        .bind(limit)
        .bind(organizations)
        .bind(project)
}

/// Reads up to `limit` visible events after `after`, in the gapless global order.
pub async fn read_global<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    after: Cursor,
    limit: i64,
    visibility: &Visibility,
) -> Result<EventPage, sqlx::Error> {
    let sql = global_query(visibility, true, Columns::Everything);
    let rows = global_page(&sql, after, limit, visibility)
        .fetch_all(executor)
        .await?;
    let events = rows
        .iter()
        .map(StoredEvent::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = events.last().map_or(after, StoredEvent::cursor);
    Ok(EventPage { events, next })
}

/// What [`StoredEvent::weight`] counts for an event's fields besides its payload.
const EVENT_FIELDS_WEIGHT: usize = 512;

/// What a page read for a request may weigh ([`read_global_within`]): a spec's plan is
/// an event of up to a quarter of a megabyte, so a page of a thousand of them would hold
/// a quarter of a gigabyte for one caller.
pub const PAGE_BYTES: usize = 4 << 20;

/// A page read within a weight, and whether events may follow it unread.
#[derive(Debug, Clone)]
pub struct WeighedPage {
    pub page: EventPage,
    /// The page ended at its limit or its weight, not at the end of what is visible.
    pub full: bool,
}

/// Like [`read_global`], but the page also ends once its events weigh `max_bytes`
/// ([`StoredEvent::weight`]; it holds at least one event): for a reader holding a page in
/// memory on a caller's behalf. The rows are taken as they arrive; those the server sends
/// past the weight are dropped without being decoded.
pub async fn read_global_within<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    after: Cursor,
    limit: i64,
    max_bytes: usize,
    visibility: &Visibility,
) -> Result<WeighedPage, sqlx::Error> {
    let sql = global_query(visibility, true, Columns::Everything);
    let rows = global_page(&sql, after, limit, visibility).fetch(executor);
    let (events, full) = take_within(rows, limit, max_bytes).await?;
    let next = events.last().map_or(after, StoredEvent::cursor);
    Ok(WeighedPage {
        page: EventPage { events, next },
        full,
    })
}

/// The events of `rows` as they arrive, until `limit` of them or `max_bytes` of their
/// weight (at least one); `true` when either bound ended them. Rows the server sends past
/// it are dropped undecoded.
async fn take_within(
    mut rows: impl futures_util::Stream<Item = Result<sqlx::postgres::PgRow, sqlx::Error>> + Unpin,
    limit: i64,
    max_bytes: usize,
) -> Result<(Vec<StoredEvent>, bool), sqlx::Error> {
    use futures_util::TryStreamExt;

    let mut events = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.try_next().await? {
        let event = StoredEvent::from_row(&row)?;
        bytes += event.weight();
        events.push(event);
        if bytes >= max_bytes || events.len() as i64 >= limit {
            return Ok((events, true));
        }
    }
    Ok((events, false))
}

/// A page of the gapless stream and events after it that have already committed.
#[derive(Debug, Clone)]
pub struct PageAhead {
    /// What [`read_global`] reads: the events below the oldest running transaction.
    pub page: EventPage,
    /// Committed events beyond that horizon, in the global order: a transaction that is
    /// still running may yet put events before these, so the gapless stream hands them
    /// over only once it ends — they come again then. An aggregate's events commit in its
    /// sequence order, so for each aggregate these follow on from what came before them.
    pub ahead: Vec<StoredEvent>,
    /// Where the next read ahead starts: after the last of `ahead`.
    pub ahead_next: Cursor,
}

/// Reads up to `limit` events of the gapless stream after `after` and, in the same
/// statement (one snapshot), up to `ahead_limit` committed events beyond its horizon after
/// `ahead_after` — for a reader that must act at once on each aggregate's latest events
/// (the worker dispatching a task created a moment ago) while it keeps its place in the
/// gapless order: one transaction left open anywhere holds [`read_global`] back, not
/// this one's `ahead`.
///
/// The caller passes the `ahead_next` of its last read as `ahead_after` (or its place in
/// the stream, if that is further), so that while a transaction holds the horizon for
/// long, each read takes only what committed since the last one. An event of an older
/// transaction committing after that is then not read ahead; the gapless stream brings it.
pub async fn read_global_ahead<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    after: Cursor,
    limit: i64,
    ahead_after: Cursor,
    ahead_limit: i64,
) -> Result<PageAhead, sqlx::Error> {
    // Each branch walks the log's index from where it starts; the horizon is the
    // statement's, the same for both.
    let sql = format!(
        "(select {COLUMNS}, true as settled from events
           where (transaction_id, global_position) > ($1::bigint::text::xid8, $2)
             and transaction_id < pg_snapshot_xmin(pg_current_snapshot())
           order by events.transaction_id, events.global_position
           limit $3)
         union all
         (select {COLUMNS}, false as settled from events
           where (transaction_id, global_position) > ($4::bigint::text::xid8, $5)
             and transaction_id >= pg_snapshot_xmin(pg_current_snapshot())
           order by events.transaction_id, events.global_position
           limit $6)"
    );
    let rows = sqlx::query(&sql)
        .bind(after.transaction_id)
        .bind(after.global_position)
        .bind(limit)
        .bind(ahead_after.transaction_id)
        .bind(ahead_after.global_position)
        .bind(ahead_limit)
        .fetch_all(executor)
        .await?;
    let mut events = Vec::with_capacity(rows.len());
    let mut ahead = Vec::new();
    for row in &rows {
        let event = StoredEvent::from_row(row)?;
        if row.try_get::<bool, _>("settled")? {
            events.push(event);
        } else {
            ahead.push(event);
        }
    }
    let next = events.last().map_or(after, StoredEvent::cursor);
    let ahead_next = ahead.last().map_or(ahead_after, StoredEvent::cursor);
    Ok(PageAhead {
        page: EventPage { events, next },
        ahead,
        ahead_next,
    })
}

/// Every event visible now after `after`, in the gapless global order, handed to `pages`
/// in pages of `page_size` as one query streams them: the server produces rows while the
/// pages before are decoded and used, where [`read_global`]'s pages each wait for the
/// other side (a catch-up reads the log this way). Ends at the end of what the query's
/// snapshot saw (read on from the last page's `next`), or early once `pages` is closed.
/// The pages are [`EventPage`]s whose `next` follows their last event; their events hold
/// the `columns` asked for.
pub async fn stream_global(
    pool: PgPool,
    after: Cursor,
    page_size: usize,
    columns: Columns,
    pages: tokio::sync::mpsc::Sender<EventPage>,
) -> Result<(), sqlx::Error> {
    use futures_util::TryStreamExt;

    let sql = global_query(&Visibility::Everything, false, columns);
    // `$3`, the limit, is not in the text: bound (typed) only to keep the numbering.
    let mut rows = sqlx::query(&sql)
        .bind(after.transaction_id)
        .bind(after.global_position)
        .bind(None::<i64>)
        .bind(None::<Vec<String>>)
        .bind(None::<String>)
        .fetch(&pool);
    let page_size = page_size.max(1);
    let mut events = Vec::with_capacity(page_size);
    let mut next = after;
    while let Some(row) = rows.try_next().await? {
        let event = StoredEvent::from_row_of(&row, columns)?;
        next = event.cursor();
        events.push(event);
        if events.len() == page_size {
            let full = std::mem::replace(&mut events, Vec::with_capacity(page_size));
            if pages.send(EventPage { events: full, next }).await.is_err() {
                return Ok(());
            }
        }
    }
    if !events.is_empty() {
        let _ = pages.send(EventPage { events, next }).await;
    }
    Ok(())
}

/// The events at `positions` (each an event's own place, as [`StoredEvent::cursor`]
/// gives it), in the order asked, up to the first at which they weigh `max_bytes`
/// together ([`StoredEvent::weight`]; at least one); positions naming no event are left
/// out.
pub async fn events_at(
    pool: &PgPool,
    positions: &[Cursor],
    max_bytes: usize,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let (transactions, globals): (Vec<i64>, Vec<i64>) = positions
        .iter()
        .map(|p| (p.transaction_id, p.global_position))
        .unzip();
    // `e.*` names the columns of COLUMNS without the pair `wanted` also has.
    let sql = "select e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
                      e.event_version, e.payload, e.metadata, e.global_position,
                      e.transaction_id::text::bigint as transaction_id
                 from unnest($1::bigint[], $2::bigint[]) with ordinality
                      as wanted(transaction_id, global_position, place)
                 join events e on e.transaction_id = wanted.transaction_id::text::xid8
                              and e.global_position = wanted.global_position
                order by wanted.place";
    let rows = sqlx::query(sql)
        .bind(transactions)
        .bind(globals)
        .fetch(pool);
    let limit = i64::try_from(positions.len()).unwrap_or(i64::MAX);
    Ok(take_within(rows, limit, max_bytes).await?.0)
}

/// How many visible events lie in `(after, until]`, counting no further than `limit`: a
/// reader that must not take more than `limit` of them learns so without reading them.
pub async fn count_global(
    pool: &PgPool,
    after: Cursor,
    until: Cursor,
    limit: i64,
    visibility: &Visibility,
) -> Result<i64, sqlx::Error> {
    let (organizations, project) = visibility.bindings();
    // Ordered like `read_global`, so that the limit stops a walk of the index rather
    // than a scan of the log.
    let visible = visibility.conditions(6);
    let sql = format!(
        "select count(*) from (
           select 1 from events
            where (transaction_id, global_position) > ($1::bigint::text::xid8, $2)
              and (transaction_id, global_position) <= ($3::bigint::text::xid8, $4)
              and {visible}
            order by events.transaction_id, events.global_position
            limit $5) counted"
    );
    sqlx::query_scalar(&sql)
        .bind(after.transaction_id)
        .bind(after.global_position)
        .bind(until.transaction_id)
        .bind(until.global_position)
        .bind(limit)
        .bind(organizations)
        .bind(project)
        .fetch_one(pool)
        .await
}

/// Every event of one aggregate, by sequence.
pub async fn aggregate_history<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql = format!(
        "select {COLUMNS} from events
          where aggregate_type = $1 and aggregate_id = $2
          order by sequence"
    );
    let rows = sqlx::query(&sql)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(executor)
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// Up to `limit` events of one aggregate after its sequence `after`, in sequence order,
/// ending once they weigh `max_bytes` (at least one): a history read a page at a time on
/// a caller's behalf. `true` when a bound ended the page (more may follow).
pub async fn aggregate_history_within<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    aggregate_type: &str,
    aggregate_id: &str,
    after: i64,
    limit: i64,
    max_bytes: usize,
) -> Result<(Vec<StoredEvent>, bool), sqlx::Error> {
    let sql = format!(
        "select {COLUMNS} from events
          where aggregate_type = $1 and aggregate_id = $2 and sequence > $3
          order by sequence
          limit $4"
    );
    let rows = sqlx::query(&sql)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after)
        .bind(limit)
        .fetch(executor);
    take_within(rows, limit, max_bytes).await
}

/// The sequence of an aggregate's last event; `None` when it has none.
pub async fn last_sequence<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "select max(sequence) from events where aggregate_type = $1 and aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_one(executor)
    .await
}

/// The sequence and payload of every event of one aggregate after its first `after`
/// (what a kept state lacks; usually nothing).
pub async fn aggregate_tail<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    aggregate_type: &str,
    aggregate_id: &str,
    after: i64,
) -> Result<Vec<(i64, serde_json::Value)>, sqlx::Error> {
    sqlx::query_as(
        "select sequence, payload from events
          where aggregate_type = $1 and aggregate_id = $2 and sequence > $3
          order by sequence",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(after)
    .fetch_all(executor)
    .await
}

/// Every event of several aggregates of one type, by aggregate id and sequence (one query).
///
/// Each id is looked up by the key, whatever the statistics say: with
/// `aggregate_id = any($2)`, or a plain join, the planner walked every event of the type
/// when its statistics were taken before the type had many (a process manager's batch
/// soon after a start: 7,476 events walked for 435 wanted, 17 ms), and tested each
/// against the whole array (a prepared statement's array is a parameter, never hashed).
/// The subquery's `order by` keeps it from being flattened into such a join.
pub async fn histories<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    aggregate_type: &str,
    aggregate_ids: &[String],
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    histories_of(executor, &[(aggregate_type, aggregate_ids)], None).await
}

/// Aggregates named by others' first events: those of type `named_type` whose ids the
/// first events of `referrers` (aggregates of `referrer_type`) hold in their payload at
/// `path` — a ticket's spec, named by its creation.
#[derive(Debug, Clone, Copy)]
pub struct NamedBy<'a> {
    pub named_type: &'a str,
    pub referrer_type: &'a str,
    pub referrers: &'a [String],
    pub path: &'a [&'a str],
    /// Only the named aggregates' events of this type (`None`: their whole histories) —
    /// for a reader that needs one fact, such as whether a spec was archived, and not
    /// the rest of a history whose payloads are large (a spec's plan).
    pub only: Option<&'a str>,
}

/// Every event of the aggregates of several types — each `(type, ids)` of `wanted`, and
/// those `named` names (only its events of one type, if it says so) — by type, id and
/// sequence, with one query (on a busy machine a process manager's batch is mostly its
/// round trips), each looked up by the key as [`histories`] says. An aggregate both
/// wanted and named comes once, whole.
pub async fn histories_of<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    wanted: &[(&str, &[String])],
    named: Option<NamedBy<'_>>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let (mut aggregate_types, mut aggregate_ids) = (Vec::new(), Vec::new());
    for (aggregate_type, ids) in wanted {
        aggregate_types.extend(std::iter::repeat_n(*aggregate_type, ids.len()));
        aggregate_ids.extend(ids.iter().map(String::as_str));
    }
    // `only_type` null: the whole history. Grouped so that an aggregate wanted both ways is
    // read once, whole.
    let sql = format!(
        "select history.* from (
             select type, id, case when bool_or(only_type is null) then null else min(only_type) end
               from (select type, id, null::text from unnest($1::text[], $2::text[]) as w(type, id)
                     union all
                     select $3, first.payload #>> $6::text[], $7::text
                       from unnest($4::text[]) as referrer(id)
                       cross join lateral (
                           select payload from events
                            where aggregate_type = $5 and aggregate_id = referrer.id
                              and sequence = 1
                       ) as first
                      where first.payload #>> $6::text[] is not null
                    ) as asked(type, id, only_type)
              group by type, id
           ) as wanted(type, id, only_type)
           cross join lateral (
               select {COLUMNS} from events
                where aggregate_type = wanted.type and aggregate_id = wanted.id
                  and (wanted.only_type is null or event_type = wanted.only_type)
                order by sequence) as history
          order by history.aggregate_type, history.aggregate_id, history.sequence"
    );
    let none = NamedBy {
        named_type: "",
        referrer_type: "",
        referrers: &[],
        path: &[],
        only: None,
    };
    let named = named.unwrap_or(none);
    let rows = sqlx::query(&sql)
        .bind(&aggregate_types)
        .bind(&aggregate_ids)
        .bind(named.named_type)
        .bind(named.referrers)
        .bind(named.referrer_type)
        .bind(named.path)
        .bind(named.only)
        .fetch_all(executor)
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// An event whose payload no longer matches its type: a bug or a missing upcaster.
#[derive(Debug, thiserror::Error)]
#[error("event {aggregate_type}/{aggregate_id}#{sequence} cannot be read: {source}")]
pub struct CorruptEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    #[source]
    pub source: serde_json::Error,
}

/// The state of an aggregate after its events up to and including sequence `as_of`
/// (all of them when `None`): the audit view of "what did it look like then".
pub fn fold_until<A: Aggregate>(
    history: &[StoredEvent],
    as_of: Option<i64>,
) -> Result<A, CorruptEvent> {
    let mut state = A::default();
    apply_until(&mut state, history, as_of)?;
    Ok(state)
}

/// Applies to `state` the events of `history` up to and including sequence `as_of` (all
/// of them when `None`): [`fold_until`] for a history read a page at a time.
pub fn apply_until<A: Aggregate>(
    state: &mut A,
    history: &[StoredEvent],
    as_of: Option<i64>,
) -> Result<(), CorruptEvent> {
    for stored in history
        .iter()
        .take_while(|e| as_of.is_none_or(|n| e.sequence <= n))
    {
        let event: A::Event = stored.payload.decode().map_err(|source| CorruptEvent {
            aggregate_type: stored.aggregate_type.clone(),
            aggregate_id: stored.aggregate_id.clone(),
            sequence: stored.sequence,
            source,
        })?;
        state.apply(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor: Cursor = "7411-52".parse().expect("a valid cursor");
        assert_eq!(cursor.to_string(), "7411-52");
        assert_eq!("0-0".parse::<Cursor>(), Ok(Cursor::default()));
        for bad in ["", "7", "a-b", "-1-2", "1-", "1-2-3", "+1-2", "1- 2"] {
            assert_eq!(bad.parse::<Cursor>(), Err(BadCursor), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// The parser accepts what the documented pattern matches (but the empty string,
        /// which routes read as the start) and nothing else.
        #[test]
        fn cursors_parse_exactly_the_documented_pattern(
            text in "[0-9+ -]{0,3}[0-9]{0,20}[-+]?[0-9]{0,20}"
        ) {
            let pattern = regex_lite::Regex::new(Cursor::PATTERN).expect("a valid pattern");
            let documented = pattern.is_match(&text) && !text.is_empty();
            proptest::prop_assert_eq!(text.parse::<Cursor>().is_ok(), documented, "{}", text);
        }
    }
}
