//! A checkpoint request: copy every page of the region table that may hold
//! data into the page store, in the target's context, inside its trigger.

use crate::abi::*;
use crate::helpers as h;
use crate::maps::*;
use crate::target::*;
use crate::track::{reset_chunk_cache, untouched_run};
use core::ffi::c_void;
use core::ptr::{null_mut, read_volatile, write_volatile};

#[repr(C)]
struct CopyCtx {
    region: u32,
    nregions: u32,
    page: u64,
    next: u64,
    capacity: u64,
    fails: u64,
    overflow: u64,
    skipped: u64,
    /// Whether tracked regions consult the touched-page bitmaps.
    tracked: u64,
    key: ChunkKey,
}

/// The live region table (slot 0 of `outer`), or null.
#[inline(always)]
pub unsafe fn table(outer: &'static MapDef) -> *const c_void {
    // SAFETY: a one-entry array of maps; null checked by callers.
    unsafe { lookup(map(outer), 0) }
}

/// The row of `table` holding page `*page` of row `*region`, moving on to
/// the next row when that one is done; null at the end. Rows are never
/// empty, so one step always lands in a page.
#[inline(always)]
pub unsafe fn cursor(table: *const c_void, region: &mut u32, page: &mut u64, nregions: u32) -> *mut Region {
    // SAFETY: map values are null checked.
    unsafe {
        if table.is_null() || *region >= nregions {
            return null_mut();
        }
        let r: *mut Region = lookup(table, *region);
        if r.is_null() || *page < (*r).npages {
            return r;
        }
        *region += 1;
        *page = 0;
        if *region >= nregions {
            return null_mut();
        }
        lookup(table, *region)
    }
}

/// One page per iteration over the flattened region table.
extern "C" fn checkpoint_page(_i: u64, ctx: *mut CopyCtx) -> i64 {
    // SAFETY: `ctx` is the caller's stack object; map values are null checked.
    unsafe {
        let c = &mut *ctx;
        let r = cursor(table(&REGIONS_OUTER), &mut c.region, &mut c.page, c.nregions);
        if r.is_null() {
            return 1;
        }
        let addr = (*r).start + c.page * PAGE_SIZE;
        if c.tracked != 0 && (*r).flags & R_TRACKED != 0 {
            // Never written: skip it, or the rest of its chunk.
            let n = untouched_run(&mut c.key, addr, (*r).start + (*r).npages * PAGE_SIZE, true);
            if n > 0 {
                c.page += n;
                c.skipped += n;
                return 0;
            }
        }
        c.page += 1;
        if c.next >= c.capacity {
            c.overflow += 1;
            return 0;
        }
        let slot = c.next as u32;
        let pages: *const c_void = lookup(map(&PAGES_OUTER), 0);
        let addrs: *const c_void = lookup(map(&ADDRS_OUTER), 0);
        if pages.is_null() || addrs.is_null() {
            c.overflow += 1;
            return 1;
        }
        let dst: *mut c_void = lookup(pages, slot);
        let at: *mut u64 = lookup(addrs, slot);
        if dst.is_null() || at.is_null() {
            c.overflow += 1;
            return 1;
        }
        if h::probe_read_user(dst, PAGE_SIZE as u32, addr as *const c_void) == 0 {
            write_volatile(at, addr);
            c.next += 1;
        } else {
            c.fails += 1;
        }
    }
    0
}

/// Runs `cb` over `ctx` for up to one iteration per page of `pages` and one
/// more, in which the cursor finds the end (capped at what one `bpf_loop`
/// allows); false if the kernel refused to run it.
#[inline(always)]
pub unsafe fn run_loop(pages: u64, cb: *const c_void, ctx: *mut c_void) -> bool {
    let n = if pages >= MAX_LOOPS { MAX_LOOPS } else { pages + 1 };
    // SAFETY: `cb` is a callback of this object and `ctx` the caller's stack
    // object it expects.
    unsafe { h::bpf_loop(n as u32, cb, ctx, 0) >= 0 }
}

#[inline(never)]
pub unsafe fn checkpoint(cfg: *mut Config) {
    // SAFETY: `cfg` is a live map value; other pointers are null checked.
    unsafe {
        let st = state();
        if st.is_null() {
            return;
        }
        let t0 = h::ktime_get_ns();
        let (tgid, _) = current_tgid();
        let version = read_volatile(&(*cfg).version);
        let applied = read_volatile(&(*cfg).applied_seq);
        let z = read_volatile(&(*st).opaque_zero);
        let mut c = CopyCtx {
            region: z as u32,
            nregions: read_volatile(&(*cfg).nregions),
            page: z,
            next: z,
            capacity: read_volatile(&(*cfg).capacity),
            fails: z,
            overflow: z,
            skipped: z,
            tracked: tracking(cfg, st),
            key: ChunkKey { tgid, image: read_volatile(&(*st).exec_gen) as u32, chunk: z },
        };
        let mut stale = 0;
        // A growsdown mapping may have grown by faults since the table was
        // read: only user space, with the target held, can see how far.
        if version & 1 != 0 || applied != read_volatile(&(*st).layout_seq) || read_volatile(&(*st).growsdown) != 0 {
            stale = STALE_LAYOUT;
        } else if c.nregions > 0 {
            reset_chunk_cache();
            let total = read_volatile(&(*cfg).total_pages);
            let ran = run_loop(total, checkpoint_page as *const c_void, &mut c as *mut CopyCtx as *mut c_void);
            // Out of iterations (or refused) before the end of the table:
            // the pages saved so far are good, user space adds the rest.
            if !ran || c.region < c.nregions {
                c.overflow += 1;
            }
            // Seqlock: user space makes `version` odd before it touches the
            // config or a table, and even again after.
            if read_volatile(&(*cfg).version) != version {
                stale = STALE_LAYOUT;
            }
        }
        if c.overflow != 0 && stale == 0 {
            stale = STALE_OVERFLOW;
        }
        let held = (stale != 0 || c.fails != 0) as u32;
        if held != 0 {
            h::send_signal(SIGSTOP);
        }
        let ev = CheckpointEvent {
            hdr: header(EV_CHECKPOINT, held),
            table_seq: applied,
            version,
            saved: c.next,
            unreadable: c.fails,
            skipped: c.skipped,
            stale,
            ns: h::ktime_get_ns() - t0,
        };
        emit(&ev, true);
    }
}
