//! What bpfckpt tells the user: human lines on stderr, or with `--json` one
//! JSON object per event on stdout; and the end-of-session summary.

use super::storage::human;
use std::fmt::Write as _;
use std::time::Duration;

/// Counters of one session (one target) or of the whole run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub checkpoints: u64,
    /// Restores completed: one per checkpoint/restore cycle.
    pub cycles: u64,
    pub pages_saved_bpf: u64,
    pub pages_saved_user: u64,
    pub pages_restored_bpf: u64,
    pub pages_restored_user: u64,
    pub pages_zeroed_bpf: u64,
    pub pages_zeroed_user: u64,
    /// Pages of the checkpoint no longer mapped as they were at a restore.
    pub pages_skipped_unmapped: u64,
    /// Pages of the checkpoint in a mapping holding a live stack at a restore.
    pub pages_skipped_live_stack: u64,
    /// Pages of the checkpoint that were guard pages at a restore.
    pub pages_skipped_guard: u64,
    /// Pages a checkpoint did not read because they were never written.
    pub pages_skipped_untouched: u64,
    /// Pages that held data at a checkpoint completed from user space but
    /// were never marked written: writes the tracking missed (0 expected).
    pub pages_unmarked_data: u64,
    /// Untouched file pages put back from the file at a restore.
    pub pages_reverted_user: u64,
    /// Times the target was held (stopped) for user-space work.
    pub holds: u64,
    pub ckpt_kernel_ns: u64,
    pub ckpt_kernel_ns_max: u64,
    pub restore_kernel_ns: u64,
    pub restore_kernel_ns_max: u64,
    pub user_ns: u64,
    pub peak_store_bytes: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.checkpoints += o.checkpoints;
        self.cycles += o.cycles;
        self.pages_saved_bpf += o.pages_saved_bpf;
        self.pages_saved_user += o.pages_saved_user;
        self.pages_restored_bpf += o.pages_restored_bpf;
        self.pages_restored_user += o.pages_restored_user;
        self.pages_zeroed_bpf += o.pages_zeroed_bpf;
        self.pages_zeroed_user += o.pages_zeroed_user;
        self.pages_skipped_unmapped += o.pages_skipped_unmapped;
        self.pages_skipped_live_stack += o.pages_skipped_live_stack;
        self.pages_skipped_guard += o.pages_skipped_guard;
        self.pages_skipped_untouched += o.pages_skipped_untouched;
        self.pages_unmarked_data += o.pages_unmarked_data;
        self.pages_reverted_user += o.pages_reverted_user;
        self.holds += o.holds;
        self.ckpt_kernel_ns += o.ckpt_kernel_ns;
        self.ckpt_kernel_ns_max = self.ckpt_kernel_ns_max.max(o.ckpt_kernel_ns_max);
        self.restore_kernel_ns += o.restore_kernel_ns;
        self.restore_kernel_ns_max = self.restore_kernel_ns_max.max(o.restore_kernel_ns_max);
        self.user_ns += o.user_ns;
        self.peak_store_bytes = self.peak_store_bytes.max(o.peak_store_bytes);
    }

    fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("checkpoints", self.checkpoints),
            ("cycles", self.cycles),
            ("pages_saved_bpf", self.pages_saved_bpf),
            ("pages_saved_user", self.pages_saved_user),
            ("pages_restored_bpf", self.pages_restored_bpf),
            ("pages_restored_user", self.pages_restored_user),
            ("pages_zeroed_bpf", self.pages_zeroed_bpf),
            ("pages_zeroed_user", self.pages_zeroed_user),
            ("pages_skipped_unmapped", self.pages_skipped_unmapped),
            ("pages_skipped_live_stack", self.pages_skipped_live_stack),
            ("pages_skipped_guard", self.pages_skipped_guard),
            ("pages_skipped_untouched", self.pages_skipped_untouched),
            ("pages_unmarked_data", self.pages_unmarked_data),
            ("pages_reverted_user", self.pages_reverted_user),
            ("holds", self.holds),
            ("checkpoint_kernel_ns", self.ckpt_kernel_ns),
            ("checkpoint_kernel_ns_max", self.ckpt_kernel_ns_max),
            ("restore_kernel_ns", self.restore_kernel_ns),
            ("restore_kernel_ns_max", self.restore_kernel_ns_max),
            ("user_ns", self.user_ns),
            ("peak_store_bytes", self.peak_store_bytes),
        ]
    }
}

/// A JSON value small enough to write by hand.
pub enum J<'a> {
    N(u64),
    I(i64),
    S(&'a str),
    B(bool),
}

pub fn json_object(fields: &[(&str, J<'_>)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "\"{}\":", escape(k));
        match v {
            J::N(n) => {
                let _ = write!(s, "{n}");
            }
            J::I(n) => {
                let _ = write!(s, "{n}");
            }
            J::S(t) => {
                let _ = write!(s, "\"{}\"", escape(t));
            }
            J::B(b) => {
                let _ = write!(s, "{b}");
            }
        }
    }
    s.push('}');
    s
}

fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// Output sink shared by the engine and the CLI.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    pub json: bool,
    pub verbose: u8,
}

impl Reporter {
    /// A notable event. `msg` is the human text; `fields` the JSON payload.
    pub fn event(&self, kind: &str, msg: &str, fields: &[(&str, J<'_>)]) {
        if self.json {
            let mut all = vec![("event", J::S(kind))];
            all.extend(fields.iter().map(|(k, v)| {
                (
                    *k,
                    match v {
                        J::N(n) => J::N(*n),
                        J::I(n) => J::I(*n),
                        J::S(s) => J::S(s),
                        J::B(b) => J::B(*b),
                    },
                )
            }));
            println!("{}", json_object(&all));
        } else {
            eprintln!("bpfckpt: {msg}");
        }
    }

    /// Per-checkpoint/restore detail: only with `-v` (always in JSON).
    pub fn detail(&self, kind: &str, msg: &str, fields: &[(&str, J<'_>)]) {
        if self.json || self.verbose > 0 {
            self.event(kind, msg, fields);
        }
    }

    pub fn warn(&self, msg: &str) {
        self.event(
            "warning",
            &format!("warning: {msg}"),
            &[("message", J::S(msg))],
        );
    }

    pub fn summary(&self, what: &str, s: &Stats) {
        if self.json {
            let mut f: Vec<(&str, J<'_>)> = vec![("event", J::S("summary")), ("scope", J::S(what))];
            f.extend(s.fields().into_iter().map(|(k, v)| (k, J::N(v))));
            println!("{}", json_object(&f));
            return;
        }
        eprintln!("{}", summary_text(what, s));
    }
}

fn avg(total: u64, n: u64) -> Duration {
    Duration::from_nanos(total.checked_div(n).unwrap_or(0))
}

pub fn summary_text(what: &str, s: &Stats) -> String {
    let pg = |n: u64| format!("{n} pages ({})", human(n * 4096));
    let mut t = String::new();
    let _ = writeln!(t, "bpfckpt: summary for {what}");
    let _ = writeln!(
        t,
        "  cycles served        {} ({} checkpoints)",
        s.cycles, s.checkpoints
    );
    let _ = writeln!(
        t,
        "  saved                {} by BPF, {} from user space",
        pg(s.pages_saved_bpf),
        pg(s.pages_saved_user)
    );
    let _ = writeln!(
        t,
        "  restored             {} by BPF, {} from user space",
        pg(s.pages_restored_bpf),
        pg(s.pages_restored_user)
    );
    let _ = writeln!(
        t,
        "  zeroed again         {} by BPF, {} from user space",
        s.pages_zeroed_bpf, s.pages_zeroed_user
    );
    let _ = writeln!(
        t,
        "  never written        {} page visits skipped at checkpoints",
        s.pages_skipped_untouched
    );
    if s.pages_skipped_unmapped > 0 {
        let _ = writeln!(
            t,
            "  not restored         {} pages (unmapped since the checkpoint)",
            s.pages_skipped_unmapped
        );
    }
    let _ = writeln!(
        t,
        "  time in the kernel   checkpoint avg {:?} max {:?}; restore avg {:?} max {:?}",
        avg(s.ckpt_kernel_ns, s.checkpoints),
        Duration::from_nanos(s.ckpt_kernel_ns_max),
        avg(s.restore_kernel_ns, s.cycles),
        Duration::from_nanos(s.restore_kernel_ns_max)
    );
    let _ = writeln!(
        t,
        "  user-space work      {:?} in total, target held {} times",
        Duration::from_nanos(s.user_ns),
        s.holds
    );
    let _ = write!(t, "  page store peak      {}", human(s.peak_store_bytes));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_orders_fields() {
        let s = json_object(&[
            ("a", J::N(1)),
            ("b", J::S("x\"y\n")),
            ("c", J::B(true)),
            ("d", J::I(-2)),
        ]);
        assert_eq!(s, r#"{"a":1,"b":"x\"y\u000a","c":true,"d":-2}"#);
    }

    #[test]
    fn stats_add_sums_and_maxes() {
        let mut a = Stats {
            cycles: 1,
            ckpt_kernel_ns_max: 5,
            ..Default::default()
        };
        a.add(&Stats {
            cycles: 2,
            ckpt_kernel_ns_max: 3,
            ..Default::default()
        });
        assert_eq!((a.cycles, a.ckpt_kernel_ns_max), (3, 5));
        assert!(summary_text("x", &a).contains("cycles served        3"));
    }
}
