-- spec_archival finds a stopped spec's tickets, and their tasks, by the references their
-- creations hold: a key lookup each, where walking the project's events cost a heap fetch
-- per event of the project. Partial: only ticket and task creations have entries.
create index events_tickets_by_spec on events ((payload #>> '{TicketCreated,spec_id}'))
    where aggregate_type = 'Ticket' and sequence = 1;
create index events_tasks_by_ticket on events ((payload #>> '{TaskCreated,ticket_id}'))
    where aggregate_type = 'Task' and sequence = 1;
