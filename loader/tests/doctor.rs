//! `bpfckpt doctor` on this machine's real kernel. Needs root (CI runs as
//! root); without it the test fails with a clear message.

#[path = "../bpfload/tests/common/mod.rs"]
mod common;

use bpfckpt::doctor;
use common::need_root;

#[test]
fn sys_doctor_reports_this_machine() {
    need_root();
    let checks = doctor::run();
    let text = doctor::format(&checks);
    eprintln!("{text}");
    let get = |n: &str| {
        checks
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("no check {n}:\n{text}"))
    };
    for ok in [
        "bpf_loop helper",
        "bpf_probe_read_user helper",
        "bpf_probe_read_user_str helper",
        "bpf_get_current_pid_tgid helper",
        "bpf_send_signal helper",
        "ring buffer (bpf_ringbuf_output)",
        "tracefs",
        "privileges",
        "kernel BTF",
        "BPF callbacks (bpf_for_each_map_elem)",
        "atomic fetch-or and xchg",
        "map-in-map with mmapable inner arrays",
        "raw page-fault tracepoints",
        "mode",
    ] {
        assert!(get(ok).ok, "{text}");
    }
    // This kernel has every feature: the full set, and the version is information.
    assert!(
        text.lines().any(|l| l.starts_with("ok    mode: full")),
        "{text}"
    );
    assert!(get("kernel version").ok, "{text}");
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    let (avail, why) = doctor::probe_write_user_available();
    let pwu = get("bpf_probe_write_user helper");
    assert_eq!(pwu.ok, avail);
    if lockdown.contains("[integrity]") || lockdown.contains("[confidentiality]") {
        assert!(!pwu.ok, "{text}");
        assert!(
            pwu.detail
                .contains("cannot use helper bpf_probe_write_user#36"),
            "{text}"
        );
        assert!(pwu.detail.contains("kernel lockdown"), "{text}");
        assert!(why.contains("refused by the verifier"), "{why}");
        assert!(
            text.lines().any(
                |l| l.starts_with("FAIL  bpf_probe_write_user helper: refused by the verifier")
            )
        );
        assert!(text.lines().any(|l| l == "ok    bpf_loop helper"));
    }
    // The mechanism named is the one the kernel has: soft-dirty when it
    // keeps the bits (Debian's configs), else the userfaultfd.
    let config = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let dirty = get("dirty tracking");
    if config.lines().any(|l| l == "CONFIG_MEM_SOFT_DIRTY=y") {
        assert_eq!(dirty.detail, "soft-dirty", "{text}");
    } else if config.lines().any(|l| l == "CONFIG_USERFAULTFD=y") {
        assert!(
            dirty.detail.starts_with("userfaultfd write protection"),
            "{text}"
        );
    }
}
