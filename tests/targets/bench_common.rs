//! Shared by the bench targets (included with `#[path]`, not a binary):
//! `--name value` arguments, the file protocol with tight polling and
//! timing, and result lines.
//!
//! Result lines are flat JSON objects with a `"bench"` key, printed on
//! stdout after the last cycle; under `bpfckpt run --json` they are mixed
//! with bpfckpt's own events, which have an `"event"` key instead.
//!
//! Memory rules (see proto.rs): nothing here allocates between a checkpoint
//! and its restore, and per-cycle timings live on the stack, which no
//! restore rolls back (the heap, .bss and .data are rolled back).

#![allow(dead_code)]

use crate::proto::fail;
use std::path::PathBuf;
use std::str::FromStr;

/// `--name value` pairs from the command line.
pub struct Args(Vec<(String, String)>);

impl Args {
    pub fn parse(known: &[&str]) -> Self {
        let mut v = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(k) = it.next() {
            let Some(name) = k.strip_prefix("--").filter(|n| known.contains(n)) else {
                fail(&format!(
                    "unknown argument `{k}`; known: --{}",
                    known.join(" --")
                ));
            };
            let Some(val) = it.next() else {
                fail(&format!("--{name} needs a value"));
            };
            v.push((name.to_string(), val));
        }
        Self(v)
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> T {
        match self.0.iter().rev().find(|(k, _)| k == name) {
            None => default,
            Some((_, v)) => v
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{name}: cannot parse `{v}`"))),
        }
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(self.get("dir", "/tmp".to_string()))
    }
}

/// Prints one result line: `{"bench":KIND,"k":v,...}` (numbers only).
pub fn emit(kind: &str, fields: &[(&str, u64)]) {
    let mut s = format!("{{\"bench\":\"{kind}\"");
    for (k, v) in fields {
        s.push_str(&format!(",\"{k}\":{v}"));
    }
    s.push('}');
    println!("{s}");
}
