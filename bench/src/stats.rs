//! Percentiles and medians, computed one way for every benchmark.

use std::time::Duration;

/// The nearest-rank `q`-quantile (0 < q ≤ 1) of `values`, which need not be sorted;
/// `NaN` when there are none.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    nearest_rank(&sorted, q)
}

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The median (the 50th percentile).
pub fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

/// p50, p99 and the largest value of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latencies {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latencies {
    /// Of values already in milliseconds.
    pub fn of_ms(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            p50: nearest_rank(&sorted, 0.50),
            p99: nearest_rank(&sorted, 0.99),
            max: nearest_rank(&sorted, 1.0),
        }
    }

    /// Of durations, in milliseconds.
    pub fn of(values: &[Duration]) -> Self {
        let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        Self::of_ms(&ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_by_hand() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(percentile(&[], 0.5).is_nan());
        let latencies = Latencies::of(&[Duration::from_millis(2), Duration::from_millis(1)]);
        assert_eq!((latencies.p50, latencies.max), (1.0, 2.0));
    }
}
