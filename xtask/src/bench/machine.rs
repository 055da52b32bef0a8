//! The machine a run measured on, for the report: kernel, CPU, commit,
//! lockdown, restore path, transparent huge pages, load.

use crate::util::{self, Ctx};
use serde::Serialize;
use std::fs;
use std::process::Command;

/// The report's `machine` object, as it is.
#[derive(Serialize)]
#[cfg_attr(test, derive(Default))]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: u64,
    pub git_commit: String,
    pub git_dirty: Option<bool>,
    pub lockdown: String,
    pub restore_path: String,
    pub thp: String,
    /// Where the trigger directories are made.
    pub trigger_base: String,
    #[serde(rename = "loadavg_start")]
    pub load_start: String,
    #[serde(rename = "loadavg_end")]
    pub load_end: String,
}

fn read_trim(p: &str) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The `[selected]` word of a sysfs choice file.
fn selected(p: &str) -> String {
    let s = read_trim(p);
    s.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map_or(s.clone(), str::to_string)
}

pub fn loadavg() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn machine_info(ctx: &Ctx, restore_path: &str, load_start: String) -> Machine {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let git = |args: &[&str]| {
        util::run_output(Command::new("git").current_dir(&ctx.root).args(args))
            .ok()
            .map(|s| s.trim().to_string())
    };
    Machine {
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get() as u64),
        git_commit: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        git_dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
        lockdown: selected("/sys/kernel/security/lockdown"),
        restore_path: restore_path.to_string(),
        thp: selected("/sys/kernel/mm/transparent_hugepage/enabled"),
        trigger_base: std::env::temp_dir().display().to_string(),
        load_start,
        load_end: loadavg(),
    }
}
