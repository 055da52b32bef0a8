//! ptrace, waitpid and tgkill: running system calls inside a held target (`ckpt/inject/`).

use super::last_errno;
use bpfload::{Error, Result};

// The request numbers are the kernel's ABI, spelled out here because libc
// does not export all of them for musl.

const PTRACE_PEEKDATA: libc::c_long = 2;
const PTRACE_POKEDATA: libc::c_long = 5;
const PTRACE_CONT: libc::c_long = 7;
const PTRACE_SINGLESTEP: libc::c_long = 9;
const PTRACE_GETREGS: libc::c_long = 12;
const PTRACE_SETREGS: libc::c_long = 13;
const PTRACE_DETACH: libc::c_long = 17;
const PTRACE_SYSCALL: libc::c_long = 24;
const PTRACE_GETREGSET: libc::c_long = 0x4204;
const PTRACE_SETREGSET: libc::c_long = 0x4205;
const PTRACE_SEIZE: libc::c_long = 0x4206;
const PTRACE_INTERRUPT: libc::c_long = 0x4207;
const PTRACE_LISTEN: libc::c_long = 0x4208;
const PTRACE_GETSIGMASK: libc::c_long = 0x420a;
const PTRACE_SETSIGMASK: libc::c_long = 0x420b;

/// `PTRACE_O_TRACESYSGOOD`: syscall stops report SIGTRAP | 0x80.
pub const PTRACE_O_TRACESYSGOOD: u64 = 1;
/// `PTRACE_EVENT_STOP`: the event of a group-stop or `PTRACE_INTERRUPT` trap.
pub const PTRACE_EVENT_STOP: i32 = 128;
/// The stop signal of a syscall stop with `PTRACE_O_TRACESYSGOOD`.
pub const SYSCALL_STOP_SIG: i32 = libc::SIGTRAP | 0x80;
/// Register sets for `PTRACE_GETREGSET`: the FXSAVE area (x87, SSE).
pub const NT_PRFPREG: u32 = 2;
/// Register sets for `PTRACE_GETREGSET`: the whole XSAVE area (AVX and later).
pub const NT_X86_XSTATE: u32 = 0x202;

/// x86-64 `struct user_regs_struct`, what `PTRACE_GETREGS` reads, field for
/// field (`orig_rax` is the system call number the kernel restarts with, -1
/// outside a system call).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}
const _: () = assert!(size_of::<Regs>() == Regs::COUNT * 8);

impl Regs {
    /// Number of 64-bit fields.
    pub const COUNT: usize = 27;

    /// The fields in the kernel's order.
    pub fn to_array(&self) -> [u64; Self::COUNT] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }

    /// The inverse of [`Regs::to_array`].
    pub fn from_array(a: [u64; Self::COUNT]) -> Regs {
        let [
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            eflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs,
        ] = a;
        Regs {
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            eflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs,
        }
    }
}

/// A ptrace request whose `addr` and `data` are numbers (a signal, an
/// option mask, a tracee address, a word to store): no memory of ours.
fn ptrace_plain(req: libc::c_long, name: &str, tid: i32, addr: u64, data: u64) -> Result<()> {
    // SAFETY: the callers pass only requests that take `addr` and `data` by
    // value (SEIZE, INTERRUPT, LISTEN, CONT, SYSCALL, SINGLESTEP, DETACH,
    // POKEDATA): the kernel reads or writes no memory of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            req,
            tid as libc::c_long,
            addr as libc::c_long,
            data as libc::c_long,
        )
    };
    if r < 0 {
        return Err(Error::sys(format!("{name}({tid})"), last_errno()));
    }
    Ok(())
}

/// `PTRACE_SEIZE`: become `tid`'s tracer without stopping it. Never pass
/// `PTRACE_O_EXITKILL`: the target must outlive bpfckpt.
pub fn ptrace_seize(tid: i32, options: u64) -> Result<()> {
    ptrace_plain(PTRACE_SEIZE, "PTRACE_SEIZE", tid, 0, options)
}

/// `PTRACE_INTERRUPT`: trap a seized tracee (a `PTRACE_EVENT_STOP`), with no
/// effect on its signals or job control.
pub fn ptrace_interrupt(tid: i32) -> Result<()> {
    ptrace_plain(PTRACE_INTERRUPT, "PTRACE_INTERRUPT", tid, 0, 0)
}

/// `PTRACE_LISTEN`: leave a tracee in group-stop but let it report the
/// group-stop's end (a SIGCONT) as a new `PTRACE_EVENT_STOP`.
pub fn ptrace_listen(tid: i32) -> Result<()> {
    ptrace_plain(PTRACE_LISTEN, "PTRACE_LISTEN", tid, 0, 0)
}

/// `PTRACE_CONT`, delivering `sig` (0: none).
pub fn ptrace_cont(tid: i32, sig: i32) -> Result<()> {
    ptrace_plain(PTRACE_CONT, "PTRACE_CONT", tid, 0, sig as u64)
}

/// `PTRACE_SYSCALL`: run to the next system call entry or exit, delivering
/// `sig` (0: none).
pub fn ptrace_syscall(tid: i32, sig: i32) -> Result<()> {
    ptrace_plain(PTRACE_SYSCALL, "PTRACE_SYSCALL", tid, 0, sig as u64)
}

/// `PTRACE_SINGLESTEP`, delivering `sig` (0: none).
pub fn ptrace_singlestep(tid: i32, sig: i32) -> Result<()> {
    ptrace_plain(PTRACE_SINGLESTEP, "PTRACE_SINGLESTEP", tid, 0, sig as u64)
}

/// `PTRACE_DETACH`, delivering `sig` (0: none).
pub fn ptrace_detach(tid: i32, sig: i32) -> Result<()> {
    ptrace_plain(PTRACE_DETACH, "PTRACE_DETACH", tid, 0, sig as u64)
}

/// `PTRACE_POKEDATA`: store the word `word` at `addr` in the tracee (also
/// into read-only text: the kernel writes with FOLL_FORCE).
pub fn ptrace_poke(tid: i32, addr: u64, word: u64) -> Result<()> {
    ptrace_plain(PTRACE_POKEDATA, "PTRACE_POKEDATA", tid, addr, word)
}

/// `PTRACE_PEEKDATA`: the word at `addr` in the tracee.
pub fn ptrace_peek(tid: i32, addr: u64) -> Result<u64> {
    let mut word = 0u64;
    // SAFETY: the raw system call (unlike the C library's wrapper) stores the
    // word at `data`: 8 writable bytes of `word`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            PTRACE_PEEKDATA,
            tid as libc::c_long,
            addr as libc::c_long,
            &mut word as *mut u64,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("PTRACE_PEEKDATA({tid}, {addr:#x})"),
            last_errno(),
        ));
    }
    Ok(word)
}

/// `PTRACE_GETREGS`: the general-purpose registers of a stopped tracee.
pub fn ptrace_getregs(tid: i32) -> Result<Regs> {
    let mut regs = Regs::default();
    // SAFETY: `regs` is a writable user_regs_struct (layout checked above)
    // that outlives the call; the kernel writes exactly that struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            PTRACE_GETREGS,
            tid as libc::c_long,
            0 as libc::c_long,
            &mut regs as *mut Regs,
        )
    };
    if r < 0 {
        return Err(Error::sys(format!("PTRACE_GETREGS({tid})"), last_errno()));
    }
    Ok(regs)
}

/// `PTRACE_SETREGS`.
pub fn ptrace_setregs(tid: i32, regs: &Regs) -> Result<()> {
    // SAFETY: `regs` is a readable user_regs_struct that outlives the call;
    // the kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            PTRACE_SETREGS,
            tid as libc::c_long,
            0 as libc::c_long,
            regs as *const Regs,
        )
    };
    if r < 0 {
        return Err(Error::sys(format!("PTRACE_SETREGS({tid})"), last_errno()));
    }
    Ok(())
}

/// Largest register set we read: above any XSAVE area x86 has (AMX tiles
/// make it about 11 KiB).
const REGSET_MAX: usize = 64 * 1024;

/// `PTRACE_GETREGSET` of note type `nt` (`NT_PRFPREG`, `NT_X86_XSTATE`): the
/// bytes the kernel returns, as long as it says they are.
pub fn ptrace_getregset(tid: i32, nt: u32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; REGSET_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf` (REGSET_MAX writable bytes); both outlive
    // the call; the kernel writes at most iov_len bytes there and updates
    // iov_len.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            PTRACE_GETREGSET,
            tid as libc::c_long,
            nt as libc::c_long,
            &mut iov as *mut libc::iovec,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("PTRACE_GETREGSET({tid}, {nt:#x})"),
            last_errno(),
        ));
    }
    let len = iov.iov_len.min(REGSET_MAX);
    buf.truncate(len);
    Ok(buf)
}

/// `PTRACE_SETREGSET` of note type `nt` with `data` (as `ptrace_getregset`
/// returned it).
pub fn ptrace_setregset(tid: i32, nt: u32, data: &[u8]) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `iov` describes `data`, which outlives the call; for SETREGSET
    // the kernel only reads the buffer (it writes iov_len of our `iov`).
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            PTRACE_SETREGSET,
            tid as libc::c_long,
            nt as libc::c_long,
            &mut iov as *mut libc::iovec,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("PTRACE_SETREGSET({tid}, {nt:#x})"),
            last_errno(),
        ));
    }
    Ok(())
}

/// `PTRACE_GETSIGMASK`: the tracee's blocked signals (bit `n - 1` for signal `n`).
pub fn ptrace_getsigmask(tid: i32) -> Result<u64> {
    let mut mask = 0u64;
    // SAFETY: `addr` is the size of a kernel sigset (8 bytes on x86-64) and
    // `data` points to 8 writable bytes of `mask`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            PTRACE_GETSIGMASK,
            tid as libc::c_long,
            size_of::<u64>() as libc::c_long,
            &mut mask as *mut u64,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("PTRACE_GETSIGMASK({tid})"),
            last_errno(),
        ));
    }
    Ok(mask)
}

/// `PTRACE_SETSIGMASK` (the kernel never blocks SIGKILL or SIGSTOP).
pub fn ptrace_setsigmask(tid: i32, mask: u64) -> Result<()> {
    // SAFETY: `addr` is the size of a kernel sigset and `data` points to the
    // 8 readable bytes of `mask`, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ptrace,
            PTRACE_SETSIGMASK,
            tid as libc::c_long,
            size_of::<u64>() as libc::c_long,
            &mask as *const u64,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("PTRACE_SETSIGMASK({tid})"),
            last_errno(),
        ));
    }
    Ok(())
}

/// What `waitpid` said about a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
    /// A stop: `sig` as `WSTOPSIG` gives it (`SYSCALL_STOP_SIG` for a
    /// syscall stop), `event` the `PTRACE_EVENT_*` (`status >> 16`).
    Stopped {
        sig: i32,
        event: i32,
    },
    Continued,
}

impl WaitStatus {
    /// Decodes a raw wait status.
    pub fn from_raw(st: i32) -> WaitStatus {
        if libc::WIFEXITED(st) {
            WaitStatus::Exited(libc::WEXITSTATUS(st))
        } else if libc::WIFSIGNALED(st) {
            WaitStatus::Signaled(libc::WTERMSIG(st))
        } else if libc::WIFSTOPPED(st) {
            WaitStatus::Stopped {
                sig: libc::WSTOPSIG(st),
                event: (st >> 16) & 0xff,
            }
        } else {
            WaitStatus::Continued
        }
    }
}

/// `waitpid(tid, __WALL)` (any thread, traced or a child): `None` with
/// `nohang` when there is nothing to report yet. Retries on EINTR.
pub fn waitpid_thread(tid: i32, nohang: bool) -> Result<Option<WaitStatus>> {
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    loop {
        let mut st = 0i32;
        // SAFETY: `st` is a writable int that outlives the call.
        let r = unsafe { libc::waitpid(tid, &mut st, flags) };
        if r < 0 {
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            return Err(Error::sys(format!("waitpid({tid})"), e));
        }
        if r == 0 {
            return Ok(None);
        }
        return Ok(Some(WaitStatus::from_raw(st)));
    }
}

/// tgkill(2): signal one thread `tid` of process `tgid`.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> Result<()> {
    // SAFETY: three numbers by value; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            tgid as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        )
    };
    if r < 0 {
        return Err(Error::sys(format!("tgkill({tgid}, {tid})"), last_errno()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    #[test]
    fn regs_round_trip_in_kernel_order() {
        let a: [u64; Regs::COUNT] = std::array::from_fn(|i| i as u64 * 3 + 1);
        let r = Regs::from_array(a);
        assert_eq!((r.r15, r.rax, r.orig_rax, r.rip, r.gs), (1, 31, 46, 49, 79));
        assert_eq!(r.to_array(), a);
    }

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(WaitStatus::from_raw(3 << 8), WaitStatus::Exited(3));
        assert_eq!(WaitStatus::from_raw(9), WaitStatus::Signaled(9));
        let seized = 0x7f | (libc::SIGSTOP << 8) | (PTRACE_EVENT_STOP << 16);
        assert_eq!(
            WaitStatus::from_raw(seized),
            WaitStatus::Stopped {
                sig: libc::SIGSTOP,
                event: PTRACE_EVENT_STOP
            }
        );
        let sysstop = 0x7f | (SYSCALL_STOP_SIG << 8);
        assert_eq!(
            WaitStatus::from_raw(sysstop),
            WaitStatus::Stopped {
                sig: SYSCALL_STOP_SIG,
                event: 0
            }
        );
        assert_eq!(WaitStatus::from_raw(0xffff), WaitStatus::Continued);
    }

    fn state(pid: i32) -> char {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        s[s.rfind(')').expect(")") + 2..]
            .chars()
            .next()
            .expect("state")
    }

    fn wait_state(pid: i32, want: char) {
        for _ in 0..2000 {
            if state(pid) == want {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("pid {pid} never reached state {want} (is {})", state(pid));
    }

    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The wrappers against a real tracee: a shell spinning in user space,
    /// group-stopped by SIGSTOP, as bpfckpt holds its targets.
    #[test]
    fn ptrace_wrappers_on_a_group_stopped_child() {
        let child = Kill(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("spawn sh"),
        );
        let pid = child.0.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(20));
        tgkill(pid, pid, libc::SIGSTOP).expect("tgkill");
        wait_state(pid, 'T');

        ptrace_seize(pid, PTRACE_O_TRACESYSGOOD).expect("seize");
        // Seizing a group-stopped thread traps it before SEIZE returns.
        assert_eq!(
            waitpid_thread(pid, true).expect("wait"),
            Some(WaitStatus::Stopped {
                sig: libc::SIGSTOP,
                event: PTRACE_EVENT_STOP
            })
        );
        let regs = ptrace_getregs(pid).expect("getregs");
        assert_eq!(regs.orig_rax, u64::MAX, "stopped in user space");
        ptrace_setregs(pid, &regs).expect("setregs");
        assert_eq!(ptrace_getregs(pid).expect("getregs"), regs);

        let word = ptrace_peek(pid, regs.rip).expect("peek");
        ptrace_poke(pid, regs.rip, word).expect("poke");
        assert_eq!(ptrace_peek(pid, regs.rip).expect("peek"), word);
        assert!(ptrace_peek(pid, 8).is_err(), "unmapped address");

        let mask = ptrace_getsigmask(pid).expect("getsigmask");
        ptrace_setsigmask(pid, mask | (1 << (libc::SIGUSR1 - 1))).expect("setsigmask");
        assert_eq!(
            ptrace_getsigmask(pid).expect("getsigmask"),
            mask | (1 << (libc::SIGUSR1 - 1))
        );
        ptrace_setsigmask(pid, mask).expect("setsigmask");

        // xmm15 through the FXSAVE set is xmm15 in the XSAVE set (byte 160
        // + 16 * n of both), and writing it back leaves it as it was.
        let fx = ptrace_getregset(pid, NT_PRFPREG).expect("NT_PRFPREG");
        let xs = ptrace_getregset(pid, NT_X86_XSTATE).expect("NT_X86_XSTATE");
        assert_eq!(fx.len(), 512);
        assert!(xs.len() >= 576, "legacy area + XSAVE header");
        assert_eq!(fx[160..416], xs[160..416], "the same xmm registers");
        let mut fx2 = fx.clone();
        fx2[400..416].copy_from_slice(&[0x5a; 16]);
        ptrace_setregset(pid, NT_PRFPREG, &fx2).expect("set NT_PRFPREG");
        let xs2 = ptrace_getregset(pid, NT_X86_XSTATE).expect("NT_X86_XSTATE");
        assert_eq!(xs2[400..416], [0x5a; 16]);
        ptrace_setregset(pid, NT_X86_XSTATE, &xs).expect("set NT_X86_XSTATE");
        assert_eq!(ptrace_getregset(pid, NT_PRFPREG).expect("NT_PRFPREG"), fx);

        // One instruction, then run, then trap again: the group stop is
        // still in effect, so the trap reports SIGSTOP.
        ptrace_singlestep(pid, 0).expect("singlestep");
        assert_eq!(
            waitpid_thread(pid, false).expect("wait"),
            Some(WaitStatus::Stopped {
                sig: libc::SIGTRAP,
                event: 0
            })
        );
        assert_ne!(ptrace_getregs(pid).expect("getregs").rip, regs.rip);
        ptrace_cont(pid, 0).expect("cont");
        ptrace_interrupt(pid).expect("interrupt");
        assert_eq!(
            waitpid_thread(pid, false).expect("wait"),
            Some(WaitStatus::Stopped {
                sig: libc::SIGSTOP,
                event: PTRACE_EVENT_STOP
            })
        );
        // LISTEN: stays stopped, and reports the SIGCONT that ends the stop.
        ptrace_listen(pid).expect("listen");
        assert_eq!(waitpid_thread(pid, true).expect("wait"), None);
        tgkill(pid, pid, libc::SIGCONT).expect("SIGCONT");
        assert_eq!(
            waitpid_thread(pid, false).expect("wait"),
            Some(WaitStatus::Stopped {
                sig: libc::SIGTRAP,
                event: PTRACE_EVENT_STOP
            })
        );
        // Stop it again, and detach in the group stop: it stays stopped.
        tgkill(pid, pid, libc::SIGSTOP).expect("SIGSTOP");
        ptrace_cont(pid, 0).expect("cont");
        assert_eq!(
            waitpid_thread(pid, false).expect("wait"),
            Some(WaitStatus::Stopped {
                sig: libc::SIGSTOP,
                event: 0
            })
        );
        ptrace_cont(pid, libc::SIGSTOP).expect("deliver SIGSTOP");
        assert_eq!(
            waitpid_thread(pid, false).expect("wait"),
            Some(WaitStatus::Stopped {
                sig: libc::SIGSTOP,
                event: PTRACE_EVENT_STOP
            })
        );
        ptrace_detach(pid, 0).expect("detach");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(state(pid), 'T', "still group-stopped after detach");
        assert!(ptrace_getregs(pid).is_err(), "no longer ours");
        tgkill(pid, pid, libc::SIGCONT).expect("SIGCONT");
        wait_state(pid, 'R');
    }
}
