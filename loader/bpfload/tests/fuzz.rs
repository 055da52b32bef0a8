//! Deterministic mutation fuzzing of parse + link + program_btf: byte flips,
//! interesting values in header-ish places, truncations, splices, inserts
//! and deletes of the rustc-built fixture and the hand-made rich object
//! (the real probe object: loader/tests/probes_obj.rs). Nothing may panic;
//! anything that links must satisfy the same invariants as a good object.

mod common;
mod fuzzing;

use common::{RUSTC_FIXTURE, rich_object};

#[test]
fn fuzz_rustc_fixture() {
    fuzzing::fuzz_fixed("fixture", RUSTC_FIXTURE, 0xd1b5_4a32_d192_ed03);
}

#[test]
fn fuzz_rich_object() {
    fuzzing::fuzz_fixed("rich", &rich_object(), 0x2545_f491_4f6c_dd1d);
}

#[test]
fn the_memory_budget_measures_peak_growth() {
    fuzzing::peak_growth_is_measured();
}
