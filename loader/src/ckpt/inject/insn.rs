//! The `syscall` instruction an injection runs its calls through.

use crate::ckpt::procfs;
use crate::os::{self, Regs};
use crate::{Error, Result};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Where the `syscall` instruction that runs the injected calls is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insn {
    /// The one the thread just returned through, at `rip - 2`.
    Behind(u64),
    /// One in the vDSO.
    Vdso(u64),
    /// `0f 05` written at `addr` (= `rip`) into the word at `word_addr`,
    /// whose original value is `word`.
    Poked {
        addr: u64,
        word_addr: u64,
        word: u64,
    },
}

impl Insn {
    pub fn addr(&self) -> u64 {
        match *self {
            Insn::Behind(a) | Insn::Vdso(a) => a,
            Insn::Poked { addr, .. } => addr,
        }
    }
}

impl fmt::Display for Insn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Insn::Behind(a) => write!(f, "behind {a:#x}"),
            Insn::Vdso(a) => write!(f, "vdso {a:#x}"),
            Insn::Poked { addr, .. } => write!(f, "poke {addr:#x}"),
        }
    }
}

/// Whether a word read at some address starts with `syscall` (`0f 05`).
pub fn is_syscall_word(word: u64) -> bool {
    word & 0xffff == 0x050f
}

/// The word to rewrite to put `syscall` at `rip`: its address and the byte
/// offset of `rip` in it. It ends at `rip + 2` where that keeps it in
/// `rip`'s page (the page before may not exist).
pub fn poke_site(rip: u64) -> (u64, u32) {
    if rip & 0xfff >= 6 {
        (rip - 6, 6)
    } else {
        (rip, 0)
    }
}

/// `word` with `0f 05` at byte offset `off`.
pub fn with_syscall(word: u64, off: u32) -> u64 {
    let shift = off * 8;
    (word & !(0xffff << shift)) | (0x050f << shift)
}

/// Offset of the first `syscall` encoding in `code`.
pub fn find_syscall(code: &[u8]) -> Option<usize> {
    code.windows(2).position(|w| w == [0x0f, 0x05])
}

/// A `syscall` instruction in `pid`'s vDSO.
fn vdso_syscall(pid: i32) -> Result<Option<u64>> {
    let maps = procfs::read_maps(pid)?;
    let Some(v) = maps.iter().find(|m| m.path == "[vdso]") else {
        return Ok(None);
    };
    let mem = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| Error::from(e).context(format!("open /proc/{pid}/mem")))?;
    let mut code = vec![0u8; (v.end - v.start) as usize];
    mem.read_exact_at(&mut code, v.start)
        .map_err(|e| Error::from(e).context(format!("read the vDSO of pid {pid}")))?;
    Ok(find_syscall(&code).map(|off| v.start + off as u64))
}

/// Picks the `syscall` instruction for a thread stopped with `regs`.
pub(super) fn choose_insn(pid: i32, tid: i32, regs: &Regs, force_poke: bool) -> Result<Insn> {
    if !force_poke {
        // Only after a system call is rip - 2 the instruction the thread
        // executed; anywhere else it might be the middle of one (and in an
        // rseq critical section the kernel would divert it).
        let behind = regs.rip.wrapping_sub(2);
        if regs.orig_rax != u64::MAX
            && regs.rip & 0xfff >= 2
            && os::ptrace_peek(tid, behind).is_ok_and(is_syscall_word)
        {
            return Ok(Insn::Behind(behind));
        }
        if let Some(a) = vdso_syscall(pid)? {
            return Ok(Insn::Vdso(a));
        }
    }
    let (word_addr, _) = poke_site(regs.rip);
    let word = os::ptrace_peek(tid, word_addr)
        .map_err(|e| e.context("read the text word to put a syscall instruction in"))?;
    Ok(Insn::Poked {
        addr: regs.rip,
        word_addr,
        word,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_instructions_are_found_and_placed() {
        assert!(is_syscall_word(0x1122_3344_5566_050f));
        assert!(!is_syscall_word(0x1122_3344_5566_0f05));
        assert!(!is_syscall_word(0x050f_0000));
        assert_eq!(find_syscall(&[0x90, 0x0f, 0x0f, 0x05, 0xc3]), Some(2));
        assert_eq!(find_syscall(&[0x05, 0x0f]), None);
        assert_eq!(find_syscall(&[]), None);

        // Inside a page: the word ends at rip + 2; at a page's start: it
        // starts at rip.
        assert_eq!(poke_site(0x40_1234), (0x40_122e, 6));
        assert_eq!(poke_site(0x40_1006), (0x40_1000, 6));
        assert_eq!(poke_site(0x40_1005), (0x40_1005, 0));
        assert_eq!(poke_site(0x40_1000), (0x40_1000, 0));
        let w = 0x8877_6655_4433_2211u64;
        assert_eq!(with_syscall(w, 6), 0x050f_6655_4433_2211);
        assert_eq!(with_syscall(w, 0), 0x8877_6655_4433_050f);
        // The bytes at rip are 0f 05 whichever site was chosen.
        for rip in [0x40_1234u64, 0x40_1001, 0x40_1fff] {
            let (at, off) = poke_site(rip);
            let bytes = with_syscall(w, off).to_le_bytes();
            let i = (rip - at) as usize;
            assert_eq!(&bytes[i..i + 2], &[0x0f, 0x05], "rip {rip:#x}");
        }
    }
}
