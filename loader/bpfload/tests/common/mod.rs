//! Shared test helpers: a builder for hand-made BPF ELF objects in the shapes
//! rustc emits, byte patching of relocations, and generic invariant checks
//! on linked programs and their BTF.
//!
//! The application's loader tests (loader/tests, which check the real probe
//! object) include this file too (`#[path]`), so the invariants are written once.
#![allow(dead_code)]

use bpfload::btf::{self, ProgramBtf};
use bpfload::insn::{self, Insn, asm};
use bpfload::linker::{LinkedProgram, MapRefKind};
use bpfload::obj::ObjectSpec;
use object::write::{Object, Relocation, SectionId, Symbol, SymbolId, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, Object as _, ObjectSection, ObjectSymbol,
    RelocationFlags, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};

/// Kernel tests fail loudly without root rather than pass silently.
pub fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (bpf(2), perf_event_open(2), tracefs); CI runs them as root"
    );
}

/// Every id `next` enumerates (`sys::prog_get_next_id`, ...), in order.
pub fn all_ids(next: fn(u32) -> bpfload::Result<Option<u32>>) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut cur = 0;
    while let Some(n) = next(cur).unwrap() {
        ids.push(n);
        cur = n;
    }
    ids
}

pub const R_BPF_64_64: u32 = 1;
pub const R_BPF_64_32: u32 = 10;

/// The rustc-built object with maps, global data, a bpf_loop callback and
/// subprograms (source: fixtures/rich_probe.rs).
pub static RUSTC_FIXTURE: &[u8] = include_bytes!("../fixtures/rich_probe.o");

pub fn ld_imm64(dst: u8, imm: i32) -> [Insn; 2] {
    [
        Insn::new(insn::LD_IMM64, dst, 0, 0, imm),
        Insn::new(0, 0, 0, 0, 0),
    ]
}

/// A bpf-to-bpf call as LLVM writes it (`src_reg` = 1).
pub fn call_rel(imm: i32) -> Insn {
    Insn::new(insn::CALL, 0, insn::PSEUDO_CALL, 0, imm)
}

pub fn bytes_of(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

/// A `bpf_map_def` as the probes lay it out.
pub fn map_def(t: u32, k: u32, v: u32, m: u32, f: u32) -> Vec<u8> {
    [t, k, v, m, f]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

/// Thin wrapper over `object::write::Object` for BPF objects.
pub struct Elf {
    pub obj: Object<'static>,
}

impl Default for Elf {
    fn default() -> Self {
        Self::new()
    }
}

impl Elf {
    pub fn new() -> Self {
        Self {
            obj: Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little),
        }
    }

    pub fn section(&mut self, name: &str, kind: SectionKind, data: &[u8], align: u64) -> SectionId {
        let id = self
            .obj
            .add_section(Vec::new(), name.as_bytes().to_vec(), kind);
        self.obj.append_section_data(id, data, align);
        id
    }

    pub fn code(&mut self, name: &str, insns: &[Insn]) -> SectionId {
        self.section(name, SectionKind::Text, &bytes_of(insns), 8)
    }

    pub fn bss(&mut self, name: &str, size: u64) -> SectionId {
        let id = self.obj.add_section(
            Vec::new(),
            name.as_bytes().to_vec(),
            SectionKind::UninitializedData,
        );
        self.obj.section_mut(id).append_bss(size, 8);
        id
    }

    pub fn license(&mut self, text: &[u8]) -> SectionId {
        self.section("license", SectionKind::ReadOnlyData, text, 1)
    }

    pub fn symbol(
        &mut self,
        name: &str,
        section: SectionId,
        value: u64,
        size: u64,
        kind: SymbolKind,
        global: bool,
    ) -> SymbolId {
        self.obj.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value,
            size,
            kind,
            scope: if global {
                SymbolScope::Dynamic
            } else {
                SymbolScope::Compilation
            },
            weak: false,
            section: SymbolSection::Section(section),
            flags: SymbolFlags::None,
        })
    }

    /// A FUNC symbol covering instructions `start..start + len`.
    pub fn func(
        &mut self,
        name: &str,
        section: SectionId,
        start: u64,
        len: u64,
        global: bool,
    ) -> SymbolId {
        self.symbol(name, section, start * 8, len * 8, SymbolKind::Text, global)
    }

    pub fn object(&mut self, name: &str, section: SectionId, value: u64, size: u64) -> SymbolId {
        self.symbol(name, section, value, size, SymbolKind::Data, true)
    }

    pub fn undefined(&mut self, name: &str) -> SymbolId {
        self.obj.add_symbol(Symbol {
            name: name.as_bytes().to_vec(),
            value: 0,
            size: 0,
            kind: SymbolKind::Unknown,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Undefined,
            flags: SymbolFlags::None,
        })
    }

    pub fn section_symbol(&mut self, section: SectionId) -> SymbolId {
        self.obj.section_symbol(section)
    }

    /// A REL relocation at instruction `insn_index`; the addend stays in the instruction.
    pub fn reloc(&mut self, section: SectionId, insn_index: u64, symbol: SymbolId, r_type: u32) {
        self.obj
            .add_relocation(
                section,
                Relocation {
                    offset: insn_index * 8,
                    symbol,
                    addend: 0,
                    flags: RelocationFlags::Elf { r_type },
                },
            )
            .expect("add relocation");
    }

    pub fn finish(self) -> Vec<u8> {
        self.obj.write().expect("write ELF")
    }
}

/// Layout of [`rich_object`] (instruction indices within `.text`).
pub mod rich {
    pub const CB: usize = 0;
    pub const HELPER: usize = 5;
    pub const DEAD_PANIC: usize = 9;
    pub const SHARED: usize = 10;
    pub const TEXT_LEN: usize = 13;
    pub const OPENAT_LEN: usize = 13;
}

/// A hand-made object with every relocation case the loader handles (map
/// symbol, `maps` section symbol + offset, data symbol, data section symbol +
/// offset, callback address, relocated and pc-relative calls):
///
/// ```text
/// .text:  cb      0: ld_imm64 COUNTER (symbol)        -> .data value +0
///                 2: call +2 (pc-relative, no reloc)  -> helper
///                 3: r0 = 0; 4: exit
///         helper  5: ld_imm64 .bss+8 (section sym)    -> .bss value +8
///                 7: call +2 (pc-relative)            -> shared
///                 8: exit
///         dead_panic 9: goto -1 (unreachable)
///         shared 10: ld_imm64 .rodata.str1.1+3        -> value +3
///                12: exit
/// tracepoint/syscalls/sys_enter_openat: on_openat
///   0: ld_imm64 MAP_A (symbol)            -> fd
///   2: ld_imm64 maps+20 (section symbol)  -> fd of MAP_B
///   4: ld_imm64 CONST_B+4 (CONST_B at 8)  -> .rodata value +12
///   6: ld_imm64 .text+0 (section symbol)  -> PSEUDO_FUNC cb
///   8: call 181 (bpf_loop helper)
///   9: call .text imm=4 (R_BPF_64_32)     -> helper
///  10: call helper imm=-1 (R_BPF_64_32 against the function symbol) -> helper
///  11: r0 = 0; 12: exit
/// raw_tracepoint/sched_switch: on_switch: call shared (symbol, imm -1); r0 = 0; exit
/// tp/syscalls/sys_enter_access: on_access: r0 = 0; exit
/// maps: MAP_A (20 bytes, hash), MAP_B (24 bytes, ringbuf)
/// .data: COUNTER (8), .rodata: CONST_A (0..8), CONST_B (8..16), .rodata.str1.1: "hi\0abc\0", .bss: 32 bytes
/// ```
pub fn rich_object() -> Vec<u8> {
    let mut e = Elf::new();
    let mut text = Vec::new();
    text.extend(ld_imm64(1, 0));
    text.push(call_rel(2));
    text.push(asm::mov64_imm(0, 0));
    text.push(asm::exit());
    text.extend(ld_imm64(2, 8));
    text.push(call_rel(2));
    text.push(asm::exit());
    text.push(Insn::new(0x05, 0, 0, -1, 0));
    text.extend(ld_imm64(1, 3));
    text.push(asm::exit());
    assert_eq!(text.len(), rich::TEXT_LEN);
    let t = e.code(".text", &text);
    let cb = e.func("_RNvCs12jkoC9p3aE_5probe2cb", t, 0, 5, false);
    let helper = e.func("_RNvCs12jkoC9p3aE_5probe6helper", t, 5, 4, false);
    e.func(
        "_RNvCsfLfy6EI15iL_7___rustc17rust_begin_unwind",
        t,
        9,
        1,
        true,
    );
    let shared = e.func("shared", t, 10, 3, false);
    let _ = cb;

    let mut p = Vec::new();
    p.extend(ld_imm64(1, 0));
    p.extend(ld_imm64(1, 20));
    p.extend(ld_imm64(2, 4));
    p.extend(ld_imm64(2, 0));
    p.push(asm::call_helper(181));
    p.push(call_rel(4));
    p.push(call_rel(-1));
    p.push(asm::mov64_imm(0, 0));
    p.push(asm::exit());
    assert_eq!(p.len(), rich::OPENAT_LEN);
    let openat = e.code("tracepoint/syscalls/sys_enter_openat", &p);
    e.func("on_openat", openat, 0, p.len() as u64, true);

    let sw = e.code(
        "raw_tracepoint/sched_switch",
        &[call_rel(-1), asm::mov64_imm(0, 0), asm::exit()],
    );
    e.func("on_switch", sw, 0, 3, true);
    let acc = e.code(
        "tp/syscalls/sys_enter_access",
        &[asm::mov64_imm(0, 0), asm::exit()],
    );
    e.func("on_access", acc, 0, 2, true);

    e.license(b"GPL\0");
    let mut maps = map_def(1, 4, 8, 128, 0);
    maps.extend(map_def(27, 0, 0, 4096, 0));
    maps.extend(7u32.to_le_bytes());
    let m = e.section("maps", SectionKind::ReadOnlyData, &maps, 4);
    let map_a = e.object("MAP_A", m, 0, 20);
    e.object("MAP_B", m, 20, 24);
    let data = e.section(".data", SectionKind::Data, &5u64.to_le_bytes(), 8);
    let counter = e.object("COUNTER", data, 0, 8);
    let mut ro = 1u64.to_le_bytes().to_vec();
    ro.extend(2u64.to_le_bytes());
    let rodata = e.section(".rodata", SectionKind::ReadOnlyData, &ro, 8);
    e.object("CONST_A", rodata, 0, 8);
    let const_b = e.object("CONST_B", rodata, 8, 8);
    let strs = e.section(
        ".rodata.str1.1",
        SectionKind::ReadOnlyString,
        b"hi\0abc\0",
        1,
    );
    let bss = e.bss(".bss", 32);
    e.object("ZEROED", bss, 0, 32);

    let bss_sym = e.section_symbol(bss);
    let strs_sym = e.section_symbol(strs);
    let maps_sym = e.section_symbol(m);
    let text_sym = e.section_symbol(t);
    e.reloc(t, 0, counter, R_BPF_64_64);
    e.reloc(t, 5, bss_sym, R_BPF_64_64);
    e.reloc(t, 10, strs_sym, R_BPF_64_64);
    e.reloc(openat, 0, map_a, R_BPF_64_64);
    e.reloc(openat, 2, maps_sym, R_BPF_64_64);
    e.reloc(openat, 4, const_b, R_BPF_64_64);
    e.reloc(openat, 6, text_sym, R_BPF_64_64);
    e.reloc(openat, 9, text_sym, R_BPF_64_32);
    e.reloc(openat, 10, helper, R_BPF_64_32);
    e.reloc(sw, 0, shared, R_BPF_64_32);
    e.finish()
}

/// File offsets of the relocation entries that apply to section `target`.
pub fn reloc_entries(bytes: &[u8], target: &str) -> Vec<usize> {
    use object::read::elf::{ElfFile64, SectionHeader};
    let f = ElfFile64::<Endianness>::parse(bytes).expect("parse");
    let endian = f.endian();
    let sections = f.elf_section_table();
    let want = sections
        .iter()
        .position(|s| sections.section_name(endian, s).ok() == Some(target.as_bytes()))
        .expect("target section");
    let mut out = Vec::new();
    for s in sections.iter() {
        if s.sh_type(endian) == object::elf::SHT_REL && s.sh_info(endian) as usize == want {
            let off = s.sh_offset(endian) as usize;
            let n = s.sh_size(endian) as usize / 16;
            out.extend((0..n).map(|i| off + i * 16));
        }
    }
    out
}

/// File offset of section `name`'s header.
pub fn section_header(bytes: &[u8], name: &str) -> usize {
    use object::read::elf::{ElfFile64, FileHeader};
    let f = ElfFile64::<Endianness>::parse(bytes).expect("parse");
    let endian = f.endian();
    let sections = f.elf_section_table();
    let idx = sections
        .iter()
        .position(|s| sections.section_name(endian, s).ok() == Some(name.as_bytes()))
        .expect("section");
    f.elf_header().e_shoff(endian) as usize + idx * 64
}

pub fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

pub fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Invariants every successfully linked program must satisfy, whatever the input.
pub fn check_linked(spec: &ObjectSpec, p: &LinkedProgram) {
    let n = p.insns.len();
    assert!(n > 0, "{}: empty", p.name);
    assert!(
        !p.funcs.is_empty() && p.funcs[0].insn_off == 0 && p.funcs[0].is_main,
        "{}: main first",
        p.name
    );
    assert!(
        p.funcs[1..].iter().all(|f| !f.is_main),
        "{}: one main",
        p.name
    );
    assert!(
        p.funcs.windows(2).all(|w| w[0].insn_off < w[1].insn_off),
        "{}: funcs strictly increasing",
        p.name
    );
    assert!(
        p.funcs.iter().all(|f| (f.insn_off as usize) < n),
        "{}: func off in range",
        p.name
    );
    let starts: Vec<i64> = p.funcs.iter().map(|f| f.insn_off as i64).collect();
    let mut pc = 0;
    while pc < n {
        let i = p.insns[pc];
        if i.is_pseudo_call() {
            let t = pc as i64 + i.imm as i64 + 1;
            assert!(
                t >= 0 && (t as usize) < n,
                "{}: call at {pc} out of range ({t})",
                p.name
            );
            assert!(
                starts.contains(&t),
                "{}: call at {pc} to {t} is not a function start",
                p.name
            );
        }
        if i.is_ld_imm64() {
            assert!(pc + 1 < n, "{}: truncated ld_imm64", p.name);
            if i.src() == insn::PSEUDO_FUNC {
                let t = pc as i64 + i.imm as i64 + 1;
                assert!(
                    starts.contains(&t),
                    "{}: callback at {pc} to {t} is not a function start",
                    p.name
                );
            }
            pc += 2;
        } else {
            pc += 1;
        }
    }
    for r in &p.map_refs {
        assert!(r.map < spec.maps.len());
        let i = p.insns[r.insn];
        assert!(
            i.is_ld_imm64(),
            "{}: map ref at {} not ld_imm64",
            p.name,
            r.insn
        );
        match r.kind {
            MapRefKind::Fd => assert_eq!(i.src(), insn::PSEUDO_MAP_FD),
            MapRefKind::Value { offset } => {
                assert_eq!(i.src(), insn::PSEUDO_MAP_VALUE);
                assert!(offset < spec.maps[r.map].value_size);
                assert_eq!(p.insns[r.insn + 1].imm, offset as i32);
            }
        }
    }
    let b = btf::program_btf(p);
    check_btf(&b, p);
}

/// Independent cross-check with the object crate: every `ld_imm64` that carries
/// a relocation in the ELF has a non-zero src_reg in the linked stream.
pub fn relocated_ld_imm64_all_marked(bytes: &[u8], progs: &[LinkedProgram]) {
    let owned = bytes.to_vec(); // object reads in place: needs alignment
    let file = object::File::parse(&*owned).unwrap();
    for p in progs {
        for f in &p.funcs {
            let sym = file
                .symbols()
                .find(|s| s.name() == Ok(f.name.as_str()) && s.kind() == SymbolKind::Text);
            let Some(sym) = sym else { continue };
            let section = file.section_by_index(sym.section_index().unwrap()).unwrap();
            let (lo, hi) = (sym.address(), sym.address() + sym.size());
            for (off, _) in section.relocations() {
                if off < lo || off >= hi {
                    continue;
                }
                let idx = f.insn_off as usize + ((off - lo) / 8) as usize;
                let i = p.insns[idx];
                if i.is_ld_imm64() {
                    assert_ne!(
                        i.src(),
                        0,
                        "{}: relocated ld_imm64 at {idx} left unmarked",
                        p.name
                    );
                    let is_map = p.map_refs.iter().any(|r| r.insn == idx);
                    assert_eq!(is_map, i.src() != insn::PSEUDO_FUNC);
                } else {
                    assert!(
                        i.is_pseudo_call(),
                        "{}: relocation at {idx} on {i:?}",
                        p.name
                    );
                }
            }
        }
    }
}

/// A decoded FUNC of our BTF.
#[derive(Debug, PartialEq, Eq)]
pub struct BtfFunc {
    pub name: String,
    pub linkage: u32,
    pub proto: u32,
}

/// Decodes and validates the blob the way the kernel would (header, kinds,
/// names valid C identifiers, string table) and returns its FUNCs.
pub fn decode_btf(blob: &[u8]) -> Vec<BtfFunc> {
    let u16_at = |o: usize| u16::from_le_bytes(blob[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(blob[o..o + 4].try_into().unwrap());
    assert_eq!(u16_at(0), 0xeb9f);
    assert_eq!(blob[2], 1);
    assert_eq!(blob[3], 0);
    let hdr = u32_at(4) as usize;
    assert_eq!(hdr, 24);
    let (toff, tlen, soff, slen) = (
        u32_at(8) as usize,
        u32_at(12) as usize,
        u32_at(16) as usize,
        u32_at(20) as usize,
    );
    assert_eq!(toff, 0);
    assert_eq!(soff, tlen);
    assert_eq!(hdr + soff + slen, blob.len());
    let strs = &blob[hdr + soff..];
    assert_eq!(strs.first(), Some(&0));
    assert_eq!(strs.last(), Some(&0));
    let name = |off: u32| -> String {
        let s = &strs[off as usize..];
        let end = s.iter().position(|&b| b == 0).unwrap();
        String::from_utf8(s[..end].to_vec()).unwrap()
    };
    let mut o = hdr + toff;
    let end = hdr + toff + tlen;
    let mut kinds = vec![0u32]; // id 0 = void
    let mut funcs = Vec::new();
    while o < end {
        let (name_off, info, st) = (u32_at(o), u32_at(o + 4), u32_at(o + 8));
        let kind = (info >> 24) & 0x1f;
        let vlen = info & 0xffff;
        o += 12;
        match kind {
            1 => {
                assert_eq!(name(name_off), "int");
                assert_eq!(st, 4);
                assert_eq!(u32_at(o), (1 << 24) | 32);
                o += 4;
            }
            2 => assert_eq!(st, 0),
            13 => {
                assert_eq!(kinds[st as usize], 1, "proto returns int");
                for _ in 0..vlen {
                    let ty = u32_at(o + 4);
                    assert!(ty != 0 && (ty as usize) < kinds.len());
                    o += 8;
                }
            }
            12 => {
                let n = name(name_off);
                assert!(valid_c_ident(&n), "bad BTF name {n:?}");
                assert!(n.len() < 128);
                assert_eq!(kinds[st as usize], 13, "func -> proto");
                funcs.push(BtfFunc {
                    name: n,
                    linkage: vlen,
                    proto: st,
                });
            }
            k => panic!("unexpected BTF kind {k}"),
        }
        kinds.push(kind);
    }
    assert_eq!(o, end);
    funcs
}

pub fn valid_c_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

pub fn check_btf(b: &ProgramBtf, p: &LinkedProgram) {
    assert_eq!(b.func_info_rec_size, 8);
    let funcs = decode_btf(&b.blob);
    assert_eq!(funcs.len(), p.funcs.len());
    assert_eq!(b.func_info.len(), 8 * p.funcs.len());
    let mut names: Vec<&str> = funcs.iter().map(|f| f.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), funcs.len(), "BTF names unique");
    for (k, (f, rec)) in funcs.iter().zip(b.func_info.chunks_exact(8)).enumerate() {
        let off = u32::from_le_bytes(rec[..4].try_into().unwrap());
        let ty = u32::from_le_bytes(rec[4..].try_into().unwrap());
        assert_eq!(off, p.funcs[k].insn_off);
        assert_eq!(ty, 4 + k as u32);
        assert_eq!(f.linkage, if p.funcs[k].is_main { 1 } else { 0 });
    }
}

/// Deterministic xorshift64* PRNG.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}
