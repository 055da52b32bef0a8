//! What the processes print: bpfckpt's JSON events (`run --json`) and the
//! bench targets' result lines (`{"bench":KIND,...}`), one flat JSON object
//! a line.

use super::proc::tail;
use crate::util::Result;
use serde_json::{Map, Value};

/// One JSON object a line: bpfckpt's events and the bench targets' result
/// lines are flat, and only their numbers, strings and booleans are read.
pub struct Flat(Map<String, Value>);

impl Flat {
    /// The object on `line`, if the whole line is one.
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line.trim()).ok().map(Self)
    }

    /// A non-negative number, truncated to an integer.
    pub fn u(&self, k: &str) -> Option<u64> {
        let v = self.0.get(k)?;
        v.as_u64()
            .or_else(|| v.as_f64().filter(|n| *n >= 0.0).map(|n| n as u64))
    }

    pub fn need_u(&self, k: &str) -> Result<u64> {
        self.u(k)
            .ok_or_else(|| format!("no number `{k}` in {}", Value::Object(self.0.clone())))
    }

    pub fn s(&self, k: &str) -> Option<&str> {
        self.0.get(k)?.as_str()
    }

    pub fn b(&self, k: &str) -> Option<bool> {
        self.0.get(k)?.as_bool()
    }
}

/// bpfckpt's JSON events for one `run`.
pub struct Events {
    pub restore_path: String,
    pub checkpoints: Vec<Flat>,
    pub restores: Vec<Flat>,
    /// The per-target summary.
    pub summary: Flat,
}

impl Events {
    pub fn parse(lines: &[String]) -> Result<Self> {
        let mut restore_path = String::new();
        let mut checkpoints = Vec::new();
        let mut restores = Vec::new();
        let mut summary = None;
        for l in lines {
            let Some(f) = Flat::parse(l) else { continue };
            match f.s("event") {
                Some("start") => restore_path = f.s("restore_path").unwrap_or("?").to_string(),
                Some("checkpoint") => checkpoints.push(f),
                Some("restore") => restores.push(f),
                Some("summary") if f.s("scope").is_some_and(|s| s.starts_with("pid ")) => {
                    summary = Some(f)
                }
                _ => {}
            }
        }
        let summary = summary
            .ok_or_else(|| format!("bpfckpt printed no per-target summary\n{}", tail(lines)))?;
        Ok(Self {
            restore_path,
            checkpoints,
            restores,
            summary,
        })
    }
}

pub fn bench_lines(lines: &[String], kind: &str) -> Vec<Flat> {
    lines
        .iter()
        .filter_map(|l| Flat::parse(l))
        .filter(|f| f.s("bench") == Some(kind))
        .collect()
}

pub fn bench_line(lines: &[String], kind: &str) -> Result<Flat> {
    bench_lines(lines, kind)
        .pop()
        .ok_or_else(|| format!("no `{kind}` result line in the output\n{}", tail(lines)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_json_events() {
        let f = Flat::parse(
            r#"{"event":"checkpoint","pid":7,"pages_bpf":16401,"held":true,"x":null,"s":"a\"b\u0041"}"#,
        )
        .expect("parses");
        assert_eq!(f.s("event"), Some("checkpoint"));
        assert_eq!(f.u("pages_bpf"), Some(16401));
        assert_eq!(f.b("held"), Some(true));
        assert_eq!(f.s("s"), Some("a\"bA"));
        assert!(f.need_u("missing").is_err());
        assert!(Flat::parse("FAIL something").is_none());
        assert!(Flat::parse(r#"{"a":1} trailing"#).is_none());
        assert!(Flat::parse(r#"{"a":"#).is_none());
        assert!(Flat::parse("[1]").is_none());
        let n = Flat::parse(r#"{"a":2.9,"b":-1,"c":"3"}"#).expect("parses");
        assert_eq!(n.u("a"), Some(2));
        assert_eq!(n.u("b"), None);
        assert_eq!(n.u("c"), None);
    }
}
