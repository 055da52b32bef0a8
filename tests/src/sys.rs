//! The system calls the test targets make on their own memory. As in the
//! loader, `unsafe` lives only in this one module, each block justified.

#![allow(dead_code)]

use std::ptr::NonNull;

/// A raw memory region owned by the target (never freed: targets exit).
#[derive(Clone, Copy)]
pub struct Region {
    pub ptr: NonNull<u8>,
    pub len: usize,
}

// SAFETY: the targets are single-threaded; the region is plain memory.
unsafe impl Send for Region {}

impl Region {
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` bytes mapped readable for the
        // lifetime of the process (regions are never unmapped).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the region is writable when callers write
        // (the read-only scenario only reads after mprotect).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

fn check(p: *mut libc::c_void, what: &str) -> NonNull<u8> {
    if p.is_null() || p == libc::MAP_FAILED {
        panic!("{what} failed: {}", std::io::Error::last_os_error());
    }
    NonNull::new(p as *mut u8).expect("checked non-null")
}

/// `malloc(len)`: small sizes come from the brk heap, large ones from mmap.
pub fn malloc(len: usize) -> Region {
    // SAFETY: plain allocation; the memory is never freed.
    let p = unsafe { libc::malloc(len) };
    Region {
        ptr: check(p, "malloc"),
        len,
    }
}

/// `mmap` of anonymous memory; `shared` selects MAP_SHARED, `at` a fixed
/// address (MAP_FIXED_NOREPLACE, so nothing of ours is clobbered).
pub fn mmap_anon(len: usize, shared: bool, at: Option<usize>) -> Region {
    let mut flags = libc::MAP_ANONYMOUS
        | if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    if at.is_some() {
        flags |= libc::MAP_FIXED_NOREPLACE;
    }
    let hint = at.unwrap_or(0) as *mut libc::c_void;
    // SAFETY: a new anonymous mapping; MAP_FIXED_NOREPLACE never replaces an
    // existing one.
    let p = unsafe { libc::mmap(hint, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    let r = Region {
        ptr: check(p, "mmap"),
        len,
    };
    if let Some(a) = at {
        assert_eq!(r.addr(), a, "mmap ignored the fixed address");
    }
    r
}

/// `madvise(MADV_DONTNEED)`: private anonymous pages read as zero afterwards.
pub fn zap(r: &Region) {
    // SAFETY: the range is our own mapping; its content may be discarded.
    let rc = unsafe {
        libc::madvise(
            r.ptr.as_ptr() as *mut libc::c_void,
            r.len,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
}

pub fn protect(r: &Region, writable: bool) {
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: changes the protection of our own mapping; no Rust reference
    // is written through while it is read-only.
    let rc = unsafe { libc::mprotect(r.ptr.as_ptr() as *mut libc::c_void, r.len, prot) };
    assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
}

/// Makes `r` inaccessible (PROT_NONE): nothing may touch it until
/// `protect` gives access back.
pub fn protect_none(r: &Region) {
    // SAFETY: changes the protection of our own mapping; no Rust reference
    // into it is used while it is inaccessible.
    let rc = unsafe { libc::mprotect(r.ptr.as_ptr() as *mut libc::c_void, r.len, 0) };
    assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
}

/// A region over a static array (the caller passes its address and size).
pub fn from_static(ptr: *mut u8, len: usize) -> Region {
    Region {
        ptr: NonNull::new(ptr).expect("statics are non-null"),
        len,
    }
}

/// A `MAP_SHARED` mapping of a new temporary file: memory bpfckpt never
/// captures (file-shared), so it keeps what was written after a restore.
pub fn mmap_file_shared(len: usize) -> Region {
    mmap_new_file(len, libc::MAP_SHARED, "ckpt-target-shared")
}

/// A `MAP_PRIVATE`, writable mapping of a new temporary file of `len`
/// bytes: file-backed memory whose written pages become the process's own.
pub fn mmap_file_private(len: usize) -> Region {
    mmap_new_file(len, libc::MAP_PRIVATE, "dirty-target-private")
}

/// A readable, writable `flags` mapping of a new temporary file of `len`
/// bytes (named `tag-PID`, removed at once).
fn mmap_new_file(len: usize, flags: i32, tag: &str) -> Region {
    let path = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create mapped file");
    let _ = std::fs::remove_file(&path);
    f.set_len(len as u64).expect("size mapped file");
    use std::os::fd::AsRawFd;
    // SAFETY: a new mapping of our own file; the mapping outlives the
    // descriptor, which may be closed afterwards.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            f.as_raw_fd(),
            0,
        )
    };
    Region {
        ptr: check(p, "mmap file"),
        len,
    }
}

// ---------------------------------------------------------------------------------------
// Process and mapping faults for the reliability targets (rel-target, rel-soak).

impl Region {
    /// `len` bytes at byte offset `off` of this region (clamped to it).
    pub fn sub(&self, off: usize, len: usize) -> Region {
        let off = off.min(self.len);
        let len = len.min(self.len - off);
        Region {
            // SAFETY: `off <= self.len`, so the pointer stays inside (or one
            // past the end of) the same mapping.
            ptr: NonNull::new(unsafe { self.ptr.as_ptr().add(off) }).expect("non-null"),
            len,
        }
    }
}

/// `mmap` of anonymous private memory with the given protection.
pub fn mmap_anon_prot(len: usize, writable: bool) -> Region {
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: a new anonymous mapping at an address of the kernel's choice.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    Region {
        ptr: check(p, "mmap"),
        len,
    }
}

/// Unmaps `r`. The caller gives the region up: the targets keep no other
/// copy of it and never touch its addresses again, except through a new
/// mapping made there (see [`mmap_file_shared_at`]).
pub fn unmap(r: Region) {
    // SAFETY: the range is our own mapping and no reference into it outlives
    // this call (the caller gave the region up).
    let rc = unsafe { libc::munmap(r.ptr.as_ptr() as *mut libc::c_void, r.len) };
    assert_eq!(rc, 0, "munmap: {}", std::io::Error::last_os_error());
}

/// A `MAP_SHARED` mapping of `f` (its first `len` bytes) at exactly `at`,
/// which must be free (`MAP_FIXED_NOREPLACE`).
pub fn mmap_file_shared_at(f: &std::fs::File, len: usize, at: usize) -> Region {
    use std::os::fd::AsRawFd;
    // SAFETY: a new shared mapping of our own file at a free address;
    // MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
            f.as_raw_fd(),
            0,
        )
    };
    let r = Region {
        ptr: check(p, "mmap file at a fixed address"),
        len,
    };
    assert_eq!(r.addr(), at, "mmap ignored the fixed address");
    r
}

/// `fork()`: 0 in the child, the child's pid in the parent. The targets are
/// single-threaded when they fork.
pub fn fork() -> i32 {
    // SAFETY: fork has no memory arguments; the caller is single-threaded,
    // so the child may run ordinary code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// Waits for child `pid`: its exit code, or 128 + the signal that killed it.
pub fn wait_child(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is a live local the kernel writes one int into.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// The sentinels `reg_kernel` keeps in r15, r14 and ymm15 (xmm15 without
/// AVX2) for its whole run and returns at `[12..18]`.
pub const SENTINELS: [u64; 6] = [
    0x5ea7_1e15_c0de_f00d,
    0x0123_4567_89ab_cdef,
    0x1111_2222_3333_4444,
    0x5555_6666_7777_8888,
    0x9999_aaaa_bbbb_cccc,
    0xdddd_eeee_ffff_0001,
];

/// `iters` rounds of integer, floating-point (SSE2 scalar double) and
/// vector (AVX2, else SSE2) arithmetic from `seed`, every value in a
/// register for the whole loop (inline assembly, so in debug builds too):
/// what a process stopped anywhere in the loop must find again. Returns
/// the results (`[0..12]`) and the sentinel registers (`[12..18]`).
pub fn reg_kernel(seed: u64, iters: u64) -> [u64; 18] {
    let mut out = [0u64; 18];
    let sentinels = [SENTINELS[2], SENTINELS[3], SENTINELS[4], SENTINELS[5]];
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, just checked.
        unsafe { reg_kernel_avx2(seed, iters.max(1), &mut out, &sentinels) };
    } else {
        reg_kernel_sse2(seed, iters.max(1), &mut out, &sentinels);
    }
    out
}

#[target_feature(enable = "avx2")]
fn reg_kernel_avx2(seed: u64, iters: u64, out: &mut [u64; 18], sentinels: &[u64; 4]) {
    // SAFETY: reads 32 bytes of `sentinels` through rsi and writes the 144
    // bytes of `out` through rdi, both live for the block; every register
    // it changes is an output or clobbered (clobber_abi covers all vector
    // registers in full); it needs AVX2, which this function requires.
    unsafe {
        std::arch::asm!(
            "mov r8, rdx",
            "mov r9, 0x5851f42d4c957f2d",
            "mov r10, 0x14057b7ef767814f",
            "xor r11d, r11d",
            "xor r12d, r12d",
            "mov r15, 0x5ea71e15c0def00d",
            "mov r14, 0x0123456789abcdef",
            "vmovdqu ymm15, [rsi]",
            "vxorpd xmm0, xmm0, xmm0",
            "mov rax, 0x3c00000000000000",
            "vmovq xmm4, rax",
            "vpxor ymm5, ymm5, ymm5",
            "vpxor ymm6, ymm6, ymm6",
            "2:",
            "imul r8, r9",
            "add r8, r10",
            "xor r11, r8",
            "mov rax, r11",
            "shr rax, 7",
            "add r12, rax",
            "vcvtsi2sd xmm3, xmm3, r8",
            "vmulsd xmm3, xmm3, xmm4",
            "vaddsd xmm0, xmm0, xmm3",
            "vmovq xmm7, r8",
            "vpbroadcastq ymm7, xmm7",
            "vpaddq ymm5, ymm5, ymm7",
            "vpxor ymm6, ymm6, ymm5",
            "vpermq ymm6, ymm6, 0x39",
            "dec rcx",
            "jnz 2b",
            "mov [rdi], r8",
            "mov [rdi + 8], r11",
            "mov [rdi + 16], r12",
            "vmovq [rdi + 24], xmm0",
            "vmovdqu [rdi + 32], ymm5",
            "vmovdqu [rdi + 64], ymm6",
            "mov [rdi + 96], r15",
            "mov [rdi + 104], r14",
            "vmovdqu [rdi + 112], ymm15",
            "vzeroupper",
            in("rdx") seed,
            inout("rcx") iters => _,
            in("rdi") out.as_mut_ptr(),
            in("rsi") sentinels.as_ptr(),
            out("r12") _,
            out("r14") _,
            out("r15") _,
            clobber_abi("C"),
        );
    }
}

fn reg_kernel_sse2(seed: u64, iters: u64, out: &mut [u64; 18], sentinels: &[u64; 4]) {
    // SAFETY: as for the AVX2 version, with 16 bytes of `sentinels` read
    // and 128 bytes of `out` written; SSE2 is part of x86-64.
    unsafe {
        std::arch::asm!(
            "mov r8, rdx",
            "mov r9, 0x5851f42d4c957f2d",
            "mov r10, 0x14057b7ef767814f",
            "xor r11d, r11d",
            "xor r12d, r12d",
            "mov r15, 0x5ea71e15c0def00d",
            "mov r14, 0x0123456789abcdef",
            "movdqu xmm15, [rsi]",
            "xorpd xmm0, xmm0",
            "mov rax, 0x3c00000000000000",
            "movq xmm4, rax",
            "pxor xmm5, xmm5",
            "pxor xmm6, xmm6",
            "2:",
            "imul r8, r9",
            "add r8, r10",
            "xor r11, r8",
            "mov rax, r11",
            "shr rax, 7",
            "add r12, rax",
            "cvtsi2sd xmm3, r8",
            "mulsd xmm3, xmm4",
            "addsd xmm0, xmm3",
            "movq xmm7, r8",
            "punpcklqdq xmm7, xmm7",
            "paddq xmm5, xmm7",
            "pxor xmm6, xmm5",
            "pshufd xmm6, xmm6, 0x4e",
            "dec rcx",
            "jnz 2b",
            "mov [rdi], r8",
            "mov [rdi + 8], r11",
            "mov [rdi + 16], r12",
            "movq [rdi + 24], xmm0",
            "movdqu [rdi + 32], xmm5",
            "movdqu [rdi + 64], xmm6",
            "mov [rdi + 96], r15",
            "mov [rdi + 104], r14",
            "movdqu [rdi + 112], xmm15",
            in("rdx") seed,
            inout("rcx") iters => _,
            in("rdi") out.as_mut_ptr(),
            in("rsi") sentinels.as_ptr(),
            out("r12") _,
            out("r14") _,
            out("r15") _,
            clobber_abi("C"),
        );
    }
}

/// One `nanosleep`: `Err(errno)` if it returned early (a stop and continue
/// must not make it: the kernel restarts it).
pub fn nanosleep(d: std::time::Duration) -> Result<(), i32> {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call; no remainder
    // is asked for (null).
    let rc = unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

static SIGNALS_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_signal(_sig: libc::c_int) {
    SIGNALS_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Counts deliveries of `sig` from now on (see `signals_seen`).
pub fn count_signals(sig: i32) {
    let handler: extern "C" fn(libc::c_int) = count_signal;
    // SAFETY: the handler only does an atomic add (async-signal-safe).
    let old = unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    assert_ne!(old, libc::SIG_ERR, "signal({sig})");
}

/// How many signals `count_signals` has seen.
pub fn signals_seen() -> u64 {
    SIGNALS_SEEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// Blocks `sig` in the calling thread (and threads it starts later).
pub fn block_signal(sig: i32) {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use;
    // both calls only read and write the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        assert_eq!(
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
            0
        );
    }
}

/// `_exit(code)`: ends a forked child at once, without running the parent's
/// atexit handlers or flushing its stdio buffers (which the child shares a
/// copy of).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; skipping Rust's
    // destructors only leaks memory the exiting process gives back anyway.
    unsafe { libc::_exit(code) }
}

// ---------------------------------------------------------------------------------------
// Writers that bypass the target's own faults, and huge pages (dirty-target).

/// `process_vm_writev` of `data` to `addr` in process `pid`: the bytes
/// written (the kernel writes through get_user_pages, not a fault of `pid`).
pub fn vm_write(pid: i32, addr: usize, data: &[u8]) -> isize {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: `local` describes `data`, which outlives the call and is only
    // read; the remote range is the other process's business (the kernel
    // checks it).
    unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) }
}

/// `madvise(MADV_HUGEPAGE)` on our own mapping.
pub fn want_huge_pages(r: &Region) {
    // SAFETY: advice on our own mapping; no memory is read or written.
    let rc = unsafe {
        libc::madvise(
            r.ptr.as_ptr() as *mut libc::c_void,
            r.len,
            libc::MADV_HUGEPAGE,
        )
    };
    assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
}

/// `read(fd, r)`: the kernel writes into `r` (a fault in the kernel).
pub fn read_into(fd: i32, r: &Region) -> isize {
    // SAFETY: `r` is our own writable mapping of `r.len` bytes.
    unsafe { libc::read(fd, r.ptr.as_ptr() as *mut libc::c_void, r.len) }
}

/// Forks a child that attaches to the caller with `PTRACE_SEIZE` and then
/// behaves as a debugger left running: it lets group stops stay stops
/// (`PTRACE_LISTEN`, so that SIGCONT resumes them) and passes every other
/// signal on. Returns once the caller is traced.
pub fn traced_by_child() {
    let parent = std::process::id() as i32;
    let (mut rd, mut wr) = std::io::pipe().expect("pipe");
    let child = fork();
    if child == 0 {
        use std::io::Write;
        // SAFETY: ptrace requests on our parent with no memory arguments
        // (SEIZE, LISTEN, CONT); `status` is a live local for waitpid.
        unsafe {
            if libc::ptrace(libc::PTRACE_SEIZE, parent, 0, 0) != 0 {
                exit_now(2);
            }
            let _ = wr.write_all(b"1");
            loop {
                let mut status = 0;
                if libc::waitpid(parent, &mut status, libc::__WALL) != parent {
                    exit_now(0);
                }
                if !libc::WIFSTOPPED(status) {
                    exit_now(0);
                }
                let sig = libc::WSTOPSIG(status);
                let stopping = matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                );
                if status >> 16 == libc::PTRACE_EVENT_STOP && stopping {
                    // A group stop: stays stopped until a SIGCONT.
                    libc::ptrace(libc::PTRACE_LISTEN, parent, 0, 0);
                } else if status >> 16 == libc::PTRACE_EVENT_STOP {
                    // Woken by SIGCONT (or interrupted): run on.
                    libc::ptrace(libc::PTRACE_CONT, parent, 0, 0);
                } else {
                    libc::ptrace(libc::PTRACE_CONT, parent, 0, sig as libc::c_long);
                }
            }
        }
    }
    drop(wr);
    let mut b = [0u8; 1];
    use std::io::Read;
    assert!(
        rd.read_exact(&mut b).is_ok(),
        "the tracer child could not attach"
    );
}
