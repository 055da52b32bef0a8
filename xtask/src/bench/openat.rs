//! Overhead on unrelated processes: `unrelated_openat_overhead`,
//! `bench-openat` (200k x open+close of /dev/null) alone versus while
//! bpfckpt serves an idle target (`bench-idle`): `traced / alone - 1` of the
//! best (lowest) ns/op of 3 alternating rounds (each traced round starts its
//! own bpfckpt), and the same of the rounds' medians (`*_median`).
//! Controls, measured the same way: `getppid` (a system call nothing is
//! attached to) and `fault` (a page fault on a fresh anonymous page).

use super::events::bench_line;
use super::proc::{Proc, TriggerDir, bpfckpt_run, deadline, other_bpfckpt, pid_list};
use super::stats::Fig;
use super::{Bins, Plan};
use crate::util::Result;
use std::process::Command;

/// What `bench-openat` repeats: the measured operation and two controls.
/// Each with the number of times it runs per `ops`.
pub const CALLS: [(&str, u64); 3] = [("openat", 1), ("getppid", 5), ("fault", 1)];
/// Indices into [`CALLS`].
pub const OPENAT: usize = 0;
pub const GETPPID: usize = 1;
pub const FAULT: usize = 2;

#[cfg_attr(test, derive(Default))]
pub struct OpenatResult {
    pub ops: u64,
    pub rounds: u32,
    /// ns/op per entry of [`CALLS`], alone and while bpfckpt serves: the
    /// best (lowest) and the median of the rounds.
    pub alone: [Fig; 3],
    pub traced: [Fig; 3],
}

impl OpenatResult {
    /// `traced / alone - 1`, of the best and of the medians.
    pub fn overhead_of(&self, i: usize) -> Fig {
        self.traced[i].ratio(self.alone[i]).map(|r| r - 1.0)
    }

    pub fn overhead(&self) -> Fig {
        self.overhead_of(OPENAT)
    }
}

/// One `bench-openat` pass of each kind; ns per operation.
fn openat_pass(bins: &Bins, ops: u64) -> Result<[f64; 3]> {
    let mut r = [0.0; 3];
    for (i, (name, mult)) in CALLS.iter().enumerate() {
        let n = ops * mult;
        let mut cmd = Command::new(bins.bench("bench-openat"));
        cmd.args(["--ops", &n.to_string(), "--reps", "1", "--call", name]);
        let out = Proc::start("bench-openat", &mut cmd, false)?.finish(deadline(60))?;
        let l = bench_line(&out, "openat")?;
        r[i] = l.need_u("ns")? as f64 / n as f64;
    }
    Ok(r)
}

/// Rounds alternate: alone, then while bpfckpt serves an idle target (a
/// new bpfckpt each round); best and median of the rounds for each.
pub fn openat_bench(bins: &Bins, plan: &Plan, warnings: &mut Vec<String>) -> Result<OpenatResult> {
    let mut alone: Vec<[f64; 3]> = Vec::new();
    let mut traced: Vec<[f64; 3]> = Vec::new();
    let mut foreign = Vec::new();
    for _ in 0..plan.openat_rounds {
        foreign.extend(other_bpfckpt());
        alone.push(openat_pass(bins, plan.openat_ops)?);
        foreign.extend(other_bpfckpt());

        let dir = TriggerDir::new("idle")?;
        let mut cmd = bpfckpt_run(&bins.bpfckpt, &dir, bins.bench("bench-idle"));
        let mut p = Proc::start("bpfckpt run -- bench-idle", &mut cmd, true)?;
        // The target prints once it runs, i.e. once bpfckpt serves it.
        p.wait_line(deadline(30), |l| l.contains("\"bench\":\"idle\""))?;
        let t = openat_pass(bins, plan.openat_ops);
        p.close_stdin();
        p.finish(deadline(30))?;
        traced.push(t?);
    }
    foreign.sort_unstable();
    foreign.dedup();
    if !foreign.is_empty() {
        warnings.push(format!(
            "other bpfckpt processes ({}) ran during the `alone` openat rounds: their probes \
             slow every openat, so unrelated_openat_overhead is understated",
            pid_list(&foreign)
        ));
    }
    let figs = |rounds: &[[f64; 3]]| {
        std::array::from_fn(|i| Fig::lowest(&rounds.iter().map(|r| r[i]).collect::<Vec<_>>()))
    };
    Ok(OpenatResult {
        ops: plan.openat_ops,
        rounds: plan.openat_rounds,
        alone: figs(&alone),
        traced: figs(&traced),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_indices_name_their_calls() {
        assert_eq!(CALLS[OPENAT].0, "openat");
        assert_eq!(CALLS[GETPPID].0, "getppid");
        assert_eq!(CALLS[FAULT].0, "fault");
    }
}
