//! Protocol target for the reliability tests (tests/reliability.rs):
//! `rel-target SCENARIO --dir DIR [--wait SECS] [--mib N] [--cycles N]`.
//! Each scenario provokes one fault around a checkpoint/restore cycle and
//! checks what it owns afterwards. Prints `PASS SCENARIO ...` and exits 0,
//! or `FAIL ...` and exits 1; progress lines (`READY pid=N`, ...) let the
//! test act at the right moment.
//!
//! Scenarios:
//! - `kill-window`: maps `--mib` MiB after `READY` (so the page store is too
//!   small and the checkpoint is completed from user space, a wide window),
//!   checkpoint, damage everything, restore. A request that gets no marker
//!   within `--wait` seconds (bpfckpt was killed) is reported as
//!   `RELEASED <phase> ...` after checking the memory: after a checkpoint it
//!   must be untouched; after a restore every page must be either restored
//!   or as the target left it (none torn, none foreign).
//! - `late-hold`: a second checkpoint whose BPF copy takes long and ends in
//!   a hold (the store is full): `REQUESTING` is printed just before it, so
//!   that bpfckpt can be killed while the probe is still copying.
//! - `exec`: checkpoint, then exec `exec-child` (same binary); it maps its own
//!   memory at the address the first program used, asks for a restore (the
//!   old image must not be written into it), then runs one normal cycle.
//! - `fork`: checkpoint, fork; the child writes its own pattern into the
//!   shared-before-fork memory and checks it after the parent's restore.
//! - `munmap`: checkpoint, unmap two captured regions, map a file
//!   (MAP_SHARED) where one of them was, restore: the file's content must be
//!   unchanged, the unmapped range must stay unmapped.
//! - `exit-after-ckpt`: checkpoint, then exit with status 7.
//! - `wait-go`: `READY`, wait for DIR/go, then one normal cycle (saying how
//!   many links `checkpoint_complete` has: `MARKER nlink=N`).
//! - `maps10k`: 10,000 one-page writable mappings alternating with
//!   read-only ones (20,000 mappings, none merged), `--cycles` cycles.
//! - `big`: `--mib` MiB (4096 for the 4 GiB test), every page touched,
//!   `--cycles` cycles, with timings.

#[path = "../src/proto.rs"]
mod proto;
#[path = "rel_common.rs"]
mod rel_common;
#[path = "../src/sys.rs"]
mod sys;

use proto::{Markers, fail, wait_for};
use rel_common::*;
use std::time::{Duration, Instant};

/// Fixed addresses: far from anything the loader places.
const EXEC_ADDR: usize = 0x2100_0000_0000;
const UNMAP_ADDR: usize = 0x2200_0000_0000;
const FILE_ADDR: usize = 0x2300_0000_0000;

fn main() {
    let a = Args::parse();
    let scenario = a
        .words
        .first()
        .cloned()
        .unwrap_or_else(|| fail("usage: rel-target SCENARIO --dir DIR"));
    let p = Markers::new(&a.dir()).with_limit(Duration::from_secs_f64(a.num("wait", 60.0f64)));
    // First use of stdout before any checkpoint: its buffer is allocated now,
    // not between a checkpoint and its restore.
    say(&format!(
        "READY pid={} scenario={scenario}",
        std::process::id()
    ));
    match scenario.as_str() {
        "kill-window" => kill_window(&a, &p),
        "late-hold" => late_hold(&a, &p),
        "exec" => exec(&p),
        "exec-child" => exec_child(&p),
        "fork" => fork(&p),
        "munmap" => munmap(&a, &p),
        "exit-after-ckpt" => {
            let mut r = sys::mmap_anon(MIB, false, None);
            Pattern::new(1).fill(r.bytes_mut());
            p.checkpoint();
            say("CHECKPOINTED");
            std::process::exit(7);
        }
        "wait-go" => wait_go(&a, &p),
        "maps10k" => maps10k(&a, &p),
        "big" => big(&a, &p),
        other => fail(&format!("unknown scenario {other}")),
    }
}

fn kill_window(a: &Args, p: &Markers) {
    let mib: usize = a.num("mib", 256);
    let mut r = sys::mmap_anon(mib * MIB, false, None);
    let mut pat = Pattern::new(0xa11ce);
    // Everything allocated before the checkpoint: the restore rolls the heap
    // back, so a box made in between would be freed memory afterwards.
    let damage = Pattern::new(0xdead);
    pat.fill(r.bytes_mut());
    say("FILLED");
    if p.try_checkpoint().is_none() {
        // bpfckpt is gone: nothing may have changed our memory.
        let bad = pat.bad_pages(r.bytes());
        say(&format!("RELEASED checkpoint bad_pages={bad}"));
        if bad != 0 {
            fail("memory changed by an unfinished checkpoint");
        }
        say("PASS kill-window released-at=checkpoint");
        return;
    }
    say("CHECKPOINTED");
    damage.fill(r.bytes_mut());
    if p.try_restore().is_none() {
        // Each page is restored or left as the damage wrote it: never torn,
        // never anything else.
        let (mut restored, mut damaged, mut torn) = (0usize, 0usize, 0usize);
        for (i, pg) in r.bytes().chunks(PAGE).enumerate() {
            if pat.page_ok(i, pg) {
                restored += 1;
            } else if damage.page_ok(i, pg) {
                damaged += 1;
            } else {
                torn += 1;
            }
        }
        say(&format!(
            "RELEASED restore restored={restored} damaged={damaged} torn={torn}"
        ));
        if torn != 0 {
            fail("pages neither restored nor left alone");
        }
        say("PASS kill-window released-at=restore");
        return;
    }
    pat.verify("kill-window region", r.bytes());
    pat.reseed(0);
    say("PASS kill-window completed");
}

fn late_hold(a: &Args, p: &Markers) {
    // Cycle 1 sizes the page store to `--mib`; cycle 2 adds 64 MiB more, so
    // its checkpoint copies `--mib` in BPF, inside the trigger system call,
    // and only then finds the store full and stops the target for user
    // space: a long window in which bpfckpt may die before the stop.
    let mib: usize = a.num("mib", 1024);
    let mut r = sys::mmap_anon(mib * MIB, false, None);
    let pat = Pattern::new(0x1a7e);
    let pat2 = Pattern::new(0x1a7f);
    let damage = Pattern::new(0xdead);
    pat.fill(r.bytes_mut());
    p.checkpoint();
    damage.fill(r.bytes_mut());
    p.restore();
    pat.verify("late-hold region after cycle 1", r.bytes());
    let mut more = sys::mmap_anon(64 * MIB, false, None);
    pat2.fill(more.bytes_mut());
    pat2.fill(r.bytes_mut());
    // Let bpfckpt apply the new layout before the request.
    std::thread::sleep(Duration::from_millis(300));
    say("REQUESTING");
    if p.try_checkpoint().is_none() {
        let bad = pat2.bad_pages(r.bytes()) + pat2.bad_pages(more.bytes());
        say(&format!("RELEASED checkpoint bad_pages={bad}"));
        if bad != 0 {
            fail("memory changed by an unfinished checkpoint");
        }
        say("PASS late-hold released-at=checkpoint");
        return;
    }
    say("PASS late-hold completed");
}

fn exec(p: &Markers) {
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current_exe: {e}")));
    let dir = p
        .ckpt_req
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_default();
    let mut r = sys::mmap_anon(MIB, false, Some(EXEC_ADDR));
    Pattern::new(0xe1).fill(r.bytes_mut());
    p.checkpoint();
    say("CHECKPOINTED");
    // Markers stay: the new program asks for the restore.
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(exe)
        .arg("exec-child")
        .arg("--dir")
        .arg(dir)
        .arg("--wait")
        .arg(p.limit.as_secs_f64().to_string())
        .exec();
    fail(&format!("exec: {err}"));
}

fn exec_child(p: &Markers) {
    // A new program: same pid, new memory, with a mapping where the old
    // program's captured region was.
    let mut r = sys::mmap_anon(MIB, false, Some(EXEC_ADDR));
    let mine = Pattern::new(0xe2);
    mine.fill(r.bytes_mut());
    let _ = std::fs::remove_file(&p.ckpt_req);
    let _ = std::fs::remove_file(&p.ckpt_done);
    // A restore request right after the exec: the old program's image must
    // not be written into this one.
    let completed = p.try_restore().is_some();
    p.clean();
    let bad = mine.bad_pages(r.bytes());
    say(&format!(
        "EXEC-RESTORE completed={completed} bad_pages={bad}"
    ));
    if bad != 0 {
        fail("the old program's checkpoint was written into the new program");
    }
    // And the new program is served normally.
    let pat = Pattern::new(0xe3);
    let damage = Pattern::new(0xe4);
    pat.fill(r.bytes_mut());
    p.checkpoint();
    damage.fill(r.bytes_mut());
    p.restore();
    pat.verify("new program's region after its own cycle", r.bytes());
    say("PASS exec cycles=1");
}

fn fork(p: &Markers) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let mut r = sys::mmap_anon(4 * MIB, false, None);
    let mut h = sys::malloc(64 * 1024);
    let pat = Pattern::new(0xf0);
    let heap_pat = Pattern::new(0xf1);
    let child_pat = Pattern::new(0xf2);
    let damage = Pattern::new(0xf3);
    pat.fill(r.bytes_mut());
    heap_pat.fill(h.bytes_mut());
    // Sockets before the checkpoint: nothing is allocated in between.
    let (mut to_child, mut from_parent) =
        UnixStream::pair().unwrap_or_else(|e| fail(&e.to_string()));
    p.checkpoint();
    let pid = sys::fork();
    if pid == 0 {
        drop(to_child);
        // The child: its own copy of the memory, written after the fork.
        child_pat.fill(r.bytes_mut());
        child_pat.fill(h.bytes_mut());
        let _ = from_parent.write_all(b"w");
        let mut b = [0u8; 1];
        let _ = from_parent.read_exact(&mut b);
        let ok = child_pat.bad_pages(r.bytes()) == 0 && child_pat.bad_pages(h.bytes()) == 0;
        std::process::exit(if ok { 0 } else { 42 });
    }
    drop(from_parent);
    let mut b = [0u8; 1];
    if to_child.read_exact(&mut b).is_err() {
        fail("the child did not report");
    }
    damage.fill(r.bytes_mut());
    damage.fill(h.bytes_mut());
    p.restore();
    pat.verify("parent's region after restore", r.bytes());
    heap_pat.verify("parent's heap block after restore", h.bytes());
    let _ = to_child.write_all(b"g");
    let code = sys::wait_child(pid);
    if code == 42 {
        fail("the child's memory was changed by the parent's restore");
    }
    if code != 0 {
        fail(&format!("the child ended with {code}"));
    }
    say(&format!("CHILD pid={pid} untouched"));
    say("PASS fork cycles=1");
}

fn munmap(a: &Args, p: &Markers) {
    let dir = a.dir();
    let len = 2 * MIB;
    let mut gone = sys::mmap_anon(len, false, Some(UNMAP_ADDR));
    let mut replaced = sys::mmap_anon(len, false, Some(FILE_ADDR));
    let mut keep = sys::mmap_anon(len, false, None);
    let pat = Pattern::new(0x30);
    let file_pat = Pattern::new(0x31);
    let damage = Pattern::new(0x32);
    pat.fill(gone.bytes_mut());
    pat.fill(replaced.bytes_mut());
    pat.fill(keep.bytes_mut());
    // The file to map later, written and opened now (no allocation between
    // checkpoint and restore).
    let path = dir.join("shared-file");
    let mut content = vec![0u8; len];
    file_pat.fill(&mut content);
    std::fs::write(&path, &content).unwrap_or_else(|e| fail(&format!("write file: {e}")));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| fail(&format!("open file: {e}")));
    p.checkpoint();
    damage.fill(keep.bytes_mut());
    sys::unmap(gone);
    sys::unmap(replaced);
    let shared = sys::mmap_file_shared_at(&f, len, FILE_ADDR);
    p.restore();
    pat.verify("region still mapped", keep.bytes());
    if mapped(UNMAP_ADDR, len) {
        fail("the unmapped range is mapped again after the restore");
    }
    file_pat.verify("file mapped over a captured region", shared.bytes());
    let on_disk = std::fs::read(&path).unwrap_or_else(|e| fail(&format!("read file: {e}")));
    file_pat.verify("file on disk", &on_disk);
    let _ = std::fs::remove_file(&path);
    say("PASS munmap cycles=1");
}

fn wait_go(a: &Args, p: &Markers) {
    let mut r = sys::mmap_anon(MIB, false, None);
    let go = a.dir().join("go");
    if !wait_for(&go, Duration::from_secs(120), false) {
        fail("no go file");
    }
    let _ = std::fs::remove_file(&go);
    let pat = Pattern::new(0x60);
    let damage = Pattern::new(0x61);
    pat.fill(r.bytes_mut());
    if p.try_checkpoint().is_none() {
        say("NO-MARKER checkpoint");
        std::process::exit(3);
    }
    // What the marker is (a link to bpfckpt's own file, or a file of its own).
    let nlink = std::fs::metadata(&p.ckpt_done).map_or(0, |m| {
        use std::os::unix::fs::MetadataExt;
        m.nlink()
    });
    say(&format!("MARKER nlink={nlink}"));
    damage.fill(r.bytes_mut());
    if p.try_restore().is_none() {
        say("NO-MARKER restore");
        std::process::exit(3);
    }
    pat.verify("region", r.bytes());
    say("PASS wait-go cycles=1");
}

fn maps10k(a: &Args, p: &Markers) {
    const N: usize = 10_000;
    let cycles: u32 = a.num("cycles", 2);
    let all = sys::mmap_anon_prot(2 * N * PAGE, true);
    // Odd pages read-only: 10,000 writable mappings, none merged.
    let ro = Pattern::new(0x70);
    let mut all_mut = all;
    ro.fill(all_mut.bytes_mut());
    for i in 0..N {
        sys::protect(&all.sub((2 * i + 1) * PAGE, PAGE), false);
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    say(&format!("MAPPINGS total={}", maps.lines().count()));
    let mut pat = Pattern::new(0);
    let damage = Pattern::new(0x7f);
    for c in 1..=cycles {
        pat.reseed(0x7000 + u64::from(c));
        for i in 0..N {
            pat.write_page(i, all.sub(2 * i * PAGE, PAGE).bytes_mut());
        }
        p.checkpoint();
        for i in 0..N {
            damage.write_page(i, all.sub(2 * i * PAGE, PAGE).bytes_mut());
        }
        // Some pages discarded too.
        for i in (0..N).step_by(7) {
            sys::zap(&all.sub(2 * i * PAGE, PAGE));
        }
        p.restore();
        for i in 0..N {
            let w = all.sub(2 * i * PAGE, PAGE);
            if !pat.page_ok(i, w.bytes()) {
                fail(&format!("writable mapping {i} differs after cycle {c}"));
            }
            let r = all.sub((2 * i + 1) * PAGE, PAGE);
            if !ro.page_ok(2 * i + 1, r.bytes()) {
                fail(&format!("read-only mapping {i} changed in cycle {c}"));
            }
        }
    }
    say(&format!("PASS maps10k cycles={cycles} mappings={}", 2 * N));
}

fn big(a: &Args, p: &Markers) {
    let mib: usize = a.num("mib", 4096);
    let cycles: u32 = a.num("cycles", 1);
    let len = mib * MIB;
    let mut r = sys::mmap_anon(len, false, None);
    let mut pat = Pattern::new(0);
    let damage = Pattern::new(0xbad);
    for c in 1..=cycles {
        pat.reseed(0xb16 + u64::from(c));
        let t = Instant::now();
        pat.fill(r.bytes_mut());
        let fill = t.elapsed();
        let t = Instant::now();
        p.checkpoint();
        let ckpt = t.elapsed();
        // Damage: one page in every 2 MiB rewritten, every 64th 2 MiB
        // discarded, the first 16 MiB rewritten whole.
        for off in (0..len).step_by(2 * MIB) {
            damage.write_page(off / PAGE, &mut r.bytes_mut()[off..off + PAGE]);
        }
        for off in (0..len).step_by(128 * MIB) {
            sys::zap(&r.sub(off, 2 * MIB));
        }
        damage.fill(&mut r.bytes_mut()[..16 * MIB]);
        let t = Instant::now();
        p.restore();
        let restore = t.elapsed();
        let t = Instant::now();
        pat.verify("big region", r.bytes());
        let verify = t.elapsed();
        say(&format!(
            "TIMING cycle={c} fill_ms={} checkpoint_ms={} restore_ms={} verify_ms={}",
            fill.as_millis(),
            ckpt.as_millis(),
            restore.as_millis(),
            verify.as_millis()
        ));
    }
    say(&format!("PASS big cycles={cycles} bytes={len}"));
}
