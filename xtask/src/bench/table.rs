//! The table printed at the end of a run: a header with the machine, one
//! row per metric (with its target and status), then medians and counts.
//! A figure repeated in the run (cycles, rounds, tries) shows its best
//! repetition under `value` (what a target judges) and the median of the
//! same repetitions under `median`; a figure measured once has no median.

use super::dirty::DirtyResult;
use super::kmem;
use super::openat::{CALLS, OPENAT};
use super::stats::{Fig, median};
use super::targets::Target;
use super::{MIB, Outcome};
use std::fmt::Write as _;

/// Separates the rows from the header and the details.
const RULE: usize = 101;

pub fn print(out: &Outcome) {
    let mut s = String::new();
    header(&mut s, out);
    let mut t = Rows {
        s: &mut s,
        targets: &out.targets,
    };
    size_rows(&mut t, out);
    other_rows(&mut t, out);
    let _ = writeln!(s, "{}", "-".repeat(RULE));
    details(&mut s, out);
    print!("{s}");
}

pub fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.3}"),
        Some(v) => format!("{v:.4}"),
    }
}

fn header(s: &mut String, out: &Outcome) {
    let m = &out.machine;
    let dirty = match m.git_dirty {
        Some(true) => " (uncommitted changes)",
        _ => "",
    };
    let _ = writeln!(
        s,
        "\nbpfckpt bench{}: kernel {}, {}, {} cores, restore path {}, commit {}{dirty}",
        if out.plan.smoke {
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
        out.engine.display(),
        m.load_start,
        m.load_end
    );
    let _ = writeln!(
        s,
        "{:<44} {:>12} {:>12}  {:<10} {:>10}  status",
        "metric", "value", "median", "unit", "target"
    );
    let _ = writeln!(s, "{}", "-".repeat(RULE));
}

/// Metric rows, each with its target's bar and status if it has one.
struct Rows<'a> {
    s: &'a mut String,
    targets: &'a [Target],
}

impl Rows<'_> {
    /// A figure measured once.
    fn row(&mut self, name: &str, v: Option<f64>, unit: &str) {
        self.line(name, fmt_num(v), String::new(), unit);
    }

    /// A repeated figure: its best and its median.
    fn fig(&mut self, name: &str, f: Fig, unit: &str) {
        self.line(name, fmt_num(f.best), fmt_num(f.median), unit);
    }

    fn line(&mut self, name: &str, value: String, median: String, unit: &str) {
        let target = self.targets.iter().find(|x| x.metric == name);
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
            self.s,
            "{:<44} {:>12} {:>12}  {:<10} {:>10}  {}",
            name, value, median, unit, bar, status
        );
    }
}

fn size_rows(t: &mut Rows<'_>, out: &Outcome) {
    for z in &out.sizes {
        let b = &z.base;
        // As the target sees them first; the BPF copy alone last.
        let rows = [
            ("", "checkpoint_e2e_gbps", z.checkpoint_e2e(), "GB/s"),
            (
                "",
                "checkpoint_e2e_vs_memcpy",
                z.checkpoint_e2e_vs_memcpy(),
                "ratio",
            ),
            ("", "restore_gbps", z.restore(), "GB/s"),
            ("", "restore_vs_memcpy", z.restore_vs_memcpy(), "ratio"),
            ("", "memcpy_gbps", b.memcpy, "GB/s"),
            ("", "process_vm_readv_gbps", b.vm_read, "GB/s"),
            ("", "process_vm_writev_gbps", b.vm_write, "GB/s"),
            ("", "process_vm_writev_4k_gbps", b.vm_write_4k, "GB/s"),
            (
                "  ",
                "checkpoint_gbps (BPF, untracked)",
                z.checkpoint_bpf(),
                "GB/s",
            ),
            (
                "  ",
                "checkpoint_vs_memcpy (BPF, untracked)",
                z.checkpoint_vs_memcpy(),
                "ratio",
            ),
        ];
        for (indent, name, f, unit) in rows {
            t.fig(&format!("{indent}{}.{name}", z.label), f, unit);
        }
    }
}

fn other_rows(t: &mut Rows<'_>, out: &Outcome) {
    let c = &out.cycle;
    let o = &out.openat;
    t.row("cycle_rate", c.bpfckpt.rate(), "cycles/s");
    t.row("handshake_rate", c.handshake.rate(), "cycles/s");
    t.row("cycle_rate_vs_handshake", c.ratio(), "ratio");
    dirty_rows(t, &out.dirty);
    t.fig("openat alone", o.alone[OPENAT], "ns/op");
    t.fig("openat while bpfckpt serves", o.traced[OPENAT], "ns/op");
    t.fig("unrelated_openat_overhead", o.overhead(), "fraction");
    for (i, (name, _)) in CALLS.iter().enumerate().skip(1) {
        t.fig(
            &format!("  control: unrelated_{name}_overhead"),
            o.overhead_of(i),
            "fraction",
        );
    }
    t.fig("startup_ms", out.startup, "ms");
    t.fig("startup_ms_static", out.startup_static, "ms");
    t.row("static_binary_mib", out.binary.mib, "MiB");
    t.row(
        "kernel_bytes_per_saved_byte",
        out.kernel_bytes_per_saved_byte(),
        "ratio",
    );
}

/// Per cell: bpfckpt's rate, its baselines' and the ratios judged; per
/// written size: the cost of a dirty page; then `process_vm_writev`'s.
fn dirty_rows(t: &mut Rows<'_>, d: &DirtyResult) {
    for c in &d.cells {
        let l = c.label();
        t.row(&format!("dirty.{l}.rate"), c.bpfckpt.rate(), "cycles/s");
        t.row(
            &format!("  dirty.{l}.forkserver_rate"),
            c.forkserver.rate(),
            "cycles/s",
        );
        t.row(
            &format!("  dirty.{l}.handshake_rate"),
            c.handshake.rate(),
            "cycles/s",
        );
        t.row(
            &format!("dirty.{l}.vs_forkserver"),
            c.vs_forkserver(),
            "ratio",
        );
        t.row(
            &format!("dirty.{l}.vs_handshake"),
            c.vs_handshake(),
            "ratio",
        );
        t.row(
            &format!("  dirty.{l}.vs_forkserver_median"),
            c.vs_forkserver_median(),
            "ratio",
        );
        t.row(
            &format!("  dirty.{l}.vs_handshake_median"),
            c.vs_handshake_median(),
            "ratio",
        );
    }
    for w in d.written() {
        t.row(
            &format!("dirty.{w}.cost_per_dirty_page_ns"),
            d.cost_per_dirty_page_ns(w),
            "ns",
        );
        t.row(
            &format!("  dirty.{w}.cost_vs_process_vm_writev"),
            d.cost_vs_process_vm_writev(w),
            "ratio",
        );
        t.row(
            &format!("  dirty.{w}.same_pages_process_vm_writev_ns"),
            d.same_pages_pvw_ns(w),
            "ns",
        );
        t.row(
            &format!("  dirty.{w}.cost_vs_same_pages"),
            d.cost_vs_same_pages_pvw(w),
            "ratio",
        );
    }
    if !d.cells.is_empty() {
        t.fig("process_vm_writev_page_ns", d.pvw_page_ns, "ns");
    }
}

/// One line per cell: the latencies and pages behind its rates.
fn dirty_details(s: &mut String, d: &DirtyResult) {
    for c in &d.cells {
        let (b, f, h) = (&c.bpfckpt, &c.forkserver, &c.handshake);
        let _ = writeln!(
            s,
            "dirty {}: bpfckpt {} cycles: checkpoint {} us avg, restore {} us avg seen by the target, \
             medians {} pages saved / {} restored, {} checkpoints and {} restores held; \
             fork server {} cycles: fork {} us, wait {} us; handshake {} cycles; \
             process_vm_writev of the same pages {} cycles: write {} us avg (best runs); \
             rates of the {} repetitions (bpfckpt / fork server / handshake): {}",
            c.label(),
            b.cycles,
            fmt_num(b.avg_us(b.ckpt_ns)),
            fmt_num(b.avg_us(b.restore_ns)),
            fmt_num(c.pages_saved),
            fmt_num(c.pages_restored),
            c.checkpoints_held,
            c.restores_held,
            f.cycles,
            fmt_num(f.avg_us(f.ckpt_ns)),
            fmt_num(f.avg_us(f.restore_ns)),
            h.cycles,
            c.pvw.cycles,
            fmt_num(c.pvw.avg_us(c.pvw.restore_ns)),
            c.rates.len(),
            c.rates
                .iter()
                .map(|r| r.map(fmt_num).join(" / "))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
}

/// The kernel memory of bpfckpt's maps in the run that gives
/// `kernel_bytes_per_saved_byte`, map by map.
fn kernel_memory(s: &mut String, out: &Outcome) {
    let Some(z) = out.store() else { return };
    let Some(maps) = &z.maps else { return };
    let mib = |b: u64| b as f64 / MIB as f64;
    let _ = writeln!(
        s,
        "{}: kernel memory of bpfckpt's {} maps (fdinfo memlock) {:.3} MiB for {:.3} MiB saved \
         (the store by the engine's formula: {} per saved byte):",
        z.label,
        maps.len(),
        mib(kmem::total(maps)),
        mib(z.saved_bytes()),
        fmt_num(z.store_formula_per_saved_byte()),
    );
    let total = kmem::total(maps).max(1) as f64;
    for m in maps {
        let name = if m.name.is_empty() { "?" } else { &m.name };
        let _ = writeln!(
            s,
            "  {:<16} {:<14} {:>12} B {:>5.1}%  {} x {} B",
            name,
            m.type_name(),
            m.bytes,
            m.bytes as f64 * 100.0 / total,
            m.max_entries,
            m.value_size,
        );
    }
}

/// Medians and counts per size, the cycle's averages, the steps' times.
fn details(s: &mut String, out: &Outcome) {
    for z in &out.sizes {
        let _ = writeln!(
            s,
            "{}: medians: checkpoint {} ms seen by the target ({} ms of BPF copy untracked); restore {} ms \
             seen by the target ({} ms in the probe); {} of {} untracked checkpoints copied wholly \
             by BPF; {} checkpoints and {} restores held",
            z.label,
            fmt_num(median(&z.ckpt_latency_ms)),
            fmt_num(median(&z.ckpt_kernel_ms)),
            fmt_num(median(&z.restore_latency_ms)),
            fmt_num(median(&z.restore_kernel_ms)),
            z.ckpt_pure,
            z.cycles,
            z.ckpt_held,
            z.restore_held,
        );
    }
    kernel_memory(s, out);
    let c = &out.cycle;
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
    dirty_details(s, &out.dirty);
    let steps: Vec<String> = out
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
}
