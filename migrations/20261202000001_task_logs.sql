-- Transcripts: every line a task's process wrote (in-process agents) or an HTTP agent
-- posted, per attempt. Not events — a chatty agent writes thousands of lines a minute and
-- they carry no decision — but an append-only store of their own, in chunks (one row per
-- write), pruned after the retention (`transcripts.retention_hours`).
--
-- `task_log_heads` hands out line numbers: one statement bumps the attempt's count and
-- inserts the chunk after it, so concurrent writers of one attempt never share a number.
create table task_log_heads (
    task_id uuid not null,
    attempt integer not null check (attempt >= 1),
    organization_id uuid not null,
    lines bigint not null,
    updated_at timestamptz not null default now(),
    primary key (task_id, attempt)
);

create table task_logs (
    task_id uuid not null,
    attempt integer not null,
    -- The number of the chunk's first line in its attempt, from 1.
    first_line bigint not null check (first_line >= 1),
    lines text[] not null,
    written_at timestamptz not null default now(),
    primary key (task_id, attempt, first_line)
);

create index task_log_heads_by_age on task_log_heads (updated_at);
