//! Restores from user space: the pages BPF could not write (or all of
//! them, without the write helper) and the zeroing of pages absent at the
//! checkpoint, while the target is held at its trigger.

use super::Engine;
use super::checkpoint::Image;
use super::serve::{Target, cont, wait_stopped};
use crate::ckpt::abi;
use crate::ckpt::events::{Restore, ZeroTodo};
use crate::ckpt::markers;
use crate::ckpt::memio::{Mem, ZERO_PAGE};
use crate::ckpt::probes::StateField;
use crate::ckpt::procfs::{self, Mapping, PAGE, PM_PRESENT, PM_SWAPPED, Pagemap};
use crate::ckpt::report::J;
use crate::{Error, Result};
use std::time::{Duration, Instant};

/// What user space did for one restore.
#[derive(Default)]
struct UserWrites {
    written: u64,
    zeroed: u64,
    /// Saved pages whose address is no longer writable.
    skipped: u64,
}

impl Engine {
    pub(super) fn on_restore(&mut self, t: &mut Target, r: &Restore) -> Result<()> {
        let t0 = Instant::now();
        let result = self.restore(t, r);
        if r.held {
            t.stats.holds += 1;
            cont(t.pid);
        }
        t.stats.user_ns += t0.elapsed().as_nanos() as u64;
        result
    }

    fn restore(&mut self, t: &mut Target, r: &Restore) -> Result<()> {
        if r.held {
            wait_stopped(t.pid)?;
        }
        let Some(image) = t.image.take() else {
            self.report().warn(&format!(
                "pid {} asked for a restore before any checkpoint; nothing restored",
                t.pid
            ));
            return self.triggers.create(markers::RESTORE_DONE);
        };
        t.stats.restore_kernel_ns += r.ns;
        t.stats.restore_kernel_ns_max = t.stats.restore_kernel_ns_max.max(r.ns);
        let done = if r.held {
            self.write_from_user(t, &image, r)
        } else {
            Ok(UserWrites::default())
        };
        t.image = Some(image);
        let done = done?;
        let s = &mut t.stats;
        s.cycles += 1;
        s.pages_restored_bpf += r.written;
        s.pages_zeroed_bpf += r.zeroed;
        s.pages_restored_user += done.written;
        s.pages_zeroed_user += done.zeroed;
        s.pages_skipped_unmapped += done.skipped;
        if done.skipped > 0 {
            self.opts.report.warn(&format!(
                "pid {}: {} saved pages are no longer mapped; not restored",
                t.pid, done.skipped
            ));
        }
        self.report_restore(t, r, &done);
        self.triggers.create(markers::RESTORE_DONE)
    }

    /// The held target's part of the restore that BPF did not do.
    fn write_from_user(
        &mut self,
        t: &mut Target,
        image: &Image,
        r: &Restore,
    ) -> Result<UserWrites> {
        // The mappings as last read, unless they changed since.
        let fresh;
        let maps = if self.probes.state(StateField::LayoutSeq)? == t.applied_seq {
            &t.maps
        } else {
            fresh = procfs::read_maps(t.pid)?;
            &fresh
        };
        let stacks = procfs::stack_pointers(t.pid);
        // Opened per request: /proc/PID/mem stays bound to the mm it was
        // opened on, and the target may have exec'd since.
        let mem = Mem::open(t.pid)?;
        let store = t
            .store
            .as_mut()
            .ok_or_else(|| Error::new("no page store"))?;
        let by_bpf = self.bpf_write;
        // With the BPF path only the pages it marked failed remain.
        let mut slots = Vec::new();
        let mut skipped = 0;
        for s in 0..image.slots {
            let a = store.addr(s);
            if by_bpf && a & abi::ADDR_FAILED == 0 {
                continue;
            }
            let a = a & !abi::ADDR_FAILED;
            if writable(maps, &stacks, a) {
                slots.push((s, a));
            } else {
                skipped += 1;
            }
        }
        // Consecutive slots holding consecutive pages go as one iovec:
        // per-page iovecs cost the kernel a page pin each.
        mem.write_pages(runs(&slots).map(|(s, a, n)| (a, store.pages(s, n))))?;
        for &(s, a) in &slots {
            store.set_addr(s, a)?;
        }
        // Writes from user space fault nothing: record them, or the next
        // checkpoint would take these pages for never written.
        self.mark_written(t.pid, slots.iter().map(|&(_, a)| a))?;
        let zeroed = match r.zero_todo {
            ZeroTodo::Listed(n) if !by_bpf => {
                // The probe listed the zero-range pages written since.
                let pages: Vec<u64> = self
                    .probes
                    .zero_todo(n)
                    .filter(|&a| writable(maps, &stacks, a))
                    .collect();
                mem.write_pages(pages.iter().map(|&a| (a, &ZERO_PAGE[..])))?;
                pages.len() as u64
            }
            _ if !by_bpf || image.zero_in_user || r.zero_failed != 0 => {
                zero_dirty(t.pid, &mem, &image.zero, maps, &stacks)?
            }
            _ => 0,
        };
        Ok(UserWrites {
            written: slots.len() as u64,
            zeroed,
            skipped,
        })
    }

    fn report_restore(&self, t: &Target, r: &Restore, d: &UserWrites) {
        self.report().detail(
            "restore",
            &format!(
                "restore of pid {}: {} pages by BPF ({} zeroed) in {:?}, {} from user space ({} zeroed)",
                t.pid,
                r.written,
                r.zeroed,
                Duration::from_nanos(r.ns),
                d.written,
                d.zeroed,
            ),
            &[
                ("pid", J::N(t.pid as u64)),
                ("pages_bpf", J::N(r.written)),
                ("zeroed_bpf", J::N(r.zeroed)),
                ("pages_user", J::N(d.written)),
                ("zeroed_user", J::N(d.zeroed)),
                ("skipped_unmapped", J::N(d.skipped)),
                ("kernel_ns", J::N(r.ns)),
                ("held", J::B(r.held)),
            ],
        );
    }
}

/// Runs of `(slot, address)` pairs where both advance by one page, as
/// `(first slot, first address, pages)`.
fn runs(slots: &[(u64, u64)]) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let &(s, a) = slots.get(i)?;
        let mut n = 1;
        while slots
            .get(i + n as usize)
            .is_some_and(|&(s2, a2)| s2 == s + n && a2 == a + n * PAGE)
        {
            n += 1;
        }
        i += n as usize;
        Some((s, a, n))
    })
}

/// Zeroes, from user space, pages of the zero ranges that are present (or
/// swapped) now; untouched pages are left alone (they read as zero).
fn zero_dirty(
    pid: i32,
    mem: &Mem,
    zero: &[(u64, u64)],
    maps: &[Mapping],
    stacks: &[u64],
) -> Result<u64> {
    let pm = Pagemap::open(pid)?;
    let mut flags = Vec::new();
    let mut todo = Vec::new();
    for &(start, n) in zero {
        flags.clear();
        if pm.read(start, n, &mut flags).is_err() {
            continue; // unmapped since: nothing to zero
        }
        for (i, f) in flags.iter().enumerate() {
            let a = start + i as u64 * PAGE;
            if f & (PM_PRESENT | PM_SWAPPED) != 0 && writable(maps, stacks, a) {
                todo.push(a);
            }
        }
    }
    mem.write_pages(todo.iter().map(|&a| (a, &ZERO_PAGE[..])))?;
    Ok(todo.len() as u64)
}

/// Where a restore may write now: inside a current mapping that is private
/// or shared-anonymous (never a file-shared one, never outside the target).
/// `live_stacks`: stack pointers of the (held) target's threads; a mapping
/// holding one is a stack in use and is never written.
fn writable(maps: &[Mapping], live_stacks: &[u64], addr: u64) -> bool {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).is_some_and(|m| {
        m.contains(addr) && m.writable_target() && !live_stacks.iter().any(|&sp| m.contains(sp))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_consecutive_slots_and_pages_only() {
        let p = PAGE;
        let slots = [
            (0, 10 * p),
            (1, 11 * p),
            (2, 12 * p),
            (4, 13 * p),
            (5, 20 * p),
            (6, 21 * p),
        ];
        let got: Vec<_> = runs(&slots).collect();
        assert_eq!(got, vec![(0, 10 * p, 3), (4, 13 * p, 1), (5, 20 * p, 2)]);
        assert_eq!(runs(&[]).count(), 0);
    }
}
