//! The probes as the engine sees them: loaded and attached once, every map
//! resolved once, and one place for each encoding user space shares with
//! them (the config, the region rows, the `STATE` fields, the page store
//! slots).

use super::abi::{self, Config};
use super::events::{self, Event};
use super::report::Reporter;
use super::storage::{self, Storage};
use super::touched::Bitmaps;
use super::wire;
use crate::{Error, Result};
use bpfload::load::{self, Link, LoadOptions, Loaded, MapOverride};
use bpfload::maps::{ArrayMmap, Map};
use bpfload::ringbuf::RingBuf;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// The trigger programs; `_w` variants restore with `bpf_probe_write_user`.
const TRIGGER_NAMES: [&str; 3] = ["trigger_openat", "trigger_open", "trigger_creat"];

/// Programs that keep the region table and the program image current.
const LAYOUT_NAMES: [&str; 10] = [
    "layout_mmap",
    "layout_munmap",
    "layout_mremap",
    "layout_brk",
    "layout_mprotect",
    "on_exec",
    "clone_enter",
    "clone3_enter",
    "clone_exit",
    "clone3_exit",
];

/// The probes that keep the touched-page bitmaps: without all of them
/// (the page-fault tracepoints are x86-only) every page is tried.
const TRACK_NAMES: [&str; 18] = [
    "fault_user",
    "fault_kernel",
    "madvise_enter",
    "madvise_exit",
    "mlock_enter",
    "mlock2_enter",
    "mlockall_enter",
    "mmap_enter",
    "mremap_enter",
    "gup_vm_writev",
    "gup_vm_writev_exit",
    "gup_ptrace",
    "gup_ptrace_exit",
    "gup_openat2",
    "gup_fcntl",
    "gup_io_uring_setup",
    "gup_io_setup",
    "gup_userfaultfd",
];

/// The maps user space reads, created whichever programs are loaded.
const SHARED_MAPS: [&str; 11] = [
    "EVENTS",
    "CONFIG",
    "STATE",
    "REGIONS_OUTER",
    "ZERO_OUTER",
    "ZERO_TODO",
    "DIRTY",
    "FREE",
    "PAGES_OUTER",
    "ADDRS_OUTER",
    "TOUCHED",
];

/// Which probe programs a kernel gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// The triggers copy and write in BPF (`bpf_write`: with
    /// `bpf_probe_write_user`), and writes are tracked.
    Full { bpf_write: bool },
    /// For kernels without bpf_loop, callbacks or the fetching atomics: the
    /// `_d` triggers only hold the target (user space copies and writes
    /// every page), the `_d` layout probes keep the layout current, and
    /// nothing is tracked (every page is tried).
    Degraded,
}

/// A field of the probes' `State`, read and written through its mapping.
#[derive(Debug, Clone, Copy)]
pub enum StateField {
    /// Bumped by every mapping change of the target.
    LayoutSeq,
    /// The program-image number the bitmaps are keyed with.
    ExecGen,
    /// Set once writes can no longer be tracked (mlockall, a full bitmap map).
    Untracked,
    /// 1 while a layout event is unread.
    Notified,
    /// Requests the ring buffer refused.
    Lost,
    /// Entries written to `DIRTY` since user space emptied it.
    NDirty,
    /// `since` bits were set without a `DIRTY` entry.
    DirtySpans,
    /// Bumped by a write into the target that may bypass its faults.
    Gup,
    /// The target can have its memory written without faults from now on.
    GupSticky,
    /// `Gup` as of user space's last scan for such writes.
    GupAcked,
    /// Such writes begun and not yet returned.
    GupInflight,
    /// Requests take everything until a quiet re-arm.
    Rescan,
    /// Pages may be written beyond the `DIRTY` list: scan the tracker.
    Scan,
}

impl StateField {
    fn offset(self) -> usize {
        use std::mem::offset_of;
        match self {
            StateField::LayoutSeq => offset_of!(abi::State, layout_seq),
            StateField::ExecGen => offset_of!(abi::State, exec_gen),
            StateField::Untracked => offset_of!(abi::State, untracked),
            StateField::Notified => offset_of!(abi::State, notified),
            StateField::Lost => offset_of!(abi::State, lost),
            StateField::NDirty => offset_of!(abi::State, ndirty),
            StateField::DirtySpans => offset_of!(abi::State, dirty_spans),
            StateField::Gup => offset_of!(abi::State, gup),
            StateField::GupSticky => offset_of!(abi::State, gup_sticky),
            StateField::GupAcked => offset_of!(abi::State, gup_acked),
            StateField::GupInflight => offset_of!(abi::State, gup_inflight),
            StateField::Rescan => offset_of!(abi::State, rescan),
            StateField::Scan => offset_of!(abi::State, scan),
        }
    }
}

pub struct Probes {
    // Field order is drop order: detach before the maps go.
    links: Vec<Link>,
    ring: RingBuf,
    config: ArrayMmap,
    /// `Config::version` as last published (even).
    version: u64,
    state: ArrayMmap,
    regions: Table,
    zero_ranges: Table,
    zero_todo: ArrayMmap,
    dirty: ArrayMmap,
    free: ArrayMmap,
    pages_outer: Map,
    addrs_outer: Map,
    bitmaps: Bitmaps,
    _templates: Vec<Map>,
    _loaded: Loaded,
    /// The page-fault probes are attached: writes are tracked.
    tracking: bool,
}

impl Probes {
    /// Loads the programs of `set`: the trigger set that matches the
    /// restore path, the layout probes and (full set) the tracking probes,
    /// and attaches them all. A tracking probe that cannot attach is
    /// reported once (unless `quiet_tracking`) and leaves `tracking()`
    /// false; any other failure is an error.
    pub fn load(set: Set, report: Reporter, quiet_tracking: bool) -> Result<Self> {
        let templates = inner_map_templates()?;
        let loaded = load::load(
            crate::PROBES_OBJ,
            &LoadOptions {
                programs: program_names(set),
                maps: inner_templates(&templates),
                also_maps: SHARED_MAPS.iter().map(|m| m.to_string()).collect(),
            },
        )
        .map_err(|e| super::memlock::explain(e).context("loading the probes"))?;
        let (links, attached) = attach_all(&loaded, report, quiet_tracking)?;
        let tracking = attached && set != Set::Degraded;
        let own = |name: &str| -> Result<Map> {
            let fd = loaded.map(name)?.as_fd().try_clone_to_owned()?;
            Map::from_fd(fd)
        };
        Ok(Self {
            ring: RingBuf::new(loaded.map("EVENTS")?)?,
            config: loaded.map("CONFIG")?.mmap()?,
            version: 0,
            state: loaded.map("STATE")?.mmap()?,
            regions: Table::new(own("REGIONS_OUTER")?)?,
            zero_ranges: Table::new(own("ZERO_OUTER")?)?,
            zero_todo: loaded.map("ZERO_TODO")?.mmap()?,
            dirty: loaded.map("DIRTY")?.mmap()?,
            free: loaded.map("FREE")?.mmap()?,
            pages_outer: own("PAGES_OUTER")?,
            addrs_outer: own("ADDRS_OUTER")?,
            bitmaps: Bitmaps::new(own("TOUCHED")?),
            links,
            _templates: templates,
            _loaded: loaded,
            tracking,
        })
    }

    /// Whether the touched-page tracking probes are attached.
    pub fn tracking(&self) -> bool {
        self.tracking
    }

    /// Publishes `cfg` under the seqlock; `tables` runs while the version
    /// is odd, to rewrite the region or zero-range table. A probe that ran
    /// meanwhile sees the version change and leaves its request to user
    /// space. Returns the new (even) version.
    pub fn publish(
        &mut self,
        cfg: &mut Config,
        tables: impl FnOnce(&mut Tables<'_>) -> Result<()>,
    ) -> Result<u64> {
        let odd = self.version + 1;
        let at = wire::CONFIG_VERSION_AT;
        crate::os::store_release(self.config.as_mut_slice()?, at, odd)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let result = tables(&mut Tables {
            regions: &mut self.regions,
            zero_ranges: &mut self.zero_ranges,
            pages_outer: &self.pages_outer,
            addrs_outer: &self.addrs_outer,
        });
        self.version = odd + 1;
        cfg.version = self.version;
        let bytes = wire::config_bytes(cfg);
        let mm = self.config.as_mut_slice()?;
        mm[..at].copy_from_slice(&bytes[..at]);
        mm[at + 8..bytes.len()].copy_from_slice(&bytes[at + 8..]);
        crate::os::store_release(mm, at, self.version)?;
        result.map(|()| self.version)
    }

    /// The version last published.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn state(&self, f: StateField) -> Result<u64> {
        self.state.read_u64(f.offset())
    }

    pub fn set_state(&mut self, f: StateField, v: u64) -> Result<()> {
        self.state.write_u64(f.offset(), v)
    }

    /// The first `n` entries of `ZERO_TODO` (capped at its capacity).
    pub fn zero_todo(&self, n: u64) -> impl Iterator<Item = u64> + '_ {
        let n = n.min(u64::from(abi::ZERO_TODO_MAX)) as usize;
        let todo = self.zero_todo.as_slice();
        (0..n).map(move |i| wire::u64_at(todo, i * 8))
    }

    /// The first `n` pages of the `DIRTY` list (capped at its capacity).
    pub fn dirty_list(&self, n: u64) -> Vec<u64> {
        let n = n.min(u64::from(abi::DIRTY_MAX)) as usize;
        let d = self.dirty.as_slice();
        (0..n).map(|i| wire::u64_at(d, i * 8)).collect()
    }

    /// `FREE[i]` for each `(i, slot)`.
    pub fn set_free(&mut self, entries: impl Iterator<Item = (usize, u64)>) -> Result<()> {
        let f = self.free.as_mut_slice()?;
        for (i, slot) in entries {
            if let Some(e) = f.get_mut(i * 8..i * 8 + 8) {
                e.copy_from_slice(&slot.to_ne_bytes());
            }
        }
        Ok(())
    }

    /// `FREE[i]`.
    pub fn free_slot(&self, i: usize) -> u64 {
        wire::u64_at(self.free.as_slice(), i * 8)
    }

    /// Drops the probes' reference to the page store.
    pub fn remove_store(&self) {
        let key = 0u32.to_ne_bytes();
        let _ = self.pages_outer.delete(&key);
        let _ = self.addrs_outer.delete(&key);
    }

    pub fn bitmaps(&self) -> &Bitmaps {
        &self.bitmaps
    }

    /// The event ring buffer's descriptor, to wait on with others.
    pub fn ring_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.ring.as_fd()
    }

    /// Waits up to `timeout` for events; returns those decoded.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<Event>> {
        let mut evs = Vec::new();
        self.ring.poll(Some(timeout), |rec| {
            if let Some(e) = events::decode(rec) {
                evs.push(e);
            }
        })?;
        Ok(evs)
    }
}

impl Drop for Probes {
    /// Detaching a tracepoint waits for RCU grace periods (30-60 ms per
    /// close here); closing them all at once lets those waits overlap.
    fn drop(&mut self) {
        let links = std::mem::take(&mut self.links);
        std::thread::scope(|s| {
            for l in links {
                s.spawn(move || drop(l));
            }
        });
    }
}

/// The programs of `set`, by name.
pub fn program_names(set: Set) -> Vec<String> {
    match set {
        Set::Full { bpf_write } => {
            let suffix = if bpf_write { "_w" } else { "" };
            TRIGGER_NAMES
                .iter()
                .map(|p| format!("{p}{suffix}"))
                .chain(
                    LAYOUT_NAMES
                        .iter()
                        .chain(&TRACK_NAMES)
                        .map(|s| s.to_string()),
                )
                .collect()
        }
        Set::Degraded => TRIGGER_NAMES
            .iter()
            .chain(&LAYOUT_NAMES)
            .map(|p| format!("{p}_d"))
            .collect(),
    }
}

/// Template inner maps for the probes' map-in-map outers, in the order
/// [`inner_templates`] expects: the page store's two arrays, then the
/// region and zero-range tables.
pub fn inner_map_templates() -> Result<Vec<Map>> {
    let (pages, addrs) = storage::templates()?;
    Ok(vec![pages, addrs, Table::inner(1)?, Table::inner(1)?])
}

/// Map-in-map outers are created with template inner maps.
pub fn inner_templates(t: &[Map]) -> HashMap<String, MapOverride<'_>> {
    ["PAGES_OUTER", "ADDRS_OUTER", "REGIONS_OUTER", "ZERO_OUTER"]
        .iter()
        .zip(t)
        .map(|(name, m)| {
            (
                name.to_string(),
                MapOverride {
                    max_entries: None,
                    inner_map: Some(m.as_fd()),
                },
            )
        })
        .collect()
}

/// Attaches every program; returns the links and whether tracking works.
fn attach_all(loaded: &Loaded, report: Reporter, quiet: bool) -> Result<(Vec<Link>, bool)> {
    // Attaching waits on the kernel's tracepoint registration; in parallel
    // those waits overlap.
    let attached: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = loaded
            .programs
            .iter()
            .map(|p| s.spawn(move || p.attach()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::new("attach thread panicked")))
            })
            .collect()
    });
    let mut links = Vec::new();
    let mut tracking = true;
    for (p, a) in loaded.programs.iter().zip(attached) {
        match a {
            Ok(l) => links.push(l),
            Err(e) if TRACK_NAMES.contains(&p.name.as_str()) => {
                if tracking && !quiet {
                    report.warn(&format!(
                        "{e}; writes cannot be tracked here, so every page is tried at each checkpoint"
                    ));
                }
                tracking = false;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((links, tracking))
}

/// What user space may replace while the config version is odd.
pub struct Tables<'a> {
    regions: &'a mut Table,
    zero_ranges: &'a mut Table,
    pages_outer: &'a Map,
    addrs_outer: &'a Map,
}

impl Tables<'_> {
    /// Writes the region table: `(start, pages, R_* flags)` per row.
    pub fn regions(&mut self, rows: &[(u64, u64, u64)]) -> Result<()> {
        self.regions.write(rows)
    }

    /// Writes the zero-range table of the image.
    pub fn zero_ranges(&mut self, rows: &[(u64, u64, u64)]) -> Result<()> {
        self.zero_ranges.write(rows)
    }

    /// Points the probes at `store`.
    pub fn install_store(&mut self, store: &Storage) -> Result<()> {
        store.install(self.pages_outer, self.addrs_outer)
    }
}

/// A table the probes walk: slot 0 of a map-in-map, an mmapable array of
/// `abi::Region` rows replaced by a bigger one when more rows are needed.
struct Table {
    outer: Map,
    inner: Map,
    mm: ArrayMmap,
    rows: u32,
}

impl Table {
    fn inner(rows: u32) -> Result<Map> {
        storage::inner_array("ckpt_table", size_of::<abi::Region>() as u32, rows)
    }

    fn new(outer: Map) -> Result<Self> {
        let rows = abi::FIRST_TABLE_ROWS;
        let inner = Self::inner(rows)?;
        outer.update(
            &0u32.to_ne_bytes(),
            &(inner.as_fd().as_raw_fd() as u32).to_ne_bytes(),
            0,
        )?;
        let mm = inner.mmap()?;
        Ok(Self {
            outer,
            inner,
            mm,
            rows,
        })
    }

    /// Writes `rows`, replacing the table by a bigger one if needed.
    fn write(&mut self, rows: &[(u64, u64, u64)]) -> Result<()> {
        if rows.len() > self.rows as usize {
            let want = u32::try_from(rows.len() + rows.len() / 4)
                .map_err(|_| Error::new(format!("{} rows do not fit a BPF array", rows.len())))?;
            let inner = Self::inner(want)?;
            let mm = inner.mmap()?;
            self.outer.update(
                &0u32.to_ne_bytes(),
                &(inner.as_fd().as_raw_fd() as u32).to_ne_bytes(),
                0,
            )?;
            (self.inner, self.mm, self.rows) = (inner, mm, want);
        }
        const ROW: usize = size_of::<abi::Region>();
        let slice = self.mm.as_mut_slice()?;
        for (row, &(start, pages, flags)) in slice.chunks_exact_mut(ROW).zip(rows) {
            row.copy_from_slice(&wire::region_bytes(start, pages, flags));
        }
        Ok(())
    }
}
