//! Seizing a group-stopped thread (`Seized`: held for `/proc/PID/mem`) and awaiting its trap.

use super::access::{Access, Reason, Refusal};
use crate::ckpt::procfs;
use crate::os::{self, WaitStatus};
use crate::{Error, Result};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

pub(super) fn wait_group_stop(pid: i32, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        match procfs::process_state(pid) {
            None | Some('Z') | Some('X') => {
                return Err(Error::sys(format!("pid {pid} exited"), libc::ESRCH));
            }
            Some('T') if procfs::all_threads_stopped(pid) == Some(true) => return Ok(()),
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Error::new(format!(
                "pid {pid} did not stop within {limit:?}"
            )));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// After `PTRACE_SEIZE` of a thread of a group-stopped process: its trap.
/// ESRCH if it exited (then it is no longer traced).
pub(super) fn await_trap(pid: i32, tid: i32) -> Result<()> {
    // Seizing a stopped thread traps it before PTRACE_SEIZE returns.
    match os::waitpid_thread(tid, true)? {
        Some(WaitStatus::Stopped {
            sig,
            event: os::PTRACE_EVENT_STOP,
        }) if sig != libc::SIGTRAP => Ok(()),
        None => {
            // Someone continued it in between: trap it to detach cleanly.
            os::ptrace_interrupt(tid)?;
            os::waitpid_thread(tid, false)?;
            Err(Error::new(format!(
                "pid {pid} was continued by someone else while being seized"
            )))
        }
        Some(WaitStatus::Exited(_)) | Some(WaitStatus::Signaled(_)) => {
            Err(Error::sys(format!("thread {tid}"), libc::ESRCH))
        }
        Some(other) => Err(Error::new(format!(
            "thread {tid}: unexpected first stop {other:?}"
        ))),
    }
}

/// A group-stopped process's main thread, seized without options (it
/// behaves as before) and trapped: what `/proc/PID/mem` lets only the
/// tracer do, it may do now (CONFIG_PROC_MEM_FORCE_PTRACE checks the
/// tracer's *thread*, so from this thread only). Detached on drop, back
/// into the group stop; bpfckpt dying detaches it the same way.
pub struct Seized {
    pid: i32,
    attached: bool,
    _not_send: PhantomData<*const ()>,
}

impl Seized {
    /// Seizes `pid`, which must be group-stopped already (held): nothing
    /// here stops or continues it.
    pub fn group_stopped(pid: i32) -> std::result::Result<Seized, Refusal> {
        let refuse = |reason| Refusal {
            pid,
            tid: pid,
            reason,
        };
        let access = Access::check(pid, pid)?;
        if access.st.state != 'T' {
            return Err(refuse(Reason::Failed(Error::new(format!(
                "it is not stopped (state {})",
                access.st.state
            )))));
        }
        access.seize(pid, pid, 0)?;
        let mut s = Seized {
            pid,
            attached: true,
            _not_send: PhantomData,
        };
        await_trap(pid, pid).map_err(|e| {
            if e.errno == Some(libc::ESRCH) {
                s.attached = false;
                refuse(Reason::Gone)
            } else {
                refuse(Reason::Failed(e))
            }
        })?;
        Ok(s)
    }

    /// Detaches and waits until the thread is back in the group stop.
    pub fn detach(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.attached) {
            return Ok(());
        }
        // The kernel puts a detached thread of a group-stopped process
        // back into the group stop (no signal is given with the detach).
        os::ptrace_detach(self.pid, 0)?;
        wait_group_stop(self.pid, Duration::from_secs(2))
            .map_err(|e| e.context(format!("pid {} after detaching", self.pid)))
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            eprintln!("bpfckpt: warning: detaching from pid {}: {e}", self.pid);
        }
    }
}
