//! Dirty pages: what a cycle costs when the target wrote a large area once
//! and dirties a few pages of it per cycle, the way a fuzzer resets a
//! process. `bench-dirty` writes W MiB once (64 MiB and 1 GiB; smoke:
//! 16 MiB), then dirties D KiB per cycle (4 KiB and 1 MiB; smoke: 4 KiB and
//! 256 KiB): the first word of D/4 pages spread over the area, other pages
//! every cycle. Each cell (W, D) runs four ways, each for 2.5 s (smoke:
//! 0.2 s) after 2 warm-up cycles (smoke: 1), at least 3 measured cycles:
//! - `bpfckpt`: `bpfckpt run` serving the target in a private trigger
//!   directory; each cycle checkpoints, dirties, restores, then checks that
//!   the dirtied pages hold the checkpoint's bytes again (a wrong restore
//!   fails the bench);
//! - `forkserver`: the same target without bpfckpt: a `fork` per cycle, the
//!   child dirties the same pages and exits, the parent waits and makes the
//!   same check of its own pages;
//! - `handshake`: the protocol answered by the handshake-only server of
//!   [`super::cycle`], which copies nothing (`--verify 0`): the ceiling;
//! - `pvw` (a floor, not a way of resetting): the same target puts the
//!   dirtied pages back itself with one `process_vm_writev` from a copy of
//!   the area (cold, as a page store is), one 4 KiB iovec per page as the
//!   engine writes a dirty set, then makes the same check.
//!
//! Each cell repeats the four, in turn, 3 times (smoke: once): the
//! baselines move with the machine (the handshake's file churn on ext4
//! most). Each rate is one run's cycles over its time; the cell keeps each
//! way's best run (`rate`, `forkserver_rate`, `handshake_rate`, and
//! `vs_forkserver` and `vs_handshake`, best over best) and the medians of
//! the rates and of the ratios of medians (`*_median`). For bpfckpt also: the
//! target-observed checkpoint and restore latencies (averages over the
//! measured cycles), and the medians over the measured checkpoints and
//! restores of the pages its events say were saved and restored.
//!
//! `cost_per_dirty_page_ns`, per written size: bpfckpt's average cycle time
//! with the most pages dirtied minus that with the fewest, over their
//! difference in pages (1 MiB vs 4 KiB: 255 pages);
//! `same_pages_process_vm_writev_ns`: the same for `pvw` (best runs), what
//! writing those pages back alone costs. Beside them,
//! `process_vm_writev_page_ns`: `bench-base --bytes 1MiB` repeated 51 times
//! (smoke: 5), its `process_vm_writev` into a child in 4 KiB iovecs (as the
//! engine's user-space restore issues it) per page, the lowest and the
//! median of the repetitions; the ratio between them uses the median. That
//! one writes 1 MiB of contiguous, cache-warm pages.

use super::cycle::{CycleRun, handshake_serve};
use super::events::{Events, Flat, bench_line, bench_lines};
use super::proc::{Proc, TriggerDir, bpfckpt_run, deadline, tail};
use super::stats::{Fig, median};
use super::steps::Step;
use super::{Bins, MIB, PAGE, step};
use crate::util::Result;
use std::process::Command;

/// The matrix a run measures.
pub struct DirtyPlan {
    /// Written once: (label, bytes).
    pub written: Vec<(&'static str, u64)>,
    /// Dirtied per cycle: (label, bytes).
    pub dirtied: Vec<(&'static str, u64)>,
    pub millis: u64,
    pub warmup: u32,
    pub min_cycles: u64,
    /// Repetitions of each cell (the three ways in turn).
    pub reps: u32,
    /// Repetitions of the `process_vm_writev` per-page baseline.
    pub pvw_reps: u32,
}

impl DirtyPlan {
    pub fn full() -> Self {
        Self {
            written: vec![("64MiB", 64 * MIB), ("1GiB", 1024 * MIB)],
            dirtied: vec![("4KiB", 4096), ("1MiB", MIB)],
            millis: 2500,
            warmup: 2,
            min_cycles: 3,
            reps: 3,
            pvw_reps: 51,
        }
    }

    pub fn smoke() -> Self {
        Self {
            written: vec![("16MiB", 16 * MIB)],
            dirtied: vec![("4KiB", 4096), ("256KiB", 256 * 1024)],
            millis: 200,
            warmup: 1,
            min_cycles: 3,
            reps: 1,
            pvw_reps: 5,
        }
    }
}

/// One (written, dirtied) cell measured three ways.
#[cfg_attr(test, derive(Default))]
pub struct Cell {
    pub written: &'static str,
    pub written_bytes: u64,
    pub dirtied: &'static str,
    pub dirtied_bytes: u64,
    pub bpfckpt: CycleRun,
    /// `checkpoint_ns` is the parent's `fork()`, `restore_ns` its `waitpid()`.
    pub forkserver: CycleRun,
    pub handshake: CycleRun,
    /// The same pages put back by a bare `process_vm_writev`
    /// (`checkpoint_ns` the dirtying, `restore_ns` the write).
    pub pvw: CycleRun,
    /// Medians over bpfckpt's measured checkpoints and restores.
    pub pages_saved: Option<f64>,
    pub pages_restored: Option<f64>,
    pub checkpoints_held: u64,
    pub restores_held: u64,
    /// Each repetition's rates: bpfckpt, fork server, handshake.
    pub rates: Vec<[Option<f64>; 3]>,
}

impl Cell {
    fn new(w: (&'static str, u64), d: (&'static str, u64)) -> Self {
        Self {
            written: w.0,
            written_bytes: w.1,
            dirtied: d.0,
            dirtied_bytes: d.1,
            bpfckpt: CycleRun::default(),
            forkserver: CycleRun::default(),
            handshake: CycleRun::default(),
            pvw: CycleRun::default(),
            pages_saved: None,
            pages_restored: None,
            checkpoints_held: 0,
            restores_held: 0,
            rates: Vec::new(),
        }
    }

    /// The median over the repetitions of way `i` (0 bpfckpt, 1 fork
    /// server, 2 handshake).
    pub fn median_rate(&self, i: usize) -> Option<f64> {
        let v: Option<Vec<f64>> = self.rates.iter().map(|r| r[i]).collect();
        v.filter(|v| !v.is_empty()).and_then(|v| median(&v))
    }

    pub fn vs_forkserver_median(&self) -> Option<f64> {
        Some(self.median_rate(0)? / self.median_rate(1)?)
    }

    pub fn vs_handshake_median(&self) -> Option<f64> {
        Some(self.median_rate(0)? / self.median_rate(2)?)
    }

    /// `64MiB_4KiB`: the cell's key in the JSON and its targets' metrics.
    pub fn label(&self) -> String {
        format!("{}_{}", self.written, self.dirtied)
    }

    pub fn pages(&self) -> u64 {
        self.dirtied_bytes / PAGE
    }

    pub fn vs_forkserver(&self) -> Option<f64> {
        Some(self.bpfckpt.rate()? / self.forkserver.rate()?)
    }

    pub fn vs_handshake(&self) -> Option<f64> {
        Some(self.bpfckpt.rate()? / self.handshake.rate()?)
    }
}

#[cfg_attr(test, derive(Default))]
pub struct DirtyResult {
    pub millis: u64,
    pub warmup: u32,
    pub cells: Vec<Cell>,
    /// `process_vm_writev` per 4 KiB page in ns: lowest and median.
    pub pvw_page_ns: Fig,
    pub pvw_reps: u32,
}

impl DirtyResult {
    /// The written sizes, in the run's order.
    pub fn written(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        for c in &self.cells {
            if !v.contains(&c.written) {
                v.push(c.written);
            }
        }
        v
    }

    pub fn dirtied(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        for c in &self.cells {
            if !v.contains(&c.dirtied) {
                v.push(c.dirtied);
            }
        }
        v
    }

    pub fn cell(&self, written: &str, dirtied: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.written == written && c.dirtied == dirtied)
    }

    /// bpfckpt's extra cycle time per extra dirtied page at `written`: from
    /// the cell with the fewest pages dirtied to the one with the most.
    pub fn cost_per_dirty_page_ns(&self, written: &str) -> Option<f64> {
        self.per_extra_page(written, |c| &c.bpfckpt)
    }

    /// The same for the bare `process_vm_writev` of the same pages.
    pub fn same_pages_pvw_ns(&self, written: &str) -> Option<f64> {
        self.per_extra_page(written, |c| &c.pvw)
    }

    /// `cost_per_dirty_page_ns` over `same_pages_pvw_ns`.
    pub fn cost_vs_same_pages_pvw(&self, written: &str) -> Option<f64> {
        Some(self.cost_per_dirty_page_ns(written)? / self.same_pages_pvw_ns(written)?)
    }

    fn per_extra_page(&self, written: &str, way: fn(&Cell) -> &CycleRun) -> Option<f64> {
        let row = || self.cells.iter().filter(|c| c.written == written);
        let lo = row().min_by_key(|c| c.dirtied_bytes)?;
        let hi = row().max_by_key(|c| c.dirtied_bytes)?;
        let pages = hi.pages().checked_sub(lo.pages()).filter(|&p| p > 0)?;
        Some((way(hi).ns_per_cycle()? - way(lo).ns_per_cycle()?) / pages as f64)
    }

    /// `cost_per_dirty_page_ns` over the median `process_vm_writev` page.
    pub fn cost_vs_process_vm_writev(&self, written: &str) -> Option<f64> {
        Some(self.cost_per_dirty_page_ns(written)? / self.pvw_page_ns.median?)
    }
}

/// The `process_vm_writev` baseline, then one step per written size.
pub fn dirty_bench(bins: &Bins, plan: &DirtyPlan, steps: &mut Vec<Step>) -> Result<DirtyResult> {
    let pvw_page_ns = step(
        steps,
        "bench: process_vm_writev per page",
        "process_vm_writev per page",
        || pvw_page(bins, plan.pvw_reps).map_err(|e| format!("bench (process_vm_writev): {e}")),
    )?;
    let mut cells = Vec::new();
    for &(written, written_bytes) in &plan.written {
        let name = format!("dirty pages {written}");
        let banner = format!("bench: {written} written once, pages dirtied per cycle");
        step(steps, &banner, &name, || {
            for &dirtied in &plan.dirtied {
                let mut c = Cell::new((written, written_bytes), dirtied);
                run_cell(bins, plan, &mut c)
                    .map_err(|e| format!("bench (dirty pages {}): {e}", c.label()))?;
                cells.push(c);
            }
            Ok(())
        })?;
    }
    Ok(DirtyResult {
        millis: plan.millis,
        warmup: plan.warmup,
        cells,
        pvw_page_ns,
        pvw_reps: plan.pvw_reps,
    })
}

/// `bench-base --bytes 1MiB`: its 4 KiB-iovec `process_vm_writev` per page.
fn pvw_page(bins: &Bins, reps: u32) -> Result<Fig> {
    let mut cmd = Command::new(bins.bench("bench-base"));
    cmd.args(["--bytes", &MIB.to_string(), "--reps", &reps.to_string()]);
    let out = Proc::start("bench-base", &mut cmd, false)?.finish(deadline(60))?;
    let v = bench_lines(&out, "base_rep")
        .iter()
        .map(|r| Ok(r.need_u("vm_write_4k_ns")? as f64 / (MIB / PAGE) as f64))
        .collect::<Result<Vec<f64>>>()?;
    if v.len() != reps as usize {
        return Err(format!(
            "bench-base reported {} repetitions, expected {reps}\n{}",
            v.len(),
            tail(&out)
        ));
    }
    Ok(Fig::lowest(&v))
}

fn dirty_args(cmd: &mut Command, plan: &DirtyPlan, c: &Cell, mode: &str) {
    cmd.args(["--written-mib", &(c.written_bytes / MIB).to_string()])
        .args(["--dirty-kib", &(c.dirtied_bytes / 1024).to_string()])
        .args(["--mode", mode])
        .args(["--warmup", &plan.warmup.to_string()])
        .args(["--millis", &plan.millis.to_string()])
        .args(["--min-cycles", &plan.min_cycles.to_string()]);
}

/// The target's result line, checked against what was asked of it (`mode`:
/// 0 protocol, 1 fork server, 2 `process_vm_writev`).
fn result(out: &[String], c: &Cell, want: u64) -> Result<CycleRun> {
    let l: Flat = bench_line(out, "dirty")?;
    let (mode, written, pages) = (
        l.need_u("mode")?,
        l.need_u("written_bytes")?,
        l.need_u("pages")?,
    );
    if mode != want || written != c.written_bytes || pages != c.pages() {
        return Err(format!(
            "bench-dirty ran mode {mode}, {written} bytes written, {pages} pages dirtied: \
             not what was asked\n{}",
            tail(out)
        ));
    }
    CycleRun::from(&l)
}

/// The cell's repetitions: each way's best run kept, every rate recorded.
fn run_cell(bins: &Bins, plan: &DirtyPlan, c: &mut Cell) -> Result<()> {
    let better = |a: &CycleRun, b: &CycleRun| a.rate().unwrap_or(0.0) > b.rate().unwrap_or(0.0);
    for _ in 0..plan.reps.max(1) {
        let mut r = Cell::new((c.written, c.written_bytes), (c.dirtied, c.dirtied_bytes));
        run_once(bins, plan, &mut r)?;
        c.rates
            .push([r.bpfckpt.rate(), r.forkserver.rate(), r.handshake.rate()]);
        if better(&r.bpfckpt, &c.bpfckpt) {
            c.pages_saved = r.pages_saved;
            c.pages_restored = r.pages_restored;
            c.checkpoints_held = r.checkpoints_held;
            c.restores_held = r.restores_held;
            c.bpfckpt = r.bpfckpt;
        }
        if better(&r.forkserver, &c.forkserver) {
            c.forkserver = r.forkserver;
        }
        if better(&r.handshake, &c.handshake) {
            c.handshake = r.handshake;
        }
        if better(&r.pvw, &c.pvw) {
            c.pvw = r.pvw;
        }
    }
    Ok(())
}

/// The handshake ceiling, the fork server, then bpfckpt, for one cell.
fn run_once(bins: &Bins, plan: &DirtyPlan, c: &mut Cell) -> Result<()> {
    let gib = c.written_bytes.div_ceil(1024 * MIB);
    let limit = 60 + plan.millis / 1000 * 4 + 20 * gib;
    let target = bins.bench("bench-dirty");

    let dir = TriggerDir::new(&format!("dirty-handshake-{}", c.label()))?;
    let mut cmd = Command::new(&target);
    cmd.arg("--dir").arg(&dir.0).args(["--verify", "0"]);
    dirty_args(&mut cmd, plan, c, "protocol");
    let mut p = Proc::start("bench-dirty (handshake server)", &mut cmd, false)?;
    handshake_serve(&mut p, &dir.0, deadline(limit))?;
    c.handshake = result(&p.finish(deadline(10))?, c, 0)?;
    drop(dir);

    let mut cmd = Command::new(&target);
    dirty_args(&mut cmd, plan, c, "forkserver");
    let out = Proc::start("bench-dirty (fork server)", &mut cmd, false)?.finish(deadline(limit))?;
    c.forkserver = result(&out, c, 1)?;

    let mut cmd = Command::new(&target);
    dirty_args(&mut cmd, plan, c, "pvw");
    let out =
        Proc::start("bench-dirty (process_vm_writev)", &mut cmd, false)?.finish(deadline(limit))?;
    c.pvw = result(&out, c, 2)?;

    // Today's engine copies all W bytes both ways every cycle: allow for it.
    let dir = TriggerDir::new(&format!("dirty-{}", c.label()))?;
    let mut cmd = bpfckpt_run(&bins.bpfckpt, &dir, &target);
    cmd.arg("--dir").arg(&dir.0);
    dirty_args(&mut cmd, plan, c, "protocol");
    let out = Proc::start("bpfckpt run -- bench-dirty", &mut cmd, false)?
        .finish(deadline(limit + 60 * gib))?;
    c.bpfckpt = result(&out, c, 0)?;
    let ev = Events::parse(&out)?;
    let w = plan.warmup as usize;
    let n = w as u64 + c.bpfckpt.cycles;
    if ev.checkpoints.len() as u64 != n || ev.restores.len() as u64 != n {
        return Err(format!(
            "bpfckpt reported {} checkpoints and {} restores, expected {w} warm-up + {} measured of each",
            ev.checkpoints.len(),
            ev.restores.len(),
            c.bpfckpt.cycles
        ));
    }
    let pages = |e: &Flat| (e.u("pages_bpf").unwrap_or(0) + e.u("pages_user").unwrap_or(0)) as f64;
    let ck = &ev.checkpoints[w..];
    let rs = &ev.restores[w..];
    c.pages_saved = median(&ck.iter().map(pages).collect::<Vec<_>>());
    c.pages_restored = median(&rs.iter().map(pages).collect::<Vec<_>>());
    let held = |v: &[Flat]| v.iter().filter(|e| e.b("held") == Some(true)).count() as u64;
    c.checkpoints_held = held(ck);
    c.restores_held = held(rs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cycles: u64, ns: u64) -> CycleRun {
        CycleRun {
            cycles,
            ns,
            ..Default::default()
        }
    }

    fn cell(written: &'static str, dirtied: &'static str, bytes: u64, ckpt: CycleRun) -> Cell {
        Cell {
            written,
            dirtied,
            dirtied_bytes: bytes,
            bpfckpt: ckpt,
            forkserver: run(10, 1_000_000_000),
            handshake: run(1000, 1_000_000_000),
            ..Default::default()
        }
    }

    #[test]
    fn ratios_and_cost_per_dirty_page() {
        let with_pvw = |mut c: Cell, pvw: CycleRun| {
            c.pvw = pvw;
            c
        };
        let r = DirtyResult {
            cells: vec![
                // 100 cycles/s: 10 ms a cycle; 50/s: 20 ms. The bare write:
                // 1 ms and 3.55 ms.
                with_pvw(
                    cell("64MiB", "4KiB", 4096, run(100, 1_000_000_000)),
                    run(1000, 1_000_000_000),
                ),
                with_pvw(
                    cell("64MiB", "1MiB", MIB, run(50, 1_000_000_000)),
                    run(200, 710_000_000),
                ),
                cell("1GiB", "4KiB", 4096, run(0, 0)),
            ],
            pvw_page_ns: Fig::lowest(&[500.0, 1000.0, 2000.0]),
            ..Default::default()
        };
        assert_eq!(r.written(), ["64MiB", "1GiB"]);
        assert_eq!(r.dirtied(), ["4KiB", "1MiB"]);
        let c = r.cell("64MiB", "4KiB").unwrap();
        assert_eq!(c.label(), "64MiB_4KiB");
        assert_eq!(c.vs_forkserver(), Some(10.0));
        assert_eq!(c.vs_handshake(), Some(0.1));
        // (20 ms - 10 ms) / 255 pages.
        let cost = r.cost_per_dirty_page_ns("64MiB").unwrap();
        assert!((cost - 1e7 / 255.0).abs() < 1e-6);
        assert!((r.cost_vs_process_vm_writev("64MiB").unwrap() - cost / 1000.0).abs() < 1e-9);
        // (3.55 ms - 1 ms) / 255 pages: 10,000 ns; bpfckpt's is 3.92 x that.
        let same = r.same_pages_pvw_ns("64MiB").unwrap();
        assert!((same - 10_000.0).abs() < 1e-6, "{same}");
        assert!((r.cost_vs_same_pages_pvw("64MiB").unwrap() - cost / same).abs() < 1e-9);
        assert_eq!(r.same_pages_pvw_ns("1GiB"), None);
        // One cell, and no measured cycles: nothing to tell.
        assert_eq!(r.cost_per_dirty_page_ns("1GiB"), None);
        assert_eq!(r.cell("1GiB", "4KiB").unwrap().vs_forkserver(), None);
        assert!(r.cell("1GiB", "1MiB").is_none());
    }

    #[test]
    fn medians_over_the_repetitions() {
        let mut c = cell("64MiB", "4KiB", 4096, run(100, 1_000_000_000));
        assert_eq!(c.vs_handshake_median(), None);
        c.rates = vec![
            [Some(3000.0), Some(300.0), Some(9000.0)],
            [Some(2000.0), Some(100.0), Some(4000.0)],
            [Some(2500.0), Some(200.0), Some(5000.0)],
        ];
        assert_eq!(c.median_rate(0), Some(2500.0));
        assert_eq!(c.vs_forkserver_median(), Some(12.5));
        assert_eq!(c.vs_handshake_median(), Some(0.5));
        // A repetition without a rate: no median.
        c.rates.push([None, Some(1.0), Some(1.0)]);
        assert_eq!(c.median_rate(0), None);
    }
}
