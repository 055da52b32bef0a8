//! bpfload: loads eBPF objects into the kernel with no framework.
//!
//! Layers, from pure to kernel-facing (see ARCHITECTURE.md):
//! - [`obj`] parses an ELF object into an [`obj::ObjectSpec`] (maps, programs,
//!   code, relocations resolved), in phases over one parser state;
//!   [`linker`] turns each program into one loadable instruction stream;
//!   [`btf`] writes the minimal type information the verifier needs; [`insn`]
//!   is the instruction and a small assembler; `names` holds the naming rules
//!   (kernel object names, tracepoint names, demangling, lookup by name). All
//!   pure: no system calls, testable without root.
//! - [`sys`] is the only module with `unsafe`: thin typed wrappers of bpf(2),
//!   perf_event_open(2), their ioctls and mmap of map memory, a file per kind
//!   of call.
//! - [`load`] creates maps and loads programs; [`attach`] attaches them to
//!   tracepoints; [`maps`] and [`ringbuf`] access maps from user space.
//! - [`error`]: one error type; a refused program's verifier log is a field of it.
//!
//! The crate knows nothing of what the programs do.

// `sys` allows it for itself, and documents each block.
#![deny(unsafe_code)]

pub mod attach;
pub mod btf;
pub mod error;
pub mod insn;
pub mod linker;
pub mod load;
pub mod maps;
mod names;
pub mod obj;
pub mod ringbuf;
pub mod sys;

pub use error::{Error, Result};
