//! The read models survive their process being killed at any instant: `omoi serve`
//! processes are SIGKILLed while commands stream in, and afterwards every read model equals
//! a rebuild from the log (`verify`), with no event applied twice or skipped.

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use omoi_domain::access::Principal;
use omoi_domain::organization::{Organization, OrganizationCommand};
use omoi_domain::project::{Project, ProjectCommand};
use omoi_domain::task::{Task, TaskCommand};
use omoi_domain::ticket::{BlockReason, Ticket, TicketCommand, TicketStatus};
use omoi_store::bus::RetryPolicy;
use omoi_store::{Actor, CommandBus, CommandContext};
use omoi_testing::TestDatabase;
use rand::Rng;
use uuid::Uuid;

/// Starts `omoi serve` (API and projectors) on `database`.
fn serve(database: &TestDatabase) -> Child {
    omoi_testing::serve_process(env!("CARGO_BIN_EXE_omoi"), database)
}

/// SIGKILL: no shutdown code runs.
fn kill(mut child: Child) {
    child.kill().expect("killed");
    child.wait().expect("reaped");
}

struct Workload {
    bus: CommandBus,
    organization: Uuid,
    project: Uuid,
}

impl Workload {
    async fn new(database: &TestDatabase) -> Self {
        let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
        let (organization, project) = (Uuid::now_v7(), Uuid::now_v7());
        let context = context();
        let create = OrganizationCommand::CreateOrganization {
            organization_id: organization,
            name: "Crash".into(),
            owner: Principal::User(Uuid::now_v7()),
            at: chrono::Utc::now(),
        };
        bus.execute::<Organization>(&organization.to_string(), create, &context)
            .await
            .expect("org");
        let create = ProjectCommand::CreateProject {
            project_id: project,
            organization_id: organization,
            name: "Crash".into(),
            description: String::new(),
            settings: Default::default(),
            at: chrono::Utc::now(),
        };
        bus.execute::<Project>(&project.to_string(), create, &context)
            .await
            .expect("project");
        Self {
            bus,
            organization,
            project,
        }
    }

    /// One ticket's life: created, moved, blocked and unblocked, with a chain of tasks
    /// that are assigned, started and completed or cancelled.
    async fn ticket(&self, n: usize) {
        let context = context();
        let ticket = Uuid::now_v7();
        let id = ticket.to_string();
        let create = TicketCommand::CreateTicket {
            ticket_id: ticket,
            organization_id: self.organization,
            project_id: self.project,
            spec_id: None,
            title: format!("ticket {n}"),
            description: String::new(),
            priority: Default::default(),
            phase: Default::default(),
            plan_key: None,
        };
        self.run::<Ticket>(&id, create, &context).await;
        self.run::<Ticket>(
            &id,
            TicketCommand::TransitionTicket {
                to: TicketStatus::Analyzing,
                note: None,
            },
            &context,
        )
        .await;
        let block = TicketCommand::BlockTicket {
            reason: BlockReason::Dependency,
            note: None,
            at: chrono::Utc::now(),
        };
        self.run::<Ticket>(&id, block, &context).await;
        self.run::<Ticket>(
            &id,
            TicketCommand::TransitionTicket {
                to: TicketStatus::Building,
                note: None,
            },
            &context,
        )
        .await;
        let mut previous: Option<Uuid> = None;
        for t in 0..3 {
            let task = Uuid::now_v7();
            let create = TaskCommand::CreateTask {
                task_id: task,
                organization_id: self.organization,
                project_id: self.project,
                ticket_id: ticket,
                title: format!("task {n}.{t}"),
                description: String::new(),
                task_type: "implement".into(),
                phase: Default::default(),
                priority: Default::default(),
                depends_on: previous.into_iter().collect(),
                required_capabilities: vec![],
                max_retries: None,
                timeout_seconds: None,
                discovery: None,
                validation: None,
                validates: None,
                at: chrono::Utc::now(),
                plan_key: None,
            };
            let task_id = task.to_string();
            self.run::<Task>(&task_id, create, &context).await;
            if t < 2 {
                let agent = Uuid::now_v7();
                self.run::<Task>(
                    &task_id,
                    TaskCommand::AssignTask {
                        agent_id: agent,
                        at: chrono::Utc::now(),
                    },
                    &context,
                )
                .await;
                self.run::<Task>(
                    &task_id,
                    TaskCommand::StartTask {
                        at: chrono::Utc::now(),
                    },
                    &context,
                )
                .await;
                let done = TaskCommand::CompleteTask {
                    result: serde_json::json!({"n": n}),
                    at: chrono::Utc::now(),
                };
                self.run::<Task>(&task_id, done, &context).await;
            } else {
                self.run::<Task>(
                    &task_id,
                    TaskCommand::CancelTask {
                        reason: None,
                        at: chrono::Utc::now(),
                    },
                    &context,
                )
                .await;
            }
            previous = Some(task);
        }
    }

    async fn run<A>(&self, id: &str, command: A::Command, context: &CommandContext)
    where
        A: cqrs_es::Aggregate<Services = ()> + omoi_domain::common::Scoped + Clone + 'static,
        A::Command: Clone + Send,
        A::Error: Send,
    {
        if let Err(error) = self.bus.execute::<A>(id, command, context).await {
            panic!("command on {id} failed: {error}");
        }
    }
}

fn context() -> CommandContext {
    CommandContext::new(Actor::System("crash-test"), "crash-test")
}

/// Streams ticket lives until `stop`.
fn stream(workload: Arc<Workload>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            workload.ticket(n).await;
            n += 1;
        }
        n
    })
}

/// Waits until every live build has applied everything and none has failed.
async fn caught_up(database: &TestDatabase) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let behind: i64 = sqlx::query_scalar(
            "select count(*) from projector_builds b,
                    (select transaction_id::text::bigint as xid, global_position as pos from events
                      order by transaction_id desc, global_position desc limit 1) newest
              where b.state = 'live' and (b.transaction_id, b.global_position) < (newest.xid, newest.pos)",
        )
        .fetch_one(&database.pool)
        .await
        .expect("positions");
        let live: i64 =
            sqlx::query_scalar("select count(*) from projector_builds where state = 'live'")
                .fetch_one(&database.pool)
                .await
                .expect("builds");
        // Every read model and every process manager.
        let expected = (omoi_projections::all().len()
            + omoi_workflow::all(&Default::default(), &Default::default()).len())
            as i64;
        if behind == 0 && live == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the read models did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every read model equals a rebuild, and no build stopped.
async fn assert_read_models_equal_the_log(database: &TestDatabase) {
    let failures: Vec<String> =
        sqlx::query_scalar("select error from projector_builds where error is not null")
            .fetch_all(&database.pool)
            .await
            .expect("failures");
    assert!(
        failures.is_empty(),
        "a build stopped (an event applied twice?): {failures:?}"
    );
    for projector in omoi_projections::all() {
        let verdict =
            omoi_projections::verify::verify(&database.pool, &database.options, projector.as_ref())
                .await
                .expect("verify");
        assert!(
            verdict.differences.is_empty(),
            "{} differs from a rebuild: {:#?}",
            verdict.projector,
            verdict.differences
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_projector_process_twenty_times_loses_and_doubles_nothing() {
    let database = TestDatabase::create().await.expect("database");
    let workload = Arc::new(Workload::new(&database).await);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = stream(workload.clone(), stop.clone());
    for _ in 0..20 {
        let child = serve(&database);
        let alive = rand::thread_rng().gen_range(150..700);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        kill(child);
    }
    stop.store(true, Ordering::Relaxed);
    let tickets = writer.await.expect("writer");
    assert!(
        tickets > 20,
        "the writer kept writing while the projector died ({tickets} tickets)"
    );

    let child = serve(&database);
    caught_up(&database).await;
    kill(child);
    assert_read_models_equal_the_log(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_process_takes_over_when_the_leading_one_is_killed() {
    let database = TestDatabase::create().await.expect("database");
    let workload = Arc::new(Workload::new(&database).await);
    for n in 0..10 {
        workload.ticket(n).await;
    }
    let first = serve(&database);
    caught_up(&database).await;
    let second = serve(&database);
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(first);

    for n in 10..20 {
        workload.ticket(n).await;
    }
    caught_up(&database).await;
    kill(second);
    assert_read_models_equal_the_log(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_reports_a_read_model_that_differs_from_the_log() {
    let database = TestDatabase::create().await.expect("database");
    let workload = Workload::new(&database).await;
    workload.ticket(0).await;
    let child = serve(&database);
    caught_up(&database).await;
    kill(child);
    let schema: String = sqlx::query_scalar(
        "select 'rm_board_' || build from projector_builds where projector = 'board' and state = 'live'",
    )
    .fetch_one(&database.pool)
    .await
    .expect("the live board");
    sqlx::query(&format!("update {schema}.cards set title = 'tampered'"))
        .execute(&database.pool)
        .await
        .expect("tampered");
    let board = omoi_projections::all()
        .into_iter()
        .find(|p| p.name() == "board")
        .expect("the board projector");
    let verdict =
        omoi_projections::verify::verify(&database.pool, &database.options, board.as_ref())
            .await
            .expect("verify");
    assert_eq!(verdict.differences.len(), 2, "{:#?}", verdict.differences);
    assert!(verdict
        .differences
        .iter()
        .any(|d| d.contains("only live") && d.contains("tampered")));
    assert!(verdict
        .differences
        .iter()
        .any(|d| d.contains("only rebuilt") && d.contains("ticket 0")));
}
