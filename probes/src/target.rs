//! The served target: whether the current task belongs to it, its state,
//! and the events user space hears about it.

use crate::abi::*;
use crate::helpers as h;
use crate::maps::*;
use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_xadd};
use core::ptr::{null_mut, read_volatile};

pub const SIGSTOP: u32 = 19;

/// Syscall tracepoint records (see .../events/syscalls/*/format).
#[repr(C)]
pub struct SysEnter {
    common: u64,
    nr: i64,
    pub args: [u64; 6],
}

#[repr(C)]
pub struct SysExit {
    common: u64,
    nr: i64,
    pub ret: i64,
}

#[inline(always)]
pub fn current_tgid() -> (u32, u32) {
    // SAFETY: helper without pointer arguments.
    let id = unsafe { h::get_current_pid_tgid() };
    ((id >> 32) as u32, id as u32)
}

/// The target's config if the current task belongs to the served thread group.
#[inline(always)]
pub unsafe fn served() -> *mut Config {
    let (tgid, _) = current_tgid();
    // SAFETY: CONFIG has one entry; null checked.
    unsafe {
        let cfg: *mut Config = lookup(map(&CONFIG), 0);
        if cfg.is_null() || tgid == 0 {
            return null_mut();
        }
        if read_volatile(&(*cfg).tgid) != tgid || read_volatile(&(*cfg).flags) & F_ACTIVE == 0 {
            return null_mut();
        }
        cfg
    }
}

#[inline(always)]
pub unsafe fn state() -> *mut State {
    // SAFETY: STATE has one entry; callers check null.
    unsafe { lookup(map(&STATE), 0) }
}

/// The header of an event about the current task.
#[inline(always)]
pub fn header(kind: u32, held: u32) -> EventHeader {
    let (tgid, tid) = current_tgid();
    EventHeader {
        kind,
        tgid,
        tid,
        held,
    }
}

/// Sends one event to user space. `request`: a checkpoint or restore that
/// user space must answer.
#[inline(always)]
pub unsafe fn emit<T>(ev: &T, request: bool) {
    // SAFETY: `ev` is a stack object of the size passed; STATE is null checked.
    unsafe {
        let r = h::ringbuf_output(
            map(&EVENTS),
            ev as *const T as *const c_void,
            size_of::<T>() as u64,
            0,
        );
        if r != 0 && request {
            // A request user space never hears of would leave the target
            // waiting (or stopped): count it, user space polls the count.
            let st = state();
            if !st.is_null() {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*st).lost, 1);
            }
        }
    }
}

/// Whether tracked regions may skip pages on the touched-page bitmaps.
#[inline(always)]
pub unsafe fn tracking(cfg: *const Config, st: *const State) -> u64 {
    // SAFETY: live map values.
    unsafe {
        (read_volatile(&(*cfg).flags) & F_EXHAUSTIVE == 0 && read_volatile(&(*st).untracked) == 0)
            as u64
    }
}

/// Whether memory may have been written since user space last looked
/// without a fault in the target's context: by another process
/// (`process_vm_writev`, ptrace, `/proc/PID/mem`), or by a kernel path the
/// probes only count (io_uring, AIO, O_DIRECT). Only a scan by user space,
/// with the target held, finds such pages.
#[inline(always)]
pub unsafe fn foreign_writes(st: *const State) -> bool {
    // SAFETY: live map value.
    unsafe {
        read_volatile(&(*st).gup) != read_volatile(&(*st).gup_acked)
            || read_volatile(&(*st).gup_inflight) != 0
            || read_volatile(&(*st).gup_sticky) != 0
    }
}

/// Holds the target for user space at a request: in its trigger open if
/// user space holds those and the target has one thread (no thread started
/// since the layout user space read: a clone changes it), else with
/// SIGSTOP. The `EventHeader::held` to report.
#[inline(always)]
pub unsafe fn hold(cfg: *const Config) -> u32 {
    // SAFETY: live map values, null checked.
    unsafe {
        let st = state();
        let flags = read_volatile(&(*cfg).flags);
        if !st.is_null()
            && flags & F_OPEN_HOLD != 0
            && flags & F_SINGLE_THREAD != 0
            && read_volatile(&(*cfg).applied_seq) == read_volatile(&(*st).layout_seq)
        {
            return HELD_OPEN;
        }
        h::send_signal(SIGSTOP);
        HELD_SIGNAL
    }
}
