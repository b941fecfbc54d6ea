//! The processes under test: `omoi serve` replicas on fixed loopback ports and `omoi
//! worker`s, all on one database, each started from this very binary, killed with SIGKILL
//! (no shutdown code runs) and started again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::{Child, Command};

/// What a member of the fleet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `omoi serve` on this loopback port (kept across restarts, so clients find it again).
    Serve {
        port: u16,
    },
    Worker,
}

struct Member {
    name: String,
    role: Role,
    child: Child,
    /// When the current process was started.
    started: Instant,
}

/// How the fleet's processes are configured.
pub struct FleetConfig {
    pub database_url: String,
    pub serve: usize,
    pub workers: usize,
    /// The environment every process gets besides the database (secrets, worker settings).
    pub environment: Vec<(String, String)>,
    /// Where each process's log (stderr, appended across restarts) is written.
    pub logs: PathBuf,
}

/// The running processes.
pub struct Fleet {
    config: FleetConfig,
    members: Vec<Member>,
    /// Kills so far, per member.
    pub kills: Vec<u32>,
    /// The longest time a restarted replica took to answer `/health`.
    pub slowest_restart: Duration,
}

/// How long a (re)started replica may take to answer `/health`.
const READY_WITHIN: Duration = Duration::from_secs(60);

impl Fleet {
    /// Starts `serve` replicas on free loopback ports and `workers` workers.
    pub fn start(config: FleetConfig) -> anyhow::Result<Self> {
        let mut members = Vec::new();
        for n in 0..config.serve {
            let role = Role::Serve { port: free_port()? };
            members.push(spawn(&config, format!("serve-{n}"), role)?);
        }
        for n in 0..config.workers {
            members.push(spawn(&config, format!("worker-{n}"), Role::Worker)?);
        }
        let kills = vec![0; members.len()];
        Ok(Self {
            config,
            members,
            kills,
            slowest_restart: Duration::ZERO,
        })
    }

    /// The replicas' base URLs (`http://127.0.0.1:<port>`), fixed for the whole run.
    pub fn addresses(&self) -> Vec<String> {
        self.members
            .iter()
            .filter_map(|m| match m.role {
                Role::Serve { port } => Some(format!("http://127.0.0.1:{port}")),
                Role::Worker => None,
            })
            .collect()
    }

    /// How many processes the fleet has.
    pub fn count(&self) -> usize {
        self.members.len()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.members[index].name
    }

    /// Waits until every replica answers `/health` and every worker is still running.
    pub async fn ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        for index in 0..self.members.len() {
            self.wait_ready(index, http).await?;
        }
        Ok(())
    }

    /// SIGKILLs member `index` and starts it again at once.
    pub async fn kill_and_restart(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        member.child.start_kill().context("SIGKILL")?;
        member
            .child
            .wait()
            .await
            .context("reaping a killed process")?;
        let (name, role) = (member.name.clone(), member.role);
        self.members[index] = spawn(&self.config, name, role)?;
        self.kills[index] += 1;
        Ok(())
    }

    /// Waits until member `index` serves (a replica: `/health` answers 200) or, for a
    /// worker, is still running a moment after its start. A process that exits or never
    /// answers is an error: it did not come back.
    pub async fn wait_ready(&mut self, index: usize, http: &reqwest::Client) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        let deadline = member.started + READY_WITHIN;
        loop {
            if let Some(status) = member.child.try_wait()? {
                anyhow::bail!("{} exited ({status}) instead of running", member.name);
            }
            let ready = match member.role {
                Role::Serve { port } => healthy(http, port).await,
                Role::Worker => member.started.elapsed() >= Duration::from_millis(500),
            };
            if ready {
                let took = member.started.elapsed();
                self.slowest_restart = self.slowest_restart.max(took);
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not come back within {} s",
                member.name,
                READY_WITHIN.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts again the members whose process exited by itself (none should have), and
    /// says which did.
    pub fn revive(&mut self) -> anyhow::Result<Vec<String>> {
        let mut exited = Vec::new();
        for index in 0..self.members.len() {
            let member = &mut self.members[index];
            if let Some(status) = member.child.try_wait()? {
                exited.push(format!("{} exited by itself ({status})", member.name));
                let (name, role) = (member.name.clone(), member.role);
                self.members[index] = spawn(&self.config, name, role)?;
            }
        }
        Ok(exited)
    }

    /// Kills every process (the run is over).
    pub async fn stop(&mut self) {
        for member in &mut self.members {
            let _ = member.child.start_kill();
            let _ = member.child.wait().await;
        }
    }
}

fn spawn(config: &FleetConfig, name: String, role: Role) -> anyhow::Result<Member> {
    let log = open_log(&config.logs, &name)?;
    let mut command = Command::new(crate::setup::omoi_binary()?);
    command
        .arg(match role {
            Role::Serve { .. } => "serve",
            Role::Worker => "worker",
        })
        .envs(config.environment.iter().map(|(k, v)| (k, v)))
        .env("DATABASE_URL", &config.database_url)
        // Loopback only, whatever the environment says.
        .env("OMOI_APPLICATION__HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    if let Role::Serve { port } = role {
        command.env("OMOI_APPLICATION__PORT", port.to_string());
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Member {
        name,
        role,
        child,
        started: Instant::now(),
    })
}

fn open_log(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

async fn healthy(http: &reqwest::Client, port: u16) -> bool {
    http.get(format!("http://127.0.0.1:{port}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
