//! A PostgreSQL cluster of our own, run from the machine's server binaries.
//!
//! `omoi dev` and the test harness use it when no `DATABASE_URL` is given. The data
//! directory is kept between runs. PostgreSQL refuses to run as root, so when we are root
//! its programs run as the `postgres` user (looked up in `/etc/passwd`).
//!
//! Only the cluster's owner may connect: the server listens on 127.0.0.1 and on no Unix
//! socket, and asks for the superuser's password (SCRAM), generated when the cluster is
//! made and kept in the data directory (see [`access`]). A cluster made before it had a
//! password (when it trusted every local connection) gets one at its next start, in
//! single-user mode, before it listens again.
//!
//! The data directory is made absolute first: as root, the programs run with the data
//! directory as their working directory, where a relative path names nothing.

mod access;

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    #[error("the PostgreSQL server of {data_dir} (pid {pid}) still runs after being stopped")]
    StillRunning { data_dir: PathBuf, pid: u32 },
    #[error("the cluster's password cannot be read from {path}: {source}")]
    NoPassword { path: PathBuf, source: io::Error },
    #[error(
        "PostgreSQL runs as the `postgres` user when omoi runs as root, and that user cannot \
         enter {directory} on the way to {data_dir}: let others through it (`chmod o+x \
         {directory}`), keep the data elsewhere, or run omoi as another user"
    )]
    Unreachable {
        directory: PathBuf,
        data_dir: PathBuf,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A cluster in `data_dir`, listening on 127.0.0.1:`port`.
#[derive(Debug, Clone)]
pub struct EmbeddedPostgres {
    /// Always absolute.
    pub data_dir: PathBuf,
    pub port: u16,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    /// Extra `-c name=value` server settings.
    options: Vec<String>,
}

impl EmbeddedPostgres {
    /// Finds the server binaries and decides which user runs them. A relative
    /// `data_dir` is taken from the current directory.
    pub fn new(data_dir: impl Into<PathBuf>, port: u16) -> Result<Self, EmbeddedError> {
        let data_dir = std::path::absolute(data_dir.into())?;
        let bin_dir = find_bin_dir(&data_dir).ok_or(EmbeddedError::BinariesNotFound)?;
        let run_as = if is_root()? {
            Some(postgres_user()?.ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        Ok(Self {
            data_dir,
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

    /// URL of database `name` on this cluster, with the superuser's password (known once
    /// the cluster has been started).
    pub fn url(&self, database: &str) -> Result<String, EmbeddedError> {
        let password =
            access::read_password(&self.data_dir).map_err(|source| EmbeddedError::NoPassword {
                path: self.password_file(),
                source,
            })?;
        Ok(format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{database}",
            self.port
        ))
    }

    /// The file holding the superuser's password (0600, inside the data directory).
    pub fn password_file(&self) -> PathBuf {
        access::password_file(&self.data_dir)
    }

    /// Initialises the data directory if needed, gives the cluster a password if it has
    /// none, and starts the server unless it runs.
    pub fn start(&self) -> Result<(), EmbeddedError> {
        self.require_reachable()?;
        if !self.data_dir.join("PG_VERSION").exists() {
            self.init()?;
        }
        if !self.password_file().exists() {
            // Made just now, or before clusters had passwords (a running one is stopped:
            // single-user mode needs the server down).
            tracing::info!(data_dir = %self.data_dir.display(), "giving the PostgreSQL cluster a password");
            self.stop()?;
            self.set_password()?;
        }
        if self.is_running()? {
            return Ok(());
        }
        if self.stale_pid_file() {
            // The server would take its process for a running server and refuse to start.
            tracing::info!(data_dir = %self.data_dir.display(), "removing a stale postmaster.pid");
            fs::remove_file(self.data_dir.join("postmaster.pid"))?;
        }
        let log = self.data_dir.join("server.log");
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
             -c password_encryption=scram-sha-256 \
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

    /// Stops the server (fast shutdown: open sessions are rolled back) and returns once
    /// its process is gone — an error if it is not.
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        let Some(pid) = access::server_pid(&self.data_dir) else {
            return Ok(());
        };
        if self.is_running()? {
            let dir = self.data_dir.as_os_str();
            self.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    dir,
                    "-m".as_ref(),
                    "fast".as_ref(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "stop".as_ref(),
                ],
            )?;
        }
        self.until_gone(pid)
    }

    /// Waits a little for process `pid` to end: `pg_ctl stop -w` returns when the pid
    /// file is removed, which the server does just before it exits.
    fn until_gone(&self, pid: u32) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while access::serves(pid, &self.data_dir) {
            if Instant::now() >= deadline {
                return Err(EmbeddedError::StillRunning {
                    data_dir: self.data_dir.clone(),
                    pid,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether a server is running on this data directory (`pg_ctl status`; an answer
    /// other than "running" or "not running" is an error, not a "no").
    pub fn is_running(&self) -> Result<bool, EmbeddedError> {
        if !self.data_dir.join("postmaster.pid").exists() {
            return Ok(false);
        }
        // `pg_ctl status` asks only whether the pid lives: after a crash or a reboot the
        // pid file's process may be another one now, which is no server of ours (and
        // `pg_ctl stop` would signal it).
        if self.stale_pid_file() {
            return Ok(false);
        }
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()?;
        match status.status.code() {
            Some(0) => Ok(true),
            Some(3) => Ok(false),
            _ => Err(EmbeddedError::CommandFailed {
                program: "pg_ctl status".into(),
                detail: String::from_utf8_lossy(&status.stderr).trim().to_string(),
            }),
        }
    }

    /// Whether the pid file names a process that is not a server of this directory.
    fn stale_pid_file(&self) -> bool {
        access::server_pid(&self.data_dir).is_some_and(|pid| !access::serves(pid, &self.data_dir))
    }

    /// Sets a new superuser password in single-user mode (no connection is possible
    /// meanwhile), makes every connection ask for it, then keeps it: the password file
    /// comes last, so a start interrupted before it does all this again.
    fn set_password(&self) -> Result<(), EmbeddedError> {
        let password = access::generate_password();
        self.single_user(&format!(
            "alter role postgres with password '{password}';\n"
        ))
        .map_err(|error| match error {
            EmbeddedError::CommandFailed { program, detail } => EmbeddedError::CommandFailed {
                program,
                detail: detail.replace(&password, "[password]"),
            },
            error => error,
        })?;
        access::require_passwords(&self.data_dir.join("pg_hba.conf"), self.run_as)?;
        access::write_password(&self.data_dir, &password, self.run_as)?;
        Ok(())
    }

    /// Runs `statements` in a single-user backend (the server must be stopped). It exits
    /// 0 even when a statement fails, so its log is read for errors.
    fn single_user(&self, statements: &str) -> Result<(), EmbeddedError> {
        let mut child = self
            .command("postgres")
            .arg("--single")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-c", "password_encryption=scram-sha-256", "postgres"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(statements.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        let log = String::from_utf8_lossy(&output.stderr);
        if output.status.success() && !log.contains("ERROR:") && !log.contains("FATAL:") {
            return Ok(());
        }
        Err(EmbeddedError::CommandFailed {
            program: "postgres --single".into(),
            detail: log.trim().to_string(),
        })
    }

    /// When PostgreSQL runs as another user than ours, every directory above its data
    /// directory must let that user through; otherwise its programs fail with a bare
    /// "permission denied" that names no path.
    fn require_reachable(&self) -> Result<(), EmbeddedError> {
        let Some((uid, gid)) = self.run_as else {
            return Ok(());
        };
        for directory in self.data_dir.ancestors().skip(1) {
            let Ok(metadata) = fs::metadata(directory) else {
                // Not made yet: `init` checks again once it made them.
                continue;
            };
            if !lets_through(&metadata, uid, gid) {
                return Err(EmbeddedError::Unreachable {
                    directory: directory.to_path_buf(),
                    data_dir: self.data_dir.clone(),
                });
            }
        }
        Ok(())
    }

    fn init(&self) -> Result<(), EmbeddedError> {
        fs::create_dir_all(&self.data_dir)?;
        // The directories made just now took the umask's permissions.
        self.require_reachable()?;
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

/// `$OMOI_PG_BIN`; else, for a data directory made already, the
/// `/usr/lib/postgresql/<version>/bin` of its major version (a newer server refuses it:
/// "database files are incompatible with server"); else the directory of `initdb` on
/// PATH, else the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir(data_dir: &Path) -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("OMOI_PG_BIN").map(PathBuf::from) {
        return has_server(&dir).then_some(dir);
    }
    let installed: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = entry.path().join("bin");
                    has_server(&bin).then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    let made_by = fs::read_to_string(data_dir.join("PG_VERSION"))
        .ok()
        .and_then(|version| version.trim().parse::<u32>().ok());
    if let Some(bin) = made_by.and_then(|wanted| of_version(&installed, wanted)) {
        return Some(bin);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(dir) = on_path.into_iter().find(|d| has_server(d)) {
        return Some(dir);
    }
    installed.into_iter().max().map(|(_, bin)| bin)
}

/// The installed server binaries of major version `wanted`, if any.
fn of_version(installed: &[(u32, PathBuf)], wanted: u32) -> Option<PathBuf> {
    installed
        .iter()
        .find(|(version, _)| *version == wanted)
        .map(|(_, bin)| bin.clone())
}

/// Whether a directory with `metadata` lets the user `uid` (of group `gid`) enter it:
/// the owner's, the group's or the others' search bit, whichever class the user is in.
fn lets_through(metadata: &fs::Metadata, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mode = metadata.mode();
    if metadata.uid() == uid {
        mode & 0o100 != 0
    } else if metadata.gid() == gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
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
