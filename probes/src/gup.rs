//! Writes into the target that may happen without a page fault in its
//! context, which the write-fault tracking cannot see: the kernel resolves
//! them through get_user_pages. These probes only say that such a write may
//! have happened; user space then scans for the pages written.
//!
//! - another process's `process_vm_writev` or `PTRACE_POKETEXT/POKEDATA`
//!   aimed at the target: `State::gup` is bumped when the call begins (the
//!   next request scans) and `State::gup_inflight` counts it until it
//!   returns (a request meanwhile cannot trust its re-arming);
//! - anyone opening the target's `/proc/PID/mem` for writing (the writes come
//!   later, through the descriptor, whenever), the target setting up
//!   `io_uring` or AIO, opening a file `O_DIRECT`, or creating a
//!   userfaultfd of its own: `State::gup_sticky`, and from then on no
//!   request relies on the dirty set.

use crate::abi::*;
use crate::helpers as h;
use crate::maps::*;
use crate::target::*;
use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::ptr::{read_volatile, write_volatile};

const O_ACCMODE: u64 = 3;
const O_DIRECT: u64 = 0o40000;
const PTRACE_POKETEXT: u64 = 4;
const PTRACE_POKEDATA: u64 = 5;
const F_SETFL: u64 = 4;

/// The config, if a target is served and the caller is not bpfckpt itself.
#[inline(always)]
unsafe fn watching() -> *mut Config {
    // SAFETY: CONFIG has one entry; null checked.
    unsafe {
        let cfg: *mut Config = lookup(map(&CONFIG), 0);
        if cfg.is_null() || read_volatile(&(*cfg).flags) & F_ACTIVE == 0 {
            return core::ptr::null_mut();
        }
        let (tgid, _) = current_tgid();
        if tgid == read_volatile(&(*cfg).self_tgid) {
            return core::ptr::null_mut();
        }
        cfg
    }
}

#[inline(always)]
unsafe fn bump() {
    // SAFETY: STATE is null checked.
    unsafe {
        let st = state();
        if !st.is_null() {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*st).gup, 1);
        }
    }
}

#[inline(always)]
unsafe fn sticky() {
    // SAFETY: STATE is null checked.
    unsafe {
        let st = state();
        if !st.is_null() {
            write_volatile(&raw mut (*st).gup_sticky, 1);
        }
    }
}

/// A write aimed at process `pid` by someone else begins.
#[inline(always)]
unsafe fn aimed_at(pid: u64) {
    // SAFETY: see watching; stack key and value.
    unsafe {
        let cfg = watching();
        if cfg.is_null() || pid != read_volatile(&(*cfg).tgid) as u64 {
            return;
        }
        let st = state();
        if st.is_null() {
            return;
        }
        let (_, tid) = current_tgid();
        let one = 1u32;
        let key = &tid as *const u32 as *const c_void;
        if h::map_update_elem(
            map(&GUP_PENDING),
            key,
            &one as *const u32 as *const c_void,
            0,
        ) != 0
        {
            // Its end could not be seen: never trust the dirty set again.
            write_volatile(&raw mut (*st).gup_sticky, 1);
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*st).gup_inflight, 1);
        bump();
    }
}

/// The call `aimed_at` saw begin has returned.
#[inline(always)]
unsafe fn returned() {
    // SAFETY: stack key; STATE null checked.
    unsafe {
        let (_, tid) = current_tgid();
        let key = &tid as *const u32 as *const c_void;
        if h::map_lookup_elem(map(&GUP_PENDING), key).is_null() {
            return;
        }
        h::map_delete_elem(map(&GUP_PENDING), key);
        let st = state();
        if !st.is_null() {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(
                &raw mut (*st).gup_inflight,
                u64::MAX,
            );
        }
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_process_vm_writev")]
pub extern "C" fn gup_vm_writev(ctx: *const SysEnter) -> u32 {
    // SAFETY: the tracepoint context is readable at these offsets.
    unsafe { aimed_at((*ctx).args[0]) };
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_exit_process_vm_writev")]
pub extern "C" fn gup_vm_writev_exit(_ctx: *const SysExit) -> u32 {
    // SAFETY: map values null checked.
    unsafe { returned() };
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_exit_ptrace")]
pub extern "C" fn gup_ptrace_exit(_ctx: *const SysExit) -> u32 {
    // SAFETY: map values null checked.
    unsafe { returned() };
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_ptrace")]
pub extern "C" fn gup_ptrace(ctx: *const SysEnter) -> u32 {
    // SAFETY: as above.
    unsafe {
        let req = (*ctx).args[0];
        if req == PTRACE_POKETEXT || req == PTRACE_POKEDATA {
            aimed_at((*ctx).args[1]);
        }
    }
    0
}

const MEM_PATH: usize = 64;

/// Whether the NUL-terminated user string at `path` may name the memory
/// file of process `target` (`/proc/<target>/mem`, `/proc/<target>/task/
/// <tid>/mem`, `/proc/self/mem` opened by the target itself): fail safe,
/// so any relative path ending in a `mem` component counts (its directory
/// cannot be known here), and so does a path too long to read whole.
#[inline(always)]
unsafe fn may_name_target_mem(path: u64, target: u32, own: bool) -> bool {
    let mut b = [0u8; MEM_PATH];
    // SAFETY: a helper copy into our stack buffer of its size.
    let n = unsafe {
        h::probe_read_user_str(
            b.as_mut_ptr() as *mut c_void,
            MEM_PATH as u32,
            path as *const c_void,
        )
    };
    if n < 4 {
        return false;
    }
    let truncated = n as usize >= MEM_PATH;
    let len = ((n - 1) as usize) & (MEM_PATH - 1);
    let ends_mem = len >= 3
        && b[(len - 3) & (MEM_PATH - 1)] == b'm'
        && b[(len - 2) & (MEM_PATH - 1)] == b'e'
        && b[(len - 1) & (MEM_PATH - 1)] == b'm'
        && (len == 3 || b[(len - 4) & (MEM_PATH - 1)] == b'/');
    if b[0] != b'/' {
        return ends_mem || truncated;
    }
    let prefix = b"/proc/";
    let mut i = 0;
    while i < 6 {
        if b[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    if truncated {
        return true;
    }
    if !ends_mem {
        return false;
    }
    // `self/`, `thread-self/`: the opener's own memory.
    if b[6] == b's' && b[7] == b'e' && b[8] == b'l' && b[9] == b'f' && b[10] == b'/' {
        return own;
    }
    if b[6] == b't' && b[7] == b'h' && b[8] == b'r' {
        return own;
    }
    // A pid: the target's?
    let mut pid = 0u64;
    let mut i = 6;
    while i < 17 {
        let c = b[i];
        if c == b'/' {
            break;
        }
        if !c.is_ascii_digit() {
            return false;
        }
        pid = pid * 10 + (c - b'0') as u64;
        i += 1;
    }
    i > 6 && pid == target as u64
}

/// A write-open of what may be the target's memory file (bpfckpt itself
/// aside; the writes come later, through the descriptor, whenever), or the
/// target opening a file `O_DIRECT`. Called by the trigger programs (one
/// program per open saves a second one on the hot path).
#[inline(always)]
pub unsafe fn on_open_flags(path: u64, flags: u64) {
    // SAFETY: pointers from map lookups, null checked.
    unsafe {
        if flags & O_DIRECT != 0 && !served().is_null() {
            sticky();
        }
        if flags & O_ACCMODE == 0 {
            return;
        }
        let cfg = watching();
        if cfg.is_null() {
            return;
        }
        let target = read_volatile(&(*cfg).tgid);
        let (tgid, _) = current_tgid();
        if may_name_target_mem(path, target, tgid == target) {
            bump();
            sticky();
        }
    }
}

/// `openat2(dfd, path, &open_how, size)`: the flags are the first field.
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_openat2")]
pub extern "C" fn gup_openat2(ctx: *const SysEnter) -> u32 {
    // SAFETY: the user structure is copied to the stack with the helper.
    unsafe {
        let mut flags = 0u64;
        if h::probe_read_user(
            &mut flags as *mut u64 as *mut c_void,
            8,
            (*ctx).args[2] as *const c_void,
        ) == 0
        {
            on_open_flags((*ctx).args[1], flags);
        }
    }
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_fcntl")]
pub extern "C" fn gup_fcntl(ctx: *const SysEnter) -> u32 {
    // SAFETY: as above.
    unsafe {
        if (*ctx).args[1] == F_SETFL && (*ctx).args[2] & O_DIRECT != 0 && !served().is_null() {
            sticky();
        }
    }
    0
}

/// The target sets up a way for the kernel (or itself) to write its memory
/// without faults.
macro_rules! sticky_probe {
    ($fn:ident, $sec:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = $sec)]
        pub extern "C" fn $fn(_ctx: *const SysEnter) -> u32 {
            // SAFETY: map values null checked.
            unsafe {
                if !served().is_null() {
                    sticky();
                }
            }
            0
        }
    };
}

sticky_probe!(
    gup_io_uring_setup,
    "tracepoint/syscalls/sys_enter_io_uring_setup"
);
sticky_probe!(gup_io_setup, "tracepoint/syscalls/sys_enter_io_setup");
sticky_probe!(gup_userfaultfd, "tracepoint/syscalls/sys_enter_userfaultfd");
