-- Every Stripe webhook delivery that passed its signature check, once per Stripe event:
-- what it was and what became of it. The effect itself is an event of the organization's
-- BillingAccount, which also remembers the Stripe event id (that is what makes a
-- redelivery harmless); this table is the audit of deliveries, unknown types included.
create table stripe_webhook_events (
    id text primary key,
    event_type text not null,
    stripe_created bigint not null,
    organization_id uuid,
    received_at timestamptz not null default now(),
    deliveries integer not null default 1,
    -- applied | duplicate | ignored | unhandled | unresolved
    outcome text not null,
    payload jsonb not null
);

-- Which organization a Stripe customer belongs to, learnt from events that name both,
-- for later events that name only the customer.
create table billing_customers (
    customer_id text primary key,
    organization_id uuid not null
);
