//! Phase 2: the symbol table, copied out once so that later phases look
//! symbols up without the ELF reader.

use super::{Elf, elf_err};
use crate::Result;
use object::LittleEndian as LE;
use object::read::elf::{Sym, SymbolTable};

/// A symbol, copied out of the symbol table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SymInfo {
    pub(super) name: String,
    pub(super) shndx: u16,
    pub(super) value: u64,
    pub(super) size: u64,
    /// `STT_*`.
    pub(super) kind: u8,
    /// `STB_*`.
    pub(super) bind: u8,
}

impl SymInfo {
    /// The name for messages.
    pub(super) fn label(&self) -> &str {
        if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        }
    }

    /// Whether the symbol is defined in section `si`.
    pub(super) fn is_in(&self, si: usize) -> bool {
        usize::from(self.shndx) == si
    }
}

/// Every symbol of `symtab`, in table order (relocations refer to them by index).
pub(super) fn read_symbols(endian: LE, symtab: &SymbolTable<'_, Elf>) -> Result<Vec<SymInfo>> {
    let mut syms = Vec::with_capacity(symtab.len());
    for sym in symtab.iter() {
        let name = symtab
            .symbol_name(endian, sym)
            .map_err(elf_err("symbol name"))?;
        syms.push(SymInfo {
            name: String::from_utf8_lossy(name).into_owned(),
            shndx: sym.st_shndx(endian),
            value: sym.st_value(endian),
            size: sym.st_size(endian),
            kind: sym.st_type(),
            bind: sym.st_bind(),
        });
    }
    Ok(syms)
}

#[cfg(test)]
mod tests {
    use super::super::{aligned, header, test_util};
    use super::*;
    use object::elf;
    use object::read::elf::FileHeader;

    fn symbols_of(bytes: &[u8]) -> Vec<SymInfo> {
        aligned(bytes, |b| {
            let (hdr, endian) = header::parse_header(b).unwrap();
            let sections = hdr.sections(endian, b).unwrap();
            let symtab = sections.symbols(endian, b, elf::SHT_SYMTAB).unwrap();
            read_symbols(endian, &symtab).unwrap()
        })
    }

    #[test]
    fn symbols_are_copied_with_their_fields() {
        let bytes = test_util::object(|o| {
            let s = test_util::code(o, ".text", &[crate::insn::asm::exit(); 3]);
            test_util::symbol(o, "f", s, (8, 16), object::SymbolKind::Text, false);
            test_util::symbol(o, "g", s, (0, 8), object::SymbolKind::Text, true);
        });
        let syms = symbols_of(&bytes);
        // Index 0 is the null symbol.
        assert_eq!(syms[0].label(), "<unnamed>");
        let f = syms.iter().find(|y| y.name == "f").unwrap();
        let g = syms.iter().find(|y| y.name == "g").unwrap();
        assert_eq!(
            (f.value, f.size, f.kind, f.bind),
            (8, 16, elf::STT_FUNC, elf::STB_LOCAL)
        );
        assert_eq!(g.bind, elf::STB_GLOBAL);
        assert_eq!(f.shndx, g.shndx);
        assert!(f.is_in(usize::from(f.shndx)) && !f.is_in(0));
        assert_eq!(f.label(), "f");
    }
}
