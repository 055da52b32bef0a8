//! What the watchdog is told about an injection, and its recovery after bpfckpt died.

use super::access::{inject_mask, read_status};
use super::nr;
use super::tracee::Tracee;
use crate::Result;
use crate::os::{self, Regs, WaitStatus};
use std::time::{Duration, Instant};

/// What the watchdog needs to undo an injection: the thread's registers
/// and mask before it, the instruction used and the text word if one was
/// rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub pid: i32,
    pub tid: i32,
    pub regs: Regs,
    pub sigmask: u64,
    /// Address of the `syscall` instruction the calls run through.
    pub insn: u64,
    /// The text word changed to hold it: (address, original word).
    pub poke: Option<(u64, u64)>,
}

/// One line to the watchdog about an injection (`ckpt/watchdog.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// `hold PID`: this process was stopped for an injection: continue it
    /// if bpfckpt dies.
    Hold(i32),
    /// `release PID`: it runs again.
    Release(i32),
    /// `inject PID TID MASK INSN R0..R26 [poke ADDR WORD]` (hex): the state to
    /// put back if bpfckpt dies before `injected`.
    Inject(Box<Saved>),
    /// `call TID NR FD`: system call NR is about to run; FD 1 when it returns
    /// a descriptor the target must not keep.
    Call { tid: i32, nr: u64, makes_fd: bool },
    /// `owns TID FD`: the target holds descriptor FD made by the injection
    /// (-1: none any more).
    Owns { tid: i32, fd: Option<i32> },
    /// `injected TID`: the registers are back and the thread is detached.
    Injected(i32),
}

impl Note {
    pub fn to_line(&self) -> String {
        match self {
            Note::Hold(pid) => format!("hold {pid}\n"),
            Note::Release(pid) => format!("release {pid}\n"),
            Note::Inject(s) => {
                let mut l = format!("inject {} {} {:x} {:x}", s.pid, s.tid, s.sigmask, s.insn);
                for r in s.regs.to_array() {
                    l.push_str(&format!(" {r:x}"));
                }
                if let Some((addr, word)) = s.poke {
                    l.push_str(&format!(" poke {addr:x} {word:x}"));
                }
                l.push('\n');
                l
            }
            Note::Call { tid, nr, makes_fd } => {
                format!("call {tid} {nr} {}\n", u8::from(*makes_fd))
            }
            Note::Owns { tid, fd } => format!("owns {tid} {}\n", fd.unwrap_or(-1)),
            Note::Injected(tid) => format!("injected {tid}\n"),
        }
    }

    /// The inverse of [`Note::to_line`]; `None` for any other line.
    pub fn parse(line: &str) -> Option<Note> {
        let mut w = line.split_ascii_whitespace();
        let kind = w.next()?;
        let pos = |s: Option<&str>| s?.parse::<i32>().ok().filter(|&p| p > 0);
        let hex = |s: Option<&str>| u64::from_str_radix(s?, 16).ok();
        let note = match kind {
            "hold" => Note::Hold(pos(w.next())?),
            "release" => Note::Release(pos(w.next())?),
            "injected" => Note::Injected(pos(w.next())?),
            "call" => Note::Call {
                tid: pos(w.next())?,
                nr: w.next()?.parse().ok()?,
                makes_fd: match w.next()? {
                    "0" => false,
                    "1" => true,
                    _ => return None,
                },
            },
            "owns" => Note::Owns {
                tid: pos(w.next())?,
                fd: match w.next()?.parse::<i32>().ok()? {
                    -1 => None,
                    fd if fd >= 0 => Some(fd),
                    _ => return None,
                },
            },
            "inject" => {
                let pid = pos(w.next())?;
                let tid = pos(w.next())?;
                let sigmask = hex(w.next())?;
                let insn = hex(w.next())?;
                let mut a = [0u64; Regs::COUNT];
                for r in a.iter_mut() {
                    *r = hex(w.next())?;
                }
                let poke = match w.next() {
                    None => None,
                    Some("poke") => Some((hex(w.next())?, hex(w.next())?)),
                    Some(_) => return None,
                };
                Note::Inject(Box::new(Saved {
                    pid,
                    tid,
                    regs: Regs::from_array(a),
                    sigmask,
                    insn,
                    poke,
                }))
            }
            _ => return None,
        };
        w.next().is_none().then_some(note)
    }
}

/// An injection as the watchdog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub saved: Saved,
    /// The last system call set up: number, and whether it makes a descriptor.
    pub call: Option<(u64, bool)>,
    /// A descriptor the injection made in the target and has not closed.
    pub owned_fd: Option<i32>,
}

/// Which descriptor the recovery of `p` must close in the target, given the
/// thread's registers `cur` after bpfckpt died: a call that ran left `rip`
/// just past the instruction with its number in `orig_rax`.
pub fn fd_to_close(p: &Pending, cur: &Regs) -> Option<i32> {
    // Registers equal to the saved ones: nothing of ours is in flight (the
    // thread may have stopped after the very call we inject).
    let ran = |nr: u64| cur != &p.saved.regs && cur.rip == p.saved.insn + 2 && cur.orig_rax == nr;
    match p.call {
        Some((nr, true)) if ran(nr) => {
            let r = cur.rax as i64;
            (0..=i64::from(i32::MAX)).contains(&r).then_some(r as i32)
        }
        Some((nr::CLOSE, false)) if ran(nr::CLOSE) => None,
        _ => p.owned_fd,
    }
}

/// Puts back what injection `p` changed, after bpfckpt died: seizes the
/// thread (as soon as the dead tracer has let go of it), closes a
/// descriptor the injection left in the target, restores registers, mask
/// and text, and detaches (a group-stopped target stays so). Says what it did.
pub fn recover(p: &Pending) -> Result<String> {
    let s = &p.saved;
    let (pid, tid) = (s.pid, s.tid);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match os::ptrace_seize(tid, os::PTRACE_O_TRACESYSGOOD) {
            Ok(()) => break,
            // The dying tracer has not let go yet.
            Err(e) if e.errno == Some(libc::EPERM) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.errno == Some(libc::ESRCH) => {
                return Ok(format!("thread {tid} of pid {pid} is gone"));
            }
            Err(e) => return Err(e),
        }
    }
    match os::waitpid_thread(tid, true)? {
        Some(WaitStatus::Stopped { .. }) => {}
        Some(WaitStatus::Exited(_)) | Some(WaitStatus::Signaled(_)) => {
            return Ok(format!("thread {tid} of pid {pid} is gone"));
        }
        _ => {
            // On its way back into the group stop: trap it there.
            os::ptrace_interrupt(tid)?;
            match os::waitpid_thread(tid, false)? {
                Some(WaitStatus::Stopped { .. }) => {}
                _ => return Ok(format!("thread {tid} of pid {pid} is gone")),
            }
        }
    }
    let cur = os::ptrace_getregs(tid)?;
    let mut what = String::new();
    if let Some(fd) = fd_to_close(p, &cur) {
        let mut t = Tracee {
            pid,
            tid,
            insn: s.insn,
            base: s.regs,
            stop_again: None,
            continued: false,
        };
        let pending = read_status(pid, tid).map_or(!0, |st| st.sig_pnd | st.shd_pnd);
        os::ptrace_setsigmask(tid, inject_mask(s.sigmask, pending))?;
        let closed = t
            .set_call(nr::CLOSE, &[fd as u64])
            .and_then(|()| t.run(nr::CLOSE));
        what = match closed {
            Ok(0) => format!(", closed its descriptor {fd}"),
            Ok(e) => format!(", close({fd}) failed ({e})"),
            Err(e) => format!(", close({fd}) failed: {e}"),
        };
        if let Some(sig) = t.stop_again {
            let _ = os::tgkill(pid, pid, sig);
        }
    }
    os::ptrace_setregs(tid, &s.regs)?;
    if let Some((addr, word)) = s.poke {
        os::ptrace_poke(tid, addr, word)?;
        what.push_str(&format!(", text at {addr:#x} put back"));
    }
    os::ptrace_setsigmask(tid, s.sigmask)?;
    os::ptrace_detach(tid, 0)?;
    Ok(format!(
        "put back the registers of thread {tid} of pid {pid}{what}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(poke: Option<(u64, u64)>) -> Saved {
        let mut a = [0u64; Regs::COUNT];
        for (i, r) in a.iter_mut().enumerate() {
            *r = (i as u64 + 1) * 0x0101_0101_0101_0101;
        }
        a[15] = u64::MAX; // orig_rax -1
        Saved {
            pid: 4242,
            tid: 4243,
            regs: Regs::from_array(a),
            sigmask: 0x8000_0000_0001_0000,
            insn: 0x7fff_1234_5678,
            poke,
        }
    }

    #[test]
    fn watchdog_lines_round_trip() {
        let s = saved(None);
        assert_eq!(Regs::from_array(s.regs.to_array()), s.regs);
        assert_eq!(s.regs.r15, 0x0101_0101_0101_0101);
        assert_eq!(s.regs.gs, 27 * 0x0101_0101_0101_0101);
        for n in [
            Note::Hold(7),
            Note::Release(7),
            Note::Inject(Box::new(s.clone())),
            Note::Inject(Box::new(saved(Some((0x40_1000, 0xdead_beef))))),
            Note::Call {
                tid: 9,
                nr: nr::USERFAULTFD,
                makes_fd: true,
            },
            Note::Call {
                tid: 9,
                nr: nr::CLOSE,
                makes_fd: false,
            },
            Note::Owns {
                tid: 9,
                fd: Some(0),
            },
            Note::Owns { tid: 9, fd: None },
            Note::Injected(9),
        ] {
            let line = n.to_line();
            assert!(
                line.ends_with('\n') && line.lines().count() == 1,
                "{line:?}"
            );
            assert_eq!(Note::parse(&line), Some(n), "{line:?}");
        }
        let line = Note::Inject(Box::new(s)).to_line();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 5 + Regs::COUNT);
        // Truncated, extended, or malformed lines are not taken.
        let cut = words[..words.len() - 1].join(" ");
        assert_eq!(Note::parse(&cut), None);
        assert_eq!(Note::parse(&format!("{} x", line.trim_end())), None);
        assert_eq!(Note::parse(&format!("{} poke 1", line.trim_end())), None);
        for bad in [
            "",
            "hold",
            "hold -1",
            "hold 0",
            "hold 1 2",
            "call 1 3 2",
            "call 1 x 1",
            "owns 1 -2",
            "injected x",
            "serve 5",
        ] {
            assert_eq!(Note::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn recovery_closes_only_what_the_injection_left() {
        let s = saved(None);
        let insn = s.insn;
        let mut p = Pending {
            saved: s.clone(),
            call: Some((nr::USERFAULTFD, true)),
            owned_fd: None,
        };
        let set = {
            let mut r = s.regs;
            r.rip = insn;
            r.rax = nr::USERFAULTFD;
            r.orig_rax = u64::MAX;
            r
        };
        let ran = |nr: u64, rax: i64| {
            let mut r = set;
            r.rip = insn + 2;
            r.orig_rax = nr;
            r.rax = rax as u64;
            r
        };
        // Set up but not run: nothing to close.
        assert_eq!(fd_to_close(&p, &set), None);
        // Ran: its result is the descriptor.
        assert_eq!(fd_to_close(&p, &ran(nr::USERFAULTFD, 5)), Some(5));
        assert_eq!(fd_to_close(&p, &ran(nr::USERFAULTFD, -22)), None);
        // Known from `owns`, then the close set up (not run) or run.
        p.owned_fd = Some(5);
        p.call = Some((nr::CLOSE, false));
        assert_eq!(fd_to_close(&p, &set), Some(5));
        assert_eq!(fd_to_close(&p, &ran(nr::CLOSE, 0)), None);
        // The thread had stopped after that very call itself, and its
        // registers are back: nothing of ours is in flight.
        let mut own = s.clone();
        own.regs.rip = insn + 2;
        own.regs.orig_rax = nr::USERFAULTFD;
        own.regs.rax = 3;
        let p = Pending {
            saved: own.clone(),
            call: Some((nr::USERFAULTFD, true)),
            owned_fd: None,
        };
        assert_eq!(fd_to_close(&p, &own.regs), None);
    }
}
