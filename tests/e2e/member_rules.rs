//! Who may grant, change and remove which role, and how long an API key's authority lasts
//! (issue #12, items 1 and 2), tried as an adversary would: every permission from the role
//! just below the one that holds it, and every role trying to raise itself.
//!
//! The rules: only owners grant, change or remove the owner role; nobody grants a role above
//! their own, touches a member whose role is above their own, or changes their own role
//! (leaving stays allowed, but for the last owner). An API key acts with the lower of its
//! own role and its creator's current role, and dies with its creator's membership; so do
//! the agent credentials its creator minted.

use omoi_testing::{spawn_app, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// The owner's organization and project, and the owner's user id.
struct Org {
    id: String,
    project: String,
    owner: Uuid,
}

/// A user with a token.
struct User {
    id: Uuid,
    token: String,
}

impl User {
    fn principal(&self) -> String {
        format!("user:{}", self.id)
    }
}

async fn setup(app: &TestApp) -> Org {
    let owner_token = app.token.clone().expect("the owner's token");
    let (id, project) = app.organization_and_project().await;
    Org {
        id,
        project,
        owner: me(app, &owner_token).await,
    }
}

async fn me(app: &TestApp, credential: &str) -> Uuid {
    let (status, body) = send(app, credential, Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("an id")
}

/// The role `/auth/me` reports for `credential` in `org`.
async fn role_seen_by(app: &TestApp, credential: &str, org: &Org) -> Option<String> {
    let (status, body) = send(app, credential, Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["memberships"]
        .as_array()
        .expect("memberships")
        .iter()
        .find(|m| m["organization_id"] == org.id.as_str())
        .and_then(|m| m["role"].as_str())
        .map(str::to_string)
}

async fn send(
    app: &TestApp,
    credential: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.send_as(Some(credential), method, path, body).await
}

/// Registers `email`, and makes them a member of `org` with `role` (as the owner).
async fn member(app: &TestApp, org: &Org, email: &str, role: &str) -> User {
    let user = newcomer(app, email).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/organizations/{}/members", org.id),
            json!({"principal": user.principal(), "role": role}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "adding {email} as {role}: {body}");
    user
}

/// Registers `email`, a member of nothing.
async fn newcomer(app: &TestApp, email: &str) -> User {
    let token = app.register_and_login(email).await;
    User {
        id: me(app, &token).await,
        token,
    }
}

/// An API key of `org` with `role`, created by the holder of `token`: (secret, id).
async fn api_key(app: &TestApp, token: &str, org: &Org, role: &str) -> (String, String) {
    let (status, body) = send(
        app,
        token,
        Method::POST,
        "/api/v1/auth/api-keys",
        Some(json!({"name": format!("{role} key"), "organization_id": org.id, "role": role})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "a {role} key: {body}");
    (
        body["key"].as_str().expect("the key").to_string(),
        body["id"].as_str().expect("an id").to_string(),
    )
}

/// Registers an agent of `org` as the holder of `token`: (agent id, its credential).
async fn agent(app: &TestApp, token: &str, org: &Org) -> (String, String) {
    let (status, body) = send(
        app,
        token,
        Method::POST,
        "/api/v1/agents/register",
        Some(json!({"organization_id": org.id, "agent_type": "worker"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "registering an agent: {body}");
    (
        body["id"].as_str().expect("an id").to_string(),
        body["credential"]
            .as_str()
            .expect("a user gets the agent's credential")
            .to_string(),
    )
}

fn members_path(org: &Org) -> String {
    format!("/api/v1/organizations/{}/members", org.id)
}

fn member_path(org: &Org, principal: &str) -> String {
    format!("/api/v1/organizations/{}/members/{principal}", org.id)
}

/// Sends a request that must be refused with 403 and `code`, writing nothing.
#[track_caller]
fn refused<'a>(
    app: &'a TestApp,
    credential: &'a str,
    method: Method,
    path: String,
    body: Option<Value>,
    code: &'static str,
) -> impl std::future::Future<Output = ()> + 'a {
    let location = std::panic::Location::caller();
    async move {
        let before = app.event_count().await;
        let (status, answer) = send(app, credential, method.clone(), &path, body.clone()).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::FORBIDDEN, Some(code)),
            "{method} {path} {body:?} must be refused ({location}): {answer}"
        );
        assert_eq!(answer["status"], 403, "{answer}");
        assert_eq!(app.event_count().await, before, "a refusal writes nothing");
    }
}

/// The organization's members and their roles, as the owner reads them.
async fn roles(app: &TestApp, org: &Org) -> Value {
    let (status, body) = app.get(&format!("/api/v1/organizations/{}", org.id)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["state"]["members"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_cannot_take_the_organization_over_by_token_or_by_key() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let owner = format!("user:{}", org.owner);
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let plain = member(&app, &org, "member@example.com", "member").await;
    let outsider = newcomer(&app, "outsider@example.com").await;
    let (admin_key, _) = api_key(&app, &admin.token, &org, "admin").await;
    let before = roles(&app, &org).await;

    // The key speaks for its creator: raising the creator is raising oneself.
    for credential in [&admin.token, &admin_key] {
        // Make oneself owner (the first step).
        refused(
            &app,
            credential,
            Method::PUT,
            member_path(&org, &admin.principal()),
            Some(json!({"role": "owner"})),
            "own_role",
        )
        .await;
        // Remove, or demote, the owner (the second step).
        refused(
            &app,
            credential,
            Method::DELETE,
            member_path(&org, &owner),
            None,
            "member_outranks_you",
        )
        .await;
        refused(
            &app,
            credential,
            Method::PUT,
            member_path(&org, &owner),
            Some(json!({"role": "viewer"})),
            "member_outranks_you",
        )
        .await;
        // Add an accomplice as owner, or raise a member to owner.
        refused(
            &app,
            credential,
            Method::POST,
            members_path(&org),
            Some(json!({"principal": outsider.principal(), "role": "owner"})),
            "role_above_own",
        )
        .await;
        refused(
            &app,
            credential,
            Method::PUT,
            member_path(&org, &plain.principal()),
            Some(json!({"role": "owner"})),
            "role_above_own",
        )
        .await;
    }
    // Nor archive the organization: final, and it would freeze the membership with the
    // admin in it.
    for credential in [&admin.token, &admin_key] {
        refused(
            &app,
            credential,
            Method::POST,
            format!("/api/v1/organizations/{}/archive", org.id),
            None,
            "forbidden",
        )
        .await;
    }
    // Nor mint an owner key to do it with.
    refused(
        &app,
        &admin.token,
        Method::POST,
        "/api/v1/auth/api-keys".to_string(),
        Some(json!({"name": "mine", "organization_id": org.id, "role": "owner"})),
        "role_above_own",
    )
    .await;

    assert_eq!(roles(&app, &org).await, before, "nobody's role changed");
    let (status, body) = app.get(&format!("/api/v1/projects/{}", org.project)).await;
    assert_eq!(status, StatusCode::OK, "the owner still owns it: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_role_raises_or_changes_itself() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let second_owner = member(&app, &org, "owner2@example.com", "owner").await;
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let plain = member(&app, &org, "member@example.com", "member").await;
    let executor = member(&app, &org, "executor@example.com", "agent_executor").await;
    let viewer = member(&app, &org, "viewer@example.com", "viewer").await;
    let chain = ["owner", "admin", "member", "agent_executor", "viewer"];

    // Everyone who may manage members is refused their own role, up or down; the others
    // lack the permission altogether.
    for (user, own, code) in [
        (&second_owner, "owner", "own_role"),
        (&admin, "admin", "own_role"),
        (&plain, "member", "forbidden"),
        (&executor, "agent_executor", "forbidden"),
        (&viewer, "viewer", "forbidden"),
    ] {
        for role in chain.iter().filter(|r| **r != own) {
            refused(
                &app,
                &user.token,
                Method::PUT,
                member_path(&org, &user.principal()),
                Some(json!({"role": role})),
                code,
            )
            .await;
        }
        assert_eq!(
            role_seen_by(&app, &user.token, &org).await.as_deref(),
            Some(own)
        );
    }

    // A key does not make its creator leave without the right to manage members.
    let (viewer_key, _) = api_key(&app, &admin.token, &org, "viewer").await;
    refused(
        &app,
        &viewer_key,
        Method::DELETE,
        member_path(&org, &admin.principal()),
        None,
        "forbidden",
    )
    .await;

    // Leaving stays allowed (here, for an owner that is not the last one).
    let (status, body) = send(
        &app,
        &second_owner.token,
        Method::DELETE,
        &member_path(&org, &second_owner.principal()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "an owner may leave: {body}");
    let (status, body) = send(
        &app,
        &admin.token,
        Method::DELETE,
        &member_path(&org, &admin.principal()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "an admin may leave: {body}");
    // So may a member and an agent executor, who manage no members, with their own token.
    for user in [&plain, &executor, &viewer] {
        let (status, body) = send(
            &app,
            &user.token,
            Method::DELETE,
            &member_path(&org, &user.principal()),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "anyone may leave: {body}");
        assert_eq!(role_seen_by(&app, &user.token, &org).await, None);
    }
    // ... but for the last owner.
    let (status, body) = app
        .delete(&member_path(&org, &format!("user:{}", org.owner)))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("last_owner")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_membership_permission_is_refused_to_the_role_just_below_it() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let plain = member(&app, &org, "member@example.com", "member").await;
    let executor = member(&app, &org, "executor@example.com", "agent_executor").await;
    let viewer = member(&app, &org, "viewer@example.com", "viewer").await;
    let owner_token = app.token.clone().expect("the owner's token");

    // Owner-only: granting, changing and removing the owner role. Tried by an admin.
    let candidate = member(&app, &org, "candidate@example.com", "member").await;
    let outsider = newcomer(&app, "outsider@example.com").await;
    refused(
        &app,
        &admin.token,
        Method::POST,
        members_path(&org),
        Some(json!({"principal": outsider.principal(), "role": "owner"})),
        "role_above_own",
    )
    .await;
    refused(
        &app,
        &admin.token,
        Method::PUT,
        member_path(&org, &candidate.principal()),
        Some(json!({"role": "owner"})),
        "role_above_own",
    )
    .await;
    // The owner may: a second owner...
    let (status, body) = app
        .put(
            &member_path(&org, &candidate.principal()),
            json!({"role": "owner"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "an owner grants owner: {body}");
    // ... whom an admin may neither demote nor remove.
    refused(
        &app,
        &admin.token,
        Method::PUT,
        member_path(&org, &candidate.principal()),
        Some(json!({"role": "member"})),
        "member_outranks_you",
    )
    .await;
    refused(
        &app,
        &admin.token,
        Method::DELETE,
        member_path(&org, &candidate.principal()),
        None,
        "member_outranks_you",
    )
    .await;
    // An owner may demote or remove another owner.
    let (status, body) = app
        .put(
            &member_path(&org, &candidate.principal()),
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "an owner demotes an owner: {body}");

    // Admin-level: granting, changing and removing admin (and every role below). Tried by
    // a member, who lacks `org:members:write` altogether.
    for (principal, role) in [
        (outsider.principal(), "admin"),
        (outsider.principal(), "viewer"),
    ] {
        refused(
            &app,
            &plain.token,
            Method::POST,
            members_path(&org),
            Some(json!({"principal": principal, "role": role})),
            "forbidden",
        )
        .await;
    }
    refused(
        &app,
        &plain.token,
        Method::PUT,
        member_path(&org, &viewer.principal()),
        Some(json!({"role": "admin"})),
        "forbidden",
    )
    .await;
    refused(
        &app,
        &plain.token,
        Method::PUT,
        member_path(&org, &candidate.principal()),
        Some(json!({"role": "viewer"})),
        "forbidden",
    )
    .await;
    refused(
        &app,
        &plain.token,
        Method::DELETE,
        member_path(&org, &candidate.principal()),
        None,
        "forbidden",
    )
    .await;
    // An admin may grant its own role and manage its peers and those below.
    let (status, body) = send(
        &app,
        &admin.token,
        Method::PUT,
        &member_path(&org, &viewer.principal()),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "an admin grants admin: {body}");
    let (status, body) = send(
        &app,
        &admin.token,
        Method::PUT,
        &member_path(&org, &viewer.principal()),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "an admin demotes an admin: {body}");
    let (status, body) = send(
        &app,
        &admin.token,
        Method::POST,
        &members_path(&org),
        Some(json!({"principal": outsider.principal(), "role": "member"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "an admin adds a member: {body}");

    // API keys: an owner key needs an owner (tried by an admin); any key needs
    // `apikey:write` (tried by a member).
    for (token, role, expected, code) in [
        (
            &admin.token,
            "owner",
            StatusCode::FORBIDDEN,
            Some("role_above_own"),
        ),
        (
            &plain.token,
            "admin",
            StatusCode::FORBIDDEN,
            Some("forbidden"),
        ),
        (
            &plain.token,
            "member",
            StatusCode::FORBIDDEN,
            Some("forbidden"),
        ),
        (&owner_token, "owner", StatusCode::CREATED, None),
        (&admin.token, "admin", StatusCode::CREATED, None),
    ] {
        let (status, body) = send(
            &app,
            token,
            Method::POST,
            "/api/v1/auth/api-keys",
            Some(json!({"name": "k", "organization_id": org.id, "role": role})),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (expected, code),
            "a {role} key: {body}"
        );
    }

    // Agent credentials (`agent:write`, a member's): refused to the agent executor below.
    let (status, body) = send(
        &app,
        &executor.token,
        Method::POST,
        "/api/v1/agents/register",
        Some(json!({"organization_id": org.id, "agent_type": "worker"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (agent_id, _) = agent(&app, &plain.token, &org).await;
    // An agent executor's own permission (`agent:heartbeat`): refused to the viewer below.
    let heartbeat = format!("/api/v1/agents/{agent_id}/heartbeat");
    let (status, body) = send(
        &app,
        &viewer.token,
        Method::POST,
        &heartbeat,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = send(
        &app,
        &executor.token,
        Method::POST,
        &heartbeat,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Admin-only work (`project:write`, `org:write`) is refused to the member below.
    let (status, body) = send(
        &app,
        &plain.token,
        Method::POST,
        "/api/v1/projects",
        Some(json!({"organization_id": org.id, "name": "Mine"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = send(
        &app,
        &plain.token,
        Method::POST,
        &format!("/api/v1/organizations/{}/rename", org.id),
        Some(json!({"name": "Mine"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Owner-only work beyond membership (`org:delete`: archiving the organization) is
    // refused to an admin in `an_admin_cannot_take_the_organization_over_by_token_or_by_key`.
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_member_revokes_their_keys_and_agent_credentials_at_once() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let owner_token = app.token.clone().expect("the owner's token");
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let (admin_key, admin_key_id) = api_key(&app, &admin.token, &org, "admin").await;
    let (viewer_key, _) = api_key(&app, &admin.token, &org, "viewer").await;
    let (agent_id, credential) = agent(&app, &admin.token, &org).await;
    let (owner_key, _) = api_key(&app, &owner_token, &org, "admin").await;
    // The admin's own organization, and a key of it: not the owner's business.
    let (status, elsewhere) = send(
        &app,
        &admin.token,
        Method::POST,
        "/api/v1/organizations",
        Some(json!({"name": "Own"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{elsewhere}");
    let elsewhere = Org {
        id: elsewhere["id"].as_str().expect("an id").to_string(),
        project: String::new(),
        owner: admin.id,
    };
    let (own_key, _) = api_key(&app, &admin.token, &elsewhere, "owner").await;

    let org_path = format!("/api/v1/organizations/{}", org.id);
    let heartbeat = format!("/api/v1/agents/{agent_id}/heartbeat");
    // Every credential works (and is now in the credential cache).
    for key in [&admin_key, &viewer_key, &owner_key] {
        let (status, body) = send(&app, key, Method::GET, &org_path, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = send(&app, &credential, Method::POST, &heartbeat, Some(json!({}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = app.delete(&member_path(&org, &admin.principal())).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // At once: the removed admin's keys and the agent's credential they minted.
    for key in [&admin_key, &viewer_key] {
        let (status, body) = send(&app, key, Method::GET, &org_path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, body) = send(&app, &credential, Method::POST, &heartbeat, Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Revoked for good (not merely refused): the rows say so.
    let revoked: Vec<(String, bool)> = sqlx::query_as(
        "select name, revoked_at is not null from api_keys
          where created_by = $1 and organization_id = $2::text::uuid order by name",
    )
    .bind(admin.id)
    .bind(&org.id)
    .fetch_all(&app.database.pool)
    .await
    .expect("the admin's keys");
    assert_eq!(revoked.len(), 3, "{revoked:?}");
    assert!(revoked.iter().all(|(_, r)| *r), "{revoked:?}");
    let (_, listed) = app.get("/api/v1/auth/api-keys").await;
    let listed = listed.as_array().expect("keys").clone();
    let admin_key_listed = listed
        .iter()
        .find(|k| k["id"] == admin_key_id.as_str())
        .expect("the owner lists the admin's key");
    assert!(
        !admin_key_listed["revoked_at"].is_null(),
        "{admin_key_listed}"
    );

    // Untouched: the owner's key, and the removed admin's keys elsewhere.
    let (status, body) = send(&app, &owner_key, Method::GET, &org_path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        &app,
        &own_key,
        Method::GET,
        &format!("/api/v1/organizations/{}", elsewhere.id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Coming back does not revive them.
    let (status, body) = app
        .post(
            &members_path(&org),
            json!({"principal": admin.principal(), "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(&app, &admin_key, Method::GET, &org_path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_members_keys_act_with_at_most_their_new_role() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let (admin_key, _) = api_key(&app, &admin.token, &org, "admin").await;
    let (agent_id, credential) = agent(&app, &admin.token, &org).await;
    let heartbeat = format!("/api/v1/agents/{agent_id}/heartbeat");
    let new_project = |name: &str| json!({"organization_id": org.id, "name": name});
    let new_ticket = json!({"project_id": org.project, "title": "T"});

    let (status, body) = send(
        &app,
        &admin_key,
        Method::POST,
        "/api/v1/projects",
        Some(new_project("One")),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "an admin key is an admin: {body}"
    );

    // Demoted to member: the admin key is a member key from the next request on.
    let (status, body) = app
        .put(
            &member_path(&org, &admin.principal()),
            json!({"role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        &app,
        &admin_key,
        Method::POST,
        "/api/v1/projects",
        Some(new_project("Two")),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "an admin-only route refuses it: {body}"
    );
    assert_eq!(
        role_seen_by(&app, &admin_key, &org).await.as_deref(),
        Some("member")
    );
    let (status, body) = send(
        &app,
        &admin_key,
        Method::POST,
        "/api/v1/tickets",
        Some(new_ticket.clone()),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a member's work it may: {body}"
    );
    // Nor can the key restore its creator.
    refused(
        &app,
        &admin_key,
        Method::PUT,
        member_path(&org, &admin.principal()),
        Some(json!({"role": "admin"})),
        "forbidden",
    )
    .await;
    let (status, body) = send(&app, &credential, Method::POST, &heartbeat, Some(json!({}))).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a member covers an agent executor: {body}"
    );

    // Demoted to viewer: the key only reads, and the agent's credential can no longer
    // heartbeat (an agent executor is above a viewer).
    let (status, body) = app
        .put(
            &member_path(&org, &admin.principal()),
            json!({"role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        &app,
        &admin_key,
        Method::POST,
        "/api/v1/tickets",
        Some(new_ticket.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = send(&app, &credential, Method::POST, &heartbeat, Some(json!({}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        role_seen_by(&app, &credential, &org).await.as_deref(),
        Some("viewer")
    );

    // Promoted again: a clamp, not a revocation — the key is an admin key once more.
    let (status, body) = app
        .put(
            &member_path(&org, &admin.principal()),
            json!({"role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = send(
        &app,
        &admin_key,
        Method::POST,
        "/api/v1/projects",
        Some(new_project("Three")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_super_admins_key_lasts_as_long_as_the_super_admin() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let staff = newcomer(&app, "staff@example.com").await;
    sqlx::query("update users set is_super_admin = true where id = $1")
        .bind(staff.id)
        .execute(&app.database.pool)
        .await
        .expect("a super admin");
    // A new login: the first token's caller may be cached without the flag.
    let staff_token = app.login("staff@example.com").await["access_token"]
        .as_str()
        .expect("a token")
        .to_string();
    let (key, _) = api_key(&app, &staff_token, &org, "owner").await;
    let org_path = format!("/api/v1/organizations/{}", org.id);
    let (status, body) = send(&app, &key, Method::GET, &org_path, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a super admin acts as an owner: {body}"
    );

    sqlx::query("update users set is_super_admin = false where id = $1")
        .bind(staff.id)
        .execute(&app.database.pool)
        .await
        .expect("no longer a super admin");
    // Changed behind the server's back: the credential cache (1 s) may serve it until then.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = send(&app, &key, Method::GET, &org_path, None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "its creator is no member here: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_revocation_commits_or_rolls_back_with_the_removal() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let (key, _) = api_key(&app, &admin.token, &org, "member").await;
    let live_keys = || {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from api_keys where created_by = $1 and revoked_at is null",
        )
        .bind(admin.id)
    };
    // The MemberRemoved the command bus would append, appended by hand in a transaction.
    let append = "insert into events (aggregate_type, aggregate_id, sequence, event_type,
                                      event_version, payload, metadata)
                  select 'Organization', $1, max(sequence) + 1, 'MemberRemoved', '1',
                         jsonb_build_object('MemberRemoved', jsonb_build_object('principal', $2::text)),
                         '{}'::jsonb
                    from events where aggregate_type = 'Organization' and aggregate_id = $1";

    let mut tx = app.database.pool.begin().await.expect("a transaction");
    sqlx::query(append)
        .bind(&org.id)
        .bind(admin.principal())
        .execute(&mut *tx)
        .await
        .expect("appending");
    let inside: i64 = live_keys().fetch_one(&mut *tx).await.expect("count");
    assert_eq!(inside, 0, "revoked by the append itself");
    tx.rollback().await.expect("rolling back");
    let after_rollback: i64 = live_keys()
        .fetch_one(&app.database.pool)
        .await
        .expect("count");
    assert_eq!(after_rollback, 1, "no removal, no revocation");
    let (status, body) = send(
        &app,
        &key,
        Method::GET,
        &format!("/api/v1/organizations/{}", org.id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A key or an agent credential made while its creator is being removed — the removal
/// appended in a transaction not yet committed — waits for the removal and is refused
/// (404), where it was written unrevoked: it outlived the removal, and worked again once
/// its creator was added back.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_made_while_its_creator_is_being_removed_does_not_outlive_the_removal() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let live_keys = || {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from api_keys where created_by = $1 and revoked_at is null",
        )
        .bind(admin.id)
        .fetch_one(&app.database.pool)
    };
    let mut removal = app.database.pool.begin().await.expect("a transaction");
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         select 'Organization', $1, max(sequence) + 1, 'MemberRemoved', '1',
                jsonb_build_object('MemberRemoved', jsonb_build_object('principal', $2::text)),
                '{}'::jsonb
           from events where aggregate_type = 'Organization' and aggregate_id = $1",
    )
    .bind(&org.id)
    .bind(admin.principal())
    .execute(&mut *removal)
    .await
    .expect("the removal appended");

    let make_key = send(
        &app,
        &admin.token,
        Method::POST,
        "/api/v1/auth/api-keys",
        Some(json!({"name": "late", "organization_id": org.id, "role": "member"})),
    );
    let register = send(
        &app,
        &admin.token,
        Method::POST,
        "/api/v1/agents/register",
        Some(json!({"organization_id": org.id, "agent_type": "worker"})),
    );
    let commit_once_both_wait = async {
        // Both wait for the removal's lock on the membership.
        app.until_lock_waiters(2).await;
        removal.commit().await.expect("the removal committed");
    };
    let ((key_status, key_body), (agent_status, agent_body), ()) =
        tokio::join!(make_key, register, commit_once_both_wait);
    assert_eq!(key_status, StatusCode::NOT_FOUND, "{key_body}");
    assert_eq!(agent_status, StatusCode::NOT_FOUND, "{agent_body}");
    assert_eq!(live_keys().await.expect("count"), 0);

    // Added back, they have no key of before.
    let (status, body) = app
        .post(
            &members_path(&org),
            json!({"principal": admin.principal(), "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(live_keys().await.expect("count"), 0);
}

/// A member is someone: a user who exists, or an agent of the organization. Anyone else
/// — a made-up user, another organization's agent — is 422 `unknown_principal` and
/// nothing is written; a member lacking `org:members:write` learns nothing of who exists
/// (403 first).
#[tokio::test(flavor = "multi_thread")]
async fn only_an_existing_user_or_the_organizations_own_agent_becomes_a_member() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let owner = app.token.clone().expect("the owner's token");
    let plain = member(&app, &org, "plain@example.com", "member").await;
    let (own_agent, _) = agent(&app, &owner, &org).await;
    let (elsewhere, _) = app.organization_and_project().await;
    let elsewhere = Org {
        id: elsewhere,
        project: String::new(),
        owner: org.owner,
    };
    let (foreign_agent, _) = agent(&app, &owner, &elsewhere).await;

    let before = app.event_count().await;
    for principal in [
        format!("user:{}", Uuid::now_v7()),
        format!("agent:{}", Uuid::now_v7()),
        format!("agent:{foreign_agent}"),
    ] {
        let (status, answer) = app
            .post(
                &members_path(&org),
                json!({"principal": principal, "role": "member"}),
            )
            .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_principal")),
            "{principal}: {answer}"
        );
        refused(
            &app,
            &plain.token,
            Method::POST,
            members_path(&org),
            Some(json!({"principal": principal, "role": "viewer"})),
            "forbidden",
        )
        .await;
    }
    assert_eq!(app.event_count().await, before, "nothing written");

    let (status, answer) = app
        .post(
            &members_path(&org),
            json!({"principal": format!("agent:{own_agent}"), "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// A member's writes are refused to the role just below it — an `agent_executor` user,
/// and an agent's own credential — and an admin's organization and project writes to a
/// member: 403 `forbidden`, nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn the_work_of_each_role_is_refused_to_the_role_just_below_it() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let plain = member(&app, &org, "member@example.com", "member").await;
    let executor = member(&app, &org, "executor@example.com", "agent_executor").await;
    let owner_token = app.token.clone().expect("the owner's token");
    let (_, agent_credential) = agent(&app, &owner_token, &org).await;
    let ticket = app.ticket(&org.project, "Work").await;
    let (status, spec) = app
        .post(
            "/api/v1/specs",
            json!({"project_id": org.project, "title": "Sign-in"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spec}");
    let spec = spec["id"].as_str().expect("an id").to_string();

    // A member's: tickets, specs and their approval, the board.
    let members_writes = [
        (
            Method::POST,
            "/api/v1/tickets".to_string(),
            json!({"project_id": org.project, "title": "Mine"}),
        ),
        (
            Method::POST,
            "/api/v1/board/move".to_string(),
            json!({"ticket_id": ticket, "to": "analyzing"}),
        ),
        (
            Method::POST,
            "/api/v1/specs".to_string(),
            json!({"project_id": org.project, "title": "Mine"}),
        ),
        (
            Method::POST,
            format!("/api/v1/specs/{spec}/approve-requirements"),
            json!({}),
        ),
    ];
    for credential in [&executor.token, &agent_credential] {
        for (method, path, body) in &members_writes {
            refused(
                &app,
                credential,
                method.clone(),
                path.clone(),
                Some(body.clone()),
                "forbidden",
            )
            .await;
        }
    }
    // An admin's: the project's name, settings and archival, and the organization's
    // billing.
    let admins_writes = [
        (
            Method::POST,
            format!("/api/v1/projects/{}/rename", org.project),
            json!({"name": "Mine"}),
        ),
        (
            Method::PATCH,
            format!("/api/v1/projects/{}/settings", org.project),
            json!({"auto_advance": false}),
        ),
        (
            Method::POST,
            format!("/api/v1/projects/{}/archive", org.project),
            json!({}),
        ),
        (
            Method::POST,
            "/api/v1/billing/checkout".to_string(),
            json!({"organization_id": org.id, "tier": "pro"}),
        ),
        (
            Method::POST,
            "/api/v1/billing/portal".to_string(),
            json!({"organization_id": org.id}),
        ),
    ];
    for (method, path, body) in admins_writes {
        refused(&app, &plain.token, method, path, Some(body), "forbidden").await;
    }
}

/// An admin does not disable what an owner created: the owner's API key and the credential
/// of the owner's agent are refused to an admin, by token and by key, with
/// `member_outranks_you`, and keep working; an admin still revokes another admin's key and
/// its own, and the owner its own.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_cannot_revoke_the_keys_and_agents_an_owner_created() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let owner_token = app.token.clone().expect("the owner's token");
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let peer = member(&app, &org, "peer@example.com", "admin").await;
    let (owner_key, owner_key_id) = api_key(&app, &owner_token, &org, "member").await;
    let (agent_id, agent_credential) = agent(&app, &owner_token, &org).await;
    let (status, keys) = app.get("/api/v1/auth/api-keys").await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let agent_key_id = keys
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["role"] == "agent_executor" && k["created_by"] == org.owner.to_string())
        .and_then(|k| k["id"].as_str())
        .expect("the owner's agent's credential")
        .to_string();
    let (admin_key, admin_key_id) = api_key(&app, &admin.token, &org, "admin").await;
    let revoke = |id: &str| format!("/api/v1/auth/api-keys/{id}");

    for credential in [&admin.token, &admin_key] {
        for id in [&owner_key_id, &agent_key_id] {
            refused(
                &app,
                credential,
                Method::DELETE,
                revoke(id),
                None,
                "member_outranks_you",
            )
            .await;
        }
    }
    let (status, body) = send(&app, &owner_key, Method::GET, "/api/v1/auth/me", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the owner's key still works: {body}"
    );
    let heartbeat = format!("/api/v1/agents/{agent_id}/heartbeat");
    let (status, body) = send(&app, &agent_credential, Method::POST, &heartbeat, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the owner's agent still works: {body}"
    );

    let (peer_key, peer_key_id) = api_key(&app, &peer.token, &org, "member").await;
    for (id, credential) in [(&peer_key_id, &peer_key), (&admin_key_id, &admin_key)] {
        let (status, body) = send(&app, &admin.token, Method::DELETE, &revoke(id), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _) = send(&app, credential, Method::GET, "/api/v1/auth/me", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked key is refused");
    }
    let (status, body) = send(
        &app,
        &owner_token,
        Method::DELETE,
        &revoke(&owner_key_id),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// An archived organization's membership is frozen — nobody can be removed from it, so
/// none of their keys revoked that way — and no new authority is handed out in it: an
/// API key is refused as an agent's registration is (409 `organization_archived`), to its
/// owner and its admin alike. Before, an admin could still mint keys there.
#[tokio::test(flavor = "multi_thread")]
async fn no_api_key_is_created_in_an_archived_organization() {
    let app = spawn_app().await;
    let org = setup(&app).await;
    let admin = member(&app, &org, "admin@example.com", "admin").await;
    let owner = app.token.clone().expect("the owner's token");
    let (status, body) = app
        .post(
            &format!("/api/v1/organizations/{}/archive", org.id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let keys = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from api_keys")
            .fetch_one(&app.database.pool)
            .await
            .expect("a count")
    };
    for credential in [&owner, &admin.token] {
        let before = keys().await;
        let (status, answer) = send(
            &app,
            credential,
            Method::POST,
            "/api/v1/auth/api-keys",
            Some(json!({"name": "late", "organization_id": org.id, "role": "member"})),
        )
        .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::CONFLICT, Some("organization_archived")),
            "{answer}"
        );
        assert_eq!(keys().await, before, "a refusal writes no key");
    }
    let (status, keys) = send(&app, &owner, Method::GET, "/api/v1/auth/api-keys", None).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(keys.as_array().map(Vec::len), Some(0), "{keys}");
}
