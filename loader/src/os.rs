//! The application's own system calls that are not about BPF: process
//! handles (pidfd) for the watchdog, capabilities, uname. Like the loader's
//! `sys`, this is one of the two modules of the package with `unsafe`.

use bpfload::{Error, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn c_string(f: &[libc::c_char]) -> String {
    let b: Vec<u8> = f
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&b).into_owned()
}

/// uname(2): (sysname, release, version, machine).
pub fn uname() -> Result<(String, String, String, String)> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } < 0 {
        return Err(Error::sys("uname", last_errno()));
    }
    Ok((
        c_string(&u.sysname),
        c_string(&u.release),
        c_string(&u.version),
        c_string(&u.machine),
    ))
}

/// capget(2): this thread's effective capability set as a 64-bit mask.
pub fn effective_caps() -> Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two Data records (64 bits).
    let mut hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires; both outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut Header, data.as_mut_ptr()) };
    if r < 0 {
        return Err(Error::sys("capget", last_errno()));
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// pidfd_open(2): a handle on process `pid` that keeps naming that process even after it
/// exits and its pid is reused (signals sent through it then fail with ESRCH).
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    if pid <= 0 {
        return Err(Error::sys(format!("pidfd_open({pid})"), libc::EINVAL));
    }
    // SAFETY: pidfd_open takes a pid and a flags word by value; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
    if r < 0 {
        return Err(Error::sys(format!("pidfd_open({pid})"), last_errno()));
    }
    let fd = RawFd::try_from(r).map_err(|_| Error::sys("pidfd_open", libc::EBADF))?;
    // SAFETY: the kernel just returned this new descriptor (O_CLOEXEC by default); nobody
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_send_signal(2): sends `sig` to the process behind `pidfd` (no siginfo).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<()> {
    // SAFETY: a descriptor, a signal number, a null siginfo pointer (allowed: the kernel
    // then fills in a SI_USER siginfo) and zero flags; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd() as libc::c_long,
            sig as libc::c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(Error::sys("pidfd_send_signal", last_errno()));
    }
    Ok(())
}

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::Ioctl = 0xc060_6610u32 as libc::Ioctl;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}
const _: () = assert!(size_of::<PmScanArg>() == 96);

/// One result of `PAGEMAP_SCAN`: `(start, end, categories)`.
pub type PageRegion = (u64, u64, u64);

pub struct Scanned {
    pub regions: Vec<PageRegion>,
    /// Where the walk stopped (the end, unless the result buffer filled).
    pub walk_end: u64,
}

/// Pages per `PAGEMAP_SCAN` result buffer.
const SCAN_VEC: usize = 4096;

/// `PAGEMAP_SCAN` over `[start, end)` of the process behind `pagemap`:
/// the runs of pages in any of the `anyof` categories, reporting `ret`.
pub fn pagemap_scan(
    pagemap: &std::fs::File,
    start: u64,
    end: u64,
    anyof: u64,
    ret: u64,
) -> Result<Scanned> {
    pagemap_scan_with(pagemap, start, end, 0, 0, anyof, ret)
}

/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless the range is registered for
/// asynchronous write protection.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `PAGEMAP_SCAN` with `flags` and a category `mask` every page must match.
pub fn pagemap_scan_with(
    pagemap: &std::fs::File,
    start: u64,
    end: u64,
    flags: u64,
    mask: u64,
    anyof: u64,
    ret: u64,
) -> Result<Scanned> {
    // No more runs than pages: a small range needs a small buffer.
    let cap = (end.saturating_sub(start) / 4096).clamp(1, SCAN_VEC as u64) as usize;
    let mut vec = vec![[0u64; 3]; cap];
    let mut a = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags,
        start,
        end,
        vec: vec.as_mut_ptr() as u64,
        vec_len: cap as u64,
        category_mask: mask,
        category_anyof_mask: anyof,
        return_mask: ret,
        ..Default::default()
    };
    // SAFETY: `a` is a fully initialised pm_scan_arg of the size it states;
    // `vec` holds `vec_len` page_region records of 24 bytes and outlives
    // the call; the kernel writes only within them.
    let r = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut a as *mut PmScanArg) };
    if r < 0 {
        return Err(Error::sys("PAGEMAP_SCAN", last_errno()));
    }
    let n = (r as usize).min(cap);
    Ok(Scanned {
        regions: vec[..n].iter().map(|e| (e[0], e[1], e[2])).collect(),
        walk_end: a.walk_end,
    })
}

/// Whether the kernel has `PAGEMAP_SCAN` (Linux 6.7+): an empty range is
/// accepted, an unknown ioctl is not.
pub fn pagemap_scan_supported(pagemap: &std::fs::File) -> bool {
    pagemap_scan(pagemap, 0, 0, 1 << 3, 1 << 3).is_ok()
}

/// `madvise(MADV_GUARD_INSTALL)` on our own memory (Linux 6.13+), to test
/// what guard pages look like.
#[cfg(test)]
pub fn madvise_guard(addr: u64, len: u64) -> Result<()> {
    // SAFETY: installs guards in our own mapping that the caller owns and no
    // longer accesses at those pages; no memory is handed to the kernel.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, 102) };
    if r < 0 {
        return Err(Error::sys("madvise(MADV_GUARD_INSTALL)", last_errno()));
    }
    Ok(())
}

/// Stores `v` at `buf[at..at + 8]` with release ordering, for memory shared
/// with BPF programs (the config seqlock).
pub fn store_release(buf: &mut [u8], at: usize, v: u64) -> Result<()> {
    let Some(slot) = buf.get_mut(at..at + 8) else {
        return Err(Error::new(format!(
            "store at {at} beyond {} bytes",
            buf.len()
        )));
    };
    let p = slot.as_mut_ptr() as *mut u64;
    if !p.is_aligned() {
        return Err(Error::new(format!("store at {at}: not 8-byte aligned")));
    }
    // SAFETY: `p` points to 8 writable, aligned bytes that `buf` borrows
    // exclusively for this call; other accessors (BPF programs) use atomic
    // or volatile accesses of the same width.
    unsafe { std::sync::atomic::AtomicU64::from_ptr(p) }
        .store(v, std::sync::atomic::Ordering::Release);
    Ok(())
}

// ---------------------------------------------------------------------------
// ptrace, waitpid and friends: running system calls inside a held target
// (ckpt/inject.rs). The request numbers are the kernel's ABI, spelled out here
// because libc does not export all of them for musl.

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

/// pidfd_getfd(2): a duplicate of descriptor `fd` of the process behind
/// `pidfd`, close-on-exec (needs ptrace access to that process).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> Result<OwnedFd> {
    // SAFETY: two descriptors numbers and zero flags by value; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd() as libc::c_long,
            fd as libc::c_long,
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(Error::sys(format!("pidfd_getfd({fd})"), last_errno()));
    }
    let new = RawFd::try_from(r).map_err(|_| Error::sys("pidfd_getfd", libc::EBADF))?;
    // SAFETY: the kernel just installed this descriptor for us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: libc::Ioctl = 0xc018_aa3fu32 as libc::Ioctl;
/// `UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::Ioctl = 0xc020_aa00u32 as libc::Ioctl;
const UFFD_API: u64 = 0xaa;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
const _: () = assert!(size_of::<UffdioApi>() == 24);

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}
const _: () = assert!(size_of::<UffdioRegister>() == 32);

/// A userfaultfd of our own (`flags`: `O_CLOEXEC`, `UFFD_USER_MODE_ONLY`),
/// to ask the kernel which features it grants.
pub fn userfaultfd(flags: u64) -> Result<OwnedFd> {
    // SAFETY: the syscall takes a flags word and returns a new descriptor
    // (or -1), which we then own alone.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(Error::sys("userfaultfd", last_errno()));
    }
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `UFFDIO_API` on a userfaultfd asking for `features`: the features and
/// ioctls the kernel grants.
pub fn uffdio_api(uffd: BorrowedFd<'_>, features: u64) -> Result<(u64, u64)> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `a` is a fully initialised uffdio_api that outlives the call;
    // the kernel reads and writes only that struct.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut a as *mut UffdioApi) };
    if r < 0 {
        return Err(Error::sys("UFFDIO_API", last_errno()));
    }
    Ok((a.features, a.ioctls))
}

/// `UFFDIO_REGISTER` of `[start, start + len)` (of the memory the
/// userfaultfd was created for) in `mode`: the ioctls the range supports.
pub fn uffdio_register(uffd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> Result<u64> {
    let mut a = UffdioRegister {
        start,
        len,
        mode,
        ioctls: 0,
    };
    // SAFETY: `a` is a fully initialised uffdio_register that outlives the
    // call; the kernel reads and writes only that struct.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER,
            &mut a as *mut UffdioRegister,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("UFFDIO_REGISTER({start:#x}+{len:#x})"),
            last_errno(),
        ));
    }
    Ok(a.ioctls)
}

/// `UFFDIO_WRITEPROTECT`: `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
const UFFDIO_WRITEPROTECT: libc::Ioctl = 0xc018_aa06u32 as libc::Ioctl;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFD_FEATURE_WP_ASYNC`: a write to a protected page unprotects it
/// without a message; `UFFD_FEATURE_WP_UNPOPULATED`: pages not yet
/// populated count as protected.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;

#[repr(C)]
struct UffdioWriteprotect {
    start: u64,
    len: u64,
    mode: u64,
}
const _: () = assert!(size_of::<UffdioWriteprotect>() == 24);

/// `UFFDIO_WRITEPROTECT` of `[start, start + len)`: protected again (a
/// write unprotects it, with a fault).
pub fn uffd_writeprotect(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    let mut a = UffdioWriteprotect {
        start,
        len,
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    // SAFETY: `a` is a fully initialised uffdio_writeprotect that outlives
    // the call; the kernel reads and writes only that struct.
    let r = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_WRITEPROTECT,
            &mut a as *mut UffdioWriteprotect,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("UFFDIO_WRITEPROTECT({start:#x}+{len:#x})"),
            last_errno(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// fanotify: a target held inside its trigger open until we answer
// (ckpt/engine/openhold.rs).

/// A fanotify group for permission events (content class), non-blocking.
pub fn fanotify_perm_group() -> Result<OwnedFd> {
    // SAFETY: no pointers; the kernel returns a new descriptor or -1.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(Error::sys("fanotify_init", last_errno()));
    }
    // SAFETY: the kernel just made this descriptor for us alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Asks for a permission event at every open of a file in directory `dir`.
pub fn fanotify_mark_opens_in(fan: BorrowedFd<'_>, dir: &std::path::Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::new(format!("{} has a NUL byte", dir.display())))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let r = unsafe {
        libc::fanotify_mark(
            fan.as_raw_fd(),
            libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR,
            libc::FAN_OPEN_PERM | libc::FAN_EVENT_ON_CHILD,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("fanotify_mark {}", dir.display()),
            last_errno(),
        ));
    }
    Ok(())
}

/// One fanotify event: who opened, and the event's own descriptor of the
/// file (to answer with; `None` for an overflow notice).
pub struct FanEvent {
    pub pid: i32,
    pub mask: u64,
    pub fd: Option<OwnedFd>,
}

/// The events queued now (none: an empty list).
pub fn fanotify_read(fan: BorrowedFd<'_>) -> Result<Vec<FanEvent>> {
    let mut buf = [0u8; 4096];
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::read(
            fan.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if n < 0 {
        let e = last_errno();
        if e == libc::EAGAIN {
            return Ok(Vec::new());
        }
        return Err(Error::sys("read fanotify events", e));
    }
    let mut out = Vec::new();
    let mut at = 0usize;
    let n = n as usize;
    // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8,
    // metadata_len u16, mask u64, fd i32, pid i32.
    while at + 24 <= n {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let mask = u64::from_ne_bytes(buf[at + 8..at + 16].try_into().expect("8 bytes"));
        let fd = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
        let pid = i32::from_ne_bytes(buf[at + 20..at + 24].try_into().expect("4 bytes"));
        // SAFETY: the kernel installed `fd` for this event and hands it to
        // us; nobody else owns it.
        let fd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
        out.push(FanEvent { pid, mask, fd });
        if len < 24 {
            break;
        }
        at += len;
    }
    Ok(out)
}

/// Lets the open behind permission event `event_fd` go on.
pub fn fanotify_allow(fan: BorrowedFd<'_>, event_fd: BorrowedFd<'_>) -> Result<()> {
    let r = libc::fanotify_response {
        fd: event_fd.as_raw_fd(),
        response: libc::FAN_ALLOW,
    };
    // SAFETY: `r` is a fully initialised fanotify_response read by the kernel.
    let n = unsafe {
        libc::write(
            fan.as_raw_fd(),
            &r as *const libc::fanotify_response as *const libc::c_void,
            size_of::<libc::fanotify_response>(),
        )
    };
    if n < 0 {
        return Err(Error::sys(
            "answer a fanotify permission event",
            last_errno(),
        ));
    }
    Ok(())
}

/// Creates an empty regular file at `path` without opening it (so that no
/// open permission event of ours waits for ourselves); fails if anything,
/// a symlink too, is already there.
pub fn mknod_file(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let r = unsafe { libc::mknodat(libc::AT_FDCWD, c.as_ptr(), libc::S_IFREG | mode, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises RLIMIT_MEMLOCK as far as allowed: to infinity if permitted (root
/// with CAP_SYS_RESOURCE), else the soft limit up to the hard one. Kernels
/// before 5.11 charge BPF maps and programs to this limit instead of the
/// memory cgroup, and its default (64 KiB or 8 MiB) fits no page store.
/// `Ok` with the soft limit now in force (`None` = infinity).
pub fn raise_memlock() -> Result<Option<u64>> {
    let inf = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit value, read by the kernel during the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &inf) } == 0 {
        return Ok(None);
    }
    let first = last_errno();
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `cur` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) } != 0 {
        return Err(Error::sys("getrlimit(RLIMIT_MEMLOCK)", last_errno()));
    }
    let hard = libc::rlimit {
        rlim_cur: cur.rlim_max,
        rlim_max: cur.rlim_max,
    };
    // SAFETY: as above; lowering nothing, the soft limit only rises to the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &hard) } != 0 {
        return Err(Error::sys("setrlimit(RLIMIT_MEMLOCK)", last_errno()));
    }
    if cur.rlim_max == libc::RLIM_INFINITY {
        return Ok(None);
    }
    // Not infinity: say why, the caller shows it if a map is refused.
    Err(Error::sys(
        format!(
            "setrlimit(RLIMIT_MEMLOCK, infinity) (raised to the hard limit, {} bytes, instead)",
            cur.rlim_max
        ),
        first,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
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

    #[test]
    fn pidfd_getfd_duplicates_a_descriptor() {
        let f = std::fs::File::open("/proc/self/exe").expect("open");
        let me = pidfd_open(std::process::id() as i32).expect("pidfd");
        let dup = pidfd_getfd(me.as_fd(), f.as_raw_fd()).expect("pidfd_getfd");
        assert_ne!(dup.as_raw_fd(), f.as_raw_fd());
        let (a, b) = (
            f.metadata().expect("stat"),
            std::fs::File::from(dup).metadata().expect("stat"),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
        assert!(pidfd_getfd(me.as_fd(), 99_999).is_err());
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
