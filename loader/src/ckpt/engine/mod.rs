//! The engine: loads and attaches the probes once, then serves targets.
//!
//! Division of work per request:
//! - checkpoint: the probe copies every page of the live region table into
//!   the page store, inside the trigger syscall. If the table was stale, the
//!   store too small, or a page unreadable, the probe also stops the target
//!   (SIGSTOP right after the trigger syscall) and user space completes the
//!   image at that same instant, then releases it (`checkpoint.rs`).
//! - restore: with the BPF write path, the probe writes every saved page and
//!   zeroes pages absent at the checkpoint; pages it could not write are
//!   finished from user space while the target is held. Without it (kernel
//!   lockdown), the probe only holds the target and user space restores
//!   (`restore.rs`).
//!
//! `serve.rs` is the event loop and the target's lifecycle; `layout.rs`
//! keeps the probes' region table in step with the target's mappings.

mod checkpoint;
mod hold;
mod incremental;
mod layout;
mod openhold;
mod restore;
mod serve;
mod target;

pub use hold::cont;

use super::abi::{self, Config};
use super::markers::{self, Triggers};
use super::probes::{Probes, Set};
use super::report::{J, Reporter, Stats};
use super::watchdog::Watchdog;
use super::wire;
use crate::{Error, Result};
use nix::sys::signal::Signal;
use nix::sys::signalfd::{SfdFlags, SigSet, SignalFd};
pub use openhold::HoldChoice;
use openhold::OpenHold;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};

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
    /// How pages dirtied since a request are told apart (re-arming).
    pub dirty: crate::ckpt::dirty::Choice,
    /// How a one-thread target is held at its requests.
    pub hold: HoldChoice,
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

pub struct Engine {
    probes: Probes,
    cfg: Config,
    /// Config flags that hold for every target (exhaustive, THP).
    base_flags: u32,
    bpf_write: bool,
    /// The kernel keeps soft-dirty bits.
    soft_dirty: bool,
    /// Frame of the shared zero page, if pagemap shows frames.
    zero_pfn: Option<u64>,
    /// Who may write read-only pages through `/proc/PID/mem`.
    force: crate::ckpt::memio::Force,
    opts: Options,
    triggers: Triggers,
    signals: SignalFd,
    /// Continues a held target if bpfckpt dies (ckpt/watchdog.rs).
    watchdog: Watchdog,
    /// Holds targets in their trigger opens (ckpt/engine/openhold.rs).
    open_hold: Option<OpenHold>,
    pub total: Stats,
}

impl Engine {
    /// Checks privileges, picks the restore path, loads and attaches the probes.
    pub fn new(opts: Options) -> Result<Self> {
        check_privileges()?;
        // Before any map exists (the doctor's probes in the restore-path
        // choice create some too).
        super::memlock::raise();
        let mut triggers = Triggers::new(&opts.trigger_dir, abi::PATH_MAX)?;
        let degraded = degraded_why(
            &crate::doctor::features(),
            std::env::var_os(DEGRADED_ENV).is_some_and(|v| v == "1"),
        );
        let (bpf_write, write_why) = match &degraded {
            Some(why) if opts.restore_path == RestorePath::Bpf => {
                return Err(Error::new(format!(
                    "--restore-path bpf: degraded mode ({why}) has no BPF write path; \
                     use --restore-path user or auto"
                )));
            }
            Some(why) => (false, format!("degraded mode ({why})")),
            None => choose_restore_path(opts.restore_path)?,
        };
        let signals = signals_as_events()?;
        // After the mask: the watchdog inherits SIGINT/SIGTERM blocked.
        let watchdog = Watchdog::spawn()?;
        let set = match degraded {
            Some(_) => Set::Degraded,
            None => Set::Full { bpf_write },
        };
        if let Some(why) = &degraded {
            opts.report.warn(&format!(
                "degraded mode: {why}; the probes only hold the target at each request, \
                 user space copies and writes every page, and writes are not tracked \
                 (every page is tried)"
            ));
        }
        let probes = Probes::load(set, opts.report, opts.exhaustive)?;
        let tracked = !opts.exhaustive && probes.tracking();
        let mut base_flags = base_flags(!tracked);
        // Every checkpoint is held while a re-arming tracker may be set up:
        // re-arming needs the target still.
        if tracked && opts.dirty != crate::ckpt::dirty::Choice::Off {
            base_flags |= abi::F_INCREMENTAL;
        }
        let (open_hold, hold_why) = openhold::choose(opts.hold, &opts.trigger_dir)?;
        if open_hold.is_some() {
            base_flags |= abi::F_OPEN_HOLD;
            triggers.no_open = true;
        }
        let mut e = Self {
            cfg: initial_config(&triggers),
            probes,
            base_flags,
            bpf_write,
            soft_dirty: crate::ckpt::dirty::soft_dirty_available(),
            zero_pfn: super::procfs::zero_pfn(),
            force: crate::ckpt::memio::Force::get(),
            opts,
            triggers,
            signals,
            watchdog,
            open_hold,
            total: Stats::default(),
        };
        e.push_config()?;
        e.announce_restore_path(&write_why, &hold_why);
        Ok(e)
    }

    fn announce_restore_path(&self, write_why: &str, hold_why: &str) {
        let path = if self.bpf_write {
            "restore path: BPF (bpf_probe_write_user in the target's context)".to_string()
        } else if write_why.starts_with("degraded mode") {
            format!(
                "restore path: user space (process_vm_writev, /proc/PID/mem) with the target held, in {write_why}"
            )
        } else if self.opts.restore_path == RestorePath::User {
            "restore path: user space (requested)".to_string()
        } else {
            format!(
                "restore path: user space (process_vm_writev, /proc/PID/mem) with the target held; \
                 the kernel refuses bpf_probe_write_user: {write_why}"
            )
        };
        let hold = if self.open_hold.is_some() {
            "; a one-thread target is held in its trigger open (fanotify)".to_string()
        } else {
            format!("; targets are held with SIGSTOP ({hold_why})")
        };
        self.report().event(
            "start",
            &format!("{path}{hold}"),
            &[
                (
                    "restore_path",
                    J::S(if self.bpf_write { "bpf" } else { "user" }),
                ),
                ("degraded", J::B(write_why.starts_with("degraded mode"))),
                (
                    "trigger_dir",
                    J::S(&self.opts.trigger_dir.display().to_string()),
                ),
                (
                    "hold",
                    J::S(if self.open_hold.is_some() {
                        "open"
                    } else {
                        "signal"
                    }),
                ),
            ],
        );
    }

    /// Config flags for a served target, plus `extra`.
    fn flags(&self, extra: u32) -> u32 {
        abi::F_ACTIVE | self.base_flags | if self.bpf_write { abi::F_BPF_WRITE } else { 0 } | extra
    }

    /// Whether every page is tried (no touched-page tracking).
    fn exhaustive(&self) -> bool {
        self.base_flags & abi::F_EXHAUSTIVE != 0
    }

    pub fn report(&self) -> Reporter {
        self.opts.report
    }

    pub fn bpf_write(&self) -> bool {
        self.bpf_write
    }

    /// Publishes the config (nothing else changes).
    fn push_config(&mut self) -> Result<()> {
        self.probes.publish(&mut self.cfg, |_| Ok(())).map(drop)
    }

    /// Sets the process name `watch` waits for (first 15 bytes, as the kernel keeps it).
    pub fn set_watch(&mut self, comm: &str) -> Result<()> {
        self.watchdog.watching(comm);
        self.cfg.watch_comm = wire::fixed(comm.as_bytes());
        self.push_config()
    }
}

/// Forces degraded mode on any kernel when set to 1: the test hook that
/// proves the degraded path on a host that has every feature.
pub const DEGRADED_ENV: &str = "BPFCKPT_DEGRADED";

/// Why the probes run degraded (`features` lacks what the full set needs,
/// or `forced`), or `None` for the full set.
fn degraded_why(features: &crate::doctor::Features, forced: bool) -> Option<String> {
    let missing = features.missing();
    if !missing.is_empty() {
        Some(format!("this kernel lacks {}", missing.join(", ")))
    } else if forced {
        Some(format!("forced by {DEGRADED_ENV}=1"))
    } else {
        None
    }
}

/// Whether to restore with `bpf_probe_write_user`, and if not why.
fn choose_restore_path(requested: RestorePath) -> Result<(bool, String)> {
    let (write_ok, write_why) = match requested {
        RestorePath::User => (false, String::new()),
        _ => crate::doctor::probe_write_user_available(),
    };
    if requested == RestorePath::Bpf && !write_ok {
        return Err(Error::new(format!(
            "--restore-path bpf: this kernel refuses bpf_probe_write_user ({write_why}); \
             use --restore-path user or auto"
        )));
    }
    Ok((write_ok, write_why))
}

/// SIGINT/SIGTERM become readable events, so that a session ends in order
/// (target released, summary printed). Blocked before any child is spawned;
/// `run` unblocks them in the child again before exec.
fn signals_as_events() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block()
        .map_err(|e| Error::sys("block SIGINT/SIGTERM", e as i32))?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::sys("signalfd", e as i32))
}

/// Flags for every target: exhaustive, and whether THP maps whole chunks.
fn base_flags(exhaustive: bool) -> u32 {
    (if exhaustive { abi::F_EXHAUSTIVE } else { 0 })
        | if thp_for_all_memory(THP_SYSFS) {
            abi::F_THP_ALWAYS
        } else {
            0
        }
}

const THP_SYSFS: &str = "/sys/kernel/mm/transparent_hugepage";

/// Whether a fault anywhere may be backed by a huge page, so that later
/// writes next to it fault no more: the top-level knob, or any per-size
/// knob (PMD size or multi-size THP) set to `always`, or to `inherit`
/// while the top level says `always`. (With `madvise`, only ranges the
/// target marked with MADV_HUGEPAGE; the probes see that call.)
fn thp_for_all_memory(dir: &str) -> bool {
    let selected = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| {
                let (_, rest) = s.split_once('[')?;
                rest.split_once(']').map(|(v, _)| v.to_string())
            })
            .unwrap_or_default()
    };
    let top = selected(&std::path::Path::new(dir).join("enabled")) == "always";
    let sizes = std::fs::read_dir(dir).into_iter().flatten().flatten();
    top || sizes
        .filter(|e| e.file_name().to_string_lossy().starts_with("hugepages-"))
        .any(|e| match selected(&e.path().join("enabled")).as_str() {
            "always" => true,
            "inherit" => top,
            _ => false,
        })
}

fn initial_config(triggers: &Triggers) -> Config {
    let path = |name| wire::fixed(triggers.path(name).as_os_str().as_encoded_bytes());
    Config {
        tgid: 0,
        flags: 0,
        version: 0,
        applied_seq: u64::MAX,
        nregions: 0,
        nzero: 0,
        total_pages: 0,
        zero_pages: 0,
        capacity: 0,
        image_slots: 0,
        image_seq: u64::MAX,
        watch_comm: [0; abi::COMM_LEN],
        ckpt_path: path(markers::CHECKPOINT_REQUEST),
        restore_path: path(markers::RESTORE_REQUEST),
        self_tgid: std::process::id(),
        _pad: 0,
        nfree: 0,
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
mod degraded_tests {
    use super::*;
    use crate::doctor::Features;

    #[test]
    fn degraded_names_what_is_missing() {
        let all = Features {
            loop_helper: true,
            callbacks: true,
            atomics: true,
        };
        assert_eq!(degraded_why(&all, false), None);
        assert_eq!(
            degraded_why(&all, true).unwrap(),
            "forced by BPFCKPT_DEGRADED=1"
        );
        let k510 = Features {
            loop_helper: false,
            callbacks: false,
            atomics: false,
        };
        let why = degraded_why(&k510, false).unwrap();
        assert!(
            why.starts_with(
                "this kernel lacks bpf_loop (Linux 5.17), BPF callbacks (5.13), atomic"
            ),
            "{why}"
        );
        let k515 = Features {
            loop_helper: false,
            ..all
        };
        assert_eq!(
            degraded_why(&k515, true).unwrap(),
            "this kernel lacks bpf_loop (Linux 5.17)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(top: &str, sizes: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        std::fs::write(d.0.join("enabled"), top).unwrap();
        for (size, v) in sizes {
            let p = d.0.join(format!("hugepages-{size}"));
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("enabled"), v).unwrap();
        }
        d
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p =
                    std::env::temp_dir().join(format!("bpfckpt-thp-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn thp_for_all_memory_reads_every_knob() {
        let on = |d: &tempdir::Dir| thp_for_all_memory(d.0.to_str().unwrap());
        assert!(on(&knobs("[always] madvise never\n", &[])));
        assert!(!on(&knobs(
            "always [madvise] never\n",
            &[("2048kB", "always inherit [madvise] never")]
        )));
        assert!(on(&knobs(
            "always [madvise] never\n",
            &[("2048kB", "[always] inherit madvise never")]
        )));
        assert!(on(&knobs(
            "always [madvise] never\n",
            &[("64kB", "[always] inherit madvise never")]
        )));
        assert!(!on(&knobs(
            "always [madvise] never\n",
            &[("64kB", "always [inherit] madvise never")]
        )));
        assert!(on(&knobs(
            "[always] madvise never\n",
            &[("64kB", "always [inherit] madvise never")]
        )));
        assert!(!on(&knobs(
            "always madvise [never]\n",
            &[("16kB", "always inherit madvise [never]")]
        )));
    }
}
