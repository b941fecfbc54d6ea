//! The part of a model that some events changed: the entries they touched, as they stand
//! after them. Applied to the model as it stood before those events, it gives the model
//! after them — how a snapshot's delta ([`crate::snapshots`]) carries a project's board or
//! graph from one snapshot to the next without either whole model or the events between.
//!
//! It rests on each model's `Touched`: the rows one event changed, which the SQL projectors
//! already write back alone (and which their verification holds to the fold's rows).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The entries of one map of a model under the keys touched, in key order; `None` where
/// the map holds no entry under the key (never made, or removed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "V: Serialize",
    deserialize = "V: serde::de::DeserializeOwned"
))]
pub struct Entries<V>(Vec<(Uuid, Option<V>)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V: Clone> Entries<V> {
    /// The entries of `map` under `keys`.
    pub fn of(map: &BTreeMap<Uuid, V>, keys: &BTreeSet<Uuid>) -> Self {
        Self(keys.iter().map(|k| (*k, map.get(k).cloned())).collect())
    }
}

impl<V> Entries<V> {
    /// Sets each key of `map` to its entry here: inserted, replaced or removed.
    pub fn apply_to(self, map: &mut BTreeMap<Uuid, V>) {
        for (key, entry) in self.0 {
            match entry {
                Some(value) => {
                    map.insert(key, value);
                }
                None => {
                    map.remove(&key);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever a map went through, the entries under every key it touched carry the
        /// map as it was before to the map as it is after: additions, changes and removals.
        #[test]
        fn the_touched_entries_carry_a_map_from_before_to_after(
            start in prop::collection::btree_map(0u8..32, any::<u16>(), 0..16),
            changes in prop::collection::vec((0u8..32, prop::option::of(any::<u16>())), 0..40),
        ) {
            let key = |k: u8| Uuid::from_u128(u128::from(k));
            let before: BTreeMap<Uuid, u16> = start.iter().map(|(k, v)| (key(*k), *v)).collect();
            let mut after = before.clone();
            let mut touched = BTreeSet::new();
            for (k, value) in changes {
                touched.insert(key(k));
                match value {
                    Some(v) => after.insert(key(k), v),
                    None => after.remove(&key(k)),
                };
            }
            let entries = Entries::of(&after, &touched);
            prop_assert_eq!(entries.len(), touched.len());
            let mut carried = before.clone();
            entries.apply_to(&mut carried);
            prop_assert_eq!(carried, after);
        }
    }
}
