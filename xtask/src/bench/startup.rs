//! Startup and the static binary:
//! - `startup_ms`: from spawning `bpfckpt run --json -- /bin/true` until its
//!   `start` event is read from the pipe (exec, privilege and
//!   `bpf_probe_write_user` checks, parse, link, BTF, map creation, program
//!   loads with the verifier, attach), best of 5 (300 ms apart, so that the
//!   previous instance's deferred teardown is over), glibc release build;
//!   `startup_ms_median` is the median of the same 5; `startup_ms_static`
//!   (and its median) is the same for the static musl build.
//! - `static_binary_mib`: size of target/x86_64-unknown-linux-musl/release/
//!   bpfckpt in MiB (2^20 bytes); `static_binary_is_static`: no PT_INTERP.

use super::events::Flat;
use super::proc::{Proc, TriggerDir, bpfckpt_run, deadline};
use super::stats::Fig;
use super::{Bins, MIB};
use crate::util::Result;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// The static binary's size, and whether it is static; `None` when it was
/// not built.
#[cfg_attr(test, derive(Default))]
pub struct StaticBinary {
    pub mib: Option<f64>,
    pub is_static: Option<bool>,
}

/// Startup of the engine measured and, when built, of the static binary
/// (without it, an empty figure).
pub fn both(bins: &Bins, tries: u32) -> Result<(Fig, Fig)> {
    let startup = startup_ms(&bins.bpfckpt, tries).map_err(|e| format!("bench (startup): {e}"))?;
    let startup_static = if bins.static_bpfckpt.exists() {
        startup_ms(&bins.static_bpfckpt, tries)
            .map_err(|e| format!("bench (startup, static binary): {e}"))?
    } else {
        Fig::default()
    };
    Ok((startup, startup_static))
}

/// Size and linkage of the static binary; only the smoke (which does not
/// build it) may go without.
pub fn static_binary(path: &Path, smoke: bool, warnings: &mut Vec<String>) -> Result<StaticBinary> {
    match fs::read(path) {
        Ok(bytes) => Ok(StaticBinary {
            mib: Some(bytes.len() as f64 / MIB as f64),
            is_static: Some(elf_is_static(&bytes)),
        }),
        Err(e) => {
            if !smoke {
                return Err(format!("bench: {}: {e}", path.display()));
            }
            warnings.push(format!(
                "{} not built (the smoke does not build it): static_binary_mib is null",
                path.display()
            ));
            Ok(StaticBinary {
                mib: None,
                is_static: None,
            })
        }
    }
}

/// Best and median time from spawning `bpfckpt run --json -- /bin/true` to
/// reading its `start` event, in milliseconds.
fn startup_ms(bin: &Path, tries: u32) -> Result<Fig> {
    let mut ms = Vec::new();
    for _ in 0..tries.max(1) {
        // Let the previous instance's deferred teardown (detaching, freeing
        // maps: kernel work after its exit) finish first.
        std::thread::sleep(Duration::from_millis(300));
        let dir = TriggerDir::new("startup")?;
        let mut cmd = bpfckpt_run(bin, &dir, "/bin/true");
        let t0 = Instant::now();
        let mut p = Proc::start("bpfckpt run -- /bin/true", &mut cmd, false)?;
        let at = p.wait_line_at(deadline(30), |l| {
            Flat::parse(l).and_then(|f| f.s("event").map(|e| e == "start")) == Some(true)
        })?;
        ms.push(at.duration_since(t0).as_secs_f64() * 1e3);
        p.finish(deadline(30))?;
    }
    Ok(Fig::lowest(&ms))
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
