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
//! A value that could not be measured is `null`.

use super::cycle::{CycleResult, CycleRun};
use super::machine::Machine;
use super::memory::SizeResult;
use super::openat::{CALLS, OpenatResult};
use super::stats::{max, median};
use super::targets::Target;
use super::time::Utc;
use super::{Outcome, PAGE};
use crate::util::Result;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Writes the report into `dir`; returns the files written.
pub fn write(out: &Outcome, dir: &Path, stamp: Utc) -> Result<Vec<PathBuf>> {
    let json = report(out, &stamp).pretty();
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

fn report(out: &Outcome, stamp: &Utc) -> Jv {
    let steps = &out.steps;
    let mut root = vec![
        ("schema".to_string(), Jv::Int(1)),
        (
            "mode".into(),
            Jv::s(if out.plan.smoke { "smoke" } else { "full" }),
        ),
        ("profile".into(), Jv::s(out.plan.profile())),
        ("timestamp_utc".into(), Jv::s(&stamp.iso())),
        ("runtime_s".into(), Jv::num(Some(out.runtime))),
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
            Jv::s(&out.engine.display().to_string()),
        ),
        ("machine".into(), machine(&out.machine)),
        (
            "sizes".into(),
            Jv::Arr(out.sizes.iter().map(|s| Jv::s(s.label)).collect()),
        ),
    ];
    for s in &out.sizes {
        root.push((s.label.to_string(), size(s)));
    }
    let c = &out.cycle;
    root.push(("cycle_rate".into(), Jv::num(c.bpfckpt.rate())));
    root.push(("handshake_rate".into(), Jv::num(c.handshake.rate())));
    root.push(("cycle_rate_vs_handshake".into(), Jv::num(c.ratio())));
    root.push(("cycle".into(), cycle(c, out.plan.cycle_millis)));
    root.push((
        "unrelated_openat_overhead".into(),
        Jv::num(Some(out.openat.overhead())),
    ));
    root.push(("openat".into(), openat(&out.openat)));
    root.push(("startup_ms".into(), Jv::num(Some(out.startup))));
    root.push(("startup_ms_static".into(), Jv::num(out.startup_static)));
    root.push(("static_binary_mib".into(), Jv::num(out.binary.mib)));
    root.push((
        "static_binary_is_static".into(),
        out.binary.is_static.map_or(Jv::Null, Jv::Bool),
    ));
    root.push((
        "kernel_bytes_per_saved_byte".into(),
        Jv::num(out.kernel_bytes_per_saved_byte()),
    ));
    let store = out.store();
    root.push((
        "kernel_bytes".into(),
        Jv::Obj(vec![
            ("size".into(), Jv::s(out.plan.store_size)),
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
        Jv::Arr(out.targets.iter().map(target).collect()),
    ));
    root.push((
        "warnings".into(),
        Jv::Arr(out.warnings.iter().map(|w| Jv::s(w)).collect()),
    ));
    Jv::Obj(root)
}

fn size(z: &SizeResult) -> Jv {
    let n = |k: &str, v: Option<f64>| (k.to_string(), Jv::num(v));
    let i = |k: &str, v: u64| (k.to_string(), Jv::Int(v));
    Jv::Obj(vec![
        i("bytes", z.bytes),
        i("warmup_cycles", u64::from(z.warmup)),
        i("measured_cycles", u64::from(z.cycles)),
        n("checkpoint_gbps", z.checkpoint_gbps()),
        n("checkpoint_gbps_median", median(&z.ckpt_gbps)),
        n("checkpoint_e2e_gbps", max(&z.ckpt_e2e_gbps)),
        n("restore_gbps", z.restore_gbps()),
        n("restore_gbps_median", median(&z.restore_gbps)),
        n("memcpy_gbps", Some(z.base.memcpy_gbps)),
        n("process_vm_readv_gbps", Some(z.base.vm_read_gbps)),
        n("process_vm_writev_gbps", Some(z.base.vm_write_gbps)),
        n("process_vm_writev_4k_gbps", Some(z.base.vm_write_4k_gbps)),
        n("checkpoint_vs_memcpy", z.checkpoint_vs_memcpy()),
        n("restore_vs_memcpy", z.restore_vs_memcpy()),
        n(
            "restore_vs_process_vm_writev",
            z.restore_gbps().map(|g| g / z.base.vm_write_gbps),
        ),
        n("checkpoint_kernel_ms_median", median(&z.ckpt_kernel_ms)),
        n("checkpoint_latency_ms_median", median(&z.ckpt_latency_ms)),
        n("restore_latency_ms_median", median(&z.restore_latency_ms)),
        i("pages_saved", z.last_saved_pages),
        i("pages_absent", z.pages_absent),
        i("checkpoints_pure_bpf", z.ckpt_pure),
        i("checkpoints_held", z.ckpt_held),
        i("restores_held", z.restore_held),
        i("peak_store_bytes", z.peak_store_bytes),
    ])
}

fn cycle_run(r: &CycleRun) -> Vec<(String, Jv)> {
    vec![
        ("cycles".into(), Jv::Int(r.cycles)),
        ("seconds".into(), Jv::num(Some(r.ns as f64 / 1e9))),
        ("rate".into(), Jv::num(r.rate())),
        (
            "checkpoint_latency_us_avg".into(),
            Jv::num(r.avg_us(r.ckpt_ns)),
        ),
        (
            "restore_latency_us_avg".into(),
            Jv::num(r.avg_us(r.restore_ns)),
        ),
    ]
}

fn cycle(c: &CycleResult, millis: u64) -> Jv {
    let mut b = cycle_run(&c.bpfckpt);
    b.push(("checkpoint_kernel_us_avg".into(), Jv::num(c.ckpt_kernel_us)));
    b.push(("checkpoints_held".into(), Jv::Int(c.ckpt_held)));
    b.push(("pages_saved".into(), Jv::Int(c.pages_saved)));
    b.push(("pages_absent".into(), Jv::Int(c.pages_absent)));
    b.push((
        "engine_user_us_per_cycle".into(),
        Jv::num(c.engine_user_us_per_cycle),
    ));
    Jv::Obj(vec![
        ("millis".into(), Jv::Int(millis)),
        ("handshake".into(), Jv::Obj(cycle_run(&c.handshake))),
        ("bpfckpt".into(), Jv::Obj(b)),
    ])
}

fn openat(o: &OpenatResult) -> Jv {
    let mut v = vec![
        ("ops".into(), Jv::Int(o.ops)),
        ("rounds".into(), Jv::Int(u64::from(o.rounds))),
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
        v.push((a, Jv::num(Some(o.alone[i]))));
        v.push((t, Jv::num(Some(o.traced[i]))));
        if *name != "openat" {
            v.push((format!("{name}_ops"), Jv::Int(o.ops * mult)));
            v.push((
                format!("unrelated_{name}_overhead"),
                Jv::num(Some(o.overhead_of(i))),
            ));
        }
    }
    Jv::Obj(v)
}

fn machine(m: &Machine) -> Jv {
    Jv::Obj(vec![
        ("kernel".into(), Jv::s(&m.kernel)),
        ("cpu".into(), Jv::s(&m.cpu)),
        ("cores".into(), Jv::Int(m.cores)),
        ("git_commit".into(), Jv::s(&m.git_commit)),
        ("git_dirty".into(), m.git_dirty.map_or(Jv::Null, Jv::Bool)),
        ("lockdown".into(), Jv::s(&m.lockdown)),
        ("restore_path".into(), Jv::s(&m.restore_path)),
        ("thp".into(), Jv::s(&m.thp)),
        (
            "trigger_base".into(),
            Jv::s(&std::env::temp_dir().display().to_string()),
        ),
        ("loadavg_start".into(), Jv::s(&m.load_start)),
        ("loadavg_end".into(), Jv::s(&m.load_end)),
    ])
}

fn target(t: &Target) -> Jv {
    Jv::Obj(vec![
        ("metric".into(), Jv::s(&t.metric)),
        ("value".into(), Jv::num(t.value)),
        ("op".into(), Jv::s(t.op())),
        ("bar".into(), Jv::num(Some(t.bar))),
        ("met".into(), t.met().map_or(Jv::Null, Jv::Bool)),
        ("busy_machine".into(), Jv::Bool(t.busy)),
    ])
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output() {
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
    }
}
