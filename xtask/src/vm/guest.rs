//! What the guest runs: static musl builds of bpfckpt, the protocol targets
//! and `vm-init`, packed with the scenario list into a newc initramfs.

use super::cpio;
// The dirty-target scenarios and what they must show, shared with the
// host's tests/dirty.rs and the guest.
#[path = "../../../tests/src/dirty_expect.rs"]
mod dirty_expect;
use crate::toolchain::MUSL;
use crate::util::{Ctx, Result};
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, elf};
use std::path::PathBuf;

/// What one check of the guest does (vm-init's `/vmtest.conf` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A protocol target that verifies its own memory after every restore,
    /// `--cycles N`; every restore of the BPF path is BPF's.
    Target { cycles: u32, exhaustive: bool },
    /// An `adv-target` scenario: on the BPF path at least one restore is
    /// BPF's, unless `moved` (its layout changes between every checkpoint
    /// and its restore, and a restore in another layout than the image's is
    /// user space's by design).
    Adv {
        cycles: u32,
        exhaustive: bool,
        moved: bool,
    },
    /// `rel-soak --seconds N`: random damage, zero corruptions.
    Soak { seconds: u32 },
    /// bpfckpt SIGKILLed in the middle of a checkpoint or a restore of
    /// `rel-target kill-window --mib N`.
    Kill { restore: bool, mib: u32 },
    /// A symlink planted at `checkpoint_complete` (to a file, or dangling):
    /// refused, not followed.
    Symlink { dangling: bool },
    /// A `dirty-target` scenario under `--dirty-tracking tracking`, which
    /// must pick `mechanism` and make the requests after the first
    /// checkpoint incremental.
    Dirty {
        cycles: u32,
        tracking: &'static str,
        mechanism: &'static str,
    },
}

/// One check of one restore path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub kind: Kind,
    pub program: Vec<String>,
}

/// The restore paths, in the order the guest runs them: the BPF path, then
/// (lockdown raised to integrity in the same boot) the user-space path.
pub const PATHS: [&str; 2] = ["bpf", "user"];

/// Every scenario of `ckpt-target` and its cycles (0: the `--cycles`
/// option); some scenarios are one cycle by construction.
pub const CKPT_TARGET_SCENARIOS: [(&str, u32); 11] = [
    ("heap-small", 0),
    ("heap-big", 0),
    ("shared-fixed", 0),
    ("bss-data", 0),
    ("data-untouched", 1),
    ("untouched", 1),
    ("zapped", 0),
    ("readonly", 1),
    ("inaccessible", 1),
    ("threads", 0),
    ("all", 0),
];
pub const BSS400: &str = "bss400";
/// The `adv-target` scenarios the guest runs (and whether each moves its
/// mappings between checkpoint and restore): one of each kind of layout
/// change, without kernel-wide settings (THP, hugetlb) or big costs under
/// TCG (`maps04` holds 1 GiB at its first checkpoint, which with its page
/// store does not fit a guest; `maps06`'s 20,000 mappings take 4-5 minutes
/// per path). `pkey` runs here too because a host CPU may lack protection
/// keys, which QEMU's `-cpu max` has.
pub const ADV_SCENARIOS: [(&str, bool); 9] = [
    ("baseline", false),
    ("maps00", false),
    ("maps05", false),
    ("maps05-rev", false),
    ("maps07-between", true),
    ("mprotect00", false),
    ("pkey", false),
    ("shm", false),
    ("zero-ranges-16k", false),
];
/// `steady` once more, with a debugger attached to the target.
pub const DIRTY_TRACED: &str = "steady-traced";
/// Userfaultfd's asynchronous write protection (`UFFD_FEATURE_WP_ASYNC`)
/// and `PAGEMAP_SCAN` came with Linux 6.7: older guests track by
/// soft-dirty alone.
pub const UFFD_MIN_SERIES: [u32; 2] = [6, 7];

/// The oldest kernel series `adv-target` runs on: it hashes memory with
/// `PAGEMAP_SCAN` (Linux 6.7).
pub const ADV_MIN_SERIES: [u32; 2] = [6, 7];

/// The oldest kernel series with every feature the probes need (`bpf_loop`,
/// 5.17): before it bpfckpt runs degraded, with no tracking to test.
pub const FULL_MIN_SERIES: [u32; 2] = [5, 17];

/// Whether `series` (`6.12`) is at least `min`.
pub fn series_at_least(series: &str, min: [u32; 2]) -> bool {
    let v: Vec<u32> = series.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    v.as_slice() >= min.as_slice()
}

/// What a guest of kernel `series` does not run, and why (for the summary).
pub fn not_run(series: &str) -> Option<String> {
    (!series_at_least(series, ADV_MIN_SERIES)).then(|| {
        format!(
            "the adv-* checks: adv-target hashes memory with PAGEMAP_SCAN (Linux >= {}.{})",
            ADV_MIN_SERIES[0], ADV_MIN_SERIES[1]
        )
    })
}

/// The target the kill checks SIGKILL bpfckpt under (MiB): big enough that
/// user space's part of the request takes a while, even natively.
pub const KILL_MIB: u32 = 256;

/// How much of each kind the guest runs.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub cycles: u32,
    pub bss_cycles: u32,
    pub adv_cycles: u32,
    pub soak_secs: u32,
    pub dirty_cycles: u32,
}

/// The name of a check's `--exhaustive` twin.
pub fn exhaustive_name(name: &str) -> String {
    format!("{name}+exhaustive")
}

/// The checks of `path` in a guest of kernel `series`. The `--exhaustive`
/// twins run on the BPF path only: they change how the checkpoint, always
/// BPF's, picks its pages, not how a restore writes them (and the host's own
/// suites run them on the user-space path).
///
/// The `dirty-*` checks run each scenario with `--dirty-tracking auto`,
/// which must pick soft-dirty where the kernel keeps the bits
/// (`soft_dirty`: its config has `CONFIG_MEM_SOFT_DIRTY`), else
/// userfaultfd; and from Linux 6.7 with `--dirty-tracking uffd` too
/// (`dirty-*+uffd`).
pub fn checks(z: Sizes, path: &str, series: &str, soft_dirty: bool) -> Vec<Check> {
    let modes: &[bool] = if path == "bpf" {
        &[false, true]
    } else {
        &[false]
    };
    let mut v = Vec::new();
    let mut each_mode = |name: &str, cycles: u32, program: Vec<String>| {
        for &exhaustive in modes {
            v.push(Check {
                name: if exhaustive {
                    exhaustive_name(name)
                } else {
                    name.to_string()
                },
                kind: Kind::Target { cycles, exhaustive },
                program: program.clone(),
            });
        }
    };
    for (s, cycles) in CKPT_TARGET_SCENARIOS {
        let cycles = if cycles == 0 { z.cycles } else { cycles };
        each_mode(s, cycles, vec!["/bin/ckpt-target".into(), s.into()]);
    }
    each_mode(BSS400, z.bss_cycles, vec!["/bin/ckpt-bss400".into()]);
    let rel = || vec!["/bin/rel-target".to_string()];
    for (name, restore) in [("kill-checkpoint", false), ("kill-restore", true)] {
        v.push(Check {
            name: name.into(),
            kind: Kind::Kill {
                restore,
                mib: KILL_MIB,
            },
            program: rel(),
        });
    }
    v.push(Check {
        name: "symlink".into(),
        kind: Kind::Symlink { dangling: false },
        program: rel(),
    });
    v.push(Check {
        name: "soak".into(),
        kind: Kind::Soak {
            seconds: z.soak_secs,
        },
        program: vec!["/bin/rel-soak".into()],
    });
    let uffd = series_at_least(series, UFFD_MIN_SERIES);
    let full = series_at_least(series, FULL_MIN_SERIES);
    let auto = match (full, soft_dirty, uffd) {
        (false, _, _) => None,
        (true, true, _) => Some("soft-dirty"),
        (true, false, true) => Some("uffd"),
        (true, false, false) => None,
    };
    // userfaultfd forced on one series that also has soft-dirty (the host
    // runs it on every test; guests are slow).
    let forced = uffd && series_at_least(series, [6, 12]) && !series_at_least(series, [6, 13]);
    let runs = [
        ("", "auto", auto),
        ("+uffd", "uffd", forced.then_some("uffd")),
    ];
    // On the user-space path only: on the BPF path a huge-page fault marks
    // its whole 2 MiB chunk, which the write helper puts back whole, so the
    // per-page bounds do not hold there (exactness on that path is what the
    // ckpt-target checks above prove, tracking on).
    let dirty_runs = if path == "user" { &runs[..] } else { &[] };
    for &(suffix, tracking, mechanism) in dirty_runs {
        let Some(mechanism) = mechanism else { continue };
        let scenarios = dirty_expect::SCENARIOS.iter().map(|s| (*s, *s, false));
        for (name, scenario, traced) in scenarios.chain([(DIRTY_TRACED, "steady", true)]) {
            let mut program = vec!["/bin/dirty-target".to_string(), scenario.to_string()];
            if traced {
                program.push("traced".into());
            }
            v.push(Check {
                name: format!("dirty-{name}{suffix}"),
                kind: Kind::Dirty {
                    cycles: z.dirty_cycles,
                    tracking,
                    mechanism,
                },
                program,
            });
        }
    }
    let adv = if series_at_least(series, ADV_MIN_SERIES) {
        &ADV_SCENARIOS[..]
    } else {
        &[]
    };
    for &(s, moved) in adv {
        v.push(Check {
            name: format!("adv-{s}"),
            kind: Kind::Adv {
                cycles: z.adv_cycles,
                exhaustive: false,
                moved,
            },
            program: vec!["/bin/adv-target".into(), s.into()],
        });
    }
    v
}

/// What a guest runs: the checks of each restore path, in order.
pub type Plan = Vec<(&'static str, Vec<Check>)>;

/// `/vmtest.conf` for vm-init.
pub fn conf(plan: &Plan, timeout_secs: u64) -> String {
    let mut s = String::from("# written by cargo xtask vm-test\n");
    s.push_str(&format!("timeout {timeout_secs}\n"));
    let mode = |exhaustive: bool| if exhaustive { "exhaustive" } else { "tracked" };
    for (path, checks) in plan {
        s.push_str(&format!("path {path}\n"));
        for c in checks {
            let head = match &c.kind {
                Kind::Target { cycles, exhaustive } => {
                    format!("target {} {cycles} {}", c.name, mode(*exhaustive))
                }
                Kind::Adv {
                    cycles,
                    exhaustive,
                    moved,
                } => format!(
                    "adv {} {cycles} {} {}",
                    c.name,
                    mode(*exhaustive),
                    if *moved { "moved" } else { "some-bpf" }
                ),
                Kind::Soak { seconds } => format!("soak {} {seconds}", c.name),
                Kind::Kill { restore, mib } => format!(
                    "kill {} {} {mib}",
                    c.name,
                    if *restore { "restore" } else { "checkpoint" }
                ),
                Kind::Dirty {
                    cycles,
                    tracking,
                    mechanism,
                } => format!("dirty {} {cycles} {tracking} {mechanism}", c.name),
                Kind::Symlink { dangling } => format!(
                    "symlink {} {}",
                    c.name,
                    if *dangling { "dangling" } else { "file" }
                ),
            };
            s.push_str(&format!("{head} {}\n", c.program.join(" ")));
        }
    }
    s
}

/// The markers a guest that runs `plan` must report, in order.
pub fn expected_markers(plan: &Plan) -> Vec<String> {
    let mut v = Vec::new();
    for (p, checks) in plan {
        if *p == "user" {
            v.push(format!("{p}/lockdown"));
        }
        v.push(format!("{p}/doctor"));
        v.extend(checks.iter().map(|c| format!("{p}/{}", c.name)));
    }
    v
}

/// The programs of the initramfs: its name there and the musl build's name.
pub const PROGRAMS: [(&str, &str); 8] = [
    ("init", "vm-init"),
    ("bin/bpfckpt", "bpfckpt"),
    ("bin/ckpt-target", "ckpt-target"),
    ("bin/ckpt-bss400", "ckpt-bss400"),
    ("bin/rel-target", "rel-target"),
    ("bin/rel-soak", "rel-soak"),
    ("bin/adv-target", "adv-target"),
    ("bin/dirty-target", "dirty-target"),
];

/// The static binaries, built for musl: (name in the initramfs, path).
pub struct Binaries(pub Vec<(&'static str, PathBuf)>);

/// Builds bpfckpt and the test programs for musl and checks that each is
/// fully static.
pub fn build(ctx: &Ctx) -> Result<Binaries> {
    ctx.cargo(&[
        "build",
        "--release",
        "--target",
        MUSL,
        "-p",
        "bpfckpt",
        "-p",
        "bpfckpt-tests",
    ])?;
    let dir = ctx.target_dir().join(MUSL).join("release");
    let b = Binaries(
        PROGRAMS
            .iter()
            .map(|(name, build)| (*name, dir.join(build)))
            .collect(),
    );
    for (_, p) in &b.0 {
        let data = std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()))?;
        check_static(&data).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(b)
}

/// Refuses anything but a static x86-64 executable: no program interpreter
/// (PT_INTERP), no shared-library dependency (DT_NEEDED).
pub fn check_static(data: &[u8]) -> Result<()> {
    let f = ElfFile64::<Endianness>::parse(data).map_err(|e| format!("not a 64-bit ELF: {e}"))?;
    let e = f.endian();
    let hdr = f.elf_header();
    if hdr.e_machine(e) != elf::EM_X86_64 {
        return Err(format!(
            "not an x86-64 executable (e_machine {})",
            hdr.e_machine(e)
        ));
    }
    if !matches!(hdr.e_type(e), elf::ET_EXEC | elf::ET_DYN) {
        return Err(format!("not an executable (e_type {})", hdr.e_type(e)));
    }
    let mut problems = Vec::new();
    for ph in f.elf_program_headers() {
        match ph.p_type(e) {
            elf::PT_INTERP => {
                let interp = ph
                    .data(e, data)
                    .ok()
                    .map(|d| {
                        String::from_utf8_lossy(d)
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_default();
                problems.push(format!("has a program interpreter (PT_INTERP {interp})"));
            }
            elf::PT_DYNAMIC => {
                let dyns = ph
                    .dynamic(e, data)
                    .map_err(|err| format!("bad PT_DYNAMIC: {err}"))?
                    .unwrap_or(&[]);
                let needed = dyns
                    .iter()
                    .filter(|d| d.tag32(e) == Some(elf::DT_NEEDED))
                    .count();
                if needed > 0 {
                    problems.push(format!("needs {needed} shared libraries (DT_NEEDED)"));
                }
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("not statically linked: {}", problems.join(", ")))
    }
}

/// The initramfs: /init, /bin/*, /vmtest.conf, /dev/console (the kernel
/// opens it for init's stdio before anything is mounted) and the mount
/// points.
pub fn initramfs(bins: &Binaries, conf: &str) -> Result<Vec<u8>> {
    let mut w = cpio::Writer::new();
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        w.dir(d, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    for (name, path) in &bins.0 {
        let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        w.file(name, 0o755, &data)?;
    }
    w.file("vmtest.conf", 0o644, conf.as_bytes())?;
    let img = w.finish();
    // Read it back: every file is there, in order, with its bytes.
    let entries = cpio::parse(&img).map_err(|e| format!("initramfs self-check: {e}"))?;
    for (name, path) in &bins.0 {
        let ok = entries.iter().any(|e| {
            e.name == *name
                && e.mode & cpio::S_IFMT == cpio::S_IFREG
                && std::fs::read(path).is_ok_and(|d| d == e.data)
        });
        if !ok {
            return Err(format!(
                "initramfs self-check: {name} is missing or differs"
            ));
        }
    }
    Ok(img)
}

/// Kernel options the guest needs built in (the initramfs has no modules).
const REQUIRED_CONFIG: [(&str, &str); 17] = [
    ("BLK_DEV_INITRD", "initramfs"),
    ("SERIAL_8250_CONSOLE", "console on ttyS0"),
    ("DEVTMPFS", "/dev"),
    ("TMPFS", "/tmp"),
    ("PROC_FS", "/proc"),
    ("PROC_PAGE_MONITOR", "/proc/PID/pagemap"),
    ("SYSFS", "/sys"),
    ("SECURITYFS", "/sys/kernel/security/lockdown"),
    ("BPF_SYSCALL", "bpf(2)"),
    ("BPF_EVENTS", "BPF programs on tracepoints"),
    ("FTRACE_SYSCALLS", "syscall tracepoints"),
    ("PERF_EVENTS", "perf_event_open(2)"),
    ("CROSS_MEMORY_ATTACH", "process_vm_readv(2)"),
    ("SIGNALFD", "signalfd(2)"),
    ("DEBUG_INFO_BTF", "kernel BTF"),
    ("X86_IOPL_IOPERM", "ioperm(2) for the isa-debug-exit port"),
    (
        "SECURITY_LOCKDOWN_LSM",
        "lockdown raised at run time for the user-space path",
    ),
];

/// Checks a kernel's `config-*` for what the guest needs.
pub fn check_kernel_config(config: &str) -> Result<()> {
    let value = |opt: &str| {
        let key = format!("CONFIG_{opt}=");
        config
            .lines()
            .find_map(|l| l.strip_prefix(&key).map(str::to_string))
    };
    let mut problems = Vec::new();
    for (opt, why) in REQUIRED_CONFIG {
        match value(opt).as_deref() {
            Some("y") => {}
            // /dev/port is an alternative to ioperm.
            _ if opt == "X86_IOPL_IOPERM" && value("DEVPORT").as_deref() == Some("y") => {}
            Some("m") => problems.push(format!(
                "CONFIG_{opt}=m ({why}) is a module; the initramfs carries no modules"
            )),
            _ => problems.push(format!("CONFIG_{opt} ({why}) is not enabled")),
        }
    }
    // The lockdown LSM only acts when it is enabled at boot.
    let lsm = value("LSM").unwrap_or_default();
    if value("SECURITY_LOCKDOWN_LSM").as_deref() == Some("y")
        && !lsm.contains("lockdown")
        && value("SECURITY_LOCKDOWN_LSM_EARLY").as_deref() != Some("y")
    {
        problems.push(format!(
            "the lockdown LSM is not enabled at boot (CONFIG_LSM={lsm}): the user-space path \
             could not be forced"
        ));
    }
    for forced in [
        "LOCK_DOWN_KERNEL_FORCE_INTEGRITY",
        "LOCK_DOWN_KERNEL_FORCE_CONFIDENTIALITY",
    ] {
        if value(forced).as_deref() == Some("y") {
            problems.push(format!(
                "CONFIG_{forced}=y: lockdown forbids bpf_probe_write_user"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_refused() {
        // This test binary is linked against glibc.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let e = check_static(&me).unwrap_err();
        assert!(e.contains("PT_INTERP") && e.contains("DT_NEEDED"), "{e}");
        assert!(
            check_static(b"#!/bin/sh\n")
                .unwrap_err()
                .contains("not a 64-bit ELF")
        );
    }

    const SIZES: Sizes = Sizes {
        cycles: 3,
        bss_cycles: 2,
        adv_cycles: 2,
        soak_secs: 20,
        dirty_cycles: 6,
    };

    fn plan() -> Plan {
        PATHS
            .iter()
            .map(|p| (*p, checks(SIZES, p, "6.12", true)))
            .collect()
    }

    #[test]
    fn conf_lists_every_check() {
        let bpf = checks(SIZES, "bpf", "6.12", true);
        let user = checks(SIZES, "user", "6.12", true);
        // ckpt-target and bss400 tracked and (BPF path only) exhaustive,
        // 2 kill, the symlink, the soak, the dirty-target scenarios and the
        // traced one (auto and uffd), the adversarial subset.
        let targets = CKPT_TARGET_SCENARIOS.len() + 1;
        let dirty = 2 * (dirty_expect::SCENARIOS.len() + 1);
        assert_eq!(bpf.len(), 2 * targets + 2 + 1 + 1 + ADV_SCENARIOS.len());
        assert_eq!(
            user.len(),
            targets + 2 + 1 + 1 + dirty + ADV_SCENARIOS.len()
        );
        let c = conf(&plan(), 240);
        assert!(
            c.starts_with("# written by cargo xtask vm-test\ntimeout 240\npath bpf\n"),
            "{c}"
        );
        let (b, u) = c.split_once("path user\n").unwrap();
        for line in [
            "target heap-small 3 tracked /bin/ckpt-target heap-small\n",
            "target readonly 1 tracked /bin/ckpt-target readonly\n",
            "target threads 3 tracked /bin/ckpt-target threads\n",
            "kill kill-checkpoint checkpoint 256 /bin/rel-target\n",
            "kill kill-restore restore 256 /bin/rel-target\n",
            "symlink symlink file /bin/rel-target\n",
            "soak soak 20 /bin/rel-soak\n",
            "adv adv-shm 2 tracked some-bpf /bin/adv-target shm\n",
            "adv adv-maps07-between 2 tracked moved /bin/adv-target maps07-between\n",
        ] {
            assert!(
                b.contains(line) && u.contains(line),
                "{line:?} not in both of\n{c}"
            );
        }
        for line in [
            "dirty dirty-thp 6 auto soft-dirty /bin/dirty-target thp\n",
            "dirty dirty-steady-traced+uffd 6 uffd uffd /bin/dirty-target steady traced\n",
        ] {
            assert!(!b.contains(line) && u.contains(line), "{line:?}\n{c}");
        }
        for line in [
            "target heap-small+exhaustive 3 exhaustive /bin/ckpt-target heap-small\n",
            "target bss400+exhaustive 2 exhaustive /bin/ckpt-bss400\n",
        ] {
            assert!(b.contains(line) && !u.contains(line), "{line:?}\n{c}");
        }
        // Every program a check runs is in the initramfs.
        for ch in bpf.iter().chain(&user) {
            let bin = ch.program[0].trim_start_matches('/');
            assert!(PROGRAMS.iter().any(|(n, _)| *n == bin), "{bin}");
        }
    }

    #[test]
    fn adv_target_needs_6_7() {
        for (series, adv) in [
            ("5.10", false),
            ("6.1", false),
            ("6.7", true),
            ("6.12", true),
            ("7.2", true),
        ] {
            let n = checks(SIZES, "bpf", series, true)
                .iter()
                .filter(|c| c.name.starts_with("adv-"))
                .count();
            assert_eq!(n, if adv { ADV_SCENARIOS.len() } else { 0 }, "{series}");
            assert_eq!(not_run(series).is_some(), !adv, "{series}");
        }
        assert!(
            not_run("6.1")
                .unwrap()
                .contains("PAGEMAP_SCAN (Linux >= 6.7)")
        );
    }

    #[test]
    fn dirty_tracking_per_kernel() {
        let dirty = |series, soft_dirty| -> Vec<(String, Kind)> {
            checks(SIZES, "user", series, soft_dirty)
                .into_iter()
                .filter(|c| c.name.starts_with("dirty-"))
                .map(|c| (c.name, c.kind))
                .collect()
        };
        let kind = |tracking, mechanism| Kind::Dirty {
            cycles: 6,
            tracking,
            mechanism,
        };
        // 6.1: soft-dirty only (no asynchronous userfaultfd before 6.7).
        let old = dirty("6.1", true);
        assert_eq!(old.len(), dirty_expect::SCENARIOS.len() + 1);
        assert!(old.iter().all(|(_, k)| *k == kind("auto", "soft-dirty")));
        assert!(old.iter().any(|(n, _)| n == "dirty-steady-traced"));
        // 6.12: auto picks soft-dirty, and userfaultfd forced.
        let new = dirty("6.12", true);
        assert_eq!(new.len(), 2 * old.len());
        assert!(new.contains(&("dirty-thp+uffd".into(), kind("uffd", "uffd"))));
        // A kernel without soft-dirty: auto picks userfaultfd; or nothing.
        assert!(
            dirty("6.12", false)
                .iter()
                .all(|(_, k)| *k == kind("auto", "uffd") || *k == kind("uffd", "uffd"))
        );
        assert!(dirty("6.1", false).is_empty());
        // userfaultfd forced on 6.12 only.
        assert!(!dirty("7.3", true).iter().any(|(n, _)| n.ends_with("+uffd")));
        // Degraded (no bpf_loop): nothing is tracked.
        assert!(dirty("5.10", true).is_empty());
    }

    #[test]
    fn markers_per_path() {
        let plan: Plan = plan()
            .into_iter()
            .map(|(p, c)| (p, c.into_iter().take(2).collect()))
            .collect();
        assert_eq!(
            expected_markers(&plan),
            [
                "bpf/doctor",
                "bpf/heap-small",
                "bpf/heap-small+exhaustive",
                "user/lockdown",
                "user/doctor",
                "user/heap-small",
                "user/heap-big"
            ]
        );
        let user_only: Plan = vec![("user", Vec::new())];
        assert_eq!(
            expected_markers(&user_only),
            ["user/lockdown", "user/doctor"]
        );
    }

    #[test]
    fn initramfs_layout() {
        let dir = std::env::temp_dir().join(format!("xtask-initramfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bins = Binaries(
            PROGRAMS
                .iter()
                .map(|(name, build)| {
                    let p = dir.join(build);
                    std::fs::write(&p, build.as_bytes()).unwrap();
                    (*name, p)
                })
                .collect(),
        );
        let img = initramfs(&bins, "timeout 1\n").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let entries = cpio::parse(&img).unwrap();
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("init").data, b"vm-init");
        assert_eq!(get("init").mode, cpio::S_IFREG | 0o755);
        assert_eq!(get("bin/bpfckpt").data, b"bpfckpt");
        assert_eq!(get("bin/adv-target").data, b"adv-target");
        assert_eq!(get("vmtest.conf").data, b"timeout 1\n");
        assert_eq!(get("dev/console").rdev, (5, 1));
        for d in ["bin", "dev", "proc", "sys", "tmp"] {
            assert_eq!(get(d).mode & cpio::S_IFMT, cpio::S_IFDIR, "{d}");
        }
    }

    #[test]
    fn kernel_config_check() {
        let mut good: String = REQUIRED_CONFIG
            .iter()
            .map(|(o, _)| format!("CONFIG_{o}=y\n"))
            .collect();
        good.push_str("CONFIG_LOCK_DOWN_KERNEL_FORCE_NONE=y\n# CONFIG_DEVPORT is not set\n");
        good.push_str("CONFIG_LSM=\"landlock,lockdown,yama,apparmor\"\n");
        assert!(check_kernel_config(&good).is_ok());
        let off = good.replace("landlock,lockdown,", "landlock,");
        assert!(
            check_kernel_config(&off)
                .unwrap_err()
                .contains("lockdown LSM is not enabled")
        );
        let early = format!("{off}CONFIG_SECURITY_LOCKDOWN_LSM_EARLY=y\n");
        assert!(check_kernel_config(&early).is_ok());
        let module = good.replace("CONFIG_BPF_EVENTS=y", "CONFIG_BPF_EVENTS=m");
        assert!(
            check_kernel_config(&module)
                .unwrap_err()
                .contains("CONFIG_BPF_EVENTS=m")
        );
        let missing = good.replace("CONFIG_SECURITYFS=y\n", "");
        assert!(
            check_kernel_config(&missing)
                .unwrap_err()
                .contains("CONFIG_SECURITYFS")
        );
        let devport = good.replace("CONFIG_X86_IOPL_IOPERM=y", "CONFIG_DEVPORT=y");
        assert!(check_kernel_config(&devport).is_ok());
        let locked = format!("{good}CONFIG_LOCK_DOWN_KERNEL_FORCE_INTEGRITY=y\n");
        assert!(
            check_kernel_config(&locked)
                .unwrap_err()
                .contains("lockdown")
        );
    }
}
