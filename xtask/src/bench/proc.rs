//! The processes a bench runs: bpfckpt and the bench targets, each with its
//! own trigger directory, read line by line and stopped if they overstay.

use crate::util::Result;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, DirBuilder};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `bpfckpt run --json --trigger-dir DIR -- PROGRAM`: the engine serving one
/// target (arguments for PROGRAM may follow).
pub fn bpfckpt_run(bpfckpt: &Path, dir: &TriggerDir, program: impl AsRef<OsStr>) -> Command {
    bpfckpt_run_with(bpfckpt, dir, &[], program)
}

/// The same with `options` of `bpfckpt run` before the program.
pub fn bpfckpt_run_with(
    bpfckpt: &Path,
    dir: &TriggerDir,
    options: &[&str],
    program: impl AsRef<OsStr>,
) -> Command {
    let mut cmd = Command::new(bpfckpt);
    cmd.args(["run", "--json", "--trigger-dir"])
        .arg(&dir.0)
        .args(options)
        .arg("--")
        .arg(program);
    cmd
}

pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// A private trigger directory (mode 0700), removed on drop.
pub struct TriggerDir(pub PathBuf);

impl TriggerDir {
    pub fn new(tag: &str) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "bpfckpt-bench-{}-{tag}-{nanos}",
            std::process::id()
        ));
        DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .map_err(|e| format!("create trigger dir {}: {e}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TriggerDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process whose stdout lines are read (and timestamped) by a
/// thread; stopped on drop if still running.
pub struct Proc {
    what: String,
    child: Child,
    lines: Receiver<(Instant, String)>,
    stderr: Receiver<String>,
    got: Vec<String>,
}

impl Proc {
    pub fn start(what: &str, cmd: &mut Command, stdin: bool) -> Result<Self> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {what} ({:?}): {e}", cmd.get_program()))?;
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: no pipes"));
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        let (etx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            let _ = etx.send(s);
        });
        Ok(Self {
            what: what.to_string(),
            child,
            lines,
            stderr,
            got: Vec::new(),
        })
    }

    /// Reads stdout until a line matches; returns when it was read.
    pub fn wait_line_at(&mut self, until: Instant, want: impl Fn(&str) -> bool) -> Result<Instant> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, l)) => {
                    let hit = want(&l);
                    self.got.push(l);
                    if hit {
                        return Ok(at);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.stop();
                    let r = self.report();
                    return Err(format!(
                        "{}: the expected output did not come in time{r}",
                        self.what
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop();
                    let r = self.report();
                    return Err(format!("{}: output ended early{r}", self.what));
                }
            }
        }
    }

    pub fn wait_line(&mut self, until: Instant, want: impl Fn(&str) -> bool) -> Result<()> {
        self.wait_line_at(until, want).map(drop)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    pub fn exited(&mut self) -> Result<bool> {
        self.child
            .try_wait()
            .map(|s| s.is_some())
            .map_err(|e| format!("{}: wait: {e}", self.what))
    }

    /// Waits for the exit (stopping the process at `until`); returns every
    /// stdout line, or an error with the output's tail if it failed.
    pub fn finish(mut self, until: Instant) -> Result<Vec<String>> {
        self.close_stdin();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) => {}
                Err(e) => return Err(format!("{}: wait: {e}", self.what)),
            }
            if Instant::now() > until {
                self.stop();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // A grandchild may keep the pipes open: don't wait for it forever.
        let grace = Instant::now() + Duration::from_secs(3);
        while let Ok((_, l)) = self
            .lines
            .recv_timeout(grace.saturating_duration_since(Instant::now()))
        {
            self.got.push(l);
        }
        match status {
            Some(st) if st.success() => Ok(std::mem::take(&mut self.got)),
            Some(st) => {
                let r = self.report();
                Err(format!("{} failed ({st}){r}", self.what))
            }
            None => {
                let r = self.report();
                Err(format!("{} did not finish in time{r}", self.what))
            }
        }
    }

    /// The tail of what the process printed, for error messages.
    fn report(&mut self) -> String {
        let err = self
            .stderr
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default();
        let mut s = String::new();
        let out = tail(&self.got);
        if !out.is_empty() {
            let _ = write!(s, "\n--- stdout (tail)\n{out}");
        }
        let err_lines: Vec<String> = err.lines().map(str::to_string).collect();
        let err = tail(&err_lines);
        if !err.is_empty() {
            let _ = write!(s, "\n--- stderr (tail)\n{err}");
        }
        s
    }

    /// SIGTERM (bpfckpt then ends its session and its target), then SIGKILL.
    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn tail(lines: &[String]) -> String {
    let from = lines.len().saturating_sub(15);
    lines[from..].join("\n")
}

/// Processes named bpfckpt (none of them ours when this is called).
pub fn other_bpfckpt() -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim() == "bpfckpt").then_some(pid)
        })
        .collect()
}

/// Process ids for a message.
pub fn pid_list(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
