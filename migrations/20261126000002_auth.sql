-- Accounts and credentials. These are mutable secrets (password hashes, token state), so they
-- live in tables, not in the immutable event log; what they grant — organization membership —
-- is recorded as events on the Organization aggregate.

create table users (
    id                 uuid primary key,
    -- stored lower-cased; unique
    email              text not null unique,
    password_hash      text not null,
    display_name       text not null,
    is_super_admin     boolean not null default false,
    -- Tokens issued before this instant are void: set on refresh-token reuse.
    tokens_valid_after timestamptz not null default 'epoch',
    created_at         timestamptz not null default now()
);

-- Failed logins, for the lockout (more than 5 in 15 minutes → 429).
create table login_failures (
    email     text not null,
    failed_at timestamptz not null default now()
);
create index login_failures_recent on login_failures (email, failed_at);

-- Refresh tokens are single-use: `used_at` marks a rotated one, and presenting it again
-- revokes every token of the user (it was stolen, or the client is broken).
create table refresh_tokens (
    jti        uuid primary key,
    user_id    uuid not null references users (id),
    expires_at timestamptz not null,
    used_at    timestamptz,
    revoked_at timestamptz
);
create index refresh_tokens_by_user on refresh_tokens (user_id);

-- Access tokens revoked before they expire (logout).
create table revoked_access_tokens (
    jti        uuid primary key,
    expires_at timestamptz not null
);

-- API keys for agents and automation: only a SHA-256 of the secret is kept.
create table api_keys (
    id              uuid primary key,
    -- the first characters of the key, shown in listings and used to find the row
    prefix          text not null unique,
    secret_sha256   bytea not null,
    name            text not null,
    organization_id uuid not null,
    project_id      uuid,
    role            text not null,
    created_by      uuid not null references users (id),
    created_at      timestamptz not null default now(),
    revoked_at      timestamptz
);

-- Who belongs to which organization, kept by a trigger from the Organization aggregate's
-- membership events in the same transaction that appends them: authorization reads one
-- indexed row instead of replaying the organization, and can never disagree with the log.
create table organization_members (
    organization_id uuid not null,
    principal       text not null,
    role            text not null,
    primary key (organization_id, principal)
);
create index organization_members_by_principal on organization_members (principal);

create function index_organization_membership() returns trigger language plpgsql as $$
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
        else
            null;
    end case;
    return null;
end;
$$;

create trigger events_index_organization_membership
    after insert on events
    for each row when (new.aggregate_type = 'Organization')
    execute function index_organization_membership();
