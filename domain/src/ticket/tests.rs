use cqrs_es::test::TestFramework;
use proptest::prelude::*;

use super::*;
use crate::common::{Phase, Priority};
use crate::testing::{fold, handle, org_id, project_id, t0};

type TicketTest = TestFramework<Ticket>;

fn ticket_id() -> Uuid {
    Uuid::from_u128(0x71)
}

fn created() -> TicketEvent {
    TicketEvent::TicketCreated {
        ticket_id: ticket_id(),
        organization_id: org_id(),
        project_id: project_id(),
        spec_id: None,
        title: "Add login".into(),
        description: String::new(),
        priority: Priority::High,
        phase: Phase::Backlog,
    }
}

fn create_command(title: &str) -> TicketCommand {
    TicketCommand::CreateTicket {
        ticket_id: ticket_id(),
        organization_id: org_id(),
        project_id: project_id(),
        spec_id: None,
        title: title.into(),
        description: String::new(),
        priority: Priority::High,
        phase: Phase::Backlog,
        plan_key: None,
    }
}

/// The events that walk a fresh ticket to `status` along the happy path.
fn history_at(status: TicketStatus) -> Vec<TicketEvent> {
    let mut events = vec![created()];
    let mut current = TicketStatus::Backlog;
    while current != status {
        let next = current.next().expect("status reachable on the happy path");
        events.push(TicketEvent::TicketStatusChanged {
            from: current,
            to: next,
            note: None,
        });
        current = next;
    }
    events
}

fn blocked() -> TicketEvent {
    TicketEvent::TicketBlocked {
        reason: BlockReason::FailingChecks,
        note: None,
        blocked_at: t0(),
    }
}

fn transition(to: TicketStatus) -> TicketCommand {
    TicketCommand::TransitionTicket { to, note: None }
}

#[tokio::test]
async fn creating_a_ticket_records_its_details() {
    TicketTest::with(())
        .given_no_previous_events()
        .when_async(create_command("  Add login "))
        .await
        .then_expect_events(vec![created()]);
}

#[tokio::test]
async fn creating_a_ticket_twice_is_refused() {
    TicketTest::with(())
        .given(vec![created()])
        .when_async(create_command("Add login"))
        .await
        .then_expect_error(TicketError::AlreadyExists);
}

#[tokio::test]
async fn an_empty_title_is_refused() {
    TicketTest::with(())
        .given_no_previous_events()
        .when_async(create_command("   "))
        .await
        .then_expect_error(TicketError::EmptyTitle);
}

#[tokio::test]
async fn commands_on_a_missing_ticket_answer_not_found() {
    TicketTest::with(())
        .given_no_previous_events()
        .when_async(transition(TicketStatus::Analyzing))
        .await
        .then_expect_error(TicketError::NotFound);
}

#[test]
fn every_status_pair_is_legal_exactly_when_it_is_the_next_step() {
    for from in TicketStatus::ALL {
        for to in TicketStatus::ALL {
            let state: Ticket = fold(&history_at(from));
            let (_, result) = handle(&state, transition(to), &());
            let expected = if from == TicketStatus::Done {
                Err(TicketError::Done)
            } else if from == to {
                Err(TicketError::AlreadyInStatus(to))
            } else if from == TicketStatus::Testing && to == TicketStatus::Building {
                Err(TicketError::UseRegressToReturnToBuilding)
            } else if from.next() == Some(to) {
                Ok(vec![TicketEvent::TicketStatusChanged {
                    from,
                    to,
                    note: None,
                }])
            } else {
                Err(TicketError::IllegalTransition { from, to })
            };
            assert_eq!(result, expected, "{from} -> {to}");
        }
    }
}

#[tokio::test]
async fn a_regression_returns_a_tested_ticket_to_building_with_feedback() {
    TicketTest::with(())
        .given(history_at(TicketStatus::Testing))
        .when_async(TicketCommand::RegressTicket {
            feedback: "login fails on Safari".into(),
        })
        .await
        .then_expect_events(vec![TicketEvent::TicketRegressed {
            feedback: "login fails on Safari".into(),
        }]);
    let mut events = history_at(TicketStatus::Testing);
    events.push(TicketEvent::TicketRegressed {
        feedback: "login fails on Safari".into(),
    });
    let state: Ticket = fold(&events);
    assert_eq!(state.status, TicketStatus::Building);
    assert_eq!(
        state.regressions[0].validation_feedback,
        "login fails on Safari"
    );
}

/// A blocked ticket in testing regresses unblocked, as every other move clears the block.
#[tokio::test]
async fn a_regression_clears_the_block() {
    let mut given = history_at(TicketStatus::Testing);
    given.push(blocked());
    TicketTest::with(())
        .given(given)
        .when_async(TicketCommand::RegressTicket {
            feedback: "flaky".into(),
        })
        .await
        .then_expect_events(vec![
            TicketEvent::TicketUnblocked,
            TicketEvent::TicketRegressed {
                feedback: "flaky".into(),
            },
        ]);
}

#[tokio::test]
async fn only_a_ticket_in_testing_can_regress() {
    TicketTest::with(())
        .given(history_at(TicketStatus::Building))
        .when_async(TicketCommand::RegressTicket {
            feedback: "x".into(),
        })
        .await
        .then_expect_error(TicketError::RegressOnlyFromTesting(TicketStatus::Building));
}

#[tokio::test]
async fn a_regression_needs_feedback() {
    TicketTest::with(())
        .given(history_at(TicketStatus::Testing))
        .when_async(TicketCommand::RegressTicket {
            feedback: " ".into(),
        })
        .await
        .then_expect_error(TicketError::EmptyFeedback);
}

#[tokio::test]
async fn a_blocked_ticket_cannot_reach_done() {
    let mut events = history_at(TicketStatus::Testing);
    events.push(blocked());
    TicketTest::with(())
        .given(events)
        .when_async(transition(TicketStatus::Done))
        .await
        .then_expect_error(TicketError::BlockedCannotBeDone);
}

#[tokio::test]
async fn moving_a_blocked_ticket_to_building_clears_the_block() {
    let mut events = history_at(TicketStatus::Analyzing);
    events.push(blocked());
    TicketTest::with(())
        .given(events)
        .when_async(transition(TicketStatus::Building))
        .await
        .then_expect_events(vec![
            TicketEvent::TicketUnblocked,
            TicketEvent::TicketStatusChanged {
                from: TicketStatus::Analyzing,
                to: TicketStatus::Building,
                note: None,
            },
        ]);
}

#[tokio::test]
async fn a_done_ticket_cannot_be_blocked() {
    TicketTest::with(())
        .given(history_at(TicketStatus::Done))
        .when_async(TicketCommand::BlockTicket {
            reason: BlockReason::Dependency,
            note: None,
            at: t0(),
        })
        .await
        .then_expect_error(TicketError::Done);
}

#[tokio::test]
async fn blocking_twice_and_unblocking_an_unblocked_ticket_are_refused() {
    TicketTest::with(())
        .given(vec![created(), blocked()])
        .when_async(TicketCommand::BlockTicket {
            reason: BlockReason::Environment,
            note: None,
            at: t0(),
        })
        .await
        .then_expect_error(TicketError::AlreadyBlocked);
    TicketTest::with(())
        .given(vec![created()])
        .when_async(TicketCommand::UnblockTicket)
        .await
        .then_expect_error(TicketError::NotBlocked);
}

#[tokio::test]
async fn an_update_records_only_what_changed() {
    TicketTest::with(())
        .given(vec![created()])
        .when_async(TicketCommand::UpdateTicket {
            title: Some("Add login".into()),
            description: None,
            priority: Some(Priority::Critical),
            phase: Some(Phase::Requirements),
        })
        .await
        .then_expect_events(vec![TicketEvent::TicketUpdated {
            title: None,
            description: None,
            priority: Some(Priority::Critical),
            phase: Some(Phase::Requirements),
        }]);
}

#[tokio::test]
async fn an_update_that_changes_nothing_records_nothing_and_one_that_skips_a_phase_is_refused() {
    TicketTest::with(())
        .given(vec![created()])
        .when_async(TicketCommand::UpdateTicket {
            title: Some("Add login".into()),
            description: None,
            priority: None,
            phase: None,
        })
        .await
        .then_expect_events(vec![]);
    TicketTest::with(())
        .given(vec![created()])
        .when_async(TicketCommand::UpdateTicket {
            title: None,
            description: None,
            priority: None,
            phase: Some(Phase::Testing),
        })
        .await
        .then_expect_error(TicketError::IllegalPhaseChange {
            from: Phase::Backlog,
            to: Phase::Testing,
        });
}

fn any_status() -> impl Strategy<Value = TicketStatus> {
    prop::sample::select(TicketStatus::ALL.to_vec())
}

fn any_command() -> impl Strategy<Value = TicketCommand> {
    prop_oneof![
        Just(create_command("t")),
        any_status().prop_map(transition),
        any_status().prop_map(|to| TicketCommand::AdvanceTicket { to, note: None }),
        "[a-z ]{0,3}".prop_map(|feedback| TicketCommand::RegressTicket { feedback }),
        Just(TicketCommand::BlockTicket {
            reason: BlockReason::Dependency,
            note: None,
            at: t0(),
        }),
        Just(TicketCommand::UnblockTicket),
        (
            prop::option::of(prop::sample::select(Priority::ALL.to_vec())),
            prop::option::of(prop::sample::select(Phase::ALL.to_vec()))
        )
            .prop_map(|(priority, phase)| TicketCommand::UpdateTicket {
                title: None,
                description: None,
                priority,
                phase,
            }),
    ]
}

proptest! {
    /// Whatever commands arrive, the state is the fold of the accepted events, a refused
    /// command writes nothing, and no sequence reaches a done-and-blocked ticket.
    #[test]
    fn state_is_the_fold_of_events_and_never_illegal(
        commands in prop::collection::vec(any_command(), 1..40)
    ) {
        let mut state = Ticket::default();
        let mut log = Vec::new();
        for command in commands {
            let before = state.status;
            let (handled, result) = handle(&state, command, &());
            if let Ok(events) = result {
                log.extend(events);
                state = handled;
            }
            prop_assert_eq!(&state, &fold::<Ticket>(&log));
            prop_assert!(!(state.status == TicketStatus::Done && state.blocked.is_some()));
            let moved = state.status != before;
            // Forward (one step, or several by `AdvanceTicket`), or a regression.
            let legal = state.status.rank() > before.rank()
                || (before == TicketStatus::Testing && state.status == TicketStatus::Building);
            prop_assert!(!moved || legal, "{} -> {}", before, state.status);
            // Every recorded move is one step.
            for event in &log {
                if let TicketEvent::TicketStatusChanged { from, to, .. } = event {
                    prop_assert_eq!(from.next(), Some(*to));
                }
            }
        }
    }
}

#[test]
fn advancing_walks_every_step_in_one_command_as_far_as_allowed() {
    use TicketStatus::*;
    let building: Ticket = fold(&history_at(Building));
    let advance = |to| TicketCommand::AdvanceTicket { to, note: None };
    let (walked, events) = handle(&building, advance(Done), &());
    let events = events.expect("advanced");
    assert_eq!(walked.status, Done);
    let steps: Vec<(TicketStatus, TicketStatus)> = events
        .iter()
        .filter_map(|e| match e {
            TicketEvent::TicketStatusChanged { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            (Building, BuildingDone),
            (BuildingDone, Testing),
            (Testing, Done)
        ]
    );
    // Blocked: every step but the last (a blocked ticket cannot be done) — the first
    // step unblocks it, as a transition does.
    let blocked_building: Ticket = fold(&[history_at(Building), vec![blocked()]].concat());
    let (walked, events) = handle(&blocked_building, advance(Done), &());
    assert!(events.is_ok());
    assert_eq!(walked.status, Done, "the first step unblocked it");
    let blocked_testing: Ticket = fold(&[history_at(Testing), vec![blocked()]].concat());
    let (_, refused) = handle(&blocked_testing, advance(Done), &());
    assert_eq!(refused, Err(TicketError::BlockedCannotBeDone));
    // Never backwards, never where it is.
    let (_, back) = handle(&building, advance(Analyzing), &());
    assert_eq!(
        back,
        Err(TicketError::IllegalTransition {
            from: Building,
            to: Analyzing
        })
    );
    let (_, same) = handle(&building, advance(Building), &());
    assert_eq!(same, Err(TicketError::AlreadyInStatus(Building)));
}
