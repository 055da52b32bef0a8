//! What the guest runs: static musl builds of bpfckpt, the protocol targets
//! and `vm-init`, packed with the scenario list into a newc initramfs.

use super::cpio;
use crate::toolchain::MUSL;
use crate::util::{Ctx, Result};
use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, elf};
use std::path::{Path, PathBuf};

/// One scenario of the guest: `bpfckpt run ... -- PROGRAM... --cycles N`.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub cycles: u32,
    pub program: Vec<String>,
}

/// Every scenario of `ckpt-target`, then the 400 MB `.bss` target.
pub const CKPT_TARGET_SCENARIOS: [&str; 9] = [
    "heap-small",
    "heap-big",
    "shared-fixed",
    "bss-data",
    "data-untouched",
    "untouched",
    "zapped",
    "readonly",
    "all",
];
pub const BSS400: &str = "bss400";

pub fn scenarios(cycles: u32, bss_cycles: u32) -> Vec<Scenario> {
    let mut v: Vec<Scenario> = CKPT_TARGET_SCENARIOS
        .iter()
        .map(|s| Scenario {
            name: s.to_string(),
            cycles,
            program: vec!["/bin/ckpt-target".into(), s.to_string()],
        })
        .collect();
    v.push(Scenario {
        name: BSS400.into(),
        cycles: bss_cycles,
        program: vec!["/bin/ckpt-bss400".into()],
    });
    v
}

/// `/vmtest.conf` for vm-init.
pub fn conf(scenarios: &[Scenario], timeout_secs: u64) -> String {
    let mut s = String::from("# written by cargo xtask vm-test\n");
    s.push_str(&format!("timeout {timeout_secs}\n"));
    for sc in scenarios {
        s.push_str(&format!(
            "scenario {} {} {}\n",
            sc.name,
            sc.cycles,
            sc.program.join(" ")
        ));
    }
    s
}

/// The static binaries, built for musl.
pub struct Binaries {
    pub init: PathBuf,
    pub bpfckpt: PathBuf,
    pub ckpt_target: PathBuf,
    pub ckpt_bss400: PathBuf,
}

impl Binaries {
    fn all(&self) -> [(&'static str, &Path); 4] {
        [
            ("init", &self.init),
            ("bin/bpfckpt", &self.bpfckpt),
            ("bin/ckpt-target", &self.ckpt_target),
            ("bin/ckpt-bss400", &self.ckpt_bss400),
        ]
    }
}

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
    let b = Binaries {
        init: dir.join("vm-init"),
        bpfckpt: dir.join("bpfckpt"),
        ckpt_target: dir.join("ckpt-target"),
        ckpt_bss400: dir.join("ckpt-bss400"),
    };
    for (_, p) in b.all() {
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
    for (name, path) in bins.all() {
        let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        w.file(name, 0o755, &data)?;
    }
    w.file("vmtest.conf", 0o644, conf.as_bytes())?;
    let img = w.finish();
    // Read it back: every file is there, in order, with its bytes.
    let entries = cpio::parse(&img).map_err(|e| format!("initramfs self-check: {e}"))?;
    for (name, path) in bins.all() {
        let ok = entries.iter().any(|e| {
            e.name == name
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
const REQUIRED_CONFIG: [(&str, &str); 16] = [
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

    #[test]
    fn conf_lists_every_scenario() {
        let sc = scenarios(3, 2);
        assert_eq!(sc.len(), 10);
        let c = conf(&sc, 240);
        assert!(c.contains("timeout 240\n"));
        assert!(c.contains("scenario heap-small 3 /bin/ckpt-target heap-small\n"));
        assert!(c.contains("scenario all 3 /bin/ckpt-target all\n"));
        assert!(c.ends_with("scenario bss400 2 /bin/ckpt-bss400\n"));
    }

    #[test]
    fn initramfs_layout() {
        let dir = std::env::temp_dir().join(format!("xtask-initramfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mk = |n: &str| {
            let p = dir.join(n);
            std::fs::write(&p, n.as_bytes()).unwrap();
            p
        };
        let bins = Binaries {
            init: mk("init"),
            bpfckpt: mk("bpfckpt"),
            ckpt_target: mk("ckpt-target"),
            ckpt_bss400: mk("ckpt-bss400"),
        };
        let img = initramfs(&bins, "timeout 1\n").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let entries = cpio::parse(&img).unwrap();
        let get = |n: &str| entries.iter().find(|e| e.name == n).unwrap();
        assert_eq!(get("init").data, b"init");
        assert_eq!(get("init").mode, cpio::S_IFREG | 0o755);
        assert_eq!(get("bin/bpfckpt").data, b"bpfckpt");
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
        assert!(check_kernel_config(&good).is_ok());
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
