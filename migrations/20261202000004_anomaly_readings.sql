-- The Guardian's latest anomaly reading of each agent (score and parts), written by the
-- monitoring pass. A reading is a measurement at an instant, like a heartbeat, so it
-- lives beside the leases; the decisions it leads to (an anomalous run, a quarantine)
-- are the agent's events.
create table agent_anomaly_readings (
    agent_id uuid primary key,
    organization_id uuid not null,
    score float8 not null,
    latency float8 not null,
    errors float8 not null,
    resource_skew float8 not null,
    queue_impact float8 not null,
    streak integer not null,
    read_at timestamptz not null
);
