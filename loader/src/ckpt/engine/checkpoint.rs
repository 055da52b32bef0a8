//! Completing a checkpoint: what BPF saved, what user space adds while the
//! target is held, and the zero ranges (pages absent at the checkpoint).

use super::Engine;
use super::serve::{Target, cont, wait_stopped};
use crate::ckpt::abi;
use crate::ckpt::events::{Checkpoint, Stale};
use crate::ckpt::markers;
use crate::ckpt::memio::Mem;
use crate::ckpt::procfs::{Kind, PAGE, Pagemap, Region};
use crate::ckpt::report::J;
use crate::ckpt::storage::{Storage, human};
use crate::{Error, Result};
use std::time::{Duration, Instant};

/// The image of the last checkpoint: slots `0..slots` of the store, plus the
/// ranges that were absent (zero) then.
pub(super) struct Image {
    pub slots: u64,
    pub zero: Vec<(u64, u64)>,
    /// Zero ranges the BPF restore cannot cover (table too small).
    pub zero_in_user: bool,
}

/// Where a checkpoint's pages came from.
struct Saved {
    bpf: u64,
    user: u64,
    zero: Vec<(u64, u64)>,
}

impl Engine {
    pub(super) fn on_checkpoint(&mut self, t: &mut Target, c: &Checkpoint) -> Result<()> {
        // The probe has overwritten the store: the old image is gone.
        t.image = None;
        t.stats.checkpoints += 1;
        t.stats.ckpt_kernel_ns += c.ns;
        t.stats.ckpt_kernel_ns_max = t.stats.ckpt_kernel_ns_max.max(c.ns);
        let t0 = Instant::now();
        let result = self.checkpoint(t, c);
        if c.held {
            t.stats.holds += 1;
            cont(t.pid);
        }
        t.stats.user_ns += t0.elapsed().as_nanos() as u64;
        result
    }

    fn checkpoint(&mut self, t: &mut Target, c: &Checkpoint) -> Result<()> {
        let saved = self.gather(t, c)?;
        t.stats.pages_skipped_untouched += c.skipped;
        t.stats.pages_saved_bpf += saved.bpf;
        t.stats.pages_saved_user += saved.user;
        self.publish_image(t, &saved)?;
        self.report_checkpoint(t, c, &saved);
        self.triggers.create(markers::CHECKPOINT_DONE)
    }

    /// What the image holds: BPF's copy, completed from user space when the
    /// probe held the target.
    fn gather(&mut self, t: &mut Target, c: &Checkpoint) -> Result<Saved> {
        if !c.held {
            // Every page BPF did not save was never written: zero.
            let store = t
                .store
                .as_ref()
                .ok_or_else(|| Error::new("no page store"))?;
            let zero = gaps(&t.regions, store, c.saved);
            return Ok(Saved {
                bpf: c.saved,
                user: 0,
                zero,
            });
        }
        wait_stopped(t.pid)?;
        if c.stale == Stale::Layout || c.table_seq != t.applied_seq {
            // The table was stale or the store too small: redo it all from
            // user space, at the same instant (the target is held).
            self.apply_layout(t)?;
            let (user, zero) = self.complete(t, 0)?;
            Ok(Saved { bpf: 0, user, zero })
        } else {
            // Some pages unreadable, or the store full: keep what BPF saved
            // and add the rest.
            let (user, zero) = self.complete(t, c.saved)?;
            Ok(Saved {
                bpf: c.saved,
                user,
                zero,
            })
        }
    }

    /// Makes the image the one the next restore writes back.
    fn publish_image(&mut self, t: &mut Target, s: &Saved) -> Result<()> {
        let slots = s.bpf + s.user;
        let zero_pages: u64 = s.zero.iter().map(|z| z.1).sum();
        let zero_in_user = s.zero.len() > abi::MAX_REGIONS as usize;
        if !zero_in_user {
            self.probes.write_zero_ranges(&s.zero)?;
        }
        self.cfg.image_slots = slots;
        self.cfg.nzero = if zero_in_user { 0 } else { s.zero.len() as u32 };
        self.cfg.zero_pages = if zero_in_user { 0 } else { zero_pages };
        self.cfg.flags = self.flags(
            if zero_in_user { abi::F_HOLD_RESTORE } else { 0 }
                | if self.swap { abi::F_VERIFY_ZERO } else { 0 },
        );
        self.push_config()?;
        t.image = Some(Image {
            slots,
            zero: s.zero.clone(),
            zero_in_user,
        });
        Ok(())
    }

    fn report_checkpoint(&self, t: &Target, c: &Checkpoint, s: &Saved) {
        let zero_pages: u64 = s.zero.iter().map(|z| z.1).sum();
        let stale = match c.stale {
            Stale::No => 0,
            Stale::Layout => abi::STALE_LAYOUT,
            Stale::Overflow => abi::STALE_OVERFLOW,
        };
        self.report().detail(
            "checkpoint",
            &format!(
                "checkpoint of pid {}: {} saved ({} pages by BPF in {:?}, {} from user space), {zero_pages} pages absent",
                t.pid,
                human((s.bpf + s.user) * PAGE),
                s.bpf,
                Duration::from_nanos(c.ns),
                s.user,
            ),
            &[
                ("pid", J::N(t.pid as u64)),
                ("pages_bpf", J::N(s.bpf)),
                ("pages_user", J::N(s.user)),
                ("pages_absent", J::N(zero_pages)),
                ("kernel_ns", J::N(c.ns)),
                ("held", J::B(c.held)),
                ("stale", J::N(stale)),
                ("table_seq", J::N(c.table_seq)),
                ("applied_seq", J::N(t.applied_seq)),
            ],
        );
    }

    /// Completes an image of which BPF saved the first `saved` slots (in
    /// region order): every other page of the region table is read from user
    /// space if it may hold data, or recorded as a zero range. Returns the
    /// pages added and the zero ranges.
    fn complete(&mut self, t: &mut Target, saved: u64) -> Result<(u64, Vec<(u64, u64)>)> {
        let Plan { read: todo, zero } = self.plan_completion(t, saved)?;
        let need = saved + todo.len() as u64;
        if need > t.store.as_ref().map_or(0, Storage::capacity) {
            let want = Storage::with_headroom(need);
            let new = match &t.store {
                Some(old) if saved > 0 => old.grown(want, saved, self.opts.max_memory)?,
                _ => Storage::create(want, self.opts.max_memory)?,
            };
            self.install_store(t, new)?;
            self.push_config()?;
        }
        let store = t
            .store
            .as_mut()
            .ok_or_else(|| Error::new("no page store"))?;
        // Opened per request: /proc/PID/mem stays bound to the mm it was
        // opened on, and the target may have exec'd since.
        let mem = Mem::open(t.pid)?;
        // Read runs of consecutive pages straight into consecutive slots.
        let mut i = 0;
        while i < todo.len() {
            let mut n = 1;
            while i + n < todo.len() && todo[i + n] == todo[i] + n as u64 * PAGE {
                n += 1;
            }
            let slot = saved + i as u64;
            mem.read(todo[i], store.pages_mut(slot, n as u64)?)?;
            for k in 0..n {
                store.set_addr(slot + k as u64, todo[i + k])?;
            }
            i += n;
        }
        // Pages saved here hold data whether or not a fault announced it:
        // make sure the next checkpoint reads them too.
        self.mark_written(t.pid, todo.iter().copied())?;
        Ok((todo.len() as u64, zero))
    }

    /// The pages of the region table not among the first `saved` slots:
    /// those that may hold data (to read) and the rest as zero ranges.
    fn plan_completion(&self, t: &Target, saved: u64) -> Result<Plan> {
        let pm = Pagemap::open(t.pid)?;
        let store = t.store.as_ref();
        let mut cursor = 0u64;
        let mut next_saved = |addr: u64| -> bool {
            // Saved addresses ascend with the region table.
            while cursor < saved {
                let a = store.map_or(u64::MAX, |s| s.addr(cursor));
                if a >= addr {
                    if a == addr {
                        cursor += 1;
                        return true;
                    }
                    return false;
                }
                cursor += 1;
            }
            false
        };
        let written = self.written(t.pid)?;
        let mut todo: Vec<u64> = Vec::new();
        let mut zero: Vec<(u64, u64)> = Vec::new();
        let mut flags = Vec::new();
        for r in &t.regions {
            flags.clear();
            pm.read(r.start, r.pages(), &mut flags)?;
            for (i, f) in flags.iter().enumerate() {
                let addr = r.start + i as u64 * PAGE;
                if next_saved(addr) {
                    continue;
                }
                let maybe_data = r.kind != Kind::Anon
                    || written.anon_page_may_hold_data(addr, *f, self.zero_pfn);
                if maybe_data {
                    todo.push(addr);
                } else {
                    push_range(&mut zero, addr, addr + PAGE);
                }
            }
        }
        Ok(Plan { read: todo, zero })
    }
}

/// How user space completes an image.
struct Plan {
    /// Pages to read, ascending.
    read: Vec<u64>,
    /// Pages absent at the checkpoint, as `(start, pages)`.
    zero: Vec<(u64, u64)>,
}

/// Appends `[start, end)` to `ranges` (`(start, pages)`), merging with the
/// last range when they touch.
fn push_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    if end <= start {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.0 + last.1 * PAGE == start => last.1 += (end - start) / PAGE,
        _ => ranges.push((start, (end - start) / PAGE)),
    }
}

/// The pages of `regions` not among the first `saved` slots of `store`
/// (whose addresses ascend in region order), as (start, pages) ranges.
fn gaps(regions: &[Region], store: &Storage, saved: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut slot = 0;
    for r in regions {
        let mut at = r.start;
        while slot < saved {
            let a = store.addr(slot) & !abi::ADDR_FAILED;
            if a >= r.end {
                break;
            }
            if a >= at {
                push_range(&mut out, at, a);
                at = a + PAGE;
            }
            slot += 1;
        }
        push_range(&mut out, at, r.end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_touch() {
        let mut r = Vec::new();
        push_range(&mut r, 0, PAGE);
        push_range(&mut r, PAGE, 3 * PAGE);
        push_range(&mut r, 5 * PAGE, 6 * PAGE);
        push_range(&mut r, 6 * PAGE, 6 * PAGE);
        assert_eq!(r, vec![(0, 3), (5 * PAGE, 1)]);
    }
}
