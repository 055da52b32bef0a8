//! The probe object's `selftest` program, loaded by our loader into the real kernel,
//! exercises every relocation case the loader handles (legacy maps, `.data`,
//! `.rodata`, `.bss`, a bpf-to-bpf call, a `bpf_loop` callback) and reports what it saw;
//! plus: the verifier's own message reaches the user, and every probe program loads,
//! attaches and is freed on drop. These tests need root (CI runs as root); without it
//! they fail with a clear message rather than pass silently.

#[path = "../../probes/src/abi.rs"]
mod abi;
#[path = "../bpfload/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bpfckpt::{PROBES_OBJ, doctor};
use bpfload::insn::{self, Insn};
use bpfload::load::{self, LoadOptions, Loaded, MapOverride};
use bpfload::maps::Map;
use bpfload::ringbuf::RingBuf;
use bpfload::sys;
use bpfload::{linker, obj};
use common::need_root;

/// What the probe keeps in `.data` / `.rodata` (probes/src/main.rs).
const DATA: u64 = 0x1111_2222_3333_4444;
const RODATA: u64 = 0x5555_6666_7777_8888;
/// `selftest_mix(DATA, 3)`.
const CALL: u64 = (DATA ^ 3).rotate_left(7);
/// `bpf_loop(10, selftest_step)`: sum of i + 1 for i in 0..10.
const LOOP: u64 = 55;
/// Fields of one result record (`vals` in the probe; ST_DATA..=ST_HITS).
const NVALS: usize = abi::ST_HITS as usize + 1;
/// openat calls the child of the first test makes while the program is attached.
const OPENS: u64 = 4;

fn load_selftest() -> Loaded {
    load::load(
        PROBES_OBJ,
        &LoadOptions {
            programs: vec!["selftest".into()],
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading `selftest`: {e}"))
}

/// A child process killed and reaped when dropped, so a failing test leaves none behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the `ready` line a child prints once its start-up is over.
fn wait_ready(child: &mut Reaped) {
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n", "child start-up");
}

/// SELFTEST_OUT read through BPF_MAP_LOOKUP_ELEM.
fn out_by_lookup(l: &Loaded) -> [u64; abi::ST_SLOTS as usize] {
    let m = l.map("SELFTEST_OUT").unwrap();
    let mut v = [0u64; abi::ST_SLOTS as usize];
    for (i, x) in v.iter_mut().enumerate() {
        *x = m
            .get_u64(i as u32)
            .unwrap()
            .unwrap_or_else(|| panic!("SELFTEST_OUT has no key {i}"));
    }
    v
}

/// SELFTEST_OUT read through its BPF_F_MMAPABLE mapping.
fn out_by_mmap(l: &Loaded) -> [u64; abi::ST_SLOTS as usize] {
    let mm = l.map("SELFTEST_OUT").unwrap().mmap().unwrap();
    assert_eq!(mm.entries(), abi::ST_SLOTS as usize);
    let mut v = [0u64; abi::ST_SLOTS as usize];
    for (i, x) in v.iter_mut().enumerate() {
        *x = mm.read_u64(i * mm.stride()).unwrap();
    }
    v
}

/// Every record currently in SELFTEST_EVENTS, as `vals` arrays.
fn drain_events(l: &Loaded) -> Vec<[u64; NVALS]> {
    let mut rb = RingBuf::new(l.map("SELFTEST_EVENTS").unwrap()).unwrap();
    let mut recs = Vec::new();
    rb.consume(|r| {
        assert_eq!(r.len(), NVALS * 8, "ring buffer record size");
        let mut v = [0u64; NVALS];
        for (x, c) in v.iter_mut().zip(r.chunks_exact(8)) {
            *x = u64::from_ne_bytes(c.try_into().unwrap());
        }
        recs.push(v);
    })
    .unwrap();
    assert_eq!(rb.pending(), 0, "records left in the ring buffer");
    recs
}

fn global(l: &Loaded, section: &str) -> u64 {
    let m = l.map(section).unwrap();
    let mut v = vec![0u8; m.value_len()];
    assert!(m.lookup_u32_key(0, &mut v).unwrap());
    u64::from_ne_bytes(v[..8].try_into().unwrap())
}

#[test]
fn selftest_every_relocation_case_in_the_kernel() {
    need_root();
    let l = load_selftest();
    // The child reports when its start-up (dynamic loader, ...) is over, then blocks in
    // `read` until the program is attached; after that it opens /dev/null OPENS times
    // through redirections of the builtin `:`, which the shell performs itself, so the
    // openat calls of its thread group are exactly those.
    let mut child = Reaped(
        Command::new("/bin/sh")
            .args([
                "-c",
                "echo ready; read x; : </dev/null; : </dev/null; : </dev/null; : </dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn /bin/sh"),
    );
    wait_ready(&mut child);
    l.map("SELFTEST_CFG")
        .unwrap()
        .update_u32_key(0, &child.0.id().to_ne_bytes(), sys::BPF_ANY)
        .unwrap();
    let links = l.attach_all().unwrap();
    assert_eq!(links.len(), 1);
    let mut stdin = child.0.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    drop(stdin);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "child: {status}");
    drop(links);

    let out = out_by_lookup(&l);
    let hits = out[abi::ST_HITS as usize];
    assert_eq!(
        hits, OPENS,
        "openat calls of the child the program counted: {out:#x?}"
    );
    let want = [DATA, RODATA, hits, CALL, LOOP, hits, 0, 0];
    assert_eq!(out, want, "SELFTEST_OUT by lookup");
    assert_eq!(out[abi::ST_DATA as usize], DATA, ".data");
    assert_eq!(out[abi::ST_RODATA as usize], RODATA, ".rodata");
    assert_eq!(out[abi::ST_BSS as usize], hits, ".bss");
    assert_eq!(out[abi::ST_CALL as usize], CALL, "bpf-to-bpf call");
    assert_eq!(out[abi::ST_LOOP as usize], LOOP, "bpf_loop callback");
    assert_eq!(out_by_mmap(&l), want, "SELFTEST_OUT by mmap");

    // The globals themselves: .bss counted, .data untouched, .rodata frozen.
    assert_eq!(global(&l, ".bss"), hits, ".bss map");
    assert_eq!(global(&l, ".data"), DATA, ".data map");
    assert_eq!(global(&l, ".rodata"), RODATA, ".rodata map");
    let e = l
        .map(".rodata")
        .unwrap()
        .update_u32_key(0, &[0; 8], sys::BPF_ANY)
        .unwrap_err();
    assert_eq!(e.errno, Some(libc::EPERM), ".rodata must be frozen: {e}");

    // One record per hit, in order, each with the values of that hit.
    let recs = drain_events(&l);
    assert_eq!(recs.len() as u64, hits, "records vs hits: {recs:#x?}");
    for (k, r) in recs.iter().enumerate() {
        let n = k as u64 + 1;
        assert_eq!(*r, [DATA, RODATA, n, CALL, LOOP, n], "record {k}");
    }
}

#[test]
fn selftest_ignores_other_processes() {
    need_root();
    let l = load_selftest();
    // A process that opens nothing while the program is attached: its start-up opens
    // (dynamic loader) are over once it says so, then it blocks in `read` for good.
    let mut idle = Reaped(
        Command::new("/bin/sh")
            .args(["-c", "echo ready; read x"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn /bin/sh"),
    );
    wait_ready(&mut idle);
    let cfg = l.map("SELFTEST_CFG").unwrap();
    cfg.update_u32_key(0, &idle.0.id().to_ne_bytes(), sys::BPF_ANY)
        .unwrap();
    let links = l.attach_all().unwrap();
    for _ in 0..5 {
        std::fs::File::open("/dev/null").unwrap();
    }
    let zero = [0u64; abi::ST_SLOTS as usize];
    assert_eq!(out_by_lookup(&l), zero, "SELFTEST_OUT by lookup");
    assert_eq!(out_by_mmap(&l), zero, "SELFTEST_OUT by mmap");
    assert_eq!(global(&l, ".bss"), 0, ".bss");
    assert!(drain_events(&l).is_empty(), "records in SELFTEST_EVENTS");

    // Control: the same attachment does count this process once it is the one served,
    // so the zeros above are not from a program that never ran.
    cfg.update_u32_key(0, &std::process::id().to_ne_bytes(), sys::BPF_ANY)
        .unwrap();
    std::fs::File::open("/dev/null").unwrap();
    let hits = out_by_lookup(&l)[abi::ST_HITS as usize];
    assert!(hits >= 1, "the attached program never ran for this process");
    drop(links);
    drop(idle);
}

/// Maps for `p` as `load` makes them, by spec index (`-1` for unused ones).
fn create_maps(spec: &obj::ObjectSpec, p: &linker::LinkedProgram) -> (Vec<Map>, Vec<i32>) {
    let used: BTreeSet<usize> = p.map_refs.iter().map(|r| r.map).collect();
    let mut fds = vec![-1; spec.maps.len()];
    let mut maps = Vec::new();
    for &i in &used {
        let s = &spec.maps[i];
        let m = load::create_map(s, MapOverride::default())
            .unwrap_or_else(|e| panic!("map `{}`: {e}", s.name));
        fds[i] = m.as_fd().as_raw_fd();
        maps.push(m);
    }
    (maps, fds)
}

/// Where to make the program read an uninitialised register: the `mov rK, imm` that
/// sets up the first map lookup's key, directly followed by the store of rK to the
/// stack, with rK a caller-saved register (r1-r5) that no instruction since the
/// preceding helper call has written. Without that mov, the store reads the rK the
/// helper call scratched. Returns (index of the mov, K).
fn key_setup_after_helper_call(insns: &[Insn]) -> (usize, u8) {
    const MOV32_IMM: u8 = 0xb4;
    const STX_MEM: [u8; 4] = [0x63, 0x6b, 0x73, 0x7b]; // w, h, b, dw
    const R10: u8 = 10;
    let is_helper_call = |i: &Insn| i.code == insn::CALL && i.src() == 0;
    let lookup = insns
        .iter()
        .position(|i| is_helper_call(i) && i.imm == sys::BPF_FUNC_MAP_LOOKUP_ELEM)
        .expect("the program calls bpf_map_lookup_elem");
    let prev_call = insns[..lookup]
        .iter()
        .rposition(is_helper_call)
        .expect("a helper call precedes the first map lookup");
    let found = (prev_call + 1..lookup).find_map(|m| {
        let (mov, store) = (insns[m], *insns.get(m + 1)?);
        let k = mov.dst();
        let ok = matches!(mov.code, MOV32_IMM | insn::MOV64_IMM)
            && (1..=5).contains(&k)
            && STX_MEM.contains(&store.code)
            && store.dst() == R10
            && store.src() == k
            && insns[prev_call + 1..m].iter().all(|i| i.dst() != k);
        ok.then_some((m, k))
    });
    found.unwrap_or_else(|| {
        panic!(
            "no `mov rK, imm; *(r10 + off) = rK` between the helper call at {prev_call} \
             and the first map lookup at {lookup}: {:?}",
            &insns[prev_call..=lookup]
        )
    })
}

#[test]
fn verifier_error_from_a_real_linked_program_shows_the_verifier_message() {
    need_root();
    let spec = obj::parse(PROBES_OBJ).unwrap();
    let mut p = linker::link_program(&spec, spec.program("selftest").unwrap()).unwrap();
    let (_maps, fds) = create_maps(&spec, &p);
    p.resolve_maps(&fds).unwrap();

    // Control: unmodified, the same program and maps load.
    load::load_program(&p, &spec.license).unwrap_or_else(|e| panic!("intact program: {e}"));

    // Replace the key set-up by `ja +0` (a no-op): the store after it now reads a
    // register the preceding helper call left uninitialised.
    let (at, k) = key_setup_after_helper_call(&p.insns);
    const BPF_JA: u8 = 0x05;
    p.insns[at] = Insn::new(BPF_JA, 0, 0, 0, 0);
    let e = load::load_program(&p, &spec.license)
        .expect_err("the verifier must refuse a read of an uninitialised register");
    assert_eq!(e.errno, Some(libc::EACCES), "{e}");
    let want = format!("R{k} !read_ok");
    assert!(
        e.log.as_deref().is_some_and(|l| l.contains(&want)),
        "the error does not carry the verifier's message `{want}`: {e}"
    );
    assert!(
        e.msg.contains("selftest"),
        "the error names no program: {e}"
    );
}

fn is_write_trigger(name: &str) -> bool {
    name.ends_with("_w")
}

/// Ids of every program (or map) the kernel currently has.
fn all_ids(next: fn(u32) -> bpfload::Result<Option<u32>>) -> BTreeSet<u32> {
    common::all_ids(next).into_iter().collect()
}

#[test]
fn all_probe_programs_load_on_this_kernel() {
    need_root();
    let spec = obj::parse(PROBES_OBJ).unwrap();
    let names = spec.program_names();
    let (writers, others): (Vec<String>, Vec<String>) =
        names.iter().cloned().partition(|n| is_write_trigger(n));
    assert!(
        writers.iter().any(|n| n == "trigger_openat_w"),
        "no trigger_openat_w in {names:?}"
    );
    assert!(others.iter().any(|n| n == "selftest"), "{names:?}");

    let templates = bpfckpt::ckpt::probes::inner_map_templates().unwrap();
    let opts = |programs: Vec<String>| LoadOptions {
        programs,
        maps: bpfckpt::ckpt::probes::inner_templates(&templates),
        ..Default::default()
    };

    // The bpf_probe_write_user triggers load exactly when the kernel allows that helper.
    let (writable, why) = doctor::probe_write_user_available();
    match load::load(PROBES_OBJ, &opts(vec!["trigger_openat_w".into()])) {
        Ok(_) => assert!(
            writable,
            "trigger_openat_w loaded although doctor says: {why}"
        ),
        Err(e) => {
            assert!(
                !writable,
                "trigger_openat_w must load when bpf_probe_write_user is available: {e}"
            );
            assert!(
                e.to_string().contains("bpf_probe_write_user"),
                "the refusal does not name bpf_probe_write_user: {e}"
            );
        }
    }

    let l = load::load(PROBES_OBJ, &opts(others.clone())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(l.programs.len(), others.len());
    let mut prog_ids = BTreeSet::new();
    for p in &l.programs {
        let info = sys::prog_info(p.fd.as_fd()).unwrap();
        assert_eq!(info.name, sys_name(&p.name), "kernel name of `{}`", p.name);
        assert!(prog_ids.insert(info.id), "duplicate id {}", info.id);
    }
    // Every map the loaded programs use, by the kernel's ids.
    let mut used = BTreeSet::new();
    for n in &others {
        let lp = linker::link_program(&spec, spec.program(n).unwrap()).unwrap();
        used.extend(lp.map_refs.iter().map(|r| r.map));
    }
    let map_ids: BTreeSet<u32> = used
        .iter()
        .map(|&i| {
            l.map(&spec.maps[i].name)
                .unwrap_or_else(|e| panic!("{e}"))
                .id()
        })
        .collect();
    assert_eq!(map_ids.len(), used.len(), "map ids {map_ids:?}");
    let links = l.attach_all().unwrap();
    assert_eq!(links.len(), others.len());
    let live = all_ids(sys::prog_get_next_id);
    assert!(
        prog_ids.is_subset(&live),
        "loaded programs {prog_ids:?} missing from the kernel's list"
    );

    drop(links);
    drop(l);
    drop(templates);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let progs: Vec<u32> = all_ids(sys::prog_get_next_id)
            .intersection(&prog_ids)
            .copied()
            .collect();
        let maps: Vec<u32> = all_ids(sys::map_get_next_id)
            .intersection(&map_ids)
            .copied()
            .collect();
        if progs.is_empty() && maps.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "2 s after dropping everything the kernel still has programs {progs:?} and maps {maps:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The name the kernel reports for a program: at most 15 bytes.
fn sys_name(name: &str) -> String {
    name.chars().take(sys::BPF_OBJ_NAME_LEN - 1).collect()
}
