//! Adversarial protocol target: `adv-target SCENARIO [--cycles N] --dir DIR`.
//!
//! Each scenario owns its memory, fills it with seeded patterns, asks for a
//! checkpoint, then destroys every captured mapping of the whole process
//! (the scorch, see `src/scorch.rs`: heap, libc's data, TLS, its own
//! regions, everything but the live stack), asks for the restore, and checks
//! that every captured mapping hashes as before the checkpoint, that every
//! byte it owns is as the scenario expects, and that the process still works
//! (malloc, free, formatting, files). Prints `PASS ...` and exits 0, or one
//! `FAIL ...` line naming every difference and exits 1. The names follow
//! CRIU's zdtm memory tests where a scenario is modelled on one (the code
//! is our own).

#[path = "../src/memfns.rs"]
mod memfns;
#[path = "../src/memsys.rs"]
mod memsys;
#[path = "../src/proto.rs"]
mod proto;
#[path = "rel_common.rs"]
mod rel_common;
#[path = "../src/scorch.rs"]
mod scorch;
#[path = "../src/sys.rs"]
mod sys;

use proto::{Markers, fail};
use rel_common::Pattern;
use scorch::{Phase, Plan, Regs, Report, Skips};
use sys::Region;

const PAGE: usize = 4096;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;

const NONE: i32 = libc::PROT_NONE;
const RO: i32 = libc::PROT_READ;
const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
const RWX: i32 = RW | libc::PROT_EXEC;
const RX: i32 = libc::PROT_READ | libc::PROT_EXEC;
const WO: i32 = libc::PROT_WRITE;

const MADV_GUARD_INSTALL: i32 = 102;
const MADV_GUARD_REMOVE: i32 = 103;
const MADV_POPULATE_WRITE: i32 = 23;
const MADV_COLLAPSE: i32 = 25;
const MREMAP_MAYMOVE: i32 = 1;
const MREMAP_FIXED: i32 = 2;

/// Mappings placed by hand go to slots 64 MiB apart (2 MiB aligned), so
/// that neighbours neither merge nor sit on each other's guard pages.
fn slot(i: usize) -> usize {
    0x3000_0000_0000 + i * 64 * MIB
}

/// Anonymous memory where the kernel chooses.
fn anon(len: usize, prot: i32, extra_flags: i32) -> Region {
    memsys::map(
        0,
        len,
        prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
        -1,
        0,
    )
    .unwrap_or_else(|e| fail(&format!("setup: mmap of {len} bytes: errno {e}")))
}

fn sub(r: &Region, page: usize, pages: usize) -> Region {
    r.sub(page * PAGE, pages * PAGE)
}

/// What a scorched cycle's hook writes into file-shared memory after the
/// checkpoint: it must still be there after the restore.
fn smash_value(c: u32) -> u64 {
    0xf11e_5a7e_0000_0000 | u64::from(c)
}

fn seed_of(c: u32, k: usize) -> u64 {
    0x5eed_0000_0000 + (u64::from(c) << 20) + k as u64
}

/// What a region must hold after each restore.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Refilled with a fresh seed before every checkpoint; that pattern.
    Fill,
    /// Refilled before every checkpoint, then overwritten with
    /// `smash_value(c)` after it by the hook: memory that is never captured
    /// (file-shared), so the overwrite must survive the restore.
    FillSmashed,
    /// The pattern of `seed` starting at page `first`, written once.
    Const(u64, usize),
    /// Zero.
    Zero,
    /// Even pages: refilled with a fresh seed; odd pages: zero.
    EvenPages,
    /// Not checked here (the hash of the whole mapping still is).
    Any,
}

struct Reg {
    name: String,
    r: Region,
    want: Want,
    seed: u64,
}

impl Reg {
    fn new(name: impl Into<String>, r: Region, want: Want) -> Self {
        Self {
            name: name.into(),
            r,
            want,
            seed: 0,
        }
    }

    fn fill(&mut self, c: u32, k: usize) {
        match self.want {
            Want::Fill | Want::FillSmashed => {
                self.seed = seed_of(c, k);
                Pattern::new(self.seed).fill(self.r.bytes_mut());
            }
            Want::EvenPages => {
                self.seed = seed_of(c, k);
                let p = Pattern::new(self.seed);
                for (i, page) in self.r.bytes_mut().chunks_mut(PAGE).enumerate() {
                    if i % 2 == 0 {
                        p.write_page(i, page);
                    }
                }
            }
            _ => {}
        }
    }

    /// `None` if the region holds what it should after cycle `c`'s restore.
    fn check(&self, c: u32) -> Option<String> {
        let b = self.r.bytes();
        let (bad, first) = match self.want {
            Want::Fill => pattern_diff(b, self.seed, 0, c),
            Want::Const(seed, first) => pattern_diff(b, seed, first, c),
            Want::Zero => zero_diff(b, 0, 1, c),
            Want::FillSmashed => {
                let v = smash_value(c);
                let n = b
                    .chunks(PAGE)
                    .enumerate()
                    .filter(|(_, p)| p.chunks_exact(8).any(|w| w != v.to_le_bytes()))
                    .map(|(i, p)| (i, describe(p, c)))
                    .collect::<Vec<_>>();
                (n.len(), n.into_iter().next())
            }
            Want::EvenPages => {
                let (be, fe) = pattern_diff_stride(b, self.seed, c);
                let (bo, fo) = zero_diff(b, 1, 2, c);
                (be + bo, fe.or(fo))
            }
            Want::Any => return None,
        };
        let (i, what) = first?;
        Some(format!(
            "cycle {c}: {} ({:#x}+{:#x}, {:?}): {bad} of {} pages wrong, first page {i} {what}",
            self.name,
            self.r.addr(),
            self.r.len,
            self.want,
            b.len().div_ceil(PAGE)
        ))
    }
}

/// How a wrong page looks: the scorch's value (never restored), zeros, or
/// something else.
fn describe(page: &[u8], c: u32) -> String {
    let w = u64::from_le_bytes(page[..8].try_into().unwrap_or([0; 8]));
    if w == scorch::scorch_value(c) {
        "still holds what the scorch wrote after the checkpoint (not restored)".into()
    } else if w == smash_value(c) {
        "holds what the target wrote after the checkpoint".into()
    } else if rel_common::is_zero(page) {
        "is zero".into()
    } else {
        format!("holds other data (first word {w:#x})")
    }
}

fn pattern_diff(b: &[u8], seed: u64, first: usize, c: u32) -> (usize, Option<(usize, String)>) {
    let p = Pattern::new(seed);
    let mut n = 0;
    let mut f = None;
    for (i, page) in b.chunks(PAGE).enumerate() {
        if !p.page_ok(first + i, page) {
            n += 1;
            f.get_or_insert_with(|| (i, describe(page, c)));
        }
    }
    (n, f)
}

fn pattern_diff_stride(b: &[u8], seed: u64, c: u32) -> (usize, Option<(usize, String)>) {
    let p = Pattern::new(seed);
    let mut n = 0;
    let mut f = None;
    for (i, page) in b.chunks(PAGE).enumerate().step_by(2) {
        if !p.page_ok(i, page) {
            n += 1;
            f.get_or_insert_with(|| (i, describe(page, c)));
        }
    }
    (n, f)
}

fn zero_diff(b: &[u8], from: usize, step: usize, c: u32) -> (usize, Option<(usize, String)>) {
    let mut n = 0;
    let mut f = None;
    for (i, page) in b.chunks(PAGE).enumerate().skip(from).step_by(step) {
        if !rel_common::is_zero(page) {
            n += 1;
            f.get_or_insert_with(|| (i, format!("should be zero but {}", describe(page, c))));
        }
    }
    (n, f)
}

/// Fills `r` once with the pattern of `seed` (for regions checked as `Const`).
fn fill_const(r: &mut Region, seed: u64) -> Want {
    Pattern::new(seed).fill(r.bytes_mut());
    Want::Const(seed, 0)
}

/// A temporary file of `len` bytes holding the pattern of `seed`, already
/// unlinked.
fn pattern_file(len: usize, seed: u64) -> std::fs::File {
    let path = std::env::temp_dir().join(format!("adv-target-{}-{seed:x}", std::process::id()));
    let mut buf = vec![0u8; len];
    Pattern::new(seed).fill(&mut buf);
    std::fs::write(&path, &buf).unwrap_or_else(|e| fail(&format!("setup: write {path:?}: {e}")));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| fail(&format!("setup: open {path:?}: {e}")));
    let _ = std::fs::remove_file(&path);
    f
}

/// The process still works after a restore: malloc and free of many sizes
/// (brk heap and mmap), formatting, reading a file, printing.
fn works(c: u32) -> Option<String> {
    let mut v: Vec<Vec<u64>> = Vec::new();
    for i in 0..300usize {
        v.push(vec![i as u64 ^ u64::from(c); 1 + (i * 97) % 3000]);
    }
    let big = vec![7u8; 8 * MIB];
    let ok = v
        .iter()
        .enumerate()
        .all(|(i, x)| x.iter().all(|&w| w == i as u64 ^ u64::from(c)))
        && big.iter().step_by(4096).all(|&b| b == 7);
    drop(v);
    drop(big);
    let text = format!("{:?}", (c, "formatting", 1.5f64, vec![1, 2, 3]));
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    if !ok || text.is_empty() || stat.is_empty() {
        return Some(format!(
            "cycle {c}: the process no longer works after the restore"
        ));
    }
    rel_common::say(&format!(
        "cycle {c}: malloc, free, formatting and files work after the restore"
    ));
    None
}

/// The mappings a report names, with their lines of `/proc/self/maps`.
fn diff_lines(rep: &Report, c: u32) -> Vec<String> {
    if rep.diffs == 0 {
        return Vec::new();
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out = Vec::new();
    for &(s, e) in rep
        .diff
        .iter()
        .take((rep.diffs as usize).min(scorch::MAX_DIFFS))
    {
        let line = maps
            .lines()
            .find(|l| l.starts_with(&format!("{s:x}-{e:x} ")))
            .unwrap_or("(gone)");
        out.push(format!(
            "cycle {c}: captured mapping {s:#x}-{e:#x} differs from the checkpoint after the restore [{}]",
            line.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
        ));
    }
    if rep.diffs as usize > scorch::MAX_DIFFS {
        out.push(format!(
            "cycle {c}: {} captured mappings differ in all",
            rep.diffs
        ));
    }
    out
}

struct Ctx {
    m: Markers,
    wire: scorch::Wire,
    skips: Skips,
    cycles: u32,
    regs: Regs,
    /// Run each cycle's requests on this stack instead of the main one.
    stack: Option<Region>,
    scorched_pages: u64,
    compared: u64,
    hashed_bytes: u64,
    layout_changed: u64,
    /// `key=value` words for the PASS line.
    extra: Vec<String>,
}

impl Ctx {
    /// One scorched cycle; `hook` runs inside it (raw calls and stack data only).
    fn raw_cycle(&mut self, c: u32, hook: &mut dyn FnMut(Phase)) -> Report {
        let plan = Plan {
            wire: self.wire,
            skips: self.skips,
            scorch: true,
            cycle: c,
            limit_ns: 120_000_000_000,
            regs: self.regs,
        };
        let rep = match self.stack {
            None => scorch::cycle(&plan, hook),
            Some(stack) => {
                let mut rep = Report::default();
                scorch::on_stack(&stack, &mut || rep = scorch::cycle(&plan, hook));
                rep
            }
        };
        self.m.clean();
        self.scorched_pages += rep.scorched_pages;
        self.compared += u64::from(rep.compared);
        self.hashed_bytes += rep.hashed_bytes;
        self.layout_changed += u64::from(rep.layout_changed);
        rep
    }
}

type Step<'a> = Option<Box<dyn FnMut(u32, &mut Vec<Reg>) + 'a>>;
type Check<'a> = Option<Box<dyn FnMut(u32, &mut Vec<Reg>) -> Vec<String> + 'a>>;

/// Normal-code steps of a scenario around each cycle.
#[derive(Default)]
struct Steps<'a> {
    /// Before the regions are filled.
    before_fill: Step<'a>,
    /// After they are filled, right before the cycle.
    after_fill: Step<'a>,
    /// After the restore and the region checks: more checks.
    after_restore: Check<'a>,
}

/// The cycles of a scenario: fill, scorched cycle with `hook(c, phase)`
/// (which must only use raw calls and values it holds itself: the heap is
/// destroyed while it runs), check everything, fail with every difference.
fn run(ctx: &mut Ctx, regs: &mut Vec<Reg>, mut steps: Steps, mut hook: impl FnMut(u32, Phase)) {
    // bpfckpt sizes its page store to what the first checkpoint needs and
    // grows it when a checkpoint overflows it, completing that checkpoint
    // from user space, which also saves every present page whatever the
    // written-page tracking says. Ballast written before the first
    // checkpoint and dropped after it leaves a store large enough for what
    // the scorch makes present, so that later checkpoints are BPF's alone
    // and the tracking is what decides.
    let ballast = anon(ballast_len(), RW, 0);
    let mut b = ballast;
    b.bytes_mut().iter_mut().step_by(PAGE).for_each(|x| *x = 1);
    for c in 1..=ctx.cycles {
        if let Some(f) = steps.before_fill.as_mut() {
            f(c, regs);
        }
        for (k, r) in regs.iter_mut().enumerate() {
            r.fill(c, k);
        }
        if let Some(f) = steps.after_fill.as_mut() {
            f(c, regs);
        }
        let rep = ctx.raw_cycle(c, &mut |p| hook(c, p));
        let mut bad = diff_lines(&rep, c);
        if rep.regs_lost != 0 {
            bad.push(format!(
                "cycle {c}: registers changed across the {} request",
                match rep.regs_lost {
                    1 => "checkpoint",
                    2 => "restore",
                    _ => "checkpoint and the restore",
                }
            ));
        }
        bad.extend(regs.iter().filter_map(|r| r.check(c)));
        if let Some(f) = steps.after_restore.as_mut() {
            bad.extend(f(c, regs));
        }
        if c == 1 {
            sys::unmap(ballast);
        }
        bad.extend(works(c));
        if bad.len() > 12 {
            let more = bad.len() - 10;
            bad.truncate(10);
            bad.push(format!("and {more} more"));
        }
        if !bad.is_empty() {
            fail(&bad.join("; "));
        }
    }
}

/// What the scorch will write: the writable private and shared-anonymous
/// mappings of up to 1 GiB, plus 16 MiB.
fn ballast_len() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let total: usize = maps
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, b) = f.first()?.split_once('-')?;
            let len = usize::from_str_radix(b, 16).ok()? - usize::from_str_radix(a, 16).ok()?;
            let perms = f.get(1)?.as_bytes();
            let path = f.get(5).copied().unwrap_or("");
            let shared_anon = ["/dev/zero", "/SYSV", "/anon_hugepage"]
                .iter()
                .any(|p| path.starts_with(p));
            let ok = perms[1] == b'w'
                && (perms[3] == b'p' || shared_anon)
                && !path.starts_with("[stack");
            (ok && len <= GIB).then_some(len)
        })
        .sum();
    total + 16 * MIB
}

/// Whether `page` of this process is a guard page (reading it fails) and
/// its neighbour `ok_page` is not.
fn guard_check(name: &str, page: usize, ok_page: usize) -> Option<String> {
    match (
        memsys::vm_readable(page, PAGE),
        memsys::vm_readable(ok_page, PAGE),
    ) {
        (Err(libc::EFAULT), Ok(())) => None,
        (g, n) => Some(format!(
            "{name}: guard page {page:#x} reads as {g:?} (want Err(EFAULT)), its neighbour {ok_page:#x} as {n:?}"
        )),
    }
}

/// `AnonHugePages` of the mappings overlapping `r`, in KiB.
fn thp_kb(r: &Region) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let (s, e) = (r.addr(), r.addr() + r.len);
    let mut inside = false;
    let mut kb = 0;
    for l in smaps.lines() {
        if let Some((range, _)) = l.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = a < e && s < b;
            continue;
        }
        if inside && let Some(v) = l.strip_prefix("AnonHugePages:") {
            kb += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    kb
}

/// The extent of the mapping that contains `addr`.
fn mapping_of(addr: usize) -> Option<(usize, usize)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let (range, _) = l.split_once(' ')?;
        let (a, b) = range.split_once('-')?;
        let (a, b) = (
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
        );
        (a <= addr && addr < b).then_some((a, b))
    })
}

fn region_at(start: usize, end: usize) -> Region {
    sys::Region {
        ptr: std::ptr::NonNull::new(start as *mut u8).expect("non-null"),
        len: end - start,
    }
}

fn main() {
    let a = proto::args();
    let m = Markers::new(&a.dir);
    let wire = scorch::Wire::new(&m);
    let scenario = a
        .words
        .first()
        .cloned()
        .unwrap_or_else(|| fail("usage: adv-target SCENARIO [--cycles N] --dir DIR"));
    let mut ctx = Ctx {
        m,
        wire,
        skips: scorch::default_skips(),
        cycles: a.cycles,
        regs: Regs::None,
        stack: None,
        scorched_pages: 0,
        compared: 0,
        hashed_bytes: 0,
        layout_changed: 0,
        extra: Vec::new(),
    };
    let Some(f) = SCENARIOS
        .iter()
        .find(|(n, _)| *n == scenario)
        .map(|(_, f)| f)
    else {
        fail(&format!("unknown scenario {scenario}"));
    };
    f(&mut ctx);
    println!(
        "PASS {scenario} cycles={} scorched_pages={} compared_maps={} hashed_bytes={} layout_changed={} {}",
        ctx.cycles,
        ctx.scorched_pages,
        ctx.compared,
        ctx.hashed_bytes,
        ctx.layout_changed,
        ctx.extra.join(" ")
    );
}

// ---------------------------------------------------------------------------------------
// The scenarios.

type Scenario = fn(&mut Ctx);

const SCENARIOS: &[(&str, Scenario)] = &[
    ("baseline", baseline),
    ("maps00", maps00),
    ("maps01", maps01),
    ("maps02", maps02),
    ("maps03", maps03),
    ("maps04", maps04),
    ("maps05", maps05),
    ("maps05-rev", maps05_rev),
    ("maps05-rev-shared", maps05_rev_shared),
    ("maps06", maps06),
    ("maps07", maps07),
    ("maps07-between", maps07_between),
    ("maps09", |c| hugetlb(c, true)),
    ("maps10", |c| hugetlb(c, false)),
    ("maps12", maps12),
    ("maps12-after", maps12_after),
    ("mprotect00", mprotect00),
    ("grow_map", grow_map),
    ("shm", shm),
    ("memfd00", memfd00),
    ("thp_disable", thp_disable),
    ("fpu00", |c| registers(c, Regs::Avx)),
    ("mmx00", |c| registers(c, Regs::Mmx)),
    ("mem_touch", mem_touch),
    ("thp-madvise", |c| thp(c, true)),
    ("thp-plain", |c| thp(c, false)),
    ("mlock", mlock),
    ("mlock2", mlock2),
    ("mlockall", mlockall),
    ("map-populate", |c| populated(c, libc::MAP_POPULATE)),
    ("map-locked", |c| populated(c, libc::MAP_LOCKED)),
    ("populate-write", populate_write),
    ("madv-collapse", madv_collapse),
    ("read-into", read_into),
    ("absent-65k", absent_65k),
    ("zero-ranges-16k", zero_ranges_16k),
    ("pages-2p23", pages_2p23),
    ("c1-zero-page", |c| zero_page_read(c, false)),
    ("c1-zero-page-scan", |c| zero_page_read(c, true)),
    ("c2-mlock-dontneed", mlock_dontneed),
    ("c2-unaligned-dontneed", unaligned_dontneed),
    ("c3-layout-seq", layout_seq),
    ("c4-threads", threads_blocked),
    ("prot-wronly", prot_wronly),
    ("dev-zero-file", dev_zero_file),
    ("thread-stack-cache", thread_stack_cache),
    ("pkey", pkey),
    ("coroutine-stack", coroutine_stack),
    ("coroutine-stack-apart", coroutine_stack_apart),
];

fn no_hook(_: u32, _: Phase) {}

/// Checks the run's own premise: one region, everything else scorched.
fn baseline(ctx: &mut Ctx) {
    let r = memsys::anon_at(slot(0), MIB, RW, false);
    let mut regs = vec![Reg::new("private anonymous 1 MiB", r, Want::Fill)];
    run(ctx, &mut regs, Steps::default(), no_hook);
}

/// Many mappings of every kind, in several protections.
fn maps00(ctx: &mut Ctx) {
    let mut regs = Vec::new();
    let kinds = [
        ("private anonymous rw 4 KiB", PAGE, RW, false),
        ("private anonymous rw 64 KiB", 64 << 10, RW, false),
        ("private anonymous rw 3 MiB", 3 * MIB, RW, false),
        ("private anonymous rwx 64 KiB", 64 << 10, RWX, false),
        ("shared anonymous rw 1 MiB", MIB, RW, true),
        ("shared anonymous rw 64 KiB", 64 << 10, RW, true),
        ("shared anonymous rwx 64 KiB", 64 << 10, RWX, true),
    ];
    for (i, (name, len, prot, shared)) in kinds.into_iter().enumerate() {
        let r = memsys::anon_at(slot(i), len, prot, shared);
        regs.push(Reg::new(name, r, Want::Fill));
    }
    // Written once, then read-only or read+exec: never written again.
    let fixed = [
        ("private anonymous, read-only", RO, false),
        ("shared anonymous, read-only", RO, true),
        ("private anonymous, read+exec", RX, false),
    ];
    for (i, (name, prot, shared)) in fixed.into_iter().enumerate() {
        let mut r = memsys::anon_at(slot(10 + i), 64 << 10, RW, shared);
        let want = fill_const(&mut r, 0xc0 + i as u64);
        memsys::mprotect(&r, prot);
        regs.push(Reg::new(name, r, want));
    }
    let mut none = memsys::anon_at(slot(13), 64 << 10, RW, false);
    let none_want = fill_const(&mut none, 0xc9);
    memsys::mprotect(&none, NONE);
    // A private file mapping, half written, half as in the file.
    let f1 = pattern_file(256 << 10, 0xf1);
    {
        use std::os::unix::fs::FileExt;
        let mut half = vec![0u8; 128 << 10];
        Pattern::new(0xf2).fill(&mut half);
        f1.write_at(&half, 128 << 10)
            .expect("write the file's second half");
    }
    let p = memsys::file_at(slot(20), 256 << 10, RW, false, &f1);
    regs.push(Reg::new(
        "private file rw, written",
        sub(&p, 0, 32),
        Want::Fill,
    ));
    regs.push(Reg::new(
        "private file rw, never written",
        sub(&p, 32, 32),
        Want::Const(0xf2, 0),
    ));
    let f3 = pattern_file(128 << 10, 0xf3);
    let ro = memsys::file_at(slot(21), 128 << 10, RO, false, &f3);
    regs.push(Reg::new("private file read-only", ro, Want::Const(0xf3, 0)));
    let f4 = pattern_file(128 << 10, 0xf4);
    let shared_file = memsys::file_at(slot(22), 128 << 10, RW, true, &f4);
    regs.push(Reg::new(
        "shared file rw (never captured: keeps what was written after the checkpoint)",
        shared_file,
        Want::FillSmashed,
    ));
    let f5 = pattern_file(128 << 10, 0xf5);
    let sro = memsys::file_at(slot(23), 128 << 10, RO, true, &f5);
    regs.push(Reg::new("shared file read-only", sro, Want::Const(0xf5, 0)));
    let steps = Steps {
        after_restore: Some(Box::new(move |c, _| {
            // The inaccessible mapping is looked at through a read-only window.
            memsys::mprotect(&none, RO);
            let bad = Reg::new(
                "inaccessible (PROT_NONE) private anonymous",
                none,
                none_want,
            )
            .check(c);
            memsys::mprotect(&none, NONE);
            bad.into_iter().collect()
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, move |c, p| {
        if p == Phase::BeforeRestore {
            scorch::smash(&shared_file, smash_value(c));
        }
    });
}

/// A large shared anonymous mapping, fully written.
fn maps01(ctx: &mut Ctx) {
    let r = memsys::map(
        0,
        256 * MIB,
        RW,
        libc::MAP_SHARED | libc::MAP_ANONYMOUS,
        -1,
        0,
    )
    .unwrap_or_else(|e| fail(&format!("setup: 256 MiB shared: errno {e}")));
    let mut regs = vec![Reg::new("shared anonymous 256 MiB", r, Want::Fill)];
    run(ctx, &mut regs, Steps::default(), no_hook);
}

/// Mappings with madvise flags, given before the checkpoint and again after it.
fn maps02(ctx: &mut Ctx) {
    const N: usize = 10;
    let advice: [(&str, i32); N] = [
        ("MADV_DONTFORK", libc::MADV_DONTFORK),
        ("MADV_RANDOM", libc::MADV_RANDOM),
        ("MADV_SEQUENTIAL", libc::MADV_SEQUENTIAL),
        ("MADV_HUGEPAGE", libc::MADV_HUGEPAGE),
        ("MADV_NOHUGEPAGE", libc::MADV_NOHUGEPAGE),
        ("MADV_DONTDUMP", libc::MADV_DONTDUMP),
        ("MADV_WIPEONFORK", 18),
        ("MADV_COLD", 20),
        ("MADV_PAGEOUT", 21),
        ("MADV_FREE, then written again", libc::MADV_FREE),
    ];
    let mut rs = [memsys::anon_at(slot(0), 4 * MIB, RW, false); N];
    for (i, r) in rs.iter_mut().enumerate().skip(1) {
        *r = memsys::anon_at(slot(i), 4 * MIB, RW, false);
    }
    let mut regs: Vec<Reg> = advice
        .iter()
        .zip(rs)
        .map(|((name, _), r)| Reg::new(*name, r, Want::Fill))
        .collect();
    let advs = advice.map(|(_, a)| a);
    let steps = Steps {
        after_fill: Some(Box::new(move |_, regs| {
            for (reg, adv) in regs.iter_mut().zip(advs) {
                let rc = memsys::madvise(&reg.r, adv);
                if rc != 0 {
                    fail(&format!("setup: {}: errno {rc}", reg.name));
                }
                if adv == libc::MADV_FREE {
                    Pattern::new(reg.seed).fill(reg.r.bytes_mut());
                }
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, move |_, p| {
        if p == Phase::AfterCheckpoint {
            for (r, adv) in rs.iter().zip(advs) {
                if adv != libc::MADV_FREE {
                    scorch::madvise(r.addr() as u64, r.len as u64, adv);
                }
            }
        }
    });
}

/// Scattered pages of a sparse reservation.
fn sparse(ctx: &mut Ctx, len: usize, n: usize, what: &str) {
    let r = anon(len, RW, libc::MAP_NORESERVE);
    let pages = (len / PAGE) as u64;
    let mut regs: Vec<Reg> = (0..n as u64)
        .map(|i| {
            let p = ((i * 262_139 + 7_919) % pages) as usize;
            Reg::new(
                format!("page {p} of the {what} reservation"),
                sub(&r, p, 1),
                Want::Fill,
            )
        })
        .collect();
    regs.sort_by_key(|r| r.r.addr());
    run(ctx, &mut regs, Steps::default(), no_hook);
}

/// A 64 GiB reservation with 64 pages in use (more than 2^23 pages).
fn maps03(ctx: &mut Ctx) {
    sparse(ctx, 64 * GIB, 64, "64 GiB");
}

/// 512 MiB written, then 512 scattered pages made inaccessible: every
/// piece above one of them looks like a thread stack above its guard page.
fn maps04(ctx: &mut Ctx) {
    let mut r = anon(512 * MIB, RW, 0);
    Pattern::new(0x404).fill(r.bytes_mut());
    let holes: Vec<usize> = (0..512).map(|k| 37 + k * 256).collect();
    for &h in &holes {
        let rc = memsys::mprotect(&sub(&r, h, 1), NONE);
        if rc != 0 {
            fail(&format!("setup: mprotect page {h}: errno {rc}"));
        }
    }
    let mut regs = Vec::new();
    let mut start = 0;
    for &h in holes.iter().chain(std::iter::once(&(512 * MIB / PAGE))) {
        regs.push(Reg::new(
            format!("pages {start}..{h} of 512 MiB"),
            sub(&r, start, h - start),
            Want::Fill,
        ));
        start = h + 1;
    }
    let last = ctx.cycles;
    let steps = Steps {
        after_restore: Some(Box::new(move |c, _| {
            if c != last {
                return Vec::new();
            }
            // The inaccessible pages still hold what they held.
            let mut bad = Vec::new();
            for &h in &holes {
                let page = sub(&r, h, 1);
                memsys::mprotect(&page, RO);
                bad.extend(
                    Reg::new(
                        format!("inaccessible page {h}"),
                        page,
                        Want::Const(0x404, h),
                    )
                    .check(c),
                );
                memsys::mprotect(&page, NONE);
            }
            bad
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// Read-only at the checkpoint, made writable, written, read-only again
/// before the restore: the process's memory changed and must come back.
fn maps05(ctx: &mut Ctx) {
    let mut a = memsys::anon_at(slot(0), MIB, RW, false);
    let wa = fill_const(&mut a, 0x505);
    memsys::mprotect(&a, RO);
    let f = pattern_file(256 << 10, 0x5f5);
    let mut b = memsys::file_at(slot(1), 256 << 10, RW, false, &f);
    let wb = fill_const(&mut b, 0x5f6);
    memsys::mprotect(&b, RO);
    let mut regs = vec![
        Reg::new("private anonymous, read-only at the checkpoint", a, wa),
        Reg::new("private file, written, read-only at the checkpoint", b, wb),
    ];
    run(ctx, &mut regs, Steps::default(), move |c, p| {
        if p == Phase::BeforeRestore {
            for r in [a, b] {
                scorch::mprotect(r.addr() as u64, r.len as u64, RW);
                scorch::smash(&r, smash_value(c));
                scorch::mprotect(r.addr() as u64, r.len as u64, RO);
            }
        }
    });
}

/// The other direction: writable at the checkpoint, read-only at the restore.
fn maps05_rev(ctx: &mut Ctx) {
    let a = memsys::anon_at(slot(0), MIB, RW, false);
    let f = pattern_file(256 << 10, 0x5f7);
    let b = memsys::file_at(slot(1), 256 << 10, RW, false, &f);
    rev(
        ctx,
        vec![
            Reg::new("private anonymous, read-only at the restore", a, Want::Fill),
            Reg::new("private file, read-only at the restore", b, Want::Fill),
        ],
    );
}

/// The same for shared anonymous memory.
fn maps05_rev_shared(ctx: &mut Ctx) {
    let a = memsys::anon_at(slot(0), MIB, RW, true);
    rev(
        ctx,
        vec![Reg::new(
            "shared anonymous, read-only at the restore",
            a,
            Want::Fill,
        )],
    );
}

fn rev(ctx: &mut Ctx, mut regs: Vec<Reg>) {
    let mut rs = [None; 2];
    for (i, r) in regs.iter().enumerate() {
        rs[i] = Some(r.r);
    }
    let steps = Steps {
        after_restore: Some(Box::new(|_, regs| {
            for r in regs.iter() {
                memsys::mprotect(&r.r, RW);
            }
            Vec::new()
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, move |_, p| {
        if p == Phase::BeforeRestore {
            for r in rs.iter().flatten() {
                scorch::mprotect(r.addr() as u64, r.len as u64, RO);
            }
        }
    });
}

/// More captured mappings than bpfckpt's region table holds.
fn maps06(ctx: &mut Ctx) {
    let n = 20_000;
    let mut regs = Vec::with_capacity(n);
    for i in 0..n {
        // Alternating protections: neighbours never merge.
        let prot = if i % 2 == 0 { RW } else { RWX };
        regs.push(Reg::new(
            format!("one-page mapping {i}"),
            anon(PAGE, prot, 0),
            Want::Fill,
        ));
    }
    ctx.extra.push(format!("mappings={n}"));
    run(ctx, &mut regs, Steps::default(), no_hook);
}

/// mremap before the checkpoint: moved (every cycle), grown in place,
/// shrunk, grown and moved. Pages arrive at their new address without a
/// fault; data written there afterwards faults neither.
fn maps07(ctx: &mut Ctx) {
    let mut regs = vec![
        Reg::new(
            "moved every cycle",
            memsys::anon_at(slot(0), 4 * MIB, RW, false),
            Want::Fill,
        ),
        Reg::new(
            "grown in place",
            memsys::anon_at(slot(2), 2 * MIB, RW, false),
            Want::Fill,
        ),
        Reg::new(
            "shrunk",
            memsys::anon_at(slot(3), 6 * MIB, RW, false),
            Want::Fill,
        ),
        Reg::new(
            "grown and moved",
            memsys::anon_at(slot(4), 2 * MIB, RW, false),
            Want::Fill,
        ),
    ];
    // Keeps the last one from growing in place.
    let _blocker = memsys::anon_at(slot(4) + 2 * MIB, PAGE, RO, false);
    let steps = Steps {
        after_fill: Some(Box::new(|c, regs| {
            let (from, len) = (regs[0].r.addr(), regs[0].r.len);
            let to = if from == slot(0) { slot(1) } else { slot(0) };
            let got = scorch::mremap(
                from as u64,
                len as u64,
                len as u64,
                MREMAP_MAYMOVE | MREMAP_FIXED,
                to as u64,
            );
            if got != to as i64 {
                fail(&format!("setup: mremap move: {got}"));
            }
            regs[0].r = region_at(to, to + len);
            // Rewritten in place after the move: no faults.
            let seed = regs[0].seed;
            Pattern::new(seed).fill(&mut regs[0].r.bytes_mut()[..MIB]);
            if c == 1 {
                let a = regs[1].r.addr();
                if scorch::mremap(a as u64, (2 * MIB) as u64, (6 * MIB) as u64, 0, 0) != a as i64 {
                    fail("setup: mremap grow in place");
                }
                regs[1].r = region_at(a, a + 6 * MIB);
                let a = regs[2].r.addr();
                if scorch::mremap(a as u64, (6 * MIB) as u64, (2 * MIB) as u64, 0, 0) != a as i64 {
                    fail("setup: mremap shrink");
                }
                regs[2].r = region_at(a, a + 2 * MIB);
                let a = regs[3].r.addr();
                let got = scorch::mremap(
                    a as u64,
                    (2 * MIB) as u64,
                    (8 * MIB) as u64,
                    MREMAP_MAYMOVE,
                    0,
                );
                if got <= 0 || got == a as i64 {
                    fail(&format!("setup: mremap grow and move: {got}"));
                }
                regs[3].r = region_at(got as usize, got as usize + 8 * MIB);
                for k in [1, 3] {
                    let seed = regs[k].seed;
                    Pattern::new(seed).fill(regs[k].r.bytes_mut());
                }
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// mremap between the checkpoint and the restore: moved away and back,
/// grown in place and shrunk back, shrunk, moved away for good.
fn maps07_between(ctx: &mut Ctx) {
    let r1 = memsys::anon_at(slot(0), 4 * MIB, RW, false);
    let r2 = memsys::anon_at(slot(2), 2 * MIB, RW, false);
    let r3 = memsys::anon_at(slot(3), 4 * MIB, RW, false);
    let r4 = memsys::anon_at(slot(4), 2 * MIB, RW, false);
    let mut regs = vec![
        Reg::new("moved away and back", r1, Want::Fill),
        Reg::new("grown in place and shrunk back", r2, Want::Fill),
        Reg::new("first half of the shrunk one", sub(&r3, 0, 512), Want::Fill),
    ];
    let rcs = std::cell::Cell::new([0i64; 6]);
    let steps = Steps {
        after_fill: Some(Box::new(|c, _| {
            let mut tail = sub(&r3, 512, 512);
            Pattern::new(seed_of(c, 90)).fill(tail.bytes_mut());
            let mut r4 = r4;
            Pattern::new(seed_of(c, 91)).fill(r4.bytes_mut());
        })),
        after_restore: Some(Box::new(|c, _| {
            let mut bad = Vec::new();
            let want = [slot(1), slot(0), slot(2), slot(2), slot(3), slot(5)].map(|a| a as i64);
            if rcs.get() != want {
                bad.push(format!("mremap results {:x?}, want {want:x?}", rcs.get()));
            }
            // The shrunk one grows again: its new half is new memory.
            if scorch::mremap(slot(3) as u64, (2 * MIB) as u64, (4 * MIB) as u64, 0, 0)
                != slot(3) as i64
            {
                fail("mremap: regrow in place");
            }
            bad.extend(
                Reg::new(
                    "regrown half of the shrunk one",
                    sub(&r3, 512, 512),
                    Want::Zero,
                )
                .check(c),
            );
            // The restore must not have followed the one moved away.
            let moved = region_at(slot(5), slot(5) + 2 * MIB);
            bad.extend(Reg::new("moved away for good", moved, Want::FillSmashed).check(c));
            if rel_common::mapped(slot(4), 2 * MIB) {
                bad.push("something is mapped where the moved one was".into());
            }
            if scorch::mremap(
                slot(5) as u64,
                (2 * MIB) as u64,
                (2 * MIB) as u64,
                MREMAP_MAYMOVE | MREMAP_FIXED,
                slot(4) as u64,
            ) != slot(4) as i64
            {
                fail("mremap: move back");
            }
            bad
        })),
        ..Default::default()
    };
    let mv = |from: usize, len: usize, to: usize| {
        scorch::mremap(
            from as u64,
            len as u64,
            len as u64,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            to as u64,
        )
    };
    let rz =
        |a: usize, from: usize, to: usize| scorch::mremap(a as u64, from as u64, to as u64, 0, 0);
    run(ctx, &mut regs, steps, |c, p| {
        if p != Phase::BeforeRestore {
            return;
        }
        let v = smash_value(c);
        let mut got = [0i64; 6];
        got[0] = mv(slot(0), 4 * MIB, slot(1));
        scorch::smash(&region_at(slot(1), slot(1) + 4 * MIB), v);
        got[1] = mv(slot(1), 4 * MIB, slot(0));
        got[2] = rz(slot(2), 2 * MIB, 6 * MIB);
        scorch::smash(&region_at(slot(2), slot(2) + 6 * MIB), v);
        got[3] = rz(slot(2), 6 * MIB, 2 * MIB);
        got[4] = rz(slot(3), 4 * MIB, 2 * MIB);
        got[5] = mv(slot(4), 2 * MIB, slot(5));
        scorch::smash(&region_at(slot(5), slot(5) + 2 * MIB), v);
        rcs.set(got);
    });
}

/// Anonymous huge pages (hugetlb), shared or private; the test sets
/// vm.nr_hugepages. Half written before each checkpoint, half zero.
fn hugetlb(ctx: &mut Ctx, shared: bool) {
    let kind = if shared {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    };
    let r = memsys::map(
        0,
        16 * MIB,
        RW,
        kind | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
        -1,
        0,
    )
    .unwrap_or_else(|e| {
        fail(&format!(
            "setup: MAP_HUGETLB 16 MiB: errno {e} (vm.nr_hugepages too low?)"
        ))
    });
    let what = if shared { "shared" } else { "private" };
    let mut regs = vec![
        Reg::new(
            format!("{what} hugetlb, written"),
            sub(&r, 0, 2048),
            Want::Fill,
        ),
        Reg::new(
            format!("{what} hugetlb, zero at each checkpoint"),
            sub(&r, 2048, 2048),
            Want::Zero,
        ),
    ];
    run(ctx, &mut regs, Steps::default(), no_hook);
}

const GUARDS: [usize; 3] = [10, 11, 500];

fn guard_pieces(r: &Region) -> Vec<Reg> {
    vec![
        Reg::new("pages 0..10", sub(r, 0, 10), Want::Fill),
        Reg::new("pages 12..500", sub(r, 12, 488), Want::Fill),
        Reg::new("pages 501..1024", sub(r, 501, 523), Want::Fill),
    ]
}

fn guards_hold(r: &Region) -> Vec<String> {
    GUARDS
        .iter()
        .filter_map(|&g| {
            guard_check(
                &format!("page {g}"),
                r.addr() + g * PAGE,
                r.addr() + 9 * PAGE,
            )
        })
        .collect()
}

/// Guard regions (MADV_GUARD_INSTALL, Linux >= 6.13) on pages of a written
/// mapping before the checkpoint; they must still be guards afterwards.
fn maps12(ctx: &mut Ctx) {
    let mut r = memsys::anon_at(slot(0), 4 * MIB, RW, false);
    Pattern::new(0x12).fill(r.bytes_mut());
    for g in GUARDS {
        let rc = memsys::madvise(&sub(&r, g, 1), MADV_GUARD_INSTALL);
        if rc != 0 {
            fail(&format!("setup: MADV_GUARD_INSTALL: errno {rc}"));
        }
    }
    let mut regs = guard_pieces(&r);
    let steps = Steps {
        after_restore: Some(Box::new(move |_, _| guards_hold(&r))),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// Guards installed after the checkpoint on pages that held data then.
fn maps12_after(ctx: &mut Ctx) {
    let r = memsys::anon_at(slot(0), 4 * MIB, RW, false);
    // Guards installed after the checkpoint stay guards through the restore
    // (bpfckpt never removes one): the whole-mapping comparison leaves those
    // pages out; `guards_hold` checks they are guards still.
    for g in GUARDS {
        ctx.skips.add(
            (r.addr() + g * PAGE) as u64,
            (r.addr() + (g + 1) * PAGE) as u64,
        );
    }
    let mut regs = guard_pieces(&r);
    let rcs = std::cell::Cell::new([0i64; 3]);
    let steps = Steps {
        before_fill: Some(Box::new(move |c, _| {
            for g in GUARDS {
                let mut page = sub(&r, g, 1);
                // No-op in the first cycle.
                memsys::madvise(&page, MADV_GUARD_REMOVE);
                Pattern::new(seed_of(c, 50 + g)).fill(page.bytes_mut());
            }
        })),
        after_restore: Some(Box::new(|_, _| {
            let mut bad = guards_hold(&r);
            if rcs.get() != [0; 3] {
                bad.push(format!(
                    "MADV_GUARD_INSTALL after the checkpoint returned {:?}",
                    rcs.get()
                ));
            }
            bad
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, |_, p| {
        if p == Phase::AfterCheckpoint {
            let mut got = [0i64; 3];
            for (k, g) in GUARDS.iter().enumerate() {
                got[k] = scorch::madvise(
                    (r.addr() + g * PAGE) as u64,
                    PAGE as u64,
                    MADV_GUARD_INSTALL,
                );
            }
            rcs.set(got);
        }
    });
}

/// mprotect patterns: a read-only stretch inside a mapping, protections
/// changed and changed back before each checkpoint, an inaccessible page
/// right below a data block (the shape of a thread stack's guard page)
/// and right above one, a read+exec stretch.
fn mprotect00(ctx: &mut Ctx) {
    let mut a = memsys::anon_at(slot(0), MIB, RW, false);
    let wa = fill_const(&mut sub(&a, 100, 4), 0x100);
    memsys::mprotect(&sub(&a, 100, 4), RO);
    let b = memsys::anon_at(slot(1), 2 * MIB, RW, false);
    let c = memsys::anon_at(slot(2), MIB + PAGE, RW, false);
    memsys::mprotect(&sub(&c, 0, 1), NONE);
    let d = memsys::anon_at(slot(3), MIB + PAGE, RW, false);
    memsys::mprotect(&sub(&d, 256, 1), NONE);
    let mut e = memsys::anon_at(slot(4), MIB, RW, false);
    let we = fill_const(&mut sub(&e, 10, 10), 0x101);
    memsys::mprotect(&sub(&e, 10, 10), RX);
    let _ = (&mut a, &mut e);
    let mut regs = vec![
        Reg::new("rw below a read-only stretch", sub(&a, 0, 100), Want::Fill),
        Reg::new("read-only stretch", sub(&a, 100, 4), wa),
        Reg::new(
            "rw above a read-only stretch",
            sub(&a, 104, 152),
            Want::Fill,
        ),
        Reg::new(
            "made read-only and writable again before each checkpoint",
            b,
            Want::Fill,
        ),
        Reg::new(
            "data block right above an inaccessible page",
            sub(&c, 1, 256),
            Want::Fill,
        ),
        Reg::new(
            "data block right below an inaccessible page",
            sub(&d, 0, 256),
            Want::Fill,
        ),
        Reg::new("rw below a read+exec stretch", sub(&e, 0, 10), Want::Fill),
        Reg::new("read+exec stretch", sub(&e, 10, 10), we),
        Reg::new("rw above a read+exec stretch", sub(&e, 20, 236), Want::Fill),
    ];
    let steps = Steps {
        after_fill: Some(Box::new(move |_, _| {
            memsys::mprotect(&b, RO);
            memsys::mprotect(&b, RW);
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// A MAP_GROWSDOWN mapping grown by touching below it, before each
/// checkpoint and between checkpoint and restore.
fn grow_map(ctx: &mut Ctx) {
    let at = slot(1) + 32 * MIB;
    let g = memsys::map(
        at,
        64 << 10,
        RW,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN | libc::MAP_FIXED_NOREPLACE,
        -1,
        0,
    )
    .unwrap_or_else(|e| fail(&format!("setup: MAP_GROWSDOWN: errno {e}")));
    let mut regs = vec![Reg::new("MAP_GROWSDOWN mapping", g, Want::Fill)];
    let start = std::cell::Cell::new(g.addr());
    let steps = Steps {
        before_fill: Some(Box::new(|_, regs| {
            scorch::touch_below((start.get() - 4 * PAGE) as u64, 1);
            let (s, e) =
                mapping_of(start.get()).unwrap_or_else(|| fail("the growing mapping is gone"));
            if s >= start.get() {
                fail("touching below the MAP_GROWSDOWN mapping did not grow it");
            }
            start.set(s);
            regs[0].r = region_at(s, e);
        })),
        after_restore: Some(Box::new(|_, _| {
            // It grew between checkpoint and restore too.
            match mapping_of(start.get()) {
                Some((s, _)) if s < start.get() => {
                    start.set(s);
                    Vec::new()
                }
                other => vec![format!(
                    "the mapping did not grow after the checkpoint: {other:x?}"
                )],
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, |_, p| {
        if p == Phase::AfterCheckpoint {
            scorch::touch_below((start.get() - 2 * PAGE) as u64, 2);
        }
    });
}

/// System V shared memory.
fn shm(ctx: &mut Ctx) {
    let r = memsys::sysv_shm(4 * MIB);
    let mut regs = vec![Reg::new("SysV shared memory (shmat)", r, Want::Fill)];
    run(ctx, &mut regs, Steps::default(), no_hook);
}

/// A memfd mapped shared (file-shared: never captured, keeps what was
/// written after the checkpoint) and private (captured; its never-written
/// half shows the file as it was at the checkpoint).
fn memfd00(ctx: &mut Ctx) {
    let f = memsys::memfd("adv-memfd", MIB as u64);
    let s = memsys::file_at(slot(0), MIB, RW, true, &f);
    let p = memsys::file_at(slot(1), MIB, RW, false, &f);
    let mut regs = vec![
        Reg::new("memfd mapped shared (never captured)", s, Want::FillSmashed),
        Reg::new("memfd mapped private, written", sub(&p, 0, 128), Want::Fill),
        Reg::new(
            "memfd mapped private, never written",
            sub(&p, 128, 128),
            Want::Any,
        ),
    ];
    let steps = Steps {
        after_fill: Some(Box::new(|c, regs| {
            // Until the first restore writes it, the private mapping's
            // second half reads the file, which the shared one just wrote.
            if c == 1 {
                regs[2].want = Want::Const(regs[0].seed, 128);
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, move |c, p| {
        if p == Phase::BeforeRestore {
            scorch::smash(&s, smash_value(c));
        }
    });
}

/// prctl(PR_SET_THP_DISABLE), then ordinary use (with MADV_HUGEPAGE asked
/// for and refused).
fn thp_disable(ctx: &mut Ctx) {
    let rc = memsys::thp_disable();
    if rc != 0 {
        fail(&format!("setup: PR_SET_THP_DISABLE: errno {rc}"));
    }
    let r = memsys::anon_at(slot(0), 16 * MIB, RW, false);
    memsys::madvise(&r, libc::MADV_HUGEPAGE);
    let mut regs = vec![Reg::new("16 MiB under PR_SET_THP_DISABLE", r, Want::Fill)];
    let steps = Steps {
        after_restore: Some(Box::new(move |_, _| match thp_kb(&r) {
            0 => Vec::new(),
            kb => vec![format!("{kb} KiB of huge pages despite PR_SET_THP_DISABLE")],
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// Registers hold values across both requests (and floating-point work
/// gives the same results before and after).
fn registers(ctx: &mut Ctx, regs: Regs) {
    ctx.regs = regs;
    let r = memsys::anon_at(slot(0), MIB, RW, false);
    let mut regs = vec![Reg::new("1 MiB", r, Want::Fill)];
    let compute = || {
        (1..5000)
            .map(|i| (i as f64).sqrt().sin() / (i as f64))
            .sum::<f64>()
    };
    let before = compute();
    let steps = Steps {
        after_restore: Some(Box::new(move |_, _| {
            let after = compute();
            if after.to_bits() == before.to_bits() {
                Vec::new()
            } else {
                vec![format!(
                    "floating point gives {after} after the restore, {before} before"
                )]
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// Random pages of a big mapping written before each checkpoint, many cycles.
fn mem_touch(ctx: &mut Ctx) {
    let r = anon(256 * MIB, RW, 0);
    let pages = r.len / PAGE;
    let model_cell = std::cell::RefCell::new(vec![0u64; pages]);
    let rng_cell = std::cell::Cell::new(0x9e37_79b9_7f4a_7c15u64);
    let (model, rng) = (&model_cell, &rng_cell);
    let steps = Steps {
        before_fill: Some(Box::new(move |c, _| {
            let mut r = r;
            let seed = seed_of(c, 0);
            let p = Pattern::new(seed);
            let mut m = model.borrow_mut();
            for _ in 0..2000 {
                let mut x = rng.get();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                rng.set(x);
                let i = (x % pages as u64) as usize;
                p.write_page(i, &mut r.bytes_mut()[i * PAGE..(i + 1) * PAGE]);
                m[i] = seed;
            }
        })),
        after_restore: Some(Box::new(move |c, _| {
            let m = model.borrow();
            let mut pats = std::collections::HashMap::new();
            let mut bad = 0;
            let mut first = None;
            for (i, page) in r.bytes().chunks(PAGE).enumerate() {
                let ok = match m[i] {
                    0 => rel_common::is_zero(page),
                    s => pats
                        .entry(s)
                        .or_insert_with(|| Pattern::new(s))
                        .page_ok(i, page),
                };
                if !ok {
                    bad += 1;
                    first.get_or_insert_with(|| {
                        format!(
                            "page {i} (written with seed {:#x}) {}",
                            m[i],
                            describe(page, c)
                        )
                    });
                }
            }
            first
                .map(|f| format!("{bad} of {pages} pages of the touched mapping wrong, first {f}"))
                .into_iter()
                .collect()
        })),
        ..Default::default()
    };
    run(ctx, &mut Vec::new(), steps, no_hook);
}

/// Transparent huge pages: with MADV_HUGEPAGE, or none asked for (for the
/// `enabled=always` and per-size settings the test makes). A region written
/// before each checkpoint, and one zero at each checkpoint (the scorch
/// writes it: huge pages fault once per 2 MiB, or once per mTHP folio).
fn thp(ctx: &mut Ctx, madvise: bool) {
    let a = memsys::anon_at(slot(0), 32 * MIB, RW, false);
    let b = memsys::anon_at(slot(1), 16 * MIB, RW, false);
    if madvise {
        for r in [&a, &b] {
            let rc = memsys::madvise(r, libc::MADV_HUGEPAGE);
            if rc != 0 {
                fail(&format!("setup: MADV_HUGEPAGE: errno {rc}"));
            }
        }
    }
    let mut regs = vec![
        Reg::new("written", a, Want::Fill),
        Reg::new("zero at each checkpoint", b, Want::Zero),
    ];
    let faults0 = mthp_faults();
    let seen = std::cell::Cell::new((0u64, Vec::new()));
    let steps = Steps {
        after_fill: Some(Box::new(|c, _| {
            if c == 1 {
                let after = mthp_faults();
                let d: Vec<String> = after
                    .iter()
                    .filter_map(|(k, n)| {
                        let before = faults0.iter().find(|(k0, _)| k0 == k).map_or(0, |x| x.1);
                        (*n > before).then(|| format!("thp_faults_{k}={}", n - before))
                    })
                    .collect();
                seen.set((thp_kb(&a), d));
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
    let (kb, d) = seen.take();
    ctx.extra.push(format!("thp_kb={kb}"));
    ctx.extra.extend(d);
}

/// Anonymous huge page faults per size so far (kernel-wide counters).
fn mthp_faults() -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir("/sys/kernel/mm/transparent_hugepage") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = name.strip_prefix("hugepages-")?.to_string();
            let n = std::fs::read_to_string(e.path().join("stats/anon_fault_alloc")).ok()?;
            Some((size, n.trim().parse().ok()?))
        })
        .collect()
}

/// mlock populates without a fault per page: written after it, and a
/// range locked and written between checkpoint and restore.
fn mlock(ctx: &mut Ctx) {
    locked(ctx, None);
}

/// The same with mlock2(0) and mlock2(MLOCK_ONFAULT).
fn mlock2(ctx: &mut Ctx) {
    locked(ctx, Some(0));
}

fn locked(ctx: &mut Ctx, flags: Option<u32>) {
    let l1 = memsys::anon_at(slot(0), 4 * MIB, RW, false);
    let rc = match flags {
        None => memsys::mlock(&l1),
        Some(f) => memsys::mlock2(&l1, f),
    };
    if rc != 0 {
        fail(&format!("setup: mlock: errno {rc}"));
    }
    let l2 = memsys::anon_at(slot(1), 4 * MIB, RW, false);
    let mut regs = vec![
        Reg::new("locked before it was written", l1, Want::Fill),
        Reg::new(
            "locked and written between checkpoint and restore",
            l2,
            Want::Zero,
        ),
    ];
    if flags.is_some() {
        let l3 = memsys::anon_at(slot(2), 4 * MIB, RW, false);
        if memsys::mlock2(&l3, 1) != 0 {
            fail("setup: mlock2(MLOCK_ONFAULT)");
        }
        regs.push(Reg::new("locked on fault (MLOCK_ONFAULT)", l3, Want::Fill));
    }
    run(ctx, &mut regs, Steps::default(), move |c, p| {
        if p == Phase::AfterCheckpoint {
            scorch::mlock(l2.addr() as u64, l2.len as u64, flags);
            scorch::smash(&l2, smash_value(c));
        }
    });
}

/// mlockall(MCL_CURRENT | MCL_FUTURE): every mapping populated from now on.
fn mlockall(ctx: &mut Ctx) {
    let rc = memsys::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE);
    if rc != 0 {
        fail(&format!("setup: mlockall: errno {rc}"));
    }
    let mut regs = vec![
        Reg::new(
            "written",
            memsys::anon_at(slot(0), 4 * MIB, RW, false),
            Want::Fill,
        ),
        Reg::new(
            "populated, zero at each checkpoint",
            memsys::anon_at(slot(1), 4 * MIB, RW, false),
            Want::Zero,
        ),
    ];
    run(ctx, &mut regs, Steps::default(), no_hook);
}

/// MAP_POPULATE / MAP_LOCKED: a new populated mapping written in every
/// cycle, and one never written.
fn populated(ctx: &mut Ctx, flag: i32) {
    let mut regs = vec![Reg::new(
        "populated, never written",
        anon(4 * MIB, RW, flag),
        Want::Zero,
    )];
    let steps = Steps {
        before_fill: Some(Box::new(move |c, regs| {
            regs.push(Reg::new(
                format!("populated in cycle {c}"),
                anon(4 * MIB, RW, flag),
                Want::Fill,
            ));
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// MADV_POPULATE_WRITE before the writes, and between checkpoint and restore.
fn populate_write(ctx: &mut Ctx) {
    let p1 = memsys::anon_at(slot(0), 4 * MIB, RW, false);
    let rc = memsys::madvise(&p1, MADV_POPULATE_WRITE);
    if rc != 0 {
        fail(&format!("setup: MADV_POPULATE_WRITE: errno {rc}"));
    }
    let p2 = memsys::anon_at(slot(1), 4 * MIB, RW, false);
    let mut regs = vec![
        Reg::new("populated, then written", p1, Want::Fill),
        Reg::new(
            "populated and written between checkpoint and restore",
            p2,
            Want::Zero,
        ),
    ];
    run(ctx, &mut regs, Steps::default(), move |c, p| {
        if p == Phase::AfterCheckpoint {
            scorch::madvise(p2.addr() as u64, p2.len as u64, MADV_POPULATE_WRITE);
            scorch::smash(&p2, smash_value(c));
        }
    });
}

/// MADV_COLLAPSE: 4 KiB pages collapsed into huge pages, whose other pages
/// are then written without faults; and a collapse after the checkpoint.
fn madv_collapse(ctx: &mut Ctx) {
    let c1 = memsys::anon_at(slot(0), 8 * MIB, RW, false);
    for chunk in 0..4 {
        scorch::poke(&c1, chunk * 2 * MIB, 1);
    }
    let rc = memsys::madvise(&c1, MADV_COLLAPSE);
    if rc != 0 {
        fail(&format!("setup: MADV_COLLAPSE: errno {rc}"));
    }
    let kb = thp_kb(&c1);
    if kb == 0 {
        fail("setup: MADV_COLLAPSE made no huge page");
    }
    ctx.extra.push(format!("thp_kb={kb}"));
    let c2 = memsys::anon_at(slot(1), 8 * MIB, RW, false);
    let mut regs = vec![
        Reg::new("collapsed, then written", c1, Want::Fill),
        Reg::new(
            "collapsed and written between checkpoint and restore",
            c2,
            Want::Zero,
        ),
    ];
    let rcs = std::cell::Cell::new(0i64);
    let steps = Steps {
        after_restore: Some(Box::new(|_, _| match rcs.get() {
            0 => Vec::new(),
            rc => vec![format!("MADV_COLLAPSE after the checkpoint returned {rc}")],
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, |c, p| {
        if p == Phase::AfterCheckpoint {
            for chunk in 0..4 {
                scorch::poke(&c2, chunk * 2 * MIB, 1);
            }
            rcs.set(scorch::madvise(
                c2.addr() as u64,
                c2.len as u64,
                MADV_COLLAPSE,
            ));
            scorch::smash(&c2, smash_value(c));
        }
    });
}

/// read(2) from a file into a buffer never touched before: the kernel
/// writes the pages. Before the checkpoint, and between checkpoint and
/// restore (that buffer is left out of the scorch, so the read is the only
/// writer).
fn read_into(ctx: &mut Ctx) {
    use std::os::fd::AsRawFd;
    let f = pattern_file(4 * MIB, 0x8ead);
    let fd = f.as_raw_fd();
    let b1 = memsys::anon_at(slot(0), 4 * MIB, RW, false);
    let b2 = memsys::anon_at(slot(1), 4 * MIB, RW, false);
    ctx.skips.add_region(&b2);
    let mut regs = vec![
        Reg::new(
            "read into before the checkpoint",
            b1,
            Want::Const(0x8ead, 0),
        ),
        Reg::new("read into between checkpoint and restore", b2, Want::Zero),
    ];
    let rcs = std::cell::Cell::new(0i64);
    let steps = Steps {
        before_fill: Some(Box::new(move |_, _| {
            let n = scorch::pread_into(fd, &b1, 0);
            if n != b1.len as i64 {
                fail(&format!("setup: read: {n}"));
            }
        })),
        after_restore: Some(Box::new(|_, _| {
            if rcs.get() == b2.len as i64 {
                Vec::new()
            } else {
                vec![format!(
                    "the read after the checkpoint returned {}",
                    rcs.get()
                )]
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, |_, p| {
        if p == Phase::AfterCheckpoint {
            rcs.set(scorch::pread_into(fd, &b2, 0));
        }
    });
    drop(f);
}

/// More than 65,536 pages absent at the checkpoint and written since.
fn absent_65k(ctx: &mut Ctx) {
    let a = anon(512 * MIB, RW, 0);
    let s = memsys::anon_at(slot(0), MIB, RW, false);
    let mut regs = vec![
        Reg::new("written", s, Want::Fill),
        Reg::new(
            "512 MiB absent at each checkpoint, all written since",
            a,
            Want::Zero,
        ),
    ];
    run(ctx, &mut regs, Steps::default(), move |c, p| {
        if p == Phase::BeforeRestore {
            scorch::smash(&a, smash_value(c));
        }
    });
}

/// More than 16,384 zero ranges: every other page of 256 MiB written
/// before the checkpoint, every page written after it.
fn zero_ranges_16k(ctx: &mut Ctx) {
    let z = anon(256 * MIB, RW, 0);
    let mut regs = vec![Reg::new("every other page of 256 MiB", z, Want::EvenPages)];
    run(ctx, &mut regs, Steps::default(), move |c, p| {
        if p == Phase::BeforeRestore {
            scorch::smash(&z, smash_value(c));
        }
    });
}

/// More than 2^23 captured pages: a 40 GiB reservation with 100 pages in use.
fn pages_2p23(ctx: &mut Ctx) {
    sparse(ctx, 40 * GIB, 100, "40 GiB");
}

/// A page untouched at the checkpoint that is only read after it (the
/// shared zero page gets mapped there); written in the next cycles. With
/// `scan`, more than 65,536 other pages are written after the first
/// checkpoint, so that the restore scans the zero ranges and writes zeros
/// into every present page, the zero-page mappings included.
fn zero_page_read(ctx: &mut Ctx, scan: bool) {
    if ctx.cycles < 2 {
        fail("usage: needs --cycles 2 or more");
    }
    let r = memsys::anon_at(slot(0), 8 * MIB, RW, false);
    // Only this scenario's reads and writes touch it.
    ctx.skips.add_region(&r);
    let mut regs = vec![Reg::new(
        "read after the first checkpoint, written from the second",
        r,
        Want::Zero,
    )];
    // Without `scan` nothing else is absent and written in bulk: the
    // restore lists the pages to zero instead of scanning.
    let big = anon(if scan { 300 * MIB } else { PAGE }, RW, 0);
    if scan {
        regs.push(Reg::new(
            "300 MiB written after the checkpoints",
            big,
            Want::Zero,
        ));
    }
    let steps = Steps {
        before_fill: Some(Box::new(|c, regs| {
            if c >= 2 {
                regs[0].want = Want::Fill;
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, move |c, p| match (c, p) {
        (1, Phase::AfterCheckpoint) => {
            let mut sum = 0u64;
            for i in 0..r.len / PAGE {
                sum = sum.wrapping_add(scorch::peek(&r, i * PAGE));
            }
            std::hint::black_box(sum);
        }
        (1, Phase::BeforeRestore) if scan => scorch::smash(&big, smash_value(c)),
        (2.., Phase::BeforeRestore) => scorch::smash(&r, smash_value(c)),
        _ => {}
    });
}

/// MADV_DONTNEED on an mlock'ed range fails (EINVAL) and discards nothing.
fn mlock_dontneed(ctx: &mut Ctx) {
    let r = memsys::anon_at(slot(0), 4 * MIB, RW, false);
    let mut regs = vec![Reg::new("locked; MADV_DONTNEED refused", r, Want::Fill)];
    let steps = Steps {
        before_fill: Some(Box::new(move |c, _| {
            if c == 1 && memsys::mlock(&r) != 0 {
                fail("setup: mlock");
            }
        })),
        after_fill: Some(Box::new(move |_, _| {
            let rc = memsys::madvise(&r, libc::MADV_DONTNEED);
            if rc != libc::EINVAL {
                fail(&format!(
                    "setup: MADV_DONTNEED on a locked range gave errno {rc}, not EINVAL"
                ));
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// MADV_DONTNEED with a misaligned start fails (EINVAL) and discards nothing.
fn unaligned_dontneed(ctx: &mut Ctx) {
    let r = memsys::anon_at(slot(0), 4 * MIB, RW, false);
    let mut regs = vec![Reg::new(
        "MADV_DONTNEED refused (misaligned)",
        r,
        Want::Fill,
    )];
    let steps = Steps {
        after_fill: Some(Box::new(move |_, _| {
            let rc = scorch::madvise(r.addr() as u64 + 1, r.len as u64, libc::MADV_DONTNEED);
            if rc != -i64::from(libc::EINVAL) {
                fail(&format!(
                    "setup: misaligned MADV_DONTNEED gave {rc}, not -EINVAL"
                ));
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// A new mapping before every checkpoint (the test reads the layout
/// sequence numbers bpfckpt reports).
fn layout_seq(ctx: &mut Ctx) {
    let mut regs = vec![Reg::new(
        "1 MiB",
        memsys::anon_at(slot(0), MIB, RW, false),
        Want::Fill,
    )];
    let steps = Steps {
        before_fill: Some(Box::new(|c, regs| {
            regs.push(Reg::new(
                format!("mapped in cycle {c}"),
                anon(64 << 10, RW, 0),
                Want::Fill,
            ));
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// A second thread blocked in read(2) during each checkpoint and restore:
/// its stack and what it wrote before the checkpoint (in its own malloc
/// arena and an mmap'd buffer) survive, and it works afterwards.
fn threads_blocked(ctx: &mut Ctx) {
    let (wake_r, wake_w) = memsys::pipe();
    let (ack_r, ack_w) = memsys::pipe();
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut small = vec![0u8; 2048];
        let mut big = vec![0u8; 2 * MIB];
        let mut stack = [0u8; 16 << 10];
        let at = |v: &[u8]| v.as_ptr() as usize;
        let alt = scorch::sigaltstack_range();
        tx.send((at(&small), at(&big), at(&stack), memsys::gettid(), alt))
            .expect("send");
        let mut c = 0;
        // One byte: fill; the next: the cycle is over, check.
        while memsys::read_byte(wake_r).is_some() {
            c += 1;
            let p = Pattern::new(seed_of(c, 70));
            p.fill(&mut small);
            p.fill(&mut big);
            p.fill(&mut stack);
            memsys::write_byte(ack_w, 1);
            // Blocked here while the main thread checkpoints and restores.
            if memsys::read_byte(wake_r).is_none() {
                break;
            }
            let v: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 100 + i * 50]).collect();
            let arena_ok = v
                .iter()
                .enumerate()
                .all(|(i, x)| x.iter().all(|&b| b == i as u8));
            drop(v);
            let verdict = [
                p.bad_pages(&stack) == 0,
                p.bad_pages(&small) == 0,
                p.bad_pages(&big) == 0,
                arena_ok,
            ];
            let code = verdict.iter().position(|ok| !ok).map_or(0, |i| i as u8 + 1);
            memsys::write_byte(ack_w, code);
        }
    });
    let (small, big, stack, tid, alt) = rx.recv().expect("worker info");
    let (s, e) = mapping_of(stack).unwrap_or_else(|| fail("no mapping holds the worker's stack"));
    // Its stacks are live: the scorch leaves them to the thread.
    ctx.skips.add(s as u64, e as u64);
    if let Some((a, b)) = alt {
        ctx.skips.add(a, b);
    }
    let small_r = region_at(small, small + 2048);
    let big_r = region_at(big, big + 2 * MIB);
    let mut regs = vec![Reg::new(
        "1 MiB of the main thread",
        memsys::anon_at(slot(0), MIB, RW, false),
        Want::Fill,
    )];
    let steps = Steps {
        after_fill: Some(Box::new(move |_, _| {
            memsys::write_byte(wake_w, 1);
            if memsys::read_byte(ack_r).is_none() {
                fail("the worker is gone");
            }
            // Wait until it is blocked in read(2) (system call 0).
            let path = format!("/proc/self/task/{tid}/syscall");
            let t0 = std::time::Instant::now();
            while !std::fs::read_to_string(&path)
                .unwrap_or_default()
                .starts_with("0 ")
            {
                if t0.elapsed() > std::time::Duration::from_secs(10) {
                    fail("the worker never blocked in read");
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })),
        after_restore: Some(Box::new(move |c, _| {
            let mut bad = Vec::new();
            bad.extend(
                Reg {
                    name: "the worker's malloc'd 2 KiB".into(),
                    r: small_r,
                    want: Want::Fill,
                    seed: seed_of(c, 70),
                }
                .check(c),
            );
            bad.extend(
                Reg {
                    name: "the worker's 2 MiB buffer".into(),
                    r: big_r,
                    want: Want::Fill,
                    seed: seed_of(c, 70),
                }
                .check(c),
            );
            memsys::write_byte(wake_w, 1);
            match memsys::read_byte(ack_r) {
                Some(0) => {}
                Some(1) => bad.push("the worker's stack changed under it".into()),
                Some(2) => bad.push("the worker's malloc'd 2 KiB differ after it woke".into()),
                Some(3) => bad.push("the worker's 2 MiB buffer differs after it woke".into()),
                Some(4) => bad.push("the worker's malloc arena is broken".into()),
                other => bad.push(format!("the worker answered {other:?}")),
            }
            bad
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
    // End of file on its pipe ends the worker.
    memsys::close(wake_w);
    if worker.join().is_err() {
        fail("the worker panicked");
    }
}

/// A write-only mapping (PROT_WRITE alone, readable on x86 anyway).
fn prot_wronly(ctx: &mut Ctx) {
    let w = memsys::anon_at(slot(0), MIB, WO, false);
    let mut regs = vec![Reg::new("write-only private anonymous", w, Want::Fill)];
    run(ctx, &mut regs, Steps::default(), no_hook);
}

/// A shared mapping of an ordinary file whose name starts with /dev/zero:
/// file-shared memory, never to be captured or written by a restore.
fn dev_zero_file(ctx: &mut Ctx) {
    let path = format!("/dev/zero-bpfckpt-adv-{}", std::process::id());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap_or_else(|e| fail(&format!("setup: create {path}: {e}")));
    let _ = std::fs::remove_file(&path);
    f.set_len(MIB as u64).expect("size the file");
    let s = memsys::file_at(slot(0), MIB, RW, true, &f);
    let mut regs = vec![Reg::new(
        format!("shared mapping of the file {path}"),
        s,
        Want::FillSmashed,
    )];
    run(ctx, &mut regs, Steps::default(), move |c, p| {
        if p == Phase::BeforeRestore {
            scorch::smash(&s, smash_value(c));
        }
    });
}

/// A thread started and joined before the checkpoint: glibc keeps its
/// stack for the next thread, with its thread descriptor in it.
fn thread_stack_cache(ctx: &mut Ctx) {
    let spawn = |k: u64| std::thread::spawn(move || k * 2).join().ok() == Some(k * 2);
    if !spawn(1) {
        fail("setup: a thread");
    }
    let mut regs = vec![Reg::new(
        "1 MiB",
        memsys::anon_at(slot(0), MIB, RW, false),
        Want::Fill,
    )];
    let steps = Steps {
        after_restore: Some(Box::new(move |c, _| {
            if spawn(u64::from(c) + 10) {
                Vec::new()
            } else {
                vec!["a new thread failed after the restore".into()]
            }
        })),
        ..Default::default()
    };
    run(ctx, &mut regs, steps, no_hook);
}

/// A region behind a protection key that denies this thread any access
/// while it asks for the checkpoint and for the restore.
fn pkey(ctx: &mut Ctx) {
    let key = memsys::pkey_alloc();
    if key < 0 {
        fail(&format!("setup: pkey_alloc: errno {}", -key));
    }
    let k = memsys::anon_at(slot(0), MIB, RW, false);
    let rc = memsys::pkey_mprotect(&k, RW, key);
    if rc != 0 {
        fail(&format!("setup: pkey_mprotect: errno {rc}"));
    }
    let mut regs = vec![Reg::new(
        format!("1 MiB with protection key {key}"),
        k,
        Want::Fill,
    )];
    let open = memsys::rdpkru();
    let shut = open | 3 << (2 * key);
    run(ctx, &mut regs, Steps::default(), move |_, p| match p {
        Phase::BeforeCheckpoint | Phase::BeforeRestore => memsys::wrpkru(shut),
        Phase::AfterCheckpoint | Phase::AfterRestore => memsys::wrpkru(open),
    });
}

/// The requests made on a stack carved out of a data mapping (the top
/// 4 MiB of 12 MiB), as coroutine and green-thread runtimes do: the stack
/// is live, the 8 MiB of data below it in the same mapping are not.
fn coroutine_stack(ctx: &mut Ctx) {
    coroutine(ctx, true);
}

/// The control: the same with the stack in a mapping of its own.
fn coroutine_stack_apart(ctx: &mut Ctx) {
    coroutine(ctx, false);
}

fn coroutine(ctx: &mut Ctx, inside: bool) {
    let m = memsys::anon_at(slot(0), 12 * MIB, RW, false);
    let stack = if inside {
        sub(&m, 2048, 1024)
    } else {
        memsys::anon_at(slot(1), 4 * MIB, RW, false)
    };
    ctx.skips.add_region(&stack);
    ctx.stack = Some(stack);
    let mut regs = vec![Reg::new(
        "data below the stack, in the same mapping",
        sub(&m, 0, 2048),
        Want::Fill,
    )];
    run(ctx, &mut regs, Steps::default(), no_hook);
}
