-- The server deletes credentials nothing reads any more (api::auth::housekeeping): login
-- failures older than the lockout window, refresh tokens and revoked access tokens past
-- their expiry. Each delete takes a bounded batch of the oldest rows; these indexes find
-- them without scanning the live ones (login_failures_recent leads with the email).
create index login_failures_by_time on login_failures (failed_at);
create index refresh_tokens_by_expiry on refresh_tokens (expires_at);
create index revoked_access_tokens_by_expiry on revoked_access_tokens (expires_at);
