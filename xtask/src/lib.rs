//! Build support shared by `cargo xtask` and `loader/build.rs`.
//!
//! The probes are compiled by rustc's own LLVM for the custom target
//! `probes/target.json` (a relocatable BPF ELF, not bitcode), against a tiny
//! sysroot built here, and "linked" by [`probe_link`], which runs inside the
//! same binary that started the build (xtask or the build script).

pub mod probes;

pub use probes::maybe_act_as_linker;
