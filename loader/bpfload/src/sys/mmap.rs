//! mmap of map memory: BPF_F_MMAPABLE arrays, and the two mappings of a ring buffer.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::consts::*;
use super::info::map_info;
use super::map::value_stride;
use crate::{Error, Result};

/// A shared mapping of a map's memory (BPF_F_MMAPABLE arrays), read-write or read-only.
///
/// The slices alias memory that BPF programs may write at any time: treat their contents
/// as a snapshot that can change under you (like any shared memory), and synchronise with
/// the programs through the protocol (e.g. read only after the program signalled completion).
#[derive(Debug)]
pub(crate) enum MapMmap {
    Rw(memmap2::MmapMut),
    Ro(memmap2::Mmap),
}

impl MapMmap {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            MapMmap::Rw(m) => m,
            MapMmap::Ro(m) => m,
        }
    }

    /// `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match self {
            MapMmap::Rw(m) => Some(m),
            MapMmap::Ro(_) => None,
        }
    }
}

fn mmap_err(what: String, e: std::io::Error) -> Error {
    Error::sys(what, e.raw_os_error().unwrap_or(libc::EIO))
}

/// mmap(MAP_SHARED) of `len` bytes of a map at `offset` (a multiple of the page size).
pub(crate) fn mmap_map(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
    writable: bool,
) -> Result<MapMmap> {
    if len == 0 {
        crate::bail!("mmap of a BPF map: length 0");
    }
    // Only BPF map memory, whose size never changes, may be mapped through this safe
    // function (a regular file could be truncated under the mapping).
    let info = map_info(fd)?;
    if info.map_type != BPF_MAP_TYPE_ARRAY || info.map_flags & BPF_F_MMAPABLE == 0 {
        crate::bail!(
            "map `{}` cannot be mapped: only ARRAY maps created with BPF_F_MMAPABLE can (ring buffers are read with RingBuf)",
            info.name
        );
    }
    let size = value_stride(info.value_size) as u64 * u64::from(info.max_entries);
    if offset.checked_add(len as u64).is_none_or(|end| end > size) {
        crate::bail!(
            "map `{}`: mmap of {len} bytes at offset {offset} exceeds its {size} bytes",
            info.name
        );
    }
    let mut opts = memmap2::MmapOptions::new();
    opts.offset(offset).len(len);
    let what = || format!("mmap of BPF map ({len} bytes at offset {offset}, writable: {writable})");
    if writable {
        // SAFETY: memmap2's contract is that the file is not truncated/modified in ways that
        // invalidate the mapping; a BPF map's memory is fixed-size and lives as long as the
        // mapping (the mapping holds a map reference). Concurrent writes by BPF programs are
        // documented on `MapMmap`.
        let m = unsafe { opts.map_mut(fd.as_raw_fd()) };
        m.map(MapMmap::Rw).map_err(|e| mmap_err(what(), e))
    } else {
        // SAFETY: as above.
        let m = unsafe { opts.map(fd.as_raw_fd()) };
        m.map(MapMmap::Ro).map_err(|e| mmap_err(what(), e))
    }
}

/// The two mappings of a BPF ring buffer: the consumer page (read-write, offset 0) and the
/// producer page followed by the data area mapped twice (read-only, offset one page), so a
/// record that wraps around the end is still contiguous.
#[derive(Debug)]
pub(crate) struct RingMmap {
    consumer: memmap2::MmapRaw,
    producer: memmap2::MmapRaw,
    page: usize,
    size: usize,
}

/// System page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if r > 0 { r as usize } else { 4096 }
}

impl RingMmap {
    /// Maps a ring buffer map; its data area is max_entries bytes (a power of two and a
    /// multiple of the page size).
    pub fn new(fd: BorrowedFd<'_>) -> Result<Self> {
        let info = map_info(fd)?;
        if info.map_type != BPF_MAP_TYPE_RINGBUF {
            crate::bail!(
                "map `{}` is not a ring buffer (type {}, BPF_MAP_TYPE_RINGBUF is {BPF_MAP_TYPE_RINGBUF})",
                info.name,
                info.map_type
            );
        }
        let size = info.max_entries as usize;
        let page = page_size();
        if !size.is_power_of_two() || !size.is_multiple_of(page) {
            crate::bail!(
                "ring buffer size {size} is not a power of two multiple of the page size {page}"
            );
        }
        let Some(ro_len) = size.checked_mul(2).and_then(|d| d.checked_add(page)) else {
            crate::bail!("ring buffer size {size} is too large");
        };
        let consumer = memmap2::MmapOptions::new()
            .len(page)
            .map_raw(fd.as_raw_fd())
            .map_err(|e| mmap_err("mmap of ring buffer consumer page".into(), e))?;
        let producer = memmap2::MmapOptions::new()
            .offset(page as u64)
            .len(ro_len)
            .map_raw_read_only(fd.as_raw_fd())
            .map_err(|e| mmap_err(format!("mmap of ring buffer data ({ro_len} bytes)"), e))?;
        Ok(Self {
            consumer,
            producer,
            page,
            size,
        })
    }

    /// Size of the data area.
    pub fn size(&self) -> usize {
        self.size
    }

    fn consumer_atomic(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped read-write, page-aligned (so 8-aligned), at
        // least 8 bytes, and lives as long as `self`. The kernel reads it concurrently, which
        // atomics permit.
        unsafe { AtomicU64::from_ptr(self.consumer.as_mut_ptr() as *mut u64) }
    }

    fn producer_atomic(&self) -> &AtomicU64 {
        // SAFETY: the producer page is page-aligned, mapped (read-only: we only load, and
        // 8-byte atomic loads from read-only memory are allowed) and lives as long as `self`.
        unsafe { AtomicU64::from_ptr(self.producer.as_ptr() as *mut u64) }
    }

    /// Our position (written only by us).
    pub fn consumer_pos(&self) -> u64 {
        self.consumer_atomic().load(Ordering::Acquire)
    }

    /// Publishes our position after the records before it were processed (release: the
    /// kernel may reuse their space as soon as it sees the new value).
    pub fn set_consumer_pos(&mut self, pos: u64) {
        self.consumer_atomic().store(pos, Ordering::Release)
    }

    /// The kernel's position (acquire: the headers before it are visible).
    pub fn producer_pos(&self) -> u64 {
        self.producer_atomic().load(Ordering::Acquire)
    }

    fn data_ptr(&self) -> *const u8 {
        // Data starts one page into the read-only mapping.
        self.producer.as_ptr().wrapping_add(self.page)
    }

    /// The length word of the record header at `pos` (acquire: pairs with the kernel's
    /// release when it commits the record).
    pub fn header(&self, pos: u64) -> u32 {
        let off = (pos as usize) & (self.size - 1) & !7;
        // SAFETY: `off` < size and 8-aligned, so the 4 bytes lie inside the first copy of
        // the data area, which is mapped for the lifetime of `self`.
        unsafe { AtomicU32::from_ptr(self.data_ptr().add(off) as *mut u32) }.load(Ordering::Acquire)
    }

    /// The `len` bytes of the committed record whose header is at `pos`. `None` if `len`
    /// does not fit in the data area.
    pub fn record(&self, pos: u64, len: usize) -> Option<&[u8]> {
        let off = ((pos as usize) & (self.size - 1) & !7) + BPF_RINGBUF_HDR_SZ;
        if len > self.size - BPF_RINGBUF_HDR_SZ {
            return None;
        }
        // SAFETY: off + len <= size + size - 8 < 2 * size: inside the double-mapped data
        // area. A committed record is not written again until the consumer position passes
        // it, which needs `&mut self` (set_consumer_pos) and so ends this borrow first.
        // (A second consumer of the same map elsewhere could break that, as with any
        // shared memory; we never create one.)
        Some(unsafe { std::slice::from_raw_parts(self.data_ptr().add(off), len) })
    }
}
