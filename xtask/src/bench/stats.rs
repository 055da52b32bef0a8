//! Statistics over repeated measurements: the best of them, their median.

/// A figure measured several times: the best repetition (highest for a
/// throughput or rate, lowest for a time) and the median of the same
/// repetitions; `None` without any.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fig {
    pub best: Option<f64>,
    pub median: Option<f64>,
}

impl Fig {
    /// Of throughputs and rates: higher is better.
    pub fn highest(v: &[f64]) -> Self {
        Self {
            best: max(v),
            median: median(v),
        }
    }

    /// Of times: lower is better.
    pub fn lowest(v: &[f64]) -> Self {
        Self {
            best: min(v),
            median: median(v),
        }
    }

    /// Best over best and median over median (e.g. a throughput as a share
    /// of its baseline).
    pub fn ratio(self, d: Fig) -> Fig {
        let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        Fig {
            best: div(self.best, d.best),
            median: div(self.median, d.median),
        }
    }

    pub fn map(self, f: impl Fn(f64) -> f64) -> Fig {
        Fig {
            best: self.best.map(&f),
            median: self.median.map(&f),
        }
    }
}

/// The highest value (best of a throughput or a rate).
pub fn max(v: &[f64]) -> Option<f64> {
    v.iter()
        .copied()
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

/// The lowest value (best of a time).
pub fn min(v: &[f64]) -> Option<f64> {
    v.iter()
        .copied()
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.min(x))))
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
        assert_eq!(min(&[2.0, 1.0, 3.0]), Some(1.0));
        let f = Fig::highest(&[4.0, 1.0, 2.0]);
        assert_eq!((f.best, f.median), (Some(4.0), Some(2.0)));
        let t = Fig::lowest(&[4.0, 1.0, 2.0]);
        assert_eq!((t.best, t.median), (Some(1.0), Some(2.0)));
        let r = f.ratio(Fig::highest(&[2.0]));
        assert_eq!((r.best, r.median), (Some(2.0), Some(1.0)));
        assert_eq!(f.ratio(Fig::default()), Fig::default());
        assert_eq!(t.map(|x| x * 2.0).median, Some(4.0));
        assert_eq!(gbps(2_000, 1_000), 2.0);
        assert_eq!(gbps(1, 0), 0.0);
    }
}
