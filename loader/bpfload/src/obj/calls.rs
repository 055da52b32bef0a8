//! Phase 8: the final relocation list of each code section. Calls inside a
//! section may carry no relocation at all: every `call` with src_reg 1 that
//! has none is pc-relative (target `pc + imm + 1`). Also the last checks:
//! at most one relocation per instruction, none on the second slot of an
//! `ld_imm64`, no `ld_imm64` cut off by the section's end, and no pseudo
//! src_reg the loader did not set.

use super::relocs::Pending;
use super::{CodeReloc, CodeSection, Parser, RelocTarget, func_at};
use crate::{Result, bail};
use std::collections::HashMap;

impl Parser<'_> {
    /// Sets `relocs` of every code section from the resolved relocations.
    pub(super) fn calls(&mut self, pending: Pending) -> Result<()> {
        for (ci, relocs) in pending.into_iter().enumerate() {
            let out = section_relocs(ci, &self.code[ci], relocs)?;
            self.code[ci].relocs = out;
        }
        Ok(())
    }
}

/// The relocations of code section `ci` (`cs`), sorted by instruction: the
/// resolved ones and the pc-relative calls.
fn section_relocs(
    ci: usize,
    cs: &CodeSection,
    mut relocs: Vec<(usize, RelocTarget)>,
) -> Result<Vec<CodeReloc>> {
    relocs.sort_by_key(|r| r.0);
    if let Some(w) = relocs.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!(
            "invalid BPF object: two relocations on instruction {} of `{}`",
            w[0].0,
            cs.name
        );
    }
    let relocated: HashMap<usize, RelocTarget> = relocs.into_iter().collect();
    let mut seen = 0;
    let mut out = Vec::new();
    let mut pc = 0;
    while pc < cs.insns.len() {
        let ins = cs.insns[pc];
        if let Some(&target) = relocated.get(&pc) {
            seen += 1;
            out.push(CodeReloc { insn: pc, target });
        } else if ins.is_pseudo_call() {
            let target = (pc as i64) + i64::from(ins.imm) + 1;
            let Some(func) = func_at(cs, target) else {
                bail!(
                    "invalid BPF object: call at `{}`+{pc} targets instruction {target}, not a function start",
                    cs.name
                );
            };
            out.push(CodeReloc {
                insn: pc,
                target: RelocTarget::Call { code: ci, func },
            });
        }
        if ins.is_ld_imm64() {
            // A pseudo src_reg only means something once the loader set it.
            if ins.src() != 0 && !relocated.contains_key(&pc) {
                bail!(
                    "invalid BPF object: ld_imm64 at `{}`+{pc} has src_reg {} but no relocation",
                    cs.name,
                    ins.src()
                );
            }
            if pc + 1 >= cs.insns.len() {
                bail!(
                    "invalid BPF object: truncated ld_imm64 at the end of `{}`",
                    cs.name
                );
            }
            pc += 2;
        } else {
            pc += 1;
        }
    }
    // A relocation on the second slot of an ld_imm64 was skipped above.
    if seen != relocated.len() {
        bail!(
            "invalid BPF object: relocation on the second half of an ld_imm64 in `{}`",
            cs.name
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::code_section;
    use super::*;
    use crate::insn::{self, Insn, asm};

    fn call(imm: i32) -> Insn {
        Insn::new(insn::CALL, 0, insn::PSEUDO_CALL, 0, imm)
    }

    fn cs(insns: Vec<Insn>) -> CodeSection {
        code_section(".text", insns, &[("f", 0, 2), ("g", 2, 4)])
    }

    const MAP: RelocTarget = RelocTarget::Map { map: 0 };

    #[test]
    fn pc_relative_calls_and_resolved_relocations_in_order() {
        let ld = asm::ld_map_fd(1, 0);
        let s = cs(vec![call(1), asm::exit(), ld[0], ld[1]]);
        let out = section_relocs(3, &s, vec![(2, MAP)]).unwrap();
        assert_eq!(
            out,
            [
                CodeReloc {
                    insn: 0,
                    target: RelocTarget::Call { code: 3, func: 1 }
                },
                CodeReloc {
                    insn: 2,
                    target: MAP
                },
            ]
        );
        // A relocated call keeps its resolved target.
        let other = RelocTarget::Call { code: 0, func: 0 };
        let out = section_relocs(3, &s, vec![(0, other), (2, MAP)]).unwrap();
        assert_eq!(out[0].target, other);
        // Helper calls are not bpf-to-bpf calls.
        let h = cs(vec![
            asm::call_helper(1),
            asm::exit(),
            asm::exit(),
            asm::exit(),
        ]);
        assert!(section_relocs(0, &h, vec![]).unwrap().is_empty());
    }

    #[test]
    fn final_checks() {
        let e = |insns: Vec<Insn>, relocs: Vec<(usize, RelocTarget)>| {
            section_relocs(0, &cs(insns), relocs).unwrap_err().msg
        };
        let ld = asm::ld_map_fd(1, 0);
        let exits = vec![asm::exit(); 4];
        assert!(
            e(exits.clone(), vec![(1, MAP), (1, MAP)])
                .contains("two relocations on instruction 1 of `.text`")
        );
        assert!(
            e(vec![call(0), asm::exit(), asm::exit(), asm::exit()], vec![])
                .contains("call at `.text`+0 targets instruction 1, not a function start")
        );
        assert!(
            e(vec![ld[0], ld[1], asm::exit(), asm::exit()], vec![])
                .contains("ld_imm64 at `.text`+0 has src_reg 1 but no relocation")
        );
        let plain = Insn::new(insn::LD_IMM64, 1, 0, 0, 0);
        assert!(
            e(vec![asm::exit(), asm::exit(), asm::exit(), plain], vec![])
                .contains("truncated ld_imm64 at the end of `.text`")
        );
        assert!(
            e(vec![plain, ld[1], asm::exit(), asm::exit()], vec![(1, MAP)])
                .contains("relocation on the second half of an ld_imm64 in `.text`")
        );
    }
}
