//! bpfckpt: checkpoint and restore a process's memory in place with eBPF.

/// The BPF object with all probes, built by `build.rs`.
pub static PROBES_OBJ: &[u8] = include_bytes!(env!("BPFCKPT_PROBES_OBJ"));

pub mod error;
pub mod insn;

pub use error::{Error, Result};
