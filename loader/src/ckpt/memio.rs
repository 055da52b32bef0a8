//! User-space access to the target's memory: `process_vm_readv/writev` for
//! speed, `/proc/PID/mem` for what they refuse (pages not present for
//! reading; read-only pages for writing: the kernel writes them with FOLL_FORCE).
//!
//! Kernels built with `CONFIG_PROC_MEM_FORCE_PTRACE` (Debian's 7.x) give
//! FOLL_FORCE only to the target's tracer: there a write to a read-only page
//! fails with EIO, and is done again as the tracer ([`Access`]): the held
//! target seized, written, detached back into its stop.

use super::inject::Seized;
use super::procfs::PAGE;
use crate::{Error, Result};
use nix::sys::uio::{RemoteIoVec, process_vm_readv, process_vm_writev};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

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

    /// What `process_vm_readv` reads of `buf.len()` bytes at `addr`: how many.
    fn read_fast(&self, addr: u64, buf: &mut [u8]) -> usize {
        let len = buf.len();
        process_vm_readv(
            Pid::from_raw(self.pid),
            &mut [IoSliceMut::new(buf)],
            &[RemoteIoVec {
                base: addr as usize,
                len,
            }],
        )
        .unwrap_or(0)
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
}

/// Test hook: write every page that needs FOLL_FORCE as the target's
/// tracer, as on a kernel with `CONFIG_PROC_MEM_FORCE_PTRACE`.
pub const FORCE_PTRACE_HOOK: &str = "BPFCKPT_FORCE_PTRACE_WRITER";

/// Who may write through `/proc/PID/mem` what the mapping forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    /// Anyone with access (`PROC_MEM_ALWAYS_FORCE`).
    Anyone,
    /// Only the target's tracer (`PROC_MEM_FORCE_PTRACE`; or no one,
    /// `PROC_MEM_FORCE_NEVER`, and then writing as the tracer fails too).
    TracerOnly,
    /// The test hook: as the tracer, whatever the kernel allows.
    Hook,
}

impl Force {
    /// Found once: the hook, else a write to a read-only page of our own
    /// through `/proc/self/mem` (no one traces us, so FORCE_PTRACE refuses it).
    pub fn get() -> Force {
        static FORCE: OnceLock<Force> = OnceLock::new();
        *FORCE.get_or_init(|| {
            if std::env::var_os(FORCE_PTRACE_HOOK).is_some_and(|v| v == "1") {
                return Force::Hook;
            }
            match probe_self() {
                Some(true) => Force::Anyone,
                _ => Force::TracerOnly,
            }
        })
    }
}

/// Whether `/proc/self/mem` writes a read-only page of ours (`None`: could not tell).
fn probe_self() -> Option<bool> {
    let page = memmap2::MmapMut::map_anon(PAGE as usize)
        .ok()?
        .make_read_only()
        .ok()?;
    let mem = OpenOptions::new().write(true).open("/proc/self/mem").ok()?;
    match mem.write_all_at(&[1], page.as_ptr() as u64) {
        Ok(()) => Some(true),
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Some(false),
        Err(_) => None,
    }
}

/// Writes (and reads) the held target's memory for one request; what needs FOLL_FORCE
/// where only a tracer gets it, as its tracer: attached at the first page
/// that needs it (after `prepare`, which makes sure the target is
/// group-stopped), detached by [`Access::finish`] or on drop.
pub struct Access<'a> {
    mem: &'a Mem,
    pid: i32,
    force: Force,
    prepare: Option<Box<dyn FnOnce() -> Result<()> + 'a>>,
    seized: Option<Seized>,
    /// Pages written as the tracer.
    pages: u64,
}

impl<'a> Access<'a> {
    pub fn new(mem: &'a Mem, force: Force, prepare: impl FnOnce() -> Result<()> + 'a) -> Self {
        Self {
            mem,
            pid: mem.pid,
            force,
            prepare: Some(Box::new(prepare)),
            seized: None,
            pages: 0,
        }
    }

    /// Attaches (once) for writing (or reading) the page at `addr`.
    fn attach(&mut self, addr: u64, write: bool) -> Result<()> {
        if self.seized.is_some() {
            return Ok(());
        }
        let (verb, page) = match write {
            true => ("write", "a read-only page"),
            false => ("read", "an inaccessible page"),
        };
        let why = |e: String| {
            Error::new(format!(
                "cannot {verb} the target's memory at {addr:#x}: {page} takes the target's \
                 tracer on this kernel (CONFIG_PROC_MEM_FORCE_PTRACE), and {e}",
            ))
        };
        if let Some(p) = self.prepare.take() {
            p().map_err(|e| why(e.to_string()))?;
        }
        let s = Seized::group_stopped(self.pid)
            .map_err(|r| why(format!("cannot trace pid {}: {}", r.pid, r.reason)))?;
        self.seized = Some(s);
        Ok(())
    }

    /// Writes runs of whole pages (`(address, data)`), batching them into
    /// `process_vm_writev` and falling back to `/proc/PID/mem` (which also
    /// writes read-only pages) page by page for what it could not write.
    /// Returns the pages neither could write (guard pages, unmapped since);
    /// other errors end the call.
    pub fn write_pages<'d>(
        &mut self,
        pages: impl Iterator<Item = (u64, &'d [u8])>,
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

    fn flush(&mut self, batch: &mut Vec<(u64, &[u8])>, failed: &mut Vec<u64>) -> Result<()> {
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
        let done = process_vm_writev(Pid::from_raw(self.mem.pid), &local, &remote).unwrap_or(0);
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
                if self.force == Force::Hook {
                    self.attach(at, true)?;
                }
                let mut r = self.mem.mem.write_all_at(page, at);
                // Refused FOLL_FORCE, or a guard page: as the tracer, once more.
                let eio = r
                    .as_ref()
                    .is_err_and(|e| e.raw_os_error() == Some(libc::EIO));
                if eio && self.force == Force::TracerOnly && self.seized.is_none() {
                    self.attach(at, true)?;
                    r = self.mem.mem.write_all_at(page, at);
                }
                match r {
                    Ok(()) if self.seized.is_some() => self.pages += 1,
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

    /// Reads `buf.len()` bytes at `addr` (the target held), as the tracer
    /// if the kernel gives FOLL_FORCE (reading inaccessible pages) only to it.
    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let at = |done: usize| addr + done as u64;
        let done = match self.force {
            Force::Anyone => return self.mem.read(addr, buf),
            _ => self.mem.read_fast(addr, buf),
        };
        if done == buf.len() {
            return Ok(());
        }
        if self.force == Force::Hook {
            self.attach(at(done), false)?;
        }
        let mut r = self.mem.mem.read_exact_at(&mut buf[done..], at(done));
        let eio = r
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EIO));
        if eio && self.seized.is_none() {
            self.attach(at(done), false)?;
            r = self.mem.mem.read_exact_at(&mut buf[done..], at(done));
        }
        if r.is_ok() && self.seized.is_some() {
            self.pages += (buf.len() - done).div_ceil(PAGE as usize) as u64;
        }
        r.map_err(|e| Error::from(e).context(format!("read target memory at {:#x}", at(done))))
    }

    /// Reads several ranges `(addr, buf)` with one system call, each as
    /// `read` does if that call stops short.
    pub fn read_many(&mut self, mut parts: Vec<(u64, &mut [u8])>) -> Result<()> {
        for batch in parts.chunks_mut(IOV_MAX) {
            let remote: Vec<RemoteIoVec> = batch
                .iter()
                .map(|(a, b)| RemoteIoVec {
                    base: *a as usize,
                    len: b.len(),
                })
                .collect();
            let mut local: Vec<IoSliceMut> =
                batch.iter_mut().map(|(_, b)| IoSliceMut::new(b)).collect();
            let mut done =
                process_vm_readv(Pid::from_raw(self.mem.pid), &mut local, &remote).unwrap_or(0);
            drop(local);
            for (addr, buf) in batch.iter_mut() {
                if done >= buf.len() {
                    done -= buf.len();
                    continue;
                }
                let from = done;
                done = 0;
                self.read(*addr + from as u64, &mut buf[from..])?;
            }
        }
        Ok(())
    }

    /// Detaches, if attached: the target is group-stopped again. Returns
    /// the pages written (or read) as the tracer.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(s) = self.seized.take() {
            s.detach()?;
        }
        Ok(self.pages)
    }
}

/// A page of zeros, the source for zeroing pages from user space.
pub static ZERO_PAGE: [u8; PAGE as usize] = [0; PAGE as usize];
