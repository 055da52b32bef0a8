//! [`ObjectSpec`] -> one loadable instruction stream per program.
//!
//! Pure. For each program: its entry function first, then every function it
//! reaches through calls or callback addresses (transitively, each once, in
//! discovery order). Unreachable code — such as the panic handler rustc
//! leaves in `.text` — is never appended: the verifier rejects it.
//! Calls and `PSEUDO_FUNC` loads are rewritten relative to the final layout;
//! map references are marked and get their fds from [`LinkedProgram::resolve_maps`].

use crate::insn::{self, Insn};
use crate::obj::{AttachPoint, ObjectSpec, ProgramSpec, RelocTarget};
use crate::{Result, bail};
use std::collections::{HashMap, HashSet};

/// Largest program the kernel accepts (`BPF_COMPLEXITY_LIMIT_INSNS`).
const MAX_PROG_INSNS: usize = 1_000_000;
/// Bound on the instructions `link` produces for one object in total, so
/// that a hostile object (many programs sharing a huge `.text`) cannot make
/// it allocate without limit.
const MAX_TOTAL_INSNS: usize = 8_000_000;

/// How an `ld_imm64` refers to a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapRefKind {
    /// `src = PSEUDO_MAP_FD`, `imm = fd`.
    Fd,
    /// `src = PSEUDO_MAP_VALUE`, `insn[0].imm = fd`, `insn[1].imm = offset`.
    Value { offset: u32 },
}

/// A map reference in a linked program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapRef {
    /// Index of the first `ld_imm64` slot.
    pub insn: usize,
    /// Index into [`ObjectSpec::maps`].
    pub map: usize,
    /// Fd or value reference.
    pub kind: MapRefKind,
}

/// One function of the final stream (for BTF `func_info`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncInfo {
    /// First instruction of the function in [`LinkedProgram::insns`].
    pub insn_off: u32,
    /// The symbol name as in the object (not sanitized).
    pub name: String,
    /// The program's entry function (always first, at 0).
    pub is_main: bool,
}

/// A program ready for `BPF_PROG_LOAD` once its map fds are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedProgram {
    /// The program's (entry function's) name.
    pub name: String,
    /// Its section name.
    pub section: String,
    /// Where to attach it.
    pub attach: AttachPoint,
    /// The final instruction stream; map fds are 0 until [`LinkedProgram::resolve_maps`].
    pub insns: Vec<Insn>,
    /// Every map reference, in instruction order per function.
    pub map_refs: Vec<MapRef>,
    /// Every function of the stream: main first at 0, then appended ones in layout order.
    pub funcs: Vec<FuncInfo>,
}

impl LinkedProgram {
    /// Writes fds into the `ld_imm64` slots: `fds[i]` is the fd of `ObjectSpec.maps[i]`.
    pub fn resolve_maps(&mut self, fds: &[i32]) -> Result<()> {
        for r in &self.map_refs {
            let Some(&fd) = fds.get(r.map) else {
                bail!(
                    "program `{}` uses map #{} but only {} fds were given",
                    self.name,
                    r.map,
                    fds.len()
                );
            };
            let ok = self.insns.get(r.insn).is_some_and(|i| i.is_ld_imm64())
                && r.insn + 1 < self.insns.len();
            if !ok {
                bail!(
                    "program `{}`: map reference at {} is not an ld_imm64",
                    self.name,
                    r.insn
                );
            }
            self.insns[r.insn].imm = fd;
            self.insns[r.insn + 1].imm = match r.kind {
                MapRefKind::Fd => 0,
                MapRefKind::Value { offset } => offset as i32,
            };
        }
        Ok(())
    }

    /// The instructions as the bytes `BPF_PROG_LOAD` takes.
    pub fn insn_bytes(&self) -> Vec<u8> {
        self.insns.iter().flat_map(|i| i.to_bytes()).collect()
    }
}

/// Links every program of the object.
pub fn link(spec: &ObjectSpec) -> Result<Vec<LinkedProgram>> {
    let mut total = 0usize;
    let mut out = Vec::with_capacity(spec.programs.len());
    for p in &spec.programs {
        let lp = link_program(spec, p)?;
        total = total.saturating_add(lp.insns.len());
        if total > MAX_TOTAL_INSNS {
            bail!("linked programs exceed {MAX_TOTAL_INSNS} instructions in total");
        }
        out.push(lp);
    }
    Ok(out)
}

/// Links one program: lays out its reachable functions and patches references.
pub fn link_program(spec: &ObjectSpec, prog: &ProgramSpec) -> Result<LinkedProgram> {
    let fail = |what: String| crate::Error::new(format!("link `{}`: {what}", prog.name));
    let Layout {
        order,
        base,
        mut insns,
    } = lay_out(spec, prog).map_err(fail)?;
    let mut map_refs = Vec::new();
    for &(ci, fi) in &order {
        let cs = &spec.code[ci];
        let f = &cs.funcs[fi];
        let b = base[&(ci, fi)];
        for r in relocs_in(cs, f.start, f.end) {
            // Both halves of an ld_imm64 must belong to this function.
            let two_slots = r.insn + 1 < f.end;
            let pc = b + (r.insn - f.start);
            let map_ref = patch(spec, &base, &mut insns, pc, two_slots, r.target).map_err(fail)?;
            map_refs.extend(map_ref);
        }
    }
    let funcs = order
        .iter()
        .enumerate()
        .map(|(k, &(ci, fi))| FuncInfo {
            insn_off: base[&(ci, fi)] as u32,
            name: spec.code[ci].funcs[fi].name.clone(),
            is_main: k == 0,
        })
        .collect();
    Ok(LinkedProgram {
        name: prog.name.clone(),
        section: prog.section.clone(),
        attach: prog.attach.clone(),
        insns,
        map_refs,
        funcs,
    })
}

/// A program's functions laid out one after the other.
struct Layout {
    /// (code section, function), the entry first, then in discovery order.
    order: Vec<(usize, usize)>,
    /// Where each function starts in `insns`.
    base: HashMap<(usize, usize), usize>,
    /// The functions' instructions, not patched yet.
    insns: Vec<Insn>,
}

/// Lays out the entry function of `prog`, then every function it reaches
/// through calls or callback addresses, each once.
fn lay_out(spec: &ObjectSpec, prog: &ProgramSpec) -> std::result::Result<Layout, String> {
    let mut order: Vec<(usize, usize)> = vec![(prog.code, prog.func)];
    let mut queued: HashSet<(usize, usize)> = order.iter().copied().collect();
    let mut base: HashMap<(usize, usize), usize> = HashMap::new();
    let mut insns: Vec<Insn> = Vec::new();
    let mut next = 0;
    while let Some(&(ci, fi)) = order.get(next) {
        next += 1;
        let f = spec
            .code
            .get(ci)
            .and_then(|c| c.funcs.get(fi).map(|f| (c, f)))
            .filter(|(c, f)| f.start < f.end && f.end <= c.insns.len());
        let Some((cs, f)) = f else {
            return Err(format!("bad function reference ({ci}, {fi})"));
        };
        if insns.len() + (f.end - f.start) > MAX_PROG_INSNS {
            return Err(format!("more than {MAX_PROG_INSNS} instructions"));
        }
        base.insert((ci, fi), insns.len());
        insns.extend_from_slice(&cs.insns[f.start..f.end]);
        for r in relocs_in(cs, f.start, f.end) {
            if let RelocTarget::Call { code, func } | RelocTarget::FuncAddr { code, func } =
                r.target
                && queued.insert((code, func))
            {
                order.push((code, func));
            }
        }
    }
    Ok(Layout { order, base, insns })
}

/// Patches the instruction at `pc` of the laid-out `insns` for `target`;
/// `two_slots` says both halves of an ld_imm64 there belong to its function.
/// Returns the map reference it makes, if any.
fn patch(
    spec: &ObjectSpec,
    base: &HashMap<(usize, usize), usize>,
    insns: &mut [Insn],
    pc: usize,
    two_slots: bool,
    target: RelocTarget,
) -> std::result::Result<Option<MapRef>, String> {
    let rel_to = |code, func| -> std::result::Result<i32, String> {
        let t = base
            .get(&(code, func))
            .ok_or("internal: target not laid out")?;
        i32::try_from(*t as i64 - pc as i64 - 1).map_err(|_| "jump too far".to_string())
    };
    let two_slots = two_slots && insns.get(pc).is_some_and(|i| i.is_ld_imm64());
    match target {
        RelocTarget::Call { code, func } => {
            if !insns[pc].is_pseudo_call() {
                return Err(format!("call relocation at {pc} is not on a call"));
            }
            insns[pc].imm = rel_to(code, func)?;
            Ok(None)
        }
        RelocTarget::FuncAddr { code, func } => {
            if !two_slots {
                return Err(format!("function address at {pc} is not an ld_imm64"));
            }
            insns[pc].set_src(insn::PSEUDO_FUNC);
            insns[pc].imm = rel_to(code, func)?;
            insns[pc + 1].imm = 0;
            Ok(None)
        }
        RelocTarget::Map { map } | RelocTarget::MapValue { map, .. } => {
            if !two_slots {
                return Err(format!("map reference at {pc} is not an ld_imm64"));
            }
            if map >= spec.maps.len() {
                return Err(format!("map #{map} does not exist"));
            }
            let (src, kind) = match target {
                RelocTarget::MapValue { offset, .. } => {
                    (insn::PSEUDO_MAP_VALUE, MapRefKind::Value { offset })
                }
                _ => (insn::PSEUDO_MAP_FD, MapRefKind::Fd),
            };
            insns[pc].set_src(src);
            // The fd goes in later; the offset is known now.
            insns[pc].imm = 0;
            insns[pc + 1].imm = match kind {
                MapRefKind::Value { offset } => offset as i32,
                MapRefKind::Fd => 0,
            };
            Ok(Some(MapRef {
                insn: pc,
                map,
                kind,
            }))
        }
    }
}

/// The relocations of `cs` inside instructions `start..end` (relocs are sorted).
fn relocs_in(cs: &crate::obj::CodeSection, start: usize, end: usize) -> &[crate::obj::CodeReloc] {
    let lo = cs.relocs.partition_point(|r| r.insn < start);
    let hi = cs.relocs.partition_point(|r| r.insn < end);
    cs.relocs.get(lo..hi).unwrap_or(&[])
}
