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
