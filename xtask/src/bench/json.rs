//! The JSON report: target/bench/latest.json and target/bench/<UTC
//! time>.json; the smoke writes target/bench/smoke.json only.
//!
//! ```text
//! { "schema": 1, "mode": "full"|"smoke", "profile": "release"|"debug",
//!   "timestamp_utc": "...Z", "runtime_s": .., "step_seconds": {step: s},
//!   "step_other_cpu": {step: fraction}, "bpfckpt_binary": path,
//!   "machine": {kernel, cpu, cores, git_commit, git_dirty, lockdown,
//!               restore_path, thp, trigger_base, loadavg_start, loadavg_end},
//!   "sizes": ["64MiB", "1GiB"],
//!   "64MiB": { bytes, warmup_cycles, measured_cycles,
//!              checkpoint_gbps, checkpoint_gbps_median,
//!              checkpoint_e2e_gbps, checkpoint_e2e_gbps_median,
//!              restore_gbps, restore_gbps_median,
//!              memcpy_gbps, memcpy_gbps_median,
//!              process_vm_readv_gbps, process_vm_readv_gbps_median,
//!              process_vm_writev_gbps, process_vm_writev_gbps_median,
//!              process_vm_writev_4k_gbps, process_vm_writev_4k_gbps_median,
//!              checkpoint_e2e_vs_memcpy, checkpoint_e2e_vs_memcpy_median,
//!              checkpoint_vs_memcpy, checkpoint_vs_memcpy_median,
//!              restore_vs_memcpy, restore_vs_memcpy_median,
//!              restore_vs_process_vm_writev, restore_vs_process_vm_writev_median,
//!              checkpoint_kernel_ms_median, checkpoint_latency_ms_median,
//!              restore_latency_ms_median, restore_kernel_ms_median,
//!              pages_saved, pages_absent,
//!              checkpoints_pure_bpf, checkpoints_held, restores_held,
//!              peak_store_bytes, kernel_map_bytes },
//!   "1GiB": { the same },
//!   "cycle_rate": .., "handshake_rate": .., "cycle_rate_vs_handshake": ..,
//!   "cycle": { millis,
//!              handshake: {cycles, seconds, rate, checkpoint_latency_us_avg,
//!                          restore_latency_us_avg},
//!              bpfckpt: {the same, checkpoint_kernel_us_avg, checkpoints_held,
//!                        pages_saved, pages_absent, engine_user_us_per_cycle} },
//!   "dirty": { millis, warmup_cycles, written: ["64MiB", "1GiB"],
//!              dirtied: ["4KiB", "1MiB"],
//!              process_vm_writev_page_ns, process_vm_writev_page_ns_median,
//!              process_vm_writev_reps,
//!              cost_per_dirty_page_ns: {written: ns},
//!              cost_per_dirty_page_vs_process_vm_writev: {written: ratio},
//!              same_pages_process_vm_writev_ns: {written: ns},
//!              cost_per_dirty_page_vs_same_pages: {written: ratio},
//!              cells: { "64MiB_4KiB": { written_bytes, dirtied_bytes,
//!                         dirtied_pages, rate, forkserver_rate,
//!                         handshake_rate, vs_forkserver, vs_handshake
//!                         (each way's best run), repetitions,
//!                         rate_median, forkserver_rate_median,
//!                         handshake_rate_median, vs_forkserver_median,
//!                         vs_handshake_median,
//!                         bpfckpt: {cycles, seconds, rate,
//!                                   checkpoint_latency_us_avg,
//!                                   restore_latency_us_avg,
//!                                   pages_saved_median, pages_restored_median,
//!                                   checkpoints_held, restores_held},
//!                         forkserver: {cycles, seconds, rate, fork_us_avg,
//!                                      wait_us_avg},
//!                         handshake: {cycles, seconds, rate,
//!                                     checkpoint_latency_us_avg,
//!                                     restore_latency_us_avg} },
//!                       "64MiB_1MiB": .., "1GiB_4KiB": .., "1GiB_1MiB": .. } },
//!   "unrelated_openat_overhead": .., "unrelated_openat_overhead_median": ..,
//!   "openat": {ops, rounds, alone_ns_per_op, traced_ns_per_op,
//!              getppid_alone_ns, getppid_traced_ns, getppid_ops,
//!              unrelated_getppid_overhead, fault_alone_ns, fault_traced_ns,
//!              fault_ops, unrelated_fault_overhead; each figure but the
//!              counts with its `_median` after it},
//!   "startup_ms": .., "startup_ms_median": ..,
//!   "startup_ms_static": .., "startup_ms_static_median": ..,
//!   "static_binary_mib": .., "static_binary_is_static": ..,
//!   "kernel_bytes_per_saved_byte": ..,
//!   "kernel_bytes": {size, peak_store_bytes, saved_bytes, source, map_bytes,
//!                    store_formula_per_saved_byte,
//!                    maps: [ {name, type, bytes, id, key_size, value_size,
//!                             max_entries, flags} ]},
//!   "targets": [ {metric, value, op: ">="|"<=", bar, met: bool|null,
//!                 busy_machine: bool} ],
//!   "warnings": [ .. ] }
//! ```
//! Per-size keys are the size labels at the top level ("sizes" lists them).
//! A figure that is the best of repetitions has the median of the same
//! repetitions in its `_median` sibling. A value that could not be measured
//! is `null`.

use super::Outcome;
use super::cycle::{CycleResult, CycleRun};
use super::dirty::{Cell, DirtyResult};
use super::kmem::MapMem;
use super::machine::Machine;
use super::memory::SizeResult;
use super::openat::{CALLS, FAULT, GETPPID, OPENAT, OpenatResult};
use super::stats::median;
use super::steps::Step;
use super::targets::Target;
use super::time::Utc;
use crate::util::Result;
use serde::{Serialize, Serializer};
use std::fs;
use std::path::{Path, PathBuf};

/// Writes the report into `dir`; returns the files written.
pub fn write(out: &Outcome, dir: &Path, stamp: Utc) -> Result<Vec<PathBuf>> {
    let mut json = serde_json::to_string_pretty(&Report::new(out, &stamp))
        .map_err(|e| format!("bench report: {e}"))?;
    json.push('\n');
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let names = if out.plan.smoke {
        vec!["smoke.json".to_string()]
    } else {
        vec!["latest.json".to_string(), format!("{}.json", stamp.file())]
    };
    let mut written = Vec::new();
    for n in names {
        let p = dir.join(n);
        fs::write(&p, &json).map_err(|e| format!("write {}: {e}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

/// A measured number, rounded to six decimals (readable, and exact enough),
/// a whole one without a fraction; `null` when it could not be measured.
#[derive(Clone, Copy)]
struct Num(Option<f64>);

impl Serialize for Num {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Some(v) if v.is_finite() => {
                let r = (v * 1e6).round() / 1e6;
                if r.fract() == 0.0 && r.abs() < 1e15 {
                    s.serialize_i64(r as i64)
                } else {
                    s.serialize_f64(r)
                }
            }
            _ => s.serialize_none(),
        }
    }
}

fn num(v: f64) -> Num {
    Num(Some(v))
}

/// An object whose keys come from the run (step names, size labels), in the
/// run's order.
struct Keyed<T>(Vec<(String, T)>);

impl<T: Serialize> Serialize for Keyed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    mode: &'static str,
    profile: &'static str,
    timestamp_utc: String,
    runtime_s: Num,
    step_seconds: Keyed<Num>,
    step_other_cpu: Keyed<Num>,
    bpfckpt_binary: String,
    machine: &'a Machine,
    sizes: Vec<&'static str>,
    /// Each size's object under its label.
    #[serde(flatten)]
    per_size: Keyed<SizeJson>,
    cycle_rate: Num,
    handshake_rate: Num,
    cycle_rate_vs_handshake: Num,
    cycle: CycleJson,
    dirty: DirtyJson,
    unrelated_openat_overhead: Num,
    unrelated_openat_overhead_median: Num,
    openat: OpenatJson,
    startup_ms: Num,
    startup_ms_median: Num,
    startup_ms_static: Num,
    startup_ms_static_median: Num,
    static_binary_mib: Num,
    static_binary_is_static: Option<bool>,
    kernel_bytes_per_saved_byte: Num,
    kernel_bytes: KernelBytes,
    targets: Vec<TargetJson<'a>>,
    warnings: &'a [String],
}

impl<'a> Report<'a> {
    fn new(out: &'a Outcome, stamp: &Utc) -> Self {
        let steps =
            |f: fn(&Step) -> Num| Keyed(out.steps.iter().map(|s| (s.name.clone(), f(s))).collect());
        let store = out.store();
        Self {
            schema: 1,
            mode: if out.plan.smoke { "smoke" } else { "full" },
            profile: out.plan.profile(),
            timestamp_utc: stamp.iso(),
            runtime_s: num(out.runtime),
            step_seconds: steps(|s| num(s.seconds)),
            step_other_cpu: steps(|s| Num(s.other_cpu)),
            bpfckpt_binary: out.engine.display().to_string(),
            machine: &out.machine,
            sizes: out.sizes.iter().map(|s| s.label).collect(),
            per_size: Keyed(
                out.sizes
                    .iter()
                    .map(|s| (s.label.to_string(), SizeJson::from(s)))
                    .collect(),
            ),
            cycle_rate: Num(out.cycle.bpfckpt.rate()),
            handshake_rate: Num(out.cycle.handshake.rate()),
            cycle_rate_vs_handshake: Num(out.cycle.ratio()),
            cycle: CycleJson::new(&out.cycle, out.plan.cycle_millis),
            dirty: DirtyJson::from(&out.dirty),
            unrelated_openat_overhead: Num(out.openat.overhead().best),
            unrelated_openat_overhead_median: Num(out.openat.overhead().median),
            openat: OpenatJson::from(&out.openat),
            startup_ms: Num(out.startup.best),
            startup_ms_median: Num(out.startup.median),
            startup_ms_static: Num(out.startup_static.best),
            startup_ms_static_median: Num(out.startup_static.median),
            static_binary_mib: Num(out.binary.mib),
            static_binary_is_static: out.binary.is_static,
            kernel_bytes_per_saved_byte: Num(out.kernel_bytes_per_saved_byte()),
            kernel_bytes: KernelBytes {
                size: out.plan.store_size,
                peak_store_bytes: store.map(|s| s.peak_store_bytes),
                saved_bytes: store.map(SizeResult::saved_bytes),
                source: "fdinfo memlock",
                map_bytes: store.and_then(SizeResult::kernel_map_bytes),
                store_formula_per_saved_byte: Num(
                    store.and_then(SizeResult::store_formula_per_saved_byte)
                ),
                maps: store
                    .and_then(|s| s.maps.as_deref())
                    .map(|m| m.iter().map(MapJson::from).collect()),
            },
            targets: out.targets.iter().map(TargetJson::from).collect(),
            warnings: &out.warnings,
        }
    }
}

#[derive(Serialize)]
struct SizeJson {
    bytes: u64,
    warmup_cycles: u32,
    measured_cycles: u32,
    checkpoint_gbps: Num,
    checkpoint_gbps_median: Num,
    checkpoint_e2e_gbps: Num,
    checkpoint_e2e_gbps_median: Num,
    restore_gbps: Num,
    restore_gbps_median: Num,
    memcpy_gbps: Num,
    memcpy_gbps_median: Num,
    process_vm_readv_gbps: Num,
    process_vm_readv_gbps_median: Num,
    process_vm_writev_gbps: Num,
    process_vm_writev_gbps_median: Num,
    process_vm_writev_4k_gbps: Num,
    process_vm_writev_4k_gbps_median: Num,
    checkpoint_e2e_vs_memcpy: Num,
    checkpoint_e2e_vs_memcpy_median: Num,
    checkpoint_vs_memcpy: Num,
    checkpoint_vs_memcpy_median: Num,
    restore_vs_memcpy: Num,
    restore_vs_memcpy_median: Num,
    restore_vs_process_vm_writev: Num,
    restore_vs_process_vm_writev_median: Num,
    checkpoint_kernel_ms_median: Num,
    checkpoint_latency_ms_median: Num,
    restore_latency_ms_median: Num,
    restore_kernel_ms_median: Num,
    pages_saved: u64,
    pages_absent: u64,
    checkpoints_pure_bpf: u64,
    checkpoints_held: u64,
    restores_held: u64,
    peak_store_bytes: u64,
    kernel_map_bytes: Option<u64>,
}

impl From<&SizeResult> for SizeJson {
    fn from(z: &SizeResult) -> Self {
        let b = &z.base;
        Self {
            bytes: z.bytes,
            warmup_cycles: z.warmup,
            measured_cycles: z.cycles,
            checkpoint_gbps: Num(z.checkpoint_bpf().best),
            checkpoint_gbps_median: Num(z.checkpoint_bpf().median),
            checkpoint_e2e_gbps: Num(z.checkpoint_e2e().best),
            checkpoint_e2e_gbps_median: Num(z.checkpoint_e2e().median),
            restore_gbps: Num(z.restore().best),
            restore_gbps_median: Num(z.restore().median),
            memcpy_gbps: Num(b.memcpy.best),
            memcpy_gbps_median: Num(b.memcpy.median),
            process_vm_readv_gbps: Num(b.vm_read.best),
            process_vm_readv_gbps_median: Num(b.vm_read.median),
            process_vm_writev_gbps: Num(b.vm_write.best),
            process_vm_writev_gbps_median: Num(b.vm_write.median),
            process_vm_writev_4k_gbps: Num(b.vm_write_4k.best),
            process_vm_writev_4k_gbps_median: Num(b.vm_write_4k.median),
            checkpoint_e2e_vs_memcpy: Num(z.checkpoint_e2e_vs_memcpy().best),
            checkpoint_e2e_vs_memcpy_median: Num(z.checkpoint_e2e_vs_memcpy().median),
            checkpoint_vs_memcpy: Num(z.checkpoint_vs_memcpy().best),
            checkpoint_vs_memcpy_median: Num(z.checkpoint_vs_memcpy().median),
            restore_vs_memcpy: Num(z.restore_vs_memcpy().best),
            restore_vs_memcpy_median: Num(z.restore_vs_memcpy().median),
            restore_vs_process_vm_writev: Num(z.restore_vs_vm_write().best),
            restore_vs_process_vm_writev_median: Num(z.restore_vs_vm_write().median),
            checkpoint_kernel_ms_median: Num(median(&z.ckpt_kernel_ms)),
            checkpoint_latency_ms_median: Num(median(&z.ckpt_latency_ms)),
            restore_latency_ms_median: Num(median(&z.restore_latency_ms)),
            restore_kernel_ms_median: Num(median(&z.restore_kernel_ms)),
            pages_saved: z.last_saved_pages,
            pages_absent: z.pages_absent,
            checkpoints_pure_bpf: z.ckpt_pure,
            checkpoints_held: z.ckpt_held,
            restores_held: z.restore_held,
            peak_store_bytes: z.peak_store_bytes,
            kernel_map_bytes: z.kernel_map_bytes(),
        }
    }
}

#[derive(Serialize)]
struct CycleJson {
    millis: u64,
    handshake: CycleRunJson,
    bpfckpt: EngineCycleJson,
}

/// What both servers of the cycle benchmark report.
#[derive(Serialize)]
struct CycleRunJson {
    cycles: u64,
    seconds: Num,
    rate: Num,
    checkpoint_latency_us_avg: Num,
    restore_latency_us_avg: Num,
}

/// What only bpfckpt reports besides.
#[derive(Serialize)]
struct EngineCycleJson {
    #[serde(flatten)]
    run: CycleRunJson,
    checkpoint_kernel_us_avg: Num,
    checkpoints_held: u64,
    pages_saved: u64,
    pages_absent: u64,
    engine_user_us_per_cycle: Num,
}

impl From<&CycleRun> for CycleRunJson {
    fn from(r: &CycleRun) -> Self {
        Self {
            cycles: r.cycles,
            seconds: num(r.ns as f64 / 1e9),
            rate: Num(r.rate()),
            checkpoint_latency_us_avg: Num(r.avg_us(r.ckpt_ns)),
            restore_latency_us_avg: Num(r.avg_us(r.restore_ns)),
        }
    }
}

impl CycleJson {
    fn new(c: &CycleResult, millis: u64) -> Self {
        Self {
            millis,
            handshake: CycleRunJson::from(&c.handshake),
            bpfckpt: EngineCycleJson {
                run: CycleRunJson::from(&c.bpfckpt),
                checkpoint_kernel_us_avg: Num(c.ckpt_kernel_us),
                checkpoints_held: c.ckpt_held,
                pages_saved: c.pages_saved,
                pages_absent: c.pages_absent,
                engine_user_us_per_cycle: Num(c.engine_user_us_per_cycle),
            },
        }
    }
}

/// The dirty-page matrix: per written size, then per cell.
#[derive(Serialize)]
struct DirtyJson {
    millis: u64,
    warmup_cycles: u32,
    written: Vec<&'static str>,
    dirtied: Vec<&'static str>,
    process_vm_writev_page_ns: Num,
    process_vm_writev_page_ns_median: Num,
    process_vm_writev_reps: u32,
    cost_per_dirty_page_ns: Keyed<Num>,
    cost_per_dirty_page_vs_process_vm_writev: Keyed<Num>,
    same_pages_process_vm_writev_ns: Keyed<Num>,
    cost_per_dirty_page_vs_same_pages: Keyed<Num>,
    cells: Keyed<DirtyCellJson>,
}

#[derive(Serialize)]
struct DirtyCellJson {
    written_bytes: u64,
    dirtied_bytes: u64,
    dirtied_pages: u64,
    rate: Num,
    forkserver_rate: Num,
    handshake_rate: Num,
    vs_forkserver: Num,
    vs_handshake: Num,
    repetitions: usize,
    rate_median: Num,
    forkserver_rate_median: Num,
    handshake_rate_median: Num,
    vs_forkserver_median: Num,
    vs_handshake_median: Num,
    bpfckpt: DirtyEngineJson,
    forkserver: ForkServerJson,
    handshake: CycleRunJson,
    process_vm_writev: PvwJson,
}

/// The bare `process_vm_writev` of the dirtied pages (best run).
#[derive(Serialize)]
struct PvwJson {
    cycles: u64,
    seconds: Num,
    rate: Num,
    dirty_us_avg: Num,
    write_us_avg: Num,
}

#[derive(Serialize)]
struct DirtyEngineJson {
    #[serde(flatten)]
    run: CycleRunJson,
    pages_saved_median: Num,
    pages_restored_median: Num,
    checkpoints_held: u64,
    restores_held: u64,
}

/// The fork server's cycle: the parent's `fork()` and `waitpid()`.
#[derive(Serialize)]
struct ForkServerJson {
    cycles: u64,
    seconds: Num,
    rate: Num,
    fork_us_avg: Num,
    wait_us_avg: Num,
}

impl From<&DirtyResult> for DirtyJson {
    fn from(d: &DirtyResult) -> Self {
        let per_written = |f: fn(&DirtyResult, &str) -> Option<f64>| {
            Keyed(
                d.written()
                    .into_iter()
                    .map(|w| (w.to_string(), Num(f(d, w))))
                    .collect(),
            )
        };
        Self {
            millis: d.millis,
            warmup_cycles: d.warmup,
            written: d.written(),
            dirtied: d.dirtied(),
            process_vm_writev_page_ns: Num(d.pvw_page_ns.best),
            process_vm_writev_page_ns_median: Num(d.pvw_page_ns.median),
            process_vm_writev_reps: d.pvw_reps,
            cost_per_dirty_page_ns: per_written(DirtyResult::cost_per_dirty_page_ns),
            cost_per_dirty_page_vs_process_vm_writev: per_written(
                DirtyResult::cost_vs_process_vm_writev,
            ),
            same_pages_process_vm_writev_ns: per_written(DirtyResult::same_pages_pvw_ns),
            cost_per_dirty_page_vs_same_pages: per_written(DirtyResult::cost_vs_same_pages_pvw),
            cells: Keyed(
                d.cells
                    .iter()
                    .map(|c| (c.label(), DirtyCellJson::from(c)))
                    .collect(),
            ),
        }
    }
}

impl From<&Cell> for DirtyCellJson {
    fn from(c: &Cell) -> Self {
        let f = &c.forkserver;
        Self {
            written_bytes: c.written_bytes,
            dirtied_bytes: c.dirtied_bytes,
            dirtied_pages: c.pages(),
            rate: Num(c.bpfckpt.rate()),
            forkserver_rate: Num(f.rate()),
            handshake_rate: Num(c.handshake.rate()),
            vs_forkserver: Num(c.vs_forkserver()),
            vs_handshake: Num(c.vs_handshake()),
            repetitions: c.rates.len(),
            rate_median: Num(c.median_rate(0)),
            forkserver_rate_median: Num(c.median_rate(1)),
            handshake_rate_median: Num(c.median_rate(2)),
            vs_forkserver_median: Num(c.vs_forkserver_median()),
            vs_handshake_median: Num(c.vs_handshake_median()),
            bpfckpt: DirtyEngineJson {
                run: CycleRunJson::from(&c.bpfckpt),
                pages_saved_median: Num(c.pages_saved),
                pages_restored_median: Num(c.pages_restored),
                checkpoints_held: c.checkpoints_held,
                restores_held: c.restores_held,
            },
            forkserver: ForkServerJson {
                cycles: f.cycles,
                seconds: num(f.ns as f64 / 1e9),
                rate: Num(f.rate()),
                fork_us_avg: Num(f.avg_us(f.ckpt_ns)),
                wait_us_avg: Num(f.avg_us(f.restore_ns)),
            },
            handshake: CycleRunJson::from(&c.handshake),
            process_vm_writev: PvwJson {
                cycles: c.pvw.cycles,
                seconds: num(c.pvw.ns as f64 / 1e9),
                rate: Num(c.pvw.rate()),
                dirty_us_avg: Num(c.pvw.avg_us(c.pvw.ckpt_ns)),
                write_us_avg: Num(c.pvw.avg_us(c.pvw.restore_ns)),
            },
        }
    }
}

/// ns per operation alone and while bpfckpt serves, for openat and the two
/// controls (whose counts are multiples of `ops`): the best (lowest) of the
/// rounds and their median.
#[derive(Serialize)]
struct OpenatJson {
    ops: u64,
    rounds: u32,
    alone_ns_per_op: Num,
    alone_ns_per_op_median: Num,
    traced_ns_per_op: Num,
    traced_ns_per_op_median: Num,
    getppid_alone_ns: Num,
    getppid_alone_ns_median: Num,
    getppid_traced_ns: Num,
    getppid_traced_ns_median: Num,
    getppid_ops: u64,
    unrelated_getppid_overhead: Num,
    unrelated_getppid_overhead_median: Num,
    fault_alone_ns: Num,
    fault_alone_ns_median: Num,
    fault_traced_ns: Num,
    fault_traced_ns_median: Num,
    fault_ops: u64,
    unrelated_fault_overhead: Num,
    unrelated_fault_overhead_median: Num,
}

impl From<&OpenatResult> for OpenatJson {
    fn from(o: &OpenatResult) -> Self {
        Self {
            ops: o.ops,
            rounds: o.rounds,
            alone_ns_per_op: Num(o.alone[OPENAT].best),
            alone_ns_per_op_median: Num(o.alone[OPENAT].median),
            traced_ns_per_op: Num(o.traced[OPENAT].best),
            traced_ns_per_op_median: Num(o.traced[OPENAT].median),
            getppid_alone_ns: Num(o.alone[GETPPID].best),
            getppid_alone_ns_median: Num(o.alone[GETPPID].median),
            getppid_traced_ns: Num(o.traced[GETPPID].best),
            getppid_traced_ns_median: Num(o.traced[GETPPID].median),
            getppid_ops: o.ops * CALLS[GETPPID].1,
            unrelated_getppid_overhead: Num(o.overhead_of(GETPPID).best),
            unrelated_getppid_overhead_median: Num(o.overhead_of(GETPPID).median),
            fault_alone_ns: Num(o.alone[FAULT].best),
            fault_alone_ns_median: Num(o.alone[FAULT].median),
            fault_traced_ns: Num(o.traced[FAULT].best),
            fault_traced_ns_median: Num(o.traced[FAULT].median),
            fault_ops: o.ops * CALLS[FAULT].1,
            unrelated_fault_overhead: Num(o.overhead_of(FAULT).best),
            unrelated_fault_overhead_median: Num(o.overhead_of(FAULT).median),
        }
    }
}

/// What `kernel_bytes_per_saved_byte` is made of: `map_bytes` /
/// `saved_bytes`, and the engine's own figure for its store beside it.
#[derive(Serialize)]
struct KernelBytes {
    size: &'static str,
    peak_store_bytes: Option<u64>,
    saved_bytes: Option<u64>,
    source: &'static str,
    map_bytes: Option<u64>,
    store_formula_per_saved_byte: Num,
    maps: Option<Vec<MapJson>>,
}

/// One of bpfckpt's maps, largest first.
#[derive(Serialize)]
struct MapJson {
    name: String,
    #[serde(rename = "type")]
    map_type: String,
    bytes: u64,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl From<&MapMem> for MapJson {
    fn from(m: &MapMem) -> Self {
        Self {
            name: m.name.clone(),
            map_type: m.type_name(),
            bytes: m.bytes,
            id: m.id,
            key_size: m.key_size,
            value_size: m.value_size,
            max_entries: m.max_entries,
            flags: m.flags,
        }
    }
}

#[derive(Serialize)]
struct TargetJson<'a> {
    metric: &'a str,
    value: Num,
    op: &'static str,
    bar: Num,
    met: Option<bool>,
    busy_machine: bool,
}

impl<'a> From<&'a Target> for TargetJson<'a> {
    fn from(t: &'a Target) -> Self {
        Self {
            metric: &t.metric,
            value: Num(t.value),
            op: t.op(),
            bar: num(t.bar),
            met: t.met(),
            busy_machine: t.busy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Plan;
    use super::super::startup::StaticBinary;
    use super::super::stats::Fig;
    use super::super::targets::evaluate;
    use super::super::time::utc;
    use super::*;

    #[test]
    fn numbers_are_rounded_whole_or_null() {
        let j = |v| serde_json::to_string(&Num(v)).unwrap();
        assert_eq!(j(Some(1.5)), "1.5");
        assert_eq!(j(Some(5.679_928_4)), "5.679928");
        assert_eq!(j(Some(2.0)), "2");
        assert_eq!(j(Some(-0.0)), "0");
        assert_eq!(j(Some(f64::NAN)), "null");
        assert_eq!(j(None), "null");
    }

    #[test]
    fn report_keys_in_the_documented_order() {
        let mut out = Outcome {
            plan: Plan::smoke(),
            engine: "bpfckpt".into(),
            steps: vec![Step::begin("build").end()],
            machine: Machine::default(),
            sizes: vec![SizeResult {
                label: "16MiB",
                ..Default::default()
            }],
            cycle: CycleResult::default(),
            dirty: DirtyResult {
                millis: 250,
                cells: vec![Cell {
                    written: "16MiB",
                    written_bytes: 16 << 20,
                    dirtied: "4KiB",
                    dirtied_bytes: 4096,
                    bpfckpt: CycleRun {
                        cycles: 4,
                        ns: 2_000_000,
                        ckpt_ns: 400_000,
                        restore_ns: 800_000,
                    },
                    ..Default::default()
                }],
                ..Default::default()
            },
            openat: OpenatResult {
                ops: 10,
                ..Default::default()
            },
            startup: Fig::lowest(&[1.0]),
            startup_static: Fig::default(),
            binary: StaticBinary::default(),
            targets: Vec::new(),
            warnings: vec!["w\n".into()],
            runtime: 1.0,
        };
        out.targets = evaluate(&out);
        let text = serde_json::to_string_pretty(&Report::new(&out, &utc(0))).unwrap();
        let top: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  \"")?.split_once('"').map(|(k, _)| k))
            .collect();
        let want = [
            "schema",
            "mode",
            "profile",
            "timestamp_utc",
            "runtime_s",
            "step_seconds",
            "step_other_cpu",
            "bpfckpt_binary",
            "machine",
            "sizes",
            "16MiB",
            "cycle_rate",
            "handshake_rate",
            "cycle_rate_vs_handshake",
            "cycle",
            "dirty",
            "unrelated_openat_overhead",
            "unrelated_openat_overhead_median",
            "openat",
            "startup_ms",
            "startup_ms_median",
            "startup_ms_static",
            "startup_ms_static_median",
            "static_binary_mib",
            "static_binary_is_static",
            "kernel_bytes_per_saved_byte",
            "kernel_bytes",
            "targets",
            "warnings",
        ];
        assert_eq!(top, want);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["16MiB"]["checkpoint_gbps"], serde_json::Value::Null);
        assert_eq!(v["16MiB"]["peak_store_bytes"], 0);
        assert_eq!(v["16MiB"]["kernel_map_bytes"], serde_json::Value::Null);
        assert_eq!(v["kernel_bytes"]["maps"], serde_json::Value::Null);
        assert_eq!(v["cycle"]["bpfckpt"]["rate"], serde_json::Value::Null);
        assert_eq!(v["cycle"]["bpfckpt"]["cycles"], 0);
        assert_eq!(v["openat"]["getppid_ops"], 50);
        let d = &v["dirty"];
        // serde_json's Value sorts keys: read the order from the text.
        let dirty = serde_json::to_string_pretty(&DirtyJson::from(&out.dirty)).unwrap();
        let keys: Vec<&str> = dirty
            .lines()
            .filter_map(|l| l.strip_prefix("  \"")?.split_once('"').map(|(k, _)| k))
            .collect();
        assert_eq!(
            keys,
            [
                "millis",
                "warmup_cycles",
                "written",
                "dirtied",
                "process_vm_writev_page_ns",
                "process_vm_writev_page_ns_median",
                "process_vm_writev_reps",
                "cost_per_dirty_page_ns",
                "cost_per_dirty_page_vs_process_vm_writev",
                "same_pages_process_vm_writev_ns",
                "cost_per_dirty_page_vs_same_pages",
                "cells",
            ]
        );
        let cell = &d["cells"]["16MiB_4KiB"];
        assert_eq!(cell["rate"], 2000);
        assert_eq!(cell["bpfckpt"]["checkpoint_latency_us_avg"], 100);
        assert_eq!(cell["bpfckpt"]["restore_latency_us_avg"], 200);
        assert_eq!(cell["dirtied_pages"], 1);
        assert_eq!(cell["vs_forkserver"], serde_json::Value::Null);
        assert_eq!(cell["repetitions"], 0);
        assert_eq!(cell["vs_handshake_median"], serde_json::Value::Null);
        assert_eq!(cell["forkserver"]["cycles"], 0);
        assert_eq!(d["written"][0], "16MiB");
        // One dirtied size: no cost per page to tell.
        assert_eq!(
            d["cost_per_dirty_page_ns"]["16MiB"],
            serde_json::Value::Null
        );
        assert_eq!(v["machine"]["loadavg_end"], "");
        assert_eq!(v["step_seconds"].as_object().unwrap().len(), 1);
        assert_eq!(v["targets"][0]["metric"], "16MiB.checkpoint_e2e_vs_memcpy");
        assert_eq!(v["warnings"][0], "w\n");
    }
}
