//! The dashboard end to end, in a real headless Chromium driven over WebDriver, against a
//! real server and PostgreSQL: sign-in, the project switcher, the live board with drag and
//! drop and the WIP refusal, the graph, the timeline, the task drawer's replay, the command
//! palette, and the socket's recovery after a server restart. Every test leaves
//! screenshots under `target/screenshots/` (and one named `failed-…` where it stopped).

use std::time::Instant;

use omoi_api::live::LiveConfig;
use omoi_testing::browser::{screenshot_dir, Browser, PATIENCE};
use omoi_testing::{id_of, spawn_app, spawn_app_with, test_live_config, TestApp, TEST_PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// WebDriver's codes of the keys the tests press.
const CONTROL: &str = "\u{E009}";
const ALT: &str = "\u{E00A}";
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";
const ARROW_RIGHT: &str = "\u{E014}";

async fn shot(browser: &Browser, name: &str) {
    let path = screenshot_dir().join(format!("{name}.png"));
    browser.screenshot(&path).await.expect("a screenshot");
}

/// Waits for `condition` (a JavaScript expression); on a timeout, a screenshot named
/// `failed-<name>` is kept and the test fails saying what it waited for.
async fn expect(browser: &Browser, name: &str, condition: &str) {
    if let Err(error) = browser.wait_for(condition, PATIENCE).await {
        shot(browser, &format!("failed-{name}")).await;
        panic!("{name}: {error:#}");
    }
}

/// The page's socket is open and subscribed (its connection indicator says so).
const CONNECTION_LIVE: &str = "document.getElementById('connection')?.dataset.state === 'live'";

fn card_in(column: &str, ticket: &str) -> String {
    format!("document.querySelector('[data-column=\"{column}\"] [data-ticket-id=\"{ticket}\"]')")
}

async fn move_over_http(app: &TestApp, ticket: &str, to: &str) {
    app.must(
        "/api/v1/board/move",
        json!({"ticket_id": ticket, "to": to}),
        StatusCode::OK,
    )
    .await;
}

async fn task_action(app: &TestApp, task: &str, action: &str, body: Value) {
    app.must(
        &format!("/api/v1/tasks/{task}/{action}"),
        body,
        StatusCode::OK,
    )
    .await;
}

/// A browser signed in as the test owner, showing `path`.
async fn signed_in(app: &TestApp, path: &str) -> anyhow::Result<Browser> {
    let browser = Browser::start().await?;
    browser.goto(&app.url(path)).await?;
    if let Err(error) = browser
        .sign_in("owner@example.com", TEST_PASSWORD, PATIENCE)
        .await
    {
        shot(&browser, "failed-signed-in").await;
        return Err(error);
    }
    Ok(browser)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_sees_the_board_in_its_columns_and_switches_project() -> anyhow::Result<()>
{
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let login = app.ticket(&project, "Login page").await;
    let signup = app.ticket(&project, "Signup").await;
    move_over_http(&app, &signup, "analyzing").await;
    let other = id_of(
        &app.must(
            "/api/v1/projects",
            json!({"organization_id": organization, "name": "Docs"}),
            StatusCode::CREATED,
        )
        .await,
    );
    let guide = app.ticket(&other, "User guide").await;

    let browser = Browser::start().await.expect("a headless Chromium");
    // The shared address of a board, before signing in: sign-in comes first, then the board.
    browser
        .goto(&app.url(&format!("/p/{project}/board")))
        .await?;
    let email = browser.find("input[name=email]").await?;
    browser.type_into(&email, "owner@example.com").await?;
    let password = browser.find("input[name=password]").await?;
    browser.type_into(&password, "not-the-password").await?;
    let submit = "form.signin button[type=submit]";
    browser.click_css(submit).await?;
    expect(
        &browser,
        "wrong-password-refused",
        "document.querySelector('.form-error:not([hidden])')?.textContent.includes('wrong email or password')",
    )
    .await;
    shot(&browser, "signin-refused").await;
    browser.clear(&password).await?;
    browser.type_into(&password, TEST_PASSWORD).await?;
    browser.click_css(submit).await?;

    expect(&browser, "board-backlog", &card_in("backlog", &login)).await;
    expect(&browser, "board-analyzing", &card_in("analyzing", &signup)).await;
    assert!(browser
        .current_url()
        .await?
        .ends_with(&format!("/p/{project}/board")));
    expect(&browser, "connection-live", CONNECTION_LIVE).await;
    shot(&browser, "board").await;
    // Screen readers hear the connection's state and the notices, not every card that
    // changes: the only live regions are those.
    let live_regions = browser
        .execute(
            "return [...document.querySelectorAll('[aria-live], [role=status], [role=alert]')]
                      .map(e => e.id || e.className);",
            vec![],
        )
        .await?;
    assert_eq!(
        live_regions,
        json!(["connection", "toasts"]),
        "{live_regions}"
    );

    // A reload keeps the session (the refresh cookie) and the address.
    browser
        .goto(&app.url(&format!("/p/{project}/board")))
        .await?;
    expect(&browser, "reloaded", &card_in("analyzing", &signup)).await;

    browser
        .click_css(&format!("#project-switcher option[value=\"{other}\"]"))
        .await?;
    expect(&browser, "switched", &card_in("backlog", &guide)).await;
    assert!(browser
        .current_url()
        .await?
        .ends_with(&format!("/p/{other}/board")));
    let stale = browser
        .execute(
            &format!("return Boolean({});", card_in("backlog", &login)),
            vec![],
        )
        .await?;
    assert_eq!(
        stale,
        Value::Bool(false),
        "the other project's cards are gone"
    );
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cards_move_live_by_drag_and_drop_and_a_move_past_the_wip_limit_is_offered_with_force(
) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let mut tickets = Vec::new();
    for title in ["Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot"] {
        tickets.push(app.ticket(&project, title).await);
    }
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "board", &card_in("backlog", &tickets[0])).await;

    // Another client moves a card: it changes column without a reload.
    let moved_at = Instant::now();
    move_over_http(&app, &tickets[0], "analyzing").await;
    expect(&browser, "live-move", &card_in("analyzing", &tickets[0])).await;
    println!(
        "a move over HTTP appeared on the board after {:?}",
        moved_at.elapsed()
    );

    // Dragging a card moves it, and the server's board agrees.
    let card = browser
        .find(&format!("[data-ticket-id=\"{}\"]", tickets[1]))
        .await?;
    let column = browser.find("[data-column=\"analyzing\"]").await?;
    browser.drag(&card, &column).await?;
    expect(&browser, "dragged", &card_in("analyzing", &tickets[1])).await;
    // The card moves on the screen as the drop happens; the move's request may still be on
    // its way: its commit first, then the read model.
    app.eventually(&format!("/api/v1/tickets/{}", tickets[1]), |body| {
        body["state"]["status"] == "analyzing"
    })
    .await;
    app.caught_up().await;
    let (status, view) = app
        .get(&format!("/api/v1/board/view?project_id={project}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    let analyzing = view["columns"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "analyzing"))
        .expect("an analyzing column");
    let cards: Vec<&str> = analyzing["cards"]
        .as_array()
        .expect("cards")
        .iter()
        .filter_map(|c| c["ticket_id"].as_str())
        .collect();
    assert!(cards.contains(&tickets[1].as_str()), "{view}");

    // Analyzing holds at most 5: fill it, then drag a sixth card there.
    for ticket in &tickets[2..5] {
        move_over_http(&app, ticket, "analyzing").await;
    }
    expect(&browser, "filled", &card_in("analyzing", &tickets[4])).await;
    let card = browser
        .find(&format!("[data-ticket-id=\"{}\"]", tickets[5]))
        .await?;
    let column = browser.find("[data-column=\"analyzing\"]").await?;
    browser.drag(&card, &column).await?;
    expect(
        &browser,
        "wip-refused",
        "document.querySelector('dialog[open] .dialog-message')?.textContent.includes('WIP limit is 5')",
    )
    .await;
    expect(&browser, "put-back", &card_in("backlog", &tickets[5])).await;
    shot(&browser, "board-wip-refusal").await;
    browser
        .click_css("dialog[open] button[value=confirm]")
        .await?;
    expect(&browser, "forced", &card_in("analyzing", &tickets[5])).await;
    expect(
        &browser,
        "over-limit",
        "document.querySelector('[data-column=\"analyzing\"]').classList.contains('over-limit')",
    )
    .await;
    // The board shows a move at once, before the server has it: the forced move is
    // waited for where it is recorded.
    let path = format!("/api/v1/tickets/{}", tickets[5]);
    let mut ticket = app.get(&path).await.1;
    for _ in 0..200 {
        if ticket["state"]["status"] == "analyzing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        ticket = app.get(&path).await.1;
    }
    assert_eq!(ticket["state"]["status"], "analyzing", "{ticket}");
    browser.quit().await;
    Ok(())
}

/// A drag the browser cancels (a touch taken for a scroll, a lost capture) ends there:
/// no ghost is left behind, and a later release neither moves the card nor opens it (the
/// drag's listeners stayed, and the next release dropped the card where it happened).
#[tokio::test(flavor = "multi_thread")]
async fn a_drag_the_browser_cancels_ends_and_moves_nothing() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Alpha").await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "board", &card_in("backlog", &ticket)).await;
    let seen = browser
        .execute(
            &format!(
                "const card = document.querySelector('[data-ticket-id=\"{ticket}\"]');
                 const box = card.getBoundingClientRect();
                 const at = (x, y) => ({{ bubbles: true, button: 0, pointerId: 1,
                                          isPrimary: true, clientX: x, clientY: y }});
                 const x = box.left + box.width / 2, y = box.top + box.height / 2;
                 card.dispatchEvent(new PointerEvent('pointerdown', at(x, y)));
                 document.dispatchEvent(new PointerEvent('pointermove', at(x + 40, y)));
                 const dragging = !!document.querySelector('.drag-ghost');
                 document.dispatchEvent(new PointerEvent('pointercancel', at(x + 40, y)));
                 const left = [!!document.querySelector('.drag-ghost'),
                               !!document.querySelector('.dragging')];
                 const column = document.querySelector('[data-column=\"analyzing\"]')
                                        .getBoundingClientRect();
                 const cx = column.left + column.width / 2, cy = column.top + 60;
                 document.dispatchEvent(new PointerEvent('pointermove', at(cx, cy)));
                 document.dispatchEvent(new PointerEvent('pointerup', at(cx, cy)));
                 return [dragging, ...left, location.pathname + location.search];"
            ),
            vec![],
        )
        .await?;
    assert_eq!(
        seen,
        json!([true, false, false, format!("/p/{project}/board")]),
        "dragging, then nothing left, and the release opened nothing"
    );
    // Nothing was asked of the server either.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, body) = app.get(&format!("/api/v1/tickets/{ticket}")).await;
    assert_eq!(body["state"]["status"], "backlog", "{body}");
    expect(&browser, "still-in-backlog", &card_in("backlog", &ticket)).await;
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_graph_shows_a_dependency_and_a_node_changes_live_when_its_task_completes(
) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Checkout").await;
    let first = app.task(&ticket, "Schema", json!({})).await;
    let second = app
        .task(&ticket, "Endpoint", json!({"depends_on": [first]}))
        .await;
    let browser = signed_in(&app, &format!("/p/{project}/graph")).await?;
    let node = |id: &str, status: &str| {
        format!("document.querySelector('[data-node-id=\"{id}\"][data-status=\"{status}\"]')")
    };
    expect(&browser, "graph", &node(&first, "pending")).await;
    expect(
        &browser,
        "blocked",
        &format!(
            "document.querySelector('[data-node-id=\"{second}\"]').classList.contains('blocked')"
        ),
    )
    .await;
    expect(
        &browser,
        "edge",
        "document.querySelectorAll('.graph-canvas path.edge').length === 1",
    )
    .await;
    shot(&browser, "graph").await;

    let agent = app.register_agent(&organization).await.id;
    task_action(&app, &first, "assign", json!({"agent_id": agent})).await;
    task_action(&app, &first, "start", json!({})).await;
    expect(&browser, "running", &node(&first, "running")).await;
    task_action(&app, &first, "complete", json!({"result": {"ok": true}})).await;
    expect(&browser, "completed", &node(&first, "completed")).await;
    expect(
        &browser,
        "unblocked",
        &format!(
            "!document.querySelector('[data-node-id=\"{second}\"]').classList.contains('blocked')"
        ),
    )
    .await;
    shot(&browser, "graph-completed").await;

    // A node opens its task.
    browser
        .click_css(&format!("[data-node-id=\"{second}\"]"))
        .await?;
    expect(
        &browser,
        "drawer",
        "document.querySelector('aside.drawer h2')?.textContent === 'Endpoint'",
    )
    .await;
    assert!(browser
        .current_url()
        .await?
        .contains(&format!("task={second}")));
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_timeline_receives_entries_live_and_filters_by_event_type() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let first = app.ticket(&project, "Search").await;
    move_over_http(&app, &first, "analyzing").await;
    let browser = signed_in(&app, &format!("/p/{project}/timeline")).await?;
    expect(
        &browser,
        "timeline",
        "document.querySelectorAll('li.entry').length >= 2",
    )
    .await;

    app.ticket(&project, "Live entry").await;
    expect(
        &browser,
        "live-entry",
        "document.querySelector('li.entry')?.textContent.includes('Live entry')",
    )
    .await;
    shot(&browser, "timeline").await;

    let filter = browser.find("input[name=event_type]").await?;
    browser.type_into(&filter, "TicketCreated\n").await?;
    expect(
        &browser,
        "filtered",
        "[...document.querySelectorAll('li.entry')].length === 2 && \
         [...document.querySelectorAll('li.entry')].every(e => e.dataset.eventType === 'TicketCreated')",
    )
    .await;
    assert!(browser
        .current_url()
        .await?
        .contains("event_type=TicketCreated"));
    // Newest first, each with its position.
    let positions = browser
        .execute(
            "return [...document.querySelectorAll('li.entry')].map(e => e.dataset.position);",
            vec![],
        )
        .await?;
    assert_eq!(positions.as_array().map(Vec::len), Some(2), "{positions}");
    // A new entry of another type does not enter the filtered list; one of the type does.
    move_over_http(&app, &first, "building").await;
    app.ticket(&project, "Another").await;
    expect(
        &browser,
        "filtered-live",
        "document.querySelector('li.entry')?.textContent.includes('Another') && \
         [...document.querySelectorAll('li.entry')].every(e => e.dataset.eventType === 'TicketCreated')",
    )
    .await;
    // A ticket opened from the filtered list keeps the filter in the address.
    browser.click_css("li.entry a").await?;
    expect(
        &browser,
        "drawer-keeps-filter",
        "location.search.includes('ticket=') && location.search.includes('event_type=TicketCreated')",
    )
    .await;
    // Two reloads at once — a field's `change` and the Clear button's click, as leaving
    // the field by clicking Clear gives them: the whole list comes back (it stayed on
    // "Loading…", the second reload waiting on the first, whose answer it dropped).
    browser
        .execute(
            "const form = document.querySelector('form.filters');
             form.querySelector('input[name=actor]').value = 'user:nobody';
             form.dispatchEvent(new Event('change'));
             [...form.querySelectorAll('button')].find(b => b.textContent === 'Clear').click();
             return true;",
            vec![],
        )
        .await?;
    expect(
        &browser,
        "cleared",
        "document.querySelectorAll('li.entry').length >= 5 && \
         [...document.querySelectorAll('li.entry')].some(e => e.dataset.eventType !== 'TicketCreated') && \
         !document.querySelector('.sentinel').textContent.includes('Loading')",
    )
    .await;
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_task_drawer_replays_the_task_as_it_was_at_an_earlier_event() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Billing").await;
    let work = app.task(&ticket, "Invoice PDF", json!({})).await;
    let agent = app.register_agent(&organization).await.id;
    task_action(&app, &work, "assign", json!({"agent_id": agent})).await;
    task_action(&app, &work, "start", json!({})).await;
    let browser = signed_in(&app, &format!("/p/{project}/board?task={work}")).await?;
    let status =
        |s: &str| format!("document.getElementById('task-status')?.dataset.status === '{s}'");
    expect(&browser, "drawer-now", &status("running")).await;
    shot(&browser, "task-drawer").await;

    browser
        .execute(
            "const slider = document.getElementById('replay'); slider.value = '1'; \
             slider.dispatchEvent(new Event('input'));",
            vec![],
        )
        .await?;
    expect(&browser, "replayed", &status("pending")).await;
    expect(
        &browser,
        "replay-notice",
        "document.querySelector('aside.drawer .notice')?.textContent.includes('Replaying')",
    )
    .await;
    shot(&browser, "task-drawer-replay").await;

    // Back to now, then the task completes live.
    browser
        .execute(
            "const slider = document.getElementById('replay'); slider.value = slider.max; \
             slider.dispatchEvent(new Event('input'));",
            vec![],
        )
        .await?;
    expect(&browser, "back-to-now", &status("running")).await;
    task_action(&app, &work, "complete", json!({"result": {"pages": 2}})).await;
    expect(&browser, "completed-live", &status("completed")).await;
    browser.quit().await;
    Ok(())
}

/// A task of another project opened in the drawer (an organization-wide agent's task,
/// linked from the agents screen of the project being looked at) follows that task live:
/// the drawer followed the screen's project, where the task's events never come.
#[tokio::test(flavor = "multi_thread")]
async fn the_drawer_follows_a_task_of_another_project_live() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let other = app.project(&organization, "Elsewhere").await;
    let ticket = app.ticket(&other, "Theirs").await;
    let work = app.task(&ticket, "Their task", json!({})).await;
    let agent = app.register_agent(&organization).await.id;
    task_action(&app, &work, "assign", json!({"agent_id": agent})).await;
    task_action(&app, &work, "start", json!({})).await;
    let browser = signed_in(&app, &format!("/p/{project}/agents?task={work}")).await?;
    let status =
        |s: &str| format!("document.getElementById('task-status')?.dataset.status === '{s}'");
    expect(&browser, "drawer-open", &status("running")).await;
    task_action(&app, &work, "complete", json!({"result": {}})).await;
    expect(&browser, "completed-live", &status("completed")).await;
    browser.quit().await;
    Ok(())
}

/// The drawer's transcript is the current attempt's: a retry's lines are shown from its
/// first, in place of the failed attempt's (the drawer kept following the attempt it
/// opened on, so a retry's lines never came).
#[tokio::test(flavor = "multi_thread")]
async fn the_task_drawers_transcript_follows_a_retry_from_its_first_line() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Flaky").await;
    let work = app.task(&ticket, "Sometimes fails", json!({})).await;
    let agent = app.register_agent(&organization).await.id;
    let lines = |text: &str| json!({ "lines": [text] });
    task_action(&app, &work, "assign", json!({"agent_id": agent})).await;
    task_action(&app, &work, "start", json!({})).await;
    task_action(&app, &work, "logs", lines("the first attempt says hi")).await;
    let browser = signed_in(&app, &format!("/p/{project}/board?task={work}")).await?;
    let transcript = |has: &str| {
        format!("document.querySelector('pre.transcript')?.textContent.includes('{has}')")
    };
    expect(
        &browser,
        "first-attempt",
        &transcript("the first attempt says hi"),
    )
    .await;

    task_action(&app, &work, "fail", json!({"error": "the network blinked"})).await;
    // Assigned again once the retry's backoff (about a second) is over.
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = app
            .post(
                &format!("/api/v1/tasks/{work}/assign"),
                json!({"agent_id": agent}),
            )
            .await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(body["code"], "retry_not_due", "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the retry never came due"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    task_action(&app, &work, "start", json!({})).await;
    task_action(&app, &work, "logs", lines("the second attempt starts over")).await;
    expect(
        &browser,
        "second-attempt",
        &format!(
            "{} && !{}",
            transcript("the second attempt starts over"),
            transcript("the first attempt says hi")
        ),
    )
    .await;
    browser.quit().await;
    Ok(())
}

/// A drawer closed before its task's history came back subscribes to nothing afterwards
/// (its subscriptions were made after it had stopped them, and each change of the task
/// then fetched its history for nobody).
#[tokio::test(flavor = "multi_thread")]
async fn a_drawer_closed_at_once_follows_nothing_afterwards() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Quick look").await;
    let work = app.task(&ticket, "Glance", json!({})).await;
    let agent = app.register_agent(&organization).await.id;
    task_action(&app, &work, "assign", json!({"agent_id": agent})).await;
    task_action(&app, &work, "start", json!({})).await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    // In whichever column its task has moved it to.
    let card = format!("document.querySelector('article[data-ticket-id=\"{ticket}\"]')");
    expect(&browser, "board", &card).await;
    let histories = "performance.getEntriesByType('resource')\
                     .filter(e => e.name.includes('/history')).length";
    // Opened and closed in one go, as a quick click and Escape do.
    browser
        .execute(
            &format!(
                "history.pushState(null, '', location.pathname + '?task={work}');
                 dispatchEvent(new PopStateEvent('popstate'));
                 history.pushState(null, '', location.pathname);
                 dispatchEvent(new PopStateEvent('popstate'));
                 return true;"
            ),
            vec![],
        )
        .await?;
    // Its history's answer came back, to a drawer already closed.
    expect(&browser, "history-answered", &format!("{histories} === 1")).await;
    expect(
        &browser,
        "closed",
        "!document.querySelector('aside.drawer')",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    task_action(&app, &work, "complete", json!({"result": {}})).await;
    // The board's own subscription saw the task complete: the page had the change.
    expect(
        &browser,
        "board-saw-it",
        &format!("{card}?.querySelector('.progress')?.title === '1 of 1 tasks completed'"),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let fetched = browser
        .execute(&format!("return {histories};"), vec![])
        .await?;
    assert_eq!(
        fetched,
        json!(1),
        "the closed drawer fetched the history again"
    );
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_palette_jumps_to_a_ticket_found_by_search() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let wanted = app.ticket(&project, "Password reset email").await;
    app.ticket(&project, "Unrelated").await;
    let browser = signed_in(&app, &format!("/p/{project}/timeline")).await?;
    expect(&browser, "timeline", "document.querySelector('li.entry')").await;
    app.caught_up().await;
    browser.press(&[CONTROL, "k"]).await?;
    let input = browser.find("dialog.palette input").await?;
    browser.type_into(&input, "password reset").await?;
    expect(
        &browser,
        "found",
        "[...document.querySelectorAll('.palette-results li')].some(li => li.dataset.kind === 'ticket' && li.textContent.includes('Password reset email'))",
    )
    .await;
    shot(&browser, "palette").await;
    browser
        .execute(
            "[...document.querySelectorAll('.palette-results li')].find(li => li.dataset.kind === 'ticket').click();",
            vec![],
        )
        .await
        ?;
    expect(
        &browser,
        "ticket-drawer",
        "document.querySelector('aside.drawer h2')?.textContent === 'Password reset email'",
    )
    .await;
    let url = browser.current_url().await?;
    assert!(
        url.contains(&format!("/p/{project}/board?ticket={wanted}")),
        "{url}"
    );
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_server_restart_the_socket_reconnects_and_the_board_catches_up(
) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let first = app.ticket(&project, "Before the restart").await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "board", &card_in("backlog", &first)).await;
    expect(&browser, "live", CONNECTION_LIVE).await;
    // Every socket the page opens from now on is remembered by its address.
    browser
        .execute(
            "window.socketAddresses = [];
             const Original = window.WebSocket;
             window.WebSocket = class extends Original {
               constructor(address, ...rest) {
                 super(address, ...rest);
                 window.socketAddresses.push(address);
               }
             };",
            vec![],
        )
        .await?;

    let app = app.restart().await;
    // Changes made while the page reconnects arrive through the resumption (`after`).
    move_over_http(&app, &first, "analyzing").await;
    let second = app.ticket(&project, "After the restart").await;
    expect(&browser, "caught-up-move", &card_in("analyzing", &first)).await;
    expect(&browser, "caught-up-new", &card_in("backlog", &second)).await;
    expect(&browser, "live-again", CONNECTION_LIVE).await;
    shot(&browser, "board-after-restart").await;
    // It did reconnect (the stopped server closed its socket), by the cookie: a server
    // away is no reason to put the token in the address.
    let addresses = browser
        .execute("return window.socketAddresses;", vec![])
        .await?;
    let addresses = addresses.as_array().cloned().unwrap_or_default();
    assert!(!addresses.is_empty(), "the page opened a socket again");
    assert!(
        addresses
            .iter()
            .all(|a| a.as_str().is_some_and(|a| !a.contains("token="))),
        "{addresses:?}"
    );
    browser.quit().await;
    Ok(())
}

/// The page hands each refreshed token to its socket, which then outlives the token it
/// opened with: revoked (as it would expire after a quarter of an hour), the socket stays
/// open — no new one is made — and the board goes on changing live.
#[tokio::test(flavor = "multi_thread")]
async fn the_socket_takes_each_refreshed_token_and_outlives_the_first() -> anyhow::Result<()> {
    let app = spawn_app_with(LiveConfig {
        recheck_interval: std::time::Duration::from_millis(200),
        ..test_live_config()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "live", CONNECTION_LIVE).await;
    // The page's own modules: its token, then a refresh as its timer would make one; every
    // socket made from now on is counted.
    let first = browser
        .execute(
            "return (async () => {
               const main = document.querySelector('script[type=module]').src;
               const api = await import(main.replace(/main\\.js$/, 'api.js'));
               const first = api.token();
               window.socketsMade = 0;
               const Original = window.WebSocket;
               window.WebSocket = class extends Original {
                 constructor(...args) { super(...args); window.socketsMade += 1; }
               };
               await api.refresh();
               return first !== api.token() ? first : null;
             })();",
            vec![],
        )
        .await?;
    let first = first
        .as_str()
        .expect("a new token replaced the first")
        .to_string();
    let (status, body) = app
        .send_as(
            Some(&first),
            reqwest::Method::POST,
            "/api/v1/auth/logout",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // Several checks of the socket's credential later, a change still arrives live.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let ticket = app.ticket(&project, "After the first token").await;
    expect(
        &browser,
        "live-after-revocation",
        &card_in("backlog", &ticket),
    )
    .await;
    let made = browser
        .execute(
            "return [window.socketsMade, document.getElementById('connection').dataset.state];",
            vec![],
        )
        .await?;
    assert_eq!(made, json!([0, "live"]), "the socket was not replaced");
    browser.quit().await;
    Ok(())
}

/// A socket refused for another reason than its token — the user's one socket is held
/// elsewhere (429) — is tried again without asking for a new token: every refused upgrade
/// rotated the refresh token, every few seconds for ever, spending the address's refresh
/// quota (which signing in shares). Once the other socket closes, the page connects, by
/// the token's cookie.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_refused_for_another_reason_than_its_token_reconnects_without_refreshing(
) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_app_with(LiveConfig {
        max_sockets_per_principal: 1,
        ..test_live_config()
    })
    .await;
    let (_, project) = app.organization_and_project().await;
    let mut request = app
        .url("/api/v1/ws")
        .replacen("http", "ws", 1)
        .into_client_request()?;
    let bearer = format!("Bearer {}", app.token.clone().expect("a token"));
    request
        .headers_mut()
        .insert("authorization", bearer.parse()?);
    let (held, _) = tokio_tungstenite::connect_async(request).await?;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(
        &browser,
        "refused",
        "document.getElementById('connection')?.dataset.state === 'reconnecting'",
    )
    .await;
    let refresh_tokens = || {
        sqlx::query_scalar::<_, i64>("select count(*) from refresh_tokens")
            .fetch_one(&app.database.pool)
    };
    let before = refresh_tokens().await?;
    // Refused again and again meanwhile (at about 0.5, 1, 2 and 4 s).
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(
        refresh_tokens().await?,
        before,
        "no token refreshed for a refusal that was not the token's"
    );
    drop(held);
    expect(&browser, "live-at-last", CONNECTION_LIVE).await;
    browser.quit().await;
    Ok(())
}

/// A socket whose upgrade the access token's cookie does not get through (cookies blocked,
/// a `Secure` cookie over plain http), though the token is good, carries the token in its
/// address instead: it connects. Opened by the cookie alone, it was refused for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_socket_without_the_cookie_connects_with_the_token_in_its_address() -> anyhow::Result<()>
{
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "live", CONNECTION_LIVE).await;
    browser.delete_cookie("omoi_access_token").await?;
    // The page's own module opens its socket again, now without the cookie.
    browser
        .execute(
            "return (async () => {
               const main = document.querySelector('script[type=module]').src;
               const live = await import(main.replace(/main\\.js$/, 'live.js'));
               live.disconnect();
               live.connect();
             })();",
            vec![],
        )
        .await?;
    expect(&browser, "live-again", CONNECTION_LIVE).await;
    browser.quit().await;
    Ok(())
}

/// A session the server revoked signs the page out once its socket is refused (it
/// retried every five seconds forever: the refused upgrade closes as 1006, and a failed
/// refresh was swallowed).
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_session_signs_the_page_out_instead_of_reconnecting_forever() -> anyhow::Result<()>
{
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "live", CONNECTION_LIVE).await;
    // Every token of the user, the page's refresh cookie among them (as when a used
    // refresh token is presented again).
    let (_, me) = app.get("/api/v1/auth/me").await;
    let user = me["id"].as_str().expect("an id").parse()?;
    omoi_store::accounts::revoke_all_tokens(&app.database.pool, user).await?;
    expect(
        &browser,
        "signed-out",
        "location.pathname === '/signin' && document.querySelector('form input[type=password]')",
    )
    .await;
    browser.quit().await;
    Ok(())
}

/// The timeline shows what its stream's snapshot holds even when the read model its first
/// page comes from lags behind (here held by a lock): those entries came neither in the
/// page nor, being older than the snapshot, as deltas, and stayed missing until a reload.
#[tokio::test(flavor = "multi_thread")]
async fn the_timeline_shows_its_snapshots_entries_while_its_read_model_lags() -> anyhow::Result<()>
{
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    app.ticket(&project, "Already written").await;
    app.caught_up().await;
    // The timeline's tables locked against writers, not readers (see the execution tab's
    // test): its next batch waits at its first write.
    let held = app.hold_read_model("timeline", "share").await;
    app.ticket(&project, "Only in the stream").await;
    let browser = signed_in(&app, &format!("/p/{project}/timeline")).await?;
    expect(
        &browser,
        "timeline-lagging",
        "document.body.innerText.includes('Only in the stream') \
         && document.body.innerText.includes('Already written')",
    )
    .await;
    let (_, page) = app
        .get(&format!("/api/v1/timeline?project_id={project}"))
        .await;
    assert!(
        !page.to_string().contains("Only in the stream"),
        "the read model was held back: {page}"
    );
    held.rollback().await?;
    browser.quit().await;
    Ok(())
}

/// A refresh the server could not answer (here a 503) does not sign the page out: the
/// request that needed it fails with the reason, and the session stays (only a refused
/// refresh cookie ends it).
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_the_server_could_not_answer_keeps_the_session() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "live", CONNECTION_LIVE).await;
    // The timeline's read answers 401 (its token expired, say) and the refresh 503.
    browser
        .execute(
            r#"const original = window.fetch.bind(window);
             window.fetch = (input, init) => {
               const url = String(input);
               if (url.includes('/api/v1/auth/refresh')) {
                 return Promise.resolve(new Response(
                   JSON.stringify({status: 503, code: 'unavailable', detail: 'the refresh is resting'}),
                   {status: 503, headers: {'content-type': 'application/problem+json'}}));
               }
               if (url.includes('/api/v1/timeline')) {
                 return Promise.resolve(new Response('', {status: 401}));
               }
               return original(input, init);
             };
             document.querySelector("a[href$='/timeline']").click();"#,
            vec![],
        )
        .await?;
    expect(
        &browser,
        "refresh-failed",
        "document.body.innerText.includes('the refresh is resting')",
    )
    .await;
    let path = browser.execute("return location.pathname", vec![]).await?;
    assert_eq!(path, json!(format!("/p/{project}/timeline")), "signed out");
    browser.quit().await;
    Ok(())
}

/// After signing in, `next` is followed only to a path of this origin: `/\\host` (read
/// as `//host`) goes home instead of stopping the page with a security error.
#[tokio::test(flavor = "multi_thread")]
async fn sign_in_follows_next_only_within_the_site() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let browser = signed_in(&app, "/signin?next=%2F%5Cevil.example%2Fx").await?;
    expect(
        &browser,
        "home",
        &format!(
            "location.host === '{}' && location.pathname === '/p/{project}/board'",
            app.address.trim_start_matches("http://")
        ),
    )
    .await;
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_screen_renders_without_an_error_and_is_photographed() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Screens").await;
    app.task(&ticket, "Render", json!({})).await;
    app.register_agent(&organization).await;
    app.must(
        "/api/v1/specs",
        json!({"project_id": project, "title": "Onboarding", "description": "New users"}),
        StatusCode::CREATED,
    )
    .await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    for (screen, ready) in [
        ("agents", "document.querySelector('tr[data-agent-id]')"),
        (
            "specs",
            "document.querySelector('select[aria-label=Spec] option[value]:not([value=\"\"])')",
        ),
        ("timeline", "document.querySelector('li.entry')"),
        ("graph", "document.querySelector('[data-node-id]')"),
        ("board", "document.querySelector('[data-ticket-id]')"),
    ] {
        browser
            .click_css(&format!("nav a[href=\"/p/{project}/{screen}\"]"))
            .await?;
        expect(&browser, screen, ready).await;
        let errors = browser
            .execute("return document.querySelectorAll('.toast-error, .form-error:not([hidden])').length;", vec![])
            .await
            ?;
        assert_eq!(errors, json!(0), "{screen} shows an error");
        shot(&browser, &format!("screen-{screen}")).await;
    }
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_are_revalidated_modules_are_immutable_and_another_builds_are_gone(
) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    for page in [
        "/",
        "/signin",
        "/p/0190a4e8-0000-7000-8000-000000000000/board",
    ] {
        let response = client.get(app.url(page)).send().await?;
        assert_eq!(response.status(), StatusCode::OK, "{page}");
        let headers = response.headers().clone();
        assert_eq!(headers["cache-control"], "no-cache", "{page}");
        assert!(headers["content-security-policy"]
            .to_str()?
            .contains("script-src 'self'"));
        let body = response.text().await?;
        assert!(
            body.contains(&format!("/app/{}/main.js", omoi_web::BUILD)),
            "{body}"
        );
    }
    let module = app.url(&format!("/app/{}/board.js", omoi_web::BUILD));
    let response = client.get(&module).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(response.headers()["cache-control"]
        .to_str()?
        .contains("immutable"));
    let etag = response.headers()["etag"].clone();
    let again = client
        .get(&module)
        .header("if-none-match", etag)
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    // Another build's files, the page template and unknown files: 404 problems.
    for path in [
        "/app/0000000000000000/board.js".to_string(),
        format!("/app/{}/index.html", omoi_web::BUILD),
        format!("/app/{}/nothing.js", omoi_web::BUILD),
    ] {
        let response = client.get(app.url(&path)).send().await?;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    // API paths are not pages.
    let (status, body) = app.get("/api/v1/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_docs_render_from_our_own_files() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let browser = Browser::start().await?;
    browser.goto(&app.url("/docs")).await?;
    expect(
        &browser,
        "swagger-ui",
        "document.querySelectorAll('.swagger-ui .opblock').length > 50",
    )
    .await;
    let foreign = browser
        .execute(
            "return performance.getEntriesByType('resource').map(r => r.name)\
             .filter(name => !name.startsWith(location.origin));",
            vec![],
        )
        .await?;
    assert_eq!(foreign, json!([]), "everything comes from omoi");
    shot(&browser, "api-docs").await;
    browser.quit().await;
    Ok(())
}

/// Clicks the button whose text is `text` (the first one), or fails naming it.
async fn click_button(browser: &Browser, text: &str) -> anyhow::Result<()> {
    let present = format!(
        "[...document.querySelectorAll('button')].some(b => b.textContent.trim() === {})",
        json!(text)
    );
    browser.wait_for(&present, PATIENCE).await?;
    let clicked = browser
        .execute(
            "const button = [...document.querySelectorAll('button')]\
             .find(b => b.textContent.trim() === arguments[0]);\
             if (button) button.click(); return Boolean(button);",
            vec![json!(text)],
        )
        .await?;
    anyhow::ensure!(clicked == json!(true), "no button {text:?}");
    Ok(())
}

/// "Your first project": a project the server refused, then tried again, is made in the
/// organization the first attempt made — one organization, not one per attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_project_tried_again_makes_one_organization() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let browser = signed_in(&app, "/").await?;
    set_field(&browser, "input[name=organization]", "Acme").await?;
    // Blank once trimmed: the browser's `required` lets it through, the server does not.
    set_field(&browser, "input[name=project]", "   ").await?;
    click_button(&browser, "Create").await?;
    expect(
        &browser,
        "project-refused",
        "!document.querySelector('form .form-error').hidden",
    )
    .await;
    set_field(&browser, "input[name=project]", "Rockets").await?;
    click_button(&browser, "Create").await?;
    expect(&browser, "board", "location.pathname.endsWith('/board')").await;
    // From the log, which holds every organization made before the board showed (the
    // organizations' list is a read model, which may not have them yet).
    let names: Vec<String> = sqlx::query_scalar(
        "select payload -> 'OrganizationCreated' ->> 'name' from events
          where event_type = 'OrganizationCreated' order by global_position",
    )
    .fetch_all(&app.database.pool)
    .await?;
    assert_eq!(names, ["Acme"]);
    browser.quit().await;
    Ok(())
}

/// Sets a form field's value as typing would (an `input` event follows).
async fn set_field(browser: &Browser, css: &str, value: &str) -> anyhow::Result<()> {
    browser.find(css).await?;
    let set = browser
        .execute(
            "const field = document.querySelector(arguments[0]); if (!field) return false;\
             field.value = arguments[1]; field.dispatchEvent(new Event('input')); return true;",
            vec![json!(css), json!(value)],
        )
        .await?;
    anyhow::ensure!(set == json!(true), "no field {css}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_is_written_approved_gate_by_gate_and_its_plan_runs_in_the_execution_tab(
) -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let browser = signed_in(&app, &format!("/p/{project}/specs")).await?;
    let title = browser.find("form input[name=title]").await?;
    browser.type_into(&title, "Sign-in").await?;
    click_button(&browser, "Create spec").await?;
    expect(
        &browser,
        "created",
        "location.pathname.endsWith('/requirements')",
    )
    .await;
    let spec = browser
        .execute("return location.pathname.split('/')[4];", vec![])
        .await?;
    let spec = spec.as_str().unwrap_or_default().to_string();

    for (name, value) in [
        ("id", "REQ-AUTH-001"),
        ("condition", "a user submits valid credentials"),
        ("action", "issue a session"),
        ("criteria", "a token is returned\nthe token expires"),
    ] {
        set_field(&browser, &format!(".requirement-form [name={name}]"), value).await?;
    }
    click_button(&browser, "Add requirement").await?;
    expect(
        &browser,
        "requirement",
        "document.querySelectorAll('[data-requirement-id=\"REQ-AUTH-001\"] ul li').length === 2",
    )
    .await;
    // Changed in place: the form takes the requirement, its id fixed.
    click_button(&browser, "Edit").await?;
    set_field(
        &browser,
        ".requirement-form [name=action]",
        "issue a session token",
    )
    .await?;
    click_button(&browser, "Save requirement").await?;
    expect(
        &browser,
        "requirement-changed",
        "document.querySelector('[data-requirement-id=\"REQ-AUTH-001\"]')?.textContent\
         .includes('THE SYSTEM SHALL issue a session token')",
    )
    .await;
    shot(&browser, "spec-requirements").await;
    click_button(&browser, "Approve requirements").await?;
    let phase = |p: &str| {
        format!("document.querySelector('.spec-header .badge')?.dataset.status === '{p}'")
    };
    expect(&browser, "design-phase", &phase("design")).await;

    browser
        .click_css(&format!("a[href=\"/p/{project}/specs/{spec}/design\"]"))
        .await?;
    for (name, value) in [
        ("architecture", "one service"),
        ("data_model", "users"),
        ("api_spec", "POST /login"),
    ] {
        set_field(&browser, &format!("textarea[name={name}]"), value).await?;
    }
    click_button(&browser, "Save design").await?;
    expect(
        &browser,
        "design-saved",
        "document.querySelector('textarea[name=architecture]')?.value === 'one service' && \
         [...document.querySelectorAll('button')].some(b => b.textContent === 'Approve design')",
    )
    .await;
    click_button(&browser, "Approve design").await?;
    expect(&browser, "tasks-phase", &phase("tasks")).await;

    browser
        .click_css(&format!("a[href=\"/p/{project}/specs/{spec}/plan\"]"))
        .await?;
    // A plan with a mistake: the server's answer names the place.
    let wrong = json!({"tickets": [{"key": "TKT-1", "title": "Login form",
        "tasks": [{"key": "TSK-1", "title": "Form", "task_type": "implement", "depends_on": ["TSK-9"]}]}]});
    set_field(&browser, "textarea.code", &wrong.to_string()).await?;
    click_button(&browser, "Save plan").await?;
    expect(
        &browser,
        "plan-refused",
        "document.querySelector('.toast-error')?.textContent.includes('tickets[0].tasks[0].depends_on[0]')",
    )
    .await;
    let right = json!({"tickets": [
        {"key": "TKT-1", "title": "Login form", "requirement_ids": ["REQ-AUTH-001"],
         "tasks": [{"key": "TSK-1", "title": "Form", "task_type": "implement"}]},
        {"key": "TKT-2", "title": "Sessions",
         "tasks": [{"key": "TSK-2", "title": "Tokens", "task_type": "implement", "depends_on": ["TSK-1"]}]}]});
    set_field(&browser, "textarea.code", &right.to_string()).await?;
    click_button(&browser, "Save plan").await?;
    expect(
        &browser,
        "plan-saved",
        "document.querySelectorAll('ul.plan li').length === 2",
    )
    .await;
    click_button(&browser, "Approve plan").await?;
    expect(&browser, "executing", &phase("executing")).await;

    browser
        .click_css(&format!("a[href=\"/p/{project}/specs/{spec}/execution\"]"))
        .await?;
    // The plan's process manager creates the tickets and tasks; the tab shows them live.
    expect(
        &browser,
        "execution",
        "document.querySelectorAll('article.execution-ticket').length === 2 && \
         document.querySelectorAll('article.execution-ticket li').length === 2",
    )
    .await;
    shot(&browser, "spec-execution").await;
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_board_shows_a_past_position_and_signing_out_ends_the_session() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let card = app.ticket(&project, "Time travel").await;
    move_over_http(&app, &card, "analyzing").await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "now", &card_in("analyzing", &card)).await;
    click_button(&browser, "As of…").await?;
    // One event back: before the move.
    browser
        .execute(
            "const slider = document.querySelector('.as-of input[type=range]');\
             slider.value = String(Number(slider.max) - 1);\
             slider.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await?;
    expect(&browser, "past", &card_in("backlog", &card)).await;
    shot(&browser, "board-as-of").await;
    click_button(&browser, "As of…").await?;
    expect(&browser, "back-to-now", &card_in("analyzing", &card)).await;

    click_button(&browser, "Sign out").await?;
    expect(
        &browser,
        "signed-out",
        "document.querySelector('input[name=email]')",
    )
    .await;
    // The refresh cookie was revoked: a reload does not sign in again.
    browser
        .goto(&app.url(&format!("/p/{project}/board")))
        .await?;
    expect(
        &browser,
        "still-signed-out",
        "document.querySelector('input[name=email]')",
    )
    .await;
    assert!(browser.current_url().await?.contains("/signin?next="));
    browser.quit().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_card_moves_from_the_keyboard_and_enter_opens_its_ticket() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let card = app.ticket(&project, "Keyboard").await;
    let browser = signed_in(&app, &format!("/p/{project}/board")).await?;
    expect(&browser, "board", &card_in("backlog", &card)).await;
    browser
        .execute(
            &format!("document.querySelector('[data-ticket-id=\"{card}\"]').focus();"),
            vec![],
        )
        .await?;
    // Alt+→ moves the focused card one column right.
    browser.press(&[ALT, ARROW_RIGHT]).await?;
    expect(&browser, "moved", &card_in("analyzing", &card)).await;
    app.caught_up().await;
    let (_, moved) = app.get(&format!("/api/v1/tickets/{card}")).await;
    assert_eq!(moved["state"]["status"], "analyzing", "{moved}");
    browser
        .execute(
            &format!("document.querySelector('[data-ticket-id=\"{card}\"]').focus();"),
            vec![],
        )
        .await?;
    browser.press(&[ENTER]).await?;
    expect(
        &browser,
        "ticket-drawer",
        "document.querySelector('aside.drawer h2')?.textContent === 'Keyboard'",
    )
    .await;
    // Escape closes it.
    browser.press(&[ESCAPE]).await?;
    expect(
        &browser,
        "closed",
        "!document.querySelector('aside.drawer')",
    )
    .await;
    assert!(!browser.current_url().await?.contains("ticket="));
    browser.quit().await;
    Ok(())
}

/// The execution tab reads its lists from a read model that may lag behind the events that
/// ask it to read again: here the directory is held back (its tables locked against
/// writers) while the plan is approved and the tab opens and reads, and
/// let go a second and a half later — past the half second after which a change's event
/// made the tab read once, and the plan's creations came before the tab subscribed. The
/// tab reads again after its first read and after every change, and shows the tickets.
#[tokio::test(flavor = "multi_thread")]
async fn the_execution_tab_catches_up_with_a_read_model_that_lagged() -> anyhow::Result<()> {
    let app = spawn_app().await;
    let (_, project) = app.organization_and_project().await;
    let spec = app.spec_in_tasks(&project, "Held back").await;
    let path = |action: &str| format!("/api/v1/specs/{spec}/{action}");
    let plan = json!({"tickets": [
        {"key": "TKT-1", "title": "First", "tasks": [{"key": "TSK-1", "title": "One", "task_type": "analyze"}]},
        {"key": "TKT-2", "title": "Second", "tasks": [{"key": "TSK-2", "title": "Two", "task_type": "analyze"}]}]});
    let (status, body) = app.put(&path("plan"), plan).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.caught_up().await;

    // The directory's tables locked against writers, not readers: its next batch waits at
    // its first write, before it takes a transaction id (which would hold every reader of
    // the log, the process managers and the live streams with it).
    let held = app.hold_read_model("directory", "share").await;
    app.must(&path("approve-plan"), json!({}), StatusCode::OK)
        .await;
    let browser = signed_in(&app, &format!("/p/{project}/specs/{spec}/execution")).await?;
    // The tab has read the lists while the directory was held: nothing yet.
    expect(
        &browser,
        "execution-lagging",
        "document.querySelector('.execution p.muted')?.textContent.includes('not created')",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    held.rollback().await?;
    expect(
        &browser,
        "execution-after-lag",
        "document.querySelectorAll('article.execution-ticket').length === 2",
    )
    .await;
    browser.quit().await;
    Ok(())
}
