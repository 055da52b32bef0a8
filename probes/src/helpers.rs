//! Kernel helpers, called through their numbers (`call imm`).
//!
//! Each helper number is paired with the prototype the kernel documents for
//! it in include/uapi/linux/bpf.h; the verifier checks every argument at load
//! time.

use core::ffi::c_void;
use core::mem::transmute;

macro_rules! helper {
    ($name:ident = $id:literal : fn($($a:ident: $t:ty),*) -> $r:ty) => {
        #[inline(always)]
        pub unsafe fn $name($($a: $t),*) -> $r {
            // SAFETY: the number and prototype match the kernel's (module comment).
            unsafe {
                let f: unsafe extern "C" fn($($t),*) -> $r = transmute($id as usize);
                f($($a),*)
            }
        }
    };
}

helper!(map_lookup_elem = 1: fn(map: *const c_void, key: *const c_void) -> *mut c_void);
helper!(map_update_elem = 2: fn(map: *const c_void, key: *const c_void, value: *const c_void, flags: u64) -> i64);
helper!(map_delete_elem = 3: fn(map: *const c_void, key: *const c_void) -> i64);
helper!(ktime_get_ns = 5: fn() -> u64);
helper!(get_current_pid_tgid = 14: fn() -> u64);
helper!(get_current_comm = 16: fn(buf: *mut c_void, size: u32) -> i64);
helper!(probe_write_user = 36: fn(dst: *mut c_void, src: *const c_void, len: u32) -> i64);
helper!(send_signal = 109: fn(sig: u32) -> i64);
helper!(probe_read_user = 112: fn(dst: *mut c_void, size: u32, src: *const c_void) -> i64);
helper!(probe_read_user_str = 114: fn(dst: *mut c_void, size: u32, src: *const c_void) -> i64);
helper!(ringbuf_output = 130: fn(rb: *const c_void, data: *const c_void, size: u64, flags: u64) -> i64);
helper!(bpf_loop = 181: fn(n: u32, cb: *const c_void, ctx: *mut c_void, flags: u64) -> i64);
