//! Shared by the bench targets (included with `#[path]`, not a binary):
//! `--name value` arguments, the file protocol with tight polling and
//! timing, and result lines.
//!
//! Result lines are flat JSON objects with a `"bench"` key, printed on
//! stdout after the last cycle; under `bpfckpt run --json` they are mixed
//! with bpfckpt's own events, which have an `"event"` key instead.
//!
//! Memory rules (see proto.rs): nothing here allocates between a checkpoint
//! and its restore, and per-cycle timings live on the stack, which no
//! restore rolls back (the heap, .bss and .data are rolled back).

#![allow(dead_code)]

use crate::proto::{CHECKPOINT_DONE, CHECKPOINT_REQUEST, RESTORE_DONE, RESTORE_REQUEST, fail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// How long one request may take before the target gives up.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// `--name value` pairs from the command line.
pub struct Args(Vec<(String, String)>);

impl Args {
    pub fn parse(known: &[&str]) -> Self {
        let mut v = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(k) = it.next() {
            let Some(name) = k.strip_prefix("--").filter(|n| known.contains(n)) else {
                fail(&format!(
                    "unknown argument `{k}`; known: --{}",
                    known.join(" --")
                ));
            };
            let Some(val) = it.next() else {
                fail(&format!("--{name} needs a value"));
            };
            v.push((name.to_string(), val));
        }
        Self(v)
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        match self.0.iter().rev().find(|(k, _)| k == name) {
            None => default,
            Some((_, v)) => v
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{name}: cannot parse `{v}`"))),
        }
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(self.get("dir", "/tmp".to_string()))
    }
}

/// The four marker paths of one trigger directory, built once (before the
/// first checkpoint, so that no path is allocated around a trigger).
pub struct Proto {
    ckpt_req: PathBuf,
    ckpt_done: PathBuf,
    restore_req: PathBuf,
    restore_done: PathBuf,
}

impl Proto {
    pub fn new(dir: &Path) -> Self {
        let p = Self {
            ckpt_req: dir.join(CHECKPOINT_REQUEST),
            ckpt_done: dir.join(CHECKPOINT_DONE),
            restore_req: dir.join(RESTORE_REQUEST),
            restore_done: dir.join(RESTORE_DONE),
        };
        p.clean();
        p
    }

    /// Removes the markers in protocol order (requests before their
    /// answers); the handshake server in the xtask relies on this order.
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

    /// Asks for a checkpoint; returns the nanoseconds from just before the
    /// request's `openat` to the moment `checkpoint_complete` was seen.
    pub fn checkpoint(&self) -> u64 {
        request(&self.ckpt_req, &self.ckpt_done)
    }

    /// Asks for a restore, timed like [`Proto::checkpoint`]; then removes
    /// the markers (not timed).
    pub fn restore(&self) -> u64 {
        let ns = request(&self.restore_req, &self.restore_done);
        self.clean();
        ns
    }
}

/// Creates `req` (`openat` with O_CREAT) and polls `done` without sleeping
/// (yielding the CPU between polls), so that the measured time is the
/// server's, not a polling interval.
fn request(req: &Path, done: &Path) -> u64 {
    let t0 = Instant::now();
    if let Err(e) = File::create(req) {
        fail(&format!("create {}: {e}", req.display()));
    }
    let mut polls = 0u32;
    while !done.exists() {
        polls = polls.wrapping_add(1);
        if polls.is_multiple_of(1024) && t0.elapsed() > REQUEST_LIMIT {
            fail(&format!(
                "no {} after {} s",
                done.display(),
                REQUEST_LIMIT.as_secs()
            ));
        }
        std::thread::yield_now();
    }
    t0.elapsed().as_nanos() as u64
}

/// Prints one result line: `{"bench":KIND,"k":v,...}` (numbers only).
pub fn emit(kind: &str, fields: &[(&str, u64)]) {
    let mut s = format!("{{\"bench\":\"{kind}\"");
    for (k, v) in fields {
        s.push_str(&format!(",\"{k}\":{v}"));
    }
    s.push('}');
    println!("{s}");
}
