//! Helpers of the phases' unit tests: small objects written with the
//! object crate, and symbols and code sections as the phases see them.

use super::*;
use object::write;

/// A BPF object with a `GPL` license and whatever `add` puts in it.
pub fn object(add: impl FnOnce(&mut write::Object<'static>)) -> Vec<u8> {
    let mut o = write::Object::new(
        object::BinaryFormat::Elf,
        object::Architecture::Bpf,
        object::Endianness::Little,
    );
    let lic = o.add_section(
        Vec::new(),
        b"license".to_vec(),
        object::SectionKind::ReadOnlyData,
    );
    o.append_section_data(lic, b"GPL\0", 1);
    add(&mut o);
    o.write().expect("write ELF")
}

/// A code section of `insns`; returns its id.
pub fn code(o: &mut write::Object<'static>, name: &str, insns: &[Insn]) -> write::SectionId {
    let id = o.add_section(
        Vec::new(),
        name.as_bytes().to_vec(),
        object::SectionKind::Text,
    );
    let bytes: Vec<u8> = insns.iter().flat_map(|i| i.to_bytes()).collect();
    o.append_section_data(id, &bytes, 8);
    id
}

/// A symbol of `kind` in `section`.
pub fn symbol(
    o: &mut write::Object<'static>,
    name: &str,
    section: write::SectionId,
    (value, size): (u64, u64),
    kind: object::SymbolKind,
    global: bool,
) -> write::SymbolId {
    o.add_symbol(write::Symbol {
        name: name.as_bytes().to_vec(),
        value,
        size,
        kind,
        scope: if global {
            object::SymbolScope::Dynamic
        } else {
            object::SymbolScope::Compilation
        },
        weak: false,
        section: write::SymbolSection::Section(section),
        flags: object::SymbolFlags::None,
    })
}

/// A symbol as the phases see it.
pub fn sym(name: &str, shndx: u16, (value, size): (u64, u64), kind: u8, bind: u8) -> SymInfo {
    SymInfo {
        name: name.to_string(),
        shndx,
        value,
        size,
        kind,
        bind,
    }
}

/// A code section as the phases see it, with `funcs` as (name, start, end).
pub fn code_section(name: &str, insns: Vec<Insn>, funcs: &[(&str, usize, usize)]) -> CodeSection {
    CodeSection {
        name: name.to_string(),
        insns,
        funcs: funcs
            .iter()
            .map(|&(name, start, end)| Function {
                name: name.to_string(),
                start,
                end,
            })
            .collect(),
        relocs: Vec::new(),
    }
}

/// Runs the phases up to and including `programs` (no relocations).
pub fn parsed_until_programs(bytes: &[u8]) -> Result<(ObjectSpec, Vec<Role>)> {
    aligned(bytes, |b| {
        let p = Parser::through_programs(b)?;
        let roles = p.roles.clone();
        Ok((p.into_spec(), roles))
    })
}
