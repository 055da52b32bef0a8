//! Running system calls inside a target process, and getting back what they
//! return: the way to create a userfaultfd in the target (dirty-page
//! tracking) and, later, to change its mappings and registers for a full
//! rollback.
//!
//! How (x86-64 only):
//!
//! 1. The target is **group-stopped** for the whole injection: held by
//!    bpfckpt already (SIGSTOP at its trigger), or stopped here with SIGSTOP
//!    and continued with SIGCONT at the end.
//! 2. `PTRACE_SEIZE` of the thread (`PTRACE_O_TRACESYSGOOD`, never
//!    `PTRACE_O_EXITKILL`: the target must outlive bpfckpt). Seizing a
//!    group-stopped thread traps it at once (a `PTRACE_EVENT_STOP` with the
//!    stop signal); no `PTRACE_INTERRUPT` is needed.
//! 3. Save the registers, the signal mask and the XSAVE area; hand
//!    registers and mask to the watchdog; block the target's signals so that
//!    none it has pending is taken while it runs for us.
//! 4. Each call: registers = saved, but `rip` at a `syscall` instruction,
//!    `rax` = number, arguments, `orig_rax` = -1 (no restart logic applies to
//!    these registers on the way out of the current stop). `PTRACE_SYSCALL`
//!    twice (entry, exit), then `rax` is the result.
//! 5. Put registers, mask (and text, see below) back, `PTRACE_DETACH`: the
//!    kernel puts a detached thread of a group-stopped process back into the
//!    group stop, where any restart of the system call it was stopped in
//!    happens as it would have (an interrupted `nanosleep` restarts).
//!
//! Which `syscall` instruction: the one the thread just returned through
//! (at `rip - 2`, when it stopped on its way out of a system call), else one
//! in the vDSO (every process has it), else, only then, `0f 05` written
//! over the word at `rip` and put back at the end.
//!
//! **bpfckpt dying at any point** (SIGKILL, OOM) leaves the target running
//! and correct. The kernel detaches a dead tracer's tracees; because the
//! process is group-stopped, the thread goes back into the group stop
//! before it runs one more instruction of its own, whatever stop it was in
//! (found by experiment on 6.18; a thread that is not group-stopped would
//! run on with our registers and crash). The watchdog (a child of bpfckpt
//! that outlives it, `ckpt/watchdog.rs`) has the saved registers from step
//! 3: it seizes the thread, closes a descriptor the injection left in the
//! target, puts registers, mask and text back, detaches, and continues the
//! target if this module had stopped it. Singlestepping is avoided on
//! purpose: a tracer that dies while its tracee reports the singlestep
//! leaves a SIGTRAP to be delivered, which kills the target as soon as it
//! is continued; syscall stops with `PTRACE_O_TRACESYSGOOD` leave nothing.

use super::procfs;
use super::watchdog::Watchdog;
use crate::os::{self, Regs, WaitStatus};
use crate::{Error, Result};
use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// x86-64 system call numbers used here.
pub mod nr {
    pub const CLOSE: u64 = 3;
    pub const GETPID: u64 = 39;
    pub const USERFAULTFD: u64 = 323;
}

/// `userfaultfd(2)` flag: only faults from user mode (no privilege needed).
pub const UFFD_USER_MODE_ONLY: u64 = 1;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 2;

const CAP_SYS_PTRACE: u64 = 1 << 19;
const EINTR: i64 = 4;
const ERESTARTNOHAND: i64 = 514;

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// Signals the kernel forces on the thread that caused them (a fault at our
/// instruction, a seccomp trap). Blocked when forced, they would reset the
/// target's handler to the default: they stay unblocked during an injection
/// unless the target blocks them or has one pending.
const SYNC_SIGNALS: u64 = (1 << (libc::SIGILL - 1))
    | (1 << (libc::SIGTRAP - 1))
    | (1 << (libc::SIGBUS - 1))
    | (1 << (libc::SIGFPE - 1))
    | (1 << (libc::SIGSEGV - 1))
    | (1 << (libc::SIGSYS - 1));

/// The points of an injection, in order (tests stop or kill bpfckpt there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A running target is group-stopped (by us, with SIGSTOP).
    Stopped,
    /// The thread is seized and trapped; nothing read yet.
    Seized,
    /// Registers and signal mask are saved and handed to the watchdog;
    /// nothing changed yet.
    Saved,
    /// The registers for one system call are set; it has not run.
    Changed,
    /// That system call ran; its result is read.
    Stepped,
    /// Registers, mask and text are back; the thread is still seized.
    Restored,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Stopped,
        Step::Seized,
        Step::Saved,
        Step::Changed,
        Step::Stepped,
        Step::Restored,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Stopped => "stopped",
            Step::Seized => "seized",
            Step::Saved => "saved",
            Step::Changed => "changed",
            Step::Stepped => "stepped",
            Step::Restored => "restored",
        }
    }

    pub fn parse(s: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|st| st.name() == s)
    }
}

// ---------------------------------------------------------------------------
// What /proc says, and whether the target can be traced at all.

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

// ---------------------------------------------------------------------------
// The `syscall` instruction.

/// Where the `syscall` instruction that runs the injected calls is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// The one the thread just returned through, at `rip - 2`.
    Behind(u64),
    /// One in the vDSO.
    Vdso(u64),
    /// `0f 05` written at `addr` (= `rip`) into the word at `word_addr`,
    /// whose original value is `word`.
    Poked {
        addr: u64,
        word_addr: u64,
        word: u64,
    },
}

impl Insn {
    pub fn addr(&self) -> u64 {
        match *self {
            Insn::Behind(a) | Insn::Vdso(a) => a,
            Insn::Poked { addr, .. } => addr,
        }
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Insn::Behind(a) => write!(f, "behind {a:#x}"),
            Insn::Vdso(a) => write!(f, "vdso {a:#x}"),
            Insn::Poked { addr, .. } => write!(f, "poke {addr:#x}"),
        }
    }
}

/// Whether a word read at some address starts with `syscall` (`0f 05`).
pub fn is_syscall_word(word: u64) -> bool {
    word & 0xffff == 0x050f
}

/// The word to rewrite to put `syscall` at `rip`: its address and the byte
/// offset of `rip` in it. It ends at `rip + 2` where that keeps it in
/// `rip`'s page (the page before may not exist).
pub fn poke_site(rip: u64) -> (u64, u32) {
    if rip & 0xfff >= 6 {
        (rip - 6, 6)
    } else {
        (rip, 0)
    }
}

/// `word` with `0f 05` at byte offset `off`.
pub fn with_syscall(word: u64, off: u32) -> u64 {
    let shift = off * 8;
    (word & !(0xffff << shift)) | (0x050f << shift)
}

/// Offset of the first `syscall` encoding in `code`.
pub fn find_syscall(code: &[u8]) -> Option<usize> {
    code.windows(2).position(|w| w == [0x0f, 0x05])
}

/// A `syscall` instruction in `pid`'s vDSO.
fn vdso_syscall(pid: i32) -> Result<Option<u64>> {
    let maps = procfs::read_maps(pid)?;
    let Some(v) = maps.iter().find(|m| m.path == "[vdso]") else {
        return Ok(None);
    };
    let mem = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| Error::from(e).context(format!("open /proc/{pid}/mem")))?;
    let mut code = vec![0u8; (v.end - v.start) as usize];
    mem.read_exact_at(&mut code, v.start)
        .map_err(|e| Error::from(e).context(format!("read the vDSO of pid {pid}")))?;
    Ok(find_syscall(&code).map(|off| v.start + off as u64))
}

/// Picks the `syscall` instruction for a thread stopped with `regs`.
fn choose_insn(pid: i32, tid: i32, regs: &Regs, force_poke: bool) -> Result<Insn> {
    if !force_poke {
        // Only after a system call is rip - 2 the instruction the thread
        // executed; anywhere else it might be the middle of one (and in an
        // rseq critical section the kernel would divert it).
        let behind = regs.rip.wrapping_sub(2);
        if regs.orig_rax != u64::MAX
            && regs.rip & 0xfff >= 2
            && os::ptrace_peek(tid, behind).is_ok_and(is_syscall_word)
        {
            return Ok(Insn::Behind(behind));
        }
        if let Some(a) = vdso_syscall(pid)? {
            return Ok(Insn::Vdso(a));
        }
    }
    let (word_addr, _) = poke_site(regs.rip);
    let word = os::ptrace_peek(tid, word_addr)
        .map_err(|e| e.context("read the text word to put a syscall instruction in"))?;
    Ok(Insn::Poked {
        addr: regs.rip,
        word_addr,
        word,
    })
}

// ---------------------------------------------------------------------------
// What the watchdog is told.

/// What the watchdog needs to undo an injection: the thread's registers
/// and mask before it, the instruction used and the text word if one was
/// rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub pid: i32,
    pub tid: i32,
    pub regs: Regs,
    pub sigmask: u64,
    /// Address of the `syscall` instruction the calls run through.
    pub insn: u64,
    /// The text word changed to hold it: (address, original word).
    pub poke: Option<(u64, u64)>,
}

/// One line to the watchdog about an injection (`ckpt/watchdog.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// `hold PID`: this process was stopped for an injection: continue it
    /// if bpfckpt dies.
    Hold(i32),
    /// `release PID`: it runs again.
    Release(i32),
    /// `inject PID TID MASK INSN R0..R26 [poke ADDR WORD]` (hex): the state to
    /// put back if bpfckpt dies before `injected`.
    Inject(Box<Saved>),
    /// `call TID NR FD`: system call NR is about to run; FD 1 when it returns
    /// a descriptor the target must not keep.
    Call { tid: i32, nr: u64, makes_fd: bool },
    /// `owns TID FD`: the target holds descriptor FD made by the injection
    /// (-1: none any more).
    Owns { tid: i32, fd: Option<i32> },
    /// `injected TID`: the registers are back and the thread is detached.
    Injected(i32),
}

impl Note {
    pub fn to_line(&self) -> String {
        match self {
            Note::Hold(pid) => format!("hold {pid}\n"),
            Note::Release(pid) => format!("release {pid}\n"),
            Note::Inject(s) => {
                let mut l = format!("inject {} {} {:x} {:x}", s.pid, s.tid, s.sigmask, s.insn);
                for r in s.regs.to_array() {
                    l.push_str(&format!(" {r:x}"));
                }
                if let Some((addr, word)) = s.poke {
                    l.push_str(&format!(" poke {addr:x} {word:x}"));
                }
                l.push('\n');
                l
            }
            Note::Call { tid, nr, makes_fd } => {
                format!("call {tid} {nr} {}\n", u8::from(*makes_fd))
            }
            Note::Owns { tid, fd } => format!("owns {tid} {}\n", fd.unwrap_or(-1)),
            Note::Injected(tid) => format!("injected {tid}\n"),
        }
    }

    /// The inverse of [`Note::to_line`]; `None` for any other line.
    pub fn parse(line: &str) -> Option<Note> {
        let mut w = line.split_ascii_whitespace();
        let kind = w.next()?;
        let pos = |s: Option<&str>| s?.parse::<i32>().ok().filter(|&p| p > 0);
        let hex = |s: Option<&str>| u64::from_str_radix(s?, 16).ok();
        let note = match kind {
            "hold" => Note::Hold(pos(w.next())?),
            "release" => Note::Release(pos(w.next())?),
            "injected" => Note::Injected(pos(w.next())?),
            "call" => Note::Call {
                tid: pos(w.next())?,
                nr: w.next()?.parse().ok()?,
                makes_fd: match w.next()? {
                    "0" => false,
                    "1" => true,
                    _ => return None,
                },
            },
            "owns" => Note::Owns {
                tid: pos(w.next())?,
                fd: match w.next()?.parse::<i32>().ok()? {
                    -1 => None,
                    fd if fd >= 0 => Some(fd),
                    _ => return None,
                },
            },
            "inject" => {
                let pid = pos(w.next())?;
                let tid = pos(w.next())?;
                let sigmask = hex(w.next())?;
                let insn = hex(w.next())?;
                let mut a = [0u64; Regs::COUNT];
                for r in a.iter_mut() {
                    *r = hex(w.next())?;
                }
                let poke = match w.next() {
                    None => None,
                    Some("poke") => Some((hex(w.next())?, hex(w.next())?)),
                    Some(_) => return None,
                };
                Note::Inject(Box::new(Saved {
                    pid,
                    tid,
                    regs: Regs::from_array(a),
                    sigmask,
                    insn,
                    poke,
                }))
            }
            _ => return None,
        };
        w.next().is_none().then_some(note)
    }
}

/// An injection as the watchdog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub saved: Saved,
    /// The last system call set up: number, and whether it makes a descriptor.
    pub call: Option<(u64, bool)>,
    /// A descriptor the injection made in the target and has not closed.
    pub owned_fd: Option<i32>,
}

/// Which descriptor the recovery of `p` must close in the target, given the
/// thread's registers `cur` after bpfckpt died: a call that ran left `rip`
/// just past the instruction with its number in `orig_rax`.
pub fn fd_to_close(p: &Pending, cur: &Regs) -> Option<i32> {
    // Registers equal to the saved ones: nothing of ours is in flight (the
    // thread may have stopped after the very call we inject).
    let ran = |nr: u64| cur != &p.saved.regs && cur.rip == p.saved.insn + 2 && cur.orig_rax == nr;
    match p.call {
        Some((nr, true)) if ran(nr) => {
            let r = cur.rax as i64;
            (0..=i64::from(i32::MAX)).contains(&r).then_some(r as i32)
        }
        Some((nr::CLOSE, false)) if ran(nr::CLOSE) => None,
        _ => p.owned_fd,
    }
}

// ---------------------------------------------------------------------------
// A seized thread, and one system call in it.

/// A seized thread at a ptrace stop.
struct Tracee {
    pid: i32,
    tid: i32,
    insn: u64,
    /// The registers each call starts from (the saved ones).
    base: Regs,
    /// A stop signal that arrived meanwhile (the thread took it): sent
    /// again at the end.
    stop_again: Option<i32>,
    /// The group stop ended meanwhile (someone sent SIGCONT).
    continued: bool,
}

impl Tracee {
    fn set_call(&self, nr: u64, args: &[u64]) -> Result<()> {
        if args.len() > 6 {
            return Err(Error::new(format!(
                "system call {nr}: {} arguments, at most 6",
                args.len()
            )));
        }
        let mut r = self.base;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] = a;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        r.rip = self.insn;
        os::ptrace_setregs(self.tid, &r)
    }

    fn gone(&self, how: String) -> Error {
        Error::sys(
            format!(
                "thread {} of pid {} {how} during the injection",
                self.tid, self.pid
            ),
            libc::ESRCH,
        )
    }

    /// Resumes the thread until its next syscall stop. Stops on the way:
    /// a group-stop trap or the SIGCONT that ends it (resumed), a SIGSTOP
    /// (taken, sent again at the end), any other signal: the call raised
    /// it, it is not delivered (the thread stays in that stop; resuming or
    /// detaching with no signal drops it).
    fn until_syscall_stop(&mut self) -> Result<()> {
        os::ptrace_syscall(self.tid, 0)?;
        loop {
            match os::waitpid_thread(self.tid, false)? {
                Some(WaitStatus::Stopped { sig, event: 0 }) if sig == os::SYSCALL_STOP_SIG => {
                    return Ok(());
                }
                Some(WaitStatus::Stopped {
                    sig,
                    event: os::PTRACE_EVENT_STOP,
                }) => {
                    if sig == libc::SIGTRAP {
                        self.continued = true;
                    }
                    os::ptrace_syscall(self.tid, 0)?;
                }
                Some(WaitStatus::Stopped { sig, event: 0 }) if sig == libc::SIGSTOP => {
                    self.stop_again = Some(sig);
                    os::ptrace_syscall(self.tid, 0)?;
                }
                Some(WaitStatus::Stopped { sig, .. }) => {
                    return Err(Error::new(format!(
                        "the injected system call raised signal {sig} in thread {} \
                         (not delivered: a seccomp filter or a fault?)",
                        self.tid
                    )));
                }
                Some(WaitStatus::Exited(c)) => return Err(self.gone(format!("exited ({c})"))),
                Some(WaitStatus::Signaled(s)) => {
                    return Err(self.gone(format!("was killed by signal {s}")));
                }
                Some(WaitStatus::Continued) | None => {}
            }
        }
    }

    /// A signal the call made the kernel force on the thread (unblocked,
    /// thread-private), taken and dropped so it never reaches the target.
    fn drop_forced(&mut self) -> Result<Option<i32>> {
        let Some(st) = read_status(self.pid, self.tid) else {
            return Err(self.gone("went away".into()));
        };
        let blocked = os::ptrace_getsigmask(self.tid)?;
        let forced = st.sig_pnd & !blocked & !bit(libc::SIGKILL) & !bit(libc::SIGSTOP);
        if forced == 0 {
            return Ok(None);
        }
        // Pending and unblocked: the thread takes it before it could return
        // to user mode, and reports it.
        os::ptrace_syscall(self.tid, 0)?;
        loop {
            match os::waitpid_thread(self.tid, false)? {
                Some(WaitStatus::Stopped {
                    event: os::PTRACE_EVENT_STOP,
                    sig,
                }) => {
                    self.continued |= sig == libc::SIGTRAP;
                    os::ptrace_syscall(self.tid, 0)?;
                }
                Some(WaitStatus::Stopped { sig, event: 0 }) if sig != os::SYSCALL_STOP_SIG => {
                    return Ok(Some(sig));
                }
                Some(WaitStatus::Stopped { .. }) => {
                    return Err(Error::new(format!(
                        "thread {} made a system call of its own while a signal was pending",
                        self.tid
                    )));
                }
                Some(WaitStatus::Exited(c)) => return Err(self.gone(format!("exited ({c})"))),
                Some(WaitStatus::Signaled(s)) => {
                    return Err(self.gone(format!("was killed by signal {s}")));
                }
                Some(WaitStatus::Continued) | None => {}
            }
        }
    }

    /// Runs the call set up by `set_call`: entry stop, exit stop, result.
    fn run(&mut self, nr: u64) -> Result<i64> {
        self.until_syscall_stop()?;
        self.until_syscall_stop()?;
        let out = os::ptrace_getregs(self.tid)?;
        if out.orig_rax != nr {
            return Err(Error::new(format!(
                "thread {} stopped in system call {} instead of the injected {nr}",
                self.tid, out.orig_rax as i64
            )));
        }
        if let Some(sig) = self.drop_forced()? {
            return Err(Error::new(format!(
                "the injected system call {nr} raised signal {sig} in thread {} (not delivered)",
                self.tid
            )));
        }
        Ok(out.rax as i64)
    }
}

// ---------------------------------------------------------------------------
// The injection.

/// How to inject.
#[derive(Default)]
pub struct Options<'a> {
    /// Told everything needed to undo the injection if bpfckpt dies.
    /// Without one, a death mid-injection leaves the target group-stopped
    /// with changed registers.
    pub watchdog: Option<&'a mut Watchdog>,
    /// Called at each [`Step`] (tests pause there).
    pub observer: Option<&'a mut dyn FnMut(Step)>,
    /// Rewrite the text at `rip` even where a `syscall` instruction could be
    /// borrowed (tests the fallback).
    pub force_poke: bool,
}

/// A thread of a group-stopped target, seized, with its state saved: run
/// system calls in it with [`Injection::syscall`], then [`Injection::end`].
///
/// ```no_run
/// # use bpfckpt::ckpt::inject::{Injection, Options, nr};
/// # fn f(pid: i32) -> bpfckpt::Result<()> {
/// let mut inj = Injection::begin(pid, pid, Options::default())?;
/// let got = inj.syscall(nr::GETPID, &[]);
/// inj.end()?;
/// assert_eq!(got?, i64::from(pid));
/// # Ok(()) }
/// ```
pub struct Injection<'a> {
    t: Tracee,
    pidfd: OwnedFd,
    /// Set once registers and mask are handed to the watchdog.
    saved: Option<Saved>,
    insn: Option<Insn>,
    xstate: Option<Vec<u8>>,
    /// We stopped the target with SIGSTOP and owe it a SIGCONT.
    we_stopped: bool,
    attached: bool,
    /// Putting the state back failed: leave the thread seized, so that
    /// when bpfckpt exits the watchdog puts it back.
    broken: bool,
    opts: Options<'a>,
    /// ptrace requests must come from the thread that seized.
    _not_send: PhantomData<*const ()>,
}

/// Whether some thread of `pid` is in a group stop.
fn any_thread_stopped(pid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    dir.flatten().any(|t| {
        t.file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
            .and_then(|tid| read_status(pid, tid))
            .is_some_and(|st| st.state == 'T')
    })
}

fn wait_group_stop(pid: i32, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match procfs::process_state(pid) {
            None | Some('Z') | Some('X') => {
                return Err(Error::sys(format!("pid {pid} exited"), libc::ESRCH));
            }
            Some('T') if procfs::all_threads_stopped(pid) == Some(true) => return Ok(()),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!(
                "pid {pid} did not stop within {limit:?}"
            )));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// What speaks for or against tracing a thread, found before trying.
struct Access {
    st: ProcStatus,
    yama: Option<u32>,
    cap: bool,
}

impl Access {
    /// Reads the thread's status; refuses what cannot be traced (another
    /// tracer, gone, strict seccomp, Yama).
    fn check(pid: i32, tid: i32) -> std::result::Result<Access, Refusal> {
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
    fn seize(&self, pid: i32, tid: i32, options: u64) -> std::result::Result<(), Refusal> {
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

/// After `PTRACE_SEIZE` of a thread of a group-stopped process: its trap.
/// ESRCH if it exited (then it is no longer traced).
fn await_trap(pid: i32, tid: i32) -> Result<()> {
    // Seizing a stopped thread traps it before PTRACE_SEIZE returns.
    match os::waitpid_thread(tid, true)? {
        Some(WaitStatus::Stopped {
            sig,
            event: os::PTRACE_EVENT_STOP,
        }) if sig != libc::SIGTRAP => Ok(()),
        None => {
            // Someone continued it in between: trap it to detach cleanly.
            os::ptrace_interrupt(tid)?;
            os::waitpid_thread(tid, false)?;
            Err(Error::new(format!(
                "pid {pid} was continued by someone else while being seized"
            )))
        }
        Some(WaitStatus::Exited(_)) | Some(WaitStatus::Signaled(_)) => {
            Err(Error::sys(format!("thread {tid}"), libc::ESRCH))
        }
        Some(other) => Err(Error::new(format!(
            "thread {tid}: unexpected first stop {other:?}"
        ))),
    }
}

/// A group-stopped process's main thread, seized without options (it
/// behaves as before) and trapped: what `/proc/PID/mem` lets only the
/// tracer do, it may do now (CONFIG_PROC_MEM_FORCE_PTRACE checks the
/// tracer's *thread*, so from this thread only). Detached on drop, back
/// into the group stop; bpfckpt dying detaches it the same way.
pub struct Seized {
    pid: i32,
    attached: bool,
    _not_send: PhantomData<*const ()>,
}

impl Seized {
    /// Seizes `pid`, which must be group-stopped already (held): nothing
    /// here stops or continues it.
    pub fn group_stopped(pid: i32) -> std::result::Result<Seized, Refusal> {
        let refuse = |reason| Refusal {
            pid,
            tid: pid,
            reason,
        };
        let access = Access::check(pid, pid)?;
        if access.st.state != 'T' {
            return Err(refuse(Reason::Failed(Error::new(format!(
                "it is not stopped (state {})",
                access.st.state
            )))));
        }
        access.seize(pid, pid, 0)?;
        let mut s = Seized {
            pid,
            attached: true,
            _not_send: PhantomData,
        };
        await_trap(pid, pid).map_err(|e| {
            if e.errno == Some(libc::ESRCH) {
                s.attached = false;
                refuse(Reason::Gone)
            } else {
                refuse(Reason::Failed(e))
            }
        })?;
        Ok(s)
    }

    /// Detaches and waits until the thread is back in the group stop.
    pub fn detach(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.attached) {
            return Ok(());
        }
        // The kernel puts a detached thread of a group-stopped process
        // back into the group stop (no signal is given with the detach).
        os::ptrace_detach(self.pid, 0)?;
        wait_group_stop(self.pid, Duration::from_secs(2))
            .map_err(|e| e.context(format!("pid {} after detaching", self.pid)))
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            eprintln!("bpfckpt: warning: detaching from pid {}: {e}", self.pid);
        }
    }
}

impl<'a> Injection<'a> {
    /// Seizes thread `tid` of process `pid` and saves its state; stops the
    /// process first (SIGSTOP) if it is not group-stopped already.
    pub fn begin(
        pid: i32,
        tid: i32,
        opts: Options<'a>,
    ) -> std::result::Result<Injection<'a>, Refusal> {
        let refuse = |reason| Refusal { pid, tid, reason };
        let access = Access::check(pid, tid)?;
        let (st, yama, cap) = (&access.st, access.yama, access.cap);
        let pidfd = os::pidfd_open(pid).map_err(|_| refuse(Reason::Gone))?;
        // Before anything is done to the target: pidfd_getfd makes the very
        // access check of a ptrace attach (credentials, capabilities,
        // dumpable, Yama, security modules) before it looks the descriptor
        // up, so a number no process has tells EPERM from access.
        match os::pidfd_getfd(pidfd.as_fd(), i32::MAX) {
            Err(e) if e.errno == Some(libc::EPERM) => {
                return Err(refuse(explain_eperm(st.tracer, yama, cap)));
            }
            Err(e) if e.errno == Some(libc::ESRCH) => return Err(refuse(Reason::Gone)),
            _ => {}
        }
        let mut inj = Injection {
            t: Tracee {
                pid,
                tid,
                insn: 0,
                base: Regs::default(),
                stop_again: None,
                continued: false,
            },
            pidfd,
            saved: None,
            insn: None,
            xstate: None,
            we_stopped: false,
            attached: false,
            broken: false,
            opts,
            _not_send: PhantomData,
        };
        // From here on, dropping `inj` undoes what was done.
        inj.hold(st).map_err(|e| refuse(Reason::Failed(e)))?;
        access.seize(pid, tid, os::PTRACE_O_TRACESYSGOOD)?;
        inj.attached = true;
        inj.trapped().map_err(|e| match e.errno {
            Some(libc::ESRCH) => refuse(Reason::Gone),
            _ => refuse(Reason::Failed(e)),
        })?;
        inj.observe(Step::Seized);
        let regs = os::ptrace_getregs(tid).map_err(|e| refuse(Reason::Failed(e)))?;
        if let Some(name) = temporary_mask(&regs) {
            return Err(refuse(Reason::TemporaryMask(name)));
        }
        inj.save(regs).map_err(|e| refuse(Reason::Failed(e)))?;
        Ok(inj)
    }

    fn observe(&mut self, s: Step) {
        if let Some(o) = self.opts.observer.as_mut() {
            o(s);
        }
    }

    fn note(&mut self, n: Note) -> Result<()> {
        match self.opts.watchdog.as_mut() {
            Some(w) => w.note(&n.to_line()),
            None => Ok(()),
        }
    }

    /// Makes sure the whole process is group-stopped.
    fn hold(&mut self, st: &ProcStatus) -> Result<()> {
        let pid = self.t.pid;
        if procfs::process_state(pid) == Some('T') && procfs::all_threads_stopped(pid) == Some(true)
        {
            return Ok(());
        }
        // Someone's stop is on its way (a SIGSTOP pending, or some threads
        // stopped already): wait for it rather than add ours, which our
        // SIGCONT would undo together with theirs.
        let coming = (st.sig_pnd | st.shd_pnd) & bit(libc::SIGSTOP) != 0 || any_thread_stopped(pid);
        if coming && wait_group_stop(pid, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        self.note(Note::Hold(pid))?;
        os::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGSTOP)?;
        self.we_stopped = true;
        wait_group_stop(pid, Duration::from_secs(5))?;
        self.observe(Step::Stopped);
        Ok(())
    }

    /// After `PTRACE_SEIZE`: the thread must be in a group-stop trap.
    fn trapped(&mut self) -> Result<()> {
        let r = await_trap(self.t.pid, self.t.tid);
        if r.as_ref().is_err_and(|e| e.errno == Some(libc::ESRCH)) {
            self.attached = false;
        }
        r
    }

    /// Saves the state, hands it to the watchdog, then blocks the signals
    /// and puts the instruction in place.
    fn save(&mut self, regs: Regs) -> Result<()> {
        let (pid, tid) = (self.t.pid, self.t.tid);
        let sigmask = os::ptrace_getsigmask(tid)?;
        // Kernels or CPUs without XSAVE: the FXSAVE area is inside the
        // general state ptrace keeps anyway; system calls leave it alone.
        self.xstate = os::ptrace_getregset(tid, os::NT_X86_XSTATE).ok();
        let insn = choose_insn(pid, tid, &regs, self.opts.force_poke)?;
        let saved = Saved {
            pid,
            tid,
            regs,
            sigmask,
            insn: insn.addr(),
            poke: match insn {
                Insn::Poked {
                    word_addr, word, ..
                } => Some((word_addr, word)),
                _ => None,
            },
        };
        self.note(Note::Inject(Box::new(saved.clone())))?;
        self.t.insn = insn.addr();
        self.t.base = regs;
        self.saved = Some(saved);
        self.insn = Some(insn);
        self.observe(Step::Saved);
        let pending = read_status(pid, tid).map_or(!0, |s| s.sig_pnd | s.shd_pnd);
        os::ptrace_setsigmask(tid, inject_mask(sigmask, pending))?;
        if let Insn::Poked {
            addr,
            word_addr,
            word,
        } = insn
        {
            os::ptrace_poke(
                tid,
                word_addr,
                with_syscall(word, (addr - word_addr) as u32),
            )?;
        }
        Ok(())
    }

    /// The instruction the calls run through.
    pub fn insn(&self) -> Option<Insn> {
        self.insn
    }

    /// The thread's registers before the injection.
    pub fn saved_regs(&self) -> Option<&Regs> {
        self.saved.as_ref().map(|s| &s.regs)
    }

    fn call(&mut self, nr: u64, args: &[u64], makes_fd: bool) -> Result<i64> {
        if !self.attached || self.saved.is_none() || self.broken {
            return Err(Error::new("the injection is over"));
        }
        self.t.set_call(nr, args)?;
        self.note(Note::Call {
            tid: self.t.tid,
            nr,
            makes_fd,
        })?;
        self.observe(Step::Changed);
        let r = self.t.run(nr)?;
        self.observe(Step::Stepped);
        Ok(r)
    }

    /// Runs system call `nr` with up to six arguments in the thread: its
    /// raw return value (`-errno` on failure). Only calls that return
    /// promptly and raise no signal (no writes to pipes, no sleeps).
    pub fn syscall(&mut self, nr: u64, args: &[u64]) -> Result<i64> {
        self.call(nr, args, false)
    }

    /// Runs system call `nr`, which returns a new descriptor in the target,
    /// takes a duplicate of it with `pidfd_getfd` and closes the target's:
    /// the target ends with the descriptors it had.
    pub fn fetch_fd(&mut self, nr: u64, args: &[u64]) -> Result<OwnedFd> {
        let (pid, tid) = (self.t.pid, self.t.tid);
        let r = self.call(nr, args, true)?;
        if r < 0 {
            return Err(Error::sys(
                format!("system call {nr} in pid {pid}"),
                (-r) as i32,
            ));
        }
        let fd = r as i32;
        let noted = self.note(Note::Owns { tid, fd: Some(fd) });
        let got = os::pidfd_getfd(self.pidfd.as_fd(), fd);
        let closed = self.call(nr::CLOSE, &[fd as u64], false)?;
        if closed != 0 {
            return Err(Error::sys(
                format!("close({fd}) in pid {pid}"),
                (-closed) as i32,
            ));
        }
        self.note(Note::Owns { tid, fd: None })?;
        noted?;
        got
    }

    /// Puts registers, mask and text back and detaches: a target that was
    /// group-stopped stays so; one stopped here runs again.
    pub fn end(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let tid = self.t.tid;
        if self.broken {
            return Err(Error::new(format!(
                "thread {tid}: its state could not be put back; the watchdog will when bpfckpt exits"
            )));
        }
        if self.attached {
            if let Some(s) = self.saved.clone() {
                if let Err(e) = self.restore(&s) {
                    self.broken = true;
                    return Err(e.context(format!("put thread {tid} back")));
                }
                self.observe(Step::Restored);
            }
            os::ptrace_detach(tid, 0)?;
            self.attached = false;
            if self.saved.take().is_some() {
                let _ = self.note(Note::Injected(tid));
            }
        }
        // Someone else's stop or continue since wins over our SIGCONT.
        let theirs = self.t.continued || self.t.stop_again.is_some();
        if let Some(sig) = self.t.stop_again.take() {
            let _ = os::pidfd_send_signal(self.pidfd.as_fd(), sig);
        }
        if self.we_stopped {
            self.we_stopped = false;
            if !theirs {
                os::pidfd_send_signal(self.pidfd.as_fd(), libc::SIGCONT)?;
            }
            let _ = self.note(Note::Release(self.t.pid));
        }
        Ok(())
    }

    fn restore(&mut self, s: &Saved) -> Result<()> {
        let tid = self.t.tid;
        os::ptrace_setregs(tid, &s.regs)?;
        if let Some((addr, word)) = s.poke {
            os::ptrace_poke(tid, addr, word)?;
        }
        os::ptrace_setsigmask(tid, s.sigmask)?;
        // System calls leave the FPU and vector registers alone; should
        // anything have changed them, they are put back too.
        if let Some(x) = &self.xstate
            && os::ptrace_getregset(tid, os::NT_X86_XSTATE)? != *x
        {
            os::ptrace_setregset(tid, os::NT_X86_XSTATE, x)?;
        }
        Ok(())
    }
}

impl Drop for Injection<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("bpfckpt: warning: ending an injection: {e}");
        }
    }
}

/// Injects `nr` (a call that returns a new descriptor) into thread `tid`
/// of `pid` and returns bpfckpt's duplicate of it; the target keeps no
/// copy and ends as it was (see [`Injection`]).
pub fn fetch_new_fd(
    pid: i32,
    tid: i32,
    nr: u64,
    args: &[u64],
    opts: Options<'_>,
) -> Result<OwnedFd> {
    let mut inj = Injection::begin(pid, tid, opts)?;
    let fd = inj.fetch_fd(nr, args);
    let end = inj.end();
    let fd = fd?;
    end?;
    Ok(fd)
}

// ---------------------------------------------------------------------------
// The watchdog's side.

/// Puts back what injection `p` changed, after bpfckpt died: seizes the
/// thread (as soon as the dead tracer has let go of it), closes a
/// descriptor the injection left in the target, restores registers, mask
/// and text, and detaches (a group-stopped target stays so). Says what it did.
pub fn recover(p: &Pending) -> Result<String> {
    let s = &p.saved;
    let (pid, tid) = (s.pid, s.tid);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match os::ptrace_seize(tid, os::PTRACE_O_TRACESYSGOOD) {
            Ok(()) => break,
            // The dying tracer has not let go yet.
            Err(e) if e.errno == Some(libc::EPERM) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.errno == Some(libc::ESRCH) => {
                return Ok(format!("thread {tid} of pid {pid} is gone"));
            }
            Err(e) => return Err(e),
        }
    }
    match os::waitpid_thread(tid, true)? {
        Some(WaitStatus::Stopped { .. }) => {}
        Some(WaitStatus::Exited(_)) | Some(WaitStatus::Signaled(_)) => {
            return Ok(format!("thread {tid} of pid {pid} is gone"));
        }
        _ => {
            // On its way back into the group stop: trap it there.
            os::ptrace_interrupt(tid)?;
            match os::waitpid_thread(tid, false)? {
                Some(WaitStatus::Stopped { .. }) => {}
                _ => return Ok(format!("thread {tid} of pid {pid} is gone")),
            }
        }
    }
    let cur = os::ptrace_getregs(tid)?;
    let mut what = String::new();
    if let Some(fd) = fd_to_close(p, &cur) {
        let mut t = Tracee {
            pid,
            tid,
            insn: s.insn,
            base: s.regs,
            stop_again: None,
            continued: false,
        };
        let pending = read_status(pid, tid).map_or(!0, |st| st.sig_pnd | st.shd_pnd);
        os::ptrace_setsigmask(tid, inject_mask(s.sigmask, pending))?;
        let closed = t
            .set_call(nr::CLOSE, &[fd as u64])
            .and_then(|()| t.run(nr::CLOSE));
        what = match closed {
            Ok(0) => format!(", closed its descriptor {fd}"),
            Ok(e) => format!(", close({fd}) failed ({e})"),
            Err(e) => format!(", close({fd}) failed: {e}"),
        };
        if let Some(sig) = t.stop_again {
            let _ = os::tgkill(pid, pid, sig);
        }
    }
    os::ptrace_setregs(tid, &s.regs)?;
    if let Some((addr, word)) = s.poke {
        os::ptrace_poke(tid, addr, word)?;
        what.push_str(&format!(", text at {addr:#x} put back"));
    }
    os::ptrace_setsigmask(tid, s.sigmask)?;
    os::ptrace_detach(tid, 0)?;
    Ok(format!(
        "put back the registers of thread {tid} of pid {pid}{what}"
    ))
}

// ---------------------------------------------------------------------------
// The hidden `__inject-selftest` subcommand (for tests).

/// What `bpfckpt __inject-selftest` does: inject into `pid`, print each
/// step, optionally pause (for ever) after one so that a test can kill it
/// there.
pub struct SelftestArgs {
    pub pid: i32,
    pub tid: Option<i32>,
    /// `getpid` or `uffd`.
    pub call: String,
    /// `uffd`: register `[addr, addr + len)` of the target for write-protect.
    pub register: Option<(u64, u64)>,
    pub pause_after: Option<Step>,
    pub force_poke: bool,
    pub watchdog: bool,
    /// `uffd`: keep the userfaultfd open until standard input ends.
    pub hold: bool,
}

/// The body of `__inject-selftest`; its exit code (2: refused).
pub fn selftest_main(a: &SelftestArgs) -> u8 {
    use std::io::Write;
    let mut wd = None;
    if a.watchdog {
        match Watchdog::spawn() {
            Ok(w) => wd = Some(w),
            Err(e) => {
                eprintln!("bpfckpt: error: {e}");
                return 1;
            }
        }
    }
    let pause = a.pause_after;
    let mut observer = |s: Step| {
        println!("step {}", s.name());
        if Some(s) == pause {
            println!("paused {}", s.name());
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let _ = std::io::stdout().flush();
    };
    let opts = Options {
        watchdog: wd.as_mut(),
        observer: Some(&mut observer),
        force_poke: a.force_poke,
    };
    let tid = a.tid.unwrap_or(a.pid);
    let mut inj = match Injection::begin(a.pid, tid, opts) {
        Ok(i) => i,
        Err(r) => {
            eprintln!("bpfckpt: {r}");
            return 2;
        }
    };
    if let Some(i) = inj.insn() {
        println!("insn {i}");
    }
    let out = match a.call.as_str() {
        "getpid" => {
            let r = inj.syscall(nr::GETPID, &[]);
            inj.end().and(r).map(|r| {
                println!("getpid {r}");
                None
            })
        }
        "uffd" => {
            let flags = libc::O_CLOEXEC as u64 | UFFD_USER_MODE_ONLY;
            let fd = inj.fetch_fd(nr::USERFAULTFD, &[flags]);
            inj.end().and(fd).map(Some)
        }
        other => Err(Error::new(format!("unknown --call {other}"))),
    };
    let uffd = match out {
        Ok(u) => u,
        Err(e) => {
            eprintln!("bpfckpt: error: {e}");
            return 1;
        }
    };
    if let Some(uffd) = uffd {
        let r = os::uffdio_api(
            uffd.as_fd(),
            UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
        )
        .and_then(|(features, _)| {
            println!("uffd api features={features:#x}");
            match a.register {
                Some((addr, len)) => {
                    os::uffdio_register(uffd.as_fd(), addr, len, UFFDIO_REGISTER_MODE_WP).map(
                        |ioctls| println!("uffd registered {addr:#x}+{len:#x} ioctls={ioctls:#x}"),
                    )
                }
                None => Ok(()),
            }
        });
        if let Err(e) = r {
            eprintln!("bpfckpt: error: {e}");
            return 1;
        }
        if a.hold {
            println!("holding");
            let _ = std::io::stdout().flush();
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        }
    }
    println!("done");
    0
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn syscall_instructions_are_found_and_placed() {
        assert!(is_syscall_word(0x1122_3344_5566_050f));
        assert!(!is_syscall_word(0x1122_3344_5566_0f05));
        assert!(!is_syscall_word(0x050f_0000));
        assert_eq!(find_syscall(&[0x90, 0x0f, 0x0f, 0x05, 0xc3]), Some(2));
        assert_eq!(find_syscall(&[0x05, 0x0f]), None);
        assert_eq!(find_syscall(&[]), None);

        // Inside a page: the word ends at rip + 2; at a page's start: it
        // starts at rip.
        assert_eq!(poke_site(0x40_1234), (0x40_122e, 6));
        assert_eq!(poke_site(0x40_1006), (0x40_1000, 6));
        assert_eq!(poke_site(0x40_1005), (0x40_1005, 0));
        assert_eq!(poke_site(0x40_1000), (0x40_1000, 0));
        let w = 0x8877_6655_4433_2211u64;
        assert_eq!(with_syscall(w, 6), 0x050f_6655_4433_2211);
        assert_eq!(with_syscall(w, 0), 0x8877_6655_4433_050f);
        // The bytes at rip are 0f 05 whichever site was chosen.
        for rip in [0x40_1234u64, 0x40_1001, 0x40_1fff] {
            let (at, off) = poke_site(rip);
            let bytes = with_syscall(w, off).to_le_bytes();
            let i = (rip - at) as usize;
            assert_eq!(&bytes[i..i + 2], &[0x0f, 0x05], "rip {rip:#x}");
        }
    }

    fn saved(poke: Option<(u64, u64)>) -> Saved {
        let mut a = [0u64; Regs::COUNT];
        for (i, r) in a.iter_mut().enumerate() {
            *r = (i as u64 + 1) * 0x0101_0101_0101_0101;
        }
        a[15] = u64::MAX; // orig_rax -1
        Saved {
            pid: 4242,
            tid: 4243,
            regs: Regs::from_array(a),
            sigmask: 0x8000_0000_0001_0000,
            insn: 0x7fff_1234_5678,
            poke,
        }
    }

    #[test]
    fn watchdog_lines_round_trip() {
        let s = saved(None);
        assert_eq!(Regs::from_array(s.regs.to_array()), s.regs);
        assert_eq!(s.regs.r15, 0x0101_0101_0101_0101);
        assert_eq!(s.regs.gs, 27 * 0x0101_0101_0101_0101);
        for n in [
            Note::Hold(7),
            Note::Release(7),
            Note::Inject(Box::new(s.clone())),
            Note::Inject(Box::new(saved(Some((0x40_1000, 0xdead_beef))))),
            Note::Call {
                tid: 9,
                nr: nr::USERFAULTFD,
                makes_fd: true,
            },
            Note::Call {
                tid: 9,
                nr: nr::CLOSE,
                makes_fd: false,
            },
            Note::Owns {
                tid: 9,
                fd: Some(0),
            },
            Note::Owns { tid: 9, fd: None },
            Note::Injected(9),
        ] {
            let line = n.to_line();
            assert!(
                line.ends_with('\n') && line.lines().count() == 1,
                "{line:?}"
            );
            assert_eq!(Note::parse(&line), Some(n), "{line:?}");
        }
        let line = Note::Inject(Box::new(s)).to_line();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 5 + Regs::COUNT);
        // Truncated, extended, or malformed lines are not taken.
        let cut = words[..words.len() - 1].join(" ");
        assert_eq!(Note::parse(&cut), None);
        assert_eq!(Note::parse(&format!("{} x", line.trim_end())), None);
        assert_eq!(Note::parse(&format!("{} poke 1", line.trim_end())), None);
        for bad in [
            "",
            "hold",
            "hold -1",
            "hold 0",
            "hold 1 2",
            "call 1 3 2",
            "call 1 x 1",
            "owns 1 -2",
            "injected x",
            "serve 5",
        ] {
            assert_eq!(Note::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn recovery_closes_only_what_the_injection_left() {
        let s = saved(None);
        let insn = s.insn;
        let mut p = Pending {
            saved: s.clone(),
            call: Some((nr::USERFAULTFD, true)),
            owned_fd: None,
        };
        let set = {
            let mut r = s.regs;
            r.rip = insn;
            r.rax = nr::USERFAULTFD;
            r.orig_rax = u64::MAX;
            r
        };
        let ran = |nr: u64, rax: i64| {
            let mut r = set;
            r.rip = insn + 2;
            r.orig_rax = nr;
            r.rax = rax as u64;
            r
        };
        // Set up but not run: nothing to close.
        assert_eq!(fd_to_close(&p, &set), None);
        // Ran: its result is the descriptor.
        assert_eq!(fd_to_close(&p, &ran(nr::USERFAULTFD, 5)), Some(5));
        assert_eq!(fd_to_close(&p, &ran(nr::USERFAULTFD, -22)), None);
        // Known from `owns`, then the close set up (not run) or run.
        p.owned_fd = Some(5);
        p.call = Some((nr::CLOSE, false));
        assert_eq!(fd_to_close(&p, &set), Some(5));
        assert_eq!(fd_to_close(&p, &ran(nr::CLOSE, 0)), None);
        // The thread had stopped after that very call itself, and its
        // registers are back: nothing of ours is in flight.
        let mut own = s.clone();
        own.regs.rip = insn + 2;
        own.regs.orig_rax = nr::USERFAULTFD;
        own.regs.rax = 3;
        let p = Pending {
            saved: own.clone(),
            call: Some((nr::USERFAULTFD, true)),
            owned_fd: None,
        };
        assert_eq!(fd_to_close(&p, &own.regs), None);
    }

    #[test]
    fn steps_have_names() {
        for s in Step::ALL {
            assert_eq!(Step::parse(s.name()), Some(s));
        }
        assert_eq!(Step::parse("bogus"), None);
    }
}
