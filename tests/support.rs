//! Helpers shared by the test suites of this package: finding and running
//! the bpfckpt binary, trigger directories, reading its JSON output, and
//! the scenario harness (one scenario run tracked and `--exhaustive`).

// Each suite uses its own subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn need_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    assert!(
        uid.split_whitespace().nth(2) == Some("0"),
        "these tests need root (BPF, tracefs, other processes' memory)"
    );
}

/// The `bpfckpt` binary: `BPFCKPT_BIN`, else next to this test's own
/// directory (`target/<profile>/bpfckpt`, built by `cargo xtask test`).
pub fn bpfckpt() -> PathBuf {
    if let Some(p) = std::env::var_os("BPFCKPT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("bpfckpt");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p bpfckpt`, or run `cargo xtask test`)",
        p.display()
    );
    p
}

/// The per-target `summary` event in bpfckpt's `--json` output.
pub fn target_summary(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find(|l| l.contains("\"event\":\"summary\"") && l.contains("\"scope\":\"pid"))
}

/// The number after `"key":` in a JSON line.
pub fn json_num(line: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let rest = &line[line.find(&pat)? + pat.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The number after `key=` in a line of words (`PASS x cycles=3 ...`).
pub fn word_num(line: &str, key: &str) -> Option<u64> {
    let pat = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&pat))?
        .parse()
        .ok()
}

/// A private trigger directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("bpfckpt-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create trigger dir");
        Self(p)
    }

    pub fn s(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub type Lines = std::io::Lines<BufReader<ChildStdout>>;

/// Starts `bpfckpt args...` with its output piped; its stdout as lines.
pub fn spawn_bpfckpt(args: &[&str]) -> (Child, Lines) {
    need_root();
    let mut child = Command::new(bpfckpt())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bpfckpt");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

/// Reads `lines` up to the first that contains `needle`, and returns it.
pub fn wait_line(lines: &mut Lines, needle: &str) -> String {
    for line in lines.by_ref() {
        let line = line.expect("read");
        if line.contains(needle) {
            return line;
        }
    }
    panic!("bpfckpt's output ended before a line with {needle}");
}

/// A finished `bpfckpt run`.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Why the run did not pass, in one line: the target's `FAIL` line,
    /// else bpfckpt's error, else how the target ended (with the mappings
    /// the target said differed before it died).
    pub fn reason(&self) -> String {
        if let Some(l) = self.stdout.lines().find(|l| l.starts_with("FAIL ")) {
            return l.to_string();
        }
        if let Some(l) = self.stderr.lines().find(|l| l.contains("bpfckpt: error:")) {
            return l.to_string();
        }
        let mut why = format!("bpfckpt exited with {}", self.status);
        if let Some(l) = self
            .stdout
            .lines()
            .find(|l| l.contains("\"event\":\"target_exit\""))
        {
            match json_num(l, "signal") {
                Some(sig) if sig != 0 => why += &format!("; the target was killed by signal {sig}"),
                _ => why += &format!("; the target exited: {l}"),
            }
        }
        let diffs: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with("RAWDIFF"))
            .collect();
        if !diffs.is_empty() {
            why += &format!(" after reporting {}", diffs.join(", "));
        }
        why
    }

    /// The last lines of both outputs.
    pub fn tail(&self) -> String {
        let last = |s: &str, n: usize| {
            let v: Vec<&str> = s.lines().collect();
            v[v.len().saturating_sub(n)..].join("\n")
        };
        format!(
            "stdout (end):\n{}\nstderr (end):\n{}",
            last(&self.stdout, 40),
            last(&self.stderr, 20)
        )
    }

    /// The target's `PASS` line.
    pub fn pass_line(&self) -> Option<&str> {
        self.stdout.lines().find(|l| l.starts_with("PASS "))
    }

    /// The `checkpoint` events.
    pub fn checkpoints(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.contains("\"event\":\"checkpoint\""))
            .collect()
    }
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn collect(mut child: Child, limit: Duration) -> Run {
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_timeout(&mut child, limit);
    Run {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// `bpfckpt run --json [extra] -- program args --dir DIR`
pub fn run(dir: &Dir, extra: &[&str], program: &str, args: &[&str]) -> Run {
    run_env(dir, &[], extra, program, args)
}

/// `run` with variables `env` set for bpfckpt (and the target).
pub fn run_env(
    dir: &Dir,
    env: &[(&str, &str)],
    extra: &[&str],
    program: &str,
    args: &[&str],
) -> Run {
    need_root();
    let child = Command::new(bpfckpt())
        .envs(env.iter().copied())
        .arg("run")
        .arg("--json")
        .args(["--trigger-dir", &dir.s()])
        .args(extra)
        .arg("--")
        .arg(program)
        .args(args)
        .args(["--dir", &dir.s()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bpfckpt");
    collect(child, Duration::from_secs(300))
}

/// Every cycle verified by the target, and bpfckpt reporting the same
/// number of cycles and a restore event for each; else why not.
pub fn check_pass(r: &Run, scenario: &str, cycles: u32) -> Result<(), String> {
    if !(r.status.success()
        && r.stdout
            .contains(&format!("PASS {scenario} cycles={cycles}")))
    {
        return Err(r.tail());
    }
    let summary =
        target_summary(&r.stdout).ok_or_else(|| format!("no summary in:\n{}", r.stdout))?;
    if !summary.contains(&format!("\"cycles\":{cycles},")) {
        return Err(format!("summary: {summary}"));
    }
    // Every checkpoint and restore is reported.
    let restores = r
        .stdout
        .lines()
        .filter(|l| l.contains("\"event\":\"restore\""))
        .count();
    if restores != cycles as usize {
        return Err(format!("{restores} restore events in:\n{}", r.stdout));
    }
    Ok(())
}

pub fn assert_pass(r: &Run, scenario: &str, cycles: u32) {
    if let Err(e) = check_pass(r, scenario, cycles) {
        panic!("scenario {scenario} failed: {}\n{e}", r.reason());
    }
}

pub fn summary_field(r: &Run, key: &str) -> u64 {
    target_summary(&r.stdout)
        .and_then(|l| json_num(l, key))
        .unwrap_or_else(|| panic!("no {key} in the summary:\n{}", r.stdout))
}

/// Runs a scenario with the touched-page tracking and again trying every
/// page (`--exhaustive`), both to the end; both must verify every byte, and
/// the tracked run must not save more pages than the exhaustive one.
pub fn both_modes(tag: &str, program: &str, args: &[&str], pass: &str, cycles: u32) -> [Run; 2] {
    let runs = both_pass(tag, program, args, pass, cycles);
    let saved: Vec<u64> = runs
        .iter()
        .map(|r| summary_field(r, "pages_saved_bpf") + summary_field(r, "pages_saved_user"))
        .collect();
    assert!(
        saved[0] <= saved[1],
        "tracking saved more pages than trying every page: {saved:?}"
    );
    runs
}

/// Runs a scenario tracked and `--exhaustive`, both to the end; both must
/// verify every byte. A failure names each mode and why it failed (then
/// the end of each failed run's output).
pub fn both_pass(tag: &str, program: &str, args: &[&str], pass: &str, cycles: u32) -> [Run; 2] {
    let n = cycles.to_string();
    let runs = [false, true].map(|exhaustive| {
        let dir = Dir::new(&format!("{tag}{}", u8::from(exhaustive)));
        let mut a = args.to_vec();
        a.extend(["--cycles", &n]);
        let extra: &[&str] = if exhaustive { &["--exhaustive"] } else { &[] };
        run(&dir, extra, program, &a)
    });
    let modes = ["tracked", "--exhaustive"];
    let mut results: Vec<Result<(), String>> =
        runs.iter().map(|r| check_pass(r, pass, cycles)).collect();
    // Every checkpoint user space completed found each page that held data
    // marked written: no write escaped the tracking.
    if results[0].is_ok() {
        let unmarked =
            target_summary(&runs[0].stdout).and_then(|l| json_num(l, "pages_unmarked_data"));
        if unmarked != Some(0) {
            results[0] = Err(format!("pages_unmarked_data is {unmarked:?}, not 0"));
        }
    }
    if results.iter().any(Result::is_err) {
        let mut short = Vec::new();
        let mut details = Vec::new();
        for ((mode, r), res) in modes.iter().zip(&runs).zip(&results) {
            match res {
                Ok(()) => short.push(format!("{mode}: PASS")),
                Err(e) => {
                    short.push(format!("{mode}: FAIL: {}", r.reason()));
                    details.push(format!("{mode}: {e}"));
                }
            }
        }
        panic!(
            "scenario {pass}:\n{}\n\ndetails:\n{}",
            short.join("\n"),
            details.join("\n\n")
        );
    }
    runs
}
