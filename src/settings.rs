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
    #[serde(default)]
    pub billing: BillingSettings,
    /// Limits of live delivery (WebSocket).
    #[serde(default)]
    pub live: LiveSettings,
    /// The process managers' tables (the task of each phase of a hand-made ticket).
    #[serde(default)]
    pub workflow: omoi_workflow::WorkflowConfig,
    /// Supervision: heartbeat escalation and stalled tasks.
    #[serde(default)]
    pub monitoring: omoi_orchestrator::MonitoringConfig,
}

/// The limits of live delivery that operators set; its other tunables are code defaults
/// (`omoi_api::live::LiveConfig`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveSettings {
    /// Bytes waiting to be written to one connection before its live deltas wait (and,
    /// after the slow-client grace, its subscription gets `resync`).
    pub queue_bytes: usize,
    /// WebSockets one user or API key may hold open at once per process.
    pub max_sockets_per_principal: usize,
    /// Bytes of recent events kept in memory for resumptions (older ones are read from
    /// the database).
    pub replay_bytes: usize,
    /// Bytes of large events (over 4 KiB) held for subscribers that have not taken them
    /// yet; one further behind reads them from the database.
    pub broadcast_bytes: usize,
    /// Origins besides the server's own whose pages may open a cookie-authenticated
    /// WebSocket (`https://dash.example`).
    pub allowed_origins: Vec<String>,
}

impl Default for LiveSettings {
    fn default() -> Self {
        let live = omoi_api::live::LiveConfig::default();
        Self {
            queue_bytes: live.queue_bytes,
            max_sockets_per_principal: live.max_sockets_per_principal,
            replay_bytes: live.replay_bytes,
            broadcast_bytes: live.broadcast_bytes,
            allowed_origins: live.allowed_origins,
        }
    }
}

impl LiveSettings {
    pub fn config(&self) -> omoi_api::live::LiveConfig {
        omoi_api::live::LiveConfig {
            queue_bytes: self.queue_bytes,
            max_sockets_per_principal: self.max_sockets_per_principal,
            replay_bytes: self.replay_bytes,
            broadcast_bytes: self.broadcast_bytes,
            allowed_origins: self.allowed_origins.clone(),
            ..omoi_api::live::LiveConfig::default()
        }
    }
}

/// Plans and Stripe. The secrets come from the environment only: `OMOI_STRIPE_SECRET_KEY`
/// and `OMOI_STRIPE_WEBHOOK_SECRET` (comma-separated while a secret rotates).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BillingSettings {
    pub plans: Vec<omoi_domain::billing::Plan>,
    pub workflow_price_cents: i64,
    pub stripe_api_base: String,
    pub success_url: String,
    pub cancel_url: String,
    pub portal_return_url: String,
    /// Hours after a failed payment before the organization is suspended.
    pub payment_grace_hours: i64,
}

impl Default for BillingSettings {
    fn default() -> Self {
        let plans = omoi_domain::billing::Plans::default();
        let stripe = omoi_api::billing::BillingConfig::default().stripe;
        Self {
            plans: plans.plans,
            workflow_price_cents: plans.workflow_price_cents,
            stripe_api_base: stripe.base_url,
            success_url: stripe.success_url,
            cancel_url: stripe.cancel_url,
            portal_return_url: stripe.portal_return_url,
            payment_grace_hours: 168,
        }
    }
}

impl BillingSettings {
    /// With the secrets from the environment.
    pub fn config(&self) -> omoi_api::billing::BillingConfig {
        let env = |name: &str| std::env::var(name).unwrap_or_default();
        omoi_api::billing::BillingConfig {
            plans: self.plans(),
            stripe: omoi_billing::stripe::StripeApi {
                base_url: self.stripe_api_base.clone(),
                secret_key: env("OMOI_STRIPE_SECRET_KEY").into(),
                success_url: self.success_url.clone(),
                cancel_url: self.cancel_url.clone(),
                portal_return_url: self.portal_return_url.clone(),
            },
            webhook_secrets: env("OMOI_STRIPE_WEBHOOK_SECRET")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(SecretString::from)
                .collect(),
            payment_grace_seconds: self.payment_grace_hours.saturating_mul(3600),
        }
    }

    /// Refuses settings that would bill wrongly: a contradictory or negative plan table, a
    /// negative grace, a Stripe address that is not http(s).
    pub fn check(&self) -> anyhow::Result<()> {
        self.plans().check().context("billing.plans")?;
        anyhow::ensure!(
            self.payment_grace_hours >= 0,
            "billing.payment_grace_hours is {}: 0 or more",
            self.payment_grace_hours
        );
        anyhow::ensure!(
            self.stripe_api_base.starts_with("https://")
                || self.stripe_api_base.starts_with("http://"),
            "billing.stripe_api_base {:?} is not an http(s) address",
            self.stripe_api_base
        );
        Ok(())
    }

    pub fn plans(&self) -> omoi_domain::billing::Plans {
        omoi_domain::billing::Plans {
            plans: self.plans.clone(),
            workflow_price_cents: self.workflow_price_cents,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApplicationSettings {
    pub host: String,
    pub port: u16,
    pub log_format: LogFormat,
    /// Most events one view `as_of` a past position may replay (else 422).
    pub max_replay_events: usize,
    /// Views `as_of` rebuilt at once (more wait, then 429); 0 means one per core.
    pub concurrent_replays: usize,
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
    /// Adds `Secure` to the session cookies: set when clients reach the API over https.
    pub secure_cookies: bool,
    pub password_hashing: HashingSettings,
    pub rate_limits: RateLimitSettings,
    /// How often expired credentials are deleted (0: never, e.g. on all replicas but one).
    pub prune_interval_seconds: u64,
}

/// Argon2 hashes at once, and how long a request waits for a slot before a 503.
#[derive(Debug, Clone, Deserialize)]
pub struct HashingSettings {
    /// 0: one per available core.
    pub concurrency: usize,
    pub max_wait_ms: u64,
}

/// Quotas of register, login and refresh, and of refused credentials.
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub per_address: omoi_api::auth::guard::RateQuota,
    pub per_account: omoi_api::auth::guard::RateQuota,
    /// Credentials refused after a database lookup (any route), per client address.
    pub refused_credentials_per_address: omoi_api::auth::guard::RateQuota,
    /// The header a trusted reverse proxy names the client in; empty: the peer address.
    pub client_address_header: String,
}

impl AuthSettings {
    /// The API's guard of the public auth routes.
    pub fn guard(&self) -> anyhow::Result<omoi_api::auth::guard::GuardConfig> {
        let header = self.rate_limits.client_address_header.trim();
        let client_address_header = (!header.is_empty())
            .then(|| axum::http::HeaderName::from_bytes(header.as_bytes()))
            .transpose()
            .context("auth.rate_limits.client_address_header is not a header name")?;
        Ok(omoi_api::auth::guard::GuardConfig {
            hash_slots: self.password_hashing.concurrency,
            hash_wait: std::time::Duration::from_millis(self.password_hashing.max_wait_ms),
            per_address: self.rate_limits.per_address,
            per_account: self.rate_limits.per_account,
            refused_credentials_per_address: self.rate_limits.refused_credentials_per_address,
            client_address_header,
            secure_cookies: self.secure_cookies,
            prune_every: std::time::Duration::from_secs(self.prune_interval_seconds),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CommandSettings {
    pub max_attempts: u32,
    pub cached_aggregates: usize,
    pub trust_kept: bool,
    pub group_commit: GroupCommitSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GroupCommitSettings {
    pub max_commands: usize,
    pub in_flight: usize,
    pub max_wait_us: u64,
}

impl CommandSettings {
    /// The command bus these settings describe.
    pub fn bus(&self) -> omoi_store::BusConfig {
        omoi_store::BusConfig {
            retry: omoi_store::bus::RetryPolicy {
                max_attempts: self.max_attempts.max(1),
                ..omoi_store::bus::RetryPolicy::default()
            },
            cached: self.cached_aggregates,
            trust_kept: self.trust_kept,
            group: omoi_store::group::GroupCommitConfig {
                max_commands: self.group_commit.max_commands.max(1),
                in_flight: self.group_commit.in_flight.max(1),
                max_wait: std::time::Duration::from_micros(self.group_commit.max_wait_us),
            },
        }
    }
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
        settings.billing.check()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_settings_hold_the_default_phase_table() {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(
                include_str!("../config/base.yaml"),
                FileFormat::Yaml,
            ))
            .build()
            .and_then(Config::try_deserialize)
            .expect("the base settings");
        assert_eq!(
            settings.workflow.phase_tasks,
            omoi_workflow::spawn::PhaseTaskTable::default()
        );
        settings.billing.check().expect("the base billing settings");
    }

    #[test]
    fn billing_settings_that_would_bill_wrongly_are_refused() {
        let base = BillingSettings::default();
        base.check().expect("the defaults");
        let mut late = base.clone();
        late.payment_grace_hours = -1;
        let mut nowhere = base.clone();
        nowhere.stripe_api_base = "api.stripe.com".into();
        let mut twice = base.clone();
        twice.plans.push(twice.plans[0].clone());
        for (wrong, blamed) in [
            (late, "payment_grace_hours"),
            (nowhere, "stripe_api_base"),
            (twice, "billing.plans"),
        ] {
            let error = format!("{:#}", wrong.check().expect_err(blamed));
            assert!(error.contains(blamed), "{error}");
        }
    }
}
