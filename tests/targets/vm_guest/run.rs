//! Running a program in the guest: its own process group, its output
//! echoed to the console as it comes (`  | ` stdout, `  ! ` stderr) and
//! kept for the verdict, a deadline after which the group is killed.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a program printed and how it ended.
#[derive(Debug, Default)]
pub struct Captured {
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
}

impl Captured {
    /// bpfckpt's error if it printed one (a verifier log may follow it),
    /// else the last non-empty stderr line.
    pub fn last_error(&self) -> Option<&str> {
        let lines = || self.stderr.iter().rev().map(|l| l.trim());
        lines()
            .find(|l| l.starts_with("bpfckpt: error:"))
            .or_else(|| lines().find(|l| !l.is_empty()))
    }
}

/// A started program.
pub struct Running {
    child: Child,
    rx: mpsc::Receiver<(bool, String)>,
    pub out: Captured,
    /// Both pipes are closed (every process that held them is gone).
    eof: bool,
}

/// What [`Running::next_line`] found.
pub enum Next {
    /// A stdout line.
    Out(String),
    Timeout,
    Eof,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Result<Self, String> {
        let what = format!("{:?}", cmd.get_program());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PATH", "/bin")
            .process_group(0)
            .spawn()
            .map_err(|e| {
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(cmd.get_program())
                    .map(|m| format!("mode {:o}, {} bytes", m.permissions().mode(), m.len()));
                let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
                format!(
                    "cannot start {what}: {e} ({meta:?}; mounts: {})",
                    mounts.replace('\n', "; ")
                )
            })?;
        let (tx, rx) = mpsc::channel::<(bool, String)>();
        fn reader(r: impl Read + Send + 'static, err: bool, tx: mpsc::Sender<(bool, String)>) {
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((err, line)).is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(o) = child.stdout.take() {
            reader(o, false, tx.clone());
        }
        if let Some(e) = child.stderr.take() {
            reader(e, true, tx.clone());
        }
        Ok(Self {
            child,
            rx,
            out: Captured::default(),
            eof: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the program itself has exited (its status is kept).
    pub fn exited(&mut self) -> bool {
        if self.out.status.is_none() {
            self.out.status = self.child.try_wait().ok().flatten();
        }
        self.out.status.is_some()
    }

    /// The next stdout line before `deadline` (stderr lines are kept on the way).
    pub fn next_line(&mut self, deadline: Instant) -> Next {
        loop {
            if self.eof {
                return Next::Eof;
            }
            let now = Instant::now();
            if now >= deadline {
                return Next::Timeout;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok((err, line)) => {
                    println!("  {} {line}", if err { '!' } else { '|' });
                    if err {
                        self.out.stderr.push(line);
                    } else {
                        self.out.stdout.push(line.clone());
                        return Next::Out(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => self.eof = true,
                Err(mpsc::RecvTimeoutError::Timeout) => return Next::Timeout,
            }
        }
    }

    /// Reads stdout up to the first line `want` accepts; fails when the
    /// output ends or `deadline` passes first, naming `what` and the last
    /// error line.
    pub fn wait_for(
        &mut self,
        what: &str,
        deadline: Instant,
        want: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        loop {
            let why = match self.next_line(deadline) {
                Next::Out(l) if want(&l) => return Ok(l),
                Next::Out(_) => continue,
                Next::Timeout => "timed out",
                Next::Eof => "the output ended",
            };
            return Err(format!(
                "{why} before {what}{}",
                self.out
                    .last_error()
                    .map(|e| format!("; stderr: {e}"))
                    .unwrap_or_default()
            ));
        }
    }

    /// Reads everything until the pipes close (or, when something else
    /// still holds them, 2 s after the program exited); at `deadline` kills
    /// the group.
    pub fn finish(mut self, deadline: Instant) -> Captured {
        let mut exited_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline {
                self.out.timed_out = true;
                crate::sys::kill_group(self.pid());
                break;
            }
            match self.next_line(deadline.min(now + Duration::from_millis(200))) {
                Next::Out(_) => {}
                Next::Eof => break,
                Next::Timeout => {
                    if self.exited() {
                        let t = *exited_at.get_or_insert(now);
                        if now.duration_since(t) > Duration::from_secs(2) {
                            break;
                        }
                    }
                }
            }
        }
        if self.out.status.is_none() {
            self.out.status = self.child.wait().ok();
        }
        self.out
    }
}

/// Runs `cmd` to the end (at most `timeout`).
pub fn run_captured(cmd: Command, timeout: Duration) -> Result<Captured, String> {
    let r = Running::spawn(cmd)?;
    Ok(r.finish(Instant::now() + timeout))
}
