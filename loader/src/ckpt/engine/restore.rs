//! Restores from user space, with the target held at its trigger: the pages
//! BPF could not write (or all of them, without the write helper or when
//! the probe left everything to us), and the blank pages written since the
//! checkpoint: anonymous ones zeroed, file ones read back from the file.

use super::Engine;
use super::hold::open_to_stop;
use super::target::{Blank, Image, Target};
use crate::ckpt::abi;
use crate::ckpt::events::{Restore, ZeroTodo};
use crate::ckpt::markers;
use crate::ckpt::memio::{Access, ZERO_PAGE};
use crate::ckpt::probes::StateField;
use crate::ckpt::procfs::{self, Kind, Mapping, P_GUARD, PAGE, Residency};
use crate::ckpt::report::J;
use crate::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// What user space did for one restore.
#[derive(Default)]
struct UserWrites {
    written: u64,
    zeroed: u64,
    reverted: u64,
    /// Pages whose memory is gone or is something else now.
    gone: u64,
    /// Pages in a mapping that holds a live thread stack now.
    live_stack: u64,
    /// Pages that became guard pages since the checkpoint (left guards).
    guarded: u64,
    /// Only the pages dirtied since the checkpoint were restored.
    incremental: bool,
    /// Pages written as the target's tracer (read-only pages on kernels
    /// that give FOLL_FORCE to the tracer only).
    ptrace: u64,
}

/// Why a page of the image is not written back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Unmapped, or other memory now (another kind, another file or offset).
    Gone,
    /// Its mapping holds a thread's stack pointer.
    LiveStack,
}

/// Where a restore may write, as the target is now.
struct Now<'a> {
    maps: &'a [Mapping],
    stacks: procfs::LiveStacks,
    image: &'a Image,
    /// Only pages dirtied since a re-arm are written, all of them already
    /// marked written (only a drop clears the marks, and a drop makes the
    /// next request take everything).
    dirty_only: bool,
}

impl Now<'_> {
    /// The current mapping of `addr` if it is still the memory the image
    /// holds there (same kind, same file at the same offset) and no live
    /// stack.
    fn mapping(&self, addr: u64) -> std::result::Result<&Mapping, Skip> {
        let i = self.maps.partition_point(|m| m.end <= addr);
        let m = self
            .maps
            .get(i)
            .filter(|m| m.contains(addr))
            .ok_or(Skip::Gone)?;
        let regions = &self.image.regions;
        let j = regions.partition_point(|r| r.end <= addr);
        let r = regions
            .get(j)
            .filter(|r| r.contains(addr))
            .ok_or(Skip::Gone)?;
        if !r.same_memory(m, addr) {
            return Err(Skip::Gone);
        }
        if self.stacks.covers(m, addr) {
            return Err(Skip::LiveStack);
        }
        Ok(m)
    }
}

impl UserWrites {
    fn skip(&mut self, why: Skip) {
        match why {
            Skip::Gone => self.gone += 1,
            Skip::LiveStack => self.live_stack += 1,
        }
    }
}

impl Engine {
    pub(super) fn on_restore(&mut self, t: &mut Target, r: &Restore) -> Result<()> {
        let t0 = Instant::now();
        let result = match r.by_open {
            true => self.hold_in_open(t, r.tid),
            false => Ok(()),
        }
        .and_then(|()| self.restore(t, r));
        let released = if r.held { self.release(t) } else { Ok(()) };
        if r.held {
            t.stats.holds += 1;
        }
        t.stats.user_ns += t0.elapsed().as_nanos() as u64;
        result.and(released)
    }

    fn restore(&mut self, t: &mut Target, r: &Restore) -> Result<()> {
        if r.held {
            self.wait_held(t)?;
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
        let slots = image.slots;
        t.image = Some(image);
        let done = done?;
        // The pages written here are marked written, so the next checkpoint
        // saves them too: make room now, while the target is held, rather
        // than overflow that checkpoint.
        if r.held {
            self.ensure_capacity(t, slots + done.zeroed + done.reverted, slots)?;
        }
        let s = &mut t.stats;
        s.cycles += 1;
        s.pages_restored_bpf += r.written;
        s.pages_zeroed_bpf += r.zeroed;
        s.pages_restored_user += done.written;
        s.pages_zeroed_user += done.zeroed;
        s.pages_reverted_user += done.reverted;
        s.pages_skipped_unmapped += done.gone;
        s.pages_skipped_live_stack += done.live_stack;
        s.pages_skipped_guard += done.guarded;
        if done.gone > 0 {
            self.opts.report.warn(&format!(
                "pid {}: {} pages of the checkpoint are no longer mapped as they were; not restored",
                t.pid, done.gone
            ));
        }
        if done.live_stack > 0 {
            self.opts.report.warn(&format!(
                "pid {}: {} pages of the checkpoint are in a mapping that holds a live thread stack now; not restored",
                t.pid, done.live_stack
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
        // Held with tracking armed: the counts of writes from elsewhere
        // before anything is written, and the dirty set if it is a list.
        let tracked = t.tracker.is_some() && image.index.is_some();
        let pre = if tracked { Some(self.window()?) } else { None };
        // The dirty set, if it is known as a list: whether BPF wrote nothing
        // (no write helper, or it left the request to user space) or wrote
        // the changed pages but some writes failed (read-only now, or
        // copy-on-write after a fork): BPF only ever writes within that
        // set, so writing the set again covers the failures without
        // rewriting the whole image.
        let dirty = if tracked {
            self.restore_dirty(t, image, r)?
        } else {
            None
        };
        // BPF wrote back every page marked since the checkpoint (a superset
        // of the dirty set) and zeroed the blank ones, with no failure:
        // nothing is left to write, only to re-arm.
        if let Some(d) = &dirty
            && self.bpf_write
            && !r.partial
            && r.write_failed == 0
            && r.zero_failed == 0
            && r.written + r.zeroed > 0
        {
            let unseen = self.rearm_after_restore(t, d)?;
            let mut done = UserWrites {
                incremental: true,
                ..Default::default()
            };
            if !unseen.is_empty() {
                self.restore_unseen(t, image, &unseen, &mut done)?;
            }
            return Ok(done);
        }
        if let Some(d) = dirty {
            // Only what changed since the checkpoint, then clean again.
            let mut done = self.write_listed(t, image, d.saved.clone(), &d.blank, true)?;
            let unseen = self.rearm_after_restore(t, &d)?;
            if !unseen.is_empty() {
                self.restore_unseen(t, image, &unseen, &mut done)?;
            }
            done.incremental = true;
            return Ok(done);
        }
        // Kept open for the program image (an exec drops them).
        let mem = t.mem()?;
        let res = t.residency(self.zero_pfn)?;
        let fresh = self.maps_if_moved(t)?;
        let now = Now {
            maps: fresh.as_deref().unwrap_or(&t.maps),
            stacks: self.live_stacks(t),
            image,
            dirty_only: false,
        };
        // Attached only if a page needs it; a target held in its open is
        // stopped first (ptrace cannot trap a thread waiting there).
        let (hold, pid, stat) = (self.open_hold.as_ref(), t.pid, t.files.stat.as_ref());
        let (open_held, opens) = (&mut t.open_held, &mut t.opens);
        let mut w = Access::new(&mem, self.force, move || {
            open_to_stop(hold, open_held, opens, pid, stat)
        });
        // Everything: every saved page, every blank page that holds data.
        let all = r.partial || !self.bpf_write || tracked;
        let slots = t
            .store
            .as_ref()
            .map_or(Vec::new(), |s| saved_slots(s, image.slots, all));
        let mut done = self.write_slots(pid, &mut t.store, &now, &mut w, &res, slots)?;
        let blank = match r.zero_todo {
            ZeroTodo::Listed(n) if !self.bpf_write && !r.partial && !tracked => {
                let listed: Vec<u64> = self.probes.zero_todo(n).collect();
                listed_blanks(&res, &image.blank, &listed)?
            }
            ZeroTodo::Listed(_)
                if self.bpf_write && !r.partial && r.zero_failed == 0 && !tracked =>
            {
                Vec::new()
            }
            _ => scan_blanks(&res, &image.blank)?,
        };
        self.rewrite_blanks(pid, &now, &mut w, &res, &blank, &mut done)?;
        done.ptrace = w.finish()?;
        if let Some(pre) = pre {
            self.rearm_after_full_restore(t, image, pre)?;
        }
        Ok(done)
    }

    /// The target's mappings read anew if they changed since they were
    /// last read (`None`: `t.maps` holds them).
    fn maps_if_moved(&self, t: &Target) -> Result<Option<Vec<Mapping>>> {
        if self.probes.state(StateField::LayoutSeq)? == t.applied_seq {
            return Ok(None);
        }
        procfs::read_maps(t.pid).map(Some)
    }

    /// Pages the re-arm after an incremental restore found written unseen
    /// (`unseen`, ascending; protected again already): written back too,
    /// then clean again.
    fn restore_unseen(
        &mut self,
        t: &mut Target,
        image: &Image,
        unseen: &[u64],
        done: &mut UserWrites,
    ) -> Result<()> {
        let (saved, blank) = Self::split_dirty(image, unseen);
        // Not faulted: not marked written either.
        let part = self.write_listed(t, image, saved, &blank, false)?;
        self.clean_unseen(t, unseen)?;
        done.written += part.written;
        done.zeroed += part.zeroed;
        done.reverted += part.reverted;
        done.gone += part.gone;
        done.live_stack += part.live_stack;
        done.guarded += part.guarded;
        done.ptrace += part.ptrace;
        Ok(())
    }

    /// Writes back the listed saved pages `(slot, addr)` and blanks the
    /// listed blank pages `(addr, file)` that hold something now, the
    /// target held. `dirty_only`: see `Now`.
    fn write_listed(
        &mut self,
        t: &mut Target,
        image: &Image,
        saved: Vec<(u64, u64)>,
        blank: &[(u64, bool)],
        dirty_only: bool,
    ) -> Result<UserWrites> {
        // Kept open for the program image (an exec drops them).
        let mem = t.mem()?;
        let res = t.residency(self.zero_pfn)?;
        let fresh = self.maps_if_moved(t)?;
        let now = Now {
            maps: fresh.as_deref().unwrap_or(&t.maps),
            stacks: self.live_stacks(t),
            image,
            dirty_only,
        };
        let (hold, pid, stat) = (self.open_hold.as_ref(), t.pid, t.files.stat.as_ref());
        let (open_held, opens) = (&mut t.open_held, &mut t.opens);
        let mut w = Access::new(&mem, self.force, move || {
            open_to_stop(hold, open_held, opens, pid, stat)
        });
        let mut done = self.write_slots(pid, &mut t.store, &now, &mut w, &res, saved)?;
        let blank = present_blanks(&res, blank)?;
        self.rewrite_blanks(pid, &now, &mut w, &res, &blank, &mut done)?;
        done.ptrace = w.finish()?;
        Ok(done)
    }

    /// Writes the saved pages `candidates` (`(slot, address)`) back.
    fn write_slots(
        &self,
        pid: i32,
        store: &mut Option<crate::ckpt::storage::Storage>,
        now: &Now<'_>,
        w: &mut Access<'_>,
        res: &Residency,
        candidates: Vec<(u64, u64)>,
    ) -> Result<UserWrites> {
        let store = store.as_mut().ok_or_else(|| Error::new("no page store"))?;
        let mut done = UserWrites::default();
        let mut slots = Vec::with_capacity(candidates.len());
        for (s, a) in candidates {
            match now.mapping(a) {
                Ok(_) => slots.push((s, a)),
                Err(why) => done.skip(why),
            }
        }
        // Consecutive slots holding consecutive pages go as one iovec:
        // per-page iovecs cost the kernel a page pin each.
        let failed = w.write_pages(runs(&slots).map(|(s, a, n)| (a, store.pages(s, n))))?;
        let mut files = FileIo::new(pid);
        let mut lost = Vec::new();
        for &a in &failed {
            let slot = slots.iter().find(|&&(_, x)| x == a).map(|&(s, _)| s);
            match (now.mapping(a), slot) {
                // Shared memory made read-only: write it through its file.
                (Ok(m), Some(s)) if m.shared => files.write_page(m, a, store.pages(s, 1))?,
                _ => lost.push(a),
            }
        }
        done.guarded = guards_only(res, &lost)?;
        for &(s, a) in &slots {
            store.set_addr(s, a)?;
        }
        done.written = slots.len() as u64 - done.guarded;
        // Writes from user space fault nothing: record them, or the next
        // checkpoint would take these pages for never written.
        if !now.dirty_only {
            self.mark_written(pid, slots.iter().map(|&(_, a)| a))?;
        }
        Ok(done)
    }

    /// Zeroes the anonymous pages and reads back the file pages among
    /// `pages` (blank pages written since the checkpoint).
    fn rewrite_blanks(
        &self,
        pid: i32,
        now: &Now<'_>,
        w: &mut Access<'_>,
        res: &Residency,
        pages: &[(u64, bool)],
        done: &mut UserWrites,
    ) -> Result<()> {
        let mut zeros = Vec::new();
        let mut files = FileIo::new(pid);
        let mut contents = Vec::new();
        for &(a, file) in pages {
            match now.mapping(a) {
                Err(why) => done.skip(why),
                Ok(m) if file => contents.push((a, files.page(m, a)?)),
                Ok(_) => zeros.push(a),
            }
        }
        let mut failed = w.write_pages(zeros.iter().map(|&a| (a, &ZERO_PAGE[..])))?;
        failed.extend(w.write_pages(contents.iter().map(|(a, d)| (*a, &d[..])))?);
        done.guarded += guards_only(res, &failed)?;
        let written = zeros.iter().chain(contents.iter().map(|(a, _)| a));
        self.mark_written(pid, written.copied().filter(|a| !failed.contains(a)))?;
        done.zeroed = zeros.len() as u64;
        done.reverted = contents.len() as u64;
        Ok(())
    }

    fn report_restore(&self, t: &Target, r: &Restore, d: &UserWrites) {
        self.report().detail(
            "restore",
            &format!(
                "restore of pid {}: {} pages by BPF ({} zeroed) in {:?}, {} from user space ({} zeroed, {} from files)",
                t.pid,
                r.written,
                r.zeroed,
                Duration::from_nanos(r.ns),
                d.written,
                d.zeroed,
                d.reverted,
            ),
            &[
                ("pid", J::N(t.pid as u64)),
                ("pages_bpf", J::N(r.written)),
                ("zeroed_bpf", J::N(r.zeroed)),
                ("failed_bpf", J::N(r.write_failed + r.zero_failed)),
                ("pages_user", J::N(d.written)),
                ("zeroed_user", J::N(d.zeroed)),
                ("reverted_user", J::N(d.reverted)),
                ("skipped_unmapped", J::N(d.gone)),
                ("skipped_live_stack", J::N(d.live_stack)),
                ("skipped_guard", J::N(d.guarded)),
                ("ptrace_writes", J::N(d.ptrace)),
                ("kernel_ns", J::N(r.ns)),
                ("held", J::B(r.held)),
                ("partial", J::B(r.partial)),
                ("incremental", J::B(d.incremental)),
            ],
        );
    }
}

/// The saved pages of slots `0..slots` as `(slot, address)`: every one, or
/// (`all` false) those BPF marked failed; free slots (address 0) aside.
fn saved_slots(store: &crate::ckpt::storage::Storage, slots: u64, all: bool) -> Vec<(u64, u64)> {
    (0..slots)
        .filter_map(|s| {
            let a = store.addr(s);
            let wanted = all || a & abi::ADDR_FAILED != 0;
            let a = a & !abi::ADDR_FAILED;
            (wanted && a != 0).then_some((s, a))
        })
        .collect()
}

/// Of blank pages written since (`(address, file)`), those that hold
/// something now (not dropped again, not the zero page).
fn present_blanks(res: &Residency, pages: &[(u64, bool)]) -> Result<Vec<(u64, bool)>> {
    let mut out = Vec::new();
    for chunk in pages.chunk_by(|a, b| a.0 >> abi::CHUNK_SHIFT == b.0 >> abi::CHUNK_SHIFT) {
        let runs = res.runs(chunk[0].0, chunk[chunk.len() - 1].0 + PAGE)?;
        for &(a, file) in chunk {
            let kind = if file { Kind::File } else { Kind::Anon };
            if runs
                .iter()
                .any(|r| r.start <= a && a < r.end && r.may_hold_data(kind))
            {
                out.push((a, file));
            }
        }
    }
    Ok(out)
}

/// Pages that could not be written: guard pages installed since are left
/// guards and counted; anything else is an error.
fn guards_only(res: &Residency, failed: &[u64]) -> Result<u64> {
    for &a in failed {
        let guard = res
            .runs(a, a + PAGE)?
            .first()
            .is_some_and(|r| r.flags & P_GUARD != 0);
        if !guard {
            return Err(Error::new(format!(
                "cannot write the target's memory at {a:#x}"
            )));
        }
    }
    Ok(failed.len() as u64)
}

/// The blank pages that hold something now, by scanning every blank range.
fn scan_blanks(res: &Residency, blank: &[Blank]) -> Result<Vec<(u64, bool)>> {
    let mut out = Vec::new();
    for b in blank {
        let kind = if b.file { Kind::File } else { Kind::Anon };
        for run in res.runs(b.start, b.end())? {
            if run.may_hold_data(kind) {
                out.extend(run.pages().map(|a| (a, b.file)));
            }
        }
    }
    Ok(out)
}

/// Of the pages the probe listed (blank pages written since), those that
/// hold something now (not dropped again, not the zero page).
fn listed_blanks(res: &Residency, blank: &[Blank], listed: &[u64]) -> Result<Vec<(u64, bool)>> {
    let mut out = Vec::new();
    let mut sorted = listed.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    // One residency query per 2 MiB chunk of listed pages.
    for chunk in sorted.chunk_by(|a, b| a >> abi::CHUNK_SHIFT == b >> abi::CHUNK_SHIFT) {
        let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
        let runs = res.runs(first, last + PAGE)?;
        for &a in chunk {
            let i = blank.partition_point(|b| b.end() <= a);
            let Some(b) = blank.get(i).filter(|b| b.start <= a) else {
                continue;
            };
            let kind = if b.file { Kind::File } else { Kind::Anon };
            if runs
                .iter()
                .any(|r| r.start <= a && a < r.end && r.may_hold_data(kind))
            {
                out.push((a, b.file));
            }
        }
    }
    Ok(out)
}

/// The file behind a mapping, through the target's `/proc/PID/map_files`
/// (which keeps working if the file was renamed or deleted): reads the
/// bytes a file page holds, writes shared memory whatever its protection.
struct FileIo {
    pid: i32,
    open: HashMap<(u64, u64), File>,
}

impl FileIo {
    fn new(pid: i32) -> Self {
        Self {
            pid,
            open: HashMap::new(),
        }
    }

    fn file(&mut self, m: &Mapping) -> Result<&File> {
        if !self.open.contains_key(&(m.start, m.end)) {
            let p = format!("/proc/{}/map_files/{:x}-{:x}", self.pid, m.start, m.end);
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(m.shared)
                .open(&p)
                .map_err(|e| Error::from(e).context(format!("open {p}")))?;
            self.open.insert((m.start, m.end), f);
        }
        Ok(&self.open[&(m.start, m.end)])
    }

    fn write_page(&mut self, m: &Mapping, addr: u64, data: &[u8]) -> Result<()> {
        let at = m.offset + (addr - m.start);
        self.file(m)?.write_all_at(data, at).map_err(|e| {
            Error::from(e).context(format!("write the shared memory mapped at {addr:#x}"))
        })
    }

    fn page(&mut self, m: &Mapping, addr: u64) -> Result<Vec<u8>> {
        let at = m.offset + (addr - m.start);
        let f = self.file(m)?;
        let mut buf = vec![0u8; PAGE as usize];
        let mut got = 0;
        // Past the end of the file the page reads as zeros, as it maps.
        while got < buf.len() {
            match f.read_at(&mut buf[got..], at + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => {
                    return Err(
                        Error::from(e).context(format!("read the file mapped at {addr:#x}"))
                    );
                }
            }
        }
        Ok(buf)
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
