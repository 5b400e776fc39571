//! One copy of each value that many HTTP rules hold alike. Thousands of
//! routes usually send to a few backends with the same (mostly no) filters:
//! their rules share one `Arc` of each instead of holding copies.
//!
//! Parsed routes do too: sources parse routes one at a time, so the rules and
//! parentRefs that routes hold alike (the same matches to the same Service,
//! the same Gateway listener) are shared process-wide, not per translate.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex};

use super::input::{ParentRef, Rule};
use crate::model::{HttpAction, HttpBackend, HttpFilters};

/// The shared values of one translate.
#[derive(Default)]
pub(super) struct Interner {
    filters: HashSet<Arc<HttpFilters>>,
    backends: HashSet<Arc<[HttpBackend]>>,
    actions: HashSet<Arc<HttpAction>>,
}

impl Interner {
    pub(super) fn filters(&mut self, filters: HttpFilters) -> Arc<HttpFilters> {
        intern(&mut self.filters, filters, Arc::new)
    }

    pub(super) fn backends(&mut self, backends: Vec<HttpBackend>) -> Arc<[HttpBackend]> {
        intern(&mut self.backends, backends, Arc::from)
    }

    pub(super) fn action(&mut self, action: HttpAction) -> Arc<HttpAction> {
        intern(&mut self.actions, action, Arc::new)
    }
}

/// The parsed rule equal to `rule` that some route already holds, or `rule`.
pub(super) fn shared_rule(rule: Rule) -> Arc<Rule> {
    static RULES: LazyLock<Mutex<SharedSet<Rule>>> = LazyLock::new(Default::default);
    RULES.lock().expect("shared rules lock").get(rule)
}

/// The parentRef equal to `parent` that some route already holds, or `parent`.
pub(super) fn shared_parent_ref(parent: ParentRef) -> Arc<ParentRef> {
    static PARENT_REFS: LazyLock<Mutex<SharedSet<ParentRef>>> = LazyLock::new(Default::default);
    PARENT_REFS
        .lock()
        .expect("shared parentRefs lock")
        .get(parent)
}

/// Sets smaller than this are not swept.
const SWEEP_MIN: usize = 1024;

/// Values shared process-wide. A value that only the set still holds (its
/// routes were removed or changed) leaves at the next sweep, done when the
/// set has doubled since the last one: each value costs O(1) amortized, and
/// the set holds at most twice what routes hold.
struct SharedSet<T> {
    values: HashSet<Arc<T>>,
    kept_at_last_sweep: usize,
}

impl<T> Default for SharedSet<T> {
    fn default() -> Self {
        Self {
            values: HashSet::new(),
            kept_at_last_sweep: 0,
        }
    }
}

impl<T: Hash + Eq> SharedSet<T> {
    fn get(&mut self, value: T) -> Arc<T> {
        if self.values.len() >= (2 * self.kept_at_last_sweep).max(SWEEP_MIN) {
            // Under the lock, a count of 1 cannot grow: only the set has it.
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.kept_at_last_sweep = self.values.len();
        }
        intern(&mut self.values, value, Arc::new)
    }
}

/// The set's `Arc` equal to `value`, or a new one made of it (and kept).
fn intern<T, O>(set: &mut HashSet<Arc<T>>, value: O, share: impl FnOnce(O) -> Arc<T>) -> Arc<T>
where
    T: Hash + Eq + ?Sized,
    O: std::borrow::Borrow<T>,
{
    if let Some(shared) = set.get(value.borrow()) {
        return shared.clone();
    }
    let shared = share(value);
    set.insert(shared.clone());
    shared
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BackendProtocol;

    fn backend(port: u16) -> HttpBackend {
        HttpBackend {
            addr: ([10, 0, 0, 1], port).into(),
            weight: 1,
            protocol: BackendProtocol::Http1,
            filters: Arc::default(),
            tls: None,
        }
    }

    #[test]
    fn equal_values_share_one_arc_and_different_ones_do_not() {
        let mut interner = Interner::default();
        let a = interner.backends(vec![backend(80)]);
        let b = interner.backends(vec![backend(80)]);
        let c = interner.backends(vec![backend(81)]);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c[0].addr.port(), 81);
        let none = interner.filters(HttpFilters::default());
        let again = interner.filters(HttpFilters::default());
        assert!(Arc::ptr_eq(&none, &again));
    }

    #[test]
    fn a_sweep_drops_the_values_only_the_set_holds() {
        let mut set = SharedSet::default();
        let held: Vec<Arc<u32>> = (0..10).map(|i| set.get(i)).collect();
        assert!(Arc::ptr_eq(&held[3], &set.get(3)));
        // Values nobody else holds, up to the sweep at SWEEP_MIN entries.
        for i in 10..SWEEP_MIN as u32 {
            set.get(i);
        }
        assert_eq!(set.values.len(), SWEEP_MIN);
        let again = set.get(SWEEP_MIN as u32);
        assert_eq!(set.values.len(), held.len() + 1);
        assert_eq!(set.kept_at_last_sweep, held.len());
        assert!(Arc::ptr_eq(&held[9], &set.get(9)));
        assert_eq!(*again, SWEEP_MIN as u32);
    }
}
