//! bpfckpt's BPF programs. Built for `probes/target.json` (a relocatable
//! BPF ELF from rustc's own LLVM; see ARCHITECTURE.md); every program runs
//! in the context of the task that hit the tracepoint, which for the
//! checkpoint/restore programs is the target itself.
//!
//! Rules for these files: no panics, no formatting, no slice indexing with
//! runtime values, no large copies (they become memcpy calls the kernel does
//! not have); every helper call goes through `helpers`.

#![no_std]
#![no_main]
// `atomic-cas` is off for BPF in rustc, so the RMW atomics of core are not
// available; the intrinsics map straight to BPF atomic instructions (cpu v3).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod abi;
mod checkpoint;
mod degraded;
mod gup;
mod helpers;
mod layout;
mod maps;
mod restore;
mod selftest;
mod target;
mod track;
mod trigger;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 4] = *b"GPL\0";
