//! Memory system calls of the adversarial target that `sys.rs` does not
//! have: mappings of every kind and protection, locking, SysV shared
//! memory, memfd, protection keys, self-inspection of guard pages. As in
//! `sys.rs`, `unsafe` lives only in these modules, each block justified.
//! Errors come back as errno values: several scenarios expect them.

#![allow(dead_code)]

use crate::sys::Region;
use std::ptr::NonNull;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `mmap(at, len, prot, flags, fd, off)`; `at` = 0 lets the kernel choose
/// (otherwise pass `MAP_FIXED_NOREPLACE` in `flags` to keep what is there).
pub fn map(at: usize, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> Result<Region, i32> {
    // SAFETY: a new mapping; with a hint and MAP_FIXED_NOREPLACE nothing
    // existing is replaced (callers never pass MAP_FIXED over live memory
    // of theirs).
    let p = unsafe { libc::mmap(at as *mut libc::c_void, len, prot, flags, fd, off) };
    if p == libc::MAP_FAILED {
        return Err(errno());
    }
    Ok(Region {
        ptr: NonNull::new(p as *mut u8).ok_or(libc::EINVAL)?,
        len,
    })
}

/// Anonymous memory at exactly `at` (which must be free), or the process fails.
pub fn anon_at(at: usize, len: usize, prot: i32, shared: bool) -> Region {
    let kind = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let r = map(
        at,
        len,
        prot,
        kind | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
        -1,
        0,
    )
    .unwrap_or_else(|e| crate::proto::fail(&format!("mmap {len} bytes at {at:#x}: errno {e}")));
    if r.addr() != at {
        crate::proto::fail(&format!("mmap ignored the address {at:#x}"));
    }
    r
}

/// A file mapping of `f` at exactly `at`.
pub fn file_at(at: usize, len: usize, prot: i32, shared: bool, f: &std::fs::File) -> Region {
    use std::os::fd::AsRawFd;
    let kind = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let r = map(
        at,
        len,
        prot,
        kind | libc::MAP_FIXED_NOREPLACE,
        f.as_raw_fd(),
        0,
    )
    .unwrap_or_else(|e| crate::proto::fail(&format!("mmap file at {at:#x}: errno {e}")));
    if r.addr() != at {
        crate::proto::fail(&format!("mmap ignored the address {at:#x}"));
    }
    r
}

pub fn mprotect(r: &Region, prot: i32) -> i32 {
    // SAFETY: our own mapping; no Rust reference into it is used while it
    // is inaccessible.
    let rc = unsafe { libc::mprotect(r.ptr.as_ptr() as *mut libc::c_void, r.len, prot) };
    if rc == 0 { 0 } else { errno() }
}

pub fn madvise(r: &Region, advice: i32) -> i32 {
    // SAFETY: advice on our own mapping; discarding advice only drops
    // content the caller gave up.
    let rc = unsafe { libc::madvise(r.ptr.as_ptr() as *mut libc::c_void, r.len, advice) };
    if rc == 0 { 0 } else { errno() }
}

pub fn mlock(r: &Region) -> i32 {
    // SAFETY: locks our own range; no memory is changed.
    let rc = unsafe { libc::mlock(r.ptr.as_ptr() as *const libc::c_void, r.len) };
    if rc == 0 { 0 } else { errno() }
}

/// `mlock2(addr, len, flags)` (`MLOCK_ONFAULT` = 1).
pub fn mlock2(r: &Region, flags: u32) -> i32 {
    // SAFETY: as mlock.
    let rc = unsafe { libc::syscall(libc::SYS_mlock2, r.addr(), r.len, flags) };
    if rc == 0 { 0 } else { errno() }
}

pub fn mlockall(flags: i32) -> i32 {
    // SAFETY: locks our own address space; no memory is changed.
    let rc = unsafe { libc::mlockall(flags) };
    if rc == 0 { 0 } else { errno() }
}

/// `prctl(PR_SET_THP_DISABLE, 1)`.
pub fn thp_disable() -> i32 {
    // SAFETY: a process flag; no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 { 0 } else { errno() }
}

/// A memfd of `len` bytes.
pub fn memfd(name: &str, len: u64) -> std::fs::File {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(name).expect("name without NUL");
    // SAFETY: a NUL-terminated name; returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_create, c.as_ptr(), 1u32) } as i32;
    if fd < 0 {
        crate::proto::fail(&format!("memfd_create: errno {}", errno()));
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.set_len(len).expect("size the memfd");
    f
}

/// A private SysV shared memory segment of `len` bytes, attached read-write
/// and marked for removal (it goes away with the process).
pub fn sysv_shm(len: usize) -> Region {
    // SAFETY: creates a new private segment; no pointers.
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600) };
    if id < 0 {
        crate::proto::fail(&format!("shmget: errno {}", errno()));
    }
    // SAFETY: attaches the new segment where the kernel chooses.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    // SAFETY: marks the segment for removal once detached; no pointers.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    if p as isize == -1 {
        crate::proto::fail(&format!("shmat: errno {}", errno()));
    }
    Region {
        ptr: NonNull::new(p as *mut u8).expect("shmat address"),
        len,
    }
}

/// Whether `[addr, addr + len)` of this process can be read by the kernel
/// on someone's behalf (`process_vm_readv` on ourselves): a guard page
/// cannot. Ok, or the errno.
pub fn vm_readable(addr: usize, len: usize) -> Result<(), i32> {
    let mut buf = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: the local iovec is our own buffer of `len` bytes; the remote
    // one is only read by the kernel, which checks it.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == len as isize {
        Ok(())
    } else if n < 0 {
        Err(errno())
    } else {
        Err(0)
    }
}

pub fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: errno {}", errno());
    (fds[0], fds[1])
}

/// Blocks in read(2) for one byte; None at end of file or on an error.
pub fn read_byte(fd: i32) -> Option<u8> {
    let mut b = 0u8;
    // SAFETY: reads one byte into a local.
    let n = unsafe { libc::read(fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
    (n == 1).then_some(b)
}

pub fn write_byte(fd: i32, b: u8) {
    // SAFETY: writes one byte from a local.
    let n = unsafe { libc::write(fd, &b as *const u8 as *const libc::c_void, 1) };
    assert_eq!(n, 1, "write: errno {}", errno());
}

pub fn close(fd: i32) {
    // SAFETY: closes a descriptor of ours that nothing else uses.
    unsafe { libc::close(fd) };
}

pub fn gettid() -> i32 {
    // SAFETY: no arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// `read(fd, r)` into a region of ours, straight from the kernel (the
/// pages are filled by the kernel's copy, not by our own stores).
pub fn read_into(fd: i32, r: &Region) -> isize {
    // SAFETY: `r` is our own writable region of `r.len` bytes.
    unsafe { libc::read(fd, r.ptr.as_ptr() as *mut libc::c_void, r.len) }
}

// Protection keys (x86 PKU).

pub fn pkey_alloc() -> i32 {
    // SAFETY: no pointers.
    let k = unsafe { libc::syscall(libc::SYS_pkey_alloc, 0u64, 0u64) };
    if k < 0 { -errno() } else { k as i32 }
}

pub fn pkey_mprotect(r: &Region, prot: i32, key: i32) -> i32 {
    // SAFETY: changes the protection of our own mapping, as mprotect.
    let rc = unsafe { libc::syscall(libc::SYS_pkey_mprotect, r.addr(), r.len, prot, key) };
    if rc == 0 { 0 } else { errno() }
}

/// Sets the PKRU register (two bits per key: access disable, write disable).
pub fn wrpkru(v: u32) {
    // SAFETY: wrpkru needs ecx = edx = 0; it only changes which of our own
    // pages this thread may access, and callers touch a locked-out region
    // only after unlocking it.
    unsafe {
        core::arch::asm!("wrpkru", in("eax") v, in("ecx") 0u32, in("edx") 0u32, options(nostack));
    }
}

pub fn rdpkru() -> u32 {
    let v: u32;
    // SAFETY: rdpkru needs ecx = 0 and writes eax and edx.
    unsafe {
        core::arch::asm!("rdpkru", out("eax") v, in("ecx") 0u32, out("edx") _, options(nostack, nomem));
    }
    v
}
