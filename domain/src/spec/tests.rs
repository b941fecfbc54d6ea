use chrono::Duration;
use cqrs_es::test::TestFramework;
use proptest::prelude::*;

use super::*;
use crate::common::{DomainError, ErrorKind, Scope, Scoped};
use crate::spec::{PlanError, PlanProblem, PlannedTask, PlannedTicket};
use crate::testing::{fold, handle, org_id, project_id, t0};

type SpecTest = TestFramework<Spec>;

fn spec_id() -> Uuid {
    Uuid::from_u128(0x5C)
}

fn at(minutes: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(minutes)
}

fn created() -> SpecEvent {
    SpecEvent::SpecCreated {
        spec_id: spec_id(),
        organization_id: org_id(),
        project_id: project_id(),
        title: "Login".into(),
        description: "Users sign in".into(),
        created_at: t0(),
    }
}

fn create_command(title: &str) -> SpecCommand {
    SpecCommand::CreateSpec {
        spec_id: spec_id(),
        organization_id: org_id(),
        project_id: project_id(),
        title: title.into(),
        description: "Users sign in".into(),
        at: t0(),
    }
}

fn requirement(id: &str) -> Requirement {
    Requirement {
        id: id.into(),
        condition: "a user submits valid credentials".into(),
        action: "start a session".into(),
        acceptance_criteria: vec!["a session cookie is set".into()],
    }
}

fn design(architecture: &str) -> Design {
    Design {
        architecture: architecture.into(),
        data_model: "sessions(id, user_id)".into(),
        api_spec: "POST /login".into(),
    }
}

/// A plan of two tickets whose tasks wait for each other across them.
fn plan(first_title: &str) -> Plan {
    let task = |key: &str, depends_on: &[&str]| PlannedTask {
        key: key.into(),
        title: format!("{first_title} {key}"),
        description: String::new(),
        task_type: "implement".into(),
        depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
        required_capabilities: vec![],
        estimate: None,
        requirement_ids: vec!["REQ-AUTH-001".into()],
    };
    Plan {
        tickets: vec![
            PlannedTicket {
                key: "TKT-1".into(),
                title: format!("{first_title} form"),
                description: String::new(),
                priority: crate::common::Priority::High,
                requirement_ids: vec!["REQ-AUTH-001".into()],
                tasks: vec![task("TSK-1", &[])],
            },
            PlannedTicket {
                key: "TKT-2".into(),
                title: "Session".into(),
                description: String::new(),
                priority: crate::common::Priority::Medium,
                requirement_ids: vec![],
                tasks: vec![task("TSK-2", &["TSK-1"])],
            },
        ],
    }
}

fn added(id: &str) -> SpecEvent {
    SpecEvent::SpecRequirementAdded {
        requirement: requirement(id),
    }
}

fn to_requirements() -> SpecEvent {
    SpecEvent::SpecPhaseChanged {
        from: SpecPhase::Draft,
        to: SpecPhase::Requirements,
    }
}

/// The events that walk a fresh spec to `phase` along the happy path. The spec reaches
/// `design` without a design set and `tasks` without a plan; `archived` is archived
/// straight from `draft`.
fn history_at(phase: SpecPhase) -> Vec<SpecEvent> {
    let mut events = vec![created()];
    let steps = [
        (
            SpecPhase::Requirements,
            vec![to_requirements(), added("REQ-AUTH-001")],
        ),
        (
            SpecPhase::Design,
            vec![SpecEvent::SpecRequirementsApproved { at: at(1) }],
        ),
        (
            SpecPhase::Tasks,
            vec![
                SpecEvent::SpecDesignSet {
                    design: design("monolith"),
                },
                SpecEvent::SpecDesignApproved {
                    at: at(2),
                    next_phase: Some(SpecPhase::Tasks),
                },
            ],
        ),
        (
            SpecPhase::Executing,
            vec![
                SpecEvent::SpecPlanSet {
                    plan: plan("Login"),
                },
                SpecEvent::SpecPlanApproved { at: at(2) },
            ],
        ),
        (
            SpecPhase::Completed,
            vec![SpecEvent::SpecCompleted { at: at(3) }],
        ),
    ];
    if phase == SpecPhase::Archived {
        events.push(SpecEvent::SpecArchived { at: at(9) });
        return events;
    }
    for (reached, step) in steps {
        if phase == SpecPhase::Draft {
            break;
        }
        events.extend(step);
        if reached == phase {
            break;
        }
    }
    events
}

#[test]
fn the_happy_path_history_reaches_each_phase() {
    for phase in SpecPhase::ALL {
        assert_eq!(fold::<Spec>(&history_at(phase)).phase, phase, "{phase}");
    }
}

// ---------------------------------------------------------------- creation

#[tokio::test]
async fn creating_a_spec_records_its_details() {
    SpecTest::with(())
        .given_no_previous_events()
        .when_async(create_command("  Login "))
        .await
        .then_expect_events(vec![created()]);
    let state: Spec = fold(&[created()]);
    assert_eq!(state.phase, SpecPhase::Draft);
    assert_eq!(state.created_at, Some(t0()));
    assert_eq!(
        state.scope(),
        Some(Scope {
            organization_id: org_id(),
            project_id: Some(project_id()),
        })
    );
    assert_eq!(Spec::default().scope(), None);
}

#[tokio::test]
async fn creating_a_spec_twice_or_without_a_title_is_refused() {
    SpecTest::with(())
        .given(vec![created()])
        .when_async(create_command("Login"))
        .await
        .then_expect_error(SpecError::AlreadyExists);
    SpecTest::with(())
        .given_no_previous_events()
        .when_async(create_command("  "))
        .await
        .then_expect_error(SpecError::EmptyTitle);
    SpecTest::with(())
        .given_no_previous_events()
        .when_async(create_command(&"x".repeat(201)))
        .await
        .then_expect_error(SpecError::TitleTooLong { max: 200 });
}

// ---------------------------------------------------------------- every command in every phase

#[derive(Debug, Clone, Copy)]
enum Kind {
    Create,
    Add,
    Update,
    Remove,
    ApproveRequirements,
    SetDesign,
    ApproveDesign,
    SetPlan,
    ApprovePlan,
    Complete,
    Archive,
}

const KINDS: [Kind; 11] = [
    Kind::Create,
    Kind::Add,
    Kind::Update,
    Kind::Remove,
    Kind::ApproveRequirements,
    Kind::SetDesign,
    Kind::ApproveDesign,
    Kind::SetPlan,
    Kind::ApprovePlan,
    Kind::Complete,
    Kind::Archive,
];

fn updated_requirement() -> Requirement {
    Requirement {
        action: "start a session and record the login".into(),
        ..requirement("REQ-AUTH-001")
    }
}

fn command(kind: Kind) -> SpecCommand {
    match kind {
        Kind::Create => create_command("Login"),
        Kind::Add => SpecCommand::AddRequirement(requirement("REQ-AUTH-002")),
        Kind::Update => SpecCommand::UpdateRequirement(updated_requirement()),
        Kind::Remove => SpecCommand::RemoveRequirement {
            id: "REQ-AUTH-001".into(),
        },
        Kind::ApproveRequirements => SpecCommand::ApproveRequirements { at: at(5) },
        Kind::SetDesign => SpecCommand::SetDesign(design("services")),
        Kind::ApproveDesign => SpecCommand::ApproveDesign { at: at(5) },
        Kind::SetPlan => SpecCommand::SetPlan(plan("Sign-in")),
        Kind::ApprovePlan => SpecCommand::ApprovePlan { at: at(5) },
        Kind::Complete => SpecCommand::CompleteSpec { at: at(5) },
        Kind::Archive => SpecCommand::ArchiveSpec { at: at(5) },
    }
}

/// The rules restated as a table: what `kind` yields against `history_at(phase)`.
fn expected(phase: SpecPhase, kind: Kind) -> Result<Vec<SpecEvent>, SpecError> {
    use SpecPhase as P;
    match (kind, phase) {
        (Kind::Create, _) => Err(SpecError::AlreadyExists),
        (_, P::Archived) => Err(SpecError::Archived),
        (Kind::Add, P::Draft) => Ok(vec![to_requirements(), added("REQ-AUTH-002")]),
        (Kind::Add, P::Requirements) => Ok(vec![added("REQ-AUTH-002")]),
        (Kind::Update, P::Requirements) => Ok(vec![SpecEvent::SpecRequirementUpdated {
            requirement: updated_requirement(),
        }]),
        (Kind::Remove, P::Requirements) => Ok(vec![SpecEvent::SpecRequirementRemoved {
            requirement_id: "REQ-AUTH-001".into(),
        }]),
        (Kind::Add | Kind::Update | Kind::Remove, phase) => {
            Err(SpecError::RequirementsLocked { phase })
        }
        (Kind::ApproveRequirements, P::Requirements) => {
            Ok(vec![SpecEvent::SpecRequirementsApproved { at: at(5) }])
        }
        (Kind::ApproveRequirements, phase) => {
            Err(SpecError::NotAwaitingRequirementsApproval { phase })
        }
        (Kind::SetDesign, P::Design) => Ok(vec![SpecEvent::SpecDesignSet {
            design: design("services"),
        }]),
        (Kind::SetDesign, phase) => Err(SpecError::DesignLocked { phase }),
        // `history_at(Design)` has no design yet; approving one is covered below.
        (Kind::ApproveDesign, P::Design) => Err(SpecError::NoDesign),
        (Kind::ApproveDesign, phase) => Err(SpecError::NotAwaitingDesignApproval { phase }),
        (Kind::SetPlan, P::Tasks) => Ok(vec![SpecEvent::SpecPlanSet {
            plan: plan("Sign-in"),
        }]),
        (Kind::SetPlan, phase) => Err(SpecError::PlanLocked { phase }),
        // `history_at(Tasks)` has no plan yet; approving one is covered below.
        (Kind::ApprovePlan, P::Tasks) => Err(SpecError::NoPlan),
        (Kind::ApprovePlan, phase) => Err(SpecError::NotAwaitingPlanApproval { phase }),
        (Kind::Complete, P::Executing) => Ok(vec![SpecEvent::SpecCompleted { at: at(5) }]),
        (Kind::Complete, phase) => Err(SpecError::NotExecuting { phase }),
        (Kind::Archive, _) => Ok(vec![SpecEvent::SpecArchived { at: at(5) }]),
    }
}

#[test]
fn every_command_in_every_phase_follows_the_table() {
    for phase in SpecPhase::ALL {
        let state: Spec = fold(&history_at(phase));
        for kind in KINDS {
            let (handled, result) = handle(&state, command(kind), &());
            let expected = expected(phase, kind);
            assert_eq!(result, expected, "{kind:?} in {phase}");
            if expected.is_err() {
                assert_eq!(
                    handled, state,
                    "a refused {kind:?} in {phase} changed the spec"
                );
            }
        }
    }
}

#[test]
fn every_command_on_a_missing_spec_answers_not_found() {
    for kind in KINDS {
        let (_, result) = handle(&Spec::default(), command(kind), &());
        match kind {
            Kind::Create => assert_eq!(result, Ok(vec![created()])),
            _ => assert_eq!(result, Err(SpecError::NotFound), "{kind:?}"),
        }
    }
}

// ---------------------------------------------------------------- requirements

#[tokio::test]
async fn the_first_requirement_moves_a_draft_to_requirements() {
    SpecTest::with(())
        .given(vec![created()])
        .when_async(SpecCommand::AddRequirement(Requirement {
            condition: "  a user submits valid credentials ".into(),
            acceptance_criteria: vec![" a session cookie is set ".into()],
            ..requirement("REQ-AUTH-001")
        }))
        .await
        .then_expect_events(vec![to_requirements(), added("REQ-AUTH-001")]);
    let state: Spec = fold(&history_at(SpecPhase::Requirements));
    assert_eq!(state.phase, SpecPhase::Requirements);
    assert_eq!(state.requirements, vec![requirement("REQ-AUTH-001")]);
}

/// A spec holds at most `MAX_REQUIREMENTS`: the one past them is refused, and one fewer
/// still takes one more.
#[tokio::test]
async fn a_spec_holds_a_bounded_number_of_requirements() {
    let full: Vec<SpecEvent> = history_at(SpecPhase::Requirements)
        .into_iter()
        .chain((2..=MAX_REQUIREMENTS).map(|n| added(&format!("REQ-LOAD-{n:03}"))))
        .collect();
    let state: Spec = fold(&full);
    assert_eq!(state.requirements.len(), MAX_REQUIREMENTS);
    SpecTest::with(())
        .given(full.clone())
        .when_async(SpecCommand::AddRequirement(requirement("REQ-LOAD-999")))
        .await
        .then_expect_error(SpecError::TooManyRequirements {
            max: MAX_REQUIREMENTS,
        });
    SpecTest::with(())
        .given(full[..full.len() - 1].to_vec())
        .when_async(SpecCommand::AddRequirement(requirement("REQ-LOAD-999")))
        .await
        .then_expect_events(vec![added("REQ-LOAD-999")]);
}

#[tokio::test]
async fn a_duplicate_requirement_id_is_refused() {
    SpecTest::with(())
        .given(history_at(SpecPhase::Requirements))
        .when_async(SpecCommand::AddRequirement(requirement("REQ-AUTH-001")))
        .await
        .then_expect_error(SpecError::DuplicateRequirementId("REQ-AUTH-001".into()));
}

#[test]
fn requirement_ids_follow_the_req_pattern() {
    for good in ["REQ-1", "REQ-AUTH-001", "REQ-XXX-CAT-NNN", "REQ-A1B2-3"] {
        assert!(is_requirement_id(good), "{good}");
    }
    let too_long = format!("REQ-{}", "A".repeat(61));
    for bad in [
        "",
        "REQ",
        "REQ-",
        "req-auth-001",
        "REQ-auth-001",
        "REQ--001",
        "REQ-AUTH-",
        "REQ-AUTH_001",
        " REQ-AUTH-001",
        "REQ-AUTH-001 ",
        "REQ-ÄUTH-1",
        "REQ-A B",
        "RQ-AUTH-001",
        "XREQ-AUTH-001",
        &too_long,
    ] {
        assert!(!is_requirement_id(bad), "{bad:?}");
        let (_, result) = handle(
            &fold::<Spec>(&[created()]),
            SpecCommand::AddRequirement(requirement(bad)),
            &(),
        );
        assert_eq!(result, Err(SpecError::InvalidRequirementId(bad.into())));
    }
    assert!(is_requirement_id(&format!("REQ-{}", "A".repeat(60))));
}

proptest! {
    /// The hand-written check and the documented pattern (with its length bound) agree.
    #[test]
    fn requirement_ids_are_exactly_the_documented_pattern(id in "(REQ|req|RE)?(-[A-Z0-9a-z]{0,4}){0,4}-?") {
        let pattern = regex_lite::Regex::new(REQUIREMENT_ID_PATTERN).expect("a valid pattern");
        let documented = pattern.is_match(&id) && id.len() <= MAX_REQUIREMENT_ID_CHARS;
        prop_assert_eq!(is_requirement_id(&id), documented, "{}", id);
    }
}

#[test]
fn ears_clauses_and_acceptance_criteria_are_required_and_bounded() {
    let draft: Spec = fold(&[created()]);
    let cases = [
        (
            Requirement {
                condition: "  ".into(),
                ..requirement("REQ-A-1")
            },
            SpecError::EmptyCondition,
        ),
        (
            Requirement {
                action: String::new(),
                ..requirement("REQ-A-1")
            },
            SpecError::EmptyAction,
        ),
        (
            Requirement {
                action: "x".repeat(2001),
                ..requirement("REQ-A-1")
            },
            SpecError::TextTooLong {
                field: "action",
                max: 2000,
            },
        ),
        (
            Requirement {
                acceptance_criteria: vec![],
                ..requirement("REQ-A-1")
            },
            SpecError::NoAcceptanceCriteria,
        ),
        (
            Requirement {
                acceptance_criteria: vec!["ok".into(), " ".into()],
                ..requirement("REQ-A-1")
            },
            SpecError::EmptyAcceptanceCriterion,
        ),
        (
            Requirement {
                acceptance_criteria: vec!["ok".into(); 51],
                ..requirement("REQ-A-1")
            },
            SpecError::TooManyAcceptanceCriteria { max: 50 },
        ),
    ];
    for (bad, error) in cases {
        let (handled, result) = handle(&draft, SpecCommand::AddRequirement(bad.clone()), &());
        assert_eq!(result, Err(error.clone()), "{bad:?}");
        assert_eq!(handled, draft);
        assert_eq!(error.kind(), ErrorKind::Invalid);
    }
    let (_, result) = handle(
        &draft,
        SpecCommand::AddRequirement(Requirement {
            action: "x".repeat(2000),
            ..requirement("REQ-A-1")
        }),
        &(),
    );
    assert!(result.is_ok());
}

#[tokio::test]
async fn an_update_keeps_the_requirements_order() {
    let mut events = history_at(SpecPhase::Requirements);
    events.push(added("REQ-AUTH-002"));
    events.push(SpecEvent::SpecRequirementUpdated {
        requirement: updated_requirement(),
    });
    let state: Spec = fold(&events);
    let ids: Vec<_> = state.requirements.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["REQ-AUTH-001", "REQ-AUTH-002"]);
    assert_eq!(state.requirements[0], updated_requirement());
}

#[tokio::test]
async fn updating_an_unknown_or_unchanged_requirement_is_refused() {
    SpecTest::with(())
        .given(history_at(SpecPhase::Requirements))
        .when_async(SpecCommand::UpdateRequirement(requirement("REQ-AUTH-404")))
        .await
        .then_expect_error(SpecError::RequirementNotFound("REQ-AUTH-404".into()));
    SpecTest::with(())
        .given(history_at(SpecPhase::Requirements))
        .when_async(SpecCommand::UpdateRequirement(requirement("REQ-AUTH-001")))
        .await
        .then_expect_events(vec![]);
    SpecTest::with(())
        .given(history_at(SpecPhase::Requirements))
        .when_async(SpecCommand::UpdateRequirement(Requirement {
            condition: String::new(),
            ..requirement("REQ-AUTH-001")
        }))
        .await
        .then_expect_error(SpecError::EmptyCondition);
}

#[tokio::test]
async fn removing_the_last_requirement_keeps_the_phase_but_blocks_approval() {
    SpecTest::with(())
        .given(history_at(SpecPhase::Requirements))
        .when_async(SpecCommand::RemoveRequirement {
            id: "REQ-AUTH-404".into(),
        })
        .await
        .then_expect_error(SpecError::RequirementNotFound("REQ-AUTH-404".into()));
    let mut events = history_at(SpecPhase::Requirements);
    events.push(SpecEvent::SpecRequirementRemoved {
        requirement_id: "REQ-AUTH-001".into(),
    });
    let state: Spec = fold(&events);
    assert_eq!(state.phase, SpecPhase::Requirements);
    assert!(state.requirements.is_empty());
    SpecTest::with(())
        .given(events)
        .when_async(SpecCommand::ApproveRequirements { at: at(5) })
        .await
        .then_expect_error(SpecError::NoRequirements);
}

#[tokio::test]
async fn approving_requirements_moves_the_spec_to_design() {
    SpecTest::with(())
        .given(history_at(SpecPhase::Requirements))
        .when_async(SpecCommand::ApproveRequirements { at: at(1) })
        .await
        .then_expect_events(vec![SpecEvent::SpecRequirementsApproved { at: at(1) }]);
    let state: Spec = fold(&history_at(SpecPhase::Design));
    assert_eq!(state.phase, SpecPhase::Design);
    assert_eq!(state.requirements_approved_at, Some(at(1)));
}

// ---------------------------------------------------------------- design

#[tokio::test]
async fn a_design_needs_an_architecture() {
    SpecTest::with(())
        .given(history_at(SpecPhase::Design))
        .when_async(SpecCommand::SetDesign(design(" ")))
        .await
        .then_expect_error(SpecError::EmptyArchitecture);
    SpecTest::with(())
        .given(history_at(SpecPhase::Design))
        .when_async(SpecCommand::SetDesign(Design {
            api_spec: "x".repeat(20_001),
            ..design("monolith")
        }))
        .await
        .then_expect_error(SpecError::TextTooLong {
            field: "api_spec",
            max: 20_000,
        });
}

#[tokio::test]
async fn a_design_can_be_replaced_but_not_set_unchanged() {
    let mut events = history_at(SpecPhase::Design);
    events.push(SpecEvent::SpecDesignSet {
        design: design("monolith"),
    });
    SpecTest::with(())
        .given(events.clone())
        .when_async(SpecCommand::SetDesign(design(" monolith ")))
        .await
        .then_expect_events(vec![]);
    SpecTest::with(())
        .given(events)
        .when_async(SpecCommand::SetDesign(design("services")))
        .await
        .then_expect_events(vec![SpecEvent::SpecDesignSet {
            design: design("services"),
        }]);
}

#[tokio::test]
async fn approving_a_set_design_moves_the_spec_to_executing() {
    let mut events = history_at(SpecPhase::Design);
    events.push(SpecEvent::SpecDesignSet {
        design: design("monolith"),
    });
    SpecTest::with(())
        .given(events)
        .when_async(SpecCommand::ApproveDesign { at: at(2) })
        .await
        .then_expect_events(vec![SpecEvent::SpecDesignApproved {
            at: at(2),
            next_phase: Some(SpecPhase::Tasks),
        }]);
    let state: Spec = fold(&history_at(SpecPhase::Tasks));
    assert_eq!(state.phase, SpecPhase::Tasks);
    assert_eq!(state.design, Some(design("monolith")));
    assert_eq!(state.design_approved_at, Some(at(2)));
}

/// An approval written before specs had a plan (no `next_phase`) still means what it
/// meant then: the spec went to executing.
#[test]
fn a_design_approval_from_before_plans_still_moves_to_executing() {
    let mut events = history_at(SpecPhase::Design);
    let legacy: SpecEvent = serde_json::from_value(serde_json::json!(
        {"SpecDesignApproved": {"at": "2026-01-01T00:00:02Z"}}
    ))
    .expect("a stored legacy payload");
    events.extend([
        SpecEvent::SpecDesignSet {
            design: design("monolith"),
        },
        legacy,
    ]);
    assert_eq!(fold::<Spec>(&events).phase, SpecPhase::Executing);
}

// ---------------------------------------------------------------- the plan

#[tokio::test]
async fn a_plan_is_set_in_tasks_and_its_approval_moves_the_spec_to_executing() {
    SpecTest::with(())
        .given(history_at(SpecPhase::Tasks))
        .when_async(SpecCommand::SetPlan(plan("Login")))
        .await
        .then_expect_events(vec![SpecEvent::SpecPlanSet {
            plan: plan("Login"),
        }]);
    let mut events = history_at(SpecPhase::Tasks);
    events.push(SpecEvent::SpecPlanSet {
        plan: plan("Login"),
    });
    // The same plan again records nothing.
    SpecTest::with(())
        .given(events.clone())
        .when_async(SpecCommand::SetPlan(plan("Login")))
        .await
        .then_expect_events(vec![]);
    SpecTest::with(())
        .given(events)
        .when_async(SpecCommand::ApprovePlan { at: at(4) })
        .await
        .then_expect_events(vec![SpecEvent::SpecPlanApproved { at: at(4) }]);
    let state: Spec = fold(&history_at(SpecPhase::Executing));
    assert_eq!(state.plan, Some(plan("Login")));
    assert_eq!(state.plan_approved_at, Some(at(2)));
}

#[test]
fn a_plan_naming_an_unknown_requirement_is_refused_naming_the_place() {
    let mut broken = plan("Login");
    broken.tickets[1].requirement_ids = vec!["REQ-AUTH-404".into()];
    let (_, result) = handle(
        &fold::<Spec>(&history_at(SpecPhase::Tasks)),
        SpecCommand::SetPlan(broken),
        &(),
    );
    let error = result.expect_err("refused");
    assert_eq!(error.code(), "unknown_requirement");
    assert_eq!(
        error.field_path().as_deref(),
        Some("tickets[1].requirement_ids[0]")
    );
}

// ---------------------------------------------------------------- completion and archive

#[tokio::test]
async fn completing_and_archiving_record_when_and_from_where() {
    let state: Spec = fold(&history_at(SpecPhase::Completed));
    assert_eq!(state.completed_at, Some(at(3)));
    let mut events = history_at(SpecPhase::Completed);
    events.push(SpecEvent::SpecArchived { at: at(4) });
    let state: Spec = fold(&events);
    assert_eq!(state.phase, SpecPhase::Archived);
    assert_eq!(state.archived_at, Some(at(4)));
    assert_eq!(state.phase_before_archive, Some(SpecPhase::Completed));
    SpecTest::with(())
        .given(events)
        .when_async(SpecCommand::ArchiveSpec { at: at(5) })
        .await
        .then_expect_error(SpecError::Archived);
}

// ---------------------------------------------------------------- errors and events

fn every_error() -> Vec<SpecError> {
    use SpecError::*;
    vec![
        NotFound,
        AlreadyExists,
        EmptyTitle,
        TitleTooLong { max: 1 },
        TextTooLong {
            field: "description",
            max: 1,
        },
        InvalidRequirementId("x".into()),
        DuplicateRequirementId("x".into()),
        RequirementNotFound("x".into()),
        EmptyCondition,
        EmptyAction,
        NoAcceptanceCriteria,
        EmptyAcceptanceCriterion,
        TooManyAcceptanceCriteria { max: 1 },
        EmptyArchitecture,
        RequirementsLocked {
            phase: SpecPhase::Design,
        },
        NotAwaitingRequirementsApproval {
            phase: SpecPhase::Draft,
        },
        NoRequirements,
        DesignLocked {
            phase: SpecPhase::Draft,
        },
        NotAwaitingDesignApproval {
            phase: SpecPhase::Draft,
        },
        NoDesign,
        PlanLocked {
            phase: SpecPhase::Draft,
        },
        NotAwaitingPlanApproval {
            phase: SpecPhase::Draft,
        },
        NoPlan,
        Plan(PlanError {
            field: "tickets[0].tasks[0].depends_on[0]".into(),
            problem: PlanProblem::Cycle("TSK-1 -> TSK-1".into()),
        }),
        NotExecuting {
            phase: SpecPhase::Draft,
        },
        Archived,
    ]
}

#[test]
fn every_error_has_a_unique_code_and_invalid_ones_name_their_field() {
    let errors = every_error();
    let codes: std::collections::BTreeSet<_> = errors.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), errors.len());
    for error in &errors {
        if error.kind() == ErrorKind::Invalid {
            assert!(error.field().is_some(), "{error:?}");
        }
    }
    assert_eq!(SpecError::NotFound.kind(), ErrorKind::NotFound);
    assert_eq!(
        SpecError::RequirementNotFound("x".into()).kind(),
        ErrorKind::NotFound
    );
    assert_eq!(SpecError::NoDesign.kind(), ErrorKind::Conflict);
    assert_eq!(
        SpecError::InvalidRequirementId("x".into()).field(),
        Some("id")
    );
}

#[test]
fn events_are_named_after_their_variant_at_version_1() {
    use cqrs_es::DomainEvent;
    let mut events = history_at(SpecPhase::Completed);
    events.extend([
        SpecEvent::SpecRequirementUpdated {
            requirement: requirement("REQ-A-1"),
        },
        SpecEvent::SpecRequirementRemoved {
            requirement_id: "REQ-A-1".into(),
        },
        SpecEvent::SpecArchived { at: t0() },
    ]);
    for event in events {
        let json = serde_json::to_value(&event).expect("events serialize");
        let name = json
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .expect("externally tagged");
        assert_eq!(event.event_type(), name);
        assert_eq!(event.event_version(), "1");
    }
    assert_eq!(
        serde_json::to_value(SpecPhase::Executing).expect("phase serializes"),
        "executing"
    );
}

// ---------------------------------------------------------------- properties

fn requirement_id() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["REQ-A-1", "REQ-A-2", "REQ-B-1"])
}

/// Mostly valid requirements (so sequences get past `requirements`), sometimes one
/// broken in one of the ways the rules refuse.
fn any_requirement() -> impl Strategy<Value = Requirement> {
    let valid = (
        requirement_id(),
        prop::sample::select(vec!["start a session", "log the attempt"]),
        prop::collection::vec(prop::sample::select(vec!["ok", "fast"]), 1..3),
    )
        .prop_map(|(id, action, criteria)| Requirement {
            action: action.into(),
            acceptance_criteria: criteria.into_iter().map(String::from).collect(),
            ..requirement(id)
        });
    let broken = (
        requirement_id(),
        prop::sample::select(vec!["id", "condition", "action", "criteria", "criterion"]),
    )
        .prop_map(|(id, what)| {
            let mut r = requirement(id);
            match what {
                "id" => r.id = "req-a-1".into(),
                "condition" => r.condition = " ".into(),
                "action" => r.action = String::new(),
                "criteria" => r.acceptance_criteria.clear(),
                _ => r.acceptance_criteria.push(String::new()),
            }
            r
        });
    prop_oneof![3 => valid, 1 => broken]
}

fn any_command() -> impl Strategy<Value = SpecCommand> {
    prop_oneof![
        1 => Just(create_command("s")),
        6 => any_requirement().prop_map(SpecCommand::AddRequirement),
        3 => any_requirement().prop_map(SpecCommand::UpdateRequirement),
        2 => requirement_id().prop_map(|id| SpecCommand::RemoveRequirement { id: id.into() }),
        3 => Just(SpecCommand::ApproveRequirements { at: t0() }),
        3 => prop::sample::select(vec!["", "a", "b"])
            .prop_map(|a| SpecCommand::SetDesign(design(a))),
        3 => Just(SpecCommand::ApproveDesign { at: t0() }),
        3 => prop::sample::select(vec!["", "a", "b"])
            .prop_map(|a| SpecCommand::SetPlan(plan(a))),
        3 => Just(SpecCommand::ApprovePlan { at: t0() }),
        2 => Just(SpecCommand::CompleteSpec { at: t0() }),
        1 => Just(SpecCommand::ArchiveSpec { at: t0() }),
    ]
}

/// The phase moves a single command may make.
fn legal_move(from: SpecPhase, to: SpecPhase) -> bool {
    use SpecPhase as P;
    from == to
        || matches!(
            (from, to),
            (P::Draft, P::Requirements)
                | (P::Requirements, P::Design)
                | (P::Design, P::Tasks)
                | (P::Tasks, P::Executing)
                | (P::Executing, P::Completed)
        )
        || (from != P::Archived && to == P::Archived)
}

/// The invariants every reachable spec satisfies.
fn check_invariants(state: &Spec) -> Result<(), TestCaseError> {
    use SpecPhase as P;
    // For an archived spec, judge the phase it was archived from.
    let phase = match state.phase {
        P::Archived => state.phase_before_archive.unwrap_or(P::Draft),
        phase => phase,
    };
    prop_assert_eq!(state.archived_at.is_some(), state.phase == P::Archived);
    if phase == P::Draft {
        prop_assert!(state.requirements.is_empty());
    }
    let past_requirements = matches!(phase, P::Design | P::Tasks | P::Executing | P::Completed);
    prop_assert_eq!(state.requirements_approved_at.is_some(), past_requirements);
    if past_requirements {
        prop_assert!(
            !state.requirements.is_empty(),
            "approved without requirements"
        );
    }
    let past_design = matches!(phase, P::Tasks | P::Executing | P::Completed);
    prop_assert_eq!(state.design_approved_at.is_some(), past_design);
    if past_design {
        prop_assert!(state.design.is_some(), "past design without a design");
    }
    if state.design.is_some() {
        prop_assert!(matches!(
            phase,
            P::Design | P::Tasks | P::Executing | P::Completed
        ));
    }
    let past_plan = matches!(phase, P::Executing | P::Completed);
    prop_assert_eq!(state.plan_approved_at.is_some(), past_plan);
    if past_plan {
        prop_assert!(state.plan.is_some(), "executing without a plan");
    }
    if state.plan.is_some() {
        prop_assert!(matches!(phase, P::Tasks | P::Executing | P::Completed));
    }
    let mut ids = std::collections::BTreeSet::new();
    for requirement in &state.requirements {
        prop_assert!(is_requirement_id(&requirement.id));
        prop_assert!(ids.insert(requirement.id.clone()), "duplicate id");
        prop_assert!(!requirement.condition.is_empty() && !requirement.action.is_empty());
        prop_assert!(!requirement.acceptance_criteria.is_empty());
    }
    Ok(())
}

proptest! {
    /// Whatever commands arrive, the state is the fold of the accepted events, a refused
    /// command writes nothing, the phase moves only forward one step (or to archived),
    /// approved requirements never change, and no illegal state is reachable.
    #[test]
    fn state_is_the_fold_of_events_and_never_illegal(
        commands in prop::collection::vec(any_command(), 1..60)
    ) {
        let mut state = Spec::default();
        let mut log = Vec::new();
        // Creation first, so most of each sequence exercises a spec that exists; later
        // creations (refused) and commands before it are covered by the unit tests.
        for command in std::iter::once(create_command("s")).chain(commands) {
            let before = state.clone();
            let (handled, result) = handle(&state, command, &());
            match result {
                Ok(events) => {
                    log.extend(events);
                    state = handled;
                }
                Err(_) => prop_assert_eq!(&handled, &state, "a refused command changed state"),
            }
            prop_assert_eq!(&state, &fold::<Spec>(&log));
            prop_assert!(legal_move(before.phase, state.phase), "{} -> {}", before.phase, state.phase);
            if before.requirements_approved_at.is_some() {
                prop_assert_eq!(&state.requirements, &before.requirements);
            }
            check_invariants(&state)?;
        }
    }
}
