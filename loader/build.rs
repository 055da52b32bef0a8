//! Builds the BPF probes and hands their object to the crate via
//! `BPFCKPT_PROBES_OBJ`, so that `cargo build` alone yields a complete binary.

use std::path::PathBuf;

fn main() {
    // rustc calls this very binary as the probe linker.
    bpfckpt_probe_build::maybe_act_as_linker();

    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("loader/ has a parent")
        .to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    for p in ["probes/src", "probes/Cargo.toml", "probes/target.json"] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let cfg = match bpfckpt_probe_build::BuildConfig::from_env(root, target_dir) {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    let obj = bpfckpt_probe_build::build(&cfg).unwrap_or_else(|e| fail(&e));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("probes.o");
    if let Err(e) = std::fs::copy(&obj, &out) {
        fail(&format!("copy {} -> {}: {e}", obj.display(), out.display()));
    }
    println!("cargo:rustc-env=BPFCKPT_PROBES_OBJ={}", out.display());
}

fn fail(msg: &str) -> ! {
    for line in msg.lines() {
        println!("cargo:warning={line}");
    }
    eprintln!("{msg}");
    std::process::exit(1);
}
