//! Phase 3: what each section is. The `license`, code (program sections and
//! `.text*`), the legacy `maps` section, and global data: every non-empty
//! `.data*`, `.rodata*` and `.bss*` section becomes a one-entry array map.
//! Sections not loaded into memory (`.BTF`, debug info, ...) are skipped.

use super::{
    BPF_F_RDONLY_PROG, BPF_MAP_TYPE_ARRAY, CodeSection, Elf, MapKind, MapSpec, Parser, Role,
    elf_err,
};
use crate::insn;
use crate::{Result, bail};
use object::LittleEndian as LE;
use object::elf;
use object::read::elf::{SectionHeader, SectionTable};

/// The name of every section, by index.
pub(super) fn section_names(endian: LE, sections: &SectionTable<'_, Elf>) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(sections.len());
    for s in sections.iter() {
        let n = sections
            .section_name(endian, s)
            .map_err(elf_err("section name"))?;
        names.push(String::from_utf8_lossy(n).into_owned());
    }
    Ok(names)
}

impl Parser<'_> {
    /// Sorts the sections into roles, creates the code sections and the
    /// global-data maps, and reads the license (which must be there).
    pub(super) fn sections(&mut self) -> Result<()> {
        let (bytes, endian) = (self.bytes, self.endian);
        let mut license = None;
        for (i, s) in self.sections.enumerate() {
            let i = i.0;
            let name = self.names.get(i).map(String::as_str).unwrap_or("");
            let flags = s.sh_flags(endian);
            if flags & u64::from(elf::SHF_ALLOC) == 0 && name != "license" {
                continue;
            }
            let data = || s.data(endian, bytes).map_err(elf_err(name));
            if name == "license" {
                license = Some(license_text(data()?)?);
            } else if flags & u64::from(elf::SHF_EXECINSTR) != 0 {
                self.roles[i] = Role::Code(self.code.len());
                self.code.push(code_section(name, data()?)?);
            } else if name == "maps" {
                if self.maps_section.is_some() {
                    bail!("invalid BPF object: two `maps` sections");
                }
                self.maps_section = Some(i);
                self.roles[i] = Role::Maps;
            } else if let Some(kind) = data_kind(name) {
                let Some(value_size) = data_size(name, s.sh_size(endian))? else {
                    continue;
                };
                let initial = if s.sh_type(endian) == elf::SHT_NOBITS || kind == MapKind::Bss {
                    None
                } else {
                    Some(data()?.to_vec())
                };
                self.roles[i] = Role::Data(self.maps.len());
                self.maps.push(data_map(name, kind, value_size, initial));
            }
        }
        let Some(license) = license else {
            bail!("invalid BPF object: no `license` section");
        };
        self.license = license;
        Ok(())
    }
}

/// The license section's text, up to its NUL.
fn license_text(d: &[u8]) -> Result<String> {
    let Some(nul) = d.iter().position(|&b| b == 0) else {
        bail!("invalid BPF object: license section is not a NUL-terminated string");
    };
    let Ok(text) = std::str::from_utf8(&d[..nul]) else {
        bail!("invalid BPF object: license is not UTF-8");
    };
    Ok(text.to_string())
}

/// A code section's instructions (functions and relocations come later).
fn code_section(name: &str, d: &[u8]) -> Result<CodeSection> {
    let Some(insns) = insn::decode(d) else {
        bail!(
            "invalid BPF object: code section `{name}` is {} bytes, not a multiple of 8",
            d.len()
        );
    };
    Ok(CodeSection {
        name: name.to_string(),
        insns,
        funcs: Vec::new(),
        relocs: Vec::new(),
    })
}

/// A global-data section's size as a map value size; `None` for an empty
/// section, which makes no map (the kernel refuses an empty array value, and
/// nothing can point into it anyway).
fn data_size(name: &str, size: u64) -> Result<Option<u32>> {
    let Ok(value_size) = u32::try_from(size) else {
        bail!("invalid BPF object: section `{name}` is too large ({size} bytes)");
    };
    Ok((value_size != 0).then_some(value_size))
}

/// The one-entry array map of a global-data section.
fn data_map(name: &str, kind: MapKind, value_size: u32, initial: Option<Vec<u8>>) -> MapSpec {
    MapSpec {
        name: name.to_string(),
        kind,
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries: 1,
        flags: if kind == MapKind::Rodata {
            BPF_F_RDONLY_PROG
        } else {
            0
        },
        initial,
    }
}

/// `.text` and `.text.*` hold subprograms; every other code section is a program section.
pub(super) fn is_subprog_section(name: &str) -> bool {
    name == ".text" || name.starts_with(".text.")
}

/// The kind of global data a section named `name` holds, if any.
fn data_kind(name: &str) -> Option<MapKind> {
    let is =
        |base: &str| name == base || name.strip_prefix(base).is_some_and(|r| r.starts_with('.'));
    if is(".data") {
        Some(MapKind::Data)
    } else if is(".rodata") {
        Some(MapKind::Rodata)
    } else if is(".bss") {
        Some(MapKind::Bss)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util;
    use super::*;
    use crate::insn::asm;
    use object::SectionKind;

    #[test]
    fn data_kinds_by_name() {
        assert_eq!(data_kind(".data"), Some(MapKind::Data));
        assert_eq!(data_kind(".data.rel"), Some(MapKind::Data));
        assert_eq!(data_kind(".rodata.str1.1"), Some(MapKind::Rodata));
        assert_eq!(data_kind(".bss"), Some(MapKind::Bss));
        assert_eq!(data_kind(".bss.x"), Some(MapKind::Bss));
        for other in [".database", ".rodatax", ".text", "maps", "", ".BTF"] {
            assert_eq!(data_kind(other), None, "{other}");
        }
    }

    #[test]
    fn subprogram_sections() {
        assert!(is_subprog_section(".text"));
        assert!(is_subprog_section(".text.unlikely"));
        assert!(!is_subprog_section(".textual"));
        assert!(!is_subprog_section("tp/a/b"));
    }

    #[test]
    fn license_texts() {
        assert_eq!(license_text(b"GPL\0junk").unwrap(), "GPL");
        assert_eq!(license_text(b"\0").unwrap(), "");
        assert!(
            license_text(b"GPL")
                .unwrap_err()
                .msg
                .contains("NUL-terminated")
        );
        assert!(
            license_text(b"\xff\0")
                .unwrap_err()
                .msg
                .contains("not UTF-8")
        );
    }

    #[test]
    fn code_and_data_sizes() {
        assert_eq!(code_section("c", &[0; 16]).unwrap().insns.len(), 2);
        let e = code_section("c", &[0; 12]).unwrap_err();
        assert!(
            e.msg.contains("`c` is 12 bytes, not a multiple of 8"),
            "{e}"
        );
        assert_eq!(data_size(".data", 8).unwrap(), Some(8));
        assert_eq!(data_size(".data", 0).unwrap(), None);
        let e = data_size(".bss", 1 << 32).unwrap_err();
        assert!(
            e.msg.contains("`.bss` is too large (4294967296 bytes)"),
            "{e}"
        );
    }

    #[test]
    fn data_maps_are_one_entry_arrays() {
        let ro = data_map(".rodata", MapKind::Rodata, 8, Some(vec![1; 8]));
        assert_eq!(
            (
                ro.map_type,
                ro.key_size,
                ro.value_size,
                ro.max_entries,
                ro.flags
            ),
            (BPF_MAP_TYPE_ARRAY, 4, 8, 1, BPF_F_RDONLY_PROG)
        );
        assert!(ro.frozen());
        let d = data_map(".data", MapKind::Data, 4, None);
        assert_eq!(d.flags, 0);
        assert!(!d.frozen());
    }

    #[test]
    fn roles_of_a_whole_object() {
        let bytes = test_util::object(|o| {
            test_util::code(o, ".text", &[asm::exit()]);
            let m = o.add_section(Vec::new(), b"maps".to_vec(), SectionKind::ReadOnlyData);
            o.append_section_data(m, &[0; 20], 4);
            let d = o.add_section(Vec::new(), b".data".to_vec(), SectionKind::Data);
            o.append_section_data(d, &[5; 8], 8);
            let e = o.add_section(Vec::new(), b".data.empty".to_vec(), SectionKind::Data);
            o.append_section_data(e, &[], 8);
            let b = o.add_section(Vec::new(), b".bss".to_vec(), SectionKind::UninitializedData);
            o.section_mut(b).append_bss(16, 8);
            let dbg = o.add_section(Vec::new(), b".debug_x".to_vec(), SectionKind::Debug);
            o.append_section_data(dbg, &[1], 1);
        });
        let (spec, roles) = test_util::parsed_until_programs(&bytes).unwrap();
        assert_eq!(spec.code.len(), 1);
        let maps: Vec<(&str, u32, Option<&[u8]>)> = spec
            .maps
            .iter()
            .map(|m| (m.name.as_str(), m.value_size, m.initial.as_deref()))
            .collect();
        assert_eq!(
            maps,
            [(".data", 8, Some(&[5u8; 8][..])), (".bss", 16, None)]
        );
        let count = |r: Role| roles.iter().filter(|&&x| x == r).count();
        assert_eq!(count(Role::Code(0)), 1);
        assert_eq!(count(Role::Maps), 1);
        assert_eq!(count(Role::Data(0)) + count(Role::Data(1)), 2);
    }

    #[test]
    fn license_required_and_one_maps_section() {
        let mut o = object::write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::Bpf,
            object::Endianness::Little,
        );
        test_util::code(&mut o, ".text", &[asm::exit()]);
        let e = test_util::parsed_until_programs(&o.write().unwrap()).unwrap_err();
        assert!(e.msg.contains("no `license` section"), "{e}");
        let bytes = test_util::object(|o| {
            for _ in 0..2 {
                let m = o.add_section(Vec::new(), b"maps".to_vec(), SectionKind::ReadOnlyData);
                o.append_section_data(m, &[0; 20], 4);
            }
        });
        let e = test_util::parsed_until_programs(&bytes).unwrap_err();
        assert!(e.msg.contains("two `maps` sections"), "{e}");
    }
}
