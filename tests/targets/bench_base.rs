//! Bench bin: the copy baselines the engine is compared with.
//! `bench-base --bytes N [--reps R]`
//!
//! - memcpy: N bytes between two touched buffers of this process;
//! - process_vm_readv / process_vm_writev: N bytes from / to a child
//!   (`bench-idle --bytes N`, next to this binary) that holds N touched
//!   bytes, one iovec per side per call;
//! - process_vm_writev as the engine's user-space restore issues it: one
//!   4 KiB iovec per page, 1024 per call (`vm_write_4k_ns`).
//!
//! Each is repeated R times; prints every repetition's times,
//! `{"bench":"base_rep","rep":i,"memcpy_ns":..,"vm_read_ns":..,"vm_write_ns":..,"vm_write_4k_ns":..}`
//! (the bench takes the best and the median of them), then the best
//! (shortest) time of each:
//! `{"bench":"base","bytes":N,"memcpy_ns":..,"vm_read_ns":..,"vm_write_ns":..,"vm_write_4k_ns":..}`.

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
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The time of each of `reps` runs of `f`, in ns.
fn times(reps: u64, mut f: impl FnMut()) -> Vec<u64> {
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_nanos() as u64
        })
        .collect()
}

fn best(t: &[u64]) -> u64 {
    t.iter().copied().min().unwrap_or(0)
}

/// The number after `"key":` in a flat JSON line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn main() {
    let a = Args::parse(&["bytes", "reps"]);
    let bytes: usize = a.get("bytes", 64 << 20);
    let reps: u64 = a.get("reps", 5).max(1);
    if bytes == 0 {
        fail("--bytes must be positive");
    }
    let mut src = sys::mmap_anon(bytes, false, None);
    let mut dst = sys::mmap_anon(bytes, false, None);
    src.bytes_mut().fill(0x5a);
    dst.bytes_mut().fill(0xa5);

    let memcpy_ns = times(reps, || {
        dst.bytes_mut().copy_from_slice(src.bytes());
        std::hint::black_box(dst.bytes());
    });

    let idle = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("bench-idle")))
        .unwrap_or_else(|| fail("cannot find bench-idle next to this binary"));
    let mut child = Command::new(&idle)
        .args(["--bytes", &bytes.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("start {}: {e}", idle.display())));
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let (Some(pid), Some(remote)) = (field(&line, "pid"), field(&line, "addr")) else {
        let _ = child.kill();
        fail(&format!("bench-idle said `{}`", line.trim()));
    };
    let (pid, remote) = (pid as i32, remote as usize);
    let mut err = None;
    let vm_read_ns = times(reps, || {
        if let Err(e) = bench_sys::vm_read(pid, dst.bytes_mut(), remote) {
            err = Some(format!("process_vm_readv: {e}"));
        }
    });
    let vm_write_ns = times(reps, || {
        if let Err(e) = bench_sys::vm_write(pid, src.bytes(), remote) {
            err = Some(format!("process_vm_writev: {e}"));
        }
    });
    let vm_write_4k_ns = times(reps, || {
        if let Err(e) = bench_sys::vm_write_pages(pid, src.bytes(), remote) {
            err = Some(format!("process_vm_writev (4 KiB iovecs): {e}"));
        }
    });
    drop(child.stdin.take());
    let _ = child.wait();
    if let Some(e) = err {
        fail(&e);
    }
    for i in 0..reps as usize {
        emit(
            "base_rep",
            &[
                ("rep", i as u64),
                ("memcpy_ns", memcpy_ns[i]),
                ("vm_read_ns", vm_read_ns[i]),
                ("vm_write_ns", vm_write_ns[i]),
                ("vm_write_4k_ns", vm_write_4k_ns[i]),
            ],
        );
    }
    emit(
        "base",
        &[
            ("bytes", bytes as u64),
            ("reps", reps),
            ("memcpy_ns", best(&memcpy_ns)),
            ("vm_read_ns", best(&vm_read_ns)),
            ("vm_write_ns", best(&vm_write_ns)),
            ("vm_write_4k_ns", best(&vm_write_4k_ns)),
        ],
    );
}
