//! Phase 5: the functions of each code section, from its FUNC symbols.
//! Aliases at one address keep a global name; a section without FUNC
//! symbols (hand-assembled objects) is one function.

use super::symbols::SymInfo;
use super::{CodeSection, Function, Parser, Role, insn_index};
use crate::{Result, bail};
use object::elf;
use std::collections::BTreeMap;

impl Parser<'_> {
    /// Fills `funcs` of every code section.
    pub(super) fn functions(&mut self) -> Result<()> {
        for (si, role) in self.roles.iter().enumerate() {
            let Role::Code(ci) = *role else { continue };
            let funcs = section_functions(&self.code[ci], si, &self.syms)?;
            self.code[ci].funcs = funcs;
        }
        Ok(())
    }
}

/// The functions of `cs` (section index `si`), sorted and non-overlapping.
fn section_functions(cs: &CodeSection, si: usize, syms: &[SymInfo]) -> Result<Vec<Function>> {
    let n = cs.insns.len();
    let starts = func_starts(cs, si, syms)?;
    if starts.is_empty() {
        if n == 0 {
            return Ok(Vec::new());
        }
        let name = cs.name.rsplit('/').next().unwrap_or(&cs.name).to_string();
        return Ok(vec![Function {
            name,
            start: 0,
            end: n,
        }]);
    }
    let list: Vec<(usize, &SymInfo, usize)> =
        starts.iter().map(|(&s, &(y, size))| (s, y, size)).collect();
    let mut funcs = Vec::with_capacity(list.len());
    for (k, &(start, y, size)) in list.iter().enumerate() {
        let next = list.get(k + 1).map_or(n, |t| t.0);
        // A size-0 symbol runs to the next function.
        let end = if size > 0 { start + size } else { next };
        if end > next {
            bail!(
                "invalid BPF object: function `{}` overlaps the next one in `{}`",
                y.label(),
                cs.name
            );
        }
        if splits_ld_imm64(cs, start, end) {
            bail!(
                "invalid BPF object: truncated ld_imm64 at the end of function `{}` in `{}`",
                y.label(),
                cs.name
            );
        }
        funcs.push(Function {
            name: y.name.clone(),
            start,
            end,
        });
    }
    Ok(funcs)
}

/// FUNC symbols of section `si` by first instruction, with their sizes in
/// instructions; each checked to lie inside `cs`.
fn func_starts<'s>(
    cs: &CodeSection,
    si: usize,
    syms: &'s [SymInfo],
) -> Result<BTreeMap<usize, (&'s SymInfo, usize)>> {
    let n = cs.insns.len();
    let mut starts: BTreeMap<usize, (&SymInfo, usize)> = BTreeMap::new();
    for y in syms
        .iter()
        .filter(|y| y.is_in(si) && y.kind == elf::STT_FUNC)
    {
        let (Some(start), Some(size)) = (insn_index(y.value), insn_index(y.size)) else {
            bail!(
                "invalid BPF object: function `{}` in `{}` is not 8-byte aligned",
                y.label(),
                cs.name
            );
        };
        if start >= n || start.checked_add(size).is_none_or(|e| e > n) {
            bail!(
                "invalid BPF object: function `{}` lies outside section `{}`",
                y.label(),
                cs.name
            );
        }
        // Aliases at the same address: prefer a global name.
        let keep = match starts.get(&start) {
            Some((old, _)) => old.bind == elf::STB_LOCAL && y.bind != elf::STB_LOCAL,
            None => true,
        };
        if keep {
            starts.insert(start, (y, size));
        }
    }
    Ok(starts)
}

/// Whether instructions `start..end` end between the two slots of an
/// ld_imm64, whose second half would then belong to the next function.
fn splits_ld_imm64(cs: &CodeSection, start: usize, end: usize) -> bool {
    let mut i = start;
    while i < end {
        i += if cs.insns.get(i).is_some_and(|x| x.is_ld_imm64()) {
            2
        } else {
            1
        };
    }
    i > end
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{code_section, sym};
    use super::*;
    use crate::insn::{Insn, asm};

    const SI: u16 = 2;

    fn func(name: &str, start: u64, len: u64, bind: u8) -> SymInfo {
        sym(name, SI, (start * 8, len * 8), elf::STT_FUNC, bind)
    }

    fn funcs(insns: Vec<Insn>, syms: &[SymInfo]) -> Result<Vec<(String, usize, usize)>> {
        let cs = code_section("tp/a/b", insns, &[]);
        Ok(section_functions(&cs, SI.into(), syms)?
            .into_iter()
            .map(|f| (f.name, f.start, f.end))
            .collect())
    }

    fn f(name: &str, start: usize, end: usize) -> (String, usize, usize) {
        (name.to_string(), start, end)
    }

    #[test]
    fn functions_from_symbols() {
        let syms = [
            func("b", 2, 0, elf::STB_LOCAL), // size 0: runs to the next one
            func("a", 0, 2, elf::STB_GLOBAL),
            func("c", 3, 1, elf::STB_LOCAL),
            sym("x", SI + 1, (0, 8), elf::STT_FUNC, elf::STB_GLOBAL), // another section
            sym("o", SI, (0, 8), elf::STT_OBJECT, elf::STB_GLOBAL),   // not a function
        ];
        let got = funcs(vec![asm::exit(); 4], &syms).unwrap();
        assert_eq!(got, [f("a", 0, 2), f("b", 2, 3), f("c", 3, 4)]);
    }

    #[test]
    fn aliases_prefer_a_global_name() {
        let local_first = [
            func("l", 0, 1, elf::STB_LOCAL),
            func("g", 0, 1, elf::STB_GLOBAL),
        ];
        assert_eq!(
            funcs(vec![asm::exit()], &local_first).unwrap(),
            [f("g", 0, 1)]
        );
        let global_first = [
            func("g", 0, 1, elf::STB_GLOBAL),
            func("l", 0, 1, elf::STB_LOCAL),
        ];
        assert_eq!(
            funcs(vec![asm::exit()], &global_first).unwrap(),
            [f("g", 0, 1)]
        );
    }

    #[test]
    fn a_section_without_symbols_is_one_function() {
        assert_eq!(funcs(vec![asm::exit(); 2], &[]).unwrap(), [f("b", 0, 2)]);
        assert!(funcs(vec![], &[]).unwrap().is_empty());
    }

    #[test]
    fn bad_function_symbols() {
        let e = |syms: &[SymInfo]| funcs(vec![asm::exit(); 4], syms).unwrap_err().msg;
        let unaligned = sym("u", SI, (4, 8), elf::STT_FUNC, elf::STB_GLOBAL);
        assert!(e(&[unaligned]).contains("`u` in `tp/a/b` is not 8-byte aligned"));
        assert!(e(&[func("o", 4, 1, elf::STB_GLOBAL)]).contains("`o` lies outside section"));
        assert!(e(&[func("o", 2, 3, elf::STB_GLOBAL)]).contains("lies outside"));
        let overlap = [
            func("a", 0, 3, elf::STB_GLOBAL),
            func("b", 2, 1, elf::STB_GLOBAL),
        ];
        assert!(e(&overlap).contains("`a` overlaps the next one in `tp/a/b`"));
    }

    #[test]
    fn a_function_cannot_end_inside_an_ld_imm64() {
        let ld = asm::ld_map_fd(1, 0);
        let insns = vec![ld[0], ld[1], asm::exit()];
        let syms = [
            func("a", 0, 1, elf::STB_GLOBAL),
            func("b", 1, 2, elf::STB_GLOBAL),
        ];
        let e = funcs(insns.clone(), &syms).unwrap_err();
        assert!(
            e.msg
                .contains("truncated ld_imm64 at the end of function `a`"),
            "{e}"
        );
        let cs = code_section("c", insns, &[]);
        assert!(splits_ld_imm64(&cs, 0, 1));
        assert!(!splits_ld_imm64(&cs, 0, 2));
        assert!(!splits_ld_imm64(&cs, 2, 3));
    }
}
