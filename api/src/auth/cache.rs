//! A short-lived cache of accepted credentials.
//!
//! Without it every request costs one more database round trip (the user, the token's
//! revocation and the memberships), which measured as a third of the write path's
//! throughput. An accepted credential is remembered for `ttl` (1 s by default). Changes made
//! through this process — logout, refresh-token reuse, API-key revocation, membership
//! changes (which also drop the API keys the member created) — drop the affected entries at
//! once; changes made through another replica take effect here within `ttl`. A `ttl` of
//! zero disables the cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Caller;

/// Entries beyond this are dropped (expired ones first) so memory stays bounded.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialKey {
    /// An access token, by its `jti`.
    Token(Uuid),
    /// An API key, by its full SHA-256 (never by the secret itself).
    ApiKey(Vec<u8>),
}

pub struct CredentialCache {
    ttl: Duration,
    entries: Mutex<HashMap<CredentialKey, (Instant, Caller)>>,
}

impl CredentialCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &CredentialKey) -> Option<Caller> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().ok()?;
        let (stored_at, caller) = entries.get(key)?;
        (stored_at.elapsed() < self.ttl).then(|| caller.clone())
    }

    pub fn put(&self, key: CredentialKey, caller: &Caller) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (stored_at, _)| stored_at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), caller.clone()));
    }

    /// Forgets every credential whose authority rests on `user` — their tokens and the
    /// API keys they created, agent credentials included (logout, token reuse, a
    /// membership change: a key acts with at most its creator's role, and not at all once
    /// they have left).
    pub fn forget_user(&self, user: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, (_, caller)| !caller.rests_on(user));
        }
    }

    /// Forgets every API key (a key was revoked; keys are few and cheap to reload).
    pub fn forget_api_keys(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|key, _| !matches!(key, CredentialKey::ApiKey(_)));
        }
    }
}
