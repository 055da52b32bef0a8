//! What the adversarial targets run between a checkpoint and its restore,
//! while they destroy their own memory on purpose: every writable private or
//! shared-anonymous mapping (the brk heap, libc's `.data`/`.bss`, the TLS
//! block, malloc arenas, their own regions) is overwritten, and every byte of
//! it must come back with the restore. Left alone: the live stack, `[vvar]`
//! and `[vdso]`, the executable's own data segment, signal stacks, the rseq
//! area, and whatever a scenario adds to its `Skips`.
//!
//! So nothing here may use what it destroys: no allocation, no thread-local
//! storage, no libc (its state is overwritten too; the copies and fills the
//! compiler inserts go to memfns.rs). System calls are made with the
//! `syscall` instruction; every buffer (the parsed `/proc/self/maps`, the
//! marker paths, the scan results) lives on the main thread's stack, which
//! bpfckpt never captures, so it survives the restore. Everything the caller
//! hands in is a plain value on its stack for the same reason: a `Vec` would
//! be a pointer into the heap being destroyed.
//!
//! Like `sys.rs`, this is one of the modules where `unsafe` lives, each block
//! justified. x86-64 only.

#![allow(dead_code)]

use crate::sys::Region;
use core::arch::asm;
use std::path::Path;

pub const PAGE: u64 = 4096;

const SYS_READ: u64 = 0;
const SYS_WRITE: u64 = 1;
const SYS_CLOSE: u64 = 3;
const SYS_IOCTL: u64 = 16;
const SYS_PREAD64: u64 = 17;
const SYS_MPROTECT: u64 = 10;
const SYS_MUNMAP: u64 = 11;
const SYS_MREMAP: u64 = 25;
const SYS_MADVISE: u64 = 28;
const SYS_NANOSLEEP: u64 = 35;
const SYS_CLOCK_GETTIME: u64 = 228;
const SYS_EXIT_GROUP: u64 = 231;
const SYS_OPENAT: u64 = 257;
const SYS_FACCESSAT: u64 = 269;

const AT_FDCWD: u64 = -100i64 as u64;
const O_RDONLY: u64 = 0;
const O_WRONLY: u64 = 1;
const O_CREAT: u64 = 0o100;
const O_CLOEXEC: u64 = 0o2000000;

/// `PAGEMAP_SCAN` = `_IOWR('f', 16, struct pm_scan_arg)` (96 bytes), Linux >= 6.7.
const PAGEMAP_SCAN: u64 = 0xc060_6610;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// A guard region installed with `MADV_GUARD_INSTALL` (recent kernels;
/// older ones refuse the category, and have no guard regions either, so a
/// scan asks again without it).
pub const PAGE_IS_GUARD: u64 = 1 << 8;
/// The `/proc/PID/pagemap` bit of a guard region.
const PM_GUARD: u64 = 1 << 58;

/// A raw system call.
///
/// # Safety
/// The caller passes arguments the kernel may act on without breaking Rust's
/// guarantees: pointers to live buffers of the sizes given, and memory calls
/// only on memory that no Rust reference covers.
unsafe fn sys(nr: u64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the `syscall` instruction clobbers rcx and r11 (declared) and
    // returns in rax; the arguments are the caller's responsibility.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A NUL-terminated path in a fixed buffer (built before a cycle, read by
/// the raw system calls during it).
#[derive(Clone, Copy)]
pub struct CPath {
    buf: [u8; 256],
}

impl CPath {
    pub fn new(p: &Path) -> Self {
        let b = p.as_os_str().as_encoded_bytes();
        assert!(b.len() < 256 && !b.contains(&0), "bad path {}", p.display());
        let mut buf = [0u8; 256];
        buf[..b.len()].copy_from_slice(b);
        Self { buf }
    }

    pub fn from_bytes(b: &[u8]) -> Self {
        let mut buf = [0u8; 256];
        buf[..b.len()].copy_from_slice(b);
        Self { buf }
    }

    pub fn ptr(&self) -> u64 {
        self.buf.as_ptr() as u64
    }
}

/// Creates `p` as the protocol asks (an `openat` with `O_CREAT`) and closes it.
pub fn create(p: &CPath) -> bool {
    // SAFETY: `p` is a NUL-terminated buffer that outlives the call.
    let fd = unsafe {
        sys(
            SYS_OPENAT,
            [
                AT_FDCWD,
                p.ptr(),
                O_WRONLY | O_CREAT | O_CLOEXEC,
                0o644,
                0,
                0,
            ],
        )
    };
    if fd < 0 {
        return false;
    }
    close(fd);
    true
}

fn close(fd: i64) {
    // SAFETY: closes a descriptor this module opened.
    unsafe { sys(SYS_CLOSE, [fd as u64, 0, 0, 0, 0, 0]) };
}

fn open_ro(p: &[u8]) -> i64 {
    let c = CPath::from_bytes(p);
    // SAFETY: `c` is a NUL-terminated buffer that outlives the call.
    unsafe {
        sys(
            SYS_OPENAT,
            [AT_FDCWD, c.ptr(), O_RDONLY | O_CLOEXEC, 0, 0, 0],
        )
    }
}

pub fn exists(p: &CPath) -> bool {
    // SAFETY: `p` is a NUL-terminated buffer that outlives the call.
    unsafe { sys(SYS_FACCESSAT, [AT_FDCWD, p.ptr(), 0, 0, 0, 0]) == 0 }
}

pub fn now_ns() -> u64 {
    let mut ts = [0u64; 2];
    // SAFETY: `ts` is a timespec-sized buffer on our stack.
    unsafe { sys(SYS_CLOCK_GETTIME, [1, ts.as_mut_ptr() as u64, 0, 0, 0, 0]) };
    ts[0] * 1_000_000_000 + ts[1]
}

pub fn sleep_us(us: u64) {
    let ts = [us / 1_000_000, (us % 1_000_000) * 1000];
    // SAFETY: `ts` is a timespec on our stack; no remainder is asked for.
    unsafe { sys(SYS_NANOSLEEP, [ts.as_ptr() as u64, 0, 0, 0, 0, 0]) };
}

/// Polls for `p` for up to `limit_ns`.
pub fn wait_for(p: &CPath, limit_ns: u64) -> bool {
    let deadline = now_ns() + limit_ns;
    while !exists(p) {
        if now_ns() > deadline {
            return false;
        }
        sleep_us(100);
    }
    true
}

/// Writes `b` to standard output.
pub fn out(b: &[u8]) {
    // SAFETY: `b` is a live buffer of the length given.
    unsafe { sys(SYS_WRITE, [1, b.as_ptr() as u64, b.len() as u64, 0, 0, 0]) };
}

/// A `FAIL` line and exit, without touching anything that may be destroyed.
pub fn die(msg: &[u8]) -> ! {
    out(b"FAIL ");
    out(msg);
    out(b"\n");
    // SAFETY: exit_group takes no pointer and does not return.
    unsafe { sys(SYS_EXIT_GROUP, [1, 0, 0, 0, 0, 0]) };
    unreachable!("exit_group returned")
}

// ---------------------------------------------------------------------------------------
// Memory calls on the target's own regions, usable in a cycle's hooks. They
// return the kernel's result (negative errno) instead of failing: some
// scenarios expect errors.

pub fn mprotect(addr: u64, len: u64, prot: i32) -> i64 {
    // SAFETY: changes the protection of the caller's own mapping; the caller
    // holds no reference into it that is used while it is inaccessible.
    unsafe { sys(SYS_MPROTECT, [addr, len, prot as u64, 0, 0, 0]) }
}

pub fn madvise(addr: u64, len: u64, advice: i32) -> i64 {
    // SAFETY: advice on the caller's own mapping; a discarding advice only
    // loses content the caller gave up.
    unsafe { sys(SYS_MADVISE, [addr, len, advice as u64, 0, 0, 0]) }
}

pub fn mremap(old: u64, old_len: u64, new_len: u64, flags: i32, new_addr: u64) -> i64 {
    // SAFETY: moves or resizes the caller's own mapping; the caller tracks
    // where it went and keeps no reference to the old range.
    unsafe {
        sys(
            SYS_MREMAP,
            [old, old_len, new_len, flags as u64, new_addr, 0],
        )
    }
}

pub fn munmap(addr: u64, len: u64) -> i64 {
    // SAFETY: unmaps the caller's own range, which it gave up.
    unsafe { sys(SYS_MUNMAP, [addr, len, 0, 0, 0, 0]) }
}

/// `mlock` (`flags` = None) or `mlock2(flags)` of the caller's own range.
pub fn mlock(addr: u64, len: u64, flags: Option<u32>) -> i64 {
    // SAFETY: locking changes no memory.
    unsafe {
        match flags {
            None => sys(149, [addr, len, 0, 0, 0, 0]),
            Some(f) => sys(325, [addr, len, u64::from(f), 0, 0, 0]),
        }
    }
}

/// `pread(fd, r, off)` straight into a region of the caller's: the kernel
/// fills its pages (faulting them in itself), not the caller's stores.
pub fn pread_into(fd: i32, r: &Region, off: u64) -> i64 {
    // SAFETY: `r` is the caller's own writable region of `r.len` bytes.
    unsafe {
        sys(
            SYS_PREAD64,
            [fd as u64, r.addr() as u64, r.len as u64, off, 0, 0],
        )
    }
}

/// Writes one word at `addr`, which lies just below a `MAP_GROWSDOWN`
/// mapping of the caller's: the kernel grows the mapping down to it.
pub fn touch_below(addr: u64, val: u64) {
    // SAFETY: the caller passes an address inside the growth area of its
    // own MAP_GROWSDOWN mapping, with nothing else mapped there; the store
    // faults, the kernel extends the mapping, the store completes.
    unsafe { core::ptr::write_volatile(addr as *mut u64, val) };
}

/// Stores `val` into every 8 bytes of `[addr, addr + len)` (`rep stosq`).
///
/// # Safety
/// The range is writable memory of this process that no live Rust
/// reference covers.
unsafe fn stos(addr: u64, len: u64, val: u64) {
    // SAFETY: the caller guarantees the range; rep stosq writes exactly
    // rcx quadwords from rdi upwards (the direction flag is clear per ABI).
    unsafe {
        asm!(
            "rep stosq",
            inout("rcx") len / 8 => _,
            inout("rdi") addr => _,
            in("rax") val,
            options(nostack),
        );
    }
}

/// Overwrites a region of the caller's with `val` (a hook's damage).
pub fn smash(r: &Region, val: u64) {
    // SAFETY: `r` is the caller's own writable region; the caller reads it
    // only after this returns.
    unsafe { stos(r.addr() as u64, (r.len as u64) & !7, val) };
}

/// Writes one 8-byte word at `addr` of a region of the caller's.
pub fn poke(r: &Region, off: usize, val: u64) {
    assert!(off + 8 <= r.len);
    // SAFETY: inside the caller's own writable region.
    unsafe { core::ptr::write_volatile((r.addr() + off) as *mut u64, val) };
}

/// Reads one 8-byte word at `off` of a region of the caller's.
pub fn peek(r: &Region, off: usize) -> u64 {
    assert!(off + 8 <= r.len);
    // SAFETY: inside the caller's own readable region.
    unsafe { core::ptr::read_volatile((r.addr() + off) as *const u64) }
}

// ---------------------------------------------------------------------------------------
// The captured mappings, as this process sees them.

/// Kinds of mappings a checkpoint must capture (ARCHITECTURE.md, "What is
/// captured"), plus the shared memory bpfckpt ought to capture as well.
pub const K_PRIV_ANON: u8 = 1;
/// `MAP_SHARED|MAP_ANONYMOUS`, SysV shared memory, shared hugetlb.
pub const K_SHARED_ANON: u8 = 2;
/// Writable private file mappings (`.data`, private hugetlb, private memfd).
pub const K_FILE_PRIV: u8 = 3;

#[derive(Clone, Copy)]
pub struct Ent {
    pub start: u64,
    pub end: u64,
    pub hash: u64,
    pub kind: u8,
    /// `r`, `w`, `x` as bits 0, 1, 2.
    pub perms: u8,
}

const EMPTY: Ent = Ent {
    start: 0,
    end: 0,
    hash: 0,
    kind: 0,
    perms: 0,
};

/// Enough for the scenario with 20,000 mappings and the process's own.
pub const MAX_MAPS: usize = 24576;

pub struct Table {
    pub n: usize,
    pub e: [Ent; MAX_MAPS],
}

impl Table {
    pub fn new() -> Self {
        Self {
            n: 0,
            e: [EMPTY; MAX_MAPS],
        }
    }
}

fn hex(s: &[u8]) -> u64 {
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => break,
        };
        v = (v << 4) | u64::from(d);
    }
    v
}

/// Which kind of captured mapping a `/proc/self/maps` line is, if any.
fn classify(perms: &[u8], path: &[u8]) -> u8 {
    if perms.len() < 4 || perms[1] != b'w' {
        return 0;
    }
    let special: [&[u8]; 5] = [b"[stack", b"[vvar", b"[vdso]", b"[vsyscall]", b"[uprobes]"];
    if special.iter().any(|s| path.starts_with(s)) {
        return 0;
    }
    if perms[3] == b's' {
        let anon: [&[u8]; 4] = [
            b"/dev/zero (deleted)",
            b"/SYSV",
            b"/anon_hugepage",
            b"[anon_shmem:",
        ];
        return if anon.iter().any(|s| path.starts_with(s)) {
            K_SHARED_ANON
        } else {
            0
        };
    }
    if path.first() == Some(&b'/') {
        K_FILE_PRIV
    } else {
        K_PRIV_ANON
    }
}

fn parse_line(line: &[u8], t: &mut Table) {
    // start-end perms offset dev inode path
    let mut fields = [&line[..0]; 5];
    let mut rest = line;
    for f in fields.iter_mut() {
        while rest.first() == Some(&b' ') {
            rest = &rest[1..];
        }
        let n = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
        *f = &rest[..n];
        rest = &rest[n..];
    }
    while rest.first() == Some(&b' ') {
        rest = &rest[1..];
    }
    let kind = classify(fields[1], rest);
    if kind == 0 || t.n >= MAX_MAPS {
        if t.n >= MAX_MAPS {
            die(b"more mappings than the scorch table holds");
        }
        return;
    }
    let dash = fields[0].iter().position(|&c| c == b'-').unwrap_or(0);
    let p = fields[1];
    t.e[t.n] = Ent {
        start: hex(&fields[0][..dash]),
        end: hex(&fields[0][dash + 1..]),
        hash: 0,
        kind,
        perms: u8::from(p[0] == b'r') | u8::from(p[1] == b'w') << 1 | u8::from(p[2] == b'x') << 2,
    };
    t.n += 1;
}

/// Reads `/proc/self/maps` into `t` (captured kinds only), through `buf`.
pub fn read_maps(t: &mut Table, buf: &mut [u8; 65536]) {
    t.n = 0;
    let fd = open_ro(b"/proc/self/maps\0");
    if fd < 0 {
        die(b"open /proc/self/maps");
    }
    let mut have = 0usize;
    loop {
        // SAFETY: reads into the free tail of our stack buffer.
        let n = unsafe {
            sys(
                SYS_READ,
                [
                    fd as u64,
                    buf[have..].as_mut_ptr() as u64,
                    (buf.len() - have) as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        if n < 0 {
            die(b"read /proc/self/maps");
        }
        have += n as usize;
        let mut used = 0;
        while let Some(nl) = buf[used..have].iter().position(|&c| c == b'\n') {
            parse_line(&buf[used..used + nl], t);
            used += nl + 1;
        }
        buf.copy_within(used..have, 0);
        have -= used;
        if n == 0 {
            break;
        }
        if have == buf.len() {
            die(b"a /proc/self/maps line longer than the buffer");
        }
    }
    close(fd);
}

// ---------------------------------------------------------------------------------------
// Page residency.

#[repr(C)]
#[derive(Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
struct ScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// Calls `f(start, end, categories)` for the runs of pages of
/// `[start, end)` that are in any of the categories `anyof`. Returns false
/// if the kernel refused the scan.
fn scan(pm: i64, start: u64, end: u64, anyof: u64, f: &mut dyn FnMut(u64, u64, u64)) -> bool {
    let mut v = [PageRegion {
        start: 0,
        end: 0,
        categories: 0,
    }; 256];
    let mut at = start;
    while at < end {
        let mut a = ScanArg {
            size: size_of::<ScanArg>() as u64,
            flags: 0,
            start: at,
            end,
            walk_end: 0,
            vec: v.as_mut_ptr() as u64,
            vec_len: v.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: 0,
            category_anyof_mask: anyof,
            return_mask: anyof,
        };
        // SAFETY: the argument and the result vector are live stack buffers
        // of the sizes given.
        let n = unsafe {
            sys(
                SYS_IOCTL,
                [
                    pm as u64,
                    PAGEMAP_SCAN,
                    &mut a as *mut ScanArg as u64,
                    0,
                    0,
                    0,
                ],
            )
        };
        if n < 0 {
            // A kernel without guard regions does not know their category.
            if anyof & PAGE_IS_GUARD != 0 && anyof != PAGE_IS_GUARD {
                return scan(pm, at, end, anyof & !PAGE_IS_GUARD, f);
            }
            return false;
        }
        for r in &v[..n as usize] {
            f(r.start, r.end, r.categories);
        }
        if a.walk_end <= at {
            break;
        }
        at = a.walk_end;
    }
    true
}

/// Pagemap bits of an absent page's entry that a marker sets: swapped, of
/// the last swap type. `PAGEMAP_SCAN` reports such a marker (userfaultfd
/// write protection leaves them, and a serving bpfckpt may arm it) as
/// swapped, though nothing is there.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const SWP_PTE_MARKER: u64 = 31;

/// Calls `f` for the runs of `[s, t)` (a scanned run of categories `cat`)
/// that hold something: markers on absent pages taken out.
fn unmarked_runs(pm: i64, s: u64, t: u64, cat: u64, f: &mut dyn FnMut(u64, u64)) {
    if cat & PAGE_IS_SWAPPED == 0 || cat & PAGE_IS_PRESENT != 0 {
        return f(s, t);
    }
    let mut run = None;
    let mut p = s;
    // A page table's worth of entries per read.
    let mut buf = [0u64; 512];
    while p < t {
        let n = ((t - p) / PAGE).min(buf.len() as u64) as usize;
        // SAFETY: reads at most `n` entries into a local buffer that holds them.
        let got = unsafe {
            sys(
                SYS_PREAD64,
                [
                    pm as u64,
                    buf.as_mut_ptr() as u64,
                    n as u64 * 8,
                    (p / PAGE) * 8,
                    0,
                    0,
                ],
            )
        };
        let n = if got > 0 {
            (got as usize / 8).min(n)
        } else {
            0
        };
        if n == 0 {
            // Unreadable: count the rest as holding something (scorched and
            // hashed, as before markers were told apart).
            break;
        }
        for &e in &buf[..n] {
            let marker = e & PM_PRESENT == 0 && e & PM_SWAPPED != 0 && e & 0x1f == SWP_PTE_MARKER;
            match (marker, run) {
                (false, None) => run = Some(p),
                (true, Some(r)) => {
                    f(r, p);
                    run = None;
                }
                _ => {}
            }
            p += PAGE;
        }
    }
    if p < t && run.is_none() {
        run = Some(p);
    }
    if let Some(r) = run {
        f(r, t);
    }
}

/// The pagemap entry of one page.
fn pagemap_entry(pm: i64, addr: u64) -> u64 {
    let mut e = 0u64;
    // SAFETY: reads 8 bytes into a local.
    unsafe {
        sys(
            SYS_PREAD64,
            [
                pm as u64,
                &mut e as *mut u64 as u64,
                8,
                (addr / PAGE) * 8,
                0,
                0,
            ],
        )
    };
    e
}

// ---------------------------------------------------------------------------------------
// Ranges neither overwritten nor compared (the alternate signal stack,
// other threads' stacks, the kernel-written rseq area, the executable's
// data segment, pages a scenario reserves for itself).

#[derive(Clone, Copy, Default)]
pub struct Skips {
    n: usize,
    r: [(u64, u64); 32],
}

impl Skips {
    pub fn add(&mut self, start: u64, end: u64) {
        assert!(self.n < self.r.len(), "too many skipped ranges");
        self.r[self.n] = (start, end);
        self.n += 1;
    }

    pub fn add_region(&mut self, r: &Region) {
        self.add(r.addr() as u64, (r.addr() + r.len) as u64);
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.r[..self.n].iter().any(|&(s, e)| s < end && start < e)
    }

    fn covers_word(&self, a: u64) -> bool {
        self.r[..self.n].iter().any(|&(s, e)| s < a + 8 && a < e)
    }

    /// Whether the whole page is skipped.
    fn covers_page(&self, page: u64) -> bool {
        self.r[..self.n]
            .iter()
            .any(|&(s, e)| s <= page && page + PAGE <= e)
    }
}

// ---------------------------------------------------------------------------------------
// Hashing what must come back.

/// crc32c, a rotating xor and an or of the 512 words of the page at `p`.
///
/// # Safety
/// `p` is a readable, page-aligned page of this process.
unsafe fn page_sums(p: u64) -> (u64, u64, u64) {
    let (mut crc, mut x, mut or) = (!0u64, 0u64, 0u64);
    // SAFETY: reads exactly the 4096 bytes the caller vouches for.
    unsafe {
        asm!(
            "2:",
            "mov {t}, qword ptr [{p}]",
            "crc32 {c}, {t}",
            "rol {x}, 5",
            "xor {x}, {t}",
            "or {o}, {t}",
            "add {p}, 8",
            "dec {n}",
            "jnz 2b",
            p = inout(reg) p => _,
            n = inout(reg) 512u64 => _,
            c = inout(reg) crc,
            x = inout(reg) x,
            o = inout(reg) or,
            t = out(reg) _,
            options(nostack, readonly),
        );
    }
    (crc, x, or)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A page's contribution to its mapping's hash: 0 for a page of zeros
/// (present or not), else a mix of its address and content.
fn page_digest(page: u64, skips: &Skips) -> u64 {
    if !skips.overlaps(page, page + PAGE) {
        // SAFETY: callers pass pages of current readable mappings that are
        // present (or file-backed), never guard pages.
        let (crc, x, or) = unsafe { page_sums(page) };
        if or == 0 {
            return 0;
        }
        return mix(page ^ crc ^ x.rotate_left(32));
    }
    // Slow path: words in a skipped range count as zero.
    let (mut x, mut or) = (0u64, 0u64);
    let mut a = page;
    while a < page + PAGE {
        if !skips.covers_word(a) {
            // SAFETY: as above, one word of that page.
            let w = unsafe { core::ptr::read_volatile(a as *const u64) };
            x = x.rotate_left(5) ^ w ^ mix(a);
            or |= w;
        }
        a += 8;
    }
    if or == 0 { 0 } else { mix(page ^ x) }
}

/// Hash of one captured mapping: the sum of its pages' digests. Private
/// anonymous pages that are absent read as zero and are not touched (a read
/// would map the zero page and change what bpfckpt sees); other kinds are
/// read whole. Guard pages are never read.
fn hash_mapping(e: &Ent, pm: i64, skips: &Skips) -> (u64, u64) {
    let mut h = 0u64;
    let mut bytes = 0u64;
    let mut add = |s: u64, t: u64| {
        let mut p = s;
        while p < t {
            if !skips.covers_page(p) {
                h = h.wrapping_add(page_digest(p, skips));
                bytes += PAGE;
            }
            p += PAGE;
        }
    };
    if e.kind == K_PRIV_ANON {
        let ok = scan(
            pm,
            e.start,
            e.end,
            PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_GUARD,
            &mut |s, t, cat| {
                if cat & PAGE_IS_GUARD == 0 {
                    unmarked_runs(pm, s, t, cat, &mut add);
                }
            },
        );
        if !ok {
            die(b"PAGEMAP_SCAN refused (Linux >= 6.7 needed)");
        }
    } else {
        each_unguarded(e, pm, &mut add);
    }
    (h, bytes)
}

/// Calls `f` for the runs of `e`'s pages that are not guard pages.
fn each_unguarded(e: &Ent, pm: i64, f: &mut dyn FnMut(u64, u64)) {
    let mut at = e.start;
    // A kernel that cannot scan (hugetlb on some kernels) has no guards there.
    scan(pm, e.start, e.end, PAGE_IS_GUARD, &mut |s, t, _| {
        if s > at {
            f(at, s);
        }
        at = t;
    });
    if at < e.end {
        f(at, e.end);
    }
}

// ---------------------------------------------------------------------------------------
// The scorch.

/// Mappings larger than this are reservations: only their present pages
/// and a sample of the rest are overwritten (writing 64 GiB is not an option).
const WHOLE_LIMIT: u64 = 1 << 30;
const SAMPLE_STRIDE: u64 = 16 << 20;

/// What the scorch writes into every word in cycle `c` (recognisable in a
/// report: a page holding it was never restored).
pub fn scorch_value(c: u32) -> u64 {
    0x5c0c_5c0c_0000_0000 | u64::from(c & 0xffff) << 16
}

fn scorch_range(s: u64, t: u64, val: u64, skips: &Skips) -> u64 {
    let mut pages = 0;
    let mut p = s;
    while p < t {
        if skips.overlaps(p, p + PAGE) {
            let mut a = p;
            while a < p + PAGE {
                if !skips.covers_word(a) {
                    // SAFETY: a word of a writable captured mapping outside
                    // every skipped range; nothing of ours lives there.
                    unsafe { core::ptr::write_volatile(a as *mut u64, val) };
                }
                a += 8;
            }
            pages += 1;
            p += PAGE;
            continue;
        }
        // The longest run from p without a skipped range.
        let mut q = p + PAGE;
        while q < t && !skips.overlaps(q, q + PAGE) {
            q += PAGE;
        }
        // SAFETY: writable captured mapping, no skipped range, no guard
        // page (callers exclude them); no Rust reference of ours is there.
        unsafe { stos(p, q - p, val) };
        pages += (q - p) / PAGE;
        p = q;
    }
    pages
}

fn scorch_mapping(e: &Ent, pm: i64, val: u64, skips: &Skips) -> u64 {
    let mut pages = 0;
    if e.kind == K_PRIV_ANON && e.end - e.start > WHOLE_LIMIT {
        scan(
            pm,
            e.start,
            e.end,
            PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_GUARD,
            &mut |s, t, cat| {
                if cat & PAGE_IS_GUARD == 0 {
                    unmarked_runs(pm, s, t, cat, &mut |a, b| {
                        pages += scorch_range(a, b, val, skips)
                    });
                }
            },
        );
        let mut p = e.start;
        while p < e.end {
            if pagemap_entry(pm, p) & PM_GUARD == 0 {
                pages += scorch_range(p, p + PAGE, val, skips);
            }
            p += SAMPLE_STRIDE;
        }
    } else {
        each_unguarded(e, pm, &mut |s, t| {
            pages += scorch_range(s, t, val, skips);
        });
    }
    pages
}

// ---------------------------------------------------------------------------------------
// One cycle.

/// The four marker paths, as raw paths.
#[derive(Clone, Copy)]
pub struct Wire {
    pub ckpt_req: CPath,
    pub ckpt_done: CPath,
    pub restore_req: CPath,
    pub restore_done: CPath,
}

impl Wire {
    pub fn new(m: &crate::proto::Markers) -> Self {
        Self {
            ckpt_req: CPath::new(&m.ckpt_req),
            ckpt_done: CPath::new(&m.ckpt_done),
            restore_req: CPath::new(&m.restore_req),
            restore_done: CPath::new(&m.restore_done),
        }
    }
}

/// Where a cycle's hook is called.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Phase {
    /// After the mappings were hashed, right before the checkpoint request.
    BeforeCheckpoint,
    /// Once `checkpoint_complete` exists, before the scorch.
    AfterCheckpoint,
    /// After the scorch, right before the restore request.
    BeforeRestore,
    /// Once `restore_complete` exists, before the mappings are hashed again.
    AfterRestore,
}

/// Register state held live across both requests (`fpu00`, `mmx00`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Regs {
    None,
    /// ymm0-15, four x87 values, MXCSR and the x87 control word.
    Avx,
    /// mm0-7.
    Mmx,
}

/// Everything a cycle needs, by value (it must not point into the heap).
#[derive(Clone, Copy)]
pub struct Plan {
    pub wire: Wire,
    pub skips: Skips,
    /// Overwrite every captured mapping between checkpoint and restore.
    pub scorch: bool,
    pub cycle: u32,
    pub limit_ns: u64,
    pub regs: Regs,
}

pub const MAX_DIFFS: usize = 8;

/// What a cycle saw.
#[derive(Clone, Copy, Default)]
pub struct Report {
    /// Captured mappings hashed before the checkpoint, and their bytes.
    pub hashed: u32,
    pub hashed_bytes: u64,
    /// Of those, how many were found unchanged in layout after the restore
    /// (and so compared), and how many differed in content.
    pub compared: u32,
    pub layout_changed: u32,
    pub diffs: u32,
    pub diff: [(u64, u64); MAX_DIFFS],
    pub scorched_maps: u32,
    pub scorched_pages: u64,
    /// With `Regs`: registers that did not hold their values across the
    /// checkpoint request and across the restore request (bit 0, bit 1).
    pub regs_lost: u32,
}

fn hex_into(buf: &mut [u8], at: &mut usize, v: u64) {
    let mut i = 60i32;
    let mut started = false;
    while i >= 0 {
        let d = ((v >> i) & 15) as u8;
        if d != 0 || started || i == 0 {
            started = true;
            buf[*at] = if d < 10 { b'0' + d } else { b'a' + d - 10 };
            *at += 1;
        }
        i -= 4;
    }
}

/// One checkpoint/restore cycle with the whole address space destroyed in
/// between: hash the captured mappings, checkpoint, (hook), scorch, (hook),
/// restore, (hook), hash again and compare mapping by mapping. `hook` runs
/// in the same conditions: raw calls of this module and the caller's
/// stack only. Timeouts end the process with a `FAIL` line.
pub fn cycle(plan: &Plan, hook: &mut dyn FnMut(Phase)) -> Report {
    let mut rep = Report::default();
    let mut buf = [0u8; 65536];
    let mut pre = Table::new();
    let mut cur = Table::new();
    let pm = open_ro(b"/proc/self/pagemap\0");
    if pm < 0 {
        die(b"open /proc/self/pagemap");
    }
    read_maps(&mut pre, &mut buf);
    for i in 0..pre.n {
        let (h, b) = hash_mapping(&pre.e[i], pm, &plan.skips);
        pre.e[i].hash = h;
        rep.hashed += 1;
        rep.hashed_bytes += b;
    }
    hook(Phase::BeforeCheckpoint);
    match request(&plan.wire.ckpt_req, &plan.wire.ckpt_done, plan, 1) {
        Ok(lost) => rep.regs_lost |= lost,
        Err(()) => die(b"no checkpoint_complete in time"),
    }
    hook(Phase::AfterCheckpoint);
    if plan.scorch {
        read_maps(&mut cur, &mut buf);
        let val = scorch_value(plan.cycle);
        for i in 0..cur.n {
            let n = scorch_mapping(&cur.e[i], pm, val, &plan.skips);
            if n > 0 {
                rep.scorched_maps += 1;
                rep.scorched_pages += n;
            }
        }
    }
    hook(Phase::BeforeRestore);
    match request(&plan.wire.restore_req, &plan.wire.restore_done, plan, 2) {
        Ok(lost) => rep.regs_lost |= lost,
        Err(()) => die(b"no restore_complete in time"),
    }
    hook(Phase::AfterRestore);
    read_maps(&mut cur, &mut buf);
    let mut j = 0;
    for i in 0..pre.n {
        let e = pre.e[i];
        while j < cur.n && cur.e[j].end <= e.start {
            j += 1;
        }
        let same = j < cur.n && {
            let c = &cur.e[j];
            c.start == e.start && c.end == e.end && c.kind == e.kind && c.perms == e.perms
        };
        if !same {
            rep.layout_changed += 1;
            continue;
        }
        rep.compared += 1;
        let (h, _) = hash_mapping(&cur.e[j], pm, &plan.skips);
        if h != e.hash {
            if (rep.diffs as usize) < MAX_DIFFS {
                rep.diff[rep.diffs as usize] = (e.start, e.end);
            }
            rep.diffs += 1;
            // Said at once, with nothing but a system call: the process may
            // not survive what was not restored.
            let mut line = [0u8; 64];
            let mut at = 0;
            for &c in b"RAWDIFF " {
                line[at] = c;
                at += 1;
            }
            hex_into(&mut line, &mut at, e.start);
            line[at] = b'-';
            at += 1;
            hex_into(&mut line, &mut at, e.end);
            line[at] = b'\n';
            at += 1;
            out(&line[..at]);
        }
    }
    close(pm);
    rep
}

/// Creates `req` and waits for `done`; with `plan.regs`, while registers
/// hold known values the whole time. Returns `bit` if they changed.
fn request(req: &CPath, done: &CPath, plan: &Plan, bit: u32) -> Result<u32, ()> {
    if plan.regs == Regs::None {
        if !create(req) || !wait_for(done, plan.limit_ns) {
            return Err(());
        }
        return Ok(0);
    }
    let mut vin = RegFile::new(plan.cycle);
    let ts = [0u64, 100_000];
    vin.req = req.ptr();
    vin.done = done.ptr();
    vin.ts = ts.as_ptr() as u64;
    let mut vout = RegFile::zero();
    // 100 us per round.
    let rounds = plan.limit_ns / 100_000 + 1;
    let left = if plan.regs == Regs::Avx {
        held_avx(&vin, &mut vout, rounds)
    } else {
        held_mmx(&vin, &mut vout, rounds)
    };
    if left == 0 {
        return Err(());
    }
    let same = if plan.regs == Regs::Avx {
        vin.y == vout.y && vin.st == vout.st && vin.mxcsr == vout.mxcsr && vin.fcw == vout.fcw
    } else {
        vin.y[..8] == vout.y[..8]
    };
    Ok(if same { 0 } else { bit })
}

/// Register values in memory, and the request's arguments for the loop.
#[repr(C)]
struct RegFile {
    /// ymm0-15 (4 words each) or mm0-7 (the first 8 words).
    y: [u64; 64],
    /// st(0)-st(3) as f64 bit patterns.
    st: [u64; 4],
    mxcsr: u32,
    fcw: u16,
    _pad: u16,
    /// Offsets 552, 560, 568: request path, answer path, 100 us timespec
    /// (inputs); saved MXCSR and control word (outputs).
    req: u64,
    done: u64,
    ts: u64,
}

impl RegFile {
    fn zero() -> Self {
        Self {
            y: [0; 64],
            st: [0; 4],
            mxcsr: 0,
            fcw: 0,
            _pad: 0,
            req: 0,
            done: 0,
            ts: 0,
        }
    }

    fn new(cycle: u32) -> Self {
        let mut r = Self::zero();
        for (i, w) in r.y.iter_mut().enumerate() {
            *w = mix(0xf00d ^ (i as u64) << 8 ^ u64::from(cycle));
        }
        for (i, w) in r.st.iter_mut().enumerate() {
            *w = (1.0f64 / (3.0 + i as f64 + f64::from(cycle))).to_bits();
        }
        // Round toward zero and flush to zero (not the defaults 0x1f80/0x37f).
        r.mxcsr = 0xff80;
        r.fcw = 0x0f7f;
        r
    }
}

const _: () = assert!(core::mem::offset_of!(RegFile, req) == 552);
const _: () = assert!(size_of::<RegFile>() == 576);

/// The request loop in assembly, with r12 = the `RegFile` in, r13 = the
/// `RegFile` out, r15 = rounds left: openat(O_CREAT) of the request, then
/// faccessat of the answer every 100 us. Leaves r15 = 0 on a timeout or a
/// failed openat. Only rax, rcx, rdx, rsi, rdi, r10 and r11 are used.
macro_rules! request_loop {
    () => {
        concat!(
            "mov eax, 257\n",
            "mov rdi, -100\n",
            "mov rsi, qword ptr [r12 + 552]\n",
            "mov edx, 0x80041\n",
            "mov r10d, 0x1a4\n",
            "syscall\n",
            "test rax, rax\n",
            "js 3f\n",
            "mov rdi, rax\n",
            "mov eax, 3\n",
            "syscall\n",
            "2:\n",
            "mov eax, 269\n",
            "mov rdi, -100\n",
            "mov rsi, qword ptr [r12 + 560]\n",
            "xor edx, edx\n",
            "xor r10d, r10d\n",
            "syscall\n",
            "test rax, rax\n",
            "jz 4f\n",
            "mov eax, 35\n",
            "mov rdi, qword ptr [r12 + 568]\n",
            "xor esi, esi\n",
            "syscall\n",
            "dec r15\n",
            "jnz 2b\n",
            "3:\n",
            "xor r15d, r15d\n",
            "4:\n",
        )
    };
}

fn held_avx(vin: &RegFile, vout: &mut RegFile, rounds: u64) -> u64 {
    let mut left = rounds;
    // SAFETY: r12/r13 point to live RegFiles (inputs read, outputs written
    // at the offsets checked above); the paths and timespec they name live
    // on our stack. The x87 stack is balanced (4 loads, 4 stores), MXCSR
    // and the control word are put back, every other register used is
    // declared clobbered. The CPU has AVX (x86-64-v3 machines; the test
    // checks /proc/cpuinfo before asking for this scenario).
    unsafe {
        asm!(
            "fnstcw word ptr [r13 + 556]",
            "stmxcsr dword ptr [r13 + 552]",
            "vmovdqu ymm0, ymmword ptr [r12 + 0]",
            "vmovdqu ymm1, ymmword ptr [r12 + 32]",
            "vmovdqu ymm2, ymmword ptr [r12 + 64]",
            "vmovdqu ymm3, ymmword ptr [r12 + 96]",
            "vmovdqu ymm4, ymmword ptr [r12 + 128]",
            "vmovdqu ymm5, ymmword ptr [r12 + 160]",
            "vmovdqu ymm6, ymmword ptr [r12 + 192]",
            "vmovdqu ymm7, ymmword ptr [r12 + 224]",
            "vmovdqu ymm8, ymmword ptr [r12 + 256]",
            "vmovdqu ymm9, ymmword ptr [r12 + 288]",
            "vmovdqu ymm10, ymmword ptr [r12 + 320]",
            "vmovdqu ymm11, ymmword ptr [r12 + 352]",
            "vmovdqu ymm12, ymmword ptr [r12 + 384]",
            "vmovdqu ymm13, ymmword ptr [r12 + 416]",
            "vmovdqu ymm14, ymmword ptr [r12 + 448]",
            "vmovdqu ymm15, ymmword ptr [r12 + 480]",
            "fld qword ptr [r12 + 512]",
            "fld qword ptr [r12 + 520]",
            "fld qword ptr [r12 + 528]",
            "fld qword ptr [r12 + 536]",
            "ldmxcsr dword ptr [r12 + 544]",
            "fldcw word ptr [r12 + 548]",
            request_loop!(),
            "fnstcw word ptr [r13 + 548]",
            "stmxcsr dword ptr [r13 + 544]",
            "fstp qword ptr [r13 + 536]",
            "fstp qword ptr [r13 + 528]",
            "fstp qword ptr [r13 + 520]",
            "fstp qword ptr [r13 + 512]",
            "fldcw word ptr [r13 + 556]",
            "ldmxcsr dword ptr [r13 + 552]",
            "vmovdqu ymmword ptr [r13 + 0], ymm0",
            "vmovdqu ymmword ptr [r13 + 32], ymm1",
            "vmovdqu ymmword ptr [r13 + 64], ymm2",
            "vmovdqu ymmword ptr [r13 + 96], ymm3",
            "vmovdqu ymmword ptr [r13 + 128], ymm4",
            "vmovdqu ymmword ptr [r13 + 160], ymm5",
            "vmovdqu ymmword ptr [r13 + 192], ymm6",
            "vmovdqu ymmword ptr [r13 + 224], ymm7",
            "vmovdqu ymmword ptr [r13 + 256], ymm8",
            "vmovdqu ymmword ptr [r13 + 288], ymm9",
            "vmovdqu ymmword ptr [r13 + 320], ymm10",
            "vmovdqu ymmword ptr [r13 + 352], ymm11",
            "vmovdqu ymmword ptr [r13 + 384], ymm12",
            "vmovdqu ymmword ptr [r13 + 416], ymm13",
            "vmovdqu ymmword ptr [r13 + 448], ymm14",
            "vmovdqu ymmword ptr [r13 + 480], ymm15",
            "vzeroupper",
            in("r12") vin as *const RegFile,
            in("r13") vout as *mut RegFile,
            inout("r15") left,
            clobber_abi("C"),
        );
    }
    left
}

fn held_mmx(vin: &RegFile, vout: &mut RegFile, rounds: u64) -> u64 {
    let mut left = rounds;
    // SAFETY: as in held_avx; the MMX registers alias the x87 stack, which
    // `emms` leaves empty again as the ABI requires.
    unsafe {
        asm!(
            "movq mm0, qword ptr [r12 + 0]",
            "movq mm1, qword ptr [r12 + 8]",
            "movq mm2, qword ptr [r12 + 16]",
            "movq mm3, qword ptr [r12 + 24]",
            "movq mm4, qword ptr [r12 + 32]",
            "movq mm5, qword ptr [r12 + 40]",
            "movq mm6, qword ptr [r12 + 48]",
            "movq mm7, qword ptr [r12 + 56]",
            request_loop!(),
            "movq qword ptr [r13 + 0], mm0",
            "movq qword ptr [r13 + 8], mm1",
            "movq qword ptr [r13 + 16], mm2",
            "movq qword ptr [r13 + 24], mm3",
            "movq qword ptr [r13 + 32], mm4",
            "movq qword ptr [r13 + 40], mm5",
            "movq qword ptr [r13 + 48], mm6",
            "movq qword ptr [r13 + 56], mm7",
            "emms",
            in("r12") vin as *const RegFile,
            in("r13") vout as *mut RegFile,
            inout("r15") left,
            clobber_abi("C"),
        );
    }
    left
}

/// Runs `f` on another stack: the top of `stack`, a region of ours (as a
/// coroutine or green-thread runtime does), then comes back.
pub fn on_stack(stack: &Region, f: &mut dyn FnMut()) {
    extern "C" fn trampoline(arg: *mut u8) {
        // SAFETY: `arg` is the `&mut dyn FnMut()` below, alive on the
        // caller's stack for the whole call.
        let f = unsafe { &mut *(arg as *mut &mut dyn FnMut()) };
        f();
    }
    let mut f = f;
    let top = (stack.addr() + stack.len) & !15;
    // SAFETY: rsp moves to the 16-byte aligned top of a writable region of
    // ours that nothing else uses while the call runs, and back (r12 is
    // callee-saved, so the call keeps the old rsp there); the trampoline
    // follows the C ABI and aborts rather than unwinding through here.
    unsafe {
        asm!(
            "mov r12, rsp",
            "mov rsp, {top}",
            "call {t}",
            "mov rsp, r12",
            top = in(reg) top,
            t = in(reg) trampoline as extern "C" fn(*mut u8),
            in("rdi") &mut f as *mut &mut dyn FnMut() as *mut u8,
            out("r12") _,
            clobber_abi("C"),
        );
    }
}

// ---------------------------------------------------------------------------------------
// What the scorch must leave alone, found before the first cycle.

/// The rseq area glibc registers for the main thread: the kernel writes the
/// current CPU there and follows its critical-section pointer on every
/// preemption, so it can be neither overwritten nor compared.
#[cfg(target_env = "gnu")]
pub fn rseq_area() -> Option<(u64, u64)> {
    unsafe extern "C" {
        static __rseq_offset: isize;
        static __rseq_size: u32;
    }
    // SAFETY: glibc (>= 2.35) exports both as constants set at start-up.
    let (off, size) = unsafe { (__rseq_offset, __rseq_size) };
    if size == 0 {
        return None;
    }
    let tp: u64;
    // SAFETY: on x86-64 glibc, fs:0 holds the thread control block's own
    // address (the thread pointer).
    unsafe { asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly)) };
    let start = tp.wrapping_add(off as u64);
    Some((start, start + 32))
}

#[cfg(not(target_env = "gnu"))]
pub fn rseq_area() -> Option<(u64, u64)> {
    None
}

/// The alternate signal stack (Rust's runtime installs one for the main
/// thread): a stack, live while a handler runs on it, never captured.
pub fn sigaltstack_range() -> Option<(u64, u64)> {
    // SAFETY: a zeroed stack_t is a valid output buffer; no new stack is set.
    let mut ss: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: queries only (the new-stack argument is null).
    let rc = unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) };
    if rc != 0 || ss.ss_flags & libc::SS_DISABLE != 0 || ss.ss_sp.is_null() {
        return None;
    }
    let s = ss.ss_sp as u64;
    Some((s, s + ss.ss_size as u64))
}

/// The writable mappings of the executable file itself (its data segment,
/// which holds the GOT: a static binary may leave it writable, and the
/// code the scorch runs jumps through it).
pub fn own_image() -> Vec<(u64, u64)> {
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    let exe = exe.to_string_lossy();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f.first()?.split_once('-')?;
            let writable = f.get(1)?.as_bytes().get(1) == Some(&b'w');
            (writable && f.get(5) == Some(&&*exe)).then(|| {
                (
                    u64::from_str_radix(a, 16).unwrap_or(0),
                    u64::from_str_radix(b, 16).unwrap_or(0),
                )
            })
        })
        .collect()
}

/// The skips every cycle needs: the rseq area, the signal stack and the
/// executable's own data segment.
pub fn default_skips() -> Skips {
    let mut s = Skips::default();
    for (a, b) in own_image() {
        s.add(a, b);
    }
    if let Some((a, b)) = rseq_area() {
        s.add(a, b);
    }
    if let Some((a, b)) = sigaltstack_range() {
        s.add(a, b);
    }
    s
}
