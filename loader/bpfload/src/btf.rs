//! The minimal BTF the loader writes for each program.
//!
//! The verifier demands `func_info` as soon as a program has a callback
//! (`BPF_PSEUDO_FUNC`), and rustc's own BTF does not pass the kernel's
//! checks. So each program gets a tiny `.BTF` blob of its own:
//!
//! ```text
//! [1] INT 'int' size=4 bits=32 SIGNED
//! [2] PTR -> void
//! [3] FUNC_PROTO (ctx: [2]) -> [1]
//! [4..] FUNC '<name>' -> [3], linkage global (main) or static (everything else)
//! ```
//!
//! One prototype serves all functions: the verifier checks argument types of
//! global functions only, and only the main program is global. Callbacks must
//! be static ("callback function not static").

use crate::linker::{FuncInfo, LinkedProgram};
use crate::names::demangled_tail;
use std::collections::HashSet;

/// `struct btf_header.magic`.
const BTF_MAGIC: u16 = 0xeb9f;
/// `struct btf_header.version`.
const BTF_VERSION: u8 = 1;
/// `sizeof(struct btf_header)`.
const BTF_HEADER_LEN: u32 = 24;
/// BTF kinds used here (`BTF_KIND_*`).
const BTF_KIND_INT: u32 = 1;
/// `BTF_KIND_PTR`.
const BTF_KIND_PTR: u32 = 2;
/// `BTF_KIND_FUNC` (its vlen holds the linkage).
const BTF_KIND_FUNC: u32 = 12;
/// `BTF_KIND_FUNC_PROTO`.
const BTF_KIND_FUNC_PROTO: u32 = 13;
/// FUNC linkage of callbacks and subprograms.
const BTF_FUNC_STATIC: u32 = 0;
/// FUNC linkage of the main program.
const BTF_FUNC_GLOBAL: u32 = 1;
/// Size of one `struct bpf_func_info` record.
const FUNC_INFO_REC_SIZE: u32 = 8;
/// Type id of the first FUNC; the i-th function of a program is `FIRST_FUNC_TYPE_ID + i`.
const FIRST_FUNC_TYPE_ID: u32 = 4;
/// Kernels before 6.1 limit BTF names to `KSYM_NAME_LEN` = 128 (with the NUL).
const MAX_NAME_LEN: usize = 127;

/// BTF and `func_info` for one program's `BPF_PROG_LOAD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramBtf {
    /// A complete `.BTF` blob (header, types, strings) for `BPF_BTF_LOAD`.
    pub blob: Vec<u8>,
    /// Packed `struct bpf_func_info { u32 insn_off; u32 type_id; }` records.
    pub func_info: Vec<u8>,
    /// `sizeof(struct bpf_func_info)` = 8.
    pub func_info_rec_size: u32,
}

impl ProgramBtf {
    /// Number of `func_info` records.
    pub fn func_info_cnt(&self) -> u32 {
        (self.func_info.len() / FUNC_INFO_REC_SIZE as usize) as u32
    }
}

/// Builds the BTF and `func_info` for `prog` (one FUNC per `prog.funcs` entry, in order).
pub fn program_btf(prog: &LinkedProgram) -> ProgramBtf {
    funcs_btf(&prog.funcs)
}

/// Builds the BTF and `func_info` for a program made of `funcs` (the main
/// function first, at instruction 0), e.g. one assembled by hand.
pub fn funcs_btf(funcs: &[FuncInfo]) -> ProgramBtf {
    let mut strings = StringTable::default();
    let mut types = Vec::new();
    let mut put = |words: &[u32]| {
        for w in words {
            types.extend_from_slice(&w.to_le_bytes());
        }
    };
    let int_name = strings.add("int");
    put(&[int_name, BTF_KIND_INT << 24, 4, (1 << 24) | 32]);
    put(&[0, BTF_KIND_PTR << 24, 0]);
    let ctx_name = strings.add("ctx");
    put(&[0, (BTF_KIND_FUNC_PROTO << 24) | 1, 1, ctx_name, 2]);

    let mut used = HashSet::new();
    let mut func_info = Vec::with_capacity(funcs.len() * FUNC_INFO_REC_SIZE as usize);
    for (i, f) in funcs.iter().enumerate() {
        let name = unique_name(&sanitize_name(demangled_tail(&f.name)), &mut used);
        let off = strings.add(&name);
        let linkage = if f.is_main {
            BTF_FUNC_GLOBAL
        } else {
            BTF_FUNC_STATIC
        };
        put(&[off, (BTF_KIND_FUNC << 24) | linkage, 3]);
        let type_id = FIRST_FUNC_TYPE_ID + i as u32;
        func_info.extend_from_slice(&f.insn_off.to_le_bytes());
        func_info.extend_from_slice(&type_id.to_le_bytes());
    }

    let strs = strings.bytes;
    let mut blob = Vec::with_capacity(BTF_HEADER_LEN as usize + types.len() + strs.len());
    blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
    blob.push(BTF_VERSION);
    blob.push(0); // flags
    for w in [
        BTF_HEADER_LEN,
        0,
        types.len() as u32,
        types.len() as u32,
        strs.len() as u32,
    ] {
        blob.extend_from_slice(&w.to_le_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&strs);
    ProgramBtf {
        blob,
        func_info,
        func_info_rec_size: FUNC_INFO_REC_SIZE,
    }
}

/// A valid C identifier (what the kernel's BTF name check accepts): invalid
/// characters become `_`, a leading digit gets a `_` prefix, cut to 127
/// bytes (kernels before 6.1 allow no more).
pub fn sanitize_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s.truncate(MAX_NAME_LEN);
    s
}

/// `name`, or `name_2`, `name_3`, ... if already used (all within [`MAX_NAME_LEN`]).
fn unique_name(name: &str, used: &mut HashSet<String>) -> String {
    let mut candidate = name.to_string();
    let mut n = 2u32;
    while !used.insert(candidate.clone()) {
        let suffix = format!("_{n}");
        let mut base = name.to_string();
        base.truncate(MAX_NAME_LEN - suffix.len());
        candidate = base + &suffix;
        n += 1;
    }
    candidate
}

/// The BTF string section: starts with the empty string, every string NUL-terminated.
struct StringTable {
    bytes: Vec<u8>,
}

impl Default for StringTable {
    fn default() -> Self {
        Self { bytes: vec![0] }
    }
}

impl StringTable {
    fn add(&mut self, s: &str) -> u32 {
        let off = self.bytes.len() as u32;
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        off
    }
}
