//! sys/maps/attach/ringbuf against the real kernel. These tests need root (CI runs
//! as root); without it they fail with a clear message rather than pass silently.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use bpfload::attach::{self, TracepointMode};
use bpfload::insn::{Insn, asm};
use bpfload::maps::Map;
use bpfload::ringbuf::RingBuf;
use bpfload::sys::{self, MapCreateAttr, ProgLoadAttr};
use common::{all_ids, need_root};

/// Tests that attach to the same tracepoint and spawn children run one at a time, so
/// one test's child does not count in another's program (they filter on tgid anyway).
static SERIAL: Mutex<()> = Mutex::new(());

/// The verifier log an error carries; fails the test if it has none.
fn log_of(e: &bpfload::Error) -> &str {
    e.log
        .as_deref()
        .unwrap_or_else(|| panic!("no verifier log in {e}"))
}

fn load_tp(name: &str, insns: &[Insn]) -> bpfload::Result<OwnedFd> {
    sys::prog_load(&ProgLoadAttr {
        prog_type: sys::BPF_PROG_TYPE_TRACEPOINT,
        insns,
        license: "GPL",
        name,
        ..Default::default()
    })
}

#[test]
fn sys_hash_map_update_lookup_delete_iterate() {
    need_root();
    let m = Map::hash("sys_test_hash", 8, 16, 64, 0).unwrap();
    assert_eq!(
        (m.map_type, m.key_size, m.value_size, m.max_entries),
        (sys::BPF_MAP_TYPE_HASH, 8, 16, 64)
    );
    assert_eq!(m.name, "sys_test_hash");
    for k in 0u64..5 {
        m.update_u64_key(k, &[k as u8; 16], sys::BPF_NOEXIST)
            .unwrap();
    }
    // NOEXIST on an existing key fails with EEXIST.
    let e = m.update_u64_key(1, &[0; 16], sys::BPF_NOEXIST).unwrap_err();
    assert_eq!(e.errno, Some(libc::EEXIST), "{e}");
    // EXIST on an absent key fails with ENOENT (an error, not "absent"); on a present
    // key it replaces the value.
    let e = m.update_u64_key(99, &[0; 16], sys::BPF_EXIST).unwrap_err();
    assert_eq!(e.errno, Some(libc::ENOENT), "{e}");
    m.update_u64_key(4, &[4; 16], sys::BPF_EXIST).unwrap();
    let mut v = [0u8; 16];
    assert!(m.lookup_u64_key(3, &mut v).unwrap());
    assert_eq!(v, [3; 16]);
    assert!(!m.lookup_u64_key(99, &mut v).unwrap());
    assert!(m.delete_u64_key(3).unwrap());
    assert!(!m.delete_u64_key(3).unwrap());
    let mut keys: Vec<u64> = m
        .keys()
        .map(|k| u64::from_ne_bytes(k.unwrap().try_into().unwrap()))
        .collect();
    keys.sort();
    assert_eq!(keys, [0, 1, 2, 4]);

    // Wrong sizes are refused before reaching the kernel, with a clear message.
    let e = m.lookup(&[0u8; 4], &mut v).unwrap_err();
    assert!(
        e.msg.contains("key is 4 bytes, the map's keys are 8 bytes"),
        "{e}"
    );
    let e = m.update(&[0u8; 8], &[0u8; 15], 0).unwrap_err();
    assert!(e.msg.contains("value buffer is 15 bytes"), "{e}");

    // The free functions check sizes too (by asking the kernel).
    let e = sys::map_lookup_elem(m.as_fd(), &[0u8; 8], &mut [0u8; 4]).unwrap_err();
    assert!(e.msg.contains("values are 16 bytes"), "{e}");
    assert!(sys::map_lookup_elem(m.as_fd(), &1u64.to_ne_bytes(), &mut v).unwrap());
    let mut next = [0u8; 8];
    assert!(sys::map_get_next_key(m.as_fd(), None, &mut next).unwrap());
}

/// Batched updates and lookups: more entries than one batch buffer holds
/// (the reader goes on from its cursor), keys of 16 bytes (the cursor of a
/// hash map is a bucket index, not a key), values as the last update left
/// them, and buffers that do not hold whole entries refused.
#[test]
fn sys_hash_map_batches() {
    need_root();
    let m = Map::hash(
        "sys_test_batch",
        16,
        24,
        4096,
        1, /* BPF_F_NO_PREALLOC, as TOUCHED */
    )
    .unwrap();
    assert!(m.entries().unwrap().unwrap().is_empty());
    let n = 1000u64;
    let key = |i: u64| [i.to_ne_bytes(), (!i).to_ne_bytes()].concat();
    let val = |i: u64, g: u8| {
        let mut v = vec![g; 24];
        v[..8].copy_from_slice(&(i * 7).to_ne_bytes());
        v
    };
    let keys: Vec<u8> = (0..n).flat_map(key).collect();
    let vals: Vec<u8> = (0..n).flat_map(|i| val(i, 1)).collect();
    assert!(m.update_batch(&keys, &vals).unwrap());
    // Some again, with other values.
    let some: Vec<u8> = (0..n).step_by(3).flat_map(key).collect();
    let again: Vec<u8> = (0..n).step_by(3).flat_map(|i| val(i, 2)).collect();
    assert!(m.update_batch(&some, &again).unwrap());

    let e = m.entries().unwrap().unwrap();
    assert_eq!(e.len() as u64, n);
    let mut seen = std::collections::BTreeMap::new();
    for (k, v) in e.iter() {
        let i = u64::from_ne_bytes(k[..8].try_into().unwrap());
        assert_eq!(k, key(i).as_slice());
        assert!(seen.insert(i, v.to_vec()).is_none(), "key {i} twice");
    }
    for i in 0..n {
        let g = if i % 3 == 0 { 2 } else { 1 };
        assert_eq!(seen[&i], val(i, g), "entry {i}");
        let mut v = [0u8; 24];
        assert!(m.lookup(&key(i), &mut v).unwrap());
        assert_eq!(v.as_slice(), val(i, g).as_slice());
    }

    let err = m.update_batch(&keys[..32], &vals[..47]).unwrap_err();
    assert!(err.msg.contains("not the same number"), "{err}");
    let err = m.update_batch(&keys[..31], &vals[..24]).unwrap_err();
    assert!(err.msg.contains("whole 16-byte keys"), "{err}");
    // A full map: the kernel's error, with the count done.
    let small = Map::hash("sys_test_batch2", 16, 24, 4, 1).unwrap();
    let err = small
        .update_batch(&keys[..16 * 8], &vals[..24 * 8])
        .unwrap_err();
    assert_eq!(err.errno, Some(libc::E2BIG), "{err}");
    assert!(err.msg.contains("after 4 of 8"), "{err}");
}

#[test]
fn sys_array_map_and_freeze() {
    need_root();
    let m = Map::array("sys_test_arr", 8, 4, 0).unwrap();
    m.set_u64(2, 0xdead_beef).unwrap();
    assert_eq!(m.get_u64(2).unwrap(), Some(0xdead_beef));
    assert_eq!(m.get_u64(0).unwrap(), Some(0));
    assert_eq!(m.get_u64(4).unwrap(), None);
    assert_eq!(m.keys().count(), 4);
    let e = m.delete_u32_key(0).unwrap_err();
    assert_eq!(e.errno, Some(libc::EINVAL), "{e}");
    let e = m.mmap().unwrap_err();
    assert!(e.msg.contains("BPF_F_MMAPABLE"), "{e}");
    m.freeze().unwrap();
    let e = m.set_u64(1, 1).unwrap_err();
    assert_eq!(e.errno, Some(libc::EPERM), "{e}");
}

#[test]
fn sys_mmapable_array_sees_syscall_writes() {
    need_root();
    // 12-byte values: the mmap stride is 16.
    let m = Map::array("sys_test_mm", 12, 1000, sys::BPF_F_MMAPABLE).unwrap();
    let mut mm = m.mmap().unwrap();
    assert_eq!((mm.stride(), mm.entries()), (16, 1000));
    assert_eq!(mm.as_slice().len(), 16_000);
    m.update_u32_key(700, &[7u8; 12], 0).unwrap();
    assert_eq!(mm.value(700).unwrap(), &[7u8; 12]);
    assert_eq!(mm.read_u64(700 * 16).unwrap(), u64::from_ne_bytes([7; 8]));
    assert!(mm.value(1000).is_none());
    assert!(mm.read(15_999, &mut [0u8; 2]).is_err());
    // And the other way round.
    mm.value_mut(3).unwrap().copy_from_slice(&[9u8; 12]);
    mm.write_u64(5 * 16, 42).unwrap();
    let mut v = [0u8; 12];
    assert!(m.lookup_u32_key(3, &mut v).unwrap());
    assert_eq!(v, [9u8; 12]);
    assert!(m.lookup_u32_key(5, &mut v).unwrap());
    assert_eq!(&v[..8], &42u64.to_ne_bytes());
    // The mapping keeps the map alive after the Map is dropped.
    drop(m);
    assert_eq!(mm.value(3).unwrap(), &[9u8; 12]);
    // A read-only view of a frozen map.
    let m = Map::array("sys_test_mm_ro", 8, 512, sys::BPF_F_MMAPABLE).unwrap();
    m.set_u64(1, 5).unwrap();
    m.freeze().unwrap();
    assert!(m.mmap().is_err());
    let mut ro = m.mmap_read_only().unwrap();
    assert!(!ro.is_writable());
    assert_eq!(ro.read_u64(8).unwrap(), 5);
    assert!(ro.as_mut_slice().is_err());
}

#[test]
fn sys_ringbuf_map_basics() {
    need_root();
    let m = Map::ringbuf("sys_test_rb", 4096).unwrap();
    assert_eq!(
        (m.map_type, m.key_size, m.value_size, m.max_entries),
        (sys::BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    );
    let mut rb = RingBuf::new(&m).unwrap();
    assert_eq!(rb.consume(|_| panic!("no records yet")).unwrap(), 0);
    let t = std::time::Instant::now();
    assert_eq!(rb.poll(Some(Duration::from_millis(50)), |_| ()).unwrap(), 0);
    assert!(
        t.elapsed() >= Duration::from_millis(45),
        "poll returned after {:?}",
        t.elapsed()
    );
    // Wrong sizes are refused.
    let e = Map::ringbuf("sys_test_rb2", 5000).unwrap_err();
    assert_eq!(e.errno, Some(libc::EINVAL), "{e}");
    let h = Map::hash("sys_test_h", 4, 4, 1, 0).unwrap();
    assert!(
        RingBuf::new(&h)
            .unwrap_err()
            .msg
            .contains("not a ring buffer")
    );
}

#[test]
fn sys_verifier_error_carries_the_log() {
    need_root();
    // exit without setting r0
    let e = load_tp("sys_bad_r0", &[asm::exit()]).unwrap_err();
    assert_eq!(e.errno, Some(libc::EACCES), "{e}");
    assert!(log_of(&e).contains("R0 !read_ok"), "{e}");
    assert!(e.msg.contains("sys_bad_r0"), "{e}");
    // The message names the program; the log follows it when shown.
    assert!(!e.msg.contains("R0 !read_ok"), "{e}");
    assert!(e.to_string().contains("verifier log:\n"), "{e}");
    // read of an uninitialised register
    let e = load_tp("sys_bad_r2", &[asm::mov64_reg(0, 2), asm::exit()]).unwrap_err();
    assert!(log_of(&e).contains("R2 !read_ok"), "{e}");
    // a sane program loads, and its info has our name and type
    let fd = load_tp("sys_good", &[asm::mov64_imm(0, 0), asm::exit()]).unwrap();
    let info = sys::prog_info(fd.as_fd()).unwrap();
    assert_eq!(
        (info.name.as_str(), info.prog_type),
        ("sys_good", sys::BPF_PROG_TYPE_TRACEPOINT)
    );
    // Mismatched func_info is refused before the kernel sees it.
    let e = sys::prog_load(&ProgLoadAttr {
        prog_type: sys::BPF_PROG_TYPE_TRACEPOINT,
        insns: &[asm::mov64_imm(0, 0), asm::exit()],
        license: "GPL",
        func_info: &[0u8; 8],
        func_info_rec_size: 8,
        func_info_cnt: 2,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.msg.contains("func_info"), "{e}");
    assert_eq!(e.log, None, "refused before any log: {e}");
}

#[test]
fn sys_verifier_log_grows_to_show_the_tail() {
    need_root();
    // ~200k instructions traced at log level 1 is several MiB of log: more than the first
    // buffer, so the loader must grow it (ENOSPC) and still show the final error.
    let mut insns = vec![asm::mov64_imm(0, 0); 200_000];
    insns.extend([asm::mov64_reg(0, 3), asm::exit()]);
    let t = std::time::Instant::now();
    let e = load_tp("sys_big", &insns).unwrap_err();
    assert_eq!(e.errno, Some(libc::EACCES), "{e}");
    let log = log_of(&e);
    assert!(
        log.contains("R3 !read_ok"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
    assert!(log.contains("earlier lines]"), "the tail only");
    assert!(e.to_string().lines().count() < 50);
    eprintln!("200k-insn failure with log: {:?}", t.elapsed());
}

#[test]
fn sys_btf_error_carries_the_log() {
    need_root();
    let mut blob = vec![0x9f, 0xeb, 1, 0];
    blob.extend([24u32, 0, 4, 4, 1].iter().flat_map(|w| w.to_ne_bytes()));
    blob.extend([0xff; 4]); // a type with garbage kind
    blob.push(0);
    let e = sys::btf_load(&blob).unwrap_err();
    assert!(e.msg.contains("BPF_BTF_LOAD"), "{e}");
    assert!(!log_of(&e).is_empty(), "{e}");
}

#[test]
fn sys_ids_track_map_lifetime() {
    need_root();
    let m = Map::array("sys_test_ids", 8, 1, 0).unwrap();
    let id = m.id();
    assert_eq!(m.info().unwrap().id, id);
    assert!(all_ids(sys::map_get_next_id).contains(&id));
    let fd = sys::map_get_fd_by_id(id).unwrap();
    let info = sys::map_info(fd.as_fd()).unwrap();
    assert_eq!((info.id, info.name.as_str()), (id, "sys_test_ids"));
    drop(fd);
    drop(m);
    // The kernel frees maps from a work queue: give it a moment.
    let mut gone = false;
    for _ in 0..200 {
        if !all_ids(sys::map_get_next_id).contains(&id) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone, "map id {id} still listed after drop");
    let _ = all_ids(sys::prog_get_next_id);
    let _ = all_ids(sys::link_get_next_id);
}

#[test]
fn sys_map_create_sanitises_name() {
    need_root();
    let fd = sys::map_create(&MapCreateAttr {
        map_type: sys::BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        name: "a-very/long:name_with.dots_and_more",
        ..Default::default()
    })
    .unwrap();
    assert_eq!(sys::map_info(fd.as_fd()).unwrap().name, "averylongname_w");
    let e = sys::map_create(&MapCreateAttr {
        map_type: 9999,
        name: "bad",
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.msg.contains("creating map `bad`"), "{e}");
}

#[test]
fn sys_tracepoint_ids_and_errors() {
    need_root();
    assert!(attach::tracepoint_id("syscalls", "sys_enter_openat").unwrap() > 0);
    let e = attach::tracepoint_id("syscalls", "sys_enter_nonexistent").unwrap_err();
    assert!(
        e.msg.contains("events/syscalls/sys_enter_nonexistent/id"),
        "{e}"
    );
    assert!(attach::tracepoint_id("..", "x").is_err());
    assert!(attach::tracepoint_id("syscalls", "a/b").is_err());
}

/// Record layout the test program writes to the ring buffer.
const MAGIC: u32 = 0x5eed_f00d;

/// Tracepoint program for syscalls/sys_enter_openat: if the current tgid equals cfg[0],
/// atomically increments cfg[1] and emits {u64 pid_tgid, u32 cpu, u32 MAGIC} to `rb`.
fn counting_prog(cfg_fd: i32, rb_fd: i32) -> Vec<Insn> {
    let mut p = vec![
        asm::call_helper(sys::BPF_FUNC_GET_CURRENT_PID_TGID),
        asm::mov64_reg(6, 0), // r6 = pid_tgid
        asm::st_w(10, -4, 0), // key 0
    ];
    p.extend(asm::ld_map_fd(1, cfg_fd));
    p.extend([
        asm::mov64_reg(2, 10),
        asm::add64_imm(2, -4),
        asm::call_helper(sys::BPF_FUNC_MAP_LOOKUP_ELEM),
        asm::jeq_imm(0, 0, 24), // -> out
        asm::ldx_dw(1, 0, 0),   // r1 = target tgid
        asm::mov64_reg(2, 6),
        asm::rsh64_imm(2, 32),
        asm::jne_reg(1, 2, 20), // -> out
        asm::st_w(10, -4, 1),   // key 1
    ]);
    p.extend(asm::ld_map_fd(1, cfg_fd));
    p.extend([
        asm::mov64_reg(2, 10),
        asm::add64_imm(2, -4),
        asm::call_helper(sys::BPF_FUNC_MAP_LOOKUP_ELEM),
        asm::jeq_imm(0, 0, 2), // skip increment
        asm::mov64_imm(1, 1),
        asm::atomic_add_dw(0, 0, 1),
        // record at fp-24: pid_tgid, cpu, magic
        asm::stx_dw(10, -24, 6),
        asm::call_helper(sys::BPF_FUNC_GET_SMP_PROCESSOR_ID),
        asm::stx_w(10, -16, 0),
        asm::st_w(10, -12, MAGIC as i32),
    ]);
    p.extend(asm::ld_map_fd(1, rb_fd));
    p.extend([
        asm::mov64_reg(2, 10),
        asm::add64_imm(2, -24),
        asm::mov64_imm(3, 16),
        asm::mov64_imm(4, 0),
        asm::call_helper(sys::BPF_FUNC_RINGBUF_OUTPUT),
        // out:
        asm::mov64_imm(0, 0),
        asm::exit(),
    ]);
    p
}

struct Fixture {
    cfg: Map,
    rb_map: Map,
    prog: OwnedFd,
}

fn fixture() -> Fixture {
    let cfg = Map::array("sys_test_cfg", 8, 2, 0).unwrap();
    let rb_map = Map::ringbuf("sys_test_rb", 64 * 1024).unwrap();
    let insns = counting_prog(cfg.as_fd().as_raw_fd(), rb_map.as_fd().as_raw_fd());
    let prog = load_tp("sys_count", &insns).unwrap_or_else(|e| panic!("{e}"));
    Fixture { cfg, rb_map, prog }
}

/// Runs a child pinned to `cpu` that opens files after its tgid has been put in cfg[0];
/// returns its pid.
fn run_pinned_child(cfg: &Map, cpu: usize) -> u32 {
    run_pinned_child_opening(cfg, cpu, 1)
}

/// [`run_pinned_child`] opening /dev/null `n` times.
fn run_pinned_child_opening(cfg: &Map, cpu: usize, n: usize) -> u32 {
    // The child blocks on `read` until we have pinned it and published its tgid, then
    // exec's cat, whose loader and opens of /dev/null hit sys_enter_openat.
    let script = format!("read x; exec cat{}", " /dev/null".repeat(n));
    let mut child = Command::new("/bin/sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid as i32), &set).unwrap();
    cfg.set_u64(0, u64::from(pid)).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    pid
}

fn records(rb: &mut RingBuf) -> Vec<(u64, u32, u32)> {
    let mut out = vec![];
    rb.consume(|r| {
        assert_eq!(r.len(), 16);
        out.push((
            u64::from_ne_bytes(r[0..8].try_into().unwrap()),
            u32::from_ne_bytes(r[8..12].try_into().unwrap()),
            u32::from_ne_bytes(r[12..16].try_into().unwrap()),
        ));
    })
    .unwrap();
    out
}

fn attach_and_check(mode: TracepointMode) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    let mut rb = RingBuf::new(&f.rb_map).unwrap();
    let link =
        attach::attach_tracepoint_with(&f.prog, "syscalls", "sys_enter_openat", mode).unwrap();
    assert_eq!(link.is_bpf_link(), mode == TracepointMode::Auto);
    if let Some(l) = link.link_fd() {
        let info = sys::link_info(l).unwrap();
        assert_eq!(info.prog_id, sys::prog_info(f.prog.as_fd()).unwrap().id);
    }

    // The perf event was opened for CPU 0 only: the child on CPU 1 must still be seen.
    let pid = run_pinned_child(&f.cfg, 1);
    let hits = f.cfg.get_u64(1).unwrap().unwrap();
    assert!(hits >= 1, "no openat seen from child {pid} on CPU 1");
    let recs = records(&mut rb);
    assert_eq!(recs.len() as u64, hits);
    for (pid_tgid, cpu, magic) in &recs {
        assert_eq!((pid_tgid >> 32) as u32, pid);
        assert_eq!(*cpu, 1);
        assert_eq!(*magic, MAGIC);
    }
    // And on CPU 0, with poll() waking up on data.
    f.cfg.set_u64(1, 0).unwrap();
    let pid0 = run_pinned_child(&f.cfg, 0);
    let mut n = 0;
    rb.poll(Some(Duration::from_secs(5)), |r| {
        n += 1;
        assert_eq!(u32::from_ne_bytes(r[4..8].try_into().unwrap()), pid0);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 0);
    })
    .unwrap();
    assert!(n >= 1);
    records(&mut rb);

    // Detached: nothing fires any more.
    drop(link);
    f.cfg.set_u64(1, 0).unwrap();
    run_pinned_child(&f.cfg, 1);
    assert_eq!(
        f.cfg.get_u64(1).unwrap(),
        Some(0),
        "program still fires after the link was dropped"
    );
    assert!(records(&mut rb).is_empty());
}

#[test]
fn sys_tracepoint_link_fires_on_every_cpu_and_detaches() {
    need_root();
    attach_and_check(TracepointMode::Auto);
}

#[test]
fn sys_tracepoint_ioctl_fires_on_every_cpu_and_detaches() {
    need_root();
    attach_and_check(TracepointMode::Ioctl);
}

#[test]
fn sys_ringbuf_blocks_until_data() {
    need_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fixture();
    let mut rb = RingBuf::new(&f.rb_map).unwrap();
    let _link = attach::attach_tracepoint(&f.prog, "syscalls", "sys_enter_openat").unwrap();
    let cfg_fd = f.cfg.as_fd().try_clone_to_owned().unwrap();
    let child = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let cfg = Map::from_fd(cfg_fd).unwrap();
        run_pinned_child(&cfg, 1)
    });
    let t = std::time::Instant::now();
    let mut got = vec![];
    let n = rb.poll(None, |r| got.push(r.to_vec())).unwrap();
    assert!(
        n >= 1 && t.elapsed() >= Duration::from_millis(150),
        "n {n} after {:?}",
        t.elapsed()
    );
    let pid = child.join().unwrap();
    assert_eq!(u32::from_ne_bytes(got[0][4..8].try_into().unwrap()), pid);
}

#[test]
fn sys_ringbuf_wraps_around() {
    need_root();
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A 16 KiB ring and 40 children with a few hundred records of 24 bytes (16 + header)
    // each, drained between children: wraps many times, and 16384 is no multiple of 24,
    // so records straddle the end (the double mapping).
    let cfg = Map::array("sys_test_cfg", 8, 2, 0).unwrap();
    let rb_map = Map::ringbuf("sys_test_rbs", 16384).unwrap();
    let prog = load_tp(
        "sys_count",
        &counting_prog(cfg.as_fd().as_raw_fd(), rb_map.as_fd().as_raw_fd()),
    )
    .unwrap();
    let mut rb = RingBuf::from_fd(rb_map.as_fd()).unwrap();
    drop(rb_map);
    let _link = attach::attach_tracepoint(&prog, "syscalls", "sys_enter_openat").unwrap();
    let mut total = 0;
    for _ in 0..40 {
        let pid = run_pinned_child_opening(&cfg, 1, 50);
        for (pid_tgid, _, magic) in records(&mut rb) {
            assert_eq!(((pid_tgid >> 32) as u32, magic), (pid, MAGIC));
            total += 1;
        }
    }
    assert_eq!(total, cfg.get_u64(1).unwrap().unwrap());
    assert!(total * 24 > 4 * 16384, "only {total} records: did not wrap");
    assert_eq!(rb.pending(), 0);
}

#[test]
fn sys_raw_tracepoint_attaches() {
    need_root();
    let fd = sys::prog_load(&ProgLoadAttr {
        prog_type: sys::BPF_PROG_TYPE_RAW_TRACEPOINT,
        insns: &[asm::mov64_imm(0, 0), asm::exit()],
        license: "GPL",
        name: "sys_raw",
        ..Default::default()
    })
    .unwrap();
    let link = attach::attach_raw_tracepoint(&fd, "sys_enter").unwrap();
    assert!(sys::link_info(link.as_fd()).is_ok());
    let e = attach::attach_raw_tracepoint(&fd, "no_such_tracepoint_xyz").unwrap_err();
    assert!(e.msg.contains("no_such_tracepoint_xyz"), "{e}");
}
