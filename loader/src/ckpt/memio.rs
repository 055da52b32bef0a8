//! User-space access to the target's memory: `process_vm_readv/writev` for
//! speed, `/proc/PID/mem` for what they refuse (pages not present for
//! reading; read-only pages for writing: the kernel writes them with FOLL_FORCE).

use super::procfs::PAGE;
use crate::{Error, Result};
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;

/// Kernel limit of iovecs per call.
const IOV_MAX: usize = 1024;

pub struct Mem {
    pid: i32,
    mem: File,
}

impl Mem {
    pub fn open(pid: i32) -> Result<Self> {
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|e| Error::from(e).context(format!("open /proc/{pid}/mem")))?;
        Ok(Self { pid, mem })
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len();
        let done = process_vm_readv(
            Pid::from_raw(self.pid),
            &mut [IoSliceMut::new(buf)],
            &[RemoteIoVec {
                base: addr as usize,
                len,
            }],
        )
        .unwrap_or(0);
        if done < len {
            self.mem
                .read_exact_at(&mut buf[done..], addr + done as u64)
                .map_err(|e| {
                    Error::from(e)
                        .context(format!("read target memory at {:#x}", addr + done as u64))
                })?;
        }
        Ok(())
    }

    /// Writes runs of whole pages (`(address, data)`), batching them into
    /// `process_vm_writev` and falling back to `/proc/PID/mem` (which also
    /// writes read-only pages) page by page for what it could not write.
    /// Returns the pages neither could write (guard pages, unmapped since);
    /// other errors end the call.
    pub fn write_pages<'a>(
        &self,
        pages: impl Iterator<Item = (u64, &'a [u8])>,
    ) -> Result<Vec<u64>> {
        let mut failed = Vec::new();
        let mut batch: Vec<(u64, &[u8])> = Vec::with_capacity(IOV_MAX);
        for (addr, data) in pages {
            batch.push((addr, data));
            if batch.len() == IOV_MAX {
                self.flush(&mut batch, &mut failed)?;
            }
        }
        self.flush(&mut batch, &mut failed)?;
        Ok(failed)
    }

    fn flush(&self, batch: &mut Vec<(u64, &[u8])>, failed: &mut Vec<u64>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let local: Vec<IoSlice> = batch.iter().map(|(_, d)| IoSlice::new(d)).collect();
        let remote: Vec<RemoteIoVec> = batch
            .iter()
            .map(|(a, d)| RemoteIoVec {
                base: *a as usize,
                len: d.len(),
            })
            .collect();
        let done = process_vm_writev(Pid::from_raw(self.pid), &local, &remote).unwrap_or(0);
        // The kernel stops at the first page it cannot write; redo the
        // rest page by page through /proc/PID/mem.
        let mut skip = done;
        for (addr, data) in batch.iter() {
            if skip >= data.len() {
                skip -= data.len();
                continue;
            }
            let from = skip - skip % PAGE as usize;
            skip = 0;
            for (k, page) in data[from..].chunks(PAGE as usize).enumerate() {
                let at = addr + from as u64 + k as u64 * PAGE;
                match self.mem.write_all_at(page, at) {
                    Ok(()) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EFAULT)) => {
                        failed.push(at)
                    }
                    Err(e) => {
                        return Err(
                            Error::from(e).context(format!("write target memory at {at:#x}"))
                        );
                    }
                }
            }
        }
        batch.clear();
        Ok(())
    }
}

/// A page of zeros, the source for zeroing pages from user space.
pub static ZERO_PAGE: [u8; PAGE as usize] = [0; PAGE as usize];
