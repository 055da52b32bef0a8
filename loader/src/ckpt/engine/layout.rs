//! Keeping the probes' region table in step with the target's mappings.

use super::Engine;
use super::serve::Target;
use crate::ckpt::abi;
use crate::ckpt::probes::StateField;
use crate::ckpt::procfs::{self, Kind, PAGE, Pagemap, Region};
use crate::ckpt::storage::Storage;
use crate::ckpt::touched::Written;
use crate::{Error, Result};

impl Engine {
    /// Rereads the target's mappings into the probes' region table.
    pub(super) fn apply_layout(&mut self, t: &mut Target) -> Result<()> {
        // The sequence number first: a change after this point bumps it
        // again and the probe sees the table as stale.
        self.probes.set_state(StateField::Notified, 0)?;
        let seq = self.probes.state(StateField::LayoutSeq)?;
        let maps = procfs::read_maps(t.pid)?;
        let regions = procfs::captured(&maps, &procfs::stack_pointers(t.pid), self.opts.anon_only);
        if regions.len() > abi::MAX_REGIONS as usize {
            return Err(Error::new(format!(
                "pid {} has {} mappings to capture; the region table holds {}",
                t.pid,
                regions.len(),
                abi::MAX_REGIONS
            )));
        }
        // Seqlock: invalidate, rewrite, validate.
        self.cfg.applied_seq = u64::MAX;
        self.push_config()?;
        self.probes
            .write_regions(&regions, |r| r.kind == Kind::Anon)?;
        if self.opts.report.verbose > 1 {
            for r in &regions {
                eprintln!("bpfckpt:   region {:#x}-{:#x} {:?}", r.start, r.end, r.kind);
            }
        }
        if t.image.is_none() {
            self.size_store(t, &regions)?;
        }
        self.cfg.nregions = regions.len() as u32;
        self.cfg.total_pages = regions.iter().map(Region::pages).sum();
        self.cfg.applied_seq = seq;
        self.push_config()?;
        t.regions = regions;
        t.maps = maps;
        t.applied_seq = seq;
        t.layout_dirty = false;
        Ok(())
    }

    /// Nothing to preserve yet: sizes the store to what a checkpoint would
    /// save now, with a little room to grow.
    fn size_store(&mut self, t: &mut Target, regions: &[Region]) -> Result<()> {
        let need = count_to_save(t.pid, regions, &self.written(t.pid)?, self.zero_pfn)?;
        if t.store.as_ref().is_none_or(|s| s.capacity() < need) {
            let store = Storage::create(Storage::with_headroom(need), self.opts.max_memory)?;
            self.install_store(t, store)?;
        }
        Ok(())
    }

    pub(super) fn install_store(&mut self, t: &mut Target, s: Storage) -> Result<()> {
        self.probes.install_store(&s)?;
        self.cfg.capacity = s.capacity();
        t.stats.peak_store_bytes = t.stats.peak_store_bytes.max(s.kernel_bytes());
        t.store = Some(s);
        Ok(())
    }
}

/// Pages a checkpoint would save now: present or swapped anonymous pages,
/// every page of shared-anonymous and file-backed regions.
fn count_to_save(
    pid: i32,
    regions: &[Region],
    written: &Written,
    zero_pfn: Option<u64>,
) -> Result<u64> {
    let pm = Pagemap::open(pid)?;
    let mut flags = Vec::new();
    let mut n = 0;
    for r in regions {
        if r.kind != Kind::Anon {
            n += r.pages();
            continue;
        }
        flags.clear();
        pm.read(r.start, r.pages(), &mut flags)?;
        n += flags
            .iter()
            .enumerate()
            .filter(|(i, f)| {
                written.anon_page_may_hold_data(r.start + *i as u64 * PAGE, **f, zero_pfn)
            })
            .count() as u64;
    }
    Ok(n)
}
