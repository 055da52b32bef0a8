//! The probe sysroot: `core` from rust-src as bitcode only (probes need its
//! metadata and MIR, never its machine code, which does not build for BPF)
//! and an empty `compiler_builtins`, built once per rustc version and target.

use crate::{BuildConfig, clean_env, run_output};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `core`'s source in a toolchain's sysroot (`rustc --print sysroot`): present
/// when the rust-src component is installed.
pub fn core_src(sysroot: &Path) -> PathBuf {
    sysroot.join("lib/rustlib/src/rust/library/core/src/lib.rs")
}

/// Builds (once per rustc version and target JSON) the probe sysroot and
/// returns its path.
pub fn ensure_sysroot(cfg: &BuildConfig) -> Result<PathBuf, String> {
    let target_json = cfg.root.join("probes/target.json");
    let spec = std::fs::read_to_string(&target_json)
        .map_err(|e| format!("read {}: {e}", target_json.display()))?;
    let version = run_output(Command::new(&cfg.rustc).arg("-vV"))?;
    let key = format!("{version}\n{spec}");
    let dir = cfg.target_dir.join("bpf-sysroot");
    let stamp = dir.join("stamp");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        return Ok(dir);
    }

    let host_sysroot = run_output(Command::new(&cfg.rustc).arg("--print").arg("sysroot"))?;
    let core_src = core_src(Path::new(host_sysroot.trim()));
    if !core_src.exists() {
        return Err(format!(
            "{} is missing: the rust-src component is required; run `rustup toolchain install` \
             in the repository root (it installs what rust-toolchain.toml lists)",
            core_src.display()
        ));
    }
    // Build into a private directory and rename, so that concurrent builds
    // (cargo build + cargo clippy) never see a half-written sysroot.
    let tmp = cfg
        .target_dir
        .join(format!("bpf-sysroot.tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let lib = tmp.join("lib/rustlib/target/lib");
    std::fs::create_dir_all(&lib).map_err(|e| format!("mkdir {}: {e}", lib.display()))?;
    let stub = tmp.join("compiler_builtins.rs");
    std::fs::write(
        &stub,
        "#![no_std]\n#![allow(internal_features)]\n#![feature(compiler_builtins)]\n#![compiler_builtins]\n",
    )
    .map_err(|e| format!("write stub: {e}"))?;

    let rustc = |name: &str, src: &Path| {
        let mut c = Command::new(&cfg.rustc);
        clean_env(&mut c);
        c.env("RUSTC_BOOTSTRAP", "1")
            .args(["-Z", "unstable-options", "--edition", "2024"])
            .args(["--crate-type", "rlib", "--crate-name", name])
            .arg("--target")
            .arg(&target_json)
            .arg("--sysroot")
            .arg(&tmp)
            // Bitcode only: probes need core's metadata and MIR, never its
            // machine code (which does not even build for BPF).
            .args([
                "-C",
                "opt-level=3",
                "-C",
                "panic=abort",
                "-C",
                "linker-plugin-lto",
            ])
            .args(["-C", "codegen-units=1", "-Z", "force-unstable-if-unmarked"])
            .arg(src)
            .arg("-o")
            .arg(lib.join(format!("lib{name}.rlib")));
        c
    };
    run_output(&mut rustc("core", &core_src))?;
    run_output(&mut rustc("compiler_builtins", &stub))?;
    std::fs::write(tmp.join("stamp"), &key).map_err(|e| format!("write stamp: {e}"))?;

    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another build won the race; use its result if it is complete.
        let _ = std::fs::remove_dir_all(&tmp);
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(key.as_str()) {
            return Err(format!("could not install sysroot at {}", dir.display()));
        }
    }
    Ok(dir)
}
