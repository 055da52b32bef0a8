//! `PAGEMAP_SCAN` over a target's pages (residency, dirty tracking) and guard pages for tests.

use super::last_errno;
use bpfload::{Error, Result};
use std::os::fd::AsRawFd;

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::Ioctl = 0xc060_6610u32 as libc::Ioctl;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}
const _: () = assert!(size_of::<PmScanArg>() == 96);

/// One result of `PAGEMAP_SCAN`: `(start, end, categories)`.
pub type PageRegion = (u64, u64, u64);

pub struct Scanned {
    pub regions: Vec<PageRegion>,
    /// Where the walk stopped (the end, unless the result buffer filled).
    pub walk_end: u64,
}

/// Pages per `PAGEMAP_SCAN` result buffer.
const SCAN_VEC: usize = 4096;

/// `PAGEMAP_SCAN` over `[start, end)` of the process behind `pagemap`:
/// the runs of pages in any of the `anyof` categories, reporting `ret`.
pub fn pagemap_scan(
    pagemap: &std::fs::File,
    start: u64,
    end: u64,
    anyof: u64,
    ret: u64,
) -> Result<Scanned> {
    pagemap_scan_with(pagemap, start, end, 0, 0, anyof, ret)
}

/// `PM_SCAN_WP_MATCHING`: write-protect the pages reported.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless the range is registered for
/// asynchronous write protection.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `PAGEMAP_SCAN` with `flags` and a category `mask` every page must match.
pub fn pagemap_scan_with(
    pagemap: &std::fs::File,
    start: u64,
    end: u64,
    flags: u64,
    mask: u64,
    anyof: u64,
    ret: u64,
) -> Result<Scanned> {
    // No more runs than pages: a small range needs a small buffer.
    let cap = (end.saturating_sub(start) / 4096).clamp(1, SCAN_VEC as u64) as usize;
    let mut vec = vec![[0u64; 3]; cap];
    let mut a = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags,
        start,
        end,
        vec: vec.as_mut_ptr() as u64,
        vec_len: cap as u64,
        category_mask: mask,
        category_anyof_mask: anyof,
        return_mask: ret,
        ..Default::default()
    };
    // SAFETY: `a` is a fully initialised pm_scan_arg of the size it states;
    // `vec` holds `vec_len` page_region records of 24 bytes and outlives
    // the call; the kernel writes only within them.
    let r = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut a as *mut PmScanArg) };
    if r < 0 {
        return Err(Error::sys("PAGEMAP_SCAN", last_errno()));
    }
    let n = (r as usize).min(cap);
    Ok(Scanned {
        regions: vec[..n].iter().map(|e| (e[0], e[1], e[2])).collect(),
        walk_end: a.walk_end,
    })
}

/// Whether the kernel has `PAGEMAP_SCAN` (Linux 6.7+): an empty range is
/// accepted, an unknown ioctl is not.
pub fn pagemap_scan_supported(pagemap: &std::fs::File) -> bool {
    pagemap_scan(pagemap, 0, 0, 1 << 3, 1 << 3).is_ok()
}

/// `madvise(MADV_GUARD_INSTALL)` on our own memory (Linux 6.13+), to test
/// what guard pages look like.
#[cfg(test)]
pub fn madvise_guard(addr: u64, len: u64) -> Result<()> {
    // SAFETY: installs guards in our own mapping that the caller owns and no
    // longer accesses at those pages; no memory is handed to the kernel.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, 102) };
    if r < 0 {
        return Err(Error::sys("madvise(MADV_GUARD_INSTALL)", last_errno()));
    }
    Ok(())
}
