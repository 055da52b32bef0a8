//! Shared by the deterministic mutation tests (fuzz.rs), the regression
//! replay (fuzz_corpus.rs) and the time-bounded fuzz driver (the
//! application's loader/tests/fuzz_driver.rs, run by `cargo xtask fuzz`,
//! which includes this file with `#[path]` and adds the real probe object as
//! a seed): the seed objects, byte-level and structure-aware mutations of ELF
//! objects, one run of parse + link + program_btf with its invariants, and
//! the memory budget.
//!
//! Memory budget, two layers:
//! - per input, the growth of the peak resident set: `/proc/self/clear_refs`
//!   (`5`) resets VmHWM to the current RSS before the input, VmHWM is read
//!   after it; more than [`MEM_BUDGET_BASE`] + [`MEM_BUDGET_PER_BYTE`] per
//!   input byte is a finding (allocation driven by a header field rather
//!   than by the input's size);
//! - a hard cap on the worker's address space (`prlimit --as`, set by the
//!   driver), so that a huge reservation that is never touched fails (Rust
//!   aborts on allocation failure) instead of exhausting the machine; the
//!   driver saves the input in flight.
#![allow(dead_code)]

use crate::common::{Rng, check_linked, rich_object};
use bpfload::{btf, linker, obj};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

pub const MEM_BUDGET_BASE: u64 = 64 << 20;
pub const MEM_BUDGET_PER_BYTE: u64 = 256;

/// bpfload's tests folder, also when another package's test includes this
/// file: `file!()` is relative to the workspace root, an ancestor of the
/// including package.
pub fn tests_dir() -> PathBuf {
    let here = Path::new(file!());
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join(here))
        .find(|p| p.is_file())
        .and_then(|p| Some(p.parent()?.parent()?.to_path_buf()))
        .expect("the fuzzing module's own source file")
}

/// Regression inputs: every file here is replayed by fuzz_corpus.rs.
pub fn corpus_dir() -> PathBuf {
    tests_dir().join("fuzz-corpus")
}

/// The hand-made object with every relocation case and every `*.o` under
/// fixtures/ (the fuzz driver adds the real probe object).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut v = vec![("rich".to_string(), rich_object())];
    let fixtures = tests_dir().join("fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for p in files {
        if p.extension().is_some_and(|e| e == "o") {
            let data = std::fs::read(&p).expect("read fixture");
            v.push((p.display().to_string(), data));
        }
    }
    v
}

/// Inputs that still crash because of a known, reported bug: replayed by an
/// ignored test until the bug is fixed (then they move up to the corpus),
/// and their failures are not counted as new findings by the driver.
pub fn known_dir() -> PathBuf {
    corpus_dir().join("known")
}

/// Every regular `.bin` file of the corpus directory.
pub fn corpus_files() -> Vec<PathBuf> {
    bin_files(&corpus_dir())
}

pub fn known_files() -> Vec<PathBuf> {
    bin_files(&known_dir())
}

/// A panic message without its program name and numbers: the same bug
/// reached through another program or offset has the same key.
pub fn failure_key(msg: &str) -> String {
    let msg = match msg.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => rest,
        _ => msg,
    };
    msg.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

fn bin_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "bin"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// FNV-1a, for crash file names.
pub fn hash(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Saves `input` as `<kind>-<hash>.bin` in the corpus directory.
pub fn save(kind: &str, input: &[u8]) -> PathBuf {
    let dir = corpus_dir();
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join(format!("{kind}-{:016x}.bin", hash(input)));
    std::fs::write(&p, input).expect("write crash file");
    p
}

/// What one input did: a short signature of the outcome (the error message
/// without numbers, or how far it got), used to keep inputs that reach new
/// behaviour.
pub fn exercise(bytes: &[u8]) -> String {
    let spec = match obj::parse(bytes) {
        Ok(s) => s,
        Err(e) => return signature("parse", &e.msg),
    };
    let _ = spec.program_names();
    for m in &spec.maps {
        let _ = (m.kernel_name(), m.frozen());
        let _ = spec.map_index(&m.name);
    }
    let mut progs = match linker::link(&spec) {
        Ok(p) => p,
        Err(e) => return signature("link", &e.msg),
    };
    let fds: Vec<i32> = (0..spec.maps.len() as i32).collect();
    let mut funcs = 0;
    for p in &mut progs {
        check_linked(&spec, p);
        let b = btf::program_btf(p);
        funcs += b.func_info_cnt();
        p.resolve_maps(&fds).expect("resolve_maps with enough fds");
    }
    format!(
        "ok: {} maps, {} programs, {funcs} funcs",
        spec.maps.len(),
        progs.len()
    )
}

fn signature(stage: &str, msg: &str) -> String {
    let s: String = msg
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .take(48)
        .collect();
    format!("{stage}: {s}")
}

/// A kernel-memory-free view of our own memory: VmRSS and VmHWM in bytes.
fn vm(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Resets the peak RSS (VmHWM) to the current RSS. Without it the memory
/// budget cannot be checked, and a fuzz run that cannot check what it claims
/// to must fail, not pass quietly.
fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", b"5") {
        panic!(
            "cannot reset the peak resident set through /proc/self/clear_refs ({e}): the memory budget cannot be checked"
        );
    }
}

#[derive(Debug)]
pub enum Failure {
    /// parse/link/btf panicked (or an invariant check failed).
    Panic(String),
    /// Peak RSS grew by more than the budget.
    Memory { grew: u64, budget: u64 },
}

/// Runs one input under `catch_unwind` and the memory budget.
pub fn run_one(input: &[u8]) -> Result<String, Failure> {
    reset_peak();
    let before = vm("VmRSS:");
    let r = catch_unwind(AssertUnwindSafe(|| exercise(input)));
    let grew = vm("VmHWM:").saturating_sub(before);
    let sig = r.map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string());
        Failure::Panic(msg)
    })?;
    let budget = MEM_BUDGET_BASE + MEM_BUDGET_PER_BYTE * input.len() as u64;
    if grew > budget {
        return Err(Failure::Memory { grew, budget });
    }
    Ok(sig)
}

// ---------------------------------------------------------------------------------------
// Fixed-length runs (fuzz.rs and the probe object test).

/// Per base object; `BPFCKPT_FUZZ_ITERS` overrides it for longer runs.
const ITERATIONS_PER_BASE: usize = 6000;

fn iterations() -> usize {
    std::env::var("BPFCKPT_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS_PER_BASE)
}

/// Deterministic mutation fuzzing of `base` for a fixed number of inputs:
/// nothing may panic, and whatever links must satisfy the invariants of a
/// good object. The seed fixes the run, so a failure repeats.
pub fn fuzz_fixed(name: &str, base: &[u8], seed: u64) {
    let links = |b: &[u8]| exercise(b).starts_with("ok:");
    assert!(links(base), "{name}: base object must link");
    let mut rng = Rng(seed);
    let mut linked = 0;
    let n = iterations();
    for iter in 0..n {
        let input = mutate_bytes(&mut rng, base);
        match catch_unwind(AssertUnwindSafe(|| links(&input))) {
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

/// One to four byte-level mutations of `base` (no structure awareness).
pub fn mutate_bytes(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
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

// ---------------------------------------------------------------------------------------
// Mutations.

const INTERESTING: [u64; 24] = [
    0,
    1,
    2,
    7,
    8,
    16,
    20,
    24,
    64,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
];

fn rd(b: &[u8], at: usize, w: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(w)?)?;
    let mut v = [0u8; 8];
    v[..w].copy_from_slice(s);
    Some(u64::from_le_bytes(v))
}

fn wr(b: &mut [u8], at: usize, w: usize, v: u64) {
    if let Some(s) = at.checked_add(w).and_then(|e| b.get_mut(at..e)) {
        s.copy_from_slice(&v.to_le_bytes()[..w]);
    }
}

/// A new value for a field of width `w` that holds `old`.
fn new_value(rng: &mut Rng, old: u64, w: usize, len: usize) -> u64 {
    let mask = if w == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * w)) - 1
    };
    let v = match rng.below(6) {
        0 | 1 => INTERESTING[rng.below(INTERESTING.len())],
        2 => old.wrapping_add(1 + rng.below(16) as u64),
        3 => old.wrapping_sub(1 + rng.below(16) as u64),
        4 => (len as u64)
            .wrapping_add(rng.below(3) as u64)
            .wrapping_sub(1),
        _ => old ^ (1 << rng.below(8 * w)),
    };
    v & mask
}

/// ELF section headers: (file offset of each header).
fn section_headers(b: &[u8]) -> Vec<usize> {
    let (Some(shoff), Some(shentsize), Some(shnum)) =
        (rd(b, 0x28, 8), rd(b, 0x3a, 2), rd(b, 0x3c, 2))
    else {
        return Vec::new();
    };
    if shentsize != 64 {
        return Vec::new();
    }
    (0..shnum as usize)
        .filter_map(|i| (shoff as usize).checked_add(i * 64))
        .filter(|&h| h.checked_add(64).is_some_and(|e| e <= b.len()))
        .collect()
}

/// Entries (file offsets) of sections of type `sh_type` with entry size `ent`.
fn entries(b: &[u8], sh_type: u64, ent: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for h in section_headers(b) {
        if rd(b, h + 4, 4) != Some(sh_type) {
            continue;
        }
        let (Some(off), Some(size)) = (rd(b, h + 24, 8), rd(b, h + 32, 8)) else {
            continue;
        };
        let (off, size) = (off as usize, (size as usize).min(b.len()));
        let mut e = off;
        while e.saturating_add(ent) <= b.len() && e.saturating_add(ent) <= off.saturating_add(size)
        {
            out.push(e);
            e += ent;
        }
    }
    out
}

/// Instructions (file offsets) of executable sections.
fn instructions(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    for h in section_headers(b) {
        if rd(b, h + 8, 8).is_none_or(|f| f & 4 == 0) {
            continue;
        }
        let (Some(off), Some(size)) = (rd(b, h + 24, 8), rd(b, h + 32, 8)) else {
            continue;
        };
        let off = off as usize;
        let end = off.saturating_add(size as usize).min(b.len());
        out.extend((off..end).step_by(8).filter(|&i| i + 8 <= end));
    }
    out
}

/// Field (offset, width) tables.
const SHDR_FIELDS: [(usize, usize); 10] = [
    (0, 4),
    (4, 4),
    (8, 8),
    (16, 8),
    (24, 8),
    (32, 8),
    (40, 4),
    (44, 4),
    (48, 8),
    (56, 8),
];
const EHDR_FIELDS: [(usize, usize); 9] = [
    (0x10, 2),
    (0x12, 2),
    (0x28, 8),
    (0x34, 2),
    (0x3a, 2),
    (0x3c, 2),
    (0x3e, 2),
    (0x04, 1),
    (0x05, 1),
];
const SYM_FIELDS: [(usize, usize); 6] = [(0, 4), (4, 1), (5, 1), (6, 2), (8, 8), (16, 8)];
const REL_FIELDS: [(usize, usize); 3] = [(0, 8), (8, 4), (12, 4)];
const INSN_FIELDS: [(usize, usize); 4] = [(0, 1), (1, 1), (2, 2), (4, 4)];

fn edit_field(rng: &mut Rng, b: &mut [u8], base: usize, fields: &[(usize, usize)]) {
    let (off, w) = fields[rng.below(fields.len())];
    let len = b.len();
    if let Some(old) = rd(b, base + off, w) {
        let v = new_value(rng, old, w, len);
        wr(b, base + off, w, v);
    }
}

/// One to four mutations of `base`; `other` is a second input to splice from.
pub fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.extend_from_slice(&other[..other.len().min(64)]);
            continue;
        }
        let len = b.len();
        match rng.below(14) {
            // Bits and bytes anywhere.
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(len);
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(len);
                    b[i] = rng.next() as u8;
                }
            }
            // Interesting integers at aligned offsets.
            2 => {
                let w = [2, 4, 8][rng.below(3)];
                if len >= w {
                    let at = rng.below(len / w) * w;
                    let v = INTERESTING[rng.below(INTERESTING.len())];
                    wr(&mut b, at, w, v);
                }
            }
            3 => {
                let i = rng.below(len);
                let d = 1 + rng.below(16) as u8;
                b[i] = if rng.below(2) == 0 {
                    b[i].wrapping_add(d)
                } else {
                    b[i].wrapping_sub(d)
                };
            }
            // Truncation: anywhere, or just inside a section's data.
            4 => {
                let hs = section_headers(&b);
                let at = if !hs.is_empty() && rng.below(2) == 0 {
                    let h = hs[rng.below(hs.len())];
                    (rd(&b, h + 24, 8).unwrap_or(0) as usize).saturating_add(rng.below(16))
                } else {
                    rng.below(len)
                };
                b.truncate(at.min(len));
            }
            // Splice a chunk of the other input over this one.
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let to = rng.below(len);
                let n = (1 + rng.below(256)).min(other.len() - from).min(len - to);
                b[to..to + n].copy_from_slice(&other[from..from + n]);
            }
            // Insert (random bytes or a copy), delete.
            6 => {
                let at = rng.below(len + 1);
                let ins: Vec<u8> = if rng.below(2) == 0 {
                    (0..1 + rng.below(32)).map(|_| rng.next() as u8).collect()
                } else {
                    let from = rng.below(len);
                    b[from..(from + 1 + rng.below(64)).min(len)].to_vec()
                };
                b.splice(at..at, ins);
            }
            7 => {
                let at = rng.below(len);
                let n = (1 + rng.below(64)).min(len - at);
                b.drain(at..at + n);
            }
            // Structure-aware edits: section headers, the ELF header,
            // symbols, relocations, instructions.
            8 | 9 => {
                let hs = section_headers(&b);
                if !hs.is_empty() {
                    let h = hs[rng.below(hs.len())];
                    if rng.below(4) == 0 && hs.len() > 1 {
                        // A field copied from another section's header.
                        let (off, w) = SHDR_FIELDS[rng.below(SHDR_FIELDS.len())];
                        let src = hs[rng.below(hs.len())];
                        if let Some(v) = rd(&b, src + off, w) {
                            wr(&mut b, h + off, w, v);
                        }
                    } else {
                        edit_field(rng, &mut b, h, &SHDR_FIELDS);
                    }
                }
            }
            10 => edit_field(rng, &mut b, 0, &EHDR_FIELDS),
            11 => {
                let es = entries(&b, 2, 24);
                if !es.is_empty() {
                    let e = es[rng.below(es.len())];
                    edit_field(rng, &mut b, e, &SYM_FIELDS);
                }
            }
            12 => {
                let es = entries(&b, 9, 16);
                if !es.is_empty() {
                    let e = es[rng.below(es.len())];
                    edit_field(rng, &mut b, e, &REL_FIELDS);
                }
            }
            _ => {
                let is = instructions(&b);
                if !is.is_empty() {
                    let i = is[rng.below(is.len())];
                    if rng.below(3) == 0 {
                        // A bpf-to-bpf call or an ld_imm64 where there was none.
                        let op: u8 = if rng.below(2) == 0 { 0x85 } else { 0x18 };
                        b[i] = op;
                        b[i + 1] = (b[i + 1] & 0x0f) | (rng.below(5) as u8) << 4;
                    } else {
                        edit_field(rng, &mut b, i, &INSN_FIELDS);
                    }
                }
            }
        }
    }
    b
}

/// Replays `path`, panicking with a useful message on a failure.
pub fn replay(path: &Path, input: &[u8]) -> String {
    match run_one(input) {
        Ok(sig) => sig,
        Err(f) => panic!("{}: {f:?}", path.display()),
    }
}

/// The budget's yardstick works: after a reset, touching 64 MiB raises the
/// peak resident set by at least that much.
pub fn peak_growth_is_measured() {
    reset_peak();
    let before = vm("VmRSS:");
    let mut v = vec![0u8; 64 << 20];
    for b in v.iter_mut().step_by(4096) {
        *b = 1;
    }
    std::hint::black_box(&v);
    let grew = vm("VmHWM:").saturating_sub(before);
    assert!(grew >= 64 << 20, "peak RSS grew by {grew} bytes only");
}
