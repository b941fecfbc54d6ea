//! `/api/v1/timeline`: the activity timeline of a project, newest first, filtered and
//! cursor-paged in both directions (read model `timeline`).

use axum::extract::State;
use axum::Json;
use omoi_domain::access::Permission;
use omoi_domain::project::Project;
use omoi_projections::timeline::{self, EntityType, Page, PageError, TimelineFilter, TimelinePage};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Query;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_timeline))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    /// The project whose timeline to read. Required, except for operators.
    pub project_id: Option<Uuid>,
    /// Only entries of this event type (`TicketStatusChanged`, `TaskAssigned`, …).
    pub event_type: Option<String>,
    /// Only entries about this kind of entity.
    #[param(inline)]
    pub entity_type: Option<EntityType>,
    /// Only entries about this entity.
    pub entity_id: Option<Uuid>,
    /// Only entries caused by this actor (`user:<id>`, `api_key:<id>`, `system:worker`, …).
    pub actor: Option<String>,
    /// A cursor (`next_before` of a page): entries older than it.
    #[param(schema_with = crate::openapi::cursor)]
    pub before: Option<String>,
    /// A cursor (`next_after` of a page): the entries right after it, still newest first.
    /// With `before` too: the entries between the two, newest first.
    #[param(schema_with = crate::openapi::cursor)]
    pub after: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

fn paging_error(error: PageError) -> ApiError {
    ApiError::bad_request(error.to_string(), Some(error.field()))
}

/// The organizations the read is limited to: the project's, once the caller may read it.
async fn scope(
    state: &AppState,
    caller: &Caller,
    project_id: Option<Uuid>,
) -> ApiResult<Option<Vec<Uuid>>> {
    let Some(project_id) = project_id else {
        if caller.is_super_admin() {
            return Ok(None);
        }
        return Err(ApiError::Denied {
            code: "project_required",
            detail: "only operators read every organization's timeline: give project_id".into(),
        });
    };
    let (project, _) = state
        .read::<Project>(caller, Permission::TicketRead, project_id)
        .await?;
    let organization_id = project
        .organization_id
        .ok_or_else(|| ApiError::Internal("project without organization".into()))?;
    Ok(Some(vec![organization_id]))
}

/// The activity of a project, newest first: one entry per event a person cares about
/// (every event but task progress reports), each with a one-line summary. All given
/// filters must match. Follow `next_before` for older entries (it is absent at the
/// oldest), `next_after` for newer ones (poll it to follow the project live). Entries
/// appear shortly after their command commits, once the read model has caught up.
#[utoipa::path(
    get,
    path = "/api/v1/timeline",
    tag = "timeline",
    params(TimelineQuery),
    responses(
        (status = 200, body = TimelinePage),
        (status = 400, body = Problem, description = "a bad cursor or limit"),
        (status = 403, body = Problem,
            description = "`project_required`: no project_id, and the caller is no operator"),
        (status = 404, body = Problem, description = "no such project"),
    )
)]
async fn get_timeline(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<TimelineQuery>,
) -> ApiResult<Json<TimelinePage>> {
    let page =
        Page::parse(query.before.as_deref(), query.after.as_deref()).map_err(paging_error)?;
    let limit = timeline::limit(query.limit).map_err(paging_error)?;
    let organizations = scope(&state, &caller, query.project_id).await?;
    let filter = TimelineFilter {
        organizations,
        project_id: query.project_id,
        event_type: query.event_type.filter(|t| !t.is_empty()),
        entity_type: query.entity_type,
        entity_id: query.entity_id,
        actor: query.actor.filter(|a| !a.is_empty()),
        page,
        limit,
    };
    Ok(Json(timeline::read(state.pool(), &filter).await?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_timeline_route_is_documented() {
        let document = crate::openapi();
        assert!(document.paths.paths.contains_key("/api/v1/timeline"));
        let schemas = document.components.map(|c| c.schemas).unwrap_or_default();
        for schema in ["TimelinePage", "TimelineEntry"] {
            assert!(
                schemas.contains_key(schema),
                "{schema} is not in the document"
            );
        }
    }
}
