//! Byte encodings of the structs in `abi.rs`, written field by field (no
//! unsafe transmutes); the offsets are checked against the compiler's layout.

use super::abi::{ChunkKey, Config, Region, State, Touched};
use std::mem::offset_of;

const _: () = {
    assert!(offset_of!(Config, version) == 8);
    assert!(offset_of!(Config, applied_seq) == 16);
    assert!(offset_of!(Config, nregions) == 24);
    assert!(offset_of!(Config, nzero) == 28);
    assert!(offset_of!(Config, total_pages) == 32);
    assert!(offset_of!(Config, zero_pages) == 40);
    assert!(offset_of!(Config, capacity) == 48);
    assert!(offset_of!(Config, image_slots) == 56);
    assert!(offset_of!(Config, image_seq) == 64);
    assert!(offset_of!(Config, watch_comm) == 72);
    assert!(offset_of!(Config, ckpt_path) == 88);
    assert!(offset_of!(Config, restore_path) == 216);
    assert!(offset_of!(Config, self_tgid) == 344);
    assert!(offset_of!(Config, nfree) == 352);
    assert!(size_of::<Config>() == 360);
    assert!(size_of::<Region>() == 32);
    assert!(offset_of!(State, exec_gen) == 16);
    assert!(offset_of!(State, untracked) == 24);
    assert!(size_of::<ChunkKey>() == 16);
    assert!(size_of::<Touched>() == 128);
};

/// Where `Config::version` sits; every other byte is written between its
/// odd and even values.
pub const CONFIG_VERSION_AT: usize = offset_of!(Config, version);

pub fn config_bytes(c: &Config) -> Vec<u8> {
    let mut b = Vec::with_capacity(size_of::<Config>());
    b.extend_from_slice(&c.tgid.to_ne_bytes());
    b.extend_from_slice(&c.flags.to_ne_bytes());
    b.extend_from_slice(&c.version.to_ne_bytes());
    b.extend_from_slice(&c.applied_seq.to_ne_bytes());
    b.extend_from_slice(&c.nregions.to_ne_bytes());
    b.extend_from_slice(&c.nzero.to_ne_bytes());
    for v in [
        c.total_pages,
        c.zero_pages,
        c.capacity,
        c.image_slots,
        c.image_seq,
    ] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b.extend_from_slice(&c.watch_comm);
    b.extend_from_slice(&c.ckpt_path);
    b.extend_from_slice(&c.restore_path);
    b.extend_from_slice(&c.self_tgid.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&c.nfree.to_ne_bytes());
    debug_assert_eq!(b.len(), size_of::<Config>());
    b
}

pub fn region_bytes(start: u64, npages: u64, flags: u64) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&start.to_ne_bytes());
    b[8..16].copy_from_slice(&npages.to_ne_bytes());
    b[16..24].copy_from_slice(&flags.to_ne_bytes());
    b
}

pub fn chunk_key(tgid: u32, image: u32, chunk: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&tgid.to_ne_bytes());
    b[4..8].copy_from_slice(&image.to_ne_bytes());
    b[8..].copy_from_slice(&chunk.to_ne_bytes());
    b
}

pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

pub fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_ne_bytes(a)
}

/// A NUL-padded fixed buffer from a string (the caller checked the length).
pub fn fixed<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = s.len().min(N - 1);
    out[..n].copy_from_slice(&s[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_buffers_keep_a_nul() {
        assert_eq!(fixed::<4>(b"abcdef"), *b"abc\0");
        assert_eq!(fixed::<4>(b"ab"), *b"ab\0\0");
    }
}
