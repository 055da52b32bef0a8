//! ELF bytes -> [`ObjectSpec`]: maps, programs, code and resolved relocations.
//!
//! Pure: no system calls, no `unsafe`. Every size and offset read from the
//! file is checked, so that any input yields `Err`, never a panic and never
//! an allocation larger than the input itself.
//!
//! Relocations are resolved here, once, into [`RelocTarget`]s (DESIGN.md
//! section 4); `link` then only lays out functions and patches instructions.
//!
//! Every `.data*`, `.rodata*` and `.bss*` section becomes its own global-data
//! map (so `.rodata` and `.rodata.str1.1` are two maps): merging them would
//! need offsets rewritten across sections for no gain.

use crate::insn::{self, Insn};
use crate::{Error, Result, bail};
use object::LittleEndian as LE;
use object::elf;
use object::read::elf::{FileHeader, Rel, SectionHeader, Sym};
use std::collections::{BTreeMap, HashMap};

type Elf = elf::FileHeader64<LE>;

/// Size of the legacy `struct bpf_map_def` prefix the loader reads.
pub const MAP_DEF_SIZE: u64 = 20;
/// Kernel limit on map names (`BPF_OBJ_NAME_LEN` minus the NUL).
pub const MAX_KERNEL_NAME: usize = 15;

const R_BPF_64_64: u32 = 1;
const R_BPF_64_32: u32 = 10;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// Programs may only read the map; user space may still write it until frozen.
pub const BPF_F_RDONLY_PROG: u32 = 1 << 7;

/// Where a map comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// A 20-byte `bpf_map_def` in the `maps` section.
    Legacy,
    /// `.data*`: a one-entry array initialised from the section bytes.
    Data,
    /// `.rodata*`: like `Data`, frozen after it is filled.
    Rodata,
    /// `.bss*`: a one-entry array left zeroed.
    Bss,
}

/// A map to create before loading the programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// Symbol name (legacy maps) or section name (global data, e.g. `.rodata.str1.1`).
    /// Unique within an object; see [`MapSpec::kernel_name`] for the name to give the kernel.
    pub name: String,
    /// Where the map comes from.
    pub kind: MapKind,
    /// `BPF_MAP_TYPE_*` (`ARRAY` for global data).
    pub map_type: u32,
    /// 4 for global data.
    pub key_size: u32,
    /// The section size for global data.
    pub value_size: u32,
    /// 1 for global data.
    pub max_entries: u32,
    /// `map_flags`: [`BPF_F_RDONLY_PROG`] for `.rodata*`, as libbpf does, so that
    /// helpers accept its strings as constant and the verifier can read them.
    pub flags: u32,
    /// Bytes to write at key 0 after creation (`.data`/`.rodata`); `None` for `.bss` and legacy maps.
    pub initial: Option<Vec<u8>>,
}

impl MapSpec {
    /// Whether the map must be frozen (`BPF_MAP_FREEZE`) after it is filled: `.rodata*`.
    pub fn frozen(&self) -> bool {
        self.kind == MapKind::Rodata
    }

    /// The name to pass in `bpf_attr.map_name`: Rust mangling stripped to the
    /// last path component, characters other than `[A-Za-z0-9_.]` replaced
    /// by `_`, cut to 15 bytes.
    pub fn kernel_name(&self) -> String {
        let short = demangled_tail(&self.name);
        short
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(MAX_KERNEL_NAME)
            .collect()
    }
}

/// The last identifier of a Rust v0 mangled name (`_RNvCs..._1p6COUNTS` -> `COUNTS`),
/// or the name itself.
pub fn demangled_tail(name: &str) -> &str {
    if !name.starts_with("_R") {
        return name;
    }
    // v0 ends with `<decimal length><identifier>`; find the split where the
    // decimal prefix equals the length of the rest.
    let b = name.as_bytes();
    for start in (2..b.len()).rev() {
        if !b[start - 1].is_ascii_digit() {
            continue;
        }
        let mut d = start - 1;
        while d > 2 && b[d - 1].is_ascii_digit() {
            d -= 1;
        }
        if let Some(len) = name.get(d..start).and_then(|s| s.parse::<usize>().ok())
            && len == b.len() - start
            && len > 0
            && !b[start].is_ascii_digit()
        {
            return name.get(start..).unwrap_or(name);
        }
    }
    name
}

/// Where a program attaches, from its section name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachPoint {
    /// `tracepoint/<category>/<name>` or `tp/<category>/<name>`.
    Tracepoint { category: String, name: String },
    /// `raw_tracepoint/<name>` or `raw_tp/<name>`.
    RawTracepoint { name: String },
}

impl AttachPoint {
    /// Parses a program section name; `None` if it names no supported program type.
    pub fn from_section(section: &str) -> Option<Self> {
        let (kind, rest) = section.split_once('/')?;
        match kind {
            "tracepoint" | "tp" => {
                let (category, name) = rest.split_once('/')?;
                (valid_tp_part(category) && valid_tp_part(name)).then(|| Self::Tracepoint {
                    category: category.to_string(),
                    name: name.to_string(),
                })
            }
            "raw_tracepoint" | "raw_tp" => valid_tp_part(rest).then(|| Self::RawTracepoint {
                name: rest.to_string(),
            }),
            _ => None,
        }
    }
}

/// Tracepoint names end up in tracefs paths: no `/`, no `.`/`..`, nothing exotic.
fn valid_tp_part(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A function inside a code section, in instruction indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Symbol name (possibly Rust-mangled), or the section's last path
    /// component for a section without FUNC symbols.
    pub name: String,
    /// First instruction (index into [`CodeSection::insns`]).
    pub start: usize,
    /// One past the last instruction.
    pub end: usize,
}

/// What a relocated (or pc-relative) instruction refers to, fully resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelocTarget {
    /// `ld_imm64` of a legacy map: becomes `PSEUDO_MAP_FD`.
    Map { map: usize },
    /// `ld_imm64` of an address inside a global-data map: becomes `PSEUDO_MAP_VALUE`.
    MapValue { map: usize, offset: u32 },
    /// `ld_imm64` of a function address (a callback): becomes `PSEUDO_FUNC`.
    FuncAddr { code: usize, func: usize },
    /// A bpf-to-bpf `call` (relocated or pc-relative).
    Call { code: usize, func: usize },
}

/// One instruction of a code section that `link` must patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeReloc {
    /// Instruction index in the code section.
    pub insn: usize,
    /// What it refers to.
    pub target: RelocTarget,
}

/// An executable section: a program section or `.text*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeSection {
    /// Section name.
    pub name: String,
    /// The section's instructions, as in the file.
    pub insns: Vec<Insn>,
    /// Sorted by `start`, non-overlapping.
    pub funcs: Vec<Function>,
    /// Sorted by `insn`, at most one per instruction.
    pub relocs: Vec<CodeReloc>,
}

/// A program: an entry function in a program section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramSpec {
    /// The entry function's symbol name.
    pub name: String,
    /// The program section's name.
    pub section: String,
    /// Where to attach, from the section name.
    pub attach: AttachPoint,
    /// Index into [`ObjectSpec::code`].
    pub code: usize,
    /// Index into that section's `funcs`.
    pub func: usize,
}

/// Everything `link` and `load` need from the object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSpec {
    /// Contents of the `license` section up to its NUL.
    pub license: String,
    /// Global-data maps in section order, then legacy maps by offset in `maps`.
    pub maps: Vec<MapSpec>,
    /// Programs in section order.
    pub programs: Vec<ProgramSpec>,
    /// Every executable section, with resolved relocations.
    pub code: Vec<CodeSection>,
}

impl ObjectSpec {
    /// Index of the map called `name` (exact name, else the demangled tail of a legacy map).
    pub fn map_index(&self, name: &str) -> Option<usize> {
        self.maps.iter().position(|m| m.name == name).or_else(|| {
            self.maps
                .iter()
                .position(|m| demangled_tail(&m.name) == name)
        })
    }

    /// Names of all programs, in section order.
    pub fn program_names(&self) -> Vec<String> {
        self.programs.iter().map(|p| p.name.clone()).collect()
    }

    /// The program called `name`.
    pub fn program(&self, name: &str) -> Option<&ProgramSpec> {
        self.programs.iter().find(|p| p.name == name)
    }
}

fn elf_err(what: &str) -> impl Fn(object::read::Error) -> Error + '_ {
    move |e| Error::new(format!("invalid BPF object: {what}: {e}"))
}

/// A symbol, copied out of the symbol table.
struct SymInfo {
    name: String,
    shndx: u16,
    value: u64,
    size: u64,
    kind: u8,
    bind: u8,
}

impl SymInfo {
    fn label(&self) -> &str {
        if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        }
    }
}

/// What a section turned into.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Code(usize),
    Maps,
    Data(usize),
    Other,
}

/// A legacy map definition's place in the `maps` section.
struct MapSlot {
    start: u64,
    map: usize,
}

/// Parses a relocatable little-endian 64-bit BPF ELF object.
pub fn parse(bytes: &[u8]) -> Result<ObjectSpec> {
    // The object crate reads ELF structures in place and needs them 8-byte
    // aligned; `include_bytes!` data is not. Copy into an aligned window.
    if !(bytes.as_ptr() as usize).is_multiple_of(8) {
        let mut buf = vec![0u8; bytes.len() + 8];
        let skip = (buf.as_ptr() as usize).wrapping_neg() % 8;
        buf[skip..skip + bytes.len()].copy_from_slice(bytes);
        return parse_aligned(&buf[skip..skip + bytes.len()]);
    }
    parse_aligned(bytes)
}

fn parse_aligned(bytes: &[u8]) -> Result<ObjectSpec> {
    // Explicit ident checks first: better messages than the object crate's.
    let Some(ident) = bytes.get(..16) else {
        bail!(
            "invalid BPF object: {} bytes is too short for an ELF header",
            bytes.len()
        );
    };
    if ident[..4] != elf::ELFMAG {
        bail!("invalid BPF object: not an ELF file");
    }
    if ident[4] != elf::ELFCLASS64 {
        bail!(
            "invalid BPF object: not a 64-bit ELF file (class {})",
            ident[4]
        );
    }
    if ident[5] != elf::ELFDATA2LSB {
        bail!("invalid BPF object: not little-endian");
    }
    let hdr = Elf::parse(bytes).map_err(elf_err("ELF header"))?;
    let endian = hdr.endian().map_err(elf_err("ELF header"))?;
    if hdr.e_machine(endian) != elf::EM_BPF {
        bail!(
            "invalid BPF object: e_machine is {}, expected EM_BPF ({})",
            hdr.e_machine(endian),
            elf::EM_BPF
        );
    }
    if hdr.e_type(endian) != elf::ET_REL {
        bail!(
            "invalid BPF object: not a relocatable object (e_type {})",
            hdr.e_type(endian)
        );
    }
    let sections = hdr
        .sections(endian, bytes)
        .map_err(elf_err("section headers"))?;
    let symtab = sections
        .symbols(endian, bytes, elf::SHT_SYMTAB)
        .map_err(elf_err("symbol table"))?;

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

    let mut names = Vec::with_capacity(sections.len());
    for s in sections.iter() {
        let n = sections
            .section_name(endian, s)
            .map_err(elf_err("section name"))?;
        names.push(String::from_utf8_lossy(n).into_owned());
    }

    let mut license = None;
    let mut maps = Vec::new();
    let mut code = Vec::new();
    let mut roles = vec![Role::Other; sections.len()];
    let mut map_slots = Vec::new();
    let mut maps_section = None;

    for (i, s) in sections.enumerate() {
        let i = i.0;
        let name = names.get(i).map(String::as_str).unwrap_or("");
        let flags = s.sh_flags(endian);
        let sh_type = s.sh_type(endian);
        if flags & u64::from(elf::SHF_ALLOC) == 0 && name != "license" {
            continue;
        }
        let data = || s.data(endian, bytes).map_err(elf_err(name));
        if name == "license" {
            let d = data()?;
            let Some(nul) = d.iter().position(|&b| b == 0) else {
                bail!("invalid BPF object: license section is not a NUL-terminated string");
            };
            let Ok(text) = std::str::from_utf8(&d[..nul]) else {
                bail!("invalid BPF object: license is not UTF-8");
            };
            license = Some(text.to_string());
        } else if flags & u64::from(elf::SHF_EXECINSTR) != 0 {
            let d = data()?;
            let Some(insns) = insn::decode(d) else {
                bail!(
                    "invalid BPF object: code section `{name}` is {} bytes, not a multiple of 8",
                    d.len()
                );
            };
            roles[i] = Role::Code(code.len());
            code.push(CodeSection {
                name: name.to_string(),
                insns,
                funcs: Vec::new(),
                relocs: Vec::new(),
            });
        } else if name == "maps" {
            if maps_section.is_some() {
                bail!("invalid BPF object: two `maps` sections");
            }
            maps_section = Some(i);
            roles[i] = Role::Maps;
        } else if let Some(kind) = data_kind(name) {
            let size = s.sh_size(endian);
            let Ok(value_size) = u32::try_from(size) else {
                bail!("invalid BPF object: section `{name}` is too large ({size} bytes)");
            };
            if value_size == 0 {
                // An empty array value is rejected by the kernel; nothing can point into it anyway.
                continue;
            }
            let initial = if sh_type == elf::SHT_NOBITS || kind == MapKind::Bss {
                None
            } else {
                Some(data()?.to_vec())
            };
            roles[i] = Role::Data(maps.len());
            maps.push(MapSpec {
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
            });
        }
    }

    let Some(license) = license else {
        bail!("invalid BPF object: no `license` section");
    };

    // Legacy maps, identified by their symbols (never by a fixed stride).
    if let Some(mi) = maps_section {
        let s = sections
            .section(object::SectionIndex(mi))
            .map_err(elf_err("maps"))?;
        let data = s.data(endian, bytes).map_err(elf_err("maps"))?;
        let mut defs: Vec<&SymInfo> = syms
            .iter()
            .filter(|y| {
                usize::from(y.shndx) == mi
                    && y.kind != elf::STT_SECTION
                    && y.kind != elf::STT_FILE
                    && (y.kind == elf::STT_OBJECT || y.size > 0)
            })
            .collect();
        defs.sort_by_key(|y| y.value);
        let mut prev_end = 0u64;
        for y in defs {
            if y.size < MAP_DEF_SIZE {
                bail!(
                    "invalid BPF object: map `{}` definition is {} bytes, expected at least {MAP_DEF_SIZE}",
                    y.label(),
                    y.size
                );
            }
            let end = y.value.checked_add(y.size);
            let def = usize::try_from(y.value)
                .ok()
                .and_then(|v| data.get(v..v.checked_add(MAP_DEF_SIZE as usize)?));
            let (Some(end), Some(def)) = (end, def) else {
                bail!(
                    "invalid BPF object: map `{}` lies outside the maps section",
                    y.label()
                );
            };
            if end > data.len() as u64 {
                bail!(
                    "invalid BPF object: map `{}` lies outside the maps section",
                    y.label()
                );
            }
            if y.value < prev_end {
                bail!(
                    "invalid BPF object: map `{}` overlaps another map",
                    y.label()
                );
            }
            prev_end = end;
            if y.name.is_empty() {
                bail!(
                    "invalid BPF object: unnamed map definition at maps+{:#x}",
                    y.value
                );
            }
            let word = |k: usize| u32::from_le_bytes([def[k], def[k + 1], def[k + 2], def[k + 3]]);
            map_slots.push(MapSlot {
                start: y.value,
                map: maps.len(),
            });
            maps.push(MapSpec {
                name: y.name.clone(),
                kind: MapKind::Legacy,
                map_type: word(0),
                key_size: word(4),
                value_size: word(8),
                max_entries: word(12),
                flags: word(16),
                initial: None,
            });
        }
        roles[mi] = Role::Maps;
    }
    for (i, m) in maps.iter().enumerate() {
        if maps[..i].iter().any(|o| o.name == m.name) {
            bail!("invalid BPF object: two maps named `{}`", m.name);
        }
    }

    // Functions of each code section, from FUNC symbols.
    for (si, role) in roles.iter().enumerate() {
        let Role::Code(ci) = *role else { continue };
        let cs = &mut code[ci];
        let n = cs.insns.len();
        let mut starts: BTreeMap<usize, (&SymInfo, usize)> = BTreeMap::new();
        for y in syms
            .iter()
            .filter(|y| usize::from(y.shndx) == si && y.kind == elf::STT_FUNC)
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
        if starts.is_empty() {
            if n > 0 {
                // No symbols (hand-assembled objects): the whole section is one function.
                let name = cs.name.rsplit('/').next().unwrap_or(&cs.name).to_string();
                cs.funcs.push(Function {
                    name,
                    start: 0,
                    end: n,
                });
            }
            continue;
        }
        let list: Vec<(usize, &SymInfo, usize)> =
            starts.iter().map(|(&s, &(y, size))| (s, y, size)).collect();
        for (k, &(start, y, size)) in list.iter().enumerate() {
            let next = list.get(k + 1).map_or(n, |t| t.0);
            let end = if size > 0 { start + size } else { next };
            if end > next {
                bail!(
                    "invalid BPF object: function `{}` overlaps the next one in `{}`",
                    y.label(),
                    cs.name
                );
            }
            // A function must not end between the two slots of an
            // ld_imm64: its second half would belong to the next function.
            let mut i = start;
            while i < end {
                i += if cs.insns.get(i).is_some_and(|x| x.is_ld_imm64()) {
                    2
                } else {
                    1
                };
            }
            if i > end {
                bail!(
                    "invalid BPF object: truncated ld_imm64 at the end of function `{}` in `{}`",
                    y.label(),
                    cs.name
                );
            }
            cs.funcs.push(Function {
                name: y.name.clone(),
                start,
                end,
            });
        }
    }

    // Programs: global functions of program sections.
    let mut programs = Vec::new();
    for (si, role) in roles.iter().enumerate() {
        let Role::Code(ci) = *role else { continue };
        let cs = &code[ci];
        if is_subprog_section(&cs.name) {
            continue;
        }
        let Some(attach) = AttachPoint::from_section(&cs.name) else {
            bail!(
                "unsupported program section `{}` (expected tracepoint/<category>/<name> or raw_tracepoint/<name>)",
                cs.name
            );
        };
        let mut found = false;
        for (fi, f) in cs.funcs.iter().enumerate() {
            let global = syms.iter().any(|y| {
                usize::from(y.shndx) == si
                    && y.kind == elf::STT_FUNC
                    && y.bind != elf::STB_LOCAL
                    && y.name == f.name
            });
            if global {
                programs.push(ProgramSpec {
                    name: f.name.clone(),
                    section: cs.name.clone(),
                    attach: attach.clone(),
                    code: ci,
                    func: fi,
                });
                found = true;
            }
        }
        if !found && let Some(f) = cs.funcs.first().filter(|f| f.start == 0) {
            programs.push(ProgramSpec {
                name: f.name.clone(),
                section: cs.name.clone(),
                attach,
                code: ci,
                func: 0,
            });
        }
    }
    for (i, p) in programs.iter().enumerate() {
        if programs[..i].iter().any(|o| o.name == p.name) {
            bail!("invalid BPF object: two programs named `{}`", p.name);
        }
    }

    // Relocations, each applied to the section named by its sh_info.
    let symtab_index = symtab.section().0;
    let mut pending: Vec<Vec<(usize, RelocTarget)>> = vec![Vec::new(); code.len()];
    for s in sections.iter() {
        let sh_type = s.sh_type(endian);
        if sh_type != elf::SHT_REL && sh_type != elf::SHT_RELA {
            continue;
        }
        let target = s.sh_info(endian) as usize;
        let Some(&role) = roles.get(target) else {
            bail!("invalid BPF object: relocation section applies to missing section {target}");
        };
        let tname = names.get(target).map(String::as_str).unwrap_or("");
        let target_alloc = sections
            .section(object::SectionIndex(target))
            .map(|t| t.sh_flags(endian) & u64::from(elf::SHF_ALLOC) != 0)
            .unwrap_or(false);
        let ci = match role {
            Role::Code(ci) => ci,
            // .BTF*, .debug*, and anything else not loaded into memory.
            _ if !target_alloc || tname.starts_with(".BTF") || tname.starts_with(".debug") => {
                continue;
            }
            _ => bail!(
                "unsupported relocations in section `{tname}` (pointers in statics cannot be loaded)"
            ),
        };
        if sh_type == elf::SHT_RELA {
            bail!("unsupported RELA relocations for `{tname}` (BPF objects use REL)");
        }
        if s.sh_link(endian) as usize != symtab_index {
            bail!("invalid BPF object: relocations for `{tname}` do not use the symbol table");
        }
        let Some((rels, _)) = s.rel(endian, bytes).map_err(elf_err("relocations"))? else {
            continue;
        };
        let ctx = Ctx {
            code: &code,
            syms: &syms,
            roles: &roles,
            map_slots: &map_slots,
            maps: &maps,
        };
        for r in rels {
            let t = ctx.resolve(ci, r.r_offset(endian), r.r_sym(endian), r.r_type(endian))?;
            pending[ci].push(t);
        }
    }

    // pc-relative calls (inside one section, no relocation) and final checks.
    for (ci, mut relocs) in pending.into_iter().enumerate() {
        relocs.sort_by_key(|r| r.0);
        if let Some(w) = relocs.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!(
                "invalid BPF object: two relocations on instruction {} of `{}`",
                w[0].0,
                code[ci].name
            );
        }
        let relocated: HashMap<usize, RelocTarget> = relocs.into_iter().collect();
        let cs = &code[ci];
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
        code[ci].relocs = out;
    }

    Ok(ObjectSpec {
        license,
        maps,
        programs,
        code,
    })
}

/// `.text` and `.text.*` hold subprograms; every other code section is a program section.
fn is_subprog_section(name: &str) -> bool {
    name == ".text" || name.starts_with(".text.")
}

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

/// Byte offset -> instruction index, if aligned and addressable.
fn insn_index(bytes: u64) -> Option<usize> {
    bytes
        .is_multiple_of(insn::INSN_SIZE as u64)
        .then(|| usize::try_from(bytes / 8).ok())
        .flatten()
}

/// The function of `cs` starting exactly at instruction `target`.
fn func_at(cs: &CodeSection, target: i64) -> Option<usize> {
    let t = usize::try_from(target).ok()?;
    cs.funcs.binary_search_by_key(&t, |f| f.start).ok()
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
        let ins = cs.insns[pc];
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
        match r_type {
            R_BPF_64_64 => {
                if !ins.is_ld_imm64() {
                    bail!("invalid BPF object: R_BPF_64_64 at {here} is not on an ld_imm64");
                }
                if pc + 1 >= cs.insns.len() {
                    bail!("invalid BPF object: truncated ld_imm64 at {here}");
                }
                // REL: the addend is the instruction's current immediate.
                let addr = i128::from(y.value) + i128::from(ins.imm);
                let target = match role {
                    Role::Maps => {
                        let Some(slot) =
                            self.map_slots.iter().find(|m| i128::from(m.start) == addr)
                        else {
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
                };
                Ok((pc, target))
            }
            R_BPF_64_32 => {
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
                Ok((pc, RelocTarget::Call { code: tc, func }))
            }
            other => bail!("unsupported relocation type {other} at {here}"),
        }
    }
}
