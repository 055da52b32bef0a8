//! Kernel memory of bpfckpt's BPF maps, as the kernel accounts it: for each
//! descriptor in /proc/PID/fd that is `anon_inode:bpf-map`, the `memlock:`
//! line of /proc/PID/fdinfo/N (bytes: the map's own `map_mem_usage`, e.g.
//! a hash map's buckets plus its allocated elements, an array's values, a
//! ring buffer's pages), with `map_type`, `key_size`, `value_size`,
//! `max_entries`, `map_flags` and `map_id`. Maps are counted once per id
//! (bpfckpt holds some under two descriptors). Map-in-map inner maps (the
//! page store, the region and zero-range tables and their templates) are
//! held by descriptors of their own, so they are in the sum.
//!
//! Not in it: a map no descriptor of bpfckpt refers to (one only a program
//! or an outer map still holds), program memory, and the transient peak of
//! a store growth (old and new store both alive while the saved pages are
//! copied over).
//!
//! fdinfo has no map names: `bench-maps --ids` looks them up by id
//! (`bpf_map_info.name`).

use super::Bins;
use super::events::bench_lines;
use super::proc::{Proc, deadline};
use crate::util::Result;
use std::collections::BTreeMap;
use std::fs;
use std::process::Command;

/// One BPF map and the kernel memory charged for it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MapMem {
    pub id: u32,
    /// The kernel's name (empty if it could not be looked up).
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
    /// fdinfo `memlock:`, in bytes.
    pub bytes: u64,
}

impl MapMem {
    /// The map of an fdinfo text, if it describes one.
    fn parse_fdinfo(text: &str) -> Option<Self> {
        let mut f: BTreeMap<&str, &str> = BTreeMap::new();
        for l in text.lines() {
            if let Some((k, v)) = l.split_once(':') {
                f.insert(k.trim(), v.trim());
            }
        }
        let dec = |k: &str| f.get(k)?.parse::<u64>().ok();
        let hex = |k: &str| u32::from_str_radix(f.get(k)?.trim_start_matches("0x"), 16).ok();
        let small = |k: &str| dec(k).and_then(|v| u32::try_from(v).ok());
        Some(Self {
            id: small("map_id")?,
            name: String::new(),
            map_type: small("map_type")?,
            key_size: small("key_size").unwrap_or(0),
            value_size: small("value_size").unwrap_or(0),
            max_entries: small("max_entries").unwrap_or(0),
            flags: hex("map_flags").unwrap_or(0),
            bytes: dec("memlock")?,
        })
    }

    pub fn type_name(&self) -> String {
        type_name(self.map_type)
    }
}

/// `enum bpf_map_type` names (lower case, without `BPF_MAP_TYPE_`).
fn type_name(t: u32) -> String {
    const NAMES: [&str; 34] = [
        "unspec",
        "hash",
        "array",
        "prog_array",
        "perf_event_array",
        "percpu_hash",
        "percpu_array",
        "stack_trace",
        "cgroup_array",
        "lru_hash",
        "lru_percpu_hash",
        "lpm_trie",
        "array_of_maps",
        "hash_of_maps",
        "devmap",
        "sockmap",
        "cpumap",
        "xskmap",
        "sockhash",
        "cgroup_storage",
        "reuseport_sockarray",
        "percpu_cgroup_storage",
        "queue",
        "stack",
        "sk_storage",
        "devmap_hash",
        "struct_ops",
        "ringbuf",
        "inode_storage",
        "task_storage",
        "bloom_filter",
        "user_ringbuf",
        "cgrp_storage",
        "arena",
    ];
    NAMES
        .get(t as usize)
        .map_or_else(|| format!("type {t}"), |n| (*n).to_string())
}

/// Every BPF map process `pid` holds a descriptor of, once per map id,
/// largest first.
pub fn maps_of(pid: u32) -> Result<Vec<MapMem>> {
    let dir = format!("/proc/{pid}/fd");
    let rd = fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut by_id: BTreeMap<u32, MapMem> = BTreeMap::new();
    for e in rd.flatten() {
        // A descriptor closed meanwhile is simply not there any more.
        let Ok(link) = fs::read_link(e.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:bpf-map" {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
        let Ok(text) = fs::read_to_string(&info) else {
            continue;
        };
        let m = MapMem::parse_fdinfo(&text)
            .ok_or_else(|| format!("{info}: no map_id/map_type/memlock in\n{text}"))?;
        by_id.insert(m.id, m);
    }
    let mut v: Vec<MapMem> = by_id.into_values().collect();
    v.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.id.cmp(&b.id)));
    Ok(v)
}

/// Fills in the maps' names with `bench-maps`; the names only label the
/// breakdown, so a failure is a warning.
pub fn name_maps(bins: &Bins, maps: &mut [MapMem], warnings: &mut Vec<String>) {
    let ids: Vec<String> = maps.iter().map(|m| m.id.to_string()).collect();
    let mut cmd = Command::new(bins.bench("bench-maps"));
    cmd.args(["--ids", &ids.join(",")]);
    let out = match Proc::start("bench-maps", &mut cmd, false).and_then(|p| p.finish(deadline(30)))
    {
        Ok(out) => out,
        Err(e) => {
            warnings.push(format!("map names: {e}"));
            return;
        }
    };
    for l in bench_lines(&out, "map") {
        let (Some(id), Some(name)) = (l.u("id"), l.s("name")) else {
            continue;
        };
        if let Some(m) = maps.iter_mut().find(|m| u64::from(m.id) == id) {
            m.name = name.to_string();
        }
    }
    let unnamed = maps.iter().filter(|m| m.name.is_empty()).count();
    if unnamed > 0 {
        warnings.push(format!(
            "map names: {unnamed} of {} maps could not be looked up by id",
            maps.len()
        ));
    }
}

pub fn total(maps: &[MapMem]) -> u64 {
    maps.iter().map(|m| m.bytes).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_of_a_map() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nmap_type:\t1\n\
                    key_size:\t16\nvalue_size:\t128\nmax_entries:\t262144\nmap_flags:\t0x1\n\
                    map_extra:\t0x0\nmemlock:\t4199400\nmap_id:\t6941\nfrozen:\t0\n";
        let m = MapMem::parse_fdinfo(text).expect("a map");
        assert_eq!(
            m,
            MapMem {
                id: 6941,
                name: String::new(),
                map_type: 1,
                key_size: 16,
                value_size: 128,
                max_entries: 262_144,
                flags: 1,
                bytes: 4_199_400,
            }
        );
        assert_eq!(m.type_name(), "hash");
        assert_eq!(type_name(27), "ringbuf");
        assert_eq!(type_name(12), "array_of_maps");
        assert_eq!(type_name(99), "type 99");
        // A program's fdinfo (no map_id) is not a map.
        assert_eq!(
            MapMem::parse_fdinfo("prog_type:\t5\nmemlock:\t4096\nprog_id:\t3\n"),
            None
        );
        assert_eq!(total(&[m.clone(), m]), 8_398_800);
    }
}
