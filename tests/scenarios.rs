//! Scenario tests: the real `bpfckpt` binary serving real target processes
//! on this machine's kernel. Each target verifies every byte it owns after
//! every restore and exits non-zero on the first difference. Needs root.

use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use bpfckpt_protocol::CHECKPOINT_DONE;
use support::{
    Dir, Run, assert_pass, both_modes, bpfckpt, json_num, modes_pass, need_root, run, run_env,
    spawn_bpfckpt, summary_field, wait_line, wait_timeout,
};

const TARGET: &str = env!("CARGO_BIN_EXE_ckpt-target");
const BSS_TARGET: &str = env!("CARGO_BIN_EXE_ckpt-bss400");

/// Runs a scenario with the touched-page tracking and again trying every
/// page (`--exhaustive`): both must verify every byte; the tracked run must
/// not save more pages than the exhaustive one.
fn scenario(name: &str, cycles: u32) {
    both_modes(name, TARGET, &[name], name, cycles);
}

#[test]
fn heap_small_malloc_in_brk_heap() {
    scenario("heap-small", 3);
}

#[test]
fn heap_big_malloc_mmapped() {
    scenario("heap-big", 3);
}

#[test]
fn shared_anonymous_at_fixed_address() {
    scenario("shared-fixed", 3);
}

#[test]
fn bss_and_data_arrays() {
    scenario("bss-data", 3);
}

#[test]
fn untouched_data_pages_keep_file_content() {
    scenario("data-untouched", 1);
}

#[test]
fn pages_untouched_at_checkpoint_are_zero_after_restore() {
    scenario("untouched", 1);
}

#[test]
fn zapped_pages_get_their_content_back() {
    scenario("zapped", 3);
}

#[test]
fn read_only_pages_are_restored() {
    scenario("readonly", 1);
}

/// The test hook of kernels that let only a tracer write read-only pages
/// through /proc/PID/mem (CONFIG_PROC_MEM_FORCE_PTRACE).
const FORCE_PTRACE: (&str, &str) = ("BPFCKPT_FORCE_PTRACE_WRITER", "1");

/// The `ptrace_writes` of each restore event.
fn ptrace_writes(r: &support::Run) -> Vec<u64> {
    r.stdout
        .lines()
        .filter(|l| l.contains("\"event\":\"restore\""))
        .map(|l| json_num(l, "ptrace_writes").unwrap_or(0))
        .collect()
}

/// Read-only pages written as the target's tracer, as on Debian's 7.x
/// kernels: held by SIGSTOP or in its open, tracked or not, every byte is
/// back (the target checks), the 256 read-only pages went through the
/// tracer, and the target was left stopped after each detach (bpfckpt
/// checks its state and fails the restore otherwise).
#[test]
fn read_only_pages_are_written_as_the_tracer() {
    for (hold, extra) in [
        ("signal", &["--hold", "signal"][..]),
        ("signal-x", &["--hold", "signal", "--exhaustive"]),
        ("open", &["--hold", "open"]),
        ("open-x", &["--hold", "open", "--exhaustive"]),
    ] {
        let dir = Dir::new(&format!("ptrace-writer-{hold}"));
        let r = run_env(
            &dir,
            &[FORCE_PTRACE],
            extra,
            TARGET,
            &["readonly", "--cycles", "1"],
        );
        assert_pass(&r, "readonly", 1);
        let w = ptrace_writes(&r);
        assert!(
            w.len() == 1 && w[0] >= 256,
            "--hold {hold}: ptrace_writes {w:?}\n{}",
            r.stdout
        );
    }
    // Inaccessible pages: read at the checkpoint, written at the restore,
    // both as the tracer.
    for hold in ["signal", "open"] {
        let dir = Dir::new(&format!("ptrace-reader-{hold}"));
        let r = run_env(
            &dir,
            &[FORCE_PTRACE],
            &["--hold", hold],
            TARGET,
            &["inaccessible", "--cycles", "1"],
        );
        assert_pass(&r, "inaccessible", 1);
        let reads: Vec<u64> = r
            .checkpoints()
            .iter()
            .map(|l| json_num(l, "ptrace_reads").unwrap_or(0))
            .collect();
        assert!(
            reads.iter().sum::<u64>() >= 64,
            "--hold {hold}: ptrace_reads {reads:?}"
        );
        let w = ptrace_writes(&r);
        assert!(
            w.len() == 1 && w[0] >= 64,
            "--hold {hold}: ptrace_writes {w:?}"
        );
    }
    // Without the hook this kernel (PROC_MEM_ALWAYS_FORCE) needs no tracer.
    let dir = Dir::new("ptrace-writer-none");
    let r = run(&dir, &[], TARGET, &["readonly", "--cycles", "1"]);
    assert_pass(&r, "readonly", 1);
    assert_eq!(ptrace_writes(&r), [0], "{}", r.stdout);
}

/// Many cycles through the tracer, held by SIGSTOP: each restore attaches
/// and detaches once, and the target goes on from its stop every time.
#[test]
fn the_tracer_writer_leaves_the_target_as_it_was() {
    let dir = Dir::new("ptrace-writer-all");
    let r = run_env(
        &dir,
        &[FORCE_PTRACE],
        &["--hold", "signal"],
        TARGET,
        &["all", "--cycles", "8"],
    );
    assert_pass(&r, "all", 8);
    let w = ptrace_writes(&r);
    assert!(
        w.len() == 8 && w.iter().all(|&n| n > 0),
        "ptrace_writes {w:?}"
    );
}

#[test]
fn other_threads_stacks_are_left_alone() {
    scenario("threads", 5);
}

#[test]
fn many_cycles_with_damage_of_every_kind() {
    scenario("all", 25);
}

#[test]
fn bss_array_of_400_mb() {
    // The bitmaps alone, --exhaustive, and with dirty tracking.
    let runs = modes_pass(
        "bss400",
        BSS_TARGET,
        &[],
        "bss-400m",
        3,
        [&["--dirty-tracking", "off"], &["--exhaustive"], &[]],
    );
    // With dirty tracking, every restore writes only what was dirtied:
    // fewer pages than the bitmaps' every page ever written. (A checkpoint
    // whose dirty set overflows the probes' list is a full one.)
    let restores: Vec<&str> = runs[2]
        .stdout
        .lines()
        .filter(|l| l.contains("\"event\":\"restore\""))
        .collect();
    assert!(
        restores.len() == 3 && restores.iter().all(|l| l.contains("\"incremental\":true")),
        "{}",
        runs[2].tail()
    );
    let restored =
        |r: &Run| summary_field(r, "pages_restored_bpf") + summary_field(r, "pages_restored_user");
    assert!(
        restored(&runs[2]) < restored(&runs[0]),
        "{} vs {}",
        restored(&runs[2]),
        restored(&runs[0])
    );
    // The bitmaps engage: the untouched 400 MB are skipped, not read,
    // and BPF alone completes the checkpoints once the store is sized (the
    // first may be held while it grows).
    let skipped = summary_field(&runs[0], "pages_skipped_untouched");
    assert!(skipped > 2 * 95_000, "untouched pages skipped: {skipped}");
    let held: Vec<bool> = runs[0]
        .checkpoints()
        .iter()
        .map(|l| l.contains("\"held\":true"))
        .collect();
    assert!(
        held.iter().skip(1).all(|&h| !h),
        "checkpoints after the first were held: {held:?}"
    );
    assert_eq!(
        summary_field(&runs[1], "pages_skipped_untouched"),
        0,
        "--exhaustive skipped pages"
    );
}

#[test]
fn anon_only_still_restores_anonymous_memory() {
    let dir = Dir::new("anon-only");
    let r = run(
        &dir,
        &["--anon-only"],
        TARGET,
        &["heap-big", "--cycles", "2"],
    );
    assert_pass(&r, "heap-big", 2);
}

#[test]
fn target_killed_mid_cycle_ends_the_session() {
    let dir = Dir::new("killed");
    need_root();
    let (mut child, mut lines) = spawn_bpfckpt(&[
        "run",
        "--json",
        "--trigger-dir",
        &dir.s(),
        "--",
        TARGET,
        "hold",
        "--dir",
        &dir.s(),
    ]);
    let target = wait_line(&mut lines, "\"event\":\"target\"");
    let pid = json_num(&target, "pid").expect("bpfckpt reported the target pid");
    wait_line(&mut lines, "CHECKPOINTED");
    // SIGKILL the target between checkpoint and restore.
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let st = wait_timeout(&mut child, Duration::from_secs(30));
    // bpfckpt exits with the target's fate: killed by signal 9.
    assert_eq!(st.code(), Some(128 + 9), "bpfckpt status {st}");
}

#[test]
fn watch_by_name_serves_two_targets_one_after_the_other() {
    need_root();
    let dir = Dir::new("watch");
    // A copy under a name of its own: a watcher matching `ckpt-target`
    // would also adopt the targets of tests running at the same time.
    let program = dir.0.join("scen-watch");
    std::fs::copy(TARGET, &program).expect("copy the target");
    let (mut watcher, mut lines) = spawn_bpfckpt(&[
        "watch",
        "--json",
        "--comm",
        "scen-watch",
        "--trigger-dir",
        &dir.s(),
    ]);
    // Ready once it says it is waiting.
    wait_line(&mut lines, "\"event\":\"watch\"");
    for scenario in ["heap-small", "zapped"] {
        // Started by us, not by bpfckpt: found by name at its exec.
        let out = Command::new(&program)
            .args([scenario, "--cycles", "2", "--dir", &dir.s()])
            .output()
            .expect("run target");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("PASS {scenario}")),
            "{scenario}: {text}"
        );
        // Wait until bpfckpt has noticed the exit and is waiting again.
        wait_line(&mut lines, "\"event\":\"target_gone\"");
    }
    // SIGTERM: orderly shutdown with the summary over both targets.
    let pid = watcher.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    let st = wait_timeout(&mut watcher, Duration::from_secs(30));
    assert_eq!(st.code(), Some(128 + 15), "watch exit status {st}");
    let total = rest
        .iter()
        .find(|l| l.contains("\"scope\":\"all targets\""))
        .unwrap_or_else(|| panic!("no final summary in {rest:?}"));
    assert!(total.contains("\"cycles\":4,"), "{total}");
}

#[test]
fn restore_path_bpf_is_refused_with_a_reason_where_the_kernel_refuses_it() {
    let dir = Dir::new("bpf-path");
    let doctor = Command::new(bpfckpt())
        .arg("doctor")
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&doctor.stdout);
    let write_ok = text
        .lines()
        .any(|l| l.starts_with("ok") && l.contains("bpf_probe_write_user helper"));
    let r = run(&dir, &["--restore-path", "bpf"], TARGET, &["heap-small"]);
    if write_ok {
        assert_pass(&r, "heap-small", 1);
    } else {
        assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
        assert!(r.stderr.contains("bpf_probe_write_user"), "{}", r.stderr);
    }
}

#[test]
fn max_memory_too_small_is_a_clear_error() {
    let dir = Dir::new("maxmem");
    let r = run(&dir, &["--max-memory", "1M"], TARGET, &["heap-big"]);
    assert!(!r.status.success(), "{}", r.stdout);
    assert!(r.stderr.contains("--max-memory"), "{}", r.stderr);
}

#[test]
fn watch_by_executable_path_once() {
    need_root();
    let dir = Dir::new("watch-exe");
    let program = dir.0.join("scen-exe");
    std::fs::copy(TARGET, &program).expect("copy the target");
    // Same name, other path: must not be served.
    let decoy_dir = Dir::new("watch-exe-decoy");
    let decoy = decoy_dir.0.join("scen-exe");
    std::fs::copy(TARGET, &decoy).expect("copy the decoy");
    let program_s = program.display().to_string();
    let (mut watcher, mut lines) = spawn_bpfckpt(&[
        "watch",
        "--json",
        "--once",
        "--trigger-dir",
        &dir.s(),
        "--exe",
        &program_s,
    ]);
    wait_line(&mut lines, "\"event\":\"watch\"");
    // The decoy asks for a checkpoint in the watched directory, but it is
    // not the watched executable: nobody may answer.
    let mut d = Command::new(&decoy)
        .args(["heap-small", "--dir", &dir.s()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("run decoy");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        d.try_wait().expect("try_wait").is_none(),
        "the decoy was served"
    );
    assert!(
        !dir.0.join(CHECKPOINT_DONE).exists(),
        "the decoy was served"
    );
    let _ = d.kill();
    let _ = d.wait();
    let out = Command::new(&program)
        .args(["heap-small", "--cycles", "2", "--dir", &dir.s()])
        .output()
        .expect("run target");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("PASS heap-small"),
        "{text}"
    );
    // --once: bpfckpt exits on its own after the target.
    let st = wait_timeout(&mut watcher, Duration::from_secs(30));
    assert!(st.success(), "watch --once status {st}");
}

/// Degraded mode (forced here with the test hook; the mode of kernels
/// without bpf_loop, callbacks or the fetching atomics): the probes only
/// hold the target, user space copies and writes every page, and every byte
/// is still restored. One warning line says so and why.
fn degraded(tag: &str, program: &str, args: &[&str], pass: &str, cycles: u32) {
    let dir = Dir::new(tag);
    let mut a = args.to_vec();
    let n = cycles.to_string();
    a.extend(["--cycles", &n]);
    let r = run_env(&dir, &[("BPFCKPT_DEGRADED", "1")], &[], program, &a);
    assert_pass(&r, pass, cycles);
    let warnings: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains("\"event\":\"warning\"") && l.contains("degraded mode"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", r.stdout);
    assert!(
        warnings[0].contains("forced by BPFCKPT_DEGRADED=1"),
        "{}",
        warnings[0]
    );
    let start = r
        .stdout
        .lines()
        .find(|l| l.contains("\"event\":\"start\""))
        .expect("a start event");
    assert!(
        start.contains("\"restore_path\":\"user\"") && start.contains("\"degraded\":true"),
        "{start}"
    );
    // User space did it all, at the held target's trigger.
    assert_eq!(summary_field(&r, "pages_saved_bpf"), 0);
    assert_eq!(summary_field(&r, "pages_restored_bpf"), 0);
    assert!(summary_field(&r, "pages_saved_user") > 0);
    assert!(summary_field(&r, "pages_restored_user") > 0);
    assert_eq!(summary_field(&r, "holds"), 2 * u64::from(cycles));
}

#[test]
fn degraded_mode_restores_every_byte_with_damage_of_every_kind() {
    degraded("degraded-all", TARGET, &["all"], "all", 10);
}

#[test]
fn degraded_mode_leaves_other_threads_stacks_alone() {
    degraded("degraded-threads", TARGET, &["threads"], "threads", 3);
}

#[test]
fn degraded_mode_bss_array_of_400_mb() {
    degraded("degraded-bss400", BSS_TARGET, &[], "bss-400m", 2);
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: bpfckpt raises
/// it before it creates any map, to infinity with CAP_SYS_RESOURCE, else
/// the soft limit to the hard one (all a container without that
/// capability allows).
#[test]
fn memlock_limit_is_raised_before_maps_are_created() {
    use std::os::unix::process::CommandExt;
    need_root();
    let dir = Dir::new("memlock");
    let mut cmd = Command::new(bpfckpt());
    cmd.args(["run", "--json", "--trigger-dir", &dir.s(), "--"])
        .args([TARGET, "hold", "--dir", &dir.s()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut low = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut low) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            low.rlim_cur = 64 << 10;
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &low) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn bpfckpt");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    let target = wait_line(&mut lines, "\"event\":\"target\"");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).expect("limits");
    let target_pid = json_num(&target, "pid").expect("target pid");
    let _ = Command::new("kill")
        .args(["-9", &target_pid.to_string()])
        .status();
    let _ = wait_timeout(&mut child, Duration::from_secs(30));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .expect("a memlock line");
    // "Max locked memory <soft> <hard> bytes": raised, to the hard limit.
    let w: Vec<&str> = line.split_whitespace().collect();
    assert!(w.len() >= 5 && w[3] == w[4] && w[3] != "65536", "{line}");
}
