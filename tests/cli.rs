//! The command line against a real database: `omoi history` shows any aggregate the log
//! holds, by the noun people use for it.

use std::process::Command;

use chrono::Utc;
use omoi_domain::billing::{BillingAccount, BillingCommand};
use omoi_store::bus::RetryPolicy;
use omoi_store::{Actor, CommandBus, CommandContext};
use omoi_testing::TestDatabase;
use serde_json::Value;
use uuid::Uuid;

fn history(database: &TestDatabase, noun: &str, id: Uuid) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_omoi"))
        .args(["history", noun, &id.to_string(), "--json"])
        .env("DATABASE_URL", &database.url)
        .env("OMOI_ENV", "test")
        .env("OMOI_LOG", "error")
        .output()
        .expect("omoi history runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn history_shows_a_billing_account_as_a_billing_account() {
    let database = TestDatabase::create().await.expect("a database");
    let bus = CommandBus::new(database.pool.clone(), RetryPolicy::default());
    let organization = Uuid::now_v7();
    let command = BillingCommand::StartWorkflow {
        organization_id: organization,
        spec_id: Uuid::now_v7(),
        quota: Some(5),
        price_cents: 0,
        at: Utc::now(),
    };
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
