//! ELF bytes -> [`ObjectSpec`]: maps, programs, code and resolved relocations.
//!
//! Pure: no system calls, no `unsafe`. Every size and offset read from the
//! file is checked, so that any input yields `Err`, never a panic and never
//! an allocation larger than the input itself.
//!
//! Relocations are resolved here, once, into [`RelocTarget`]s; the linker
//! then only lays out functions and patches instructions.
//!
//! Every `.data*`, `.rodata*` and `.bss*` section becomes its own global-data
//! map (so `.rodata` and `.rodata.str1.1` are two maps): merging them would
//! need offsets rewritten across sections for no gain.
//!
//! [`parse`] runs phases over one parser state, each in its own file, in this
//! order: the ELF header (`header`), the symbol table (`symbols`), what each
//! section is (`sections`), the legacy map definitions (`legacy_maps`), the
//! functions of each code section (`functions`), the programs (`programs`),
//! the relocations (`relocs`) and the pc-relative calls (`calls`).

mod calls;
mod functions;
mod header;
mod legacy_maps;
mod programs;
mod relocs;
mod sections;
mod symbols;

use crate::insn::{self, Insn};
use crate::names;
use crate::sys::{BPF_F_RDONLY_PROG, BPF_MAP_TYPE_ARRAY};
use crate::{Error, Result};
use object::LittleEndian as LE;
use object::elf;
use object::read::elf::{FileHeader, SectionTable};
use symbols::SymInfo;

type Elf = elf::FileHeader64<LE>;

/// Size of the legacy `struct bpf_map_def` prefix the loader reads.
const MAP_DEF_SIZE: u64 = 20;

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
    /// last path component, then only `[A-Za-z0-9_.]` kept (others dropped), at
    /// most 15 bytes: the kernel's rule for object names.
    pub fn kernel_name(&self) -> String {
        names::kernel_name(names::demangled_tail(&self.name))
    }
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
                (names::valid_tracepoint_part(category) && names::valid_tracepoint_part(name)).then(
                    || Self::Tracepoint {
                        category: category.to_string(),
                        name: name.to_string(),
                    },
                )
            }
            "raw_tracepoint" | "raw_tp" => {
                names::valid_tracepoint_part(rest).then(|| Self::RawTracepoint {
                    name: rest.to_string(),
                })
            }
            _ => None,
        }
    }
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

/// One instruction of a code section that the linker must patch.
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

/// Everything the linker and `load` need from the object.
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
    /// Index of the map called `name`: the exact name, else the first map
    /// whose demangled name is `name` (as [`crate::load::Loaded::map`] finds maps).
    pub fn map_index(&self, name: &str) -> Option<usize> {
        names::find(self.maps.iter().map(|m| m.name.as_str()), name)
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

/// Parses a relocatable little-endian 64-bit BPF ELF object.
pub fn parse(bytes: &[u8]) -> Result<ObjectSpec> {
    aligned(bytes, parse_aligned)
}

/// Runs `f` on `bytes` at an 8-byte aligned address: the object crate reads
/// ELF structures in place and needs that; `include_bytes!` data is not.
fn aligned<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if !(bytes.as_ptr() as usize).is_multiple_of(8) {
        let mut buf = vec![0u8; bytes.len() + 8];
        let skip = (buf.as_ptr() as usize).wrapping_neg() % 8;
        buf[skip..skip + bytes.len()].copy_from_slice(bytes);
        return f(&buf[skip..skip + bytes.len()]);
    }
    f(bytes)
}

fn parse_aligned(bytes: &[u8]) -> Result<ObjectSpec> {
    let mut p = Parser::through_programs(bytes)?;
    let pending = p.relocations()?;
    p.calls(pending)?;
    Ok(p.into_spec())
}

/// What a section turned into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Code(usize),
    Maps,
    Data(usize),
    Other,
}

/// A legacy map definition's place in the `maps` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapSlot {
    start: u64,
    map: usize,
}

/// The state the phases share: the file as the header phase opened it, and
/// what each phase adds for the next ones.
struct Parser<'a> {
    bytes: &'a [u8],
    endian: LE,
    sections: SectionTable<'a, Elf>,
    /// Section index of the symbol table (relocation sections must link to it).
    symtab_index: usize,
    syms: Vec<SymInfo>,
    /// Section names, by section index.
    names: Vec<String>,
    /// What each section is, by section index.
    roles: Vec<Role>,
    /// Section index of the legacy `maps` section.
    maps_section: Option<usize>,
    license: String,
    /// Global-data maps, then legacy maps.
    maps: Vec<MapSpec>,
    map_slots: Vec<MapSlot>,
    code: Vec<CodeSection>,
    programs: Vec<ProgramSpec>,
}

impl<'a> Parser<'a> {
    /// The header, symbol and section-name phases: everything later phases look up.
    fn open(bytes: &'a [u8]) -> Result<Self> {
        let (hdr, endian) = header::parse_header(bytes)?;
        let sections = hdr
            .sections(endian, bytes)
            .map_err(elf_err("section headers"))?;
        let symtab = sections
            .symbols(endian, bytes, elf::SHT_SYMTAB)
            .map_err(elf_err("symbol table"))?;
        let syms = symbols::read_symbols(endian, &symtab)?;
        let names = sections::section_names(endian, &sections)?;
        Ok(Self {
            bytes,
            endian,
            sections,
            symtab_index: symtab.section().0,
            syms,
            roles: vec![Role::Other; names.len()],
            names,
            maps_section: None,
            license: String::new(),
            maps: Vec::new(),
            map_slots: Vec::new(),
            code: Vec::new(),
            programs: Vec::new(),
        })
    }

    /// Every phase up to the programs: what the relocations are resolved against.
    fn through_programs(bytes: &'a [u8]) -> Result<Self> {
        let mut p = Self::open(bytes)?;
        p.sections()?;
        p.legacy_maps()?;
        p.functions()?;
        p.programs()?;
        Ok(p)
    }

    fn into_spec(self) -> ObjectSpec {
        ObjectSpec {
            license: self.license,
            maps: self.maps,
            programs: self.programs,
            code: self.code,
        }
    }

    /// The name of section `i`, empty if it has none.
    fn name(&self, i: usize) -> &str {
        self.names.get(i).map(String::as_str).unwrap_or("")
    }
}

fn elf_err(what: &str) -> impl Fn(object::read::Error) -> Error + '_ {
    move |e| Error::new(format!("invalid BPF object: {what}: {e}"))
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

#[cfg(test)]
mod test_util;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insn::asm;

    #[test]
    fn insn_index_needs_alignment() {
        assert_eq!(insn_index(0), Some(0));
        assert_eq!(insn_index(16), Some(2));
        assert_eq!(insn_index(12), None);
        assert_eq!(insn_index(u64::MAX), None);
    }

    #[test]
    fn func_at_finds_only_starts() {
        let cs =
            test_util::code_section(".text", vec![asm::exit(); 4], &[("a", 0, 2), ("b", 2, 4)]);
        assert_eq!(func_at(&cs, 0), Some(0));
        assert_eq!(func_at(&cs, 2), Some(1));
        assert_eq!(func_at(&cs, 1), None);
        assert_eq!(func_at(&cs, -1), None);
        assert_eq!(func_at(&cs, 4), None);
    }

    #[test]
    fn aligned_hands_over_the_same_bytes_at_an_aligned_address() {
        let buf = [7u8; 33];
        for start in 0..8 {
            let slice = &buf[start..start + 25];
            aligned(slice, |b| {
                assert_eq!(b, slice);
                assert!((b.as_ptr() as usize).is_multiple_of(8));
            });
        }
    }

    fn map(name: &str) -> MapSpec {
        MapSpec {
            name: name.to_string(),
            kind: MapKind::Legacy,
            map_type: 2,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            flags: 0,
            initial: None,
        }
    }

    #[test]
    fn map_lookup_exact_then_demangled() {
        let spec = ObjectSpec {
            license: "GPL".into(),
            maps: ["_RNvCs1_1p6COUNTS", "COUNTS_2", ".data"].map(map).to_vec(),
            programs: Vec::new(),
            code: Vec::new(),
        };
        assert_eq!(spec.map_index("COUNTS"), Some(0));
        assert_eq!(spec.map_index("_RNvCs1_1p6COUNTS"), Some(0));
        assert_eq!(spec.map_index(".data"), Some(2));
        assert_eq!(spec.map_index("COUNTS_"), None);
        assert_eq!(spec.maps[0].kernel_name(), "COUNTS");
    }

    #[test]
    fn kernel_names_of_maps() {
        let m = map;
        assert_eq!(m(".rodata.str1.1").kernel_name(), ".rodata.str1.1");
        assert_eq!(m("_RNvCs1_1p7a_b_c_d").kernel_name(), "a_b_c_d");
        assert_eq!(m("a-b:c").kernel_name(), "abc");
        assert_eq!(
            m("abcdefghijklmnopqrstuvwxyz").kernel_name(),
            "abcdefghijklmno"
        );
    }

    #[test]
    fn whole_parse_of_a_minimal_object() {
        let bytes = test_util::object(|o| {
            let s = test_util::code(
                o,
                "tp/sched/sched_switch",
                &[asm::mov64_imm(0, 0), asm::exit()],
            );
            test_util::symbol(o, "prog", s, (0, 16), object::SymbolKind::Text, true);
        });
        let spec = parse(&bytes).unwrap();
        assert_eq!(spec.license, "GPL");
        assert_eq!(spec.program_names(), ["prog"]);
        assert_eq!(
            spec.program("prog").unwrap().section,
            "tp/sched/sched_switch"
        );
        assert!(spec.program("nope").is_none());
        assert!(spec.code[0].relocs.is_empty());
    }
}
