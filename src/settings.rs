//! Typed settings: `config/base.yaml` → `config/{OMOI_ENV}.yaml` → `OMOI_…` variables.
//!
//! The base file is also compiled into the binary, so `omoi` runs from any directory.
//! Secrets (the database URL) come only from the environment.

use std::path::PathBuf;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat};
use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub application: ApplicationSettings,
    pub database: DatabaseSettings,
    pub commands: CommandSettings,
    pub auth: AuthSettings,
    /// The orchestrator (`omoi worker`, and part of `omoi dev`).
    #[serde(default)]
    pub worker: omoi_orchestrator::WorkerConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApplicationSettings {
    pub host: String,
    pub port: u16,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub max_connections: u32,
    pub migrate_on_start: bool,
    pub embedded: EmbeddedSettings,
    /// From `DATABASE_URL`; `None` means "run our own PostgreSQL" for `omoi dev`.
    #[serde(skip)]
    pub url: Option<SecretString>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddedSettings {
    pub data_dir: PathBuf,
    pub port: u16,
    pub database: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// How long an accepted credential is remembered (0 disables the cache). Revocations
    /// and membership changes made through another replica take up to this long to apply.
    pub credential_cache_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CommandSettings {
    pub max_attempts: u32,
}

impl Settings {
    /// Loads the layers for environment `OMOI_ENV` (default `local`).
    pub fn load() -> anyhow::Result<Self> {
        let environment = std::env::var("OMOI_ENV").unwrap_or_else(|_| "local".into());
        let dir = std::env::var_os("OMOI_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let settings = Config::builder()
            .add_source(File::from_str(
                include_str!("../config/base.yaml"),
                FileFormat::Yaml,
            ))
            .add_source(File::from(dir.join("base.yaml")).required(false))
            .add_source(File::from(dir.join(format!("{environment}.yaml"))).required(false))
            .add_source(
                Environment::with_prefix("OMOI")
                    .prefix_separator("_")
                    .separator("__"),
            )
            .build()
            .context("reading settings")?;
        let mut settings: Settings = settings
            .try_deserialize()
            .context("settings do not have the expected shape")?;
        settings.database.url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .map(SecretString::from);
        Ok(settings)
    }
}
