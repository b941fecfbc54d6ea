//! The process managers survive their process being killed at any instant: plans are
//! approved, then the `omoi serve` running the process managers is SIGKILLed and restarted
//! ten times at random moments, and in the end every ticket and task of every plan exists,
//! once.

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

/// An organization, a project and `SPECS` specs whose plans are approved.
async fn approved_specs(bus: &CommandBus) {
    let context = CommandContext::new(Actor::System("crash-test"), "crash-test");
    let (organization, project) = (Uuid::now_v7(), Uuid::now_v7());
    let now = chrono::Utc::now;
    let create = OrganizationCommand::CreateOrganization {
        organization_id: organization,
        name: "Crash".into(),
        owner: Principal::User(Uuid::now_v7()),
        at: now(),
    };
    bus.execute::<Organization>(&organization.to_string(), create, &context)
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
    bus.execute::<Project>(&project.to_string(), create, &context)
        .await
        .expect("a project");
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

#[tokio::test(flavor = "multi_thread")]
async fn every_planned_ticket_and_task_exists_once_whenever_the_process_was_killed() {
    let database = TestDatabase::create().await.expect("a database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    approved_specs(&bus).await;

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
    // The last one runs until the plans are carried out.
    let mut server = serve(&database);
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = ((SPECS * TICKETS) as i64, (SPECS * TICKETS * TASKS) as i64);
    loop {
        let tickets = created(&database, "TicketCreated").await;
        let tasks = created(&database, "TaskCreated").await;
        if (tickets.0, tasks.0) == expected {
            // Each aggregate created once: as many distinct ids as creations.
            assert_eq!((tickets.1, tasks.1), expected);
            break;
        }
        assert!(
            tickets.0 <= expected.0 && tasks.0 <= expected.1,
            "more created than planned: {tickets:?} {tasks:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the plans were not carried out: {tickets:?} {tasks:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.kill().expect("SIGKILL");
    server.wait().expect("reaped");
    println!("killed before the plans were carried out: {killed_before_done} times of 10");
}

/// A process manager's effects belong to the batch's transaction: rolled back, nothing
/// stays; committed, everything does — and the runner is told to announce them.
#[tokio::test(flavor = "multi_thread")]
async fn effects_commit_or_roll_back_with_the_batch_and_are_announced() {
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
    assert!(execution.take_appended(), "effects are reported");
    assert!(!execution.take_appended(), "reading clears it");
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
    assert!(execution.take_appended());
    assert_eq!(
        created(&database, "TicketCreated").await.0,
        (SPECS * TICKETS) as i64
    );

    // Applied again: nothing to create, nothing to announce.
    let mut tx = conn.begin().await.expect("a transaction");
    execution
        .apply(&mut tx, "unused", &page.events)
        .await
        .expect("applied");
    tx.commit().await.expect("committed");
    assert!(!execution.take_appended());
}
