-- Agents' heartbeats: a lease each agent renews, not events (a heartbeat every few seconds
-- per agent would bury the log). An agent whose lease is older than the stale threshold
-- is failed by an event and its tasks go back to the queue.
create table agent_leases (
    agent_id uuid primary key,
    organization_id uuid not null,
    heartbeat_at timestamptz not null default now(),
    -- Set once the worker has failed the agent for going silent; a new heartbeat clears it.
    expired_at timestamptz
);

create index agent_leases_by_heartbeat on agent_leases (heartbeat_at) where expired_at is null;
