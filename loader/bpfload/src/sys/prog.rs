//! BTF and program loading. Each loads once without a log (the fast path); on failure it
//! loads again with a log buffer, growing it on ENOSPC, and keeps the log's tail.

use std::ffi::CString;
use std::mem::size_of;
use std::os::fd::{OwnedFd, RawFd};

use super::consts::*;
use super::{bpf_fd, name_from_bytes, obj_name, ptr_u64};
use crate::insn::Insn;
use crate::{Error, Result};

/// Largest verifier log we ask for: beyond that we show what we got.
const MAX_LOG_SIZE: usize = 64 << 20;
/// First verifier log size tried.
const FIRST_LOG_SIZE: usize = 1 << 20;
/// Lines of verifier log kept in an error.
const LOG_TAIL_LINES: usize = 40;

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

/// BPF_BTF_LOAD. On failure, loads again with a log and puts its tail in the error
/// ([`Error::log`]).
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
    Err(
        Error::sys(format!("BPF_BTF_LOAD ({} bytes)", blob.len()), errno)
            .with_log(log_tail(&log, LOG_TAIL_LINES)),
    )
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
    /// Only the bytes the kernel accepts are kept, at most 15.
    pub name: &'a str,
    pub prog_btf_fd: Option<RawFd>,
    /// `func_info_cnt` records of `func_info_rec_size` bytes (struct bpf_func_info).
    pub func_info: &'a [u8],
    pub func_info_rec_size: u32,
    pub func_info_cnt: u32,
}

/// BPF_PROG_LOAD. Loads once without a log (fast path); on failure loads again with a
/// level-1 verifier log, growing it on ENOSPC, and returns an error holding the errno of
/// the first attempt and the tail of the verifier log ([`Error::log`]).
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
    Err(Error::sys(&what, errno).with_log(log_tail(&log, LOG_TAIL_LINES)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_last_lines() {
        let log = b"a\nb\n\nc\nd\0garbage";
        assert_eq!(log_tail(log, 2), "[... 2 earlier lines]\nc\nd");
        assert_eq!(log_tail(b"\0", 2), "");
    }
}
