//! The process managers survive their process being killed at any instant: plans are
//! approved, in-process agents run the work, and the `omoi serve` running the process
//! managers is SIGKILLed and restarted ten times at random moments; in the end every spec
//! completed, every ticket and task of every plan exists once, every task was validated
//! once, and every ticket walked its statuses once, in order.

use std::process::Child;
use std::time::{Duration, Instant};

use omoi_domain::access::Principal;
use omoi_domain::common::Priority;
use omoi_domain::organization::{Organization, OrganizationCommand};
use omoi_domain::project::{Project, ProjectCommand};
use omoi_domain::spec::{Design, Plan, PlannedTask, PlannedTicket, Requirement, Spec, SpecCommand};
use omoi_store::bus::RetryPolicy;
use omoi_store::{Actor, CommandBus, CommandContext};
use omoi_testing::TestDatabase;
use rand::Rng;
use uuid::Uuid;

const SPECS: usize = 12;
const TICKETS: usize = 10;
const TASKS: usize = 5;

fn serve(database: &TestDatabase) -> Child {
    omoi_testing::serve_process(env!("CARGO_BIN_EXE_omoi"), database)
}

/// Ten tickets of five tasks; each task waits for the one before it, and the first task
/// of each ticket for the last of the ticket before.
fn plan() -> Plan {
    let key = |t: usize, k: usize| format!("TSK-{t}-{k}");
    Plan {
        tickets: (0..TICKETS)
            .map(|t| PlannedTicket {
                key: format!("TKT-{t}"),
                title: format!("ticket {t}"),
                description: String::new(),
                priority: Priority::Medium,
                requirement_ids: vec!["REQ-A-1".into()],
                tasks: (0..TASKS)
                    .map(|k| PlannedTask {
                        key: key(t, k),
                        title: format!("task {t}.{k}"),
                        description: String::new(),
                        task_type: "implement".into(),
                        depends_on: match (t, k) {
                            (0, 0) => vec![],
                            (t, 0) => vec![key(t - 1, TASKS - 1)],
                            (t, k) => vec![key(t, k - 1)],
                        },
                        required_capabilities: vec![],
                        estimate: None,
                        requirement_ids: vec![],
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// An organization and a project of its, with the default settings.
async fn organization_and_project(bus: &CommandBus, context: &CommandContext) -> (Uuid, Uuid) {
    let (organization, project) = (Uuid::now_v7(), Uuid::now_v7());
    let now = chrono::Utc::now;
    let create = OrganizationCommand::CreateOrganization {
        organization_id: organization,
        name: "Crash".into(),
        owner: Principal::User(Uuid::now_v7()),
        at: now(),
    };
    bus.execute::<Organization>(&organization.to_string(), create, context)
        .await
        .expect("an organization");
    let create = ProjectCommand::CreateProject {
        project_id: project,
        organization_id: organization,
        name: "Crash".into(),
        description: String::new(),
        settings: Default::default(),
        at: now(),
    };
    bus.execute::<Project>(&project.to_string(), create, context)
        .await
        .expect("a project");
    (organization, project)
}

/// An organization, a project and `SPECS` specs whose plans are approved.
async fn approved_specs(bus: &CommandBus) {
    let context = CommandContext::new(Actor::System("crash-test"), "crash-test");
    let (organization, project) = organization_and_project(bus, &context).await;
    let now = chrono::Utc::now;
    for n in 0..SPECS {
        let spec = Uuid::now_v7();
        let commands = [
            SpecCommand::CreateSpec {
                spec_id: spec,
                organization_id: organization,
                project_id: project,
                title: format!("spec {n}"),
                description: String::new(),
                at: now(),
            },
            SpecCommand::AddRequirement(Requirement {
                id: "REQ-A-1".into(),
                condition: "a user signs in".into(),
                action: "start a session".into(),
                acceptance_criteria: vec!["a cookie is set".into()],
            }),
            SpecCommand::ApproveRequirements { at: now() },
            SpecCommand::SetDesign(Design {
                architecture: "one service".into(),
                data_model: String::new(),
                api_spec: String::new(),
            }),
            SpecCommand::ApproveDesign { at: now() },
            SpecCommand::SetPlan(plan()),
            SpecCommand::ApprovePlan { at: now() },
        ];
        bus.execute_all::<Spec>(&spec.to_string(), &commands, &context, &|_| Ok(()))
            .await
            .expect("an approved spec");
    }
}

/// Creations caused by plan approvals: (events, distinct aggregates) per kind.
async fn created(database: &TestDatabase, kind: &str) -> (i64, i64) {
    sqlx::query_as(
        "select count(*), count(distinct aggregate_id) from events
          where event_type = $1 and metadata->>'actor' = 'system:plan_execution'",
    )
    .bind(kind)
    .fetch_one(&database.pool)
    .await
    .expect("a count")
}

/// Events of `kind` in the log: (count, distinct aggregates).
async fn counted(database: &TestDatabase, kind: &str) -> (i64, i64) {
    sqlx::query_as(
        "select count(*), count(distinct aggregate_id) from events where event_type = $1",
    )
    .bind(kind)
    .fetch_one(&database.pool)
    .await
    .expect("a count")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_plan_runs_to_completion_once_whenever_the_process_was_killed() {
    use omoi_orchestrator::{Work, Worker, WorkerConfig};
    let database = TestDatabase::create().await.expect("a database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    approved_specs(&bus).await;
    // In-process agents (in this test's process, which is not killed) run every task and
    // every validation as soon as it is ready.
    let directory = std::env::temp_dir().join(format!("omoi-crash-{}", Uuid::now_v7()));
    let worker = Worker::start(
        database.pool.clone(),
        WorkerConfig {
            work: Work::Nothing,
            validate: Work::Nothing,
            agents_per_organization: 16,
            project_concurrency: 16,
            organization_concurrency: 16,
            poll_interval_ms: 100,
            check_interval_ms: 200,
            work_dir: directory.join("work"),
            ..WorkerConfig::default()
        },
    );

    let mut rng = rand::thread_rng();
    // Kills that came before the plans were carried out (the effects commit with the
    // checkpoint, so a kill leaves all of a batch or none of it).
    let mut killed_before_done = 0;
    for _ in 0..10 {
        let mut server = serve(&database);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..900))).await;
        server.kill().expect("SIGKILL");
        server.wait().expect("reaped");
        let (tickets, _) = created(&database, "TicketCreated").await;
        assert!(
            tickets <= (SPECS * TICKETS) as i64,
            "more tickets than planned"
        );
        if tickets < (SPECS * TICKETS) as i64 {
            killed_before_done += 1;
        }
    }
    // The last one runs until every spec completed.
    let mut server = serve(&database);
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (completed, _) = counted(&database, "SpecCompleted").await;
        if completed >= SPECS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{completed} of {SPECS} specs completed; tasks completed: {:?}",
            counted(&database, "TaskCompleted").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    worker.stop().await;
    let _ = std::fs::remove_dir_all(&directory);

    // Each planned ticket and task created once; each spec completed once.
    let expected = ((SPECS * TICKETS) as i64, (SPECS * TICKETS * TASKS) as i64);
    let (tickets, tasks) = (
        created(&database, "TicketCreated").await,
        created(&database, "TaskCreated").await,
    );
    assert_eq!((tickets.0, tasks.0), expected);
    assert_eq!((tickets.1, tasks.1), expected, "an aggregate created twice");
    assert_eq!(
        counted(&database, "SpecCompleted").await,
        (SPECS as i64, SPECS as i64)
    );
    // Every task was validated once and completed once; every validation task was made
    // once per submission.
    let plan_tasks = (SPECS * TICKETS * TASKS) as i64;
    assert_eq!(
        counted(&database, "TaskValidationPassed").await,
        (plan_tasks, plan_tasks)
    );
    assert_eq!(
        counted(&database, "TaskValidates").await,
        counted(&database, "TaskSubmittedForValidation").await,
    );
    // Every ticket walked each status once, in order: no move was made twice.
    let walks: Vec<(String, Vec<String>)> = sqlx::query_as(
        "select aggregate_id, array_agg(payload->'TicketStatusChanged'->>'to' order by sequence)
           from events where event_type = 'TicketStatusChanged'
          group by aggregate_id",
    )
    .fetch_all(&database.pool)
    .await
    .expect("the walks");
    assert_eq!(walks.len(), SPECS * TICKETS);
    for (ticket, walk) in walks {
        assert_eq!(
            walk,
            ["analyzing", "building", "building-done", "testing", "done"],
            "{ticket}"
        );
    }
    println!("killed before the plans were carried out: {killed_before_done} times of 10");
}

/// A process manager's effects belong to the batch's transaction: rolled back, nothing
/// stays; committed, everything does; applied again, nothing more. (That the runner
/// announces a committed batch's effects: `tests/e2e/projection_runner.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn effects_commit_or_roll_back_with_the_batch() {
    use omoi_store::log::{read_global, Visibility};
    use omoi_store::Cursor;
    use sqlx::Connection;

    let database = TestDatabase::create().await.expect("a database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    approved_specs(&bus).await;
    // The gapless stream shows an event once every older transaction of the cluster has
    // ended (other tests' included): read until all the approvals are visible.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = read_global(
            &database.pool,
            Cursor::default(),
            10_000,
            &Visibility::Everything,
        )
        .await
        .expect("the log");
        let approvals = page
            .events
            .iter()
            .filter(|e| e.event_type == "SpecPlanApproved")
            .count();
        if approvals == SPECS {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {approvals} approvals visible"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let execution = omoi_workflow::run(omoi_workflow::execution::PlanExecution);
    let mut conn = database.pool.acquire().await.expect("a connection");

    let mut tx = conn.begin().await.expect("a transaction");
    execution
        .apply(&mut tx, "unused", &page.events)
        .await
        .expect("applied");
    tx.rollback().await.expect("rolled back");
    assert_eq!(
        created(&database, "TicketCreated").await.0,
        0,
        "nothing stays"
    );

    let mut tx = conn.begin().await.expect("a transaction");
    execution
        .apply(&mut tx, "unused", &page.events)
        .await
        .expect("applied");
    tx.commit().await.expect("committed");
    assert_eq!(
        created(&database, "TicketCreated").await.0,
        (SPECS * TICKETS) as i64
    );

    // Applied again: nothing to create.
    let log = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("select count(*) from events")
            .fetch_one(&pool)
            .await
            .expect("the log")
    };
    let before = log(database.pool.clone()).await;
    let mut tx = conn.begin().await.expect("a transaction");
    execution
        .apply(&mut tx, "unused", &page.events)
        .await
        .expect("applied");
    tx.commit().await.expect("committed");
    assert_eq!(log(database.pool.clone()).await, before, "nothing appended");
}

/// `ticket_progress` keeps its rows and tallies between batches. Another process leading
/// the build between two leaderships of this one changed the table behind it: its next
/// leadership must not answer from what it kept. Here what it kept says the ticket still
/// has an open task which the other leader saw complete; answered from that, the ticket
/// would never reach `done`.
#[tokio::test(flavor = "multi_thread")]
async fn ticket_progress_forgets_what_it_kept_when_another_leader_came_between() {
    use omoi_domain::ticket::{Ticket, TicketCommand, TicketStatus};
    use omoi_projections::catalog::{self, BuildState};
    use omoi_workflow::progress::TicketProgress;
    use sqlx::{Connection, PgConnection};

    let database = TestDatabase::create().await.expect("a database");
    let scene = Scene::new(&database).await;
    let (bus, ticket) = (&scene.bus, scene.ticket);
    let create = TicketCommand::CreateTicket {
        ticket_id: ticket,
        organization_id: scene.organization,
        project_id: scene.project,
        spec_id: None,
        title: "Three tasks".into(),
        description: String::new(),
        priority: Priority::Medium,
        phase: Default::default(),
        plan_key: None,
    };
    bus.execute::<Ticket>(&ticket.to_string(), create, &scene.context)
        .await
        .expect("a ticket");
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(scene.task(None).await);
    }
    let one = omoi_workflow::run(TicketProgress::default());
    let other = omoi_workflow::run(TicketProgress::default());
    let mut conn = PgConnection::connect_with(&database.options)
        .await
        .expect("a connection");
    let build = catalog::create_build(&mut conn, one.as_ref(), BuildState::Building)
        .await
        .expect("a build");
    let status = || {
        let bus = &bus;
        async move {
            let (ticket, _) = bus
                .load::<Ticket>(&ticket.to_string())
                .await
                .expect("the ticket")
                .expect("it exists");
            ticket.status
        }
    };

    scene.run(tasks[0], true).await;
    lead(&database, build.build, one.as_ref()).await;
    assert_eq!(status().await, TicketStatus::Building);
    scene.run(tasks[1], true).await;
    lead(&database, build.build, other.as_ref()).await;
    assert_eq!(status().await, TicketStatus::Building, "one task is open");
    scene.run(tasks[2], true).await;
    lead(&database, build.build, one.as_ref()).await;
    assert_eq!(status().await, TicketStatus::Done, "every task completed");
}

/// What `discovery_resolution` keeps of its table (the open blocking discoveries) lets it
/// pass by, without a transaction, the ends of tasks that block nothing. Another process
/// leading the build between two leaderships of this one changed the table behind it: its
/// next leadership must not pass by from what it kept. Here what it kept is an empty table,
/// and the other leader added a discovery that blocks its parent; passed by, the
/// discovery's completion would never release the parent.
#[tokio::test(flavor = "multi_thread")]
async fn discovery_resolution_forgets_what_it_kept_when_another_leader_came_between() {
    use omoi_domain::task::{Discovery, DiscoveryKind, Task, TaskCommand};
    use omoi_projections::catalog::{self, BuildState};
    use omoi_workflow::discovery::DiscoveryResolution;
    use sqlx::{Connection, PgConnection};

    let database = TestDatabase::create().await.expect("a database");
    let scene = Scene::new(&database).await;
    let one = omoi_workflow::run(DiscoveryResolution::default());
    let other = omoi_workflow::run(DiscoveryResolution::default());
    let mut conn = PgConnection::connect_with(&database.options)
        .await
        .expect("a connection");
    // Live: only a live build passes pages by.
    let build = catalog::create_build(&mut conn, one.as_ref(), BuildState::Live)
        .await
        .expect("a build");

    // `one` reads its table (empty) at the first end of a task, and keeps it.
    let parent = scene.task(None).await;
    scene.run(parent, false).await;
    let unrelated = scene.task(None).await;
    scene.run(unrelated, true).await;
    lead(&database, build.build, one.as_ref()).await;

    // The running parent's agent finds work that blocks it; `other` records it.
    let discovery = Discovery {
        parent_task_id: parent,
        kind: DiscoveryKind::Bug,
        discovered_by: None,
        blocks_parent: true,
    };
    let discovered = scene.task(Some(discovery)).await;
    let report = TaskCommand::ReportDiscovery {
        discovered_task_id: discovered,
        kind: DiscoveryKind::Bug,
        blocks_parent: true,
    };
    scene
        .bus
        .execute::<Task>(&parent.to_string(), report, &scene.context)
        .await
        .expect("the discovery reported on its parent");
    lead(&database, build.build, other.as_ref()).await;

    scene.run(discovered, true).await;
    lead(&database, build.build, one.as_ref()).await;
    let (parent, _) = scene
        .bus
        .load::<Task>(&parent.to_string())
        .await
        .expect("the parent")
        .expect("it exists");
    assert!(
        parent.open_discoveries.is_empty(),
        "the discovery completed, so it no longer holds its parent: {:?}",
        parent.open_discoveries
    );
}

/// An organization's project and a ticket of it, whose tasks the leadership tests create
/// and walk through the bus.
struct Scene {
    bus: CommandBus,
    context: CommandContext,
    organization: Uuid,
    project: Uuid,
    ticket: Uuid,
}

impl Scene {
    async fn new(database: &TestDatabase) -> Self {
        let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
        let context = CommandContext::new(Actor::System("leaders-test"), "leaders-test");
        let (organization, project) = organization_and_project(&bus, &context).await;
        Self {
            bus,
            context,
            organization,
            project,
            ticket: Uuid::now_v7(),
        }
    }

    /// A new task of the ticket (a discovery, if one is given).
    async fn task(&self, discovery: Option<omoi_domain::task::Discovery>) -> Uuid {
        use omoi_domain::task::{Task, TaskCommand};
        let task = Uuid::now_v7();
        let create = TaskCommand::CreateTask {
            task_id: task,
            organization_id: self.organization,
            project_id: self.project,
            ticket_id: self.ticket,
            title: format!("task {task}"),
            description: String::new(),
            task_type: "implement".into(),
            phase: Default::default(),
            priority: Default::default(),
            depends_on: vec![],
            required_capabilities: vec![],
            max_retries: None,
            timeout_seconds: None,
            discovery,
            validation: None,
            validates: None,
            plan_key: None,
            at: chrono::Utc::now(),
        };
        self.bus
            .execute::<Task>(&task.to_string(), create, &self.context)
            .await
            .expect("a task");
        task
    }

    /// `task` assigned and started, and completed if `complete`.
    async fn run(&self, task: Uuid, complete: bool) {
        use omoi_domain::task::{Task, TaskCommand};
        let now = chrono::Utc::now;
        let mut commands = vec![
            TaskCommand::AssignTask {
                agent_id: Uuid::now_v7(),
                at: now(),
            },
            TaskCommand::StartTask { at: now() },
        ];
        if complete {
            commands.push(TaskCommand::CompleteTask {
                result: serde_json::json!({}),
                at: now(),
            });
        }
        for command in commands {
            self.bus
                .execute::<Task>(&task.to_string(), command, &self.context)
                .await
                .expect("a step of the task");
        }
    }
}

/// One leadership of `projector` over `build` (a reading of its own), stepped until it
/// has nothing left, every event of the log visible (no older transaction of the cluster
/// running).
async fn lead(database: &TestDatabase, build: i64, projector: &dyn omoi_projections::Projector) {
    use omoi_projections::runner::{step, Reading, RunnerStats, Step};
    use sqlx::{Connection, PgConnection};

    let mut conn = PgConnection::connect_with(&database.options)
        .await
        .expect("a connection");
    let (stats, mut reading) = (RunnerStats::default(), Reading::default());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the build never caught up");
        let visible: bool = sqlx::query_scalar(
            "select pg_snapshot_xmin(pg_current_snapshot()) > max(transaction_id) from events",
        )
        .fetch_one(&database.pool)
        .await
        .expect("the horizon");
        if !visible {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let stepped = step(
            &database.pool,
            &mut conn,
            projector,
            build,
            100,
            &stats,
            &mut reading,
        )
        .await
        .expect("a step");
        if matches!(stepped, Step::Idle) {
            return;
        }
    }
}
