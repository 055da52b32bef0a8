//! The image index's store slots: which slot holds which page; the `FREE` stack.

use super::super::Engine;
use super::super::target::{Target, blank_insert, blank_remove};
use crate::ckpt::abi;
use crate::{Error, Result};

impl Engine {
    /// The image holds page `addr` in `slot` now (its old slot, if any, is free).
    pub(super) fn place(&mut self, t: &mut Target, addr: u64, slot: u64) -> Result<()> {
        let image = t.image.as_mut().ok_or_else(|| Error::new("no image"))?;
        let index = image
            .index
            .as_mut()
            .ok_or_else(|| Error::new("no image index"))?;
        let old = index.by_addr.insert(addr, slot);
        blank_remove(&mut image.blank, addr);
        if let Some(old) = old.filter(|&o| o != slot) {
            self.release_slot(t, old)?;
        }
        Ok(())
    }

    /// The image holds nothing at `addr` now: blank (zero, or the file's
    /// bytes if `file`) or, `None`, a guard page.
    pub(super) fn unplace(&mut self, t: &mut Target, addr: u64, blank: Option<bool>) -> Result<()> {
        let image = t.image.as_mut().ok_or_else(|| Error::new("no image"))?;
        let index = image
            .index
            .as_mut()
            .ok_or_else(|| Error::new("no image index"))?;
        let old = index.by_addr.remove(&addr);
        if let Some(file) = blank {
            blank_insert(&mut image.blank, addr, file);
        }
        if let Some(old) = old {
            self.release_slot(t, old)?;
        }
        Ok(())
    }

    /// `slot` holds no page of the image any more: it goes on top of `FREE`.
    pub(super) fn release_slot(&mut self, t: &mut Target, slot: u64) -> Result<()> {
        if let Some(store) = t.store.as_mut() {
            store.set_addr(slot, 0)?;
        }
        let Some(index) = t.image.as_mut().and_then(|i| i.index.as_mut()) else {
            return Ok(());
        };
        if index.free.len() < abi::DIRTY_MAX as usize {
            index.free.push(slot);
            let i = index.free.len() - 1;
            self.probes.set_free(std::iter::once((i, slot)))?;
        } else {
            index.spare.push(slot);
        }
        Ok(())
    }

    /// The `n` slots BPF took from the top of `FREE`, in the order it took them.
    pub(super) fn take_free_top(&mut self, t: &mut Target, n: usize) -> Result<Vec<u64>> {
        let index = t
            .image
            .as_mut()
            .and_then(|i| i.index.as_mut())
            .ok_or_else(|| Error::new("no image index"))?;
        let keep = index.free.len().saturating_sub(n);
        let mut taken = index.free.split_off(keep);
        taken.reverse();
        Ok(taken)
    }

    /// A free slot for a page user space reads itself.
    pub(super) fn take_slot(&mut self, t: &mut Target) -> Result<u64> {
        let index = t
            .image
            .as_mut()
            .and_then(|i| i.index.as_mut())
            .ok_or_else(|| Error::new("no image index"))?;
        if let Some(s) = index.spare.pop() {
            return Ok(s);
        }
        if let Some(s) = index.free.pop() {
            return Ok(s);
        }
        let fresh = index.fresh;
        self.ensure_capacity(t, fresh + 1, fresh)?;
        let index = t
            .image
            .as_mut()
            .and_then(|i| i.index.as_mut())
            .ok_or_else(|| Error::new("no image index"))?;
        index.fresh += 1;
        Ok(fresh)
    }

    /// Tops `FREE` up with slots never used so far (their stale addresses
    /// cleared), as far as the store holds them; and tells the probes.
    pub(super) fn top_up_free(&mut self, t: &mut Target) -> Result<()> {
        let (Some(image), Some(store)) = (t.image.as_mut(), t.store.as_mut()) else {
            return Ok(());
        };
        let Some(index) = image.index.as_mut() else {
            return Ok(());
        };
        let mut writes = Vec::new();
        while index.free.len() < abi::DIRTY_MAX as usize {
            let slot = match index.spare.pop() {
                Some(s) => s,
                None if index.fresh < store.capacity() => {
                    index.fresh += 1;
                    store.set_addr(index.fresh - 1, 0)?;
                    index.fresh - 1
                }
                None => break,
            };
            index.free.push(slot);
            writes.push((index.free.len() - 1, slot));
        }
        image.slots = index.fresh;
        self.cfg.nfree = index.free.len() as u64;
        self.probes.set_free(writes.into_iter())
    }
}
