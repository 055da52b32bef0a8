//! Shared by the reliability targets (included with `#[path]`, not a
//! binary): `--name value` arguments, the file protocol with a deadline (a
//! target whose bpfckpt died must find out and report), and page-stamped
//! patterns that are fast to write and check even in a debug build (a
//! template page copied with memcpy, plus a stamp of seed and page index in
//! the first 16 bytes of every page, so that a page restored to the wrong
//! address or from the wrong cycle is caught).
//!
//! Memory rules (see proto.rs): nothing here allocates between a checkpoint
//! and its restore; the marker paths are built once.

#![allow(dead_code)]

use crate::proto::fail;
use std::path::PathBuf;

pub const PAGE: usize = 4096;
pub const MIB: usize = 1 << 20;

/// `--name value` pairs and positional words.
pub struct Args {
    pairs: Vec<(String, String)>,
    pub words: Vec<String>,
}

impl Args {
    pub fn parse() -> Self {
        let mut a = Args {
            pairs: Vec::new(),
            words: Vec::new(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(w) = it.next() {
            if let Some(name) = w.strip_prefix("--") {
                let v = it
                    .next()
                    .unwrap_or_else(|| fail(&format!("--{name} needs a value")));
                a.pairs.push((name.to_string(), v));
            } else {
                a.words.push(w);
            }
        }
        a
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{name}: bad value {v:?}"))),
        }
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(self.get("dir").unwrap_or("/tmp"))
    }
}

/// Pages of a region: a template page per seed, stamped with the seed and
/// the page's index in its first 16 bytes.
pub struct Pattern {
    seed: u64,
    page: Box<[u8; PAGE]>,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        let mut page = Box::new([0u8; PAGE]);
        crate::proto::fill(&mut page[..], seed);
        Self { seed, page }
    }

    /// Re-seeds in place (no allocation: usable between checkpoint and restore).
    pub fn reseed(&mut self, seed: u64) {
        self.seed = seed;
        crate::proto::fill(&mut self.page[..], seed);
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn stamp(&self, i: usize) -> [u8; 16] {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&self.seed.to_le_bytes());
        s[8..].copy_from_slice(&(i as u64).to_le_bytes());
        s
    }

    /// Writes page `i` of the pattern into `dst` (a page or a shorter tail).
    pub fn write_page(&self, i: usize, dst: &mut [u8]) {
        let n = dst.len().min(PAGE);
        dst[..n].copy_from_slice(&self.page[..n]);
        let s = self.stamp(i);
        let k = n.min(16);
        dst[..k].copy_from_slice(&s[..k]);
    }

    pub fn page_ok(&self, i: usize, got: &[u8]) -> bool {
        let n = got.len().min(PAGE);
        let k = n.min(16);
        got[..k] == self.stamp(i)[..k] && got[k..n] == self.page[k..n]
    }

    pub fn fill(&self, buf: &mut [u8]) {
        for (i, p) in buf.chunks_mut(PAGE).enumerate() {
            self.write_page(i, p);
        }
    }

    /// Number of pages of `buf` that differ from the pattern.
    pub fn bad_pages(&self, buf: &[u8]) -> usize {
        buf.chunks(PAGE)
            .enumerate()
            .filter(|(i, p)| !self.page_ok(*i, p))
            .count()
    }

    /// Bytes of `buf` that differ from the pattern (slow path, for reports).
    pub fn bad_bytes(&self, buf: &[u8]) -> usize {
        let mut want = [0u8; PAGE];
        let mut n = 0;
        for (i, p) in buf.chunks(PAGE).enumerate() {
            if self.page_ok(i, p) {
                continue;
            }
            self.write_page(i, &mut want[..p.len()]);
            n += p
                .iter()
                .zip(&want[..p.len()])
                .filter(|(a, b)| a != b)
                .count();
        }
        n
    }

    /// Fails the target unless `buf` holds the pattern.
    pub fn verify(&self, what: &str, buf: &[u8]) {
        if let Some((i, _)) = buf
            .chunks(PAGE)
            .enumerate()
            .find(|(i, p)| !self.page_ok(*i, p))
        {
            fail(&format!(
                "{what}: page {i} differs from the pattern of seed {:#x}",
                self.seed
            ));
        }
    }
}

pub fn is_zero(buf: &[u8]) -> bool {
    // Compare in page-sized slices (memcmp) rather than byte by byte.
    const Z: [u8; PAGE] = [0; PAGE];
    buf.chunks(PAGE).all(|p| p == &Z[..p.len()])
}

/// Whether any mapping of this process overlaps `[addr, addr + len)`.
pub fn mapped(addr: usize, len: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines().any(|l| {
        let Some((range, _)) = l.split_once(' ') else {
            return false;
        };
        let Some((s, e)) = range.split_once('-') else {
            return false;
        };
        let s = usize::from_str_radix(s, 16).unwrap_or(0);
        let e = usize::from_str_radix(e, 16).unwrap_or(0);
        s < addr + len && addr < e
    })
}

/// Prints a line and flushes it (stdout may be a pipe read line by line).
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
