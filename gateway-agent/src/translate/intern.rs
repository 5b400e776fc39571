//! One copy of each value that many HTTP rules hold alike. Thousands of
//! routes usually send to a few backends with the same (mostly no) filters:
//! their rules share one `Arc` of each instead of holding copies.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;

use crate::model::{HttpBackend, HttpFilters};

/// The shared values of one translate.
#[derive(Default)]
pub(super) struct Interner {
    filters: HashSet<Arc<HttpFilters>>,
    backends: HashSet<Arc<[HttpBackend]>>,
}

impl Interner {
    pub(super) fn filters(&mut self, filters: HttpFilters) -> Arc<HttpFilters> {
        intern(&mut self.filters, filters, Arc::new)
    }

    pub(super) fn backends(&mut self, backends: Vec<HttpBackend>) -> Arc<[HttpBackend]> {
        intern(&mut self.backends, backends, Arc::from)
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
}
