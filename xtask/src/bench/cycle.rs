//! Cycle rate: `cycle_rate`, `handshake_rate`, `cycle_rate_vs_handshake`:
//! cycles per second of `bench-cycle` (a 4 KiB heap buffer, a 400 MB `.bss`
//! array it never touches; it polls the markers without sleeping) for 3 s
//! after 2 warm-up cycles, under bpfckpt, and under a handshake-only server
//! in this process that polls the trigger directory without sleeping,
//! creates the completion markers and copies nothing (the protocol's
//! ceiling). Same binary, same run, private trigger directories. Each rate
//! is one run's cycles over its time (not a best of runs, so it has no
//! median); the latencies in `cycle` are the target-observed averages.

use super::events::{Events, Flat, bench_line};
use super::proc::{Proc, TriggerDir, bpfckpt_run, deadline};
use super::{Bins, Plan};
use crate::util::Result;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

// The protocol's marker names, from the crate that defines them.
use bpfckpt_protocol::{CHECKPOINT_DONE, CHECKPOINT_REQUEST, RESTORE_DONE, RESTORE_REQUEST};

#[derive(Default)]
pub struct CycleRun {
    pub cycles: u64,
    pub ns: u64,
    pub ckpt_ns: u64,
    pub restore_ns: u64,
}

impl CycleRun {
    pub fn from(line: &Flat) -> Result<Self> {
        Ok(Self {
            cycles: line.need_u("cycles")?,
            ns: line.need_u("ns")?,
            ckpt_ns: line.need_u("checkpoint_ns")?,
            restore_ns: line.need_u("restore_ns")?,
        })
    }

    pub fn rate(&self) -> Option<f64> {
        (self.ns > 0).then(|| self.cycles as f64 * 1e9 / self.ns as f64)
    }

    pub fn avg_us(&self, total: u64) -> Option<f64> {
        (self.cycles > 0).then(|| total as f64 / self.cycles as f64 / 1e3)
    }

    /// The average cycle's time.
    pub fn ns_per_cycle(&self) -> Option<f64> {
        (self.cycles > 0).then(|| self.ns as f64 / self.cycles as f64)
    }
}

#[cfg_attr(test, derive(Default))]
pub struct CycleResult {
    pub handshake: CycleRun,
    pub bpfckpt: CycleRun,
    /// Averages over the measured checkpoints.
    pub ckpt_kernel_us: Option<f64>,
    pub ckpt_held: u64,
    pub pages_saved: u64,
    pub pages_absent: u64,
    /// Summary user_ns / cycles (includes the warm-up cycles).
    pub engine_user_us_per_cycle: Option<f64>,
}

impl CycleResult {
    pub fn ratio(&self) -> Option<f64> {
        Some(self.bpfckpt.rate()? / self.handshake.rate()?)
    }
}

fn cycle_args(cmd: &mut Command, dir: &Path, plan: &Plan) {
    cmd.arg("--dir")
        .arg(dir)
        .args(["--warmup", &plan.cycle_warmup.to_string()])
        .args(["--millis", &plan.cycle_millis.to_string()])
        .args(["--min-cycles", &plan.cycle_min.to_string()]);
}

pub fn cycle_bench(bins: &Bins, plan: &Plan) -> Result<CycleResult> {
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
    let mut cmd = bpfckpt_run(&bins.bpfckpt, &dir, bins.bench("bench-cycle"));
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
pub fn handshake_serve(p: &mut Proc, dir: &Path, until: Instant) -> Result<u64> {
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
