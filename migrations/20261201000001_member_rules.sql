-- An API key dies with its creator's membership (issue #12). Removing `user:<id>` from an
-- organization revokes every key that user created for that organization — the credentials
-- of the agents they registered included (`api_keys.agent_id`) — inside the transaction that
-- appends the `MemberRemoved` event, so the removal and the revocation commit or roll back
-- together. Coming back does not revive them.
--
-- A demotion revokes nothing: a key acts with the lower of its own role and its creator's
-- current role, read with the key in the query that authenticates it
-- (`store::accounts::api_key_by_prefix`); a creator who is neither a member nor a super admin
-- any more has every key refused even without this revocation.

create index api_keys_by_creator on api_keys (created_by, organization_id)
    where revoked_at is null;

create or replace function index_organization_membership() returns trigger language plpgsql as $$
declare
    body jsonb := new.payload -> new.event_type;
begin
    case new.event_type
        when 'MemberAdded' then
            insert into organization_members (organization_id, principal, role)
            values (new.aggregate_id::uuid, body ->> 'principal', body ->> 'role')
            on conflict (organization_id, principal) do update set role = excluded.role;
        when 'MemberRoleChanged' then
            update organization_members set role = body ->> 'to'
             where organization_id = new.aggregate_id::uuid and principal = body ->> 'principal';
        when 'MemberRemoved' then
            delete from organization_members
             where organization_id = new.aggregate_id::uuid and principal = body ->> 'principal';
            if body ->> 'principal' like 'user:%' then
                update api_keys set revoked_at = now()
                 where created_by = substr(body ->> 'principal', 6)::uuid
                   and organization_id = new.aggregate_id::uuid
                   and revoked_at is null;
            end if;
        else
            null;
    end case;
    return null;
end;
$$;
