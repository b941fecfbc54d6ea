//! The original's retry policy as pure functions (`worker.py`, `services/task_queue.py`).

use chrono::Duration;

/// Retries a task gets when its creator does not say.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Highest `max_retries` accepted: beyond this the backoff is pinned at the cap anyway and
/// a broken task would only burn agent time.
pub const MAX_MAX_RETRIES: u32 = 20;
/// Longest delay between two attempts, after jitter.
pub const MAX_BACKOFF_SECONDS: f64 = 60.0;

/// Error text fragments that mark a failure as permanent: retrying cannot help.
pub const PERMANENT_ERROR_MARKERS: [&str; 15] = [
    "permission denied",
    "access denied",
    "authentication failed",
    "authorization failed",
    "syntax error",
    "invalid argument",
    "not found",
    "does not exist",
    "already exists",
    "duplicate key",
    "constraint violation",
    "immutable",
    "read-only",
    "quota exceeded",
    "rate limit exceeded",
];

/// Delay before retry number `attempt` (1 for the first retry): `2^(attempt-1)` seconds,
/// scaled by `0.75 + 0.5 * jitter` and capped at [`MAX_BACKOFF_SECONDS`].
///
/// `jitter` is a caller-drawn sample of `[0, 1)` so the domain stays deterministic; values
/// outside that range (or NaN) are clamped rather than refused, because a bad sample must
/// not stop a failing task from being retried.
pub fn retry_backoff(attempt: u32, jitter: f64) -> Duration {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    // The exponent is bounded so the power stays finite; 2^16 s is far above the cap.
    let exponent = attempt.saturating_sub(1).min(16);
    let base = f64::from(1_u32 << exponent);
    let seconds = (base * (0.75 + 0.5 * jitter)).min(MAX_BACKOFF_SECONDS);
    // Whole milliseconds: the value is at most 60 000, so the cast cannot truncate.
    Duration::milliseconds((seconds * 1000.0).round() as i64)
}

/// Whether `error` names a failure that a retry cannot fix (case-insensitive substring
/// match against [`PERMANENT_ERROR_MARKERS`]).
pub fn is_permanent_error(error: &str) -> bool {
    let error = error.to_lowercase();
    PERMANENT_ERROR_MARKERS
        .iter()
        .any(|marker| error.contains(marker))
}
