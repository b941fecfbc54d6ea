//! What every read route shares: a read-model failure as an API error, the project a read
//! is scoped to, and the checks and turns of a view `as_of` a past position.

use omoi_domain::access::Permission;
use omoi_domain::common::Scope;
use omoi_domain::project::Project;
use omoi_projections::ProjectionError;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// A read-model failure as an API error: database trouble keeps its status (503 when
/// unreachable), anything else is a bug (500).
pub(crate) fn read_error(error: ProjectionError) -> ApiError {
    match error {
        ProjectionError::Database(e) => ApiError::from(e),
        too_long @ ProjectionError::ReplayTooLong { .. } => {
            ApiError::invalid("as_of_replay_too_long", "as_of", too_long.to_string())
        }
        other => ApiError::Internal(other.to_string()),
    }
}

/// How long a view `as_of` waits for a turn to replay before it is turned away.
const REPLAY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// A turn to replay the log for a view `as_of` a past position (429 when every turn stays
/// taken for [`REPLAY_PATIENCE`]).
pub(crate) async fn replay_turn(state: &AppState) -> ApiResult<tokio::sync::OwnedSemaphorePermit> {
    let acquire = state.replays.turns.clone().acquire_owned();
    match tokio::time::timeout(REPLAY_PATIENCE, acquire).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_closed)) => Err(ApiError::Internal("the replay limiter was closed".into())),
        Err(_elapsed) => Err(ApiError::TooManyRequests {
            detail: "too many views of past states are being rebuilt; try again shortly",
            retry_after_seconds: 1,
        }),
    }
}

/// The organization of a project the caller may use with `permission` (404 when it does
/// not exist or is another organization's, 403 without the permission).
pub(crate) async fn project_organization(
    state: &AppState,
    caller: &Caller,
    permission: Permission,
    project_id: Uuid,
) -> ApiResult<Uuid> {
    let (project, _) = state
        .read::<Project>(caller, permission, project_id)
        .await?;
    project
        .organization_id
        .ok_or_else(|| ApiError::Internal("project without organization".into()))
}

/// The scope the caller reads an organization's resources in: a project-limited API key
/// sees only its project's.
fn scope_in(caller: &Caller, organization_id: Uuid) -> Option<Scope> {
    Some(Scope {
        organization_id,
        project_id: caller.project_limit(),
    })
}

/// The organizations a list reads with `permission`: the requested one (404 unless the
/// caller may read it), else every one the caller may (`None`: all, for operators).
pub(crate) fn readable_organizations(
    caller: &Caller,
    permission: Permission,
    requested: Option<Uuid>,
) -> ApiResult<Option<Vec<Uuid>>> {
    if let Some(organization_id) = requested {
        caller.authorize(
            scope_in(caller, organization_id),
            permission,
            "organization",
        )?;
        return Ok(Some(vec![organization_id]));
    }
    if caller.is_super_admin() {
        return Ok(None);
    }
    let readable = caller
        .visible_organizations()
        .into_iter()
        .filter(|org| caller.check(scope_in(caller, *org), permission).is_ok())
        .collect();
    Ok(Some(readable))
}

/// The project filter of a list: a project-limited API key is held to its project.
pub(crate) fn project_filter(caller: &Caller, requested: Option<Uuid>) -> ApiResult<Option<Uuid>> {
    match (caller.project_limit(), requested) {
        (Some(only), Some(asked)) if asked != only => Err(ApiError::NotFound { what: "project" }),
        (Some(only), _) => Ok(Some(only)),
        (None, asked) => Ok(asked),
    }
}

/// Refuses a negative `as_of`: positions start at 1 (0 is the empty log).
pub(crate) fn checked_as_of(as_of: Option<i64>) -> ApiResult<Option<i64>> {
    match as_of {
        Some(n) if n < 0 => Err(ApiError::invalid(
            "as_of_out_of_range",
            "as_of",
            "as_of is a global position: 0 or more",
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_as_of_is_refused() {
        assert!(checked_as_of(Some(-1)).is_err());
        assert_eq!(checked_as_of(Some(0)).ok(), Some(Some(0)));
        assert_eq!(checked_as_of(None).ok(), Some(None));
    }
}
