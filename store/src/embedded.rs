//! A PostgreSQL cluster of our own, run from the machine's server binaries.
//!
//! `omoi dev` and the test harness use it when no `DATABASE_URL` is given. The data
//! directory is kept between runs. PostgreSQL refuses to run as root, so when we are root
//! its programs run as the `postgres` user (looked up in `/etc/passwd`).

use std::fs;
use std::io;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Why the cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb and pg_ctl in $OMOI_PG_BIN, \
         on PATH and under /usr/lib/postgresql/*/bin); install them, e.g. `apt-get install \
         postgresql`, or set DATABASE_URL"
    )]
    BinariesNotFound,
    #[error("running as root, but there is no `postgres` user to run PostgreSQL as")]
    NoPostgresUser,
    #[error("{program} failed: {detail}")]
    CommandFailed { program: String, detail: String },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A cluster in `data_dir`, listening on 127.0.0.1:`port`.
#[derive(Debug, Clone)]
pub struct EmbeddedPostgres {
    pub data_dir: PathBuf,
    pub port: u16,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    /// Extra `-c name=value` server settings.
    options: Vec<String>,
}

impl EmbeddedPostgres {
    /// Finds the server binaries and decides which user runs them.
    pub fn new(data_dir: impl Into<PathBuf>, port: u16) -> Result<Self, EmbeddedError> {
        let bin_dir = find_bin_dir().ok_or(EmbeddedError::BinariesNotFound)?;
        let run_as = if is_root()? {
            Some(postgres_user()?.ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        Ok(Self {
            data_dir: data_dir.into(),
            port,
            bin_dir,
            run_as,
            options: Vec::new(),
        })
    }

    /// Adds server settings (`name=value`), e.g. `fsync=off` for a throw-away test cluster.
    pub fn with_options(mut self, options: &[&str]) -> Self {
        self.options.extend(options.iter().map(|o| o.to_string()));
        self
    }

    /// URL of database `name` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Initialises the data directory if needed and starts the server unless it runs.
    pub fn start(&self) -> Result<(), EmbeddedError> {
        if !self.data_dir.join("PG_VERSION").exists() {
            self.init()?;
        }
        if self.is_running()? {
            return Ok(());
        }
        let log = self.data_dir.join("server.log");
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c max_connections=300 -c shared_buffers=128MB",
            self.port
        );
        for option in &self.options {
            options.push_str(" -c ");
            options.push_str(option);
        }
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )
        .map(drop)
    }

    /// Stops the server (fast shutdown: open sessions are rolled back).
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        if !self.is_running()? {
            return Ok(());
        }
        let dir = self.data_dir.as_os_str();
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                dir,
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
        .map(drop)
    }

    /// Whether a server is running on this data directory.
    pub fn is_running(&self) -> Result<bool, EmbeddedError> {
        if !self.data_dir.join("postmaster.pid").exists() {
            return Ok(false);
        }
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()?;
        Ok(status.status.success())
    }

    fn init(&self) -> Result<(), EmbeddedError> {
        fs::create_dir_all(&self.data_dir)?;
        fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = self.run_as {
            chown(&self.data_dir, Some(uid), Some(gid))?;
        }
        self.run(
            "initdb",
            &[
                "-D".as_ref(),
                self.data_dir.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--no-instructions".as_ref(),
            ],
        )
        .map(drop)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
            // The postgres user may not be able to read the caller's working directory.
            command.current_dir(&self.data_dir);
        }
        command.env("LC_ALL", "C.UTF-8");
        command
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<Output, EmbeddedError> {
        let output = self.command(program).args(args).output()?;
        if output.status.success() {
            return Ok(output);
        }
        let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        let log = self.data_dir.join("server.log");
        if let Ok(text) = fs::read_to_string(&log) {
            let tail: Vec<&str> = text.lines().rev().take(10).collect();
            detail.push_str("\nserver.log:\n");
            detail.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Err(EmbeddedError::CommandFailed {
            program: program.to_string(),
            detail,
        })
    }
}

/// `$OMOI_PG_BIN`, else the directory of `initdb` on PATH, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("OMOI_PG_BIN").map(PathBuf::from) {
        return has_server(&dir).then_some(dir);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| has_server(d)) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    // Our own process directory is owned by our effective uid.
    Ok(fs::metadata("/proc/self")?.uid() == 0)
}

/// The uid and gid of `postgres` from /etc/passwd.
fn postgres_user() -> io::Result<Option<(u32, u32)>> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    Ok(passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    }))
}

/// Creates database `name` unless it exists.
pub async fn ensure_database(pool: &sqlx::PgPool, name: &str) -> Result<(), sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(pool)
            .await?;
    if !exists {
        // Identifiers cannot be bound; the name is quoted and its quotes doubled.
        let quoted = name.replace('"', "\"\"");
        sqlx::query(&format!("create database \"{quoted}\""))
            .execute(pool)
            .await?;
    }
    Ok(())
}
