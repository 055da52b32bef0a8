//! Phase 6: the programs. Every global function of a program section is a
//! program; a program section without one (hand-assembled objects) has its
//! first function as the program, if that starts the section.

use super::sections::is_subprog_section;
use super::symbols::SymInfo;
use super::{AttachPoint, CodeSection, Parser, ProgramSpec, Role};
use crate::{Result, bail};
use object::elf;

impl Parser<'_> {
    /// Collects the programs in section order; their names must be unique.
    pub(super) fn programs(&mut self) -> Result<()> {
        for (si, role) in self.roles.iter().enumerate() {
            let Role::Code(ci) = *role else { continue };
            let found = section_programs(ci, &self.code[ci], si, &self.syms)?;
            self.programs.extend(found);
        }
        for (i, p) in self.programs.iter().enumerate() {
            if self.programs[..i].iter().any(|o| o.name == p.name) {
                bail!("invalid BPF object: two programs named `{}`", p.name);
            }
        }
        Ok(())
    }
}

/// The programs of code section `ci` (`cs`, section index `si`); none for `.text*`.
fn section_programs(
    ci: usize,
    cs: &CodeSection,
    si: usize,
    syms: &[SymInfo],
) -> Result<Vec<ProgramSpec>> {
    if is_subprog_section(&cs.name) {
        return Ok(Vec::new());
    }
    let Some(attach) = AttachPoint::from_section(&cs.name) else {
        bail!(
            "unsupported program section `{}` (expected tracepoint/<category>/<name> or raw_tracepoint/<name>)",
            cs.name
        );
    };
    let program = |func: usize| ProgramSpec {
        name: cs.funcs[func].name.clone(),
        section: cs.name.clone(),
        attach: attach.clone(),
        code: ci,
        func,
    };
    let mut out = Vec::new();
    for (fi, f) in cs.funcs.iter().enumerate() {
        let global = syms.iter().any(|y| {
            y.is_in(si) && y.kind == elf::STT_FUNC && y.bind != elf::STB_LOCAL && y.name == f.name
        });
        if global {
            out.push(program(fi));
        }
    }
    if out.is_empty() && cs.funcs.first().is_some_and(|f| f.start == 0) {
        out.push(program(0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{self, code_section, sym};
    use super::*;
    use crate::insn::asm;

    const SI: u16 = 4;

    fn names(ps: &[ProgramSpec]) -> Vec<&str> {
        ps.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn global_functions_are_programs() {
        let cs = code_section(
            "tp/sched/sched_switch",
            vec![asm::exit(); 3],
            &[("a", 0, 1), ("helper", 1, 2), ("b", 2, 3)],
        );
        let g = |n: &str| sym(n, SI, (0, 8), elf::STT_FUNC, elf::STB_GLOBAL);
        let syms = [
            g("a"),
            sym("helper", SI, (8, 8), elf::STT_FUNC, elf::STB_LOCAL),
            g("b"),
            sym("b", SI + 1, (0, 8), elf::STT_FUNC, elf::STB_GLOBAL),
        ];
        let ps = section_programs(7, &cs, SI.into(), &syms).unwrap();
        assert_eq!(names(&ps), ["a", "b"]);
        assert_eq!((ps[1].code, ps[1].func), (7, 2));
        assert_eq!(ps[0].section, "tp/sched/sched_switch");
        assert_eq!(
            ps[0].attach,
            AttachPoint::Tracepoint {
                category: "sched".into(),
                name: "sched_switch".into()
            }
        );
    }

    #[test]
    fn without_a_global_the_first_function_if_it_starts_the_section() {
        let cs = code_section("raw_tp/x", vec![asm::exit(); 2], &[("only", 0, 2)]);
        assert_eq!(
            names(&section_programs(0, &cs, SI.into(), &[]).unwrap()),
            ["only"]
        );
        let late = code_section("raw_tp/x", vec![asm::exit(); 2], &[("late", 1, 2)]);
        assert!(
            section_programs(0, &late, SI.into(), &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn subprogram_and_unsupported_sections() {
        let text = code_section(".text", vec![asm::exit()], &[("f", 0, 1)]);
        let g = [sym("f", SI, (0, 8), elf::STT_FUNC, elf::STB_GLOBAL)];
        assert!(
            section_programs(0, &text, SI.into(), &g)
                .unwrap()
                .is_empty()
        );
        let kp = code_section("kprobe/x", vec![asm::exit()], &[("f", 0, 1)]);
        let e = section_programs(0, &kp, SI.into(), &g).unwrap_err();
        assert!(
            e.msg.contains("unsupported program section `kprobe/x`"),
            "{e}"
        );
    }

    #[test]
    fn program_names_are_unique() {
        let bytes = test_util::object(|o| {
            for section in ["tp/a/b", "tp/a/c"] {
                let s = test_util::code(o, section, &[asm::exit()]);
                test_util::symbol(o, "same", s, (0, 8), object::SymbolKind::Text, true);
            }
        });
        let e = test_util::parsed_until_programs(&bytes).unwrap_err();
        assert!(e.msg.contains("two programs named `same`"), "{e}");
    }
}
