//! Dirty tracking with re-arming, on this kernel's mechanism (userfaultfd
//! write protection, with the userfaultfd injected into the target; soft
//! dirty where the kernel has it): the real `bpfckpt` serving
//! `dirty-target` (tests/targets/dirty_target.rs), whose scenarios change
//! memory between the requests in one way each and verify every byte of
//! their memory after every restore. Besides exactness, each test checks
//! from bpfckpt's events that the requests really were incremental (a
//! checkpoint copying only the dirtied pages, a restore writing only
//! them), or that they fell back where they must. Needs root.

mod support;
use support::{Dir, Run, assert_pass, json_num, run, run_env};

const T: &str = env!("CARGO_BIN_EXE_dirty-target");

/// What bpfckpt's events say about one run.
#[derive(Debug, Default)]
struct Seen {
    /// The `mechanism` of each `tracking` event, in order.
    mechanisms: Vec<String>,
    checkpoints: u64,
    incremental_checkpoints: u64,
    restores: u64,
    incremental_restores: u64,
    /// The most pages one restore wrote from user space.
    max_restored: u64,
    warnings: Vec<String>,
    /// How the target is held at its requests (`open` or `signal`).
    hold: String,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let rest = &line[line.find(&pat)? + pat.len()..];
    rest.split('"').next()
}

fn seen(r: &Run) -> Seen {
    let mut s = Seen::default();
    for l in r.stdout.lines() {
        if l.contains("\"event\":\"start\"") {
            s.hold = field(l, "hold").unwrap_or("?").to_string();
        } else if l.contains("\"event\":\"tracking\"") {
            s.mechanisms
                .push(field(l, "mechanism").unwrap_or("?").to_string());
        } else if l.contains("\"event\":\"checkpoint\"") {
            s.checkpoints += 1;
            s.incremental_checkpoints += u64::from(l.contains("\"incremental\":true"));
        } else if l.contains("\"event\":\"restore\"") {
            s.restores += 1;
            s.incremental_restores += u64::from(l.contains("\"incremental\":true"));
            s.max_restored = s.max_restored.max(json_num(l, "pages_user").unwrap_or(0));
        } else if l.contains("\"event\":\"warning\"") {
            s.warnings
                .push(field(l, "message").unwrap_or("").to_string());
        }
    }
    s
}

/// Runs `scenario` for `cycles` under `bpfckpt run --json extra`; it must
/// pass (every byte verified by the target, every request answered).
fn scenario(scenario: &str, words: &[&str], cycles: u32, extra: &[&str]) -> (Run, Seen) {
    let dir = Dir::new(&format!("dirty-{scenario}-"));
    let n = cycles.to_string();
    let mut args = vec![scenario];
    args.extend_from_slice(words);
    args.extend(["--cycles", &n]);
    let r = run(&dir, extra, T, &args);
    assert_pass(&r, scenario, cycles);
    let s = seen(&r);
    (r, s)
}

/// The mechanism this kernel offers: soft-dirty if it keeps the bits,
/// else userfaultfd.
fn expected_mechanism() -> &'static str {
    let config = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if config.lines().any(|l| l == "CONFIG_MEM_SOFT_DIRTY=y") {
        "soft-dirty"
    } else {
        "uffd"
    }
}

/// Every checkpoint after the first copied only what was dirtied, and
/// every restore wrote only that: far fewer pages than the 4,096 of the
/// 16 MiB buffer (a few dozen dirtied per cycle, plus the libraries'
/// writable data, which is saved whole).
fn assert_incremental(s: &Seen, cycles: u32) {
    // The test's trigger directory is private: held in its trigger open.
    assert_eq!(s.hold, "open", "{s:?}");
    assert_eq!(s.mechanisms, [expected_mechanism()], "{s:?}");
    assert_eq!(s.incremental_checkpoints, s.checkpoints - 1, "{s:?}");
    assert_eq!(s.incremental_restores, u64::from(cycles), "{s:?}");
    assert!(
        s.max_restored < 400,
        "a restore wrote {} pages: {s:?}",
        s.max_restored
    );
}

#[test]
fn pages_dirtied_by_the_target_and_two_checkpoints_in_a_row() {
    let (_, s) = scenario("steady", &[], 40, &[]);
    assert_incremental(&s, 40);
    // Every fifth cycle asks for two checkpoints in a row.
    assert_eq!(s.checkpoints, 40 + 40 / 5, "{s:?}");
}

#[test]
fn read_into_present_and_absent_pages() {
    let (_, s) = scenario("read", &[], 20, &[]);
    assert_incremental(&s, 20);
}

#[test]
fn another_process_writes_with_process_vm_writev() {
    let (_, s) = scenario("foreign", &[], 20, &[]);
    assert_incremental(&s, 20);
}

#[test]
fn fork_between_the_requests() {
    let (_, s) = scenario("fork", &[], 20, &[]);
    assert_incremental(&s, 20);
}

#[test]
fn mprotect_both_ways() {
    let (_, s) = scenario("mprotect", &[], 20, &[]);
    assert_incremental(&s, 20);
}

#[test]
fn transparent_huge_pages() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    assert!(
        !thp.contains("[never]"),
        "transparent huge pages are off on this machine ({thp}): the scenario would test nothing"
    );
    let (_, s) = scenario("thp", &[], 20, &[]);
    assert_incremental(&s, 20);
}

#[test]
fn exec_gets_a_tracker_of_its_own() {
    let dir = Dir::new("dirty-exec-");
    let r = run(&dir, &[], T, &["exec", "--cycles", "20"]);
    assert!(
        r.status.success() && r.stdout.contains("PASS exec-rest cycles=10"),
        "{}\n{}",
        r.reason(),
        r.tail()
    );
    let s = seen(&r);
    let m = expected_mechanism();
    assert_eq!(s.mechanisms, [m, m], "one tracker per program image: {s:?}");
    assert_eq!(s.restores, 20, "{s:?}");
    // Each image's first checkpoint takes everything; the rest are
    // incremental.
    assert_eq!(s.incremental_checkpoints, s.checkpoints - 2, "{s:?}");
    assert_eq!(s.incremental_restores, 20, "{s:?}");
}

/// The layout changes every cycle: nothing incremental, everything exact
/// (the new mapping is not the checkpoint's; the grown part reads as zero).
#[test]
fn mappings_created_or_grown_after_the_checkpoint() {
    let (_, s) = scenario("grow", &[], 12, &[]);
    assert_eq!(s.mechanisms, [expected_mechanism()], "{s:?}");
    assert_eq!(s.incremental_restores, 0, "{s:?}");
}

/// `--dirty-tracking off`: the written-page bitmaps alone, so every
/// restore rewrites every page ever written.
#[test]
fn off_restores_every_page_ever_written() {
    let (_, s) = scenario("steady", &[], 6, &["--dirty-tracking", "off"]);
    assert!(s.mechanisms.is_empty(), "{s:?}");
    assert_eq!(
        s.incremental_checkpoints + s.incremental_restores,
        0,
        "{s:?}"
    );
    assert!(s.max_restored >= 4096, "{s:?}");
}

/// Untracked, the bitmaps miss what another process writes: the probes
/// count such writes and the requests fall back to scanning (a page that
/// was absent at the checkpoint and written by the other process must be
/// found and zeroed).
#[test]
fn off_with_another_process_writing() {
    let (_, s) = scenario("foreign", &[], 12, &["--dirty-tracking", "off"]);
    assert!(s.mechanisms.is_empty(), "{s:?}");
    assert_eq!(s.incremental_restores, 0, "{s:?}");
}

/// `--hold signal`: stopped with SIGSTOP at every request, incremental
/// all the same.
#[test]
fn held_by_signal() {
    let (_, s) = scenario("steady", &[], 20, &["--hold", "signal"]);
    assert_eq!(s.hold, "signal", "{s:?}");
    assert_eq!(s.mechanisms, [expected_mechanism()], "{s:?}");
    assert_eq!(s.incremental_restores, 20, "{s:?}");
    assert!(s.max_restored < 400, "{s:?}");
}

/// A debugger attached to the target: no injection, one line saying why,
/// and the bitmaps alone (still exact).
#[test]
fn a_traced_target_falls_back_with_one_line() {
    let (r, s) = scenario("steady", &["traced"], 6, &[]);
    if expected_mechanism() == "soft-dirty" {
        // Nothing to inject: soft-dirty needs no help from the target.
        assert_eq!(s.mechanisms, ["soft-dirty"], "{s:?}");
        return;
    }
    assert_eq!(s.mechanisms, ["none"], "{s:?}");
    let why: Vec<&String> = s
        .warnings
        .iter()
        .filter(|w| w.contains("dirty tracking"))
        .collect();
    assert_eq!(why.len(), 1, "{:?}", s.warnings);
    assert!(why[0].contains("already traced by pid"), "{}", why[0]);
    assert_eq!(s.incremental_restores, 0, "{s:?}");
    assert!(s.max_restored >= 4096, "{s:?}\n{}", r.tail());
}

/// A debugger attached, and read-only pages to write on a kernel that
/// lets only a tracer write them (the test hook): bpfckpt cannot become
/// the tracer, and says so in one error naming the page and the reason;
/// it never skips the page silently.
#[test]
fn a_traced_target_read_only_pages_fail_clearly() {
    let dir = Dir::new("dirty-traced-ro-");
    let r = run_env(
        &dir,
        &[("BPFCKPT_FORCE_PTRACE_WRITER", "1")],
        &["--dirty-tracking", "off"],
        T,
        &["mprotect", "traced", "--cycles", "2"],
    );
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(!all.contains("PASS mprotect"), "{all}");
    let lines: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("cannot write the target's memory at 0x"))
        .collect();
    assert!(!lines.is_empty(), "{all}");
    assert!(
        lines[0].contains("already traced by pid")
            && lines[0].contains("CONFIG_PROC_MEM_FORCE_PTRACE"),
        "{}",
        lines[0]
    );
}
