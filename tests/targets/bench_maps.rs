//! Bench bin: the kernel's names of BPF maps, by id.
//! `bench-maps --ids ID[,ID...]`
//!
//! /proc/PID/fdinfo gives each map's id, type, sizes and memory, but not
//! its name; the bench's per-map breakdown of bpfckpt's kernel memory gets
//! the names here. Prints `{"bench":"map","id":ID,"name":"NAME"}` per id, or
//! `{"bench":"map","id":ID,"errno":E}` when the map cannot be looked up.
//! Needs root.

#[path = "bench_common.rs"]
mod bench_common;
#[path = "../src/bench_sys.rs"]
mod bench_sys;
#[path = "../src/proto.rs"]
mod proto;

use bench_common::{Args, emit};
use proto::fail;

fn main() {
    let a = Args::parse(&["ids"]);
    let ids: String = a.get("ids", String::new());
    for w in ids.split(',').filter(|w| !w.is_empty()) {
        let id: u32 = w
            .parse()
            .unwrap_or_else(|_| fail(&format!("--ids: `{w}` is not a map id")));
        match bench_sys::bpf_map_name(id) {
            // Kernel map names are [A-Za-z0-9_.]: nothing to escape, but
            // keep the line valid JSON whatever comes back.
            Ok(name) => {
                let name: String = name
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                    .collect();
                println!("{{\"bench\":\"map\",\"id\":{id},\"name\":\"{name}\"}}");
            }
            Err(e) => emit(
                "map",
                &[
                    ("id", u64::from(id)),
                    ("errno", e.raw_os_error().unwrap_or(0) as u64),
                ],
            ),
        }
    }
}
