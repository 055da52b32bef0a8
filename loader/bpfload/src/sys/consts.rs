//! Kernel constants (names as in include/uapi/linux/bpf.h and perf_event.h): the public
//! ones are those callers pass or compare; the rest only `sys` and the loader use.

/// bpf(2) commands.
pub(crate) const BPF_MAP_CREATE: u32 = 0;
pub(crate) const BPF_MAP_LOOKUP_ELEM: u32 = 1;
pub(crate) const BPF_MAP_UPDATE_ELEM: u32 = 2;
pub(crate) const BPF_MAP_DELETE_ELEM: u32 = 3;
pub(crate) const BPF_MAP_GET_NEXT_KEY: u32 = 4;
pub(crate) const BPF_PROG_LOAD: u32 = 5;
pub(crate) const BPF_PROG_GET_NEXT_ID: u32 = 11;
pub(crate) const BPF_MAP_GET_NEXT_ID: u32 = 12;
pub(crate) const BPF_PROG_GET_FD_BY_ID: u32 = 13;
pub(crate) const BPF_MAP_GET_FD_BY_ID: u32 = 14;
pub(crate) const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
pub(crate) const BPF_RAW_TRACEPOINT_OPEN: u32 = 17;
pub(crate) const BPF_BTF_LOAD: u32 = 18;
pub(crate) const BPF_MAP_FREEZE: u32 = 22;
pub(crate) const BPF_MAP_LOOKUP_BATCH: u32 = 24;
pub(crate) const BPF_MAP_UPDATE_BATCH: u32 = 26;
pub(crate) const BPF_LINK_CREATE: u32 = 28;
pub(crate) const BPF_LINK_GET_FD_BY_ID: u32 = 30;
pub(crate) const BPF_LINK_GET_NEXT_ID: u32 = 31;

/// Map types.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_RINGBUF: u32 = 27;
/// Per-CPU map types: user space sees one value per possible CPU.
pub(crate) const BPF_MAP_TYPE_PERCPU_HASH: u32 = 5;
pub(crate) const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub(crate) const BPF_MAP_TYPE_LRU_PERCPU_HASH: u32 = 10;
pub(crate) const BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: u32 = 21;

/// Map flags.
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Update flags.
pub const BPF_ANY: u64 = 0;
pub const BPF_NOEXIST: u64 = 1;
pub const BPF_EXIST: u64 = 2;

/// Program types.
pub const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
pub const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// Attach types.
pub(crate) const BPF_PERF_EVENT: u32 = 41;

/// Helper ids (enum bpf_func_id).
pub const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
pub const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;
pub const BPF_FUNC_GET_CURRENT_PID_TGID: i32 = 14;
pub const BPF_FUNC_PROBE_WRITE_USER: i32 = 36;
pub const BPF_FUNC_SEND_SIGNAL: i32 = 109;
pub const BPF_FUNC_PROBE_READ_USER: i32 = 112;
pub const BPF_FUNC_PROBE_READ_USER_STR: i32 = 114;
pub const BPF_FUNC_RINGBUF_OUTPUT: i32 = 130;
pub const BPF_FUNC_LOOP: i32 = 181;

/// Ring buffer record header bits (in the 32-bit length word).
pub(crate) const BPF_RINGBUF_BUSY_BIT: u32 = 1 << 31;
pub(crate) const BPF_RINGBUF_DISCARD_BIT: u32 = 1 << 30;
pub(crate) const BPF_RINGBUF_HDR_SZ: usize = 8;

pub use crate::names::BPF_OBJ_NAME_LEN;

pub(crate) const PERF_TYPE_TRACEPOINT: u32 = 2;
pub(crate) const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IO('$', 0)`.
pub(crate) const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `_IOW('$', 8, __u32)` (asm-generic ioctl encoding: x86, arm, riscv).
pub(crate) const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
