//! `cargo xtask bench [--smoke] [--bpfckpt PATH]`: measures bpfckpt against
//! its baselines and the issue's performance bar; prints a table and writes
//! JSON.
//!
//! Everything is built first (`--release`, plus the static musl binary; the
//! smoke uses the debug build `cargo xtask test` has just made and does not
//! build the musl binary), and every ratio compares numbers taken in the
//! same run. Throughputs are in GB/s = 1e9 bytes per second. `--bpfckpt`
//! measures another engine binary (A/B comparisons).
//!
//! # What is measured
//!
//! For each size S (64 MiB and 1 GiB; 16 MiB in the smoke):
//! - Baselines (`bench-base --bytes S`, best of R = 5): `memcpy_gbps`, S
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
//!   - `checkpoint_gbps`: saved bytes ((pages_bpf + pages_user) * 4096) /
//!     `kernel_ns` of the engine's `checkpoint` event, over the measured
//!     checkpoints with `pages_user == 0`: the BPF program copied the whole
//!     image inside the trigger syscall, and `kernel_ns` times that copy
//!     from first to last page. Such a checkpoint may still be `held` (the
//!     probe holds the target when some page of the region table was not
//!     present; user space then records those pages as zero ranges): that
//!     user-side work is not in `kernel_ns` but is in `checkpoint_e2e_gbps`,
//!     which divides by the target-observed latency (request `openat` until
//!     `checkpoint_complete` is seen). `checkpoints_pure_bpf` counts the
//!     qualifying checkpoints, `checkpoints_held` the held ones.
//!   - `restore_gbps`: restored bytes ((pages_bpf + pages_user of the
//!     `restore` event) * 4096) / the target-observed restore latency: from
//!     just before the target's `openat` of `ready_to_restore` until it sees
//!     `restore_complete` (the engine creates it before it releases a held
//!     target, so no polling interval is included). It covers the probe, the
//!     hold, the engine's wake-up, /proc/PID/maps, the writes, the zero
//!     ranges and the marker. (The engine's `user_ns` exists only as a total
//!     in its summary, and its wall-clock time includes periods in which the
//!     engine is descheduled after it has released the target.)
//!   - Best (highest) of the measured cycles, and the median (`*_median`).
//!   - `checkpoint_vs_memcpy`, `restore_vs_memcpy`: ratios of the best
//!     values to `memcpy_gbps` (itself a best of R).
//!
//! - `cycle_rate`, `handshake_rate`, `cycle_rate_vs_handshake`: cycles per
//!   second of `bench-cycle` (a 4 KiB heap buffer, a 400 MB `.bss` array it
//!   never touches; it polls the markers without sleeping) for 3 s after 2
//!   warm-up cycles, under bpfckpt, and under a handshake-only server in
//!   this process that polls the trigger directory without sleeping,
//!   creates the completion markers and copies nothing (the protocol's
//!   ceiling). Same binary, same run, private trigger directories.
//! - `unrelated_openat_overhead`: `bench-openat` (200k x open+close of
//!   /dev/null) alone versus while bpfckpt serves an idle target
//!   (`bench-idle`): `traced / alone - 1`, best of 3 alternating rounds
//!   (each traced round starts its own bpfckpt). Controls, measured the same
//!   way: `getppid` (a system call nothing is attached to) and `fault` (a
//!   page fault on a fresh anonymous page).
//! - `startup_ms`: from spawning `bpfckpt run --json -- /bin/true` until its
//!   `start` event is read from the pipe (exec, privilege and
//!   `bpf_probe_write_user` checks, parse, link, BTF, map creation, program
//!   loads with the verifier, attach), best of 5 (300 ms apart, so that the
//!   previous instance's deferred teardown is over), glibc release build;
//!   `startup_ms_static` is the same for the static musl build.
//! - `static_binary_mib`: size of target/x86_64-unknown-linux-musl/release/
//!   bpfckpt in MiB (2^20 bytes); `static_binary_is_static`: no PT_INTERP.
//! - `kernel_bytes_per_saved_byte`: the per-target summary's
//!   `peak_store_bytes` / bytes saved by the last checkpoint, in the 64 MiB
//!   run (smoke: 16 MiB).
//! - Per step: wall time, and the share of all CPUs used by other processes
//!   meanwhile (process-context time in /proc/stat, minus this process with
//!   its children and minus kernel threads); above 15% the step is flagged
//!   in `warnings`.
//!
//! # JSON layout (target/bench/latest.json and target/bench/<UTC time>.json;
//! the smoke writes target/bench/smoke.json only)
//!
//! ```text
//! { "schema": 1, "mode": "full"|"smoke", "profile": "release"|"debug",
//!   "timestamp_utc": "...Z", "runtime_s": .., "step_seconds": {step: s},
//!   "step_other_cpu": {step: fraction}, "bpfckpt_binary": path,
//!   "machine": {kernel, cpu, cores, git_commit, git_dirty, lockdown,
//!               restore_path, thp, trigger_base, loadavg_start, loadavg_end},
//!   "sizes": ["64MiB", "1GiB"],
//!   "64MiB": { bytes, warmup_cycles, measured_cycles,
//!              checkpoint_gbps, checkpoint_gbps_median, checkpoint_e2e_gbps,
//!              restore_gbps, restore_gbps_median, memcpy_gbps,
//!              process_vm_readv_gbps, process_vm_writev_gbps,
//!              process_vm_writev_4k_gbps, checkpoint_vs_memcpy,
//!              restore_vs_memcpy, restore_vs_process_vm_writev,
//!              checkpoint_kernel_ms_median, checkpoint_latency_ms_median,
//!              restore_latency_ms_median, pages_saved, pages_absent,
//!              checkpoints_pure_bpf, checkpoints_held, restores_held,
//!              peak_store_bytes },
//!   "1GiB": { the same },
//!   "cycle_rate": .., "handshake_rate": .., "cycle_rate_vs_handshake": ..,
//!   "cycle": { millis,
//!              handshake: {cycles, seconds, rate, checkpoint_latency_us_avg,
//!                          restore_latency_us_avg},
//!              bpfckpt: {the same, checkpoint_kernel_us_avg, checkpoints_held,
//!                        pages_saved, pages_absent, engine_user_us_per_cycle} },
//!   "unrelated_openat_overhead": ..,
//!   "openat": {ops, rounds, alone_ns_per_op, traced_ns_per_op,
//!              getppid_alone_ns, getppid_traced_ns, getppid_ops,
//!              unrelated_getppid_overhead, fault_alone_ns, fault_traced_ns,
//!              fault_ops, unrelated_fault_overhead},
//!   "startup_ms": .., "startup_ms_static": ..,
//!   "static_binary_mib": .., "static_binary_is_static": ..,
//!   "kernel_bytes_per_saved_byte": ..,
//!   "kernel_bytes": {size, peak_store_bytes, saved_bytes},
//!   "targets": [ {metric, value, op: ">="|"<=", bar, met: bool|null,
//!                 busy_machine: bool} ],
//!   "warnings": [ .. ] }
//! ```
//! Per-size keys are the size labels at the top level ("sizes" lists them).
//! A value that could not be measured is `null` (with a warning). Missed
//! targets never fail the run; a broken step (build, bpfckpt error, wrong
//! restore, unparsable output, timeout) does.

use crate::util::{self, Ctx, Result};
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
const MUSL: &str = "x86_64-unknown-linux-musl";

// The protocol's marker names (loader/src/ckpt/markers.rs).
use bpfckpt_protocol::{CHECKPOINT_DONE, CHECKPOINT_REQUEST, RESTORE_DONE, RESTORE_REQUEST};

// ------------------------------------------------------------------- plan

struct Size {
    label: &'static str,
    bytes: u64,
    warmup: u32,
    cycles: u32,
}

struct Plan {
    smoke: bool,
    sizes: Vec<Size>,
    /// The size whose run gives `kernel_bytes_per_saved_byte`.
    store_size: &'static str,
    base_reps: u32,
    cycle_warmup: u32,
    cycle_millis: u64,
    cycle_min: u64,
    openat_ops: u64,
    openat_rounds: u32,
    startup_tries: u32,
}

impl Plan {
    fn full() -> Self {
        Self {
            smoke: false,
            sizes: vec![
                Size {
                    label: "64MiB",
                    bytes: 64 * MIB,
                    warmup: 2,
                    cycles: 10,
                },
                Size {
                    label: "1GiB",
                    bytes: 1024 * MIB,
                    warmup: 2,
                    cycles: 5,
                },
            ],
            store_size: "64MiB",
            base_reps: 5,
            cycle_warmup: 2,
            cycle_millis: 3000,
            cycle_min: 5,
            openat_ops: 200_000,
            openat_rounds: 3,
            startup_tries: 5,
        }
    }

    fn smoke() -> Self {
        Self {
            smoke: true,
            sizes: vec![Size {
                label: "16MiB",
                bytes: 16 * MIB,
                warmup: 2,
                cycles: 2,
            }],
            store_size: "16MiB",
            base_reps: 2,
            cycle_warmup: 1,
            cycle_millis: 300,
            cycle_min: 2,
            openat_ops: 20_000,
            openat_rounds: 1,
            startup_tries: 2,
        }
    }
}

/// Paths of the binaries under test.
struct Bins {
    bpfckpt: PathBuf,
    /// target/<profile>: the bench targets.
    dir: PathBuf,
    /// The static (musl) release build.
    static_bpfckpt: PathBuf,
}

impl Bins {
    fn bench(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

// -------------------------------------------------------------- entry point

pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    let mut smoke = false;
    let mut engine: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--bpfckpt" => {
                let p = it.next().ok_or("bench: --bpfckpt needs a path")?;
                let p = fs::canonicalize(p).map_err(|e| format!("bench: --bpfckpt {p}: {e}"))?;
                engine = Some(p);
            }
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask bench [--smoke] [--bpfckpt PATH]\n\n\
                     Measures bpfckpt (throughput, cycle rate, overhead, startup, size) and\n\
                     writes target/bench/latest.json and a dated copy; --smoke runs a quick\n\
                     version that writes target/bench/smoke.json and asserts no timings.\n\
                     --bpfckpt measures that engine binary instead of the one just built\n\
                     (e.g. another commit's, for an A/B comparison; size and static startup\n\
                     still come from this tree's musl build)."
                );
                return Ok(());
            }
            other => return Err(format!("bench: unknown argument `{other}` (try --help)")),
        }
    }
    if !util::is_root() {
        return Err("bench: needs root (bpfckpt loads BPF programs)".into());
    }
    let plan = if smoke { Plan::smoke() } else { Plan::full() };
    let t_all = Instant::now();
    let mut steps: Vec<Step> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();

    let st = Step::begin("build");
    let target = ctx.target_dir();
    let profile = if smoke { "debug" } else { "release" };
    if smoke {
        util::step("bench smoke: build (debug)");
        ctx.cargo(&["build", "-p", "bpfckpt", "-p", "bpfckpt-tests"])?;
    } else {
        util::step("bench: build (release, and the static musl binary)");
        ctx.cargo(&["build", "--release", "-p", "bpfckpt", "-p", "bpfckpt-tests"])?;
        ctx.cargo(&["build", "--release", "--target", MUSL, "-p", "bpfckpt"])?;
    }
    let bins = Bins {
        bpfckpt: engine.unwrap_or_else(|| target.join(profile).join("bpfckpt")),
        dir: target.join(profile),
        static_bpfckpt: target.join(MUSL).join("release/bpfckpt"),
    };
    for p in [&bins.bpfckpt, &bins.bench("bench-mem")] {
        if !p.exists() {
            return Err(format!("bench: {} is missing after the build", p.display()));
        }
    }
    steps.push(st.end());

    let load_start = loadavg();
    let foreign = other_bpfckpt();
    if !foreign.is_empty() {
        warnings.push(format!(
            "other bpfckpt processes were running when the bench started ({}): their probes \
             run on every process's system calls and page faults, so all timings are affected",
            foreign
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut sizes = Vec::new();
    for size in &plan.sizes {
        util::step(&format!("bench: {} throughput", size.label));
        let st = Step::begin(&format!("throughput {}", size.label));
        let r = mem_bench(&bins, size, plan.base_reps, &mut warnings)
            .map_err(|e| format!("bench ({}): {e}", size.label))?;
        steps.push(st.end());
        sizes.push(r);
    }

    util::step("bench: cycle rate");
    let st = Step::begin("cycle rate");
    let cycle = cycle_bench(&bins, &plan).map_err(|e| format!("bench (cycle rate): {e}"))?;
    steps.push(st.end());

    util::step("bench: unrelated openat overhead");
    let st = Step::begin("openat overhead");
    let openat =
        openat_bench(&bins, &plan, &mut warnings).map_err(|e| format!("bench (openat): {e}"))?;
    steps.push(st.end());

    util::step("bench: startup");
    let st = Step::begin("startup");
    let startup = startup_ms(&bins.bpfckpt, plan.startup_tries)
        .map_err(|e| format!("bench (startup): {e}"))?;
    let startup_static = if bins.static_bpfckpt.exists() {
        Some(
            startup_ms(&bins.static_bpfckpt, plan.startup_tries)
                .map_err(|e| format!("bench (startup, static binary): {e}"))?,
        )
    } else {
        None
    };
    steps.push(st.end());
    for s in steps.iter().skip(1) {
        if let Some(o) = s.other_cpu.filter(|o| *o > BUSY) {
            warnings.push(format!(
                "other processes kept {:.0}% of the CPUs busy during `{}`: its timings are likely pessimistic",
                o * 100.0,
                s.name
            ));
        }
    }

    let (static_mib, is_static) = match fs::read(&bins.static_bpfckpt) {
        Ok(bytes) => (
            Some(bytes.len() as f64 / MIB as f64),
            Some(elf_is_static(&bytes)),
        ),
        Err(e) => {
            if !smoke {
                return Err(format!("bench: {}: {e}", bins.static_bpfckpt.display()));
            }
            warnings.push(format!(
                "{} not built (the smoke does not build it): static_binary_mib is null",
                bins.static_bpfckpt.display()
            ));
            (None, None)
        }
    };

    let store = sizes.iter().find(|s| s.label == plan.store_size);
    let kbpsb = store.and_then(|s| {
        (s.last_saved_pages > 0)
            .then(|| s.peak_store_bytes as f64 / (s.last_saved_pages * PAGE) as f64)
    });

    let restore_path = sizes
        .first()
        .map(|s| s.restore_path.clone())
        .unwrap_or_default();
    let machine = machine_info(ctx, &restore_path, load_start);
    let mut targets = Vec::new();
    for s in &sizes {
        targets.push(Target::ge(
            format!("{}.checkpoint_vs_memcpy", s.label),
            s.checkpoint_vs_memcpy(),
            0.7,
        ));
        targets.push(Target::ge(
            format!("{}.restore_vs_memcpy", s.label),
            s.restore_vs_memcpy(),
            0.5,
        ));
    }
    targets.push(Target::ge(
        "cycle_rate_vs_handshake".into(),
        cycle.ratio(),
        0.8,
    ));
    targets.push(Target::le(
        "unrelated_openat_overhead".into(),
        Some(openat.overhead()),
        0.10,
    ));
    targets.push(Target::le("startup_ms".into(), Some(startup), 20.0));
    targets.push(Target::le("static_binary_mib".into(), static_mib, 2.0));
    targets.push(Target::le(
        "kernel_bytes_per_saved_byte".into(),
        kbpsb,
        1.05,
    ));
    // Flag timings taken on a busy machine (sizes and memory are not timings).
    let busy = |step: &str| {
        steps
            .iter()
            .any(|s| s.name == step && s.other_cpu.is_some_and(|o| o > BUSY))
    };
    for t in &mut targets {
        let step = match t.metric.split_once('.') {
            Some((label, _)) => format!("throughput {label}"),
            None => match t.metric.as_str() {
                "cycle_rate_vs_handshake" => "cycle rate".into(),
                "unrelated_openat_overhead" => "openat overhead".into(),
                "startup_ms" => "startup".into(),
                _ => String::new(),
            },
        };
        t.busy = busy(&step);
    }

    let runtime = t_all.elapsed().as_secs_f64();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stamp = utc(now);

    // ---- JSON
    let mut root = vec![
        ("schema".to_string(), Jv::Int(1)),
        ("mode".into(), Jv::s(if smoke { "smoke" } else { "full" })),
        ("profile".into(), Jv::s(profile)),
        ("timestamp_utc".into(), Jv::s(&stamp.iso())),
        ("runtime_s".into(), Jv::num(Some(runtime))),
        (
            "step_seconds".into(),
            Jv::Obj(
                steps
                    .iter()
                    .map(|s| (s.name.clone(), Jv::num(Some(s.seconds))))
                    .collect(),
            ),
        ),
        (
            "step_other_cpu".into(),
            Jv::Obj(
                steps
                    .iter()
                    .map(|s| (s.name.clone(), Jv::num(s.other_cpu)))
                    .collect(),
            ),
        ),
        (
            "bpfckpt_binary".into(),
            Jv::s(&bins.bpfckpt.display().to_string()),
        ),
        ("machine".into(), machine.json()),
        (
            "sizes".into(),
            Jv::Arr(sizes.iter().map(|s| Jv::s(s.label)).collect()),
        ),
    ];
    for s in &sizes {
        root.push((s.label.to_string(), s.json()));
    }
    root.push(("cycle_rate".into(), Jv::num(cycle.bpfckpt.rate())));
    root.push(("handshake_rate".into(), Jv::num(cycle.handshake.rate())));
    root.push(("cycle_rate_vs_handshake".into(), Jv::num(cycle.ratio())));
    root.push(("cycle".into(), cycle.json(plan.cycle_millis)));
    root.push((
        "unrelated_openat_overhead".into(),
        Jv::num(Some(openat.overhead())),
    ));
    root.push(("openat".into(), openat.json()));
    root.push(("startup_ms".into(), Jv::num(Some(startup))));
    root.push(("startup_ms_static".into(), Jv::num(startup_static)));
    root.push(("static_binary_mib".into(), Jv::num(static_mib)));
    root.push((
        "static_binary_is_static".into(),
        is_static.map_or(Jv::Null, Jv::Bool),
    ));
    root.push(("kernel_bytes_per_saved_byte".into(), Jv::num(kbpsb)));
    root.push((
        "kernel_bytes".into(),
        Jv::Obj(vec![
            ("size".into(), Jv::s(plan.store_size)),
            (
                "peak_store_bytes".into(),
                store.map_or(Jv::Null, |s| Jv::Int(s.peak_store_bytes)),
            ),
            (
                "saved_bytes".into(),
                store.map_or(Jv::Null, |s| Jv::Int(s.last_saved_pages * PAGE)),
            ),
        ]),
    ));
    root.push((
        "targets".into(),
        Jv::Arr(targets.iter().map(Target::json).collect()),
    ));
    root.push((
        "warnings".into(),
        Jv::Arr(warnings.iter().map(|w| Jv::s(w)).collect()),
    ));
    let json = Jv::Obj(root).pretty();

    let out_dir = target.join("bench");
    fs::create_dir_all(&out_dir).map_err(|e| format!("create {}: {e}", out_dir.display()))?;
    let mut written = Vec::new();
    let names = if smoke {
        vec!["smoke.json".to_string()]
    } else {
        vec!["latest.json".to_string(), format!("{}.json", stamp.file())]
    };
    for n in names {
        let p = out_dir.join(n);
        fs::write(&p, &json).map_err(|e| format!("write {}: {e}", p.display()))?;
        written.push(p);
    }

    // ---- table
    print_table(&TableInput {
        plan: &plan,
        steps: &steps,
        bpfckpt: &bins.bpfckpt,
        machine: &machine,
        sizes: &sizes,
        cycle: &cycle,
        openat: &openat,
        startup,
        startup_static,
        static_mib,
        kbpsb,
        targets: &targets,
    });
    for w in &warnings {
        eprintln!("xtask: bench: warning: {w}");
    }
    for p in &written {
        println!("wrote {}", p.display());
    }
    println!(
        "bench {} took {runtime:.1} s",
        if smoke { "smoke" } else { "run" }
    );
    Ok(())
}

// -------------------------------------------------------------------- steps

/// Share of all CPUs that other processes may use during a step before its
/// timings are flagged.
const BUSY: f64 = 0.15;

/// One phase of the run: its wall time, and how busy other processes kept
/// the machine meanwhile.
struct Step {
    name: String,
    seconds: f64,
    /// Share of all CPUs used by other processes (see [`Cpu`]).
    other_cpu: Option<f64>,
    t0: Instant,
    cpu0: Option<Cpu>,
}

impl Step {
    fn begin(name: &str) -> Self {
        Self {
            name: name.to_string(),
            seconds: 0.0,
            other_cpu: None,
            t0: Instant::now(),
            cpu0: Cpu::now(),
        }
    }

    fn end(mut self) -> Self {
        self.seconds = self.t0.elapsed().as_secs_f64();
        self.other_cpu = match (self.cpu0.take(), Cpu::now()) {
            (Some(a), Some(b)) => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                let total = self.seconds * USER_HZ * cores;
                let other =
                    b.busy.saturating_sub(a.busy) as f64 - b.ours.saturating_sub(a.ours) as f64;
                (total > 0.0).then(|| (other / total).clamp(0.0, 1.0))
            }
            _ => None,
        };
        self
    }
}

/// /proc/stat and /proc/PID/stat count in USER_HZ ticks (100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU ticks: busy in process context on the whole machine (user, nice,
/// system; plus steal, time the hypervisor gave to others), and the parts
/// that are not "other work": this process with its waited-for children
/// (every bench process is waited for before a step ends) and kernel
/// threads (they run deferred work the bench itself causes: freeing maps,
/// RCU). Interrupt and softirq time is left out for the same reason.
struct Cpu {
    busy: u64,
    ours: u64,
}

/// utime, stime, cutime, cstime and ppid of a /proc/PID/stat line.
fn proc_stat_times(stat: &str) -> Option<(u64, [u64; 4])> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    // `rest` starts at field 3 (state): ppid is field 4, utime..cstime 14-17.
    Some((
        *f.get(1)?,
        [*f.get(11)?, *f.get(12)?, *f.get(13)?, *f.get(14)?],
    ))
}

impl Cpu {
    fn now() -> Option<Self> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let busy = [0, 1, 2, 7]
            .iter()
            .map(|&i| cpu.get(i).copied().unwrap_or(0))
            .sum();
        let (_, t) = proc_stat_times(&fs::read_to_string("/proc/self/stat").ok()?)?;
        let mut ours: u64 = t.iter().sum();
        for e in fs::read_dir("/proc").ok()?.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(s) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            if let Some((ppid, t)) = proc_stat_times(&s)
                && (pid == 2 || ppid == 2)
            {
                ours += t[0] + t[1];
            }
        }
        Some(Self { busy, ours })
    }
}

// --------------------------------------------------------------- throughput

struct SizeResult {
    label: &'static str,
    bytes: u64,
    warmup: u32,
    cycles: u32,
    restore_path: String,
    memcpy_gbps: f64,
    vm_read_gbps: f64,
    vm_write_gbps: f64,
    vm_write_4k_gbps: f64,
    /// Per measured checkpoint with pages_user == 0: bytes / kernel_ns.
    ckpt_gbps: Vec<f64>,
    ckpt_e2e_gbps: Vec<f64>,
    restore_gbps: Vec<f64>,
    ckpt_kernel_ms: Vec<f64>,
    ckpt_latency_ms: Vec<f64>,
    restore_latency_ms: Vec<f64>,
    last_saved_pages: u64,
    pages_absent: u64,
    ckpt_pure: u64,
    ckpt_held: u64,
    restore_held: u64,
    peak_store_bytes: u64,
}

impl SizeResult {
    fn checkpoint_gbps(&self) -> Option<f64> {
        max(&self.ckpt_gbps)
    }

    fn restore_gbps(&self) -> Option<f64> {
        max(&self.restore_gbps)
    }

    fn checkpoint_vs_memcpy(&self) -> Option<f64> {
        self.checkpoint_gbps().map(|g| g / self.memcpy_gbps)
    }

    fn restore_vs_memcpy(&self) -> Option<f64> {
        self.restore_gbps().map(|g| g / self.memcpy_gbps)
    }

    fn json(&self) -> Jv {
        let n = |k: &str, v: Option<f64>| (k.to_string(), Jv::num(v));
        let i = |k: &str, v: u64| (k.to_string(), Jv::Int(v));
        Jv::Obj(vec![
            i("bytes", self.bytes),
            i("warmup_cycles", u64::from(self.warmup)),
            i("measured_cycles", u64::from(self.cycles)),
            n("checkpoint_gbps", self.checkpoint_gbps()),
            n("checkpoint_gbps_median", median(&self.ckpt_gbps)),
            n("checkpoint_e2e_gbps", max(&self.ckpt_e2e_gbps)),
            n("restore_gbps", self.restore_gbps()),
            n("restore_gbps_median", median(&self.restore_gbps)),
            n("memcpy_gbps", Some(self.memcpy_gbps)),
            n("process_vm_readv_gbps", Some(self.vm_read_gbps)),
            n("process_vm_writev_gbps", Some(self.vm_write_gbps)),
            n("process_vm_writev_4k_gbps", Some(self.vm_write_4k_gbps)),
            n("checkpoint_vs_memcpy", self.checkpoint_vs_memcpy()),
            n("restore_vs_memcpy", self.restore_vs_memcpy()),
            n(
                "restore_vs_process_vm_writev",
                self.restore_gbps().map(|g| g / self.vm_write_gbps),
            ),
            n("checkpoint_kernel_ms_median", median(&self.ckpt_kernel_ms)),
            n(
                "checkpoint_latency_ms_median",
                median(&self.ckpt_latency_ms),
            ),
            n(
                "restore_latency_ms_median",
                median(&self.restore_latency_ms),
            ),
            i("pages_saved", self.last_saved_pages),
            i("pages_absent", self.pages_absent),
            i("checkpoints_pure_bpf", self.ckpt_pure),
            i("checkpoints_held", self.ckpt_held),
            i("restores_held", self.restore_held),
            i("peak_store_bytes", self.peak_store_bytes),
        ])
    }
}

fn gbps(bytes: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        bytes as f64 / ns as f64
    }
}

fn mem_bench(
    bins: &Bins,
    size: &Size,
    reps: u32,
    warnings: &mut Vec<String>,
) -> Result<SizeResult> {
    let n = size.bytes.to_string();
    // Baselines first, in the same run.
    let mut cmd = Command::new(bins.bench("bench-base"));
    cmd.args(["--bytes", &n, "--reps", &reps.to_string()]);
    let out = Proc::start("bench-base", &mut cmd, false)?.finish(deadline(120))?;
    let base = bench_line(&out, "base")?;
    let memcpy_gbps = gbps(size.bytes, base.need_u("memcpy_ns")?);
    let vm_read_gbps = gbps(size.bytes, base.need_u("vm_read_ns")?);
    let vm_write_gbps = gbps(size.bytes, base.need_u("vm_write_ns")?);
    let vm_write_4k_gbps = gbps(size.bytes, base.need_u("vm_write_4k_ns")?);

    let dir = TriggerDir::new(&format!("mem-{}", size.label))?;
    let mut cmd = Command::new(&bins.bpfckpt);
    cmd.args(["run", "--json", "--trigger-dir"])
        .arg(&dir.0)
        .arg("--")
        .arg(bins.bench("bench-mem"))
        .arg("--dir")
        .arg(&dir.0)
        .args(["--bytes", &n])
        .args(["--warmup", &size.warmup.to_string()])
        .args(["--cycles", &size.cycles.to_string()]);
    let out = Proc::start("bpfckpt run -- bench-mem", &mut cmd, false)?
        .finish(deadline(60 + 40 * size.bytes / (1024 * MIB)))?;
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
    let mut r = SizeResult {
        label: size.label,
        bytes: size.bytes,
        warmup: size.warmup,
        cycles: size.cycles,
        restore_path: ev.restore_path.clone(),
        memcpy_gbps,
        vm_read_gbps,
        vm_write_gbps,
        vm_write_4k_gbps,
        ckpt_gbps: Vec::new(),
        ckpt_e2e_gbps: Vec::new(),
        restore_gbps: Vec::new(),
        ckpt_kernel_ms: Vec::new(),
        ckpt_latency_ms: Vec::new(),
        restore_latency_ms: Vec::new(),
        last_saved_pages: 0,
        pages_absent: 0,
        ckpt_pure: 0,
        ckpt_held: 0,
        restore_held: 0,
        peak_store_bytes: ev.summary.need_u("peak_store_bytes")?,
    };
    for (i, c) in cycles.iter().enumerate() {
        let ck = &ev.checkpoints[w + i];
        let rs = &ev.restores[w + i];
        let saved = ck.need_u("pages_bpf")? + ck.need_u("pages_user")?;
        let kernel_ns = ck.need_u("kernel_ns")?;
        let t_ck = c.need_u("checkpoint_ns")?;
        let t_rs = c.need_u("restore_ns")?;
        let restored = rs.need_u("pages_bpf")? + rs.need_u("pages_user")?;
        if ck.need_u("pages_user")? == 0 && saved > 0 {
            r.ckpt_pure += 1;
            r.ckpt_gbps.push(gbps(saved * PAGE, kernel_ns));
            r.ckpt_kernel_ms.push(kernel_ns as f64 / 1e6);
        }
        r.ckpt_held += u64::from(ck.b("held") == Some(true));
        r.restore_held += u64::from(rs.b("held") == Some(true));
        r.ckpt_e2e_gbps.push(gbps(saved * PAGE, t_ck));
        r.restore_gbps.push(gbps(restored * PAGE, t_rs));
        r.ckpt_latency_ms.push(t_ck as f64 / 1e6);
        r.restore_latency_ms.push(t_rs as f64 / 1e6);
        r.last_saved_pages = saved;
        r.pages_absent = ck.u("pages_absent").unwrap_or(0);
        if saved * PAGE < size.bytes || restored < saved {
            return Err(format!(
                "cycle {i}: {saved} pages saved and {restored} restored, fewer than the {} touched",
                size.bytes / PAGE
            ));
        }
    }
    if r.ckpt_pure == 0 {
        warnings.push(format!(
            "{}: no measured checkpoint was copied entirely by BPF (pages_user == 0): checkpoint_gbps is null",
            size.label
        ));
    }
    Ok(r)
}

// --------------------------------------------------------------- cycle rate

#[derive(Default)]
struct CycleRun {
    cycles: u64,
    ns: u64,
    ckpt_ns: u64,
    restore_ns: u64,
}

impl CycleRun {
    fn from(line: &Flat) -> Result<Self> {
        Ok(Self {
            cycles: line.need_u("cycles")?,
            ns: line.need_u("ns")?,
            ckpt_ns: line.need_u("checkpoint_ns")?,
            restore_ns: line.need_u("restore_ns")?,
        })
    }

    fn rate(&self) -> Option<f64> {
        (self.ns > 0).then(|| self.cycles as f64 * 1e9 / self.ns as f64)
    }

    fn avg_us(&self, total: u64) -> Option<f64> {
        (self.cycles > 0).then(|| total as f64 / self.cycles as f64 / 1e3)
    }

    fn fields(&self) -> Vec<(String, Jv)> {
        vec![
            ("cycles".into(), Jv::Int(self.cycles)),
            ("seconds".into(), Jv::num(Some(self.ns as f64 / 1e9))),
            ("rate".into(), Jv::num(self.rate())),
            (
                "checkpoint_latency_us_avg".into(),
                Jv::num(self.avg_us(self.ckpt_ns)),
            ),
            (
                "restore_latency_us_avg".into(),
                Jv::num(self.avg_us(self.restore_ns)),
            ),
        ]
    }
}

struct CycleResult {
    handshake: CycleRun,
    bpfckpt: CycleRun,
    /// Averages over the measured checkpoints.
    ckpt_kernel_us: Option<f64>,
    ckpt_held: u64,
    pages_saved: u64,
    pages_absent: u64,
    /// Summary user_ns / cycles (includes the warm-up cycles).
    engine_user_us_per_cycle: Option<f64>,
}

impl CycleResult {
    fn ratio(&self) -> Option<f64> {
        Some(self.bpfckpt.rate()? / self.handshake.rate()?)
    }

    fn json(&self, millis: u64) -> Jv {
        let mut b = self.bpfckpt.fields();
        b.push((
            "checkpoint_kernel_us_avg".into(),
            Jv::num(self.ckpt_kernel_us),
        ));
        b.push(("checkpoints_held".into(), Jv::Int(self.ckpt_held)));
        b.push(("pages_saved".into(), Jv::Int(self.pages_saved)));
        b.push(("pages_absent".into(), Jv::Int(self.pages_absent)));
        b.push((
            "engine_user_us_per_cycle".into(),
            Jv::num(self.engine_user_us_per_cycle),
        ));
        Jv::Obj(vec![
            ("millis".into(), Jv::Int(millis)),
            ("handshake".into(), Jv::Obj(self.handshake.fields())),
            ("bpfckpt".into(), Jv::Obj(b)),
        ])
    }
}

fn cycle_args(cmd: &mut Command, dir: &Path, plan: &Plan) {
    cmd.arg("--dir")
        .arg(dir)
        .args(["--warmup", &plan.cycle_warmup.to_string()])
        .args(["--millis", &plan.cycle_millis.to_string()])
        .args(["--min-cycles", &plan.cycle_min.to_string()]);
}

fn cycle_bench(bins: &Bins, plan: &Plan) -> Result<CycleResult> {
    let limit = 60 + plan.cycle_millis / 1000 * 4;

    // The ceiling: the same target, answered by a server that copies nothing.
    let dir = TriggerDir::new("handshake")?;
    let mut cmd = Command::new(bins.bench("bench-cycle"));
    cycle_args(&mut cmd, &dir.0, plan);
    cmd.args(["--verify", "0"]);
    let mut p = Proc::start("bench-cycle (handshake server)", &mut cmd, false)?;
    handshake_serve(&mut p, &dir.0, deadline(limit))?;
    let out = p.finish(deadline(10))?;
    let handshake = CycleRun::from(&bench_line(&out, "cycle")?)?;
    drop(dir);

    let dir = TriggerDir::new("cycle")?;
    let mut cmd = Command::new(&bins.bpfckpt);
    cmd.args(["run", "--json", "--trigger-dir"])
        .arg(&dir.0)
        .arg("--")
        .arg(bins.bench("bench-cycle"));
    cycle_args(&mut cmd, &dir.0, plan);
    let out =
        Proc::start("bpfckpt run -- bench-cycle", &mut cmd, false)?.finish(deadline(limit))?;
    let bpfckpt = CycleRun::from(&bench_line(&out, "cycle")?)?;
    let ev = Events::parse(&out)?;
    let w = plan.cycle_warmup as usize;
    let measured = ev.checkpoints.get(w..).unwrap_or_default();
    if measured.len() as u64 != bpfckpt.cycles {
        return Err(format!(
            "bpfckpt reported {} checkpoints, expected {} warm-up + {} measured",
            ev.checkpoints.len(),
            w,
            bpfckpt.cycles
        ));
    }
    let nm = measured.len() as u64;
    let sum = |k: &str| measured.iter().map(|e| e.u(k).unwrap_or(0)).sum::<u64>();
    let summary_cycles = ev.summary.need_u("cycles")?;
    Ok(CycleResult {
        ckpt_kernel_us: (nm > 0).then(|| sum("kernel_ns") as f64 / nm as f64 / 1e3),
        ckpt_held: measured
            .iter()
            .filter(|e| e.b("held") == Some(true))
            .count() as u64,
        pages_saved: measured.last().map_or(0, |e| {
            e.u("pages_bpf").unwrap_or(0) + e.u("pages_user").unwrap_or(0)
        }),
        pages_absent: measured
            .last()
            .and_then(|e| e.u("pages_absent"))
            .unwrap_or(0),
        engine_user_us_per_cycle: (summary_cycles > 0)
            .then(|| ev.summary.u("user_ns").unwrap_or(0) as f64 / summary_cycles as f64 / 1e3),
        handshake,
        bpfckpt,
    })
}

fn create_marker(p: &Path) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
        .map(drop)
        .map_err(|e| format!("handshake server: create {}: {e}", p.display()))
}

/// Answers the target's requests by polling the trigger directory (no
/// sleeping) and creating the completion markers; copies nothing. Relies on
/// the target removing the markers requests-first after each restore
/// (bench_common.rs), so a request still on disk is never answered twice.
/// Returns the cycles served once the target has exited.
fn handshake_serve(p: &mut Proc, dir: &Path, until: Instant) -> Result<u64> {
    /// What the server waits for next.
    enum St {
        CheckpointRequest,
        RestoreRequest,
        Cleanup,
    }
    let ckpt_req = dir.join(CHECKPOINT_REQUEST);
    let ckpt_done = dir.join(CHECKPOINT_DONE);
    let restore_req = dir.join(RESTORE_REQUEST);
    let restore_done = dir.join(RESTORE_DONE);
    let mut st = St::CheckpointRequest;
    let mut served = 0u64;
    let mut polls = 0u32;
    loop {
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(256) {
            if p.exited()? {
                return Ok(served);
            }
            if Instant::now() > until {
                return Err(format!(
                    "handshake server: the target still runs after {served} cycles at the deadline"
                ));
            }
        }
        match st {
            St::CheckpointRequest => {
                if ckpt_req.exists() {
                    create_marker(&ckpt_done)?;
                    st = St::RestoreRequest;
                }
            }
            St::RestoreRequest => {
                if restore_req.exists() {
                    create_marker(&restore_done)?;
                    served += 1;
                    st = St::Cleanup;
                }
            }
            St::Cleanup => {
                if !restore_req.exists() {
                    st = St::CheckpointRequest;
                }
            }
        }
        std::thread::yield_now();
    }
}

// ------------------------------------------------------------------- openat

/// What `bench-openat` repeats: the measured operation and two controls.
const CALLS: [(&str, u64); 3] = [("openat", 1), ("getppid", 5), ("fault", 1)];

struct OpenatResult {
    ops: u64,
    rounds: u32,
    /// Best ns/op per entry of [`CALLS`], alone and while bpfckpt serves.
    alone: [f64; 3],
    traced: [f64; 3],
}

impl OpenatResult {
    fn overhead_of(&self, i: usize) -> f64 {
        self.traced[i] / self.alone[i] - 1.0
    }

    fn overhead(&self) -> f64 {
        self.overhead_of(0)
    }

    fn json(&self) -> Jv {
        let mut v = vec![
            ("ops".into(), Jv::Int(self.ops)),
            ("rounds".into(), Jv::Int(u64::from(self.rounds))),
        ];
        for (i, (name, mult)) in CALLS.iter().enumerate() {
            let (a, t) = if *name == "openat" {
                (
                    "alone_ns_per_op".to_string(),
                    "traced_ns_per_op".to_string(),
                )
            } else {
                (format!("{name}_alone_ns"), format!("{name}_traced_ns"))
            };
            v.push((a, Jv::num(Some(self.alone[i]))));
            v.push((t, Jv::num(Some(self.traced[i]))));
            if *name != "openat" {
                v.push((format!("{name}_ops"), Jv::Int(self.ops * mult)));
                v.push((
                    format!("unrelated_{name}_overhead"),
                    Jv::num(Some(self.overhead_of(i))),
                ));
            }
        }
        Jv::Obj(v)
    }
}

/// Processes named bpfckpt (none of them ours when this is called).
fn other_bpfckpt() -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "bpfckpt").then_some(pid)
        })
        .collect()
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

fn min_into(best: &mut [f64; 3], x: [f64; 3]) {
    for (b, x) in best.iter_mut().zip(x) {
        *b = b.min(x);
    }
}

/// Rounds alternate: alone, then while bpfckpt serves an idle target (a
/// new bpfckpt each round); best of the rounds for each.
fn openat_bench(bins: &Bins, plan: &Plan, warnings: &mut Vec<String>) -> Result<OpenatResult> {
    let mut alone = [f64::INFINITY; 3];
    let mut traced = [f64::INFINITY; 3];
    let mut foreign = Vec::new();
    for _ in 0..plan.openat_rounds {
        foreign.extend(other_bpfckpt());
        min_into(&mut alone, openat_pass(bins, plan.openat_ops)?);
        foreign.extend(other_bpfckpt());

        let dir = TriggerDir::new("idle")?;
        let mut cmd = Command::new(&bins.bpfckpt);
        cmd.args(["run", "--json", "--trigger-dir"])
            .arg(&dir.0)
            .arg("--")
            .arg(bins.bench("bench-idle"));
        let mut p = Proc::start("bpfckpt run -- bench-idle", &mut cmd, true)?;
        // The target prints once it runs, i.e. once bpfckpt serves it.
        p.wait_line(deadline(30), |l| l.contains("\"bench\":\"idle\""))?;
        let t = openat_pass(bins, plan.openat_ops);
        p.close_stdin();
        p.finish(deadline(30))?;
        min_into(&mut traced, t?);
    }
    foreign.sort_unstable();
    foreign.dedup();
    if !foreign.is_empty() {
        warnings.push(format!(
            "other bpfckpt processes ({}) ran during the `alone` openat rounds: their probes \
             slow every openat, so unrelated_openat_overhead is understated",
            foreign
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(OpenatResult {
        ops: plan.openat_ops,
        rounds: plan.openat_rounds,
        alone,
        traced,
    })
}

// ------------------------------------------------------------------ startup

/// Best time from spawning `bpfckpt run --json -- /bin/true` to reading its
/// `start` event, in milliseconds.
fn startup_ms(bin: &Path, tries: u32) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..tries.max(1) {
        // Let the previous instance's deferred teardown (detaching, freeing
        // maps: kernel work after its exit) finish first.
        std::thread::sleep(Duration::from_millis(300));
        let dir = TriggerDir::new("startup")?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--json", "--trigger-dir"])
            .arg(&dir.0)
            .args(["--", "/bin/true"]);
        let t0 = Instant::now();
        let mut p = Proc::start("bpfckpt run -- /bin/true", &mut cmd, false)?;
        let at = p.wait_line_at(deadline(30), |l| {
            Flat::parse(l).and_then(|f| f.s("event").map(|e| e == "start")) == Some(true)
        })?;
        best = best.min(at.duration_since(t0).as_secs_f64() * 1e3);
        p.finish(deadline(30))?;
    }
    Ok(best)
}

/// Whether a 64-bit little-endian ELF file has no program interpreter
/// (no `PT_INTERP` program header): statically linked.
fn elf_is_static(b: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|x| u16::from_le_bytes([x[0], x[1]]) as usize)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8).map(|x| {
            let mut a = [0u8; 8];
            a.copy_from_slice(x);
            u64::from_le_bytes(a) as usize
        })
    };
    if b.get(..6) != Some(&b"\x7fELF\x02\x01"[..]) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != PT_INTERP))
}

// ------------------------------------------------------------------ machine

struct Machine {
    kernel: String,
    cpu: String,
    cores: u64,
    git_commit: String,
    git_dirty: Option<bool>,
    lockdown: String,
    restore_path: String,
    thp: String,
    load_start: String,
    load_end: String,
}

impl Machine {
    fn json(&self) -> Jv {
        Jv::Obj(vec![
            ("kernel".into(), Jv::s(&self.kernel)),
            ("cpu".into(), Jv::s(&self.cpu)),
            ("cores".into(), Jv::Int(self.cores)),
            ("git_commit".into(), Jv::s(&self.git_commit)),
            (
                "git_dirty".into(),
                self.git_dirty.map_or(Jv::Null, Jv::Bool),
            ),
            ("lockdown".into(), Jv::s(&self.lockdown)),
            ("restore_path".into(), Jv::s(&self.restore_path)),
            ("thp".into(), Jv::s(&self.thp)),
            (
                "trigger_base".into(),
                Jv::s(&std::env::temp_dir().display().to_string()),
            ),
            ("loadavg_start".into(), Jv::s(&self.load_start)),
            ("loadavg_end".into(), Jv::s(&self.load_end)),
        ])
    }
}

fn read_trim(p: &str) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The `[selected]` word of a sysfs choice file.
fn selected(p: &str) -> String {
    let s = read_trim(p);
    s.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map_or(s.clone(), str::to_string)
}

fn loadavg() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine_info(ctx: &Ctx, restore_path: &str, load_start: String) -> Machine {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let git = |args: &[&str]| {
        util::run_output(Command::new("git").current_dir(&ctx.root).args(args))
            .ok()
            .map(|s| s.trim().to_string())
    };
    Machine {
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
        git_commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        git_dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        lockdown: selected("/sys/kernel/security/lockdown"),
        restore_path: restore_path.to_string(),
        thp: selected("/sys/kernel/mm/transparent_hugepage/enabled"),
        load_start,
        load_end: loadavg(),
    }
}

// ------------------------------------------------------------------ targets

struct Target {
    metric: String,
    value: Option<f64>,
    ge: bool,
    bar: f64,
    /// The value is a timing taken while other processes kept the machine
    /// busy (see [`BUSY`]).
    busy: bool,
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

    fn met(&self) -> Option<bool> {
        self.value.map(|v| {
            if self.ge {
                v >= self.bar
            } else {
                v <= self.bar
            }
        })
    }

    fn op(&self) -> &'static str {
        if self.ge { ">=" } else { "<=" }
    }

    fn json(&self) -> Jv {
        Jv::Obj(vec![
            ("metric".into(), Jv::s(&self.metric)),
            ("value".into(), Jv::num(self.value)),
            ("op".into(), Jv::s(self.op())),
            ("bar".into(), Jv::num(Some(self.bar))),
            ("met".into(), self.met().map_or(Jv::Null, Jv::Bool)),
            ("busy_machine".into(), Jv::Bool(self.busy)),
        ])
    }
}

// -------------------------------------------------------------------- table

struct TableInput<'a> {
    plan: &'a Plan,
    steps: &'a [Step],
    bpfckpt: &'a Path,
    machine: &'a Machine,
    sizes: &'a [SizeResult],
    cycle: &'a CycleResult,
    openat: &'a OpenatResult,
    startup: f64,
    startup_static: Option<f64>,
    static_mib: Option<f64>,
    kbpsb: Option<f64>,
    targets: &'a [Target],
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn print_table(t: &TableInput<'_>) {
    let m = t.machine;
    let dirty = match m.git_dirty {
        Some(true) => " (uncommitted changes)",
        _ => "",
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nbpfckpt bench{}: kernel {}, {}, {} cores, restore path {}, commit {}{dirty}",
        if t.plan.smoke {
            " SMOKE (debug build, tiny sizes: timings mean nothing)"
        } else {
            ""
        },
        m.kernel,
        m.cpu,
        m.cores,
        m.restore_path,
        m.git_commit.get(..12).unwrap_or(&m.git_commit),
    );
    let _ = writeln!(
        s,
        "engine {}; load average at start {} / end {}",
        t.bpfckpt.display(),
        m.load_start,
        m.load_end
    );
    let _ = writeln!(
        s,
        "{:<44} {:>12}  {:<10} {:>10}  status",
        "metric", "value", "unit", "target"
    );
    let _ = writeln!(s, "{}", "-".repeat(88));
    let row = |s: &mut String, name: &str, v: Option<f64>, unit: &str| {
        let target = t.targets.iter().find(|x| x.metric == name);
        let (bar, status) = match target {
            None => (String::new(), ""),
            Some(x) => (
                format!("{} {}", x.op(), x.bar),
                match (x.met(), x.busy) {
                    (Some(true), false) => "met",
                    (Some(false), false) => "MISSED",
                    (Some(true), true) => "met (busy machine)",
                    (Some(false), true) => "MISSED (busy machine)",
                    (None, _) => "n/a",
                },
            ),
        };
        let _ = writeln!(
            s,
            "{:<44} {:>12}  {:<10} {:>10}  {}",
            name,
            fmt_num(v),
            unit,
            bar,
            status
        );
    };
    for z in t.sizes {
        let rows = [
            ("checkpoint_gbps", z.checkpoint_gbps(), "GB/s"),
            ("checkpoint_e2e_gbps", max(&z.ckpt_e2e_gbps), "GB/s"),
            ("restore_gbps", z.restore_gbps(), "GB/s"),
            ("memcpy_gbps", Some(z.memcpy_gbps), "GB/s"),
            ("process_vm_readv_gbps", Some(z.vm_read_gbps), "GB/s"),
            ("process_vm_writev_gbps", Some(z.vm_write_gbps), "GB/s"),
            (
                "process_vm_writev_4k_gbps",
                Some(z.vm_write_4k_gbps),
                "GB/s",
            ),
            ("checkpoint_vs_memcpy", z.checkpoint_vs_memcpy(), "ratio"),
            ("restore_vs_memcpy", z.restore_vs_memcpy(), "ratio"),
        ];
        for (name, v, unit) in rows {
            row(&mut s, &format!("{}.{name}", z.label), v, unit);
        }
    }
    let c = t.cycle;
    row(&mut s, "cycle_rate", c.bpfckpt.rate(), "cycles/s");
    row(&mut s, "handshake_rate", c.handshake.rate(), "cycles/s");
    row(&mut s, "cycle_rate_vs_handshake", c.ratio(), "ratio");
    row(&mut s, "openat alone", Some(t.openat.alone[0]), "ns/op");
    row(
        &mut s,
        "openat while bpfckpt serves",
        Some(t.openat.traced[0]),
        "ns/op",
    );
    row(
        &mut s,
        "unrelated_openat_overhead",
        Some(t.openat.overhead()),
        "fraction",
    );
    for (i, (name, _)) in CALLS.iter().enumerate().skip(1) {
        row(
            &mut s,
            &format!("  control: unrelated_{name}_overhead"),
            Some(t.openat.overhead_of(i)),
            "fraction",
        );
    }
    row(&mut s, "startup_ms", Some(t.startup), "ms");
    row(&mut s, "startup_ms_static", t.startup_static, "ms");
    row(&mut s, "static_binary_mib", t.static_mib, "MiB");
    row(&mut s, "kernel_bytes_per_saved_byte", t.kbpsb, "ratio");
    let _ = writeln!(s, "{}", "-".repeat(88));
    for z in t.sizes {
        let _ = writeln!(
            s,
            "{}: medians: checkpoint {} ms in BPF, {} ms seen by the target; restore {} ms; \
             {} of {} checkpoints copied wholly by BPF, {} held; {} restores held",
            z.label,
            fmt_num(median(&z.ckpt_kernel_ms)),
            fmt_num(median(&z.ckpt_latency_ms)),
            fmt_num(median(&z.restore_latency_ms)),
            z.ckpt_pure,
            z.cycles,
            z.ckpt_held,
            z.restore_held,
        );
    }
    let _ = writeln!(
        s,
        "cycle: bpfckpt {} cycles: checkpoint {} us avg ({} us in BPF, {} held, {} pages saved, {} absent), \
         restore {} us avg, engine user time {} us/cycle; handshake {} cycles: checkpoint {} us, restore {} us",
        c.bpfckpt.cycles,
        fmt_num(c.bpfckpt.avg_us(c.bpfckpt.ckpt_ns)),
        fmt_num(c.ckpt_kernel_us),
        c.ckpt_held,
        c.pages_saved,
        c.pages_absent,
        fmt_num(c.bpfckpt.avg_us(c.bpfckpt.restore_ns)),
        fmt_num(c.engine_user_us_per_cycle),
        c.handshake.cycles,
        fmt_num(c.handshake.avg_us(c.handshake.ckpt_ns)),
        fmt_num(c.handshake.avg_us(c.handshake.restore_ns)),
    );
    let steps: Vec<String> = t
        .steps
        .iter()
        .map(|st| {
            let other = st
                .other_cpu
                .map_or(String::new(), |o| format!(", others {:.0}% CPU", o * 100.0));
            format!("{} {:.1} s{other}", st.name, st.seconds)
        })
        .collect();
    let _ = writeln!(s, "steps: {}", steps.join("; "));
    print!("{s}");
}

// ---------------------------------------------------------------- statistics

fn max(v: &[f64]) -> Option<f64> {
    v.iter()
        .copied()
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

fn median(v: &[f64]) -> Option<f64> {
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

// ---------------------------------------------------------------- processes

fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// A private trigger directory (mode 0700), removed on drop.
struct TriggerDir(PathBuf);

impl TriggerDir {
    fn new(tag: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "bpfckpt-bench-{}-{tag}-{nanos}",
            std::process::id()
        ));
        DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .map_err(|e| format!("create trigger dir {}: {e}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TriggerDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process whose stdout lines are read (and timestamped) by a
/// thread; stopped on drop if still running.
struct Proc {
    what: String,
    child: Child,
    lines: Receiver<(Instant, String)>,
    stderr: Receiver<String>,
    got: Vec<String>,
}

impl Proc {
    fn start(what: &str, cmd: &mut Command, stdin: bool) -> Result<Self> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {what} ({:?}): {e}", cmd.get_program()))?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: no pipes"));
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            let _ = etx.send(s);
        });
        Ok(Self {
            what: what.to_string(),
            child,
            lines,
            stderr,
            got: Vec::new(),
        })
    }

    /// Reads stdout until a line matches; returns when it was read.
    fn wait_line_at(&mut self, until: Instant, want: impl Fn(&str) -> bool) -> Result<Instant> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, l)) => {
                    let hit = want(&l);
                    self.got.push(l);
                    if hit {
                        return Ok(at);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.stop();
                    let r = self.report();
                    return Err(format!(
                        "{}: the expected output did not come in time{r}",
                        self.what
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop();
                    let r = self.report();
                    return Err(format!("{}: output ended early{r}", self.what));
                }
            }
        }
    }

    fn wait_line(&mut self, until: Instant, want: impl Fn(&str) -> bool) -> Result<()> {
        self.wait_line_at(until, want).map(drop)
    }

    fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    fn exited(&mut self) -> Result<bool> {
        self.child
            .try_wait()
            .map(|s| s.is_some())
            .map_err(|e| format!("{}: wait: {e}", self.what))
    }

    /// Waits for the exit (stopping the process at `until`); returns every
    /// stdout line, or an error with the output's tail if it failed.
    fn finish(mut self, until: Instant) -> Result<Vec<String>> {
        self.close_stdin();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) => {}
                Err(e) => return Err(format!("{}: wait: {e}", self.what)),
            }
            if Instant::now() > until {
                self.stop();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // A grandchild may keep the pipes open: don't wait for it forever.
        let grace = Instant::now() + Duration::from_secs(3);
        while let Ok((_, l)) = self
            .lines
            .recv_timeout(grace.saturating_duration_since(Instant::now()))
        {
            self.got.push(l);
        }
        match status {
            Some(st) if st.success() => Ok(std::mem::take(&mut self.got)),
            Some(st) => {
                let r = self.report();
                Err(format!("{} failed ({st}){r}", self.what))
            }
            None => {
                let r = self.report();
                Err(format!("{} did not finish in time{r}", self.what))
            }
        }
    }

    /// The tail of what the process printed, for error messages.
    fn report(&mut self) -> String {
        let err = self
            .stderr
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default();
        let mut s = String::new();
        let out = tail(&self.got);
        if !out.is_empty() {
            let _ = write!(s, "\n--- stdout (tail)\n{out}");
        }
        let err_lines: Vec<String> = err.lines().map(str::to_string).collect();
        let err = tail(&err_lines);
        if !err.is_empty() {
            let _ = write!(s, "\n--- stderr (tail)\n{err}");
        }
        s
    }

    /// SIGTERM (bpfckpt then ends its session and its target), then SIGKILL.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(lines: &[String]) -> String {
    let from = lines.len().saturating_sub(15);
    lines[from..].join("\n")
}

// ----------------------------------------------------------- parsing output

/// A flat JSON object (numbers, strings, booleans, null), as bpfckpt's
/// events and the bench targets' result lines are.
struct Flat(Vec<(String, Fv)>);

enum Fv {
    N(f64),
    S(String),
    B(bool),
    Null,
}

impl Flat {
    fn parse(line: &str) -> Option<Self> {
        let mut p = FlatParser {
            s: line.trim().as_bytes(),
            i: 0,
        };
        p.object()
    }

    fn get(&self, k: &str) -> Option<&Fv> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    fn u(&self, k: &str) -> Option<u64> {
        match self.get(k)? {
            Fv::N(n) if *n >= 0.0 => Some(*n as u64),
            _ => None,
        }
    }

    fn need_u(&self, k: &str) -> Result<u64> {
        self.u(k)
            .ok_or_else(|| format!("no number `{k}` in {}", self.show()))
    }

    fn s(&self, k: &str) -> Option<&str> {
        match self.get(k)? {
            Fv::S(s) => Some(s),
            _ => None,
        }
    }

    fn b(&self, k: &str) -> Option<bool> {
        match self.get(k)? {
            Fv::B(b) => Some(*b),
            _ => None,
        }
    }

    fn show(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| match v {
                Fv::N(n) => format!("{k}={n}"),
                Fv::S(s) => format!("{k}={s:?}"),
                Fv::B(b) => format!("{k}={b}"),
                Fv::Null => format!("{k}=null"),
            })
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

struct FlatParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl FlatParser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.s.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn object(&mut self) -> Option<Flat> {
        self.eat(b'{')?;
        let mut v = Vec::new();
        if self.eat(b'}').is_some() {
            return Some(Flat(v));
        }
        loop {
            self.ws();
            let k = self.string()?;
            self.eat(b':')?;
            v.push((k, self.value()?));
            if self.eat(b',').is_some() {
                continue;
            }
            self.eat(b'}')?;
            self.ws();
            return (self.i == self.s.len()).then_some(Flat(v));
        }
    }

    fn string(&mut self) -> Option<String> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'u' => {
                            let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                            self.i += 4;
                            let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                            let mut b = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn value(&mut self) -> Option<Fv> {
        self.ws();
        let rest = self.s.get(self.i..)?;
        for (word, v) in [
            (&b"true"[..], Fv::B(true)),
            (b"false", Fv::B(false)),
            (b"null", Fv::Null),
        ] {
            if rest.starts_with(word) {
                self.i += word.len();
                return Some(v);
            }
        }
        if rest.first() == Some(&b'"') {
            return self.string().map(Fv::S);
        }
        let n = rest
            .iter()
            .take_while(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
            .count();
        let t = std::str::from_utf8(&rest[..n]).ok()?;
        let v = t.parse::<f64>().ok()?;
        self.i += n;
        Some(Fv::N(v))
    }
}

/// bpfckpt's JSON events for one `run`.
struct Events {
    restore_path: String,
    checkpoints: Vec<Flat>,
    restores: Vec<Flat>,
    /// The per-target summary.
    summary: Flat,
}

impl Events {
    fn parse(lines: &[String]) -> Result<Self> {
        let mut restore_path = String::new();
        let mut checkpoints = Vec::new();
        let mut restores = Vec::new();
        let mut summary = None;
        for l in lines {
            let Some(f) = Flat::parse(l) else { continue };
            match f.s("event") {
                Some("start") => restore_path = f.s("restore_path").unwrap_or("?").to_string(),
                Some("checkpoint") => checkpoints.push(f),
                Some("restore") => restores.push(f),
                Some("summary") if f.s("scope").is_some_and(|s| s.starts_with("pid ")) => {
                    summary = Some(f)
                }
                _ => {}
            }
        }
        let summary = summary
            .ok_or_else(|| format!("bpfckpt printed no per-target summary\n{}", tail(lines)))?;
        Ok(Self {
            restore_path,
            checkpoints,
            restores,
            summary,
        })
    }
}

fn bench_lines(lines: &[String], kind: &str) -> Vec<Flat> {
    lines
        .iter()
        .filter_map(|l| Flat::parse(l))
        .filter(|f| f.s("bench") == Some(kind))
        .collect()
}

fn bench_line(lines: &[String], kind: &str) -> Result<Flat> {
    bench_lines(lines, kind)
        .pop()
        .ok_or_else(|| format!("no `{kind}` result line in the output\n{}", tail(lines)))
}

// ------------------------------------------------------------- JSON output

enum Jv {
    Null,
    Bool(bool),
    Int(u64),
    Num(f64),
    Str(String),
    Arr(Vec<Jv>),
    Obj(Vec<(String, Jv)>),
}

impl Jv {
    fn s(s: &str) -> Self {
        Jv::Str(s.to_string())
    }

    /// A finite number, else null.
    fn num(v: Option<f64>) -> Self {
        match v {
            Some(v) if v.is_finite() => Jv::Num(v),
            _ => Jv::Null,
        }
    }

    fn pretty(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }

    fn write(&self, s: &mut String, depth: usize) {
        let pad = |s: &mut String, d: usize| s.push_str(&"  ".repeat(d));
        match self {
            Jv::Null => s.push_str("null"),
            Jv::Bool(b) => {
                let _ = write!(s, "{b}");
            }
            Jv::Int(n) => {
                let _ = write!(s, "{n}");
            }
            Jv::Num(v) => {
                // Six decimals, trailing zeros trimmed: readable and exact enough.
                let t = format!("{v:.6}");
                let t = t.trim_end_matches('0').trim_end_matches('.');
                s.push_str(if t.is_empty() || t == "-" { "0" } else { t });
            }
            Jv::Str(t) => json_str(s, t),
            Jv::Arr(a) if a.is_empty() => s.push_str("[]"),
            Jv::Arr(a) => {
                s.push_str("[\n");
                for (i, v) in a.iter().enumerate() {
                    pad(s, depth + 1);
                    v.write(s, depth + 1);
                    s.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
                }
                pad(s, depth);
                s.push(']');
            }
            Jv::Obj(o) if o.is_empty() => s.push_str("{}"),
            Jv::Obj(o) => {
                s.push_str("{\n");
                for (i, (k, v)) in o.iter().enumerate() {
                    pad(s, depth + 1);
                    json_str(s, k);
                    s.push_str(": ");
                    v.write(s, depth + 1);
                    s.push_str(if i + 1 < o.len() { ",\n" } else { "\n" });
                }
                pad(s, depth);
                s.push('}');
            }
        }
    }
}

fn json_str(s: &mut String, t: &str) {
    s.push('"');
    for c in t.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

// --------------------------------------------------------------------- time

struct Utc {
    y: i64,
    mo: u32,
    d: u32,
    h: u64,
    mi: u64,
    s: u64,
}

impl Utc {
    fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.y, self.mo, self.d, self.h, self.mi, self.s
        )
    }

    /// For file names: no colons.
    fn file(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}Z",
            self.y, self.mo, self.d, self.h, self.mi, self.s
        )
    }
}

/// Seconds since the epoch to the UTC calendar (Howard Hinnant's
/// days-to-civil algorithm).
fn utc(secs: u64) -> Utc {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(mo <= 2);
    Utc {
        y,
        mo,
        d,
        h: rem / 3600,
        mi: rem % 3600 / 60,
        s: rem % 60,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_known_dates() {
        assert_eq!(utc(0).iso(), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400).iso(), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_767_225_599).file(), "2025-12-31T23-59-59Z");
    }

    #[test]
    fn flat_json_events() {
        let f = Flat::parse(
            r#"{"event":"checkpoint","pid":7,"pages_bpf":16401,"held":true,"x":null,"s":"a\"b\u0041"}"#,
        )
        .expect("parses");
        assert_eq!(f.s("event"), Some("checkpoint"));
        assert_eq!(f.u("pages_bpf"), Some(16401));
        assert_eq!(f.b("held"), Some(true));
        assert_eq!(f.s("s"), Some("a\"bA"));
        assert!(f.need_u("missing").is_err());
        assert!(Flat::parse("FAIL something").is_none());
        assert!(Flat::parse(r#"{"a":1} trailing"#).is_none());
        assert!(Flat::parse(r#"{"a":"#).is_none());
    }

    #[test]
    fn json_output_and_stats() {
        let j = Jv::Obj(vec![
            ("a".into(), Jv::num(Some(1.5))),
            ("b".into(), Jv::num(Some(f64::NAN))),
            ("c".into(), Jv::Arr(vec![Jv::Int(2), Jv::s("x\n")])),
            ("d".into(), Jv::num(Some(2.0))),
        ])
        .pretty();
        assert_eq!(
            j,
            "{\n  \"a\": 1.5,\n  \"b\": null,\n  \"c\": [\n    2,\n    \"x\\u000a\"\n  ],\n  \"d\": 2\n}\n"
        );
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(max(&[]), None);
        assert_eq!(max(&[1.0, 3.0, 2.0]), Some(3.0));
        let t = Target::le("x".into(), Some(1.0), 2.0);
        assert_eq!(t.met(), Some(true));
        assert_eq!(Target::ge("y".into(), None, 1.0).met(), None);
    }
}
