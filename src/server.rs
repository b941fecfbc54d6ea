//! Assembling and running the server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use axum::serve::{ListenerExt, TapIo};
use std::sync::Arc;

use omoi_api::auth::tokens::TokenKeys;
use omoi_api::metrics::Metrics;
use omoi_api::state::AppState;
use omoi_projections::runner::{ProjectionRunner, RunnerConfig, RunnerStats};
use omoi_store::embedded::{ensure_database, EmbeddedPostgres};
use omoi_store::wakeup::announce_commits;
use omoi_store::{db, CommandBus};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};

use crate::settings::{EmbeddedSettings, Settings};

/// A database to use, and the cluster we started for it, if any.
pub struct Database {
    pub url: String,
    pub pool: PgPool,
    pub embedded: Option<EmbeddedPostgres>,
}

/// How a command uses the database it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// A service (`serve`, `dev`, `worker`): applies the migrations first unless
    /// `database.migrate_on_start` is off; `dev` may start a cluster of its own.
    Service { allow_embedded: bool },
    /// A tool run beside the deployed servers (`history`, `projections …`, `migrate`):
    /// never migrates by itself, so a newer binary does not migrate a database its
    /// servers are not yet upgraded for.
    Tool,
}

/// Connects to `DATABASE_URL`, or — for a service allowed one and no URL set — starts our
/// own PostgreSQL cluster and creates its database.
pub async fn open_database(settings: &Settings, opening: Opening) -> anyhow::Result<Database> {
    let allow_embedded = opening
        == Opening::Service {
            allow_embedded: true,
        };
    let (url, embedded) = match (&settings.database.url, allow_embedded) {
        (Some(url), _) => (url.expose_secret().to_string(), None),
        (None, true) => {
            let cluster = start_embedded(&settings.database.embedded).await?;
            (
                cluster.url(&settings.database.embedded.database)?,
                Some(cluster),
            )
        }
        (None, false) => anyhow::bail!(
            "DATABASE_URL is not set; set it, or use `omoi dev` to run a PostgreSQL of our own"
        ),
    };
    let opened = async {
        let pool = db::connect(&url, settings.database.max_connections)
            .await
            .context("connecting to PostgreSQL")?;
        if settings.database.migrate_on_start && opening != Opening::Tool {
            db::migrate(&pool).await.context("applying migrations")?;
        }
        anyhow::Ok(pool)
    }
    .await;
    match opened {
        Ok(pool) => Ok(Database {
            url,
            pool,
            embedded,
        }),
        // A cluster started here is not left running by a start that failed.
        Err(error) => {
            if let Some(cluster) = embedded {
                stop_embedded(cluster).await;
            }
            Err(error)
        }
    }
}

/// Stops a cluster of our own after a failed start, saying so if it would not stop.
async fn stop_embedded(cluster: EmbeddedPostgres) {
    let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await;
    if !matches!(stopped, Ok(Ok(()))) {
        tracing::warn!(?stopped, "PostgreSQL of our own did not stop");
    }
}

/// Starts (initialising if needed) the cluster in `settings.data_dir` and creates its
/// database.
pub async fn start_embedded(settings: &EmbeddedSettings) -> anyhow::Result<EmbeddedPostgres> {
    let cluster = EmbeddedPostgres::new(&settings.data_dir, settings.port)?;
    let data_dir = cluster.data_dir.clone();
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start())
        .await
        .context("starting PostgreSQL")??;
    tracing::info!(data_dir = %data_dir.display(), port = settings.port, "PostgreSQL of our own is running");
    let created = async {
        let admin = db::connect(&cluster.url("postgres")?, 1).await?;
        ensure_database(&admin, &settings.database).await?;
        admin.close().await;
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = created {
        stop_embedded(cluster).await;
        return Err(error);
    }
    Ok(cluster)
}

/// The application state for a pool.
pub fn app_state(
    pool: PgPool,
    settings: &Settings,
    signing_secret: &[u8],
) -> anyhow::Result<AppState> {
    let tokens = TokenKeys::new(signing_secret).context("OMOI_JWT_SECRET")?;
    let credential_ttl = std::time::Duration::from_millis(settings.auth.credential_cache_ms);
    let claims = omoi_api::claims::ClaimRules {
        score: settings.worker.score.clone(),
        project_concurrency: settings.worker.project_concurrency,
        claims_per_agent: settings.worker.claims_per_agent.max(1),
    };
    Ok(AppState::new(
        CommandBus::configured(pool, settings.commands.bus()),
        Metrics::new()?,
        tokens,
        credential_ttl,
    )
    .with_claim_rules(claims)
    .with_replays(replays(&settings.application))
    .with_billing(settings.billing.config())
    .with_guard(settings.auth.guard()?)
    .with_live(settings.live.config())
    .with_liveness(omoi_api::state::Liveness {
        monitoring: settings.monitoring.clone(),
        stale_after_ms: settings.worker.stale_after_ms,
    }))
}

fn replays(application: &crate::settings::ApplicationSettings) -> omoi_api::state::Replays {
    let concurrent = match application.concurrent_replays {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    omoi_api::state::Replays::new(concurrent, application.max_replay_events)
}

/// The token-signing secret: `OMOI_JWT_SECRET`, or — for `omoi dev` only — one generated
/// once and kept in `.omoi/jwt-secret`.
pub fn signing_secret(dev: bool) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = std::env::var("OMOI_JWT_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
    {
        anyhow::ensure!(
            secret.len() >= 32,
            "OMOI_JWT_SECRET must be at least 32 bytes"
        );
        return Ok(secret.into_bytes());
    }
    anyhow::ensure!(
        dev,
        "OMOI_JWT_SECRET is not set: set it to a random string of at least 32 bytes \
         (e.g. `openssl rand -hex 32`)"
    );
    dev_signing_secret(Path::new(DEV_SECRET_FILE))
}

/// Where `omoi dev` keeps the token-signing secret it generated.
const DEV_SECRET_FILE: &str = ".omoi/jwt-secret";

/// The secret kept in `path`, or a new one written there. The file is created readable
/// by its owner only (not chmod-ed afterwards: there would be a moment when others could
/// read it), and one left readable by others by an older version is tightened. Its
/// directory lets others through but not read it ([`DEV_DIRECTORY_MODE`]).
fn dev_signing_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DEV_DIRECTORY_MODE)
            .create(dir)?;
        let_through_dev_directory(dir)?;
    }
    if let Some(secret) = read_dev_secret(path)? {
        return Ok(secret);
    }
    let secret = omoi_api::auth::keys::generate().secret.into_bytes();
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match created {
        Ok(file) => file,
        // Another `omoi dev` starting at the same moment wrote it first: use that one.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_dev_secret(path)?.context("the token-signing secret file is empty");
        }
        Err(error) => return Err(error).context(format!("creating {}", path.display())),
    };
    file.write_all(&secret)?;
    file.sync_all()?;
    println!(
        "no OMOI_JWT_SECRET given: generated a token-signing secret in {}",
        path.display()
    );
    Ok(secret)
}

/// The mode of `.omoi`: its owner's, and a way through for others — `omoi dev` run as
/// root runs PostgreSQL as the `postgres` user, whose data directory (`.omoi/pgdata`,
/// 0700, its own) lies inside — without letting them list it. What is secret in it is
/// secret by its own mode (the signing secret 0600, the data directory 0700).
const DEV_DIRECTORY_MODE: u32 = 0o711;

/// Gives `dir` the way through an earlier version did not (it made `.omoi` 0700, and
/// PostgreSQL could not reach its data directory); any other mode is left as it is.
fn let_through_dev_directory(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode == 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DEV_DIRECTORY_MODE))
            .with_context(|| format!("letting the postgres user through {}", dir.display()))?;
    }
    Ok(())
}

/// The secret in `path` if there is one, tightening the file's permissions to 0600.
fn read_dev_secret(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    use std::os::unix::fs::PermissionsExt;

    let secret = match std::fs::read(path) {
        Ok(secret) if !secret.is_empty() => secret,
        Ok(_) => return Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).context(format!("reading {}", path.display())),
    };
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        tracing::warn!(file = %path.display(), "the token-signing secret was readable by others; now 0600");
    }
    Ok(Some(secret))
}

/// What `omoi dev` created on its first start, to print once.
pub struct DevBootstrap {
    pub email: String,
    pub password: String,
    pub api_key: String,
    pub organization_id: uuid::Uuid,
    pub project_id: uuid::Uuid,
}

/// On a database without users, creates an owner, an organization, a project and an
/// owner API key so that a newcomer can call the API at once.
pub async fn bootstrap_dev(state: &AppState) -> anyhow::Result<Option<DevBootstrap>> {
    use omoi_domain::access::{Principal, Role};
    use omoi_domain::organization::{Organization, OrganizationCommand};
    use omoi_domain::project::{Project, ProjectCommand};
    use omoi_store::accounts;

    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(state.pool())
        .await?;
    if users > 0 {
        return Ok(None);
    }
    let email = "owner@omoi.dev".to_string();
    let password = format!("Dev-{}", &omoi_api::auth::keys::generate().secret[8..24]);
    let hash = omoi_api::auth::passwords::hash(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let user =
        accounts::create_user(state.pool(), uuid::Uuid::now_v7(), &email, &hash, "Owner").await?;
    let context =
        omoi_store::CommandContext::new(omoi_store::Actor::User(user.id), "omoi-dev-bootstrap");
    let now = chrono::Utc::now();
    let organization_id = uuid::Uuid::now_v7();
    let create_org = OrganizationCommand::CreateOrganization {
        organization_id,
        name: "Dev".into(),
        owner: Principal::User(user.id),
        at: now,
    };
    state
        .bus
        .execute::<Organization>(&organization_id.to_string(), create_org, &context)
        .await
        .map_err(|e| anyhow::anyhow!("creating the dev organization: {e}"))?;
    let project_id = uuid::Uuid::now_v7();
    let create_project = ProjectCommand::CreateProject {
        project_id,
        organization_id,
        name: "Sandbox".into(),
        description: "Created by `omoi dev` on its first start".into(),
        settings: Default::default(),
        at: now,
    };
    state
        .bus
        .execute::<Project>(&project_id.to_string(), create_project, &context)
        .await
        .map_err(|e| anyhow::anyhow!("creating the dev project: {e}"))?;
    let key = omoi_api::auth::keys::generate();
    let written = accounts::insert_api_key(
        state.pool(),
        &accounts::ApiKeyRecord {
            id: uuid::Uuid::now_v7(),
            prefix: key.prefix,
            secret_sha256: key.sha256,
            name: "omoi dev".into(),
            organization_id,
            project_id: None,
            role: Role::Owner,
            created_by: user.id,
            created_at: now,
            revoked_at: None,
            agent_id: None,
        },
    )
    .await?;
    if !written {
        anyhow::bail!("the dev user is not a member of the dev organization");
    }
    Ok(Some(DevBootstrap {
        email,
        password,
        api_key: key.secret,
        organization_id,
        project_id,
    }))
}

/// Serves the API on `listener` until `shutdown` completes, then finishes open requests.
/// The pruning of expired credentials runs as long as the server does.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let housekeeping = tokio::spawn(omoi_api::auth::housekeeping::run(state.clone()));
    // Agents' long polls would hold the drain for up to a minute: they answer 204 now;
    // and the sockets close (their clients reconnect, to another replica).
    let (claims, live) = (state.claims.clone(), state.live.clone());
    let shutdown = async move {
        shutdown.await;
        claims.close();
        live.close_sockets();
    };
    // The peer address keys the rate limits of the public auth routes.
    let app = omoi_api::app(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = axum::serve(without_delay(listener), app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP");
    housekeeping.abort();
    served
}

/// The listener's connections with `TCP_NODELAY` set, which axum leaves off: a WebSocket
/// delta or a response written while an earlier write is unacknowledged would otherwise
/// wait for the client's delayed ACK (Nagle's algorithm: up to 40 ms on Linux), and a
/// stream's reader sends nothing back that would carry it sooner.
fn without_delay(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set on a connection");
        }
    })
}

/// Binds the configured address.
pub async fn bind(settings: &Settings) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let address = format!(
        "{}:{}",
        settings.application.host, settings.application.port
    );
    let listener = TcpListener::bind(&address)
        .await
        .with_context(|| format!("binding {address}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// A shutdown signal several tasks can wait for.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the trigger that fires it.
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Self(rx))
    }

    /// Completes once the trigger fired (or was dropped).
    pub async fn wait(mut self) {
        while !*self.0.borrow() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Runs the projectors beside the API: woken by this process's commits at once, by other
/// processes' through one coalesced NOTIFY per burst. Returns once every read model's
/// views exist (so the API may serve), with the runner's statistics and its task.
pub async fn start_projections(
    pool: PgPool,
    options: sqlx::postgres::PgConnectOptions,
    bus: &CommandBus,
    config: RunnerConfig,
    workflow: &omoi_workflow::WorkflowConfig,
    stripe: &omoi_billing::stripe::StripeApi,
    shutdown: Shutdown,
) -> Result<(Arc<RunnerStats>, tokio::task::JoinHandle<()>), sqlx::Error> {
    start_projections_with(
        pool,
        options,
        bus,
        config,
        // The read models, and the process managers, which run the same way.
        omoi_projections::all()
            .into_iter()
            .chain(omoi_workflow::all(workflow, stripe))
            .collect(),
        shutdown,
    )
    .await
}

/// [`start_projections`] with the given projectors (tests use probes).
pub async fn start_projections_with(
    pool: PgPool,
    options: sqlx::postgres::PgConnectOptions,
    bus: &CommandBus,
    config: RunnerConfig,
    projectors: Vec<Arc<dyn omoi_projections::Projector>>,
    shutdown: Shutdown,
) -> Result<(Arc<RunnerStats>, tokio::task::JoinHandle<()>), sqlx::Error> {
    let runner = ProjectionRunner::new(pool.clone(), options, projectors, config);
    // A request must not find a read model's views missing (the first start of a
    // database: a board move's WIP check read `board_cards` before it existed).
    runner.prepare().await?;
    let stats = runner.stats();
    let waker = runner.waker();
    let mut commits = bus.commits();
    tokio::spawn(async move {
        while commits.changed().await.is_ok() {
            waker.send_modify(|n| *n = n.wrapping_add(1));
        }
    });
    tokio::spawn(announce_commits(
        pool,
        bus.commits(),
        COMMIT_ANNOUNCE_WINDOW,
    ));
    let task = tokio::spawn(async move {
        if let Err(error) = runner.run(shutdown.wait()).await {
            tracing::error!(%error, "the projection runner stopped");
        }
    });
    Ok((stats, task))
}

/// Commits within this window share one NOTIFY to other processes.
const COMMIT_ANNOUNCE_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("omoi-server-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        use axum::serve::Listener;

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        let mut listener = without_delay(listener);
        let client = TcpStream::connect(address).await.expect("connected");
        let (accepted, peer) = listener.accept().await;
        assert_eq!(peer, client.local_addr().expect("the client's address"));
        assert!(
            accepted.nodelay().expect("the option read"),
            "TCP_NODELAY set"
        );
    }

    #[test]
    fn the_generated_signing_secret_is_readable_by_its_owner_only() {
        let dir = scratch();
        let path = dir.join(".omoi/jwt-secret");
        let secret = dev_signing_secret(&path).expect("a secret");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.join(".omoi")), 0o711, "others pass, not list");
        assert_eq!(dev_signing_secret(&path).expect("the same secret"), secret);
        std::fs::remove_dir_all(dir).expect("cleaned up");
    }

    #[test]
    fn a_dev_directory_an_earlier_version_closed_lets_others_through_again() {
        let dir = scratch();
        let omoi = dir.join(".omoi");
        std::fs::create_dir(&omoi).expect("made");
        std::fs::set_permissions(&omoi, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let secret = dev_signing_secret(&omoi.join("jwt-secret")).expect("a secret");
        assert_eq!(mode(&omoi), 0o711);
        assert!(!secret.is_empty());
        // A mode someone chose is theirs.
        std::fs::set_permissions(&omoi, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        dev_signing_secret(&omoi.join("jwt-secret")).expect("the secret");
        assert_eq!(mode(&omoi), 0o750);
        std::fs::remove_dir_all(dir).expect("cleaned up");
    }

    #[test]
    fn a_signing_secret_left_readable_by_others_is_tightened() {
        let dir = scratch();
        let path = dir.join("jwt-secret");
        std::fs::write(&path, "an older version's secret, 32 bytes long").expect("written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        dev_signing_secret(&path).expect("the secret");
        assert_eq!(mode(&path), 0o600);
        std::fs::remove_dir_all(dir).expect("cleaned up");
    }
}
