//! Injection tests: system calls run inside real target processes by the
//! real binary's hidden `bpfckpt __inject-selftest` (loader/src/ckpt/inject/selftest.rs),
//! into running and SIGSTOP-held targets, refused for a traced one, and with
//! bpfckpt killed at every step. Needs root.
//!
//! The target is `inject-target` (tests/targets/inject_target.rs): it keeps
//! integer, floating-point and vector values in registers and checks them,
//! printing `OK n` per block (`BAD ...` and exit 1 otherwise). The tests
//! read the held target's registers themselves (bpfckpt's `os` wrappers)
//! before and after, and its signals, descriptors and text from `/proc`.

use bpfckpt::os::{self, Regs, WaitStatus};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

mod support;
use support::{bpfckpt, need_root};

const TARGET: &str = env!("CARGO_BIN_EXE_inject-target");

// ---------------------------------------------------------------------------------------
// The target.

struct Target {
    child: Child,
    pid: i32,
    buf: u64,
    len: u64,
    /// Its output lines, with when they were read.
    lines: Receiver<(Instant, String)>,
    /// The last `OK n` seen.
    last_ok: Option<u64>,
    /// Set when the target is known not to run (or just continued): the
    /// next wait counts lines from then on, not only from its own start.
    since: Option<Instant>,
}

fn lines_of(r: impl Read + Send + 'static) -> Receiver<(Instant, String)> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines() {
            let Ok(l) = l else { break };
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    rx
}

fn text_lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    let timed = lines_of(r);
    std::thread::spawn(move || {
        for (_, l) in timed {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

impl Target {
    fn start(sleepy: bool) -> Target {
        Target::start_with(if sleepy { &["--sleepy"] } else { &[] })
    }

    fn start_with(flags: &[&str]) -> Target {
        need_root();
        let mut child = Command::new(TARGET)
            .args(flags)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn inject-target");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let (_, ready) = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("READY from the target");
        let field = |k: &str| -> u64 {
            let v = ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {ready:?}"));
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).expect("hex"),
                None => v.parse().expect("number"),
            }
        };
        let t = Target {
            pid: field("pid=") as i32,
            buf: field("buf="),
            len: field("len="),
            child,
            lines,
            last_ok: None,
            since: None,
        };
        assert_eq!(t.pid as u32, t.child.id());
        t
    }

    /// Waits for `n` `OK` lines printed from now on, or from the last
    /// `mark` (older ones only count for their order); a `BAD` line or an
    /// exit fails the test.
    fn wait_ok(&mut self, n: u64, within: Duration) {
        self.wait_for("OK ", n, within);
    }

    /// As `wait_ok`, for lines starting with `prefix` (`OK `, `TOK `, ...).
    fn wait_for(&mut self, prefix: &str, n: u64, within: Duration) {
        let now = Instant::now();
        let deadline = now + within;
        let start = self.since.take().unwrap_or(now);
        let mut seen = 0;
        while seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, line) = self.lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "pid {}: {seen} of {n} more `{prefix}` lines, last OK {:?} ({e:?}); state {:?}",
                    self.pid,
                    self.last_ok,
                    state(self.pid)
                )
            });
            assert!(!line.starts_with("BAD"), "pid {}: {line}", self.pid);
            if let Some(k) = line.strip_prefix("OK ") {
                let k: u64 = k.parse().expect("OK n");
                assert!(self.last_ok.is_none_or(|p| k == p + 1), "OK lines in order");
                self.last_ok = Some(k);
            }
            if line.starts_with(prefix) {
                seen += u64::from(at > start);
            }
        }
    }

    /// The next `BAD` line within `within`, if any (OK lines are skipped).
    fn bad_within(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, l)) if l.starts_with("BAD") => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// SIGSTOP, as bpfckpt holds its targets; returns once it is stopped.
    fn stop(&mut self) {
        kill(self.pid, libc::SIGSTOP);
        wait_until(&format!("pid {} stopped", self.pid), || {
            state(self.pid) == 'T'
        });
    }

    /// Lines read from now on are progress.
    fn mark(&mut self) {
        self.since = Some(Instant::now());
    }

    fn cont(&mut self) {
        self.mark();
        kill(self.pid, libc::SIGCONT);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: i32, sig: i32) {
    os::tgkill(pid, pid, sig).expect("signal the target");
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn status(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn status_field(pid: i32, key: &str) -> String {
    status(pid)
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn state(pid: i32) -> char {
    status_field(pid, "State:").chars().next().unwrap_or('?')
}

fn tracer(pid: i32) -> i32 {
    status_field(pid, "TracerPid:").parse().unwrap_or(-1)
}

/// What must be the same before and after an injection, `/proc` side:
/// pending and blocked signals, and every descriptor with what it names.
#[derive(Debug, PartialEq, Eq)]
struct Outside {
    sig_pnd: String,
    shd_pnd: String,
    sig_blk: String,
    fds: Vec<(String, String)>,
}

fn outside(pid: i32) -> Outside {
    let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .map(|e| {
            let link = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), link)
        })
        .collect();
    fds.sort();
    Outside {
        sig_pnd: status_field(pid, "SigPnd:"),
        shd_pnd: status_field(pid, "ShdPnd:"),
        sig_blk: status_field(pid, "SigBlk:"),
        fds,
    }
}

fn has_userfaultfd(pid: i32) -> bool {
    outside(pid)
        .fds
        .iter()
        .any(|(_, l)| l.contains("userfaultfd"))
}

/// What must be the same before and after, register side, as this test
/// reads it (seize, read, detach: a held target stays held).
#[derive(Debug, PartialEq, Eq)]
struct Inside {
    regs: Regs,
    sigmask: u64,
    /// The XSAVE area without its header (whose in-use bits the CPU may
    /// clear for registers that hold their initial values).
    fpu: Vec<u8>,
}

fn inside(pid: i32) -> Inside {
    assert_eq!(state(pid), 'T', "read only from a held target");
    os::ptrace_seize(pid, 0).expect("seize");
    let st = os::waitpid_thread(pid, false).expect("wait");
    assert!(
        matches!(st, Some(WaitStatus::Stopped { event: os::PTRACE_EVENT_STOP, sig }) if sig == libc::SIGSTOP),
        "{st:?}"
    );
    let regs = os::ptrace_getregs(pid).expect("getregs");
    let sigmask = os::ptrace_getsigmask(pid).expect("getsigmask");
    let mut fpu = os::ptrace_getregset(pid, os::NT_X86_XSTATE).expect("xstate");
    fpu.drain(512..576.min(fpu.len()));
    os::ptrace_detach(pid, 0).expect("detach");
    wait_until("back in the group stop", || state(pid) == 'T');
    Inside { regs, sigmask, fpu }
}

/// The bytes of every executable mapping of the target (its program, the C
/// library, the loader, the vDSO).
fn text(pid: i32) -> Vec<(u64, Vec<u8>)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut out = Vec::new();
    for l in maps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || f[5] == "[vsyscall]" {
            continue;
        }
        let (a, b) = f[0].split_once('-').expect("range");
        let (a, b) = (
            u64::from_str_radix(a, 16).expect("hex"),
            u64::from_str_radix(b, 16).expect("hex"),
        );
        let mut bytes = vec![0u8; (b - a) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&mem, &mut bytes, a).expect("read text");
        out.push((a, bytes));
    }
    assert!(
        out.len() >= 3,
        "program, libc, vDSO at least: {} mappings",
        out.len()
    );
    out
}

/// The `VmFlags` of the mapping that starts at `addr`.
fn vm_flags(pid: i32, addr: u64) -> String {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let head = format!("{addr:x}-");
    let mut inside = false;
    for l in smaps.lines() {
        if l.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) && l.contains('-') {
            inside = l.starts_with(&head);
        } else if inside && let Some(f) = l.strip_prefix("VmFlags:") {
            return f.trim().to_string();
        }
    }
    panic!("no mapping at {addr:#x}");
}

// ---------------------------------------------------------------------------------------
// The injector.

struct Injector {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
    seen: Vec<String>,
}

fn injector(pid: i32, args: &[&str]) -> Injector {
    let mut child = Command::new(bpfckpt())
        .args(["__inject-selftest", "--pid", &pid.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bpfckpt __inject-selftest");
    let out = text_lines_of(child.stdout.take().expect("stdout"));
    let err = text_lines_of(child.stderr.take().expect("stderr"));
    Injector {
        child,
        out,
        err,
        seen: Vec::new(),
    }
}

impl Injector {
    /// Reads its output up to a line starting with `prefix`.
    fn until(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.starts_with(prefix) {
                        return l;
                    }
                }
                Err(e) => panic!(
                    "no `{prefix}` line ({e:?}); stdout {:?}, stderr {:?}",
                    self.seen,
                    self.err.try_iter().collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Its exit code, all of its output, and the standard error of it and
    /// its watchdog (which keeps that pipe until it exits).
    fn finish(mut self) -> (Option<i32>, Vec<String>, Vec<String>) {
        drop(self.child.stdin.take());
        let st = self.child.wait().expect("wait for bpfckpt");
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.out.iter());
        let err: Vec<String> = self.err.iter().collect();
        (st.code(), seen, err)
    }

    /// SIGKILL, then the standard error of it and its watchdog.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL bpfckpt");
        self.child.wait().expect("reap bpfckpt");
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut err = Vec::new();
        while let Ok(l) = self
            .err
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            err.push(l);
        }
        err
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        // First, as a traced target's exit is only reported to its parent
        // once its tracer let go of it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(pid: i32, args: &[&str]) -> (Option<i32>, Vec<String>, Vec<String>) {
    injector(pid, args).finish()
}

fn line<'a>(out: &'a [String], prefix: &str) -> &'a str {
    out.iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in {out:?}"))
}

// ---------------------------------------------------------------------------------------
// Into a running target, into a held one.

#[test]
fn getpid_in_a_running_target() {
    let mut t = Target::start(false);
    t.wait_ok(2, Duration::from_secs(10));
    let before = outside(t.pid);
    let (code, out, err) = run(t.pid, &["--call", "getpid"]);
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    assert_eq!(line(&out, "getpid "), format!("getpid {}", t.pid));
    assert!(
        out.contains(&"step stopped".to_string()),
        "it was stopped for it: {out:?}"
    );
    // Stopped in its register loop (user space): the vDSO lends the
    // instruction; the text is never written unless forced.
    assert!(!line(&out, "insn ").starts_with("insn poke"), "{out:?}");
    wait_until("running again", || state(t.pid) != 'T');
    assert_eq!(tracer(t.pid), 0);
    assert_eq!(outside(t.pid), before);
    t.wait_ok(3, Duration::from_secs(10));
}

#[test]
fn getpid_in_a_held_target_keeps_it_held_and_every_register() {
    let mut t = Target::start(true);
    t.wait_ok(2, Duration::from_secs(10));
    t.stop();
    let (o0, i0, x0) = (outside(t.pid), inside(t.pid), text(t.pid));
    let (code, out, err) = run(t.pid, &["--call", "getpid"]);
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    assert_eq!(line(&out, "getpid "), format!("getpid {}", t.pid));
    assert!(
        !out.contains(&"step stopped".to_string()),
        "already held: {out:?}"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state(t.pid), 'T', "still held");
    assert_eq!(tracer(t.pid), 0);
    assert_eq!(outside(t.pid), o0);
    assert_eq!(inside(t.pid), i0);
    assert!(text(t.pid) == x0, "text unchanged");
    eprintln!("held target: {}", line(&out, "insn "));
    // It stopped in nanosleep (or its libc wrapper) almost surely; the sleep
    // restarts and never returns early (the target checks).
    t.cont();
    t.wait_ok(3, Duration::from_secs(10));
}

/// Borrowing the instruction behind rip: a target stopped in nanosleep.
#[test]
fn a_thread_out_of_a_system_call_lends_its_own_instruction() {
    let mut t = Target::start(true);
    t.wait_ok(1, Duration::from_secs(10));
    let mut kinds = Vec::new();
    for _ in 0..5 {
        t.stop();
        let i0 = inside(t.pid);
        let (code, out, err) = run(t.pid, &["--call", "getpid"]);
        assert_eq!(code, Some(0), "{out:?} {err:?}");
        assert_eq!(inside(t.pid), i0);
        let kind = line(&out, "insn ").to_string();
        t.cont();
        t.wait_ok(1, Duration::from_secs(10));
        if let Some(at) = kind.strip_prefix("insn behind 0x") {
            // In nanosleep mostly, or writing its OK line.
            assert_ne!(i0.regs.orig_rax, u64::MAX, "{:?}", i0.regs);
            assert_eq!(u64::from_str_radix(at, 16).ok(), Some(i0.regs.rip - 2));
            return;
        }
        kinds.push(kind);
    }
    panic!("never stopped in a system call: {kinds:?}");
}

fn uffd_into(t: &mut Target) -> (Vec<String>, Vec<String>) {
    let range = format!("{:x}:{:x}", t.buf, t.len);
    let mut inj = injector(t.pid, &["--call", "uffd", "--register", &range, "--hold"]);
    let api = inj.until("uffd api ");
    let features =
        u64::from_str_radix(api.trim_start_matches("uffd api features=0x"), 16).expect("features");
    assert_eq!(features & (1 << 15 | 1 << 13), 1 << 15 | 1 << 13, "{api}");
    inj.until("uffd registered ");
    inj.until("holding");
    // bpfckpt holds the only userfaultfd, and it acts on the target's memory.
    assert!(!has_userfaultfd(t.pid), "{:?}", outside(t.pid).fds);
    let flags = vm_flags(t.pid, t.buf);
    assert!(
        flags.split_whitespace().any(|f| f == "uw"),
        "uffd-wp flag: {flags}"
    );
    let (code, out, err) = inj.finish();
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    // Closing it in bpfckpt ends the registration.
    let flags = vm_flags(t.pid, t.buf);
    assert!(!flags.split_whitespace().any(|f| f == "uw"), "{flags}");
    (out, err)
}

#[test]
fn userfaultfd_into_a_running_target() {
    let mut t = Target::start(false);
    t.wait_ok(2, Duration::from_secs(10));
    let before = outside(t.pid);
    uffd_into(&mut t);
    assert_eq!(outside(t.pid), before);
    assert_ne!(state(t.pid), 'T');
    t.wait_ok(3, Duration::from_secs(10));
}

#[test]
fn userfaultfd_into_a_held_target() {
    let mut t = Target::start(true);
    t.wait_ok(2, Duration::from_secs(10));
    t.stop();
    let (o0, i0, x0) = (outside(t.pid), inside(t.pid), text(t.pid));
    uffd_into(&mut t);
    assert_eq!(state(t.pid), 'T', "still held");
    assert_eq!(outside(t.pid), o0);
    assert_eq!(inside(t.pid), i0);
    assert!(text(t.pid) == x0, "text unchanged");
    t.cont();
    t.wait_ok(3, Duration::from_secs(10));
}

/// The other threads of the target: the group stop holds them too.
fn other_thread(pid: i32) -> i32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| t != pid)
        .expect("a second thread")
}

#[test]
fn into_another_thread_of_a_running_target() {
    let mut t = Target::start_with(&["--thread"]);
    t.wait_ok(2, Duration::from_secs(10));
    let tid = other_thread(t.pid);
    let before = outside(t.pid);
    let (code, out, err) = run(t.pid, &["--tid", &tid.to_string(), "--call", "uffd"]);
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    assert_eq!(outside(t.pid), before);
    t.wait_ok(2, Duration::from_secs(10));
    t.wait_for("TOK ", 2, Duration::from_secs(10));
}

#[test]
fn into_another_thread_of_a_held_target() {
    let mut t = Target::start_with(&["--thread", "--sleepy"]);
    t.wait_ok(2, Duration::from_secs(10));
    t.stop();
    let tid = other_thread(t.pid);
    wait_until("every thread stopped", || state(tid) == 'T');
    let (o0, main0, other0) = (outside(t.pid), inside(t.pid), inside(tid));
    let (code, out, err) = run(t.pid, &["--tid", &tid.to_string(), "--call", "uffd"]);
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    assert_eq!((state(t.pid), state(tid)), ('T', 'T'));
    assert_eq!(outside(t.pid), o0);
    assert_eq!(inside(t.pid), main0);
    assert_eq!(inside(tid), other0);
    t.cont();
    t.wait_ok(2, Duration::from_secs(10));
    t.wait_for("TOK ", 2, Duration::from_secs(10));
}

/// Signals pending at the injection stay pending through it (none taken,
/// none added) and are delivered once the target is continued.
#[test]
fn pending_signals_stay_pending_through_an_injection() {
    let mut t = Target::start_with(&["--sleepy", "--signals"]);
    t.wait_ok(2, Duration::from_secs(10));
    t.stop();
    // SIGUSR1 for the process (it has a handler), SIGUSR2 for the thread
    // (blocked).
    let pidfd = os::pidfd_open(t.pid).expect("pidfd");
    os::pidfd_send_signal(std::os::fd::AsFd::as_fd(&pidfd), libc::SIGUSR1).expect("SIGUSR1");
    os::tgkill(t.pid, t.pid, libc::SIGUSR2).expect("SIGUSR2");
    let o0 = outside(t.pid);
    let bit = |sig: i32| 1u64 << (sig - 1);
    let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
    assert_ne!(hex(&o0.shd_pnd) & bit(libc::SIGUSR1), 0, "{o0:?}");
    assert_ne!(hex(&o0.sig_pnd) & bit(libc::SIGUSR2), 0, "{o0:?}");
    assert_ne!(hex(&o0.sig_blk) & bit(libc::SIGUSR2), 0, "{o0:?}");
    let i0 = inside(t.pid);
    let (code, out, err) = run(t.pid, &["--call", "uffd"]);
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    assert_eq!(state(t.pid), 'T');
    assert_eq!(outside(t.pid), o0, "same signals pending and blocked");
    assert_eq!(inside(t.pid), i0);
    assert!(
        t.lines.try_recv().is_err(),
        "the handler did not run while held"
    );
    t.cont();
    t.wait_for("SIGNALS 1", 1, Duration::from_secs(10));
    t.wait_ok(2, Duration::from_secs(10));
    let after = outside(t.pid);
    assert_eq!(hex(&after.shd_pnd) & bit(libc::SIGUSR1), 0, "delivered");
    assert_ne!(hex(&after.sig_pnd) & bit(libc::SIGUSR2), 0, "still pending");
}

#[test]
fn a_poked_instruction_is_taken_out_again() {
    let mut t = Target::start(false);
    t.wait_ok(2, Duration::from_secs(10));
    // In its register loop, whose code is then rewritten under it.
    std::thread::sleep(Duration::from_millis(8));
    t.stop();
    let (o0, i0, x0) = (outside(t.pid), inside(t.pid), text(t.pid));
    let (code, out, err) = run(t.pid, &["--call", "uffd", "--force-poke"]);
    assert_eq!(code, Some(0), "{out:?} {err:?}");
    assert_eq!(line(&out, "insn "), format!("insn poke {:#x}", i0.regs.rip));
    assert_eq!(state(t.pid), 'T');
    assert_eq!(outside(t.pid), o0);
    assert_eq!(inside(t.pid), i0);
    assert!(text(t.pid) == x0, "text unchanged");
    t.cont();
    t.wait_ok(3, Duration::from_secs(10));
}

#[test]
fn a_traced_target_is_refused_in_one_line() {
    let mut t = Target::start(false);
    t.wait_ok(1, Duration::from_secs(10));
    // This test thread is the debugger.
    os::ptrace_seize(t.pid, 0).expect("seize");
    let (code, out, err) = run(t.pid, &["--call", "getpid"]);
    let me = std::process::id();
    assert_eq!(code, Some(2), "{out:?} {err:?}");
    assert_eq!(
        err,
        vec![format!(
            "bpfckpt: cannot inject into pid {}: it is already traced by pid {me} (a debugger?); detach that first",
            t.pid
        )]
    );
    assert!(out.is_empty(), "{out:?}");
    os::ptrace_interrupt(t.pid).expect("interrupt");
    os::waitpid_thread(t.pid, false).expect("wait");
    os::ptrace_detach(t.pid, 0).expect("detach");
    t.wait_ok(2, Duration::from_secs(10));
}

#[test]
fn without_cap_sys_ptrace_it_is_refused_before_anything_is_done() {
    let mut t = Target::start(false);
    t.wait_ok(1, Duration::from_secs(10));
    let out = Command::new("setpriv")
        .args(["--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"])
        .arg(bpfckpt())
        .args([
            "__inject-selftest",
            "--pid",
            &t.pid.to_string(),
            "--no-watchdog",
        ])
        .output()
        .expect("setpriv");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "bpfckpt: cannot inject into pid {}: ptrace refused: bpfckpt lacks CAP_SYS_PTRACE, \
             which tracing this process needs",
            t.pid
        )
    );
    assert!(out.stdout.is_empty(), "not even stopped: {:?}", out.stdout);
    assert_ne!(state(t.pid), 'T');
    t.wait_ok(2, Duration::from_secs(10));
}

/// The registers this test writes reach the target, and its self-check
/// sees them: what makes the other tests' `OK` lines mean something.
#[test]
fn register_writes_reach_the_target_and_its_check_sees_them() {
    // Vector state (ymm15 through the XSAVE area; xmm15 without AVX2)...
    let mut caught = 0;
    for _ in 0..5 {
        let mut t = Target::start(false);
        t.wait_ok(1, Duration::from_secs(10));
        // Right after an OK line it is in Rust code; a few milliseconds
        // later, in the register loop.
        std::thread::sleep(Duration::from_millis(8));
        t.stop();
        os::ptrace_seize(t.pid, 0).expect("seize");
        os::waitpid_thread(t.pid, false).expect("wait");
        let mut xs = os::ptrace_getregset(t.pid, os::NT_X86_XSTATE).expect("xstate");
        // xmm15 in the legacy area, the upper half of ymm15 in the AVX
        // component (marked in use in the header).
        xs[400..416].copy_from_slice(&[0xa5; 16]);
        if xs.len() >= 832 {
            xs[816..832].copy_from_slice(&[0x5a; 16]);
            xs[512] |= 0b110;
        }
        os::ptrace_setregset(t.pid, os::NT_X86_XSTATE, &xs).expect("set xstate");
        let back = os::ptrace_getregset(t.pid, os::NT_X86_XSTATE).expect("xstate");
        assert_eq!(back[400..416], [0xa5; 16]);
        os::ptrace_detach(t.pid, 0).expect("detach");
        t.cont();
        if let Some(bad) = t.bad_within(Duration::from_secs(3)) {
            assert!(bad.contains("sentinel"), "{bad}");
            caught += 1;
            break;
        }
        // It was stopped outside its register loop: try again.
    }
    assert_eq!(caught, 1, "a changed vector register was never noticed");
    // ... and general-purpose registers (r14 through SETREGS).
    for _ in 0..5 {
        let mut t = Target::start(false);
        t.wait_ok(1, Duration::from_secs(10));
        // Right after an OK line it is in Rust code; a few milliseconds
        // later, in the register loop.
        std::thread::sleep(Duration::from_millis(8));
        t.stop();
        os::ptrace_seize(t.pid, 0).expect("seize");
        os::waitpid_thread(t.pid, false).expect("wait");
        let mut r = os::ptrace_getregs(t.pid).expect("getregs");
        r.r14 ^= 1;
        os::ptrace_setregs(t.pid, &r).expect("setregs");
        os::ptrace_detach(t.pid, 0).expect("detach");
        t.cont();
        if t.bad_within(Duration::from_secs(3)).is_some() {
            return;
        }
    }
    panic!("a changed r14 was never noticed");
}

// ---------------------------------------------------------------------------------------
// bpfckpt killed at every step.

/// Kills the injector at `step` of fetching a userfaultfd from a running
/// target: the target must run on, checked, with nothing left behind.
fn killed_at(step: &str, extra: &[&str]) -> Vec<String> {
    let mut t = Target::start(false);
    t.wait_ok(2, Duration::from_secs(10));
    let (o0, x0) = (outside(t.pid), text(t.pid));
    let mut args = vec!["--call", "uffd", "--pause-after", step];
    args.extend_from_slice(extra);
    let mut inj = injector(t.pid, &args);
    inj.until(&format!("paused {step}"));
    // Stopped by the injector at every step (`t` while it is seized): what
    // it prints from now on shows it running again.
    assert!(matches!(state(t.pid), 'T' | 't'), "{}", state(t.pid));
    std::thread::sleep(Duration::from_millis(20));
    t.mark();
    let err = inj.kill();
    wait_until("the target runs again, untraced", || {
        state(t.pid) != 'T' && tracer(t.pid) == 0
    });
    t.wait_ok(3, Duration::from_secs(10));
    assert_eq!(outside(t.pid), o0, "watchdog said {err:?}");
    assert!(!has_userfaultfd(t.pid));
    assert!(text(t.pid) == x0, "text unchanged");
    err
}

#[test]
fn killed_once_it_stopped_the_target() {
    let err = killed_at("stopped", &[]);
    assert!(err.iter().any(|l| l.contains("sent SIGCONT")), "{err:?}");
}

#[test]
fn killed_once_seized() {
    let err = killed_at("seized", &[]);
    assert!(err.iter().any(|l| l.contains("sent SIGCONT")), "{err:?}");
}

#[test]
fn killed_once_registers_are_saved() {
    let err = killed_at("saved", &[]);
    assert!(
        err.iter().any(|l| l.contains("put back the registers")),
        "{err:?}"
    );
}

#[test]
fn killed_once_registers_are_changed() {
    let err = killed_at("changed", &[]);
    assert!(
        err.iter().any(|l| l.contains("put back the registers")),
        "{err:?}"
    );
}

#[test]
fn killed_after_the_system_call_ran() {
    let err = killed_at("stepped", &[]);
    // The userfaultfd was made in the target: the watchdog closed it.
    assert!(
        err.iter()
            .any(|l| l.contains("put back the registers") && l.contains("closed its descriptor")),
        "{err:?}"
    );
}

#[test]
fn killed_once_registers_are_back() {
    let err = killed_at("restored", &[]);
    assert!(
        err.iter().any(|l| l.contains("put back the registers")),
        "{err:?}"
    );
}

#[test]
fn killed_with_a_poked_instruction_in_the_text() {
    for step in ["changed", "stepped"] {
        let err = killed_at(step, &["--force-poke"]);
        assert!(err.iter().any(|l| l.contains("text at")), "{step}: {err:?}");
    }
}

/// A held target stays held, and gets every register back.
fn killed_while_held(step: &str) -> Vec<String> {
    let mut t = Target::start(true);
    t.wait_ok(2, Duration::from_secs(10));
    t.stop();
    let (o0, i0) = (outside(t.pid), inside(t.pid));
    let mut inj = injector(t.pid, &["--call", "uffd", "--pause-after", step]);
    inj.until(&format!("paused {step}"));
    let err = inj.kill();
    wait_until("untraced and stopped", || {
        tracer(t.pid) == 0 && state(t.pid) == 'T'
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(state(t.pid), 'T', "still held; watchdog said {err:?}");
    assert_eq!(outside(t.pid), o0, "watchdog said {err:?}");
    assert_eq!(inside(t.pid), i0, "watchdog said {err:?}");
    t.cont();
    t.wait_ok(3, Duration::from_secs(10));
    err
}

#[test]
fn killed_while_held_once_registers_are_changed() {
    let err = killed_while_held("changed");
    assert!(
        err.iter().any(|l| l.contains("put back the registers")),
        "{err:?}"
    );
    assert!(!err.iter().any(|l| l.contains("SIGCONT")), "{err:?}");
}

#[test]
fn killed_while_held_after_the_system_call_ran() {
    let err = killed_while_held("stepped");
    assert!(
        err.iter().any(|l| l.contains("closed its descriptor")),
        "{err:?}"
    );
}

#[test]
fn the_watchdog_is_what_puts_the_target_back() {
    // Without it, a death mid-injection leaves the held target with the
    // injection's registers: the protection above is the watchdog's.
    let mut t = Target::start(true);
    t.wait_ok(1, Duration::from_secs(10));
    t.stop();
    let i0 = inside(t.pid);
    let mut inj = injector(
        t.pid,
        &[
            "--call",
            "getpid",
            "--pause-after",
            "changed",
            "--no-watchdog",
        ],
    );
    inj.until("paused changed");
    let err = inj.kill();
    assert!(err.is_empty(), "{err:?}");
    // Detached from the dead tracer, it goes back into the group stop
    // without running a single instruction of its own.
    wait_until("untraced and stopped", || {
        tracer(t.pid) == 0 && state(t.pid) == 'T'
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        state(t.pid),
        'T',
        "a group-stopped target never runs on its own"
    );
    let i1 = inside(t.pid);
    assert_ne!(i1.regs, i0.regs);
    assert_eq!(
        (i1.regs.rax, i1.regs.orig_rax),
        (39, u64::MAX),
        "getpid set up"
    );
    // Put it back by hand, so that the target can end normally.
    os::ptrace_seize(t.pid, 0).expect("seize");
    os::waitpid_thread(t.pid, false).expect("wait");
    os::ptrace_setregs(t.pid, &i0.regs).expect("setregs");
    os::ptrace_setsigmask(t.pid, i0.sigmask).expect("setsigmask");
    os::ptrace_detach(t.pid, 0).expect("detach");
    t.cont();
    t.wait_ok(2, Duration::from_secs(10));
    let _ = std::io::stderr().flush();
}
