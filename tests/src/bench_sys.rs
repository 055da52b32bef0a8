//! The system calls the bench targets need beyond `sys.rs`: copying between
//! processes for the `process_vm_readv` / `process_vm_writev` baselines,
//! and the names of BPF maps for the kernel-memory breakdown. As
//! everywhere in this project, `unsafe` lives only in wrapper modules like
//! this one, each block justified.

#![allow(dead_code)]

use std::io;

/// `process_vm_readv` of `local.len()` bytes from `remote` in process `pid`,
/// repeated until all are copied. One iovec per side per call.
pub fn vm_read(pid: i32, local: &mut [u8], remote: usize) -> io::Result<()> {
    let mut done = 0usize;
    while done < local.len() {
        let rest = &mut local[done..];
        let l = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let r = libc::iovec {
            iov_base: (remote + done) as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: `l` describes `rest`, memory we own and may write for
        // its whole length; `r` is only an address in the other process,
        // which the kernel checks (EFAULT) and never dereferences here.
        let n = unsafe { libc::process_vm_readv(pid, &l, 1, &r, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "process_vm_readv copied nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// `process_vm_writev` of `local` to `remote` in process `pid`, repeated
/// until all is copied. One iovec per side per call.
pub fn vm_write(pid: i32, local: &[u8], remote: usize) -> io::Result<()> {
    let mut done = 0usize;
    while done < local.len() {
        let rest = &local[done..];
        let l = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        let r = libc::iovec {
            iov_base: (remote + done) as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: `l` describes `rest`, memory we own; the kernel only reads
        // it (the iovec type wants a mutable pointer). `r` is an address in
        // the other process, checked by the kernel.
        let n = unsafe { libc::process_vm_writev(pid, &l, 1, &r, 1, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "process_vm_writev copied nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// `process_vm_writev` of `local` to `remote` as the engine's user-space
/// restore issues it: one 4 KiB iovec per page on both sides, up to 1024
/// iovecs (the kernel's IOV_MAX) per call. `local.len()` must be a multiple
/// of 4096.
pub fn vm_write_pages(pid: i32, local: &[u8], remote: usize) -> io::Result<()> {
    const PAGE: usize = 4096;
    if !local.len().is_multiple_of(PAGE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "length is not a multiple of 4096",
        ));
    }
    let pages: Vec<(&[u8], usize)> = local
        .chunks(PAGE)
        .enumerate()
        .map(|(k, page)| (page, remote + k * PAGE))
        .collect();
    vm_write_page_list(pid, &pages)
}

/// `process_vm_writev` of pages scattered on both sides: each `(local,
/// remote)` a 4 KiB page of ours to the page at `remote` in process `pid`,
/// one iovec per page, up to 1024 per call (as the engine's incremental
/// restore writes a dirty set).
pub fn vm_write_page_list(pid: i32, pages: &[(&[u8], usize)]) -> io::Result<()> {
    const PAGE: usize = 4096;
    const IOV_MAX: usize = 1024;
    let mut l: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
    let mut r: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
    for chunk in pages.chunks(IOV_MAX) {
        l.clear();
        r.clear();
        for &(page, remote) in chunk {
            if page.len() != PAGE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a local page is not 4096 bytes",
                ));
            }
            l.push(libc::iovec {
                iov_base: page.as_ptr() as *mut libc::c_void,
                iov_len: PAGE,
            });
            r.push(libc::iovec {
                iov_base: remote as *mut libc::c_void,
                iov_len: PAGE,
            });
        }
        // SAFETY: every local iovec describes a 4 KiB page we borrow and the
        // kernel only reads; the remote iovecs are addresses in the other
        // process, checked by the kernel. Both vectors hold `l.len() <=
        // IOV_MAX` valid entries.
        let n = unsafe {
            libc::process_vm_writev(
                pid,
                l.as_ptr(),
                l.len() as libc::c_ulong,
                r.as_ptr(),
                r.len() as libc::c_ulong,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != chunk.len() * PAGE {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "process_vm_writev wrote {n} of {} bytes",
                    chunk.len() * PAGE
                ),
            ));
        }
    }
    Ok(())
}

/// The kernel's name of BPF map `id` (`bpf_map_info.name`), for the bench's
/// per-map breakdown of kernel memory: /proc/PID/fdinfo shows a map's id and
/// memory but not its name. Needs CAP_SYS_ADMIN (BPF_MAP_GET_FD_BY_ID).
pub fn bpf_map_name(id: u32) -> io::Result<String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// The commands' parts of `union bpf_attr`; the kernel wants the rest of
    /// the size passed zero.
    #[repr(C)]
    struct ById {
        map_id: u32,
        open_flags: u32,
        _zero: u64,
    }
    #[repr(C)]
    struct Info {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut by_id = ById {
        map_id: id,
        open_flags: 0,
        _zero: 0,
    };
    // SAFETY: bpf(2) reads `size_of::<ById>()` bytes of `by_id`, a live
    // value laid out as its part of `union bpf_attr`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_FD_BY_ID,
            &raw mut by_id,
            std::mem::size_of::<ById>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new descriptor; nothing else
    // owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // `struct bpf_map_info` up to its name: type, id, key_size, value_size,
    // max_entries, map_flags (u32 each), then char name[16].
    let mut info = [0u8; 40];
    let mut attr = Info {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: as above; the kernel writes at most `info_len` bytes to
    // `info`, a live buffer of that size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            std::mem::size_of::<Info>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let name = &info[24..40];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}
