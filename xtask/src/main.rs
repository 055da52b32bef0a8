//! `cargo xtask <command>`: the project's build and test entry points.

mod bench;
mod fuzz;
mod inspect;
mod soak;
mod toolchain;
mod util;
mod vm;

use std::process::ExitCode;
use util::{Ctx, Result};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  build-probes   build the BPF probes; list each program, map and section
  test           run every test: unit, loader, kernel, scenarios, fuzz, soak, VM tier, bench smoke
  vm-test        boot guest kernels under QEMU and run the scenarios with the BPF restore path
  bench          measure throughput, cycle rate, overhead; write target/bench/latest.json
  fuzz           mutation-fuzz the object parser and linker for a while [--seconds N]
  soak           checkpoint/restore cycles with random damage, every byte verified [--minutes M]
  demo           build the release binary and run `bpfckpt demo`
";

fn main() -> ExitCode {
    // `build-probes` passes this binary to rustc as the probe linker.
    bpfckpt_probe_build::maybe_act_as_linker();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let ctx = match Ctx::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = toolchain::needs(cmd, rest)
        .map_or(Ok(()), |needs| toolchain::ensure(&ctx, needs))
        .and_then(|()| dispatch(&ctx, cmd, rest));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(ctx: &Ctx, cmd: &str, rest: &[String]) -> Result<()> {
    match cmd {
        "build-probes" => inspect::build_probes(ctx),
        "test" => test(ctx, rest),
        "vm-test" => vm::run(ctx, rest),
        "bench" => bench::run(ctx, rest),
        "fuzz" => fuzz::run(ctx, rest),
        "soak" => soak::run(ctx, rest),
        "demo" => demo(ctx, rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    }
}

fn demo(ctx: &Ctx, rest: &[String]) -> Result<()> {
    ctx.cargo(&["build", "--release", "-p", "bpfckpt"])?;
    let bin = ctx.root.join("target/release/bpfckpt");
    let mut args = vec!["demo".to_string()];
    args.extend(rest.iter().cloned());
    util::run_status(std::process::Command::new(bin).args(&args))
}

/// Everything CI runs, in order of increasing cost.
/// The host test that needs protection keys (PKU) in the CPU.
const PKEY_TEST: &str = "protection_key_denies_access_at_the_requests";

fn test(ctx: &Ctx, rest: &[String]) -> Result<()> {
    let quick = rest.iter().any(|a| a == "--no-vm");
    if !util::is_root() {
        eprintln!(
            "xtask: warning: not root; the kernel, scenario and VM tests need root and will fail"
        );
    }
    util::step("build (debug, all packages)");
    ctx.cargo(&["build", "--workspace", "--all-targets"])?;
    util::step("unit, loader, kernel and scenario tests");
    let mut args = vec!["test", "--workspace", "--", "--test-threads=2"];
    // A CPU without protection keys cannot run the protection-key test:
    // it is skipped here, named, and runs in the guests (QEMU's `-cpu max`
    // has them).
    if !util::cpu_has_flag("pku") {
        eprintln!(
            "xtask: this CPU has no protection keys (no `pku` in /proc/cpuinfo): \
             SKIPPING adversarial::{PKEY_TEST} on the host; the VM tier runs it (adv-pkey)"
        );
        args.extend(["--skip", PKEY_TEST]);
    }
    ctx.cargo(&args)?;
    util::step("fuzz the object parser and linker (60 s)");
    fuzz::run(ctx, &["--seconds".to_string(), "60".to_string()])?;
    util::step("soak: checkpoint/restore with random damage (1 minute, at least 1,000 cycles)");
    soak::run(
        ctx,
        &["--minutes", "1", "--min-cycles", "1000"].map(String::from),
    )?;
    util::step("bench smoke");
    bench::run(ctx, &["--smoke".to_string()])?;
    if quick {
        eprintln!("xtask: --no-vm: skipping the VM tier");
    } else {
        util::step("VM tier");
        vm::run(ctx, &[])?;
    }
    util::step("all tests passed");
    Ok(())
}
