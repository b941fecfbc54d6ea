-- What an agent's status change does beside the log, in the transaction that records it,
-- whoever makes it — one trigger for all of it:
-- * a termination revokes the agent's credential (as `agent_termination_revokes_keys`
--   began it): no moment where the agent is terminated and its key still works;
-- * a release from quarantine to `idle` starts a lapsed or degraded lease anew: the agent
--   is watched for silence from its release. Kept lapsed, the sweep never degraded or
--   failed it again however silent it stayed (it showed `idle` for ever), and failed at
--   once every task given to it.
create function agent_status_changed() returns trigger language plpgsql as $$
declare
    change jsonb := new.payload -> 'AgentStatusChanged';
begin
    if change ->> 'to' = 'terminated' then
        update api_keys set revoked_at = now()
         where agent_id = new.aggregate_id::uuid and revoked_at is null;
    elsif change ->> 'from' = 'quarantined' and change ->> 'to' = 'idle' then
        update agent_leases
           set heartbeat_at = now(), expired_at = null, degraded_at = null
         where agent_id = new.aggregate_id::uuid
           and (expired_at is not null or degraded_at is not null);
    end if;
    return null;
end;
$$;

drop trigger events_revoke_keys_of_terminated_agent on events;
drop function revoke_keys_of_terminated_agent();

create trigger events_agent_status_changed
    after insert on events
    for each row when (new.aggregate_type = 'Agent' and new.event_type = 'AgentStatusChanged')
    execute function agent_status_changed();
