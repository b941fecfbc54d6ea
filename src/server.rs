//! Assembling and running the server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use omoi_api::metrics::Metrics;
use omoi_api::state::AppState;
use omoi_store::bus::RetryPolicy;
use omoi_store::embedded::{ensure_database, EmbeddedPostgres};
use omoi_store::{db, CommandBus};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::settings::{EmbeddedSettings, Settings};

/// A database to use, and the cluster we started for it, if any.
pub struct Database {
    pub url: String,
    pub pool: PgPool,
    pub embedded: Option<EmbeddedPostgres>,
}

/// Connects to `DATABASE_URL`, or — when `allow_embedded` and no URL is set — starts our
/// own PostgreSQL cluster and creates its database.
pub async fn open_database(settings: &Settings, allow_embedded: bool) -> anyhow::Result<Database> {
    let (url, embedded) = match (&settings.database.url, allow_embedded) {
        (Some(url), _) => (url.expose_secret().to_string(), None),
        (None, true) => {
            let cluster = start_embedded(&settings.database.embedded).await?;
            (
                cluster.url(&settings.database.embedded.database),
                Some(cluster),
            )
        }
        (None, false) => anyhow::bail!(
            "DATABASE_URL is not set; set it, or use `omoi dev` to run a PostgreSQL of our own"
        ),
    };
    let pool = db::connect(&url, settings.database.max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    if settings.database.migrate_on_start {
        db::migrate(&pool).await.context("applying migrations")?;
    }
    Ok(Database {
        url,
        pool,
        embedded,
    })
}

/// Starts (initialising if needed) the cluster in `settings.data_dir` and creates its
/// database.
pub async fn start_embedded(settings: &EmbeddedSettings) -> anyhow::Result<EmbeddedPostgres> {
    let data_dir = absolute(&settings.data_dir)?;
    let cluster = EmbeddedPostgres::new(&data_dir, settings.port)?;
    let starting = cluster.clone();
    tokio::task::spawn_blocking(move || starting.start())
        .await
        .context("starting PostgreSQL")??;
    tracing::info!(data_dir = %data_dir.display(), port = settings.port, "PostgreSQL of our own is running");
    let admin = db::connect(&cluster.url("postgres"), 1).await?;
    ensure_database(&admin, &settings.database).await?;
    admin.close().await;
    Ok(cluster)
}

fn absolute(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    Ok(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    })
}

/// The application state for a pool.
pub fn app_state(pool: PgPool, settings: &Settings) -> anyhow::Result<AppState> {
    let retry = RetryPolicy {
        max_attempts: settings.commands.max_attempts.max(1),
        ..RetryPolicy::default()
    };
    Ok(AppState::new(CommandBus::new(pool, retry), Metrics::new()?))
}

/// Serves the API on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = omoi_api::app(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving HTTP")
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
