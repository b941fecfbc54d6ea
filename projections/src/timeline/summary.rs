//! The one-line human summary of each entry, naming the entity by its title
//! (`Ticket "Login page" moved analyzing → building`).

use chrono::SecondsFormat;
use omoi_domain::agent::AgentEvent;
use omoi_domain::organization::OrganizationEvent;
use omoi_domain::project::ProjectEvent;
use omoi_domain::spec::SpecEvent;
use omoi_domain::task::TaskEvent;
use omoi_domain::ticket::TicketEvent;
use serde::Serialize;
use uuid::Uuid;

use super::model::{Change, EntityType};

/// What a summary may name besides the event itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Names<'a> {
    /// The entity's id.
    pub id: Uuid,
    /// Its title before this event (unknown before its creation event).
    pub title: Option<&'a str>,
    /// The title of the entity [`Change::reference`] points at.
    pub other: Option<&'a str>,
}

/// The one-line human summary of `change`.
pub fn summary(change: &Change, names: &Names) -> String {
    let this = label(change.kind(), names.id, names.title);
    match change {
        Change::Ticket(e) => ticket_summary(e, &this, names.id),
        Change::Task(e) => task_summary(e, &this, names),
        Change::Spec(e) => spec_summary(e, &this, names.id),
        Change::Agent(e) => agent_summary(e, &this, names.id),
        Change::Project(e) => project_summary(e, &this, names.id),
        Change::Organization(e) => organization_summary(e, &this, names.id),
    }
}

const TITLE_CHARS: usize = 80;
const TEXT_CHARS: usize = 120;

/// `Ticket "Login page"`, or `Ticket <id>` when the title is unknown.
fn label(kind: EntityType, id: Uuid, title: Option<&str>) -> String {
    match title {
        Some(title) => format!("{} \"{}\"", kind.noun(), one_line(title, TITLE_CHARS)),
        None => format!("{} {id}", kind.noun()),
    }
}

/// Free text squeezed onto one line and cut at `max` characters, so one entry stays one
/// line however long the error or feedback was.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

/// An enum's name on the wire (`HIGH`, `waiting_on_clarification`): stable and familiar.
fn wire<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::from("?"),
    }
}

/// `: <reason>` when there is one.
fn because(reason: Option<&String>) -> String {
    reason
        .filter(|r| !r.trim().is_empty())
        .map(|r| format!(": {}", one_line(r, TEXT_CHARS)))
        .unwrap_or_default()
}

fn ticket_summary(event: &TicketEvent, this: &str, id: Uuid) -> String {
    match event {
        TicketEvent::TicketCreated { title, .. } => {
            format!("{} created", label(EntityType::Ticket, id, Some(title)))
        }
        TicketEvent::TicketUpdated {
            title,
            description,
            priority,
            phase,
        } => {
            let mut changed = Vec::new();
            if let Some(title) = title {
                changed.push(format!("title \"{}\"", one_line(title, TITLE_CHARS)));
            }
            if description.is_some() {
                changed.push("description".to_string());
            }
            if let Some(priority) = priority {
                changed.push(format!("priority {}", wire(priority)));
            }
            if let Some(phase) = phase {
                changed.push(format!("phase {}", wire(phase)));
            }
            match changed.is_empty() {
                true => format!("{this} updated"),
                false => format!("{this} updated: {}", changed.join(", ")),
            }
        }
        TicketEvent::TicketStatusChanged { from, to, .. } => format!("{this} moved {from} → {to}"),
        TicketEvent::TicketRegressed { feedback } => format!(
            "{this} regressed testing → building: {}",
            one_line(feedback, TEXT_CHARS)
        ),
        TicketEvent::TicketBlocked { reason, .. } => {
            format!("{this} blocked ({})", wire(reason).replace('_', " "))
        }
        TicketEvent::TicketUnblocked => format!("{this} unblocked"),
        TicketEvent::TicketPlanned { key } => {
            format!(
                "{this} is {} of its spec's plan",
                one_line(key, TITLE_CHARS)
            )
        }
    }
}

fn task_summary(event: &TaskEvent, this: &str, names: &Names) -> String {
    match event {
        TaskEvent::TaskCreated {
            title, task_type, ..
        } => format!(
            "{} created ({})",
            label(EntityType::Task, names.id, Some(title)),
            one_line(task_type, TITLE_CHARS)
        ),
        TaskEvent::TaskAssigned { agent_id, .. } => format!(
            "{this} assigned to {}",
            label(EntityType::Agent, *agent_id, names.other)
        ),
        TaskEvent::TaskStarted { .. } => format!("{this} started"),
        TaskEvent::TaskStalled { idle_since, .. } => format!(
            "{this} stalled: no progress since {}",
            idle_since.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        TaskEvent::TaskSteered {
            agent_id,
            message,
            source,
            ..
        } => format!(
            "{this} steering for {} ({}): {}",
            label(EntityType::Agent, *agent_id, names.other),
            crate::codec::to_text(source).unwrap_or_default(),
            one_line(message, TITLE_CHARS)
        ),
        TaskEvent::GuardianIntervened { kind, reason, .. } => format!(
            "guardian: {} of {this}: {}",
            kind.as_str(),
            one_line(reason, TEXT_CHARS)
        ),
        TaskEvent::DuplicateSuspected {
            duplicate_of,
            similarity,
            ..
        } => format!(
            "{this} looks like a duplicate of {} ({:.0} % similar)",
            label(EntityType::Task, *duplicate_of, names.other),
            similarity * 100.0
        ),
        TaskEvent::TrajectoryAssessed { assessment, .. } => format!(
            "{this} trajectory assessed: alignment {:.2}{}",
            assessment.alignment_score,
            if assessment.needs_steering {
                ", needs steering"
            } else {
                ""
            }
        ),
        TaskEvent::TaskUnassigned { agent_id, .. } => format!(
            "{this} taken from {}, back to the queue",
            label(EntityType::Agent, *agent_id, names.other)
        ),
        TaskEvent::TaskAssignmentWithdrawn { agent_id, .. } => format!(
            "{this} withdrawn from {}, which had stopped taking work, back to the queue",
            label(EntityType::Agent, *agent_id, names.other)
        ),
        TaskEvent::TaskPriorityChanged { priority } => format!(
            "{this} priority set to {}",
            crate::codec::to_text(priority).unwrap_or_default()
        ),
        TaskEvent::SteeringDelivered { agent_id, .. } => format!(
            "{this} steering delivered to {}",
            label(EntityType::Agent, *agent_id, names.other)
        ),
        TaskEvent::TaskProgressReported { message } => {
            format!("{this}: {}", one_line(message, TEXT_CHARS))
        }
        TaskEvent::TaskCompleted { .. } => format!("{this} completed"),
        TaskEvent::TaskFailed { error, attempt, .. } => format!(
            "{this} failed (attempt {attempt}): {}",
            one_line(error, TEXT_CHARS)
        ),
        TaskEvent::TaskTimedOut {
            after_seconds,
            attempt,
            ..
        } => format!("{this} timed out after {after_seconds} s (attempt {attempt})"),
        TaskEvent::TaskRetryScheduled {
            attempt,
            not_before,
        } => format!(
            "{this} retry {attempt} scheduled for {}",
            not_before.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
        TaskEvent::TaskPermanentlyFailed { reason } => {
            format!(
                "{this} permanently failed ({})",
                wire(reason).replace('_', " ")
            )
        }
        TaskEvent::TaskCancelled { reason, .. } => {
            format!("{this} cancelled{}", because(reason.as_ref()))
        }
        TaskEvent::TaskDependencyAdded { depends_on } => format!(
            "{this} now depends on {}",
            label(EntityType::Task, *depends_on, names.other)
        ),
        TaskEvent::TaskDependencyRemoved { depends_on } => format!(
            "{this} no longer depends on {}",
            label(EntityType::Task, *depends_on, names.other)
        ),
        TaskEvent::TaskDiscovered { discovery } => format!(
            "{this} discovered ({}) while running {}{}",
            discovery.kind.as_str().replace('_', " "),
            label(EntityType::Task, discovery.parent_task_id, names.other),
            if discovery.blocks_parent {
                ", which waits for it"
            } else {
                ""
            }
        ),
        TaskEvent::TaskDiscoveryReported {
            discovered_task_id,
            kind,
            blocks_parent,
        } => format!(
            "{this} reported a discovery ({}): {}{}",
            kind.as_str().replace('_', " "),
            label(EntityType::Task, *discovered_task_id, names.other),
            if *blocks_parent {
                ", and waits for it"
            } else {
                ""
            }
        ),
        TaskEvent::TaskDiscoveryResolved { discovered_task_id } => format!(
            "{this} no longer waits for {}",
            label(EntityType::Task, *discovered_task_id, names.other)
        ),
        TaskEvent::TaskValidationRequired { policy } => format!(
            "{this} must pass validation (at most {} revisions)",
            policy.max_revisions
        ),
        TaskEvent::TaskValidates { target } => format!(
            "{this} validates submission {} of {}",
            target.revision + 1,
            label(EntityType::Task, target.task_id, names.other)
        ),
        TaskEvent::TaskSubmittedForValidation { revision, .. } => format!(
            "{this} submitted for validation (submission {})",
            revision + 1
        ),
        TaskEvent::TaskVerdictGiven { verdict } => format!(
            "{this} verdict: {}{}",
            if verdict.passed { "passed" } else { "rejected" },
            because(verdict.feedback.as_ref())
        ),
        TaskEvent::TaskValidationPassed {
            validation_task_id, ..
        } => format!(
            "{this} passed validation by {}",
            label(EntityType::Task, *validation_task_id, names.other)
        ),
        TaskEvent::TaskValidationRejected {
            validation_task_id,
            feedback,
            ..
        } => format!(
            "{this} rejected by {}: {}",
            label(EntityType::Task, *validation_task_id, names.other),
            one_line(feedback, TEXT_CHARS)
        ),
        TaskEvent::TaskRevisionRequested { revision } => {
            format!("{this} back for revision {revision}")
        }
        TaskEvent::TaskPlanned { key } => {
            format!(
                "{this} is {} of its spec's plan",
                one_line(key, TITLE_CHARS)
            )
        }
        TaskEvent::TaskValidationAbandoned { validation_task_id } => format!(
            "{this} lost its validation: {} ended without a verdict",
            label(EntityType::Task, *validation_task_id, names.other)
        ),
    }
}

fn spec_summary(event: &SpecEvent, this: &str, id: Uuid) -> String {
    match event {
        SpecEvent::SpecCreated { title, .. } => {
            format!("{} created", label(EntityType::Spec, id, Some(title)))
        }
        SpecEvent::SpecRequirementAdded { requirement } => {
            format!("{this}: requirement {} added", requirement.id)
        }
        SpecEvent::SpecRequirementUpdated { requirement } => {
            format!("{this}: requirement {} updated", requirement.id)
        }
        SpecEvent::SpecRequirementRemoved { requirement_id } => {
            format!("{this}: requirement {requirement_id} removed")
        }
        SpecEvent::SpecPhaseChanged { from, to } => format!("{this} moved {from} → {to}"),
        SpecEvent::SpecRequirementsApproved { .. } => format!("{this}: requirements approved"),
        SpecEvent::SpecDesignSet { .. } => format!("{this}: design set"),
        SpecEvent::SpecDesignApproved { .. } => format!("{this}: design approved"),
        SpecEvent::SpecPlanSet { plan } => {
            let tasks = plan.tasks().count();
            format!(
                "{this}: plan set ({} tickets, {tasks} tasks)",
                plan.tickets.len()
            )
        }
        SpecEvent::SpecPlanApproved { .. } => format!("{this}: plan approved"),
        SpecEvent::SpecCompleted { .. } => format!("{this} completed"),
        SpecEvent::SpecArchived { .. } => format!("{this} archived"),
    }
}

fn agent_summary(event: &AgentEvent, this: &str, id: Uuid) -> String {
    match event {
        AgentEvent::AgentRegistered {
            name,
            agent_type,
            capacity,
            ..
        } => format!(
            "{} registered ({}, capacity {capacity})",
            label(EntityType::Agent, id, Some(name)),
            agent_type.as_str()
        ),
        AgentEvent::AgentStatusChanged {
            from, to, reason, ..
        } if from == to => format!(
            "{this} status re-recorded as {to}{}",
            because(reason.as_ref())
        ),
        AgentEvent::AgentStatusChanged {
            from, to, reason, ..
        } => format!("{this} {from} → {to}{}", because(reason.as_ref())),
        AgentEvent::AgentCapabilitiesUpdated { capabilities } => {
            let list = capabilities.iter().cloned().collect::<Vec<_>>().join(", ");
            let list = if list.is_empty() {
                "none".to_string()
            } else {
                list
            };
            format!("{this} capabilities set to {}", one_line(&list, TEXT_CHARS))
        }
        AgentEvent::GuardianIntervened { kind, reason, .. } => format!(
            "guardian: {} of {this}: {}",
            kind.as_str(),
            one_line(reason, TEXT_CHARS)
        ),
        AgentEvent::AnomalyDetected { score, streak, .. } => {
            format!("{this} anomalous: score {score:.2} ({streak} in a row)")
        }
        AgentEvent::AnomalySubsided { score, .. } => {
            format!("{this} back to normal: score {score:.2}")
        }
    }
}

fn project_summary(event: &ProjectEvent, this: &str, id: Uuid) -> String {
    match event {
        ProjectEvent::ProjectCreated { name, .. } => {
            format!("{} created", label(EntityType::Project, id, Some(name)))
        }
        ProjectEvent::ProjectRenamed { name } => {
            format!("{this} renamed to \"{}\"", one_line(name, TITLE_CHARS))
        }
        ProjectEvent::ProjectArchived { .. } => format!("{this} archived"),
        ProjectEvent::ProjectSettingsChanged { settings } => {
            let on_off = |on: bool| if on { "on" } else { "off" };
            format!(
                "{this}: tickets move with their tasks {}, hand-made tickets get their phase's task {}",
                on_off(settings.auto_advance),
                on_off(settings.auto_spawn_tasks)
            )
        }
    }
}

fn organization_summary(event: &OrganizationEvent, this: &str, id: Uuid) -> String {
    match event {
        OrganizationEvent::OrganizationCreated { name, .. } => {
            format!(
                "{} created",
                label(EntityType::Organization, id, Some(name))
            )
        }
        OrganizationEvent::OrganizationRenamed { name } => {
            format!("{this} renamed to \"{}\"", one_line(name, TITLE_CHARS))
        }
        OrganizationEvent::OrganizationArchived { .. } => format!("{this} archived"),
        OrganizationEvent::MemberAdded { principal, role } => {
            format!("{principal} added to {this} as {}", role.as_str())
        }
        OrganizationEvent::MemberRoleChanged {
            principal,
            from,
            to,
        } => format!(
            "{principal} changed from {} to {} in {this}",
            from.as_str(),
            to.as_str()
        ),
        OrganizationEvent::MemberRemoved { principal } => {
            format!("{principal} removed from {this}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use omoi_domain::access::{Principal, Role};
    use omoi_domain::agent::{AgentStatus, AgentType};
    use omoi_domain::common::{Phase, Priority};
    use omoi_domain::spec::{Design, Requirement, SpecPhase};
    use omoi_domain::task::FailureReason;
    use omoi_domain::ticket::{BlockReason, TicketStatus};
    use serde_json::json;

    use super::*;
    use crate::timeline::model::tests::{at, id};

    /// The summary of `change` for entity 1 titled `title`, whose reference is titled
    /// `other`.
    #[track_caller]
    fn says(change: Change, title: Option<&str>, other: Option<&str>, expected: &str) {
        let names = Names {
            id: id(1),
            title,
            other,
        };
        assert_eq!(summary(&change, &names), expected);
    }

    fn requirement(rid: &str) -> Requirement {
        Requirement {
            id: rid.into(),
            condition: "a user logs in".into(),
            action: "show the board".into(),
            acceptance_criteria: vec![],
        }
    }

    #[test]
    fn ticket_events_are_summarized_with_the_ticket_title() {
        let t = Some("Login page");
        says(
            Change::Ticket(TicketEvent::TicketCreated {
                ticket_id: id(1),
                organization_id: id(2),
                project_id: id(3),
                spec_id: None,
                title: "Login page".into(),
                description: String::new(),
                priority: Priority::High,
                phase: Phase::Backlog,
            }),
            None,
            None,
            "Ticket \"Login page\" created",
        );
        says(
            Change::Ticket(TicketEvent::TicketUpdated {
                title: Some("Sign-in page".into()),
                description: Some("new".into()),
                priority: Some(Priority::Critical),
                phase: Some(Phase::Design),
            }),
            t,
            None,
            "Ticket \"Login page\" updated: title \"Sign-in page\", description, \
             priority CRITICAL, phase PHASE_DESIGN",
        );
        says(
            Change::Ticket(TicketEvent::TicketStatusChanged {
                from: TicketStatus::Analyzing,
                to: TicketStatus::Building,
                note: None,
            }),
            t,
            None,
            "Ticket \"Login page\" moved analyzing → building",
        );
        says(
            Change::Ticket(TicketEvent::TicketRegressed {
                feedback: "the button\n does nothing".into(),
            }),
            t,
            None,
            "Ticket \"Login page\" regressed testing → building: the button does nothing",
        );
        says(
            Change::Ticket(TicketEvent::TicketBlocked {
                reason: BlockReason::WaitingOnClarification,
                note: None,
                blocked_at: at(),
            }),
            t,
            None,
            "Ticket \"Login page\" blocked (waiting on clarification)",
        );
        says(
            Change::Ticket(TicketEvent::TicketUnblocked),
            t,
            None,
            "Ticket \"Login page\" unblocked",
        );
    }

    #[test]
    fn task_events_are_summarized_naming_the_agent_or_dependency() {
        let t = Some("Write the form");
        let task = |e| Change::Task(e);
        says(
            task(TaskEvent::TaskCreated {
                task_id: id(1),
                organization_id: id(2),
                project_id: id(3),
                ticket_id: id(4),
                title: "Write the form".into(),
                description: String::new(),
                task_type: "implement".into(),
                phase: Phase::Implementation,
                priority: Priority::Medium,
                depends_on: vec![],
                required_capabilities: vec![],
                max_retries: 3,
                timeout_seconds: None,
                created_at: at(),
            }),
            None,
            None,
            "Task \"Write the form\" created (implement)",
        );
        let assigned = task(TaskEvent::TaskAssigned {
            agent_id: id(9),
            at: at(),
        });
        says(
            assigned.clone(),
            t,
            Some("worker-1"),
            "Task \"Write the form\" assigned to Agent \"worker-1\"",
        );
        says(
            assigned,
            t,
            None,
            &format!("Task \"Write the form\" assigned to Agent {}", id(9)),
        );
        for (event, text) in [
            (TaskEvent::TaskStarted { at: at() }, "started"),
            (
                TaskEvent::TaskCompleted {
                    result: json!({}),
                    at: at(),
                },
                "completed",
            ),
            (
                TaskEvent::TaskFailed {
                    error: "exit code 1".into(),
                    attempt: 2,
                    at: at(),
                },
                "failed (attempt 2): exit code 1",
            ),
            (
                TaskEvent::TaskTimedOut {
                    after_seconds: 300,
                    attempt: 1,
                    at: at(),
                },
                "timed out after 300 s (attempt 1)",
            ),
            (
                TaskEvent::TaskRetryScheduled {
                    attempt: 2,
                    not_before: at(),
                },
                "retry 2 scheduled for 2025-01-02T03:04:05Z",
            ),
            (
                TaskEvent::TaskPermanentlyFailed {
                    reason: FailureReason::RetriesExhausted,
                },
                "permanently failed (retries exhausted)",
            ),
            (
                TaskEvent::TaskCancelled {
                    reason: Some("not needed".into()),
                    at: at(),
                },
                "cancelled: not needed",
            ),
            (
                TaskEvent::TaskCancelled {
                    reason: None,
                    at: at(),
                },
                "cancelled",
            ),
        ] {
            says(
                task(event),
                t,
                None,
                &format!("Task \"Write the form\" {text}"),
            );
        }
        says(
            task(TaskEvent::TaskDependencyAdded { depends_on: id(5) }),
            t,
            Some("Design"),
            "Task \"Write the form\" now depends on Task \"Design\"",
        );
        says(
            task(TaskEvent::TaskDependencyRemoved { depends_on: id(5) }),
            t,
            Some("Design"),
            "Task \"Write the form\" no longer depends on Task \"Design\"",
        );
    }

    #[test]
    fn spec_events_are_summarized() {
        let s = Some("Auth");
        says(
            Change::Spec(SpecEvent::SpecCreated {
                spec_id: id(1),
                organization_id: id(2),
                project_id: id(3),
                title: "Auth".into(),
                description: String::new(),
                created_at: at(),
            }),
            None,
            None,
            "Spec \"Auth\" created",
        );
        for (event, text) in [
            (
                SpecEvent::SpecRequirementAdded {
                    requirement: requirement("REQ-AUTH-001"),
                },
                ": requirement REQ-AUTH-001 added",
            ),
            (
                SpecEvent::SpecRequirementUpdated {
                    requirement: requirement("REQ-AUTH-001"),
                },
                ": requirement REQ-AUTH-001 updated",
            ),
            (
                SpecEvent::SpecRequirementRemoved {
                    requirement_id: "REQ-AUTH-001".into(),
                },
                ": requirement REQ-AUTH-001 removed",
            ),
            (
                SpecEvent::SpecPhaseChanged {
                    from: SpecPhase::Draft,
                    to: SpecPhase::Requirements,
                },
                " moved draft → requirements",
            ),
            (
                SpecEvent::SpecRequirementsApproved { at: at() },
                ": requirements approved",
            ),
            (
                SpecEvent::SpecDesignSet {
                    design: Design {
                        architecture: "layers".into(),
                        data_model: String::new(),
                        api_spec: String::new(),
                    },
                },
                ": design set",
            ),
            (
                SpecEvent::SpecDesignApproved {
                    at: at(),
                    next_phase: Some(omoi_domain::spec::SpecPhase::Tasks),
                },
                ": design approved",
            ),
            (
                SpecEvent::SpecPlanSet {
                    plan: omoi_domain::spec::Plan { tickets: vec![] },
                },
                ": plan set (0 tickets, 0 tasks)",
            ),
            (SpecEvent::SpecPlanApproved { at: at() }, ": plan approved"),
            (SpecEvent::SpecCompleted { at: at() }, " completed"),
            (SpecEvent::SpecArchived { at: at() }, " archived"),
        ] {
            says(
                Change::Spec(event),
                s,
                None,
                &format!("Spec \"Auth\"{text}"),
            );
        }
    }

    #[test]
    fn agent_events_are_summarized() {
        let a = Some("worker-1");
        says(
            Change::Agent(AgentEvent::AgentRegistered {
                agent_id: id(1),
                organization_id: id(2),
                project_id: None,
                name: "worker-1".into(),
                agent_type: AgentType::Worker,
                capabilities: BTreeSet::new(),
                capacity: 2,
                registered_at: at(),
            }),
            None,
            None,
            "Agent \"worker-1\" registered (worker, capacity 2)",
        );
        says(
            Change::Agent(AgentEvent::AgentStatusChanged {
                from: AgentStatus::Idle,
                to: AgentStatus::Running,
                reason: None,
                at: at(),
            }),
            a,
            None,
            "Agent \"worker-1\" idle → running",
        );
        says(
            Change::Agent(AgentEvent::AgentStatusChanged {
                from: AgentStatus::Degraded,
                to: AgentStatus::Degraded,
                reason: Some("slow heartbeats".into()),
                at: at(),
            }),
            a,
            None,
            "Agent \"worker-1\" status re-recorded as degraded: slow heartbeats",
        );
        says(
            Change::Agent(AgentEvent::AgentCapabilitiesUpdated {
                capabilities: BTreeSet::from(["rust".to_string(), "browser".to_string()]),
            }),
            a,
            None,
            "Agent \"worker-1\" capabilities set to browser, rust",
        );
    }

    #[test]
    fn project_and_organization_events_are_summarized() {
        says(
            Change::Project(ProjectEvent::ProjectCreated {
                project_id: id(1),
                organization_id: id(2),
                name: "Website".into(),
                description: String::new(),
                created_at: at(),
                settings: Default::default(),
            }),
            None,
            None,
            "Project \"Website\" created",
        );
        says(
            Change::Project(ProjectEvent::ProjectRenamed {
                name: "Site".into(),
            }),
            Some("Website"),
            None,
            "Project \"Website\" renamed to \"Site\"",
        );
        says(
            Change::Project(ProjectEvent::ProjectArchived { archived_at: at() }),
            Some("Site"),
            None,
            "Project \"Site\" archived",
        );
        let o = Some("Acme");
        let org = |e| Change::Organization(e);
        says(
            org(OrganizationEvent::OrganizationCreated {
                organization_id: id(1),
                name: "Acme".into(),
                created_at: at(),
            }),
            None,
            None,
            "Organization \"Acme\" created",
        );
        says(
            org(OrganizationEvent::OrganizationRenamed {
                name: "Acme Inc".into(),
            }),
            o,
            None,
            "Organization \"Acme\" renamed to \"Acme Inc\"",
        );
        says(
            org(OrganizationEvent::OrganizationArchived { archived_at: at() }),
            o,
            None,
            "Organization \"Acme\" archived",
        );
        let user = Principal::User(id(7));
        says(
            org(OrganizationEvent::MemberAdded {
                principal: user,
                role: Role::Admin,
            }),
            o,
            None,
            &format!("user:{} added to Organization \"Acme\" as admin", id(7)),
        );
        says(
            org(OrganizationEvent::MemberRoleChanged {
                principal: user,
                from: Role::Admin,
                to: Role::AgentExecutor,
            }),
            o,
            None,
            &format!(
                "user:{} changed from admin to agent_executor in Organization \"Acme\"",
                id(7)
            ),
        );
        says(
            org(OrganizationEvent::MemberRemoved { principal: user }),
            o,
            None,
            &format!("user:{} removed from Organization \"Acme\"", id(7)),
        );
    }

    #[test]
    fn an_unknown_title_falls_back_to_the_id() {
        says(
            Change::Ticket(TicketEvent::TicketUnblocked),
            None,
            None,
            &format!("Ticket {} unblocked", id(1)),
        );
    }

    #[test]
    fn long_or_multi_line_text_stays_on_one_short_line() {
        assert_eq!(one_line("  a\n\tb  c ", 10), "a b c");
        let long = "x".repeat(300);
        let cut = one_line(&long, TEXT_CHARS);
        assert_eq!(cut.chars().count(), TEXT_CHARS);
        assert!(cut.ends_with('…'));
    }
}
