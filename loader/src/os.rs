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
    let mut vec = vec![[0u64; 3]; SCAN_VEC];
    let mut a = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags,
        start,
        end,
        vec: vec.as_mut_ptr() as u64,
        vec_len: SCAN_VEC as u64,
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
    let n = (r as usize).min(SCAN_VEC);
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

// userfaultfd ioctls (`_IOWR(0xAA, ...)`), on a userfaultfd whose memory is
// the target's (created in the target, fetched with pidfd_getfd).
const UFFDIO_API: libc::Ioctl = 0xc018_aa3fu32 as libc::Ioctl;
const UFFDIO_REGISTER: libc::Ioctl = 0xc020_aa00u32 as libc::Ioctl;
const UFFDIO_WRITEPROTECT: libc::Ioctl = 0xc018_aa06u32 as libc::Ioctl;
const UFFD_API: u64 = 0xaa;
/// `UFFD_FEATURE_WP_ASYNC`: a write to a protected page unprotects it
/// without a message; `UFFD_FEATURE_WP_UNPOPULATED`: pages not yet
/// populated count as protected.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

fn uffd_ioctl<T>(fd: BorrowedFd<'_>, req: libc::Ioctl, arg: &mut T, what: &str) -> Result<()> {
    // SAFETY: `arg` is the exclusively borrowed, fully initialised #[repr(C)]
    // struct that `req` names (sizes are encoded in the request numbers
    // above); the kernel reads and writes only within it.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if r < 0 {
        return Err(Error::sys(what, last_errno()));
    }
    Ok(())
}

/// `UFFDIO_API` asking for `features`.
pub fn uffd_api(fd: BorrowedFd<'_>, features: u64) -> Result<()> {
    #[repr(C)]
    struct Api {
        api: u64,
        features: u64,
        ioctls: u64,
    }
    let mut a = Api {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    uffd_ioctl(fd, UFFDIO_API, &mut a, "UFFDIO_API")
}

/// `UFFDIO_REGISTER` of `[start, start + len)` for write protection.
pub fn uffd_register_wp(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    #[repr(C)]
    struct Register {
        start: u64,
        len: u64,
        mode: u64,
        ioctls: u64,
    }
    let mut r = Register {
        start,
        len,
        mode: UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    uffd_ioctl(fd, UFFDIO_REGISTER, &mut r, "UFFDIO_REGISTER")
}

/// `UFFDIO_WRITEPROTECT` of `[start, start + len)`.
pub fn uffd_writeprotect(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    #[repr(C)]
    struct Wp {
        start: u64,
        len: u64,
        mode: u64,
    }
    let mut w = Wp {
        start,
        len,
        mode: UFFDIO_WRITEPROTECT_MODE_WP,
    };
    uffd_ioctl(fd, UFFDIO_WRITEPROTECT, &mut w, "UFFDIO_WRITEPROTECT")
}
