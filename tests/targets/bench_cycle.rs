//! Bench target: protocol cycle rate.
//! `bench-cycle --dir DIR [--warmup W] [--millis T] [--min-cycles A] [--max-cycles B] [--verify 0|1]`
//!
//! Keeps a 4 KiB heap buffer and a 400 MB `.bss` array it never touches (as
//! programs with large zero-initialised globals do). After W warm-up cycles
//! it runs checkpoint/restore cycles for T milliseconds (at least A, at most
//! B cycles); each cycle stamps the buffer, checkpoints, overwrites it,
//! restores and checks it (with `--verify 0`, as under the handshake server,
//! which restores nothing, a difference is not an error). Prints
//! `{"bench":"cycle","cycles":n,"ns":total,"checkpoint_ns":sum,"restore_ns":sum}`
//! (the sums are the target-observed request latencies of the measured cycles).
//! The same binary runs under bpfckpt and under the xtask's handshake-only
//! server.

#[path = "bench_common.rs"]
mod bench_common;
#[path = "../src/proto.rs"]
mod proto;
#[path = "../src/sys.rs"]
mod sys;

use bench_common::{Args, emit};
use proto::{fail, fill, word};
use std::time::{Duration, Instant};

const BIG_SIZE: usize = 400_000_000;
static mut BIG: [u8; BIG_SIZE] = [0; BIG_SIZE];

fn main() {
    let a = Args::parse(&[
        "dir",
        "warmup",
        "millis",
        "min-cycles",
        "max-cycles",
        "verify",
    ]);
    let warmup: u64 = a.get("warmup", 2);
    let limit = Duration::from_millis(a.get("millis", 2000));
    let min_cycles: u64 = a.get("min-cycles", 3);
    let max_cycles: u64 = a.get("max-cycles", 1_000_000);
    let must_match = a.get::<u8>("verify", 1) != 0;
    if min_cycles == 0 || max_cycles < min_cycles {
        fail("need 1 <= --min-cycles <= --max-cycles");
    }
    let p = proto::Markers::new(&a.dir()).spinning();
    // Mapped by execve, never touched: keep it (and its size) in the binary.
    let big = sys::from_static(std::hint::black_box(&raw mut BIG as *mut u8), BIG_SIZE);
    std::hint::black_box(big.addr());
    let mut heap = sys::malloc(4096);

    let mut cycle = |seed: u64| -> (u64, u64) {
        fill(heap.bytes_mut(), seed);
        let c = p.checkpoint();
        fill(heap.bytes_mut(), !seed);
        let r = p.restore();
        // The same work with or without --verify; only the verdict differs.
        let same = heap
            .bytes()
            .chunks_exact(8)
            .enumerate()
            .all(|(i, w)| w == word(seed, i).to_le_bytes());
        if must_match && !same {
            fail("the 4 KiB heap buffer differs from the checkpoint after a restore");
        }
        (c, r)
    };
    for i in 0..warmup {
        cycle(0xc1c1e + i);
    }
    let (mut n, mut ckpt_ns, mut restore_ns) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    while n < max_cycles && (n < min_cycles || t0.elapsed() < limit) {
        let (c, r) = cycle(0x5eed + n);
        ckpt_ns += c;
        restore_ns += r;
        n += 1;
    }
    let ns = t0.elapsed().as_nanos() as u64;
    emit(
        "cycle",
        &[
            ("cycles", n),
            ("ns", ns),
            ("checkpoint_ns", ckpt_ns),
            ("restore_ns", restore_ns),
        ],
    );
}
