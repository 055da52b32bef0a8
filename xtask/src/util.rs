//! Small helpers shared by the xtask commands.

use std::path::PathBuf;
use std::process::Command;

pub type Result<T> = std::result::Result<T, String>;

pub struct Ctx {
    /// Repository root.
    pub root: PathBuf,
    /// cargo running this xtask.
    pub cargo: PathBuf,
}

impl Ctx {
    pub fn new() -> Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let root = root
            .canonicalize()
            .map_err(|e| format!("repository root: {e}"))?;
        let cargo = std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from);
        Ok(Self { root, cargo })
    }

    pub fn target_dir(&self) -> PathBuf {
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| self.root.join("target"), PathBuf::from)
    }

    /// Runs cargo in the repository root with inherited output.
    pub fn cargo(&self, args: &[&str]) -> Result<()> {
        run_status(Command::new(&self.cargo).current_dir(&self.root).args(args))
    }
}

pub fn run_status(cmd: &mut Command) -> Result<()> {
    let st = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} {:?} failed: {st}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>()
        ))
    }
}

pub use bpfckpt_probe_build::run_output;

pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Whether the CPU lists `flag` in /proc/cpuinfo.
pub fn cpu_has_flag(flag: &str) -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == flag))
}

pub fn is_root() -> bool {
    // The effective uid is the 3rd number of the `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
