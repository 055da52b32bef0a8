//! Bench target: checkpoint/restore throughput.
//! `bench-mem --dir DIR --bytes N [--warmup W] [--cycles K] [--hold 0|1]`
//!
//! Maps N bytes of private anonymous memory and touches every page, then runs
//! W warm-up cycles (the engine sizes its page store and applies the final
//! layout) and K measured cycles. Each cycle stamps the first word of every
//! page, checkpoints, overwrites the stamps, restores and verifies them (a
//! broken restore fails the bench). Prints one line per measured cycle:
//! `{"bench":"mem","cycle":i,"bytes":N,"checkpoint_ns":..,"restore_ns":..}`
//! where the times are the target-observed request latencies (from just
//! before the request's `openat` until the completion marker is seen).
//!
//! With `--hold 1` it then prints `{"bench":"mem_hold","pid":..}` and waits
//! for end-of-file on stdin: the engine still serves it with the page store
//! of the last checkpoint, so the bench can read the kernel memory of
//! bpfckpt's maps at their largest (the store never shrinks while a target
//! is served).

#[path = "bench_common.rs"]
mod bench_common;
#[path = "../src/proto.rs"]
mod proto;
#[path = "../src/sys.rs"]
mod sys;

use bench_common::{Args, emit};
use proto::fail;
use std::io::{Read, Write};

const PAGE: usize = 4096;
const MAX_CYCLES: usize = 256;

fn stamp(c: usize, page: usize) -> u64 {
    ((c as u64) << 40) ^ (page as u64).wrapping_mul(0x9e37_79b9) ^ 0x5a5a
}

fn main() {
    let a = Args::parse(&["dir", "bytes", "warmup", "cycles", "hold"]);
    let bytes: usize = a.get("bytes", 64 << 20);
    let warmup: usize = a.get("warmup", 2);
    let cycles: usize = a.get("cycles", 5);
    let hold = a.get::<u8>("hold", 0) != 0;
    if bytes < PAGE || !bytes.is_multiple_of(PAGE) {
        fail("--bytes must be a positive multiple of 4096");
    }
    if cycles == 0 || cycles > MAX_CYCLES {
        fail(&format!("--cycles must be 1..={MAX_CYCLES}"));
    }
    let p = proto::Markers::new(&a.dir()).spinning();
    let mut mem = sys::mmap_anon(bytes, false, None);
    mem.bytes_mut().fill(0xa5);
    let pages = bytes / PAGE;

    // On the stack: restores do not roll these back.
    let mut ckpt_ns = [0u64; MAX_CYCLES];
    let mut restore_ns = [0u64; MAX_CYCLES];
    for c in 0..warmup + cycles {
        let buf = mem.bytes_mut();
        for i in 0..pages {
            buf[i * PAGE..i * PAGE + 8].copy_from_slice(&stamp(c, i).to_le_bytes());
        }
        let t_ckpt = p.checkpoint();
        let buf = mem.bytes_mut();
        for i in 0..pages {
            buf[i * PAGE..i * PAGE + 8].copy_from_slice(&(!stamp(c, i)).to_le_bytes());
        }
        let t_restore = p.restore();
        let buf = mem.bytes();
        for i in 0..pages {
            if buf[i * PAGE..i * PAGE + 8] != stamp(c, i).to_le_bytes() {
                fail(&format!(
                    "cycle {c}: page {i} of {pages} differs from the checkpoint after the restore"
                ));
            }
        }
        if c >= warmup {
            ckpt_ns[c - warmup] = t_ckpt;
            restore_ns[c - warmup] = t_restore;
        }
    }
    for i in 0..cycles {
        emit(
            "mem",
            &[
                ("cycle", i as u64),
                ("bytes", bytes as u64),
                ("checkpoint_ns", ckpt_ns[i]),
                ("restore_ns", restore_ns[i]),
            ],
        );
    }
    if hold {
        emit("mem_hold", &[("pid", u64::from(std::process::id()))]);
        let _ = std::io::stdout().flush();
        let mut sink = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    }
}
