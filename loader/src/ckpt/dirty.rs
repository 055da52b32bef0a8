//! Dirty tracking with re-arming: after a checkpoint or restore, the pages
//! of the tracked regions count as clean again, so that the next request
//! learns exactly which pages changed since, not which were ever written.
//!
//! - **userfaultfd** (`UFFD_FEATURE_WP_ASYNC`): a userfaultfd created in the
//!   target (it cannot be made from outside) and fetched into bpfckpt;
//!   registered for write protection over the tracked regions. A write to a
//!   protected page unprotects it with a write fault the probes see;
//!   `PAGEMAP_SCAN` lists (and protects again) every page written since,
//!   also those written without a fault in the target's context.
//! - **soft-dirty** (`CONFIG_MEM_SOFT_DIRTY`): `/proc/PID/clear_refs` `4`
//!   clears the whole process's soft-dirty bits and write-protects its pages;
//!   pagemap bit 55 says which were written since.
//!
//! Without either, the written-page bitmaps only say "written at least
//! once", and every checkpoint copies all of that.

use super::procfs::{PAGE, Region};
use crate::{Error, Result};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

/// Which mechanism to use (`--dirty-tracking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// soft-dirty where the kernel has it, else userfaultfd, else none.
    Auto,
    SoftDirty,
    Uffd,
    /// No re-arming: the written-page bitmaps alone.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Uffd,
    SoftDirty,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Uffd => "userfaultfd write-protect",
            Mechanism::SoftDirty => "soft-dirty",
        }
    }

    /// The name in JSON output and on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Mechanism::Uffd => "uffd",
            Mechanism::SoftDirty => "soft-dirty",
        }
    }
}

/// Pagemap bit 55: the page was written since soft-dirty was cleared.
const PM_SOFT_DIRTY: u64 = 1 << 55;
/// `PAGEMAP_SCAN` category `PAGE_IS_WRITTEN`.
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// Whether this kernel keeps soft-dirty bits. Asked by trying them on a
/// page of our own: `clear_refs` accepts `4` even without
/// `CONFIG_MEM_SOFT_DIRTY` (and then does nothing), so the write being
/// accepted proves nothing.
pub fn soft_dirty_available() -> bool {
    soft_dirty_works().unwrap_or(false)
}

fn soft_dirty_works() -> Result<bool> {
    // Two pages' worth, so that one whole page lies inside.
    let mut buf = vec![0u8; 2 * PAGE as usize];
    let at = (buf.as_ptr() as u64).next_multiple_of(PAGE);
    let i = (at - buf.as_ptr() as u64) as usize;
    let pagemap = File::open("/proc/self/pagemap")?;
    let entry = |buf: &[u8]| -> Result<u64> {
        std::hint::black_box(buf);
        let mut e = [0u8; 8];
        pagemap.read_exact_at(&mut e, at / PAGE * 8)?;
        Ok(u64::from_le_bytes(e))
    };
    std::hint::black_box(&mut buf)[i] = 1;
    if std::fs::write("/proc/self/clear_refs", b"4").is_err() {
        return Ok(false);
    }
    let clean = entry(&buf)? & PM_SOFT_DIRTY == 0;
    std::hint::black_box(&mut buf)[i] = 2;
    let dirty = entry(&buf)? & PM_SOFT_DIRTY != 0;
    Ok(clean && dirty)
}

/// The mechanism `auto` picks on this kernel, or why there is none (the
/// written-page bitmaps alone then). Asked of the kernel with a page and a
/// userfaultfd of our own; whether a given target lets itself be injected
/// is only known when it runs.
pub fn available() -> std::result::Result<Mechanism, String> {
    if soft_dirty_available() {
        return Ok(Mechanism::SoftDirty);
    }
    let flags = libc::O_CLOEXEC as u64 | crate::ckpt::inject::UFFD_USER_MODE_ONLY;
    let uffd = crate::os::userfaultfd(flags).map_err(|e| format!("no soft-dirty bits, and {e}"))?;
    let want = crate::os::UFFD_FEATURE_WP_ASYNC;
    match crate::os::uffdio_api(uffd.as_fd(), want) {
        Ok((got, _)) if got & want == want => {}
        Ok(_) | Err(_) => {
            return Err(
                "no soft-dirty bits and no asynchronous userfaultfd write protection (Linux 6.7+)"
                    .into(),
            );
        }
    }
    let pagemap =
        File::open("/proc/self/pagemap").map_err(|e| format!("/proc/self/pagemap: {e}"))?;
    if !crate::os::pagemap_scan_supported(&pagemap) {
        return Err("no soft-dirty bits and no PAGEMAP_SCAN (Linux 6.7+)".into());
    }
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").unwrap_or_default();
    if yama.trim() == "3" {
        return Err("no soft-dirty bits, and Yama forbids ptrace (ptrace_scope 3), which the userfaultfd is injected with".into());
    }
    Ok(Mechanism::Uffd)
}

/// A re-arming tracker for one target (one program image).
pub struct Tracker {
    pid: i32,
    mechanism: Mechanism,
    /// The target's userfaultfd (fetched into bpfckpt), for `Uffd`.
    uffd: Option<OwnedFd>,
    /// `/proc/PID/pagemap`, opened at the first scan.
    pagemap: Option<File>,
}

impl Tracker {
    pub fn soft_dirty(pid: i32) -> Self {
        Self {
            pid,
            mechanism: Mechanism::SoftDirty,
            uffd: None,
            pagemap: None,
        }
    }

    /// A tracker over `uffd`, a userfaultfd created in the target.
    pub fn uffd(pid: i32, uffd: OwnedFd) -> Result<Self> {
        // Not WP_UNPOPULATED: its markers on absent pages look like swap
        // entries to pagemap, and cost page tables over sparse mappings; a
        // first write to an absent page faults anyway.
        crate::os::uffdio_api(uffd.as_fd(), crate::os::UFFD_FEATURE_WP_ASYNC)
            .map_err(|e| e.context("asynchronous write protection on the target's userfaultfd"))?;
        Ok(Self {
            pid,
            mechanism: Mechanism::Uffd,
            uffd: Some(uffd),
            pagemap: None,
        })
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Every page of `regions` (the mappings as they are now) is clean from
    /// now on (after a checkpoint that copied them all, or a restore that
    /// wrote them all). Each is registered again: a mapping may have been
    /// replaced by another at the same addresses since (registering a range
    /// already registered is a no-op).
    pub fn arm_all(&mut self, regions: &[Region]) -> Result<()> {
        match self.mechanism {
            Mechanism::SoftDirty => self.clear_refs(),
            Mechanism::Uffd => {
                let fd = self.uffd_fd()?;
                for r in regions.iter().filter(|r| r.tracked) {
                    let len = r.end - r.start;
                    crate::os::uffdio_register(
                        fd,
                        r.start,
                        len,
                        crate::os::UFFDIO_REGISTER_MODE_WP,
                    )
                    .map_err(|e| {
                        e.context(format!(
                            "register {:#x}-{:#x} for write protection",
                            r.start, r.end
                        ))
                    })?;
                    crate::os::uffd_writeprotect(fd, r.start, len).map_err(|e| {
                        e.context(format!("write-protect {:#x}-{:#x}", r.start, r.end))
                    })?;
                }
                Ok(())
            }
        }
    }

    /// `pages` (ascending, in the tracked `regions`) are clean again: they
    /// hold what the image holds. Returns the pages found written outside
    /// `pages` and protected again too (written unseen: the caller must
    /// take them as dirty).
    ///
    /// With a userfaultfd, each run is one ioctl, and each ioctl one TLB
    /// flush on every CPU the target ran on; many runs close together are
    /// instead protected by one `PAGEMAP_SCAN` of the span they lie in,
    /// which protects again only what was written there, and says what.
    pub fn rearm(&mut self, pages: &[u64], regions: &[Region]) -> Result<Vec<u64>> {
        if self.mechanism == Mechanism::SoftDirty {
            self.clear_refs()?;
            return Ok(Vec::new());
        }
        let runs: Vec<(u64, u64)> = page_runs(pages).collect();
        if runs.len() < SCAN_RUNS {
            self.rearm_runs(&runs)?;
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for (span, members) in spans(&runs, regions) {
            match (span, members) {
                (Some((start, end)), m) if m.len() > 1 => {
                    let pagemap = self.pagemap()?;
                    scan_written(pagemap, start, end, &mut found)?;
                }
                (_, m) => self.rearm_runs(m)?,
            }
        }
        Ok(found
            .into_iter()
            .filter(|a| pages.binary_search(a).is_err())
            .collect())
    }

    /// Each run `(start, pages)` is clean again: one ioctl each.
    pub fn rearm_runs(&mut self, runs: &[(u64, u64)]) -> Result<()> {
        if self.mechanism == Mechanism::SoftDirty {
            return self.clear_refs();
        }
        let fd = self.uffd_fd()?;
        for &(start, n) in runs {
            crate::os::uffd_writeprotect(fd, start, n * PAGE)
                .map_err(|e| e.context(format!("write-protect {start:#x}+{n} pages")))?;
        }
        Ok(())
    }

    /// The target's pagemap, opened once per program image.
    fn pagemap(&mut self) -> Result<&File> {
        if self.pagemap.is_none() {
            let p = format!("/proc/{}/pagemap", self.pid);
            let f = File::open(&p).map_err(|e| Error::from(e).context(format!("open {p}")))?;
            self.pagemap = Some(f);
        }
        Ok(self.pagemap.as_ref().expect("just opened"))
    }

    /// The pages of the tracked `regions` written since they were armed,
    /// whoever wrote them (a write without a fault in the target's context
    /// too), ascending. Userfaultfd protects them again in the same pass.
    pub fn written(&mut self, regions: &[Region]) -> Result<Vec<u64>> {
        let mechanism = self.mechanism;
        let pagemap = self.pagemap()?;
        let mut out = Vec::new();
        for r in regions.iter().filter(|r| r.tracked) {
            match mechanism {
                Mechanism::Uffd => scan_written(pagemap, r.start, r.end, &mut out)?,
                Mechanism::SoftDirty => read_soft_dirty(pagemap, r.start, r.end, &mut out)?,
            }
        }
        Ok(out)
    }

    fn uffd_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        self.uffd
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or_else(|| Error::new("no userfaultfd"))
    }

    fn clear_refs(&self) -> Result<()> {
        let p = format!("/proc/{}/clear_refs", self.pid);
        std::fs::write(&p, b"4").map_err(|e| Error::from(e).context(format!("write 4 to {p}")))
    }
}

/// `PAGEMAP_SCAN` for written pages in `[start, end)`, protecting them again.
fn scan_written(pagemap: &File, start: u64, end: u64, out: &mut Vec<u64>) -> Result<()> {
    use crate::os::{PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, pagemap_scan_with};
    let mut at = start;
    while at < end {
        let got = pagemap_scan_with(
            pagemap,
            at,
            end,
            PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            PAGE_IS_WRITTEN,
            0,
            PAGE_IS_WRITTEN,
        )
        .map_err(|e| e.context(format!("scan {at:#x}-{end:#x} for written pages")))?;
        for &(s, e, _) in &got.regions {
            out.extend((s..e).step_by(PAGE as usize));
        }
        if got.walk_end <= at {
            break;
        }
        at = got.walk_end;
    }
    Ok(())
}

/// Pages of `[start, end)` whose pagemap entry has the soft-dirty bit.
fn read_soft_dirty(pagemap: &File, start: u64, end: u64, out: &mut Vec<u64>) -> Result<()> {
    let mut buf = vec![0u8; 8 * 4096];
    let mut at = start;
    while at < end {
        let n = ((end - at) / PAGE).min(4096);
        let bytes = &mut buf[..(n * 8) as usize];
        pagemap
            .read_exact_at(bytes, at / PAGE * 8)
            .map_err(|e| Error::from(e).context(format!("read pagemap at {at:#x}")))?;
        for (i, c) in bytes.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            if e & PM_SOFT_DIRTY != 0 {
                out.push(at + i as u64 * PAGE);
            }
        }
        at += n * PAGE;
    }
    Ok(())
}

/// From this many runs on, `rearm` scans spans instead.
const SCAN_RUNS: usize = 8;
/// Runs at most this many pages apart share a scan: walking a page table
/// entry costs a few nanoseconds, an ioctl with its TLB flush microseconds.
pub const SCAN_GAP: u64 = 512;

/// A span to scan (`None`: none, run by run) and the runs `(start, pages)`
/// it covers.
type Span<'a> = (Option<(u64, u64)>, &'a [(u64, u64)]);

/// Groups ascending runs into spans to scan: runs in one tracked region and
/// at most `SCAN_GAP` pages apart. A group without a region (`None`) is
/// re-armed run by run.
fn spans<'a>(runs: &'a [(u64, u64)], regions: &[Region]) -> Vec<Span<'a>> {
    let region_of = |a: u64| {
        let i = regions.partition_point(|r| r.end <= a);
        regions
            .get(i)
            .filter(|r| r.tracked && r.contains(a))
            .map(|r| (r.start, r.end))
    };
    let mut out: Vec<Span<'a>> = Vec::new();
    let mut first = 0;
    for i in 1..=runs.len() {
        let split = i == runs.len() || {
            let (ps, pn) = runs[i - 1];
            let (s, _) = runs[i];
            let region = region_of(s);
            region.is_none()
                || region != region_of(runs[first].0)
                || (s - (ps + pn * PAGE)) / PAGE > SCAN_GAP
        };
        if split {
            let group = &runs[first..i];
            let (s, _) = group[0];
            let (ls, ln) = group[group.len() - 1];
            let span = region_of(s).map(|(_, end)| (s, (ls + ln * PAGE).min(end)));
            out.push((span, group));
            first = i;
        }
    }
    out
}

/// Runs of consecutive pages of an ascending list, as `(start, pages)`.
pub fn page_runs(pages: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let start = *pages.get(i)?;
        let mut n = 1;
        while pages.get(i + n as usize) == Some(&(start + n * PAGE)) {
            n += 1;
        }
        i += n as usize;
        Some((start, n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's build configuration, from /proc/config.gz or /boot.
    fn kernel_config() -> String {
        if let Ok(out) = std::process::Command::new("zcat")
            .arg("/proc/config.gz")
            .output()
            && out.status.success()
        {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let p = format!("/boot/config-{}", release.trim());
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("no kernel config to compare with ({p}: {e})"))
    }

    #[test]
    fn soft_dirty_is_detected_by_trying_it() {
        // Without CONFIG_MEM_SOFT_DIRTY clear_refs still accepts "4": the
        // answer must come from the bits themselves.
        let built = kernel_config()
            .lines()
            .any(|l| l == "CONFIG_MEM_SOFT_DIRTY=y");
        assert_eq!(soft_dirty_available(), built);
    }

    #[test]
    fn runs_of_pages() {
        let p = PAGE;
        let v = [p, 2 * p, 3 * p, 7 * p, 9 * p, 10 * p];
        assert_eq!(
            page_runs(&v).collect::<Vec<_>>(),
            vec![(p, 3), (7 * p, 1), (9 * p, 2)]
        );
        assert_eq!(page_runs(&[]).count(), 0);
    }

    #[test]
    fn runs_close_together_in_one_region_share_a_span() {
        let p = PAGE;
        let region = |start: u64, end: u64, tracked: bool| Region {
            start: start * p,
            end: end * p,
            kind: crate::ckpt::procfs::Kind::Anon,
            tracked,
            file: None,
        };
        let regions = [
            region(0, 2000, true),
            region(2000, 3000, true),
            region(3000, 4000, false),
        ];
        let runs = [
            (10 * p, 2),
            (100 * p, 1),
            // More than SCAN_GAP pages after the last: a span of its own.
            (700 * p, 3),
            (800 * p, 1),
            // Next region: never scanned together with the one before.
            (2001 * p, 1),
            // Untracked: no span, run by run.
            (3500 * p, 1),
        ];
        let got: Vec<(Option<(u64, u64)>, usize)> = spans(&runs, &regions)
            .into_iter()
            .map(|(s, m)| (s, m.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some((10 * p, 101 * p)), 2),
                (Some((700 * p, 801 * p)), 2),
                (Some((2001 * p, 2002 * p)), 1),
                (None, 1),
            ]
        );
    }
}
