//! The harness shared by the end-to-end tests and the benchmarks.
//!
//! Tests talk to a real PostgreSQL. With `OMOI_TEST_DATABASE_URL` (or `DATABASE_URL`) set,
//! that server is used; otherwise one cluster of our own is started for the whole test run
//! in [`test_cluster_dir`] (shared by the test processes through a file lock; stopped by
//! `scripts/test`). Every test gets a fresh, migrated database of its own (a copy of a
//! migrated template), dropped when the test passes (a failed test's database is kept, its
//! name printed).

use std::fs;
use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;

use anyhow::Context;
use omoi_store::embedded::EmbeddedPostgres;
use omoi_store::{db, CommandBus};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use uuid::Uuid;

use omoi::settings::Settings;

pub mod browser;

/// Where the shared test cluster lives: `OMOI_TEST_CLUSTER_DIR` (set by `scripts/test`,
/// which puts it in memory when the machine has room), or `target/omoi-test-pg`.
/// `scripts/test` stops it at exit.
pub fn test_cluster_dir() -> PathBuf {
    // A relative path is the workspace's: each test binary runs in its own package's.
    std::env::var_os("OMOI_TEST_CLUSTER_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || target_dir().join("omoi-test-pg"),
            |dir| target_dir().join("..").join(dir),
        )
}

/// The workspace's `target/`.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// A TCP port of the loopback that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// URL of a server on which test databases may be created.
pub fn admin_url() -> anyhow::Result<String> {
    for variable in ["OMOI_TEST_DATABASE_URL", "DATABASE_URL"] {
        if let Some(url) = std::env::var(variable).ok().filter(|u| !u.is_empty()) {
            return Ok(url);
        }
    }
    let cluster = shared_cluster()?;
    Ok(cluster.url("postgres")?)
}

/// Starts the shared cluster unless another test process already has.
fn shared_cluster() -> anyhow::Result<EmbeddedPostgres> {
    let dir = test_cluster_dir();
    fs::create_dir_all(&dir)?;
    let lock = fs::File::create(dir.join("lock"))?;
    lock.lock().context("locking the test cluster")?;
    let port_file = dir.join("port");
    let port = match fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
    {
        Some(port) => port,
        None => {
            let port = free_port();
            fs::write(&port_file, port.to_string())?;
            port
        }
    };
    let cluster = EmbeddedPostgres::new(dir.join("data"), port)?.with_options(&[
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
    ]);
    cluster.start()?;
    lock.unlock()?;
    Ok(cluster)
}

/// A fresh, migrated database, dropped when its last clone goes unless the test failed.
#[derive(Clone)]
pub struct TestDatabase {
    pub name: String,
    pub options: PgConnectOptions,
    pub url: String,
    pub pool: PgPool,
    _dropped_after: std::sync::Arc<DropWhenDone>,
}

/// Drops a test database once nothing uses it: several hundred tests each leave a migrated
/// database of about 10 MB, which filled a CI machine's disk. A failed test keeps its
/// database for a look at what it left (its name is printed).
struct DropWhenDone {
    admin_url: String,
    name: String,
}

impl Drop for DropWhenDone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept the failed test's database {}", self.name);
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its
        // own with a runtime of its own. `with (force)` (PostgreSQL 13+) ends the server
        // connections the test left open.
        let dropped = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = db::connect(&admin_url, 1).await?;
                sqlx::query(&format!("drop database if exists {name} with (force)"))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error:#}", self.name);
        }
    }
}

impl TestDatabase {
    /// Creates and migrates a database with a random name.
    pub async fn create() -> anyhow::Result<Self> {
        let admin_url = tokio::task::spawn_blocking(admin_url).await??;
        Self::create_on(&admin_url).await
    }

    /// Creates a migrated database with a random name on the server of `admin_url`: a
    /// copy of a migrated template ([`create_migrated`]).
    pub async fn create_on(admin_url: &str) -> anyhow::Result<Self> {
        let admin_url = admin_url.to_string();
        let admin = db::connect(&admin_url, 1).await?;
        let name = format!("omoi_test_{}", Uuid::new_v4().simple());
        create_migrated(&admin, &admin_url, &name).await?;
        admin.close().await;
        let options = db::session(admin_url.parse::<PgConnectOptions>()?.database(&name));
        let url = replace_database(&admin_url, &name);
        let pool = Self::pool(&options, 16).await?;
        Ok(Self {
            _dropped_after: std::sync::Arc::new(DropWhenDone {
                admin_url,
                name: name.clone(),
            }),
            name,
            options,
            url,
            pool,
        })
    }

    /// Another pool on the same database (as a second process would have).
    pub async fn pool(options: &PgConnectOptions, size: u32) -> anyhow::Result<PgPool> {
        // A test waits for a connection as long as sqlx's default (30 s): the suite's
        // processes share two cores.
        Ok(db::pool_options(size)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(options.clone())
            .await?)
    }
}

/// Creates database `name` as a copy of a template migrated by this code's migrations,
/// made once per server and set of migrations. Copying a template takes a tenth of a
/// second where creating an empty database and migrating it took twice that, most of it
/// the server's, and the suite creates hundreds. Test processes start together: the lock
/// lets one make the template while the others wait, and is held across each copy, so
/// that a run of other migrations on the same server drops it only between copies.
async fn create_migrated(admin: &PgPool, admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    for migration in db::MIGRATOR.iter() {
        std::hash::Hash::hash(&(migration.version, &migration.checksum), &mut digest);
    }
    let template = format!(
        "omoi_test_template_{:016x}",
        std::hash::Hasher::finish(&digest)
    );
    let mut conn = admin.acquire().await?;
    sqlx::query("select pg_advisory_lock(hashtext('omoi_test_template'))")
        .execute(&mut *conn)
        .await?;
    let created = async {
        make_template(&mut conn, admin_url, &template).await?;
        sqlx::query(&format!("create database {name} template {template}"))
            .execute(&mut *conn)
            .await?;
        anyhow::Ok(())
    }
    .await;
    sqlx::query("select pg_advisory_unlock(hashtext('omoi_test_template'))")
        .execute(&mut *conn)
        .await?;
    created
}

/// Makes the template `name` unless it is made: created, migrated, then marked a template
/// that nobody may connect to (a copy fails while its source has connections). One left
/// half made by a process that died is made again; our templates of other migrations (an
/// older checkout's) are dropped.
async fn make_template(
    conn: &mut sqlx::PgConnection,
    admin_url: &str,
    name: &str,
) -> anyhow::Result<()> {
    let made: Option<bool> =
        sqlx::query_scalar("select datistemplate from pg_database where datname = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    if made == Some(true) {
        return Ok(());
    }
    let others: Vec<String> = sqlx::query_scalar(
        "select datname from pg_database
          where datname like 'omoi\\_test\\_template\\_%' and pg_get_userbyid(datdba) = current_user",
    )
    .fetch_all(&mut *conn)
    .await?;
    for other in others {
        sqlx::query(&format!("alter database {other} is_template false"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!("drop database {other} with (force)"))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(&format!("create database {name}"))
        .execute(&mut *conn)
        .await?;
    let pool = db::connect(&replace_database(admin_url, name), 1).await?;
    db::migrate(&pool).await?;
    pool.close().await;
    sqlx::query(&format!(
        "alter database {name} with is_template true allow_connections false"
    ))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// The token-signing secret of every test server (tokens survive a restart in a test).
pub const TEST_SIGNING_SECRET: &[u8] = b"omoi-test-signing-secret-0123456789abcdef";

/// A running server on a random port, with a fresh database. Requests made through its
/// helpers carry `token` (the owner's access token after [`spawn_app`]).
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub database: TestDatabase,
    /// Sent as `Authorization: Bearer` by the request helpers.
    pub token: Option<String>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    projections: Option<JoinHandle<()>>,
    /// What the server's projection runner reports.
    pub projection_stats: std::sync::Arc<omoi_projections::runner::RunnerStats>,
}

/// Starts a server on a fresh database, with a registered user whose token the request
/// helpers send.
pub async fn spawn_app() -> TestApp {
    let database = TestDatabase::create().await.expect("a fresh test database");
    let mut app = spawn_app_on(database).await;
    app.token = Some(app.register_and_login("owner@example.com").await);
    app
}

/// A writer that took its place in the log first and commits last: a transaction that
/// appended one `Probe` event and stays open until the caller commits or drops it.
pub async fn held_append(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut held = pool.begin().await.expect("a transaction");
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         values ('Probe', 'held', 1, 'ProbeHeld', '1', '{}', '{}')",
    )
    .execute(&mut *held)
    .await
    .expect("the held insert");
    held
}

/// A transaction that took its id and stays open until the caller commits or drops it:
/// the gapless stream hands nothing committed after it began over until it ends, so the
/// log's readers see what commits meanwhile late, together (and a write it makes later
/// is ordered before those commits).
pub async fn held_transaction(pool: &PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut held = pool.begin().await.expect("a transaction");
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *held)
        .await
        .expect("a transaction id");
    held
}

/// The password every test user gets.
pub const TEST_PASSWORD: &str = "Corr3ct-horse";

/// [`spawn_app`] with live-delivery (WebSocket) tunables of the test's choosing.
pub async fn spawn_app_with(live: omoi_api::live::LiveConfig) -> TestApp {
    let database = TestDatabase::create().await.expect("a fresh test database");
    let mut app = spawn_app_on_with(database, live).await;
    app.token = Some(app.register_and_login("owner@example.com").await);
    app
}

/// Starts a server on an existing database (e.g. again, after a restart).
pub async fn spawn_app_on(database: TestDatabase) -> TestApp {
    spawn_app_on_with(database, test_live_config()).await
}

/// Live delivery in tests: production's tunables, but a quicker poll.
pub fn test_live_config() -> omoi_api::live::LiveConfig {
    omoi_api::live::LiveConfig {
        poll_interval: std::time::Duration::from_millis(100),
        ..omoi_api::live::LiveConfig::default()
    }
}

/// Rebuilds the read model `projector` beside its live build, as `omoi projections
/// rebuild` does (folded from position zero, then in batches of `batch`), until the new
/// build has caught up and gone live; its build id.
pub async fn rebuild_read_model(database: &TestDatabase, projector: &str, batch: i64) -> i64 {
    let projector = omoi_projections::all()
        .into_iter()
        .find(|p| p.name() == projector)
        .unwrap_or_else(|| panic!("no read model {projector}"));
    let mut conn = database.pool.acquire().await.expect("a connection");
    let build = omoi_projections::catalog::create_build(
        &mut conn,
        projector.as_ref(),
        omoi_projections::catalog::BuildState::Building,
    )
    .await
    .expect("a new build");
    drop(conn);
    omoi_projections::runner::catch_up(
        &database.pool,
        &database.options,
        projector.as_ref(),
        build.build,
        batch,
        |_| {},
    )
    .await
    .expect("caught up");
    build.build
}

/// [`spawn_app_on`] with live-delivery tunables of the test's choosing.
pub async fn spawn_app_on_with(
    database: TestDatabase,
    live: omoi_api::live::LiveConfig,
) -> TestApp {
    spawn_configured(database, live, None, test_settings()).await
}

/// [`spawn_app`] with billing (plans, Stripe's address and secrets) of the test's choosing.
pub async fn spawn_app_with_billing(billing: omoi_api::billing::BillingConfig) -> TestApp {
    let database = TestDatabase::create().await.expect("a fresh test database");
    let mut app =
        spawn_configured(database, test_live_config(), Some(billing), test_settings()).await;
    app.token = Some(app.register_and_login("owner@example.com").await);
    app
}

/// [`spawn_app_on`] with the test settings changed by `adjust` (benchmarks: plans without
/// limits, say).
pub async fn spawn_app_on_with_settings(
    database: TestDatabase,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    let mut settings = test_settings();
    adjust(&mut settings);
    spawn_configured(database, test_live_config(), None, settings).await
}

/// [`spawn_app`] whose plans run `tasks` tasks of an organization at once (the free plan
/// runs one): for a test whose organization holds several at once.
pub async fn spawn_app_running_at_once(tasks: u32) -> TestApp {
    spawn_app_with_settings(|settings| {
        for plan in &mut settings.billing.plans {
            plan.concurrent_agents = Some(tasks);
        }
    })
    .await
}

/// [`spawn_app`] with the test settings changed by `adjust` (e.g. small rate limits).
pub async fn spawn_app_with_settings(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let database = TestDatabase::create().await.expect("a fresh test database");
    let mut settings = test_settings();
    adjust(&mut settings);
    let mut app = spawn_configured(database, test_live_config(), None, settings).await;
    app.token = Some(app.register_and_login("owner@example.com").await);
    app
}

async fn spawn_configured(
    database: TestDatabase,
    live: omoi_api::live::LiveConfig,
    billing: Option<omoi_api::billing::BillingConfig>,
    settings: Settings,
) -> TestApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    serve_configured(listener, database, live, billing, settings).await
}

async fn serve_configured(
    listener: tokio::net::TcpListener,
    database: TestDatabase,
    live: omoi_api::live::LiveConfig,
    billing: Option<omoi_api::billing::BillingConfig>,
    settings: Settings,
) -> TestApp {
    log_to_test_output();
    let pool = TestDatabase::pool(&database.options, 16)
        .await
        .expect("a pool on the test database");
    let state = omoi::server::app_state(pool.clone(), &settings, TEST_SIGNING_SECRET)
        .expect("application state");
    let (trigger, shutdown) = omoi::server::Shutdown::new();
    let (stats, projections) = omoi::server::start_projections(
        pool,
        database.options.clone(),
        &state.bus,
        test_runner_config(),
        &settings.workflow,
        &billing
            .as_ref()
            .map_or_else(Default::default, |b| b.stripe.clone()),
        shutdown.clone(),
    )
    .await
    .expect("the read models' views");
    let mut state = state.with_projections(stats.clone()).with_live(live);
    if let Some(billing) = billing {
        state = state.with_billing(billing);
    }
    let address = format!("http://{}", listener.local_addr().expect("a local address"));
    let server = tokio::spawn(omoi::server::serve(listener, state, shutdown.wait()));
    TestApp {
        address,
        client: reqwest::Client::new(),
        database,
        token: None,
        shutdown: Some(trigger),
        server: Some(server),
        projections: Some(projections),
        projection_stats: stats,
    }
}

/// Sends the server's warnings and errors (or what `RUST_LOG` asks for) to the test's
/// output, which the runner shows when the test fails: a 500's cause is logged, not sent.
fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // A second server in the same test finds the subscriber already installed.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Projectors in tests poll and take over quickly, so that tests take seconds.
pub fn test_runner_config() -> omoi_projections::runner::RunnerConfig {
    omoi_projections::runner::RunnerConfig {
        batch_size: 500,
        poll_interval: std::time::Duration::from_millis(100),
        takeover_interval: std::time::Duration::from_millis(200),
        ..omoi_projections::runner::RunnerConfig::default()
    }
}

fn test_settings() -> Settings {
    // SAFETY of the environment: tests only read settings; OMOI_ENV=test picks test.yaml.
    let mut settings = Settings::load().expect("settings");
    settings.database.max_connections = 16;
    settings
}

impl TestApp {
    /// The request helpers for a server running in another process at `address`.
    pub fn remote(address: String, database: TestDatabase) -> Self {
        Self {
            address,
            client: reqwest::Client::new(),
            database,
            token: None,
            shutdown: None,
            server: None,
            projections: None,
            projection_stats: Default::default(),
        }
    }

    /// Stops the server, waiting for open requests to finish.
    pub async fn stop(mut self) -> (TestDatabase, Option<String>) {
        if let Some(trigger) = self.shutdown.take() {
            let _ = trigger.send(true);
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
        if let Some(projections) = self.projections.take() {
            projections.await.expect("projection runner task");
        }
        (self.database.clone(), self.token.clone())
    }

    /// Stops the server and starts it again on the same address and database (a browser
    /// or client connected to it sees a restart); the token is kept.
    pub async fn restart(self) -> TestApp {
        let address = self
            .address
            .trim_start_matches("http://")
            .parse::<std::net::SocketAddr>()
            .expect("the server's address");
        let (database, token) = self.stop().await;
        // The port is free once the old listener is dropped; a moment's retry covers the
        // kernel's bookkeeping.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => break listener,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(error) => panic!("rebinding {address}: {error}"),
            }
        };
        let mut app = serve_configured(
            listener,
            database,
            test_live_config(),
            None,
            test_settings(),
        )
        .await;
        app.token = token;
        app
    }

    /// Waits until every live projector has applied everything committed so far, so that
    /// a test can read the read models its commands changed.
    pub async fn caught_up(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            // The newest event in the global order, (transaction_id, global_position).
            let behind: i64 = sqlx::query_scalar(
                "select count(*) from projector_builds b,
                        (select transaction_id::text::bigint as xid, global_position as pos
                           from events order by transaction_id desc, global_position desc
                          limit 1) newest
                  where b.state in ('live', 'building')
                    and (b.transaction_id, b.global_position) < (newest.xid, newest.pos)",
            )
            .fetch_one(&self.database.pool)
            .await
            .expect("projector positions");
            let builds: i64 =
                sqlx::query_scalar("select count(*) from projector_builds where state = 'live'")
                    .fetch_one(&self.database.pool)
                    .await
                    .expect("projector builds");
            if behind == 0 && builds > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "projections did not catch up within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A command bus of its own on the same database, as another process would have.
    pub async fn second_bus(&self) -> CommandBus {
        let pool = TestDatabase::pool(&self.database.options, 16)
            .await
            .expect("a second pool");
        CommandBus::new(pool, omoi_store::bus::RetryPolicy::default())
    }

    /// Registers `email` and returns an access token for it.
    pub async fn register_and_login(&self, email: &str) -> String {
        let credentials = serde_json::json!({"email": email, "password": TEST_PASSWORD});
        let (status, body) = self
            .send_as(
                None,
                reqwest::Method::POST,
                "/api/v1/auth/register",
                Some(credentials),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register: {body}");
        self.login(email).await["access_token"]
            .as_str()
            .expect("a token")
            .to_string()
    }

    /// Logs `email` in with the test password; returns the token pair.
    pub async fn login(&self, email: &str) -> Value {
        let credentials = serde_json::json!({"email": email, "password": TEST_PASSWORD});
        let (status, body) = self
            .send_as(
                None,
                reqwest::Method::POST,
                "/api/v1/auth/login",
                Some(credentials),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login: {body}");
        body
    }

    /// Any request with an explicit credential (or none).
    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send_raw(request).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(&body))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.put(self.url(path)).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.delete(self.url(path))).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.client.patch(self.url(path)).json(&body))
            .await
    }

    /// POST with a raw body and content type, for malformed-input tests.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        self.send(
            self.client
                .post(self.url(path))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// The number of events in the log, to prove a refused request wrote nothing.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events")
            .fetch_one(&self.database.pool)
            .await
            .expect("counting events")
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    /// The full URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        self.send_raw(request).await
    }

    /// Sends `request` as built (its credential and headers the caller's): the status and
    /// the body as JSON (or as a string when it is not).
    pub async fn send_raw(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let text = response.text().await.expect("a readable body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// Creates an organization and a project whose tickets get only the tasks the test
    /// creates (created with `auto_spawn_tasks` off) and whose plans' tasks complete when
    /// their agents say so (`validation_required` off); returns their ids.
    pub async fn organization_and_project(&self) -> (String, String) {
        self.organization_and_project_with(
            serde_json::json!({"auto_spawn_tasks": false, "validation_required": false}),
        )
        .await
    }

    /// Creates an organization and a project with the default settings: a ticket made by
    /// hand gets the task of its phase (`phase_tasks`); returns their ids.
    pub async fn organization_and_spawning_project(&self) -> (String, String) {
        self.organization_and_project_with(serde_json::json!({}))
            .await
    }

    /// Creates an organization and a project created with `settings`; returns their ids.
    pub async fn organization_and_project_with(&self, settings: Value) -> (String, String) {
        let (status, org) = self
            .post("/api/v1/organizations", serde_json::json!({"name": "Acme"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{org}");
        let org_id = org["id"].as_str().expect("an id").to_string();
        let (status, project) = self
            .post(
                "/api/v1/projects",
                serde_json::json!({"organization_id": org_id, "name": "Website",
                                   "settings": settings}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{project}");
        (org_id, project["id"].as_str().expect("an id").to_string())
    }

    /// Changes `project`'s settings.
    pub async fn project_settings(&self, project: &str, settings: Value) {
        let (status, body) = self
            .patch(&format!("/api/v1/projects/{project}/settings"), settings)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// [`TestApp::organization_and_project`] whose tickets only people move (its
    /// `auto_advance` off): for tests that walk tickets by hand while tasks run.
    pub async fn organization_and_manual_project(&self) -> (String, String) {
        let (organization, project) = self.organization_and_project().await;
        self.project_settings(&project, serde_json::json!({"auto_advance": false}))
            .await;
        (organization, project)
    }
}

/// How long a test waits for what happens eventually (a projector catching up, a worker
/// running a task) before it fails, showing the last answer.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// An agent registered over HTTP, acting with its own credential.
pub struct Agent {
    pub id: String,
    pub credential: String,
}

impl TestApp {
    /// Registers a worker agent of `organization` (as the signed-in user).
    pub async fn register_agent(&self, organization: &str) -> Agent {
        let (status, body) = self
            .post(
                "/api/v1/agents/register",
                serde_json::json!({"organization_id": organization, "agent_type": "worker"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Agent {
            id: id_of(&body),
            credential: body["credential"]
                .as_str()
                .expect("a credential")
                .to_string(),
        }
    }

    /// A task titled `title` (of a ticket "Work" in `project`) that a fresh agent of
    /// `organization` claimed and started: the task's id and its agent.
    pub async fn started_task(
        &self,
        organization: &str,
        project: &str,
        title: &str,
    ) -> (String, Agent) {
        let agent = self.register_agent(organization).await;
        let ticket = self.ticket(project, "Work").await;
        let task = self.task(&ticket, title, serde_json::json!({})).await;
        assert_eq!(agent.claim(self, 5).await, Some(task.clone()));
        agent
            .must(self, &task, "start", serde_json::json!({}))
            .await;
        (task, agent)
    }
}

impl Agent {
    /// `POST path` with this agent's credential.
    pub async fn post(&self, app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
        app.send_as(
            Some(&self.credential),
            reqwest::Method::POST,
            path,
            Some(body),
        )
        .await
    }

    /// `POST /api/v1/tasks/{task}/{action}` as this agent, which must answer 200; the
    /// answer.
    pub async fn must(&self, app: &TestApp, task: &str, action: &str, body: Value) -> Value {
        let path = format!("/api/v1/tasks/{task}/{action}");
        let (status, answer) = self.post(app, &path, body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        answer
    }

    /// Heartbeats with this agent's credential, which must answer 200 (the first makes a
    /// spawning agent idle and gives it its lease); the answer.
    pub async fn heartbeat(&self, app: &TestApp) -> Value {
        let path = format!("/api/v1/agents/{}/heartbeat", self.id);
        let (status, answer) = self.post(app, &path, serde_json::json!({})).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        answer
    }

    /// Claims a task, waiting up to `wait_seconds`: its id, or `None` on 204.
    pub async fn claim(&self, app: &TestApp, wait_seconds: u64) -> Option<String> {
        let (status, body) = self
            .post(
                app,
                &format!("/api/v1/agents/{}/claim", self.id),
                serde_json::json!({"wait_seconds": wait_seconds}),
            )
            .await;
        match status {
            StatusCode::OK => Some(id_of(&body)),
            StatusCode::NO_CONTENT => None,
            other => panic!("claim answered {other}: {body}"),
        }
    }
}

/// The `id` of a command's answer.
#[track_caller]
pub fn id_of(body: &Value) -> String {
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("an answer with an id: {body}"))
        .to_string()
}

/// Requests the tests share, so that each test file says only what it is about.
impl TestApp {
    /// The agents' claims the server holds now (`omoi_claims_waiting` in `/metrics`).
    pub async fn claims_waiting(&self) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("its text");
        text.lines()
            .find_map(|line| line.strip_prefix("omoi_claims_waiting "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no omoi_claims_waiting in {text}"))
    }

    /// Waits (up to ten seconds) until the server holds `count` claims: they passed the
    /// request's own checks, looked, and wait for a task.
    pub async fn until_claims_waiting(&self, count: u64) {
        for _ in 0..500 {
            if self.claims_waiting().await == count {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{count} claims never waited");
    }

    /// Waits (up to ten seconds) until `count` sessions of this test's database wait for a
    /// lock: requests held behind a transaction the test keeps open. Panics past the
    /// bound, so a request that never waited fails its test instead of hanging it.
    pub async fn until_lock_waiters(&self, count: i64) {
        for _ in 0..500 {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity
                  where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&self.database.pool)
            .await
            .expect("the activity");
            if waiting >= count {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{count} sessions never waited for a lock");
    }

    /// Creates `count` tickets in `project` titled `{prefix}{n}`, 16 at a time, each with a
    /// description of `description_bytes` (big events, to fill a socket); their ids.
    pub async fn tickets(
        &self,
        project: &str,
        prefix: &str,
        count: usize,
        description_bytes: usize,
    ) -> Vec<String> {
        let description = "x".repeat(description_bytes);
        let mut created = Vec::new();
        for chunk in 0..count.div_ceil(16) {
            let batch = (chunk * 16..count.min(chunk * 16 + 16)).map(|n| {
                let body = serde_json::json!({"project_id": project,
                    "title": format!("{prefix}{n}"), "description": description});
                self.post("/api/v1/tickets", body)
            });
            for (status, body) in futures_util::future::join_all(batch).await {
                assert_eq!(status, StatusCode::CREATED, "{body}");
                created.push(id_of(&body));
            }
        }
        created
    }

    /// POSTs `body` to `path`, asserting the answer's status; returns the answer.
    pub async fn must(&self, path: &str, body: Value, expected: StatusCode) -> Value {
        let (status, answer) = self.post(path, body).await;
        assert_eq!(status, expected, "POST {path}: {answer}");
        answer
    }

    /// POSTs a creation to `path` (201 expected); returns the new aggregate's id.
    pub async fn create(&self, path: &str, body: Value) -> String {
        id_of(&self.must(path, body, StatusCode::CREATED).await)
    }

    /// A spec of `project` titled `title`, walked to its `tasks` phase: one requirement
    /// (`REQ-AUTH-001`), approved; a design, approved. Its plan is the test's to set.
    pub async fn spec_in_tasks(&self, project: &str, title: &str) -> String {
        use serde_json::json;
        let spec = self
            .create(
                "/api/v1/specs",
                json!({"project_id": project, "title": title}),
            )
            .await;
        let path = |action: &str| format!("/api/v1/specs/{spec}/{action}");
        self.must(
            &path("requirements"),
            json!({"id": "REQ-AUTH-001", "condition": "WHEN a user signs in",
                   "action": "THE SYSTEM SHALL issue a session",
                   "acceptance_criteria": ["a token is returned"]}),
            StatusCode::OK,
        )
        .await;
        self.must(&path("approve-requirements"), json!({}), StatusCode::OK)
            .await;
        let (status, body) = self
            .put(&path("design"), json!({"architecture": "one service"}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.must(&path("approve-design"), json!({}), StatusCode::OK)
            .await;
        spec
    }

    /// Another project of `organization`, named `name` (default settings).
    pub async fn project(&self, organization: &str, name: &str) -> String {
        self.create(
            "/api/v1/projects",
            serde_json::json!({"organization_id": organization, "name": name}),
        )
        .await
    }

    /// Locks the tables of `projector`'s live build in `mode` (`share`: writers wait and
    /// readers do not) until the returned transaction ends: the read model lags behind
    /// the log meanwhile, or a reader of it waits (`access exclusive`).
    pub async fn hold_read_model(
        &self,
        projector: &str,
        mode: &str,
    ) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut held = self.database.pool.begin().await.expect("a transaction");
        let tables: Vec<String> = sqlx::query_scalar(
            "select format('%I.%I', t.table_schema, t.table_name)
               from projector_builds b
               join information_schema.tables t
                 on t.table_schema = 'rm_' || b.projector || '_' || b.build
                and t.table_type = 'BASE TABLE'
              where b.projector = $1 and b.state = 'live'",
        )
        .bind(projector)
        .fetch_all(&mut *held)
        .await
        .expect("the read model's tables");
        assert!(!tables.is_empty(), "{projector} has no live tables");
        sqlx::query(&format!("lock table {} in {mode} mode", tables.join(", ")))
            .execute(&mut *held)
            .await
            .expect("locked");
        held
    }

    /// Task `task`'s events, oldest first, as `GET /api/v1/tasks/{task}/history` answers
    /// them (`event_type`, `payload`, `metadata`, …), which must be 200.
    pub async fn task_history(&self, task: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/v1/tasks/{task}/history")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["events"].as_array().cloned().expect("events")
    }

    /// A ticket of `project` titled `title`.
    pub async fn ticket(&self, project: &str, title: &str) -> String {
        self.create(
            "/api/v1/tickets",
            serde_json::json!({"project_id": project, "title": title}),
        )
        .await
    }

    /// A task of `ticket` titled `title` (`implement`), with the fields of `extra` added.
    pub async fn task(&self, ticket: &str, title: &str, extra: Value) -> String {
        let mut body =
            serde_json::json!({"ticket_id": ticket, "title": title, "task_type": "implement"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.create("/api/v1/tasks", body).await
    }

    /// GETs `path` until it answers 200 and `ready` holds for the answer; fails with the
    /// last answer after [`PATIENCE`].
    pub async fn eventually(&self, path: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.get(path).await;
            if status == StatusCode::OK && ready(&body) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "GET {path} did not get there in {PATIENCE:?}; last answer: {status} {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The state of task `id`.
    pub async fn task_state(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["state"].clone()
    }

    /// Waits until task `id` is in `status`; returns its state.
    pub async fn until_task_status(&self, id: &str, status: &str) -> Value {
        let answer = self
            .eventually(&format!("/api/v1/tasks/{id}"), |body| {
                body["state"]["status"] == status
            })
            .await;
        answer["state"].clone()
    }
}

/// A fresh, empty directory of the test's own under the system's temporary directory
/// (a worker's `work_dir`, files a test writes); the test removes it when it is done.
pub fn scratch_dir() -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("omoi-test-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&directory).expect("a scratch directory");
    directory
}

/// Runs `future` to completion on a fresh multi-threaded runtime (for benchmarks).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(future)
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            replace_database("postgres://u@h:1/postgres", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            replace_database("postgres://u@h:1", "x"),
            "postgres://u@h:1/x"
        );
        assert_eq!(
            replace_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}

/// One request the fake Stripe of [`fake_stripe`] received.
#[derive(Debug, Clone)]
pub struct StripeRequest {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    /// The form body, as sent.
    pub body: String,
}

/// Every request the fake Stripe has received, in order.
pub type StripeLog = std::sync::Arc<std::sync::Mutex<Vec<StripeRequest>>>;

/// Subscriptions whose id starts with this are out of reach: the fake Stripe answers
/// their first [`FLAKY_FAILURES`] `DELETE`s with a 500.
pub const FLAKY_SUBSCRIPTION: &str = "sub_flaky";

/// How many `DELETE`s of a [`FLAKY_SUBSCRIPTION`] fail.
pub const FLAKY_FAILURES: usize = 2;

/// Subscriptions whose id starts with this are past due at the fake Stripe (its other
/// subscriptions are active).
pub const UNPAID_SUBSCRIPTION: &str = "sub_unpaid";

/// Subscriptions whose id starts with this may not be ended with the fake Stripe's key:
/// every `DELETE` is answered 403, as Stripe answers a restricted key.
pub const FORBIDDEN_SUBSCRIPTION: &str = "sub_forbidden";

/// A local stand-in for Stripe's API: it answers the checkout and billing-portal session
/// calls and a subscription's `GET` and `DELETE` as Stripe does and records them. Returns
/// its base URL.
pub async fn fake_stripe() -> (String, StripeLog) {
    use axum::extract::{Path, State};
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    use axum::routing::{delete, post};
    use axum::{Json, Router};

    async fn end_subscription(
        State(log): State<StripeLog>,
        Path(id): Path<String>,
        axum::extract::RawQuery(query): axum::extract::RawQuery,
        headers: HeaderMap,
    ) -> axum::response::Response {
        let path = format!("/v1/subscriptions/{id}");
        let tries = {
            let mut log = log.lock().expect("the log");
            log.push(StripeRequest {
                method: "DELETE".into(),
                path: path.clone(),
                idempotency_key: None,
                authorization: headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                // Its parameters, form-encoded as a body's are (Stripe reads a DELETE's
                // from the query).
                body: query.unwrap_or_default(),
            });
            log.iter()
                .filter(|r| r.path == path && r.method == "DELETE")
                .count()
        };
        if id.starts_with(FORBIDDEN_SUBSCRIPTION) {
            let error = serde_json::json!({"error": {"type": "invalid_request_error",
                "message": "The provided key does not have the required permissions"}});
            return (StatusCode::FORBIDDEN, Json(error)).into_response();
        }
        if id.starts_with(FLAKY_SUBSCRIPTION) && tries <= FLAKY_FAILURES {
            let error = serde_json::json!({"error": {"type": "api_error", "message": "try again"}});
            return (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response();
        }
        Json(serde_json::json!({"id": id, "object": "subscription", "status": "canceled"}))
            .into_response()
    }

    /// A subscription as Stripe has it: canceled once a `DELETE` of it succeeded (as
    /// Stripe answers then, so that a caller asking before it ends one again, say in a
    /// retried batch, learns it is over); else past due for [`UNPAID_SUBSCRIPTION`]'s,
    /// else active.
    async fn subscription(
        State(log): State<StripeLog>,
        Path(id): Path<String>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        let path = format!("/v1/subscriptions/{id}");
        let ended = {
            let mut log = log.lock().expect("the log");
            let deletes = log
                .iter()
                .filter(|r| r.path == path && r.method == "DELETE")
                .count();
            log.push(StripeRequest {
                method: "GET".into(),
                path,
                idempotency_key: None,
                authorization: headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body: String::new(),
            });
            // The DELETEs [`end_subscription`] answered with an error do not end it.
            let failing = match id.starts_with(FLAKY_SUBSCRIPTION) {
                true => FLAKY_FAILURES,
                false => 0,
            };
            !id.starts_with(FORBIDDEN_SUBSCRIPTION) && deletes > failing
        };
        let status = match (ended, id.starts_with(UNPAID_SUBSCRIPTION)) {
            (true, _) => "canceled",
            (false, true) => "past_due",
            (false, false) => "active",
        };
        Json(serde_json::json!({"id": id, "object": "subscription", "status": status}))
            .into_response()
    }

    async fn session(
        State((log, path, answer)): State<(StripeLog, &'static str, Value)>,
        headers: HeaderMap,
        body: String,
    ) -> axum::response::Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let idempotency_key = header("idempotency-key");
        let mut log = log.lock().expect("the log");
        // As Stripe does: a key sent before with other fields is refused.
        let reused = log.iter().any(|earlier| {
            earlier.path == path
                && idempotency_key.is_some()
                && earlier.idempotency_key == idempotency_key
                && earlier.body != body
        });
        log.push(StripeRequest {
            method: "POST".into(),
            path: path.to_string(),
            idempotency_key,
            authorization: header("authorization"),
            body,
        });
        if reused {
            let error = serde_json::json!({"error": {"type": "idempotency_error",
                "message": "Keys for idempotent requests can only be used with the same parameters they were first used with."}});
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
        Json(answer).into_response()
    }
    let log = StripeLog::default();
    let checkout = serde_json::json!({"id": "cs_test_a1", "object": "checkout.session",
                                      "url": "https://checkout.stripe.com/c/pay/cs_test_a1"});
    let portal = serde_json::json!({"id": "bps_test_1", "object": "billing_portal.session",
                                    "url": "https://billing.stripe.com/p/session/test_1"});
    let app = Router::new()
        .route(
            "/v1/checkout/sessions",
            post(session).with_state((log.clone(), "/v1/checkout/sessions", checkout)),
        )
        .route(
            "/v1/billing_portal/sessions",
            post(session).with_state((log.clone(), "/v1/billing_portal/sessions", portal)),
        )
        .route(
            "/v1/subscriptions/{id}",
            delete(end_subscription)
                .get(subscription)
                .with_state(log.clone()),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, log)
}

/// How the fake LLM of [`fake_llm`] answers one request.
#[derive(Debug, Clone)]
pub enum LlmReply {
    /// A `/chat/completions` answer whose message content is this JSON (as text).
    Answer(Value),
    /// A 200 whose message content is not JSON.
    Malformed,
    /// An error status.
    Status(u16),
    /// Nothing for this long, then a 500.
    Silence(std::time::Duration),
}

/// The bodies the fake LLM received, in order.
pub type LlmLog = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;

/// A local OpenAI-compatible `/v1/chat/completions` answering with `replies` in turn (the
/// last one again once they run out). Returns its base URL (`…/v1`) and its log.
pub async fn fake_llm(replies: Vec<LlmReply>) -> (String, LlmLog) {
    use axum::extract::State;
    use axum::http::StatusCode as Status;
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};

    type Script = std::sync::Arc<(LlmLog, Vec<LlmReply>)>;
    async fn complete(State(script): State<Script>, Json(body): Json<Value>) -> Response {
        let reply = {
            let mut log = script.0.lock().expect("the log");
            log.push(body);
            let turn = (log.len() - 1).min(script.1.len().saturating_sub(1));
            script.1.get(turn).cloned().unwrap_or(LlmReply::Status(500))
        };
        let content = match reply {
            LlmReply::Answer(answer) => answer.to_string(),
            LlmReply::Malformed => "I think the agent is fine.".to_string(),
            LlmReply::Status(code) => {
                let status = Status::from_u16(code).unwrap_or(Status::INTERNAL_SERVER_ERROR);
                return (status, "upstream trouble").into_response();
            }
            LlmReply::Silence(duration) => {
                tokio::time::sleep(duration).await;
                return Status::INTERNAL_SERVER_ERROR.into_response();
            }
        };
        Json(serde_json::json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 321, "completion_tokens": 42, "total_tokens": 363}
        }))
        .into_response()
    }
    let log = LlmLog::default();
    let script: Script = std::sync::Arc::new((log.clone(), replies));
    let app = Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let address = format!("http://{}/v1", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (address, log)
}

/// Starts `binary` (the `omoi` under test: `env!("CARGO_BIN_EXE_omoi")`) as `omoi serve`
/// on `database` — API, read models and process managers — quiet and on a free port, as a
/// child process a test may SIGKILL.
pub fn serve_process(binary: &str, database: &TestDatabase) -> std::process::Child {
    use std::process::{Command, Stdio};
    Command::new(binary)
        .arg("serve")
        .env("DATABASE_URL", &database.url)
        .env(
            "OMOI_JWT_SECRET",
            std::str::from_utf8(TEST_SIGNING_SECRET).expect("a text secret"),
        )
        .env("OMOI_APPLICATION__PORT", "0")
        .env("OMOI_ENV", "test")
        .env("OMOI_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("omoi serve starts")
}
