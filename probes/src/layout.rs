//! Changes of the target's mappings and program image: the layout probes
//! mark the region table stale and tell user space; the exec probe starts
//! a new image (or catches a process `watch` waits for).

use crate::abi::*;
use crate::helpers as h;
use crate::maps::*;
use crate::target::*;
use crate::track::{RangeMode, mark_range};
use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_xadd, atomic_xchg};
use core::ptr::{read_volatile, write_volatile};

/// Marks the region table stale; returns the new sequence number. `D`
/// (degraded, kernels before 5.12): the plain add every kernel has, then a
/// read, which may see a later thread's bump too (still a new number).
#[inline(always)]
unsafe fn bump_seq<const D: bool>(st: *mut State) -> u64 {
    // SAFETY: `st` is a live map value. Atomic: two threads of the target
    // may change mappings at once. Not `Relaxed`: LLVM's BPF backend emits
    // the non-fetching add for a relaxed fetch-add, whose "result" is then
    // a stale register.
    unsafe {
        if D {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*st).layout_seq, 1);
            read_volatile(&(*st).layout_seq)
        } else {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*st).layout_seq, 1) + 1
        }
    }
}

/// A mapping call returned `ret`. `moved`: memory may now be elsewhere or
/// other memory (mmap, munmap, mremap, brk); a protection change (mprotect)
/// is not: every private mapping is captured whatever its protection, so the
/// region table and an image stay valid and only user space's copy of the
/// mappings needs a refresh.
/// `D`: the degraded variant (no tracking: nothing to mark, and no
/// exchange, so two threads may both notify, which user space tolerates).
#[inline(always)]
unsafe fn layout_changed<const D: bool>(ret: i64, moved: bool) -> u32 {
    // SAFETY: pointers from map lookups, null checked.
    unsafe {
        let cfg = served();
        if cfg.is_null() {
            return 0;
        }
        let st = state();
        if st.is_null() {
            return 0;
        }
        let seq = if moved {
            bump_seq::<D>(st)
        } else {
            read_volatile(&(*st).layout_seq)
        };
        let (_, tid) = current_tgid();
        let pending: *const u64 = if D {
            core::ptr::null()
        } else {
            h::map_lookup_elem(map(&PENDING), &tid as *const u32 as *const c_void) as *const u64
        };
        if !pending.is_null() {
            let len = read_volatile(pending);
            h::map_delete_elem(map(&PENDING), &tid as *const u32 as *const c_void);
            // A successful mmap/mremap returns the address (never in the
            // top 4095 values, which are errors).
            if ret >= 0 || ret < -4095 {
                mark_range(st, ret as u64, len, RangeMode::Mark);
            }
        }
        // One notification until user space has read the layout: a target
        // that maps in a loop must not flood the ring buffer.
        let first = if D {
            let was = read_volatile(&(*st).notified);
            write_volatile(&raw mut (*st).notified, 1);
            was
        } else {
            atomic_xchg::<u64, { AtomicOrdering::Relaxed }>(&raw mut (*st).notified, 1)
        };
        if first == 0 {
            let ev = LayoutEvent {
                hdr: header(EV_LAYOUT, 0),
                seq,
                ret,
            };
            emit(&ev, false);
        }
    }
    0
}

/// Each layout probe comes as itself and as `<name>_d`, the degraded variant.
macro_rules! layout_probe {
    ($fn:ident, $fn_d:ident, $sec:literal, $moved:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = $sec)]
        pub extern "C" fn $fn(ctx: *const SysExit) -> u32 {
            // SAFETY: the tracepoint context is readable at this offset.
            unsafe { layout_changed::<false>((*ctx).ret, $moved) }
        }

        #[unsafe(no_mangle)]
        #[unsafe(link_section = $sec)]
        pub extern "C" fn $fn_d(ctx: *const SysExit) -> u32 {
            // SAFETY: as above.
            unsafe { layout_changed::<true>((*ctx).ret, $moved) }
        }
    };
}

layout_probe!(
    layout_mmap,
    layout_mmap_d,
    "tracepoint/syscalls/sys_exit_mmap",
    true
);
layout_probe!(
    layout_munmap,
    layout_munmap_d,
    "tracepoint/syscalls/sys_exit_munmap",
    true
);
layout_probe!(
    layout_mremap,
    layout_mremap_d,
    "tracepoint/syscalls/sys_exit_mremap",
    true
);
layout_probe!(
    layout_brk,
    layout_brk_d,
    "tracepoint/syscalls/sys_exit_brk",
    true
);
layout_probe!(
    layout_mprotect,
    layout_mprotect_d,
    "tracepoint/syscalls/sys_exit_mprotect",
    false
);

/// A new program image: the target of `run` (by thread group) or a process
/// `watch` waits for (by name). The latter is held until user space has read
/// its layout, so that not a single trigger can be missed.
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/sched/sched_process_exec")]
pub extern "C" fn on_exec(_ctx: *const c_void) -> u32 {
    exec_seen::<false>()
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/sched/sched_process_exec")]
pub extern "C" fn on_exec_d(_ctx: *const c_void) -> u32 {
    exec_seen::<true>()
}

#[inline(always)]
fn exec_seen<const D: bool>() -> u32 {
    // SAFETY: pointers from map lookups (null checked) or the stack.
    unsafe {
        let cfg: *mut Config = lookup(map(&CONFIG), 0);
        if cfg.is_null() {
            return 0;
        }
        let (tgid, _) = current_tgid();
        let mine =
            read_volatile(&(*cfg).tgid) == tgid && read_volatile(&(*cfg).flags) & F_ACTIVE != 0;
        let mut held = 0;
        if !mine {
            let want = &raw const (*cfg).watch_comm as *const u64;
            let w0 = read_volatile(want);
            if w0 == 0 {
                return 0;
            }
            let mut comm = [0u64; 2];
            h::get_current_comm(comm.as_mut_ptr() as *mut c_void, COMM_LEN as u32);
            if comm[0] != w0 || comm[1] != read_volatile(want.add(1)) {
                return 0;
            }
            h::send_signal(SIGSTOP);
            held = 1;
        } else {
            // The image belongs to the old program: no restore may write it
            // into the new one (user space drops it when it hears of this).
            write_volatile(&mut (*cfg).image_slots, 0);
            write_volatile(&mut (*cfg).nzero, 0);
            write_volatile(&mut (*cfg).zero_pages, 0);
            let st = state();
            if !st.is_null() {
                bump_seq::<D>(st);
                // The bitmaps stay: the kernel already wrote pages of the new
                // image while loading it (before this tracepoint), and later
                // writes to those pages fault no more. Bits of the old image
                // only make the set larger, which is always safe.
                write_volatile(&mut (*st).untracked, 0);
                write_volatile(&mut (*st).growsdown, 0);
            }
        }
        let ev = ExecEvent {
            hdr: header(EV_EXEC, held),
        };
        emit(&ev, false);
    }
    0
}

const CLONE_VM: u64 = 0x100;

/// A new thread of the served process (or a child sharing its memory) will
/// run on `sp`: from now on the region table may hold a live stack, so the
/// layout changes; the exit probe names the thread.
#[inline(always)]
unsafe fn clone_starts<const D: bool>(flags: u64, sp: u64) -> u32 {
    // SAFETY: pointers from map lookups, null checked; stack key and value.
    unsafe {
        if flags & CLONE_VM == 0 || sp == 0 || served().is_null() {
            return 0;
        }
        let st = state();
        if st.is_null() {
            return 0;
        }
        bump_seq::<D>(st);
        let (_, tid) = current_tgid();
        let stack = sp - 1;
        h::map_update_elem(
            map(&CLONE_PENDING),
            &tid as *const u32 as *const c_void,
            &stack as *const u64 as *const c_void,
            0,
        );
    }
    0
}

/// The clone returned `ret` in the parent: the new thread's id.
#[inline(always)]
unsafe fn clone_done<const D: bool>(ret: i64) -> u32 {
    // SAFETY: map values null checked; stack key.
    unsafe {
        let (_, tid) = current_tgid();
        let key = &tid as *const u32 as *const c_void;
        let stack = h::map_lookup_elem(map(&CLONE_PENDING), key) as *const u64;
        if stack.is_null() {
            return 0;
        }
        let sp = read_volatile(stack);
        h::map_delete_elem(map(&CLONE_PENDING), key);
        if ret > 0 && !served().is_null() {
            // The thread exists now: a layout (and thread count) read before
            // this point is stale.
            let st = state();
            if !st.is_null() {
                bump_seq::<D>(st);
            }
            let ev = CloneEvent {
                hdr: header(EV_CLONE, 0),
                stack: sp,
                tid: ret as u64,
            };
            emit(&ev, false);
        }
    }
    0
}

/// Reads `clone3`'s arguments: flags at offset 0, the stack's lowest
/// address at 40 and its size at 48.
#[inline(always)]
unsafe fn clone3_starts<const D: bool>(ctx: *const SysEnter) -> u32 {
    // SAFETY: the user structure is copied to the stack with the helper.
    unsafe {
        if served().is_null() || (*ctx).args[1] < 56 {
            return 0;
        }
        let mut ca = [0u64; 7];
        if h::probe_read_user(
            ca.as_mut_ptr() as *mut c_void,
            56,
            (*ctx).args[0] as *const c_void,
        ) != 0
        {
            return 0;
        }
        let (stack, size) = (ca[5], ca[6]);
        if stack == 0 {
            return 0;
        }
        clone_starts::<D>(ca[0], stack + size)
    }
}

/// The clone probes, and their degraded variants (`D`).
macro_rules! clone_probes {
    ($d:literal, $enter:ident, $enter3:ident, $exit:ident, $exit3:ident) => {
        /// `clone(flags, newsp, ...)`: `newsp` is the top of the new stack.
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_enter_clone")]
        pub extern "C" fn $enter(ctx: *const SysEnter) -> u32 {
            // SAFETY: the tracepoint context is readable at these offsets.
            unsafe { clone_starts::<$d>((*ctx).args[0], (*ctx).args[1]) }
        }

        /// `clone3(&clone_args, size)`.
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_enter_clone3")]
        pub extern "C" fn $enter3(ctx: *const SysEnter) -> u32 {
            // SAFETY: the tracepoint context is readable at these offsets.
            unsafe { clone3_starts::<$d>(ctx) }
        }

        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_exit_clone")]
        pub extern "C" fn $exit(ctx: *const SysExit) -> u32 {
            // SAFETY: the tracepoint context is readable at this offset.
            unsafe { clone_done::<$d>((*ctx).ret) }
        }

        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_exit_clone3")]
        pub extern "C" fn $exit3(ctx: *const SysExit) -> u32 {
            // SAFETY: the tracepoint context is readable at this offset.
            unsafe { clone_done::<$d>((*ctx).ret) }
        }
    };
}

clone_probes!(false, clone_enter, clone3_enter, clone_exit, clone3_exit);
clone_probes!(
    true,
    clone_enter_d,
    clone3_enter_d,
    clone_exit_d,
    clone3_exit_d
);
