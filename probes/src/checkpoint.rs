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
pub unsafe fn cursor(
    table: *const c_void,
    region: &mut u32,
    page: &mut u64,
    nregions: u32,
) -> *mut Region {
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
        let r = cursor(
            table(&REGIONS_OUTER),
            &mut c.region,
            &mut c.page,
            c.nregions,
        );
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
    let n = if pages >= MAX_LOOPS {
        MAX_LOOPS
    } else {
        pages + 1
    };
    // SAFETY: `cb` is a callback of this object and `ctx` the caller's stack
    // object it expects.
    unsafe { h::bpf_loop(n as u32, cb, ctx, 0) >= 0 }
}

#[repr(C)]
struct DirtyCtx {
    /// `DIRTY` entries to copy, and free slots to copy them into.
    n: u64,
    nfree: u64,
    done: u64,
    fails: u64,
    overflow: u64,
}

/// Copies the `i`-th dirtied page into the `i`-th free slot from the top of
/// `FREE` (user space pushes freed slots there).
extern "C" fn copy_dirty(i: u64, ctx: *mut DirtyCtx) -> i64 {
    // SAFETY: `ctx` is the caller's stack object; map values are null checked.
    unsafe {
        let c = &mut *ctx;
        if i >= c.n {
            return 1;
        }
        if i >= c.nfree {
            c.overflow += 1;
            return 1;
        }
        let addr: *const u64 = lookup(map(&DIRTY), i as u32);
        let slot: *const u64 = lookup(map(&FREE), (c.nfree - 1 - i) as u32);
        let pages: *const c_void = lookup(map(&PAGES_OUTER), 0);
        let addrs: *const c_void = lookup(map(&ADDRS_OUTER), 0);
        if addr.is_null() || slot.is_null() || pages.is_null() || addrs.is_null() {
            c.overflow += 1;
            return 1;
        }
        let (addr, slot) = (read_volatile(addr), read_volatile(slot) as u32);
        let dst: *mut c_void = lookup(pages, slot);
        let at: *mut u64 = lookup(addrs, slot);
        if dst.is_null() || at.is_null() {
            c.overflow += 1;
            return 1;
        }
        if h::probe_read_user(dst, PAGE_SIZE as u32, addr as *const c_void) == 0 {
            write_volatile(at, addr);
        } else {
            write_volatile(at, addr | ADDR_FAILED);
            c.fails += 1;
        }
        c.done += 1;
    }
    0
}

/// The pages dirtied since the last re-arm are known, listed or (`scan`)
/// found by the tracker, with the image still valid for the rest: only
/// they need copying.
#[inline(always)]
unsafe fn incremental(cfg: *const Config, st: *const State, version: u64) -> bool {
    // SAFETY: live map values.
    unsafe {
        read_volatile(&(*cfg).flags) & F_INCREMENTAL != 0
            && version & 1 == 0
            && read_volatile(&(*st).dirty_spans) == 0
            && read_volatile(&(*st).growsdown) == 0
            && read_volatile(&(*st).gup_sticky) == 0
            && read_volatile(&(*st).rescan) == 0
            && read_volatile(&(*st).untracked) == 0
            && read_volatile(&(*cfg).image_seq) == read_volatile(&(*st).layout_seq)
    }
}

/// Whether BPF may copy the listed pages before user space re-arms them:
/// the list is the whole dirty set, and nothing but this thread, inside
/// its trigger, can write them meanwhile (one thread, no write from
/// another process begun and unseen).
#[inline(always)]
unsafe fn copy_now(cfg: *const Config, st: *const State, gup: u64) -> bool {
    // SAFETY: live map values.
    unsafe {
        read_volatile(&(*cfg).flags) & F_SINGLE_THREAD != 0
            && read_volatile(&(*st).scan) == 0
            && read_volatile(&(*st).ndirty) <= DIRTY_MAX as u64
            && gup == read_volatile(&(*st).gup_acked)
            && read_volatile(&(*st).gup_inflight) == 0
    }
}

#[inline(never)]
unsafe fn checkpoint_dirty(cfg: *mut Config, st: *const State, version: u64, t0: u64) {
    // SAFETY: live map values.
    unsafe {
        let z = read_volatile(&(*st).opaque_zero);
        let gup = read_volatile(&(*st).gup);
        let mut c = DirtyCtx {
            n: read_volatile(&(*st).ndirty),
            nfree: read_volatile(&(*cfg).nfree),
            done: z,
            fails: z,
            overflow: z,
        };
        let mut stale = 0;
        if copy_now(cfg, st, gup) {
            let ran = run_loop(
                c.n,
                copy_dirty as *const c_void,
                &mut c as *mut DirtyCtx as *mut c_void,
            );
            stale = if read_volatile(&(*cfg).version) != version {
                STALE_LAYOUT
            } else if !ran || c.overflow != 0 || c.done < c.n {
                STALE_OVERFLOW
            } else {
                0
            };
        }
        // Always held: user space re-arms what was copied before the target
        // can write it again (and copies it all itself if BPF did not).
        let held = hold(cfg);
        let ev = CheckpointEvent {
            hdr: header(EV_CHECKPOINT, held),
            table_seq: read_volatile(&(*cfg).applied_seq),
            version,
            incremental: 1,
            saved: c.done,
            unreadable: c.fails,
            skipped: z,
            stale,
            ns: h::ktime_get_ns() - t0,
            gup,
        };
        emit(&ev, true);
    }
}

/// Inlined into the trigger, so that the incremental copy and the full walk
/// are each one call deep: nested, their frames with the trigger's (and
/// the loop callback's) exceed the 512 bytes of combined stack that kernels
/// without private BPF stacks (before 6.13) allow.
#[inline(always)]
pub unsafe fn checkpoint(cfg: *mut Config) {
    // SAFETY: `cfg` is a live map value; other pointers are null checked.
    unsafe {
        let st = state();
        if st.is_null() {
            return;
        }
        let t0 = h::ktime_get_ns();
        let version = read_volatile(&(*cfg).version);
        if incremental(cfg, st, version) {
            checkpoint_dirty(cfg, st, version, t0);
        } else {
            checkpoint_full(cfg, st, version, t0);
        }
    }
}

#[inline(never)]
unsafe fn checkpoint_full(cfg: *mut Config, st: *const State, version: u64, t0: u64) {
    // SAFETY: `cfg` and `st` are live map values; other pointers are null
    // checked.
    unsafe {
        let (tgid, _) = current_tgid();
        let applied = read_volatile(&(*cfg).applied_seq);
        let z = read_volatile(&(*st).opaque_zero);
        let gup = read_volatile(&(*st).gup);
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
            key: ChunkKey {
                tgid,
                image: read_volatile(&(*st).exec_gen) as u32,
                chunk: z,
            },
        };
        let mut stale = 0;
        // A growsdown mapping may have grown by faults since the table was
        // read: only user space, with the target held, can see how far.
        if version & 1 != 0
            || applied != read_volatile(&(*st).layout_seq)
            || read_volatile(&(*st).growsdown) != 0
        {
            stale = STALE_LAYOUT;
        } else if c.nregions > 0 {
            reset_chunk_cache();
            let total = read_volatile(&(*cfg).total_pages);
            let ran = run_loop(
                total,
                checkpoint_page as *const c_void,
                &mut c as *mut CopyCtx as *mut c_void,
            );
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
        // Armed tracking: user space re-arms what was copied, target held.
        let armed = read_volatile(&(*cfg).flags) & F_INCREMENTAL != 0;
        // Pages written unseen are not in the bitmaps: user space scans.
        let held = if stale != 0 || c.fails != 0 || armed || foreign_writes(st) {
            hold(cfg)
        } else {
            0
        };
        let ev = CheckpointEvent {
            hdr: header(EV_CHECKPOINT, held),
            table_seq: applied,
            version,
            incremental: 0,
            saved: c.next,
            unreadable: c.fails,
            skipped: c.skipped,
            stale,
            ns: h::ktime_get_ns() - t0,
            gup,
        };
        emit(&ev, true);
    }
}
