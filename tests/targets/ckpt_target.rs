//! Protocol target for the scenario tests: `ckpt-target SCENARIO [--cycles N]
//! [--dir DIR]`. Sets up the memory of its scenario, asks for checkpoints
//! and restores, damages its memory in between, and verifies every byte it
//! owns after each restore. Prints `PASS ...` and exits 0, or `FAIL ...`
//! and exits 1.

#[path = "../src/proto.rs"]
mod proto;
#[path = "../src/sys.rs"]
mod sys;

use proto::*;
use sys::Region;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
/// Where the shared fixed mapping goes: far from anything the loader places.
const FIXED_ADDR: usize = 0x2000_0000_0000;

/// `.bss`: zero-initialised.
static mut BSS: [u8; 8 * MIB] = [0; 8 * MIB];
/// `.data`: initialised, so it is a writable private file mapping.
static mut DATA: [u64; 8192] = [0x0123_4567_89ab_cdef; 8192];

fn bss() -> Region {
    sys::from_static(&raw mut BSS as *mut u8, 8 * MIB)
}

fn data() -> Region {
    sys::from_static(&raw mut DATA as *mut u8, 8192 * 8)
}

/// Checkpoint/restore cycles over `regions`: fill, checkpoint, damage with
/// `damage`, restore, verify.
fn cycles(m: &Markers, n: u32, regions: &mut [Region], mut damage: impl FnMut(u32, &mut [Region])) {
    for c in 1..=n {
        let seed = 0xc0ffee + u64::from(c);
        for (k, r) in regions.iter_mut().enumerate() {
            fill(r.bytes_mut(), seed + k as u64);
        }
        m.checkpoint();
        for (k, r) in regions.iter_mut().enumerate() {
            fill(r.bytes_mut(), !(seed + k as u64));
        }
        damage(c, regions);
        m.restore();
        for (k, r) in regions.iter().enumerate() {
            verify(
                &format!("region {k} at {:#x} (cycle {c})", r.addr()),
                r.bytes(),
                seed + k as u64,
            );
        }
    }
}

fn main() {
    let a = args();
    let m = Markers::new(&a.dir);
    let scenario = a
        .words
        .first()
        .cloned()
        .unwrap_or_else(|| fail("usage: ckpt-target SCENARIO"));
    let mut bytes = 0usize;
    match scenario.as_str() {
        "heap-small" => {
            let r = sys::malloc(4096);
            // glibc serves small allocations from the brk heap; musl's
            // mallocng (the static VM build) from its own mmap'd groups.
            if cfg!(target_env = "gnu") && !in_mapping(r.addr(), "[heap]") {
                fail("a 4 KiB malloc did not come from the brk heap");
            }
            bytes += r.len;
            cycles(&m, a.cycles, &mut [r], |_, _| {});
        }
        "heap-big" => {
            let r = sys::malloc(16 * MIB);
            if in_mapping(r.addr(), "[heap]") {
                fail("a 16 MiB malloc came from the brk heap");
            }
            bytes += r.len;
            cycles(&m, a.cycles, &mut [r], |_, _| {});
        }
        "shared-fixed" => {
            let r = sys::mmap_anon(2 * MIB, true, Some(FIXED_ADDR));
            bytes += r.len;
            cycles(&m, a.cycles, &mut [r], |_, _| {});
        }
        "bss-data" => {
            let (b, d) = (bss(), data());
            bytes += b.len + d.len;
            cycles(&m, a.cycles, &mut [b, d], |_, _| {});
        }
        "data-untouched" => {
            // The .data array is never written: its pages hold the file's bytes.
            m.checkpoint();
            m.restore();
            let d = data();
            if d.bytes()
                .chunks_exact(8)
                .any(|w| w != 0x0123_4567_89ab_cdefu64.to_le_bytes())
            {
                fail(".data lost its initial value");
            }
            bytes += d.len;
        }
        "untouched" => {
            // Half the region is untouched at the checkpoint and dirtied after.
            let mut r = sys::mmap_anon(4 * MIB, false, None);
            fill(&mut r.bytes_mut()[..2 * MIB], 7);
            m.checkpoint();
            for p in r.bytes_mut()[2 * MIB..].chunks_mut(PAGE) {
                p[100] = 0x5a;
            }
            fill(&mut r.bytes_mut()[..2 * MIB], 8);
            m.restore();
            verify("touched half", &r.bytes()[..2 * MIB], 7);
            verify_zero("half untouched at the checkpoint", &r.bytes()[2 * MIB..]);
            bytes += r.len;
        }
        "zapped" => {
            let r = sys::mmap_anon(4 * MIB, false, None);
            bytes += r.len;
            cycles(&m, a.cycles, &mut [r], |_, rs| sys::zap(&rs[0]));
        }
        "readonly" => {
            let mut r = sys::mmap_anon(MIB, false, None);
            fill(r.bytes_mut(), 11);
            m.checkpoint();
            fill(r.bytes_mut(), 12);
            sys::protect(&r, false);
            m.restore();
            verify("read-only region", r.bytes(), 11);
            sys::protect(&r, true);
            bytes += r.len;
        }
        "inaccessible" => {
            // Inaccessible at the checkpoint and at the restore: only
            // /proc/PID/mem (FOLL_FORCE) reads and writes it.
            let mut r = sys::mmap_anon(256 * 1024, false, None);
            fill(r.bytes_mut(), 13);
            sys::protect_none(&r);
            m.checkpoint();
            sys::protect(&r, true);
            fill(r.bytes_mut(), 14);
            sys::protect_none(&r);
            m.restore();
            sys::protect(&r, true);
            verify("inaccessible region", r.bytes(), 13);
            bytes += r.len;
        }
        "all" => {
            // Every kind of memory, damaged every way, over many cycles.
            let mut rs = [
                sys::malloc(4096),
                sys::malloc(16 * MIB),
                sys::mmap_anon(2 * MIB, true, Some(FIXED_ADDR)),
                bss(),
                data(),
                sys::mmap_anon(4 * MIB, false, None),
            ];
            bytes += rs.iter().map(|r| r.len).sum::<usize>();
            let mut fresh = sys::mmap_anon(4 * MIB, false, None);
            bytes += fresh.len;
            cycles(&m, a.cycles, &mut rs, |c, rs| {
                sys::zap(&rs[5]);
                // A page never touched before this cycle gets dirtied.
                let i = (c as usize * 13) % (fresh.len / PAGE);
                fresh.bytes_mut()[i * PAGE] = 1;
            });
            // `fresh` was never written before any checkpoint: zero again.
            verify_zero("pages untouched at every checkpoint", fresh.bytes());
        }
        "threads" => {
            // Two threads keep data on their own stacks throughout; a restore
            // must never roll a live thread stack back under them. Each also
            // records its current seed in file-shared memory, which bpfckpt
            // never captures, so a rolled-back stack cannot go unnoticed.
            // Rolling memory back under a thread that is still setting itself
            // up (its malloc arena, its thread cache) breaks it; like any
            // target, this one reaches a quiet point before the first
            // checkpoint: the workers are running and allocate no more.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ready = std::sync::Arc::new(std::sync::Barrier::new(3));
            let shared = sys::mmap_file_shared(PAGE);
            let workers: Vec<_> = (0..2usize)
                .map(|k| {
                    let stop = stop.clone();
                    let ready = ready.clone();
                    let mut shared = shared;
                    std::thread::spawn(move || {
                        let mut buf = [0u64; 512];
                        let mut seed = 1u64;
                        ready.wait();
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            buf.fill(seed);
                            shared.bytes_mut()[k * 8..k * 8 + 8]
                                .copy_from_slice(&seed.to_le_bytes());
                            std::hint::black_box(&mut buf);
                            // Spin (no system call): a running thread's stack
                            // pointer is not visible in /proc.
                            let t0 = std::time::Instant::now();
                            while t0.elapsed() < std::time::Duration::from_micros(200) {
                                std::hint::spin_loop();
                            }
                            let now = u64::from_le_bytes(
                                shared.bytes()[k * 8..k * 8 + 8]
                                    .try_into()
                                    .unwrap_or([0; 8]),
                            );
                            if buf.iter().any(|&x| x != now) || seed != now {
                                return false;
                            }
                            seed += 1;
                        }
                        true
                    })
                })
                .collect();
            let r = sys::malloc(MIB);
            ready.wait();
            bytes += r.len;
            cycles(&m, a.cycles, &mut [r], |_, _| {});
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if !workers.into_iter().all(|w| w.join().unwrap_or(false)) {
                fail("a thread's stack changed under it");
            }
        }
        "hold" => {
            // For the kill tests: checkpoint, then wait to be killed.
            let mut r = sys::malloc(MIB);
            fill(r.bytes_mut(), 1);
            m.checkpoint();
            println!("CHECKPOINTED");
            std::thread::sleep(std::time::Duration::from_secs(600));
        }
        other => fail(&format!("unknown scenario {other}")),
    }
    println!("PASS {scenario} cycles={} bytes={bytes}", a.cycles);
}
