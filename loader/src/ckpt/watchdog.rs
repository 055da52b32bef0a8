//! A watchdog that never leaves a held target stopped when bpfckpt dies.
//!
//! While it serves a target, bpfckpt may hold it (SIGSTOP at its trigger, or
//! at its exec for `watch`) and only bpfckpt sends the SIGCONT. A `run`
//! target is covered by the gate (`PR_SET_PDEATHSIG` = SIGCONT), but a
//! `watch` target is someone else's process: if bpfckpt is killed
//! (SIGKILL, the OOM killer) while such a target is held, nothing would ever
//! continue it.
//!
//! So bpfckpt starts this helper: itself, re-executed as the hidden
//! subcommand `__watchdog`, with a pipe as its standard input. bpfckpt writes
//! one line whenever that changes:
//!
//! ```text
//! serve PID      the target now being served (it may be held at any moment)
//! idle           no target is being served
//! watch COMM     processes named COMM may be held at their exec before
//!                bpfckpt has learnt their pid (`watch` waiting)
//! ```
//!
//! and, around a system call injected into a target (`ckpt/inject/`),
//! the lines of `inject::Note`:
//!
//! ```text
//! hold PID                 PID was stopped for an injection (continue it)
//! inject PID TID ...       TID's registers, signal mask and text word
//!                          before the injection (sent before any changes)
//! call TID NR FD           system call NR is about to run in TID (FD 1: it
//!                          makes a descriptor the target must not keep)
//! owns TID FD              the target holds FD from the injection (-1: none)
//! injected TID             TID is back as it was and detached
//! release PID              PID runs again
//! ```
//!
//! When the pipe reaches end-of-file, bpfckpt has exited, however it died.
//! First it undoes every injection still open: the kernel detached the
//! thread from the dead tracer and, the process being group-stopped, the
//! thread went back into the group stop without running; the watchdog
//! seizes it, closes a descriptor the injection left, puts registers, mask
//! and text back and detaches (`inject::recover`), then continues each
//! process held for an injection. Only then, since a SIGCONT before would
//! let a thread run with the injection's registers, the watchdog sends SIGCONT to the process it was serving whenever
//! that process is stopped during a grace period of a few seconds (through a
//! pidfd taken when the `serve` line arrived, so a reused pid is never
//! signalled): the kernel detaches bpfckpt's probes only as it closes its
//! descriptors, and a probe already copying a checkpoint in the target may
//! stop it after bpfckpt is gone. After a `watch` line it also continues
//! stopped processes of that name that started after the watchdog did (those
//! are the ones the probes may have held at their exec). Then it exits; it
//! exits at once if nothing was being served (`idle`, an orderly end). It blocks
//! SIGINT, SIGTERM, SIGHUP and the terminal stop signals, so a Ctrl-C to the
//! process group ends bpfckpt in order while the watchdog stays to see it.
//!
//! The helper holds no BPF object: the descriptors bpfckpt owns are all
//! close-on-exec, and the pipe's write end too, so no target inherits it.

use super::inject::{self, Note, Pending};
use super::procfs;
use crate::{Error, Result};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SigSet;
use std::io::{BufRead, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden subcommand that runs the watchdog.
pub const SUBCOMMAND: &str = "__watchdog";

/// How long the watchdog keeps the served process from staying stopped
/// after bpfckpt died (longer than detaching the probes plus the longest
/// checkpoint copy in flight).
const GRACE: Duration = Duration::from_secs(5);

/// bpfckpt's end of the watchdog: a child process and the pipe to it.
pub struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts the watchdog (this executable, `__watchdog`). Call it once,
    /// after the signals are blocked (the helper inherits the mask).
    pub fn spawn() -> Result<Watchdog> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::from(e).context("start the watchdog: own executable"))?;
        let mut child = Command::new(exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::from(e).context("start the watchdog"))?;
        let stdin = child.stdin.take();
        Ok(Watchdog { child, stdin })
    }

    /// The watchdog's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the watchdog is still there to act (its pipe is open).
    pub fn is_alive(&self) -> bool {
        self.stdin.is_some()
    }

    fn send(&mut self, line: &str) -> bool {
        let ok = self.stdin.as_mut().is_some_and(|s| {
            s.write_all(line.as_bytes())
                .and_then(|()| s.flush())
                .is_ok()
        });
        if !ok && self.stdin.take().is_some() {
            eprintln!(
                "bpfckpt: warning: the watchdog is gone; a held target would stay stopped if bpfckpt died"
            );
        }
        ok
    }

    /// One line about an injection (`inject::Note::to_line`). An error when
    /// the watchdog is gone: then the injection must not change anything
    /// only the watchdog could undo.
    pub fn note(&mut self, line: &str) -> Result<()> {
        if self.send(line) {
            Ok(())
        } else {
            Err(Error::new(
                "the watchdog is gone: an injection could not be undone if bpfckpt died",
            ))
        }
    }

    /// `pid` is being served from now on: call it before the target can be
    /// held by the probes for its requests (before the probes are configured
    /// for it), and for `watch` as soon as the exec event names it.
    pub fn serving(&mut self, pid: i32) {
        self.send(&format!("serve {pid}\n"));
    }

    /// No target is being served any more: call it after the last SIGCONT.
    pub fn idle(&mut self) {
        self.send("idle\n");
    }

    /// `watch`: processes named `comm` may be held at their exec before
    /// bpfckpt knows them. Optional; call it after `set_watch`.
    pub fn watching(&mut self, comm: &str) {
        let comm: String = comm.chars().filter(|c| !c.is_control()).collect();
        self.send(&format!("watch {comm}\n"));
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // End-of-file: the watchdog releases whatever it was told is being
        // served (an orderly shutdown has released it already) and exits.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                _ => return,
            }
        }
    }
}

/// What the watchdog has been told.
#[derive(Default)]
struct State {
    /// The target being served and a handle on it (None if it was gone).
    serving: Option<(i32, Option<OwnedFd>)>,
    watch_comm: Option<String>,
    /// Processes stopped for an injection, with a handle on each.
    held: Vec<(i32, Option<OwnedFd>)>,
    /// Injections not over yet.
    injections: Vec<Pending>,
}

impl State {
    fn injection(&mut self, tid: i32) -> Option<&mut Pending> {
        self.injections.iter_mut().find(|p| p.saved.tid == tid)
    }

    fn note(&mut self, n: Note) {
        match n {
            Note::Hold(pid) => {
                self.held.retain(|h| h.0 != pid);
                self.held.push((pid, crate::os::pidfd_open(pid).ok()));
            }
            Note::Release(pid) => self.held.retain(|h| h.0 != pid),
            Note::Inject(saved) => {
                self.injections.retain(|p| p.saved.tid != saved.tid);
                self.injections.push(Pending {
                    saved: *saved,
                    call: None,
                    owned_fd: None,
                });
            }
            Note::Call { tid, nr, makes_fd } => {
                if let Some(p) = self.injection(tid) {
                    p.call = Some((nr, makes_fd));
                }
            }
            Note::Owns { tid, fd } => {
                if let Some(p) = self.injection(tid) {
                    p.owned_fd = fd;
                }
            }
            Note::Injected(tid) => self.injections.retain(|p| p.saved.tid != tid),
        }
    }

    fn line(&mut self, line: &str) {
        if let Some(n) = Note::parse(line) {
            return self.note(n);
        }
        let mut words = line.trim_end_matches(['\n', '\r']).splitn(2, ' ');
        match (words.next(), words.next()) {
            (Some("serve"), Some(pid)) => {
                if let Ok(pid) = pid.trim().parse::<i32>()
                    && pid > 0
                {
                    self.serving = Some((pid, crate::os::pidfd_open(pid).ok()));
                }
            }
            (Some("idle"), None) => self.serving = None,
            (Some("watch"), Some(comm)) if !comm.is_empty() => {
                self.watch_comm = Some(comm.to_string());
            }
            _ => {}
        }
    }
}

fn stopped(pid: i32) -> bool {
    procfs::process_state(pid) == Some('T')
}

/// The largest `TracerPid` of `pid`'s threads (0: none traced); `None` once
/// it is gone.
fn tracer(pid: i32) -> Option<i32> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut max = None;
    for t in dir.flatten() {
        let Some(st) = inject::read_status(pid, t.file_name().to_str()?.parse().ok()?) else {
            continue;
        };
        max = max.max(Some(st.tracer));
    }
    max
}

/// Field 22 of `/proc/PID/stat`: start time in clock ticks after boot.
fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn comm(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

fn cont(pid: i32, why: &str) {
    // A pidfd, so that the pid cannot have been reused under us.
    let Ok(fd) = crate::os::pidfd_open(pid) else {
        return;
    };
    if stopped(pid) && crate::os::pidfd_send_signal(fd.as_fd(), Signal::SIGCONT as i32).is_ok() {
        eprintln!(
            "bpfckpt: watchdog: bpfckpt exited while pid {pid} was stopped ({why}); sent SIGCONT"
        );
    }
}

/// The body of the hidden `__watchdog` subcommand. Returns its exit code.
pub fn watchdog_main() -> u8 {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ] {
        mask.add(s);
    }
    let _ = mask.thread_block();
    let me = std::process::id() as i32;
    let my_start = start_time(me).unwrap_or(u64::MAX);
    let mut st = State::default();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let mut buf = String::new();
    loop {
        buf.clear();
        match lines.read_line(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => st.line(&buf),
        }
    }
    // bpfckpt is gone. Injections first: a SIGCONT before their registers
    // are back would run the target with the injection's.
    for p in &st.injections {
        match inject::recover(p) {
            Ok(what) => eprintln!("bpfckpt: watchdog: bpfckpt exited mid-injection; {what}"),
            Err(e) => eprintln!(
                "bpfckpt: watchdog: bpfckpt exited mid-injection into thread {} of pid {}; \
                 putting it back failed: {e}",
                p.saved.tid, p.saved.pid
            ),
        }
    }
    for (pid, fd) in &st.held {
        let Some(fd) = fd else { continue };
        // A thread bpfckpt had seized shows as traced until the kernel has
        // detached it, then runs for a moment on its way back into the
        // group stop: continue the process once it is there.
        let deadline = Instant::now() + GRACE;
        while tracer(*pid).is_some_and(|t| t != 0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            if stopped(*pid) {
                if crate::os::pidfd_send_signal(fd.as_fd(), Signal::SIGCONT as i32).is_ok() {
                    eprintln!(
                        "bpfckpt: watchdog: bpfckpt exited while pid {pid} was stopped for an injection; sent SIGCONT"
                    );
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Its probes may still be attached for a moment (the
    // kernel detaches them as it closes bpfckpt's descriptors, which takes a
    // while), and a probe already running in the target (a long checkpoint
    // copy) may stop it after this point: keep watching for a grace period.
    if let Some((pid, Some(fd))) = &st.serving {
        let deadline = Instant::now() + GRACE;
        loop {
            if stopped(*pid)
                && crate::os::pidfd_send_signal(fd.as_fd(), Signal::SIGCONT as i32).is_ok()
            {
                eprintln!(
                    "bpfckpt: watchdog: bpfckpt exited while pid {pid} was held; sent SIGCONT"
                );
            }
            let gone = procfs::process_state(*pid).is_none_or(|s| s == 'Z' || s == 'X');
            if gone || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let served = st.serving.as_ref().map(|s| s.0);
    if let Some(want) = &st.watch_comm {
        let want: String = want.chars().take(15).collect();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pid == me || Some(pid) == served || !stopped(pid) {
                continue;
            }
            if comm(pid).as_deref() == Some(want.as_str())
                && start_time(pid).is_some_and(|t| t >= my_start)
            {
                cont(pid, "held at its exec");
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_parsed() {
        let mut st = State::default();
        let me = std::process::id() as i32;
        st.line(&format!("serve {me}\n"));
        assert_eq!(st.serving.as_ref().map(|s| s.0), Some(me));
        assert!(st.serving.as_ref().is_some_and(|s| s.1.is_some()));
        st.line("idle\n");
        assert!(st.serving.is_none());
        st.line("serve -3\n");
        st.line("serve x\n");
        st.line("bogus\n");
        assert!(st.serving.is_none());
        st.line("watch my prog\n");
        assert_eq!(st.watch_comm.as_deref(), Some("my prog"));
    }

    #[test]
    fn injection_lines_are_followed() {
        let mut st = State::default();
        let me = std::process::id() as i32;
        st.line(&format!("hold {me}\n"));
        assert_eq!(st.held.len(), 1);
        assert!(st.held[0].1.is_some(), "a handle on the held process");
        let saved = inject::Saved {
            pid: me,
            tid: me + 1,
            regs: crate::os::Regs {
                rip: 0x1000,
                ..Default::default()
            },
            sigmask: 0,
            insn: 0x2000,
            poke: None,
        };
        st.line(&Note::Inject(Box::new(saved.clone())).to_line());
        st.line(&format!("call {} 323 1\n", me + 1));
        st.line(&format!("owns {} 7\n", me + 1));
        st.line("call 99999 3 0\n"); // no such injection: ignored
        assert_eq!(
            st.injections,
            vec![Pending {
                saved: saved.clone(),
                call: Some((323, true)),
                owned_fd: Some(7),
            }]
        );
        st.line(&format!("owns {} -1\n", me + 1));
        assert_eq!(st.injections[0].owned_fd, None);
        // A new injection into the same thread replaces the old one.
        st.line(&Note::Inject(Box::new(saved)).to_line());
        assert_eq!((st.injections.len(), st.injections[0].call), (1, None));
        st.line(&format!("injected {}\n", me + 1));
        assert!(st.injections.is_empty());
        st.line(&format!("release {me}\n"));
        assert!(st.held.is_empty());
        assert!(st.serving.is_none(), "injection lines are not `serve`");
    }

    #[test]
    fn stat_fields() {
        let me = std::process::id() as i32;
        assert_eq!(tracer(me), Some(0));
        assert!(start_time(me).is_some());
        assert!(comm(me).is_some());
        assert!(procfs::process_state(me).is_some_and(|s| s != 'T'));
    }
}
