//! The probe "linker": rustc calls the binary that started the probe build
//! (the build script or xtask) as `-C linker`, with [`LINKER_ENV`] set.

use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget};

/// Environment variable that turns the running binary into the probe linker.
pub const LINKER_ENV: &str = "BPFCKPT_PROBE_LINKER";

/// The only relocation types the loader (`bpfload::obj`) implements:
/// `ld_imm64` of a map, data or callback address, and `call`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::{Object as WObject, Relocation, Symbol, SymbolSection};
    use object::{
        Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
    };
    use std::path::Path;

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
        let dir = std::env::temp_dir().join(format!("probe-link-test-{}", std::process::id()));
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
