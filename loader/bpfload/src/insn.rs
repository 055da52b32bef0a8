//! The BPF instruction and the few encodings the loader and `doctor` need.

/// One 8-byte BPF instruction as the kernel reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high nibble.
    regs: u8,
    pub off: i16,
    pub imm: i32,
}

pub(crate) const INSN_SIZE: usize = 8;

/// `lddw`: 64-bit immediate load, two slots.
pub const LD_IMM64: u8 = 0x18;
/// `call` (helper, or bpf-to-bpf with src_reg = PSEUDO_CALL).
pub const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
pub const MOV64_IMM: u8 = 0xb7;
const MOV64_REG: u8 = 0xbf;

/// src_reg values of `ld_imm64`.
pub const PSEUDO_MAP_FD: u8 = 1;
pub const PSEUDO_MAP_VALUE: u8 = 2;
pub const PSEUDO_FUNC: u8 = 4;
/// src_reg value of a bpf-to-bpf `call`.
pub const PSEUDO_CALL: u8 = 1;

impl Insn {
    pub const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }

    fn from_bytes(b: [u8; 8]) -> Self {
        Self {
            code: b[0],
            regs: b[1],
            off: i16::from_le_bytes([b[2], b[3]]),
            imm: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    pub fn to_bytes(self) -> [u8; 8] {
        let o = self.off.to_le_bytes();
        let i = self.imm.to_le_bytes();
        [self.code, self.regs, o[0], o[1], i[0], i[1], i[2], i[3]]
    }

    pub fn dst(self) -> u8 {
        self.regs & 0x0f
    }

    pub fn src(self) -> u8 {
        self.regs >> 4
    }

    pub(crate) fn set_src(&mut self, src: u8) {
        self.regs = (src << 4) | (self.regs & 0x0f);
    }

    pub fn is_ld_imm64(self) -> bool {
        self.code == LD_IMM64
    }

    /// A bpf-to-bpf call (as opposed to a helper call).
    pub fn is_pseudo_call(self) -> bool {
        self.code == CALL && self.src() == PSEUDO_CALL
    }
}

/// `bpf_loop`'s helper id.
const FUNC_LOOP: i32 = 181;
/// `BPF_STX | BPF_ATOMIC` with the size bits masked out (W or DW).
const ATOMIC_MASK: u8 = 0xe7;
const ATOMIC: u8 = 0xc3;
/// The atomic operation every kernel has (the old `BPF_XADD`): add, no fetch.
const ATOMIC_ADD: i32 = 0x00;

/// Kernel features an instruction stream uses beyond what 5.10 has; each
/// names the release that brought it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// The `bpf_loop` helper (5.17).
    pub loop_helper: bool,
    /// `ld_imm64` of a function address, a callback (5.13).
    pub callbacks: bool,
    /// Atomics other than the plain add: fetch, and, or, xor, xchg,
    /// cmpxchg (5.12).
    pub atomics: bool,
}

impl Needs {
    /// What `insns` use.
    pub fn of(insns: &[Insn]) -> Self {
        let mut n = Needs::default();
        for i in insns {
            if i.code == CALL && i.src() == 0 && i.imm == FUNC_LOOP {
                n.loop_helper = true;
            } else if i.code == LD_IMM64 && i.src() == PSEUDO_FUNC {
                n.callbacks = true;
            } else if i.code & ATOMIC_MASK == ATOMIC && i.imm != ATOMIC_ADD {
                n.atomics = true;
            }
        }
        n
    }

    pub fn any(self) -> bool {
        self.loop_helper || self.callbacks || self.atomics
    }

    /// The features, in words (empty if none).
    pub fn describe(self) -> Vec<&'static str> {
        [
            (self.loop_helper, "bpf_loop (Linux 5.17)"),
            (self.callbacks, "BPF callbacks (5.13)"),
            (self.atomics, "atomic fetch/xchg/or/and (5.12)"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, w)| *w)
        .collect()
    }
}

/// Decodes a byte slice whose length is a multiple of 8.
pub(crate) fn decode(bytes: &[u8]) -> Option<Vec<Insn>> {
    if !bytes.len().is_multiple_of(INSN_SIZE) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(INSN_SIZE)
            .map(|c| Insn::from_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    )
}

/// A tiny assembler, enough for the probe programs `doctor` loads.
pub mod asm {
    use super::*;

    pub const fn mov64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(MOV64_IMM, dst, 0, 0, imm)
    }
    pub const fn mov64_reg(dst: u8, src: u8) -> Insn {
        Insn::new(MOV64_REG, dst, src, 0, 0)
    }
    /// `dst += imm` (64-bit).
    pub const fn add64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x07, dst, 0, 0, imm)
    }
    /// `*(u64 *)(dst + off) = imm`
    pub const fn st_dw(dst: u8, off: i16, imm: i32) -> Insn {
        Insn::new(0x7a, dst, 0, off, imm)
    }
    pub const fn call_helper(id: i32) -> Insn {
        Insn::new(CALL, 0, 0, 0, id)
    }
    pub const fn exit() -> Insn {
        Insn::new(EXIT, 0, 0, 0, 0)
    }
    /// `ld_imm64 dst, map_fd` (two slots).
    pub const fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
        [
            Insn::new(LD_IMM64, dst, PSEUDO_MAP_FD, 0, fd),
            Insn::new(0, 0, 0, 0, 0),
        ]
    }
    /// `ld_imm64 dst, &callback` where the callback starts `rel + 1` slots later.
    pub const fn ld_func(dst: u8, rel: i32) -> [Insn; 2] {
        [
            Insn::new(LD_IMM64, dst, PSEUDO_FUNC, 0, rel),
            Insn::new(0, 0, 0, 0, 0),
        ]
    }
    /// `dst = *(u64 *)(src + off)`
    pub const fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x79, dst, src, off, 0)
    }
    /// `*(u64 *)(dst + off) = src`
    pub const fn stx_dw(dst: u8, off: i16, src: u8) -> Insn {
        Insn::new(0x7b, dst, src, off, 0)
    }
    /// `*(u32 *)(dst + off) = src`
    pub const fn stx_w(dst: u8, off: i16, src: u8) -> Insn {
        Insn::new(0x63, dst, src, off, 0)
    }
    /// `*(u32 *)(dst + off) = imm`
    pub const fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
        Insn::new(0x62, dst, 0, off, imm)
    }
    /// `lock *(u64 *)(dst + off) += src`
    pub const fn atomic_add_dw(dst: u8, off: i16, src: u8) -> Insn {
        Insn::new(0xdb, dst, src, off, 0)
    }
    /// `lock dst_old = atomic_fetch_or((u64 *)(dst + off), src)`: `src`
    /// receives the old value (5.12).
    pub const fn atomic_fetch_or_dw(dst: u8, off: i16, src: u8) -> Insn {
        Insn::new(0xdb, dst, src, off, 0x40 | 0x01)
    }
    /// `src = xchg((u64 *)(dst + off), src)` (5.12).
    pub const fn atomic_xchg_dw(dst: u8, off: i16, src: u8) -> Insn {
        Insn::new(0xdb, dst, src, off, 0xe0 | 0x01)
    }
    /// `dst >>= imm` (64-bit, logical).
    pub const fn rsh64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x77, dst, 0, 0, imm)
    }
    /// `goto +off`
    pub const fn ja(off: i16) -> Insn {
        Insn::new(0x05, 0, 0, off, 0)
    }
    /// `if dst == imm goto +off` (64-bit).
    pub const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x15, dst, 0, off, imm)
    }
    /// `if dst != src goto +off` (64-bit).
    pub const fn jne_reg(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x5d, dst, src, off, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_fields() {
        let i = Insn::new(LD_IMM64, 1, PSEUDO_MAP_FD, -2, 0x1234_5678);
        assert_eq!(i.dst(), 1);
        assert_eq!(i.src(), PSEUDO_MAP_FD);
        assert_eq!(Insn::from_bytes(i.to_bytes()), i);
        assert_eq!(
            i.to_bytes(),
            [0x18, 0x11, 0xfe, 0xff, 0x78, 0x56, 0x34, 0x12]
        );
        assert!(decode(&[0u8; 7]).is_none());
        assert_eq!(decode(&[0u8; 16]).unwrap().len(), 2);
    }

    #[test]
    fn needs_of_each_feature() {
        use asm::*;
        let base = [mov64_imm(0, 0), atomic_add_dw(10, -8, 1), exit()];
        assert_eq!(Needs::of(&base), Needs::default());
        assert!(!Needs::of(&base).any());
        // A 32-bit plain add is baseline too.
        assert!(!Needs::of(&[Insn::new(0xc3, 10, 1, -8, 0)]).any());
        let n = Needs::of(&[call_helper(FUNC_LOOP)]);
        assert!(n.loop_helper && !n.callbacks && !n.atomics);
        // Helper 181 called as a bpf-to-bpf call is not bpf_loop.
        assert!(!Needs::of(&[Insn::new(CALL, 0, PSEUDO_CALL, 0, FUNC_LOOP)]).any());
        let n = Needs::of(&ld_func(2, 3));
        assert!(n.callbacks && !n.loop_helper);
        assert!(!Needs::of(&ld_map_fd(1, 3)).any());
        for i in [
            atomic_fetch_or_dw(10, -8, 1),
            atomic_xchg_dw(10, -8, 1),
            Insn::new(0xdb, 10, 1, -8, 0x01),
            Insn::new(0xc3, 10, 1, -8, 0x50),
        ] {
            assert!(Needs::of(&[i]).atomics, "{i:?}");
        }
        let all = Needs {
            loop_helper: true,
            callbacks: true,
            atomics: true,
        };
        assert_eq!(all.describe().len(), 3);
        assert!(all.describe()[0].contains("5.17"));
        assert!(Needs::default().describe().is_empty());
    }
}
