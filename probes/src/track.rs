//! Which pages of the target may hold data: bitmaps of written pages per
//! 2 MiB chunk (`TOUCHED`), fed by the target's write faults and by the
//! calls that fill pages without faulting; read by the checkpoint and
//! restore loops.

use crate::abi::*;
use crate::helpers as h;
use crate::maps::*;
use crate::target::*;
use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_and, atomic_or, atomic_xadd};
use core::ptr::{read_volatile, write_volatile};

/// Forgets the cached chunk (at the start of each loop).
#[inline(always)]
pub unsafe fn reset_chunk_cache() {
    // SAFETY: the map value is null checked.
    unsafe {
        let c: *mut ChunkCache = lookup(map(&CHUNK_CACHE), 0);
        if !c.is_null() {
            write_volatile(&mut (*c).chunk, u64::MAX);
        }
    }
}

/// How many pages from `addr` (below `end`) can be skipped: the rest of the
/// chunk if it has no bitmap, 1 if this page's bit is clear, else 0. At a
/// checkpoint the `ever` bits decide and the chunk's `since` bits are
/// cleared when the loop enters it; at a restore the `since` bits decide.
#[inline(always)]
pub unsafe fn untouched_run(key: &mut ChunkKey, addr: u64, end: u64, checkpoint: bool) -> u64 {
    // SAFETY: `key` is on the stack; map values are null checked and word
    // indices are masked to their 8 words.
    unsafe {
        let cache: *mut ChunkCache = lookup(map(&CHUNK_CACHE), 0);
        if cache.is_null() {
            return 0;
        }
        let chunk = addr >> CHUNK_SHIFT;
        if read_volatile(&(*cache).chunk) != chunk {
            key.chunk = chunk;
            let v: *mut Touched =
                h::map_lookup_elem(map(&TOUCHED), key as *const ChunkKey as *const c_void)
                    as *mut Touched;
            if v.is_null() {
                let chunk_end = (chunk + 1) << CHUNK_SHIFT;
                let stop = if chunk_end < end { chunk_end } else { end };
                return (stop - addr) / PAGE_SIZE;
            }
            let mut w = 0usize;
            while w < 8 {
                let since = (&raw mut (*v).since as *mut u64).add(w);
                let word = if checkpoint {
                    atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(since, 0);
                    read_volatile((&raw const (*v).ever as *const u64).add(w))
                } else {
                    read_volatile(since)
                };
                write_volatile((&raw mut (*cache).words as *mut u64).add(w), word);
                w += 1;
            }
            write_volatile(&mut (*cache).chunk, chunk);
        }
        let bit = (addr / PAGE_SIZE) & (CHUNK_PAGES - 1);
        let word =
            read_volatile((&raw const (*cache).words as *const u64).add(((bit >> 6) & 7) as usize));
        (word & (1u64 << (bit & 63)) == 0) as u64
    }
}

/// The bitmaps of `key`'s chunk, created empty if missing.
#[inline(always)]
pub unsafe fn chunk_bits(key: &ChunkKey) -> *mut Touched {
    // SAFETY: `key` is on the stack; a NOEXIST insert that loses a race is
    // followed by a lookup of the winner's entry.
    unsafe {
        let k = key as *const ChunkKey as *const c_void;
        let v = h::map_lookup_elem(map(&TOUCHED), k) as *mut Touched;
        if !v.is_null() {
            return v;
        }
        let z = Touched {
            ever: [0; 8],
            since: [0; 8],
        };
        h::map_update_elem(map(&TOUCHED), k, &z as *const Touched as *const c_void, 1);
        let v = h::map_lookup_elem(map(&TOUCHED), k) as *mut Touched;
        if v.is_null() {
            // The map is full: a write we cannot record would be lost, so
            // stop trusting the bitmaps (every page is tried from now on).
            let st = state();
            if !st.is_null() {
                write_volatile(&mut (*st).untracked, 1);
            }
        }
        v
    }
}

#[inline(always)]
pub unsafe fn chunk_key(st: *const State, addr: u64) -> ChunkKey {
    let (tgid, _) = current_tgid();
    // SAFETY: live map value.
    let image = unsafe { read_volatile(&(*st).exec_gen) } as u32;
    ChunkKey {
        tgid,
        image,
        chunk: addr >> CHUNK_SHIFT,
    }
}

/// The bits of word `w` (pages `64 w .. 64 w + 64` of a chunk) that lie in
/// pages `[first, end)` of the chunk.
#[inline(always)]
fn span_mask(w: u64, first: u64, end: u64) -> u64 {
    let (base, top) = (w * 64, w * 64 + 64);
    if end <= base || first >= top {
        return 0;
    }
    let lo = if first > base { first - base } else { 0 };
    let hi = if end < top { end - base } else { 64 };
    if hi - lo >= 64 {
        !0
    } else {
        ((1u64 << (hi - lo)) - 1) << lo
    }
}

/// Sets the `ever` and `since` bits of pages `[first, end)` (0..512) of
/// the chunk holding `addr`; false if the chunk has no bitmaps.
#[inline(always)]
unsafe fn set_span(st: *const State, addr: u64, first: u64, end: u64) -> bool {
    // SAFETY: the map value is null checked; word indices are masked.
    unsafe {
        let key = chunk_key(st, addr);
        let v = chunk_bits(&key);
        if v.is_null() {
            return false;
        }
        let mut w = 0usize;
        while w < 8 {
            let m = span_mask(w as u64, first, end);
            if m != 0 {
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                    (&raw mut (*v).ever as *mut u64).add(w),
                    m,
                );
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                    (&raw mut (*v).since as *mut u64).add(w),
                    m,
                );
            }
            w += 1;
        }
        true
    }
}

/// Marks pages `[first, end)` (0..512) of the chunk holding `addr` written
/// without a write fault: a change the `DIRTY` list does not show, nor
/// necessarily the tracker (a page populated or dropped has no written bit
/// to scan for).
#[inline(always)]
pub unsafe fn mark_span(st: *const State, addr: u64, first: u64, end: u64) {
    // SAFETY: `st` is a live map value.
    unsafe {
        if set_span(st, addr, first, end) {
            write_volatile(&raw mut (*(st as *mut State)).dirty_spans, 1);
        }
    }
}

/// Marks the page at `addr` written; the first time since the last re-arm
/// it also goes on the `DIRTY` list.
#[inline(always)]
pub unsafe fn mark_page(st: *const State, addr: u64) {
    // SAFETY: map values are null checked; the word index is masked.
    unsafe {
        let key = chunk_key(st, addr);
        let v = chunk_bits(&key);
        if v.is_null() {
            return;
        }
        let bit = (addr / PAGE_SIZE) & (CHUNK_PAGES - 1);
        let w = ((bit >> 6) & 7) as usize;
        let m = 1u64 << (bit & 63);
        atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
            (&raw mut (*v).ever as *mut u64).add(w),
            m,
        );
        // The fetching form (not `Relaxed`, which LLVM's BPF backend turns
        // into the non-fetching one): whether this fault set the bit.
        let old = atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(
            (&raw mut (*v).since as *mut u64).add(w),
            m,
        );
        if old & m != 0 {
            return;
        }
        let st = st as *mut State;
        let i = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*st).ndirty, 1);
        let slot: *mut u64 = lookup(map(&DIRTY), i as u32);
        if i >= DIRTY_MAX as u64 || slot.is_null() {
            // Every page written since the re-arm is the tracker's to find.
            write_volatile(&raw mut (*st).scan, 1);
            return;
        }
        write_volatile(slot, addr & !(PAGE_SIZE - 1));
    }
}

/// Marks the page of a write fault written, or its whole chunk (`all`:
/// the fault may have mapped a huge page, writable all over). The writes
/// that follow without faults are still writes the tracker records (a
/// soft-dirty or unprotected huge page shows all its pages written): the
/// list stays good as far as it goes, and user space scans for the rest.
#[inline(always)]
pub unsafe fn mark(st: *const State, addr: u64, all: bool) {
    // SAFETY: as in set_span / mark_page.
    unsafe {
        if all {
            mark_page(st, addr);
            if set_span(st, addr, 0, CHUNK_PAGES) {
                write_volatile(&raw mut (*(st as *mut State)).scan, 1);
            }
        } else {
            mark_page(st, addr);
        }
    }
}

/// Pages `[first, end)` of the chunk holding `addr` may have changed without
/// a fault: changed since, and (as they may still hold data) written.
#[inline(always)]
unsafe fn changed_span(st: *const State, addr: u64, first: u64, end: u64) {
    // SAFETY: as in mark_span.
    unsafe {
        let key = chunk_key(st, addr);
        if h::map_lookup_elem(map(&TOUCHED), &key as *const ChunkKey as *const c_void).is_null() {
            // Never written: nothing to lose.
            return;
        }
        mark_span(st, addr, first, end);
    }
}

/// Pages `[first, end)` of the chunk holding `addr` were dropped: they hold
/// nothing now (not written since) but differ from before (changed since).
#[inline(always)]
unsafe fn drop_span(st: *const State, addr: u64, first: u64, end: u64) {
    // SAFETY: map values are null checked; word indices are masked.
    unsafe {
        let key = chunk_key(st, addr);
        let v = h::map_lookup_elem(map(&TOUCHED), &key as *const ChunkKey as *const c_void)
            as *mut Touched;
        if v.is_null() {
            // Never written: zero before and after.
            return;
        }
        let mut w = 0usize;
        while w < 8 {
            let m = span_mask(w as u64, first, end);
            if m != 0 {
                atomic_and::<u64, u64, { AtomicOrdering::Relaxed }>(
                    (&raw mut (*v).ever as *mut u64).add(w),
                    !m,
                );
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(
                    (&raw mut (*v).since as *mut u64).add(w),
                    m,
                );
            }
            w += 1;
        }
        write_volatile(&raw mut (*(st as *mut State)).dirty_spans, 1);
    }
}

/// What `mark_range` does to each chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum RangeMode {
    /// Every page written (creating the chunk's bitmaps).
    Mark = 0,
    /// The pages were dropped: they hold nothing now, and changed.
    Clear = 1,
    /// Every page written, but only in chunks that already have bitmaps
    /// (a fault there may since have been backed by a huge page).
    Widen = 2,
    /// The pages may have changed without a fault (lazily freed, made
    /// guards): changed since, whatever they hold.
    Changed = 3,
}

#[repr(C)]
struct RangeCtx {
    st: u64,
    /// First chunk's address.
    start: u64,
    mode: u64,
    /// The range itself (`Mark` marks only its pages, unless `whole`).
    lo: u64,
    hi: u64,
    /// Huge pages may back the range: populating it may fill the rest of
    /// each chunk it touches too.
    whole: u64,
}

extern "C" fn range_chunk(i: u64, ctx: *mut RangeCtx) -> i64 {
    // SAFETY: `ctx` is the caller's stack object; map values null checked.
    unsafe {
        let c = &*ctx;
        let st = c.st as *const State;
        let addr = ((c.start >> CHUNK_SHIFT) + i) << CHUNK_SHIFT;
        let end = addr + (1 << CHUNK_SHIFT);
        // The range's pages in this chunk.
        let first = if c.lo > addr {
            (c.lo - addr) / PAGE_SIZE
        } else {
            0
        };
        let last = if c.hi < end {
            (c.hi - addr).div_ceil(PAGE_SIZE)
        } else {
            CHUNK_PAGES
        };
        if c.mode == RangeMode::Changed as u64 {
            changed_span(st, addr, first, last);
            return 0;
        }
        if c.mode == RangeMode::Clear as u64 {
            // Rounded inwards: a page only partly dropped keeps its data.
            let first = if c.lo > addr {
                (c.lo - addr).div_ceil(PAGE_SIZE)
            } else {
                0
            };
            let last = if c.hi < end {
                (c.hi - addr) / PAGE_SIZE
            } else {
                CHUNK_PAGES
            };
            if first < last {
                drop_span(st, addr, first, last);
            }
            return 0;
        }
        if c.mode == RangeMode::Mark as u64 {
            if c.whole == 0 {
                mark_span(st, addr, first, last);
            } else {
                mark_span(st, addr, 0, CHUNK_PAGES);
            }
            return 0;
        }
        let key = chunk_key(st, addr);
        let v = h::map_lookup_elem(map(&TOUCHED), &key as *const ChunkKey as *const c_void)
            as *mut Touched;
        if !v.is_null() {
            mark_span(st, addr, 0, CHUNK_PAGES);
        }
    }
    0
}

/// Applies `mode` to `[start, start + len)`: `Mark` sets the bits of its
/// pages, `Widen` every bit of the chunks it touches that have bitmaps,
/// `Clear` the state of dropped pages to the pages it covers wholly. A range
/// too large to walk stops the tracking.
#[inline(never)]
pub unsafe fn mark_range(st: *const State, start: u64, len: u64, mode: RangeMode) {
    if len == 0 || start.checked_add(len).is_none() {
        return;
    }
    let (first, last) = (start >> CHUNK_SHIFT, (start + len - 1) >> CHUNK_SHIFT);
    let n = last - first + 1;
    // SAFETY: `st` is a live map value.
    unsafe {
        if n > MAX_LOOPS {
            write_volatile(&raw mut (*(st as *mut State)).untracked, 1);
            return;
        }
        let cfg: *const Config = lookup(map(&CONFIG), 0);
        let thp = !cfg.is_null() && read_volatile(&(*cfg).flags) & F_THP_ALWAYS != 0;
        let whole = (thp || read_volatile(&(*st).thp_seen) != 0) as u64;
        let mut c = RangeCtx {
            st: st as u64,
            start: first << CHUNK_SHIFT,
            mode: mode as u64,
            lo: start,
            hi: start + len,
            whole,
        };
        // A refused loop loses marks: stop trusting the bitmaps then.
        if h::bpf_loop(
            n as u32,
            range_chunk as *const c_void,
            &mut c as *mut RangeCtx as *mut c_void,
            0,
        ) < 0
        {
            write_volatile(&raw mut (*(st as *mut State)).untracked, 1);
        }
    }
}

/// Page faults of the target: a write fault is a page that may now hold
/// data. (A read fault maps the shared zero page: still zero.) Raw
/// tracepoints: every page fault of every process passes here, and a raw
/// tracepoint skips the perf record a classic one builds first.
/// `TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code)`.
#[repr(C)]
pub struct FaultArgs {
    address: u64,
    regs: u64,
    error_code: u64,
}

const PF_WRITE: u64 = 1 << 1;
/// The fault was a protection violation on a present page.
const PF_PROT: u64 = 1 << 0;

#[inline(always)]
pub unsafe fn on_fault(ctx: *const FaultArgs) -> u32 {
    // SAFETY: the raw tracepoint arguments are readable; map values null checked.
    unsafe {
        if (*ctx).error_code & PF_WRITE == 0 {
            return 0;
        }
        let cfg = served();
        if cfg.is_null() {
            return 0;
        }
        let st = state();
        if st.is_null() {
            return 0;
        }
        // With THP a fault may map a whole 2 MiB chunk that later writes
        // fill without faulting again.
        let flags = read_volatile(&(*cfg).flags);
        let thp = flags & F_THP_ALWAYS != 0 || read_volatile(&(*st).thp_seen) != 0;
        // A write to a protected present page: userfaultfd splits a huge
        // one and unprotects only this page. A fault on an absent page may
        // still map a whole huge page, all of it writable.
        let per_page = flags & F_WP_PER_PAGE != 0
            && (*ctx).error_code & PF_PROT != 0
            && read_volatile(&(*cfg).image_seq) == read_volatile(&(*st).layout_seq);
        let all = thp && !per_page;
        mark(st, (*ctx).address, all);
    }
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tracepoint/page_fault_user")]
pub extern "C" fn fault_user(ctx: *const FaultArgs) -> u32 {
    // SAFETY: see on_fault.
    unsafe { on_fault(ctx) }
}

/// The kernel writing into the target (read(2) into a fresh buffer).
#[unsafe(no_mangle)]
#[unsafe(link_section = "raw_tracepoint/page_fault_kernel")]
pub extern "C" fn fault_kernel(ctx: *const FaultArgs) -> u32 {
    // SAFETY: see on_fault.
    unsafe { on_fault(ctx) }
}

const MADV_DONTNEED: u64 = 4;
const MADV_FREE: u64 = 8;
const MADV_REMOVE: u64 = 9;
const MADV_GUARD_INSTALL: u64 = 102;
const MADV_GUARD_REMOVE: u64 = 103;
const MADV_HUGEPAGE: u64 = 14;
const MADV_POPULATE_WRITE: u64 = 23;
const MADV_DONTNEED_LOCKED: u64 = 24;
const MADV_COLLAPSE: u64 = 25;
const MAP_GROWSDOWN: u64 = 0x0100;
const MAP_LOCKED: u64 = 0x2000;
const MAP_POPULATE: u64 = 0x8000;

/// Calls that fill pages without a fault per page, or drop them.
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_madvise")]
pub extern "C" fn madvise_enter(ctx: *const SysEnter) -> u32 {
    // SAFETY: tracepoint record and map values, null checked.
    unsafe {
        if served().is_null() {
            return 0;
        }
        let st = state();
        if st.is_null() {
            return 0;
        }
        let (start, len, advice) = ((*ctx).args[0], (*ctx).args[1], (*ctx).args[2]);
        match advice {
            // Dropped pages read as zero (or the file's bytes) again, but
            // only if the call succeeds (it fails on mlocked ranges): the
            // exit probe records them. Lazily freed pages may be dropped
            // any time, without a fault; guard pages hold nothing.
            MADV_DONTNEED | MADV_DONTNEED_LOCKED | MADV_REMOVE | MADV_GUARD_REMOVE => {
                pending_madvise(start, len, RangeMode::Clear)
            }
            MADV_FREE | MADV_GUARD_INSTALL => pending_madvise(start, len, RangeMode::Changed),
            MADV_POPULATE_WRITE | MADV_COLLAPSE => mark_range(st, start, len, RangeMode::Mark),
            // From now on faults may map huge pages; chunks written before
            // may be collapsed into one by khugepaged, without faults.
            MADV_HUGEPAGE => {
                write_volatile(&mut (*st).thp_seen, 1);
                mark_range(st, start, len, RangeMode::Widen);
            }
            _ => {}
        }
    }
    0
}

/// Remembers a madvise in flight for its exit probe.
#[inline(always)]
unsafe fn pending_madvise(start: u64, len: u64, mode: RangeMode) {
    let (_, tid) = current_tgid();
    let range = [start, len, mode as u64];
    // SAFETY: stack key and value of the sizes the map has.
    unsafe {
        h::map_update_elem(
            map(&MADV_PENDING),
            &tid as *const u32 as *const c_void,
            range.as_ptr() as *const c_void,
            0,
        );
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_exit_madvise")]
pub extern "C" fn madvise_exit(ctx: *const SysExit) -> u32 {
    // SAFETY: tracepoint record and map values, null checked.
    unsafe {
        let (_, tid) = current_tgid();
        let key = &tid as *const u32 as *const c_void;
        let range = h::map_lookup_elem(map(&MADV_PENDING), key) as *const [u64; 3];
        if range.is_null() {
            return 0;
        }
        let (start, len, mode) = (
            read_volatile(&(*range)[0]),
            read_volatile(&(*range)[1]),
            read_volatile(&(*range)[2]),
        );
        h::map_delete_elem(map(&MADV_PENDING), key);
        let st = state();
        if (*ctx).ret == 0 && !served().is_null() && !st.is_null() {
            let mode = if mode == RangeMode::Clear as u64 {
                RangeMode::Clear
            } else {
                RangeMode::Changed
            };
            mark_range(st, start, len, mode);
        }
    }
    0
}

/// mlock and mlock2 populate their range without a fault per page.
#[inline(always)]
pub unsafe fn on_mlock(ctx: *const SysEnter) -> u32 {
    // SAFETY: tracepoint record and map values, null checked.
    unsafe {
        let st = state();
        if !served().is_null() && !st.is_null() {
            mark_range(st, (*ctx).args[0], (*ctx).args[1], RangeMode::Mark);
        }
    }
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_mlock")]
pub extern "C" fn mlock_enter(ctx: *const SysEnter) -> u32 {
    // SAFETY: see on_mlock.
    unsafe { on_mlock(ctx) }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_mlock2")]
pub extern "C" fn mlock2_enter(ctx: *const SysEnter) -> u32 {
    // SAFETY: see on_mlock.
    unsafe { on_mlock(ctx) }
}

/// mlockall populates every mapping, now and (MCL_FUTURE) later: tracking
/// gives up and every page is tried from then on.
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_mlockall")]
pub extern "C" fn mlockall_enter(_ctx: *const SysEnter) -> u32 {
    // SAFETY: as above.
    unsafe {
        let st = state();
        if !served().is_null() && !st.is_null() {
            write_volatile(&mut (*st).untracked, 1);
        }
    }
    0
}

/// Remembers the length of a populating mmap or of an mremap, whose pages
/// arrive without faults, for the exit probe that learns the address.
#[inline(always)]
pub unsafe fn remember(len: u64) {
    let (_, tid) = current_tgid();
    // SAFETY: stack key and value.
    unsafe {
        h::map_update_elem(
            map(&PENDING),
            &tid as *const u32 as *const c_void,
            &len as *const u64 as *const c_void,
            0,
        );
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_mmap")]
pub extern "C" fn mmap_enter(ctx: *const SysEnter) -> u32 {
    // SAFETY: as above.
    unsafe {
        if served().is_null() {
            return 0;
        }
        let flags = (*ctx).args[3];
        if flags & (MAP_POPULATE | MAP_LOCKED) != 0 {
            remember((*ctx).args[1]);
        }
        let st = state();
        if flags & MAP_GROWSDOWN != 0 && !st.is_null() {
            write_volatile(&mut (*st).growsdown, 1);
        }
    }
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_mremap")]
pub extern "C" fn mremap_enter(ctx: *const SysEnter) -> u32 {
    // SAFETY: as above.
    unsafe {
        if !served().is_null() {
            remember((*ctx).args[2]);
        }
    }
    0
}
