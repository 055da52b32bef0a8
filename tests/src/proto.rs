//! The target side of the file protocol, and deterministic patterns to fill
//! and verify memory with. Nothing here allocates between a checkpoint and
//! its restore (an allocation there would be rolled back with the heap).

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use bpfckpt_protocol::{CHECKPOINT_DONE, CHECKPOINT_REQUEST, RESTORE_DONE, RESTORE_REQUEST};

/// Parsed `--dir DIR --cycles N` plus positional words.
pub struct Args {
    pub dir: PathBuf,
    pub cycles: u32,
    pub words: Vec<String>,
}

pub fn args() -> Args {
    let mut a = Args {
        dir: PathBuf::from("/tmp"),
        cycles: 1,
        words: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(w) = it.next() {
        match w.as_str() {
            "--dir" => a.dir = PathBuf::from(it.next().expect("--dir DIR")),
            "--cycles" => a.cycles = it.next().and_then(|n| n.parse().ok()).expect("--cycles N"),
            _ => a.words.push(w),
        }
    }
    a
}

/// The four marker paths, built once: a path allocated around a trigger
/// would be a heap pointer on the stack that the restore rolls the heap back
/// under (the restore request's buffer is not allocated in the checkpoint's
/// heap). Targets must hold no heap pointer across a trigger.
pub struct Markers {
    pub ckpt_req: PathBuf,
    pub ckpt_done: PathBuf,
    pub restore_req: PathBuf,
    pub restore_done: PathBuf,
    /// How long a request waits for its answer.
    pub limit: Duration,
    /// Poll by yielding the CPU instead of sleeping, so that a benchmark
    /// times the server, not a polling interval.
    spin: bool,
}

impl Markers {
    pub fn new(dir: &Path) -> Self {
        let m = Self {
            ckpt_req: dir.join(CHECKPOINT_REQUEST),
            ckpt_done: dir.join(CHECKPOINT_DONE),
            restore_req: dir.join(RESTORE_REQUEST),
            restore_done: dir.join(RESTORE_DONE),
            limit: Duration::from_secs(120),
            spin: false,
        };
        m.clean();
        m
    }

    pub fn with_limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }

    pub fn spinning(mut self) -> Self {
        self.spin = true;
        self
    }

    /// Removes the markers in protocol order (requests before their
    /// answers); the bench's handshake server relies on this order.
    pub fn clean(&self) {
        for p in [
            &self.ckpt_req,
            &self.ckpt_done,
            &self.restore_req,
            &self.restore_done,
        ] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Asks for a checkpoint: nanoseconds from just before the request's
    /// `openat` until `checkpoint_complete` was seen, `None` past `limit`.
    pub fn try_checkpoint(&self) -> Option<u64> {
        self.request(&self.ckpt_req, &self.ckpt_done)
    }

    /// Asks for a restore, timed like `try_checkpoint`; the markers are
    /// removed once it completes (not timed).
    pub fn try_restore(&self) -> Option<u64> {
        let ns = self.request(&self.restore_req, &self.restore_done)?;
        self.clean();
        Some(ns)
    }

    /// `try_checkpoint`, failing the target when no answer comes.
    pub fn checkpoint(&self) -> u64 {
        self.try_checkpoint().unwrap_or_else(|| {
            fail(&format!(
                "no {} after {:?}",
                self.ckpt_done.display(),
                self.limit
            ))
        })
    }

    /// `try_restore`, failing the target when no answer comes.
    pub fn restore(&self) -> u64 {
        self.try_restore().unwrap_or_else(|| {
            fail(&format!(
                "no {} after {:?}",
                self.restore_done.display(),
                self.limit
            ))
        })
    }

    /// Creates `req` (an openat with O_CREAT) and waits for `done`. Short
    /// paths stay on the stack in std's open and stat: nothing is allocated.
    fn request(&self, req: &Path, done: &Path) -> Option<u64> {
        let t0 = Instant::now();
        if let Err(e) = File::create(req) {
            fail(&format!("create {}: {e}", req.display()));
        }
        wait_for(done, self.limit, self.spin).then(|| t0.elapsed().as_nanos() as u64)
    }
}

/// Polls for `path` (following symlinks, as `access` does) up to `limit`.
pub fn wait_for(path: &Path, limit: Duration, spin: bool) -> bool {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        if spin {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    true
}

pub fn fail(msg: &str) -> ! {
    println!("FAIL {msg}");
    std::process::exit(1);
}

/// Pattern word `i` of `seed`.
pub fn word(seed: u64, i: usize) -> u64 {
    let mut x = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 29)
}

pub fn fill(buf: &mut [u8], seed: u64) {
    for (i, c) in buf.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&word(seed, i).to_le_bytes());
    }
}

/// Fails with the first differing offset unless `buf` holds the pattern.
pub fn verify(what: &str, buf: &[u8], seed: u64) {
    if let Some(i) = buf
        .chunks_exact(8)
        .enumerate()
        .position(|(i, c)| c != word(seed, i).to_le_bytes())
    {
        fail(&format!(
            "{what}: byte {} differs from the checkpoint",
            i * 8
        ));
    }
}

pub fn verify_zero(what: &str, buf: &[u8]) {
    if let Some(i) = buf.iter().position(|&b| b != 0) {
        fail(&format!("{what}: byte {i} is not zero"));
    }
}

/// Whether `addr` lies in the mapping named `name` (e.g. `[heap]`).
pub fn in_mapping(addr: usize, name: &str) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines().any(|l| {
        let Some((range, rest)) = l.split_once(' ') else {
            return false;
        };
        let Some((s, e)) = range.split_once('-') else {
            return false;
        };
        let (s, e) = (
            usize::from_str_radix(s, 16).unwrap_or(0),
            usize::from_str_radix(e, 16).unwrap_or(0),
        );
        s <= addr && addr < e && rest.trim_end().ends_with(name)
    })
}
