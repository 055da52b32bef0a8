//! The state of one served target: its region tables (with the versions
//! they were published under), its thread stacks, its page store and the
//! image of its last checkpoint.

use super::openhold::HeldOpen;
use crate::Result;
use crate::ckpt::dirty::Tracker;
use crate::ckpt::memio::Mem;
use crate::ckpt::procfs::{self, Mapping, PAGE, Region, Residency, StatFile, SyscallFile, TaskDir};
use crate::ckpt::report::Stats;
use crate::ckpt::storage::Storage;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fs::File;
use std::rc::Rc;

/// Region tables kept for checkpoints that report an older config version.
const HISTORY: usize = 16;

/// One target being served.
pub(crate) struct Target {
    pub pid: i32,
    pub regions: Rc<Vec<Region>>,
    /// `/proc/PID/maps` as read for `regions` (valid while the layout
    /// sequence number still equals `applied_seq`).
    pub maps: Vec<Mapping>,
    pub applied_seq: u64,
    /// The region table under each config version published, newest last:
    /// an unheld checkpoint's copy is read against the table it walked.
    pub history: VecDeque<(u64, Rc<Vec<Region>>)>,
    /// `(thread id, an address inside its stack)` of each thread the
    /// target's `clone` calls started, while the thread lives.
    pub thread_stacks: Vec<(u32, u64)>,
    /// Mappings already reported as holding a stack pointer without being
    /// a thread stack the target created.
    pub odd_stacks_reported: std::collections::HashSet<u64>,
    pub layout_dirty: bool,
    /// Consecutive failed attempts to read the layout.
    pub layout_failures: u32,
    /// `State::lost` when serving began.
    pub lost_seen: u64,
    pub store: Option<Storage>,
    pub image: Option<Image>,
    /// Re-arming dirty tracking, once set up for the current program image.
    pub tracker: Option<Tracker>,
    /// `/proc/PID` files kept open (see [`ProcFiles`]).
    pub files: ProcFiles,
    /// Its opens in the trigger directory waiting for an answer, oldest
    /// first (ckpt/engine/openhold.rs).
    pub opens: VecDeque<HeldOpen>,
    /// The open it is held in for the request being served.
    pub open_held: Option<HeldOpen>,
    /// The request said "held in its open" but no open came: the target
    /// ran on and was stopped late, so nothing copied at the trigger is to
    /// be trusted.
    pub late_hold: bool,
    /// The last wait for events returned some (see `next_events`).
    pub busy: bool,
    pub stats: Stats,
}

/// Files of `/proc/PID` kept open while a target is served, instead of
/// opened at each request: `stat` for good, `mem` and `pagemap` for the
/// current program image (they stay bound to the address space they were
/// opened on; an exec drops them).
pub(crate) struct ProcFiles {
    pub stat: Option<StatFile>,
    task: Option<TaskDir>,
    pub syscall: Option<SyscallFile>,
    mem: Option<Rc<Mem>>,
    pagemap: Option<Rc<File>>,
}

impl ProcFiles {
    pub fn new(pid: i32) -> Self {
        Self {
            stat: StatFile::open(pid),
            task: TaskDir::open(pid),
            syscall: SyscallFile::open(pid),
            mem: None,
            pagemap: None,
        }
    }

    /// The program image changed.
    pub fn exec(&mut self) {
        self.mem = None;
        self.pagemap = None;
    }
}

impl Target {
    /// The main thread's stack pointer if it is blocked in the kernel.
    pub fn main_stack_pointer(&self) -> Option<u64> {
        match &self.files.syscall {
            Some(f) => f.stack_pointer(),
            None => procfs::main_stack_pointer(self.pid),
        }
    }

    pub fn mem(&mut self) -> Result<Rc<Mem>> {
        if self.files.mem.is_none() {
            self.files.mem = Some(Rc::new(Mem::open(self.pid)?));
        }
        Ok(self.files.mem.clone().expect("just opened"))
    }

    pub fn residency(&mut self, zero_pfn: Option<u64>) -> Result<Residency> {
        if self.files.pagemap.is_none() {
            self.files.pagemap = Some(Rc::new(procfs::open_pagemap(self.pid)?));
        }
        let pagemap = self.files.pagemap.clone().expect("just opened");
        Ok(Residency::over(pagemap, zero_pfn))
    }

    /// Threads of the target now (`None` if unknown).
    pub fn threads(&self) -> Option<u64> {
        if let Some(t) = &self.files.task {
            return t.threads();
        }
        match &self.files.stat {
            Some(s) => s.read().map(|(_, n)| n),
            None => procfs::thread_count(self.pid).map(|n| n as u64),
        }
    }

    /// Notes that `version` was published with the current region table.
    pub fn published(&mut self, version: u64) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back((version, self.regions.clone()));
    }

    /// The region table the probes saw under config `version`.
    pub fn table_at(&self, version: u64) -> Option<Rc<Vec<Region>>> {
        self.history
            .iter()
            .rev()
            .find(|(v, _)| *v == version)
            .map(|(_, r)| r.clone())
    }
}

/// Pages that held nothing of their own at the checkpoint: a restore
/// makes any of them written since what it was again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blank {
    pub start: u64,
    pub pages: u64,
    /// Untouched pages of a file mapping (the file's bytes), else zero.
    pub file: bool,
}

impl Blank {
    pub fn end(&self) -> u64 {
        self.start + self.pages * PAGE
    }
}

/// The image of the last checkpoint: slots `0..slots` of the store, the
/// blank ranges, and the regions they were taken from.
pub(crate) struct Image {
    /// Slots `0..slots` may hold pages of the image (a freed one's address
    /// is 0).
    pub slots: u64,
    pub blank: Vec<Blank>,
    pub regions: Rc<Vec<Region>>,
    /// Where each page is, for images updated in place (dirty tracking).
    pub index: Option<Index>,
}

/// The slot of each saved page, and the slots free for the next pages.
#[derive(Default)]
pub(crate) struct Index {
    pub by_addr: HashMap<u64, u64>,
    /// The probes' `FREE` list as it is (they take from the top).
    pub free: Vec<u64>,
    /// Free slots `FREE` has no room for.
    pub spare: Vec<u64>,
    /// The first slot never used; `Image::slots` follows it.
    pub fresh: u64,
}

/// Blank ranges as a sorted set of pages, updated page by page.
pub(crate) fn blank_contains(blank: &[Blank], addr: u64) -> Option<bool> {
    let i = blank.partition_point(|b| b.end() <= addr);
    blank.get(i).filter(|b| b.start <= addr).map(|b| b.file)
}

/// Removes page `addr` from the blank ranges (it holds data now).
pub(crate) fn blank_remove(blank: &mut Vec<Blank>, addr: u64) {
    let i = blank.partition_point(|b| b.end() <= addr);
    let Some(b) = blank.get(i).copied().filter(|b| b.start <= addr) else {
        return;
    };
    let before = (addr - b.start) / PAGE;
    let after = b.pages - before - 1;
    let mut pieces = Vec::with_capacity(2);
    if before > 0 {
        pieces.push(Blank {
            start: b.start,
            pages: before,
            file: b.file,
        });
    }
    if after > 0 {
        pieces.push(Blank {
            start: addr + PAGE,
            pages: after,
            file: b.file,
        });
    }
    blank.splice(i..=i, pieces);
}

/// Adds page `addr` to the blank ranges (it holds nothing now).
pub(crate) fn blank_insert(blank: &mut Vec<Blank>, addr: u64, file: bool) {
    let i = blank.partition_point(|b| b.end() <= addr);
    if blank.get(i).is_some_and(|b| b.start <= addr) {
        return;
    }
    blank.insert(
        i,
        Blank {
            start: addr,
            pages: 1,
            file,
        },
    );
    // Merge with the neighbours where they touch and are alike.
    if i + 1 < blank.len() && blank[i + 1].start == addr + PAGE && blank[i + 1].file == file {
        blank[i].pages += blank[i + 1].pages;
        blank.remove(i + 1);
    }
    if i > 0 && blank[i - 1].end() == addr && blank[i - 1].file == file {
        blank[i - 1].pages += blank[i].pages;
        blank.remove(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_pages_come_and_go() {
        let p = PAGE;
        let mut b = vec![Blank {
            start: 0,
            pages: 4,
            file: false,
        }];
        blank_remove(&mut b, 2 * p);
        assert_eq!(
            b,
            vec![
                Blank {
                    start: 0,
                    pages: 2,
                    file: false
                },
                Blank {
                    start: 3 * p,
                    pages: 1,
                    file: false
                }
            ]
        );
        assert_eq!(blank_contains(&b, 2 * p), None);
        assert_eq!(blank_contains(&b, 3 * p), Some(false));
        blank_insert(&mut b, 2 * p, false);
        assert_eq!(
            b,
            vec![Blank {
                start: 0,
                pages: 4,
                file: false
            }]
        );
        blank_insert(&mut b, 9 * p, true);
        blank_remove(&mut b, 0);
        blank_remove(&mut b, 3 * p);
        assert_eq!(
            b,
            vec![
                Blank {
                    start: p,
                    pages: 2,
                    file: false
                },
                Blank {
                    start: 9 * p,
                    pages: 1,
                    file: true
                }
            ]
        );
        blank_remove(&mut b, 9 * p);
        assert_eq!(b.len(), 1);
    }
}
