//! The file protocol's paths, and creating the completion markers safely:
//! root writes into a world-writable directory, so never follow a symlink
//! and never reuse a file someone else put there.

use crate::{Error, Result};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use bpfckpt_protocol::{CHECKPOINT_DONE, CHECKPOINT_REQUEST, RESTORE_DONE, RESTORE_REQUEST};

#[derive(Debug, Clone)]
pub struct Triggers {
    pub dir: PathBuf,
    /// Create markers without opening them (`mknod`): bpfckpt holds the
    /// opens in the directory, its own would wait for itself.
    pub no_open: bool,
}

impl Triggers {
    pub fn new(dir: &Path, max_path: usize) -> Result<Self> {
        let t = Self {
            dir: dir.to_path_buf(),
            no_open: false,
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
        Ok(t)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates a completion marker with `O_CREAT|O_EXCL|O_NOFOLLOW`: a file
    /// or symlink already at that path is refused, not followed or reused.
    /// With `no_open`, `mknod` does the same (it never follows a symlink).
    pub fn create(&self, name: &str) -> Result<()> {
        let p = self.path(name);
        let made = if self.no_open {
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
