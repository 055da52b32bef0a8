//! `cargo xtask soak [--minutes M | --seconds S] [--seed X] [--release]`:
//! one protocol target (tests/targets/rel_soak.rs) through continuous
//! checkpoint/restore cycles under `bpfckpt run`, with random damage between
//! checkpoint and restore (random writes, whole pages rewritten, pages
//! discarded, untouched pages dirtied, part of a region read-only) over the
//! heap, mappings, shared memory, .bss and .data. The target verifies every
//! byte after every restore. Reports cycles, bytes verified and corruptions;
//! fails on any corruption, on a failed session, or if bpfckpt and the
//! target disagree on the number of cycles.

use crate::util::{self, Ctx, Result};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn field(line: &str, key: &str) -> Option<u64> {
    if let Some(rest) = line.split(&format!("\"{key}\":")).nth(1) {
        return rest
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok();
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    let mut seconds = 60.0f64;
    let mut seed: Option<u64> = None;
    let mut release = false;
    let mut min_cycles = 1u64;
    let mut it = args.iter();
    let num = |v: Option<&String>, what: &str| -> Result<f64> {
        v.and_then(|v| v.parse::<f64>().ok())
            .filter(|n| *n > 0.0)
            .ok_or_else(|| format!("soak: {what} needs a positive number"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => seconds = 60.0 * num(it.next(), "--minutes")?,
            "--seconds" => seconds = num(it.next(), "--seconds")?,
            "--seed" => {
                seed = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("soak: --seed needs a number")?,
                )
            }
            "--release" => release = true,
            "--min-cycles" => min_cycles = num(it.next(), "--min-cycles")? as u64,
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask soak [--minutes M | --seconds S] [--min-cycles N] [--seed X] [--release]\n\n\
                     Runs checkpoint/restore cycles with random damage for M minutes (default 1,\n\
                     fractions allowed), and on until N cycles ran (default 1), and verifies every\n\
                     byte after every restore."
                );
                return Ok(());
            }
            other => return Err(format!("soak: unknown argument `{other}` (try --help)")),
        }
    }
    if !util::is_root() {
        return Err("soak: needs root (bpfckpt loads BPF programs)".into());
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 & 0xffff_ffff)
    });
    let profile = if release { "release" } else { "debug" };
    let mut build = vec!["build", "-p", "bpfckpt", "-p", "bpfckpt-tests"];
    if release {
        build.push("--release");
    }
    ctx.cargo(&build)?;
    let bin = ctx.target_dir().join(profile);
    let dir = std::env::temp_dir().join(format!("bpfckpt-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("soak: {}: {e}", dir.display()))?;
    let d = dir.display().to_string();
    eprintln!("soak: {seconds} s, seed {seed} ({profile} build), trigger dir {d}");
    let mut child = Command::new(bin.join("bpfckpt"))
        .args(["run", "--json", "--trigger-dir", &d, "--"])
        .arg(bin.join("rel-soak"))
        .args(["--dir", &d, "--seconds", &seconds.to_string()])
        .args(["--min-cycles", &min_cycles.to_string()])
        .args(["--seed", &seed.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("soak: start bpfckpt: {e}"))?;
    let start = Instant::now();
    let limit =
        Duration::from_secs_f64(seconds + min_cycles as f64 * 0.5) + Duration::from_secs(180);
    let stdout = child.stdout.take().ok_or("soak: no stdout")?;
    // A watchdog: the target gives up on a missing marker after 120 s, but
    // never let a stuck session hang the run.
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let guard = std::thread::spawn(move || {
        while !d2.load(std::sync::atomic::Ordering::Relaxed) {
            if start.elapsed() > limit {
                eprintln!("soak: timed out after {limit:?}; killing bpfckpt");
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let (mut soak, mut summary, mut restores) = (None, None, 0u64);
    let (mut incremental, mut mechanism) = (0u64, "none".to_string());
    let mut corrupt_lines = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
        if line.starts_with("SOAK ") {
            soak = Some(line);
        } else if line.starts_with("CORRUPT ") || line.starts_with("FAIL ") {
            eprintln!("soak: {line}");
            corrupt_lines.push(line);
        } else if line.contains("\"event\":\"restore\"") {
            restores += 1;
            incremental += u64::from(line.contains("\"incremental\":true"));
        } else if line.contains("\"event\":\"tracking\"") {
            if let Some(m) = line.split("\"mechanism\":\"").nth(1) {
                mechanism = m.split('"').next().unwrap_or("?").to_string();
            }
        } else if line.contains("\"event\":\"summary\"") && line.contains("\"scope\":\"pid") {
            summary = Some(line);
        }
    }
    let st = child.wait().map_err(|e| format!("soak: wait: {e}"))?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = guard.join();
    let _ = std::fs::remove_dir_all(&dir);
    let soak = soak.ok_or_else(|| format!("soak: the target printed no result ({st})"))?;
    let cycles = field(&soak, "cycles").unwrap_or(0);
    let bytes = field(&soak, "bytes_verified").unwrap_or(0);
    let corruptions = field(&soak, "corruptions").unwrap_or(u64::MAX);
    let served = summary.as_deref().and_then(|s| field(s, "cycles"));
    eprintln!(
        "soak: {cycles} cycles in {:.1} s, {:.1} GiB verified, {corruptions} corrupt bytes; \
         bpfckpt served {} cycles ({restores} restore events, {incremental} incremental, \
         dirty tracking: {mechanism}), exit {st}",
        start.elapsed().as_secs_f64(),
        bytes as f64 / f64::from(1u32 << 30),
        served.map_or("?".to_string(), |n| n.to_string())
    );
    if corruptions != 0 || !corrupt_lines.is_empty() {
        return Err(format!(
            "soak: {corruptions} bytes differed from the checkpoint (seed {seed})"
        ));
    }
    if !st.success() {
        return Err(format!("soak: the session failed: {st} (seed {seed})"));
    }
    if served != Some(cycles) || restores != cycles {
        return Err(format!(
            "soak: the target ran {cycles} cycles, bpfckpt reports {served:?} ({restores} restore events)"
        ));
    }
    Ok(())
}
