//! Group commit: the appends of concurrent commands in one transaction.
//!
//! A command's own work is small (its aggregate is usually in memory); what it pays for is
//! its transaction — a statement, a commit and a WAL flush. Commands on different
//! aggregates that arrive together are therefore appended by one statement: the bus hands
//! each command's decided rows to [`GroupCommit::append`], a gatherer takes every append
//! waiting (at most `max_commands`), one `INSERT` writes them, and each caller is answered
//! when it committed. Durability is unchanged: `synchronous_commit` stays on and no caller
//! hears of success before its events are on disk.
//!
//! Batches form by themselves: at most `in_flight` batches are written at once, and what
//! arrives meanwhile waits for the next one, so under load a batch holds what came during
//! the last write, and a lone command is written at once (`max_wait` can make a batch wait
//! for company; 0 by default).
//!
//! Each command keeps its own optimistic check and its own outcome. The statement skips a
//! command one of whose sequences is taken (its aggregate moved since it was decided — a
//! copy in memory another process has overtaken) and reports it, so that command alone
//! retries. A conflict the statement cannot see in advance (another transaction's
//! uncommitted append of the same sequence) or any other failure of a batch of several
//! makes each of them be appended again on its own, so only the failing one fails. A lost
//! connection answers every member "unavailable": whether they committed is unknown, as for
//! a single command.
//!
//! Every commit is announced here, where it is known ([`GroupCommit::new`]'s `commits`),
//! not by the caller: a caller whose request was dropped while its rows were queued or
//! written (its client hung up) still has them committed, and this process's readers
//! learn of them at once rather than at their next poll.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

use crate::append::{AppendError, Rows};

/// How commands are gathered into transactions.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Most commands appended by one transaction; 1 appends each on its own (no group).
    pub max_commands: usize,
    /// How long a batch waits for more commands after its first; zero takes only those
    /// already waiting.
    pub max_wait: Duration,
    /// Batches written at once (each on a connection of its own).
    pub in_flight: usize,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            max_commands: 64,
            max_wait: Duration::ZERO,
            in_flight: 2,
        }
    }
}

/// The appends of one command bus.
pub struct GroupCommit {
    pool: PgPool,
    /// Bumped after every commit of appended events.
    commits: watch::Sender<u64>,
    config: GroupCommitConfig,
    /// Started by the first append, on the runtime that makes it.
    queue: OnceLock<mpsc::Sender<Request>>,
}

struct Request {
    rows: Rows,
    answer: oneshot::Sender<Result<(), AppendError>>,
}

impl GroupCommit {
    /// Appends on `pool`, bumping `commits` after each commit.
    pub fn new(pool: PgPool, config: GroupCommitConfig, commits: watch::Sender<u64>) -> Self {
        Self {
            pool,
            commits,
            config,
            queue: OnceLock::new(),
        }
    }

    /// Appends `rows` (one unit: all or none) and answers when they are committed.
    pub async fn append(&self, rows: Rows) -> Result<(), AppendError> {
        if rows.is_empty() {
            return Ok(());
        }
        if self.config.max_commands <= 1 {
            let inserted = rows.insert(&self.pool).await;
            if inserted.is_ok() {
                announce(&self.commits);
            }
            return inserted;
        }
        let queue = self.queue.get_or_init(|| self.start());
        let (answer, answered) = oneshot::channel();
        queue
            .send(Request { rows, answer })
            .await
            .map_err(|_| AppendError::Unavailable("the appender has stopped".into()))?;
        answered
            .await
            .map_err(|_| AppendError::Unavailable("the appender stopped before answering".into()))?
    }

    fn start(&self) -> mpsc::Sender<Request> {
        let (queue, requests) = mpsc::channel(self.config.max_commands.saturating_mul(4));
        let writer = Writer {
            pool: self.pool.clone(),
            commits: self.commits.clone(),
        };
        tokio::spawn(gather(requests, writer, self.config));
        queue
    }
}

/// Where batches are written, and their commits announced.
#[derive(Clone)]
struct Writer {
    pool: PgPool,
    commits: watch::Sender<u64>,
}

fn announce(commits: &watch::Sender<u64>) {
    commits.send_modify(|n| *n = n.wrapping_add(1));
}

/// Takes batches off the queue while a batch slot is free; ends with the bus.
async fn gather(mut requests: mpsc::Receiver<Request>, writer: Writer, config: GroupCommitConfig) {
    let slots = Arc::new(Semaphore::new(config.in_flight.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = requests.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + config.max_wait;
        while batch.len() < config.max_commands {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) if config.max_wait.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, requests.recv()).await {
                    Ok(Some(request)) => batch.push(request),
                    _ => break,
                },
            }
        }
        let writer = writer.clone();
        tokio::spawn(async move {
            write(&writer, batch).await;
            drop(slot);
        });
    }
}

/// Appends a batch in one statement and answers each member.
async fn write(writer: &Writer, batch: Vec<Request>) {
    let pool = &writer.pool;
    let mut rows = Rows::new();
    let mut units = Vec::new();
    let mut starts = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    for (unit, mut request) in (0_i32..).zip(batch) {
        starts.push(rows.len());
        units.extend(std::iter::repeat_n(unit, request.rows.len()));
        rows.append(&mut request.rows);
        answers.push(request.answer);
    }
    match rows.insert_units(pool, &units).await {
        Ok(taken) => {
            if taken.len() < answers.len() {
                announce(&writer.commits);
            }
            for (unit, answer) in (0_i32..).zip(answers) {
                let outcome = match taken.contains(&unit) {
                    true => Err(AppendError::Conflict),
                    false => Ok(()),
                };
                let _ = answer.send(outcome);
            }
        }
        Err(AppendError::Unavailable(cause)) => {
            for answer in answers {
                let _ = answer.send(Err(AppendError::Unavailable(cause.clone())));
            }
        }
        Err(failure) if answers.len() == 1 => {
            if let Some(answer) = answers.into_iter().next() {
                let _ = answer.send(Err(failure));
            }
        }
        Err(failure) => {
            tracing::debug!(%failure, commands = answers.len(), "a batch failed; appending its commands one by one");
            let mut alone = Vec::with_capacity(answers.len());
            for start in starts.into_iter().rev() {
                alone.push(rows.split_off(start));
            }
            for (rows, answer) in alone.into_iter().rev().zip(answers) {
                let inserted = rows.insert(pool).await;
                if inserted.is_ok() {
                    announce(&writer.commits);
                }
                let _ = answer.send(inserted);
            }
        }
    }
}
