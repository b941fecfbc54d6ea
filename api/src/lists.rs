//! Lists and search for screens (read model `directory`): organizations, projects, specs,
//! tickets and tasks, newest first and cursor-paged, filtered in SQL to what the caller
//! may read; and a full-text search over specs, tickets and tasks for a command palette.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use omoi_domain::access::Permission;
use omoi_domain::common::{Phase, Priority};
use omoi_domain::kind::AggregateKind;
use omoi_domain::spec::SpecPhase;
use omoi_domain::task::TaskStatus;
use omoi_domain::ticket::TicketStatus;
use omoi_projections::directory::{self, Entry, ListFilter, ListPage, MAX_SEARCH_RESULTS};
use omoi_store::log::Cursor;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::Query;
use crate::read::{project_filter, read_error, readable_organizations};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_organizations))
        .routes(routes!(list_projects))
        .routes(routes!(list_specs))
        .routes(routes!(list_tickets))
        .routes(routes!(list_tasks))
        .routes(routes!(search))
}

/// Page size when none is asked for, and the most one page holds.
const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 200;

/// A list's `before` and `limit` parameters, checked.
fn paging(before: Option<&str>, limit: Option<i64>) -> ApiResult<(Option<Cursor>, i64)> {
    let before = before
        .filter(|b| !b.is_empty())
        .map(|b| b.parse::<Cursor>())
        .transpose()
        .map_err(|e| {
            ApiError::bad_request(format!("before is not a cursor: {e}"), Some("before"))
        })?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            format!("limit must be between 1 and {MAX_LIMIT}"),
            Some("limit"),
        ));
    }
    Ok((before, limit))
}

/// A list's query parameters: the filters given, then `before` and `limit`.
macro_rules! list_query {
    ($name:ident { $($(#[$meta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize, IntoParams)]
        #[into_params(parameter_in = Query)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$meta])* pub $field: $ty,)*
            /// A cursor (`next_before` of the previous page): entries created before it.
            #[param(schema_with = crate::openapi::cursor)]
            pub before: Option<String>,
            /// Page size, 1 to 200 (default 50).
            #[param(minimum = 1, maximum = 200)]
            pub limit: Option<i64>,
        }

        impl $name {
            fn paging(&self) -> ApiResult<(Option<Cursor>, i64)> {
                paging(self.before.as_deref(), self.limit)
            }
        }
    };
}

/// Whether an organization or project is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Active,
    Archived,
}

impl Standing {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Archived => "archived",
        }
    }
}

/// A page of a list of `$item`s, newest first.
macro_rules! page {
    ($page:ident, $item:ident) => {
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $page {
            pub items: Vec<$item>,
            /// Pass as `before` for the next (older) page; absent on the last page.
            #[schema(pattern = "^[0-9]+-[0-9]+$")]
            #[serde(skip_serializing_if = "Option::is_none")]
            pub next_before: Option<String>,
        }

        impl $page {
            fn of(page: ListPage) -> Self {
                Self {
                    items: page.entries.into_iter().map($item::from).collect(),
                    next_before: page.next_before.map(|c| c.to_string()),
                }
            }
        }
    };
}

page!(OrganizationPage, OrganizationSummary);
page!(ProjectPage, ProjectSummary);
page!(SpecPage, SpecSummary);
page!(TicketPage, TicketSummary);
page!(TaskPage, TaskSummary);

/// An organization as a list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrganizationSummary {
    pub id: Uuid,
    pub name: String,
    #[schema(value_type = Standing)]
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Entry> for OrganizationSummary {
    fn from(entry: Entry) -> Self {
        Self {
            id: entry.id,
            name: entry.title,
            status: entry.status,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        }
    }
}

/// A project as a list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectSummary {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub description: String,
    #[schema(value_type = Standing)]
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Entry> for ProjectSummary {
    fn from(entry: Entry) -> Self {
        Self {
            id: entry.id,
            organization_id: entry.organization_id,
            name: entry.title,
            description: entry.description,
            status: entry.status,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        }
    }
}

/// A spec as a list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpecSummary {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    #[schema(value_type = SpecPhase)]
    pub phase: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Entry> for SpecSummary {
    fn from(entry: Entry) -> Self {
        Self {
            id: entry.id,
            organization_id: entry.organization_id,
            project_id: entry.project_id,
            title: entry.title,
            description: entry.description,
            phase: entry.status,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        }
    }
}

/// A ticket as a list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketSummary {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    /// The spec whose plan created the ticket.
    pub spec_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    #[schema(value_type = TicketStatus)]
    pub status: String,
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<String>,
    #[schema(value_type = Option<Phase>)]
    pub phase: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Entry> for TicketSummary {
    fn from(entry: Entry) -> Self {
        Self {
            id: entry.id,
            organization_id: entry.organization_id,
            project_id: entry.project_id,
            spec_id: entry.parent_id,
            title: entry.title,
            description: entry.description,
            status: entry.status,
            priority: entry.priority,
            phase: entry.phase,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        }
    }
}

/// A task as a list shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskSummary {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    pub ticket_id: Option<Uuid>,
    pub title: String,
    pub description: String,
    pub task_type: Option<String>,
    #[schema(value_type = TaskStatus)]
    pub status: String,
    #[schema(value_type = Option<Priority>)]
    pub priority: Option<String>,
    #[schema(value_type = Option<Phase>)]
    pub phase: Option<String>,
    /// The agent the task was last assigned to.
    pub agent_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Entry> for TaskSummary {
    fn from(entry: Entry) -> Self {
        Self {
            id: entry.id,
            organization_id: entry.organization_id,
            project_id: entry.project_id,
            ticket_id: entry.parent_id,
            title: entry.title,
            description: entry.description,
            task_type: entry.task_type,
            status: entry.status,
            priority: entry.priority,
            phase: entry.phase,
            agent_id: entry.agent_id,
            created_at: entry.created_at,
            updated_at: entry.updated_at,
        }
    }
}

/// A list of `kind` read with `permission`, in the organizations and project the caller
/// may read.
struct Listing {
    kind: AggregateKind,
    permission: Permission,
    organization_id: Option<Uuid>,
    project_id: Option<Uuid>,
    parent_id: Option<Uuid>,
    status: Option<&'static str>,
    agent_id: Option<Uuid>,
}

impl Listing {
    fn of(kind: AggregateKind, permission: Permission) -> Self {
        Self {
            kind,
            permission,
            organization_id: None,
            project_id: None,
            parent_id: None,
            status: None,
            agent_id: None,
        }
    }

    async fn read(
        self,
        state: &AppState,
        caller: &Caller,
        (before, limit): (Option<Cursor>, i64),
    ) -> ApiResult<ListPage> {
        let filter = ListFilter {
            kind: self.kind,
            organizations: readable_organizations(caller, self.permission, self.organization_id)?,
            organization_id: self.organization_id,
            // An organization is in no project: a project-limited key's filter would hide
            // its own organization (the organizations filter already scopes it).
            project_id: match self.kind {
                AggregateKind::Organization => None,
                _ => project_filter(caller, self.project_id)?,
            },
            parent_id: self.parent_id,
            status: self.status.map(str::to_string),
            agent_id: self.agent_id,
            before,
            limit,
        };
        directory::list(state.pool(), &filter)
            .await
            .map_err(read_error)
    }
}

list_query!(OrganizationsQuery {
    /// Only active or only archived organizations.
    #[param(inline)]
    status: Option<Standing>,
});

/// The organizations the caller is a member of (every one, for operators), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/organizations",
    tag = "organizations",
    params(OrganizationsQuery),
    responses(
        (status = 200, body = OrganizationPage),
        (status = 400, body = Problem, description = "a bad cursor, limit or status"),
    )
)]
async fn list_organizations(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<OrganizationsQuery>,
) -> ApiResult<Json<OrganizationPage>> {
    let listing = Listing {
        status: query.status.map(Standing::as_str),
        ..Listing::of(AggregateKind::Organization, Permission::OrgRead)
    };
    let page = listing.read(&state, &caller, query.paging()?).await?;
    Ok(Json(OrganizationPage::of(page)))
}

list_query!(ProjectsQuery {
    /// Only this organization's projects (404 unless the caller is a member).
    organization_id: Option<Uuid>,
    /// Only active or only archived projects.
    #[param(inline)]
    status: Option<Standing>,
});

/// The projects of the caller's organizations, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/projects",
    tag = "projects",
    params(ProjectsQuery),
    responses(
        (status = 200, body = ProjectPage),
        (status = 400, body = Problem, description = "a bad id, cursor, limit or status"),
        (status = 404, body = Problem, description = "no such organization"),
    )
)]
async fn list_projects(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ProjectsQuery>,
) -> ApiResult<Json<ProjectPage>> {
    let listing = Listing {
        organization_id: query.organization_id,
        status: query.status.map(Standing::as_str),
        ..Listing::of(AggregateKind::Project, Permission::ProjectRead)
    };
    let page = listing.read(&state, &caller, query.paging()?).await?;
    Ok(Json(ProjectPage::of(page)))
}

list_query!(SpecsQuery {
    /// Only this project's specs.
    project_id: Option<Uuid>,
    #[param(inline)]
    phase: Option<SpecPhase>,
});

/// The specs of the caller's organizations, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/specs",
    tag = "specs",
    params(SpecsQuery),
    responses(
        (status = 200, body = SpecPage),
        (status = 400, body = Problem, description = "a bad id, cursor, limit or phase"),
        (status = 404, body = Problem, description = "a project outside an API key's project"),
    )
)]
async fn list_specs(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<SpecsQuery>,
) -> ApiResult<Json<SpecPage>> {
    let listing = Listing {
        project_id: query.project_id,
        status: query.phase.map(SpecPhase::as_str),
        ..Listing::of(AggregateKind::Spec, Permission::SpecRead)
    };
    let page = listing.read(&state, &caller, query.paging()?).await?;
    Ok(Json(SpecPage::of(page)))
}

list_query!(TicketsQuery {
    /// Only this project's tickets.
    project_id: Option<Uuid>,
    #[param(inline)]
    status: Option<TicketStatus>,
    /// Only the tickets of this spec's plan.
    spec_id: Option<Uuid>,
});

/// The tickets of the caller's organizations, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/tickets",
    tag = "tickets",
    params(TicketsQuery),
    responses(
        (status = 200, body = TicketPage),
        (status = 400, body = Problem, description = "a bad id, cursor, limit or status"),
        (status = 404, body = Problem, description = "a project outside an API key's project"),
    )
)]
async fn list_tickets(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<TicketsQuery>,
) -> ApiResult<Json<TicketPage>> {
    let listing = Listing {
        project_id: query.project_id,
        parent_id: query.spec_id,
        status: query.status.map(TicketStatus::as_str),
        ..Listing::of(AggregateKind::Ticket, Permission::TicketRead)
    };
    let page = listing.read(&state, &caller, query.paging()?).await?;
    Ok(Json(TicketPage::of(page)))
}

list_query!(TasksQuery {
    /// Only this project's tasks.
    project_id: Option<Uuid>,
    /// Only this ticket's tasks.
    ticket_id: Option<Uuid>,
    #[param(inline)]
    status: Option<TaskStatus>,
    /// Only tasks last assigned to this agent.
    agent_id: Option<Uuid>,
});

/// The tasks of the caller's organizations, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    params(TasksQuery),
    responses(
        (status = 200, body = TaskPage),
        (status = 400, body = Problem, description = "a bad id, cursor, limit or status"),
        (status = 404, body = Problem, description = "a project outside an API key's project"),
    )
)]
async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<TasksQuery>,
) -> ApiResult<Json<TaskPage>> {
    let listing = Listing {
        project_id: query.project_id,
        parent_id: query.ticket_id,
        status: query.status.map(TaskStatus::as_str),
        agent_id: query.agent_id,
        ..Listing::of(AggregateKind::Task, Permission::TaskRead)
    };
    let page = listing.read(&state, &caller, query.paging()?).await?;
    Ok(Json(TaskPage::of(page)))
}

/// The longest search text.
const MAX_QUERY_CHARS: usize = 200;
const DEFAULT_SEARCH_RESULTS: i64 = 20;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// The words to find (1 to 200 characters); each matches as a word prefix, and every
    /// one must match.
    #[param(min_length = 1, max_length = 200)]
    pub q: String,
    /// Only this project's specs, tickets and tasks.
    pub project_id: Option<Uuid>,
    /// How many results, 1 to 50 (default 20).
    #[param(minimum = 1, maximum = 50)]
    pub limit: Option<i64>,
}

/// One search result.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    /// `spec`, `ticket` or `task`.
    pub kind: String,
    pub id: Uuid,
    pub organization_id: Uuid,
    pub project_id: Option<Uuid>,
    /// A ticket's spec, a task's ticket.
    pub parent_id: Option<Uuid>,
    pub title: String,
    /// The spec's phase, the ticket's or task's status.
    pub status: String,
    /// How well it matched: higher is better.
    pub rank: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    /// Best match first.
    pub results: Vec<SearchResult>,
}

/// Specs, tickets and tasks whose title or description hold every word of `q`, best match
/// first (PostgreSQL full text, English stemming): what a command palette shows while a
/// person types. Only the organizations (and an API key's project) the caller may read.
#[utoipa::path(
    get,
    path = "/api/v1/search",
    tag = "search",
    params(SearchQuery),
    responses(
        (status = 200, body = SearchResults),
        (status = 400, body = Problem, description = "no text, too much text, or a bad limit"),
        (status = 404, body = Problem, description = "a project outside an API key's project"),
    )
)]
async fn search(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<SearchQuery>,
) -> ApiResult<Json<SearchResults>> {
    let length = query.q.chars().count();
    if length == 0 || length > MAX_QUERY_CHARS {
        return Err(ApiError::bad_request(
            format!("q must be 1 to {MAX_QUERY_CHARS} characters"),
            Some("q"),
        ));
    }
    let limit = query.limit.unwrap_or(DEFAULT_SEARCH_RESULTS);
    if !(1..=MAX_SEARCH_RESULTS).contains(&limit) {
        return Err(ApiError::bad_request(
            format!("limit must be between 1 and {MAX_SEARCH_RESULTS}"),
            Some("limit"),
        ));
    }
    // Every kind searched must be readable: the organizations where all three are.
    let mut organizations = readable_organizations(&caller, Permission::SpecRead, None)?;
    for permission in [Permission::TicketRead, Permission::TaskRead] {
        if let (Some(kept), Some(readable)) = (
            organizations.as_mut(),
            readable_organizations(&caller, permission, None)?,
        ) {
            kept.retain(|org| readable.contains(org));
        }
    }
    let project_id = project_filter(&caller, query.project_id)?;
    let words = directory::query_words(&query.q);
    let hits = directory::search(
        state.pool(),
        &words,
        organizations.as_deref(),
        project_id,
        limit,
    )
    .await
    .map_err(read_error)?;
    let results = hits
        .into_iter()
        .map(|hit| SearchResult {
            kind: hit.entry.kind.noun().to_string(),
            id: hit.entry.id,
            organization_id: hit.entry.organization_id,
            project_id: hit.entry.project_id,
            parent_id: hit.entry.parent_id,
            title: hit.entry.title,
            status: hit.entry.status,
            rank: hit.rank,
        })
        .collect();
    Ok(Json(SearchResults { results }))
}
