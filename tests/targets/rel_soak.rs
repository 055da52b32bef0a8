//! Soak target: `rel-soak --dir DIR --seconds S [--min-cycles N] [--seed X] [--wait SECS]`.
//! Runs checkpoint/restore cycles until S seconds have passed (and at
//! least N cycles ran), with random
//! damage between checkpoint and restore (a seeded PRNG: random writes,
//! whole pages rewritten, pages discarded with MADV_DONTNEED, pages that were
//! untouched at the checkpoint dirtied, part of a region made read-only)
//! over memory of every kind: small blocks in the brk heap, a big malloc
//! (mmap), a private anonymous mapping, a shared anonymous mapping, `.bss`
//! and `.data`. After every restore it compares every byte with what it
//! wrote before the checkpoint, counts the bytes that differ, and goes on.
//! Ends with `SOAK cycles=N bytes_verified=B corruptions=C seed=X` and exits
//! 0 only if C is 0 (1 otherwise, 3 if bpfckpt stopped answering).

#[path = "../src/proto.rs"]
mod proto;
#[path = "rel_common.rs"]
mod rel_common;
#[path = "../src/sys.rs"]
mod sys;

use proto::Markers;
use rel_common::*;
use std::time::{Duration, Instant};
use sys::Region;

const BSS_LEN: usize = 4 * MIB;
static mut BSS: [u8; BSS_LEN] = [0; BSS_LEN];
static mut DATA: [u64; 4096] = [0x5eed_5eed_5eed_5eed; 4096];

/// xorshift64*: the damage is random but reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// A region whose every byte the soak owns. `zappable`: private anonymous
/// memory, where MADV_DONTNEED discards pages (they read as zero until the
/// restore brings them back).
struct Owned {
    r: Region,
    name: &'static str,
    zappable: bool,
}

fn main() {
    let a = Args::parse();
    let seconds: f64 = a.num("seconds", 60.0);
    let min_cycles = a.num("min-cycles", 1.0) as u64;
    let seed: u64 = a.num("seed", 0x50a6_u64);
    let p = Markers::new(&a.dir()).with_limit(Duration::from_secs_f64(a.num("wait", 120.0f64)));
    say(&format!("READY pid={} seed={seed:#x}", std::process::id()));
    let mut rng = Rng(seed | 1);

    // Small blocks in the brk heap (and their malloc metadata around them).
    let mut owned: Vec<Owned> = (0..32)
        .map(|_| Owned {
            r: sys::malloc(1000 + 37 * 8),
            name: "heap block",
            zappable: false,
        })
        .collect();
    owned.push(Owned {
        r: sys::malloc(8 * MIB),
        name: "big malloc",
        zappable: true,
    });
    owned.push(Owned {
        r: sys::mmap_anon(8 * MIB, false, None),
        name: "private mapping",
        zappable: true,
    });
    owned.push(Owned {
        r: sys::mmap_anon(2 * MIB, true, None),
        name: "shared anonymous mapping",
        zappable: false,
    });
    owned.push(Owned {
        r: sys::from_static(&raw mut BSS as *mut u8, BSS_LEN),
        name: ".bss",
        zappable: true,
    });
    owned.push(Owned {
        r: sys::from_static(&raw mut DATA as *mut u8, 4096 * 8),
        name: ".data",
        zappable: false,
    });
    // A sparse region: each cycle only some pages hold data at the
    // checkpoint; the others must read as zero after every restore.
    let sparse = sys::mmap_anon(4 * MIB, false, None);
    let sparse_pages = sparse.len / PAGE;
    let mut written = vec![false; sparse_pages];
    let bytes_per_cycle: usize = owned.iter().map(|o| o.r.len).sum::<usize>() + sparse.len;
    say(&format!(
        "REGIONS count={} bytes_per_cycle={bytes_per_cycle}",
        owned.len() + 1
    ));

    let mut pats: Vec<Pattern> = (0..owned.len()).map(|_| Pattern::new(0)).collect();
    let mut sparse_pat = Pattern::new(0);
    let damage = Pattern::new(0xdeadbeef);
    let start = Instant::now();
    let (mut cycles, mut verified, mut corrupt) = (0u64, 0u64, 0u64);
    while start.elapsed().as_secs_f64() < seconds || cycles < min_cycles {
        cycles += 1;
        for (k, (o, pat)) in owned.iter_mut().zip(pats.iter_mut()).enumerate() {
            pat.reseed(seed ^ (cycles << 8) ^ k as u64);
            pat.fill(o.r.bytes_mut());
        }
        sys::zap(&sparse);
        sparse_pat.reseed(seed ^ (cycles << 8) ^ 0xff);
        for (i, w) in written.iter_mut().enumerate() {
            *w = rng.below(3) == 0;
            if *w {
                sparse_pat.write_page(i, sparse.sub(i * PAGE, PAGE).bytes_mut());
            }
        }
        if p.try_checkpoint().is_none() {
            say("NO-MARKER checkpoint");
            std::process::exit(3);
        }
        // Random damage; nothing allocated until the restore.
        let mut readonly: Option<Region> = None;
        for _ in 0..1 + rng.below(64) {
            let k = rng.below(owned.len());
            let r = owned[k].r;
            match rng.below(6) {
                0 | 1 => {
                    let off = rng.below(r.len.saturating_sub(8));
                    let v = rng.next().to_le_bytes();
                    let n = 8.min(r.len - off);
                    r.sub(off, n).bytes_mut().copy_from_slice(&v[..n]);
                }
                2 => {
                    let pg = rng.below(r.len.div_ceil(PAGE));
                    let mut s = r.sub(pg * PAGE, PAGE);
                    damage.fill(s.bytes_mut());
                }
                3 if owned[k].zappable && r.len >= 2 * PAGE => {
                    // Page-aligned part of the region, up to 64 pages.
                    let first = r.addr().div_ceil(PAGE) * PAGE - r.addr();
                    let pages = (r.len - first) / PAGE;
                    let at = rng.below(pages);
                    let n = 1 + rng.below(64.min(pages - at));
                    sys::zap(&r.sub(first + at * PAGE, n * PAGE));
                }
                4 => {
                    // A page untouched at the checkpoint gets dirtied.
                    let i = rng.below(sparse_pages);
                    sparse.sub(i * PAGE, PAGE).bytes_mut()[rng.below(PAGE)] = 0x5a;
                }
                _ => {
                    let n = rng.below(PAGE);
                    let off = rng.below(r.len.saturating_sub(n));
                    r.sub(off, n).bytes_mut().fill(rng.next() as u8);
                }
            }
        }
        if rng.below(4) == 0 {
            // Part of the private mapping read-only at the restore (bpfckpt
            // writes it through /proc/PID/mem).
            let o = owned.iter().find(|o| o.name == "private mapping");
            if let Some(o) = o {
                let ro = o.r.sub(MIB, MIB);
                damage.fill(ro.sub(0, PAGE).bytes_mut());
                sys::protect(&ro, false);
                readonly = Some(ro);
            }
        }
        if p.try_restore().is_none() {
            say("NO-MARKER restore");
            std::process::exit(3);
        }
        if let Some(ro) = readonly {
            sys::protect(&ro, true);
        }
        for (o, pat) in owned.iter().zip(&pats) {
            let bad = pat.bad_bytes(o.r.bytes());
            if bad > 0 {
                say(&format!(
                    "CORRUPT cycle={cycles} region={} at={:#x} bytes={bad}",
                    o.name,
                    o.r.addr()
                ));
            }
            corrupt += bad as u64;
            verified += o.r.len as u64;
        }
        for (i, &w) in written.iter().enumerate() {
            let pg = sparse.sub(i * PAGE, PAGE);
            let bad = if w {
                if sparse_pat.page_ok(i, pg.bytes()) {
                    0
                } else {
                    sparse_pat.bad_bytes(pg.bytes())
                }
            } else if is_zero(pg.bytes()) {
                0
            } else {
                pg.bytes().iter().filter(|&&b| b != 0).count()
            };
            if bad > 0 {
                say(&format!(
                    "CORRUPT cycle={cycles} region=sparse page={i} written={w} bytes={bad}"
                ));
            }
            corrupt += bad as u64;
        }
        verified += sparse.len as u64;
    }
    say(&format!(
        "SOAK cycles={cycles} bytes_verified={verified} corruptions={corrupt} seed={seed:#x} seconds={:.1}",
        start.elapsed().as_secs_f64()
    ));
    std::process::exit(if corrupt == 0 { 0 } else { 1 });
}
