//! `cargo xtask vm-test`: runs bpfckpt in Debian guest kernels from 5.10 to
//! 7.x, on both restore paths: the BPF path (`bpf_probe_write_user` in the
//! target's context), which a kernel under lockdown, as this machine's is,
//! refuses; then, lockdown raised to integrity in the same boot, the
//! user-space path.
//!
//! Steps: QEMU (installed with apt when missing), the current cloud kernel
//! of each guest's Debian suite (apt-get download + dpkg-deb -x into
//! target/vm/kernels with a private apt state per suite, never installed),
//! static musl builds of bpfckpt, the test targets and the guest's `/init`
//! (tests/targets/vm_init.rs), a newc initramfs written here, then one TCG
//! boot per kernel, two at a time. vm-init runs `bpfckpt doctor` and every
//! check per path, prints one marker per result and reports the verdict
//! through QEMU's isa-debug-exit device; the host requires both.

mod apt;
mod cpio;
mod guest;
mod qemu;

use crate::util::{self, Ctx, Result};
use apt::Guest;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo xtask vm-test [options]

Boots the cloud kernel of each Debian suite below under QEMU/TCG and runs
bpfckpt doctor plus every check in the guest, first with --restore-path bpf,
then with lockdown raised to integrity (--restore-path auto must pick user).

  kernel  suite
  5.10    bullseye-security
  6.1     bookworm (+ bookworm-security)
  6.12    bookworm-backports
  7.3     trixie-backports
  7.2     sid

options:
  --kernel K[,K...]           only these kernels (series or suite; default: all)
  --path bpf|user             only this restore path (default: both)
  --only NAME[,NAME...]       only these checks (NAME also selects NAME+exhaustive,
                              run on the BPF path only; doctor always runs)
  --cycles N                  cycles of the ckpt-target scenarios (default 3)
  --bss-cycles N              cycles of ckpt-bss400 (default 1)
  --adv-cycles N              cycles of the adv-target scenarios (default 2)
  --soak-secs N               seconds of rel-soak per path (default 20)
  --dirty-cycles N            cycles of the dirty-target scenarios (default 6)
  --jobs N                    guests booted at once (default 2)
  --timeout SECS              hard limit per kernel boot (default 2400)
  --refresh                   refresh the package lists now
";

struct Opts {
    kernels: Vec<Guest>,
    paths: Vec<&'static str>,
    only: Option<Vec<String>>,
    sizes: guest::Sizes,
    jobs: usize,
    timeout: Duration,
    refresh: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Opts {
            kernels: Vec::new(),
            paths: guest::PATHS.to_vec(),
            only: None,
            sizes: guest::Sizes {
                cycles: 3,
                bss_cycles: 1,
                adv_cycles: 2,
                soak_secs: 20,
                dirty_cycles: 6,
            },
            jobs: 2,
            timeout: Duration::from_secs(2400),
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
                        let g = apt::guest_named(k).ok_or_else(|| {
                            let names: Vec<String> = apt::GUESTS
                                .iter()
                                .map(|g| format!("{} ({})", g.series, g.suite))
                                .collect();
                            format!("--kernel {k}: one of {}", names.join(", "))
                        })?;
                        if !o.kernels.contains(&g) {
                            o.kernels.push(g);
                        }
                    }
                }
                "--path" => {
                    let p = value()?;
                    let p = guest::PATHS
                        .iter()
                        .find(|x| **x == p)
                        .ok_or_else(|| format!("--path {p}: bpf or user"))?;
                    o.paths = vec![p];
                }
                "--only" => {
                    let names: Vec<String> = value()?.split(',').map(str::to_string).collect();
                    // Every check some guest runs on either path (6.12 has
                    // them all: the dirty ones run on the user-space path).
                    let mut known = guest::checks(o.sizes, "bpf", "6.12", true);
                    known.extend(guest::checks(o.sizes, "user", "6.12", true));
                    if let Some(bad) = names.iter().find(|n| !known.iter().any(|c| &c.name == *n)) {
                        let all: Vec<&str> = known.iter().map(|c| c.name.as_str()).collect();
                        return Err(format!("--only: no check {bad}; checks: {}", all.join(" ")));
                    }
                    o.only = Some(names);
                }
                "--cycles" => o.sizes.cycles = number(value()?)? as u32,
                "--bss-cycles" => o.sizes.bss_cycles = number(value()?)? as u32,
                "--adv-cycles" => o.sizes.adv_cycles = number(value()?)? as u32,
                "--soak-secs" => o.sizes.soak_secs = number(value()?)? as u32,
                "--dirty-cycles" => o.sizes.dirty_cycles = number(value()?)? as u32,
                "--jobs" => o.jobs = number(value()?)? as usize,
                "--timeout" => o.timeout = Duration::from_secs(number(value()?)?),
                "--refresh" => o.refresh = true,
                "-h" | "--help" => return Err(USAGE.to_string()),
                _ => return Err(format!("vm-test: unknown argument {a}\n{USAGE}")),
            }
        }
        if o.kernels.is_empty() {
            o.kernels = apt::GUESTS.to_vec();
        }
        Ok(o)
    }

    /// The checks of each path in a guest of kernel `series` (with
    /// soft-dirty bits if `soft_dirty`): all, or those `--only` names (with
    /// their `--exhaustive` twins).
    fn plan(&self, series: &str, soft_dirty: bool) -> guest::Plan {
        self.paths
            .iter()
            .map(|&p| {
                let mut checks = guest::checks(self.sizes, p, series, soft_dirty);
                if let Some(only) = &self.only {
                    checks.retain(|c| {
                        only.iter()
                            .any(|n| c.name == *n || c.name == guest::exhaustive_name(n))
                    });
                }
                (p, checks)
            })
            .collect()
    }
}

/// A kernel ready to boot.
struct Prepared {
    guest: Guest,
    kernel: apt::Kernel,
    /// Its config has `CONFIG_MEM_SOFT_DIRTY`.
    soft_dirty: bool,
}

/// How one kernel fared.
struct Outcome {
    guest: Guest,
    kernel: apt::Kernel,
    elapsed: Duration,
    log: std::path::PathBuf,
    verdict: qemu::Verdict,
}

impl Outcome {
    /// `6.12`: the series the kernel really is (a suite may have moved on).
    fn series(&self) -> String {
        self.kernel.package.series()
    }
}

/// Fetches (or finds in the cache) `guest`'s kernel and checks its config.
fn prepare(vm_dir: &std::path::Path, guest: Guest, refresh: bool) -> Result<Prepared> {
    let apt = apt::Apt::suite(&vm_dir.join("apt"), &guest)?;
    apt.ensure_lists(refresh)?;
    let cache = vm_dir.join("kernels");
    let mut pkg = apt.resolve_kernel()?;
    let kernel = match apt.fetch_kernel(&pkg, &cache) {
        Ok(k) => k,
        Err(e) => {
            // The archive may have replaced that version since the lists
            // were fetched (security updates do).
            eprintln!("xtask: vm-test: {e}\nxtask: vm-test: refreshing the lists and retrying");
            apt.ensure_lists(true)?;
            pkg = apt.resolve_kernel()?;
            apt.fetch_kernel(&pkg, &cache)?
        }
    };
    let config = std::fs::read_to_string(&kernel.config)
        .map_err(|e| format!("read {}: {e}", kernel.config.display()))?;
    guest::check_kernel_config(&config)
        .map_err(|e| format!("{} {} cannot run the VM tier:\n{e}", pkg.name, pkg.version))?;
    eprintln!(
        "xtask: vm-test: {} ({}): {} {}{} -> {}",
        guest.series,
        guest.suite,
        pkg.name,
        pkg.version,
        match pkg.layout {
            apt::Layout::Boot => String::new(),
            apt::Layout::Split => format!(" (files from {})", pkg.parts().join(", ")),
        },
        kernel.vmlinuz.display()
    );
    if pkg.series() != guest.series {
        eprintln!(
            "xtask: vm-test: warning: {}'s cloud kernel is {} now, not {}: testing it; update \
             GUESTS in xtask/src/vm/apt.rs and the README's kernel table",
            guest.suite,
            pkg.series(),
            guest.series
        );
    }
    let soft_dirty = config.lines().any(|l| l == "CONFIG_MEM_SOFT_DIRTY=y");
    Ok(Prepared {
        guest,
        kernel,
        soft_dirty,
    })
}

pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    let opts = Opts::parse(args)?;
    let t0 = Instant::now();
    let vm_dir = ctx.target_dir().join("vm");
    std::fs::create_dir_all(&vm_dir).map_err(|e| format!("create {}: {e}", vm_dir.display()))?;

    util::step("VM tier: QEMU and the guest kernels");
    let host = apt::Apt::host(&vm_dir.join("apt").join("host"))?;
    let qemu_bin = host.ensure_qemu()?;
    let qemu_version = util::run_output(std::process::Command::new(&qemu_bin).arg("--version"))
        .map(|v| v.lines().next().unwrap_or("").to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    eprintln!("xtask: vm-test: {} ({qemu_version})", qemu_bin.display());
    let mut kernels = Vec::new();
    for &g in &opts.kernels {
        kernels.push(prepare(&vm_dir, g, opts.refresh)?);
    }
    let prep = t0.elapsed();

    util::step("VM tier: static guest binaries and the initramfs");
    let bins = guest::build(ctx)?;
    // A stuck program fails alone, well before the whole boot times out.
    let per_program = (opts.timeout.as_secs() / 4).clamp(30, 300);
    let mut jobs = Vec::new();
    for p in kernels {
        // What a guest runs depends on its kernel (adv-target needs 6.7).
        let series = p.kernel.package.series();
        let plan = opts.plan(&series, p.soft_dirty);
        let image = guest::initramfs(&bins, &guest::conf(&plan, per_program))?;
        let initrd = vm_dir.join(format!("initramfs-{series}.cpio"));
        std::fs::write(&initrd, &image).map_err(|e| format!("write {}: {e}", initrd.display()))?;
        let per_path: Vec<String> = plan
            .iter()
            .map(|(p, c)| format!("{} on the {p} path", c.len()))
            .collect();
        let expected = guest::expected_markers(&plan);
        eprintln!(
            "xtask: vm-test: {} ({:.1} MB; /init and {} programs, static {}): checks: {}; {} markers{}",
            initrd.display(),
            image.len() as f64 / 1e6,
            bins.0.len() - 1,
            crate::toolchain::MUSL,
            per_path.join(", "),
            expected.len(),
            guest::not_run(&series)
                .map(|n| format!("; not run: {n}"))
                .unwrap_or_default()
        );
        jobs.push(Job {
            prepared: p,
            initrd,
            expected,
        });
    }

    let queue_len = jobs.len();
    util::step(&format!(
        "VM tier: {} kernel(s) under qemu -accel tcg, {} at a time, limit {} s each",
        queue_len,
        opts.jobs,
        opts.timeout.as_secs()
    ));
    let queue = Mutex::new(jobs.into_iter().collect::<VecDeque<_>>());
    let outcomes = Mutex::new(Vec::new());
    let failure = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs {
            s.spawn(|| {
                // The guard is dropped inside the closure: boots run unlocked.
                let next = || queue.lock().ok().and_then(|mut q| q.pop_front());
                while let Some(j) = next() {
                    match boot(&j, &qemu_bin, &vm_dir, opts.timeout) {
                        Ok(o) => {
                            if let Ok(mut v) = outcomes.lock() {
                                v.push(o);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or(None) {
        return Err(e);
    }
    let mut outcomes = outcomes.into_inner().unwrap_or_default();
    outcomes.sort_by_key(|o| series_key(&o.series()));

    util::step("VM tier summary");
    let mut failed = 0;
    for o in &outcomes {
        let pkg = &o.kernel.package;
        let series = o.series();
        for m in &o.verdict.results {
            let (path, name) = m.name.split_once('/').unwrap_or(("-", &m.name));
            println!(
                "[{series}/{path}] {} {name} {}",
                if m.passed { "PASS" } else { "FAIL" },
                m.detail
            );
        }
        for m in &o.verdict.unexpected {
            println!("[{series}] FAIL {} {}", m.name, m.detail);
        }
        for p in &o.verdict.problems {
            println!("[{series}] FAIL {p}");
        }
        if let Some(n) = guest::not_run(&series) {
            println!("[{series}] not run: {n}");
        }
        let per_path: Vec<String> = opts
            .paths
            .iter()
            .map(|p| {
                let of_path: Vec<&qemu::Marker> = o
                    .verdict
                    .results
                    .iter()
                    .filter(|m| m.name.starts_with(&format!("{p}/")))
                    .collect();
                let passed = of_path.iter().filter(|m| m.passed).count();
                format!("{p} {passed} of {} passed", of_path.len())
            })
            .collect();
        let passed = o.verdict.passed();
        if !passed {
            failed += 1;
        }
        println!(
            "{} {series}: {} {} from {} (guest uname -r {}, lockdown {}): {} in {:.1} s; console log {}",
            if passed { "PASS" } else { "FAIL" },
            pkg.name,
            pkg.version,
            o.guest.suite,
            o.verdict.report.release,
            o.verdict.report.lockdown.join(" -> "),
            per_path.join(", "),
            o.elapsed.as_secs_f64(),
            o.log.display()
        );
    }
    println!(
        "vm-test: {} of {} kernels passed; {:.1} s in all ({:.1} s for QEMU and the kernels)",
        outcomes.len() - failed,
        outcomes.len(),
        t0.elapsed().as_secs_f64(),
        prep.as_secs_f64()
    );
    if failed > 0 {
        let names: Vec<String> = outcomes
            .iter()
            .filter(|o| !o.verdict.passed())
            .map(Outcome::series)
            .collect();
        return Err(format!(
            "vm-test: {failed} kernel(s) failed: {}",
            names.join(", ")
        ));
    }
    Ok(())
}

/// A kernel with its initramfs and the markers its guest must report.
struct Job {
    prepared: Prepared,
    initrd: std::path::PathBuf,
    expected: Vec<String>,
}

/// Boots one kernel and judges what its guest reported.
fn boot(
    j: &Job,
    qemu_bin: &std::path::Path,
    vm_dir: &std::path::Path,
    timeout: Duration,
) -> Result<Outcome> {
    let p = &j.prepared;
    let series = p.kernel.package.series();
    let b = qemu::Boot {
        qemu: qemu_bin,
        kernel: &p.kernel.vmlinuz,
        initrd: &j.initrd,
        log: vm_dir.join(format!("console-{series}.log")),
        timeout,
        mem_mib: GUEST_MEM_MIB,
        tag: format!("[{series}] "),
    };
    eprintln!(
        "xtask: vm-test: booting {} {} ({})",
        p.kernel.package.name, p.kernel.package.version, p.guest.suite
    );
    let run = b.run()?;
    let verdict = qemu::judge(&run, &j.expected, timeout);
    if !verdict.passed() {
        let tail = run.lines.len().saturating_sub(40);
        let mut msg = format!(
            "xtask: vm-test: {series} FAILED; last {} console lines ({}):\n",
            run.lines.len() - tail,
            b.log.display()
        );
        for l in &run.lines[tail..] {
            msg.push_str(&format!("    [{series}] {l}\n"));
        }
        if !run.qemu_stderr.trim().is_empty() {
            msg.push_str(&format!("qemu stderr:\n{}\n", run.qemu_stderr.trim_end()));
        }
        msg.push_str(&format!("xtask: vm-test: {series} failures:\n"));
        for f in verdict.failures() {
            msg.push_str(&format!("    [{series}] {f}\n"));
        }
        eprint!("{msg}");
    } else {
        eprintln!(
            "xtask: vm-test: {series} passed in {:.1} s",
            run.elapsed.as_secs_f64()
        );
    }
    Ok(Outcome {
        guest: p.guest,
        kernel: p.kernel.clone(),
        elapsed: run.elapsed,
        log: b.log.clone(),
        verdict,
    })
}

/// Guest memory: the 512 MiB adversarial scenario keeps its memory and a
/// page store as big, and the cloud kernels run THP "always".
const GUEST_MEM_MIB: u32 = 2048;

/// Sorts `6.12` after `6.1` and before `7.2`.
fn series_key(series: &str) -> Vec<u32> {
    series.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = Opts::parse(&[]).unwrap();
        assert_eq!(o.kernels.len(), apt::GUESTS.len());
        assert_eq!(o.paths, ["bpf", "user"]);
        let o = Opts::parse(&args(&["--kernel", "5.10,sid,7.2", "--path", "user"])).unwrap();
        let k: Vec<&str> = o.kernels.iter().map(|g| g.series).collect();
        assert_eq!(k, ["5.10", "7.2"]);
        assert_eq!(o.paths, ["user"]);
        assert!(
            Opts::parse(&args(&["--kernel", "stable"]))
                .err()
                .unwrap()
                .contains("one of 6.12 (bookworm-backports)")
        );
        assert!(Opts::parse(&args(&["--path", "both"])).is_err());
        let o = Opts::parse(&args(&["--only", "heap-small,soak"])).unwrap();
        let plan = o.plan("6.12", true);
        let names =
            |i: usize| -> Vec<String> { plan[i].1.iter().map(|c| c.name.clone()).collect() };
        assert_eq!(plan[0].0, "bpf");
        assert_eq!(names(0), ["heap-small", "heap-small+exhaustive", "soak"]);
        assert_eq!(plan[1].0, "user");
        assert_eq!(names(1), ["heap-small", "soak"]);
        assert!(
            Opts::parse(&args(&["--only", "nope"]))
                .err()
                .unwrap()
                .contains("no check nope")
        );
    }

    #[test]
    fn series_order() {
        let mut v = vec!["7.3", "6.12", "5.10", "7.2", "6.1"];
        v.sort_by_key(|s| series_key(s));
        assert_eq!(v, ["5.10", "6.1", "6.12", "7.2", "7.3"]);
    }
}
