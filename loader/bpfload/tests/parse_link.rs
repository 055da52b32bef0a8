//! obj + link + btf on well-formed objects: a rustc-built fixture and
//! hand-made objects covering every relocation case. (The real probe object
//! is checked by the application's tests, loader/tests/probes_obj.rs.)

mod common;

use bpfload::btf;
use bpfload::insn::{self, Insn, asm};
use bpfload::linker::{self, LinkedProgram, MapRef, MapRefKind};
use bpfload::obj::{self, AttachPoint, MapKind};
use common::*;
use object::SectionKind;

fn prog<'a>(progs: &'a [LinkedProgram], name: &str) -> &'a LinkedProgram {
    progs
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no program {name}"))
}

fn func_names(p: &LinkedProgram) -> Vec<(&str, u32, bool)> {
    p.funcs
        .iter()
        .map(|f| (f.name.as_str(), f.insn_off, f.is_main))
        .collect()
}

// ---------------------------------------------------------------------------
// The rustc-built fixture (fixtures/rich_probe.rs).

#[test]
fn rustc_fixture_parse() {
    let spec = obj::parse(RUSTC_FIXTURE).unwrap();
    assert_eq!(spec.license, "GPL");
    assert_eq!(spec.program_names(), ["on_access", "on_openat"]);
    assert_eq!(
        spec.programs[1].attach,
        AttachPoint::Tracepoint {
            category: "syscalls".into(),
            name: "sys_enter_openat".into()
        }
    );
    let names: Vec<(&str, MapKind)> = spec
        .maps
        .iter()
        .map(|m| (m.name.as_str(), m.kind))
        .collect();
    assert_eq!(
        names,
        [
            (".data", MapKind::Data),
            (".rodata", MapKind::Rodata),
            (".bss", MapKind::Bss),
            (".rodata.str1.1", MapKind::Rodata),
            ("COUNTS", MapKind::Legacy),
            ("EVENTS", MapKind::Legacy),
        ]
    );
    let counts = &spec.maps[spec.map_index("COUNTS").unwrap()];
    assert_eq!(
        (
            counts.map_type,
            counts.key_size,
            counts.value_size,
            counts.max_entries
        ),
        (2, 4, 8, 1)
    );
    let events = &spec.maps[spec.map_index("EVENTS").unwrap()];
    assert_eq!((events.map_type, events.max_entries), (27, 4096));
    let data = &spec.maps[0];
    assert_eq!(data.initial.as_deref(), Some(&5u64.to_le_bytes()[..]));
    let bss = &spec.maps[2];
    assert_eq!((bss.value_size, bss.initial.as_ref()), (32, None));
    let str1 = &spec.maps[3];
    assert_eq!(str1.initial.as_deref(), Some(&b"hello world string\0"[..]));
    assert!(str1.frozen() && spec.maps[1].frozen() && !data.frozen() && !bss.frozen());
    assert_eq!(spec.maps[1].flags, bpfload::sys::BPF_F_RDONLY_PROG);
    assert_eq!(str1.kernel_name(), ".rodata.str1.1");
}

#[test]
fn rustc_fixture_link_callback_subprogs_and_data() {
    let spec = obj::parse(RUSTC_FIXTURE).unwrap();
    let progs = linker::link(&spec).unwrap();
    for p in &progs {
        check_linked(&spec, p);
    }
    relocated_ld_imm64_all_marked(RUSTC_FIXTURE, &progs);
    let (data, rodata, bss) = (0, 1, 2);
    let counts = spec.map_index("COUNTS").unwrap();

    let p = prog(&progs, "on_openat");
    // main (28 insns), then the bpf_loop callback, then bump (found via the
    // callback's pc-relative call and main's relocated call); the panic
    // handler is never appended.
    assert_eq!(
        func_names(p),
        [
            ("on_openat", 0, true),
            ("_RNvCs12jkoC9p3aE_1p2cb", 28, false),
            ("_RNvCs12jkoC9p3aE_1p4bump", 38, false)
        ]
    );
    assert_eq!(p.insns.len(), 48);
    assert!(!p.funcs.iter().any(|f| f.name.contains("rust_begin_unwind")));
    // ld_imm64 &cb at 20: PSEUDO_FUNC, imm = 28 - 20 - 1.
    assert_eq!(p.insns[20].src(), insn::PSEUDO_FUNC);
    assert_eq!(p.insns[20].imm, 7);
    assert_eq!(p.insns[21].imm, 0);
    // call bump at 26 (R_BPF_64_32 against .text): 38 - 26 - 1.
    assert!(p.insns[26].is_pseudo_call());
    assert_eq!(p.insns[26].imm, 11);
    // cb's pc-relative call to bump: 28 + 5 -> 38.
    assert_eq!(p.insns[33].imm, 4);
    assert_eq!(
        p.map_refs,
        [
            MapRef {
                insn: 1,
                map: rodata,
                kind: MapRefKind::Value { offset: 8 }
            }, // TARGET_PID
            MapRef {
                insn: 4,
                map: rodata,
                kind: MapRefKind::Value { offset: 0 }
            }, // OTHER
            MapRef {
                insn: 12,
                map: counts,
                kind: MapRefKind::Fd
            },
            MapRef {
                insn: 29,
                map: data,
                kind: MapRefKind::Value { offset: 0 }
            }, // COUNTER in cb
            MapRef {
                insn: 40,
                map: bss,
                kind: MapRefKind::Value { offset: 0 }
            }, // ZEROED in bump
        ]
    );

    let p = prog(&progs, "on_access");
    assert_eq!(
        func_names(p),
        [
            ("on_access", 0, true),
            ("_RNvCs12jkoC9p3aE_1p4bump", 14, false)
        ]
    );
    assert_eq!(p.insns[12].imm, 1);
    let events = spec.map_index("EVENTS").unwrap();
    assert_eq!(
        p.map_refs,
        [
            MapRef {
                insn: 4,
                map: events,
                kind: MapRefKind::Fd
            },
            MapRef {
                insn: 7,
                map: 3,
                kind: MapRefKind::Value { offset: 0 }
            },
            MapRef {
                insn: 16,
                map: bss,
                kind: MapRefKind::Value { offset: 0 }
            },
        ]
    );
}

#[test]
fn rustc_fixture_btf() {
    let spec = obj::parse(RUSTC_FIXTURE).unwrap();
    let progs = linker::link(&spec).unwrap();
    let p = prog(&progs, "on_openat");
    let b = btf::program_btf(p);
    check_btf(&b, p);
    let funcs = decode_btf(&b.blob);
    let got: Vec<(&str, u32)> = funcs.iter().map(|f| (f.name.as_str(), f.linkage)).collect();
    // Mangled names shortened to their last component; callbacks static.
    assert_eq!(got, [("on_openat", 1), ("cb", 0), ("bump", 0)]);
    assert_eq!(b.func_info_cnt(), 3);
}

// ---------------------------------------------------------------------------
// The hand-made rich object.

#[test]
fn rich_parse() {
    let spec = obj::parse(&rich_object()).unwrap();
    assert_eq!(
        spec.program_names(),
        ["on_openat", "on_switch", "on_access"]
    );
    assert_eq!(
        spec.programs[1].attach,
        AttachPoint::RawTracepoint {
            name: "sched_switch".into()
        }
    );
    assert_eq!(
        spec.programs[2].attach,
        AttachPoint::Tracepoint {
            category: "syscalls".into(),
            name: "sys_enter_access".into()
        }
    );
    let a = &spec.maps[spec.map_index("MAP_A").unwrap()];
    assert_eq!(
        (
            a.kind,
            a.map_type,
            a.key_size,
            a.value_size,
            a.max_entries,
            a.flags
        ),
        (MapKind::Legacy, 1, 4, 8, 128, 0)
    );
    // A 24-byte definition: the first 20 bytes are the bpf_map_def.
    let b = &spec.maps[spec.map_index("MAP_B").unwrap()];
    assert_eq!((b.map_type, b.max_entries), (27, 4096));
    let bss = &spec.maps[spec.map_index(".bss").unwrap()];
    assert_eq!(
        (bss.kind, bss.value_size, bss.initial.as_ref()),
        (MapKind::Bss, 32, None)
    );
    assert_eq!(spec.map_index("nope"), None);
    let text = spec.code.iter().find(|c| c.name == ".text").unwrap();
    let starts: Vec<usize> = text.funcs.iter().map(|f| f.start).collect();
    assert_eq!(
        starts,
        [rich::CB, rich::HELPER, rich::DEAD_PANIC, rich::SHARED]
    );
}

#[test]
fn rich_link_every_relocation_case() {
    let spec = obj::parse(&rich_object()).unwrap();
    let progs = linker::link(&spec).unwrap();
    for p in &progs {
        check_linked(&spec, p);
    }
    let idx = |n: &str| spec.map_index(n).unwrap();
    let p = prog(&progs, "on_openat");
    assert_eq!(
        func_names(p),
        [
            ("on_openat", 0, true),
            ("_RNvCs12jkoC9p3aE_5probe2cb", 13, false),
            ("_RNvCs12jkoC9p3aE_5probe6helper", 18, false),
            ("shared", 22, false),
        ]
    );
    assert_eq!(p.insns.len(), 25, "dead panic handler must not be appended");
    // (3) callback address through the .text section symbol.
    assert_eq!(
        (p.insns[6].src(), p.insns[6].imm, p.insns[7].imm),
        (insn::PSEUDO_FUNC, 13 - 6 - 1, 0)
    );
    // (4) calls against the section symbol and the function symbol: same target, appended once.
    assert_eq!(p.insns[9].imm, 18 - 9 - 1);
    assert_eq!(p.insns[10].imm, 18 - 10 - 1);
    assert_eq!(p.insns[9].src(), insn::PSEUDO_CALL);
    // pc-relative calls inside .text: cb -> helper keeps its distance, helper -> shared
    // shrinks because dead_panic is gone.
    assert_eq!(p.insns[13 + 2].imm, 2);
    assert_eq!(p.insns[18 + 2].imm, 22 - 20 - 1);
    // The helper call (181) is untouched.
    assert_eq!(p.insns[8], asm::call_helper(181));
    assert_eq!(
        p.map_refs,
        [
            MapRef {
                insn: 0,
                map: idx("MAP_A"),
                kind: MapRefKind::Fd
            },
            MapRef {
                insn: 2,
                map: idx("MAP_B"),
                kind: MapRefKind::Fd
            },
            MapRef {
                insn: 4,
                map: idx(".rodata"),
                kind: MapRefKind::Value { offset: 12 }
            },
            MapRef {
                insn: 13,
                map: idx(".data"),
                kind: MapRefKind::Value { offset: 0 }
            },
            MapRef {
                insn: 18,
                map: idx(".bss"),
                kind: MapRefKind::Value { offset: 8 }
            },
            MapRef {
                insn: 22,
                map: idx(".rodata.str1.1"),
                kind: MapRefKind::Value { offset: 3 }
            },
        ]
    );
    for r in &p.map_refs {
        assert_eq!(p.insns[r.insn].imm, 0, "fd not known yet");
    }

    let p = prog(&progs, "on_switch");
    assert_eq!(
        func_names(p),
        [("on_switch", 0, true), ("shared", 3, false)]
    );
    assert_eq!(p.insns[0].imm, 2);
    assert_eq!(
        p.map_refs,
        [MapRef {
            insn: 3,
            map: idx(".rodata.str1.1"),
            kind: MapRefKind::Value { offset: 3 }
        }]
    );

    let p = prog(&progs, "on_access");
    assert_eq!(func_names(p), [("on_access", 0, true)]);
    assert_eq!(p.insns, [asm::mov64_imm(0, 0), asm::exit()]);
    assert!(p.map_refs.is_empty());
}

#[test]
fn resolve_maps_writes_fds_and_offsets() {
    let spec = obj::parse(&rich_object()).unwrap();
    let mut progs = linker::link(&spec).unwrap();
    let fds: Vec<i32> = (0..spec.maps.len() as i32).map(|i| 100 + i).collect();
    let p = progs.iter_mut().find(|p| p.name == "on_openat").unwrap();
    p.resolve_maps(&fds).unwrap();
    for r in p.map_refs.clone() {
        assert_eq!(p.insns[r.insn].imm, 100 + r.map as i32);
        match r.kind {
            MapRefKind::Fd => assert_eq!(
                (p.insns[r.insn].src(), p.insns[r.insn + 1].imm),
                (insn::PSEUDO_MAP_FD, 0)
            ),
            MapRefKind::Value { offset } => {
                assert_eq!(p.insns[r.insn].src(), insn::PSEUDO_MAP_VALUE);
                assert_eq!(p.insns[r.insn + 1].imm, offset as i32);
            }
        }
    }
    // Idempotent, and refuses too few fds.
    let before = p.insns.clone();
    p.resolve_maps(&fds).unwrap();
    assert_eq!(p.insns, before);
    let err = p.resolve_maps(&fds[..1]).unwrap_err();
    assert!(err.msg.contains("fds"), "{err}");
    assert_eq!(p.insn_bytes().len(), p.insns.len() * 8);
}

#[test]
fn rich_btf_linkage_and_func_info() {
    let spec = obj::parse(&rich_object()).unwrap();
    let progs = linker::link(&spec).unwrap();
    let p = prog(&progs, "on_openat");
    let b = btf::program_btf(p);
    check_btf(&b, p);
    let got: Vec<(String, u32)> = decode_btf(&b.blob)
        .into_iter()
        .map(|f| (f.name, f.linkage))
        .collect();
    assert_eq!(
        got,
        [
            ("on_openat".into(), 1),
            ("cb".into(), 0),
            ("helper".into(), 0),
            ("shared".into(), 0)
        ]
    );
    let recs: Vec<[u32; 2]> = b
        .func_info
        .chunks_exact(8)
        .map(|c| {
            [
                u32::from_le_bytes(c[..4].try_into().unwrap()),
                u32::from_le_bytes(c[4..].try_into().unwrap()),
            ]
        })
        .collect();
    assert_eq!(recs, [[0, 4], [13, 5], [18, 6], [22, 7]]);
}

/// One function per name, one instruction apart, the first the main one.
fn funcs_named(names: &[&str]) -> Vec<linker::FuncInfo> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| linker::FuncInfo {
            insn_off: i as u32,
            name: n.to_string(),
            is_main: i == 0,
        })
        .collect()
}

#[test]
fn btf_names_are_sanitized_and_unique() {
    let p = LinkedProgram {
        name: "main".into(),
        section: "tracepoint/a/b".into(),
        attach: AttachPoint::Tracepoint {
            category: "a".into(),
            name: "b".into(),
        },
        insns: vec![asm::exit(); 4],
        map_refs: vec![],
        funcs: funcs_named(&["ma-in", "x::y", "x_y", "9lives", "", &"z".repeat(300)]),
    };
    let b = btf::program_btf(&p);
    let names: Vec<String> = decode_btf(&b.blob).into_iter().map(|f| f.name).collect();
    assert_eq!(names[..5], ["ma_in", "x__y", "x_y", "_9lives", "_"]);
    assert_eq!(names[5].len(), 127);
    assert_eq!(btf::sanitize_name("a.b"), "a_b");
    let p2 = LinkedProgram {
        funcs: funcs_named(&["a.b", "a_b", "a-b"]),
        ..p
    };
    let names: Vec<String> = decode_btf(&btf::program_btf(&p2).blob)
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["a_b", "a_b_2", "a_b_3"]);
}

// ---------------------------------------------------------------------------
// Smaller hand-made shapes.

/// An object with one program whose code is `prog` and a `.text` of `text`
/// with functions at the given (start, len).
fn simple(
    prog: &[Insn],
    text: &[Insn],
    funcs: &[(u64, u64)],
) -> (
    Elf,
    object::write::SectionId,
    Option<object::write::SectionId>,
) {
    let mut e = Elf::new();
    let p = e.code("tracepoint/syscalls/sys_enter_openat", prog);
    e.func("prog", p, 0, prog.len() as u64, true);
    let t = (!text.is_empty()).then(|| e.code(".text", text));
    for (k, &(s, l)) in funcs.iter().enumerate() {
        e.func(&format!("f{k}"), t.unwrap(), s, l, false);
    }
    e.license(b"Dual MIT/GPL\0");
    (e, p, t)
}

#[test]
fn recursive_and_mutual_calls_are_laid_out_once() {
    // f0 calls f1, f1 calls f0 and itself (pc-relative).
    let text = [
        call_rel(1),
        asm::exit(),
        call_rel(-3),
        call_rel(-2),
        asm::exit(),
    ];
    let (mut e, p, t) = simple(&[call_rel(-1), asm::exit()], &text, &[(0, 2), (2, 3)]);
    let f0 = e.section_symbol(t.unwrap());
    e.reloc(p, 0, f0, R_BPF_64_32);
    let spec = obj::parse(&e.finish()).unwrap();
    let progs = linker::link(&spec).unwrap();
    let p = &progs[0];
    check_linked(&spec, p);
    assert_eq!(
        func_names(p),
        [("prog", 0, true), ("f0", 2, false), ("f1", 4, false)]
    );
    assert_eq!(spec.license, "Dual MIT/GPL");
    assert_eq!(p.insns[0].imm, 1);
    assert_eq!(p.insns[2].imm, 1);
    assert_eq!(p.insns[4].imm, -3);
    assert_eq!(p.insns[5].imm, -2);
}

#[test]
fn code_without_func_symbols_is_one_function() {
    // A hand-assembled object: no symbols at all in the program section.
    let mut e = Elf::new();
    e.code("raw_tp/sys_enter", &[asm::mov64_imm(0, 0), asm::exit()]);
    e.license(b"GPL\0");
    let spec = obj::parse(&e.finish()).unwrap();
    assert_eq!(spec.program_names(), ["sys_enter"]);
    assert_eq!(
        spec.programs[0].attach,
        AttachPoint::RawTracepoint {
            name: "sys_enter".into()
        }
    );
    let progs = linker::link(&spec).unwrap();
    assert_eq!(progs[0].insns.len(), 2);
}

#[test]
fn two_programs_in_one_section() {
    let mut e = Elf::new();
    let s = e.code(
        "tracepoint/sched/sched_process_exit",
        &[asm::exit(), asm::mov64_imm(0, 1), asm::exit()],
    );
    e.func("first", s, 0, 1, true);
    e.func("second", s, 1, 2, true);
    e.license(b"GPL\0");
    let spec = obj::parse(&e.finish()).unwrap();
    assert_eq!(spec.program_names(), ["first", "second"]);
    let progs = linker::link(&spec).unwrap();
    assert_eq!(progs[1].insns, [asm::mov64_imm(0, 1), asm::exit()]);
}

#[test]
fn empty_data_sections_make_no_maps_and_nonalloc_sections_are_ignored() {
    let (mut e, _, _) = simple(&[asm::exit()], &[], &[]);
    e.section(".data", SectionKind::Data, &[], 8);
    e.section(".BTF", SectionKind::Other, &[1, 2, 3], 1);
    e.section(".debug_info", SectionKind::Debug, &[0; 5], 1);
    let spec = obj::parse(&e.finish()).unwrap();
    assert!(spec.maps.is_empty());
}

#[test]
fn relocations_in_debug_sections_are_ignored() {
    let (mut e, p, _) = simple(&[asm::exit()], &[], &[]);
    let dbg = e.section(".debug_info", SectionKind::Debug, &[0; 16], 1);
    let sym = e.section_symbol(p);
    e.reloc(dbg, 0, sym, 3);
    obj::parse(&e.finish()).unwrap();
}

#[test]
fn attach_point_names() {
    use AttachPoint::*;
    let tp = |c: &str, n: &str| {
        Some(Tracepoint {
            category: c.into(),
            name: n.into(),
        })
    };
    assert_eq!(
        AttachPoint::from_section("tracepoint/syscalls/sys_enter_open"),
        tp("syscalls", "sys_enter_open")
    );
    assert_eq!(
        AttachPoint::from_section("tp/exceptions/page_fault_user"),
        tp("exceptions", "page_fault_user")
    );
    assert_eq!(
        AttachPoint::from_section("raw_tp/x"),
        Some(RawTracepoint { name: "x".into() })
    );
    for bad in [
        "tracepoint/a",
        "tracepoint/a/b/c",
        "tracepoint/../x",
        "tp//x",
        "kprobe/x",
        "raw_tp/",
        "raw_tp/a/b",
        "tracepoint",
    ] {
        assert_eq!(AttachPoint::from_section(bad), None, "{bad}");
    }
}
