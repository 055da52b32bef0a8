//! The event loop and the target's lifecycle: waiting for a watched exec,
//! serving one target until it is gone, holding and releasing it.

use super::hold::cont;
use super::target::Target;
use super::{Engine, Outcome, Waiter};
use crate::ckpt::events::Event;
use crate::ckpt::probes::StateField;
use crate::ckpt::procfs;
use crate::ckpt::report::{J, Stats};
use crate::ckpt::touched::Written;
use crate::{Error, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long the event loop polls without sleeping after events.
const BUSY_SPIN: Duration = Duration::from_micros(300);

impl Engine {
    /// Waits for a process whose exec matches the watch name (and `exe`, if
    /// given). It is held at its exec; returns its pid, still held.
    pub fn wait_for_exec(
        &mut self,
        exe: Option<&std::path::Path>,
    ) -> Result<std::result::Result<i32, Signal>> {
        loop {
            if let Some(sig) = self.pending_signal() {
                return Ok(Err(sig));
            }
            if let Some(h) = &self.open_hold {
                // Nobody is served yet: every open in the directory goes on.
                for o in h.opens_of(0)? {
                    h.allow(o)?;
                }
            }
            let wait = if self.open_hold.is_some() { 5 } else { 100 };
            for ev in self.probes.poll(Duration::from_millis(wait))? {
                let Event::Exec { tgid, held: true } = ev else {
                    continue;
                };
                let pid = tgid as i32;
                if let Some(exe) = exe {
                    let real = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                    if real.as_deref() != Some(exe) {
                        cont(pid);
                        continue;
                    }
                }
                return Ok(Ok(pid));
            }
        }
    }

    fn pending_signal(&mut self) -> Option<Signal> {
        match self.signals.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }

    /// Serves `pid` until it is gone. `release` lets the target go once the
    /// probes are set up for it (it is held at its exec, or gated).
    pub fn serve(
        &mut self,
        pid: i32,
        mut waiter: Waiter,
        release: impl FnOnce() -> Result<()>,
    ) -> Result<Outcome> {
        self.watchdog.serving(pid);
        let mut t = Target {
            pid,
            regions: Rc::new(Vec::new()),
            maps: Vec::new(),
            applied_seq: u64::MAX,
            history: VecDeque::new(),
            thread_stacks: Vec::new(),
            odd_stacks_reported: Default::default(),
            layout_dirty: true,
            layout_failures: 0,
            lost_seen: self.probes.state(StateField::Lost)?,
            store: None,
            image: None,
            tracker: None,
            files: super::target::ProcFiles::new(pid),
            opens: VecDeque::new(),
            open_held: None,
            late_hold: false,
            busy: false,
            stats: Stats::default(),
        };
        self.start_serving(pid)?;
        let result = self
            .apply_layout(&mut t)
            .and_then(|()| self.seed_written(&t))
            .and_then(|()| release())
            .and_then(|()| self.serve_loop(&mut t, &mut waiter));
        self.stop_serving(&mut t);
        self.total.add(&t.stats);
        self.report().summary(&format!("pid {pid}"), &t.stats);
        if let (Err(_), Waiter::Child(c)) = (&result, &mut waiter) {
            // The session failed: don't leave an orphan waiting for markers.
            let _ = c.kill();
            let _ = c.wait();
        }
        result
    }

    fn start_serving(&mut self, pid: i32) -> Result<()> {
        self.cfg.tgid = pid as u32;
        self.cfg.flags = self.flags(0);
        self.cfg.applied_seq = u64::MAX;
        self.cfg.capacity = 0;
        self.drop_image_config();
        self.push_config()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        self.report().event(
            "target",
            &format!("serving pid {pid} ({exe})"),
            &[("pid", J::N(pid as u64)), ("exe", J::S(&exe))],
        );
        Ok(())
    }

    /// The events of the probes, waiting up to `timeout` for one; with
    /// opens held, their permission events too, read first: an open's
    /// request (recorded at the open's start) is then among the events.
    ///
    /// Right after events the next ones often follow within microseconds
    /// (a target cycling through requests): for `BUSY_SPIN` it polls
    /// without sleeping, sparing the wake-up of an idle CPU. An idle target
    /// costs nothing: only after events.
    fn next_events(&mut self, t: &mut Target, timeout: Duration) -> Result<Vec<Event>> {
        let until = t.busy.then(|| Instant::now() + BUSY_SPIN);
        loop {
            let spinning = until.is_some_and(|u| Instant::now() < u);
            let wait = if spinning { Duration::ZERO } else { timeout };
            let events = self.wait_events(t, wait)?;
            if !events.is_empty() || !t.opens.is_empty() || !spinning {
                t.busy = !events.is_empty();
                return Ok(events);
            }
            std::hint::spin_loop();
        }
    }

    fn wait_events(&mut self, t: &mut Target, timeout: Duration) -> Result<Vec<Event>> {
        let Some(h) = &self.open_hold else {
            return self.probes.poll(timeout);
        };
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(self.probes.ring_fd(), PollFlags::POLLIN),
            PollFd::new(h.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("poll", e as i32)),
        }
        self.take_opens(t)?;
        self.probes.poll(Duration::ZERO)
    }

    /// Lets go every open of the target bpfckpt still holds.
    fn release_all(&mut self, t: &mut Target) {
        if let (Some(o), Some(h)) = (t.open_held.take(), &self.open_hold) {
            let _ = h.allow(o);
        }
        let _ = self.allow_stray_opens(t);
    }

    /// Whatever happened: stop serving, never leave the target stopped.
    fn stop_serving(&mut self, t: &mut Target) {
        self.release_all(t);
        self.cfg.tgid = 0;
        self.cfg.flags = 0;
        let _ = self.push_config();
        let _ = self.probes.bitmaps().forget(t.pid, None);
        self.probes.remove_store();
        if procfs::process_state(t.pid).is_some_and(|s| s == 'T') {
            cont(t.pid);
        }
        self.watchdog.idle();
    }

    /// The probes must not use the image any more.
    pub(super) fn drop_image_config(&mut self) {
        self.cfg.image_slots = 0;
        self.cfg.nzero = 0;
        self.cfg.zero_pages = 0;
        self.cfg.image_seq = u64::MAX;
    }

    fn serve_loop(&mut self, t: &mut Target, waiter: &mut Waiter) -> Result<Outcome> {
        loop {
            if let Some(sig) = self.pending_signal() {
                if let Waiter::Child(c) = waiter {
                    let _ = kill(Pid::from_raw(c.id() as i32), sig);
                    let _ = c.wait();
                }
                return Ok(Outcome::Interrupted(sig));
            }
            let events = self.next_events(t, Duration::from_millis(50))?;
            if self.probes.state(StateField::Lost)? != t.lost_seen {
                self.release_all(t);
                cont(t.pid);
                return Err(Error::new(format!(
                    "the probes could not report a request of pid {} (ring buffer full); released it",
                    t.pid
                )));
            }
            for ev in &events {
                let done = self
                    .dispatch(t, ev)
                    .and_then(|()| self.allow_stray_opens(t));
                if let Err(e) = done {
                    // A target that dies while held is an outcome, not an
                    // error of ours: report it and end with its status.
                    if let Some(out) = gone_soon(t.pid, waiter) {
                        self.report().warn(&format!(
                            "pid {} ended in the middle of a request ({e})",
                            t.pid
                        ));
                        return Ok(out);
                    }
                    return Err(e);
                }
            }
            self.allow_stray_opens(t)?;
            if let Some(out) = gone(t.pid, waiter) {
                return Ok(out);
            }
            if let Some(out) = self.refresh_layout(t, waiter)? {
                return Ok(out);
            }
        }
    }

    /// Rereads the layout when it changed. An exec swaps the mm under /proc
    /// readers: a failure is retried on the next round (the exec event marks
    /// the table dirty), but not forever.
    fn refresh_layout(&mut self, t: &mut Target, waiter: &mut Waiter) -> Result<Option<Outcome>> {
        if !t.layout_dirty {
            return Ok(None);
        }
        match self.apply_layout(t) {
            Ok(()) => {
                t.layout_failures = 0;
                Ok(None)
            }
            Err(e) => {
                // An exiting target loses its mm before it can be reaped.
                if let Some(out) = gone_soon(t.pid, waiter) {
                    return Ok(Some(out));
                }
                t.layout_failures += 1;
                if t.layout_failures > 20 {
                    return Err(e.context(format!("reading the mappings of pid {}", t.pid)));
                }
                Ok(None)
            }
        }
    }

    fn dispatch(&mut self, t: &mut Target, ev: &Event) -> Result<()> {
        if ev.tgid() != t.pid as u32 {
            if let Event::Exec { tgid, held: true } = ev {
                // `watch` matched another process while busy.
                cont(*tgid as i32);
                self.report().warn(&format!(
                    "pid {tgid} matches the watched name but pid {} is being served; not serving it",
                    t.pid
                ));
            }
            return Ok(());
        }
        match ev {
            Event::Layout { .. } => {
                t.layout_dirty = true;
                Ok(())
            }
            Event::Exec { .. } => {
                self.on_exec(t);
                Ok(())
            }
            Event::Clone { tid, stack, .. } => {
                // A reused thread id is a new thread.
                t.thread_stacks.retain(|&(other, _)| other != *tid);
                t.thread_stacks.push((*tid, *stack));
                t.layout_dirty = true;
                Ok(())
            }
            Event::Checkpoint(c) => self.on_checkpoint(t, c),
            Event::Restore(r) => self.on_restore(t, r),
        }
    }

    fn on_exec(&mut self, t: &mut Target) {
        t.layout_dirty = true;
        // A new address space: the old tracker's protections are gone, and
        // the files bound to the old one are of no use.
        t.tracker = None;
        t.files.exec();
        self.cfg.flags &= !crate::ckpt::abi::F_WP_PER_PAGE;
        // A checkpoint of the old program must never be written into the
        // new one.
        if t.image.take().is_some() {
            self.drop_image_config();
            self.report().warn(&format!(
                "pid {} called exec: its checkpoint belongs to the old program and is dropped",
                t.pid
            ));
        }
    }

    /// The touched-page bitmaps of `pid`'s current image, or untracked.
    pub(super) fn written(&self, pid: i32) -> Result<Written> {
        if self.exhaustive() || self.probes.state(StateField::Untracked)? != 0 {
            return Ok(Written::untracked());
        }
        self.probes.bitmaps().written(pid, self.image_gen()?)
    }

    /// Records pages written from user space in the bitmaps.
    pub(super) fn mark_written(&self, pid: i32, addrs: impl Iterator<Item = u64>) -> Result<()> {
        if self.exhaustive() {
            return Ok(());
        }
        self.probes.bitmaps().mark(pid, self.image_gen()?, addrs)
    }

    /// The program-image number the probes key the bitmaps with.
    pub(super) fn image_gen(&self) -> Result<u32> {
        Ok(self.probes.state(StateField::ExecGen)? as u32)
    }
}

fn alive(pid: i32) -> bool {
    procfs::process_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// `gone`, allowing an exiting process a moment to become reapable.
fn gone_soon(pid: i32, waiter: &mut Waiter) -> Option<Outcome> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        if let Some(o) = gone(pid, waiter) {
            return Some(o);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn gone(pid: i32, waiter: &mut Waiter) -> Option<Outcome> {
    match waiter {
        Waiter::Child(c) => match c.try_wait() {
            Ok(Some(st)) => Some(Outcome::Exited(st)),
            Ok(None) => None,
            Err(_) => Some(Outcome::Gone),
        },
        Waiter::Pid => (!alive(pid)).then_some(Outcome::Gone),
    }
}
