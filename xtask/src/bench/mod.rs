//! `cargo xtask bench [--smoke] [--bpfckpt PATH]`: measures bpfckpt against
//! its baselines and the performance bar; prints a table and writes
//! JSON.
//!
//! Everything is built first (`--release`, plus the static musl binary; the
//! smoke uses the debug build `cargo xtask test` has just made and does not
//! build the musl binary), and every ratio compares numbers taken in the
//! same run. Throughputs are in GB/s = 1e9 bytes per second. `--bpfckpt`
//! measures another engine binary (A/B comparisons).
//!
//! The run is a sequence of named steps, each timed (see [`steps`]): build,
//! [`memory`] throughput per size, [`cycle`] rate, the cycle rate with a
//! few pages [`dirty`] per cycle of a large written area (against a fork
//! server and the handshake ceiling), [`openat`] overhead and [`startup`];
//! each module says what it measures and how. From the results
//! come the [`targets`] (the performance bar), the [`json`] report and the
//! printed [`table`]. Checkpoint and restore throughputs are headlined as
//! the target sees them (its trigger `openat` until it sees the completion
//! marker); the BPF copy alone is a detail. A figure that is the best of
//! repetitions comes with the median of the same repetitions. Also
//! reported:
//! - `kernel_bytes_per_saved_byte`: the kernel memory of every BPF map
//!   bpfckpt holds (the sum of their fdinfo `memlock`, see [`kmem`]), read
//!   while the 64 MiB target (smoke: 16 MiB) waits after its last cycle,
//!   divided by the bytes its last checkpoint saved. The per-map breakdown
//!   is in the JSON (`kernel_bytes.maps`) and the table's details; the
//!   engine's own formula for its page store (`peak_store_bytes`) stays
//!   beside it as `kernel_bytes.store_formula_per_saved_byte`.
//!
//! A value that could not be measured is `null` (with a warning). Missed
//! targets never fail the run; a broken step (build, bpfckpt error, wrong
//! restore, unparsable output, timeout) does.

mod cycle;
mod dirty;
mod events;
mod json;
mod kmem;
mod machine;
mod memory;
mod openat;
mod proc;
mod startup;
mod stats;
mod steps;
mod table;
mod targets;
mod time;

use crate::toolchain::MUSL;
use crate::util::{self, Ctx, Result};
use cycle::CycleResult;
use dirty::{DirtyPlan, DirtyResult};
use machine::Machine;
use memory::SizeResult;
use openat::OpenatResult;
use startup::StaticBinary;
use stats::Fig;
use std::fs;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use steps::Step;
use targets::Target;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

const HELP: &str = "\
usage: cargo xtask bench [--smoke] [--bpfckpt PATH]

Measures bpfckpt (throughput, cycle rate, cycle rate with few pages
dirtied against a fork server, overhead, startup, size) and writes
target/bench/latest.json and a dated copy; --smoke runs a quick
version that writes target/bench/smoke.json and asserts no timings.
--bpfckpt measures that engine binary instead of the one just built
(e.g. another commit's, for an A/B comparison; size and static startup
still come from this tree's musl build).";

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
    dirty: DirtyPlan,
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
            dirty: DirtyPlan::full(),
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
            dirty: DirtyPlan::smoke(),
            openat_ops: 20_000,
            openat_rounds: 1,
            startup_tries: 2,
        }
    }

    /// The build profile measured.
    fn profile(&self) -> &'static str {
        if self.smoke { "debug" } else { "release" }
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

/// Everything one run measured and concluded: what the JSON report and the
/// table are made of.
struct Outcome {
    plan: Plan,
    engine: PathBuf,
    steps: Vec<Step>,
    machine: Machine,
    sizes: Vec<SizeResult>,
    cycle: CycleResult,
    dirty: DirtyResult,
    openat: OpenatResult,
    startup: Fig,
    startup_static: Fig,
    binary: StaticBinary,
    targets: Vec<Target>,
    warnings: Vec<String>,
    runtime: f64,
}

impl Outcome {
    /// The run that gives `kernel_bytes_per_saved_byte`.
    fn store(&self) -> Option<&SizeResult> {
        self.sizes.iter().find(|s| s.label == self.plan.store_size)
    }

    fn kernel_bytes_per_saved_byte(&self) -> Option<f64> {
        self.store()
            .and_then(SizeResult::kernel_bytes_per_saved_byte)
    }
}

// -------------------------------------------------------------- entry point

pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    let Some((smoke, engine)) = parse_args(args)? else {
        eprintln!("{HELP}");
        return Ok(());
    };
    if !util::is_root() {
        return Err("bench: needs root (bpfckpt loads BPF programs)".into());
    }
    let plan = if smoke { Plan::smoke() } else { Plan::full() };
    let t_all = Instant::now();
    let mut steps = Vec::new();
    let bins = build(ctx, &plan, engine, &mut steps)?;
    let out = measure(ctx, plan, bins, steps, t_all)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let written = json::write(&out, &ctx.target_dir().join("bench"), time::utc(now))?;
    table::print(&out);
    for w in &out.warnings {
        eprintln!("xtask: bench: warning: {w}");
    }
    for p in &written {
        println!("wrote {}", p.display());
    }
    println!(
        "bench {} took {:.1} s",
        if out.plan.smoke { "smoke" } else { "run" },
        out.runtime
    );
    Ok(())
}

/// `(smoke, engine)`, or `None` for `--help`.
fn parse_args(args: &[String]) -> Result<Option<(bool, Option<PathBuf>)>> {
    let mut smoke = false;
    let mut engine = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--bpfckpt" => {
                let p = it.next().ok_or("bench: --bpfckpt needs a path")?;
                let p = fs::canonicalize(p).map_err(|e| format!("bench: --bpfckpt {p}: {e}"))?;
                engine = Some(p);
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("bench: unknown argument `{other}` (try --help)")),
        }
    }
    Ok(Some((smoke, engine)))
}

/// Runs one named step: its banner, then `f`, timed and recorded.
fn step<T>(
    steps: &mut Vec<Step>,
    banner: &str,
    name: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let st = Step::begin(name);
    util::step(banner);
    let r = f()?;
    steps.push(st.end());
    Ok(r)
}

/// The `build` step: the engine and the bench targets of the measured
/// profile (and, for the full run, the static musl binary).
fn build(ctx: &Ctx, plan: &Plan, engine: Option<PathBuf>, steps: &mut Vec<Step>) -> Result<Bins> {
    let target = ctx.target_dir();
    let profile = plan.profile();
    let (banner, musl) = if plan.smoke {
        ("bench smoke: build (debug)", false)
    } else {
        ("bench: build (release, and the static musl binary)", true)
    };
    step(steps, banner, "build", || {
        if musl {
            ctx.cargo(&["build", "--release", "-p", "bpfckpt", "-p", "bpfckpt-tests"])?;
            ctx.cargo(&["build", "--release", "--target", MUSL, "-p", "bpfckpt"])
        } else {
            ctx.cargo(&["build", "-p", "bpfckpt", "-p", "bpfckpt-tests"])
        }
    })?;
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
    Ok(bins)
}

/// The measuring steps, then what follows from them.
fn measure(
    ctx: &Ctx,
    plan: Plan,
    bins: Bins,
    mut steps: Vec<Step>,
    t_all: Instant,
) -> Result<Outcome> {
    let mut warnings = Vec::new();
    let load_start = machine::loadavg();
    let foreign = proc::other_bpfckpt();
    if !foreign.is_empty() {
        warnings.push(format!(
            "other bpfckpt processes were running when the bench started ({}): their probes \
             run on every process's system calls and page faults, so all timings are affected",
            proc::pid_list(&foreign)
        ));
    }
    let mut sizes = Vec::new();
    for size in &plan.sizes {
        let banner = format!("bench: {} throughput", size.label);
        let r = step(
            &mut steps,
            &banner,
            &format!("throughput {}", size.label),
            || {
                memory::mem_bench(&bins, size, plan.base_reps, &mut warnings)
                    .map_err(|e| format!("bench ({}): {e}", size.label))
            },
        )?;
        sizes.push(r);
    }
    let cycle = step(&mut steps, "bench: cycle rate", "cycle rate", || {
        cycle::cycle_bench(&bins, &plan).map_err(|e| format!("bench (cycle rate): {e}"))
    })?;
    let dirty = dirty::dirty_bench(&bins, &plan.dirty, &mut steps)?;
    let openat = step(
        &mut steps,
        "bench: unrelated openat overhead",
        "openat overhead",
        || {
            openat::openat_bench(&bins, &plan, &mut warnings)
                .map_err(|e| format!("bench (openat): {e}"))
        },
    )?;
    let (startup, startup_static) = step(&mut steps, "bench: startup", "startup", || {
        startup::both(&bins, plan.startup_tries)
    })?;
    for s in steps.iter().skip(1) {
        if let Some(o) = s.other_cpu.filter(|_| s.busy()) {
            warnings.push(format!(
                "other processes kept {:.0}% of the CPUs busy during `{}`: its timings are likely pessimistic",
                o * 100.0,
                s.name
            ));
        }
    }
    let binary = startup::static_binary(&bins.static_bpfckpt, plan.smoke, &mut warnings)?;
    let restore_path = sizes
        .first()
        .map(|s| s.restore_path.clone())
        .unwrap_or_default();
    let mut out = Outcome {
        machine: machine::machine_info(ctx, &restore_path, load_start),
        plan,
        engine: bins.bpfckpt,
        steps,
        sizes,
        cycle,
        dirty,
        openat,
        startup,
        startup_static,
        binary,
        targets: Vec::new(),
        warnings,
        runtime: 0.0,
    };
    out.targets = targets::evaluate(&out);
    out.runtime = t_all.elapsed().as_secs_f64();
    Ok(out)
}
