//! Builds bpfckpt's BPF probes without bpf-linker or a system LLVM; used by
//! `loader/build.rs` (so that `cargo build` alone yields a complete binary)
//! and by `cargo xtask build-probes`.
//!
//! The probes are compiled by rustc's own LLVM for the custom target
//! `probes/target.json` (the built-in BPF target with `obj-is-bitcode:
//! false`, so a relocatable BPF ELF rather than bitcode), against a tiny
//! sysroot built here ([`ensure_sysroot`]), with `RUSTC_BOOTSTRAP=1` only in
//! the child cargo's environment. The link step ([`probe_link`]) runs inside
//! the same binary that started the build: it copies the single codegen unit
//! to the output after refusing undefined symbols and unsupported
//! relocations.

mod link;
mod sysroot;

pub use link::{LINKER_ENV, check_object, maybe_act_as_linker, probe_link};
pub use sysroot::{core_src, ensure_sysroot};

use std::path::PathBuf;
use std::process::Command;

/// Where and with what the probes are built.
pub struct BuildConfig {
    /// Repository root (holds `probes/`).
    pub root: PathBuf,
    /// Cargo target directory for host artefacts; probe artefacts go below it.
    pub target_dir: PathBuf,
    /// rustc to use (the one driving the outer build).
    pub rustc: PathBuf,
    /// cargo to use.
    pub cargo: PathBuf,
    /// The binary rustc calls as linker; it must call [`maybe_act_as_linker`].
    pub linker: PathBuf,
}

impl BuildConfig {
    /// Configuration for a build script or xtask: tools from the environment
    /// cargo gives us, falling back to the ones on PATH.
    pub fn from_env(root: PathBuf, target_dir: PathBuf) -> Result<Self, String> {
        let rustc = std::env::var_os("RUSTC").map_or_else(|| "rustc".into(), PathBuf::from);
        let cargo = std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from);
        let linker = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        Ok(Self {
            root,
            target_dir,
            rustc,
            cargo,
            linker,
        })
    }
}

/// Runs `cmd`, returning its stdout, or an error with both its outputs.
pub fn run_output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed ({}):\n{}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Strips what the outer cargo put in the environment for *its* build so
/// that it does not leak into the probe build (flags, wrappers such as
/// clippy-driver, target overrides).
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leak = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTC_BOOTSTRAP"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if leak {
            cmd.env_remove(key);
        }
    }
}

/// Builds the probes and returns the path of the BPF object.
pub fn build(cfg: &BuildConfig) -> Result<PathBuf, String> {
    let sysroot = ensure_sysroot(cfg)?;
    let probe_target = cfg.target_dir.join("bpf");
    let mut c = Command::new(&cfg.cargo);
    clean_env(&mut c);
    let flags = [
        "--sysroot".to_string(),
        sysroot.display().to_string(),
        "-C".into(),
        format!("linker={}", cfg.linker.display()),
        "-Z".into(),
        "function-sections=no".into(),
    ];
    c.current_dir(cfg.root.join("probes"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", &cfg.rustc)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env(LINKER_ENV, "1")
        .args(["-Z", "json-target-spec", "build", "--release", "--locked"])
        .arg("--target")
        .arg(cfg.root.join("probes/target.json"))
        .arg("--target-dir")
        .arg(&probe_target);
    let out = c
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cfg.cargo.display()))?;
    if !out.status.success() {
        return Err(format!(
            "probe build failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let obj = probe_target.join("target/release/bpfckpt-probes");
    if !obj.exists() {
        return Err(format!("probe build produced no {}", obj.display()));
    }
    Ok(obj)
}
