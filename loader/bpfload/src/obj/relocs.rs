//! Phase 7: relocations, each applied to the section named by its `sh_info`
//! (not by its name), resolved to what the instruction refers to:
//!
//! - `R_BPF_64_64` on an `ld_imm64`: a legacy map (its symbol, or the `maps`
//!   section symbol + offset), an address in global data (a data symbol or
//!   section symbol + offset), or a function address (a callback);
//! - `R_BPF_64_32` on a bpf-to-bpf `call`: target instruction
//!   `st_value / 8 + imm + 1`.
//!
//! REL entries keep their addend in the instruction's immediate. Undefined
//! symbols are refused by name; relocations of sections not loaded into
//! memory (`.BTF*`, `.debug*`) are ignored.

use super::symbols::SymInfo;
use super::{
    CodeSection, MapSlot, MapSpec, Parser, RelocTarget, Role, elf_err, func_at, insn_index,
};
use crate::{Result, bail};
use object::elf;
use object::read::elf::{Rel, SectionHeader};

const R_BPF_64_64: u32 = 1;
const R_BPF_64_32: u32 = 10;

/// Resolved relocations of each code section: (instruction, target), unsorted.
pub(super) type Pending = Vec<Vec<(usize, RelocTarget)>>;

impl Parser<'_> {
    /// Reads and resolves every relocation section.
    pub(super) fn relocations(&self) -> Result<Pending> {
        let endian = self.endian;
        let mut pending: Pending = vec![Vec::new(); self.code.len()];
        for s in self.sections.iter() {
            let sh_type = s.sh_type(endian);
            if sh_type != elf::SHT_REL && sh_type != elf::SHT_RELA {
                continue;
            }
            let target = s.sh_info(endian) as usize;
            let Some(ci) = self.relocated_code(target)? else {
                continue;
            };
            let tname = self.name(target);
            if sh_type == elf::SHT_RELA {
                bail!("unsupported RELA relocations for `{tname}` (BPF objects use REL)");
            }
            if s.sh_link(endian) as usize != self.symtab_index {
                bail!("invalid BPF object: relocations for `{tname}` do not use the symbol table");
            }
            let Some((rels, _)) = s.rel(endian, self.bytes).map_err(elf_err("relocations"))? else {
                continue;
            };
            let ctx = Ctx {
                code: &self.code,
                syms: &self.syms,
                roles: &self.roles,
                map_slots: &self.map_slots,
                maps: &self.maps,
            };
            for r in rels {
                let t = ctx.resolve(ci, r.r_offset(endian), r.r_sym(endian), r.r_type(endian))?;
                pending[ci].push(t);
            }
        }
        Ok(pending)
    }

    /// The code section that relocations of section `target` apply to;
    /// `None` for sections whose relocations do not matter.
    fn relocated_code(&self, target: usize) -> Result<Option<usize>> {
        let Some(&role) = self.roles.get(target) else {
            bail!("invalid BPF object: relocation section applies to missing section {target}");
        };
        let tname = self.name(target);
        let target_alloc = self
            .sections
            .section(object::SectionIndex(target))
            .map(|t| t.sh_flags(self.endian) & u64::from(elf::SHF_ALLOC) != 0)
            .unwrap_or(false);
        match role {
            Role::Code(ci) => Ok(Some(ci)),
            // .BTF*, .debug*, and anything else not loaded into memory.
            _ if !target_alloc || tname.starts_with(".BTF") || tname.starts_with(".debug") => {
                Ok(None)
            }
            _ => bail!(
                "unsupported relocations in section `{tname}` (pointers in statics cannot be loaded)"
            ),
        }
    }
}

/// One relocation being resolved: instruction `pc` of `cs` (`here` for
/// messages) against symbol `y`, defined in a section of `role`.
struct Site<'s> {
    cs: &'s CodeSection,
    pc: usize,
    here: String,
    y: &'s SymInfo,
    role: Role,
}

/// What relocation resolution needs to look at.
struct Ctx<'a> {
    code: &'a [CodeSection],
    syms: &'a [SymInfo],
    roles: &'a [Role],
    map_slots: &'a [MapSlot],
    maps: &'a [MapSpec],
}

impl Ctx<'_> {
    /// Resolves one relocation of code section `ci`.
    fn resolve(
        &self,
        ci: usize,
        offset: u64,
        sym: u32,
        r_type: u32,
    ) -> Result<(usize, RelocTarget)> {
        let cs = &self.code[ci];
        let here = format!("`{}`+{offset:#x}", cs.name);
        let Some(pc) = insn_index(offset).filter(|&pc| pc < cs.insns.len()) else {
            bail!("invalid BPF object: relocation at {here} is outside the section or unaligned");
        };
        let Some(y) = self.syms.get(sym as usize).filter(|_| sym != 0) else {
            bail!("invalid BPF object: relocation at {here} refers to missing symbol #{sym}");
        };
        if y.shndx == elf::SHN_UNDEF {
            bail!("undefined symbol `{}` referenced at {here}", y.label());
        }
        let role = self.roles.get(usize::from(y.shndx)).copied();
        let Some(role) = role.filter(|_| y.shndx < elf::SHN_LORESERVE) else {
            bail!(
                "unsupported relocation at {here} against special symbol `{}`",
                y.label()
            );
        };
        let site = Site {
            cs,
            pc,
            here,
            y,
            role,
        };
        let target = match r_type {
            R_BPF_64_64 => self.ld_imm64(&site)?,
            R_BPF_64_32 => self.call(&site)?,
            other => bail!("unsupported relocation type {other} at {}", site.here),
        };
        Ok((pc, target))
    }

    /// `R_BPF_64_64`: an `ld_imm64` of a map, global data or a function address.
    fn ld_imm64(&self, site: &Site<'_>) -> Result<RelocTarget> {
        let (cs, pc, here, y, role) = (site.cs, site.pc, &site.here, site.y, site.role);
        let ins = cs.insns[pc];
        if !ins.is_ld_imm64() {
            bail!("invalid BPF object: R_BPF_64_64 at {here} is not on an ld_imm64");
        }
        if pc + 1 >= cs.insns.len() {
            bail!("invalid BPF object: truncated ld_imm64 at {here}");
        }
        // REL: the addend is the instruction's current immediate.
        let addr = i128::from(y.value) + i128::from(ins.imm);
        Ok(match role {
            Role::Maps => {
                let Some(slot) = self.map_slots.iter().find(|m| i128::from(m.start) == addr) else {
                    bail!(
                        "invalid BPF object: {here} refers to maps+{addr:#x} (`{}`), which is no map definition",
                        y.label()
                    );
                };
                RelocTarget::Map { map: slot.map }
            }
            Role::Data(map) => {
                let size = self.maps[map].value_size;
                let Some(offset) = u32::try_from(addr).ok().filter(|&o| o < size) else {
                    bail!(
                        "invalid BPF object: {here} refers to offset {addr} of `{}` ({size} bytes)",
                        self.maps[map].name
                    );
                };
                RelocTarget::MapValue { map, offset }
            }
            Role::Code(tc) => {
                let func = u64::try_from(addr)
                    .ok()
                    .and_then(insn_index)
                    .and_then(|t| func_at(&self.code[tc], t as i64));
                let Some(func) = func else {
                    bail!(
                        "invalid BPF object: {here} takes the address of `{}`+{}, not a function start",
                        self.code[tc].name,
                        ins.imm
                    );
                };
                RelocTarget::FuncAddr { code: tc, func }
            }
            Role::Other => bail!(
                "unsupported relocation at {here}: `{}` is not in a map, data or code section",
                y.label()
            ),
        })
    }

    /// `R_BPF_64_32`: a bpf-to-bpf call.
    fn call(&self, site: &Site<'_>) -> Result<RelocTarget> {
        let (cs, pc, here, y, role) = (site.cs, site.pc, &site.here, site.y, site.role);
        let ins = cs.insns[pc];
        if !ins.is_pseudo_call() {
            bail!("invalid BPF object: R_BPF_64_32 at {here} is not on a bpf-to-bpf call");
        }
        let Role::Code(tc) = role else {
            bail!(
                "invalid BPF object: call at {here} targets `{}`, which is not code",
                y.label()
            );
        };
        let Some(base) = insn_index(y.value) else {
            bail!(
                "invalid BPF object: call target `{}` is not 8-byte aligned",
                y.label()
            );
        };
        let target = base as i64 + i64::from(ins.imm) + 1;
        let Some(func) = func_at(&self.code[tc], target) else {
            bail!(
                "invalid BPF object: call at {here} targets `{}` instruction {target}, not a function start",
                self.code[tc].name
            );
        };
        Ok(RelocTarget::Call { code: tc, func })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{code_section, sym};
    use super::super::{BPF_MAP_TYPE_ARRAY, MapKind};
    use super::*;
    use crate::insn::{self, Insn, asm};

    /// Sections: 1 program code, 2 `.text`, 3 maps, 4 `.data`, 5 other.
    /// Symbols: 1 MAP_B (maps+20), 2 VAR (.data+8), 3 helper (.text+8),
    /// 4 undefined, 5 `.text` section, 6 absolute, 7 in `other`, 8 unaligned.
    struct World {
        code: Vec<CodeSection>,
        syms: Vec<SymInfo>,
        roles: Vec<Role>,
        slots: Vec<MapSlot>,
        maps: Vec<MapSpec>,
    }

    impl World {
        fn new(prog: Vec<Insn>) -> Self {
            let map = |name: &str, value_size| MapSpec {
                name: name.into(),
                kind: MapKind::Data,
                map_type: BPF_MAP_TYPE_ARRAY,
                key_size: 4,
                value_size,
                max_entries: 1,
                flags: 0,
                initial: None,
            };
            let (f, l) = (elf::STT_FUNC, elf::STB_LOCAL);
            Self {
                code: vec![
                    code_section("tp/a/b", prog, &[]),
                    code_section(
                        ".text",
                        vec![asm::exit(); 3],
                        &[("cb", 0, 1), ("helper", 1, 3)],
                    ),
                ],
                syms: vec![
                    sym("", 0, (0, 0), 0, l),
                    sym("MAP_B", 3, (20, 20), elf::STT_OBJECT, l),
                    sym("VAR", 4, (8, 8), elf::STT_OBJECT, l),
                    sym("helper", 2, (8, 16), f, l),
                    sym("ext", elf::SHN_UNDEF, (0, 0), 0, elf::STB_GLOBAL),
                    sym("", 2, (0, 0), elf::STT_SECTION, l),
                    sym("abs", elf::SHN_ABS, (0, 0), 0, l),
                    sym("o", 5, (0, 0), 0, l),
                    sym("odd", 2, (4, 0), f, l),
                ],
                roles: vec![
                    Role::Other,
                    Role::Code(0),
                    Role::Code(1),
                    Role::Maps,
                    Role::Data(1),
                    Role::Other,
                ],
                slots: vec![MapSlot { start: 0, map: 0 }, MapSlot { start: 20, map: 2 }],
                maps: vec![map("MAP_A", 0), map(".data", 16), map("MAP_B", 0)],
            }
        }

        /// Resolves a relocation at byte `offset` of the program section.
        fn at(&self, offset: u64, sym: u32, r_type: u32) -> Result<(usize, RelocTarget)> {
            let ctx = Ctx {
                code: &self.code,
                syms: &self.syms,
                roles: &self.roles,
                map_slots: &self.slots,
                maps: &self.maps,
            };
            ctx.resolve(0, offset, sym, r_type)
        }

        fn resolve(&self, insn: u64, sym: u32, r_type: u32) -> Result<(usize, RelocTarget)> {
            self.at(insn * 8, sym, r_type)
        }

        /// Asserts that the relocation fails with a message containing `needle`.
        fn refuses(&self, insn: u64, sym: u32, r_type: u32, needle: &str) {
            let e = self.resolve(insn, sym, r_type).unwrap_err();
            assert!(e.msg.contains(needle), "{e} does not mention {needle:?}");
        }
    }

    fn ld(imm: i32) -> [Insn; 2] {
        [Insn::new(insn::LD_IMM64, 1, 0, 0, imm), Insn::default()]
    }

    fn call(imm: i32) -> Insn {
        Insn::new(insn::CALL, 0, insn::PSEUDO_CALL, 0, imm)
    }

    #[test]
    fn ld_imm64_targets() {
        let mut p = Vec::new();
        for imm in [0, 4, 0, 8] {
            p.extend(ld(imm));
        }
        let w = World::new(p);
        assert_eq!(
            w.resolve(0, 1, R_BPF_64_64).unwrap(),
            (0, RelocTarget::Map { map: 2 })
        );
        assert_eq!(
            w.resolve(2, 2, R_BPF_64_64).unwrap(),
            (2, RelocTarget::MapValue { map: 1, offset: 12 })
        );
        assert_eq!(
            w.resolve(4, 5, R_BPF_64_64).unwrap(),
            (4, RelocTarget::FuncAddr { code: 1, func: 0 })
        );
        assert_eq!(
            w.resolve(6, 5, R_BPF_64_64).unwrap(),
            (6, RelocTarget::FuncAddr { code: 1, func: 1 })
        );
    }

    #[test]
    fn ld_imm64_errors() {
        let mut p = Vec::new();
        for imm in [4, 8, 4] {
            p.extend(ld(imm));
        }
        p.push(asm::exit());
        p.push(ld(0)[0]);
        let w = World::new(p);
        w.refuses(
            0,
            1,
            R_BPF_64_64,
            "maps+0x18 (`MAP_B`), which is no map definition",
        );
        w.refuses(2, 2, R_BPF_64_64, "offset 16 of `.data` (16 bytes)");
        w.refuses(
            4,
            5,
            R_BPF_64_64,
            "address of `.text`+4, not a function start",
        );
        w.refuses(
            0,
            7,
            R_BPF_64_64,
            "`o` is not in a map, data or code section",
        );
        w.refuses(
            6,
            1,
            R_BPF_64_64,
            "R_BPF_64_64 at `tp/a/b`+0x30 is not on an ld_imm64",
        );
        w.refuses(7, 1, R_BPF_64_64, "truncated ld_imm64 at `tp/a/b`+0x38");
    }

    #[test]
    fn calls() {
        let w = World::new(vec![call(-1), call(0), call(1), asm::exit()]);
        // Against the function symbol (imm -1) or the section symbol (imm = index - 1).
        assert_eq!(
            w.resolve(0, 3, R_BPF_64_32).unwrap(),
            (0, RelocTarget::Call { code: 1, func: 1 })
        );
        assert_eq!(
            w.resolve(1, 5, R_BPF_64_32).unwrap(),
            (1, RelocTarget::Call { code: 1, func: 1 })
        );
        w.refuses(
            2,
            5,
            R_BPF_64_32,
            "targets `.text` instruction 2, not a function start",
        );
        w.refuses(0, 2, R_BPF_64_32, "targets `VAR`, which is not code");
        w.refuses(0, 8, R_BPF_64_32, "call target `odd` is not 8-byte aligned");
        w.refuses(3, 3, R_BPF_64_32, "is not on a bpf-to-bpf call");
    }

    #[test]
    fn bad_places_and_symbols() {
        let w = World::new(vec![call(-1), asm::exit()]);
        w.refuses(
            2,
            3,
            R_BPF_64_32,
            "`tp/a/b`+0x10 is outside the section or unaligned",
        );
        assert!(
            w.at(3, 3, R_BPF_64_32)
                .unwrap_err()
                .msg
                .contains("unaligned")
        );
        w.refuses(0, 0, R_BPF_64_32, "refers to missing symbol #0");
        w.refuses(0, 99, R_BPF_64_32, "refers to missing symbol #99");
        w.refuses(
            0,
            4,
            R_BPF_64_32,
            "undefined symbol `ext` referenced at `tp/a/b`+0x0",
        );
        w.refuses(0, 6, R_BPF_64_32, "against special symbol `abs`");
        w.refuses(0, 3, 3, "unsupported relocation type 3 at");
    }
}
