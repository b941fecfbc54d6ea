//! Task transcripts: every line an attempt's process wrote, in order, in `task_logs`
//! (not events: lines carry no decision, and a chatty agent would bury the log).
//!
//! Lines are numbered from 1 per `(task, attempt)`. A write is one statement that bumps
//! the attempt's line count in `task_log_heads` and inserts the chunk after it, so
//! concurrent writers of one attempt get disjoint numbers and a reader paging with
//! `after` never misses a line that was committed before its read.

use sqlx::PgPool;
use uuid::Uuid;

/// Longest line kept; longer ones are clipped (a line is a line of output, not a file).
pub const MAX_LINE_CHARS: usize = 4_000;
/// Most lines one write may carry.
pub const MAX_WRITE_LINES: usize = 1_000;
/// Most lines one read returns.
pub const MAX_PAGE_LINES: i64 = 10_000;
/// What one page of lines may weigh at most, as JSON strings (escapes counted): a page of
/// 10,000 lines of 4,000 control characters would otherwise be 240 MB, read into one
/// response.
pub const MAX_PAGE_BYTES: i64 = 4 * 1024 * 1024;

/// One line of a transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// From 1, per attempt.
    pub number: i64,
    pub text: String,
}

/// The attempt a write goes to.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub task_id: Uuid,
    pub attempt: u32,
    pub organization_id: Uuid,
}

/// Appends `lines` to the attempt's transcript; returns the number of the last line
/// written (the attempt's line count). Appending nothing writes nothing.
pub async fn append(pool: &PgPool, to: Attempt, lines: &[String]) -> sqlx::Result<i64> {
    if lines.is_empty() {
        return count(pool, to.task_id, to.attempt).await;
    }
    sqlx::query_scalar(
        "with head as (
             insert into task_log_heads (task_id, attempt, organization_id, lines)
             values ($1, $2, $3, cardinality($4::text[]))
             on conflict (task_id, attempt) do update
                 set lines = task_log_heads.lines + excluded.lines, updated_at = now()
             returning lines
         )
         insert into task_logs (task_id, attempt, first_line, lines)
         select $1, $2, head.lines - cardinality($4::text[]) + 1, $4 from head
         returning first_line + cardinality(lines) - 1",
    )
    .bind(to.task_id)
    .bind(to.attempt as i32)
    .bind(to.organization_id)
    .bind(lines)
    .fetch_one(pool)
    .await
}

/// How many lines the attempt's transcript has.
pub async fn count(pool: &PgPool, task_id: Uuid, attempt: u32) -> sqlx::Result<i64> {
    let lines: Option<i64> =
        sqlx::query_scalar("select lines from task_log_heads where task_id = $1 and attempt = $2")
            .bind(task_id)
            .bind(attempt as i32)
            .fetch_optional(pool)
            .await?;
    Ok(lines.unwrap_or(0))
}

/// How many lines each of `attempts` has (those without a transcript yet are left out):
/// one statement for all of them, by the heads' primary key.
pub async fn heads(pool: &PgPool, attempts: &[(Uuid, u32)]) -> sqlx::Result<Vec<(Uuid, u32, i64)>> {
    let (tasks, numbers): (Vec<Uuid>, Vec<i32>) = attempts
        .iter()
        .map(|&(task_id, attempt)| (task_id, i32::try_from(attempt).unwrap_or(i32::MAX)))
        .unzip();
    let rows: Vec<(Uuid, i32, i64)> = sqlx::query_as(
        "select h.task_id, h.attempt, h.lines
           from unnest($1::uuid[], $2::int[]) as w(task_id, attempt)
           join task_log_heads h using (task_id, attempt)",
    )
    .bind(tasks)
    .bind(numbers)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(task_id, attempt, lines)| (task_id, attempt.max(1) as u32, lines))
        .collect())
}

/// The attempts that have a transcript, in order.
pub async fn attempts(pool: &PgPool, task_id: Uuid) -> sqlx::Result<Vec<(u32, i64)>> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "select attempt, lines from task_log_heads where task_id = $1 order by attempt",
    )
    .bind(task_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(attempt, lines)| (attempt.max(1) as u32, lines))
        .collect())
}

/// The lines of the attempt after line number `after`, in order: at most `limit` of
/// them, and no more than `max_bytes` as JSON strings (escapes counted) — but always the
/// first, whatever it weighs (a line is at most [`MAX_LINE_CHARS`]). The weight is
/// counted by the server, so a page past it is never sent.
pub async fn read(
    pool: &PgPool,
    task_id: Uuid,
    attempt: u32,
    after: i64,
    limit: i64,
    max_bytes: i64,
) -> sqlx::Result<Vec<Line>> {
    let limit = limit.clamp(1, MAX_PAGE_LINES);
    // The chunk holding line `after + 1` starts at or before it; every later chunk after
    // it. Lines are unnested with their numbers, weighed in order and cut to the page.
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "select number, text from (
             select l.first_line + u.offset_in_chunk - 1 as number, u.text,
                    sum(octet_length(to_json(u.text)::text)) over in_order as weight,
                    row_number() over in_order as place
               from task_logs l
               cross join lateral unnest(l.lines) with ordinality as u(text, offset_in_chunk)
              where l.task_id = $1 and l.attempt = $2
                and l.first_line >= coalesce(
                    (select max(first_line) from task_logs
                      where task_id = $1 and attempt = $2 and first_line - 1 <= $3), 1)
                and l.first_line + u.offset_in_chunk - 1 > $3
             window in_order as (order by l.first_line, u.offset_in_chunk
                                 rows unbounded preceding)
              order by l.first_line, u.offset_in_chunk
              limit $4
         ) page
         where weight <= $5 or place = 1
         order by number",
    )
    .bind(task_id)
    .bind(attempt as i32)
    .bind(after)
    .bind(limit)
    .bind(max_bytes)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(number, text)| Line { number, text })
        .collect())
}

/// Deletes at most `limit` transcripts (an attempt's, whole) last written before
/// `retention` ago; returns how many.
pub async fn prune(pool: &PgPool, retention: chrono::Duration, limit: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "with old as (
             delete from task_log_heads where (task_id, attempt) in (
                 select task_id, attempt from task_log_heads
                  where updated_at < now() - $1 order by updated_at limit $2)
             returning task_id, attempt
         ), chunks as (
             delete from task_logs l using old
              where l.task_id = old.task_id and l.attempt = old.attempt
         )
         select count(*) from old",
    )
    .bind(retention)
    .bind(limit)
    .fetch_one(pool)
    .await
}
