//! Starting a `run` target so that bpfckpt is ready before its first
//! instruction: bpfckpt re-executes itself as a small gate process that
//! waits on a FIFO, and only execs the real program once the probes know
//! its pid. The pid stays the same across the exec.

use crate::{Error, Result};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SigSet;
use nix::sys::stat::Mode;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Lets a gated child exec its program.
pub struct Release {
    dir: PathBuf,
    fifo: PathBuf,
}

impl Release {
    pub fn release(self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        // Non-blocking open fails with ENXIO until the gate opened its end.
        let mut f = loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.fifo)
            {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(Error::from(e).context("release the target (gate fifo)")),
            }
        };
        f.write_all(b"g")
            .map_err(|e| Error::from(e).context("release the target"))?;
        Ok(())
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.fifo);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Spawns `command` behind a gate; the child's pid is the program's pid.
pub fn spawn(command: &[String]) -> Result<(Child, Release)> {
    if command.is_empty() {
        return Err(Error::new("no program given"));
    }
    let me = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(".bpfckpt-gate-{me}-{nanos}"));
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::from(e).context(format!("create {}", dir.display())))?;
    let fifo = dir.join("go");
    nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR)
        .map_err(|e| Error::sys(format!("mkfifo {}", fifo.display()), e as i32))?;
    let release = Release {
        dir,
        fifo: fifo.clone(),
    };
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .arg("__gate")
        .arg(&fifo)
        .arg(me.to_string())
        .arg("--")
        .args(command)
        .spawn()
        .map_err(|e| Error::from(e).context("start the target"))?;
    Ok((child, release))
}

/// The gate itself (hidden subcommand). Returns an exit code on failure;
/// on success it does not return.
pub fn exec_when_released(fifo: &Path, parent: i32, command: &[String]) -> u8 {
    use nix::sys::prctl::set_pdeathsig;
    // Die with bpfckpt while waiting; once released, a dying bpfckpt sends
    // SIGCONT instead, so a target held at a trigger is never left stopped.
    if set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid().as_raw() != parent {
        return 1;
    }
    let mut go = [0u8; 1];
    let ok = File::open(fifo)
        .and_then(|mut f| f.read_exact(&mut go))
        .is_ok();
    if !ok || go != *b"g" {
        return 1;
    }
    let _ = set_pdeathsig(Signal::SIGCONT);
    // bpfckpt blocks SIGINT/SIGTERM for itself; the program starts clean.
    let _ = SigSet::empty().thread_set_mask();
    let Some((prog, args)) = command.split_first() else {
        return 2;
    };
    let err = Command::new(prog).args(args).exec();
    eprintln!("bpfckpt: cannot execute {prog}: {err}");
    127
}
