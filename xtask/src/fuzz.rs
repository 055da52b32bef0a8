//! `cargo xtask fuzz [--seconds N] [--seed S]`: time-bounded mutation
//! fuzzing of the loader's pure layers (obj::parse, link::link,
//! btf::program_btf) with the real probe object and the fixtures as seeds.
//!
//! The driver is an ignored test of the loader package,
//! loader/tests/fuzz_driver.rs, run here through cargo, so that xtask itself
//! does not depend on bpfckpt (and build the probes). It is built with the
//! test (debug) profile on purpose: integer overflow checks stay on, so an
//! arithmetic overflow on a hostile header is a finding, not a wrap. A
//! crashing input is saved as loader/bpfload/tests/fuzz-corpus/<kind>-<hash>.bin
//! (kept as a regression input, replayed by loader/bpfload/tests/fuzz_corpus.rs)
//! and the command fails.

use crate::util::{self, Ctx, Result};
use std::process::Command;

pub fn run(ctx: &Ctx, args: &[String]) -> Result<()> {
    let mut seconds = 60.0f64;
    let mut seed: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or("fuzz: --seconds needs a positive number")?;
            }
            "--seed" => seed = Some(it.next().ok_or("fuzz: --seed needs a number")?.clone()),
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask fuzz [--seconds N] [--seed S]\n\n\
                     Mutation-fuzzes obj::parse + link::link + btf::program_btf for N seconds\n\
                     (default 60). Crashing inputs are saved in loader/bpfload/tests/fuzz-corpus/."
                );
                return Ok(());
            }
            other => return Err(format!("fuzz: unknown argument `{other}` (try --help)")),
        }
    }
    let mut cmd = Command::new(&ctx.cargo);
    cmd.current_dir(&ctx.root)
        .args([
            "test",
            "-p",
            "bpfckpt",
            "--test",
            "fuzz_driver",
            "--",
            "--ignored",
            "--exact",
            "fuzz_driver",
            "--nocapture",
        ])
        .env("BPFCKPT_FUZZ_SECONDS", seconds.to_string());
    if let Some(s) = seed {
        cmd.env("BPFCKPT_FUZZ_SEED", s);
    }
    util::run_status(&mut cmd)
}
