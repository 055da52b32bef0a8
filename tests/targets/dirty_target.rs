//! Dirty-tracking target: `dirty-target SCENARIO --dir DIR --cycles N`.
//!
//! Keeps a set of memory regions, fills them, and runs checkpoint/restore
//! cycles in which the scenario changes memory in one way between the
//! checkpoint and the restore, and sometimes in another way between the
//! restore and the next checkpoint (which that checkpoint must then take
//! in). Before each checkpoint it hashes every page of every region; after
//! the restore every page must hash the same again (every byte verified).
//! Prints `PASS SCENARIO cycles=N pages=P` or `FAIL ...`.
//!
//! Scenarios:
//! - `steady`: a few random pages dirtied per cycle, sometimes a run of
//!   them, sometimes none; every fifth cycle two checkpoints in a row.
//! - `read`: `read()` from a pipe into present pages and into pages never
//!   touched (absent at the checkpoint).
//! - `foreign`: a child process writes into the target with
//!   `process_vm_writev` (no fault in the target's context), into present
//!   and absent pages, before the restore and before the next checkpoint.
//! - `fork`: the target forks between the requests (its pages become
//!   copy-on-write) and its child writes its own copies.
//! - `exec`: halfway, the target executes itself again and runs the rest
//!   of the cycles in the new program image (`exec-rest`).
//! - `grow`: after the checkpoint a new mapping is made and written, and a
//!   region grows over a `PROT_NONE` tail (which must read as zero again).
//! - `mprotect`: a region dirtied and made read-only before the restore;
//!   another read-only at the checkpoint, made writable and written.
//! - `mprotect-file`: a private file mapping (its pages written: the
//!   process's own copies), read-only at the checkpoint, made writable and
//!   written by another process with `process_vm_writev` before the
//!   restore, read-only again after it.
//! - `thp`: a 2 MiB-aligned region with `MADV_HUGEPAGE`; and another,
//!   untouched before the first checkpoint, in a new 2 MiB block of which
//!   each cycle writes a few pages (the first write may map a whole huge
//!   page, writable all over: the others do not fault).
//!
//! After the changes of each cycle that its restore must undo (before the
//! restore) it prints `DIRTIED pages=P blocks=B`: the pages that differ
//! from the checkpoint, and the 2 MiB-aligned blocks (wholly inside a
//! region, so that a transparent huge page may back them) that hold them,
//! for the expectations to bound what the restore may write.
//!
//! With the word `traced`, a child attaches to the target with ptrace
//! first (as a debugger would) and stays attached.
//!
//! Every hash array lives on the stack, which no restore rolls back;
//! nothing is allocated between a checkpoint and its restore.

#[path = "../src/proto.rs"]
mod proto;
#[path = "../src/sys.rs"]
mod sys;

use proto::{Markers, fail, fill};
use sys::Region;

const PAGE: usize = 4096;
/// Pages hashed at most (the hash arrays are on the stack).
const MAX_PAGES: usize = 8192;

/// A tiny deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The regions verified, at most 8 (a fixed array: no allocation).
struct Mem {
    regions: [Option<Region>; 8],
    /// `(region, page)`: that region's pages from `page` on are known to
    /// be zero and are not read (a read would map the zero page, and the
    /// next write would no longer fault on an absent page).
    unread: Option<(usize, usize)>,
}

impl Mem {
    fn new() -> Self {
        Self {
            regions: [None; 8],
            unread: None,
        }
    }

    fn add(&mut self, r: Region) -> usize {
        let i = self
            .regions
            .iter()
            .position(Option::is_none)
            .expect("room for a region");
        self.regions[i] = Some(r);
        i
    }

    fn get(&self, i: usize) -> Region {
        self.regions[i].expect("region")
    }

    /// Hashes every page of every region into `out`; the number of pages.
    fn hash(&self, out: &mut [u64; MAX_PAGES]) -> usize {
        let mut n = 0;
        for (ri, r) in self.regions.iter().enumerate() {
            let Some(r) = r else { continue };
            for (p, page) in r.bytes().chunks(PAGE).enumerate() {
                if n == MAX_PAGES {
                    fail("more pages than the hash arrays hold");
                }
                out[n] = if self.is_unread(ri, p) {
                    hash_page(&[0u8; PAGE])
                } else {
                    hash_page(page)
                };
                n += 1;
            }
        }
        n
    }

    fn is_unread(&self, region: usize, page: usize) -> bool {
        self.unread.is_some_and(|(r, p)| r == region && page >= p)
    }

    /// Fails naming the first page that differs from `want`.
    fn verify(&self, want: &[u64; MAX_PAGES], what: &str, cycle: u32) {
        let mut n = 0;
        for (ri, r) in self.regions.iter().enumerate() {
            let Some(r) = r else { continue };
            for (p, page) in r.bytes().chunks(PAGE).enumerate() {
                if !self.is_unread(ri, p) && hash_page(page) != want[n] {
                    fail(&format!(
                        "cycle {cycle} ({what}): region {ri} page {p} ({:#x}) differs from the checkpoint",
                        r.addr() + p * PAGE
                    ));
                }
                n += 1;
            }
        }
    }
}

/// What changed since `want` was hashed, as `(pages, blocks)`. Only reads
/// (and the results live on the stack, which no restore rolls back).
fn dirtied(mem: &Mem, want: &[u64; MAX_PAGES]) -> (usize, usize) {
    const BLOCK: usize = 2 << 20;
    let (mut pages, mut blocks, mut last) = (0, 0, usize::MAX);
    let mut n = 0;
    for (ri, r) in mem.regions.iter().enumerate() {
        let Some(r) = r else { continue };
        for (p, page) in r.bytes().chunks(PAGE).enumerate() {
            if !mem.is_unread(ri, p) && hash_page(page) != want[n] {
                pages += 1;
                let a = r.addr() + p * PAGE;
                let b = a / BLOCK;
                let inside = b * BLOCK >= r.addr() && (b + 1) * BLOCK <= r.addr() + r.len;
                if inside && b != last {
                    blocks += 1;
                    last = b;
                }
            }
            n += 1;
        }
    }
    (pages, blocks)
}

/// Printed after the restore: nothing is allocated between the requests.
fn report_dirtied((pages, blocks): (usize, usize)) {
    println!("DIRTIED pages={pages} blocks={blocks}");
}

fn hash_page(page: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in page.chunks_exact(8) {
        h ^= u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        h = h.wrapping_mul(0x0100_0000_01b3).rotate_left(17);
    }
    h
}

/// Writes a new pattern over page `p` of `r`.
fn dirty_page(mut r: Region, p: usize, seed: u64) {
    let off = (p % (r.len / PAGE)) * PAGE;
    fill(&mut r.bytes_mut()[off..off + PAGE], seed);
}

/// One checkpoint/restore cycle: `between` runs between the requests,
/// `after` between the restore and the next cycle's checkpoint.
fn cycle(m: &Markers, mem: &Mem, c: u32, between: &mut dyn FnMut(), after: &mut dyn FnMut()) {
    let mut want = [0u64; MAX_PAGES];
    mem.hash(&mut want);
    m.checkpoint();
    between();
    let d = dirtied(mem, &want);
    m.restore();
    mem.verify(&want, "restore", c);
    report_dirtied(d);
    after();
}

fn main() {
    let a = proto::args();
    let Some(scenario) = a.words.first().cloned() else {
        fail("usage: dirty-target SCENARIO --dir DIR --cycles N");
    };
    let m = Markers::new(&a.dir);
    // Standard output's buffer is allocated now, before the first request.
    println!("dirty-target {scenario}");
    if a.words.iter().any(|w| w == "traced") {
        // A debugger attached: bpfckpt must not inject, and say so.
        sys::traced_by_child();
    }
    let pages = match scenario.as_str() {
        "steady" => steady(&m, a.cycles),
        "read" => read(&m, a.cycles),
        "foreign" => foreign(&m, a.cycles),
        "fork" => fork(&m, a.cycles),
        "exec" => exec(&m, &a.dir, a.cycles),
        "exec-rest" => steady(&m, a.cycles),
        "grow" => grow(&m, a.cycles),
        "mprotect" => mprotect(&m, a.cycles),
        "mprotect-file" => mprotect_file(&m, a.cycles),
        "thp" => thp(&m, a.cycles),
        other => fail(&format!("unknown scenario {other}")),
    };
    println!("PASS {scenario} cycles={} pages={pages}", a.cycles);
}

/// A 16 MiB anonymous region, every page written.
fn big() -> Region {
    let mut r = sys::mmap_anon(16 << 20, false, None);
    fill(r.bytes_mut(), 0xb16);
    r
}

fn steady(m: &Markers, cycles: u32) -> usize {
    let mut mem = Mem::new();
    let b = mem.add(big());
    let mut rng = Rng(0x5eed);
    for c in 0..cycles {
        let r = mem.get(b);
        let k = match c % 7 {
            3 => 0,
            _ => 1 + rng.below(32),
        };
        let run = c % 4 == 1;
        let (p0, s0) = (rng.below(r.len / PAGE), rng.next());
        if c % 5 == 4 {
            // Two checkpoints in a row: the restore goes to the second
            // (the first one's answer removed, as the protocol asks).
            m.checkpoint();
            m.clean();
            for i in 0..k {
                dirty_page(r, rng.below(r.len / PAGE), s0 ^ i as u64);
            }
        }
        let mut between = || {
            for i in 0..k {
                dirty_page(r, rng.below(r.len / PAGE), s0 ^ i as u64);
            }
            if run {
                for i in 0..64 {
                    dirty_page(r, p0 + i, s0 + i as u64);
                }
            }
        };
        cycle(m, &mem, c, &mut between, &mut || {});
    }
    total_pages(&mem)
}

fn total_pages(mem: &Mem) -> usize {
    mem.regions.iter().flatten().map(|r| r.len / PAGE).sum()
}

/// A pipe holding one page of pattern `seed`, ready to be read.
fn pipe_with(seed: u64) -> std::io::PipeReader {
    use std::io::Write;
    let (rd, mut wr) = std::io::pipe().expect("pipe");
    let mut page = [0u8; PAGE];
    fill(&mut page, seed);
    wr.write_all(&page).expect("fill the pipe");
    rd
}

fn read(m: &Markers, cycles: u32) -> usize {
    use std::os::fd::AsRawFd;
    let mut mem = Mem::new();
    let b = mem.add(big());
    // Never touched before the first checkpoint: absent pages.
    let z = mem.add(sys::mmap_anon(256 * PAGE, false, None));
    let mut rng = Rng(0x4ead);
    for c in 0..cycles {
        let (rb, rz) = (mem.get(b), mem.get(z));
        let (pb, pz, pz2) = (rng.below(rb.len / PAGE), rng.below(256), rng.below(256));
        // Made before the checkpoint: the pipe's buffers are the kernel's.
        let (p1, p2, p3) = (
            pipe_with(c as u64),
            pipe_with(!(c as u64)),
            pipe_with(c as u64 + 77),
        );
        let mut between = || {
            let _ = sys::read_into(p1.as_raw_fd(), &rb.sub(pb * PAGE, PAGE));
            let _ = sys::read_into(p2.as_raw_fd(), &rz.sub(pz * PAGE, PAGE));
        };
        // Taken in by the next checkpoint.
        let mut after = || {
            let _ = sys::read_into(p3.as_raw_fd(), &rz.sub(pz2 * PAGE, PAGE));
        };
        cycle(m, &mem, c, &mut between, &mut after);
    }
    total_pages(&mem)
}

/// Commands to the writer child: `(address, seed)`; it answers one byte.
/// A child process that writes pages into this one with
/// `process_vm_writev` (no fault in the target's context) when asked.
struct Writer {
    child: i32,
    cmd: std::io::PipeWriter,
    ack: std::io::PipeReader,
}

impl Writer {
    fn start() -> Writer {
        use std::io::{Read, Write};
        let parent = std::process::id() as i32;
        let (mut cmd_rd, cmd_wr) = std::io::pipe().expect("pipe");
        let (ack_rd, mut ack_wr) = std::io::pipe().expect("pipe");
        let child = sys::fork();
        if child == 0 {
            // Only the parent writes commands: EOF once it is done.
            drop(cmd_wr);
            drop(ack_rd);
            let mut buf = [0u8; 16];
            let mut page = [0u8; PAGE];
            while cmd_rd.read_exact(&mut buf).is_ok() {
                let addr = u64::from_le_bytes(buf[..8].try_into().unwrap()) as usize;
                let seed = u64::from_le_bytes(buf[8..].try_into().unwrap());
                fill(&mut page, seed);
                let ok = sys::vm_write(parent, addr, &page) == PAGE as isize;
                let _ = ack_wr.write_all(&[ok as u8]);
            }
            sys::exit_now(0);
        }
        Writer {
            child,
            cmd: cmd_wr,
            ack: ack_rd,
        }
    }

    /// Has the child fill the page at `addr` from `seed`.
    fn write(&mut self, addr: usize, seed: u64) {
        use std::io::{Read, Write};
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&(addr as u64).to_le_bytes());
        buf[8..].copy_from_slice(&seed.to_le_bytes());
        self.cmd.write_all(&buf).expect("command the writer");
        let mut ok = [0u8];
        self.ack.read_exact(&mut ok).expect("writer answers");
        if ok[0] != 1 {
            fail("process_vm_writev into the target failed");
        }
    }

    fn finish(self) {
        drop(self.cmd);
        if sys::wait_child(self.child) != 0 {
            fail("the writer child failed");
        }
    }
}

fn foreign(m: &Markers, cycles: u32) -> usize {
    let mut mem = Mem::new();
    let b = mem.add(big());
    let z = mem.add(sys::mmap_anon(256 * PAGE, false, None));
    let mut writer = Writer::start();
    let mut rng = Rng(0xf0e1);
    for c in 0..cycles {
        let (rb, rz) = (mem.get(b), mem.get(z));
        let picks = [
            rng.below(rb.len / PAGE),
            rng.below(256),
            rng.below(rb.len / PAGE),
            rng.below(256),
        ];
        let s = rng.next();
        let mut ops = |before: bool| {
            let (pb, pz) = if before {
                (picks[0], picks[1])
            } else {
                (picks[2], picks[3])
            };
            writer.write(rb.addr() + pb * PAGE, s ^ before as u64);
            writer.write(rz.addr() + pz * PAGE, !s ^ before as u64);
        };
        let mut want = [0u64; MAX_PAGES];
        mem.hash(&mut want);
        m.checkpoint();
        ops(true);
        let d = dirtied(&mem, &want);
        m.restore();
        mem.verify(&want, "restore", c);
        report_dirtied(d);
        // Written by the other process after the restore: the next
        // checkpoint must take these pages in.
        ops(false);
    }
    writer.finish();
    total_pages(&mem)
}

/// A private file mapping, written (its pages the process's own copies)
/// and read-only at the checkpoint, so tracked page by page; made writable
/// (a writable file mapping is saved whole from the next layout read on)
/// and written by another process before the restore, which must find
/// those pages by scanning the regions the image armed.
fn mprotect_file(m: &Markers, cycles: u32) -> usize {
    let mut mem = Mem::new();
    let b = mem.add(big());
    let mut f = sys::mmap_file_private(64 * PAGE);
    fill(f.bytes_mut(), 0xf11e);
    sys::protect(&f, false);
    let fi = mem.add(f);
    let mut writer = Writer::start();
    let mut rng = Rng(0xf11e);
    for c in 0..cycles {
        let (r, f) = (mem.get(b), mem.get(fi));
        let (p, q, s) = (rng.below(r.len / PAGE), rng.below(64), rng.next());
        let mut between = || {
            dirty_page(r, p, s);
            sys::protect(&f, true);
            // Long enough for bpfckpt to read the mappings again, now with
            // the file mapping writable.
            let _ = sys::nanosleep(std::time::Duration::from_millis(100));
            writer.write(f.addr() + q * PAGE, !s);
        };
        let mut after = || sys::protect(&f, false);
        cycle(m, &mem, c, &mut between, &mut after);
    }
    writer.finish();
    total_pages(&mem)
}

fn fork(m: &Markers, cycles: u32) -> usize {
    let mut mem = Mem::new();
    let b = mem.add(big());
    let mut rng = Rng(0xf04c);
    for c in 0..cycles {
        let r = mem.get(b);
        let (p, q, s) = (rng.below(r.len / PAGE), rng.below(r.len / PAGE), rng.next());
        let forked = |mine: usize| {
            let child = sys::fork();
            if child == 0 {
                // The child's own copy: nothing of the target's.
                for i in 0..16 {
                    dirty_page(r, mine + i, !s);
                }
                sys::exit_now(0);
            }
            // The target writes pages it shares copy-on-write with the child.
            dirty_page(r, mine, s);
            dirty_page(r, mine + 7, s + 1);
            if sys::wait_child(child) != 0 {
                fail("fork child failed");
            }
        };
        let mut between = || forked(p);
        let r2 = r;
        let mut after = || {
            let child = sys::fork();
            if child == 0 {
                sys::exit_now(0);
            }
            dirty_page(r2, q, s ^ 5);
            let _ = sys::wait_child(child);
        };
        cycle(m, &mem, c, &mut between, &mut after);
    }
    total_pages(&mem)
}

fn exec(m: &Markers, dir: &std::path::Path, cycles: u32) -> usize {
    use std::os::unix::process::CommandExt;
    let first = cycles / 2;
    let pages = steady(m, first);
    let exe = std::env::current_exe().expect("own executable");
    let err = std::process::Command::new(exe)
        .arg("exec-rest")
        .arg("--dir")
        .arg(dir)
        .arg("--cycles")
        .arg((cycles - first).to_string())
        .exec();
    fail(&format!("exec: {err} (after {pages} pages)"));
}

fn grow(m: &Markers, cycles: u32) -> usize {
    let mut mem = Mem::new();
    let b = mem.add(big());
    let mut rng = Rng(0x960);
    for c in 0..cycles {
        // A region with a PROT_NONE tail, captured (all of it) at the
        // checkpoint; the tail becomes writable after it.
        let whole = sys::mmap_anon_prot(64 * PAGE, true);
        let (head, tail) = (whole.sub(0, 32 * PAGE), whole.sub(32 * PAGE, 32 * PAGE));
        sys::protect(&tail, false);
        let mut h = head;
        fill(h.bytes_mut(), c as u64);
        let hi = mem.add(whole);
        let r = mem.get(b);
        let (p, s) = (rng.below(r.len / PAGE), rng.next());
        let between = || {
            dirty_page(r, p, s);
            let mut n = sys::mmap_anon(16 * PAGE, false, None);
            fill(n.bytes_mut(), s);
            sys::protect(&tail, true);
            let mut t = tail;
            fill(t.bytes_mut(), !s);
            dirty_page(h, 3, s);
        };
        let mut want = [0u64; MAX_PAGES];
        // The tail reads as zero at the checkpoint (PROT_NONE is not
        // readable: hash its zeroes by hand).
        let n = {
            mem.regions[hi] = Some(head);
            let n = mem.hash(&mut want);
            mem.regions[hi] = Some(whole);
            n
        };
        for w in want.iter_mut().skip(n).take(32) {
            *w = hash_page(&[0u8; PAGE]);
        }
        m.checkpoint();
        between();
        m.restore();
        // Readable again only if the restore left it writable: make sure.
        sys::protect(&tail, true);
        mem.verify(&want, "restore", c);
        mem.regions[hi] = None;
        sys::unmap(whole);
    }
    total_pages(&mem)
}

fn mprotect(m: &Markers, cycles: u32) -> usize {
    let mut mem = Mem::new();
    let b = mem.add(big());
    let mut w = sys::mmap_anon_prot(64 * PAGE, true);
    fill(w.bytes_mut(), 0x3c);
    let wi = mem.add(w);
    let mut ro = sys::mmap_anon_prot(64 * PAGE, true);
    fill(ro.bytes_mut(), 0x4c);
    sys::protect(&ro, false);
    mem.add(ro);
    let mut rng = Rng(0x3e0);
    for c in 0..cycles {
        let r = mem.get(b);
        let w = mem.get(wi);
        let (p, q, s) = (rng.below(r.len / PAGE), rng.below(64), rng.next());
        let mut between = || {
            dirty_page(r, p, s);
            // Dirtied, then read-only when the restore comes.
            dirty_page(w, q, s);
            sys::protect(&w, false);
            // Read-only at the checkpoint, written before the restore.
            sys::protect(&ro, true);
            let o = ro;
            dirty_page(o, q, !s);
        };
        let mut after = || {
            sys::protect(&w, true);
            sys::protect(&ro, false);
        };
        cycle(m, &mem, c, &mut between, &mut after);
    }
    total_pages(&mem)
}

/// `len` bytes, 2 MiB aligned, advised `MADV_HUGEPAGE`.
fn huge_region(len: usize) -> Region {
    let res = sys::mmap_anon(len + (2 << 20), false, None);
    let off = (2 << 20) - res.addr() % (2 << 20);
    let h = res.sub(off % (2 << 20), len);
    sys::want_huge_pages(&h);
    h
}

fn thp(m: &Markers, cycles: u32) -> usize {
    const FRESH_BLOCKS: usize = 8;
    let mut mem = Mem::new();
    let mut h = huge_region(8 << 20);
    fill(h.bytes_mut(), 0x7a9);
    let hi = mem.add(h);
    let fi = mem.add(huge_region(FRESH_BLOCKS << 21));
    let mut rng = Rng(0x7a9);
    for c in 0..cycles {
        let (r, f) = (mem.get(hi), mem.get(fi));
        let (p, s) = (rng.below(r.len / PAGE), rng.next());
        let q = rng.below(512 - 300);
        let block = c as usize % FRESH_BLOCKS * 512;
        // The blocks from this cycle's on are absent (not even read) until
        // it writes its own.
        let unread = (c as usize).min(FRESH_BLOCKS) * 512;
        mem.unread = Some((fi, unread));
        let mut want = [0u64; MAX_PAGES];
        mem.hash(&mut want);
        m.checkpoint();
        for i in 0..8 {
            dirty_page(r, p + i * 97, s + i as u64);
        }
        for i in [0, 100, 300] {
            dirty_page(f, block + q + i, s ^ i as u64);
        }
        // Zero at the checkpoint, and verified from now on.
        mem.unread = Some((fi, unread.max(block + 512)));
        let d = dirtied(&mem, &want);
        m.restore();
        mem.verify(&want, "restore", c);
        report_dirtied(d);
    }
    total_pages(&mem)
}
