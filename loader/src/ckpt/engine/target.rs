//! The state of one served target: its region tables (with the versions
//! they were published under), its thread stacks, its page store and the
//! image of its last checkpoint.

use crate::ckpt::procfs::{Mapping, PAGE, Region};
use crate::ckpt::report::Stats;
use crate::ckpt::storage::Storage;
use std::collections::VecDeque;
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
    pub stats: Stats,
}

impl Target {
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
    pub slots: u64,
    pub blank: Vec<Blank>,
    pub regions: Rc<Vec<Region>>,
}
