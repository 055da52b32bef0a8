//! Keeping the probes' region table in step with the target's mappings.

use super::Engine;
use super::target::Target;
use crate::Result;
use crate::ckpt::abi;
use crate::ckpt::probes::StateField;
use crate::ckpt::procfs::{self, Kind, P_PRESENT, Region, Residency};
use crate::ckpt::storage::Storage;
use std::rc::Rc;

impl Engine {
    /// Rereads the target's mappings into the probes' region table.
    pub(super) fn apply_layout(&mut self, t: &mut Target) -> Result<()> {
        // The sequence number first: a change after this point bumps it
        // again and the probe sees the table as stale.
        self.probes.set_state(StateField::Notified, 0)?;
        let seq = self.probes.state(StateField::LayoutSeq)?;
        // Threads counted after the sequence number: one started since
        // bumps it (at its clone's return), so "one thread" holds while the
        // table is current.
        self.set_thread_flag(t);
        let maps = procfs::read_maps(t.pid)?;
        let pid = t.pid;
        // A stack stays a live stack for as long as its thread does.
        t.thread_stacks
            .retain(|&(tid, _)| std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists());
        self.report_odd_stacks(t, &maps);
        let regions = procfs::captured(&maps, &self.live_stacks(t), self.opts.anon_only);
        if self.opts.report.verbose > 1 {
            for r in &regions {
                eprintln!("bpfckpt:   region {:#x}-{:#x} {:?}", r.start, r.end, r.kind);
            }
        }
        let store = if t.image.is_none() {
            self.store_for(t, &regions)?
        } else {
            None
        };
        let rows: Vec<(u64, u64, u64)> = regions
            .iter()
            .map(|r| {
                (
                    r.start,
                    r.pages(),
                    if r.tracked { abi::R_TRACKED } else { 0 },
                )
            })
            .collect();
        self.cfg.nregions = u32::try_from(rows.len())
            .map_err(|_| crate::Error::new(format!("pid {} has {} mappings", t.pid, rows.len())))?;
        self.cfg.total_pages = regions.iter().map(Region::pages).sum();
        self.cfg.applied_seq = seq;
        if let Some(s) = &store {
            self.cfg.capacity = s.capacity();
        }
        let version = self.probes.publish(&mut self.cfg, |tb| {
            if let Some(s) = &store {
                tb.install_store(s)?;
            }
            tb.regions(&rows)
        })?;
        if let Some(s) = store {
            t.stats.peak_store_bytes = t.stats.peak_store_bytes.max(s.kernel_bytes());
            t.store = Some(s);
        }
        t.regions = Rc::new(regions);
        t.maps = maps;
        t.applied_seq = seq;
        t.layout_dirty = false;
        t.published(version);
        Ok(())
    }

    /// Where the target's threads run: the stacks their `clone` calls
    /// named, and the stack pointers of threads blocked (or stopped) now.
    pub(super) fn live_stacks(&self, t: &Target) -> procfs::LiveStacks {
        procfs::LiveStacks {
            created: t.thread_stacks.iter().map(|&(_, sp)| sp).collect(),
            pointers: match (t.threads(), t.main_stack_pointer()) {
                // One thread, and it is the main one: no need to list tasks.
                (Some(1), Some(sp)) => vec![sp],
                _ => procfs::stack_pointers(t.pid),
            },
        }
    }

    /// Says once per mapping when a thread's stack pointer lies in a mapping
    /// that is no stack the target created (a coroutine stack carved out of
    /// a data mapping): the whole mapping is then treated as a live stack
    /// and not captured, since where that stack ends cannot be known.
    fn report_odd_stacks(&self, t: &mut Target, maps: &[procfs::Mapping]) {
        let stacks = self.live_stacks(t);
        for &sp in &stacks.pointers {
            let Some(m) = maps.iter().find(|m| m.contains(sp)) else {
                continue;
            };
            let created = stacks.created.iter().any(|&s| m.contains(s));
            if m.path.starts_with("[stack") || created || !t.odd_stacks_reported.insert(m.start) {
                continue;
            }
            let from = stacks.live_from(m).unwrap_or(m.start);
            self.report().warn(&format!(
                "pid {}: a thread's stack pointer {sp:#x} is in {:#x}-{:#x} ({}), which is no thread \
                 stack the target created; from {from:#x} up it is treated as a live stack and not captured",
                t.pid,
                m.start,
                m.end,
                if m.path.is_empty() { "anonymous" } else { &m.path },
            ));
        }
    }

    /// Nothing to preserve yet: a store sized to what a checkpoint would
    /// save now, with a little room to grow, if the current one is smaller.
    fn store_for(&mut self, t: &Target, regions: &[Region]) -> Result<Option<Storage>> {
        let need = self.count_to_save(t.pid, regions)?;
        if t.store.as_ref().is_some_and(|s| s.capacity() >= need) {
            return Ok(None);
        }
        Storage::create(Storage::with_headroom(need), self.opts.max_memory).map(Some)
    }

    /// Pages a checkpoint would save now: every page of untracked regions,
    /// and in tracked ones the pages that may hold data or were written.
    fn count_to_save(&self, pid: i32, regions: &[Region]) -> Result<u64> {
        let res = Residency::open(pid, self.zero_pfn)?;
        let written = self.written(pid)?;
        let mut n = 0;
        for r in regions {
            if r.kind == Kind::SharedAnon || (r.kind == Kind::File && !r.tracked) {
                n += r.pages();
                continue;
            }
            for run in res.runs(r.start, r.end)? {
                n += run
                    .pages()
                    .filter(|&a| {
                        run.may_hold_data(r.kind)
                            || !r.tracked
                            || (run.flags & P_PRESENT != 0 && written.marked(a))
                    })
                    .count() as u64;
            }
        }
        Ok(n)
    }

    /// Marks the pages that hold data now as written: the target may have
    /// written them before the probes served it (a `watch` target's exec).
    pub(super) fn seed_written(&self, t: &Target) -> Result<()> {
        if self.exhaustive() {
            return Ok(());
        }
        let res = Residency::open(t.pid, self.zero_pfn)?;
        let mut pages = Vec::new();
        for r in t.regions.iter().filter(|r| r.tracked) {
            for run in res.runs(r.start, r.end)? {
                if run.may_hold_data(r.kind) {
                    pages.extend(run.pages());
                }
            }
        }
        self.mark_written(t.pid, pages.into_iter())
    }
}
