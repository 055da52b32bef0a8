//! A restore request: with the write helper, write every saved page back
//! and zero the pages absent at the checkpoint that were written since;
//! without it, list those pages and hold the target for user space.

use crate::abi::*;
use crate::checkpoint::cursor;
use crate::helpers as h;
use crate::maps::*;
use crate::target::*;
use crate::track::{reset_chunk_cache, untouched_run};
use core::ffi::c_void;
use core::ptr::{read_volatile, write_volatile};

#[repr(C)]
struct WriteCtx {
    n: u64,
    fails: u64,
    region: u32,
    nregions: u32,
    page: u64,
    /// Zero pass: consult the `since` bitmaps (else try every page).
    tracked: u64,
    key: ChunkKey,
}

extern "C" fn restore_page(i: u64, ctx: *mut WriteCtx) -> i64 {
    // SAFETY: `ctx` is the caller's stack object; map values are null checked.
    unsafe {
        let c = &mut *ctx;
        let pages: *const c_void = lookup(map(&PAGES_OUTER), 0);
        let addrs: *const c_void = lookup(map(&ADDRS_OUTER), 0);
        if pages.is_null() || addrs.is_null() {
            return 1;
        }
        let src: *const c_void = lookup(pages, i as u32);
        let at: *mut u64 = lookup(addrs, i as u32);
        if src.is_null() || at.is_null() {
            return 1;
        }
        let addr = read_volatile(at) & !ADDR_FAILED;
        if h::probe_write_user(addr as *mut c_void, src, PAGE_SIZE as u32) == 0 {
            write_volatile(at, addr);
            c.n += 1;
        } else {
            // Not present (zapped), read-only, or gone: user space finishes it.
            write_volatile(at, addr | ADDR_FAILED);
            c.fails += 1;
        }
    }
    0
}

/// One page of the zero ranges (pages absent at the checkpoint). `W`: write
/// zeros into it if it was written since; otherwise only record it in
/// `ZERO_TODO` for user space (the kernel refuses the write helper).
extern "C" fn zero_page<const W: bool>(_i: u64, ctx: *mut WriteCtx) -> i64 {
    // SAFETY: as in restore_page.
    unsafe {
        let c = &mut *ctx;
        let r = cursor(map(&ZERO_RANGES), &mut c.region, &mut c.page, c.nregions);
        if r.is_null() {
            return 1;
        }
        let addr = (*r).start + c.page * PAGE_SIZE;
        if c.tracked != 0 {
            let n = untouched_run(&mut c.key, addr, (*r).start + (*r).npages * PAGE_SIZE, false);
            if n > 0 {
                c.page += n;
                return 0;
            }
        }
        c.page += 1;
        if W {
            let zero: *const c_void = lookup(map(&ZERO_PAGE), 0);
            if zero.is_null() {
                return 1;
            }
            // A page that is still not present cannot be written without a
            // fault, and reads as zero anyway: only count it.
            if h::probe_write_user(addr as *mut c_void, zero, PAGE_SIZE as u32) == 0 {
                c.n += 1;
            } else {
                c.fails += 1;
            }
        } else {
            let slot: *mut u64 = lookup(map(&ZERO_TODO), c.n as u32);
            if slot.is_null() {
                c.fails += 1;
                return 1;
            }
            write_volatile(slot, addr);
            c.n += 1;
        }
    }
    0
}

#[inline(never)]
pub unsafe fn restore<const W: bool>(cfg: *mut Config) {
    // SAFETY: `cfg` is a live map value; other pointers are null checked.
    unsafe {
        let st = state();
        if st.is_null() {
            return;
        }
        let t0 = h::ktime_get_ns();
        let (tgid, _) = current_tgid();
        let flags = read_volatile(&(*cfg).flags);
        let z = read_volatile(&(*st).opaque_zero);
        let tracked = tracking(cfg, st);
        let key = ChunkKey { tgid, image: read_volatile(&(*st).exec_gen) as u32, chunk: z };
        let mut pages = WriteCtx { n: z, fails: z, region: z as u32, nregions: z as u32, page: z, tracked, key };
        let nzero = read_volatile(&(*cfg).nzero);
        let mut zeros = WriteCtx { n: z, fails: z, region: z as u32, nregions: nzero, page: z, tracked, key };
        let zero_pages = read_volatile(&(*cfg).zero_pages);
        let mut held = 1;
        // ZERO_TODO entries for user space, or MAX: scan the zero ranges.
        let mut todo = z;
        if W && flags & F_BPF_WRITE != 0 {
            let slots = read_volatile(&(*cfg).image_slots);
            if slots > 0 {
                h::bpf_loop(slots as u32, restore_page as *const c_void, &mut pages as *mut WriteCtx as *mut c_void, 0);
            }
            if nzero > 0 {
                reset_chunk_cache();
                h::bpf_loop(zero_pages as u32, zero_page::<true> as *const c_void, &mut zeros as *mut WriteCtx as *mut c_void, 0);
            }
            let verify_zero = flags & F_VERIFY_ZERO != 0 && zeros.fails != 0;
            held = (pages.fails != 0 || verify_zero || flags & F_HOLD_RESTORE != 0) as u32;
        } else if nzero > 0 {
            if tracked != 0 {
                reset_chunk_cache();
                h::bpf_loop(zero_pages as u32, zero_page::<false> as *const c_void, &mut zeros as *mut WriteCtx as *mut c_void, 0);
                todo = if zeros.fails != 0 { u64::MAX } else { zeros.n };
                zeros.n = z;
            } else {
                todo = u64::MAX;
            }
        }
        if held != 0 {
            h::send_signal(SIGSTOP);
        }
        let ev = RestoreEvent {
            hdr: header(EV_RESTORE, held),
            written: pages.n,
            write_failed: pages.fails,
            zeroed: zeros.n,
            zero_failed: zeros.fails,
            zero_todo: todo,
            ns: h::ktime_get_ns() - t0,
        };
        emit(&ev, true);
    }
}
