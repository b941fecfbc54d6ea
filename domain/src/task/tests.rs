use chrono::Duration;
use cqrs_es::test::TestFramework;
use cqrs_es::DomainEvent;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::common::{DomainError, ErrorKind, Phase, Priority, MAX_TITLE_CHARS};
use crate::task::{is_permanent_error, retry_backoff, FailureReason, PERMANENT_ERROR_MARKERS};
use crate::testing::{fold, handle, org_id, project_id, t0};

type TaskTest = TestFramework<Task>;

fn task_id() -> Uuid {
    Uuid::from_u128(0x7A)
}

fn ticket_id() -> Uuid {
    Uuid::from_u128(0x71)
}

fn agent_id() -> Uuid {
    Uuid::from_u128(0xA6)
}

fn dep_a() -> Uuid {
    Uuid::from_u128(0xD1)
}

fn dep_b() -> Uuid {
    Uuid::from_u128(0xD2)
}

/// `seconds` after the fixed test instant.
fn t(seconds: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(seconds)
}

/// The creation input of the tests; each test changes only what it is about.
struct NewTask {
    title: &'static str,
    task_type: &'static str,
    depends_on: Vec<Uuid>,
    capabilities: Vec<&'static str>,
    max_retries: Option<u32>,
    timeout_seconds: Option<u32>,
    validation: Option<ValidationPolicy>,
    validates: Option<ValidationTarget>,
}

impl Default for NewTask {
    fn default() -> Self {
        NewTask {
            title: "Write login tests",
            task_type: "write_tests",
            depends_on: vec![dep_a()],
            capabilities: vec!["python"],
            max_retries: None,
            timeout_seconds: Some(600),
            validation: None,
            validates: None,
        }
    }
}

impl NewTask {
    fn command(self) -> TaskCommand {
        TaskCommand::CreateTask {
            task_id: task_id(),
            organization_id: org_id(),
            project_id: project_id(),
            ticket_id: ticket_id(),
            title: self.title.into(),
            description: String::new(),
            task_type: self.task_type.into(),
            phase: Phase::Implementation,
            priority: Priority::High,
            depends_on: self.depends_on,
            required_capabilities: self.capabilities.into_iter().map(String::from).collect(),
            max_retries: self.max_retries,
            timeout_seconds: self.timeout_seconds,
            discovery: None,
            validation: self.validation,
            validates: self.validates,
            at: t0(),
            plan_key: None,
        }
    }
}

fn created_with(max_retries: u32, timeout_seconds: Option<u32>) -> TaskEvent {
    TaskEvent::TaskCreated {
        task_id: task_id(),
        organization_id: org_id(),
        project_id: project_id(),
        ticket_id: ticket_id(),
        title: "Write login tests".into(),
        description: String::new(),
        task_type: "write_tests".into(),
        phase: Phase::Implementation,
        priority: Priority::High,
        depends_on: vec![dep_a()],
        required_capabilities: vec!["python".into()],
        max_retries,
        timeout_seconds,
        created_at: t0(),
    }
}

fn created() -> TaskEvent {
    created_with(3, Some(600))
}

fn assigned(at: DateTime<Utc>) -> TaskEvent {
    TaskEvent::TaskAssigned {
        agent_id: agent_id(),
        at,
    }
}

/// Created, assigned at t+10 and started at t+20.
fn running_from(created: TaskEvent) -> Vec<TaskEvent> {
    vec![
        created,
        assigned(t(10)),
        TaskEvent::TaskStarted { at: t(20) },
    ]
}

fn with(mut events: Vec<TaskEvent>, more: impl IntoIterator<Item = TaskEvent>) -> Vec<TaskEvent> {
    events.extend(more);
    events
}

/// The events that bring a fresh task to `status` (retry due at t+31).
fn history_at(status: TaskStatus) -> Vec<TaskEvent> {
    use TaskStatus::*;
    let running = running_from(created());
    let failed = |error: &str| TaskEvent::TaskFailed {
        error: error.into(),
        attempt: 1,
        at: t(30),
    };
    match status {
        Pending => vec![created()],
        Assigned => vec![created(), assigned(t(10))],
        Running => running,
        Completed => with(running, [completed()]),
        RetryScheduled => with(running, [failed("boom"), retry_scheduled(1, t(31))]),
        PermanentlyFailed => with(
            running,
            [
                failed("permission denied"),
                gave_up(FailureReason::PermanentError),
            ],
        ),
        Cancelled => vec![
            created(),
            TaskEvent::TaskCancelled {
                reason: None,
                at: t(5),
            },
        ],
        TimedOut => with(
            running,
            [
                TaskEvent::TaskTimedOut {
                    after_seconds: 700,
                    attempt: 1,
                    at: t(720),
                },
                gave_up(FailureReason::TimedOut),
            ],
        ),
        PendingValidation => with(validated_running(), [submitted(0)]),
        NeedsRevision => with(
            validated_running(),
            [
                submitted(0),
                rejected(0, "tests fail"),
                revision_requested(1),
            ],
        ),
    }
}

/// A task under validation (two revisions at most), running on `agent_id()`.
fn validated_running() -> Vec<TaskEvent> {
    vec![
        created(),
        TaskEvent::TaskValidationRequired {
            policy: ValidationPolicy { max_revisions: 2 },
        },
        assigned(t(10)),
        TaskEvent::TaskStarted { at: t(20) },
    ]
}

fn submitted(revision: u32) -> TaskEvent {
    TaskEvent::TaskSubmittedForValidation {
        result: json!({"revision": revision}),
        revision,
        implementer_agent_id: Some(agent_id()),
        at: t(30),
    }
}

fn validator_id() -> Uuid {
    Uuid::from_u128(0xB7)
}

fn validation_task_id(revision: u32) -> Uuid {
    ValidationTarget::task_id_for(task_id(), revision)
}

fn rejected(revision: u32, feedback: &str) -> TaskEvent {
    TaskEvent::TaskValidationRejected {
        validation_task_id: validation_task_id(revision),
        revision,
        feedback: feedback.into(),
    }
}

fn revision_requested(revision: u32) -> TaskEvent {
    TaskEvent::TaskRevisionRequested { revision }
}

fn verdict(revision: u32, passed: bool, feedback: Option<&str>) -> TaskCommand {
    TaskCommand::ApplyVerdict {
        validation_task_id: validation_task_id(revision),
        revision,
        verdict: Verdict {
            passed,
            feedback: feedback.map(String::from),
        },
        at: t(40),
    }
}

fn completed() -> TaskEvent {
    TaskEvent::TaskCompleted {
        result: json!({"passed": 12}),
        at: t(30),
    }
}

fn retry_scheduled(attempt: u32, not_before: DateTime<Utc>) -> TaskEvent {
    TaskEvent::TaskRetryScheduled {
        attempt,
        not_before,
    }
}

fn gave_up(reason: FailureReason) -> TaskEvent {
    TaskEvent::TaskPermanentlyFailed { reason }
}

fn fail(error: &str, at: DateTime<Utc>) -> TaskCommand {
    TaskCommand::FailTask {
        error: error.into(),
        at,
        // 0.5 makes the jitter factor exactly 1, so the backoff is the base delay.
        jitter: 0.5,
    }
}

/// One command per lifecycle action, with inputs valid in the action's legal statuses.
fn lifecycle_commands() -> Vec<(&'static str, TaskCommand)> {
    vec![
        (
            "assign",
            TaskCommand::AssignTask {
                agent_id: agent_id(),
                at: t(100),
            },
        ),
        ("start", TaskCommand::StartTask { at: t(100) }),
        (
            "report progress",
            TaskCommand::ReportProgress {
                message: "half way".into(),
            },
        ),
        (
            "complete",
            TaskCommand::CompleteTask {
                result: json!(null),
                at: t(100),
            },
        ),
        ("fail", fail("boom", t(1000))),
        (
            "time out",
            TaskCommand::TimeOutTask {
                at: t(1000),
                jitter: 0.5,
            },
        ),
        (
            "cancel",
            TaskCommand::CancelTask {
                reason: None,
                at: t(100),
            },
        ),
    ]
}

/// The lifecycle table: the status `action` leads to from `from`, `None` when illegal.
fn lifecycle_outcome(from: TaskStatus, action: &str) -> Option<TaskStatus> {
    use TaskStatus::*;
    match (from, action) {
        (Pending | RetryScheduled | NeedsRevision, "assign") => Some(Assigned),
        (Assigned, "start") => Some(Running),
        (Running, "report progress") => Some(Running),
        (Running, "complete") => Some(Completed),
        (Assigned | Running, "fail") => Some(RetryScheduled),
        (Running, "time out") => Some(RetryScheduled),
        (
            Pending | Assigned | Running | RetryScheduled | PendingValidation | NeedsRevision
            | PermanentlyFailed | TimedOut,
            "cancel",
        ) => Some(Cancelled),
        _ => None,
    }
}

/// Every status change any command may cause.
fn can_move(from: TaskStatus, to: TaskStatus) -> bool {
    use TaskStatus::*;
    matches!(
        (from, to),
        (Pending | RetryScheduled | NeedsRevision, Assigned)
            | (Assigned, Running)
            | (Running, Completed | TimedOut | PendingValidation)
            | (Assigned | Running, RetryScheduled | PermanentlyFailed)
            | (
                PendingValidation,
                Completed | NeedsRevision | PermanentlyFailed
            )
            | (
                Pending
                    | Assigned
                    | Running
                    | RetryScheduled
                    | PendingValidation
                    | NeedsRevision
                    | PermanentlyFailed
                    | TimedOut,
                Cancelled
            )
    )
}

#[test]
fn every_status_and_lifecycle_command_is_legal_exactly_as_the_table_says() {
    for from in TaskStatus::ALL {
        let state: Task = fold(&history_at(from));
        assert_eq!(state.status, from, "history_at({from})");
        for (action, command) in lifecycle_commands() {
            let (handled, result) = handle(&state, command, &());
            match lifecycle_outcome(from, action) {
                Some(to) => {
                    assert!(result.is_ok(), "{from} / {action}: {result:?}");
                    assert_eq!(handled.status, to, "{from} / {action}");
                }
                None => {
                    assert_eq!(
                        result,
                        Err(TaskError::IllegalTransition { from, action }),
                        "{from} / {action}"
                    );
                    assert_eq!(handled, state, "{from} / {action} wrote nothing");
                }
            }
        }
    }
}

#[test]
fn dependencies_change_only_while_no_agent_holds_the_task() {
    for from in TaskStatus::ALL {
        let state: Task = fold(&history_at(from));
        let add = TaskCommand::AddDependency {
            depends_on: dep_b(),
        };
        let remove = TaskCommand::RemoveDependency {
            depends_on: dep_a(),
        };
        let (_, added) = handle(&state, add, &());
        let (_, removed) = handle(&state, remove, &());
        if from.accepts_dependency_changes() {
            let expected = TaskEvent::TaskDependencyAdded {
                depends_on: dep_b(),
            };
            assert_eq!(added, Ok(vec![expected]), "{from}");
            let expected = TaskEvent::TaskDependencyRemoved {
                depends_on: dep_a(),
            };
            assert_eq!(removed, Ok(vec![expected]), "{from}");
        } else {
            assert_eq!(added, Err(TaskError::DependenciesFrozen(from)), "{from}");
            assert_eq!(removed, Err(TaskError::DependenciesFrozen(from)), "{from}");
        }
    }
    assert_eq!(
        TaskStatus::ALL.map(TaskStatus::accepts_dependency_changes),
        [true, false, false, false, true, false, false, false, false, true]
    );
}

#[test]
fn every_command_on_a_missing_task_answers_not_found() {
    let mut commands: Vec<TaskCommand> = lifecycle_commands().into_iter().map(|(_, c)| c).collect();
    commands.push(TaskCommand::AddDependency {
        depends_on: dep_a(),
    });
    commands.push(TaskCommand::RemoveDependency {
        depends_on: dep_a(),
    });
    for command in commands {
        let (_, result) = handle(&Task::default(), command.clone(), &());
        assert_eq!(result, Err(TaskError::NotFound), "{command:?}");
    }
}

#[tokio::test]
async fn creating_a_task_records_its_details() {
    TaskTest::with(())
        .given_no_previous_events()
        .when_async(
            NewTask {
                title: "  Write login tests ",
                capabilities: vec![" python", "python "],
                depends_on: vec![dep_a(), dep_a()],
                ..NewTask::default()
            }
            .command(),
        )
        .await
        .then_expect_events(vec![created()]);
    let state: Task = fold(&[created()]);
    assert_eq!(state.status, TaskStatus::Pending);
    assert_eq!(state.max_retries, DEFAULT_MAX_RETRIES);
    assert_eq!(state.created_at, Some(t0()));
    assert_eq!(
        state.scope(),
        Some(Scope {
            organization_id: org_id(),
            project_id: Some(project_id()),
        })
    );
    assert_eq!(Task::default().scope(), None);
}

#[tokio::test]
async fn creating_a_task_twice_is_refused() {
    TaskTest::with(())
        .given(vec![created()])
        .when_async(NewTask::default().command())
        .await
        .then_expect_error(TaskError::AlreadyExists);
}

#[test]
fn invalid_creation_input_is_refused_field_by_field() {
    let long_title: &'static str = "x".repeat(MAX_TITLE_CHARS + 1).leak();
    let long_label: &'static str = "x".repeat(65).leak();
    let too_many: Vec<&'static str> = (0..=MAX_REQUIRED_CAPABILITIES)
        .map(|i| &*format!("skill-{i}").leak())
        .collect();
    let cases = [
        (
            NewTask {
                title: " ",
                ..NewTask::default()
            },
            TaskError::EmptyTitle,
            "title",
        ),
        (
            NewTask {
                title: long_title,
                ..NewTask::default()
            },
            TaskError::TitleTooLong {
                max: MAX_TITLE_CHARS,
            },
            "title",
        ),
        (
            NewTask {
                task_type: "",
                ..NewTask::default()
            },
            TaskError::EmptyTaskType,
            "task_type",
        ),
        (
            NewTask {
                task_type: long_label,
                ..NewTask::default()
            },
            TaskError::TaskTypeTooLong { max: 64 },
            "task_type",
        ),
        (
            NewTask {
                capabilities: vec!["python", "  "],
                ..NewTask::default()
            },
            TaskError::EmptyCapability,
            "required_capabilities",
        ),
        (
            NewTask {
                capabilities: vec![long_label],
                ..NewTask::default()
            },
            TaskError::CapabilityTooLong { max: 64 },
            "required_capabilities",
        ),
        (
            NewTask {
                capabilities: too_many,
                ..NewTask::default()
            },
            TaskError::TooManyCapabilities { max: 64 },
            "required_capabilities",
        ),
        (
            NewTask {
                max_retries: Some(21),
                ..NewTask::default()
            },
            TaskError::TooManyRetries { max: 20 },
            "max_retries",
        ),
        (
            NewTask {
                timeout_seconds: Some(0),
                ..NewTask::default()
            },
            TaskError::ZeroTimeout,
            "timeout_seconds",
        ),
        (
            NewTask {
                depends_on: vec![dep_a(), task_id()],
                ..NewTask::default()
            },
            TaskError::SelfDependency,
            "depends_on",
        ),
    ];
    for (input, expected, field) in cases {
        let (_, result) = handle(&Task::default(), input.command(), &());
        assert_eq!(result, Err(expected.clone()));
        // A task waiting for itself is the shortest cycle: a conflict with the graph.
        let kind = match expected {
            TaskError::SelfDependency => ErrorKind::Conflict,
            _ => ErrorKind::Invalid,
        };
        assert_eq!(expected.kind(), kind, "{expected:?}");
        assert_eq!(expected.field(), Some(field), "{expected:?}");
    }
}

#[test]
fn as_many_capabilities_as_an_agent_can_have_are_accepted_duplicates_merged() {
    let mut capabilities: Vec<&'static str> = (0..MAX_REQUIRED_CAPABILITIES)
        .map(|i| &*format!("skill-{i}").leak())
        .collect();
    capabilities.push("skill-0");
    let command = NewTask {
        capabilities,
        ..NewTask::default()
    }
    .command();
    let (state, result) = handle(&Task::default(), command, &());
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(state.required_capabilities.len(), MAX_REQUIRED_CAPABILITIES);
    assert_eq!(MAX_REQUIRED_CAPABILITIES, crate::agent::MAX_CAPABILITIES);
}

#[test]
fn twenty_retries_and_no_timeout_are_accepted() {
    let command = NewTask {
        max_retries: Some(20),
        timeout_seconds: None,
        ..NewTask::default()
    }
    .command();
    let (state, result) = handle(&Task::default(), command, &());
    assert!(result.is_ok());
    assert_eq!((state.max_retries, state.timeout_seconds), (20, None));
}

#[tokio::test]
async fn a_pending_task_is_assigned_then_started() {
    TaskTest::with(())
        .given(vec![created()])
        .when_async(TaskCommand::AssignTask {
            agent_id: agent_id(),
            at: t(10),
        })
        .await
        .then_expect_events(vec![assigned(t(10))]);
    TaskTest::with(())
        .given(vec![created(), assigned(t(10))])
        .when_async(TaskCommand::StartTask { at: t(20) })
        .await
        .then_expect_events(vec![TaskEvent::TaskStarted { at: t(20) }]);
    let state: Task = fold(&running_from(created()));
    assert_eq!(state.status, TaskStatus::Running);
    assert_eq!(state.assigned_agent_id, Some(agent_id()));
    assert_eq!(state.started_at, Some(t(20)));
}

#[tokio::test]
async fn progress_is_reported_while_running_and_must_be_short_text() {
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(TaskCommand::ReportProgress {
            message: " 3 of 12 tests written ".into(),
        })
        .await
        .then_expect_events(vec![TaskEvent::TaskProgressReported {
            message: "3 of 12 tests written".into(),
        }]);
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(TaskCommand::ReportProgress {
            message: "  ".into(),
        })
        .await
        .then_expect_error(TaskError::EmptyText { field: "message" });
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(TaskCommand::ReportProgress {
            message: "x".repeat(MAX_PROGRESS_CHARS + 1),
        })
        .await
        .then_expect_error(TaskError::TextTooLong {
            field: "message",
            max: MAX_PROGRESS_CHARS,
        });
}

#[tokio::test]
async fn a_running_task_completes_with_its_result() {
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(TaskCommand::CompleteTask {
            result: json!({"passed": 12}),
            at: t(30),
        })
        .await
        .then_expect_events(vec![completed()]);
    let state: Task = fold(&history_at(TaskStatus::Completed));
    assert_eq!(state.result, Some(json!({"passed": 12})));
    assert_eq!(state.completed_at, Some(t(30)));
    assert!(state.status.is_final());
}

#[tokio::test]
async fn a_failure_with_retries_left_schedules_a_retry_after_the_backoff() {
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(fail("connection reset", t(30)))
        .await
        .then_expect_events(vec![
            TaskEvent::TaskFailed {
                error: "connection reset".into(),
                attempt: 1,
                at: t(30),
            },
            retry_scheduled(1, t(31)),
        ]);
    let state: Task = fold(&history_at(TaskStatus::RetryScheduled));
    assert_eq!(state.retry_count, 1);
    assert_eq!(state.not_before, Some(t(31)));
    assert_eq!(
        state.assigned_agent_id, None,
        "a retry goes back without its agent"
    );
    assert_eq!(state.last_error.as_deref(), Some("boom"));
}

#[tokio::test]
async fn the_second_retry_waits_twice_as_long() {
    let events = with(
        history_at(TaskStatus::RetryScheduled),
        [assigned(t(40)), TaskEvent::TaskStarted { at: t(41) }],
    );
    TaskTest::with(())
        .given(events)
        .when_async(fail("boom", t(50)))
        .await
        .then_expect_events(vec![
            TaskEvent::TaskFailed {
                error: "boom".into(),
                attempt: 2,
                at: t(50),
            },
            retry_scheduled(2, t(52)),
        ]);
}

#[tokio::test]
async fn an_assigned_task_can_fail_before_it_runs() {
    TaskTest::with(())
        .given(history_at(TaskStatus::Assigned))
        .when_async(fail("sandbox did not start", t(15)))
        .await
        .then_expect_events(vec![
            TaskEvent::TaskFailed {
                error: "sandbox did not start".into(),
                attempt: 1,
                at: t(15),
            },
            retry_scheduled(1, t(16)),
        ]);
}

#[tokio::test]
async fn a_permanent_error_is_never_retried_whatever_its_case() {
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(fail("git push: PERMISSION DENIED", t(30)))
        .await
        .then_expect_events(vec![
            TaskEvent::TaskFailed {
                error: "git push: PERMISSION DENIED".into(),
                attempt: 1,
                at: t(30),
            },
            gave_up(FailureReason::PermanentError),
        ]);
    let state: Task = fold(&history_at(TaskStatus::PermanentlyFailed));
    assert_eq!(state.status, TaskStatus::PermanentlyFailed);
    assert_eq!(state.retry_count, 0);
}

#[tokio::test]
async fn a_failure_after_the_last_retry_fails_permanently() {
    let events = with(
        running_from(created_with(1, None)),
        [
            TaskEvent::TaskFailed {
                error: "boom".into(),
                attempt: 1,
                at: t(30),
            },
            retry_scheduled(1, t(31)),
            assigned(t(40)),
            TaskEvent::TaskStarted { at: t(41) },
        ],
    );
    let failed = TaskEvent::TaskFailed {
        error: "boom again".into(),
        attempt: 2,
        at: t(50),
    };
    TaskTest::with(())
        .given(events.clone())
        .when_async(fail("boom again", t(50)))
        .await
        .then_expect_events(vec![
            failed.clone(),
            gave_up(FailureReason::RetriesExhausted),
        ]);
    let state: Task = fold(&with(
        events,
        [failed, gave_up(FailureReason::RetriesExhausted)],
    ));
    assert_eq!(state.status, TaskStatus::PermanentlyFailed);
    assert_eq!(state.retry_count, state.max_retries);
    assert_eq!(state.last_error.as_deref(), Some("boom again"));
}

#[tokio::test]
async fn a_failure_needs_an_error_text() {
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(fail(" ", t(30)))
        .await
        .then_expect_error(TaskError::EmptyText { field: "error" });
}

#[tokio::test]
async fn a_retry_cannot_be_assigned_before_its_backoff_elapses() {
    TaskTest::with(())
        .given(history_at(TaskStatus::RetryScheduled))
        .when_async(TaskCommand::AssignTask {
            agent_id: agent_id(),
            at: t(30),
        })
        .await
        .then_expect_error(TaskError::RetryNotDue { not_before: t(31) });
    TaskTest::with(())
        .given(history_at(TaskStatus::RetryScheduled))
        .when_async(TaskCommand::AssignTask {
            agent_id: agent_id(),
            at: t(31),
        })
        .await
        .then_expect_events(vec![assigned(t(31))]);
    assert_eq!(
        TaskError::RetryNotDue { not_before: t(31) }.kind(),
        ErrorKind::Conflict
    );
}

#[tokio::test]
async fn a_timeout_with_retries_left_schedules_a_retry() {
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(TaskCommand::TimeOutTask {
            at: t(621),
            jitter: 0.0,
        })
        .await
        .then_expect_events(vec![
            TaskEvent::TaskTimedOut {
                after_seconds: 601,
                attempt: 1,
                at: t(621),
            },
            // Jitter 0 shortens the 1 s base delay to 0.75 s.
            retry_scheduled(1, t(621) + Duration::milliseconds(750)),
        ]);
}

#[tokio::test]
async fn a_timeout_with_no_retry_left_ends_timed_out() {
    let timed_out = TaskEvent::TaskTimedOut {
        after_seconds: 40,
        attempt: 1,
        at: t(60),
    };
    let running = running_from(created_with(0, Some(30)));
    TaskTest::with(())
        .given(running.clone())
        .when_async(TaskCommand::TimeOutTask {
            at: t(60),
            jitter: 0.5,
        })
        .await
        .then_expect_events(vec![timed_out.clone(), gave_up(FailureReason::TimedOut)]);
    let state: Task = fold(&with(
        running,
        [timed_out, gave_up(FailureReason::TimedOut)],
    ));
    assert_eq!(state.status, TaskStatus::TimedOut);
    assert!(state.status.is_final());
    assert_eq!(state.last_error.as_deref(), Some("timed out after 40s"));
}

#[tokio::test]
async fn a_task_cannot_time_out_before_its_timeout_has_passed() {
    // Started at t+20 with a 600 s timeout: the deadline is t+620, inclusive.
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(TaskCommand::TimeOutTask {
            at: t(620),
            jitter: 0.5,
        })
        .await
        .then_expect_error(TaskError::NotTimedOutYet { deadline: t(620) });
}

#[test]
fn a_task_without_its_own_timeout_times_out_when_the_caller_says() {
    let state: Task = fold(&running_from(created_with(3, None)));
    let command = TaskCommand::TimeOutTask {
        at: t(21),
        jitter: 0.5,
    };
    let (handled, result) = handle(&state, command, &());
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(handled.status, TaskStatus::RetryScheduled);
}

#[tokio::test]
async fn a_cancel_records_its_reason_and_drops_a_blank_one() {
    TaskTest::with(())
        .given(history_at(TaskStatus::Running))
        .when_async(TaskCommand::CancelTask {
            reason: Some(" ticket closed ".into()),
            at: t(40),
        })
        .await
        .then_expect_events(vec![TaskEvent::TaskCancelled {
            reason: Some("ticket closed".into()),
            at: t(40),
        }]);
    TaskTest::with(())
        .given(history_at(TaskStatus::RetryScheduled))
        .when_async(TaskCommand::CancelTask {
            reason: Some("  ".into()),
            at: t(40),
        })
        .await
        .then_expect_events(vec![TaskEvent::TaskCancelled {
            reason: None,
            at: t(40),
        }]);
}

#[tokio::test]
async fn a_task_cannot_depend_on_itself_twice_on_one_task_or_drop_an_unknown_dependency() {
    TaskTest::with(())
        .given(vec![created()])
        .when_async(TaskCommand::AddDependency {
            depends_on: task_id(),
        })
        .await
        .then_expect_error(TaskError::SelfDependency);
    TaskTest::with(())
        .given(vec![created()])
        .when_async(TaskCommand::AddDependency {
            depends_on: dep_a(),
        })
        .await
        .then_expect_error(TaskError::DuplicateDependency(dep_a()));
    TaskTest::with(())
        .given(vec![created()])
        .when_async(TaskCommand::RemoveDependency {
            depends_on: dep_b(),
        })
        .await
        .then_expect_error(TaskError::UnknownDependency(dep_b()));
    let state: Task = fold(&[
        created(),
        TaskEvent::TaskDependencyAdded {
            depends_on: dep_b(),
        },
        TaskEvent::TaskDependencyRemoved {
            depends_on: dep_a(),
        },
    ]);
    assert_eq!(
        state.depends_on.into_iter().collect::<Vec<_>>(),
        vec![dep_b()]
    );
}

#[test]
fn errors_are_classified_by_rule() {
    assert_eq!(TaskError::NotFound.kind(), ErrorKind::NotFound);
    assert_eq!(TaskError::NotFound.code(), "task_not_found");
    for conflict in [
        TaskError::AlreadyExists,
        TaskError::DuplicateDependency(dep_a()),
        TaskError::UnknownDependency(dep_a()),
        TaskError::DependenciesFrozen(TaskStatus::Running),
        TaskError::IllegalTransition {
            from: TaskStatus::Completed,
            action: "start",
        },
        TaskError::NotTimedOutYet { deadline: t0() },
    ] {
        assert_eq!(conflict.kind(), ErrorKind::Conflict, "{conflict:?}");
    }
    let error = TaskError::IllegalTransition {
        from: TaskStatus::RetryScheduled,
        action: "start",
    };
    assert_eq!(error.to_string(), "a retry_scheduled task cannot start");
}

#[test]
fn backoff_doubles_from_one_second_within_a_quarter_either_way() {
    for (attempt, base_ms) in [(1, 1000), (2, 2000), (3, 4000), (4, 8000)] {
        assert_eq!(retry_backoff(attempt, 0.5), Duration::milliseconds(base_ms));
        assert_eq!(
            retry_backoff(attempt, 0.0),
            Duration::milliseconds(base_ms * 3 / 4)
        );
        let high = retry_backoff(attempt, 0.999_999);
        assert!(
            high <= Duration::milliseconds(base_ms * 5 / 4),
            "{attempt}: {high}"
        );
        assert!(
            high > Duration::milliseconds(base_ms * 5 / 4 - 10),
            "{attempt}: {high}"
        );
    }
}

#[test]
fn backoff_is_capped_at_sixty_seconds_after_jitter() {
    // 2^6 = 64 s: 48 s with the lowest jitter, capped at 60 s otherwise.
    assert_eq!(retry_backoff(7, 0.0), Duration::seconds(48));
    assert_eq!(retry_backoff(7, 0.5), Duration::seconds(60));
    assert_eq!(retry_backoff(6, 0.999), Duration::milliseconds(39_984));
    for attempt in [8, 20, u32::MAX] {
        assert_eq!(retry_backoff(attempt, 0.0), Duration::seconds(60));
    }
}

#[test]
fn backoff_clamps_a_jitter_outside_the_unit_range() {
    assert_eq!(retry_backoff(1, -3.0), Duration::milliseconds(750));
    assert_eq!(retry_backoff(1, 7.0), Duration::milliseconds(1250));
    assert_eq!(retry_backoff(1, f64::NAN), Duration::milliseconds(750));
}

#[test]
fn permanent_errors_are_recognised_case_insensitively() {
    assert!(is_permanent_error("PERMISSION DENIED"));
    assert!(is_permanent_error("open /etc: Read-Only file system"));
    assert!(is_permanent_error(
        "ERROR: duplicate key value violates unique constraint"
    ));
    for marker in PERMANENT_ERROR_MARKERS {
        assert!(is_permanent_error(&marker.to_uppercase()), "{marker}");
    }
    assert!(!is_permanent_error("connection reset by peer"));
    assert!(!is_permanent_error("rate limit")); // only "rate limit exceeded" is permanent
}

#[test]
fn statuses_display_as_they_serialize_and_events_are_named_by_variant() {
    for status in TaskStatus::ALL {
        let json = serde_json::to_value(status).expect("a status serializes");
        assert_eq!(json, json!(status.to_string()));
    }
    let mut events = history_at(TaskStatus::TimedOut);
    events.extend(history_at(TaskStatus::PermanentlyFailed));
    events.extend(history_at(TaskStatus::RetryScheduled));
    events.extend(history_at(TaskStatus::Cancelled));
    events.extend(history_at(TaskStatus::Completed));
    events.extend(history_at(TaskStatus::NeedsRevision));
    events.push(TaskEvent::TaskValidates {
        target: ValidationTarget {
            task_id: dep_a(),
            revision: 0,
            implementer_agent_id: None,
        },
    });
    events.push(TaskEvent::TaskVerdictGiven {
        verdict: Verdict {
            passed: true,
            feedback: None,
        },
    });
    events.push(TaskEvent::TaskValidationPassed {
        validation_task_id: validation_task_id(0),
        feedback: None,
    });
    events.push(TaskEvent::TaskValidationAbandoned {
        validation_task_id: validation_task_id(0),
    });
    events.push(TaskEvent::TaskPlanned {
        key: "TSK-001".into(),
    });
    events.push(TaskEvent::TaskProgressReported {
        message: "x".into(),
    });
    events.push(TaskEvent::TaskDependencyAdded {
        depends_on: dep_b(),
    });
    events.push(TaskEvent::TaskDependencyRemoved {
        depends_on: dep_b(),
    });
    for event in events {
        let json = serde_json::to_value(&event).expect("an event serializes");
        let tag = json.as_object().and_then(|o| o.keys().next().cloned());
        assert_eq!(tag, Some(event.event_type()));
        assert_eq!(event.event_version(), "1");
        let back: TaskEvent = serde_json::from_value(json).expect("an event deserializes");
        assert_eq!(back, event);
    }
}

fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    (0_i64..200).prop_map(t)
}

fn any_dependency() -> impl Strategy<Value = Uuid> {
    prop::sample::select(vec![task_id(), dep_a(), dep_b()])
}

/// Plain tasks, tasks under validation, and validation tasks of `agent_id()`'s work.
fn any_create() -> impl Strategy<Value = TaskCommand> {
    let target = ValidationTarget {
        task_id: dep_a(),
        revision: 0,
        implementer_agent_id: Some(agent_id()),
    };
    (
        0_u32..3,
        prop::option::of(Just(30_u32)),
        prop::option::of((0_u32..3).prop_map(|max_revisions| ValidationPolicy { max_revisions })),
        prop::option::of(Just(target)),
    )
        .prop_map(|(retries, timeout, validation, validates)| {
            NewTask {
                max_retries: Some(retries),
                timeout_seconds: timeout,
                validation,
                validates,
                ..NewTask::default()
            }
            .command()
        })
}

fn any_verdict() -> impl Strategy<Value = Verdict> {
    (any::<bool>(), prop::option::of("[a-z ]{0,3}"))
        .prop_map(|(passed, feedback)| Verdict { passed, feedback })
}

fn any_failure() -> impl Strategy<Value = TaskCommand> {
    let errors = vec!["boom", "Permission denied", "", "timeout talking to git"];
    (prop::sample::select(errors), any_time(), 0.0_f64..1.0).prop_map(|(error, at, jitter)| {
        TaskCommand::FailTask {
            error: error.into(),
            at,
            jitter,
        }
    })
}

fn any_command() -> impl Strategy<Value = TaskCommand> {
    // Cancelling ends a task from almost anywhere, so it is rarer to let runs go deep.
    prop_oneof![
        3 => any_create(),
        3 => (any_time(), prop::sample::select(vec![agent_id(), validator_id()]))
            .prop_map(|(at, agent_id)| TaskCommand::AssignTask { agent_id, at }),
        2 => (any_verdict(), any_time()).prop_map(|(verdict, at)| TaskCommand::GiveVerdict {
            verdict,
            at
        }),
        3 => (0_u32..4, any_verdict(), any_time()).prop_map(|(revision, verdict, at)| {
            TaskCommand::ApplyVerdict {
                validation_task_id: validation_task_id(revision),
                revision,
                verdict,
                at,
            }
        }),
        1 => (0_u32..4).prop_map(|revision| TaskCommand::AbandonValidation {
            validation_task_id: validation_task_id(revision),
            revision,
        }),
        3 => any_time().prop_map(|at| TaskCommand::StartTask { at }),
        3 => "[a-z ]{0,3}".prop_map(|message| TaskCommand::ReportProgress { message }),
        3 => any_time().prop_map(|at| TaskCommand::CompleteTask {
            result: json!({}),
            at
        }),
        3 => any_failure(),
        3 => (any_time(), 0.0_f64..1.0)
            .prop_map(|(at, jitter)| TaskCommand::TimeOutTask { at, jitter }),
        1 => any_time().prop_map(|at| TaskCommand::CancelTask { reason: None, at }),
        3 => any_dependency().prop_map(|depends_on| TaskCommand::AddDependency { depends_on }),
        3 => any_dependency().prop_map(|depends_on| TaskCommand::RemoveDependency { depends_on }),
    ]
}

proptest! {
    /// Whatever commands arrive, the state is the fold of the accepted events, a refused
    /// command writes nothing, retries stay within their budget, a final task never
    /// changes (but by a failed one's cancellation), and every status change is one the
    /// lifecycle allows.
    #[test]
    fn state_is_the_fold_of_events_and_never_illegal(
        commands in prop::collection::vec(any_command(), 1..60)
    ) {
        let mut state = Task::default();
        let mut log = Vec::new();
        for command in commands {
            let before = state.clone();
            let (handled, result) = handle(&state, command, &());
            match result {
                Ok(events) => {
                    log.extend(events);
                    state = handled;
                }
                Err(_) => prop_assert_eq!(&handled, &before, "a refused command wrote events"),
            }
            prop_assert_eq!(&state, &fold::<Task>(&log));
            prop_assert!(state.retry_count <= state.max_retries);
            // A final task never changes, but for one failed for good or timed out that a
            // person gives up on (cancelled).
            let given_up = matches!(before.status, TaskStatus::PermanentlyFailed | TaskStatus::TimedOut)
                && state.status == TaskStatus::Cancelled;
            if before.exists() && before.status.is_final() && !given_up {
                prop_assert_eq!(&state, &before, "a final task changed");
            }
            let (from, to) = (before.status, state.status);
            prop_assert!(from == to || can_move(from, to), "{} -> {}", from, to);
            if matches!(to, TaskStatus::Assigned | TaskStatus::Running) {
                prop_assert!(state.assigned_agent_id.is_some());
            }
            prop_assert_eq!(to == TaskStatus::RetryScheduled, state.not_before.is_some());
            prop_assert!(state.revision <= state.validation.map_or(0, |p| p.max_revisions));
            if to == TaskStatus::PendingValidation {
                prop_assert!(state.submitted_result.is_some());
            }
            if let (Some(target), Some(agent)) = (state.validates, state.assigned_agent_id) {
                prop_assert!(target.allows(agent), "the implementer validates its own work");
            }
            if to == TaskStatus::Completed && from != TaskStatus::Completed {
                // Work under validation completes only through a passing verdict, and a
                // validation task only through its verdict.
                if state.validation.is_some() {
                    prop_assert_eq!(from, TaskStatus::PendingValidation);
                }
                if state.validates.is_some() {
                    prop_assert!(state.verdict.is_some());
                }
            }
            prop_assert!(state.id.is_none_or(|id| !state.depends_on.contains(&id)));
        }
    }
}

#[test]
fn a_task_depends_on_at_most_a_hundred_tasks() {
    let many: Vec<Uuid> = (1..=101).map(|n| Uuid::from_u128(0x1000 + n)).collect();
    let command = NewTask {
        depends_on: many,
        ..NewTask::default()
    }
    .command();
    let (_, result) = handle(&Task::default(), command, &());
    assert_eq!(
        result,
        Err(TaskError::TooManyDependencies {
            max: MAX_DEPENDENCIES
        })
    );
}

mod discoveries {
    use super::*;
    use crate::task::{Discovery, DiscoveryKind};

    fn running() -> Vec<TaskEvent> {
        running_from(created())
    }

    fn report(child: u128, blocks_parent: bool) -> TaskCommand {
        TaskCommand::ReportDiscovery {
            discovered_task_id: Uuid::from_u128(child),
            kind: DiscoveryKind::Bug,
            blocks_parent,
        }
    }

    fn reported(child: u128, blocks_parent: bool) -> TaskEvent {
        TaskEvent::TaskDiscoveryReported {
            discovered_task_id: Uuid::from_u128(child),
            kind: DiscoveryKind::Bug,
            blocks_parent,
        }
    }

    #[test]
    fn only_a_running_task_reports_a_discovery() {
        TaskTest::with(())
            .given(vec![created()])
            .when(report(9, false))
            .then_expect_error(TaskError::IllegalTransition {
                from: TaskStatus::Pending,
                action: "report a discovery",
            });
        TaskTest::with(())
            .given(running())
            .when(report(9, true))
            .then_expect_events(vec![reported(9, true)]);
    }

    /// A task reports at most `MAX_DISCOVERIES` over its life, blocking or not.
    #[test]
    fn a_task_reports_at_most_its_share_of_discoveries() {
        let mut history = running();
        for child in 0..u128::from(MAX_DISCOVERIES) {
            history.push(reported(100 + child, child % 2 == 0));
        }
        TaskTest::with(())
            .given(history.clone())
            .when(report(9, false))
            .then_expect_error(TaskError::TooManyDiscoveries {
                max: MAX_DISCOVERIES,
            });
        history.pop();
        TaskTest::with(())
            .given(history)
            .when(report(9, false))
            .then_expect_events(vec![reported(9, false)]);
    }

    #[test]
    fn a_blocking_discovery_holds_completion_until_resolved() {
        let mut history = running();
        history.push(reported(9, true));
        history.push(reported(10, false));
        let complete = TaskCommand::CompleteTask {
            result: serde_json::Value::Null,
            at: t(30),
        };
        TaskTest::with(())
            .given(history.clone())
            .when(complete.clone())
            .then_expect_error(TaskError::DiscoveriesOpen(vec![Uuid::from_u128(9)]));
        // Resolving one that does not block (or no longer does) changes nothing.
        TaskTest::with(())
            .given(history.clone())
            .when(TaskCommand::ResolveDiscovery {
                discovered_task_id: Uuid::from_u128(10),
            })
            .then_expect_events(vec![]);
        history.push(TaskEvent::TaskDiscoveryResolved {
            discovered_task_id: Uuid::from_u128(9),
        });
        TaskTest::with(())
            .given(history.clone())
            .when(TaskCommand::ResolveDiscovery {
                discovered_task_id: Uuid::from_u128(9),
            })
            .then_expect_events(vec![]);
        TaskTest::with(())
            .given(history)
            .when(complete)
            .then_expect_events(vec![TaskEvent::TaskCompleted {
                result: serde_json::Value::Null,
                at: t(30),
            }]);
    }

    #[test]
    fn a_discovered_task_records_where_it_came_from() {
        let discovery = Discovery {
            parent_task_id: Uuid::from_u128(3),
            kind: DiscoveryKind::FollowUp,
            discovered_by: Some(Uuid::from_u128(7)),
            blocks_parent: true,
        };
        let task: Task = fold(&[created(), TaskEvent::TaskDiscovered { discovery }]);
        assert_eq!(task.discovery, Some(discovery));
        assert_eq!(task.status, TaskStatus::Pending);
    }
}

mod validation {
    use super::*;

    fn check(state: &Task, command: TaskCommand) -> Result<Vec<TaskEvent>, TaskError> {
        handle(state, command, &()).1
    }

    #[test]
    fn completing_work_under_validation_submits_it_and_frees_the_agent() {
        let state: Task = fold(&validated_running());
        let complete = TaskCommand::CompleteTask {
            result: json!({"revision": 0}),
            at: t(30),
        };
        assert_eq!(check(&state, complete), Ok(vec![submitted(0)]));
        let submitted: Task = fold(&history_at(TaskStatus::PendingValidation));
        assert_eq!(submitted.assigned_agent_id, None);
        assert_eq!(submitted.implementer_agent_id, Some(agent_id()));
        assert_eq!(submitted.submitted_result, Some(json!({"revision": 0})));
    }

    #[test]
    fn a_passing_verdict_completes_with_the_submitted_result() {
        let state: Task = fold(&history_at(TaskStatus::PendingValidation));
        let events = check(&state, verdict(0, true, Some("clean"))).expect("passes");
        assert_eq!(
            events,
            vec![
                TaskEvent::TaskValidationPassed {
                    validation_task_id: validation_task_id(0),
                    feedback: Some("clean".into()),
                },
                TaskEvent::TaskCompleted {
                    result: json!({"revision": 0}),
                    at: t(40),
                },
            ]
        );
    }

    #[test]
    fn rejections_send_the_work_back_until_revisions_are_spent() {
        // Two revisions allowed: rejected at submissions 0 and 1, failed at 2.
        let mut log = validated_running();
        for revision in 0..2 {
            log.push(submitted(revision));
            let state: Task = fold(&log);
            let events = check(&state, verdict(revision, false, Some("still red"))).expect("ok");
            assert_eq!(
                events,
                vec![
                    rejected(revision, "still red"),
                    revision_requested(revision + 1)
                ]
            );
            log.extend(events);
            let state: Task = fold(&log);
            assert_eq!(state.status, TaskStatus::NeedsRevision);
            assert_eq!(state.feedback.as_deref(), Some("still red"));
            // The revision goes back to the queue and anyone may take it again.
            log.extend([assigned(t(50)), TaskEvent::TaskStarted { at: t(60) }]);
        }
        log.push(submitted(2));
        let state: Task = fold(&log);
        let events = check(&state, verdict(2, false, Some("gave up"))).expect("ok");
        assert_eq!(
            events,
            vec![
                rejected(2, "gave up"),
                gave_up(FailureReason::RevisionsExhausted)
            ]
        );
        let failed: Task = fold(&with(log, events));
        assert_eq!(failed.status, TaskStatus::PermanentlyFailed);
        assert_eq!(
            failed.last_error.as_deref(),
            Some("validation rejected the work: gave up")
        );
    }

    #[test]
    fn a_verdict_on_another_submission_or_status_is_refused() {
        let state: Task = fold(&history_at(TaskStatus::NeedsRevision));
        assert_eq!(
            check(&state, verdict(0, true, None)),
            Err(TaskError::IllegalTransition {
                from: TaskStatus::NeedsRevision,
                action: "take a verdict"
            })
        );
        let resubmitted: Task = fold(&with(
            history_at(TaskStatus::NeedsRevision),
            [
                assigned(t(50)),
                TaskEvent::TaskStarted { at: t(60) },
                submitted(1),
            ],
        ));
        assert_eq!(
            check(&resubmitted, verdict(0, true, None)),
            Err(TaskError::StaleVerdict {
                given: 0,
                current: 1
            })
        );
        assert!(check(&resubmitted, verdict(1, true, None)).is_ok());
    }

    #[test]
    fn abandoned_validation_fails_the_work_for_good() {
        let state: Task = fold(&history_at(TaskStatus::PendingValidation));
        let abandon = TaskCommand::AbandonValidation {
            validation_task_id: validation_task_id(0),
            revision: 0,
        };
        let events = check(&state, abandon).expect("abandons");
        let failed: Task = fold(&with(history_at(TaskStatus::PendingValidation), events));
        assert_eq!(failed.status, TaskStatus::PermanentlyFailed);
        assert!(failed
            .last_error
            .is_some_and(|e| e.contains("ended without a verdict")));
    }

    fn validation_task() -> Vec<TaskEvent> {
        vec![
            created(),
            TaskEvent::TaskValidates {
                target: ValidationTarget {
                    task_id: dep_b(),
                    revision: 0,
                    implementer_agent_id: Some(agent_id()),
                },
            },
        ]
    }

    #[test]
    fn the_implementer_never_runs_its_own_validation() {
        let state: Task = fold(&validation_task());
        let by = |agent_id| TaskCommand::AssignTask { agent_id, at: t(5) };
        assert_eq!(
            check(&state, by(agent_id())),
            Err(TaskError::ImplementerCannotValidate)
        );
        assert!(check(&state, by(validator_id())).is_ok());
    }

    #[test]
    fn a_validation_task_completes_by_its_verdict_only() {
        let running: Task = fold(&with(
            validation_task(),
            [
                TaskEvent::TaskAssigned {
                    agent_id: validator_id(),
                    at: t(10),
                },
                TaskEvent::TaskStarted { at: t(20) },
            ],
        ));
        let complete = TaskCommand::CompleteTask {
            result: json!({}),
            at: t(30),
        };
        assert_eq!(check(&running, complete), Err(TaskError::VerdictRequired));
        let give = |passed, feedback: Option<&str>| TaskCommand::GiveVerdict {
            verdict: Verdict {
                passed,
                feedback: feedback.map(String::from),
            },
            at: t(30),
        };
        assert_eq!(
            check(&running, give(false, Some("  "))),
            Err(TaskError::FeedbackRequired)
        );
        let events = check(&running, give(false, Some(" fix the tests "))).expect("judged");
        assert_eq!(
            events,
            vec![
                TaskEvent::TaskVerdictGiven {
                    verdict: Verdict {
                        passed: false,
                        feedback: Some("fix the tests".into()),
                    },
                },
                TaskEvent::TaskCompleted {
                    result: json!({"passed": false, "feedback": "fix the tests"}),
                    at: t(30),
                },
            ]
        );
        // Work that is not a validation gives no verdict.
        let plain: Task = fold(&history_at(TaskStatus::Running));
        assert_eq!(
            check(&plain, give(true, None)),
            Err(TaskError::NotAValidation)
        );
    }

    #[test]
    fn creation_refuses_a_validated_validation_and_too_many_revisions() {
        let target = ValidationTarget {
            task_id: dep_b(),
            revision: 0,
            implementer_agent_id: None,
        };
        let both = NewTask {
            validation: Some(ValidationPolicy::default()),
            validates: Some(target),
            ..NewTask::default()
        };
        assert_eq!(
            check(&Task::default(), both.command()),
            Err(TaskError::ValidationOfValidation)
        );
        let many = NewTask {
            validation: Some(ValidationPolicy {
                max_revisions: MAX_MAX_REVISIONS + 1,
            }),
            ..NewTask::default()
        };
        assert_eq!(
            check(&Task::default(), many.command()),
            Err(TaskError::TooManyRevisions {
                max: MAX_MAX_REVISIONS
            })
        );
    }
}

// ---------------------------------------------------------------- trajectory assessments

fn assessment(score: f64, message: Option<&str>) -> TaskCommand {
    TaskCommand::AssessTrajectory {
        assessment: TrajectoryAssessment {
            alignment_score: score,
            needs_steering: message.is_some(),
            steering_message: message.map(str::to_string),
            reason: "why".into(),
            model: "m".into(),
            prompt_tokens: 10,
            completion_tokens: 2,
        },
        steering_id: Uuid::from_u128(77),
        at: t(60),
    }
}

#[test]
fn an_assessment_is_recorded_on_a_running_task_and_its_steering_follows() {
    let running = crate::testing::fold::<Task>(&history_at(TaskStatus::Running));
    let events = running
        .decide(assessment(1.7, Some("Back to the test.")))
        .expect("assessed");
    match &events[..] {
        [TaskEvent::TrajectoryAssessed { assessment, .. }, TaskEvent::TaskSteered {
            source, message, ..
        }] => {
            assert_eq!(assessment.alignment_score, 1.0, "clamped");
            assert_eq!(*source, SteeringSource::Trajectory);
            assert_eq!(message, "Back to the test.");
        }
        other => panic!("{other:?}"),
    }
    // No steering asked (or an empty message): the assessment alone.
    let events = running.decide(assessment(0.9, None)).expect("assessed");
    assert_eq!(events.len(), 1);
    let events = running
        .decide(assessment(0.2, Some(" ")))
        .expect("assessed");
    assert_eq!(events.len(), 1);
    // Only a running task is assessed.
    let pending = crate::testing::fold::<Task>(&history_at(TaskStatus::Pending));
    assert!(matches!(
        pending.decide(assessment(0.5, None)),
        Err(TaskError::IllegalTransition { .. })
    ));
}

/// A step sent as the holder is decided as the step itself while the agent holds the
/// task, and refused once another holds it or nobody does — whatever the step.
#[test]
fn a_step_sent_as_the_holder_counts_only_while_that_agent_holds_the_task() {
    let other = Uuid::from_u128(0xB7);
    let steps = [
        TaskCommand::ReportProgress {
            message: "halfway".into(),
        },
        TaskCommand::CompleteTask {
            result: json!({"ok": true}),
            at: t(30),
        },
        TaskCommand::FailTask {
            error: "boom".into(),
            at: t(30),
            jitter: 0.5,
        },
        TaskCommand::TimeOutTask {
            at: t(700),
            jitter: 0.5,
        },
    ];
    let running = fold::<Task>(&running_from(created()));
    let taken_from = |agent_id, at| TaskEvent::TaskUnassigned { agent_id, at };
    let given_to = TaskEvent::TaskAssigned {
        agent_id: other,
        at: t(26),
    };
    // Taken back from the agent and given to another.
    let reassigned = fold::<Task>(&with(
        running_from(created()),
        [taken_from(agent_id(), t(25)), given_to.clone()],
    ));
    let unassigned = fold::<Task>(&with(
        running_from(created()),
        [taken_from(agent_id(), t(25))],
    ));
    for step in steps {
        let as_holder = |agent_id| TaskCommand::AsHolder {
            agent_id,
            assignment: None,
            command: Box::new(step.clone()),
        };
        let (_, direct) = handle(&running, step.clone(), &());
        let (_, held) = handle(&running, as_holder(agent_id()), &());
        assert_eq!(held, direct, "{step:?}");
        assert!(held.is_ok(), "{step:?}: {held:?}");
        let (_, lost) = handle(&reassigned, as_holder(agent_id()), &());
        assert_eq!(lost, Err(TaskError::HeldByAnotherAgent), "{step:?}");
        assert_eq!(TaskError::HeldByAnotherAgent.kind(), ErrorKind::Forbidden);
        let (_, nobody) = handle(&unassigned, as_holder(agent_id()), &());
        assert_eq!(nobody, Err(TaskError::NotAssigned), "{step:?}");
        // The new holder's step is its own.
        let (_, new_holder) = handle(&reassigned, as_holder(other), &());
        assert_ne!(new_holder, Err(TaskError::HeldByAnotherAgent), "{step:?}");
    }
    // The agent it was taken from may not take it back before another agent had it;
    // after that, it may (a later attempt is a fresh start).
    let assign = |agent_id| TaskCommand::AssignTask {
        agent_id,
        at: t(27),
    };
    let (_, back) = handle(&unassigned, assign(agent_id()), &());
    assert_eq!(back, Err(TaskError::ReassignedAway));
    let (_, elsewhere) = handle(&unassigned, assign(other), &());
    assert!(elsewhere.is_ok(), "{elsewhere:?}");
    let released = fold::<Task>(&with(
        running_from(created()),
        [
            taken_from(agent_id(), t(25)),
            given_to,
            taken_from(other, t(27)),
        ],
    ));
    let (_, again) = handle(&released, assign(agent_id()), &());
    assert!(again.is_ok(), "{again:?}");
}

fn give_back(assigned_at: DateTime<Utc>) -> TaskCommand {
    TaskCommand::GiveBackUnstarted {
        assigned_at,
        error: "not started in time".into(),
        at: t(100),
        jitter: 0.5,
    }
}

/// A step naming its assignment (the `assigned_at` its claim answered) stands only while
/// that assignment does: once the task timed out and the same agent was given it again,
/// the earlier run's completion is refused (409 `assignment_superseded`), the later run's
/// stands, and a step naming none is decided as before.
#[test]
fn a_step_of_an_earlier_assignment_of_the_same_agent_is_refused() {
    let running = fold::<Task>(&running_from(created()));
    let (timed_out, outcome) = handle(
        &running,
        TaskCommand::TimeOutTask {
            at: t(700),
            jitter: 0.5,
        },
        &(),
    );
    assert!(outcome.is_ok(), "{outcome:?}");
    let (assigned, outcome) = handle(
        &timed_out,
        TaskCommand::AssignTask {
            agent_id: agent_id(),
            at: t(800),
        },
        &(),
    );
    assert!(outcome.is_ok(), "{outcome:?}");
    let (again, outcome) = handle(&assigned, TaskCommand::StartTask { at: t(801) }, &());
    assert!(outcome.is_ok(), "{outcome:?}");
    let complete = |assignment| TaskCommand::AsHolder {
        agent_id: agent_id(),
        assignment,
        command: Box::new(TaskCommand::CompleteTask {
            result: json!({}),
            at: t(802),
        }),
    };
    let (_, stale) = handle(&again, complete(Some(t(10))), &());
    assert_eq!(
        stale,
        Err(TaskError::AssignmentSuperseded {
            current: t(800).to_rfc3339()
        })
    );
    assert_eq!(stale.expect_err("refused").kind(), ErrorKind::Conflict);
    let (_, current) = handle(&again, complete(Some(t(800))), &());
    assert!(current.is_ok(), "{current:?}");
    let (_, unnamed) = handle(&again, complete(None), &());
    assert!(unnamed.is_ok(), "{unnamed:?}");
    // Naming the running assignment changes nothing of a step's other rules.
    let (_, other) = handle(
        &again,
        TaskCommand::AsHolder {
            agent_id: Uuid::from_u128(77),
            assignment: Some(t(800)),
            command: Box::new(TaskCommand::StartTask { at: t(803) }),
        },
        &(),
    );
    assert_eq!(other, Err(TaskError::HeldByAnotherAgent));
}

/// Running, stalled since t+25, failed at t+30 and retried; assigned again at t+40.
fn assigned_again_after_a_stall() -> Vec<TaskEvent> {
    with(
        running_from(created()),
        [
            TaskEvent::TaskStalled {
                agent_id: agent_id(),
                idle_since: t(25),
                at: t(27),
            },
            TaskEvent::TaskFailed {
                error: "boom".into(),
                attempt: 1,
                at: t(30),
            },
            retry_scheduled(1, t(31)),
            assigned(t(40)),
        ],
    )
}

#[test]
fn an_unstarted_assignment_is_given_back_only_while_it_is_the_one_seen() {
    // The assignment seen, still unstarted: failed, to be retried.
    let assigned_at_10: Task = fold(&history_at(TaskStatus::Assigned));
    let (handled, result) = handle(&assigned_at_10, give_back(t(10)), &());
    assert!(
        matches!(
            result.as_deref(),
            Ok([
                TaskEvent::TaskFailed { .. },
                TaskEvent::TaskRetryScheduled { .. }
            ])
        ),
        "{result:?}"
    );
    assert_eq!(handled.status, TaskStatus::RetryScheduled);
    // Every other status refuses it: a started task is not taken from its agent.
    for from in TaskStatus::ALL
        .into_iter()
        .filter(|s| *s != TaskStatus::Assigned)
    {
        let state: Task = fold(&history_at(from));
        let (_, result) = handle(&state, give_back(t(10)), &());
        assert_eq!(
            result,
            Err(TaskError::IllegalTransition {
                from,
                action: "be given back unstarted"
            }),
            "{from}"
        );
    }
    // Assigned anew since the assignment the sweep saw: the new one stays.
    let again: Task = fold(&assigned_again_after_a_stall());
    assert_eq!(again.assigned_at, Some(t(40)));
    let (unchanged, result) = handle(&again, give_back(t(10)), &());
    assert_eq!(result, Err(TaskError::AssignmentMovedOn));
    assert_eq!(unchanged, again);
    let (_, result) = handle(&again, give_back(t(40)), &());
    assert!(result.is_ok(), "{result:?}");
}

/// An assignment withdrawn (its agent stopped taking work as it was made) goes back to the
/// queue without an attempt counted and without barring the agent; only the assignment
/// made at that instant, and only while its attempt has not ended (a start in the
/// assignment's own transaction, an in-process agent's, is taken back with it).
#[test]
fn a_withdrawn_assignment_counts_no_attempt_and_bars_nobody() {
    let withdraw = |assigned_at| TaskCommand::WithdrawAssignment {
        assigned_at,
        at: t(11),
    };
    let assigned_at_10: Task = fold(&history_at(TaskStatus::Assigned));
    let (withdrawn, result) = handle(&assigned_at_10, withdraw(t(10)), &());
    assert_eq!(
        result,
        Ok(vec![TaskEvent::TaskAssignmentWithdrawn {
            agent_id: agent_id(),
            at: t(11)
        }])
    );
    assert_eq!(withdrawn.status, TaskStatus::Pending);
    assert_eq!(
        (withdrawn.assigned_agent_id, withdrawn.assigned_at),
        (None, None)
    );
    assert_eq!(withdrawn.retry_count, assigned_at_10.retry_count);
    assert_eq!(withdrawn.reassigned_from, None, "the agent is not barred");
    let (_, again) = handle(
        &withdrawn,
        TaskCommand::AssignTask {
            agent_id: agent_id(),
            at: t(12),
        },
        &(),
    );
    assert!(again.is_ok(), "the same agent may have it again: {again:?}");
    let running: Task = fold(&history_at(TaskStatus::Running));
    let (withdrawn, result) = handle(&running, withdraw(t(10)), &());
    assert_eq!(
        result,
        Ok(vec![TaskEvent::TaskAssignmentWithdrawn {
            agent_id: agent_id(),
            at: t(11)
        }])
    );
    assert_eq!(withdrawn.status, TaskStatus::Pending);
    assert_eq!(
        (withdrawn.assigned_agent_id, withdrawn.started_at),
        (None, None)
    );
    assert_eq!(withdrawn.retry_count, running.retry_count);
    let (_, late) = handle(
        &withdrawn,
        TaskCommand::AsHolder {
            agent_id: agent_id(),
            assignment: None,
            command: Box::new(TaskCommand::CompleteTask {
                result: json!({}),
                at: t(12),
            }),
        },
        &(),
    );
    assert!(
        late.is_err(),
        "the run taken back completes nothing: {late:?}"
    );
    for from in TaskStatus::ALL
        .into_iter()
        .filter(|s| ![TaskStatus::Assigned, TaskStatus::Running].contains(s))
    {
        let state: Task = fold(&history_at(from));
        let (_, result) = handle(&state, withdraw(t(10)), &());
        assert_eq!(
            result,
            Err(TaskError::IllegalTransition {
                from,
                action: "have its assignment withdrawn"
            }),
            "{from}"
        );
    }
    let again: Task = fold(&assigned_again_after_a_stall());
    let (unchanged, result) = handle(&again, withdraw(t(10)), &());
    assert_eq!(result, Err(TaskError::AssignmentMovedOn));
    assert_eq!(unchanged, again);
}

#[test]
fn a_new_assignment_leaves_no_stall_of_the_attempt_before() {
    let stalled: Task = fold(&assigned_again_after_a_stall()[..5]);
    assert_eq!(stalled.stalled_since, Some(t(25)));
    let again: Task = fold(&assigned_again_after_a_stall());
    assert_eq!(again.status, TaskStatus::Assigned);
    assert_eq!(again.assigned_agent_id, Some(agent_id()));
    // The stall policy acts only on a stall the task still shows: none here.
    assert_eq!(again.stalled_since, None);
}

/// A stall whose idle time is before the running attempt's start is the attempt before's
/// (a sweep's queue a moment behind the log): refused, so that `stall_policy` never acts
/// on the new attempt for the old one's silence. From its start on, it is marked.
#[test]
fn a_stall_idle_since_before_the_attempts_start_is_refused() {
    let running: Task = fold(&running_from(created()));
    assert_eq!(running.started_at, Some(t(20)));
    let stall = |idle_since| TaskCommand::MarkStalled {
        idle_since,
        progress_seen: 0,
        at: t(100),
    };
    let (unchanged, result) = handle(&running, stall(t(19)), &());
    assert_eq!(result, Err(TaskError::StallBeforeStart));
    assert_eq!(unchanged, running);
    let (stalled, result) = handle(&running, stall(t(20)), &());
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(stalled.stalled_since, Some(t(20)));
}

/// A sweep decides a stall on the attempt as its queue saw it: a progress report that came
/// after it looked (a report carries no time) makes its stall refused; the count it saw
/// is the attempt's own, from zero at each start.
#[test]
fn a_stall_decided_before_the_newest_progress_report_is_refused() {
    let progressed: Task = fold(&with(
        running_from(created()),
        [TaskEvent::TaskProgressReported {
            message: "halfway".into(),
        }],
    ));
    assert_eq!(progressed.progress_reports, 1);
    let stall = |progress_seen| TaskCommand::MarkStalled {
        idle_since: t(20),
        progress_seen,
        at: t(100),
    };
    let (unchanged, result) = handle(&progressed, stall(0), &());
    assert_eq!(
        result,
        Err(TaskError::ProgressSinceStall {
            seen: 0,
            reported: 1
        })
    );
    assert_eq!(unchanged, progressed);
    let (stalled, result) = handle(&progressed, stall(1), &());
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(stalled.stalled_since, Some(t(20)));

    // Started again, the new attempt counts its own reports.
    let again: Task = fold(&with(
        running_from(created()),
        [
            TaskEvent::TaskProgressReported {
                message: "halfway".into(),
            },
            TaskEvent::TaskStarted { at: t(30) },
        ],
    ));
    assert_eq!(again.progress_reports, 0);
}
