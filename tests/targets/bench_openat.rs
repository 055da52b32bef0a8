//! Bench bin: the cost of kernel entries for a process bpfckpt does not serve.
//! `bench-openat [--ops N] [--reps R] [--call openat|getppid|fault]`
//!
//! Each repetition does N operations: `openat` opens and closes `/dev/null`
//! (`openat` + `close`, the default); `getppid` calls getppid(2), a system
//! call bpfckpt attaches nothing to; `fault` writes one byte to a page of a
//! 16 MiB private anonymous mapping that is not present (a page fault; the
//! mapping is emptied with MADV_DONTNEED after every pass). Prints
//! `{"bench":"openat","call":C,"rep":i,"ops":N,"ns":..,"ns_per_op":..}`
//! (C: 0 openat, 1 getppid, 2 fault; `ns` for all N; `ns_per_op` rounded down).

#[path = "bench_common.rs"]
mod bench_common;
#[path = "../src/proto.rs"]
mod proto;
#[path = "../src/sys.rs"]
mod sys;

use bench_common::{Args, emit};
use proto::fail;
use std::fs::File;
use std::time::Instant;

fn main() {
    let a = Args::parse(&["ops", "reps", "call"]);
    let ops: u64 = a.get("ops", 200_000);
    let reps: u64 = a.get("reps", 3);
    let call: u64 = match a.get("call", "openat".to_string()).as_str() {
        "openat" => 0,
        "getppid" => 1,
        "fault" => 2,
        other => fail(&format!("--call {other}: want openat, getppid or fault")),
    };
    const PAGE: usize = 4096;
    const FAULT_PAGES: usize = 4096;
    let mut fault_region = (call == 2).then(|| sys::mmap_anon(FAULT_PAGES * PAGE, false, None));
    if ops == 0 {
        fail("--ops must be positive");
    }
    for rep in 0..reps {
        let t0 = Instant::now();
        for i in 0..ops as usize {
            match (call, &mut fault_region) {
                (0, _) => match File::open("/dev/null") {
                    Ok(f) => drop(std::hint::black_box(f)),
                    Err(e) => fail(&format!("open /dev/null: {e}")),
                },
                (2, Some(r)) => {
                    let p = i % FAULT_PAGES;
                    if p == 0 && i > 0 {
                        sys::zap(r);
                    }
                    r.bytes_mut()[p * PAGE] = 1;
                }
                _ => {
                    std::hint::black_box(std::os::unix::process::parent_id());
                }
            }
        }
        if let Some(r) = &fault_region {
            sys::zap(r);
        }
        let ns = t0.elapsed().as_nanos() as u64;
        emit(
            "openat",
            &[
                ("call", call),
                ("rep", rep),
                ("ops", ops),
                ("ns", ns),
                ("ns_per_op", ns / ops),
            ],
        );
    }
}
