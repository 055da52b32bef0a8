//! fanotify and mknod: a target held inside its trigger open until we answer (`openhold`).

use super::last_errno;
use bpfload::{Error, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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
