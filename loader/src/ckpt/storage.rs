//! The page store: two BPF arrays sized to what is saved (one 4 KiB value
//! per saved page, one address per saved page), installed in slot 0 of the
//! probes' `PAGES_OUTER` / `ADDRS_OUTER` map-in-map so that they can be
//! replaced by bigger ones without reloading any program.

use super::procfs::PAGE;
use crate::{Error, Result};
use bpfload::maps::{ArrayMmap, Map};
use bpfload::sys::BPF_F_MMAPABLE;
use std::os::fd::{AsFd, AsRawFd};

/// Lets inner maps of one outer map differ in `max_entries`.
const BPF_F_INNER_MAP: u32 = 1 << 12;

/// An mmapable array usable as the inner map of a map-in-map whose inner
/// maps differ in size.
pub fn inner_array(name: &str, value_size: u32, entries: u32) -> Result<Map> {
    Map::array(
        name,
        value_size,
        entries.max(1),
        BPF_F_MMAPABLE | BPF_F_INNER_MAP,
    )
    .map_err(super::memlock::explain)
}

/// Template inner maps the outer maps are created with.
pub fn templates() -> Result<(Map, Map)> {
    Ok((
        inner_array("ckpt_pages_t", PAGE as u32, 1)?,
        inner_array("ckpt_addrs_t", 8, 1)?,
    ))
}

pub struct Storage {
    pages: Map,
    addrs: Map,
    pages_mm: ArrayMmap,
    addrs_mm: ArrayMmap,
    capacity: u64,
}

impl Storage {
    /// Creates a store for `capacity` pages. `limit` is the most bytes of
    /// kernel memory the user allows (`--max-memory`).
    pub fn create(capacity: u64, limit: Option<u64>) -> Result<Self> {
        let capacity = capacity.max(1);
        let bytes = Self::cost(capacity);
        if let Some(limit) = limit
            && bytes > limit
        {
            return Err(Error::new(format!(
                "the checkpoint needs {} of kernel memory for {capacity} pages, more than --max-memory {}",
                human(bytes),
                human(limit)
            )));
        }
        let entries = u32::try_from(capacity)
            .map_err(|_| Error::new(format!("{capacity} pages exceed one BPF array")))?;
        let pages = inner_array("ckpt_pages", PAGE as u32, entries)?;
        let addrs = inner_array("ckpt_addrs", 8, entries)?;
        let pages_mm = pages.mmap()?;
        let addrs_mm = addrs.mmap()?;
        Ok(Self {
            pages,
            addrs,
            pages_mm,
            addrs_mm,
            capacity,
        })
    }

    /// The capacity to create for `need` pages: a little room to grow, so
    /// that a target allocating a few pages more does not need a new store
    /// at its next checkpoint.
    pub fn with_headroom(need: u64) -> u64 {
        need + need / 64 + 16
    }

    /// Kernel memory a store of `capacity` pages costs.
    pub fn cost(capacity: u64) -> u64 {
        capacity * PAGE + (capacity * 8).div_ceil(PAGE) * PAGE
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn kernel_bytes(&self) -> u64 {
        Self::cost(self.capacity)
    }

    /// Points the probes at this store.
    pub fn install(&self, pages_outer: &Map, addrs_outer: &Map) -> Result<()> {
        let key = 0u32.to_ne_bytes();
        pages_outer.update(
            &key,
            &(self.pages.as_fd().as_raw_fd() as u32).to_ne_bytes(),
            0,
        )?;
        addrs_outer.update(
            &key,
            &(self.addrs.as_fd().as_raw_fd() as u32).to_ne_bytes(),
            0,
        )?;
        Ok(())
    }

    /// `n` consecutive pages from `slot` (callers keep `slot + n <= capacity`).
    pub fn pages(&self, slot: u64, n: u64) -> &[u8] {
        let at = (slot * PAGE) as usize;
        &self.pages_mm.as_slice()[at..at + (n * PAGE) as usize]
    }

    /// `n` consecutive pages from `slot`, writable.
    pub fn pages_mut(&mut self, slot: u64, n: u64) -> Result<&mut [u8]> {
        let at = (slot * PAGE) as usize;
        let all = self.pages_mm.as_mut_slice()?;
        all.get_mut(at..at + (n * PAGE) as usize).ok_or_else(|| {
            Error::new(format!(
                "page store overrun: slot {slot}+{n} of {}",
                self.capacity
            ))
        })
    }

    /// The pages of several runs `(slot, n)` at once, writable, in the
    /// order given; the runs must not overlap.
    pub fn runs_mut(&mut self, runs: &[(u64, u64)]) -> Result<Vec<&mut [u8]>> {
        let capacity = self.capacity;
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_unstable_by_key(|&i| runs[i].0);
        let mut rest = self.pages_mm.as_mut_slice()?;
        let mut base = 0u64;
        let mut out: Vec<Option<&mut [u8]>> = (0..runs.len()).map(|_| None).collect();
        for i in order {
            let (slot, n) = runs[i];
            if slot < base || slot + n > capacity {
                return Err(Error::new(format!(
                    "page store overrun: slot {slot}+{n} of {capacity} (or overlapping runs)"
                )));
            }
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(((slot - base) * PAGE) as usize);
            let (run, tail) = tail.split_at_mut((n * PAGE) as usize);
            out[i] = Some(run);
            rest = tail;
            base = slot + n;
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every run placed"))
            .collect())
    }

    pub fn addr(&self, slot: u64) -> u64 {
        let at = (slot * 8) as usize;
        super::wire::u64_at(self.addrs_mm.as_slice(), at)
    }

    pub fn set_addr(&mut self, slot: u64, addr: u64) -> Result<()> {
        let at = (slot * 8) as usize;
        let all = self.addrs_mm.as_mut_slice()?;
        all[at..at + 8].copy_from_slice(&addr.to_ne_bytes());
        Ok(())
    }

    /// A bigger store holding a copy of the first `keep` slots of this one.
    pub fn grown(&self, capacity: u64, keep: u64, limit: Option<u64>) -> Result<Self> {
        let mut new = Self::create(capacity, limit)?;
        let bytes = (keep * PAGE) as usize;
        new.pages_mut(0, keep)?
            .copy_from_slice(&self.pages_mm.as_slice()[..bytes]);
        let abytes = (keep * 8) as usize;
        new.addrs_mm.as_mut_slice()?[..abytes].copy_from_slice(&self.addrs_mm.as_slice()[..abytes]);
        Ok(new)
    }
}

/// `1.5 GiB`-style sizes for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses `512M`, `2G`, `4096`, `1.5GiB`.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a size: {s:?} (use e.g. 512M, 2G)"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit {u:?} in {s:?} (use K, M, G, T)")),
    };
    Ok((n * mul as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5X").is_err());
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(100), "100 B");
    }
}
