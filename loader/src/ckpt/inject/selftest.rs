//! The hidden `__inject-selftest` subcommand (for tests).

use super::injection::{Injection, Options};
use super::{
    Step, UFFD_FEATURE_WP_ASYNC, UFFD_FEATURE_WP_UNPOPULATED, UFFD_USER_MODE_ONLY,
    UFFDIO_REGISTER_MODE_WP, nr,
};
use crate::Error;
use crate::ckpt::watchdog::Watchdog;
use crate::os;
use std::os::fd::AsFd;
use std::time::Duration;

/// What `bpfckpt __inject-selftest` does: inject into `pid`, print each
/// step, optionally pause (for ever) after one so that a test can kill it
/// there.
pub struct SelftestArgs {
    pub pid: i32,
    pub tid: Option<i32>,
    /// `getpid` or `uffd`.
    pub call: String,
    /// `uffd`: register `[addr, addr + len)` of the target for write-protect.
    pub register: Option<(u64, u64)>,
    pub pause_after: Option<Step>,
    pub force_poke: bool,
    pub watchdog: bool,
    /// `uffd`: keep the userfaultfd open until standard input ends.
    pub hold: bool,
}

/// The body of `__inject-selftest`; its exit code (2: refused).
pub fn selftest_main(a: &SelftestArgs) -> u8 {
    use std::io::Write;
    let mut wd = None;
    if a.watchdog {
        match Watchdog::spawn() {
            Ok(w) => wd = Some(w),
            Err(e) => {
                eprintln!("bpfckpt: error: {e}");
                return 1;
            }
        }
    }
    let pause = a.pause_after;
    let mut observer = |s: Step| {
        println!("step {}", s.name());
        if Some(s) == pause {
            println!("paused {}", s.name());
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let _ = std::io::stdout().flush();
    };
    let opts = Options {
        watchdog: wd.as_mut(),
        observer: Some(&mut observer),
        force_poke: a.force_poke,
    };
    let tid = a.tid.unwrap_or(a.pid);
    let mut inj = match Injection::begin(a.pid, tid, opts) {
        Ok(i) => i,
        Err(r) => {
            eprintln!("bpfckpt: {r}");
            return 2;
        }
    };
    if let Some(i) = inj.insn() {
        println!("insn {i}");
    }
    let out = match a.call.as_str() {
        "getpid" => {
            let r = inj.syscall(nr::GETPID, &[]);
            inj.end().and(r).map(|r| {
                println!("getpid {r}");
                None
            })
        }
        "uffd" => {
            let flags = libc::O_CLOEXEC as u64 | UFFD_USER_MODE_ONLY;
            let fd = inj.fetch_fd(nr::USERFAULTFD, &[flags]);
            inj.end().and(fd).map(Some)
        }
        other => Err(Error::new(format!("unknown --call {other}"))),
    };
    let uffd = match out {
        Ok(u) => u,
        Err(e) => {
            eprintln!("bpfckpt: error: {e}");
            return 1;
        }
    };
    if let Some(uffd) = uffd {
        let r = os::uffdio_api(
            uffd.as_fd(),
            UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
        )
        .and_then(|(features, _)| {
            println!("uffd api features={features:#x}");
            match a.register {
                Some((addr, len)) => {
                    os::uffdio_register(uffd.as_fd(), addr, len, UFFDIO_REGISTER_MODE_WP).map(
                        |ioctls| println!("uffd registered {addr:#x}+{len:#x} ioctls={ioctls:#x}"),
                    )
                }
                None => Ok(()),
            }
        });
        if let Err(e) = r {
            eprintln!("bpfckpt: error: {e}");
            return 1;
        }
        if a.hold {
            println!("holding");
            let _ = std::io::stdout().flush();
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        }
    }
    println!("done");
    0
}
