//! Attaching programs: tracepoints (perf_event_open + BPF_LINK_CREATE, or the older
//! PERF_EVENT_IOC_SET_BPF + ENABLE) and raw tracepoints. Every attachment is an owned
//! descriptor: dropping it (or the process dying) detaches, so nothing outlives the loader.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::{Error, Result, names, sys};

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// The tracefs directory that has `events/`: `/sys/kernel/tracing`, else
/// `/sys/kernel/debug/tracing`; if neither, mounts tracefs at `/sys/kernel/tracing`.
pub fn tracefs_root() -> Result<PathBuf> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
    }
    let root = Path::new(TRACEFS);
    if !root.is_dir() {
        crate::bail!(
            "tracefs not found: neither {TRACEFS}/events nor {DEBUGFS_TRACING}/events exists, \
             and {TRACEFS} is missing too (is sysfs mounted at /sys? is CONFIG_FTRACE enabled?)"
        );
    }
    if let Err(e) = sys::mount_fs("tracefs", root) {
        // Attachments run in parallel (and other loaders may start with
        // us): whoever mounts it first wins, the rest get EBUSY and find it
        // there now.
        if !root.join("events").is_dir() {
            return Err(e.context(format!(
                "tracefs not found: neither {TRACEFS}/events nor {DEBUGFS_TRACING}/events exists, and mounting it failed"
            )));
        }
    }
    if !root.join("events").is_dir() {
        crate::bail!(
            "mounted tracefs at {TRACEFS} but it has no events/ directory (kernel without trace events?)"
        );
    }
    Ok(root.to_path_buf())
}

/// Rejects names that would escape `events/` (we build paths from them).
fn check_component(what: &str, s: &str) -> Result<()> {
    if !names::valid_tracepoint_part(s) {
        crate::bail!("invalid tracepoint {what} {s:?}");
    }
    Ok(())
}

/// The id of tracepoint `category/name` from `<tracefs>/events/<category>/<name>/id`.
pub fn tracepoint_id(category: &str, name: &str) -> Result<u64> {
    check_component("category", category)?;
    check_component("name", name)?;
    let path = tracefs_root()?
        .join("events")
        .join(category)
        .join(name)
        .join("id");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (no such tracepoint on this kernel)"
        } else {
            ""
        };
        Error::from(e).context(format!(
            "tracepoint {category}/{name}: reading {}{hint}",
            path.display()
        ))
    })?;
    text.trim().parse().map_err(|_| {
        Error::new(format!(
            "{}: not a number: {:?}",
            path.display(),
            text.trim()
        ))
    })
}

/// How a tracepoint program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TracepointMode {
    /// BPF_LINK_CREATE, falling back to the ioctls if the kernel does not support it.
    Auto,
    /// PERF_EVENT_IOC_SET_BPF + PERF_EVENT_IOC_ENABLE only (kernels before 5.15).
    Ioctl,
}

/// A program attached to a tracepoint. Drop it to detach.
#[derive(Debug)]
pub struct TracepointLink {
    // Field order matters: the link goes before the perf event it points to.
    link: Option<OwnedFd>,
    /// Held for its drop: closing it detaches the program.
    _perf_fd: OwnedFd,
}

impl TracepointLink {
    /// Whether the attachment is a BPF link (rather than the ioctl path).
    pub fn is_bpf_link(&self) -> bool {
        self.link.is_some()
    }

    /// The BPF link descriptor, if the link path was used.
    pub fn link_fd(&self) -> Option<BorrowedFd<'_>> {
        self.link.as_ref().map(|l| l.as_fd())
    }
}

/// Attaches a BPF_PROG_TYPE_TRACEPOINT program to `category/name`.
///
/// One perf event with pid = -1, cpu = 0 is enough: the program hangs off the tracepoint
/// itself, not the event's CPU, so it runs for hits on every CPU (as libbpf relies on;
/// checked by the `sys_kernel` tests on CPU 1).
pub fn attach_tracepoint(prog_fd: impl AsFd, category: &str, name: &str) -> Result<TracepointLink> {
    attach_tracepoint_with(prog_fd, category, name, TracepointMode::Auto)
}

/// [`attach_tracepoint`] with an explicit [`TracepointMode`].
pub fn attach_tracepoint_with(
    prog_fd: impl AsFd,
    category: &str,
    name: &str,
    mode: TracepointMode,
) -> Result<TracepointLink> {
    let ctx = |e: Error| e.context(format!("attaching to tracepoint {category}/{name}"));
    let id = tracepoint_id(category, name)?;
    let perf_fd = sys::perf_event_open_tracepoint(id, -1, 0).map_err(ctx)?;
    let prog = prog_fd.as_fd();
    let mut link = None;
    if mode == TracepointMode::Auto {
        match sys::link_create(prog, perf_fd.as_fd(), sys::BPF_PERF_EVENT) {
            Ok(l) => link = Some(l),
            // Kernels before 5.15 have no perf-event links (524 is the kernel's ENOTSUPP).
            Err(e) if matches!(e.errno, Some(libc::EINVAL | libc::EOPNOTSUPP | 524)) => {}
            Err(e) => return Err(ctx(e)),
        }
    }
    if link.is_none() {
        sys::perf_event_set_bpf(perf_fd.as_fd(), prog).map_err(ctx)?;
    }
    // The event is created enabled; ENABLE is harmless then and needed where it is not.
    sys::perf_event_enable(perf_fd.as_fd()).map_err(ctx)?;
    Ok(TracepointLink {
        link,
        _perf_fd: perf_fd,
    })
}

/// A program attached to a raw tracepoint. Drop it to detach.
#[derive(Debug)]
pub struct RawTracepointLink {
    fd: OwnedFd,
}

impl AsFd for RawTracepointLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Attaches a BPF_PROG_TYPE_RAW_TRACEPOINT program to raw tracepoint `name`
/// (e.g. "sys_enter").
pub fn attach_raw_tracepoint(prog_fd: impl AsFd, name: &str) -> Result<RawTracepointLink> {
    let fd = sys::raw_tracepoint_open(name, prog_fd.as_fd())?;
    Ok(RawTracepointLink { fd })
}
