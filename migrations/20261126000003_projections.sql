-- Every build of every projector. A build owns the schema rm_<projector>_<build>; the live
-- build is the one the stable views (<projector>_<table>) point at; a newer build rebuilds
-- beside it from position zero and takes over when it has caught up. The checkpoint is
-- written in the same transaction as the rows a batch changed: a crash never applies an
-- event twice or skips one.
create table projector_builds (
    build           bigserial primary key,
    projector       text    not null,
    -- the projector's version in the code that started this build
    code_version    integer not null,
    -- 'building' (catching up), 'live' (serving readers), 'retired', 'scratch' (verify)
    state           text    not null default 'building',
    transaction_id  bigint  not null default 0,
    global_position bigint  not null default 0,
    events_applied  bigint  not null default 0,
    -- a poison event stops the build here, visibly, until `omoi projections retry`
    failed_transaction_id  bigint,
    failed_global_position bigint,
    error           text,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now()
);

create unique index projector_builds_one_live on projector_builds (projector) where state = 'live';
