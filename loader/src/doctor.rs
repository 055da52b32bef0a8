//! `bpfckpt doctor`: what this kernel lets us do, checked by doing it.
//!
//! Besides reading the usual places (uname, lockdown, tracefs, BTF, capabilities), every
//! helper the probes rely on is tested by loading a tiny hand-assembled tracepoint program
//! that calls it: only the verifier knows for sure (lockdown, for example, removes
//! bpf_probe_write_user without any other trace).

use std::path::Path;

use crate::os;
use bpfload::insn::{Insn, asm};
use bpfload::linker::FuncInfo;
use bpfload::maps::Map;
use bpfload::{Error, attach, btf, sys};

/// One verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// When not ok: bpfckpt still works, in degraded mode (`warn`).
    pub degrades: bool,
    /// Facts (when ok) or the reason (when not).
    pub detail: String,
}

impl Check {
    fn new(name: &str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            ok,
            degrades: false,
            detail: detail.into(),
        }
    }

    /// The same check, which only degrades bpfckpt when it fails.
    fn degrading(self) -> Self {
        Self {
            degrades: true,
            ..self
        }
    }
}

/// What the full probe set needs beyond what Linux 5.10 has; without any
/// of it bpfckpt runs in degraded mode (see `ckpt::probes::Set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// bpf_loop (5.17).
    pub loop_helper: bool,
    /// BPF callbacks, `BPF_PSEUDO_FUNC` (5.13).
    pub callbacks: bool,
    /// Atomic fetch/xchg/or (5.12).
    pub atomics: bool,
}

impl Features {
    /// What is missing, in words (empty: nothing).
    pub fn missing(&self) -> Vec<&'static str> {
        bpfload::insn::Needs {
            loop_helper: !self.loop_helper,
            callbacks: !self.callbacks,
            atomics: !self.atomics,
        }
        .describe()
    }
}

/// Probes each feature of [`Features`] by loading a tiny program using it.
pub fn features() -> Features {
    Features {
        loop_helper: loop_check().ok,
        callbacks: callbacks_check().ok,
        atomics: atomics_check().ok,
    }
}

/// Runs every check.
pub fn run() -> Vec<Check> {
    // Kernels before 5.11 charge maps to RLIMIT_MEMLOCK: the checks below create some.
    crate::ckpt::memlock::raise();
    let lockdown = lockdown_mode();
    let mut out = vec![
        kernel(),
        lockdown_check(&lockdown),
        tracefs(),
        btf(),
        privileges(),
    ];
    let helper = |name: &str, prog: Vec<Insn>| -> Check {
        let name = format!("{name} helper");
        match try_load(&prog, None) {
            Ok(()) => Check::new(&name, true, ""),
            Err(why) => Check::new(&name, false, why),
        }
    };
    out.push(helper(
        "bpf_get_current_pid_tgid",
        prog_call0(sys::BPF_FUNC_GET_CURRENT_PID_TGID),
    ));
    out.push(helper(
        "bpf_probe_read_user",
        prog_probe_read(sys::BPF_FUNC_PROBE_READ_USER),
    ));
    out.push(helper(
        "bpf_probe_read_user_str",
        prog_probe_read(sys::BPF_FUNC_PROBE_READ_USER_STR),
    ));
    out.push(probe_write_user_check(&lockdown));
    out.push(ringbuf_check());
    out.push(helper("bpf_send_signal", prog_send_signal()));
    out.push(map_in_map_check());
    let features = [loop_check(), callbacks_check(), atomics_check()];
    let missing: Vec<&str> = features
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.name.as_str())
        .collect();
    let mode = if missing.is_empty() {
        Check::new("mode", true, "full (BPF copies and writes, writes tracked)")
    } else {
        Check::new(
            "mode",
            false,
            format!(
                "degraded: no {}; the probes only hold the target, user space copies and writes every page, every page is tried",
                missing.join(", ")
            ),
        )
        .degrading()
    };
    out.extend(features);
    out.push(fault_tracepoints_check());
    out.push(mode);
    out.push(dirty_tracking());
    out
}

/// Informational: without a mechanism the requests still work, copying
/// every page ever written.
fn dirty_tracking() -> Check {
    use crate::ckpt::dirty::{Mechanism, available};
    let detail = match available() {
        Ok(Mechanism::Uffd) => "userfaultfd write protection, injected into each target with ptrace, read with PAGEMAP_SCAN".to_string(),
        Ok(m) => m.name().to_string(),
        Err(why) => format!("none ({why}): every request copies every page ever written"),
    };
    Check::new("dirty tracking", true, detail)
}

/// One line per check: `ok    name[: detail]` or `FAIL  name: detail`.
pub fn format(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let verdict = match (c.ok, c.degrades) {
            (true, _) => "ok  ",
            (false, true) => "warn",
            (false, false) => "FAIL",
        };
        // Multi-line details (never expected) are folded so each check stays one line.
        let detail = c
            .detail
            .split('\n')
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" | ");
        if detail.is_empty() {
            s.push_str(&format!("{verdict}  {}\n", c.name));
        } else {
            s.push_str(&format!("{verdict}  {}: {detail}\n", c.name));
        }
    }
    s
}

/// Whether the verifier accepts bpf_probe_write_user here, with the reason either way.
/// The application calls this at startup to choose the restore path.
pub fn probe_write_user_available() -> (bool, String) {
    let c = probe_write_user_check(&lockdown_mode());
    if c.ok {
        (true, "the verifier accepts bpf_probe_write_user".into())
    } else {
        (false, c.detail)
    }
}

// ---------------------------------------------------------------------------------------
// System facts.

fn kernel() -> Check {
    let name = "kernel version";
    match os::uname() {
        Ok((_, release, _, machine)) => {
            let mut it = release
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|p| p.parse::<u32>().ok());
            let (maj, min) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
            // Information only: each feature is probed on its own below.
            let note = if (maj, min) >= (5, 17) {
                ""
            } else {
                " (older than 5.17: see the feature checks)"
            };
            Check::new(name, true, format!("{release} {machine}{note}"))
        }
        Err(e) => Check::new(name, false, e.msg),
    }
}

const SECURITYFS: &str = "/sys/kernel/security";

/// The active lockdown mode ("none", "integrity", "confidentiality"), `Err` with why it
/// is unknown. Mounts securityfs if it is not mounted.
fn lockdown_mode() -> Result<String, String> {
    let file = Path::new(SECURITYFS).join("lockdown");
    if !file.exists() {
        let empty = std::fs::read_dir(SECURITYFS)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if empty {
            sys::mount_fs("securityfs", Path::new(SECURITYFS)).map_err(|e| e.msg)?;
        }
    }
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    // "none [integrity] confidentiality": the bracketed word is active.
    let active = text
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(['[', ']']));
    active
        .map(str::to_string)
        .ok_or_else(|| format!("{}: unexpected content {text:?}", file.display()))
}

fn lockdown_check(mode: &Result<String, String>) -> Check {
    let name = "kernel lockdown";
    match mode {
        Ok(m) if m == "none" => Check::new(name, true, "none"),
        // integrity only costs bpf_probe_write_user (reported on its own line); the
        // restore then writes from user space.
        Ok(m) if m == "integrity" => Check::new(
            name,
            true,
            "integrity (bpf_probe_write_user unavailable: restore writes from user space)",
        ),
        // confidentiality also locks tracefs and kernel reads.
        Ok(m) => Check::new(
            name,
            false,
            format!("{m}: tracefs and BPF tracing are locked down"),
        ),
        // No lockdown LSM: nothing is locked down.
        Err(why) if why.contains("No such file") => Check::new(name, true, "no lockdown LSM"),
        Err(why) => Check::new(name, false, why.clone()),
    }
}

fn tracefs() -> Check {
    let name = "tracefs";
    let root = match attach::tracefs_root() {
        Ok(r) => r,
        Err(e) => return Check::new(name, false, e.msg),
    };
    match attach::tracepoint_id("syscalls", "sys_enter_openat") {
        Ok(id) => Check::new(
            name,
            true,
            format!("{} (syscalls/sys_enter_openat id {id})", root.display()),
        ),
        Err(e) => Check::new(name, false, e.msg),
    }
}

fn btf() -> Check {
    let path = "/sys/kernel/btf/vmlinux";
    match std::fs::metadata(path) {
        Ok(m) => Check::new(
            "kernel BTF",
            true,
            format!("{path} ({} KiB)", m.len() / 1024),
        ),
        Err(e) => Check::new("kernel BTF", false, format!("{path}: {e}")),
    }
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn privileges() -> Check {
    let name = "privileges";
    let euid = nix::unistd::geteuid().as_raw();
    let caps = match os::effective_caps() {
        Ok(c) => c,
        Err(e) => return Check::new(name, false, format!("euid {euid}; {}", e.msg)),
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let names: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .iter()
    .filter(|(c, _)| has(*c))
    .map(|(_, n)| *n)
    .collect();
    let detail = format!(
        "euid {euid}, effective: {}",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(" ")
        }
    );
    let ok = (has(CAP_BPF) && has(CAP_PERFMON)) || has(CAP_SYS_ADMIN);
    if ok {
        Check::new(name, true, detail)
    } else {
        Check::new(
            name,
            false,
            format!("{detail}: need CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); run as root"),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Helper probes.

fn probe_write_user_check(lockdown: &Result<String, String>) -> Check {
    let name = "bpf_probe_write_user helper";
    match try_load(&prog_probe_write(), None) {
        Ok(()) => Check::new(name, true, ""),
        Err(mut why) => {
            if let Ok(m) = lockdown
                && m != "none"
            {
                why.push_str(&format!(" (kernel lockdown: {m})"));
            }
            Check::new(name, false, why)
        }
    }
}

fn ringbuf_check() -> Check {
    let name = "ring buffer (bpf_ringbuf_output)";
    let size = sys::page_size().max(4096) as u32;
    let map = match Map::ringbuf("doctor_rb", size) {
        Ok(m) => m,
        Err(e) => return Check::new(name, false, e.msg),
    };
    use std::os::fd::{AsFd, AsRawFd};
    match try_load(&prog_ringbuf(map.as_fd().as_raw_fd()), None) {
        Ok(()) => Check::new(name, true, ""),
        Err(why) => Check::new(name, false, why),
    }
}

/// A helper or instruction whose absence only degrades bpfckpt.
fn feature(name: &str, prog: &[Insn], callback_at: Option<u32>) -> Check {
    match try_load(prog, callback_at) {
        Ok(()) => Check::new(name, true, ""),
        Err(why) => Check::new(name, false, why).degrading(),
    }
}

fn loop_check() -> Check {
    feature("bpf_loop helper", &prog_loop(), Some(LOOP_CB_INSN))
}

/// Callbacks through `bpf_for_each_map_elem` (5.13), which needs no bpf_loop.
fn callbacks_check() -> Check {
    let name = "BPF callbacks (bpf_for_each_map_elem)";
    let map = match Map::array("doctor_cb", 8, 1, 0) {
        Ok(m) => m,
        Err(e) => return Check::new(name, false, e.msg).degrading(),
    };
    use std::os::fd::{AsFd, AsRawFd};
    feature(
        name,
        &prog_for_each(map.as_fd().as_raw_fd()),
        Some(FOR_EACH_CB_INSN),
    )
}

fn atomics_check() -> Check {
    feature("atomic fetch-or and xchg", &prog_atomics(), None)
}

/// The page store and the region tables: mmapable arrays of different sizes
/// as inner maps of one array of maps (5.10 has it; checked all the same).
fn map_in_map_check() -> Check {
    let name = "map-in-map with mmapable inner arrays";
    let run = || -> bpfload::Result<()> {
        let t = crate::ckpt::probes::inner_map_templates()?;
        let outer = Map::create(&sys::MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_flags: 0,
            name: "doctor_outer",
            inner_map_fd: Some(std::os::fd::AsFd::as_fd(&t[0])),
        })?;
        let inner = crate::ckpt::storage::inner_array("doctor_inner", 4096, 2)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&inner)) as u32;
        outer.update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), sys::BPF_ANY)?;
        inner.mmap()?.write_u64(4096, 1)
    };
    match run() {
        Ok(()) => Check::new(name, true, ""),
        Err(e) => Check::new(name, false, e.msg),
    }
}

/// The raw `page_fault_user`/`_kernel` tracepoints the write tracking hangs
/// on (x86): without them every page is tried.
fn fault_tracepoints_check() -> Check {
    let name = "raw page-fault tracepoints";
    let prog = [asm::mov64_imm(0, 0), asm::exit()];
    let run = || -> Result<(), String> {
        let fd = sys::prog_load(&sys::ProgLoadAttr {
            prog_type: sys::BPF_PROG_TYPE_RAW_TRACEPOINT,
            insns: &prog,
            license: "GPL",
            name: "bpfckpt_doctor",
            prog_btf_fd: None,
            func_info_rec_size: 0,
            func_info_cnt: 0,
            func_info: &[],
        })
        .map_err(|e| refusal(&e))?;
        for tp in ["page_fault_user", "page_fault_kernel"] {
            attach::attach_raw_tracepoint(&fd, tp).map_err(|e| format!("{tp}: {}", e.msg))?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => Check::new(name, true, "page_fault_user, page_fault_kernel"),
        Err(why) => Check::new(
            name,
            false,
            format!("{why}; writes cannot be tracked, every page is tried"),
        )
        .degrading(),
    }
}

/// `BPF_MAP_TYPE_ARRAY_OF_MAPS`.
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
/// `BPF_FUNC_for_each_map_elem`.
const BPF_FUNC_FOR_EACH_MAP_ELEM: i32 = 164;
/// Index of the callback in [`prog_for_each`].
const FOR_EACH_CB_INSN: u32 = 9;

/// `bpf_for_each_map_elem(&map, cb, NULL, 0); return 0` with a static `cb`
/// returning 0.
fn prog_for_each(map_fd: i32) -> Vec<Insn> {
    let mut p = asm::ld_map_fd(1, map_fd).to_vec();
    // ld_func at insn 2: target = 2 + rel + 1.
    p.extend(asm::ld_func(2, FOR_EACH_CB_INSN as i32 - 3));
    p.extend([
        asm::mov64_imm(3, 0),
        asm::mov64_imm(4, 0),
        asm::call_helper(BPF_FUNC_FOR_EACH_MAP_ELEM),
        asm::mov64_imm(0, 0),
        asm::exit(),
        // callback
        asm::mov64_imm(0, 0),
        asm::exit(),
    ]);
    debug_assert_eq!(p.len(), FOR_EACH_CB_INSN as usize + 2);
    p
}

/// `u64 x = 0; atomic_fetch_or(&x, 1); xchg(&x, 1); return 0`
fn prog_atomics() -> Vec<Insn> {
    vec![
        asm::st_dw(10, -8, 0),
        asm::mov64_imm(1, 1),
        asm::atomic_fetch_or_dw(10, -8, 1),
        asm::mov64_imm(1, 1),
        asm::atomic_xchg_dw(10, -8, 1),
        asm::mov64_imm(0, 0),
        asm::exit(),
    ]
}

/// `r0 = helper(); return 0`
fn prog_call0(helper: i32) -> Vec<Insn> {
    vec![asm::call_helper(helper), asm::mov64_imm(0, 0), asm::exit()]
}

/// `helper(stack buf, 8, NULL); return 0` (probe_read_user / probe_read_user_str)
fn prog_probe_read(helper: i32) -> Vec<Insn> {
    vec![
        asm::mov64_reg(1, 10),
        asm::add64_imm(1, -8),
        asm::mov64_imm(2, 8),
        asm::mov64_imm(3, 0),
        asm::call_helper(helper),
        asm::mov64_imm(0, 0),
        asm::exit(),
    ]
}

/// `bpf_probe_write_user(NULL, stack buf, 8); return 0`
fn prog_probe_write() -> Vec<Insn> {
    vec![
        asm::st_dw(10, -8, 0),
        asm::mov64_imm(1, 0),
        asm::mov64_reg(2, 10),
        asm::add64_imm(2, -8),
        asm::mov64_imm(3, 8),
        asm::call_helper(sys::BPF_FUNC_PROBE_WRITE_USER),
        asm::mov64_imm(0, 0),
        asm::exit(),
    ]
}

/// `bpf_send_signal(0); return 0` (loaded, never run)
fn prog_send_signal() -> Vec<Insn> {
    vec![
        asm::mov64_imm(1, 0),
        asm::call_helper(sys::BPF_FUNC_SEND_SIGNAL),
        asm::mov64_imm(0, 0),
        asm::exit(),
    ]
}

/// `bpf_ringbuf_output(&rb, stack buf, 8, 0); return 0`
fn prog_ringbuf(map_fd: i32) -> Vec<Insn> {
    let mut p = vec![asm::st_dw(10, -8, 0)];
    p.extend(asm::ld_map_fd(1, map_fd));
    p.extend([
        asm::mov64_reg(2, 10),
        asm::add64_imm(2, -8),
        asm::mov64_imm(3, 8),
        asm::mov64_imm(4, 0),
        asm::call_helper(sys::BPF_FUNC_RINGBUF_OUTPUT),
        asm::mov64_imm(0, 0),
        asm::exit(),
    ]);
    p
}

/// Index of the callback in [`prog_loop`].
const LOOP_CB_INSN: u32 = 8;

/// `bpf_loop(1, cb, NULL, 0); return 0` with `static int cb(u64, void *) { return 0; }`.
fn prog_loop() -> Vec<Insn> {
    let mut p = vec![asm::mov64_imm(1, 1)];
    // ld_func at insn 1: target = 1 + rel + 1.
    p.extend(asm::ld_func(2, LOOP_CB_INSN as i32 - 2));
    p.extend([
        asm::mov64_imm(3, 0),
        asm::mov64_imm(4, 0),
        asm::call_helper(sys::BPF_FUNC_LOOP),
        asm::mov64_imm(0, 0),
        asm::exit(),
        // callback
        asm::mov64_imm(0, 0),
        asm::exit(),
    ]);
    debug_assert_eq!(p.len(), LOOP_CB_INSN as usize + 2);
    p
}

/// The two functions of a program whose callback starts at `cb`: the
/// callback must be static.
fn callback_funcs(cb: u32) -> [FuncInfo; 2] {
    [
        FuncInfo {
            insn_off: 0,
            name: "main_prog".into(),
            is_main: true,
        },
        FuncInfo {
            insn_off: cb,
            name: "cb".into(),
            is_main: false,
        },
    ]
}

/// Loads `insns` as a tracepoint program (with a two-function BTF if it has a callback
/// at `callback_at`) and closes it again. `Err` says why it was refused.
fn try_load(insns: &[Insn], callback_at: Option<u32>) -> Result<(), String> {
    let mut btf_fd = None;
    let mut b = None;
    if let Some(cb) = callback_at {
        let funcs = callback_funcs(cb);
        let built = btf::funcs_btf(&funcs);
        let fd = sys::btf_load(&built.blob)
            .map_err(|e| format!("BTF refused: {}", first_line(&e.msg)))?;
        btf_fd = Some(fd);
        b = Some(built);
    }
    use std::os::fd::AsRawFd;
    let attr = sys::ProgLoadAttr {
        prog_type: sys::BPF_PROG_TYPE_TRACEPOINT,
        insns,
        license: "GPL",
        name: "bpfckpt_doctor",
        prog_btf_fd: btf_fd.as_ref().map(|f| f.as_raw_fd()),
        func_info_rec_size: b.as_ref().map_or(0, |b| b.func_info_rec_size),
        func_info_cnt: b.as_ref().map_or(0, |b| b.func_info_cnt()),
        func_info: b.as_ref().map_or(&[][..], |b| &b.func_info),
    };
    sys::prog_load(&attr).map(drop).map_err(|e| refusal(&e))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The verifier's own reason from a `sys::prog_load` error: the last log line that is not
/// an instruction trace or a statistics line; else the error's first line.
fn refusal(e: &Error) -> String {
    let log = e.log.as_deref().unwrap_or("");
    let reason = log.lines().rev().map(str::trim).find(|l| {
        let insn_trace = l
            .split_once(':')
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        !l.is_empty()
            && !insn_trace
            && !l.starts_with("processed ")
            && !l.starts_with("verification time")
            && !l.starts_with("stack depth")
            && !l.starts_with("[... ")
            && !l.starts_with(';')
    });
    match reason {
        Some(r) => format!("refused by the verifier: {r}"),
        None => format!("load failed: {}", first_line(&e.msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_lines() {
        let s = format(&[
            Check::new("a", true, ""),
            Check::new("b", false, "why\nmore"),
            Check::new("c", false, "no bpf_loop").degrading(),
        ]);
        assert_eq!(s, "ok    a\nFAIL  b: why | more\nwarn  c: no bpf_loop\n");
    }

    #[test]
    fn refusal_picks_the_verifier_reason() {
        let e = Error::new("loading BPF program `x`: Invalid argument (os error 22)").with_log(
            "0: R1=ctx() R10=fp0\n\
             3: (85) call bpf_probe_write_user#36\nprogram of this type cannot use helper bpf_probe_write_user#36\n\
             processed 4 insns (limit 1000000) max_states_per_insn 0",
        );
        assert_eq!(
            refusal(&e),
            "refused by the verifier: program of this type cannot use helper bpf_probe_write_user#36"
        );
        assert_eq!(refusal(&Error::new("boom\nx")), "load failed: boom");
    }

    #[test]
    fn loop_program_shape() {
        let p = prog_loop();
        assert_eq!(p.len(), 10);
        // ld_imm64 at 1 points at the callback.
        assert_eq!(1 + p[1].imm + 1, LOOP_CB_INSN as i32);
        assert_eq!(
            btf::funcs_btf(&callback_funcs(LOOP_CB_INSN)).func_info_cnt(),
            2
        );
        let p = prog_for_each(3);
        assert_eq!(2 + p[2].imm + 1, FOR_EACH_CB_INSN as i32);
        assert!(bpfload::insn::Needs::of(&p).callbacks);
        assert!(bpfload::insn::Needs::of(&prog_atomics()).atomics);
    }
}
