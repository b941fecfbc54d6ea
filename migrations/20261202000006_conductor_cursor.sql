-- How far the Conductor's comparison of new open tasks has got (the creation position of
-- the last task compared), shared by every replica so that each task is compared once,
-- not once per replica and again after every restart.
create table conductor_cursor (
    singleton boolean primary key default true check (singleton),
    transaction_id bigint not null,
    position bigint not null
);
insert into conductor_cursor (transaction_id, position) values (0, 0);
