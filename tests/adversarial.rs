//! Exact under adversarial memory: the real `bpfckpt` binary serving
//! `adv-target` (tests/targets/adv_target.rs), whose scenarios (modelled on
//! CRIU's zdtm memory tests, plus the paths nothing else exercises) destroy
//! every captured mapping of the whole process between checkpoint and
//! restore and check that everything comes back. Each scenario runs tracked
//! and `--exhaustive`. Several fail against today's engine on purpose: each
//! pins a bug (see the comment above it). Needs root.
//!
//! Tests that change kernel-wide settings (transparent huge pages,
//! vm.nr_hugepages) run alone, set them before bpfckpt starts (it reads the
//! THP settings then) and put the old values back even when they fail.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

mod support;
use support::{Run, json_num, modes_pass, summary_field, word_num};

const ADV: &str = env!("CARGO_BIN_EXE_adv-target");

/// Shared by every test; taken exclusively by those that change
/// kernel-wide memory settings, which would change what the others test.
static SETTINGS: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SETTINGS.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SETTINGS.write().unwrap_or_else(|e| e.into_inner())
}

/// A kernel setting changed for one test and put back on drop.
struct Knob {
    path: String,
    old: String,
}

impl Knob {
    /// Writes `value` to `path`, remembering the current value (the
    /// bracketed word of a THP choice file, or the whole content).
    fn set(path: &str, value: &str) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let old = match (text.find('['), text.find(']')) {
            (Some(a), Some(b)) if a < b => text[a + 1..b].to_string(),
            _ => text.trim().to_string(),
        };
        std::fs::write(path, value).unwrap_or_else(|e| panic!("write {value} to {path}: {e}"));
        Self {
            path: path.to_string(),
            old,
        }
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.old) {
            eprintln!("could not put {} back to {}: {e}", self.old, self.path);
        }
    }
}

const THP: &str = "/sys/kernel/mm/transparent_hugepage";

/// Runs scenario `name` three ways: the written-page bitmaps alone
/// (`--dirty-tracking off`: run 0, the one the assertions below look at),
/// `--exhaustive`, and with this kernel's dirty tracking (the default). All
/// must pass, and must really have destroyed and compared memory.
fn adv(name: &str, cycles: u32) -> Vec<Run> {
    let runs = modes_pass(
        &format!("adv-{name}-"),
        ADV,
        &[name],
        name,
        cycles,
        [&["--dirty-tracking", "off"], &["--exhaustive"], &[]],
    );
    checked(runs.into())
}

/// As [`adv`] without the dirty-tracking run, for what a userfaultfd
/// registration refuses (see the test).
fn adv_untracked(name: &str, cycles: u32) -> Vec<Run> {
    let runs = modes_pass(
        &format!("adv-{name}-"),
        ADV,
        &[name],
        name,
        cycles,
        [&["--dirty-tracking", "off"], &["--exhaustive"]],
    );
    checked(runs.into())
}

fn checked(runs: Vec<Run>) -> Vec<Run> {
    for r in &runs {
        let line = r.pass_line().expect("PASS line");
        let scorched = word_num(line, "scorched_pages").unwrap_or(0);
        let compared = word_num(line, "compared_maps").unwrap_or(0);
        let cycles = word_num(line, "cycles").unwrap_or(0);
        assert!(
            scorched > 0 && compared >= cycles * 3,
            "the scenario destroyed or compared nothing: {line}"
        );
    }
    runs
}

/// The tracked run's checkpoints that user space completed found no page
/// that held data without being marked written: no write escaped the
/// tracking.
fn assert_nothing_unmarked(runs: &[Run]) {
    assert_eq!(
        summary_field(&runs[0], "pages_unmarked_data"),
        0,
        "writes escaped the tracking"
    );
}

/// The tracked run had checkpoints that BPF completed alone (not held for
/// user space, which saves every present page whatever the tracking says):
/// otherwise a tracking bug could not show.
fn assert_bpf_alone(runs: &[Run]) {
    let alone = runs[0]
        .checkpoints()
        .iter()
        .filter(|l| l.contains("\"held\":false"))
        .count();
    assert!(
        alone > 0,
        "every checkpoint was completed from user space: the tracking was never what decided"
    );
}

// ---------------------------------------------------------------------------------------
// A. Modelled on CRIU's zdtm memory tests.

/// The premise of the suite: with everything destroyed in between, the
/// restore gives back a process whose every captured mapping hashes as at
/// the checkpoint and that still works.
#[test]
fn baseline_whole_process_scorched_and_restored() {
    let _g = shared();
    adv("baseline", 3);
}

#[test]
fn maps00_many_mappings_of_every_kind_and_protection() {
    let _g = shared();
    adv("maps00", 3);
}

#[test]
fn maps01_shared_anonymous_256_mib_fully_written() {
    let _g = shared();
    adv("maps01", 2);
}

#[test]
fn maps02_madvise_flags_before_and_after_the_checkpoint() {
    let _g = shared();
    adv("maps02", 3);
}

/// Known bug: the checkpoint's bpf_loop is asked for more than 2^23
/// iterations (16 Mi pages), refuses, saves nothing, and reports success.
#[test]
fn maps03_64_gib_sparse_reservation_with_64_pages_in_use() {
    let _g = shared();
    adv("maps03", 2);
}

/// Known bug: a writable anonymous mapping right above an inaccessible one
/// is taken for a thread stack and never captured.
#[test]
fn maps04_512_pages_made_inaccessible_inside_512_mib() {
    let _g = shared();
    adv("maps04", 2);
}

/// Known bug: read-only private mappings are not captured, so what was
/// written while they were briefly writable stays.
#[test]
fn maps05_read_only_at_checkpoint_written_before_restore() {
    let _g = shared();
    adv("maps05", 2);
}

#[test]
fn maps05_writable_at_checkpoint_read_only_at_restore() {
    let _g = shared();
    adv("maps05-rev", 3);
}

/// Shared anonymous memory made read-only before the restore: the kernel
/// only forces writes into private (copy-on-write) mappings.
#[test]
fn maps05_shared_anonymous_read_only_at_restore() {
    let _g = shared();
    adv("maps05-rev-shared", 2);
}

/// Known bug: the region table holds 16,384 entries; more ends the session.
#[test]
fn maps06_twenty_thousand_mappings() {
    let _g = shared();
    adv("maps06", 2);
}

/// mremap before the checkpoint (move every cycle, grow in place, shrink,
/// grow and move): pages arrive without faults.
#[test]
fn maps07_mremap_before_the_checkpoint() {
    let _g = shared();
    let runs = adv("maps07", 3);
    assert_bpf_alone(&runs);
}

#[test]
fn maps07_mremap_between_checkpoint_and_restore() {
    let _g = shared();
    adv("maps07-between", 3);
}

/// vm.nr_hugepages for the hugetlb scenarios (16 MiB each, read whole).
fn huge_pages() -> Knob {
    let path = "/proc/sys/vm/nr_hugepages";
    let old: u64 = std::fs::read_to_string(path)
        .expect("nr_hugepages")
        .trim()
        .parse()
        .expect("a number");
    let k = Knob::set(path, &(old + 64).to_string());
    let free = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("HugePages_Free:")
                .map(|v| v.trim().parse::<u64>().unwrap_or(0))
        })
        .unwrap_or(0);
    assert!(free >= 32, "the kernel gave only {free} free huge pages");
    k
}

/// Known bug: shared hugetlb memory (`/anon_hugepage`, shared) is not captured.
#[test]
fn maps09_shared_anonymous_huge_pages() {
    let _g = exclusive();
    let _k = huge_pages();
    adv("maps09", 2);
}

#[test]
fn maps10_private_anonymous_huge_pages() {
    let _g = exclusive();
    let _k = huge_pages();
    adv("maps10", 2);
}

/// Known bug: a guard page reads as an I/O error; the session ends.
#[test]
fn maps12_guard_pages_installed_before_the_checkpoint() {
    let _g = shared();
    adv("maps12", 2);
}

/// Guard pages installed after the checkpoint on pages that held data:
/// they must still be guards afterwards, the rest restored.
#[test]
fn maps12_guard_pages_installed_after_the_checkpoint() {
    let _g = shared();
    adv("maps12-after", 2);
}

/// Known bug: an inaccessible page right below a data block hides it (the
/// shape of a thread stack's guard page).
#[test]
fn mprotect00_protection_patterns() {
    let _g = shared();
    adv("mprotect00", 3);
}

/// A MAP_GROWSDOWN mapping that grows by faults: no system call, so no
/// layout change is seen, and the grown pages are missing from the table.
#[test]
fn grow_map_growsdown_mapping_grown_by_touching_below_it() {
    let _g = shared();
    adv("grow_map", 3);
}

/// Known bug: SysV shared memory (`/SYSV...`) is not captured.
#[test]
fn shm_sysv_shared_memory() {
    let _g = shared();
    adv("shm", 2);
}

#[test]
fn memfd00_memfd_mapped_shared_and_private() {
    let _g = shared();
    adv("memfd00", 3);
}

#[test]
fn thp_disable_prctl_then_ordinary_use() {
    let _g = shared();
    adv("thp_disable", 3);
}

fn has_cpu_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == flag))
}

#[test]
fn fpu00_vector_and_x87_registers_across_both_requests() {
    let _g = shared();
    assert!(has_cpu_flag("avx"), "this test needs AVX");
    adv("fpu00", 3);
}

#[test]
fn mmx00_mmx_registers_across_both_requests() {
    let _g = shared();
    adv("mmx00", 3);
}

#[test]
fn mem_touch_random_pages_over_many_cycles() {
    let _g = shared();
    let runs = adv("mem_touch", 20);
    assert_bpf_alone(&runs);
}

// ---------------------------------------------------------------------------------------
// B. Paths no other test takes.

/// The THP settings of one test: the top-level `enabled` and per-size
/// knobs, set before bpfckpt starts.
fn thp_settings(top: &str, sizes: &[(&str, &str)]) -> Vec<Knob> {
    let mut k = vec![Knob::set(&format!("{THP}/enabled"), top)];
    for (size, v) in sizes {
        k.push(Knob::set(&format!("{THP}/hugepages-{size}/enabled"), v));
    }
    k
}

fn assert_thp_used(runs: &[Run], key: &str) {
    for r in runs {
        let line = r.pass_line().expect("PASS line");
        assert!(
            word_num(line, key).unwrap_or(0) > 0,
            "no transparent huge pages were used ({key}): {line}"
        );
    }
}

#[test]
fn thp_with_madv_hugepage() {
    let _g = exclusive();
    let _k = thp_settings("madvise", &[("2048kB", "inherit")]);
    let runs = adv("thp-madvise", 3);
    assert_thp_used(&runs, "thp_kb");
    // Where huge pages may back any fault, a fault marks its whole chunk,
    // so pages BPF cannot read hold the target and user space completes:
    // slower, and exact as long as no write went unmarked.
    assert_nothing_unmarked(&runs);
}

#[test]
fn thp_enabled_always() {
    let _g = exclusive();
    let _k = thp_settings("always", &[("2048kB", "inherit")]);
    let runs = adv("thp-plain", 3);
    assert_thp_used(&runs, "thp_kb");
    // Where huge pages may back any fault, a fault marks its whole chunk,
    // so pages BPF cannot read hold the target and user space completes:
    // slower, and exact as long as no write went unmarked.
    assert_nothing_unmarked(&runs);
}

/// Suspected bug: bpfckpt only reads the top-level `enabled`; with 2 MiB
/// pages switched on per size, one write fault maps 512 pages that later
/// writes fill without faulting, unseen by the tracking.
#[test]
fn thp_per_size_2048k_always_with_top_level_madvise() {
    let _g = exclusive();
    let _k = thp_settings("madvise", &[("2048kB", "always")]);
    let runs = adv("thp-plain", 3);
    assert_thp_used(&runs, "thp_kb");
    // Where huge pages may back any fault, a fault marks its whole chunk,
    // so pages BPF cannot read hold the target and user space completes:
    // slower, and exact as long as no write went unmarked.
    assert_nothing_unmarked(&runs);
}

/// The same with 64 KiB multi-size THP: one fault maps 16 pages.
#[test]
fn thp_per_size_64k_always_with_top_level_madvise() {
    let _g = exclusive();
    let _k = thp_settings("madvise", &[("2048kB", "inherit"), ("64kB", "always")]);
    let runs = adv("thp-plain", 3);
    assert_thp_used(&runs, "thp_faults_64kB");
    // Where huge pages may back any fault, a fault marks its whole chunk,
    // so pages BPF cannot read hold the target and user space completes:
    // slower, and exact as long as no write went unmarked.
    assert_nothing_unmarked(&runs);
}

#[test]
fn mlock_populates_without_faults() {
    let _g = shared();
    assert_bpf_alone(&adv("mlock", 3));
}

#[test]
fn mlock2_with_and_without_mlock_onfault() {
    let _g = shared();
    assert_bpf_alone(&adv("mlock2", 3));
}

#[test]
fn mlockall_current_and_future() {
    let _g = shared();
    adv("mlockall", 3);
}

#[test]
fn map_populate_mappings_written_without_faults() {
    let _g = shared();
    assert_bpf_alone(&adv("map-populate", 3));
}

#[test]
fn map_locked_mappings_written_without_faults() {
    let _g = shared();
    assert_bpf_alone(&adv("map-locked", 3));
}

#[test]
fn madv_populate_write_before_and_after_the_checkpoint() {
    let _g = shared();
    assert_bpf_alone(&adv("populate-write", 3));
}

#[test]
fn madv_collapse_before_and_after_the_checkpoint() {
    let _g = shared();
    // Not with userfaultfd tracking: the kernel refuses MADV_COLLAPSE
    // (EINVAL) in a range registered for write protection, which the
    // README lists among the tracker's costs.
    assert_bpf_alone(&adv_untracked("madv-collapse", 3));
}

#[test]
fn read_from_a_file_into_never_touched_buffers() {
    let _g = shared();
    assert_bpf_alone(&adv("read-into", 3));
}

/// 131,072 pages absent at the checkpoint and written since: more than
/// the probe's ZERO_TODO list (65,536) holds.
#[test]
fn more_than_65536_pages_absent_at_the_checkpoint_written_since() {
    let _g = shared();
    adv("absent-65k", 3);
}

/// Known bug: more zero ranges than ZERO_RANGES holds (16,384) leaves the
/// untouched pages unzeroed (every other page of 256 MiB: 32,768 ranges).
#[test]
fn more_than_16384_zero_ranges() {
    let _g = shared();
    adv("zero-ranges-16k", 2);
}

/// Known bug: more than 2^23 captured pages (a 40 GiB reservation).
#[test]
fn more_than_2_pow_23_captured_pages() {
    let _g = shared();
    adv("pages-2p23", 2);
}

// ---------------------------------------------------------------------------------------
// C. Suspicions from reading the code, each pinned.

/// A page untouched at the checkpoint and only read after it (the shared
/// zero page gets mapped), written in the next cycles. With the restore's
/// zero-page list this is not a bug: the page is not written by the
/// restore, so its next write still faults.
#[test]
fn c1_page_only_read_after_the_checkpoint() {
    let _g = shared();
    assert_bpf_alone(&adv("c1-zero-page", 3));
}

/// The bug behind the suspicion: when the restore scans the zero ranges
/// (ZERO_TODO overflowed), it writes zeros into every present page, the
/// zero-page mappings too; process_vm_writev breaks their copy-on-write
/// without a fault in the target, so the target's next writes there fault
/// no more and the tracking never learns of them.
#[test]
fn c1_page_only_read_after_the_checkpoint_then_a_zero_scan() {
    let _g = shared();
    assert_bpf_alone(&adv("c1-zero-page-scan", 3));
}

/// Suspected bug: the probes clear the written-page bitmaps at the entry of
/// MADV_DONTNEED, which an mlock'ed range refuses (EINVAL): nothing was
/// discarded but the data is taken for never written.
#[test]
fn c2_madv_dontneed_refused_on_an_mlocked_range() {
    let _g = shared();
    assert_bpf_alone(&adv("c2-mlock-dontneed", 3));
}

/// The same with a misaligned start (EINVAL too).
#[test]
fn c2_madv_dontneed_refused_with_a_misaligned_start() {
    let _g = shared();
    assert_bpf_alone(&adv("c2-unaligned-dontneed", 3));
}

/// The layout events' own sequence number is not in bpfckpt's output; what
/// is observable is each checkpoint's `table_seq` (the region table the
/// probe walked) and `applied_seq` (the table after completion). With a new
/// mapping before every checkpoint, they must increase from checkpoint to
/// checkpoint (a stale walk may repeat the table before it), and a
/// checkpoint that was not stale walked the current table.
#[test]
fn c3_layout_sequence_numbers_increase() {
    let _g = shared();
    let cycles = 5;
    let runs = adv("c3-layout-seq", cycles);
    for (mode, r) in ["tracked", "--exhaustive"].iter().zip(&runs) {
        let seqs: Vec<(u64, u64, u64)> = r
            .checkpoints()
            .iter()
            .map(|l| {
                let f = |k| json_num(l, k).unwrap_or_else(|| panic!("no {k} in {l}"));
                (f("table_seq"), f("applied_seq"), f("stale"))
            })
            .collect();
        assert_eq!(seqs.len(), cycles as usize, "{mode}: {seqs:?}");
        for w in seqs.windows(2) {
            assert!(
                w[1].1 > w[0].1,
                "{mode}: applied_seq did not increase: {seqs:?}"
            );
        }
        for &(table, applied, stale) in &seqs {
            assert!(applied != u64::MAX, "{mode}: no table applied: {seqs:?}");
            if stale == 0 {
                assert_eq!(
                    table, applied,
                    "{mode}: a fresh checkpoint walked another table: {seqs:?}"
                );
            }
        }
        // A walk never goes back to an older table. A stale one may walk
        // the same table as the checkpoint before it: the target asked
        // before bpfckpt had applied its new mapping (seen under load),
        // which is what `stale` reports, and user space redoes that walk.
        let walked: Vec<(u64, u64)> = seqs
            .iter()
            .filter(|s| s.0 != u64::MAX)
            .map(|s| (s.0, s.2))
            .collect();
        assert!(
            walked
                .windows(2)
                .all(|w| w[1].0 > w[0].0 || (w[1].1 == 1 && w[1].0 == w[0].0)),
            "{mode}: table_seq did not increase: {seqs:?}"
        );
    }
}

/// A second thread blocked in read(2) on a pipe at both requests: its
/// stack is left alone, what it wrote before the checkpoint (its malloc
/// arena, an mmap'd buffer) is restored, and it works when it wakes.
#[test]
fn c4_thread_blocked_in_a_system_call_keeps_its_stack_and_memory() {
    let _g = shared();
    adv("c4-threads", 3);
}

// ---------------------------------------------------------------------------------------
// Found while writing the suite.

/// A PROT_WRITE-only mapping (readable anyway on x86) is writable memory
/// of the process, but bpfckpt only captures mappings marked readable.
#[test]
fn write_only_mapping() {
    let _g = shared();
    adv("prot-wronly", 2);
}

/// A shared mapping of an ordinary file whose path starts with /dev/zero
/// is taken for shared anonymous memory: the restore writes the
/// checkpoint into the file, which must keep what was written after it.
#[test]
fn shared_file_whose_name_starts_with_dev_zero_is_not_restored() {
    let _g = shared();
    adv("dev-zero-file", 2);
}

/// A joined thread's stack, which glibc keeps for the next thread (its
/// thread descriptor inside), has the shape of a live thread stack and is
/// never captured; after the restore glibc reuses what the scorch left.
#[test]
fn cached_stack_of_a_joined_thread() {
    let _g = shared();
    adv("thread-stack-cache", 2);
}

/// A region behind a protection key that denies access while the target
/// asks for both requests (BPF cannot read it in the target's context).
#[test]
fn protection_key_denies_access_at_the_requests() {
    let _g = shared();
    assert!(has_cpu_flag("pku"), "this test needs protection keys (PKU)");
    adv("pkey", 3);
}

/// The requests made on a stack carved out of a bigger data mapping
/// (coroutines, green threads): bpfckpt leaves out every mapping that holds
/// a thread's stack pointer, the data beside the stack too.
#[test]
fn requests_made_on_a_stack_inside_a_data_mapping() {
    let _g = shared();
    adv("coroutine-stack", 2);
}

/// The control: the same stack in a mapping of its own.
#[test]
fn requests_made_on_a_stack_in_a_mapping_of_its_own() {
    let _g = shared();
    adv("coroutine-stack-apart", 2);
}
