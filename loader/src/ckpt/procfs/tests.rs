//! Unit tests of the /proc readers (kept apart: the readers alone are
//! read more often than their tests).

use super::*;

const MAPS: &str = "\
5593cd6d2000-5593cd6d3000 r--p 00000000 fe:00 18504                      /usr/bin/prog
5593cd6d6000-5593cd6d7000 rw-p 00003000 fe:00 18504                      /usr/bin/prog
5593cd6d7000-5593cd6d9000 rw-p 00000000 00:00 0 
5593f8638000-5593f87c7000 rw-p 00000000 00:00 0                          [heap]
7f4ebb000000-7f4ebb010000 rw-s 00000000 00:01 99                         /tmp/some file
7f4ebb068000-7f4ebb06a000 rw-s 00000000 00:01 24                         /dev/zero (deleted)
7f4ebb069000-7f4ebb06a000 ---p 00000000 00:00 0 
7f4ebb06a000-7f4ebb06b000 rw-p 00000000 00:00 0                          [anon:thread stack]
7f4ebb06b000-7f4ebb06c000 rw-p 00000000 00:00 0 
7f4ebb06c000-7f4ebb06d000 ---p 00000000 00:00 0 
7f4ebb06d000-7f4ebb06e000 ---p 00000000 00:00 0                          [heap]
7f4ebb06e000-7f4ebb070000 rw-p 00000000 00:00 0                          [heap]
7f4ebb073000-7f4ebb077000 r--p 00000000 00:00 0                          [vvar]
7f4ebb079000-7f4ebb07b000 r-xp 00000000 00:00 0                          [vdso]
7ffe48531000-7ffe48552000 rw-p 00000000 00:00 0                          [stack]
";

#[test]
fn parses_maps_lines_with_spaces_in_paths() {
    let m = parse_maps(MAPS).unwrap();
    assert_eq!(m.len(), 15);
    assert_eq!(m[4].path, "/tmp/some file");
    assert!(m[4].shared && !m[4].is_shared_anon());
    assert!(m[5].is_shared_anon());
    assert_eq!(m[3].path, "[heap]");
    assert!(m[3].is_private_anon());
    assert!(parse_maps("zz-10 rw-p 0 0:0 0").is_err());
    assert!(parse_maps("1000-2000 rw").is_err());
    assert!(parse_maps("2000-1000 rw-p 0 00:00 0").is_err());
}

fn created(s: &[u64]) -> LiveStacks {
    LiveStacks {
        created: s.to_vec(),
        pointers: Vec::new(),
    }
}

#[test]
fn a_stack_pointer_in_a_data_mapping_hides_only_what_lies_above_it() {
    let m = parse_maps("7f0000000000-7f0000c00000 rw-p 00000000 00:00 0\n").unwrap();
    let sp = 0x7f0000bff000 - 40;
    let s = LiveStacks {
        created: Vec::new(),
        pointers: vec![sp],
    };
    let r = captured(&m, &s, false);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].start, r[0].end), (0x7f0000000000, 0x7f0000bfe000));
    assert!(s.covers(&m[0], 0x7f0000bfe000) && !s.covers(&m[0], 0x7f0000bfd000));
    // A stack the target created hides its whole mapping.
    assert!(captured(&m, &created(&[sp]), false).is_empty());
}

#[test]
fn captures_every_private_mapping_and_shared_anonymous_memory() {
    let m = parse_maps(MAPS).unwrap();
    let thread_sp = 0x7f4ebb06a800;
    let r = captured(&m, &created(&[thread_sp]), false);
    let got: Vec<(u64, Kind, bool)> = r.iter().map(|r| (r.start, r.kind, r.tracked)).collect();
    assert_eq!(
        got,
        vec![
            // Read-only or PROT_NONE: content can still change by mprotect.
            (0x5593cd6d2000, Kind::File, true),
            // Writable file mapping: saved whole.
            (0x5593cd6d6000, Kind::File, false),
            (0x5593cd6d7000, Kind::Anon, true),
            (0x5593f8638000, Kind::Anon, true),
            (0x7f4ebb068000, Kind::SharedAnon, false),
            (0x7f4ebb069000, Kind::Anon, true),
            // 0x7f4ebb06a000 holds the thread's stack pointer: never.
            (0x7f4ebb06b000, Kind::Anon, true),
            // Right above a PROT_NONE mapping, yet no stack: captured.
            (0x7f4ebb06c000, Kind::Anon, true),
            (0x7f4ebb06d000, Kind::Anon, true),
            (0x7f4ebb06e000, Kind::Anon, true),
        ]
    );
    assert_eq!(
        r[1].file,
        Some(("fe:00".to_string(), 18504, 0x3000)),
        "file regions remember where in the file they are"
    );
    let anon = captured(&m, &LiveStacks::default(), true);
    assert!(anon.iter().all(|r| r.kind != Kind::File));
    assert!(anon.iter().any(|r| r.start == 0x7f4ebb06a000));
}

#[test]
fn system_v_and_huge_page_shared_memory_is_shared_anonymous() {
    let m = parse_maps(
        "7f0000000000-7f0000100000 rw-s 00000000 00:01 32769   /SYSV0000abcd (deleted)\n\
         7f0000200000-7f0000400000 rw-s 00000000 00:0f 1234    /anon_hugepage (deleted)\n\
         7f0000400000-7f0000600000 rw-p 00000000 00:0f 1235    /anon_hugepage (deleted)\n\
         7f0000600000-7f0000601000 rw-s 00000000 00:01 77      /memfd:x (deleted)\n\
         7f0000601000-7f0000602000 rw-p 00000000 00:01 77      /memfd:x (deleted)\n\
         7f0000602000-7f0000603000 rw-s 00000000 fe:01 78      /dev/zero-not-really\n\
         7f0000603000-7f0000604000 rw-s 00000000 fe:01 79      /SYSV12 (deleted)\n",
    )
    .unwrap();
    let kinds: Vec<Option<Kind>> = m.iter().map(Mapping::kind).collect();
    assert_eq!(
        kinds,
        vec![
            Some(Kind::SharedAnon),
            Some(Kind::SharedAnon),
            Some(Kind::Anon),
            None,
            Some(Kind::File),
            None,
            None
        ]
    );
    let r = captured(&m, &LiveStacks::default(), false);
    assert!(!r[2].tracked, "huge pages are never skipped as untouched");
}

#[test]
fn a_region_is_the_same_memory_only_for_the_same_file_offset() {
    let m = parse_maps(MAPS).unwrap();
    let r = captured(&m, &LiveStacks::default(), false);
    let data = &r[1];
    assert!(data.same_memory(&m[1], 0x5593cd6d6000));
    let mut moved = m[1].clone();
    moved.offset = 0x4000;
    assert!(!data.same_memory(&moved, 0x5593cd6d6000));
    assert!(!data.same_memory(&m[2], 0x5593cd6d6000));
}

#[test]
fn a_marker_on_an_absent_page_holds_nothing() {
    let r = Residency {
        pagemap: std::rc::Rc::new(File::open("/dev/null").unwrap()),
        scan: false,
        zero_pfn: None,
    };
    // As pagemap shows an absent page of a private file mapping that
    // userfaultfd write-protected (swap bit, uffd-wp bit, type 31).
    assert_eq!(r.entry_flags(0x4200_0000_0000_003f), 0);
    // A page really swapped out (type 0, some offset) holds data.
    assert_eq!(r.entry_flags(PM_SWAPPED | (1234 << 5)), P_SWAPPED);
    assert_eq!(r.entry_flags(PM_PRESENT | 7), P_PRESENT);
}

#[test]
fn runs_merge_pages_with_equal_flags() {
    let mut v = Vec::new();
    push_run(&mut v, 0, PAGE, P_PRESENT);
    push_run(&mut v, PAGE, 2 * PAGE, P_PRESENT);
    push_run(&mut v, 2 * PAGE, 3 * PAGE, P_PRESENT | P_ZERO);
    push_run(&mut v, 5 * PAGE, 6 * PAGE, P_PRESENT | P_ZERO);
    assert_eq!(v.len(), 3);
    assert_eq!(v[0].pages().count(), 2);
    assert!(!v[1].may_hold_data(Kind::Anon));
    assert!(v[1].may_hold_data(Kind::File));
    let g = Run {
        start: 0,
        end: PAGE,
        flags: P_GUARD | P_SWAPPED,
    };
    assert!(!g.may_hold_data(Kind::Anon) && !g.may_hold_data(Kind::SharedAnon));
    let f = Run {
        start: 0,
        end: PAGE,
        flags: P_PRESENT | P_FILE,
    };
    assert!(
        !f.may_hold_data(Kind::File),
        "an unmodified file page is the file"
    );
}

#[test]
fn stat_state_and_threads() {
    let line = "3657 (bench (x) y) T 3626 3621 1086 0 -1 4194304 14764 0 1 0 3 34 0 0 20 0 7 0 772346 403001344";
    assert_eq!(parse_stat_state_threads(line), Some(('T', 7)));
    assert_eq!(parse_stat_state_threads("1 (x) R 0"), None);
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let stat = StatFile::open(child.id() as i32).unwrap();
    let (state, threads) = stat.read().unwrap();
    assert!(matches!(state, 'S' | 'R'), "{state}");
    assert_eq!(threads, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    // The same open file, read again: the process is gone.
    assert_eq!(stat.read(), None);
}

/// The task directory's link count follows threads as they come and go,
/// and says nothing once the process is gone.
#[test]
fn task_dir_counts_threads() {
    let dir = TaskDir::open(std::process::id() as i32).unwrap();
    let before = dir.threads().unwrap();
    assert!(before >= 1);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let th = std::thread::spawn(move || rx.recv().ok());
    assert_eq!(dir.threads(), Some(before + 1));
    tx.send(()).unwrap();
    th.join().unwrap();
    // The kernel counts a thread out a moment after its join returns.
    let t0 = std::time::Instant::now();
    while dir.threads() != Some(before) && t0.elapsed().as_secs() < 5 {
        std::thread::yield_now();
    }
    assert_eq!(dir.threads(), Some(before));
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let dir = TaskDir::open(child.id() as i32).unwrap();
    assert_eq!(dir.threads(), Some(1));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(dir.threads(), None);
}

#[test]
fn syscall_stack_pointer() {
    assert_eq!(
        parse_syscall_sp("0 0x3 0x5 0x2000 0x0 0x0 0x0 0x7ffe4854f728 0x7f4eba9162ad"),
        Some(0x7ffe4854f728)
    );
    assert_eq!(
        parse_syscall_sp("-1 0x7ffe48540000 0x7f4eba9162ad"),
        Some(0x7ffe48540000)
    );
    assert_eq!(parse_syscall_sp("running"), None);
}

mod root_tests {
    use crate::ckpt::procfs::*;

    #[test]
    fn the_zero_page_frame_is_found_as_root() {
        if !nix::unistd::geteuid().is_root() {
            // Frame numbers need CAP_SYS_ADMIN: then it must say so with None.
            assert_eq!(zero_pfn(), None);
            return;
        }
        let z = zero_pfn().expect("root sees page frame numbers");
        assert_eq!(zero_pfn(), Some(z), "the zero page does not move");
    }

    /// Residency of our own memory: written, read-only-touched (zero page),
    /// absent and guard pages, the same through `PAGEMAP_SCAN` and pagemap.
    #[test]
    fn residency_sees_written_zero_absent_and_guard_pages() {
        let mut m = memmap2::MmapOptions::new()
            .len(6 * PAGE as usize)
            .map_anon()
            .unwrap();
        let base = m.as_ptr() as u64;
        m[0] = 1;
        m[PAGE as usize] = 1;
        std::hint::black_box(m[2 * PAGE as usize]);
        let guard = crate::os::madvise_guard(base + 4 * PAGE, PAGE).is_ok();
        let me = std::process::id() as i32;
        let z = zero_pfn();
        let mut r = Residency::open(me, z).unwrap();
        for scan in [r.scan, false] {
            r.scan = scan;
            let runs = r.runs(base, base + 6 * PAGE).unwrap();
            assert_eq!(
                runs[0],
                Run {
                    start: base,
                    end: base + 2 * PAGE,
                    flags: P_PRESENT
                },
                "{runs:?}"
            );
            if scan || z.is_some() {
                assert_eq!(runs[1].flags, P_PRESENT | P_ZERO, "{runs:?}");
            }
            assert_eq!(runs[1].start, base + 2 * PAGE);
            if guard {
                let g = runs
                    .iter()
                    .find(|r| r.start == base + 4 * PAGE)
                    .expect("guard run");
                assert!(
                    g.flags & P_GUARD != 0 && !g.may_hold_data(Kind::Anon),
                    "{runs:?}"
                );
            }
            assert!(
                !runs
                    .iter()
                    .any(|r| r.start <= base + 3 * PAGE && base + 3 * PAGE < r.end)
            );
        }
    }
}
