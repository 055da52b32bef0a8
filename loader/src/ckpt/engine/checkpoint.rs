//! Completing a checkpoint: what BPF saved, what user space adds while the
//! target is held, and the blank ranges (pages that held nothing of their
//! own at the checkpoint: absent anonymous pages, untouched file pages).

use super::Engine;
use super::hold::open_to_stop;
use super::target::{Blank, Image, Target};
use crate::ckpt::abi;
use crate::ckpt::events::{Checkpoint, Stale};
use crate::ckpt::markers;
use crate::ckpt::memio::{Access, Mem};
use crate::ckpt::procfs::{Kind, P_GUARD, P_PRESENT, PAGE, Region, Residency, Run};
use crate::ckpt::report::J;
use crate::ckpt::storage::{Storage, human};
use crate::ckpt::touched::Written;
use crate::{Error, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Where a checkpoint's pages came from.
struct Saved {
    bpf: u64,
    user: u64,
    blank: Vec<Blank>,
    regions: Rc<Vec<Region>>,
    /// Layout sequence number of the table the image follows.
    seq: u64,
    /// Pages read from user space that held data yet were never marked
    /// written (a write the tracking missed; should stay 0).
    unmarked: u64,
    /// Pages read as the target's tracer (inaccessible pages on kernels
    /// that give FOLL_FORCE to the tracer only).
    ptrace: u64,
}

impl Engine {
    pub(super) fn on_checkpoint(&mut self, t: &mut Target, c: &Checkpoint) -> Result<()> {
        t.stats.checkpoints += 1;
        t.stats.ckpt_kernel_ns += c.ns;
        t.stats.ckpt_kernel_ns_max = t.stats.ckpt_kernel_ns_max.max(c.ns);
        let t0 = Instant::now();
        let mut held = c.held;
        let result = match c.by_open {
            true => self.hold_in_open(t, c.tid),
            false => Ok(()),
        }
        .and_then(|()| self.checkpoint(t, c, &mut held));
        let released = if held { self.release(t) } else { Ok(()) };
        if held {
            t.stats.holds += 1;
        }
        t.stats.user_ns += t0.elapsed().as_nanos() as u64;
        result.and(released)
    }

    fn checkpoint(&mut self, t: &mut Target, c: &Checkpoint, held: &mut bool) -> Result<()> {
        if c.incremental {
            self.wait_held(t)?;
            if c.stale == Stale::No && self.armed(t) {
                let m = self.checkpoint_dirty(t, c)?;
                t.stats.pages_saved_bpf += m.bpf;
                t.stats.pages_saved_user += m.user;
                self.report_incremental(t, c, &m);
                return self.triggers.create(markers::CHECKPOINT_DONE);
            }
            // The copy could not finish (too few free slots, the config
            // rewritten), or the image is no longer tracked: take the whole
            // image again, as if walked.
        }
        // The probe has overwritten the store: the old image is gone.
        t.image = None;
        // Counted before user space looks: writes from elsewhere after this
        // may be missed by the scan, and keep the next requests scanning.
        let pre = self.window()?;
        let saved = if c.incremental {
            self.redo(t)?
        } else {
            self.gather(t, c, held)?
        };
        if *held && self.cfg.flags & abi::F_INCREMENTAL == 0 {
            // Every page holding data was read (tracking acknowledges its
            // own scans).
            self.ack_scanned(pre)?;
        }
        t.stats.pages_skipped_untouched += c.skipped;
        t.stats.pages_saved_bpf += saved.bpf;
        t.stats.pages_saved_user += saved.user;
        t.stats.pages_unmarked_data += saved.unmarked;
        self.publish_image(t, &saved)?;
        if *held && self.cfg.flags & abi::F_INCREMENTAL != 0 {
            self.armed_after_full(t, c)?;
        }
        self.report_checkpoint(t, c, &saved, *held);
        self.triggers.create(markers::CHECKPOINT_DONE)
    }

    fn report_incremental(&self, t: &Target, c: &Checkpoint, m: &super::incremental::Merged) {
        self.report().detail(
            "checkpoint",
            &format!(
                "checkpoint of pid {}: {} dirty pages ({} by BPF in {:?}, {} from user space), {} now blank",
                t.pid,
                m.bpf + m.user,
                m.bpf,
                Duration::from_nanos(c.ns),
                m.user,
                m.blanked
            ),
            &[
                ("pid", J::N(t.pid as u64)),
                ("incremental", J::B(true)),
                ("pages_bpf", J::N(m.bpf)),
                ("pages_user", J::N(m.user)),
                ("pages_blanked", J::N(m.blanked)),
                ("kernel_ns", J::N(c.ns)),
                ("held", J::B(true)),
            ],
        );
    }

    /// What the image holds: BPF's copy, completed from user space when the
    /// probe held the target.
    fn gather(&mut self, t: &mut Target, c: &Checkpoint, held: &mut bool) -> Result<Saved> {
        if !c.held {
            if let (Stale::No, Some(regions)) = (c.stale, t.table_at(c.version)) {
                let regions: Rc<Vec<Region>> = regions;
                // Every page BPF did not save was never written.
                let store = t
                    .store
                    .as_ref()
                    .ok_or_else(|| Error::new("no page store"))?;
                let blank = gaps(&regions, store, c.saved);
                return Ok(Saved {
                    bpf: c.saved,
                    user: 0,
                    blank,
                    regions,
                    seq: c.table_seq,
                    unmarked: 0,
                    ptrace: 0,
                });
            }
            // The table it walked is no longer known: the target still
            // waits for its marker, so hold it and take the image again.
            let _ = kill(Pid::from_raw(t.pid), Signal::SIGSTOP);
            *held = true;
            self.wait_held(t)?;
            return self.redo(t);
        }
        self.wait_held(t)?;
        if c.stale == Stale::Layout || c.version != self.probes.version() {
            // The table was stale, torn, or replaced since: redo it all
            // from user space, at the same instant (the target is held).
            return self.redo(t);
        }
        // Some pages unreadable, or the copy stopped early: keep what BPF
        // saved and add the rest.
        let mut s = self.complete(t, c.saved)?;
        s.bpf = c.saved;
        Ok(s)
    }

    fn redo(&mut self, t: &mut Target) -> Result<Saved> {
        self.apply_layout(t)?;
        self.complete(t, 0)
    }

    /// Makes the image the one the next restore writes back.
    fn publish_image(&mut self, t: &mut Target, s: &Saved) -> Result<()> {
        let slots = s.bpf + s.user;
        let rows: Vec<(u64, u64, u64)> = s
            .blank
            .iter()
            .map(|b| (b.start, b.pages, if b.file { abi::R_FILE } else { 0 }))
            .collect();
        self.cfg.image_slots = slots;
        self.cfg.nzero = u32::try_from(rows.len())
            .map_err(|_| Error::new(format!("{} blank ranges", rows.len())))?;
        self.cfg.zero_pages = s.blank.iter().map(|b| b.pages).sum();
        self.cfg.image_seq = s.seq;
        let version = self
            .probes
            .publish(&mut self.cfg, |tb| tb.zero_ranges(&rows))?;
        t.published(version);
        t.image = Some(Image {
            slots,
            blank: s.blank.clone(),
            regions: s.regions.clone(),
            index: None,
        });
        Ok(())
    }

    fn report_checkpoint(&self, t: &Target, c: &Checkpoint, s: &Saved, held: bool) {
        let blank_pages: u64 = s.blank.iter().map(|b| b.pages).sum();
        let stale = match c.stale {
            Stale::No => 0,
            Stale::Layout => abi::STALE_LAYOUT,
            Stale::Overflow => abi::STALE_OVERFLOW,
        };
        self.report().detail(
            "checkpoint",
            &format!(
                "checkpoint of pid {}: {} saved ({} pages by BPF in {:?}, {} from user space), {blank_pages} pages absent or untouched",
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
                ("ptrace_reads", J::N(s.ptrace)),
                ("pages_absent", J::N(blank_pages)),
                ("pages_unmarked_data", J::N(s.unmarked)),
                ("kernel_ns", J::N(c.ns)),
                ("held", J::B(held)),
                ("stale", J::N(stale)),
                ("table_seq", J::N(c.table_seq)),
                ("applied_seq", J::N(t.applied_seq)),
            ],
        );
    }

    /// Completes an image of which BPF saved the first `saved` slots (in
    /// region order) with the current region table: every other page is
    /// read from user space if it may hold data, or recorded as blank.
    fn complete(&mut self, t: &mut Target, saved: u64) -> Result<Saved> {
        let written = self.written(t.pid)?;
        let plan = self.plan_completion(t, saved, &written)?;
        self.ensure_capacity(t, saved + plan.read.len() as u64, saved)?;
        let store = t
            .store
            .as_mut()
            .ok_or_else(|| Error::new("no page store"))?;
        // Opened per request: /proc/PID/mem stays bound to the mm it was
        // opened on, and the target may have exec'd since.
        let mem = Mem::open(t.pid)?;
        // Inaccessible pages are read as the tracer where only it may.
        let (hold, pid, stat) = (self.open_hold.as_ref(), t.pid, t.files.stat.as_ref());
        let (open_held, opens) = (&mut t.open_held, &mut t.opens);
        let mut mem = Access::new(&mem, self.force, move || {
            open_to_stop(hold, open_held, opens, pid, stat)
        });
        let todo = &plan.read;
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
        let ptrace = mem.finish()?;
        let unmarked = plan
            .unmarked
            .iter()
            .filter(|&&k| store.pages(saved + k as u64, 1).iter().any(|&b| b != 0))
            .count() as u64;
        // Pages saved here hold data whether or not a fault announced it:
        // make sure the next checkpoint reads them too.
        self.mark_written(t.pid, todo.iter().copied())?;
        Ok(Saved {
            bpf: 0,
            user: todo.len() as u64,
            blank: plan.blank,
            regions: t.regions.clone(),
            seq: t.applied_seq,
            unmarked,
            ptrace,
        })
    }

    /// Grows the store to hold `need` pages if it holds fewer, keeping its
    /// first `keep` slots (the target is held: nothing copies meanwhile).
    pub(super) fn ensure_capacity(&mut self, t: &mut Target, need: u64, keep: u64) -> Result<()> {
        if need <= t.store.as_ref().map_or(0, Storage::capacity) {
            return Ok(());
        }
        let want = Storage::with_headroom(need);
        let new = match &t.store {
            Some(old) if keep > 0 => old.grown(want, keep, self.opts.max_memory)?,
            _ => Storage::create(want, self.opts.max_memory)?,
        };
        self.cfg.capacity = new.capacity();
        let version = self
            .probes
            .publish(&mut self.cfg, |tb| tb.install_store(&new))?;
        t.published(version);
        t.stats.peak_store_bytes = t.stats.peak_store_bytes.max(new.kernel_bytes());
        t.store = Some(new);
        Ok(())
    }

    /// The pages of the region table not among the first `saved` slots:
    /// those that may hold data (to read) and the rest as blank ranges.
    /// Guard pages are neither.
    fn plan_completion(&self, t: &Target, saved: u64, written: &Written) -> Result<Plan> {
        let res = Residency::open(t.pid, self.zero_pfn)?;
        let store = t.store.as_ref();
        let mut saved_addrs = (0..saved)
            .map(|s| store.map_or(u64::MAX, |st| st.addr(s)))
            .peekable();
        let mut plan = Plan::default();
        for r in t.regions.iter() {
            let runs = if saved_whole(r) {
                // Every page holds data, mapped here yet or not (shared
                // memory, a writable file mapping), except guard pages.
                whole_but_guards(r, &res.runs(r.start, r.end)?)
            } else {
                res.runs(r.start, r.end)?
            };
            let mut at = r.start;
            for run in runs.iter().chain(std::iter::once(&Run {
                start: r.end,
                end: r.end,
                flags: 0,
            })) {
                // Absent pages before the run: blank, unless BPF saved them.
                while at < run.start {
                    let next = saved_in(&mut saved_addrs, at, run.start);
                    plan.blank(at, next.unwrap_or(run.start), r.kind);
                    match next {
                        Some(a) => at = a + PAGE,
                        None => at = run.start,
                    }
                }
                for addr in run.pages() {
                    if saved_in(&mut saved_addrs, addr, addr + PAGE).is_some()
                        || run.flags & P_GUARD != 0
                    {
                        continue;
                    }
                    if run.may_hold_data(r.kind) {
                        if r.tracked && !written.marked(addr) {
                            plan.unmarked.push(plan.read.len());
                        }
                        plan.read.push(addr);
                    } else {
                        plan.blank(addr, addr + PAGE, r.kind);
                    }
                }
                at = at.max(run.end);
            }
        }
        Ok(plan)
    }
}

/// Whether every page of `r` is saved, whatever residency says: shared
/// memory (a page may exist without being mapped here) and writable file
/// mappings (a page nobody wrote is the file's, which others may write).
fn saved_whole(r: &Region) -> bool {
    r.kind == Kind::SharedAnon || (r.kind == Kind::File && !r.tracked)
}

/// `r` as runs of pages that hold data, around the guard pages of `runs`.
fn whole_but_guards(r: &Region, runs: &[Run]) -> Vec<Run> {
    let mut out = Vec::new();
    let mut at = r.start;
    for g in runs.iter().filter(|g| g.flags & P_GUARD != 0) {
        if g.start > at {
            out.push(Run {
                start: at,
                end: g.start,
                flags: P_PRESENT,
            });
        }
        out.push(*g);
        at = g.end;
    }
    if at < r.end {
        out.push(Run {
            start: at,
            end: r.end,
            flags: P_PRESENT,
        });
    }
    out
}

/// The next saved address in `[from, to)`, consumed; saved addresses below
/// `from` are skipped (they ascend with the region table).
fn saved_in(
    saved: &mut std::iter::Peekable<impl Iterator<Item = u64>>,
    from: u64,
    to: u64,
) -> Option<u64> {
    while let Some(&a) = saved.peek() {
        let a = a & !abi::ADDR_FAILED;
        if a < from {
            saved.next();
        } else if a < to {
            saved.next();
            return Some(a);
        } else {
            return None;
        }
    }
    None
}

/// How user space completes an image.
#[derive(Default)]
struct Plan {
    /// Pages to read, ascending.
    read: Vec<u64>,
    /// Indices into `read` of pages in tracked regions never marked written.
    unmarked: Vec<usize>,
    blank: Vec<Blank>,
}

impl Plan {
    fn blank(&mut self, start: u64, end: u64, kind: Kind) {
        push_blank(&mut self.blank, start, end, kind == Kind::File);
    }
}

/// Appends `[start, end)` to `ranges`, merging with the last range when they
/// touch and are of the same kind.
fn push_blank(ranges: &mut Vec<Blank>, start: u64, end: u64, file: bool) {
    if end <= start {
        return;
    }
    match ranges.last_mut() {
        Some(last) if last.end() == start && last.file == file => {
            last.pages += (end - start) / PAGE
        }
        _ => ranges.push(Blank {
            start,
            pages: (end - start) / PAGE,
            file,
        }),
    }
}

/// The pages of `regions` not among the first `saved` slots of `store`
/// (whose addresses ascend in region order), as blank ranges.
fn gaps(regions: &[Region], store: &Storage, saved: u64) -> Vec<Blank> {
    let mut out = Vec::new();
    let mut slot = 0;
    for r in regions {
        let file = r.kind == Kind::File;
        let mut at = r.start;
        while slot < saved {
            let a = store.addr(slot) & !abi::ADDR_FAILED;
            if a >= r.end {
                break;
            }
            if a >= at {
                push_blank(&mut out, at, a, file);
                at = a + PAGE;
            }
            slot += 1;
        }
        push_blank(&mut out, at, r.end, file);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanks_merge_when_they_touch_and_are_alike() {
        let mut r = Vec::new();
        push_blank(&mut r, 0, PAGE, false);
        push_blank(&mut r, PAGE, 3 * PAGE, false);
        push_blank(&mut r, 3 * PAGE, 4 * PAGE, true);
        push_blank(&mut r, 5 * PAGE, 6 * PAGE, true);
        push_blank(&mut r, 6 * PAGE, 6 * PAGE, true);
        assert_eq!(
            r,
            vec![
                Blank {
                    start: 0,
                    pages: 3,
                    file: false
                },
                Blank {
                    start: 3 * PAGE,
                    pages: 1,
                    file: true
                },
                Blank {
                    start: 5 * PAGE,
                    pages: 1,
                    file: true
                },
            ]
        );
    }

    #[test]
    fn saved_addresses_are_taken_in_order() {
        let mut it = [PAGE, 3 * PAGE, 9 * PAGE].into_iter().peekable();
        assert_eq!(saved_in(&mut it, 0, PAGE), None);
        assert_eq!(saved_in(&mut it, 2 * PAGE, 5 * PAGE), Some(3 * PAGE));
        assert_eq!(saved_in(&mut it, 5 * PAGE, 10 * PAGE), Some(9 * PAGE));
        assert_eq!(saved_in(&mut it, 0, u64::MAX), None);
    }
}
