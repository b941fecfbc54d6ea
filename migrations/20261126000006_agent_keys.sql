-- The credential an agent gets at registration is bound to that agent: it heartbeats and
-- claims for it alone, acts only on the tasks assigned to it, and is revoked when the
-- agent is terminated.
alter table api_keys add column agent_id uuid;
create index api_keys_by_agent on api_keys (agent_id) where agent_id is not null;
