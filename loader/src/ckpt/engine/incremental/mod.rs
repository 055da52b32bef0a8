//! Cost that follows the pages dirtied since the last request: with a
//! re-arming tracker (`ckpt/dirty.rs`) the image is updated in place. A
//! checkpoint copies only the pages the probes listed as dirtied (BPF puts
//! them into free store slots inside the trigger when nothing else can
//! write them meanwhile) and user space re-arms them while the target is
//! held; a restore writes back only those pages.
//!
//! Writes that bypass the target's faults (another process's
//! `process_vm_writev` or `PTRACE_POKE*`) are counted by the probes when
//! they begin and return: the next request scans for written pages too.
//! One that overlaps the re-arming of a request could be re-armed away
//! unseen, so every re-arm is bracketed by two readings of the counts: if
//! they differ, what was copied is read again after the re-arm, the scan is
//! not acknowledged (the next request scans again) and, where the re-arm
//! may have wiped a page outside the dirty set, the probes' `rescan` makes
//! requests take everything until one re-arms in a quiet window. Writes
//! that may come at any time without a system call (`io_uring`, AIO,
//! `O_DIRECT`, `/proc/PID/mem` open for writing) turn the tracking off for
//! the program image.

mod slots;

use super::Engine;
use super::hold::open_to_stop;
use super::target::{Image, Index, Target, blank_contains};
use crate::ckpt::abi;
use crate::ckpt::dirty::{Mechanism, Tracker};
use crate::ckpt::events::{Checkpoint, Restore, Stale};
use crate::ckpt::inject;
use crate::ckpt::memio::{Access, Mem};
use crate::ckpt::probes::StateField;
use crate::ckpt::procfs::{Kind, P_GUARD, PAGE, Region, Residency};
use crate::ckpt::report::J;
use crate::{Error, Result};
use std::collections::BTreeSet;
use std::os::fd::OwnedFd;

/// Test hook: with a userfaultfd, a restore's dirty list of 16 runs or
/// more loses a page between two close ones (where the re-arm scans), as
/// if the probes had missed its fault; the re-arm
/// must find it written and the restore write it back.
pub const HIDE_DIRTY_HOOK: &str = "BPFCKPT_TEST_HIDE_DIRTY";

/// Saved pages `(slot, addr)` and blank pages `(addr, file)`.
type Saved = Vec<(u64, u64)>;
type Blank = Vec<(u64, bool)>;

/// What one incremental checkpoint did.
#[derive(Default)]
pub(super) struct Merged {
    pub bpf: u64,
    pub user: u64,
    pub blanked: u64,
}

/// Writes into the target that bypass its faults, as counted by the probes
/// when a held request began.
#[derive(Clone, Copy)]
pub(super) struct Window {
    gup: u64,
    inflight: u64,
    /// The last count user space scanned for.
    acked: u64,
}

impl Window {
    /// Someone may have written without a fault since the last scan.
    fn scan(&self) -> bool {
        self.gup != self.acked || self.inflight != 0
    }
}

impl Engine {
    /// Whether this target's requests go through the tracker.
    pub(super) fn armed(&self, t: &Target) -> bool {
        t.tracker.is_some() && t.image.as_ref().is_some_and(|i| i.index.is_some())
    }

    /// Sets up the tracker for the current program image if none is (the
    /// target is held, `tid` the thread that asked).
    pub(super) fn ensure_tracker(&mut self, t: &mut Target, tid: u32) -> Result<()> {
        if t.tracker.is_some() || self.cfg.flags & abi::F_INCREMENTAL == 0 {
            return Ok(());
        }
        let got = match bypassing_fds(t.pid) {
            Some(why) => Err(why),
            None => self.acquire_tracker(t, tid),
        };
        match got {
            Ok(tr) => {
                self.report().detail(
                    "tracking",
                    &format!(
                        "pid {}: dirty tracking by {} (re-armed at every request)",
                        t.pid,
                        tr.mechanism().name()
                    ),
                    &[
                        ("pid", J::N(t.pid as u64)),
                        ("mechanism", J::S(tr.mechanism().key())),
                    ],
                );
                t.tracker = Some(tr);
            }
            Err(why) => self.tracking_off(t, &why)?,
        }
        Ok(())
    }

    /// No re-arming for this program image: the bitmaps alone, as without
    /// tracking (the next program image tries again).
    pub(super) fn tracking_off(&mut self, t: &mut Target, why: &str) -> Result<()> {
        self.report().warn(&format!(
            "pid {}: no re-arming dirty tracking ({why}); every checkpoint copies every page ever written",
            t.pid
        ));
        self.report().detail(
            "tracking",
            "",
            &[
                ("pid", J::N(t.pid as u64)),
                ("mechanism", J::S("none")),
                ("reason", J::S(why)),
            ],
        );
        t.tracker = None;
        if let Some(image) = t.image.as_mut() {
            image.index = None;
        }
        self.cfg.flags &= !(abi::F_INCREMENTAL | abi::F_WP_PER_PAGE);
        self.push_config()
    }

    fn acquire_tracker(
        &mut self,
        t: &mut Target,
        tid: u32,
    ) -> std::result::Result<Tracker, String> {
        use crate::ckpt::dirty::Choice;
        let soft = matches!(self.opts.dirty, Choice::Auto | Choice::SoftDirty) && self.soft_dirty;
        if soft {
            return Ok(Tracker::soft_dirty(t.pid));
        }
        if self.opts.dirty == Choice::SoftDirty {
            return Err("this kernel has no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY)".into());
        }
        self.stop_instead_of_open(t).map_err(|e| e.to_string())?;
        // The injected userfaultfd() runs in the target: not its own.
        let sticky = self
            .probes
            .state(StateField::GupSticky)
            .map_err(|e| e.to_string())?;
        let fd = self.fetch_userfaultfd(t.pid, tid);
        self.probes
            .set_state(StateField::GupSticky, sticky)
            .map_err(|e| e.to_string())?;
        Tracker::uffd(t.pid, fd?).map_err(|e| e.to_string())
    }

    /// A userfaultfd created in the target by injecting
    /// `userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY)` into thread `tid`
    /// (held), fetched into bpfckpt; the target's copy is closed again.
    fn fetch_userfaultfd(&mut self, pid: i32, tid: u32) -> std::result::Result<OwnedFd, String> {
        let opts = inject::Options {
            watchdog: Some(&mut self.watchdog),
            ..Default::default()
        };
        let flags = libc::O_CLOEXEC as u64 | inject::UFFD_USER_MODE_ONLY;
        inject::fetch_new_fd(pid, tid as i32, inject::nr::USERFAULTFD, &[flags], opts)
            .map_err(|e| e.to_string())
    }

    /// What the probes counted of writes bypassing faults (target held).
    pub(super) fn window(&self) -> Result<Window> {
        Ok(Window {
            gup: self.probes.state(StateField::Gup)?,
            inflight: self.probes.state(StateField::GupInflight)?,
            acked: self.probes.state(StateField::GupAcked)?,
        })
    }

    /// Whether no write bypassing faults began, or was under way, from
    /// `pre` (read before a re-arm) until now (after it).
    fn quiet(&self, pre: Window) -> Result<bool> {
        let now = self.window()?;
        Ok(pre.inflight == 0 && now.inflight == 0 && now.gup == pre.gup)
    }

    /// After a request re-armed `dirty` (some pages, or all of the image's
    /// regions): the
    /// dirty set starts empty again. In a quiet window the scan counted in
    /// `pre` is acknowledged; otherwise the next request scans again, and if
    /// `wiped` (the re-arm may have cleared a page written outside the
    /// dirty set) takes everything.
    fn settle(
        &mut self,
        t: &Target,
        pre: Window,
        quiet: bool,
        dirty: Rearmed<'_>,
        wiped: bool,
    ) -> Result<()> {
        let (pid, image) = (t.pid, self.image_gen()?);
        match dirty {
            Rearmed::Pages(pages) => self.probes.bitmaps().clear_since(pid, image, pages)?,
            // The scan found every page written since the last re-arm, and
            // all of them are clean now: the whole chunks that huge-page
            // faults marked too.
            Rearmed::Scanned(regions) | Rearmed::All(regions) => {
                self.probes.bitmaps().clear_since_all(pid, image)?;
                // Regions saved whole (others may write them): always
                // changed, for a restore in BPF; and never listed.
                self.probes
                    .bitmaps()
                    .mark_since(pid, image, whole_pages(regions))?;
            }
        }
        self.probes.set_state(StateField::NDirty, 0)?;
        self.probes.set_state(StateField::DirtySpans, 0)?;
        self.probes.set_state(StateField::Scan, 0)?;
        if quiet {
            self.probes.set_state(StateField::GupAcked, pre.gup)?;
            self.probes.set_state(StateField::Rescan, 0)?;
            return Ok(());
        }
        self.report().detail(
            "foreign_write",
            &format!("pid {pid}: another process wrote into it during the request; the next request scans"),
            &[("pid", J::N(pid as u64)), ("rescan", J::B(wiped))],
        );
        if wiped {
            self.probes.set_state(StateField::Rescan, 1)?;
        }
        Ok(())
    }

    /// The dirty set, if it is known page by page (not a walk of the
    /// bitmaps): the list, and whether it is short (the tracker's scan
    /// completes it).
    fn listed(&self, uffd: bool) -> Result<Option<(Vec<u64>, bool)>> {
        let p = &self.probes;
        let n = p.state(StateField::NDirty)?;
        if p.state(StateField::DirtySpans)? != 0
            || p.state(StateField::GupSticky)? != 0
            || p.state(StateField::Rescan)? != 0
            || p.state(StateField::Untracked)? != 0
        {
            return Ok(None);
        }
        let mut list = p.dirty_list(n);
        if uffd
            && std::env::var_os(HIDE_DIRTY_HOOK).is_some_and(|v| v == "1")
            && crate::ckpt::dirty::page_runs(&list).count() >= 16
        {
            // One whose neighbours lie close: inside a span the re-arm scans.
            list.sort_unstable();
            let gap = crate::ckpt::dirty::SCAN_GAP * PAGE;
            if let Some(i) = (1..list.len() - 1).find(|&i| list[i + 1] - list[i - 1] <= gap) {
                list.remove(i);
            }
        }
        Ok(Some((list, self.short_list(n)?)))
    }

    /// Whether pages may have been written beyond the probes' list of `n`
    /// entries: a huge-page fault, or an overflow.
    fn short_list(&self, n: u64) -> Result<bool> {
        Ok(self.probes.state(StateField::Scan)? != 0 || n > u64::from(abi::DIRTY_MAX))
    }

    /// After a checkpoint that took every page (the BPF walk or a user-space
    /// redo), held: everything tracked is armed, the image indexed.
    pub(super) fn armed_after_full(&mut self, t: &mut Target, c: &Checkpoint) -> Result<()> {
        if self.probes.state(StateField::GupSticky)? != 0 {
            return self.tracking_off(
                t,
                "writes into its memory may bypass page faults (io_uring, AIO, O_DIRECT or /proc/PID/mem)",
            );
        }
        if self.probes.state(StateField::Untracked)? != 0 {
            return self.tracking_off(t, "its writes can no longer be tracked page by page");
        }
        self.ensure_tracker(t, c.tid)?;
        let regions = match (&t.tracker, t.image.as_ref()) {
            (Some(_), Some(i)) => i.regions.clone(),
            _ => return Ok(()),
        };
        let pre = self.window()?;
        if let Some(tr) = t.tracker.as_mut() {
            tr.arm_all(&regions)?;
        }
        let quiet = self.quiet(pre)?;
        // What BPF copied before the target stopped may predate a write by
        // another of its threads or another process: once armed, read again
        // (later writes fault, or show in the next scan).
        let bpf_copied = c.saved > 0 && !c.incremental;
        if bpf_copied && !(quiet && c.gup == pre.gup && self.single_threaded_at(c) && !t.late_hold)
        {
            self.reread_image(t)?;
        }
        let (Some(image), Some(store)) = (t.image.as_mut(), t.store.as_ref()) else {
            return Ok(());
        };
        let mut index = Index {
            fresh: image.slots,
            ..Default::default()
        };
        for s in 0..image.slots {
            let a = store.addr(s) & !abi::ADDR_FAILED;
            if a != 0 {
                index.by_addr.insert(a, s);
            }
        }
        image.index = Some(index);
        self.settle(t, pre, quiet, Rearmed::All(&regions), true)?;
        self.top_up_free(t)?;
        self.publish_incremental(t)
    }

    /// Whether the config the probe ran under said the target had one thread.
    fn single_threaded_at(&self, c: &Checkpoint) -> bool {
        c.version == self.probes.version() && self.cfg.flags & abi::F_SINGLE_THREAD != 0
    }

    /// Reads every saved page of the image again (the target held).
    fn reread_image(&mut self, t: &mut Target) -> Result<()> {
        let mem = t.mem()?;
        let (Some(image), Some(store)) = (t.image.as_ref(), t.store.as_mut()) else {
            return Ok(());
        };
        // Inaccessible pages are read as the tracer where only it may.
        let (hold, pid, stat) = (self.open_hold.as_ref(), t.pid, t.files.stat.as_ref());
        let (open_held, opens) = (&mut t.open_held, &mut t.opens);
        let mut mem = Access::new(&mem, self.force, move || {
            open_to_stop(hold, open_held, opens, pid, stat)
        });
        for s in 0..image.slots {
            let a = store.addr(s);
            if a == 0 || a & abi::ADDR_FAILED != 0 {
                continue;
            }
            mem.read(a, store.pages_mut(s, 1)?)?;
        }
        mem.finish().map(|_| ())
    }

    /// Reads the regions saved whole into their slots again (target held).
    fn reread_whole(&mut self, t: &mut Target, mem: &Mem) -> Result<()> {
        let pages: Vec<(u64, u64)> = {
            let Some(index) = t.image.as_ref().and_then(|i| i.index.as_ref()) else {
                return Ok(());
            };
            let image = t.image.as_ref().expect("indexed");
            whole_pages(&image.regions)
                .filter_map(|a| index.by_addr.get(&a).map(|&s| (a, s)))
                .collect()
        };
        let store = t
            .store
            .as_mut()
            .ok_or_else(|| Error::new("no page store"))?;
        let (hold, pid, stat) = (self.open_hold.as_ref(), t.pid, t.files.stat.as_ref());
        let (open_held, opens) = (&mut t.open_held, &mut t.opens);
        let mut mem = Access::new(mem, self.force, move || {
            open_to_stop(hold, open_held, opens, pid, stat)
        });
        // Runs of consecutive pages in consecutive slots, as saved: one
        // call for all of them.
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        for &(a, s) in &pages {
            match runs.last_mut() {
                Some((ra, rs, n)) if (*ra + *n * PAGE, *rs + *n) == (a, s) => *n += 1,
                _ => runs.push((a, s, 1)),
            }
        }
        let slots: Vec<(u64, u64)> = runs.iter().map(|&(_, s, n)| (s, n)).collect();
        let bufs = store.runs_mut(&slots)?;
        mem.read_many(runs.iter().map(|&(a, _, _)| a).zip(bufs).collect())?;
        mem.finish().map(|_| ())
    }

    /// An incremental checkpoint (target held): the listed dirty pages, and
    /// those a scan finds written without a fault, re-armed and merged
    /// into the image. BPF copied the list into the top `c.saved` free
    /// slots if it could; the rest is read here, after re-arming.
    pub(super) fn checkpoint_dirty(&mut self, t: &mut Target, c: &Checkpoint) -> Result<Merged> {
        if c.stale != Stale::No || !self.armed(t) {
            return Err(Error::new("incremental checkpoint out of step"));
        }
        let pre = self.window()?;
        let n = self.probes.state(StateField::NDirty)?;
        let listed = self.probes.dirty_list(n);
        // The list is short: the tracker's scan finds the rest (BPF copied
        // nothing then).
        let short = self.short_list(n)?;
        let scanned = pre.scan() || short;
        let taken = self.take_free_top(t, c.saved as usize)?;
        let mut dirty = listed.clone();
        // Faults anywhere list pages (a stack after a fork): only the
        // image's tracked regions are armed and indexed, and only they are
        // scanned (the mappings as last read may count a region untracked
        // that was armed: see restore_dirty).
        let tracked = t
            .image
            .as_ref()
            .map(|i| i.regions.clone())
            .unwrap_or_default();
        let tr = t.tracker.as_mut().ok_or_else(|| Error::new("no tracker"))?;
        let uffd = tr.mechanism() == Mechanism::Uffd;
        if scanned {
            dirty.extend(tr.written(&tracked)?);
        }
        dirty.sort_unstable();
        dirty.dedup();
        dirty.retain(|&a| in_tracked(&tracked, a));
        // A userfaultfd scan protected what it found already (the listed
        // pages among it). Pages the re-arm finds written unseen are read
        // below with the others.
        if !(scanned && uffd) {
            let unseen = tr.rearm(&dirty, &tracked)?;
            if !unseen.is_empty() {
                dirty.extend(unseen);
                dirty.sort_unstable();
            }
        }
        let quiet = self.quiet(pre)?;
        // BPF's copies stand if nothing could write them before the re-arm.
        let trusted = quiet && c.gup == pre.gup && !t.late_hold;
        let res = t.residency(self.zero_pfn)?;
        let mem = t.mem()?;
        let mut m = Merged::default();
        let mut copied = BTreeSet::new();
        for (slot, &addr) in taken.into_iter().zip(&listed) {
            let a = t.store.as_ref().map_or(0, |s| s.addr(slot));
            if trusted && a == addr && in_tracked(&tracked, addr) {
                m.bpf += 1;
                self.place(t, addr, slot)?;
                copied.insert(addr);
            } else {
                self.release_slot(t, slot)?;
            }
        }
        for &addr in dirty.iter().filter(|a| !copied.contains(a)) {
            self.complete_page(t, &res, &mem, addr, &mut m)?;
        }
        self.reread_whole(t, &mem)?;
        // Written without a fault the probes saw: recorded as written, as
        // every page of the image must be (see write_slots).
        if dirty.len() > listed.len() {
            let seen: BTreeSet<u64> = listed.iter().copied().collect();
            self.mark_written(t.pid, dirty.iter().copied().filter(|a| !seen.contains(a)))?;
        }
        // Soft-dirty re-arms the whole process: a page written meanwhile
        // outside the set may be wiped. A userfaultfd re-arms only the set,
        // all of which was read after.
        let rearmed = if short {
            Rearmed::Scanned(&tracked)
        } else {
            Rearmed::Pages(&dirty)
        };
        self.settle(t, pre, quiet, rearmed, !uffd)?;
        self.top_up_free(t)?;
        self.publish_incremental(t)?;
        Ok(m)
    }

    /// Page `addr` was dirtied and BPF did not copy it: residency decides
    /// whether it holds data (read it) or is blank now.
    fn complete_page(
        &mut self,
        t: &mut Target,
        res: &Residency,
        mem: &Mem,
        addr: u64,
        m: &mut Merged,
    ) -> Result<()> {
        let Some(kind) = region_kind(t, addr) else {
            // Not in the image's regions (a scan of a newer table): nothing
            // of the image is there.
            return Ok(());
        };
        let run = res.runs(addr, addr + PAGE)?.first().copied();
        let holds_data = run.is_some_and(|r| r.may_hold_data(kind));
        let guard = run.is_some_and(|r| r.flags & P_GUARD != 0);
        if guard || !holds_data {
            self.unplace(t, addr, (!guard).then_some(kind == Kind::File))?;
            m.blanked += 1;
            return Ok(());
        }
        let slot = self.take_slot(t)?;
        let store = t
            .store
            .as_mut()
            .ok_or_else(|| Error::new("no page store"))?;
        // An inaccessible page is read as the tracer where only it may.
        let read = {
            let (hold, pid, stat) = (self.open_hold.as_ref(), t.pid, t.files.stat.as_ref());
            let (open_held, opens) = (&mut t.open_held, &mut t.opens);
            let mut mem = Access::new(mem, self.force, move || {
                open_to_stop(hold, open_held, opens, pid, stat)
            });
            let page = store.pages_mut(slot, 1)?;
            mem.read(addr, page).and_then(|()| mem.finish().map(|_| ()))
        };
        match read {
            Ok(()) => {}
            Err(e) => {
                self.release_slot(t, slot)?;
                return Err(e.context(format!("read dirtied page {addr:#x}")));
            }
        }
        store.set_addr(slot, addr)?;
        m.user += 1;
        self.place(t, addr, slot)
    }

    /// Publishes an image updated in place: its extent, its blank ranges,
    /// and the free slots the probes may fill next.
    fn publish_incremental(&mut self, t: &mut Target) -> Result<()> {
        let Some(image) = t.image.as_ref() else {
            return Ok(());
        };
        let rows: Vec<(u64, u64, u64)> = image
            .blank
            .iter()
            .map(|b| (b.start, b.pages, if b.file { abi::R_FILE } else { 0 }))
            .collect();
        self.cfg.image_slots = image.slots;
        self.cfg.nzero =
            u32::try_from(rows.len()).map_err(|_| Error::new("too many blank ranges"))?;
        self.cfg.zero_pages = image.blank.iter().map(|b| b.pages).sum();
        if t.tracker
            .as_ref()
            .is_some_and(|tr| tr.mechanism() == Mechanism::Uffd)
        {
            self.cfg.flags |= abi::F_WP_PER_PAGE;
        } else {
            self.cfg.flags &= !abi::F_WP_PER_PAGE;
        }
        let version = self
            .probes
            .publish(&mut self.cfg, |tb| tb.zero_ranges(&rows))?;
        t.published(version);
        Ok(())
    }

    /// `F_SINGLE_THREAD` as the target is now (held, or about to be served).
    pub(super) fn set_thread_flag(&mut self, t: &Target) {
        if t.threads() == Some(1) {
            self.cfg.flags |= abi::F_SINGLE_THREAD;
        } else {
            self.cfg.flags &= !abi::F_SINGLE_THREAD;
        }
    }

    /// An incremental restore from user space (the target held): the pages
    /// dirtied since the checkpoint, saved ones `(slot, addr)` to write back
    /// and blank ones to blank. `None` when the dirty set is not known as a
    /// list: then everything is restored.
    pub(super) fn restore_dirty(
        &mut self,
        t: &mut Target,
        image: &Image,
        r: &Restore,
    ) -> Result<Option<RestoredDirty>> {
        let partial = r.partial;
        let Some(index) = image.index.as_ref() else {
            return Ok(None);
        };
        if partial || t.tracker.is_none() || self.layout_moved()? {
            return Ok(None);
        }
        let uffd = t
            .tracker
            .as_ref()
            .is_some_and(|tr| tr.mechanism() == Mechanism::Uffd);
        let Some((mut dirty, short)) = self.listed(uffd)? else {
            return Ok(None);
        };
        let pre = self.window()?;
        // The image's regions, as armed: the mappings as last read may
        // differ in which are tracked (a private file mapping read while
        // writable is not, yet was armed while read-only).
        if (pre.scan() || short)
            && let Some(tr) = t.tracker.as_mut()
        {
            dirty.extend(tr.written(&image.regions)?);
        }
        dirty.sort_unstable();
        dirty.dedup();
        dirty.retain(|&a| in_tracked(&image.regions, a));
        let (mut saved, blank) = Self::split_dirty(image, &dirty);
        // Regions saved whole are restored whole, as without tracking.
        saved.extend(
            whole_pages(&image.regions).filter_map(|a| index.by_addr.get(&a).map(|&s| (s, a))),
        );
        saved.sort_unstable_by_key(|&(_, a)| a);
        saved.dedup();
        // The first entries of the list as the probe saw it at the trigger.
        let mut since_cleared = self.probes.dirty_list(r.since_cleared);
        since_cleared.sort_unstable();
        Ok(Some(RestoredDirty {
            dirty,
            saved,
            blank,
            pre,
            scanned: short.then(|| image.regions.clone()),
            regions: image.regions.clone(),
            since_cleared,
        }))
    }

    /// After an incremental restore wrote `d.dirty`: clean again. A write
    /// from elsewhere overlapping it may have landed after ours and been
    /// re-armed away: then everything, next time. Returns the pages the
    /// re-arm found written outside `d.dirty` (protected again, not yet
    /// restored: see `restore_unseen`).
    pub(super) fn rearm_after_restore(
        &mut self,
        t: &mut Target,
        d: &RestoredDirty,
    ) -> Result<Vec<u64>> {
        let mut unseen = Vec::new();
        if let Some(tr) = t.tracker.as_mut() {
            unseen = tr.rearm(&d.dirty, &d.regions)?;
        }
        let quiet = self.quiet(d.pre)?;
        let left: Vec<u64>;
        let rearmed = match &d.scanned {
            Some(r) => Rearmed::Scanned(r),
            None if d.since_cleared.is_empty() => Rearmed::Pages(&d.dirty),
            None => {
                left = d
                    .dirty
                    .iter()
                    .filter(|a| d.since_cleared.binary_search(a).is_err())
                    .copied()
                    .collect();
                Rearmed::Pages(&left)
            }
        };
        self.settle(t, d.pre, quiet, rearmed, true)?;
        if !unseen.is_empty() {
            self.report().detail(
                "unseen_writes",
                &format!(
                    "pid {}: {} pages were written without a fault the probes saw; restored too",
                    t.pid,
                    unseen.len()
                ),
                &[
                    ("pid", J::N(t.pid as u64)),
                    ("pages", J::N(unseen.len() as u64)),
                ],
            );
        }
        Ok(unseen)
    }

    /// Pages written back after the re-arm of a restore (`unseen`): clean
    /// again, one ioctl per run (they are few), and no longer counted as
    /// changed since the checkpoint (or the probes would not list them
    /// when next written).
    pub(super) fn clean_unseen(&mut self, t: &mut Target, unseen: &[u64]) -> Result<()> {
        if let Some(tr) = t.tracker.as_mut() {
            let runs: Vec<(u64, u64)> = crate::ckpt::dirty::page_runs(unseen).collect();
            tr.rearm_runs(&runs)?;
        }
        let image = self.image_gen()?;
        self.probes.bitmaps().clear_since(t.pid, image, unseen)
    }

    /// Saved `(slot, addr)` and blank `(addr, file)` pages of the image
    /// among `pages` (ascending); pages of neither are not the image's.
    pub(super) fn split_dirty(image: &Image, pages: &[u64]) -> (Saved, Blank) {
        let mut saved = Vec::new();
        let mut blank = Vec::new();
        let Some(index) = image.index.as_ref() else {
            return (saved, blank);
        };
        for &a in pages {
            if let Some(&slot) = index.by_addr.get(&a) {
                saved.push((slot, a));
            } else if let Some(file) = blank_contains(&image.blank, a) {
                blank.push((a, file));
            }
        }
        (saved, blank)
    }

    /// After a restore that wrote every saved page and blanked every blank
    /// page that held data (the target held; `pre` read before it began):
    /// all clean again.
    pub(super) fn rearm_after_full_restore(
        &mut self,
        t: &mut Target,
        image: &Image,
        pre: Window,
    ) -> Result<()> {
        if self.layout_moved()? {
            // Memory came or went since the image: its regions are not all
            // there to arm. Everything, until a checkpoint arms anew.
            return self.probes.set_state(StateField::Rescan, 1);
        }
        let Some(tr) = t.tracker.as_mut() else {
            return Ok(());
        };
        tr.arm_all(&image.regions)?;
        let quiet = self.quiet(pre)?;
        self.settle(t, pre, quiet, Rearmed::All(&image.regions), true)
    }

    /// Whether the target's mappings changed since the image was taken.
    fn layout_moved(&self) -> Result<bool> {
        Ok(self.probes.state(StateField::LayoutSeq)? != self.cfg.image_seq)
    }

    /// User space has read every page that holds data, the writes from
    /// elsewhere counted in `pre` among them (unless one was under way).
    pub(super) fn ack_scanned(&mut self, pre: Window) -> Result<()> {
        if pre.inflight == 0 {
            self.probes.set_state(StateField::GupAcked, pre.gup)?;
        }
        Ok(())
    }
}

/// Which pages a request re-armed.
enum Rearmed<'a> {
    Pages(&'a [u64]),
    /// Every page of these regions.
    All(&'a [Region]),
    /// Every page written since the last re-arm, as the tracker's scan of
    /// these regions found them: all of their pages are clean now.
    Scanned(&'a [Region]),
}

/// Pages of the image's regions that are saved whole at every request
/// (not tracked page by page: others may write them).
fn whole_pages(regions: &[Region]) -> impl Iterator<Item = u64> + '_ {
    regions
        .iter()
        .filter(|r| !r.tracked)
        .flat_map(|r| (r.start..r.end).step_by(PAGE as usize))
}

/// The pages an incremental restore writes: saved ones `(slot, addr)`, and
/// blank ones `(addr, file)` to zero or read back.
pub(super) struct RestoredDirty {
    pub dirty: Vec<u64>,
    pub saved: Vec<(u64, u64)>,
    pub blank: Vec<(u64, bool)>,
    pre: Window,
    /// The image's regions, if the probes' list was short and the
    /// tracker's scan of them completed it.
    scanned: Option<std::rc::Rc<Vec<Region>>>,
    /// The image's regions (those armed).
    regions: std::rc::Rc<Vec<Region>>,
    /// Pages whose `since` bits the probe cleared already (ascending).
    since_cleared: Vec<u64>,
}

/// Whether `addr` lies in one of the tracked `regions` (ascending).
fn in_tracked(regions: &[Region], addr: u64) -> bool {
    let i = regions.partition_point(|r| r.end <= addr);
    regions
        .get(i)
        .is_some_and(|r| r.tracked && r.contains(addr))
}

fn region_kind(t: &Target, addr: u64) -> Option<Kind> {
    let i = t.regions.partition_point(|r| r.end <= addr);
    t.regions
        .get(i)
        .filter(|r| r.contains(addr))
        .map(|r| r.kind)
}

/// Why the target's memory may already be written without faults, from its
/// open descriptors (set up before the probes could see it).
fn bypassing_fds(pid: i32) -> Option<String> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for e in dir.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        let why = match &*link {
            "anon_inode:[io_uring]" => "it has an io_uring",
            "anon_inode:[aio]" | "[aio]" => "it has an AIO context",
            "anon_inode:[userfaultfd]" => "it has a userfaultfd of its own",
            _ => continue,
        };
        return Some(format!(
            "{why}: writes into its memory may bypass page faults"
        ));
    }
    None
}
