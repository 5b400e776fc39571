//! Medians and spread over repeats, percentiles over samples.

#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(values: &[f64]) -> Summary {
        assert!(!values.is_empty(), "a summary needs at least one value");
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            n,
        }
    }

    /// One summary for each set of repeats (a path's, a proxy's).
    pub fn each(sets: &[Vec<f64>]) -> Vec<Summary> {
        sets.iter().map(|v| Summary::of(v)).collect()
    }

    /// "median (min–max)" with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// The `p`-th percentile (0–100, nearest rank) of `samples`.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    assert!(!samples.is_empty(), "a percentile needs samples");
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A node's own cost per path, from each path's cost per repeat and the
/// reference it is counted from (`references[i]`: the path without the node
/// and with the same links' offloads; None: a reference itself): the cost
/// minus its reference's of the same repeat, and the node's capacity per CPU
/// (10⁹ / its own ns: units per second one CPU would handle; a node cheaper
/// than the noise, ≤ 1 ns, counts as 1 ns). A reference's own is zeros.
pub fn node_own(
    per_path: &[Vec<f64>],
    references: &[Option<usize>],
) -> (Vec<Summary>, Vec<Summary>) {
    let own = minus_reference(per_path, references);
    let capacity = own
        .iter()
        .map(|v| Summary::of(&v.iter().map(|ns| 1e9 / ns.max(1.0)).collect::<Vec<_>>()))
        .collect();
    (Summary::each(&own), capacity)
}

/// Each path's figure minus its reference's of the same repeat (a
/// reference: minus itself, zeros).
fn minus_reference(per_path: &[Vec<f64>], references: &[Option<usize>]) -> Vec<Vec<f64>> {
    per_path
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let reference = &per_path[references[i].unwrap_or(i)];
            v.iter().zip(reference).map(|(c, r)| c - r).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cost_is_paired_by_repeat_with_each_paths_reference() {
        // Paths 0 and 1, each with its reference (2, 3): repeat 1 is slower
        // for all.
        let cost = vec![
            vec![60_000.0, 70_000.0],
            vec![58_000.0, 66_000.0],
            vec![50_000.0, 61_000.0],
            vec![44_000.0, 55_000.0],
        ];
        let references = [Some(2), Some(3), None, None];
        assert_eq!(
            minus_reference(&cost, &references),
            vec![
                vec![10_000.0, 9_000.0],
                vec![14_000.0, 11_000.0],
                vec![0.0, 0.0],
                vec![0.0, 0.0]
            ]
        );
        let (own, capacity) = node_own(&cost, &references);
        assert_eq!(
            (own[0].median, own[0].min, own[0].max),
            (9_500.0, 9_000.0, 10_000.0)
        );
        assert_eq!((own[1].min, own[1].max), (11_000.0, 14_000.0));
        assert_eq!(
            (capacity[0].min, capacity[0].max),
            (1e9 / 10_000.0, 1e9 / 9_000.0)
        );
    }

    #[test]
    fn a_node_cheaper_than_the_noise_counts_as_one_ns() {
        // Below its reference in one repeat: capacity 10⁹/s, not negative.
        let (own, capacity) = node_own(&[vec![95.0, 120.0], vec![100.0, 100.0]], &[Some(1), None]);
        assert_eq!((own[0].min, own[0].max), (-5.0, 20.0));
        assert_eq!((capacity[0].min, capacity[0].max), (1e9 / 20.0, 1e9));
    }

    #[test]
    fn median_and_spread() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 10.0, 4));
        assert_eq!(Summary::of(&[5.0, 1.0, 3.0]).median, 3.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
