//! The system calls the test targets make on their own memory. As in the
//! loader, `unsafe` lives only in this one module, each block justified.

#![allow(dead_code)]

use std::ptr::NonNull;

/// A raw memory region owned by the target (never freed: targets exit).
#[derive(Clone, Copy)]
pub struct Region {
    pub ptr: NonNull<u8>,
    pub len: usize,
}

// SAFETY: the targets are single-threaded; the region is plain memory.
unsafe impl Send for Region {}

impl Region {
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` bytes mapped readable for the
        // lifetime of the process (regions are never unmapped).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and the region is writable when callers write
        // (the read-only scenario only reads after mprotect).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

fn check(p: *mut libc::c_void, what: &str) -> NonNull<u8> {
    if p.is_null() || p == libc::MAP_FAILED {
        panic!("{what} failed: {}", std::io::Error::last_os_error());
    }
    NonNull::new(p as *mut u8).expect("checked non-null")
}

/// `malloc(len)`: small sizes come from the brk heap, large ones from mmap.
pub fn malloc(len: usize) -> Region {
    // SAFETY: plain allocation; the memory is never freed.
    let p = unsafe { libc::malloc(len) };
    Region {
        ptr: check(p, "malloc"),
        len,
    }
}

/// `mmap` of anonymous memory; `shared` selects MAP_SHARED, `at` a fixed
/// address (MAP_FIXED_NOREPLACE, so nothing of ours is clobbered).
pub fn mmap_anon(len: usize, shared: bool, at: Option<usize>) -> Region {
    let mut flags = libc::MAP_ANONYMOUS
        | if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
    if at.is_some() {
        flags |= libc::MAP_FIXED_NOREPLACE;
    }
    let hint = at.unwrap_or(0) as *mut libc::c_void;
    // SAFETY: a new anonymous mapping; MAP_FIXED_NOREPLACE never replaces an
    // existing one.
    let p = unsafe { libc::mmap(hint, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
    let r = Region {
        ptr: check(p, "mmap"),
        len,
    };
    if let Some(a) = at {
        assert_eq!(r.addr(), a, "mmap ignored the fixed address");
    }
    r
}

/// `madvise(MADV_DONTNEED)`: private anonymous pages read as zero afterwards.
pub fn zap(r: &Region) {
    // SAFETY: the range is our own mapping; its content may be discarded.
    let rc = unsafe {
        libc::madvise(
            r.ptr.as_ptr() as *mut libc::c_void,
            r.len,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
}

pub fn protect(r: &Region, writable: bool) {
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: changes the protection of our own mapping; no Rust reference
    // is written through while it is read-only.
    let rc = unsafe { libc::mprotect(r.ptr.as_ptr() as *mut libc::c_void, r.len, prot) };
    assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
}

/// A region over a static array (the caller passes its address and size).
pub fn from_static(ptr: *mut u8, len: usize) -> Region {
    Region {
        ptr: NonNull::new(ptr).expect("statics are non-null"),
        len,
    }
}

/// A `MAP_SHARED` mapping of a new temporary file: memory bpfckpt never
/// captures (file-shared), so it keeps what was written after a restore.
pub fn mmap_file_shared(len: usize) -> Region {
    let path = std::env::temp_dir().join(format!("ckpt-target-shared-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("create shared file");
    let _ = std::fs::remove_file(&path);
    f.set_len(len as u64).expect("size shared file");
    use std::os::fd::AsRawFd;
    // SAFETY: a new shared mapping of our own file; the mapping outlives
    // the descriptor, which may be closed afterwards.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    Region {
        ptr: check(p, "mmap shared file"),
        len,
    }
}

// ---------------------------------------------------------------------------------------
// Process and mapping faults for the reliability targets (rel-target, rel-soak).

impl Region {
    /// `len` bytes at byte offset `off` of this region (clamped to it).
    pub fn sub(&self, off: usize, len: usize) -> Region {
        let off = off.min(self.len);
        let len = len.min(self.len - off);
        Region {
            // SAFETY: `off <= self.len`, so the pointer stays inside (or one
            // past the end of) the same mapping.
            ptr: NonNull::new(unsafe { self.ptr.as_ptr().add(off) }).expect("non-null"),
            len,
        }
    }
}

/// `mmap` of anonymous private memory with the given protection.
pub fn mmap_anon_prot(len: usize, writable: bool) -> Region {
    let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
    // SAFETY: a new anonymous mapping at an address of the kernel's choice.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    Region {
        ptr: check(p, "mmap"),
        len,
    }
}

/// Unmaps `r`. The caller gives the region up: the targets keep no other
/// copy of it and never touch its addresses again, except through a new
/// mapping made there (see [`mmap_file_shared_at`]).
pub fn unmap(r: Region) {
    // SAFETY: the range is our own mapping and no reference into it outlives
    // this call (the caller gave the region up).
    let rc = unsafe { libc::munmap(r.ptr.as_ptr() as *mut libc::c_void, r.len) };
    assert_eq!(rc, 0, "munmap: {}", std::io::Error::last_os_error());
}

/// A `MAP_SHARED` mapping of `f` (its first `len` bytes) at exactly `at`,
/// which must be free (`MAP_FIXED_NOREPLACE`).
pub fn mmap_file_shared_at(f: &std::fs::File, len: usize, at: usize) -> Region {
    use std::os::fd::AsRawFd;
    // SAFETY: a new shared mapping of our own file at a free address;
    // MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
            f.as_raw_fd(),
            0,
        )
    };
    let r = Region {
        ptr: check(p, "mmap file at a fixed address"),
        len,
    };
    assert_eq!(r.addr(), at, "mmap ignored the fixed address");
    r
}

/// `fork()`: 0 in the child, the child's pid in the parent. The targets are
/// single-threaded when they fork.
pub fn fork() -> i32 {
    // SAFETY: fork has no memory arguments; the caller is single-threaded,
    // so the child may run ordinary code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    pid
}

/// Waits for child `pid`: its exit code, or 128 + the signal that killed it.
pub fn wait_child(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is a live local the kernel writes one int into.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

/// `_exit(code)`: ends a forked child at once, without running the parent's
/// atexit handlers or flushing its stdio buffers (which the child shares a
/// copy of).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns; skipping Rust's
    // destructors only leaks memory the exiting process gives back anyway.
    unsafe { libc::_exit(code) }
}
