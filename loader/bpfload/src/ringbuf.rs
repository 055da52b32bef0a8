//! User-space consumer of a BPF_MAP_TYPE_RINGBUF map over mmap.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (we write it),
//! page 1 the producer position (the kernel writes it), then the data area, mapped twice
//! in a row so a record that wraps around the end is contiguous. Each record starts with
//! an 8-byte header {u32 len, u32 pg_off}; `len` carries BUSY (not committed yet) and
//! DISCARD (skip it) bits; records are padded to 8 bytes.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::maps::Map;
use crate::sys::{BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT, BPF_RINGBUF_HDR_SZ, RingMmap};
use crate::{Error, Result};

/// A ring buffer consumer. Owns a duplicate of the map descriptor, so it can outlive the
/// [`Map`] it was made from.
#[derive(Debug)]
pub struct RingBuf {
    mm: RingMmap,
    epoll: Epoll,
    fd: OwnedFd,
}

impl RingBuf {
    /// Consumer for a ring buffer map.
    pub fn new(map: &Map) -> Result<Self> {
        Self::from_fd(map.as_fd())
    }

    /// Consumer for a ring buffer map given by descriptor.
    pub fn from_fd(fd: BorrowedFd<'_>) -> Result<Self> {
        let fd = fd
            .try_clone_to_owned()
            .map_err(|e| Error::from(e).context("dup of ring buffer fd"))?;
        let mm = RingMmap::new(fd.as_fd())?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| Error::sys("epoll_create1", e as i32))?;
        epoll
            .add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .map_err(|e| Error::sys("epoll_ctl(ADD, ring buffer)", e as i32))?;
        Ok(Self { mm, epoll, fd })
    }

    /// Calls `f` on every committed record available now, in order; returns how many.
    /// Never blocks.
    pub fn consume(&mut self, mut f: impl FnMut(&[u8])) -> Result<usize> {
        let mut n = 0;
        let mut cons = self.mm.consumer_pos();
        loop {
            let prod = self.mm.producer_pos();
            if cons >= prod {
                return Ok(n);
            }
            let hdr = self.mm.header(cons);
            if hdr & BPF_RINGBUF_BUSY_BIT != 0 {
                // Reserved but not committed yet: stop here; its commit wakes us up.
                return Ok(n);
            }
            let len = (hdr & !(BPF_RINGBUF_BUSY_BIT | BPF_RINGBUF_DISCARD_BIT)) as usize;
            if hdr & BPF_RINGBUF_DISCARD_BIT == 0 {
                let Some(rec) = self.mm.record(cons, len) else {
                    crate::bail!(
                        "ring buffer record of {len} bytes at position {cons} exceeds the {}-byte buffer",
                        self.mm.size()
                    );
                };
                f(rec);
                n += 1;
            }
            cons += ((len + BPF_RINGBUF_HDR_SZ).div_ceil(8) * 8) as u64;
            // Hand the space back record by record, so a slow callback does not stall
            // producers longer than needed.
            self.mm.set_consumer_pos(cons);
        }
    }

    /// Drains available records; if there were none, waits (epoll) until the kernel
    /// signals data or `timeout` passes (`None`: forever) and drains again. Returns the
    /// number of records passed to `f`. An interrupting signal returns early with
    /// whatever was available.
    pub fn poll(&mut self, timeout: Option<Duration>, mut f: impl FnMut(&[u8])) -> Result<usize> {
        let n = self.consume(&mut f)?;
        if n > 0 {
            return Ok(n);
        }
        let t = match timeout {
            None => EpollTimeout::NONE,
            // Round up so a tiny timeout still sleeps; clamp huge ones.
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128);
                EpollTimeout::try_from(ms as i32).unwrap_or(EpollTimeout::MAX)
            }
        };
        let mut events = [EpollEvent::empty()];
        match self.epoll.wait(&mut events, t) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("epoll_wait on ring buffer", e as i32)),
        }
        self.consume(f)
    }

    /// Bytes committed or reserved but not consumed yet.
    pub fn pending(&self) -> u64 {
        self.mm
            .producer_pos()
            .saturating_sub(self.mm.consumer_pos())
    }
}

impl AsFd for RingBuf {
    /// The map descriptor: poll it for EPOLLIN to integrate with another event loop.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
