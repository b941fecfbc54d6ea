//! What a process manager keeps of its own tables in memory between batches, by build
//! schema (a rebuild runs beside the live build). The leader is its tables' only writer, so
//! what its last committed batch ended with is what they hold: a batch's change is taken in
//! only once the runner says it committed ([`omoi_projections::Projector::settled`]), and
//! a batch that did not — or the start of a leadership, when another process may have led
//! the build meanwhile — forgets everything kept for the build.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A build's kept state, changed only by the batches that committed.
pub(crate) trait Keep: Default {
    /// What one batch changed.
    type Change;

    /// Takes in a committed batch's change.
    fn commit(&mut self, change: Self::Change);
}

/// A process manager's kept state of each of its builds.
pub(crate) struct Kept<K: Keep> {
    builds: Mutex<HashMap<String, Build<K>>>,
}

struct Build<K: Keep> {
    kept: K,
    /// The change of the batch given last, taken in once the runner says it committed.
    pending: Option<K::Change>,
}

impl<K: Keep> Default for Kept<K> {
    fn default() -> Self {
        Self {
            builds: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Keep> Kept<K> {
    fn builds(&self) -> MutexGuard<'_, HashMap<String, Build<K>>> {
        // Nothing is left half-changed under this lock: a poisoned one is still whole.
        self.builds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `read` makes of the build's kept state, for a batch about to be applied. `None`
    /// when nothing is kept — or when the batch given before never settled (its events
    /// applied one by one to isolate a poison event, a test applying directly): it may have
    /// been rolled back, so what was kept is forgotten.
    pub(crate) fn for_batch<R>(&self, schema: &str, read: impl FnOnce(&K) -> R) -> Option<R> {
        let mut builds = self.builds();
        match builds.get(schema) {
            Some(build) if build.pending.is_none() => Some(read(&build.kept)),
            Some(_) => {
                builds.remove(schema);
                None
            }
            None => None,
        }
    }

    /// What `read` makes of the build's kept state between batches (whether a page
    /// concerns the build): `None` unless what is kept settled.
    pub(crate) fn between_batches<R>(&self, schema: &str, read: impl FnOnce(&K) -> R) -> Option<R> {
        self.builds()
            .get(schema)
            .filter(|build| build.pending.is_none())
            .map(|build| read(&build.kept))
    }

    /// Changes the build's kept state between batches or before one (forgetting what an
    /// event made stale); with a batch given and not settled, forgets the build instead.
    pub(crate) fn amend(&self, schema: &str, change: impl FnOnce(&mut K)) {
        let mut builds = self.builds();
        match builds.get_mut(schema) {
            Some(build) if build.pending.is_none() => change(&mut build.kept),
            Some(_) => {
                builds.remove(schema);
            }
            None => {}
        }
    }

    /// Holds the batch's change until the runner says whether it committed.
    pub(crate) fn hold(&self, schema: &str, change: K::Change) {
        let mut builds = self.builds();
        let build = builds.entry(schema.to_string()).or_insert_with(|| Build {
            kept: K::default(),
            pending: None,
        });
        build.pending = Some(change);
    }

    /// How the batch given last ended: its change taken in once committed, everything kept
    /// for the build forgotten otherwise.
    pub(crate) fn settled(&self, schema: &str, committed: bool) {
        let mut builds = self.builds();
        if !committed {
            builds.remove(schema);
            return;
        }
        if let Some(build) = builds.get_mut(schema) {
            if let Some(change) = build.pending.take() {
                build.kept.commit(change);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Keep, Kept};

    /// A sum of the committed batches' numbers.
    #[derive(Default)]
    struct Sum(i64);

    impl Keep for Sum {
        type Change = i64;
        fn commit(&mut self, change: i64) {
            self.0 += change;
        }
    }

    fn sum(kept: &Kept<Sum>, schema: &str) -> Option<i64> {
        kept.between_batches(schema, |sum| sum.0)
    }

    #[test]
    fn only_committed_changes_are_kept_and_anything_unsure_forgets_the_build() {
        let kept = Kept::<Sum>::default();
        assert_eq!(kept.for_batch("a", |sum| sum.0), None, "nothing kept yet");

        kept.hold("a", 2);
        assert_eq!(sum(&kept, "a"), None, "not settled");
        kept.settled("a", true);
        assert_eq!(sum(&kept, "a"), Some(2));
        kept.hold("a", 3);
        kept.settled("a", true);
        assert_eq!(kept.for_batch("a", |sum| sum.0), Some(5));

        // Another build's batches are its own.
        kept.hold("b", 7);
        kept.settled("b", true);
        assert_eq!(sum(&kept, "a"), Some(5));
        assert_eq!(sum(&kept, "b"), Some(7));

        // Rolled back: the build's state is forgotten, the other's stays.
        kept.hold("a", 11);
        kept.settled("a", false);
        assert_eq!(sum(&kept, "a"), None);
        assert_eq!(sum(&kept, "b"), Some(7));

        // A batch that never settled: the next one trusts nothing kept.
        kept.hold("b", 13);
        assert_eq!(kept.for_batch("b", |sum| sum.0), None);
        kept.settled("b", true);
        assert_eq!(sum(&kept, "b"), None, "forgotten with the unsettled batch");

        // Amended between batches: the kept state changes; with a batch unsettled, the
        // build is forgotten.
        kept.hold("c", 5);
        kept.settled("c", true);
        kept.amend("c", |sum| sum.0 -= 1);
        assert_eq!(sum(&kept, "c"), Some(4));
        kept.hold("c", 17);
        kept.amend("c", |sum| sum.0 -= 1);
        assert_eq!(kept.for_batch("c", |sum| sum.0), None);
    }
}
