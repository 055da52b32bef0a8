//! Statistics over repeated measurements: the best of them, their median.

/// The highest value (best of a throughput or a rate).
pub fn max(v: &[f64]) -> Option<f64> {
    v.iter()
        .copied()
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Keeps the lowest of each entry (best of several times).
pub fn min_into<const N: usize>(best: &mut [f64; N], x: [f64; N]) {
    for (b, x) in best.iter_mut().zip(x) {
        *b = b.min(x);
    }
}

/// GB/s (1e9 bytes per second) of `bytes` moved in `ns`; 0 without a time.
pub fn gbps(bytes: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        bytes as f64 / ns as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_and_median() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(max(&[]), None);
        assert_eq!(max(&[1.0, 3.0, 2.0]), Some(3.0));
        let mut best = [f64::INFINITY, 2.0];
        min_into(&mut best, [5.0, 3.0]);
        assert_eq!(best, [5.0, 2.0]);
        assert_eq!(gbps(2_000, 1_000), 2.0);
        assert_eq!(gbps(1, 0), 0.0);
    }
}
