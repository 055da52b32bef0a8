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

mod access;
mod injection;
mod insn;
mod recovery;
mod seize;
mod selftest;
mod tracee;

pub use access::{
    ProcStatus, Reason, Refusal, explain_eperm, inject_mask, parse_status, precheck, read_status,
    temporary_mask,
};
pub use injection::{Injection, Options, fetch_new_fd};
pub use insn::{Insn, find_syscall, is_syscall_word, poke_site, with_syscall};
pub use recovery::{Note, Pending, Saved, fd_to_close, recover};
pub use seize::Seized;
pub use selftest::{SelftestArgs, selftest_main};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_have_names() {
        for s in Step::ALL {
            assert_eq!(Step::parse(s.name()), Some(s));
        }
        assert_eq!(Step::parse("bogus"), None);
    }
}
