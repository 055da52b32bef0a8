//! Holding a one-thread target inside its trigger `open` instead of
//! stopping it with SIGSTOP: a fanotify group asks for a permission event
//! at every open in the trigger directory, and the opener waits in the
//! kernel until bpfckpt answers. The target never stops, its parent sees no
//! stop and no continue, and nothing has to poll `/proc` to learn that it
//! stopped: a request costs two system calls instead. Only for a private
//! trigger directory (no one else's opens should wait on bpfckpt); a
//! multi-threaded target is still stopped (its other threads run on).
//!
//! bpfckpt creates its completion markers there with `mknod`, which opens
//! nothing: an open of its own would wait for its own answer. If bpfckpt
//! dies, the kernel lets every waiting open go on.

use crate::os::{self, FanEvent};
use crate::{Error, Result};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `FAN_OPEN_PERM`.
const OPEN_PERM: u64 = 0x0001_0000;

/// How a one-thread target is held at its requests (`--hold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldChoice {
    /// In its open if the trigger directory is private and the kernel has
    /// fanotify permission events, else SIGSTOP.
    Auto,
    /// Always SIGSTOP.
    Signal,
    /// In its open, or an error.
    Open,
}

pub(crate) struct OpenHold {
    fan: OwnedFd,
}

/// A target's open that waits for our answer.
pub(crate) struct HeldOpen {
    fd: OwnedFd,
}

impl OpenHold {
    /// Starts answering the opens in `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        let fan = os::fanotify_perm_group().map_err(|e| {
            e.context(
                "fanotify permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS, CAP_SYS_ADMIN)",
            )
        })?;
        os::fanotify_mark_opens_in(fan.as_fd(), dir)?;
        Ok(Self { fan })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fan.as_fd()
    }

    /// Reads the events queued now: every open by another process goes on
    /// at once; the opens of process `pid` are returned, oldest first, to
    /// be answered later.
    pub fn opens_of(&self, pid: i32) -> Result<Vec<HeldOpen>> {
        let mut mine = Vec::new();
        for FanEvent { pid: who, mask, fd } in os::fanotify_read(self.fan.as_fd())? {
            let Some(fd) = fd else {
                continue;
            };
            if who == pid && mask & OPEN_PERM != 0 {
                mine.push(HeldOpen { fd });
            } else {
                os::fanotify_allow(self.fan.as_fd(), fd.as_fd())?;
            }
        }
        Ok(mine)
    }

    /// Lets a held open go on.
    pub fn allow(&self, h: HeldOpen) -> Result<()> {
        os::fanotify_allow(self.fan.as_fd(), h.fd.as_fd())
    }
}

/// Whether only its owner can create files in `dir` (not group or world
/// writable), so that holding every open there holds no one else.
pub fn private_dir(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|m| m.is_dir() && m.mode() & 0o022 == 0)
}

/// The open-hold to use for `dir`, if any, and why not otherwise.
pub fn choose(choice: HoldChoice, dir: &Path) -> Result<(Option<OpenHold>, String)> {
    match choice {
        HoldChoice::Signal => Ok((None, "--hold signal".into())),
        HoldChoice::Open => OpenHold::new(dir)
            .map(|h| (Some(h), String::new()))
            .map_err(|e| Error::new(format!("--hold open: {e}"))),
        HoldChoice::Auto if !private_dir(dir) => {
            Ok((None, format!("{} is writable by others", dir.display())))
        }
        HoldChoice::Auto => match OpenHold::new(dir) {
            Ok(h) => Ok((Some(h), String::new())),
            Err(e) => Ok((None, e.to_string())),
        },
    }
}
