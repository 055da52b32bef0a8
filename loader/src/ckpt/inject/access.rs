//! What /proc says, and whether the target can be traced at all: refusals and their reasons.

use super::{CAP_SYS_PTRACE, EINTR, ERESTARTNOHAND, SYNC_SIGNALS};
use crate::Error;
use crate::ckpt::procfs;
use crate::os::{self, Regs};
use std::fmt;

/// The lines of `/proc/PID/task/TID/status` that matter here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// The state letter (`R`, `S`, `T`, `t`, `Z`, ...).
    pub state: char,
    /// Pid of the tracer, 0 if none.
    pub tracer: i32,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// Signals pending for the thread, for the process, blocked by the thread.
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
}

/// Parses the text of a `status` file (unknown or missing lines stay 0).
pub fn parse_status(text: &str) -> ProcStatus {
    let mut st = ProcStatus::default();
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        let hex = || u64::from_str_radix(val, 16).unwrap_or(0);
        match key {
            "State" => st.state = val.chars().next().unwrap_or('?'),
            "TracerPid" => st.tracer = val.parse().unwrap_or(0),
            "Seccomp" => st.seccomp = val.parse().unwrap_or(0),
            "SigPnd" => st.sig_pnd = hex(),
            "ShdPnd" => st.shd_pnd = hex(),
            "SigBlk" => st.sig_blk = hex(),
            _ => {}
        }
    }
    st
}

/// `/proc/PID/task/TID/status`, `None` if that thread is gone (or not `pid`'s).
pub fn read_status(pid: i32, tid: i32) -> Option<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    Some(parse_status(&text))
}

/// The process thread `tid` belongs to (`tid` itself if that cannot be told).
fn tgid_of(tid: i32) -> i32 {
    if tid <= 0 {
        return tid;
    }
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

/// Yama's `kernel.yama.ptrace_scope`, `None` without Yama.
fn yama_scope() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why a target cannot be injected into.
#[derive(Debug)]
pub enum Reason {
    /// Another tracer (a debugger, strace) is attached: pid of the tracer.
    Traced(i32),
    /// Yama's `ptrace_scope` forbids the attach.
    Yama(u32),
    /// No CAP_SYS_PTRACE, and the target is not ours to trace (another
    /// user, not dumpable, or capabilities we lack).
    NoCapability,
    /// EPERM with CAP_SYS_PTRACE and no Yama to blame.
    Denied,
    /// Strict seccomp: any injected system call would kill the target.
    SeccompStrict,
    /// The thread is in a system call that swapped its signal mask for a
    /// while; ptrace can neither see nor restore the mask it swapped out.
    TemporaryMask(&'static str),
    /// The process has no such thread.
    NotAThread,
    /// The process is gone or exiting.
    Gone,
    /// Something failed on the way (not a verdict on the target).
    Failed(Error),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Traced(t) => write!(
                f,
                "it is already traced by pid {t} (a debugger?); detach that first"
            ),
            Reason::Yama(3) => {
                f.write_str("kernel.yama.ptrace_scope = 3 forbids every ptrace attach")
            }
            Reason::Yama(s) => write!(
                f,
                "kernel.yama.ptrace_scope = {s} refuses the attach without CAP_SYS_PTRACE"
            ),
            Reason::NoCapability => f.write_str(
                "ptrace refused: bpfckpt lacks CAP_SYS_PTRACE, which tracing this process needs",
            ),
            Reason::Denied => f.write_str(
                "ptrace refused (EPERM) although bpfckpt has CAP_SYS_PTRACE (a security module?)",
            ),
            Reason::SeccompStrict => f.write_str(
                "it runs under strict seccomp, where any injected system call would kill it",
            ),
            Reason::TemporaryMask(s) => write!(
                f,
                "the thread is in {s} with a temporary signal mask that ptrace cannot restore; \
                 try another thread or later"
            ),
            Reason::NotAThread => f.write_str("it has no such thread"),
            Reason::Gone => f.write_str("it is gone or exiting"),
            Reason::Failed(e) => {
                // One line, even if the error carried a log.
                f.write_str(e.msg.lines().next().unwrap_or(""))
            }
        }
    }
}

/// An injection that did not start: one line naming the target and why.
#[derive(Debug)]
pub struct Refusal {
    pub pid: i32,
    pub tid: i32,
    pub reason: Reason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot inject into pid {}", self.pid)?;
        if self.tid != self.pid {
            write!(f, " (thread {})", self.tid)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for Refusal {}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        let errno = match &r.reason {
            Reason::Failed(e) => e.errno,
            Reason::Gone | Reason::NotAThread => Some(libc::ESRCH),
            _ => Some(libc::EPERM),
        };
        Error {
            msg: r.to_string(),
            errno,
            log: None,
        }
    }
}

/// What can be told before trying: `None` when nothing speaks against it.
pub fn precheck(st: &ProcStatus, yama: Option<u32>, cap_sys_ptrace: bool) -> Option<Reason> {
    if st.tracer != 0 {
        return Some(Reason::Traced(st.tracer));
    }
    if st.state == 'Z' || st.state == 'X' {
        return Some(Reason::Gone);
    }
    if st.seccomp == 1 {
        return Some(Reason::SeccompStrict);
    }
    match yama {
        Some(3) => Some(Reason::Yama(3)),
        Some(2) if !cap_sys_ptrace => Some(Reason::Yama(2)),
        _ => None,
    }
}

/// Why `PTRACE_SEIZE` said EPERM, as far as we can tell.
pub fn explain_eperm(tracer_now: i32, yama: Option<u32>, cap_sys_ptrace: bool) -> Reason {
    if tracer_now != 0 {
        Reason::Traced(tracer_now)
    } else if cap_sys_ptrace {
        Reason::Denied
    } else if let Some(s) = yama.filter(|&s| s >= 1) {
        Reason::Yama(s)
    } else {
        Reason::NoCapability
    }
}

/// The system call a thread stopped in, if it swapped in a temporary signal
/// mask that is still in place (the kernel restores the saved one when the
/// call returns, from a flag ptrace can neither see nor set; changing the
/// mask through ptrace would lose it).
pub fn temporary_mask(regs: &Regs) -> Option<&'static str> {
    let err = regs.rax as i64;
    let (name, mask_arg) = match regs.orig_rax {
        130 => ("rt_sigsuspend", 1),
        270 => ("pselect6", regs.r9),
        271 => ("ppoll", regs.r10),
        281 => ("epoll_pwait", regs.r8),
        441 => ("epoll_pwait2", regs.r8),
        333 => ("io_pgetevents", regs.r9),
        426 => ("io_uring_enter", regs.r8),
        _ => return None,
    };
    ((err == -EINTR || err == -ERESTARTNOHAND) && mask_arg != 0).then_some(name)
}

/// The mask the thread runs the injected calls with: every signal blocked
/// (none the target has pending is taken meanwhile) but the synchronous
/// ones it neither blocks nor has pending (see [`SYNC_SIGNALS`]).
pub fn inject_mask(orig: u64, pending: u64) -> u64 {
    !(SYNC_SIGNALS & !orig & !pending)
}

/// What speaks for or against tracing a thread, found before trying.
pub(super) struct Access {
    pub(super) st: ProcStatus,
    pub(super) yama: Option<u32>,
    pub(super) cap: bool,
}

impl Access {
    /// Reads the thread's status; refuses what cannot be traced (another
    /// tracer, gone, strict seccomp, Yama).
    pub(super) fn check(pid: i32, tid: i32) -> std::result::Result<Access, Refusal> {
        let refuse = |reason| Refusal { pid, tid, reason };
        let mut st = match read_status(pid, tid) {
            Some(st) => st,
            None if procfs::process_state(pid).is_some() => return Err(refuse(Reason::NotAThread)),
            None => return Err(refuse(Reason::Gone)),
        };
        // TracerPid names the tracer's thread: name its process.
        st.tracer = tgid_of(st.tracer);
        let cap = os::effective_caps().is_ok_and(|c| c & CAP_SYS_PTRACE != 0);
        let yama = yama_scope();
        if let Some(r) = precheck(&st, yama, cap) {
            return Err(refuse(r));
        }
        Ok(Access { st, yama, cap })
    }

    /// `PTRACE_SEIZE` with `options`, a refusal saying why it failed.
    pub(super) fn seize(
        &self,
        pid: i32,
        tid: i32,
        options: u64,
    ) -> std::result::Result<(), Refusal> {
        let refuse = |reason| Refusal { pid, tid, reason };
        match os::ptrace_seize(tid, options) {
            Ok(()) => Ok(()),
            Err(e) if e.errno == Some(libc::EPERM) => {
                let now = read_status(pid, tid).map_or(0, |s| tgid_of(s.tracer));
                Err(refuse(explain_eperm(now, self.yama, self.cap)))
            }
            Err(e) if e.errno == Some(libc::ESRCH) => Err(refuse(Reason::Gone)),
            Err(e) => Err(refuse(Reason::Failed(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::bit;
    use super::*;

    const STATUS: &str = "\
Name:\tinject-target
Umask:\t0022
State:\tT (stopped)
Tgid:\t4242
Pid:\t4243
TracerPid:\t17
Uid:\t0\t0\t0\t0
SigQ:\t1/63336
SigPnd:\t0000000000000100
ShdPnd:\t0000000000040000
SigBlk:\t0000000000010002
SigIgn:\t0000000000001000
Seccomp:\t2
Seccomp_filters:\t1
";

    #[test]
    fn status_lines_are_parsed() {
        let st = parse_status(STATUS);
        assert_eq!(
            st,
            ProcStatus {
                state: 'T',
                tracer: 17,
                seccomp: 2,
                sig_pnd: 0x100,
                shd_pnd: 0x40000,
                sig_blk: 0x10002,
            }
        );
        assert_eq!(
            parse_status("garbage\nState:\n"),
            ProcStatus {
                state: '?',
                ..Default::default()
            }
        );
        let me = std::process::id() as i32;
        let st = read_status(me, me).expect("own status");
        assert_eq!(st.tracer, 0);
        assert!(matches!(st.state, 'R' | 'S'), "{st:?}");
        assert!(read_status(me, 1).is_none(), "pid 1 is not our thread");
        let tid: i32 = std::fs::read_link("/proc/thread-self")
            .expect("thread-self")
            .file_name()
            .and_then(|n| n.to_str()?.parse().ok())
            .expect("tid");
        assert_eq!((tgid_of(tid), tgid_of(me), tgid_of(0)), (me, me, 0));
    }

    #[test]
    fn refusals_name_the_reason_in_one_line() {
        let st = parse_status(STATUS);
        let r = precheck(&st, None, true).expect("traced");
        assert!(matches!(r, Reason::Traced(17)));
        let free = ProcStatus {
            state: 'S',
            ..Default::default()
        };
        assert!(precheck(&free, None, false).is_none());
        assert!(
            precheck(&free, Some(1), false).is_none(),
            "scope 1: let the kernel decide"
        );
        assert!(matches!(
            precheck(&free, Some(2), false),
            Some(Reason::Yama(2))
        ));
        assert!(precheck(&free, Some(2), true).is_none());
        assert!(matches!(
            precheck(&free, Some(3), true),
            Some(Reason::Yama(3))
        ));
        let strict = ProcStatus {
            seccomp: 1,
            ..free.clone()
        };
        assert!(matches!(
            precheck(&strict, None, true),
            Some(Reason::SeccompStrict)
        ));
        let zombie = ProcStatus { state: 'Z', ..free };
        assert!(matches!(precheck(&zombie, None, true), Some(Reason::Gone)));

        assert!(matches!(explain_eperm(9, Some(1), true), Reason::Traced(9)));
        assert!(matches!(explain_eperm(0, Some(1), false), Reason::Yama(1)));
        assert!(matches!(
            explain_eperm(0, Some(0), false),
            Reason::NoCapability
        ));
        assert!(matches!(
            explain_eperm(0, None, false),
            Reason::NoCapability
        ));
        assert!(matches!(explain_eperm(0, Some(1), true), Reason::Denied));

        for reason in [
            Reason::Traced(17),
            Reason::Yama(1),
            Reason::Yama(3),
            Reason::NoCapability,
            Reason::Denied,
            Reason::SeccompStrict,
            Reason::TemporaryMask("ppoll"),
            Reason::NotAThread,
            Reason::Gone,
            Reason::Failed(Error::new("boom").with_log("line 1\nline 2")),
        ] {
            let r = Refusal {
                pid: 4242,
                tid: 4243,
                reason,
            };
            let s = r.to_string();
            assert!(
                s.starts_with("cannot inject into pid 4242 (thread 4243): "),
                "{s}"
            );
            assert_eq!(s.lines().count(), 1, "{s}");
            let e = Error::from(r);
            assert_eq!(e.msg, s);
        }
        let r = Refusal {
            pid: 5,
            tid: 5,
            reason: Reason::Traced(6),
        };
        assert_eq!(
            r.to_string(),
            "cannot inject into pid 5: it is already traced by pid 6 (a debugger?); detach that first"
        );
    }

    #[test]
    fn temporary_masks_are_recognised() {
        let mut r = Regs {
            orig_rax: 271,
            rax: (-ERESTARTNOHAND) as u64,
            r10: 0x7fff_0000,
            ..Default::default()
        };
        assert_eq!(temporary_mask(&r), Some("ppoll"));
        r.r10 = 0;
        assert_eq!(temporary_mask(&r), None, "ppoll without a mask");
        r.orig_rax = 130;
        assert_eq!(temporary_mask(&r), Some("rt_sigsuspend"));
        r.rax = 0;
        assert_eq!(temporary_mask(&r), None, "returned: mask restored");
        r = Regs {
            orig_rax: 281,
            rax: (-EINTR) as u64,
            r8: 0x1000,
            ..Default::default()
        };
        assert_eq!(temporary_mask(&r), Some("epoll_pwait"));
        r.orig_rax = 230; // clock_nanosleep
        assert_eq!(temporary_mask(&r), None);
        r.orig_rax = u64::MAX;
        assert_eq!(temporary_mask(&r), None);
    }

    #[test]
    fn the_injection_mask_blocks_all_but_the_synchronous_signals() {
        let m = inject_mask(0, 0);
        assert_eq!(m & bit(libc::SIGSEGV), 0);
        assert_eq!(m & bit(libc::SIGSYS), 0);
        assert_ne!(m & bit(libc::SIGUSR1), 0);
        assert_ne!(m & bit(libc::SIGALRM), 0);
        assert_ne!(m & bit(libc::SIGCHLD), 0);
        assert_ne!(m & (1 << 40), 0, "real-time signals too");
        // Blocked by the target or pending: stays blocked.
        assert_ne!(inject_mask(bit(libc::SIGSEGV), 0) & bit(libc::SIGSEGV), 0);
        assert_ne!(inject_mask(0, bit(libc::SIGBUS)) & bit(libc::SIGBUS), 0);
        assert_eq!(inject_mask(0, bit(libc::SIGBUS)) & bit(libc::SIGFPE), 0);
    }
}
