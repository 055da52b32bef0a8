//! Steps of a bench run: each one's wall time, and the share of all CPUs
//! used by other processes meanwhile (process-context time in /proc/stat,
//! minus this process with its children and minus kernel threads); above
//! [`BUSY`] the step is flagged in `warnings` and its targets as measured on
//! a busy machine.

use std::fs;
use std::time::Instant;

/// Share of all CPUs that other processes may use during a step before its
/// timings are flagged.
const BUSY: f64 = 0.15;

/// One phase of the run: its wall time, and how busy other processes kept
/// the machine meanwhile.
pub struct Step {
    pub name: String,
    pub seconds: f64,
    /// Share of all CPUs used by other processes (see [`Cpu`]).
    pub other_cpu: Option<f64>,
    t0: Instant,
    cpu0: Option<Cpu>,
}

impl Step {
    pub fn begin(name: &str) -> Self {
        Self {
            name: name.to_string(),
            seconds: 0.0,
            other_cpu: None,
            t0: Instant::now(),
            cpu0: Cpu::now(),
        }
    }

    pub fn end(mut self) -> Self {
        self.seconds = self.t0.elapsed().as_secs_f64();
        self.other_cpu = match (self.cpu0.take(), Cpu::now()) {
            (Some(a), Some(b)) => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                let total = self.seconds * USER_HZ * cores;
                let other =
                    b.busy.saturating_sub(a.busy) as f64 - b.ours.saturating_sub(a.ours) as f64;
                (total > 0.0).then(|| (other / total).clamp(0.0, 1.0))
            }
            _ => None,
        };
        self
    }

    /// Other processes kept the machine busy: the step's timings are
    /// likely pessimistic.
    pub fn busy(&self) -> bool {
        self.other_cpu.is_some_and(|o| o > BUSY)
    }
}

/// /proc/stat and /proc/PID/stat count in USER_HZ ticks (100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU ticks: busy in process context on the whole machine (user, nice,
/// system; plus steal, time the hypervisor gave to others), and the parts
/// that are not "other work": this process with its waited-for children
/// (every bench process is waited for before a step ends) and kernel
/// threads (they run deferred work the bench itself causes: freeing maps,
/// RCU). Interrupt and softirq time is left out for the same reason.
struct Cpu {
    busy: u64,
    ours: u64,
}

/// utime, stime, cutime, cstime and ppid of a /proc/PID/stat line.
fn proc_stat_times(stat: &str) -> Option<(u64, [u64; 4])> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|w| w.parse().unwrap_or(0))
        .collect();
    // `rest` starts at field 3 (state): ppid is field 4, utime..cstime 14-17.
    Some((
        *f.get(1)?,
        [*f.get(11)?, *f.get(12)?, *f.get(13)?, *f.get(14)?],
    ))
}

impl Cpu {
    fn now() -> Option<Self> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|w| w.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let busy = [0, 1, 2, 7]
            .iter()
            .map(|&i| cpu.get(i).copied().unwrap_or(0))
            .sum();
        let (_, t) = proc_stat_times(&fs::read_to_string("/proc/self/stat").ok()?)?;
        let mut ours: u64 = t.iter().sum();
        for e in fs::read_dir("/proc").ok()?.flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(s) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            if let Some((ppid, t)) = proc_stat_times(&s)
                && (pid == 2 || ppid == 2)
            {
                ours += t[0] + t[1];
            }
        }
        Some(Self { busy, ours })
    }
}
