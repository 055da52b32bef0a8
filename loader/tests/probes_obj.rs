//! The real probe object through bpfload's pure layers (parse, link, BTF),
//! checked generically so that it keeps holding as the probes grow: the same
//! invariants, mutation fuzzing and seed replay as bpfload's own tests, whose
//! helpers are included from loader/bpfload/tests.

#[path = "../bpfload/tests/common/mod.rs"]
mod common;
#[path = "../bpfload/tests/fuzzing/mod.rs"]
mod fuzzing;

use bpfckpt::PROBES_OBJ;
use bpfload::linker;
use bpfload::obj::{self, MapKind};
use common::{check_linked, relocated_ld_imm64_all_marked};
use std::path::Path;

#[test]
fn probes_obj_parses_and_every_program_links() {
    let spec = obj::parse(PROBES_OBJ).expect("parse PROBES_OBJ");
    assert!(
        spec.license.contains("GPL"),
        "license must be GPL-compatible: {}",
        spec.license
    );
    assert!(!spec.programs.is_empty());
    let progs = linker::link(&spec).expect("link PROBES_OBJ");
    assert_eq!(progs.len(), spec.programs.len());
    assert_eq!(
        progs.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
        spec.program_names()
    );
    for p in &progs {
        check_linked(&spec, p);
    }
    relocated_ld_imm64_all_marked(PROBES_OBJ, &progs);
}

#[test]
fn probes_obj_maps_are_sane() {
    let spec = obj::parse(PROBES_OBJ).unwrap();
    for (i, m) in spec.maps.iter().enumerate() {
        assert_eq!(spec.map_index(&m.name), Some(i));
        let k = m.kernel_name();
        assert!(k.len() <= 15 && !k.is_empty(), "{k}");
        match m.kind {
            MapKind::Legacy => assert!(m.initial.is_none()),
            MapKind::Data | MapKind::Rodata => {
                assert_eq!(
                    m.initial.as_ref().map(Vec::len),
                    Some(m.value_size as usize)
                );
                assert_eq!((m.key_size, m.max_entries, m.map_type), (4, 1, 2));
            }
            MapKind::Bss => assert!(m.initial.is_none()),
        }
        assert_eq!(m.frozen(), m.kind == MapKind::Rodata);
    }
}

#[test]
fn fuzz_probes_obj() {
    fuzzing::fuzz_fixed("probes", PROBES_OBJ, 0x9e37_79b9_7f4a_7c15);
}

/// The fuzz driver's seed: it must link within the memory budget.
#[test]
fn probes_obj_seed_links() {
    let sig = fuzzing::replay(Path::new("probes"), PROBES_OBJ);
    assert!(sig.starts_with("ok:"), "probes: {sig}");
}

/// The degraded set must load where 5.10 is all there is: no bpf_loop, no
/// callback, no atomic but the plain add, in any program of it (with the
/// subprograms each reaches). The full set does use them, which shows the
/// scan sees them.
#[test]
fn degraded_programs_need_nothing_newer_than_5_10() {
    use bpfckpt::ckpt::probes::{Set, program_names};
    use bpfload::insn::Needs;
    let spec = obj::parse(PROBES_OBJ).unwrap();
    let needs = |n: &str| {
        let p = spec
            .program(n)
            .unwrap_or_else(|| panic!("no program `{n}`"));
        Needs::of(&linker::link_program(&spec, p).unwrap().insns)
    };
    let degraded = program_names(Set::Degraded);
    assert_eq!(degraded.len(), 13, "{degraded:?}");
    for n in &degraded {
        assert!(n.ends_with("_d"), "{n}");
        assert_eq!(needs(n), Needs::default(), "{n}");
    }
    let full = program_names(Set::Full { bpf_write: true });
    let n = needs("trigger_openat_w");
    assert!(n.loop_helper && n.callbacks, "{n:?}");
    assert!(needs("layout_mmap").atomics);
    assert!(full.iter().any(|n| needs(n).atomics));
}
