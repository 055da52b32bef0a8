//! bpfckpt: checkpoint and restore a process's memory in place with eBPF.
//!
//! Layers (see ARCHITECTURE.md): `obj` parses the probe ELF, `link` produces
//! loadable instruction streams and `btf` their type info — all three pure;
//! `sys` is the only place that makes system calls on BPF objects; `load`,
//! `attach`, `maps` and `ringbuf` build on it; `ckpt` is the application.

/// The BPF object with all probes, built by `build.rs`.
pub static PROBES_OBJ: &[u8] = include_bytes!(env!("BPFCKPT_PROBES_OBJ"));

pub mod attach;
pub mod btf;
pub mod doctor;
pub mod error;
pub mod insn;
pub mod link;
pub mod load;
pub mod maps;
pub mod obj;
pub mod ringbuf;
pub mod sys;

pub use error::{Error, Result};
pub mod ckpt;
