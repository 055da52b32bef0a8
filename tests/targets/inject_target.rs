//! Target for the injection tests (tests/inject.rs): `inject-target
//! [--sleepy]`. Prints `READY pid=N buf=0xADDR len=N`, then works in blocks:
//! each block runs `sys::reg_kernel` (integer, floating-point and vector
//! values held in registers, sentinels in r14, r15 and ymm15) twice and
//! compares, then writes a byte of `buf` and prints `OK n`; any difference
//! prints `BAD ...` and exits 1. A system call injected while it was stopped
//! that left any of those registers changed shows up as `BAD`.
//!
//! `--sleepy`: short blocks, each followed by a 40 ms `nanosleep` that must
//! never return early, so that a stop mostly finds it inside a system call
//! (restarted after the stop).
//!
//! `--signals`: counts SIGUSR1 with a handler (prints `SIGNALS n` when the
//! count changes; a sleep it cuts short is fine) and blocks SIGUSR2.
//!
//! `--thread`: a second thread does the same blocks and prints `TOK n`.

#[path = "../src/sys.rs"]
mod sys;

use std::time::Duration;

fn main() {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    let sleepy = has("--sleepy");
    if has("--signals") {
        sys::count_signals(libc::SIGUSR1);
        sys::block_signal(libc::SIGUSR2);
    }
    let len = 1 << 20;
    let mut buf = sys::mmap_anon(len, false, None);
    buf.bytes_mut().fill(1);
    println!(
        "READY pid={} buf={:#x} len={len}",
        std::process::id(),
        buf.addr()
    );
    if has("--thread") {
        std::thread::spawn(move || blocks("TOK", sleepy, None));
    }
    blocks("OK", sleepy, Some(&mut buf));
}

fn blocks(tag: &str, sleepy: bool, mut buf: Option<&mut sys::Region>) {
    let iters = if sleepy { 100_000 } else { 4_000_000 };
    let avx = std::arch::is_x86_feature_detected!("avx2");
    let want: &[u64] = if avx {
        &sys::SENTINELS
    } else {
        &sys::SENTINELS[..4]
    };
    let mut signals = 0;
    for n in 0u64.. {
        let a = sys::reg_kernel(n, iters);
        let b = sys::reg_kernel(n, iters);
        for (what, r) in [("first", &a), ("second", &b)] {
            if &r[12..12 + want.len()] != want {
                println!(
                    "BAD {n}: {what} run lost its sentinel registers: {:x?}",
                    &r[12..]
                );
                std::process::exit(1);
            }
        }
        if a != b {
            println!("BAD {n}: the two runs differ: {a:x?} != {b:x?}");
            std::process::exit(1);
        }
        if let Some(buf) = buf.as_mut() {
            let len = buf.len;
            buf.bytes_mut()[(n as usize * 4096) % len] = n as u8;
        }
        println!("{tag} {n}");
        let slept = if sleepy {
            sys::nanosleep(Duration::from_millis(40))
        } else {
            Ok(())
        };
        if sys::signals_seen() != signals {
            signals = sys::signals_seen();
            println!("SIGNALS {signals}");
        } else if let Err(e) = slept {
            println!("BAD {n}: nanosleep returned early (errno {e})");
            std::process::exit(1);
        }
    }
}
