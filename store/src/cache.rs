//! Recently used aggregates, kept in memory by the command bus so that a command does not
//! read and fold the aggregate's whole history every time.
//!
//! An entry is an aggregate's state after its first `version` events. The bus decides a
//! command on it as it is, and the append's sequence check proves it current; a load that
//! must be current reads only the events after `version` (usually none: one indexed query
//! that returns no rows) and folds them on. Events are never changed and a sequence number
//! names exactly one event, so an entry can fall behind the log — another process
//! appended — but never be wrong: a command decided on it is refused at append time and
//! decided again on the entry brought up to date.
//!
//! Bounded: past `capacity` entries the least recently used eighth is dropped at once
//! (one pass over the entries per `capacity / 8` insertions).

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Aggregates kept by default: a few megabytes for omoi's small aggregates.
pub const DEFAULT_CAPACITY: usize = 10_000;

pub struct AggregateCache {
    capacity: usize,
    entries: Mutex<HashMap<Key, Entry>>,
    clock: AtomicU64,
}

type Key = (&'static str, String);

struct Entry {
    state: Arc<dyn Any + Send + Sync>,
    version: usize,
    used: u64,
}

impl AggregateCache {
    /// A cache of at most `capacity` aggregates; 0 keeps none (every load reads the whole
    /// history, as without a cache).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
        }
    }

    /// The state of aggregate `id` of type `kind` after its first `version` events, if kept.
    pub fn get<A: Any + Clone>(&self, kind: &'static str, id: &str) -> Option<(A, usize)> {
        if self.capacity == 0 {
            return None;
        }
        let used = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get_mut(&(kind, id.to_string()))?;
        entry.used = used;
        let state = entry.state.downcast_ref::<A>()?.clone();
        Some((state, entry.version))
    }

    /// Keeps `state`, the aggregate after its first `version` events, unless a later
    /// version is kept already (two commands of this process raced with a reader).
    pub fn put<A: Any + Send + Sync>(
        &self,
        kind: &'static str,
        id: &str,
        state: A,
        version: usize,
    ) {
        if self.capacity == 0 {
            return;
        }
        let used = self.clock.fetch_add(1, Ordering::Relaxed);
        let key = (kind, id.to_string());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(&key) {
            Some(kept) if kept.version > version => return,
            Some(_) => {}
            None if entries.len() >= self.capacity => self.evict(&mut entries),
            None => {}
        }
        entries.insert(
            key,
            Entry {
                state: Arc::new(state),
                version,
                used,
            },
        );
    }

    /// How many aggregates are kept.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the least recently used eighth of the entries.
    fn evict(&self, entries: &mut HashMap<Key, Entry>) {
        let mut uses: Vec<u64> = entries.values().map(|e| e.used).collect();
        let cut = (self.capacity / 8).clamp(1, uses.len());
        let (_, threshold, _) = uses.select_nth_unstable(cut - 1);
        let threshold = *threshold;
        entries.retain(|_, entry| entry.used > threshold);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_returned_with_its_version_and_only_as_its_own_type() {
        let cache = AggregateCache::new(10);
        cache.put("Ticket", "a", String::from("state"), 3);
        assert_eq!(
            cache.get::<String>("Ticket", "a"),
            Some(("state".into(), 3))
        );
        assert_eq!(cache.get::<u32>("Ticket", "a"), None);
        assert_eq!(cache.get::<String>("Task", "a"), None);
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let cache = AggregateCache::new(10);
        cache.put("Ticket", "a", 5_u32, 5);
        cache.put("Ticket", "a", 4_u32, 4);
        assert_eq!(cache.get::<u32>("Ticket", "a"), Some((5, 5)));
        cache.put("Ticket", "a", 6_u32, 6);
        assert_eq!(cache.get::<u32>("Ticket", "a"), Some((6, 6)));
    }

    #[test]
    fn past_its_capacity_the_least_recently_used_go_first() {
        let cache = AggregateCache::new(16);
        for i in 0..16_u32 {
            cache.put("Ticket", &i.to_string(), i, 1);
        }
        // The first two are used again: the next eviction spares them.
        assert!(cache.get::<u32>("Ticket", "0").is_some());
        assert!(cache.get::<u32>("Ticket", "1").is_some());
        cache.put("Ticket", "new", 99_u32, 1);
        assert!(cache.len() <= 16);
        assert!(cache.get::<u32>("Ticket", "0").is_some());
        assert!(cache.get::<u32>("Ticket", "1").is_some());
        assert!(cache.get::<u32>("Ticket", "new").is_some());
        assert!(
            cache.get::<u32>("Ticket", "2").is_none(),
            "the least recently used went"
        );
    }

    #[test]
    fn a_cache_of_no_capacity_keeps_nothing() {
        let cache = AggregateCache::new(0);
        cache.put("Ticket", "a", 1_u32, 1);
        assert!(cache.get::<u32>("Ticket", "a").is_none());
        assert!(cache.is_empty());
    }
}
