//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp` of the adversarial
//! target's own, in a few instructions each, replacing libc's for this
//! executable. Code that runs while the process's memory is destroyed
//! (src/scorch.rs) cannot avoid the calls the compiler inserts for copies
//! and zeroed arrays; glibc's versions read tuning thresholds from libc's
//! `.data`, which is destroyed then, and crash on what they find there.
//! These read nothing but their arguments. As in sys.rs, `unsafe` lives
//! here with its reasons. x86-64 only.

use core::arch::asm;

/// # Safety
/// As C's `memcpy`: `n` readable bytes at `src`, writable at `dst`, no overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; rep movsb copies exactly rcx bytes
    // forward (the direction flag is clear per ABI).
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// # Safety
/// As C's `memmove`: the ranges may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst below src, or no overlap: forward is safe.
        // SAFETY: the caller's contract.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: the caller's contract; backwards from the last byte with the
    // direction flag set, and cleared again as the ABI requires.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dst.wrapping_add(n).wrapping_sub(1) => _,
            inout("rsi") src.wrapping_add(n).wrapping_sub(1) => _,
            options(nostack),
        );
    }
    dst
}

/// # Safety
/// As C's `memset`: `n` writable bytes at `dst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; rep stosb writes exactly rcx bytes.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            in("al") c as u8,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// # Safety
/// As C's `memcmp`: `n` readable bytes at both.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let r: i32;
    // SAFETY: the caller's contract; reads at most n bytes of each, eight
    // at a time while they are equal, then byte by byte (repe cmpsb
    // compares [rsi] with [rdi] and stops after the first difference).
    unsafe {
        asm!(
            "xor eax, eax",
            "2:",
            "cmp rcx, 8",
            "jb 3f",
            "mov r8, qword ptr [rsi]",
            "cmp r8, qword ptr [rdi]",
            "jne 3f",
            "add rsi, 8",
            "add rdi, 8",
            "sub rcx, 8",
            "jmp 2b",
            "3:",
            "test rcx, rcx",
            "jz 4f",
            "repe cmpsb",
            "je 4f",
            "movzx eax, byte ptr [rsi - 1]",
            "movzx edx, byte ptr [rdi - 1]",
            "sub eax, edx",
            "4:",
            inout("rcx") n => _,
            inout("rsi") a => _,
            inout("rdi") b => _,
            out("eax") r,
            out("edx") _,
            out("r8") _,
            options(nostack, readonly),
        );
    }
    r
}

/// # Safety
/// As C's `bcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the caller's contract.
    unsafe { memcmp(a, b, n) }
}
