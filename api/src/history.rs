//! Audit: one aggregate's events and its state as of any of them; the global stream.

use axum::Json;
use cqrs_es::Aggregate;
use omoi_domain::access::Permission;
use omoi_domain::common::Scoped;
use omoi_store::log::{aggregate_history, fold_until, read_global_within, Visibility, PAGE_BYTES};
use omoi_store::Cursor;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Query;
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
}

/// Loads the history of `A` `id`; 404 when it has no events.
pub async fn history_of<A: Aggregate + Scoped>(
    state: &AppState,
    caller: &Caller,
    permission: Permission,
    id: Uuid,
    as_of: Option<i64>,
) -> ApiResult<Json<History<A>>> {
    let what = "resource";
    let events = aggregate_history(state.pool(), A::TYPE, &id.to_string()).await?;
    let version = events
        .last()
        .map(|e| e.sequence)
        .ok_or(ApiError::NotFound { what })?;
    let fold =
        |until| fold_until::<A>(&events, until).map_err(|e| ApiError::Internal(e.to_string()));
    // The scope is fixed by the creation event, so the current state decides access.
    caller.authorize(fold(None)?.scope(), permission, what)?;
    match as_of {
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(
                "as_of_out_of_range",
                "as_of",
                "as_of is an event's sequence: 1 or more",
            ))
        }
        // A well-formed sequence that names no event of this history (yet).
        Some(n) if n > version => {
            return Err(ApiError::Status {
                status: axum::http::StatusCode::NOT_FOUND,
                code: "no_such_event",
                detail: format!("the history has {version} events; as_of {n} names none"),
            })
        }
        _ => {}
    }
    let state_as_of = fold(as_of)?;
    Ok(Json(History {
        aggregate_type: A::TYPE.to_string(),
        aggregate_id: id,
        version,
        as_of: as_of.unwrap_or(version),
        state: state_as_of,
        events: events.into_iter().map(EventRecord::from).collect(),
    }))
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
