//! A restore request: with the write helper, write every saved page back
//! and zero the pages absent at the checkpoint that were written since;
//! without it, list those pages and hold the target for user space.
//! Whatever the probe cannot do exactly, it leaves to user space, with the
//! target held at this same point.

use crate::abi::*;
use crate::checkpoint::{cursor, run_loop, table};
use crate::helpers as h;
use crate::maps::*;
use crate::target::*;
use crate::track::{reset_chunk_cache, untouched_run};
use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_and};
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
    /// Saved-page pass: the slots of the image.
    slots: u64,
    /// Saved-page pass: only pages changed since the last re-arm (tracking
    /// armed); the others still hold what the image holds.
    changed_only: u64,
}

extern "C" fn restore_page(i: u64, ctx: *mut WriteCtx) -> i64 {
    // SAFETY: `ctx` is the caller's stack object; map values are null checked.
    unsafe {
        let c = &mut *ctx;
        if i >= c.slots {
            return 1;
        }
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
        if addr == 0 {
            // A free slot of an incremental image.
            return 0;
        }
        if c.changed_only != 0 && untouched_run(&mut c.key, addr, addr + PAGE_SIZE, false) > 0 {
            write_volatile(at, addr);
            return 0;
        }
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

/// One page of the zero ranges (pages absent, or untouched file pages, at
/// the checkpoint). `W`: write zeros into it if it was written since;
/// otherwise only record it in `ZERO_TODO` for user space (the kernel
/// refuses the write helper). Untouched file pages written since can only
/// be put back from user space, which reads the file.
extern "C" fn zero_page<const W: bool>(_i: u64, ctx: *mut WriteCtx) -> i64 {
    // SAFETY: as in restore_page.
    unsafe {
        let c = &mut *ctx;
        let r = cursor(table(&ZERO_OUTER), &mut c.region, &mut c.page, c.nregions);
        if r.is_null() {
            return 1;
        }
        let addr = (*r).start + c.page * PAGE_SIZE;
        if c.tracked != 0 {
            let n = untouched_run(
                &mut c.key,
                addr,
                (*r).start + (*r).npages * PAGE_SIZE,
                false,
            );
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
            if (*r).flags & R_FILE == 0
                && h::probe_write_user(addr as *mut c_void, zero, PAGE_SIZE as u32) == 0
            {
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

/// What the probe did; every field as in `RestoreEvent`.
struct Done {
    held: u32,
    partial: u64,
    todo: u64,
}

/// The write path: saved pages, then the zero ranges' pages written since.
#[inline(always)]
unsafe fn write_back(cfg: *mut Config, pages: &mut WriteCtx, zeros: &mut WriteCtx) -> Done {
    // SAFETY: `cfg` is a live map value.
    unsafe {
        let slots = pages.slots;
        let zero_pages = read_volatile(&(*cfg).zero_pages);
        if slots >= MAX_LOOPS {
            return Done {
                held: 1,
                partial: 1,
                todo: u64::MAX,
            };
        }
        let mut held = 0;
        reset_chunk_cache();
        if slots > 0
            && !run_loop(
                slots,
                restore_page as *const c_void,
                pages as *mut WriteCtx as *mut c_void,
            )
        {
            return Done {
                held: 1,
                partial: 1,
                todo: u64::MAX,
            };
        }
        let mut todo = 0;
        if zeros.nregions > 0 {
            if zeros.tracked == 0 {
                // Trying every page of the zero ranges here would mostly
                // fail on pages that are still absent; pagemap tells user
                // space which ones exist.
                todo = u64::MAX;
            } else {
                reset_chunk_cache();
                let ran = run_loop(
                    zero_pages,
                    zero_page::<true> as *const c_void,
                    zeros as *mut WriteCtx as *mut c_void,
                );
                if !ran || zeros.region < zeros.nregions {
                    todo = u64::MAX;
                }
            }
        }
        // A page BPF could not write may hold anything (read-only now,
        // copy-on-write after a fork, swapped out): user space looks.
        if pages.fails != 0 || zeros.fails != 0 || todo != 0 {
            held = 1;
            if zeros.fails != 0 {
                todo = u64::MAX;
            }
        }
        Done {
            held,
            partial: 0,
            todo,
        }
    }
}

/// Without the write path: list the zero ranges' pages written since.
#[inline(always)]
unsafe fn list_zero_todo(cfg: *mut Config, zeros: &mut WriteCtx) -> u64 {
    // SAFETY: `cfg` is a live map value.
    unsafe {
        if zeros.nregions == 0 {
            return 0;
        }
        if zeros.tracked == 0 {
            return u64::MAX;
        }
        reset_chunk_cache();
        let zero_pages = read_volatile(&(*cfg).zero_pages);
        let ran = run_loop(
            zero_pages,
            zero_page::<false> as *const c_void,
            zeros as *mut WriteCtx as *mut c_void,
        );
        if !ran || zeros.fails != 0 || zeros.region < zeros.nregions {
            return u64::MAX;
        }
        let n = zeros.n;
        zeros.n = 0;
        n
    }
}

#[repr(C)]
struct SinceCtx {
    n: u64,
    key: ChunkKey,
}

/// Clears the `since` bit of the `i`-th `DIRTY` page.
extern "C" fn clear_since(i: u64, ctx: *mut SinceCtx) -> i64 {
    // SAFETY: `ctx` is the caller's stack object; map values are null
    // checked; the word index is masked to the value's 8 words.
    unsafe {
        let c = &mut *ctx;
        if i >= c.n {
            return 1;
        }
        let addr: *const u64 = lookup(map(&DIRTY), i as u32);
        if addr.is_null() {
            return 1;
        }
        let addr = read_volatile(addr);
        c.key.chunk = addr >> CHUNK_SHIFT;
        let v = h::map_lookup_elem(map(&TOUCHED), &c.key as *const ChunkKey as *const c_void)
            as *mut Touched;
        if !v.is_null() {
            let bit = (addr / PAGE_SIZE) & (CHUNK_PAGES - 1);
            atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(
                (&raw mut (*v).since as *mut u64).add(((bit >> 6) & 7) as usize),
                !(1u64 << (bit & 63)),
            );
        }
    }
    0
}

/// Clears the `since` bits of the listed pages, which user space is about
/// to write back and re-arm (a system call per 2 MiB chunk there); returns
/// how many entries, from the first. Not when the list overflowed: user
/// space then clears everything.
#[inline(always)]
unsafe fn clear_listed_since(st: *const State, key: ChunkKey) -> u64 {
    // SAFETY: `st` is a live map value; the callback gets our stack object.
    unsafe {
        let n = read_volatile(&(*st).ndirty);
        if n == 0 || n > DIRTY_MAX as u64 || read_volatile(&(*st).scan) != 0 {
            return 0;
        }
        let mut c = SinceCtx { n, key };
        let cb = clear_since as *const c_void;
        if h::bpf_loop(n as u32, cb, &mut c as *mut SinceCtx as *mut c_void, 0) < 0 {
            return 0;
        }
        n
    }
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
        let version = read_volatile(&(*cfg).version);
        let flags = read_volatile(&(*cfg).flags);
        let z = read_volatile(&(*st).opaque_zero);
        let tracked = tracking(cfg, st);
        let key = ChunkKey {
            tgid,
            image: read_volatile(&(*st).exec_gen) as u32,
            chunk: z,
        };
        let slots = read_volatile(&(*cfg).image_slots);
        // With tracking armed, only the dirty set; unless some write may have
        // bypassed the faults (then the target is held: only user space can
        // find such pages).
        let incremental = flags & F_INCREMENTAL != 0;
        let foreign = foreign_writes(st);
        // A huge-page fault or an overflowing list (`scan`) needs no hold
        // here: the `since` bits then hold whole chunks, more than was
        // written, and BPF writes those back (the next checkpoint scans).
        let unseen = incremental && foreign;
        // A re-arm in doubt or untracked regions: the `since` bits may miss
        // pages, so the write helper puts back every saved page (user space
        // scans at the next held request).
        let trusted = read_volatile(&(*st).rescan) == 0 && read_volatile(&(*st).untracked) == 0;
        let changed_only = (incremental && trusted) as u64;
        let mut pages = WriteCtx {
            n: z,
            fails: z,
            region: z as u32,
            nregions: z as u32,
            page: z,
            tracked,
            key,
            slots,
            changed_only,
        };
        let nzero = read_volatile(&(*cfg).nzero);
        let mut zeros = WriteCtx {
            n: z,
            fails: z,
            region: z as u32,
            nregions: nzero,
            page: z,
            tracked,
            key,
            slots: z,
            changed_only: z,
        };
        // The image belongs to another layout (a mapping or a thread came or
        // went), or the config is being rewritten: writing blindly could
        // land in memory that is no longer the image's.
        let same_layout = read_volatile(&(*cfg).image_seq) == read_volatile(&(*st).layout_seq);
        // Without tracking, pages written unseen may be anywhere, blank ones
        // too: user space writes everything and scans the blanks.
        let mut done = if version & 1 != 0
            || !same_layout
            || flags & F_HOLD_RESTORE != 0
            || (foreign && !incremental)
        {
            Done {
                held: 1,
                partial: 1,
                todo: u64::MAX,
            }
        } else if unseen {
            // User space finds the pages so written, and restores the
            // dirty set with them.
            Done {
                held: 1,
                partial: 0,
                todo: u64::MAX,
            }
        } else if W && flags & F_BPF_WRITE != 0 {
            write_back(cfg, &mut pages, &mut zeros)
        } else if incremental {
            // User space restores the dirty set, or everything.
            Done {
                held: 1,
                partial: 0,
                todo: u64::MAX,
            }
        } else {
            Done {
                held: 1,
                partial: 0,
                todo: list_zero_todo(cfg, &mut zeros),
            }
        };
        if read_volatile(&(*cfg).version) != version {
            done = Done {
                held: 1,
                partial: 1,
                todo: u64::MAX,
            };
        }
        // Where BPF never writes back, the dirty set user space restores
        // starts with the listed pages.
        let since_cleared = if done.held != 0
            && done.partial == 0
            && incremental
            && !(W && flags & F_BPF_WRITE != 0)
        {
            clear_listed_since(st, key)
        } else {
            0
        };
        let held = if done.held != 0 { hold(cfg) } else { 0 };
        let ev = RestoreEvent {
            hdr: header(EV_RESTORE, held),
            written: pages.n,
            write_failed: pages.fails,
            zeroed: zeros.n,
            zero_failed: zeros.fails,
            zero_todo: done.todo,
            ns: h::ktime_get_ns() - t0,
            partial: done.partial,
            since_cleared,
        };
        emit(&ev, true);
    }
}
