//! Dirty tracking with re-arming, on this kernel's mechanism (userfaultfd
//! write protection, with the userfaultfd injected into the target; soft
//! dirty where the kernel has it): the real `bpfckpt` serving
//! `dirty-target` (tests/targets/dirty_target.rs), whose scenarios change
//! memory between the requests in one way each and verify every byte of
//! their memory after every restore. Besides exactness, each test checks
//! from bpfckpt's events that the requests really were incremental (a
//! checkpoint copying only the dirtied pages, a restore writing only
//! them), or that they fell back where they must. Needs root.

#[path = "src/dirty_expect.rs"]
mod dirty_expect;
mod support;
use dirty_expect::{Path, Seen, pass_line};
use support::{Dir, Run, assert_pass, run, run_env};

const T: &str = env!("CARGO_BIN_EXE_dirty-target");

fn seen(r: &Run) -> Seen {
    dirty_expect::seen(r.stdout.lines())
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

/// The shared expectations (tests/src/dirty_expect.rs, also the VM
/// guest's): this host's restores are user space's (lockdown).
fn assert_incremental(scenario: &str, words: &[&str], s: &Seen, cycles: u32) {
    let traced = words.contains(&"traced");
    if let Err(e) = dirty_expect::check(
        s,
        scenario,
        traced,
        cycles,
        expected_mechanism(),
        dirty_expect::Thp::current(),
        Path::User,
    ) {
        panic!("{scenario}: {e}\n{}", dirty_expect::figures(s));
    }
}

/// Runs `scenario` with the default options and checks it as the guest does.
fn incremental(name: &str, words: &[&str], cycles: u32) -> Seen {
    let (_, s) = scenario(name, words, cycles, &[]);
    assert_incremental(name, words, &s, cycles);
    s
}

#[test]
fn pages_dirtied_by_the_target_and_two_checkpoints_in_a_row() {
    let s = incremental("steady", &[], 40);
    // Every fifth cycle asks for two checkpoints in a row.
    assert_eq!(s.checkpoints, 40 + 40 / 5, "{s:?}");
}

/// A write the probes did not list (a test hook hides one page of long
/// dirty lists, with a userfaultfd): the re-arm's scan finds it written,
/// and the restore writes it back too. Before, it stayed as the target
/// left it.
#[test]
fn a_dirty_page_missing_from_the_list_is_found_by_the_rearm() {
    let dir = Dir::new("dirty-hidden-");
    let r = run_env(
        &dir,
        &[("BPFCKPT_TEST_HIDE_DIRTY", "1")],
        &[],
        T,
        &["steady", "--cycles", "40"],
    );
    assert_pass(&r, "steady", 40);
    if expected_mechanism() == "uffd" {
        assert!(
            r.stdout.contains("\"event\":\"unseen_writes\""),
            "no page was hidden and found\n{}",
            r.stdout
        );
    }
}

#[test]
fn read_into_present_and_absent_pages() {
    incremental("read", &[], 20);
}

#[test]
fn another_process_writes_with_process_vm_writev() {
    incremental("foreign", &[], 20);
}

#[test]
fn fork_between_the_requests() {
    incremental("fork", &[], 20);
}

#[test]
fn mprotect_both_ways() {
    incremental("mprotect", &[], 20);
}

/// Read-only at the checkpoint, then writable and written by another
/// process: the scan must cover the regions the image armed, not the
/// mappings as last read (where the now writable file mapping is not
/// tracked page by page).
#[test]
fn private_file_mapping_made_writable_and_written_from_outside() {
    incremental("mprotect-file", &[], 10);
}

#[test]
fn transparent_huge_pages() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    assert!(
        !thp.contains("[never]"),
        "transparent huge pages are off on this machine ({thp}): the scenario would test nothing"
    );
    incremental("thp", &[], 20);
}

/// One tracker per program image; each image's first checkpoint takes
/// everything, the rest are incremental.
#[test]
fn exec_gets_a_tracker_of_its_own() {
    let dir = Dir::new("dirty-exec-");
    let r = run(&dir, &[], T, &["exec", "--cycles", "20"]);
    assert!(
        r.status.success() && r.stdout.contains(&pass_line("exec", 20)),
        "{}\n{}",
        r.reason(),
        r.tail()
    );
    assert_incremental("exec", &[], &seen(&r), 20);
}

/// The layout changes every cycle: nothing incremental, everything exact
/// (the new mapping is not the checkpoint's; the grown part reads as zero).
#[test]
fn mappings_created_or_grown_after_the_checkpoint() {
    incremental("grow", &[], 12);
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
    assert!(
        s.max_restored < dirty_expect::INCREMENTAL_MAX_PAGES,
        "{s:?}"
    );
}

/// A debugger attached to the target: no injection, one line saying why,
/// and the bitmaps alone (still exact); soft-dirty needs no injection.
#[test]
fn a_traced_target_falls_back_with_one_line() {
    incremental("steady", &["traced"], 6);
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
