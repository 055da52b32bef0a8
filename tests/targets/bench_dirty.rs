//! Bench target: the cycle rate of a target that wrote a large area once and
//! dirties a few pages of it per cycle.
//! `bench-dirty --dir DIR --written-mib W --dirty-kib D --mode protocol|forkserver|pvw
//!  [--millis T] [--warmup N] [--min-cycles A] [--max-cycles B] [--verify 0|1]`
//!
//! Maps W MiB of private anonymous memory and writes every page of it once
//! (0xa5, then the page's stamp in its first word), so W MiB is "ever
//! written" before the first cycle. A cycle dirties D KiB: the first word of
//! D/4 pages spread evenly over the area, other pages every cycle (the set
//! moves by 521 pages, more than a 2 MiB chunk, per cycle). Then:
//! - `protocol`: checkpoint, dirty, restore, then check that every dirtied
//!   page holds its stamp again (a wrong restore fails the target; with
//!   `--verify 0`, as under the handshake-only server, which restores
//!   nothing, the same check runs but a difference is not an error);
//! - `forkserver`: no markers, no bpfckpt: fork, the child dirties the same
//!   pages and `_exit(0)`s, the parent waits for it and then makes the same
//!   check of its own pages (a fork server's reset is its child's exit);
//! - `pvw`: no markers, no bpfckpt: the dirtied pages are put back with
//!   `process_vm_writev` (into this process, one 4 KiB iovec per page, as
//!   bpfckpt's incremental restore issues it) from a copy of the area made
//!   at the start (W MiB more, cold as a page store is), then the same
//!   check: what the bare write of these pages costs.
//!
//! After N warm-up cycles it runs cycles for T milliseconds (at least A, at
//! most B). Prints
//! `{"bench":"dirty","mode":M,"written_bytes":..,"pages":P,"cycles":n,"ns":total,"checkpoint_ns":sum,"restore_ns":sum}`
//! (M: 0 protocol, 1 forkserver, 2 pvw; P pages dirtied per cycle). The
//! sums are over the measured cycles: in protocol mode the target-observed
//! request latencies; in forkserver mode the parent's `fork()` and its
//! `waitpid()` (which covers the child's writes and exit); in pvw mode the
//! dirtying and the `process_vm_writev`.

#[path = "bench_common.rs"]
mod bench_common;
#[path = "../src/bench_sys.rs"]
mod bench_sys;
#[path = "../src/proto.rs"]
mod proto;
#[path = "../src/sys.rs"]
mod sys;

use bench_common::{Args, emit};
use proto::fail;
use std::time::{Duration, Instant};
use sys::Region;

const PAGE: usize = 4096;
/// Pages the dirtied set moves by from one cycle to the next: more than a
/// 2 MiB chunk, so consecutive cycles touch other chunks, and prime, so
/// that every offset within the spacing comes round.
const STEP: usize = 521;

/// What the first word of page `page` holds at every checkpoint.
fn stamp(page: usize) -> u64 {
    (page as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b7_5eed
}

/// Which pages a cycle dirties: `pages` of the area's `total`, `stride`
/// apart.
#[derive(Clone, Copy)]
struct Dirt {
    pages: usize,
    stride: usize,
    total: usize,
}

impl Dirt {
    fn page(&self, cycle: u64, j: usize) -> usize {
        let shift = (cycle as usize % self.stride) * STEP % self.stride;
        (j * self.stride + shift) % self.total
    }

    /// Writes a value other than the stamp into each page of `cycle`.
    fn dirty(&self, mem: &mut Region, cycle: u64) {
        let buf = mem.bytes_mut();
        for j in 0..self.pages {
            let p = self.page(cycle, j);
            buf[p * PAGE..p * PAGE + 8].copy_from_slice(&(!stamp(p) ^ cycle).to_le_bytes());
        }
        std::hint::black_box(buf);
    }

    /// The first page of `cycle` that does not hold its stamp.
    fn first_wrong(&self, mem: &Region, cycle: u64) -> Option<usize> {
        let buf = mem.bytes();
        (0..self.pages)
            .map(|j| self.page(cycle, j))
            .find(|&p| buf[p * PAGE..p * PAGE + 8] != stamp(p).to_le_bytes())
    }
}

/// Runs `warmup` cycles, then measured ones until `limit` (at least `min`,
/// at most `max`): (cycles, ns, sum of first times, sum of second times).
/// The cycle number runs on through the warm-up, so no two consecutive
/// cycles dirty the same pages.
fn measure(
    warmup: u64,
    limit: Duration,
    min: u64,
    max: u64,
    mut cycle: impl FnMut(u64) -> (u64, u64),
) -> [u64; 4] {
    for c in 0..warmup {
        cycle(c);
    }
    let (mut n, mut a, mut b) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    while n < max && (n < min || t0.elapsed() < limit) {
        let (x, y) = cycle(warmup + n);
        a += x;
        b += y;
        n += 1;
    }
    [n, t0.elapsed().as_nanos() as u64, a, b]
}

fn main() {
    let a = Args::parse(&[
        "dir",
        "written-mib",
        "dirty-kib",
        "mode",
        "millis",
        "warmup",
        "min-cycles",
        "max-cycles",
        "verify",
    ]);
    let written_mib: usize = a.get("written-mib", 64);
    let dirty_kib: usize = a.get("dirty-kib", 4);
    let mode: u64 = match a.get("mode", String::new()).as_str() {
        "protocol" => 0,
        "forkserver" => 1,
        "pvw" => 2,
        m => fail(&format!(
            "--mode must be protocol, forkserver or pvw, not `{m}`"
        )),
    };
    let warmup: u64 = a.get("warmup", 2);
    let limit = Duration::from_millis(a.get("millis", 2000));
    let min_cycles: u64 = a.get("min-cycles", 3);
    let max_cycles: u64 = a.get("max-cycles", 1_000_000);
    let must_match = a.get::<u8>("verify", 1) != 0;
    if min_cycles == 0 || max_cycles < min_cycles {
        fail("need 1 <= --min-cycles <= --max-cycles");
    }
    let total = written_mib * (1 << 20) / PAGE;
    if dirty_kib == 0 || !dirty_kib.is_multiple_of(4) || dirty_kib / 4 > total {
        fail("--dirty-kib must be a positive multiple of 4, at most --written-mib * 1024");
    }
    let pages = dirty_kib / 4;
    let d = Dirt {
        pages,
        stride: total / pages,
        total,
    };

    let mut mem = sys::mmap_anon(total * PAGE, false, None);
    let buf = mem.bytes_mut();
    buf.fill(0xa5);
    for (i, page) in buf.chunks_exact_mut(PAGE).enumerate() {
        page[..8].copy_from_slice(&stamp(i).to_le_bytes());
    }
    let verdict = |mem: &Region, c: u64, how: &str| {
        // The same work with or without --verify; only the verdict differs.
        if let Some(p) = d.first_wrong(mem, c)
            && must_match
        {
            fail(&format!(
                "cycle {c}: dirtied page {p} of {total} differs from the checkpoint after {how}"
            ));
        }
    };

    let [n, ns, first, second] = if mode == 1 {
        measure(warmup, limit, min_cycles, max_cycles, |c| {
            let t0 = Instant::now();
            let pid = sys::fork();
            if pid == 0 {
                d.dirty(&mut mem, c);
                sys::exit_now(0);
            }
            let t_fork = t0.elapsed().as_nanos() as u64;
            let code = sys::wait_child(pid);
            let t_wait = t0.elapsed().as_nanos() as u64 - t_fork;
            if code != 0 {
                fail(&format!("cycle {c}: the forked child exited with {code}"));
            }
            verdict(&mem, c, "the child's exit");
            (t_fork, t_wait)
        })
    } else if mode == 2 {
        // The checkpoint's copy, made once.
        let mut saved = sys::mmap_anon(total * PAGE, false, None);
        saved.bytes_mut().copy_from_slice(mem.bytes());
        let pid = std::process::id() as i32;
        let base = mem.bytes().as_ptr() as usize;
        measure(warmup, limit, min_cycles, max_cycles, |c| {
            let t0 = Instant::now();
            d.dirty(&mut mem, c);
            let t_dirty = t0.elapsed().as_nanos() as u64;
            let list: Vec<(&[u8], usize)> = (0..d.pages)
                .map(|j| {
                    let p = d.page(c, j);
                    (&saved.bytes()[p * PAGE..(p + 1) * PAGE], base + p * PAGE)
                })
                .collect();
            if let Err(e) = bench_sys::vm_write_page_list(pid, &list) {
                fail(&format!("cycle {c}: process_vm_writev: {e}"));
            }
            let t_write = t0.elapsed().as_nanos() as u64 - t_dirty;
            verdict(&mem, c, "process_vm_writev");
            (t_dirty, t_write)
        })
    } else {
        let p = proto::Markers::new(&a.dir()).spinning();
        measure(warmup, limit, min_cycles, max_cycles, |c| {
            let t_ckpt = p.checkpoint();
            d.dirty(&mut mem, c);
            let t_restore = p.restore();
            verdict(&mem, c, "the restore");
            (t_ckpt, t_restore)
        })
    };
    emit(
        "dirty",
        &[
            ("mode", mode),
            ("written_bytes", (total * PAGE) as u64),
            ("pages", pages as u64),
            ("cycles", n),
            ("ns", ns),
            ("checkpoint_ns", first),
            ("restore_ns", second),
        ],
    );
}
