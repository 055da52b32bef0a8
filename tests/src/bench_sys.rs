//! The system calls the bench targets need beyond `sys.rs`: copying between
//! processes for the `process_vm_readv` / `process_vm_writev` baselines. As
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
    const IOV_MAX: usize = 1024;
    if !local.len().is_multiple_of(PAGE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "length is not a multiple of 4096",
        ));
    }
    let mut l: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
    let mut r: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX);
    for (i, chunk) in local.chunks(PAGE * IOV_MAX).enumerate() {
        l.clear();
        r.clear();
        for (j, page) in chunk.chunks(PAGE).enumerate() {
            l.push(libc::iovec {
                iov_base: page.as_ptr() as *mut libc::c_void,
                iov_len: PAGE,
            });
            r.push(libc::iovec {
                iov_base: (remote + (i * IOV_MAX + j) * PAGE) as *mut libc::c_void,
                iov_len: PAGE,
            });
        }
        // SAFETY: every local iovec describes a 4 KiB piece of `local`,
        // memory we own and the kernel only reads; the remote iovecs are
        // addresses in the other process, checked by the kernel. Both
        // vectors hold `l.len() <= IOV_MAX` valid entries.
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
        if n as usize != chunk.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("process_vm_writev wrote {n} of {} bytes", chunk.len()),
            ));
        }
    }
    Ok(())
}
