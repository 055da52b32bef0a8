//! What `/proc` tells about the target: its mappings, which of them are
//! captured, thread stack pointers, which pages exist.

use crate::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

pub const PAGE: u64 = 4096;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub shared: bool,
    /// File offset of `start` (bytes).
    pub offset: u64,
    /// `major:minor` of the backing file's device.
    pub dev: String,
    pub inode: u64,
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Shared memory that belongs to no file a user named: `MAP_SHARED|
    /// MAP_ANONYMOUS` (shmem behind a deleted `/dev/zero` inode), System V
    /// shared memory (`/SYSV<key>`) and shared anonymous huge pages.
    pub fn is_shared_anon(&self) -> bool {
        self.shared && self.on_kernel_fs() && self.kernel_object().is_some()
    }

    /// The name the kernel gives its own memory objects (`/dev/zero
    /// (deleted)`, `/SYSV<key> (deleted)`, `/anon_hugepage (deleted)`),
    /// matched exactly: a file a user named `/dev/zero-x` is a file.
    fn kernel_object(&self) -> Option<&str> {
        let name = self.path.strip_suffix(" (deleted)")?;
        let sysv = name
            .strip_prefix("/SYSV")
            .is_some_and(|k| k.len() == 8 && k.bytes().all(|b| b.is_ascii_hexdigit()));
        (name == "/dev/zero" || name == "/anon_hugepage" || sysv).then_some(name)
    }

    /// Backed by an in-kernel file system (shmem, hugetlbfs: device major 0).
    fn on_kernel_fs(&self) -> bool {
        self.dev
            .split(':')
            .next()
            .is_some_and(|major| major.bytes().all(|b| b == b'0'))
    }

    /// Private memory not backed by a file (heap, anonymous mmap, `.bss`
    /// beyond the file, `[anon:...]` names), including private anonymous
    /// huge pages (`/anon_hugepage`).
    pub fn is_private_anon(&self) -> bool {
        !self.shared && ((self.inode == 0 && !self.path.starts_with('/')) || self.is_hugetlb())
    }

    /// Anonymous huge pages: a write fault there fills more than a 2 MiB
    /// chunk's worth of bits could say, so those pages are never skipped as
    /// untouched.
    pub fn is_hugetlb(&self) -> bool {
        self.on_kernel_fs() && self.kernel_object() == Some("/anon_hugepage")
    }

    fn is_special(&self) -> bool {
        self.path.starts_with("[stack")
            || self.path.starts_with("[vvar")
            || self.path == "[vdso]"
            || self.path == "[vsyscall]"
            || self.path == "[uprobes]"
    }

    /// What kind of captured memory this mapping is, if any: every private
    /// mapping (its content can change through mprotect whatever its
    /// protection now) and shared anonymous memory; never a file-shared
    /// mapping, which would write through to the file.
    pub fn kind(&self) -> Option<Kind> {
        if self.is_special() || self.end <= self.start {
            None
        } else if self.is_shared_anon() {
            Some(Kind::SharedAnon)
        } else if self.shared {
            None
        } else if self.is_private_anon() {
            Some(Kind::Anon)
        } else {
            Some(Kind::File)
        }
    }
}

/// What kind of memory a captured region is: decides what a page nobody
/// wrote holds, and how a page BPF could not read is completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Private anonymous (heap, `.bss`, anonymous mmap): a page never
    /// written reads as zero.
    Anon,
    /// Private file mapping (`.data`, `.text`, any private mmap of a file):
    /// a page never written holds the file's bytes.
    File,
    /// Shared anonymous (shmem, System V): other processes may write it, so
    /// every page is saved and restored.
    SharedAnon,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: Kind,
    /// The touched-page bitmaps decide which pages to read.
    pub tracked: bool,
    /// For `File`: device, inode and the file offset of `start`.
    pub file: Option<(String, u64, u64)>,
}

impl Region {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether `m` is still the memory this region was (same kind, and for
    /// a file the same file at the same offset for `addr`).
    pub fn same_memory(&self, m: &Mapping, addr: u64) -> bool {
        if m.kind() != Some(self.kind) {
            return false;
        }
        match &self.file {
            None => true,
            Some((dev, inode, offset)) => {
                *dev == m.dev
                    && *inode == m.inode
                    && offset + (addr - self.start) == m.offset + (addr - m.start)
            }
        }
    }
}

fn hex(s: &str, line: &str) -> Result<u64> {
    u64::from_str_radix(s, 16)
        .map_err(|_| Error::new(format!("bad number {s:?} in maps line {line:?}")))
}

/// Parses the text of `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Result<Vec<Mapping>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let mut f = line.split_ascii_whitespace();
        let (Some(range), Some(perms), Some(offset), Some(dev), Some(inode)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(Error::new(format!("short maps line {line:?}")));
        };
        // The path is the rest of the line and may contain spaces.
        let path = f.collect::<Vec<_>>().join(" ");
        let (s, e) = range
            .split_once('-')
            .ok_or_else(|| Error::new(format!("bad range in maps line {line:?}")))?;
        let p = perms.as_bytes();
        if p.len() < 4 {
            return Err(Error::new(format!("bad permissions in maps line {line:?}")));
        }
        let (start, end) = (hex(s, line)?, hex(e, line)?);
        if end < start || start % PAGE != 0 || end % PAGE != 0 {
            return Err(Error::new(format!("bad range in maps line {line:?}")));
        }
        out.push(Mapping {
            start,
            end,
            read: p[0] == b'r',
            write: p[1] == b'w',
            shared: p[3] == b's',
            offset: hex(offset, line)?,
            dev: dev.to_string(),
            inode: inode
                .parse()
                .map_err(|_| Error::new(format!("bad inode in maps line {line:?}")))?,
            path,
        });
    }
    Ok(out)
}

pub fn read_maps(pid: i32) -> Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| Error::from(e).context(format!("read /proc/{pid}/maps")))?;
    parse_maps(&text)
}

/// Where the target's threads run, as far as it can be known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveStacks {
    /// An address inside each stack the target created for a thread (its
    /// `clone` calls name them): the whole mapping is that stack.
    pub created: Vec<u64>,
    /// Stack pointers of threads blocked or stopped now.
    pub pointers: Vec<u64>,
}

/// Below a stack pointer, the x86-64 ABI lets a function keep 128 bytes.
const RED_ZONE: u64 = 128;

impl LiveStacks {
    /// The first address of `m` that may be a live stack: its start for a
    /// created stack; for a stack pointer inside some other mapping (a
    /// coroutine stack carved out of a data mapping) the page below it,
    /// since a stack grows down and only what lies above its pointer is in
    /// use; `None` if no stack is in `m`.
    pub fn live_from(&self, m: &Mapping) -> Option<u64> {
        if self.created.iter().any(|&s| m.contains(s)) {
            return Some(m.start);
        }
        let sp = self
            .pointers
            .iter()
            .copied()
            .filter(|&sp| m.contains(sp))
            .min()?;
        Some((sp.saturating_sub(RED_ZONE) / PAGE * PAGE).max(m.start))
    }

    /// Whether `addr` (in `m`) may be part of a live stack.
    pub fn covers(&self, m: &Mapping, addr: u64) -> bool {
        self.live_from(m).is_some_and(|from| addr >= from)
    }
}

/// The regions a checkpoint captures (see [`Mapping::kind`]), never a stack
/// a thread runs on: `[stack]`, a stack the target created for a thread, the
/// part of any other mapping above a stopped thread's stack pointer.
/// `anon_only` leaves file mappings out.
pub fn captured(maps: &[Mapping], stacks: &LiveStacks, anon_only: bool) -> Vec<Region> {
    maps.iter()
        .filter_map(|m| {
            let end = stacks.live_from(m).unwrap_or(m.end);
            if end <= m.start {
                return None;
            }
            let kind = m.kind()?;
            if anon_only && kind == Kind::File {
                return None;
            }
            // A writable file mapping (`.data`) is saved whole: a page nobody
            // wrote there is the file's page, which others may write.
            let tracked = match kind {
                Kind::Anon => !m.is_hugetlb(),
                Kind::File => !m.write,
                Kind::SharedAnon => false,
            };
            Some(Region {
                start: m.start,
                end,
                kind,
                tracked,
                file: (kind == Kind::File).then(|| (m.dev.clone(), m.inode, m.offset)),
            })
        })
        .collect()
}

/// Stack pointers of the target's threads that are blocked in the kernel
/// (`/proc/PID/task/TID/syscall`); a running thread reports none.
pub fn stack_pointers(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("syscall")).ok())
        .filter_map(|s| parse_syscall_sp(&s))
        .collect()
}

/// What `/proc/PID/task/TID/syscall` says of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InSyscall {
    /// Blocked (or stopped) in system call `nr` (-1: not in one).
    No(i64),
    /// On a CPU now: where, it cannot say.
    Running,
}

/// Where thread `tid` of `pid` is; `None` once it is gone.
pub fn task_syscall(pid: i32, tid: u32) -> Option<InSyscall> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let first = s.split_ascii_whitespace().next()?;
    if first == "running" {
        return Some(InSyscall::Running);
    }
    first.parse().ok().map(InSyscall::No)
}

/// `open`, `creat`, `openat`, `openat2` (x86-64).
pub fn is_open_syscall(nr: i64) -> bool {
    matches!(nr, 2 | 85 | 257 | 437)
}

/// The stack pointer of the main thread if it is blocked in the kernel.
pub fn main_stack_pointer(pid: i32) -> Option<u64> {
    parse_syscall_sp(&std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?)
}

/// `/proc/PID/syscall`, kept open: read at every restore for the live
/// stack, where opening it each time cost more than reading it.
pub struct SyscallFile {
    file: File,
}

impl SyscallFile {
    pub fn open(pid: i32) -> Option<Self> {
        File::open(format!("/proc/{pid}/syscall"))
            .ok()
            .map(|file| Self { file })
    }

    /// The main thread's stack pointer if it is blocked in the kernel.
    pub fn stack_pointer(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 256];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        parse_syscall_sp(std::str::from_utf8(&buf[..n]).ok()?)
    }
}

/// `nr a1 a2 a3 a4 a5 a6 sp pc`, or `-1 sp pc`, or `running`.
pub fn parse_syscall_sp(s: &str) -> Option<u64> {
    let f: Vec<&str> = s.split_ascii_whitespace().collect();
    if f.len() < 3 {
        return None;
    }
    let sp = f[f.len() - 2].strip_prefix("0x")?;
    u64::from_str_radix(sp, 16).ok()
}

/// Scheduler state letter of `/proc/PID/stat` (`R`, `S`, `T`, `Z`, ...),
/// `None` once the process is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// `/proc/PID/stat` kept open and read again at offset 0 (each read
/// regenerates it): the state letter and thread count of a process held
/// or about to be, several times per request.
pub struct StatFile {
    file: File,
}

impl StatFile {
    pub fn open(pid: i32) -> Option<Self> {
        File::open(format!("/proc/{pid}/stat"))
            .ok()
            .map(|file| Self { file })
    }

    /// `(state, num_threads)`; `None` once the process is gone.
    pub fn read(&self) -> Option<(char, u64)> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 1024];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        parse_stat_state_threads(std::str::from_utf8(&buf[..n]).ok()?)
    }
}

/// `/proc/PID/task`, held open to count the process's threads: its link
/// count is 2 plus one per thread, a stat away (reading `/proc/PID/stat`
/// has the kernel format fifty fields, several microseconds).
pub struct TaskDir {
    dir: File,
}

impl TaskDir {
    pub fn open(pid: i32) -> Option<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(format!("/proc/{pid}/task"))
            .ok()
            .map(|dir| Self { dir })
    }

    /// The number of threads; `None` once the process is gone (or its pid
    /// is another process's now: the open directory stays its own).
    pub fn threads(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        let links = self.dir.metadata().ok()?.nlink();
        links.checked_sub(2).filter(|&n| n > 0)
    }
}

/// State letter (field 3) and `num_threads` (field 20) of a stat line.
pub fn parse_stat_state_threads(s: &str) -> Option<(char, u64)> {
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let mut f = s[s.rfind(')')? + 1..].split_ascii_whitespace();
    let state = f.next()?.chars().next()?;
    // Fields 4..19 lie between.
    let threads = f.nth(16)?.parse().ok()?;
    Some((state, threads))
}

pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAPPED: u64 = 1 << 62;
/// The page is a file (or shared) page, not a private copy.
pub const PM_FILE: u64 = 1 << 61;
/// A guard region installed with `MADV_GUARD_INSTALL` (Linux 6.14+).
pub const PM_GUARD: u64 = 1 << 58;
/// Swap type bits of a swapped-out entry, and the type the kernel gives
/// markers on absent pages (the last of its 32).
pub const PM_SWAP_TYPE: u64 = 0x1f;
pub const SWP_PTE_MARKER: u64 = 31;
/// Page frame number bits of a pagemap entry (zero without CAP_SYS_ADMIN).
pub const PM_PFN: u64 = (1 << 55) - 1;

/// The frame of the kernel's shared zero page, which a read of a
/// never-written anonymous page maps: learned by reading such a page of our
/// own. `None` when pagemap hides frame numbers (no CAP_SYS_ADMIN).
pub fn zero_pfn() -> Option<u64> {
    let page = memmap2::MmapOptions::new()
        .len(PAGE as usize)
        .map_anon()
        .ok()?;
    std::hint::black_box(page[0]);
    let pm = File::open("/proc/self/pagemap").ok()?;
    let mut e = [0u8; 8];
    pm.read_exact_at(&mut e, page.as_ptr() as u64 / PAGE * 8)
        .ok()?;
    let e = u64::from_le_bytes(e);
    let pfn = e & PM_PFN;
    (e & PM_PRESENT != 0 && pfn != 0).then_some(pfn)
}

/// What a page that exists is (`Run::flags`).
pub const P_PRESENT: u8 = 1;
pub const P_SWAPPED: u8 = 2;
/// A file (or shared memory) page, not a private copy of one.
pub const P_FILE: u8 = 4;
/// The shared zero page: reads as zero, holds nothing.
pub const P_ZERO: u8 = 8;
/// A guard page: neither readable nor writable, holds nothing.
pub const P_GUARD: u8 = 16;

/// Consecutive pages with the same flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub end: u64,
    pub flags: u8,
}

impl Run {
    pub fn pages(&self) -> impl Iterator<Item = u64> + use<> {
        (self.start..self.end).step_by(PAGE as usize)
    }

    /// A page that may hold data of its own (not zero, not a guard).
    pub fn may_hold_data(&self, kind: Kind) -> bool {
        if self.flags & P_GUARD != 0 {
            return false;
        }
        if self.flags & P_SWAPPED != 0 {
            return true;
        }
        match kind {
            Kind::Anon => self.flags & P_ZERO == 0,
            Kind::File => self.flags & P_FILE == 0,
            Kind::SharedAnon => true,
        }
    }
}

/// `/proc/PID/pagemap`, opened.
pub fn open_pagemap(pid: i32) -> Result<File> {
    File::open(format!("/proc/{pid}/pagemap"))
        .map_err(|e| Error::from(e).context(format!("open /proc/{pid}/pagemap")))
}

/// Which pages of another process exist: `PAGEMAP_SCAN` (Linux 6.7+),
/// which walks only populated page tables, else `/proc/PID/pagemap`.
pub struct Residency {
    pagemap: std::rc::Rc<File>,
    scan: bool,
    zero_pfn: Option<u64>,
}

/// `PAGE_IS_*` categories of `PAGEMAP_SCAN`.
const SCAN_PRESENT: u64 = 1 << 3;
const SCAN_SWAPPED: u64 = 1 << 4;
const SCAN_FILE: u64 = 1 << 2;
const SCAN_PFNZERO: u64 = 1 << 5;
const SCAN_GUARD: u64 = 1 << 8;

impl Residency {
    pub fn open(pid: i32, zero_pfn: Option<u64>) -> Result<Self> {
        Ok(Self::over(std::rc::Rc::new(open_pagemap(pid)?), zero_pfn))
    }

    /// Over an open `/proc/PID/pagemap` (it stays bound to the address
    /// space it was opened on).
    pub fn over(pagemap: std::rc::Rc<File>, zero_pfn: Option<u64>) -> Self {
        // A property of the kernel: asked once.
        static SCAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let scan = *SCAN.get_or_init(|| crate::os::pagemap_scan_supported(&pagemap));
        Self {
            pagemap,
            scan,
            zero_pfn,
        }
    }

    /// The runs of pages in `[start, end)` that exist (present, swapped
    /// out, or guards), ascending; absent pages are in no run.
    pub fn runs(&self, start: u64, end: u64) -> Result<Vec<Run>> {
        let mut out = Vec::new();
        if self.scan {
            self.scan_runs(start, end, &mut out)?;
        } else {
            self.read_runs(start, end, &mut out)?;
        }
        Ok(out)
    }

    fn scan_runs(&self, start: u64, end: u64, out: &mut Vec<Run>) -> Result<()> {
        let mut at = start;
        let mut guard = SCAN_GUARD;
        while at < end {
            let want = SCAN_PRESENT | SCAN_SWAPPED | guard;
            let got = match crate::os::pagemap_scan(
                &self.pagemap,
                at,
                end,
                want,
                want | SCAN_FILE | SCAN_PFNZERO,
            ) {
                // Kernels before 6.14 know no guard category (nor guards).
                Err(e) if e.errno == Some(libc::EINVAL) && guard != 0 => {
                    guard = 0;
                    continue;
                }
                r => r.map_err(|e| e.context(format!("PAGEMAP_SCAN {at:#x}-{end:#x}")))?,
            };
            for r in &got.regions {
                let c = r.2;
                if c & SCAN_SWAPPED != 0 && c & SCAN_PRESENT == 0 {
                    // The scan tells a page swapped out from a marker on an
                    // absent page (left by userfaultfd write protection)
                    // no more than pagemap does; pagemap's swap type does.
                    self.read_runs(r.0, r.1, out)?;
                    continue;
                }
                let flags = flag_if(c & SCAN_PRESENT != 0, P_PRESENT)
                    | flag_if(c & SCAN_SWAPPED != 0, P_SWAPPED)
                    | flag_if(c & SCAN_FILE != 0, P_FILE)
                    | flag_if(c & SCAN_PFNZERO != 0, P_ZERO)
                    | flag_if(c & SCAN_GUARD != 0, P_GUARD);
                push_run(out, r.0, r.1, flags);
            }
            if got.walk_end <= at {
                break;
            }
            at = got.walk_end;
        }
        Ok(())
    }

    fn read_runs(&self, start: u64, end: u64, out: &mut Vec<Run>) -> Result<()> {
        let mut buf = vec![0u8; 8 * 4096];
        let mut at = start;
        while at < end {
            let n = ((end - at) / PAGE).min(4096);
            let bytes = &mut buf[..(n * 8) as usize];
            self.pagemap
                .read_exact_at(bytes, at / PAGE * 8)
                .map_err(|e| {
                    Error::from(e).context(format!("read pagemap for {at:#x}+{n} pages"))
                })?;
            for (i, c) in bytes.chunks_exact(8).enumerate() {
                let e = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                let flags = self.entry_flags(e);
                if flags != 0 {
                    let a = at + i as u64 * PAGE;
                    push_run(out, a, a + PAGE, flags);
                }
            }
            at += n * PAGE;
        }
        Ok(())
    }

    fn entry_flags(&self, e: u64) -> u8 {
        if e & PM_GUARD != 0 {
            return P_GUARD;
        }
        if e & PM_SWAPPED != 0 && e & PM_PRESENT == 0 && e & PM_SWAP_TYPE == SWP_PTE_MARKER {
            // A marker on an absent page (write protection kept for it, a
            // poisoned page): nothing of the process's own is there.
            return 0;
        }
        let present = e & PM_PRESENT != 0;
        flag_if(present, P_PRESENT)
            | flag_if(e & PM_SWAPPED != 0, P_SWAPPED)
            | flag_if((present || e & PM_SWAPPED != 0) && e & PM_FILE != 0, P_FILE)
            | flag_if(
                present && self.zero_pfn.is_some_and(|z| e & PM_PFN == z),
                P_ZERO,
            )
    }
}

fn flag_if(cond: bool, flag: u8) -> u8 {
    if cond { flag } else { 0 }
}

/// Appends `[start, end)` with `flags`, merging with the last run.
fn push_run(out: &mut Vec<Run>, start: u64, end: u64, flags: u8) {
    match out.last_mut() {
        Some(last) if last.end == start && last.flags == flags => last.end = end,
        _ => out.push(Run { start, end, flags }),
    }
}

/// How many threads `pid` has (`/proc/PID/task`); `None` once it is gone.
pub fn thread_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// Whether every thread of `pid` is stopped (group stop after SIGSTOP, or
/// traced); `None` once the process is gone.
pub fn all_threads_stopped(pid: i32) -> Option<bool> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut any = false;
    for t in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // a thread exiting right now
        };
        any = true;
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        match state {
            Some('T') | Some('t') | Some('Z') | Some('X') => {}
            _ => return Some(false),
        }
    }
    any.then_some(true)
}

#[cfg(test)]
mod tests;
