//! The OpenAPI document is exact: Schemathesis (pinned in scripts/schemathesis) runs every
//! check in all four phases — examples, coverage, fuzzing, stateful — against a live
//! server and must find no failure and no server error.
//!
//! A fuzzer that only ever sends random ids tests little beyond the 404s, so the server
//! holds one of each resource and the run draws ids from them most of the time
//! (Schemathesis dictionaries): the commands act on a real organization, project, spec,
//! ticket, tasks and agent. Credentials are owner API keys minted by the hooks
//! (scripts/schemathesis/hooks.py), so that the fuzzer may revoke the key it holds.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use omoi_api::billing::BillingConfig;
use omoi_billing::stripe::StripeApi;
use omoi_testing::{fake_stripe, spawn_app_with_billing, TestApp};
use reqwest::StatusCode;
use serde_json::json;

/// Installs the pinned Schemathesis (once per target directory) and returns its `st`.
fn schemathesis() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(root.join("scripts/schemathesis/install"))
        .output()
        .expect("scripts/schemathesis/install runs");
    assert!(
        output.status.success(),
        "installing Schemathesis failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("a path")
        .trim()
        .to_string()
}

/// One of each resource, to aim the fuzzer at.
struct Targets {
    organization: String,
    project: String,
    spec: String,
    ticket: String,
    tasks: [String; 2],
    agent: String,
}

async fn targets(app: &TestApp) -> Targets {
    let (organization, project) = app.organization_and_project().await;
    let spec = app
        .create(
            "/api/v1/specs",
            json!({"project_id": project, "title": "Sign-in"}),
        )
        .await;
    app.must(
        &format!("/api/v1/specs/{spec}/requirements"),
        json!({"id": "REQ-AUTH-001", "condition": "WHEN a user signs in",
               "action": "THE SYSTEM SHALL issue a token pair",
               "acceptance_criteria": ["both tokens work"]}),
        StatusCode::OK,
    )
    .await;
    let ticket = app.ticket(&project, "Login page").await;
    let first = app.task(&ticket, "Form", json!({})).await;
    let second = app.task(&ticket, "Validation", json!({})).await;
    app.must(
        &format!("/api/v1/tasks/{second}/dependencies"),
        json!({"depends_on": first}),
        StatusCode::OK,
    )
    .await;
    let agent = app
        .create(
            "/api/v1/agents/register",
            json!({"organization_id": organization, "agent_type": "worker",
                   "capabilities": ["rust"]}),
        )
        .await;
    Targets {
        organization,
        project,
        spec,
        ticket,
        tasks: [first, second],
        agent,
    }
}

/// The project's settings plus what this server holds: a dictionary per kind of resource
/// and, per group of routes, which parameters draw from which dictionary.
fn config(targets: &Targets) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = std::fs::read_to_string(root.join("scripts/schemathesis/schemathesis.toml"))
        .expect("the settings");
    let dictionaries = [
        ("organizations", vec![&targets.organization]),
        ("projects", vec![&targets.project]),
        ("specs", vec![&targets.spec]),
        ("tickets", vec![&targets.ticket]),
        ("tasks", targets.tasks.iter().collect()),
        ("agents", vec![&targets.agent]),
    ];
    for (name, ids) in dictionaries {
        let values: Vec<String> = ids.iter().map(|id| format!("{id:?}")).collect();
        let _ = write!(
            config,
            "\n[dictionaries.{name}]\nvalues = [{}]\n",
            values.join(", ")
        );
    }
    // Most cases aim at a real resource; the rest keep exploring.
    let bind = |dictionary: &str| format!("{{ dictionary = {dictionary:?}, probability = 0.8 }}");
    // A claim waits up to a minute for work when none is ready: the hooks send the
    // fuzzer's claims with no wait, in every phase (scripts/schemathesis/hooks.py).
    let _ = write!(
        config,
        "\n[[operations]]\ninclude-path-regex = \"/claim$\"\nparameters = {{ \"path.id\" = {} }}\n",
        bind("agents")
    );
    let routes = [
        ("^/api/v1/organizations/", "path.id", "organizations"),
        ("^/api/v1/projects/", "path.id", "projects"),
        ("^/api/v1/specs/", "path.id", "specs"),
        ("^/api/v1/tickets/", "path.id", "tickets"),
        ("^/api/v1/tasks/", "path.id", "tasks"),
        ("^/api/v1/tasks/", "path.dep", "tasks"),
        ("^/api/v1/agents/", "path.id", "agents"),
        (
            "^/api/v1/graph/dependency-graph/project/",
            "path.id",
            "projects",
        ),
        (
            "^/api/v1/graph/dependency-graph/ticket/",
            "path.id",
            "tickets",
        ),
        ("^/api/v1/graph/dependency-graph/task/", "path.id", "tasks"),
    ];
    for (path, parameter, dictionary) in routes {
        let _ = write!(
            config,
            "\n[[operations]]\ninclude-path-regex = {path:?}\nparameters = {{ {parameter:?} = {} }}\n",
            bind(dictionary)
        );
    }
    // Bodies and queries name their organization, project, ticket or task by field.
    let _ = write!(
        config,
        "\n[parameters]\n\"body.organization_id\" = {}\n\"query.organization_id\" = {}\n\
         \"body.project_id\" = {}\n\"query.project_id\" = {}\n\"body.ticket_id\" = {}\n\
         \"body.spec_id\" = {}\n\"body.depends_on\" = {}\n\"query.entity_id\" = {}\n",
        bind("organizations"),
        bind("organizations"),
        bind("projects"),
        bind("projects"),
        bind("tickets"),
        bind("specs"),
        bind("tasks"),
        bind("tickets"),
    );
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure_in_any_phase() {
    let st = schemathesis();
    let (stripe, _) = fake_stripe().await;
    let app = spawn_app_with_billing(BillingConfig {
        stripe: StripeApi {
            base_url: stripe,
            secret_key: "sk_test_fuzz".into(),
            ..BillingConfig::default().stripe
        },
        webhook_secrets: vec!["whsec_fuzz".into()],
        ..BillingConfig::default()
    })
    .await;
    let targets = targets(&app).await;
    let before = events_per_target(&app, &targets).await;
    let settings =
        std::env::temp_dir().join(format!("omoi-schemathesis-{}.toml", app.database.name));
    std::fs::write(&settings, config(&targets)).expect("the settings file");

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking({
        let address = app.address.clone();
        let token = app.token.clone().expect("the owner's access token");
        let organization = targets.organization.clone();
        let settings = settings.clone();
        move || {
            Command::new(st)
                .current_dir(root)
                .arg("--config-file")
                .arg(&settings)
                .args(["--no-color", "run"])
                .arg(format!("{address}/openapi.json"))
                .env("OMOI_FUZZ_BASE_URL", &address)
                .env("OMOI_FUZZ_ACCESS_TOKEN", token)
                .env("OMOI_FUZZ_ORGANIZATION_ID", organization)
                .output()
                .expect("Schemathesis runs")
        }
    })
    .await
    .expect("the run ends");
    let _ = std::fs::remove_file(&settings);
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    assert!(
        output.status.success(),
        "Schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The run reached the server's logic, not only its refusals: commands were applied
    // to each of the targets, beyond the events their setup wrote.
    let after = events_per_target(&app, &targets).await;
    for ((target, before), (_, after)) in before.iter().zip(&after) {
        assert!(
            after > before,
            "no command of the run was applied to the {target} ({before} events before, {after} after)"
        );
    }
}

/// How many events the spec, the ticket and the first task have.
async fn events_per_target(app: &TestApp, targets: &Targets) -> Vec<(&'static str, i64)> {
    let mut counts = Vec::new();
    for (name, id) in [
        ("spec", &targets.spec),
        ("ticket", &targets.ticket),
        ("first task", &targets.tasks[0]),
    ] {
        let count: i64 = sqlx::query_scalar("select count(*) from events where aggregate_id = $1")
            .bind(id)
            .fetch_one(&app.database.pool)
            .await
            .expect("a count");
        counts.push((name, count));
    }
    counts
}
