//! Time-bounded mutation fuzzing of `obj::parse` + `linker::link` +
//! `btf::program_btf`, run by `cargo xtask fuzz [--seconds N]` (ignored in a
//! plain `cargo test`). Environment:
//!
//! - `BPFCKPT_FUZZ_SECONDS` (default 60), `BPFCKPT_FUZZ_SEED` (default: the
//!   clock; printed, so a run can be repeated);
//! - `BPFCKPT_FUZZ_AS` address-space cap of the worker in bytes (default
//!   1 GiB).
//!
//! It lives in the application's package for its best seed, the real probe
//! object; the rest is bpfload's test code (loader/bpfload/tests: common/,
//! fuzzing/), included with `#[path]`.
//!
//! The test supervises a worker: this same test binary, re-run with
//! `BPFCKPT_FUZZ_WORKER` set, under `prlimit --as`. The worker mutates the
//! seeds (the real probe object, loader/bpfload/tests/fixtures/*.o, the
//! hand-made rich object) and keeps every input that reaches a new outcome (a new error
//! message, or linking with a new shape) as a further base. Before each
//! input it writes it to a scratch file; each input runs under
//! `catch_unwind` and a peak-RSS budget (see fuzzing/mod.rs). A panic, a
//! broken invariant or a budget overrun is saved by the worker as
//! `loader/bpfload/tests/fuzz-corpus/crash-<hash>.bin` / `memory-<hash>.bin`; a
//! worker that dies (abort on an allocation beyond the cap, stack overflow)
//! or hangs (no new input for 10 s) has its input in flight saved by the
//! supervisor as `crash-<hash>.bin` / `hang-<hash>.bin`. Any of these fails
//! the test; bpfload's fuzz_corpus.rs replays the files from then on. A crash
//! whose bug is known and reported lives in fuzz-corpus/known/ until it is
//! fixed; the driver counts inputs that hit the same panic (message without
//! program name and numbers) as `known_bug_hits` instead of failing.
//!
//! libFuzzer (cargo-fuzz) would need nightly for its sanitizers; its
//! `--sanitizer none` mode builds on stable (SanitizerCoverage flags are
//! stable `-C` options), but it brings a C++ build of libFuzzer, a second
//! crate outside the workspace and a separately installed tool. This
//! driver needs none of that.

#[path = "../bpfload/tests/common/mod.rs"]
mod common;
#[path = "../bpfload/tests/fuzzing/mod.rs"]
mod fuzzing;

use common::Rng;
use fuzzing::{Failure, failure_key, known_files, mutate, run_one, save};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
#[ignore = "time-bounded fuzzing: run by `cargo xtask fuzz` (BPFCKPT_FUZZ_SECONDS)"]
fn fuzz_driver() {
    match std::env::var_os("BPFCKPT_FUZZ_WORKER") {
        Some(current) => worker(PathBuf::from(current)),
        None => supervise(),
    }
}

fn supervise() {
    let seconds: f64 = env_num("BPFCKPT_FUZZ_SECONDS").unwrap_or(60.0);
    let seed: u64 = env_num("BPFCKPT_FUZZ_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let cap: u64 = env_num("BPFCKPT_FUZZ_AS").unwrap_or(1 << 30);
    let scratch = std::env::temp_dir().join(format!("bpfckpt-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let current = scratch.join("current.bin");
    eprintln!(
        "fuzz: {seconds} s, seed {seed:#x} (BPFCKPT_FUZZ_SEED={seed} repeats it), address space cap {} MiB",
        cap >> 20
    );
    let exe = std::env::current_exe().expect("current_exe");
    let has_prlimit = Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = if has_prlimit {
        let mut c = Command::new("prlimit");
        c.arg(format!("--as={cap}")).arg("--").arg(&exe);
        c
    } else {
        eprintln!("fuzz: warning: no prlimit; running the worker without an address-space cap");
        Command::new(&exe)
    };
    cmd.args([
        "fuzz_driver",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("BPFCKPT_FUZZ_WORKER", &current)
    .env("BPFCKPT_FUZZ_SECONDS", seconds.to_string())
    .env("BPFCKPT_FUZZ_SEED", seed.to_string());
    let mut child = cmd.spawn().expect("start the fuzz worker");
    let limit = Duration::from_secs_f64(seconds) + Duration::from_secs(60);
    let start = Instant::now();
    let mut last_change = (None, Instant::now());
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait worker") {
            break Some(st);
        }
        let m = std::fs::metadata(&current).and_then(|m| m.modified()).ok();
        if m != last_change.0 {
            last_change = (m, Instant::now());
        } else if last_change.1.elapsed() > Duration::from_secs(10) || start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let inflight = std::fs::read(&current).ok();
    let _ = std::fs::remove_dir_all(&scratch);
    match status {
        Some(st) if st.success() => {}
        Some(st) => {
            use std::os::unix::process::ExitStatusExt;
            if st.signal().is_some() {
                let input = inflight.expect("the worker wrote its input");
                let p = save("crash", &input);
                panic!(
                    "the fuzz worker died ({st}) on an input, saved as {}",
                    p.display()
                );
            }
            panic!("the fuzz worker failed ({st}); see its output above");
        }
        None => {
            let input = inflight.expect("the worker wrote its input");
            let p = save("hang", &input);
            panic!("an input ran for more than 10 s, saved as {}", p.display());
        }
    }
}

fn worker(current: PathBuf) {
    let seconds: f64 = env_num("BPFCKPT_FUZZ_SECONDS").unwrap_or(60.0);
    let seed: u64 = env_num("BPFCKPT_FUZZ_SEED").unwrap_or(1);
    let mut rng = Rng(seed | 1);
    let mut seeds = vec![("probes".to_string(), bpfckpt::PROBES_OBJ.to_vec())];
    seeds.extend(fuzzing::seeds());
    let nseeds = seeds.len();
    // Inputs that reached a new outcome are mutated further.
    let mut pool: Vec<Vec<u8>> = seeds.iter().map(|s| s.1.clone()).collect();
    let mut seen: HashSet<String> = HashSet::new();
    for (name, s) in &seeds {
        match run_one(s) {
            Ok(sig) => {
                assert!(sig.starts_with("ok:"), "seed {name} must link: {sig}");
                seen.insert(sig);
            }
            Err(f) => panic!("seed {name}: {f:?}"),
        }
    }
    // Known bugs (fuzz-corpus/known): their failures are counted, not
    // reported again, while they are not fixed.
    let mut known: HashSet<String> = HashSet::new();
    for p in known_files() {
        let input = std::fs::read(&p).expect("read known crash");
        if let Err(Failure::Panic(msg)) = run_one(&input) {
            eprintln!(
                "fuzz: known bug, not counted as a finding: {msg} ({})",
                p.display()
            );
            known.insert(failure_key(&msg));
        }
    }
    let mut known_hits = 0u64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut report = start + Duration::from_secs(10);
    let (mut execs, mut linked) = (0u64, 0u64);
    while Instant::now() < deadline {
        let base = if rng.below(2) == 0 {
            rng.below(nseeds)
        } else {
            rng.below(pool.len())
        };
        let other = rng.below(pool.len());
        let input = mutate(&mut rng, &pool[base], &pool[other]);
        // In flight: the supervisor keeps it if this process dies.
        std::fs::write(&current, &input).expect("write the input in flight");
        execs += 1;
        match run_one(&input) {
            Ok(sig) => {
                linked += u64::from(sig.starts_with("ok:"));
                if seen.insert(sig) {
                    if pool.len() < 2000 {
                        pool.push(input);
                    } else {
                        let i = nseeds + rng.below(pool.len() - nseeds);
                        pool[i] = input;
                    }
                }
            }
            Err(Failure::Panic(msg)) if known.contains(&failure_key(&msg)) => known_hits += 1,
            Err(Failure::Panic(msg)) => {
                let p = save("crash", &input);
                panic!(
                    "input {execs} (seed {seed:#x}) panicked: {msg}\nsaved as {}",
                    p.display()
                );
            }
            Err(Failure::Memory { grew, budget }) => {
                let p = save("memory", &input);
                panic!(
                    "input {execs} (seed {seed:#x}, {} bytes) raised the peak RSS by {} KiB (budget {} KiB)\nsaved as {}",
                    input.len(),
                    grew >> 10,
                    budget >> 10,
                    p.display()
                );
            }
        }
        if Instant::now() > report {
            report += Duration::from_secs(10);
            eprintln!(
                "fuzz: {execs} inputs, {:.0}/s, {linked} linked, {} outcomes, pool {}",
                execs as f64 / start.elapsed().as_secs_f64(),
                seen.len(),
                pool.len()
            );
        }
    }
    println!(
        "FUZZ seed={seed:#x} seconds={:.1} inputs={execs} per_second={:.0} linked={linked} outcomes={} pool={} crashes=0 known_bug_hits={known_hits}",
        start.elapsed().as_secs_f64(),
        execs as f64 / start.elapsed().as_secs_f64(),
        seen.len(),
        pool.len()
    );
}
