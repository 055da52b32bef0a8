//! The probes as the engine sees them: loaded and attached once, every map
//! resolved once, and one place for each encoding user space shares with
//! them (the config, the region rows, the `STATE` fields, the page store
//! slots).

use super::abi::{self, Config};
use super::events::{self, Event};
use super::procfs::Region;
use super::report::Reporter;
use super::storage::{self, Storage};
use super::touched::Bitmaps;
use super::wire;
use crate::{Error, Result};
use bpfload::load::{self, Link, LoadOptions, Loaded, MapOverride};
use bpfload::maps::{ArrayMmap, Map};
use bpfload::ringbuf::RingBuf;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::Duration;

/// The trigger programs; `_w` variants restore with `bpf_probe_write_user`.
const TRIGGER_NAMES: [&str; 3] = ["trigger_openat", "trigger_open", "trigger_creat"];

/// Programs that keep the region table and the program image current.
const LAYOUT_NAMES: [&str; 6] = [
    "layout_mmap",
    "layout_munmap",
    "layout_mremap",
    "layout_brk",
    "layout_mprotect",
    "on_exec",
];

/// The probes that keep the touched-page bitmaps: without all of them
/// (the page-fault tracepoints are x86-only) every page is tried.
const TRACK_NAMES: [&str; 8] = [
    "fault_user",
    "fault_kernel",
    "madvise_enter",
    "mlock_enter",
    "mlock2_enter",
    "mlockall_enter",
    "mmap_enter",
    "mremap_enter",
];

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
        }
    }
}

pub struct Probes {
    // Field order is drop order: detach before the maps go.
    links: Vec<Link>,
    ring: RingBuf,
    config: Map,
    state: ArrayMmap,
    regions: ArrayMmap,
    zero_ranges: ArrayMmap,
    zero_todo: ArrayMmap,
    pages_outer: Map,
    addrs_outer: Map,
    bitmaps: Bitmaps,
    _templates: (Map, Map),
    _loaded: Loaded,
    /// The page-fault probes are attached: writes are tracked.
    tracking: bool,
}

impl Probes {
    /// Loads the trigger set that matches the restore path (`bpf_write`),
    /// the layout probes and the tracking probes, and attaches them all.
    /// A tracking probe that cannot attach is reported once and leaves
    /// `tracking()` false; any other failure is an error.
    pub fn load(bpf_write: bool, report: Reporter, quiet_tracking: bool) -> Result<Self> {
        let templates = storage::templates()?;
        let loaded = load::load(
            crate::PROBES_OBJ,
            &LoadOptions {
                programs: program_names(bpf_write),
                maps: store_overrides(&templates),
            },
        )
        .map_err(|e| e.context("loading the probes"))?;
        let (links, tracking) = attach_all(&loaded, report, quiet_tracking)?;
        let own = |name: &str| -> Result<Map> {
            let fd = loaded.map(name)?.as_fd().try_clone_to_owned()?;
            Map::from_fd(fd)
        };
        Ok(Self {
            ring: RingBuf::new(loaded.map("EVENTS")?)?,
            config: own("CONFIG")?,
            state: loaded.map("STATE")?.mmap()?,
            regions: loaded.map("REGIONS")?.mmap()?,
            zero_ranges: loaded.map("ZERO_RANGES")?.mmap()?,
            zero_todo: loaded.map("ZERO_TODO")?.mmap()?,
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

    pub fn push_config(&self, cfg: &Config) -> Result<()> {
        self.config
            .update(&0u32.to_ne_bytes(), &wire::config_bytes(cfg), 0)
    }

    pub fn state(&self, f: StateField) -> Result<u64> {
        self.state.read_u64(f.offset())
    }

    pub fn set_state(&mut self, f: StateField, v: u64) -> Result<()> {
        self.state.write_u64(f.offset(), v)
    }

    /// Writes the region table (the caller holds the seqlock: `applied_seq`
    /// invalidated before, published after).
    pub fn write_regions(
        &mut self,
        regions: &[Region],
        tracked: impl Fn(&Region) -> bool,
    ) -> Result<()> {
        let rows = regions.iter().map(|r| {
            (
                r.start,
                r.pages(),
                if tracked(r) { abi::R_TRACKED } else { 0 },
            )
        });
        write_rows(&mut self.regions, rows)
    }

    /// Writes the zero ranges of the current image.
    pub fn write_zero_ranges(&mut self, zero: &[(u64, u64)]) -> Result<()> {
        write_rows(&mut self.zero_ranges, zero.iter().map(|&(s, n)| (s, n, 0)))
    }

    /// The first `n` entries of `ZERO_TODO` (capped at its capacity).
    pub fn zero_todo(&self, n: u64) -> impl Iterator<Item = u64> + '_ {
        let n = n.min(u64::from(abi::ZERO_TODO_MAX)) as usize;
        let todo = self.zero_todo.as_slice();
        (0..n).map(move |i| wire::u64_at(todo, i * 8))
    }

    /// Points the probes at `store`.
    pub fn install_store(&self, store: &Storage) -> Result<()> {
        store.install(&self.pages_outer, &self.addrs_outer)
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

fn program_names(bpf_write: bool) -> Vec<String> {
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

/// The page store's outer maps are created with template inner maps.
fn store_overrides(templates: &(Map, Map)) -> HashMap<String, MapOverride<'_>> {
    fn inner(m: &Map) -> MapOverride<'_> {
        MapOverride {
            max_entries: None,
            inner_map: Some(m.as_fd()),
        }
    }
    HashMap::from([
        ("PAGES_OUTER".to_string(), inner(&templates.0)),
        ("ADDRS_OUTER".to_string(), inner(&templates.1)),
    ])
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

/// One 32-byte row per `(start, pages, flags)` (`abi::Region`).
fn write_rows(
    table: &mut ArrayMmap,
    rows: impl ExactSizeIterator<Item = (u64, u64, u64)>,
) -> Result<()> {
    const ROW: usize = size_of::<abi::Region>();
    let n = rows.len();
    let slice = table.as_mut_slice()?;
    if n * ROW > slice.len() {
        return Err(Error::new(format!(
            "{n} rows do not fit a table of {}",
            slice.len() / ROW
        )));
    }
    for (row, (start, pages, flags)) in slice.chunks_exact_mut(ROW).zip(rows) {
        row.copy_from_slice(&wire::region_bytes(start, pages, flags));
    }
    Ok(())
}
