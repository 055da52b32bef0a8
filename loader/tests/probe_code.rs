//! What the compiled probes must contain, checked on the embedded object
//! without loading it: code generation choices that are easy to lose in a
//! compiler upgrade and silently wrong when lost.

use bpfload::{linker, obj};

/// `BPF_STX | BPF_ATOMIC | BPF_DW`.
const ATOMIC_DW: u8 = 0xdb;
/// `BPF_ADD | BPF_FETCH`: the add that returns the old value.
const ADD_FETCH: i32 = 0x01;

/// The layout probes return the sequence number their fetch-add produced;
/// without `BPF_FETCH` the "old value" register is stale and every layout
/// event carries the same number.
#[test]
fn layout_probes_use_the_fetching_add_for_the_sequence_number() {
    let spec = obj::parse(bpfckpt::PROBES_OBJ).unwrap();
    for name in ["layout_mmap", "layout_munmap", "layout_brk", "clone_enter"] {
        let p = linker::link_program(&spec, spec.program(name).unwrap()).unwrap();
        let atomics: Vec<i32> = p
            .insns
            .iter()
            .filter(|i| i.code == ATOMIC_DW)
            .map(|i| i.imm)
            .collect();
        assert!(
            atomics.contains(&ADD_FETCH),
            "{name}: no fetching atomic add among its atomics {atomics:#x?}"
        );
    }
}
