-- A released agent (quarantined → idle) is watched for silence anew from its release: a
-- lease that lapsed (the agent was failed for it) or was marked degraded before the
-- quarantine starts again in the transaction that records the release, whoever releases
-- it. Kept lapsed, the sweep never degraded or failed the agent again however silent it
-- stayed (it showed `idle` for ever), and failed at once every task given to it.
create function restart_lease_of_released_agent() returns trigger language plpgsql as $$
begin
    if new.event_type = 'AgentStatusChanged'
       and new.payload -> 'AgentStatusChanged' ->> 'from' = 'quarantined'
       and new.payload -> 'AgentStatusChanged' ->> 'to' = 'idle' then
        update agent_leases
           set heartbeat_at = now(), expired_at = null, degraded_at = null
         where agent_id = new.aggregate_id::uuid
           and (expired_at is not null or degraded_at is not null);
    end if;
    return null;
end;
$$;

create trigger events_restart_lease_of_released_agent
    after insert on events
    for each row when (new.aggregate_type = 'Agent')
    execute function restart_lease_of_released_agent();
