//! `cargo xtask vm-test`: proves the BPF restore path (`bpf_probe_write_user`
//! in the target's context) in guest kernels without lockdown: a kernel under
//! lockdown, as this machine's is, refuses any program that uses the helper.
//!
//! Steps: QEMU (installed with apt when missing), the current Debian cloud
//! kernels of the release and of its backports (apt-get download + dpkg-deb
//! -x into target/vm/kernels, never installed), static musl builds of
//! bpfckpt, the protocol targets and the guest's `/init` (tests/targets/
//! vm_init.rs), a newc initramfs written here, then one TCG boot per kernel.
//! vm-init runs `bpfckpt doctor` and every scenario with `--restore-path
//! bpf`, prints one marker per result and reports the verdict through
//! QEMU's isa-debug-exit device; the host requires both.

mod apt;
mod cpio;
mod guest;
mod qemu;

use crate::util::{self, Ctx, Result};
use apt::Flavour;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo xtask vm-test [options]

Boots the Debian cloud kernels (stable and backports) under QEMU/TCG and runs
bpfckpt doctor plus every scenario with --restore-path bpf in the guest.

options:
  --kernel stable|backports   only this kernel (repeatable; default: both)
  --only NAME[,NAME...]       only these scenarios (doctor always runs)
  --cycles N                  cycles of the ckpt-target scenarios (default 3)
  --bss-cycles N              cycles of ckpt-bss400 (default 2)
  --timeout SECS              hard limit per kernel boot (default 600)
  --refresh                   refresh the package lists now
";

struct Opts {
    kernels: Vec<Flavour>,
    only: Option<Vec<String>>,
    cycles: u32,
    bss_cycles: u32,
    timeout: Duration,
    refresh: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Opts {
            kernels: Vec::new(),
            only: None,
            cycles: 3,
            bss_cycles: 2,
            timeout: Duration::from_secs(600),
            refresh: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value\n{USAGE}"))
            };
            let number = |v: String| -> Result<u64> {
                v.parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{a}: {v:?} is not a positive number"))
            };
            match a.as_str() {
                "--kernel" => {
                    for k in value()?.split(',') {
                        let f = match k {
                            "stable" => Flavour::Stable,
                            "backports" => Flavour::Backports,
                            _ => return Err(format!("--kernel {k}: stable or backports")),
                        };
                        if !o.kernels.contains(&f) {
                            o.kernels.push(f);
                        }
                    }
                }
                "--only" => {
                    let names: Vec<String> = value()?.split(',').map(str::to_string).collect();
                    let known = guest::scenarios(1, 1);
                    if let Some(bad) = names.iter().find(|n| !known.iter().any(|s| &s.name == *n)) {
                        let all: Vec<&str> = known.iter().map(|s| s.name.as_str()).collect();
                        return Err(format!(
                            "--only: no scenario {bad}; scenarios: {}",
                            all.join(" ")
                        ));
                    }
                    o.only = Some(names);
                }
                "--cycles" => o.cycles = number(value()?)? as u32,
                "--bss-cycles" => o.bss_cycles = number(value()?)? as u32,
                "--timeout" => o.timeout = Duration::from_secs(number(value()?)?),
                "--refresh" => o.refresh = true,
                "-h" | "--help" => return Err(USAGE.to_string()),
                _ => return Err(format!("vm-test: unknown argument {a}\n{USAGE}")),
            }
        }
        if o.kernels.is_empty() {
            o.kernels = vec![Flavour::Stable, Flavour::Backports];
        }
        Ok(o)
    }
}

/// How one kernel fared.
struct Outcome {
    flavour: Flavour,
    kernel: apt::Kernel,
    elapsed: Duration,
    log: std::path::PathBuf,
    verdict: std::result::Result<qemu::Report, String>,
}

pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    let opts = Opts::parse(args)?;
    let t0 = Instant::now();
    let vm_dir = ctx.target_dir().join("vm");
    std::fs::create_dir_all(&vm_dir).map_err(|e| format!("create {}: {e}", vm_dir.display()))?;

    util::step("VM tier: QEMU and the guest kernels");
    let apt = apt::Apt::new(&vm_dir.join("apt"))?;
    let qemu_bin = apt.ensure_qemu()?;
    apt.ensure_lists(opts.refresh)?;
    let qemu_version = util::run_output(std::process::Command::new(&qemu_bin).arg("--version"))
        .map(|v| v.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    eprintln!("xtask: vm-test: {} ({qemu_version})", qemu_bin.display());
    let mut kernels = Vec::new();
    for &flavour in &opts.kernels {
        let cache = vm_dir.join("kernels");
        let mut pkg = apt.resolve_kernel(flavour)?;
        let k = match apt.fetch_kernel(&pkg, &cache) {
            Ok(k) => k,
            Err(e) => {
                // The archive may have replaced that version since the
                // lists were fetched (security updates do).
                eprintln!("xtask: vm-test: {e}\nxtask: vm-test: refreshing the lists and retrying");
                apt.ensure_lists(true)?;
                pkg = apt.resolve_kernel(flavour)?;
                apt.fetch_kernel(&pkg, &cache)?
            }
        };
        let config = std::fs::read_to_string(&k.config)
            .map_err(|e| format!("read {}: {e}", k.config.display()))?;
        guest::check_kernel_config(&config)
            .map_err(|e| format!("{} {} cannot run the VM tier:\n{e}", pkg.name, pkg.version))?;
        eprintln!(
            "xtask: vm-test: {} kernel ({}): {} {} -> {}",
            flavour.name(),
            if flavour == Flavour::Stable {
                apt.codename().to_string()
            } else {
                format!("{}-backports", apt.codename())
            },
            pkg.name,
            pkg.version,
            k.vmlinuz.display()
        );
        kernels.push((flavour, k));
    }
    let prep = t0.elapsed();

    util::step("VM tier: static guest binaries and the initramfs");
    let bins = guest::build(ctx)?;
    let mut scenarios = guest::scenarios(opts.cycles, opts.bss_cycles);
    if let Some(only) = &opts.only {
        scenarios.retain(|s| only.contains(&s.name));
    }
    // A stuck program fails alone, well before the whole boot times out.
    let per_program = (opts.timeout.as_secs() / 2).clamp(30, 300);
    let conf = guest::conf(&scenarios, per_program);
    let image = guest::initramfs(&bins, &conf)?;
    let initrd = vm_dir.join("initramfs.cpio");
    std::fs::write(&initrd, &image).map_err(|e| format!("write {}: {e}", initrd.display()))?;
    eprintln!(
        "xtask: vm-test: {} ({:.1} MB; /init, /bin/bpfckpt, /bin/ckpt-target, /bin/ckpt-bss400, static {}), {} scenarios",
        initrd.display(),
        image.len() as f64 / 1e6,
        crate::toolchain::MUSL,
        scenarios.len()
    );
    let mut expected = vec!["doctor".to_string()];
    expected.extend(scenarios.iter().map(|s| s.name.clone()));

    let mut outcomes = Vec::new();
    for (flavour, k) in kernels {
        let major_minor: String = k
            .package
            .version
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".");
        util::step(&format!(
            "VM tier: {} {} ({}) under qemu -accel tcg, limit {} s",
            k.package.name,
            k.package.version,
            flavour.name(),
            opts.timeout.as_secs()
        ));
        let vmlinuz = k.vmlinuz.clone();
        let boot = qemu::Boot {
            qemu: &qemu_bin,
            kernel: &vmlinuz,
            initrd: &initrd,
            log: vm_dir.join(format!("console-{}.log", flavour.name())),
            timeout: opts.timeout,
            tag: format!("[{major_minor}] "),
        };
        let run = boot.run()?;
        let verdict = qemu::judge(&run, &expected, opts.timeout);
        if verdict.is_err() {
            let tail = run.lines.len().saturating_sub(40);
            eprintln!(
                "xtask: vm-test: {} FAILED; last {} console lines ({}):",
                k.package.name,
                run.lines.len() - tail,
                boot.log.display()
            );
            for l in &run.lines[tail..] {
                eprintln!("    {l}");
            }
            if !run.qemu_stderr.trim().is_empty() {
                eprintln!("qemu stderr:\n{}", run.qemu_stderr.trim_end());
            }
        }
        outcomes.push(Outcome {
            flavour,
            kernel: k,
            elapsed: run.elapsed,
            log: boot.log.clone(),
            verdict,
        });
    }

    util::step("VM tier summary");
    let mut failed = 0;
    for o in &outcomes {
        let pkg = &o.kernel.package;
        match &o.verdict {
            Ok(r) => {
                println!(
                    "PASS {:<9} {} {} (guest uname -r {}, lockdown {}): {} of {} markers passed in {:.1} s; restore path BPF in every scenario",
                    o.flavour.name(),
                    pkg.name,
                    pkg.version,
                    r.release,
                    r.lockdown,
                    r.results.len(),
                    expected.len(),
                    o.elapsed.as_secs_f64()
                );
                for m in &r.results {
                    println!("       {:<15} {}", m.name, m.detail);
                }
            }
            Err(e) => {
                failed += 1;
                println!(
                    "FAIL {:<9} {} {} after {:.1} s (console log {}):",
                    o.flavour.name(),
                    pkg.name,
                    pkg.version,
                    o.elapsed.as_secs_f64(),
                    o.log.display()
                );
                for l in e.lines() {
                    println!("       {l}");
                }
            }
        }
    }
    println!(
        "vm-test: {} of {} kernels passed; {:.1} s in all ({:.1} s for QEMU and kernels)",
        outcomes.len() - failed,
        outcomes.len(),
        t0.elapsed().as_secs_f64(),
        prep.as_secs_f64()
    );
    if failed > 0 {
        return Err(format!("vm-test: {failed} kernel(s) failed"));
    }
    Ok(())
}
