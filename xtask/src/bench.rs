//! `cargo xtask bench` (in progress).

use crate::util::{Ctx, Result};

pub fn run(_ctx: &Ctx, _args: &[String]) -> Result<()> {
    eprintln!("xtask: bench: not implemented yet");
    Ok(())
}
