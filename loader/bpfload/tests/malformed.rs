//! Malformed objects: each must give a clear `Err`, never a panic.

mod common;

use bpfload::insn::{Insn, asm};
use bpfload::{linker, obj};
use common::*;
use object::SectionKind;
use object::write::SectionId;

/// parse + link must fail; returns the message.
fn err(bytes: &[u8]) -> String {
    match obj::parse(bytes).and_then(|s| linker::link(&s)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.msg,
    }
}

fn assert_err(bytes: &[u8], needle: &str) {
    let msg = err(bytes);
    assert!(
        msg.contains(needle),
        "error {msg:?} does not mention {needle:?}"
    );
}

/// One program section + `.text` + license, ready for a tweak.
fn base(prog: &[Insn], text: &[Insn]) -> (Elf, SectionId, SectionId) {
    let mut e = Elf::new();
    let p = e.code("tracepoint/syscalls/sys_enter_openat", prog);
    e.func("prog", p, 0, prog.len() as u64, true);
    let t = e.code(".text", text);
    if !text.is_empty() {
        e.func("sub", t, 0, text.len() as u64, false);
    }
    e.license(b"GPL\0");
    (e, p, t)
}

#[test]
fn empty_short_and_garbage_input() {
    assert_err(&[], "too short");
    assert_err(&[0x7f, b'E', b'L', b'F'], "too short");
    assert_err(&[0u8; 64], "not an ELF");
    let mut x = 0x1234_5678_9abc_def0u64;
    let garbage: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    err(&garbage);
    let mut elfish = garbage.clone();
    elfish[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
    err(&elfish);
}

#[test]
fn every_truncation_of_a_valid_object_fails() {
    for bytes in [rich_object(), RUSTC_FIXTURE.to_vec()] {
        for len in 0..bytes.len() {
            assert!(
                obj::parse(&bytes[..len]).is_err(),
                "truncated to {len} parsed"
            );
        }
        assert!(obj::parse(&bytes).is_ok());
    }
}

#[test]
fn wrong_machine_class_endianness_type() {
    let mut e = object::write::Object::new(
        object::BinaryFormat::Elf,
        object::Architecture::X86_64,
        object::Endianness::Little,
    );
    let s = e.add_section(Vec::new(), b"license".to_vec(), SectionKind::ReadOnlyData);
    e.append_section_data(s, b"GPL\0", 1);
    assert_err(&e.write().unwrap(), "EM_BPF");

    let mut e32 = object::write::Object::new(
        object::BinaryFormat::Elf,
        object::Architecture::I386,
        object::Endianness::Little,
    );
    let s = e32.add_section(Vec::new(), b"license".to_vec(), SectionKind::ReadOnlyData);
    e32.append_section_data(s, b"GPL\0", 1);
    assert_err(&e32.write().unwrap(), "64-bit");

    let good = rich_object();
    let mut b = good.clone();
    b[4] = 1; // ELFCLASS32
    assert_err(&b, "64-bit");
    let mut b = good.clone();
    b[5] = 2; // ELFDATA2MSB
    assert_err(&b, "little-endian");
    let mut b = good.clone();
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    assert_err(&b, "e_machine is 62");
    let mut b = good.clone();
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    assert_err(&b, "relocatable");
}

#[test]
fn relocation_to_missing_symbol() {
    let good = rich_object();
    let ents = reloc_entries(&good, "tracepoint/syscalls/sys_enter_openat");
    let mut b = good.clone();
    let info = get_u64(&b, ents[0] + 8);
    put_u64(&mut b, ents[0] + 8, (9999 << 32) | (info & 0xffff_ffff));
    assert_err(&b, "missing symbol #9999");
    let mut b = good.clone();
    put_u64(&mut b, ents[0] + 8, info & 0xffff_ffff);
    assert_err(&b, "missing symbol #0");
}

#[test]
fn relocation_against_undefined_symbol_names_it() {
    let (mut e, p, _) = base(&[asm::mov64_imm(0, 0), call_rel(-1), asm::exit()], &[]);
    let u = e.undefined("memcpy");
    e.reloc(p, 1, u, R_BPF_64_32);
    assert_err(&e.finish(), "undefined symbol `memcpy`");
}

#[test]
fn map_definition_too_small_or_outside() {
    let mk = |size: u64, value: u64| {
        let (mut e, _, _) = base(&[asm::exit()], &[]);
        let m = e.section(
            "maps",
            SectionKind::ReadOnlyData,
            &map_def(1, 4, 4, 1, 0),
            4,
        );
        e.object("SMALL", m, value, size);
        e.finish()
    };
    assert_err(&mk(16, 0), "map `SMALL` definition is 16 bytes");
    assert_err(&mk(20, 4), "outside the maps section");
    assert_err(&mk(u64::MAX, 0), "outside the maps section");
    assert_err(&mk(20, u64::MAX - 3), "outside the maps section");
    assert!(obj::parse(&mk(20, 0)).is_ok());
}

#[test]
fn overlapping_and_duplicate_maps() {
    let (mut e, _, _) = base(&[asm::exit()], &[]);
    let mut d = map_def(1, 4, 4, 1, 0);
    d.extend(map_def(1, 4, 4, 1, 0));
    let m = e.section("maps", SectionKind::ReadOnlyData, &d, 4);
    e.object("A", m, 0, 24);
    e.object("B", m, 20, 20);
    assert_err(&e.finish(), "overlaps");

    let (mut e, _, _) = base(&[asm::exit()], &[]);
    let m = e.section("maps", SectionKind::ReadOnlyData, &d, 4);
    e.object("A", m, 0, 20);
    e.object("A", m, 20, 20);
    assert_err(&e.finish(), "two maps named `A`");
}

#[test]
fn relocation_outside_section_or_unaligned() {
    let good = rich_object();
    let ents = reloc_entries(&good, "tracepoint/syscalls/sys_enter_openat");
    let mut b = good.clone();
    put_u64(&mut b, ents[0], 0x1000);
    assert_err(&b, "outside the section or unaligned");
    let mut b = good.clone();
    put_u64(&mut b, ents[0], 4);
    assert_err(&b, "outside the section or unaligned");
    let mut b = good.clone();
    put_u64(&mut b, ents[0], u64::MAX);
    assert_err(&b, "outside the section or unaligned");
}

#[test]
fn relocation_on_the_wrong_instruction() {
    // R_BPF_64_64 on a mov.
    let (mut e, p, _) = base(&[asm::mov64_imm(0, 0), asm::exit()], &[]);
    let d = e.section(".data", SectionKind::Data, &[0; 8], 8);
    let s = e.object("X", d, 0, 8);
    e.reloc(p, 0, s, R_BPF_64_64);
    assert_err(&e.finish(), "not on an ld_imm64");
    // R_BPF_64_32 on a helper call (src_reg 0).
    let (mut e, p, t) = base(&[asm::call_helper(1), asm::exit()], &[asm::exit()]);
    let s = e.section_symbol(t);
    e.reloc(p, 0, s, R_BPF_64_32);
    assert_err(&e.finish(), "not on a bpf-to-bpf call");
    // A relocation on the second half of an ld_imm64 whose second half looks like a call.
    let mut prog = ld_imm64(1, 0).to_vec();
    prog[1] = call_rel(-1);
    prog.push(asm::exit());
    let (mut e, p, t) = base(&prog, &[asm::exit()]);
    let s = e.section_symbol(t);
    e.reloc(p, 1, s, R_BPF_64_32);
    assert_err(&e.finish(), "second half of an ld_imm64");
    // Two relocations on one instruction.
    let mut prog = ld_imm64(1, 0).to_vec();
    prog.push(asm::exit());
    let (mut e, p, _) = base(&prog, &[]);
    let d = e.section(".data", SectionKind::Data, &[0; 8], 8);
    let s = e.object("X", d, 0, 8);
    e.reloc(p, 0, s, R_BPF_64_64);
    e.reloc(p, 0, s, R_BPF_64_64);
    assert_err(&e.finish(), "two relocations");
}

#[test]
fn unsupported_relocation_type() {
    let mut prog = ld_imm64(1, 0).to_vec();
    prog.push(asm::exit());
    let (mut e, p, _) = base(&prog, &[]);
    let d = e.section(".data", SectionKind::Data, &[0; 8], 8);
    let s = e.object("X", d, 0, 8);
    e.reloc(p, 0, s, 2);
    assert_err(&e.finish(), "unsupported relocation type 2");
}

#[test]
fn call_target_outside_section_or_mid_function() {
    // pc-relative, past the end.
    let (e, _, _) = base(&[call_rel(100), asm::exit()], &[]);
    assert_err(&e.finish(), "not a function start");
    // pc-relative, before the start.
    let (e, _, _) = base(&[call_rel(i32::MIN), asm::exit()], &[]);
    assert_err(&e.finish(), "not a function start");
    // Relocated against .text, past its end.
    let (mut e, p, t) = base(
        &[call_rel(50), asm::exit()],
        &[asm::mov64_imm(0, 0), asm::exit()],
    );
    let s = e.section_symbol(t);
    e.reloc(p, 0, s, R_BPF_64_32);
    assert_err(&e.finish(), "not a function start");
    // Relocated, into the middle of `sub`.
    let (mut e, p, t) = base(
        &[call_rel(0), asm::exit()],
        &[asm::mov64_imm(0, 0), asm::exit()],
    );
    let s = e.section_symbol(t);
    e.reloc(p, 0, s, R_BPF_64_32);
    assert_err(&e.finish(), "not a function start");
    // A call from .text to outside .text.
    let (e, _, _) = base(&[asm::exit()], &[call_rel(5), asm::exit()]);
    assert_err(&e.finish(), "not a function start");
}

#[test]
fn callback_address_not_a_function() {
    let mut prog = ld_imm64(2, 8).to_vec(); // .text + 8: middle of `sub`
    prog.push(asm::exit());
    let (mut e, p, t) = base(&prog, &[asm::mov64_imm(0, 0), asm::exit()]);
    let s = e.section_symbol(t);
    e.reloc(p, 0, s, R_BPF_64_64);
    assert_err(&e.finish(), "not a function start");
    let mut prog = ld_imm64(2, 3).to_vec(); // unaligned
    prog.push(asm::exit());
    let (mut e, p, t) = base(&prog, &[asm::mov64_imm(0, 0), asm::exit()]);
    let s = e.section_symbol(t);
    e.reloc(p, 0, s, R_BPF_64_64);
    assert_err(&e.finish(), "not a function start");
}

#[test]
fn code_size_not_multiple_of_8() {
    let mut e = Elf::new();
    let bytes = bytes_of(&[asm::exit()]);
    let mut odd = bytes.clone();
    odd.extend([0, 0, 0, 0]);
    e.section(
        "tracepoint/syscalls/sys_enter_openat",
        SectionKind::Text,
        &odd,
        8,
    );
    e.license(b"GPL\0");
    assert_err(&e.finish(), "not a multiple of 8");
}

#[test]
fn truncated_ld_imm64_at_section_end() {
    let prog = [asm::exit(), ld_imm64(1, 0)[0]];
    let (e, _, _) = base(&prog, &[]);
    assert_err(&e.finish(), "truncated ld_imm64");
}

#[test]
fn preset_pseudo_src_without_relocation() {
    let prog = [
        asm::ld_map_fd(1, 3)[0],
        asm::ld_map_fd(1, 3)[1],
        asm::exit(),
    ];
    let (e, _, _) = base(&prog, &[]);
    assert_err(&e.finish(), "src_reg 1 but no relocation");
}

#[test]
fn license_missing_or_unterminated() {
    let mut e = Elf::new();
    e.code("tracepoint/a/b", &[asm::exit()]);
    assert_err(&e.finish(), "no `license` section");
    let mut e = Elf::new();
    e.code("tracepoint/a/b", &[asm::exit()]);
    e.license(b"GPL");
    assert_err(&e.finish(), "NUL-terminated");
    let mut e = Elf::new();
    e.code("tracepoint/a/b", &[asm::exit()]);
    e.license(b"\xff\xfe\0");
    assert_err(&e.finish(), "UTF-8");
}

#[test]
fn unsupported_program_section() {
    let mut e = Elf::new();
    e.code("kprobe/do_sys_open", &[asm::exit()]);
    e.license(b"GPL\0");
    assert_err(
        &e.finish(),
        "unsupported program section `kprobe/do_sys_open`",
    );
    let mut e = Elf::new();
    e.code("tracepoint/../../etc", &[asm::exit()]);
    e.license(b"GPL\0");
    assert_err(&e.finish(), "unsupported program section");
}

#[test]
fn relocations_in_data_are_refused() {
    let (mut e, p, _) = base(&[asm::exit()], &[]);
    let d = e.section(".data", SectionKind::Data, &[0; 8], 8);
    let s = e.section_symbol(p);
    e.reloc(d, 0, s, R_BPF_64_64);
    assert_err(&e.finish(), "pointers in statics");
}

#[test]
fn map_and_data_references_out_of_bounds() {
    // maps+4 is no map definition.
    let mut prog = ld_imm64(1, 4).to_vec();
    prog.push(asm::exit());
    let (mut e, p, _) = base(&prog, &[]);
    let m = e.section(
        "maps",
        SectionKind::ReadOnlyData,
        &map_def(1, 4, 4, 1, 0),
        4,
    );
    e.object("M", m, 0, 20);
    let s = e.section_symbol(m);
    e.reloc(p, 0, s, R_BPF_64_64);
    assert_err(&e.finish(), "no map definition");
    // .rodata+100 of an 8-byte section, and a negative offset.
    for imm in [100, 8, -1] {
        let mut prog = ld_imm64(1, imm).to_vec();
        prog.push(asm::exit());
        let (mut e, p, _) = base(&prog, &[]);
        let r = e.section(".rodata", SectionKind::ReadOnlyData, &[1; 8], 8);
        let s = e.section_symbol(r);
        e.reloc(p, 0, s, R_BPF_64_64);
        assert_err(&e.finish(), "refers to offset");
    }
    // A symbol in a section that is neither map, data nor code.
    let mut prog = ld_imm64(1, 0).to_vec();
    prog.push(asm::exit());
    let (mut e, p, _) = base(&prog, &[]);
    let other = e.section(".comment_alloc", SectionKind::ReadOnlyData, &[1; 8], 8);
    let s = e.object("WEIRD", other, 0, 8);
    e.reloc(p, 0, s, R_BPF_64_64);
    assert_err(&e.finish(), "`WEIRD` is not in a map, data or code section");
}

#[test]
fn bad_function_symbols() {
    let mut e = Elf::new();
    let t = e.code("tracepoint/a/b", &[asm::exit(), asm::exit(), asm::exit()]);
    e.func("a", t, 0, 2, true);
    e.func("b", t, 1, 2, true);
    e.license(b"GPL\0");
    assert_err(&e.finish(), "overlaps");
    let mut e = Elf::new();
    let t = e.code("tracepoint/a/b", &[asm::exit()]);
    e.func("a", t, 0, 5, true);
    e.license(b"GPL\0");
    assert_err(&e.finish(), "outside section");
    let mut e = Elf::new();
    let t = e.code("tracepoint/a/b", &[asm::exit()]);
    e.symbol("a", t, 4, 4, object::SymbolKind::Text, true);
    e.license(b"GPL\0");
    assert_err(&e.finish(), "not 8-byte aligned");
}

#[test]
fn section_header_lies_about_size_or_offset() {
    let good = rich_object();
    let h = section_header(&good, ".text");
    let mut b = good.clone();
    put_u64(&mut b, h + 32, u64::MAX); // sh_size
    assert!(err(&b).contains("invalid BPF object"));
    let mut b = good.clone();
    put_u64(&mut b, h + 24, u64::MAX - 8); // sh_offset
    assert!(err(&b).contains("invalid BPF object"));
    // A huge .bss is not allocated by the parser: it only becomes value_size.
    let h = section_header(&good, ".bss");
    let mut b = good.clone();
    put_u64(&mut b, h + 32, 0xffff_fff8);
    let spec = obj::parse(&b).unwrap();
    let bss = &spec.maps[spec.map_index(".bss").unwrap()];
    assert_eq!((bss.value_size, bss.initial.as_ref()), (0xffff_fff8, None));
    put_u64(&mut b, h + 32, 1 << 40);
    assert_err(&b, "too large");
}

#[test]
fn duplicate_program_names() {
    let mut e = Elf::new();
    let a = e.code("tracepoint/a/b", &[asm::exit()]);
    e.func("p", a, 0, 1, true);
    let b = e.code("tracepoint/a/c", &[asm::exit()]);
    e.func("p", b, 0, 1, true);
    e.license(b"GPL\0");
    assert_err(&e.finish(), "two programs named `p`");
}
