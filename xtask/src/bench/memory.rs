//! Throughput of checkpoint and restore, and the baselines they are compared
//! with. For each size S (64 MiB and 1 GiB; 16 MiB in the smoke):
//! - Baselines (`bench-base --bytes S`, best of R = 5, and the median of
//!   the same R as `*_median`): `memcpy_gbps`, S
//!   bytes between two touched buffers of one process (glibc memcpy);
//!   `process_vm_readv_gbps` / `process_vm_writev_gbps`, S bytes from / to a
//!   child holding S touched bytes, one iovec per side per call;
//!   `process_vm_writev_4k_gbps`, the same write with one 4 KiB iovec per
//!   page, 1024 per call, as the engine's user-space restore issues it.
//! - `bpfckpt run --json -- bench-mem --bytes S`: the target maps and touches
//!   S bytes, runs W = 2 warm-up cycles (page store sized, layout applied),
//!   then K measured cycles (10; 5 for 1 GiB); every cycle stamps each page,
//!   checkpoints, damages the stamps, restores and verifies them (a wrong
//!   restore fails the bench). Every page is written between consecutive
//!   checkpoints and between checkpoint and restore, so an engine that only
//!   saves or restores pages written since still moves all S bytes.
//!   - `checkpoint_e2e_gbps`, the headline: saved bytes ((pages_bpf +
//!     pages_user of the `checkpoint` event) * 4096) / the checkpoint as the
//!     target sees it: from just before its `openat` of
//!     `ready_to_checkpoint` until it sees `checkpoint_complete` (it polls
//!     without sleeping). It covers the BPF copy in that `openat`, a hold
//!     and what user space then does (pages the probe could not copy, zero
//!     ranges), and the marker. Every measured cycle counts.
//!     `checkpoint_e2e_vs_memcpy` is the target it is judged by.
//!   - `checkpoint_gbps`, a detail: the BPF copy alone, from a second run
//!     of the same cycles with `--dirty-tracking off` (with re-arming
//!     tracking every checkpoint is held, and a dirty set larger than the
//!     store's free slots, as here where every page is rewritten, is read
//!     from user space: no BPF copy to time). Saved bytes / `kernel_ns` of
//!     the `checkpoint` event (first to last page), over that run's
//!     measured checkpoints with `pages_user == 0` (the probe copied the
//!     whole image; `checkpoints_pure_bpf` counts them). Such a checkpoint
//!     may still be `held` (the probe holds the target when some page of
//!     the region table was not present; user space then records those
//!     pages as zero ranges): that work is not in `kernel_ns`.
//!     `checkpoints_held` counts the held ones of the main run.
//!   - `restore_gbps`, the headline for restores: restored bytes
//!     ((pages_bpf + pages_user of the `restore` event) * 4096) / the
//!     restore as the target sees it: from just before its `openat` of
//!     `ready_to_restore` until it sees `restore_complete` (the engine
//!     creates it before it releases a held target, so no polling interval
//!     is included). It covers the probe, the hold, the engine's wake-up,
//!     /proc/PID/maps, the writes, the zero ranges and the marker. (The
//!     engine's `user_ns` exists only as a total in its summary, and its
//!     wall-clock time includes periods in which the engine is descheduled
//!     after it has released the target.)
//!   - Best (highest) of the measured cycles, and the median (`*_median`).
//!   - `checkpoint_e2e_vs_memcpy`, `restore_vs_memcpy`,
//!     `restore_vs_process_vm_writev`, and `checkpoint_vs_memcpy` for the
//!     BPF copy: ratios of the best values to the baseline's best (itself a
//!     best of R); `*_median`: of the medians.
//!   - `restore_kernel_ms_median`: the restore probe's own time (`kernel_ns`
//!     of the `restore` event; on the user-space path it lists the pages to
//!     zero and holds the target).

use super::events::{Events, Flat, bench_lines};
use super::kmem::{self, MapMem};
use super::proc::{Proc, TriggerDir, bpfckpt_run_with, deadline, tail};
use super::stats::{Fig, gbps};
use super::{Bins, MIB, PAGE, Size};
use crate::util::Result;
use std::process::Command;

/// The baselines in GB/s, best and median of their repetitions.
#[cfg_attr(test, derive(Default))]
pub struct Baselines {
    pub memcpy: Fig,
    pub vm_read: Fig,
    pub vm_write: Fig,
    pub vm_write_4k: Fig,
}

#[cfg_attr(test, derive(Default))]
pub struct SizeResult {
    pub label: &'static str,
    pub bytes: u64,
    pub warmup: u32,
    pub cycles: u32,
    pub restore_path: String,
    pub base: Baselines,
    /// Per measured checkpoint of the untracked run with pages_user == 0:
    /// bytes / kernel_ns.
    pub ckpt_gbps: Vec<f64>,
    /// Per measured checkpoint: bytes / the target-observed latency.
    pub ckpt_e2e_gbps: Vec<f64>,
    pub restore_gbps: Vec<f64>,
    pub ckpt_kernel_ms: Vec<f64>,
    pub ckpt_latency_ms: Vec<f64>,
    pub restore_latency_ms: Vec<f64>,
    /// The restore probe's own time (`kernel_ns` of the `restore` event).
    pub restore_kernel_ms: Vec<f64>,
    pub last_saved_pages: u64,
    pub pages_absent: u64,
    pub ckpt_pure: u64,
    pub ckpt_held: u64,
    pub restore_held: u64,
    /// The engine's own figure: the largest store's cost by its formula.
    pub peak_store_bytes: u64,
    /// bpfckpt's BPF maps once the last cycle is over (see [`kmem`]).
    pub maps: Option<Vec<MapMem>>,
}

impl SizeResult {
    /// `checkpoint_gbps`: the BPF copy alone (`kernel_ns`), a detail.
    pub fn checkpoint_bpf(&self) -> Fig {
        Fig::highest(&self.ckpt_gbps)
    }

    /// `checkpoint_e2e_gbps`: as the target sees it, the headline.
    pub fn checkpoint_e2e(&self) -> Fig {
        Fig::highest(&self.ckpt_e2e_gbps)
    }

    /// `restore_gbps`: as the target sees it.
    pub fn restore(&self) -> Fig {
        Fig::highest(&self.restore_gbps)
    }

    /// The headline checkpoint ratio.
    pub fn checkpoint_e2e_vs_memcpy(&self) -> Fig {
        self.checkpoint_e2e().ratio(self.base.memcpy)
    }

    /// The BPF copy's ratio, a detail.
    pub fn checkpoint_vs_memcpy(&self) -> Fig {
        self.checkpoint_bpf().ratio(self.base.memcpy)
    }

    pub fn restore_vs_memcpy(&self) -> Fig {
        self.restore().ratio(self.base.memcpy)
    }

    pub fn restore_vs_vm_write(&self) -> Fig {
        self.restore().ratio(self.base.vm_write)
    }

    /// Kernel memory of all of bpfckpt's maps (fdinfo `memlock`).
    pub fn kernel_map_bytes(&self) -> Option<u64> {
        self.maps.as_deref().map(kmem::total)
    }

    pub fn saved_bytes(&self) -> u64 {
        self.last_saved_pages * PAGE
    }

    /// `kernel_map_bytes` per byte saved by the last checkpoint.
    pub fn kernel_bytes_per_saved_byte(&self) -> Option<f64> {
        let saved = self.saved_bytes();
        self.kernel_map_bytes()
            .filter(|_| saved > 0)
            .map(|b| b as f64 / saved as f64)
    }

    /// The same ratio from the engine's formula for its page store alone.
    pub fn store_formula_per_saved_byte(&self) -> Option<f64> {
        let saved = self.saved_bytes();
        (saved > 0).then(|| self.peak_store_bytes as f64 / saved as f64)
    }

    /// Adds measured cycle `i`: the target's timings `c` and the engine's
    /// checkpoint and restore events.
    fn add_cycle(&mut self, i: usize, c: &Flat, ck: &Flat, rs: &Flat) -> Result<()> {
        let saved = ck.need_u("pages_bpf")? + ck.need_u("pages_user")?;
        let t_ck = c.need_u("checkpoint_ns")?;
        let t_rs = c.need_u("restore_ns")?;
        let restored = rs.need_u("pages_bpf")? + rs.need_u("pages_user")?;
        self.ckpt_held += u64::from(ck.b("held") == Some(true));
        self.restore_held += u64::from(rs.b("held") == Some(true));
        self.ckpt_e2e_gbps.push(gbps(saved * PAGE, t_ck));
        self.restore_gbps.push(gbps(restored * PAGE, t_rs));
        self.ckpt_latency_ms.push(t_ck as f64 / 1e6);
        self.restore_latency_ms.push(t_rs as f64 / 1e6);
        self.restore_kernel_ms
            .push(rs.need_u("kernel_ns")? as f64 / 1e6);
        self.last_saved_pages = saved;
        self.pages_absent = ck.u("pages_absent").unwrap_or(0);
        // Each cycle touches the whole buffer: both requests must cover it
        // (with dirty tracking a restore writes only what changed, which
        // is the buffer, not every page saved).
        if saved * PAGE < self.bytes || restored * PAGE < self.bytes {
            return Err(format!(
                "cycle {i}: {saved} pages saved and {restored} restored, fewer than the {} touched",
                self.bytes / PAGE
            ));
        }
        Ok(())
    }

    /// Adds a measured checkpoint of the untracked run: the BPF copy alone,
    /// if the probe copied the whole image.
    fn add_bpf_walk(&mut self, ck: &Flat) -> Result<()> {
        let saved = ck.need_u("pages_bpf")? + ck.need_u("pages_user")?;
        let kernel_ns = ck.need_u("kernel_ns")?;
        if ck.need_u("pages_user")? == 0 && saved > 0 {
            self.ckpt_pure += 1;
            self.ckpt_gbps.push(gbps(saved * PAGE, kernel_ns));
            self.ckpt_kernel_ms.push(kernel_ns as f64 / 1e6);
        }
        Ok(())
    }
}

/// `bench-base`: memcpy and process_vm_readv/writev of `size` bytes.
fn baselines(bins: &Bins, size: &Size, reps: u32) -> Result<Baselines> {
    let mut cmd = Command::new(bins.bench("bench-base"));
    cmd.args([
        "--bytes",
        &size.bytes.to_string(),
        "--reps",
        &reps.to_string(),
    ]);
    let out = Proc::start("bench-base", &mut cmd, false)?.finish(deadline(120))?;
    let reps_seen = bench_lines(&out, "base_rep");
    if reps_seen.len() != reps as usize {
        return Err(format!(
            "bench-base reported {} repetitions, expected {reps}\n{}",
            reps_seen.len(),
            tail(&out)
        ));
    }
    let fig = |k: &str| -> Result<Fig> {
        let v = reps_seen
            .iter()
            .map(|r| r.need_u(k).map(|ns| gbps(size.bytes, ns)))
            .collect::<Result<Vec<f64>>>()?;
        Ok(Fig::highest(&v))
    };
    Ok(Baselines {
        memcpy: fig("memcpy_ns")?,
        vm_read: fig("vm_read_ns")?,
        vm_write: fig("vm_write_ns")?,
        vm_write_4k: fig("vm_write_4k_ns")?,
    })
}

/// `bench-mem` under `bpfckpt run` (with `options` before the program):
/// the engine's events, the target's measured cycles (in order, checked for
/// count), and, if `maps`, bpfckpt's BPF maps read while the target waits
/// after its last cycle (`--hold 1`).
fn served_cycles(
    bins: &Bins,
    size: &Size,
    options: &[&str],
    maps: bool,
    warnings: &mut Vec<String>,
) -> Result<(Events, Vec<Flat>, Option<Vec<MapMem>>)> {
    let dir = TriggerDir::new(&format!("mem-{}", size.label))?;
    let mut cmd = bpfckpt_run_with(&bins.bpfckpt, &dir, options, bins.bench("bench-mem"));
    cmd.arg("--dir")
        .arg(&dir.0)
        .args(["--bytes", &size.bytes.to_string()])
        .args(["--warmup", &size.warmup.to_string()])
        .args(["--cycles", &size.cycles.to_string()])
        .args(["--hold", "1"]);
    let until = deadline(60 + 40 * size.bytes / (1024 * MIB));
    // The target inherits bpfckpt's stdin and waits for its end.
    let mut p = Proc::start("bpfckpt run -- bench-mem", &mut cmd, true)?;
    p.wait_line(until, |l| l.contains("\"bench\":\"mem_hold\""))?;
    // Named while bpfckpt still holds them: the names are looked up by id.
    let maps = match maps.then(|| kmem::maps_of(p.pid())) {
        None => None,
        Some(Ok(mut m)) if !m.is_empty() => {
            kmem::name_maps(bins, &mut m, warnings);
            Some(m)
        }
        Some(Ok(_)) => {
            warnings.push(format!(
                "{}: bpfckpt held no BPF map descriptor after the last cycle: kernel_map_bytes is null",
                size.label
            ));
            None
        }
        Some(Err(e)) => {
            warnings.push(format!(
                "{}: kernel memory of bpfckpt's maps: {e}",
                size.label
            ));
            None
        }
    };
    let out = p.finish(until)?;
    let ev = Events::parse(&out)?;
    let mut cycles: Vec<Flat> = bench_lines(&out, "mem");
    cycles.sort_by_key(|c| c.u("cycle").unwrap_or(u64::MAX));
    let w = size.warmup as usize;
    let k = size.cycles as usize;
    if cycles.len() != k {
        return Err(format!(
            "bench-mem reported {} measured cycles, expected {k}\n{}",
            cycles.len(),
            tail(&out)
        ));
    }
    if ev.checkpoints.len() != w + k || ev.restores.len() != w + k {
        return Err(format!(
            "bpfckpt reported {} checkpoints and {} restores, expected {} of each",
            ev.checkpoints.len(),
            ev.restores.len(),
            w + k
        ));
    }
    Ok((ev, cycles, maps))
}

/// The baselines, then the measured cycles, for one size.
pub fn mem_bench(
    bins: &Bins,
    size: &Size,
    reps: u32,
    warnings: &mut Vec<String>,
) -> Result<SizeResult> {
    // Baselines first, in the same run.
    let base = baselines(bins, size, reps)?;
    let (ev, cycles, maps) = served_cycles(bins, size, &[], true, warnings)?;
    let mut r = SizeResult {
        label: size.label,
        bytes: size.bytes,
        warmup: size.warmup,
        cycles: size.cycles,
        restore_path: ev.restore_path.clone(),
        base,
        ckpt_gbps: Vec::new(),
        ckpt_e2e_gbps: Vec::new(),
        restore_gbps: Vec::new(),
        ckpt_kernel_ms: Vec::new(),
        ckpt_latency_ms: Vec::new(),
        restore_latency_ms: Vec::new(),
        restore_kernel_ms: Vec::new(),
        last_saved_pages: 0,
        pages_absent: 0,
        ckpt_pure: 0,
        ckpt_held: 0,
        restore_held: 0,
        peak_store_bytes: ev.summary.need_u("peak_store_bytes")?,
        maps,
    };
    let w = size.warmup as usize;
    for (i, c) in cycles.iter().enumerate() {
        r.add_cycle(i, c, &ev.checkpoints[w + i], &ev.restores[w + i])?;
    }
    // The BPF copy alone: the same cycles untracked.
    let (off, _, _) = served_cycles(bins, size, &["--dirty-tracking", "off"], false, warnings)?;
    for ck in &off.checkpoints[w..] {
        r.add_bpf_walk(ck)?;
    }
    if r.ckpt_pure == 0 {
        warnings.push(format!(
            "{}: no measured checkpoint of the untracked run was copied entirely by BPF (pages_user == 0): checkpoint_gbps is null",
            size.label
        ));
    }
    Ok(r)
}
