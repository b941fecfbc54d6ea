-- Heartbeat escalation: an agent silent for two heartbeat intervals is degraded (an
-- event) by exactly one sweeper, which claims the lease by setting `degraded_at`; its
-- next heartbeat clears it (and brings the agent back).
alter table agent_leases add column degraded_at timestamptz;
