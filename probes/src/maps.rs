//! Every map of the probes, as legacy `bpf_map_def`s in the `maps` section
//! (the loader finds each by its symbol), and the two ways to reach them.

use crate::abi::*;
use crate::helpers as h;
use core::ffi::c_void;

/// The bitmap words of the chunk a loop is in (`CHUNK_CACHE`), copied once
/// per chunk so that each page costs one array read instead of a hash lookup.
#[repr(C)]
pub struct ChunkCache {
    pub chunk: u64,
    pub words: [u64; 8],
}

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
const PERCPU_ARRAY: u32 = 6;
const ARRAY_OF_MAPS: u32 = 12;
const RINGBUF: u32 = 27;
const F_NO_PREALLOC: u32 = 1;
const F_MMAPABLE: u32 = 1 << 10;

const fn def(ty: u32, key_size: usize, value_size: usize, max_entries: u32, flags: u32) -> MapDef {
    MapDef {
        ty,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries,
        flags,
    }
}

const fn array(value_size: usize, max_entries: u32, flags: u32) -> MapDef {
    def(ARRAY, 4, value_size, max_entries, flags)
}

/// Each map: an exported symbol in the `maps` section.
macro_rules! maps {
    ($($(#[$doc:meta])* $name:ident = $def:expr;)*) => {
        $(
            $(#[$doc])*
            #[unsafe(no_mangle)]
            #[unsafe(link_section = "maps")]
            pub static $name: MapDef = $def;
        )*
    };
}

maps! {
    /// Written by user space (`Config`) through a mapping, read by the probes.
    CONFIG = array(size_of::<Config>(), 1, F_MMAPABLE);
    /// Written by the probes (`State`), read by user space through mmap.
    STATE = array(size_of::<State>(), 1, F_MMAPABLE);
    /// Slot 0: the live table of the target's captured ranges, an mmapable
    /// array of `Region` that user space writes and replaces by a bigger
    /// one when the target has more mappings.
    REGIONS_OUTER = def(ARRAY_OF_MAPS, 4, 4, 1, 0);
    /// Slot 0: the ranges absent (or untouched file pages) at the
    /// checkpoint, which a restore makes what they were again; sized like
    /// the region table.
    ZERO_OUTER = def(ARRAY_OF_MAPS, 4, 4, 1, 0);
    /// Slot 0 holds the page store: an mmapable array of 4 KiB values that
    /// user space creates, sizes to what is saved and grows while the target
    /// is held.
    PAGES_OUTER = def(ARRAY_OF_MAPS, 4, 4, 1, 0);
    /// Slot 0: the address of each saved page (same indices as the page store).
    ADDRS_OUTER = def(ARRAY_OF_MAPS, 4, 4, 1, 0);
    /// A page of zeros, the source for zeroing pages on restore.
    ZERO_PAGE = array(PAGE_SIZE as usize, 1, 0);
    /// Checkpoint, restore, layout and exec events for user space.
    EVENTS = def(RINGBUF, 0, 0, 1 << 18, 0);
    /// Which pages of the target were ever written (and since the last
    /// checkpoint), per 2 MiB chunk, fed by the page-fault tracepoints.
    /// 65,536 chunks cover 128 GiB of written memory; the bucket array
    /// (16 bytes an entry) is what a target pays for it up front. A full
    /// map stops the tracking (every page is tried), never loses a write.
    TOUCHED = def(HASH, size_of::<ChunkKey>(), size_of::<Touched>(), 1 << 16, F_NO_PREALLOC);
    /// The bitmap words of the chunk a loop is in. Per CPU: a BPF program
    /// does not migrate while it runs.
    CHUNK_CACHE = def(PERCPU_ARRAY, 4, size_of::<ChunkCache>(), 1, 0);
    /// Arguments of an mmap/mremap in flight, by thread, for its exit probe.
    PENDING = def(HASH, 4, 8, 1024, F_NO_PREALLOC);
    /// The stack of a clone in flight, by thread, for its exit probe.
    CLONE_PENDING = def(HASH, 4, 8, 1024, F_NO_PREALLOC);
    /// Threads in a `process_vm_writev` or `ptrace` poke aimed at the
    /// target, for their exit probes (`State::gup_inflight`).
    GUP_PENDING = def(HASH, 4, 4, 1024, F_NO_PREALLOC);
    /// Range of a page-dropping madvise in flight, by thread: the bitmaps
    /// are cleared only once the call succeeded.
    MADV_PENDING = def(HASH, 4, 24, 1024, F_NO_PREALLOC);
    /// Pages a user-space restore must zero (written since the checkpoint,
    /// absent at it), collected by the restore probe.
    ZERO_TODO = array(8, ZERO_TODO_MAX, F_MMAPABLE);
    /// Pages the target dirtied since user space last re-armed them, one
    /// entry each, in the order of their first write fault.
    DIRTY = array(8, DIRTY_MAX, F_MMAPABLE);
    /// Store slots (`Config::nfree` of them) an incremental checkpoint
    /// copies the `DIRTY` pages into, in order.
    FREE = array(8, DIRTY_MAX, F_MMAPABLE);
    /// The loader's self-test (selftest.rs): whom to answer, what it saw.
    SELFTEST_CFG = array(4, 1, 0);
    SELFTEST_OUT = array(8, ST_SLOTS, F_MMAPABLE);
    SELFTEST_EVENTS = def(RINGBUF, 0, 0, 4096, 0);
}

/// The map a definition stands for (the loader turns the address into the
/// map's fd).
#[inline(always)]
pub fn map(def: &'static MapDef) -> *const c_void {
    def as *const MapDef as *const c_void
}

/// Element `key` of an array (or array-of-maps) map; null if absent.
#[inline(always)]
pub unsafe fn lookup<T>(def: *const c_void, key: u32) -> *mut T {
    // SAFETY: the verifier checks the map pointer and key; a null result is
    // checked by every caller.
    unsafe { h::map_lookup_elem(def, &key as *const u32 as *const c_void) as *mut T }
}
