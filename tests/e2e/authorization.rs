//! Authorization of every route of the OpenAPI document, table-driven: without a credential
//! or with an expired token (401), as a user of another organization (404: ids do not
//! leak), as a viewer (403 on writes, 200 on reads). A refusal is a problem document with
//! the matching status and writes nothing. A last test has the owner send every write of
//! the table, to prove its bodies parse (the refusals come before the body is read).
//!
//! The table is built from `GET /openapi.json`, so a route added without an entry in
//! [`entry`] makes every test here fail until it gets one.

use std::collections::BTreeSet;

use chrono::Utc;
use omoi_api::auth::tokens::{TokenKeys, TokenType};
use omoi_testing::{id_of, spawn_app, TestApp, TEST_PASSWORD, TEST_SIGNING_SECRET};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// The routes that take no credential (method, OpenAPI path template). Stripe's webhook
/// is authenticated by its signature instead (tests/e2e/billing.rs).
const PUBLIC: [(&str, &str); 6] = [
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("POST", "/api/v1/auth/register"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/billing/webhooks/stripe"),
];

/// The routes that address nothing of an organization by id (in the path or the body):
/// a user of another organization cannot get a 404 from them. Each is checked instead for
/// what it answers that user (method, template, why).
const ADDRESSING_NOTHING: [(&str, &str, &str); 12] = [
    (
        "GET",
        "/api/v1/projections",
        "the read models' positions: no organization's data, and no error details",
    ),
    (
        "POST",
        "/api/v1/organizations",
        "creates an organization of the caller's own",
    ),
    (
        "POST",
        "/api/v1/auth/logout",
        "ends the caller's own session",
    ),
    (
        "GET",
        "/api/v1/auth/me",
        "describes the caller: must not list the first organization",
    ),
    (
        "GET",
        "/api/v1/events",
        "the events of the caller's organizations: none of the first organization",
    ),
    (
        "GET",
        "/api/v1/auth/api-keys",
        "the keys the caller manages: none of the first organization",
    ),
    (
        "GET",
        "/api/v1/organizations",
        "the caller's organizations: not the first one",
    ),
    (
        "GET",
        "/api/v1/projects",
        "the projects of the caller's organizations: none of the first",
    ),
    (
        "GET",
        "/api/v1/specs",
        "the specs of the caller's organizations: none of the first",
    ),
    (
        "GET",
        "/api/v1/tickets",
        "the tickets of the caller's organizations: none of the first",
    ),
    (
        "GET",
        "/api/v1/tasks",
        "the tasks of the caller's organizations: none of the first",
    ),
    (
        "GET",
        "/api/v1/search",
        "a search for the first organization's words: none of its rows",
    ),
];

/// The writes a viewer of the first organization may make (method, template, why).
const VIEWER_MAY_WRITE: [(&str, &str, &str); 2] = [
    (
        "POST",
        "/api/v1/organizations",
        "creates the viewer's own organization, which they then own",
    ),
    (
        "POST",
        "/api/v1/auth/logout",
        "ends the viewer's own session",
    ),
];

/// The WebSocket routes (method, template). Without the upgrade headers a request that
/// passes authentication answers 400, so only the credential cases (no token, expired
/// token: 401 before upgrading) apply to them here. Another organization's project and a
/// viewer's access are decided per subscription, on the socket: tests/e2e/websocket.rs checks
/// those.
const UPGRADE_ONLY: [(&str, &str); 2] = [("GET", "/api/v1/ws"), ("GET", "/api/v1/ws/events")];

/// What the owner of the first organization created, and the other callers.
struct Fixtures {
    organization: String,
    project: String,
    ticket: String,
    first_task: String,
    /// Depends on `first_task`.
    second_task: String,
    /// Holds requirement `REQ-AUTH-001`.
    spec: String,
    agent: String,
    /// A viewer key of the first organization.
    api_key: String,
    owner: Uuid,
    /// A refresh token of the owner, unused.
    refresh_token: String,
    viewer: Uuid,
    viewer_token: String,
    intruder_token: String,
    intruder_organization: String,
    intruder_api_key: String,
}

impl Fixtures {
    /// Every aggregate id of the first organization.
    fn first_organization_ids(&self) -> BTreeSet<&str> {
        [
            &self.organization,
            &self.project,
            &self.ticket,
            &self.first_task,
            &self.second_task,
            &self.spec,
            &self.agent,
        ]
        .into_iter()
        .map(String::as_str)
        .collect()
    }
}

/// One route of the document, with a concrete path and a valid body.
struct Route {
    method: Method,
    template: String,
    path: String,
    body: Option<Value>,
}

impl Route {
    fn is(&self, method: &str, template: &str) -> bool {
        self.method.as_str() == method && self.template == template
    }

    fn is_public(&self) -> bool {
        PUBLIC.iter().any(|(m, t)| self.is(m, t))
    }

    fn addresses_nothing(&self) -> bool {
        ADDRESSING_NOTHING.iter().any(|(m, t, _)| self.is(m, t))
    }

    fn upgrades_only(&self) -> bool {
        UPGRADE_ONLY.iter().any(|(m, t)| self.is(m, t))
    }

    fn viewer_may_write(&self) -> bool {
        VIEWER_MAY_WRITE.iter().any(|(m, t, _)| self.is(m, t))
    }

    fn is_read(&self) -> bool {
        self.method == Method::GET
    }

    fn name(&self) -> String {
        format!("{} {} ({})", self.method, self.template, self.path)
    }
}

/// The concrete path and a valid body of a route of the document. Bodies must parse, so
/// that a refusal is the authorization's and not a 400 of the body.
fn entry(method: &str, template: &str, f: &Fixtures) -> (String, Option<Value>) {
    let on = |id: &str| template.replace("{id}", id);
    let member = format!("user:{}", f.viewer);
    match (method, template) {
        // System (public).
        ("GET", "/health" | "/metrics") => (template.into(), None),

        // Accounts and tokens.
        ("POST", "/api/v1/auth/register") => (
            template.into(),
            Some(json!({"email": "newcomer@example.com", "password": TEST_PASSWORD})),
        ),
        ("POST", "/api/v1/auth/login") => (
            template.into(),
            Some(json!({"email": "owner@example.com", "password": TEST_PASSWORD})),
        ),
        ("POST", "/api/v1/auth/refresh") => (
            template.into(),
            Some(json!({"refresh_token": f.refresh_token})),
        ),
        ("POST", "/api/v1/auth/logout") => (template.into(), Some(json!({}))),
        ("GET", "/api/v1/auth/me" | "/api/v1/auth/api-keys") => (template.into(), None),
        ("POST", "/api/v1/auth/api-keys") => (
            template.into(),
            Some(json!({"name": "deploy", "organization_id": f.organization, "role": "viewer"})),
        ),
        ("DELETE", "/api/v1/auth/api-keys/{id}") => (on(&f.api_key), None),

        // Organizations.
        ("POST", "/api/v1/organizations") => {
            (template.into(), Some(json!({"name": "Somewhere else"})))
        }
        ("GET", "/api/v1/organizations/{id}" | "/api/v1/organizations/{id}/history") => {
            (on(&f.organization), None)
        }
        ("POST", "/api/v1/organizations/{id}/rename") => {
            (on(&f.organization), Some(json!({"name": "Renamed"})))
        }
        ("POST", "/api/v1/organizations/{id}/archive") => (on(&f.organization), None),
        ("POST", "/api/v1/organizations/{id}/members") => (
            on(&f.organization),
            Some(json!({"principal": member, "role": "member"})),
        ),
        ("PUT", "/api/v1/organizations/{id}/members/{principal}") => (
            on(&f.organization).replace("{principal}", &member),
            Some(json!({"role": "admin"})),
        ),
        // The owner, not the viewer: a viewer may remove itself (leave), not others.
        ("DELETE", "/api/v1/organizations/{id}/members/{principal}") => (
            on(&f.organization).replace("{principal}", &format!("user:{}", f.owner)),
            None,
        ),

        // Projects.
        ("POST", "/api/v1/projects") => (
            template.into(),
            Some(json!({"organization_id": f.organization, "name": "Mobile app"})),
        ),
        ("GET", "/api/v1/projects/{id}" | "/api/v1/projects/{id}/history") => {
            (on(&f.project), None)
        }
        ("POST", "/api/v1/projects/{id}/rename") => {
            (on(&f.project), Some(json!({"name": "Renamed"})))
        }
        ("POST", "/api/v1/projects/{id}/archive") => (on(&f.project), None),
        ("PATCH", "/api/v1/projects/{id}/settings") => {
            (on(&f.project), Some(json!({"auto_advance": false})))
        }

        // Tickets.
        ("POST", "/api/v1/tickets") => (
            template.into(),
            Some(json!({"project_id": f.project, "title": "Signup page"})),
        ),
        ("GET", "/api/v1/tickets/{id}" | "/api/v1/tickets/{id}/history") => (on(&f.ticket), None),
        ("PATCH", "/api/v1/tickets/{id}") => (on(&f.ticket), Some(json!({"priority": "HIGH"}))),
        ("POST", "/api/v1/tickets/{id}/transition") => {
            (on(&f.ticket), Some(json!({"to": "analyzing"})))
        }
        ("POST", "/api/v1/tickets/{id}/regress") => (
            on(&f.ticket),
            Some(json!({"feedback": "the form does not submit"})),
        ),
        ("POST", "/api/v1/tickets/{id}/block") => {
            (on(&f.ticket), Some(json!({"reason": "dependency"})))
        }
        ("POST", "/api/v1/tickets/{id}/unblock") => (on(&f.ticket), None),

        // Tasks.
        ("POST", "/api/v1/tasks") => (
            template.into(),
            Some(
                json!({"ticket_id": f.ticket, "title": "Style the form", "task_type": "implement"}),
            ),
        ),
        (
            "GET",
            "/api/v1/tasks/{id}" | "/api/v1/tasks/{id}/history" | "/api/v1/tasks/{id}/logs",
        ) => (on(&f.first_task), None),
        ("POST", "/api/v1/tasks/{id}/logs") => (
            on(&f.first_task),
            Some(json!({"lines": ["cargo build", "ok"]})),
        ),
        ("POST", "/api/v1/tasks/{id}/assign") => {
            (on(&f.first_task), Some(json!({"agent_id": f.agent})))
        }
        ("POST", "/api/v1/tasks/{id}/start") => (on(&f.first_task), None),
        ("POST", "/api/v1/tasks/{id}/progress") => {
            (on(&f.first_task), Some(json!({"message": "halfway"})))
        }
        ("POST", "/api/v1/tasks/{id}/complete") => {
            (on(&f.first_task), Some(json!({"result": {"ok": true}})))
        }
        ("POST", "/api/v1/tasks/{id}/fail") => {
            (on(&f.first_task), Some(json!({"error": "the build broke"})))
        }
        ("POST", "/api/v1/tasks/{id}/cancel") => {
            (on(&f.first_task), Some(json!({"reason": "not needed"})))
        }
        ("POST", "/api/v1/tasks/{id}/verdict") => (
            on(&f.first_task),
            Some(json!({"passed": false, "feedback": "the form loses its input"})),
        ),
        ("POST", "/api/v1/tasks/{id}/discoveries") => (
            on(&f.first_task),
            Some(json!({"kind": "bug", "title": "The form loses its input"})),
        ),
        ("POST", "/api/v1/tasks/{id}/dependencies") => (
            on(&f.second_task),
            Some(json!({"depends_on": f.first_task})),
        ),
        ("DELETE", "/api/v1/tasks/{id}/dependencies/{dep}") => {
            (on(&f.second_task).replace("{dep}", &f.first_task), None)
        }

        // Specs.
        ("POST", "/api/v1/specs") => (
            template.into(),
            Some(json!({"project_id": f.project, "title": "Billing"})),
        ),
        (
            "GET",
            "/api/v1/specs/{id}" | "/api/v1/specs/{id}/history" | "/api/v1/specs/{id}/export",
        ) => (on(&f.spec), None),
        ("POST", "/api/v1/specs/{id}/requirements") => (
            on(&f.spec),
            Some(json!({
                "id": "REQ-AUTH-002",
                "condition": "WHEN a user signs out",
                "action": "THE SYSTEM SHALL revoke the session",
                "acceptance_criteria": ["the token is refused afterwards"],
            })),
        ),
        ("PUT", "/api/v1/specs/{id}/requirements/{req_id}") => (
            on(&f.spec).replace("{req_id}", "REQ-AUTH-001"),
            Some(json!({
                "condition": "WHEN a user signs in twice",
                "action": "THE SYSTEM SHALL issue two token pairs",
                "acceptance_criteria": ["both pairs work"],
            })),
        ),
        ("DELETE", "/api/v1/specs/{id}/requirements/{req_id}") => {
            (on(&f.spec).replace("{req_id}", "REQ-AUTH-001"), None)
        }
        ("POST", "/api/v1/specs/{id}/approve-requirements") => (on(&f.spec), None),
        ("PUT", "/api/v1/specs/{id}/design") => (
            on(&f.spec),
            Some(json!({"architecture": "a token service in front of the API"})),
        ),
        ("PUT", "/api/v1/specs/{id}/plan") => (
            on(&f.spec),
            Some(json!({"tickets": [{"key": "TKT-1", "title": "Tokens",
                                     "tasks": [{"key": "TSK-1", "title": "Issue", "task_type": "implement"}]}]})),
        ),
        (
            "POST",
            "/api/v1/specs/{id}/approve-design"
            | "/api/v1/specs/{id}/approve-plan"
            | "/api/v1/specs/{id}/complete"
            | "/api/v1/specs/{id}/archive",
        ) => (on(&f.spec), None),

        // Agents.
        ("POST", "/api/v1/agents/register") => (
            template.into(),
            Some(json!({"organization_id": f.organization, "agent_type": "monitor"})),
        ),
        (
            "GET",
            "/api/v1/agents/{id}"
            | "/api/v1/agents/{id}/history"
            | "/api/v1/agents/{id}/activity"
            | "/api/v1/agents/{id}/health",
        ) => (on(&f.agent), None),
        ("POST", "/api/v1/agents/{id}/status") => {
            (on(&f.agent), Some(json!({"to": "idle", "reason": "ready"})))
        }
        ("PUT", "/api/v1/agents/{id}/capabilities") => {
            (on(&f.agent), Some(json!({"capabilities": ["rust", "sql"]})))
        }
        ("POST", "/api/v1/agents/{id}/heartbeat") => (on(&f.agent), Some(json!({}))),
        ("POST", "/api/v1/agents/{id}/claim") => (on(&f.agent), Some(json!({"wait_seconds": 0}))),
        ("POST", "/api/v1/guardian/interventions") => (
            template.into(),
            Some(json!({"kind": "priority_override", "task_id": f.first_task,
                        "priority": "HIGH", "reason": "it blocks the release"})),
        ),

        // Billing.
        ("POST", "/api/v1/billing/webhooks/stripe") => (template.into(), Some(json!({}))),
        ("GET", "/api/v1/billing/account") => (
            format!("{template}?organization_id={}", f.organization),
            None,
        ),
        ("POST", "/api/v1/billing/checkout") => (
            template.into(),
            Some(json!({"organization_id": f.organization, "tier": "pro"})),
        ),
        ("POST", "/api/v1/billing/portal") => (
            template.into(),
            Some(json!({"organization_id": f.organization})),
        ),

        // The event log.
        ("GET", "/api/v1/events") => ("/api/v1/events?limit=1000".into(), None),

        // Read models.
        ("GET", "/api/v1/board/view" | "/api/v1/board/stats" | "/api/v1/board/wip-violations") => {
            (format!("{template}?project_id={}", f.project), None)
        }
        ("POST", "/api/v1/board/move") => (
            template.into(),
            Some(json!({"ticket_id": f.ticket, "to": "analyzing"})),
        ),
        ("GET", "/api/v1/graph/dependency-graph/project/{id}") => (on(&f.project), None),
        ("GET", "/api/v1/graph/dependency-graph/ticket/{id}") => (on(&f.ticket), None),
        (
            "GET",
            "/api/v1/graph/dependency-graph/task/{id}/blocked"
            | "/api/v1/graph/dependency-graph/task/{id}/blocking",
        ) => (on(&f.second_task), None),
        ("GET", "/api/v1/timeline") => (format!("{template}?project_id={}", f.project), None),
        ("GET", "/api/v1/agents") => (
            format!("{template}?organization_id={}", f.organization),
            None,
        ),
        ("GET", "/api/v1/monitoring/overview") => {
            (format!("{template}?project_id={}", f.project), None)
        }
        ("GET", "/api/v1/projections") => (template.into(), None),

        // Lists and search (they name nothing: see ADDRESSING_NOTHING).
        (
            "GET",
            "/api/v1/organizations"
            | "/api/v1/projects"
            | "/api/v1/specs"
            | "/api/v1/tickets"
            | "/api/v1/tasks",
        ) => (template.into(), None),
        // Words of the first organization's ticket, task and spec titles.
        ("GET", "/api/v1/search") => (format!("{template}?q=form"), None),

        // Live delivery (WebSocket; see UPGRADE_ONLY).
        ("GET", "/api/v1/ws" | "/api/v1/ws/events") => (template.into(), None),

        _ => panic!(
            "route {method} {template} has no entry: add one to the authorization table \
             (`entry` in tests/e2e/authorization.rs)"
        ),
    }
}

/// Every operation of the served OpenAPI document, with its concrete path and body.
async fn routes(app: &TestApp, fixtures: &Fixtures) -> Vec<Route> {
    let (status, document) = app.send_as(None, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "{document}");
    let paths = document["paths"]
        .as_object()
        .expect("the document has paths");
    let mut routes = Vec::new();
    for (template, item) in paths {
        let operations = item.as_object().expect("a path item is an object");
        for method in operations.keys().filter(|key| {
            matches!(
                key.as_str(),
                "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
            )
        }) {
            let method = method.to_uppercase();
            let (path, body) = entry(&method, template, fixtures);
            routes.push(Route {
                method: Method::from_bytes(method.as_bytes()).expect("an HTTP method"),
                template: template.clone(),
                path,
                body,
            });
        }
    }
    let listed = PUBLIC
        .iter()
        .copied()
        .chain(ADDRESSING_NOTHING.iter().map(|(m, t, _)| (*m, *t)))
        .chain(VIEWER_MAY_WRITE.iter().map(|(m, t, _)| (*m, *t)))
        .chain(UPGRADE_ONLY.iter().copied());
    for (method, template) in listed {
        assert!(
            routes.iter().any(|r| r.is(method, template)),
            "{method} {template} is listed as an exemption but is not in the OpenAPI document"
        );
    }
    routes
}

/// A response: status, content type and body (JSON when it parses).
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

async fn call(app: &TestApp, token: Option<&str>, route: &Route) -> Answer {
    let mut request = app.client.request(
        route.method.clone(),
        format!("{}{}", app.address, route.path),
    );
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &route.body {
        request = request.json(body);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.expect("a readable body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        content_type,
        body,
    }
}

/// The mismatches found so far; reported together at the end of a test.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn push(&mut self, case: &str, route: &Route, what: String) {
        self.0.push(format!("[{case}] {}: {what}", route.name()));
    }

    #[track_caller]
    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} authorization failure(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Calls `route` as `token` and expects `expected`, a refusal when it is 4xx; the call
/// must write nothing either way (every call these tests make is a refusal or a read).
async fn probe(
    app: &TestApp,
    findings: &mut Findings,
    case: &str,
    token: Option<&str>,
    route: &Route,
    expected: StatusCode,
) -> Answer {
    let before = app.event_count().await;
    let answer = call(app, token, route).await;
    let written = app.event_count().await - before;
    if answer.status != expected {
        findings.push(
            case,
            route,
            format!(
                "expected {expected}, got {}: {}",
                answer.status, answer.body
            ),
        );
    } else if expected.is_client_error() {
        if answer.content_type != "application/problem+json" {
            findings.push(
                case,
                route,
                format!(
                    "the refusal is {:?}, not application/problem+json",
                    answer.content_type
                ),
            );
        }
        if answer.body["status"] != expected.as_u16() {
            findings.push(
                case,
                route,
                format!("the problem's status is not {expected}: {}", answer.body),
            );
        }
    }
    if written != 0 {
        findings.push(case, route, format!("{written} event(s) were written"));
    }
    answer
}

/// POSTs `body` as `token`, expecting `expected`; returns the response.
async fn must_post(
    app: &TestApp,
    token: &str,
    path: &str,
    body: Value,
    expected: StatusCode,
) -> Value {
    let (status, response) = app
        .send_as(Some(token), Method::POST, path, Some(body))
        .await;
    assert_eq!(status, expected, "POST {path}: {response}");
    response
}

/// The user id behind an access token.
async fn user_id(app: &TestApp, token: &str) -> Uuid {
    let (status, me) = app
        .send_as(Some(token), Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{me}");
    id_of(&me).parse().expect("a user id")
}

/// The first organization with one resource of each kind (created by the owner over HTTP),
/// a viewer of it, and an intruder with an organization and an API key of their own.
async fn first_organization(app: &TestApp) -> Fixtures {
    let owner_token = app.token.clone().expect("the owner's token");
    let owner = user_id(app, &owner_token).await;
    let (organization, project) = app.organization_and_project().await;
    let created = StatusCode::CREATED;
    let ticket = id_of(
        &must_post(
            app,
            &owner_token,
            "/api/v1/tickets",
            json!({"project_id": project, "title": "Login page"}),
            created,
        )
        .await,
    );
    let first_task = id_of(
        &must_post(
            app,
            &owner_token,
            "/api/v1/tasks",
            json!({"ticket_id": ticket, "title": "Write the form", "task_type": "implement"}),
            created,
        )
        .await,
    );
    let second_task = id_of(
        &must_post(
            app,
            &owner_token,
            "/api/v1/tasks",
            json!({"ticket_id": ticket, "title": "Test the form", "task_type": "test",
                   "depends_on": [first_task]}),
            created,
        )
        .await,
    );
    let spec = id_of(
        &must_post(
            app,
            &owner_token,
            "/api/v1/specs",
            json!({"project_id": project, "title": "Authentication"}),
            created,
        )
        .await,
    );
    must_post(
        app,
        &owner_token,
        &format!("/api/v1/specs/{spec}/requirements"),
        json!({
            "id": "REQ-AUTH-001",
            "condition": "WHEN a user signs in with a valid password",
            "action": "THE SYSTEM SHALL issue a token pair",
            "acceptance_criteria": ["both tokens are returned"],
        }),
        StatusCode::OK,
    )
    .await;
    let agent = id_of(
        &must_post(
            app,
            &owner_token,
            "/api/v1/agents/register",
            json!({"organization_id": organization, "agent_type": "worker",
                   "capabilities": ["rust"]}),
            created,
        )
        .await,
    );
    let api_key = id_of(
        &must_post(
            app,
            &owner_token,
            "/api/v1/auth/api-keys",
            json!({"name": "ci", "organization_id": organization, "role": "viewer"}),
            created,
        )
        .await,
    );
    let refresh_token = app.login("owner@example.com").await["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_string();

    let viewer_token = app.register_and_login("viewer@example.com").await;
    let viewer = user_id(app, &viewer_token).await;
    must_post(
        app,
        &owner_token,
        &format!("/api/v1/organizations/{organization}/members"),
        json!({"principal": format!("user:{viewer}"), "role": "viewer"}),
        StatusCode::OK,
    )
    .await;

    let intruder_token = app.register_and_login("intruder@example.com").await;
    let intruder_organization = id_of(
        &must_post(
            app,
            &intruder_token,
            "/api/v1/organizations",
            json!({"name": "Elsewhere"}),
            created,
        )
        .await,
    );
    let intruder_api_key = id_of(
        &must_post(
            app,
            &intruder_token,
            "/api/v1/auth/api-keys",
            json!({"name": "own", "organization_id": intruder_organization, "role": "viewer"}),
            created,
        )
        .await,
    );

    Fixtures {
        organization,
        project,
        ticket,
        first_task,
        second_task,
        spec,
        agent,
        api_key,
        owner,
        refresh_token,
        viewer,
        viewer_token,
        intruder_token,
        intruder_organization,
        intruder_api_key,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_but_the_public_ones_refuses_a_request_without_a_credential() {
    let app = spawn_app().await;
    let fixtures = first_organization(&app).await;
    let routes = routes(&app, &fixtures).await;
    let mut findings = Findings::default();

    for route in routes.iter().filter(|r| !r.is_public()) {
        probe(
            &app,
            &mut findings,
            "no credential",
            None,
            route,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }

    // The public routes answer a valid request without a credential.
    for route in routes.iter().filter(|r| r.is_public()) {
        let answer = call(&app, None, route).await;
        let expected = if route.is("POST", "/api/v1/auth/register") {
            StatusCode::CREATED
        } else if route.is("POST", "/api/v1/billing/webhooks/stripe") {
            // Unsigned: not from Stripe, refused, nothing written.
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        if answer.status != expected {
            findings.push(
                "public",
                route,
                format!(
                    "expected {expected}, got {}: {}",
                    answer.status, answer.body
                ),
            );
        }
    }
    findings.assert_none();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_but_the_public_ones_refuses_an_expired_access_token() {
    let app = spawn_app().await;
    let fixtures = first_organization(&app).await;
    let routes = routes(&app, &fixtures).await;
    let keys = TokenKeys::new(TEST_SIGNING_SECRET).expect("the test secret is strong");
    let (expired, _) = keys
        .issue(
            fixtures.owner,
            TokenType::Access,
            Utc::now() - chrono::Duration::minutes(20),
        )
        .expect("a signed token");
    let mut findings = Findings::default();

    for route in routes.iter().filter(|r| !r.is_public()) {
        probe(
            &app,
            &mut findings,
            "expired token",
            Some(&expired),
            route,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    findings.assert_none();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_of_another_organization_finds_nothing_of_the_first_one() {
    let app = spawn_app().await;
    let fixtures = first_organization(&app).await;
    let routes = routes(&app, &fixtures).await;
    let token = Some(fixtures.intruder_token.as_str());
    let first = fixtures.organization.as_str();
    let mut findings = Findings::default();

    // Everything that names a resource of the first organization is not found, reads and
    // writes alike.
    for route in routes
        .iter()
        .filter(|r| !r.is_public() && !r.addresses_nothing() && !r.upgrades_only())
    {
        probe(
            &app,
            &mut findings,
            "other organization",
            token,
            route,
            StatusCode::NOT_FOUND,
        )
        .await;
    }

    // The reads that name nothing answer, without the first organization's data.
    for route in routes
        .iter()
        .filter(|r| r.addresses_nothing() && r.is_read())
    {
        let case = "other organization, no leak";
        let answer = probe(&app, &mut findings, case, token, route, StatusCode::OK).await;
        let body = &answer.body;
        let leak = match route.template.as_str() {
            "/api/v1/auth/me" => {
                let memberships = body["memberships"].as_array().cloned().unwrap_or_default();
                let own = memberships
                    .iter()
                    .any(|m| m["organization_id"] == fixtures.intruder_organization.as_str());
                let leaked = memberships.iter().any(|m| m["organization_id"] == first);
                (!own || leaked).then(|| format!("memberships: {body}"))
            }
            "/api/v1/events" => {
                let events = body["events"].as_array().cloned().unwrap_or_default();
                let ids = fixtures.first_organization_ids();
                let leaked: Vec<&Value> = events
                    .iter()
                    .filter(|e| {
                        e["metadata"]["organization_id"] == first
                            || e["aggregate_id"]
                                .as_str()
                                .is_some_and(|id| ids.contains(id))
                    })
                    .collect();
                if events.is_empty() {
                    Some(format!("not even the caller's own events: {body}"))
                } else if !leaked.is_empty() {
                    Some(format!("events of the first organization: {leaked:?}"))
                } else {
                    None
                }
            }
            "/api/v1/projections" => {
                let builds = body.as_array().cloned().unwrap_or_default();
                let detailed = builds.iter().any(|b| {
                    b["error"]
                        .as_str()
                        .is_some_and(|e| e != "stopped at a poison event")
                });
                (builds.is_empty() || detailed).then(|| format!("projections: {body}"))
            }
            "/api/v1/auth/api-keys" => {
                let keys = body.as_array().cloned().unwrap_or_default();
                let own = keys
                    .iter()
                    .any(|k| k["id"] == fixtures.intruder_api_key.as_str());
                let leaked = keys
                    .iter()
                    .any(|k| k["organization_id"] == first || k["id"] == fixtures.api_key.as_str());
                (!own || leaked).then(|| format!("keys: {body}"))
            }
            "/api/v1/organizations"
            | "/api/v1/projects"
            | "/api/v1/specs"
            | "/api/v1/tickets"
            | "/api/v1/tasks"
            | "/api/v1/search" => {
                let rows = body["items"]
                    .as_array()
                    .or_else(|| body["results"].as_array())
                    .cloned()
                    .unwrap_or_default();
                let ids = fixtures.first_organization_ids();
                let leaked: Vec<&Value> = rows
                    .iter()
                    .filter(|row| {
                        row["organization_id"] == first
                            || ["id", "project_id"].iter().any(|field| {
                                row[*field].as_str().is_some_and(|id| ids.contains(id))
                            })
                    })
                    .collect();
                let own = rows
                    .iter()
                    .any(|row| row["id"] == fixtures.intruder_organization.as_str());
                if route.template == "/api/v1/organizations" && !own {
                    Some(format!("not even the caller's own organization: {body}"))
                } else if !leaked.is_empty() {
                    Some(format!("rows of the first organization: {leaked:?}"))
                } else {
                    None
                }
            }
            other => panic!(
                "GET {other} addresses nothing of an organization: say what it must not \
                 reveal in tests/e2e/authorization.rs"
            ),
        };
        if let Some(leak) = leak {
            findings.push(case, route, leak);
        }
    }
    findings.assert_none();

    // The writes that name nothing concern the caller alone; they change state, so they
    // come last.
    own_organization_then_logout(&app, token, &routes, first).await;
    let (status, body) = app.get(&format!("/api/v1/organizations/{first}")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the owner is still signed in: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_reads_every_resource_but_changes_none() {
    let app = spawn_app().await;
    let fixtures = first_organization(&app).await;
    let routes = routes(&app, &fixtures).await;
    let token = Some(fixtures.viewer_token.as_str());
    let first = fixtures.organization.as_str();
    let mut findings = Findings::default();

    // Every write is forbidden and writes nothing. The writes the viewer may make (their
    // own organization, their own logout) change state, so they are tried last.
    for route in routes
        .iter()
        .filter(|r| !r.is_public() && !r.is_read() && !r.viewer_may_write())
    {
        probe(
            &app,
            &mut findings,
            "viewer write",
            token,
            route,
            StatusCode::FORBIDDEN,
        )
        .await;
    }

    // Every read answers.
    for route in routes
        .iter()
        .filter(|r| !r.is_public() && r.is_read() && !r.upgrades_only())
    {
        let case = "viewer read";
        let answer = probe(&app, &mut findings, case, token, route, StatusCode::OK).await;
        let body = &answer.body;
        let wrong = match route.template.as_str() {
            // Viewers cannot manage keys: they see none, not even the first organization's.
            "/api/v1/auth/api-keys" => (body.as_array().is_none_or(|keys| !keys.is_empty()))
                .then(|| format!("a viewer manages no key, so the list must be empty: {body}")),
            "/api/v1/auth/me" => {
                let memberships = body["memberships"].as_array().cloned().unwrap_or_default();
                (!memberships
                    .iter()
                    .any(|m| m["organization_id"] == first && m["role"] == "viewer"))
                .then(|| format!("the viewer's membership is missing: {body}"))
            }
            "/api/v1/events" => {
                let events = body["events"].as_array().cloned().unwrap_or_default();
                (!events
                    .iter()
                    .any(|e| e["metadata"]["organization_id"] == first))
                .then(|| format!("the first organization's events are missing: {body}"))
            }
            _ => None,
        };
        if let Some(wrong) = wrong {
            findings.push(case, route, wrong);
        }
    }
    findings.assert_none();

    // The exempt writes: the viewer's own organization, then the viewer's own logout.
    own_organization_then_logout(&app, token, &routes, first).await;
    let (status, body) = app
        .send_as(token, Method::GET, "/api/v1/auth/me", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "logged out: {body}");
}

/// The writes that concern the caller alone: `POST /api/v1/organizations` creates the
/// caller's own organization, then `POST /api/v1/auth/logout` ends the caller's session.
async fn own_organization_then_logout(
    app: &TestApp,
    token: Option<&str>,
    routes: &[Route],
    first: &str,
) {
    let find = |method: &str, path: &str| {
        routes
            .iter()
            .find(|r| r.is(method, path))
            .unwrap_or_else(|| panic!("the document has {method} {path}"))
    };
    let answer = call(app, token, find("POST", "/api/v1/organizations")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_ne!(answer.body["id"], first, "{}", answer.body);
    let answer = call(app, token, find("POST", "/api/v1/auth/logout")).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_body_in_the_table_is_one_the_server_parses() {
    // The refusals above come before the body is read, so a malformed body in the table
    // would go unnoticed there: the owner sends every write to prove the bodies parse.
    // Earlier writes change the state later ones meet (the organization gets archived, a
    // requirement removed), so 404, 409 and 422 are fine here; 400 and 415 are not.
    let app = spawn_app().await;
    let fixtures = first_organization(&app).await;
    let routes = routes(&app, &fixtures).await;
    let owner = app.token.clone().expect("the owner's token");
    let mut findings = Findings::default();
    let logout = |r: &&Route| r.is("POST", "/api/v1/auth/logout");
    // Its body is Stripe's signed event: tests/e2e/billing.rs sends real ones.
    let signed = |r: &&Route| r.is("POST", "/api/v1/billing/webhooks/stripe");
    for route in routes
        .iter()
        .filter(|r| !r.is_read() && !logout(r) && !signed(r))
    {
        let answer = call(&app, Some(&owner), route).await;
        let unparsed = matches!(
            answer.status,
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        let refused = matches!(
            answer.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        );
        // No Stripe is configured here: checkout answers so, after parsing and authorizing.
        let stripe_absent = answer.body["code"] == "billing_not_configured";
        if unparsed || refused || (answer.status.is_server_error() && !stripe_absent) {
            findings.push(
                "owner write",
                route,
                format!("got {}: {}", answer.status, answer.body),
            );
        }
    }
    // Last, as it ends the owner's session.
    let route = routes.iter().find(logout).expect("the document has logout");
    let answer = call(&app, Some(&owner), route).await;
    if answer.status != StatusCode::NO_CONTENT {
        findings.push(
            "owner write",
            route,
            format!("got {}: {}", answer.status, answer.body),
        );
    }
    findings.assert_none();
}

/// Naming another organization's task as a dependency, or its spec as a ticket's, is
/// refused exactly as a made-up id is (404, same code): the refusal tells a stranger
/// nothing of which ids exist elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn another_organizations_tasks_and_specs_are_named_as_if_they_did_not_exist() {
    let app = spawn_app().await;
    let (organization, project) = app.organization_and_project().await;
    let ticket = app.ticket(&project, "Theirs").await;
    let their_task = app.task(&ticket, "Their task", json!({})).await;
    let (status, spec) = app
        .post(
            "/api/v1/specs",
            json!({"project_id": project, "title": "Their spec"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spec}");
    let their_spec = id_of(&spec);

    let stranger = app.register_and_login("stranger@example.com").await;
    let post = |path: String, body: Value| {
        let stranger = stranger.clone();
        let app = &app;
        async move {
            let (status, body) = app
                .send_as(Some(&stranger), Method::POST, &path, Some(body))
                .await;
            (status, body)
        }
    };
    let created = |(status, body): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::CREATED, "{body}");
        id_of(&body)
    };
    let own_org = created(post("/api/v1/organizations".into(), json!({"name": "Mine"})).await);
    let own_project = created(
        post(
            "/api/v1/projects".into(),
            json!({"organization_id": own_org, "name": "Mine"}),
        )
        .await,
    );
    let own_ticket = created(
        post(
            "/api/v1/tickets".into(),
            json!({"project_id": own_project, "title": "Mine"}),
        )
        .await,
    );
    let own_task = created(
        post(
            "/api/v1/tasks".into(),
            json!({"ticket_id": own_ticket, "title": "My task", "task_type": "implement"}),
        )
        .await,
    );
    let answers = |id: String| {
        let (ticket, task, project) = (own_ticket.clone(), own_task.clone(), own_project.clone());
        let post = &post;
        async move {
            let refusals = [
                post(
                    "/api/v1/tasks".into(),
                    json!({"ticket_id": ticket, "title": "Waits", "task_type": "implement", "depends_on": [id]}),
                )
                .await,
                post(
                    format!("/api/v1/tasks/{task}/dependencies"),
                    json!({"depends_on": id}),
                )
                .await,
                post(
                    "/api/v1/tickets".into(),
                    json!({"project_id": project, "title": "Of a spec", "spec_id": id}),
                )
                .await,
            ];
            refusals.map(|(status, body)| (status, body["code"].clone()))
        }
    };
    let for_made_up = answers(Uuid::now_v7().to_string()).await;
    for (status, _) in &for_made_up {
        assert_eq!(*status, StatusCode::NOT_FOUND, "{for_made_up:?}");
    }
    assert_eq!(answers(their_task).await[..2], for_made_up[..2]);
    assert_eq!(answers(their_spec).await[2], for_made_up[2]);

    // A key limited to one project sees nothing of the organization's other projects:
    // their task is not found for it, where its organization's members are told where
    // it is.
    let sibling = app.project(&organization, "Sibling").await;
    let sibling_ticket = app.ticket(&sibling, "Next door").await;
    let sibling_task = app.task(&sibling_ticket, "Next door", json!({})).await;
    let (status, key) = app
        .post(
            "/api/v1/auth/api-keys",
            json!({"name": "limited", "organization_id": organization, "project_id": project,
                   "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().expect("the key").to_string();
    let waiting = json!({"ticket_id": ticket, "title": "Waits", "task_type": "implement",
                         "depends_on": [sibling_task]});
    let (status, body) = app
        .send_as(
            Some(&key),
            Method::POST,
            "/api/v1/tasks",
            Some(waiting.clone()),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("dependency_not_found")),
        "{body}"
    );
    let (status, body) = app.post("/api/v1/tasks", waiting).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("dependency_in_other_project")),
        "{body}"
    );
}
