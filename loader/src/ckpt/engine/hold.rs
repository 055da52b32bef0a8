//! Holding the target: waiting until a stop the probe sent has taken hold
//! of every thread, and letting it run on.

use crate::ckpt::procfs::{self, StatFile};
use crate::{Error, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// Lets a held target run on.
pub fn cont(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
}

/// The target stops on its way out of the trigger syscall: every thread
/// (the group stop reaches them one by one), so that none runs while user
/// space reads or writes its memory.
pub(crate) fn wait_stopped(pid: i32, stat: Option<&StatFile>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spin = 0u32;
    loop {
        let now = match stat {
            Some(f) => f.read(),
            None => procfs::process_state(pid).map(|s| (s, 0)),
        };
        match now {
            None | Some(('Z', _)) | Some(('X', _)) => {
                return Err(Error::new(format!(
                    "pid {pid} exited while held for a request"
                )));
            }
            // One thread, stopped: nothing more to ask.
            Some(('T' | 't', 1)) => return Ok(()),
            Some(('T' | 't', _)) if procfs::all_threads_stopped(pid) == Some(true) => {
                return Ok(());
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!(
                "pid {pid} did not stop at its trigger within 10 s"
            )));
        }
        spin += 1;
        if spin > 100 {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::thread::yield_now();
        }
    }
}
