//! The file protocol's paths, and creating the completion markers safely:
//! root writes into a world-writable directory, so never follow a symlink
//! and never reuse a file someone else put there.
//!
//! A marker is a new link to one file of bpfckpt's kept in the directory
//! under a hidden name (`.bpfckpt-<pid>`, made at start): on a file system that scans for
//! recently freed inodes when it allocates one (ext4), creating a file cost
//! several times a link, and the target removes each marker again.

use crate::{Error, Result};
use nix::fcntl::AtFlags;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use bpfckpt_protocol::{CHECKPOINT_DONE, CHECKPOINT_REQUEST, RESTORE_DONE, RESTORE_REQUEST};

#[derive(Debug)]
pub struct Triggers {
    pub dir: PathBuf,
    /// Create markers without opening them (`mknod`): bpfckpt holds the
    /// opens in the directory, its own would wait for itself.
    pub no_open: bool,
    /// The file every marker links to, made at start; `Err` when it cannot
    /// be (then markers are created one by one).
    spare: std::result::Result<Spare, ()>,
}

/// bpfckpt's own file in the trigger directory, held by an `O_PATH`
/// descriptor: a marker links that inode, whatever is at the name since.
#[derive(Debug)]
struct Spare {
    path: PathBuf,
    fd: OwnedFd,
    /// `linkat` takes the descriptor itself (`AT_EMPTY_PATH`: needs
    /// `CAP_DAC_READ_SEARCH` before Linux 6.10); else its `/proc` link.
    by_fd: std::cell::Cell<bool>,
}

impl Spare {
    fn make(dir: &Path) -> Option<Self> {
        remove_stale(dir);
        let path = dir.join(format!("{SPARE_PREFIX}{}", std::process::id()));
        crate::os::mknod_file(&path, 0o644).ok()?;
        // O_PATH: no open permission event (bpfckpt may hold those).
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        // The file just made, not something put at its name since.
        let ours = f.as_ref().ok().and_then(|f| {
            let st = nix::sys::stat::fstat(f.as_raw_fd()).ok()?;
            let reg = st.st_mode & libc::S_IFMT == libc::S_IFREG;
            (reg && st.st_uid == nix::unistd::geteuid().as_raw() && st.st_nlink == 1).then_some(())
        });
        match (f, ours) {
            (Ok(f), Some(())) => Some(Self {
                path,
                fd: f.into(),
                by_fd: std::cell::Cell::new(true),
            }),
            _ => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Links the spare's inode at `p`; fails if anything is there.
    fn link(&self, p: &Path) -> nix::Result<()> {
        if self.by_fd.get() {
            let empty = Path::new("");
            match nix::unistd::linkat(
                Some(self.fd.as_raw_fd()),
                empty,
                None,
                p,
                AtFlags::AT_EMPTY_PATH,
            ) {
                Err(nix::errno::Errno::ENOENT | nix::errno::Errno::EPERM) => self.by_fd.set(false),
                r => return r,
            }
        }
        let me = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        nix::unistd::linkat(None, me.as_path(), None, p, AtFlags::AT_SYMLINK_FOLLOW)
    }
}

const SPARE_PREFIX: &str = ".bpfckpt-";

/// Removes the spares of bpfckpt processes that are gone (killed): regular
/// files of ours named `.bpfckpt-<pid>` whose pid does not exist.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPARE_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = nix::sys::stat::lstat(&e.path())
            .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == me);
        if ours && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // Only if the name still is ours.
        let ours = nix::sys::stat::fstat(self.fd.as_raw_fd()).ok();
        let there = nix::sys::stat::lstat(&self.path).ok();
        if let (Some(a), Some(b)) = (ours, there)
            && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Triggers {
    pub fn new(dir: &Path, max_path: usize) -> Result<Self> {
        let mut t = Self {
            dir: dir.to_path_buf(),
            no_open: false,
            spare: Err(()),
        };
        if !dir.is_absolute() {
            return Err(Error::new(format!(
                "--trigger-dir {} must be absolute: targets open the marker paths by name",
                dir.display()
            )));
        }
        for p in [t.path(CHECKPOINT_REQUEST), t.path(RESTORE_REQUEST)] {
            if p.as_os_str().len() >= max_path {
                return Err(Error::new(format!(
                    "trigger path {} is longer than {} bytes",
                    p.display(),
                    max_path - 1
                )));
            }
        }
        // Now, before bpfckpt holds the opens in the directory: making the
        // spare opens it (O_PATH) and lists the directory, and an open of
        // bpfckpt's there would then wait for itself (it did on Linux 6.12).
        t.spare = Spare::make(dir).ok_or(());
        Ok(t)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates a completion marker: a new link to the spare, else a file
    /// created with `O_CREAT|O_EXCL|O_NOFOLLOW` (with `no_open`, `mknod`,
    /// which never follows a symlink either). A file or symlink already at
    /// that path is refused, not followed or reused.
    pub fn create(&mut self, name: &str) -> Result<()> {
        let p = self.path(name);
        let linked = match self.spare.as_ref().map(|s| s.link(&p)) {
            Ok(Ok(())) => Some(Ok(())),
            Ok(Err(nix::errno::Errno::EEXIST)) => {
                Some(Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists)))
            }
            Ok(Err(_)) => {
                // Removed by someone else, or links refused here: one
                // file per marker from now on.
                self.spare = Err(());
                None
            }
            Err(()) => None,
        };
        let made = if let Some(r) = linked {
            r
        } else if self.no_open {
            crate::os::mknod_file(&p, 0o644)
        } else {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o644)
                .open(&p)
                .map(drop)
        };
        made.map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (something already exists at that path; refusing to follow or reuse it)"
            } else {
                ""
            };
            Error::from(e).context(format!("create {}{why}", p.display()))
        })
    }
}
