//! The built-in executor: runs a configured shell command for one task, in a fresh
//! working directory, with the task in environment variables and in `task.json`. Its
//! output lines become progress (at most one report per interval), its exit status the
//! task's completion or failure; a timeout or a cancellation kills it.
//!
//! What a failure records is read by every member of the organization (history, events,
//! WebSocket), while the command line and the worker's environment are the operator's and
//! may hold credentials: an error says what went wrong (exit status, the last line the
//! command wrote, a spawn error) and never repeats the command line, and the command does
//! not inherit the worker's own secrets.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use omoi_domain::common::clipped;
use omoi_domain::task::MAX_PROGRESS_CHARS;
use omoi_store::transcripts::MAX_LINE_CHARS;
use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::queue::QueuedTask;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed {
        output: Vec<String>,
    },
    /// The command could not run (or be followed) to its end.
    Failed {
        error: String,
    },
    /// The command ran and exited unsuccessfully.
    Exited {
        error: String,
    },
    TimedOut {
        after_seconds: u64,
    },
    /// Cancelled from outside: the process was stopped; nothing to record.
    Stopped,
}

/// The file in an attempt's directory where steering messages for its agent arrive, one
/// JSON object per line (`$OMOI_STEERING_FILE`).
pub const STEERING_FILE: &str = "steering.jsonl";

/// Lines kept from each stream for the result or the error.
const TAIL_LINES: usize = 20;

/// What a run needs besides the task.
#[derive(Debug, Clone)]
pub struct Run {
    pub command: String,
    pub directory: PathBuf,
    pub progress_interval: Duration,
    pub attempt: u32,
}

fn tail(lines: &mut Vec<String>, line: String) {
    if lines.len() == TAIL_LINES {
        lines.remove(0);
    }
    lines.push(line);
}

async fn prepare(directory: &Path, task: &QueuedTask, attempt: u32) -> std::io::Result<PathBuf> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)
        .await?;
    let file = directory.join("task.json");
    let document = json!({
        "id": task.id,
        "organization_id": task.organization_id,
        "project_id": task.project_id,
        "title": task.title,
        "description": task.description,
        "task_type": task.task_type,
        "priority": task.priority,
        "required_capabilities": task.required_capabilities,
        "attempt": attempt,
        "timeout_seconds": task.timeout_seconds,
        "validates": task.validates,
        "feedback": task.feedback,
    });
    tokio::fs::write(&file, serde_json::to_vec_pretty(&document)?).await?;
    // There from the start, so a command may watch it before anything arrives; created,
    // never truncated: a message delivered between the run's registration and this
    // (recorded as delivered) would otherwise be wiped.
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(directory.join(STEERING_FILE))
        .await?;
    Ok(file)
}

/// Where a run's output goes besides its outcome.
pub struct Sinks {
    /// Coalesced progress lines (at most one per `Run::progress_interval`).
    pub progress: mpsc::Sender<String>,
    /// Every line of both streams, in the order read (the transcript). Bounded: a slow
    /// reader slows the command down instead of piling its output up in memory.
    pub transcript: mpsc::Sender<String>,
}

/// Runs the command for `task`, its output to `sinks`; `cancel` turning true stops the
/// process.
pub async fn execute(
    task: &QueuedTask,
    run: &Run,
    sinks: Sinks,
    mut cancel: watch::Receiver<bool>,
) -> Outcome {
    let file = match prepare(&run.directory, task, run.attempt).await {
        Ok(file) => file,
        Err(error) => {
            return Outcome::Failed {
                error: format!("cannot prepare the working directory: {error}"),
            }
        }
    };
    let mut command = watched(&run.command);
    command.current_dir(&run.directory);
    for name in operator_variables(std::env::vars_os().map(|(name, _)| name)) {
        command.env_remove(name);
    }
    command
        .env("OMOI_TASK_ID", task.id.to_string())
        .env("OMOI_TASK_TITLE", &task.title)
        .env("OMOI_TASK_DESCRIPTION", &task.description)
        .env("OMOI_TASK_TYPE", &task.task_type)
        .env("OMOI_TASK_FILE", &file)
        .env("OMOI_STEERING_FILE", run.directory.join(STEERING_FILE))
        .env("OMOI_TASK_ATTEMPT", run.attempt.to_string())
        .env(
            "OMOI_TASK_FEEDBACK",
            task.feedback.as_deref().unwrap_or_default(),
        )
        .env("OMOI_PROJECT_ID", task.project_id.to_string())
        .env("OMOI_ORGANIZATION_ID", task.organization_id.to_string());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return Outcome::Failed {
                error: format!("cannot start the command: {error}"),
            }
        }
    };
    // Held, never written to, until the attempt is over (dropped on every return).
    let _lifeline = child.stdin.take();
    // Known only until the child is waited for; the group outlives it when it starts
    // processes of its own in the background.
    let group = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Outcome::Failed {
            error: "the command's output could not be captured".into(),
        };
    };
    let stdout_lines = tokio::spawn(forward_lines(
        stdout,
        sinks.transcript.clone(),
        Some((sinks.progress, run.progress_interval)),
    ));
    let stderr_lines = tokio::spawn(forward_lines(stderr, sinks.transcript, None));
    let limit = task
        .timeout_seconds
        .map(|s| Duration::from_secs(u64::from(s)));
    let deadline = async {
        match limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let cancelled = async {
        while !*cancel.borrow_and_update() {
            if cancel.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let ended = tokio::select! {
        status = child.wait() => Ok(status),
        () = deadline => Err(Outcome::TimedOut {
            after_seconds: limit.map_or(0, |l| l.as_secs()),
        }),
        () = cancelled => Err(Outcome::Stopped),
    };
    let status = match ended {
        Ok(status) => status,
        Err(outcome) => {
            kill_group(group);
            let _ = child.kill().await;
            // A process that left the group (`setsid`) may hold the output open: the
            // readers, which hold the transcript and the progress, are waited for as
            // briefly as after an exit, so the worker hears that the run ended.
            tokio::join!(collect(stdout_lines), collect(stderr_lines));
            return outcome;
        }
    };
    // What the command left running in the background would hold its output open (and
    // the task with it): the attempt is over, so its whole group goes.
    kill_group(group);
    let (output, errors) = tokio::join!(collect(stdout_lines), collect(stderr_lines));
    match status {
        Ok(status) if status.success() => Outcome::Completed { output },
        Ok(status) => Outcome::Exited {
            error: failure(status, &errors, &output, &run.command),
        },
        Err(error) => Outcome::Failed {
            error: format!("lost the command while waiting for it: {error}"),
        },
    }
}

/// The shell around a task's command (its `$1`): it runs the command as `sh -c` would,
/// reading `/dev/null`, and takes the run's whole process group down once the worker is
/// gone. Its standard input is a pipe the worker holds and never writes to; a watcher
/// reading it sees the end of input only when the worker's end closes: the worker exited
/// or was killed. `kill_on_drop` cannot cover a worker killed outright (`SIGKILL` runs no
/// destructor), and the command, in a group of its own, would otherwise run on beside the
/// attempt that the lease sweep then starts on another agent. The shell reaps the watcher
/// it ended (else, under a worker that is PID 1, each run left a zombie). A command killed
/// by a signal exits the shell with 128 + its number, as shells report it.
const WATCHED: &str = r#"exec 3<&0 </dev/null
(read -r _ <&3; kill -KILL 0) &
watcher=$!
exec 3<&-
sh -c "$1"
status=$?
kill "$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
exit "$status""#;

/// `command` run by [`WATCHED`], leading a process group of its own, its output piped.
fn watched(command: &str) -> Command {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(WATCHED)
        .arg("omoi-task")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    shell
}

/// The variables among `names` that configure omoi itself or reach its database
/// (`DATABASE_URL`, `OMOI_*` — `OMOI_JWT_SECRET`, `OMOI_STRIPE_*` —, libpq's `PG*`): a
/// task's command runs code the tenant influences and must not inherit them.
fn operator_variables(names: impl Iterator<Item = OsString>) -> Vec<OsString> {
    names
        .filter(|name| {
            let name = name.to_string_lossy();
            name == "DATABASE_URL" || name.starts_with("OMOI_") || name.starts_with("PG")
        })
        .collect()
}

/// The error of an attempt that exited unsuccessfully: its status and the last line it
/// wrote (stderr first), with every word of the command line taken out of that line.
fn failure(
    status: impl std::fmt::Display,
    errors: &[String],
    output: &[String],
    command: &str,
) -> String {
    let detail = errors
        .last()
        .or(output.last())
        .map(|line| redacted(line, command))
        .filter(|line| !line.trim().is_empty());
    match detail {
        Some(detail) => format!("the command exited with {status}: {detail}"),
        None => format!("the command exited with {status}"),
    }
}

/// A word of the command line shorter than this is not taken for a credential.
const SHORTEST_CREDENTIAL: usize = 8;

/// Whether a word of the command line looks like a credential: long enough, mixing
/// letters and digits (keys, tokens, generated passwords do; the words of a message the
/// command echoes mostly do not, and hiding those would hide what went wrong — e.g. the
/// "permission denied" that makes an error permanent).
fn looks_like_a_credential(word: &str) -> bool {
    word.chars().count() >= SHORTEST_CREDENTIAL
        && word.chars().any(|c| c.is_ascii_digit())
        && word.chars().any(|c| c.is_alphabetic())
}

/// `line` without the words of `command` that look like credentials. The shell repeats
/// pieces of its command line in what it writes (`set -x` traces, `sh: 1: <word>: not
/// found`), as do programs complaining about their arguments, and a command line may
/// carry a credential (`--token=…`, a URL with a password).
fn redacted(line: &str, command: &str) -> String {
    let separators = |c: char| c.is_whitespace() || "'\"`;|&<>(){}$=,:@".contains(c);
    let mut words: Vec<&str> = command
        .split(separators)
        .filter(|word| looks_like_a_credential(word))
        .collect();
    // A longer word first, so that no part of it survives a shorter one's replacement.
    words.sort_by_key(|word| std::cmp::Reverse(word.len()));
    words.into_iter().fold(line.to_string(), |line, word| {
        line.replace(word, "[redacted]")
    })
}

/// Kills the command and everything it started (it leads its own process group): the
/// signal to the group reaches the grandchildren a plain kill would orphan. A group
/// already gone is the usual case (nothing was left behind), and not an error.
fn kill_group(group: Option<u32>) {
    let group = group
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
}

/// The lines a reader kept, once its stream has ended (briefly waited for: a process
/// that escaped its group may still hold the pipe).
async fn collect(reader: tokio::task::JoinHandle<Vec<String>>) -> Vec<String> {
    let abort = reader.abort_handle();
    match tokio::time::timeout(Duration::from_secs(2), reader).await {
        Ok(lines) => lines.unwrap_or_default(),
        Err(_) => {
            abort.abort();
            Vec::new()
        }
    }
}

/// The lines of a command's output, each read into at most `max` bytes (the rest of a
/// longer line is read and dropped: a line without an end would otherwise fill the
/// worker's memory) and decoded lossily (output is not always UTF-8, and one invalid
/// byte ended the reading, then the command with `SIGPIPE`), NUL included
/// ([`without_nul`]). Cancel-safe: the part of a
/// line read so far is kept between calls.
struct BoundedLines<R> {
    reader: R,
    max: usize,
    line: Vec<u8>,
    /// Bytes of the current line were read (it may be empty, or all past `max`).
    started: bool,
    /// Bytes of the current line were dropped past `max`.
    cut: bool,
}

impl<R: AsyncBufRead + Unpin> BoundedLines<R> {
    fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            max,
            line: Vec::new(),
            started: false,
            cut: false,
        }
    }

    /// The next line without its end (`\n` or `\r\n`); `None` once the stream ended.
    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(self.started.then(|| self.take(false)));
            }
            let end = available.iter().position(|b| *b == b'\n');
            let part = &available[..end.unwrap_or(available.len())];
            let room = self.max.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            self.cut |= part.len() > room;
            self.started = true;
            let used = end.map_or(available.len(), |at| at + 1);
            self.reader.consume(used);
            if end.is_some() {
                return Ok(Some(self.take(true)));
            }
        }
    }

    /// The line read so far; `ended` by a newline, whose `\r` before it goes too.
    fn take(&mut self, ended: bool) -> String {
        let mut line = std::mem::take(&mut self.line);
        if ended && !self.cut && line.last() == Some(&b'\r') {
            line.pop();
        }
        self.started = false;
        self.cut = false;
        without_nul(String::from_utf8_lossy(&line).into_owned())
    }
}

/// `line` with each NUL written as U+FFFD: PostgreSQL stores NUL neither in text nor in
/// `jsonb`, so a NUL (`find -print0`) in a transcript line, a progress note or a result
/// would have failed the write, and the task's outcome with it.
fn without_nul(line: String) -> String {
    match line.contains('\0') {
        true => line.replace('\0', "\u{FFFD}"),
        false => line,
    }
}

/// Reads lines until the stream ends; sends each to the transcript; keeps the last few;
/// sends at most one progress line per interval (the newest seen).
async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    transcript: mpsc::Sender<String>,
    progress: Option<(mpsc::Sender<String>, Duration)>,
) -> Vec<String> {
    let mut lines = BoundedLines::new(BufReader::new(stream), MAX_LINE_CHARS * 4);
    let mut kept = Vec::new();
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut pending: Option<String> = None;
    loop {
        let wait = match (&pending, &progress, last_sent) {
            (Some(_), Some((_, interval)), Some(sent)) => Some(sent + *interval),
            _ => None,
        };
        let next = async {
            match wait {
                Some(at) => tokio::time::timeout_at(at, lines.next_line()).await.ok(),
                None => Some(lines.next_line().await),
            }
        };
        match next.await {
            Some(Ok(Some(line))) => {
                // A transcript that stopped reading (its writer gave up) loses lines;
                // the run goes on.
                let _ = transcript.send(clipped(&line, MAX_LINE_CHARS)).await;
                let line = clipped(&line, MAX_PROGRESS_CHARS);
                tail(&mut kept, line.clone());
                if !line.trim().is_empty() {
                    pending = Some(line);
                }
            }
            Some(Ok(None)) | Some(Err(_)) => break,
            None => {}
        }
        if let (Some((sender, interval)), Some(line)) = (&progress, &pending) {
            if last_sent.is_none_or(|sent| sent.elapsed() >= *interval) {
                let _ = sender.try_send(line.clone());
                pending = None;
                last_sent = Some(tokio::time::Instant::now());
            }
        }
    }
    // A last line within the interval is not reported: it is in the result's output.
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of `bytes` as `BoundedLines` reads them through a buffer of `capacity`.
    fn read_all(bytes: &[u8], capacity: usize, max: usize) -> Vec<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut lines = BoundedLines::new(BufReader::with_capacity(capacity, bytes), max);
            let mut read = Vec::new();
            while let Some(line) = lines.next_line().await.expect("a line") {
                read.push(line);
            }
            read
        })
    }

    proptest::proptest! {
        /// Any output, UTF-8 or not, in any chunks: each line comes once, in order, decoded
        /// lossily from at most its first `max` bytes (without its `\r\n` or `\n`), a NUL
        /// as U+FFFD.
        #[test]
        fn output_is_read_line_by_line_bounded_and_lossily(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![proptest::strategy::Just(b'\n'), proptest::strategy::Just(b'\r'), proptest::strategy::Just(0xff_u8), proptest::strategy::Just(b'a'), proptest::strategy::Just(0_u8), proptest::num::u8::ANY],
                0..300,
            ),
            capacity in 1usize..16,
            max in 1usize..40,
        ) {
            let mut expected: Vec<String> = Vec::new();
            let parts: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
            let ended = parts.len() - 1;
            for (at, part) in parts.into_iter().enumerate() {
                // What follows the last newline is a line only if there is something.
                if at == ended && part.is_empty() {
                    break;
                }
                let mut kept = part[..part.len().min(max)].to_vec();
                if at < ended && part.len() <= max && kept.last() == Some(&b'\r') {
                    kept.pop();
                }
                expected.push(String::from_utf8_lossy(&kept).replace('\0', "\u{FFFD}"));
            }
            proptest::prop_assert_eq!(read_all(&bytes, capacity, max), expected);
        }
    }

    /// A line with no end keeps at most its bound in memory, however long it is.
    #[test]
    fn an_endless_line_is_cut_at_its_bound() {
        let endless = vec![b'x'; 1 << 20];
        let lines = read_all(&endless, 8192, 100);
        assert_eq!(lines, vec!["x".repeat(100)]);
    }

    fn task() -> QueuedTask {
        QueuedTask {
            id: uuid::Uuid::now_v7(),
            organization_id: uuid::Uuid::now_v7(),
            project_id: uuid::Uuid::now_v7(),
            ticket_id: uuid::Uuid::now_v7(),
            title: "Stop me".into(),
            description: String::new(),
            task_type: "implement".into(),
            priority: omoi_domain::common::Priority::Medium,
            status: omoi_domain::task::TaskStatus::Running,
            depends_on: Default::default(),
            required_capabilities: Default::default(),
            retry_count: 0,
            max_retries: 3,
            timeout_seconds: None,
            not_before: None,
            agent_id: None,
            created_at: chrono::Utc::now(),
            assigned_at: None,
            started_at: None,
            version: 1,
            validates: None,
            feedback: None,
            last_progress_at: None,
            stalled: false,
            progress_reports: 0,
            reassigned_from: None,
            open_discoveries: Default::default(),
        }
    }

    /// A stopped run's readers, which hold its transcript and progress, end within their
    /// bound even when a process that left the group (`setsid`) holds the output open: the
    /// worker hears that the run ended (before, it waited for that process).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_stopped_run_ends_even_when_a_process_left_its_group() {
        let directory = std::env::temp_dir().join(format!("omoi-stop-{}", uuid::Uuid::now_v7()));
        let run = Run {
            // "started" comes from the new session: the process has left the group.
            command: "setsid sh -c 'echo started; exec sleep 8' & sleep 30".into(),
            directory: directory.clone(),
            progress_interval: Duration::from_millis(10),
            attempt: 1,
        };
        let (progress, _progress) = mpsc::channel(16);
        let (transcript, mut lines) = mpsc::channel(1024);
        let (stop, cancel) = watch::channel(false);
        let task = task();
        let running = tokio::spawn(async move {
            execute(
                &task,
                &run,
                Sinks {
                    progress,
                    transcript,
                },
                cancel,
            )
            .await
        });
        assert_eq!(lines.recv().await.as_deref(), Some("started"));
        stop.send(true).expect("the run listens");
        let outcome = tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the run ends")
            .expect("joined");
        assert_eq!(outcome, Outcome::Stopped);
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while lines.recv().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the transcript is still held open");
        let _ = std::fs::remove_dir_all(directory);
    }

    /// Whether process `pid` still exists (a zombie not yet reaped counts as gone).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    /// When the worker is gone — its end of the run's standard input closed, as the
    /// kernel closes it when the worker dies, `SIGKILL` included — the command and what it
    /// started go too. Before, a worker killed outright left them running beside the
    /// attempt the lease sweep started elsewhere.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_run_dies_with_its_worker() {
        let mut child = watched("sleep 60 & echo $!; wait")
            .spawn()
            .expect("sh runs");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let sleeper: u32 = lines
            .next_line()
            .await
            .expect("reads")
            .expect("the background pid")
            .parse()
            .expect("a pid");
        assert!(alive(sleeper));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(alive(sleeper), "nothing ends while the worker lives");

        drop(child.stdin.take());
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .expect("the shell ends")
            .expect("waited");
        assert!(!status.success(), "{status}");
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            while alive(sleeper) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            gone.is_ok(),
            "the command's background process outlived its worker"
        );
    }

    /// While the worker lives, the command runs as `sh -c` runs it: its exit status, its
    /// output and its standard input (`/dev/null`) are its own, and the watcher ends with it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_watched_command_exits_with_its_own_status() {
        let mut child = watched("read -r line || echo no input; echo \"$0\"; exit 3")
            .spawn()
            .expect("sh runs");
        // The worker's end stays open: `wait_with_output` would close it first.
        let _lifeline = child.stdin.take();
        let output = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
            .await
            .expect("the shell ends")
            .expect("waited");
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&output.stdout), "no input\nsh\n");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    }

    const COMMAND: &str =
        "set -x; deploy --token=sk_live_51HxSecretToken https://ops:hunter2hunter2@db.internal/x";

    #[test]
    fn a_failure_names_the_status_and_the_last_error_line_but_not_the_command() {
        let errors = vec!["compiling".to_string(), "error: tests failed".to_string()];
        let error = failure("exit status: 3", &errors, &["ok".into()], COMMAND);
        assert_eq!(
            error,
            "the command exited with exit status: 3: error: tests failed"
        );
        assert_eq!(
            failure("exit status: 1", &[], &[], COMMAND),
            "the command exited with exit status: 1"
        );
    }

    #[test]
    fn a_line_repeating_the_command_line_has_its_words_redacted() {
        let traced =
            "+ deploy --token=sk_live_51HxSecretToken https://ops:hunter2hunter2@db.internal/x";
        let error = failure("exit status: 2", &[traced.into()], &[], COMMAND);
        assert!(!error.contains("sk_live_51HxSecretToken"), "{error}");
        assert!(!error.contains("hunter2hunter2"), "{error}");
        assert!(error.contains("[redacted]"), "{error}");
    }

    #[test]
    fn a_message_the_command_echoes_is_not_redacted() {
        let command = "echo 'Permission denied: /etc/shadow' >&2; exit 1";
        let error = failure(
            "exit status: 1",
            &["Permission denied: /etc/shadow".into()],
            &[],
            command,
        );
        assert_eq!(
            error,
            "the command exited with exit status: 1: Permission denied: /etc/shadow"
        );
    }

    #[test]
    fn the_workers_own_secrets_are_not_passed_to_a_task() {
        let names = [
            "DATABASE_URL",
            "OMOI_JWT_SECRET",
            "OMOI_STRIPE_SECRET_KEY",
            "PGPASSWORD",
            "PATH",
            "HOME",
            "ANTHROPIC_API_KEY",
        ];
        let removed = operator_variables(names.iter().map(OsString::from));
        assert_eq!(
            removed,
            [
                "DATABASE_URL",
                "OMOI_JWT_SECRET",
                "OMOI_STRIPE_SECRET_KEY",
                "PGPASSWORD"
            ]
            .map(OsString::from)
        );
    }
}
