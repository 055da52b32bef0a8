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

/// The stack a function uses, as the verifier counts it: the deepest
/// `r10 - N` it stores to, loads from or hands out as a pointer.
fn frame_bytes(insns: &[bpfload::insn::Insn]) -> i64 {
    const CLASS: u8 = 0x07;
    const LDX: u8 = 0x01;
    const ST: u8 = 0x02;
    const STX: u8 = 0x03;
    /// `BPF_ALU64 | BPF_ADD | BPF_K`, and `BPF_ALU64 | BPF_MOV | BPF_X`.
    const ADD64_IMM: u8 = 0x07;
    const MOV64_REG: u8 = 0xbf;
    let mut deepest = 0i64;
    for (i, x) in insns.iter().enumerate() {
        let off = match x.code & CLASS {
            LDX if x.src() == 10 => i64::from(x.off),
            ST | STX if x.dst() == 10 => i64::from(x.off),
            // `rX = r10; rX += -N`: a pointer into the frame.
            _ if x.code == ADD64_IMM && i > 0 => {
                let prev = insns[i - 1];
                let copies_fp = prev.code == MOV64_REG && prev.src() == 10 && prev.dst() == x.dst();
                if copies_fp { i64::from(x.imm) } else { 0 }
            }
            _ => 0,
        };
        deepest = deepest.max(-off);
    }
    deepest
}

/// Kernels without private BPF stacks (before 6.13, so every Debian guest
/// but 7.x) refuse a program whose deepest chain of frames (calls and
/// loop callbacks, each rounded up to 32 bytes) exceeds 512 bytes:
/// "combined stack size of N calls is M. Too large". 6.18 gives tracing
/// programs a private stack and checks only each frame.
#[test]
fn every_call_chain_fits_the_combined_stack_of_older_kernels() {
    use bpfload::insn::{CALL, LD_IMM64, PSEUDO_CALL, PSEUDO_FUNC};
    let spec = obj::parse(bpfckpt::PROBES_OBJ).unwrap();
    for p in linker::link(&spec).unwrap() {
        let starts: Vec<usize> = p.funcs.iter().map(|f| f.insn_off as usize).collect();
        let func_of = |at: usize| starts.partition_point(|&s| s <= at) - 1;
        let end = |f: usize| starts.get(f + 1).copied().unwrap_or(p.insns.len());
        let body = |f: usize| &p.insns[starts[f]..end(f)];
        let frame = |f: usize| (frame_bytes(body(f)).max(1) + 31) / 32 * 32;
        // Calls and callbacks of each function, by function index.
        let callees = |f: usize| -> Vec<usize> {
            (starts[f]..end(f))
                .filter(|&i| {
                    let x = p.insns[i];
                    (x.code == CALL && x.src() == PSEUDO_CALL)
                        || (x.code == LD_IMM64 && x.src() == PSEUDO_FUNC)
                })
                .map(|i| func_of((i as i64 + 1 + i64::from(p.insns[i].imm)) as usize))
                .collect()
        };
        fn deepest(
            f: usize,
            frame: &dyn Fn(usize) -> i64,
            callees: &dyn Fn(usize) -> Vec<usize>,
            path: &mut Vec<usize>,
        ) -> (i64, Vec<usize>) {
            path.push(f);
            let mut best = (0, Vec::new());
            for c in callees(f) {
                if path.contains(&c) {
                    continue;
                }
                let d = deepest(c, frame, callees, path);
                if d.0 > best.0 {
                    best = d;
                }
            }
            path.pop();
            best.1.insert(0, f);
            (frame(f) + best.0, best.1)
        }
        let (bytes, chain) = deepest(0, &frame, &callees, &mut Vec::new());
        let named: Vec<String> = chain
            .iter()
            .map(|&f| format!("{} ({})", p.funcs[f].name, frame(f)))
            .collect();
        assert!(
            bytes <= 512,
            "{}: combined stack {bytes} > 512: {}",
            p.name,
            named.join(" -> ")
        );
    }
}
