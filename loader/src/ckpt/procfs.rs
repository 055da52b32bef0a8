//! What `/proc` tells about the target: its mappings, which of them are
//! captured (DESIGN.md section 5), thread stack pointers, page residency.

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
    pub inode: u64,
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// `MAP_SHARED|MAP_ANONYMOUS` memory is shmem behind a deleted
    /// `/dev/zero` inode.
    pub fn is_shared_anon(&self) -> bool {
        self.shared && self.path.starts_with("/dev/zero")
    }

    /// Private memory not backed by a file (heap, anonymous mmap, `.bss`
    /// beyond the file, `[anon:...]` names).
    pub fn is_private_anon(&self) -> bool {
        !self.shared && self.inode == 0 && !self.path.starts_with('/')
    }

    fn is_special(&self) -> bool {
        self.path.starts_with("[stack")
            || self.path.starts_with("[vvar")
            || self.path == "[vdso]"
            || self.path == "[vsyscall]"
            || self.path == "[uprobes]"
    }

    /// Where a restore may write: memory private to the target or shared
    /// anonymous memory. Never a file-shared mapping, which would write
    /// through to the file.
    pub fn writable_target(&self) -> bool {
        !self.is_special() && (!self.shared || self.is_shared_anon())
    }
}

/// What kind of memory a captured region is; decides how a page that BPF
/// could not read is completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Private anonymous (including the heap and `.bss`): a page not present
    /// and not swapped reads as zero.
    Anon,
    /// Shared anonymous (shmem): a page may exist in the page cache without
    /// being mapped, so a missing page must be read.
    SharedAnon,
    /// Writable private file mapping (`.data`): an untouched page holds the
    /// file's bytes.
    FilePrivate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: Kind,
}

impl Region {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE
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
        let (Some(range), Some(perms), Some(_off), Some(_dev), Some(inode)) =
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

/// The regions a checkpoint captures: writable private memory (anonymous,
/// heap, `.bss`, and unless `anon_only` writable private file mappings) and
/// shared anonymous memory; never a stack that a thread runs on, `[vvar]`,
/// `[vdso]`, read-only or file-shared mappings.
pub fn captured(maps: &[Mapping], stack_pointers: &[u64], anon_only: bool) -> Vec<Region> {
    maps.iter()
        .enumerate()
        .filter(|(i, m)| !(*i > 0 && is_thread_stack(&maps[i - 1], m)))
        .map(|(_, m)| m)
        .filter(|m| m.write && m.read && !m.is_special() && m.end > m.start)
        .filter(|m| !stack_pointers.iter().any(|&sp| m.contains(sp)))
        .filter_map(|m| {
            let kind = if m.is_shared_anon() {
                Kind::SharedAnon
            } else if m.shared {
                return None;
            } else if m.is_private_anon() {
                Kind::Anon
            } else if anon_only {
                return None;
            } else {
                Kind::FilePrivate
            };
            Some(Region {
                start: m.start,
                end: m.end,
                kind,
            })
        })
        .collect()
}

/// A thread stack as pthreads lays it out: an anonymous read-write mapping
/// right above its inaccessible guard page. A running thread's stack
/// pointer is not visible from outside, so this shape is what tells; a
/// thread's live stack must never be rolled back under it.
/// (malloc arenas are the other way round: read-write below the reserve.)
fn is_thread_stack(below: &Mapping, m: &Mapping) -> bool {
    // musl guards the start of its brk heap the same way.
    m.path != "[heap]"
        && below.end == m.start
        && !below.read
        && !below.write
        && below.is_private_anon()
        && m.is_private_anon()
        && m.write
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

pub const PM_PRESENT: u64 = 1 << 63;
pub const PM_SWAPPED: u64 = 1 << 62;
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
    let pm = Pagemap::open(std::process::id() as i32).ok()?;
    let mut e = Vec::new();
    pm.read(page.as_ptr() as u64, 1, &mut e).ok()?;
    let pfn = e.first()? & PM_PFN;
    (e[0] & PM_PRESENT != 0 && pfn != 0).then_some(pfn)
}

/// Reader of `/proc/PID/pagemap`: one u64 per virtual page.
pub struct Pagemap {
    file: File,
}

impl Pagemap {
    pub fn open(pid: i32) -> Result<Self> {
        let file = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|e| Error::from(e).context(format!("open /proc/{pid}/pagemap")))?;
        Ok(Self { file })
    }

    /// Entries for `npages` pages from `start`, appended to `out`.
    pub fn read(&self, start: u64, npages: u64, out: &mut Vec<u64>) -> Result<()> {
        let mut buf = vec![0u8; 8 * 4096];
        let mut done = 0;
        while done < npages {
            let n = (npages - done).min(4096);
            let bytes = &mut buf[..(n * 8) as usize];
            let off = (start / PAGE + done) * 8;
            self.file.read_exact_at(bytes, off).map_err(|e| {
                Error::from(e).context(format!("read pagemap for {:#x}+{} pages", start, npages))
            })?;
            out.extend(
                bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])),
            );
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn captures_writable_private_and_shared_anon_only() {
        let m = parse_maps(MAPS).unwrap();
        let thread_sp = 0x7f4ebb06a800;
        let r = captured(&m, &[thread_sp], false);
        let starts: Vec<(u64, Kind)> = r.iter().map(|r| (r.start, r.kind)).collect();
        assert_eq!(
            starts,
            vec![
                (0x5593cd6d6000, Kind::FilePrivate),
                (0x5593cd6d7000, Kind::Anon),
                (0x5593f8638000, Kind::Anon),
                (0x7f4ebb068000, Kind::SharedAnon),
                (0x7f4ebb06b000, Kind::Anon),
                (0x7f4ebb06e000, Kind::Anon),
            ]
        );
        let anon = captured(&m, &[], true);
        assert!(anon.iter().all(|r| r.kind != Kind::FilePrivate));
        // A thread stack is recognised by its guard page even without a
        // stack pointer; a malloc arena (read-write below its reserve) is not.
        assert!(!anon.iter().any(|r| r.start == 0x7f4ebb06a000));
        assert!(anon.iter().any(|r| r.start == 0x7f4ebb06b000));
        // musl's guarded brk heap is the heap, not a stack.
        assert!(anon.iter().any(|r| r.start == 0x7f4ebb06e000));
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
}

#[cfg(test)]
mod root_tests {
    #[test]
    fn the_zero_page_frame_is_found_as_root() {
        if !nix::unistd::geteuid().is_root() {
            // Frame numbers need CAP_SYS_ADMIN: then it must say so with None.
            assert_eq!(super::zero_pfn(), None);
            return;
        }
        let z = super::zero_pfn().expect("root sees page frame numbers");
        assert_eq!(super::zero_pfn(), Some(z), "the zero page does not move");
    }
}
