//! The trigger programs: a served target's `open`/`openat`/`creat` of a
//! marker path starts a checkpoint or a restore, in its own context.

use crate::abi::*;
use crate::checkpoint::checkpoint;
use crate::helpers as h;
use crate::restore::restore;
use crate::target::*;
use core::ffi::c_void;
use core::ptr::read_volatile;

const O_CREAT: u64 = 0o100;

#[repr(C, align(8))]
struct PathBuf([u8; PATH_MAX]);

/// Compares two NUL-padded path buffers word by word (no memcmp in BPF).
#[inline(always)]
fn same_path(a: &PathBuf, b: *const [u8; PATH_MAX]) -> bool {
    let a = a.0.as_ptr() as *const u64;
    let b = b as *const u64;
    let mut i = 0;
    while i < PATH_MAX / 8 {
        // SAFETY: both buffers are PATH_MAX bytes and 8-byte aligned
        // (Config keeps its paths at 8-byte offsets).
        if unsafe { read_volatile(a.add(i)) != read_volatile(b.add(i)) } {
            return false;
        }
        i += 1;
    }
    true
}

/// `W`: restore with the write helper; `D`: the degraded programs (see
/// degraded.rs), which only hold the target; they skip the foreign-write
/// watch too, as their requests never trust tracking.
#[inline(always)]
unsafe fn on_open<const W: bool, const D: bool>(path: u64, flags: u64, creat: bool) -> u32 {
    // SAFETY: pointers come from map lookups (null checked) or the stack.
    unsafe {
        if !D {
            crate::gup::on_open_flags(path, if creat { O_CREAT | 1 } else { flags });
        }
        let cfg = served();
        if cfg.is_null() || (!creat && flags & O_CREAT == 0) {
            return 0;
        }
        let mut buf = PathBuf([0; PATH_MAX]);
        if h::probe_read_user_str(
            buf.0.as_mut_ptr() as *mut c_void,
            PATH_MAX as u32,
            path as *const c_void,
        ) <= 0
        {
            return 0;
        }
        if same_path(&buf, &raw const (*cfg).ckpt_path) {
            if D {
                crate::degraded::checkpoint(cfg);
            } else {
                checkpoint(cfg);
            }
        } else if same_path(&buf, &raw const (*cfg).restore_path) {
            if D {
                crate::degraded::restore(cfg);
            } else {
                restore::<W>(cfg);
            }
        }
    }
    0
}

/// The trigger programs come in three sets: `*_w` restores with
/// `bpf_probe_write_user`, the plain ones only hold the target for a
/// user-space restore. The kernel refuses to load any program that merely
/// contains the write helper under lockdown, so the choice is made by
/// loading one set. `*_d` are the degraded set (see degraded.rs).
macro_rules! triggers {
    ($w:literal, $d:literal, $openat:ident, $open:ident, $creat:ident) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_enter_openat")]
        pub extern "C" fn $openat(ctx: *const SysEnter) -> u32 {
            // SAFETY: the tracepoint context is readable at these offsets.
            unsafe { on_open::<$w, $d>((*ctx).args[1], (*ctx).args[2], false) }
        }

        /// musl's open() uses SYS_open, not openat.
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_enter_open")]
        pub extern "C" fn $open(ctx: *const SysEnter) -> u32 {
            // SAFETY: as above.
            unsafe { on_open::<$w, $d>((*ctx).args[0], (*ctx).args[1], false) }
        }

        #[unsafe(no_mangle)]
        #[unsafe(link_section = "tracepoint/syscalls/sys_enter_creat")]
        pub extern "C" fn $creat(ctx: *const SysEnter) -> u32 {
            // SAFETY: as above.
            unsafe { on_open::<$w, $d>((*ctx).args[0], 0, true) }
        }
    };
}

triggers!(false, false, trigger_openat, trigger_open, trigger_creat);
triggers!(
    true,
    false,
    trigger_openat_w,
    trigger_open_w,
    trigger_creat_w
);
triggers!(
    false,
    true,
    trigger_openat_d,
    trigger_open_d,
    trigger_creat_d
);
