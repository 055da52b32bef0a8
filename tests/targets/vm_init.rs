//! `/init` of the VM tier's guest (`cargo xtask vm-test`): a static program
//! that mounts what bpfckpt needs, reports the kernel and its lockdown mode,
//! runs `bpfckpt doctor` and then every scenario of `/vmtest.conf` under
//! `bpfckpt run --restore-path bpf --json`, and reports through markers on
//! the console:
//!
//!     VMTEST KERNEL <release> <version>
//!     VMTEST LOCKDOWN <contents of /sys/kernel/security/lockdown>
//!     VMTEST PASS <name> <details>      or      VMTEST FAIL <name> <why>
//!     VMTEST DONE <passed> passed, <failed> failed
//!
//! Finally it writes the verdict to QEMU's isa-debug-exit device (I/O port
//! 0xf4): 0 when everything passed (QEMU exits with status 1), 1 otherwise
//! (status 3). Output of the programs it runs is echoed with a `  | `
//! (stdout) or `  ! ` (stderr) prefix.
//!
//! `/vmtest.conf`, written by the host:
//!
//!     timeout <seconds per program>
//!     scenario <name> <cycles> <program> [args...]
//!
//! A scenario runs `bpfckpt run --restore-path bpf --json --trigger-dir
//! /tmp/<name> -- <program> [args...] --cycles <cycles> --dir /tmp/<name>`.
//! It passes when the `start` event says `restore_path` "bpf", there is at
//! least one `restore` event and every one has `pages_bpf` > 0, and the
//! target printed `PASS` and exited 0 (bpfckpt exits with its status).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CONF: &str = "/vmtest.conf";
const BPFCKPT: &str = "/bin/bpfckpt";
/// QEMU's `-device isa-debug-exit,iobase=0xf4`.
const DEBUG_EXIT_PORT: u16 = 0xf4;

fn main() {
    println!("VMTEST INIT vm-init {}", env!("CARGO_PKG_VERSION"));
    let mut results = Results::default();

    for (fstype, dir) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/tmp"),
        ("tracefs", "/sys/kernel/tracing"),
        ("securityfs", "/sys/kernel/security"),
    ] {
        if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| sys::mount(fstype, dir)) {
            results.fail(
                &format!("mount-{fstype}"),
                &format!("mount {fstype} on {dir}: {e}"),
            );
        }
    }

    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    // The uname(2) fields, as the kernel exports them.
    println!(
        "VMTEST KERNEL {} {}",
        read("/proc/sys/kernel/osrelease").unwrap_or_else(|e| format!("? ({e})")),
        read("/proc/sys/kernel/version").unwrap_or_else(|e| format!("? ({e})")),
    );
    println!(
        "VMTEST LOCKDOWN {}",
        read("/sys/kernel/security/lockdown").unwrap_or_else(|e| format!("unknown ({e})"))
    );

    let conf = std::fs::read_to_string(CONF)
        .map_err(|e| format!("read {CONF}: {e}"))
        .and_then(|t| parse_conf(&t));
    match conf {
        Err(e) => results.fail("conf", &e),
        Ok(conf) => {
            println!("VMTEST START {} scenarios", conf.scenarios.len());
            doctor(&mut results, conf.timeout);
            for s in &conf.scenarios {
                let t0 = Instant::now();
                match run_scenario(s, conf.timeout) {
                    Ok(detail) => results.pass(
                        &s.name,
                        &format!("{detail} secs={:.1}", t0.elapsed().as_secs_f64()),
                    ),
                    Err(why) => results.fail(
                        &s.name,
                        &format!("{why} (after {:.1} s)", t0.elapsed().as_secs_f64()),
                    ),
                }
                sys::reap_orphans();
            }
        }
    }

    println!(
        "VMTEST DONE {} passed, {} failed",
        results.passed, results.failed
    );
    exit_vm(if results.failed == 0 { 0 } else { 1 });
}

#[derive(Default)]
struct Results {
    passed: u32,
    failed: u32,
}

impl Results {
    fn pass(&mut self, name: &str, detail: &str) {
        self.passed += 1;
        println!("VMTEST PASS {name} {detail}");
    }

    fn fail(&mut self, name: &str, why: &str) {
        self.failed += 1;
        // One line: the host parses markers line by line.
        println!("VMTEST FAIL {name} {}", why.replace('\n', " / "));
    }
}

/// Reports the verdict to QEMU, which then exits; never returns (init
/// must not exit: the kernel would panic).
fn exit_vm(code: u8) -> ! {
    sys::drain_console();
    if let Err(e) = sys::debug_exit(DEBUG_EXIT_PORT, code) {
        println!("VMTEST WARN isa-debug-exit: {e}");
    }
    // Still running: no isa-debug-exit device. Power off; the host sees no
    // verdict from the device and fails the run.
    std::thread::sleep(Duration::from_secs(1));
    println!("VMTEST WARN isa-debug-exit did not end the VM; powering off");
    sys::drain_console();
    sys::power_off();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[derive(Debug, PartialEq)]
struct Scenario {
    name: String,
    cycles: u32,
    program: Vec<String>,
}

#[derive(Debug, PartialEq)]
struct Conf {
    timeout: Duration,
    scenarios: Vec<Scenario>,
}

fn parse_conf(text: &str) -> Result<Conf, String> {
    let mut conf = Conf {
        timeout: Duration::from_secs(300),
        scenarios: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("{CONF} line {}: cannot parse {line:?}", i + 1);
        match w.as_slice() {
            [] => {}
            [c, ..] if c.starts_with('#') => {}
            ["timeout", secs] => {
                conf.timeout = Duration::from_secs(secs.parse().map_err(|_| bad())?)
            }
            ["scenario", name, cycles, program @ ..] if !program.is_empty() => {
                if name.contains('/') || conf.scenarios.iter().any(|s| s.name == *name) {
                    return Err(bad());
                }
                conf.scenarios.push(Scenario {
                    name: name.to_string(),
                    cycles: cycles.parse().map_err(|_| bad())?,
                    program: program.iter().map(|s| s.to_string()).collect(),
                });
            }
            _ => return Err(bad()),
        }
    }
    if conf.scenarios.is_empty() {
        return Err(format!("{CONF} lists no scenario"));
    }
    Ok(conf)
}

/// What a program printed and how it ended.
#[derive(Debug, Default)]
struct Captured {
    stdout: Vec<String>,
    stderr: Vec<String>,
    status: Option<ExitStatus>,
    timed_out: bool,
}

/// Runs `cmd` in its own process group, echoing its output as it comes;
/// after `timeout` kills the group.
fn run_captured(mut cmd: Command, timeout: Duration) -> Result<Captured, String> {
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
    drop(tx);

    let deadline = Instant::now() + timeout;
    let mut out = Captured::default();
    let mut exited_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            out.timed_out = true;
            sys::kill_group(child.id() as i32);
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(200))) {
            Ok((err, line)) => {
                println!("  {} {line}", if err { '!' } else { '|' });
                if err {
                    out.stderr.push(line);
                } else {
                    out.stdout.push(line);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Something else may hold the pipes: stop reading a while
                // after the program itself exited.
                if let Ok(Some(_)) = child.try_wait() {
                    let t = *exited_at.get_or_insert(now);
                    if now.duration_since(t) > Duration::from_secs(2) {
                        break;
                    }
                }
            }
        }
    }
    out.status = child.wait().ok();
    Ok(out)
}

fn doctor(results: &mut Results, timeout: Duration) {
    let mut cmd = Command::new(BPFCKPT);
    cmd.arg("doctor");
    match run_captured(cmd, timeout) {
        Err(e) => results.fail("doctor", &e),
        Ok(c) => match doctor_verdict(&c.stdout) {
            Ok(()) => results.pass("doctor", "bpf_probe_write_user=ok"),
            Err(e) => results.fail("doctor", &e),
        },
    }
}

fn doctor_verdict(lines: &[String]) -> Result<(), String> {
    if lines
        .iter()
        .any(|l| l.starts_with("ok") && l.contains("bpf_probe_write_user"))
    {
        return Ok(());
    }
    match lines.iter().find(|l| l.contains("bpf_probe_write_user")) {
        Some(l) => Err(format!(
            "bpf_probe_write_user is not available: {}",
            l.trim()
        )),
        None => Err("no bpf_probe_write_user line in the output of bpfckpt doctor".into()),
    }
}

fn run_scenario(s: &Scenario, timeout: Duration) -> Result<String, String> {
    let dir = format!("/tmp/{}", s.name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {dir}: {e}"))?;
    let mut cmd = Command::new(BPFCKPT);
    cmd.args([
        "run",
        "--restore-path",
        "bpf",
        "--json",
        "--trigger-dir",
        &dir,
        "--",
    ])
    .args(&s.program)
    .args(["--cycles", &s.cycles.to_string(), "--dir", &dir]);
    println!(
        "VMTEST RUN {} {BPFCKPT} {}",
        s.name,
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let c = run_captured(cmd, timeout)?;
    verdict(&c, timeout)
}

/// Judges one scenario run; `Ok` holds the marker's details.
fn verdict(c: &Captured, timeout: Duration) -> Result<String, String> {
    let mut problems = Vec::new();
    if c.timed_out {
        problems.push(format!("timed out after {} s", timeout.as_secs()));
    }
    let mut start_path = None;
    let (mut restores, mut pages_bpf, mut pages_user, mut zeroed_bpf) = (0u64, 0u64, 0u64, 0u64);
    let mut pass_line = None;
    for line in &c.stdout {
        if line.starts_with("PASS ") {
            pass_line = Some(line.clone());
        } else if line.starts_with("FAIL ") {
            problems.push(format!("target: {line}"));
        }
        if !line.starts_with('{') {
            continue;
        }
        let ev = match json::parse_object(line) {
            Ok(ev) => ev,
            Err(e) => {
                problems.push(format!("bad JSON ({e}): {line}"));
                continue;
            }
        };
        match ev.get("event").and_then(json::Value::as_str) {
            Some("start") => {
                start_path = Some(
                    ev.get("restore_path")
                        .and_then(json::Value::as_str)
                        .unwrap_or("(none)")
                        .to_string(),
                );
            }
            Some("restore") => {
                restores += 1;
                let n = |k: &str| ev.get(k).and_then(json::Value::as_u64);
                match n("pages_bpf") {
                    Some(0) => problems.push(format!(
                        "restore {restores}: pages_bpf=0 (BPF wrote nothing; pages_user={})",
                        n("pages_user").map_or("?".into(), |v| v.to_string())
                    )),
                    Some(p) => pages_bpf += p,
                    None => problems.push(format!("restore {restores}: no pages_bpf in {line}")),
                }
                pages_user += n("pages_user").unwrap_or(0);
                zeroed_bpf += n("zeroed_bpf").unwrap_or(0);
            }
            _ => {}
        }
    }
    match start_path.as_deref() {
        Some("bpf") => {}
        Some(p) => problems.push(format!("start event says restore_path {p:?}, not \"bpf\"")),
        None => problems.push("no start event".into()),
    }
    if restores == 0 {
        problems.push("no restore event".into());
    }
    if pass_line.is_none() {
        problems.push("the target printed no PASS line".into());
    }
    match c.status {
        Some(st) if st.success() => {}
        Some(st) => {
            let how = match (st.code(), st.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => format!("{st}"),
            };
            problems.push(how);
        }
        None => problems.push("exit status unknown".into()),
    }
    if !problems.is_empty() {
        if let Some(e) = c.stderr.iter().rev().find(|l| !l.trim().is_empty()) {
            problems.push(format!("last stderr line: {}", e.trim()));
        }
        return Err(problems.join("; "));
    }
    Ok(format!(
        "restore=bpf pages_bpf={pages_bpf} pages_user={pages_user} zeroed_bpf={zeroed_bpf} restores={restores}"
    ))
}

/// Just enough JSON for bpfckpt's `--json` lines: one flat object of
/// strings, numbers, booleans and nulls.
mod json {
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Str(String),
        /// The number as written.
        Num(String),
        Bool(bool),
        Null,
    }

    impl Value {
        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::Str(s) => Some(s),
                _ => None,
            }
        }

        pub fn as_u64(&self) -> Option<u64> {
            match self {
                Value::Num(n) => n.parse().ok(),
                _ => None,
            }
        }
    }

    struct P<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl P<'_> {
        fn ws(&mut self) {
            while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
                self.i += 1;
            }
        }

        fn eat(&mut self, c: u8) -> Result<(), String> {
            self.ws();
            if self.s.get(self.i) == Some(&c) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected '{}' at byte {}", c as char, self.i))
            }
        }

        fn string(&mut self) -> Result<String, String> {
            self.eat(b'"')?;
            let mut out = Vec::new();
            loop {
                let c = *self.s.get(self.i).ok_or("unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => break,
                    b'\\' => {
                        let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                        self.i += 1;
                        let ch = match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'n' => '\n',
                            b't' => '\t',
                            b'r' => '\r',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'u' => {
                                let hex = self
                                    .s
                                    .get(self.i..self.i + 4)
                                    .and_then(|h| std::str::from_utf8(h).ok())
                                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                                    .ok_or("bad \\u escape")?;
                                self.i += 4;
                                char::from_u32(hex).unwrap_or('\u{fffd}')
                            }
                            _ => return Err(format!("bad escape \\{}", e as char)),
                        };
                        let mut b = [0; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                    }
                    c => out.push(c),
                }
            }
            String::from_utf8(out).map_err(|e| e.to_string())
        }

        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            let rest = &self.s[self.i..];
            for (word, v) in [
                ("true", Value::Bool(true)),
                ("false", Value::Bool(false)),
                ("null", Value::Null),
            ] {
                if rest.starts_with(word.as_bytes()) {
                    self.i += word.len();
                    return Ok(v);
                }
            }
            match rest.first() {
                Some(b'"') => self.string().map(Value::Str),
                Some(c) if *c == b'-' || c.is_ascii_digit() => {
                    let n = rest
                        .iter()
                        .take_while(|c| c.is_ascii_digit() || b"-+.eE".contains(c))
                        .count();
                    self.i += n;
                    Ok(Value::Num(String::from_utf8_lossy(&rest[..n]).into_owned()))
                }
                _ => Err(format!("unsupported value at byte {}", self.i)),
            }
        }
    }

    /// Parses `{"k": v, ...}`.
    pub fn parse_object(line: &str) -> Result<BTreeMap<String, Value>, String> {
        let mut p = P {
            s: line.as_bytes(),
            i: 0,
        };
        let mut m = BTreeMap::new();
        p.eat(b'{')?;
        p.ws();
        if p.s.get(p.i) == Some(&b'}') {
            p.i += 1;
        } else {
            loop {
                let k = p.string()?;
                p.eat(b':')?;
                let v = p.value()?;
                m.insert(k, v);
                p.ws();
                match p.s.get(p.i) {
                    Some(b',') => p.i += 1,
                    Some(b'}') => {
                        p.i += 1;
                        break;
                    }
                    _ => return Err(format!("expected ',' or '}}' at byte {}", p.i)),
                }
            }
        }
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing bytes at {}", p.i));
        }
        Ok(m)
    }
}

/// The system calls only an init process makes. `unsafe` lives here only.
mod sys {
    use std::ffi::CString;
    use std::io;
    use std::os::unix::fs::FileExt;

    fn cstr(s: &str) -> io::Result<CString> {
        CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    }

    /// Mounts a pseudo file system (`source` = its type). Already mounted
    /// there (EBUSY) counts as success.
    pub fn mount(fstype: &str, target: &str) -> io::Result<()> {
        let (src, dst) = (cstr(fstype)?, cstr(target)?);
        // SAFETY: all three strings are valid NUL-terminated C strings that
        // outlive the call; `data` may be NULL for these file systems.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                src.as_ptr(),
                // Not MS_NODEV on devtmpfs: its device nodes (/dev/null
                // for the children's stdin) must open.
                if fstype == "devtmpfs" {
                    libc::MS_NOSUID
                } else {
                    libc::MS_NOSUID | libc::MS_NODEV
                },
                std::ptr::null(),
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            return Ok(());
        }
        Err(e)
    }

    /// SIGKILL to the process group `pgid` (a group this init created).
    pub fn kill_group(pgid: i32) {
        if pgid > 1 {
            // SAFETY: kill(2) has no memory effects; a negative pid names
            // the process group of a child spawned with process_group(0).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }

    /// Reaps children reparented to init (no child of ours is running).
    pub fn reap_orphans() {
        loop {
            let mut st = 0;
            // SAFETY: `st` is a valid out pointer for the call's duration.
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if r <= 0 {
                break;
            }
        }
    }

    /// Waits until the console has sent everything written to it.
    pub fn drain_console() {
        // SAFETY: tcdrain(2) on fd 1 takes no pointers; failure is harmless.
        unsafe { libc::tcdrain(1) };
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    /// Writes `value` to the I/O port of QEMU's isa-debug-exit device:
    /// through /dev/port if the kernel has it (CONFIG_DEVPORT), else with
    /// ioperm(2) and an `out` instruction.
    pub fn debug_exit(port: u16, value: u8) -> io::Result<()> {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/port") {
            f.write_at(&[value], u64::from(port))?;
            return Ok(());
        }
        port_out(port, value)
    }

    #[cfg(target_arch = "x86_64")]
    fn port_out(port: u16, value: u8) -> io::Result<()> {
        // SAFETY: ioperm(2) only changes this thread's I/O permission bitmap.
        let r = unsafe { libc::syscall(libc::SYS_ioperm, libc::c_ulong::from(port), 1u64, 1i32) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ioperm granted access to exactly this port; writing one
        // byte to the debug-exit device touches no memory of this process
        // (QEMU ends the machine).
        unsafe {
            std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
        }
        Ok(())
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn port_out(_port: u16, _value: u8) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    /// Powers the machine off (QEMU exits with status 0).
    pub fn power_off() {
        // SAFETY: sync(2) and reboot(2) take no pointers; init is the only
        // process left that matters.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn conf_parses_and_refuses_garbage() {
        let c = parse_conf(
            "# comment\ntimeout 120\n\nscenario heap-small 3 /bin/ckpt-target heap-small\nscenario bss400 2 /bin/ckpt-bss400\n",
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(120));
        assert_eq!(
            c.scenarios,
            vec![
                Scenario {
                    name: "heap-small".into(),
                    cycles: 3,
                    program: vec!["/bin/ckpt-target".into(), "heap-small".into()]
                },
                Scenario {
                    name: "bss400".into(),
                    cycles: 2,
                    program: vec!["/bin/ckpt-bss400".into()]
                },
            ]
        );
        for bad in [
            "",
            "timeout x\nscenario a 1 /bin/x",
            "scenario a 1",
            "scenario a x /bin/x",
            "scenario a/b 1 /bin/x",
            "scenario a 1 /bin/x\nscenario a 1 /bin/y",
            "frobnicate",
        ] {
            assert!(parse_conf(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_flat_objects() {
        let m = json::parse_object(
            r#"{"event":"restore","pid":42,"pages_bpf":36,"held":false,"d":-2,"s":"a\"b\\c\u0041","n":null}"#,
        )
        .unwrap();
        assert_eq!(m["event"].as_str(), Some("restore"));
        assert_eq!(m["pages_bpf"].as_u64(), Some(36));
        assert_eq!(m["held"], json::Value::Bool(false));
        assert_eq!(m["d"], json::Value::Num("-2".into()));
        assert_eq!(m["s"].as_str(), Some("a\"b\\cA"));
        assert_eq!(m["n"], json::Value::Null);
        assert!(json::parse_object("{}").unwrap().is_empty());
        for bad in [
            r#"{"a":1"#,
            r#"{"a":[1]}"#,
            r#"{"a":1} x"#,
            r#"{"a" 1}"#,
            r#"{"a":"x}"#,
        ] {
            assert!(json::parse_object(bad).is_err(), "{bad}");
        }
    }

    const GOOD: &str = r#"{"event":"start","restore_path":"bpf","trigger_dir":"/tmp/x"}
{"event":"target","pid":7,"exe":"/bin/ckpt-target"}
{"event":"checkpoint","pid":7,"pages_bpf":0,"pages_user":36}
{"event":"restore","pid":7,"pages_bpf":36,"zeroed_bpf":2,"pages_user":0,"zeroed_user":0}
{"event":"restore","pid":7,"pages_bpf":30,"zeroed_bpf":0,"pages_user":6,"zeroed_user":0}
PASS heap-small cycles=2 bytes=4096
{"event":"summary","scope":"all targets","cycles":2}"#;

    fn captured(stdout: &str, code: i32) -> Captured {
        Captured {
            stdout: lines(stdout),
            stderr: lines("bpfckpt: error: something"),
            status: Some(ExitStatus::from_raw(code << 8)),
            timed_out: false,
        }
    }

    #[test]
    fn verdict_passes_a_bpf_run() {
        let v = verdict(&captured(GOOD, 0), Duration::from_secs(1)).unwrap();
        assert_eq!(
            v,
            "restore=bpf pages_bpf=66 pages_user=6 zeroed_bpf=2 restores=2"
        );
    }

    #[test]
    fn verdict_fails_what_is_not_a_bpf_restore() {
        let t = Duration::from_secs(5);
        let user = GOOD.replace(r#""restore_path":"bpf""#, r#""restore_path":"user""#);
        assert!(
            verdict(&captured(&user, 0), t)
                .unwrap_err()
                .contains("restore_path \"user\"")
        );
        let zero = GOOD.replace(r#""pages_bpf":30"#, r#""pages_bpf":0"#);
        let e = verdict(&captured(&zero, 0), t).unwrap_err();
        assert!(e.contains("restore 2: pages_bpf=0"), "{e}");
        let e = verdict(&captured(GOOD, 1), t).unwrap_err();
        assert!(
            e.contains("exit status 1") && e.contains("last stderr line: bpfckpt: error"),
            "{e}"
        );
        let nopass = GOOD.replace("PASS heap-small", "FAIL region 0");
        let e = verdict(&captured(&nopass, 0), t).unwrap_err();
        assert!(
            e.contains("no PASS line") && e.contains("target: FAIL region 0"),
            "{e}"
        );
        let e = verdict(
            &captured(&GOOD.lines().take(3).collect::<Vec<_>>().join("\n"), 0),
            t,
        )
        .unwrap_err();
        assert!(e.contains("no restore event"), "{e}");
        let mut c = captured(GOOD, 0);
        c.timed_out = true;
        assert!(verdict(&c, t).unwrap_err().contains("timed out after 5 s"));
        let mut c = captured(GOOD, 0);
        c.status = Some(ExitStatus::from_raw(9));
        assert!(verdict(&c, t).unwrap_err().contains("killed by signal 9"));
    }

    #[test]
    fn doctor_needs_an_ok_write_line() {
        assert!(
            doctor_verdict(&lines(
                "ok    bpf_probe_read_user helper\nok    bpf_probe_write_user helper"
            ))
            .is_ok()
        );
        let e = doctor_verdict(&lines("FAIL  bpf_probe_write_user helper: refused")).unwrap_err();
        assert!(e.contains("refused"));
        assert!(doctor_verdict(&lines("ok    bpf_loop helper")).is_err());
    }
}
