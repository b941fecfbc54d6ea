//! What unauthenticated requests may cost — the public auth routes (register, login,
//! refresh) and credentials the server has to look up — and the cookie policy.
//!
//! Anyone can call those routes, and register and login each cost an argon2id hash
//! (~19 MiB, tens of milliseconds of a core). Without bounds a stream of fresh emails ran
//! one hash per request on the blocking pool (512 threads: ~10 GB). So:
//!
//! * **Hash slots.** At most `hash_slots` hashes or verifications run at once (one per
//!   core by default). A request that cannot get a slot within `hash_wait` is answered
//!   **503** `busy` with `Retry-After` instead of queueing: the slots are shared by every
//!   client, so being full is the server's state, not this client's fault (429 would
//!   say "you sent too many"). The slot is held by the hash itself, so a client that hangs
//!   up does not free it before the hash is done. The hashes run on `hash_slots` threads of
//!   their own, not on tokio's blocking pool, each keeping its argon2 working memory
//!   (`passwords`): memory is then slots × 19 MiB, allocated once. (On the blocking pool,
//!   allocating per hash, 300 logins two at a time still peaked at 882 MiB.)
//! * **Rate limits** (the `governor` crate's GCRA, keyed): per client address on all
//!   three routes, before the body is read, and per account (the email) on register and
//!   login, before anything is hashed. Beyond the quota: **429** with `Retry-After`. An
//!   IPv6 client is keyed by its /64, which one subscriber usually holds whole. The client
//!   address is the peer's unless a trusted proxy's header is configured; then the header's
//!   *last* entry (the one the proxy appended; anything before it the client could write).
//!
//! * **Refused credentials.** A request's credential not in the short-lived cache costs a
//!   database lookup (an API key by its prefix, an access token's revocation), and anyone
//!   can send made-up API keys. Each credential refused *after such a lookup* spends one of
//!   the client address's quota of refusals; past it, the address gets no lookup until
//!   the quota allows one more: **429** with `Retry-After`, before the database — but for a
//!   credential a lookup accepted lately (`CredentialCache::accepted_lately`), so that the
//!   valid agents behind the address of a client sending revoked keys go on. Accepted
//!   credentials spend nothing, so one address may hold any number of valid ones (a
//!   worker's agents), and a token refused by its signature alone costs no lookup and
//!   spends nothing either.
//!
//! The lockout (5 failures in 15 minutes) is a third, durable limit kept in PostgreSQL
//! (`store::accounts::admit_login`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderName;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::state::AppState;

/// A burst, then `per_minute` more requests per minute.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateQuota {
    pub burst: u32,
    pub per_minute: u32,
}

impl RateQuota {
    fn quota(self) -> Quota {
        let per_minute = NonZeroU32::new(self.per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_minute(per_minute).allow_burst(burst)
    }
}

/// The tunables of [`Guard`] (settings `auth.*`).
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Hashes at once; 0 means one per available core.
    pub hash_slots: usize,
    /// How long a request may wait for a hash slot before it is answered 503.
    pub hash_wait: Duration,
    pub per_address: RateQuota,
    pub per_account: RateQuota,
    /// Credentials refused after a database lookup, per client address.
    pub refused_credentials_per_address: RateQuota,
    /// The header in which a trusted reverse proxy names the client; `None`: the peer.
    pub client_address_header: Option<HeaderName>,
    /// Adds `Secure` to the cookies (clients reach the API over https).
    pub secure_cookies: bool,
    /// How often expired credentials and idle rate-limit keys are dropped.
    pub prune_every: Duration,
}

impl Default for GuardConfig {
    /// Production's values (config/base.yaml).
    fn default() -> Self {
        Self {
            hash_slots: 0,
            hash_wait: Duration::from_secs(2),
            per_address: RateQuota {
                burst: 30,
                per_minute: 30,
            },
            per_account: RateQuota {
                burst: 10,
                per_minute: 5,
            },
            refused_credentials_per_address: RateQuota {
                burst: 20,
                per_minute: 20,
            },
            client_address_header: None,
            secure_cookies: false,
            prune_every: Duration::from_secs(600),
        }
    }
}

/// Hash slots and rate limits shared by every request of this process.
pub struct Guard {
    pub config: GuardConfig,
    /// One permit per hashing thread.
    hashing: Arc<Semaphore>,
    hashers: mpsc::Sender<Job>,
    addresses: DefaultKeyedRateLimiter<IpAddr>,
    accounts: DefaultKeyedRateLimiter<String>,
    refusals: DefaultKeyedRateLimiter<IpAddr>,
    /// The addresses past their quota of refusals, each until it allows one more lookup.
    barred: Mutex<HashMap<IpAddr, Instant>>,
}

/// Barred addresses kept at most (about 4 MB): past it, expired ones are dropped, and a
/// new one is barred only once there is room.
const MAX_BARRED: usize = 100_000;

impl Guard {
    pub fn new(config: GuardConfig) -> Self {
        let slots = match config.hash_slots {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        };
        let (hashers, started) = start_hashers(slots);
        Self {
            hashing: Arc::new(Semaphore::new(started)),
            hashers,
            addresses: DefaultKeyedRateLimiter::keyed(config.per_address.quota()),
            accounts: DefaultKeyedRateLimiter::keyed(config.per_account.quota()),
            refusals: DefaultKeyedRateLimiter::keyed(
                config.refused_credentials_per_address.quota(),
            ),
            barred: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// Spends one request of `address`'s quota.
    pub fn check_address(&self, address: IpAddr) -> Result<(), ApiError> {
        check(&self.addresses, &bucket(address))
    }

    /// Spends one request of the account's quota (`email` lower-cased).
    pub fn check_account(&self, email: &str) -> Result<(), ApiError> {
        check(&self.accounts, &email.to_string())
    }

    /// Whether a credential from `address` may be looked up in the database: 429 while
    /// the address is past its quota of refused credentials.
    pub fn check_lookup(&self, address: IpAddr) -> Result<(), ApiError> {
        let barred = self.barred.lock().unwrap_or_else(PoisonError::into_inner);
        match barred.get(&bucket(address)) {
            Some(until) if *until > Instant::now() => Err(ApiError::TooManyRequests {
                detail: "too many credentials from this address were refused; slow down",
                retry_after_seconds: whole_seconds(until.saturating_duration_since(Instant::now())),
            }),
            _ => Ok(()),
        }
    }

    /// Counts a credential from `address` refused after a database lookup: past the
    /// quota, the address is barred until the quota allows one more.
    pub fn refused_lookup(&self, address: IpAddr) {
        let key = bucket(address);
        let Err(not_until) = self.refusals.check_key(&key) else {
            return;
        };
        let until = Instant::now() + not_until.wait_time_from(self.refusals.clock().now());
        let mut barred = self.barred.lock().unwrap_or_else(PoisonError::into_inner);
        if barred.len() >= MAX_BARRED {
            let now = Instant::now();
            barred.retain(|_, until| *until > now);
        }
        if barred.len() < MAX_BARRED {
            barred.insert(key, until);
        }
    }

    /// Runs `work` (a hash or a verification) on a hashing thread once a slot is free,
    /// or refuses with 503 when none frees up within the configured wait.
    pub async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let wait = self.config.hash_wait;
        let permit = tokio::time::timeout(wait, self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| ApiError::Overloaded {
                detail: "too many password checks are running; retry shortly",
                retry_after_seconds: whole_seconds(wait),
            })?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let output = work();
            drop(permit);
            let _ = answer.send(output);
        });
        self.hashers
            .send(job)
            .map_err(|_| ApiError::Internal("the hashing threads are gone".into()))?;
        answered
            .await
            .map_err(|_| ApiError::Internal("a password hash panicked".into()))
    }

    /// Drops the rate-limit state of keys that are back at a full burst, so memory does
    /// not grow with every address and email ever seen.
    pub fn forget_idle_keys(&self) {
        for limiter in [
            &self.addresses as &dyn Sweep,
            &self.accounts,
            &self.refusals,
        ] {
            limiter.sweep();
        }
        let now = Instant::now();
        let mut barred = self.barred.lock().unwrap_or_else(PoisonError::into_inner);
        barred.retain(|_, until| *until > now);
        barred.shrink_to_fit();
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// `count` threads running jobs until the sender is dropped; returns the sender and how
/// many threads started (the slots: none started means every hash is refused as busy).
fn start_hashers(count: usize) -> (mpsc::Sender<Job>, usize) {
    let (jobs, queue) = mpsc::channel::<Job>();
    let queue = Arc::new(Mutex::new(queue));
    let started = (0..count)
        .filter(|n| {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("omoi-hash-{n}"))
                .spawn(move || run_jobs(&queue))
                .inspect_err(|error| tracing::error!(%error, "cannot start a hashing thread"))
                .is_ok()
        })
        .count();
    (jobs, started)
}

fn run_jobs(queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // A panicking job drops its answer (the request gets a 500); the thread stays.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// Both keyed limiters, whatever their key type.
trait Sweep {
    fn sweep(&self);
}

impl<K: std::hash::Hash + Eq + Clone> Sweep for DefaultKeyedRateLimiter<K> {
    fn sweep(&self) {
        self.retain_recent();
        self.shrink_to_fit();
    }
}

fn check<K: std::hash::Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(limiter.clock().now());
        ApiError::TooManyRequests {
            detail: "too many requests; slow down",
            retry_after_seconds: whole_seconds(wait),
        }
    })
}

/// Rounded up, and at least one: `Retry-After: 0` invites an immediate retry.
fn whole_seconds(wait: Duration) -> u32 {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(seconds.max(1)).unwrap_or(u32::MAX)
}

/// The key of an address: IPv6 by its /64 (one subscriber's usual allocation).
fn bucket(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The client's address: the trusted header's last entry when configured and readable,
/// else the peer's.
pub fn client_address(parts: &Parts, header: Option<&HeaderName>) -> IpAddr {
    let forwarded = header
        .and_then(|name| parts.headers.get_all(name).iter().next_back())
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.rsplit(',').next())
        .and_then(|last| parse_address(last.trim()));
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip());
    // The server always records the peer; without it, every such request shares one
    // key (limited together) rather than escaping the limit.
    forwarded
        .or(peer)
        .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
}

/// `203.0.113.7`, `2001:db8::1`, or either with a port (`[2001:db8::1]:443`).
fn parse_address(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Extracting it spends one request of the client address's quota (429 beyond it). It
/// comes before the body in a handler's arguments, so a refused request is not read.
pub struct AddressQuota;

impl FromRequestParts<AppState> for AddressQuota {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = state.guard.config.client_address_header.as_ref();
        state.guard.check_address(client_address(parts, header))?;
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn guard(slots: usize, wait: Duration) -> Guard {
        Guard::new(GuardConfig {
            hash_slots: slots,
            hash_wait: wait,
            ..GuardConfig::default()
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_more_hashes_run_at_once_than_there_are_slots() {
        let guard = Arc::new(guard(2, Duration::from_secs(30)));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let (guard, running, most) = (guard.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    guard
                        .hashing(move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.expect("joined").is_ok(), "waited its turn");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_that_cannot_get_a_slot_in_time_is_refused_with_a_retry_after() {
        let guard = Arc::new(guard(1, Duration::from_millis(50)));
        let (started, release) = (
            Arc::new(tokio::sync::Notify::new()),
            std::sync::mpsc::channel(),
        );
        let (release, held) = release;
        let holder = {
            let (guard, started) = (guard.clone(), started.clone());
            tokio::spawn(async move {
                guard
                    .hashing(move || {
                        started.notify_one();
                        let _ = held.recv();
                    })
                    .await
            })
        };
        started.notified().await;
        let refused = guard.hashing(|| ()).await;
        assert!(
            matches!(
                refused,
                Err(ApiError::Overloaded {
                    retry_after_seconds: 1,
                    ..
                })
            ),
            "{refused:?}"
        );
        release.send(()).expect("the holder waits");
        assert!(holder.await.expect("joined").is_ok());
    }

    #[test]
    fn a_quota_allows_its_burst_then_names_the_wait() {
        let guard = Guard::new(GuardConfig {
            per_account: RateQuota {
                burst: 2,
                per_minute: 1,
            },
            ..GuardConfig::default()
        });
        assert!(guard.check_account("a@example.com").is_ok());
        assert!(guard.check_account("a@example.com").is_ok());
        match guard.check_account("a@example.com") {
            Err(ApiError::TooManyRequests {
                retry_after_seconds,
                ..
            }) => assert!((59..=60).contains(&retry_after_seconds)),
            other => panic!("refused: {other:?}"),
        }
        assert!(guard.check_account("b@example.com").is_ok(), "per account");
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(bucket(mapped), "192.0.2.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn the_trusted_header_names_the_client_by_its_last_entry() {
        let header = HeaderName::from_static("x-forwarded-for");
        let request = |value: &str| {
            let (mut parts, ()) = axum::http::Request::builder()
                .header("x-forwarded-for", value)
                .body(())
                .expect("request")
                .into_parts();
            parts
                .extensions
                .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 4000))));
            parts
        };
        let parts = request("203.0.113.9, 198.51.100.1");
        assert_eq!(
            client_address(&parts, Some(&header)),
            "198.51.100.1".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            client_address(&parts, None),
            "10.0.0.1".parse::<IpAddr>().expect("ip"),
            "untrusted: the peer"
        );
        let garbage = request("not an address");
        assert_eq!(
            client_address(&garbage, Some(&header)),
            "10.0.0.1".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            client_address(&request("[2001:db8::7]:443"), Some(&header)),
            "2001:db8::7".parse::<IpAddr>().expect("ip")
        );
    }
}
