//! The guest's reliability checks, small versions of tests/reliability.rs:
//!
//! - kill: bpfckpt serving `rel-target kill-window` (a 256 MiB target) is
//!   SIGKILLed in the middle of a checkpoint or a restore. Within 30 s none
//!   of the BPF objects it created (programs, maps, links, BTF: by id, the
//!   guest has no other BPF user) may exist (the kernel frees the last maps
//!   from RCU callbacks and workqueues: seconds under TCG, and the time it
//!   took is reported), nothing may be pinned in
//!   /sys/fs/bpf, the target must not be left stopped, and it must carry on:
//!   it gets no marker, checks its memory (after a restore: every page
//!   restored or as it left it, none torn) and passes.
//! - symlink: a symlink planted at `checkpoint_complete` (to a file, or
//!   dangling) is refused with an error naming it and is not followed: the
//!   file keeps its bytes and time, nothing is created next to it.

use crate::run::{Captured, Running};
use crate::sys;
use bpfckpt_protocol::{CHECKPOINT_DONE, CHECKPOINT_REQUEST, RESTORE_DONE, RESTORE_REQUEST};
use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BPFFS: &str = "/sys/fs/bpf";

/// BPF object ids by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Objs {
    pub progs: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
    pub links: BTreeSet<u32>,
    pub btfs: BTreeSet<u32>,
}

impl Objs {
    pub fn now() -> Result<Self, String> {
        let get = |cmd, what| {
            sys::bpf_ids(cmd)
                .map(|v| v.into_iter().collect())
                .map_err(|e| format!("listing BPF {what} ids: {e}"))
        };
        Ok(Self {
            progs: get(sys::BPF_PROG_GET_NEXT_ID, "program")?,
            maps: get(sys::BPF_MAP_GET_NEXT_ID, "map")?,
            links: get(sys::BPF_LINK_GET_NEXT_ID, "link")?,
            btfs: get(sys::BPF_BTF_GET_NEXT_ID, "BTF")?,
        })
    }

    /// What exists now that did not in `base`.
    pub fn minus(&self, base: &Objs) -> Objs {
        let d = |a: &BTreeSet<u32>, b: &BTreeSet<u32>| a.difference(b).copied().collect();
        Objs {
            progs: d(&self.progs, &base.progs),
            maps: d(&self.maps, &base.maps),
            links: d(&self.links, &base.links),
            btfs: d(&self.btfs, &base.btfs),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.progs.is_empty()
            && self.maps.is_empty()
            && self.links.is_empty()
            && self.btfs.is_empty()
    }

    pub fn counts(&self) -> String {
        format!(
            "progs={} maps={} links={} btf={}",
            self.progs.len(),
            self.maps.len(),
            self.links.len(),
            self.btfs.len()
        )
    }
}

fn pinned() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(BPFFS)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat; None once the
/// process is gone.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) may hold spaces: count from after its ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

fn state(pid: i32) -> Option<char> {
    stat_field(pid, 3).and_then(|s| s.chars().next())
}

/// The process's system time, in clock ticks.
fn stime(pid: i32) -> Option<u64> {
    stat_field(pid, 15).and_then(|s| s.parse().ok())
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn fresh_dir(p: &str) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(p);
    std::fs::create_dir_all(p).map_err(|e| format!("create {p}: {e}"))
}

/// `bpfckpt run ... --trigger-dir DIR [-- program...]` (no `--` without a
/// program: the caller adds options first).
fn bpfckpt_run(restore_path: &str, dir: &str, program: &[String]) -> Command {
    let mut cmd = Command::new(crate::BPFCKPT);
    cmd.args([
        "run",
        "--restore-path",
        restore_path,
        "--json",
        "--trigger-dir",
        dir,
    ]);
    if !program.is_empty() {
        cmd.arg("--").args(program);
    }
    cmd
}

/// Whether the kernel attaches tracepoint programs through BPF links
/// (`BPF_LINK_CREATE` for perf events, 5.15); before, bpfload falls back to
/// `PERF_EVENT_IOC_SET_BPF`, which makes no link object.
fn kernel_makes_links() -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    links_since(&rel)
}

fn links_since(release: &str) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (5, 15)
}

/// What the kill check saw, for [`kill_verdict`].
#[derive(Debug, Default)]
pub struct KillFacts {
    /// Where the target was when bpfckpt was killed.
    pub window: String,
    /// What bpfckpt had created when it was killed.
    pub held: Objs,
    /// What of it was left when the check stopped waiting.
    pub left: Objs,
    /// How long it took to go.
    pub gone_secs: f64,
    pub pins: Vec<String>,
    /// The target was still stopped 2 s after the kill.
    pub left_stopped: bool,
    /// The completion marker of the killed request exists.
    pub got_marker: bool,
    /// The kernel makes BPF links for bpfckpt's attachments (5.15+).
    pub links_expected: bool,
}

/// Kills bpfckpt in the middle of the checkpoint (`restore` false) or the
/// restore of a `mib` MiB target; `Ok` holds the marker's details.
pub fn kill(
    restore_path: &str,
    dir: &str,
    restore: bool,
    mib: u32,
    program: &[String],
    timeout: Duration,
) -> Result<String, String> {
    fresh_dir(dir)?;
    let deadline = Instant::now() + timeout;
    let base = Objs::now()?;
    let mut prog = program.to_vec();
    prog.extend(
        [
            "kill-window",
            "--dir",
            dir,
            "--mib",
            &mib.to_string(),
            "--wait",
            "3",
        ]
        .map(String::from),
    );
    // Held with SIGSTOP, not in its open: the window is found by the
    // target's stopped state, and the watchdog's continuing it is checked.
    let mut cmd = bpfckpt_run(restore_path, dir, &[]);
    cmd.args(["--hold", "signal", "--"]).args(&prog);
    let mut r = Running::spawn(cmd)?;
    let ready = r.wait_for("the target's READY", deadline, |l| {
        l.starts_with("READY pid=")
    })?;
    let target: i32 = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no pid in {ready:?}"))?;
    let (before, req, done) = if restore {
        ("CHECKPOINTED", RESTORE_REQUEST, RESTORE_DONE)
    } else {
        ("FILLED", CHECKPOINT_REQUEST, CHECKPOINT_DONE)
    };
    r.wait_for(before, deadline, |l| l == before)?;
    let (req, done) = (Path::new(dir).join(req), Path::new(dir).join(done));
    // The request is under way once the target is in the probe (its
    // system time grows: the BPF restore writes inside the trigger system
    // call) or the request file exists (the probe has returned). A
    // checkpoint, and any request on the user-space path, then holds the
    // target while user space works on 256 MiB: the widest window.
    let stime0 = stime(target).unwrap_or(0);
    let mut window = String::new();
    while window.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {}", req.display()));
        }
        if req.exists() {
            let wait_hold = !restore || restore_path != "bpf";
            let held = wait_hold
                && wait_until(Duration::from_secs(5), || {
                    state(target) == Some('T') || done.exists()
                })
                && state(target) == Some('T');
            window = if held {
                "held by bpfckpt".into()
            } else {
                "request made, not held".into()
            };
        } else if restore && restore_path == "bpf" && stime(target).is_some_and(|t| t >= stime0 + 3)
        {
            window = "in the BPF restore".into();
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let held = Objs::now()?.minus(&base);
    let _ = sys::kill(r.pid(), libc::SIGKILL);
    let t_kill = Instant::now();
    let mut left = held.clone();
    let gone = wait_until(Duration::from_secs(30), || {
        left = Objs::now().map(|o| o.minus(&base)).unwrap_or_default();
        left.is_empty()
    });
    let gone_secs = t_kill.elapsed().as_secs_f64();
    let left_stopped = !wait_until(Duration::from_secs(2), || state(target) != Some('T'));
    let got_marker = done.exists();
    // The target carries on: it stops waiting after 3 s, checks its
    // memory and reports on the pipe it shares with the dead bpfckpt (its
    // last line, or the pipe's end, tells it is done).
    let _ = r.wait_for("the target's verdict", deadline, |l| {
        l.starts_with("PASS ") || l.starts_with("FAIL ")
    });
    let c = r.finish(deadline);
    let facts = KillFacts {
        links_expected: kernel_makes_links(),
        window,
        held,
        left: if gone { Objs::default() } else { left },
        gone_secs,
        pins: pinned(),
        left_stopped,
        got_marker,
    };
    kill_verdict(restore, &facts, &c)
}

/// Judges a kill check.
pub fn kill_verdict(restore: bool, f: &KillFacts, c: &Captured) -> Result<String, String> {
    let phase = if restore { "restore" } else { "checkpoint" };
    let mut problems = Vec::new();
    if f.held.progs.is_empty()
        || f.held.maps.is_empty()
        || (f.links_expected && f.held.links.is_empty())
    {
        problems.push(format!(
            "bpfckpt held no BPF programs, maps or links before the kill ({}): the check cannot see them",
            f.held.counts()
        ));
    }
    if !f.left.is_empty() {
        problems.push(format!(
            "BPF objects of bpfckpt left {:.1} s after SIGKILL: {:?}",
            f.gone_secs, f.left
        ));
    }
    if !f.pins.is_empty() {
        problems.push(format!("pinned in {BPFFS}: {}", f.pins.join(" ")));
    }
    if f.left_stopped {
        problems.push("the target is still stopped 2 s after bpfckpt died".into());
    }
    if f.got_marker {
        problems.push(format!(
            "the {phase} completed before the kill ({}): the check missed its window",
            f.window
        ));
    }
    match c.status {
        Some(st) if st.signal() == Some(libc::SIGKILL) => {}
        other => problems.push(format!("bpfckpt was not ended by SIGKILL: {other:?}")),
    }
    if c.timed_out {
        problems.push("the target did not finish".into());
    }
    let released = c
        .stdout
        .iter()
        .find(|l| l.starts_with("RELEASED "))
        .cloned();
    match &released {
        Some(l) if l.starts_with(&format!("RELEASED {phase}")) => {
            if restore && !l.split_whitespace().any(|w| w == "torn=0") {
                problems.push(format!("pages torn: {l}"));
            }
        }
        Some(l) => problems.push(format!("released at the wrong step: {l}")),
        None => problems.push("the target reported no RELEASED line".into()),
    }
    let pass = format!("PASS kill-window released-at={phase}");
    if !c.stdout.iter().any(|l| l.starts_with(&pass)) {
        match c.stdout.iter().find(|l| l.starts_with("FAIL ")) {
            Some(l) => problems.push(format!("target: {l}")),
            None => problems.push(format!("the target printed no {pass:?}")),
        }
    }
    if !problems.is_empty() {
        return Err(format!("killed {}: {}", f.window, problems.join("; ")));
    }
    Ok(format!(
        "killed {}; held {}, all gone in {:.1} s; target not stopped; {}",
        f.window,
        f.held.counts(),
        f.gone_secs,
        released.unwrap_or_default()
    ))
}

/// What the symlink check saw, for [`symlink_verdict`].
#[derive(Debug, Default)]
pub struct SymlinkFacts {
    /// The victim file's bytes and mtime changed.
    pub victim_changed: bool,
    /// What the victim's directory holds besides the victim.
    pub beside_victim: Vec<String>,
    /// The planted link is still a link to where it pointed.
    pub link_intact: bool,
}

/// Plants a symlink at `checkpoint_complete` (to a file, or `dangling`)
/// once the target is ready, then lets it ask for its checkpoint.
pub fn symlink(
    restore_path: &str,
    dir: &str,
    dangling: bool,
    program: &[String],
    timeout: Duration,
) -> Result<String, String> {
    fresh_dir(dir)?;
    let victim_dir = format!("{dir}-victim");
    fresh_dir(&victim_dir)?;
    let victim = Path::new(&victim_dir).join("victim");
    std::fs::write(&victim, b"victim\n").map_err(|e| format!("write victim: {e}"))?;
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let victim_mtime = mtime(&victim);
    let points_to = if dangling {
        Path::new(&victim_dir).join("created-by-root")
    } else {
        victim.clone()
    };
    let deadline = Instant::now() + timeout;
    let mut prog = program.to_vec();
    prog.extend(["wait-go", "--dir", dir, "--wait", "3"].map(String::from));
    let mut r = Running::spawn(bpfckpt_run(restore_path, dir, &prog))?;
    r.wait_for("the target's READY", deadline, |l| {
        l.starts_with("READY pid=")
    })?;
    let link = Path::new(dir).join(CHECKPOINT_DONE);
    std::os::unix::fs::symlink(&points_to, &link).map_err(|e| format!("plant symlink: {e}"))?;
    std::fs::write(Path::new(dir).join("go"), b"").map_err(|e| format!("write go: {e}"))?;
    let c = r.finish(deadline);
    let beside_victim = std::fs::read_dir(&victim_dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "victim")
                .collect()
        })
        .unwrap_or_default();
    let facts = SymlinkFacts {
        victim_changed: std::fs::read(&victim).ok().as_deref() != Some(b"victim\n".as_slice())
            || mtime(&victim) != victim_mtime,
        beside_victim,
        link_intact: std::fs::read_link(&link).is_ok_and(|t| t == points_to),
    };
    symlink_verdict(&facts, &c)
}

/// Judges a symlink check.
pub fn symlink_verdict(f: &SymlinkFacts, c: &Captured) -> Result<String, String> {
    let mut problems = Vec::new();
    match c.status.and_then(|s| s.code()) {
        Some(1) => {}
        other => problems.push(format!("bpfckpt ended with {other:?}, not exit status 1")),
    }
    let error = c
        .stderr
        .iter()
        .find(|l| l.contains(CHECKPOINT_DONE) && l.contains("refusing"));
    if error.is_none() {
        problems.push(format!(
            "no error naming {CHECKPOINT_DONE} and refusing it; stderr: {}",
            c.last_error().unwrap_or("(none)")
        ));
    }
    if f.victim_changed {
        problems.push("the file the symlink points to was written".into());
    }
    if !f.beside_victim.is_empty() {
        problems.push(format!(
            "created next to the file the symlink points to: {}",
            f.beside_victim.join(" ")
        ));
    }
    if !f.link_intact {
        problems.push("the planted symlink was replaced or removed".into());
    }
    if c.timed_out {
        problems.push("timed out".into());
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(format!(
        "refused, not followed: {}",
        error.map(|l| l.trim()).unwrap_or_default()
    ))
}

#[cfg(test)]
mod link_tests {
    use super::links_since;

    #[test]
    fn links_from_5_15() {
        assert!(!links_since("5.10.0-46-cloud-amd64"));
        assert!(!links_since("5.14.21"));
        assert!(links_since("5.15.0"));
        assert!(links_since("6.1.0-40-cloud-amd64"));
        assert!(!links_since(""));
    }
}
