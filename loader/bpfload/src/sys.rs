//! Thin typed wrappers of bpf(2), perf_event_open(2), their ioctls, mmap of map memory
//! and mount(2) (tracefs).
//!
//! This is the only module with `unsafe`. Every attribute struct handed to the kernel is
//! `#[repr(C)]`, spelled out with explicit padding fields (so no byte is left uninitialised;
//! the kernel rejects non-zero bytes past the fields a command knows) and zero-initialised
//! through `Default`. Functions that hand the kernel a buffer check its length against what
//! the kernel will read or write, so every function here is safe to call with any input.

use std::ffi::CString;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::insn::Insn;
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------
// Kernel constants (names as in include/uapi/linux/bpf.h and perf_event.h).

/// bpf(2) commands.
pub const BPF_MAP_CREATE: u32 = 0;
pub const BPF_MAP_LOOKUP_ELEM: u32 = 1;
pub const BPF_MAP_UPDATE_ELEM: u32 = 2;
pub const BPF_MAP_DELETE_ELEM: u32 = 3;
pub const BPF_MAP_GET_NEXT_KEY: u32 = 4;
pub const BPF_PROG_LOAD: u32 = 5;
pub const BPF_PROG_GET_NEXT_ID: u32 = 11;
pub const BPF_MAP_GET_NEXT_ID: u32 = 12;
pub const BPF_PROG_GET_FD_BY_ID: u32 = 13;
pub const BPF_MAP_GET_FD_BY_ID: u32 = 14;
pub const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
pub const BPF_RAW_TRACEPOINT_OPEN: u32 = 17;
pub const BPF_BTF_LOAD: u32 = 18;
pub const BPF_MAP_FREEZE: u32 = 22;
pub const BPF_LINK_CREATE: u32 = 28;
pub const BPF_LINK_GET_FD_BY_ID: u32 = 30;
pub const BPF_LINK_GET_NEXT_ID: u32 = 31;

/// Map types.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
pub const BPF_MAP_TYPE_PERF_EVENT_ARRAY: u32 = 4;
pub const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
pub const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
pub const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
pub const BPF_MAP_TYPE_HASH_OF_MAPS: u32 = 13;
pub const BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: u32 = 21;
pub const BPF_MAP_TYPE_QUEUE: u32 = 22;
pub const BPF_MAP_TYPE_STACK: u32 = 23;
pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// Map flags.
pub const BPF_F_NO_PREALLOC: u32 = 1 << 0;
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Update flags.
pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;
pub const BPF_EXIST: u64 = 2;

/// Program types.
pub const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
pub const BPF_PROG_TYPE_KPROBE: u32 = 2;
pub const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
pub const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// Attach types.
pub const BPF_PERF_EVENT: u32 = 41;

/// Helper ids (enum bpf_func_id).
pub const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
pub const BPF_FUNC_MAP_UPDATE_ELEM: i32 = 2;
pub const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;
pub const BPF_FUNC_GET_CURRENT_PID_TGID: i32 = 14;
pub const BPF_FUNC_PROBE_WRITE_USER: i32 = 36;
pub const BPF_FUNC_SEND_SIGNAL: i32 = 109;
pub const BPF_FUNC_PROBE_READ_USER: i32 = 112;
pub const BPF_FUNC_PROBE_READ_USER_STR: i32 = 114;
pub const BPF_FUNC_RINGBUF_OUTPUT: i32 = 130;
pub const BPF_FUNC_LOOP: i32 = 181;

/// Ring buffer record header bits (in the 32-bit length word).
pub const BPF_RINGBUF_BUSY_BIT: u32 = 1 << 31;
pub const BPF_RINGBUF_DISCARD_BIT: u32 = 1 << 30;
pub const BPF_RINGBUF_HDR_SZ: usize = 8;

/// Kernel object names hold at most 15 bytes plus NUL.
pub const BPF_OBJ_NAME_LEN: usize = 16;

pub const PERF_TYPE_TRACEPOINT: u32 = 2;
pub const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IO('$', 0)`.
pub const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `_IOW('$', 8, __u32)` (asm-generic ioctl encoding: x86, arm, riscv).
pub const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// Largest verifier log we ask for: beyond that we show what we got.
const MAX_LOG_SIZE: usize = 64 << 20;
/// First verifier log size tried.
const FIRST_LOG_SIZE: usize = 1 << 20;
/// Lines of verifier log kept in an error message.
const LOG_TAIL_LINES: usize = 40;

// ---------------------------------------------------------------------------------------
// Raw call helpers.

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// bpf(2) with an attribute struct; returns the non-negative result or the errno.
fn bpf<T>(cmd: u32, attr: &mut T) -> std::result::Result<i64, i32> {
    // SAFETY: `attr` is an exclusive reference to a fully initialised #[repr(C)] struct that
    // outlives the call; the size passed is its exact size, so the kernel reads and writes
    // only inside it. Pointers inside it were derived from live buffers by the callers,
    // which checked their lengths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(r) }
}

/// bpf(2) for commands that return a new file descriptor.
fn bpf_fd<T>(cmd: u32, attr: &mut T) -> std::result::Result<OwnedFd, i32> {
    let r = bpf(cmd, attr)?;
    let fd = RawFd::try_from(r).map_err(|_| libc::EBADF)?;
    // SAFETY: the kernel just returned this descriptor for a new object; nobody else owns
    // it. bpf(2) always creates its descriptors with O_CLOEXEC.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ptr_u64<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// Kernel object name: at most 15 bytes of `[A-Za-z0-9_.]`, NUL-padded (the kernel rejects
/// any other byte).
pub fn obj_name(name: &str) -> [u8; BPF_OBJ_NAME_LEN] {
    let mut out = [0u8; BPF_OBJ_NAME_LEN];
    let ok = name
        .bytes()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.');
    for (dst, b) in out.iter_mut().take(BPF_OBJ_NAME_LEN - 1).zip(ok) {
        *dst = b;
    }
    out
}

fn name_from_bytes(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn ne_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_ne_bytes(a)
}

// ---------------------------------------------------------------------------------------
// Maps.

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
    /// Sanitised by [`obj_name`].
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

#[repr(C)]
#[derive(Default)]
struct MapFdRaw {
    map_fd: u32,
}

/// Buffer sizes the kernel uses for a map's elements, as user space sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElemSizes {
    pub key: usize,
    /// For per-CPU maps: round_up(value_size, 8) * possible CPUs.
    pub value: usize,
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
pub fn possible_cpus() -> Result<usize> {
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
            value = value.div_ceil(8) * 8 * possible_cpus()?;
        }
        Ok(Self {
            key: info.key_size as usize,
            value,
        })
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
pub struct MapFd {
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

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// BPF_MAP_LOOKUP_ELEM; `Ok(false)` when the key is absent.
    pub fn lookup(&self, key: &[u8], value: &mut [u8]) -> Result<bool> {
        self.sizes.check("map lookup", Some(key), Some(value))?;
        lookup_raw(self.fd.as_fd(), key, value)
    }

    /// BPF_MAP_UPDATE_ELEM with `flags` (BPF_ANY, BPF_NOEXIST, BPF_EXIST).
    pub fn update(&self, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
        self.sizes.check("map update", Some(key), Some(value))?;
        update_raw(self.fd.as_fd(), key, value, flags)
    }

    /// BPF_MAP_DELETE_ELEM; `Ok(false)` when the key is absent.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.sizes.check("map delete", Some(key), None)?;
        delete_raw(self.fd.as_fd(), key)
    }

    /// BPF_MAP_GET_NEXT_KEY; `key: None` gives the first key; `Ok(false)` at the end.
    pub fn next_key(&self, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool> {
        self.sizes.check("map get_next_key", key, None)?;
        self.sizes.check("map get_next_key", Some(next), None)?;
        next_key_raw(self.fd.as_fd(), key, next)
    }
}

impl AsFd for MapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn lookup_raw(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> Result<bool> {
    let mut a = MapElemRaw {
        map_fd: fd.as_raw_fd() as u32,
        key: ptr_u64(key.as_ptr()),
        value: ptr_u64(value.as_mut_ptr()),
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(libc::ENOENT) => Ok(false),
        Err(e) => Err(Error::sys("BPF_MAP_LOOKUP_ELEM", e)),
    }
}

fn update_raw(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
    let mut a = MapElemRaw {
        map_fd: fd.as_raw_fd() as u32,
        key: ptr_u64(key.as_ptr()),
        value: ptr_u64(value.as_ptr()),
        flags,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut a)
        .map(drop)
        .map_err(|e| Error::sys("BPF_MAP_UPDATE_ELEM", e))
}

fn delete_raw(fd: BorrowedFd<'_>, key: &[u8]) -> Result<bool> {
    let mut a = MapElemRaw {
        map_fd: fd.as_raw_fd() as u32,
        key: ptr_u64(key.as_ptr()),
        ..Default::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut a) {
        Ok(_) => Ok(true),
        Err(libc::ENOENT) => Ok(false),
        Err(e) => Err(Error::sys("BPF_MAP_DELETE_ELEM", e)),
    }
}

fn next_key_raw(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool> {
    let mut a = MapElemRaw {
        map_fd: fd.as_raw_fd() as u32,
        key: key.map_or(0, |k| ptr_u64(k.as_ptr())),
        value: ptr_u64(next.as_mut_ptr()),
        ..Default::default()
    };
    match bpf(BPF_MAP_GET_NEXT_KEY, &mut a) {
        Ok(_) => Ok(true),
        Err(libc::ENOENT) => Ok(false),
        Err(e) => Err(Error::sys("BPF_MAP_GET_NEXT_KEY", e)),
    }
}

/// BPF_MAP_LOOKUP_ELEM on any map descriptor; `Ok(false)` when the key is absent.
/// Asks the kernel for the map's sizes first (use [`MapFd`] to skip that).
pub fn map_lookup_elem(fd: BorrowedFd<'_>, key: &[u8], value: &mut [u8]) -> Result<bool> {
    ElemSizes::of(&map_info(fd)?)?.check("map lookup", Some(key), Some(value))?;
    lookup_raw(fd, key, value)
}

/// BPF_MAP_UPDATE_ELEM on any map descriptor.
pub fn map_update_elem(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> Result<()> {
    ElemSizes::of(&map_info(fd)?)?.check("map update", Some(key), Some(value))?;
    update_raw(fd, key, value, flags)
}

/// BPF_MAP_DELETE_ELEM on any map descriptor; `Ok(false)` when the key is absent.
pub fn map_delete_elem(fd: BorrowedFd<'_>, key: &[u8]) -> Result<bool> {
    ElemSizes::of(&map_info(fd)?)?.check("map delete", Some(key), None)?;
    delete_raw(fd, key)
}

/// BPF_MAP_GET_NEXT_KEY on any map descriptor; `Ok(false)` after the last key.
pub fn map_get_next_key(fd: BorrowedFd<'_>, key: Option<&[u8]>, next: &mut [u8]) -> Result<bool> {
    let s = ElemSizes::of(&map_info(fd)?)?;
    s.check("map get_next_key", key, None)?;
    s.check("map get_next_key", Some(next), None)?;
    next_key_raw(fd, key, next)
}

/// BPF_MAP_FREEZE: user space can no longer write the map (programs still can unless the
/// map was created with BPF_F_RDONLY_PROG).
pub fn map_freeze(fd: BorrowedFd<'_>) -> Result<()> {
    let mut a = MapFdRaw {
        map_fd: fd.as_raw_fd() as u32,
    };
    bpf(BPF_MAP_FREEZE, &mut a)
        .map(drop)
        .map_err(|e| Error::sys("BPF_MAP_FREEZE", e))
}

// ---------------------------------------------------------------------------------------
// BTF and programs.

#[repr(C)]
#[derive(Default)]
struct BtfLoadRaw {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    btf_log_true_size: u32,
}
const _: () = assert!(size_of::<BtfLoadRaw>() == 32);

/// Last `n` non-empty lines of a NUL-terminated log buffer.
fn log_tail(buf: &[u8], n: usize) -> String {
    let text = name_from_bytes(buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines]\n"));
    }
    out.push_str(&lines[start..].join("\n"));
    out
}

/// Loads with a growing log buffer until the log fits (or the cap); returns the
/// result of the last attempt and the log.
fn load_with_log(
    first: usize,
    mut attempt: impl FnMut(&mut [u8]) -> std::result::Result<OwnedFd, (i32, u32)>,
) -> (std::result::Result<OwnedFd, i32>, Vec<u8>) {
    let mut size = first;
    loop {
        let mut log = vec![0u8; size];
        match attempt(&mut log) {
            Ok(fd) => return (Ok(fd), log),
            Err((libc::ENOSPC, true_size)) if size < MAX_LOG_SIZE => {
                // Kernels >= 6.4 say how much they needed; older ones do not.
                let want = (true_size as usize).max(size.saturating_mul(4));
                size = want.min(MAX_LOG_SIZE);
            }
            Err((e, _)) => return (Err(e), log),
        }
    }
}

/// BPF_BTF_LOAD. On failure, loads again with a log and puts its tail in the error.
pub fn btf_load(blob: &[u8]) -> Result<OwnedFd> {
    let Ok(btf_size) = u32::try_from(blob.len()) else {
        crate::bail!("BTF blob of {} bytes is too large", blob.len());
    };
    let mut a = BtfLoadRaw {
        btf: ptr_u64(blob.as_ptr()),
        btf_size,
        ..Default::default()
    };
    let errno = match bpf_fd(BPF_BTF_LOAD, &mut a) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let (res, log) = load_with_log(64 << 10, |log| {
        let mut a = BtfLoadRaw {
            btf: ptr_u64(blob.as_ptr()),
            btf_size,
            btf_log_buf: ptr_u64(log.as_mut_ptr()),
            btf_log_size: log.len() as u32,
            btf_log_level: 1,
            ..Default::default()
        };
        bpf_fd(BPF_BTF_LOAD, &mut a).map_err(|e| (e, a.btf_log_true_size))
    });
    if let Ok(fd) = res {
        return Ok(fd);
    }
    let mut err = Error::sys(format!("BPF_BTF_LOAD ({} bytes)", blob.len()), errno);
    err.msg.push_str("\nBTF log:\n");
    err.msg.push_str(&log_tail(&log, LOG_TAIL_LINES));
    Err(err)
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct ProgLoadRaw {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    core_relo_cnt: u32,
    fd_array: u64,
    core_relos: u64,
    core_relo_rec_size: u32,
    log_true_size: u32,
}
const _: () = assert!(size_of::<ProgLoadRaw>() == 144);

/// Arguments of [`prog_load`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgLoadAttr<'a> {
    pub prog_type: u32,
    pub insns: &'a [Insn],
    /// "GPL" for programs using GPL-only helpers (bpf_probe_read_user, ...).
    pub license: &'a str,
    /// Sanitised by [`obj_name`].
    pub name: &'a str,
    pub expected_attach_type: u32,
    pub prog_btf_fd: Option<RawFd>,
    /// `func_info_cnt` records of `func_info_rec_size` bytes (struct bpf_func_info).
    pub func_info: &'a [u8],
    pub func_info_rec_size: u32,
    pub func_info_cnt: u32,
}

/// BPF_PROG_LOAD. Loads once without a log (fast path); on failure loads again with a
/// level-1 verifier log, growing it on ENOSPC, and returns an error holding the errno of
/// the first attempt and the tail of the verifier log.
pub fn prog_load(a: &ProgLoadAttr<'_>) -> Result<OwnedFd> {
    let what = format!("loading BPF program `{}`", a.name);
    let Ok(license) = CString::new(a.license) else {
        crate::bail!("{what}: license {:?} contains a NUL byte", a.license);
    };
    let Ok(insn_cnt) = u32::try_from(a.insns.len()) else {
        crate::bail!("{what}: {} instructions is too many", a.insns.len());
    };
    if a.insns.is_empty() {
        crate::bail!("{what}: no instructions");
    }
    let fi_len = (a.func_info_rec_size as u64) * (a.func_info_cnt as u64);
    if fi_len != a.func_info.len() as u64 {
        crate::bail!(
            "{what}: func_info is {} bytes but {} records of {} bytes were announced",
            a.func_info.len(),
            a.func_info_cnt,
            a.func_info_rec_size
        );
    }
    let base = ProgLoadRaw {
        prog_type: a.prog_type,
        insn_cnt,
        insns: ptr_u64(a.insns.as_ptr()),
        license: ptr_u64(license.as_ptr()),
        prog_name: obj_name(a.name),
        expected_attach_type: a.expected_attach_type,
        prog_btf_fd: a.prog_btf_fd.map_or(0, |f| f as u32),
        func_info_rec_size: if a.func_info_cnt > 0 {
            a.func_info_rec_size
        } else {
            0
        },
        func_info: if a.func_info_cnt > 0 {
            ptr_u64(a.func_info.as_ptr())
        } else {
            0
        },
        func_info_cnt: a.func_info_cnt,
        ..Default::default()
    };
    // EAGAIN can come back under memory pressure; libbpf retries too.
    let mut errno = libc::EAGAIN;
    for _ in 0..5 {
        match bpf_fd(BPF_PROG_LOAD, &mut { base }) {
            Ok(fd) => return Ok(fd),
            Err(libc::EAGAIN) => continue,
            Err(e) => {
                errno = e;
                break;
            }
        }
    }
    let (res, log) = load_with_log(FIRST_LOG_SIZE, |log| {
        let mut attr = ProgLoadRaw {
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: ptr_u64(log.as_mut_ptr()),
            ..base
        };
        bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| (e, attr.log_true_size))
    });
    if let Ok(fd) = res {
        // Loaded the second time (transient failure): take it.
        return Ok(fd);
    }
    let mut err = Error::sys(&what, errno);
    let tail = log_tail(&log, LOG_TAIL_LINES);
    if tail.is_empty() {
        err.msg.push_str("\n(the verifier wrote no log)");
    } else {
        err.msg.push_str("\nverifier log:\n");
        err.msg.push_str(&tail);
    }
    Err(err)
}

// ---------------------------------------------------------------------------------------
// perf events and attachment.

#[repr(C)]
#[derive(Default)]
struct PerfEventAttrRaw {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}
/// PERF_ATTR_SIZE_VER1: every kernel accepts it.
const _: () = assert!(size_of::<PerfEventAttrRaw>() == 72);

/// perf_event_open(2) of a tracepoint event (`tp_id` from tracefs), close-on-exec.
pub fn perf_event_open_tracepoint(tp_id: u64, pid: i32, cpu: i32) -> Result<OwnedFd> {
    let mut attr = PerfEventAttrRaw {
        type_: PERF_TYPE_TRACEPOINT,
        size: size_of::<PerfEventAttrRaw>() as u32,
        config: tp_id,
        sample_period: 1,
        wakeup_events: 1,
        ..Default::default()
    };
    // SAFETY: `attr` is a fully initialised perf_event_attr of the size it announces and
    // lives across the call; the kernel only reads it (and may write `size` on E2BIG).
    let r = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &mut attr as *mut PerfEventAttrRaw,
            pid as libc::c_long,
            cpu as libc::c_long,
            -1 as libc::c_long,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(Error::sys(
            format!("perf_event_open(tracepoint id {tp_id}, pid {pid}, cpu {cpu})"),
            last_errno(),
        ));
    }
    let fd = RawFd::try_from(r).map_err(|_| Error::new("perf_event_open returned a bad fd"))?;
    // SAFETY: perf_event_open just returned this new descriptor; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_int(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    arg: libc::c_int,
) -> std::result::Result<(), i32> {
    // SAFETY: both requests used here take an integer argument by value; the kernel reads
    // no memory of ours. `fd` is a live descriptor for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 { Err(last_errno()) } else { Ok(()) }
}

/// PERF_EVENT_IOC_SET_BPF: attach a program to a perf event (legacy path).
pub fn perf_event_set_bpf(fd: BorrowedFd<'_>, prog_fd: BorrowedFd<'_>) -> Result<()> {
    ioctl_int(fd, PERF_EVENT_IOC_SET_BPF, prog_fd.as_raw_fd())
        .map_err(|e| Error::sys("ioctl(PERF_EVENT_IOC_SET_BPF)", e))
}

/// PERF_EVENT_IOC_ENABLE.
pub fn perf_event_enable(fd: BorrowedFd<'_>) -> Result<()> {
    ioctl_int(fd, PERF_EVENT_IOC_ENABLE, 0)
        .map_err(|e| Error::sys("ioctl(PERF_EVENT_IOC_ENABLE)", e))
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateRaw {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    bpf_cookie: u64,
}
const _: () = assert!(size_of::<LinkCreateRaw>() == 24);

/// BPF_LINK_CREATE (for perf events: `attach_type` = [`BPF_PERF_EVENT`]).
pub fn link_create(
    prog_fd: BorrowedFd<'_>,
    target_fd: BorrowedFd<'_>,
    attach_type: u32,
) -> Result<OwnedFd> {
    let mut a = LinkCreateRaw {
        prog_fd: prog_fd.as_raw_fd() as u32,
        target_fd: target_fd.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    bpf_fd(BPF_LINK_CREATE, &mut a)
        .map_err(|e| Error::sys(format!("BPF_LINK_CREATE (attach type {attach_type})"), e))
}

#[repr(C)]
#[derive(Default)]
struct RawTpOpenRaw {
    name: u64,
    prog_fd: u32,
    _pad: u32,
    cookie: u64,
}
const _: () = assert!(size_of::<RawTpOpenRaw>() == 24);

/// BPF_RAW_TRACEPOINT_OPEN: attaches a raw tracepoint program; closing the fd detaches.
pub fn raw_tracepoint_open(name: &str, prog_fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    let Ok(cname) = CString::new(name) else {
        crate::bail!("raw tracepoint name {name:?} contains a NUL byte");
    };
    let mut a = RawTpOpenRaw {
        name: ptr_u64(cname.as_ptr()),
        prog_fd: prog_fd.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &mut a)
        .map_err(|e| Error::sys(format!("BPF_RAW_TRACEPOINT_OPEN({name})"), e))
}

// ---------------------------------------------------------------------------------------
// Object enumeration and info.

#[repr(C)]
#[derive(Default)]
struct GetIdRaw {
    start_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn next_id(cmd: u32, what: &str, start: u32) -> Result<Option<u32>> {
    let mut a = GetIdRaw {
        start_id: start,
        ..Default::default()
    };
    match bpf(cmd, &mut a) {
        Ok(_) => Ok(Some(a.next_id)),
        Err(libc::ENOENT) => Ok(None),
        Err(e) => Err(Error::sys(what, e)),
    }
}

/// BPF_PROG_GET_NEXT_ID: the next program id after `start` (0 = first), `None` at the end.
pub fn prog_get_next_id(start: u32) -> Result<Option<u32>> {
    next_id(BPF_PROG_GET_NEXT_ID, "BPF_PROG_GET_NEXT_ID", start)
}

/// BPF_MAP_GET_NEXT_ID.
pub fn map_get_next_id(start: u32) -> Result<Option<u32>> {
    next_id(BPF_MAP_GET_NEXT_ID, "BPF_MAP_GET_NEXT_ID", start)
}

/// BPF_LINK_GET_NEXT_ID.
pub fn link_get_next_id(start: u32) -> Result<Option<u32>> {
    next_id(BPF_LINK_GET_NEXT_ID, "BPF_LINK_GET_NEXT_ID", start)
}

fn fd_by_id(cmd: u32, what: &str, id: u32) -> Result<OwnedFd> {
    let mut a = GetIdRaw {
        start_id: id,
        ..Default::default()
    };
    bpf_fd(cmd, &mut a).map_err(|e| Error::sys(format!("{what}({id})"), e))
}

/// BPF_PROG_GET_FD_BY_ID.
pub fn prog_get_fd_by_id(id: u32) -> Result<OwnedFd> {
    fd_by_id(BPF_PROG_GET_FD_BY_ID, "BPF_PROG_GET_FD_BY_ID", id)
}

/// BPF_MAP_GET_FD_BY_ID.
pub fn map_get_fd_by_id(id: u32) -> Result<OwnedFd> {
    fd_by_id(BPF_MAP_GET_FD_BY_ID, "BPF_MAP_GET_FD_BY_ID", id)
}

/// BPF_LINK_GET_FD_BY_ID.
pub fn link_get_fd_by_id(id: u32) -> Result<OwnedFd> {
    fd_by_id(BPF_LINK_GET_FD_BY_ID, "BPF_LINK_GET_FD_BY_ID", id)
}

#[repr(C)]
#[derive(Default)]
struct InfoRaw {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (a zeroed prefix of struct bpf_prog_info,
/// bpf_map_info, bpf_link_info or bpf_btf_info); returns the number of bytes the kernel
/// filled. Pointer fields inside `info` must stay zero.
pub fn obj_get_info_by_fd(fd: BorrowedFd<'_>, info: &mut [u8]) -> Result<usize> {
    let Ok(info_len) = u32::try_from(info.len()) else {
        crate::bail!("BPF_OBJ_GET_INFO_BY_FD: info buffer too large");
    };
    // Zeroed so no stale bytes are taken for array lengths/pointers by the kernel.
    info.fill(0);
    let mut a = InfoRaw {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len,
        info: ptr_u64(info.as_mut_ptr()),
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map_err(|e| Error::sys("BPF_OBJ_GET_INFO_BY_FD", e))?;
    Ok(a.info_len as usize)
}

/// The part of struct bpf_prog_info we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    pub prog_type: u32,
    pub id: u32,
    pub name: String,
}

/// The part of struct bpf_map_info we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: String,
}

/// The part of struct bpf_link_info we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
}

/// Type, id and name of a program.
pub fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo> {
    // type, id, tag[8], jited/xlated lens, 2 pointers, load_time, uid, nr_map_ids,
    // map_ids pointer, then name[16] at offset 64.
    let mut b = [0u8; 80];
    obj_get_info_by_fd(fd, &mut b).map_err(|e| e.context("program info"))?;
    Ok(ProgInfo {
        prog_type: ne_u32(&b, 0),
        id: ne_u32(&b, 4),
        name: name_from_bytes(&b[64..80]),
    })
}

/// Type, id, sizes, flags and name of a map.
pub fn map_info(fd: BorrowedFd<'_>) -> Result<MapInfo> {
    let mut b = [0u8; 40];
    obj_get_info_by_fd(fd, &mut b).map_err(|e| e.context("map info"))?;
    Ok(MapInfo {
        map_type: ne_u32(&b, 0),
        id: ne_u32(&b, 4),
        key_size: ne_u32(&b, 8),
        value_size: ne_u32(&b, 12),
        max_entries: ne_u32(&b, 16),
        map_flags: ne_u32(&b, 20),
        name: name_from_bytes(&b[24..40]),
    })
}

/// Type, id and program id of a link.
pub fn link_info(fd: BorrowedFd<'_>) -> Result<LinkInfo> {
    let mut b = [0u8; 16];
    obj_get_info_by_fd(fd, &mut b).map_err(|e| e.context("link info"))?;
    Ok(LinkInfo {
        link_type: ne_u32(&b, 0),
        id: ne_u32(&b, 4),
        prog_id: ne_u32(&b, 8),
    })
}

// ---------------------------------------------------------------------------------------
// mmap of map memory.

/// A shared mapping of a map's memory (BPF_F_MMAPABLE arrays), read-write or read-only.
///
/// The slices alias memory that BPF programs may write at any time: treat their contents
/// as a snapshot that can change under you (like any shared memory), and synchronise with
/// the programs through the protocol (e.g. read only after the program signalled completion).
#[derive(Debug)]
pub enum MapMmap {
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

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn mmap_err(what: String, e: std::io::Error) -> Error {
    Error::sys(what, e.raw_os_error().unwrap_or(libc::EIO))
}

/// mmap(MAP_SHARED) of `len` bytes of a map at `offset` (a multiple of the page size).
pub fn mmap_map(fd: BorrowedFd<'_>, offset: u64, len: usize, writable: bool) -> Result<MapMmap> {
    if len == 0 {
        crate::bail!("mmap of a BPF map: length 0");
    }
    // Only BPF map memory, whose size never changes, may be mapped through this safe
    // function (a regular file could be truncated under the mapping).
    let info = map_info(fd)?;
    if info.map_type != BPF_MAP_TYPE_ARRAY || info.map_flags & BPF_F_MMAPABLE == 0 {
        crate::bail!(
            "map `{}` cannot be mapped: only ARRAY maps created with BPF_F_MMAPABLE can (use RingMmap for ring buffers)",
            info.name
        );
    }
    let size = (info.value_size as u64).div_ceil(8) * 8 * info.max_entries as u64;
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
pub struct RingMmap {
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
    /// Maps a ring buffer map whose data area is `size` bytes (its max_entries: a power of
    /// two and a multiple of the page size).
    pub fn new(fd: BorrowedFd<'_>, size: usize) -> Result<Self> {
        let info = map_info(fd)?;
        if info.map_type != BPF_MAP_TYPE_RINGBUF || info.max_entries as usize != size {
            crate::bail!(
                "map `{}` is not a ring buffer of {size} bytes (type {}, max_entries {})",
                info.name,
                info.map_type,
                info.max_entries
            );
        }
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

// ---------------------------------------------------------------------------------------
// Miscellaneous system calls.

/// mount(2) of a pseudo file system (`tracefs`, `securityfs`, `debugfs`) at `target`.
pub fn mount_fs(fstype: &str, target: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let what = || format!("mount -t {fstype} {fstype} {}", target.display());
    let (Ok(src), Ok(tgt)) = (
        CString::new(fstype),
        CString::new(target.as_os_str().as_bytes()),
    ) else {
        crate::bail!("{}: NUL byte in argument", what());
    };
    // SAFETY: all three strings are NUL-terminated and outlive the call; data is NULL.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r < 0 {
        Err(Error::sys(what(), last_errno()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_and_truncated() {
        assert_eq!(&obj_name("a-b/c.d_e")[..], b"abc.d_e\0\0\0\0\0\0\0\0\0");
        let n = obj_name("abcdefghijklmnopqrstuvwxyz");
        assert_eq!(&n[..15], b"abcdefghijklmno");
        assert_eq!(n[15], 0);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,5,7-8"), Some(9));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let log = b"a\nb\n\nc\nd\0garbage";
        assert_eq!(log_tail(log, 2), "[... 2 earlier lines]\nc\nd");
        assert_eq!(log_tail(b"\0", 2), "");
    }
}
