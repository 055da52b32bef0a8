//! bpfckpt's BPF programs. Built for `probes/target.json` (see DESIGN.md
//! section 3); every program runs in the context of the task that hit the
//! tracepoint, which for the checkpoint/restore programs is the target itself.
//!
//! Rules for this file: no panics, no formatting, no slice indexing with
//! runtime values, no large copies (they become memcpy calls the kernel does
//! not have); every helper call goes through `h`.

#![no_std]
#![no_main]
// `atomic-cas` is off for BPF in rustc, so the RMW atomics of core are not
// available; the intrinsic maps straight to BPF_ATOMIC_FETCH_ADD (cpu v3).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod abi;

use abi::*;
use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_and, atomic_or, atomic_xadd, atomic_xchg};
use core::ptr::{null_mut, read_volatile, write_volatile};

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";

/// Legacy map definition as the loader parses it from the `maps` section.
#[repr(C)]
pub struct MapDef {
    ty: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

const HASH: u32 = 1;
const ARRAY: u32 = 2;
const F_NO_PREALLOC: u32 = 1;
const PERCPU_ARRAY: u32 = 6;
const ARRAY_OF_MAPS: u32 = 12;
const RINGBUF: u32 = 27;
const F_MMAPABLE: u32 = 1 << 10;

const fn array(value_size: usize, max_entries: u32, flags: u32) -> MapDef {
    MapDef { ty: ARRAY, key_size: 4, value_size: value_size as u32, max_entries, flags }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static CONFIG: MapDef = array(size_of::<Config>(), 1, 0);
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static STATE: MapDef = array(size_of::<State>(), 1, F_MMAPABLE);
/// Live table of the target's captured ranges, written by user space.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static REGIONS: MapDef = array(size_of::<Region>(), MAX_REGIONS, F_MMAPABLE);
/// Ranges absent at the checkpoint: a restore makes them zero again.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static ZERO_RANGES: MapDef = array(size_of::<Region>(), MAX_REGIONS, F_MMAPABLE);
/// Slot 0 holds the page store: an mmapable array of 4 KiB values that user
/// space creates, sizes to what is saved and grows while the target is held.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static PAGES_OUTER: MapDef = MapDef { ty: ARRAY_OF_MAPS, key_size: 4, value_size: 4, max_entries: 1, flags: 0 };
/// Slot 0: the address of each saved page (same indices as the page store).
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static ADDRS_OUTER: MapDef = MapDef { ty: ARRAY_OF_MAPS, key_size: 4, value_size: 4, max_entries: 1, flags: 0 };
/// A page of zeros, the source for zeroing pages on restore.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static ZERO_PAGE: MapDef = array(PAGE_SIZE as usize, 1, 0);
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static EVENTS: MapDef = MapDef { ty: RINGBUF, key_size: 0, value_size: 0, max_entries: 1 << 18, flags: 0 };

/// Which pages of the target were ever written (and since the last
/// checkpoint), per 2 MiB chunk, fed by the page-fault tracepoints.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static TOUCHED: MapDef = MapDef {
    ty: HASH,
    key_size: size_of::<ChunkKey>() as u32,
    value_size: size_of::<Touched>() as u32,
    max_entries: 1 << 18,
    flags: F_NO_PREALLOC,
};
/// Arguments of an mmap/mremap in flight, by thread, for its exit probe.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static PENDING: MapDef = MapDef { ty: HASH, key_size: 4, value_size: 8, max_entries: 4096, flags: 0 };
/// Pages a user-space restore must zero (written since the checkpoint,
/// absent at it), collected by the restore probe.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static ZERO_TODO: MapDef = array(8, ZERO_TODO_MAX, F_MMAPABLE);

/// Self-test of the loader: every relocation case in one program.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static SELFTEST_CFG: MapDef = array(4, 1, 0);
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static SELFTEST_OUT: MapDef = array(8, ST_SLOTS, F_MMAPABLE);
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static SELFTEST_EVENTS: MapDef = MapDef { ty: RINGBUF, key_size: 0, value_size: 0, max_entries: 4096, flags: 0 };

const SIGSTOP: u32 = 19;
const O_CREAT: u64 = 0o100;

/// Kernel helpers, called through their numbers (`call imm`).
mod h {
    use core::ffi::c_void;
    use core::mem::transmute;

    // SAFETY (whole module): each helper number is paired with the prototype
    // the kernel documents for it in include/uapi/linux/bpf.h; the verifier
    // checks every argument at load time.
    macro_rules! helper {
        ($name:ident = $id:literal : fn($($a:ident: $t:ty),*) -> $r:ty) => {
            #[inline(always)]
            pub unsafe fn $name($($a: $t),*) -> $r {
                // SAFETY: see the module comment.
                unsafe {
                    let f: unsafe extern "C" fn($($t),*) -> $r = transmute($id as usize);
                    f($($a),*)
                }
            }
        };
    }
    helper!(map_lookup_elem = 1: fn(map: *const c_void, key: *const c_void) -> *mut c_void);
    helper!(map_update_elem = 2: fn(map: *const c_void, key: *const c_void, value: *const c_void, flags: u64) -> i64);
    helper!(map_delete_elem = 3: fn(map: *const c_void, key: *const c_void) -> i64);
    helper!(ktime_get_ns = 5: fn() -> u64);
    helper!(get_current_pid_tgid = 14: fn() -> u64);
    helper!(get_current_comm = 16: fn(buf: *mut c_void, size: u32) -> i64);
    helper!(probe_write_user = 36: fn(dst: *mut c_void, src: *const c_void, len: u32) -> i64);
    helper!(send_signal = 109: fn(sig: u32) -> i64);
    helper!(probe_read_user = 112: fn(dst: *mut c_void, size: u32, src: *const c_void) -> i64);
    helper!(probe_read_user_str = 114: fn(dst: *mut c_void, size: u32, src: *const c_void) -> i64);
    helper!(ringbuf_output = 130: fn(rb: *const c_void, data: *const c_void, size: u64, flags: u64) -> i64);
    helper!(bpf_loop = 181: fn(n: u32, cb: *const c_void, ctx: *mut c_void, flags: u64) -> i64);
}

#[inline(always)]
fn map(def: &'static MapDef) -> *const c_void {
    def as *const MapDef as *const c_void
}

#[inline(always)]
unsafe fn lookup<T>(def: *const c_void, key: u32) -> *mut T {
    // SAFETY: the verifier checks the map pointer and key; a null result is
    // checked by every caller.
    unsafe { h::map_lookup_elem(def, &key as *const u32 as *const c_void) as *mut T }
}

/// Syscall tracepoint records (see .../events/syscalls/*/format).
#[repr(C)]
pub struct SysEnter {
    common: u64,
    nr: i64,
    args: [u64; 6],
}

#[repr(C)]
pub struct SysExit {
    common: u64,
    nr: i64,
    ret: i64,
}

#[repr(C, align(8))]
struct PathBuf([u8; PATH_MAX]);

#[inline(always)]
fn current_tgid() -> (u32, u32) {
    // SAFETY: helper without pointer arguments.
    let id = unsafe { h::get_current_pid_tgid() };
    ((id >> 32) as u32, id as u32)
}

/// The target's config if the current task belongs to the served thread group.
#[inline(always)]
unsafe fn served() -> *mut Config {
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
unsafe fn emit(ev: &Event) {
    // SAFETY: `ev` is a stack object of the size passed; STATE is null checked.
    unsafe {
        let r = h::ringbuf_output(map(&EVENTS), ev as *const Event as *const c_void, size_of::<Event>() as u64, 0);
        if r != 0 && (ev.kind == EV_CHECKPOINT || ev.kind == EV_RESTORE) {
            // A request user space never hears of would leave the target
            // waiting (or stopped): count it, user space polls the count.
            let st = state();
            if !st.is_null() {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*st).lost, 1);
            }
        }
    }
}

/// Compares two NUL-padded path buffers word by word (no memcmp in BPF).
#[inline(always)]
fn same_path(a: &PathBuf, b: *const [u8; PATH_MAX]) -> bool {
    let a = a.0.as_ptr() as *const u64;
    let b = b as *const u64;
    let mut i = 0;
    while i < PATH_MAX / 8 {
        // SAFETY: both buffers are PATH_MAX bytes and 8-byte aligned
        // (Config keeps its paths at 8-byte offsets).
        if unsafe { read_volatile(a.add(i)) != read_volatile(b.add(i)) } {
            return false;
        }
        i += 1;
    }
    true
}

// ---------------------------------------------------------------- triggers

#[inline(always)]
unsafe fn on_open<const W: bool>(path: u64, flags: u64, creat: bool) -> u32 {
    // SAFETY: pointers come from map lookups (null checked) or the stack.
    unsafe {
        let cfg = served();
        if cfg.is_null() || (!creat && flags & O_CREAT == 0) {
            return 0;
        }
        let mut buf = PathBuf([0; PATH_MAX]);
        if h::probe_read_user_str(buf.0.as_mut_ptr() as *mut c_void, PATH_MAX as u32, path as *const c_void) <= 0 {
            return 0;
        }
        if same_path(&buf, &raw const (*cfg).ckpt_path) {
            checkpoint(cfg);
        } else if same_path(&buf, &raw const (*cfg).restore_path) {
            restore::<W>(cfg);
        }
    }
    0
}

/// The trigger programs come in two sets: `*_w` restores with
/// `bpf_probe_write_user`, the others only hold the target for a user-space
/// restore. The kernel refuses to load any program that merely contains the
/// write helper under lockdown, so the choice is made by loading one set.
macro_rules! triggers {
    ($w:literal, $openat:ident, $open:ident, $creat:ident) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_enter_openat")]
        pub extern "C" fn $openat(ctx: *const SysEnter) -> u32 {
            // SAFETY: the tracepoint context is readable at these offsets.
            unsafe { on_open::<$w>((*ctx).args[1], (*ctx).args[2], false) }
        }

        /// musl's open() uses SYS_open, not openat.
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_enter_open")]
        pub extern "C" fn $open(ctx: *const SysEnter) -> u32 {
            // SAFETY: as above.
            unsafe { on_open::<$w>((*ctx).args[0], (*ctx).args[1], false) }
        }

        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_enter_creat")]
        pub extern "C" fn $creat(ctx: *const SysEnter) -> u32 {
            // SAFETY: as above.
            unsafe { on_open::<$w>((*ctx).args[0], 0, true) }
        }
    };
}

triggers!(false, trigger_openat, trigger_open, trigger_creat);
triggers!(true, trigger_openat_w, trigger_open_w, trigger_creat_w);

// ------------------------------------------------------- touched pages

/// Whether tracked regions may skip pages on the touched-page bitmaps.
#[inline(always)]
unsafe fn tracking(cfg: *const Config, st: *const State) -> u64 {
    // SAFETY: live map values.
    unsafe {
        (read_volatile(&(*cfg).flags) & F_EXHAUSTIVE == 0 && read_volatile(&(*st).untracked) == 0) as u64
    }
}

/// The bitmap words of the chunk a loop is in, copied once per chunk so
/// that each page costs one array read instead of a hash lookup.
#[repr(C)]
pub struct ChunkCache {
    chunk: u64,
    words: [u64; 8],
}

/// Per CPU: a BPF program does not migrate while it runs.
#[unsafe(no_mangle)]
#[unsafe(link_section = "maps")]
pub static CHUNK_CACHE: MapDef = MapDef {
    ty: PERCPU_ARRAY,
    key_size: 4,
    value_size: size_of::<ChunkCache>() as u32,
    max_entries: 1,
    flags: 0,
};

/// Forgets the cached chunk (at the start of each loop).
#[inline(always)]
unsafe fn reset_chunk_cache() {
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
unsafe fn untouched_run(key: &mut ChunkKey, addr: u64, end: u64, checkpoint: bool) -> u64 {
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
            let v: *mut Touched = h::map_lookup_elem(map(&TOUCHED), key as *const ChunkKey as *const c_void) as *mut Touched;
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
        let word = read_volatile((&raw const (*cache).words as *const u64).add(((bit >> 6) & 7) as usize));
        (word & (1u64 << (bit & 63)) == 0) as u64
    }
}

/// The bitmaps of `key`'s chunk, created empty if missing.
#[inline(always)]
unsafe fn chunk_bits(key: &ChunkKey) -> *mut Touched {
    // SAFETY: `key` is on the stack; a NOEXIST insert that loses a race is
    // followed by a lookup of the winner's entry.
    unsafe {
        let k = key as *const ChunkKey as *const c_void;
        let v = h::map_lookup_elem(map(&TOUCHED), k) as *mut Touched;
        if !v.is_null() {
            return v;
        }
        let z = Touched { ever: [0; 8], since: [0; 8] };
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
unsafe fn chunk_key(st: *const State, addr: u64) -> ChunkKey {
    let (tgid, _) = current_tgid();
    // SAFETY: live map value.
    let image = unsafe { read_volatile(&(*st).exec_gen) } as u32;
    ChunkKey { tgid, image, chunk: addr >> CHUNK_SHIFT }
}

/// Marks one page written, or its whole chunk (`all`).
#[inline(always)]
unsafe fn mark(st: *const State, addr: u64, all: bool) {
    // SAFETY: the map value is null checked; word indices are masked.
    unsafe {
        let key = chunk_key(st, addr);
        let v = chunk_bits(&key);
        if v.is_null() {
            return;
        }
        if all {
            let mut w = 0usize;
            while w < 8 {
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>((&raw mut (*v).ever as *mut u64).add(w), !0);
                atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>((&raw mut (*v).since as *mut u64).add(w), !0);
                w += 1;
            }
        } else {
            let bit = (addr / PAGE_SIZE) & (CHUNK_PAGES - 1);
            let w = ((bit >> 6) & 7) as usize;
            let m = 1u64 << (bit & 63);
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>((&raw mut (*v).ever as *mut u64).add(w), m);
            atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>((&raw mut (*v).since as *mut u64).add(w), m);
        }
    }
}

#[repr(C)]
struct RangeCtx {
    st: u64,
    start: u64,
    clear: u64,
}

extern "C" fn range_chunk(i: u64, ctx: *mut RangeCtx) -> i64 {
    // SAFETY: `ctx` is the caller's stack object; map values null checked.
    unsafe {
        let c = &*ctx;
        let st = c.st as *const State;
        let addr = ((c.start >> CHUNK_SHIFT) + i) << CHUNK_SHIFT;
        if c.clear != 0 {
            let key = chunk_key(st, addr);
            let v = h::map_lookup_elem(map(&TOUCHED), &key as *const ChunkKey as *const c_void) as *mut Touched;
            if !v.is_null() {
                let z = Touched { ever: [0; 8], since: [0; 8] };
                h::map_update_elem(map(&TOUCHED), &key as *const ChunkKey as *const c_void, &z as *const Touched as *const c_void, 2);
            }
        } else {
            mark(st, addr, true);
        }
    }
    0
}

/// Marks every chunk overlapping `[start, start + len)` written, or (`clear`)
/// forgets the chunks it covers entirely.
#[inline(never)]
unsafe fn mark_range(st: *const State, start: u64, len: u64, clear: bool) {
    if len == 0 {
        return;
    }
    let (mut first, mut last) = (start >> CHUNK_SHIFT, (start + len - 1) >> CHUNK_SHIFT);
    if clear {
        // Only whole chunks: a partly covered one keeps its bits.
        if start & ((1 << CHUNK_SHIFT) - 1) != 0 {
            first += 1;
        }
        if (start + len) & ((1 << CHUNK_SHIFT) - 1) != 0 {
            if last == 0 {
                return;
            }
            last -= 1;
        }
        if last < first {
            return;
        }
    }
    let mut c = RangeCtx { st: st as u64, start: first << CHUNK_SHIFT, clear: clear as u64 };
    // SAFETY: the callback gets our stack object.
    unsafe {
        h::bpf_loop((last - first + 1) as u32, range_chunk as *const c_void, &mut c as *mut RangeCtx as *mut c_void, 0);
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

#[inline(always)]
unsafe fn on_fault(ctx: *const FaultArgs) -> u32 {
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
        let all = read_volatile(&(*cfg).flags) & F_THP_ALWAYS != 0 || read_volatile(&(*st).thp_seen) != 0;
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
const MADV_HUGEPAGE: u64 = 14;
const MADV_POPULATE_WRITE: u64 = 23;
const MADV_DONTNEED_LOCKED: u64 = 24;
const MADV_COLLAPSE: u64 = 25;
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
            // Dropped private anonymous pages read as zero again.
            MADV_DONTNEED | MADV_DONTNEED_LOCKED => mark_range(st, start, len, true),
            MADV_POPULATE_WRITE | MADV_COLLAPSE => mark_range(st, start, len, false),
            MADV_HUGEPAGE => write_volatile(&mut (*st).thp_seen, 1),
            _ => {}
        }
    }
    0
}

/// mlock and mlock2 populate their range without a fault per page.
#[inline(always)]
unsafe fn on_mlock(ctx: *const SysEnter) -> u32 {
    // SAFETY: tracepoint record and map values, null checked.
    unsafe {
        let st = state();
        if !served().is_null() && !st.is_null() {
            mark_range(st, (*ctx).args[0], (*ctx).args[1], false);
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
unsafe fn remember(len: u64) {
    let (_, tid) = current_tgid();
    // SAFETY: stack key and value.
    unsafe {
        h::map_update_elem(map(&PENDING), &tid as *const u32 as *const c_void, &len as *const u64 as *const c_void, 0);
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_mmap")]
pub extern "C" fn mmap_enter(ctx: *const SysEnter) -> u32 {
    // SAFETY: as above.
    unsafe {
        if !served().is_null() && (*ctx).args[3] & (MAP_POPULATE | MAP_LOCKED) != 0 {
            remember((*ctx).args[1]);
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

// -------------------------------------------------------------- checkpoint

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

/// The region of `table` holding page `*page` of region `*region`, moving
/// on to the next region when that one is done; null at the end. Regions
/// are never empty, so one step always lands in a page.
#[inline(always)]
unsafe fn cursor(table: *const c_void, region: &mut u32, page: &mut u64, nregions: u32) -> *mut Region {
    // SAFETY: map values are null checked.
    unsafe {
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
        let r = cursor(map(&REGIONS), &mut c.region, &mut c.page, c.nregions);
        if r.is_null() {
            return 1;
        }
        let addr = (*r).start + c.page * PAGE_SIZE;
        if c.tracked != 0 && (*r).flags & R_TRACKED != 0 {
            // Never written means zero: skip it, or the rest of its chunk.
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

#[inline(always)]
unsafe fn state() -> *mut State {
    // SAFETY: STATE has one entry; callers check null.
    unsafe { lookup(map(&STATE), 0) }
}

#[inline(never)]
unsafe fn checkpoint(cfg: *mut Config) {
    // SAFETY: `cfg` is a live map value; other pointers are null checked.
    unsafe {
        let st = state();
        if st.is_null() {
            return;
        }
        let t0 = h::ktime_get_ns();
        let (tgid, tid) = current_tgid();
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
        if applied != read_volatile(&(*st).layout_seq) {
            stale = STALE_LAYOUT;
        } else if c.nregions > 0 {
            let total = read_volatile(&(*cfg).total_pages);
            reset_chunk_cache();
            h::bpf_loop(
                total as u32,
                checkpoint_page as *const c_void,
                &mut c as *mut CopyCtx as *mut c_void,
                0,
            );
            // Seqlock: user space invalidates applied_seq before it touches
            // the region table, so a change here means a torn table.
            if read_volatile(&(*cfg).applied_seq) != applied {
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
        let ev = Event {
            kind: EV_CHECKPOINT,
            tgid,
            tid,
            held,
            seq: applied,
            a: c.next,
            b: c.fails,
            c: h::ktime_get_ns() - t0,
            stale,
            d: c.skipped,
        };
        emit(&ev);
    }
}

// ----------------------------------------------------------------- restore

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
unsafe fn restore<const W: bool>(cfg: *mut Config) {
    // SAFETY: `cfg` is a live map value; other pointers are null checked.
    unsafe {
        let st = state();
        if st.is_null() {
            return;
        }
        let t0 = h::ktime_get_ns();
        let (tgid, tid) = current_tgid();
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
        let ev = Event {
            kind: EV_RESTORE,
            tgid,
            tid,
            held,
            seq: zeros.n,
            a: pages.n,
            b: pages.fails,
            c: h::ktime_get_ns() - t0,
            stale: zeros.fails,
            d: todo,
        };
        emit(&ev);
    }
}

// ------------------------------------------------------------ layout, exec

/// Marks the region table stale; returns the new sequence number.
#[inline(always)]
unsafe fn bump_seq(st: *mut State) -> u64 {
    // SAFETY: `st` is a live map value. Atomic: two threads of the target
    // may change mappings at once.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*st).layout_seq, 1) + 1 }
}

#[inline(always)]
unsafe fn layout_changed(ret: i64) -> u32 {
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
        let seq = bump_seq(st);
        let (tgid, tid) = current_tgid();
        let pending: *const u64 = h::map_lookup_elem(map(&PENDING), &tid as *const u32 as *const c_void) as *const u64;
        if !pending.is_null() {
            let len = read_volatile(pending);
            h::map_delete_elem(map(&PENDING), &tid as *const u32 as *const c_void);
            // A successful mmap/mremap returns the address (never in the
            // top 4095 values, which are errors).
            if ret >= 0 || ret < -4095 {
                mark_range(st, ret as u64, len, false);
            }
        }
        // One notification until user space has read the layout: a target
        // that maps in a loop must not flood the ring buffer.
        if atomic_xchg::<u64, { AtomicOrdering::Relaxed }>(&raw mut (*st).notified, 1) == 0 {
            let ev = Event { kind: EV_LAYOUT, tgid, tid, held: 0, seq, a: ret as u64, b: 0, c: 0, stale: 0, d: 0 };
            emit(&ev);
        }
    }
    0
}

macro_rules! layout_probe {
    ($fn:ident, $sec:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = $sec)]
        pub extern "C" fn $fn(ctx: *const SysExit) -> u32 {
            // SAFETY: the tracepoint context is readable at this offset.
            unsafe { layout_changed((*ctx).ret) }
        }
    };
}

layout_probe!(layout_mmap, "tracepoint/syscalls/sys_exit_mmap");
layout_probe!(layout_munmap, "tracepoint/syscalls/sys_exit_munmap");
layout_probe!(layout_mremap, "tracepoint/syscalls/sys_exit_mremap");
layout_probe!(layout_brk, "tracepoint/syscalls/sys_exit_brk");
layout_probe!(layout_mprotect, "tracepoint/syscalls/sys_exit_mprotect");

/// A new program image: the target of `run` (by thread group) or a process
/// `watch` waits for (by name). The latter is held until user space has read
/// its layout, so that not a single trigger can be missed.
#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/sched/sched_process_exec")]
pub extern "C" fn on_exec(_ctx: *const c_void) -> u32 {
    // SAFETY: pointers from map lookups (null checked) or the stack.
    unsafe {
        let cfg: *mut Config = lookup(map(&CONFIG), 0);
        if cfg.is_null() {
            return 0;
        }
        let (tgid, tid) = current_tgid();
        let mine = read_volatile(&(*cfg).tgid) == tgid && read_volatile(&(*cfg).flags) & F_ACTIVE != 0;
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
            let st = state();
            if !st.is_null() {
                bump_seq(st);
                // The bitmaps stay: the kernel already wrote pages of the new
                // image while loading it (before this tracepoint), and later
                // writes to those pages fault no more. Bits of the old image
                // only make the set larger, which is always safe.
                write_volatile(&mut (*st).untracked, 0);
            }
        }
        let ev = Event { kind: EV_EXEC, tgid, tid, held, seq: 0, a: 0, b: 0, c: 0, stale: 0, d: 0 };
        emit(&ev);
    }
    0
}

// ---------------------------------------------------------------- selftest

/// Globals in each data section, so that every relocation kind appears.
#[unsafe(no_mangle)]
pub static mut SELFTEST_DATA: u64 = 0x1111_2222_3333_4444;
#[unsafe(no_mangle)]
pub static SELFTEST_RODATA: u64 = 0x5555_6666_7777_8888;
#[unsafe(no_mangle)]
pub static mut SELFTEST_BSS: u64 = 0;

#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn selftest_mix(a: u64, b: u64) -> u64 {
    (a ^ b).rotate_left(7)
}

extern "C" fn selftest_step(i: u64, acc: *mut u64) -> i64 {
    // SAFETY: `acc` is the caller's stack slot.
    unsafe { *acc += i + 1 };
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_openat")]
pub extern "C" fn selftest(_ctx: *const SysEnter) -> u32 {
    // SAFETY: pointers from map lookups (null checked), globals, the stack.
    unsafe {
        let (tgid, _) = current_tgid();
        let want: *mut u32 = lookup(map(&SELFTEST_CFG), 0);
        if want.is_null() || *want != tgid {
            return 0;
        }
        // .bss counts hits, .data and .rodata are read back verbatim.
        let hits = read_volatile(&raw const SELFTEST_BSS) + 1;
        write_volatile(&raw mut SELFTEST_BSS, hits);
        let mut acc = 0u64;
        h::bpf_loop(10, selftest_step as *const c_void, &mut acc as *mut u64 as *mut c_void, 0);
        let vals = [
            read_volatile(&raw const SELFTEST_DATA),
            read_volatile(&SELFTEST_RODATA),
            hits,
            selftest_mix(read_volatile(&raw const SELFTEST_DATA), 3),
            acc,
            hits,
        ];
        let mut i = 0u32;
        while i < 6 {
            let slot: *mut u64 = lookup(map(&SELFTEST_OUT), i);
            if !slot.is_null() {
                write_volatile(slot, *vals.as_ptr().add(i as usize));
            }
            i += 1;
        }
        h::ringbuf_output(
            map(&SELFTEST_EVENTS),
            vals.as_ptr() as *const c_void,
            size_of::<[u64; 6]>() as u64,
            0,
        );
    }
    0
}
