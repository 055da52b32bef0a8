//! Holding the target: in its trigger open (ckpt/engine/openhold.rs), or
//! by waiting until a stop the probe sent has taken hold of every thread;
//! and letting it go on.

use super::Engine;
use super::openhold::{HeldOpen, OpenHold};
use super::target::Target;
use crate::ckpt::procfs::{self, StatFile};
use crate::{Error, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Lets a held target run on.
pub fn cont(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
}

/// The target stops on its way out of the trigger syscall: every thread
/// (the group stop reaches them one by one), so that none runs while user
/// space reads or writes its memory.
pub(crate) fn wait_stopped(pid: i32, stat: Option<&StatFile>) -> Result<()> {
    if wait_stopped_for(pid, stat, Duration::from_secs(10))? {
        return Ok(());
    }
    Err(Error::new(format!(
        "pid {pid} did not stop at its trigger within 10 s"
    )))
}

/// `wait_stopped` for at most `limit`: whether it stopped.
fn wait_stopped_for(pid: i32, stat: Option<&StatFile>, limit: Duration) -> Result<bool> {
    let deadline = Instant::now() + limit;
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
            Some(('T' | 't', 1)) => return Ok(true),
            Some(('T' | 't', _)) if procfs::all_threads_stopped(pid) == Some(true) => {
                return Ok(true);
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        spin += 1;
        if spin > 100 {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::thread::yield_now();
        }
    }
}

/// Waits until the stop of `pid` has taken every thread; without an
/// open-hold as `wait_stopped`, with one answering its opens meanwhile
/// (`opens`, the ones taken already, first).
pub(super) fn wait_stopped_answering(
    hold: Option<&OpenHold>,
    opens: &mut VecDeque<HeldOpen>,
    pid: i32,
    stat: Option<&StatFile>,
) -> Result<()> {
    let Some(h) = hold else {
        return wait_stopped(pid, stat);
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        opens.extend(h.opens_of(pid)?);
        while let Some(o) = opens.pop_front() {
            h.allow(o)?;
        }
        match wait_stopped_for(pid, stat, Duration::from_millis(1))? {
            true => return Ok(()),
            false if Instant::now() < deadline => {}
            false => {
                return Err(Error::new(format!(
                    "pid {pid} did not stop at its trigger within 10 s"
                )));
            }
        }
    }
}

/// Turns a hold in the trigger open (`held`) into a stop: the stop is
/// taken on the way out of the open, before the target runs an
/// instruction of its own. Nothing to do if it is not held in its open.
pub(super) fn open_to_stop(
    hold: Option<&OpenHold>,
    held: &mut Option<HeldOpen>,
    opens: &mut VecDeque<HeldOpen>,
    pid: i32,
    stat: Option<&StatFile>,
) -> Result<()> {
    let Some(o) = held.take() else {
        return Ok(());
    };
    let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
    if let Some(h) = hold {
        h.allow(o)?;
    }
    wait_stopped_answering(hold, opens, pid, stat)
}

/// How long a request's open is waited for without sleeping.
const OPEN_SPIN: Duration = Duration::from_micros(200);

impl Engine {
    /// Moves the opens the target made in the trigger directory since the
    /// last look into `t.opens` (everyone else's go on at once).
    pub(super) fn take_opens(&mut self, t: &mut Target) -> Result<()> {
        if let Some(h) = &self.open_hold {
            t.opens.extend(h.opens_of(t.pid)?);
        }
        Ok(())
    }

    /// Lets every open of the target that no request holds go on.
    pub(super) fn allow_stray_opens(&mut self, t: &mut Target) -> Result<()> {
        let Some(h) = &self.open_hold else {
            return Ok(());
        };
        while let Some(o) = t.opens.pop_front() {
            h.allow(o)?;
        }
        Ok(())
    }

    /// A request the probe said is held in the trigger open of thread
    /// `tid`: takes that open. If none comes (the open failed before
    /// asking, say), the target is stopped instead, late: `t.late_hold`.
    pub(super) fn hold_in_open(&mut self, t: &mut Target, tid: u32) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        // The open is on its way (the probe saw it begin): it comes within
        // microseconds, sooner than a sleep and a wake-up.
        let spin_until = Instant::now() + OPEN_SPIN;
        let mut running_since: Option<Instant> = None;
        loop {
            if let Some(o) = t.opens.pop_front() {
                // One thread: its only open waiting is the request's.
                t.open_held = Some(o);
                return Ok(());
            }
            // While spinning, a read of the (non-blocking) fanotify queue
            // alone: the open comes within microseconds, and reading /proc
            // for the thread's system call (an open, a read and a close)
            // would only delay noticing it.
            let spinning = Instant::now() < spin_until;
            if let Some(h) = &self.open_hold
                && !spinning
            {
                let mut fds = [nix::poll::PollFd::new(
                    h.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1u8));
            }
            self.take_opens(t)?;
            if !t.opens.is_empty() {
                continue;
            }
            if spinning {
                std::hint::spin_loop();
                continue;
            }
            // Out of the open already, or stuck running: it will not come.
            let gone_on = match procfs::task_syscall(t.pid, tid) {
                None => return Err(Error::new(format!("pid {} exited at its request", t.pid))),
                Some(procfs::InSyscall::No(nr)) => !procfs::is_open_syscall(nr),
                Some(procfs::InSyscall::Running) => {
                    let since = *running_since.get_or_insert_with(Instant::now);
                    since.elapsed() > Duration::from_millis(200)
                }
            };
            if gone_on || Instant::now() > deadline {
                let _ = kill(Pid::from_raw(t.pid), Signal::SIGSTOP);
                t.late_hold = true;
                return Ok(());
            }
        }
    }

    /// Waits until the target is held for the request being served: at
    /// once if in its open, else until its stop has taken every thread
    /// (answering its opens meanwhile: the thread that asked may wait in
    /// one before it can stop).
    pub(super) fn wait_held(&mut self, t: &mut Target) -> Result<()> {
        if t.open_held.is_some() {
            return Ok(());
        }
        wait_stopped_answering(
            self.open_hold.as_ref(),
            &mut t.opens,
            t.pid,
            t.files.stat.as_ref(),
        )
    }

    /// Turns a hold in the trigger open into a stop, for what needs the
    /// target stopped (ptrace cannot stop a thread that waits for the
    /// answer: that wait is killable only).
    pub(super) fn stop_instead_of_open(&mut self, t: &mut Target) -> Result<()> {
        open_to_stop(
            self.open_hold.as_ref(),
            &mut t.open_held,
            &mut t.opens,
            t.pid,
            t.files.stat.as_ref(),
        )
    }

    /// The request is done: the target goes on (its open answered, or
    /// continued).
    pub(super) fn release(&mut self, t: &mut Target) -> Result<()> {
        t.late_hold = false;
        match (t.open_held.take(), &self.open_hold) {
            (Some(o), Some(h)) => h.allow(o),
            _ => {
                cont(t.pid);
                Ok(())
            }
        }
    }
}
