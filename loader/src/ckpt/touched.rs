//! The touched-page bitmaps (`TOUCHED`) as user space uses them: which
//! pages of a private anonymous region may hold data, and recording the
//! pages user space wrote itself (its writes fault nothing).

use super::abi;
use super::procfs::PAGE;
use super::wire;
use crate::Result;
use bpfload::maps::Map;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Bit `(addr / PAGE) % CHUNK_PAGES` of chunk `addr >> CHUNK_SHIFT`, as
/// (chunk, word index, mask).
fn bit_of(addr: u64) -> (u64, usize, u64) {
    let bit = (addr / PAGE) % abi::CHUNK_PAGES;
    (
        addr >> abi::CHUNK_SHIFT,
        (bit / 64) as usize,
        1 << (bit % 64),
    )
}

pub struct Bitmaps {
    map: Map,
}

impl Bitmaps {
    pub fn new(map: Map) -> Self {
        Self { map }
    }

    /// The `ever` bitmaps of `pid`'s program image `image` (cost follows
    /// the number of touched chunks, not the size of the mappings).
    pub fn written(&self, pid: i32, image: u32) -> Result<Written> {
        let chunks = self
            .values(pid, image, None)?
            .into_iter()
            .map(|(chunk, val)| {
                let mut ever = [0u64; 8];
                for (w, e) in ever.iter_mut().enumerate() {
                    *e = wire::u64_at(&val, w * 8);
                }
                (chunk, ever)
            })
            .collect();
        Ok(Written(Some(chunks)))
    }

    /// Sets the `ever` bits of pages written from user space (the target
    /// is held, so no fault races with this read-modify-write).
    pub fn mark(&self, pid: i32, image: u32, addrs: impl Iterator<Item = u64>) -> Result<()> {
        self.set_bits(pid, image, addrs, 0)
    }

    /// Sets the `since` bits of `addrs` (target held): pages a restore in
    /// BPF must always write, as changed since whatever happened.
    pub fn mark_since(&self, pid: i32, image: u32, addrs: impl Iterator<Item = u64>) -> Result<()> {
        self.set_bits(pid, image, addrs, SINCE)
    }

    /// Sets the bits of `addrs` in the words at byte offset `at` of each
    /// chunk's value.
    fn set_bits(
        &self,
        pid: i32,
        image: u32,
        addrs: impl Iterator<Item = u64>,
        at: usize,
    ) -> Result<()> {
        let mut chunks: BTreeMap<u64, [u64; 8]> = BTreeMap::new();
        for a in addrs {
            let (chunk, w, m) = bit_of(a);
            chunks.entry(chunk).or_default()[w] |= m;
        }
        let want: BTreeSet<u64> = chunks.keys().copied().collect();
        let mut vals = self.values(pid, image, Some(&want))?;
        for (chunk, bits) in chunks {
            let val = vals.entry(chunk).or_insert([0; VALUE]);
            for (w, b) in bits.iter().enumerate() {
                let old = wire::u64_at(val, at + w * 8);
                val[at + w * 8..at + w * 8 + 8].copy_from_slice(&(old | b).to_ne_bytes());
            }
        }
        self.store(pid, image, &vals)
    }

    /// Clears the `since` bits of `pages` (ascending): they are clean again.
    pub fn clear_since(&self, pid: i32, image: u32, pages: &[u64]) -> Result<()> {
        let want: BTreeSet<u64> = pages.iter().map(|&a| a >> abi::CHUNK_SHIFT).collect();
        let mut vals = self.values(pid, image, Some(&want))?;
        for &a in pages {
            let (chunk, w, m) = bit_of(a);
            if let Some(val) = vals.get_mut(&chunk) {
                let at = SINCE + w * 8;
                let old = wire::u64_at(val, at);
                val[at..at + 8].copy_from_slice(&(old & !m).to_ne_bytes());
            }
        }
        self.store(pid, image, &vals)
    }

    /// Clears every `since` bit of `pid`'s image `image`.
    pub fn clear_since_all(&self, pid: i32, image: u32) -> Result<()> {
        let mut vals = self.values(pid, image, None)?;
        for val in vals.values_mut() {
            val[SINCE..SINCE + 64].fill(0);
        }
        self.store(pid, image, &vals)
    }

    /// The values of `pid`'s image `image` by chunk: every chunk, or those
    /// of `want` that exist. A few are looked up one by one (about 1 µs
    /// each); many are read with the whole map in batches (its empty
    /// buckets cost about 50 µs).
    fn values(
        &self,
        pid: i32,
        image: u32,
        want: Option<&BTreeSet<u64>>,
    ) -> Result<BTreeMap<u64, [u8; VALUE]>> {
        let mut out = BTreeMap::new();
        let mut val = [0u8; VALUE];
        if let Some(want) = want.filter(|w| w.len() < READ_ALL_FROM) {
            for &chunk in want {
                if self
                    .map
                    .lookup(&wire::chunk_key(pid as u32, image, chunk), &mut val)?
                {
                    out.insert(chunk, val);
                }
            }
            return Ok(out);
        }
        let ours = |key: &[u8]| {
            let chunk = wire::u64_at(key, 8);
            (key_owner(key) == Some((pid as u32, image)) && want.is_none_or(|w| w.contains(&chunk)))
                .then_some(chunk)
        };
        if let Some(entries) = self.map.entries()? {
            for (key, v) in entries.iter() {
                if let (Some(chunk), Ok(v)) = (ours(key), v.try_into()) {
                    out.insert(chunk, v);
                }
            }
            return Ok(out);
        }
        // A kernel without batches (before 5.6).
        let keys: Vec<Vec<u8>> = self.map.keys().collect::<Result<_>>()?;
        for key in keys {
            if let Some(chunk) = ours(&key)
                && self.map.lookup(&key, &mut val)?
            {
                out.insert(chunk, val);
            }
        }
        Ok(out)
    }

    /// Writes `vals` (by chunk) back: in one system call where the kernel
    /// has batches.
    fn store(&self, pid: i32, image: u32, vals: &BTreeMap<u64, [u8; VALUE]>) -> Result<()> {
        let key = |chunk: u64| wire::chunk_key(pid as u32, image, chunk);
        if vals.len() > 1 {
            let keys: Vec<u8> = vals.keys().flat_map(|&c| key(c)).collect();
            let values: Vec<u8> = vals.values().flatten().copied().collect();
            if self.map.update_batch(&keys, &values)? {
                return Ok(());
            }
        }
        for (&chunk, val) in vals {
            self.map.update(&key(chunk), val, 0)?;
        }
        Ok(())
    }

    /// Forgets the bitmaps of `pid` except those of program image `keep`.
    pub fn forget(&self, pid: i32, keep: Option<u32>) -> Result<()> {
        let stale: Vec<Vec<u8>> = self
            .map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| key_owner(k).is_some_and(|(p, img)| p == pid as u32 && keep != Some(img)))
            .collect();
        for k in stale {
            self.map.delete(&k)?;
        }
        Ok(())
    }
}

/// Bytes of a `Touched` value.
const VALUE: usize = size_of::<abi::Touched>();

/// From this many chunks wanted on, every entry of the map is read in
/// batches rather than each wanted one looked up.
const READ_ALL_FROM: usize = 48;

/// Where the `since` words start in a `Touched` value.
const SINCE: usize = std::mem::offset_of!(abi::Touched, since);

/// `(tgid, image)` of a `TOUCHED` key.
fn key_owner(k: &[u8]) -> Option<(u32, u32)> {
    (k.len() == size_of::<abi::ChunkKey>()).then(|| (wire::u32_at(k, 0), wire::u32_at(k, 4)))
}

/// The `ever` bitmaps of one target, as user space sees them; `None` when
/// writes are not tracked (every page may hold data).
pub struct Written(pub Option<HashMap<u64, [u64; 8]>>);

impl Written {
    /// Every page may hold data.
    pub fn untracked() -> Self {
        Self(None)
    }

    /// Whether the page at `addr` was written (always, when untracked).
    pub fn marked(&self, addr: u64) -> bool {
        let Some(chunks) = &self.0 else { return true };
        let (chunk, w, m) = bit_of(addr);
        chunks.get(&chunk).is_some_and(|bits| bits[w] & m != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_map_to_their_chunk_word_and_bit() {
        assert_eq!(bit_of(0), (0, 0, 1));
        assert_eq!(bit_of(65 * PAGE), (0, 1, 2));
        assert_eq!(
            bit_of((1 << abi::CHUNK_SHIFT) + 511 * PAGE),
            (1, 7, 1 << 63)
        );
    }

    #[test]
    fn written_pages_are_the_marked_ones() {
        let mut chunks = HashMap::new();
        let (c, w, m) = bit_of(3 * PAGE);
        let mut bits = [0u64; 8];
        bits[w] = m;
        chunks.insert(c, bits);
        let wr = Written(Some(chunks));
        assert!(wr.marked(3 * PAGE));
        assert!(!wr.marked(4 * PAGE));
        assert!(!wr.marked(3 * PAGE + (1 << abi::CHUNK_SHIFT)));
        assert!(Written::untracked().marked(4 * PAGE));
    }
}
