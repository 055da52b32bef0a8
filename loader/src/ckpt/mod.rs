//! The checkpoint/restore application: which memory, the file protocol,
//! the two restore paths, the page store and the report.

#[path = "../../../probes/src/abi.rs"]
pub mod abi;
pub mod demo;
pub mod gate;
pub mod markers;
pub mod memio;
pub mod procfs;
pub mod report;
pub mod session;
pub mod storage;
pub mod watchdog;
mod wire;

pub use session::{Engine, Options, RestorePath, Waiter};
