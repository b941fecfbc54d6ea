//! Admission: whether new work may join the work that exists — the rules spanning
//! aggregates that a person's request meets before its command is decided. New work joins
//! only a project that is not archived; a task joins only a ticket that is not done and
//! whose spec (if any) is not archived; a task waits only for tasks of its own project,
//! and never in a circle; a ticket names only a spec of its own project that is not
//! archived. A spec archived meanwhile is `spec_archival`'s: it cancels what joined it. Handlers load what
//! the caller may see (authorization is theirs) and translate a [`Refusal`] to HTTP; the
//! rules themselves live here, beside the process managers that apply the others.

use std::collections::BTreeSet;

use omoi_domain::common::{Scope, Scoped};
use omoi_domain::project::Project;
use omoi_domain::spec::{Spec, SpecPhase};
use omoi_domain::task::Task;
use omoi_domain::ticket::{Ticket, TicketStatus};
use omoi_store::{CommandBus, CommandError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::cycles::{self, CycleCheckError, ProjectLock};

/// A rule that refuses the new work, one variant per rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("project {0} is archived; no new work can be added to it")]
    ProjectArchived(Uuid),
    #[error("ticket {0} is done; no task can be added to it")]
    TicketDone(Uuid),
    #[error("task {0} (in depends_on) does not exist")]
    DependencyNotFound(Uuid),
    #[error("task {0} belongs to another project")]
    DependencyInOtherProject(Uuid),
    #[error("spec {0} does not exist")]
    SpecNotFound(Uuid),
    #[error("spec {0} belongs to another project")]
    SpecInOtherProject(Uuid),
    #[error("spec {0} is archived; no new work can be added to it")]
    SpecArchived(Uuid),
    #[error("circular dependency: {0}")]
    Cycle(String),
    #[error(
        "the project has more than {} dependency changes to check",
        cycles::MAX_EDGE_EVENTS
    )]
    GraphTooLarge,
}

/// Why admission could not be decided, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl<E: std::error::Error> From<CommandError<E>> for AdmissionError {
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Unavailable(cause) => Self::Unavailable(cause),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// New work (a ticket, a task, a spec, an agent of the project) may join project
/// `project_id` unless it is archived.
pub fn project_takes_work(project_id: Uuid, project: &Project) -> Result<(), Refusal> {
    match project.is_active() {
        true => Ok(()),
        false => Err(Refusal::ProjectArchived(project_id)),
    }
}

/// A task may join ticket `ticket_id` unless the ticket is done or its spec archived.
pub async fn ticket_takes_tasks(
    bus: &CommandBus,
    ticket_id: Uuid,
    ticket: &Ticket,
) -> Result<(), AdmissionError> {
    if ticket.status == TicketStatus::Done {
        return Err(Refusal::TicketDone(ticket_id).into());
    }
    let Some(spec_id) = ticket.spec_id else {
        return Ok(());
    };
    match bus.load::<Spec>(&spec_id.to_string()).await? {
        Some((spec, _)) => Ok(spec_takes_work(spec_id, &spec)?),
        None => Err(AdmissionError::Internal(format!(
            "ticket {ticket_id} names spec {spec_id}, which does not exist"
        ))),
    }
}

/// New work may join spec `spec_id` unless it is archived. A completed spec's plan is
/// done, but a person may still add work it names (a follow-up).
fn spec_takes_work(spec_id: Uuid, spec: &Spec) -> Result<(), Refusal> {
    match spec.phase {
        SpecPhase::Archived => Err(Refusal::SpecArchived(spec_id)),
        _ => Ok(()),
    }
}

/// Where a reference is made from: a project (its organization and id), and whether the
/// one making it sees the organization's other projects (a key limited to the project
/// does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Referrer {
    pub project: Scope,
    pub sees_other_projects: bool,
}

impl Referrer {
    /// Whether something of `scope` is there for the referrer to be told about: of its
    /// organization, and of a project it sees. What it may not see is not found, as a
    /// made-up id is: the refusal must not tell a stranger's ids from made-up ones.
    fn sees(&self, scope: Option<Scope>) -> bool {
        scope.is_some_and(|scope| {
            scope.organization_id == self.project.organization_id
                && (self.sees_other_projects || scope.project_id == self.project.project_id)
        })
    }
}

/// Every task of `depends_on` exists and belongs to the referrer's project.
pub async fn dependencies_in_project(
    bus: &CommandBus,
    from: Referrer,
    depends_on: &BTreeSet<Uuid>,
) -> Result<(), AdmissionError> {
    for dependency in depends_on {
        match bus.load::<Task>(&dependency.to_string()).await? {
            Some((task, _)) if from.sees(task.scope()) => {
                if task.project_id != from.project.project_id {
                    return Err(Refusal::DependencyInOtherProject(*dependency).into());
                }
            }
            _ => return Err(Refusal::DependencyNotFound(*dependency).into()),
        }
    }
    Ok(())
}

/// A ticket of the referrer's project may name spec `spec_id` (or none): a spec of the
/// same project, not archived.
pub async fn spec_in_project(
    bus: &CommandBus,
    spec_id: Option<Uuid>,
    from: Referrer,
) -> Result<(), AdmissionError> {
    let Some(spec_id) = spec_id else {
        return Ok(());
    };
    match bus.load::<Spec>(&spec_id.to_string()).await? {
        Some((spec, _)) if from.sees(spec.scope()) => {
            if spec.project_id != from.project.project_id {
                return Err(Refusal::SpecInOtherProject(spec_id).into());
            }
            Ok(spec_takes_work(spec_id, &spec)?)
        }
        _ => Err(Refusal::SpecNotFound(spec_id).into()),
    }
}

/// Task `task_id` of project `project_id` may wait for `dependency`: it is a task of the
/// same project, and the new edge closes no circle. Returns the project's dependency
/// lock, which the caller holds until the edge has committed, so that two additions that
/// would together close a circle are decided one after the other.
pub async fn new_dependency(
    bus: &CommandBus,
    pool: &PgPool,
    from: Referrer,
    task_id: Uuid,
    dependency: Uuid,
) -> Result<ProjectLock, AdmissionError> {
    let project_id = from
        .project
        .project_id
        .ok_or_else(|| AdmissionError::Internal("a task without a project".into()))?;
    dependencies_in_project(bus, from, &BTreeSet::from([dependency])).await?;
    let lock = cycles::lock_project(pool, project_id).await?;
    match cycles::cycle_through(pool, project_id, task_id, dependency).await {
        Ok(None) => Ok(lock),
        Ok(Some(path)) => Err(Refusal::Cycle(cycles::describe(&path)).into()),
        Err(CycleCheckError::Read(error)) => Err(error.into()),
        Err(CycleCheckError::TooLarge) => Err(Refusal::GraphTooLarge.into()),
    }
}
