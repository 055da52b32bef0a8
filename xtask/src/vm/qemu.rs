//! Boots a guest under QEMU (TCG), writes its serial console to a log file
//! (and its markers to the terminal), and judges the markers vm-init printed.

use crate::util::Result;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// isa-debug-exit turns the guest's byte `v` into QEMU's exit status
/// `(v << 1) | 1`: vm-init writes 0 for success, 1 for failure.
pub const EXIT_GUEST_PASSED: i32 = 1;
pub const EXIT_GUEST_FAILED: i32 = 3;

pub struct Boot<'a> {
    pub qemu: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub log: PathBuf,
    pub timeout: Duration,
    /// Guest memory (MiB).
    pub mem_mib: u32,
    /// Prefix of the console lines on the terminal.
    pub tag: String,
}

/// How a boot ended.
#[derive(Debug, Default)]
pub struct Run {
    pub lines: Vec<String>,
    /// QEMU's exit code (None: killed or by a signal).
    pub status: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
    pub qemu_stderr: String,
}

impl Boot<'_> {
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-nic",
            "none",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("-m".into());
        a.push(self.mem_mib.to_string());
        a.push("-kernel".into());
        a.push(self.kernel.display().to_string());
        a.push("-initrd".into());
        a.push(self.initrd.display().to_string());
        a.push("-append".into());
        a.push("console=ttyS0 panic=-1 quiet".into());
        a
    }

    /// Runs QEMU until it exits or the timeout kills it.
    pub fn run(&self) -> Result<Run> {
        let mut log = std::fs::File::create(&self.log)
            .map_err(|e| format!("create {}: {e}", self.log.display()))?;
        let t0 = Instant::now();
        let mut child = Command::new(self.qemu)
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.qemu.display()))?;
        let mut out = child.stdout.take().ok_or("no stdout pipe")?;
        let mut err = child.stderr.take().ok_or("no stderr pipe")?;
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let tag = self.tag.clone();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            let mut pending = Vec::new();
            let mut emit = |raw: &[u8]| {
                let line = clean_line(raw);
                // Guests run side by side: only what tells the progress
                // goes to the terminal, everything to the log.
                if shows_live(&line) {
                    println!("{tag}| {line}");
                }
                let _ = writeln!(log, "{line}");
                sink.lock().map(|mut v| v.push(line)).ok();
            };
            loop {
                match out.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                            let rest = pending.split_off(i + 1);
                            emit(&pending[..i]);
                            pending = rest;
                        }
                    }
                }
            }
            if !pending.is_empty() {
                emit(&pending);
            }
            let _ = log.flush();
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });

        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for qemu: {e}")),
            }
            if t0.elapsed() > self.timeout {
                timed_out = true;
                let _ = child.kill();
                break child.wait().map_err(|e| format!("waiting for qemu: {e}"))?;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let elapsed = t0.elapsed();
        let _ = reader.join();
        let qemu_stderr = err_reader.join().unwrap_or_default();
        let lines = std::mem::take(&mut *lines.lock().map_err(|_| "console reader panicked")?);
        Ok(Run {
            lines,
            status: status.code(),
            timed_out,
            elapsed,
            qemu_stderr,
        })
    }
}

/// A console line without CR, terminal escape sequences or other control
/// characters (SeaBIOS clears the screen, the kernel may emit CR).
pub fn clean_line(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        match c {
            '\x1b' => {
                // CSI: parameters and intermediates, then one final byte;
                // any other escape is ESC + one character (e.g. ESC c).
                if it.next() == Some('[') {
                    for c in it.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether a console line is shown on the terminal as it comes: markers
/// (not the echoed output of the guest's programs) and kernel trouble.
pub fn shows_live(line: &str) -> bool {
    marker_text(line).is_some_and(|m| !m.starts_with("RUN "))
        || ["Kernel panic", "BUG:", "Oops", "WARNING:", "Out of memory"]
            .iter()
            .any(|k| line.contains(k))
}

/// One `VMTEST PASS|FAIL name rest` marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub passed: bool,
    pub name: String,
    pub detail: String,
}

/// What the guest said about itself.
#[derive(Debug, Default)]
pub struct Report {
    pub release: String,
    pub version: String,
    /// Each `LOCKDOWN` line: at boot, and after raising it.
    pub lockdown: Vec<String>,
}

/// How one boot went: a result for every expected marker, in order (a
/// missing one is a failure), and whatever else went wrong.
#[derive(Debug, Default)]
pub struct Verdict {
    pub report: Report,
    pub results: Vec<Marker>,
    /// Failed markers nobody expected (the guest's own set-up).
    pub unexpected: Vec<Marker>,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.results.iter().all(|m| m.passed)
            && self.unexpected.is_empty()
            && self.problems.is_empty()
    }

    /// Every failure, one per line.
    pub fn failures(&self) -> Vec<String> {
        self.results
            .iter()
            .chain(&self.unexpected)
            .filter(|m| !m.passed)
            .map(|m| format!("{}: FAIL {}", m.name, m.detail))
            .chain(self.problems.iter().cloned())
            .collect()
    }
}

/// The text after `VMTEST ` in a console line; echoed program output
/// (`  | `, `  ! `) never counts.
fn marker_text(line: &str) -> Option<&str> {
    if line.starts_with("  |") || line.starts_with("  !") {
        return None;
    }
    // A kernel message may have been printed in front of it.
    line.find("VMTEST ").map(|i| &line[i + 7..])
}

/// Passes only if every expected marker passed, DONE says 0 failed, and the
/// guest reported success through isa-debug-exit.
pub fn judge(run: &Run, expected: &[String], timeout: Duration) -> Verdict {
    let mut v = Verdict::default();
    let mut done = None;
    let mut markers: Vec<Marker> = Vec::new();
    for line in &run.lines {
        if line.contains("Kernel panic - not syncing") {
            v.problems
                .push(format!("guest kernel panic: {}", line.trim()));
        }
        let Some(m) = marker_text(line) else { continue };
        let (word, rest) = m.split_once(' ').unwrap_or((m, ""));
        match word {
            "KERNEL" => {
                let (r, ver) = rest.split_once(' ').unwrap_or((rest, ""));
                v.report.release = r.to_string();
                v.report.version = ver.to_string();
            }
            "LOCKDOWN" => v.report.lockdown.push(rest.to_string()),
            "PASS" | "FAIL" => {
                let (name, detail) = rest.split_once(' ').unwrap_or((rest, ""));
                markers.push(Marker {
                    passed: word == "PASS",
                    name: name.to_string(),
                    detail: detail.to_string(),
                });
            }
            "DONE" => done = Some(rest.to_string()),
            _ => {}
        }
    }
    for name in expected {
        let found = markers.iter().filter(|m| &m.name == name).count();
        match markers.iter().find(|m| &m.name == name) {
            Some(_) if found > 1 => v.results.push(Marker {
                passed: false,
                name: name.clone(),
                detail: format!("reported {found} times"),
            }),
            Some(m) => v.results.push(m.clone()),
            None => v.results.push(Marker {
                passed: false,
                name: name.clone(),
                detail: "no marker".into(),
            }),
        }
    }
    v.unexpected = markers
        .iter()
        .filter(|m| !m.passed && !expected.contains(&m.name))
        .cloned()
        .collect();
    let want_done = format!("{} passed, 0 failed", expected.len());
    match &done {
        Some(d) if *d == want_done => {}
        Some(d) => v
            .problems
            .push(format!("DONE says {d:?}, expected {want_done:?}")),
        None => v.problems.push("no DONE marker".into()),
    }
    if run.timed_out {
        v.problems
            .push(format!("timed out after {} s", timeout.as_secs()));
    } else {
        match run.status {
            Some(EXIT_GUEST_PASSED) => {}
            Some(EXIT_GUEST_FAILED) => v
                .problems
                .push("the guest reported failure through isa-debug-exit (qemu status 3)".into()),
            Some(0) => v.problems.push(
                "qemu exited with status 0: the guest rebooted, powered off or panicked \
                 without reporting through isa-debug-exit"
                    .into(),
            ),
            Some(c) => v.problems.push(format!(
                "qemu failed with status {c}: {}",
                run.qemu_stderr.trim()
            )),
            None => v.problems.push("qemu was killed by a signal".into()),
        }
    }
    if v.report.release.is_empty() && !run.timed_out {
        v.problems.push("no KERNEL marker".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(console: &str, status: Option<i32>) -> Run {
        Run {
            lines: console.lines().map(str::to_string).collect(),
            status,
            ..Default::default()
        }
    }

    const GOOD: &str = "\
SeaBIOS (version 1.16.3)
VMTEST INIT vm-init 0.1.0
VMTEST KERNEL 6.1.0-56-cloud-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2
VMTEST LOCKDOWN [none] integrity confidentiality
VMTEST PASS bpf/doctor bpf_probe_write_user=ok
  | VMTEST FAIL a echoed line does not count
VMTEST PASS bpf/heap-small restore=bpf pages_bpf=108 pages_user=0
VMTEST LOCKDOWN none [integrity] confidentiality
VMTEST PASS user/lockdown raised to integrity
VMTEST PASS user/heap-small restore=user pages_bpf=0 pages_user=108
VMTEST DONE 4 passed, 0 failed
";

    fn expected() -> Vec<String> {
        [
            "bpf/doctor",
            "bpf/heap-small",
            "user/lockdown",
            "user/heap-small",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn cleans_console_lines() {
        assert_eq!(clean_line(b"abc\r"), "abc");
        assert_eq!(
            clean_line(b"\x1bc\x1b[?7l\x1b[2JSeaBIOS\x1b[0m x"),
            "SeaBIOS x"
        );
        assert_eq!(clean_line(b"a\tb\x07"), "a\tb");
        assert_eq!(clean_line(b"caf\xc3\xa9 \xff"), "caf\u{e9} \u{fffd}");
    }

    #[test]
    fn live_lines_are_markers_and_kernel_trouble() {
        assert!(shows_live("VMTEST PASS bpf/heap-small restore=bpf"));
        assert!(shows_live("[ 1.0] x VMTEST FAIL user/soak why"));
        assert!(!shows_live("VMTEST RUN bpf/heap-small /bin/bpfckpt run"));
        assert!(!shows_live("  | VMTEST PASS echoed"));
        assert!(!shows_live("  | {\"event\":\"restore\"}"));
        assert!(shows_live("[ 9.9] Kernel panic - not syncing: x"));
        assert!(shows_live("[ 9.9] BUG: unable to handle page fault"));
    }

    #[test]
    fn a_good_run_passes() {
        let t = Duration::from_secs(600);
        let v = judge(&run(GOOD, Some(EXIT_GUEST_PASSED)), &expected(), t);
        assert!(v.passed(), "{:?}", v.failures());
        assert_eq!(v.report.release, "6.1.0-56-cloud-amd64");
        assert!(v.report.version.contains("Debian 6.1.192-2"));
        assert_eq!(
            v.report.lockdown,
            [
                "[none] integrity confidentiality",
                "none [integrity] confidentiality"
            ]
        );
        assert_eq!(v.results.len(), 4);
        assert_eq!(
            v.results[1].detail,
            "restore=bpf pages_bpf=108 pages_user=0"
        );
        assert_eq!(v.results[3].name, "user/heap-small");
        // A kernel message glued in front of a marker is tolerated.
        let glued = GOOD.replace(
            "VMTEST PASS bpf/heap",
            "[   3.1] random: x VMTEST PASS bpf/heap",
        );
        assert!(judge(&run(&glued, Some(1)), &expected(), t).passed());
    }

    #[test]
    fn every_kind_of_failure_is_caught() {
        let t = Duration::from_secs(600);
        let e = |console: &str, status| {
            let v = judge(&run(console, status), &expected(), t);
            assert!(!v.passed());
            v.failures().join("\n")
        };
        assert!(e(GOOD, Some(0)).contains("without reporting through isa-debug-exit"));
        assert!(e(GOOD, Some(3)).contains("reported failure"));
        assert!(e(GOOD, Some(2)).contains("qemu failed with status 2"));
        let missing = GOOD.replace("VMTEST PASS user/heap-small", "something else");
        assert!(e(&missing, Some(1)).contains("user/heap-small: FAIL no marker"));
        let failed = GOOD
            .replace(
                "PASS bpf/heap-small restore=bpf",
                "FAIL bpf/heap-small restore 1: pages_bpf=0",
            )
            .replace("4 passed, 0 failed", "3 passed, 1 failed");
        let v = judge(&run(&failed, Some(3)), &expected(), t);
        let msg = v.failures().join("\n");
        assert!(
            msg.contains("bpf/heap-small: FAIL restore 1: pages_bpf=0"),
            "{msg}"
        );
        assert!(msg.contains("DONE says"), "{msg}");
        // The failure stays attached to its marker, the others pass.
        assert_eq!(
            v.results.iter().map(|m| m.passed).collect::<Vec<_>>(),
            [true, false, true, true]
        );
        // A path whose every check failed (a kernel bpfckpt cannot load its
        // probes on) fails, whatever the other path did.
        let all_user_failed = GOOD
            .replace("PASS user/", "FAIL user/")
            .replace("4 passed, 0 failed", "2 passed, 2 failed");
        assert!(e(&all_user_failed, Some(3)).contains("user/lockdown: FAIL"));
        let setup = GOOD.replace(
            "VMTEST LOCKDOWN [none]",
            "VMTEST FAIL mount-tracefs ENODEV\nVMTEST LOCKDOWN [none]",
        );
        assert!(e(&setup, Some(1)).contains("mount-tracefs: FAIL ENODEV"));
        let twice = GOOD.replace(
            "VMTEST DONE",
            "VMTEST PASS bpf/heap-small again\nVMTEST DONE",
        );
        assert!(e(&twice, Some(1)).contains("bpf/heap-small: FAIL reported 2 times"));
        let no_done = GOOD.replace("VMTEST DONE 4 passed, 0 failed", "");
        assert!(e(&no_done, Some(1)).contains("no DONE marker"));
        let panic =
            format!("{GOOD}[    9.9] Kernel panic - not syncing: Attempted to kill init!\n");
        assert!(e(&panic, Some(0)).contains("guest kernel panic"));
        let mut timeout = run(GOOD, None);
        timeout.timed_out = true;
        let v = judge(&timeout, &expected(), t);
        assert!(!v.passed());
        assert!(v.failures().join("\n").contains("timed out after 600 s"));
    }
}
