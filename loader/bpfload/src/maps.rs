//! BPF maps from user space: creation, byte-level element access with size checks, key
//! iteration, freezing, and direct memory access to BPF_F_MMAPABLE arrays.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::sys::{self, MapCreateAttr, MapFd, MapInfo, MapMmap};
use crate::{Error, Result};

/// A BPF map owned by this process; dropping it closes the descriptor (the kernel frees
/// the map once no program, link or mapping refers to it either).
///
/// The public fields are a copy of what the kernel reported at creation; changing them
/// changes nothing in the kernel.
#[derive(Debug)]
pub struct Map {
    fd: MapFd,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub name: String,
}

impl Map {
    /// Creates a map (BPF_MAP_CREATE).
    pub fn create(attr: &MapCreateAttr<'_>) -> Result<Self> {
        Ok(Self::wrap(MapFd::create(attr)?))
    }

    /// A BPF_MAP_TYPE_HASH map.
    pub fn hash(
        name: &str,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    ) -> Result<Self> {
        Self::create(&MapCreateAttr {
            map_type: sys::BPF_MAP_TYPE_HASH,
            key_size,
            value_size,
            max_entries,
            map_flags,
            name,
            inner_map_fd: None,
        })
    }

    /// A BPF_MAP_TYPE_ARRAY map with u32 keys (`map_flags` may hold BPF_F_MMAPABLE).
    pub fn array(name: &str, value_size: u32, max_entries: u32, map_flags: u32) -> Result<Self> {
        Self::create(&MapCreateAttr {
            map_type: sys::BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size,
            max_entries,
            map_flags,
            name,
            inner_map_fd: None,
        })
    }

    /// A BPF_MAP_TYPE_RINGBUF map with a data area of `size` bytes (a power of two,
    /// multiple of the page size).
    pub fn ringbuf(name: &str, size: u32) -> Result<Self> {
        Self::create(&MapCreateAttr {
            map_type: sys::BPF_MAP_TYPE_RINGBUF,
            max_entries: size,
            name,
            ..Default::default()
        })
    }

    /// Takes ownership of an existing map descriptor (e.g. from `sys::map_get_fd_by_id`).
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(Self::wrap(MapFd::from_fd(fd)?))
    }

    fn wrap(fd: MapFd) -> Self {
        let i = fd.info().clone();
        Self {
            fd,
            map_type: i.map_type,
            key_size: i.key_size,
            value_size: i.value_size,
            max_entries: i.max_entries,
            name: i.name,
        }
    }

    /// The kernel's current description of the map (includes its id).
    pub fn info(&self) -> Result<MapInfo> {
        sys::map_info(self.fd.as_fd())
    }

    /// The map's kernel id (stable for its lifetime; for leak checks).
    pub fn id(&self) -> u32 {
        self.fd.info().id
    }

    /// Bytes of a value buffer for lookups/updates: `value_size`, or for per-CPU maps
    /// round_up(value_size, 8) times the number of possible CPUs.
    pub fn value_len(&self) -> usize {
        self.fd.sizes().value
    }

    fn ctx(&self, e: Error) -> Error {
        e.context(format!("map `{}`", self.name))
    }

    /// Copies the value of `key` into `value`; `Ok(false)` if the key is absent.
    /// Both lengths must match the map's sizes exactly.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool> {
        self.fd.lookup(key, value).map_err(|e| self.ctx(e))
    }

    /// Sets `key` to `value`; `flags` is `sys::BPF_ANY`, `BPF_NOEXIST` or `BPF_EXIST`.
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
        self.fd.update(key, value, flags).map_err(|e| self.ctx(e))
    }

    /// Removes `key`; `Ok(false)` if it was absent (arrays cannot delete: EINVAL).
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.fd.delete(key).map_err(|e| self.ctx(e))
    }

    /// Iterates over the keys. Concurrent deletions by programs may make a hash map's
    /// iteration restart from the beginning (kernel behaviour), so keys can repeat.
    pub fn keys(&self) -> Keys<'_> {
        Keys {
            map: self,
            prev: None,
            done: false,
        }
    }

    /// Every entry, read a batch at a time (BPF_MAP_LOOKUP_BATCH, Linux 5.6):
    /// a few system calls instead of two per key. `Ok(None)` where the
    /// kernel has no batched lookup for this map: use [`keys`](Self::keys).
    /// Entries that programs add or delete meanwhile may be missed or seen,
    /// as with `keys`.
    pub fn entries(&self) -> Result<Option<Entries>> {
        let sizes = self.fd.sizes();
        let mut e = Entries {
            key_size: sizes.key,
            value_size: sizes.value,
            keys: Vec::new(),
            values: Vec::new(),
        };
        let mut cursor = self.fd.batch_cursor();
        let mut per = 256usize;
        loop {
            let (k0, v0) = (e.keys.len(), e.values.len());
            e.keys.resize(k0 + per * sizes.key, 0);
            e.values.resize(v0 + per * sizes.value, 0);
            let r = self
                .fd
                .lookup_batch(&mut cursor, &mut e.keys[k0..], &mut e.values[v0..]);
            let (got, done) = match r {
                Ok(sys::Batch::More(n)) => (n, false),
                Ok(sys::Batch::Done(n)) => (n, true),
                Ok(sys::Batch::TooSmall) => (0, false),
                Err(err) if batch_unsupported(&err) => return Ok(None),
                Err(err) => return Err(self.ctx(err)),
            };
            e.keys.truncate(k0 + got * sizes.key);
            e.values.truncate(v0 + got * sizes.value);
            if done {
                return Ok(Some(e));
            }
            if got == 0 {
                // One bucket holds more than `per` entries.
                per = per
                    .checked_mul(2)
                    .filter(|&p| p <= 1 << 20)
                    .ok_or_else(|| {
                        self.ctx(Error::new("BPF_MAP_LOOKUP_BATCH makes no progress"))
                    })?;
            }
        }
    }

    /// Sets each key of `keys` (concatenated) to the value at the same place
    /// in `values` in one system call (BPF_MAP_UPDATE_BATCH, Linux 5.6), as
    /// `BPF_ANY` (the kernel takes no other flag for batches). `Ok(false)`,
    /// changing nothing, where the kernel has no batched update for this map.
    pub fn update_batch(&self, keys: &[u8], values: &[u8]) -> Result<bool> {
        match self.fd.update_batch(keys, values) {
            Ok(()) => Ok(true),
            Err(e) if batch_unsupported(&e) => Ok(false),
            Err(e) => Err(self.ctx(e)),
        }
    }

    /// [`lookup`](Self::lookup) with a u32 key (arrays).
    pub fn lookup_u32_key(&self, key: u32, value: &mut [u8]) -> Result<bool> {
        self.lookup(&key.to_ne_bytes(), value)
    }

    /// [`update`](Self::update) with a u32 key.
    pub fn update_u32_key(&self, key: u32, value: &[u8], flags: u64) -> Result<()> {
        self.update(&key.to_ne_bytes(), value, flags)
    }

    /// [`delete`](Self::delete) with a u32 key.
    pub fn delete_u32_key(&self, key: u32) -> Result<bool> {
        self.delete(&key.to_ne_bytes())
    }

    /// [`lookup`](Self::lookup) with a u64 key.
    pub fn lookup_u64_key(&self, key: u64, value: &mut [u8]) -> Result<bool> {
        self.lookup(&key.to_ne_bytes(), value)
    }

    /// [`update`](Self::update) with a u64 key.
    pub fn update_u64_key(&self, key: u64, value: &[u8], flags: u64) -> Result<()> {
        self.update(&key.to_ne_bytes(), value, flags)
    }

    /// [`delete`](Self::delete) with a u64 key.
    pub fn delete_u64_key(&self, key: u64) -> Result<bool> {
        self.delete(&key.to_ne_bytes())
    }

    /// The u64 value at a u32 key of a map whose values are 8 bytes (counters, settings).
    pub fn get_u64(&self, key: u32) -> Result<Option<u64>> {
        let mut v = [0u8; 8];
        Ok(self
            .lookup_u32_key(key, &mut v)?
            .then(|| u64::from_ne_bytes(v)))
    }

    /// Sets the u64 value at a u32 key of a map whose values are 8 bytes.
    pub fn set_u64(&self, key: u32, value: u64) -> Result<()> {
        self.update_u32_key(key, &value.to_ne_bytes(), sys::BPF_ANY)
    }

    /// BPF_MAP_FREEZE: user space can no longer change the map.
    pub fn freeze(&self) -> Result<()> {
        sys::map_freeze(self.fd.as_fd()).map_err(|e| self.ctx(e))
    }

    /// Maps a BPF_F_MMAPABLE array read-write (fails with EPERM once frozen).
    pub fn mmap(&self) -> Result<ArrayMmap> {
        self.mmap_impl(true)
    }

    /// Maps a BPF_F_MMAPABLE array read-only (works on frozen maps too).
    pub fn mmap_read_only(&self) -> Result<ArrayMmap> {
        self.mmap_impl(false)
    }

    fn mmap_impl(&self, writable: bool) -> Result<ArrayMmap> {
        // sys::mmap_map checks, with the kernel's view of the map, that it can be mapped.
        let stride = sys::value_stride(self.value_size);
        let Some(len) = stride.checked_mul(self.max_entries as usize) else {
            crate::bail!("map `{}`: size overflows", self.name);
        };
        let mm = sys::mmap_map(self.fd.as_fd(), 0, len, writable).map_err(|e| self.ctx(e))?;
        Ok(ArrayMmap {
            mm,
            value_size: self.value_size as usize,
            stride,
            entries: self.max_entries as usize,
        })
    }
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether a batched command failed only because the kernel lacks it: an
/// unknown command before 5.6, or a map type without batches.
fn batch_unsupported(e: &Error) -> bool {
    const ENOTSUPP: i32 = 524;
    matches!(e.errno, Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
}

/// A map's entries, as [`Map::entries`] read them.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    key_size: usize,
    value_size: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl Entries {
    pub fn len(&self) -> usize {
        self.keys.len().checked_div(self.key_size).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(key, value)` of each entry.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.keys
            .chunks_exact(self.key_size.max(1))
            .zip(self.values.chunks_exact(self.value_size.max(1)))
    }
}

/// Iterator over a map's keys (BPF_MAP_GET_NEXT_KEY); stops after the first error.
#[derive(Debug)]
pub struct Keys<'a> {
    map: &'a Map,
    prev: Option<Vec<u8>>,
    done: bool,
}

impl Iterator for Keys<'_> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut next = vec![0u8; self.map.key_size as usize];
        match self.map.fd.next_key(self.prev.as_deref(), &mut next) {
            Ok(true) => {
                self.prev = Some(next.clone());
                Some(Ok(next))
            }
            Ok(false) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(self.map.ctx(e)))
            }
        }
    }
}

/// The memory of a BPF_F_MMAPABLE array, shared with the kernel.
///
/// Element `i` occupies `value_size` bytes at offset `i * stride()`, where the stride is
/// the value size rounded up to 8. BPF programs may write this memory at any time: the
/// slices handed out are views of live shared memory, not snapshots. Read them only when
/// the protocol guarantees the program is done (or accept torn values), and copy out
/// (`read`) what must stay consistent. The mapping keeps the map alive by itself.
#[derive(Debug)]
pub struct ArrayMmap {
    mm: MapMmap,
    value_size: usize,
    stride: usize,
    entries: usize,
}

impl ArrayMmap {
    /// Distance between consecutive elements.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Number of elements.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Whether the mapping is writable.
    pub fn is_writable(&self) -> bool {
        matches!(self.mm, MapMmap::Rw(_))
    }

    /// The whole area (`entries * stride` bytes).
    pub fn as_slice(&self) -> &[u8] {
        let n = self.entries * self.stride;
        &self.mm.as_slice()[..n]
    }

    /// The whole area, writable; error for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        let n = self.entries * self.stride;
        match self.mm.as_mut_slice() {
            Some(s) => Ok(&mut s[..n]),
            None => Err(Error::new("this map was mapped read-only")),
        }
    }

    /// The value of element `i`, `None` if out of range.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        let off = i.checked_mul(self.stride)?;
        (i < self.entries).then(|| &self.as_slice()[off..off + self.value_size])
    }

    /// The value of element `i`, writable; `None` if out of range or read-only.
    pub fn value_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let (off, vs) = (i.checked_mul(self.stride)?, self.value_size);
        if i >= self.entries {
            return None;
        }
        self.as_mut_slice().ok().map(|s| &mut s[off..off + vs])
    }

    /// Copies `out.len()` bytes starting at byte `offset` of the area.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let src = offset
            .checked_add(out.len())
            .and_then(|end| self.as_slice().get(offset..end))
            .ok_or_else(|| {
                Error::new(format!(
                    "read of {} bytes at {offset} is outside the map",
                    out.len()
                ))
            })?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// Copies `data` to byte `offset` of the area.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        let s = self.as_mut_slice()?;
        let dst = offset
            .checked_add(data.len())
            .and_then(|end| s.get_mut(offset..end))
            .ok_or_else(|| {
                Error::new(format!(
                    "write of {} bytes at {offset} is outside the map",
                    data.len()
                ))
            })?;
        dst.copy_from_slice(data);
        Ok(())
    }

    /// The u64 at byte `offset` (native endian).
    pub fn read_u64(&self, offset: usize) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(offset, &mut b)?;
        Ok(u64::from_ne_bytes(b))
    }

    /// Writes a u64 at byte `offset` (native endian).
    pub fn write_u64(&mut self, offset: usize, v: u64) -> Result<()> {
        self.write(offset, &v.to_ne_bytes())
    }
}
