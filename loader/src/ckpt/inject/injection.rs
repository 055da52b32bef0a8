//! The injection: seize a thread of a group-stopped target, run system calls in it, put it back.

use super::access::{
    Access, ProcStatus, Reason, Refusal, explain_eperm, inject_mask, read_status, temporary_mask,
};
use super::insn::{Insn, choose_insn, with_syscall};
use super::recovery::{Note, Saved};
use super::seize::{await_trap, wait_group_stop};
use super::tracee::Tracee;
use super::{Step, bit, nr};
use crate::ckpt::procfs;
use crate::ckpt::watchdog::Watchdog;
use crate::os::{self, Regs};
use crate::{Error, Result};
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

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
