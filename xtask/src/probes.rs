//! Building the BPF probes without bpf-linker or a system LLVM.
//!
//! Recipe (DESIGN.md section 3): a custom target JSON with `obj-is-bitcode:
//! false`, a sysroot holding `core` as bitcode only plus an empty
//! `compiler_builtins`, `RUSTC_BOOTSTRAP=1` only in the child cargo's
//! environment, and a link step that copies the single codegen unit to the
//! output after refusing undefined symbols and unsupported relocations.

use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable that turns the running binary into the probe linker.
pub const LINKER_ENV: &str = "BPFCKPT_PROBE_LINKER";

/// Relocation types the loader implements (DESIGN.md section 4).
const R_BPF_64_64: u32 = 1;
const R_BPF_64_32: u32 = 10;

/// If this process was started by rustc as the probe linker, link and exit.
///
/// Call this first thing in `main` of every binary passed as `-C linker`.
pub fn maybe_act_as_linker() {
    if std::env::var_os(LINKER_ENV).is_none() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match probe_link(&args) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("bpf probe link failed:\n{e}");
            std::process::exit(1);
        }
    }
}

/// The link step: rustc passes `... <crate>.rcgu.o <rlibs> -o OUT`.
/// With `codegen-units = 1` exactly one object carries code; the rlibs of the
/// sysroot hold bitcode only and are not needed.
pub fn probe_link(args: &[String]) -> Result<(), String> {
    let mut out = None;
    let mut objects = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-o" {
            out = it.next().cloned();
        } else if a.ends_with(".rcgu.o") {
            objects.push(a.clone());
        }
    }
    let out = out.ok_or("no -o argument from rustc")?;
    let [input] = objects.as_slice() else {
        return Err(format!(
            "expected exactly one codegen unit object (codegen-units = 1), got {objects:?}"
        ));
    };
    let bytes = std::fs::read(input).map_err(|e| format!("read {input}: {e}"))?;
    let problems = check_object(&bytes)?;
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    std::fs::write(&out, &bytes).map_err(|e| format!("write {out}: {e}"))
}

/// Lists everything in a probe object the loader could not load: undefined
/// symbols (a panic path, memcpy, a non-inlined function of another crate)
/// and relocations other than `R_BPF_64_64` / `R_BPF_64_32` outside debug info.
pub fn check_object(bytes: &[u8]) -> Result<Vec<String>, String> {
    let file = object::File::parse(bytes).map_err(|e| format!("not an ELF object: {e}"))?;
    let mut problems = Vec::new();
    for sym in file.symbols() {
        if sym.is_undefined() {
            let name = sym.name().unwrap_or("?");
            if !name.is_empty() {
                problems.push(format!("undefined symbol `{name}`"));
            }
        }
    }
    for section in file.sections() {
        let name = section.name().unwrap_or("?").to_string();
        if name.starts_with(".BTF") || name.starts_with(".debug") {
            continue;
        }
        for (offset, rel) in section.relocations() {
            let r_type = match rel.flags() {
                RelocationFlags::Elf { r_type } => r_type,
                other => {
                    problems.push(format!("{name}+{offset:#x}: non-ELF relocation {other:?}"));
                    continue;
                }
            };
            if r_type != R_BPF_64_64 && r_type != R_BPF_64_32 {
                problems.push(format!(
                    "{name}+{offset:#x}: unsupported relocation type {r_type}"
                ));
            }
            if let RelocationTarget::Symbol(idx) = rel.target()
                && let Ok(sym) = file.symbol_by_index(idx)
                && sym.is_undefined()
            {
                problems.push(format!(
                    "{name}+{offset:#x}: relocation against undefined `{}`",
                    sym.name().unwrap_or("?")
                ));
            }
        }
    }
    Ok(problems)
}

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
    let core_src =
        Path::new(host_sysroot.trim()).join("lib/rustlib/src/rust/library/core/src/lib.rs");
    if !core_src.exists() {
        return Err(format!(
            "{} is missing: the rust-src component is required (rust-toolchain.toml lists it; \
             or run `rustup component add rust-src`)",
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

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::{Object as WObject, Relocation, Symbol, SymbolSection};
    use object::{
        Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
    };

    /// A BPF object with one call to an undefined `memcpy` and, if asked,
    /// a relocation type the loader does not implement.
    fn object_with(undefined: bool, bad_reloc: bool) -> Vec<u8> {
        let mut o = WObject::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
        let text = o.add_section(Vec::new(), b"tracepoint/a/b".to_vec(), SectionKind::Text);
        // call -1 ; r0 = 0 ; exit
        let code = [
            0x85u8, 0x10, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0,
            0, 0, 0, 0,
        ];
        o.append_section_data(text, &code, 8);
        o.add_symbol(Symbol {
            name: b"prog".to_vec(),
            value: 0,
            size: code.len() as u64,
            kind: SymbolKind::Text,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
        if undefined {
            let memcpy = o.add_symbol(Symbol {
                name: b"memcpy".to_vec(),
                value: 0,
                size: 0,
                kind: SymbolKind::Text,
                scope: SymbolScope::Dynamic,
                weak: false,
                section: SymbolSection::Undefined,
                flags: SymbolFlags::None,
            });
            o.add_relocation(
                text,
                Relocation {
                    offset: 0,
                    symbol: memcpy,
                    addend: 0,
                    flags: RelocationFlags::Elf {
                        r_type: R_BPF_64_32,
                    },
                },
            )
            .unwrap();
        }
        if bad_reloc {
            let sym = o.section_symbol(text);
            o.add_relocation(
                text,
                Relocation {
                    offset: 8,
                    symbol: sym,
                    addend: 0,
                    flags: RelocationFlags::Elf { r_type: 2 },
                },
            )
            .unwrap();
        }
        o.write().unwrap()
    }

    #[test]
    fn link_check_names_undefined_symbols_and_bad_relocations() {
        assert!(check_object(&object_with(false, false)).unwrap().is_empty());
        let p = check_object(&object_with(true, true)).unwrap();
        assert!(p.iter().any(|m| m == "undefined symbol `memcpy`"), "{p:?}");
        assert!(
            p.iter()
                .any(|m| m.contains("relocation against undefined `memcpy`")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("unsupported relocation type 2")),
            "{p:?}"
        );
        assert!(check_object(b"not an elf").is_err());
    }

    #[test]
    fn link_step_copies_the_single_codegen_unit_or_refuses() {
        let dir = std::env::temp_dir().join(format!("xtask-link-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("a.rcgu.o");
        let bad = dir.join("b.rcgu.o");
        let out = dir.join("out");
        std::fs::write(&good, object_with(false, false)).unwrap();
        std::fs::write(&bad, object_with(true, false)).unwrap();
        let s = |p: &Path| p.display().to_string();
        probe_link(&[s(&good), "-o".into(), s(&out)]).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&good).unwrap());
        let e = probe_link(&[s(&bad), "-o".into(), s(&dir.join("out2"))]).unwrap_err();
        assert!(e.contains("memcpy") && !dir.join("out2").exists(), "{e}");
        assert!(
            probe_link(&[s(&good), s(&bad), "-o".into(), s(&out)])
                .unwrap_err()
                .contains("exactly one")
        );
        assert!(probe_link(&[s(&good)]).unwrap_err().contains("-o"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
