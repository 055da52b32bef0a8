//! The checkpoint/restore application: which memory, the file protocol,
//! the two restore paths, the page store and the report.

#[path = "../../../probes/src/abi.rs"]
pub mod abi;
pub mod demo;
pub mod dirty;
pub mod engine;
pub mod events;
pub mod gate;
pub mod inject;
pub mod markers;
pub mod memio;
pub mod memlock;
pub mod probes;
pub mod procfs;
pub mod report;
pub mod storage;
pub mod touched;
pub mod watchdog;
mod wire;

pub use engine::{Engine, HoldChoice, Options, Outcome, RestorePath, Waiter};
