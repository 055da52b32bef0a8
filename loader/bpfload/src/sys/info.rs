//! Kernel objects by id and their descriptions: BPF_*_GET_NEXT_ID, BPF_*_GET_FD_BY_ID and
//! BPF_OBJ_GET_INFO_BY_FD.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::consts::*;
use super::{bpf, bpf_fd, name_from_bytes, ne_u32, ptr_u64};
use crate::{Error, Result};

#[repr(C)]
#[derive(Default)]
struct GetIdRaw {
    start_id: u32,
    next_id: u32,
    open_flags: u32,
}

fn next_id(cmd: u32, what: &str, start: u32) -> Result<Option<u32>> {
    let mut a = GetIdRaw {
        start_id: start,
        ..Default::default()
    };
    match bpf(cmd, &mut a) {
        Ok(_) => Ok(Some(a.next_id)),
        Err(libc::ENOENT) => Ok(None),
        Err(e) => Err(Error::sys(what, e)),
    }
}

/// BPF_PROG_GET_NEXT_ID: the next program id after `start` (0 = first), `None` at the end.
pub fn prog_get_next_id(start: u32) -> Result<Option<u32>> {
    next_id(BPF_PROG_GET_NEXT_ID, "BPF_PROG_GET_NEXT_ID", start)
}

/// BPF_MAP_GET_NEXT_ID.
pub fn map_get_next_id(start: u32) -> Result<Option<u32>> {
    next_id(BPF_MAP_GET_NEXT_ID, "BPF_MAP_GET_NEXT_ID", start)
}

/// BPF_LINK_GET_NEXT_ID.
pub fn link_get_next_id(start: u32) -> Result<Option<u32>> {
    next_id(BPF_LINK_GET_NEXT_ID, "BPF_LINK_GET_NEXT_ID", start)
}

fn fd_by_id(cmd: u32, what: &str, id: u32) -> Result<OwnedFd> {
    let mut a = GetIdRaw {
        start_id: id,
        ..Default::default()
    };
    bpf_fd(cmd, &mut a).map_err(|e| Error::sys(format!("{what}({id})"), e))
}

/// BPF_PROG_GET_FD_BY_ID.
pub fn prog_get_fd_by_id(id: u32) -> Result<OwnedFd> {
    fd_by_id(BPF_PROG_GET_FD_BY_ID, "BPF_PROG_GET_FD_BY_ID", id)
}

/// BPF_MAP_GET_FD_BY_ID.
pub fn map_get_fd_by_id(id: u32) -> Result<OwnedFd> {
    fd_by_id(BPF_MAP_GET_FD_BY_ID, "BPF_MAP_GET_FD_BY_ID", id)
}

/// BPF_LINK_GET_FD_BY_ID.
pub fn link_get_fd_by_id(id: u32) -> Result<OwnedFd> {
    fd_by_id(BPF_LINK_GET_FD_BY_ID, "BPF_LINK_GET_FD_BY_ID", id)
}

#[repr(C)]
#[derive(Default)]
struct InfoRaw {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// BPF_OBJ_GET_INFO_BY_FD into `info` (a zeroed prefix of struct bpf_prog_info,
/// bpf_map_info, bpf_link_info or bpf_btf_info); returns the number of bytes the kernel
/// filled. Pointer fields inside `info` must stay zero.
fn obj_get_info_by_fd(fd: BorrowedFd<'_>, info: &mut [u8]) -> Result<usize> {
    let Ok(info_len) = u32::try_from(info.len()) else {
        crate::bail!("BPF_OBJ_GET_INFO_BY_FD: info buffer too large");
    };
    // Zeroed so no stale bytes are taken for array lengths/pointers by the kernel.
    info.fill(0);
    let mut a = InfoRaw {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len,
        info: ptr_u64(info.as_mut_ptr()),
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).map_err(|e| Error::sys("BPF_OBJ_GET_INFO_BY_FD", e))?;
    Ok(a.info_len as usize)
}

/// The part of struct bpf_prog_info we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgInfo {
    pub prog_type: u32,
    pub id: u32,
    pub name: String,
}

/// The part of struct bpf_map_info we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapInfo {
    pub map_type: u32,
    pub id: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub name: String,
}

/// The part of struct bpf_link_info we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub prog_id: u32,
}

/// Type, id and name of a program.
pub fn prog_info(fd: BorrowedFd<'_>) -> Result<ProgInfo> {
    // type, id, tag[8], jited/xlated lens, 2 pointers, load_time, uid, nr_map_ids,
    // map_ids pointer, then name[16] at offset 64.
    let mut b = [0u8; 80];
    obj_get_info_by_fd(fd, &mut b).map_err(|e| e.context("program info"))?;
    Ok(ProgInfo {
        prog_type: ne_u32(&b, 0),
        id: ne_u32(&b, 4),
        name: name_from_bytes(&b[64..80]),
    })
}

/// Type, id, sizes, flags and name of a map.
pub fn map_info(fd: BorrowedFd<'_>) -> Result<MapInfo> {
    let mut b = [0u8; 40];
    obj_get_info_by_fd(fd, &mut b).map_err(|e| e.context("map info"))?;
    Ok(MapInfo {
        map_type: ne_u32(&b, 0),
        id: ne_u32(&b, 4),
        key_size: ne_u32(&b, 8),
        value_size: ne_u32(&b, 12),
        max_entries: ne_u32(&b, 16),
        map_flags: ne_u32(&b, 20),
        name: name_from_bytes(&b[24..40]),
    })
}

/// The program a link attaches.
pub fn link_info(fd: BorrowedFd<'_>) -> Result<LinkInfo> {
    let mut b = [0u8; 16];
    obj_get_info_by_fd(fd, &mut b).map_err(|e| e.context("link info"))?;
    // type, id, then prog_id.
    Ok(LinkInfo {
        prog_id: ne_u32(&b, 8),
    })
}
