//! The degraded trigger programs, for kernels without `bpf_loop` (5.17),
//! BPF callbacks (5.13) or the fetching atomics (5.12): they only recognise
//! a request, hold the target and tell user space, which then copies or
//! writes every page itself (the same path as a request whose region table
//! was stale). No loop helper, no callback, no atomic but the plain add
//! every kernel has.

use crate::abi::*;
use crate::helpers as h;
use crate::target::*;
use core::ptr::read_volatile;

/// A checkpoint request: held, with nothing saved and the table "stale",
/// so that user space takes the whole image at this instant.
#[inline(never)]
pub unsafe fn checkpoint(cfg: *mut Config) {
    // SAFETY: `cfg` is a live map value; STATE is null checked.
    unsafe {
        let st = state();
        if st.is_null() {
            return;
        }
        let t0 = h::ktime_get_ns();
        let ev = CheckpointEvent {
            table_seq: read_volatile(&(*cfg).applied_seq),
            version: read_volatile(&(*cfg).version),
            incremental: 0,
            saved: 0,
            unreadable: 0,
            skipped: 0,
            stale: STALE_LAYOUT,
            gup: read_volatile(&(*st).gup),
            hdr: header(EV_CHECKPOINT, hold(cfg)),
            ns: h::ktime_get_ns() - t0,
        };
        emit(&ev, true);
    }
}

/// A restore request: held and "partial", so that user space writes every
/// saved page and scans the blank ranges.
#[inline(never)]
pub unsafe fn restore(cfg: *mut Config) {
    // SAFETY: `cfg` is a live map value.
    unsafe {
        let t0 = h::ktime_get_ns();
        let ev = RestoreEvent {
            hdr: header(EV_RESTORE, hold(cfg)),
            written: 0,
            write_failed: 0,
            zeroed: 0,
            zero_failed: 0,
            zero_todo: u64::MAX,
            ns: h::ktime_get_ns() - t0,
            partial: 1,
            since_cleared: 0,
        };
        emit(&ev, true);
    }
}
