//! The engine: loads and attaches the probes once, then serves targets.
//!
//! Division of work per request (DESIGN.md sections 1 and 5):
//! - checkpoint: the probe copies every page of the live region table into
//!   the page store, inside the trigger syscall. If the table was stale, the
//!   store too small, or a page unreadable, the probe also stops the target
//!   (SIGSTOP right after the trigger syscall) and user space completes the
//!   image at that same instant, then releases it.
//! - restore: with the BPF write path, the probe writes every saved page and
//!   zeroes pages absent at the checkpoint; pages it could not write are
//!   finished from user space while the target is held. Without it (kernel
//!   lockdown), the probe only holds the target and user space restores.

use super::abi::{self, Config, Event};
use super::markers::{self, Triggers};
use super::memio::{Mem, ZERO_PAGE};
use super::procfs::{self, Kind, Mapping, PAGE, PM_PRESENT, PM_SWAPPED, Pagemap, Region};
use super::report::{J, Reporter, Stats};
use super::storage::{Storage, human};
use super::wire;
use crate::{Error, Result};
use bpfload::load::{self, Link, LoadOptions, Loaded, MapOverride};
use bpfload::maps::{ArrayMmap, Map};
use bpfload::ringbuf::RingBuf;
use nix::sys::signal::{Signal, kill};
use nix::sys::signalfd::{SfdFlags, SigSet, SignalFd};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How restores are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePath {
    /// BPF if the kernel allows `bpf_probe_write_user`, else user space.
    Auto,
    /// `bpf_probe_write_user` in the target's context (error if refused).
    Bpf,
    /// `process_vm_writev` / `/proc/PID/mem` while the target is held.
    User,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub trigger_dir: PathBuf,
    pub restore_path: RestorePath,
    /// Most kernel memory the page store may use.
    pub max_memory: Option<u64>,
    /// Capture anonymous memory only (no writable private file mappings).
    pub anon_only: bool,
    /// Try every page at each checkpoint instead of only pages written
    /// since the program started (the touched-page bitmaps).
    pub exhaustive: bool,
    pub report: Reporter,
}

/// How the engine learns that a target is gone.
pub enum Waiter {
    /// Our child (`run`): its exit status is collected.
    Child(Child),
    /// Someone else's process (`watch`).
    Pid,
}

/// How serving one target ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(ExitStatus),
    /// Gone, status unknown (not our child).
    Gone,
    /// SIGINT / SIGTERM to bpfckpt.
    Interrupted(Signal),
}

/// The image of the last checkpoint: slots `0..slots` of the store, plus the
/// ranges that were absent (zero) then.
struct Image {
    slots: u64,
    zero: Vec<(u64, u64)>,
    /// Zero ranges the BPF restore cannot cover (table too small).
    zero_in_user: bool,
}

/// One target being served.
struct Target {
    pid: i32,
    regions: Vec<Region>,
    /// `/proc/PID/maps` as read for `regions` (valid while the layout
    /// sequence number still equals `applied_seq`).
    maps: Vec<Mapping>,
    applied_seq: u64,
    layout_dirty: bool,
    /// Consecutive failed attempts to read the layout.
    layout_failures: u32,
    /// `State::lost` when serving began.
    lost_seen: u64,
    store: Option<Storage>,
    image: Option<Image>,
    stats: Stats,
}

/// Offsets of the fields of `abi::State`, read through the mapping.
const ST_LAYOUT_SEQ: usize = std::mem::offset_of!(abi::State, layout_seq);
const ST_EXEC_GEN: usize = std::mem::offset_of!(abi::State, exec_gen);
const ST_UNTRACKED: usize = std::mem::offset_of!(abi::State, untracked);
const ST_NOTIFIED: usize = std::mem::offset_of!(abi::State, notified);
const ST_LOST: usize = std::mem::offset_of!(abi::State, lost);

const EXEC_NAMES: [&str; 6] = [
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

pub struct Engine {
    // Field order is drop order: detach before the maps go.
    _links: Vec<Link>,
    ring: RingBuf,
    loaded: Loaded,
    _templates: (Map, Map),
    cfg: Config,
    /// Config flags that hold for every target (exhaustive, THP).
    base_flags: u32,
    state_mm: ArrayMmap,
    regions_mm: ArrayMmap,
    zero_mm: ArrayMmap,
    zero_todo_mm: ArrayMmap,
    bpf_write: bool,
    /// Swap is on: a page BPF cannot write may be swapped out, not absent.
    swap: bool,
    /// Frame of the shared zero page, if pagemap shows frames.
    zero_pfn: Option<u64>,
    opts: Options,
    triggers: Triggers,
    signals: SignalFd,
    /// Continues a held target if bpfckpt dies (ckpt/watchdog.rs).
    watchdog: super::watchdog::Watchdog,
    pub total: Stats,
}

impl Engine {
    /// Checks privileges, picks the restore path, loads and attaches the probes.
    pub fn new(opts: Options) -> Result<Self> {
        check_privileges()?;
        let triggers = Triggers::new(&opts.trigger_dir, abi::PATH_MAX)?;
        let (write_ok, write_why) = match opts.restore_path {
            RestorePath::User => (false, String::new()),
            _ => crate::doctor::probe_write_user_available(),
        };
        if opts.restore_path == RestorePath::Bpf && !write_ok {
            return Err(Error::new(format!(
                "--restore-path bpf: this kernel refuses bpf_probe_write_user ({write_why}); \
                 use --restore-path user or auto"
            )));
        }
        let bpf_write = write_ok;

        // SIGINT/SIGTERM become readable events, so that a session ends in
        // order (target released, summary printed). Blocked before any child
        // is spawned; `run` unblocks them in the child again before exec.
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGINT);
        mask.add(Signal::SIGTERM);
        mask.thread_block()
            .map_err(|e| Error::sys("block SIGINT/SIGTERM", e as i32))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Error::sys("signalfd", e as i32))?;
        // After the mask: the watchdog inherits SIGINT/SIGTERM blocked.
        let watchdog = super::watchdog::Watchdog::spawn()?;

        let templates = super::storage::templates()?;
        let suffix = if bpf_write { "_w" } else { "" };
        let mut programs: Vec<String> = ["trigger_openat", "trigger_open", "trigger_creat"]
            .iter()
            .map(|p| format!("{p}{suffix}"))
            .collect();
        programs.extend(EXEC_NAMES.iter().map(|s| s.to_string()));
        programs.extend(TRACK_NAMES.iter().map(|s| s.to_string()));
        let mut maps = HashMap::new();
        maps.insert(
            "PAGES_OUTER".to_string(),
            MapOverride {
                max_entries: None,
                inner_map: Some(templates.0.as_fd()),
            },
        );
        maps.insert(
            "ADDRS_OUTER".to_string(),
            MapOverride {
                max_entries: None,
                inner_map: Some(templates.1.as_fd()),
            },
        );
        let loaded = load::load(crate::PROBES_OBJ, &LoadOptions { programs, maps })
            .map_err(|e| e.context("loading the probes"))?;
        let ring = RingBuf::new(loaded.map("EVENTS")?)?;
        let mut links = Vec::new();
        let mut exhaustive = opts.exhaustive;
        // Attaching waits on the kernel's tracepoint registration; in
        // parallel those waits overlap.
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
        for (p, a) in loaded.programs.iter().zip(attached) {
            match a {
                Ok(l) => links.push(l),
                Err(e) if TRACK_NAMES.contains(&p.name.as_str()) => {
                    if !exhaustive {
                        opts.report.warn(&format!(
                            "{e}; writes cannot be tracked here, so every page is tried at each checkpoint"
                        ));
                    }
                    exhaustive = true;
                }
                Err(e) => return Err(e),
            }
        }
        let thp_always = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| s.contains("[always]"));
        let base_flags = if exhaustive { abi::F_EXHAUSTIVE } else { 0 }
            | if thp_always { abi::F_THP_ALWAYS } else { 0 };
        let state_mm = loaded.map("STATE")?.mmap()?;
        let regions_mm = loaded.map("REGIONS")?.mmap()?;
        let zero_mm = loaded.map("ZERO_RANGES")?.mmap()?;
        let zero_todo_mm = loaded.map("ZERO_TODO")?.mmap()?;

        let cfg = Config {
            tgid: 0,
            flags: 0,
            applied_seq: u64::MAX,
            nregions: 0,
            nzero: 0,
            total_pages: 0,
            zero_pages: 0,
            capacity: 0,
            image_slots: 0,
            watch_comm: [0; abi::COMM_LEN],
            ckpt_path: wire::fixed(
                triggers
                    .path(markers::CHECKPOINT_REQUEST)
                    .as_os_str()
                    .as_encoded_bytes(),
            ),
            restore_path: wire::fixed(
                triggers
                    .path(markers::RESTORE_REQUEST)
                    .as_os_str()
                    .as_encoded_bytes(),
            ),
        };
        let e = Self {
            _links: links,
            ring,
            loaded,
            _templates: templates,
            cfg,
            base_flags,
            state_mm,
            regions_mm,
            zero_mm,
            zero_todo_mm,
            bpf_write,
            swap: swap_enabled(),
            zero_pfn: procfs::zero_pfn(),
            opts,
            triggers,
            signals,
            watchdog,
            total: Stats::default(),
        };
        e.push_config()?;
        let path = if bpf_write {
            "restore path: BPF (bpf_probe_write_user in the target's context)".to_string()
        } else if e.opts.restore_path == RestorePath::User {
            "restore path: user space (requested)".to_string()
        } else {
            format!(
                "restore path: user space (process_vm_writev, /proc/PID/mem) with the target held; \
                 the kernel refuses bpf_probe_write_user: {write_why}"
            )
        };
        e.report().event(
            "start",
            &path,
            &[
                ("restore_path", J::S(if bpf_write { "bpf" } else { "user" })),
                (
                    "trigger_dir",
                    J::S(&e.opts.trigger_dir.display().to_string()),
                ),
            ],
        );
        Ok(e)
    }

    /// Config flags for a served target, plus `extra`.
    fn flags(&self, extra: u32) -> u32 {
        abi::F_ACTIVE | self.base_flags | if self.bpf_write { abi::F_BPF_WRITE } else { 0 } | extra
    }

    pub fn report(&self) -> Reporter {
        self.opts.report
    }

    pub fn bpf_write(&self) -> bool {
        self.bpf_write
    }

    fn push_config(&self) -> Result<()> {
        self.loaded
            .map("CONFIG")?
            .update(&0u32.to_ne_bytes(), &wire::config_bytes(&self.cfg), 0)
    }

    /// A field of the probes' STATE (read through its mapping: no syscall).
    fn state(&self, field: usize) -> Result<u64> {
        self.state_mm.read_u64(field)
    }

    /// Sets the process name `watch` waits for (first 15 bytes, as the kernel keeps it).
    pub fn set_watch(&mut self, comm: &str) -> Result<()> {
        self.watchdog.watching(comm);
        self.cfg.watch_comm = wire::fixed(comm.as_bytes());
        self.push_config()
    }

    /// Waits for a process whose exec matches the watch name (and `exe`, if
    /// given). It is held at its exec; returns its pid, still held.
    pub fn wait_for_exec(
        &mut self,
        exe: Option<&std::path::Path>,
    ) -> Result<std::result::Result<i32, Signal>> {
        loop {
            if let Some(sig) = self.pending_signal() {
                return Ok(Err(sig));
            }
            for ev in self.poll(Duration::from_millis(100))? {
                if ev.kind != abi::EV_EXEC || ev.held == 0 {
                    continue;
                }
                let pid = ev.tgid as i32;
                if let Some(exe) = exe {
                    let real = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                    if real.as_deref() != Some(exe) {
                        cont(pid);
                        continue;
                    }
                }
                return Ok(Ok(pid));
            }
        }
    }

    fn poll(&mut self, timeout: Duration) -> Result<Vec<Event>> {
        let mut evs = Vec::new();
        self.ring.poll(Some(timeout), |rec| {
            if let Some(e) = wire::event(rec) {
                evs.push(e);
            }
        })?;
        Ok(evs)
    }

    fn pending_signal(&mut self) -> Option<Signal> {
        match self.signals.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }

    /// Serves `pid` until it is gone. `release` lets the target go once the
    /// probes are set up for it (it is held at its exec, or gated).
    pub fn serve(
        &mut self,
        pid: i32,
        mut waiter: Waiter,
        release: impl FnOnce() -> Result<()>,
    ) -> Result<Outcome> {
        self.watchdog.serving(pid);
        let mut t = Target {
            pid,
            regions: Vec::new(),
            maps: Vec::new(),
            applied_seq: u64::MAX,
            layout_dirty: true,
            layout_failures: 0,
            lost_seen: self.state(ST_LOST)?,
            store: None,
            image: None,
            stats: Stats::default(),
        };
        self.cfg.tgid = pid as u32;
        self.cfg.flags = self.flags(0);
        self.cfg.applied_seq = u64::MAX;
        self.cfg.capacity = 0;
        self.cfg.image_slots = 0;
        self.cfg.nzero = 0;
        self.cfg.zero_pages = 0;
        self.push_config()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.report().event(
            "target",
            &format!("serving pid {pid} ({exe})"),
            &[("pid", J::N(pid as u64)), ("exe", J::S(&exe))],
        );
        let result = self
            .apply_layout(&mut t)
            .and_then(|()| release())
            .and_then(|()| self.serve_loop(&mut t, &mut waiter));
        // Whatever happened: stop serving, never leave the target stopped.
        self.cfg.tgid = 0;
        self.cfg.flags = 0;
        let _ = self.push_config();
        let _ = self.forget_touched(pid, None);
        let _ = self
            .loaded
            .map("PAGES_OUTER")
            .and_then(|m| m.delete(&0u32.to_ne_bytes()));
        let _ = self
            .loaded
            .map("ADDRS_OUTER")
            .and_then(|m| m.delete(&0u32.to_ne_bytes()));
        if procfs::process_state(pid).is_some_and(|s| s == 'T') {
            cont(pid);
        }
        self.watchdog.idle();
        self.total.add(&t.stats);
        self.report().summary(&format!("pid {pid}"), &t.stats);
        if let (Err(_), Waiter::Child(c)) = (&result, &mut waiter) {
            // The session failed: don't leave an orphan waiting for markers.
            let _ = c.kill();
            let _ = c.wait();
        }
        result
    }

    fn serve_loop(&mut self, t: &mut Target, waiter: &mut Waiter) -> Result<Outcome> {
        loop {
            if let Some(sig) = self.pending_signal() {
                if let Waiter::Child(c) = waiter {
                    let _ = kill(Pid::from_raw(c.id() as i32), sig);
                    let _ = c.wait();
                }
                return Ok(Outcome::Interrupted(sig));
            }
            let events = self.poll(Duration::from_millis(50))?;
            let lost = self.state(ST_LOST)?;
            if lost != t.lost_seen {
                cont(t.pid);
                return Err(Error::new(format!(
                    "the probes could not report a request of pid {} (ring buffer full); released it",
                    t.pid
                )));
            }
            for ev in &events {
                if ev.tgid != t.pid as u32 {
                    if ev.kind == abi::EV_EXEC && ev.held != 0 {
                        // `watch` matched another process while busy.
                        cont(ev.tgid as i32);
                        self.report().warn(&format!(
                            "pid {} matches the watched name but pid {} is being served; not serving it",
                            ev.tgid, t.pid
                        ));
                    }
                    continue;
                }
                let r = match ev.kind {
                    abi::EV_LAYOUT => {
                        t.layout_dirty = true;
                        Ok(())
                    }
                    abi::EV_EXEC => {
                        t.layout_dirty = true;
                        // A checkpoint of the old program must never be
                        // written into the new one.
                        if t.image.take().is_some() {
                            self.cfg.image_slots = 0;
                            self.cfg.nzero = 0;
                            self.cfg.zero_pages = 0;
                            self.report().warn(&format!(
                                "pid {} called exec: its checkpoint belongs to the old program and is dropped",
                                t.pid
                            ));
                        }
                        Ok(())
                    }
                    abi::EV_CHECKPOINT => self.on_checkpoint(t, ev),
                    abi::EV_RESTORE => self.on_restore(t, ev),
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    // A target that dies while held is an outcome, not an
                    // error of ours: report it and end with its status.
                    if let Some(out) = gone_soon(t.pid, waiter) {
                        self.report().warn(&format!(
                            "pid {} ended in the middle of a request ({e})",
                            t.pid
                        ));
                        return Ok(out);
                    }
                    return Err(e);
                }
            }
            if let Some(out) = gone(t.pid, waiter) {
                return Ok(out);
            }
            if t.layout_dirty
                && let Err(e) = self.apply_layout(t)
            {
                // An exiting target loses its mm before it can be reaped.
                if let Some(out) = gone_soon(t.pid, waiter) {
                    return Ok(out);
                }
                // An exec swaps the mm under /proc readers: try again on
                // the next round (the exec event marks the table dirty),
                // but not forever.
                t.layout_failures += 1;
                if t.layout_failures > 20 {
                    return Err(e.context(format!("reading the mappings of pid {}", t.pid)));
                }
                continue;
            }
            t.layout_failures = 0;
        }
    }

    /// Re-reads the target's mappings into the probes' region table.
    fn apply_layout(&mut self, t: &mut Target) -> Result<()> {
        // The sequence number first: a change after this point bumps it
        // again and the probe sees the table as stale.
        self.state_mm.write_u64(ST_NOTIFIED, 0)?;
        let seq = self.state(ST_LAYOUT_SEQ)?;
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
        let table = self.regions_mm.as_mut_slice()?;
        for (i, r) in regions.iter().enumerate() {
            let flags = if r.kind == Kind::Anon {
                abi::R_TRACKED
            } else {
                0
            };
            table[i * 32..i * 32 + 32].copy_from_slice(&wire::region_bytes(
                r.start,
                r.pages(),
                flags,
            ));
        }
        if self.opts.report.verbose > 1 {
            for r in &regions {
                eprintln!("bpfckpt:   region {:#x}-{:#x} {:?}", r.start, r.end, r.kind);
            }
        }
        let total: u64 = regions.iter().map(Region::pages).sum();
        if t.image.is_none() {
            // Nothing to preserve yet: size the store to what a checkpoint
            // would save now, with a little room to grow.
            let need = count_to_save(t.pid, &regions, &self.written(t.pid)?, self.zero_pfn)?;
            let want = need + need / 32 + 16;
            if t.store.as_ref().is_none_or(|s| s.capacity() < need) {
                self.install_store(t, Storage::create(want, self.opts.max_memory)?)?;
            }
        }
        self.cfg.nregions = regions.len() as u32;
        self.cfg.total_pages = total;
        self.cfg.applied_seq = seq;
        self.push_config()?;
        t.regions = regions;
        t.maps = maps;
        t.applied_seq = seq;
        t.layout_dirty = false;
        Ok(())
    }

    /// Sets the `ever` bits of pages written from user space (the target is
    /// held, so no fault races with this read-modify-write).
    fn mark_written(&self, pid: i32, addrs: impl Iterator<Item = u64>) -> Result<()> {
        if self.base_flags & abi::F_EXHAUSTIVE != 0 {
            return Ok(());
        }
        let image = self.image_gen()?;
        let map = self.loaded.map("TOUCHED")?;
        let mut chunks: std::collections::BTreeMap<u64, [u64; 8]> =
            std::collections::BTreeMap::new();
        for a in addrs {
            let bit = (a / PAGE) % abi::CHUNK_PAGES;
            chunks.entry(a >> abi::CHUNK_SHIFT).or_default()[(bit / 64) as usize] |=
                1 << (bit % 64);
        }
        let mut val = [0u8; size_of::<abi::Touched>()];
        for (chunk, bits) in chunks {
            let key = wire::chunk_key(pid as u32, image, chunk);
            if !map.lookup(&key, &mut val)? {
                val = [0; size_of::<abi::Touched>()];
            }
            for (w, b) in bits.iter().enumerate() {
                let old = wire::u64_at(&val, w * 8);
                val[w * 8..w * 8 + 8].copy_from_slice(&(old | b).to_ne_bytes());
            }
            map.update(&key, &val, 0)?;
        }
        Ok(())
    }

    /// The touched-page bitmaps of `pid`'s current image (cost follows the
    /// number of touched chunks, not the size of the mappings).
    fn written(&self, pid: i32) -> Result<Written> {
        if self.base_flags & abi::F_EXHAUSTIVE != 0 || self.state(ST_UNTRACKED)? != 0 {
            return Ok(Written(None));
        }
        let image = self.image_gen()?;
        let map = self.loaded.map("TOUCHED")?;
        let mut chunks = HashMap::new();
        let mut val = [0u8; size_of::<abi::Touched>()];
        for key in map.keys() {
            let key = key?;
            if key.len() != 16
                || u32::from_ne_bytes([key[0], key[1], key[2], key[3]]) != pid as u32
                || u32::from_ne_bytes([key[4], key[5], key[6], key[7]]) != image
            {
                continue;
            }
            if map.lookup(&key, &mut val)? {
                let mut ever = [0u64; 8];
                for (w, e) in ever.iter_mut().enumerate() {
                    *e = wire::u64_at(&val, w * 8);
                }
                chunks.insert(wire::u64_at(&key, 8), ever);
            }
        }
        Ok(Written(Some(chunks)))
    }

    /// The program-image number the probes key the bitmaps with.
    fn image_gen(&self) -> Result<u32> {
        Ok(self.state(ST_EXEC_GEN)? as u32)
    }

    /// Forgets the touched-page bitmaps of `pid` except those of program
    /// image `keep` (a new exec starts from none).
    fn forget_touched(&self, pid: i32, keep: Option<u32>) -> Result<()> {
        let map = self.loaded.map("TOUCHED")?;
        let stale: Vec<Vec<u8>> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                k.len() == 16
                    && u32::from_ne_bytes([k[0], k[1], k[2], k[3]]) == pid as u32
                    && keep != Some(u32::from_ne_bytes([k[4], k[5], k[6], k[7]]))
            })
            .collect();
        for k in stale {
            map.delete(&k)?;
        }
        Ok(())
    }

    fn install_store(&mut self, t: &mut Target, s: Storage) -> Result<()> {
        s.install(
            self.loaded.map("PAGES_OUTER")?,
            self.loaded.map("ADDRS_OUTER")?,
        )?;
        self.cfg.capacity = s.capacity();
        t.stats.peak_store_bytes = t.stats.peak_store_bytes.max(s.kernel_bytes());
        t.store = Some(s);
        Ok(())
    }

    fn on_checkpoint(&mut self, t: &mut Target, ev: &Event) -> Result<()> {
        // The probe has overwritten the store: the old image is gone.
        t.image = None;
        t.stats.checkpoints += 1;
        t.stats.ckpt_kernel_ns += ev.c;
        t.stats.ckpt_kernel_ns_max = t.stats.ckpt_kernel_ns_max.max(ev.c);
        let t0 = Instant::now();
        let result = self.checkpoint_inner(t, ev);
        if ev.held != 0 {
            t.stats.holds += 1;
            cont(t.pid);
        }
        t.stats.user_ns += t0.elapsed().as_nanos() as u64;
        result
    }

    fn checkpoint_inner(&mut self, t: &mut Target, ev: &Event) -> Result<()> {
        let (bpf, user, zero) = if ev.held != 0 {
            wait_stopped(t.pid)?;
            if ev.stale == abi::STALE_LAYOUT || ev.seq != t.applied_seq {
                // The table was stale or the store too small: redo it all
                // from user space, at the same instant (the target is held).
                self.apply_layout(t)?;
                let (user, zero) = self.complete(t, 0)?;
                (0, user, zero)
            } else {
                // Some pages unreadable, or the store full: keep what BPF
                // saved and add the rest.
                let (user, zero) = self.complete(t, ev.a)?;
                (ev.a, user, zero)
            }
        } else {
            // Every page BPF did not save was never written: zero.
            let store = t
                .store
                .as_ref()
                .ok_or_else(|| Error::new("no page store"))?;
            (ev.a, 0, gaps(&t.regions, store, ev.a))
        };
        t.stats.pages_skipped_untouched += ev.d;
        t.stats.pages_saved_bpf += bpf;
        t.stats.pages_saved_user += user;
        let slots = bpf + user;
        let zero_pages: u64 = zero.iter().map(|z| z.1).sum();
        let zero_in_user = zero.len() > abi::MAX_REGIONS as usize;
        if !zero_in_user {
            let table = self.zero_mm.as_mut_slice()?;
            for (i, (start, n)) in zero.iter().enumerate() {
                table[i * 32..i * 32 + 32].copy_from_slice(&wire::region_bytes(*start, *n, 0));
            }
        }
        self.cfg.image_slots = slots;
        self.cfg.nzero = if zero_in_user { 0 } else { zero.len() as u32 };
        self.cfg.zero_pages = if zero_in_user { 0 } else { zero_pages };
        self.cfg.flags = self.flags(
            if zero_in_user { abi::F_HOLD_RESTORE } else { 0 }
                | if self.swap { abi::F_VERIFY_ZERO } else { 0 },
        );
        self.push_config()?;
        t.image = Some(Image {
            slots,
            zero,
            zero_in_user,
        });
        self.report().detail(
            "checkpoint",
            &format!(
                "checkpoint of pid {}: {} saved ({bpf} pages by BPF in {:?}, {user} from user space), {zero_pages} pages absent",
                t.pid,
                human(slots * PAGE),
                Duration::from_nanos(ev.c)
            ),
            &[
                ("pid", J::N(t.pid as u64)),
                ("pages_bpf", J::N(bpf)),
                ("pages_user", J::N(user)),
                ("pages_absent", J::N(zero_pages)),
                ("kernel_ns", J::N(ev.c)),
                ("held", J::B(ev.held != 0)),
                ("stale", J::N(ev.stale)),
                ("table_seq", J::N(ev.seq)),
                ("applied_seq", J::N(t.applied_seq)),
            ],
        );
        self.triggers.create(markers::CHECKPOINT_DONE)
    }

    /// Completes an image of which BPF saved the first `saved` slots (in
    /// region order): every other page of the region table is read from user
    /// space if it may hold data, or recorded as a zero range. Returns the
    /// pages added and the zero ranges.
    fn complete(&mut self, t: &mut Target, saved: u64) -> Result<(u64, Vec<(u64, u64)>)> {
        let pm = Pagemap::open(t.pid)?;
        // Opened per request: /proc/PID/mem stays bound to the mm it was
        // opened on, and the target may have exec'd since.
        let mem = Mem::open(t.pid)?;
        let store = t.store.as_ref();
        let mut cursor = 0u64;
        let mut next_saved = |addr: u64| -> bool {
            // Saved addresses ascend with the region table.
            while cursor < saved {
                let a = store.map_or(u64::MAX, |s| s.addr(cursor));
                if a >= addr {
                    if a == addr {
                        cursor += 1;
                        return true;
                    }
                    return false;
                }
                cursor += 1;
            }
            false
        };
        let written = self.written(t.pid)?;
        let mut todo: Vec<u64> = Vec::new();
        let mut zero: Vec<(u64, u64)> = Vec::new();
        let mut flags = Vec::new();
        for r in &t.regions {
            flags.clear();
            pm.read(r.start, r.pages(), &mut flags)?;
            for (i, f) in flags.iter().enumerate() {
                let addr = r.start + i as u64 * PAGE;
                if next_saved(addr) {
                    continue;
                }
                let maybe_data = r.kind != Kind::Anon
                    || written.anon_page_may_hold_data(addr, *f, self.zero_pfn);
                if maybe_data {
                    todo.push(addr);
                } else if let Some(last) = zero.last_mut().filter(|z| z.0 + z.1 * PAGE == addr) {
                    last.1 += 1;
                } else {
                    zero.push((addr, 1));
                }
            }
        }
        let need = saved + todo.len() as u64;
        let cap = t.store.as_ref().map_or(0, Storage::capacity);
        if need > cap {
            let want = need + need / 32 + 16;
            let new = match &t.store {
                Some(old) if saved > 0 => old.grown(want, saved, self.opts.max_memory)?,
                _ => Storage::create(want, self.opts.max_memory)?,
            };
            self.install_store(t, new)?;
            self.push_config()?;
        }
        let Some(store) = t.store.as_mut() else {
            return Err(Error::new("no page store"));
        };
        // Read runs of consecutive pages straight into consecutive slots.
        let mut i = 0;
        while i < todo.len() {
            let mut n = 1;
            while i + n < todo.len() && todo[i + n] == todo[i] + n as u64 * PAGE {
                n += 1;
            }
            let slot = saved + i as u64;
            mem.read(todo[i], store.pages_mut(slot, n as u64)?)?;
            for k in 0..n {
                store.set_addr(slot + k as u64, todo[i + k])?;
            }
            i += n;
        }
        // Pages saved here hold data whether or not a fault announced it:
        // make sure the next checkpoint reads them too.
        self.mark_written(t.pid, todo.iter().copied())?;
        Ok((todo.len() as u64, zero))
    }

    fn on_restore(&mut self, t: &mut Target, ev: &Event) -> Result<()> {
        let t0 = Instant::now();
        let result = self.restore_inner(t, ev);
        if ev.held != 0 {
            t.stats.holds += 1;
            cont(t.pid);
        }
        t.stats.user_ns += t0.elapsed().as_nanos() as u64;
        result
    }

    fn restore_inner(&mut self, t: &mut Target, ev: &Event) -> Result<()> {
        if ev.held != 0 {
            wait_stopped(t.pid)?;
        }
        let Some(image) = &t.image else {
            self.report().warn(&format!(
                "pid {} asked for a restore before any checkpoint; nothing restored",
                t.pid
            ));
            return self.triggers.create(markers::RESTORE_DONE);
        };
        t.stats.restore_kernel_ns += ev.c;
        t.stats.restore_kernel_ns_max = t.stats.restore_kernel_ns_max.max(ev.c);
        let by_bpf = self.bpf_write;
        let (mut written, mut zeroed, mut skipped) = (0u64, 0u64, 0u64);
        if ev.held != 0 {
            // The mappings as last read, unless they changed since.
            let fresh;
            let maps = if self.state(ST_LAYOUT_SEQ)? == t.applied_seq {
                &t.maps
            } else {
                fresh = procfs::read_maps(t.pid)?;
                &fresh
            };
            let stacks = procfs::stack_pointers(t.pid);
            // Opened per request: /proc/PID/mem stays bound to the mm it
            // was opened on, and the target may have exec'd since.
            let mem = Mem::open(t.pid)?;
            let store = t
                .store
                .as_mut()
                .ok_or_else(|| Error::new("no page store"))?;
            // With the BPF path only the pages it marked failed remain.
            let mut slots = Vec::new();
            for s in 0..image.slots {
                let a = store.addr(s);
                if by_bpf && a & abi::ADDR_FAILED == 0 {
                    continue;
                }
                let a = a & !abi::ADDR_FAILED;
                if writable(maps, &stacks, a) {
                    slots.push((s, a));
                } else {
                    skipped += 1;
                }
            }
            // Consecutive slots holding consecutive pages go as one iovec:
            // per-page iovecs cost the kernel a page pin each.
            mem.write_pages(runs(&slots).map(|(s, a, n)| (a, store.pages(s, n))))?;
            written = slots.len() as u64;
            for &(s, a) in &slots {
                store.set_addr(s, a)?;
            }
            // Writes from user space fault nothing: record them, or the
            // next checkpoint would take these pages for never written.
            self.mark_written(t.pid, slots.iter().map(|&(_, a)| a))?;
            if !by_bpf && ev.d != u64::MAX {
                // The probe listed the zero-range pages written since.
                let todo = self.zero_todo_mm.as_slice();
                let pages: Vec<u64> = (0..ev.d.min(u64::from(abi::ZERO_TODO_MAX)) as usize)
                    .map(|i| wire::u64_at(todo, i * 8))
                    .filter(|&a| writable(maps, &stacks, a))
                    .collect();
                mem.write_pages(pages.iter().map(|&a| (a, &ZERO_PAGE[..])))?;
                zeroed = pages.len() as u64;
            } else if !by_bpf || image.zero_in_user || ev.stale != 0 {
                zeroed = zero_dirty(t.pid, &mem, &image.zero, maps, &stacks)?;
            }
        }
        let s = &mut t.stats;
        s.cycles += 1;
        s.pages_restored_bpf += ev.a;
        s.pages_zeroed_bpf += ev.seq;
        s.pages_restored_user += written;
        s.pages_zeroed_user += zeroed;
        s.pages_skipped_unmapped += skipped;
        if skipped > 0 {
            self.opts.report.warn(&format!(
                "pid {}: {skipped} saved pages are no longer mapped; not restored",
                t.pid
            ));
        }
        self.report().detail(
            "restore",
            &format!(
                "restore of pid {}: {} pages by BPF ({} zeroed) in {:?}, {written} from user space ({zeroed} zeroed)",
                t.pid,
                ev.a,
                ev.seq,
                Duration::from_nanos(ev.c)
            ),
            &[
                ("pid", J::N(t.pid as u64)),
                ("pages_bpf", J::N(ev.a)),
                ("zeroed_bpf", J::N(ev.seq)),
                ("pages_user", J::N(written)),
                ("zeroed_user", J::N(zeroed)),
                ("skipped_unmapped", J::N(skipped)),
                ("kernel_ns", J::N(ev.c)),
                ("held", J::B(ev.held != 0)),
            ],
        );
        self.triggers.create(markers::RESTORE_DONE)
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

/// The pages of `regions` not among the first `saved` slots of `store`
/// (whose addresses ascend in region order), as (start, pages) ranges.
fn gaps(regions: &[Region], store: &Storage, saved: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut push = |start: u64, end: u64| {
        if end <= start {
            return;
        }
        match out.last_mut() {
            Some(last) if last.0 + last.1 * PAGE == start => last.1 += (end - start) / PAGE,
            _ => out.push((start, (end - start) / PAGE)),
        }
    };
    let mut slot = 0;
    for r in regions {
        let mut at = r.start;
        while slot < saved {
            let a = store.addr(slot) & !abi::ADDR_FAILED;
            if a >= r.end {
                break;
            }
            if a >= at {
                push(at, a);
                at = a + PAGE;
            }
            slot += 1;
        }
        push(at, r.end);
    }
    out
}

impl Drop for Engine {
    /// Detaching a tracepoint waits for RCU grace periods (30-60 ms per
    /// close here); closing them all at once lets those waits overlap.
    fn drop(&mut self) {
        let links = std::mem::take(&mut self._links);
        std::thread::scope(|s| {
            for l in links {
                s.spawn(move || drop(l));
            }
        });
    }
}

/// Zeroes, from user space, pages of the zero ranges that are present (or
/// swapped) now; untouched pages are left alone (they read as zero).
fn zero_dirty(
    pid: i32,
    mem: &Mem,
    zero: &[(u64, u64)],
    maps: &[Mapping],
    stacks: &[u64],
) -> Result<u64> {
    let pm = Pagemap::open(pid)?;
    let mut flags = Vec::new();
    let mut todo = Vec::new();
    for &(start, n) in zero {
        flags.clear();
        if pm.read(start, n, &mut flags).is_err() {
            continue; // unmapped since: nothing to zero
        }
        for (i, f) in flags.iter().enumerate() {
            let a = start + i as u64 * PAGE;
            if f & (PM_PRESENT | PM_SWAPPED) != 0 && writable(maps, stacks, a) {
                todo.push(a);
            }
        }
    }
    mem.write_pages(todo.iter().map(|&a| (a, &ZERO_PAGE[..])))?;
    Ok(todo.len() as u64)
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

/// The `ever` bitmaps of one target, as user space sees them; `None` when
/// writes are not tracked (every page may hold data).
struct Written(Option<HashMap<u64, [u64; 8]>>);

impl Written {
    /// Whether a private anonymous page with pagemap entry `pm` may hold
    /// data. Swapped: yes. Present: if it was written, or (should a write
    /// have escaped the tracking) unless it is the shared zero page.
    /// Absent: no.
    fn anon_page_may_hold_data(&self, addr: u64, pm: u64, zero_pfn: Option<u64>) -> bool {
        if pm & PM_SWAPPED != 0 {
            return true;
        }
        if pm & PM_PRESENT == 0 {
            return false;
        }
        self.may_hold_data(addr) || zero_pfn.is_none_or(|z| pm & procfs::PM_PFN != z)
    }

    fn may_hold_data(&self, addr: u64) -> bool {
        let Some(chunks) = &self.0 else { return true };
        let bit = (addr / PAGE) % abi::CHUNK_PAGES;
        chunks
            .get(&(addr >> abi::CHUNK_SHIFT))
            .is_some_and(|w| w[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

/// Where a restore may write now: inside a current mapping that is private
/// or shared-anonymous (never a file-shared one, never outside the target).
/// `live_stacks`: stack pointers of the (held) target's threads; a mapping
/// holding one is a stack in use and is never written.
fn writable(maps: &[Mapping], live_stacks: &[u64], addr: u64) -> bool {
    let i = maps.partition_point(|m| m.end <= addr);
    maps.get(i).is_some_and(|m| {
        m.contains(addr) && m.writable_target() && !live_stacks.iter().any(|&sp| m.contains(sp))
    })
}

fn swap_enabled() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

/// Lets a held target run on.
pub fn cont(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
}

fn alive(pid: i32) -> bool {
    procfs::process_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// The target stops on its way out of the trigger syscall.
fn wait_stopped(pid: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spin = 0u32;
    loop {
        match procfs::process_state(pid) {
            Some('T') | Some('t') => return Ok(()),
            None | Some('Z') | Some('X') => {
                return Err(Error::new(format!(
                    "pid {pid} exited while held for a request"
                )));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!(
                "pid {pid} did not stop at its trigger within 10 s"
            )));
        }
        spin += 1;
        if spin > 100 {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::thread::yield_now();
        }
    }
}

/// `gone`, allowing an exiting process a moment to become reapable.
fn gone_soon(pid: i32, waiter: &mut Waiter) -> Option<Outcome> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        if let Some(o) = gone(pid, waiter) {
            return Some(o);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn gone(pid: i32, waiter: &mut Waiter) -> Option<Outcome> {
    match waiter {
        Waiter::Child(c) => match c.try_wait() {
            Ok(Some(st)) => Some(Outcome::Exited(st)),
            Ok(None) => None,
            Err(_) => Some(Outcome::Gone),
        },
        Waiter::Pid => (!alive(pid)).then_some(Outcome::Gone),
    }
}

/// One clear line when we cannot use BPF at all.
fn check_privileges() -> Result<()> {
    // Root is not enough on its own: a bounding set may have taken CAP_BPF
    // away. What counts is the effective set.
    let Ok(caps) = crate::os::effective_caps() else {
        return if nix::unistd::geteuid().is_root() {
            Ok(())
        } else {
            Err(Error::new("bpfckpt needs root"))
        };
    };
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_PERFMON: u64 = 1 << 38;
    const CAP_BPF: u64 = 1 << 39;
    let ok = caps & CAP_SYS_ADMIN != 0 || (caps & CAP_BPF != 0 && caps & CAP_PERFMON != 0);
    // Writing another process's memory also needs ptrace rights.
    if !ok {
        return Err(Error::new(
            "bpfckpt needs root, or CAP_BPF and CAP_PERFMON (plus CAP_SYS_PTRACE to read the target's memory); \
             run it with sudo",
        ));
    }
    Ok(())
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
