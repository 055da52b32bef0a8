//! Deterministic mutation fuzzing of parse + link + program_btf: byte flips,
//! interesting values in header-ish places, truncations, splices, inserts
//! and deletes of the real probe object, the rustc-built fixture and the
//! hand-made rich object. Nothing may panic; anything that links must
//! satisfy the same invariants as a good object.

mod common;

use bpfload::{btf, linker, obj};
use common::*;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Per base object; `BPFCKPT_FUZZ_ITERS` overrides it for longer runs.
const ITERATIONS_PER_BASE: usize = 6000;

fn iterations() -> usize {
    std::env::var("BPFCKPT_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS_PER_BASE)
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if b.is_empty() {
            break;
        }
        let len = b.len();
        match rng.below(9) {
            // Random bytes anywhere.
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(len);
                    b[i] = rng.next() as u8;
                }
            }
            // One bit.
            1 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            // An interesting 32/64-bit value at an aligned position (hits
            // sizes, offsets, indices, immediates).
            2 | 3 => {
                const V: [u64; 10] = [
                    0,
                    1,
                    8,
                    20,
                    0x7f,
                    0xff,
                    0x7fff_ffff,
                    0x8000_0000,
                    u32::MAX as u64,
                    u64::MAX,
                ];
                let v = V[rng.below(V.len())];
                let wide = rng.below(2) == 0;
                let w = if wide { 8 } else { 4 };
                if len >= w {
                    let i = rng.below(len / w) * w;
                    if wide {
                        b[i..i + 8].copy_from_slice(&v.to_le_bytes());
                    } else {
                        b[i..i + 4].copy_from_slice(&(v as u32).to_le_bytes());
                    }
                }
            }
            // Small add/subtract on a byte (off-by-one sizes and indices).
            4 => {
                let i = rng.below(len);
                b[i] = b[i].wrapping_add(if rng.below(2) == 0 { 1 } else { 0xff });
            }
            // Truncate.
            5 => {
                let n = rng.below(len);
                b.truncate(n);
            }
            // Splice: copy a chunk over another place.
            6 => {
                let from = rng.below(len);
                let to = rng.below(len);
                let n = rng.below(64).min(len - from).min(len - to);
                let chunk = b[from..from + n].to_vec();
                b[to..to + n].copy_from_slice(&chunk);
            }
            // Insert bytes (shifts every later offset).
            7 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, ins);
            }
            // Delete bytes.
            _ => {
                let at = rng.below(len);
                let n = (1 + rng.below(16)).min(len - at);
                b.drain(at..at + n);
            }
        }
    }
    b
}

fn exercise(bytes: &[u8]) -> bool {
    let Ok(spec) = obj::parse(bytes) else {
        return false;
    };
    let _ = spec.program_names();
    for m in &spec.maps {
        let _ = (m.kernel_name(), m.frozen());
        let _ = spec.map_index(&m.name);
    }
    let Ok(mut progs) = linker::link(&spec) else {
        return false;
    };
    let fds: Vec<i32> = (0..spec.maps.len() as i32).collect();
    for p in &mut progs {
        check_linked(&spec, p);
        let _ = btf::program_btf(p);
        p.resolve_maps(&fds).expect("resolve_maps with enough fds");
    }
    true
}

fn fuzz(name: &str, base: &[u8], seed: u64) {
    assert!(exercise(base), "{name}: base object must link");
    let mut rng = Rng(seed);
    let mut linked = 0;
    let n = iterations();
    for iter in 0..n {
        let input = mutate(&mut rng, base);
        match catch_unwind(AssertUnwindSafe(|| exercise(&input))) {
            Ok(ok) => linked += ok as usize,
            Err(_) => {
                let path = std::env::temp_dir().join(format!("bpfckpt-fuzz-{name}-{iter}.o"));
                let _ = std::fs::write(&path, &input);
                panic!(
                    "{name}: iteration {iter} (seed {seed:#x}) panicked; input saved to {}",
                    path.display()
                );
            }
        }
    }
    // Not a correctness requirement, but the fuzzer is only useful if a good
    // share of mutants gets past the ELF header checks into link.
    eprintln!("{name}: {linked}/{n} mutants linked");
}

#[test]
fn fuzz_probes_obj() {
    fuzz("probes", bpfckpt::PROBES_OBJ, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn fuzz_rustc_fixture() {
    fuzz("fixture", RUSTC_FIXTURE, 0xd1b5_4a32_d192_ed03);
}

#[test]
fn fuzz_rich_object() {
    fuzz("rich", &rich_object(), 0x2545_f491_4f6c_dd1d);
}
