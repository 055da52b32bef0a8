//! userfaultfd: feature probing, registration and write protection for dirty tracking.

use super::last_errno;
use bpfload::{Error, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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
