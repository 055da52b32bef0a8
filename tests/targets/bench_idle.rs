//! Bench bin: a process that holds memory and waits.
//! `bench-idle [--bytes N]`
//!
//! Maps N bytes (0: none) of private anonymous memory and touches every
//! page, prints `{"bench":"idle","pid":..,"addr":..,"bytes":N}`, then waits
//! until its stdin reaches end-of-file. It serves as the peer of the
//! `process_vm_readv`/`process_vm_writev` baselines and as the idle target
//! bpfckpt serves while the unrelated-openat overhead is measured.

#[path = "bench_common.rs"]
mod bench_common;
#[path = "../src/proto.rs"]
mod proto;
#[path = "../src/sys.rs"]
mod sys;

use bench_common::{Args, emit};
use std::io::{Read, Write};

fn main() {
    let a = Args::parse(&["bytes"]);
    let bytes: usize = a.get("bytes", 0);
    let addr = if bytes > 0 {
        let mut m = sys::mmap_anon(bytes, false, None);
        m.bytes_mut().fill(0x3c);
        m.addr()
    } else {
        0
    };
    emit(
        "idle",
        &[
            ("pid", u64::from(std::process::id())),
            ("addr", addr as u64),
            ("bytes", bytes as u64),
        ],
    );
    let _ = std::io::stdout().flush();
    let mut sink = [0u8; 256];
    let mut stdin = std::io::stdin();
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}
