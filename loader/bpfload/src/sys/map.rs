//! Maps: BPF_MAP_CREATE, element lookup/update/delete/iteration with buffer sizes checked
//! against the map's, and BPF_MAP_FREEZE.

use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::consts::*;
use super::info::MapInfo;
use super::{BPF_MAP_CREATE, bpf, bpf_fd, map_info, obj_name, ptr_u64};
use crate::{Error, Result};

#[repr(C)]
#[derive(Default)]
struct MapCreateRaw {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
}
const _: () = assert!(size_of::<MapCreateRaw>() == 64);

/// Arguments of [`map_create`].
#[derive(Debug, Clone, Copy, Default)]
pub struct MapCreateAttr<'a> {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    /// Only the bytes the kernel accepts are kept, at most 15.
    pub name: &'a str,
    /// Template inner map, for ARRAY_OF_MAPS / HASH_OF_MAPS.
    pub inner_map_fd: Option<BorrowedFd<'a>>,
}

/// BPF_MAP_CREATE.
pub fn map_create(a: &MapCreateAttr<'_>) -> Result<OwnedFd> {
    let mut raw = MapCreateRaw {
        map_type: a.map_type,
        key_size: a.key_size,
        value_size: a.value_size,
        max_entries: a.max_entries,
        map_flags: a.map_flags,
        inner_map_fd: a.inner_map_fd.map_or(0, |f| f.as_raw_fd() as u32),
        map_name: obj_name(a.name),
        ..Default::default()
    };
    bpf_fd(BPF_MAP_CREATE, &mut raw).map_err(|e| {
        Error::sys(
            format!(
                "creating map `{}` (type {}, key {} B, value {} B, {} entries, flags {:#x})",
                a.name, a.map_type, a.key_size, a.value_size, a.max_entries, a.map_flags
            ),
            e,
        )
    })
}

#[repr(C)]
#[derive(Default)]
struct MapElemRaw {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}
const _: () = assert!(size_of::<MapElemRaw>() == 32);

/// `bpf_attr.batch`.
#[repr(C)]
#[derive(Default)]
struct MapBatchRaw {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<MapBatchRaw>() == 56);

/// The cursor of a batched lookup: where the next call goes on. The kernel
/// writes a bucket index (hash maps) or a key (others); 8 bytes hold either
/// for the keys of up to 8 bytes, and longer keys get a longer cursor.
pub struct BatchCursor {
    buf: Vec<u8>,
    started: bool,
}

impl BatchCursor {
    fn new(key_size: usize) -> Self {
        Self {
            buf: vec![0; key_size.max(8)],
            started: false,
        }
    }
}

/// What one batched lookup returned.
pub enum Batch {
    /// `n` entries; more may follow.
    More(usize),
    /// `n` entries, the last ones.
    Done(usize),
    /// The next bucket holds more entries than the buffers: call again with
    /// larger ones.
    TooSmall,
}

#[repr(C)]
#[derive(Default)]
struct MapFdRaw {
    map_fd: u32,
}

/// Buffer sizes the kernel uses for a map's elements, as user space sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ElemSizes {
    pub key: usize,
    /// For per-CPU maps: round_up(value_size, 8) * possible CPUs.
    pub value: usize,
}

/// The distance between consecutive values where the kernel lays them out
/// for user space (mmap of an array, per-CPU values): the size rounded up to 8.
pub(crate) fn value_stride(value_size: u32) -> usize {
    (value_size as usize).div_ceil(8) * 8
}

fn is_percpu(map_type: u32) -> bool {
    matches!(
        map_type,
        BPF_MAP_TYPE_PERCPU_HASH
            | BPF_MAP_TYPE_PERCPU_ARRAY
            | BPF_MAP_TYPE_LRU_PERCPU_HASH
            | BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE
    )
}

/// Number of possible CPUs, from `/sys/devices/system/cpu/possible` ("0-3,5").
fn possible_cpus() -> Result<usize> {
    let path = "/sys/devices/system/cpu/possible";
    let s = std::fs::read_to_string(path).map_err(|e| Error::from(e).context(path))?;
    parse_cpu_list(s.trim()).ok_or_else(|| Error::new(format!("{path}: cannot parse {s:?}")))
}

fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let last = part.rsplit('-').next()?;
        let n: usize = last.trim().parse().ok()?;
        max = Some(max.map_or(n, |m: usize| m.max(n)));
    }
    max.map(|m| m + 1)
}

impl ElemSizes {
    /// Sizes for a map described by `info`.
    pub fn of(info: &MapInfo) -> Result<Self> {
        let mut value = info.value_size as usize;
        if is_percpu(info.map_type) {
            value = value_stride(info.value_size) * possible_cpus()?;
        }
        Ok(Self {
            key: info.key_size as usize,
            value,
        })
    }

    /// The number of entries in batch buffers of `keys` and `values` bytes:
    /// whole keys and values, as many of each.
    fn batch(&self, what: &str, keys: usize, values: usize) -> Result<u32> {
        let whole = |len: usize, size: usize| size > 0 && len.is_multiple_of(size);
        let n = keys.checked_div(self.key).unwrap_or(0);
        if !whole(keys, self.key) || !whole(values, self.value) || values / self.value != n {
            return Err(Error::new(format!(
                "{what}: {keys} key bytes and {values} value bytes are not the same number \
                 of whole {}-byte keys and {}-byte values",
                self.key, self.value
            )));
        }
        u32::try_from(n).map_err(|_| Error::new(format!("{what}: {n} entries is too many")))
    }

    fn check(&self, what: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<()> {
        if let Some(k) = key
            && k.len() != self.key
        {
            crate::bail!(
                "{what}: key is {} bytes, the map's keys are {} bytes",
                k.len(),
                self.key
            );
        }
        if let Some(v) = value
            && v.len() != self.value
        {
            crate::bail!(
                "{what}: value buffer is {} bytes, the map's values are {} bytes",
                v.len(),
                self.value
            );
        }
        Ok(())
    }
}

/// A map descriptor together with its (immutable) element sizes, so that element
/// operations can check buffer lengths without asking the kernel each time.
#[derive(Debug)]
pub(crate) struct MapFd {
    fd: OwnedFd,
    info: MapInfo,
    sizes: ElemSizes,
}

impl MapFd {
    /// Creates a map.
    pub fn create(a: &MapCreateAttr<'_>) -> Result<Self> {
        Self::from_fd(map_create(a)?)
    }

    /// Takes ownership of a map descriptor; asks the kernel for its type and sizes.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        let info = map_info(fd.as_fd())?;
        let sizes = ElemSizes::of(&info)?;
        Ok(Self { fd, info, sizes })
    }

    pub fn info(&self) -> &MapInfo {
        &self.info
    }

    pub fn sizes(&self) -> ElemSizes {
        self.sizes
    }

    /// Element operations with this map's sizes.
    fn elems(&self) -> Elems<'_> {
        Elems {
            fd: self.fd.as_fd(),
            sizes: self.sizes,
        }
    }

    /// BPF_MAP_LOOKUP_ELEM; `Ok(false)` when the key is absent.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool> {
        self.elems().lookup(key, value)
    }

    /// BPF_MAP_UPDATE_ELEM with `flags` (BPF_ANY, BPF_NOEXIST, BPF_EXIST).
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
        self.elems().update(key, value, flags)
    }

    /// BPF_MAP_DELETE_ELEM; `Ok(false)` when the key is absent.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.elems().delete(key)
    }

    /// BPF_MAP_GET_NEXT_KEY; `key: None` gives the first key; `Ok(false)` at the end.
    pub fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool> {
        self.elems().next_key(key, next)
    }

    /// A cursor at the start of the map, for [`lookup_batch`](Self::lookup_batch).
    pub fn batch_cursor(&self) -> BatchCursor {
        BatchCursor::new(self.sizes.key)
    }

    /// BPF_MAP_LOOKUP_BATCH (Linux 5.6): the next entries from `cursor`,
    /// as many as `keys` and `values` hold (whole keys and values, the same
    /// number of each).
    pub fn lookup_batch(
        &self,
        cursor: &mut BatchCursor,
        keys: &mut [u8],
        values: &mut [u8],
    ) -> Result<Batch> {
        let n = self
            .sizes
            .batch("map lookup batch", keys.len(), values.len())?;
        if n == 0 {
            return Ok(Batch::TooSmall);
        }
        let mut next = vec![0u8; cursor.buf.len()];
        let mut a = MapBatchRaw {
            in_batch: if cursor.started {
                ptr_u64(cursor.buf.as_ptr())
            } else {
                0
            },
            out_batch: ptr_u64(next.as_mut_ptr()),
            keys: ptr_u64(keys.as_mut_ptr()),
            values: ptr_u64(values.as_mut_ptr()),
            count: n,
            map_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut a);
        // The kernel says how many it copied even when it stops.
        let got = (a.count as usize).min(n as usize);
        match r {
            Ok(_) => {
                cursor.buf = next;
                cursor.started = true;
                Ok(Batch::More(got))
            }
            Err(libc::ENOENT) => Ok(Batch::Done(got)),
            Err(libc::ENOSPC) if got == 0 => Ok(Batch::TooSmall),
            Err(e) => Err(Error::sys("BPF_MAP_LOOKUP_BATCH", e)),
        }
    }

    /// BPF_MAP_UPDATE_BATCH (Linux 5.6): each key of `keys` set to the value
    /// at the same place in `values` (as BPF_ANY).
    pub fn update_batch(&self, keys: &[u8], values: &[u8]) -> Result<()> {
        let n = self
            .sizes
            .batch("map update batch", keys.len(), values.len())?;
        if n == 0 {
            return Ok(());
        }
        let mut a = MapBatchRaw {
            keys: ptr_u64(keys.as_ptr()),
            values: ptr_u64(values.as_ptr()),
            count: n,
            map_fd: self.fd.as_raw_fd() as u32,
            ..Default::default()
        };
        match bpf(BPF_MAP_UPDATE_BATCH, &mut a) {
            Ok(_) if a.count == n => Ok(()),
            Ok(_) => Err(Error::new(format!(
                "BPF_MAP_UPDATE_BATCH: the kernel updated {} of {n} entries",
                a.count
            ))),
            Err(e) => Err(Error::sys(
                format!("BPF_MAP_UPDATE_BATCH (after {} of {n} entries)", a.count),
                e,
            )),
        }
    }
}

impl AsFd for MapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The element commands on one map: each checks the buffers against the map's sizes
/// before the kernel reads or writes them.
#[derive(Clone, Copy)]
struct Elems<'a> {
    fd: BorrowedFd<'a>,
    sizes: ElemSizes,
}

impl<'a> Elems<'a> {
    /// Asks the kernel for the sizes of the map behind `fd`.
    fn of(fd: BorrowedFd<'a>) -> Result<Self> {
        let sizes = ElemSizes::of(&map_info(fd)?)?;
        Ok(Self { fd, sizes })
    }

    /// Runs element command `cmd`; `Ok(false)` when the key is absent.
    fn run(self, cmd: u32, what: &str, key: u64, value: u64, flags: u64) -> Result<bool> {
        let mut a = MapElemRaw {
            map_fd: self.fd.as_raw_fd() as u32,
            key,
            value,
            flags,
            ..Default::default()
        };
        match bpf(cmd, &mut a) {
            Ok(_) => Ok(true),
            Err(libc::ENOENT) => Ok(false),
            Err(e) => Err(Error::sys(what, e)),
        }
    }

    fn lookup(self, key: &[u8], value: &mut [u8]) -> Result<bool> {
        self.sizes.check("map lookup", Some(key), Some(value))?;
        let (k, v) = (ptr_u64(key.as_ptr()), ptr_u64(value.as_mut_ptr()));
        self.run(BPF_MAP_LOOKUP_ELEM, "BPF_MAP_LOOKUP_ELEM", k, v, 0)
    }

    fn update(self, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
        self.sizes.check("map update", Some(key), Some(value))?;
        let (k, v) = (ptr_u64(key.as_ptr()), ptr_u64(value.as_ptr()));
        // ENOENT is an error here (BPF_EXIST on an absent key), not "absent".
        match self.run(BPF_MAP_UPDATE_ELEM, "BPF_MAP_UPDATE_ELEM", k, v, flags)? {
            true => Ok(()),
            false => Err(Error::sys("BPF_MAP_UPDATE_ELEM", libc::ENOENT)),
        }
    }

    fn delete(self, key: &[u8]) -> Result<bool> {
        self.sizes.check("map delete", Some(key), None)?;
        let k = ptr_u64(key.as_ptr());
        self.run(BPF_MAP_DELETE_ELEM, "BPF_MAP_DELETE_ELEM", k, 0, 0)
    }

    fn next_key(self, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool> {
        self.sizes.check("map get_next_key", key, None)?;
        self.sizes.check("map get_next_key", Some(next), None)?;
        let k = key.map_or(0, |k| ptr_u64(k.as_ptr()));
        let n = ptr_u64(next.as_mut_ptr());
        self.run(BPF_MAP_GET_NEXT_KEY, "BPF_MAP_GET_NEXT_KEY", k, n, 0)
    }
}

/// BPF_MAP_LOOKUP_ELEM on any map descriptor; `Ok(false)` when the key is absent.
/// Asks the kernel for the map's sizes first ([`crate::maps::Map`] knows them).
pub fn map_lookup_elem(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> Result<bool> {
    Elems::of(fd)?.lookup(key, value)
}

/// BPF_MAP_GET_NEXT_KEY on any map descriptor; `Ok(false)` after the last key.
pub fn map_get_next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool> {
    Elems::of(fd)?.next_key(key, next)
}

/// BPF_MAP_FREEZE: user space can no longer write the map (programs still can unless the
/// map was created with BPF_F_RDONLY_PROG).
pub(crate) fn map_freeze(fd: BorrowedFd<'_>) -> Result<()> {
    let mut a = MapFdRaw {
        map_fd: fd.as_raw_fd() as u32,
    };
    bpf(BPF_MAP_FREEZE, &mut a)
        .map(drop)
        .map_err(|e| Error::sys("BPF_MAP_FREEZE", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(9));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn value_strides() {
        assert_eq!(value_stride(0), 0);
        assert_eq!(value_stride(1), 8);
        assert_eq!(value_stride(12), 16);
        assert_eq!(value_stride(16), 16);
    }

    #[test]
    fn buffers_are_checked_against_the_sizes() {
        let s = ElemSizes { key: 4, value: 8 };
        assert!(s.check("t", Some(&[0; 4]), Some(&[0; 8])).is_ok());
        assert!(s.check("t", None, None).is_ok());
        let e = s
            .check("map lookup", Some(&[0; 8]), Some(&[0; 8]))
            .unwrap_err();
        assert_eq!(
            e.msg,
            "map lookup: key is 8 bytes, the map's keys are 4 bytes"
        );
        let e = s
            .check("map update", Some(&[0; 4]), Some(&[0; 7]))
            .unwrap_err();
        assert_eq!(
            e.msg,
            "map update: value buffer is 7 bytes, the map's values are 8 bytes"
        );
        let info = |map_type| MapInfo {
            map_type,
            id: 1,
            key_size: 4,
            value_size: 12,
            max_entries: 1,
            map_flags: 0,
            name: String::new(),
        };
        let plain = ElemSizes::of(&info(BPF_MAP_TYPE_ARRAY)).unwrap();
        assert_eq!(plain, ElemSizes { key: 4, value: 12 });
        // Per-CPU: one 8-aligned value per possible CPU.
        let per_cpu = ElemSizes::of(&info(BPF_MAP_TYPE_PERCPU_ARRAY)).unwrap();
        assert_eq!(per_cpu.value, 16 * possible_cpus().unwrap());
    }
}
