//! A seized thread at a ptrace stop, and one system call in it.

use super::access::read_status;
use super::bit;
use crate::os::{self, Regs, WaitStatus};
use crate::{Error, Result};

/// A seized thread at a ptrace stop.
pub(super) struct Tracee {
    pub(super) pid: i32,
    pub(super) tid: i32,
    pub(super) insn: u64,
    /// The registers each call starts from (the saved ones).
    pub(super) base: Regs,
    /// A stop signal that arrived meanwhile (the thread took it): sent
    /// again at the end.
    pub(super) stop_again: Option<i32>,
    /// The group stop ended meanwhile (someone sent SIGCONT).
    pub(super) continued: bool,
}

impl Tracee {
    pub(super) fn set_call(&self, nr: u64, args: &[u64]) -> Result<()> {
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

    pub(super) fn gone(&self, how: String) -> Error {
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
    pub(super) fn until_syscall_stop(&mut self) -> Result<()> {
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
    pub(super) fn drop_forced(&mut self) -> Result<Option<i32>> {
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
    pub(super) fn run(&mut self, nr: u64) -> Result<i64> {
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
