//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted: each
//! backend walks its own permutation of the table's slots and claims the next
//! free one on its turn; turns are interleaved in proportion to the weights.
//! Removing or adding one of N backends moves about 1/N of the slots, since
//! the other backends keep claiming the slots they preferred before.

/// A backend as Maglev sees it: a stable identity (its permutation depends on
/// it, not on its position in the list) and a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Weighted {
    pub identity: u64,
    pub weight: u64,
}

/// Fills a table of `size` slots (a prime) with indexes into `backends`.
/// Every backend with a non-zero weight gets `size * weight / total` slots,
/// to within one slot. Empty when no backend has weight. The result depends on
/// the backends' identities and weights, not on their order in the list.
pub fn build(backends: &[Weighted], size: u32) -> Vec<u16> {
    assert!(backends.len() < usize::from(u16::MAX), "too many backends");
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by_key(|i| (backends[*i].identity, backends[*i].weight));
    let sorted: Vec<Weighted> = order.iter().map(|i| backends[*i]).collect();
    build_sorted(&sorted, size)
        .into_iter()
        .map(|i| order[usize::from(i)] as u16)
        .collect()
}

fn build_sorted(backends: &[Weighted], size: u32) -> Vec<u16> {
    let quotas = quotas(backends, size);
    if quotas.iter().all(|q| *q == 0) {
        return Vec::new();
    }
    let size = size as usize;
    let (offsets, skips): (Vec<usize>, Vec<usize>) = backends
        .iter()
        .map(|b| {
            let h = splitmix64(b.identity);
            (
                (h % size as u64) as usize,
                ((h >> 32) % (size as u64 - 1) + 1) as usize,
            )
        })
        .unzip();
    let mut next = vec![0usize; backends.len()];
    let mut table = vec![u16::MAX; size];
    // Smooth weighted round robin over the quotas: every turn claims exactly
    // one slot, so each backend ends with exactly its quota.
    let mut credit = vec![0i64; backends.len()];
    let total = size as i64;
    for _ in 0..size {
        for (c, q) in credit.iter_mut().zip(&quotas) {
            *c += *q as i64;
        }
        let turn = (0..backends.len())
            .filter(|i| quotas[*i] > 0)
            .max_by(|a, b| credit[*a].cmp(&credit[*b]).then(b.cmp(a)))
            .expect("a backend has a quota");
        credit[turn] -= total;
        // A permutation of a prime-sized table visits every slot: this ends.
        loop {
            let slot = (offsets[turn] + next[turn] * skips[turn]) % size;
            next[turn] += 1;
            if table[slot] == u16::MAX {
                table[slot] = turn as u16;
                break;
            }
        }
    }
    table
}

/// Slots per backend in proportion to weight (largest remainder), summing to `size`.
fn quotas(backends: &[Weighted], size: u32) -> Vec<u64> {
    let total: u128 = backends.iter().map(|b| u128::from(b.weight)).sum();
    if total == 0 {
        return vec![0; backends.len()];
    }
    let size = u128::from(size);
    let mut quotas: Vec<u64> = backends
        .iter()
        .map(|b| (u128::from(b.weight) * size / total) as u64)
        .collect();
    let mut remainders: Vec<(u128, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (u128::from(b.weight) * size % total, i))
        .collect();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let missing = size as u64 - quotas.iter().sum::<u64>();
    for (_, i) in remainders.iter().take(missing as usize) {
        quotas[*i] += 1;
    }
    quotas
}

/// A fixed, well-mixing 64-bit hash: permutations must be the same in every
/// agent run (std's hashers are seeded or may change between Rust versions).
pub const fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_common::MAGLEV_TABLE_SIZE as M;

    fn backends(weights: &[u64]) -> Vec<Weighted> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Weighted {
                identity: 1000 + i as u64,
                weight: *w,
            })
            .collect()
    }

    fn shares(table: &[u16], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for b in table {
            counts[usize::from(*b)] += 1;
        }
        counts
            .iter()
            .map(|c| *c as f64 / table.len() as f64)
            .collect()
    }

    /// Fraction of slots whose backend (by identity) differs between two tables.
    fn moved(a: &[u16], a_ids: &[Weighted], b: &[u16], b_ids: &[Weighted]) -> f64 {
        let changed = a
            .iter()
            .zip(b)
            .filter(|(x, y)| a_ids[usize::from(**x)].identity != b_ids[usize::from(**y)].identity)
            .count();
        changed as f64 / a.len() as f64
    }

    #[test]
    fn weights_are_honoured_within_one_percent() {
        let mut state = 7u64;
        let mut cases = vec![vec![70, 20, 10], vec![1, 1, 1], vec![1000, 1]];
        for n in 2..=40 {
            state = splitmix64(state);
            cases.push((0..n).map(|i| splitmix64(state + i) % 100 + 1).collect());
        }
        for weights in cases {
            let table = build(&backends(&weights), M);
            assert_eq!(table.len(), M as usize);
            let total: u64 = weights.iter().sum();
            for (i, share) in shares(&table, weights.len()).iter().enumerate() {
                let want = weights[i] as f64 / total as f64;
                // Within 1% of its share, or within one slot for shares so
                // small that one slot is more than 1% of them.
                assert!(
                    (share - want).abs() <= (0.01 * want).max(1.0 / f64::from(M)),
                    "{weights:?}: backend {i} has {share}, wants {want}"
                );
            }
        }
    }

    #[test]
    fn removing_or_adding_one_backend_moves_few_slots() {
        for n in [3usize, 5, 10, 20] {
            let all = backends(&vec![1; n]);
            let full = build(&all, M);
            // Remove the middle one: only its slots must move, plus a little.
            let mut fewer = all.clone();
            fewer.remove(n / 2);
            let smaller = build(&fewer, M);
            let removed = moved(&full, &all, &smaller, &fewer);
            let ideal = 1.0 / n as f64;
            assert!(
                removed >= ideal * 0.99 && removed <= ideal * 1.6,
                "n={n}: removing one moved {removed:.4} of slots, ideal {ideal:.4}"
            );
            // Slots that did not belong to the removed backend mostly stay put.
            let kept_elsewhere = full
                .iter()
                .zip(&smaller)
                .filter(|(x, _)| usize::from(**x) != n / 2)
                .filter(|(x, y)| all[usize::from(**x)].identity != fewer[usize::from(**y)].identity)
                .count() as f64
                / M as f64;
            assert!(kept_elsewhere <= ideal * 0.6, "n={n}: {kept_elsewhere}");
            // Adding one back: the reverse move.
            let added = moved(&smaller, &fewer, &full, &all);
            assert!(
                added <= ideal * 1.6,
                "n={n}: adding one moved {added:.4}, ideal {ideal:.4}"
            );
            eprintln!(
                "n={n}: remove one moves {removed:.4}, add one moves {added:.4}, ideal {ideal:.4}"
            );
        }
    }

    #[test]
    fn the_table_depends_on_identities_not_on_list_order() {
        let list = backends(&[5, 3, 2]);
        let table = build(&list, M);
        let mut reversed = list.clone();
        reversed.reverse();
        let other = build(&reversed, M);
        assert_eq!(moved(&table, &list, &other, &reversed), 0.0);
    }

    #[test]
    fn no_weight_means_no_table() {
        assert!(build(&backends(&[0, 0]), M).is_empty());
        assert!(build(&[], M).is_empty());
    }
}
