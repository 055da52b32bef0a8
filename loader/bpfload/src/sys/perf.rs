//! perf events and attachment: perf_event_open(2) of tracepoints, the perf event ioctls,
//! BPF_LINK_CREATE and BPF_RAW_TRACEPOINT_OPEN.

use std::ffi::CString;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::consts::*;
use super::{bpf_fd, last_errno, ptr_u64};
use crate::{Error, Result};

#[repr(C)]
#[derive(Default)]
struct PerfEventAttrRaw {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}
/// PERF_ATTR_SIZE_VER1: every kernel accepts it.
const _: () = assert!(size_of::<PerfEventAttrRaw>() == 72);

/// perf_event_open(2) of a tracepoint event (`tp_id` from tracefs), close-on-exec.
pub(crate) fn perf_event_open_tracepoint(tp_id: u64, pid: i32, cpu: i32) -> Result<OwnedFd> {
    let mut attr = PerfEventAttrRaw {
        type_: PERF_TYPE_TRACEPOINT,
        size: size_of::<PerfEventAttrRaw>() as u32,
        config: tp_id,
        sample_period: 1,
        wakeup_events: 1,
        ..Default::default()
    };
    // SAFETY: `attr` is a fully initialised perf_event_attr of the size it announces and
    // lives across the call; the kernel only reads it (and may write `size` on E2BIG).
    let r = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &mut attr as *mut PerfEventAttrRaw,
            pid as libc::c_long,
            cpu as libc::c_long,
            -1 as libc::c_long,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("perf_event_open(tracepoint id {tp_id}, pid {pid}, cpu {cpu})"),
            last_errno(),
        ));
    }
    let fd = RawFd::try_from(r).map_err(|_| Error::new("perf_event_open returned a bad fd"))?;
    // SAFETY: perf_event_open just returned this new descriptor; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_int(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    arg: libc::c_int,
) -> std::result::Result<(), i32> {
    // SAFETY: both requests used here take an integer argument by value; the kernel reads
    // no memory of ours. `fd` is a live descriptor for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

/// PERF_EVENT_IOC_SET_BPF: attach a program to a perf event (legacy path).
pub(crate) fn perf_event_set_bpf(fd: BorrowedFd<'_>, prog_fd: BorrowedFd<'_>) -> Result<()> {
    ioctl_int(fd, PERF_EVENT_IOC_SET_BPF, prog_fd.as_raw_fd())
        .map_err(|e| Error::sys("ioctl(PERF_EVENT_IOC_SET_BPF)", e))
}

/// PERF_EVENT_IOC_ENABLE.
pub(crate) fn perf_event_enable(fd: BorrowedFd<'_>) -> Result<()> {
    ioctl_int(fd, PERF_EVENT_IOC_ENABLE, 0)
        .map_err(|e| Error::sys("ioctl(PERF_EVENT_IOC_ENABLE)", e))
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateRaw {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
}
const _: () = assert!(size_of::<LinkCreateRaw>() == 24);

/// BPF_LINK_CREATE (for perf events: `attach_type` = [`BPF_PERF_EVENT`]).
pub(crate) fn link_create(
    prog_fd: BorrowedFd<'_>,
    target_fd: BorrowedFd<'_>,
    attach_type: u32,
) -> Result<OwnedFd> {
    let mut a = LinkCreateRaw {
        prog_fd: prog_fd.as_raw_fd() as u32,
        target_fd: target_fd.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    bpf_fd(BPF_LINK_CREATE, &mut a)
        .map_err(|e| Error::sys(format!("BPF_LINK_CREATE (attach type {attach_type})"), e))
}

#[repr(C)]
#[derive(Default)]
struct RawTpOpenRaw {
    name: u64,
    prog_fd: u32,
    _pad: u32,
    cookie: u64,
}
const _: () = assert!(size_of::<RawTpOpenRaw>() == 24);

/// BPF_RAW_TRACEPOINT_OPEN: attaches a raw tracepoint program; closing the fd detaches.
pub(crate) fn raw_tracepoint_open(name: &str, prog_fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let Ok(cname) = CString::new(name) else {
        crate::bail!("raw tracepoint name {name:?} contains a NUL byte");
    };
    let mut a = RawTpOpenRaw {
        name: ptr_u64(cname.as_ptr()),
        prog_fd: prog_fd.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &mut a)
        .map_err(|e| Error::sys(format!("BPF_RAW_TRACEPOINT_OPEN({name})"), e))
}
