//! Distributions, ratios and the units the report prints.

use std::time::Duration;

/// A latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dist {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

pub(crate) fn dist(samples: &[i64]) -> Dist {
    if samples.is_empty() {
        return Dist::default();
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    // Nearest rank.
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64;
    Dist {
        p50: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1] as f64,
        mean: v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64,
    }
}

/// The median over rounds of p50(`a` in the round) / p50(`b` in the round): blocks run back to
/// back share the machine's state, so this holds up on a machine whose speed drifts.
pub(crate) fn paired_ratio(a: &[Vec<i64>], b: &[Vec<i64>]) -> f64 {
    let mut ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| dist(a).p50 / dist(b).p50)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN)
}

pub(crate) fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// `48.2 µs`, `1.31 ms`, `2.04 s`.
pub(crate) fn t(ns: f64) -> String {
    if ns.abs() < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns.abs() < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

pub(crate) fn us(ns: f64) -> f64 {
    round3(ns / 1e3)
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

pub(crate) fn jain(counts: &[u64]) -> f64 {
    let sum: f64 = counts.iter().map(|&c| c as f64).sum();
    let squares: f64 = counts.iter().map(|&c| (c as f64).powi(2)).sum();
    if squares == 0.0 {
        0.0
    } else {
        sum * sum / (counts.len() as f64 * squares)
    }
}

/// The median (upper middle for an even count); NaN for none.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `35380, 48588, 34439`.
pub(crate) fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}
