//! Audit: one aggregate's events and its state as of any of them; the global stream.

use axum::Json;
use cqrs_es::Aggregate;
use omoi_domain::access::Permission;
use omoi_domain::common::Scoped;
use omoi_store::log::{
    aggregate_history_within, apply_until, fold_until, last_sequence, read_global_within,
    CorruptEvent, Visibility, PAGE_BYTES,
};
use omoi_store::Cursor;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Query;
use crate::read::replay_turn;
use crate::responses::{EventRecord, History};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Also return the state as it was right after the event with this sequence number
    /// (404 `no_such_event` past the last one).
    #[param(minimum = 1)]
    pub as_of: Option<i64>,
    /// Return the events after this sequence number (`next_after` of the page before);
    /// 0 or absent for the first.
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Events per page, 1 to 1000 (default 1000). A page also ends once its events weigh
    /// about 4 MiB (it holds at least one): follow `next_after` until it is absent.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// The most events a history page holds.
const MAX_HISTORY_LIMIT: i64 = 1000;

impl HistoryQuery {
    /// `(as_of, after, limit)`, checked.
    fn checked(&self) -> ApiResult<(Option<i64>, i64, i64)> {
        if self.as_of.is_some_and(|n| n < 1) {
            return Err(ApiError::invalid(
                "as_of_out_of_range",
                "as_of",
                "as_of is an event's sequence: 1 or more",
            ));
        }
        let after = self.after.unwrap_or(0);
        if after < 0 {
            return Err(ApiError::bad_request(
                "after is an event's sequence: 0 or more",
                Some("after"),
            ));
        }
        let limit = self.limit.unwrap_or(MAX_HISTORY_LIMIT);
        if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                format!("limit must be between 1 and {MAX_HISTORY_LIMIT}"),
                Some("limit"),
            ));
        }
        Ok((self.as_of, after, limit))
    }
}

/// One page of the history of `A` `id` and its state as of an event; 404 when it has no
/// events. Access is decided before anything but the creation is read, and neither the
/// page nor the fold holds more than a page of events in memory.
pub async fn history_of<A>(
    state: &AppState,
    caller: &Caller,
    permission: Permission,
    id: Uuid,
    query: &HistoryQuery,
) -> ApiResult<Json<History<A>>>
where
    A: Aggregate + Scoped + Clone + 'static,
{
    let what = "resource";
    let (as_of, after, limit) = query.checked()?;
    let id_text = id.to_string();
    let pool = state.pool();
    // The scope is fixed by the creation event, so the creation decides access.
    let (creation, _) = aggregate_history_within(pool, A::TYPE, &id_text, 0, 1, PAGE_BYTES).await?;
    if creation.is_empty() {
        return Err(ApiError::NotFound { what });
    }
    caller.authorize(
        fold_until::<A>(&creation, None).map_err(corrupt)?.scope(),
        permission,
        what,
    )?;
    let (events, full) =
        aggregate_history_within(pool, A::TYPE, &id_text, after, limit, PAGE_BYTES).await?;
    // A page that ended before its bounds ends at the history's last event.
    let version = match events.last() {
        Some(last) if !full => last.sequence,
        _ => last_sequence(pool, A::TYPE, &id_text)
            .await?
            .ok_or(ApiError::NotFound { what })?,
    };
    if let Some(n) = as_of.filter(|n| *n > version) {
        // A well-formed sequence that names no event of this history (yet).
        return Err(ApiError::Status {
            status: axum::http::StatusCode::NOT_FOUND,
            code: "no_such_event",
            detail: format!("the history has {version} events; as_of {n} names none"),
        });
    }
    let until = as_of.unwrap_or(version);
    let state_as_of = match events.last() {
        // The first page, when it reaches `until`, is all the fold needs (a history of up
        // to a page, read once).
        Some(last) if after == 0 && last.sequence >= until => {
            fold_until::<A>(&events, Some(until)).map_err(corrupt)?
        }
        // The state now, as commands keep it (never loaded for this: a load reads the
        // whole history), when it is at the version read: paging through a long history
        // then costs a page per request, not a fold of all of it.
        _ if as_of.is_none() => match state.bus.kept::<A>(&id_text) {
            Some((kept, at)) if i64::try_from(at).ok() == Some(version) => kept,
            _ => fold_turn::<A>(state, &id_text, until).await?,
        },
        _ => fold_turn::<A>(state, &id_text, until).await?,
    };
    let next_after = events.last().map(|e| e.sequence).filter(|_| full);
    Ok(Json(History {
        aggregate_type: A::TYPE.to_string(),
        aggregate_id: id,
        version,
        as_of: until,
        state: state_as_of,
        events: events.into_iter().map(EventRecord::from).collect(),
        next_after,
    }))
}

/// An event of the history that does not read as its aggregate's: a server fault.
fn corrupt(error: CorruptEvent) -> ApiError {
    ApiError::Internal(error.to_string())
}

/// [`fold_paged`] in a turn of the replays' limiter (429 when every turn is taken), as
/// other views of past states are.
async fn fold_turn<A: Aggregate>(state: &AppState, id: &str, until: i64) -> ApiResult<A> {
    let _turn = replay_turn(state).await?;
    fold_paged::<A>(state.pool(), id, until).await
}

/// The events a fold reads at a time.
const FOLD_PAGE: i64 = 1000;

/// The state of `A` `id` after its event `until`, folded a page at a time.
async fn fold_paged<A: Aggregate>(pool: &sqlx::PgPool, id: &str, until: i64) -> ApiResult<A> {
    let mut folded = A::default();
    let mut after = 0;
    while after < until {
        let (events, _) = aggregate_history_within(
            pool,
            A::TYPE,
            id,
            after,
            FOLD_PAGE.min(until - after),
            PAGE_BYTES,
        )
        .await?;
        let Some(last) = events.last().map(|e| e.sequence) else {
            break;
        };
        apply_until(&mut folded, &events, Some(until)).map_err(corrupt)?;
        after = last;
    }
    Ok(folded)
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(global_stream))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Cursor returned by the previous page (`next_cursor`); `0-0` or absent for the start.
    #[param(schema_with = crate::openapi::cursor)]
    pub after: Option<String>,
    /// Page size, 1 to 1000 (default 100). A page also ends once its events weigh about
    /// 4 MiB (it holds at least one): follow `next_cursor` until a page comes back empty.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

impl StreamQuery {
    /// The cursor (the start when absent) and the page size, checked.
    pub fn checked(&self) -> ApiResult<(Cursor, i64)> {
        let after = match self.after.as_deref() {
            None | Some("") => Cursor::default(),
            Some(raw) => raw.parse().map_err(|e: omoi_store::log::BadCursor| {
                ApiError::bad_request(e.to_string(), Some("after"))
            })?,
        };
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request(
                "limit must be between 1 and 1000",
                Some("limit"),
            ));
        }
        Ok((after, limit))
    }
}

/// A page of the global event stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamPage {
    pub events: Vec<EventRecord>,
    /// Pass as `after` to read the next page. Equals the request's cursor when nothing new
    /// is visible yet.
    pub next_cursor: String,
}

/// Every event of the caller's organizations in one gapless order: a reader that follows
/// `next_cursor` sees each committed event exactly once, even when transactions commit
/// out of position order. Events of other organizations are filtered out in SQL.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(StreamQuery),
    responses(
        (status = 200, body = StreamPage),
        (status = 400, body = Problem, description = "bad cursor or limit"),
    )
)]
async fn global_stream(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: Caller,
    Query(query): Query<StreamQuery>,
) -> ApiResult<Json<StreamPage>> {
    let (after, limit) = query.checked()?;
    let visibility = if caller.is_super_admin() {
        Visibility::Everything
    } else {
        Visibility::Organizations {
            organizations: caller.visible_organizations(),
            project: caller.project_limit(),
        }
    };
    let page = read_global_within(state.pool(), after, limit, PAGE_BYTES, &visibility)
        .await?
        .page;
    Ok(Json(StreamPage {
        next_cursor: page.next.to_string(),
        events: page.events.into_iter().map(EventRecord::from).collect(),
    }))
}
