-- The event log. The first seven columns are postgres-es's own (its INSERT names them, so the
-- extra columns below are filled by their defaults).
create sequence events_global_position_seq as bigint;

create table events (
    aggregate_type  text   not null,
    aggregate_id    text   not null,
    sequence        bigint not null check (sequence >= 1),
    event_type      text   not null,
    event_version   text   not null,
    payload         jsonb  not null,
    metadata        jsonb  not null,
    -- Positions are taken at insert and may commit out of order, so the global order is the
    -- pair (transaction_id, global_position), read only below the snapshot's xmin: every
    -- transaction below it has finished, so nothing can later appear behind a reader.
    global_position bigint not null default nextval('events_global_position_seq'),
    transaction_id  xid8   not null default pg_current_xact_id(),
    primary key (aggregate_type, aggregate_id, sequence)
);

alter sequence events_global_position_seq owned by events.global_position;

create unique index events_global_order on events (transaction_id, global_position);

-- History is never edited: corrections are new events.
create function events_are_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'the event log is append-only (% refused)', tg_op
        using errcode = 'insufficient_privilege';
end;
$$;

create trigger events_append_only
    before update or delete or truncate on events
    for each statement execute function events_are_append_only();
