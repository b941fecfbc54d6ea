-- LLM trajectory analysis: which replica assesses a running task this interval (a claim
-- taken by one caller per interval), and each organization's calls per hour (its budget
-- is spent one call at a time, retries included).
create table trajectory_claims (
    task_id uuid primary key,
    claimed_at timestamptz not null
);

create table llm_usage (
    organization_id uuid not null,
    hour timestamptz not null,
    calls integer not null,
    primary key (organization_id, hour)
);
