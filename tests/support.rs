//! Helpers shared by the test suites of this package.

use std::path::{Path, PathBuf};

pub fn need_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    assert!(
        uid.split_whitespace().nth(2) == Some("0"),
        "these tests need root (BPF, tracefs, other processes' memory)"
    );
}

/// The `bpfckpt` binary: `BPFCKPT_BIN`, else next to this test's own
/// directory (`target/<profile>/bpfckpt`, built by `cargo xtask test`).
pub fn bpfckpt() -> PathBuf {
    if let Some(p) = std::env::var_os("BPFCKPT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("bpfckpt");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p bpfckpt`, or run `cargo xtask test`)",
        p.display()
    );
    p
}

/// The per-target `summary` event in bpfckpt's `--json` output.
pub fn target_summary(stdout: &str) -> Option<&str> {
    stdout
        .lines()
        .find(|l| l.contains("\"event\":\"summary\"") && l.contains("\"scope\":\"pid"))
}

/// The number after `"key":` in a JSON line.
pub fn json_num(line: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let rest = &line[line.find(&pat)? + pat.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}
