//! The command line against a real database: `omoi history` shows any aggregate the log
//! holds, by the noun people use for it.

use std::process::Command;

use chrono::Utc;
use omoi_domain::billing::{BillingAccount, BillingCommand, Plans};
use omoi_store::bus::RetryPolicy;
use omoi_store::{Actor, CommandBus, CommandContext};
use omoi_testing::TestDatabase;
use serde_json::Value;
use uuid::Uuid;

fn history(database: &TestDatabase, noun: &str, id: Uuid) -> std::process::Output {
    history_with(database, &[noun, &id.to_string()])
}

fn history_with(database: &TestDatabase, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_omoi"))
        .arg("history")
        .args(args)
        .arg("--json")
        .env("DATABASE_URL", &database.url)
        .env("OMOI_ENV", "test")
        .env("OMOI_LOG", "error")
        .output()
        .expect("omoi history runs")
}

/// A workflow's count, against `quota` workflows a month on every tier.
fn start_workflow(organization: Uuid, quota: Option<u32>) -> BillingCommand {
    let mut plans = Plans::default();
    for plan in &mut plans.plans {
        plan.monthly_workflows = quota;
    }
    BillingCommand::StartWorkflow {
        organization_id: organization,
        spec_id: Uuid::now_v7(),
        plans,
        at: Utc::now(),
    }
}

/// Counts `count` workflows (no quota) on `organization`'s billing account, through the
/// command bus.
async fn count_workflows(database: &TestDatabase, organization: Uuid, count: usize) {
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let context = CommandContext::new(Actor::System("test"), "cli");
    for _ in 0..count {
        bus.execute::<BillingAccount>(
            &organization.to_string(),
            start_workflow(organization, None),
            &context,
        )
        .await
        .expect("a workflow counted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn history_shows_a_billing_account_as_a_billing_account() {
    let database = TestDatabase::create().await.expect("a database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let organization = Uuid::now_v7();
    let command = start_workflow(organization, Some(5));
    let context = CommandContext::new(Actor::System("test"), "cli");
    bus.execute::<BillingAccount>(&organization.to_string(), command, &context)
        .await
        .expect("a workflow counted");

    let output = history(&database, "billing_account", organization);
    assert!(output.status.success(), "{output:?}");
    let shown: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        shown["events"][0]["event_type"], "WorkflowStarted",
        "{shown}"
    );
    assert_eq!(
        shown["state"]["organization_id"],
        organization.to_string(),
        "folded as a billing account: {shown}"
    );

    let output = history(&database, "invoice", organization);
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("billing_account"),
        "names what is accepted: {said}"
    );
}

/// A history longer than the command's page (1,000 events) is printed whole, in order,
/// and folded across the pages, up to `--as-of` too.
#[tokio::test(flavor = "multi_thread")]
async fn history_prints_and_folds_a_history_of_several_pages() {
    let database = TestDatabase::create().await.expect("a database");
    let organization = Uuid::now_v7();
    count_workflows(&database, organization, 1_001).await;
    let id = organization.to_string();

    let output = history_with(&database, &["billing_account", &id]);
    assert!(output.status.success(), "{output:?}");
    let shown: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    let sequences: Vec<i64> = shown["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["sequence"].as_i64().expect("a sequence"))
        .collect();
    assert_eq!(sequences, (1..=1_001).collect::<Vec<_>>());
    assert_eq!(shown["state"]["workflows_used"], 1_001);

    let output = history_with(&database, &["billing_account", &id, "--as-of", "1000"]);
    assert!(output.status.success(), "{output:?}");
    let shown: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(shown["events"].as_array().map(Vec::len), Some(1_001));
    assert_eq!(shown["state"]["workflows_used"], 1_000);
}

/// The tools never migrate: a newer binary's `omoi history` or `omoi projections status`
/// run against a database its servers have not been upgraded for leaves the database's
/// migrations as they were (here: the newest one taken back, as if not yet applied).
#[tokio::test(flavor = "multi_thread")]
async fn the_tools_leave_the_databases_migrations_alone() {
    let database = TestDatabase::create().await.expect("a database");
    let newest: i64 =
        sqlx::query_scalar("delete from _sqlx_migrations where version = (select max(version) from _sqlx_migrations) returning version")
            .fetch_one(&database.pool)
            .await
            .expect("the newest migration taken back");
    let applied = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from _sqlx_migrations where version = $1")
            .bind(newest)
            .fetch_one(&database.pool)
            .await
            .expect("counted")
    };
    let organization = Uuid::now_v7();
    count_workflows(&database, organization, 1).await;
    let output = history(&database, "billing_account", organization);
    assert!(output.status.success(), "{output:?}");
    let output = Command::new(env!("CARGO_BIN_EXE_omoi"))
        .args(["projections", "status"])
        .env("DATABASE_URL", &database.url)
        .env("OMOI_ENV", "test")
        .env("OMOI_LOG", "error")
        .output()
        .expect("omoi projections status runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(applied().await, 0, "a tool applied migration {newest}");
}
