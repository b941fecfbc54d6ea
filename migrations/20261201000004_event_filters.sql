-- Readers that follow one organization's or one project's events (the global stream's
-- filters, live subscriptions, a project's dependency edges) walk these instead of the
-- whole log: the filter's key, then the global order.
create index events_by_organization
    on events ((metadata ->> 'organization_id'), transaction_id, global_position);
create index events_by_project
    on events ((metadata ->> 'project_id'), transaction_id, global_position)
    where metadata ? 'project_id';
