//! The system calls only the guest's init makes. `unsafe` lives here only.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::FileExt;

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Mounts a pseudo file system (`source` = its type). Already mounted
/// there (EBUSY) counts as success.
pub fn mount(fstype: &str, target: &str) -> io::Result<()> {
    let (src, dst) = (cstr(fstype)?, cstr(target)?);
    // SAFETY: all three strings are valid NUL-terminated C strings that
    // outlive the call; `data` may be NULL for these file systems.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            // Not MS_NODEV on devtmpfs: its device nodes (/dev/null
            // for the children's stdin) must open.
            if fstype == "devtmpfs" {
                libc::MS_NOSUID
            } else {
                libc::MS_NOSUID | libc::MS_NODEV
            },
            std::ptr::null(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(e)
}

/// Sends `sig` to process `pid` (a negative pid: that process group).
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid == 0 || pid == 1 || pid == -1 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: kill(2) has no memory effects; init, "everyone" and our own
    // group are refused above.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SIGKILL to the process group `pgid` (a group this init created).
pub fn kill_group(pgid: i32) {
    if pgid > 1 {
        let _ = kill(-pgid, libc::SIGKILL);
    }
}

/// Reaps children reparented to init (no child of ours is running).
pub fn reap_orphans() {
    loop {
        let mut st = 0;
        // SAFETY: `st` is a valid out pointer for the call's duration.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// Waits until the console has sent everything written to it.
pub fn drain_console() {
    // SAFETY: tcdrain(2) on fd 1 takes no pointers; failure is harmless.
    unsafe { libc::tcdrain(1) };
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// The right to write QEMU's isa-debug-exit port, taken at boot: raising
/// lockdown later refuses both ioperm(2) and opening /dev/port.
pub enum ExitPort {
    /// ioperm(2) granted the port to the thread that claimed it.
    Ioperm(u16),
    /// /dev/port, opened while that was allowed.
    DevPort(std::fs::File, u16),
}

/// Claims `port` for the calling thread, which must be the one that later
/// calls [`debug_exit`] (the I/O permission bitmap is per thread).
pub fn claim_exit_port(port: u16) -> io::Result<ExitPort> {
    match ioperm(port) {
        Ok(()) => Ok(ExitPort::Ioperm(port)),
        Err(e) => std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/port")
            .map(|f| ExitPort::DevPort(f, port))
            .map_err(|e2| io::Error::other(format!("ioperm: {e}; /dev/port: {e2}"))),
    }
}

/// Writes `value` to the isa-debug-exit port: QEMU then exits.
pub fn debug_exit(p: &ExitPort, value: u8) -> io::Result<()> {
    match p {
        ExitPort::DevPort(f, port) => f.write_at(&[value], u64::from(*port)).map(|_| ()),
        ExitPort::Ioperm(port) => {
            port_out(*port, value);
            Ok(())
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn ioperm(port: u16) -> io::Result<()> {
    // SAFETY: ioperm(2) only changes this thread's I/O permission bitmap.
    let r = unsafe { libc::syscall(libc::SYS_ioperm, libc::c_ulong::from(port), 1u64, 1i32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_arch = "x86_64")]
fn port_out(port: u16, value: u8) {
    // SAFETY: ioperm granted this thread exactly this port; writing one
    // byte to the debug-exit device touches no memory of this process
    // (QEMU ends the machine).
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn ioperm(_port: u16) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(not(target_arch = "x86_64"))]
fn port_out(_port: u16, _value: u8) {}

/// Powers the machine off (QEMU exits with status 0).
pub fn power_off() {
    // SAFETY: sync(2) and reboot(2) take no pointers; init is the only
    // process left that matters.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
}

/// Kinds of BPF object, by their `BPF_*_GET_NEXT_ID` command.
pub const BPF_PROG_GET_NEXT_ID: u32 = 11;
pub const BPF_MAP_GET_NEXT_ID: u32 = 12;
pub const BPF_BTF_GET_NEXT_ID: u32 = 23;
pub const BPF_LINK_GET_NEXT_ID: u32 = 31;

/// The ids of every BPF object of one kind in the kernel (`cmd` is a
/// `BPF_*_GET_NEXT_ID`): an object keeps its id until it is freed.
pub fn bpf_ids(cmd: u32) -> io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut start = 0u32;
    loop {
        // union bpf_attr for these commands: start_id, next_id, open_flags.
        let mut attr = [start, 0u32, 0u32, 0u32];
        // SAFETY: `attr` is a valid, writable buffer of the size passed for
        // the call's duration; the kernel writes only next_id into it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd as libc::c_long,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr) as libc::c_long,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(ids);
            }
            return Err(e);
        }
        ids.push(attr[1]);
        start = attr[1];
    }
}
