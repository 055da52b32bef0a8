//! Thin typed wrappers of bpf(2), perf_event_open(2), their ioctls, mmap of map memory
//! and mount(2) (tracefs).
//!
//! This is the only module with `unsafe`. Every attribute struct handed to the kernel is
//! `#[repr(C)]`, spelled out with explicit padding fields (so no byte is left uninitialised;
//! the kernel rejects non-zero bytes past the fields a command knows) and zero-initialised
//! through `Default`. Functions that hand the kernel a buffer check its length against what
//! the kernel will read or write, so every function here is safe to call with any input.
//!
//! Here: the raw bpf(2) call and the small helpers every command uses. `consts` has the
//! kernel's constants; `map` creates maps and accesses their elements; `prog` loads BTF and
//! programs (with the verifier log on failure); `perf` opens perf events, attaches programs
//! to them and to raw tracepoints; `info` enumerates kernel objects and describes them;
//! `mmap` maps array and ring buffer memory. Everything is re-exported here, so callers
//! write `sys::map_create`, `sys::BPF_ANY`, ...

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod consts;
mod info;
mod map;
mod mmap;
mod perf;
mod prog;

pub use consts::*;
pub use info::*;
pub use map::*;
pub use mmap::*;
pub(crate) use perf::*;
pub use prog::*;

use std::ffi::CString;
use std::mem::size_of;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::names;
use crate::{Error, Result};

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// bpf(2) with an attribute struct; returns the non-negative result or the errno.
fn bpf<T>(cmd: u32, attr: &mut T) -> std::result::Result<i64, i32> {
    // SAFETY: `attr` is an exclusive reference to a fully initialised #[repr(C)] struct that
    // outlives the call; the size passed is its exact size, so the kernel reads and writes
    // only inside it. Pointers inside it were derived from live buffers by the callers,
    // which checked their lengths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(r) }
}

/// bpf(2) for commands that return a new file descriptor.
fn bpf_fd<T>(cmd: u32, attr: &mut T) -> std::result::Result<OwnedFd, i32> {
    let r = bpf(cmd, attr)?;
    let fd = RawFd::try_from(r).map_err(|_| libc::EBADF)?;
    // SAFETY: the kernel just returned this descriptor for a new object; nobody else owns
    // it. bpf(2) always creates its descriptors with O_CLOEXEC.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ptr_u64<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// A kernel object name as `bpf_attr` holds it: [`names::kernel_name`], NUL-padded.
fn obj_name(name: &str) -> [u8; BPF_OBJ_NAME_LEN] {
    let mut out = [0u8; BPF_OBJ_NAME_LEN];
    for (dst, b) in out.iter_mut().zip(names::kernel_name(name).bytes()) {
        *dst = b;
    }
    out
}

fn name_from_bytes(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn ne_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_ne_bytes(a)
}

/// mount(2) of a pseudo file system (`tracefs`, `securityfs`, `debugfs`) at `target`.
pub fn mount_fs(fstype: &str, target: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let what = || format!("mount -t {fstype} {fstype} {}", target.display());
    let (Ok(src), Ok(tgt)) = (
        CString::new(fstype),
        CString::new(target.as_os_str().as_bytes()),
    ) else {
        crate::bail!("{}: NUL byte in argument", what());
    };
    // SAFETY: all three strings are NUL-terminated and outlive the call; data is NULL.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r < 0 {
        Err(Error::sys(what(), last_errno()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_and_truncated() {
        assert_eq!(&obj_name("a-b/c.d_e")[..], b"abc.d_e\0\0\0\0\0\0\0\0\0");
        let n = obj_name("abcdefghijklmnopqrstuvwxyz");
        assert_eq!(&n[..15], b"abcdefghijklmno");
        assert_eq!(n[15], 0);
    }

    #[test]
    fn info_buffer_fields() {
        assert_eq!(name_from_bytes(b"abc\0def"), "abc");
        assert_eq!(name_from_bytes(b"full"), "full");
        let b = 0x1234_5678u32.to_ne_bytes();
        assert_eq!(ne_u32(&b, 0), 0x1234_5678);
        // Past the end reads as 0 rather than panicking.
        assert_eq!(ne_u32(&b, 2), 0);
    }
}
