//! A short-lived cache of accepted credentials.
//!
//! Without it every request costs one more database round trip (the user, the token's
//! revocation and the memberships), which measured as a third of the write path's
//! throughput. An accepted credential is remembered for `ttl` (1 s by default). Changes made
//! through this process — logout, refresh-token reuse, API-key revocation, membership
//! changes (which also drop the API keys the member created) — drop the affected entries at
//! once, and a credential read from the database before such a change is not remembered
//! after it ([`CredentialCache::generation`]); changes made through another replica take
//! effect here within `ttl`. A `ttl` of zero disables the cache.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Caller;

/// Entries beyond this are dropped (expired ones first) so memory stays bounded.
const MAX_ENTRIES: usize = 10_000;

/// How long a credential accepted by a lookup is known as one ([`CredentialCache::accepted_lately`]).
const KNOWN_FOR: Duration = Duration::from_secs(3_600);

/// Credentials known as accepted, at most (a few megabytes).
const MAX_KNOWN: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialKey {
    /// An access token, by its `jti`.
    Token(Uuid),
    /// An API key, by its full SHA-256 (never by the secret itself).
    ApiKey(Vec<u8>),
}

pub struct CredentialCache {
    ttl: Duration,
    entries: Mutex<Entries>,
    /// Credentials a lookup accepted within [`KNOWN_FOR`] and no lookup refused since,
    /// whatever `ttl` is: an address barred for refused credentials
    /// (`guard::Guard::check_lookup`) still has these looked up, so that one client's
    /// revoked or made-up keys do not stop the valid ones behind the same address (a
    /// worker's agents, a NAT).
    known: Mutex<HashMap<CredentialKey, Instant>>,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<CredentialKey, (Instant, Caller)>,
    /// Counts the forgets: a credential read before one is not put after it.
    generation: u64,
}

impl CredentialCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(Entries::default()),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a lookup accepted `key` lately and none refused it since.
    pub fn accepted_lately(&self, key: &CredentialKey) -> bool {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        known
            .get(key)
            .is_some_and(|accepted_at| accepted_at.elapsed() < KNOWN_FOR)
    }

    /// Records that a lookup accepted `key` (or, `false`, refused it).
    pub fn looked_up(&self, key: &CredentialKey, accepted: bool) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if !accepted {
            known.remove(key);
            return;
        }
        if known.len() >= MAX_KNOWN && !known.contains_key(key) {
            known.retain(|_, accepted_at| accepted_at.elapsed() < KNOWN_FOR);
            if known.len() >= MAX_KNOWN {
                return;
            }
        }
        known.insert(key.clone(), Instant::now());
    }

    /// Taken before a credential is read from the database, and handed to [`Self::put`]:
    /// a forget in between (the key revoked, the member removed, the user logged out while
    /// the read ran) keeps what the read found out of the cache — else it was remembered,
    /// as it stood before the change, for another `ttl`.
    pub fn generation(&self) -> u64 {
        self.entries.lock().map_or(0, |entries| entries.generation)
    }

    pub fn get(&self, key: &CredentialKey) -> Option<Caller> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (stored_at, caller) = entries.by_key.get(key)?;
        (stored_at.elapsed() < self.ttl).then(|| caller.clone())
    }

    /// Remembers `caller`, read from the database after [`Self::generation`] answered
    /// `read_at`, unless something was forgotten since.
    pub fn put(&self, key: CredentialKey, caller: &Caller, read_at: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.generation != read_at {
            return;
        }
        if entries.by_key.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries
                .by_key
                .retain(|_, (stored_at, _)| stored_at.elapsed() < ttl);
            if entries.by_key.len() >= MAX_ENTRIES {
                entries.by_key.clear();
            }
        }
        entries.by_key.insert(key, (Instant::now(), caller.clone()));
    }

    /// Forgets every credential whose authority rests on `user` — their tokens and the
    /// API keys they created, agent credentials included (logout, token reuse, a
    /// membership change: a key acts with at most its creator's role, and not at all once
    /// they have left).
    pub fn forget_user(&self, user: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.generation += 1;
            entries
                .by_key
                .retain(|_, (_, caller)| !caller.rests_on(user));
        }
    }

    /// Forgets every API key (a key was revoked; keys are few and cheap to reload).
    pub fn forget_api_keys(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.generation += 1;
            entries
                .by_key
                .retain(|key, _| !matches!(key, CredentialKey::ApiKey(_)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::Utc;

    use super::*;
    use crate::auth::Identity;

    fn user(id: Uuid) -> Caller {
        Caller {
            identity: Identity::User {
                id,
                super_admin: false,
                token: (Uuid::now_v7(), Utc::now()),
            },
            roles: HashMap::new(),
            request_id: String::new(),
        }
    }

    #[test]
    fn a_credential_read_before_a_forget_is_not_remembered_after_it() {
        let cache = CredentialCache::new(Duration::from_secs(60));
        let (someone, another) = (Uuid::now_v7(), Uuid::now_v7());
        let key = |n: u128| CredentialKey::Token(Uuid::from_u128(n));

        let read_at = cache.generation();
        cache.put(key(1), &user(someone), read_at);
        assert!(
            cache.get(&key(1)).is_some(),
            "read and put with nothing between"
        );

        // A read under way while a key is revoked, or while another user logs out.
        let forgets: [&dyn Fn(&CredentialCache); 2] =
            [&|cache| cache.forget_api_keys(), &|cache| {
                cache.forget_user(another)
            }];
        for forget in forgets {
            let read_at = cache.generation();
            forget(&cache);
            cache.put(key(2), &user(someone), read_at);
            assert!(cache.get(&key(2)).is_none(), "read before the forget");
        }
        let read_at = cache.generation();
        cache.put(key(2), &user(someone), read_at);
        assert!(cache.get(&key(2)).is_some(), "read after it");
        assert!(
            cache.get(&key(1)).is_some(),
            "another user's forget keeps the rest"
        );
    }
}
