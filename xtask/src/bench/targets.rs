//! The performance bar: each target metric, its bar, and whether the run
//! met it. A timing is judged by its best repetition (its median is
//! reported beside it); the checkpoint by its throughput as the target
//! sees it (`checkpoint_e2e_vs_memcpy`), not by the BPF copy alone. The
//! dirty-page goals apply to the cells the run measured (the full run's;
//! the smoke's sizes have none).

use super::Outcome;
use super::dirty::DirtyResult;

/// The dirty-page goals: (written, dirtied, ratio, bar). A cycle with
/// 4 KiB dirtied must beat a fork server by far, and stay near the bare
/// protocol, whatever was written before.
const DIRTY_GOALS: [(&str, &str, &str, f64); 3] = [
    ("64MiB", "4KiB", "vs_forkserver", 10.0),
    ("64MiB", "4KiB", "vs_handshake", 0.5),
    ("1GiB", "4KiB", "vs_forkserver", 100.0),
];

/// `dirty.<written>_<dirtied>.<ratio>` of each goal whose cell was measured.
fn dirty_targets(d: &DirtyResult) -> Vec<Target> {
    DIRTY_GOALS
        .iter()
        .filter_map(|&(w, dirtied, ratio, bar)| {
            let c = d.cell(w, dirtied)?;
            let v = if ratio == "vs_forkserver" {
                c.vs_forkserver()
            } else {
                c.vs_handshake()
            };
            Some(Target::ge(format!("dirty.{}.{ratio}", c.label()), v, bar))
        })
        .collect()
}

/// The targets, their values from `out`, and which were timed on a busy
/// machine (sizes and memory are not timings).
pub fn evaluate(out: &Outcome) -> Vec<Target> {
    let mut targets = Vec::new();
    for s in &out.sizes {
        targets.push(Target::ge(
            format!("{}.checkpoint_e2e_vs_memcpy", s.label),
            s.checkpoint_e2e_vs_memcpy().best,
            0.7,
        ));
        targets.push(Target::ge(
            format!("{}.restore_vs_memcpy", s.label),
            s.restore_vs_memcpy().best,
            0.5,
        ));
    }
    targets.push(Target::ge(
        "cycle_rate_vs_handshake".into(),
        out.cycle.ratio(),
        0.8,
    ));
    targets.extend(dirty_targets(&out.dirty));
    targets.push(Target::le(
        "unrelated_openat_overhead".into(),
        out.openat.overhead().best,
        0.10,
    ));
    targets.push(Target::le("startup_ms".into(), out.startup.best, 20.0));
    targets.push(Target::le("static_binary_mib".into(), out.binary.mib, 2.0));
    targets.push(Target::le(
        "kernel_bytes_per_saved_byte".into(),
        out.kernel_bytes_per_saved_byte(),
        1.05,
    ));
    for t in &mut targets {
        let step = timed_in(&t.metric);
        t.busy = out.steps.iter().any(|s| s.name == step && s.busy());
    }
    targets
}

/// The step that times a target's metric; empty for sizes and memory.
fn timed_in(metric: &str) -> String {
    if let Some(cell) = metric.strip_prefix("dirty.") {
        // `<written>_<dirtied>.<ratio>`: one step per written size.
        let written = cell.split(['_', '.']).next().unwrap_or_default();
        return format!("dirty pages {written}");
    }
    match metric.split_once('.') {
        Some((label, _)) => format!("throughput {label}"),
        None => match metric {
            "cycle_rate_vs_handshake" => "cycle rate".into(),
            "unrelated_openat_overhead" => "openat overhead".into(),
            "startup_ms" => "startup".into(),
            _ => String::new(),
        },
    }
}

pub struct Target {
    pub metric: String,
    pub value: Option<f64>,
    ge: bool,
    pub bar: f64,
    /// The value is a timing taken while other processes kept the machine
    /// busy (`Step::busy`).
    pub busy: bool,
}

impl Target {
    fn ge(metric: String, value: Option<f64>, bar: f64) -> Self {
        Self {
            metric,
            value,
            ge: true,
            bar,
            busy: false,
        }
    }

    fn le(metric: String, value: Option<f64>, bar: f64) -> Self {
        Self {
            metric,
            value,
            ge: false,
            bar,
            busy: false,
        }
    }

    pub fn met(&self) -> Option<bool> {
        self.value.map(|v| {
            if self.ge {
                v >= self.bar
            } else {
                v <= self.bar
            }
        })
    }

    pub fn op(&self) -> &'static str {
        if self.ge { ">=" } else { "<=" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn met_and_timed_in() {
        let t = Target::le("x".into(), Some(1.0), 2.0);
        assert_eq!(t.met(), Some(true));
        assert_eq!(t.op(), "<=");
        assert_eq!(Target::ge("y".into(), None, 1.0).met(), None);
        assert_eq!(Target::ge("y".into(), Some(0.5), 1.0).met(), Some(false));
        assert_eq!(timed_in("64MiB.restore_vs_memcpy"), "throughput 64MiB");
        assert_eq!(timed_in("startup_ms"), "startup");
        assert_eq!(timed_in("static_binary_mib"), "");
        assert_eq!(
            timed_in("dirty.1GiB_4KiB.vs_forkserver"),
            "dirty pages 1GiB"
        );
    }

    #[test]
    fn dirty_goals_for_the_cells_measured() {
        use super::super::cycle::CycleRun;
        use super::super::dirty::Cell;
        let run = |cycles| CycleRun {
            cycles,
            ns: 1_000_000_000,
            ..Default::default()
        };
        let d = DirtyResult {
            cells: vec![Cell {
                written: "64MiB",
                dirtied: "4KiB",
                bpfckpt: run(600),
                forkserver: run(50),
                handshake: run(1000),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = dirty_targets(&d);
        // The 1 GiB goal has no cell here, so it is not judged.
        let got: Vec<(&str, Option<f64>, Option<bool>)> = t
            .iter()
            .map(|t| (t.metric.as_str(), t.value, t.met()))
            .collect();
        assert_eq!(
            got,
            [
                ("dirty.64MiB_4KiB.vs_forkserver", Some(12.0), Some(true)),
                ("dirty.64MiB_4KiB.vs_handshake", Some(0.6), Some(true)),
            ]
        );
        assert!(dirty_targets(&DirtyResult::default()).is_empty());
    }
}
