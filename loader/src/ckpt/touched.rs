//! The touched-page bitmaps (`TOUCHED`) as user space uses them: which
//! pages of a private anonymous region may hold data, and recording the
//! pages user space wrote itself (its writes fault nothing).

use super::abi;
use super::procfs::PAGE;
use super::wire;
use crate::Result;
use bpfload::maps::Map;
use std::collections::{BTreeMap, HashMap};

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
        let mut chunks = HashMap::new();
        let mut val = [0u8; size_of::<abi::Touched>()];
        for key in self.map.keys() {
            let key = key?;
            if key_owner(&key) != Some((pid as u32, image)) {
                continue;
            }
            if self.map.lookup(&key, &mut val)? {
                let mut ever = [0u64; 8];
                for (w, e) in ever.iter_mut().enumerate() {
                    *e = wire::u64_at(&val, w * 8);
                }
                chunks.insert(wire::u64_at(&key, 8), ever);
            }
        }
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
        let mut val = [0u8; size_of::<abi::Touched>()];
        for (chunk, bits) in chunks {
            let key = wire::chunk_key(pid as u32, image, chunk);
            if !self.map.lookup(&key, &mut val)? {
                val = [0; size_of::<abi::Touched>()];
            }
            for (w, b) in bits.iter().enumerate() {
                let old = wire::u64_at(&val, at + w * 8);
                val[at + w * 8..at + w * 8 + 8].copy_from_slice(&(old | b).to_ne_bytes());
            }
            self.map.update(&key, &val, 0)?;
        }
        Ok(())
    }

    /// Clears the `since` bits of `pages` (ascending): they are clean again.
    pub fn clear_since(&self, pid: i32, image: u32, pages: &[u64]) -> Result<()> {
        let mut val = [0u8; size_of::<abi::Touched>()];
        for chunk in pages.chunk_by(|a, b| a >> abi::CHUNK_SHIFT == b >> abi::CHUNK_SHIFT) {
            let key = wire::chunk_key(pid as u32, image, chunk[0] >> abi::CHUNK_SHIFT);
            if !self.map.lookup(&key, &mut val)? {
                continue;
            }
            for &a in chunk {
                let (_, w, m) = bit_of(a);
                let at = SINCE + w * 8;
                let old = wire::u64_at(&val, at);
                val[at..at + 8].copy_from_slice(&(old & !m).to_ne_bytes());
            }
            self.map.update(&key, &val, 0)?;
        }
        Ok(())
    }

    /// Clears every `since` bit of `pid`'s image `image`.
    pub fn clear_since_all(&self, pid: i32, image: u32) -> Result<()> {
        let mut val = [0u8; size_of::<abi::Touched>()];
        let keys: Vec<Vec<u8>> = self.map.keys().filter_map(|k| k.ok()).collect();
        for key in keys {
            if key_owner(&key) != Some((pid as u32, image)) || !self.map.lookup(&key, &mut val)? {
                continue;
            }
            val[SINCE..SINCE + 64].fill(0);
            self.map.update(&key, &val, 0)?;
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
