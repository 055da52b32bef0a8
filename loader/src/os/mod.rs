//! The application's own system calls that are not about BPF: process
//! handles (pidfd) for the watchdog, capabilities, uname, and, in the
//! submodules, `PAGEMAP_SCAN`, ptrace, userfaultfd and fanotify. Like the
//! loader's `sys`, this is one of the two modules of the package with `unsafe`.

mod fanotify;
mod pagemap;
mod ptrace;
mod uffd;

pub use fanotify::*;
pub use pagemap::*;
pub use ptrace::*;
pub use uffd::*;

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
}
