use chrono::Duration;
use cqrs_es::test::TestFramework;
use proptest::prelude::*;

use super::*;
use crate::common::{DomainError, ErrorKind, Scope, Scoped};
use crate::testing::{fold, handle, org_id, project_id, t0};

type AgentTest = TestFramework<Agent>;

fn agent_id() -> Uuid {
    Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0)
}

fn at(minutes: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(minutes)
}

fn caps(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|c| c.to_string()).collect()
}

fn registered() -> AgentEvent {
    AgentEvent::AgentRegistered {
        agent_id: agent_id(),
        organization_id: org_id(),
        project_id: Some(project_id()),
        name: "worker-12345678".into(),
        agent_type: AgentType::Worker,
        capabilities: caps(&["python", "rust"]),
        capacity: 1,
        registered_at: t0(),
    }
}

fn register_command() -> AgentCommand {
    register(AgentType::Worker, None)
}

fn register(agent_type: AgentType, capacity: Option<u32>) -> AgentCommand {
    AgentCommand::RegisterAgent {
        agent_id: agent_id(),
        organization_id: org_id(),
        project_id: Some(project_id()),
        name: None,
        agent_type,
        capabilities: vec!["rust".into(), " python ".into(), "rust".into()],
        capacity,
        at: t0(),
    }
}

fn change(to: AgentStatus, force: bool) -> AgentCommand {
    AgentCommand::ChangeAgentStatus {
        to,
        reason: None,
        force,
        guardian: true,
        at: at(1),
    }
}

fn changed(from: AgentStatus, to: AgentStatus) -> AgentEvent {
    AgentEvent::AgentStatusChanged {
        from,
        to,
        reason: None,
        at: at(1),
    }
}

/// The original's table (`agent_status.py`), written out as data, independently of
/// `AgentStatus::can_move_to`.
const ORIGINAL_TABLE: [(AgentStatus, &[AgentStatus]); 7] = {
    use AgentStatus::*;
    [
        (Spawning, &[Idle, Failed, Terminated]),
        (Idle, &[Running, Degraded, Quarantined, Terminated]),
        (Running, &[Idle, Failed, Degraded, Quarantined]),
        (Degraded, &[Idle, Failed, Quarantined, Terminated]),
        (Failed, &[Quarantined, Terminated]),
        (Quarantined, &[Idle, Terminated]),
        (Terminated, &[]),
    ]
};

fn original_allows(from: AgentStatus, to: AgentStatus) -> bool {
    ORIGINAL_TABLE
        .iter()
        .any(|(f, tos)| *f == from && tos.contains(&to))
}

/// Events that bring a fresh agent to `status` along legal moves.
fn history_at(status: AgentStatus) -> Vec<AgentEvent> {
    use AgentStatus::*;
    let path: &[AgentStatus] = match status {
        Spawning => &[],
        Idle => &[Idle],
        Running => &[Idle, Running],
        Degraded => &[Idle, Degraded],
        Failed => &[Failed],
        Quarantined => &[Failed, Quarantined],
        Terminated => &[Terminated],
    };
    let mut events = vec![registered()];
    let mut current = Spawning;
    for &next in path {
        events.push(changed(current, next));
        current = next;
    }
    events
}

#[test]
fn the_histories_reach_each_status() {
    for status in AgentStatus::ALL {
        assert_eq!(
            fold::<Agent>(&history_at(status)).status,
            status,
            "{status}"
        );
    }
}

// ---------------------------------------------------------------- registration

#[tokio::test]
async fn registering_an_agent_applies_the_defaults() {
    AgentTest::with(())
        .given_no_previous_events()
        .when_async(register_command())
        .await
        .then_expect_events(vec![registered()]);
    let state: Agent = fold(&[registered()]);
    assert_eq!(state.status, AgentStatus::Spawning);
    assert_eq!(state.capacity, 1);
    assert_eq!(state.status_changed_at, Some(t0()));
    assert_eq!(state.registered_at, Some(t0()));
    assert_eq!(
        state.scope(),
        Some(Scope {
            organization_id: org_id(),
            project_id: Some(project_id()),
        })
    );
    assert_eq!(Agent::default().scope(), None);
}

#[tokio::test]
async fn an_organization_wide_agent_may_have_a_name_and_capacity() {
    AgentTest::with(())
        .given_no_previous_events()
        .when_async(AgentCommand::RegisterAgent {
            agent_id: agent_id(),
            organization_id: org_id(),
            project_id: None,
            name: Some("  night watch ".into()),
            agent_type: AgentType::Watchdog,
            capabilities: vec![],
            capacity: Some(100),
            at: t0(),
        })
        .await
        .then_expect_events(vec![AgentEvent::AgentRegistered {
            agent_id: agent_id(),
            organization_id: org_id(),
            project_id: None,
            name: "night watch".into(),
            agent_type: AgentType::Watchdog,
            capabilities: BTreeSet::new(),
            capacity: 100,
            registered_at: t0(),
        }]);
}

#[test]
fn the_default_name_is_the_type_and_the_id_prefix() {
    for agent_type in AgentType::ALL {
        let (state, result) = handle(&Agent::default(), register(agent_type, None), &());
        assert!(result.is_ok());
        assert_eq!(state.name, format!("{agent_type}-12345678"));
    }
}

#[tokio::test]
async fn registering_twice_is_refused() {
    AgentTest::with(())
        .given(vec![registered()])
        .when_async(register_command())
        .await
        .then_expect_error(AgentError::AlreadyExists);
}

#[test]
fn registration_input_is_validated() {
    let with = |name: Option<&str>, capabilities: Vec<String>, capacity: Option<u32>| {
        AgentCommand::RegisterAgent {
            agent_id: agent_id(),
            organization_id: org_id(),
            project_id: None,
            name: name.map(String::from),
            agent_type: AgentType::Monitor,
            capabilities,
            capacity,
            at: t0(),
        }
    };
    let too_many: Vec<String> = (0..65).map(|i| format!("cap{i}")).collect();
    let cases = [
        (with(Some(" "), vec![], None), AgentError::EmptyName),
        (
            with(Some(&"n".repeat(201)), vec![], None),
            AgentError::NameTooLong { max: 200 },
        ),
        (
            with(None, vec!["rust".into(), "  ".into()], None),
            AgentError::EmptyCapability,
        ),
        (
            with(None, vec!["c".repeat(101)], None),
            AgentError::CapabilityTooLong { max: 100 },
        ),
        (
            with(None, too_many, None),
            AgentError::TooManyCapabilities { max: 64 },
        ),
        (
            with(None, vec![], Some(0)),
            AgentError::CapacityOutOfRange {
                capacity: 0,
                min: 1,
                max: 100,
            },
        ),
        (
            with(None, vec![], Some(101)),
            AgentError::CapacityOutOfRange {
                capacity: 101,
                min: 1,
                max: 100,
            },
        ),
    ];
    for (command, error) in cases {
        let (handled, result) = handle(&Agent::default(), command, &());
        assert_eq!(result, Err(error.clone()));
        assert_eq!(handled, Agent::default());
        assert_eq!(error.kind(), ErrorKind::Invalid);
        assert!(error.field().is_some(), "{error:?}");
    }
    // Duplicates collapse before counting: 65 copies of one capability are one.
    let (_, result) = handle(
        &Agent::default(),
        with(None, vec!["rust".into(); 65], Some(1)),
        &(),
    );
    assert!(result.is_ok());
}

// ---------------------------------------------------------------- status machine

#[test]
fn can_move_to_is_exactly_the_original_table() {
    for from in AgentStatus::ALL {
        for to in AgentStatus::ALL {
            assert_eq!(
                from.can_move_to(to),
                original_allows(from, to),
                "{from} -> {to}"
            );
        }
    }
}

#[test]
fn every_status_pair_with_and_without_force_follows_the_original_table() {
    for from in AgentStatus::ALL {
        let state: Agent = fold(&history_at(from));
        for to in AgentStatus::ALL {
            for force in [false, true] {
                let (handled, result) = handle(&state, change(to, force), &());
                let expected = if from == AgentStatus::Terminated {
                    Err(AgentError::Terminated)
                } else if from == to && force {
                    Ok(vec![changed(from, to)])
                } else if from == to {
                    Err(AgentError::AlreadyInStatus(to))
                } else if original_allows(from, to) {
                    Ok(vec![changed(from, to)])
                } else {
                    Err(AgentError::IllegalTransition { from, to })
                };
                assert_eq!(result, expected, "{from} -> {to} (force: {force})");
                match expected {
                    Ok(_) => assert_eq!(handled.status, to),
                    Err(_) => assert_eq!(handled, state),
                }
            }
        }
    }
}

#[tokio::test]
async fn a_status_change_records_its_reason_and_time() {
    let reason = Some("3 missed heartbeats".to_string());
    let event = AgentEvent::AgentStatusChanged {
        from: AgentStatus::Running,
        to: AgentStatus::Degraded,
        reason: reason.clone(),
        at: at(7),
    };
    AgentTest::with(())
        .given(history_at(AgentStatus::Running))
        .when_async(AgentCommand::ChangeAgentStatus {
            to: AgentStatus::Degraded,
            reason: reason.clone(),
            force: false,
            guardian: true,
            at: at(7),
        })
        .await
        .then_expect_events(vec![event.clone()]);
    let mut events = history_at(AgentStatus::Running);
    events.push(event);
    let state: Agent = fold(&events);
    assert_eq!(state.status, AgentStatus::Degraded);
    assert_eq!(state.status_reason, reason);
    assert_eq!(state.status_changed_at, Some(at(7)));
}

#[tokio::test]
async fn a_forced_same_status_change_is_recorded_with_its_new_reason() {
    let event = AgentEvent::AgentStatusChanged {
        from: AgentStatus::Quarantined,
        to: AgentStatus::Quarantined,
        reason: Some("still suspicious".into()),
        at: at(9),
    };
    AgentTest::with(())
        .given(history_at(AgentStatus::Quarantined))
        .when_async(AgentCommand::ChangeAgentStatus {
            to: AgentStatus::Quarantined,
            reason: Some("still suspicious".into()),
            force: true,
            guardian: true,
            at: at(9),
        })
        .await
        .then_expect_events(vec![event.clone()]);
    let mut events = history_at(AgentStatus::Quarantined);
    events.push(event);
    let state: Agent = fold(&events);
    assert_eq!(state.status_reason.as_deref(), Some("still suspicious"));
    assert_eq!(state.status_changed_at, Some(at(9)));
}

#[tokio::test]
async fn force_does_not_open_a_move_outside_the_table() {
    AgentTest::with(())
        .given(history_at(AgentStatus::Failed))
        .when_async(change(AgentStatus::Running, true))
        .await
        .then_expect_error(AgentError::IllegalTransition {
            from: AgentStatus::Failed,
            to: AgentStatus::Running,
        });
}

#[tokio::test]
async fn an_overlong_reason_is_refused() {
    AgentTest::with(())
        .given(vec![registered()])
        .when_async(AgentCommand::ChangeAgentStatus {
            to: AgentStatus::Idle,
            reason: Some("r".repeat(20_001)),
            force: false,
            guardian: true,
            at: at(1),
        })
        .await
        .then_expect_error(AgentError::TextTooLong {
            field: "reason",
            max: 20_000,
        });
}

// ---------------------------------------------------------------- capabilities

#[tokio::test]
async fn capabilities_are_replaced_as_a_trimmed_set() {
    AgentTest::with(())
        .given(history_at(AgentStatus::Running))
        .when_async(AgentCommand::UpdateCapabilities {
            capabilities: vec![" go ".into(), "rust".into(), "go".into()],
        })
        .await
        .then_expect_events(vec![AgentEvent::AgentCapabilitiesUpdated {
            capabilities: caps(&["go", "rust"]),
        }]);
}

#[tokio::test]
async fn updating_capabilities_to_the_same_set_records_nothing() {
    AgentTest::with(())
        .given(vec![registered()])
        .when_async(AgentCommand::UpdateCapabilities {
            capabilities: vec!["rust".into(), "python".into()],
        })
        .await
        .then_expect_events(vec![]);
}

#[tokio::test]
async fn a_terminated_or_missing_agent_cannot_change_capabilities() {
    let update = || AgentCommand::UpdateCapabilities {
        capabilities: vec!["go".into()],
    };
    AgentTest::with(())
        .given(history_at(AgentStatus::Terminated))
        .when_async(update())
        .await
        .then_expect_error(AgentError::Terminated);
    AgentTest::with(())
        .given_no_previous_events()
        .when_async(update())
        .await
        .then_expect_error(AgentError::NotFound);
    AgentTest::with(())
        .given_no_previous_events()
        .when_async(change(AgentStatus::Idle, false))
        .await
        .then_expect_error(AgentError::NotFound);
}

// ---------------------------------------------------------------- errors and events

#[test]
fn every_error_has_a_unique_code() {
    use AgentError::*;
    let errors = vec![
        NotFound,
        AlreadyExists,
        EmptyName,
        NameTooLong { max: 1 },
        EmptyCapability,
        CapabilityTooLong { max: 1 },
        TooManyCapabilities { max: 1 },
        CapacityOutOfRange {
            capacity: 0,
            min: 1,
            max: 1,
        },
        TextTooLong {
            field: "reason",
            max: 1,
        },
        AlreadyInStatus(AgentStatus::Idle),
        IllegalTransition {
            from: AgentStatus::Idle,
            to: AgentStatus::Spawning,
        },
        Terminated,
        ReasonRequired,
        NotQuarantined(AgentStatus::Idle),
        GuardianRequired,
        ReadingTooSoon { min_gap_ms: 1 },
    ];
    let codes: BTreeSet<_> = errors.iter().map(|e| e.code()).collect();
    assert_eq!(codes.len(), errors.len());
    assert_eq!(NotFound.kind(), ErrorKind::NotFound);
    assert_eq!(Terminated.kind(), ErrorKind::Conflict);
    assert_eq!(
        IllegalTransition {
            from: AgentStatus::Idle,
            to: AgentStatus::Spawning,
        }
        .kind(),
        ErrorKind::Conflict
    );
}

#[test]
fn events_are_named_after_their_variant_at_version_1() {
    use cqrs_es::DomainEvent;
    let events = vec![
        registered(),
        changed(AgentStatus::Spawning, AgentStatus::Idle),
        AgentEvent::AgentCapabilitiesUpdated {
            capabilities: caps(&["go"]),
        },
    ];
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
        serde_json::to_value(AgentStatus::Quarantined).expect("status serializes"),
        "quarantined"
    );
    assert_eq!(
        serde_json::to_value(AgentType::Watchdog).expect("type serializes"),
        "watchdog"
    );
}

// ---------------------------------------------------------------- properties

/// Any status, `terminated` rarely: it is final, so reaching it early would leave the
/// rest of a sequence with nothing to explore.
fn any_status() -> impl Strategy<Value = AgentStatus> {
    prop_oneof![
        16 => prop::sample::select(AgentStatus::ALL[..6].to_vec()),
        1 => Just(AgentStatus::Terminated),
    ]
}

fn any_command() -> impl Strategy<Value = AgentCommand> {
    let capabilities = prop::collection::vec(
        prop::sample::select(vec!["", "go", "rust", " rust "]).prop_map(String::from),
        0..4,
    );
    prop_oneof![
        1 => prop::option::of(0u32..=102).prop_map(|capacity| register(AgentType::Worker, capacity)),
        8 => (any_status(), any::<bool>(), prop::option::of("[a-z]{0,3}")).prop_map(
            |(to, force, reason)| AgentCommand::ChangeAgentStatus {
                to,
                reason,
                force,
                guardian: true,
                at: t0(),
            }
        ),
        2 => capabilities
            .prop_map(|capabilities| AgentCommand::UpdateCapabilities { capabilities }),
        4 => (0.0f64..=1.0, 0i64..200).prop_map(|(level, minute)| AgentCommand::RecordAnomalyReading {
            parts: uniform(level),
            min_gap_ms: 54_000,
            at: at(minute),
        }),
    ]
}

proptest! {
    /// Whatever commands arrive, the state is the fold of the accepted events, a refused
    /// command writes nothing, the status moves only along the original's table (or stays
    /// put when forced), a terminated agent never changes, and capacity stays in range.
    #[test]
    fn state_is_the_fold_of_events_and_never_illegal(
        commands in prop::collection::vec(any_command(), 1..60)
    ) {
        let mut state = Agent::default();
        let mut log = Vec::new();
        // Registration first, so most of each sequence exercises an agent that exists;
        // commands before it are covered by the unit tests.
        for command in std::iter::once(register_command()).chain(commands) {
            let before = state.clone();
            let (handled, result) = handle(&state, command, &());
            match result {
                Ok(events) => {
                    log.extend(events);
                    state = handled;
                }
                Err(_) => prop_assert_eq!(&handled, &state, "a refused command changed state"),
            }
            prop_assert_eq!(&state, &fold::<Agent>(&log));
            if before.exists() {
                let moved = state.status != before.status;
                prop_assert!(
                    !moved || original_allows(before.status, state.status),
                    "{} -> {}", before.status, state.status
                );
                if before.status == AgentStatus::Terminated {
                    prop_assert_eq!(&state, &before);
                }
            }
            if state.exists() {
                prop_assert!((1..=100).contains(&state.capacity));
                prop_assert!(state.capabilities.iter().all(|c| !c.is_empty() && c.trim() == c));
            }
        }
    }
}

#[test]
fn a_silent_idle_agent_is_failed_by_way_of_degraded_and_a_quarantined_one_stays() {
    use AgentStatus::*;
    assert_eq!(Idle.steps_to_failed(), Some(vec![Degraded, Failed]));
    assert_eq!(Running.steps_to_failed(), Some(vec![Failed]));
    assert_eq!(Degraded.steps_to_failed(), Some(vec![Failed]));
    assert_eq!(Spawning.steps_to_failed(), Some(vec![Failed]));
    assert_eq!(Failed.steps_to_failed(), Some(vec![]));
    assert_eq!(Quarantined.steps_to_failed(), None);
    assert_eq!(Terminated.steps_to_failed(), None);
    // Every walk is one the table allows.
    for from in AgentStatus::ALL {
        let mut at = from;
        for next in from.steps_to_failed().unwrap_or_default() {
            assert!(at.can_move_to(next), "{at} -> {next}");
            at = next;
        }
    }
}

#[test]
fn only_a_guardian_moves_an_agent_into_or_out_of_quarantine() {
    use AgentStatus::*;
    let by_member = |to: AgentStatus| AgentCommand::ChangeAgentStatus {
        to,
        reason: None,
        force: false,
        guardian: false,
        at: at(1),
    };
    for (from, to) in [
        (Idle, Quarantined),
        (Quarantined, Idle),
        (Failed, Quarantined),
    ] {
        let agent = crate::testing::fold::<Agent>(&history_at(from));
        assert_eq!(
            agent.decide(by_member(to)),
            Err(AgentError::GuardianRequired),
            "{from} -> {to}"
        );
    }
    // Ending a quarantined agent gives it no work: any agent:write may.
    let quarantined = crate::testing::fold::<Agent>(&history_at(Quarantined));
    assert!(quarantined.decide(by_member(Terminated)).is_ok());
    let idle = crate::testing::fold::<Agent>(&history_at(Idle));
    assert!(idle.decide(by_member(Running)).is_ok());
}

// ---------------------------------------------------------------- anomaly readings

/// Parts all at `level`: the score is `level`.
fn uniform(level: f64) -> crate::guardian::AnomalyParts {
    crate::guardian::AnomalyParts {
        latency: level,
        errors: level,
        resource_skew: level,
        queue_impact: level,
    }
}

fn reading(level: f64, minute: i64) -> AgentCommand {
    AgentCommand::RecordAnomalyReading {
        parts: uniform(level),
        min_gap_ms: 54_000,
        at: at(minute),
    }
}

/// Handles `commands` in order from `state`, every one accepted; returns the state and
/// the type of each event.
fn run(mut state: Agent, commands: Vec<AgentCommand>) -> (Agent, Vec<String>) {
    use cqrs_es::DomainEvent;
    let mut kinds = Vec::new();
    for command in commands {
        let (handled, result) = handle(&state, command, &());
        let events = result.expect("the reading is taken");
        kinds.extend(events.iter().map(|e| e.event_type()));
        state = handled;
    }
    (state, kinds)
}

#[test]
fn three_anomalous_readings_in_a_row_quarantine_the_agent_with_the_guardians_reason() {
    let idle = fold::<Agent>(&history_at(AgentStatus::Idle));
    let (state, kinds) = run(
        idle,
        vec![reading(0.9, 1), reading(0.85, 2), reading(0.8, 3)],
    );
    assert_eq!(
        kinds,
        [
            "AnomalyDetected",
            "AnomalyDetected",
            "AnomalyDetected",
            "GuardianIntervened",
            "AgentStatusChanged"
        ]
    );
    assert_eq!(state.status, AgentStatus::Quarantined);
    assert_eq!(
        state.anomaly_streak, 0,
        "the run starts over after a quarantine"
    );
    let reason = state.status_reason.clone().expect("a reason");
    assert!(reason.contains("3 readings in a row"), "{reason}");
    // Quarantined, the agent is no longer read.
    let (_, after) = run(state, vec![reading(1.0, 4)]);
    assert!(after.is_empty());
}

#[test]
fn a_normal_reading_ends_the_run_and_only_then_is_recorded() {
    let idle = fold::<Agent>(&history_at(AgentStatus::Running));
    let (state, kinds) = run(
        idle,
        vec![
            reading(0.1, 1),
            reading(0.95, 2),
            reading(0.95, 3),
            reading(0.79, 4),
            reading(0.5, 5),
            reading(0.9, 6),
            reading(0.9, 7),
        ],
    );
    assert_eq!(
        kinds,
        [
            "AnomalyDetected",
            "AnomalyDetected",
            "AnomalySubsided",
            "AnomalyDetected",
            "AnomalyDetected"
        ]
    );
    assert_eq!(state.anomaly_streak, 2);
    assert_eq!(state.status, AgentStatus::Running);
}

#[test]
fn a_second_anomalous_reading_within_the_gap_is_refused() {
    let idle = fold::<Agent>(&history_at(AgentStatus::Idle));
    let (state, _) = run(idle, vec![reading(0.9, 1)]);
    let again = AgentCommand::RecordAnomalyReading {
        parts: uniform(0.9),
        min_gap_ms: 54_000,
        at: at(1) + Duration::seconds(30),
    };
    assert_eq!(
        state.decide(again),
        Err(AgentError::ReadingTooSoon { min_gap_ms: 54_000 })
    );
}

#[test]
fn a_spawning_agent_is_read_but_not_quarantined_and_a_failed_one_is_not_read() {
    let spawning = fold::<Agent>(&history_at(AgentStatus::Spawning));
    let (state, kinds) = run(
        spawning,
        vec![reading(1.0, 1), reading(1.0, 2), reading(1.0, 3)],
    );
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(
        state.status,
        AgentStatus::Spawning,
        "spawning cannot be quarantined"
    );
    let failed = fold::<Agent>(&history_at(AgentStatus::Failed));
    let (_, kinds) = run(failed, vec![reading(1.0, 1)]);
    assert!(kinds.is_empty());
}
