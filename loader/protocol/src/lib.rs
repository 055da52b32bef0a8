//! The file protocol between a target and bpfckpt: the four marker names,
//! each relative to the trigger directory (default `/tmp`).
//!
//! A target creates [`CHECKPOINT_REQUEST`] (an `open`/`openat`/`creat` with
//! `O_CREAT`) and waits for [`CHECKPOINT_DONE`]; it creates
//! [`RESTORE_REQUEST`] and waits for [`RESTORE_DONE`]; it deletes all four
//! before the next cycle. bpfckpt, its test targets and its benchmarks all
//! take the names from here.

#![no_std]

/// Created by the target: take a checkpoint now.
pub const CHECKPOINT_REQUEST: &str = "ready_to_checkpoint";
/// Created by bpfckpt when the checkpoint is complete.
pub const CHECKPOINT_DONE: &str = "checkpoint_complete";
/// Created by the target: restore the last checkpoint now.
pub const RESTORE_REQUEST: &str = "ready_to_restore";
/// Created by bpfckpt when memory equals the checkpoint again.
pub const RESTORE_DONE: &str = "restore_complete";

/// All four, in protocol order.
pub const ALL: [&str; 4] = [
    CHECKPOINT_REQUEST,
    CHECKPOINT_DONE,
    RESTORE_REQUEST,
    RESTORE_DONE,
];
