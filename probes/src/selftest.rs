//! The loader's self-test program: every relocation case the loader
//! handles (map, `.data`, `.rodata`, `.bss`, a call into `.text`, a
//! `bpf_loop` callback) in one program, answering one chosen process.

use crate::helpers as h;
use crate::maps::*;
use crate::target::*;
use core::ffi::c_void;
use core::ptr::{read_volatile, write_volatile};

/// Globals in each data section, so that every relocation kind appears.
#[unsafe(no_mangle)]
pub static mut SELFTEST_DATA: u64 = 0x1111_2222_3333_4444;
#[unsafe(no_mangle)]
pub static SELFTEST_RODATA: u64 = 0x5555_6666_7777_8888;
#[unsafe(no_mangle)]
pub static mut SELFTEST_BSS: u64 = 0;

#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn selftest_mix(a: u64, b: u64) -> u64 {
    (a ^ b).rotate_left(7)
}

extern "C" fn selftest_step(i: u64, acc: *mut u64) -> i64 {
    // SAFETY: `acc` is the caller's stack slot.
    unsafe { *acc += i + 1 };
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "tracepoint/syscalls/sys_enter_openat")]
pub extern "C" fn selftest(_ctx: *const SysEnter) -> u32 {
    // SAFETY: pointers from map lookups (null checked), globals, the stack.
    unsafe {
        let (tgid, _) = current_tgid();
        let want: *mut u32 = lookup(map(&SELFTEST_CFG), 0);
        if want.is_null() || *want != tgid {
            return 0;
        }
        // .bss counts hits, .data and .rodata are read back verbatim.
        let hits = read_volatile(&raw const SELFTEST_BSS) + 1;
        write_volatile(&raw mut SELFTEST_BSS, hits);
        let mut acc = 0u64;
        h::bpf_loop(
            10,
            selftest_step as *const c_void,
            &mut acc as *mut u64 as *mut c_void,
            0,
        );
        let vals = [
            read_volatile(&raw const SELFTEST_DATA),
            read_volatile(&SELFTEST_RODATA),
            hits,
            selftest_mix(read_volatile(&raw const SELFTEST_DATA), 3),
            acc,
            hits,
        ];
        let mut i = 0u32;
        while i < 6 {
            let slot: *mut u64 = lookup(map(&SELFTEST_OUT), i);
            if !slot.is_null() {
                write_volatile(slot, *vals.as_ptr().add(i as usize));
            }
            i += 1;
        }
        h::ringbuf_output(
            map(&SELFTEST_EVENTS),
            vals.as_ptr() as *const c_void,
            size_of::<[u64; 6]>() as u64,
            0,
        );
    }
    0
}
