//! `cargo xtask vm-test` (in progress).

use crate::util::{Ctx, Result};

pub fn run(_ctx: &Ctx, _args: &[String]) -> Result<()> {
    eprintln!("xtask: vm-test: not implemented yet");
    Ok(())
}
