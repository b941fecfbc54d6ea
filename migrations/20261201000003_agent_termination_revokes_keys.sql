-- A terminated agent's credential dies with it, in the transaction that records the
-- termination: whoever terminates it (a person, the worker, a supervisor), there is no
-- moment where the agent is terminated and its key still works, and no termination whose
-- revocation was lost to a crash between two statements.
create function revoke_keys_of_terminated_agent() returns trigger language plpgsql as $$
begin
    if new.event_type = 'AgentStatusChanged'
       and new.payload -> 'AgentStatusChanged' ->> 'to' = 'terminated' then
        update api_keys set revoked_at = now()
         where agent_id = new.aggregate_id::uuid and revoked_at is null;
    end if;
    return null;
end;
$$;

create trigger events_revoke_keys_of_terminated_agent
    after insert on events
    for each row when (new.aggregate_type = 'Agent')
    execute function revoke_keys_of_terminated_agent();
