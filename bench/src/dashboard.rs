//! `omoi-bench bench-dashboard`: the first load of a board of `--cards` cards in a real
//! headless Chromium (the one the browser tests use), against a server in this process
//! on a fresh database.
//!
//! Printed: the JavaScript the app ships (raw and gzip -9, every module together); then,
//! for a cold load (a fresh browser profile: every module fetched) and `--runs` reloads
//! (modules from the cache, as their addresses are immutable), the time from navigation
//! to the first contentful paint and to "live" — the board's WebSocket snapshot drawn
//! (the `omoi:board-live` mark of board.js). A reload signs in again from the refresh
//! cookie, as a person's does. Targets: live ≤ 1 s, ≤ 200 KiB of JavaScript (gzip).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use omoi_testing::browser::{screenshot_dir, Browser};
use omoi_testing::{spawn_app_on, TestDatabase, TEST_PASSWORD};

use crate::setup::load_average;
use crate::stats::median;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cards on the board (tickets, a fifth of them in `analyzing`).
    #[arg(long, default_value_t = 500)]
    pub cards: usize,
    /// Warm reloads timed after the cold load.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

const LIVE_TARGET_MS: f64 = 1_000.0;
const JS_TARGET_KIB: f64 = 200.0;

pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.cards > 0 && args.runs > 0,
        "--cards and --runs must be positive"
    );
    let (raw, gzipped) = shipped_javascript()?;
    println!(
        "dashboard: JavaScript shipped {:.1} KiB raw, {:.1} KiB gzip -9 (target ≤ {JS_TARGET_KIB} KiB)",
        raw as f64 / 1024.0,
        gzipped as f64 / 1024.0
    );

    let admin_url = crate::setup::admin_url().await?;
    let database = TestDatabase::create_on(&admin_url).await?;
    let mut app = spawn_app_on(database).await;
    let email = "bench@example.com";
    app.token = Some(app.register_and_login(email).await);
    let (_, project) = app.organization_and_project().await;
    for index in 0..args.cards {
        let (status, ticket) = app
            .post(
                "/api/v1/tickets",
                json!({"project_id": project, "title": format!("Ticket {index:04}")}),
            )
            .await;
        anyhow::ensure!(status == StatusCode::CREATED, "creating a ticket: {ticket}");
        if index % 5 == 0 {
            let (status, moved) = app
                .post(
                    "/api/v1/board/move",
                    json!({"ticket_id": ticket["id"], "to": "analyzing", "force": true}),
                )
                .await;
            anyhow::ensure!(status == StatusCode::OK, "moving a ticket: {moved}");
        }
    }
    app.caught_up().await;
    println!(
        "dashboard: a board of {} cards (load average {})",
        args.cards,
        load_average()
    );

    let browser = Browser::start().await?;
    browser.goto(&app.url("/signin")).await?;
    browser
        .sign_in(email, TEST_PASSWORD, Duration::from_secs(30))
        .await?;

    let board = app.url(&format!("/p/{project}/board"));
    let mut paints = Vec::new();
    let mut lives = Vec::new();
    for run in 0..=args.runs {
        browser.goto(&board).await?;
        browser
            .wait_for(
                &format!(
                    "performance.getEntriesByName('omoi:board-live').length && \
                     document.querySelectorAll('[data-ticket-id]').length === {}",
                    args.cards
                ),
                Duration::from_secs(60),
            )
            .await?;
        let timing: Value = browser
            .execute(
                "return {paint: performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null, \
                         live: performance.getEntriesByName('omoi:board-live')[0].startTime};",
                vec![],
            )
            .await?;
        let paint = timing["paint"].as_f64().unwrap_or(f64::NAN);
        let live = timing["live"].as_f64().unwrap_or(f64::NAN);
        if run == 0 {
            println!("  cold load: first paint {paint:.0} ms, live {live:.0} ms");
            browser
                .screenshot(&screenshot_dir().join("bench-board-500.png"))
                .await?;
        } else {
            paints.push(paint);
            lives.push(live);
        }
    }
    let live = median(&lives);
    println!(
        "  reloads (median of {}): first paint {:.0} ms, live {live:.0} ms (target ≤ {LIVE_TARGET_MS} ms: {})",
        args.runs,
        median(&paints),
        if live <= LIVE_TARGET_MS { "met" } else { "not met" }
    );
    println!("  every reload's live: {lives:.0?} ms");
    browser.quit().await;
    app.stop().await;
    Ok(())
}

/// Every module's bytes, and gzip -9 of each (the machine's `gzip`) summed.
fn shipped_javascript() -> anyhow::Result<(usize, usize)> {
    let mut raw = 0;
    let mut gzipped = 0;
    for name in omoi_web::app_modules() {
        let asset = omoi_web::asset(name).ok_or_else(|| anyhow::anyhow!("{name} vanished"))?;
        raw += asset.bytes.len();
        gzipped += gzip_size(asset.bytes)?;
    }
    Ok((raw, gzipped))
}

fn gzip_size(bytes: &[u8]) -> anyhow::Result<usize> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-9c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("gzip's stdin"))?
        .write_all(bytes)?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(output.status.success(), "gzip failed");
    Ok(output.stdout.len())
}
