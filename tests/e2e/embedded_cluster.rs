//! The PostgreSQL cluster `omoi dev`, `omoi db` and the test harness run for themselves,
//! each test with a cluster of its own in a scratch directory: only its password opens it,
//! a cluster made before passwords is given one, and `omoi db stop` with a relative data
//! directory really stops the server.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use omoi_store::embedded::EmbeddedPostgres;
use sqlx::{Connection, PgConnection};

/// A scratch directory the `postgres` user can reach (when the tests run as root, the
/// server runs as that user).
fn scratch() -> PathBuf {
    let directory = std::env::temp_dir().join(format!("omoi-pg-test-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&directory).expect("a scratch directory");
    std::fs::set_permissions(&directory, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    directory
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn server_pid(data_dir: &Path) -> u32 {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .expect("a pid file")
        .lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("a pid")
}

/// Stops the cluster and removes its directory however the test ends.
struct Scratch {
    directory: PathBuf,
    cluster: EmbeddedPostgres,
}

impl Scratch {
    fn new() -> Self {
        let directory = scratch();
        let cluster = EmbeddedPostgres::new(directory.join("data"), free_port())
            .expect("the server binaries");
        Self { directory, cluster }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.cluster.stop();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

fn without_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_, host) = rest.split_once('@').expect("credentials");
    format!("{scheme}://postgres@{host}")
}

fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (_, host) = rest.split_once('@').expect("credentials");
    format!("{scheme}://postgres:{password}@{host}")
}

#[tokio::test]
async fn only_the_clusters_password_opens_it() {
    let scratch = Scratch::new();
    let cluster = scratch.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.start())
        .await
        .expect("joined")
        .expect("started");
    let url = scratch.cluster.url("postgres").expect("a URL");
    let mut connection = PgConnection::connect(&url).await.expect("the URL opens it");
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&mut connection)
        .await
        .expect("a query");
    assert_eq!(one, 1);
    connection.close().await.expect("closed");
    assert!(
        PgConnection::connect(&without_password(&url))
            .await
            .is_err(),
        "a connection without the password was accepted"
    );
    assert!(
        PgConnection::connect(&with_password(&url, "guessed"))
            .await
            .is_err(),
        "a wrong password was accepted"
    );
    let file = scratch.cluster.password_file();
    let mode = std::fs::metadata(&file)
        .expect("the password file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
}

#[tokio::test]
async fn a_cluster_made_before_passwords_is_given_one_and_keeps_its_data() {
    let scratch = Scratch::new();
    let cluster = scratch.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.start())
        .await
        .expect("joined")
        .expect("started");
    let url = scratch.cluster.url("postgres").expect("a URL");
    let mut connection = PgConnection::connect(&url).await.expect("connected");
    sqlx::query("create database kept")
        .execute(&mut connection)
        .await
        .expect("a database");
    connection.close().await.expect("closed");
    // What an older omoi left: no password file, and rules that trust every connection.
    let cluster = scratch.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .expect("joined")
        .expect("stopped");
    let data_dir = &scratch.cluster.data_dir;
    std::fs::remove_file(scratch.cluster.password_file()).expect("removed");
    let hba = data_dir.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(&hba, rules.replace("scram-sha-256", "trust")).expect("trusting again");

    let cluster = scratch.cluster.clone();
    tokio::task::spawn_blocking(move || cluster.start())
        .await
        .expect("joined")
        .expect("started again");
    let url = scratch.cluster.url("kept").expect("a new password");
    PgConnection::connect(&url)
        .await
        .expect("the data is still there, behind the new password")
        .close()
        .await
        .expect("closed");
    assert!(
        PgConnection::connect(&without_password(&url))
            .await
            .is_err(),
        "the old cluster still trusts every connection"
    );
}

fn omoi(directory: &Path, port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_omoi"))
        .args(args)
        .current_dir(directory)
        .env("OMOI_DATABASE__EMBEDDED__PORT", port.to_string())
        .env_remove("DATABASE_URL")
        .output()
        .expect("omoi runs")
}

/// `omoi dev` as a person runs it in `directory`: no `DATABASE_URL` nor
/// `OMOI_JWT_SECRET`, its cluster on `port`, the API on `http_port`.
fn omoi_dev(directory: &Path, port: u16, http_port: u16) -> Command {
    let mut dev = Command::new(env!("CARGO_BIN_EXE_omoi"));
    dev.arg("dev")
        .current_dir(directory)
        .env("OMOI_DATABASE__EMBEDDED__PORT", port.to_string())
        .env("OMOI_APPLICATION__PORT", http_port.to_string())
        .env_remove("DATABASE_URL")
        .env_remove("OMOI_JWT_SECRET");
    dev
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn omoi_db_stop_with_a_relative_data_dir_stops_the_server() {
    let scratch = Scratch::new();
    let (directory, port) = (&scratch.directory, scratch.cluster.port);
    let url = succeeded(&omoi(
        directory,
        port,
        &["db", "start", "--data-dir", "data"],
    ));
    assert!(url.starts_with("postgres://postgres:"), "{url}");
    let pid = server_pid(&directory.join("data"));
    assert!(alive(pid));
    let status = omoi(directory, port, &["db", "status", "--data-dir", "data"]);
    assert!(succeeded(&status).starts_with("running"));

    let stopped = succeeded(&omoi(
        directory,
        port,
        &["db", "stop", "--data-dir", "data"],
    ));
    assert_eq!(stopped.trim(), "stopped");
    assert!(
        !alive(pid),
        "the server (pid {pid}) still runs after `omoi db stop`"
    );
    assert!(!directory.join("data/postmaster.pid").exists());
    let status = omoi(directory, port, &["db", "status", "--data-dir", "data"]);
    assert_eq!(status.status.code(), Some(3), "{status:?}");
}

/// The quick start, as a person runs it on a fresh checkout: `omoi dev` in a directory of
/// its own, without `DATABASE_URL` or `OMOI_JWT_SECRET`, starts its cluster (as the
/// `postgres` user when run as root: `.omoi`, which also holds the generated signing
/// secret, must let that user through), serves the API, and stops both on Ctrl-C.
#[tokio::test]
async fn omoi_dev_starts_from_a_fresh_directory_and_stops_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let scratch = Scratch::new();
    let (directory, port) = (&scratch.directory, scratch.cluster.port);
    let http_port = free_port();
    let mut dev = Dev(omoi_dev(directory, port, http_port)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("omoi dev runs"));
    let stdout = dev.0.stdout.take().expect("its output");
    let printed: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|line| !line.starts_with("  try:"))
        .collect();
    assert!(
        printed.iter().any(|l| l.starts_with("omoi is running")),
        "{printed:?}\n{}",
        std::io::read_to_string(dev.0.stderr.take().expect("its errors")).unwrap_or_default()
    );
    let key = printed
        .iter()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("omoi_sk_")))
        .expect("an API key printed");
    let project = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("project:"))
        .expect("a project printed")
        .trim();
    let answer = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{http_port}/api/v1/projects/{project}"
        ))
        .bearer_auth(key)
        .send()
        .await
        .expect("an answer");
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&directory.join(".omoi/jwt-secret")), 0o600);
    assert_eq!(mode(&directory.join(".omoi")), 0o711);

    let data_dir = directory.join(".omoi/pgdata");
    let pid = server_pid(&data_dir);
    let exit = dev.interrupt();
    assert!(exit.success(), "{exit:?}");
    assert!(
        !alive(pid),
        "its PostgreSQL (pid {pid}) still runs after Ctrl-C"
    );
}

/// `omoi dev` as a child process, interrupted as Ctrl-C would when dropped: a failed
/// assertion does not leave it, and its PostgreSQL, running.
struct Dev(std::process::Child);

impl Dev {
    /// Sends SIGINT and waits for the process to end.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let sent = self.sigint().expect("kill runs");
        assert!(sent.success(), "SIGINT not sent");
        self.0.wait().expect("omoi dev ends")
    }

    fn sigint(&self) -> std::io::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) && self.sigint().is_ok() {
            let _ = self.0.wait();
        }
    }
}

/// `omoi dev` whose start fails after its cluster started (here: its HTTP port is taken)
/// exits with the error and stops that cluster instead of leaving it running.
#[test]
fn omoi_dev_that_cannot_start_stops_its_cluster() {
    let scratch = Scratch::new();
    let (directory, port) = (&scratch.directory, scratch.cluster.port);
    let taken = TcpListener::bind("0.0.0.0:0").expect("a port to take");
    let http_port = taken.local_addr().expect("its address").port();
    /// Stops the cluster `omoi dev` made, should the test fail while it runs.
    struct StopsDevCluster<'a>(&'a Path, u16);
    impl Drop for StopsDevCluster<'_> {
        fn drop(&mut self) {
            let _ = omoi(
                self.0,
                self.1,
                &["db", "stop", "--data-dir", ".omoi/pgdata"],
            );
        }
    }
    let _cleanup = StopsDevCluster(directory, port);
    let dev = omoi_dev(directory, port, http_port)
        .output()
        .expect("omoi dev runs");
    assert!(!dev.status.success(), "{dev:?}");
    assert!(
        directory.join(".omoi/pgdata/PG_VERSION").exists(),
        "the cluster was made before the start failed: {dev:?}"
    );
    let status = omoi(
        directory,
        port,
        &["db", "status", "--data-dir", ".omoi/pgdata"],
    );
    assert_eq!(status.status.code(), Some(3), "still running: {status:?}");
    drop(taken);
}

/// A pid file a crash left behind, naming a process that is now another one (here a
/// `sleep`): the cluster counts as stopped, `omoi db stop` signals nothing, and `omoi db
/// start` starts it (the server would take the file for a running server's).
#[test]
fn a_stale_pid_file_naming_another_process_is_no_running_server() {
    let scratch = Scratch::new();
    let (directory, port) = (&scratch.directory, scratch.cluster.port);
    let args = |action: &'static str| ["db", action, "--data-dir", "data"];
    succeeded(&omoi(directory, port, &args("start")));
    succeeded(&omoi(directory, port, &args("stop")));
    // Of the user the server runs as (`postgres` when the tests run as root), as a reused
    // pid would be: another user's process would not even answer `pg_ctl`'s probe.
    let mut sleep = Command::new("sleep");
    sleep.arg("60");
    if let Some((uid, gid)) = postgres_ids() {
        use std::os::unix::process::CommandExt;
        sleep.uid(uid).gid(gid);
    }
    let mut other = sleep.spawn().expect("a sleep");
    let pid_file = directory.join("data/postmaster.pid");
    std::fs::write(
        &pid_file,
        format!("{}\n{}\n", other.id(), directory.join("data").display()),
    )
    .expect("a stale pid file");

    let status = omoi(directory, port, &args("status"));
    assert_eq!(status.status.code(), Some(3), "{status:?}");
    succeeded(&omoi(directory, port, &args("stop")));
    assert!(
        matches!(other.try_wait(), Ok(None)),
        "`omoi db stop` signalled the unrelated process"
    );
    succeeded(&omoi(directory, port, &args("start")));
    let pid = server_pid(&directory.join("data"));
    assert_ne!(pid, other.id());
    assert!(alive(pid));
    succeeded(&omoi(directory, port, &args("stop")));
    let _ = other.kill();
    let _ = other.wait();
}

/// The `postgres` user's ids when the tests run as root (the server then runs as it).
fn postgres_ids() -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, "postgres"]).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().parse().ok()
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return None;
    }
    Some((id("-u")?, id("-g")?))
}
