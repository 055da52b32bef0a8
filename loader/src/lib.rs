//! bpfckpt: checkpoint and restore a process's memory in place with eBPF.
//!
//! The BPF loader is the `bpfload` crate; this package is the application:
//! `ckpt` (the engine and everything it needs), `doctor`, and `os` (the
//! application's own system calls).

/// The BPF object with all probes, built by `build.rs`.
pub static PROBES_OBJ: &[u8] = include_bytes!(env!("BPFCKPT_PROBES_OBJ"));

pub mod ckpt;
pub mod doctor;
pub mod os;

pub use bpfload::{Error, Result, bail};
