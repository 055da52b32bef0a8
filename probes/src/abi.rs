//! Data shared by the probes and user space. This one file is compiled into
//! both (the loader includes it with `#[path]`), so the layouts cannot drift.
//! Plain `#[repr(C)]` data only: no methods that could pull in panics.

#![allow(dead_code)]

pub const PAGE_SIZE: u64 = 4096;
/// Trigger paths are compared as fixed NUL-padded buffers of this size.
pub const PATH_MAX: usize = 128;
pub const COMM_LEN: usize = 16;
/// Entries of the first region and zero-range tables; user space replaces
/// them with bigger ones when a target needs more.
pub const FIRST_TABLE_ROWS: u32 = 1024;
/// The low bit of an `ADDRS` entry marks a page the BPF restore could not write.
pub const ADDR_FAILED: u64 = 1;
/// The most iterations one `bpf_loop` call runs (the kernel's
/// `BPF_MAX_LOOPS`); more fail with E2BIG.
pub const MAX_LOOPS: u64 = 1 << 23;

/// `Config::flags`
pub const F_ACTIVE: u32 = 1 << 0;
/// Restore with `bpf_probe_write_user` (else the probe only holds the target).
pub const F_BPF_WRITE: u32 = 1 << 1;
/// Always hold the target at a restore and leave it all to user space.
pub const F_HOLD_RESTORE: u32 = 1 << 3;
/// Try every page of every region, ignoring the touched-page bitmaps.
pub const F_EXHAUSTIVE: u32 = 1 << 4;
/// Transparent huge pages may back any memory (a THP knob says `always`):
/// a fault may map a whole 2 MiB chunk, so a fault marks the whole chunk.
pub const F_THP_ALWAYS: u32 = 1 << 5;
/// Dirty tracking is armed (user space write-protects pages again at each
/// request): a page's `since` bit and the `DIRTY` list say it changed since
/// the last re-arm, so a checkpoint copies only the listed pages into free
/// slots of the image, and a BPF restore writes back only changed pages.
pub const F_INCREMENTAL: u32 = 1 << 6;
/// The target had one thread when user space last published: while its
/// trigger runs nothing else writes its memory, so BPF may copy the dirty
/// pages before user space re-arms them. (A new thread changes the layout
/// sequence first.)
pub const F_SINGLE_THREAD: u32 = 1 << 7;
/// The image's regions are armed with userfaultfd write protection, which
/// splits a huge page on its first write fault: while the layout is still
/// the image's, a write fault on a present page marks that page alone
/// even under THP.
pub const F_WP_PER_PAGE: u32 = 1 << 8;
/// User space holds every open in the trigger directory until it answers
/// (fanotify permission events): a one-thread target asking by an open is
/// held right there, with no SIGSTOP.
pub const F_OPEN_HOLD: u32 = 1 << 9;

/// `EventHeader::held`: the probe sent SIGSTOP.
pub const HELD_SIGNAL: u32 = 1;
/// `EventHeader::held`: the target is held in its trigger open until user
/// space answers that open's permission event.
pub const HELD_OPEN: u32 = 2;

/// Entries of `DIRTY` and `FREE`: pages dirtied between two requests that
/// the probes list one by one (256 MiB); beyond, user space walks the bitmaps.
pub const DIRTY_MAX: u32 = 65536;

/// `Region::flags`: the touched-page bitmaps decide what to read (a page
/// that was never written holds what it held when mapped).
pub const R_TRACKED: u64 = 1;
/// A page never written holds the file's bytes, not zeros: a zero-range
/// row with this flag is a range of untouched file pages, which only user
/// space can restore.
pub const R_FILE: u64 = 2;

/// The touched-page bitmaps cover 2 MiB chunks of address space.
pub const CHUNK_SHIFT: u64 = 21;
pub const CHUNK_PAGES: u64 = 512;
/// Capacity of `ZERO_TODO`; beyond it user space scans the zero ranges.
pub const ZERO_TODO_MAX: u32 = 16384;

/// Written by user space through a mapping, read by the probes (`CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Config {
    /// Thread group being served; 0 = none.
    pub tgid: u32,
    pub flags: u32,
    /// Seqlock over everything below and the tables: odd while user space
    /// rewrites them. A probe that sees it odd, or changed at its end, has
    /// read a torn state and leaves the request to user space.
    pub version: u64,
    /// `layout_seq` the region table below was built from.
    pub applied_seq: u64,
    /// Live region table: entries, and their total pages.
    pub nregions: u32,
    /// Zero ranges of the current image (pages absent at the checkpoint).
    pub nzero: u32,
    pub total_pages: u64,
    pub zero_pages: u64,
    /// Page slots available in the current `PAGES`/`ADDRS` inner maps.
    pub capacity: u64,
    /// Pages saved by the last checkpoint (slots 0..image_slots); 0 = no image.
    pub image_slots: u64,
    /// `State::layout_seq` when the image was taken: a restore in another
    /// layout is left to user space, which checks every page's mapping.
    pub image_seq: u64,
    /// Process name that `watch` waits for (NUL padded); empty = none.
    pub watch_comm: [u8; COMM_LEN],
    pub ckpt_path: [u8; PATH_MAX],
    pub restore_path: [u8; PATH_MAX],
    /// bpfckpt's own process: its writes into the target are its own to track.
    pub self_tgid: u32,
    pub _pad: u32,
    /// Entries of `FREE`: store slots an incremental checkpoint may fill.
    pub nfree: u64,
}

/// Written by the probes (`STATE[0]`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct State {
    /// Bumped whenever the target's memory may be elsewhere or other memory
    /// (mmap, munmap, mremap, brk, exec, a new thread); not by mprotect.
    pub layout_seq: u64,
    /// Always 0. Loop counters start from it so that the verifier sees
    /// unknown scalars: with constants it tracks every bpf_loop iteration
    /// as a new state and never converges.
    pub opaque_zero: u64,
    /// Part of the touched-page keys; 0. (An exec keeps the bitmaps: the
    /// kernel writes pages of the new image before the exec tracepoint.)
    pub exec_gen: u64,
    /// Set when the target did something whose writes cannot be tracked
    /// (mlockall, a full bitmap map): from then on every page is tried.
    pub untracked: u64,
    /// Set once the target asked for transparent huge pages
    /// (MADV_HUGEPAGE): faults then mark whole chunks.
    pub thp_seen: u64,
    /// 1 while a layout notification is unread (user space clears it).
    pub notified: u64,
    /// Checkpoint/restore events the ring buffer refused.
    pub lost: u64,
    /// Set once the target mapped memory with `MAP_GROWSDOWN`: such a
    /// mapping grows by faults, with no system call to say so, so every
    /// checkpoint rereads the mappings with the target held.
    pub growsdown: u64,
    /// Entries written to `DIRTY` since user space last emptied it (may
    /// exceed `DIRTY_MAX`: then the list is incomplete).
    pub ndirty: u64,
    /// Set when `since` bits were set for pages that may have changed
    /// without a write the tracker sees (a range populated, dropped or
    /// lazily freed): user space then walks the bitmaps instead of trusting
    /// the list.
    pub dirty_spans: u64,
    /// Bumped when someone may have written the target's memory without a
    /// fault in its context (another process's `process_vm_writev` or
    /// `PTRACE_POKE*`, a write-open of a `/proc/PID/mem`): the next request
    /// scans for written pages.
    pub gup: u64,
    /// Set when the target itself can have its memory written without
    /// faults from now on (`io_uring`, AIO, `O_DIRECT`, its own
    /// userfaultfd): every request scans.
    pub gup_sticky: u64,
    /// `gup` when user space last scanned for such writes: while it lags,
    /// a restore in BPF cannot trust the dirty set and writes every page.
    pub gup_acked: u64,
    /// Such writes begun and not yet returned (a write may land any time).
    pub gup_inflight: u64,
    /// Set by user space when a write it could not see may have been
    /// re-armed away: requests take everything (no dirty set) until a full
    /// checkpoint re-arms all with nothing else writing.
    pub rescan: u64,
    /// Set when pages may have been written beyond the `DIRTY` list, every
    /// one of them seen by the tracker (a write fault that may have mapped
    /// a whole huge page writable, the list overflowed): user space adds
    /// the tracker's scan to the list, the target held.
    pub scan: u64,
}

/// Key of `TOUCHED`: one 2 MiB chunk of one program image.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ChunkKey {
    pub tgid: u32,
    pub image: u32,
    pub chunk: u64,
}

/// Value of `TOUCHED`: which pages of the chunk were written (`ever`: since
/// the image started; `since`: since the last checkpoint).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Touched {
    pub ever: [u64; 8],
    pub since: [u64; 8],
}

/// One captured range of the target (a row of the region table or of the
/// zero-range table).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Region {
    pub start: u64,
    pub npages: u64,
    /// `R_*`.
    pub flags: u64,
    pub _pad: u64,
}

/// Ring buffer record kinds (`EventHeader::kind`); each has its own struct.
pub const EV_EXEC: u32 = 1;
pub const EV_LAYOUT: u32 = 2;
pub const EV_CHECKPOINT: u32 = 3;
pub const EV_RESTORE: u32 = 4;
pub const EV_CLONE: u32 = 5;

/// `CheckpointEvent::stale`: the region table was stale or torn (nothing
/// usable was saved), or the copy stopped early — the store filled up or
/// the loop ran out of iterations (the first `saved` pages are good).
pub const STALE_LAYOUT: u64 = 1;
pub const STALE_OVERFLOW: u64 = 2;

/// The first 16 bytes of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventHeader {
    /// `EV_*`: which struct the record is.
    pub kind: u32,
    /// The thread group and thread that hit the tracepoint.
    pub tgid: u32,
    pub tid: u32,
    /// `HELD_SIGNAL` when the probe sent SIGSTOP, `HELD_OPEN` when the
    /// target is held in its open: user space finishes the request while
    /// the target is held, then lets it go.
    pub held: u32,
}

/// `EV_EXEC`: the served process called exec (its old image is void), or a
/// process with the name `watch` waits for did (then it is held until user
/// space decides whether to serve it).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub hdr: EventHeader,
}

/// `EV_LAYOUT`: the served process changed its mappings (mmap, munmap,
/// mremap, brk, mprotect). Sent once until user space has reread them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LayoutEvent {
    pub hdr: EventHeader,
    /// `State::layout_seq` after the change.
    pub seq: u64,
    /// The system call's return value.
    pub ret: i64,
}

/// `EV_CHECKPOINT`: a checkpoint request, after the probe's copy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CheckpointEvent {
    pub hdr: EventHeader,
    /// `Config::applied_seq` when the copy began: the region table it walked.
    pub table_seq: u64,
    /// `Config::version` when the copy began (even unless `stale`).
    pub version: u64,
    /// 1: the copy took the `DIRTY` list's pages into the slots `FREE`
    /// names, from its top down (`saved` of them); 0: it walked the region
    /// table into slots `0..saved`.
    pub incremental: u64,
    /// Pages copied into the store (slots `0..saved`, in region-table order).
    pub saved: u64,
    /// Pages `bpf_probe_read_user` could not read (not present, swapped out).
    pub unreadable: u64,
    /// Pages skipped as never written (the touched-page bitmaps).
    pub skipped: u64,
    /// 0, `STALE_LAYOUT` or `STALE_OVERFLOW`.
    pub stale: u64,
    /// Time spent in the probe.
    pub ns: u64,
    /// `State::gup` when the copy began (incremental only).
    pub gup: u64,
}

/// `EV_RESTORE`: a restore request, after the probe's part of it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RestoreEvent {
    pub hdr: EventHeader,
    /// Saved pages BPF wrote back (write path only).
    pub written: u64,
    /// Saved pages BPF could not write; marked `ADDR_FAILED` in `ADDRS`.
    pub write_failed: u64,
    /// Pages of the zero ranges BPF zeroed (write path only).
    pub zeroed: u64,
    /// Write path: zero-range pages BPF could not zero. Otherwise: non-zero
    /// when `ZERO_TODO` overflowed.
    pub zero_failed: u64,
    /// Without the write path: entries of `ZERO_TODO` (zero-range pages
    /// written since the checkpoint, for user space to zero), or `u64::MAX`
    /// when user space must scan the zero ranges itself. 0 otherwise.
    pub zero_todo: u64,
    /// Time spent in the probe.
    pub ns: u64,
    /// 1 when the probe did not (or not completely) do its part — torn
    /// config, another layout than the image's, too many pages for one
    /// loop: user space restores every page and scans the zero ranges.
    pub partial: u64,
    /// The first `DIRTY` entries whose `since` bits the probe cleared, for
    /// user space about to write them back and re-arm them. Only where BPF
    /// writes nothing back: there a `since` bit only keeps a page from
    /// being listed twice.
    pub since_cleared: u64,
}

/// `EV_CLONE`: the served process started a thread (or a child sharing its
/// memory) on a stack of its own; that stack must never be rolled back
/// while the thread lives.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CloneEvent {
    pub hdr: EventHeader,
    /// An address inside the new stack (just below its top).
    pub stack: u64,
    /// The new thread's id.
    pub tid: u64,
}

/// Result slots of the loader self-test program (`SELFTEST_OUT[i]`).
pub const ST_DATA: u32 = 0;
pub const ST_RODATA: u32 = 1;
pub const ST_BSS: u32 = 2;
pub const ST_CALL: u32 = 3;
pub const ST_LOOP: u32 = 4;
pub const ST_HITS: u32 = 5;
pub const ST_SLOTS: u32 = 8;
