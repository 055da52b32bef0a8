//! A writer (and, for the tests, a reader) of "newc" cpio archives: the
//! format the kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header — the magic `070701` and 13 fields
//! of 8 hex digits (ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
//! devminor, rdevmajor, rdevminor, namesize, check) — then the name with its
//! NUL (header + name padded to a multiple of 4), then the data (padded to a
//! multiple of 4). The archive ends with an entry named `TRAILER!!!`.
//! Names are relative (`bin/sh`); a directory must come before what it holds.

use std::collections::BTreeSet;

pub const MAGIC: &[u8; 6] = b"070701";
pub const HEADER_LEN: usize = 110;
pub const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFCHR: u32 = 0o020_000;
pub const S_IFMT: u32 = 0o170_000;

/// Builds an archive in memory. Every entry is owned by root, with mtime 0,
/// so the same inputs give the same bytes.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

/// The fields of one header that vary between entries.
struct Header<'a> {
    name: &'a str,
    ino: u32,
    mode: u32,
    nlink: u32,
    filesize: u32,
    rdev: (u32, u32),
}

fn pad4(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.starts_with('/')
        || name.ends_with('/')
        || name.contains('\0')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "cpio: bad entry name {name:?} (relative, no empty, . or .. components)"
        ));
    }
    Ok(())
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    fn ino(&mut self) -> u32 {
        self.next_ino += 1;
        self.next_ino
    }

    fn header(&mut self, h: &Header<'_>) {
        let fields = [
            h.ino,
            h.mode,
            0, // uid
            0, // gid
            h.nlink,
            0, // mtime
            h.filesize,
            0, // devmajor
            0, // devminor
            h.rdev.0,
            h.rdev.1,
            h.name.len() as u32 + 1,
            0, // check (only used by the "070702" crc format)
        ];
        self.buf.extend_from_slice(MAGIC);
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(h.name.as_bytes());
        self.buf.push(0);
        pad4(&mut self.buf);
    }

    /// Adds the directories above `name` that are not in the archive yet.
    fn parents(&mut self, name: &str) {
        let mut end = 0;
        while let Some(i) = name[end..].find('/') {
            end += i;
            let dir = name[..end].to_string();
            end += 1;
            if !self.dirs.contains(&dir) {
                self.dir(&dir, 0o755)
                    .expect("parent of a checked name is valid");
            }
        }
    }

    /// A directory (its parents are added as needed; adding one twice is a no-op).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), String> {
        check_name(name)?;
        if self.dirs.contains(name) {
            return Ok(());
        }
        self.parents(name);
        self.dirs.insert(name.to_string());
        let ino = self.ino();
        self.header(&Header {
            name,
            ino,
            mode: S_IFDIR | (perm & 0o7777),
            nlink: 2,
            filesize: 0,
            rdev: (0, 0),
        });
        Ok(())
    }

    /// A regular file with `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), String> {
        check_name(name)?;
        let filesize = u32::try_from(data.len())
            .map_err(|_| format!("cpio: {name} is too big for newc ({} bytes)", data.len()))?;
        self.parents(name);
        let ino = self.ino();
        self.header(&Header {
            name,
            ino,
            mode: S_IFREG | (perm & 0o7777),
            nlink: 1,
            filesize,
            rdev: (0, 0),
        });
        self.buf.extend_from_slice(data);
        pad4(&mut self.buf);
        Ok(())
    }

    /// A character device node (e.g. `dev/console`, 5:1).
    pub fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), String> {
        check_name(name)?;
        self.parents(name);
        let ino = self.ino();
        self.header(&Header {
            name,
            ino,
            mode: S_IFCHR | (perm & 0o7777),
            nlink: 1,
            filesize: 0,
            rdev: (major, minor),
        });
        Ok(())
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.header(&Header {
            name: TRAILER,
            ino: 0,
            mode: 0,
            nlink: 1,
            filesize: 0,
            rdev: (0, 0),
        });
        self.buf
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub ino: u32,
    pub mode: u32,
    pub nlink: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// Parses a newc archive strictly (magic, hex fields, NULs, zero padding,
/// trailer, nothing after it but zero padding). The trailer is not returned.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        let h = bytes
            .get(off..off + HEADER_LEN)
            .ok_or_else(|| format!("truncated header at {off}"))?;
        if &h[..6] != MAGIC {
            return Err(format!(
                "bad magic at {off}: {:?}",
                String::from_utf8_lossy(&h[..6])
            ));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("field {i} at {off} is not hex: {s:?}"));
            }
            *v = u32::from_str_radix(s, 16).map_err(|e| e.to_string())?;
        }
        let (filesize, namesize) = (f[6] as usize, f[11] as usize);
        let name_start = off + HEADER_LEN;
        let name = bytes
            .get(name_start..name_start + namesize)
            .ok_or_else(|| format!("truncated name at {name_start}"))?;
        let Some((&0, name)) = name.split_last() else {
            return Err(format!("name at {name_start} is not NUL-terminated"));
        };
        let name = String::from_utf8(name.to_vec()).map_err(|e| e.to_string())?;
        let data_start = (name_start + namesize).next_multiple_of(4);
        check_zero(bytes, name_start + namesize, data_start)?;
        let data = bytes
            .get(data_start..data_start + filesize)
            .ok_or_else(|| format!("truncated data of {name}"))?
            .to_vec();
        let next = (data_start + filesize).next_multiple_of(4);
        check_zero(bytes, data_start + filesize, next)?;
        off = next;
        if name == TRAILER {
            check_zero(bytes, off, bytes.len())?;
            return Ok(out);
        }
        out.push(Entry {
            name,
            ino: f[0],
            mode: f[1],
            nlink: f[4],
            rdev: (f[9], f[10]),
            data,
        });
    }
}

fn check_zero(bytes: &[u8], from: usize, to: usize) -> Result<(), String> {
    match bytes.get(from..to) {
        Some(p) if p.iter().all(|&b| b == 0) => Ok(()),
        Some(_) => Err(format!("non-zero padding in {from}..{to}")),
        None => Err(format!("archive ends inside padding {from}..{to}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bytes_of_a_tiny_archive() {
        let mut w = Writer::new();
        w.file("a", 0o644, b"hi\n").unwrap();
        let got = w.finish();
        let mut want = Vec::new();
        want.extend_from_slice(b"070701");
        want.extend_from_slice(b"00000001000081a40000000000000000"); // ino mode uid gid
        want.extend_from_slice(b"00000001000000000000000300000000"); // nlink mtime size devmajor
        want.extend_from_slice(b"00000000000000000000000000000002"); // devminor rdev namesize
        want.extend_from_slice(b"00000000"); // check
        want.extend_from_slice(b"a\0"); // 110 + 2 = 112: aligned already
        want.extend_from_slice(b"hi\n\0"); // data padded to 4
        want.extend_from_slice(b"070701");
        want.extend_from_slice(b"00000000000000000000000000000000");
        want.extend_from_slice(b"00000001000000000000000000000000");
        want.extend_from_slice(b"0000000000000000000000000000000b");
        want.extend_from_slice(b"00000000");
        want.extend_from_slice(b"TRAILER!!!\0\0\0\0"); // 110 + 11 = 121, padded to 124
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(got.len(), 116 + 124);
        // Every header sits at a multiple of 4 and is 110 bytes of ASCII.
        assert!(got[..110].iter().all(u8::is_ascii_alphanumeric));
        assert_eq!(&got[116..122], MAGIC);
    }

    #[test]
    fn round_trip_every_padding_case() {
        let mut w = Writer::new();
        let mut want = Vec::new();
        // Names of 1..=5 bytes and data of 0..=5 bytes cover every remainder.
        for n in 1..=5 {
            for d in 0..=5usize {
                let name = format!("d/{}{}", "x".repeat(n), d);
                let data: Vec<u8> = (0..d as u8).map(|b| b.wrapping_mul(37) | 1).collect();
                w.file(&name, 0o600, &data).unwrap();
                want.push((name, data));
            }
        }
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.dir("bin", 0o755).unwrap();
        w.dir("bin", 0o755).unwrap(); // twice: once in the archive
        w.file("bin/init", 0o755, b"\x7fELF").unwrap();
        let bytes = w.finish();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes).unwrap();

        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names[0], "d", "the parent directory comes first");
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        for (name, data) in &want {
            let e = entries.iter().find(|e| &e.name == name).unwrap();
            assert_eq!(&e.data, data, "{name}");
            assert_eq!(e.mode, S_IFREG | 0o600);
        }
        let con = entries.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!((con.mode & S_IFMT, con.rdev), (S_IFCHR, (5, 1)));
        assert!(
            names.iter().position(|n| *n == "dev") < names.iter().position(|n| *n == "dev/console")
        );
        assert_eq!(names.iter().filter(|n| **n == "bin").count(), 1);
        let init = entries.iter().find(|e| e.name == "bin/init").unwrap();
        assert_eq!(
            (init.mode, init.data.as_slice()),
            (S_IFREG | 0o755, &b"\x7fELF"[..])
        );
        // Inode numbers are unique.
        let mut inos: Vec<u32> = entries.iter().map(|e| e.ino).collect();
        inos.sort_unstable();
        inos.dedup();
        assert_eq!(inos.len(), entries.len());
    }

    #[test]
    fn refuses_bad_names_and_detects_damage() {
        let mut w = Writer::new();
        for bad in ["", "/init", "a//b", "a/../b", "dir/", "./x", "nul\0"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad:?}");
        }
        w.file("xy", 0o644, b"data").unwrap();
        let good = w.finish();
        assert!(parse(&good).is_ok());

        let mut bad_magic = good.clone();
        bad_magic[5] = b'2';
        assert!(parse(&bad_magic).unwrap_err().contains("magic"));
        let mut bad_pad = good.clone();
        bad_pad[110 + 3] = 1; // padding after "xy\0"
        assert!(parse(&bad_pad).unwrap_err().contains("padding"));
        assert!(parse(&good[..good.len() - 8]).is_err(), "truncated trailer");
        let mut no_nul = good.clone();
        no_nul[112] = b'z'; // the NUL after "xy"
        assert!(parse(&no_nul).unwrap_err().contains("NUL"));
    }
}
