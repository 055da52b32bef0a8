//! The bundled demo: bpfckpt re-executes itself as a protocol target with a
//! small heap buffer, a large mmap'd buffer and a `.bss` array, damages them
//! between checkpoint and restore, and verifies every byte after each restore.

use super::engine::{Engine, Outcome};
use super::markers::{CHECKPOINT_DONE, CHECKPOINT_REQUEST, RESTORE_DONE, RESTORE_REQUEST};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SMALL: usize = 4 << 10;
const BIG: usize = 16 << 20;
const BSS: usize = 64 << 20;
/// Only the first half of the `.bss` array holds data at the first checkpoint.
const BSS_USED: usize = BSS / 2;

/// Zero-initialised, so it lives in `.bss`.
static BSS_ARRAY: Mutex<[u8; BSS]> = Mutex::new([0; BSS]);

/// Pattern word `i` of `seed` (a splitmix-style hash).
fn word(seed: u64, i: usize) -> [u8; 8] {
    let mut x = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    x.to_le_bytes()
}

fn fill(buf: &mut [u8], seed: u64) {
    for (i, c) in buf.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&word(seed, i));
    }
}

/// Offset of the first byte that differs from the pattern, if any.
fn check(buf: &[u8], seed: u64) -> Option<usize> {
    let i = buf
        .chunks_exact(8)
        .enumerate()
        .position(|(i, c)| c != word(seed, i))?;
    let w = word(seed, i);
    Some(
        i * 8
            + buf[i * 8..i * 8 + 8]
                .iter()
                .zip(w)
                .position(|(a, b)| *a != b)
                .unwrap_or(0),
    )
}

/// Creates `req` and waits for `done`. The paths are built once, before
/// any cycle: a path allocated around a trigger would be a heap pointer on
/// the stack that the restore rolls the heap back under.
fn request(req: &Path, done: &Path) -> Result<(), String> {
    File::create(req).map_err(|e| format!("create {}: {e}", req.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "no {} after 60 s: is bpfckpt serving this process?",
                done.display()
            ));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

fn clean(paths: &[PathBuf; 4]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// The demo target (hidden subcommand `__demo-target`). Exit code 0 when
/// every cycle verified.
pub fn target(cycles: u32, dir: &Path) -> u8 {
    let paths = [
        CHECKPOINT_REQUEST,
        CHECKPOINT_DONE,
        RESTORE_REQUEST,
        RESTORE_DONE,
    ]
    .map(|f| dir.join(f));
    let [ckpt_req, ckpt_done, restore_req, restore_done] = &paths;
    clean(&paths);
    let mut small = Vec::with_capacity(SMALL);
    small.resize(SMALL, 1u8);
    let mut big = Vec::with_capacity(BIG);
    big.resize(BIG, 1u8);
    let mut bss = BSS_ARRAY.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "demo target: pid {}, 4 KiB heap buffer at {:p}, 16 MiB mmap'd buffer at {:p}, 64 MiB .bss array at {:p}",
        std::process::id(),
        small.as_ptr(),
        big.as_ptr(),
        bss.as_ptr()
    );
    for cycle in 1..=cycles {
        let seed = 0x5eed_0000 + cycle as u64;
        fill(&mut small, seed);
        fill(&mut big, seed);
        fill(&mut bss[..BSS_USED], seed);
        if let Err(e) = request(ckpt_req, ckpt_done) {
            eprintln!("demo target: {e}");
            return 3;
        }
        // Damage: overwrite everything and dirty pages that held nothing.
        fill(&mut small, !seed);
        fill(&mut big, !seed);
        fill(&mut bss[..BSS_USED], !seed);
        for page in bss[BSS_USED..].chunks_mut(4096).step_by(7) {
            page[0] = 0xaa;
        }
        if let Err(e) = request(restore_req, restore_done) {
            eprintln!("demo target: {e}");
            return 3;
        }
        let bad = [
            ("heap buffer", check(&small, seed)),
            ("mmap'd buffer", check(&big, seed)),
            (".bss data", check(&bss[..BSS_USED], seed)),
            (
                ".bss untouched half",
                bss[BSS_USED..].iter().position(|&b| b != 0),
            ),
        ];
        clean(&paths);
        if let Some((what, Some(at))) = bad.iter().find(|(_, r)| r.is_some()) {
            println!("demo target: cycle {cycle}: MISMATCH in the {what} at offset {at}");
            return 4;
        }
        println!(
            "demo target: cycle {cycle}: damaged {} MiB, restored, every byte verified ({} bytes)",
            (SMALL + BIG + BSS_USED) >> 20,
            SMALL + BIG + BSS
        );
    }
    0
}

/// The closing words of `bpfckpt demo`.
pub fn report(engine: &Engine, outcome: &Outcome) {
    let s = &engine.total;
    let ok = matches!(outcome, Outcome::Exited(st) if st.success());
    let path = if engine.bpf_write() {
        "by BPF programs in the target's context (bpf_probe_write_user)"
    } else {
        "from user space while the target was held at its trigger (this kernel refuses bpf_probe_write_user)"
    };
    eprintln!();
    eprintln!("bpfckpt demo: {}", if ok { "PASSED" } else { "FAILED" });
    eprintln!(
        "  {} cycles; each checkpoint was copied by a BPF program inside the target's openat() \
         ({} pages by BPF, {} completed from user space)",
        s.cycles, s.pages_saved_bpf, s.pages_saved_user
    );
    eprintln!(
        "  restores were written {path}: {} pages by BPF, {} from user space, {} pages zeroed again",
        s.pages_restored_bpf,
        s.pages_restored_user,
        s.pages_zeroed_bpf + s.pages_zeroed_user
    );
    eprintln!(
        "  the target verified every byte of its heap, mmap'd and .bss memory after each restore{}",
        if ok {
            ""
        } else {
            " — and found a difference, or did not finish (see above)"
        }
    );
}
