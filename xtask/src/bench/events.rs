//! What the processes print: bpfckpt's JSON events (`run --json`) and the
//! bench targets' result lines (`{"bench":KIND,...}`), one flat JSON object
//! a line.

use super::proc::tail;
use crate::util::Result;

/// A flat JSON object (numbers, strings, booleans, null), as bpfckpt's
/// events and the bench targets' result lines are.
pub struct Flat(Vec<(String, Fv)>);

pub enum Fv {
    N(f64),
    S(String),
    B(bool),
    Null,
}

impl Flat {
    pub fn parse(line: &str) -> Option<Self> {
        let mut p = FlatParser {
            s: line.trim().as_bytes(),
            i: 0,
        };
        p.object()
    }

    fn get(&self, k: &str) -> Option<&Fv> {
        self.0.iter().find(|(n, _)| n == k).map(|(_, v)| v)
    }

    pub fn u(&self, k: &str) -> Option<u64> {
        match self.get(k)? {
            Fv::N(n) if *n >= 0.0 => Some(*n as u64),
            _ => None,
        }
    }

    pub fn need_u(&self, k: &str) -> Result<u64> {
        self.u(k)
            .ok_or_else(|| format!("no number `{k}` in {}", self.show()))
    }

    pub fn s(&self, k: &str) -> Option<&str> {
        match self.get(k)? {
            Fv::S(s) => Some(s),
            _ => None,
        }
    }

    pub fn b(&self, k: &str) -> Option<bool> {
        match self.get(k)? {
            Fv::B(b) => Some(*b),
            _ => None,
        }
    }

    fn show(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| match v {
                Fv::N(n) => format!("{k}={n}"),
                Fv::S(s) => format!("{k}={s:?}"),
                Fv::B(b) => format!("{k}={b}"),
                Fv::Null => format!("{k}=null"),
            })
            .collect();
        format!("{{{}}}", parts.join(", "))
    }
}

struct FlatParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl FlatParser<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.s.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn object(&mut self) -> Option<Flat> {
        self.eat(b'{')?;
        let mut v = Vec::new();
        if self.eat(b'}').is_some() {
            return Some(Flat(v));
        }
        loop {
            self.ws();
            let k = self.string()?;
            self.eat(b':')?;
            v.push((k, self.value()?));
            if self.eat(b',').is_some() {
                continue;
            }
            self.eat(b'}')?;
            self.ws();
            return (self.i == self.s.len()).then_some(Flat(v));
        }
    }

    fn string(&mut self) -> Option<String> {
        if self.s.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i)?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'u' => {
                            let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                            self.i += 4;
                            let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                            let mut b = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut b).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn value(&mut self) -> Option<Fv> {
        self.ws();
        let rest = self.s.get(self.i..)?;
        for (word, v) in [
            (&b"true"[..], Fv::B(true)),
            (b"false", Fv::B(false)),
            (b"null", Fv::Null),
        ] {
            if rest.starts_with(word) {
                self.i += word.len();
                return Some(v);
            }
        }
        if rest.first() == Some(&b'"') {
            return self.string().map(Fv::S);
        }
        let n = rest
            .iter()
            .take_while(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
            .count();
        let t = std::str::from_utf8(&rest[..n]).ok()?;
        let v = t.parse::<f64>().ok()?;
        self.i += n;
        Some(Fv::N(v))
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
    }
}
